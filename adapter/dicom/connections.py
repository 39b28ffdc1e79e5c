"""Which TCP connections the SCP takes before any A-ASSOCIATE-RQ, and how its listening thread
lives through a process out of file descriptors (security review 4).

pynetdicom gives every connection two threads and bounds associations only at negotiation; a
peer that connects and sends nothing holds them until the ARTIM timer (PS3.8 9.1.5: the ACSE
timeout, ADAPTER_DICOM_ACSE_TIMEOUT) closes it. So:

* **At most** ``CONNECTIONS_PER_ASSOCIATION`` times the AE's maximum associations are open at
  once; one more is closed on arrival.
* **Per address**: connections from one IP address that have not associated yet are at most
  ``max_pending_per_address`` (ADAPTER_DICOM_MAX_PENDING_PER_ADDRESS); one more from it is
  closed on arrival. 64 silent connections from one address filled the SCP and turned the
  allowed PACS away (A-ABORT at once), reconnecting every ARTIM period kept it out; now such an
  address holds a few, and the others' connections find room. (Many addresses together are
  still bounded by the total only: bind the allowed AE titles to their hosts and keep the port
  off networks the PACS is not on.)
* **Out of file descriptors** (EMFILE, ENFILE: slow HTTP clients took them): accepting fails
  in the listening thread; socketserver ignores the error and, the connection still waiting,
  would try again at once, spinning. :class:`ThreadedServer` logs it (once a minute), waits
  :data:`ACCEPT_BACKOFF` and tries again: the connection stays in the listen queue and is served
  when descriptors are free. What a connection's thread fails to open is handled where it is
  opened (a wake-up pipe: adapter.dicom.scp; a spool file: adapter.dicom.spool).
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from typing import Any

from pynetdicom.transport import ThreadedAssociationServer

log = logging.getLogger("adapter.dicom")

#: Connections (associations, and peers yet to ask for one) per association the AE accepts.
CONNECTIONS_PER_ASSOCIATION = 2
#: Seconds the listening thread waits after accepting failed for want of file descriptors.
ACCEPT_BACKOFF = 0.25
#: The errors of accept(2) that say the process or system is out of a resource, not the peer.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_LOG_EVERY = 60.0


class _OncePerMinute:
    """Whether a repeated warning is due (a flood logs once a minute, not once a connection)."""

    def __init__(self) -> None:
        self._last = -3600.0
        self._lock = threading.Lock()

    def due(self) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._last < _LOG_EVERY:
                return False
            self._last = now
            return True


_full = _OncePerMinute()
_pending = _OncePerMinute()
_descriptors = _OncePerMinute()
#: handle() of one server runs in a thread per connection: counting and starting are one step
_admission = threading.Lock()


def _address(assoc: Any) -> str | None:
    return getattr(getattr(assoc, "requestor", None), "address", None)


def _associated(assoc: Any) -> bool:
    return any(getattr(assoc, flag, False) for flag in ("is_established", "is_released", "is_aborted",
                                                         "is_rejected"))


def refusal(server: Any, address: str) -> str | None:
    """Why a connection from ``address`` is closed on arrival, or None to take it (module
    docstring). Called with :data:`admission` held."""
    ae = server.ae
    open_now = server.active_associations
    if len(open_now) >= CONNECTIONS_PER_ASSOCIATION * max(1, ae.maximum_associations):
        if _full.due():
            log.warning("DICOM connections closed on arrival: %d connections are open already", len(open_now))
        return "full"
    limit = getattr(ae, "max_pending_per_address", None)
    if limit is not None:
        pending = sum(1 for assoc in open_now if _address(assoc) == address and not _associated(assoc))
        if pending >= limit:
            if _pending.due():
                log.warning("DICOM connections from %s closed on arrival: %d of its connections have not "
                            "associated yet (ADAPTER_DICOM_MAX_PENDING_PER_ADDRESS)", address, pending)
            return "pending"
    return None


def admission() -> threading.Lock:
    """The lock held while a connection is admitted and its association started."""
    return _admission


def out_of_descriptors(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _OUT_OF_RESOURCES


def warn_out_of_descriptors(what: str) -> None:
    """Log (once a minute) that ``what`` failed for want of file descriptors."""
    if _descriptors.due():
        log.warning("the process is out of file descriptors (%s failed): the DICOM SCP waits and tries again; "
                    "raise the open-file limit (LimitNOFILE=) or lower ADAPTER_HTTP_MAX_CONNECTIONS", what)


class ThreadedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, living through a process out of file descriptors (module
    docstring), and logging what fails in a connection's thread in the adapter's log."""

    def get_request(self) -> tuple[Any, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if out_of_descriptors(exc):
                warn_out_of_descriptors("accepting a connection")
                time.sleep(ACCEPT_BACKOFF)  # the connection waits in the listen queue meanwhile
            raise  # socketserver drops the attempt and selects again

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver printed the traceback to stderr, outside the log's format."""
        import sys

        exc = sys.exc_info()[1]
        if exc is not None and out_of_descriptors(exc):
            warn_out_of_descriptors("serving a connection")
            return
        log.error("a DICOM connection could not be served (%s)", type(exc).__name__ if exc else "unknown",
                  exc_info=exc is not None and not isinstance(exc, OSError))


__all__ = ["ACCEPT_BACKOFF", "CONNECTIONS_PER_ASSOCIATION", "ThreadedServer", "admission", "out_of_descriptors",
           "refusal", "warn_out_of_descriptors"]
