"""Decode proof and measurements with Pillow: the only module of the adapter that imports it.

A JPEG is decoded through libjpeg's DCT scaling (``Image.draft``, 1/8..1/1), which still
entropy-decodes every scan, so a corrupt stream fails, but skips most of the inverse DCT,
upsampling and colour conversion. PNG has no reduced decode: the whole image is inflated and
unfiltered (PNG uploads are rare and usually small), then box-reduced for the measurements.
Every Pillow error is wrapped in the adapter's hierarchy with the cause chained.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageStat, JpegImagePlugin

from adapter.errors import ImageTooLarge, UndecodableImage
from adapter.imaging.quality import box_factor, dct_scale, estimate_jpeg_quality
from adapter.imaging.sniff import JPEG, PNG

# Errors Pillow and its C decoders raise on bad data (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)


@dataclass(frozen=True, slots=True)
class Decoded:
    """The outcome of a successful reduced decode."""

    width: int
    height: int
    sharpness: float | None
    jpeg_quality: int | None


def decode_reduced(data: bytes, content_type: str) -> Decoded:
    """Prove that ``data`` decodes, measuring sharpness on a reduced greyscale image and, for
    JPEG, estimating the encoder quality from the quantization tables.

    Raises :class:`UndecodableImage`, or :class:`ImageTooLarge` for Pillow's own
    decompression-bomb check (a second line behind the header check of ``Limits``).
    """
    fmt = {JPEG: "JPEG", PNG: "PNG"}[content_type]
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            width, height = im.size
            jpeg_quality = None
            if isinstance(im, JpegImagePlugin.JpegImageFile):
                jpeg_quality = estimate_jpeg_quality(im.quantization)
                scale = dct_scale(width, height)
                im.draft("L", (width // scale, height // scale))
            im.load()
            sharpness = _sharpness(im if im.mode == "L" else _to_grey(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning is only raised when warnings are errors (as under pytest); it fires for
        # pixel counts between Pillow's MAX_IMAGE_PIXELS and twice that, which only a policy
        # with Limits.max_pixels above Pillow's limit lets through our own header check.
        raise ImageTooLarge("image has more pixels than the decoder allows") from exc
    except _DECODE_ERRORS as exc:
        raise UndecodableImage(f"the {fmt} image does not decode") from exc
    return Decoded(width, height, sharpness, jpeg_quality)


def _to_grey(im: Image.Image) -> Image.Image | None:
    """8-bit greyscale for the measurement. 16-bit samples (PNG greyscale opens as ``I;16``)
    are scaled by 1/256 first: a plain ``convert("L")`` clips them to 255, which would read
    as a perfectly flat, "blurred" image."""
    try:
        if im.mode.startswith("I;16") or im.mode == "I":
            return im.convert("I").point(lambda v: v / 256).convert("L")
        return im.convert("L")
    except ValueError:  # exotic modes (e.g. LAB): no measurement rather than a refusal
        return None


def _sharpness(grey: Image.Image | None) -> float | None:
    """Mean response of Pillow's FIND_EDGES (3x3 Laplacian) on the reduced greyscale image."""
    if grey is None:
        return None
    factor = box_factor(*grey.size)
    if factor > 1:
        grey = grey.reduce(factor)
    edges = grey.filter(ImageFilter.FIND_EDGES)
    if edges.width > 2 and edges.height > 2:  # Pillow copies the 1-pixel border unfiltered
        edges = edges.crop((1, 1, edges.width - 1, edges.height - 1))
    return float(ImageStat.Stat(edges).mean[0])
