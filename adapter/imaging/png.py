"""Lossless PNG metadata surgery by walking chunks (standards.md §5.3).

PNG Specification (Third Edition, W3C): §5.2 signature; §5.3 chunk layout (4-byte length,
4-byte type, data, CRC-32 over type and data); §5.4 naming (bit 5 of the first type byte set =
ancillary, i.e. a lowercase first letter; an unknown *critical* chunk means the image cannot
be decoded); §5.6 ordering (IHDR first, IEND last). CRCs are per chunk, so dropping chunks
needs no recomputation; the CRC of every kept chunk is checked.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from adapter.errors import ImageTooLarge, UndecodableImage
from adapter.imaging.exif import ExifSummary, orientation_only_tiff, parse_exif
from adapter.imaging.facts import Stripped
from adapter.imaging.icc import NOT_REWRITABLE, TEXT_REWRITTEN, icc_profile_without_text
from adapter.imaging.jpeg import icc_profile_is_whole
from adapter.imaging.sniff import PNG_SIGNATURE

CRITICAL = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})
# Ancillary chunks kept in the stored photo: colour and rendering data only (§11.3.2-11.3.5).
# Everything else ancillary is dropped, including chunks we do not know: a private chunk
# could carry anything, and by §5.4 a decoder may ignore it, so dropping it is lossless.
KEEP_ANCILLARY = frozenset({b"iCCP", b"sRGB", b"gAMA", b"cHRM", b"cICP", b"mDCV", b"cLLI", b"sBIT",
                            b"pHYs", b"tRNS", b"bKGD", b"hIST"})
# For the de-identified view: what changes decoded samples (tRNS) or their meaning in the
# simplest terms (sRGB, gAMA). iCCP is dropped: it carries a free-text profile name and the
# profile's own description/copyright tags, and a device profile can fingerprint the camera.
PIXELS_ONLY_ANCILLARY = frozenset({b"tRNS", b"gAMA", b"sRGB"})
_MAX_CHUNK = 0x7FFFFFFF  # §5.3: length is at most 2^31-1
#: Chunks one PNG may have, and of those ancillary ones (text, time, colour...). Each is walked
#: in Python holding the GIL: a million empty tEXt chunks took ~4 s. An encoder may split the
#: image data into many IDAT chunks (a 50 MB image in 1 KiB chunks: ~50,000); nothing needs
#: thousands of ancillary ones.
MAX_CHUNKS = 100_000
MAX_ANCILLARY_CHUNKS = 4096


@dataclass(frozen=True, slots=True)
class Chunk:
    """``data[start:end]`` is the whole chunk (length, type, data, CRC)."""

    type: bytes
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class PngLayout:
    chunks: tuple[Chunk, ...]
    width: int
    height: int
    trailer: int    # bytes after IEND


def walk(data: bytes, *, max_pixels: int | None = None) -> PngLayout:
    """Walk the chunks from the signature to IEND (§5.3, §5.6).

    Raises :class:`UndecodableImage` for a broken or truncated stream, an unknown critical
    chunk or a palette image without its palette, and :class:`ImageTooLarge` as soon as IHDR
    claims more than ``max_pixels``.
    """
    n = len(data)
    if not data.startswith(PNG_SIGNATURE):
        raise UndecodableImage("PNG signature missing")
    pos = len(PNG_SIGNATURE)
    chunks: list[Chunk] = []
    width = height = 0
    ancillary = 0
    palette_needed = False
    while True:
        if pos + 12 > n:
            raise UndecodableImage("PNG ends before IEND (truncated)")
        if len(chunks) >= MAX_CHUNKS:
            raise UndecodableImage(f"PNG has more than {MAX_CHUNKS} chunks")
        length, ctype = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length
        if length > _MAX_CHUNK or end > n:
            raise UndecodableImage("PNG chunk runs past the end of the data (truncated)")
        if not ctype.isalpha() or not ctype.isascii():
            raise UndecodableImage("PNG chunk type is not four ASCII letters")
        if not chunks and ctype != b"IHDR":
            raise UndecodableImage("PNG does not start with IHDR")
        chunks.append(Chunk(ctype, pos, end))
        if ctype == b"IHDR":
            if len(chunks) != 1 or length != 13:
                raise UndecodableImage("PNG IHDR is misplaced or malformed")
            width, height = struct.unpack_from(">II", data, pos + 8)
            if not 0 < width <= _MAX_CHUNK or not 0 < height <= _MAX_CHUNK:
                raise UndecodableImage("PNG IHDR has an invalid size")
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLarge(f"image is {width}x{height} pixels, over the limit of {max_pixels}")
            palette_needed = data[pos + 17] == 3
        elif ctype == b"PLTE":
            palette_needed = False
        elif ctype == b"IDAT" and palette_needed:
            # §11.2.2: PLTE shall appear, before IDAT, for colour type 3. libpng refuses the image
            # ("Missing PLTE before IDAT"); Pillow makes up a greyscale palette, with a tRNS
            # that strip_png could not size (found by fuzzing: its transparency was dropped).
            raise UndecodableImage("PNG palette image has no palette (PLTE) before its image data")
        elif ctype[0] & 0x20 == 0 and ctype not in CRITICAL:
            raise UndecodableImage(f"PNG has an unknown critical chunk {ctype.decode('ascii')}")
        elif ctype[0] & 0x20:
            ancillary += 1
            if ancillary > MAX_ANCILLARY_CHUNKS:
                raise UndecodableImage(f"PNG has more than {MAX_ANCILLARY_CHUNKS} ancillary chunks")
        pos = end
        if ctype == b"IEND":
            break
    if not any(c.type == b"IDAT" for c in chunks):
        raise UndecodableImage("PNG has no image data (IDAT)")
    return PngLayout(tuple(chunks), width, height, trailer=n - pos)


def png_pixel_size(data: bytes) -> tuple[int, int]:
    """``(width, height)`` from IHDR (§11.2.1)."""
    if not data.startswith(PNG_SIGNATURE) or len(data) < 24 or data[12:16] != b"IHDR":
        raise UndecodableImage("PNG does not start with IHDR")
    width, height = struct.unpack_from(">II", data, 16)
    return int(width), int(height)


#: The exact data length of fixed-size colour chunks (PNG Third Edition §11.3).
_FIXED_LENGTH = {b"sRGB": 1, b"gAMA": 4, b"cHRM": 32, b"cICP": 4, b"cLLI": 8, b"mDCV": 24, b"pHYs": 9}
#: sBIT, bKGD and tRNS lengths by IHDR colour type (§11.3.3.4, §11.3.4.3, §11.3.2.1); tRNS is
#: not allowed for colour types 4 and 6 (they have alpha), and for type 3 depends on PLTE.
_SBIT_LENGTH = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}
_BKGD_LENGTH = {0: 2, 4: 2, 2: 6, 6: 6, 3: 1}
_TRNS_LENGTH = {0: 2, 2: 6}
#: An ICC profile inflated from iCCP larger than this is not a colour profile.
_MAX_ICC = 4 * 1024 * 1024
#: The name a kept iCCP gets unless it has one of the usual ones (:data:`USUAL_ICC_NAMES`): a
#: profile name is free text, which decoding never reads.
ICC_NAME = b"ICC Profile"
USUAL_ICC_NAMES = frozenset({b"ICC Profile", b"ICC profile", b"icc", b"ICC", b"sRGB", b"sRGB IEC61966-2.1",
                             b"Display P3", b"Adobe RGB (1998)"})


def _well_formed(ctype: bytes, payload: memoryview, colour_type: int, palette: int) -> bool:
    """Is a colour/rendering chunk no longer than its definition (so that nothing rides behind
    its fields)? An ill-formed one is dropped: decoders ignore it anyway (§5.4). tRNS, which
    changes decoded pixels, is cut to its length instead (:func:`_trns`)."""
    n = len(payload)
    if ctype in _FIXED_LENGTH:
        return n == _FIXED_LENGTH[ctype]
    if ctype == b"sBIT":
        return n == _SBIT_LENGTH.get(colour_type, -1)
    if ctype == b"bKGD":
        return n == _BKGD_LENGTH.get(colour_type, -1)
    if ctype == b"hIST":
        return palette > 0 and n == 2 * palette
    return True


def _trns(payload: memoryview, colour_type: int, palette: int) -> memoryview | None:
    """The tRNS data to keep (§11.3.2.1: one alpha per palette entry at most, 2 bytes for
    greyscale, 6 for truecolour; none for colour types 4 and 6), or None to drop the chunk.

    A tRNS longer than its definition is cut to it rather than dropped: Pillow (the decode proof,
    the renderings) reads its start and makes those pixels transparent, so dropping it changed
    the decoded pixels; what follows is read by nothing. (libpng ignores an over-long tRNS as
    "invalid": a non-conforming PNG that decoders render differently; the stored one is
    conforming and renders everywhere as Pillow rendered the upload.)"""
    if colour_type == 3:
        return payload[:palette] if payload and palette else None
    length = _TRNS_LENGTH.get(colour_type)
    return payload[:length] if length is not None and len(payload) >= length else None


_NO_ICC_PROFILE = "PNG iCCP that is no ICC profile"


def _canonical_iccp(payload: memoryview) -> tuple[bytes | None, list[str]]:
    """An iCCP chunk's data with the profile name replaced by :data:`ICC_NAME` unless it is one
    of :data:`USUAL_ICC_NAMES`, and the profile's text rewritten (adapter.imaging.icc, privacy
    review F3: recompressed only then; the pixels are not in it), if its compressed profile
    (§11.3.3.3: name, NUL, method 0, zlib) inflates to an ICC profile (ICC.1 §7.2: its size, the
    "acsp" signature) and nothing follows the zlib stream; else None (the chunk is dropped). With
    what to list as removed."""
    raw = bytes(payload)
    nul = raw.find(b"\x00", 0, 80)
    if nul < 1 or len(raw) < nul + 2 or raw[nul + 1] != 0:
        return None, [_NO_ICC_PROFILE]
    compressed = raw[nul + 2:]
    inflater = zlib.decompressobj()
    try:
        profile = inflater.decompress(compressed, _MAX_ICC)
    except zlib.error:
        return None, [_NO_ICC_PROFILE]
    if not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        return None, [_NO_ICC_PROFILE]
    if not icc_profile_is_whole(profile):
        return None, [_NO_ICC_PROFILE]
    cleaned = icc_profile_without_text(profile)
    if cleaned is None:
        return None, [NOT_REWRITABLE]
    notes = []
    if raw[:nul] not in USUAL_ICC_NAMES:
        notes.append("PNG iCCP profile name")
    if cleaned != profile:
        compressed = zlib.compress(cleaned, 9)
        notes.append(TEXT_REWRITTEN)
    name = raw[:nul] if raw[:nul] in USUAL_ICC_NAMES else ICC_NAME
    return name + b"\x00\x00" + compressed, notes


#: Samples per pixel by IHDR colour type (§11.2.1).
_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _raw_size(view: memoryview) -> int:
    """The most bytes the image data may inflate to (§7.2, §8.2): a filter byte and the packed
    samples of every row, of every pass when interlaced (each pass row has its own filter byte
    and its own rounding to a whole byte: at most 14 per row more)."""
    width, height, depth, colour_type, _, _, interlace = struct.unpack_from(">IIBBBBB", view, len(PNG_SIGNATURE) + 8)
    row = (int(width) * _CHANNELS.get(int(colour_type), 4) * int(depth) + 7) // 8
    return int(height) * (1 + row) + (14 * (int(height) + 7) if interlace else 0)


def _image_data(view: memoryview, chunks: tuple[Chunk, ...]) -> tuple[list[memoryview | bytes], bool]:
    """The IDAT chunks as a stripped PNG has them (their CRCs checked), and whether anything
    followed the image's zlib stream in them (§10: the image data is one zlib stream; bytes after
    its end are no image): then the stream alone, in one IDAT; else the chunks as they are (also
    when the stream does not end within them: the decode proof refuses that, adapter.imaging.
    probe). A stream inflating past the image's own size (a zlib bomb behind the pixels) is
    refused: inflating it to find its end could cost gigabytes of work."""
    idats = [c for c in chunks if c.type == b"IDAT"]
    for chunk in idats:
        _check_crc(view, chunk)
    whole: list[memoryview | bytes] = [view[c.start:c.end] for c in idats]
    limit = _raw_size(view)
    inflated = 0
    inflater = zlib.decompressobj()
    for i, chunk in enumerate(idats):
        pending: bytes | memoryview = view[chunk.start + 8:chunk.end - 4]
        fed = len(pending)
        while pending and not inflater.eof:
            try:
                inflated += len(inflater.decompress(pending, 1 << 20))  # not kept: only where it ends
            except zlib.error:
                return whole, False
            if inflated > limit:
                raise UndecodableImage("PNG image data inflates to more than the image holds")
            pending = inflater.unconsumed_tail
        if inflater.eof:
            tail = len(inflater.unused_data)
            if tail == 0 and all(c.end - c.start == 12 for c in idats[i + 1:]):
                return whole, False
            stream = [view[c.start + 8:c.end - 4] for c in idats[:i]]
            stream.append(view[chunk.start + 8:chunk.start + 8 + fed - tail])
            return [make_chunk(b"IDAT", b"".join(stream))], True
    return whole, False


#: The colour type (§11.2.1) whose pixels are indices into PLTE.
INDEXED_COLOUR = 3


def _colour(data: bytes, layout: PngLayout) -> tuple[int, int]:
    """The IHDR colour type (§11.2.1) and the number of palette entries kept (§11.2.2): none but
    for an indexed-colour image (:func:`_palette_kept`)."""
    colour_type = data[len(PNG_SIGNATURE) + 17]
    if not _palette_kept(colour_type):
        return colour_type, 0
    return colour_type, sum((c.end - c.start - 12) // 3 for c in layout.chunks if c.type == b"PLTE")


def _palette_kept(colour_type: int) -> bool:
    """Is a PLTE chunk kept? Only for an indexed-colour image, whose pixels are its entries.
    In a truecolour image (types 2 and 6) it is a suggested palette for viewers that cannot show
    truecolour (§11.2.2), which no decoder reads for the pixels; in greyscale ones (0 and 4) it
    must not appear at all. Either way its 3n bytes could carry anything: dropped, and with it
    hIST (§11.3.5.3), which gives the frequency of each of its entries."""
    return colour_type == INDEXED_COLOUR


def strip_png(data: bytes, *, max_pixels: int | None = None) -> Stripped:
    """Keep critical chunks (PLTE only for an indexed-colour image: :func:`_palette_kept`) and
    colour/rendering ancillary chunks (``KEEP_ANCILLARY``; an iCCP under a plain name, its
    profile's text rewritten: :func:`_canonical_iccp`); drop tEXt, zTXt, iTXt (XMP included),
    eXIf, tIME, APNG animation chunks (acTL/fcTL/fdAT: frames other than the default image could
    show anything), sPLT (it has a name), a suggested palette's PLTE and hIST, and every unknown
    ancillary chunk; cut anything after IEND. An eXIf Orientation other than 1 comes back as
    an Orientation-only eXIf right after IHDR, as for JPEG."""
    layout = walk(data, max_pixels=max_pixels)
    view = memoryview(data)
    removed: list[str] = []
    exif: ExifSummary | None = None
    kept: list[memoryview | bytes] = [view[:len(PNG_SIGNATURE)]]
    colour_type, palette = _colour(data, layout)
    image, trailing = _image_data(view, layout.chunks)
    if trailing:
        removed.append("data after the PNG image stream")
    for chunk in layout.chunks:
        payload = view[chunk.start + 8:chunk.end - 4]
        if chunk.type == b"IDAT":
            kept.extend(image)  # at the first IDAT, all of them
            image = []
            continue
        if chunk.type == b"PLTE" and not _palette_kept(colour_type):
            removed.append("PNG PLTE (suggested palette)")
            continue
        if chunk.type in CRITICAL:
            _check_crc(view, chunk)
            kept.append(view[chunk.start:chunk.end])
            continue
        if chunk.type == b"hIST" and not _palette_kept(colour_type):
            removed.append("PNG hIST (of a suggested palette)")
            continue
        if chunk.type in KEEP_ANCILLARY:
            _check_crc(view, chunk)
            if chunk.type == b"iCCP":
                canonical, notes = _canonical_iccp(payload)
                removed.extend(notes)
                if canonical is None:
                    pass
                elif bytes(payload) != canonical:
                    kept.append(make_chunk(b"iCCP", canonical))
                else:
                    kept.append(view[chunk.start:chunk.end])
            elif chunk.type == b"tRNS":
                trns = _trns(payload, colour_type, palette)
                if trns is None:
                    removed.append("PNG tRNS (ill-formed)")
                elif len(trns) == len(payload):
                    kept.append(view[chunk.start:chunk.end])
                else:
                    kept.append(make_chunk(b"tRNS", bytes(trns)))
                    removed.append("PNG tRNS data after its defined length")
            elif _well_formed(chunk.type, payload, colour_type, palette):
                kept.append(view[chunk.start:chunk.end])
            else:
                removed.append(f"PNG {chunk.type.decode('ascii')} (ill-formed)")
            continue
        removed.append(f"PNG {chunk.type.decode('ascii')}")
        if chunk.type == b"eXIf" and exif is None:
            exif = parse_exif(bytes(view[chunk.start + 8:chunk.end - 4]))
            removed.extend(exif.categories)
    if layout.trailer:
        removed.append("trailer after IEND")
    if exif is not None and exif.orientation not in (None, 1):
        assert exif.orientation is not None
        # After the signature and IHDR (walk() checked that IHDR comes first).
        kept.insert(2, make_chunk(b"eXIf", orientation_only_tiff(exif.orientation)))
    stored = b"".join(kept)
    return Stripped(stored, layout.width, layout.height, tuple(dict.fromkeys(removed)), exif)


def strip_png_but_orientation(data: bytes) -> bytes:
    """What :func:`strip_png_to_pixels_only` keeps, and an Orientation-only eXIf right after IHDR
    when the photo has an Orientation other than 1 (as :func:`strip_png` makes it), so that the
    pseudonymised view shows it upright. Nothing else: not iCCP (see
    :func:`adapter.imaging.jpeg.strip_jpeg_but_orientation`: the profile's own tags are free
    text), nor the other colour chunks the stored photo keeps for care (cHRM, sBIT, bKGD, pHYs,
    cICP, mDCV, cLLI, a palette's hIST): the uploader's numbers, which the de-identified copy
    has none of either. Of the chunks that change how the pixels render, each view keeps the
    same: tRNS (§11.3.2.1, the transparency of decoded samples), gAMA and sRGB (§11.3.3.2,
    §11.3.3.5: what the samples mean)."""
    stored = strip_png(data).data
    view = memoryview(stored)
    orientation = [view[chunk.start:chunk.end] for chunk in walk(stored).chunks if chunk.type == b"eXIf"]
    pixels = strip_png_to_pixels_only(stored)
    after_ihdr = len(PNG_SIGNATURE) + 25  # walk() checked IHDR comes first, 13 bytes of data
    return b"".join([pixels[:after_ihdr], *orientation, pixels[after_ihdr:]])


def strip_png_to_pixels_only(data: bytes) -> bytes:
    """Critical chunks (PLTE only for an indexed-colour image) plus ``PIXELS_ONLY_ANCILLARY``
    (tRNS, gAMA, sRGB) when well formed, and only the image's zlib stream in the image data,
    nothing else."""
    layout = walk(data)
    view = memoryview(data)
    colour_type, palette = _colour(data, layout)
    image, _ = _image_data(view, layout.chunks)
    parts: list[memoryview | bytes] = [view[:len(PNG_SIGNATURE)]]
    for chunk in layout.chunks:
        if chunk.type == b"IDAT":
            parts.extend(image)  # at the first IDAT, all of them
            image = []
        elif chunk.type == b"tRNS":
            _check_crc(view, chunk)
            trns = _trns(view[chunk.start + 8:chunk.end - 4], colour_type, palette)
            if trns is not None:  # cut to its defined length, as in strip_png
                parts.append(view[chunk.start:chunk.end] if len(trns) == chunk.end - chunk.start - 12
                             else make_chunk(b"tRNS", bytes(trns)))
        elif chunk.type == b"PLTE" and not _palette_kept(colour_type):
            continue
        elif chunk.type in CRITICAL or (chunk.type in PIXELS_ONLY_ANCILLARY and _well_formed(
                chunk.type, view[chunk.start + 8:chunk.end - 4], colour_type, palette)):
            _check_crc(view, chunk)
            parts.append(view[chunk.start:chunk.end])
    return b"".join(parts)


def _check_crc(view: memoryview, chunk: Chunk) -> None:
    """§5.5: CRC-32 (ISO 3309) over the type and data fields."""
    expected = int.from_bytes(view[chunk.end - 4:chunk.end], "big")
    if zlib.crc32(view[chunk.start + 4:chunk.end - 4]) != expected:
        raise UndecodableImage(f"PNG {chunk.type.decode('ascii')} chunk fails its CRC check")


def make_chunk(ctype: bytes, payload: bytes) -> bytes:
    """A chunk of type ``ctype`` holding ``payload``, with its length and CRC (§5.3)."""
    body = ctype + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))
