"""The audit trail's keyed hash chain (adapter.store.audit_chain), on SQLite and PostgreSQL: a
clean trail verifies; an event edited, one removed with the later ones renumbered, two swapped,
each breaks the chain at the right sequence number; the chain goes on across a restart and
under concurrent writers; a store upgraded from schema 16 starts its chain after the events it
held, which stay uncovered (review audit F2). The start is sealed under the chain's key, so a
database writer without it can neither move it (past the end, with every MAC cleared: the
chain then checked nothing) nor delete it, nor copy another store's (privacy review F1); a
store of schema 20 (or 18, 19) is sealed as it is upgraded, only where its start is consistent."""

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
from adapter.store.audit_start import START_SEAL
from adapter.store.schema import SCHEMA_VERSION, audit, key_fingerprints, schema_version
from tests.support.postgres import postgres_schema

pytestmark = pytest.mark.integration

KEY = chain_key(b"test audit key")
Opener = Callable[..., SqlRecordStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens stores (with the test key, or ``audit_key``) on one fresh database (or the fresh
    database numbered ``database``); closes them after."""
    with ExitStack() as stack:
        urls: dict[int, str] = {}
        opened: list[SqlRecordStore] = []

        def opener(audit_key: bytes | None = KEY, database: int = 0) -> SqlRecordStore:
            if database not in urls:
                urls[database] = (f"sqlite:///{tmp_path / f'adapter{database}.db'}" if request.param == "sqlite"
                                  else stack.enter_context(postgres_schema("audit_chain")))
            store = SqlRecordStore(urls[database], audit_key=audit_key)
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


# -- the chain's start, sealed under the chain's key (privacy review F1) ------------------------


def _set_start(value: int) -> sa.Executable:
    return sa.update(key_fingerprints).where(key_fingerprints.c.name == CHAIN_START).values(fingerprint=str(value))


def _clear_every_mac_and_move_the_start(store: SqlRecordStore, start: int | None = None) -> None:
    """The review's attack: every chain MAC cleared, the start moved (past the last event)."""
    with store.engine.begin() as conn:
        last = int(conn.execute(sa.select(sa.func.max(audit.c.seq))).scalar_one())
        conn.execute(sa.update(audit).values(chain_mac=None))
        conn.execute(_set_start(last + 1 if start is None else start))


def _as_schema(store: SqlRecordStore, version: int, *, chained: bool = True) -> None:
    """The database as schema ``version`` left it: no seal of the start, the versions after
    ``version`` not applied; before 18 (``chained`` False), no chain at all."""
    with store.engine.begin() as conn:
        applied = conn.execute(sa.select(schema_version.c.version)).scalars().all()
        if min(applied) > version:  # made at a later version: as made at this one
            conn.execute(sa.delete(schema_version).where(schema_version.c.version != min(applied)))
            conn.execute(sa.update(schema_version).values(version=version))
        conn.execute(sa.delete(schema_version).where(schema_version.c.version > version))
        names = [START_SEAL] if chained else [START_SEAL, CHAIN_START, "audit-key"]
        conn.execute(sa.delete(key_fingerprints).where(key_fingerprints.c.name.in_(names)))
        if not chained:
            conn.execute(sa.text("ALTER TABLE audit DROP COLUMN chain_mac"))
    store.close()


def _upgraded_from_16(open_store: Opener, *, held: int = 3, after: int = 3, database: int = 0,
                      audit_key: bytes = KEY) -> SqlRecordStore:
    """A store of schema 16 holding ``held`` events, upgraded (with its key) and ``after`` more."""
    store = open_store(audit_key=audit_key, database=database)
    _events(store, held)
    _as_schema(store, 16, chained=False)
    upgraded = open_store(audit_key=audit_key, database=database)
    upgraded.claim_audit_key()
    for n in range(after):
        upgraded.append_audit({"n": held + 1 + n, "after": True})
    return upgraded


def _refused(open_store: Opener, store: SqlRecordStore, *, database: int = 0) -> str:
    """What verify's walk, a start's check and a start's claim of the key say: each refuses."""
    report = store.check_audit_chain()
    assert report.start_problem, report
    assert store.audit_start_refusal(), report
    again = open_store(database=database)
    with pytest.raises(ConfigurationError, match="start"):
        again.claim_audit_key()
    return report.start_problem


def test_every_mac_cleared_and_the_start_moved_past_the_end_is_refused(open_store: Opener) -> None:
    """The review's reproduction: an event edited, every MAC cleared, the start moved past the
    last event. The walk found nothing (every event "stored before the chain") and a start
    chained on from there."""
    store = open_store()
    store.claim_audit_key()
    _events(store, 6)
    _execute(store, sa.update(audit).where(audit.c.seq == 3).values(json={"n": 3, "purpose": "TREAT"}))
    _clear_every_mac_and_move_the_start(store)
    problem = _refused(open_store, store)
    assert "audit-start" in problem and "7" in problem, problem


@pytest.mark.parametrize("moved", [2, 5, 8], ids=["earlier", "later", "past-the-end"])
def test_the_start_of_an_upgraded_store_moved_is_refused(open_store: Opener, moved: int) -> None:
    store = _upgraded_from_16(open_store)
    report = store.check_audit_chain()
    assert (report.start, report.start_problem, report.first_broken, report.last) == (4, None, None, 6), report
    assert store.audit_start_refusal() is None
    _execute(store, _set_start(moved))  # the MACs left as they are
    _refused(open_store, store)
    _clear_every_mac_and_move_the_start(store, moved)  # and with them cleared
    _refused(open_store, store)


@pytest.mark.parametrize("deleted", [[CHAIN_START], [START_SEAL], [CHAIN_START, START_SEAL],
                                     [START_SEAL, "audit-key"]], ids=["start", "seal", "both", "seal-and-key"])
def test_the_start_or_its_seal_deleted_is_refused(open_store: Opener, deleted: list[str]) -> None:
    store = _upgraded_from_16(open_store)
    _execute(store, sa.delete(key_fingerprints).where(key_fingerprints.c.name.in_(deleted)))
    _refused(open_store, store)


def test_a_seal_copied_from_another_store_is_refused(open_store: Opener) -> None:
    store = _upgraded_from_16(open_store)
    # the same start, of a trail under another key, and of another trail under the same key
    others = [_upgraded_from_16(open_store, database=1, audit_key=chain_key(b"another folder's key")),
              _upgraded_from_16(open_store, database=2)]
    for other in others:
        with other.engine.connect() as conn:
            seal = conn.execute(sa.select(key_fingerprints.c.fingerprint)
                                .where(key_fingerprints.c.name == START_SEAL)).scalar_one()
        _execute(store, sa.update(key_fingerprints).where(key_fingerprints.c.name == START_SEAL)
                 .values(fingerprint=seal))
        _refused(open_store, store)


def test_the_last_event_before_the_chain_edited_breaks_the_seal(open_store: Opener) -> None:
    """The seal binds the number and the content of the last event the start exempts: moved,
    removed or rewritten, the seal no longer verifies."""
    store = _upgraded_from_16(open_store)
    _execute(store, sa.update(audit).where(audit.c.seq == 3).values(json={"n": 3, "purpose": "TREAT"}))
    _refused(open_store, store)


def test_a_store_of_schema_20_is_sealed_as_it_is_upgraded(open_store: Opener) -> None:
    """Schema 20 → 21 (SQLite and PostgreSQL): the start recorded before is sealed in the upgrade's
    transaction, with the store's key; made with the chain (start 1) and upgraded from 16 (start 4)."""
    assert SCHEMA_VERSION == 24
    for database, made in enumerate((lambda: open_store(database=0), lambda: _upgraded_from_16(open_store, database=1))):
        store = made()
        store.claim_audit_key()
        _events(store, 3) if database == 0 else store.append_audit({"n": 7})
        _as_schema(store, 20)
        upgraded = open_store(database=database)
        with upgraded.engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() == SCHEMA_VERSION
            assert conn.execute(sa.select(key_fingerprints.c.fingerprint)
                                .where(key_fingerprints.c.name == START_SEAL)).scalar() is not None
        upgraded.claim_audit_key()
        upgraded.append_audit({"n": 8})
        report = upgraded.check_audit_chain()
        assert (report.start, report.start_problem, report.first_broken) == ((1, 4)[database], None, None), report
        assert upgraded.audit_start_refusal() is None


@pytest.mark.parametrize("held", [0, 3], ids=["made-at-20", "upgraded-from-16"])
def test_a_store_of_schema_20_whose_start_was_moved_is_not_sealed(open_store: Opener, held: int) -> None:
    """The attack made before the upgrade: the start then has no chained event to stand on (a
    start above 1 needs one, its MAC made from the start under the key), or was made at 18 or
    later (start 1): the upgrade does not seal it, and every start is refused."""
    store = _upgraded_from_16(open_store, held=held) if held else open_store()
    store.claim_audit_key()
    _events(store, 3)
    _clear_every_mac_and_move_the_start(store)
    _as_schema(store, 20)
    upgraded = open_store()
    problem = _refused(open_store, upgraded)
    assert "not sealed" in problem, problem


def test_a_store_upgraded_without_its_key_is_sealed_as_the_key_is_made(open_store: Opener) -> None:
    """A store of schema 17 or older has no audit.key: upgraded without it, its start is sealed
    when a start makes the key (nothing could be chained before, so the start must be the number
    after the last event, and the store must have been made before the chain)."""
    store = open_store()
    _events(store, 3)
    _as_schema(store, 16, chained=False)
    upgraded = open_store(audit_key=None)
    assert upgraded.audit_start_refusal() is None  # the key is made, and the start sealed, by the claim
    upgraded.claim_audit_key(lambda: KEY)
    upgraded.append_audit({"n": 4})
    report = upgraded.check_audit_chain()
    assert (report.start, report.start_problem, report.first_broken, report.last) == (4, None, None, 4), report
    _clear_every_mac_and_move_the_start(upgraded)
    _refused(open_store, upgraded)


@pytest.mark.parametrize("start", [2, 4], ids=["not-after-the-last", "made-with-the-chain"])
def test_a_start_that_cannot_be_sealed_as_the_key_is_made_is_refused(open_store: Opener, start: int) -> None:
    """Without a key yet, a start other than the number after the last event (events exempt that
    are not, or a gap), or one above 1 on a store made with the chain, is not sealed: the start
    is refused before it makes the key."""
    store = open_store()
    _events(store, 3)
    if start == 2:
        _as_schema(store, 16, chained=False)
        _execute(open_store(audit_key=None), _set_start(start))
    else:
        _execute(store, sa.update(audit).values(chain_mac=None), _set_start(start),
                 sa.delete(key_fingerprints).where(key_fingerprints.c.name.in_([START_SEAL, "audit-key"])))
    keyless = open_store(audit_key=None)
    assert keyless.audit_start_refusal()
    made: list[bytes] = []
    with pytest.raises(ConfigurationError, match="start"):
        keyless.claim_audit_key(lambda: made.append(KEY) or KEY)  # type: ignore[func-returns-value]
    assert made == []  # no key made
