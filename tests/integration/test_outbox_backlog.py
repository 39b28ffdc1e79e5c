"""A backlog an outage leaves goes over one association once the PACS answers again: the items a
destination left unanswered share its back-off (one retry time for all of them), and once it
acknowledges an object, the items the forwarder put on back-off for it follow over that
association at once. Another forwarder's claim is never taken: the items are claimed again by the
retry time they were given. The forwarders' clock is the test's; the PACS is a fake that is down
(every association fails, as StoreSCU reports a refused connection) or up (acknowledges each
object), counting associations as StoreSCU holds them: from the first batch until release()."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import Dataset

from adapter.services.forwarding import Forwarder, SendOutcome, SendResult
from adapter.services.registry import Services, build_services
from tests.conftest import ROOT
from tests.integration.test_outbox_leases import PACS, Clock, forwarder
from tests.support.app import PATIENT, adapter_client, metadata, post_photo
from tests.support.postgres import data_folder_or_postgres


class Pacs:
    """A PACS that is down or up (module docstring)."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[str] = []
        self.associations = 0
        self._held = False

    def send_batch(self, destination: str, datasets: Iterable[Dataset | Path], *,
                   withhold: Callable[[int], str | None] | None = None,
                   acknowledged: Callable[[int, SendResult], None] | None = None) -> list[SendResult]:
        items = [str(ds.SOPInstanceUID) if isinstance(ds, Dataset) else "" for ds in datasets]
        if not self.up:
            return [SendResult(uid, SendOutcome.RETRY, None,
                               f"association with {destination} failed: ConnectionRefusedError", transmitted=False)
                    for uid in items]
        if not self._held:
            self.associations += 1
            self._held = True
        results = []
        for i, uid in enumerate(items):
            reason = withhold(i) if withhold is not None else None
            if reason is not None:
                results.append(SendResult(uid, SendOutcome.PERMANENT, None, reason, transmitted=False))
                continue
            self.sent.append(uid)
            result = SendResult(uid, SendOutcome.ACKNOWLEDGED, 0, transmitted=True)
            if acknowledged is not None:
                acknowledged(i, result)
            results.append(result)
        return results

    def release(self, destination: str | None = None) -> None:
        self._held = False


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """Each test on the data folder's SQLite and on PostgreSQL (two ``serve`` processes share one)."""
    yield from data_folder_or_postgres(request.param, "outbox_backlog")


@contextmanager
def adapter(tmp_path: Path, database_url: str | None) -> Iterator[tuple[Any, Services]]:
    with adapter_client(tmp_path, database_url=database_url, forward_to=PACS) as (client, services):
        yield client, services


def post(client: Any, n: int) -> str:
    """Post a photo of patient MRN-<n>; its SOP Instance UID."""
    meta = metadata(patient={"system": PATIENT["system"], "value": f"MRN-{n:04d}"})
    r = post_photo(client, ROOT / "samples" / "wound.jpg", meta)
    assert r.status_code == 201, r.text
    return str(r.json()["dicom"]["sopInstanceUid"])


def a_pass(f: Forwarder, pacs: Pacs) -> int:
    """One pass, then the association released as the forwarder's thread releases it after a pass
    that claimed less than its limit (what was due is drained)."""
    claimed = f.run_once()
    if claimed < f.options.claim_limit:
        pacs.release()
    return claimed


def fail_while_down(f: Forwarder, pacs: Pacs, clock: Clock, services: Services, *, rounds: int = 2) -> None:
    """The PACS is down: passes (one item each with ``claim_limit=1``), a little apart (items
    posted and retried at different moments), until every item has failed ``rounds`` times and
    none is due."""
    assert not pacs.up
    for _ in range(200):
        items = services.store.list_outbox(status="pending")
        due = [i for i in items if i.next_attempt_at <= clock()]
        if all(i.attempts >= rounds for i in items) and not due:
            return
        if due:
            a_pass(f, pacs)
            clock.advance(timedelta(milliseconds=700))
        else:
            clock.advance(min(i.next_attempt_at for i in items) - clock())
    raise AssertionError("the items did not fail often enough")


def test_the_backlog_an_outage_left_goes_over_one_association_when_the_pacs_answers_again(
        tmp_path: Path, database_url: str | None) -> None:
    """Found by the DICOM review: after an outage the backlog went one association per item
    (3 photos, 3 associations with one C-STORE each), though the README says a backlog goes over
    one. Each item had its own back-off with jitter, so each fell due at its own time and opened
    its own association. Test seen failing with 5 associations for 5 items."""
    clock = Clock()
    with adapter(tmp_path, database_url) as (client, services):
        uids = [post(client, n) for n in range(5)]
        pacs = Pacs()
        f = forwarder(services, pacs, clock, claim_limit=1, backoff_base=2.0, backoff_cap=300.0, jitter=0.2)
        fail_while_down(f, pacs, clock, services)
        f.options = dataclasses.replace(f.options, claim_limit=100)  # what is due, all of it, from now on
        pacs.up = True
        for _ in range(100):  # the passes as they come, to when every item is sent
            pending = services.store.list_outbox(status="pending")
            if not pending:
                break
            clock.advance(max(min(i.next_attempt_at for i in pending) - clock(), timedelta(0)))
            a_pass(f, pacs)
        assert sorted(pacs.sent) == sorted(uids)  # each once
        assert pacs.associations == 1
        assert [i.status for i in services.store.list_outbox()] == ["sent"] * 5


def test_items_left_unanswered_share_the_destination_s_retry_and_go_together_after_a_restart(
        tmp_path: Path, database_url: str | None) -> None:
    """The back-off of the items a PACS left unanswered is the destination's: one retry time for
    all, stored with each item, so a forwarder started afresh (it knows nothing of what the one
    before put on back-off) claims them together when it falls due and sends them over one
    association. Test seen failing with 5 retry times for 5 items, and 1 item sent."""
    clock = Clock()
    with adapter(tmp_path, database_url) as (client, services):
        uids = [post(client, n) for n in range(5)]
        down = Pacs()
        fail_while_down(forwarder(services, down, clock, claim_limit=1), down, clock, services, rounds=3)
        pending = services.store.list_outbox(status="pending")
        assert len({i.next_attempt_at for i in pending}) == 1, [i.next_attempt_at for i in pending]
        assert len(pending) == 5 and all(i.attempts >= 3 for i in pending)
        pacs = Pacs()
        pacs.up = True
        restarted = forwarder(services, pacs, clock)
        clock.advance(pending[0].next_attempt_at - clock())
        assert a_pass(restarted, pacs) == 5
        assert sorted(pacs.sent) == sorted(uids) and pacs.associations == 1


def test_a_photo_acknowledged_after_an_outage_takes_the_backlog_with_it_before_its_retry_falls_due(
        tmp_path: Path, database_url: str | None) -> None:
    """The PACS is back while the backlog waits minutes for its retry (the back-off grows to 5
    min): the first object it acknowledges, a new photo, takes the items this forwarder put on
    back-off for it along, in the same pass and association, not minutes later one by one."""
    clock = Clock()
    with adapter(tmp_path, database_url) as (client, services):
        backlog = [post(client, n) for n in range(4)]
        pacs = Pacs()
        f = forwarder(services, pacs, clock, backoff_base=60.0, backoff_cap=300.0)
        fail_while_down(f, pacs, clock, services, rounds=2)
        retry = min(i.next_attempt_at for i in services.store.list_outbox(status="pending"))
        assert retry - clock() > timedelta(seconds=60)
        pacs.up = True
        new = post(client, 99)
        clock.catch_up()
        assert a_pass(f, pacs) == 5
        assert pacs.sent[0] == new and sorted(pacs.sent[1:]) == sorted(backlog)
        assert pacs.associations == 1 and services.store.list_outbox(status="pending") == []
        assert clock() < retry


def test_an_item_another_forwarder_claimed_is_not_taken_with_the_backlog(
        tmp_path: Path, database_url: str | None) -> None:
    """The backlog is claimed again by the retry time this forwarder gave each item: an item the
    other process's forwarder has claimed since (leased a minute ahead: it may be sending it now)
    is left to it, not sent a second time, and its claim is not touched."""
    clock = Clock()
    with adapter(tmp_path, database_url) as (client, services):
        backlog = [post(client, n) for n in range(3)]
        pacs = Pacs()
        f = forwarder(services, pacs, clock, backoff_base=60.0, backoff_cap=300.0)
        fail_while_down(f, pacs, clock, services, rounds=1)
        retry = min(i.next_attempt_at for i in services.store.list_outbox(status="pending"))
        assert retry > clock()
        other = build_services(services.settings)
        try:
            # the other forwarder's clock is past the retry: it claims one item, and sends it now
            [taken] = other.store.claim_outbox(retry, 1)
        finally:
            other.close()
        pacs.up = True
        new = post(client, 99)
        clock.catch_up()
        assert a_pass(f, pacs) == 3  # the new photo, and the two items of the backlog still waiting
        rest = [u for u in backlog if u != taken.sop_instance_uid]
        assert taken.sop_instance_uid in backlog
        assert sorted(pacs.sent) == sorted([new, *rest]), "the other forwarder's item was sent here"
        [still] = services.store.list_outbox(status="pending")
        assert (still.id, still.next_attempt_at, still.attempts) == (taken.id, taken.next_attempt_at, taken.attempts)
        assert pacs.associations == 1


def test_a_refusal_the_pacs_answers_keeps_the_item_s_own_back_off(
        tmp_path: Path, database_url: str | None) -> None:
    """Only what the destination left unanswered waits for it: an object it answered with a
    retryable failure (0xA700, out of resources for that object) keeps its own back-off and is not
    sent again with the next acknowledgement."""
    clock = Clock()
    with adapter(tmp_path, database_url) as (client, services):
        refused = post(client, 1)

        class Full(Pacs):
            def send_batch(self, destination: str, datasets: Iterable[Dataset | Path], **kw: Any) -> list[SendResult]:
                items = list(datasets)
                uids = [str(ds.SOPInstanceUID) for ds in items if isinstance(ds, Dataset)]
                if uids == [refused]:
                    self.sent.append(refused)
                    return [SendResult(refused, SendOutcome.RETRY, 0xA700, "C-STORE failed 0xA700", transmitted=True)]
                return super().send_batch(destination, items, **kw)

        pacs = Full()
        pacs.up = True
        f = forwarder(services, pacs, clock, backoff_base=60.0, backoff_cap=300.0)
        assert a_pass(f, pacs) == 1
        [item] = services.store.list_outbox(status="pending")
        assert item.attempts == 1 and item.next_attempt_at > clock() + timedelta(seconds=40)
        new = post(client, 2)
        clock.catch_up()
        assert a_pass(f, pacs) == 1
        assert pacs.sent == [refused, new]
