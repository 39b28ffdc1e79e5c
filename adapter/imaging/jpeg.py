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

With ``check_decoding`` the walk also refuses, with a message, what libjpeg (the decoder Pillow
bundles) refuses fatally in the marker segments: unsupported processes (hierarchical, lossless
arithmetic), sample precision other than 8 bits and component counts other than 1, 3, 4 (Pillow),
bad sampling factors, duplicate component ids, malformed DQT/DHT/DRI, a scan naming a component
the frame lacks or a table not yet defined (T.81 B.2.4, B.2.3), progression parameters out of range
(G.1.1.1.1), more than 10 blocks per MCU (B.2.3), reserved markers, a second scan after a
sequential scan of every component. Entropy-coded data is never examined: libjpeg treats every
error in it as a warning. :func:`decode_stream` builds, from a walked stream, the stream the decode
proof feeds to libjpeg (see ``adapter.imaging.probe``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

try:  # optional (pydicom loads it when installed): finds markers in scan data faster, off the GIL
    import numpy as _np
except ImportError:  # pragma: no cover - exercised by forcing the regex path in the tests
    _np = None  # type: ignore[assignment]

from adapter.errors import ImageTooLarge, UndecodableImage
from adapter.imaging.exif import ExifSummary, orientation_only_tiff, parse_exif
from adapter.imaging.facts import Stripped
from adapter.imaging.icc import NOT_REWRITABLE, TEXT_REWRITTEN, icc_profile_without_text

SOI, EOI, SOS, DQT, DHT, DAC, DRI, DNL, COM = 0xD8, 0xD9, 0xDA, 0xDB, 0xC4, 0xCC, 0xDD, 0xDC, 0xFE
TEM = 0x01
APP0, APP1, APP2, APP13, APP14 = 0xE0, 0xE1, 0xE2, 0xED, 0xEE
ECS = 0x100  # pseudo-marker: an entropy-coded data segment (follows its SOS)
# Table B.1: SOF0-3, 5-7, 9-11, 13-15; C4 is DHT, C8 is reserved (JPG), CC is DAC.
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# Processes libjpeg-turbo (as bundled with Pillow) decodes: SOF0/1 sequential, SOF2 progressive,
# SOF3 lossless (Huffman), SOF9/10 arithmetic sequential/progressive. The others (differential =
# hierarchical, lossless arithmetic) end in "Unsupported JPEG process" (JERR_SOF_UNSUPPORTED).
SUPPORTED_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA})
PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
LOSSLESS_SOF = frozenset({0xC3, 0xC7, 0xCB, 0xCF})
ARITHMETIC_SOF = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOF_NAMES = {0xC5: "differential sequential", 0xC6: "differential progressive", 0xC7: "differential lossless",
              0xCB: "lossless arithmetic", 0xCD: "differential sequential arithmetic",
              0xCE: "differential progressive arithmetic", 0xCF: "differential lossless arithmetic"}
# What decoding needs (T.81 B.2-B.5) for strip_to_pixels_only; APP14 and JFIF handled apart.
_DECODING_MARKERS = SOF_MARKERS | {DQT, DHT, DAC, DRI, SOS, DNL, ECS}

# FF followed by anything but a stuffed 00 or RSTm: a marker, or the start of a fill-byte run.
_MARKER_CANDIDATE = re.compile(rb"\xff[^\x00\xd0-\xd7]")
#: Where a run of fill bytes (0xFF) ends.
_NOT_FILL = re.compile(rb"[^\xff]")
#: Markers (segments, scans, stray stand-alone ones) one JPEG may have outside its entropy-coded
#: data. A camera's JPEG has a few dozen, a progressive one a few more; every one is walked
#: here, in Python, holding the GIL: 50 MB of empty COM segments took about a minute.
MAX_MARKERS = 4096
#: Scans one JPEG may have. libjpeg entropy-decodes every scan over every block of the image
#: whatever the scale of the decode, even a scan without data: 4000 empty AC scans (~90 KB)
#: behind a 12 MP frame header cost ~4 s of CPU in the decode proof, ~25 s at the 80 MP the
#: policy allows. Encoders write up to a few dozen (libjpeg's progression: 10; mozjpeg's
#: optimised ones more); libjpeg-turbo's own scan limit for untrusted input (TJPARAM_SCANLIMIT,
#: djpeg -maxscans) is there for the same reason.
MAX_SCANS = 100
#: Scan data is searched for marker candidates with numpy (when installed) in blocks of this
#: many bytes (cache-sized: the block's temporaries stay in L2), from this much data on.
_NP_BLOCK = 64 * 1024
_NP_MIN = 16 * 1024
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
class FrameComponent:
    """One component of the frame header (B.2.2): identifier, sampling factors, DQT slot."""

    id: int
    h: int
    v: int
    tq: int


@dataclass(frozen=True, slots=True)
class Frame:
    """The frame header (B.2.2) and its process (the SOFn code, Table B.1)."""

    marker: int
    precision: int
    width: int
    height: int
    components: tuple[FrameComponent, ...]

    @property
    def progressive(self) -> bool:
        return self.marker in PROGRESSIVE_SOF

    @property
    def lossless(self) -> bool:
        return self.marker in LOSSLESS_SOF

    @property
    def arithmetic(self) -> bool:
        return self.marker in ARITHMETIC_SOF


@dataclass(frozen=True, slots=True)
class Scan:
    """A scan header (B.2.3): component ids with their (DC, AC) table slots, Ss, Se, Ah, Al."""

    components: tuple[int, ...]
    tables: tuple[tuple[int, int], ...]
    ss: int
    se: int
    ah: int
    al: int


@dataclass(frozen=True, slots=True)
class JpegLayout:
    """The marker structure of one JPEG interchange-format stream (T.81 B.2.1).

    ``frame`` and ``scans`` are parsed when the walk ran with ``check_decoding``; the i-th
    ``Scan`` belongs to the i-th SOS segment."""

    segments: tuple[Segment, ...]
    width: int
    height: int
    eoi: int                 # offset of the EOI marker's FF
    trailer: int             # bytes after EOI
    extraneous: bool         # non-marker bytes between segments (skipped by decoders too)
    frame: Frame | None = None
    scans: tuple[Scan, ...] = ()


def walk(data: bytes, *, max_pixels: int | None = None, check_decoding: bool = False) -> JpegLayout:
    """Walk the markers of ``data`` from SOI to EOI (T.81 B.1.1, B.2.1).

    Raises :class:`UndecodableImage` for a stream that is structurally broken or truncated,
    and :class:`ImageTooLarge` as soon as the frame header claims more than ``max_pixels``,
    before any decoding, and for more than :data:`MAX_SCANS` scans (each costs a pass over the
    whole image in any decode). With ``check_decoding``, also for marker segments libjpeg would
    refuse (module docstring); the layout then carries the parsed frame and scan headers.
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != SOI:
        raise UndecodableImage("JPEG does not start with SOI")
    segments: list[Segment] = []
    width = height = 0
    pos = 2
    extraneous = False
    checker = _DecodingChecker(data) if check_decoding else None
    markers = scans = 0
    while True:
        if pos >= n:
            raise UndecodableImage("JPEG ends before EOI (truncated)")
        markers += 1
        if markers > MAX_MARKERS:
            raise UndecodableImage(f"JPEG has more than {MAX_MARKERS} markers outside its scans")
        if data[pos] != 0xFF:
            nxt = data.find(b"\xff", pos)
            if nxt < 0:
                raise UndecodableImage("JPEG ends before EOI (truncated)")
            extraneous, pos = True, nxt
            continue
        fill_end = _NOT_FILL.search(data, pos + 1)  # fill bytes (B.1.1.2), however many, at C speed
        code = fill_end.start() if fill_end is not None else n
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
        if checker is not None:
            checker.segment(marker, code, end)
        if marker == SOS:
            if not width:
                raise UndecodableImage("JPEG scan before the frame header")
            scans += 1
            if scans > MAX_SCANS:
                raise UndecodableImage(f"JPEG has more than {MAX_SCANS} scans")
            scan_end = _scan_end(data, end)
            segments.append(Segment(ECS, end, scan_end))
            pos = scan_end
        else:
            pos = end
    if not width or not any(s.marker == SOS for s in segments):
        raise UndecodableImage("JPEG has no frame header or no scan")
    return JpegLayout(tuple(segments), width, height, eoi=start, trailer=n - code - 1,
                      extraneous=extraneous, frame=checker.frame if checker else None,
                      scans=tuple(checker.scans) if checker else ())


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


@dataclass(frozen=True, slots=True)
class StrippedJpeg:
    """The outcome of :func:`strip_jpeg_segments`: the stored stream as its kept marker
    segments, in order, without SOI and EOI (``(marker, bytes)``; entropy-coded data as
    ``ECS``), so it can be hashed and written without being assembled in memory. ``frame`` and
    ``scans`` are set when the walk ran with ``check_decoding``."""

    segments: tuple[tuple[int, bytes | memoryview], ...]
    width: int
    height: int
    removed: tuple[str, ...]
    exif: ExifSummary | None
    frame: Frame | None
    scans: tuple[Scan, ...]

    def parts(self) -> list[bytes | memoryview]:
        """The stored stream in pieces: SOI, every segment, EOI."""
        return [b"\xff\xd8", *(part for _, part in self.segments), b"\xff\xd9"]

    @property
    def size(self) -> int:
        return 4 + sum(len(part) for _, part in self.segments)

    def join(self) -> bytes:
        return b"".join(self.parts())


def strip_jpeg(data: bytes, *, max_pixels: int | None = None, check_decoding: bool = False) -> Stripped:
    """Keep what decoding and colour need, drop every metadata segment (standards.md §5.3).

    Kept: JFIF APP0 (its thumbnail zeroed), APP2 ICC_PROFILE (its text tags rewritten in place:
    adapter.imaging.icc; dropped if they cannot be), APP14 Adobe and the marker
    segments decoding reads (SOFn, DQT, DHT, DAC, DRI, SOS) with the entropy-coded data.
    Dropped: APP1 Exif and XMP, APP2 MPF, APP13 Photoshop/IPTC, any other APPn, COM, DNL, the
    segments of reserved markers (RESn, JPG, JPGn) and of hierarchical DHP/EXP (libjpeg reads
    none of them: their payload could be anything), fill and extraneous bytes, and anything
    after EOI. An EXIF Orientation other than 1 comes back as a minimal APP1 Exif holding only
    0x0112, right after JFIF (or SOI).

    JFIF, Adobe APP14 and EXIF count as decoders read them: libjpeg decides the colour transform
    from the JFIF and Adobe markers it has met when it reaches the first SOS (the *last* Adobe
    APP14 before it), and Pillow reads EXIF only before it too. So the Adobe APP14 kept is the
    last one before the first scan, and a JFIF, Adobe or EXIF segment after it is dropped, not
    moved ahead of the scan, where it would change the decoded colours or the orientation.
    """
    stripped = strip_jpeg_segments(data, max_pixels=max_pixels, check_decoding=check_decoding)
    return Stripped(stripped.join(), stripped.width, stripped.height, stripped.removed, stripped.exif)


def strip_jpeg_segments(data: bytes, *, max_pixels: int | None = None,
                        check_decoding: bool = False, rewrite_icc: bool = True) -> StrippedJpeg:
    """:func:`strip_jpeg` without assembling the result: its segments are views into ``data``
    (which must stay unchanged while they are used). ``check_decoding`` is passed to
    :func:`walk`. ``rewrite_icc=False`` keeps a whole ICC profile as it is (its text tags not
    rewritten): the frame of a received DICOM object, whose object keeps it as received."""
    layout = walk(data, max_pixels=max_pixels, check_decoding=check_decoding)
    view = memoryview(data)
    removed: list[str] = []
    exif: ExifSummary | None = None
    jfif: bytes | None = None
    kept: list[tuple[int, bytes | memoryview] | None] = []
    adobe_at: int | None = None  # where in ``kept`` the Adobe APP14 libjpeg uses is
    scanned = False  # past the first SOS: what decoders read of the header is read
    icc_parts, icc_note = _icc_profile(view, layout.segments, rewrite=rewrite_icc)
    if icc_note is not None:
        removed.append(icc_note)
    for seg in layout.segments:
        payload = view[seg.start + 4:seg.end]
        marker = seg.marker
        if marker == APP0 and payload[:5] == _JFIF and jfif is None and len(payload) >= 14 and not scanned:
            jfif = _jfif_without_thumbnail(bytes(payload), removed)
        elif marker == APP1 and payload[:5] == _EXIF:
            removed.append("EXIF")
            if exif is None and not scanned:  # Pillow and browsers read EXIF before the first scan only
                exif = parse_exif(bytes(payload[6:]))
                removed.extend(exif.categories)
        elif marker == APP2 and payload[:12] == _ICC:
            part = icc_parts.get(seg.start)
            if part is not None:
                kept.append((marker, part))
        elif marker == APP14 and payload[:5] == _ADOBE and len(payload) >= _ADOBE_LENGTH and not scanned:
            if adobe_at is not None:  # libjpeg and Pillow take the transform of the last one
                kept[adobe_at] = None
                removed.append("APP14 Adobe overridden by a later one")
            adobe_at = len(kept)
            if len(payload) == _ADOBE_LENGTH:
                kept.append((marker, view[seg.start:seg.end]))
            else:  # its 12 bytes, not what follows them (libjpeg reads no more)
                kept.append((marker, _segment(APP14, bytes(payload[:_ADOBE_LENGTH]))))
                removed.append("data after APP14 Adobe")
        elif marker == DNL:
            removed.append("DNL")  # the height is in the frame header (DNL-defined heights are refused)
        elif marker in _DECODING_MARKERS:
            kept.append((marker, view[seg.start:seg.end]))
        else:  # APPn, COM, and what no decoder reads (reserved RESn, JPG, JPGn, DHP, EXP)
            removed.append(_segment_name(marker, payload))
        scanned = scanned or marker == SOS
    if layout.extraneous:
        removed.append("extraneous bytes between segments")
    if layout.trailer:
        removed.append("trailer after EOI")

    head: list[tuple[int, bytes | memoryview]] = []
    if jfif is not None:
        head.append((APP0, _segment(APP0, jfif)))
    if exif is not None and exif.orientation not in (None, 1):
        assert exif.orientation is not None
        head.append((APP1, _segment(APP1, b"Exif\x00\x00" + orientation_only_tiff(exif.orientation))))
    segments = tuple(head + [part for part in kept if part is not None])
    return StrippedJpeg(segments, layout.width, layout.height, tuple(dict.fromkeys(removed)), exif, layout.frame,
                        layout.scans)


def strip_jpeg_but_orientation(data: bytes) -> bytes:
    """What :func:`strip_jpeg_to_pixels_only` keeps, and the Orientation-only EXIF
    :func:`strip_jpeg` makes (an Orientation other than 1), after the JFIF (or SOI): no metadata
    but the orientation a viewer needs. This is what the pseudonymised view releases.

    An ICC profile is kept at ingest for care (colours), but its description, copyright and
    device tags are free text, and any tag it holds may be private: it can name a person, a
    device or a place (the DICOM copies drop the profile for the same reason). The JFIF is the
    de-identified copy's canonical one, not the uploader's version, density unit and densities,
    which no decoder needs for the pixels (as PNG's pHYs)."""
    exif = strip_jpeg_segments(data).exif
    pixels = strip_jpeg_to_pixels_only(data)
    if exif is None or exif.orientation in (None, 1):
        return pixels
    assert exif.orientation is not None
    at = 2 + (len(_segment(APP0, _CANONICAL_JFIF)) if pixels[2:4] == b"\xff\xe0" else 0)  # after SOI, JFIF
    return pixels[:at] + _segment(APP1, b"Exif\x00\x00" + orientation_only_tiff(exif.orientation)) + pixels[at:]


def strip_jpeg_to_pixels_only(data: bytes) -> bytes:
    """Keep only what decoding needs: SOI, DQT, DHT, DAC, DRI, SOFn, SOS with its entropy-coded
    data, EOI; plus APP14 Adobe (its transform flag decides the colour conversion) and, if the
    input had one, a canonical JFIF APP0 (libjpeg infers YCbCr from JFIF's presence, so removing
    it could change the decoded colours of some streams), each chosen as
    :func:`strip_jpeg_segments` chooses it. ICC, EXIF (Orientation included), DNL, every other
    APPn and COM are dropped."""
    layout = walk(data)
    view = memoryview(data)
    jfif = scanned = False
    adobe_at: int | None = None
    parts: list[memoryview | bytes | None] = [b"\xff\xd8"]
    for seg in layout.segments:
        payload = view[seg.start + 4:seg.end]
        if seg.marker == APP0 and payload[:5] == _JFIF and not jfif and len(payload) >= 14 and not scanned:
            jfif = True
            parts.insert(1, _segment(APP0, _CANONICAL_JFIF))
            adobe_at = None if adobe_at is None else adobe_at + 1
        elif seg.marker == APP14 and payload[:5] == _ADOBE and len(payload) >= _ADOBE_LENGTH and not scanned:
            if adobe_at is not None:  # the last one counts (strip_jpeg_segments)
                parts[adobe_at] = None
            adobe_at = len(parts)
            parts.append(_segment(APP14, bytes(payload[:_ADOBE_LENGTH])))
        elif seg.marker in _DECODING_MARKERS and seg.marker != DNL:
            parts.append(view[seg.start:seg.end])
        scanned = scanned or seg.marker == SOS
    parts.append(b"\xff\xd9")
    return b"".join(part for part in parts if part is not None)


@dataclass(frozen=True, slots=True)
class DecodeStream:
    """What a prefix decode proof hands to libjpeg (see :func:`decode_stream`).

    ``complete``: no entropy-coded byte was left out. ``dc_preview``: a progressive stream with
    its DC scans whole and its AC scans empty; decoded at 1/8 scale (DC coefficients only) it
    gives exactly the pixels of a full decode.
    """

    data: bytes
    complete: bool
    dc_preview: bool


def decode_stream(stripped: StrippedJpeg, *, budget: int, whole_up_to: int = 0,
                  dc_preview: bool = False) -> DecodeStream:
    """The stream of ``stripped`` (walked with ``check_decoding``) for a cheap decode proof:
    every marker segment kept in order, the entropy-coded data cut short.

    libjpeg then parses every table, frame and scan header (so it refuses what a full decode
    refuses: errors in entropy-coded data are only warnings for it) and meets each cut as a
    marker ending the segment early: it gives the rest of that scan zero coefficients (for
    Huffman coding a flat fill; arithmetic decoding makes noise of it).

    In this order: a progressive stream with ``dc_preview`` keeps its DC scans whole and its AC
    scans empty; a stream whose entropy-coded data is at most ``max(budget, whole_up_to)`` bytes
    is returned whole; otherwise the scans receive ``budget`` bytes in stream order, so a
    sequential scan decodes from the top down to where its bytes end. Cuts never split ``FF``
    from what follows.
    """
    frame, scans = stripped.frame, stripped.scans
    n_ecs = sum(1 for marker, _ in stripped.segments if marker == ECS)
    ecs_bytes = sum(len(part) for marker, part in stripped.segments if marker == ECS)
    dc_only = dc_preview and frame is not None and frame.progressive
    if frame is None or len(scans) != n_ecs or (ecs_bytes <= max(budget, whole_up_to) and not dc_only):
        return DecodeStream(stripped.join(), complete=True, dc_preview=False)
    parts: list[bytes | memoryview] = [b"\xff\xd8"]
    left, scan = budget, -1
    for marker, part in stripped.segments:
        if marker != ECS:
            if marker == SOS:
                scan += 1
            parts.append(part)
            continue
        length = len(part)
        if dc_only:
            keep = length if scans[scan].ss == 0 else 0
        else:
            keep = min(length, left)
            left -= keep
        if keep < length:
            while keep and part[keep - 1] == 0xFF:
                keep -= 1
        parts.append(part[:keep])
    parts.append(b"\xff\xd9")
    return DecodeStream(b"".join(parts), complete=False, dc_preview=dc_only)


def app_segments(data: bytes) -> Iterator[tuple[int, bytes]]:
    """``(marker, payload)`` of every APPn and COM segment; a helper for checks and tests."""
    layout = walk(data)
    for seg in layout.segments:
        if 0xE0 <= seg.marker <= 0xEF or seg.marker == COM:
            yield seg.marker, data[seg.start + 4:seg.end]


class _DecodingChecker:
    """What libjpeg-turbo (and Pillow's header parser) refuse fatally in marker segments, checked
    as the walk meets them, so a refusal names its reason and the decode proof may skip the
    entropy-coded data. Each check cites the libjpeg error it mirrors; nothing is refused that
    libjpeg decodes (e.g. a sequential scan using Huffman slot 0 or 1 without a DHT: libjpeg-turbo
    then uses the Annex K tables, as for Motion-JPEG frames)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.frame: Frame | None = None
        self.scans: list[Scan] = []
        self.quant: set[int] = set()
        self.huffman: set[tuple[int, int]] = set()   # (class 0 = DC / 1 = AC, slot)
        self.all_components_scanned = False

    def segment(self, marker: int, code: int, end: int) -> None:
        if marker in SOF_MARKERS:
            self._frame(marker, code, end)
        elif marker == DQT:
            self._dqt(code + 3, end)
        elif marker == DHT:
            self._dht(code + 3, end)
        elif marker == DRI:
            if end - code - 1 != 4:                                   # JERR_BAD_LENGTH
                raise UndecodableImage("JPEG DRI segment has the wrong length")
        elif marker == SOS:
            self._sos(code + 3, end)
        elif marker < 0xC0 or marker == 0xC8:                         # JERR_UNKNOWN_MARKER
            raise UndecodableImage(f"JPEG has a reserved marker 0xFF{marker:02X}")

    def _frame(self, marker: int, code: int, end: int) -> None:
        data = self.data
        if marker not in SUPPORTED_SOF:                               # JERR_SOF_UNSUPPORTED
            raise UndecodableImage(f"JPEG process SOF{marker - 0xC0} ({_SOF_NAMES[marker]}) is not supported")
        precision, height, width, count = struct.unpack_from(">BHHB", data, code + 3)
        if precision != 8:                                            # Pillow: "cannot handle n-bit layers"
            raise UndecodableImage(f"JPEG sample precision of {precision} bits is not supported (8 only)")
        if count not in (1, 3, 4):                                    # Pillow: "cannot handle n-layer images"
            raise UndecodableImage(f"JPEG with {count} components is not supported (1, 3 or 4)")
        components: list[FrameComponent] = []
        for i in range(count):
            cid, hv, tq = data[code + 9 + 3 * i:code + 12 + 3 * i]
            h, v = hv >> 4, hv & 15
            if not (1 <= h <= 4 and 1 <= v <= 4):                     # JERR_BAD_SAMPLING
                raise UndecodableImage(f"JPEG component {cid} has invalid sampling factors {h}x{v}")
            if any(c.id == cid for c in components):                  # JERR_DUPLICATE_COMPONENT
                raise UndecodableImage(f"JPEG frame header names component {cid} twice")
            components.append(FrameComponent(cid, h, v, tq))
        self.frame = Frame(marker, precision, width, height, tuple(components))

    def _dqt(self, pos: int, end: int) -> None:
        data = self.data
        # Pillow parses the DQTs before the first scan and wants whole tables; libjpeg (which
        # alone sees later ones) accepts a short last table, so only the index is checked there.
        whole_tables = not self.scans
        while pos < end:
            pq, tq = data[pos] >> 4, data[pos] & 15
            if tq > 3:                                                # JERR_DQT_INDEX
                raise UndecodableImage(f"JPEG DQT defines table {tq} (0..3 exist)")
            size = 1 + 64 * (2 if pq else 1)
            if whole_tables and pos + size > end:                     # Pillow: "bad quantization table marker"
                raise UndecodableImage("JPEG DQT segment is shorter than its tables")
            self.quant.add(tq)
            pos += size

    def _dht(self, pos: int, end: int) -> None:
        data = self.data
        while end - pos > 16:
            index = data[pos]
            if index not in (0x00, 0x01, 0x02, 0x03, 0x10, 0x11, 0x12, 0x13):   # JERR_DHT_INDEX
                raise UndecodableImage(f"JPEG DHT defines an invalid table 0x{index:02X}")
            count = sum(data[pos + 1:pos + 17])
            if count > 256 or count > end - pos - 17:                # JERR_BAD_HUFF_TABLE
                raise UndecodableImage("JPEG DHT table has more codes than it may or than it holds")
            self.huffman.add((index >> 4, index & 15))
            pos += 17 + count
        if pos != end:                                                # JERR_BAD_LENGTH
            raise UndecodableImage("JPEG DHT segment has the wrong length")

    def _sos(self, pos: int, end: int) -> None:
        data, frame = self.data, self.frame
        if frame is None:                                             # JERR_SOS_NO_SOF
            raise UndecodableImage("JPEG scan before the frame header")
        count = data[pos]
        if not 1 <= count <= 4 or end - pos != 4 + 2 * count:         # JERR_BAD_LENGTH
            raise UndecodableImage("JPEG scan header has the wrong length for its component count")
        ids: list[int] = []
        tables: list[tuple[int, int]] = []
        for i in range(count):
            cid, tdta = data[pos + 1 + 2 * i], data[pos + 2 + 2 * i]
            if cid in ids or not any(c.id == cid for c in frame.components):   # JERR_BAD_COMPONENT_ID
                raise UndecodableImage(f"JPEG scan names component {cid}, which the frame header lacks "
                                       "or the scan names twice")
            ids.append(cid)
            tables.append((tdta >> 4, tdta & 15))
        ss, se, ahal = data[pos + 1 + 2 * count:pos + 4 + 2 * count]
        scan = Scan(tuple(ids), tuple(tables), ss, se, ahal >> 4, ahal & 15)
        if self.all_components_scanned and not frame.progressive:    # JERR_EOI_EXPECTED
            raise UndecodableImage("JPEG has another scan after a sequential scan of every component")
        components = [c for c in frame.components if c.id in ids]
        if count > 1 and sum(c.h * c.v for c in components) > 10:    # JERR_BAD_MCU_SIZE
            raise UndecodableImage("JPEG scan has more than 10 blocks per MCU")
        if frame.progressive:
            self._progression(scan)
        if not frame.lossless:
            for c in components:                                      # JERR_NO_QUANT_TABLE
                if c.tq not in self.quant:
                    raise UndecodableImage(f"JPEG component {c.id} uses quantization table {c.tq}, "
                                           "which no DQT before its scan defines")
        if not frame.arithmetic and not frame.lossless:
            self._huffman_tables(scan, frame)
        if not self.scans and count == len(frame.components):
            self.all_components_scanned = True
        self.scans.append(scan)

    @staticmethod
    def _progression(scan: Scan) -> None:
        """G.1.1.1.1 as libjpeg checks it (JERR_BAD_PROGRESSION)."""
        bad = (scan.se != 0) if scan.ss == 0 else (scan.ss > scan.se or scan.se > 63 or len(scan.components) != 1)
        if bad or (scan.ah != 0 and scan.al != scan.ah - 1) or scan.al > 13:
            raise UndecodableImage(f"JPEG progressive scan has invalid parameters Ss={scan.ss} Se={scan.se} "
                                   f"Ah={scan.ah} Al={scan.al}")

    def _huffman_tables(self, scan: Scan, frame: Frame) -> None:
        """Every Huffman table the scan decodes with must be defined (JERR_NO_HUFF_TABLE). A
        sequential scan may use slot 0 or 1 undefined: libjpeg-turbo loads the Annex K tables
        there. A progressive DC scan needs its DC tables only on the first pass (Ah = 0); an AC
        scan always needs its AC table."""
        sequential = not frame.progressive
        for td, ta in scan.tables:
            needed = []
            if sequential or (scan.ss == 0 and scan.ah == 0):
                needed.append((0, td))
            if sequential or scan.ss > 0:
                needed.append((1, ta))
            for cls, slot in needed:
                if slot > 3 or ((cls, slot) not in self.huffman and not (sequential and slot <= 1)):
                    kind = "DC" if cls == 0 else "AC"
                    raise UndecodableImage(f"JPEG scan uses {kind} Huffman table {slot}, which no DHT before "
                                           "it defines")


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
    while True:
        i = _marker_candidate(data, pos)
        if i < 0:
            raise UndecodableImage("JPEG scan data ends before EOI (truncated)")
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


def _marker_candidate(data: bytes, pos: int) -> int:
    """Offset of the first ``FF`` at or after ``pos`` followed by a byte other than ``00`` and
    ``D0``-``D7`` (``_MARKER_CANDIDATE``), or -1.

    The regex engine looks at every byte in a loop that holds the GIL (~1 ms for 3 MB of scan
    data); numpy compares whole blocks with vector instructions and releases the GIL while it
    does (~0.4 ms). Both give the same answer (tests compare them)."""
    if _np is None or len(data) - pos < _NP_MIN:
        found = _MARKER_CANDIDATE.search(data, pos)
        return -1 if found is None else found.start()
    return _marker_candidate_np(data, pos, _NP_BLOCK)


def _marker_candidate_np(data: bytes, pos: int, block: int) -> int:
    np = _np
    arr = np.frombuffer(data, dtype=np.uint8)
    n = len(arr)
    ff, zero, rst0, seven = np.uint8(0xFF), np.uint8(0), np.uint8(0xD0), np.uint8(7)
    start = pos
    while start < n - 1:
        stop = min(n, start + block + 1)  # one byte of overlap: a pair may straddle two blocks
        window = arr[start:stop]
        second = window[1:]
        hit = window[:-1] == ff
        hit &= second != zero
        hit &= (second - rst0) > seven  # uint8 arithmetic wraps: D0-D7 become 0-7
        i = int(hit.argmax())
        if hit[i]:
            return start + i
        start = stop - 1
    return -1


#: APP14 Adobe (DCT Filters, Adobe TN 5116): "Adobe", version (2), flags0 (2), flags1 (2), transform (1).
_ADOBE_LENGTH = 12
#: ICC.1 §7.2: a profile header is 128 bytes, its signature "acsp" at offset 36.
_ICC_HEADER = 128


_NO_ICC_PROFILE = "APP2 ICC_PROFILE that is no ICC profile"


def _icc_profile(view: memoryview, segments: tuple[Segment, ...], *,
                 rewrite: bool = True) -> tuple[dict[int, bytes | memoryview], str | None]:
    """What the stored stream keeps of the APP2 ICC_PROFILE segments, by where each starts, and
    what to list as removed. The chunks (ICC.1 Annex B.4: sequence number, count, data) must make
    one profile: numbered 1..count, each once, their data as long as the profile header says, with
    its "acsp" signature; anything else is no profile (dropped: arbitrary bytes behind the
    ICC_PROFILE prefix would otherwise be kept). A profile's text is rewritten
    (adapter.imaging.icc, privacy review F3), chunk by chunk in place: each segment keeps its
    number and length, only its data changes; one that cannot be rewritten is dropped."""
    chunks: dict[int, tuple[Segment, int]] = {}
    count = None
    for seg in segments:
        payload = view[seg.start + 4:seg.end]
        if seg.marker != APP2 or payload[:12] != _ICC:
            continue
        if len(payload) < 14:
            return {}, _NO_ICC_PROFILE
        number, total = payload[12], payload[13]
        if count not in (None, total) or number in chunks or not 1 <= number <= total:
            return {}, _NO_ICC_PROFILE
        count = total
        chunks[number] = (seg, len(payload) - 14)
    if count is None:
        return {}, None  # none: nothing to keep or drop
    if len(chunks) != count:
        return {}, _NO_ICC_PROFILE
    ordered = [chunks[n][0] for n in range(1, count + 1)]
    profile = b"".join(bytes(view[seg.start + 18:seg.end]) for seg in ordered)
    if not icc_profile_is_whole(profile):
        return {}, _NO_ICC_PROFILE
    if not rewrite:
        return {seg.start: view[seg.start:seg.end] for seg in ordered}, None
    cleaned = icc_profile_without_text(profile)
    if cleaned is None:
        return {}, NOT_REWRITABLE
    if cleaned == profile:
        return {seg.start: view[seg.start:seg.end] for seg in ordered}, None
    parts: dict[int, bytes | memoryview] = {}
    pos = 0
    for number, seg in enumerate(ordered, 1):
        length = chunks[number][1]
        parts[seg.start] = _segment(APP2, _ICC + bytes((number, count)) + cleaned[pos:pos + length])
        pos += length
    return parts, TEXT_REWRITTEN


def icc_profile_is_whole(profile: bytes) -> bool:
    """An ICC profile (ICC.1 §7.2): a 128-byte header with the "acsp" signature, its declared
    size within the data, and nothing after that size but zero padding (some writers pad; text
    there would ride along)."""
    if len(profile) < _ICC_HEADER or profile[36:40] != b"acsp":
        return False
    size = struct.unpack_from(">I", profile, 0)[0]
    return _ICC_HEADER <= size <= len(profile) and not profile[size:].strip(b"\x00")


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
    if not 0xE0 <= marker <= 0xEF:
        return f"reserved marker 0xFF{marker:02X} segment"
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
