"""What a read's AuditEvent says was released (review dpo F6, F7), over the real HTTP app on a real
SQLite store: a read answered 200, the same read answered 304 and a HEAD are told apart; a vread and
each history page name the versions they released (``Type/id/_history/n``); a WADO-RS study
metadata retrieve is one event per patient and decision, whatever Consent each photo carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.conftest import ROOT, record_emitted
from tests.support.app import PATIENT, adapter_client, as_purpose, consent_resource, metadata, post_photo
from tests.support.audit import INSTANCES_TRANSFERRED, dicom_events, patients

SAMPLES = ROOT / "samples"
TREAT = as_purpose("TREAT")
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _refs(event: dict[str, Any]) -> list[str]:
    record_emitted(event)  # to the session's FHIR validation
    return [e["what"]["reference"] for e in event.get("entity", []) if "reference" in e.get("what", {})
            and e.get("type", {}).get("code") != "Consent"]


def _new_events(services: Any, before: int) -> list[dict[str, Any]]:
    events = services.store.list_audit(10000)
    return events[: len(events) - before]


def test_a_read_answered_200_304_or_to_a_head_leaves_events_told_apart(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, SAMPLES / "wound.jpg", metadata()).json()
        record, binary = f"/fhir/{receipt['record']}", f"/fhir/{receipt['binary']}"
        etag = client.get(record, headers=TREAT).headers["etag"]
        last_modified = client.get(record, headers=TREAT).headers["last-modified"]
        asked = [("GET", record, {}, 200), ("HEAD", record, {}, 200),
                 ("GET", record, {"If-None-Match": etag}, 304), ("HEAD", record, {"If-None-Match": etag}, 304),
                 ("GET", record, {"If-Modified-Since": last_modified}, 304),
                 ("GET", binary, {"Accept": "image/*"}, 200),
                 ("GET", binary, {"Accept": "image/*", "If-None-Match": 'W/"1"'}, 304)]
        said = {}
        for method, url, headers, status in asked:
            before = len(services.store.list_audit(10000))
            assert client.request(method, url, headers={**TREAT, **headers}).status_code == status, (method, url)
            [event] = _new_events(services, before)
            assert event["outcome"] == "0" and event["subtype"][0]["code"] == "read", event
            assert _refs(event)[0] == url.removeprefix("/fhir/") and patients(event) == [PATIENT]
            said[(method, url, status, tuple(headers))] = event["outcomeDesc"]
        full = said[("GET", record, 200, ())]
        assert "304" not in full and "HEAD" not in full
        assert said[("GET", binary, 200, ("Accept",))] == full
        head = said[("HEAD", record, 200, ())]
        assert head.startswith(full) and "HEAD" in head and "no body sent" in head
        for key, desc in said.items():
            if key[2] == 304:
                assert desc.startswith(full) and "304 Not Modified" in desc and "no body sent" in desc, key
        assert "HEAD" in said[("HEAD", record, 304, ("If-None-Match",))]
        assert "HEAD" not in said[("GET", record, 304, ("If-None-Match",))]


def test_a_vread_and_each_history_page_name_the_versions_released(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        created = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON).json()
        consent = f"Consent/{created['id']}"
        created["status"] = "inactive"
        assert client.put(f"/fhir/{consent}", json=created, headers=FHIR_JSON).status_code == 200
        before = len(services.store.list_audit(10000))
        assert client.get(f"/fhir/{consent}/_history/1", headers=TREAT).status_code == 200
        [vread] = _new_events(services, before)
        assert vread["subtype"][0]["code"] == "vread" and _refs(vread) == [f"{consent}/_history/1"]

        before = len(services.store.list_audit(10000))
        first = client.get(f"/fhir/{consent}/_history", params={"_count": "1"}, headers=TREAT)
        assert first.status_code == 200
        [page] = _new_events(services, before)
        assert page["subtype"][0]["code"] == "history-instance" and _refs(page) == [f"{consent}/_history/2"]
        [next_url] = [link["url"] for link in first.json()["link"] if link["relation"] == "next"]
        before = len(services.store.list_audit(10000))
        assert client.get(next_url, headers=TREAT).status_code == 200
        [page] = _new_events(services, before)
        assert _refs(page) == [f"{consent}/_history/1"]

        before = len(services.store.list_audit(10000))
        assert client.get(f"/fhir/{consent}/_history", headers=TREAT).status_code == 200
        [page] = _new_events(services, before)
        assert _refs(page) == [f"{consent}/_history/2", f"{consent}/_history/1"]


def test_a_study_metadata_retrieve_is_one_event_per_patient_and_decision(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        encounter = {"identifier": {"system": "urn:oid:2.999.1.3", "value": "ENC-42"}}
        receipts = [post_photo(client, SAMPLES / name, metadata(encounter=encounter)).json()
                    for name in ("wound.jpg", "lesion.png")]
        studies = {r["dicom"]["studyInstanceUid"] for r in receipts}
        assert len(studies) == 1, studies  # one study of the patient's, each photo with its own implied Consent
        before = len(services.store.list_audit(10000))
        r = client.get(f"/dicomweb/studies/{studies.pop()}/metadata",
                       headers={**TREAT, "Accept": "application/dicom+json"})
        assert r.status_code == 200 and len(r.json()) == 2
        [event] = dicom_events(_new_events(services, before), INSTANCES_TRANSFERRED)
        record_emitted(event)
        assert event["outcome"] == "0" and patients(event) == [PATIENT]
        assert sorted(_refs(event)) == sorted(r["record"] for r in receipts)
        consents = [e for e in event["entity"] if e.get("type", {}).get("code") == "Consent"]
        assert len(consents) == len({e["what"]["reference"] for e in consents})
