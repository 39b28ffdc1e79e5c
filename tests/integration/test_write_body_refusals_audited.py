"""A Consent create or update, or an entered-in-error PATCH, refused for its body (its encoding,
its JSON, its media type) writes one failure AuditEvent, as their other refusals do (privacy
officer's review dpo, F1 and F3: a UTF-16 or broken body, a withdrawal among them, left none).
The body was not read, so the event names no patient from it: an update names its Consent and the
stored Consent's patient, a PATCH its record, as their refusals before the body do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.app import (
    MARK_ENTERED_IN_ERROR,
    PATIENT,
    adapter_client,
    as_purpose,
    consent_resource,
    metadata,
    post_photo,
)
from tests.support.audit import patients

pytestmark = pytest.mark.integration

FHIR = "application/fhir+json"
UTF16_FHIR = "application/fhir+json; charset=utf-16"


def _utf16(resource: Any) -> bytes:
    return json.dumps(resource).encode("utf-16")


#: A body refused, its Content-Type, and the status it is answered with.
BODIES: dict[str, tuple[bytes, str, int]] = {
    "UTF-16 said": (_utf16(consent_resource(["TRAIN"])), UTF16_FHIR, 415),
    "UTF-16 unsaid": (_utf16(consent_resource(["TRAIN"])), FHIR, 400),
    "broken JSON": (b'{"resourceType":"Consent",', FHIR, 400),
    "not FHIR": (b"{}", FHIR, 400),
    "another media type": (json.dumps(consent_resource(["TRAIN"])).encode(), "text/plain", 415),
}


def _events(services: Any) -> list[dict[str, Any]]:
    return list(services.store.list_audit(10_000))


def _references(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event["entity"] if "reference" in e.get("what", {})]


def _one_refusal(services: Any, before: int, answer: Any, subtype: str, action: str) -> dict[str, Any]:
    events = _events(services)
    assert len(events) == before + 1, [e.get("outcomeDesc") for e in events[:3]]
    event = events[0]  # newest first
    assert (event["subtype"][0]["code"], event["action"], event["outcome"]) == (subtype, action, "4"), event
    assert event["outcomeDesc"] == answer.json()["issue"][0]["diagnostics"]
    return event


@pytest.mark.parametrize("body", list(BODIES))
def test_a_consent_create_refused_for_its_body_is_audited_once(tmp_path: Path, body: str) -> None:
    """Seen failing: no AuditEvent."""
    content, content_type, status = BODIES[body]
    with adapter_client(tmp_path) as (client, services):
        before = len(_events(services))
        r = client.post("/fhir/Consent", content=content, headers={"Content-Type": content_type})
        assert r.status_code == status, r.text
        event = _one_refusal(services, before, r, "create", "C")
        assert patients(event) == [] and not any(ref.startswith("Consent/") for ref in _references(event))


@pytest.mark.parametrize("body", list(BODIES))
def test_a_consent_update_refused_for_its_body_is_audited_once(tmp_path: Path, body: str) -> None:
    """A withdrawal sent in UTF-16 among them. Seen failing: no AuditEvent."""
    content, content_type, status = BODIES[body]
    with adapter_client(tmp_path) as (client, services):
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers={"Content-Type": FHIR}).json()
        withdrawal = {**consent, "status": "inactive"}
        if body.startswith("UTF-16"):
            content = _utf16(withdrawal)
        before = len(_events(services))
        r = client.put(f"/fhir/Consent/{consent['id']}", content=content, headers={"Content-Type": content_type})
        assert r.status_code == status, r.text
        event = _one_refusal(services, before, r, "update", "U")
        assert f"Consent/{consent['id']}" in _references(event)
        # the stored Consent's patient, as an update's other refusals name
        assert patients(event) == [{"system": PATIENT["system"], "value": PATIENT["value"]}]
        # an update of an id never made, refused for its body: the Consent named, no patient
        before = len(_events(services))
        r = client.put("/fhir/Consent/never-made", content=content, headers={"Content-Type": content_type})
        assert r.status_code == status, r.text
        event = _one_refusal(services, before, r, "update", "U")
        assert "Consent/never-made" in _references(event) and patients(event) == []
        assert client.get(f"/fhir/Consent/{consent['id']}", headers=as_purpose("TREAT")).json()["status"] == "active"


#: A PATCH body refused, its Content-Type, and the status it is answered with.
PATCHES: dict[str, tuple[bytes, str, int]] = {
    "UTF-16": (json.dumps(MARK_ENTERED_IN_ERROR).encode("utf-16"), "application/json-patch+json", 400),
    "broken JSON": (b'[{"op":"replace",', "application/json-patch+json", 400),
    "another patch": (json.dumps([{"op": "remove", "path": "/status"}]).encode(), "application/json-patch+json",
                      422),
    "merge patch": (json.dumps({"status": "entered-in-error"}).encode(), "application/merge-patch+json", 415),
    "charset UTF-16": (json.dumps(MARK_ENTERED_IN_ERROR).encode("utf-16"),
                       "application/json-patch+json; charset=utf-16", 415),
}


@pytest.mark.parametrize("body", list(PATCHES))
def test_an_entered_in_error_patch_refused_for_its_body_is_audited_once(tmp_path: Path, body: str) -> None:
    """Seen failing: no AuditEvent, though its 428, 412 and 403 refusals have one."""
    content, content_type, status = PATCHES[body]
    with adapter_client(tmp_path) as (client, services):
        record = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()["record"]
        before = len(_events(services))
        r = client.patch(f"/fhir/{record}", content=content,
                         headers={"Content-Type": content_type, "If-Match": 'W/"1"', **as_purpose("RECORDMGT")})
        assert r.status_code == status, r.text
        event = _one_refusal(services, before, r, "patch", "U")
        assert record in _references(event) and patients(event) == []
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).json()["status"] == "completed"
