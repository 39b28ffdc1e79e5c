"""PostgreSQL advisory locks are the database's: an adapter's audit lock, taken in its own
schema's space, does not hold up another adapter whose tables lie in another schema of the same
database (two sites, staging beside production), and still serialises two instances on the same
tables."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adapter.store.locks import SCHEMA_KEY
from tests.conftest import ROOT
from tests.support.app import adapter_client, metadata, post_photo
from tests.support.postgres import postgres_schema

#: adapter.store.sql._AUDIT_LOCK, which every audited write takes
AUDIT_LOCK = 0x1A6E5706


@pytest.fixture()
def two_schemas() -> Iterator[tuple[str, str]]:
    with postgres_schema("test_locks_a") as a, postgres_schema("test_locks_b") as b:
        yield a, b


def test_a_lock_held_in_one_schema_does_not_hold_up_an_adapter_on_another(
        tmp_path: Path, two_schemas: tuple[str, str]) -> None:
    held_in, other = two_schemas
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    holder = create_engine(held_in)
    try:
        with holder.connect() as hung:  # an instance hung while holding its audit lock
            hung.execute(text(f"SELECT pg_advisory_lock({SCHEMA_KEY})"), {"key": AUDIT_LOCK})
            with adapter_client(tmp_path / "b", database_url=other, dicom_enabled=False,
                                database_lock_timeout=2) as (client, _services):
                started = time.monotonic()
                r = post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
                assert r.status_code == 201, r.text
                assert time.monotonic() - started < 2
            with adapter_client(tmp_path / "a", database_url=held_in, dicom_enabled=False,
                                database_lock_timeout=1) as (client, _services):
                # the same schema's instances still wait on it (503 after the lock timeout)
                assert post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).status_code == 503
            hung.execute(text(f"SELECT pg_advisory_unlock({SCHEMA_KEY})"), {"key": AUDIT_LOCK})
    finally:
        holder.dispose()
