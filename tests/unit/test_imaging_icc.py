"""An ICC profile's text tags rewritten, its colour transform kept (privacy review F3)."""

from __future__ import annotations

import io
import struct

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
                                  "text tag too small for the rewrite", "tag smaller than its type"])
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
    elif case == "text tag too small for the rewrite":
        profile = bytearray(build([(b"desc", mluc("x")[:20])]))
    else:
        profile = bytearray(build([(b"wtpt", b"XYZ ")]))
    assert icc_profile_without_text(bytes(profile)) is None
