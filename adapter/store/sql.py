"""The record store on SQLite or PostgreSQL, through SQLAlchemy Core (one code path for both;
dialect differences live in ``engine.py`` and ``dates.py``)."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Select,
    and_,
    bindparam,
    delete,
    distinct,
    false,
    func,
    inspect,
    or_,
    select,
    true,
    union,
    update,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from adapter.config import DatabaseTimeouts
from adapter.errors import (
    ConfigurationError,
    Conflict,
    InstanceConflict,
    InvalidInput,
    NoStore,
    NotFound,
    StorageError,
    StudyStarted,
)
from adapter.files import folder_write_problem, unreadable_problem
from adapter.model.dicom import DicomInstance, InstanceAttributes, OutboxItem, ReleasedUids
from adapter.model.photo import Identifier
from adapter.model.record import (
    WITHDRAWN,
    BlobReference,
    IndexRow,
    IngestUnit,
    NewResource,
    SearchIndex,
    StoredResource,
    received_sha256_of,
)
from adapter.store.audit_chain import (
    CHAIN_KEY_FINGERPRINT,
    ChainReport,
    audit_key_refusal,
    chain_mac,
    check_chain,
    genesis,
)
from adapter.store.audit_chain import key_fingerprint as audit_key_fingerprint
from adapter.store.audit_start import (
    START_SEAL_VERSION,
    StartFacts,
    read_start_facts,
    seal_start,
    sealing_refusal,
    start_problem,
)
from adapter.store.dates import now_instant, to_utc
from adapter.store.engine import (
    UNLIMITED,
    WRITE,
    check_database_url,
    create_store_engine,
    describe_failure,
    prepare_database,
    sqlite_path,
)
from adapter.store.inserts import CompiledInserts
from adapter.store.locks import lock_in_schema, lock_pair_in_schema
from adapter.store.patient_references import CLAIM_COLUMNS, Claim, claim_of_row, claim_patient_references
from adapter.store.port import NamePrefix, SearchCriteria
from adapter.store.rows import (
    OUTBOX_CANCELLED,
    OUTBOX_FAILED,
    OUTBOX_HELD,
    OUTBOX_PENDING,
    OUTBOX_SENT,
    attribute_columns,
    date_range_rows,
    dicom_instance_from,
    dicom_instance_row,
    history_row,
    index_row_from,
    last_instant,
    match_keys,
    outbox_item_from,
    outbox_row,
    released_uids_row,
    resource_row,
    stored_from_row,
    token_rows,
    with_meta,
)
from adapter.store.schema import (
    AUDIT_CHAIN_VERSION,
    SCHEMA_VERSION,
    SEARCH_INDEX,
    EncodedJson,
    audit,
    create_schema,
    date_ranges,
    dicom_instances,
    dicom_released_uids,
    key_fingerprints,
    metadata,
    outbox,
    patient_pseudonyms,
    receipts,
    resource_history,
    resources,
    schema_version,
    tokens,
    withdrawn_receipts,
)
from adapter.store.search import search_statement

_log = logging.getLogger(__name__)
_r = resources.c
_d = dicom_instances.c
_u = dicom_released_uids.c
_o = outbox.c
_GET_MANY_CHUNK = 500
#: Addresses per read of referenced_blobs: twice this many parameters, within SQLite's old limit of 999.
_REFERENCED_CHUNK = 400
_LAST_ERROR_MAX = 1000

#: key_fingerprints' rows for the derived indexes, and the advisory locks of their rebuilds
#: (PostgreSQL; SQLite serialises writers).
_RELEASED_UIDS = "released"
_RELEASED_UIDS_LOCK = 0x1A6E5702
_PSEUDONYMS = "pseudonyms"
_PSEUDONYMS_LOCK = 0x1A6E5703
_SEARCH_INDEX = SEARCH_INDEX  # the version of the records' search index (reindex_records)
_SEARCH_INDEX_LOCK = 0x1A6E5704
_PHOTO_STUDY_DATES = "study-dates"  # the version of the posted photos' StudyDate (reindex_photo_study_dates)
_PHOTO_STUDY_DATES_LOCK = 0x1A6E5705
#: Held (PostgreSQL) from a transaction's insert of AuditEvents, or its stamp of the resources it
#: writes (_stamp), to its commit.
_AUDIT_LOCK = 0x1A6E5706
_FINGERPRINT_LOCK = 0x1A6E5707  # record_fingerprint
_MILLISECOND = timedelta(milliseconds=1)
#: The next_attempt_at of a held outbox item that no moment of its patient's Consents may release
#: (RecordStore.hold_outbox's ``recheck_at`` None): after every moment holds_due is asked about.
#: The column is not nullable, and a held item's is the moment its hold is looked at again.
_NOT_BY_THE_CLOCK = datetime(9999, 12, 31, tzinfo=UTC)
#: Each key is taken in the space of the tables' schema (adapter.store.locks).


def _uid_lock(uid: str) -> int:
    """The second key of the two-key advisory lock of filing an instance into the study or series
    ``uid`` names (save_ingests: :func:`_check_hierarchy`, and a posted photo opening its study):
    32 bits of the UID (a collision only makes two studies' or series' instances wait in turn; a
    study's key is the one earlier versions took to open a study, so both wait for each other on
    one database); the first is the schema's (adapter.store.locks)."""
    digest = hashlib.sha256(uid.encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True)
#: The resources reindex_records re-derives the search index of (a Consent's too: its R5 status
#: and date are indexed beside its R4 ones).
_RECORD_TYPES = ("Media", "DocumentReference", "Consent")
#: The photo records (a Binary and a Provenance carry their record's facts too).
_PHOTO_RECORD_TYPES = ("Media", "DocumentReference")
_p = patient_pseudonyms.c
_k = key_fingerprints.c

# Lookups on the hot paths (every ingest, every read), built once with bound parameters: built
# anew for each call, SQLAlchemy computes the statement's cache key each time (see patient_consents).
#: The last audit sequence number, its chain MAC, and the database's schema version (:func:`_schema_moved`).
_LAST_AUDIT = select(audit.c.seq, audit.c.chain_mac).order_by(audit.c.seq.desc()).limit(1).subquery()
_LAST_AUDIT_SEQ = select(select(_LAST_AUDIT.c.seq).scalar_subquery(), select(_LAST_AUDIT.c.chain_mac).scalar_subquery(),
                         select(func.max(schema_version.c.version)).scalar_subquery())
_DICOM_INSTANCE = select(dicom_instances).where(_d.sop_instance_uid == bindparam("sop_instance_uid"))
#: A posted photo's instance of a study (ix_dicom_instances_study): find_study_photo.
_STUDY_PHOTO = select(dicom_instances).where(_d.study_instance_uid == bindparam("study"),
                                             _d.blob_sha256.is_(None)).limit(1)
#: The instances whose record is not entered in error (each its record's row, by primary key;
#: an instance without one is held): a withdrawn one is released to no one, and holds its study
#: and series no longer.
_HELD = select(_d.sop_instance_uid) \
    .outerjoin(resources, and_(_r.resource_type == _d.record_type, _r.id == _d.record_id)) \
    .where(or_(_r.entered_in_error.is_(None), _r.entered_in_error == false()))
#: A held instance of the study filed under another patient than the one named
#: (ix_dicom_instances_study): _check_hierarchy.
_STUDY_OF_ANOTHER_PATIENT = _HELD.where(
    _d.study_instance_uid == bindparam("study"),
    or_(_d.patient_system != bindparam("system"), _d.patient_value != bindparam("value"))).limit(1)
#: A held instance of the series in another study than the one named (ix_dicom_instances_series).
_SERIES_IN_ANOTHER_STUDY = _HELD.where(
    _d.series_instance_uid == bindparam("series"), _d.study_instance_uid != bindparam("study")).limit(1)
_KEYED_RECEIPT = select(receipts.c.receipt, receipts.c.patient_system, receipts.c.patient_value) \
    .where(receipts.c.idempotency_key == bindparam("idempotency_key"))
_w = withdrawn_receipts.c
#: A receipt under the key whose record was marked entered-in-error since (withdrawn_receipts).
_KEYED_WITHDRAWN_RECEIPT = select(_w.receipt, _w.patient_system, _w.patient_value) \
    .where(_w.idempotency_key == bindparam("idempotency_key"))
_RESOURCE = select(resources).where(_r.resource_type == bindparam("resource_type"), _r.id == bindparam("id"))
# The ingest's lookups of a photo stored before, built once with bound parameters (SQLAlchemy
# otherwise computes a new statement's cache key at every call: ~0.2 ms of CPU each, per photo).
_rc = receipts.c
_OF_PATIENT = (_rc.patient_system == bindparam("system"), _rc.patient_value == bindparam("value"))
_RECEIPT_BY_KEY = select(_rc.receipt).where(_rc.idempotency_key == bindparam("key")).order_by(_rc.seq).limit(1)
_RECEIPT_BY_STORED = select(_rc.receipt).where(*_OF_PATIENT, _rc.stored_sha256 == bindparam("stored")) \
    .order_by(_rc.seq).limit(1)
_RECEIPT_BY_RECEIVED = select(_rc.receipt).where(*_OF_PATIENT, _rc.received_sha256 == bindparam("received")) \
    .order_by(_rc.seq).limit(1)
_OF_PATIENT_WITHDRAWN = (_w.patient_system == bindparam("system"), _w.patient_value == bindparam("value"))
_WITHDRAWN_BY_STORED = select(_w.seq, _w.receipt).where(*_OF_PATIENT_WITHDRAWN, _w.stored_sha256 == bindparam("stored"))
_WITHDRAWN_BY_RECEIVED = select(_w.seq, _w.receipt).where(*_OF_PATIENT_WITHDRAWN,
                                                          _w.received_sha256 == bindparam("received"))
_FILED_FOR_ANOTHER = select(_r.id).where(
    _r.blob_sha256 == bindparam("stored"), _r.resource_type.in_(_PHOTO_RECORD_TYPES),
    or_(_r.entered_in_error.is_(None), _r.entered_in_error == false()),
    or_(_r.fact_patient_system != bindparam("system"), _r.fact_patient_value != bindparam("value"))).limit(1)

#: Rows named at once in an IN (...) of a statement over many (SQLite binds at most 32766
#: parameters, PostgreSQL 65535).
_IN_BATCH = 500

#: How long a claimed outbox item stays invisible to other forwarders (claim_outbox).
OUTBOX_LEASE = timedelta(seconds=60)
#: How far apart in time two audit events may be stored out of order (concurrent writers).
AUDIT_SLACK = timedelta(seconds=60)

# Which unique constraint an IntegrityError names: PostgreSQL reports the constraint name,
# SQLite the columns. Diagnostics say what clashed, never the values (they may identify a patient).
_CONFLICTS = (
    (("uq_receipts_idempotency_key", "receipts.idempotency_key"), "the idempotency key was used before"),
    (("uq_receipts_patient_sha", "receipts.patient_system"), "this photo is stored for the patient already"),
    (("pk_resources", "resources.resource_type"), "a resource with this type and id exists already"),
    (("pk_dicom_instances", "dicom_instances.sop_instance_uid"),
     "an object with this SOP Instance UID is stored already"),
    (("uq_outbox_sop_instance_uid_destination", "outbox.sop_instance_uid"),
     "this object is queued for this destination already"),
)


_PG_UNIQUE_VIOLATION = "23505"
#: PostgreSQL's class 54, program limit exceeded (54000: an index row over its page's third,
#: e.g. an identifier of thousands of characters; 54001 statement too complex; 54011 too many
#: columns; 54023 too many arguments): what was sent is too large for the store, whatever the
#: moment, so the request's fault, not a transient failure a client should retry.
_PG_PROGRAM_LIMIT_EXCEEDED = "54"


def _integrity_error(exc: IntegrityError) -> Conflict | StorageError:
    """A unique violation is a Conflict; any other constraint (NOT NULL, foreign key) failing
    means the store was handed something it cannot keep."""
    message = str(exc.orig)
    if getattr(exc.orig, "sqlstate", None) != _PG_UNIQUE_VIOLATION \
            and not message.startswith("UNIQUE constraint failed"):
        return StorageError("the record store rejected the write; nothing was saved")
    diag = getattr(exc.orig, "diag", None)
    found = f"{getattr(diag, 'constraint_name', None) or ''} {message}"
    for markers, diagnostics in _CONFLICTS:
        if any(marker in found for marker in markers):
            return Conflict(diagnostics)
    return Conflict("the write conflicts with stored data")


def _check_hierarchy(conn: Connection, *, study_instance_uid: str, series_instance_uid: str,
                     patient: Identifier) -> None:
    """InstanceConflict, naming the UID, when an instance of ``patient``, study and series cannot
    be filed there: its Study Instance UID is held for another patient (an instance of the study is
    filed under another patient identifier, system or value), or its Series Instance UID is held
    in another study. The information model has one patient per study and one study per series
    (PS3.3 A.1.2, C.7.2.1, C.7.3.1): such an instance would show another patient's images to
    whoever retrieves the study. With both checks passed every instance of the series is of the
    study, hence of its patient. An instance whose record is entered in error holds nothing: it is
    released to no one (README: Correcting a misfiled record), and the corrected object a PACS
    sends again keeps its study and series. The diagnostics (a DIMSE Error Comment, at most 64 characters)
    never name the patient the UID is held for. One lookup of each index, stopping at the first
    instance that differs: for a study of one patient (the usual answer) every row of the study,
    and of the series, is read."""
    held_for_another = conn.execute(_STUDY_OF_ANOTHER_PATIENT, {
        "study": study_instance_uid, "system": patient.system, "value": patient.value}).first()
    if held_for_another is not None:
        raise InstanceConflict("the study is held for another patient: nothing was stored",
                               expression="(0020,000D) StudyInstanceUID")
    in_another_study = conn.execute(_SERIES_IN_ANOTHER_STUDY, {
        "series": series_instance_uid, "study": study_instance_uid}).first()
    if in_another_study is not None:
        raise InstanceConflict("the series is held in another study: nothing was stored",
                               expression="(0020,000E) SeriesInstanceUID")


def _insert_order(patient: Identifier) -> tuple[str, str]:
    """The order every writer inserts patients' pseudonyms in (_index_pseudonyms, index_pseudonyms):
    two transactions inserting the same patients in opposite orders would each wait for the
    other's uncommitted row (PostgreSQL: a deadlock)."""
    return patient.system, patient.value


def _set_instance_columns(conn: Connection, changed: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
    """Set columns of DICOM instances, each by its SOP Instance UID, in one statement; every
    mapping names the same columns. Bound as "v_<column>": a parameter may not take the name of a
    column it sets."""
    if not changed:
        return
    columns = list(changed[0][1])
    conn.execute(update(dicom_instances).where(_d.sop_instance_uid == bindparam("uid"))
                 .values({c: bindparam(f"v_{c}") for c in columns}),
                 [{"uid": uid, **{f"v_{c}": values[c] for c in columns}} for uid, values in changed])


def _schema_moved(version: int) -> StorageError:
    """The database's schema is ``version``, no longer this code's: another version of the adapter
    upgraded it under this running one (a rolling upgrade on a shared database). Its writes could
    lack what the new schema holds, and its conflicts are the schema's, not the client's: every
    request that writes (every one: each is audited) fails as transient (503, 0xA700) and
    readiness fails (:meth:`SqlRecordStore.ping`), so the load balancer drains this instance."""
    _log.error("the database's schema is version %d, this adapter runs %d: another version of the adapter "
               "changed it while this one runs; stop this instance (nothing was saved)", version, SCHEMA_VERSION)
    return StorageError(f"the database's schema is version {version}, this adapter instance runs {SCHEMA_VERSION}: "
                        "it must be stopped or upgraded; nothing was saved, send again (another instance)")


@contextmanager
def _translated_errors(schema_version: Callable[[], int | None] | None = None) -> Iterator[None]:
    """Driver and SQLAlchemy errors as our own: unique violations are Conflict, a value over one
    of PostgreSQL's limits InvalidInput (422 / 0xC000: retrying cannot help), the rest
    StorageError (a failed transaction is rolled back, so nothing of it was saved). Values
    that cannot be encoded (JSON) surface as SQLAlchemy StatementError, hence StorageError.

    A StorageError is logged here with its cause (engine.describe_failure: the exception
    classes, the SQLSTATE, a failure to connect's message; never a statement's message or
    parameters), since its diagnostics, which a client reads, say only that the store failed.

    ``schema_version`` (a write's): the database's schema version now, read after a unique
    violation: one under a schema another version of the adapter upgraded to is no client's
    conflict (:func:`_schema_moved`), and a real one (an idempotency key, a SOP Instance UID used
    before) stays a Conflict."""
    try:
        yield
    except IntegrityError as exc:
        translated = _integrity_error(exc)
        if isinstance(translated, Conflict) and schema_version is not None \
                and (version := schema_version()) is not None and version != SCHEMA_VERSION:
            raise _schema_moved(version) from exc
        if isinstance(translated, StorageError):
            _log.error("the record store rejected a write: %s", describe_failure(exc))
        raise translated from exc
    except SQLAlchemyError as exc:
        if str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "").startswith(_PG_PROGRAM_LIMIT_EXCEEDED):
            raise InvalidInput("a value of the request is too large for the record store (an identifier or "
                               "code of thousands of characters); nothing was saved") from exc
        _log.error("the record store failed: %s", describe_failure(exc))
        raise StorageError("the record store failed (unreachable, or it refused the request); nothing was changed") from exc


#: Rows of a search read at a time (SqlRecordStore.search_index).
SEARCH_BATCH = 1000


def _versions_of(resource_type: str, id: str, since: datetime | None, before: int | None = None) -> list[Any]:
    """The history rows of one resource, stored at ``since`` or later when given, older than
    version ``before`` when given."""
    h = resource_history.c
    where = [h.resource_type == resource_type, h.id == id]
    if since is not None:
        where.append(h.last_updated >= to_utc(since))
    if before is not None:
        where.append(h.version_id < before)
    return where


def _equal(*pairs: tuple[Any, str | None]) -> list[Any]:
    """``column == value`` for each pair whose value is given (an AND of exact matches)."""
    return [column == value for column, value in pairs if value is not None]


def _resources_after(after: tuple[str, str], condition: Any, batch: int, *columns: Any) -> Select[Any]:
    """The next ``batch`` resources matching ``condition`` after (resource type, id) ``after``,
    in that order, with ``columns`` after their type and id: a keyset page of a walk over the
    whole table (start from ``("", "")``)."""
    return (select(_r.resource_type, _r.id, *columns)
            .where(condition, or_(_r.resource_type > after[0],
                                  and_(_r.resource_type == after[0], _r.id > after[1])))
            .order_by(_r.resource_type, _r.id).limit(batch))


def _fingerprint_locked(conn: Connection, name: str, lock: int) -> str | None:
    """The stored fingerprint of the derived index ``name``, read under its rebuild lock
    (PostgreSQL; on SQLite the write transaction is the lock)."""
    if conn.dialect.name == "postgresql":
        lock_in_schema(conn, lock)
    stored: str | None = conn.execute(select(_k.fingerprint).where(_k.name == name)).scalar()
    return stored


def patient_params(patient: Identifier) -> dict[str, str]:
    """The bind parameters of :func:`patient_consents` for ``patient``."""
    return {"patient_system": patient.system, "patient_value": patient.value}


def patient_consents(*columns: Any, dialect: str = "sqlite") -> Select[Any]:
    """The SELECT of ``columns`` of a patient's Consents (by their search index's patient, or
    by their access facts'), oldest first, for the database ``dialect``; the patient is bound
    when it runs (:func:`patient_params`), so the statement is built once and SQLAlchemy's cache
    key of it is computed once (built anew for each ingest, the statement cost ~0.3 ms of CPU
    before it reached the database, five times the query).

    One WHERE with an OR of the two: PostgreSQL answers it with a bitmap OR of the two indexes
    (0.9 ms at 20,000 Consents, benchmarks/lookups.py), but SQLite walked every Consent of the
    store in (last_updated, id) order on each ingest (27-33 ms). There each of the two is read
    as a range of its own index (ix_resources_patient, ix_resources_fact_patient), then the rows
    by primary key (0.7 ms; on PostgreSQL this form took 2.2 ms)."""
    system: BindParameter[Any] = bindparam("patient_system")
    value: BindParameter[Any] = bindparam("patient_value")
    by_index = and_(_r.patient_system == system, _r.patient_value == value)
    by_facts = and_(_r.fact_patient_system == system, _r.fact_patient_value == value)
    if dialect != "sqlite":
        return select(*columns).where(_r.resource_type == "Consent", or_(by_index, by_facts)) \
            .order_by(_r.last_updated, _r.id)
    keys = union(select(_r.id, _r.last_updated).where(_r.resource_type == "Consent", by_index),
                 select(_r.id, _r.last_updated).where(by_facts, _r.resource_type == "Consent")).subquery()
    return select(*columns).select_from(keys.join(resources, and_(_r.resource_type == "Consent", _r.id == keys.c.id))) \
        .order_by(keys.c.last_updated, keys.c.id)


def _dicom_search(*, study: str | None = None, series: str | None = None, sop_instance: str | None = None,
                  patient: Identifier | None = None, patient_value: str | None = None, modality: str | None = None,
                  study_dates: tuple[str | None, str | None] | None = None,
                  accession_number: str | None = None, patient_name: NamePrefix | None = None,
                  study_description_prefix: str | None = None) -> Select[Any]:
    """The instances matching the criteria of SqlRecordStore.search_dicom_instances."""
    where = _equal((_d.patient_value, patient_value), (_d.study_instance_uid, study),
                   (_d.series_instance_uid, series), (_d.sop_instance_uid, sop_instance), (_d.modality, modality),
                   (_d.accession_number, accession_number))
    if patient is not None:
        where.append(and_(_d.patient_system == patient.system, _d.patient_value == patient.value))
    if study_dates is not None:
        start, end = study_dates
        where.append(_d.study_date.is_not(None))
        if start is not None:
            where.append(_d.study_date >= start)
        if end is not None:
            where.append(_d.study_date <= end)
    if patient_name is not None:
        where.append(_name_candidates(patient_name))
    if study_description_prefix is not None:
        where.append(or_(_starts_with(_d.study_description_key, study_description_prefix),
                         _d.study_description_key.is_(None)))
    return select(dicom_instances).where(*where)


def _name_candidates(name: NamePrefix) -> ColumnElement[bool]:
    """The instances whose PatientName key starts with the prefix (or one of whose groups does,
    ``any_group``), or whose keys are not derived yet: an OR of ranges of the keys' indexes
    (SQLite reads each through its index, a MULTI-INDEX OR; PostgreSQL a BitmapOr)."""
    key = _d.patient_name_key
    terms = [_starts_with(key, name.prefix), key.is_(None)]
    if name.any_group:
        terms += [_starts_with(_d.patient_name_ideographic_key, name.prefix),
                  _starts_with(_d.patient_name_phonetic_key, name.prefix),
                  _d.patient_name_phonetic_key == ""]  # more groups than three: each may start with it
    return or_(*terms)


def _starts_with(column: Any, prefix: str) -> ColumnElement[bool]:
    """``column`` starts with ``prefix``, as a range its index serves: at least the prefix and
    below the least string after every one that starts with it (code point order, the keys'
    collation: adapter.store.schema.MatchKey). No LIKE: SQLite's is case-insensitive and uses an
    index only under conditions, PostgreSQL's only with "C" or text_pattern_ops."""
    if not prefix:
        raise ValueError("a prefix range needs a prefix")
    end = _after_prefixed(prefix)
    return column >= prefix if end is None else and_(column >= prefix, column < end)


def _after_prefixed(prefix: str) -> str | None:
    """The least string after every string that starts with ``prefix``: its last character that
    has a successor, incremented (past the surrogates, which no stored text holds), the rest
    cut; None when every character is the last one (U+10FFFF)."""
    chars = prefix
    while chars:
        following = ord(chars[-1]) + 1
        if 0xD800 <= following <= 0xDFFF:
            following = 0xE000
        if following <= 0x10FFFF:
            return chars[:-1] + chr(following)
        chars = chars[:-1]
    return None


def _dicom_ordered(statement: Select[Any]) -> Select[Any]:
    """By study, series, created (then SOP Instance UID): a study's instances together."""
    return statement.order_by(_d.study_instance_uid, _d.series_instance_uid, _d.created, _d.sop_instance_uid)


class _ConsentsChanged(Exception):
    """A patient's Consents changed since the decision a write rests on (SqlRecordStore.hold_outbox)."""


class SqlRecordStore:
    """RecordStore on ``sqlite:///<file>`` or ``postgresql+psycopg://…``; safe to share between
    threads (one pooled connection per operation).

    ``schema`` (PostgreSQL only) keeps the tables in a schema of their own, created if missing.
    Tables are created on start. ``outbox_lease`` is how long claim_outbox hides a claimed item.
    With ``existing_only`` nothing is created: a database (a SQLite file, a PostgreSQL schema)
    that does not hold the adapter's tables raises :class:`NoStore` (an older one is upgraded).
    """

    def __init__(self, database_url: str, *, schema: str | None = None, pool_size: int = 5,
                 max_overflow: int = 10, outbox_lease: timedelta = OUTBOX_LEASE, existing_only: bool = False,
                 timeouts: DatabaseTimeouts | None = None, audit_key: bytes | None = None,
                 read_audit_key: Callable[[], bytes | None] | None = None) -> None:
        self._outbox_lease = outbox_lease
        # the audit chain's key (adapter.store.audit_chain.read_audit_key): none, no audit is written
        self._audit_key = audit_key
        # reads the data folder's audit.key again (None: not there): see _audit_key_as_recorded
        self._read_audit_key = read_audit_key
        if existing_only:
            database = check_database_url(database_url, schema=schema)
            if database.get_backend_name() == "sqlite" and not Path(database.database or "").expanduser().is_file():
                # connecting would create it
                raise NoStore(f"no database at {database.database} (ADAPTER_DATA_DIR, ADAPTER_DATABASE_URL)")
        self._engine = create_store_engine(database_url, schema=schema, pool_size=pool_size,
                                           max_overflow=max_overflow, timeouts=timeouts)
        self._writer = self._engine.execution_options(**{WRITE: True})
        # the start's upgrade and re-indexing: no statement or lock timeout (engine.UNLIMITED)
        self._maintainer = self._engine.execution_options(**{WRITE: True, UNLIMITED: True})
        self._maintenance_reader = self._engine.execution_options(**{UNLIMITED: True})
        self._inserts = CompiledInserts(self._engine.dialect)
        self._dialect = self._engine.dialect.name
        # the hot paths' SELECTs, built once with bound parameters (see patient_consents)
        self._patient_consents = patient_consents(resources, dialect=self._dialect)
        self._patient_consent_versions = patient_consents(_r.id, _r.version_id, dialect=self._dialect)
        self._latest_of_types: dict[tuple[tuple[str, int], ...], Select[Any]] = {}
        # set by index_pseudonyms: from then on every write indexes the pseudonyms of its patients
        self._pseudonym_of: Callable[[Identifier], str] | None = None
        self._insert_pseudonyms = (sqlite_insert if self._engine.dialect.name == "sqlite" else postgresql_insert)(
            patient_pseudonyms).on_conflict_do_nothing()
        try:
            with self._maintain() as conn:
                prepare_database(conn, schema, create=not existing_only)
                if existing_only and not inspect(conn).has_table(schema_version.name):
                    raise NoStore("the database holds no record store of the adapter (no schema_version table): "
                                  "a new or wrong database (ADAPTER_DATABASE_URL, ADAPTER_DATA_DIR)")
                found = create_schema(conn, upgrade=not existing_only)
                if audit_key is not None and (found is None or found < START_SEAL_VERSION):
                    # sealed in the transaction that made or upgraded the store (audit_start); a
                    # start recorded by this one (made now, or upgraded from before the chain) is
                    # the number after the last event, one recorded before must be chained from
                    seal_start(conn, audit_key, fresh=found is None or found < AUDIT_CHAIN_VERSION)
        except StorageError as exc:
            self._engine.dispose()
            database_file = sqlite_path(database_url)
            problem = folder_write_problem(database_file.parent) if database_file is not None else None
            if problem is not None:  # not "unreachable": its folder cannot be written (ops review 5)
                raise StorageError(f"the SQLite database {database_file} cannot be opened: {problem}") from exc
            raise
        except BaseException:
            self._engine.dispose()
            raise

    def _audit_key_as_recorded(self, recorded: object | None) -> bytes | None:
        """The chain's key, read again from the data folder when the store was opened without one
        and the trail now records one (``recorded``: its fingerprint, or the start's seal): another instance starting beside this one on a new shared
        store made audit.key and recorded its fingerprint after this one opened the store (which
        refused to start, saying to restore a backup that does not exist: ops review 2). The file
        is published before the transaction recording its fingerprint commits, so a fingerprint
        read first finds its file."""
        if self._audit_key is None and recorded is not None and self._read_audit_key is not None:
            self._audit_key = self._read_audit_key()
        return self._audit_key

    def audit_key_problem(self) -> str | None:
        """Why this store's audit chain key is not the one its trail is chained with, or None
        (read only: ``verify``): also a data folder without audit.key whose trail has no key
        recorded yet, whose chain cannot be checked."""
        recorded = self.stored_fingerprints().get(CHAIN_KEY_FINGERPRINT)
        refusal = audit_key_refusal(recorded, self._audit_key_as_recorded(recorded))
        if refusal is None and self._audit_key is None:
            return "the data folder has no audit.key: the audit trail's chain cannot be checked"
        return refusal

    def audit_key_refusal(self) -> str | None:
        """See RecordStore.audit_key_refusal."""
        recorded = self.stored_fingerprints().get(CHAIN_KEY_FINGERPRINT)
        return audit_key_refusal(recorded, self._audit_key_as_recorded(recorded))

    def audit_start_refusal(self) -> str | None:
        """See RecordStore.audit_start_refusal."""
        with self._read() as conn:
            recorded = conn.execute(select(_k.fingerprint).where(_k.name == CHAIN_KEY_FINGERPRINT)).scalar()
            facts = read_start_facts(conn)
        key = self._audit_key_as_recorded(recorded if recorded is not None else facts.seal)
        if key is not None:
            return start_problem(key, facts)
        if recorded is not None:  # chained under a key this folder lacks: audit_key_refusal says so
            return None
        return _unsealable_as_the_key_is_made(facts)

    def claim_audit_key(self, make_key: Callable[[], bytes] | None = None) -> None:
        """Record which key the audit chain is made with, or refuse another (fail closed: a lost
        or other audit.key would chain new events under a key the earlier ones do not verify with).
        ``serve`` and the export call it once the data folder is known to be the database's; a
        store opened without a key gets ``make_key``'s (the folder's audit.key, made then) when
        its trail has none recorded yet, so a start that is refused makes no audit.key; the
        trail's start is sealed with the key so made (adapter.store.audit_start), and a start
        that cannot be trusted is refused (ConfigurationError), before any key is made."""
        with self._maintain() as conn:
            if conn.dialect.name == "postgresql":  # processes starting together: one after the other
                lock_in_schema(conn, _FINGERPRINT_LOCK)
            recorded = conn.execute(select(_k.fingerprint).where(_k.name == CHAIN_KEY_FINGERPRINT)).scalar()
            # under the lock the folder's claim takes: another start's key, recorded, is read now
            refusal = audit_key_refusal(recorded, self._audit_key_as_recorded(recorded))
            if refusal is not None:
                raise ConfigurationError(refusal)
            if self._audit_key is None and make_key is not None:
                why = _unsealable_as_the_key_is_made(read_start_facts(conn))
                if why is not None:
                    raise ConfigurationError(f"audit trail: {why}")
                self._audit_key = make_key()
                seal_start(conn, self._audit_key, fresh=True)
            if self._audit_key is None:
                raise ConfigurationError("the store was opened without the audit chain's key (audit.key)")
            problem = start_problem(self._audit_key, read_start_facts(conn))
            if problem is not None:
                raise ConfigurationError(f"audit trail: {problem}")
            if recorded is None:
                self._set_fingerprint(conn, CHAIN_KEY_FINGERPRINT, audit_key_fingerprint(self._audit_key))
        refusal = self.audit_key_refusal()  # another process's start may have recorded its key meanwhile
        if refusal is not None:
            raise ConfigurationError(refusal)

    @property
    def engine(self) -> Engine:
        """The underlying engine (for diagnostics and tests; services use the methods)."""
        return self._engine

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with _translated_errors(self._schema_version), self._writer.begin() as conn:
            yield conn

    def _schema_version(self) -> int | None:
        """The database's schema version now, in a connection of its own; None if it cannot be read."""
        try:
            with self._engine.connect() as conn:
                version = conn.execute(select(func.max(schema_version.c.version))).scalar()
        except SQLAlchemyError:
            return None
        return None if version is None else int(version)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with _translated_errors(), self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _maintain(self) -> Iterator[Connection]:
        """A write transaction of the start's upgrade or re-indexing: as long as it takes."""
        with _translated_errors(), self._maintainer.begin() as conn:
            yield conn

    @contextmanager
    def _maintenance_read(self) -> Iterator[Connection]:
        with _translated_errors(), self._maintenance_reader.connect() as conn:
            yield conn

    def _index_patients(self, conn: Connection, resources_written: Sequence[NewResource],
                        replaced: Mapping[tuple[str, str], Claim | None] | None = None) -> None:
        """The pseudonyms of the patients these resources name (:meth:`_index_pseudonyms`), then the
        literal Patient references they name, claimed for their identifiers
        (adapter.store.patient_references: PatientReferenceConflict, and nothing written, when one is
        held for another; ``replaced``: what the versions they replace claimed, from
        :meth:`_replace_current`): in every writing transaction, in this order."""
        self._index_pseudonyms(conn, resources_written)
        claim_patient_references(conn, resources_written, replaced)

    def _index_pseudonyms(self, conn: Connection, resources_written: Sequence[NewResource]) -> None:
        """The pseudonyms of the patients these resources name, in the writing transaction (see
        index_pseudonyms); a patient indexed already is skipped. In the patients' order, as
        index_pseudonyms inserts them: two transactions inserting the same patients in opposite
        orders would each wait for the other's uncommitted row (PostgreSQL: a deadlock)."""
        if self._pseudonym_of is None:
            return
        patients = {r.index.patient for r in resources_written if r.index.patient is not None}
        if patients:
            conn.execute(self._insert_pseudonyms, [
                {"pseudonym": self._pseudonym_of(p), "patient_system": p.system, "patient_value": p.value}
                for p in sorted(patients, key=_insert_order)])

    def _insert_version(self, conn: Connection, new: NewResource, document: dict[str, Any], version_id: int,
                        audit_events: Sequence[dict[str, Any]], now: datetime,
                        replaced: Claim | None = None) -> tuple[datetime, dict[str, Any]]:
        """The history row, tokens and audit of a version whose resources row is written
        (``replaced``: what the version it replaced claimed); its stamp (:meth:`_stamp`): the
        instant and document as stored."""
        run = self._inserts.execute
        self._index_patients(conn, [new], {(new.resource_type, new.id): replaced} if version_id > 1 else None)
        run(conn, resource_history, history_row(new, document, version_id, now))
        if rows := token_rows(new):
            run(conn, tokens, rows)
        if ranges := date_range_rows(new):
            run(conn, date_ranges, ranges)
        now, (document,) = self._stamp(conn, [(new, version_id)], [document], now)
        self._insert_audit(conn, [{"recorded": now, "json": event} for event in audit_events], locked=True)
        return now, document

    def _stamp(self, conn: Connection, written: Sequence[tuple[NewResource, int]], documents: list[dict[str, Any]],
               now: datetime) -> tuple[datetime, list[dict[str, Any]]]:
        """The lastUpdated of the resource versions ``written`` (stored with ``now`` and
        ``documents``, in this transaction): ``now``, or a millisecond after the latest instant of
        another resource of their types if ``now`` is not after it, to which their rows are moved.
        Takes the audit lock (PostgreSQL; SQLite has one writer at a time), held to the commit:
        call it last but for the audit insert.

        A client syncs by ``_lastUpdated=gt<the last instant it saw>``, so no resource may become
        visible with an instant at or before one a reader has seen. A write chooses its instant
        before it inserts, so one stamped earlier could commit after one stamped later was read,
        and two in one millisecond (the instant's precision) got the same instant: such records
        were never synced. Under the lock, resource writes commit one at a time, each stamped
        after every one committed before it (a backwards read of ix_resources_type_last_updated
        per type); only a write that lost that race is written again (an update of its rows), and
        the lock is held for as little as the audit's was. Under more than a thousand writes of a
        type a second the instants run ahead of the clock, and catch up after."""
        if conn.dialect.name == "postgresql":
            lock_in_schema(conn, _AUDIT_LOCK)
        own: dict[str, list[str]] = {}
        for new, _version in written:
            own.setdefault(new.resource_type, []).append(new.id)
        if not own:
            return now, documents
        types = sorted(own.items())
        params: dict[str, Any] = {}
        for n, (rtype, ids) in enumerate(types):
            params[f"type_{n}"] = rtype
            params.update({f"id_{n}_{k}": id for k, id in enumerate(ids)})
        found = [to_utc(instant) for instant in conn.execute(self._latest_statement(types), params).one()
                 if instant is not None]
        if not found or max(found) < now:
            return now, documents
        now = max(found) + _MILLISECOND
        documents = [with_meta(new, version, now) for new, version in written]
        values = [{"rt": new.resource_type, "rid": new.id, "v": version, "lu": now, "doc": EncodedJson.of(document)}
                  for (new, version), document in zip(written, documents, strict=True)]
        stamped = {"last_updated": bindparam("lu", type_=_r.last_updated.type),
                   "json": bindparam("doc", type_=_r.json.type)}
        conn.execute(update(resources).where(_r.resource_type == bindparam("rt"), _r.id == bindparam("rid"))
                     .values(stamped), values)
        h = resource_history.c
        conn.execute(update(resource_history).where(h.resource_type == bindparam("rt"), h.id == bindparam("rid"),
                                                    h.version_id == bindparam("v")).values(stamped), values)
        return now, documents

    def _latest_statement(self, types: Sequence[tuple[str, Sequence[str]]]) -> Select[Any]:
        """The SELECT of :meth:`_stamp` for resources of these types and numbers of ids: the
        latest last_updated of each type among its other resources. Built once per shape (an
        ingest writes the same few each time), with bound parameters ``type_<n>``, ``id_<n>_<k>``."""
        shape = tuple((rtype, len(ids)) for rtype, ids in types)
        statement = self._latest_of_types.get(shape)
        if statement is None:
            latest = [select(_r.last_updated)
                      .where(_r.resource_type == bindparam(f"type_{n}"),
                             _r.id.not_in([bindparam(f"id_{n}_{k}") for k in range(count)]))
                      .order_by(_r.last_updated.desc()).limit(1).scalar_subquery()
                      for n, (_rtype, count) in enumerate(shape)]
            statement = select(*latest)
            if len(self._latest_of_types) < 256:  # the shapes the adapter writes are few
                self._latest_of_types[shape] = statement
        return statement

    def _insert_audit(self, conn: Connection, rows: Sequence[dict[str, Any]], *, locked: bool = False) -> None:
        """Insert AuditEvent rows: the last statement of their transaction.

        The export hands a SIEM the last sequence number it wrote, to continue after (iter_audit,
        ``python -m adapter audit --after``), so sequence numbers must become visible in order.
        On PostgreSQL a transaction that took number 7 could commit after one that took 8 and
        was exported, and 7 was then never exported. So the numbers are taken under a
        transaction-scoped lock, held until the commit: transactions that audit commit in the
        order of their numbers (the lock is held for the insert, the stamp of the resources written
        with it, and the commit only). SQLite
        has one writer at a time anyway. ``locked``: the transaction holds the lock already
        (:meth:`_stamp`).

        The numbers are the last committed one's successors, taken under that lock (SQLite: its
        write lock), not from PostgreSQL's sequence: a sequence hands a number out for good,
        committed or not, so a transaction rolled back after its insert (its process killed
        before the commit) left a number no event has, a gap in the export a SIEM cannot tell
        from an event deleted (found by the crash review)."""
        if not rows:
            return
        key = self._audit_key
        if key is None:  # fail closed: an event the chain does not cover would read as tampered with
            raise ConfigurationError("the store was opened without the audit chain's key (audit.key): "
                                     "no audit event can be written")
        if conn.dialect.name == "postgresql" and not locked:
            lock_in_schema(conn, _AUDIT_LOCK)
        last, last_mac, version = conn.execute(_LAST_AUDIT_SEQ).one()
        if version is not None and version != SCHEMA_VERSION:
            raise _schema_moved(int(version))
        last = int(last or 0)
        # chained to the last row's MAC, read under the lock that serialises the numbers; the first
        # row after the chain's start (none before it has a MAC) to what the start gives
        previous = bytes.fromhex(last_mac) if last_mac else genesis(key, last + 1)
        chained = []
        for n, row in enumerate(rows, 1):
            try:
                mac = chain_mac(key, previous, last + n, row["recorded"], row["json"])
            except (TypeError, ValueError) as exc:  # not JSON: as the insert would have refused it
                raise StorageError("an audit event could not be encoded; nothing was changed") from exc
            chained.append({"seq": last + n, "chain_mac": mac.hex(), **row})
            previous = mac
        self._inserts.execute(conn, audit, chained)

    # -- writes ---------------------------------------------------------------------------

    def save_ingest(self, unit: IngestUnit) -> None:
        """Write every resource (version 1), the receipt, the audit events, the DICOM instance
        and the outbox items in one transaction.

        Raises Conflict if the SOP Instance UID, the idempotency key or (patient, stored sha256)
        is taken, or a resource exists already, and InstanceConflict if the DICOM instance's study
        is held for another patient or its series in another study (:func:`_check_hierarchy`);
        then nothing is written. Outbox items start
        pending and due now. After the commit, each resource dict of ``unit`` carries the stored
        ``meta`` (versionId, lastUpdated).
        """
        self.save_ingests([unit])

    def save_ingests(self, units: Sequence[IngestUnit]) -> None:
        """What :meth:`save_ingest` writes of each unit, every unit in ONE transaction (the
        documents of one submission, FHIR http.html#transaction: all or none); Conflict, and
        nothing written, as soon as any of them conflicts."""
        now = now_instant()
        news = [new for unit in units for new in unit.resources]
        documents = [with_meta(new, 1, now) for new in news]
        run = self._inserts.execute
        with self._write() as conn:
            self._lock_hierarchy(conn, [unit.dicom_instance for unit in units if unit.dicom_instance is not None])
            for unit in units:
                if (instance := unit.dicom_instance) is not None:
                    _check_hierarchy(conn, study_instance_uid=instance.study_instance_uid,
                                     series_instance_uid=instance.series_instance_uid, patient=instance.patient)
                    if unit.opens_study:  # a photo opening its study: only while no photo of it is stored
                        self._check_study_unopened(conn, instance.study_instance_uid)
            if instances := [unit for unit in units if unit.dicom_instance is not None]:
                # first: a repeated SOP instance fails cheapest
                run(conn, dicom_instances, [dicom_instance_row(unit.dicom_instance, now) for unit in instances
                                            if unit.dicom_instance is not None])
                if released := [released_uids_row(r) for unit in instances for r in unit.released_uids]:
                    run(conn, dicom_released_uids, released)
            run(conn, receipts, [{
                "idempotency_key": unit.idempotency_key, "patient_system": unit.patient.system,
                "patient_value": unit.patient.value, "stored_sha256": unit.stored_sha256,
                "received_sha256": received_sha256_of(unit.receipt), "recorded": now, "receipt": unit.receipt}
                for unit in units])
            if news:
                # each document encoded once, for its resource row and its history row
                pairs = [(n, EncodedJson.of(d)) for n, d in zip(news, documents, strict=True)]
                run(conn, resources, [resource_row(n, e, 1, now) for n, e in pairs])
                run(conn, resource_history, [history_row(n, e, 1, now) for n, e in pairs])
                if rows := [row for new in news for row in token_rows(new)]:
                    run(conn, tokens, rows)
                if ranges := [row for new in news for row in date_range_rows(new)]:
                    run(conn, date_ranges, ranges)
            if items := [item for unit in units for item in unit.outbox]:
                run(conn, outbox, [outbox_row(item, now) for item in items])
            self._index_patients(conn, news)
            now, documents = self._stamp(conn, [(new, 1) for new in news], documents, now)
            self._insert_audit(conn, [{"recorded": now, "json": e} for unit in units for e in unit.audit_events],
                               locked=True)  # last
        for new, document in zip(news, documents, strict=True):
            new.resource["meta"] = document["meta"]

    @staticmethod
    def _lock_hierarchy(conn: Connection, instances: Sequence[DicomInstance]) -> None:
        """Wait until every other transaction filing an instance into the studies and series of
        ``instances`` has committed, so that :func:`_check_hierarchy` and
        :meth:`_check_study_unopened` see them (two objects of two patients sent at once must not
        both open one study): PostgreSQL takes the advisory lock of each UID (READ COMMITTED: the
        statements after it see what was committed before it was granted), in one order for every
        transaction, so two never wait on each other; SQLite's write transaction is the only one."""
        if conn.dialect.name != "postgresql":
            return
        uids = {uid for instance in instances for uid in (instance.study_instance_uid, instance.series_instance_uid)}
        for key in sorted({_uid_lock(uid) for uid in uids}):
            lock_pair_in_schema(conn, key)

    @staticmethod
    def _check_study_unopened(conn: Connection, study_instance_uid: str) -> None:
        """StudyStarted when a posted photo of the study is stored (RecordStore.find_study_photo),
        in the writing transaction, after every other filing into the study committed
        (:meth:`_lock_hierarchy`)."""
        if conn.execute(_STUDY_PHOTO, {"study": study_instance_uid}).first() is not None:
            raise StudyStarted("another photo of the encounter was stored at the same time: nothing was stored")

    def create(self, new: NewResource, audit_events: Sequence[dict[str, Any]] = ()) -> StoredResource:
        """Insert version 1 (sets meta.versionId and meta.lastUpdated). Conflict if it exists."""
        now = now_instant()
        document = with_meta(new, 1, now)
        with self._write() as conn:
            self._inserts.execute(conn, resources, resource_row(new, document, 1, now))
            now, document = self._insert_version(conn, new, document, 1, audit_events, now)
        return StoredResource(new.resource_type, new.id, 1, now, document, new.facts, new.blob_sha256,
                              new.blob_range)

    def update(self, new: NewResource, *, if_match: int | None = None,
               audit_events: Sequence[dict[str, Any]] = ()) -> StoredResource:
        """Write the next version; every version stays in ``resource_history``.

        Conflict if ``if_match`` is not the current version (or another writer won the race);
        NotFound if the resource does not exist.
        """
        with self._write() as conn:
            version, now = self._next_version(conn, new, if_match)
            document = with_meta(new, version, now)
            replaced = self._replace_current(conn, new, document, version, now)
            now, document = self._insert_version(conn, new, document, version, audit_events, now, replaced)
        return StoredResource(new.resource_type, new.id, version, now, document, new.facts, new.blob_sha256,
                              new.blob_range)

    @staticmethod
    def _next_version(conn: Connection, new: NewResource, if_match: int | None) -> tuple[int, datetime]:
        """The version ``new`` is written as and its lastUpdated, its current row locked (FOR
        UPDATE): NotFound if it does not exist, Conflict if ``if_match`` is not its version. The
        instant is after the version a sync may have seen (_stamp compares with the other
        resources only)."""
        key = and_(_r.resource_type == new.resource_type, _r.id == new.id)
        current = conn.execute(select(_r.version_id, _r.last_updated).where(key).with_for_update()).first()
        if current is None:
            raise NotFound(f"{new.resource_type}/{new.id} does not exist")
        if if_match is not None and if_match != current.version_id:
            raise Conflict(f"version {if_match} is not the current version of {new.resource_type}/{new.id}")
        return current.version_id + 1, max(now_instant(), current.last_updated + _MILLISECOND)

    @staticmethod
    def _replace_current(conn: Connection, new: NewResource, document: dict[str, Any], version: int,
                         now: datetime) -> Claim | None:
        """Overwrite the resource's row with ``document`` (``version``, the one after the current)
        unless another writer changed it meanwhile (Conflict), and drop its index rows (the
        caller writes the new version's). Returns the Patient reference the version replaced
        claimed (adapter.store.patient_references.claim_of_row), read from its row (locked by
        the caller): a version claiming the same claims nothing anew."""
        key = and_(_r.resource_type == new.resource_type, _r.id == new.id)
        before = conn.execute(select(*CLAIM_COLUMNS).where(key, _r.version_id == version - 1)).first()
        row = resource_row(new, document, version, now)
        del row["resource_type"], row["id"]
        if before is None or conn.execute(update(resources).where(key, _r.version_id == version - 1)
                                          .values(row)).rowcount != 1:
            raise Conflict(f"{new.resource_type}/{new.id} was changed concurrently")
        for table in (tokens, date_ranges):
            conn.execute(delete(table).where(table.c.resource_type == new.resource_type, table.c.id == new.id))
        return claim_of_row(before)

    def mark_entered_in_error(self, new: NewResource, *, if_match: int | None = None,
                              created: Sequence[NewResource] = (),
                              audit_events: Sequence[dict[str, Any]] = ()) -> tuple[StoredResource, int, int]:
        """Write ``new``, the next version of a record whose status is now ``entered-in-error``
        (its history row, tokens and date ranges), with ``created`` (version 1: its Provenance)
        and ``audit_events``, in one transaction, which also marks every resource the record
        governs entered in error (AccessFacts.entered_in_error: its Binary, its Provenance) and
        cancels its outbox items not sent (pending, held or failed: never sent, nor requeued; one
        sent stays sent). A pending item whose C-STORE has started (:meth:`start_outbox_send`) is not
        cancelled: it is being sent, or may have been, and stays pending for its forwarder to
        record what became of it (sent; a failure is refused at its next claim, the record being
        entered in error). The items are read locked (PostgreSQL FOR UPDATE, SQLite's write
        lock), so a forwarder's start of a C-STORE is ordered before or after this mark, never
        between. Conflict and NotFound as :meth:`update`. Returns the version stored, how many
        outbox items were cancelled and how many were being sent."""
        run = self._inserts.execute
        with self._write() as conn:
            version, now = self._next_version(conn, new, if_match)
            written = [(new, version), *((c, 1) for c in created)]
            documents = [with_meta(n, v, now) for n, v in written]
            replaced = {(new.resource_type, new.id): self._replace_current(conn, new, documents[0], version, now)}
            for extra, document in zip(created, documents[1:], strict=True):
                run(conn, resources, resource_row(extra, document, 1, now))
            for (n, v), document in zip(written, documents, strict=True):
                run(conn, resource_history, history_row(n, document, v, now))
                if rows := token_rows(n):
                    run(conn, tokens, rows)
                if ranges := date_range_rows(n):
                    run(conn, date_ranges, ranges)
            conn.execute(update(resources).where(_r.governed_by == f"{new.resource_type}/{new.id}")
                         .values(entered_in_error=True))
            self._withdraw_receipt(conn, new)
            its_objects = select(_d.sop_instance_uid).where(_d.record_type == new.resource_type,
                                                            _d.record_id == new.id)
            not_sent = conn.execute(select(_o.id, _o.sending_since).where(
                _o.sop_instance_uid.in_(its_objects), _o.status.in_([OUTBOX_PENDING, OUTBOX_HELD, OUTBOX_FAILED]))
                .order_by(_o.id).with_for_update()).all()
            to_cancel = [row.id for row in not_sent if row.sending_since is None]
            cancelled = int(conn.execute(update(outbox).where(_o.id.in_(to_cancel))
                                         .values(status=OUTBOX_CANCELLED, updated=now)).rowcount) if to_cancel else 0
            sending = len(not_sent) - len(to_cancel)
            self._index_patients(conn, [n for n, _ in written], replaced)
            now, documents = self._stamp(conn, written, documents, now)
            self._insert_audit(conn, [{"recorded": now, "json": e} for e in audit_events], locked=True)  # last
        for extra, document in zip(created, documents[1:], strict=True):
            extra.resource["meta"] = document["meta"]
        return StoredResource(new.resource_type, new.id, version, now, documents[0], new.facts, new.blob_sha256,
                              new.blob_range), cancelled, sending

    def _withdraw_receipt(self, conn: Connection, record: NewResource) -> None:
        """Move the receipt of ``record`` (a photo record being marked entered-in-error) from
        ``receipts`` to ``withdrawn_receipts``: it no longer holds the unique (patient, stored
        SHA-256), so the photo can be filed again for the patient, and is kept to refuse a retry
        of the request that stored it (find_keyed_receipt, find_withdrawn_receipts). Found by its
        (patient, stored SHA-256), which is unique in ``receipts``, and checked to be the record's
        (a record received otherwise has none)."""
        facts = record.facts
        if record.blob_sha256 is None or facts is None:
            return
        row = conn.execute(select(receipts).where(
            receipts.c.patient_system == facts.patient.system, receipts.c.patient_value == facts.patient.value,
            receipts.c.stored_sha256 == record.blob_sha256)).mappings().first()
        if row is None or not isinstance(row["receipt"], dict) \
                or row["receipt"].get("record") != f"{record.resource_type}/{record.id}":
            return
        self._inserts.execute(conn, withdrawn_receipts, [{k: v for k, v in row.items() if k != "seq"}])
        conn.execute(delete(receipts).where(receipts.c.seq == row["seq"]))

    def save_consent(self, new: NewResource, *, version: int, now: datetime,
                     audit_events: Sequence[dict[str, Any]] = (),
                     documented: Sequence[tuple[NewResource, int]] = (), released: Sequence[str] = (),
                     waiting: Sequence[str] = (), recheck_at: datetime | None = None,
                     audit_documented: Callable[[Sequence[str]], Sequence[dict[str, Any]]] | None = None,
                     ) -> tuple[StoredResource, int]:
        """See RecordStore.save_consent. The Consent's row (and the current one it replaces) and
        each documented record's are locked first (FOR UPDATE), so that one instant, after each
        of their versions', stamps them all; then the outbox items of ``released`` and
        ``waiting`` in status pending or held are read locked (:meth:`_settle_holds`), the held
        ones of ``released`` released, those of ``waiting`` given ``recheck_at`` when earlier:
        a forwarder recording a hold (:meth:`hold_outbox`) on such an item either committed
        first, and its item is released (or looked at again) here, or waits for this commit and
        then finds the patient's Consents changed."""
        with self._write() as conn:
            instant = now_instant()
            if version > 1:
                _, instant = self._next_version(conn, new, version - 1)
            records, instant = self._lock_documented(conn, documented, instant)
            written = [(new, version), *records]
            documents, replaced = self._write_versions(conn, written, instant)
            count = self._settle_holds(conn, now=now, released=released, waiting=waiting, recheck_at=recheck_at)
            self._index_patients(conn, [n for n, _ in written], replaced)
            instant, documents = self._stamp(conn, written, documents, instant)
            events = [*audit_events]
            if records and audit_documented is not None:
                events += audit_documented([f"{n.resource_type}/{n.id}/_history/{v}" for n, v in records])
            self._insert_audit(conn, [{"recorded": instant, "json": e} for e in events], locked=True)  # last
        return StoredResource(new.resource_type, new.id, version, instant, documents[0], new.facts, new.blob_sha256,
                              new.blob_range), count

    def holds_due(self, now: datetime, limit: int) -> list[tuple[int, Identifier]]:
        """See RecordStore.holds_due: one range of ix_outbox_due (status held, next_attempt_at up
        to ``now``), each item's patient from its DICOM instance; no lock (the release locks)."""
        if limit <= 0:
            return []
        due = select(_o.id, _d.patient_system, _d.patient_value) \
            .join(dicom_instances, _d.sop_instance_uid == _o.sop_instance_uid) \
            .where(_o.status == OUTBOX_HELD, _o.next_attempt_at <= to_utc(now)) \
            .order_by(_o.next_attempt_at, _o.id).limit(limit)
        with self._read() as conn:
            return [(row.id, Identifier(system=row.patient_system, value=row.patient_value))
                    for row in conn.execute(due)]

    def release_in_force(self, patient: Identifier, *, consents: Sequence[tuple[str, int]], items: Sequence[int],
                         now: datetime, documented: Sequence[tuple[NewResource, int]] = (),
                         released: Sequence[str] = (), recheck_at: datetime | None = None,
                         audit_documented: Callable[[Sequence[str]], Sequence[dict[str, Any]]] | None = None,
                         ) -> int | None:
        """See RecordStore.release_in_force: in :meth:`save_consent`'s order (the documented
        records' rows locked, then the items), then the patient's Consent versions read: not
        ``consents`` any more, the transaction is rolled back (None). A Consent write ordered
        after this one (waiting for its locks) finds the records written and the items
        released; one ordered before it is seen by that read (PostgreSQL READ COMMITTED: the
        statement after the locks sees it; SQLite: one writer at a time)."""
        try:
            with self._write() as conn:
                records, instant = self._lock_documented(conn, documented, now_instant())
                count = self._settle_holds(conn, now=now, released=released, items=items, recheck_at=recheck_at,
                                           earlier_only=False)
                found = [(row[0], row[1]) for row in conn.execute(self._patient_consent_versions,
                                                                    patient_params(patient))]
                if found != list(consents):
                    raise _ConsentsChanged
                if records:
                    documents, replaced = self._write_versions(conn, records, instant)
                    self._index_patients(conn, [n for n, _ in records], replaced)
                    instant, documents = self._stamp(conn, records, documents, instant)
                    events = audit_documented([f"{n.resource_type}/{n.id}/_history/{v}" for n, v in records]) \
                        if audit_documented is not None else []
                    self._insert_audit(conn, [{"recorded": instant, "json": e} for e in events], locked=True)  # last
        except _ConsentsChanged:
            return None
        return count

    @staticmethod
    def _lock_documented(conn: Connection, documented: Sequence[tuple[NewResource, int]],
                         instant: datetime) -> tuple[list[tuple[NewResource, int]], datetime]:
        """Lock (FOR UPDATE) the rows of the consent-pending records ``documented`` (each with the
        version it replaces) and return those still at that version, each with the version it is
        written as, and an instant after each of their versions' (and ``instant``)."""
        records: list[tuple[NewResource, int]] = []
        for record, over in documented:
            current = conn.execute(select(_r.version_id, _r.last_updated).where(
                _r.resource_type == record.resource_type, _r.id == record.id).with_for_update()).first()
            if current is None or current.version_id != over:
                continue  # changed meanwhile (entered in error, or documented by another Consent): left so
            instant = max(instant, current.last_updated + _MILLISECOND)
            records.append((record, over + 1))
        return records, instant

    def _write_versions(self, conn: Connection, written: Sequence[tuple[NewResource, int]], instant: datetime,
                        ) -> tuple[list[dict[str, Any]], dict[tuple[str, str], Claim | None]]:
        """Write the versions ``written`` (a first one inserted, a later one over the version
        before it, its row locked already) with their history and index rows, stamped
        ``instant``; their documents, and what each version replaced claimed (by type and id:
        :meth:`_replace_current`)."""
        run = self._inserts.execute
        documents = [with_meta(n, v, instant) for n, v in written]
        replaced: dict[tuple[str, str], Claim | None] = {}
        for (n, v), document in zip(written, documents, strict=True):
            if v == 1:
                run(conn, resources, resource_row(n, document, 1, instant))
            else:
                replaced[(n.resource_type, n.id)] = self._replace_current(conn, n, document, v, instant)
            run(conn, resource_history, history_row(n, document, v, instant))
            if rows := token_rows(n):
                run(conn, tokens, rows)
            if ranges := date_range_rows(n):
                run(conn, date_ranges, ranges)
        return documents, replaced

    @staticmethod
    def _settle_holds(conn: Connection, *, now: datetime, released: Sequence[str] = (), waiting: Sequence[str] = (),
                      items: Sequence[int] = (), recheck_at: datetime | None = None,
                      earlier_only: bool = True) -> int:
        """Release the held outbox items of the records ``released`` ("Media/<id>"): pending, due
        ``now``, attempts counted afresh, no last error; and look at the other held items of the
        records ``waiting``, and the held ``items``, again at ``recheck_at`` (``earlier_only``: only
        where that is earlier than the moment they have, and None changes nothing; otherwise
        None is never). All their items pending or held are read locked first, in one statement
        in the order of their ids (PostgreSQL FOR UPDATE; SQLite's write lock), so that two
        transactions settling the same items wait for each other rather than deadlock. How many
        were released."""
        def objects_of(records: Sequence[str]) -> Any:
            pairs = [tuple(r.split("/", 1)) for r in dict.fromkeys(records) if "/" in r]
            return select(_d.sop_instance_uid).where(or_(*(and_(_d.record_type == t, _d.record_id == i)
                                                           for t, i in pairs))) if pairs else None

        releasing, looking = objects_of(released), objects_of(waiting)
        which = [_o.sop_instance_uid.in_(q) for q in (releasing, looking) if q is not None]
        if items:
            which.append(_o.id.in_(list(items)))
        if not which:
            return 0
        rows = conn.execute(select(_o.id, _o.status, _o.sop_instance_uid).where(
            or_(*which), _o.status.in_([OUTBOX_PENDING, OUTBOX_HELD])).order_by(_o.id).with_for_update()).all()
        held = [row for row in rows if row.status == OUTBOX_HELD]
        if not held:
            return 0
        going = set(conn.execute(releasing).scalars()) if releasing is not None else set()
        release = [row.id for row in held if row.sop_instance_uid in going]
        recheck = [row.id for row in held if row.sop_instance_uid not in going]
        count = 0
        if release:
            count = int(conn.execute(update(outbox).where(_o.id.in_(release), _o.status == OUTBOX_HELD).values(
                status=OUTBOX_PENDING, attempts=0, next_attempt_at=to_utc(now), last_error=None,
                sending_since=None, updated=to_utc(now))).rowcount)
        if recheck and (recheck_at is not None or not earlier_only):
            moment = to_utc(recheck_at) if recheck_at is not None else _NOT_BY_THE_CLOCK
            looked = update(outbox).where(_o.id.in_(recheck), _o.status == OUTBOX_HELD)
            if earlier_only:
                looked = looked.where(_o.next_attempt_at > moment)
            conn.execute(looked.values(next_attempt_at=moment))
        return count

    def consent_pending_records(self, patient: Identifier) -> list[StoredResource]:
        """See RecordStore.consent_pending_records (by the index of the facts' patient)."""
        with self._read() as conn:
            rows = conn.execute(select(resources).where(
                _r.fact_patient_system == patient.system, _r.fact_patient_value == patient.value,
                _r.resource_type.in_(_PHOTO_RECORD_TYPES), _r.consent_pending == true(),
                or_(_r.entered_in_error.is_(None), _r.entered_in_error == false()))
                .order_by(_r.last_updated, _r.id)).mappings()
            return [stored_from_row(row) for row in rows]

    def append_audit(self, *events: dict[str, Any]) -> None:
        if not events:
            return
        now = now_instant()
        with self._write() as conn:
            self._insert_audit(conn, [{"recorded": now, "json": event} for event in events])

    # -- reads ----------------------------------------------------------------------------

    def find_receipt(self, *, idempotency_key: str | None = None, patient: Identifier | None = None,
                     stored_sha256: str | None = None, received_sha256: str | None = None) -> dict[str, Any] | None:
        """The receipt stored under ``idempotency_key``, else under (``patient``, ``stored_sha256``),
        else under (``patient``, ``received_sha256``) (ix_receipts_patient_received)."""
        lookups: list[tuple[Any, dict[str, str]]] = []
        if idempotency_key is not None:
            lookups.append((_RECEIPT_BY_KEY, {"key": idempotency_key}))
        if patient is not None and stored_sha256 is not None:
            lookups.append((_RECEIPT_BY_STORED, {"system": patient.system, "value": patient.value,
                                                 "stored": stored_sha256}))
        if patient is not None and received_sha256 is not None:
            lookups.append((_RECEIPT_BY_RECEIVED, {"system": patient.system, "value": patient.value,
                                                   "received": received_sha256}))
        if not lookups:
            raise ValueError("find_receipt needs an idempotency key, or a patient and a sha256")
        with self._read() as conn:
            for statement, params in lookups:
                found: dict[str, Any] | None = conn.execute(statement, params).scalar()
                if found is not None:
                    return found
        return None

    def find_keyed_receipt(self, idempotency_key: str) -> tuple[dict[str, Any], Identifier] | None:
        """See RecordStore.find_keyed_receipt: in ``receipts``, else in ``withdrawn_receipts``
        (the receipt then carries WITHDRAWN). One read transaction: a mark moving the receipt
        between the two lookups is seen before or after, never neither."""
        params = {"idempotency_key": idempotency_key}
        with self._read() as conn:
            row = conn.execute(_KEYED_RECEIPT, params).first()
            withdrawn = row is None
            if withdrawn:
                row = conn.execute(_KEYED_WITHDRAWN_RECEIPT, params).first()
        if row is None:
            return None
        receipt = {**row[0], WITHDRAWN: True} if withdrawn else row[0]
        return receipt, Identifier(system=row[1], value=row[2])

    def find_withdrawn_receipts(self, *, patient: Identifier, stored_sha256: str,
                                received_sha256: str | None = None) -> list[dict[str, Any]]:
        """See RecordStore.find_withdrawn_receipts (ix_withdrawn_receipts_patient_sha, and
        ix_withdrawn_receipts_patient_received: one indexed read each, in one transaction)."""
        params = {"system": patient.system, "value": patient.value, "stored": stored_sha256,
                  "received": received_sha256}
        found: dict[int, dict[str, Any]] = {}
        with self._read() as conn:
            for statement in ((_WITHDRAWN_BY_STORED,) if received_sha256 is None else
                              (_WITHDRAWN_BY_STORED, _WITHDRAWN_BY_RECEIVED)):
                found.update((seq, receipt) for seq, receipt in conn.execute(statement, params))
        return [{**found[seq], WITHDRAWN: True} for seq in sorted(found, reverse=True)]

    def filed_for_another_patient(self, *, patient: Identifier, stored_sha256: str) -> bool:
        """See RecordStore.filed_for_another_patient (ix_resources_blob: the rows of the blob)."""
        with self._read() as conn:
            return conn.execute(_FILED_FOR_ANOTHER, {"stored": stored_sha256, "system": patient.system,
                                                     "value": patient.value}).first() is not None

    def get(self, resource_type: str, id: str) -> StoredResource | None:
        with self._read() as conn:
            row = conn.execute(_RESOURCE, {"resource_type": resource_type, "id": id}).mappings().first()
        return stored_from_row(row) if row is not None else None

    def get_version(self, resource_type: str, id: str, version_id: int) -> dict[str, Any] | None:
        """The document of one version (current or past) as it was stored; None if there is none."""
        with self._read() as conn:
            found = conn.execute(select(resource_history.c.json).where(
                resource_history.c.resource_type == resource_type, resource_history.c.id == id,
                resource_history.c.version_id == version_id)).scalar()
        return found if isinstance(found, dict) else None

    def list_versions(self, resource_type: str, id: str, *, offset: int = 0, limit: int = 100,
                      since: datetime | None = None, before: int | None = None) -> list[dict[str, Any]]:
        """The documents of the resource's versions as they were stored, newest first (the
        primary key's range, read backwards)."""
        query = select(resource_history.c.json).where(*_versions_of(resource_type, id, since, before))
        with self._read() as conn:
            found = conn.execute(query.order_by(resource_history.c.version_id.desc()).offset(offset).limit(limit)) \
                .scalars().all()
        return [doc for doc in found if isinstance(doc, dict)]

    def count_versions(self, resource_type: str, id: str, *, since: datetime | None = None,
                       before: int | None = None) -> int:
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(resource_history)
                                    .where(*_versions_of(resource_type, id, since, before))).scalar_one())

    def get_many(self, resource_type: str, ids: Sequence[str]) -> list[StoredResource]:
        """Resources in the order of ``ids``; missing ones are left out."""
        wanted = list(dict.fromkeys(ids))
        found: dict[str, StoredResource] = {}
        with self._read() as conn:
            for start in range(0, len(wanted), _GET_MANY_CHUNK):
                chunk = wanted[start:start + _GET_MANY_CHUNK]
                stmt = select(resources).where(_r.resource_type == resource_type, _r.id.in_(chunk))
                for row in conn.execute(stmt).mappings():
                    found[row["id"]] = stored_from_row(row)
        return [found[i] for i in ids if i in found]

    def search_index(self, resource_type: str, criteria: SearchCriteria, *, descending: bool = False,
                     batch: int = SEARCH_BATCH) -> Iterator[IndexRow]:
        """Candidates ordered by last_updated then id (newest first when ``descending``; no JSON
        loaded), read ``batch`` rows at a time (keyset pages on (last_updated, id), each its own
        short read): memory stays bounded whatever the number of matches, and no connection is
        held between batches."""
        statement = search_statement(resource_type, criteria, descending=descending)
        after: tuple[datetime, str] | None = None
        while True:
            if after is None:
                page = statement
            elif descending:
                page = statement.where(
                    or_(_r.last_updated < after[0], and_(_r.last_updated == after[0], _r.id < after[1])))
            else:
                page = statement.where(
                    or_(_r.last_updated > after[0], and_(_r.last_updated == after[0], _r.id > after[1])))
            with self._read() as conn:
                rows = [index_row_from(row) for row in conn.execute(page.limit(batch)).mappings()]
            yield from rows
            if len(rows) < batch:
                return
            after = (rows[-1].last_updated, rows[-1].id)

    def latest_last_updated(self, resource_type: str) -> datetime | None:
        """The end of ix_resources_type_last_updated for the type (one row read)."""
        statement = select(_r.last_updated).where(_r.resource_type == resource_type) \
            .order_by(_r.last_updated.desc()).limit(1)
        with self._read() as conn:
            found = conn.execute(statement).scalar_one_or_none()
        return to_utc(found) if found is not None else None

    def consents_for_patient(self, patient: Identifier) -> list[StoredResource]:
        """Consent resources whose patient is ``patient``, oldest first."""
        with self._read() as conn:
            rows = conn.execute(self._patient_consents, patient_params(patient)).mappings()
            return [stored_from_row(row) for row in rows]

    def consent_versions_for_patient(self, patient: Identifier) -> list[tuple[str, int]]:
        """``(id, version_id)`` of :meth:`consents_for_patient`, in its order, no JSON loaded."""
        with self._read() as conn:
            return [(row[0], row[1]) for row in conn.execute(self._patient_consent_versions, patient_params(patient))]

    def list_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""
        if limit <= 0:
            return []
        with self._read() as conn:
            return list(conn.execute(select(audit.c.json).order_by(audit.c.seq.desc()).limit(limit)).scalars())

    def iter_audit(self, *, after: int = 0, since: datetime | None = None, until: datetime | None = None,
                   batch: int = 500) -> Iterator[tuple[int, dict[str, Any]]]:
        """(sequence number, AuditEvent) in the order they were stored, a batch at a time, each
        batch in its own short read (no read transaction held while the caller writes).

        ``since``/``until`` are on ``recorded``, which follows the sequence number except where
        concurrent writers committed a moment apart: the walk starts at the first event recorded
        AUDIT_SLACK before ``since`` (found with the recorded index) and stops at the first one
        recorded AUDIT_SLACK after ``until``; in between each event is kept or not on its own
        ``recorded``."""
        a = audit.c
        last, batch = max(0, after), max(1, batch)
        start = to_utc(since) if since is not None else None
        end = to_utc(until) if until is not None else None
        if start is not None:
            with self._read() as conn:
                first = conn.execute(select(a.seq).where(a.recorded >= start - AUDIT_SLACK)
                                     .order_by(a.recorded).limit(1)).scalar()
            if first is None:
                return
            last = max(last, int(first) - 1)
        while True:
            with self._read() as conn:
                rows = conn.execute(select(a.seq, a.recorded, a.json).where(a.seq > last)
                                    .order_by(a.seq).limit(batch)).all()
            for seq, recorded, event in rows:
                recorded = to_utc(recorded)
                if end is not None and recorded >= end + AUDIT_SLACK:
                    return
                if (start is None or recorded >= start) and (end is None or recorded < end):
                    yield int(seq), event
                last = int(seq)
            if len(rows) < batch:
                return

    def check_audit_chain(self, batch: int = 1000) -> ChainReport:
        """Walk the audit trail once, in sequence order, a batch at a time (bounded memory), and
        check its chain (adapter.store.audit_chain.check_chain) with this store's key, and the
        start's seal (adapter.store.audit_start.start_problem: ``start_problem``)."""
        if self._audit_key is None:
            raise ConfigurationError("the audit chain's key (audit.key in the data folder) is missing: the chain "
                                     "cannot be checked")
        with self._read() as conn:
            facts = read_start_facts(conn)
        report = check_chain(self._audit_key, facts.start, self._audit_rows(batch))
        report.start_problem = start_problem(self._audit_key, facts)
        return report

    def audit_chain_mac(self, seq: int) -> str | None:
        """The chain MAC stored with event ``seq`` (hex), None if it has none."""
        with self._read() as conn:
            mac: str | None = conn.execute(select(audit.c.chain_mac).where(audit.c.seq == seq)).scalar()
        return mac

    def _audit_rows(self, batch: int) -> Iterator[tuple[int, datetime, Any, str | None]]:
        a, last = audit.c, None
        while True:
            with self._maintenance_read() as conn:
                statement = select(a.seq, a.recorded, a.json, a.chain_mac).order_by(a.seq).limit(batch)
                rows = conn.execute(statement if last is None else statement.where(a.seq > last)).all()
            for seq, recorded, event, mac in rows:
                yield int(seq), to_utc(recorded), event, mac
            if len(rows) < batch:
                return
            last = int(rows[-1][0])

    # -- DICOM instances and the outbox --------------------------------------------------

    def find_dicom_instance(self, sop_instance_uid: str) -> DicomInstance | None:
        with self._read() as conn:
            row = conn.execute(_DICOM_INSTANCE, {"sop_instance_uid": sop_instance_uid}).mappings().first()
        return dicom_instance_from(row) if row is not None else None

    def check_hierarchy(self, *, study_instance_uid: str, series_instance_uid: str, patient: Identifier) -> None:
        """See RecordStore.check_hierarchy."""
        with self._read() as conn:
            _check_hierarchy(conn, study_instance_uid=study_instance_uid, series_instance_uid=series_instance_uid,
                             patient=patient)

    def studies_of_several_patients(self) -> list[tuple[str, list[str]]]:
        """See RecordStore.studies_of_several_patients. One grouped scan of the held instances
        (verify's, not a hot path)."""
        held = _HELD.add_columns(_d.study_instance_uid, _d.patient_system, _d.patient_value).subquery()
        mixed = (select(held.c.study_instance_uid)
                 .group_by(held.c.study_instance_uid)
                 .having(or_(func.count(distinct(held.c.patient_system)) > 1,
                             func.count(distinct(held.c.patient_value)) > 1)))
        with self._read() as conn:
            studies = [row[0] for row in conn.execute(mixed.order_by(held.c.study_instance_uid))]
            found: list[tuple[str, list[str]]] = []
            for study in studies:
                records = conn.execute(_HELD.with_only_columns(_d.record_type, _d.record_id)
                                       .where(_d.study_instance_uid == study)
                                       .order_by(_d.record_type, _d.record_id)).all()
                found.append((study, [f"{t}/{i}" for t, i in records if t and i]))
        return found

    def find_study_photo(self, study_instance_uid: str) -> DicomInstance | None:
        """See RecordStore.find_study_photo."""
        with self._read() as conn:
            row = conn.execute(_STUDY_PHOTO, {"study": study_instance_uid}).mappings().first()
        return dicom_instance_from(row) if row is not None else None

    def search_dicom_instances(self, *, study: str | None = None, series: str | None = None,
                               sop_instance: str | None = None, patient: Identifier | None = None,
                               patient_value: str | None = None, modality: str | None = None,
                               study_dates: tuple[str | None, str | None] | None = None,
                               accession_number: str | None = None, patient_name: NamePrefix | None = None,
                               study_description_prefix: str | None = None) -> list[DicomInstance]:
        """AND of the given criteria (exact matches; ``patient_value``: the identifier's value in
        any system; ``study_dates``: an inclusive YYYYMMDD range, open where None, which an
        instance without a StudyDate never matches; ``patient_name`` and
        ``study_description_prefix``: candidates by their match keys, RecordStore's docstring);
        ordered by study, series, created."""
        return self._dicom_instances(_dicom_search(
            study=study, series=series, sop_instance=sop_instance, patient=patient, patient_value=patient_value,
            modality=modality, study_dates=study_dates, accession_number=accession_number,
            patient_name=patient_name, study_description_prefix=study_description_prefix))

    def iter_dicom_instances(self, *, batch: int = _GET_MANY_CHUNK, patient_value: str | None = None,
                             modality: str | None = None, study_dates: tuple[str | None, str | None] | None = None,
                             accession_number: str | None = None, patient_name: NamePrefix | None = None,
                             study_description_prefix: str | None = None) -> Iterator[list[DicomInstance]]:
        """:meth:`search_dicom_instances`, in lists of at most ``batch`` instances, read from one
        streamed result: memory stays bounded whatever the number of instances, and a reader that
        has what it needs stops early (closing the generator ends the read)."""
        statement = _dicom_ordered(_dicom_search(
            patient_value=patient_value, modality=modality, study_dates=study_dates,
            accession_number=accession_number, patient_name=patient_name,
            study_description_prefix=study_description_prefix))
        with self._read() as conn:
            result = conn.execution_options(stream_results=True, yield_per=batch).execute(statement)
            for rows in result.mappings().partitions(batch):
                yield [dicom_instance_from(row) for row in rows]

    def _dicom_instances(self, statement: Select[Any]) -> list[DicomInstance]:
        """The instances ``statement`` selects, ordered by study, series, created."""
        with self._read() as conn:
            return [dicom_instance_from(row) for row in conn.execute(_dicom_ordered(statement)).mappings()]

    def search_released_dicom_instances(self, view: str, *, study: str | None = None,
                                        series: str | None = None,
                                        sop_instance: str | None = None) -> list[DicomInstance]:
        """Instances whose UIDs as ``view`` releases them are the given ones (index lookup)."""
        where = _equal((_u.study_instance_uid, study), (_u.series_instance_uid, series),
                       (_u.released_sop_instance_uid, sop_instance))
        if not where:
            raise ValueError("name at least one released UID")
        return self._dicom_instances(select(dicom_instances).join(
            dicom_released_uids, _u.sop_instance_uid == _d.sop_instance_uid).where(_u.view == view, *where))

    def index_released_uids(self, fingerprint: str,
                            rows_of: Callable[[DicomInstance], Sequence[ReleasedUids]]) -> int:
        """See RecordStore.index_released_uids. One transaction (SQLite: BEGIN IMMEDIATE;
        PostgreSQL: under an advisory lock), so processes starting together index once."""
        with self._maintain() as conn:
            if _fingerprint_locked(conn, _RELEASED_UIDS, _RELEASED_UIDS_LOCK) == fingerprint:
                return 0
            conn.execute(delete(dicom_released_uids))
            indexed, after = 0, ""
            while True:  # in chunks, by key: memory stays bounded whatever the number of instances
                chunk = conn.execute(select(dicom_instances).where(_d.sop_instance_uid > after)
                                     .order_by(_d.sop_instance_uid).limit(_GET_MANY_CHUNK)).mappings().all()
                if not chunk:
                    break
                instances = [dicom_instance_from(row) for row in chunk]
                if rows := [released_uids_row(r) for i in instances for r in rows_of(i)]:
                    self._inserts.execute(conn, dicom_released_uids, rows)
                indexed += len(instances)
                after = instances[-1].sop_instance_uid
            self._set_fingerprint(conn, _RELEASED_UIDS, fingerprint)
        return indexed

    def fill_dicom_match_keys(self, batch: int = _GET_MANY_CHUNK) -> int:
        """See RecordStore.fill_dicom_match_keys. One index lookup when every instance has its
        keys (every start but the first after the upgrade). Otherwise a walk over the primary
        key, a batch per write transaction, which writes the keys of the instances without: a
        keyset walk reads each row once on both databases, where a repeated ``WHERE key IS
        NULL`` may be planned as a scan or a sort of what is left at each batch. Two processes
        filling at once write the same values."""
        with self._maintenance_read() as conn:
            if conn.execute(select(_d.sop_instance_uid).where(_d.patient_name_key.is_(None)).limit(1)).first() is None:
                return 0
        filled, after = 0, ""
        while True:
            with self._maintain() as conn:
                rows = conn.execute(select(_d.sop_instance_uid, _d.patient_name, _d.study_description,
                                           _d.patient_name_key).where(_d.sop_instance_uid > after)
                                    .order_by(_d.sop_instance_uid).limit(batch)).all()
                keys = [(uid, match_keys(name, description)) for uid, name, description, key in rows if key is None]
                _set_instance_columns(conn, keys)
            filled += len(keys)
            if len(rows) < batch:
                return filled
            after = rows[-1][0]

    def fill_dicom_attributes(self, attributes_of: Callable[[DicomInstance], InstanceAttributes | None],
                              batch: int = _GET_MANY_CHUNK) -> int:
        """See RecordStore.fill_dicom_attributes. The unread instances are found through their
        partial index (empty once filled: every start but the first after the upgrade is one
        lookup), a batch at a time by primary key: read, then ``attributes_of`` (which reads the
        objects, through this store too) with no transaction open, then written in one write
        transaction; an instance ``attributes_of`` cannot read now (None) stays unread
        for the next fill. Two processes filling at once write the same values."""
        filled, after = 0, ""
        while True:
            with self._maintenance_read() as conn:
                rows = conn.execute(select(dicom_instances).where(_d.attributes_read.is_(None),
                                                                  _d.sop_instance_uid > after)
                                    .order_by(_d.sop_instance_uid).limit(batch)).mappings().all()
            instances = [dicom_instance_from(row) for row in rows]
            read = [(i, attributes_of(i)) for i in instances]  # None: not now, left unread
            values = [(i.sop_instance_uid, attribute_columns(a)) for i, a in read if a is not None]
            if values:
                with self._maintain() as conn:
                    _set_instance_columns(conn, values)
            filled += len(values)
            if len(rows) < batch:
                return filled
            after = instances[-1].sop_instance_uid

    def stored_fingerprints(self) -> dict[str, str]:
        """See RecordStore.stored_fingerprints."""
        with self._read() as conn:
            return {name: fingerprint for name, fingerprint in conn.execute(select(_k.name, _k.fingerprint))}

    def record_fingerprint(self, name: str, fingerprint: str) -> None:
        """See RecordStore.record_fingerprint."""
        with self._maintain() as conn:
            if conn.dialect.name == "postgresql":  # processes starting together: one after the other
                lock_in_schema(conn, _FINGERPRINT_LOCK)
            self._set_fingerprint(conn, name, fingerprint)

    def claim_fingerprint(self, name: str, make: Callable[[], str | None]) -> str | None:
        """See RecordStore.claim_fingerprint (SQLite: the write transaction is the lock)."""
        with self._maintain() as conn:
            if conn.dialect.name == "postgresql":
                lock_in_schema(conn, _FINGERPRINT_LOCK)
            recorded: str | None = conn.execute(select(_k.fingerprint).where(_k.name == name)).scalar()
            if recorded is not None:
                return recorded
            made = make()
            if made is not None:
                self._set_fingerprint(conn, name, made)
            return made

    def _set_fingerprint(self, conn: Connection, name: str, fingerprint: str) -> None:
        conn.execute(delete(key_fingerprints).where(_k.name == name))
        self._inserts.execute(conn, key_fingerprints, {"name": name, "fingerprint": fingerprint,
                                                       "updated": now_instant()})

    def reindex_records(self, version: str, index_of: Callable[[dict[str, Any]], SearchIndex],
                        batch: int = 500) -> int:
        """See RecordStore.reindex_records. One write transaction (the rebuild lock: another
        process starting at the same time finds the new version and does nothing); the rows are
        read in keyset batches inside it."""
        with self._maintenance_read() as conn:
            if conn.execute(select(_k.fingerprint).where(_k.name == _SEARCH_INDEX)).scalar() == version:
                return 0
        count = 0
        t = tokens.c
        with self._maintain() as conn:
            if _fingerprint_locked(conn, _SEARCH_INDEX, _SEARCH_INDEX_LOCK) == version:
                return 0
            after = ("", "")
            while True:
                rows = conn.execute(_resources_after(after, _r.resource_type.in_(_RECORD_TYPES), batch,
                                                     _r.json)).all()
                # a batch at a time: one executemany of updates, one delete and one insert of tokens
                # and of date ranges
                values, token_values, range_values = [], [], []
                for rtype, rid, document in rows:
                    index = index_of(document)
                    values.append({"rt": rtype, "rid": rid, "d": index.date, "c": index.creation, "s": index.status,
                                   "pr": index.patient_reference, "dl": last_instant(index.date, index.date_last),
                                   "cl": last_instant(index.creation, index.creation_last)})
                    new = NewResource(rtype, rid, document, index)
                    token_values += token_rows(new)
                    range_values += date_range_rows(new)
                if values:
                    conn.execute(update(resources).where(_r.resource_type == bindparam("rt"), _r.id == bindparam("rid"))
                                 .values(date=bindparam("d"), creation=bindparam("c"), status=bindparam("s"),
                                         patient_reference=bindparam("pr"), date_last=bindparam("dl"),
                                         creation_last=bindparam("cl")), values)
                for rtype in {v["rt"] for v in values}:
                    rids = [v["rid"] for v in values if v["rt"] == rtype]
                    conn.execute(delete(tokens).where(t.resource_type == rtype, t.id.in_(rids)))
                    conn.execute(delete(date_ranges).where(date_ranges.c.resource_type == rtype,
                                                           date_ranges.c.id.in_(rids)))
                if token_values:
                    conn.execute(tokens.insert(), token_values)
                if range_values:
                    conn.execute(date_ranges.insert(), range_values)
                count += len(rows)
                if len(rows) < batch:
                    break
                after = (rows[-1][0], rows[-1][1])
            self._set_fingerprint(conn, _SEARCH_INDEX, version)
        return count

    def reindex_photo_study_dates(self, version: str,
                                  study_of: Callable[[dict[str, Any]], tuple[str | None, str | None, str] | None],
                                  batch: int = _GET_MANY_CHUNK) -> int:
        """See RecordStore.reindex_photo_study_dates. As :meth:`reindex_records`: one write
        transaction under the rebuild lock, the studies read with their instances and records in
        keyset batches of studies inside it; only an instance whose values change is written."""
        with self._maintenance_read() as conn:
            if conn.execute(select(_k.fingerprint).where(_k.name == _PHOTO_STUDY_DATES)).scalar() == version:
                return 0
        changed = 0
        with self._maintain() as conn:
            if _fingerprint_locked(conn, _PHOTO_STUDY_DATES, _PHOTO_STUDY_DATES_LOCK) == version:
                return 0
            after = ""
            while True:
                studies = conn.execute(
                    select(_d.study_instance_uid).where(_d.blob_sha256.is_(None), _d.study_instance_uid > after)
                    .group_by(_d.study_instance_uid).order_by(_d.study_instance_uid).limit(batch)).scalars().all()
                if not studies:
                    break
                rows = conn.execute(
                    select(_d.study_instance_uid, _d.sop_instance_uid, _d.study_date, _d.study_time,
                           _d.timezone_offset, _r.json)
                    .join(resources, and_(_r.resource_type == _d.record_type, _r.id == _d.record_id))
                    .where(_d.blob_sha256.is_(None), _d.study_instance_uid.in_(studies))
                    .order_by(_d.study_instance_uid, _d.created, _d.sop_instance_uid)).all()
                values = []
                for _study, members in groupby(rows, key=lambda row: row[0]):
                    group = list(members)
                    study = study_of(group[0][5])  # the study's first photo's
                    if study is None:  # left as it is
                        continue
                    values += [{"uid": uid, "sd": study[0], "st": study[1], "tz": study[2]}
                               for _, uid, old_date, old_time, old_offset, _document in group
                               if (old_date, old_time, old_offset) != study]
                if values:
                    conn.execute(update(dicom_instances).where(_d.sop_instance_uid == bindparam("uid"))
                                 .values(study_date=bindparam("sd"), study_time=bindparam("st"),
                                         timezone_offset=bindparam("tz")), values)
                changed += len(values)
                if len(studies) < batch:
                    break
                after = studies[-1]
            self._set_fingerprint(conn, _PHOTO_STUDY_DATES, version)
        return changed

    def index_pseudonyms(self, fingerprint: str, pseudonym_of: Callable[[Identifier], str]) -> int:
        """See RecordStore.index_pseudonyms. Only a new key takes the write lock for long (to
        empty the index); finding the patients the index lacks is a read, and adding them an
        insert that skips rows another process added meanwhile. From then on every write of this
        store adds the pseudonyms of the patients it names, in its own transaction."""
        self._pseudonym_of = pseudonym_of
        with self._maintenance_read() as conn:
            current = conn.execute(select(_k.fingerprint).where(_k.name == _PSEUDONYMS)).scalar() == fingerprint
        if not current:
            with self._maintain() as conn:
                if _fingerprint_locked(conn, _PSEUDONYMS, _PSEUDONYMS_LOCK) != fingerprint:
                    conn.execute(delete(patient_pseudonyms))
                    self._set_fingerprint(conn, _PSEUDONYMS, fingerprint)
        missing = select(_r.patient_system, _r.patient_value).distinct().select_from(
            resources.outerjoin(patient_pseudonyms, and_(_p.patient_system == _r.patient_system,
                                                         _p.patient_value == _r.patient_value))
        ).where(_r.patient_system.is_not(None), _r.patient_value.is_not(None), _p.pseudonym.is_(None))
        with self._maintenance_read() as conn:
            # in the order every writer inserts them (_index_pseudonyms), whatever the scan's
            patients = sorted((Identifier(system=s, value=v) for s, v in conn.execute(missing)),
                              key=_insert_order)
        if not patients:
            return 0
        rows = [{"pseudonym": pseudonym_of(p), "patient_system": p.system, "patient_value": p.value}
                for p in patients]  # computed before the write lock is taken
        with self._maintain() as conn:
            for start in range(0, len(rows), _GET_MANY_CHUNK):
                conn.execute(self._insert_pseudonyms, rows[start:start + _GET_MANY_CHUNK])
        return len(patients)

    def find_pseudonymised(self, pseudonyms: Sequence[str]) -> list[Identifier]:
        """See RecordStore.find_pseudonymised."""
        if not pseudonyms:
            return []
        with self._read() as conn:
            rows = conn.execute(select(_p.patient_system, _p.patient_value)
                                .where(_p.pseudonym.in_(list(dict.fromkeys(pseudonyms))))
                                .order_by(_p.patient_system, _p.patient_value))
            return [Identifier(system=s, value=v) for s, v in rows]

    def claim_outbox(self, now: datetime, limit: int, *, exclude: Collection[str] = ()) -> list[OutboxItem]:
        """Pending items due at ``now``, oldest due first, leased: their next_attempt_at moves
        ``outbox_lease`` ahead in the same transaction, so another forwarder (thread or process)
        does not claim them until the lease runs out. A forwarder that dies mid-send leaves its
        items to be claimed again after the lease. The returned items carry the lease end.

        PostgreSQL locks the chosen rows with SKIP LOCKED (concurrent claimers take different
        items); SQLite serialises writers (BEGIN IMMEDIATE).
        """
        if limit <= 0:
            return []
        now = to_utc(now)
        lease_end = now + self._outbox_lease
        due = select(_o.id).where(_o.status == OUTBOX_PENDING, _o.next_attempt_at <= now)
        if exclude:
            due = due.where(_o.destination.not_in(sorted(exclude)))
        due = due.order_by(_o.next_attempt_at, _o.id).limit(limit).with_for_update(skip_locked=True)
        with self._write() as conn:
            claimed = list(conn.execute(due).scalars())
            if not claimed:
                return []
            conn.execute(update(outbox).where(_o.id.in_(claimed)).values(next_attempt_at=lease_end))
            rows = {row["id"]: outbox_item_from(row)
                    for row in conn.execute(select(outbox).where(_o.id.in_(claimed))).mappings()}
        return [rows[i] for i in claimed]

    def _finish_attempt(self, item_id: int, values: dict[str, Any], *conditions: Any,
                        audit_events: Sequence[dict[str, Any]] = ()) -> bool:
        """Count an attempt of item ``item_id`` where ``conditions`` hold, with ``audit_events``
        in the same transaction; False when the item exists but they do not (NotFound when it
        does not exist), and nothing is audited."""
        with self._write() as conn:
            result = conn.execute(update(outbox).where(_o.id == item_id, *conditions)
                                  .values(attempts=_o.attempts + 1, sending_since=None, **values))
            if result.rowcount == 1:
                self._insert_audit(conn, [{"recorded": now_instant(), "json": e} for e in audit_events])  # last
                return True
            if conn.execute(select(_o.id).where(_o.id == item_id)).first() is None:
                raise NotFound("no outbox item with this id")
        return False

    def start_outbox_send(self, item_id: int, *, claimed_until: datetime, now: datetime) -> bool:
        """See RecordStore.start_outbox_send: one conditional update of the item's row (pending,
        its lease end still ``claimed_until``), which a mark entered-in-error that cancelled the
        item first (status cancelled) makes fail, and which that mark, coming after, finds done
        (the row locked by whichever writes first: PostgreSQL's row lock, SQLite's write lock)."""
        with self._write() as conn:
            return int(conn.execute(update(outbox).where(
                _o.id == item_id, _o.status == OUTBOX_PENDING, _o.next_attempt_at == to_utc(claimed_until))
                .values(sending_since=to_utc(now))).rowcount) == 1

    def mark_outbox_sent(self, item_id: int, now: datetime, audit_events: Sequence[dict[str, Any]] = (),
                         last_error: str | None = None) -> None:
        """The item was stored by its destination: status sent; the attempt is counted. An
        acknowledgement is a fact whoever reports it, claim or no claim. ``audit_events`` (the
        disclosure's) commit with it: a process dying right after the commit has audited what
        it marked sent, which is never sent, nor audited, again. ``last_error``: the PACS's
        Warning status, when it stored the object with one (cut as :meth:`mark_outbox_retry`)."""
        error = last_error[:_LAST_ERROR_MAX] if last_error else None
        self._finish_attempt(item_id, {"status": OUTBOX_SENT, "last_error": error, "updated": to_utc(now)},
                             audit_events=audit_events)

    def mark_outbox_retry(self, item_id: int, *, next_attempt_at: datetime, error: str, now: datetime,
                          give_up: bool = False, claimed_until: datetime | None = None,
                          audit_events: Sequence[dict[str, Any]] = ()) -> bool:
        """Count a failed attempt and keep ``error`` (cut to 1000 characters; callers keep patient
        data out of it); due again at ``next_attempt_at``, or status failed when ``give_up``.
        ``audit_events`` (the attempt's) commit with it, as a disclosure's do with
        :meth:`mark_outbox_sent`.

        Only a pending item changes: a failure reported late, by a forwarder whose lease ran out
        while another claimed the item again and had it acknowledged, never puts a sent item back
        (it would be sent again). With ``claimed_until`` (the lease end of the reporter's claim)
        only while that claim holds: a stale report does not move another forwarder's lease.
        Returns whether the report was recorded (its ``audit_events`` are stored only then)."""
        conditions = [_o.status == OUTBOX_PENDING]
        if claimed_until is not None:
            conditions.append(_o.next_attempt_at == to_utc(claimed_until))
        return self._finish_attempt(item_id, {
            "status": OUTBOX_FAILED if give_up else OUTBOX_PENDING, "next_attempt_at": to_utc(next_attempt_at),
            "last_error": error[:_LAST_ERROR_MAX], "updated": to_utc(now)}, *conditions, audit_events=audit_events)

    def hold_outbox(self, item_id: int, *, claimed_until: datetime, patient: Identifier,
                    consents: Sequence[tuple[str, int]], error: str, now: datetime,
                    audit_events: Sequence[dict[str, Any]] = (), recheck_at: datetime | None = None) -> bool:
        """See RecordStore.hold_outbox: one conditional update of the item's row (pending, its
        lease end still ``claimed_until``; held, its next_attempt_at the moment its hold is looked
        at again, or :data:`_NOT_BY_THE_CLOCK`), which locks it, then the patient's Consent versions
        read: not ``consents`` any more, the transaction is rolled back (False). A Consent write
        releasing the item (:meth:`save_consent`) reads the row locked: ordered with this hold on
        it, it either finds the item held, or has committed its Consent before the versions are
        read here (PostgreSQL READ COMMITTED: the statement after the lock sees it; SQLite: one
        writer at a time)."""
        try:
            with self._write() as conn:
                held = conn.execute(update(outbox).where(
                    _o.id == item_id, _o.status == OUTBOX_PENDING, _o.next_attempt_at == to_utc(claimed_until))
                    .values(status=OUTBOX_HELD, attempts=_o.attempts + 1, sending_since=None,
                            last_error=error[:_LAST_ERROR_MAX], updated=to_utc(now),
                            next_attempt_at=to_utc(recheck_at) if recheck_at is not None else _NOT_BY_THE_CLOCK,
                            )).rowcount == 1
                if not held:
                    return False
                found = [(row[0], row[1]) for row in conn.execute(self._patient_consent_versions,
                                                                    patient_params(patient))]
                if found != list(consents):
                    raise _ConsentsChanged
                self._insert_audit(conn, [{"recorded": now_instant(), "json": e} for e in audit_events])  # last
        except _ConsentsChanged:
            return False
        return True

    def renew_outbox_claims(self, items: Sequence[OutboxItem], now: datetime) -> list[OutboxItem]:
        """See RecordStore.renew_outbox_claims: a claim is held while the item is pending and its
        next_attempt_at is still the lease end that claim (or its last renewal) gave it; no other
        claim can give the same one (it is claimed only once that lease end has passed, and
        leases it a full lease ahead of its own, later, now)."""
        if not items:
            return []
        lease_end = to_utc(now) + self._outbox_lease
        held: list[OutboxItem] = []
        with self._write() as conn:
            for item in items:
                result = conn.execute(update(outbox).where(
                    _o.id == item.id, _o.status == OUTBOX_PENDING,
                    _o.next_attempt_at == to_utc(item.next_attempt_at)).values(next_attempt_at=lease_end))
                if result.rowcount == 1:
                    held.append(dataclasses.replace(item, next_attempt_at=lease_end))
        return held

    def requeue_outbox(self, *, now: datetime, ids: Sequence[int] | None = None,
                       destination: str | None = None,
                       audit: Callable[[Sequence[tuple[OutboxItem, DicomInstance | None]]],
                                       Sequence[dict[str, Any]]] | None = None) -> int:
        """Failed items (all, those of ``ids``, or those for ``destination``) pending again, due
        ``now``, with a fresh count of attempts; their last error stays. Returns how many.

        With ``audit``, the items are read first in the same transaction (locked: PostgreSQL
        FOR UPDATE, SQLite's write lock), then those very items are requeued, and the events
        ``audit`` makes of them (each item with its DICOM instance) are inserted last: what the
        audit names is what was requeued, committed together. It is called also when nothing
        matched (an empty sequence)."""
        if ids is not None and not ids and audit is None:
            return 0
        matching = [_o.status == OUTBOX_FAILED]
        if ids is not None:
            matching.append(_o.id.in_(list(ids)) if ids else false())
        if destination is not None:
            matching.append(_o.destination == destination)
        requeue = update(outbox).values(status=OUTBOX_PENDING, attempts=0, next_attempt_at=to_utc(now),
                                        updated=to_utc(now), sending_since=None)
        with self._write() as conn:
            if audit is None:
                return int(conn.execute(requeue.where(*matching)).rowcount)
            # by id, in batches: a failure recorded meanwhile by a forwarder (PostgreSQL: another
            # row, not locked) is not requeued unnamed
            items = [outbox_item_from(row) for row in conn.execute(
                select(outbox).where(*matching).order_by(_o.id).with_for_update()).mappings()]
            count = 0
            instances: dict[str, DicomInstance] = {}
            for start in range(0, len(items), _IN_BATCH):
                batch = items[start:start + _IN_BATCH]
                count += int(conn.execute(requeue.where(
                    _o.status == OUTBOX_FAILED, _o.id.in_([i.id for i in batch]))).rowcount)
                uids = list(dict.fromkeys(i.sop_instance_uid for i in batch if i.sop_instance_uid not in instances))
                for row in conn.execute(select(dicom_instances).where(_d.sop_instance_uid.in_(uids))).mappings():
                    instances[row["sop_instance_uid"]] = dicom_instance_from(row)
            events = audit([(i, instances.get(i.sop_instance_uid)) for i in items])
            self._insert_audit(conn, [{"recorded": now_instant(), "json": e} for e in events])  # last
        return count

    def outbox_counts(self) -> dict[str, int]:
        """How many outbox items are in each status (the statuses with none left out)."""
        with self._read() as conn:
            rows = conn.execute(select(_o.status, func.count()).group_by(_o.status)).all()
        return {str(status): int(count) for status, count in rows}

    def list_outbox(self, *, status: str | None = None, limit: int = 100) -> list[OutboxItem]:
        """Oldest first (by id)."""
        if limit <= 0:
            return []
        statement = select(outbox).order_by(_o.id).limit(limit)
        if status is not None:
            statement = statement.where(_o.status == status)
        with self._read() as conn:
            return [outbox_item_from(row) for row in conn.execute(statement).mappings()]

    def iter_blob_references(self, batch: int = 1000) -> Iterator[BlobReference]:
        """Every blob the store refers to: current resources with bytes, then the DICOM objects
        as received; a batch at a time, each batch in its own short read."""
        after: tuple[str, str] = ("", "")
        while True:
            with self._read() as conn:
                rows = conn.execute(_resources_after(after, _r.blob_sha256.is_not(None), batch,
                                                     _r.blob_sha256, _r.blob_offset, _r.blob_length)).all()
            for rtype, rid, sha, offset, length in rows:
                yield BlobReference(f"{rtype}/{rid}", sha, offset, length)
            if len(rows) < batch:
                break
            after = (rows[-1][0], rows[-1][1])
        last = ""
        while True:
            with self._read() as conn:
                objects = conn.execute(
                    select(_d.sop_instance_uid, _d.record_type, _d.record_id, _d.blob_sha256)
                    .where(_d.blob_sha256.is_not(None), _d.sop_instance_uid > last)
                    .order_by(_d.sop_instance_uid).limit(batch)).all()
            for _uid, rtype, rid, sha in objects:
                yield BlobReference(f"DICOM object of {rtype}/{rid}", sha)
            if len(objects) < batch:
                break
            last = objects[-1][0]

    def referenced_blobs(self, addresses: Sequence[str]) -> set[str]:
        """Those of ``addresses`` (blob SHA-256s) that a current resource or a DICOM object as
        received refers to, as committed when each read begins (reads of at most
        _REFERENCED_CHUNK addresses, through the indexes of schema 11)."""
        found: set[str] = set()
        wanted = list(dict.fromkeys(addresses))
        for start in range(0, len(wanted), _REFERENCED_CHUNK):
            chunk = wanted[start:start + _REFERENCED_CHUNK]
            statement = union(select(_r.blob_sha256).where(_r.blob_sha256.in_(chunk)),
                              select(_d.blob_sha256).where(_d.blob_sha256.in_(chunk)))
            with self._read() as conn:
                found.update(str(sha) for sha in conn.execute(statement).scalars())
        return found

    def ping(self) -> int:
        """The schema version, read through a pooled connection: the store answers (readiness),
        holds every table of this adapter's schema, at the version it runs. A database emptied,
        restored in part or replaced under a running adapter (a wrong volume, a recreated
        PostgreSQL database) fails here, not at the next request of each kind."""
        with self._read() as conn:
            version = int(conn.execute(select(func.max(schema_version.c.version))).scalar() or 0)
            missing = sorted(set(metadata.tables) - set(inspect(conn).get_table_names()))
        if missing:
            raise StorageError(f"the database lacks table(s) of the adapter's schema: {', '.join(missing)}")
        if version > SCHEMA_VERSION:
            raise StorageError(f"the database has schema version {version}, newer than this adapter's "
                               f"{SCHEMA_VERSION}: another version of the adapter upgraded it; stop or upgrade "
                               "this instance")
        if version != SCHEMA_VERSION:
            raise StorageError(f"the database has schema version {version}; this adapter runs {SCHEMA_VERSION}")
        return version

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()


def _unsealable_as_the_key_is_made(facts: StartFacts) -> str | None:
    """Why a start that makes the audit key now must not seal the trail's start (so refuses to
    start), or None: one already sealed has a key this folder lacks; else the start must be one
    no event could be chained from (adapter.store.audit_start.sealing_refusal)."""
    if facts.seal is not None:
        return ("the chain's start is sealed (key_fingerprints audit-start-mac), so under an audit key, but the data "
                "folder has no audit.key: restore the audit.key backed up with the database")
    why = sealing_refusal(None, facts, fresh=True)
    return f"the chain's start cannot be sealed under a new audit key: {why}" if why else None


def _sqlite_unreadable(path: Path, exc: sqlite3.Error) -> StorageError:
    """A SQLite database that ``check`` could not open read-only: a WAL database in a folder that
    cannot be written cannot be opened at all (its shared-memory file cannot be made), which is
    said as such, with the folder and errno, not as a file that "cannot be read" (ops review 5)."""
    problem = folder_write_problem(path.parent)
    if problem is not None:
        return StorageError(f"the SQLite database {path} cannot be opened ({type(exc).__name__}): {problem}")
    return StorageError(f"the SQLite database {path} cannot be read ({type(exc).__name__})")


def _sqlite_file_exists(path: Path) -> bool:
    """Whether the SQLite database file ``path`` is there; StorageError when its folder cannot be
    looked in (this user may not read it: a PermissionError traceback from ``check``)."""
    try:
        return path.is_file()
    except OSError as exc:
        raise StorageError(unreadable_problem(path, exc)) from exc


def read_key_fingerprints(database_url: str, timeouts: DatabaseTimeouts | None = None) -> dict[str, str]:
    """The key_fingerprints rows (name to fingerprint) of the database at ``database_url``
    (``python -m adapter check``: the keys and data folder the store was made with), empty when
    it holds none; reads only, as :func:`read_schema_version` does."""
    url = check_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        import sqlite3

        path = Path(url.database or "").expanduser()
        if not _sqlite_file_exists(path):
            return {}
        try:
            with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=(timeouts or DatabaseTimeouts()).connect)) as conn:
                if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (key_fingerprints.name,)).fetchone() is None:
                    return {}
                rows = conn.execute(f"SELECT name, fingerprint FROM {key_fingerprints.name}").fetchall()
        except sqlite3.Error as exc:
            raise _sqlite_unreadable(path, exc) from exc
        return {str(name): str(fingerprint) for name, fingerprint in rows}
    engine = create_store_engine(database_url, pool_size=1, max_overflow=0,
                                 timeouts=timeouts or DatabaseTimeouts(statement=10, lock=5))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(key_fingerprints.name):
                return {}
            return {name: fingerprint for name, fingerprint in conn.execute(select(_k.name, _k.fingerprint))}
    except SQLAlchemyError as exc:
        raise StorageError(f"the database cannot be read: {describe_failure(exc)}") from exc
    finally:
        engine.dispose()


def read_schema_version(database_url: str, timeouts: DatabaseTimeouts | None = None) -> int | None:
    """The schema version of the database at ``database_url`` (``python -m adapter check``), None
    when it holds no record store of the adapter yet (a SQLite file not made yet, an empty
    PostgreSQL database): connects, bounded by the connect timeout, and creates and writes nothing
    (SQLite: opened read-only). StorageError naming why (the driver's message for a failure to
    connect: host, port, database, user; never a password) when it cannot be read."""
    url = check_database_url(database_url)
    if url.get_backend_name() == "sqlite":
        import sqlite3

        path = Path(url.database or "").expanduser()
        if not _sqlite_file_exists(path):
            return None
        try:
            with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True,
                                         timeout=(timeouts or DatabaseTimeouts()).connect)) as conn:
                if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'") \
                        .fetchone() is None:
                    return None
                found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        except sqlite3.Error as exc:
            raise _sqlite_unreadable(path, exc) from exc
        return None if found is None or found[0] is None else int(found[0])
    engine = create_store_engine(database_url, pool_size=1, max_overflow=0,
                                 timeouts=timeouts or DatabaseTimeouts(statement=10, lock=5))
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(schema_version.name):
                return None
            version = conn.execute(select(func.max(schema_version.c.version))).scalar()
    except SQLAlchemyError as exc:
        raise StorageError(f"the database cannot be reached or read: {describe_failure(exc)}") from exc
    finally:
        engine.dispose()
    return None if version is None else int(version)
