"""adapter.store.reach: which failures of the database ``serve`` waits out at start, and how long."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from adapter.errors import StorageError
from adapter.store.reach import unreachable, when_reachable


def _failed(orig: Exception, statement: str | None = None) -> StorageError:
    """A StorageError as the store raises it (adapter.store.sql._translated_errors)."""
    try:
        try:
            raise OperationalError(statement, None, orig)
        except OperationalError as exc:
            raise StorageError("the record store failed; nothing was saved") from exc
    except StorageError as error:
        return error


REFUSED = psycopg.OperationalError('connection failed: connection to server at "127.0.0.1", port 5999 failed: '
                                   "Connection refused\n\tIs the server running on that host?")


@pytest.mark.parametrize(("orig", "waited"), [
    (REFUSED, True),
    (psycopg.OperationalError("connection failed: timeout expired"), True),
    (psycopg.OperationalError("failed to resolve host 'db': [Errno -2] Name or service not known"), True),
    (psycopg.OperationalError("connection failed: ... failed: FATAL:  the database system is starting up"), True),
    (psycopg.OperationalError("connection failed: ... failed: FATAL:  sorry, too many clients already"), True),
    (psycopg.OperationalError('connection failed: ... failed: FATAL:  database "x" does not exist'), False),
    (psycopg.OperationalError('connection failed: ... failed: FATAL:  password authentication failed for user "a"'),
     False),
    (psycopg.OperationalError("connection failed: ... failed: FATAL:  la base de données n'existe pas"), False),
    (sqlite3.OperationalError("unable to open database file"), False),  # SQLite: nothing to wait for
])
def test_only_a_postgresql_that_did_not_answer_or_will_soon_is_waited_for(orig: Exception, waited: bool) -> None:
    assert unreachable(_failed(orig)) is waited


def test_a_statement_that_failed_is_not_a_database_to_wait_for() -> None:
    assert not unreachable(_failed(REFUSED, statement="SELECT 1"))
    assert not unreachable(StorageError("no cause"))
    programming = StorageError("x")
    programming.__cause__ = ProgrammingError(None, None, REFUSED)
    assert unreachable(programming)  # any DBAPIError of connecting, whatever its class


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_it_tries_again_with_growing_pauses_until_the_database_answers() -> None:
    clock, attempts = _Clock(), []

    def connect() -> str:
        attempts.append(clock.now)
        if len(attempts) < 5:
            raise _failed(REFUSED)
        return "store"

    assert when_reachable(connect, 60, clock=clock, sleep=clock.sleep) == "store"
    assert clock.pauses == [1, 2, 4, 8]


def test_it_gives_up_with_the_last_error_when_the_wait_is_over_and_never_pauses_past_it() -> None:
    clock = _Clock()
    with pytest.raises(StorageError):
        when_reachable(lambda: (_ for _ in ()).throw(_failed(REFUSED)), 20, clock=clock, sleep=clock.sleep)
    assert clock.pauses == [1, 2, 4, 8, 5] and clock.now == 20


@pytest.mark.parametrize("wait", [0, 60])
def test_a_refusal_or_no_wait_fails_at_once(wait: float) -> None:
    clock = _Clock()
    refused = psycopg.OperationalError('connection failed: ... failed: FATAL:  database "x" does not exist')
    with pytest.raises(StorageError):
        when_reachable(lambda: (_ for _ in ()).throw(_failed(refused if wait else REFUSED)), wait, clock=clock,
                       sleep=clock.sleep)
    assert clock.pauses == []
