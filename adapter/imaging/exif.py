"""A small, defensive EXIF (TIFF) reader and the Orientation-only EXIF we write back.

We only *read* EXIF to report what is being removed (by category, never by value) and to
hand back the few facts the caller may choose to keep (capture time, make, model,
orientation). Everything is dropped from the stored bytes; see standards.md §5.1.

The layout is TIFF 6.0 §2 ("Structure": 8-byte header, then Image File Directories of
12-byte entries) as profiled by CIPA DC-008 (Exif 2.32/3.0) §4.6. A malformed directory never
raises: the parser stops following it, the whole EXIF block is dropped anyway.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from adapter.text import is_digits

# Tag numbers: CIPA DC-008 §4.6.4-4.6.6 and TIFF 6.0 Appendix A.
ORIENTATION = 0x0112
_MAKE, _MODEL, _SOFTWARE = 0x010F, 0x0110, 0x0131
_DATETIME, _DATETIME_ORIGINAL, _DATETIME_DIGITIZED = 0x0132, 0x9003, 0x9004
_OFFSET_TIME, _OFFSET_TIME_ORIGINAL, _OFFSET_TIME_DIGITIZED = 0x9010, 0x9011, 0x9012
_SUBSEC_TIME, _SUBSEC_TIME_ORIGINAL, _SUBSEC_TIME_DIGITIZED = 0x9290, 0x9291, 0x9292
_EXIF_IFD, _GPS_IFD, _INTEROP_IFD = 0x8769, 0x8825, 0xA005

# Categories reported in ImageFacts.removed, in this order. Values are never reported.
_CATEGORIES: tuple[tuple[str, frozenset[int]], ...] = (
    ("EXIF GPS", frozenset({_GPS_IFD})),
    ("EXIF capture time", frozenset({_DATETIME, _DATETIME_ORIGINAL, _DATETIME_DIGITIZED, _OFFSET_TIME,
                                     _OFFSET_TIME_ORIGINAL, _OFFSET_TIME_DIGITIZED, _SUBSEC_TIME,
                                     _SUBSEC_TIME_ORIGINAL, _SUBSEC_TIME_DIGITIZED})),
    ("EXIF device make/model", frozenset({_MAKE, _MODEL, _SOFTWARE, 0xA433, 0xA434})),  # + LensMake/Model
    ("EXIF serial numbers", frozenset({0xA431, 0xA435, 0xC62F})),
    ("EXIF owner name", frozenset({0xA430})),
    ("EXIF artist", frozenset({0x013B})),
    ("EXIF copyright", frozenset({0x8298})),
    ("EXIF free text", frozenset({0x010E, 0x9286, 0x9C9B, 0x9C9C, 0x9C9D, 0x9C9E, 0x9C9F})),
    ("EXIF unique ID", frozenset({0xA420})),
    ("EXIF MakerNote", frozenset({0x927C})),
)

# TIFF field types -> size in bytes of one value (TIFF 6.0 §2, Exif adds none; 13 = IFD).
_TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_MAX_ENTRIES = 4096
_MAX_IFDS = 16
_MAX_TEXT = 128


@dataclass(frozen=True, slots=True)
class ExifSummary:
    """What an EXIF block held: a few values the caller may keep, and category names."""

    orientation: int | None
    capture_time: datetime | None
    make: str | None
    model: str | None
    categories: tuple[str, ...]


@dataclass(slots=True)
class _Ifd:
    tags: set[int]
    values: dict[int, bytes]          # raw value bytes of the tags we read
    pointers: dict[int, int]          # sub-IFD tag -> offset
    next_offset: int


_WANTED = frozenset({ORIENTATION, _MAKE, _MODEL, _DATETIME_ORIGINAL, _OFFSET_TIME_ORIGINAL,
                     _SUBSEC_TIME_ORIGINAL})


def parse_exif(tiff: bytes) -> ExifSummary:
    """Summarise a TIFF-structured EXIF block (the bytes after ``Exif\\0\\0`` in a JPEG APP1,
    or the whole payload of a PNG eXIf chunk).

    Follows IFD0, the Exif and GPS sub-IFDs (0x8769, 0x8825) and IFD1 (the thumbnail
    directory, reached through IFD0's next-IFD offset). Cycles and out-of-range offsets end
    the walk quietly.
    """
    if len(tiff) < 8 or tiff[:4] not in (b"II*\x00", b"MM\x00*"):
        return ExifSummary(None, None, None, None, ())
    endian = "<" if tiff[:2] == b"II" else ">"
    seen: set[int] = set()
    ifd0 = _read_ifd(tiff, endian, struct.unpack_from(endian + "I", tiff, 4)[0], seen)
    if ifd0 is None:
        return ExifSummary(None, None, None, None, ())
    tags = set(ifd0.tags)
    values = dict(ifd0.values)
    for pointer in (_EXIF_IFD, _GPS_IFD):
        sub = _read_ifd(tiff, endian, ifd0.pointers.get(pointer, 0), seen)
        if sub is not None:
            tags |= sub.tags
            values.update({k: v for k, v in sub.values.items() if k not in values})
    ifd1 = _read_ifd(tiff, endian, ifd0.next_offset, seen)

    categories = [name for name, members in _CATEGORIES if tags & members]
    if ifd1 is not None:  # IFD1 exists only to describe the thumbnail (CIPA DC-008 §4.5.2)
        categories.insert(1 if "EXIF GPS" in categories else 0, "EXIF thumbnail")

    orientation = _short(values.get(ORIENTATION), endian)
    return ExifSummary(
        orientation=orientation if orientation is not None and 1 <= orientation <= 8 else None,
        capture_time=_capture_time(values),
        make=_text(values.get(_MAKE)),
        model=_text(values.get(_MODEL)),
        categories=tuple(categories),
    )


def orientation_only_tiff(orientation: int) -> bytes:
    """A complete big-endian TIFF/EXIF structure holding only IFD0 with Orientation (0x0112).

    Built by hand so nothing else (GPS, serials, owner, thumbnail) can ride along:
    header ``MM\\0*`` + offset 8, one entry (tag 0x0112, SHORT, count 1, value left-justified
    in the 4-byte field per TIFF 6.0 §2), next-IFD offset 0 (no IFD1, so no thumbnail).
    """
    if not 1 <= orientation <= 8:
        raise ValueError(f"EXIF Orientation must be 1..8, not {orientation}")
    return b"MM\x00*" + struct.pack(">IHHHIHHI", 8, 1, ORIENTATION, 3, 1, orientation, 0, 0)


def _read_ifd(tiff: bytes, endian: str, offset: int, seen: set[int]) -> _Ifd | None:
    if offset < 8 or offset + 2 > len(tiff) or offset in seen or len(seen) >= _MAX_IFDS:
        return None
    seen.add(offset)
    count = struct.unpack_from(endian + "H", tiff, offset)[0]
    if count == 0 or count > _MAX_ENTRIES:
        return None
    end = offset + 2 + 12 * count
    if end > len(tiff):
        count = (len(tiff) - offset - 2) // 12  # keep the entries that are there
        end = offset + 2 + 12 * count
    ifd = _Ifd(tags=set(), values={}, pointers={}, next_offset=0)
    for i in range(count):
        tag, typ, n = struct.unpack_from(endian + "HHI", tiff, offset + 2 + 12 * i)
        ifd.tags.add(tag)
        if tag in (_EXIF_IFD, _GPS_IFD, _INTEROP_IFD):
            ifd.pointers[tag] = struct.unpack_from(endian + "I", tiff, offset + 10 + 12 * i)[0]
        elif tag in _WANTED and typ in _TYPE_SIZES:
            size = _TYPE_SIZES[typ] * n
            if size <= 4:
                start = offset + 10 + 12 * i
            else:
                start = struct.unpack_from(endian + "I", tiff, offset + 10 + 12 * i)[0]
            if size <= 1024 and start + size <= len(tiff):
                ifd.values[tag] = tiff[start:start + size]
    if end + 4 <= len(tiff):
        ifd.next_offset = struct.unpack_from(endian + "I", tiff, end)[0]
    return ifd


def _short(raw: bytes | None, endian: str) -> int | None:
    if raw is None or len(raw) < 2:
        return None
    value: int = struct.unpack_from(endian + "H", raw, 0)[0]
    return value


def _text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    text = raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace").strip()
    return text[:_MAX_TEXT] or None


def _capture_time(values: dict[int, bytes]) -> datetime | None:
    """DateTimeOriginal ``YYYY:MM:DD HH:MM:SS`` (Exif §4.6.5), with SubsecTimeOriginal as
    fraction and OffsetTimeOriginal ``±HH:MM`` as the zone when present (else naive)."""
    text = _text(values.get(_DATETIME_ORIGINAL))
    if text is None:
        return None
    try:
        moment = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    subsec = _text(values.get(_SUBSEC_TIME_ORIGINAL))
    if subsec and is_digits(subsec):
        moment = moment.replace(microsecond=int(subsec[:6].ljust(6, "0")))
    offset = _text(values.get(_OFFSET_TIME_ORIGINAL))
    if offset and len(offset) == 6 and offset[0] in "+-" and offset[3] == ":" \
            and is_digits(offset[1:3]) and is_digits(offset[4:6]):
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        if delta < timedelta(hours=24):
            moment = moment.replace(tzinfo=timezone(-delta if offset[0] == "-" else delta))
    return moment
