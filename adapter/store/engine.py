"""Engines for the record store: every difference between SQLite and PostgreSQL lives here.

SQLite gets WAL journaling with ``synchronous=FULL`` (a commit is on disk when it returns),
foreign keys, a 30 s busy timeout and ``BEGIN IMMEDIATE`` for write transactions, so that
concurrent writers queue on the lock instead of failing with "database is locked" when a
reader tries to upgrade. PostgreSQL gets bounded waits (:class:`DatabaseTimeouts`, from the
ADAPTER_DATABASE_*_TIMEOUT settings, each overridable by the URL's own libpq parameters) and an
optional schema on the search path (used by tests to stay apart).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import ConnectionPoolEntry

from adapter.config import DatabaseTimeouts
from adapter.errors import ConfigurationError, InvalidInput

#: Execution option marking a connection whose transactions write (SQLite: ``BEGIN IMMEDIATE``).
WRITE = "adapter_write"
#: Execution option marking a connection whose transactions run without the statement and lock
#: timeouts (PostgreSQL): the schema's upgrade and the re-indexing at start, which may take long
#: and wait for another process doing the same.
UNLIMITED = "adapter_unlimited"

#: libpq's TCP keepalives (an idle pooled connection to a host gone without a reset is found dead
#: in about idle + interval * count seconds) and tcp_user_timeout (ms: data sent and not
#: acknowledged for that long drops the connection, where the kernel would retransmit ~15 min).
_PG_TCP_DEFAULTS = {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10",
                    "keepalives_count": "3", "tcp_user_timeout": "30000"}

BUSY_TIMEOUT_SECONDS = 30
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Any constant: serialises schema creation between processes starting together.
_MIGRATION_LOCK = 0x1A6E5701
_URL_SCHEMES = "the database URL must start with sqlite:/// or postgresql+psycopg:// (ADAPTER_DATABASE_URL)"


def check_database_url(database_url: str, *, schema: str | None = None) -> URL:
    """The URL parsed, when it names a store this adapter keeps (``sqlite:///<file>`` or
    ``postgresql+psycopg://…``, ``schema`` on PostgreSQL only); ConfigurationError otherwise.
    Connects to nothing and creates nothing (``python -m adapter check`` uses it)."""
    try:
        url = make_url(database_url)
        # the driver's name loads its dialect: an unknown scheme (foo://, postgres://) raised
        # NoSuchModuleError, an ArgumentError, out of start-up as a traceback
        backend, driver = url.get_backend_name(), url.get_driver_name()
    except ArgumentError as exc:
        raise ConfigurationError(_URL_SCHEMES) from exc
    if backend == "sqlite" and driver == "pysqlite":
        if schema is not None:
            raise ConfigurationError("a schema can only be chosen on PostgreSQL")
        database = url.database or ""
        if database in ("", ":memory:") or database.startswith("file:") or url.query.get("mode") == "memory":
            raise ConfigurationError("the SQLite store needs a file path (sqlite:///path/to/adapter.db)")
        return url
    if backend == "postgresql" and driver == "psycopg":
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigurationError("a schema name is lower-case letters, digits and underscores")
        if importlib.util.find_spec("psycopg") is None:  # a dependency; an install that left it out
            raise ConfigurationError("the PostgreSQL driver psycopg is not installed in this Python "
                                     "(pip install 'psycopg[binary]>=3.1,<4', or reinstall the adapter)")
        return url
    raise ConfigurationError(_URL_SCHEMES)


def sqlite_file(database_url: str) -> Path | None:
    """The file of the SQLite store at ``database_url``; None for PostgreSQL (its files are the
    server's). Raises ConfigurationError as :func:`check_database_url` does."""
    url = check_database_url(database_url)
    return Path(url.database or "").expanduser() if url.get_backend_name() == "sqlite" else None


def audit_log_uri(database_url: str) -> str:
    """The URI that names the audit trail of the store at ``database_url`` in an AuditEvent (the
    audit log's ParticipantObjectID, DICOM PS3.15 A.5.3.2): its database (a SQLite file as a
    ``file:`` URI; a PostgreSQL database by host, port and name) and its table as the fragment.
    The user, password and query of the URL are left out: an AuditEvent is no place for them.
    Raises ConfigurationError as :func:`check_database_url` does."""
    from urllib.parse import quote

    url = check_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        return f"{Path(url.database or '').expanduser().resolve().as_uri()}#audit"
    host = quote(url.host or "localhost", safe=".-_:[]")
    return f"postgresql://{host}{f':{url.port}' if url.port else ''}/{quote(url.database or '', safe='')}#audit"


def create_store_engine(database_url: str, *, schema: str | None = None, pool_size: int = 5,
                        max_overflow: int = 10, timeouts: DatabaseTimeouts | None = None) -> Engine:
    """An Engine for ``sqlite:///<file>`` or ``postgresql+psycopg://…``.

    ``schema`` (PostgreSQL only) puts the tables in that schema, created if missing.
    ``timeouts`` (PostgreSQL only; :func:`postgresql_connect_args`): default
    ``DatabaseTimeouts(statement=0, lock=0)``, connecting bounded, statements not.
    Raises ConfigurationError for any other URL (:func:`check_database_url`). Its errors name no
    bound value (``hide_parameters``): those are patient identifiers and AuditEvents; a failure
    is logged with its cause as :func:`describe_failure` gives it (adapter.store.sql).
    """
    url = check_database_url(database_url, schema=schema)
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, hide_parameters=True,
                               connect_args={"timeout": BUSY_TIMEOUT_SECONDS})
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        event.listen(engine, "before_cursor_execute", _refuse_nul)
        return engine
    connect_args = postgresql_connect_args(url, timeouts or DatabaseTimeouts(statement=0, lock=0), schema=schema)
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
                           hide_parameters=True, connect_args=connect_args)
    event.listen(engine, "begin", _postgresql_on_begin)
    event.listen(engine, "before_cursor_execute", _refuse_nul)
    return engine


def _seconds_ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


def postgresql_connect_args(url: URL, timeouts: DatabaseTimeouts, *, schema: str | None = None) -> dict[str, Any]:
    """The libpq parameters the adapter gives a PostgreSQL connection beside the URL's: a bounded
    connect (``connect_timeout``, whole seconds, at least 2 as libpq wants), TCP keepalives and
    ``tcp_user_timeout`` (:data:`_PG_TCP_DEFAULTS`), and in ``options`` the server-side
    ``statement_timeout`` and ``lock_timeout`` (0: none) and the schema's search_path. A parameter
    the URL gives itself is left as the URL says (SQLAlchemy lets ``connect_args`` win over the
    URL's query, so a default is only given where the URL has none); so is a setting its
    ``options`` names (``?options=-c statement_timeout=0``)."""
    query = {key: value if isinstance(value, str) else " ".join(value) for key, value in url.query.items()}
    args: dict[str, Any] = {}
    if "connect_timeout" not in query:
        args["connect_timeout"] = max(2, round(timeouts.connect))
    args.update({key: value for key, value in _PG_TCP_DEFAULTS.items() if key not in query})
    given = query.get("options", "")
    options = [given] if given else []
    for name, seconds in (("statement_timeout", timeouts.statement), ("lock_timeout", timeouts.lock)):
        if seconds > 0 and name not in given:
            options.append(f"-c {name}={_seconds_ms(seconds)}")
    if schema is not None:
        options.append(f"-csearch_path={schema}")
    if options != ([given] if given else []):
        args["options"] = " ".join(options)
    return args


def _postgresql_on_begin(conn: Connection) -> None:
    """A transaction of a connection marked :data:`UNLIMITED` runs without the statement and lock
    timeouts (transaction-local: the pooled connection keeps them for the next one)."""
    if conn.get_execution_options().get(UNLIMITED):
        conn.exec_driver_sql("SELECT set_config('statement_timeout', '0', true), set_config('lock_timeout', '0', true)")


#: The names of schema objects PostgreSQL's diagnostics give (psycopg's ``Diagnostic``): never a value.
_PG_DIAGNOSTIC_NAMES = ("schema_name", "table_name", "column_name", "constraint_name")
_CHAIN_MAX = 6


def describe_failure(exc: SQLAlchemyError) -> str:
    """What an operator needs to know of a failure of the database, with nothing of a patient:
    the chain of exception classes, PostgreSQL's SQLSTATE and the names of the schema objects it
    names, SQLite's error code name and, for a failure to connect (no statement was run), the
    driver's message, which names the host, port, database and user, never a record. A
    statement's own message is not given: it can quote a value (``invalid input syntax for type
    …: "<an identifier>"``), and the statement itself holds the parameters' places, not values,
    but is not needed."""
    chain: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < _CHAIN_MAX:
        kind = type(current)
        chain.append(f"{kind.__module__}.{kind.__qualname__}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    parts = [" <- ".join(chain)]
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate:
        parts.append(f"SQLSTATE {sqlstate}")
        diag = getattr(orig, "diag", None)
        parts += [f"{name.removesuffix('_name')} {value}" for name in _PG_DIAGNOSTIC_NAMES
                  if isinstance(value := getattr(diag, name, None), str) and value]
    if isinstance(name := getattr(orig, "sqlite_errorname", None), str):
        parts.append(name)
    if isinstance(exc, DBAPIError) and exc.statement is None and orig is not None:
        # connecting failed (the pool's connect): host, port, database, user, and why
        parts.append(" ".join(str(orig).split())[:300])
    return "; ".join(parts)


def prepare_database(conn: Connection, schema: str | None, *, create: bool = True) -> None:
    """Dialect-specific set-up before the tables are created, inside the schema transaction
    (``create`` False: the schema is not created either)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        if schema is not None and create:
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))


def _refuse_nul(_conn: Connection, _cursor: Any, _statement: str, parameters: Any, _context: Any,
                executemany: bool) -> None:
    """Refuse a text value holding U+0000 on both databases alike: PostgreSQL cannot keep one in
    text (its driver error was a transient StorageError, 503 or 0xA700, which clients retry
    forever) while SQLite kept it, and FHIR strings do not allow it. JSON documents are text
    with the character escaped, so only values that are text themselves are refused."""
    for row in parameters if executemany else (parameters,):
        values = row.values() if isinstance(row, dict) else row
        if any(isinstance(value, str) and "\x00" in value for value in values or ()):
            raise InvalidInput("a text value holds the character U+0000, which neither FHIR strings nor the "
                               "record store allow: nothing was saved")


def _sqlite_on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Take transaction control away from the sqlite3 module; _sqlite_on_begin emits BEGIN.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")
        cursor.execute("PRAGMA journal_mode = WAL")
        mode = cursor.fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise ConfigurationError("the SQLite file system does not support WAL journaling")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = "IMMEDIATE" if conn.get_execution_options().get(WRITE) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")
