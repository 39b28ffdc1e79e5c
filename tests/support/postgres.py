"""The PostgreSQL the integration tests use: ``TEST_POSTGRES_URL``, else database ``test`` at
127.0.0.1:5432. In CI an unreachable one fails the test; elsewhere it is skipped."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, inspect, text

from tests.conftest import require_or_skip

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A fresh schema ``<prefix>_<random>``, dropped afterwards; yields a database URL whose
    connections use it (search_path), so a test's tables are its own."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        require_or_skip(False, f"PostgreSQL at {PG_URL} is not reachable: {type(exc).__name__}")
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:  # also after a failure: no schema, and no connection, left behind
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def data_folder_or_postgres(param: str, prefix: str) -> Iterator[str | None]:
    """The database of a test parametrised ``["sqlite", "postgresql"]``: None (the data folder's
    SQLite file), or the URL of a fresh PostgreSQL schema (:func:`postgres_schema`) for the
    duration. A fixture yields from it."""
    if param == "sqlite":
        yield None
        return
    with postgres_schema(prefix) as url:
        yield url


@contextmanager
def named_postgres_schema(prefix: str) -> Iterator[tuple[str, str]]:
    """:func:`postgres_schema` whose sessions carry an application_name of their own: yields
    (URL, name), so a test can watch them in pg_stat_activity (:func:`sessions_waiting_on_a_lock`)."""
    with postgres_schema(prefix) as url:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        yield f"{url}&application_name={name}", name


def sessions_waiting_on_a_lock(engine: Engine, name: str) -> int:
    """How many sessions with application_name ``name`` wait on a lock now."""
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
            "AND wait_event_type = 'Lock'"), {"name": name}).scalar_one())


def table_names(url: str) -> list[str]:
    """The tables the database (schema) at ``url`` holds: [] when nothing was created there."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return inspect(conn).get_table_names()
    finally:
        engine.dispose()
