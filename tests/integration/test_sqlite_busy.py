"""SQLite under several writers (HTTP worker processes, the SCP): a write waits for the write
lock (busy timeout) and, when another process holds it longer than that, is answered 503 with
Retry-After and an OperationOutcome (issue transient), never 500, and nothing of it is stored.
The other process is played by a connection holding BEGIN IMMEDIATE; the busy timeout is
shortened to one second so the test does not wait the production 30 s."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from adapter.store import engine
from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, consent_resource, metadata, post_photo

pytestmark = pytest.mark.integration

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def test_a_write_that_outwaits_the_busy_timeout_is_answered_503_with_retry_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "BUSY_TIMEOUT_SECONDS", 1)
    with adapter_client(tmp_path) as (client, services):
        services.store.close()  # connections made from now on have the short busy timeout
        other_process = sqlite3.connect(tmp_path / "data" / "adapter.db", isolation_level=None)
        try:
            other_process.execute("BEGIN IMMEDIATE")
            refused = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON)
        finally:
            other_process.execute("ROLLBACK")
            other_process.close()
        assert refused.status_code == 503, refused.text
        assert refused.json()["issue"][0]["code"] == "transient"
        retry_after = refused.headers.get("Retry-After")
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1
        searched = client.get("/fhir/Consent", headers={"X-Purpose-Of-Use": "TREAT"})
        assert searched.status_code == 200 and searched.json()["total"] == 0  # nothing was stored
        stored = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON)
        assert stored.status_code == 201, stored.text


def test_a_photo_whose_store_and_audit_both_fail_is_answered_503_and_logged_without_patient_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A photo the store fails to keep is audited as a failed create (outcome 8); when the
    database that would hold that AuditEvent is the one failing, the request is answered as
    before (503, nothing stored) and the lost event is logged, naming the request, not the
    patient."""
    monkeypatch.setattr(engine, "BUSY_TIMEOUT_SECONDS", 1)
    with adapter_client(tmp_path) as (client, services):
        services.store.close()
        other_process = sqlite3.connect(tmp_path / "data" / "adapter.db", isolation_level=None)
        try:
            other_process.execute("BEGIN IMMEDIATE")
            with caplog.at_level(logging.ERROR, logger="adapter.services.ingest"):
                refused = post_photo(client, ROOT / "samples" / "wound.jpg", metadata(),
                                     headers={"X-Request-Id": "busy-photo"})
        finally:
            other_process.execute("ROLLBACK")
            other_process.close()
        assert refused.status_code == 503, refused.text
        assert refused.json()["issue"][0]["code"] == "transient"
        lost = [r.getMessage() for r in caplog.records if r.name == "adapter.services.ingest"]
        assert len(lost) == 1 and "busy-photo" in lost[0], caplog.messages
        assert PATIENT["value"] not in " ".join(caplog.messages) and PATIENT["system"] not in " ".join(caplog.messages)
        assert services.store.list_audit() == []
        assert client.get("/fhir/Media", headers={"X-Purpose-Of-Use": "TREAT"}).json()["total"] == 0
