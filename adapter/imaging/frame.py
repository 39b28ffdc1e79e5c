"""What the DICOM bridge needs to know about a stored JPEG or PNG before wrapping it, read from
the bytes alone (no decoding): the JPEG frame header and colour model, the EXIF Orientation the
stored photo carries, and the JPEG stream without any EXIF for encapsulation.

Sources: ITU-T T.81 B.2.2 (frame header: P, Y, X, Nf, then Ci/Hi/Vi/Tqi per component) and
Table B.1 (SOFn processes); libjpeg ``jdapimin.c`` ``default_decompress_parms`` for the
colour-space rules a decoder applies (JFIF → YCbCr; Adobe APP14 transform 0 → RGB/CMYK, 1 → YCbCr,
2 → YCCK; else component ids ``R``,``G``,``B`` → RGB); PNG (Third Edition) §11.2.1 IHDR and
§11.3.4.2 (eXIf); standards.md §4.5 and §5.3.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from adapter.errors import UndecodableImage
from adapter.imaging.exif import parse_exif
from adapter.imaging.jpeg import APP0, APP1, APP2, APP14, SOF_MARKERS, SOS, strip_jpeg_segments, walk
from adapter.imaging.png import walk as walk_png
from adapter.imaging.sniff import JPEG, PNG, check_declared

SOF0 = 0xC0       # baseline DCT, Huffman: the only process the JPEG Baseline TS (…4.50) allows


def is_baseline_process(sof: int, precision: int) -> bool:
    """Whether a frame header's SOFn marker and sample precision P are JPEG process 1, baseline
    sequential DCT with Huffman coding (T.81 Table B.1 and B.2.2: SOF0, P = 8): the only process
    the JPEG Baseline transfer syntax 1.2.840.10008.1.2.4.50 allows (PS3.5 A.4.1, Table F.1-5).
    The one rule for what the adapter sends (:attr:`JpegFrameInfo.baseline`) and for what it
    receives (adapter.mapping.dicom_image_pixel)."""
    return sof == SOF0 and precision == 8
_EXIF = b"Exif\x00"
_JFIF = b"JFIF\x00"
_ADOBE = b"Adobe"


@dataclass(frozen=True, slots=True)
class JpegFrameInfo:
    """The frame header of a JPEG stream and how a decoder will interpret its components.

    ``colour`` is ``GREY`` (1 component), ``YBR`` (YCbCr), ``RGB`` (no colour transform),
    ``CMYK`` or ``YCCK`` (4 components), or ``OTHER``. ``sampling`` holds (H, V) per component.
    """

    sof: int
    precision: int
    width: int
    height: int
    components: int
    component_ids: tuple[int, ...]
    sampling: tuple[tuple[int, int], ...]
    jfif: bool
    adobe_transform: int | None
    colour: str

    @property
    def baseline(self) -> bool:
        """True when the stream may go into the JPEG Baseline (Process 1) transfer syntax
        as-is: SOF0, 8-bit samples (T.81 Table B.1), 1 or 3 components (PS3.5 8.2.1)."""
        return is_baseline_process(self.sof, self.precision) and self.colour in ("GREY", "YBR", "RGB")

    @property
    def progressive(self) -> bool:
        return self.sof in (0xC2, 0xC6, 0xCA, 0xCE)


def jpeg_frame_info(data: bytes) -> JpegFrameInfo:
    """Read the frame header and colour signalling of a JPEG (no decoding).

    Raises:
        UndecodableImage: the stream is broken (see :func:`adapter.imaging.jpeg.walk`).
    """
    layout = walk(data)
    jfif = False
    adobe: int | None = None
    sof: tuple[int, int, int] | None = None
    for seg in layout.segments:
        if seg.marker == SOS:  # libjpeg has chosen the colour space by the first scan
            break
        payload = data[seg.start + 4:seg.end]
        if seg.marker == APP0 and payload[:5] == _JFIF and len(payload) >= 14:  # jdmarker.c examine_app0
            jfif = True
        elif seg.marker == APP14 and payload[:5] == _ADOBE and len(payload) >= 12:  # the last one counts
            adobe = payload[11]
        elif seg.marker in SOF_MARKERS and sof is None:
            sof = (seg.marker, seg.start, seg.end)
    if sof is None:  # walk() refuses a stream without a frame header; kept for the type checker
        raise UndecodableImage("JPEG has no frame header")
    marker, start, _end = sof
    precision, height, width, count = struct.unpack_from(">BHHB", data, start + 4)
    ids: list[int] = []
    sampling: list[tuple[int, int]] = []
    for i in range(count):
        cid, hv = data[start + 10 + 3 * i], data[start + 11 + 3 * i]
        ids.append(cid)
        sampling.append((hv >> 4, hv & 0x0F))
    return JpegFrameInfo(sof=marker, precision=precision, width=width, height=height, components=count,
                         component_ids=tuple(ids), sampling=tuple(sampling), jfif=jfif,
                         adobe_transform=adobe, colour=_colour(count, tuple(ids), jfif, adobe))


def _colour(count: int, ids: tuple[int, ...], jfif: bool, adobe: int | None) -> str:
    """libjpeg's default colour space for the stream (jdapimin.c default_decompress_parms)."""
    if count == 1:
        return "GREY"
    if count == 3:
        if jfif:
            return "YBR"
        if adobe is not None:
            return "RGB" if adobe == 0 else "YBR"
        if ids == (0x52, 0x47, 0x42):  # 'R', 'G', 'B'
            return "RGB"
        return "YBR"
    if count == 4:
        return "YCCK" if adobe == 2 else "CMYK"
    return "OTHER"


def read_orientation(data: bytes, content_type: str) -> int | None:
    """The EXIF Orientation (1..8) a stored JPEG (APP1 Exif) or PNG (eXIf) carries, or None.

    Ingest keeps an Orientation-only EXIF when the upload's Orientation was not 1
    (:func:`adapter.imaging.sanitize`), so this is how the stored bytes say how to display them.
    """
    kind = check_declared(data, content_type)
    if kind == JPEG:
        layout = walk(data)
        for seg in layout.segments:
            payload = data[seg.start + 4:seg.end]
            if seg.marker == APP1 and payload[:5] == _EXIF:
                return parse_exif(payload[6:]).orientation
        return None
    assert kind == PNG
    for chunk in walk_png(data).chunks:
        if chunk.type == b"eXIf":
            return parse_exif(data[chunk.start + 8:chunk.end - 4]).orientation
    return None


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """What the frame header of a JPEG stream says (T.81 B.2.2): its SOFn marker (the coding
    process, Table B.1), sample precision P, number of lines Y, samples per line X and number
    of components Nf."""

    sof: int
    precision: int
    height: int
    width: int
    components: int


@dataclass(frozen=True, slots=True)
class EncapsulatedJpeg:
    """The stream :func:`jpeg_for_encapsulation` makes of ``data``, in pieces (views into
    ``data`` where a segment is kept as it is), without assembling it, and its frame header
    (read from the segment the walk found, at no further cost).

    ``prefix`` is True when the stream is exactly ``data[:size]``: every byte up to and
    including EOI kept in place, nothing inserted (only bytes after EOI, such as the pad byte
    of an odd-length DICOM fragment, left out). The stream is then a byte range of whatever
    holds ``data``, and need not be copied to be known.
    """

    parts: tuple[bytes | memoryview, ...]
    size: int
    prefix: bool
    header: FrameHeader

    def join(self) -> bytes:
        return b"".join(self.parts)


#: What :func:`encapsulated_jpeg` does with an ICC profile.
IccProfile = Literal["rewritten", "as received", "dropped"]


def encapsulated_jpeg(data: bytes, *, icc: IccProfile = "rewritten") -> EncapsulatedJpeg:
    """:func:`jpeg_for_encapsulation` in one walk of ``data``, as pieces (see
    :class:`EncapsulatedJpeg`). ``data`` must stay unchanged while the pieces are used.
    ``icc``: the ICC profile ``"rewritten"`` (its text tags: adapter.imaging.icc), ``"dropped"``
    (a de-identified copy: its text tags can name a device or a person), or kept ``"as received"``
    (the frame of a received object, whose object keeps its profile as received:
    adapter.mapping.dicom_fhir.jpeg_binary).

    Raises:
        UndecodableImage: the stream is broken (see :func:`adapter.imaging.jpeg.walk`).
    """
    if not isinstance(data, (bytes, bytearray)):
        data = bytes(data)
    stripped = strip_jpeg_segments(data, rewrite_icc=icc == "rewritten")
    # strip_jpeg keeps no APP1 of the input; the only one it writes is the Orientation-only EXIF,
    # which DICOM must not carry either (jpeg_for_encapsulation)
    parts: list[bytes | memoryview] = [b"\xff\xd8"]
    parts.extend(part for marker, part in stripped.segments if marker != APP1 and (icc != "dropped" or marker != APP2))
    parts.append(b"\xff\xd9")
    pos = 0
    prefix = True
    for part in parts:
        if not data.startswith(part, pos):  # a memcmp, also for the entropy-coded data
            prefix = False
            break
        pos += len(part)
    # the walk found exactly one frame header (a second is refused: hierarchical), and checked
    # its length against its component count
    sof, segment = next((marker, part) for marker, part in stripped.segments if marker in SOF_MARKERS)
    precision, height, width, components = struct.unpack_from(">BHHB", segment, 4)
    return EncapsulatedJpeg(tuple(parts), sum(len(part) for part in parts), prefix,
                            FrameHeader(sof, precision, height, width, components))


def jpeg_for_encapsulation(data: bytes) -> bytes:
    """The JPEG stream to put into DICOM pixel data: :func:`strip_jpeg`'s result (JFIF without
    thumbnail, ICC profile, Adobe APP14 and the decoding segments; every other APPn, COM and
    anything after EOI dropped) **without** the Orientation-only EXIF either. DICOM has no
    EXIF (standards.md §5.3): orientation is applied before wrapping, and a stray Orientation
    inside a frame would make JPEG-aware viewers rotate it a second time.

    For an ingest-stored JPEG whose Orientation was 1 this returns the stored bytes unchanged;
    the entropy-coded data is never touched. One walk of the stream (:func:`encapsulated_jpeg`).
    """
    return encapsulated_jpeg(data).join()


def png_bit_depth(data: bytes) -> tuple[int, int]:
    """``(bit depth, colour type)`` from IHDR (PNG §11.2.1)."""
    layout = walk_png(data)
    ihdr = layout.chunks[0]
    depth, colour_type = struct.unpack_from(">BB", data, ihdr.start + 16)
    return int(depth), int(colour_type)


__all__ = ["EncapsulatedJpeg", "FrameHeader", "IccProfile", "JpegFrameInfo", "encapsulated_jpeg", "is_baseline_process", "jpeg_for_encapsulation", "jpeg_frame_info", "png_bit_depth", "read_orientation"]
