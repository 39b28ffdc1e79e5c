"""A client that syncs by ``_lastUpdated=gt<the last meta.lastUpdated it saw>`` misses no record,
also on PostgreSQL with concurrent writers (two ``serve`` instances on one database, or the
threads of one): a record must never become visible with a lastUpdated at or before one a reader
has seen already.

Found by the two-instance review: two instances taking photos at once while an integration engine
synced Media by ``_lastUpdated`` lost one photo in 300 for good. Each write chose its instant
before its transaction, so a photo stamped earlier could commit after one stamped later and
already synced; and two writes in one millisecond (the instant's precision) got the same instant,
the later one excluded by ``gt`` once the first was seen.

A slow transaction is held after it chose its instant, by a trigger that waits for a lock the test
holds; progress is read from pg_stat_activity, never from the clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapter.mapping.fhir_r4 import index_resource
from adapter.model.record import NewResource
from adapter.services.search_params import parse_date_param
from adapter.store import SearchCriteria, SqlRecordStore
from adapter.store.dates import format_instant
from adapter.store.schema import resources
from tests.conftest import wait_until
from tests.support.audit import TEST_AUDIT_KEY
from tests.support.postgres import named_postgres_schema, sessions_waiting_on_a_lock

pytestmark = pytest.mark.integration

_GATE = 4243  # the advisory lock the test holds while the slow transaction waits on it

_HOLD_SLOW = """
CREATE FUNCTION hold_slow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.id = 'slow' THEN PERFORM pg_advisory_xact_lock_shared(4243); END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER hold_slow BEFORE INSERT ON resources FOR EACH ROW EXECUTE FUNCTION hold_slow();
"""


def _media(id: str) -> NewResource:
    resource = {"resourceType": "Media", "id": id, "status": "completed",
                "subject": {"identifier": {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}},
                "content": {"contentType": "image/jpeg"}}
    return NewResource("Media", id, resource, index_resource(resource))


def _event(marker: str) -> dict[str, str]:
    return {"resourceType": "AuditEvent", "id": marker}


def _sync(store: SqlRecordStore, after: datetime | None) -> list[tuple[str, datetime]]:
    """The Media a client syncing after ``after`` is given (``_lastUpdated=gt<after>``)."""
    criteria = SearchCriteria() if after is None else \
        SearchCriteria(last_updated=((parse_date_param(f"gt{format_instant(after)}"),),))
    return [(row.id, row.last_updated) for row in store.search_index("Media", criteria)]


@pytest.fixture
def database() -> Iterator[tuple[str, str]]:
    """A PostgreSQL schema of its own, and the application_name its store's sessions carry."""
    with named_postgres_schema("last_updated") as named:
        yield named


def test_a_record_stamped_earlier_never_commits_after_one_a_sync_has_seen(database: tuple[str, str]) -> None:
    url, name = database
    store = SqlRecordStore(url, audit_key=TEST_AUDIT_KEY)
    admin = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(_HOLD_SLOW))

        def waiting() -> int:  # the store's sessions waiting on a lock
            return sessions_waiting_on_a_lock(admin, name)

        errors: list[BaseException] = []

        def create(id: str) -> threading.Thread:
            def run() -> None:
                try:
                    store.create(_media(id), audit_events=[_event(id)])
                except BaseException as exc:  # noqa: BLE001 - asserted below
                    errors.append(exc)
            thread = threading.Thread(target=run)
            thread.start()
            return thread

        with admin.connect() as gate:
            gate.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _GATE})
            slow = create("slow")
            wait_until(lambda: waiting() == 1, timeout=15)
            fast = create("fast")
            # the fast one commits, or waits its turn behind the slow one
            wait_until(lambda: not fast.is_alive() or waiting() == 2, timeout=15)
            first = _sync(store, None)  # an integration engine syncs now
            gate.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _GATE})
            gate.commit()
        slow.join(15)
        fast.join(15)
        assert not errors
        cursor = max((updated for _, updated in first), default=None)
        rest = _sync(store, cursor)  # the next sync, after the last instant the first one saw
        assert sorted(id for id, _ in first + rest) == ["fast", "slow"], (first, rest)
    finally:
        store.close()
        admin.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_writes_in_one_millisecond_get_increasing_instants(tmp_path: Path, backend: str,
                                                           request: pytest.FixtureRequest) -> None:
    """Consecutive writes of a type get strictly increasing lastUpdated, whatever the clock says
    (here: many in one millisecond), so ``gt`` the instant of one never leaves out the next."""
    url = request.getfixturevalue("database")[0] if backend == "postgresql" else f"sqlite:///{tmp_path}/a.db"
    store = SqlRecordStore(url, audit_key=TEST_AUDIT_KEY)
    try:
        for n in range(30):
            store.create(_media(f"m{n}"), audit_events=[_event(f"m{n}")])
        instants = [store.get("Media", f"m{n}").last_updated for n in range(30)]  # type: ignore[union-attr]
        assert all(a < b for a, b in pairwise(instants)), instants
        seen = _sync(store, None)[:10]
        assert [id for id, _ in _sync(store, seen[-1][1])] == [f"m{n}" for n in range(10, 30)]
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_write_stamped_before_the_latest_instant_of_its_type_is_moved_after_it(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """The record, its history row, the document it returns and its meta.lastUpdated all carry
    the instant it was moved to (here past a record stamped an hour ahead: as if it had committed
    first)."""
    url = request.getfixturevalue("database")[0] if backend == "postgresql" else f"sqlite:///{tmp_path}/a.db"
    store = SqlRecordStore(url, audit_key=TEST_AUDIT_KEY)
    try:
        store.create(_media("ahead"), audit_events=[_event("ahead")])
        ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        with store.engine.begin() as conn:
            conn.execute(sa.update(resources).where(resources.c.id == "ahead").values(last_updated=ahead))
        created = store.create(_media("late"), audit_events=[_event("late")])
        updated = store.update(_media("late"), audit_events=[_event("late-2")])
        assert created.last_updated == ahead + timedelta(milliseconds=1)
        assert updated.last_updated == ahead + timedelta(milliseconds=2)
        for stored, version in ((created, 1), (updated, 2)):
            assert stored.resource["meta"]["lastUpdated"] == format_instant(stored.last_updated)
            assert store.get_version("Media", "late", version)["meta"] == stored.resource["meta"]  # type: ignore[index]
        current = store.get("Media", "late")
        assert current is not None and current.last_updated == updated.last_updated
        assert current.resource["meta"] == updated.resource["meta"]
        assert [id for id, _ in _sync(store, ahead)] == ["late"]
    finally:
        store.close()
