"""The storage port: what services need from a store. Implementations live beside this file
(``sql.py``: SQLite and PostgreSQL through SQLAlchemy Core; ``blobs.py``: content-addressed
files). Services depend on these Protocols only."""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from adapter.model.dicom import DicomInstance, InstanceAttributes, OutboxItem, ReleasedUids
from adapter.model.photo import Identifier
from adapter.model.record import BlobReference, IndexRow, IngestUnit, NewResource, SearchIndex, StoredResource
from adapter.store.audit_chain import ChainReport


@dataclass(frozen=True)
class TokenCriterion:
    """``param=[system|]code``; ``system`` None matches any system."""

    param: str
    code: str
    system: str | None = None


@dataclass(frozen=True)
class DateCriterion:
    """A FHIR date search: ``prefix`` in eq, ne, gt, lt, ge, le, sa, eb; the value's precision
    is the half-open range [start, end). ``end`` None: the range runs past the last instant a
    datetime holds (a value in year 9999), so nothing stored lies after it."""

    prefix: str
    start: datetime
    end: datetime | None
    #: the indexed date it is on: "date", "creation" (IHE MHD), or a range (SearchIndex.ranges:
    #: "period", an R5 reader's "r5:date")
    param: str = "date"


@dataclass(frozen=True)
class NamePrefix:
    """QIDO-RS PatientName candidates: the instances whose PatientName key
    (adapter.model.dicom.person_name_key) starts with ``prefix``, or, with ``any_group``, one of
    whose component groups does (a pattern of one group is matched against each; ``prefix`` then
    holds no ``=``). Found through the key's index: a superset of what a pattern with this
    literal prefix matches, which the caller then matches exactly."""

    prefix: str
    any_group: bool


@dataclass(frozen=True)
class SearchCriteria:
    """AND of all given criteria; each inner tuple (of tokens, of dates) is an OR (comma-separated
    values)."""

    ids: tuple[str, ...] | None = None
    patient: tuple[Identifier, ...] | None = None          # OR
    #: OR with ``patient``: an identifier value in any system (``patient:identifier=<value>``,
    #: a token without a system, search.html#token)
    patient_value: tuple[str, ...] | None = None
    patient_reference: tuple[str, ...] | None = None       # OR ("Patient/123")
    dates: tuple[tuple[DateCriterion, ...], ...] = ()
    status: tuple[str, ...] | None = None                  # OR
    tokens: tuple[tuple[TokenCriterion, ...], ...] = field(default_factory=tuple)
    last_updated: tuple[tuple[DateCriterion, ...], ...] = ()  # on meta.lastUpdated (_lastUpdated)


class BlobStore(Protocol):
    """Content-addressed, durable image bytes."""

    @property
    def staging_dir(self) -> Path:
        """The staging folder: on the blobs' file system; files left in it are swept."""

    def new_staging_path(self) -> Path:
        """A fresh path in the staging folder (same file system as the blobs)."""

    @property
    def reserve_bytes(self) -> int:
        """The free space kept for the database and the audit trail (0: none)."""

    def free_bytes(self) -> int:
        """Bytes free on the blobs' file system (OSError when it cannot be asked)."""

    def ensure_room(self, incoming: int = 0) -> None:
        """Raise InsufficientStorage when ``incoming`` more bytes would leave less free than
        the reserve (commit checks it too)."""

    def sweep_staging(self) -> int:
        """Delete the staged files left stale (a crash's, an aborted upload's); return how many.
        Raises OSError when the staging folder cannot be listed."""

    def staged_uploads(self) -> tuple[int, int]:
        """How many files are in the staging folder, and their bytes."""

    def commit(self, staged: Path, sha256: str) -> Path:
        """fsync ``staged``, move it to its content address, fsync the folder; return the final
        path. If the blob exists already, ``staged`` is removed. Idempotent."""

    def discard(self, staged: Path) -> None:
        """Remove a staged file if present."""

    def path(self, sha256: str) -> Path:
        """Path of a committed blob (raises NotFound if absent)."""

    def read(self, sha256: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The bytes of a committed blob, or its (offset, length) range (NotFound if absent)."""

    def exists(self, sha256: str) -> bool: ...

    def size(self, sha256: str) -> int | None:
        """The size of a committed blob; None if absent."""

    def digest(self, sha256: str) -> str:
        """The SHA-256 of a committed blob's bytes, computed afresh (NotFound if absent)."""

    def iter_addresses(self) -> Iterator[str]:
        """The address of every blob stored."""

    # Removal of unreferenced blobs (adapter.services.unreferenced holds the protocol).

    def removal_lock(self) -> AbstractContextManager[bool]:
        """Hold the removal lock of the data folder (across processes) if it is free; yields
        whether it is held, never waits."""

    def iter_aged(self, older_than: float) -> Generator[str, None, None]:
        """The address of every blob whose mtime is before ``older_than`` (epoch seconds)."""

    def quarantine(self, sha256: str, older_than: float) -> bool:
        """Move a blob whose mtime is before ``older_than`` out of its address, where no commit
        finds it; True if it is held aside now (else it is, or was put back, in place)."""

    def restore(self, sha256: str) -> None:
        """Put a quarantined blob back under its address, young."""

    def remove_quarantined(self, sha256: str) -> int:
        """Delete a quarantined blob; return its size."""

    def restore_quarantined(self) -> int:
        """Put back what an interrupted removal left aside; return how many."""


class RecordStore(Protocol):
    """FHIR resources, search index, receipts and audit events."""

    def save_ingest(self, unit: IngestUnit) -> None:
        """Write every resource, the receipt, the idempotency entries and the audit events in ONE
        transaction. Raises Conflict if the idempotency key or (patient, stored sha256) is taken,
        and InstanceConflict if the unit's DICOM instance cannot be filed where it says
        (:meth:`check_hierarchy`, checked in the transaction)."""

    def save_ingests(self, units: Sequence[IngestUnit]) -> None:
        """What :meth:`save_ingest` writes of each unit, all of them in ONE transaction (the
        documents of one submission): Conflict, and nothing written, if any of them conflicts."""

    def find_receipt(self, *, idempotency_key: str | None = None, patient: Identifier | None = None,
                     stored_sha256: str | None = None, received_sha256: str | None = None) -> dict[str, Any] | None:
        """The receipt of a record not marked entered-in-error stored under ``idempotency_key``,
        else under (``patient``, ``stored_sha256``), else under (``patient``, ``received_sha256``):
        the photo as received, whose stored bytes an older release made otherwise."""

    def find_keyed_receipt(self, idempotency_key: str) -> tuple[dict[str, Any], Identifier] | None:
        """The receipt stored under ``idempotency_key`` and the patient it was stored for; the
        receipt carries WITHDRAWN (adapter.model.record) when its record was marked
        entered-in-error since (:meth:`mark_entered_in_error`)."""

    def find_withdrawn_receipts(self, *, patient: Identifier, stored_sha256: str,
                                received_sha256: str | None = None) -> list[dict[str, Any]]:
        """The receipts of the records stored for ``patient`` with the stored image
        ``stored_sha256``, or from the photo received as ``received_sha256``, and marked
        entered-in-error since (each with WITHDRAWN), newest first."""

    def filed_for_another_patient(self, *, patient: Identifier, stored_sha256: str) -> bool:
        """Whether a photo record (Media, DocumentReference) not marked entered-in-error holds
        the stored image ``stored_sha256`` for a patient other than ``patient``."""

    def get(self, resource_type: str, id: str) -> StoredResource | None: ...

    def get_version(self, resource_type: str, id: str, version_id: int) -> dict[str, Any] | None:
        """The document of one version (current or past) as it was stored; None if there is none."""

    def list_versions(self, resource_type: str, id: str, *, offset: int = 0, limit: int = 100,
                      since: datetime | None = None, before: int | None = None) -> list[dict[str, Any]]:
        """The documents of the resource's versions as they were stored, newest first, from the
        ``offset``-th; at most ``limit``; only those stored at ``since`` or later when given, and
        only those older than version ``before`` (a history page's keyset bound) when given.
        Empty when the resource is unknown."""

    def count_versions(self, resource_type: str, id: str, *, since: datetime | None = None,
                       before: int | None = None) -> int:
        """How many versions the resource has (stored at ``since`` or later, older than version
        ``before``, when given)."""

    def get_many(self, resource_type: str, ids: Sequence[str]) -> list[StoredResource]:
        """Resources in the order of ``ids``; missing ones are left out."""

    def create(self, new: NewResource, audit_events: Sequence[dict[str, Any]] = ()) -> StoredResource:
        """Insert version 1 (sets meta.versionId and meta.lastUpdated). Conflict if it exists."""

    def update(self, new: NewResource, *, if_match: int | None = None,
               audit_events: Sequence[dict[str, Any]] = ()) -> StoredResource:
        """Write the next version, keeping history. Conflict if ``if_match`` is not current;
        NotFound if absent."""

    def mark_entered_in_error(self, new: NewResource, *, if_match: int | None = None,
                              created: Sequence[NewResource] = (),
                              audit_events: Sequence[dict[str, Any]] = ()) -> tuple[StoredResource, int, int]:
        """Write the next version of a record now ``entered-in-error`` with ``created`` and
        ``audit_events`` in one transaction: every resource it governs is marked so and its
        outbox items not sent are cancelled, except those whose C-STORE has started
        (:meth:`start_outbox_send`), left pending; the version, how many items were cancelled
        and how many were being sent."""

    def save_consent(self, new: NewResource, *, version: int, now: datetime,
                     audit_events: Sequence[dict[str, Any]] = (),
                     documented: Sequence[tuple[NewResource, int]] = (), released: Sequence[str] = (),
                     waiting: Sequence[str] = (), recheck_at: datetime | None = None,
                     audit_documented: Callable[[Sequence[str]], Sequence[dict[str, Any]]] | None = None,
                     ) -> tuple[StoredResource, int]:
        """Write version ``version`` of Consent ``new`` (1: create it, Conflict if it exists; a
        later one: over version ``version - 1``, Conflict if that is not current, NotFound if
        there is none) with ``audit_events``, and in the same transaction: the next version of
        each consent-pending record of ``documented`` (the record as it is to be, and the version
        it replaces; one whose current version is another, changed meanwhile, is left as it is),
        and the outbox items of the records ``released`` ("Media/<id>") that are held released:
        pending, due ``now``, attempts counted afresh. The held items of the records ``waiting``
        are looked at again (:meth:`holds_due`) at ``recheck_at`` when that is earlier than the
        moment they had (None: no change). ``audit_documented`` is given the versions of the
        records written ("Media/<id>/_history/<n>"), if any, and returns the AuditEvents stored
        with them. Returns the Consent as stored and how many items were released."""

    def holds_due(self, now: datetime, limit: int) -> list[tuple[int, Identifier]]:
        """Held outbox items whose hold is to be looked at again at ``now`` (a Consent of their
        patient came into force: :meth:`hold_outbox`'s ``recheck_at``), each with its patient,
        the earliest due first, at most ``limit``; none, cheaply, when none is due."""

    def release_in_force(self, patient: Identifier, *, consents: Sequence[tuple[str, int]], items: Sequence[int],
                         now: datetime, documented: Sequence[tuple[NewResource, int]] = (),
                         released: Sequence[str] = (), recheck_at: datetime | None = None,
                         audit_documented: Callable[[Sequence[str]], Sequence[dict[str, Any]]] | None = None,
                         ) -> int | None:
        """What a Consent of ``patient`` coming into force does, in one transaction, as
        :meth:`save_consent` does it for a Consent written (``documented``, ``released``,
        ``audit_documented`` alike), without a Consent to write: and the held ``items`` (due
        holds of the patient) not released are looked at again at ``recheck_at`` (None: not by
        the clock). Only while the patient's Consents are still ``consents``
        (:meth:`consent_versions_for_patient`, read before the decision); else nothing is written
        and None returned. Returns how many items were released."""

    def consent_pending_records(self, patient: Identifier) -> list[StoredResource]:
        """The photo records (Media, DocumentReference) of ``patient`` stored consent pending
        (AccessFacts.consent_pending) and not entered in error, oldest first."""

    def search_index(self, resource_type: str, criteria: SearchCriteria, *,
                     descending: bool = False) -> Iterator[IndexRow]:
        """Candidates ordered by last_updated then id, newest first when ``descending`` (no JSON
        loaded), read a batch at a time (bounded memory)."""

    def latest_last_updated(self, resource_type: str) -> datetime | None:
        """The latest last_updated of the resources of ``resource_type`` (None: there are none):
        every write stored later has a later one (a search's snapshot, adapter.services.search_paging)."""

    def consents_for_patient(self, patient: Identifier) -> list[StoredResource]: ...

    def consent_versions_for_patient(self, patient: Identifier) -> list[tuple[str, int]]:
        """``(id, version_id)`` of the Consents :meth:`consents_for_patient` returns, in the same
        order, without loading them (callers keep what they read of a version: it never changes)."""

    def append_audit(self, *events: dict[str, Any]) -> None:
        """Store ``events`` (AuditEvents), in order, in one transaction."""

    def list_audit(self, limit: int = 100) -> list[dict[str, Any]]:
        """Newest first."""

    def iter_audit(self, *, after: int = 0, since: datetime | None = None, until: datetime | None = None,
                   batch: int = 500) -> Iterator[tuple[int, dict[str, Any]]]:
        """(sequence number, AuditEvent) of the events stored after sequence number ``after``,
        recorded at ``since`` or later and before ``until``, in the order they were stored, read
        a batch at a time."""

    def check_audit_chain(self, batch: int = 1000) -> ChainReport:
        """Walk the whole trail once and check its keyed hash chain (adapter.store.audit_chain)
        and its start's seal (adapter.store.audit_start)."""

    def audit_chain_mac(self, seq: int) -> str | None:
        """The chain MAC stored with event ``seq`` (hex), None if it has none."""

    def audit_key_problem(self) -> str | None:
        """Why the data folder's audit.key is not the chain's key, or None."""

    def audit_key_refusal(self) -> str | None:
        """Why a start must not chain under the data folder's audit.key (missing or another than
        the one recorded for the trail), or None; reads only."""

    def audit_start_refusal(self) -> str | None:
        """Why a start must not chain on from the audit trail's start (missing, not sealed, its
        seal not this start's under the store's key, inconsistent with the events at its edges:
        adapter.store.audit_start), or None; reads only."""

    def claim_audit_key(self, make_key: Callable[[], bytes] | None = None) -> None:
        """Record the chain's key (its fingerprint), made by ``make_key`` when the store was opened
        without one and none is recorded (the trail's start then sealed with it), or raise
        ConfigurationError for another, or for a start :meth:`audit_start_refusal` refuses."""

    # -- DICOM -------------------------------------------------------------------------------
    # save_ingest also writes unit.dicom_instance (unique SOP Instance UID: Conflict when taken)
    # and unit.released_uids, and unit.outbox (status pending, attempts 0, next_attempt_at = now)
    # in the same transaction.
    # An outbox item names a stored SOP instance (this unit's or an earlier one): the store
    # refuses one that names none (StorageError), and one (object, destination) is queued once.

    def find_dicom_instance(self, sop_instance_uid: str) -> DicomInstance | None: ...

    def check_hierarchy(self, *, study_instance_uid: str, series_instance_uid: str, patient: Identifier) -> None:
        """InstanceConflict, naming the UID and never the other patient, when an instance of
        ``patient`` in that study and series could not be filed: its Study Instance UID is held
        for another patient (system or value), or its Series Instance UID in another study (one
        patient per study, one study per series: PS3.3 A.1.2). save_ingest checks the same in its
        transaction, after every other filing into the study and series committed (PostgreSQL's
        advisory locks of the two UIDs, SQLite's single writer); this read refuses early."""

    def studies_of_several_patients(self) -> list[tuple[str, list[str]]]:
        """Each study whose instances (those whose record is not entered in error) are filed
        under more than one patient identifier, with the records of its instances ("Media/<id>"),
        in study order: stored before check_hierarchy refused such instances (python -m adapter
        verify names them)."""

    def find_study_photo(self, study_instance_uid: str) -> DicomInstance | None:
        """A posted photo's instance (no object as received) of the study, any one (every one
        carries the study's StudyDate, StudyTime and offset); None when none is stored. One lookup
        of the study's index. save_ingest of a unit that ``opens_study`` raises StudyStarted, and
        writes nothing, when one is stored by then (serialised per study: PostgreSQL's advisory
        lock, SQLite's single writer)."""

    def search_dicom_instances(self, *, study: str | None = None, series: str | None = None,
                               sop_instance: str | None = None, patient: Identifier | None = None,
                               patient_value: str | None = None, modality: str | None = None,
                               study_dates: tuple[str | None, str | None] | None = None,
                               accession_number: str | None = None, patient_name: NamePrefix | None = None,
                               study_description_prefix: str | None = None) -> list[DicomInstance]:
        """AND of the criteria (``patient_value``: in any system; ``study_dates``: an inclusive
        YYYYMMDD range, open where None, never matching an instance without a StudyDate;
        ``patient_name``: see NamePrefix; ``study_description_prefix``: a StudyDescription that
        starts with it, case-sensitive; these two also keep every instance whose keys are not
        derived yet, see fill_dicom_match_keys); ordered by study, series, created."""

    def iter_dicom_instances(self, *, batch: int = 500, patient_value: str | None = None,
                             modality: str | None = None, study_dates: tuple[str | None, str | None] | None = None,
                             accession_number: str | None = None, patient_name: NamePrefix | None = None,
                             study_description_prefix: str | None = None) -> Iterator[list[DicomInstance]]:
        """search_dicom_instances in lists of at most ``batch``, streamed (bounded memory; a
        reader may stop early and close the generator)."""

    def fill_dicom_match_keys(self, batch: int = 500) -> int:
        """Derive the PatientName and StudyDescription match keys of the instances that have none
        (stored before schema 12, or by a process running older code), a batch per transaction:
        idempotent, and an interrupted fill is taken up where it stopped. Returns how many
        instances got their keys now."""

    def fill_dicom_attributes(self, attributes_of: Callable[[DicomInstance], InstanceAttributes | None],
                              batch: int = 500) -> int:
        """Store the QIDO-RS attributes ``attributes_of`` reads from the object of each instance
        that has none read (stored before schema 13, or read before 14), a batch per transaction: idempotent, and
        an interrupted fill is taken up where it stopped; ``attributes_of`` is called with no
        transaction open and may read through this store, and gives None for an object it cannot
        read now (left unread: the next fill tries again). Returns how many instances were read."""

    def search_released_dicom_instances(self, view: str, *, study: str | None = None,
                                        series: str | None = None,
                                        sop_instance: str | None = None) -> list[DicomInstance]:
        """Instances whose UIDs, as ``view`` releases them, are the given ones (at least one
        given); ordered as search_dicom_instances."""

    def reindex_records(self, version: str, index_of: Callable[[dict[str, Any]], SearchIndex],
                        batch: int = 500) -> int:
        """Keep the records' (Media, DocumentReference) search index that of ``version``: when
        the stored version differs (or there is none: a store made before versions were kept),
        derive each record's date, creation, status and tokens afresh with ``index_of`` from its
        JSON, then store ``version``. Returns how many records were re-indexed now."""

    def reindex_photo_study_dates(self, version: str,
                                  study_of: Callable[[dict[str, Any]], tuple[str | None, str | None, str] | None],
                                  batch: int = 500) -> int:
        """Keep the StudyDate, StudyTime and TimezoneOffsetFromUTC of the DICOM instances made
        from a posted photo's record (those with no object as received) the ones ``version``
        derives: when the stored version differs (or there is none: a store made before it was
        kept), set those of every such instance of a study to what ``study_of`` gives of the
        record of the study's first (by created, then SOP Instance UID), ``(date, time, offset)``
        (None: the study is left as it is), then store ``version``. Returns how many instances
        changed now."""

    def stored_fingerprints(self) -> dict[str, str]:
        """Every fingerprint the store keeps, by name: of the keys and versions its derived
        indexes were made with (and of the pseudonym key itself, adapter.services.registry)."""

    def record_fingerprint(self, name: str, fingerprint: str) -> None:
        """Keep ``fingerprint`` under ``name`` (at most 16 characters), replacing the one there."""

    def claim_fingerprint(self, name: str, make: Callable[[], str | None]) -> str | None:
        """The fingerprint kept under ``name``; when there is none, ``make()`` kept there (unless
        it gives None) and returned. Under the lock every write of a fingerprint takes, to its
        commit: of processes sharing the database, one makes it, the others read what it kept."""

    def index_pseudonyms(self, fingerprint: str, pseudonym_of: Callable[[Identifier], str]) -> int:
        """Keep the pseudonym index current: when the stored fingerprint differs (or there is
        none), empty it and store ``fingerprint``; then add ``pseudonym_of(patient)`` for every
        patient the resources name that the index lacks. From then on every write (save_ingest,
        create, update) adds the pseudonyms of the patients it names in its own transaction.
        Returns how many patients were added now."""

    def find_pseudonymised(self, pseudonyms: Sequence[str]) -> list[Identifier]:
        """The patients whose indexed pseudonyms are among ``pseudonyms``."""

    def index_released_uids(self, fingerprint: str,
                            rows_of: Callable[[DicomInstance], Sequence[ReleasedUids]]) -> int:
        """Make the released UIDs of every instance those of the key with ``fingerprint``: when
        the stored fingerprint differs (or there is none), replace every row with
        ``rows_of(instance)`` and store ``fingerprint``, in one transaction. Returns how many
        instances were indexed (0 when the index was current)."""

    def claim_outbox(self, now: datetime, limit: int, *, exclude: Collection[str] = ()) -> list[OutboxItem]:
        """Pending items due at ``now`` (next_attempt_at <= now), oldest first, none for a
        destination in ``exclude`` (those whose worker is busy: adapter.services.outbox_workers).
        Claiming pushes their next_attempt_at a lease ahead, so a second forwarder (another
        worker process) does not pick them up at the same time."""

    def start_outbox_send(self, item_id: int, *, claimed_until: datetime, now: datetime) -> bool:
        """The forwarder's last step before an item's C-STORE-RQ: record that it goes now, if the
        item is still pending under the claim whose lease end is ``claimed_until``; False (it is
        not to be sent) when it is not, e.g. a mark entered-in-error cancelled it. Ordered with
        :meth:`mark_entered_in_error` on the item's row: a mark after it leaves the item
        pending, counted as being sent."""

    def mark_outbox_sent(self, item_id: int, now: datetime, audit_events: Sequence[dict[str, Any]] = (),
                         last_error: str | None = None) -> None:
        """Status sent; counts the attempt; stores ``audit_events`` (the disclosure's) in the same
        transaction; lastError becomes ``last_error`` (a PACS's Warning status, or none).
        NotFound for an unknown id."""

    def mark_outbox_retry(self, item_id: int, *, next_attempt_at: datetime, error: str, now: datetime,
                          give_up: bool = False, claimed_until: datetime | None = None,
                          audit_events: Sequence[dict[str, Any]] = ()) -> bool:
        """Count an attempt of a pending item; ``give_up`` sets status failed. An item no longer
        pending (another forwarder had it acknowledged) is left as it is, and so is one whose
        lease end is not ``claimed_until`` when given (another forwarder claimed it since);
        returns whether the attempt was recorded. ``audit_events`` (the attempt's) are stored in
        the same transaction, and only when it was recorded. NotFound for an unknown id."""

    def hold_outbox(self, item_id: int, *, claimed_until: datetime, patient: Identifier,
                    consents: Sequence[tuple[str, int]], error: str, now: datetime,
                    audit_events: Sequence[dict[str, Any]] = (), recheck_at: datetime | None = None) -> bool:
        """Count an attempt of a pending item and hold it (status held, ``error`` its last error):
        the consent decision refused it for want of documented consent for care, and it waits,
        unclaimed, for a Consent that documents care (:meth:`save_consent` releases it), or for
        ``recheck_at``, when one of the patient's ``consents`` comes into force (:meth:`holds_due`;
        None: never by the clock alone). Only
        while the claim whose lease end is ``claimed_until`` holds, and while ``patient``'s
        Consents are still ``consents`` (:meth:`consent_versions_for_patient`, read before the
        decision): a Consent written since may document care, and its release found the item
        pending, not held. Returns whether the item was held; ``audit_events`` (the attempt's)
        are stored in the same transaction, and only then."""

    def renew_outbox_claims(self, items: Sequence[OutboxItem], now: datetime) -> list[OutboxItem]:
        """Of ``items`` (as claim_outbox or an earlier renewal returned them), those whose claim
        still holds, each leased afresh from ``now`` (the returned items carry the new lease
        end). An item whose lease ran out and that another forwarder claimed since, or that is
        no longer pending, is left out: its holder may not send it."""

    def requeue_outbox(self, *, now: datetime, ids: Sequence[int] | None = None,
                       destination: str | None = None,
                       audit: Callable[[Sequence[tuple[OutboxItem, DicomInstance | None]]],
                                       Sequence[dict[str, Any]]] | None = None) -> int:
        """Failed items (all, those of ``ids``, or those for ``destination``) pending again and
        due now, attempts counted afresh; returns how many. ``audit`` is given the items
        requeued (as they were, oldest first, each with its DICOM instance) and returns the
        AuditEvents stored in the same transaction: the audit names exactly what was requeued."""

    def list_outbox(self, *, status: str | None = None, limit: int = 100) -> list[OutboxItem]: ...

    def outbox_counts(self) -> dict[str, int]:
        """How many outbox items are in each status (the statuses with none left out)."""

    def ping(self) -> int:
        """The schema version, read from the database: it answers (readiness)."""

    def iter_blob_references(self, batch: int = 1000) -> Iterator[BlobReference]:
        """Every blob the store refers to (python -m adapter verify)."""

    def referenced_blobs(self, addresses: Sequence[str]) -> set[str]:
        """Those of ``addresses`` that a current resource or a DICOM object as received refers
        to, as committed when the read begins (an index lookup per address)."""

    def close(self) -> None: ...
