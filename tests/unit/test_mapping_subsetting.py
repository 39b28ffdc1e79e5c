"""_summary and _elements (adapter.mapping.subsetting): only ever removes, keeps what a reader
must see (id, meta with its security labels, modifiers, required elements), tags SUBSETTED."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from adapter.errors import InvalidInput
from adapter.mapping import codes
from adapter.mapping.r5 import to_r5
from adapter.mapping.subsetting import SUBSETTED, Subsetting, parse_subsetting, subset
from tests.unit.test_mapping_r5 import validate_r5
from tests.unit.test_mapping_views import FACTORIES, MODELS, media

pytestmark = pytest.mark.unit

JSON = dict[str, Any]


def _tagged(resource: JSON) -> bool:
    return SUBSETTED in resource["meta"]["tag"]


@pytest.mark.parametrize("resource_type", list(FACTORIES))
@pytest.mark.parametrize("how", [Subsetting(summary="true"), Subsetting(summary="text"), Subsetting(summary="data"),
                                 Subsetting(elements=("identifier",)), Subsetting(elements=("nothing",))])
def test_every_cut_is_a_valid_resource_that_says_it_was_cut(resource_type: str, how: Subsetting) -> None:
    source = FACTORIES[resource_type]()
    before = copy.deepcopy(source)
    out = subset(source, how, fhir_version="4")
    assert source == before  # the input is not changed
    MODELS[resource_type].model_validate(out)
    assert _tagged(out)
    assert out["id"] == source["id"] and out["meta"].get("security") == source.get("meta", {}).get("security")
    assert set(out) <= set(source) | {"meta"}
    assert all(out[k] == source[k] for k in out if k not in ("meta", "extension"))
    assert all(e in source["extension"] for e in out.get("extension", []))  # a photo's kind kept, nothing added
    assert next(iter(out)) == "resourceType"


@pytest.mark.parametrize("resource_type", list(FACTORIES))
def test_the_same_in_r5(resource_type: str) -> None:
    r5 = to_r5(FACTORIES[resource_type]())
    for how in (Subsetting(summary="true"), Subsetting(summary="text"), Subsetting(elements=("status",))):
        out = subset(r5, how, fhir_version="5")
        validate_r5(out)
        assert _tagged(out)


def test_summary_true_keeps_the_summary_elements_of_media() -> None:
    out = subset(media(), Subsetting(summary="true"), fhir_version="4")
    assert {"status", "subject", "createdDateTime", "content", "identifier", "bodySite", "modality"} <= set(out)
    assert not {"text", "note"} & set(out)  # not summary elements in R4 Media
    assert out["extension"] == [{"url": codes.EXT_PHOTO_KIND, "valueCode": "clinical"}]  # the kind alone


@pytest.mark.parametrize("fhir_version", ["4", "5"])
@pytest.mark.parametrize("how", [Subsetting(summary="true"), Subsetting(summary="text"), Subsetting(summary="data"),
                                 Subsetting(elements=("subject",)), Subsetting(elements=("extension",))])
def test_a_cut_photo_record_keeps_its_kind(how: Subsetting, fhir_version: str) -> None:
    """Clinical review finding 3: a secondary image (a photo of an x-ray or ECG) lost its
    photo-kind extension in _summary and _elements answers, so a list could not tell it from a
    clinical photo. Every cut photo record keeps that extension (and only that one, unless the
    reader asked for the extensions), and is still tagged SUBSETTED."""
    source = media()
    source["extension"][0]["valueCode"] = "secondary"
    if fhir_version == "5":
        source = to_r5(source)
    out = subset(source, how, fhir_version=fhir_version)
    assert _tagged(out)
    kinds = [e for e in out["extension"] if e["url"] == codes.EXT_PHOTO_KIND]
    assert [e["valueCode"] for e in kinds] == ["secondary"]
    whole = how.summary == "data" or how.elements == ("extension",)
    assert out["extension"] == source["extension"] if whole else kinds
    if fhir_version == "5":
        validate_r5(out)


def test_summary_text_keeps_the_narrative_and_what_is_required() -> None:
    out = subset(media(), Subsetting(summary="text"), fhir_version="4")
    assert set(out) == {"resourceType", "id", "meta", "text", "status", "content", "extension"}


def test_summary_data_drops_the_narrative_only() -> None:
    source = media()
    out = subset(source, Subsetting(summary="data"), fhir_version="4")
    assert set(out) == set(source) - {"text"}


def test_elements_by_choice_name_with_the_required_and_the_modifiers() -> None:
    source = media()
    source["modifierExtension"] = [{"url": "urn:example:modifier", "valueBoolean": True}]
    source["_status"] = {"extension": [{"url": "urn:example:ext", "valueString": "x"}]}
    out = subset(source, Subsetting(elements=("created", "note")), fhir_version="4")
    assert set(out) == {"resourceType", "id", "meta", "createdDateTime", "note", "status", "_status", "content",
                        "modifierExtension", "extension"}  # the photo's kind alone


def test_nothing_is_cut_or_tagged_without_asking() -> None:
    source = media()
    assert subset(source, Subsetting(), fhir_version="4") is source
    assert subset(source, Subsetting(summary="false"), fhir_version="4") is source
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "processing"}]}
    assert subset(outcome, Subsetting(summary="true"), fhir_version="4") is outcome


def test_an_existing_tag_is_kept_and_subsetted_not_repeated() -> None:
    source = media()
    source["meta"]["tag"] = [{"system": "urn:example:tags", "code": "x"}, dict(SUBSETTED)]
    out = subset(source, Subsetting(summary="true"), fhir_version="4")
    assert out["meta"]["tag"] == [{"system": "urn:example:tags", "code": "x"}, SUBSETTED]
    assert SUBSETTED["system"] == codes.V3_OBSERVATION_VALUE


def test_parameters() -> None:
    assert parse_subsetting([]) == Subsetting()
    assert parse_subsetting([("_summary", "count")]) == Subsetting()
    assert parse_subsetting([("_summary", "true"), ("_count", "5")]) == Subsetting(summary="true")
    assert parse_subsetting([("_elements", "status, subject"), ("_elements", "note")]) == \
        Subsetting(elements=("status", "subject", "note"))
    assert parse_subsetting([("_elements", "id"), ("_summary", "false")]).elements == ("id",)
    for bad in ([("_summary", "yes")], [("_summary", "true"), ("_summary", "text")], [("_elements", "")],
                [("_elements", "a.b")], [("_elements", "id"), ("_summary", "true")]):
        with pytest.raises(InvalidInput):
            parse_subsetting(bad)


def test_a_consent_keeps_its_policy_when_the_cut_would_leave_neither_policy_nor_rule() -> None:
    """Consent ppc-1 (either a policy or a policyRule): policy is no summary element in R4."""
    from tests.unit.test_mapping_views import consent

    source = consent()
    source.pop("policyRule", None)
    source["policy"] = [{"uri": "https://hospital.example/policies/photography"}]
    for how in (Subsetting(summary="true"), Subsetting(summary="text"), Subsetting(elements=("status",))):
        out = subset(source, how, fhir_version="4")
        assert out["policy"] == source["policy"], how
        MODELS["Consent"].model_validate(out)
    with_rule = consent()
    assert "policyRule" in with_rule
    assert "policy" not in subset({**with_rule, "policy": source["policy"]}, Subsetting(summary="true"), fhir_version="4")
