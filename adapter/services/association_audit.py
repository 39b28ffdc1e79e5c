"""The audit of associations the C-STORE SCP refuses (A-ASSOCIATE-RJ, PS3.8 9.3.4, or accepted
with every presentation context rejected, adapter.dicom.handlers.handle_accepted): each is a
DICOM Security Alert (PS3.15 A.5.3.11, adapter.mapping.audit_dicom), with repeats coalesced.

A peer that is misconfigured (a modality given the wrong AE title) or hostile retries at once
and for ever: dcmtk's storescu in a loop rejects in about a millisecond, so one AuditEvent and
one database commit per rejection would let any host that reaches the port fill the audit trail
and hold the store's writer, the same store every C-STORE and HTTP write commits to. The trail
must still show every rejection, when it began and when it stopped, so the repeats are counted
rather than dropped:

* the first rejection of a **caller** (calling AE title, peer IP address without its port, and
  the reason: the A-ASSOCIATE-RJ's result, source and reason, or the presentation contexts'
  results) is audited at once, naming that one association;
* the rejections of the same caller in the ``window`` (60 s) after it are counted, not written;
  when the window has ended they become ONE Security Alert with their count and their first and
  last times (AuditEvent.period), written at the next rejection of any caller, or when the SCP
  stops (:meth:`RejectedAssociations.flush`); the caller's next rejection opens a new window.
  A flood from one caller costs at most two AuditEvents a minute, whatever its rate; a single
  rejection is in the trail at once; nothing is lost when the SCP stops (a crash loses at most
  the last window's count, as it would lose a log line);
* at most ``max_callers`` (256) windows are open at once: a flood of ever new callers (AE titles
  and addresses are the peer's to choose) is counted per reason in one window for "several
  peers", whose first rejection is written at once as any other's.

An audit that cannot be written is logged (no AE title: it is the peer's text) and dropped: the
rejection stands whatever the audit store does, and the SCP goes on serving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from adapter.metrics import DECISIONS
from adapter.services.audit import Auditor

log = logging.getLogger("adapter.audit")

#: The window in which a caller's repeated rejections are counted into one Security Alert.
WINDOW_SECONDS = 60.0
#: Callers with a window open at once; more are counted together (module docstring).
MAX_CALLERS = 256
_SEVERAL = ""  # the caller of the window of several peers


@dataclass(frozen=True)
class Rejection:
    """One association refused: the request's calling and called AE titles, the peer's address,
    and why, in the standard's words (an A-ASSOCIATE-RJ's fields,
    adapter.mapping.audit_dicom.association_rejection, or every presentation context rejected)."""

    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    reason: str

    @property
    def description(self) -> str:
        """AuditEvent.outcomeDesc: the reason and the called AE title the request named (what a
        misconfigured peer most often has wrong)."""
        return f"{self.reason}; called AE title {self.called_ae_title or '(none)'}"


@dataclass
class _Window:
    rejection: Rejection   # the first of the window (of several peers: its address and AE title are not written)
    opened: float          # monotonic
    several: bool
    count: int = 0         # repeats since the first, not yet written
    first: datetime | None = None
    last: datetime | None = None


class RejectedAssociations:
    """The Security Alerts of rejected associations, repeats coalesced (module docstring).
    Thread-safe: each association's thread calls :meth:`record`."""

    def __init__(self, auditor: Auditor, now: Callable[[], datetime], *, window: float = WINDOW_SECONDS,
                 max_callers: int = MAX_CALLERS, clock: Callable[[], float] = time.monotonic) -> None:
        self._auditor = auditor
        self._now = now
        self._window = window
        self._max_callers = max_callers
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, str, str], _Window] = {}

    def record(self, rejection: Rejection) -> bool:
        """Audit ``rejection`` (at once, or counted into its caller's window), and write the
        counts of the windows that have ended. Whether it opened a window (it is written at
        once): the caller logs only those, so a flood is coalesced in the log as in the trail.
        Never raises."""
        DECISIONS.labels("associate", "none", "refused").inc()
        now, tick = self._now(), self._clock()
        write: list[tuple[Rejection, bool, int, datetime, datetime]] = []
        with self._lock:
            write.extend(self._take_ended(tick))
            key = (rejection.calling_ae_title, rejection.peer_address, rejection.reason)
            several = key not in self._windows and len(self._windows) >= self._max_callers
            if several:
                key = (_SEVERAL, _SEVERAL, rejection.reason)
            window = self._windows.get(key)
            opened = window is None
            if window is None:
                self._windows[key] = _Window(rejection, tick, several)
                write.append((rejection, False, 1, now, now))
            else:
                window.count += 1
                window.first = window.first or now
                window.last = now
        self._write(write)
        return opened

    def flush(self) -> None:
        """Write the counts of every window, ended or not (the SCP stops). Never raises."""
        with self._lock:
            write = self._take_ended(None)
        self._write(write)

    def _take_ended(self, tick: float | None) -> list[tuple[Rejection, bool, int, datetime, datetime]]:
        """Close the windows ended at ``tick`` (None: all of them); what to write of each."""
        ended = [key for key, w in self._windows.items() if tick is None or tick - w.opened >= self._window]
        out = []
        for key in ended:
            w = self._windows.pop(key)
            if w.count and w.first is not None and w.last is not None:
                out.append((w.rejection, w.several, w.count, w.first, w.last))
        return out

    def _write(self, alerts: list[tuple[Rejection, bool, int, datetime, datetime]]) -> None:
        for rejection, several, count, start, end in alerts:
            try:
                self._auditor.record_security_alert(
                    start=start, end=end, count=count,
                    description=rejection.reason if several else rejection.description,
                    peer_address=None if several else rejection.peer_address,
                    calling_ae_title=None if several else rejection.calling_ae_title)
            except Exception as exc:  # noqa: BLE001 - the rejection stands whatever the audit store does
                log.error("could not audit %d association(s) rejected from %s (%s)", count,
                          "several peers" if several else rejection.peer_address, type(exc).__name__)


__all__ = ["MAX_CALLERS", "WINDOW_SECONDS", "RejectedAssociations", "Rejection"]
