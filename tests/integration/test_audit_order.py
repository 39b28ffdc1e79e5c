"""The audit export (``python -m adapter audit --after SEQ``) misses no event on PostgreSQL, where
transactions commit concurrently: an event whose transaction commits after a later-numbered one
was exported must not fall behind the SIEM's cursor. (SQLite has one writer at a time: its
sequence numbers commit in order.)

A slow transaction is held at its commit, after its AuditEvent got its sequence number, by a
deferred trigger that waits for a lock the test holds; progress is read from pg_stat_activity,
never from the clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from adapter.store import SqlRecordStore
from tests.conftest import wait_until
from tests.support.audit import TEST_AUDIT_KEY
from tests.support.postgres import named_postgres_schema, sessions_waiting_on_a_lock

pytestmark = pytest.mark.integration

_GATE = 4242  # the advisory lock the test holds while the slow transaction waits on it

_HOLD_SLOW = """
CREATE FUNCTION hold_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.json::text LIKE '%slow-event%' THEN PERFORM pg_advisory_xact_lock_shared(4242); END IF;
  RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER hold_slow AFTER INSERT ON audit DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION hold_slow();
"""


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """A PostgreSQL schema of its own, and the application_name its store's sessions carry."""
    with named_postgres_schema("audit_order") as named:
        yield named


def _event(marker: str) -> dict[str, str]:
    return {"resourceType": "AuditEvent", "id": marker}


def test_an_event_committed_after_a_later_numbered_one_is_not_skipped_by_the_export(
        database: tuple[str, str]) -> None:
    url, name = database
    store = SqlRecordStore(url, audit_key=TEST_AUDIT_KEY)
    admin = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(_HOLD_SLOW))

        def waiting() -> int:  # the store's sessions waiting on a lock
            return sessions_waiting_on_a_lock(admin, name)

        errors: list[BaseException] = []

        def append(marker: str) -> Callable[[], None]:
            def run() -> None:
                try:
                    store.append_audit(_event(marker))
                except BaseException as exc:  # noqa: BLE001 - asserted below
                    errors.append(exc)
            return run

        with admin.connect() as gate:
            gate.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _GATE})
            slow = threading.Thread(target=append("slow-event"))
            slow.start()
            wait_until(lambda: waiting() == 1, timeout=15)
            fast = threading.Thread(target=append("fast-event"))
            fast.start()
            # the fast one commits, or waits its turn behind the slow one
            wait_until(lambda: not fast.is_alive() or waiting() == 2, timeout=15)
            first = list(store.iter_audit())  # a SIEM's export runs now
            cursor = first[-1][0] if first else 0
            gate.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _GATE})
            gate.commit()
        slow.join(15)
        fast.join(15)
        assert not errors
        rest = list(store.iter_audit(after=cursor))  # the next export, from where the last one stopped
        exported = [event["id"] for _, event in first + rest]
        assert sorted(exported) == ["fast-event", "slow-event"], exported
    finally:
        store.close()
        admin.dispose()
