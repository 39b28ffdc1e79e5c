"""Lossless JPEG metadata surgery by walking markers; the entropy-coded data is never decoded
or re-encoded, so the pixels cannot change (standards.md §5.3).

Syntax: ITU-T T.81 Annex B. B.1.1.2: a marker is ``FF`` + a code, optionally preceded by any
number of fill bytes ``FF``; SOI, EOI, RSTm and TEM stand alone, every other marker starts a
segment whose 2-byte big-endian length counts itself (B.1.1.4). B.1.1.5: inside
entropy-coded data a data byte ``FF`` is stuffed as ``FF00`` and RSTm markers (``FFD0``-
``FFD7``) belong to the data; any other marker ends the segment. B.2.2: the frame header
(SOFn) gives the dimensions. APPn and COM may also appear between progressive scans (B.6);
they are filtered there too. Anything after EOI (MPF images, motion-photo video, vendor
trailers) is cut off.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

from adapter.errors import ImageTooLarge, UndecodableImage
from adapter.imaging.exif import ExifSummary, orientation_only_tiff, parse_exif
from adapter.imaging.facts import Stripped

SOI, EOI, SOS, DQT, DHT, DAC, DRI, DNL, COM = 0xD8, 0xD9, 0xDA, 0xDB, 0xC4, 0xCC, 0xDD, 0xDC, 0xFE
TEM = 0x01
APP0, APP1, APP2, APP13, APP14 = 0xE0, 0xE1, 0xE2, 0xED, 0xEE
ECS = 0x100  # pseudo-marker: an entropy-coded data segment (follows its SOS)
# Table B.1: SOF0-3, 5-7, 9-11, 13-15; C4 is DHT, C8 is reserved (JPG), CC is DAC.
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# What decoding needs (T.81 B.2-B.5) for strip_to_pixels_only; APP14 and JFIF handled apart.
_DECODING_MARKERS = SOF_MARKERS | {DQT, DHT, DAC, DRI, SOS, DNL, ECS}

# FF followed by anything but a stuffed 00 or RSTm: a marker, or the start of a fill-byte run.
_MARKER_CANDIDATE = re.compile(rb"\xff[^\x00\xd0-\xd7]")
_JFIF = b"JFIF\x00"
_JFXX = b"JFXX\x00"
_EXIF = b"Exif\x00"
_XMP = (b"http://ns.adobe.com/xap/1.0/\x00", b"http://ns.adobe.com/xmp/extension/\x00")
_ICC = b"ICC_PROFILE\x00"
_MPF = b"MPF\x00"
_PHOTOSHOP = b"Photoshop 3.0\x00"
_ADOBE = b"Adobe"
# T.871 (JFIF) §10.1: identifier, version 1.02, no units, 1:1 aspect, no thumbnail.
_CANONICAL_JFIF = _JFIF + b"\x01\x02\x00\x00\x01\x00\x01\x00\x00"


@dataclass(frozen=True, slots=True)
class Segment:
    """A marker segment ``data[start:end]`` (``start`` is its ``FF``; fill bytes excluded),
    or, with ``marker == ECS``, an entropy-coded data segment."""

    marker: int
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class JpegLayout:
    """The marker structure of one JPEG interchange-format stream (T.81 B.2.1)."""

    segments: tuple[Segment, ...]
    width: int
    height: int
    eoi: int                 # offset of the EOI marker's FF
    trailer: int             # bytes after EOI
    extraneous: bool         # non-marker bytes between segments (skipped by decoders too)


def walk(data: bytes, *, max_pixels: int | None = None) -> JpegLayout:
    """Walk the markers of ``data`` from SOI to EOI (T.81 B.1.1, B.2.1).

    Raises :class:`UndecodableImage` for a stream that is structurally broken or truncated,
    and :class:`ImageTooLarge` as soon as the frame header claims more than ``max_pixels``,
    before any decoding.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != SOI:
        raise UndecodableImage("JPEG does not start with SOI")
    segments: list[Segment] = []
    width = height = 0
    pos = 2
    extraneous = False
    while True:
        if pos >= n:
            raise UndecodableImage("JPEG ends before EOI (truncated)")
        if data[pos] != 0xFF:
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                raise UndecodableImage("JPEG ends before EOI (truncated)")
            extraneous, pos = True, nxt
            continue
        code = pos + 1
        while code < n and data[code] == 0xFF:  # fill bytes (B.1.1.2)
            code += 1
        if code >= n:
            raise UndecodableImage("JPEG ends before EOI (truncated)")
        marker, start = data[code], code - 1
        if marker == EOI:
            break
        if marker in (0x00, SOI):
            raise UndecodableImage(f"unexpected JPEG marker 0xFF{marker:02X} at offset {start}")
        if 0xD0 <= marker <= 0xD7 or marker == TEM:  # stray stand-alone marker: decoders ignore it
            pos = code + 1
            continue
        if code + 3 > n:
            raise UndecodableImage("JPEG ends inside a marker segment (truncated)")
        end = code + 1 + ((data[code + 1] << 8) | data[code + 2])
        if end - code - 1 < 2 or end > n:
            raise UndecodableImage(f"JPEG marker segment 0xFF{marker:02X} runs past the end of the data")
        segments.append(Segment(marker, start, end))
        if marker in SOF_MARKERS:
            if width:
                raise UndecodableImage("JPEG has more than one frame header (hierarchical mode)")
            width, height = _frame_size(data, code, end)
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} pixels, over the limit of {max_pixels}")
        if marker == SOS:
            if not width:
                raise UndecodableImage("JPEG scan before the frame header")
            scan_end = _scan_end(data, end)
            segments.append(Segment(ECS, end, scan_end))
            pos = scan_end
        else:
            pos = end
    if not width or not any(s.marker == SOS for s in segments):
        raise UndecodableImage("JPEG has no frame header or no scan")
    return JpegLayout(tuple(segments), width, height, eoi=start, trailer=n - code - 1,
                      extraneous=extraneous)


def jpeg_pixel_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from the first frame header, reading no scan data (T.81 B.2.2)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != SOI:
        raise UndecodableImage("JPEG does not start with SOI")
    pos = 2
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise UndecodableImage("JPEG header is malformed")
        code = pos + 1
        while code < n and data[code] == 0xFF:
            code += 1
        if code + 3 > n:
            break
        marker = data[code]
        if 0xD0 <= marker <= 0xD7 or marker == TEM:
            pos = code + 1
            continue
        if marker in (SOS, EOI, SOI, 0x00):
            break
        end = code + 1 + ((data[code + 1] << 8) | data[code + 2])
        if end > n:
            break
        if marker in SOF_MARKERS:
            return _frame_size(data, code, end)
        pos = end
    raise UndecodableImage("JPEG has no frame header")


def strip_jpeg(data: bytes, *, max_pixels: int | None = None) -> Stripped:
    """Keep what decoding and colour need, drop every metadata segment (standards.md §5.3).

    Kept: JFIF APP0 (its thumbnail zeroed), APP2 ICC_PROFILE, APP14 Adobe and every
    non-APPn marker segment with the entropy-coded data. Dropped: APP1 Exif and XMP, APP2 MPF,
    APP13 Photoshop/IPTC, any other APPn, COM, reserved JPGn, fill and extraneous bytes, and
    anything after EOI. An EXIF Orientation other than 1 comes back as a minimal APP1 Exif
    holding only 0x0112, right after JFIF (or SOI).
    """
    layout = walk(data, max_pixels=max_pixels)
    view = memoryview(data)
    removed: list[str] = []
    exif: ExifSummary | None = None
    jfif: bytes | None = None
    kept: list[memoryview | bytes] = []
    adobe_seen = False
    for seg in layout.segments:
        payload = view[seg.start + 4:seg.end]
        marker = seg.marker
        if marker == APP0 and payload[:5] == _JFIF and jfif is None and len(payload) >= 14:
            jfif = _jfif_without_thumbnail(bytes(payload), removed)
        elif marker == APP1 and payload[:5] == _EXIF:
            removed.append("EXIF")
            if exif is None:
                exif = parse_exif(bytes(payload[6:]))
                removed.extend(exif.categories)
        elif marker == APP2 and payload[:12] == _ICC:
            kept.append(view[seg.start:seg.end])
        elif marker == APP14 and payload[:5] == _ADOBE and not adobe_seen:
            adobe_seen = True
            kept.append(view[seg.start:seg.end])
        elif 0xE0 <= marker <= 0xEF or marker == COM or 0xF0 <= marker <= 0xFD:
            removed.append(_segment_name(marker, payload))
        else:
            kept.append(view[seg.start:seg.end])
    if layout.extraneous:
        removed.append("extraneous bytes between segments")
    if layout.trailer:
        removed.append("trailer after EOI")

    head: list[memoryview | bytes] = [b"\xff\xd8"]
    if jfif is not None:
        head.append(_segment(APP0, jfif))
    if exif is not None and exif.orientation not in (None, 1):
        assert exif.orientation is not None
        head.append(_segment(APP1, b"Exif\x00\x00" + orientation_only_tiff(exif.orientation)))
    stored = b"".join([*head, *kept, b"\xff\xd9"])
    return Stripped(stored, layout.width, layout.height, tuple(dict.fromkeys(removed)), exif)


def strip_jpeg_to_pixels_only(data: bytes) -> bytes:
    """Keep only what decoding needs: SOI, DQT, DHT, DAC, DRI, SOFn, SOS with its entropy-coded
    data, DNL, EOI; plus APP14 Adobe (its transform flag decides the colour conversion) and,
    if the input had one, a canonical JFIF APP0 (libjpeg infers YCbCr from JFIF's presence, so
    removing it could change the decoded colours of some streams). ICC, EXIF (Orientation
    included), every other APPn and COM are dropped."""
    layout = walk(data)
    view = memoryview(data)
    jfif = adobe = False
    parts: list[memoryview | bytes] = [b"\xff\xd8"]
    for seg in layout.segments:
        payload = view[seg.start + 4:seg.end]
        if seg.marker == APP0 and payload[:5] == _JFIF and not jfif and len(payload) >= 14:
            jfif = True
            parts.insert(1, _segment(APP0, _CANONICAL_JFIF))
        elif seg.marker == APP14 and payload[:5] == _ADOBE and not adobe:
            adobe = True
            parts.append(view[seg.start:seg.end])
        elif seg.marker in _DECODING_MARKERS:
            parts.append(view[seg.start:seg.end])
    parts.append(b"\xff\xd9")
    return b"".join(parts)


def app_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(marker, payload)`` of every APPn and COM segment; a helper for checks and tests."""
    layout = walk(data)
    for seg in layout.segments:
        if 0xE0 <= seg.marker <= 0xEF or seg.marker == COM:
            yield seg.marker, data[seg.start + 4:seg.end]


def _frame_size(data: bytes, code: int, end: int) -> tuple[int, int]:
    """Frame header (B.2.2): Lf, P, Y (lines), X (samples per line), Nf, then 3 bytes per
    component."""
    if end - code - 1 < 8:
        raise UndecodableImage("JPEG frame header is too short")
    height, width, components = struct.unpack_from(">HHB", data, code + 4)
    if end - code - 1 != 8 + 3 * components or components == 0:
        raise UndecodableImage("JPEG frame header length does not match its component count")
    if height == 0:
        raise UndecodableImage("JPEG defines its height with DNL, which is not supported")
    if width == 0:
        raise UndecodableImage("JPEG frame header has zero width")
    return width, height


def _scan_end(data: bytes, pos: int) -> int:
    """Offset of the marker that ends the entropy-coded data starting at ``pos`` (B.1.1.5).

    ``FF00`` is a stuffed data byte and ``FFD0``-``FFD7`` are restart markers, both part of
    the data; a run of ``FF`` fill bytes belongs to whatever follows it (as in libjpeg's
    ``jpeg_fill_bit_buffer``). The regex has a literal first byte, so ``re`` skips to each
    candidate at C speed; only fill-byte runs are examined in Python.
    """
    n = len(data)
    search = _MARKER_CANDIDATE.search
    while True:
        found = search(data, pos)
        if found is None:
            raise UndecodableImage("JPEG scan data ends before EOI (truncated)")
        i = found.start()
        if data[i + 1] != 0xFF:
            return i
        j = i + 2
        while j < n and data[j] == 0xFF:
            j += 1
        if j >= n:
            raise UndecodableImage("JPEG scan data ends before EOI (truncated)")
        if data[j] != 0x00 and not 0xD0 <= data[j] <= 0xD7:
            return i
        pos = j + 1


def _jfif_without_thumbnail(payload: bytes, removed: list[str]) -> bytes:
    """JFIF APP0 (T.871 §10.1): 14 bytes, then an optional 3*Xt*Yt-byte RGB thumbnail; keep
    the 14 bytes with Xt = Yt = 0."""
    if payload[12] or payload[13] or len(payload) > 14:
        removed.append("JFIF thumbnail")
        return payload[:12] + b"\x00\x00"
    return payload


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _segment_name(marker: int, payload: memoryview) -> str:
    """A human-readable name for a dropped segment; identifiers only, never content."""
    if marker == COM:
        return "COM"
    if 0xF0 <= marker <= 0xFD:
        return f"JPG{marker - 0xF0} segment"
    if marker == APP0 and payload[:5] == _JFXX:
        return "JFXX thumbnail"
    if marker == APP1 and any(payload[:len(x)] == x for x in _XMP):
        return "XMP"
    if marker == APP2 and payload[:4] == _MPF:
        return "MPF"
    if marker == APP13 and payload[:14] == _PHOTOSHOP:
        return "IPTC" if _has_iptc(bytes(payload[14:])) else "Photoshop IRB"
    return f"APP{marker - 0xE0}"


def _has_iptc(irb: bytes) -> bool:
    """Is there an 8BIM resource 0x0404 (IPTC-IIM) in a Photoshop image-resource block?
    Each resource: ``8BIM``, id (2), even-padded Pascal name, size (4), even-padded data."""
    pos = 0
    while pos + 12 <= len(irb) and irb[pos:pos + 4] == b"8BIM":
        resource = struct.unpack_from(">H", irb, pos + 4)[0]
        name_len = irb[pos + 6]
        pos += 6 + ((name_len + 2) & ~1)
        if pos + 4 > len(irb):
            return False
        size = struct.unpack_from(">I", irb, pos)[0]
        if resource == 0x0404:
            return True
        pos += 4 + size + (size & 1)
    return False
