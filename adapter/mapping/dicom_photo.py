"""A stored photo record (R4 Media / DocumentReference) + its stored bytes → a DICOM Part 10
dataset: VL Photographic Image for ``clinical`` photos (Modality XC), Secondary Capture for
``document`` and ``secondary`` photos (mappings/dicom.yaml; standards.md §4.2-4.5).

Modules written (PS3.3 A.32.4 VL Photographic, A.8.1 SC; standards.md §4.3, types §4.4):
Patient, General Study, General Series, General Equipment (+ SC Equipment), General
Acquisition, General Image, Image Pixel, VL Image + Acquisition Context or SC Image, SOP Common.

Decisions:

* **Pixels.** A JPEG that the JPEG Baseline transfer syntax can carry (SOF0, 8-bit, 1 or 3
  components) and that needs no rotation is encapsulated as stored, byte for byte except any
  EXIF (standards.md §4.5; :func:`adapter.imaging.jpeg_for_encapsulation`): YBR_FULL_422 (or
  MONOCHROME2 for 1 component, RGB for an Adobe no-transform stream), PlanarConfiguration 0,
  LossyImageCompression 01, method ISO_10918_1 (a PACS that accepts no JPEG gets it decoded
  at send time, the same instance: adapter.mapping.dicom_decompress). Everything else is
  decoded and stored as native, uncompressed Explicit VR Little Endian 8-bit RGB or MONOCHROME2
  samples: PNG (lossless), a progressive or otherwise non-baseline JPEG (the progressive
  transfer syntaxes are retired, and a lossless transcode to baseline does not exist), a CMYK
  JPEG, and any photo whose EXIF Orientation is not 1.
* **Orientation** (DICOM has no EXIF): applied with an exact transpose of the decoded pixels
  before wrapping. There is no lossless JPEG rotation here (that needs jpegtran, outside Pillow,
  and only works on whole MCUs), so a rotated JPEG is stored uncompressed: ImageType DERIVED,
  DerivationDescription says what happened, LossyImageCompression stays 01 (PS3.3 C.7.6.1.1.5:
  once lossy, never reset). The frame is ~3 bytes per pixel (a 12 MP photo: 36 MB).
* **Transparency** (a PNG's alpha channel or tRNS) is composited over black (a fully
  transparent pixel is black, never the colour under it; objects of version 2 and before drop
  the alpha) and 16-bit samples are reduced to 8 bits (one 8-bit pixel path for every IOD, as
  photo viewers show them); both are named in DerivationDescription and make the image DERIVED
  when they change what is shown. An ICC profile inside a stored JPEG stays in
  the encapsulated frame; decoded pixels carry none (no ICC Profile module is written).
* **Patient module**: PatientID and IssuerOfPatientID from the record's subject identifier
  through mappings/dicom.yaml (reverse lookup; an unknown system is refused). PatientName,
  PatientBirthDate and PatientSex are Type 2 and empty: the adapter owns no demographics.
* **Study module**: the photos of one encounter are one study (adapter.mapping.dicom_uids), and
  StudyDate/Time are attributes of the study (PS3.3 C.7.2.1), the same in every instance of it:
  those of the first photo stored for the study (:class:`PhotoStudy`, kept with each instance:
  adapter.services.ingest), which a later photo never moves, so an object made (and forwarded)
  before another photo joined is never contradicted. A photo's own StudyDate/Time
  (:func:`photo_study`) is when it was taken (createdDateTime, or for a DocumentReference
  context.period.start / attachment.creation), else when it was filed (issued / date); a photo
  of no encounter is a study of its own. Each photo's own day and time are its ContentDate/Time
  and AcquisitionDateTime. AccessionNumber, ReferringPhysicianName and StudyID are empty (Type 2).
* **Times.** DICOM DA/TM have no zone; TimezoneOffsetFromUTC (0008,0201) gives one for the
  whole dataset. Every date and time is written in the study's offset (its first photo's taken
  time's, or UTC when that is unknown or date-only), so StudyTime reads the same in every
  instance of the study. A date-only taken time (a naive EXIF time, see adapter.mapping.fhir_r4)
  gives StudyDate/ContentDate with empty StudyTime and no ContentTime. Without any taken time
  there is no ContentDate/Time and no AcquisitionDateTime (Type 2C/3: not temporally related).
* **Anatomy**: bodySite's SNOMED coding → AnatomicRegionSequence (SCT, CodeMeaning from
  mappings/body_sites.yaml); the laterality extension → ImageLaterality (R/L/B) and an
  AnatomicRegionModifierSequence item (SCT 24028007/7771000/51440002). Series Laterality
  (General Series, PS3.3 C.7.3.1) is Type 2C, required if the body part is paired and no
  ImageLaterality is sent, and absent otherwise (dciodvfy errors when it is present on a part
  it knows unpaired, or missing where it cannot tell). Whether a site is paired is data
  (body_sites.yaml ``paired``). So: a side given → ImageLaterality, no Laterality (which takes R
  or L only); an unpaired site → ImageLaterality U ("unpaired", C.7.6.1), no Laterality; a
  paired site without a side, or no body site → Laterality empty (Type 2: unknown; dciodvfy
  warns that empty is only for "actually unknown"), except for a kind that images no body part
  with sides (dicom.yaml ``withoutBodySite: unpaired``, documents) → ImageLaterality U.
* **Privacy**: RecognizableVisualFeatures from kinds.yaml ``recognizable``; BurnedInAnnotation
  from mappings/dicom.yaml (documents and screens carry text). Nothing from EXIF except the
  Orientation is used, so no GPS, serials, owner or capture software can reach the object.
  OperatorsName and DeviceSerialNumber are never written; no free text from the record is (not
  the sender's note: it may name the patient), only the adapter's own texts it carries (below).
* **Secondary image warning**: a photo of an x-ray, ECG or screen is to be reviewed on its
  original platform before diagnosis. The FHIR record says so in a note; the object says it to
  a PACS reader in ImageComments (0020,4000, General Image: the kind's ``warning`` of
  mappings/kinds.yaml, word for word) and SeriesDescription (0008,103E: the kind's
  ``seriesDescription`` of mappings/dicom.yaml, a short form for series lists). Both are fixed
  texts of the adapter; the restricted copies keep them (adapter.mapping.dicom_deid).
* **Quality warnings**: what ingest judged of the image (adapter.imaging.quality: below the
  policy's size, blurred, low JPEG quality) is in the record (an extension each, and a note
  "Quality warning: …" each: adapter.mapping.photo); the object says it to a PACS reader in
  ImageComments too, after the kind's warning, one line each (CR LF, PS3.5 6.1.3 and J.2), in
  the note's words (:func:`image_comments`), so a reader of the image in the PACS is told that
  the adapter found it e.g. too small or blurred for diagnosis. They are the adapter's own
  texts (numbers about the image and the policy's limits, no patient data): the FHIR restricted
  views keep them (the extension) and so do the restricted copies (:func:`quality_texts`).
* **Versions** (:data:`PHOTO_OBJECT_VERSION`): the object is made afresh at every read and
  forward, and one made (and sent) before is never changed: the store keeps with each instance
  the version its object was first made with, and every regeneration makes that one.
* **Equipment**: :class:`Equipment` (make/model from the camera's structured data) or the
  record's deviceName as ManufacturerModelName; Manufacturer is Type 2 and empty when unknown.
  For SC the camera is the secondary-capture device (SC Equipment); General Equipment
  describes the original (unknown: film, screen or paper). InstitutionName = the policy's
  organisation unless ``institution`` is given; none for a photo from a colleague outside the
  organisation (``colleague-external``, version 4: it was taken under another organisation's
  policy, which this one must not claim; Type 3 in General Equipment, PS3.3 C.7.5.1), whose
  ImageComments says so instead (:data:`EXTERNAL_COLLEAGUE_COMMENT`, a fixed text the restricted
  copies keep; the colleague's organisation and note stay in the record, not in the object).
* **Character set**: SpecificCharacterSet ``ISO_IR 192`` (UTF-8) only when a value is not ASCII.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit

from adapter.errors import ImageTooLarge, InvalidInput
from adapter.imaging import (
    JPEG,
    Pixels,
    decode_pixels,
    jpeg_for_encapsulation,
    jpeg_frame_info,
    jpeg_pixel_size,
    png_pixel_size,
    read_orientation,
)
from adapter.imaging.sniff import check_declared
from adapter.mapping.codes import EXT_LATERALITY, EXT_PHOTO_SOURCE, EXT_QUALITY_WARNING, SNOMED
from adapter.mapping.dicom_tables import DicomTables, KindIod
from adapter.mapping.dicom_uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, PhotoUids
from adapter.mapping.photo import QUALITY_WARNING_PREFIX
from adapter.mapping.tables import Tables
from adapter.model.photo import Identifier, PhotoKind, PhotoSource

_PHOTOMETRIC_OF_JPEG = {"GREY": "MONOCHROME2", "YBR": "YBR_FULL_422", "RGB": "RGB"}
_LO_MAX = 64
_LT_MAX = 10240      # LT: at most 10240 characters (PS3.5 6.2)
_LT_NEW_LINE = "\r\n"  # a line break in LT/ST/UT text (PS3.5 6.1.3; the CR LF of Annex J.2's examples)

#: How :func:`photo_to_dicom` makes a posted photo's object. The object is made afresh at every
#: read and forward (with the UIDs, creation time and study fixed at ingest), so the store keeps
#: with each instance the version its object was first made with (dicom_instances.object_version,
#: schema 19), and every regeneration makes that version: an object made, read and forwarded
#: before a change is never changed. Bump it with any change to what an object says.
#: 1 (an instance stored before schema 19): ImageComments is the kind's warning alone;
#: 2: the record's quality warnings follow it (:func:`image_comments`);
#: 3: a PNG's transparency is composited over black, not dropped (review mobile finding 12: the
#: colour hidden under a fully transparent pixel showed): adapter.imaging.render.decode_pixels;
#: 4: a ``colleague-external`` photo names no InstitutionName and says where it came from
#: (:data:`EXTERNAL_COLLEAGUE_COMMENT`, clinical-safety review 5).
PHOTO_OBJECT_VERSION = 4

#: What the object of a ``colleague-external`` photo says in ImageComments, after the kind's
#: warning (version 4): the adapter's own words, never the sender's (the colleague's name, their
#: organisation and the discussion note are in the record: its Media.note and Provenance).
EXTERNAL_COLLEAGUE_COMMENT = ("Photo from a colleague outside the organisation: see the record's discussion "
                              "note before relying on it.")

#: The longest side of a picture a DICOM image holds: Rows (0028,0010) and Columns (0028,0011)
#: are US (PS3.3 C.7.6.3; PS3.5 6.2: 0 to 65535).
MAX_ROWS_COLUMNS = 0xFFFF


def check_rows_columns(width: int, height: int) -> None:
    """Refuse a picture of ``width`` x ``height`` pixels with a side over
    :data:`MAX_ROWS_COLUMNS`: no DICOM object can hold it, whichever way it is turned (PS3.3
    C.7.6.3). Ingest refuses such a photo before it is decoded (adapter.imaging.sanitize), since
    every posted photo becomes a DICOM object; one stored before is refused here, the same way at
    every regeneration (never made with a Columns no encoder can write, which failed only when it
    was encoded, as a failure of the store that a retry would cure).

    Raises:
        ImageTooLarge: a side is over MAX_ROWS_COLUMNS (422 too-costly; DIMSE 0xA700).
    """
    if width > MAX_ROWS_COLUMNS or height > MAX_ROWS_COLUMNS:
        raise ImageTooLarge(f"image is {width}x{height} pixels: a DICOM image has at most {MAX_ROWS_COLUMNS} rows "
                            f"and {MAX_ROWS_COLUMNS} columns (PS3.3 C.7.6.3), so no DICOM object can be made of it")


@dataclass(frozen=True, slots=True)
class Equipment:
    """The capture device as structured data (e.g. EXIF Make and Model kept by the policy)."""

    manufacturer: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class _Moment:
    """A FHIR date/dateTime/instant read for DICOM: the calendar date and, when known, the
    local time of day in ``offset`` (None for a zone-less value)."""

    value: datetime
    has_time: bool
    offset: timedelta | None


@dataclass(frozen=True, slots=True)
class PhotoStudy:
    """The General Study module's StudyDate and StudyTime of a photo's study, and the
    TimezoneOffsetFromUTC every object of the study is written in: its first photo's
    (:func:`photo_study`), kept with every instance of the study (module docstring)."""

    date: str | None      # DA; None: the object's StudyDate is empty
    time: str | None      # TM; None: empty
    offset: str           # TimezoneOffsetFromUTC, ±HHMM


def photo_to_dicom(record: Mapping[str, Any], image: bytes, content_type: str, *, kind: PhotoKind,
                   patient: Identifier, uids: PhotoUids, tables: Tables, dicom_tables: DicomTables,
                   orientation: int | None = None, institution: str | None = None,
                   equipment: Equipment | None = None, now: datetime, study: PhotoStudy | None = None,
                   version: int = PHOTO_OBJECT_VERSION) -> Dataset:
    """The DICOM dataset (with file meta) of a stored photo; see the module docstring.

    ``record`` is the stored R4 Media or DocumentReference; ``image`` its stored bytes (as
    ingest wrote them); ``orientation`` the EXIF Orientation to apply (default: read from the
    stored bytes); ``now`` the instance creation time (aware); ``study`` the study's date, time
    and offset (default: the photo's own, :func:`photo_study`: the first photo of its study);
    ``version`` the :data:`PHOTO_OBJECT_VERSION` the instance's object was first made with.

    Raises:
        UnknownCode: the patient identifier system has no IssuerOfPatientID.
        InvalidInput: the identifier value cannot be a PatientID; ``record`` is not a photo record.
        UnsupportedMediaType / UndecodableImage: ``image`` is not the JPEG/PNG it claims to be.
        ImageTooLarge: a side of ``image`` is over :data:`MAX_ROWS_COLUMNS`.
        ValueError: ``now`` is naive.
    """
    ds, iod = _photo_header(record, kind=kind, patient=patient, uids=uids, tables=tables,
                            dicom_tables=dicom_tables, institution=institution, equipment=equipment, now=now,
                            study=study, version=version)
    kind_format = check_declared(image, content_type)
    check_rows_columns(*(jpeg_pixel_size(image) if kind_format == JPEG else png_pixel_size(image)))
    if orientation is None:
        orientation = read_orientation(image, kind_format) or 1
    derived, encapsulated = _set_pixels(ds, image, kind_format, orientation, version)
    _finish(ds, iod, derived=derived)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = JPEGBaseline8Bit if encapsulated else ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)  # the adapter wrote it (PS3.10 7.1)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    return ds


def photo_without_pixels(record: Mapping[str, Any], *, width: int, height: int, orientation: int | None,
                         kind: PhotoKind, patient: Identifier, uids: PhotoUids, tables: Tables,
                         dicom_tables: DicomTables, now: datetime, study: PhotoStudy | None = None,
                         version: int = PHOTO_OBJECT_VERSION) -> Dataset:
    """What :func:`photo_to_dicom` writes of a photo stored ``width`` x ``height`` pixels (its
    stored, unrotated size) with EXIF ``orientation``, but its Image Pixel module: Rows and
    Columns as its pixels are displayed (swapped by an Orientation of 5 to 8, which turn it a
    quarter), BitsAllocated 8 (every photo object is 8 bits a sample), no pixel data and no
    file meta, no ImageType (whether the pixels are derived is known once they are made). Ingest
    reads its QIDO-RS attributes from this without decoding the photo (a rotated JPEG or a PNG is
    decoded for its object) or reading it back.

    Raises: as :func:`photo_to_dicom` for the record and the patient, and for a side over
    :data:`MAX_ROWS_COLUMNS`."""
    check_rows_columns(width, height)
    ds, iod = _photo_header(record, kind=kind, patient=patient, uids=uids, tables=tables,
                            dicom_tables=dicom_tables, institution=None, equipment=None, now=now,
                            study=study, version=version)
    turned = orientation is not None and 5 <= orientation <= 8
    ds.Rows, ds.Columns = (width, height) if turned else (height, width)
    ds.BitsAllocated = 8
    _finish(ds, iod, derived=None)
    return ds


def _photo_header(record: Mapping[str, Any], *, kind: PhotoKind, patient: Identifier, uids: PhotoUids,
                  tables: Tables, dicom_tables: DicomTables, institution: str | None,
                  equipment: Equipment | None, now: datetime, study: PhotoStudy | None,
                  version: int) -> tuple[Dataset, Any]:
    """Every module of the photo's object up to the Image Pixel module, and its IOD's entry."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    rtype = record.get("resourceType")
    if rtype not in ("Media", "DocumentReference"):
        raise InvalidInput(f"not a photo record: {rtype!r}", expression="resourceType")
    iod = dicom_tables.kinds[kind]
    patient_id, issuer = dicom_tables.patient_identifiers.to_dicom(patient)

    ds = Dataset()
    # --- SOP Common (C.12.1)
    ds.SOPClassUID = UID(iod.sop_class)
    ds.SOPInstanceUID = UID(uids.sop_instance)
    # --- Patient (C.7.1.1)
    ds.PatientName = ""
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # --- General Study (C.7.2.1)
    ds.StudyInstanceUID = UID(uids.study)
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    # --- General Series (C.7.3.1)
    ds.Modality = iod.modality
    ds.SeriesInstanceUID = UID(uids.series)
    ds.SeriesNumber = iod.series_number
    if iod.series_description:
        ds.SeriesDescription = iod.series_description
    # --- General Equipment (C.7.5.1) / SC Equipment (C.8.6.1)
    model = _lo(equipment.model if equipment and equipment.model else record.get("deviceName"))
    make = _lo(equipment.manufacturer if equipment else None)
    # none for a photo taken under another organisation's policy (module docstring)
    org = "" if version >= 4 and _from_outside(record) else \
        _lo(institution if institution is not None else tables.policy.organisation.name)
    if iod.is_secondary_capture:
        ds.Manufacturer = ""
        ds.ConversionType = iod.conversion_type
        if make:
            ds.SecondaryCaptureDeviceManufacturer = make
        if model:
            ds.SecondaryCaptureDeviceManufacturerModelName = model
    else:
        ds.Manufacturer = make or ""
        if model:
            ds.ManufacturerModelName = model
    if org:
        ds.InstitutionName = org
    # --- General Image (C.7.6.1)
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.BurnedInAnnotation = iod.burned_in_annotation
    ds.RecognizableVisualFeatures = "YES" if tables.kinds[kind].recognizable else "NO"
    comments = image_comments(record, kind=kind, tables=tables, version=version)
    if comments:  # the kind's warning and the quality warnings, as the FHIR record's notes
        ds.ImageComments = comments

    _set_times(ds, record, now, secondary_capture=iod.is_secondary_capture,
               study=study if study is not None else photo_study(record))
    _set_anatomy(ds, record, tables, iod)
    return ds, iod


def _finish(ds: Dataset, iod: Any, *, derived: bool | None) -> None:
    """The attributes written after the pixels: ImageType (not when ``derived`` is not known: no
    pixels were made), the VL Image's Acquisition Context, SpecificCharacterSet."""
    if derived is None:
        pass
    elif iod.is_secondary_capture:
        ds.ImageType = ["DERIVED" if derived else "ORIGINAL", "SECONDARY"]
    else:  # VL Image (C.8.12.1) and Acquisition Context (C.7.6.14)
        ds.ImageType = ["DERIVED" if derived else "ORIGINAL", "PRIMARY"]
        ds.AcquisitionContextSequence = Sequence()
    if _has_non_ascii(ds):
        ds.SpecificCharacterSet = "ISO_IR 192"


def image_comments(record: Mapping[str, Any], *, kind: PhotoKind, tables: Tables,
                   version: int = PHOTO_OBJECT_VERSION) -> str | None:
    """ImageComments (0020,4000, General Image, PS3.3 C.7.6.1: the comments a viewer shows with
    the image) of a photo's object: the kind's ``warning`` (mappings/kinds.yaml), then, from
    version 4, :data:`EXTERNAL_COLLEAGUE_COMMENT` for a ``colleague-external`` photo, then, from
    version 2, each of the record's quality warnings as its note says it (:func:`quality_texts`),
    one line each. None when there is none. LT holds at most 10240 characters (PS3.5 6.2): a line
    that would not fit is left out whole, never cut, so every line is word for word a text the
    restricted copies keep (three quality warnings of about 80 characters each are far from it)."""
    warning = tables.kinds[kind].warning
    if version < 2:  # as version 1 made it
        return warning or None
    outside = EXTERNAL_COLLEAGUE_COMMENT if version >= 4 and _from_outside(record) else None
    kept: list[str] = []
    for line in (text for text in (warning, outside, *quality_texts(record)) if text):
        if len(_LT_NEW_LINE.join([*kept, line])) <= _LT_MAX:
            kept.append(line)
    return _LT_NEW_LINE.join(kept) or None


def warned_received(ds: Dataset, warning: str, *, keep_sender_text: bool) -> bool:
    """Put the record's kind ``warning`` (mappings/kinds.yaml: the secondary image's "review the
    original") first in the ImageComments of ``ds``, a received object's image as released
    (clinical-safety review 2: an object received over C-STORE or STOW-RS that ingest files as
    ``secondary`` said it on its FHIR record only). ``keep_sender_text``: the sender's own
    comments follow on the next line (CR LF, PS3.5 6.1.3), cut to what LT holds (10240
    characters, PS3.5 6.2) after the warning (care's copy; the stored file keeps them whole);
    else the warning alone (a restricted copy removes the sender's text: adapter.mapping.dicom_deid
    keeps the warning, a fixed text). Nothing is changed for an object with no pixel data (no
    General Image module), or whose comments hold the warning as a line already (the adapter's
    own object, sent back); returns whether ``ds`` was changed."""
    if "PixelData" not in ds:
        return False
    value = ds.get("ImageComments")
    sender = str(value) if value else ""
    if warning in sender.split(_LT_NEW_LINE):
        return False
    room = _LT_MAX - len(warning) - len(_LT_NEW_LINE)
    kept = sender[:room] if keep_sender_text and room > 0 else ""
    ds.ImageComments = _LT_NEW_LINE.join(line for line in (warning, kept) if line)
    return True


def _from_outside(record: Mapping[str, Any]) -> bool:
    """Whether the record's photo-source extension says ``colleague-external``."""
    return any(isinstance(ext, Mapping) and ext.get("url") == EXT_PHOTO_SOURCE
               and ext.get("valueCode") == PhotoSource.COLLEAGUE_EXTERNAL.value
               for ext in record.get("extension") or ())


def quality_texts(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The record's quality warnings (its quality-warning extensions, written by ingest from
    adapter.imaging.quality) in the words its notes say them: "Quality warning: …" (adapter.mapping
    .photo). One line each: a value with a control character, which ingest never writes, is left
    out (it could break the line it belongs to). The adapter's own texts, holding no patient data
    (numbers about the image and the policy's limits): the restricted copies of the record's
    object keep them (adapter.services.dicom_objects.DicomRelease.release), as the FHIR restricted
    views keep the extension."""
    out: list[str] = []
    for ext in record.get("extension") or ():
        if isinstance(ext, Mapping) and ext.get("url") == EXT_QUALITY_WARNING:
            value = ext.get("valueString")
            if isinstance(value, str) and value.strip() and value.isprintable():
                out.append(QUALITY_WARNING_PREFIX + value)
    return tuple(dict.fromkeys(out))


def fixed_texts(tables: Tables, dicom_tables: DicomTables) -> frozenset[str]:
    """The texts :func:`photo_to_dicom` writes into ImageComments and SeriesDescription for any
    record: the kinds' warnings and series descriptions, fixed by the tables, and
    :data:`EXTERNAL_COLLEAGUE_COMMENT`, holding no patient data (so the restricted copies may keep them: adapter.mapping.dicom_deid). A record's own
    quality warnings are added per record (:func:`quality_texts`)."""
    descriptions = (iod.series_description for iod in dicom_tables.kinds.values())
    return tables.kind_warnings | {text for text in descriptions if text} | {EXTERNAL_COLLEAGUE_COMMENT}


def code_meanings(tables: Tables) -> dict[tuple[str, str], str]:
    """(Coding Scheme Designator, Code Value) -> the Code Meaning :func:`photo_to_dicom` writes:
    the body sites and lateralities of mappings/body_sites.yaml (SCT). The restricted copies write
    these meanings, never the sender's (adapter.mapping.dicom_code_meanings)."""
    meanings = {("SCT", code): display for code, display in tables.body_sites.codes.items()}
    meanings.update((("SCT", side.code), side.display) for side in tables.body_sites.laterality.values())
    return meanings


def encode_dataset(ds: Dataset) -> bytes:
    """The Part 10 file bytes of ``ds`` (preamble, DICM, file meta, dataset)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encounter_key(record: Mapping[str, Any]) -> str | None:
    """The record's encounter as a string for :func:`adapter.mapping.dicom_uids.photo_uids`:
    the literal reference, else ``system|value`` of the logical reference."""
    ref: Any = record.get("encounter")
    if ref is None and isinstance(record.get("context"), Mapping):
        encounters = record["context"].get("encounter") or []
        ref = encounters[0] if encounters else None
    if not isinstance(ref, Mapping):
        return None
    if isinstance(ref.get("reference"), str) and ref["reference"]:
        return str(ref["reference"])
    ident = ref.get("identifier")
    if isinstance(ident, Mapping) and ident.get("value"):
        return f"{ident.get('system', '')}|{ident['value']}"
    return None


# ---------------------------------------------------------------------------------------------
# pixels


def pixels_decoded(image: bytes, content_type: str, orientation: int) -> bool:
    """Whether :func:`photo_to_dicom` decodes ``image`` (its checked media type
    ``content_type``, EXIF ``orientation``) into native pixels for its object, rather than
    encapsulating the JPEG frame as stored: a PNG, a JPEG that is not baseline, or one that is
    turned. A decoded object is the photo's full size uncompressed (240 MB for 80 MP in colour),
    which a reader making it waits its turn for (adapter.services.dicom_objects.regenerating)."""
    return content_type != JPEG or orientation != 1 or not jpeg_frame_info(image).baseline


def _set_pixels(ds: Dataset, image: bytes, content_type: str, orientation: int,
                version: int = PHOTO_OBJECT_VERSION) -> tuple[bool, bool]:
    """Image Pixel module (C.7.6.3) and the lossy-compression attributes; a PNG's transparency
    composited over black from ``version`` 3, dropped before it.

    Returns (derived, encapsulated)."""
    jpeg = content_type == JPEG
    if jpeg:
        info = jpeg_frame_info(image)
        if info.baseline and orientation == 1:
            frame = jpeg_for_encapsulation(image)
            ds.SamplesPerPixel = 1 if info.colour == "GREY" else 3
            ds.PhotometricInterpretation = _PHOTOMETRIC_OF_JPEG[info.colour]
            if ds.SamplesPerPixel == 3:
                ds.PlanarConfiguration = 0  # CP-1843: JPEG is colour-by-pixel
            ds.Rows, ds.Columns = info.height, info.width
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionRatio = _ratio(info.width * info.height * ds.SamplesPerPixel, len(frame))
            ds.LossyImageCompressionMethod = "ISO_10918_1"
            ds.PixelData = encapsulate([frame])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True  # PS3.5 A.4: encapsulated is undefined length
            return False, True
    pixels = decode_pixels(image, content_type, orientation=orientation, drop_alpha=version < 3)
    _set_native(ds, pixels)
    if jpeg:
        ds.LossyImageCompression = "01"
        info = jpeg_frame_info(image)
        ds.LossyImageCompressionRatio = _ratio(info.width * info.height * pixels.samples, len(image))
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    if pixels.changes:
        source = "JPEG (ISO 10918-1)" if jpeg else "PNG"
        ds.DerivationDescription = (f"Decoded from the stored {source}; " + "; ".join(pixels.changes)
                                    + "; stored uncompressed")[:1024]
        return True, False
    return False, False


def _set_native(ds: Dataset, pixels: Pixels) -> None:
    ds.SamplesPerPixel = pixels.samples
    ds.PhotometricInterpretation = pixels.photometric
    if pixels.samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = pixels.rows, pixels.columns
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    data = pixels.data if len(pixels.data) % 2 == 0 else pixels.data + b"\x00"  # PS3.5 8.1.1: even length
    ds.PixelData = data
    ds["PixelData"].VR = "OB"


def _ratio(uncompressed: int, compressed: int) -> str:
    """LossyImageCompressionRatio (DS, ≤ 16 characters)."""
    return f"{uncompressed / max(compressed, 1):.2f}"[:16]


# ---------------------------------------------------------------------------------------------
# times


def _parse_moment(value: Any) -> _Moment | None:
    """A FHIR date (full), dateTime or instant; year or year-month precision gives None."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        if len(value) == 10:
            return _Moment(datetime.fromisoformat(value), False, None)
        moment = datetime.fromisoformat(value)  # Python 3.11 reads "Z"
    except ValueError:
        return None
    return _Moment(moment, True, moment.utcoffset())


def _taken(record: Mapping[str, Any]) -> _Moment | None:
    if record.get("resourceType") == "Media":
        return _parse_moment(record.get("createdDateTime"))
    context = record.get("context")
    if isinstance(context, Mapping) and isinstance(context.get("period"), Mapping):
        found = _parse_moment(context["period"].get("start"))
        if found is not None:
            return found
    for content in record.get("content") or []:
        if isinstance(content, Mapping) and isinstance(content.get("attachment"), Mapping):
            found = _parse_moment(content["attachment"].get("creation"))
            if found is not None:
                return found
    return None


def _filed(record: Mapping[str, Any]) -> _Moment | None:
    return _parse_moment(record.get("issued" if record.get("resourceType") == "Media" else "date"))


def _zone_offset(offset: timedelta) -> str:
    """TimezoneOffsetFromUTC (SH ``&ZZXX``)."""
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def _da(moment: datetime) -> str:
    return moment.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return moment.strftime("%H%M%S") + (f".{moment.microsecond:06d}" if moment.microsecond else "")


#: How :func:`photo_study_values` derives a study's StudyDate, StudyTime and offset; the store
#: keeps those of every posted photo's instance derived by this version
#: (RecordStore.reindex_photo_study_dates, at start). Bump it with any change to what it returns.
STUDY_DATE_VERSION = "photo-study-date:3"  # 2: the StudyTime too; 3: the study's first photo's, and its offset


def _offset(taken: _Moment | None) -> timedelta:
    """The offset a photo's times are given in: the taken time's, else UTC."""
    return taken.offset if taken is not None and taken.offset is not None else timedelta(0)


def _local(moment: _Moment, offset: timedelta) -> datetime:
    return moment.value.astimezone(timezone(offset)) if moment.offset is not None else moment.value


def study_date(record: Mapping[str, Any]) -> str | None:
    """The StudyDate (DA) the DICOM object of a photo's record carries (module docstring): the
    day it was taken, else filed, in the taken time's offset; None without either."""
    return _study_date(_taken(record), _filed(record))


def study_time(record: Mapping[str, Any]) -> str | None:
    """The StudyTime (TM) the DICOM object of a photo's record carries: the time of day it was
    taken (else filed) in the taken time's offset, when that moment has a time and an offset;
    None otherwise (the object's StudyTime is then empty)."""
    taken = _taken(record)
    study = taken if taken is not None else _filed(record)
    if study is None or not study.has_time or study.offset is None:
        return None
    return _tm(_local(study, _offset(taken)))


def photo_study(record: Mapping[str, Any]) -> PhotoStudy:
    """The study a photo's record gives as the first photo of its study: its own StudyDate
    (:func:`study_date`), StudyTime (:func:`study_time`) and offset (its taken time's, else UTC)."""
    return PhotoStudy(study_date(record), study_time(record), _zone_offset(_offset(_taken(record))))


def photo_study_values(record: Mapping[str, Any]) -> tuple[str | None, str | None, str]:
    """:func:`photo_study` of the study's first photo's ``record`` as the store keeps it:
    (StudyDate, StudyTime, TimezoneOffsetFromUTC)."""
    study = photo_study(record)
    return study.date, study.time, study.offset


def _parse_zone_offset(value: str) -> timedelta:
    """A TimezoneOffsetFromUTC (``&ZZXX``) as written by :func:`_zone_offset`."""
    if len(value) != 5 or value[0] not in "+-" or not value[1:].isdigit():
        raise InvalidInput("the study's TimezoneOffsetFromUTC is not ±HHMM", expression="TimezoneOffsetFromUTC")
    minutes = int(value[1:3]) * 60 + int(value[3:5])
    return timedelta(minutes=-minutes if value[0] == "-" else minutes)


def _study_date(taken: _Moment | None, filed: _Moment | None) -> str | None:
    study = taken if taken is not None else filed
    return _da(_local(study, _offset(taken))) if study is not None else None


def _set_times(ds: Dataset, record: Mapping[str, Any], now: datetime, *, secondary_capture: bool,
               study: PhotoStudy) -> None:
    """The study's date and time (``study``), the photo's own as its content and acquisition
    time, the instance's creation; all in the study's offset."""
    taken = _taken(record)
    offset = _parse_zone_offset(study.offset)
    zone = timezone(offset)

    def local(m: _Moment) -> datetime:
        return _local(m, offset)

    ds.StudyDate = study.date or ""
    ds.StudyTime = study.time or ""
    if taken is not None:
        ds.ContentDate = _da(local(taken))
        if taken.has_time and taken.offset is not None:
            ds.ContentTime = _tm(local(taken))
            ds.AcquisitionDateTime = _da(local(taken)) + _tm(local(taken)) + _zone_offset(offset)
    created = now.astimezone(zone)
    ds.InstanceCreationDate = _da(created)
    ds.InstanceCreationTime = _tm(created)
    if secondary_capture:
        ds.DateOfSecondaryCapture = _da(created)
        ds.TimeOfSecondaryCapture = _tm(created)
    ds.TimezoneOffsetFromUTC = study.offset


# ---------------------------------------------------------------------------------------------
# anatomy


def _set_anatomy(ds: Dataset, record: Mapping[str, Any], tables: Tables, iod: KindIod) -> None:
    site = record.get("bodySite")
    code: str | None = None
    meaning: str | None = None
    side: str | None = None
    side_code: tuple[str, str] | None = None
    if isinstance(site, Mapping):
        for c in site.get("coding") or []:
            if isinstance(c, Mapping) and c.get("system") == SNOMED and isinstance(c.get("code"), str):
                code = c["code"]
                meaning = tables.body_sites.codes.get(code) or c.get("display") or code
                break
        for ext in site.get("extension") or []:
            if isinstance(ext, Mapping) and ext.get("url") == EXT_LATERALITY:
                lat = ext.get("valueCoding") or {}
                for entry in tables.body_sites.laterality.values():
                    if lat.get("code") == entry.code:
                        side, side_code = entry.dicom, (entry.code, entry.display)
    if code is not None:
        item = Dataset()
        item.CodeValue = code
        item.CodingSchemeDesignator = "SCT"
        item.CodeMeaning = _lo(meaning) or code
        if side_code is not None:
            modifier = Dataset()
            modifier.CodeValue = side_code[0]
            modifier.CodingSchemeDesignator = "SCT"
            modifier.CodeMeaning = side_code[1]
            item.AnatomicRegionModifierSequence = Sequence([modifier])
        ds.AnatomicRegionSequence = Sequence([item])
    # Series Laterality (C.7.3.1) is Type 2C: required if the body part is paired and no
    # ImageLaterality is sent, and then only; R or L, so a side (B too) goes in ImageLaterality.
    if side is not None:
        ds.ImageLaterality = side
    elif code is not None and not tables.body_sites.paired.get(code, True):
        # unpaired (mappings/body_sites.yaml; a code not there is not known to be): no Laterality,
        # which dciodvfy refuses on a site it knows unpaired; ImageLaterality U says so to the
        # readers that do not know the code (C.7.6.1)
        ds.ImageLaterality = "U"
    elif code is None and iod.without_body_site == "unpaired":
        ds.ImageLaterality = "U"  # a kind that images no body part with sides (mappings/dicom.yaml)
    else:
        # paired, or any body part, with its side unknown: Type 2, empty (dciodvfy warns that an
        # empty value is only for "actually unknown", which it is)
        ds.Laterality = ""


# ---------------------------------------------------------------------------------------------
# text


def _lo(value: Any) -> str:
    """A value for a LO element: one line, no backslash (the VM separator), ≤ 64 characters."""
    if not isinstance(value, str):
        return ""
    text = "".join(" " if ch in "\\\r\n\t" or ord(ch) < 0x20 else ch for ch in value).strip()
    return text[:_LO_MAX].rstrip()


def _walk_text(ds: Dataset) -> Iterator[str]:
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _walk_text(item)
        elif elem.VR in ("LO", "SH", "ST", "LT", "UT", "PN", "UC") and elem.value is not None:
            values = elem.value if elem.VM > 1 else [elem.value]
            yield from (str(v) for v in values)


def _has_non_ascii(ds: Dataset) -> bool:
    return any(not text.isascii() for text in _walk_text(ds))


__all__ = ["EXTERNAL_COLLEAGUE_COMMENT", "MAX_ROWS_COLUMNS", "PHOTO_OBJECT_VERSION", "STUDY_DATE_VERSION", "Equipment", "PhotoStudy",
           "check_rows_columns", "code_meanings", "encode_dataset", "encounter_key", "fixed_texts", "image_comments",
           "photo_study", "photo_study_values", "photo_to_dicom", "pixels_decoded",
           "quality_texts", "study_date", "study_time", "warned_received"]
