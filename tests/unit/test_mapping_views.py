"""Read views (adapter.mapping.views) and keyed pseudonyms (adapter.mapping.pseudonym).

Inputs are small R4 literals shaped like our stored resources (after the shared fhir-good
fixtures), seeded with identifying content that the restricted views must remove.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from fhir.resources.R4B.binary import Binary
from fhir.resources.R4B.consent import Consent
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.media import Media
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.provenance import Provenance

from adapter.errors import ConfigurationError, Forbidden, NotSupported
from adapter.mapping import codes, views
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.mapping.released_ids import ReleasedIds
from adapter.mapping.tables import Tables
from adapter.mapping.views import PIXELS_NOT_CLEANED_NOTE, security_labels
from adapter.model.decision import Decision, View
from adapter.model.photo import PhotoKind
from adapter.model.purpose import PurposeOfUse
from tests.support.fhir_factories import tables as shipped_tables

pytestmark = pytest.mark.unit

JSON = dict[str, Any]

PATIENT_SYSTEM = "urn:oid:2.999.1.1"
PATIENT_VALUE = "MRN-4711-XYZ"
STORED_SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
ORIGINAL_SHA = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"
POLICY_URI = "urn:clinical-image-adapter:policy:clinical-photography:v1"
KEY = b"k" * 32
LEFT = {"system": codes.SNOMED, "code": "7771000", "display": "Left"}
PSEUDONYM_SYSTEM = "urn:clinical-image-adapter:pseudonym"

#: Strings that identify the patient, the staff, the visit or the record.
IDENTIFYING = [
    PATIENT_VALUE, "pat-123", "Jane", "Roe", "Alice", "prac-1", "Bob", "ext-9", "enc-998877", "Ward 3",
    "Clinic", "org-1", "dressing", "urn:oid:1.2.826", "sr-1", "consent-form-1", ORIGINAL_SHA,
]


# --- factories: fresh dicts every call ---------------------------------------------------------

def subject() -> JSON:
    return {"reference": "Patient/pat-123", "type": "Patient",
            "identifier": {"system": PATIENT_SYSTEM, "value": PATIENT_VALUE}, "display": "Jane Roe"}


def media() -> JSON:
    return {
        "resourceType": "Media",
        "id": "wound-photo-1",
        "meta": {"versionId": "1", "lastUpdated": "2024-03-01T09:16:02.120Z", "source": "urn:ward-3-app",
                 "security": [{"system": codes.V3_CONFIDENTIALITY, "code": "N"}]},
        "text": {"status": "generated",
                 "div": '<div xmlns="http://www.w3.org/1999/xhtml"><p>Wound photo of Jane Roe</p></div>'},
        "extension": [
            {"url": codes.EXT_PHOTO_KIND, "valueCode": "clinical"},
            {"url": codes.EXT_PHOTO_SOURCE, "valueCode": "clinician"},
            {"url": codes.EXT_CAPTURE_DEVICE, "valueCode": "personal"},
            {"url": codes.EXT_CONSENT_RECORDED_BY, "valueReference": {"display": "Nurse Bob"}},
        ],
        "identifier": [{"system": codes.SHA256_SYSTEM, "value": STORED_SHA},
                       {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.826.0.1.3680043.8.498.1"}],
        "status": "completed",
        "type": {"coding": [{"system": codes.MEDIA_TYPE, "code": "image", "display": "Image"}]},
        "modality": {"coding": [{"system": codes.DCM, "code": "XC", "display": "External-camera Photography"}]},
        "view": {"coding": [{"system": codes.SNOMED, "code": "399067008", "display": "Lateral projection"}]},
        "subject": subject(),
        "encounter": {"reference": "Encounter/enc-998877", "display": "Ward 3 visit"},
        "createdDateTime": "2024-03-01T10:15:00+01:00",
        "issued": "2024-03-01T09:16:02.120Z",
        "operator": {"reference": "Practitioner/prac-1", "display": "Dr. Alice Example"},
        "reasonCode": [{"coding": [{"system": codes.SNOMED, "code": "225552003", "display": "Wound care"}],
                        "text": "Jane's wound check"}],
        "bodySite": {"extension": [{"url": codes.EXT_LATERALITY, "valueCoding": LEFT}],
                     "coding": [{"system": codes.SNOMED, "code": "14975008", "display": "Forearm"}],
                     "text": "left forearm of Jane"},
        "deviceName": "Ward 3 clinical camera",
        "height": 3000,
        "width": 4000,
        "content": {"contentType": "image/jpeg", "url": "Binary/wound-photo-1-bin", "size": 2519841,
                    "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "title": "Jane Roe wound",
                    "creation": "2024-03-01T10:15:00+01:00"},
        "note": [{"authorString": "Dr. Alice Example", "text": "Taken after dressing removal for Jane Roe"}],
    }


def document_reference() -> JSON:
    return {
        "resourceType": "DocumentReference",
        "id": "doc-photo-1",
        "meta": {"lastUpdated": "2024-03-01T09:16:02.120Z"},
        "extension": [{"url": codes.EXT_PHOTO_KIND, "valueCode": "document"}],
        "masterIdentifier": {"system": codes.SHA256_SYSTEM, "value": STORED_SHA},
        "identifier": [{"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.826.0.1.3680043.8.498.2"}],
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": codes.PHOTO_KIND_SYSTEM, "code": "document",
                             "display": "Photographed document"}], "text": "Letter for Jane"},
        "category": [{"coding": [{"system": codes.PHOTO_KIND_SYSTEM, "code": "document"}]}],
        "subject": subject(),
        "date": "2024-03-01T09:16:02.120Z",
        "author": [{"reference": "Practitioner/prac-1", "display": "Dr. Alice Example"}],
        "authenticator": {"reference": "Practitioner/prac-1", "display": "Dr. Alice Example"},
        "custodian": {"reference": "Organization/org-1", "display": "St. Example Clinic"},
        "relatesTo": [{"code": "appends", "target": {"reference": "DocumentReference/doc-old-1"}}],
        "description": "Discharge letter of Jane Roe",
        "securityLabel": [{"coding": [{"system": codes.V3_CONFIDENTIALITY, "code": "R"}]}],
        "content": [{
            "attachment": {"contentType": "image/jpeg", "url": "Binary/doc-photo-1-bin", "size": 1234,
                           "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk=", "title": "Jane Roe letter.jpg",
                           "creation": "2024-03-01T10:15:00+01:00"},
            "format": {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                       "code": "urn:ihe:iti:xds-sd:pdf:2008"},
        }],
        "context": {
            "encounter": [{"reference": "Encounter/enc-998877", "display": "Ward 3 visit"}],
            "event": [{"coding": [{"system": codes.SNOMED, "code": "225552003"}], "text": "Jane visit"}],
            "period": {"start": "2024-03-01T10:00:00+01:00", "end": "2024-03-01T11:00:00+01:00"},
            "facilityType": {"coding": [{"system": codes.SNOMED, "code": "225746001", "display": "Ward"}]},
            "practiceSetting": {"coding": [{"system": codes.SNOMED, "code": "394582007",
                                            "display": "Dermatology"}]},
            "sourcePatientInfo": {"reference": "Patient/pat-123", "display": "Jane Roe"},
            "related": [{"reference": "ServiceRequest/sr-1"}],
        },
    }


def consent() -> JSON:
    return {
        "resourceType": "Consent",
        "id": "photo-consent-1",
        "extension": [
            {"url": codes.EXT_CONSENT_METHOD, "valueCode": "written"},
            {"url": codes.EXT_CONSENT_RECORDED_BY,
             "valueReference": {"reference": "Practitioner/prac-1", "display": "Dr. Alice Example"}},
        ],
        "status": "active",
        "scope": {"coding": [{"system": codes.CONSENT_SCOPE, "code": "patient-privacy",
                              "display": "Privacy Consent"}]},
        "category": [{"coding": [{"system": codes.LOINC, "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": subject(),
        "dateTime": "2024-03-01T09:58:00+01:00",
        "performer": [{"reference": "Patient/pat-123", "display": "Jane Roe"}],
        "organization": [{"reference": "Organization/org-1", "display": "St. Example Clinic"}],
        "sourceAttachment": {"contentType": "application/pdf", "title": "Signed form, Jane Roe",
                             "url": "Binary/consent-form-1"},
        "policy": [{"uri": POLICY_URI}],
        "policyRule": {"coding": [{"system": codes.V3_ACT_CODE, "code": "OPTIN", "display": "opt-in"}]},
        "verification": [{"verified": True, "verifiedWith": {"reference": "Patient/pat-123"},
                          "verificationDate": "2024-03-01T10:00:00+01:00"}],
        "provision": {
            "type": "permit",
            "period": {"start": "2024-03-01", "end": "2025-03-01"},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                            "code": "IRCP"}]},
                       "reference": {"reference": "Practitioner/prac-1", "display": "Dr. Alice Example"}}],
            "action": [{"coding": [{"system": codes.CONSENT_ACTION, "code": "use"}]}],
            "purpose": [{"system": codes.V3_ACT_REASON, "code": "TREAT", "display": "treatment"},
                        {"system": codes.V3_ACT_REASON, "code": "HRESCH", "display": "healthcare research"}],
            "class": [{"system": "urn:ietf:bcp:13", "code": "image/jpeg"},
                      {"system": "http://hl7.org/fhir/resource-types", "code": "Media"}],
            "data": [{"meaning": "instance", "reference": {"reference": "Media/wound-photo-1",
                                                           "display": "Jane Roe wound"}}],
            "provision": [{"type": "deny",
                           "purpose": [{"system": codes.V3_ACT_REASON, "code": "MLTRAINING"}]}],
        },
    }


def provenance() -> JSON:
    return {
        "resourceType": "Provenance",
        "id": "photo-prov-1",
        "target": [{"reference": "Media/wound-photo-1", "display": "Jane Roe wound"},
                   {"reference": "Binary/wound-photo-1-bin"}],
        "occurredDateTime": "2024-03-01T10:15:00+01:00",
        "recorded": "2024-03-01T09:16:02.120Z",
        "location": {"reference": "Location/ward-3", "display": "Ward 3"},
        "reason": [{"coding": [{"system": codes.V3_ACT_REASON, "code": "TREAT"}], "text": "Jane's care"}],
        "activity": {"coding": [{"system": codes.V3_DATA_OPERATION, "code": "CREATE", "display": "create"}]},
        "agent": [
            {"type": {"coding": [{"system": codes.PROVENANCE_PARTICIPANT_TYPE, "code": "author"}]},
             "who": {"reference": "Practitioner/ext-9", "display": "Bob Colleague"},
             "onBehalfOf": {"reference": "Organization/org-1", "display": "St. Example Clinic"}},
            {"type": {"coding": [{"system": codes.PROVENANCE_PARTICIPANT_TYPE, "code": "assembler"}]},
             "who": {"reference": "Device/adapter"}},
        ],
        "entity": [
            {"role": "source", "what": {"identifier": {"system": codes.SHA256_SYSTEM, "value": ORIGINAL_SHA},
                                        "display": "JPEG from Bob, Ward 3"}},
            {"role": "derivation", "what": {"reference": "Binary/wound-photo-1-bin"}},
        ],
    }


def binary() -> JSON:
    return {
        "resourceType": "Binary",
        "id": "wound-photo-1-bin",
        "contentType": "image/jpeg",
        "securityContext": {"reference": "Media/wound-photo-1", "display": "Jane Roe wound"},
        "data": "/9j/4AAQSkZJRgABAQAAAQABAAD/2Q==",
    }


FACTORIES: dict[str, Callable[[], JSON]] = {
    "Media": media, "DocumentReference": document_reference, "Consent": consent,
    "Provenance": provenance, "Binary": binary,
}
MODELS: dict[str, Any] = {
    "Media": Media, "DocumentReference": DocumentReference, "Consent": Consent, "Provenance": Provenance,
    "Binary": Binary, "OperationOutcome": OperationOutcome,
}
PURPOSE = {View.FULL: "TREAT", View.DEIDENTIFIED: "TRAIN", View.PSEUDONYMISED: "HRESCH"}
OBLIGATION = {View.FULL: (), View.DEIDENTIFIED: ("DEID",), View.PSEUDONYMISED: ("PSEUD",)}


def decision(view: View, *, purposes: frozenset[str] = frozenset({"TREAT", "HRESCH", "TRAIN"}),
             break_glass: bool = False, obligations: tuple[str, ...] | None = None,
             pixels_may_identify: bool = True) -> Decision:
    return Decision(permitted=True, reason="test", purpose=PurposeOfUse(PURPOSE[view]), view=view,
                    break_glass=break_glass, permitted_purposes=purposes,
                    obligations=OBLIGATION[view] if obligations is None else obligations,
                    pixels_may_identify=pixels_may_identify)


def pixel_note(resource_type: str, key: str) -> Any:
    """What a restricted view says in words of a picture nobody cleaned (Media.note, a
    DocumentReference.description paragraph); None where the type says nothing."""
    return {("Media", "note"): [{"text": PIXELS_NOT_CLEANED_NOTE}],
            ("DocumentReference", "description"): PIXELS_NOT_CLEANED_NOTE}.get((resource_type, key))


@pytest.fixture(scope="module")
def tables() -> Tables:
    return shipped_tables()


@pytest.fixture()
def pseudonymizer() -> Pseudonymizer:
    return Pseudonymizer(KEY, PSEUDONYM_SYSTEM)


#: The ids the views show: each restricted view its own keyed ones (adapter.mapping.released_ids).
IDS = ReleasedIds(b"i" * 32)


def render(resource: JSON, decision: Decision, **kwargs: Any) -> JSON:
    """The view of ``resource`` with the ids a reader of the decision's view is shown."""
    return views.render(resource, decision, ids=IDS.space(decision.view), **kwargs)


def released(view: View, resource_type: str, id: str) -> str:
    """``id`` as a reader of ``view`` is shown it."""
    return IDS.space(view).released(resource_type, id)


def validate_r4(resource: JSON) -> None:
    MODELS[resource["resourceType"]].model_validate(resource)


def text_of(resource: JSON) -> str:
    return json.dumps(resource, ensure_ascii=False)


def without_security(resource: JSON) -> JSON:
    out = copy.deepcopy(resource)
    out.get("meta", {}).pop("security", None)
    if out.get("meta") == {}:
        del out["meta"]
    return out


ALL = [(rt, view) for rt in FACTORIES for view in View]


# --- every resource type x view ---------------------------------------------------------------

@pytest.mark.parametrize(("resource_type", "view"), ALL)
def test_output_is_valid_r4_and_input_untouched(resource_type: str, view: View, tables: Tables,
                                                pseudonymizer: Pseudonymizer) -> None:
    source = FACTORIES[resource_type]()
    before = copy.deepcopy(source)
    out = render(source, decision(view), tables=tables, pseudonymizer=pseudonymizer)
    assert source == before
    assert out is not source
    validate_r4(out)
    assert out["resourceType"] == resource_type and out["id"] == released(view, resource_type, source["id"])
    # the result shares no mutable structure with the input
    out.setdefault("meta", {})["versionId"] = "changed"
    assert source == before


@pytest.mark.parametrize(("resource_type", "view"), ALL)
def test_labels_exact(resource_type: str, view: View, tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    """The whole record lists the purposes the Consents permit; a restricted view the purpose it
    serves only (FHIR REST review finding 4: the patient's other purposes grouped its copies by
    patient), whatever else the Consents permit."""
    out = render(FACTORIES[resource_type](), decision(view), tables=tables, pseudonymizer=pseudonymizer)
    purposes = {"HRESCH": "healthcare research", "TRAIN": "training", "TREAT": "treatment"}
    shown = sorted(purposes) if view is View.FULL else [PURPOSE[view]]
    expected = [{"system": codes.V3_CONFIDENTIALITY, "code": "R", "display": "restricted"}]
    expected += [{"system": codes.V3_ACT_REASON, "code": code, "display": purposes[code]} for code in shown]
    # a picture (Media, DocumentReference, Binary) nobody cleaned is not claimed anonymised (review F3)
    image = resource_type in ("Media", "DocumentReference", "Binary")
    redacted = {"system": codes.V3_OBSERVATION_VALUE, "code": "REDACTED", "display": "redacted"}
    if view is View.DEIDENTIFIED:
        expected += [{"system": codes.V3_ACT_CODE, "code": "DEID", "display": "deidentify"},
                     redacted if image else
                     {"system": codes.V3_OBSERVATION_VALUE, "code": "ANONYED", "display": "anonymized"}]
    if view is View.PSEUDONYMISED:
        expected += [{"system": codes.V3_ACT_CODE, "code": "PSEUD", "display": "pseudonymize"},
                     redacted if image else
                     {"system": codes.V3_OBSERVATION_VALUE, "code": "PSEUDED", "display": "pseudonymized"}]
    assert out["meta"]["security"] == expected
    assert expected == security_labels(decision(view), tables, image=image)
    confidentiality = [c for c in out["meta"]["security"] if c["system"] == codes.V3_CONFIDENTIALITY]
    assert len(confidentiality) == 1


@pytest.mark.parametrize("resource_type", list(FACTORIES))
def test_full_view_is_unchanged_content(resource_type: str, tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    source = FACTORIES[resource_type]()
    out = render(source, decision(View.FULL), tables=tables, pseudonymizer=pseudonymizer)
    assert without_security(out) == without_security(source)


@pytest.mark.parametrize("resource_type", [rt for rt in FACTORIES if rt != "Binary"])
def test_deidentified_leaves_nothing_identifying(resource_type: str, tables: Tables,
                                                 pseudonymizer: Pseudonymizer) -> None:
    out = render(FACTORIES[resource_type](), decision(View.DEIDENTIFIED), tables=tables,
                 pseudonymizer=pseudonymizer)
    text = text_of(out)
    for needle in IDENTIFYING + [STORED_SHA, "2jmj7l5rSw0yVb", PSEUDONYM_SYSTEM]:
        assert needle not in text, needle
    for key in ("subject", "patient", "encounter", "identifier", "note", "text",
                "operator", "author", "performer", "organization", "sourceAttachment", "description",
                "deviceName", "custodian", "authenticator", "location", "issued", "date", "contained"):
        assert out.get(key) == pixel_note(resource_type, key), key
    # a DocumentReference's masterIdentifier is the view's own, made of its released id alone
    assert out.get("masterIdentifier") == (_view_master_identifier(out["id"]) if resource_type == "DocumentReference"
                                           else None)
    assert "lastUpdated" not in out.get("meta", {})
    # dates: the year only; the one required instant (Provenance.recorded) is 1 January UTC
    if resource_type == "Provenance":
        assert out["recorded"] == "2024-01-01T00:00:00Z"
        text = text_of({k: v for k, v in out.items() if k != "recorded"})
    assert re.search(r"\d{4}-\d{2}", text) is None, text


@pytest.mark.parametrize("resource_type", [rt for rt in FACTORIES if rt != "Binary"])
def test_pseudonymised_leaves_no_names_and_pseudonymises_the_patient(
        resource_type: str, tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    out = render(FACTORIES[resource_type](), decision(View.PSEUDONYMISED), tables=tables,
                 pseudonymizer=pseudonymizer)
    text = text_of(out)
    for needle in IDENTIFYING:
        assert needle not in text, needle
    for key in ("encounter", "note", "text", "operator", "author", "performer", "organization",
                "sourceAttachment", "description", "deviceName", "custodian", "contained"):
        assert out.get(key) == pixel_note(resource_type, key), key
    expected = {"type": "Patient", "identifier": {"system": PSEUDONYM_SYSTEM,
                                                  "value": pseudonymizer.pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)}}
    if resource_type in ("Media", "DocumentReference"):
        assert out["subject"] == expected
    if resource_type == "Consent":
        assert out["patient"] == expected


def test_pseudonym_is_the_same_across_resources(tables: Tables) -> None:
    subjects = []
    for factory, key in ((media, "subject"), (document_reference, "subject"), (consent, "patient")):
        # a new Pseudonymizer per request: stability rests on the key alone
        out = render(factory(), decision(View.PSEUDONYMISED), tables=tables,
                     pseudonymizer=Pseudonymizer(KEY, PSEUDONYM_SYSTEM))
        subjects.append(out[key])
    assert subjects[0] == subjects[1] == subjects[2]
    assert re.fullmatch(r"[a-z2-7]{26}", subjects[0]["identifier"]["value"])


def test_pseudonymised_keeps_dates_and_no_identifier_not_even_the_sha256(tables: Tables,
                                                                        pseudonymizer: Pseudonymizer) -> None:
    """De-identification review: the pseudonymised view kept the SHA-256 of the stored bytes as
    the record's identifier (and a document's masterIdentifier), and searched by it; the
    uploader's receipt gives that digest, so whoever saw the receipt (the photographer, the
    sending app, the PACS) found the patient's pseudonym, and with it every pseudonymised
    record of that patient. The view now keeps no record identifier (its own keyed id names
    the record, adapter.mapping.released_ids)."""
    out = render(media(), decision(View.PSEUDONYMISED), tables=tables, pseudonymizer=pseudonymizer)
    assert "identifier" not in out and STORED_SHA not in str(out)
    assert out["createdDateTime"] == "2024-03-01T10:15:00+01:00"
    # research review finding 3: the adapter's own instants (when it stored the record) to the day
    assert out["issued"] == "2024-03-01T00:00:00Z"
    assert out["meta"]["lastUpdated"] == "2024-03-01T00:00:00Z"
    # review finding: size and hash described the stored bytes, not the copy released under
    # HRESCH (no ICC profile: another length); left out, as in the de-identified view
    assert out["content"] == {"contentType": "image/jpeg",
                              "url": f"Binary/{released(View.PSEUDONYMISED, 'Binary', 'wound-photo-1-bin')}",
                              "creation": "2024-03-01T10:15:00+01:00"}
    doc = render(document_reference(), decision(View.PSEUDONYMISED), tables=tables, pseudonymizer=pseudonymizer)
    assert not {"size", "hash"} & set(doc["content"][0]["attachment"])
    assert "identifier" not in doc and STORED_SHA not in str(doc)
    assert doc["masterIdentifier"] == _view_master_identifier(doc["id"])
    assert doc["date"] == "2024-03-01T00:00:00Z"
    assert doc["context"]["period"] == {"start": "2024-03-01T10:00:00+01:00", "end": "2024-03-01T11:00:00+01:00"}


def test_subject_known_only_by_reference_is_pseudonymised(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    source = media()
    source["subject"] = {"reference": "Patient/pat-123"}
    out = render(source, decision(View.PSEUDONYMISED), tables=tables, pseudonymizer=pseudonymizer)
    assert "pat-123" not in text_of(out)
    assert out["subject"]["identifier"]["system"] == PSEUDONYM_SYSTEM


def test_deidentified_media_keeps_clinical_codes(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    out = render(media(), decision(View.DEIDENTIFIED), tables=tables, pseudonymizer=pseudonymizer)
    assert out["status"] == "completed"
    assert out["bodySite"] == {"extension": [{"url": codes.EXT_LATERALITY, "valueCoding": LEFT}],
                               "coding": [{"system": codes.SNOMED, "code": "14975008", "display": "Forearm"}]}
    assert out["modality"]["coding"][0]["code"] == "XC"
    assert out["createdDateTime"] == "2024"
    assert out["content"] == {"contentType": "image/jpeg",
                              "url": f"Binary/{released(View.DEIDENTIFIED, 'Binary', 'wound-photo-1-bin')}",
                              "creation": "2024"}
    assert out["extension"] == [{"url": codes.EXT_PHOTO_KIND, "valueCode": "clinical"},
                                {"url": codes.EXT_PHOTO_SOURCE, "valueCode": "clinician"},
                                {"url": codes.EXT_CAPTURE_DEVICE, "valueCode": "personal"}]
    assert out["meta"] == {"versionId": "1", "security": out["meta"]["security"]}


def test_deidentified_consent_keeps_its_rules(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    out = render(consent(), decision(View.DEIDENTIFIED), tables=tables, pseudonymizer=pseudonymizer)
    assert out["policy"] == [{"uri": POLICY_URI}]  # ppc-1
    assert out["dateTime"] == "2024"
    assert out["extension"] == [{"url": codes.EXT_CONSENT_METHOD, "valueCode": "written"}]
    assert out["verification"] == [{"verified": True, "verificationDate": "2024"}]
    provision = out["provision"]
    assert provision["type"] == "permit"
    assert provision["period"] == {"start": "2024", "end": "2025"}
    assert provision["actor"] == [{"role": consent()["provision"]["actor"][0]["role"],
                                   "reference": {"display": "redacted"}}]
    assert provision["data"] == [{"meaning": "instance", "reference": {
        "reference": f"Media/{released(View.DEIDENTIFIED, 'Media', 'wound-photo-1')}"}}]
    assert provision["provision"] == [{"type": "deny",
                                       "purpose": [{"system": codes.V3_ACT_REASON, "code": "MLTRAINING"}]}]


def test_deidentified_provenance(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    out = render(provenance(), decision(View.DEIDENTIFIED), tables=tables, pseudonymizer=pseudonymizer)
    media_id, binary_id = (released(View.DEIDENTIFIED, "Media", "wound-photo-1"),
                           released(View.DEIDENTIFIED, "Binary", "wound-photo-1-bin"))
    assert out["target"] == [{"reference": f"Media/{media_id}"}, {"reference": f"Binary/{binary_id}"}]
    assert out["occurredDateTime"] == "2024"
    assert [a["who"] for a in out["agent"]] == [{"display": "author (redacted)"},
                                                {"display": "assembler (redacted)"}]
    assert all("onBehalfOf" not in a for a in out["agent"])
    assert out["entity"] == [{"role": "source", "what": {"display": "source (redacted)"}},
                             {"role": "derivation", "what": {"reference": f"Binary/{binary_id}"}}]
    assert out["reason"] == [{"coding": [{"system": codes.V3_ACT_REASON, "code": "TREAT"}]}]


@pytest.mark.parametrize("view", [View.DEIDENTIFIED, View.PSEUDONYMISED])
def test_binary_keeps_content_and_a_literal_security_context(view: View, tables: Tables,
                                                            pseudonymizer: Pseudonymizer) -> None:
    out = render(binary(), decision(view), tables=tables, pseudonymizer=pseudonymizer)
    assert without_security(out) == {"resourceType": "Binary", "id": released(view, "Binary", "wound-photo-1-bin"),
                                     "contentType": "image/jpeg",
                                     "securityContext": {"reference": f"Media/{released(view, 'Media', 'wound-photo-1')}"},
                                     "data": "/9j/4AAQSkZJRgABAQAAAQABAAD/2Q=="}


#: The stored ids of the factories' resources and of the records they reference.
STORED_IDS = ("wound-photo-1", "doc-photo-1", "photo-consent-1", "photo-prov-1", "wound-photo-1-bin",
              "doc-photo-1-bin")
_LITERAL = re.compile(r"^(Media|DocumentReference|Binary|Consent|Provenance)/(.+)$")


def _references(value: Any) -> list[str]:
    """Every literal reference (Reference.reference, Attachment.url) in ``value``."""
    if isinstance(value, list):
        return [r for item in value for r in _references(item)]
    if not isinstance(value, dict):
        return []
    own = [v for k, v in value.items() if k in ("reference", "url") and isinstance(v, str) and _LITERAL.match(v)]
    return own + [r for v in value.values() if isinstance(v, (dict, list)) for r in _references(v)]


@pytest.mark.parametrize(("resource_type", "view"), [(rt, v) for rt in FACTORIES
                                                     for v in (View.DEIDENTIFIED, View.PSEUDONYMISED)])
def test_restricted_views_show_their_own_ids(resource_type: str, view: View, tables: Tables,
                                             pseudonymizer: Pseudonymizer) -> None:
    """Found by the de-identification review (finding 3): every view kept the stored logical id,
    and every reference to a stored one, so a TRAIN copy joined on its id with the HRESCH copy
    (the pseudonym, the full dates) or with care's data (the patient). Each restricted view now
    shows its own keyed ids, for the resource and for every reference it keeps, each of which
    leads back (with the key) to the stored resource; none of the stored ids appears. Test seen
    failing: the stored ids were shown."""
    source = FACTORIES[resource_type]()
    out = render(source, decision(view), tables=tables, pseudonymizer=pseudonymizer)
    space = IDS.space(view)
    assert out["id"] != source["id"]
    assert space.stored(resource_type, out["id"]) == source["id"]
    other = View.PSEUDONYMISED if view is View.DEIDENTIFIED else View.DEIDENTIFIED
    assert out["id"] != released(other, resource_type, source["id"])
    assert IDS.space(other).stored(resource_type, out["id"]) is None
    assert not [stored for stored in STORED_IDS if stored in text_of(out)]
    references = _references(out)
    assert references  # each factory keeps one at least
    for reference in references:
        found = _LITERAL.match(reference)
        assert found is not None
        assert space.stored(found[1], found[2]) in STORED_IDS, reference
    full = render(source, decision(View.FULL), tables=tables, pseudonymizer=pseudonymizer)
    assert full["id"] == source["id"]  # care's view shows the stored ids


# --- labels -----------------------------------------------------------------------------------

def test_break_glass_adds_btg(tables: Tables) -> None:
    labels = security_labels(decision(View.FULL, purposes=frozenset(), break_glass=True), tables)
    assert labels == [{"system": codes.V3_CONFIDENTIALITY, "code": "R", "display": "restricted"},
                      {"system": codes.V3_ACT_REASON, "code": "BTG", "display": "break the glass"}]


def test_obligations_in_order_once_and_unknown_without_display(tables: Tables) -> None:
    labels = security_labels(decision(View.FULL, purposes=frozenset(), obligations=("AUDIT", "DEID", "AUDIT",
                                                                                    "NOREUSE")), tables)
    assert labels[1:] == [{"system": codes.V3_ACT_CODE, "code": "AUDIT", "display": "audit"},
                          {"system": codes.V3_ACT_CODE, "code": "DEID", "display": "deidentify"},
                          {"system": codes.V3_ACT_CODE, "code": "NOREUSE"}]


def test_stored_labels_replaced_but_foreign_ones_kept(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    source = media()
    sensitivity = {"system": codes.V3_ACT_CODE, "code": "PSY"}
    source["meta"]["security"] = [
        {"system": codes.V3_ACT_REASON, "code": "HMARKT"},
        {"system": codes.V3_OBSERVATION_VALUE, "code": "PSEUDED"},
        {"system": codes.V3_ACT_CODE, "code": "DEID"},
        sensitivity,
    ]
    for view in View:
        out = render(source, decision(view, purposes=frozenset({"TREAT"})), tables=tables,
                     pseudonymizer=pseudonymizer)
        labels = out["meta"]["security"]
        assert labels[-1] == sensitivity
        assert labels[:-1] == security_labels(decision(view, purposes=frozenset({"TREAT"})), tables, image=True)


def test_a_more_restrictive_stored_confidentiality_is_never_lowered(tables: Tables,
                                                                    pseudonymizer: Pseudonymizer) -> None:
    source = media()
    source["meta"]["security"] = [{"system": codes.V3_CONFIDENTIALITY, "code": "V"}]
    out = render(source, decision(View.FULL), tables=tables, pseudonymizer=pseudonymizer)
    conf = [c for c in out["meta"]["security"] if c["system"] == codes.V3_CONFIDENTIALITY]
    assert conf == [{"system": codes.V3_CONFIDENTIALITY, "code": "V", "display": "very restricted"}]


# --- refusals ---------------------------------------------------------------------------------

def test_a_denied_decision_is_refused(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    denied = Decision(permitted=False, reason="no", purpose=PurposeOfUse("TRAIN"))
    with pytest.raises(Forbidden):
        render(media(), denied, tables=tables, pseudonymizer=pseudonymizer)


def test_restricted_view_of_an_unknown_type_is_refused(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    patient = {"resourceType": "Patient", "id": "p", "name": [{"family": "Roe"}]}
    with pytest.raises(NotSupported):
        render(patient, decision(View.DEIDENTIFIED), tables=tables, pseudonymizer=pseudonymizer)
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "information", "code": "suppressed"}]}
    out = render(outcome, decision(View.FULL), tables=tables, pseudonymizer=pseudonymizer)
    validate_r4(out)


def test_modifier_extension_is_refused_in_restricted_views(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    source = media()
    source["modifierExtension"] = [{"url": "http://example.org/x", "valueBoolean": True}]
    with pytest.raises(NotSupported):
        render(source, decision(View.DEIDENTIFIED), tables=tables, pseudonymizer=pseudonymizer)


# --- pseudonyms -------------------------------------------------------------------------------

def test_pseudonym_is_stable_and_key_dependent() -> None:
    a = Pseudonymizer(KEY, PSEUDONYM_SYSTEM).pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
    assert a == Pseudonymizer(KEY, PSEUDONYM_SYSTEM).pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
    assert re.fullmatch(r"[a-z2-7]{26}", a)
    assert a != Pseudonymizer(b"x" * 32, PSEUDONYM_SYSTEM).pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
    assert a != Pseudonymizer(KEY, "urn:other").pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
    assert a != Pseudonymizer(KEY, PSEUDONYM_SYSTEM).pseudonym("urn:oid:2.999.1.2", PATIENT_VALUE)
    assert a != Pseudonymizer(KEY, PSEUDONYM_SYSTEM).pseudonym(PATIENT_SYSTEM, PATIENT_VALUE + "0")
    assert PATIENT_VALUE.lower() not in a


def test_pseudonym_encoding_is_unambiguous() -> None:
    p = Pseudonymizer(KEY, PSEUDONYM_SYSTEM)
    assert p.pseudonym("a|b", "c") != p.pseudonym("a", "b|c")
    assert p.pseudonym("ab", "c") != p.pseudonym("a", "bc")


def test_pseudonymizer_refuses_an_empty_key_and_hides_it() -> None:
    with pytest.raises(ConfigurationError):
        Pseudonymizer(b"", PSEUDONYM_SYSTEM)
    assert "k" * 8 not in repr(Pseudonymizer(KEY, PSEUDONYM_SYSTEM))


# --- independent validation -------------------------------------------------------------------

def test_outputs_pass_the_npm_validators(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    from tests.conftest import require_or_skip
    from tests.support.fhir_validator import validate_r4 as npm_validate_r4

    outputs = [render(FACTORIES[rt](), decision(view), tables=tables, pseudonymizer=pseudonymizer)
               for rt, view in ALL]
    try:
        errors = npm_validate_r4(outputs)
    except RuntimeError as exc:
        require_or_skip(False, f"FHIR validators unavailable: {exc}")
        return
    assert errors == []


# --- what an IHE MHD Document Source said of a document (adapter.mapping.document_metadata) ----

SENDER_CANARY = "Jane Roe seen at 12 Acacia Avenue"


def mhd_document_reference() -> JSON:
    """A DocumentReference as stored from an ITI-67 Document Source: its LOINC type and
    category, codes of the context, format, an entryUUID identifier, a raised confidentiality,
    and text of the sender's in every display."""
    out = document_reference()
    out["identifier"] = [{"system": codes.SHA256_SYSTEM, "value": STORED_SHA},
                         {"use": "official", "system": "urn:ietf:rfc:3986",
                          "value": "urn:uuid:0c287d32-01e3-4d87-9953-9fcc9404eb21"}]
    out["meta"]["security"] = [{"system": codes.V3_CONFIDENTIALITY, "code": "V"}]
    out["type"] = {"coding": [{"system": codes.LOINC, "code": "34108-1", "display": SENDER_CANARY}]}
    out["category"] = [{"coding": [{"system": codes.PHOTO_KIND_SYSTEM, "code": "document"}]},
                       {"coding": [{"system": codes.LOINC, "code": "11369-6", "display": SENDER_CANARY}]}]
    out["securityLabel"] = [{"coding": [{"system": codes.V3_CONFIDENTIALITY, "code": "V"}]},
                            {"coding": [{"system": codes.V3_ACT_CODE, "code": "PSY", "display": SENDER_CANARY}]}]
    out["content"][0]["format"] = {"system": codes.IHE_FORMAT_CODE, "code": "urn:ihe:pcc:xphr:2007",
                                   "display": SENDER_CANARY}
    context = out["context"]
    context["event"] = [{"coding": [{"system": codes.SNOMED, "code": "71388002", "display": SENDER_CANARY}]}]
    context["facilityType"]["coding"][0]["display"] = SENDER_CANARY
    context["practiceSetting"]["coding"][0]["display"] = SENDER_CANARY
    return out


def _codes_of(concepts: Any) -> list[tuple[str, str]]:
    concepts = concepts if isinstance(concepts, list) else [concepts]
    return [(c["system"], c["code"]) for concept in concepts for c in concept["coding"]]


@pytest.mark.parametrize("view", [View.DEIDENTIFIED, View.PSEUDONYMISED])
def test_a_document_sources_codes_stay_in_the_restricted_views_without_its_text_or_identifiers(
        view: View, tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    """The codes an MHD Document Source sent (type, category, securityLabel, context.event,
    facilityType, practiceSetting, content.format) identify no one and stay, so a reader in the
    view can select by them; their displays are the sender's text, which nothing vouches for, and
    go; its entryUUID is a record identifier: in neither view (nor, since the de-identification
    review, the SHA-256 of the stored bytes). A confidentiality it raised (V) labels the
    release."""
    source = mhd_document_reference()
    out = render(source, decision(view), tables=tables, pseudonymizer=pseudonymizer)
    validate_r4(out)
    text = text_of(out)
    assert SENDER_CANARY not in text and "0c287d32" not in text
    assert _codes_of(out["type"]) == [(codes.LOINC, "34108-1")]
    assert _codes_of(out["category"]) == [(codes.PHOTO_KIND_SYSTEM, "document"), (codes.LOINC, "11369-6")]
    assert _codes_of(out["securityLabel"]) == [(codes.V3_CONFIDENTIALITY, "V"), (codes.V3_ACT_CODE, "PSY")]
    assert (out["content"][0]["format"]["system"], out["content"][0]["format"]["code"]) == (
        codes.IHE_FORMAT_CODE, "urn:ihe:pcc:xphr:2007")
    assert _codes_of(out["context"]["event"]) == [(codes.SNOMED, "71388002")]
    assert _codes_of(out["context"]["facilityType"]) == [(codes.SNOMED, "225746001")]
    assert _codes_of(out["context"]["practiceSetting"]) == [(codes.SNOMED, "394582007")]
    assert "identifier" not in out  # no record identifier in either view: the masterIdentifier is the view's
    assert out["masterIdentifier"] == _view_master_identifier(out["id"])
    assert out["meta"]["security"][0] == {"system": codes.V3_CONFIDENTIALITY, "code": "V",
                                          "display": "very restricted"}
    full = render(source, decision(View.FULL), tables=tables, pseudonymizer=pseudonymizer)
    assert without_security(full) == without_security(source)  # care sees what the sender sent


def _view_master_identifier(released_id: str) -> dict[str, str]:
    """What a restricted view gives a DocumentReference as its masterIdentifier: an OID of the
    name-based UUID of its released id (MHD review m6: IHE MHD requires one; none was given)."""
    value = uuid.uuid5(uuid.UUID("5b0c8f7e-3f4a-5d9b-9c1e-2a6f0d4b7c11"), f"DocumentReference/{released_id}").int
    return {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:2.25.{value}"}


def test_the_views_masterIdentifier_is_their_own_and_differs_between_them(tables: Tables,
                                                                          pseudonymizer: Pseudonymizer) -> None:
    deid = render(document_reference(), decision(View.DEIDENTIFIED), tables=tables, pseudonymizer=pseudonymizer)
    pseud = render(document_reference(), decision(View.PSEUDONYMISED), tables=tables, pseudonymizer=pseudonymizer)
    values = {deid["masterIdentifier"]["value"], pseud["masterIdentifier"]["value"],
              document_reference()["masterIdentifier"]["value"]}
    assert len(values) == 3  # none is the stored one, nor the other view's
    assert all(v.startswith("urn:oid:2.25.") for v in values - {document_reference()["masterIdentifier"]["value"]})


@pytest.mark.parametrize("view", [View.DEIDENTIFIED, View.PSEUDONYMISED])
def test_restricted_views_keep_the_secondary_image_warning_word_for_word(
        view: View, tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    # the de-identified and pseudonymised views dropped every note and description, the adapter's
    # own "review the original before diagnosis" with them, which the restricted DICOM copies
    # keep (clinical safety review 9): a training or research reader needs it as a clinician does
    warning = tables.kinds[PhotoKind.SECONDARY].warning
    assert warning
    photo = media()
    photo["note"] = [{"authorString": "Dr. Alice Example", "text": "ECG of Jane Roe"}, {"text": warning},
                     {"text": f"{warning} Jane Roe"}]
    out = render(photo, decision(view), tables=tables, pseudonymizer=pseudonymizer)
    assert out["note"] == [{"text": warning}, {"text": PIXELS_NOT_CLEANED_NOTE}]
    validate_r4(out)
    document = document_reference()
    document["description"] = f"ECG\n\nECG of Jane Roe, monitor bay 3\n\n{warning}"
    out = render(document, decision(view), tables=tables, pseudonymizer=pseudonymizer)
    assert out["description"] == f"{warning}\n\n{PIXELS_NOT_CLEANED_NOTE}"
    validate_r4(out)
    # a note or description holding no such text whole is left out as before
    photo["note"] = [{"text": f"{warning} Jane Roe"}]
    document["description"] = f"{warning} Jane Roe"
    clean = decision(view, pixels_may_identify=False)
    assert "note" not in render(photo, clean, tables=tables, pseudonymizer=pseudonymizer)
    assert "description" not in render(document, clean, tables=tables, pseudonymizer=pseudonymizer)


@pytest.mark.parametrize(("view", "claim"), [(View.DEIDENTIFIED, "ANONYED"), (View.PSEUDONYMISED, "PSEUDED")])
def test_a_picture_that_may_identify_is_not_claimed_anonymised(view: View, claim: str, tables: Tables,
                                                                pseudonymizer: Pseudonymizer) -> None:
    """Clinical-safety review F3: the restricted views labelled every image ANONYED or PSEUDED,
    though no view cleans pixels and a photo of the person, or of a document or screen, may
    identify the patient (test seen failing: ANONYED/PSEUDED on the Media, DocumentReference and
    Binary). REDACTED says what was done, and the record says the rest in words; a picture known
    not to identify (``pixels_may_identify`` False) keeps the view's claim, as a Consent or a
    Provenance (no picture) always does."""
    for resource_type, factory in FACTORIES.items():
        image = resource_type in ("Media", "DocumentReference", "Binary")
        for may_identify in (True, False):
            out = render(factory(), decision(view, pixels_may_identify=may_identify), tables=tables,
                         pseudonymizer=pseudonymizer)
            validate_r4(out)
            integrity = [c["code"] for c in out["meta"]["security"] if c["system"] == codes.V3_OBSERVATION_VALUE]
            assert integrity == (["REDACTED"] if image and may_identify else [claim]), (resource_type, may_identify)
            said = out.get("note", []) + [{"text": p} for p in out.get("description", "").split("\n\n") if p]
            assert ({"text": PIXELS_NOT_CLEANED_NOTE} in said) == (may_identify and resource_type != "Binary"
                                                                   and image), resource_type


def test_a_consent_shown_as_the_permission_it_gives(tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    """Review verify-1 finding 3: to a purpose other than care a Consent is the permission its
    records rest on (Decision.released_data): its nested denials (the patient's refusals) are left
    out, and provision.data names only the records the purpose is released, by the view's ids;
    a nested permit left naming none is left out (without data it would cover every record)."""
    resource = consent()
    resource["provision"]["data"].append({"meaning": "instance", "reference": {"reference": "Media/withheld-2"}})
    resource["provision"]["provision"].append({"type": "permit", "data": [
        {"meaning": "instance", "reference": {"reference": "Media/withheld-2"}}]})
    for view in (View.PSEUDONYMISED, View.DEIDENTIFIED, View.FULL):
        shown = dataclasses.replace(decision(view), released_data=frozenset({"Media/wound-photo-1"}))
        out = render(copy.deepcopy(resource), shown, tables=tables, pseudonymizer=pseudonymizer)
        validate_r4(out)
        assert [d["reference"]["reference"] for d in out["provision"]["data"]] == \
            [f"Media/{released(view, 'Media', 'wound-photo-1') if view is not View.FULL else 'wound-photo-1'}"]
        assert "provision" not in out["provision"], view
        assert "withheld-2" not in json.dumps(out) and released(View.PSEUDONYMISED, "Media", "withheld-2") \
            not in json.dumps(out)
    # care (released_data None) is shown the Consent whole
    whole = render(copy.deepcopy(resource), decision(View.FULL), tables=tables, pseudonymizer=pseudonymizer)
    assert whole["provision"]["provision"] == resource["provision"]["provision"]
    # a root permit left naming nothing cannot be shown (the decision refuses such a Consent)
    with pytest.raises(Forbidden):
        render(copy.deepcopy(resource), dataclasses.replace(decision(View.PSEUDONYMISED), released_data=frozenset()),
               tables=tables, pseudonymizer=pseudonymizer)


def test_the_pseudonymised_view_shows_a_consent_s_own_dates_as_their_utc_date(
        tables: Tables, pseudonymizer: Pseudonymizer) -> None:
    """Review verify-1 finding 2: a Consent the adapter dated with the instant it stored the photo
    showed it to the millisecond in the pseudonymised view. Its own dates (dateTime, the
    provisions' periods, the verification date) are shown as their UTC date alone there; a date
    stays as it is; the de-identified view shows the year, care the value as stored."""
    resource = consent()
    resource["dateTime"] = "2026-11-29T00:19:02.357+00:00"
    resource["provision"]["period"] = {"start": "2026-11-29T00:19:02.357+00:00", "end": "2027-01-01"}
    resource["verification"][0]["verificationDate"] = "2026-11-29T00:30:00+01:00"
    out = render(copy.deepcopy(resource), decision(View.PSEUDONYMISED), tables=tables, pseudonymizer=pseudonymizer)
    validate_r4(out)
    assert out["dateTime"] == "2026-11-29"
    assert out["provision"]["period"] == {"start": "2026-11-29", "end": "2027-01-01"}
    assert out["verification"][0]["verificationDate"] == "2026-11-28"  # 23:30 UTC the day before
    assert "00:19" not in json.dumps(out)
    deid = render(copy.deepcopy(resource), decision(View.DEIDENTIFIED), tables=tables, pseudonymizer=pseudonymizer)
    assert deid["dateTime"] == "2026" and deid["provision"]["period"] == {"start": "2026", "end": "2027"}
    care = render(copy.deepcopy(resource), decision(View.FULL), tables=tables, pseudonymizer=pseudonymizer)
    assert care["dateTime"] == resource["dateTime"]
