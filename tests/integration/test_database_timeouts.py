"""PostgreSQL's waits are bounded (ops review 2): a statement that waits on a lock past
ADAPTER_DATABASE_LOCK_TIMEOUT, or runs past ADAPTER_DATABASE_STATEMENT_TIMEOUT, is cancelled by
the server, and the request answers 503 ``transient`` with nothing of it stored, instead of
hanging as long as the database does. The start's upgrade and re-indexing are not bounded."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adapter.config import DatabaseTimeouts
from adapter.services.registry import Services
from adapter.store.locks import SCHEMA_KEY
from adapter.store.sql import SqlRecordStore
from tests.conftest import ROOT
from tests.support.app import adapter_client, as_purpose, metadata, post_photo
from tests.support.audit import TEST_AUDIT_KEY
from tests.support.postgres import postgres_schema

#: The advisory lock every audited write takes (adapter.store.sql._AUDIT_LOCK), in the test
#: schema's space (adapter.store.locks).
AUDIT_LOCK = 0x1A6E5706


@pytest.fixture()
def pg_url() -> Iterator[str]:
    with postgres_schema("test_db_timeouts") as url:
        yield url


def _count(services: Services, table: str) -> int:
    with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_a_write_waiting_on_a_lock_past_the_lock_timeout_answers_503_and_stores_nothing(
        tmp_path: Path, pg_url: str) -> None:
    with adapter_client(tmp_path, database_url=pg_url, dicom_enabled=False, database_lock_timeout=1,
                        database_statement_timeout=0) as (client, services):
        holder = create_engine(pg_url)
        try:
            with holder.connect() as other:
                other.execute(text(f"SELECT pg_advisory_lock({SCHEMA_KEY})"), {"key": AUDIT_LOCK})  # a hung instance's
                started = time.monotonic()
                r = post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
                took = time.monotonic() - started
                other.execute(text(f"SELECT pg_advisory_unlock({SCHEMA_KEY})"), {"key": AUDIT_LOCK})
        finally:
            holder.dispose()
        assert r.status_code == 503, r.text
        assert r.json()["issue"][0]["code"] == "transient"
        assert took < 10
        assert _count(services, "resources") == 0 and _count(services, "receipts") == 0
        # the lock gone, the same upload goes through
        assert post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).status_code == 201


def test_a_read_running_past_the_statement_timeout_answers_503(tmp_path: Path, pg_url: str) -> None:
    with adapter_client(tmp_path, database_url=pg_url, dicom_enabled=False, database_lock_timeout=0,
                        database_statement_timeout=1) as (client, _services):
        media = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()["record"]
        holder = create_engine(pg_url)
        try:
            with holder.connect() as other:
                other.execute(text("LOCK TABLE resources IN ACCESS EXCLUSIVE MODE"))  # a migration's, say
                started = time.monotonic()
                r = client.get(f"/fhir/{media}", headers=as_purpose("TREAT"))
                took = time.monotonic() - started
                other.rollback()
        finally:
            holder.dispose()
        assert r.status_code == 503, r.text
        assert r.json()["issue"][0]["code"] == "transient"
        assert took < 10
        assert client.get(f"/fhir/{media}", headers=as_purpose("TREAT")).status_code == 200


def test_the_start_s_upgrade_and_reindexing_run_without_the_statement_and_lock_timeouts(pg_url: str) -> None:
    store = SqlRecordStore(pg_url, timeouts=DatabaseTimeouts(connect=3, statement=2, lock=1.5), audit_key=TEST_AUDIT_KEY)
    try:
        with store.engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "2s"
            assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "1500ms"
        with store._maintenance_read() as conn:  # what reindex_records and the fills read through
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "0"
            assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "0"
        with store.engine.connect() as conn:  # transaction-local: the pooled connection keeps its limits
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "2s"
    finally:
        store.close()
    # a URL's own options win over the settings; the tests' search_path stays
    overridden = SqlRecordStore(f"{pg_url}%20-c%20statement_timeout%3D0", timeouts=DatabaseTimeouts(), audit_key=TEST_AUDIT_KEY)
    try:
        with overridden.engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar_one() == "0"
            assert conn.execute(text("SHOW lock_timeout")).scalar_one() == "10s"
            assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar_one() >= 1
    finally:
        overridden.close()
