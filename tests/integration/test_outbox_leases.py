"""Two forwarders on one outbox (``serve`` twice on one data folder or database): an object is
sent once, also when a PACS answers more slowly than the lease a claim takes (60 s, while the
SCU waits up to 120 s for a C-STORE response). The forwarders' clock is the test's, so the
lease runs out when the test says; the senders are fakes that block on events."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from adapter.services.forwarding import Forwarder, ForwardOptions, SendOutcome, SendResult
from adapter.services.registry import Services, build_services
from adapter.store.dates import now_instant
from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, metadata, post_photo
from tests.support.postgres import data_folder_or_postgres

PACS = "PACS@127.0.0.1:104"
LEASE = timedelta(seconds=60)  # the store's (adapter.store.sql.OUTBOX_LEASE)


class Clock:
    """The forwarders' clock: it starts a second after the real time at its first use, so every
    item posted before is due. It started when it was made, before the adapter started and the
    photos were posted: on a busy machine (CI) that took over a second, no item was due yet, and
    the first forwarder claimed nothing (seen failing once in CI: the slow PACS never reached)."""

    def __init__(self) -> None:
        self._now: datetime | None = None
        self._lock = threading.Lock()

    def _started(self) -> datetime:
        if self._now is None:
            self._now = now_instant() + timedelta(seconds=1)  # the items are due
        return self._now

    def __call__(self) -> datetime:
        with self._lock:
            return self._started()

    def advance(self, delta: timedelta) -> None:
        with self._lock:
            self._now = self._started() + delta

    def catch_up(self) -> None:
        """Not behind the real time: a photo just posted is due (its item is due at the real time it
        was posted, and on a busy machine posting takes longer than the clock has been advanced)."""
        with self._lock:
            self._now = max(self._started(), now_instant())


class Sender:
    """Acknowledges everything, each object right after it went (as StoreSCU tells
    ``acknowledged``); the first object's response waits for ``go`` when ``blocking`` (a PACS
    slower than the lease)."""

    def __init__(self, *, blocking: bool = False) -> None:
        self.sent: list[str] = []
        self.in_flight = threading.Event()
        self.go = threading.Event()
        self._blocking = blocking

    def send_batch(self, destination: str, datasets: Iterable[Dataset | Path], *,
                   withhold: Callable[[int], str | None] | None = None,
                   acknowledged: Callable[[int, SendResult], None] | None = None) -> list[SendResult]:
        results = []
        for i, ds in enumerate(datasets):  # as StoreSCU: asked right before each send
            uid = str(ds.SOPInstanceUID) if isinstance(ds, Dataset) else ""
            reason = withhold(i) if withhold is not None else None
            if reason is not None:
                results.append(SendResult(uid, SendOutcome.PERMANENT, None, reason))
                continue
            self.sent.append(uid)
            if self._blocking and not self.in_flight.is_set():
                self.in_flight.set()
                assert self.go.wait(20), "the test never let the slow PACS answer"
            result = SendResult(uid, SendOutcome.ACKNOWLEDGED, 0)
            if acknowledged is not None:
                acknowledged(i, result)
            results.append(result)
        return results

    def release(self, destination: str | None = None) -> None:
        pass


def forwarder(services: Services, sender: Sender, clock: Clock, **options: Any) -> Forwarder:
    return Forwarder(store=services.store, blobs=services.blobs, tables=services.tables,
                     dicom_tables=services.dicom_ingest.dicom_tables, sender=sender, auditor=services.auditor,
                     reader=services.reader, options=ForwardOptions(**options), now=clock)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    yield from data_folder_or_postgres(request.param, "outbox")


@contextmanager
def two_processes(tmp_path: Path, database_url: str | None, photos: int) -> Iterator[tuple[Services, Services]]:
    """The services of two ``serve`` processes on one data folder and database, ``photos``
    photos pending."""
    with adapter_client(tmp_path, database_url=database_url, forward_to=PACS) as (client, services):
        for n in range(photos):
            meta = metadata(patient={"system": PATIENT["system"], "value": f"MRN-{n:04d}"})
            r = post_photo(client, ROOT / "samples" / "wound.jpg", meta)
            assert r.status_code == 201, r.text
        other = build_services(services.settings)
        try:
            yield services, other
        finally:
            other.close()


def test_an_object_is_sent_once_by_two_forwarders_when_the_pacs_is_slower_than_the_lease(
        tmp_path: Path, database_url: str | None) -> None:
    clock = Clock()
    with two_processes(tmp_path, database_url, photos=8) as (one, two):
        slow, fast = Sender(blocking=True), Sender()
        first = forwarder(one, slow, clock, claim_limit=8, batch_size=4, lease_renewal=0.01)
        second = forwarder(two, fast, clock)
        errors: list[BaseException] = []

        def run_first() -> None:
            try:
                first.run_once()
            except BaseException as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)

        thread = threading.Thread(target=run_first)
        thread.start()
        try:
            assert slow.in_flight.wait(20)  # the first batch of the first forwarder's claim is at the PACS
            in_flight = set(slow.sent)
            clock.advance(LEASE + timedelta(seconds=1))  # its C-STORE outlasts the lease
            # the first forwarder keeps what it is sending leased (if it does: else go on at once)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(
                    i.next_attempt_at > clock() for i in two.store.list_outbox()
                    if i.sop_instance_uid in in_flight):
                time.sleep(0.01)
            second.run_once()  # the other process's forwarder claims what is due
        finally:
            slow.go.set()
            thread.join(30)
        assert not errors
        sends = slow.sent + fast.sent
        assert len(sends) == len(set(sends)) == 8, (len(slow.sent), len(fast.sent))
        assert [i.status for i in two.store.list_outbox()] == ["sent"] * 8
        assert first.run_once() == second.run_once() == 0

