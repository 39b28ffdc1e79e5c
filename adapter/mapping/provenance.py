"""Where a photo came from → R4 Provenance (https://hl7.org/fhir/R4/provenance.html).

Pattern (standards.md §2.5): target = the record and its Binary; occurredDateTime = when the
photo was taken, if known; recorded = now; activity v3-DataOperation#CREATE; reason
v3-ActReason#TREAT; policy = the policy URI; entity role ``source`` = the file as received,
identified by its SHA-256 (the stored file differs: metadata was removed).

Agents (type from provenance-participant-type, as it stands in R4 4.0.1):

=====================  =======================================================================
source                 agents
=====================  =======================================================================
clinician              ``author`` = metadata.author (when given)
colleague-internal/    ``author`` = the colleague (display-only Reference: the adapter holds no
colleague-external     Practitioner for them) onBehalfOf their organisation (display; for an
                       internal colleague who names none, the policy's organisation);
                       ``performer`` = metadata.author, who filed the photo (when given)
patient                ``informant`` = the patient (who sent it; whether they took it is not
                       known); ``performer`` = metadata.author (when given)
every source           ``enterer`` = the adapter (display "clinical-image-adapter")
=====================  =======================================================================

``transmitter`` (standards.md §2.5) is not used: it is not in the R4 4.0.1 code system.
"""

from __future__ import annotations

from datetime import datetime

from adapter.mapping.codes import (
    ADAPTER_NAME,
    PROVENANCE_PARTICIPANT_TYPE,
    SHA256_SYSTEM,
    V3_ACT_REASON,
    V3_DATA_OPERATION,
)
from adapter.mapping.fhir_r4 import (
    JSON,
    coding,
    concept,
    display_reference,
    fhir_datetime,
    fhir_instant,
    patient_reference,
    reference,
)
from adapter.mapping.tables import Tables
from adapter.model.image import StoredImage
from adapter.model.photo import PhotoMetadata, PhotoSource

_AGENT_DISPLAY = {"author": "Author", "performer": "Performer", "informant": "Informant",
                  "enterer": "Enterer"}
_COLLEAGUE_SOURCES = frozenset({PhotoSource.COLLEAGUE_INTERNAL, PhotoSource.COLLEAGUE_EXTERNAL})


def _agent(type_code: str, who: JSON, on_behalf_of: JSON | None = None) -> JSON:
    agent: JSON = {
        "type": concept(coding(PROVENANCE_PARTICIPANT_TYPE, type_code, _AGENT_DISPLAY[type_code])),
        "who": who,
    }
    if on_behalf_of is not None:
        agent["onBehalfOf"] = on_behalf_of
    return agent


def taken_time(meta: PhotoMetadata, image: StoredImage) -> datetime | None:
    """When the photo was taken: the sender's takenAt, else the (kept) EXIF capture time."""
    return meta.taken_at if meta.taken_at is not None else image.capture_time


def build_provenance(meta: PhotoMetadata, image: StoredImage, *, provenance_id: str, record_ref: str,
                     binary_ref: str, tables: Tables, now: datetime) -> JSON:
    """The Provenance of a new photo record (see the module docstring for the agents)."""
    agents: list[JSON] = []
    if meta.source is PhotoSource.CLINICIAN:
        if meta.author is not None:
            agents.append(_agent("author", reference(meta.author)))
    elif meta.source in _COLLEAGUE_SOURCES:
        colleague = meta.colleague
        if colleague is not None:
            org = display_reference(colleague.organisation) if colleague.organisation else None
            if org is None and meta.source is PhotoSource.COLLEAGUE_INTERNAL:
                own = tables.policy.organisation  # inside the organisation: on behalf of ours
                org = {"identifier": {"system": own.identifier.system, "value": own.identifier.value},
                       "display": own.name}
            agents.append(_agent("author", display_reference(colleague.name), org))
        elif meta.author is not None:
            agents.append(_agent("author", reference(meta.author)))
        if meta.author is not None and colleague is not None:
            agents.append(_agent("performer", reference(meta.author)))
    else:  # patient
        agents.append(_agent("informant", patient_reference(meta.patient)))
        if meta.author is not None:
            agents.append(_agent("performer", reference(meta.author)))
    agents.append(_agent("enterer", display_reference(ADAPTER_NAME)))

    resource: JSON = {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": [{"reference": record_ref}, {"reference": binary_ref}],
    }
    taken = taken_time(meta, image)
    if taken is not None:
        resource["occurredDateTime"] = fhir_datetime(taken)
    resource.update({
        "recorded": fhir_instant(now),
        "policy": [tables.policy.uri],
        "reason": [concept(coding(V3_ACT_REASON, "TREAT", tables.purposes.codes["TREAT"].display
                                  if "TREAT" in tables.purposes.codes else "treatment"))],
        "activity": concept(coding(V3_DATA_OPERATION, "CREATE")),
        "agent": agents,
        "entity": [{
            "role": "source",
            "what": {"identifier": {"system": SHA256_SYSTEM, "value": image.received_sha256},
                     "display": "received file"},
        }],
    })
    return resource


def build_entered_in_error_provenance(*, provenance_id: str, record_version: str, binary_ref: str | None,
                                      actor: str | None, tables: Tables, now: datetime) -> JSON:
    """The Provenance of marking a record ``entered-in-error``: target = the record's new
    version (``Media/<id>/_history/<n>``) and its Binary; activity v3-DataOperation#NULLIFY
    ("treated as though it never happened", the meaning of entered-in-error); reason
    v3-ActReason#RECORDMGT (records management); agents: ``author`` = the requester, when the
    request named one, and ``enterer`` = the adapter."""
    agents: list[JSON] = []
    if actor:
        agents.append(_agent("author", display_reference(actor)))
    agents.append(_agent("enterer", display_reference(ADAPTER_NAME)))
    targets: list[JSON] = [{"reference": record_version}]
    if binary_ref is not None:
        targets.append({"reference": binary_ref})
    entry = tables.purposes.codes.get("RECORDMGT")
    return {
        "resourceType": "Provenance",
        "id": provenance_id,
        "target": targets,
        "recorded": fhir_instant(now),
        "policy": [tables.policy.uri],
        "reason": [concept(coding(V3_ACT_REASON, "RECORDMGT", entry.display if entry else "records management"))],
        "activity": concept(coding(V3_DATA_OPERATION, "NULLIFY", "nullify")),
        "agent": agents,
    }


__all__ = ["build_entered_in_error_provenance", "build_provenance", "taken_time"]
