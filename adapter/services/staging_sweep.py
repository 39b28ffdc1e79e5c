"""The staging folder swept on a timer, in the serving process: a crash (``kill -9``, a power
loss) mid-upload leaves the photo as received in ``staging/``, EXIF, GPS and serial numbers not
yet removed. The sweep at start keeps what is fresh (an adapter restarted at once finds the
crash's leftovers young), and the one an upload triggers waits for an upload: on a quiet
instance they stayed indefinitely (operations review 7). This one removes them once they are
stale (adapter.store.blobs.STALE_STAGING_SECONDS), uploads or none. It runs in the process that
serves (not in HTTP workers: they share the folder, one sweeper is enough)."""

from __future__ import annotations

import logging
import threading

from adapter.store.blobs import STAGING_SWEEP_SECONDS
from adapter.store.port import BlobStore

log = logging.getLogger(__name__)


class StagingSweep:
    """Every ``interval`` seconds, ``blobs.sweep_staging()`` in a daemon thread, until :meth:`stop`."""

    def __init__(self, blobs: BlobStore, *, interval: float = STAGING_SWEEP_SECONDS) -> None:
        self._blobs = blobs
        self._interval = interval
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """The timer's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="staging-sweep", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """End the timer; a sweep under way gets ``timeout`` seconds (a hung disk does not hold
        the stop: the thread is a daemon)."""
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._done.wait(self._interval):
            try:
                self._blobs.sweep_staging()
            except OSError as exc:  # the next round tries again; an upload needing the folder says more
                log.warning("could not sweep the staging folder (%s)", type(exc).__name__)
