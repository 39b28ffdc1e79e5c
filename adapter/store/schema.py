"""The tables of the record store (SQLAlchemy Core), shared by SQLite and PostgreSQL.

JSON documents are TEXT on both backends, encoded by ``JsonText`` (not by the driver), so both
behave alike: a document comes back exactly as written, elements in the order the mapping
produced them (``resourceType`` first; ``jsonb`` would reorder them), and a value that is not
JSON fails the same way everywhere. Nothing queries inside the documents: searchable values
have columns of their own.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from adapter.errors import ConfigurationError
from adapter.json_decimal import dumps, loads
from adapter.model.record import MAX_IDEMPOTENCY_KEY, received_sha256_of
from adapter.store.dates import UtcDateTime, now_instant

_log = logging.getLogger(__name__)

#: Bump when the tables change, and add a migration step that upgrades the previous version.
#: 1: resources, history, tokens, receipts, audit. 2: dicom_instances and outbox (DICOM bridge).
#: 3: resources.blob_offset and blob_length (a Binary that is a byte range of a received object).
#: 4: dicom_released_uids and dicom_uid_spaces (the UIDs of the restricted views, indexed).
#: 5: an index of dicom_instances by patient identifier value (QIDO-RS by PatientID).
#: 6: patient_pseudonyms; key_fingerprints replaces dicom_uid_spaces (for both derived indexes).
#: 7: an index of dicom_instances by StudyDate (QIDO-RS by date or date range).
#: 8: dicom_instances.patient_name, study_description, accession_number (indexed), study_time (QIDO-RS).
#: 9: an index of audit by recorded (the audit export from an instant).
#: 10: resources.creation (IHE MHD ``creation``); records are re-indexed at start (reindex_records).
#: 11: indexes of resources and dicom_instances by blob (is a blob referenced? before it is removed).
#: 12: dicom_instances' match keys of PatientName and StudyDescription (indexed): QIDO-RS by name.
#: 13: dicom_instances' series and instance attributes of QIDO-RS (SeriesNumber, InstanceNumber,
#:     Rows, Columns…), read from the objects at start for the instances stored before.
#: 14: dicom_instances' study attributes of QIDO-RS (ReferringPhysicianName, PatientBirthDate,
#:     PatientSex, StudyID), read with the others by the same start-up fill (every instance again).
#: 15: date_ranges (a date search on a Period: ITI-67 ``period``; an R5 reader's ``date``, where a
#:     record's R5 date is not its R4 one); records and Consents are re-indexed at start.
#: 16: resources.entered_in_error (a record marked entered-in-error, and what it governs).
#: 17: outbox.sending_since (the forwarder's last check passed: the item's C-STORE-RQ goes out).
#: 18: audit.chain_mac (the audit trail's keyed hash chain, adapter.store.audit_chain) and the
#:     chain's start in key_fingerprints: the first sequence number after the events stored before.
#: 19: dicom_instances.object_version (how a posted photo's object is made, fixed at ingest:
#:     adapter.mapping.dicom_photo.PHOTO_OBJECT_VERSION; the instances stored before have none: 1).
#: 20: resources.date_last and creation_last (the last instants of a date's implicit range,
#:     search.html#date) and an index of date_last; records and Consents are re-indexed at start.
#: 21: the audit chain's start sealed under the chain's key, key_fingerprints audit-start-mac
#:     (adapter.store.audit_start): no table changes; written by the upgrade when the store is
#:     opened with its key, else by the start that makes the data folder's audit.key.
#: 22: patient_references (one literal Patient reference, one patient identifier: safety review 1),
#:     filled at the upgrade from the records and Consents stored (adapter.store.patient_references).
#: 23: withdrawn_receipts: the receipts of the records marked entered-in-error, moved out of
#:     ``receipts`` (whose unique (patient, stored SHA-256) they no longer hold, so the photo can be
#:     filed again); those of the records marked before are moved by the upgrade.
#: 24: receipts.received_sha256 and withdrawn_receipts.received_sha256 (indexed with the patient):
#:     a retry is found by the photo as received, whatever bytes the release that stored it kept
#:     (verify review 2, finding 1); filled at the upgrade from each receipt's ``sha256.received``.
SCHEMA_VERSION = 24
#: key_fingerprints' row holding the version of the records' search index (SqlRecordStore.reindex_records).
SEARCH_INDEX = "search-index"


#: A match key (dicom_instances.*_key): compared in code point order on both databases, so that
#: a range ``>= prefix AND < the next prefix`` holds exactly the values that start with the prefix
#: and the column's index serves it: SQLite's default BINARY collation is that order; on
#: PostgreSQL the column takes the "C" collation (the database's own, e.g. en_US, orders strings
#: by language rules: a prefix's values need not lie in one range, and a ``LIKE 'x%'`` uses a
#: btree only with ``text_pattern_ops`` or "C").
MatchKey = Text().with_variant(Text(collation="C"), "postgresql")


def _present_index(name: str, column: str) -> Index:
    """An index of the rows with a value in ``column`` (partial: most rows have none)."""
    present = text(f"{column} IS NOT NULL")
    return Index(name, column, sqlite_where=present, postgresql_where=present)


def _blob_index(name: str) -> Index:
    """An index of the rows that refer to a blob, by blob (partial: most rows refer to none)."""
    present = text("blob_sha256 IS NOT NULL")
    return Index(name, "blob_sha256", sqlite_where=present, postgresql_where=present)


class EncodedJson(str):
    """A JSON value encoded already (:meth:`of`), so a document written to two tables (a
    resource and its history row) is encoded once; JsonText stores it as it is."""

    __slots__ = ()

    @classmethod
    def of(cls, value: Any) -> EncodedJson:
        return cls(dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


class JsonText(TypeDecorator[Any]):
    """A JSON value kept as compact UTF-8 TEXT (an :class:`EncodedJson` is kept as it is)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        if type(value) is EncodedJson:
            return str.__str__(value)  # a plain str for the driver
        return dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    def process_result_value(self, value: str | None, dialect: Dialect) -> Any:
        return None if value is None else loads(value)  # a FHIR decimal as it was written


metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

# SQLite only autoincrements an INTEGER PRIMARY KEY.
_Serial = BigInteger().with_variant(Integer(), "sqlite")

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied", UtcDateTime, nullable=False),
)

resources = Table(
    "resources", metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("json", JsonText, nullable=False),
    # search index
    Column("patient_system", Text),
    Column("patient_value", Text),
    Column("patient_reference", Text),
    # a date is searched as the implicit range of its precision (search.html#date): ``date`` and
    # ``creation`` its first instant (also the key of ``_sort``), ``*_last`` its last (schema 20)
    Column("date", UtcDateTime),
    Column("status", String(64)),
    Column("creation", UtcDateTime),  # content.attachment.creation (IHE MHD ITI-67 ``creation``)
    Column("date_last", UtcDateTime),
    Column("creation_last", UtcDateTime),
    # access facts (AccessFacts); governed_by NULL means the resource has none
    Column("governed_by", String(140)),
    Column("fact_patient_system", Text),
    Column("fact_patient_value", Text),
    Column("kind", String(32)),
    Column("source", String(32)),
    Column("consent_pending", Boolean),
    Column("consent_ids", JsonText),
    # the record is entered-in-error (AccessFacts.entered_in_error): set on it and on every resource
    # it governs when it is so marked (schema 16; NULL for rows stored before: not in error)
    Column("entered_in_error", Boolean),
    Column("blob_sha256", String(64)),
    Column("blob_offset", BigInteger),  # with blob_length: the bytes are this range of the blob
    Column("blob_length", BigInteger),
    PrimaryKeyConstraint("resource_type", "id"),
    # Searches are per type and ordered by (last_updated, id): indexes lead with the type and
    # end with the order, so the planner has no reason to scan a whole type (SQLite keeps no
    # statistics unless ANALYZE runs).
    Index("ix_resources_type_last_updated", "resource_type", "last_updated", "id"),
    Index("ix_resources_patient", "resource_type", "patient_system", "patient_value", "last_updated", "id"),
    Index("ix_resources_patient_reference", "resource_type", "patient_reference"),
    Index("ix_resources_date", "resource_type", "date"),
    Index("ix_resources_date_last", "resource_type", "date_last"),  # gt, ge, eb: by the range's end
    Index("ix_resources_fact_patient", "fact_patient_system", "fact_patient_value"),
    _blob_index("ix_resources_blob"),
)

resource_history = Table(
    "resource_history", metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("json", JsonText, nullable=False),
    PrimaryKeyConstraint("resource_type", "id", "version_id"),
)

tokens = Table(
    "tokens", metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", Text),
    Column("code", Text, nullable=False),
    ForeignKeyConstraint(["resource_type", "id"], [resources.c.resource_type, resources.c.id],
                         ondelete="CASCADE"),
    Index("ix_tokens_param_code_system", "param", "code", "system"),
    Index("ix_tokens_resource", "resource_type", "id"),
)

#: Dates searched as ranges (search.html#date: a Period, or a date of day precision), one row per
#: (param, range) of a resource's search index: ``low`` its first instant, ``high`` its last (a
#: point has both the same); NULL an open end (a Period without end is still going on).
date_ranges = Table(
    "date_ranges", metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("low", UtcDateTime),
    Column("high", UtcDateTime),
    ForeignKeyConstraint(["resource_type", "id"], [resources.c.resource_type, resources.c.id],
                         ondelete="CASCADE"),
    Index("ix_date_ranges_param_low", "param", "low"),
    Index("ix_date_ranges_resource", "resource_type", "id"),
)

def _receipt_columns() -> list[Column[Any]]:
    """The columns of a stored receipt, the same in ``receipts`` and ``withdrawn_receipts`` (a
    receipt moves from one to the other as it is: the two must not drift apart)."""
    return [
        Column("seq", _Serial, primary_key=True, autoincrement=True),
        Column("idempotency_key", String(MAX_IDEMPOTENCY_KEY)),
        Column("patient_system", Text, nullable=False),
        Column("patient_value", Text, nullable=False),
        Column("stored_sha256", String(64), nullable=False),
        Column("recorded", UtcDateTime, nullable=False),
        Column("receipt", JsonText, nullable=False),
        # the SHA-256 of the photo as received (the receipt's sha256.received; schema 24): a retry's
        # bytes hash to it whatever the stripping of the release that stored it made of them
        Column("received_sha256", String(64)),
    ]


receipts = Table(
    "receipts", metadata,
    *_receipt_columns(),
    UniqueConstraint("idempotency_key", name="uq_receipts_idempotency_key"),
    UniqueConstraint("patient_system", "patient_value", "stored_sha256", name="uq_receipts_patient_sha"),
    Index("ix_receipts_patient_received", "patient_system", "patient_value", "received_sha256"),
)

#: The receipts of the records marked entered-in-error (adapter.store.sql mark_entered_in_error
#: moves a record's receipt here, in the mark's transaction): kept to answer a retry of the request
#: that stored it (refused: the device keeps the photo), no longer holding the unique (patient,
#: stored SHA-256) of ``receipts``, so the photo can be filed again for the patient (one more
#: withdrawn receipt per withdrawal). Its Idempotency-Key stays taken: an ingest looks a key up in
#: both tables before it stores anything. ``seq`` is its own (SQLite reuses a deleted row's
#: number in ``receipts``).
withdrawn_receipts = Table(
    "withdrawn_receipts", metadata,
    *_receipt_columns(),
    UniqueConstraint("idempotency_key", name="uq_withdrawn_receipts_idempotency_key"),
    Index("ix_withdrawn_receipts_patient_sha", "patient_system", "patient_value", "stored_sha256"),
    Index("ix_withdrawn_receipts_patient_received", "patient_system", "patient_value", "received_sha256"),
)

audit = Table(
    "audit", metadata,
    Column("seq", _Serial, primary_key=True, autoincrement=True),
    Column("recorded", UtcDateTime, nullable=False),
    Column("json", JsonText, nullable=False),
    # HMAC-SHA256 chaining the row to the one before (adapter.store.audit_chain), 64 hex digits;
    # NULL for the events stored before schema 18 (before the chain's recorded start)
    Column("chain_mac", String(64)),
    Index("ix_audit_recorded", "recorded"),  # the audit export from an instant (iter_audit)
)


# One SOP instance the adapter holds (received from a PACS, or generated from a photo with
# blob_sha256 NULL) and the FHIR record it belongs to. The primary key makes a SOP Instance UID
# arrive once: a second save of the same UID is a Conflict and writes nothing.
dicom_instances = Table(
    "dicom_instances", metadata,
    Column("sop_instance_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("sop_class_uid", String(64), nullable=False),
    Column("modality", String(16), nullable=False),
    Column("record_type", String(64), nullable=False),
    Column("record_id", String(64), nullable=False),
    Column("patient_system", Text, nullable=False),
    Column("patient_value", Text, nullable=False),
    Column("blob_sha256", String(64)),
    Column("study_date", String(8)),
    Column("created", UtcDateTime, nullable=False),
    Column("patient_name", Text),
    Column("study_description", Text),
    Column("accession_number", Text),
    Column("study_time", String(32)),
    # QIDO-RS match keys (schema 12), written with the instance (adapter.store.rows) and filled at
    # start for instances stored before (SqlRecordStore.fill_dicom_match_keys, which looks for a
    # NULL patient_name_key); NULL keys: not derived yet (the instance is a candidate of every
    # PatientName and StudyDescription search until they are). patient_name_key:
    # adapter.model.dicom.person_name_key of PatientName, "" for none; the ideographic and
    # phonetic keys: its second and third component groups (NULL when empty), the phonetic key ""
    # when the name has more groups than the three PS3.5 6.2 allows (then a candidate for every
    # one-group pattern, which is matched against each group); study_description_key:
    # StudyDescription as stored (its matching is case-sensitive), "" for none.
    Column("patient_name_key", MatchKey),
    Column("patient_name_ideographic_key", MatchKey),
    Column("patient_name_phonetic_key", MatchKey),
    Column("study_description_key", MatchKey),
    # What the object says of its series and of itself (schema 13; adapter.model.dicom
    # InstanceAttributes, read by adapter.mapping.dicom_qido), NULL where it has no usable value;
    # attributes_read: the INSTANCE_ATTRIBUTES_VERSION they were read with, NULL for not read yet
    # (stored before schema 13: SqlRecordStore.fill_dicom_attributes reads the objects at start).
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("pps_start_date", String(8)),    # PerformedProcedureStepStartDate
    Column("pps_start_time", String(16)),   # PerformedProcedureStepStartTime
    Column("timezone_offset", String(5)),   # TimezoneOffsetFromUTC
    Column("instance_number", Integer),
    Column("image_rows", Integer),
    Column("image_columns", Integer),
    Column("bits_allocated", Integer),
    Column("number_of_frames", Integer),
    Column("attributes_read", Integer),
    # What the object says of its study beside the columns above (schema 14; the same
    # InstanceAttributes, read and filled with them): ReferringPhysicianName as sent (PN),
    # PatientBirthDate (DA), PatientSex (CS), StudyID (SH).
    Column("referring_physician_name", Text),
    Column("patient_birth_date", String(8)),
    Column("patient_sex", String(16)),
    Column("study_id", String(16)),
    # How a posted photo's object is made (schema 19; adapter.mapping.dicom_photo
    # PHOTO_OBJECT_VERSION), fixed at ingest: every regeneration makes the object first made and
    # sent. NULL for a received object, and for a photo stored before (its object: version 1).
    Column("object_version", Integer),
    PrimaryKeyConstraint("sop_instance_uid", name="pk_dicom_instances"),
    Index("ix_dicom_instances_study", "study_instance_uid", "series_instance_uid", "created"),
    Index("ix_dicom_instances_series", "series_instance_uid"),
    Index("ix_dicom_instances_patient", "patient_system", "patient_value"),
    Index("ix_dicom_instances_patient_value", "patient_value"),
    Index("ix_dicom_instances_study_date", "study_date"),
    Index("ix_dicom_instances_accession_number", "accession_number"),
    _blob_index("ix_dicom_instances_blob"),
    Index("ix_dicom_instances_record", "record_type", "record_id"),
    Index("ix_dicom_instances_patient_name_key", "patient_name_key"),
    _present_index("ix_dicom_instances_patient_name_ideographic_key", "patient_name_ideographic_key"),
    _present_index("ix_dicom_instances_patient_name_phonetic_key", "patient_name_phonetic_key"),
    Index("ix_dicom_instances_study_description_key", "study_description_key"),
    # the instances whose attributes are not read yet (partial: after the fill, none)
    Index("ix_dicom_instances_attributes_unread", "sop_instance_uid",
          sqlite_where=text("attributes_read IS NULL"), postgresql_where=text("attributes_read IS NULL")),
)

# An instance's UIDs as each restricted view releases them (keyed hashes of the originals, which
# cannot be reversed), so that a reader naming released UIDs (WADO-RS, QIDO-RS under TRAIN or
# HRESCH) is answered by an index lookup, not by hashing every instance. Written in the
# transaction that stores the instance; rebuilt whole when the key that made them changes
# (key_fingerprints holds its fingerprint).
dicom_released_uids = Table(
    "dicom_released_uids", metadata,
    Column("view", String(16), nullable=False),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("study_instance_uid", String(64), nullable=False),
    Column("series_instance_uid", String(64), nullable=False),
    Column("released_sop_instance_uid", String(64), nullable=False),
    PrimaryKeyConstraint("view", "sop_instance_uid", name="pk_dicom_released_uids"),
    ForeignKeyConstraint(["sop_instance_uid"], [dicom_instances.c.sop_instance_uid]),
    Index("ix_dicom_released_uids_study", "view", "study_instance_uid"),
    Index("ix_dicom_released_uids_series", "view", "series_instance_uid"),
    Index("ix_dicom_released_uids_sop", "view", "released_sop_instance_uid"),
)

# The patients' keyed pseudonyms (the HRESCH view's subject), so that a reader in that view can
# search by the pseudonym it was shown: it cannot be reversed, only looked up. Filled from the
# patients the store holds (SqlRecordStore.index_pseudonyms); rebuilt when the key changes.
patient_pseudonyms = Table(
    "patient_pseudonyms", metadata,
    Column("pseudonym", String(64), nullable=False),
    Column("patient_system", Text, nullable=False),
    Column("patient_value", Text, nullable=False),
    PrimaryKeyConstraint("pseudonym", name="pk_patient_pseudonyms"),
    Index("ix_patient_pseudonyms_patient", "patient_system", "patient_value"),
)

# Which patient identifier each literal Patient reference names (schema 22): a record or Consent
# naming the reference with another identifier is refused in its writing transaction
# (adapter.store.patient_references); the primary key makes two concurrent writers of one
# reference wait for each other, so only one identifier is ever held. ``reference`` is the
# reference's ``Patient/<id>`` (an absolute URL's last two segments); ``disputed``: the upgrade to
# schema 22 found records of several identifiers holding it (the first stored kept it).
patient_references = Table(
    "patient_references", metadata,
    Column("reference", Text, nullable=False),
    Column("patient_system", Text, nullable=False),
    Column("patient_value", Text, nullable=False),
    Column("recorded", UtcDateTime, nullable=False),
    Column("disputed", Boolean, nullable=False),
    PrimaryKeyConstraint("reference", name="pk_patient_references"),
)

# The fingerprint of the key each derived index (dicom_released_uids, patient_pseudonyms) was
# computed with, one row per index, so a new key makes the adapter rebuild it at start.
key_fingerprints = Table(
    "key_fingerprints", metadata,
    Column("name", String(16), nullable=False),
    Column("fingerprint", String(64), nullable=False),
    Column("updated", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("name", name="pk_key_fingerprints"),
)

# The durable outbox: one row per (object, destination), written in the transaction that stores
# the object, so a forward is never lost nor queued twice.
outbox = Table(
    "outbox", metadata,
    Column("id", _Serial, primary_key=True, autoincrement=True),
    Column("sop_instance_uid", String(64), nullable=False),
    Column("destination", String(200), nullable=False),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=False),
    Column("last_error", Text),
    Column("created", UtcDateTime, nullable=False),
    Column("updated", UtcDateTime, nullable=False),
    # set when the forwarder's last check before the C-STORE-RQ passed, in a conditional update
    # that a mark entered-in-error is ordered against (SqlRecordStore.start_outbox_send); cleared
    # when the attempt is recorded. Set on a pending item: its object is (or may be) at the PACS.
    Column("sending_since", UtcDateTime),
    ForeignKeyConstraint(["sop_instance_uid"], [dicom_instances.c.sop_instance_uid]),
    UniqueConstraint("sop_instance_uid", "destination", name="uq_outbox_sop_instance_uid_destination"),
    Index("ix_outbox_due", "status", "next_attempt_at", "id"),
)


def _migrate(conn: Connection, found: int) -> None:
    """Upgrade a database of schema version ``found`` to SCHEMA_VERSION.

    1 → 2 adds only tables (dicom_instances, outbox), which ``create_all`` has made already;
    2 → 3 adds two nullable columns to ``resources`` (existing rows: whole blobs);
    3 → 4 adds only tables (dicom_released_uids, dicom_uid_spaces): the index is built at start
    (SqlRecordStore.index_released_uids finds no fingerprint);
    4 → 5 adds an index to an existing table (``create_all`` creates indexes only with new tables);
    5 → 6 adds tables (patient_pseudonyms, key_fingerprints) and drops dicom_uid_spaces, whose
    fingerprint moved to key_fingerprints (the released-UID index is rebuilt once at start);
    6 → 7 adds an index to an existing table;
    7 → 8 adds four nullable columns to ``dicom_instances`` (instances stored before have none)
    and an index on one of them;
    8 → 9 adds an index to ``audit``;
    9 → 10 adds a nullable column to ``resources``, filled for the records stored before when the
    store re-indexes them at start (SqlRecordStore.reindex_records finds an older index version);
    10 → 11 adds an index to ``resources`` and one to ``dicom_instances``;
    11 → 12 adds four nullable, indexed match key columns to ``dicom_instances``, filled for the
    instances stored before at start (SqlRecordStore.fill_dicom_match_keys), in batches: NULL
    means not derived yet, and such an instance stays a candidate of every search by them.
    A change to how a key is derived needs a step that sets it NULL again;
    12 → 13 adds eleven nullable columns to ``dicom_instances`` and a partial index of the rows
    whose ``attributes_read`` is NULL, which are all the instances stored before: their objects
    are read at start (SqlRecordStore.fill_dicom_attributes), in batches;
    13 → 14 adds four nullable columns to ``dicom_instances`` (the study attributes) and sets
    ``attributes_read`` NULL again on every instance (read with INSTANCE_ATTRIBUTES_VERSION 1,
    which had no study attributes), so the same fill reads each object once more;
    15 → 16 adds a nullable column to ``resources`` (existing rows: not entered in error);
    16 → 17 adds a nullable column to ``outbox`` (existing rows: no C-STORE under way).
    17 → 18 adds a nullable column to ``audit`` and records where the chain starts: the number
    after the last event stored before, which the chain does not cover (they stay without a MAC);
    18 → 19 adds a nullable column to ``dicom_instances`` (the photos stored before: their objects
    stay as they were made, version 1);
    19 → 20 adds two nullable columns to ``resources`` and an index of one: each row's last instant
    is set to its first (the instant it was searched as), and the records' search index version is
    cleared, so the start re-indexes the records and Consents from their JSON (reindex_records),
    giving each date the range of its precision. A Provenance keeps its instant (to the
    millisecond, which compares as that millisecond for any search value to the millisecond);
    20 → 21 changes no table: the chain's start is sealed under the chain's key, which the
    migration does not have (SqlRecordStore seals it in the upgrade's transaction when opened
    with its key: adapter.store.audit_start);
    21 → 22 adds a table (patient_references), which ``create_all`` has made, filled from the
    records and Consents stored (:func:`_fill_patient_references`): each reference goes to the
    identifier of the first resource stored with it, and one held with several is marked
    ``disputed`` (logged as a count, never the references).
    22 → 23 adds a table (withdrawn_receipts) and moves into it the receipts of the photo records
    marked entered-in-error before (their statement in ``_READ_AGAIN``), which then no longer keep
    the photo from being filed again for the patient.
    23 → 24 adds a nullable column to ``receipts`` and to ``withdrawn_receipts`` and an index of
    each, filled from the receipts' ``sha256.received`` (:func:`_fill_received_sha256`): a release
    that strips otherwise stores other bytes for the same upload, so a retry of a photo stored by
    an older release is found by the photo as received (verify review 2, finding 1).
    """
    for version in range(found + 1, SCHEMA_VERSION + 1):
        for table, column, ddl_type in _ADDED_COLUMNS.get(version, ()):
            if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
                if isinstance(ddl_type, str):
                    ddl = ddl_type
                elif isinstance(ddl_type, TypeDecorator):
                    ddl = ddl_type.load_dialect_impl(conn.dialect).compile(dialect=conn.dialect)
                else:  # a type with variants: the database's own
                    ddl = ddl_type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}"))
        for index in _ADDED_INDEXES.get(version, ()):
            index.create(conn, checkfirst=True)
        for table in _DROPPED_TABLES.get(version, ()):
            if inspect(conn).has_table(table):
                conn.execute(text(f"DROP TABLE {table}"))
        for statement in _READ_AGAIN.get(version, ()):
            conn.execute(text(statement))
        if version == AUDIT_CHAIN_VERSION:
            _record_chain_start(conn)
        if version == PATIENT_REFERENCES_VERSION:
            _fill_patient_references(conn)
        if version == RECEIVED_SHA256_VERSION:
            _fill_received_sha256(conn)
        conn.execute(insert(schema_version).values(version=version, applied=now_instant()))


#: The columns each version adds to an existing table (table, column, type: the same DDL on
#: SQLite and PostgreSQL, or a column type compiled for the database); ``create_all`` makes new
#: tables whole but never alters one.
_ADDED_COLUMNS: dict[int, tuple[tuple[str, str, str | TypeEngine[Any]], ...]] = {
    3: (("resources", "blob_offset", "BIGINT"), ("resources", "blob_length", "BIGINT")),
    8: (("dicom_instances", "patient_name", "TEXT"), ("dicom_instances", "study_description", "TEXT"),
        ("dicom_instances", "accession_number", "TEXT"), ("dicom_instances", "study_time", "VARCHAR(32)")),
    10: (("resources", "creation", UtcDateTime()),),
    12: tuple(("dicom_instances", column, MatchKey) for column in (
        "patient_name_key", "patient_name_ideographic_key", "patient_name_phonetic_key", "study_description_key")),
    13: (("dicom_instances", "series_number", "INTEGER"), ("dicom_instances", "series_description", "TEXT"),
         ("dicom_instances", "pps_start_date", "VARCHAR(8)"), ("dicom_instances", "pps_start_time", "VARCHAR(16)"),
         ("dicom_instances", "timezone_offset", "VARCHAR(5)"), ("dicom_instances", "instance_number", "INTEGER"),
         ("dicom_instances", "image_rows", "INTEGER"), ("dicom_instances", "image_columns", "INTEGER"),
         ("dicom_instances", "bits_allocated", "INTEGER"), ("dicom_instances", "number_of_frames", "INTEGER"),
         ("dicom_instances", "attributes_read", "INTEGER")),
    14: (("dicom_instances", "referring_physician_name", "TEXT"), ("dicom_instances", "patient_birth_date", "VARCHAR(8)"),
         ("dicom_instances", "patient_sex", "VARCHAR(16)"), ("dicom_instances", "study_id", "VARCHAR(16)")),
    16: (("resources", "entered_in_error", "BOOLEAN"),),
    17: (("outbox", "sending_since", UtcDateTime()),),
    18: (("audit", "chain_mac", "VARCHAR(64)"),),
    19: (("dicom_instances", "object_version", "INTEGER"),),
    20: (("resources", "date_last", UtcDateTime()), ("resources", "creation_last", UtcDateTime())),
    24: (("receipts", "received_sha256", "VARCHAR(64)"), ("withdrawn_receipts", "received_sha256", "VARCHAR(64)")),
}

#: The version that began the audit chain.
AUDIT_CHAIN_VERSION = 18
#: key_fingerprints' row holding the chain's first sequence number (adapter.store.audit_chain).
AUDIT_CHAIN_START = "audit-start"


def _record_chain_start(conn: Connection) -> None:
    """Record the chain's start (the number after the last event stored), unless recorded."""
    k = key_fingerprints.c
    if conn.execute(select(k.fingerprint).where(k.name == AUDIT_CHAIN_START)).scalar() is None:
        last = conn.execute(select(func.coalesce(func.max(audit.c.seq), 0))).scalar_one()
        conn.execute(insert(key_fingerprints).values(name=AUDIT_CHAIN_START, fingerprint=str(int(last) + 1),
                                                     updated=now_instant()))


#: The version that began patient_references.
PATIENT_REFERENCES_VERSION = 22


def patient_reference_key(reference: str) -> str:
    """The key of a literal Patient reference (``Patient/<id>``, or an absolute URL ending so,
    its version left out: adapter.mapping.fhir_r4) in patient_references: its ``Patient/<id>``.
    A search by ``Patient/<id>`` finds it stored relative or as this server's absolute URL, and
    the store cannot tell this server's URL (which may come from the request) from another's: so
    every URL counts by its id, which refuses rather than mixes (fail closed)."""
    return "/".join(reference.rsplit("/", 2)[-2:])


def _fill_patient_references(conn: Connection) -> None:
    """Fill patient_references from the resources stored (Media, DocumentReference, Consent; a
    Provenance repeats its record's), oldest first, by the rule the writes claim by
    (adapter.store.patient_references.first_claims: what is entered in error holds nothing): a
    reference goes to the identifier it was first stored with; a reference held with several is
    marked disputed. Logs how many were."""
    from adapter.store.patient_references import first_claims  # it imports this module's tables

    claims = first_claims(conn)
    conn.execute(patient_references.delete())  # derived whole from the resources (empty at schema 21)
    for start in range(0, len(claims), 500):
        conn.execute(insert(patient_references), claims[start:start + 500])
    disputed = sum(1 for claim in claims if claim["disputed"])
    if disputed:
        _log.warning("schema 22: %d Patient references are held by records of more than one patient identifier; "
                     "each stays with the first identifier stored with it (patient_references.disputed): review "
                     "them (docs/operations.md: Upgrading to schemas 22 and 23)", disputed)


#: The indexes each version adds to an existing table.
_ADDED_INDEXES: dict[int, tuple[Index, ...]] = {
    5: tuple(i for i in dicom_instances.indexes if i.name == "ix_dicom_instances_patient_value"),
    7: tuple(i for i in dicom_instances.indexes if i.name == "ix_dicom_instances_study_date"),
    8: tuple(i for i in dicom_instances.indexes if i.name == "ix_dicom_instances_accession_number"),
    9: tuple(audit.indexes),
    11: tuple(i for t in (resources, dicom_instances) for i in t.indexes if i.name and i.name.endswith("_blob")),
    12: tuple(i for i in dicom_instances.indexes if i.name and i.name.endswith("_key")),
    13: tuple(i for i in dicom_instances.indexes if i.name == "ix_dicom_instances_attributes_unread"),
    20: tuple(i for i in resources.indexes if i.name == "ix_resources_date_last"),
    24: tuple(i for t in (receipts, withdrawn_receipts) for i in t.indexes
              if i.name and str(i.name).endswith("_patient_received")),
}


#: The version that began receipts.received_sha256.
RECEIVED_SHA256_VERSION = 24


def _fill_received_sha256(conn: Connection) -> None:
    """Fill ``received_sha256`` of the receipts stored before schema 24 (both tables) from each
    receipt's JSON, in batches by ``seq``."""
    for table in (receipts, withdrawn_receipts):
        c = table.c
        last = 0
        while True:
            rows = conn.execute(select(c.seq, c.receipt).where(c.seq > last, c.received_sha256.is_(None))
                                .order_by(c.seq).limit(500)).all()
            if not rows:
                break
            last = rows[-1].seq
            filled = [{"row": seq, "received": received} for seq, receipt in rows
                      if (received := received_sha256_of(receipt)) is not None]
            if filled:
                conn.execute(table.update().where(c.seq == bindparam("row"))
                             .values(received_sha256=bindparam("received")), filled)


#: A row of ``receipts`` whose photo record is marked entered-in-error (schema 23's upgrade).
_WITHDRAWN_RECEIPT = (
    "EXISTS (SELECT 1 FROM resources x WHERE x.resource_type IN ('Media', 'DocumentReference') "
    "AND x.entered_in_error = TRUE AND x.blob_sha256 = receipts.stored_sha256 "
    "AND x.fact_patient_system = receipts.patient_system AND x.fact_patient_value = receipts.patient_value)")


#: What each version derives again at start: the rows it sets "not derived yet" (the same DDL on
#: SQLite and PostgreSQL).
_READ_AGAIN: dict[int, tuple[str, ...]] = {
    14: ("UPDATE dicom_instances SET attributes_read = NULL WHERE attributes_read IS NOT NULL",),
    20: ("UPDATE resources SET date_last = date, creation_last = creation",
         f"DELETE FROM key_fingerprints WHERE name = '{SEARCH_INDEX}'"),
    # the receipts of the photo records marked entered-in-error before: moved (the record's
    # (patient, stored SHA-256) was unique in receipts, so the record's row is the one matched)
    23: (("INSERT INTO withdrawn_receipts (idempotency_key, patient_system, patient_value, stored_sha256, "
          "recorded, receipt) SELECT idempotency_key, patient_system, patient_value, stored_sha256, recorded, "
          f"receipt FROM receipts WHERE {_WITHDRAWN_RECEIPT}"),
         f"DELETE FROM receipts WHERE {_WITHDRAWN_RECEIPT}"),
}


#: The tables each version drops (their content moved or is rebuilt).
_DROPPED_TABLES: dict[int, tuple[str, ...]] = {6: ("dicom_uid_spaces",)}


def other_schema_refusal(found: int) -> str | None:
    """Why a command that does not upgrade (``audit``, ``verify``, ``copy-store``) must not open a
    store of schema version ``found``, or None when it is this adapter's. Only ``serve`` upgrades:
    a maintenance command run with a new version installed before the restart (a cron job's audit
    export, a verify "to check before upgrading") upgraded the schema under the older instances
    still running, which then answered 503, and with no backup taken (ops review 1)."""
    if found < SCHEMA_VERSION:
        return (f"the database has schema version {found}, this adapter's is {SCHEMA_VERSION}: nothing was changed "
                "(only serve upgrades a store); stop every instance of the older version, back up the database and "
                "the data folder's keys (pseudonym.key, audit.key, store.id), then start serve of this version once: "
                "it upgrades the schema (docs/operations.md, Upgrading)")
    if found > SCHEMA_VERSION:
        return (f"the database has schema version {found}, newer than this adapter's {SCHEMA_VERSION}: nothing was "
                "changed; a newer version of the adapter upgraded it: run the command with that version")
    return None


def create_schema(conn: Connection, *, upgrade: bool = True) -> int | None:
    """Create missing tables and record the schema version, inside the caller's transaction.

    An older database is upgraded (``_migrate``), said in one INFO line with how long it took.
    Without ``upgrade`` (a command that only reads or checks the store) a database of another
    version is refused (:func:`other_schema_refusal`) before anything is created or changed.
    Raises ConfigurationError when the database was written by a newer schema than this code
    knows: running old code against it could lose data. Returns the version found (None: the
    store was made now).
    """
    if not upgrade:
        present = conn.execute(select(func.max(schema_version.c.version))).scalar()
        refusal = None if present is None else other_schema_refusal(int(present))
        if refusal is not None:
            raise ConfigurationError(refusal)
    started = time.monotonic()
    metadata.create_all(conn)
    found = conn.execute(select(func.max(schema_version.c.version))).scalar()
    if found is None:
        conn.execute(insert(schema_version).values(version=SCHEMA_VERSION, applied=now_instant()))
        _record_chain_start(conn)
    elif found > SCHEMA_VERSION:
        raise ConfigurationError(
            f"the database has schema version {found}; this adapter supports up to {SCHEMA_VERSION}")
    elif found < SCHEMA_VERSION:
        _migrate(conn, found)
        # the older version cannot open the store from now on (docs/operations.md, Upgrading)
        _log.info("schema upgraded from %d to %d in %.1f s", found, SCHEMA_VERSION, time.monotonic() - started)
    return None if found is None else int(found)
