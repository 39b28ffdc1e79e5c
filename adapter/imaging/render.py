"""Full-resolution decode to raw samples (for DICOM native pixel data) and lossless PNG rendering
of raw samples (for a Binary made from a received DICOM object). Pillow stays in this package.

The DICOM side of these functions (what the samples mean: PS3.3 C.7.6.3 Image Pixel module) is
in adapter.mapping; here a :class:`Pixels` is just rows × columns × samples of 8- or 16-bit
unsigned integers, interleaved (colour-by-pixel), little-endian for 16-bit, as DICOM native
Explicit VR Little Endian stores them.
"""

from __future__ import annotations

import io
import sys
from array import array
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageChops

from adapter.errors import ImageTooLarge, UndecodableImage, UnsupportedPixelData
from adapter.imaging.frame import png_bit_depth
from adapter.imaging.probe import DECODE_ERRORS
from adapter.imaging.sniff import JPEG, PNG, check_declared

# EXIF Orientation (CIPA DC-008 §4.6.4 A, tag 0x0112) → the transpose that displays the image
# upright (the same table as PIL.ImageOps.exif_transpose) and the words for DerivationDescription.
_TRANSPOSE: dict[int, tuple[Image.Transpose, str]] = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT, "mirrored left-right"),
    3: (Image.Transpose.ROTATE_180, "rotated 180 degrees"),
    4: (Image.Transpose.FLIP_TOP_BOTTOM, "mirrored top-bottom"),
    5: (Image.Transpose.TRANSPOSE, "transposed (mirrored about the main diagonal)"),
    6: (Image.Transpose.ROTATE_270, "rotated 90 degrees clockwise"),
    7: (Image.Transpose.TRANSVERSE, "transversed (mirrored about the anti-diagonal)"),
    8: (Image.Transpose.ROTATE_90, "rotated 90 degrees counter-clockwise"),
}


@dataclass(frozen=True, slots=True)
class Pixels:
    """Raw unsigned samples, interleaved, row by row.

    ``photometric`` is ``MONOCHROME2`` (1 sample, 0 = black), ``MONOCHROME1`` (1 sample,
    0 = white; accepted by :func:`encode_png` only) or ``RGB`` (3 samples). ``bits_stored`` ≤
    ``bits`` (8 or 16) says how many low bits carry the value. ``changes`` names every step
    that changed what a viewer shows compared with the source (empty when the samples are the
    source's own, losslessly).
    """

    rows: int
    columns: int
    samples: int
    photometric: str
    bits: int
    data: bytes
    bits_stored: int = 0
    changes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.bits not in (8, 16) or self.samples not in (1, 3):
            raise ValueError(f"unsupported pixel layout: {self.samples} samples of {self.bits} bits")
        if not self.bits_stored:
            object.__setattr__(self, "bits_stored", self.bits)
        expected = self.rows * self.columns * self.samples * (self.bits // 8)
        if len(self.data) != expected:
            raise ValueError(f"pixel data is {len(self.data)} bytes, {expected} expected")


def decode_pixels(data: bytes, content_type: str, *, orientation: int | None = None,
                  max_pixels: int | None = None, drop_alpha: bool = False) -> Pixels:
    """Decode a stored JPEG or PNG at full resolution to 8-bit ``MONOCHROME2`` or ``RGB``
    samples, displayed upright: ``orientation`` (EXIF 1..8) is applied with an exact transpose
    (no resampling).

    Conversions, each named in ``Pixels.changes`` when it alters what a viewer shows:
    transparency (an alpha channel, a tRNS chunk) is composited over black, so a pixel shows as
    much of its colour as its alpha lets through: a fully transparent one is black, never the
    colour hidden under it (review mobile finding 12: a screenshot's part erased to transparency
    showed again); named only when some pixel was not fully opaque. ``drop_alpha`` (what objects
    of PHOTO_OBJECT_VERSION 2 and before were made with) drops the alpha instead; a palette
    is expanded (lossless, not named); 1-bit becomes 0/255 (lossless, not named); 16-bit
    samples are reduced to their high 8 bits (named); CMYK/YCCK JPEGs are converted to RGB
    (named). JPEG YCbCr is converted to RGB by the decoder, which is how every viewer shows
    it; the lossy history is the caller's to record (LossyImageCompression).

    Raises:
        UnsupportedMediaType: ``content_type`` does not match the bytes.
        UndecodableImage: the image does not decode, or has a mode that cannot be mapped.
        ImageTooLarge: more than ``max_pixels`` (or Pillow's own limit).
    """
    kind = check_declared(data, content_type)
    if orientation is not None and not 1 <= orientation <= 8:
        raise ValueError(f"EXIF Orientation must be 1..8, not {orientation}")
    changes: list[str] = []
    fmt = "JPEG" if kind == JPEG else "PNG"
    if kind == PNG:
        depth, colour_type = png_bit_depth(data)
        if depth == 16 and colour_type in (2, 6):  # Pillow opens 16-bit RGB(A) as 8-bit RGB
            changes.append("16-bit samples reduced to 8 bits")
    with opened(data, fmt, max_pixels=max_pixels) as im:
        im.load()
        out = _to_8bit(im, changes, drop_alpha=drop_alpha)
    if orientation not in (None, 1):
        assert orientation is not None
        method, words = _TRANSPOSE[orientation]
        out = out.transpose(method)
        changes.append(f"{words} (EXIF Orientation {orientation})")
    samples = 1 if out.mode == "L" else 3
    return Pixels(rows=out.height, columns=out.width, samples=samples,
                  photometric="MONOCHROME2" if samples == 1 else "RGB", bits=8, data=out.tobytes(),
                  changes=tuple(changes))


@contextmanager
def opened(data: bytes, fmt: str, *, max_pixels: int | None) -> Iterator[Image.Image]:
    """``data`` opened by Pillow as ``fmt`` ("JPEG" or "PNG"), for decoding in the ``with``
    block: refused before anything is decoded when it has more than ``max_pixels`` pixels (None:
    no bound but Pillow's own), and a failure to decode in the block raised as the adapter's.

    Raises:
        ImageTooLarge: over ``max_pixels``, or over what Pillow's decompression-bomb guard allows.
        UndecodableImage: the image does not decode.
    """
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageTooLarge(f"image is {im.width}x{im.height} pixels, over the limit of {max_pixels}")
            yield im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge("image has more pixels than the decoder allows") from exc
    except DECODE_ERRORS as exc:
        raise UndecodableImage(f"the {fmt} image does not decode") from exc


def _to_8bit(im: Image.Image, changes: list[str], *, drop_alpha: bool = False) -> Image.Image:
    """``L`` or ``RGB`` from any mode Pillow opens a JPEG or PNG in (transparency: decode_pixels)."""
    mode = im.mode
    if mode in ("L", "RGB") and ("transparency" not in im.info or drop_alpha):
        return im.copy()
    if mode == "1":
        return im.convert("L")
    if mode in ("L", "RGB"):  # a tRNS chunk: the one grey level or colour it names is transparent
        im = im.convert("LA" if mode == "L" else "RGBA")
        mode = im.mode
    if mode == "P":
        has_alpha = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
        im = im.convert("RGBA" if has_alpha else "RGB")
        mode = im.mode
        if mode == "RGB":
            return im
    if mode in ("RGBA", "LA", "PA"):
        if mode == "PA":
            im, mode = im.convert("RGBA"), "RGBA"
        alpha = im.getchannel("A")
        opaque = alpha.getextrema() == (255, 255)
        colour = im.convert("RGB") if mode == "RGBA" else im.getchannel("L")
        if opaque:
            return colour
        if drop_alpha:
            changes.append("alpha channel dropped (transparent pixels shown with their colour samples)")
            return colour
        changes.append("transparency composited over black (a fully transparent pixel is black)")
        # over black: each sample times its alpha, /255 rounded (ImageChops.multiply)
        return ImageChops.multiply(colour, alpha if mode == "LA" else Image.merge("RGB", (alpha, alpha, alpha)))
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        changes.append("16-bit samples reduced to 8 bits")
        return im.convert("I").point(lambda v: v / 256).convert("L")
    if mode in ("CMYK", "YCbCr"):
        if mode == "CMYK":
            changes.append("CMYK converted to RGB")
        return im.convert("RGB")
    raise UndecodableImage(f"image mode {mode} cannot be converted to DICOM pixel data")


def encode_png(pixels: Pixels) -> bytes:
    """A lossless PNG of ``pixels``: 8-bit greyscale, 16-bit greyscale or 8-bit RGB.

    ``MONOCHROME1`` is inverted (within ``bits_stored``) so the PNG shows what a DICOM viewer
    shows; 16-bit samples with ``bits_stored`` < 16 are masked to their stored bits and
    left-shifted to full range (PNG §12.4 scaling: exact and reversible).

    Raises:
        UnsupportedPixelData: a layout PNG cannot hold losslessly here (16-bit colour).
    """
    size = (pixels.columns, pixels.rows)
    if pixels.samples == 1 and pixels.photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedPixelData(f"{pixels.photometric} pixels cannot be rendered as PNG")
    if pixels.samples == 3:
        if pixels.bits != 8 or pixels.photometric != "RGB":
            raise UnsupportedPixelData(f"{pixels.bits}-bit {pixels.photometric} pixels cannot be rendered as PNG")
        im = Image.frombytes("RGB", size, pixels.data)
    elif pixels.bits == 8:
        data = pixels.data
        mask = (1 << pixels.bits_stored) - 1
        if pixels.bits_stored < 8 or pixels.photometric == "MONOCHROME1":
            table = bytes(_grey8(v, mask, pixels.bits_stored, pixels.photometric) for v in range(256))
            data = data.translate(table)
        im = Image.frombytes("L", size, data)
    else:
        values = array("H")
        values.frombytes(pixels.data)
        if values.itemsize != 2:  # pragma: no cover - every supported platform has 2-byte H
            raise UnsupportedPixelData("16-bit samples need a 2-byte unsigned short")
        if sys.byteorder == "big":  # pragma: no cover
            values.byteswap()
        mask = (1 << pixels.bits_stored) - 1
        shift = 16 - pixels.bits_stored
        invert = pixels.photometric == "MONOCHROME1"
        if invert or shift:
            values = array("H", (((mask - (v & mask)) if invert else (v & mask)) << shift for v in values))
        im = Image.frombytes("I;16", size, values.tobytes())
    out = io.BytesIO()
    im.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


def _grey8(v: int, mask: int, bits_stored: int, photometric: str) -> int:
    value = v & mask
    if photometric == "MONOCHROME1":
        value = mask - value
    return value << (8 - bits_stored)


__all__ = ["Pixels", "decode_pixels", "encode_png", "opened"]
