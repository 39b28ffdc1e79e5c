"""One worker thread per forwarding destination, so that destinations do not wait for each other.

A PACS that takes the connection and never answers holds its sender for the SCU's ACSE timeout
(30 s), one that never answers a C-STORE for the DIMSE timeout (120 s), at every retry. Sent one
destination after the other, that delayed every other destination's photos as long (PACS review
finding 1). So the forwarder (adapter.services.forwarding) claims the due items only of the
destinations whose worker is idle (RecordStore.claim_outbox ``exclude``), and hands each
destination's items to a worker of its own: a hung destination keeps only its own items waiting
(claimed by its worker, leased, renewed while they are sent: adapter.services.outbox_leases).

:class:`DestinationWorkers` only runs and tracks the threads; what a worker does is the
forwarder's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class DestinationWorkers:
    """At most one running worker thread per destination. ``on_done`` is called (in the worker's
    thread) once a worker has finished and its destination is idle again."""

    def __init__(self, *, on_done: Callable[[], None]) -> None:
        self._on_done = on_done
        self._lock = threading.Lock()
        self._running: dict[str, threading.Thread] = {}

    def busy(self) -> set[str]:
        """The destinations whose worker is running: their items are not to be claimed now."""
        with self._lock:
            return set(self._running)

    def start(self, destination: str, work: Callable[[], None]) -> threading.Thread | None:
        """Run ``work`` for ``destination`` in a thread of its own; None (nothing started) when
        that destination's worker is running already."""
        with self._lock:
            if destination in self._running:
                return None
            thread = threading.Thread(target=self._run, args=(destination, work), daemon=True,
                                      name=f"outbox-forwarder-{len(self._running) + 1}")
            self._running[destination] = thread
        thread.start()
        return thread

    def _run(self, destination: str, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:  # the destination's items stay leased and are claimed again later
            log.exception("forwarding to a destination failed")
        finally:
            with self._lock:
                self._running.pop(destination, None)
            self._on_done()

    def join(self, deadline: float | None = None) -> bool:
        """Wait for every running worker until ``deadline`` (time.monotonic(); None: however long
        they take); whether all ended."""
        while True:
            with self._lock:
                threads = list(self._running.values())
            if not threads:
                return True
            for thread in threads:
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is None:
                continue
            if time.monotonic() >= deadline:
                with self._lock:
                    return not any(t.is_alive() for t in self._running.values())
