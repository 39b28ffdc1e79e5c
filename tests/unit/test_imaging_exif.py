"""The EXIF reader (category names, capture time, orientation) and the Orientation-only EXIF."""

from __future__ import annotations

import struct
from datetime import datetime, timedelta, timezone

import pytest
from PIL import ExifTags, Image

from adapter.errors import UnsupportedMediaType
from adapter.imaging import orientation_only_tiff, parse_exif, sniff_content_type

pytestmark = pytest.mark.unit


def exif(ifd0: dict[int, object] | None = None, exif_ifd: dict[int, object] | None = None,
         gps: dict[int, object] | None = None) -> bytes:
    """TIFF bytes (no ``Exif\\0\\0`` prefix) written by Pillow."""
    e = Image.Exif()
    for tag, value in (ifd0 or {}).items():
        e[tag] = value
    for tag, value in (exif_ifd or {}).items():
        e.get_ifd(ExifTags.IFD.Exif)[tag] = value
    for tag, value in (gps or {}).items():
        e.get_ifd(ExifTags.IFD.GPSInfo)[tag] = value
    return e.tobytes()[6:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_only_tiff_round_trips(orientation: int) -> None:
    tiff = orientation_only_tiff(orientation)
    assert len(tiff) == 26
    loaded = Image.Exif()
    loaded.load(b"Exif\x00\x00" + tiff)
    assert dict(loaded) == {ExifTags.Base.Orientation: orientation}
    assert loaded.get_ifd(ExifTags.IFD.IFD1) == {}
    summary = parse_exif(tiff)
    assert summary.orientation == orientation and summary.categories == ()


@pytest.mark.parametrize("bad", [0, 9, -1])
def test_orientation_only_tiff_rejects_invalid_values(bad: int) -> None:
    with pytest.raises(ValueError):
        orientation_only_tiff(bad)


def test_categories_name_what_is_there_and_nothing_else() -> None:
    summary = parse_exif(exif({ExifTags.Base.Orientation: 1, ExifTags.Base.Copyright: "(c) someone"},
                              {ExifTags.Base.BodySerialNumber: "X1", ExifTags.Base.MakerNote: b"\x01\x02"}))
    assert summary.categories == ("EXIF serial numbers", "EXIF copyright", "EXIF MakerNote")
    assert parse_exif(exif({ExifTags.Base.Orientation: 1})).categories == ()
    assert parse_exif(exif(gps={ExifTags.GPS.GPSLatitudeRef: "N"})).categories == ("EXIF GPS",)
    xp_author = exif({ExifTags.Base.XPAuthor: "Jane".encode("utf-16-le")})
    assert parse_exif(xp_author).categories == ("EXIF free text",)


def test_capture_time_naive_aware_and_subseconds() -> None:
    naive = parse_exif(exif(exif_ifd={ExifTags.Base.DateTimeOriginal: "2023:12:31 23:59:58"}))
    assert naive.capture_time == datetime(2023, 12, 31, 23, 59, 58)
    aware = parse_exif(exif(exif_ifd={ExifTags.Base.DateTimeOriginal: "2023:12:31 23:59:58",
                                      ExifTags.Base.OffsetTimeOriginal: "-05:30",
                                      ExifTags.Base.SubsecTimeOriginal: "25"}))
    assert aware.capture_time == datetime(2023, 12, 31, 23, 59, 58, 250000,
                                          tzinfo=timezone(-timedelta(hours=5, minutes=30)))
    blank = parse_exif(exif(exif_ifd={ExifTags.Base.DateTimeOriginal: "0000:00:00 00:00:00"}))
    assert blank.capture_time is None and blank.categories == ("EXIF capture time",)


@pytest.mark.parametrize(("subsec", "offset"), [("²", "+01:00"), ("25", "+0²:00"), ("①", "-0٣:00"), ("25", "+01:00")])
def test_digits_of_other_kinds_are_not_read_as_numbers(subsec: str, offset: str) -> None:
    """SubsecTimeOriginal and OffsetTimeOriginal with ², ① or Arabic-Indic digits, which
    str.isdigit takes and int() refuses (or reads): ignored, never a ValueError (a server error
    on ingest)."""
    # as UTF-8 bytes: Pillow writes a str tag as ASCII, with "?" for anything else
    summary = parse_exif(exif(exif_ifd={ExifTags.Base.DateTimeOriginal: "2023:12:31 23:59:58",
                                        ExifTags.Base.OffsetTimeOriginal: offset.encode(),
                                        ExifTags.Base.SubsecTimeOriginal: subsec.encode()}))
    assert summary.capture_time is not None
    assert summary.capture_time.replace(microsecond=0, tzinfo=None) == datetime(2023, 12, 31, 23, 59, 58)
    assert summary.capture_time.microsecond == (250000 if subsec == "25" else 0)
    if offset == "+01:00":
        assert summary.capture_time.utcoffset() == timedelta(hours=1)  # bytes are read as the strings were
    else:
        assert summary.capture_time.tzinfo is None


def test_make_and_model() -> None:
    summary = parse_exif(exif({ExifTags.Base.Make: "Maker", ExifTags.Base.Model: "Model 7"}))
    assert (summary.make, summary.model) == ("Maker", "Model 7")


@pytest.mark.parametrize("garbage", [
    b"", b"MM\x00*", b"XX\x00*\x00\x00\x00\x08", b"II*\x00\xff\xff\xff\x7f",
    b"MM\x00*\x00\x00\x00\x08\xff\xff" + bytes(30),
    # IFD0 whose next-IFD offset points back at itself (a cycle) and a sub-IFD pointing out of range.
    b"MM\x00*\x00\x00\x00\x08\x00\x01" + struct.pack(">HHII", 0x8769, 4, 1, 10_000) + b"\x00\x00\x00\x08",
])
def test_malformed_exif_never_raises(garbage: bytes) -> None:
    summary = parse_exif(garbage)
    assert summary.orientation is None and summary.capture_time is None


def test_out_of_range_orientation_is_ignored() -> None:
    assert parse_exif(exif({ExifTags.Base.Orientation: 9})).orientation is None


def test_sniffing_uses_magic_bytes_only() -> None:
    assert sniff_content_type(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff_content_type(b"\x89PNG\r\n\x1a\n\x00") == "image/png"
    for data in (b"\xff\xd8", b"GIF89a", b"<svg", b"RIFF\x00\x00\x00\x00WEBP", b"\x00\x00\x00\x18ftypheic"):
        with pytest.raises(UnsupportedMediaType):
            sniff_content_type(data)
