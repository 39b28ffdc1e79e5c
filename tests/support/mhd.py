"""IHE MHD Provide Document Bundle [ITI-65] requests as a Document Source sends them
(https://profiles.ihe.net/ITI/MHD/ITI-65.html): the Minimal ProvideBundle profile on the Bundle, a
SubmissionSet List first whose ``entry.item`` names the DocumentReference, the DocumentReference
(masterIdentifier, securityLabel, format, hash and size of the document) and the Binary, each
with a ``urn:uuid`` fullUrl and ``request`` POST to its type."""

from __future__ import annotations

import base64
import hashlib
import uuid
from typing import Any

from tests.support.app import PATIENT

MHD = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/"
MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
FORMAT_CODE = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"


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


def provide_document_bundle(document: bytes, *, content_type: str = "image/jpeg",
                            patient: dict[str, str] | None = None) -> dict[str, Any]:
    """An ITI-65 request for one document of the patient (by identifier, and a reference as a
    PIXm/PDQm lookup gives it)."""
    ss, dr, binary = (uuid.uuid4().urn for _ in range(3))
    subject = {"reference": "Patient/p-1", "identifier": dict(patient or PATIENT)}
    submission_set = submission_set_resource([dr], entry_uuid=ss, subject=subject)
    document_reference = {
        "resourceType": "DocumentReference", "meta": {"profile": [MHD + "IHE.MHD.Minimal.DocumentReference"]},
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.99.2"},
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": dr}],
        "status": "current", "subject": subject, "date": "2026-11-01T10:00:00Z",
        "securityLabel": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                                       "code": "N"}]}],
        "content": [{"attachment": {"contentType": content_type, "url": binary, "size": len(document),
                                    "hash": base64.b64encode(hashlib.sha1(document).digest()).decode(),
                                    "creation": "2026-11-01T09:00:00Z"},
                     "format": {"system": FORMAT_CODE, "code": "urn:ihe:iti:xds:2017:mimeTypeSufficient"}}]}
    return {"resourceType": "Bundle", "meta": {"profile": [MHD + "IHE.MHD.Minimal.ProvideBundle"]},
            "type": "transaction", "timestamp": "2026-11-01T10:00:00Z", "entry": [
                {"fullUrl": ss, "resource": submission_set, "request": {"method": "POST", "url": "List"}},
                {"fullUrl": dr, "resource": document_reference,
                 "request": {"method": "POST", "url": "DocumentReference"}},
                {"fullUrl": binary, "request": {"method": "POST", "url": "Binary"},
                 "resource": {"resourceType": "Binary", "contentType": content_type,
                              "data": base64.b64encode(document).decode("ascii")}}]}
