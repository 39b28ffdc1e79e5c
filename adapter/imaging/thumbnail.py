"""A small picture of a stored image, for a viewer's study list (DICOMweb thumbnails, PS3.18
8.3.5.1.2 / 9.x "Thumbnail resources"), and a rendered image in another media type than the one
it is stored as (:func:`rendered_as`: WADO-RS rendered, PS3.18 8.7.4). Pillow stays in this
package.

The thumbnail is a new, baseline JPEG encoded from decoded pixels: it carries no metadata at all
(no EXIF, XMP, ICC or comment; Pillow writes only the JFIF header), whatever the source held. A
JPEG source is decoded at a reduced scale (``Image.draft``: the decoder skips the detail a small
picture does not need, an eighth of the work for 1/8 scale), so a 12 MP photo costs a few
milliseconds, not a full decode. EXIF Orientation in the source is applied, so the picture is
upright as a viewer shows the full image.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image, ImageOps, JpegImagePlugin

from adapter.errors import Transient
from adapter.imaging.frame import read_orientation
from adapter.imaging.render import Pixels, decode_pixels, encode_png, opened
from adapter.imaging.sniff import JPEG, check_declared
from adapter.memory import give_back

#: JPEG quality of thumbnails: small files that still show a wound's edges.
THUMBNAIL_QUALITY = 80
#: JPEG quality of an image rendered anew as JPEG: close to what it shows at full size.
RENDERED_QUALITY = 90
#: Pictures made from a whole decode at once in a process (:func:`rendered_as`, a PNG's
#: thumbnail), and read pipelines of a large DICOM object (adapter.services.dicom_objects.regenerating):
#: an 80 MP image (the policy's default limit) takes ~0.7 GB while it is decoded and encoded again,
#: its DICOM object and the picture made of it ~1.5 GB, so readers asking for many at once wait
#: their turn rather than exhaust memory.
WHOLE_DECODES_AT_ONCE = 2
#: How long a reader waits for a turn (:func:`whole_decode`) before it is answered 503 with
#: Retry-After (Transient): a reader still waiting after this is behind a queue it had better come
#: back to than lengthen.
WHOLE_DECODE_WAIT_SECONDS = 30.0
_whole_decodes = threading.BoundedSemaphore(WHOLE_DECODES_AT_ONCE)
#: The turn the calling thread holds (``bound``: the semaphore it was taken of), if any.
_holder = threading.local()


@contextmanager
def whole_decode(*, bounded: bool = True) -> Iterator[None]:
    """Hold a turn of the bound on whole decodes (:data:`WHOLE_DECODES_AT_ONCE`) while a picture
    is decoded whole and made anew, or a large DICOM object made and read (adapter.services.access:
    the object, its frame, its picture and the answer under one turn). A thread holding a turn
    already keeps it: a request never waits for a second turn holding what it made under its first,
    so the memory of the large images being worked on is that of the turns, whatever the number of
    requests waiting, which hold nothing large. When the turn is given back, memory the C allocator
    kept is returned to the system (:func:`adapter.memory.give_back`).

    ``bounded``: wait at most :data:`WHOLE_DECODE_WAIT_SECONDS` for a turn; False: as long as it
    takes, for an answer that has started already and could no longer say 503.

    Raises:
        Transient: no turn came in time (503, Retry-After).
    """
    if getattr(_holder, "bound", None) is not None:
        yield  # the request's own turn
        return
    bound = _whole_decodes
    if not bound.acquire(timeout=WHOLE_DECODE_WAIT_SECONDS if bounded else None):
        raise Transient("too many large images are being prepared at once: retry later")
    _holder.bound = bound
    try:
        yield
    finally:
        _holder.bound = None
        bound.release()
        give_back()

#: The media types :func:`rendered_as` makes: those PS3.18 Table 8.7.4-1 gives a single-frame
#: image (image/jpeg the default; image/png and image/gif required).
RENDERED_TYPES = ("image/jpeg", "image/png", "image/gif")


def thumbnail_jpeg(data: bytes, content_type: str, *, rows: int, columns: int, max_pixels: int) -> bytes:
    """``data`` (a JPEG or PNG) as a JPEG of at most ``rows`` x ``columns`` pixels, its aspect
    kept, never enlarged; no metadata.

    Raises:
        UnsupportedMediaType: ``content_type`` does not match the bytes.
        UndecodableImage: the image does not decode.
        ImageTooLarge: the source has more than ``max_pixels`` pixels.
    """
    if rows < 1 or columns < 1:
        raise ValueError("a thumbnail needs at least one row and one column")
    kind = check_declared(data, content_type)
    if kind != JPEG:  # a PNG: decoded whole to 8-bit samples (16-bit by their high bits), as rendered
        with whole_decode():  # memory: see WHOLE_DECODES_AT_ONCE
            pixels = decode_pixels(data, kind, max_pixels=max_pixels)
            picture = picture_of(pixels)
            del pixels
            picture.thumbnail((columns, rows), Image.Resampling.LANCZOS)
            return baseline_jpeg(picture)
    with opened(data, "JPEG", max_pixels=max_pixels) as im:
        # the scale is chosen on the stored (unrotated) sides: the larger bound for both
        side = max(rows, columns)
        im.draft("L" if im.mode == "L" else "RGB", (side, side))
        turned = ImageOps.exif_transpose(im)
        picture = turned.convert("L" if turned.mode == "L" else "RGB")
        picture.thumbnail((columns, rows), Image.Resampling.LANCZOS)
    return baseline_jpeg(picture)


def rendered_as(data: bytes, content_type: str, media_type: str, *, max_side: int, max_pixels: int) -> bytes:
    """``data`` (a JPEG or PNG: what an instance is rendered as) made anew as ``media_type``, one
    of :data:`RENDERED_TYPES`, from its pixels decoded whole and upright (its EXIF Orientation
    applied, as a viewer shows it), with no metadata at all: image/png lossless of those pixels
    (a JPEG's decoded pixels: nothing lost beyond what its compression lost), image/jpeg
    baseline at :data:`RENDERED_QUALITY` and at most ``max_side`` a side, image/gif in a
    palette of 256 colours of its own (GIF holds no more).

    Raises:
        ValueError: ``media_type`` is not one of :data:`RENDERED_TYPES`.
        UnsupportedMediaType: ``content_type`` does not match the bytes.
        UndecodableImage: the image does not decode.
        ImageTooLarge: the source has more than ``max_pixels`` pixels.
    """
    if media_type not in RENDERED_TYPES:
        raise ValueError(f"cannot render as {media_type}")
    kind = check_declared(data, content_type)
    with whole_decode():  # memory: see WHOLE_DECODES_AT_ONCE
        pixels = decode_pixels(data, kind, orientation=read_orientation(data, kind), max_pixels=max_pixels)
        if media_type == "image/png":
            return encode_png(pixels)
        picture = picture_of(pixels)
        del pixels
        if media_type == "image/jpeg":
            picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return baseline_jpeg(picture, quality=RENDERED_QUALITY)
        return gif_of(picture)


def upright(data: bytes, content_type: str, *, max_pixels: int) -> bytes | None:
    """``data`` (a JPEG or PNG) turned as its EXIF Orientation says a viewer shows it, for a view
    that keeps no metadata (the de-identified one: without the tag the photo would lie on its
    side); None when it needs no turning (no Orientation, or 1). The pixels are transposed
    exactly (no resampling); a JPEG is encoded again with its own quantisation tables and
    chroma subsampling (a second generation of its loss, no more), a PNG losslessly in its own
    mode (a 16-bit colour PNG excepted: Pillow reads it as 8-bit). What comes
    back carries no metadata of the source (the caller strips it to pixels only).

    Raises:
        UnsupportedMediaType: ``content_type`` does not match the bytes.
        UndecodableImage: the image does not decode.
        ImageTooLarge: the source has more than ``max_pixels`` pixels.
    """
    kind = check_declared(data, content_type)
    orientation = read_orientation(data, kind)
    if orientation is None or orientation == 1:
        return None
    # memory: see WHOLE_DECODES_AT_ONCE
    with whole_decode(), opened(data, "JPEG" if kind == JPEG else "PNG", max_pixels=max_pixels) as im:
        turned = ImageOps.exif_transpose(im)  # its mode kept: alpha, palette, 16-bit grey
        turned.info = {}
        out = io.BytesIO()
        if isinstance(im, JpegImagePlugin.JpegImageFile):
            turned.save(out, format="JPEG", qtables=im.quantization,
                        subsampling=max(JpegImagePlugin.get_sampling(im), 0), optimize=False, progressive=False)
        else:
            turned.save(out, format="PNG")
        return out.getvalue()


def picture_of(pixels: Pixels) -> Image.Image:
    """Decoded 8-bit pixels (adapter.imaging.render.decode_pixels) as a Pillow image to encode anew."""
    return Image.frombytes("L" if pixels.samples == 1 else "RGB", (pixels.columns, pixels.rows), pixels.data)


def baseline_jpeg(picture: Image.Image, *, quality: int = THUMBNAIL_QUALITY) -> bytes:
    """A baseline JPEG with nothing but the JFIF header. Pillow would write a comment (and may
    write other info) carried over from the source image's ``info``: it is emptied first."""
    picture.info = {}
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality, optimize=False, progressive=False)
    return out.getvalue()


def gif_of(picture: Image.Image) -> bytes:
    """``picture`` as a GIF, in a palette of 256 colours of its own (GIF holds no more), with
    nothing but the pixels."""
    if picture.mode == "RGB":
        picture = picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    picture.info = {}
    out = io.BytesIO()
    picture.save(out, format="GIF")
    return out.getvalue()


__all__ = [
    "RENDERED_QUALITY",
    "RENDERED_TYPES",
    "THUMBNAIL_QUALITY",
    "WHOLE_DECODES_AT_ONCE",
    "WHOLE_DECODE_WAIT_SECONDS",
    "baseline_jpeg",
    "gif_of",
    "picture_of",
    "rendered_as",
    "thumbnail_jpeg",
    "upright",
    "whole_decode",
]
