"""The FHIR validator harness is not vacuous: known-bad resources fail, known-good pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fhir_validator import (
    DRIVER,
    FhirValidationCollector,
    errors_by_case,
    read_r4_xml,
    run_driver,
    validate_r4,
)

pytestmark = pytest.mark.unit

GOOD_MEDIA: dict[str, Any] = {
    "resourceType": "Media", "id": "m", "status": "completed",
    "content": {"contentType": "image/jpeg", "url": "Binary/b"},
    "createdDateTime": "2024-03-01T10:15:00+01:00",
}

BAD: dict[str, tuple[dict[str, Any], str]] = {
    "status not in the required value set": ({**GOOD_MEDIA, "status": "finished"}, "status"),
    "unknown element": ({**GOOD_MEDIA, "colour": "red"}, "colour"),
    "missing required element": ({k: v for k, v in GOOD_MEDIA.items() if k != "content"}, "content"),
    "dateTime with a time and no zone": ({**GOOD_MEDIA, "createdDateTime": "2024-03-01T10:15:00"}, "created"),
    "Attachment.hash that is not SHA-1": (
        {**GOOD_MEDIA, "content": {**GOOD_MEDIA["content"], "hash": "q" * 44}}, "hash"),
    "relative extension url": ({**GOOD_MEDIA, "extension": [{"url": "photo-kind", "valueCode": "x"}]}, "url"),
    "code outside a closed HL7 code system": (
        {**GOOD_MEDIA, "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/media-type",
                                            "code": "photo"}]}}, "code"),
    "invariant inside a Bundle (Consent ppc-1)": ({
        "resourceType": "Bundle", "type": "collection", "entry": [{
            "fullUrl": "urn:uuid:1f0c7a5e-2d1e-4b7a-9a55-6a1f3c2b8e01",
            "resource": {"resourceType": "Consent", "status": "active",
                         "scope": {"text": "privacy"}, "category": [{"text": "consent"}]}}]}, "ppc-1"),
    "datatype invariant (Period per-1)": (
        {"resourceType": "Consent", "status": "active", "scope": {"text": "s"}, "category": [{"text": "c"}],
         "policyRule": {"text": "r"}, "provision": {"period": {"start": "2024-03-02", "end": "2024-03-01"}}},
        "per-1"),
    "dangling urn:uuid attachment url in a transaction": ({
        "resourceType": "Bundle", "type": "transaction", "entry": [{
            "fullUrl": "urn:uuid:2f0c7a5e-2d1e-4b7a-9a55-6a1f3c2b8e01",
            "resource": {**GOOD_MEDIA, "content": {"url": "urn:uuid:3f0c7a5e-2d1e-4b7a-9a55-6a1f3c2b8e01"}},
            "request": {"method": "POST", "url": "Media"}}]}, "does not resolve"),
}


def test_good_resource_passes() -> None:
    assert validate_r4([GOOD_MEDIA]) == []
    assert validate_r4([]) == []


def _xml_consent(decimal: str) -> bytes:
    return ('<Consent xmlns="http://hl7.org/fhir"><extension url="http://example.org/fhir/x"><valueDecimal value="'
            + decimal + '"/></extension><status value="active"/><scope><coding><system value="http://terminology'
            '.hl7.org/CodeSystem/consentscope"/><code value="patient-privacy"/></coding></scope><category><coding>'
            '<system value="http://loinc.org"/><code value="59284-0"/></coding></category><policyRule><coding>'
            '<system value="http://terminology.hl7.org/CodeSystem/v3-ActCode"/><code value="OPTIN"/></coding>'
            "</policyRule></Consent>").encode()


def test_xml_decimals_are_read_as_numbers_exponents_included() -> None:
    """FHIR.js's xmlToObj left each XML decimal a string (reported "number expected" by every pass),
    and its reader takes no exponent, which FHIR R4 decimal allows (datatypes.html#decimal): the
    harness reads XML with xmlToJson and an exponent in plain notation (seen failing: 18 errors in CI
    on the adapter's own XML of a Consent's valueDecimal 1.50, 0.010, 1e2)."""
    values = ["1.50", "0.010", "1e2", "-1.5E-3", "2.5"]
    documents = [_xml_consent(v) for v in values]
    assert validate_r4(documents) == []
    parsed, errors = read_r4_xml(documents)
    assert errors == []
    assert [p["extension"][0]["valueDecimal"] for p in parsed if p] == [1.5, 0.01, 100, -0.0015, 2.5]


@pytest.fixture(scope="module")
def bad_errors() -> dict[str, list[str]]:
    """Every bad case validated in one node process; errors per case (labels are #index)."""
    return errors_by_case(validate_r4, BAD)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_resource_fails(case: str, bad_errors: dict[str, list[str]]) -> None:
    errors = bad_errors[case]
    assert errors, case
    assert any(BAD[case][1] in e for e in errors), errors


def test_one_batch_labels_each_resource() -> None:
    errors = validate_r4([GOOD_MEDIA, BAD["unknown element"][0]])
    assert errors and all(e.startswith("#1 Media/m:") for e in errors)


def test_collector_deduplicates_and_copies() -> None:
    collector = FhirValidationCollector()
    media = dict(GOOD_MEDIA)
    collector.add(media)
    collector.add([dict(GOOD_MEDIA), {"not": "a resource"}])
    media["status"] = "finished"  # mutated after adding: not what gets validated
    assert len(collector) == 1
    assert collector.check() == []
    collector.assert_valid()
    collector.add(BAD["unknown element"][0])
    with pytest.raises(AssertionError, match="colour"):
        collector.assert_valid()


def test_missing_validators_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FHIRVAL_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(RuntimeError, match="install-fhir-validators"):
        validate_r4([GOOD_MEDIA])


def test_driver_cli_text_output_and_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps(GOOD_MEDIA))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.json").write_text(json.dumps(BAD["unknown element"][0]))

    ok = run_driver(DRIVER, str(tmp_path / "good.json"))
    assert ok.returncode == 0 and ok.stdout.startswith("OK ")
    both = run_driver(DRIVER, str(tmp_path))
    assert both.returncode == 1
    assert "FAIL " in both.stdout and "colour" in both.stdout and both.stdout.count("OK ") == 1
    assert run_driver(DRIVER).returncode == 2
