"""R4 → R5 conversion (adapter.mapping.r5): every output validates with the fhir.resources R5
models (and, at the end of the session, with tools/validate-fhir-r5.mjs), and the moved elements
land where the R5 spec puts them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from fhir.resources.binary import Binary
from fhir.resources.consent import Consent
from fhir.resources.documentreference import DocumentReference
from fhir.resources.operationoutcome import OperationOutcome
from fhir.resources.provenance import Provenance

from adapter.errors import NotSupported
from adapter.mapping import codes
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.mapping.r5 import XVER_R4, to_r5
from adapter.model.decision import View
from tests.conftest import record_emitted
from tests.support.fhir_factories import tables
from tests.unit.test_mapping_views import (  # render: with the ids of the decision's view
    FACTORIES,
    KEY,
    PSEUDONYM_SYSTEM,
    STORED_SHA,
    binary,
    consent,
    decision,
    document_reference,
    media,
    provenance,
    render,
)

pytestmark = pytest.mark.unit

JSON = dict[str, Any]
R5_MODELS: dict[str, Any] = {
    "DocumentReference": DocumentReference, "Consent": Consent, "Provenance": Provenance, "Binary": Binary,
    "OperationOutcome": OperationOutcome,
}
R5_TYPE = {"Media": "DocumentReference"}


def validate_r5(resource: JSON) -> None:
    """The fhir.resources R5 model here; tools/validate-fhir-r5.mjs at the end of the session."""
    R5_MODELS[resource["resourceType"]].model_validate(resource)
    record_emitted(resource, "5")


@pytest.mark.parametrize("resource_type", list(FACTORIES))
def test_every_resource_converts_to_valid_r5_without_touching_the_input(resource_type: str) -> None:
    source = FACTORIES[resource_type]()
    before = copy.deepcopy(source)
    out = to_r5(source)
    assert source == before
    assert out["resourceType"] == R5_TYPE.get(resource_type, resource_type)
    assert out["id"] == source["id"]
    validate_r5(out)
    out["id"] = "changed"
    assert source == before


@pytest.mark.parametrize("view", list(View))
@pytest.mark.parametrize("resource_type", list(FACTORIES))
def test_rendered_views_convert_to_valid_r5(resource_type: str, view: View) -> None:
    rendered = render(FACTORIES[resource_type](), decision(view), tables=tables(),
                      pseudonymizer=Pseudonymizer(KEY, PSEUDONYM_SYSTEM))
    out = to_r5(rendered)
    validate_r5(out)
    assert out["meta"]["security"] == rendered["meta"]["security"]


def test_media_becomes_document_reference() -> None:
    source = media()
    out = to_r5(source)
    assert out["resourceType"] == "DocumentReference" and out["id"] == "wound-photo-1"
    assert out["status"] == "current" and out["docStatus"] == "final"
    assert out["identifier"] == source["identifier"]
    assert out["modality"] == [source["modality"]]
    assert out["category"] == [{"coding": [{"system": codes.PHOTO_KIND_SYSTEM, "code": "clinical"}]}, source["type"]]
    assert "type" not in out
    assert out["subject"] == source["subject"]
    assert out["context"] == [source["encounter"]]
    assert out["date"] == source["issued"]
    assert out["author"] == [source["operator"], {"type": "Device", "display": "Ward 3 clinical camera"}]
    assert out["bodySite"] == [{"concept": source["bodySite"]}]
    assert out["description"] == "Taken after dressing removal for Jane Roe"
    assert out["content"] == [{"attachment": {**source["content"], "size": "2519841", "height": 3000, "width": 4000}}]
    assert {"url": XVER_R4 + "Media.view", "valueCodeableConcept": source["view"]} in out["extension"]
    assert {"url": XVER_R4 + "Media.reasonCode", "valueCodeableConcept": source["reasonCode"][0]} in out["extension"]
    assert out["extension"][:4] == source["extension"]
    assert out["meta"] == {k: v for k, v in source["meta"].items()}
    assert out["text"] == source["text"]
    for r4_only in ("encounter", "operator", "issued", "note", "view", "reasonCode", "deviceName", "height",
                    "createdDateTime", "type"):
        assert r4_only not in out


def test_media_creation_comes_from_created_and_status_entered_in_error() -> None:
    source = media()
    del source["content"]["creation"]
    source["status"] = "entered-in-error"
    source["createdPeriod"] = {"start": "2024-03-01T10:00:00+01:00", "end": "2024-03-01T10:20:00+01:00"}
    out = to_r5(source)
    assert out["content"][0]["attachment"]["creation"] == "2024-03-01T10:15:00+01:00"
    assert out["status"] == "entered-in-error" and out["docStatus"] == "entered-in-error"
    assert out["period"] == source["createdPeriod"]
    validate_r5(out)


def test_media_with_contained_device() -> None:
    # after the shared fixture media-contained-device.json
    source = media()
    del source["deviceName"]
    source["contained"] = [{"resourceType": "Device", "id": "cam",
                            "deviceName": [{"name": "cam", "type": "user-friendly-name"}]}]
    source["device"] = {"reference": "#cam"}
    source["meta"]["profile"] = ["http://hl7.org/fhir/StructureDefinition/Media"]
    out = to_r5(source)
    assert out["contained"] == [{"resourceType": "Device", "id": "cam",
                                 "name": [{"value": "cam", "type": "user-friendly-name"}]}]
    assert out["author"][-1] == {"reference": "#cam"}
    assert "profile" not in out["meta"]
    validate_r5(out)


def test_document_reference_r4_to_r5() -> None:
    source = document_reference()
    out = to_r5(source)
    assert out["identifier"][0] == {"system": codes.SHA256_SYSTEM, "value": STORED_SHA}
    assert out["identifier"][1:] == source["identifier"]
    assert "masterIdentifier" not in out
    assert out["context"] == source["context"]["encounter"]
    assert out["event"] == [{"concept": source["context"]["event"][0]}]
    assert out["period"] == source["context"]["period"]
    assert out["facilityType"] == source["context"]["facilityType"]
    assert out["practiceSetting"] == source["context"]["practiceSetting"]
    assert out["attester"] == [{"mode": {"coding": [{"system": "http://hl7.org/fhir/composition-attestation-mode",
                                                     "code": "legal", "display": "Legal"}]},
                                "party": source["authenticator"]}]
    assert "authenticator" not in out
    assert out["relatesTo"] == [{"code": {"coding": [{"system": "http://hl7.org/fhir/document-relationship-type",
                                                      "code": "appends"}]},
                                 "target": {"reference": "DocumentReference/doc-old-1"}}]
    assert out["content"] == [{"attachment": {**source["content"][0]["attachment"], "size": "1234"},
                               "profile": [{"valueCoding": source["content"][0]["format"]}]}]
    for key in ("date", "author", "custodian", "description", "securityLabel", "type", "category", "docStatus"):
        assert out[key] == source[key]
    validate_r5(out)


def test_attachment_size_is_an_integer64_string() -> None:
    """R5 made Attachment.size integer64, which JSON writes as a string (json.html#primitive);
    R4's unsignedInt number is invalid R5 (found by tools/validate-fhir-r5.mjs)."""
    photo, document = to_r5(media()), to_r5(document_reference())
    assert photo["content"][0]["attachment"]["size"] == "2519841"
    assert document["content"][0]["attachment"]["size"] == "1234"
    source = consent()
    source["sourceAttachment"] = {**source["sourceAttachment"], "size": 2048}
    assert to_r5(source)["sourceAttachment"] == [{**source["sourceAttachment"], "size": "2048"}]
    assert media()["content"]["size"] == 2519841  # the R4 input keeps its number


def test_consent_r4_to_r5() -> None:
    source = consent()
    out = to_r5(source)
    assert "scope" not in out and "patient" not in out and "dateTime" not in out
    assert out["status"] == "active"
    assert out["subject"] == source["patient"]
    assert out["date"] == "2024-03-01"
    assert out["grantor"] == source["performer"]
    assert out["manager"] == source["organization"]
    assert out["sourceAttachment"] == [source["sourceAttachment"]]
    assert out["policyBasis"] == {"url": source["policy"][0]["uri"]}
    assert out["regulatoryBasis"] == [source["policyRule"]]
    assert out["verification"] == [{"verified": True, "verifiedWith": {"reference": "Patient/pat-123"},
                                    "verificationDate": ["2024-03-01T10:00:00+01:00"]}]
    assert out["decision"] == "permit"
    [provision] = out["provision"]
    assert "type" not in provision
    assert provision["purpose"] == source["provision"]["purpose"]
    assert provision["documentType"] == [{"system": "urn:ietf:bcp:13", "code": "image/jpeg"}]
    assert provision["resourceType"] == [{"system": "http://hl7.org/fhir/fhir-types", "code": "DocumentReference"}]
    assert provision["data"] == [{"meaning": "instance", "reference": {"reference": "DocumentReference/wound-photo-1",
                                                                       "display": "Jane Roe wound"}}]
    assert provision["actor"] == source["provision"]["actor"]
    assert provision["provision"] == [{"purpose": [{"system": codes.V3_ACT_REASON, "code": "MLTRAINING"}]}]
    assert out["extension"] == source["extension"]
    validate_r5(out)


def test_every_reference_to_a_media_names_its_document_reference() -> None:
    """R5 has no Media: a reference to one names a type R5 does not define (found by
    tools/validate-fhir-r5.mjs in Consent.provision.data). Every reference, wherever it is,
    names the DocumentReference of the same id, as Provenance.target and Binary.securityContext did."""
    source = consent()
    source["sourceReference"] = {"reference": "http://example.org/fhir/Media/scan-1/_history/2"}
    out = to_r5(source)
    assert [d["reference"] for d in out["provision"][0]["data"]] == [
        {**d["reference"], "reference": "DocumentReference/wound-photo-1"} for d in source["provision"]["data"]]
    assert out["sourceReference"] == [{"reference": "http://example.org/fhir/DocumentReference/scan-1/_history/2"}]
    photo = media()
    photo["partOf"] = [{"type": "Media", "identifier": {"system": "urn:example", "value": "series-1"}}]
    assert {"url": XVER_R4 + "Media.partOf",
            "valueReference": {"type": "DocumentReference", "identifier": {"system": "urn:example", "value": "series-1"}}
            } in to_r5(photo)["extension"]
    assert source["provision"]["data"][0]["reference"]["reference"] == "Media/wound-photo-1"  # input unchanged
    assert to_r5({**binary(), "securityContext": {"reference": "#Media/x"}})["securityContext"] == {"reference": "#Media/x"}


def test_consent_provision_class_media_is_the_r5_resource_type_document_reference() -> None:
    """R5's fhir-types code system has no Media (found by tools/validate-fhir-r5.mjs): a
    provision covering Media covers DocumentReference, what R5 calls a photo; once."""
    source = consent()
    resource_types = "http://hl7.org/fhir/resource-types"
    source["provision"]["class"] = [{"system": resource_types, "code": "Media", "display": "Media"},
                                    {"system": resource_types, "code": "DocumentReference"},
                                    {"system": resource_types, "code": "Binary"}]
    [provision] = to_r5(source)["provision"]
    assert provision["resourceType"] == [{"system": "http://hl7.org/fhir/fhir-types", "code": "DocumentReference"},
                                         {"system": "http://hl7.org/fhir/fhir-types", "code": "Binary"}]


def test_consent_status_and_same_type_nesting() -> None:
    source = consent()
    source["status"] = "proposed"
    assert to_r5(source)["status"] == "draft"
    source["status"] = "rejected"
    assert to_r5(source)["status"] == "not-done"
    source["provision"]["provision"][0]["type"] = "permit"
    with pytest.raises(NotSupported):
        to_r5(source)


def test_consent_year_only_date() -> None:
    source = consent()
    source["dateTime"] = "2024"
    assert to_r5(source)["date"] == "2024"


def test_provenance_r4_to_r5() -> None:
    source = provenance()
    patient = {"type": "Patient", "identifier": {"system": PSEUDONYM_SYSTEM, "value": "abc"}}
    out = to_r5(source, patient=patient)
    assert out["authorization"] == [{"concept": source["reason"][0]}]
    assert "reason" not in out
    assert out["patient"] == patient
    assert [e["role"] for e in out["entity"]] == ["source", "source"]
    for key in ("occurredDateTime", "recorded", "activity", "agent", "location"):
        assert out[key] == source[key]
    # R5 has no Media: the photo is the DocumentReference of the same id
    assert out["target"][0] == {**source["target"][0], "reference": "DocumentReference/wound-photo-1"}
    assert out["target"][1:] == source["target"][1:]
    validate_r5(out)
    assert "patient" not in to_r5(source)


def test_binary_and_operation_outcome_unchanged_and_others_refused() -> None:
    r5_binary = to_r5(binary())
    assert r5_binary["securityContext"]["reference"] == "DocumentReference/wound-photo-1"
    assert {**r5_binary, "securityContext": binary()["securityContext"]} == binary()
    document_binary = {**binary(), "securityContext": {"reference": "DocumentReference/scan-1"}}
    assert to_r5(document_binary) == document_binary
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "suppressed"}]}
    assert to_r5(outcome) == outcome
    with pytest.raises(NotSupported):
        to_r5({"resourceType": "Patient", "id": "p"})
