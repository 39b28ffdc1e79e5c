"""Incoming FHIR R4 JSON held against what the models read leniently (adapter.mapping.fhir_json):
each case was stored by the Consent API and then refused by an independent FHIR validator
(found by the seeded fuzzing of tests/integration/test_mutated_inputs.py with other seeds)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from adapter.errors import InvalidResource
from adapter.mapping.fhir_json import validate_model, validate_r4_resource

CONSENT: dict[str, Any] = {
    "resourceType": "Consent", "status": "active",
    "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
    "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
    "patient": {"identifier": {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}},
    "dateTime": "2024-01-01T10:00:00Z",
    "performer": [{"identifier": {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}}],
    "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
    "provision": {"type": "permit", "purpose": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TRAIN"}]},
}


def changed(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(CONSENT)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


def checked(resource: dict[str, Any], where: str | None) -> InvalidResource | None:
    """``resource`` validated: taken when ``where`` is None, else refused naming ``where`` (the
    refusal returned)."""
    if where is None:
        validate_r4_resource(resource)
        return None
    with pytest.raises(InvalidResource) as refused:
        validate_r4_resource(resource)
    assert refused.value.expression == [where]
    return refused.value


def test_the_consent_as_sent_is_valid() -> None:
    validate_r4_resource(CONSENT)


@pytest.mark.parametrize(("path", "value", "where"), [
    (("dateTime",), 0, "Consent.dateTime"),                               # read as 1970, kept as 0
    (("provision", "period"), {"start": 20240101}, "Consent.provision.period.start"),
    (("status",), "active", None),                                         # (the control: valid)
    (("extension",), [{"url": "http://example.org/x", "valueBoolean": "true"}], "Consent.extension[0].valueBoolean"),
    (("extension",), [{"url": "http://example.org/x", "valueInteger": "5"}], "Consent.extension[0].valueInteger"),
    (("extension",), [{"url": "http://example.org/x", "valueDecimal": "1.5"}], "Consent.extension[0].valueDecimal"),
    (("extension",), [{"url": "http://example.org/x", "valueDecimal": 1.5}], None),
    (("extension",), [{"url": "http://example.org/x", "valueBoolean": True}], None),
])
def test_every_primitive_has_its_json_type(path: tuple[Any, ...], value: Any, where: str | None) -> None:
    refused = checked(changed(path, value), where)
    assert refused is None or "wrong JSON type" in str(refused)


@pytest.mark.parametrize(("path", "value", "where"), [
    (("patient",), {"type": "x", "identifier": {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}},
     "Consent.patient.type"),
    (("patient",), {"type": "Practitioner", "identifier": {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}},
     "Consent.patient.type"),                                              # Consent.patient is a Patient
    (("performer",), [{"type": "a" * 300, "identifier": {"system": "urn:oid:2.999.1.1", "value": "1"}}],
     "Consent.performer[0].type"),
    (("performer",), [{"type": "Practitioner", "identifier": {"system": "urn:oid:2.999.1.1", "value": "1"}}], None),
    (("patient",), {"type": "Patient", "identifier": {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}}, None),
])
def test_a_reference_type_names_what_the_reference_may_refer_to(path: tuple[Any, ...], value: Any,
                                                                 where: str | None) -> None:
    checked(changed(path, value), where)


def test_a_reference_to_any_resource_names_a_resource_type() -> None:
    provenance = {"resourceType": "Provenance", "recorded": "2024-01-01T10:00:00Z",
                  "agent": [{"who": {"display": "x"}}], "target": [{"type": "Media", "reference": "Media/1"}]}
    validate_model("Provenance", provenance, "Provenance")
    provenance["target"] = [{"type": "2024-02-30", "reference": "Media/1"}]
    with pytest.raises(InvalidResource) as refused:
        validate_model("Provenance", provenance, "Provenance")
    assert refused.value.expression == ["Provenance.target[0].type"]


@pytest.mark.parametrize("url", ["x", "2024-02-30", "Consent/1", "http://exa mple.org"])
def test_an_extension_url_is_an_absolute_uri(url: str) -> None:
    resource = changed(("extension",), [{"url": "http://example.org/ok", "valueString": "a"},
                                        {"url": url, "valueString": "a"}])
    checked(resource, "Consent.extension[1].url")
    nested = changed(("provision", "extension"), [{"url": "urn:x:ok", "extension": [{"url": url, "valueCode": "a"}]}])
    checked(nested, "Consent.provision.extension[0].extension[0].url")


@pytest.mark.parametrize(("path", "value", "where"), [
    (("scope", "coding", 0, "code"), "TREAT", "Consent.scope.coding[0].code"),
    (("scope", "coding", 0, "code"), "Binary/x", "Consent.scope.coding[0].code"),
    (("provision", "action"), [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                            "code": "read"}]}], "Consent.provision.action[0].coding[0].code"),
    (("scope", "coding", 0, "code"), "research", None),
    (("provision", "action"), [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                            "code": "use"}]}], None),
])
def test_a_code_of_a_closed_hl7_code_system_is_one_of_its_codes(path: tuple[Any, ...], value: Any,
                                                                  where: str | None) -> None:
    checked(changed(path, value), where)
