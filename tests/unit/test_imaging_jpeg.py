"""JPEG metadata surgery: identical pixels, nothing identifying left, refusals (standards.md §5.3)."""

from __future__ import annotations

import hashlib
import io
import random
import struct
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFilter

from adapter.errors import ImageTooLarge, UndecodableImage, UnsupportedMediaType
from adapter.imaging import (
    ImageFacts,
    jpeg_pixel_size,
    orientation_only_tiff,
    sanitize,
    strip_but_orientation,
    strip_to_pixels_only,
)
from adapter.imaging import jpeg as jpeg_module
from adapter.imaging.jpeg import app_segments, walk
from adapter.model.policy import Limits, Quality

pytestmark = pytest.mark.unit

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
JPEG_SAMPLES = ["wound.jpg", "document.jpg", "tiny.jpg"]


from samples import make_samples as ms


def run(tmp_path: Path, data: bytes, *, quality: Quality | None = None,
        limits: Limits | None = None) -> tuple[ImageFacts, bytes]:
    src, dst = tmp_path / "upload", tmp_path / "stored"
    src.write_bytes(data)
    facts = sanitize(src, dst, quality=quality or Quality(), limits=limits or Limits())
    return facts, dst.read_bytes()


def refuse(tmp_path: Path, data: bytes, error: type[Exception], *, limits: Limits | None = None,
           quality: Quality | None = None) -> Exception:
    src, dst = tmp_path / "upload", tmp_path / "stored"
    src.write_bytes(data)
    with pytest.raises(error) as caught:
        sanitize(src, dst, quality=quality or Quality(), limits=limits or Limits())
    assert not dst.exists()
    return caught.value


def assert_libjpeg_refuses(data: bytes) -> None:
    """A full decode with Pillow fails too: the walk refused nothing libjpeg would decode."""
    with pytest.raises((OSError, SyntaxError)), Image.open(io.BytesIO(data)) as im:
        im.load()


def pixels(data: bytes) -> np.ndarray:
    """Full-resolution decode of the first image."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im).copy()


def header(data: bytes) -> bytes:
    """Everything before the first scan's entropy-coded data (where metadata can live)."""
    first_scan = next(s for s in walk(data).segments if s.marker == 0xDA)
    return data[:first_scan.end]


def jpeg(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **params)
    return buf.getvalue()


def segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


IDENTIFYING = [
    ms.OWNER_NAME, ms.BODY_SERIAL, ms.LENS_SERIAL, ms.ARTIST, ms.XMP_PERSON, ms.IPTC_BYLINE, ms.IPTC_CITY,
    ms.COMMENT, ms.MAKE, ms.MODEL, ms.CAPTURE_TIME, "ns.adobe.com", "Photoshop 3.0", "8BIM",
]


@pytest.fixture(scope="module")
def wound() -> bytes:
    return (SAMPLES / "wound.jpg").read_bytes()


# --------------------------------------------------------------------------- lossless

@pytest.mark.parametrize("name", JPEG_SAMPLES)
def test_stored_pixels_are_bit_identical(tmp_path: Path, name: str) -> None:
    received = (SAMPLES / name).read_bytes()
    _, stored = run(tmp_path, received)
    assert stored != received
    before, after = pixels(received), pixels(stored)
    assert before.shape == after.shape
    assert np.array_equal(before, after)


@pytest.mark.parametrize("name", ["wound.jpg", "document.jpg"])
def test_no_identifying_value_survives(tmp_path: Path, name: str) -> None:
    received = (SAMPLES / name).read_bytes()
    _, stored = run(tmp_path, received)
    needles = [v.encode() for v in IDENTIFYING] + [ms.gps_rational_bytes(ms.GPS_LATITUDE),
                                                   ms.gps_rational_bytes(ms.GPS_LONGITUDE)]
    present = [n for n in needles if n in received]
    assert ms.OWNER_NAME.encode() in present and ms.gps_rational_bytes(ms.GPS_LATITUDE) in present
    for needle in present:
        assert needle not in stored, needle
    # The GPS IFD pointer tag (0x8825, either byte order) is nowhere in the metadata area.
    assert b"\x88\x25" not in header(stored) and b"\x25\x88" not in header(stored)


def test_orientation_kept_as_orientation_only_exif(tmp_path: Path, wound: bytes) -> None:
    facts, stored = run(tmp_path, wound)
    assert facts.orientation == 6
    exif_payloads = [p for m, p in app_segments(stored) if m == 0xE1]
    assert exif_payloads == [b"Exif\x00\x00" + orientation_only_tiff(6)]
    with Image.open(io.BytesIO(stored)) as im:
        exif = im.getexif()
        assert dict(exif) == {ExifTags.Base.Orientation: 6}
        assert exif.get_ifd(ExifTags.IFD.GPSInfo) == {}
        assert exif.get_ifd(ExifTags.IFD.Exif) == {}
        assert exif.get_ifd(ExifTags.IFD.IFD1) == {}
    # JFIF first, then the Orientation EXIF, then the ICC profile: nothing else.
    assert [m for m, _ in app_segments(stored)] == [0xE0, 0xE1, 0xE2]


def test_orientation_1_leaves_no_exif_at_all(tmp_path: Path) -> None:
    facts, stored = run(tmp_path, (SAMPLES / "document.jpg").read_bytes())
    assert facts.orientation == 1
    assert b"Exif" not in header(stored)


def test_icc_profile_kept(tmp_path: Path, wound: bytes) -> None:
    """Kept for colour, its text rewritten (privacy review F3: adapter.imaging.icc)."""
    from adapter.imaging.icc import icc_profile_without_text

    _, stored = run(tmp_path, wound)
    with Image.open(io.BytesIO(wound)) as before, Image.open(io.BytesIO(stored)) as after:
        assert before.info["icc_profile"] == ms.srgb_icc()
        assert after.info["icc_profile"] == icc_profile_without_text(before.info["icc_profile"])


def test_trailer_and_mpf_image_removed(tmp_path: Path, wound: bytes) -> None:
    facts, stored = run(tmp_path, wound)
    assert wound.endswith(ms.TRAILER)
    assert ms.TRAILER not in stored
    assert stored.endswith(b"\xff\xd9")
    assert walk(stored).trailer == 0
    with Image.open(io.BytesIO(wound)) as before, Image.open(io.BytesIO(stored)) as after:
        assert getattr(before, "n_frames", 1) == 2
        assert getattr(after, "n_frames", 1) == 1 and after.format == "JPEG"
    assert "MPF" in facts.removed and "trailer after EOI" in facts.removed


def test_exif_thumbnail_removed(tmp_path: Path, wound: bytes) -> None:
    with Image.open(io.BytesIO(wound)) as im:
        ifd1 = im.getexif().get_ifd(ExifTags.IFD.IFD1)
    tiff = wound.index(b"Exif\x00\x00") + 6
    thumbnail = wound[tiff + ifd1[0x0201]:tiff + ifd1[0x0201] + ifd1[0x0202]]
    assert thumbnail.startswith(b"\xff\xd8") and thumbnail.endswith(b"\xff\xd9")
    facts, stored = run(tmp_path, wound)
    assert thumbnail not in stored
    assert stored.count(b"\xff\xd8") == 1
    assert "EXIF thumbnail" in facts.removed


def test_facts(tmp_path: Path, wound: bytes) -> None:
    facts, stored = run(tmp_path, wound)
    assert (facts.content_type, facts.width, facts.height) == ("image/jpeg", 1600, 1200)
    assert facts.capture_time == datetime(2024, 5, 17, 10, 23, 45, tzinfo=timezone(timedelta(hours=2)))
    assert (facts.device_make, facts.device_model) == (ms.MAKE, ms.MODEL)
    assert facts.received_sha256 == hashlib.sha256(wound).hexdigest()
    assert facts.stored_sha256 == hashlib.sha256(stored).hexdigest()
    assert facts.stored_size == len(stored)
    assert set(facts.removed) >= {"EXIF", "EXIF GPS", "EXIF thumbnail", "EXIF serial numbers",
                                  "EXIF owner name", "EXIF capture time", "XMP", "IPTC", "COM", "MPF",
                                  "trailer after EOI"}
    names = " ".join(facts.removed)
    assert not any(value in names for value in IDENTIFYING)


def test_little_endian_exif(tmp_path: Path) -> None:
    exif = ms.exif_payload(orientation=3, little_endian=True)
    assert exif[6:8] == b"II"
    received = jpeg(ms.photo((640, 480), seed=7), quality=90, exif=exif)
    facts, stored = run(tmp_path, received)
    assert facts.orientation == 3 and facts.device_make == ms.MAKE
    assert {"EXIF GPS", "EXIF serial numbers", "EXIF owner name"} <= set(facts.removed)
    assert ms.gps_rational_bytes(ms.GPS_LATITUDE, "<") in received
    assert ms.gps_rational_bytes(ms.GPS_LATITUDE, "<") not in stored
    assert [p for m, p in app_segments(stored) if m == 0xE1] == [b"Exif\x00\x00" + orientation_only_tiff(3)]


# --------------------------------------------------------------------------- marker syntax

def test_progressive_with_segments_between_scans(tmp_path: Path) -> None:
    base = ms.loaded_jpeg(ms.photo((640, 480), seed=8), quality=85, mpf=False, progressive=True)
    layout = walk(base)
    scans = [s for s in layout.segments if s.marker == 0xDA]
    assert len(scans) > 2
    sneaky = (segment(0xFE, b"between scans: " + ms.OWNER_NAME.encode())
              + segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x>" + ms.XMP_PERSON.encode() + b"</x>")
              + segment(0xEB, b"APP11 private " + ms.BODY_SERIAL.encode()))
    at = scans[1].start
    received = base[:at] + sneaky + base[at:]
    original = pixels(received)  # libjpeg accepts APPn/COM between scans
    assert np.array_equal(original, pixels(base))
    facts, stored = run(tmp_path, received)
    assert np.array_equal(pixels(stored), original)
    for needle in (ms.OWNER_NAME, ms.XMP_PERSON, ms.BODY_SERIAL):
        assert needle.encode() not in stored
    assert [m for m, _ in app_segments(stored)] == [0xE0, 0xE1, 0xE2]
    assert "APP11" in facts.removed
    assert len([s for s in walk(stored).segments if s.marker == 0xDA]) == len(scans)


def test_restart_markers_and_fill_bytes(tmp_path: Path) -> None:
    base = jpeg(ms.photo((320, 240), seed=9), quality=80, restart_marker_blocks=1,
                exif=ms.exif_payload(orientation=1))
    assert b"\xff\xd0" in base and b"\xff\xd7" in base
    # Fill bytes (T.81 B.1.1.2) before the first marker, before DQT, before EOI, and inside the
    # scan: before a restart marker and before a stuffed 00 (libjpeg skips them there too).
    dqt = base.index(b"\xff\xdb")
    scan = walk(base).segments[-1].start
    rst = base.index(b"\xff\xd0", scan)
    stuffed = base.index(b"\xff\x00", rst)
    received = (base[:2] + b"\xff\xff" + base[2:dqt] + b"\xff\xff\xff" + base[dqt:rst] + b"\xff\xff"
                + base[rst:stuffed] + b"\xff\xff" + base[stuffed:-2] + b"\xff\xff" + base[-2:])
    assert np.array_equal(pixels(received), pixels(base))
    _, stored = run(tmp_path, received)
    assert np.array_equal(pixels(stored), pixels(base))
    assert stored.count(b"\xff\xd0") == base.count(b"\xff\xd0")
    assert b"\xff\xff\xd0" in stored and b"\xff\xff\x00" in stored  # scan data copied verbatim
    assert not stored.endswith(b"\xff\xff\xd9")  # fill bytes are not copied


def test_marker_search_with_numpy_agrees_with_the_regex() -> None:
    """The block-wise numpy search finds the same first marker candidate as the regex, also
    when the FF and the byte after it fall in two blocks."""
    rng = random.Random(11)
    alphabet = [0xFF, 0xFF, 0x00, 0xD0, 0xD7, 0xD8, 0xD9, 0xCF, 0x12]
    for _ in range(2000):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 200)))
        pos = rng.randrange(0, len(data) + 1)
        found = jpeg_module._MARKER_CANDIDATE.search(data, pos)
        expected = found.start() if found else -1
        for block in (1, 2, 3, 7, 64, 1 << 16):
            assert jpeg_module._marker_candidate_np(data, pos, block) == expected, (data, pos, block)


def test_walk_is_the_same_without_numpy(monkeypatch: pytest.MonkeyPatch, large_photo: bytes) -> None:
    base = jpeg(ms.photo((640, 480), seed=9), quality=95, restart_marker_blocks=1)
    scan = walk(base).segments[-1].start
    stuffed = base.index(b"\xff\x00", scan + 40_000)
    received = base[:stuffed] + b"\xff\xff" + base[stuffed:]  # fill bytes deep in the scan data
    layouts = [walk(received), walk(large_photo)]
    assert layouts[0].segments[-1].end - layouts[0].segments[-1].start > jpeg_module._NP_MIN
    monkeypatch.setattr(jpeg_module, "_np", None)
    assert [walk(received), walk(large_photo)] == layouts


def test_jfif_thumbnail_and_jfxx_removed(tmp_path: Path) -> None:
    base = jpeg(ms.photo((320, 240), seed=10), quality=85)
    assert base[6:11] == b"JFIF\x00"
    app0_end = 4 + struct.unpack_from(">H", base, 4)[0]
    thumbnail = bytes(range(2 * 2 * 3))
    jfif = base[6:6 + 12] + b"\x02\x02" + thumbnail
    jfxx = b"JFXX\x00\x13" + bytes((1, 1)) + b"\xaa\xbb\xcc"
    received = base[:2] + segment(0xE0, jfif) + segment(0xE0, jfxx) + base[app0_end:]
    facts, stored = run(tmp_path, received)
    app0 = [p for m, p in app_segments(stored) if m == 0xE0]
    assert app0 == [base[6:6 + 12] + b"\x00\x00"]
    assert {"JFIF thumbnail", "JFXX thumbnail"} <= set(facts.removed)
    assert np.array_equal(pixels(stored), pixels(base))


def test_cmyk_adobe_app14_kept(tmp_path: Path) -> None:
    received = jpeg(ms.photo((320, 240), seed=11).convert("CMYK"), quality=90)
    assert any(m == 0xEE for m, _ in app_segments(received))
    _, stored = run(tmp_path, received)
    assert [p[:5] for m, p in app_segments(stored) if m == 0xEE] == [b"Adobe"]
    assert np.array_equal(pixels(stored), pixels(received))
    trained = strip_to_pixels_only(stored, "image/jpeg")
    assert [m for m, _ in app_segments(trained)] == [0xEE]
    assert np.array_equal(pixels(trained), pixels(received))


def test_extraneous_bytes_between_segments_are_dropped(tmp_path: Path) -> None:
    base = jpeg(ms.photo((160, 120), seed=13), quality=85)
    dqt = base.index(b"\xff\xdb")
    received = base[:dqt] + b"JUNK" + base[dqt:]
    facts, stored = run(tmp_path, received)
    assert b"JUNK" not in stored
    assert "extraneous bytes between segments" in facts.removed
    assert np.array_equal(pixels(stored), pixels(base))


# --------------------------------------------------------------------------- refusals

def test_not_an_image_is_unsupported(tmp_path: Path) -> None:
    refuse(tmp_path, (SAMPLES / "not-an-image.txt").read_bytes(), UnsupportedMediaType)
    refuse(tmp_path, b"GIF89a" + bytes(40), UnsupportedMediaType)
    refuse(tmp_path, b"", UnsupportedMediaType)


def test_truncated_jpeg_is_undecodable(tmp_path: Path) -> None:
    truncated = (SAMPLES / "truncated.jpg").read_bytes()
    refuse(tmp_path, truncated, UndecodableImage)
    with pytest.raises(OSError):  # Pillow agrees it does not decode
        pixels(truncated)


@pytest.mark.parametrize("cut", [3, 10, 21, 200])
def test_jpeg_cut_inside_the_header_is_undecodable(tmp_path: Path, wound: bytes, cut: int) -> None:
    refuse(tmp_path, wound[:cut], UndecodableImage)


def test_segment_length_past_the_end_is_undecodable(tmp_path: Path) -> None:
    base = jpeg(ms.photo((64, 48), seed=14), quality=85)
    refuse(tmp_path, base[:2] + b"\xff\xe1\xff\xff" + b"Exif\x00\x00", UndecodableImage)


def test_decoder_error_is_wrapped(tmp_path: Path) -> None:
    base = jpeg(ms.photo((64, 48), seed=15), quality=85)
    dht = base.index(b"\xff\xc4")
    # The first DC Huffman table now holds the symbol 16 (DC symbols are 0..15): the walk does
    # not look inside Huffman tables, libjpeg refuses the table when a scan uses it.
    received = bytearray(base)
    assert received[dht + 4] == 0x00  # class DC, slot 0
    received[dht + 5 + 16] = 16
    for proof in ("full", "prefix"):
        error = refuse(tmp_path, bytes(received), UndecodableImage, quality=Quality(decodeProof=proof))
        assert isinstance(error.__cause__, OSError)


def test_undefined_quantization_table_is_named(tmp_path: Path) -> None:
    base = jpeg(ms.photo((64, 48), seed=15), quality=85)
    sof = base.index(b"\xff\xc0")
    # The first component now uses quantization table 3, which no DQT defines.
    received = bytearray(base)
    received[sof + 12] = 3
    error = refuse(tmp_path, bytes(received), UndecodableImage)
    assert "quantization table 3" in str(error)
    assert_libjpeg_refuses(bytes(received))


def bomb_header(width: int, height: int) -> bytes:
    """A syntactically complete JPEG whose frame header claims width x height."""
    base = jpeg(Image.new("L", (8, 8), 128), quality=90)
    sof = base.index(b"\xff\xc0")
    return base[:sof + 5] + struct.pack(">HH", height, width) + base[sof + 9:]


def test_bomb_refused_from_the_header(tmp_path: Path) -> None:
    data = bomb_header(65_535, 65_535)
    assert jpeg_pixel_size(data) == (65_535, 65_535)
    refuse(tmp_path, data, ImageTooLarge)
    # Even a bare header (no scan at all) is refused as too large, before structure checks.
    refuse(tmp_path, data[:data.index(b"\xff\xda")], ImageTooLarge)
    refuse(tmp_path, bomb_header(2000, 2000), ImageTooLarge, limits=Limits(max_pixels=3_999_999))


def test_pillow_bomb_check_is_wrapped(tmp_path: Path) -> None:
    error = refuse(tmp_path, bomb_header(65_535, 65_535), ImageTooLarge, limits=Limits(max_pixels=10**12))
    assert isinstance(error.__cause__, Image.DecompressionBombError)


# --------------------------------------------------------------------------- quality

def test_no_warnings_on_a_good_photo(tmp_path: Path, wound: bytes) -> None:
    facts, _ = run(tmp_path, wound)
    assert facts.quality_warnings == ()


def test_tiny_heavily_compressed_photo_warns(tmp_path: Path) -> None:
    facts, _ = run(tmp_path, (SAMPLES / "tiny.jpg").read_bytes())
    assert "image is 120x90 pixels, below the policy minimum of 640x480" in facts.quality_warnings
    assert any(w.startswith("JPEG quality estimated at") and w.endswith("below 40")
               for w in facts.quality_warnings)


def test_blurred_photo_warns(tmp_path: Path) -> None:
    sharp = ms.photo((1600, 1200), seed=16, noise=0.05)
    facts, _ = run(tmp_path, jpeg(sharp, quality=90))
    assert facts.quality_warnings == ()
    facts, _ = run(tmp_path, jpeg(sharp.filter(ImageFilter.GaussianBlur(10)), quality=90))
    assert len(facts.quality_warnings) == 1
    assert facts.quality_warnings[0].startswith("image looks blurred (sharpness ")


def test_portrait_photo_meets_a_landscape_minimum(tmp_path: Path) -> None:
    facts, _ = run(tmp_path, jpeg(ms.photo((480, 640), seed=17), quality=90))
    assert not any("pixels" in w for w in facts.quality_warnings)


@pytest.mark.parametrize("q", [5, 25, 40, 60, 75, 90, 98])
def test_jpeg_quality_estimate(tmp_path: Path, q: int) -> None:
    received = jpeg(ms.photo((640, 480), seed=18), quality=q)
    facts, _ = run(tmp_path, received, quality=Quality(min_jpeg_quality=100))
    warning = next(w for w in facts.quality_warnings if w.startswith("JPEG quality"))
    estimated = int(warning.split()[4].rstrip(","))
    assert abs(estimated - q) <= 1


# --------------------------------------------------------------------------- de-identified view

@pytest.mark.parametrize("name", JPEG_SAMPLES)
def test_strip_to_pixels_only(tmp_path: Path, name: str) -> None:
    received = (SAMPLES / name).read_bytes()
    _, stored = run(tmp_path, received)
    for source in (received, stored):
        trained = strip_to_pixels_only(source, "image/jpeg")
        assert [m for m, _ in app_segments(trained)] == [0xE0]
        assert [p for m, p in app_segments(trained)] == [b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00"]
        assert np.array_equal(pixels(trained), pixels(received))
        assert ms.TRAILER not in trained and b"ICC_PROFILE" not in trained


def _with_orientation(pixels_only: bytes, orientation: int) -> bytes:
    """A de-identified copy (SOI, its canonical JFIF, ...) with an Orientation-only EXIF after the JFIF."""
    return pixels_only[:20] + segment(0xE1, b"Exif\x00\x00" + orientation_only_tiff(orientation)) + pixels_only[20:]


@pytest.mark.parametrize("name", JPEG_SAMPLES)
def test_strip_but_orientation(tmp_path: Path, name: str) -> None:
    """The pseudonymised view's bytes: what the de-identified view keeps (no ICC profile: free-text
    tags), and the Orientation-only EXIF, the pixels identical."""
    received = (SAMPLES / name).read_bytes()
    _, stored = run(tmp_path, received)
    assert (b"ICC_PROFILE" in stored) is (name == "wound.jpg")  # the one sample with a profile
    orientation = 6 if name == "wound.jpg" else None
    assert (b"Exif" in stored) is (orientation is not None)
    for source in (received, stored):
        released = strip_but_orientation(source, "image/jpeg")
        assert b"ICC_PROFILE" not in released and ms.TRAILER not in released
        pixels_only = strip_to_pixels_only(source, "image/jpeg")
        assert released == (pixels_only if orientation is None else _with_orientation(pixels_only, orientation))
        assert np.array_equal(pixels(released), pixels(received))
    with pytest.raises(UnsupportedMediaType):
        strip_but_orientation(stored, "image/png")


def test_strip_but_orientation_keeps_no_jfif_of_the_uploaders() -> None:
    """Security review finding 5 (its PNG chunks bKGD, pHYs, sBIT, cHRM), for JPEG: the
    pseudonymised copy kept the uploader's JFIF, its version, density unit and densities (as PNG's
    pHYs), where the de-identified copy has a canonical one. It now keeps what the de-identified
    copy keeps and the Orientation-only EXIF. Seen failing: the JFIF of 4711 x 815 dpi was kept."""
    exif = Image.Exif()
    exif[0x0112] = 6
    received = jpeg(ms.photo((64, 48), seed=7), dpi=(4711, 815), exif=exif.tobytes())
    assert struct.pack(">BHH", 1, 4711, 815) in header(received)
    released = strip_but_orientation(received, "image/jpeg")
    assert released == _with_orientation(strip_to_pixels_only(received, "image/jpeg"), 6)
    assert struct.pack(">HH", 4711, 815) not in header(released)
    assert np.array_equal(pixels(released), pixels(received))


def test_strip_to_pixels_only_checks_the_declared_type(wound: bytes) -> None:
    with pytest.raises(UnsupportedMediaType):
        strip_to_pixels_only(wound, "image/png")
    with pytest.raises(UnsupportedMediaType):
        strip_to_pixels_only(b"not an image", "image/jpeg")


def test_jpeg_pixel_size(wound: bytes) -> None:
    assert jpeg_pixel_size(wound) == (1600, 1200)
    with pytest.raises(UndecodableImage):
        jpeg_pixel_size(b"\xff\xd8\xff\xd9")


# --------------------------------------------------------------------------- full size

@pytest.fixture(scope="module")
def large_photo(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path: Path = ms.make_large_photo(tmp_path_factory.mktemp("large") / "large.jpg")
    return path.read_bytes()


def test_large_photo(tmp_path: Path, large_photo: bytes) -> None:
    assert 2_700_000 <= len(large_photo) <= 3_300_000
    facts, stored = run(tmp_path, large_photo)
    assert (facts.width, facts.height) == (4000, 3000)
    assert facts.quality_warnings == ()
    assert ms.OWNER_NAME.encode() not in stored
    assert np.array_equal(pixels(stored), pixels(large_photo))


def test_marker_floods_are_refused_quickly_and_fill_bytes_skipped_at_c_speed() -> None:
    """Each marker segment is walked in Python holding the GIL: 50 MB of empty COM segments
    held the whole server for about a minute. More than MAX_MARKERS markers outside the scans
    are refused (no camera writes a fraction of that); any run of fill bytes is skipped in one
    regex search."""
    base = jpeg(Image.new("RGB", (32, 32), (200, 10, 10)))
    few = base[:2] + b"\xff\xfe\x00\x02" * 100 + base[2:]
    assert walk(few).width == 32
    flood = base[:2] + b"\xff\xfe\x00\x02" * (jpeg_module.MAX_MARKERS + 1) + base[2:]
    with pytest.raises(UndecodableImage, match="more than 4096 markers"):
        walk(flood)
    filled = base[:2] + b"\xff" * 5_000_000 + base[2:]  # fill bytes before a marker (T.81 B.1.1.2)
    assert walk(filled).width == 32


def _after_soi(data: bytes, *segments: bytes) -> bytes:
    return data[:2] + b"".join(segments) + data[2:]


LEAK = b"GPS-LEAK-47.123 SERIAL-SN998877 OWNER-Jane-Roe"


@pytest.mark.parametrize("case", ["Adobe APP14 with data after its 12 bytes", "DNL", "APP2 ICC_PROFILE of text"])
def test_segments_that_decoding_keeps_carry_nothing_else(tmp_path: Path, case: str) -> None:
    """Hygiene review: an Adobe APP14 was kept whole whatever its length, a DNL segment was kept,
    and an APP2 starting ICC_PROFILE was kept whatever followed: each could carry text into the
    stored photo and every view of it, the de-identified one included. Pixels stay identical."""
    base = jpeg(Image.new("RGB", (64, 48), (120, 80, 40)), quality=90)
    if case.startswith("Adobe"):
        crafted = _after_soi(base, segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01" + LEAK))
    elif case == "DNL":
        crafted = _after_soi(base, segment(0xDC, b"\x00\x30" + LEAK))
    else:
        crafted = _after_soi(base, segment(0xE2, b"ICC_PROFILE\x00\x01\x01NOT AN ICC PROFILE " + LEAK))
    _, stored = run(tmp_path, crafted)
    assert LEAK not in stored and LEAK not in strip_to_pixels_only(crafted, "image/jpeg")
    with Image.open(io.BytesIO(crafted)) as before, Image.open(io.BytesIO(stored)) as after:
        assert np.array_equal(np.asarray(before), np.asarray(after))
    if case.startswith("Adobe"):
        assert b"Adobe\x00\x64\x00\x00\x00\x00\x01" in stored  # its 12 bytes, which colour conversion reads


def test_an_icc_profile_padded_with_zeros_is_kept_and_one_padded_with_text_is_not(tmp_path: Path) -> None:
    """Second diff review: a profile whose data ran past its declared size (zero padding, as some
    writers leave) was dropped, changing the colours; padding with text is still no profile."""
    base = jpeg(Image.new("RGB", (64, 48), (120, 80, 40)), quality=90)
    for padding, kept in ((b"\x00\x00", True), (LEAK, False)):
        crafted = _after_soi(base, segment(0xE2, b"ICC_PROFILE\x00\x01\x01" + ms.srgb_icc() + padding))
        _, stored = run(tmp_path, crafted)
        assert (b"ICC_PROFILE" in stored) is kept and LEAK not in stored


@pytest.mark.parametrize("marker", [0x03, 0xBF, 0xC8, 0xDE, 0xDF])
def test_reserved_and_hierarchical_marker_segments_are_dropped(marker: int) -> None:
    """Found by the fuzz/ harness (fuzz_jpeg): a segment of a reserved marker (RESn 0x02-0xBF,
    JPG 0xC8) or of hierarchical DHP/EXP was kept whole by the walk without check_decoding, which
    is how a received DICOM frame becomes its FHIR Binary (adapter.imaging.frame), so its payload
    rode along. libjpeg reads none of them (JERR_UNKNOWN_MARKER): they are dropped like JPGn."""
    from adapter.imaging.frame import encapsulated_jpeg

    base = jpeg(Image.new("RGB", (64, 48), (120, 80, 40)), quality=90)
    crafted = _after_soi(base, segment(marker, LEAK))
    stripped = jpeg_module.strip_jpeg(crafted)
    assert LEAK not in stripped.data and stripped.data == base
    assert f"reserved marker 0xFF{marker:02X} segment" in stripped.removed
    assert LEAK not in encapsulated_jpeg(crafted).join()


def _without_jfif(data: bytes) -> list[bytes]:
    """The segments of ``data`` (entropy-coded data included) without its JFIF APP0."""
    return [data[s.start:s.end] for s in walk(data).segments if s.marker != 0xE0]


ADOBE_RGB = segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00")      # transform 0: no colour conversion
ADOBE_YCBCR = segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")    # transform 1: YCbCr


@pytest.mark.parametrize("order", ["YCbCr then RGB", "RGB then YCbCr"])
def test_the_last_adobe_app14_before_the_scan_is_the_one_kept(tmp_path: Path, order: str) -> None:
    """Found by the fuzzing review: with two Adobe APP14 segments the first was kept, but libjpeg
    (and Pillow) take the transform of the last one, so the stored photo and its de-identified
    copy decoded to other colours than the upload."""
    base = _without_jfif(jpeg(Image.new("RGB", (16, 16), (200, 30, 90)), quality=90))
    first, last = (ADOBE_YCBCR, ADOBE_RGB) if order == "YCbCr then RGB" else (ADOBE_RGB, ADOBE_YCBCR)
    crafted = b"\xff\xd8" + first + last + b"".join(base) + b"\xff\xd9"
    _, stored = run(tmp_path, crafted)
    assert np.array_equal(pixels(stored), pixels(crafted))
    assert np.array_equal(pixels(strip_to_pixels_only(crafted, "image/jpeg")), pixels(crafted))
    assert stored.count(b"Adobe") == 1 and last in stored


def test_jfif_and_adobe_after_the_first_scan_are_dropped_not_moved_ahead(tmp_path: Path) -> None:
    """Found by the fuzzing review: a JFIF APP0 between the scans of a progressive JPEG was moved
    to the head of the stored photo, where libjpeg reads it before the first scan and decodes as
    YCbCr what it had decoded as RGB (an Adobe transform 0); an Adobe APP14 there would have been
    the one kept. Decoders read both only before the first scan: they are dropped."""
    base = _without_jfif(jpeg(Image.new("RGB", (16, 16), (200, 30, 90)), progressive=True))
    jfif = segment(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x00\x00")
    first_scan = next(i for i, part in enumerate(base) if part[:2] == b"\xff\xda") + 2  # after SOS and its data
    crafted = b"\xff\xd8" + ADOBE_RGB + b"".join(base[:first_scan]) + jfif + ADOBE_YCBCR \
        + b"".join(base[first_scan:]) + b"\xff\xd9"
    _, stored = run(tmp_path, crafted)
    assert np.array_equal(pixels(stored), pixels(crafted))
    assert np.array_equal(pixels(strip_to_pixels_only(crafted, "image/jpeg")), pixels(crafted))
    assert b"JFIF" not in stored and stored.count(b"Adobe") == 1


def _with_empty_ac_scans(count: int) -> bytes:
    """A progressive greyscale JPEG with ``count`` more AC scans (Ss=1, Se=63), each without data."""
    base = jpeg(Image.new("L", (64, 48), 128), progressive=True)
    segments = walk(base).segments
    last_scan = max(i for i, s in enumerate(segments) if s.marker == 0xDA)
    empty_scan = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x01\x3f\x00" + b"\x00"
    return (b"\xff\xd8" + b"".join(base[s.start:s.end] for s in segments[:last_scan]) + empty_scan * count
            + b"".join(base[s.start:s.end] for s in segments[last_scan:]) + b"\xff\xd9")


def test_a_flood_of_scans_is_refused_before_decoding(tmp_path: Path) -> None:
    """Found by the fuzzing review (the CPU bound the harnesses check with -timeout and slow-unit
    reports): libjpeg decodes every scan over every block of the image, empty or not, and at any
    scale, so 4000 empty AC scans (~90 KB) behind a 12 MP frame header cost ~4 s of CPU in the
    decode proof (and ~25 s at 80 MP). More than MAX_SCANS scans are refused by the walk."""
    scans = sum(1 for s in walk(_with_empty_ac_scans(0)).segments if s.marker == 0xDA)
    (tmp_path / "limit").mkdir()
    run(tmp_path / "limit", _with_empty_ac_scans(jpeg_module.MAX_SCANS - scans))  # at the limit: stored
    error = refuse(tmp_path, _with_empty_ac_scans(jpeg_module.MAX_SCANS - scans + 1), UndecodableImage)
    assert f"more than {jpeg_module.MAX_SCANS} scans" in str(error)


@pytest.mark.parametrize("proof", ["prefix", "full"])
@pytest.mark.parametrize("size", [(2048, 1), (3, 2400)])
def test_a_photo_thinner_than_its_dct_scale_is_stored(tmp_path: Path, proof: str, size: tuple[int, int]) -> None:
    """Found by the fuzzing review (fuzz_sanitize): the decode proof asked Pillow for a draft of
    (width // scale, height // scale), which is 0 on the short side of a 2048x1 photo (the scale
    is chosen from the long side), and Pillow divided by it: a ZeroDivisionError, an HTTP 500."""
    data = jpeg(Image.new("RGB", size, (120, 80, 40)))
    facts, stored = run(tmp_path, data, quality=Quality(decodeProof=proof))
    assert (facts.width, facts.height) == size and np.array_equal(pixels(stored), pixels(data))


def _icc_segments(data: bytes) -> list[bytes]:
    return [p for m, p in app_segments(data) if m == 0xE2 and p.startswith(b"ICC_PROFILE\x00")]


@pytest.mark.parametrize("chunked", [False, True])
def test_an_icc_profiles_text_is_rewritten_at_ingest_its_colours_and_pixels_kept(tmp_path: Path,
                                                                                chunked: bool) -> None:
    """Privacy review F3: an ICC profile whose desc, cprt, dmnd and dmdd named "JaneDoe MRN01" was
    kept as it was in care's copy, and the receipt did not list it (test seen failing). The
    profile stays (wound colours matter) with its text tags rewritten, by segment copy: the
    pixels are the same, the colour transform too, and the receipt lists "ICC profile text".
    A profile over one APP2's 65519 bytes is chunked (ICC.1 Annex B.4): rewritten chunk by chunk."""
    from tests.unit.test_imaging_icc import NEEDLES, identifying, transformed

    profile = identifying()
    if chunked:  # a private tag of 70,000 bytes: emptied, and the profile spans two APP2 segments
        from tests.unit.test_imaging_icc import build, tags_of
        profile = build([*tags_of(profile), (b"jbig", b"zzzz" + bytes(4) + b"JaneDoe" * 10_000)])
    data = jpeg(Image.new("RGB", (64, 48), (150, 90, 60)), quality=90, icc_profile=profile)
    assert len(_icc_segments(data)) == (2 if chunked else 1)
    facts, stored = run(tmp_path, data)
    for needle in NEEDLES:
        assert needle not in stored
    assert "ICC profile text" in facts.removed
    assert len(_icc_segments(stored)) == len(_icc_segments(data))
    with Image.open(io.BytesIO(data)) as before, Image.open(io.BytesIO(stored)) as after:
        assert np.array_equal(np.asarray(before), np.asarray(after))
        kept = after.info["icc_profile"]
    assert len(kept) == len(profile) and transformed(kept) == transformed(profile)


def test_a_profile_whose_text_cannot_be_rewritten_is_dropped(tmp_path: Path) -> None:
    from tests.unit.test_imaging_icc import build, mluc

    # a curve shorter than its count says: not laid out so that it can be rewritten safely
    profile = build([(b"desc", mluc("JaneDoe")), (b"rTRC", b"curv" + bytes(4) + struct.pack(">I", 9))])
    data = jpeg(Image.new("RGB", (64, 48), (150, 90, 60)), quality=90, icc_profile=profile)
    facts, stored = run(tmp_path, data)
    assert not _icc_segments(stored) and "JaneDoe".encode("utf-16-be")[:8] not in stored
    assert "ICC profile whose text cannot be rewritten" in facts.removed
