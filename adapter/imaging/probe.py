"""Decode proof and measurements with Pillow: the only module of the adapter that imports it.

A JPEG is decoded through libjpeg's DCT scaling (``Image.draft``, 1/8..1/1), which skips most of
the inverse DCT, upsampling and colour conversion but, for a sequential JPEG, still entropy-decodes
every scan. ``policy.quality.decodeProof`` chooses how much of the stream the proof decodes:

``full``
    the whole stored stream. Sharpness is measured on the whole reduced image.
``prefix``
    every marker segment of the stored stream, with the entropy-coded data cut short
    (:func:`adapter.imaging.jpeg.decode_stream`): libjpeg parses and checks every table, frame and
    scan header exactly as in a full decode, and treats errors in entropy-coded data as warnings
    anyway, so both refuse the same streams; the walk (``check_decoding``) has also checked the
    headers and the stream's structure up to EOI. It costs a fraction of a full decode for a large
    photo. Sharpness is either measured exactly as under ``full`` or not at all (no blur warning
    rather than a different one): a progressive JPEG at 1/8 scale is decoded from its DC scans,
    which alone make the 1/8-scale image (libjpeg's 1/8 IDCT reads only the DC coefficient); a
    sequential (baseline) JPEG whose entropy-coded data is small for its size (at most
    :data:`WHOLE_SCAN_BYTES_PER_PIXEL` bytes per pixel, or :data:`PREFIX_SCAN_BYTES`) is decoded
    whole. Few bytes per pixel mean few edges, which is where blur is likely; a larger sequential
    JPEG (or a progressive one below 1/8 scale) gets only :data:`PREFIX_SCAN_BYTES` of its scan
    data decoded and its sharpness is not measured.

PNG has no reduced decode under either proof: the whole image is inflated and unfiltered (PNG
uploads are rare and usually small; a 12 MP PNG costs a few hundred ms and its full-size pixels in
memory), then box-reduced for the measurements. Every Pillow error is wrapped in the adapter's
hierarchy with the cause chained.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageStat, JpegImagePlugin

from adapter.errors import ImageTooLarge, UndecodableImage
from adapter.imaging.jpeg import StrippedJpeg, decode_stream, strip_jpeg_segments
from adapter.imaging.quality import box_factor, dct_scale, estimate_jpeg_quality
from adapter.imaging.sniff import JPEG, PNG

# Errors Pillow and its C decoders raise on bad data (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

#: Entropy-coded bytes a ``prefix`` proof decodes from a large sequential JPEG. Errors in them
#: could only be warnings, so they prove nothing the headers do not; a few keep libjpeg's Huffman
#: decoding exercised on real data. The whole decode costs ~0.8 ms here (a 3 MB photo: 25 ms).
PREFIX_SCAN_BYTES = 16 * 1024
#: ... unless its entropy-coded data is at most this many bytes per pixel: then it is decoded
#: whole (it costs ~8 ms per MB). Few bytes per pixel mean few edges: that is where blur is likely
#: and worth measuring exactly. Measured here for 12 MP: sharp photos 0.25-0.5 bytes per pixel
#: (q85-q95), Gaussian-blurred ones 0.03-0.09.
WHOLE_SCAN_BYTES_PER_PIXEL = 0.1


@dataclass(frozen=True, slots=True)
class Decoded:
    """The outcome of a successful reduced decode. ``sharpness`` is None when not measured."""

    width: int
    height: int
    sharpness: float | None
    jpeg_quality: int | None


def decode_reduced(data: bytes, content_type: str, *, proof: str = "full") -> Decoded:
    """Prove that ``data`` decodes, measuring sharpness on a reduced greyscale image and, for
    JPEG, estimating the encoder quality from the quantization tables.

    ``proof`` is ``policy.quality.decodeProof`` (``full`` or ``prefix``, module docstring; PNG
    is always decoded whole). Raises :class:`UndecodableImage`, or :class:`ImageTooLarge` for
    Pillow's own decompression-bomb check (a second line behind the header check of ``Limits``).
    """
    if content_type == JPEG and proof == "prefix":
        return decode_jpeg_prefix(strip_jpeg_segments(data, check_decoding=True))
    fmt = {JPEG: "JPEG", PNG: "PNG"}[content_type]
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as im:
            width, height = im.size
            jpeg_quality = None
            if isinstance(im, JpegImagePlugin.JpegImageFile):
                jpeg_quality = estimate_jpeg_quality(im.quantization)
                scale = _dct_scale(width, height)
                im.draft("L", (width // scale, height // scale))
            im.load()
            sharpness = _sharpness(im if im.mode == "L" else _to_grey(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # The warning is only raised when warnings are errors (as under pytest); it fires for
        # pixel counts between Pillow's MAX_IMAGE_PIXELS and twice that, which only a policy
        # with Limits.max_pixels above Pillow's limit lets through our own header check.
        raise ImageTooLarge("image has more pixels than the decoder allows") from exc
    except DECODE_ERRORS as exc:
        raise UndecodableImage(f"the {fmt} image does not decode") from exc
    return Decoded(width, height, sharpness, jpeg_quality)


def decode_jpeg_prefix(stripped: StrippedJpeg) -> Decoded:
    """The ``prefix`` decode proof of a stripped JPEG walked with ``check_decoding`` (module
    docstring); raises as :func:`decode_reduced`."""
    frame = stripped.frame
    if frame is None:
        raise ValueError("the JPEG was not walked with check_decoding")
    scale = _dct_scale(stripped.width, stripped.height)
    stream = decode_stream(stripped, budget=PREFIX_SCAN_BYTES, dc_preview=scale == 8,
                           whole_up_to=int(WHOLE_SCAN_BYTES_PER_PIXEL * stripped.width * stripped.height))
    try:
        with Image.open(io.BytesIO(stream.data), formats=["JPEG"]) as im:
            assert isinstance(im, JpegImagePlugin.JpegImageFile)
            width, height = im.size
            jpeg_quality = estimate_jpeg_quality(im.quantization)
            im.draft("L", (width // scale, height // scale))
            im.load()
            sharpness = None
            if stream.complete or stream.dc_preview:
                sharpness = _sharpness(im if im.mode == "L" else _to_grey(im))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge("image has more pixels than the decoder allows") from exc
    except DECODE_ERRORS as exc:
        raise UndecodableImage("the JPEG image does not decode") from exc
    return Decoded(width, height, sharpness, jpeg_quality)


def _dct_scale(width: int, height: int) -> int:
    """:func:`dct_scale` (chosen from the long side), halved until the short side keeps a pixel:
    asked for a draft 0 pixels high, Pillow divides by it (found by fuzzing: a 2048x1 JPEG was a
    500). Pillow then decodes at exactly this scale, which the DC preview relies on."""
    scale = dct_scale(width, height)
    while scale > 1 and min(width, height) < scale:
        scale //= 2
    return scale


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
