"""The JPEG stream for DICOM pixel data (adapter.imaging.frame): one walk, the same bytes as
strip_jpeg without EXIF, and ``prefix`` exactly when those bytes are the input's beginning."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from PIL import Image

from adapter.errors import UndecodableImage
from adapter.imaging.frame import encapsulated_jpeg, jpeg_for_encapsulation
from adapter.imaging.jpeg import APP1, strip_jpeg, walk

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def reference(data: bytes) -> bytes:
    """strip_jpeg, then every APP1 Exif (the Orientation-only one strip_jpeg may write) left
    out: the definition jpeg_for_encapsulation had as two walks."""
    stripped = strip_jpeg(data).data
    parts = [b"\xff\xd8"]
    for seg in walk(stripped).segments:
        if seg.marker == APP1 and stripped[seg.start + 4:seg.start + 9] == b"Exif\x00":
            continue
        parts.append(stripped[seg.start:seg.end])
    return b"".join(parts) + b"\xff\xd9"


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def plain_jpeg() -> bytes:
    """A baseline JPEG with JFIF only (Pillow's default), i.e. one that needs no cut."""
    buf = io.BytesIO()
    Image.new("RGB", (48, 32), (200, 40, 90)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def insert_before(data: bytes, marker: bytes, extra: bytes) -> bytes:
    at = data.index(marker)
    return data[:at] + extra + data[at:]


def variants() -> list[tuple[str, bytes, bool]]:
    """(name, stream, whether the result is the stream's beginning)."""
    plain = plain_jpeg()
    jfif_end = 2 + struct.unpack(">H", plain[4:6])[0] + 2
    return [
        ("plain", plain, True),
        ("pad byte after EOI", plain + b"\x00", True),
        ("trailer after EOI", plain + b"trailer", True),
        ("comment", insert_before(plain, b"\xff\xdb", segment(0xFE, b"hello")), False),
        ("exif", insert_before(plain, b"\xff\xdb", segment(APP1, b"Exif\x00\x00" + b"MM\x00*" + b"\x00" * 8)), False),
        ("fill bytes before a marker", insert_before(plain, b"\xff\xda", b"\xff"), False),
        ("stray restart marker", plain[:2] + b"\xff\xd0" + plain[2:], False),
        ("JFIF not first", plain[:2] + segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01") + plain[2:jfif_end]
         + plain[jfif_end:], False),
        ("wound.jpg", (SAMPLES / "wound.jpg").read_bytes(), False),
        ("document.jpg", (SAMPLES / "document.jpg").read_bytes(), False),
        ("tiny.jpg", (SAMPLES / "tiny.jpg").read_bytes(), False),
    ]


@pytest.mark.parametrize(("name", "data", "prefix"), variants(), ids=[v[0] for v in variants()])
def test_one_walk_gives_the_same_stream(name: str, data: bytes, prefix: bool) -> None:
    expected = reference(data)
    plan = encapsulated_jpeg(data)
    assert jpeg_for_encapsulation(data) == expected == plan.join()
    assert plan.size == len(expected)
    assert plan.prefix is prefix
    if plan.prefix:
        assert data[:plan.size] == expected


def test_a_prefix_plan_refers_to_the_input_without_copying() -> None:
    data = plain_jpeg() + b"\x00"
    plan = encapsulated_jpeg(data)
    assert plan.prefix and plan.size == len(data) - 1
    assert any(isinstance(part, memoryview) and part.obj is data for part in plan.parts)


def test_a_memoryview_is_accepted() -> None:
    data = plain_jpeg()
    assert encapsulated_jpeg(memoryview(data)).join() == reference(data)  # type: ignore[arg-type]


def test_a_broken_stream_is_refused() -> None:
    data = plain_jpeg()
    with pytest.raises(UndecodableImage):
        encapsulated_jpeg(data[:len(data) // 2])
    with pytest.raises(UndecodableImage):
        encapsulated_jpeg(b"not a jpeg at all")


def test_frame_info_reads_the_colour_signalling_as_libjpeg_does() -> None:
    """Fuzzing review: the colour model was taken from the first Adobe APP14 anywhere and from a
    JFIF APP0 anywhere, but libjpeg takes the last Adobe APP14 before the first scan and looks at
    nothing after it (jdapimin.c default_decompress_parms runs at the first SOS)."""
    from adapter.imaging.frame import jpeg_frame_info

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 90)).save(buf, "JPEG", progressive=True)
    parts = [buf.getvalue()[s.start:s.end] for s in walk(buf.getvalue()).segments if s.marker != 0xE0]
    ycbcr, rgb = (segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00" + bytes([t])) for t in (1, 0))
    first_scan = next(i for i, part in enumerate(parts) if part[:2] == b"\xff\xda") + 2
    jfif = segment(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00")
    crafted = b"\xff\xd8" + ycbcr + rgb + b"".join(parts[:first_scan]) + jfif + ycbcr \
        + b"".join(parts[first_scan:]) + b"\xff\xd9"
    info = jpeg_frame_info(crafted)
    assert (info.jfif, info.adobe_transform, info.colour) == (False, 0, "RGB")
    with Image.open(io.BytesIO(crafted)) as im:
        assert im.info["adobe_transform"] == 0  # Pillow reads it so too


def test_encapsulated_jpeg_reads_the_frame_header_of_the_walk() -> None:
    """The frame header (T.81 B.2.2: SOFn, P, Y, X, Nf) comes with the walk the ingest does of
    every frame anyway, so checking it against the Image Pixel module costs no second walk
    (finding 3 of the DICOM review)."""
    import io

    from PIL import Image

    from adapter.imaging.frame import FrameHeader

    for mode, save, expected in (("RGB", {}, FrameHeader(0xC0, 8, 48, 64, 3)),
                                 ("L", {"progressive": True}, FrameHeader(0xC2, 8, 48, 64, 1))):
        buffer = io.BytesIO()
        Image.new(mode, (64, 48)).save(buffer, "JPEG", **save)
        assert encapsulated_jpeg(buffer.getvalue()).header == expected
