"""adapter.imaging.unlinkable: each view's copy is another file than the stored one and the other
view's, with the same pixels; a copy made again from a released copy is that copy."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from adapter.imaging.unlinkable import DEIDENTIFIED_COPY, PSEUDONYMISED_COPY, unlinkable_copy

COPIES = (DEIDENTIFIED_COPY, PSEUDONYMISED_COPY)


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 90)).save(out, "JPEG")
    return out.getvalue()


def _png(chunk_size: int | None = None) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 200, 90)).save(out, "PNG")
    data = out.getvalue()
    if chunk_size is None:
        return data
    # re-split the image data into IDAT chunks of ``chunk_size`` bytes
    start = data.index(b"IDAT") - 4
    length = struct.unpack_from(">I", data, start)[0]
    stream, end = data[start + 8:start + 8 + length], start + 12 + length

    def chunk(payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + b"IDAT" + payload + struct.pack(">I", zlib.crc32(b"IDAT" + payload))

    return data[:start] + b"".join(chunk(stream[i:i + chunk_size])
                                   for i in range(0, len(stream), chunk_size)) + data[end:]


def _pixels(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGBA").tobytes()


def _fill_before_sos(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return len(data[:sos]) - len(data[:sos].rstrip(b"\xff"))


@pytest.mark.parametrize(("make", "content_type"), [(_jpeg, "image/jpeg"), (_png, "image/png"),
                                                    (lambda: _png(7), "image/png")])
def test_each_view_has_its_own_file_of_the_same_pixels(make: object, content_type: str) -> None:
    stored = make()  # type: ignore[operator]
    train, hresch = (unlinkable_copy(stored, content_type, c, source=stored, unlike=stored) for c in COPIES)
    assert len({stored, train, hresch}) == 3
    assert _pixels(train) == _pixels(stored) == _pixels(hresch)
    # made again from the released copy (a rendered frame): the very same bytes
    for copy, released in zip(COPIES, (train, hresch), strict=True):
        assert unlinkable_copy(released, content_type, copy, source=released) == released


def test_jpeg_fill_bytes_before_the_first_scan_one_or_three_and_two_or_four() -> None:
    stored = _jpeg()
    assert _fill_before_sos(unlinkable_copy(stored, "image/jpeg", DEIDENTIFIED_COPY, source=stored)) == 1
    assert _fill_before_sos(unlinkable_copy(stored, "image/jpeg", PSEUDONYMISED_COPY, source=stored)) == 2


def test_a_stored_image_already_in_a_views_form_gets_the_views_other_form() -> None:
    """A stored JPEG with one fill byte before its scan would be the de-identified copy itself:
    that copy takes three instead; the pseudonymised one still two."""
    plain = _jpeg()
    sos = plain.index(b"\xff\xda")
    stored = plain[:sos] + b"\xff" + plain[sos:]
    train = unlinkable_copy(plain, "image/jpeg", DEIDENTIFIED_COPY, source=stored, unlike=stored)
    hresch = unlinkable_copy(plain, "image/jpeg", PSEUDONYMISED_COPY, source=stored, unlike=stored)
    assert len({stored, train, hresch}) == 3
    assert (_fill_before_sos(train), _fill_before_sos(hresch)) == (3, 2)
    assert _pixels(train) == _pixels(stored)


def test_what_is_no_walkable_image_is_left_as_it_is() -> None:
    for data, content_type in ((b"%PDF-1.7 ...", "application/pdf"), (b"\xff\xd8\xff\xe0\x00", "image/jpeg"),
                               (b"\x89PNG\r\n\x1a\n\x00\x00", "image/png")):
        assert unlinkable_copy(data, content_type, DEIDENTIFIED_COPY, source=data, unlike=data) == data
