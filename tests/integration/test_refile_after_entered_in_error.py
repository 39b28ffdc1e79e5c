"""Filing a photo again after its record was marked entered-in-error, and what a retry is told
(mobile review 2, findings 1, 2, 5 and 6), over the real app on real SQLite and PostgreSQL stores.

- A withdrawn record no longer keeps the photo from being filed again for the patient (with
  corrected details, or under a new Idempotency-Key); concurrent re-files still make one record.
- A retry of the request that stored a withdrawn record is refused (409
  ``stored-entered-in-error``), never answered ``safeToDeleteFromDevice: true``; so is a
  transaction's.
- A retry refused because the photo is stored with other details says so machine-readably
  (``Location``, ``stored-with-other-details``); the same instant in another offset is no
  other detail.
- The key-reuse 422 points at the correction; the same image filed for another patient is
  warned of in the receipt, naming no one."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from adapter.mapping.codes import INGEST_WARNING_SYSTEM
from adapter.model.photo import PhotoMetadata
from adapter.model.purpose import PurposeOfUse, RequestContext
from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, as_purpose, mark_entered_in_error, metadata, post_photo
from tests.support.fhir_factories import jpeg_bytes
from tests.support.mhd import provide_document_bundle
from tests.support.postgres import data_folder_or_postgres

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
FHIR = {"Content-Type": "application/fhir+json"}
OTHER = {"system": "urn:oid:2.999.1.1", "value": "MRN-MOB-5"}
LEFT = {"bodySite": "14975008", "laterality": "left"}
RIGHT = {"bodySite": "14975008", "laterality": "right"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Any:
    yield from data_folder_or_postgres(request.param, "test_refile")


def _codes(outcome: dict[str, Any]) -> list[str]:
    return [c["code"] for i in outcome["issue"] for c in i.get("details", {}).get("coding", [])
            if c.get("system") == INGEST_WARNING_SYSTEM]


def _records(client: Any, patient: dict[str, str] = PATIENT, status: str | None = None) -> list[dict[str, Any]]:
    query = f"/fhir/Media?patient:identifier={patient['system']}|{patient['value']}"
    found = client.get(query + (f"&status={status}" if status else ""), headers=as_purpose("TREAT")).json()
    return [e["resource"] for e in found.get("entry", []) if e["search"]["mode"] == "match"]


def test_a_photo_withdrawn_is_filed_again_with_corrected_details_or_a_new_key(tmp_path: Path,
                                                                           database_url: str | None) -> None:
    """Finding 1: docs/operations.md's "file the photo again" after the mark."""
    with adapter_client(tmp_path, database_url=database_url) as (client, _):
        first = post_photo(client, WOUND, metadata(**LEFT), headers={"Idempotency-Key": "dev-1"})
        assert first.status_code == 201, first.text
        assert mark_entered_in_error(client, first.json()["record"]).status_code == 200
        corrected = post_photo(client, WOUND, metadata(**RIGHT))  # no key, the side corrected
        assert corrected.status_code == 201, corrected.text
        assert "Idempotent-Replayed" not in corrected.headers
        assert corrected.json()["record"] != first.json()["record"]
        assert corrected.json()["safeToDeleteFromDevice"] is True
        assert post_photo(client, WOUND, metadata(**RIGHT)).json() == corrected.json()  # its own retry
        assert client.get(f"/fhir/{corrected.json()['binary']}",
                          headers=as_purpose("TREAT", Accept="image/jpeg")).status_code == 200
        # withdrawn again, the same details under a new key (the mark itself was the mistake)
        assert mark_entered_in_error(client, corrected.json()["record"]).status_code == 200
        again = post_photo(client, WOUND, metadata(**LEFT), headers={"Idempotency-Key": "dev-1-again"})
        assert again.status_code == 201, again.text
        assert [r["id"] for r in _records(client, status="completed")] == [again.json()["record"].split("/")[1]]
        assert len(_records(client, status="entered-in-error")) == 2


@pytest.mark.parametrize("key", [None, "dev-2"])
def test_a_retry_of_a_withdrawn_record_is_refused_and_the_device_keeps_the_photo(
        tmp_path: Path, database_url: str | None, key: str | None) -> None:
    """Finding 2: the app's queued retry (same key, or no key and the same details) was answered
    201 Idempotent-Replayed with safeToDeleteFromDevice true for an image released to no one."""
    headers = {"Idempotency-Key": key} if key else {}
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        first = post_photo(client, WOUND, metadata(**LEFT), headers=headers).json()
        assert mark_entered_in_error(client, first["record"]).status_code == 200
        retry = post_photo(client, WOUND, metadata(**LEFT), headers=headers)
        assert retry.status_code == 409, retry.text
        assert "safeToDeleteFromDevice" not in retry.text and "Location" not in retry.headers
        assert "Idempotent-Replayed" not in retry.headers
        body = retry.json()
        assert _codes(body) == ["stored-entered-in-error"]
        said = body["issue"][0]["diagnostics"]
        assert first["record"] in said and "entered-in-error" in said and "new Idempotency-Key" in said
        if key:  # the key's request, corrected, is still that request: refused alike
            assert post_photo(client, WOUND, metadata(**RIGHT), headers=headers).status_code == 409
        refused = [e for e in services.store.list_audit(100) if e.get("outcome") == "4"]
        assert refused and "entered-in-error" in refused[0]["outcomeDesc"]
        assert _records(client, status="completed") == []


def test_a_transactions_retry_of_a_withdrawn_document_is_refused(tmp_path: Path) -> None:
    """Finding 2, the POST /fhir transaction's replay path, by key and without."""
    with adapter_client(tmp_path) as (client, _):
        for key, document in (("tx-1", jpeg_bytes(400, 300)), (None, jpeg_bytes(440, 300))):
            headers = {**FHIR, **({"Idempotency-Key": key} if key else {})}
            bundle = provide_document_bundle(document)  # sent again as it is (its entryUUIDs too)
            stored = client.post("/fhir", json=bundle, headers=headers)
            assert stored.status_code == 200, stored.text
            record = stored.json()["entry"][1]["response"]["location"].split("/_history")[0]
            assert mark_entered_in_error(client, record).status_code == 200
            retry = client.post("/fhir", json=bundle, headers=headers)
            assert retry.status_code == 409, retry.text
            assert "safeToDeleteFromDevice" not in retry.text
            assert _codes(retry.json()) == ["stored-entered-in-error"]
        # the document sent in a new submission (its own entryUUID): filed again
        again = client.post("/fhir", json=provide_document_bundle(document), headers=FHIR)
        assert again.status_code == 200, again.text


def test_concurrent_refiles_after_the_mark_make_one_record(tmp_path: Path, database_url: str | None) -> None:
    """Finding 1: the unique (patient, stored image) of the records held still decides a race."""
    photo = WOUND.read_bytes()
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        first = post_photo(client, WOUND, metadata(**LEFT)).json()
        assert mark_entered_in_error(client, first["record"]).status_code == 200
        meta = PhotoMetadata.model_validate(metadata(**RIGHT))
        ctx = RequestContext(purpose=PurposeOfUse("TREAT"))
        start = threading.Barrier(6)
        receipts: list[dict[str, Any]] = []
        errors: list[BaseException] = []

        def post() -> None:
            try:
                start.wait()
                receipts.append(services.ingest.ingest_photo(photo, meta, idempotency_key=None, ctx=ctx).receipt)
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        threads = [threading.Thread(target=post) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(receipts) == 6 and all(r == receipts[0] for r in receipts)
        assert [r["id"] for r in _records(client, status="completed")] == [receipts[0]["record"].split("/")[1]]


def test_a_retry_with_other_details_says_the_photo_is_stored_and_where(tmp_path: Path,
                                                                      database_url: str | None) -> None:
    """Finding 5: Location and a code, not English alone; the same instant in another offset is
    the same takenAt."""
    with adapter_client(tmp_path, database_url=database_url) as (client, _):
        key = {"Idempotency-Key": "tz-1"}
        first = post_photo(client, WOUND, metadata(takenAt="2026-01-28T10:15:30+01:00"), headers=key)
        assert first.status_code == 201, first.text
        same_instant = post_photo(client, WOUND, metadata(takenAt="2026-01-28T09:15:30Z"), headers=key)
        assert same_instant.status_code == 201, same_instant.text
        assert same_instant.json() == first.json() and same_instant.headers["Idempotent-Replayed"] == "true"
        noted = post_photo(client, WOUND, metadata(takenAt="2026-01-28T09:15:30Z", note="edited offline"),
                           headers=key)
        assert noted.status_code == 409, noted.text
        assert noted.headers["Location"] == first.headers["Location"]
        assert _codes(noted.json()) == ["stored-with-other-details"]
        assert noted.json()["issue"][0]["expression"] == ["note"]
        assert first.json()["record"] in noted.json()["issue"][0]["diagnostics"]


def test_the_key_reuse_refusal_points_at_the_correction_and_another_patients_copy_is_warned_of(
        tmp_path: Path, database_url: str | None) -> None:
    """Finding 6: "send this photo with a new key" filed it under a second patient silently."""
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        first = post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "dev1-photo-42"})
        assert first.status_code == 201 and first.json()["warnings"] == []
        reused = post_photo(client, WOUND, metadata(patient=OTHER), headers={"Idempotency-Key": "dev1-photo-42"})
        assert reused.status_code == 422, reused.text
        said = reused.json()["issue"][0]["diagnostics"]
        assert "entered-in-error" in said and "Correcting a misfiled record" in said
        assert "send this photo with a new key" not in said
        second = post_photo(client, WOUND, metadata(patient=OTHER), headers={"Idempotency-Key": "dev1-photo-42-fix"})
        assert second.status_code == 201, second.text
        [warning] = second.json()["warnings"]
        assert "filed for another patient" in warning and "entered-in-error" in warning
        assert PATIENT["value"] not in second.text and first.json()["record"] not in second.text
        # nothing of it in the record care reads
        record = client.get(f"/fhir/{second.json()['record']}", headers=as_purpose("TREAT"))
        assert "another patient" not in record.text
        # once the wrong one is withdrawn, no warning
        assert mark_entered_in_error(client, first.json()["record"]).status_code == 200
        third = {"system": "urn:oid:2.999.1.1", "value": "MRN-MOB-6"}
        assert mark_entered_in_error(client, second.json()["record"]).status_code == 200
        alone = post_photo(client, WOUND, metadata(patient=third))
        assert alone.status_code == 201 and alone.json()["warnings"] == []
        with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute(text("SELECT COUNT(*) FROM withdrawn_receipts")).scalar_one() == 2


def test_a_transactions_document_filed_for_another_patient_is_warned_of_with_a_code(tmp_path: Path) -> None:
    """Finding 6 in a transaction-response: the warning with its code."""
    document = jpeg_bytes(400, 300)
    with adapter_client(tmp_path) as (client, _):
        assert client.post("/fhir", json=provide_document_bundle(document), headers=FHIR).status_code == 200
        other = client.post("/fhir", json=provide_document_bundle(document, patient=OTHER), headers=FHIR)
        assert other.status_code == 200, other.text
        outcome = other.json()["entry"][1]["response"]["outcome"]
        assert "filed-for-another-patient" in _codes(outcome)


def test_the_upgrade_moves_the_receipts_of_records_marked_before(tmp_path: Path) -> None:
    """Schema 23: a record marked entered-in-error under an older schema keeps its receipt in
    ``receipts``; the upgrade moves it, and the photo can then be filed again."""
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, WOUND, metadata(**LEFT)).json()
        assert mark_entered_in_error(client, first["record"]).status_code == 200
        with services.store.engine.begin() as conn:  # type: ignore[attr-defined]
            # as an older schema left it: the receipt where it was, the version before
            conn.execute(text("INSERT INTO receipts (idempotency_key, patient_system, patient_value, stored_sha256, "
                              "recorded, receipt) SELECT idempotency_key, patient_system, patient_value, "
                              "stored_sha256, recorded, receipt FROM withdrawn_receipts"))
            conn.execute(text("DROP TABLE withdrawn_receipts"))
            conn.execute(text("UPDATE schema_version SET version = 21 WHERE version = (SELECT MAX(version) "
                              "FROM schema_version)"))
    with adapter_client(tmp_path) as (client, services):
        with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute(text("SELECT COUNT(*) FROM receipts")).scalar_one() == 0
            assert conn.execute(text("SELECT COUNT(*) FROM withdrawn_receipts")).scalar_one() == 1
        assert post_photo(client, WOUND, metadata(**LEFT)).status_code == 409
        assert post_photo(client, WOUND, metadata(**RIGHT)).status_code == 201
