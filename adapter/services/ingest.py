"""Ingest: a photo with its metadata becomes a durable FHIR record (Media or
DocumentReference, Binary, Consent, Provenance) in one atomic unit.

Order of work (cheap refusals first, nothing visible until the single commit):
1. idempotency replay by key (a replay, answered with the stored receipt, and a refused one, the
   key reused for other bytes or the same photo with another consent statement or other metadata
   (adapter.services.photo_description), are audited as every create is);
2. the guidance and policy rules (adapter.consent.assess_ingest); a refusal by them is a
   decision, audited (an AuditEvent with outcome 4; nothing else is stored);
3. metadata stripping by segment copy, decode proof, quality (adapter.imaging.sanitize); the
   resources built (a consent form sent with the photo is stripped and proven as a photo is:
   refused there, nothing is stored);
4. blob fsynced to its content address (invisible until referenced; a photo stored before has
   the same address, so nothing new is written for it, but its mtime is refreshed); if step 5
   then fails, the blob is left to ``verify --remove-unreferenced``, which deletes it once past a
   grace period (adapter.services.unreferenced: another ingest may be about to refer to it);
5. one database transaction: resources, receipt, idempotency entries, audit event, the DICOM
   instance the photo becomes and its UIDs as the restricted views release them. A photo
   stored for the patient before (same stored SHA-256) fails the receipts' unique constraint,
   so nothing of the transaction is kept, and the stored receipt is the answer (a replay). No
   lookup before the transaction: the constraint decides, also between concurrent uploads, and
   the common case (a new photo) costs one round trip less.
``safeToDeleteFromDevice`` is true only after step 5 returned, and is never answered for a record
marked entered-in-error since: a retry of the request that stored one (by its key, or without a key
and with the same description, looked up before step 4) is refused (409
``stored-entered-in-error``), the device keeping the photo. That record's receipt no longer holds
the (patient, stored SHA-256) unique (adapter.store.schema withdrawn_receipts), so the photo can be
filed again with corrected details, or under a new key. Step 3 also looks up whether the same
stored image is filed for another patient: the receipt then warns, naming no one.

The documents of one submission (a transaction Bundle of several, IHE MHD ITI-65:
:meth:`IngestService.ingest_documents`) go through steps 2 and 3 each before any blob is committed,
then step 5 writes every one of them in one database transaction: all stored, or none. Their
receipts are looked up before step 4 (one lookup per document): a submission some of whose
documents were stored before is answered from there (their receipts, or 409), with no blob
committed; only a concurrent submission storing some of them in between leaves blobs for
``verify --remove-unreferenced``.

A photo the adapter fails to store (StorageError: the data folder down to its reserve, 507, or
the disk or the database failing, 503) is audited as a create that failed, outcome 8, in its own
transaction (:meth:`IngestService._audit_failed_store`), as a DICOM object it fails to keep is.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from adapter.consent import assess_ingest, check_capture_time, check_exif_capture_time, grants_from_consent
from adapter.errors import (
    AdapterError,
    BusinessRuleViolation,
    Conflict,
    InvalidInput,
    PatientReferenceConflict,
    StorageError,
    StudyStarted,
    UnknownCode,
    errno_name,
)
from adapter.files import file_sha256
from adapter.imaging import sanitize
from adapter.mapping.codes import DICOM_UID_SYSTEM
from adapter.mapping.consent import consent_from_statement
from adapter.mapping.dicom_photo import (
    PHOTO_OBJECT_VERSION,
    PhotoStudy,
    check_rows_columns,
    encounter_key,
    photo_study,
    photo_without_pixels,
)
from adapter.mapping.dicom_qido import instance_attributes
from adapter.mapping.dicom_tables import DicomTables
from adapter.mapping.dicom_uids import PhotoUids, photo_uids
from adapter.mapping.fhir_r4 import parse_fhir_datetime, utc_instant
from adapter.mapping.ingest_warnings import (
    FILED_FOR_ANOTHER_PATIENT_WARNING,
    STORED_ENTERED_IN_ERROR,
    STORED_WITH_OTHER_DETAILS,
    capture_time_warnings,
    details_code,
    receipt_outcome,
    replayed_outcome,
)
from adapter.mapping.photo import build_photo_resources, index_resource
from adapter.mapping.tables import Tables
from adapter.metrics import INGESTS
from adapter.model.dicom import DicomInstance, InstanceAttributes, NewOutboxItem
from adapter.model.image import StoredImage
from adapter.model.photo import ConsentMethod, Identifier, PhotoMetadata
from adapter.model.purpose import RequestContext
from adapter.model.record import (
    WITHDRAWN,
    AccessFacts,
    IngestUnit,
    NewResource,
    SearchIndex,
    received_sha256_of,
)
from adapter.refusals import RefusalCode
from adapter.services.audit import Auditor
from adapter.services.consent_grants import ConsentGrantsCache
from adapter.services.dicom_objects import study_of
from adapter.services.photo_description import DESCRIPTION, answered, describe, differing
from adapter.services.released_uids import ReleasedUidSpaces
from adapter.store.port import BlobStore, RecordStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    receipt: dict[str, Any]
    replayed: bool

    @property
    def location(self) -> str:
        return str(self.receipt["record"])


#: The outcome description of the audit of a replay (adapter.services.ingest._answer_replay).
REPLAYED = "stored before: the stored receipt is the answer, nothing new was stored"
#: The member of the first document's receipt (the one stored under the Idempotency-Key) of a
#: submission of several documents that lists the stored SHA-256 of each, in order: a retry by the
#: key finds the others' receipts by them. Kept, never answered (photo_description.answered).
SUBMISSION = "_submission"


@dataclass(frozen=True)
class _SharedConsent:
    """The Consent of a statement sent once for several documents (a transaction's Consent):
    recorded once, with the unit of ``created_with`` (a record reference), restricted to all of
    their ``records`` and named by each document's receipt."""

    id: str
    records: tuple[str, ...]
    created_with: str


#: Where a refusal of a submission's document points: its index in the submission and the
#: refusal's expressions (POST /photos metadata fields) → the expressions to answer.
Locate = Callable[[int, Sequence[str]], list[str]]

def _new_id() -> str:
    return str(uuid.uuid4())


class IngestService:
    def __init__(self, *, store: RecordStore, blobs: BlobStore, tables: Tables, auditor: Auditor,
                 now: Callable[[], datetime], dicom_tables: DicomTables, uid_root: str, uid_key: bytes,
                 released_uids: ReleasedUidSpaces, destinations: Sequence[str] = (),
                 grants: ConsentGrantsCache | None = None) -> None:
        self._store = store
        self._released_uids = released_uids
        self._blobs = blobs
        self._tables = tables
        self._auditor = auditor
        self._now = now
        self._dicom_tables = dicom_tables
        self._uid_root = uid_root
        self._uid_key = uid_key
        self._destinations = tuple(destinations)
        self.on_commit: Callable[[], None] | None = None  # wakes the forwarder
        # the grants of the patient's Consents the rules read, parsed once per Consent version
        self._grants = grants if grants is not None else ConsentGrantsCache(store)

    def ingest_photo(self, upload: Path | bytes, meta: PhotoMetadata, *, idempotency_key: str | None,
                     ctx: RequestContext, received_sha256: str | None = None) -> IngestResult:
        """Ingest the received photo: its bytes, or the file holding them (removed afterwards,
        whatever happens). ``received_sha256``: their SHA-256 if the caller hashed them as they
        arrived (it vouches for it); else they are hashed here."""
        try:
            result = self._ingest_photo(upload, meta, idempotency_key=idempotency_key, ctx=ctx,
                                        received_sha256=received_sha256)
        except StorageError as exc:
            self._audit_failed_store(ctx, meta.patient.identifier, exc)
            raise
        except AdapterError as exc:  # not an image, undecodable...: refused, audited once
            self.audit_refusal(ctx, exc, meta.patient.identifier)
            raise
        INGESTS.labels(ctx.channel, "replayed" if result.replayed else "stored").inc()
        return result

    def _ingest_photo(self, upload: Path | bytes, meta: PhotoMetadata, *, idempotency_key: str | None,
                      ctx: RequestContext, received_sha256: str | None) -> IngestResult:
        staged: Path | None = None
        committed = False
        try:
            if idempotency_key:
                keyed = self._store.find_keyed_receipt(idempotency_key)
                if keyed is not None:
                    return self._answer_replay(ctx, meta, lambda: self._replay(keyed, meta, upload, received_sha256))
            patient = meta.patient.identifier
            now = self._now()
            assessment = self._assessed(meta, ctx, now)
            staged = self._blobs.new_staging_path()
            image = _of_file(self._sanitized, upload, staged, received_sha256)
            if not idempotency_key and (withdrawn := self._withdrawn_retry(meta, image.sha256,
                                                                          image.received_sha256)) is not None:
                return self._answer_replay(ctx, meta, lambda: IngestResult(receipt=withdrawn, replayed=True))
            # built before the blob is committed: a refusal while building (a consent form over
            # the pixel limit, say) leaves nothing behind, the staged photo discarded
            unit = self._unit(meta, image, assessment, idempotency_key, ctx, now)
            # stored for the patient before (a retry without the key, or under another): found by
            # the photo as stored, else as received (a release that strips otherwise stored other
            # bytes for it: verify review 2, finding 1); a concurrent retry is decided by the
            # save's unique (patient, stored image) below
            previous = self._store.find_receipt(patient=patient, stored_sha256=image.sha256,
                                                received_sha256=image.received_sha256)
            if previous is not None:
                return self._answer_replay(ctx, meta, lambda: IngestResult(receipt=previous, replayed=True))
            self._blobs.commit(staged, image.sha256)
            committed = True
            try:
                try:
                    self._store.save_ingest(unit)
                except StudyStarted:
                    # another photo of the encounter opened its study meanwhile: this one joins it,
                    # made again with that study's StudyDate and StudyTime (once: a study opens once)
                    unit = self._unit(meta, image, assessment, idempotency_key, ctx, now)
                    self._store.save_ingest(unit)
            except PatientReferenceConflict as exc:  # the metadata's element (the store names the record's)
                exc.expression = ["patient.reference"]
                raise
            except Conflict:
                # stored before (a retry without the key, or a concurrent retry that won the
                # race): answer with its receipt
                again = self._store.find_keyed_receipt(idempotency_key) if idempotency_key else None
                if again is not None:
                    return self._answer_replay(ctx, meta,
                                               lambda: self._replay(again, meta, upload, image.received_sha256))
                again_stored = self._store.find_receipt(patient=patient, stored_sha256=image.sha256,
                                                        received_sha256=image.received_sha256)
                if again_stored is None:
                    raise
                return self._answer_replay(ctx, meta, lambda: IngestResult(receipt=again_stored, replayed=True))
            if unit.outbox and self.on_commit is not None:
                self.on_commit()
            return IngestResult(receipt=answered(unit.receipt), replayed=False)
        finally:
            if isinstance(upload, Path):
                upload.unlink(missing_ok=True)
            if staged is not None and not committed:  # only on the way out of a failure
                self._discard_after_failure(staged)

    def ingest_documents(self, documents: Sequence[tuple[bytes, PhotoMetadata]], *, idempotency_key: str | None,
                         ctx: RequestContext, locate: Locate) -> list[IngestResult]:
        """Ingest the documents of one submission (a transaction of several: IHE MHD ITI-65, FHIR
        http.html#transaction), all or none. Of one patient, and one consent statement if any
        (the Consent sent once: recorded once, restricted to all of their records).

        Every document goes through the rules, stripping and proof as :meth:`ingest_photo`'s
        photo does, and the resources of each are built, before anything is stored; a refusal
        of any refuses them all, its expressions as ``locate(document index, expressions)`` says.
        Then every blob is committed and every unit written in ONE database transaction
        (RecordStore.save_ingests). The same document twice is refused (422).

        Stored before: with ``idempotency_key``, the submission stored under it is the answer as a
        whole, each document checked as a retry of it (the same bytes, patient, statement and
        description), else refused, nothing new stored; a key used for another request is refused
        (422). Without a key, the documents' receipts decide: all stored for the patient before (a
        resend) is answered with their receipts, each checked as a retry; some stored and some
        not is refused (409, naming the stored ones), nothing stored (a client resending part of a
        submission with new documents must send the new ones alone, or all as stored)."""
        try:
            results = self._ingest_documents(documents, idempotency_key=idempotency_key, ctx=ctx, locate=locate)
        except StorageError as exc:
            self._audit_failed_store(ctx, documents[0][1].patient.identifier, exc)
            raise
        except AdapterError as exc:
            self.audit_refusal(ctx, exc, documents[0][1].patient.identifier)
            raise
        for result in results:
            INGESTS.labels(ctx.channel, "replayed" if result.replayed else "stored").inc()
        return results

    def _ingest_documents(self, documents: Sequence[tuple[bytes, PhotoMetadata]], *, idempotency_key: str | None,
                          ctx: RequestContext, locate: Locate) -> list[IngestResult]:
        if idempotency_key:
            keyed = self._store.find_keyed_receipt(idempotency_key)
            if keyed is not None:
                return self._replay_documents(ctx, documents, keyed, locate)
        now = self._now()
        record_refs = [f"{self._tables.kinds[meta.kind].resource}/{_new_id()}" for _, meta in documents]
        shared = _SharedConsent(_new_id(), tuple(record_refs), record_refs[0]) \
            if documents[0][1].consent is not None else None
        staged: list[Path] = []
        units: list[IngestUnit] = []
        try:
            seen: dict[str, int] = {}
            opened: dict[str, PhotoStudy] = {}  # a study opened by a document: the later ones of it join it
            for k, (data, meta) in enumerate(documents):
                with _of_document(k, locate):
                    assessment = self._assessed(meta, ctx, now)
                    staged.append(self._blobs.new_staging_path())
                    try:
                        image = self._sanitized(data, staged[-1], None)
                    except AdapterError as exc:  # the image's fault: its Binary is named
                        exc.expression = exc.expression or ["file"]
                        raise
                    if image.sha256 in seen:  # its receipt would take the first one's place
                        raise InvalidInput(f"this document is the transaction's document {seen[image.sha256] + 1} again "
                                           "(the same image once stored): nothing was stored", expression="file",
                                           refusal=RefusalCode.DUPLICATE_DOCUMENT)
                    seen[image.sha256] = k
                    units.append(self._unit(meta, image, assessment, idempotency_key if k == 0 else None, ctx, now,
                                            record_id=record_refs[k].partition("/")[2], shared=shared,
                                            opened=opened))
            units[0].receipt[SUBMISSION] = [unit.stored_sha256 for unit in units]
            # documents stored before are answered before any blob is committed: a partial resend
            # (409) leaves no image of its new documents behind
            previous = self._receipts_of(units)
            if any(receipt is not None for receipt in previous):
                return self._answer_stored_before(ctx, documents, units, previous, locate)
            if not idempotency_key:
                self._refuse_withdrawn_retries(ctx, documents, units, locate)
            for unit in units:  # a committed blob is no longer staged: not discarded below
                self._blobs.commit(staged[0], unit.stored_sha256)
                staged.pop(0)
            try:
                self._store.save_ingests(units)
            except Conflict as exc:  # a concurrent submission stored some of them meanwhile
                return self._documents_stored_before(ctx, documents, units, idempotency_key, locate, exc)
        finally:
            for path in staged:  # only on the way out of a failure
                self._discard_after_failure(path)
        if any(unit.outbox for unit in units) and self.on_commit is not None:
            self.on_commit()
        return [IngestResult(receipt=answered(unit.receipt), replayed=False) for unit in units]

    def _documents_stored_before(self, ctx: RequestContext, documents: Sequence[tuple[bytes, PhotoMetadata]],
                                 units: Sequence[IngestUnit], idempotency_key: str | None, locate: Locate,
                                 conflict: Conflict) -> list[IngestResult]:
        """The answer to a submission whose units conflicted with what a concurrent request stored
        after they were looked up (nothing of it was stored): the submission stored under the key
        (a concurrent retry that won the race), else :meth:`_answer_stored_before`. Its blobs
        were committed already and are left to ``verify --remove-unreferenced``: removing one is
        not safe here, a content-addressed blob being perhaps another record's (the racing
        request's own), and that removal waits a grace period for this very reason."""
        if idempotency_key:
            again = self._store.find_keyed_receipt(idempotency_key)
            if again is not None:
                return self._replay_documents(ctx, documents, again, locate)
        previous = self._receipts_of(units)
        if not any(receipt is not None for receipt in previous):
            raise conflict
        return self._answer_stored_before(ctx, documents, units, previous, locate)

    def _withdrawn_retry(self, meta: PhotoMetadata, stored_sha256: str,
                         received_sha256: str | None) -> dict[str, Any] | None:
        """The receipt of a record stored for the patient with this image and marked
        entered-in-error since, of which a request without an Idempotency-Key is a retry: one
        that describes the photo as it was stored (or was stored without its description kept:
        a retry cannot be told apart, so it is one). None: the request files the photo again
        (with corrected details), as docs/operations.md says; the withdrawn record does not hold
        the patient's (photo) unique any more (adapter.store.schema withdrawn_receipts). Found by
        the photo as stored, or as received (``received_sha256``: stored otherwise by an older
        release)."""
        for receipt in self._store.find_withdrawn_receipts(patient=meta.patient.identifier,
                                                           stored_sha256=stored_sha256,
                                                           received_sha256=received_sha256):
            if not differing(receipt, meta):
                return receipt
        return None

    def _refuse_withdrawn_retries(self, ctx: RequestContext, documents: Sequence[tuple[bytes, PhotoMetadata]],
                                  units: Sequence[IngestUnit], locate: Locate) -> None:
        """Refuse (409, audited) a submission without an Idempotency-Key any of whose documents
        is a retry of a record marked entered-in-error since (:meth:`_withdrawn_retry`)."""
        for k, ((_data, meta), unit) in enumerate(zip(documents, units, strict=True)):
            if (withdrawn := self._withdrawn_retry(meta, unit.stored_sha256,
                                                   received_sha256_of(unit.receipt))) is not None:
                with _of_document(k, locate):
                    self._checked_replay(ctx, meta, partial(IngestResult, withdrawn, True))

    def _receipts_of(self, units: Sequence[IngestUnit]) -> list[dict[str, Any] | None]:
        """The receipt of each unit's document stored for its patient before (same stored
        SHA-256, or the same received SHA-256: stored otherwise by an older release), None for one
        that was not."""
        return [self._store.find_receipt(patient=unit.patient, stored_sha256=unit.stored_sha256,
                                         received_sha256=received_sha256_of(unit.receipt)) for unit in units]

    def _answer_stored_before(self, ctx: RequestContext, documents: Sequence[tuple[bytes, PhotoMetadata]],
                              units: Sequence[IngestUnit], previous: Sequence[dict[str, Any] | None],
                              locate: Locate) -> list[IngestResult]:
        """The answer to a submission some of whose documents were stored for the patient before
        (``previous``: their receipts): the receipts if every one was, each checked as a retry,
        else a refusal (409, audited) naming those that were (:meth:`ingest_documents`)."""
        stored = [k for k, receipt in enumerate(previous) if receipt is not None]
        if len(stored) < len(units):
            refusal = Conflict(
                f"{len(stored)} of the {len(units)} documents of this transaction are stored for the patient already, "
                "the others not: nothing was stored; send the new documents without the stored ones",
                expression=[where for k in stored for where in locate(k, ["record"])],
                refusal=RefusalCode.PARTIALLY_STORED)
            self._auditor.record(ctx, interaction="create", action="C", decision=None, entities=[],
                                 patient=units[0].patient, reason=refusal.diagnostics, refused=True)
            refusal.audited = True
            raise refusal
        return self._answer_replays(ctx, documents, [partial(IngestResult, receipt, True) for receipt in previous
                                                     if receipt is not None], locate)

    def _replay_documents(self, ctx: RequestContext, documents: Sequence[tuple[bytes, PhotoMetadata]],
                          keyed: tuple[dict[str, Any], Identifier], locate: Locate) -> list[IngestResult]:
        """The submission stored under the request's Idempotency-Key, if the request is the one it
        was stored for: as many documents, each the same (:meth:`_replay`); else refused (422)."""
        receipt, patient = keyed
        hashes = receipt.get(SUBMISSION)
        if not isinstance(hashes, list) or len(hashes) != len(documents):
            refusal = BusinessRuleViolation(f"this Idempotency-Key was used for another request: nothing was stored; "
                                            f"{_KEY_REUSED_ADVICE}", expression="Idempotency-Key",
                                            refusal=RefusalCode.IDEMPOTENCY_KEY_REUSED)
            self._auditor.record(ctx, interaction="create", action="C", decision=None, entities=[],
                                 patient=documents[0][1].patient.identifier, reason=refusal.diagnostics, refused=True)
            refusal.audited = True
            raise refusal
        receipts = [receipt]
        for sha256 in hashes[1:]:
            found = self._store.find_receipt(patient=patient, stored_sha256=str(sha256)) or next(
                iter(self._store.find_withdrawn_receipts(patient=patient, stored_sha256=str(sha256))), None)
            if found is None:  # stored in the same transaction as the first: never gone (no deletes)
                raise StorageError("a document stored with this Idempotency-Key cannot be read back")
            receipts.append(found)
        try:  # each the same bytes and patient as stored under the key, else the key was another request's
            for k, ((data, meta), stored) in enumerate(zip(documents, receipts, strict=True)):
                with _of_document(k, locate):
                    self._replay((stored, patient), meta, data, None)
        except BusinessRuleViolation as exc:
            self._auditor.record(ctx, interaction="create", action="C", decision=None, entities=[],
                                 patient=documents[0][1].patient.identifier, reason=exc.diagnostics, refused=True)
            exc.audited = True
            raise
        return self._answer_replays(ctx, documents, [partial(IngestResult, stored, True) for stored in receipts],
                                    locate)

    def _answer_replays(self, ctx: RequestContext, documents: Sequence[tuple[bytes, PhotoMetadata]],
                        replays: Sequence[Callable[[], IngestResult]], locate: Locate) -> list[IngestResult]:
        """Each document's ``replays`` receipt, if every document is a retry of the one it was
        stored as (:meth:`_answer_replay`); the answers audited together, once all are checked."""
        results: list[IngestResult] = []
        for k, ((_data, meta), replay) in enumerate(zip(documents, replays, strict=True)):
            with _of_document(k, locate):
                results.append(self._checked_replay(ctx, meta, replay))
        self._audit_replays(ctx, [(meta, result) for (_data, meta), result in zip(documents, results, strict=True)])
        return results

    def _assessed(self, meta: PhotoMetadata, ctx: RequestContext, now: datetime) -> Any:
        """The guidance and policy rules' assessment of the photo (adapter.consent.assess_ingest)
        and whether it can be forwarded; a refusal by them is a decision, audited."""
        patient = meta.patient.identifier
        try:
            assessment = assess_ingest(meta, self._grants.grants_for_patient(patient), self._tables, now)
            check_capture_time(meta, now)  # a time it was taken ahead: refused as a consent's date is
            self._check_forwardable(meta)
        except (BusinessRuleViolation, InvalidInput) as exc:  # every refusal of the rules is a decision:
            # audited, as reads are (a missing discussion note or colleague, an unknown purpose too)
            self._auditor.record(ctx, interaction="create", action="C", decision=None, entities=[],
                                 patient=patient, reason=exc.diagnostics, refused=True)
            exc.audited = True
            raise
        return assessment

    def _sanitized(self, upload: Path | bytes, staged: Path, received_sha256: str | None) -> StoredImage:
        """The photo stripped of its metadata into ``staged``, proven and measured
        (adapter.imaging.sanitize), as it is stored. A photo with a side no DICOM object can hold
        (check_rows_columns) is refused before it is decoded: every photo stored becomes one."""
        policy = self._tables.policy
        facts = sanitize(upload, staged, quality=policy.quality, limits=policy.limits,
                         received_sha256=received_sha256, check_size=_check_sides)
        device_name = None
        if policy.metadata.keep_device_model and (facts.device_make or facts.device_model):
            device_name = " ".join(p for p in (facts.device_make, facts.device_model) if p)
        return StoredImage(
            content_type=facts.content_type, width=facts.width, height=facts.height,
            size=facts.stored_size, sha256=facts.stored_sha256, received_sha256=facts.received_sha256,
            removed=facts.removed,
            capture_time=facts.capture_time if policy.metadata.keep_capture_time else None,
            device_name=device_name, quality_warnings=facts.quality_warnings, orientation=facts.orientation)

    def _discard_after_failure(self, staged: Path) -> None:
        """Remove the staged photo of an ingest that failed; a failure to remove it is logged and
        does not replace the ingest's own failure (the answer says what failed first). The
        staging sweep removes it later."""
        try:
            self._blobs.discard(staged)
        except StorageError as exc:
            log.warning("a staged photo could not be removed after a failed ingest (%s); the staging sweep "
                        "removes it later", errno_name(exc) or type(exc).__name__)

    def audit_refusal(self, ctx: RequestContext, error: AdapterError, patient: Identifier | None) -> None:
        """Audit a create of a photo or a submission refused with ``error`` (the request could not
        be read, its image is not one, the Bundle breaks a rule of its shape...), unless it is
        audited already (``error.audited``: by the rules, a replay's check, a failed store): a
        refused create, outcome 4, with the refusal's diagnostics (what the OperationOutcome says;
        no more patient data than the rules' refusals carry), naming ``patient`` where the request
        was read far enough to know it (IHE BALP; "every decision is audited"). A StorageError
        (the adapter failed, not the request) is audited as :meth:`_audit_failed_store` does.
        The error is marked audited; the request fails with it whatever the audit does."""
        if error.audited:
            return
        if isinstance(error, StorageError):
            self._audit_failed_store(ctx, patient, error)
            return
        error.audited = True
        self._auditor.record_refused_write(ctx, interaction="create", action="C", error=error, entities=[],
                                           patient=patient)

    def _audit_failed_store(self, ctx: RequestContext, patient: Identifier | None, error: StorageError) -> None:
        """Audit a photo (a POST /photos, or the document of a transaction) the adapter failed to
        store: refused for want of room (507) or lost to a failing disk or database (503). A
        create that failed, outcome 8 Serious failure (ATNA; a C-STORE or STOW-RS object the
        adapter fails to keep is audited alike), saying why and naming the patient the request
        named and the request; nothing of the photo was stored. The event is written in its own
        transaction; when that fails too (the database is what failed), it is logged by the
        request id, without patient data, and the request fails as it would have."""
        error.audited = True
        try:
            self._auditor.record_failed_write(ctx, interaction="create", action="C", reason=error.diagnostics,
                                              patient=patient)
        except Exception as exc:  # noqa: BLE001 - the failure stands whatever the audit store does
            log.error("could not audit the failed store of a photo (request %s): %s", ctx.request_id or "-",
                      type(exc).__name__)

    def _check_forwardable(self, meta: PhotoMetadata) -> None:
        """A photo forwarded to the PACS (ADAPTER_FORWARD_TO, the policy's ``forwardKinds``)
        must become a DICOM object, so its patient identifier must be a PatientID with an
        IssuerOfPatientID (mappings/dicom.yaml). One that cannot is refused before anything is
        stored: stored, its outbox item would fail at every attempt and the PACS never get it."""
        if not self._destinations or meta.kind not in self._tables.policy.forward_kinds:
            return
        try:
            self._dicom_tables.patient_identifiers.to_dicom(meta.patient.identifier)
        except InvalidInput as exc:  # UnknownCode too: an unmapped system
            element = "patient.system" if isinstance(exc, UnknownCode) else "patient.value"
            raise BusinessRuleViolation(
                f"{exc.diagnostics}: photos of this kind are forwarded to the PACS (ADAPTER_FORWARD_TO), so each "
                "must become a DICOM object; nothing was stored", expression=element) from exc

    def _answer_replay(self, ctx: RequestContext, meta: PhotoMetadata,
                       replay: Callable[[], IngestResult]) -> IngestResult:
        """The answer to a photo stored before: ``replay()``'s receipt if the request is a retry
        of the one that stored it (same key, bytes, patient, consent statement and description),
        else its refusal. Audited either way, as every other create is: the receipt answered (a create
        interaction that stored nothing new, naming the record it answers with) or the refusal
        (outcome 4, as the rules' refusals). A failure to write that audit fails the request
        (nothing was stored by it; the retry is answered the same)."""
        result = self._checked_replay(ctx, meta, replay)
        self._audit_replays(ctx, [(meta, result)])
        return result

    def _checked_replay(self, ctx: RequestContext, meta: PhotoMetadata,
                        replay: Callable[[], IngestResult]) -> IngestResult:
        """``replay()``'s receipt as answered, if the request is a retry of the one that stored it
        (:meth:`_answer_replay`); its refusal audited."""
        try:
            result = self._same_description(
                self._same_master_identifier(self._same_statement(self._held(replay()), meta), meta), meta)
        except (BusinessRuleViolation, Conflict) as exc:
            self._auditor.record(ctx, interaction="create", action="C", decision=None, entities=[],
                                 patient=meta.patient.identifier, reason=exc.diagnostics, refused=True)
            exc.audited = True
            raise
        receipt = answered(result.receipt)
        if "outcome" not in receipt and (rebuilt := replayed_outcome(receipt)) is not None:
            # a receipt stored before receipts had one: given it, beside its warnings
            members = list(receipt.items())
            at = next((k + 1 for k, (name, _) in enumerate(members) if name == "warnings"), len(members))
            receipt = dict([*members[:at], ("outcome", rebuilt), *members[at:]])
        return IngestResult(receipt=receipt, replayed=True)

    def _audit_replays(self, ctx: RequestContext, replays: Sequence[tuple[PhotoMetadata, IngestResult]]) -> None:
        """Audit the receipts answered to retries, a create event each naming the record it answers
        with, in one transaction. No decision was taken (the metrics count decisions): the events alone."""
        events = []
        for meta, result in replays:
            receipt = result.receipt
            answered_refs = [str(ref) for ref in (receipt.get("record"), receipt.get("binary"),
                                                  *(receipt.get("consents") or ()), receipt.get("provenance")) if ref]
            events.append(self._auditor.event(ctx, interaction="create", action="C", permitted=True, reason=REPLAYED,
                                              entities=answered_refs, patient=meta.patient.identifier))
        self._store.append_audit(*events)

    @staticmethod
    def _held(replay: IngestResult) -> IngestResult:
        """``replay``, unless the record it was stored as is marked entered-in-error since
        (WITHDRAWN): its image is released to no one, so the receipt (``safeToDeleteFromDevice``)
        would have the device delete the last usable copy. Refused as a conflict (409, code
        ``stored-entered-in-error``, no Location: the photo is held nowhere), nothing stored: the
        device keeps the photo and files it again, corrected, under a new Idempotency-Key."""
        if not replay.receipt.get(WITHDRAWN):
            return replay
        raise Conflict(f"this request was stored as {replay.location}, which has since been marked entered-in-error: "
                       "its image is released to no one and nothing was stored now; keep the photo on the device and "
                       "file it again with corrected details under a new Idempotency-Key (docs/operations.md, "
                       "Correcting a misfiled record)", details_code=details_code(STORED_ENTERED_IN_ERROR),
                       refusal=RefusalCode.STORED_ENTERED_IN_ERROR)

    def _same_statement(self, replay: IngestResult, meta: PhotoMetadata) -> IngestResult:
        """``replay``, if the request's consent statement is the one recorded with the photo
        (the same purposes and method as the first version of a Consent its receipt names).
        A retry sends the same statement; another statement (a broader one, or one for a photo
        stored without, another date) would be dropped while the answer says the photo is stored:
        refused as a conflict (409), nothing new stored, so the new consent is recorded as a
        Consent. A date is compared as the instant it is (a date alone as its first instant in
        UTC), and only when the request gives one (else the Consent's is when it was stored)."""
        statement = meta.consent
        if statement is None:
            return replay
        wanted = (frozenset(statement.purposes), statement.method)
        when = utc_instant(statement.date) if statement.date is not None else None
        for reference in replay.receipt.get("consents") or ():
            first = self._store.get_version("Consent", str(reference).partition("/")[2], 1)
            grants = grants_from_consent(first) if first is not None else []
            # a Consent that does not say how it was given (a Bundle's, stored as sent) was judged verbal
            recorded = (frozenset(p for g in grants for p in g.purposes),
                        (grants[0].method or ConsentMethod.VERBAL) if grants else None)
            # an implied statement reads as an implied grant (method IMPLIED): the method compares
            recorded_when = parse_fhir_datetime(first.get("dateTime")) if first is not None else None
            same_date = when is None or (recorded_when is not None and utc_instant(recorded_when) == when)
            if grants and recorded == wanted and same_date:
                return replay
        raise _stored_otherwise(f"this photo is stored for the patient already ({replay.location}) with another "
                                f"consent statement: nothing was stored, this statement neither; record it with "
                                f"POST /fhir/Consent", replay, expression="consent")

    def _same_master_identifier(self, replay: IngestResult, meta: PhotoMetadata) -> IngestResult:
        """``replay``, unless the request names the document by another masterIdentifier than
        the stored record's (IHE MHD: its uniqueId, which ITI-67 ``identifier`` finds it by). A
        retry sends the same one; under another, answering with the stored record would say the
        document is stored while the new identifier is dropped (a search by it finds nothing):
        refused as a conflict (409), nothing new stored. Only a DocumentReference keeps one."""
        wanted = meta.master_identifier
        kind, _, record_id = replay.location.partition("/")
        if wanted is None or kind != "DocumentReference":
            return replay
        stored = self._store.get(kind, record_id)
        master = stored.resource.get("masterIdentifier") if stored is not None else None
        if isinstance(master, dict) and (master.get("system"), master.get("value")) == (wanted.system, wanted.value):
            return replay
        raise _stored_otherwise(f"this document is stored for the patient already ({replay.location}) under "
                                "another masterIdentifier: nothing was stored, this identifier neither (a document keeps "
                                "the one it was stored under)", replay, expression="masterIdentifier")

    @staticmethod
    def _same_description(replay: IngestResult, meta: PhotoMetadata) -> IngestResult:
        """``replay``, unless the request describes the photo otherwise than it was stored (its
        kind, source, body site, laterality, note, takenAt, author, encounter, device,
        colleague…: adapter.services.photo_description). A retry sends the same description;
        answering another with the stored receipt would say the photo is stored as sent while
        the difference is dropped (a corrected side, say): refused as a conflict (409), nothing
        new stored, naming the fields that differ. A receipt stored before descriptions were
        kept is answered as before."""
        fields = differing(replay.receipt, meta)
        if not fields:
            return replay
        raise _stored_otherwise(f"this photo is stored for the patient already as {replay.location} with other "
                                f"details ({', '.join(fields)}): nothing was stored, these details neither; a stored "
                                "record is not updated here (a retry that describes the photo as it was stored gets "
                                "its receipt; a record filed with wrong details is marked entered-in-error and the "
                                "photo filed again: docs/operations.md, Correcting a misfiled record)",
                                replay, expression=fields)

    @staticmethod
    def _replay(keyed: tuple[dict[str, Any], Identifier], meta: PhotoMetadata, upload: Path | bytes,
                received_sha256: str | None) -> IngestResult:
        """The receipt stored under the request's Idempotency-Key, if the request is the one it
        was stored for: the same patient and the same bytes. A key reused for another photo or
        patient is refused (422): answering with the first receipt would tell the capture app
        that this photo is stored, and safe to delete from the device, when it is not."""
        receipt, patient = keyed
        if received_sha256 is None:
            received_sha256 = file_sha256(upload) if isinstance(upload, Path) else hashlib.sha256(upload).hexdigest()
        hashes = receipt.get("sha256")
        stored_for = hashes.get("received") if isinstance(hashes, dict) else None
        if patient != meta.patient.identifier or stored_for != received_sha256:
            raise BusinessRuleViolation(
                f"this Idempotency-Key was used for another photo or patient: nothing was stored; {_KEY_REUSED_ADVICE}",
                expression="Idempotency-Key", refusal=RefusalCode.IDEMPOTENCY_KEY_REUSED)
        return IngestResult(receipt=receipt, replayed=True)

    def _photo_attributes(self, record: dict[str, Any], image: StoredImage, meta: PhotoMetadata,
                          uids: PhotoUids, now: datetime, study: PhotoStudy) -> InstanceAttributes:
        """What the photo's DICOM object says of its series and itself (QIDO-RS: SeriesNumber,
        InstanceNumber, Rows and Columns as the object is oriented…): read from the object as
        every regeneration makes it (adapter.services.dicom_objects.dicom_object_for) but its
        pixels (adapter.mapping.dicom_photo.photo_without_pixels: the photo is neither read back
        nor decoded), so a search shows what a retrieve returns. An object that cannot be made
        (then no retrieve can either) has none."""
        try:
            ds = photo_without_pixels(record, width=image.width, height=image.height,
                                      orientation=image.orientation, kind=meta.kind,
                                      patient=meta.patient.identifier, uids=uids, tables=self._tables,
                                      dicom_tables=self._dicom_tables, now=now, study=study)
        except AdapterError:
            return InstanceAttributes()
        return instance_attributes(ds)

    def _unit(self, meta: PhotoMetadata, image: StoredImage, assessment: Any, idempotency_key: str | None,
              ctx: RequestContext, now: datetime, *, record_id: str | None = None,
              shared: _SharedConsent | None = None, opened: dict[str, PhotoStudy] | None = None) -> IngestUnit:
        """What the ingest of the photo writes. ``record_id``: its record's id, when chosen before;
        ``shared``: the Consent of the statement sent once for every document of a submission
        (instead of one of this photo's own), created with this photo when it names it;
        ``opened``: the studies opened by the submission's documents before this one (by Study
        Instance UID), which this one joins, and to which it adds the one it opens."""
        check_exif_capture_time(meta, image.capture_time, now)  # when it says when the photo was taken
        kind_entry = self._tables.kinds[meta.kind]
        record_type = kind_entry.resource
        record_id = record_id or _new_id()
        binary_id, provenance_id = _new_id(), _new_id()
        own_statement = meta if shared is None else meta.model_copy(update={"consent": None})
        n_consents = (1 if own_statement.consent is not None else 0) + (1 if assessment.implied_purposes else 0)
        consent_ids = [_new_id() for _ in range(n_consents)]
        built = build_photo_resources(
            own_statement, image, record_id=record_id, binary_id=binary_id, provenance_id=provenance_id,
            consent_ids=consent_ids, assessment_notes=assessment.notes,
            assessment_warnings=assessment.warnings, consent_pending=assessment.consent_pending,
            implied_purposes=assessment.implied_purposes, tables=self._tables, now=now)
        record_ref = f"{record_type}/{record_id}"
        if shared is not None and shared.created_with == record_ref and meta.consent is not None:
            built.consents.insert(0, consent_from_statement(
                meta.consent, consent_id=shared.id, patient=meta.patient, tables=self._tables, now=now,
                recorded_by=meta.author, record_refs=shared.records))
        patient = meta.patient.identifier
        # The photo's DICOM identity is fixed now, so the record names it and every regeneration
        # of the object (forwarding, WADO-RS) carries the same UIDs. The encounter is the record's
        # (encounter_key: its literal reference, else system|value of its identifier), so photos
        # of one encounter share a study however the encounter is referenced.
        uids = photo_uids(self._uid_root, self._uid_key, record_id=record_id,
                          encounter=(encounter := encounter_key(built.record)), patient=patient)
        built.record.setdefault("identifier", []).append(
            {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{uids.sop_instance}"})
        # StudyDate and StudyTime are the study's (PS3.3 C.7.2.1: the same in every instance of
        # it): those of the first photo stored for it, which every photo of the study stored
        # carries (any one will do), else this photo's own, the first (adapter.mapping.dicom_photo)
        if encounter is None:  # a study of its own (its UID made from the record's id): nothing to join or check
            study, opens_study = photo_study(built.record), False
        elif opened is not None and uids.study in opened:  # opened by a document before it in the submission
            study, opens_study = opened[uids.study], False
        else:
            study, opens_study = self._photo_study(built.record, uids)
            if opened is not None and opens_study:
                opened[uids.study] = study
        iod = self._dicom_tables.kinds[meta.kind]
        dicom_instance = DicomInstance(
            sop_instance_uid=uids.sop_instance, study_instance_uid=uids.study,
            series_instance_uid=uids.series, sop_class_uid=iod.sop_class, modality=iod.modality,
            record_type=record_type, record_id=record_id, patient=patient, blob_sha256=None,
            # the StudyDate and StudyTime the object carries (adapter.mapping.dicom_photo), kept
            # with the offset its object is written in (its attributes) for every regeneration
            study_date=study.date, study_time=study.time, created=now,
            attributes=self._photo_attributes(built.record, image, meta, uids, now, study),
            # how its object is made, kept so that every regeneration is this one
            object_version=PHOTO_OBJECT_VERSION)
        outbox = [NewOutboxItem(sop_instance_uid=uids.sop_instance, destination=d) for d in self._destinations
                  if meta.kind in self._tables.policy.forward_kinds]
        named_consent_ids = tuple(dict.fromkeys(((shared.id,) if shared is not None else ())
                                                  + tuple(str(c["id"]) for c in built.consents)))
        facts = AccessFacts(governed_by=record_ref, patient=patient, kind=meta.kind, source=meta.source,
                            consent_pending=assessment.consent_pending, consent_ids=named_consent_ids)
        patient_index = SearchIndex(patient=patient, patient_reference=meta.patient.reference)
        provenance_index = index_resource(built.provenance)
        provenance_index = SearchIndex(patient=patient, patient_reference=meta.patient.reference,
                                       date=provenance_index.date, date_last=provenance_index.date_last,
                                       status=provenance_index.status,
                                       tokens=provenance_index.tokens)
        resources = [
            NewResource(record_type, record_id, built.record, index_resource(built.record), facts,
                        blob_sha256=image.sha256),
            NewResource("Binary", binary_id, built.binary, patient_index, facts, blob_sha256=image.sha256),
            NewResource("Provenance", provenance_id, built.provenance, provenance_index, facts),
        ]
        for consent in built.consents:
            resources.append(NewResource("Consent", str(consent["id"]), consent, index_resource(consent), None))
        created = [f"{r.resource_type}/{r.id}" for r in resources]
        warnings = [*assessment.warnings, *image.quality_warnings, *capture_time_warnings(meta.taken_at, image.capture_time)]
        if self._store.filed_for_another_patient(patient=meta.patient.identifier, stored_sha256=image.sha256):
            warnings.append(FILED_FOR_ANOTHER_PATIENT_WARNING)  # the receipt's only: not in the record
        receipt: dict[str, Any] = {
            "record": record_ref,
            "binary": f"Binary/{binary_id}",
            "consents": [f"Consent/{c}" for c in named_consent_ids],
            "provenance": f"Provenance/{provenance_id}",
            "created": created,
            "sha256": {"received": image.received_sha256, "stored": image.sha256},
            "size": {"stored": image.size},
            "metadataRemoved": list(image.removed),
            "warnings": warnings,
            # the same as FHIR issues, coded (adapter.mapping.ingest_warnings)
            "outcome": receipt_outcome(warnings, consent_pending=assessment.consent_pending,
                                       quality=image.quality_warnings),
            "consentPending": assessment.consent_pending,
            "safeToDeleteFromDevice": True,
            # kept with the receipt to compare a retry with, never answered (photo_description)
            DESCRIPTION: describe(meta),
        }
        audit = self._auditor.event(ctx, interaction="create", action="C", permitted=True, reason=None,
                                    entities=created, patient=patient)
        receipt["dicom"] = {"studyInstanceUid": uids.study, "seriesInstanceUid": uids.series,
                            "sopInstanceUid": uids.sop_instance,
                            "forwardTo": [item.destination for item in outbox]}
        return IngestUnit(resources=resources, receipt=receipt, idempotency_key=idempotency_key,
                          patient=patient, stored_sha256=image.sha256, audit_events=[audit],
                          dicom_instance=dicom_instance, released_uids=self._released_uids.rows(dicom_instance),
                          outbox=outbox, opens_study=opens_study)

    def _photo_study(self, record: dict[str, Any], uids: PhotoUids) -> tuple[PhotoStudy, bool]:
        """The study's date, time and offset for the photo's object, and whether the photo opens
        its study: a stored photo's of the study (one lookup of the study's index), else its own.
        A stored photo whose offset is not read yet (stored before schema 13) gives its date and
        time, in this photo's offset."""
        own = photo_study(record)
        joined = self._store.find_study_photo(uids.study)
        if joined is None:
            return own, True
        return study_of(joined) or PhotoStudy(joined.study_date, joined.study_time, own.offset), False


#: What a refusal of an Idempotency-Key reused for another photo or patient advises: a new key
#: for a photo of its own; for the same photo sent again to correct its patient, the correction
#: (a new key alone would file it under a second patient, the wrong record staying in care).
_KEY_REUSED_ADVICE = ("if the photo stored under this key was filed under the wrong patient (or with other wrong "
                      "details), have that record marked entered-in-error and then file this photo again under a new "
                      "key (docs/operations.md, Correcting a misfiled record); a photo of its own needs a key of its "
                      "own")


def _stored_otherwise(diagnostics: str, replay: IngestResult, *, expression: str | list[str]) -> Conflict:
    """The refusal (409) of a retry of a photo stored and held with other details than the
    request's: ``Location`` names the stored record and ``details.coding`` says
    ``stored-with-other-details`` (adapter.mapping.ingest_warnings), so an app can tell "stored,
    your details differ" (the photo is held: it may be deleted from the device once the record
    is checked) from "not stored"."""
    refusal = Conflict(diagnostics, expression=expression, details_code=details_code(STORED_WITH_OTHER_DETAILS),
                       refusal=RefusalCode.STORED_WITH_OTHER_DETAILS)
    refusal.location = replay.location
    return refusal


def _check_sides(width: int, height: int) -> None:
    """A photo with a side no DICOM object can hold (check_rows_columns) is refused, naming the
    image (``file``; in a transaction, its Binary's entry)."""
    try:
        check_rows_columns(width, height)
    except AdapterError as exc:
        exc.expression = exc.expression or ["file"]
        raise


def _of_file(sanitized: Callable[[Path | bytes, Path, str | None], StoredImage], upload: Path | bytes, staged: Path,
             received_sha256: str | None) -> StoredImage:
    """The photo sanitized; a refusal of its bytes (not decoding, truncated, HEIC…) names the
    ``file`` part, as a transaction's names its Binary (review mobile finding 9)."""
    try:
        return sanitized(upload, staged, received_sha256)
    except StorageError:
        raise
    except AdapterError as exc:
        exc.expression = exc.expression or ["file"]
        raise


@contextmanager
def _of_document(index: int, locate: Locate) -> Iterator[None]:
    """A refusal raised while working on the submission's document ``index`` points at it (at
    its record when it names nothing else: several documents were sent). A failure of the
    adapter's own (StorageError) is no document's."""
    try:
        yield
    except StorageError:
        raise
    except AdapterError as exc:
        exc.expression = locate(index, exc.expression or ["record"])
        raise
