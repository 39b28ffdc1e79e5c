"""The AuditEvent of a Consent write says which version it wrote and what changed (the privacy
officer's audit review, F3: a create, a withdrawal and a re-activation were audited alike,
``rest/update`` naming ``Consent/<id>`` with no version and no word of what changed, so "which
update was the withdrawal, and which version did it make?" could not be answered from the trail)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import record_emitted
from tests.support.app import adapter_client, consent_resource
from tests.support.fhir_validator import validate_r4

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _consent_entities(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})]


def test_each_consent_write_names_the_version_written_and_what_changed(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        created = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        consent = created.json()
        cid = consent["id"]
        steps: list[dict[str, Any]] = []
        for change in ({"status": "inactive"}, {"status": "active"}, {"provision": {
                **consent["provision"], "purpose": [*consent["provision"]["purpose"], {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "HRESCH"}]}},
                       {}):
            consent = {**consent, **change}
            consent.pop("meta", None)
            written = client.put(f"/fhir/Consent/{cid}", json=consent, headers=FHIR_JSON)
            assert written.status_code == 200, written.text
            steps.append(written.json())
        assert [s["meta"]["versionId"] for s in steps] == ["2", "3", "4", "5"]

        events = [e for e in services.store.list_audit(20)[::-1] if e["subtype"][0]["code"] in ("create", "update")]
    record_emitted(events)
    assert validate_r4(events) == []
    assert [(e["subtype"][0]["code"], e["action"], e["outcome"]) for e in events] == \
        [("create", "C", "0")] + [("update", "U", "0")] * 4
    # the version each wrote, as a read names the version it relied on
    assert [_consent_entities(e) for e in events] == [[f"Consent/{cid}/_history/{n}"] for n in range(1, 6)]
    assert [e["outcomeDesc"] for e in events] == [
        "Consent created (version 1): status active; permit TRAIN",
        "Consent version 2: status active -> inactive (withdrawn)",
        "Consent version 3: status inactive -> active (re-activated)",
        "Consent version 4: purposes added HRESCH",
        "Consent version 5: status, provision type and purposes unchanged",
    ]
