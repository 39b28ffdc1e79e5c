"""The record store's INSERTs, compiled once per (table, columns) for the dialect.

``Connection.execute(insert(table), rows)`` takes its compiled form from SQLAlchemy's cache, but
on every call it still builds the statement's cache key, looks it up, and runs its parameter
processing row by row. An ingest is a hot path (issues 2 and 3: photos and DICOM objects per
second) with six to eight INSERTs in its transaction, so they are compiled here once (measured in
the SCP over 300 objects: save_ingest 1.42-1.48 ms of wall time per object against 1.63-1.64 ms
with execute; most of the rest is the commit's fsync). The store's other INSERTs (create,
update's history, audit) go the same way, so every row is bound by one mechanism. Each call
converts the rows with the columns' own bind processors (the same ``UtcDateTime``, ``JsonText``
and ``Boolean`` conversions as ``execute``) and hands them to the driver with
``exec_driver_sql``, which keeps SQLAlchemy's transaction, connection pool and error translation
(an ``IntegrityError`` is still one). The SQL is the dialect's own rendering of
``insert(table)``, so SQLite and PostgreSQL get exactly what ``execute`` would send them for
one row.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import StatementError


@dataclass(frozen=True, slots=True)
class _Statement:
    sql: str
    names: tuple[str, ...]  # the row keys, in the order of the parameters
    processors: tuple[Callable[[Any], Any] | None, ...]
    positional: bool  # the driver takes a tuple (SQLite's qmark) rather than a dict (psycopg)


class CompiledInserts:
    """``execute(conn, table, rows)``: INSERT one row (a mapping) or several (a sequence of
    mappings, all with the same keys) into ``table``. Safe to share between threads."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._statements: dict[tuple[str, tuple[str, ...]], _Statement] = {}
        self._lock = threading.Lock()

    def execute(self, conn: Connection, table: Table,
                rows: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        batch = [rows] if isinstance(rows, Mapping) else rows
        if not batch:
            return
        keys = tuple(batch[0])
        statement = self._statement(table, keys)
        names, processors = statement.names, statement.processors
        params: list[Any] = []
        try:
            for row in batch:
                if len(row) != len(names):
                    raise ValueError(f"rows for {table.name} must all have the columns {sorted(keys)}")
                values = tuple(row[name] if proc is None else proc(row[name])
                               for name, proc in zip(names, processors, strict=True))
                params.append(values if statement.positional else dict(zip(names, values, strict=True)))
        except (TypeError, ValueError, KeyError) as exc:
            # as execute() reports a value its bind processing refuses: a StatementError
            raise StatementError(f"a value for {table.name} cannot be bound: {exc}", statement.sql, None,
                                 exc) from exc
        conn.exec_driver_sql(statement.sql, params[0] if len(params) == 1 else params)

    def _statement(self, table: Table, keys: tuple[str, ...]) -> _Statement:
        found = self._statements.get((table.name, keys))
        if found is not None:
            return found
        with self._lock:
            dialect = self._dialect
            compiled = insert(table).compile(dialect=dialect, column_keys=list(keys))
            positional = bool(dialect.positional)
            names = tuple(compiled.positiontup or ()) if positional else tuple(keys)
            unknown = set(names) - set(keys)
            if unknown or len(names) != len(keys):
                raise ValueError(f"cannot compile an INSERT into {table.name} for the columns {sorted(keys)}")
            processors = tuple(table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)
            statement = _Statement(str(compiled), names, processors, positional)
            self._statements[(table.name, keys)] = statement
            return statement
