"""DICOM ingest: an object received by the C-STORE SCP becomes a durable FHIR record (Media, or
DocumentReference for documents and PDFs; Binary; Provenance) in one atomic unit, as a photo
does over HTTP (adapter.services.ingest).

Order of work (cheap refusals first, nothing visible until the single commit):
1. idempotency by SOP Instance UID: an object stored before is answered with its record, and
   nothing new is written;
2. the file is checked to be complete (every element's length within the file, every undefined
   length closed by its delimiter); its SHA-256 is computed in a helper thread meanwhile;
3. the attributes are read with pydicom, pixel data deferred: the dataset's SOP Class and SOP
   Instance UIDs must be those of the C-STORE request and its presentation context;
4. mapping (adapter.mapping.dicom_fhir): patient through mappings/dicom.yaml, kind, identifiers;
5. the consent rules (adapter.consent.assess_ingest) for a source inside the organisation;
6. the Binary's bytes: the JPEG frame as received (no re-encoding), a lossless PNG of native
   pixel data, or the PDF;
7. blobs fsynced to their content addresses (invisible until referenced): the object as received
   (Part 10) and the Binary's bytes;
8. one database transaction: resources, DICOM instance, receipt, audit event.

A failure at any step leaves nothing: staged files are removed, committed blobs are only
content-addressed bytes nobody references. The received file itself belongs to the SCP.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import logging
import mmap
import os
import shutil
import struct
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from adapter.consent import IngestAssessment, assess_ingest, grants_from_consent
from adapter.errors import Conflict, InvalidInput, InvalidResource, StorageError
from adapter.mapping.dicom_fhir import (
    ExtractedImage,
    ReceivedObject,
    extract_image,
    read_received,
    received_to_fhir,
)
from adapter.mapping.dicom_tables import DicomTables
from adapter.mapping.fhir_r4 import index_resource
from adapter.mapping.tables import Tables
from adapter.model.consent import ConsentGrant
from adapter.model.dicom import DicomInstance
from adapter.model.photo import Colleague, Identifier, PatientRef, PhotoMetadata, PhotoSource
from adapter.model.purpose import PurposeOfUse, RequestContext
from adapter.model.record import AccessFacts, IngestUnit, NewResource, SearchIndex
from adapter.services.audit import Auditor
from adapter.store.port import BlobStore, RecordStore

log = logging.getLogger(__name__)

#: The issue's rule: a PACS inside the organisation (an allowed calling AE) is a colleague
#: inside the organisation, responsible for the consent of what it sends for care.
RECEIVED_SOURCE = PhotoSource.COLLEAGUE_INTERNAL

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_DEFER = 64 * 1024  # values larger than this are read from the file only when accessed


@dataclass(frozen=True)
class ReceivedStore:
    """One C-STORE request as the SCP received it: the spooled Part 10 file and its context."""

    path: Path
    calling_ae: str
    peer_address: str
    context_sop_class: str       # the presentation context's abstract syntax
    transfer_syntax: str         # the presentation context's transfer syntax
    affected_sop_class: str      # (0000,0002) of the request
    affected_sop_instance: str   # (0000,1000) of the request


@dataclass(frozen=True)
class DicomIngestResult:
    receipt: dict[str, Any]
    replayed: bool

    @property
    def record(self) -> str:
        return str(self.receipt["record"])


def _new_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# Part 10 completeness (PS3.10 7.1, PS3.5 7.1 and 7.5): lengths and delimiters only, no values.

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MAX_DEPTH = 32


class _Truncated(Exception):
    pass


def _header(buf: memoryview, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None, value length, position of the value) of the element at ``pos``."""
    if pos + 8 > len(buf):
        raise _Truncated(pos)
    group, element = struct.unpack_from("<HH", buf, pos)
    tag = group << 16 | element
    if implicit or group == 0xFFFE:  # items and delimiters have no VR in any syntax
        (length,) = struct.unpack_from("<I", buf, pos + 4)
        return tag, None, length, pos + 8
    vr = bytes(buf[pos + 4:pos + 6])
    if vr in _LONG_VRS:
        if pos + 12 > len(buf):
            raise _Truncated(pos)
        (length,) = struct.unpack_from("<I", buf, pos + 8)
        return tag, vr, length, pos + 12
    (length,) = struct.unpack_from("<H", buf, pos + 6)
    return tag, vr, length, pos + 8


def _skip(buf: memoryview, pos: int, length: int) -> int:
    end = pos + length
    if end > len(buf):
        raise _Truncated(pos)
    return end


def _walk_items(buf: memoryview, pos: int, implicit: bool, depth: int, *, fragments: bool) -> int:
    """Items up to and including the sequence delimiter; returns the position after it."""
    while True:
        tag, _vr, length, pos = _header(buf, pos, True)
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise InvalidInput(f"an item was expected at byte {pos - 8} of the dataset")
        if length == _UNDEFINED:
            if fragments:
                raise InvalidInput("an encapsulated pixel data fragment has no length")
            pos = _walk_dataset(buf, pos, implicit, depth + 1, in_item=True)
        else:
            pos = _skip(buf, pos, length)


def _walk_dataset(buf: memoryview, pos: int, implicit: bool, depth: int, *, in_item: bool) -> int:
    if depth > _MAX_DEPTH:
        raise InvalidInput("sequences are nested too deeply")
    while pos < len(buf):
        tag, vr, length, value = _header(buf, pos, implicit)
        if tag == _ITEM_END and in_item:
            return value
        if length != _UNDEFINED:
            pos = _skip(buf, value, length)
        elif tag == 0x7FE00010 and vr in (b"OB", b"OW"):
            pos = _walk_items(buf, value, implicit, depth, fragments=True)
        else:  # SQ, or UN / implicit VR of undefined length: a sequence (PS3.5 6.2.2, 7.5.1)
            pos = _walk_items(buf, value, implicit or vr == b"UN", depth, fragments=False)
    if in_item:
        raise _Truncated(pos)
    return pos


def _body_offset(buf: memoryview) -> int:
    """Where the dataset starts: after the preamble, ``DICM`` and the File Meta group."""
    if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
        raise InvalidInput("the received file is not DICOM Part 10")
    pos = 132
    while pos + 8 <= len(buf) and struct.unpack_from("<H", buf, pos)[0] == 0x0002:
        _tag, _vr, length, value = _header(buf, pos, False)
        pos = _skip(buf, value, length)
    return pos


def check_complete(path: Path, transfer_syntax: str) -> None:
    """Check that the Part 10 file at ``path`` is structurally complete: every element's length
    within the file, every undefined length closed by its delimiter.

    pydicom reads a truncated file without complaint (a cut value comes back short, a missing
    delimiter is a warning), so completeness is checked here from the encoding alone.

    Raises:
        InvalidInput: the file is truncated or malformed (the SCP answers Cannot Understand).
    """
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise InvalidInput("the received dataset is empty")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                buf = memoryview(mapped)
                try:
                    _walk_dataset(buf, _body_offset(buf), transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, 0,
                                  in_item=False)
                finally:
                    buf.release()
    except _Truncated as exc:
        raise InvalidInput(f"the dataset is truncated (an element at byte {exc.args[0]} runs past its end)") \
            from None
    except (OSError, ValueError) as exc:
        raise StorageError("the received dataset could not be read") from exc


class _FileDigest(threading.Thread):
    """SHA-256 of a file in a helper thread (hashlib releases the GIL on large buffers, so it
    runs beside the parsing and mapping in the ingesting thread)."""

    def __init__(self, path: Path) -> None:
        super().__init__(name="dicom-ingest-sha256", daemon=True)
        self._path = path
        self._digest: str | None = None
        self._error: OSError | None = None

    def run(self) -> None:
        try:
            with open(self._path, "rb") as fh:
                self._digest = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError as exc:
            self._error = exc

    def result(self) -> str:
        self.join()
        if self._digest is None:
            raise StorageError("the received dataset could not be read") from self._error
        return self._digest


#: What pydicom raises on a malformed value when it is first used (it parses lazily); anything
#: else escaping the mapping is a bug and answered as one.
_MALFORMED = (InvalidDicomError, ValueError, TypeError, KeyError, IndexError, EOFError, OverflowError,
              NotImplementedError, struct.error)


def read_dataset(path: Path) -> Dataset:
    """The dataset at ``path`` with values over 64 KiB (pixel data) left in the file until used.
    Call :func:`check_complete` first: pydicom does not notice a truncated file.

    Raises:
        InvalidInput: pydicom cannot parse it.
    """
    try:
        ds = dcmread(path, defer_size=_DEFER)
        ds.get("SOPInstanceUID")  # the first access parses the elements
    except OSError as exc:
        raise StorageError("the received dataset could not be read") from exc
    except _MALFORMED as exc:
        raise InvalidInput(f"the dataset does not parse ({type(exc).__name__})") from exc
    return ds


# ---------------------------------------------------------------------------------------------


class DicomIngestService:
    """Turns received DICOM objects into FHIR records (module docstring). Thread-safe: every
    association of the SCP calls :meth:`ingest_received` from its own thread."""

    def __init__(self, *, store: RecordStore, blobs: BlobStore, tables: Tables, dicom_tables: DicomTables,
                 auditor: Auditor, now: Callable[[], datetime]) -> None:
        self._store = store
        self._blobs = blobs
        self._tables = tables
        self._dicom_tables = dicom_tables
        # Records say the source the consent rules used (the photo-source extension).
        self._record_tables = dataclasses.replace(
            dicom_tables, receive=dicom_tables.receive.model_copy(update={"source": RECEIVED_SOURCE}))
        self._auditor = auditor
        self._now = now

    @property
    def dicom_tables(self) -> DicomTables:
        return self._dicom_tables

    @property
    def accepted_sop_classes(self) -> tuple[str, ...]:
        """The storage SOP classes the SCP negotiates (mappings/dicom.yaml ``receive``)."""
        return tuple(self._dicom_tables.receive.sop_classes)

    def _existing_grants(self, patient: Identifier) -> list[ConsentGrant]:
        grants: list[ConsentGrant] = []
        for stored in self._store.consents_for_patient(patient):
            grants.extend(grants_from_consent(stored.resource))
        return grants

    def _replay(self, sop_instance_uid: str) -> DicomIngestResult | None:
        instance = self._store.find_dicom_instance(sop_instance_uid)
        if instance is None:
            return None
        receipt = self._store.find_receipt(patient=instance.patient, stored_sha256=instance.blob_sha256) \
            if instance.blob_sha256 else None
        return DicomIngestResult(
            receipt=receipt or {"record": f"{instance.record_type}/{instance.record_id}",
                                "sopInstanceUid": sop_instance_uid},
            replayed=True)

    def ingest_received(self, received: ReceivedStore) -> DicomIngestResult:
        """Ingest one received object (module docstring); the object at ``received.path`` is
        left in place. Raises an AdapterError for every refusal; then nothing was stored."""
        if received.affected_sop_class != received.context_sop_class:
            raise InvalidResource("the request's SOP Class UID is not its presentation context's",
                                  expression="(0000,0002) AffectedSOPClassUID")
        previous = self._replay(received.affected_sop_instance)
        if previous is not None:
            return previous
        check_complete(received.path, received.transfer_syntax)
        digest = _FileDigest(received.path)
        digest.start()
        try:
            ds = read_dataset(received.path)
            self._check_identity(ds, received)
            obj = read_received(ds, calling_ae=received.calling_ae, dicom_tables=self._dicom_tables,
                                tables=self._tables)
            now = self._now()
            assessment = self._assess(obj, now)
            image = extract_image(ds)
            study_date = _study_date(ds)
        except _MALFORMED as exc:
            raise InvalidInput(f"the dataset cannot be read ({type(exc).__name__})") from exc
        finally:
            digest.join()
        original_sha256 = digest.result()
        return self._store_object(received, obj, image, assessment, original_sha256, study_date, now)

    @staticmethod
    def _check_identity(ds: Dataset, received: ReceivedStore) -> None:
        """PS3.4 B.2.1.2: the dataset is the instance the request names, of the request's class."""
        sop_class = str(ds.get("SOPClassUID") or "").strip()
        sop_instance = str(ds.get("SOPInstanceUID") or "").strip()
        if sop_class != received.affected_sop_class:
            raise InvalidResource("the dataset's SOP Class UID is not the one of the C-STORE request",
                                  expression="(0008,0016) SOPClassUID")
        if sop_instance != received.affected_sop_instance:
            raise InvalidResource("the dataset's SOP Instance UID is not the one of the C-STORE request",
                                  expression="(0008,0018) SOPInstanceUID")

    def _assess(self, obj: ReceivedObject, now: datetime) -> IngestAssessment:
        """The ingest consent rules for the object, sent by a colleague inside the organisation
        (the sending AE on behalf of its institution)."""
        meta = PhotoMetadata(
            patient=PatientRef(system=obj.patient.system, value=obj.patient.value), kind=obj.kind,
            source=RECEIVED_SOURCE, colleague=Colleague(name=f"AE {obj.calling_ae}", organisation=obj.institution))
        return assess_ingest(meta, self._existing_grants(obj.patient), self._tables, now)

    def _stage_original(self, path: Path) -> Path:
        """The received file in the staging folder: a hard link when it is on the same file
        system (no copy), else a copy."""
        staged = self._blobs.new_staging_path()
        try:
            os.link(path, staged)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise StorageError("could not stage the received object") from exc
            try:
                shutil.copyfile(path, staged)
            except OSError as copy_exc:
                staged.unlink(missing_ok=True)
                raise StorageError("could not stage the received object") from copy_exc
        return staged

    def _stage_bytes(self, data: bytes) -> Path:
        staged = self._blobs.new_staging_path()
        try:
            with open(staged, "wb") as fh:
                fh.write(data)
        except OSError as exc:
            staged.unlink(missing_ok=True)
            raise StorageError("could not stage the image bytes") from exc
        return staged

    def _commit_original(self, path: Path, sha256: str) -> None:
        staged = self._stage_original(path)
        try:
            self._blobs.commit(staged, sha256)
        finally:
            self._blobs.discard(staged)  # gone after a commit; removed after a failure

    def _store_object(self, received: ReceivedStore, obj: ReceivedObject, image: ExtractedImage,
                      assessment: IngestAssessment, original_sha256: str, study_date: str | None,
                      now: datetime) -> DicomIngestResult:
        """Both blobs, then the one transaction. Every refusal has happened by now. The original
        is committed in a helper thread while this one stages the Binary's bytes and builds the
        resources: each fsync waits on the disk, not on the other (hashing and fsync release the
        GIL)."""
        original_error: list[BaseException] = []

        def commit_original() -> None:
            try:
                self._commit_original(received.path, original_sha256)
            except BaseException as exc:  # noqa: BLE001 - handed to the ingesting thread below
                original_error.append(exc)

        helper = threading.Thread(target=commit_original, name="dicom-ingest-blob", daemon=True)
        helper.start()
        staged: Path | None = None
        try:
            image_sha256 = hashlib.sha256(image.data).hexdigest()
            staged = self._stage_bytes(image.data)
            self._blobs.commit(staged, image_sha256)
            staged = None
            unit = self._unit(received, obj, image, image_sha256, assessment, original_sha256, study_date, now)
        finally:
            helper.join()
            if staged is not None:
                self._blobs.discard(staged)
        if original_error:
            raise original_error[0]
        try:
            self._store.save_ingest(unit)
        except Conflict:
            # the same object over another association won the race: answer with its record
            previous = self._replay(obj.sop_instance_uid)
            if previous is None:
                raise
            return previous
        return DicomIngestResult(receipt=unit.receipt, replayed=False)

    def _unit(self, received: ReceivedStore, obj: ReceivedObject, image: ExtractedImage, image_sha256: str,
              assessment: IngestAssessment, original_sha256: str, study_date: str | None,
              now: datetime) -> IngestUnit:
        record_id, binary_id, provenance_id = _new_id(), _new_id(), _new_id()
        built = received_to_fhir(obj, image, record_id=record_id, binary_id=binary_id, provenance_id=provenance_id,
                                 received_sha256=original_sha256, tables=self._tables,
                                 dicom_tables=self._record_tables, now=now,
                                 consent_pending=assessment.consent_pending)
        record_type = built.record_type
        record_ref = built.record_ref
        patient = obj.patient
        facts = AccessFacts(governed_by=record_ref, patient=patient, kind=obj.kind, source=RECEIVED_SOURCE,
                            consent_pending=assessment.consent_pending)
        provenance_index = index_resource(built.provenance)
        resources = [
            NewResource(record_type, record_id, built.record, index_resource(built.record), facts,
                        blob_sha256=image_sha256),
            NewResource("Binary", binary_id, built.binary, SearchIndex(patient=patient), facts,
                        blob_sha256=image_sha256),
            NewResource("Provenance", provenance_id, built.provenance,
                        dataclasses.replace(provenance_index, patient=patient), facts),
        ]
        created = [f"{r.resource_type}/{r.id}" for r in resources]
        receipt: dict[str, Any] = {
            "record": record_ref,
            "binary": f"Binary/{binary_id}",
            "provenance": f"Provenance/{provenance_id}",
            "created": created,
            "sopInstanceUid": obj.sop_instance_uid,
            "sha256": {"received": original_sha256, "stored": image_sha256},
            "size": {"stored": len(image.data)},
            "warnings": list(assessment.warnings),
            "consentPending": assessment.consent_pending,
        }
        host = received.peer_address
        ctx = RequestContext(purpose=PurposeOfUse("TREAT"), actor=f"AE {obj.calling_ae} (C-STORE)",
                             client_address=host or None, channel="dicom")
        audit = self._auditor.event(ctx, interaction="create", action="C", permitted=True, reason=None,
                                    entities=created, patient=patient)
        instance = DicomInstance(
            sop_instance_uid=obj.sop_instance_uid, study_instance_uid=obj.study_uid,
            series_instance_uid=obj.series_uid, sop_class_uid=obj.sop_class_uid, modality=obj.modality or "",
            record_type=record_type, record_id=record_id, patient=patient, blob_sha256=original_sha256,
            study_date=study_date, created=None)
        return IngestUnit(resources=resources, receipt=receipt, idempotency_key=None, patient=patient,
                          stored_sha256=original_sha256, audit_events=[audit], dicom_instance=instance)


def _study_date(ds: Dataset) -> str | None:
    """StudyDate (DA, YYYYMMDD) when it is one, for QIDO; anything else is not kept."""
    value = str(ds.get("StudyDate") or "").strip()
    return value if len(value) == 8 and value.isdigit() else None


__all__ = ["DicomIngestResult", "DicomIngestService", "ReceivedStore", "check_complete", "read_dataset"]
