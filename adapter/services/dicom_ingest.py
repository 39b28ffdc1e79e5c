"""DICOM ingest: an object received by the C-STORE SCP becomes a durable FHIR record (Media, or
DocumentReference for documents and PDFs; Binary; Provenance) in one atomic unit, as a photo
does over HTTP (adapter.services.ingest).

Order of work (cheap refusals first, nothing visible until the single commit):
1. idempotency by SOP Instance UID: an object stored before is answered with its record, and
   nothing new is written, when its data set is the stored one, byte for byte or in another
   encoding (Success); any
   other content under it is refused (InstanceConflict: another patient, study, series or SOP
   class, or the same instance with other content), the stored instance kept
   (:meth:`DicomIngestService._check_resend`);
2. the file is checked to be complete (every element's length within the file, every undefined
   length closed by its delimiter) and encoded as PS3.5 says, as far as the element headers
   tell (every value length even, no command or file meta element in the dataset:
   :func:`_check_element`), which also tells where its pixel data sits;
3. the attributes are read with pydicom (pixel data not read, or deferred): every element must
   be readable (:func:`check_elements`: the object is stored to be released again, which reads
   them all), and the dataset's SOP Class and SOP Instance UIDs must be those of the C-STORE
   request and its presentation context;
4. mapping (adapter.mapping.dicom_fhir): patient through mappings/dicom.yaml, kind, identifiers;
   then where it is to be filed: an object whose Study Instance UID is held for another patient,
   or whose Series Instance UID is held in another study, is refused (InstanceConflict: one
   patient per study, one study per series, PS3.3 A.1.2), checked again in the transaction of
   step 8 (RecordStore.check_hierarchy);
5. the consent rules (adapter.consent.assess_ingest) for a source inside the organisation
   (a C-STORE's admitted AE, a trusted STOW-RS sender); a STOW-RS part from any other client is
   held to the rules of a photo posted without a consent statement (:data:`UNTRUSTED_STOW_SOURCE`);
6. the Binary's bytes: the JPEG frame as received (no re-encoding), a lossless PNG of native
   pixel data, or the PDF; every JPEG frame checked against the Image Pixel module
   (adapter.mapping.dicom_image_pixel: its Type 1 attributes present, Rows, Columns and Samples
   per Pixel those of the frame, the coding process one JPEG Baseline allows);
7. blobs fsynced to their content addresses (invisible until referenced): the object as received
   (Part 10) and, unless they are a byte range of it, the Binary's bytes;
8. one database transaction: resources, DICOM instance and its UIDs as the restricted views
   release them (adapter.services.released_uids), receipt, audit event; the study and series
   checked once more in it, after any other object of the study or series committed (two
   objects of two patients sent at once cannot both open one study).

Speed without shortcuts: the work that waits on the disk or hashes (SHA-256 of the object and of
the Binary, staging both in the staging folder and fsyncing them) runs in helper threads beside
steps 3-6, as soon as the object is known to be complete; steps 7 and 8 then only rename and
commit. A JPEG Baseline object whose pixel data is one fragment (the usual case) is handled
without pydicom touching its pixel data: the frame is read from its place in the file, walked
once (adapter.imaging.frame.encapsulated_jpeg) and, when nothing has to be cut from it, the
Binary is that byte range of the object as received (NewResource.blob_range): stored once,
not copied. A frame that does not walk is refused at step 6 as before, even though it is
looked at earlier. A JPEG Baseline object of several fragments whose frames the layout tells apart
as pydicom would (by the Basic Offset Table, or one fragment a frame when there are as many as
NumberOfFrames) and whose pixel data ends the file is handled the same way: frames counted from
the layout and walked one at a time from the file (the same refusals), the dataset read only up
to its pixel data; any other layout, and any count that does not match, goes the general way.

A failure at any step leaves nothing visible: staged files are removed, committed blobs are only
content-addressed bytes nobody references, removed once past a grace period by
``verify --remove-unreferenced`` (adapter.services.unreferenced). The received file itself
belongs to the SCP.

Every refusal, and every failure to keep the object, is audited (IHE ATNA, DICOM PS3.15 A.5.3.7:
the receiver records each transfer with its outcome), in its own transaction, once: a DICOM
Instances Transferred message with outcome 4 (refused: by the checks or, as a decision, by the
consent rules) or 8 (the adapter failed), the diagnostics as its reason (they name tags and
codes, never a patient's values), the sender as the Source, the SOP Instance UID the request
names, and the patient and study only once steps 3-4 have read them from a dataset that is the
requested instance (before that they are not known, and not guessed). The edges audit their own
refusals of a request that never reached the ingest through :meth:`DicomIngestService.record_refusal`.
A failure to write that audit is logged and changes nothing: the refusal is answered as such, and
the SCP goes on. A replay (step 1) is no refusal: it is audited as a transfer answered with the
record stored before (outcome 0), as a photo's retry is; one with other content is a refusal.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import logging
import math
import mmap
import os
import shutil
import struct
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar, overload

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from adapter.consent import IngestAssessment, assess_ingest
from adapter.consent.ingest import PENDING_PREFIX
from adapter.errors import (
    AdapterError,
    Conflict,
    InstanceConflict,
    InvalidInput,
    InvalidResource,
    NotSupported,
    StorageError,
    Transient,
    UndecodableImage,
    UnsupportedTransferSyntax,
)
from adapter.files import file_sha256, read_range
from adapter.imaging import JPEG
from adapter.imaging.frame import FrameHeader
from adapter.mapping.dicom_charset import undefined_character_sets
from adapter.mapping.dicom_dates import is_date, is_time
from adapter.mapping.dicom_fhir import (
    ExtractedImage,
    ReceivedObject,
    extract_image,
    jpeg_binary,
    read_received,
    received_to_fhir,
    walk_other_frames,
)
from adapter.mapping.dicom_image_pixel import ImagePixel, check_jpeg_frame, image_pixel
from adapter.mapping.dicom_qido import instance_attributes
from adapter.mapping.dicom_tables import DicomTables, accepted_transfer_syntaxes
from adapter.mapping.dicom_value_length import check_value_lengths
from adapter.mapping.dicom_vr import NonConformingVR, vr_allowed, vr_tolerated
from adapter.mapping.fhir_r4 import index_resource
from adapter.mapping.tables import Tables
from adapter.model.dicom import DicomInstance, InstanceAttributes
from adapter.model.photo import Colleague, DeviceOwnership, Identifier, PatientRef, PhotoMetadata, PhotoSource
from adapter.model.purpose import PurposeOfUse, RequestContext
from adapter.model.record import AccessFacts, IngestUnit, NewResource, SearchIndex
from adapter.services.association_audit import RejectedAssociations
from adapter.services.audit import Auditor, DicomAudit
from adapter.services.consent_grants import ConsentGrantsCache
from adapter.services.dicom_data_sets import same_data_set_decoded, transfer_syntax_of
from adapter.services.released_uids import ReleasedUidSpaces
from adapter.store.port import BlobStore, RecordStore
from adapter.text import has_control_character

log = logging.getLogger(__name__)

#: The issue's rule: a PACS inside the organisation (an allowed calling AE) is a colleague
#: inside the organisation, responsible for the consent of what it sends for care.
RECEIVED_SOURCE = PhotoSource.COLLEAGUE_INTERNAL
#: The source of an object a STOW-RS client sends that ADAPTER_STOW_TRUSTED_SENDERS does not name
#: (clinical safety review dicomsafety F2: any HTTP caller filed clinical photos as a colleague's,
#: without consent): a photo posted without a photo-source (POST /fhir) is a clinician's, so it
#: needs a Consent on file permitting care at ingest (or is consent pending, or refused) and the
#: patient's Consents decide every read of it; no colleague answers for its consent.
UNTRUSTED_STOW_SOURCE = PhotoSource.CLINICIAN

_T = TypeVar("_T")

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_DEFER = 64 * 1024  # values larger than this are read from the file only when accessed
#: Bytes compared at a time when a re-sent data set is compared with the stored one.
_COMPARE_CHUNK = 1 << 20
_REASON_LENGTH = 256  # of a refusal's AuditEvent.outcomeDesc: the diagnostics are shorter


#: The "calling AE" a STOW-RS sender is recorded as (Provenance): DICOMweb has no AE title, so
#: the audit names none (it names the HTTP client: :func:`stow_sender`).
STOW_SENDER = "DICOMWEB"


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
    #: The SOP Instance UID the answer names the object by, when it is not affected_sop_instance:
    #: a STOW-RS part's dataset's own (its store response's); the audit of a refusal names it.
    answered_sop_instance: str | None = None
    #: Who sent it over HTTP, for a STOW-RS part (:func:`stow_sender`): the audit names that
    #: client, its request id and its purpose; None for a C-STORE (the sending AE).
    sender: RequestContext | None = None
    #: A STOW-RS part's client is one ADAPTER_STOW_TRUSTED_SENDERS names: trusted as the SCP's
    #: allowed AEs are (:attr:`sender_responsible`). Fail closed: a part is not, unless its edge
    #: says so. Not read for a C-STORE, whose AE the SCP admitted by its calling AE title.
    trusted_sender: bool = False

    @property
    def sender_responsible(self) -> bool:
        """Whether the sender is the organisation's PACS or modality, a colleague inside it who
        answers for the consent of what it sends (adapter.consent.assess_ingest): a C-STORE's
        admitted AE, or a trusted STOW-RS client."""
        return self.sender is None or self.trusted_sender

    @property
    def source(self) -> PhotoSource:
        """The source its record is filed under: :data:`RECEIVED_SOURCE` from a sender
        responsible for consent, else :data:`UNTRUSTED_STOW_SOURCE`."""
        return RECEIVED_SOURCE if self.sender_responsible else UNTRUSTED_STOW_SOURCE


@dataclass(frozen=True)
class DicomIngestResult:
    receipt: dict[str, Any]
    replayed: bool

    @property
    def record(self) -> str:
        return str(self.receipt["record"])


class _Lazy(Sequence[_T]):
    """A sequence loaded on first use."""

    def __init__(self, load: Callable[[], list[_T]]) -> None:
        self._load = load
        self._items: list[_T] | None = None

    def _loaded(self) -> list[_T]:
        if self._items is None:
            self._items = self._load()
        return self._items

    @overload
    def __getitem__(self, index: int) -> _T: ...

    @overload
    def __getitem__(self, index: slice) -> list[_T]: ...

    def __getitem__(self, index: int | slice) -> _T | list[_T]:
        return self._loaded()[index]

    def __len__(self) -> int:
        return len(self._loaded())

    def __iter__(self) -> Iterator[_T]:
        return iter(self._loaded())


def _new_id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------------------------------
# Part 10 completeness (PS3.10 7.1, PS3.5 7.1 and 7.5): lengths and delimiters only, no values.

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_MAX_DEPTH = 32
#: Elements (items included, at every depth) one object may have. A Secondary Capture or VL
#: photograph has a few hundred; each is walked here and read by pydicom, in Python holding the
#: GIL: 400,000 empty ones in 4 MB took 21 s, and a 50 MB STOW-RS part would hold the server for
#: minutes.
MAX_ELEMENTS = 20_000
#: The VRs of PS3.5 6.2. Another two bytes where an explicit VR belongs is refused: pydicom reads
#: such an element as implicit VR (a 4-byte length) where this walk would read a 2-byte one, so the
#: two would disagree on where the element ends.
_VRS = _LONG_VRS | frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
                              b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})


class _Truncated(Exception):
    pass


class _Budget:
    """How many more elements the walk may meet (MAX_ELEMENTS)."""

    def __init__(self) -> None:
        self.left = MAX_ELEMENTS

    def take(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise InvalidInput(f"the dataset has more than {MAX_ELEMENTS} elements")


def _is_sequence(tag: int, vr: bytes | None, implicit: bool) -> bool:
    """Is a defined-length element a sequence pydicom will parse into items? SQ as sent, or the
    data dictionary's SQ for an implicit VR element or one sent as UN (pydicom reads those by
    the dictionary's VR)."""
    if vr == b"SQ":
        return True
    if vr is not None and vr != b"UN":
        return False
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


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
    if vr not in _VRS:
        raise InvalidInput(f"the element {_where(tag)} has no known VR", expression=_where(tag))
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


def _walk_items(buf: memoryview, pos: int, implicit: bool, depth: int, budget: _Budget, *, fragments: bool,
                items: list[tuple[int, int]] | None = None, end: int | None = None) -> int:
    """The items of a sequence: up to and including its delimiter (undefined length), or, for
    one of defined length, filling [``pos``, ``end``) exactly; returns the position after them.
    ``items`` collects (value offset, length) of each item of defined length."""
    while end is None or pos < end:
        tag, _vr, length, pos = _header(buf, pos, True)
        budget.take()
        if tag == _SEQUENCE_END and end is None:
            return pos
        if tag != _ITEM:
            raise InvalidInput(f"an item was expected at byte {pos - 8} of the dataset")
        if length == _UNDEFINED:
            if fragments:
                raise InvalidInput("an encapsulated pixel data fragment has no length")
            pos = _walk_dataset(buf, pos, implicit, depth + 1, budget, in_item=True)
        else:
            if items is not None:
                items.append((pos, length))
            item_end = _skip(buf, pos, length)
            if not fragments:
                _walk_dataset(buf, pos, implicit, depth + 1, budget, in_item=False, end=item_end)
            pos = item_end
    if pos != end:
        raise InvalidInput(f"a sequence's items overrun its length at byte {pos} of the dataset")
    return pos


@dataclass(frozen=True)
class PixelDataLayout:
    """Where the top-level Pixel Data (7FE0,0010) sits in a received file.

    Encapsulated: ``items`` holds (offset, length) of every item value, the Basic Offset Table
    first, then the fragments. Native: ``items`` is the one value."""

    encapsulated: bool
    items: tuple[tuple[int, int], ...]
    element: int  # offset of the element's tag: where the dataset before it ends

    @property
    def end(self) -> int | None:
        """Where encapsulated pixel data ends: after its last item and the sequence delimiter
        that follows it (:func:`_walk_items`). None for native pixel data or no item."""
        if not self.encapsulated or not self.items:
            return None
        offset, length = self.items[-1]
        return offset + length + 8

    def single_fragment(self, data: bytes | mmap.mmap | memoryview) -> tuple[int, int] | None:
        """(offset, length) of the only fragment when there is exactly one and the Basic Offset
        Table is empty or says the one frame starts at 0: then it is frame 1, whole."""
        if not self.encapsulated or len(self.items) != 2:
            return None
        (bot_at, bot_length), fragment = self.items
        if bot_length not in (0, 4) or (bot_length == 4 and bytes(data[bot_at:bot_at + 4]) != b"\0\0\0\0"):
            return None
        return fragment


def _walk_dataset(buf: memoryview, pos: int, implicit: bool, depth: int, budget: _Budget, *, in_item: bool,
                  pixels: list[PixelDataLayout] | None = None, end: int | None = None) -> int:
    """The elements from ``pos``: to the item delimiter (``in_item``), to ``end`` (an item of
    defined length, which they must fill exactly) or to the end of the data. Sequences are
    walked into, whatever their length, so their depth and element count are bounded too."""
    if depth > _MAX_DEPTH:
        raise InvalidInput("sequences are nested too deeply")
    limit = len(buf) if end is None else end
    while pos < limit:
        tag, vr, length, value = _header(buf, pos, implicit)
        budget.take()
        if tag == _ITEM_END and in_item:
            return value
        _check_element(tag, length)
        top_pixels = pixels is not None and tag == 0x7FE00010
        if length != _UNDEFINED:
            element, pos = pos, _skip(buf, value, length)
            if pos > limit:
                raise InvalidInput(f"an element overruns its item at byte {element} of the dataset")
            if top_pixels:
                pixels.append(PixelDataLayout(False, ((value, length),), element))  # type: ignore[union-attr]
            elif length and _is_sequence(tag, vr, implicit):
                _walk_items(buf, value, implicit or vr == b"UN", depth, budget, fragments=False, end=pos)
        elif tag == 0x7FE00010 and vr in (b"OB", b"OW"):
            items: list[tuple[int, int]] | None = [] if top_pixels else None
            element, pos = pos, _walk_items(buf, value, implicit, depth, budget, fragments=True, items=items)
            if items is not None:
                pixels.append(PixelDataLayout(True, tuple(items), element))  # type: ignore[union-attr]
        else:  # SQ, or UN / implicit VR of undefined length: a sequence (PS3.5 6.2.2, 7.5.1)
            pos = _walk_items(buf, value, implicit or vr == b"UN", depth, budget, fragments=False)
    if in_item:
        raise _Truncated(pos)
    if end is not None and pos != end:
        raise InvalidInput(f"an item's elements overrun its length at byte {pos} of the dataset")
    return pos


def _check_element(tag: int, length: int) -> None:
    """What the encoding alone says of an element of the dataset, read from its header as
    received (pydicom pads some values and strips others when it reads them, so only the header
    knows): its group is not 0000 (a command's, PS3.7 6.3) nor 0002 (the file meta's, which
    PS3.10 7.1 and PS3.5 7.1 allow in the File Meta Information only, whatever its value), and
    its value length is even (PS3.5 7.1.1: every value is padded to an even length) or
    undefined. Item values (pixel data fragments) are not elements: the walk of the items sees
    them."""
    group = tag >> 16
    if group in (0x0000, 0x0002):
        raise InvalidInput(f"the dataset holds a {'command' if group == 0 else 'file meta'} element {_where(tag)}: "
                           f"group {group:04X} belongs in the {'command set' if group == 0 else 'file meta'} only",
                           expression=_where(tag))
    if length & 1 and length != _UNDEFINED:
        raise InvalidInput(f"the element {_where(tag)} has a value of odd length {length}: every value length "
                           "is even (PS3.5 7.1.1)", expression=_where(tag))


_GROUP_LENGTH = 0x00020000


def check_pixel_data_encoding(pixels: PixelDataLayout | None, transfer_syntax: str) -> None:
    """Pixel data is encapsulated (fragments in items, undefined length) exactly when the
    transfer syntax the object came in is an encapsulated one (PS3.5 A.4 and 8.2: a native
    transfer syntax carries the pixel values themselves, an encapsulated one their compressed
    frames). Checked from the layout alone, before anything reads the pixels: a JPEG frame under
    Explicit VR Little Endian was refused as native pixel data without a lossless PNG rendering,
    which sent its sender looking at the Image Pixel module, not at its transfer syntax. A
    transfer syntax pydicom does not know, and an empty Pixel Data element, are left to the
    image extraction, which refuses them as such.

    Raises:
        UndecodableImage: naming the Pixel Data (7FE0,0010) and what is wrong with it (0xC000).
    """
    syntax = UID(transfer_syntax)
    if pixels is None or not syntax.is_transfer_syntax or pixels.encapsulated == syntax.is_encapsulated:
        return
    if pixels.encapsulated:
        raise UndecodableImage(f"pixel data is encapsulated, but the transfer syntax is native: {syntax} carries "
                               "pixel values uncompressed, not compressed fragments (PS3.5 A.4)",
                               expression="(7FE0,0010) PixelData")
    if not pixels.items[0][1]:
        return
    raise UndecodableImage(f"pixel data is native, but the transfer syntax is encapsulated: {syntax} carries "
                           "compressed frames in fragments of undefined length (PS3.5 A.4)",
                           expression="(7FE0,0010) PixelData")


def _body_offset(buf: memoryview) -> int:
    """Where the dataset starts: after the preamble, ``DICM`` and the File Meta Information.

    The file meta ends where its group length (0002,0000) says (PS3.10 7.1: Type 1, the length
    of the elements after it), when that is where one of its elements ends: a group 0002 element
    after that point is the dataset's, refused by :func:`_check_element` (pydicom would read it
    into the file meta, overriding or repeating the real one, and WADO-RS would serve it back
    inside the dataset). A group length that ends no element (absent, or wrong: pydicom and dcmtk
    read on, so does this) leaves the elements of group 0002 in ascending order of tag to the
    file meta (PS3.5 7.1), and one that repeats or goes back is the dataset's."""
    if len(buf) < 132 or bytes(buf[128:132]) != b"DICM":
        raise InvalidInput("the received file is not DICOM Part 10")
    pos = 132
    declared_end: int | None = None
    previous = -1
    while pos + 8 <= len(buf) and struct.unpack_from("<H", buf, pos)[0] == 0x0002 and pos != declared_end:
        tag, vr, length, value = _header(buf, pos, False)
        if length & 1 or length == _UNDEFINED:
            raise InvalidInput(f"the file meta element {_where(tag)} has a value of odd or undefined length "
                               "(PS3.5 7.1.1, PS3.10 7.1)", expression=_where(tag))
        if tag <= previous:
            _check_element(tag, length)  # refuses it: a group 0002 element of the dataset
        end = _skip(buf, value, length)
        if tag == _GROUP_LENGTH and pos == 132 and vr == b"UL" and length == 4:
            declared_end = end + struct.unpack_from("<I", buf, value)[0]
        previous, pos = tag, end
    return pos


@dataclass(frozen=True)
class FileLayout:
    """What :func:`check_complete` learnt about a received file besides its completeness."""

    size: int
    pixel_data: PixelDataLayout | None
    first_fragment: tuple[int, int] | None  # PixelDataLayout.single_fragment
    head: bytes | None  # the file up to its top-level pixel data element, when it has one


def check_complete(path: Path, transfer_syntax: str) -> FileLayout:
    """Check that the Part 10 file at ``path`` is structurally complete: every element's length
    within the file, every undefined length closed by its delimiter; and what the element
    headers tell of its encoding (:func:`_check_element`, :func:`_body_offset`). Returns where
    its pixel data sits.

    pydicom reads a truncated file without complaint (a cut value comes back short, a missing
    delimiter is a warning), so completeness is checked here from the encoding alone.

    Raises:
        InvalidInput: the file is truncated or malformed (the SCP answers Cannot Understand).
    """
    pixels: list[PixelDataLayout] = []
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0:
                raise InvalidInput("the received dataset is empty")
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                buf = memoryview(mapped)
                try:
                    _walk_dataset(buf, _body_offset(buf), transfer_syntax == IMPLICIT_VR_LITTLE_ENDIAN, 0,
                                  _Budget(), in_item=False, pixels=pixels)
                    layout = pixels[0] if pixels else None
                    first = layout.single_fragment(mapped) if layout is not None else None
                    head = bytes(buf[:layout.element]) if layout is not None else None
                finally:
                    buf.release()
    except _Truncated as exc:
        raise InvalidInput(f"the dataset is truncated (an element at byte {exc.args[0]} runs past its end)") \
            from None
    except (OSError, ValueError) as exc:
        raise StorageError("the received dataset could not be read") from exc
    return FileLayout(size, layout, first, head)


# ---------------------------------------------------------------------------------------------
# Helper work beside the ingesting thread: hashing (hashlib releases the GIL on large buffers),
# copying and fsync wait on the CPU's other core or on the disk, not on the parsing and mapping.

_WRITE_CHUNK = 1 << 20  # one write() of several MB is several times slower than 1 MiB ones here
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _helpers() -> ThreadPoolExecutor:
    """The process's helper threads for ingest work (shared by all associations; bounded)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dicom-ingest")
        return _pool


def _file_sha256(path: Path) -> str:
    try:
        return file_sha256(path)
    except (OSError, ValueError) as exc:
        raise StorageError("the received dataset could not be read") from exc


def _parts_sha256(parts: tuple[bytes | memoryview, ...]) -> str | None:  # the type of _fragment_sha256
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _write_all(fd: int, parts: tuple[bytes | memoryview, ...]) -> None:
    for part in parts:
        view = memoryview(part)
        for start in range(0, len(view), _WRITE_CHUNK):
            chunk = view[start:start + _WRITE_CHUNK]
            while chunk:
                chunk = chunk[os.write(fd, chunk):]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_or_copy(source: Path, staged: Path) -> None:
    """``source`` under the staging path ``staged``, fsynced: a hard link when on the same file
    system (no copy), else a copy."""
    try:
        try:
            os.link(source, staged)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copyfile(source, staged)
        _fsync(staged)
    except OSError as exc:
        raise StorageError("could not stage the received object") from exc


def _stage_parts(staged: Path, parts: tuple[bytes | memoryview, ...]) -> None:
    try:
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, parts)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError("could not stage the image bytes") from exc


class _Work:
    """The staged files and helper tasks of one ingest. :meth:`close` waits for every task and
    removes every staged file not committed, so a refusal or failure leaves nothing behind."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._tasks: list[Future[Any]] = []
        self._staged: list[Path] = []
        self._promises: list[Future[Any]] = []

    def promise(self) -> Future[Any]:
        """A value this (ingesting) thread will give helpers later; helpers wait only for these,
        never for each other, and :meth:`close` gives None for any not given."""
        promise: Future[Any] = Future()
        self._promises.append(promise)
        return promise

    def submit(self, fn: Callable[..., _T], *args: Any) -> Future[_T]:
        task = _helpers().submit(fn, *args)
        self._tasks.append(task)
        return task

    def staging_path(self) -> Path:
        path = self._blobs.new_staging_path()
        self._staged.append(path)
        return path

    def commit(self, staged: Path, ready: Future[None], sha256: str) -> Future[None]:
        """Commit a staged file (in a helper thread) once its task, writing and fsync, is done."""
        ready.result()  # not waited for in the helper: a helper never waits for another task

        def commit() -> None:
            self._blobs.commit(staged, sha256)
            self._staged.remove(staged)

        return self.submit(commit)

    def close(self) -> None:
        for promise in self._promises:
            if not promise.done():
                promise.set_result(None)
        for task in self._tasks:
            wait_for = task.exception  # waits; its error (if any) was raised where it mattered
            wait_for()
        for staged in self._staged:
            try:
                self._blobs.discard(staged)
            except (AdapterError, OSError):
                log.warning("could not remove the staged file %s", staged.name)
        self._staged.clear()


@dataclass(frozen=True)
class _Binary:
    """The Binary's bytes (``image``) and their digest; where they are being staged or, for a
    frame kept in place, their ``offset`` in the received object (then nothing is staged);
    the frame header of the JPEG frame they are, when walked before the dataset was read (to be
    checked against it: adapter.mapping.dicom_image_pixel)."""

    image: ExtractedImage
    sha256: Future[str | None]  # None only for a fragment that turned out to need a cut
    staged: Path | None = None
    ready: Future[None] | None = None
    offset: int | None = None
    frame: FrameHeader | None = None


def _binary_of_bytes(work: _Work, image: ExtractedImage, frame: FrameHeader | None = None) -> _Binary:
    staged = work.staging_path()
    parts = (image.data,)
    return _Binary(image, work.submit(_parts_sha256, parts), staged, work.submit(_stage_parts, staged, parts),
                   frame=frame)


def _fragment_sha256(frame: bytes, ahead: int, size: Future[int | None]) -> str | None:
    """SHA-256 of ``frame[:size]``, hashing its first ``ahead`` bytes before ``size`` is known."""
    digest = hashlib.sha256(memoryview(frame)[:ahead])
    cut = size.result()
    if cut is None:
        return None
    if cut < ahead:
        return hashlib.sha256(memoryview(frame)[:cut]).hexdigest()
    digest.update(memoryview(frame)[ahead:cut])
    return digest.hexdigest()


#: The Binary of a frame that needs no cut is the frame up to its EOI: the whole fragment, or
#: the fragment without its pad byte; its digest starts before the walk says which.
_FRAGMENT_TAIL = 2


def _binary_of_first_fragment(work: _Work, path: Path, fragment: tuple[int, int]) -> _Binary:
    """The Binary of a JPEG Baseline object whose pixel data is one fragment (frame 1), read
    from the file and walked once. When it needs no cut (the usual case) the Binary is the
    fragment up to EOI: a byte range of the received object, which is stored anyway, so it is
    not written a second time; its digest is computed by a helper that starts before the walk
    and is told the frame's end afterwards. Else the cut stream is written as any other Binary."""
    offset, length = fragment
    size: Future[int | None] = work.promise()
    try:
        frame = read_range(path, offset, length)
    except (OSError, EOFError) as exc:
        raise StorageError("the received dataset could not be read") from exc
    sha256 = work.submit(_fragment_sha256, frame, max(0, length - _FRAGMENT_TAIL), size)
    try:
        plan = jpeg_binary(frame)
    except BaseException:
        size.set_result(None)
        raise
    if not plan.prefix:
        size.set_result(None)
        return _binary_of_bytes(work, ExtractedImage(plan.join(), JPEG), plan.header)
    size.set_result(plan.size)
    return _Binary(ExtractedImage(memoryview(frame)[:plan.size], JPEG), sha256, offset=offset, frame=plan.header)


def _frame_fragments(pixels: PixelDataLayout, path: Path, stated: int) -> list[list[tuple[int, int]]] | None:
    """The (offset, length) of the fragments of each frame, split as pydicom's generate_frames
    splits them for :func:`adapter.mapping.dicom_fhir.extract_image` (which counts the frames
    it yields against NumberOfFrames, ``stated``), when the layout alone tells: by the Basic
    Offset Table; without one, one frame when there is one fragment or NumberOfFrames is 1, one
    frame a fragment when there are as many as NumberOfFrames. None when generate_frames would
    look into the fragments (more fragments than frames, no table: split where a JPEG EOI ends
    one), refuse them, or give an empty frame: the general way then counts and refuses as ever.
    The Extended Offset Table is not read: extract_image does not give it to generate_frames
    either, so counting by it could disagree."""
    (table_at, table_length), *fragments = pixels.items
    if not fragments or table_length % 4:
        return None
    if not table_length:
        if len(fragments) == 1 or stated == 1:
            return [fragments]
        return [[fragment] for fragment in fragments] if len(fragments) == stated else None
    try:
        table = read_range(path, table_at, table_length)
    except (OSError, EOFError) as exc:
        raise StorageError("the received dataset could not be read") from exc
    offsets = struct.unpack(f"<{table_length // 4}L", table)
    # pydicom.encaps.generate_fragmented_frames: a fragment starting before the next frame's
    # offset (measured from the first fragment's item tag) belongs to the current frame
    frames: list[list[tuple[int, int]]] = []
    frame: list[tuple[int, int]] = []
    index, position, final = 0, 0, len(offsets) - 1
    for fragment in fragments:
        if index != final and position >= offsets[index + 1]:
            frames.append(frame)
            index += 1
            frame = []
        frame.append(fragment)
        position += fragment[1] + 8
    frames.append(frame)
    return frames if all(frames) else None


def _binary_of_frames(work: _Work, path: Path, frames: list[list[tuple[int, int]]], pixel: ImagePixel) -> _Binary:
    """The Binary of a JPEG Baseline object whose frames are ``frames`` (:func:`_frame_fragments`),
    as extract_image makes it without pydicom reading the pixel data: frame 1 (in place when it
    is one fragment: :func:`_binary_of_first_fragment`), then every other frame read from the
    file, one at a time, and walked (:func:`adapter.mapping.dicom_fhir.walk_other_frames`, the
    same refusal); each checked against the Image Pixel module ``pixel``, as extract_image
    checks them."""
    first, *others = frames
    if len(first) == 1:
        binary = _binary_of_first_fragment(work, path, first[0])
    else:
        plan = jpeg_binary(_read_frame(path, first))
        binary = _binary_of_bytes(work, ExtractedImage(plan.join(), JPEG), plan.header)
    assert binary.frame is not None
    check_jpeg_frame(pixel, binary.frame, frame=1, transfer_syntax=JPEGBaseline8Bit)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            walk_other_frames((b"".join(mapped[offset:offset + length] for offset, length in frame)
                               for frame in others), pixel)
    except (OSError, ValueError) as exc:  # the file, not its content (walk_other_frames wraps those)
        raise StorageError("the received dataset could not be read") from exc
    return binary


def _read_frame(path: Path, fragments: list[tuple[int, int]]) -> bytes:
    try:
        return b"".join(read_range(path, offset, length) for offset, length in fragments)
    except (OSError, EOFError) as exc:
        raise StorageError("the received dataset could not be read") from exc


#: What pydicom raises on a malformed value when it is first used (it parses lazily); anything
#: else escaping the mapping is a bug and answered as one. BytesLengthException (not a
#: ValueError) is a binary value whose length is not a multiple of its VR's size (an odd-length
#: UL, say), found by fuzzing the ingest. RecursionError: sequences nested hundreds deep (pydicom
#: reads each level with a few more frames); the completeness walk bounds the nesting of
#: undefined-length sequences only, since a defined-length one is skipped whole. zlib.error: a file
#: meta naming the Deflated transfer syntax over a dataset that is not deflated (found by fuzzing).
_MALFORMED = (InvalidDicomError, BytesLengthException, ValueError, TypeError, KeyError, IndexError, EOFError,
              OverflowError, NotImplementedError, struct.error, RecursionError, zlib.error)


def check_transfer_syntax(sop_class: str, transfer_syntax: str) -> None:
    """The object's transfer syntax is one the SCP accepts for its SOP class
    (adapter.mapping.dicom_tables.accepted_transfer_syntaxes), checked before a byte of the data
    set is read. Over DIMSE the presentation context has settled it already; a STOW-RS part
    names its own in its File Meta, so it is checked there first and here again, whatever edge
    hands the object over: Deflated Explicit VR Little Endian, for one, would be inflated whole
    by pydicom, with no bound, as soon as the data set is read (a decompression bomb).

    Raises:
        UnsupportedTransferSyntax: another (FailureReason / status 0xC122).
    """
    if transfer_syntax not in accepted_transfer_syntaxes(sop_class):
        raise UnsupportedTransferSyntax(
            f"transfer syntax {transfer_syntax[:64] or '(none)'} is not accepted for SOP class {sop_class[:64]}",
            expression="(0002,0010) TransferSyntaxUID")


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


#: Pixel data elements: read (or deliberately not read) by the image extraction, never here.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


def check_elements(ds: Dataset, transfer_syntax: str) -> None:
    """Every element of ``ds`` and of its file meta, items of sequences included and pixel
    data aside, has a value pydicom can read; the dataset holds no command (0000,eeee) or file
    meta (0002,eeee) element; the file meta names the transfer syntax the object came in and
    keeps its elements under their own VRs; the values the adapter keeps as text are within
    their VR's length (adapter.mapping.dicom_value_length).

    The ingest reads only the attributes it maps, but an object is stored to be released
    again: re-encoded, de-identified or pseudonymised (WADO-RS, TRAIN and HRESCH), which reads
    every element. One it could not read whole could not be cleaned of what it may hold, so it
    is refused now, as malformed input, rather than failing each reader later.

    Raises:
        InvalidInput: naming the element (its tag only, never its value).
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        _check_dataset(meta, file_meta=True)
        named = str(meta.get("TransferSyntaxUID") or "").strip("\x00 ")
        if named != transfer_syntax:
            raise InvalidInput("the file meta names another transfer syntax than the one the object came in",
                               expression="(0002,0010) TransferSyntaxUID")
    _check_dataset(ds, file_meta=False)
    check_value_lengths(ds)


def _check_dataset(ds: Dataset, *, file_meta: bool) -> None:
    for tag in list(ds.keys()):
        if not file_meta and tag.group in (0x0000, 0x0002):
            raise InvalidInput(f"the dataset holds a {'command' if tag.group == 0 else 'file meta'} "
                               f"element {_where(tag)}", expression=_where(tag))
        if tag in _PIXEL_TAGS:
            continue
        try:
            element = ds[tag]
            items = element.value if element.VR == "SQ" else ()
        except (*_MALFORMED, OSError, AttributeError) as exc:
            if isinstance(exc, OSError) and exc.errno is not None:  # the file, not its content
                raise StorageError("the received dataset could not be read") from exc
            # pydicom raises a bare OSError ("No tag to read at file position ...") for a sequence
            # whose items do not parse, and AttributeError ("Failed to resolve ambiguous VR") for
            # an implicit VR "US or SS" element without the PixelRepresentation that decides it
            # (found by fuzzing): here, reading one element, either is the content's fault
            raise InvalidInput(f"the element {_where(tag)} cannot be read ({type(exc).__name__})",
                               expression=_where(tag)) from exc
        # Under a VR its tag does not allow, an element could not be rewritten (the file meta, on
        # every release) nor cleaned (the releases go by VR: adapter.mapping.dicom_vr), unless
        # the two VRs are ones no rule tells apart (a CS sent as LO, say).
        if not (vr_allowed(tag, element.VR) if file_meta else vr_tolerated(tag, element.VR)):
            error = NonConformingVR(tag, element.VR)
            raise InvalidInput(f"the {'file meta ' if file_meta else ''}element {error}",
                               expression=_where(tag)) from error
        if element.VR in _NUMBER_VRS and not _are_finite_numbers(element.value):
            raise InvalidInput(f"the element {_where(tag)} ({element.VR}) holds a value that is not a finite number",
                               expression=_where(tag))
        for item in items or ():
            _check_dataset(item, file_meta=False)


#: Decimal and integer strings: released as JSON numbers (DICOM JSON, PS3.18 F.2.3.1), which a
#: value pydicom kept as text ("1,5") or read as NaN or infinity cannot be.
_NUMBER_VRS = frozenset({"DS", "IS"})


def _are_finite_numbers(value: Any) -> bool:
    """No value, or numbers every one: an empty value among several (``1\\``) has no JSON number
    either (pydicom's DICOM JSON fails on it)."""
    if value is None or value == "":
        return True
    values = value if isinstance(value, MultiValue | list | tuple) else (value,)
    return all(isinstance(v, int | float | Decimal) and math.isfinite(v) for v in values)


def _where(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass
class _Known:
    """What one ingest has read of its object so far: the object (patient, study) once steps 3-4
    read it from a dataset that is the requested instance."""

    obj: ReceivedObject | None = None


@dataclass(frozen=True)
class _Head:
    """Steps 3-5 (module docstring): what needs only the dataset before its pixel data."""

    ds: Dataset
    obj: ReceivedObject
    assessment: IngestAssessment
    now: datetime


def read_header(head: bytes) -> Dataset:
    """The dataset of a Part 10 file from ``head``, the file's bytes up to its pixel data
    element (:attr:`FileLayout.head`): parsed in memory, pixel data not read at all.

    Raises:
        InvalidInput: pydicom cannot parse it.
    """
    try:
        ds = dcmread(io.BytesIO(head), stop_before_pixels=True)
        ds.get("SOPInstanceUID")  # the first access parses the elements
    except _MALFORMED as exc:
        raise InvalidInput(f"the dataset does not parse ({type(exc).__name__})") from exc
    return ds


# ---------------------------------------------------------------------------------------------


class DicomIngestService:
    """Turns received DICOM objects into FHIR records (module docstring). Thread-safe: every
    association of the SCP calls :meth:`ingest_received` from its own thread."""

    def __init__(self, *, store: RecordStore, blobs: BlobStore, tables: Tables, dicom_tables: DicomTables,
                 auditor: Auditor, now: Callable[[], datetime], released_uids: ReleasedUidSpaces,
                 grants: ConsentGrantsCache | None = None) -> None:
        self._store = store
        # the grants of the patient's Consents the rules read, parsed once per Consent version
        # (shared with the photo ingest: adapter.services.registry)
        self._grants = grants if grants is not None else ConsentGrantsCache(store)
        self._released_uids = released_uids
        self._blobs = blobs
        self._tables = tables
        self._dicom_tables = dicom_tables
        # Records say the source the consent rules used (the photo-source extension).
        self._record_tables = {source: dataclasses.replace(
            dicom_tables, receive=dicom_tables.receive.model_copy(update={"source": source}))
            for source in (RECEIVED_SOURCE, UNTRUSTED_STOW_SOURCE)}
        self._auditor = auditor
        self._now = now
        #: The audit of the associations the SCP rejects (one per process, whichever SCP rejects).
        self.rejected_associations = RejectedAssociations(auditor, now)

    @property
    def spool_dir(self) -> Path:
        """Where the SCP spools received data sets: the blobs' staging folder, so the object
        as received is hard-linked into its blob (not copied), and one left by a crash is swept
        with the other staged files (never left in the system's temporary folder)."""
        return self._blobs.staging_dir

    @property
    def dicom_tables(self) -> DicomTables:
        return self._dicom_tables

    @property
    def accepted_sop_classes(self) -> tuple[str, ...]:
        """The storage SOP classes the SCP negotiates (mappings/dicom.yaml ``receive``)."""
        return tuple(self._dicom_tables.receive.sop_classes)

    def _replay(self, instance: DicomInstance, received: ReceivedStore) -> DicomIngestResult:
        """The answer to an object stored before, sent again as it is (its data set the stored
        one's): its record, nothing stored again. Audited, as a photo's retry is
        (adapter.services.ingest): a transfer from the sender, naming the record it is answered
        with, so a sender probing which instances exist is seen in the trail; outcome 0."""
        sop_instance_uid = instance.sop_instance_uid
        receipt = self._store.find_receipt(patient=instance.patient, stored_sha256=instance.blob_sha256) \
            if instance.blob_sha256 else None
        self._store.append_audit(self._auditor.event(
            _sender_context(received.calling_ae, received.peer_address, received.sender), interaction="create",
            action="C", permitted=True,
            reason="already stored: answered with its record, nothing stored again",
            entities=[f"{instance.record_type}/{instance.record_id}"], patient=instance.patient,
            dicom=DicomAudit.transferred(instance.study_instance_uid, instances=(sop_instance_uid,))))
        return DicomIngestResult(
            receipt=receipt or {"record": f"{instance.record_type}/{instance.record_id}",
                                "sopInstanceUid": sop_instance_uid},
            replayed=True)

    def ingest_received(self, received: ReceivedStore) -> DicomIngestResult:
        """Ingest one received object (module docstring); the object at ``received.path`` is
        left in place. Raises an AdapterError for every refusal; then nothing was stored, and the
        refusal was audited (as is any other exception, a bug, before it propagates)."""
        known = _Known()
        try:
            return self._ingest(received, known)
        except Exception as exc:
            obj = known.obj
            self._record_refusal(received.calling_ae, received.peer_address,
                                 received.answered_sop_instance or received.affected_sop_instance, exc,
                                 patient=obj.patient if obj is not None else None,
                                 study=obj.study_uid if obj is not None else None, sender=received.sender)
            raise

    def record_refusal(self, *, calling_ae: str, peer_address: str, sop_instance_uid: str | None,
                       error: AdapterError, sender: RequestContext | None = None) -> None:
        """Audit the refusal of an object an edge refused before it reached
        :meth:`ingest_received` (a C-STORE request without a data set or over the size limit, a
        STOW-RS part that is not DICOM Part 10 or not of a SOP class served, a STOW-RS request
        refused whole): nothing of it was read, so the message names no patient and no study.
        ``sender``: the STOW-RS request's (:func:`stow_sender`). Never raises."""
        self._record_refusal(calling_ae, peer_address, sop_instance_uid, error, patient=None, study=None,
                             sender=sender)

    def _record_refusal(self, calling_ae: str, peer_address: str, sop_instance_uid: str | None,
                        error: BaseException, *, patient: Identifier | None, study: str | None,
                        sender: RequestContext | None) -> None:
        """The one AuditEvent of a refused object (module docstring). An audit that cannot be
        written is logged (no patient data) and swallowed: it must not turn the refusal into
        another answer, nor stop the SCP."""
        reason = (error.diagnostics if isinstance(error, AdapterError)
                  else f"an unexpected error ({type(error).__name__})")[:_REASON_LENGTH]
        instances = (sop_instance_uid,) if sop_instance_uid else ()
        try:
            self._auditor.record_refused_transfer(
                _sender_context(calling_ae, peer_address, sender), error=error, reason=reason, patient=patient,
                dicom=DicomAudit.transferred(*([study] if study else []), instances=instances))
        except Exception as exc:  # noqa: BLE001 - the refusal stands whatever the audit store does
            # not the SOP Instance UID: some modalities build it from the patient's ID and birth date
            log.error("could not audit the refusal of an object from %s@%s (%s)", calling_ae, peer_address,
                      type(exc).__name__)

    def _check_resend(self, received: ReceivedStore, instance: DicomInstance, known: _Known) -> None:
        """An object whose SOP Instance UID is stored already. A SOP Instance UID names one
        instance (PS3.3 C.12.1.1.1) and the stored one stands: it may have been read, forwarded
        and released since, and its record is what others hold. The answer says what became of
        what was sent (PS3.4 B.2.3), found by the cheapest question first:

        * its data set is the stored one's byte for byte (the usual retry; the file meta aside,
          which pynetdicom or a STOW-RS client wrote), or the same elements and values in another
          encoding (an archive sending on in Implicit VR what it received in Explicit VR, or the
          other way round: a transfer syntax encodes the instance, PS3.5 10;
          adapter.services.dicom_data_sets): Success, answered from its record (returns). An instance made here from a photo has no object as received: it is
          compared with the object the adapter forwards and WADO-RS serves, made again
          (:meth:`_same_as_made`), so a PACS sending the adapter's own object back is answered
          Success;
        * else it is read as far as its identity (steps 2-4, the checks a new object passes), and
          if it names another patient, study, series or SOP class than the stored instance it is
          refused with InstanceConflict naming the attribute that differs: a WADO-RS or QIDO-RS
          lookup at the study the sender reported would find nothing;
        * else it is another content of the same instance (a corrected PatientName, other pixels,
          an attribute filled in): refused with InstanceConflict naming
          (0008,0018) SOPInstanceUID (a compressed object sent again decompressed among them: its
          decoded pixels are the decoder's). Not Warning 0xB006 Elements Discarded: PS3.4 Table B.2-1
          says B006 is an instance stored with some elements discarded, and senders (the
          adapter's own SCU too) count every Bxxx as stored, so a correction that did not land
          went unseen while the old content was served on. Not overwritten either: what was read
          and released stays what the record holds (the correction path is the records
          manager's: docs/operations.md).

        Both refusals are 0xA900 over DIMSE (PS3.4 B.2.3 has no status of its own: A900 is the
        Storage Service's failure for a data set that is not what its identity says, as for a SOP
        Instance UID differing from the request's; a failure the sender's operator sees in its
        queue, not cured by sending again), a 409 FailedSOPSequence entry in STOW-RS (PS3.18
        10.5.3).

        Cost: the comparison reads the stored object's data set beside the received one's and
        stops at the first difference; no digest. When the bytes differ, the two data sets are
        read element by element, up to their first difference, the pixel data last and a chunk at
        a time. The checks read the dataset before the pixel data (~1-2 ms whatever the size)
        only for an object that is not the stored one. An object stored before a check was added,
        sent again as it is, is a retry whatever the checks say of it now.

        Raises:
            InstanceConflict: the object is not the stored one.
            AdapterError: the refusals a new object would meet before its identity is known.
        """
        if self._same_data_set(received.path, instance):
            return
        checked = _Known()
        try:
            self._check_resent_identity(received, instance, checked)
        finally:
            known.obj = checked.obj
        raise _other_content(made_here=instance.blob_sha256 is None)

    def _same_data_set(self, path: Path, instance: DicomInstance) -> bool:
        """Whether the data set of the Part 10 file at ``path`` is the stored object's byte for
        byte (their file meta aside); for an instance made from a photo, the object made of it
        (:meth:`_same_as_made`)."""
        if instance.blob_sha256 is None:
            return self._same_as_made(path, instance)
        try:
            stored = self._blobs.path(instance.blob_sha256)
        except AdapterError:  # its blob gone (verify reports it): the object cannot be compared
            return False
        try:
            return _same_data_set(path, stored)
        except OSError as exc:
            raise StorageError("the received dataset could not be read") from exc

    def _same_as_made(self, path: Path, instance: DicomInstance) -> bool:
        """Whether the data set of the Part 10 file at ``path`` is the object the adapter makes of
        the photo of ``instance`` (the one it forwards and WADO-RS serves for care,
        adapter.services.dicom_objects.dicom_object_for: every regeneration is the identical
        object), encoded in the transfer syntax the file says, as an SCU encodes it (pydicom's
        writer, which pynetdicom sends with). A photo that cannot be made again (its bytes gone)
        compares with nothing."""
        # imported here: adapter.services.dicom_objects imports this module
        from adapter.services.dicom_objects import dicom_object_for, regenerating
        stored = self._store.get(instance.record_type, instance.record_id)
        if stored is None:
            return False
        try:
            with regenerating(instance, stored, self._blobs) as image:
                made = dicom_object_for(instance, stored, self._blobs, self._tables, self._dicom_tables, image=image)
            if isinstance(made, Path):  # a stored object after all: compared as a received one is
                return _same_data_set(path, made)
            return _same_encoded_data_set(path, made)
        except (Transient, StorageError):  # busy, or the disk: answered so, to be sent again
            raise
        except AdapterError:
            return False
        except OSError as exc:
            raise StorageError("the received dataset could not be read") from exc

    def _check_resent_identity(self, received: ReceivedStore, instance: DicomInstance, known: _Known) -> None:
        """Steps 2-4 on a re-sent object, then its identity compared with the stored instance's."""
        layout = check_complete(received.path, received.transfer_syntax)
        try:
            ds = read_header(layout.head) if layout.head is not None else read_dataset(received.path)
            check_elements(ds, received.transfer_syntax)
            self._check_identity(ds, received)
            obj = read_received(ds, calling_ae=received.calling_ae, dicom_tables=self._dicom_tables,
                                tables=self._tables)
        except _MALFORMED as exc:
            raise InvalidInput(f"the dataset cannot be read ({type(exc).__name__})") from exc
        known.obj = obj
        _check_same_instance(obj, instance)

    def _ingest(self, received: ReceivedStore, known: _Known) -> DicomIngestResult:
        self._check_request(received)
        stored = self._store.find_dicom_instance(received.affected_sop_instance)
        if stored is not None:
            self._check_resend(received, stored, known)
            return self._replay(stored, received)
        layout = check_complete(received.path, received.transfer_syntax)
        check_pixel_data_encoding(layout.pixel_data, received.transfer_syntax)
        work = _Work(self._blobs)
        try:
            # the object as received: hashed, and staged (a hard link) and fsynced, beside the rest
            original_sha256 = work.submit(_file_sha256, received.path)
            original = work.staging_path()
            original_ready = work.submit(_link_or_copy, received.path, original)
            fast = (received.transfer_syntax == JPEGBaseline8Bit and layout.first_fragment is not None
                    and layout.head is not None)
            binary: _Binary | None = None
            frame_error: AdapterError | None = None
            if fast:
                assert layout.first_fragment is not None
                try:  # early, so that its copy and digest run beside the parsing; refused in turn below
                    binary = _binary_of_first_fragment(work, received.path, layout.first_fragment)
                except AdapterError as exc:
                    frame_error = exc
            # Frames in several fragments (a multi-frame object, say) are read from their places in
            # the file too, when the pixel data ends it: the dataset before it is then all there is
            pixels = layout.pixel_data
            in_place = (not fast and received.transfer_syntax == JPEGBaseline8Bit and layout.head is not None
                        and pixels is not None and len(pixels.items) > 1 and pixels.end == layout.size)
            if (fast or in_place) and layout.head is not None:
                head = self._read_head(read_header(layout.head), received, known)
            else:
                head = self._read_head(read_dataset(received.path), received, known)
            try:
                if (fast or in_place) and "EncapsulatedDocument" in head.ds:  # not an image: the general way
                    fast = in_place = False
                # an image: its Image Pixel module, against which every JPEG frame is checked
                pixel = image_pixel(head.ds) if pixels is not None and "EncapsulatedDocument" not in head.ds else None
                if fast and head.obj.number_of_frames != 1:
                    # one fragment holds one frame (PS3.5 A.4): extract_image refuses the object
                    # whose NumberOfFrames states more
                    fast = False
                if in_place:
                    assert pixels is not None
                    stated = head.obj.number_of_frames
                    frames = _frame_fragments(pixels, received.path, stated)
                    if frames is not None and len(frames) == stated:
                        assert pixel is not None
                        binary = _binary_of_frames(work, received.path, frames, pixel)
                    else:  # the general way counts them as extract_image does, and refuses another count
                        in_place = False
                if not fast and not in_place:
                    ds = head.ds if "PixelData" in head.ds or layout.pixel_data is None else read_dataset(received.path)
                    binary = _binary_of_bytes(work, extract_image(ds, pixel))
                elif frame_error is not None:
                    raise frame_error
                elif fast:  # frame 1 was walked before the dataset was read
                    assert binary is not None and binary.frame is not None and pixel is not None
                    check_jpeg_frame(pixel, binary.frame, frame=1, transfer_syntax=JPEGBaseline8Bit)
                study = _study_attributes(head.ds)
            except _MALFORMED as exc:
                raise InvalidInput(f"the dataset cannot be read ({type(exc).__name__})") from exc
            assert binary is not None
            return self._store_object(received, head.obj, binary, head.assessment, work, original, original_ready,
                                      original_sha256.result(), study, head.now)
        finally:
            work.close()

    @staticmethod
    def _check_request(received: ReceivedStore) -> None:
        """A C-STORE-RQ names a SOP class negotiated on its presentation context (PS3.7 9.3.1.1,
        PS3.8 7.1.1.13: a context is one abstract syntax). One naming another was never
        negotiated there: 0x0122 Refused: SOP Class not supported (PS3.7 C.5.20), not 0xA900,
        which says the data set does not match its class."""
        if received.affected_sop_class != received.context_sop_class:
            raise NotSupported("the request's SOP Class UID is not its presentation context's: not negotiated on it",
                               expression="(0000,0002) AffectedSOPClassUID")
        check_transfer_syntax(received.context_sop_class, received.transfer_syntax)

    def _read_head(self, ds: Dataset, received: ReceivedStore, known: _Known) -> _Head:
        """Steps 3-5 on a parsed dataset (its pixel data not needed). ``known.obj``: what steps
        3-4 read, once they have (a refusal from then on names its patient and study)."""
        try:
            check_elements(ds, received.transfer_syntax)
            self._check_identity(ds, received)
            undefined = undefined_character_sets(ds)
            if undefined:  # decoded all the same, by pydicom's guess: said, by the value (no patient data)
                log.warning("a received object's Specific Character Set (0008,0005) holds %s, not a defined term "
                            "(PS3.3 C.12.1.1.2): its text is decoded by a guess", ", ".join(undefined))
            obj = read_received(ds, calling_ae=received.calling_ae, dicom_tables=self._dicom_tables,
                                tables=self._tables)
            known.obj = obj
            # where it would be filed: refused before its pixel data is worked on (step 4)
            self._store.check_hierarchy(study_instance_uid=obj.study_uid, series_instance_uid=obj.series_uid,
                                        patient=obj.patient)
            now = self._now()
            assessment = self._assess(obj, received, now)  # a refusal by the consent rules: a decision, audited
            return _Head(ds, obj, assessment, now)
        except _MALFORMED as exc:
            raise InvalidInput(f"the dataset cannot be read ({type(exc).__name__})") from exc

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
        # The file meta is kept with the object and answers WADO-RS as it is: it must say the same
        # (pynetdicom writes it from the request; a STOW-RS part brings its own).
        meta = getattr(ds, "file_meta", None)
        for keyword, tag, expected in (("MediaStorageSOPClassUID", "(0002,0002)", received.affected_sop_class),
                                       ("MediaStorageSOPInstanceUID", "(0002,0003)", received.affected_sop_instance)):
            if meta is not None and str(meta.get(keyword) or "").strip("\x00 ") != expected:
                raise InvalidResource(f"the file meta's {keyword} is not the one of the request",
                                      expression=f"{tag} {keyword}")

    def _assess(self, obj: ReceivedObject, received: ReceivedStore, now: datetime) -> IngestAssessment:
        """The ingest consent rules for the object: sent by a colleague inside the organisation
        (the sending AE on behalf of its institution) when its sender is responsible for consent
        (:attr:`ReceivedStore.sender_responsible`); else, from a STOW-RS client the deployment
        does not trust, as a photo posted without a consent statement (a Consent on file
        permitting care, or consent pending under ``allowPending``, or refused:
        :data:`UNTRUSTED_STOW_SOURCE`). The patient's Consents are read from the store when the
        rules look at them (for every kind, since a Consent denying TREAT refuses documents and
        secondary captures too): the versions on file, and only those not parsed before
        (:class:`ConsentGrantsCache`)."""
        patient = PatientRef(system=obj.patient.system, value=obj.patient.value)
        grants = _Lazy(lambda: self._grants.grants_for_patient(obj.patient))
        # device: the sender is a DICOM AE the deployment admits (a PACS, a modality), the
        # organisation's equipment, not a staff phone the personal-device rule is about. A DICOM
        # object has no field for it: an untrusted STOW-RS client's is not held to that rule
        # either, as before (its consent is what this distinction is about)
        if received.sender_responsible:
            meta = PhotoMetadata(
                patient=patient, kind=obj.kind, source=RECEIVED_SOURCE,
                colleague=Colleague(name=f"AE {obj.calling_ae}", organisation=obj.institution),
                device=DeviceOwnership.ORGANISATION)
            return assess_ingest(meta, grants, self._tables, now,
                                 sender_responsible=True)  # RECEIVED_SOURCE: a PACS of the organisation
        meta = PhotoMetadata(patient=patient, kind=obj.kind, source=UNTRUSTED_STOW_SOURCE,
                             device=DeviceOwnership.ORGANISATION)
        return assess_ingest(meta, grants, self._tables, now)

    def _store_object(self, received: ReceivedStore, obj: ReceivedObject, binary: _Binary,
                      assessment: IngestAssessment, work: _Work, original: Path, original_ready: Future[None],
                      original_sha256: str, study: _Study, now: datetime) -> DicomIngestResult:
        """Both blobs, then the one transaction. Every refusal has happened by now; both files
        were staged and fsynced by helper threads meanwhile, so committing them is a rename
        (done by helpers while this thread builds the resources)."""
        image_sha256 = binary.sha256.result()
        assert image_sha256 is not None
        committed = [work.commit(original, original_ready, original_sha256)]
        if binary.staged is not None:
            assert binary.ready is not None
            committed.append(work.commit(binary.staged, binary.ready, image_sha256))
            image_blob: tuple[str, tuple[int, int] | None] = (image_sha256, None)
        else:  # a range of the received object
            assert binary.offset is not None
            image_blob = (original_sha256, (binary.offset, len(binary.image.data)))
        unit = self._unit(received, obj, binary.image, image_sha256, image_blob, assessment, original_sha256,
                          study, now)
        for blob in committed:
            blob.result()
        try:
            self._store.save_ingest(unit)
        except InstanceConflict:  # its study or series held elsewhere by now (step 8): a refusal
            raise
        except Conflict:
            # the same object over another association won the race: answered as a re-sent one
            # is (_check_resend), this one's checks passed already
            stored = self._store.find_dicom_instance(obj.sop_instance_uid)
            if stored is None:
                raise
            if original_sha256 == stored.blob_sha256 or self._same_data_set(received.path, stored):
                return self._replay(stored, received)
            _check_same_instance(obj, stored)
            raise _other_content(made_here=stored.blob_sha256 is None)
        return DicomIngestResult(receipt=unit.receipt, replayed=False)

    def _unit(self, received: ReceivedStore, obj: ReceivedObject, image: ExtractedImage, image_sha256: str,
              image_blob: tuple[str, tuple[int, int] | None], assessment: IngestAssessment,
              original_sha256: str, study: _Study, now: datetime) -> IngestUnit:
        """The ingest unit; ``image_blob`` is where the Binary's bytes are: a blob, and the
        (offset, length) range of it when they are part of the received object."""
        record_id, binary_id, provenance_id = _new_id(), _new_id(), _new_id()
        if not received.sender_responsible:
            # its InstitutionName is the sender's own word: no agent of the Provenance acts on
            # behalf of it (the object keeps it, as sent)
            obj = dataclasses.replace(obj, institution=None)
        built = received_to_fhir(obj, image, record_id=record_id, binary_id=binary_id, provenance_id=provenance_id,
                                 received_sha256=original_sha256, tables=self._tables,
                                 dicom_tables=self._record_tables[received.source], now=now,
                                 consent_pending=assessment.consent_pending, image_sha256=image_sha256,
                                 pending_notes=[w for w in assessment.warnings if w.startswith(PENDING_PREFIX)])
        record_type = built.record_type
        record_ref = built.record_ref
        patient = obj.patient
        facts = AccessFacts(governed_by=record_ref, patient=patient, kind=obj.kind, source=received.source,
                            consent_pending=assessment.consent_pending)
        provenance_index = index_resource(built.provenance)
        resources = [
            NewResource(record_type, record_id, built.record, index_resource(built.record), facts,
                        blob_sha256=image_blob[0], blob_range=image_blob[1]),
            NewResource("Binary", binary_id, built.binary, SearchIndex(patient=patient), facts,
                        blob_sha256=image_blob[0], blob_range=image_blob[1]),
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
        audit = self._auditor.event(_sender_context(received.calling_ae, received.peer_address, received.sender),
                                    interaction="create", action="C", permitted=True, reason=None, entities=created,
                                    patient=patient, dicom=DicomAudit.transferred(obj.study_uid))
        instance = DicomInstance(
            sop_instance_uid=obj.sop_instance_uid, study_instance_uid=obj.study_uid,
            series_instance_uid=obj.series_uid, sop_class_uid=obj.sop_class_uid, modality=obj.modality or "",
            record_type=record_type, record_id=record_id, patient=patient, blob_sha256=original_sha256,
            study_date=study.date, created=None, patient_name=study.patient_name,
            study_description=study.description, accession_number=study.accession_number, study_time=study.time,
            attributes=study.attributes)
        return IngestUnit(resources=resources, receipt=receipt, idempotency_key=None, patient=patient,
                          stored_sha256=original_sha256, audit_events=[audit], dicom_instance=instance,
                          released_uids=self._released_uids.rows(instance))


def _check_same_instance(obj: ReceivedObject, instance: DicomInstance) -> None:
    """Refuse an object naming another patient, study, series or SOP class than the instance
    stored under its SOP Instance UID (:meth:`DicomIngestService._check_resend`), naming the
    attribute that differs (for another patient: PatientID, and IssuerOfPatientID where the
    issuer, i.e. the identifier's system, differs; Offending Element, PS3.4 Table B.2-1). The
    diagnostics name neither value (a patient's, or UIDs some modalities build from the
    patient's ID)."""
    if obj.patient != instance.patient:
        differs = ([] if obj.patient.value == instance.patient.value else ["(0010,0020) PatientID"]) + \
                  ([] if obj.patient.system == instance.patient.system else ["(0010,0021) IssuerOfPatientID"])
        raise InstanceConflict("the SOP Instance UID is stored already for another patient than the object names: "
                               "the stored instance is kept", expression=differs)
    for held, stored, keyword, tag, what in (
            (obj.study_uid, instance.study_instance_uid, "StudyInstanceUID", "(0020,000D)", "another study"),
            (obj.series_uid, instance.series_instance_uid, "SeriesInstanceUID", "(0020,000E)", "another series"),
            (obj.sop_class_uid, instance.sop_class_uid, "SOPClassUID", "(0008,0016)", "another SOP class")):
        if held != stored:
            raise InstanceConflict(f"the SOP Instance UID is stored already in {what} than the object names: the "
                                   "stored instance is kept", expression=f"{tag} {keyword}")


def _other_content(*, made_here: bool) -> InstanceConflict:
    """The refusal of another content under a SOP Instance UID stored already
    (:meth:`DicomIngestService._check_resend`). Its first sentence is the Error Comment, whole
    (adapter.mapping.dimse_status.error_comment: 59 characters); the rest, what to do, is the
    audit's reason and STOW-RS's."""
    made = " The stored one was made here from a photo." if made_here else ""
    return InstanceConflict(
        f"SOP Instance UID held with other content: stored one kept.{made} To correct it, mark its record "
        "entered-in-error and send the corrected object with a new SOP Instance UID (docs/operations.md)",
        expression="(0008,0018) SOPInstanceUID")


def _same_encoded_data_set(path: Path, made: Dataset) -> bool:
    """Whether the data set of the Part 10 file at ``path`` is ``made`` as an SCU encodes it in
    the file's transfer syntax (Implicit VR Little Endian, or Explicit VR Little Endian with native
    or encapsulated pixel data: the syntaxes the SCP accepts for storage)."""
    with open(path, "rb") as fh:
        if not os.fstat(fh.fileno()).st_size:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mine:
            try:
                at = _data_set_offset(mine)
            except (InvalidInput, _Truncated):
                return False
            syntax = transfer_syntax_of(path)
            if syntax not in (ImplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit):
                return False
            out = DicomBytesIO()
            out.is_little_endian, out.is_implicit_VR = True, syntax == ImplicitVRLittleEndian
            try:
                write_dataset(out, made)
            except (ValueError, TypeError, struct.error):  # not encodable so: not what was sent
                return False
            encoded = out.getvalue()
            return len(mine) - at == len(encoded) and mine[at:] == encoded


def _same_data_set(path: Path, stored: Path) -> bool:
    """Whether the data sets of the Part 10 files at ``path`` and ``stored`` (what follows their
    file meta, :func:`_body_offset`) are the same: the same bytes, compared a chunk at a time,
    from their lengths on, so two that differ are rarely read far; else, the same elements and
    values in other encodings (another transfer syntax, sequences delimited otherwise:
    adapter.services.dicom_data_sets), read only then and only up to their first difference."""
    with open(path, "rb") as fh, open(stored, "rb") as gh:
        size, stored_size = os.fstat(fh.fileno()).st_size, os.fstat(gh.fileno()).st_size
        if not size or not stored_size:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mine, \
                mmap.mmap(gh.fileno(), 0, access=mmap.ACCESS_READ) as theirs:
            try:
                at, stored_at = _data_set_offset(mine), _data_set_offset(theirs)
            except (InvalidInput, _Truncated):  # no Part 10 file: not the stored object
                return False
            if size - at == stored_size - stored_at and all(
                    mine[at + start:at + start + _COMPARE_CHUNK] == theirs[stored_at + start:stored_at + start +
                                                                           _COMPARE_CHUNK]
                    for start in range(0, size - at, _COMPARE_CHUNK)):
                return True
    try:
        return same_data_set_decoded(path, at, stored, stored_at)
    except _MALFORMED:  # not read as a data set: not the stored one (the checks say why next)
        return False


def _data_set_offset(mapped: mmap.mmap) -> int:
    buf = memoryview(mapped)
    try:
        return _body_offset(buf)
    finally:
        buf.release()


def _sender_context(calling_ae: str, peer_address: str, sender: RequestContext | None = None) -> RequestContext:
    """Who stores a received object, for its audit: the STOW-RS request's ``sender``
    (:func:`stow_sender`) when it came over HTTP; else the sending AE of a C-STORE, for care
    (TREAT: DIMSE carries no purpose of use, and a PACS inside the organisation sends for care)."""
    if sender is not None:
        return sender
    return RequestContext(purpose=PurposeOfUse("TREAT"), actor=f"AE {calling_ae} (C-STORE)",
                          client_address=peer_address or None, channel="dicom",
                          ae_title=None if calling_ae == STOW_SENDER else calling_ae)


def stow_sender(request: RequestContext) -> RequestContext:
    """Who sends a STOW-RS request (PS3.18 10.5), for the audit of each object it carries and of
    its refusal: the HTTP client ``request`` names (its network address, the request's
    X-Request-Id, IHE BALP XrequestId, and the purpose of use it stated for the write), marked as
    a STOW-RS client. DICOMweb has no AE title: none is recorded (agent.altId stays a DIMSE
    peer's)."""
    return dataclasses.replace(request, actor=f"{request.actor} (STOW-RS)", ae_title=None)


@dataclass(frozen=True)
class _Study:
    """What a received object says of its study (a viewer's study list), its series and itself,
    kept for QIDO-RS."""

    date: str | None
    patient_name: str | None
    description: str | None
    accession_number: str | None
    time: str | None
    attributes: InstanceAttributes   # of its series and itself (adapter.mapping.dicom_qido)


#: Longest value kept of each (PN: 5 components of 64 characters, 3 groups; the others their VR's).
_STUDY_LIMITS = {"PatientName": 1000, "StudyDescription": 64, "AccessionNumber": 16, "StudyTime": 16}


def _study_attributes(ds: Dataset) -> _Study:
    """StudyDate (DA) and StudyTime (TM) when they name a day and a time of day
    (adapter.mapping.dicom_dates); PatientName, StudyDescription and AccessionNumber as sent,
    when present, within their VR's length and without a control character, which none of their
    VRs has (anything else is not kept: the object keeps it, and every release reads it from
    there)."""

    def text(keyword: str) -> str | None:
        value = str(ds.get(keyword) or "").strip(" \x00")
        return value if value and len(value) <= _STUDY_LIMITS[keyword] and not has_control_character(value) else None

    date, time = str(ds.get("StudyDate") or "").strip(), text("StudyTime")
    return _Study(date=date if is_date(date) else None, patient_name=text("PatientName"),
                  description=text("StudyDescription"), accession_number=text("AccessionNumber"),
                  time=time if time is not None and is_time(time) else None, attributes=instance_attributes(ds))


__all__ = ["STOW_SENDER", "UNTRUSTED_STOW_SOURCE", "DicomIngestResult", "DicomIngestService", "FileLayout",
           "PixelDataLayout", "ReceivedStore", "check_complete", "check_pixel_data_encoding", "check_transfer_syntax",
           "read_dataset", "read_header"]
