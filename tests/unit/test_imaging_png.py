"""PNG chunk surgery: identical pixels and critical chunks, no text/eXIf/tIME left, refusals."""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, PngImagePlugin

from adapter.errors import ImageTooLarge, UndecodableImage, UnsupportedMediaType
from adapter.imaging import (
    ImageFacts,
    orientation_only_tiff,
    png_pixel_size,
    sanitize,
    strip_but_orientation,
    strip_to_pixels_only,
)
from adapter.imaging import png as png_module
from adapter.model.policy import Limits, Quality

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SIGNATURE = b"\x89PNG\r\n\x1a\n"


from samples import make_samples as ms


def run(tmp_path: Path, data: bytes, *, limits: Limits | None = None) -> tuple[ImageFacts, bytes]:
    src, dst = tmp_path / "upload", tmp_path / "stored"
    src.write_bytes(data)
    facts = sanitize(src, dst, quality=Quality(), limits=limits or Limits())
    return facts, dst.read_bytes()


def refuse(tmp_path: Path, data: bytes, error: type[Exception], *, limits: Limits | None = None) -> Exception:
    src, dst = tmp_path / "upload", tmp_path / "stored"
    src.write_bytes(data)
    with pytest.raises(error) as caught:
        sanitize(src, dst, quality=Quality(), limits=limits or Limits())
    assert not dst.exists()
    return caught.value


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, whole chunk bytes) in file order, up to IEND; written independently of the adapter."""
    assert data.startswith(SIGNATURE)
    out, pos = [], 8
    while pos < len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        out.append((ctype, data[pos:pos + 12 + length]))
        pos += 12 + length
        if ctype == b"IEND":
            break
    return out


def chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG", **params)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im).copy()


@pytest.fixture(scope="module")
def lesion() -> bytes:
    return (SAMPLES / "lesion.png").read_bytes()


# --------------------------------------------------------------------------- lossless

def test_pixels_identical(tmp_path: Path, lesion: bytes) -> None:
    _, stored = run(tmp_path, lesion)
    assert np.array_equal(pixels(stored), pixels(lesion))


def test_critical_and_colour_chunks_identical(tmp_path: Path, lesion: bytes) -> None:
    from adapter.imaging.icc import icc_profile_without_text

    _, stored = run(tmp_path, lesion)
    keep = {b"IHDR", b"PLTE", b"IDAT", b"IEND", b"sRGB", b"gAMA", b"cHRM", b"pHYs"}
    assert [c for c in chunks(lesion) if c[0] in keep] == [c for c in chunks(stored) if c[0] in keep]
    # the iCCP stays, its profile's text rewritten (privacy review F3)
    with Image.open(io.BytesIO(lesion)) as before, Image.open(io.BytesIO(stored)) as after:
        assert after.info["icc_profile"] == icc_profile_without_text(before.info["icc_profile"])


def test_metadata_chunks_removed(tmp_path: Path, lesion: bytes) -> None:
    before = [t for t, _ in chunks(lesion)]
    assert {b"tEXt", b"zTXt", b"iTXt", b"tIME", b"eXIf", ms.PRIVATE_PNG_CHUNK} <= set(before)
    facts, stored = run(tmp_path, lesion)
    after = [t for t, _ in chunks(stored)]
    assert after[0] == b"IHDR" and after[-1] == b"IEND"
    assert not {b"tEXt", b"zTXt", b"iTXt", b"tIME", ms.PRIVATE_PNG_CHUNK} & set(after)
    assert {"PNG tEXt", "PNG zTXt", "PNG iTXt", "PNG tIME", "PNG eXIf", "PNG prVt", "EXIF GPS",
            "trailer after IEND"} <= set(facts.removed)


def test_no_identifying_value_survives(tmp_path: Path, lesion: bytes) -> None:
    _, stored = run(tmp_path, lesion)
    needles = [v.encode() for v in (ms.OWNER_NAME, ms.XMP_PERSON, ms.BODY_SERIAL, ms.MAKE, ms.CAPTURE_TIME,
                                    "XML:com.adobe.xmp", "Comment")]
    needles += [ms.gps_rational_bytes(ms.GPS_LATITUDE), ms.gps_rational_bytes(ms.GPS_LONGITUDE), ms.TRAILER]
    for needle in needles:
        assert needle in lesion, needle
        assert needle not in stored, needle
    with Image.open(io.BytesIO(stored)) as im:
        assert not getattr(im, "text", {})
        assert im.getexif().get_ifd(ExifTags.IFD.GPSInfo) == {}


def test_orientation_kept_as_orientation_only_exif(tmp_path: Path, lesion: bytes) -> None:
    facts, stored = run(tmp_path, lesion)
    assert facts.orientation == 8
    exif = [c for t, c in chunks(stored) if t == b"eXIf"]
    assert exif == [chunk(b"eXIf", orientation_only_tiff(8))]
    assert [t for t, _ in chunks(stored)][:2] == [b"IHDR", b"eXIf"]
    with Image.open(io.BytesIO(stored)) as im:
        assert dict(im.getexif()) == {ExifTags.Base.Orientation: 8}


def test_facts(tmp_path: Path, lesion: bytes) -> None:
    facts, stored = run(tmp_path, lesion)
    assert (facts.content_type, facts.width, facts.height) == ("image/png", 800, 600)
    assert facts.capture_time == datetime(2024, 5, 17, 10, 23, 45, tzinfo=timezone(timedelta(hours=2)))
    assert (facts.device_make, facts.device_model) == (ms.MAKE, ms.MODEL)
    assert facts.stored_size == len(stored)
    assert facts.quality_warnings == ()


def test_without_orientation_no_exif_is_written(tmp_path: Path) -> None:
    received = png(ms.photo((64, 48), seed=20), exif=ms.exif_payload(orientation=1))
    facts, stored = run(tmp_path, received)
    assert facts.orientation == 1
    assert b"eXIf" not in stored and b"eXIf" in received


def test_animation_chunks_dropped(tmp_path: Path) -> None:
    first, second = ms.photo((64, 48), seed=21), ms.photo((64, 48), seed=22)
    buf = io.BytesIO()
    first.save(buf, "PNG", save_all=True, append_images=[second])
    received = buf.getvalue()
    assert {b"acTL", b"fcTL", b"fdAT"} <= {t for t, _ in chunks(received)}
    facts, stored = run(tmp_path, received)
    assert not {b"acTL", b"fcTL", b"fdAT"} & {t for t, _ in chunks(stored)}
    assert "PNG fdAT" in facts.removed
    assert np.array_equal(pixels(stored), np.asarray(first))


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "I;16", "P", "1"])
def test_modes_round_trip(tmp_path: Path, mode: str) -> None:
    im = ms.photo((96, 64), seed=23)
    im = im.convert("I").point(lambda v: v * 200).convert("I;16") if mode == "I;16" else im.convert(mode)
    received = png(im, pnginfo=_text_info())
    _, stored = run(tmp_path, received)
    assert b"tEXt" not in stored
    assert np.array_equal(pixels(stored), pixels(received))


def test_sixteen_bit_greyscale_is_not_mistaken_for_blurred(tmp_path: Path) -> None:
    im = ms.photo((800, 600), seed=28).convert("I").point(lambda v: v * 256).convert("I;16")
    received = png(im)
    facts, stored = run(tmp_path, received)
    assert facts.quality_warnings == ()
    assert np.array_equal(pixels(stored), pixels(received))


def _text_info() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", ms.OWNER_NAME)
    return info


# --------------------------------------------------------------------------- refusals

def test_truncated_png_is_undecodable(tmp_path: Path, lesion: bytes) -> None:
    refuse(tmp_path, lesion[:len(lesion) // 2], UndecodableImage)
    refuse(tmp_path, lesion[:20], UndecodableImage)


def test_bad_crc_in_a_kept_chunk_is_undecodable(tmp_path: Path, lesion: bytes) -> None:
    ihdr_crc = 8 + 8 + 13
    broken = bytearray(lesion)
    broken[ihdr_crc] ^= 0xFF
    error = refuse(tmp_path, bytes(broken), UndecodableImage)
    assert "CRC" in str(error)
    # A flipped bit in the image data: our CRC check catches it before any decoding.
    idat = lesion.index(b"IDAT")
    broken = bytearray(lesion)
    broken[idat + 100] ^= 0x01
    error = refuse(tmp_path, bytes(broken), UndecodableImage)
    assert "IDAT chunk fails its CRC check" in str(error)


def test_bad_crc_in_a_dropped_chunk_does_not_matter(tmp_path: Path) -> None:
    base = png(ms.photo((64, 48), seed=24))
    bad = chunk(b"tEXt", b"Author\x00" + ms.OWNER_NAME.encode())[:-4] + b"\x00\x00\x00\x00"
    received = base[:33] + bad + base[33:]
    _, stored = run(tmp_path, received)
    assert stored == base


def test_unknown_critical_chunk_is_undecodable(tmp_path: Path) -> None:
    base = png(ms.photo((64, 48), seed=25))
    refuse(tmp_path, base[:33] + chunk(b"CRIT", b"must understand") + base[33:], UndecodableImage)


def test_corrupt_image_data_is_undecodable(tmp_path: Path) -> None:
    base = png(ms.photo((64, 48), seed=26))
    idat = next(c for t, c in chunks(base) if t == b"IDAT")
    garbage = chunk(b"IDAT", b"\x78\x9c" + bytes(range(256)) * 4)  # valid CRC, broken deflate stream
    error = refuse(tmp_path, base.replace(idat, garbage), UndecodableImage)
    assert error.__cause__ is not None


def test_not_a_png_is_unsupported(tmp_path: Path) -> None:
    refuse(tmp_path, b"\x89PNG\r\n\x1a" + b"x" * 40, UnsupportedMediaType)


def bomb(width: int, height: int) -> bytes:
    """A structurally complete PNG whose IHDR claims width x height (and a 1-row IDAT)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    return SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_bomb_refused_from_the_header(tmp_path: Path) -> None:
    data = bomb(100_000, 100_000)
    assert png_pixel_size(data) == (100_000, 100_000)
    refuse(tmp_path, data, ImageTooLarge)
    refuse(tmp_path, data[:33], ImageTooLarge)  # IHDR alone is enough to refuse


def test_pillow_bomb_check_is_wrapped(tmp_path: Path) -> None:
    error = refuse(tmp_path, bomb(100_000, 100_000), ImageTooLarge, limits=Limits(max_pixels=10**12))
    assert isinstance(error.__cause__, Image.DecompressionBombError)


# --------------------------------------------------------------------------- de-identified view

def test_strip_but_orientation(tmp_path: Path, lesion: bytes) -> None:
    """The pseudonymised view's bytes: the stored chunks without iCCP (the profile's tags are
    free text), the Orientation-only eXIf kept, the pixels identical."""
    _, stored = run(tmp_path, lesion)
    assert b"iCCP" in [t for t, _ in chunks(stored)]
    for source in (lesion, stored):
        released = strip_but_orientation(source, "image/png")
        assert chunks(released) == [(t, d) for t, d in chunks(stored) if t != b"iCCP"]
        assert chunk(b"eXIf", orientation_only_tiff(8)) in released
        assert np.array_equal(pixels(released), pixels(lesion))


@pytest.mark.parametrize("colour_type", [2, 3])
def test_strip_but_orientation_keeps_what_the_deidentified_copy_keeps_and_the_orientation(colour_type: int) -> None:
    """Security review finding 5: the pseudonymised (HRESCH) copy kept every colour chunk the
    stored photo keeps but iCCP, so the uploader's bKGD, pHYs, sBIT and cHRM (and cICP, mDCV,
    cLLI, a palette's hIST) reached the research extract, which the de-identified copy has none
    of. It now keeps what the de-identified copy keeps (the critical chunks, tRNS, gAMA, sRGB:
    what decoding and the samples' meaning need) and the Orientation-only eXIf; the pixels are
    identical. Seen failing: those chunks were kept."""
    if colour_type == 3:
        im = ms.photo((64, 48), seed=31).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        base, trns, bkgd, sbit = png(im), chunk(b"tRNS", b"\x00\x80"), chunk(b"bKGD", b"\x05"), b"\x08\x08\x08"
        extra = [chunk(b"hIST", bytes(range(32)))]
    else:
        base = png(ms.photo((64, 48), seed=31))
        trns, bkgd, sbit, extra = chunk(b"tRNS", struct.pack(">HHH", 1, 2, 3)), \
            chunk(b"bKGD", struct.pack(">HHH", 47, 11, 23)), b"\x05\x06\x07", []
    uploaders = [chunk(b"cHRM", struct.pack(">8I", *range(31270, 31278))), chunk(b"sBIT", sbit),
                 chunk(b"pHYs", struct.pack(">IIB", 4711, 815, 1)), bkgd, chunk(b"cICP", bytes([9, 16, 0, 1])),
                 chunk(b"mDCV", bytes(range(24))), chunk(b"cLLI", struct.pack(">II", 4711, 815))]
    kept = [chunk(b"gAMA", struct.pack(">I", 45455)), chunk(b"sRGB", b"\x00")]
    crafted = _insert_after_ihdr(base, chunk(b"eXIf", orientation_only_tiff(6)), *kept, *uploaders)
    if colour_type == 3:  # tRNS and hIST after PLTE (§5.6)
        at = crafted.index(b"IDAT") - 4
        crafted = crafted[:at] + trns + b"".join(extra) + crafted[at:]
    else:
        crafted = _insert_after_ihdr(crafted, trns)
    released = strip_but_orientation(crafted, "image/png")
    pixels_only = chunks(strip_to_pixels_only(crafted, "image/png"))
    assert chunks(released) == [pixels_only[0], (b"eXIf", chunk(b"eXIf", orientation_only_tiff(6))), *pixels_only[1:]]
    assert {t for t, _ in chunks(released)} - {b"IHDR", b"PLTE", b"IDAT", b"IEND"} == {b"eXIf", b"tRNS", b"gAMA",
                                                                                      b"sRGB"}
    assert not any(c in released for c in uploaders + extra)
    assert all(c in released for c in [trns, *kept])
    assert np.array_equal(pixels(released), pixels(crafted))


def test_strip_to_pixels_only(tmp_path: Path, lesion: bytes) -> None:
    _, stored = run(tmp_path, lesion)
    for source in (lesion, stored):
        trained = strip_to_pixels_only(source, "image/png")
        critical = [t for t, _ in chunks(lesion) if t in (b"IHDR", b"IDAT", b"IEND")]
        assert [t for t, _ in chunks(trained)] == critical
        assert trained.endswith(chunk(b"IEND", b""))
        assert np.array_equal(pixels(trained), pixels(lesion))


def test_strip_to_pixels_only_keeps_transparency(tmp_path: Path) -> None:
    im = ms.photo((64, 48), seed=27).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    received = png(im, transparency=3, dpi=(300, 300), icc_profile=ms.srgb_icc(), pnginfo=_text_info())
    types = [t for t, _ in chunks(received)]
    assert {b"tRNS", b"pHYs", b"iCCP", b"PLTE"} <= set(types)
    trained = strip_to_pixels_only(received, "image/png")
    wanted = (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")
    assert [t for t, _ in chunks(trained)] == [t for t in types if t in wanted]
    with Image.open(io.BytesIO(received)) as a, Image.open(io.BytesIO(trained)) as b:
        assert np.array_equal(np.asarray(a.convert("RGBA")), np.asarray(b.convert("RGBA")))
        assert a.getpalette() == b.getpalette()


def test_strip_to_pixels_only_checks_the_declared_type(lesion: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        strip_to_pixels_only(lesion, "image/jpeg")
    with pytest.raises(UnsupportedMediaType):
        strip_to_pixels_only(lesion, "image/gif")


def test_chunk_floods_are_refused() -> None:
    """Each chunk is walked in Python holding the GIL: a million empty tEXt chunks took ~4 s.
    More than 4096 ancillary chunks, or 100,000 in all, are refused; image data split into
    many IDAT chunks is not."""
    base = png(Image.new("RGB", (16, 16), (200, 10, 10)))
    ihdr_end = 8 + 25
    text = chunk(b"tEXt", b"a\x00b")
    assert png_pixel_size(base[:ihdr_end] + text * 10 + base[ihdr_end:]) == (16, 16)
    flood = base[:ihdr_end] + text * (png_module.MAX_ANCILLARY_CHUNKS + 1) + base[ihdr_end:]
    with pytest.raises(UndecodableImage, match="more than 4096 ancillary chunks"):
        png_module.walk(flood)
    [(_, idat)] = [(t, p) for t, p in chunks(base) if t == b"IDAT"]
    split = base[:ihdr_end] + b"".join(chunk(b"IDAT", idat[i:i + 1]) for i in range(len(idat))) + chunk(b"IEND", b"")
    assert png_module.walk(split).width == 16
    empty_idats = base[:ihdr_end] + chunk(b"IDAT", b"") * png_module.MAX_CHUNKS + base[ihdr_end:]
    with pytest.raises(UndecodableImage, match="more than 100000 chunks"):
        png_module.walk(empty_idats)


LEAK = b"GPS-LEAK-47.123 SERIAL-SN998877 OWNER-Jane-Roe"


def _png(mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (40, 30), (10, 200, 90) if mode == "RGB" else (10, 200, 90, 128)).save(buf, "PNG")
    return buf.getvalue()


def _insert_after_ihdr(data: bytes, *extra: bytes) -> bytes:
    return data[:33] + b"".join(extra) + data[33:]


def _with_idat_tail(data: bytes) -> bytes:
    """The image's IDAT with text after the end of its zlib stream, and an extra IDAT of text."""
    pos, out = 8, [data[:8]]
    while pos < len(data):
        length, ctype = struct.unpack_from(">I4s", data, pos)
        body = data[pos + 8:pos + 8 + length]
        if ctype == b"IDAT":
            out.append(chunk(b"IDAT", body + LEAK) + chunk(b"IDAT", LEAK))
        else:
            out.append(data[pos:pos + 12 + length])
        pos += 12 + length
    return b"".join(out)


@pytest.mark.parametrize("case", ["sRGB with text after its byte", "pHYs with text", "tRNS on RGBA",
                                  "text after the image stream", "iCCP named with text"])
def test_nothing_rides_in_the_chunks_decoding_keeps(tmp_path: Path, case: str) -> None:
    """Hygiene review: kept colour chunks were checked by type and CRC only, so text appended
    to them stayed; bytes after the image's zlib stream stayed; an iCCP's free-text name stayed.
    Pixels stay identical."""
    if case.startswith("sRGB"):
        crafted = _insert_after_ihdr(_png(), chunk(b"sRGB", b"\x00" + LEAK))
    elif case.startswith("pHYs"):
        crafted = _insert_after_ihdr(_png(), chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1) + LEAK))
    elif case.startswith("tRNS"):
        crafted = _insert_after_ihdr(_png("RGBA"), chunk(b"tRNS", LEAK))
    elif case.startswith("text after"):
        crafted = _with_idat_tail(_png())
    else:
        crafted = _insert_after_ihdr(_png(), chunk(b"iCCP", LEAK[:40] + b"\x00\x00" + zlib.compress(ms.srgb_icc())))
    _, stored = run(tmp_path, crafted)
    for out in (stored, strip_to_pixels_only(crafted, "image/png")):
        assert LEAK[:40] not in out
        with Image.open(io.BytesIO(crafted)) as before, Image.open(io.BytesIO(out)) as after:
            assert np.array_equal(np.asarray(before), np.asarray(after))
    if case.startswith("iCCP"):
        from adapter.imaging.icc import icc_profile_without_text
        with Image.open(io.BytesIO(stored)) as after:  # the profile stays, under a plain name, its text rewritten
            assert after.info["icc_profile"] == icc_profile_without_text(ms.srgb_icc())


def test_image_data_inflating_past_the_image_is_refused_without_inflating_it_all(tmp_path: Path) -> None:
    """Second diff review: finding where the image's zlib stream ends inflated all of it, a
    1 GiB stream behind a 64x64 image (~1 MB of upload) cost seconds of CPU per read. A stream
    inflating past what the image holds is refused at once."""
    raw = b"".join(b"\x00" + b"\x7f" * (64 * 3) for _ in range(64))
    bomb = zlib.compressobj(9)
    data = bomb.compress(raw) + bomb.compress(b"\x00" * (64 * 1024 * 1024)) + bomb.flush()
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    with pytest.raises(UndecodableImage, match="inflates to more"):
        png_module.strip_png(png)
    with pytest.raises(UndecodableImage, match="inflates to more"):
        png_module.strip_png_to_pixels_only(png)


def _rgba(data: bytes) -> bytes:
    """The pixels as Pillow shows them, transparency applied."""
    with warnings.catch_warnings(), Image.open(io.BytesIO(data)) as im:
        warnings.simplefilter("ignore")  # Pillow's advice to convert a palette with alphas: what this does
        return bytes(im.convert("RGBA").tobytes())


@pytest.mark.parametrize("colour_type", [3, 2, 0])
def test_an_over_long_trns_is_cut_to_its_length_not_dropped(tmp_path: Path, colour_type: int) -> None:
    """Found by the fuzzing review: a tRNS longer than its definition (more alphas than palette
    entries, more than 6 bytes for truecolour, 2 for greyscale) was dropped as ill-formed, but
    Pillow reads its start and shows those pixels transparent, so the stored photo and its
    de-identified copy turned them opaque. It is kept, cut to its defined length."""
    samples = {3: 1, 2: 3, 0: 1}[colour_type]
    rows = b"".join(b"\x00" + bytes(4 * samples) for _ in range(3))
    plte = chunk(b"PLTE", b"\x00\x00\x00") if colour_type == 3 else b""  # one entry
    alphas = {3: b"\x00", 2: bytes(6), 0: bytes(2)}[colour_type]
    crafted = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 3, 8, colour_type, 0, 0, 0)) + plte
               + chunk(b"tRNS", alphas + LEAK) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    _, stored = run(tmp_path, crafted)
    for out in (stored, strip_to_pixels_only(crafted, "image/png")):
        assert LEAK[:8] not in out
        assert _rgba(out) == _rgba(crafted) and _rgba(crafted)[3] == 0  # transparent, as uploaded


def test_a_palette_image_without_its_palette_is_refused(tmp_path: Path) -> None:
    """Found by the fuzzing review (fuzz_png): a colour type 3 PNG without PLTE (which §11.2.2
    requires, and libpng refuses to decode) was stored; Pillow decodes it with a made-up
    greyscale palette and applies its tRNS, which the strip dropped as longer than the (missing)
    palette, so the stored photo lost its transparency."""
    rows = b"".join(b"\x00" + bytes([3, 0, 3, 1]) for _ in range(2))
    crafted = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 8, 3, 0, 0, 0))
               + chunk(b"tRNS", b"\xff\xff\xff\x00") + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    with Image.open(io.BytesIO(crafted)) as im:
        im.load()  # Pillow decodes it
    error = refuse(tmp_path, crafted, UndecodableImage)
    assert "no palette" in str(error)
    with pytest.raises(UndecodableImage):
        strip_to_pixels_only(crafted, "image/png")


@pytest.mark.parametrize("colour_type", [2, 6])
def test_a_suggested_palette_of_a_truecolour_image_is_dropped_with_its_histogram(tmp_path: Path,
                                                                                colour_type: int) -> None:
    """Review finding: a PLTE in a truecolour PNG (colour type 2 or 6) is only a suggested palette
    (§11.2.2), which no decoder reads for pixels; kept as a critical chunk, its 3n bytes of free
    text went into the stored photo and every view. It is dropped (so is hIST, which describes
    it); the pixels stay identical."""
    mode = "RGB" if colour_type == 2 else "RGBA"
    base = _png(mode)
    text = LEAK + b"." * (-len(LEAK) % 3)
    crafted = _insert_after_ihdr(base, chunk(b"PLTE", text), chunk(b"hIST", bytes(2 * (len(text) // 3))))
    facts, stored = run(tmp_path, crafted)
    assert "PNG PLTE (suggested palette)" in facts.removed and "PNG hIST" in " ".join(facts.removed)
    for out in (stored, strip_to_pixels_only(crafted, "image/png"), strip_but_orientation(crafted, "image/png")):
        assert LEAK[:20] not in out
        assert not {b"PLTE", b"hIST"} & {t for t, _ in chunks(out)}
        assert np.array_equal(pixels(out), pixels(crafted)) and np.array_equal(pixels(out), pixels(base))


def test_the_palette_of_a_palette_image_is_kept(tmp_path: Path) -> None:
    """Colour type 3 needs its PLTE (and may keep its hIST): the palette is the pixels' colours."""
    im = Image.new("P", (40, 30), 1)
    im.putpalette([0, 0, 0, 200, 10, 90] + [0] * 762)
    crafted = png(im)
    facts, stored = run(tmp_path, crafted)
    assert [c for c in chunks(crafted) if c[0] == b"PLTE"] == [c for c in chunks(stored) if c[0] == b"PLTE"]
    assert not any("PLTE" in r for r in facts.removed)
    assert b"PLTE" in {t for t, _ in chunks(strip_to_pixels_only(crafted, "image/png"))}
    assert np.array_equal(pixels(stored), pixels(crafted))


def test_an_iccp_profiles_text_is_rewritten_at_ingest_its_colours_and_pixels_kept(tmp_path: Path) -> None:
    """Privacy review F3, the PNG path: an iCCP whose profile names the patient in its text tags
    keeps its colour transform and loses the text (test seen failing); its name is the plain one,
    the pixels are the same, and the receipt lists both."""
    from tests.unit.test_imaging_icc import NEEDLES, identifying, transformed

    profile = identifying()
    crafted = _insert_after_ihdr(_png(), chunk(b"iCCP", b"JaneDoe MRN01\x00\x00" + zlib.compress(profile)))
    facts, stored = run(tmp_path, crafted)
    iccp = [whole for ctype, whole in chunks(stored) if ctype == b"iCCP"]
    assert len(iccp) == 1
    inflated = zlib.decompress(iccp[0][8:-4].split(b"\x00", 1)[1][1:])
    for needle in NEEDLES:
        assert needle not in stored and needle not in inflated
    assert {"ICC profile text", "PNG iCCP profile name"} <= set(facts.removed)
    with Image.open(io.BytesIO(crafted)) as before, Image.open(io.BytesIO(stored)) as after:
        assert np.array_equal(np.asarray(before), np.asarray(after))
        kept = after.info["icc_profile"]
    assert len(kept) == len(profile) and transformed(kept) == transformed(profile)
