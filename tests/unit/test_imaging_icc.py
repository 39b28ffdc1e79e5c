"""An ICC profile's text tags rewritten, its colour transform kept (privacy review F3)."""

from __future__ import annotations

import io
import struct
import time

import numpy as np
import pytest
from PIL import Image, ImageCms

from adapter.imaging.icc import icc_profile_without_text
from samples import make_samples as ms

pytestmark = pytest.mark.unit

NAME = "JaneDoe MRN01"
#: The name in every encoding an ICC text type uses (7-bit ASCII; UTF-16BE in mluc and desc).
NEEDLES = (b"JaneDoe", b"MRN01", "JaneDoe".encode("utf-16-be"), "MRN01".encode("utf-16-be"))


def mluc(text: str) -> bytes:
    """multiLocalizedUnicodeType (ICC.1:2010 10.15): one record, en-US."""
    encoded = text.encode("utf-16-be")
    return b"mluc" + bytes(4) + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(encoded), 28) + encoded


def desc(text: str) -> bytes:
    """textDescriptionType (ICC.1:2001 6.5.17, the v2 'desc'): ASCII, Unicode and ScriptCode parts."""
    ascii_, uni = text.encode() + b"\0", (text + "\0").encode("utf-16-be")
    mac = (text.encode() + b"\0").ljust(67, b"\0")
    return (b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">II", 0, len(uni) // 2) + uni
            + struct.pack(">HB", 0, len(text) + 1) + mac)


def text_type(text: str) -> bytes:
    """textType (ICC.1:2010 10.24)."""
    return b"text" + bytes(4) + text.encode() + b"\0"


def tags_of(profile: bytes) -> list[tuple[bytes, bytes]]:
    count = struct.unpack_from(">I", profile, 128)[0]
    out = []
    for i in range(count):
        sig, offset, size = struct.unpack_from(">4sII", profile, 132 + 12 * i)
        out.append((sig, profile[offset:offset + size]))
    return out


def build(tags: list[tuple[bytes, bytes]], *, header: bytes | None = None, gap: bytes = b"") -> bytes:
    """A profile of ``tags`` (each at its own 4-aligned offset), ``gap`` between table and data."""
    head = bytearray((header or ms.srgb_icc())[:128])
    table_end = 132 + 12 * len(tags)
    pos = table_end + len(gap) + (-(table_end + len(gap)) % 4)
    entries, body = b"", b""
    for sig, data in tags:
        entries += struct.pack(">4sII", sig, pos, len(data))
        padded = data + bytes(-len(data) % 4)
        body += padded
        pos += len(padded)
    out = bytearray(head + struct.pack(">I", len(tags)) + entries + gap)
    out += bytes(-len(out) % 4) + body
    out[0:4] = struct.pack(">I", len(out))
    return bytes(out)


def identifying() -> bytes:
    """The sample sRGB profile with the name in its desc and cprt (mluc), dmnd (v2 desc), dmdd
    (text), a private tag of a private type, the gap after the tag table, the header's reserved
    bytes, and a profile ID set (ICC.1 7.2.18)."""
    tags = [(sig, data) for sig, data in tags_of(ms.srgb_icc()) if sig not in (b"desc", b"cprt")]
    tags += [(b"desc", mluc(NAME)), (b"cprt", mluc(f"Copyright {NAME}")), (b"dmnd", desc(NAME)),
             (b"dmdd", text_type(NAME)), (b"jdoe", b"zzzz" + bytes(4) + NAME.encode())]
    header = bytearray(ms.srgb_icc()[:128])
    header[84:100] = bytes(range(1, 17))
    header[100:113] = NAME.encode()
    return build(tags, header=bytes(header), gap=NAME.encode())


def transformed(profile: bytes) -> bytes:
    """An image put through ``profile`` -> sRGB by LittleCMS (as Pillow's ImageCms does)."""
    rng = np.random.default_rng(7)
    im = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    out = ImageCms.profileToProfile(im, source, ImageCms.createProfile("sRGB"))
    assert out is not None
    return out.tobytes()


def test_every_text_tag_is_rewritten_and_the_colour_transform_kept() -> None:
    """Privacy review F3: a JPEG's ICC profile named "JaneDoe MRN01" in its desc tag, kept in
    care's copy. Text-type tags (desc, mluc, text) are written anew (the description "ICC Profile",
    every other text empty), any other tag of no known numeric type emptied, the bytes no tag holds
    zeroed and the profile ID zeroed (7.2.18: not computed); the colour transform is unchanged."""
    profile = identifying()
    for needle in NEEDLES:
        assert needle in profile
    cleaned = icc_profile_without_text(profile)
    assert cleaned is not None and len(cleaned) == len(profile)
    for needle in NEEDLES:
        assert needle not in cleaned, needle
    assert cleaned[84:128] == bytes(44)
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(cleaned))).strip() == "ICC Profile"
    assert transformed(cleaned) == transformed(profile)
    assert icc_profile_without_text(cleaned) == cleaned  # nothing left to rewrite


def test_the_sample_profiles_own_text_goes_too() -> None:
    """LittleCMS's "sRGB built-in" and "No copyright, use freely" are text like any other: written anew."""
    cleaned = icc_profile_without_text(ms.srgb_icc())
    assert cleaned is not None and "sRGB built-in".encode("utf-16-be") not in cleaned
    assert transformed(cleaned) == transformed(ms.srgb_icc())


def test_zero_padding_after_the_profile_stays() -> None:
    padded = ms.srgb_icc() + bytes(8)
    cleaned = icc_profile_without_text(padded)
    assert cleaned is not None and len(cleaned) == len(padded) and cleaned.endswith(bytes(8))


@pytest.mark.parametrize("case", ["tag past the end", "overlapping tags", "tag table past the end",
                                  "text tag too small for an empty text", "tag smaller than its type",
                                  "curve shorter than its count"])
def test_a_profile_that_cannot_be_rewritten_safely_is_none(case: str) -> None:
    """Fail closed: the caller drops such a profile rather than keep text it could not reach."""
    profile = bytearray(identifying())
    count = struct.unpack_from(">I", profile, 128)[0]
    first = 132
    if case == "tag past the end":
        struct.pack_into(">I", profile, first + 4, len(profile) - 4)
    elif case == "overlapping tags":
        offset = struct.unpack_from(">I", profile, first + 12 + 4)[0]
        struct.pack_into(">I", profile, first + 4, offset + 4)
    elif case == "tag table past the end":
        struct.pack_into(">I", profile, 128, count + len(profile) // 12)
    elif case == "text tag too small for an empty text":
        profile = bytearray(build([(b"desc", mluc("x")[:12])]))  # an empty mluc is 16 bytes
    elif case == "tag smaller than its type":
        profile = bytearray(build([(b"wtpt", b"XYZ ")]))
    else:
        profile = bytearray(build([(b"rTRC", b"curv" + bytes(4) + struct.pack(">IHH", 3, 0, 1))]))
    assert icc_profile_without_text(bytes(profile)) is None


def xyz(x: int, y: int, z: int) -> bytes:
    return b"XYZ " + bytes(4) + struct.pack(">iii", x, y, z)


def display_p3() -> bytes:
    """A Display P3 profile laid out as Apple's in iPhone JPEGs (nico/jpegfiles iccfiles "p3-v4.icc
    from IMG_9424.JPG"): desc an mluc of 48 bytes at 252, cprt an mluc of 80, one para shared by the
    three TRCs, chad an sf32 of 44 bytes; ``NAME`` put in the copyright to show it goes."""
    para = b"para" + bytes(4) + struct.pack(">HH", 3, 0) + struct.pack(">5i", 157286, 62119, 3417, 4245, 2651)
    chad = b"sf32" + bytes(4) + struct.pack(">9i", 68674, 1285, -3038, 1698, 64774, -1049, -614, 1009, 97542)
    desc_, cprt = mluc("Display P3"), mluc(f"(c) {NAME}".ljust(26))
    assert (len(desc_), len(cprt), len(para), len(chad)) == (48, 80, 32, 44)
    entries = [(b"desc", 252, desc_), (b"cprt", 300, cprt), (b"wtpt", 380, xyz(63190, 65536, 54061)),
               (b"rXYZ", 400, xyz(34755, 16403, -16)), (b"gXYZ", 420, xyz(19939, 45937, 3129)),
               (b"bXYZ", 440, xyz(9458, 3195, 52264)), (b"rTRC", 460, para), (b"chad", 492, chad),
               (b"bTRC", 460, para), (b"gTRC", 460, para)]
    out = bytearray(536)
    struct.pack_into(">I", out, 0, len(out))
    out[4:24] = b"appl" + bytes([4, 0, 0, 0]) + b"mntrRGB XYZ "
    out[24:44] = struct.pack(">6H", 2017, 7, 7, 13, 22, 32) + b"acspAPPL"
    out[68:84] = struct.pack(">iii", 63190, 65536, 54061) + b"appl"
    struct.pack_into(">I", out, 128, len(entries))
    for i, (sig, offset, data) in enumerate(entries):
        struct.pack_into(">4sII", out, 132 + 12 * i, sig, offset, len(data))
        out[offset:offset + len(data)] = data
    return bytes(out)


def test_a_display_p3_profile_is_kept_with_a_description_that_fits() -> None:
    """Review of the merges F1: Apple's Display P3 (every iPhone photo) has a 48-byte desc, too
    small for "ICC Profile" (50 bytes as mluc): the profile was dropped. Now the description is
    written empty (an mluc of no records, ICC.1:2010 10.15), the colour transform unchanged."""
    profile = display_p3()
    cleaned = icc_profile_without_text(profile)
    assert cleaned is not None and len(cleaned) == len(profile)
    for needle in ("Display P3".encode("utf-16-be"), *NEEDLES):
        assert needle not in cleaned
    assert cleaned[252:300] == b"mluc" + bytes(4) + struct.pack(">II", 0, 12) + bytes(32)
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(cleaned))).strip() == ""
    assert transformed(cleaned) == transformed(profile)
    assert icc_profile_without_text(cleaned) == cleaned


def test_a_display_p3_jpeg_keeps_its_profile() -> None:
    from adapter.imaging.jpeg import strip_jpeg

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, "JPEG", icc_profile=display_p3(), quality=90)
    stripped = strip_jpeg(buffer.getvalue())
    assert "ICC profile whose text cannot be rewritten" not in stripped.removed
    kept = Image.open(io.BytesIO(stripped.data)).info.get("icc_profile")
    assert kept == icc_profile_without_text(display_p3())


SLACK = b"JaneDoe MRN0012345 born 1970-01-01"


@pytest.mark.parametrize(("signature", "numbers"), ids=lambda value: value[:4].decode().strip(), argvalues=[
    (b"wtpt", xyz(63190, 65536, 54061)),
    (b"rTRC", b"curv" + bytes(4) + struct.pack(">I", 0)),
    (b"gTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, 563)),
    (b"bTRC", b"para" + bytes(4) + struct.pack(">HH", 0, 0) + struct.pack(">i", 144179)),
    (b"chad", b"sf32" + bytes(4) + struct.pack(">9i", 68674, 1285, -3038, 1698, 64774, -1049, -614, 1009, 97542)),
    (b"meas", b"meas" + bytes(4) + struct.pack(">I3iIiI", 1, 0, 0, 0, 2, 65536, 1)),
    (b"calt", b"dtim" + bytes(4) + struct.pack(">6H", 2026, 1, 2, 3, 4, 5)),
    (b"tech", b"sig " + bytes(4) + b"dcam"),
    (b"clro", b"clro" + bytes(4) + struct.pack(">I3B", 3, 0, 1, 2)),
])
def test_bytes_past_a_numeric_tags_numbers_are_zeroed(signature: bytes, numbers: bytes) -> None:
    """Review of the merges F3: text after the numbers of a numeric tag (in its declared size but
    past the length its type and counts define, ICC.1:2010 10) and in its reserved bytes 4-7 went
    through. Only the numbers stay, the rest is zero."""
    reserved = numbers[:4] + b"JANE" + numbers[8:]
    profile = build([(b"desc", mluc("")), (signature, reserved + SLACK)])
    cleaned = icc_profile_without_text(profile)
    assert cleaned is not None and SLACK not in cleaned and b"JANE" not in cleaned
    assert [data for sig, data in tags_of(cleaned) if sig == signature] == [numbers + bytes(len(SLACK))]


def test_text_after_the_numbers_of_the_sample_profile_goes_and_its_transform_stays() -> None:
    """The sample sRGB profile with text after the numbers of every numeric tag: zeroed, the
    colour transform as before."""
    tags = [(sig, data + SLACK if data[:4] != b"mluc" else data) for sig, data in tags_of(ms.srgb_icc())]
    profile = build(tags)
    cleaned = icc_profile_without_text(profile)
    assert cleaned is not None and SLACK not in cleaned
    assert transformed(cleaned) == transformed(ms.srgb_icc())


def test_a_lut_tag_keeps_its_tables_and_loses_what_follows() -> None:
    """lut16Type (ICC.1:2010 10.9, v2 A2B0): its tables stay, the bytes past them are zeroed."""
    lut = (b"mft2" + bytes(4) + struct.pack(">BBBB", 3, 3, 2, 0)
           + struct.pack(">9i", 65536, 0, 0, 0, 65536, 0, 0, 0, 65536) + struct.pack(">HH", 2, 2)
           + struct.pack(">6H", 0, 65535, 0, 65535, 0, 65535) + bytes(2 * 8 * 3)
           + struct.pack(">6H", 0, 65535, 0, 65535, 0, 65535))
    cleaned = icc_profile_without_text(build([(b"A2B0", lut + SLACK)]))
    assert cleaned is not None and SLACK not in cleaned
    assert tags_of(cleaned)[0][1] == lut + bytes(len(SLACK))


def test_a_profile_of_too_many_tags_is_dropped_at_once() -> None:
    """Review of the merges F5: 800 000 tags cost 1.8 s per photo. Real profiles have fewer than
    100 tags; beyond MAX_TAGS the profile is not rewritten (the caller drops it, the receipt says so)."""
    from adapter.imaging.icc import MAX_TAGS

    assert icc_profile_without_text(build([(b"wtpt", xyz(1, 2, 3))] * MAX_TAGS)) is not None
    count = 800_000
    offset = 132 + 12 * count  # every entry names one shared XYZ tag (ICC.1:2010 7.3.5 allows it)
    header = bytearray(ms.srgb_icc()[:128])
    header[0:4] = struct.pack(">I", offset + 20)
    many = bytes(header) + struct.pack(">I", count) + struct.pack(">4sII", b"wtpt", offset, 20) * count + xyz(1, 2, 3)
    started = time.perf_counter()
    assert icc_profile_without_text(many) is None
    assert time.perf_counter() - started < 0.05


def test_a_received_frames_profile_is_kept_as_received_and_its_binary_is_the_frame() -> None:
    """The Binary of a received DICOM object's JPEG frame keeps the frame's ICC profile as it is:
    care reads the object with that very profile (stored as received) and the restricted copies
    drop it, so rewriting it gained nothing and made the Binary a second ~3 MB file to write, hash
    and fsync at every C-STORE (seen failing: prefix False; benchmarks/dicom.py 50 -> 38 images/s).
    A posted photo's profile is still rewritten."""
    from adapter.imaging.jpeg import strip_jpeg
    from adapter.mapping.dicom_fhir import jpeg_binary

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(buffer, "JPEG", icc_profile=identifying(), quality=90)
    frame = buffer.getvalue()
    plan = jpeg_binary(frame)
    assert plan.prefix and plan.join() == frame[:plan.size]
    assert Image.open(io.BytesIO(plan.join())).info.get("icc_profile") == identifying()
    posted = strip_jpeg(frame)
    assert "ICC profile text" in posted.removed
    assert Image.open(io.BytesIO(posted.data)).info.get("icc_profile") == icc_profile_without_text(identifying())
