"""Keeping the outbox items a forwarder sends leased for as long as it sends them.

A claim (RecordStore.claim_outbox) hides an item from other forwarders (another ``serve`` on the
same database) for a lease, 60 s, short so that a forwarder that dies leaves its items to the
others soon. A C-STORE may take longer than that (the SCU waits up to 120 s for a PACS's
response, and a batch holds several objects): had the lease run out, another forwarder would
claim the item and send it too, also after the PACS acknowledged it. So while a batch is being
sent, :class:`LeaseKeeper` renews its items' leases every ``interval`` seconds (a third of the
lease by default), and the forwarder sends only items whose claim still holds
(RecordStore.renew_outbox_claims), reporting a failure only under the claim it holds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Self

from adapter.model.dicom import OutboxItem
from adapter.store.port import RecordStore

log = logging.getLogger(__name__)


class LeaseKeeper:
    """A context manager: renews the leases of ``items`` every ``interval`` seconds in a thread
    while the block runs; :meth:`release` ends an item's renewal and gives its lease end (the
    token of the claim held, for reporting the item's attempt)."""

    def __init__(self, store: RecordStore, items: Sequence[OutboxItem], *, now: Callable[[], datetime],
                 interval: float) -> None:
        self._store = store
        self._now = now
        self._interval = interval
        self._items = {item.id: item for item in items}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def release(self, item: OutboxItem) -> datetime:
        """Stop renewing ``item`` (it is settled now); its current lease end, under which the
        caller reports it (waits for a renewal in progress, so the two never cross)."""
        with self._lock:
            held = self._items.pop(item.id, item)
        return held.next_attempt_at

    def holds(self, item: OutboxItem) -> bool:
        """Whether ``item``'s claim is still held as far as the last renewal knows (not lost to
        another forwarder, not released)."""
        with self._lock:
            return item.id in self._items

    def start_send(self, item: OutboxItem, now: datetime) -> bool:
        """Record that ``item``'s C-STORE-RQ goes now (RecordStore.start_outbox_send), under the
        claim held (False when it is lost, or the item is no longer pending: a mark
        entered-in-error cancelled it). Under the lock, so a renewal cannot move the lease end
        between reading it and the conditional update."""
        with self._lock:
            held = self._items.get(item.id)
            return held is not None and self._store.start_outbox_send(item.id, claimed_until=held.next_attempt_at,
                                                                       now=now)

    def renew(self) -> None:
        """Renew every item still held once; an item lost (claimed by another forwarder) is
        logged and no longer renewed (its send is in flight and cannot be called back). The
        lock is held throughout: a lease end read meanwhile is the one the database holds."""
        with self._lock:
            held = list(self._items.values())
            renewed = {item.id: item for item in self._store.renew_outbox_claims(held, self._now())}
            for item_id in [i for i in self._items if i not in renewed]:
                log.warning("the lease of outbox item %d was lost while it was being sent", item_id)
                del self._items[item_id]
            self._items.update(renewed)

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                self.renew()
            except Exception:  # the next round tries again; the lease lasts three rounds
                log.warning("renewing outbox leases failed", exc_info=True)

    def __enter__(self) -> Self:
        if self._items:
            self._thread = threading.Thread(target=self._run, name="outbox-lease", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()
