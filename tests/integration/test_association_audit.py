"""The audit of rejected associations (adapter.services.association_audit) over a real SQLite
store: the first rejection of a caller is written at once, its repeats in the window are one
Security Alert with their count, a flood of ever new callers is bounded, and nothing is lost when
the SCP stops (flush). The clock is the test's, so the windows end when the test says."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapter.config import StoreOptions
from adapter.mapping.audit_dicom import association_rejection
from adapter.services.association_audit import RejectedAssociations, Rejection
from adapter.services.audit import Auditor
from adapter.store import SqlRecordStore, open_store
from tests.conftest import record_emitted
from tests.support.audit import dicom_events

pytestmark = pytest.mark.integration

SECURITY_ALERT = "110113"
START = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)


class Clock:
    """The test's clock: monotonic seconds and the wall time that goes with them."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def monotonic(self) -> float:
        return self.seconds

    def now(self) -> datetime:
        return START + timedelta(seconds=self.seconds)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlRecordStore]:
    records, _ = open_store(StoreOptions(database_url=f"sqlite:///{tmp_path / 'adapter.db'}", data_dir=tmp_path))
    yield records
    records.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def rejections(store: SqlRecordStore, clock: Clock, **kwargs: int) -> RejectedAssociations:
    return RejectedAssociations(Auditor(store, clock.now), clock.now, clock=clock.monotonic, **kwargs)


def rejection(calling: str = "INTRUDER", address: str = "127.0.0.1", reason: int = 3) -> Rejection:
    why = f"association rejected (A-ASSOCIATE-RJ {association_rejection(1, 1, reason)})"
    return Rejection(calling_ae_title=calling, called_ae_title="ADAPTER", peer_address=address, reason=why)


def alerts(store: SqlRecordStore) -> list[dict]:
    """The Security Alerts stored, oldest first (each goes to the session-wide FHIR validation)."""
    events = dicom_events(store.list_audit(1000)[::-1], SECURITY_ALERT)
    record_emitted(events)
    return events


def occurrences(event: dict) -> int:
    return int(event["entity"][0]["detail"][1]["valueString"])


def test_the_first_rejection_is_audited_at_once_and_its_repeats_once_the_window_ends(
        store: SqlRecordStore, clock: Clock) -> None:
    audit = rejections(store, clock)
    audit.record(rejection())
    [first] = alerts(store)
    assert occurrences(first) == 1 and first["agent"][0]["altId"] == "INTRUDER"
    assert "calling-AE-title-not-recognized" in first["outcomeDesc"] and "called AE title ADAPTER" in first["outcomeDesc"]
    for _ in range(500):  # a peer retrying in a loop: nothing more is written in the window
        clock.seconds += 0.1
        audit.record(rejection())
    assert len(alerts(store)) == 1
    clock.seconds += 60.0
    audit.record(rejection("OTHER"))  # any later rejection writes the ended window's count
    first_again, repeats, other = alerts(store)
    assert first_again == first
    assert occurrences(repeats) == 500 and repeats["outcomeDesc"].endswith("(500 associations)")
    assert repeats["period"] == {"start": "2026-01-05T08:00:00.100Z", "end": "2026-01-05T08:00:50.000Z"}
    assert repeats["agent"][0]["altId"] == "INTRUDER" and repeats["agent"][0]["network"]["address"] == "127.0.0.1"
    assert occurrences(other) == 1 and other["agent"][0]["altId"] == "OTHER"
    audit.record(rejection())  # a new window for INTRUDER: written at once again
    assert occurrences(alerts(store)[-1]) == 1


def test_an_ended_window_is_written_by_the_periodic_flush_without_another_rejection(
        store: SqlRecordStore, clock: Clock) -> None:
    """Found by the diff review: a flood that stopped was written only at the next rejection of
    any caller (perhaps days later) or when the SCP stopped. The SCP calls flush_ended every
    window: an ended window is written then, an open one is not."""
    audit = rejections(store, clock)
    for _ in range(3):
        audit.record(rejection())
    audit.flush_ended()
    assert len(alerts(store)) == 1  # the window is still open: its repeats wait
    clock.seconds += 61.0
    audit.flush_ended()
    first, repeats = alerts(store)
    assert occurrences(first) == 1
    assert occurrences(repeats) == 2
    audit.flush_ended()
    assert len(alerts(store)) == 2  # written once


def test_a_caller_is_its_ae_title_its_address_and_the_reason(store: SqlRecordStore, clock: Clock) -> None:
    audit = rejections(store, clock)
    for r in (rejection(), rejection(address="127.0.0.2"), rejection(calling="B"), rejection(reason=7),
              rejection()):
        audit.record(r)
    assert [occurrences(e) for e in alerts(store)] == [1, 1, 1, 1]
    audit.flush()
    assert [occurrences(e) for e in alerts(store)] == [1, 1, 1, 1, 1]  # the one repeat, at the stop
    audit.flush()
    assert len(alerts(store)) == 5  # nothing twice


def test_a_flood_of_new_callers_is_counted_in_one_window_of_several_peers(store: SqlRecordStore,
                                                                         clock: Clock) -> None:
    audit = rejections(store, clock, max_callers=4)
    for i in range(1000):
        audit.record(rejection(calling=f"AE{i}"))
    events = alerts(store)
    # 4 callers, then the first of the window of several peers, each written at once
    assert [e["agent"][0]["altId"] for e in events] == ["AE0", "AE1", "AE2", "AE3", "AE4"]
    audit.flush()
    several = alerts(store)[-1]
    assert occurrences(several) == 995
    assert "altId" not in several["agent"][0] and "what" not in several["entity"][0]
    assert several["agent"][0]["who"] == {"display": "several peers"}
    assert "called AE title" not in several["outcomeDesc"]


def test_concurrent_rejections_are_all_counted(store: SqlRecordStore, clock: Clock) -> None:
    audit = rejections(store, clock)
    threads = [threading.Thread(target=lambda: [audit.record(rejection()) for _ in range(50)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit.flush()
    assert [occurrences(e) for e in alerts(store)] == [1, 399]


def test_an_audit_store_that_fails_does_not_stop_the_rejections(store: SqlRecordStore, clock: Clock,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    audit = rejections(store, clock)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TRIGGER no_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'down'); END")
    audit.record(rejection())  # does not raise
    assert "could not audit 1 association(s) rejected from 127.0.0.1" in caplog.text
    assert "INTRUDER" not in caplog.text
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER no_audit")
    audit.record(rejection("NEXT"))
    assert [e["agent"][0]["altId"] for e in alerts(store)] == ["NEXT"]
