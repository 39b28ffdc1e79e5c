"""One literal Patient reference names one patient (safety review 1).

A photo record or Consent may name its patient by identifier and by a literal reference
(``Patient/<id>``, adapter.mapping.fhir_r4); a search by that reference returns every resource
stored with it (adapter.services.search_params). Were one reference stored with two patient
identifiers, a chart opened by its Patient id would show another patient's photos. So every
writing transaction claims the references its resources name (:func:`claim_patient_references`)
in ``patient_references``, whose primary key is the reference's key (schema.patient_reference_key):
the first identifier stored with it holds it, and a resource naming it with another is refused,
the whole transaction rolled back (PatientReferenceConflict, 422).

Concurrency: two transactions claiming one reference for two identifiers cannot both commit. On
PostgreSQL the second's ``INSERT … ON CONFLICT DO NOTHING`` waits for the first's uncommitted row
and then the row is read locked (``FOR UPDATE``, READ COMMITTED: the latest committed version),
so it sees the first's identifier; on SQLite the write transaction is the only one. References
are claimed in key order, so two transactions never wait on each other.

A reference whose holder has no resource left naming it (each record entered in error, each
Consent entered in error) is free again: it passes to the identifier now claiming it, so a
misfiled photo marked entered-in-error does not lock its reference away from the right patient.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import false, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from adapter.errors import PatientReferenceConflict
from adapter.model.photo import Identifier
from adapter.model.record import NewResource
from adapter.store.dates import now_instant
from adapter.store.schema import patient_reference_key, patient_references, resources

#: The resources whose reference holds a claim (a Provenance or Binary repeats its record's).
HOLDING_TYPES = ("Media", "DocumentReference", "Consent")
_ENTERED_IN_ERROR = "entered-in-error"
_c = patient_references.c
_r = resources.c


def _element(resource_type: str) -> str:
    """Where a resource of ``resource_type`` names its patient's reference (FHIRPath)."""
    return f"{resource_type}.{'patient' if resource_type == 'Consent' else 'subject'}.reference"


def refusal(resource_type: str) -> PatientReferenceConflict:
    """The refusal of a ``resource_type`` naming a reference held for another identifier; it
    names neither that identifier nor anything of the other patient."""
    return PatientReferenceConflict(
        "the Patient reference is held for another patient identifier: one Patient reference names one patient, "
        "and this one was stored before with a different identifier; check the reference and the identifier "
        "(nothing was stored)", expression=_element(resource_type))


def claim_patient_references(conn: Connection, written: Sequence[NewResource]) -> None:
    """Claim, in the writing transaction, the reference of every resource of ``written`` that
    names both a patient identifier and a literal Patient reference (of HOLDING_TYPES); raises
    PatientReferenceConflict when one is held for another identifier (then nothing is written:
    the caller's transaction is rolled back)."""
    claims: dict[str, tuple[Identifier, str]] = {}
    for new in written:
        patient, reference = new.index.patient, new.index.patient_reference
        if new.resource_type not in HOLDING_TYPES or patient is None or reference is None:
            continue
        key = patient_reference_key(reference)
        held = claims.setdefault(key, (patient, new.resource_type))
        if held[0] != patient:
            raise refusal(new.resource_type)
    if not claims:
        return
    keys = sorted(claims)
    now = now_instant()
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    conn.execute(insert(patient_references).on_conflict_do_nothing(), [
        {"reference": key, "patient_system": claims[key][0].system, "patient_value": claims[key][0].value,
         "recorded": now, "disputed": False} for key in keys])
    rows = conn.execute(select(_c.reference, _c.patient_system, _c.patient_value)
                        .where(_c.reference.in_(keys)).order_by(_c.reference).with_for_update()).all()
    for row in rows:
        patient, resource_type = claims[row.reference]
        if (row.patient_system, row.patient_value) == (patient.system, patient.value):
            continue
        holder = Identifier(system=row.patient_system, value=row.patient_value)
        if _still_held(conn, row.reference, holder):
            raise refusal(resource_type)
        conn.execute(update(patient_references).where(_c.reference == row.reference).values(
            patient_system=patient.system, patient_value=patient.value, recorded=now, disputed=False))


def _still_held(conn: Connection, key: str, holder: Identifier) -> bool:
    """Whether a resource of ``holder`` (by its index's patient: ix_resources_patient) still names
    the reference ``key``: one of HOLDING_TYPES not entered in error."""
    named = conn.execute(select(_r.patient_reference).where(
        _r.resource_type.in_(HOLDING_TYPES), _r.patient_system == holder.system, _r.patient_value == holder.value,
        _r.patient_reference.is_not(None),
        or_(_r.entered_in_error.is_(None), _r.entered_in_error == false()),
        or_(_r.status.is_(None), _r.status != _ENTERED_IN_ERROR))).scalars()
    return any(patient_reference_key(reference) == key for reference in named)


__all__ = ["HOLDING_TYPES", "claim_patient_references", "refusal"]
