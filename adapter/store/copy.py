"""A record store copied whole into an empty database (``python -m adapter copy-store``): how a
store moves from SQLite to PostgreSQL (or back, or between PostgreSQL servers) and keeps its data
folder.

Why a copy of the rows and nothing less: the data folder's images are found by the records that
refer to them, and the folder and the database name each other (key_fingerprints ``data-folder``
and the folder's ``store.id``: adapter.services.data_folder). A new database over the old folder
was refused, and an operator who then deleted ``store.id`` as the refusal said had every image
read as unreferenced and deleted by the nightly removal (operations review 1).

What is copied: every table of the schema (adapter.store.schema.metadata), parents first, every
row as stored: primary keys, the audit trail's sequence numbers and chain MACs, the fingerprints
(of the data folder, the pseudonym key, the audit chain's key and start, the derived indexes),
the schema's version history. So the copy is the same store: its data folder (with its
``store.id`` and ``audit.key``) is the copy's, its audit chain verifies under the same key (a MAC
covers a row's number, instant and event, nothing of the database), its derived indexes are
current for the same pseudonym key. JSON documents are copied as their stored text, instants as
instants (microseconds on both databases).

How: one transaction on the target, which must hold none of the adapter's tables (it is never
merged into), under PostgreSQL's schema-creation lock (a ``serve`` starting on it meanwhile waits,
then finds the copy); the source is read in one snapshot (PostgreSQL: REPEATABLE READ; SQLite: one
read transaction), a batch at a time. Before the commit, each table's row count on the target is
compared with the source's, and so is the audit trail's last row (number and MAC); PostgreSQL's
sequences (receipts, outbox) are moved past the copied numbers, so the next insert does not take
one again. Any failure rolls the whole copy back. The source is only read; writes to it after the
snapshot are not in the copy, so every instance is stopped first.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, insert, inspect, select, text, type_coerce
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import Text

from adapter.config import DatabaseTimeouts
from adapter.errors import ConfigurationError, StorageError
from adapter.store.engine import (
    UNLIMITED,
    WRITE,
    create_store_engine,
    describe_failure,
    prepare_database,
    sqlite_path,
)
from adapter.store.schema import SCHEMA_VERSION, EncodedJson, JsonText, audit, metadata, schema_version

#: Rows read and inserted at a time: memory holds one batch.
BATCH = 1000


@dataclass
class CopyReport:
    """What :func:`copy_record_store` copied: rows by table (parents first), and the audit
    trail's last sequence number and its chain MAC (None: no event)."""

    rows: dict[str, int] = field(default_factory=dict)
    last_audit: tuple[int, str | None] | None = None


def copy_record_store(source_url: str, target_url: str, timeouts: DatabaseTimeouts) -> CopyReport:
    """Copy every row of the record store at ``source_url`` (at this adapter's schema version)
    into the database at ``target_url``, which holds none of its tables yet (module docstring).

    Raises:
        ConfigurationError: a URL the adapter does not keep a store at, a source without a store
            or of another schema version, a target that holds the adapter's tables.
        StorageError: a database failed, or the copy's counts differ (nothing is kept).
    """
    report = CopyReport()
    with _engine(source_url, timeouts) as source, _engine(target_url, timeouts) as target:
        try:
            with (target.execution_options(**{WRITE: True, UNLIMITED: True}).begin() as into,
                  _snapshot(source) as origin):
                prepare_database(into, None)  # PostgreSQL: the lock a starting serve takes to create tables
                present = sorted(set(inspect(into).get_table_names()) & set(metadata.tables))
                if present:
                    raise ConfigurationError(f"the target database is not empty: it holds the adapter's table(s) "
                                             f"{', '.join(present)}; copy-store copies into an empty database only")
                _check_source(origin)
                metadata.create_all(into)
                for table in metadata.sorted_tables:
                    report.rows[table.name] = _copy_table(origin, into, table)
                _advance_sequences(into)
                _check_copy(origin, into, report)
        except SQLAlchemyError as exc:
            raise StorageError(f"the copy failed, nothing was kept: {describe_failure(exc)}") from exc
    return report


def check_source(source_url: str, timeouts: DatabaseTimeouts) -> None:
    """ConfigurationError unless ``source_url`` holds a record store at this adapter's schema
    version, read without writing: the copy command asks before it opens the store (which would
    upgrade an older one: a source the operator keeps as the way back would no longer be one for
    the version that wrote it; review of the day's merges)."""
    database_file = sqlite_path(source_url)
    if database_file is not None and not database_file.is_file():
        return  # no SQLite store at all: the store's own opening says so (connecting would create the file)
    try:
        with _engine(source_url, timeouts) as source, _snapshot(source) as origin:
            _check_source(origin)
    except SQLAlchemyError as exc:
        raise StorageError(f"the configured database could not be read: {describe_failure(exc)}") from exc


@contextmanager
def _engine(url: str, timeouts: DatabaseTimeouts) -> Iterator[Engine]:
    engine = create_store_engine(url, pool_size=1, max_overflow=0, timeouts=timeouts)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _snapshot(source: Engine) -> Iterator[Connection]:
    """A read of the source that sees one moment of it throughout."""
    options: dict[str, Any] = {UNLIMITED: True}
    if source.dialect.name == "postgresql":
        options["isolation_level"] = "REPEATABLE READ"
    with source.connect().execution_options(**options) as conn, conn.begin():
        yield conn


def _check_source(conn: Connection) -> None:
    if not inspect(conn).has_table(schema_version.name):
        raise ConfigurationError("the configured database holds no record store of the adapter: nothing to copy")
    version = conn.execute(select(func.max(schema_version.c.version))).scalar()
    if version is not None and version > SCHEMA_VERSION:  # serve of this version refuses it: no upgrade to advise
        raise ConfigurationError(f"the configured database has schema version {version}, newer than this adapter's "
                                 f"{SCHEMA_VERSION}: nothing was changed; a newer version of the adapter upgraded it: "
                                 "copy it with copy-store of that version")
    if version != SCHEMA_VERSION:
        raise ConfigurationError(f"the configured database has schema version {version}, this adapter's is "
                                 f"{SCHEMA_VERSION}: nothing was changed; back it up, start this version of the adapter "
                                 "on it once (it upgrades it), then copy")


def _copy_table(origin: Connection, into: Connection, table: Table) -> int:
    """Every row of ``table``, in primary key order; JSON as its stored text. Returns the count."""
    documents = {c.name for c in table.columns if isinstance(c.type, JsonText)}
    columns = [type_coerce(c, Text).label(c.name) if c.name in documents else c for c in table.columns]
    rows = origin.execute(select(*columns).order_by(*table.primary_key.columns),
                          execution_options={"yield_per": BATCH})
    copied = 0
    for batch in rows.partitions():
        values = [{name: EncodedJson(value) if name in documents and value is not None else value
                   for name, value in row._mapping.items()} for row in batch]
        into.execute(insert(table), values)
        copied += len(values)
    return copied


def _advance_sequences(into: Connection) -> None:
    """PostgreSQL: each serial column's sequence past the largest number copied (an explicit value
    does not advance it, and the next insert took 1 again: a conflict). SQLite numbers a row after
    the largest one there."""
    if into.dialect.name != "postgresql":
        return
    for table in metadata.sorted_tables:
        column = table.autoincrement_column
        if column is None:
            continue
        largest = into.execute(select(func.max(column))).scalar()
        if largest is not None:
            into.execute(text("SELECT setval(pg_get_serial_sequence(:table, :column), :value)"),
                         {"table": table.name, "column": column.name, "value": int(largest)})


def _check_copy(origin: Connection, into: Connection, report: CopyReport) -> None:
    """Each table's rows counted on both sides, in the copy's snapshot and transaction; the audit
    trail's last row (number and MAC) the same."""
    for table in metadata.sorted_tables:
        counted = select(func.count()).select_from(table)
        source, target = origin.execute(counted).scalar_one(), into.execute(counted).scalar_one()
        if not source == target == report.rows[table.name]:
            raise StorageError(f"the copy of {table.name} has {target} row(s), the source {source}: nothing was kept")
    last = select(audit.c.seq, audit.c.chain_mac).order_by(audit.c.seq.desc()).limit(1)
    source_last, target_last = origin.execute(last).first(), into.execute(last).first()
    if (tuple(source_last) if source_last else None) != (tuple(target_last) if target_last else None):
        raise StorageError("the copy's audit trail does not end as the source's: nothing was kept")
    report.last_audit = (int(source_last[0]), source_last[1]) if source_last else None
