"""A received DICOM object → what the adapter knows about it (:class:`ReceivedObject`), the
image for its Binary (:func:`extract_image`) and its R4 resources (:func:`received_to_fhir`).

Mapping (standards.md §4.8): PatientID + IssuerOfPatientID → subject identifier through
mappings/dicom.yaml; SOP Instance, Study and Series UIDs → identifiers ``urn:dicom:uid`` /
``urn:oid:<uid>``; Modality → Media.modality (DCM); AnatomicRegionSequence (SCT) and
ImageLaterality → bodySite; acquisition time → createdDateTime; Manufacturer + model →
deviceName; Rows/Columns → height/width; the calling AE and InstitutionName → Provenance.

Decisions:

* **Kind** from the SOP class, or for Secondary Capture from its Modality, ConversionType and
  whether it names a body part, failing closed to ``clinical`` (mappings/dicom.yaml ``receive``;
  adapter.mapping.dicom_sc_kind). A SOP class not listed is refused (NotSupported); an SC object
  without Modality or ConversionType (Type 1) too (RequiredElementMissing, 0xA900).
* **Time.** createdDateTime = AcquisitionDateTime, else ContentDate+ContentTime, else
  AcquisitionDate+AcquisitionTime, else ContentDate alone. The zone is the DT value's own
  offset, else TimezoneOffsetFromUTC; without one the datetime stays naive, which the R4
  builders write with date precision (adapter.mapping.fhir_r4: a zone is never guessed).
* **Binary.** JPEG Baseline: the first frame's JPEG stream as received (no re-encoding); only
  APPn/COM metadata segments are cut out (lossless segment surgery, as for uploads: EXIF/XMP
  copied into a frame must not reach FHIR). At ingest every frame is also checked against the
  Image Pixel module and the coding process JPEG Baseline allows
  (adapter.mapping.dicom_image_pixel). Native (uncompressed) pixel data: a lossless PNG of
  frame 1. Encapsulated PDF: the PDF bytes (``application/pdf``). Other transfer syntaxes
  (JPEG 2000, JPEG-LS, RLE, lossless JPEG…) are refused (UnsupportedTransferSyntax): the SCP
  does not accept them for these SOP classes; STOW-RS parts may still come in them. Native
  pixel data a PNG cannot carry as it is (YBR, palette colour, signed, 16-bit RGB) is refused too
  (UnsupportedPixelData). A multi-frame object gives frame 1 as the Binary and a
  note saying so; keeping the whole object is the store's decision (as the record's original).
* **Provenance.** The record built by adapter.mapping.photo (enterer = the adapter), plus a
  transmitter agent ``AE <calling AE>`` on behalf of InstitutionName, an ``author`` agent per
  OperatorsName (display only, on behalf of InstitutionName), and a ``source`` entity naming the
  SOP Instance UID; the SHA-256 source entity identifies the object as received. The
  transmitter's type is DCM 110153 "Source Role ID" (text "Transmitter"), as IHE BALP types the
  sender of a transfer: provenance-participant-type#transmitter is not in the R4 4.0.1 code
  system and the R4 validators reject it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
)
from pydicom.valuerep import DA, DT, TM

from adapter.errors import (
    AdapterError,
    InvalidInput,
    InvalidResource,
    NotFound,
    NotSupported,
    RequiredElementMissing,
    UndecodableImage,
    UnsupportedPixelData,
    UnsupportedTransferSyntax,
)
from adapter.imaging import JPEG, PNG, Pixels, encode_png
from adapter.imaging.frame import EncapsulatedJpeg, encapsulated_jpeg
from adapter.imaging.rendition import GreyLevels
from adapter.mapping.codes import DCM, DICOM_UID_SYSTEM, EXT_LATERALITY, PROVENANCE_PARTICIPANT_TYPE, SNOMED
from adapter.mapping.dicom_dates import is_utc_offset
from adapter.mapping.dicom_image_pixel import ImagePixel, check_jpeg_frame
from adapter.mapping.dicom_json import frames as frames_of
from adapter.mapping.dicom_tables import DicomTables
from adapter.mapping.dicom_uids import is_valid_uid
from adapter.mapping.fhir_r4 import JSON, coding, concept, display_reference, extension
from adapter.mapping.photo import PhotoResources, build_photo_resources
from adapter.mapping.tables import Tables
from adapter.model.image import StoredImage
from adapter.model.photo import Identifier, Laterality, PatientRef, PhotoKind, PhotoMetadata
from adapter.text import has_control_character

PDF = "application/pdf"
_NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
_DICOM_LATERALITY = {"R": Laterality.RIGHT, "L": Laterality.LEFT, "B": Laterality.BILATERAL}
# The sending AE's agent type. provenance-participant-type#transmitter (standards.md §2.5) is not
# in the R4 4.0.1 code system (the validators reject it; adapter.mapping.provenance avoids it too);
# DICOM's "Source Role ID" is what IHE BALP uses for the sender of a transfer.
DCM_SOURCE_ROLE = ("110153", "Source Role ID")
_IDENTIFIER_TYPES = (("sop_instance_uid", "SOP Instance UID"), ("study_uid", "Study Instance UID"),
                     ("series_uid", "Series Instance UID"))


@dataclass(frozen=True)
class ReceivedObject:
    """What a received DICOM object tells the adapter (no pixel data)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    kind: PhotoKind
    patient: Identifier
    calling_ae: str
    modality: str | None
    body_site: str | None              # SNOMED CT code (AnatomicRegionSequence, scheme SCT)
    body_site_meaning: str | None
    laterality: Laterality | None
    created: datetime | None           # aware when the object gives a zone, else naive
    manufacturer: str | None
    model: str | None
    institution: str | None
    operators: tuple[str, ...]
    number_of_frames: int
    rows: int | None
    columns: int | None
    transfer_syntax: str | None
    photometric: str | None
    title: str | None                  # DocumentTitle of an encapsulated document

    @property
    def device_name(self) -> str | None:
        """Manufacturer and model, as Media.deviceName."""
        name = " ".join(p for p in (self.manufacturer, self.model) if p)
        return name or None


class ExtractedImage(NamedTuple):
    """The Binary's bytes and content type (a 2-tuple: ``data, content_type = ...``)."""

    data: bytes | memoryview
    content_type: str


# ---------------------------------------------------------------------------------------------
# read


def read_received(ds: Dataset, *, calling_ae: str, dicom_tables: DicomTables, tables: Tables) -> ReceivedObject:
    """Read a received dataset (module docstring).

    Raises:
        NotSupported: the SOP class is not accepted (mappings/dicom.yaml ``receive``).
        RequiredElementMissing: no SOP Instance, Study or Series UID, or no PatientID; a
            Secondary Capture object without Modality or ConversionType, which decide its kind.
        InvalidInput: a UID that breaks the UID grammar; a NumberOfFrames, Rows or Columns that
            is not a positive integer (frames are split by the first whenever the object is
            released; the others become Media.height and width, positiveInt in FHIR).
        UnknownCode: the IssuerOfPatientID is missing or unknown and the table refuses it.
        InvalidResource: the PatientID or IssuerOfPatientID has more than one value (0xA900, as
            one with none: :func:`_single`).
    """
    for keyword, tag in (("NumberOfFrames", "(0028,0008)"), ("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")):
        value = _element_value(ds.get(keyword))
        if value not in (None, "") and (_int(value) or 0) < 1:
            raise InvalidInput(f"{keyword} is not a positive integer", expression=f"{tag} {keyword}")
    sop_class = _text(ds.get("SOPClassUID"))
    if sop_class is None or sop_class not in dicom_tables.receive.sop_classes:
        raise NotSupported(f"SOP class {sop_class or '(none)'} is not accepted", expression="(0008,0016) SOPClassUID")
    uids = {name: _uid(ds, keyword, tag) for name, keyword, tag in (
        ("sop", "SOPInstanceUID", "(0008,0018)"), ("study", "StudyInstanceUID", "(0020,000D)"),
        ("series", "SeriesInstanceUID", "(0020,000E)"))}
    patient = dicom_tables.patient_identifiers.to_fhir(_single(ds, "PatientID", "(0010,0020)"),
                                                       _single(ds, "IssuerOfPatientID", "(0010,0021)"))
    modality = _code_string(ds.get("Modality"))
    kind = dicom_tables.receive.kind_of(sop_class, conversion_types=_texts(ds.get("ConversionType")),
                                        modalities=_texts(ds.get("Modality")), names_body_part=_names_body_part(ds))
    code, meaning, modifier = _anatomy(ds)
    sc = "SecondaryCaptureDeviceManufacturer" in ds or "SecondaryCaptureDeviceManufacturerModelName" in ds
    manufacturer = _shown(ds.get("SecondaryCaptureDeviceManufacturer" if sc else "Manufacturer"))
    model = _shown(ds.get("SecondaryCaptureDeviceManufacturerModelName" if sc else "ManufacturerModelName"))
    meta = getattr(ds, "file_meta", None)
    syntax = _text(meta.get("TransferSyntaxUID")) if meta is not None else None
    operators = tuple(_person(v) for v in _values(ds.get("OperatorsName")) if _shown(v) and _person(v))
    return ReceivedObject(
        sop_class_uid=sop_class, sop_instance_uid=uids["sop"], study_uid=uids["study"], series_uid=uids["series"],
        kind=kind, patient=patient, calling_ae=calling_ae.strip(), modality=modality,
        body_site=code, body_site_meaning=meaning, laterality=_laterality(ds, modifier),
        created=_created(ds), manufacturer=manufacturer, model=model,
        institution=_shown(ds.get("InstitutionName")), operators=operators,
        number_of_frames=_int(ds.get("NumberOfFrames")) or 1, rows=_int(ds.get("Rows")),
        columns=_int(ds.get("Columns")), transfer_syntax=syntax,
        photometric=_text(ds.get("PhotometricInterpretation")), title=_shown(ds.get("DocumentTitle")))


def _element_value(value: Any) -> Any:
    return value.value if hasattr(value, "value") and hasattr(value, "tag") else value


def _text(value: Any) -> str | None:
    value = _element_value(value)
    if value is None:
        return None
    text = str(value).strip().strip("\x00").strip()
    if "\x00" in text:  # NUL pads a value (PS3.5 6.2), it is never inside one; FHIR strings refuse it
        raise InvalidInput("a text value holds the character U+0000 inside it, which neither DICOM text nor FHIR "
                           "strings allow: nothing was stored")
    return text or None


def _single(ds: Dataset, keyword: str, tag: str) -> str | None:
    """:func:`_text` of an attribute of VM 1 that says whose the object is (PatientID and
    IssuerOfPatientID: LO, VM 1, PS3.6 Table 6-1). Two or more values (``X\\Y``, which pydicom
    reads as a MultiValue) cannot say which patient is meant: the object is refused as one
    without a PatientID is (Data Set does not match SOP Class, 0xA900, PS3.4 B.2.3), never
    filed under the text of the list. The diagnostics name the tag, not the values (they are
    the patient's identifier)."""
    value = _element_value(ds.get(keyword))
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if len(value) > 1:
            raise InvalidResource(f"{keyword} has {len(value)} values, where its VM is 1: the object cannot be "
                                  "matched to one patient", expression=f"{tag} {keyword}")
        value = value[0] if len(value) else None
    return _text(value)


def _shown(value: Any) -> str | None:
    """:func:`_text` of a value the FHIR record shows as text (a name, an institution, a device, a
    title, a code's meaning), None when it holds a control character: no value of those VRs
    does, nor a FHIR string (adapter.text.has_control_character). The object keeps it as received;
    the record goes without it, as without an absent one."""
    text = _text(value)
    return None if text is None or has_control_character(text) else text


#: The longest CS value (PS3.5 6.2, Table 6.2-1).
_CS_MAX = 16


def _code_string(value: Any) -> str | None:
    """:func:`_text` of a CS the index and the record keep (the Modality), None when it is not
    one of its VR: longer than 16 characters (the index's column holds 16: PostgreSQL refused a
    longer one as a storage failure, SQLite kept it) or with a control character. The object keeps
    it as received; the record and QIDO-RS go without it, as without an absent one. (The ingest
    refuses a longer one before: adapter.mapping.dicom_value_length; the bound stays for the
    column.)"""
    text = _shown(value)
    return text if text is not None and len(text) <= _CS_MAX else None


def _values(value: Any) -> list[Any]:
    value = _element_value(value)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]


def _texts(value: Any) -> list[str]:
    """The values of a multi-valued-capable text element (each :func:`_text`), without empty ones."""
    return [t for t in (_text(v) for v in _values(value)) if t]


def _names_body_part(ds: Dataset) -> bool:
    """Whether the object names a body part: an AnatomicRegionSequence or
    PrimaryAnatomicStructureSequence item (in any coding scheme), or a BodyPartExamined."""
    return bool(ds.get("AnatomicRegionSequence") or ds.get("PrimaryAnatomicStructureSequence")
                or _text(ds.get("BodyPartExamined")))


def _int(value: Any) -> int | None:
    value = _element_value(value)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _uid(ds: Dataset, keyword: str, tag: str) -> str:
    value = _text(ds.get(keyword))
    if value is None:
        raise RequiredElementMissing(f"the object has no {keyword}", expression=f"{tag} {keyword}")
    if not is_valid_uid(value):
        raise InvalidInput(f"{keyword} is not a valid UID", expression=f"{tag} {keyword}")
    return value


def _person(value: Any) -> str:
    """A DICOM PN (PS3.5 6.2: ``Family^Given^Middle^Prefix^Suffix``; the first, alphabetic
    component group) as display text: ``Prefix Given Middle Family Suffix``."""
    parts = (str(value).split("=", 1)[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    return " ".join(p for p in (prefix, given, middle, family, suffix) if p)


def _anatomy(ds: Dataset) -> tuple[str | None, str | None, str | None]:
    """(SNOMED code, CodeMeaning, laterality modifier code) of the first AnatomicRegionSequence
    item coded in SCT (legacy SNOMED-RT "SRT"/"SNM3" codes are ignored)."""
    for item in ds.get("AnatomicRegionSequence") or []:
        if _text(item.get("CodingSchemeDesignator")) == "SCT" and _text(item.get("CodeValue")):
            modifier = None
            for mod in item.get("AnatomicRegionModifierSequence") or []:
                if _text(mod.get("CodingSchemeDesignator")) == "SCT":
                    modifier = _text(mod.get("CodeValue"))
            return _text(item.get("CodeValue")), _shown(item.get("CodeMeaning")), modifier
    return None, None, None


def _laterality(ds: Dataset, modifier: str | None) -> Laterality | None:
    for keyword in ("ImageLaterality", "Laterality"):
        side = _text(ds.get(keyword))
        if side in _DICOM_LATERALITY:
            return _DICOM_LATERALITY[side]
    return {"24028007": Laterality.RIGHT, "7771000": Laterality.LEFT,
            "51440002": Laterality.BILATERAL}.get(modifier or "")


def _zone(ds: Dataset) -> timezone | None:
    offset = _text(ds.get("TimezoneOffsetFromUTC"))
    if offset is None or not is_utc_offset(offset):  # -1200 to +1400: FHIR's dateTime takes no other
        return None
    delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return timezone(-delta if offset[0] == "-" else delta)


def _created(ds: Dataset) -> datetime | None:
    """When the image was acquired (module docstring). A value that names no real moment
    (``20240231``, a TM ``2561``: adapter.mapping.dicom_dates) is passed over for the next
    attribute in that order, as an absent one is; the object keeps it as received."""
    zone = _zone(ds)

    def zoned(moment: datetime) -> datetime:
        return moment if moment.tzinfo is not None or zone is None else moment.replace(tzinfo=zone)

    def acquired() -> datetime | None:
        value = _text(ds.get("AcquisitionDateTime"))
        if not value or len(value) < 12:
            return None
        moment = datetime.fromisoformat(DT(value).isoformat())
        offset = moment.utcoffset()
        if offset is not None and not timedelta(hours=-12) <= offset <= timedelta(hours=14):
            raise ValueError("the DT's offset names no zone")  # PS3.5 6.2: -1200 to +1400
        return zoned(moment)

    def combined(date_kw: str, time_kw: str) -> datetime | None:
        day, time = _text(ds.get(date_kw)), _text(ds.get(time_kw))
        return zoned(datetime.combine(DA(day), TM(time))) if day and time else None

    def content_day() -> datetime | None:
        day = _text(ds.get("ContentDate"))
        d = DA(day) if day else None
        return datetime(d.year, d.month, d.day) if d else None  # date only: naive on purpose

    for candidate in (acquired, lambda: combined("ContentDate", "ContentTime"),
                      lambda: combined("AcquisitionDate", "AcquisitionTime"), content_day):
        try:
            moment = candidate()
        except (ValueError, TypeError, OverflowError):
            continue
        if moment is not None:
            return moment
    return None


# ---------------------------------------------------------------------------------------------
# image


def extract_image(ds: Dataset, pixel: ImagePixel | None = None) -> ExtractedImage:
    """The bytes for the Binary of a received object (module docstring). ``pixel``: the Image
    Pixel module the ingest read (adapter.mapping.dicom_image_pixel), which every JPEG frame is
    checked against; None when a stored object is released again (it was checked when it came).

    Raises:
        UnsupportedTransferSyntax: a transfer syntax without a lossless rendering here.
        UnsupportedPixelData: a native pixel layout without one.
        UndecodableImage: pixel data missing, truncated or not a JPEG stream; a PDF that is not
            one; a JPEG frame of a process its transfer syntax does not allow.
        InvalidResource: a JPEG frame the Image Pixel module does not describe.
    """
    if "EncapsulatedDocument" in ds:
        return _pdf(ds)
    if "PixelData" not in ds:
        raise UndecodableImage("the object has no pixel data", expression="(7FE0,0010) PixelData")
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    frames = _int(ds.get("NumberOfFrames")) or 1
    pixel_data = ds.PixelData
    if not isinstance(pixel_data, bytes) or not pixel_data:  # an empty (zero-length) element reads as None
        raise UndecodableImage("the object's pixel data is empty")
    if syntax == JPEGBaseline8Bit:
        every = generate_frames(pixel_data, number_of_frames=frames)
        try:
            first = bytes(next(every))
        except StopIteration as exc:
            raise UndecodableImage("the encapsulated pixel data holds no frame") from exc
        except ValueError as exc:  # pydicom: fewer fragments than NumberOfFrames, and no offset table
            raise _frames_not_held(frames, None) from exc
        plan = jpeg_binary(first)
        if pixel is not None:
            check_jpeg_frame(pixel, plan.header, frame=1, transfer_syntax=syntax)
        image = ExtractedImage(plan.join(), JPEG)
        n = walk_other_frames(every, pixel)
        if n != frames:
            raise _frames_not_held(frames, n)
        return image
    if syntax in _NATIVE:
        # received (``pixel``): held to its frames exactly; a stored one released again as it came
        return ExtractedImage(encode_png(_native_frame(ds, frames, exact=pixel is not None)), PNG)
    raise UnsupportedTransferSyntax(f"transfer syntax {syntax or '(none)'} has no lossless rendering here",
                       expression="(0002,0010) TransferSyntaxUID")


def extract_frame(ds: Dataset, number: int) -> ExtractedImage:
    """Frame ``number`` (from 1) of a released object as :func:`extract_image` gives its first
    (WADO-RS rendered frames, WADO-URI ``frameNumber``: PS3.18 8.3.5, 9.1.2.2): a JPEG Baseline
    frame as its JPEG stream with APPn/COM metadata cut out, a native one as a lossless PNG.

    Raises:
        NotFound: the object has no such frame (a document has none).
        the errors of :func:`extract_image`.
    """
    if "PixelData" not in ds:  # a document: rendered whole (extract_image), it has no frame 1 either
        raise NotFound("the instance has no frames")
    if number == 1:
        return extract_image(ds)
    count = _int(ds.get("NumberOfFrames")) or 1
    if number > count:
        raise NotFound(f"the instance has {count} frame(s), not frame {number}")
    meta = getattr(ds, "file_meta", None)
    syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    if syntax == JPEGBaseline8Bit:
        [frame] = frames_of(ds, [number])
        return ExtractedImage(jpeg_binary(frame).join(), JPEG)
    if syntax in _NATIVE:
        return ExtractedImage(encode_png(_native_frame(ds, count, number)), PNG)
    raise UnsupportedTransferSyntax(f"transfer syntax {syntax or '(none)'} has no lossless rendering here",
                       expression="(0002,0010) TransferSyntaxUID")


def grey_levels(ds: Dataset) -> GreyLevels | None:
    """What a greyscale object's rendered values are, for a ``window`` (PS3.18 8.3.5.1.4) in the
    units of its Modality LUT (PS3.3 C.11.1: Rescale Slope and Intercept, 1 and 0 when absent);
    None for a colour one (or a document), which has no window."""
    if "PixelData" not in ds or (_int(ds.get("SamplesPerPixel")) or 1) != 1:
        return None
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return None
    bits = _int(ds.get("BitsStored")) or _int(ds.get("BitsAllocated")) or 8
    return GreyLevels(bits_stored=min(max(bits, 1), 16), slope=_number(ds.get("RescaleSlope"), 1.0),
                      intercept=_number(ds.get("RescaleIntercept"), 0.0), monochrome1=photometric == "MONOCHROME1")


def _number(value: Any, default: float) -> float:
    value = _element_value(value)
    try:
        number = float(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


def walk_other_frames(frames: Iterable[bytes], pixel: ImagePixel | None = None) -> int:
    """Walk frames 2 onwards of encapsulated JPEG Baseline pixel data; returns how many frames
    there are in all (frame 1 included). They are not the Binary, but a release walks each of
    them (de-identification cuts their metadata segments): one that does not walk is refused
    now, not at every release; and each is checked against the Image Pixel module ``pixel``
    when given (adapter.mapping.dicom_image_pixel). One frame at a time: a long multi-frame
    object is not copied whole.

    Raises:
        UndecodableImage: naming the first frame that does not walk (or that ``frames`` could
            not give: a ValueError from pydicom's generate_frames), or of a process JPEG
            Baseline does not allow.
        InvalidResource: naming the attribute a frame contradicts.
    """
    n = 1
    each = iter(frames)
    while True:
        try:
            frame = next(each, None)
            if frame is None:
                return n
            n += 1  # names the frame that fails
            # the walk jpeg_for_encapsulation does, without joining the stream it would make
            header = encapsulated_jpeg(bytes(frame)).header
        except (AdapterError, ValueError) as exc:
            raise UndecodableImage(f"frame {n} is not a JPEG stream that can be read ({exc})") from exc
        if pixel is not None:
            check_jpeg_frame(pixel, header, frame=n, transfer_syntax=JPEGBaseline8Bit)


def _frames_not_held(stated: int, held: int | None) -> UndecodableImage:
    """The refusal of encapsulated pixel data that holds another number of frames than its
    NumberOfFrames states. PS3.5 A.4: each frame is in its own fragment(s), never two frames in
    one; the frames are told apart by the Basic (or Extended) Offset Table, or without one, by
    one fragment a frame when there are as many fragments as frames, else by where each JPEG
    stream ends (pydicom's generate_frames, as every release splits them). Kept, such an object
    would answer WADO-RS for a frame it claims and does not hold, and its releases would split
    its frames otherwise than it says."""
    held_text = "fewer frames" if held is None else f"{held} frame(s)"
    return UndecodableImage(f"the encapsulated pixel data holds {held_text}, not the {stated} its "
                            "NumberOfFrames states (PS3.5 A.4)", expression="(0028,0008) NumberOfFrames")


def jpeg_binary(frame: bytes) -> EncapsulatedJpeg:
    """The Binary of a JPEG Baseline object, from its first frame as received: the JPEG stream
    with APPn/COM metadata cut out (module docstring), in pieces. When nothing had to be cut
    (``prefix``), the Binary is the frame's first ``size`` bytes, i.e. a byte range of the
    received object: :func:`extract_image` gives the same bytes.

    Its ICC profile is kept as the frame has it (its text not rewritten, as a posted photo's is):
    care reads the received object with that very profile, the restricted copies drop it, and a
    frame whose only change would be the profile's text stays a byte range of the object, not a
    second file of ~3 MB written, hashed and fsynced at each C-STORE.

    Raises:
        UndecodableImage: the frame is not a JPEG stream (or a broken one).
    """
    return encapsulated_jpeg(frame, icc="as received")


def _native_frame(ds: Dataset, frames: int = 1, index: int = 1, *, exact: bool = False) -> Pixels:
    """Frame ``index`` (the first by default) of native pixel data, whose length must hold the
    ``frames`` frames its NumberOfFrames states (PS3.5 8.1.1: rows x columns x samples x bits
    allocated x frames); with ``exact`` (an object received), no more either, but the one byte
    that pads it to an even length (PS3.5 8.1.1): bytes past its frames are a frame no viewer
    shows, which care would be served as received (the PACS review, finding 4).

    16-bit colour is refused naming BitsAllocated (0028,0100): PNG holds 16-bit RGB, but the
    renderer (Pillow, adapter.imaging.render) has no 48-bit mode to write it from."""
    rows, cols = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    samples = _int(ds.get("SamplesPerPixel")) or 1
    bits = _int(ds.get("BitsAllocated")) or 0
    stored = _int(ds.get("BitsStored")) or bits
    photometric = _text(ds.get("PhotometricInterpretation")) or ""
    if (_int(ds.get("PixelRepresentation")) or 0) != 0:
        raise UnsupportedPixelData("signed pixel data has no lossless PNG rendering here", expression="(0028,0103)")
    if bits not in (8, 16) or not 0 < stored <= bits or rows <= 0 or cols <= 0:
        raise UnsupportedPixelData(f"{bits}-bit pixel data has no lossless PNG rendering here", expression="(0028,0100)")
    if samples == 3 and photometric == "RGB" and bits != 8:
        raise UnsupportedPixelData(f"{bits}-bit RGB pixel data has no lossless PNG rendering here",
                                   expression="(0028,0100) BitsAllocated")
    if not ((samples == 3 and photometric == "RGB")
            or (samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2"))):
        raise UnsupportedPixelData(f"{samples}-sample {photometric} pixel data has no lossless PNG rendering here",
                           expression="(0028,0004)")
    size = rows * cols * samples * (bits // 8)
    raw = bytes(ds.PixelData)
    if len(raw) < size:
        raise UndecodableImage("the pixel data is shorter than Rows x Columns x Samples",
                               expression="(7FE0,0010) PixelData")
    if len(raw) < size * frames:
        raise UndecodableImage(f"the pixel data holds fewer frames than the {frames} its NumberOfFrames states",
                               expression="(0028,0008) NumberOfFrames")
    if exact and len(raw) > size * frames + (size * frames) % 2:
        raise UndecodableImage(f"the pixel data is longer than the {frames} frame(s) of Rows x Columns x Samples "
                               "(PS3.5 8.1.1)", expression="(7FE0,0010) PixelData")
    frame = raw[(index - 1) * size:index * size]
    if samples == 3 and (_int(ds.get("PlanarConfiguration")) or 0) == 1:
        frame = _interleave(frame, rows * cols)
    return Pixels(rows=rows, columns=cols, samples=samples, photometric=photometric, bits=bits, data=frame,
                  bits_stored=stored)


def _interleave(planes: bytes, count: int) -> bytes:
    """Colour-by-plane (RRR…GGG…BBB…) to colour-by-pixel (RGBRGB…), PS3.3 C.7.6.3.1.3."""
    out = bytearray(len(planes))
    for i in range(3):
        out[i::3] = planes[i * count:(i + 1) * count]
    return bytes(out)


def _pdf(ds: Dataset) -> ExtractedImage:
    """The document of an Encapsulated PDF (PS3.3 C.24.2): EncapsulatedDocumentLength gives the
    real length when present; otherwise one trailing NUL pad byte is dropped."""
    mime = _text(ds.get("MIMETypeOfEncapsulatedDocument"))
    data = bytes(ds.EncapsulatedDocument)
    length = _int(ds.get("EncapsulatedDocumentLength"))
    if length is not None and 0 < length <= len(data):
        data = data[:length]
    elif data.endswith(b"\x00"):
        data = data[:-1]
    if mime != PDF or not data.startswith(b"%PDF-"):
        raise UndecodableImage("the encapsulated document is not a PDF", expression="(0042,0012)")
    return ExtractedImage(data, PDF)


# ---------------------------------------------------------------------------------------------
# FHIR


def received_to_fhir(received: ReceivedObject, image: ExtractedImage | tuple[bytes, str], *, record_id: str,
                     binary_id: str, provenance_id: str, received_sha256: str, tables: Tables,
                     dicom_tables: DicomTables, now: datetime, consent_pending: bool = False,
                     image_sha256: str | None = None, pending_notes: Sequence[str] = ()) -> PhotoResources:
    """R4 record (Media, or DocumentReference for documents), Binary and Provenance of a
    received object, built with adapter.mapping.photo's builders and completed with the DICOM
    identifiers, modality, body site and the sending AE (module docstring).

    ``received_sha256`` is the SHA-256 of the object as received (the Part 10 bytes);
    ``image_sha256`` that of the image's bytes when the caller has it already (else computed).
    No Consent is created: consent for a received object is the ingest service's decision;
    ``pending_notes``: the note a consent-pending record carries (adapter.consent.ingest
    PENDING_NOTES, as a posted photo's: safety review 4), with ``consent_pending``.
    """
    data, content_type = image
    kind_entry = tables.kinds[received.kind]
    in_table = received.body_site is not None and received.body_site in tables.body_sites.codes
    notes: list[str] = []
    if kind_entry.warning:
        notes.append(kind_entry.warning)
    if received.number_of_frames > 1:
        notes.append(f"Frame 1 of {received.number_of_frames} of the DICOM object "
                     f"{received.sop_instance_uid} is shown.")
    title = received.title if received.title else ("PDF document" if content_type == PDF else None)
    meta = PhotoMetadata(
        patient=PatientRef(system=received.patient.system, value=received.patient.value),
        kind=received.kind, source=dicom_tables.receive.source, taken_at=received.created,
        body_site=received.body_site if in_table else None,
        laterality=received.laterality if in_table else None, title=title)
    stored = StoredImage(
        content_type=content_type, width=received.columns or 0, height=received.rows or 0, size=len(data),
        sha256=image_sha256 or hashlib.sha256(data).hexdigest(), received_sha256=received_sha256,
        device_name=received.device_name)
    resources = build_photo_resources(
        meta, stored, record_id=record_id, binary_id=binary_id, provenance_id=provenance_id, consent_ids=(),
        assessment_notes=notes, assessment_warnings=pending_notes, consent_pending=consent_pending,
        implied_purposes=(),
        tables=tables, now=now)
    record = resources.record
    record["identifier"] = [*record.get("identifier", []), *dicom_identifiers(received)]
    if record["resourceType"] == "Media":
        _media_dicom(record, received, dicom_tables, in_table)
    _provenance_dicom(resources.provenance, received)
    return resources


def dicom_identifiers(received: ReceivedObject) -> list[JSON]:
    """The SOP Instance, Study and Series UIDs as identifiers (system ``urn:dicom:uid``,
    value ``urn:oid:<uid>``, standards.md §4.8), told apart by ``type.text``."""
    return [{"type": {"text": label}, "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{getattr(received, attr)}"}
            for attr, label in _IDENTIFIER_TYPES]


def _media_dicom(record: JSON, received: ReceivedObject, dicom_tables: DicomTables, in_table: bool) -> None:
    if received.modality:
        record["modality"] = concept(coding(DCM, received.modality, dicom_tables.modalities.get(received.modality)))
    if received.body_site and not in_table:
        # a SNOMED CT site outside mappings/body_sites.yaml: kept as DICOM coded it
        site: JSON = {}
        if received.laterality is not None:
            side = _laterality_coding(received.laterality)
            site["extension"] = [extension(EXT_LATERALITY, "Coding", side)]
        site["coding"] = [coding(SNOMED, received.body_site, received.body_site_meaning)]
        if received.body_site_meaning:
            site["text"] = received.body_site_meaning
        record["bodySite"] = site


def _laterality_coding(side: Laterality) -> JSON:
    codes = {Laterality.RIGHT: ("24028007", "Right"), Laterality.LEFT: ("7771000", "Left"),
             Laterality.BILATERAL: ("51440002", "Bilateral")}
    code, display = codes[side]
    return coding(SNOMED, code, display)


def _provenance_dicom(provenance: JSON, received: ReceivedObject) -> None:
    institution = display_reference(received.institution) if received.institution else None
    agents: list[JSON] = []
    for name in received.operators:
        agents.append(_agent(coding(PROVENANCE_PARTICIPANT_TYPE, "author", "Author"), display_reference(name),
                             institution))
    agents.append(_agent(coding(DCM, *DCM_SOURCE_ROLE), display_reference(f"AE {received.calling_ae}"),
                         institution, text="Transmitter"))
    provenance["agent"] = [*agents, *provenance.get("agent", [])]
    provenance["entity"] = [*provenance.get("entity", []), {
        "role": "source",
        "what": {"identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{received.sop_instance_uid}"},
                 "display": "DICOM SOP instance"},
    }]


def _agent(type_coding: JSON, who: JSON, on_behalf_of: JSON | None, *, text: str | None = None) -> JSON:
    agent: JSON = {"type": concept(type_coding, text=text), "who": who}
    if on_behalf_of is not None:
        agent["onBehalfOf"] = on_behalf_of
    return agent


__all__ = [
    "PDF", "ExtractedImage", "ReceivedObject", "dicom_identifiers", "extract_frame", "extract_image", "grey_levels",
    "jpeg_binary", "read_received",
    "received_to_fhir", "walk_other_frames",
]
