"""One literal Patient reference names one patient (safety review 1).

A photo record or Consent may name its patient by identifier and by a literal reference
(``Patient/<id>``, adapter.mapping.fhir_r4; any other form is refused when named anew:
adapter.model.photo.patient_reference_problem); a search by that reference returns every resource
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

A reference whose holder has no resource left holding it is free again: it passes to the
identifier now claiming it. What is entered in error holds nothing: a record, a Consent, and a
Consent restricted to photos (provision.data, as the Consent recorded with a photo is) whose
records are all entered in error (:func:`restricted_to`). So a misfiled photo marked
entered-in-error (the documented correction, a PATCH of its record) frees its reference for the
right patient, its own Consent with it ("merges" review, finding 2).

Only a version naming a reference first, or naming it otherwise than its version before, claims:
a Consent withdrawn or a record marked, keeping the reference, is never refused (finding 1).
The upgrade to schema 22 fills the table by the same rule (:func:`first_claims`, finding 6).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import ColumnElement, and_, false, not_, or_, select, update
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
        "(nothing was stored). If the records stored under this reference were filed for the wrong patient, have "
        "them marked entered-in-error: that frees the reference, their photos' own Consents with them "
        "(docs/operations.md, Correcting a misfiled record)", expression=_element(resource_type))


#: A claim: the patient identifier (system, value) and the reference's key it pairs.
Claim = tuple[tuple[str, str], str]
#: The columns of a resource's row :func:`claim_of_row` reads: what its version claimed.
CLAIM_COLUMNS = (_r.resource_type, _r.patient_system, _r.patient_value, _r.patient_reference, _r.status,
                 _r.entered_in_error)


def claim_of_row(row: Any) -> Claim | None:
    """The claim the version stored as ``row`` (its :data:`CLAIM_COLUMNS`) made: None when it
    names no identifier and reference, is no HOLDING_TYPES, or is entered in error."""
    if (row.resource_type not in HOLDING_TYPES or row.patient_value is None or row.patient_reference is None
            or row.entered_in_error or row.status == _ENTERED_IN_ERROR):
        return None
    return (row.patient_system, row.patient_value), patient_reference_key(row.patient_reference)


def _claim_of(new: NewResource) -> Claim | None:
    """The claim ``new`` makes, as :func:`claim_of_row` reads it once stored."""
    patient, reference = new.index.patient, new.index.patient_reference
    if (new.resource_type not in HOLDING_TYPES or patient is None or reference is None
            or new.index.status == _ENTERED_IN_ERROR or (new.facts is not None and new.facts.entered_in_error)):
        return None
    return (patient.system, patient.value), patient_reference_key(reference)


def claim_patient_references(conn: Connection, written: Sequence[NewResource],
                             replaced: Mapping[tuple[str, str], Claim | None] | None = None) -> None:
    """Claim, in the writing transaction, the reference of every resource of ``written`` that
    names both a patient identifier and a literal Patient reference (of HOLDING_TYPES, not
    entered in error); raises PatientReferenceConflict when one is held for another identifier
    (then nothing is written: the caller's transaction is rolled back).

    ``replaced``: the claim of the version each resource written over one replaces, by (type,
    id) (:func:`claim_of_row`). A version claiming what the version before it claimed claims
    nothing: only naming a reference first, or naming it with another identifier, is checked.
    So a Consent withdrawn, a record marked entered-in-error, consent documented on a record, or
    any update keeping its reference, is never refused, even when the reference has passed to
    another patient since (its records marked) or was stored with several before schema 22:
    those are the fail-closed actions the correction needs ("merges" review, finding 1)."""
    before = replaced or {}
    claims: dict[str, tuple[tuple[str, str], str]] = {}
    for new in written:
        claim = _claim_of(new)
        if claim is None or before.get((new.resource_type, new.id)) == claim:
            continue
        patient, key = claim
        if claims.setdefault(key, (patient, new.resource_type))[0] != patient:
            raise refusal(new.resource_type)
    if not claims:
        return
    keys = sorted(claims)
    now = now_instant()
    insert = sqlite_insert if conn.dialect.name == "sqlite" else postgresql_insert
    conn.execute(insert(patient_references).on_conflict_do_nothing(), [
        {"reference": key, "patient_system": claims[key][0][0], "patient_value": claims[key][0][1],
         "recorded": now, "disputed": False} for key in keys])
    rows = conn.execute(select(_c.reference, _c.patient_system, _c.patient_value)
                        .where(_c.reference.in_(keys)).order_by(_c.reference).with_for_update()).all()
    for row in rows:
        (system, value), resource_type = claims[row.reference]
        if (row.patient_system, row.patient_value) == (system, value):
            continue
        holder = Identifier(system=row.patient_system, value=row.patient_value)
        if _still_held(conn, row.reference, holder):
            raise refusal(resource_type)
        conn.execute(update(patient_references).where(_c.reference == row.reference).values(
            patient_system=system, patient_value=value, recorded=now, disputed=False))


def _still_held(conn: Connection, key: str, holder: Identifier) -> bool:
    """Whether a resource of ``holder`` (by its index's patient: ix_resources_patient) still holds
    the reference ``key``: one of HOLDING_TYPES naming it, not entered in error, and no Consent
    restricted to records all entered in error (:func:`restricted_to`)."""
    named = conn.execute(select(_r.resource_type, _r.id, _r.patient_reference).where(
        _r.resource_type.in_(HOLDING_TYPES), _r.patient_system == holder.system, _r.patient_value == holder.value,
        _r.patient_reference.is_not(None), _not_entered_in_error()))
    consents = []
    for row in named:
        if patient_reference_key(row.patient_reference) != key:
            continue
        if row.resource_type != "Consent":
            return True
        consents.append(row.id)
    for start in range(0, len(consents), 500):
        documents = conn.execute(select(_r.json).where(_r.resource_type == "Consent",
                                                       _r.id.in_(consents[start:start + 500]))).scalars()
        for document in documents:
            records = restricted_to(document)
            if records is None or _withdrawn(conn, records) != records:
                return True
    return False


def _not_entered_in_error() -> ColumnElement[bool]:
    """A resource row not entered in error: neither marked (AccessFacts.entered_in_error, what a
    record governs) nor of status ``entered-in-error`` (a record, a Consent)."""
    return and_(or_(_r.entered_in_error.is_(None), _r.entered_in_error == false()),
                or_(_r.status.is_(None), _r.status != _ENTERED_IN_ERROR))


#: A data reference naming a photo record: ``Media/<id>`` or ``DocumentReference/<id>``, or an
#: absolute URL ending so, with an optional ``/_history/<vid>`` (the record is what it names, as
#: adapter.consent.grants reads a data scope); anything else names no record.
_RECORD = re.compile(r"(?:.*/)?(?P<type>Media|DocumentReference)/(?P<id>[A-Za-z0-9\-.]{1,64})"
                     r"(?:/_history/[A-Za-z0-9\-.]{1,64})?")


def restricted_to(consent: Any) -> frozenset[str] | None:
    """The photo records (``Type/id``) a Consent is restricted to (provision.data, meaning
    instance: https://hl7.org/fhir/R4/consent-definitions.html#Consent.provision.data), as the
    Consent ``POST /photos`` records with a photo is to that photo: every data reference at any
    depth, when the top provision has some. None when it is not restricted to records only (no
    data at the top, or an entry naming no photo record): such a Consent is the patient's for
    all their photos, and holds its reference whatever their records."""
    provision = consent.get("provision") if isinstance(consent, Mapping) else None
    if not isinstance(provision, Mapping) or not provision.get("data"):
        return None
    named: set[str] = set()
    provisions: list[Any] = [provision]
    while provisions:
        current = provisions.pop()
        if not isinstance(current, Mapping):
            return None
        data, nested = current.get("data"), current.get("provision")
        if not isinstance(data if data is not None else [], list) or not isinstance(nested or [], list):
            return None
        for item in data or []:
            reference = item.get("reference") if isinstance(item, Mapping) else None
            literal = reference.get("reference") if isinstance(reference, Mapping) else None
            match = _RECORD.fullmatch(literal) if isinstance(literal, str) else None
            if match is None:
                return None
            named.add(f"{match['type']}/{match['id']}")
        provisions.extend(nested or [])
    return frozenset(named)


def _withdrawn(conn: Connection, records: frozenset[str]) -> frozenset[str]:
    """Those of ``records`` (``Type/id``) stored and entered in error."""
    pairs = [record.split("/", 1) for record in sorted(records)]
    found = conn.execute(select(_r.resource_type, _r.id).where(
        or_(*(and_(_r.resource_type == rtype, _r.id == rid) for rtype, rid in pairs)),
        not_(_not_entered_in_error())))
    return frozenset(f"{row.resource_type}/{row.id}" for row in found)


def first_claims(conn: Connection) -> list[dict[str, Any]]:
    """The rows of patient_references the resources stored give (the upgrade to schema 22,
    adapter.store.schema): each reference held by the identifier it was first stored with, by
    the resources that hold one as a claim does (not entered in error, no Consent restricted to
    records all entered in error: :func:`_still_held`'s rule), oldest first; ``disputed`` when
    resources of several identifiers hold it. So a chart corrected before the upgrade (its
    misfiled records marked) neither keeps the reference nor counts as disputed ("merges" review,
    finding 6)."""
    freed = _freed_consents(conn)
    held: dict[str, dict[str, Any]] = {}
    rows = conn.execute(select(_r.resource_type, _r.id, _r.patient_reference, _r.patient_system, _r.patient_value,
                               _r.last_updated).where(
        _r.resource_type.in_(HOLDING_TYPES), _r.patient_reference.is_not(None), _r.patient_system.is_not(None),
        _r.patient_value.is_not(None), _not_entered_in_error()).order_by(_r.last_updated, _r.resource_type, _r.id))
    for row in rows:
        if row.resource_type == "Consent" and row.id in freed:
            continue
        key = patient_reference_key(row.patient_reference)
        claim = held.get(key)
        if claim is None:
            held[key] = {"reference": key, "patient_system": row.patient_system, "patient_value": row.patient_value,
                         "recorded": row.last_updated, "disputed": False}
        elif (claim["patient_system"], claim["patient_value"]) != (row.patient_system, row.patient_value):
            claim["disputed"] = True
    return list(held.values())


def _freed_consents(conn: Connection) -> set[str]:
    """The ids of the Consents not entered in error that are restricted to records all entered in
    error (:func:`restricted_to`): they hold no reference. Read in batches (a Consent may carry a
    signed form's scan)."""
    withdrawn = frozenset(f"{row.resource_type}/{row.id}" for row in conn.execute(select(_r.resource_type, _r.id).where(
        _r.resource_type.in_(("Media", "DocumentReference")), not_(_not_entered_in_error()))))
    if not withdrawn:  # a Consent holds nothing so only when a record is entered in error
        return set()
    consents = conn.execute(select(_r.id, _r.json).where(
        _r.resource_type == "Consent", _r.patient_reference.is_not(None), _not_entered_in_error()),
        execution_options={"yield_per": 200})
    freed: set[str] = set()
    for consent in consents:
        records = restricted_to(consent.json)
        if records is not None and records <= withdrawn:
            freed.add(consent.id)
    return freed


__all__ = ["CLAIM_COLUMNS", "HOLDING_TYPES", "Claim", "claim_of_row", "claim_patient_references", "first_claims",
           "refusal", "restricted_to"]
