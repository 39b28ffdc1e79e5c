"""IHE MHD Provide Document Bundle [ITI-65] requests as a Document Source sends them
(https://profiles.ihe.net/ITI/MHD/ITI-65.html): the Minimal ProvideBundle profile on the Bundle, a
SubmissionSet List first whose ``entry.item`` names the DocumentReference, the DocumentReference
(masterIdentifier, securityLabel, format, hash and size of the document) and the Binary, each
with a ``urn:uuid`` fullUrl and ``request`` POST to its type.

Each DocumentReference says it is a photographed document with the adapter's photo-kind
extension (:data:`DOCUMENT_KIND`): without it a record is a clinical photo, which needs the
patient's consent (safety review finding 2), and these documents are sent without one. A test of
what a Document Source that knows nothing of the extension sends removes it."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

from tests.support.app import PATIENT

MHD = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/"
MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
FORMAT_CODE = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
PHOTO_KIND = "http://clinical-image-adapter.org/fhir/StructureDefinition/photo-kind"
#: The adapter's photo-kind extension saying the record is a photographed document (no consent for care).
DOCUMENT_KIND = {"url": PHOTO_KIND, "valueCode": "document"}


def submission_set_resource(items: list[str], *, entry_uuid: str | None = None,
                            subject: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Minimal SubmissionSet List listing ``items`` (the references of the Bundle's
    DocumentReferences): its sourceId, uniqueId (an OID) and entryUUID, submissionTime. The
    identifiers' ``use`` is as this suite has always sent it (uniqueId ``official``); MHD 4.2 marks
    the uniqueId ``usual``, and the adapter finds it by its OID either way."""
    out: dict[str, Any] = {
        "resourceType": "List", "meta": {"profile": [MHD + "IHE.MHD.Minimal.SubmissionSet"]},
        "extension": [{"url": MHD + "ihe-sourceId", "valueIdentifier": {"value": "urn:oid:1.2.3.4"}}],
        "identifier": [{"use": "official", "system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.99.1"},
                       {"use": "usual", "system": "urn:ietf:rfc:3986", "value": entry_uuid or uuid.uuid4().urn}],
        "status": "current", "mode": "working",
        "code": {"coding": [{"system": MHD_LIST_TYPES, "code": "submissionset"}]},
        "date": "2026-11-01T10:00:00Z", "entry": [{"item": {"reference": item}} for item in items]}
    if subject is not None:
        out["subject"] = subject
    return out


def _document_entries(document: bytes, subject: dict[str, Any], *, content_type: str, dr: str, binary: str,
                      unique_id: str) -> list[dict[str, Any]]:
    """The DocumentReference entry of one document and its Binary entry."""
    document_reference = {
        "resourceType": "DocumentReference", "meta": {"profile": [MHD + "IHE.MHD.Minimal.DocumentReference"]},
        "extension": [dict(DOCUMENT_KIND)],
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": unique_id},
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": dr}],
        "status": "current", "subject": subject, "date": "2026-11-01T10:00:00Z",
        "securityLabel": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                       "code": "N"}]}],
        "content": [{"attachment": {"contentType": content_type, "url": binary, "size": len(document),
                                    "hash": base64.b64encode(hashlib.sha1(document).digest()).decode(),
                                    "creation": "2026-11-01T09:00:00Z"},
                     "format": {"system": FORMAT_CODE, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"}}]}
    return [{"fullUrl": dr, "resource": document_reference, "request": {"method": "POST", "url": "DocumentReference"}},
            {"fullUrl": binary, "request": {"method": "POST", "url": "Binary"},
             "resource": {"resourceType": "Binary", "contentType": content_type,
                          "data": base64.b64encode(document).decode("ascii")}}]


def _subject(patient: dict[str, str] | None) -> dict[str, Any]:
    """The suite's patient is Patient/p-1; another has a reference of its own (one Patient
    reference names one patient identifier: a second would be refused, 422)."""
    reference = "Patient/p-1" if patient is None or patient == PATIENT else f"Patient/p-{patient['value']}"
    return {"reference": reference, "identifier": dict(patient or PATIENT)}


def _provide_bundle(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "meta": {"profile": [MHD + "IHE.MHD.Minimal.ProvideBundle"]},
            "type": "transaction", "timestamp": "2026-11-01T10:00:00Z", "entry": entries}


def provide_document_bundle(document: bytes, *, content_type: str = "image/jpeg",
                            patient: dict[str, str] | None = None) -> dict[str, Any]:
    """An ITI-65 request for one document of the patient (by identifier, and a reference as a
    PIXm/PDQm lookup gives it)."""
    ss, dr, binary = (uuid.uuid4().urn for _ in range(3))
    subject = _subject(patient)
    submission_set = submission_set_resource([dr], entry_uuid=ss, subject=subject)
    return _provide_bundle([
        {"fullUrl": ss, "resource": submission_set, "request": {"method": "POST", "url": "List"}},
        *_document_entries(document, subject, content_type=content_type, dr=dr, binary=binary,
                           unique_id="urn:oid:1.2.3.4.99.2")])


def provide_documents_bundle(documents: list[bytes], *, content_type: str = "image/jpeg",
                             patients: list[dict[str, str] | None] | None = None,
                             consent: dict[str, Any] | None = None) -> dict[str, Any]:
    """An ITI-65 request for several documents in one SubmissionSet (ITI-65 2:3.65.4.1.2): the
    SubmissionSet first, listing every DocumentReference, then each DocumentReference followed by
    its own Binary (entries 1, 3, 5… the records, 2, 4, 6… their Binaries), then ``consent`` when
    given. ``patients``: each document's patient (default: all the suite's PATIENT); the
    SubmissionSet is the first document's."""
    chosen = patients or [None] * len(documents)
    refs = [(uuid.uuid4().urn, uuid.uuid4().urn) for _ in documents]
    ss = uuid.uuid4().urn
    entries: list[dict[str, Any]] = [
        {"fullUrl": ss, "resource": submission_set_resource([dr for dr, _ in refs], entry_uuid=ss,
                                                            subject=_subject(chosen[0])),
         "request": {"method": "POST", "url": "List"}}]
    for k, (document, (dr, binary)) in enumerate(zip(documents, refs, strict=True)):
        entries += _document_entries(document, _subject(chosen[k]), content_type=content_type, dr=dr, binary=binary,
                                     unique_id=f"urn:oid:1.2.3.4.99.2.{k + 1}")
    if consent is not None:
        entries.append({"fullUrl": uuid.uuid4().urn, "resource": consent, "request": {"method": "POST", "url": "Consent"}})
    return _provide_bundle(entries)


#: The adapter's codes of an ingest's warnings (README POST /fhir).
INGEST_WARNING = "urn:clinical-image-adapter:ingest-warning"


def ingest_warnings(entry: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """The warnings of the ingest (a ``POST /photos`` receipt's) in a transaction-response
    entry's ``response.outcome``: each issue of severity warning that is no Document Sharing
    warning (``not-supported``, ITI-65), as (its IssueType, its code in the adapter's
    ingest-warning system, its ``details.text``)."""
    issues = entry["response"].get("outcome", {}).get("issue", [])
    out: list[tuple[str, str | None, str]] = []
    for issue in issues:
        if issue["severity"] != "warning" or issue["code"] == "not-supported":
            continue
        codes = [c["code"] for c in issue["details"].get("coding", []) if c["system"] == INGEST_WARNING]
        out.append((issue["code"], codes[0] if codes else None, issue["details"]["text"]))
    return out
