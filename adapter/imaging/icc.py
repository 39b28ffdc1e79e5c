"""An ICC profile's text written anew, its colour transform kept (privacy review F3).

A clinical photo keeps its ICC profile at ingest: the colours of a wound matter. But the
profile's text tags (ICC.1:2010 §9: ``desc`` profile description, ``cprt`` copyright, ``dmnd``
and ``dmdd`` device manufacturer and model, and any other) are free text a device, an app or a
person writes ("JaneDoe MRN01"), and a private tag can hold anything. The profile is rewritten in
place, its layout unchanged (every tag at its offset and of its size, so nothing is recomputed):

* a tag of a text type (§10.15 ``mluc``, §10.24 ``text``; ICC.1:2001's ``desc``) is written anew:
  the description :data:`DESCRIPTION` ("ICC Profile", the name a PNG's iCCP gets,
  adapter.imaging.png) where it fits in the tag, else empty (an ``mluc`` of no records, a ``text``
  or ``desc`` of an empty string: valid per ICC.1, so that a standard profile whose description
  tag is small, as Apple's Display P3 of every iPhone photo, 48 bytes, is never dropped for its
  text), every other text empty, zero bytes after it;
* a tag of a type that holds numbers only (:data:`NUMERIC_TYPES`: curves, matrices, XYZ, LUTs,
  measurement and viewing conditions…: what the colour transform reads) keeps its type signature
  and its numbers, the length its type and counts define; its reserved bytes and every byte past
  its numbers are zeroed (adapter.imaging.icc_numbers);
* a tag of any other type (a named-colour or colorant table's names, a profile sequence's
  descriptions, ``data``, a private type) is emptied: its type signature kept, every byte after it
  zero (its counts zero: an empty table or sequence);
* every byte no header, tag table or tag holds (a gap between tags) is zeroed, and so are the
  header's reserved bytes (§7.2.19, 100-127, zero by definition);
* the profile ID (§7.2.18, bytes 84-99, an MD5 of the profile) is zeroed, which says "not
  computed", whenever anything changed.

A profile whose tag table or tags are not laid out so that this can be done safely (more than
:data:`MAX_TAGS` tags, a tag past the end, tags overlapping without being one, a numeric tag
shorter than its numbers, a text tag too small for even an empty text) is not rewritten:
:func:`icc_profile_without_text` returns None and the caller drops it. The pixels are
never touched: this rewrites a metadata segment (JPEG APP2, PNG iCCP) only.
"""

from __future__ import annotations

import itertools
import struct

from adapter.imaging.icc_numbers import NUMERIC_TYPES, numeric_tag
from adapter.imaging.icc_numbers import TYPE_HEADER as _TYPE_HEADER

#: The description a rewritten profile carries (as adapter.imaging.png.ICC_NAME).
DESCRIPTION = "ICC Profile"
#: The receipt's metadataRemoved names (what, never the values).
TEXT_REWRITTEN = "ICC profile text"
NOT_REWRITABLE = "ICC profile whose text cannot be rewritten"
#: The most tags a profile may have to be rewritten (review of the merges F5: the rewrite walks
#: every tag, and 800 000 tiny ones cost seconds per photo). ICC.1:2010 §9 defines about 50 tag
#: signatures; the largest real profiles have fewer than 100 tags.
MAX_TAGS = 200
_HEADER = 128
_PROFILE_ID = slice(84, 100)
_RESERVED = slice(100, 128)
_ENTRY = 12


def icc_profile_without_text(profile: bytes) -> bytes | None:
    """``profile`` (a whole profile, :func:`adapter.imaging.jpeg.icc_profile_is_whole`, with any
    zero padding after its size) with its text rewritten (module docstring), of the same length;
    ``profile`` itself when nothing had to change; None when it cannot be rewritten safely."""
    size = struct.unpack_from(">I", profile, 0)[0]
    if len(profile) < _HEADER + 4 or not _HEADER + 4 <= size <= len(profile):
        return None
    count = struct.unpack_from(">I", profile, _HEADER)[0]
    if count > MAX_TAGS:
        return None
    table_end = _HEADER + 4 + _ENTRY * count
    if table_end > size:
        return None
    tags: dict[tuple[int, int], bytes] = {}  # (offset, size) -> signature (tags may share their data)
    for i in range(count):
        signature, offset, length = struct.unpack_from(">4sII", profile, _HEADER + 4 + _ENTRY * i)
        if offset < table_end or length < _TYPE_HEADER or offset + length > size:
            return None
        tags.setdefault((offset, length), signature)
    spans = sorted(tags)
    if any(a + n > b for (a, n), (b, _) in itertools.pairwise(spans)):
        return None  # overlapping without being one tag's data: a rewrite of one would change the other
    out = bytearray(profile)
    out[_RESERVED] = bytes(_RESERVED.stop - _RESERVED.start)
    covered = table_end
    for offset, length in spans:
        out[covered:offset] = bytes(offset - covered)  # a gap no tag holds
        rewritten = _tag(bytes(profile[offset:offset + length]), tags[(offset, length)])
        if rewritten is None:
            return None
        out[offset:offset + length] = rewritten
        covered = offset + length
    out[covered:size] = bytes(size - covered)
    if out == profile:
        return profile
    out[_PROFILE_ID] = bytes(_PROFILE_ID.stop - _PROFILE_ID.start)
    return bytes(out)


def _tag(data: bytes, signature: bytes) -> bytes | None:
    """The tag's data as the copy has it, of the same length; None if it cannot be."""
    kind = data[:4]
    if kind in NUMERIC_TYPES:
        return numeric_tag(data, signature)
    for text in (DESCRIPTION, "") if signature == b"desc" else ("",):
        if kind == b"mluc":
            written = _mluc(text)
        elif kind == b"text":
            written = b"text" + bytes(4) + text.encode("ascii") + b"\x00"
        elif kind == b"desc":
            written = _desc(text)
        else:
            written = kind + bytes(4)  # a type that may hold text: emptied
        if len(written) <= len(data):
            return written + bytes(len(data) - len(written))
    return None  # too small for even an empty text: not a tag of its type


def _mluc(text: str) -> bytes:
    """multiLocalizedUnicodeType (ICC.1:2010 §10.15): one record, en-US, its string after it; no
    record for no text (16 bytes)."""
    if not text:
        return b"mluc" + bytes(4) + struct.pack(">II", 0, _ENTRY)
    encoded = text.encode("utf-16-be")
    return b"mluc" + bytes(4) + struct.pack(">II", 1, _ENTRY) + b"enUS" + struct.pack(">II", len(encoded), 28) + encoded


def _desc(text: str) -> bytes:
    """textDescriptionType (ICC.1:2001 §6.5.17): the ASCII description, no Unicode or ScriptCode
    one (their counts zero, the 67-byte Macintosh description zero)."""
    ascii_ = text.encode("ascii") + b"\x00"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + struct.pack(">IIHB", 0, 0, 0, 0) + bytes(67)


__all__ = ["DESCRIPTION", "MAX_TAGS", "NOT_REWRITABLE", "NUMERIC_TYPES", "TEXT_REWRITTEN", "icc_profile_without_text"]
