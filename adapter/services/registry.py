"""Builds every service from Settings, once, and hands them to the edges (HTTP, DICOM)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import cast

from adapter.config import Settings
from adapter.errors import ConfigurationError
from adapter.files import folder_write_problem, publish_once, remove_abandoned_candidates
from adapter.mapping.dicom_photo import STUDY_DATE_VERSION, photo_study_values
from adapter.mapping.dicom_tables import DicomTables, load_dicom_tables
from adapter.mapping.dicom_uids import check_uid_root
from adapter.mapping.fhir_r4 import RECORD_INDEX_VERSION, index_resource
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.mapping.released_ids import ReleasedIds
from adapter.mapping.tables import Tables, load_tables
from adapter.model.purpose import RequestContext
from adapter.services.access import ScopedReader
from adapter.services.audit import Auditor
from adapter.services.consent_grants import ConsentGrantsCache
from adapter.services.consents import ConsentService
from adapter.services.corrections import RecordCorrections
from adapter.services.data_folder import PSEUDONYM_KEY_FILE, claim_data_folder, data_folder_problem
from adapter.services.dicom_ingest import DicomIngestService
from adapter.services.dicom_objects import object_attributes
from adapter.services.forwarding import Forwarder, ForwardOptions, OutboxService, StoreSender
from adapter.services.ingest import IngestService
from adapter.services.released_uids import ReleasedUidSpaces
from adapter.services.search_pages import SearchPages
from adapter.services.transaction import TransactionService
from adapter.store import open_store
from adapter.store.audit_chain import CHAIN_KEY_FINGERPRINT, audit_key_refusal, make_audit_key, read_audit_key
from adapter.store.engine import check_database_url
from adapter.store.port import BlobStore, RecordStore
from adapter.store.reach import when_reachable
from adapter.store.sql import read_key_fingerprints

_log = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _pseudonym_key(settings: Settings) -> bytes:
    """The configured key, or one generated once and kept (0600) in the data dir, so
    pseudonyms stay stable across restarts (adapter.files.publish_once: several processes may
    start at once, and one key is published, whole)."""
    if settings.pseudonym_key:
        return settings.pseudonym_key.encode("utf-8")
    path: Path = settings.data_dir / PSEUDONYM_KEY_FILE
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        publish_once(path, secrets.token_hex(32))
    remove_abandoned_candidates(path)
    return path.read_text().strip().encode("utf-8")


#: key_fingerprints' row naming the pseudonym key itself (the index rows name key and system,
#: or key and UID root, so they change with those too).
PSEUDONYM_KEY_FINGERPRINT = "pseudonym-key"
#: key_fingerprints' row of the pseudonym index (adapter.store.sql): there in stores that had a
#: key before PSEUDONYM_KEY_FINGERPRINT was kept.
_PSEUDONYM_INDEX = "pseudonyms"
_ACCEPT = ("or, deliberately, to give every patient new pseudonyms, mapped DICOM UIDs and released FHIR ids (the old "
           "ones then find nothing), start once with ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY=true")


def pseudonym_key_fingerprint(pseudonym_key: bytes) -> str:
    """Names the pseudonym key without revealing it (HMAC of a fixed label under the key)."""
    return _derived_key(pseudonym_key, "key-fingerprint").hex()


def pseudonym_key_problem(settings: Settings, store: RecordStore) -> str | None:
    """Why the key these settings give is not the one the store's pseudonyms and mapped UIDs were
    made with, or None; reads the key file, writes nothing.

    Fail closed: a start given another key than the one recorded would give every patient new
    pseudonyms, mapped DICOM UIDs and released FHIR ids, and the old ones (the research and
    training data sets' linkage) would find nothing. Refused whether the key comes from
    ADAPTER_PSEUDONYM_KEY_FILE or ADAPTER_PSEUDONYM_KEY (production's way: a disaster recovery that
    followed the Docker steps' "generate a key once" with a new key was taken with a WARNING) or
    from the data folder's pseudonym.key (a restore that left it behind: a new one was generated),
    unless ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY says it is deliberate (a rotation, then recorded).
    The message names where the key came from, never the key."""
    if settings.accept_new_pseudonym_key:
        return None
    stored = store.stored_fingerprints()
    recorded = stored.get(PSEUDONYM_KEY_FINGERPRINT)
    if settings.pseudonym_key:
        source = (f"ADAPTER_PSEUDONYM_KEY_FILE ({settings.pseudonym_key_file})" if settings.pseudonym_key_file
                  else "ADAPTER_PSEUDONYM_KEY")
        if recorded is not None and recorded != pseudonym_key_fingerprint(settings.pseudonym_key.encode("utf-8")):
            return (f"the key {source} gives is not the key the records were pseudonymised under: give the key "
                    "backed up with the database (after a restore, the original key file, never a new one); "
                    f"{_ACCEPT}")
        return None
    path = settings.data_dir / PSEUDONYM_KEY_FILE
    if not path.exists():
        if recorded is not None or _PSEUDONYM_INDEX in stored:
            return (f"{path} is missing, but the records were pseudonymised under a key: where serve reads the key "
                    "from a file, give this command the same ADAPTER_PSEUDONYM_KEY_FILE (its whole environment); "
                    "after a restore, restore pseudonym.key from the backup taken with the database (or set "
                    f"ADAPTER_PSEUDONYM_KEY to the key used); {_ACCEPT}")
        return None
    if recorded is not None and recorded != pseudonym_key_fingerprint(path.read_text().strip().encode("utf-8")):
        return (f"{path} is not the key the records were pseudonymised under: restore the pseudonym.key backed up with "
                f"the database; {_ACCEPT}")
    return None


def start_refusals(settings: Settings, store: RecordStore) -> list[str]:
    """What ``serve`` refuses to start on, each said with what it concerns: the pseudonym key
    (:func:`pseudonym_key_problem`), the data folder (adapter.services.data_folder), the
    audit chain's key and the chain's sealed start (adapter.store.audit_start), as the store
    records them. Reads only: :func:`build_services` asks before
    it writes anything (the folder's identity, audit.key, a fingerprint), ``check`` the same."""
    found = (("pseudonym key", pseudonym_key_problem(settings, store)),
             ("data folder", data_folder_problem(settings.data_dir, store)),
             ("audit key", store.audit_key_refusal()), ("audit trail", store.audit_start_refusal()))
    return [f"{what}: {problem}" for what, problem in found if problem is not None]


class _Recorded:
    """What ``check`` knows of a store without opening it (opening upgrades an older schema, and a
    SQLite store writes its journal): its key_fingerprints rows, read read-only, and the data
    folder's audit.key, read only. Stands in for the store in :func:`start_refusals`, which asks
    no more of it."""

    def __init__(self, stored: dict[str, str], audit_key: bytes | None) -> None:
        self._stored = stored
        self._audit_key = audit_key

    def stored_fingerprints(self) -> dict[str, str]:
        return dict(self._stored)

    def claim_fingerprint(self, name: str, make: Callable[[], str | None]) -> str | None:
        """The row as read (``check`` claims nothing)."""
        return self._stored.get(name)

    def audit_key_refusal(self) -> str | None:
        return audit_key_refusal(self._stored.get(CHAIN_KEY_FINGERPRINT), self._audit_key)

    def audit_start_refusal(self) -> str | None:
        """None: the start's seal is checked against the trail's events, which ``check`` does not
        read (serve and verify do)."""
        return None


def check_start_refusals(settings: Settings) -> list[str]:
    """:func:`start_refusals` for ``python -m adapter check``, reading the database's
    key_fingerprints and the data folder, writing nothing: no key generated, no fingerprint
    recorded, no audit.key or store.id made. Raises StorageError when the database cannot be read,
    ConfigurationError when a key file cannot."""
    stored = read_key_fingerprints(settings.resolved_database_url, settings.database_timeouts)
    recorded = _Recorded(stored, read_audit_key(settings.data_dir.resolve(), create=False))
    return start_refusals(settings, cast(RecordStore, recorded)) + _unwritable_folders(settings)


def _unwritable_folders(settings: Settings) -> list[str]:
    """The data folder and its image folders (blobs, quarantine) that exist and cannot be written,
    each said with its path and errno (serve refuses to start on them: it opens the removal lock in
    quarantine/ and stores images in blobs/), found by the file system's flags and the folder's
    permissions, writing nothing (verify review 2, finding 5). A SQLite store's own folder is said
    by the store."""
    options = settings.store
    for folder in (settings.data_dir, options.blob_dir, options.quarantine_dir):
        if folder.is_dir() and (problem := folder_write_problem(folder.resolve())) is not None:
            return [f"data folder: {problem}"]  # the first: the others are most often on the same mount
    return []


def _derived_key(pseudonym_key: bytes, label: str) -> bytes:
    """A key derived from the pseudonym key for one use (HMAC-SHA256, domain-separated by
    ``label``): stable as long as the pseudonyms are, and never the pseudonym key itself. Uses:
    ``dicom-uid-key`` maps UIDs in de-identified and pseudonymised DICOM objects,
    ``photo-uid-key`` keys a photo's own DICOM UIDs (adapter.mapping.dicom_uids.photo_uids),
    ``search-page-key`` seals the paging links of a search by POST (adapter.services.search_pages),
    ``fhir-id-key`` makes the logical ids of the restricted views (adapter.mapping.released_ids)."""
    return hmac.new(pseudonym_key, f"clinical-image-adapter/{label}/v1".encode(), hashlib.sha256).digest()


@dataclass
class Services:
    settings: Settings
    tables: Tables
    store: RecordStore
    blobs: BlobStore
    pseudonymizer: Pseudonymizer
    auditor: Auditor
    ingest: IngestService
    transactions: TransactionService
    consents: ConsentService
    corrections: RecordCorrections  # a record marked entered-in-error (PATCH of its status)
    now: Callable[[], datetime]
    dicom_ingest: DicomIngestService  # objects received by the C-STORE SCP (adapter.dicom.scp)
    search_pages: SearchPages  # sealed paging links of a search by POST
    #: When these services were built (the process started serving): the CapabilityStatement's
    #: date, which FHIR has change with what it describes (this build, its policy and settings),
    #: not with every request.
    started: datetime
    released_uids: ReleasedUidSpaces | None = None  # UIDs of the restricted DICOM views
    released_ids: ReleasedIds | None = None  # logical ids of the restricted FHIR views
    forwarder: Forwarder | None = field(default=None, init=False)

    def reader(self, ctx: RequestContext) -> ScopedReader:
        """A reader scoped to one request context: the only way to read records."""
        if self.released_ids is None:  # fail closed: a restricted view never shows stored ids
            raise ConfigurationError("the services were built without the released-id key")
        return ScopedReader(ctx, store=self.store, blobs=self.blobs, tables=self.tables,
                            pseudonymizer=self.pseudonymizer, auditor=self.auditor, now=self.now,
                            released_ids=self.released_ids, dicom_tables=self.dicom_ingest.dicom_tables,
                            released_uids=self.released_uids)

    @property
    def outbox(self) -> OutboxService:
        return OutboxService(self.store, now=self.now, tables=self.tables, auditor=self.auditor,
                             wake=self._wake_forwarder)

    def _wake_forwarder(self) -> None:
        if self.forwarder is not None:
            self.forwarder.wake()

    def start_forwarding(self, sender: StoreSender, options: ForwardOptions | None = None) -> Forwarder:
        """Start the outbox worker with a C-STORE sender from the DICOM edge
        (``adapter.dicom.scu.StoreSCU``); :meth:`close` stops it."""
        if self.forwarder is None:
            self.forwarder = Forwarder(
                store=self.store, blobs=self.blobs, tables=self.tables,
                dicom_tables=self.dicom_ingest.dicom_tables,
                sender=sender, auditor=self.auditor, reader=self.reader,
                options=options or ForwardOptions.from_settings(self.settings), now=self.now)
            self.forwarder.start()
            self.ingest.on_commit = self.forwarder.wake
            self.consents.on_released = self.forwarder.wake
        return self.forwarder

    def stop_forwarding(self) -> None:
        """Stop the outbox worker, if it runs (its batch under way finished): ``serve`` records
        its Application Stop once nothing takes work any more, before the store closes."""
        if self.forwarder is not None:
            self.forwarder.stop()
            self.forwarder = None

    def close(self) -> None:
        self.stop_forwarding()
        self.store.close()


@dataclass(frozen=True)
class Configuration:
    """What start-up reads and validates before it opens the store: the policy and every mapping
    table, the UID root, the database URL's form."""

    tables: Tables
    dicom_tables: DicomTables
    uid_root: str


#: The example policy's organisation (mappings/policy.yaml), refused by name too in production.
EXAMPLE_ORGANISATION = "example hospital"


def names_the_example_organisation(identifier: str) -> bool:
    """Whether an organisation identifier (or an identifier system, dicom.yaml's issuers') lies under
    the ISO/ITU-T example arc 2.999 (no real organisation's OID; the example policy's is
    urn:oid:2.999.1, the example issuer's system urn:oid:2.999.1.1)."""
    oid = identifier.strip().lower().removeprefix("urn:oid:")
    return oid == "2.999" or oid.startswith("2.999.")


def check_configuration(settings: Settings) -> Configuration:
    """Validate ``settings``, the policy and the mapping tables as :func:`build_services` does,
    first, without opening the store or writing anything (``python -m adapter check`` runs this:
    it said valid for a dicom.yaml or an ADAPTER_UID_ROOT that serve refused).
    Raises ConfigurationError or PolicyError naming the setting, or the file and element."""
    settings.check_safe()
    check_database_url(settings.resolved_database_url)
    tables = load_tables(settings.resolved_mappings_dir, settings.resolved_policy)
    organisation = tables.policy.organisation
    if settings.environment == "production" and (names_the_example_organisation(organisation.identifier.value)
                                                 or organisation.name.strip().lower() == EXAMPLE_ORGANISATION):
        # a copy of the example policy (verbal consent enough, break-glass on), wherever it lies:
        # the README's Docker steps copy mappings/ for the organisation to edit
        raise ConfigurationError(f"{settings.resolved_policy} names the example organisation "
                                 f"({organisation.name[:40]}, {organisation.identifier.value[:60]}; the example's "
                                 "OID is under the ISO example arc 2.999): "
                                 "in production the policy must be the organisation's own (edit organisation, "
                                 "consent, breakGlass and devices)")
    dicom_path = settings.resolved_mappings_dir / "dicom.yaml"
    dicom_tables = load_dicom_tables(dicom_path)
    examples = [entry for entry in dicom_tables.patient_identifiers.issuers
                if names_the_example_organisation(entry.system)]
    if settings.environment == "production" and examples:
        # the example's issuer (HOSP, urn:oid:2.999.1.1) left in a copy of mappings/ whose policy
        # was edited: a PACS's patients would be filed under the example's OID (newcomer review 8)
        said = ", ".join(f"{entry.issuer} -> {entry.system[:60]}" for entry in examples[:3])
        raise ConfigurationError(f"{dicom_path} files patient IDs under the example's OIDs ({said}; the ISO example "
                                 "arc 2.999): in production patient.issuers must name the organisation's own "
                                 "issuers of patient IDs and their systems")
    return Configuration(tables=tables, dicom_tables=dicom_tables, uid_root=check_uid_root(settings.uid_root))


def build_services(settings: Settings, now: Callable[[], datetime] = utc_now, *,
                   wait_for_database: bool = False) -> Services:
    """The services of ``settings``. ``wait_for_database`` (``serve``'s start): a database that
    does not answer yet is waited for, up to ADAPTER_DATABASE_START_WAIT (adapter.store.reach)."""
    configuration = check_configuration(settings)
    tables, dicom_tables, uid_root = configuration.tables, configuration.dicom_tables, configuration.uid_root
    wait = settings.database_start_wait if wait_for_database else 0.0
    store, blobs = when_reachable(lambda: open_store(settings.store, make_audit_key=False), wait)
    reindexed = store.reindex_records(RECORD_INDEX_VERSION, index_resource)
    if reindexed:
        _log.info("re-indexed the search values of %d record(s) (%s)", reindexed, RECORD_INDEX_VERSION)
    filled = store.fill_dicom_match_keys()
    if filled:
        _log.info("derived the QIDO-RS PatientName and StudyDescription keys of %d DICOM instance(s)", filled)
    read = store.fill_dicom_attributes(partial(object_attributes, store=store, blobs=blobs, tables=tables,
                                               dicom_tables=dicom_tables))
    if read:
        _log.info("read the QIDO-RS study, series and instance attributes of %d DICOM instance(s)", read)
    # after the attributes are read: a study's offset is its instances' TimezoneOffsetFromUTC
    redated = store.reindex_photo_study_dates(STUDY_DATE_VERSION, photo_study_values)
    if redated:
        _log.info("re-derived the StudyDate, StudyTime and offset of %d posted photo(s) (%s)", redated,
                  STUDY_DATE_VERSION)
    auditor = Auditor(store, now)
    try:
        refusals = start_refusals(settings, store)
        if refusals:  # before anything is written: a refused start leaves no key or identity behind
            raise ConfigurationError("; ".join(refusals))
        claim_data_folder(settings.data_dir, store)
        # the folder is the database's: its audit.key must be the chain's (made now for a new trail)
        store.claim_audit_key(partial(make_audit_key, settings.data_dir.resolve()))
    except ConfigurationError:
        store.close()
        raise
    pseudonym_key = _pseudonym_key(settings)
    key_fingerprint = pseudonym_key_fingerprint(pseudonym_key)
    recorded = store.stored_fingerprints().get(PSEUDONYM_KEY_FINGERPRINT)
    if recorded != key_fingerprint:
        if recorded is not None:  # accepted (ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY): start_refusals refuses it otherwise
            _log.warning("a new pseudonym key, accepted by ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY: the pseudonyms, mapped "
                         "DICOM UIDs and released FHIR ids change, the old ones find nothing; it is recorded as the "
                         "store's key (unset ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY now)")
        store.record_fingerprint(PSEUDONYM_KEY_FINGERPRINT, key_fingerprint)
    pseudonymizer = Pseudonymizer(pseudonym_key, tables.policy.pseudonyms.system)
    indexed = store.index_pseudonyms(pseudonymizer.fingerprint, pseudonymizer.of)
    if indexed:
        _log.info("indexed the pseudonyms of %d patient(s) under the current key", indexed)
    released_uids = ReleasedUidSpaces(uid_root, _derived_key(pseudonym_key, "dicom-uid-key"))
    indexed = store.index_released_uids(released_uids.fingerprint, released_uids.rows)
    if indexed:
        _log.info("indexed the released UIDs of %d DICOM instance(s) under the current key", indexed)
    grants = ConsentGrantsCache(store)  # one per process: both ingests parse a Consent version once
    ingest = IngestService(store=store, blobs=blobs, tables=tables, auditor=auditor, now=now,
                           dicom_tables=dicom_tables, uid_root=uid_root, uid_key=_derived_key(pseudonym_key, "photo-uid-key"),
                           released_uids=released_uids,
                           destinations=settings.destinations, grants=grants)
    return Services(
        settings=settings, tables=tables, store=store, blobs=blobs, pseudonymizer=pseudonymizer,
        auditor=auditor, ingest=ingest,
        transactions=TransactionService(ingest=ingest, tables=tables, store=store),
        consents=ConsentService(store=store, auditor=auditor, known_purposes=set(tables.purposes.codes), now=now,
                                tables=tables),
        corrections=RecordCorrections(store=store, tables=tables, auditor=auditor, now=now),
        now=now, started=now(),
        search_pages=SearchPages(_derived_key(pseudonym_key, "search-page-key"), now),
        dicom_ingest=DicomIngestService(store=store, blobs=blobs, tables=tables, dicom_tables=dicom_tables,
                                        auditor=auditor, now=now, released_uids=released_uids, grants=grants),
        released_uids=released_uids, released_ids=ReleasedIds(_derived_key(pseudonym_key, "fhir-id-key")))
