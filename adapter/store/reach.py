"""Waiting for the database at start.

A PostgreSQL server that does not answer yet when ``serve`` starts (the host booting, the database
container started beside the adapter's, a fail-over under way) is a moment to wait out, not a
fault in the settings: ``serve`` tries again, with a growing pause, for up to
``ADAPTER_DATABASE_START_WAIT`` seconds, saying so in the log each time, before it gives up (exit 2,
as every refused start). What only the settings can cure is not waited for: a server that answered
and refused (a database or role that does not exist, a password refused, no pg_hba.conf entry).

A failure is one to wait out when connecting failed (no statement ran) and the server said nothing
(connection refused, timed out, a host name not resolved yet) or said it is starting, stopping or
recovering, or has no connection left. Anything else, a server's refusal in words not listed here
(its messages may be translated) included, fails the start at once: the safe side.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from adapter.errors import StorageError

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: What a server says (after FATAL:) when it will answer soon: PostgreSQL's messages for SQLSTATEs
#: 57P03 cannot_connect_now (starting up, shutting down, recovery) and 53300 too_many_connections.
_PASSING = ("the database system is starting up", "the database system is shutting down",
            "the database system is in recovery mode", "the database system is not yet accepting connections",
            "the database system is not accepting connections", "sorry, too many clients already",
            "remaining connection slots are reserved")
#: The pause after the first failed attempt; it doubles up to _MAX_PAUSE.
_FIRST_PAUSE, _MAX_PAUSE = 1.0, 10.0


def unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` (a StorageError the store raised, or its cause) is a database that did not
    answer, or answered that it will soon (module docstring)."""
    current: BaseException | None = exc
    while current is not None and not isinstance(current, DBAPIError):
        current = current.__cause__
    if not isinstance(current, DBAPIError) or current.statement is not None or current.orig is None:
        return False
    if not type(current.orig).__module__.startswith("psycopg"):
        return False  # SQLite's file is there or not: nothing to wait for
    said = " ".join(str(current.orig).split())
    if "FATAL:" not in said:
        return True  # the server said nothing: refused, timed out, not found yet
    return any(passing in said for passing in _PASSING)


def when_reachable(connect: Callable[[], _T], wait: float, *, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> _T:
    """``connect()``, tried again while it fails with a database that does not answer
    (:func:`unreachable`), for up to ``wait`` seconds from the first attempt; its last error
    once the time is up (0: one attempt). Other errors at once."""
    deadline = clock() + max(0.0, wait)
    pause = _FIRST_PAUSE
    while True:
        try:
            return connect()
        except StorageError as exc:
            left = deadline - clock()
            if not unreachable(exc) or left <= 0:
                raise
            pause = min(pause, left)
            _log.warning("the database does not answer (the line before says why): trying again in %.0f s, "
                         "%.0f s left of ADAPTER_DATABASE_START_WAIT", pause, left)
            sleep(pause)
            pause = min(pause * 2, _MAX_PAUSE)
