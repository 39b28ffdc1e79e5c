"""DICOM objects in and out: the one way a record's DICOM object is (re)made, how it is released
in each read view, the QIDO-RS match model, and STOW-RS into the C-STORE SCP's ingest path.

* :func:`dicom_object_for`: a received instance is its stored Part 10 file, as received; a
  photo's object is regenerated from the record and its stored bytes with the UIDs fixed at
  ingest (PS3.3 C.12.1.1.1: the same SOP Instance UID every time). The forwarder (C-STORE to
  PACS) and the scoped reader (WADO-RS, Binary as application/dicom) both use it. Neither
  changes its transfer syntax here; only the C-STORE SCU decompresses a JPEG Baseline object, at
  send time, for a PACS that accepts no compressed syntax (adapter.mapping.dicom_decompress).
* :class:`DicomRelease`: the object and its attributes in the view the consent decision gave
  (adapter.model.decision.View). FULL: as stored. DEIDENTIFIED (TRAIN…): PS3.15 Basic Profile
  (adapter.mapping.dicom_deid.deidentify). PSEUDONYMISED (HRESCH…): PatientID = the keyed
  pseudonym the FHIR view shows (adapter.mapping.pseudonym). In both restricted views every
  instance UID is replaced by :func:`adapter.mapping.dicom_uids.keyed_uid` under the DICOM UID key
  (derived from the pseudonym key), so the QIDO answers, the WADO URLs and the objects' own UIDs
  are one consistent, stable UID space per view, which nobody without the key can map back.
* :class:`DicomQuery` / :func:`match_level`: QIDO-RS matching (PS3.18 10.6.1, PS3.4 C.2.2.2) on
  the values a release shows, so in a restricted view the client's keys are in the released
  space: mapped UIDs, the pseudonym as PatientID; TRAIN shows no PatientID and no dates, so
  keys on them match nothing there.
* :func:`stow_instance`: one STOW-RS part (PS3.18 10.5) through the same ingest as a C-STORE
  (adapter.services.dicom_ingest), refusals mapped to the same status codes
  (adapter.mapping.dimse_status) as FailureReason (0008,1197), an instance stored already with
  another content failing 0xA900 as the SCP answers it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info

from adapter.consent.ingest import PENDING_PREFIX, PENDING_WARNING
from adapter.errors import (
    AdapterError,
    ConfigurationError,
    InvalidInput,
    InvalidQuery,
    InvalidResource,
    MissingImage,
    NotFound,
    NotSupported,
    StorageError,
    Transient,
    UncleanableDocument,
    UnreleasableObject,
)
from adapter.imaging import jpeg_pixel_size, png_pixel_size, read_orientation
from adapter.imaging.sniff import check_declared
from adapter.imaging.thumbnail import whole_decode
from adapter.mapping.dicom_dates import is_date, is_time
from adapter.mapping.dicom_deid import deidentify, pseudonymise
from adapter.mapping.dicom_photo import (
    PhotoStudy,
    encode_dataset,
    photo_to_dicom,
    photo_without_pixels,
    pixels_decoded,
    warned_received,
)
from adapter.mapping.dicom_qido import instance_attributes
from adapter.mapping.dicom_tables import DicomTables
from adapter.mapping.dicom_uids import PhotoUids, is_valid_uid
from adapter.mapping.dimse_status import dimse_status_for
from adapter.mapping.fhir_r4 import record_attachment
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.mapping.tables import KindEntry, Tables
from adapter.model.decision import View
from adapter.model.dicom import DicomInstance, InstanceAttributes, person_name_key
from adapter.model.photo import Identifier
from adapter.model.purpose import RequestContext
from adapter.model.record import StoredResource
from adapter.services.dicom_ingest import (
    STOW_SENDER,
    DicomIngestService,
    ReceivedStore,
    check_transfer_syntax,
    stow_sender,
)
from adapter.services.released_uids import ReleasedUidSpaces
from adapter.store.port import BlobStore, NamePrefix, RecordStore

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the object


def dicom_object_for(instance: DicomInstance, stored: StoredResource, blobs: BlobStore, tables: Tables,
                     dicom_tables: DicomTables, *, image: bytes | None = None) -> Dataset | Path:
    """The DICOM object of ``instance`` (whose record is ``stored``): a received object's
    stored Part 10 file, or the photo's object regenerated from the record and its stored bytes
    with the UIDs fixed at ingest and the creation time fixed at ingest, so every regeneration is
    the identical object. ``image``: the photo's stored bytes, when read already (:func:`regenerating`).

    Raises:
        MissingImage: the received file or the record's photo is missing from the data folder.
        NotFound: the record has no stored photo.
        InvalidInput: the record names no content type.
        AdapterError: the object cannot be made (photo_to_dicom's errors, e.g. UnknownCode for a
            patient identifier system without an IssuerOfPatientID).
    """
    if instance.blob_sha256 is not None:
        try:
            return blobs.path(instance.blob_sha256)
        except MissingImage as exc:
            raise MissingImage("the received DICOM file is missing from the data folder (python -m adapter verify "
                               "lists every missing file)") from exc
    if stored.blob_sha256 is None or stored.facts is None:
        raise NotFound("the record has no stored photo")
    if image is None:
        image = blobs.read(stored.blob_sha256, stored.blob_range)
    return photo_to_dicom(
        stored.resource, image, _content_type(stored.resource), kind=stored.facts.kind,
        patient=instance.patient, uids=_photo_uids(instance),
        tables=tables, dicom_tables=dicom_tables, study=study_of(instance),
        # the creation time and the way of making it fixed at ingest: a resend is the identical object
        now=instance.created or stored.last_updated, version=object_version_of(instance))


#: A received object whose stored file is at least this large is made and read under a turn
#: (:func:`regenerating`): its pixels read back, a frame or picture made of them (a native 50 MB
#: object's PNG, its GIF), cost several times its size.
LARGE_OBJECT_BYTES = 16 * 1024 * 1024


@contextmanager
def regenerating(instance: DicomInstance, stored: StoredResource, blobs: BlobStore, *,
                 bounded: bool = True) -> Iterator[bytes | None]:
    """Hold, while ``instance``'s object is made (:func:`dicom_object_for`) and released and what
    the read answers is made of it (its frames, its picture, its parts: adapter.services.access), a
    turn of the whole-decode bound (adapter.imaging.thumbnail.whole_decode) when the object is large:
    made from decoded pixels (adapter.mapping.dicom_photo.pixels_decoded: a PNG, a progressive or
    turned JPEG), uncompressed, up to 240 MB for an 80 MP photo, about 1.5 GB at its peak while it is
    decoded, built, encoded and rendered; or a received object of at least
    :data:`LARGE_OBJECT_BYTES`. Readers asking for many at once wait their turn, holding nothing of
    it, rather than exhaust memory. A smaller received object or a baseline JPEG's (the frame as
    stored) costs no decode and waits for nothing here. ``bounded``: wait at most
    adapter.imaging.thumbnail.WHOLE_DECODE_WAIT_SECONDS for a turn; False: as long as it takes, for
    an answer that has started already and could no longer say 503. Yields the photo's stored
    bytes, read to decide, for :func:`dicom_object_for` (``image``), or None when there is no photo
    to read.

    Raises:
        Transient: no turn came in time (503, Retry-After).
        As :func:`dicom_object_for`, for the photo and its record.
    """
    if instance.blob_sha256 is not None:  # a received object, as stored
        with whole_decode(bounded=bounded) if (blobs.size(instance.blob_sha256) or 0) >= LARGE_OBJECT_BYTES \
                else nullcontext():
            yield None
        return
    if stored.blob_sha256 is None or stored.facts is None:
        yield None  # a record without a photo: nothing is decoded (it raises)
        return
    image = blobs.read(stored.blob_sha256, stored.blob_range)
    kind = check_declared(image, _content_type(stored.resource))  # as photo_to_dicom checks it
    if not pixels_decoded(image, kind, read_orientation(image, kind) or 1):
        yield image
        return
    with whole_decode(bounded=bounded):
        yield image


def object_attributes(instance: DicomInstance, store: RecordStore, blobs: BlobStore, tables: Tables,
                      dicom_tables: DicomTables) -> InstanceAttributes | None:
    """The QIDO-RS study, series and instance attributes of ``instance``'s object as stored
    (adapter.mapping.dicom_qido): a received object's header read from its file, a photo's
    object made as every retrieve makes it but without its pixels (not decoded). For the instances stored before schema 13,
    or read before 14
    (RecordStore.fill_dicom_attributes, at start): an object that cannot be read or made, or
    whose record is gone, has none (no retrieve can return it either), logged without naming it.
    None, for the next start to read again, when it cannot be read now: its file is not there
    (a data folder on a share not mounted yet, blobs being restored) or the store fails; "none"
    would be kept for good, and a search by its numbers would leave it out once it is back."""
    stored = None
    try:
        stored = store.get(instance.record_type, instance.record_id)
        if stored is None:
            raise NotFound("the record is gone")
        if instance.blob_sha256 is None:  # a photo: its object without pixels (no decode), as ingest reads it
            return instance_attributes(_photo_without_pixels(instance, stored, blobs, tables, dicom_tables))
        obj = dicom_object_for(instance, stored, blobs, tables, dicom_tables)
        return instance_attributes(dcmread(obj, stop_before_pixels=True) if isinstance(obj, Path) else obj)
    except Exception as exc:  # noqa: BLE001 - pydicom's read errors share no base; none may stop the start
        needed = instance.blob_sha256 or (stored.blob_sha256 if stored is not None else None)
        if isinstance(exc, Transient | OSError) or (needed is not None and not blobs.exists(needed)):
            log.warning("the QIDO-RS attributes of a stored DICOM instance cannot be read now (%s): "
                        "read again at the next start", type(exc).__name__)
            return None
        log.warning("the QIDO-RS attributes of a stored DICOM instance cannot be read (%s): it shows none",
                    type(exc).__name__)
        return InstanceAttributes()


def _photo_without_pixels(instance: DicomInstance, stored: StoredResource, blobs: BlobStore, tables: Tables,
                          dicom_tables: DicomTables) -> Dataset:
    """A posted photo's object as :func:`dicom_object_for` makes it but its pixels
    (adapter.mapping.dicom_photo.photo_without_pixels): the stored image's size from its header,
    its Orientation as the object applies it; the photo is not decoded (a rotated JPEG or a PNG
    would be, for its object: the start-up fill of schema 13 reads every stored photo)."""
    if stored.blob_sha256 is None or stored.facts is None:
        raise NotFound("the record has no stored photo")
    image = blobs.read(stored.blob_sha256, stored.blob_range)
    kind = check_declared(image, _content_type(stored.resource))  # as photo_to_dicom checks it
    width, height = jpeg_pixel_size(image) if kind == "image/jpeg" else png_pixel_size(image)
    return photo_without_pixels(
        stored.resource, width=width, height=height, orientation=read_orientation(image, kind) or 1,
        kind=stored.facts.kind, patient=instance.patient, uids=_photo_uids(instance),
        tables=tables, dicom_tables=dicom_tables, now=instance.created or stored.last_updated,
        study=study_of(instance), version=object_version_of(instance))


def object_version_of(instance: DicomInstance) -> int:
    """The adapter.mapping.dicom_photo.PHOTO_OBJECT_VERSION a posted photo's object was first made
    with, as its row keeps it: every regeneration makes that object. 1 for an instance stored
    before the version was kept (schema 19): its object was made so then, and sent so."""
    return instance.object_version if instance.object_version is not None else 1


def study_of(instance: DicomInstance) -> PhotoStudy | None:
    """The StudyDate, StudyTime and offset a posted photo's instance was given at ingest
    (adapter.services.ingest: its study's, those of the first photo stored for it), as its row
    keeps them: StudyDate, StudyTime and the TimezoneOffsetFromUTC its object is written in, so
    every regeneration is the object first made. None when the row has no offset (its attributes
    not read yet: an instance stored before schema 13): the photo's own then, as it was made."""
    offset = instance.attributes.timezone_offset_from_utc if instance.attributes is not None else None
    return PhotoStudy(instance.study_date, instance.study_time, offset) if offset is not None else None


def _photo_uids(instance: DicomInstance) -> PhotoUids:
    """The UIDs a posted photo's object was given at ingest (the same every time it is made)."""
    return PhotoUids(study=instance.study_instance_uid, series=instance.series_instance_uid,
                     sop_instance=instance.sop_instance_uid)


def _content_type(record: Mapping[str, Any]) -> str:
    """The stored photo's media type: Media.content or DocumentReference.content[0].attachment."""
    attachment = record_attachment(record)
    value = attachment.get("contentType") if attachment is not None else None
    if not isinstance(value, str) or not value:
        raise InvalidInput("the record names no content type", expression="content.contentType")
    return value


# --------------------------------------------------------------------------- releases


@dataclass(frozen=True)
class DicomEntry:
    """One instance as a view shows it (QIDO-RS): UIDs, patient and date in the released space."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    study_date: str | None
    patient_id: str | None
    issuer_of_patient_id: str | None
    record: str                       # "Media/<id>": for the audit, never shown
    # what the released object says of its study (a viewer's study list): as received for care;
    # the pseudonym as PatientName and nothing else for HRESCH; nothing for TRAIN (PS3.15 E.1-1)
    patient_name: str | None = None
    study_description: str | None = None
    accession_number: str | None = None
    study_time: str | None = None
    # what the released object says of its series and itself (DicomRelease.entry)
    attributes: InstanceAttributes = field(default_factory=InstanceAttributes)


@dataclass(frozen=True)
class ReleasedObject:
    """A released Part 10 object."""

    data: bytes
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str             # in the released space


class DicomRelease:
    """DICOM objects and their attributes in one read view (module docstring)."""

    def __init__(self, view: View, *, uids: ReleasedUidSpaces | None, pseudonymizer: Pseudonymizer,
                 dicom_tables: DicomTables, fixed_texts: frozenset[str] = frozenset(),
                 code_meanings: Mapping[tuple[str, str], str] | None = None) -> None:
        """``fixed_texts``: the adapter's own ImageComments/SeriesDescription texts
        (adapter.mapping.dicom_photo.fixed_texts), which the restricted copies keep;
        ``code_meanings``: the adapter's own meanings of codes
        (adapter.mapping.dicom_photo.code_meanings), which the restricted copies write."""
        if view is not View.FULL and uids is None:
            raise StorageError("no DICOM UID key is configured")
        self.view = view
        self._uids = uids
        self._pseudonymizer = pseudonymizer
        self._dicom_tables = dicom_tables
        self._fixed_texts = fixed_texts
        self._code_meanings = dict(code_meanings or {})

    def uid(self, original: str) -> str:
        """``original`` in this view's UID space (the value the released object carries)."""
        return original if self._uids is None else self._uids.uid(self.view, original)

    def patient(self, patient: Identifier) -> tuple[str | None, str | None]:
        """(PatientID, IssuerOfPatientID) as the released object carries them."""
        if self.view is View.DEIDENTIFIED:
            return None, None
        if self.view is View.PSEUDONYMISED:
            return self._pseudonymizer.pseudonym(patient.system, patient.value), self._pseudonymizer.system
        try:
            return self._dicom_tables.patient_identifiers.to_dicom(patient)
        except AdapterError:  # no issuer for this system: the value alone
            return patient.value, None

    def entry(self, instance: DicomInstance) -> DicomEntry:
        patient_id, issuer = self.patient(instance.patient)
        full = self.view is View.FULL
        if full:
            patient_name = instance.patient_name
        elif self.view is View.PSEUDONYMISED:  # as the pseudonymised object names the patient
            patient_name = f"{patient_id}^"
        else:
            patient_name = None
        return DicomEntry(
            study_instance_uid=self.uid(instance.study_instance_uid),
            series_instance_uid=self.uid(instance.series_instance_uid),
            sop_instance_uid=self.uid(instance.sop_instance_uid), sop_class_uid=instance.sop_class_uid,
            modality=instance.modality, study_date=None if self.view is View.DEIDENTIFIED else instance.study_date,
            patient_id=patient_id, issuer_of_patient_id=issuer,
            record=f"{instance.record_type}/{instance.record_id}", patient_name=patient_name,
            study_description=instance.study_description if full else None,
            accession_number=instance.accession_number if full else None,
            study_time=self._study_time(instance),
            attributes=self.attributes(instance.attributes or InstanceAttributes()))

    def _study_time(self, instance: DicomInstance) -> str | None:
        """The StudyTime this view's copy carries: none when de-identifying, nor when
        pseudonymising a posted photo's object (blob_sha256 None), whose StudyTime may be the
        instant the adapter filed it (adapter.mapping.dicom_deid.FILED_TIMES)."""
        if self.view is View.DEIDENTIFIED or (self.view is View.PSEUDONYMISED and instance.blob_sha256 is None):
            return None
        return instance.study_time

    def attributes(self, stored: InstanceAttributes) -> InstanceAttributes:
        """The QIDO-RS study, series and instance attributes as this view's copy of the object
        carries them (adapter.mapping.dicom_deid): both restricted copies lose SeriesDescription
        (PS3.15 Table E.1-1, X) unless it is one of the adapter's fixed texts (the secondary
        image's warning), and have ReferringPhysicianName, PatientBirthDate, PatientSex and
        StudyID emptied (Z); TRAIN's loses the dates and times and TimezoneOffsetFromUTC too,
        HRESCH's keeps them (full dates retained). Numbers and the image's size stay in every view."""
        if self.view is View.FULL:
            return stored
        kept = stored.series_description if stored.series_description in self._fixed_texts else None
        restricted = dataclasses.replace(stored, series_description=kept, referring_physician_name=None,
                                         patient_birth_date=None, patient_sex=None, study_id=None)
        if self.view is View.PSEUDONYMISED:
            return restricted
        return dataclasses.replace(restricted, performed_procedure_step_start_date=None,
                                   performed_procedure_step_start_time=None, timezone_offset_from_utc=None)

    def release(self, obj: Dataset | Path, patient: Identifier, *, kind: KindEntry | None = None,
                record_texts: Iterable[str] = ()) -> ReleasedObject:
        """The Part 10 bytes of ``obj`` in this view, in the transfer syntax it is stored in
        (no transcoding; de-identification only cuts metadata segments out of JPEG frames, and
        the metadata out of an encapsulated PDF: adapter.imaging.pdf). UncleanableDocument when
        the PDF's metadata cannot be removed: not released in this view. ``kind``: the record's
        kind (kinds.yaml), whose picture may show the person or text beside what the object says
        (adapter.mapping.dicom_deid); None (not known) counts as both (fail closed). A received
        object (``obj`` a stored file) of a kind with a ``warning`` (secondary) carries it first in
        ImageComments in every view: care's copy before the sender's comments, made anew (the
        stored file is unchanged; released byte for byte when it says the warning already), a
        restricted copy alone (adapter.mapping.dicom_photo.warned_received).
        ``record_texts``: the adapter's own texts of the record ``obj`` belongs to, which a
        restricted copy keeps beside the fixed texts: its quality warnings
        (adapter.mapping.dicom_photo.quality_texts)."""
        text_in_pixels = kind is None or kind.text_in_pixels
        recognizable = kind is None or kind.recognizable
        warning = kind.warning if kind is not None else None
        if self.view is View.FULL and isinstance(obj, Path) and warning is None:
            try:
                meta = read_file_meta_info(obj)
                return _released(obj.read_bytes(), meta.TransferSyntaxUID, meta.MediaStorageSOPClassUID,
                                 meta.MediaStorageSOPInstanceUID)
            except Exception as exc:  # our own stored file: unreadable is a storage fault
                raise StorageError("the stored DICOM object cannot be read") from exc
        ds = _read(obj) if isinstance(obj, Path) else obj
        if isinstance(obj, Path) and warning is not None:
            # a received object of a kind with a warning (secondary) says it in every view, as the
            # adapter's own object does (adapter.mapping.dicom_photo.warned_received); the stored
            # file stays as received
            changed = warned_received(ds, warning, keep_sender_text=self.view is View.FULL)
            if self.view is View.FULL:
                if not changed:
                    return _released(obj.read_bytes(), ds.file_meta.TransferSyntaxUID, ds.SOPClassUID,
                                     ds.SOPInstanceUID)
                try:
                    return _released(encode_dataset(ds), ds.file_meta.TransferSyntaxUID, ds.SOPClassUID,
                                     ds.SOPInstanceUID)
                except StorageError:
                    raise
                except Exception as exc:  # as below: the object is ours, it fails at every try
                    raise UnreleasableObject("the stored DICOM object cannot be released in this view") from exc
        uids = self._uids
        fixed = self._fixed_texts.union(record_texts)
        try:
            if self.view is View.DEIDENTIFIED and uids is not None:
                ds = deidentify(ds, uid_root=uids.root, key=uids.key, fixed_texts=fixed,
                                code_meanings=self._code_meanings, text_in_pixels=text_in_pixels,
                                recognizable=recognizable)
            elif self.view is View.PSEUDONYMISED and uids is not None:
                ds = pseudonymise(ds, pseudonym=self._pseudonymizer.pseudonym(patient.system, patient.value),
                                  pseudonym_issuer=self._pseudonymizer.system, uid_root=uids.root, key=uids.key,
                                  fixed_texts=fixed, code_meanings=self._code_meanings,
                                  text_in_pixels=text_in_pixels, recognizable=recognizable,
                                  posted_photo=not isinstance(obj, Path))
            return _released(encode_dataset(ds), ds.file_meta.TransferSyntaxUID, ds.SOPClassUID, ds.SOPInstanceUID)
        except (StorageError, ConfigurationError, UncleanableDocument):
            # a document whose metadata cannot be removed is not released in this view (422):
            # the object is sound, the view cannot be made of it (adapter.imaging.pdf)
            raise
        except MemoryError as exc:  # the one failure here a later try may not meet
            raise StorageError("the stored DICOM object cannot be released in this view for now") from exc
        except Exception as exc:  # an AdapterError too: the object is ours, not the reader's request
            # The ingest refuses what it could not read whole (dicom_ingest.check_elements); an
            # object stored before that check may still hold such an element. It is not released
            # (it could not be cleaned), never as a partial object; it fails so at every try, so
            # it is no transient failure (503 with Retry-After told clients to retry in vain).
            raise UnreleasableObject("the stored DICOM object cannot be released in this view") from exc


def _released(data: bytes, transfer_syntax: Any, sop_class: Any, sop_instance: Any) -> ReleasedObject:
    """The released object; its UIDs go into HTTP headers and DICOM JSON, so they must be UIDs."""
    uids = [str(uid).strip("\x00 ") for uid in (transfer_syntax, sop_class, sop_instance)]
    if not all(is_valid_uid(uid) for uid in uids):
        raise StorageError("the stored DICOM object has an invalid UID in its file meta or SOP Common module")
    return ReleasedObject(data=data, transfer_syntax=uids[0], sop_class_uid=uids[1], sop_instance_uid=uids[2])


def _read(path: Path) -> Dataset:
    try:
        return dcmread(path)
    except Exception as exc:  # validated at ingest: unreadable now is a storage fault
        raise StorageError("the stored DICOM object cannot be read") from exc


# --------------------------------------------------------------------------- QIDO-RS matching


STUDY, SERIES, INSTANCE = "study", "series", "instance"
LEVELS = (STUDY, SERIES, INSTANCE)
#: The match keys of a study, at every level (PS3.18 Table 10.6.1-5 and the study list's own).
_STUDY_KEYS = frozenset({"StudyInstanceUID", "PatientID", "IssuerOfPatientID", "PatientName", "StudyDate",
                         "StudyTime", "AccessionNumber", "StudyDescription", "ReferringPhysicianName", "StudyID"})
#: The match keys each level supports (a key of a lower level is refused, not ignored).
LEVEL_KEYS: dict[str, frozenset[str]] = {
    STUDY: _STUDY_KEYS | {"ModalitiesInStudy"},
    SERIES: _STUDY_KEYS | {"SeriesInstanceUID", "Modality", "SeriesNumber", "PerformedProcedureStepStartDate",
                           "PerformedProcedureStepStartTime"},
    INSTANCE: _STUDY_KEYS | {"SeriesInstanceUID", "Modality", "SOPInstanceUID", "SOPClassUID", "SeriesNumber",
                             "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime", "InstanceNumber"},
}
_INTEGER = re.compile(r"^[+-]?\d{1,10}$", re.ASCII)


def integer_key(keyword: str, value: str) -> int:
    """An IS match key (SeriesNumber, InstanceNumber): single value matching of one integer
    (PS3.4 C.2.2.2.1; IS takes no wildcards, C.2.2.2.4)."""
    text = value.strip()
    if not _INTEGER.match(text) or not -(2**31) <= int(text) < 2**31:
        raise InvalidQuery(f"{keyword} takes an integer", expression=keyword)
    return int(text)


@dataclass(frozen=True)
class DateRange:
    """A DA match (PS3.4 C.2.2.2.5): one date, or a range open at either end; inclusive."""

    start: str | None
    end: str | None

    @classmethod
    def parse(cls, value: str, keyword: str = "StudyDate") -> DateRange:
        text = value.strip()
        start, sep, end = text.partition("-")
        if not sep:
            end = start
        for part in (start, end):
            if part and not is_date(part):  # a day of the calendar, not eight digits: 20240231 is none
                raise InvalidQuery(f"{keyword} takes YYYYMMDD or a range YYYYMMDD-YYYYMMDD", expression=keyword)
        if not start and not end:
            raise InvalidQuery(f"{keyword} takes YYYYMMDD or a range YYYYMMDD-YYYYMMDD", expression=keyword)
        return cls(start or None, end or None)

    def matches(self, date: str | None) -> bool:
        if not date:
            return False
        return (self.start is None or date >= self.start) and (self.end is None or date <= self.end)


_TIME = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?$", re.ASCII)


def _time_bounds(value: str) -> tuple[str, str] | None:
    """The first and last instant a TM value (``HH[MM[SS[.F…]]]``) stands for, as ``HHMMSS.FFFFFF``
    strings that order as the times do; None for a value that is no TM."""
    found = _TIME.match(value.strip())
    if found is None or not is_time(value.strip()):  # a time of day: 2561 is none
        return None
    hours, minutes, seconds, fraction = found.groups()
    low = f"{hours}{minutes or '00'}{seconds or '00'}.{(fraction or '').ljust(6, '0')}"
    high = f"{hours}{minutes or '59'}{seconds or '59'}.{(fraction or '').ljust(6, '9')}"
    return low, high


@dataclass(frozen=True)
class TimeRange:
    """A TM match (PS3.4 C.2.2.2.5): one time, or a range open at either end; inclusive, each
    end at the precision it is given in (``0930`` is 09:30:00 to 09:30:59.999999)."""

    start: str | None   # HHMMSS.FFFFFF
    end: str | None

    @classmethod
    def parse(cls, value: str, keyword: str) -> TimeRange:
        start, sep, end = value.strip().partition("-")
        if not sep:
            end = start
        bounds = [_time_bounds(part) if part else None for part in (start, end)]
        if (start and bounds[0] is None) or (end and bounds[1] is None) or not (start or end):
            raise InvalidQuery(f"{keyword} takes HHMMSS or a range HHMMSS-HHMMSS", expression=keyword)
        return cls(bounds[0][0] if bounds[0] else None, bounds[1][1] if bounds[1] else None)

    def matches(self, time: str | None) -> bool:
        bounds = _time_bounds(time) if time else None
        if bounds is None:
            return False
        return (self.start is None or bounds[0] >= self.start) and (self.end is None or bounds[0] <= self.end)


@dataclass(frozen=True)
class DicomQuery:
    """QIDO-RS match keys, in the released space of the reader's view (module docstring).
    UIDs: list matching (any of); the string keys (PS3.4 C.2.2.2.4: every VR but UI, dates,
    times and numbers) take ``*``/``?`` wildcards, each ``*`` matching any run of characters,
    the empty one too: PatientID, IssuerOfPatientID (LO), AccessionNumber, StudyID (SH),
    StudyDescription (LO), Modality / ModalitiesInStudy (CS, a list: any of), and PatientName
    and ReferringPhysicianName (PN, insensitive to case and to empty trailing name components:
    :func:`_person_name_matches`); SeriesNumber and InstanceNumber: one integer;
    PerformedProcedureStepStartDate: a date or range, as StudyDate; StudyTime and
    PerformedProcedureStepStartTime: a time or range (:class:`TimeRange`), on what the view shows
    (TRAIN's copies have no dates or times). A key whose value is only ``*`` is universal
    matching and is never one of these (the QIDO-RS edge drops it: :func:`is_universal`)."""

    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    sop_class_uids: tuple[str, ...] = ()
    patient_id: str | None = None
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None        # as the view shows it: TRAIN none, HRESCH the pseudonym
    modalities: tuple[str, ...] = ()       # Modality (series, instance) or ModalitiesInStudy (study): any of
                                           # them (a value list, as UIDs: a viewer's modality filter)
    study_date: DateRange | None = None
    accession_number: str | None = None    # wildcards (a RIS's key); only care's view shows one
    study_description: str | None = None   # wildcards; only care's view shows one
    series_number: int | None = None
    instance_number: int | None = None
    performed_procedure_step_start_date: DateRange | None = None
    performed_procedure_step_start_time: TimeRange | None = None
    study_time: TimeRange | None = None    # what the view shows: TRAIN's copies have none
    referring_physician_name: str | None = None  # as PatientName; only care's view shows one
    study_id: str | None = None            # wildcards; only care's view shows one
    matches_nothing: bool = False          # a value for a key no instance holds (a series' request
                                           # attributes, PS3.18 Table 10.6.1-5): no match

    def matches(self, entry: DicomEntry) -> bool:
        """Every key but Modality, which :func:`match_level` applies per level."""
        if self.matches_nothing:
            return False
        if self.study_uids and entry.study_instance_uid not in self.study_uids:
            return False
        if self.series_uids and entry.series_instance_uid not in self.series_uids:
            return False
        if self.sop_instance_uids and entry.sop_instance_uid not in self.sop_instance_uids:
            return False
        if self.sop_class_uids and entry.sop_class_uid not in self.sop_class_uids:
            return False
        if self.patient_id is not None and not _wildcard(self.patient_id, entry.patient_id):
            return False
        if self.issuer_of_patient_id is not None and \
                not _wildcard(self.issuer_of_patient_id, entry.issuer_of_patient_id):
            return False
        if self.patient_name is not None and not _person_name_matches(self.patient_name, entry.patient_name):
            return False
        if self.accession_number is not None and not _wildcard(self.accession_number, entry.accession_number):
            return False
        if self.study_description is not None and not _wildcard(self.study_description, entry.study_description):
            return False
        shown = entry.attributes
        if self.referring_physician_name is not None and \
                not _person_name_matches(self.referring_physician_name, shown.referring_physician_name):
            return False
        if self.study_id is not None and not _wildcard(self.study_id, shown.study_id):
            return False
        if self.series_number is not None and shown.series_number != self.series_number:
            return False
        if self.instance_number is not None and shown.instance_number != self.instance_number:
            return False
        if self.performed_procedure_step_start_date is not None and \
                not self.performed_procedure_step_start_date.matches(shown.performed_procedure_step_start_date):
            return False
        if self.performed_procedure_step_start_time is not None and \
                not self.performed_procedure_step_start_time.matches(shown.performed_procedure_step_start_time):
            return False
        if self.study_time is not None and not self.study_time.matches(entry.study_time):
            return False
        return self.study_date is None or self.study_date.matches(entry.study_date)

    def patient_name_candidates(self) -> NamePrefix | None:
        """What every PatientName this query matches starts with, for the store's key index (in
        the view that shows the names as stored: care's): the literal prefix of the normalised
        pattern, which a pattern of one group may find at the start of any group of the name;
        None when the pattern starts with a wildcard (every instance is a candidate)."""
        if self.patient_name is None:
            return None
        wanted = person_name_key(self.patient_name)
        prefix = literal_prefix(wanted)
        return NamePrefix(prefix, any_group="=" not in wanted) if prefix else None

    def study_description_candidates(self) -> str | None:
        """What every StudyDescription this query matches starts with (None: no such prefix)."""
        if self.study_description is None:
            return None
        return literal_prefix(self.study_description) or None


def literal_prefix(pattern: str) -> str:
    """What every value ``pattern`` matches starts with (:func:`_wildcard`): the pattern up to
    its first ``*`` or ``?``, and before any U+0000, which no stored text holds (the store
    refuses it in a value it is given, a query's too; the pattern then matches nothing, as before)."""
    ends = [i for i in (pattern.find("*"), pattern.find("?"), pattern.find("\x00")) if i >= 0]
    return pattern[:min(ends)] if ends else pattern


def _person_name_matches(pattern: str, value: str | None) -> bool:
    """PatientName (and ReferringPhysicianName) matching (PS3.4 C.2.2.2.1 allows PN literal matching insensitive to case;
    C.2.2.2.4 wildcards) on both in the form :func:`adapter.model.dicom.person_name_key` gives,
    the one the store indexes: a pattern of one component group is matched against each group
    of the value (alphabetic, ideographic, phonetic), one naming several groups against the whole.
    An empty (or absent) name is matched as the empty string: only by a pattern of ``*`` alone."""
    if not value:
        return _wildcard(pattern, value)
    wanted, name = person_name_key(pattern), person_name_key(value)
    if "=" in wanted:
        return _wildcard(wanted, name)
    return any(_wildcard(wanted, group) for group in name.split("=") if group)


def _wildcard(pattern: str, value: str | None) -> bool:
    """PS3.4 C.2.2.2.4 wildcard matching: ``*`` any run of characters, ``?`` any one. A walk
    that goes back only to the last ``*`` (at most pattern × value steps): a regular expression
    with one ``.*`` per ``*`` backtracked exponentially, and 24 of them held the server 20 s.
    ``*`` matches the empty run too, so an empty (or absent) value is matched by a pattern of
    ``*`` alone, as universal matching matches every value (PS3.4 C.2.2.2.4)."""
    value = value or ""
    p = v = 0
    star, resume = -1, 0  # the last * seen, and where in the value its run now ends
    while v < len(value):
        if p < len(pattern) and pattern[p] != "*" and (pattern[p] == "?" or pattern[p] == value[v]):
            p += 1
            v += 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, v
            p += 1
        elif star >= 0:  # let the last * take one more character, and go on from after it
            resume += 1
            p, v = star + 1, resume
        else:
            return False
    return all(c == "*" for c in pattern[p:])


#: InstanceAvailability (0008,0056) of every instance a search returns: held here, retrievable now.
ONLINE = "ONLINE"


def first_shown(members: Sequence[DicomEntry], name: str) -> Any:
    """The ``name`` attribute (of :class:`InstanceAttributes`) of the first of ``members`` that
    has one, None when none has: what a study or series result shows of its instances."""
    return next((v for m in members if (v := getattr(m.attributes, name)) is not None), None)


def series_shown(members: Sequence[DicomEntry]) -> dict[str, Any]:
    """The attributes of a series result (PS3.18 Table 10.6.3-4) that its instances ``members``
    show in the purpose's view, each of the first that has it, by keyword (None: not known)."""
    first = partial(first_shown, members)
    return {"SeriesNumber": first("series_number"), "SeriesDescription": first("series_description"),
            "PerformedProcedureStepStartDate": first("performed_procedure_step_start_date"),
            "PerformedProcedureStepStartTime": first("performed_procedure_step_start_time"),
            "TimezoneOffsetFromUTC": first("timezone_offset_from_utc")}


def instance_shown(entry: DicomEntry) -> dict[str, Any]:
    """The attributes of an instance result (PS3.18 Table 10.6.3-5) the released object carries,
    by keyword (None: it has none): a viewer orders a series by InstanceNumber and lays out its
    frames by Rows, Columns and NumberOfFrames."""
    shown = entry.attributes
    return {"InstanceAvailability": ONLINE, "TimezoneOffsetFromUTC": shown.timezone_offset_from_utc,
            "InstanceNumber": shown.instance_number, "Rows": shown.rows, "Columns": shown.columns,
            "BitsAllocated": shown.bits_allocated, "NumberOfFrames": shown.number_of_frames}


def is_universal(value: str) -> bool:
    """Is a match key's value universal matching (PS3.4 C.2.2.2.3 and C.2.2.2.4)? Empty, or only
    ``*``, which matches any run of characters, the empty one too: every entity matches, those
    without a value included. Taken so for every key, a date's or UID's too."""
    return all(c == "*" for c in value.strip())


def match_level(level: str, query: DicomQuery, entries: Iterable[DicomEntry]) -> list[DicomEntry]:
    """The entries (instances) that make up the matching studies, series or instances: at study
    level every instance of a matching study (so the counts cover the study); Modality at study
    level is ModalitiesInStudy (a study with any instance of one of the modalities matches). Each
    modality of the list may hold wildcards (CS, PS3.4 C.2.2.2.4)."""
    candidates = [e for e in entries if query.matches(e)]
    if not query.modalities:
        return candidates

    def of_modality(entry: DicomEntry) -> bool:
        return any(_wildcard(m, entry.modality) for m in query.modalities)

    if level == STUDY:
        studies = {e.study_instance_uid for e in candidates if of_modality(e)}
        return [e for e in candidates if e.study_instance_uid in studies]
    return [e for e in candidates if of_modality(e)]


# --------------------------------------------------------------------------- STOW-RS


@dataclass(frozen=True)
class StowOutcome:
    """What became of one STOW-RS part: stored (``failure_reason`` None; ``consent_pending`` when
    it was stored consent pending, ``diagnostics`` then the record's pending note) or failed
    (``diagnostics`` the refusal's words). No part is stored with a WarningReason (0008,1196):
    PS3.18 Table I.2-1's three (coercion, elements discarded, SOP class mismatch) are none the
    adapter does (another content under a stored SOP Instance UID fails 0xA900)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    failure_reason: int | None = None
    diagnostics: str | None = None
    record: str | None = None
    replayed: bool = False
    consent_pending: bool = False

    @property
    def stored(self) -> bool:
        return self.failure_reason is None

    @property
    def warned(self) -> bool:
        """Stored with a warning: kept consent pending (answered 202)."""
        return self.stored and self.consent_pending


def _text(ds: Dataset, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a malformed value: treated as absent here, ingest refuses it
        return None
    text = str(value or "").strip("\x00 ")
    return text or None


def stow_instance(ingest: DicomIngestService, path: Path, *, peer_address: str,
                  study_instance_uid: str | None = None, sender: RequestContext | None = None,
                  trusted: bool = False) -> StowOutcome:
    """Store one STOW-RS part (a Part 10 file at ``path``, left in place) through the C-STORE
    SCP's ingest (same checks, same record, same idempotency by SOP Instance UID), sent by
    :data:`STOW_SENDER` from ``peer_address``: as a colleague inside the organisation when the
    client is ``trusted`` (ADAPTER_STOW_TRUSTED_SENDERS names it), else held to the consent rules
    of a photo posted without a consent statement (a clinical object without a Consent on file
    permitting care fails with 0x0124, unless kept consent pending:
    adapter.services.dicom_ingest.UNTRUSTED_STOW_SOURCE); audited as sent by ``sender``, the
    request's (adapter.services.dicom_ingest.stow_sender).

    The file meta stands in for the C-STORE request: MediaStorageSOPClassUID is the negotiated
    and requested SOP class, MediaStorageSOPInstanceUID the requested instance, so a dataset
    that contradicts its own file meta fails as it would over DIMSE (0xA900). A SOP class the
    SCP would not negotiate fails with 0x0122; a StudyInstanceUID other than the one of the
    request URL (``study_instance_uid``, PS3.18 10.5.1) with 0xA900; anything that does not
    parse with 0xC000. The class and the transfer syntax are checked from the File Meta alone
    (group 0002), before the data set is parsed: a syntax the SCP would not negotiate for the
    class (adapter.mapping.dicom_tables.accepted_transfer_syntaxes; Deflated, say, which pydicom
    would inflate whole, unbounded) fails with 0xC122 Referenced Transfer Syntax not supported
    (PS3.18 I.2.2) and is never read further. Refusals never raise: they are the outcome's ``failure_reason``, and
    audited once, naming the part by the SOP Instance UID its outcome names (the ingest audits
    its own refusals; those before it are audited here).
    """
    sop_class = sop_instance = study = series = None
    received: ReceivedStore | None = None
    try:
        try:  # the File Meta alone (group 0002, always Explicit VR Little Endian): no data set read yet
            meta = read_file_meta_info(path)
            requested_class = str(meta.MediaStorageSOPClassUID).strip("\x00 ")
            requested_instance = str(meta.MediaStorageSOPInstanceUID).strip("\x00 ")
            transfer_syntax = str(meta.TransferSyntaxUID).strip("\x00 ")
        except Exception as exc:  # pydicom raises many kinds on a non-DICOM part
            raise InvalidInput("the part is not a DICOM Part 10 object") from exc
        sop_class, sop_instance = requested_class or None, requested_instance or None
        if requested_class not in ingest.accepted_sop_classes:
            raise NotSupported(f"SOP class {requested_class[:64]} is not accepted",
                               expression="(0002,0002) MediaStorageSOPClassUID")
        # what the SCP would not negotiate for the class is refused before the data set is parsed:
        # pydicom inflates a Deflated one whole, unbounded, as it opens it (a decompression bomb)
        check_transfer_syntax(requested_class, transfer_syntax)
        try:
            head = dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # pydicom raises many kinds on a malformed data set
            raise InvalidInput("the part is not a DICOM Part 10 object") from exc
        sop_class = _text(head, "SOPClassUID") or requested_class
        sop_instance = _text(head, "SOPInstanceUID") or requested_instance
        study, series = _text(head, "StudyInstanceUID"), _text(head, "SeriesInstanceUID")
        if study_instance_uid is not None and study != study_instance_uid:
            raise InvalidResource("the instance's Study Instance UID is not the one of the request URL",
                                  expression="(0020,000D) StudyInstanceUID")
        received = ReceivedStore(
            path=path, calling_ae=STOW_SENDER, peer_address=peer_address, context_sop_class=requested_class,
            transfer_syntax=transfer_syntax, affected_sop_class=requested_class,
            affected_sop_instance=requested_instance, answered_sop_instance=sop_instance, sender=sender,
            trusted_sender=trusted)
        result = ingest.ingest_received(received)
    except AdapterError as exc:
        if received is None:  # refused before the ingest
            ingest.record_refusal(calling_ae=STOW_SENDER, peer_address=peer_address, sop_instance_uid=sop_instance,
                                  error=exc, sender=sender)
        status = dimse_status_for(exc)
        # neither the SOP Instance UID nor the diagnostics: either can name the patient
        # (AdapterError.for_log); the answer's FailedSOPSequence gives the client both
        log.warning("STOW-RS from %s refused (0x%04X %s)", peer_address, status, exc.for_log())
        return StowOutcome(sop_class, sop_instance, study, series, failure_reason=status,
                           diagnostics=exc.diagnostics)
    log.info("STOW-RS from %s: %s %s", peer_address, "already stored as" if result.replayed else "stored as",
             result.record)
    if result.receipt.get("consentPending") and not result.replayed:
        # safety review 4: stored, but readable for care only once consent is documented: the
        # sender is told so (202 and a Warning: adapter.api.routes.dicomweb), in the record's words
        note = next((w for w in result.receipt.get("warnings") or () if str(w).startswith(PENDING_PREFIX)),
                    PENDING_WARNING)
        return StowOutcome(sop_class, sop_instance, study, series, record=result.record, replayed=result.replayed,
                           consent_pending=True, diagnostics=str(note))
    return StowOutcome(sop_class, sop_instance, study, series, record=result.record, replayed=result.replayed)


def stow_not_staged(ingest: DicomIngestService, error: AdapterError, *, peer_address: str,
                    sender: RequestContext | None = None) -> StowOutcome:
    """A STOW-RS part the staging folder had no room for (ENOSPC, EDQUOT:
    adapter.api.multipart_related): it fails as the reserve's refusal fails an instance, 0xA700
    Out of Resources (sent again once room is made), audited so (outcome 8, the error's
    diagnostics), naming no instance: nothing of it was read, and nothing of it is kept."""
    ingest.record_refusal(calling_ae=STOW_SENDER, peer_address=peer_address, sop_instance_uid=None, error=error,
                          sender=sender)
    status = dimse_status_for(error)
    log.warning("STOW-RS from %s refused (0x%04X %s)", peer_address, status, error.for_log())
    return StowOutcome(None, None, None, None, failure_reason=status, diagnostics=error.diagnostics)


__all__ = [
    "INSTANCE",
    "LARGE_OBJECT_BYTES",
    "LEVELS",
    "LEVEL_KEYS",
    "ONLINE",
    "SERIES",
    "STOW_SENDER",
    "STUDY",
    "DateRange",
    "DicomEntry",
    "DicomQuery",
    "DicomRelease",
    "ReleasedObject",
    "StowOutcome",
    "dicom_object_for",
    "first_shown",
    "instance_shown",
    "integer_key",
    "is_universal",
    "literal_prefix",
    "match_level",
    "object_attributes",
    "object_version_of",
    "regenerating",
    "series_shown",
    "stow_instance",
    "stow_not_staged",
    "stow_sender",
    "study_of",
]
