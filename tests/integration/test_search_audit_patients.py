"""A search that counts or withholds one patient's records names that patient in its AuditEvent
(privacy review F2): a ``_summary=count`` (or ``_count=0``) answer for a patient the search names
discloses how many records the patient has, and a search under HRESCH or TRAIN that withholds the
patient's records (no Consent, or the Consent withdrawn) is a decision on them, as the single
read's refusal is. Both left an event naming only the query, so the patient's trail missed them.
Now the event names the patient (the stored identifier: the trail is the adapter's own, as a
read's refusal in the same view names it) and the Consents the decisions rested on, a withdrawn
one described so; it still names no record it did not release."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapter.services.registry import Services
from tests.conftest import ROOT, record_emitted
from tests.support.app import (
    PATIENT,
    FhirClient,
    adapter_client,
    as_purpose,
    consent_resource,
    metadata,
    post_photo,
)
from tests.support.audit import QUERY, dicom_events, patients

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
LESION = ROOT / "samples" / "lesion.png"
WITHDRAWN = "withdrawn: would have permitted this purpose"


def _events_of(client: FhirClient, services: Services, path: str, headers: dict[str, str]
               ) -> tuple[Any, list[dict[str, Any]]]:
    before = len(services.store.list_audit(100000))
    answer = client.get(path, headers=headers)
    events = services.store.list_audit(100000)
    fresh = events[: len(events) - before]
    record_emitted(fresh)
    return answer, fresh


def _refs(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "reference" in e.get("what", {})]


def _consents(event: dict[str, Any]) -> dict[str, str | None]:
    return {e["what"]["reference"]: e.get("description") for e in event.get("entity", [])
            if e.get("what", {}).get("reference", "").startswith("Consent/")}


def _two_photos(client: FhirClient) -> list[dict[str, Any]]:
    return [post_photo(client, path, metadata()).json() for path in (WOUND, LESION)]


@pytest.mark.parametrize("query", ["_summary=count", "_count=0"])
def test_a_count_names_the_patient_counted(tmp_path: Path, query: str) -> None:
    """Seen failing: one event naming only the query, "2 permitted, 0 withheld"."""
    with adapter_client(tmp_path) as (client, services):
        _two_photos(client)
        path = f"/fhir/Media?patient.identifier={PATIENT['system']}|{PATIENT['value']}&{query}"
        answer, events = _events_of(client, services, path, as_purpose("TREAT"))
        assert answer.status_code == 200 and answer.json()["total"] == 2
        assert len(events) == 1
        event = events[0]
        assert event["outcome"] == "0" and event["outcomeDesc"] == "2 permitted, 0 withheld"
        assert patients(event) == [{"system": PATIENT["system"], "value": PATIENT["value"]}]
        # the Consents the count rested on (each photo's implied one), and no record: none was sent
        assert len(_consents(event)) == 2
        assert [r for r in _refs(event) if not r.startswith("Consent/")] == []


def test_a_search_withholding_a_patients_records_under_hresch_names_the_patient(tmp_path: Path) -> None:
    """Seen failing: "0 permitted, 2 withheld", naming only the query."""
    with adapter_client(tmp_path) as (client, services):
        _two_photos(client)
        answer, events = _events_of(client, services, "/fhir/Media", as_purpose("HRESCH"))
        assert answer.status_code == 200 and answer.json().get("entry", []) == []
        assert len(events) == 1 and events[0]["outcomeDesc"] == "0 permitted, 2 withheld"
        assert patients(events[0]) == [{"system": PATIENT["system"], "value": PATIENT["value"]}]
        assert [r for r in _refs(events[0]) if not r.startswith("Consent/")] == []


def test_a_search_under_train_after_withdrawal_names_the_patient_and_the_withdrawn_consent(tmp_path: Path) -> None:
    """Seen failing: naming neither the patient nor the withdrawn Consent, which the read names."""
    with adapter_client(tmp_path) as (client, services):
        _two_photos(client)
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).json()
        withdrawn = {**consent, "status": "inactive"}
        assert client.put(f"/fhir/Consent/{consent['id']}", json=withdrawn).status_code == 200
        answer, events = _events_of(client, services, "/fhir/Media", as_purpose("TRAIN"))
        assert answer.status_code == 200 and answer.json().get("entry", []) == []
        assert len(events) == 1 and events[0]["outcomeDesc"] == "0 permitted, 2 withheld"
        assert patients(events[0]) == [{"system": PATIENT["system"], "value": PATIENT["value"]}]
        assert _consents(events[0]) == {f"Consent/{consent['id']}/_history/2": WITHDRAWN}


def test_a_qido_search_withholding_a_patients_instances_under_hresch_names_the_patient(tmp_path: Path) -> None:
    """Seen failing: "0 instances permitted, 2 withheld", naming only the query."""
    with adapter_client(tmp_path) as (client, services):
        _two_photos(client)
        answer, events = _events_of(client, services, "/dicomweb/studies", as_purpose("HRESCH"))
        assert answer.status_code in (200, 204)
        assert dicom_events(events, QUERY) == events and len(events) == 1
        assert events[0]["outcomeDesc"] == "0 instances permitted, 2 withheld"
        assert [p["value"] for p in patients(events[0])] == [PATIENT["value"]]


def test_a_search_withholding_several_patients_records_names_none_of_them(tmp_path: Path) -> None:
    """Not one patient's: the event stays one naming only the query (no event per patient withheld)."""
    with adapter_client(tmp_path) as (client, services):
        _two_photos(client)
        other = {"system": PATIENT["system"], "value": "MRN-0002"}
        assert post_photo(client, WOUND, metadata(patient=other)).status_code == 201
        answer, events = _events_of(client, services, "/fhir/Media", as_purpose("HRESCH"))
        assert answer.status_code == 200
        assert len(events) == 1 and events[0]["outcomeDesc"] == "0 permitted, 3 withheld"
        assert patients(events[0]) == []
