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
    photo. Sharpness: when the entropy-coded data fits :data:`PREFIX_SCAN_BYTES` the stream is
    decoded whole (same as ``full``); a progressive JPEG at 1/8 scale is decoded from its DC scans,
    which give exactly the pixels of a full decode at that scale; a sequential (baseline) JPEG is
    decoded down to where its first :data:`PREFIX_SCAN_BYTES` bytes end and measured over those
    whole MCU rows if they are at least :data:`PREFIX_MIN_ROWS` of the height, otherwise not
    measured at all (no blur warning rather than a false one); arithmetic-coded or lossless
    streams cut short are not measured.

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

from PIL import Image, ImageChops, ImageFilter, ImageStat, JpegImagePlugin

from adapter.errors import ImageTooLarge, UndecodableImage
from adapter.imaging.jpeg import JpegLayout, decode_stream, walk
from adapter.imaging.quality import box_factor, dct_scale, estimate_jpeg_quality
from adapter.imaging.sniff import JPEG, PNG

# Errors Pillow and its C decoders raise on bad data (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

#: Entropy-coded bytes a ``prefix`` proof decodes from a sequential JPEG (about 2.5 ms of libjpeg
#: time here); a photo whose scans fit is decoded whole. A blurred 12 MP photo is typically
#: 0.4-0.9 MB (few edges to code), a sharp one 3 MB or more.
PREFIX_SCAN_BYTES = 384 * 1024
#: Under ``prefix``, a sequential JPEG cut short is measured only if the decoded whole MCU rows
#: are at least this share of its height.
PREFIX_MIN_ROWS = 0.5


@dataclass(frozen=True, slots=True)
class Decoded:
    """The outcome of a successful reduced decode. ``sharpness`` is None when not measured."""

    width: int
    height: int
    sharpness: float | None
    jpeg_quality: int | None


def decode_reduced(data: bytes, content_type: str, *, proof: str = "full",
                   layout: JpegLayout | None = None) -> Decoded:
    """Prove that ``data`` decodes, measuring sharpness on a reduced greyscale image and, for
    JPEG, estimating the encoder quality from the quantization tables.

    ``proof`` is ``policy.quality.decodeProof`` (``full`` or ``prefix``, module docstring); for
    ``prefix``, ``layout`` is the walk of ``data`` with ``check_decoding`` (walked here if not
    given). Raises :class:`UndecodableImage`, or :class:`ImageTooLarge` for Pillow's own
    decompression-bomb check (a second line behind the header check of ``Limits``).
    """
    fmt = {JPEG: "JPEG", PNG: "PNG"}[content_type]
    prefix = content_type == JPEG and proof == "prefix"
    if prefix and (layout is None or layout.frame is None):
        layout = walk(data, check_decoding=True)
    try:
        if prefix:
            assert layout is not None
            return _decode_jpeg_prefix(data, layout)
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


def _decode_jpeg_prefix(data: bytes, layout: JpegLayout) -> Decoded:
    frame = layout.frame
    assert frame is not None
    scale = dct_scale(layout.width, layout.height)
    stream = decode_stream(data, layout, budget=PREFIX_SCAN_BYTES, dc_preview=scale == 8)
    with Image.open(io.BytesIO(stream.data), formats=["JPEG"]) as im:
        assert isinstance(im, JpegImagePlugin.JpegImageFile)
        width, height = im.size
        jpeg_quality = estimate_jpeg_quality(im.quantization)
        im.draft("L", (width // scale, height // scale))
        im.load()
        grey = im if im.mode == "L" else _to_grey(im)
        if stream.complete or stream.dc_preview:
            sharpness = _sharpness(grey)
        elif grey is None or frame.progressive or frame.arithmetic or frame.lossless:
            sharpness = None  # no flat fill to find the decoded part by, or partial AC only
        else:
            rows = _decoded_rows(im, -(-frame.mcu_rows // scale))
            factor = box_factor(*im.size)
            rows -= rows % factor
            if rows >= PREFIX_MIN_ROWS * im.height and rows > 2 * factor:
                sharpness = _sharpness(grey.crop((0, 0, im.width, rows)), factor)
            else:
                sharpness = None
    return Decoded(width, height, sharpness, jpeg_quality)


def _decoded_rows(im: Image.Image, mcu_rows: int) -> int:
    """Rows of ``im`` (a sequential JPEG decoded from a cut stream) made of whole MCU rows that
    libjpeg decoded from data. Past the cut every block has zero coefficients, so the rest of the
    image is one flat colour, that of the last pixel; the last MCU row holding anything else is
    where the data ran out mid-row, and is left out with everything below it."""
    try:
        fill = Image.new(im.mode, im.size, im.getpixel((im.width - 1, im.height - 1)))
        box = ImageChops.difference(im, fill).getbbox()
    except ValueError:  # a mode ImageChops cannot compare
        return 0
    if box is None:
        return 0
    bottom = box[3]
    return max(0, (bottom // mcu_rows - 1) * mcu_rows)


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


def _sharpness(grey: Image.Image | None, factor: int | None = None) -> float | None:
    """Mean response of Pillow's FIND_EDGES (3x3 Laplacian) on the reduced greyscale image,
    box-reduced by ``factor`` (default: from its size, :func:`box_factor`)."""
    if grey is None:
        return None
    if factor is None:
        factor = box_factor(*grey.size)
    if factor > 1:
        grey = grey.reduce(factor)
    edges = grey.filter(ImageFilter.FIND_EDGES)
    if edges.width > 2 and edges.height > 2:  # Pillow copies the 1-pixel border unfiltered
        edges = edges.crop((1, 1, edges.width - 1, edges.height - 1))
    return float(ImageStat.Stat(edges).mean[0])
