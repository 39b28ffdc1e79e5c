"""The PostgreSQL advisory lock keys of adapter.store.sql: one key per purpose. Two merged
changes once gave the photo StudyDate re-derivation and the audit insert the same key, so each
would have waited on the other's unrelated work (and the re-derivation's lock meant nothing)."""

from __future__ import annotations

import pytest

from adapter.store import sql

pytestmark = pytest.mark.unit


def test_every_advisory_lock_key_is_distinct() -> None:
    keys = {name: value for name, value in vars(sql).items() if name.endswith("_LOCK") and isinstance(value, int)}
    assert len(keys) >= 5
    assert len(set(keys.values())) == len(keys), keys
