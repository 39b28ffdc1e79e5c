"""The FHIR R5 validator (tools/validate-fhir-r5.mjs, from HL7's hl7.fhir.r5.core package) is not
vacuous: known-bad R5 resources fail, each for its own reason, and known-good ones pass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.fhir_validator import (
    DRIVER_R5,
    FhirValidationCollector,
    errors_by_case,
    run_driver,
    validate_r5,
)

pytestmark = pytest.mark.unit

GOOD_DOCUMENT: dict[str, Any] = {
    "resourceType": "DocumentReference", "id": "d", "status": "current", "docStatus": "final",
    "subject": {"reference": "Patient/p"}, "context": [{"reference": "Encounter/e"}],
    "content": [{"attachment": {"contentType": "image/jpeg", "url": "Binary/b", "size": "482292",
                                "creation": "2024-03-01T10:15:00+01:00"}}],
}
GOOD_BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle", "type": "searchset", "total": 1,
    "link": [{"relation": "self", "url": "http://example.org/fhir/DocumentReference?patient=p"}],
    "entry": [{"fullUrl": "http://example.org/fhir/DocumentReference/d", "resource": GOOD_DOCUMENT,
               "search": {"mode": "match"}}],
}
GOOD_CONSENT: dict[str, Any] = {
    "resourceType": "Consent", "id": "c", "status": "active", "subject": {"reference": "Patient/p"},
    "date": "2024-03-01", "decision": "permit",
    "provision": [{"period": {"start": "2024-03-01", "end": "2025-03-01"}}],
}
GOOD_PROVENANCE: dict[str, Any] = {
    "resourceType": "Provenance", "id": "p", "target": [{"reference": "DocumentReference/d"}],
    "recorded": "2024-03-01T10:15:00+01:00", "agent": [{"who": {"reference": "Practitioner/x"}}],
    "entity": [{"role": "source", "what": {"reference": "Binary/b"}}],
}


def _entry_with(resource: dict[str, Any], **search: str) -> dict[str, Any]:
    return {**GOOD_BUNDLE, "entry": [{**GOOD_BUNDLE["entry"][0], "resource": resource,
                                      "search": search or {"mode": "match"}}]}


BAD: dict[str, tuple[dict[str, Any], str]] = {
    # R4 shaped context as an object holding encounter[]; R5 context is a list of References
    "R4-only element (DocumentReference.context.encounter)": (
        {**GOOD_DOCUMENT, "context": {"encounter": [{"reference": "Encounter/e"}]}}, "encounter"),
    "R4-only resource (Media)": (
        {"resourceType": "Media", "id": "m", "status": "completed", "content": {"contentType": "image/jpeg"}},
        "Media is not a FHIR R5 resource type"),
    "missing required element (DocumentReference.content)": (
        {k: v for k, v in GOOD_DOCUMENT.items() if k != "content"}, "DocumentReference.content"),
    "status not in the required value set": ({**GOOD_DOCUMENT, "status": "final"}, "document-reference-status"),
    "docStatus not in the required value set": ({**GOOD_DOCUMENT, "docStatus": "completed"}, "composition-status"),
    "Consent.status R5 dropped (proposed)": ({**GOOD_CONSENT, "status": "proposed"}, "consent-state-codes"),
    "Provenance entity role R5 dropped (derivation)": (
        {**GOOD_PROVENANCE, "entity": [{"role": "derivation", "what": {"reference": "Binary/b"}}]},
        "provenance-entity-role"),
    "Bundle.type not in the required value set": ({**GOOD_BUNDLE, "type": "search-set"}, "bundle-type"),
    "Bundle.entry.search.mode not in the required value set": (_entry_with(GOOD_DOCUMENT, mode="matches"),
                                                               "search-entry-mode"),
    "integer64 as a JSON number (Attachment.size)": (
        {**GOOD_DOCUMENT, "content": [{"attachment": {**GOOD_DOCUMENT["content"][0]["attachment"], "size": 482292}}]},
        "attachment.size"),
    "reference to a type R5 does not have": (
        {**GOOD_PROVENANCE, "target": [{"reference": "Media/m"}]}, "Media is not a FHIR R5 resource type"),
    "code outside an R5 code system (fhir-types)": (
        {**GOOD_CONSENT, "provision": [{"resourceType": [{"system": "http://hl7.org/fhir/fhir-types",
                                                          "code": "Media"}]}]}, "fhir-types"),
    "Period per-1 (end before start)": (
        {**GOOD_CONSENT, "provision": [{"period": {"start": "2024-03-02", "end": "2024-03-01"}}]}, "per-1"),
    "Period per-1 across zones": (
        {**GOOD_CONSENT, "provision": [{"period": {"start": "2024-03-01T10:00:00Z",
                                                   "end": "2024-03-01T10:30:00+01:00"}}]}, "per-1"),
    "dateTime with a time and no zone": (
        {**GOOD_PROVENANCE, "occurredDateTime": "2024-03-01T10:15:00"}, "invalid dateTime"),
    "invalid resource inside a Bundle": (_entry_with({**GOOD_DOCUMENT, "status": "final"}),
                                         "Bundle.entry[0].resource.status"),
}


def test_good_resources_pass() -> None:
    assert validate_r5([GOOD_DOCUMENT, GOOD_BUNDLE, GOOD_CONSENT, GOOD_PROVENANCE]) == []
    assert validate_r5([]) == []


@pytest.fixture(scope="module")
def bad_errors() -> dict[str, list[str]]:
    """Every bad case validated in one node process; errors per case (labels are #index)."""
    return errors_by_case(validate_r5, BAD)


@pytest.mark.parametrize("case", list(BAD))
def test_bad_resource_fails(case: str, bad_errors: dict[str, list[str]]) -> None:
    errors = bad_errors[case]
    assert errors, case
    assert any(BAD[case][1] in e for e in errors), errors


def test_collector_validates_r5() -> None:
    collector = FhirValidationCollector("5")
    collector.add(GOOD_DOCUMENT)
    collector.assert_valid()
    collector.add(BAD["R4-only resource (Media)"][0])
    with pytest.raises(AssertionError, match="R5 validation error"):
        collector.assert_valid()


def test_missing_r5_package_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # @medplum/core present, the R5 package not: the R5 check cannot run, which is an error
    (tmp_path / "node_modules" / "@medplum" / "core").mkdir(parents=True)
    (tmp_path / "node_modules" / "@medplum" / "core" / "package.json").write_text("{}")
    monkeypatch.setenv("FHIRVAL_DIR", str(tmp_path))
    with pytest.raises(RuntimeError, match=r"hl7\.fhir\.r5\.core missing.*install-fhir-validators"):
        validate_r5([GOOD_DOCUMENT])


def test_driver_cli_text_output_and_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "good.json").write_text(json.dumps(GOOD_DOCUMENT))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "bad.json").write_text(json.dumps(BAD["R4-only resource (Media)"][0]))

    ok = run_driver(DRIVER_R5, str(tmp_path / "good.json"))
    assert ok.returncode == 0 and ok.stdout.startswith("OK "), ok.stderr
    both = run_driver(DRIVER_R5, str(tmp_path))
    assert both.returncode == 1
    assert "FAIL " in both.stdout and "Media" in both.stdout and both.stdout.count("OK ") == 1
    assert run_driver(DRIVER_R5).returncode == 2
    missing = run_driver(DRIVER_R5, str(tmp_path / "good.json"), fhirval=tmp_path / "nowhere")
    assert missing.returncode == 2 and "install-fhir-validators" in missing.stderr
