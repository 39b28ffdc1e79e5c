"""A capture app's queued retry that spans an upgrade (verify review 2, findings 1 and 6), over
the real app on real SQLite and PostgreSQL stores.

A release that strips metadata otherwise (schema 20 and before kept an ICC profile's text as
received; the current one rewrites it) stores other bytes for the same upload, so the stored
SHA-256 of a receipt written by it is not the one this release computes. The store is made as
the older release left it: the receipt's row holding another stored SHA-256, no
``received_sha256`` column (schema 23) and no ``outcome`` in the receipt; the upgrade to
schema 24 fills the column from the receipt's ``sha256.received``. Then:

- a retry without a key of a record marked entered-in-error before is refused 409
  (``stored-entered-in-error``), never filed again with ``safeToDeleteFromDevice: true``;
- a retry without a key (or under a new key) of a live record is answered with its receipt,
  not stored as a second record;
- the receipt answered carries ``outcome``, rebuilt from its stored ``warnings``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text

from adapter.mapping.codes import INGEST_WARNING_SYSTEM
from adapter.store.schema import SCHEMA_VERSION
from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, as_purpose, mark_entered_in_error, metadata, post_photo
from tests.support.postgres import data_folder_or_postgres

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
LEFT = {"bodySite": "14975008", "laterality": "left"}
#: The stored SHA-256 an older release computed for the same upload (other bytes kept).
OLDER_STORED = "0" * 63 + "1"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Any:
    yield from data_folder_or_postgres(request.param, "test_retry_upgrade")


def _as_the_older_release_left_it(services: Any, version: int = SCHEMA_VERSION - 1) -> None:
    """Every receipt as a release that stored other bytes wrote it (another stored SHA-256,
    no ``outcome``), the tables as schema ``version`` had them."""
    with services.store.engine.begin() as conn:
        for table in ("receipts", "withdrawn_receipts"):
            for seq, receipt in conn.execute(text(f"SELECT seq, receipt FROM {table}")).all():
                older = json.loads(receipt)
                older["sha256"]["stored"] = OLDER_STORED
                older.pop("outcome")
                conn.execute(text(f"UPDATE {table} SET stored_sha256 = :stored, receipt = :receipt WHERE seq = :seq"),
                             {"stored": OLDER_STORED, "receipt": json.dumps(older), "seq": seq})
            if "received_sha256" in {c["name"] for c in inspect(conn).get_columns(table)}:
                conn.execute(text(f"DROP INDEX ix_{table}_patient_received"))
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN received_sha256"))
        conn.execute(text("UPDATE resources SET blob_sha256 = :stored WHERE blob_sha256 IS NOT NULL"),
                     {"stored": OLDER_STORED})
        conn.execute(text("UPDATE schema_version SET version = :version WHERE version = (SELECT MAX(version) "
                          "FROM schema_version)"), {"version": version})


def _records(client: Any, status: str) -> list[str]:
    found = client.get(f"/fhir/Media?patient:identifier={PATIENT['system']}|{PATIENT['value']}&status={status}",
                       headers=as_purpose("TREAT")).json()
    return [e["resource"]["id"] for e in found.get("entry", []) if e["search"]["mode"] == "match"]


def test_a_keyless_retry_of_a_record_withdrawn_before_the_upgrade_is_refused(tmp_path: Path,
                                                                             database_url: str | None) -> None:
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        first = post_photo(client, WOUND, metadata(**LEFT), headers={"Idempotency-Key": "kE"})
        assert first.status_code == 201, first.text
        assert mark_entered_in_error(client, first.json()["record"]).status_code == 200
        _as_the_older_release_left_it(services)
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute(text("SELECT received_sha256 FROM withdrawn_receipts")).scalar_one() \
                == first.json()["sha256"]["received"]
        retry = post_photo(client, WOUND, metadata(**LEFT))  # the queued retry, without the key
        assert retry.status_code == 409, retry.text
        assert "safeToDeleteFromDevice" not in retry.text
        assert [c["code"] for i in retry.json()["issue"] for c in i.get("details", {}).get("coding", [])
                if c.get("system") == INGEST_WARNING_SYSTEM] == ["stored-entered-in-error"]
        assert _records(client, "completed") == []
        # filed again with corrected details: a new record, as docs/operations.md says
        assert post_photo(client, WOUND, metadata(bodySite="14975008", laterality="right")).status_code == 201


@pytest.mark.parametrize("key", [None, "a-new-key"])
def test_a_retry_of_a_record_stored_before_the_upgrade_gets_its_receipt_with_an_outcome(
        tmp_path: Path, database_url: str | None, key: str | None) -> None:
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        first = post_photo(client, WOUND, metadata(**LEFT))
        assert first.status_code == 201, first.text
        _as_the_older_release_left_it(services)
    with adapter_client(tmp_path, database_url=database_url) as (client, _):
        retry = post_photo(client, WOUND, metadata(**LEFT), headers={"Idempotency-Key": key} if key else {})
        assert retry.status_code == 201, retry.text
        assert retry.headers.get("Idempotent-Replayed") == "true"
        assert retry.json()["record"] == first.json()["record"]
        assert retry.json()["sha256"]["stored"] == OLDER_STORED  # the receipt as it was stored
        assert retry.json()["outcome"] == first.json()["outcome"]  # rebuilt from its warnings
        assert _records(client, "completed") == [first.json()["record"].split("/")[1]]
