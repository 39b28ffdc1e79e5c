"""Searchset Bundles (adapter.mapping.bundle): links, entries and the Bundle's confidentiality,
the most confidential of its entries (https://hl7.org/fhir/R4/security-labels.html)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fhir.resources.bundle import Bundle as BundleR5
from fhir.resources.R4B.bundle import Bundle as BundleR4

from adapter.errors import NotSupported
from adapter.mapping import codes
from adapter.mapping.bundle import bundle_confidentiality, outcome_entry, searchset
from adapter.mapping.r5 import to_r5
from tests.support.fhir_validator import validate_r5

pytestmark = pytest.mark.unit

JSON = dict[str, Any]
BASE = "https://images.example.org/fhir/"


def labelled(resource_type: str, rid: str, confidentiality: str | None, *extra: JSON) -> JSON:
    resource: JSON = {"resourceType": resource_type, "id": rid}
    security = list(extra)
    if confidentiality is not None:
        security.insert(0, {"system": codes.V3_CONFIDENTIALITY, "code": confidentiality})
    if security:
        resource["meta"] = {"security": security}
    if resource_type == "Binary":
        resource["contentType"] = "image/jpeg"
    if resource_type == "Media":
        resource.update(status="completed", content={"contentType": "image/jpeg", "url": f"Binary/{rid}-bin"})
    return resource


@pytest.mark.parametrize(("levels", "expected"), [
    (["N", "R", "M"], "R"),
    (["U", "L"], "L"),
    (["R", "V", "N"], "V"),
    (["N", None], "N"),
])
def test_bundle_is_as_confidential_as_its_most_confidential_entry(levels: list[str | None], expected: str) -> None:
    entries = [labelled("Binary", f"b{i}", level) for i, level in enumerate(levels)]
    bundle = searchset(entries, total=len(entries), self_url=BASE + "Binary", next_url=None, base_url=BASE,
                       fhir_version="4")
    display = {"L": "low", "N": "normal", "R": "restricted", "V": "very restricted"}[expected]
    assert bundle["meta"]["security"] == [{"system": codes.V3_CONFIDENTIALITY, "code": expected, "display": display}]
    BundleR4.model_validate(bundle)


def test_other_labels_do_not_count_and_no_label_means_no_meta() -> None:
    purpose = {"system": codes.V3_ACT_REASON, "code": "V"}  # same code, other system
    entries = [labelled("Binary", "b1", None, purpose), labelled("Binary", "b2", None)]
    assert bundle_confidentiality(entries) is None
    bundle = searchset(entries, total=2, self_url=BASE + "Binary", next_url=None, base_url=BASE, fhir_version="4")
    assert "meta" not in bundle


def test_entries_links_and_total() -> None:
    media = labelled("Media", "m1", "R")
    outcome = {"resourceType": "OperationOutcome",
               "issue": [{"severity": "information", "code": "suppressed",
                          "details": {"coding": [{"system": codes.V3_ACT_REASON, "code": "BTG"}]}}]}
    bundle = searchset([media, outcome], total=7, self_url=BASE + "Media?patient=x",
                       next_url=BASE + "Media?patient=x&_page=2", base_url=BASE, fhir_version="4")
    assert bundle["type"] == "searchset" and bundle["total"] == 7
    assert bundle["link"] == [{"relation": "self", "url": BASE + "Media?patient=x"},
                              {"relation": "next", "url": BASE + "Media?patient=x&_page=2"}]
    assert bundle["entry"][0] == {"fullUrl": "https://images.example.org/fhir/Media/m1", "resource": media,
                                  "search": {"mode": "match"}}
    assert bundle["entry"][1] == {"resource": outcome, "search": {"mode": "outcome"}}
    BundleR4.model_validate(bundle)


def test_r5_outcome_entries_have_a_urn_uuid_full_url() -> None:
    """R5's bdl-15: every searchset entry has a fullUrl; an outcome about the search has no
    RESTful identity, so it gets a urn:uuid (R4 leaves it out). Found by tools/validate-fhir-r5.mjs
    in an R5 break-glass search."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "suppressed"}]}
    doc = {**labelled("DocumentReference", "d1", "R"), "status": "current",
           "content": [{"attachment": {"contentType": "image/jpeg", "url": "Binary/b1"}}]}
    bundle = searchset([doc, outcome], total=1, self_url=BASE + "DocumentReference", next_url=None, base_url=BASE,
                       fhir_version="5")
    bundle["entry"].append(outcome_entry(outcome, fhir_version="5"))
    for entry in bundle["entry"][1:]:
        assert re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", entry["fullUrl"])
        assert entry["search"] == {"mode": "outcome"} and entry["resource"] == outcome
    assert bundle["entry"][1]["fullUrl"] != bundle["entry"][2]["fullUrl"]
    BundleR5.model_validate(bundle)
    assert validate_r5([bundle]) == []
    assert outcome_entry(outcome, fhir_version="4") == {"resource": outcome, "search": {"mode": "outcome"}}


def test_empty_result() -> None:
    bundle = searchset([], total=0, self_url=BASE + "Media", next_url=None, base_url=BASE, fhir_version="5")
    assert bundle == {"resourceType": "Bundle", "type": "searchset", "total": 0,
                      "link": [{"relation": "self", "url": BASE + "Media"}]}
    BundleR5.model_validate(bundle)
    BundleR4.model_validate(bundle)


def test_r5_bundle_of_converted_entries() -> None:
    media = labelled("Media", "m1", "V")
    with pytest.raises(NotSupported):
        searchset([media], total=1, self_url=BASE + "DocumentReference", next_url=None, base_url=BASE,
                  fhir_version="5")
    converted = to_r5(media)
    bundle = searchset([converted], total=1, self_url=BASE + "DocumentReference", next_url=None, base_url=BASE,
                       fhir_version="5")
    assert bundle["entry"][0]["fullUrl"] == "https://images.example.org/fhir/DocumentReference/m1"
    assert bundle["meta"]["security"][0]["code"] == "V"
    BundleR5.model_validate(bundle)


def test_entries_are_not_changed() -> None:
    entries = [labelled("Binary", "b1", "R")]
    before = [dict(e) for e in entries]
    searchset(entries, total=1, self_url=BASE, next_url=None, base_url=BASE, fhir_version="4")
    assert entries == before


def test_r4_bundle_passes_the_npm_validators() -> None:
    from tests.conftest import require_or_skip
    from tests.support.fhir_validator import validate_r4

    entries = [labelled("Media", "m1", "R"), labelled("Binary", "b1", "V")]
    bundle = searchset(entries, total=3, self_url=BASE + "Media?_count=2", next_url=BASE + "Media?_offset=2",
                       base_url=BASE, fhir_version="4")
    try:
        errors = validate_r4([bundle])
    except RuntimeError as exc:
        require_or_skip(False, f"FHIR validators unavailable: {exc}")
        return
    assert errors == []
