"""Fuzz the PNG chunk walk and its metadata surgery (adapter.imaging.png).

Contract: every input is stripped or refused with an AdapterError. Invariants of a stripped
PNG: it walks; every chunk is critical or a kept colour chunk (well formed, an iCCP with a usual
name and a whole profile) or the Orientation-only eXIf; nothing after IEND, nothing after the
image's zlib stream; stripping it again changes nothing; Pillow decodes it to the same pixels
(palette and transparency included) as the input whenever it decodes the input. Likewise for the
pixels-only (de-identified) PNG.

Run: ``.venv/bin/python fuzz/fuzz_png.py CORPUS -max_total_time=300`` (fuzz/README.md).
"""

from __future__ import annotations

import zlib

import atheris

with atheris.instrument_imports(include=["adapter"]):
    from adapter.errors import AdapterError
    from adapter.imaging import png
    from adapter.imaging.exif import orientation_only_tiff

from common import fuzz, same_pixels

MAX_PIXELS = 1 << 22
_ORIENTATION_EXIF = {orientation_only_tiff(n) for n in range(2, 9)}


def _check_clean(out: bytes, *, pixels_only: bool) -> None:
    layout = png.walk(out)
    assert layout.trailer == 0, "stripped PNG has a trailer after IEND"
    view = memoryview(out)
    colour_type, palette = png._colour(out, layout)
    allowed = png.PIXELS_ONLY_ANCILLARY if pixels_only else png.KEEP_ANCILLARY | {b"eXIf"}
    stream = b""
    for chunk in layout.chunks:
        png._check_crc(view, chunk)
        payload = view[chunk.start + 8:chunk.end - 4]
        if chunk.type in png.CRITICAL:
            if chunk.type == b"IDAT":
                stream += payload
            continue
        assert chunk.type in allowed, f"stripped PNG keeps a {chunk.type!r} chunk"
        if chunk.type == b"eXIf":
            assert bytes(payload) in _ORIENTATION_EXIF, "stripped PNG keeps more eXIf than the Orientation"
        elif chunk.type == b"iCCP":
            assert bytes(payload).split(b"\x00", 1)[0] in png.USUAL_ICC_NAMES, "iCCP keeps an unusual name"
            canonical, _ = png._canonical_iccp(payload)
            assert canonical is not None, "iCCP that is no ICC profile kept"
            assert canonical == bytes(payload), "iCCP keeps text its profile should not have (adapter.imaging.icc)"
        elif chunk.type == b"tRNS":
            assert png._trns(payload, colour_type, palette) == payload, "tRNS longer than its definition kept"
        else:
            assert png._well_formed(chunk.type, payload, colour_type, palette), f"ill-formed {chunk.type!r}"
    inflater = zlib.decompressobj()
    try:
        inflater.decompress(stream, 1 << 24)
    except zlib.error:
        return  # not a zlib stream: kept as it is (the decode proof refuses it)
    assert not (inflater.eof and inflater.unused_data), "stripped PNG has data after its image stream"


def with_crcs_fixed(data: bytes) -> bytes:
    """``data`` with the CRC of every chunk it has recomputed: a mutation rarely keeps a CRC
    right, and a wrong one ends the walk before anything interesting."""
    out = bytearray(data)
    pos = len(png.PNG_SIGNATURE)
    while pos + 12 <= len(out):
        length = int.from_bytes(out[pos:pos + 4], "big")
        end = pos + 12 + length
        if end > len(out):
            break
        out[end - 4:end] = zlib.crc32(out[pos + 4:end - 4]).to_bytes(4, "big")
        pos = end
    return bytes(out)


def test_one_input(data: bytes) -> None:
    check(data)
    fixed = with_crcs_fixed(data)
    if fixed != data:
        check(fixed)


def check(data: bytes) -> None:
    try:
        stripped = png.strip_png(data, max_pixels=MAX_PIXELS)
    except AdapterError:
        return
    out = stripped.data
    _check_clean(out, pixels_only=False)
    again = png.strip_png(out, max_pixels=MAX_PIXELS)
    assert again.data == out, "stripping a stripped PNG changed it"
    assert set(again.removed) <= {"PNG eXIf"}, f"stripping a stripped PNG removed {again.removed}"
    same_pixels(data, out, stripped.width, stripped.height, "PNG", "strip_png")

    pixels_only = png.strip_png_to_pixels_only(data)
    _check_clean(pixels_only, pixels_only=True)
    assert png.strip_png_to_pixels_only(pixels_only) == pixels_only, "pixels-only stripping is not idempotent"
    same_pixels(data, pixels_only, stripped.width, stripped.height, "PNG", "strip_png_to_pixels_only")


if __name__ == "__main__":
    fuzz(test_one_input)
