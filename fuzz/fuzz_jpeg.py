"""Fuzz the JPEG marker walk and its metadata surgery (adapter.imaging.jpeg, adapter.imaging.frame).

Contract: every input is stripped or refused with an AdapterError. Invariants of a stripped
stream: it walks; it holds no metadata segment (COM, APPn other than a thumbnail-free JFIF, the
Orientation-only EXIF, a whole ICC profile and Adobe's 12 bytes; nothing after EOI); stripping it
again changes nothing; ``check_decoding`` only refuses, never changes the result; Pillow decodes
it to the same pixels as the input whenever it decodes the input. Likewise for the pixels-only
(de-identified) stream and the DICOM encapsulation.

Run: ``.venv/bin/python fuzz/fuzz_jpeg.py CORPUS -max_total_time=300`` (fuzz/README.md).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["adapter"]):
    from adapter.errors import AdapterError
    from adapter.imaging import jpeg
    from adapter.imaging.exif import orientation_only_tiff
    from adapter.imaging.frame import encapsulated_jpeg, jpeg_frame_info

from common import fuzz, plain_numpy_search, same_pixels

plain_numpy_search()

MAX_PIXELS = 1 << 22
_ORIENTATION_EXIF = {b"Exif\x00\x00" + orientation_only_tiff(n) for n in range(2, 9)}
_DECODING = jpeg.SOF_MARKERS | {jpeg.ECS, jpeg.DQT, jpeg.DHT, jpeg.DAC, jpeg.DRI, jpeg.SOS}
_CANONICAL_JFIF = b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00"


def _check_clean(out: bytes, *, pixels_only: bool) -> jpeg.JpegLayout:
    layout = jpeg.walk(out)
    assert layout.trailer == 0 and not layout.extraneous, "stripped JPEG has a trailer or extraneous bytes"
    seen: set[int] = set()
    for seg in layout.segments:
        marker, payload = seg.marker, out[seg.start + 4:seg.end]
        if marker in _DECODING:
            continue
        assert marker not in seen, f"stripped JPEG has two 0xFF{marker:02X} metadata segments"
        seen.add(marker)
        if marker == jpeg.APP0:
            assert payload[:5] == b"JFIF\x00" and len(payload) == 14 and payload[12:14] == b"\x00\x00", \
                "stripped JPEG keeps a JFIF APP0 with more than its 14 bytes"
            assert not pixels_only or payload == _CANONICAL_JFIF, "pixels-only JFIF is not canonical"
        elif marker == jpeg.APP1 and not pixels_only:
            assert payload in _ORIENTATION_EXIF, "stripped JPEG keeps an APP1 other than the Orientation EXIF"
        elif marker == jpeg.APP2 and not pixels_only:
            assert payload[:12] == b"ICC_PROFILE\x00", "stripped JPEG keeps an APP2 other than ICC"
        elif marker == jpeg.APP14:
            assert payload[:5] == b"Adobe" and len(payload) == 12, "stripped JPEG keeps Adobe's tail"
        else:
            raise AssertionError(f"stripped JPEG keeps segment 0xFF{marker:02X}")
    return layout


def test_one_input(data: bytes) -> None:
    try:
        plain = jpeg.strip_jpeg_segments(data, max_pixels=MAX_PIXELS)
    except AdapterError:
        plain = None
    try:
        checked = jpeg.strip_jpeg_segments(data, max_pixels=MAX_PIXELS, check_decoding=True)
    except AdapterError:
        checked = None
    assert plain is not None or checked is None, "check_decoding accepted what the plain walk refused"
    if plain is None:
        return
    out = plain.join()
    if checked is not None:
        assert checked.join() == out and checked.removed == plain.removed, "check_decoding changed the result"
    _check_clean(out, pixels_only=False)
    again = jpeg.strip_jpeg_segments(out, max_pixels=MAX_PIXELS)
    assert again.join() == out, "stripping a stripped JPEG changed it"
    # the Orientation-only EXIF is "removed" and written again, the same bytes
    assert set(again.removed) <= {"EXIF"}, f"stripping a stripped JPEG removed {again.removed}"
    assert (again.width, again.height) == (plain.width, plain.height)
    same_pixels(data, out, plain.width, plain.height, "JPEG", "strip_jpeg")

    pixels_only = jpeg.strip_jpeg_to_pixels_only(data)
    _check_clean(pixels_only, pixels_only=True)
    assert jpeg.strip_jpeg_to_pixels_only(pixels_only) == pixels_only, "pixels-only strip is not idempotent"
    same_pixels(data, pixels_only, plain.width, plain.height, "JPEG", "strip_jpeg_to_pixels_only")

    encapsulated = encapsulated_jpeg(data)
    joined = encapsulated.join()
    assert not encapsulated.prefix or joined == data[:encapsulated.size], "encapsulation prefix is no prefix"
    assert all(seg.marker != jpeg.APP1 for seg in jpeg.walk(joined).segments), "encapsulated frame keeps APP1"
    info = jpeg_frame_info(data)
    assert (info.width, info.height) == (plain.width, plain.height)


if __name__ == "__main__":
    fuzz(test_one_input)
