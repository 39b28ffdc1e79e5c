"""The audit trail's keyed hash chain (adapter.store.audit_chain), on SQLite and PostgreSQL: a
clean trail verifies; an event edited, one removed with the later ones renumbered, two swapped,
each breaks the chain at the right sequence number; the chain goes on across a restart and
under concurrent writers; a store upgraded from schema 16 starts its chain after the events it
held, which stay uncovered (review audit F2)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapter.errors import ConfigurationError
from adapter.store import SqlRecordStore
from adapter.store.audit_chain import CHAIN_START, chain_key
from adapter.store.schema import audit, key_fingerprints
from tests.support.postgres import postgres_schema

pytestmark = pytest.mark.integration

KEY = chain_key(b"test audit key")
Opener = Callable[..., SqlRecordStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores (with the test key, or ``audit_key``) on one fresh database; closes them after."""
    with ExitStack() as stack:
        url = (f"sqlite:///{tmp_path / 'adapter.db'}" if request.param == "sqlite"
               else stack.enter_context(postgres_schema("audit_chain")))
        opened: list[SqlRecordStore] = []

        def opener(audit_key: bytes | None = KEY) -> SqlRecordStore:
            store = SqlRecordStore(url, audit_key=audit_key)
            opened.append(store)
            return store

        try:
            yield opener
        finally:
            for store in opened:
                store.close()


def _events(store: SqlRecordStore, count: int) -> None:
    store.append_audit({"n": 1, "purpose": "BTG"}, {"n": 2, "text": "Zoë"})  # two in one transaction
    for n in range(3, count + 1):
        store.append_audit({"n": n, "purpose": "BTG" if n % 2 else "TREAT"})


def _execute(store: SqlRecordStore, *statements: sa.Executable) -> None:
    with store.engine.begin() as conn:
        for statement in statements:
            conn.execute(statement)


def test_a_clean_trail_verifies(open_store: Opener) -> None:
    store = open_store()
    _events(store, 6)
    report = store.check_audit_chain(batch=4)  # over several batches
    assert (report.events, report.start, report.first_broken, report.broken, report.last) == (6, 1, None, 0, 6)
    assert report.last_mac == store.audit_chain_mac(6) and len(report.last_mac or "") == 64


def test_an_edited_event_breaks_the_chain_at_its_number(open_store: Opener) -> None:
    store = open_store()
    _events(store, 6)
    # a break-glass read rewritten as a care read
    _execute(store, sa.update(audit).where(audit.c.seq == 3).values(json={"n": 3, "purpose": "TREAT"}))
    report = store.check_audit_chain()
    assert (report.first_broken, report.broken) == (3, 1), report


def test_an_event_removed_and_the_later_ones_renumbered_breaks_the_chain(open_store: Opener) -> None:
    store = open_store()
    _events(store, 6)
    _execute(store, sa.delete(audit).where(audit.c.seq == 4),
             *(sa.update(audit).where(audit.c.seq == seq).values(seq=seq - 1) for seq in (5, 6)))
    report = store.check_audit_chain()
    assert report.first_broken == 4 and report.last == 5, report
    removed = open_store()  # a removal without renumbering: a gap
    _execute(removed, sa.delete(audit).where(audit.c.seq == 2))
    assert removed.check_audit_chain().first_broken == 3


def test_two_events_swapped_break_the_chain_at_the_first(open_store: Opener) -> None:
    store = open_store()
    _events(store, 6)
    with store.engine.begin() as conn:  # rows 2 and 5 trade places, each with its MAC
        conn.execute(sa.update(audit).where(audit.c.seq == 2).values(seq=-2))
        conn.execute(sa.update(audit).where(audit.c.seq == 5).values(seq=2))
        conn.execute(sa.update(audit).where(audit.c.seq == -2).values(seq=5))
    report = store.check_audit_chain()
    assert report.first_broken == 2 and report.broken >= 2, report


def test_an_event_inserted_or_the_start_moved_breaks_the_chain(open_store: Opener) -> None:
    store = open_store()
    _events(store, 4)
    with store.engine.connect() as conn:  # closed: an open transaction holds the schema PostgreSQL drops after
        recorded = conn.execute(sa.select(audit.c.recorded).where(audit.c.seq == 4)).scalar_one()
    _execute(store, sa.insert(audit).values(seq=5, recorded=recorded, json={"n": 5}, chain_mac="0" * 64))
    assert store.check_audit_chain().first_broken == 5
    _execute(store, sa.delete(audit).where(audit.c.seq == 5),
             sa.update(key_fingerprints).where(key_fingerprints.c.name == CHAIN_START).values(fingerprint="3"))
    assert store.check_audit_chain().first_broken == 1  # a MAC before the start


def test_the_chain_goes_on_after_a_restart_and_only_under_its_key(open_store: Opener) -> None:
    first = open_store()
    first.claim_audit_key()
    _events(first, 3)
    first.close()
    again = open_store()
    again.claim_audit_key()
    again.append_audit({"n": 4})
    report = again.check_audit_chain()
    assert (report.events, report.first_broken) == (4, None), report
    other = open_store(audit_key=chain_key(b"another folder's key"))
    assert other.audit_key_problem() is not None and "audit.key" in (other.audit_key_problem() or "")
    with pytest.raises(ConfigurationError, match="audit.key"):
        other.claim_audit_key()
    assert other.check_audit_chain().first_broken == 1
    keyless = open_store(audit_key=None)
    with pytest.raises(ConfigurationError, match="audit"):
        keyless.append_audit({"n": 5})
    assert again.check_audit_chain().events == 4


def test_concurrent_writers_keep_one_chain(open_store: Opener) -> None:
    """Several store instances (PostgreSQL: several processes' pools) write at once: the audit lock
    that numbers the events also orders their MACs."""
    stores = [open_store() for _ in range(3)]
    errors: list[BaseException] = []

    def write(store: SqlRecordStore, offset: int) -> None:
        try:
            for n in range(15):
                store.append_audit({"writer": offset, "n": n}, {"writer": offset, "n": n, "second": True})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(s, i)) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = stores[0].check_audit_chain(batch=7)
    assert (report.events, report.first_broken) == (90, None), report


def test_an_upgraded_store_starts_its_chain_after_the_events_it_held(open_store: Opener) -> None:
    store = open_store()
    _events(store, 3)
    with store.engine.begin() as conn:  # the trail as schema 16 kept it
        conn.execute(sa.text("ALTER TABLE audit DROP COLUMN chain_mac"))
        conn.execute(sa.delete(key_fingerprints).where(key_fingerprints.c.name == CHAIN_START))
        conn.execute(sa.text("UPDATE schema_version SET version = 16"))
    store.close()
    upgraded = open_store()
    upgraded.append_audit({"n": 4})
    upgraded.append_audit({"n": 5})
    report = upgraded.check_audit_chain()
    assert (report.events, report.start, report.first_broken, report.last) == (5, 4, None, 5), report
    _execute(upgraded, sa.update(audit).where(audit.c.seq == 2).values(chain_mac="0" * 64))
    assert upgraded.check_audit_chain().first_broken == 2  # a MAC where none was made
