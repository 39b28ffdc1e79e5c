"""IHE MHD's AuditEvent shapes for the transactions the adapter serves as Document Recipient and
Document Responder (MHD 4.2.x, https://profiles.ihe.net/ITI/MHD/; its StructureDefinitions
IHE.MHD.ProvideBundle.Audit.Recipient, IHE.MHD.FindDocumentReferences.Audit.Responder and
IHE.MHD.RetrieveDocument.Audit.Responder):

* ITI-65 Provide Document Bundle, at the Recipient: type DCM 110107 Import, subtype
  urn:ihe:event-type-code#ITI-65, action C; the Document Source is the Source (DCM 110153), the
  Recipient the Destination (DCM 110152); the patient and the SubmissionSet (audit-entity-type#2
  System Object, object-role#20 Job, what.identifier its uniqueId) are entities.
* ITI-67 Find Document References, at the Responder: MHD 4.2.x builds it on IHE BALP
  PatientQuery, so it stays a BALP Query (type audit-event-type#rest, subtype
  restful-interaction#search-type, action E, entity[query]) with ITI-67 as a second subtype.
* ITI-68 Retrieve Document, at the Responder: built on BALP PatientRead, so a BALP Read (rest,
  read, action R) with ITI-68 as a second subtype and the document's entity in role
  object-role#3 Report.

(DCM 110112 Query for ITI-67 and DCM 110106 Export for ITI-68 are MHD 4.0's shapes, replaced by
the BALP-based ones from MHD 4.1 on.) Everything else of the event is the BALP one
(adapter.mapping.audit): the requestor with its purpose of use and policy, the Consents a decision
rested on, the X-Request-Id, the outcome and its description.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapter.mapping.codes import (
    AUDIT_ENTITY_TYPE,
    AUDIT_EVENT_TYPE,
    DCM,
    IHE_EVENT_TYPE_CODE,
    OBJECT_ROLE,
    URN_IETF_RFC_3986,
)
from adapter.mapping.fhir_r4 import JSON, coding
from adapter.mapping.mhd_provide_bundle import submission_set_unique_id
from adapter.model.purpose import MhdTransaction

PROVIDE_DOCUMENT_BUNDLE = "ITI-65"
FIND_DOCUMENT_REFERENCES = "ITI-67"
RETRIEVE_DOCUMENT = "ITI-68"
_DISPLAYS = {PROVIDE_DOCUMENT_BUNDLE: "Provide Document Bundle", FIND_DOCUMENT_REFERENCES: "Find Document References",
             RETRIEVE_DOCUMENT: "Retrieve Document"}
#: What an identifier taken from a request may be, at most (an audit event is no store of what a
#: client sends).
_MAX_IDENTIFIER = 256


@dataclass(frozen=True)
class MhdShape:
    """How an MHD transaction's AuditEvent differs from the BALP one: its type, its subtypes, the
    role of its data entities (None: BALP's, Domain Resource) and the entities it adds."""

    type_: JSON
    subtypes: list[JSON]
    data_role: JSON | None
    entities: list[JSON]


def mhd_shape(mhd: MhdTransaction, rest_subtype: JSON) -> MhdShape:
    """The shape of an AuditEvent of ``mhd`` (module docstring); ``rest_subtype`` is the BALP
    event's restful-interaction subtype, kept where MHD builds on BALP (ITI-67, ITI-68).

    Raises:
        ValueError: a transaction the adapter does not serve."""
    if mhd.code not in _DISPLAYS:
        raise ValueError(f"not an MHD transaction the adapter serves: {mhd.code!r}")
    transaction = coding(IHE_EVENT_TYPE_CODE, mhd.code, _DISPLAYS[mhd.code])
    if mhd.code == PROVIDE_DOCUMENT_BUNDLE:
        entities = [submission_set_entity(*mhd.submission_set)] if mhd.submission_set else []
        return MhdShape(coding(DCM, "110107", "Import"), [transaction], None, entities)
    role = coding(OBJECT_ROLE, "3", "Report") if mhd.code == RETRIEVE_DOCUMENT else None
    return MhdShape(coding(AUDIT_EVENT_TYPE, "rest", "RESTful Operation"), [rest_subtype, transaction], role, [])


def submission_set_entity(system: str, value: str) -> JSON:
    """entity[submissionSet] of ITI-65: the SubmissionSet by its uniqueId, a System Object in the
    role of a Job (what the Document Source submitted as one)."""
    return {
        "what": {"identifier": {"system": system, "value": value}},
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "20", "Job"),
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() and len(value) <= _MAX_IDENTIFIER else None


def _is_submission_set(resource: Mapping[str, Any]) -> bool:
    """A List coded as MHD's SubmissionSet (MHDlistTypes#submissionset: MHD's SubmissionSet
    profiles fix List.code so)."""
    if resource.get("resourceType") != "List":
        return False
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, Mapping) else None
    return any(isinstance(c, Mapping) and c.get("code") == "submissionset"
               and str(c.get("system", "")).endswith("/MHDlistTypes") for c in codings or ())


def _unique_id(entry: Mapping[str, Any], resource: Mapping[str, Any]) -> tuple[str, str] | None:
    """The SubmissionSet's uniqueId: its identifier holding an OID (MHD 4.2
    IHE.MHD.SubmissionSetUniqueIdIdentifier, marked ``usual``; the entryUUID, an ``urn:uuid:``,
    is the ``official`` one: adapter.mapping.mhd_provide_bundle.submission_set_unique_id); without
    one (a Bundle refused for that), its entry's ``urn:`` fullUrl (an RFC 3986 URI)."""
    found = submission_set_unique_id(resource)
    if found is not None and _text(found[0]) and _text(found[1]):
        return found
    full_url = _text(entry.get("fullUrl"))
    return (URN_IETF_RFC_3986, full_url) if full_url and full_url.startswith("urn:") else None


def provide_document_bundle(bundle: Mapping[str, Any], server_url: str | None = None) -> MhdTransaction | None:
    """ITI-65, if ``bundle`` (as received, not yet checked) is a transaction in MHD's shape: one
    with a SubmissionSet List. A transaction without one is a plain FHIR transaction, audited as
    BALP's create. Read before the Bundle is checked, so that its refusals (purpose of use,
    consent) are audited as ITI-65 too; only the SubmissionSet's uniqueId is taken from it."""
    if not isinstance(bundle, Mapping) or bundle.get("type") != "transaction":
        return None
    entries = bundle.get("entry")
    for entry in entries if isinstance(entries, list) else ():
        resource = entry.get("resource") if isinstance(entry, Mapping) else None
        if isinstance(resource, Mapping) and _is_submission_set(resource):
            return MhdTransaction(PROVIDE_DOCUMENT_BUNDLE, _unique_id(entry, resource), server_url)
    return None


def find_document_references(server_url: str | None = None) -> MhdTransaction:
    """ITI-67: a search of DocumentReference by an R4 reader."""
    return MhdTransaction(FIND_DOCUMENT_REFERENCES, server_url=server_url)


def retrieve_document(server_url: str | None = None) -> MhdTransaction:
    """ITI-68: a GET of the Binary a DocumentReference's attachment.url names."""
    return MhdTransaction(RETRIEVE_DOCUMENT, server_url=server_url)


__all__ = ["FIND_DOCUMENT_REFERENCES", "PROVIDE_DOCUMENT_BUNDLE", "RETRIEVE_DOCUMENT", "MhdShape",
           "find_document_references", "mhd_shape", "provide_document_bundle", "retrieve_document",
           "submission_set_entity"]
