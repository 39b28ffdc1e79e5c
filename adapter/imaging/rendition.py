"""A rendered image made as a client's rendering query parameters ask (WADO-RS rendered, PS3.18
8.3.5.1: ``viewport``, ``quality``, ``window``), from what an instance renders as (a JPEG or a
PNG: adapter.services.access). Pillow stays in this package.

The picture is made anew from the decoded pixels, upright (EXIF Orientation applied, as a viewer
shows it), with no metadata at all (no EXIF, ICC profile, comment or text chunk):

- ``window`` (PS3.18 8.3.5.1.4; PS3.3 C.11.2.1.2 and C.11.2.1.3): a greyscale image's values of
  interest mapped to 8-bit display values by the VOI LUT function named (``linear``,
  ``linear-exact``, ``sigmoid``), in the units of its Modality LUT (the stored value times the
  Rescale Slope plus the Rescale Intercept, :class:`GreyLevels`); a MONOCHROME1 image then shown
  inverted, as a DICOM viewer shows it. A colour image has no window: it is shown as it is.
- ``viewport`` (PS3.18 8.3.5.1.3): the region ``sx,sy,sw,sh`` of the image (the whole image by
  default; a negative ``sw`` or ``sh`` mirrors it), scaled to fit ``vw`` x ``vh`` with its
  aspect kept.
- ``quality`` (PS3.18 8.3.5.1.2): the quality of a lossy (JPEG) answer, 1-100; a lossless one
  (PNG, GIF) is not affected.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from adapter.errors import InvalidQuery
from adapter.imaging.frame import read_orientation
from adapter.imaging.render import decode_pixels, opened
from adapter.imaging.sniff import JPEG, PNG, check_declared
from adapter.imaging.thumbnail import (
    RENDERED_QUALITY,
    RENDERED_TYPES,
    baseline_jpeg,
    gif_of,
    picture_of,
    whole_decode,
)

#: The VOI LUT functions the ``window`` parameter names (PS3.18 8.3.5.1.4).
WINDOW_FUNCTIONS = ("linear", "linear-exact", "sigmoid")


@dataclass(frozen=True, slots=True)
class Viewport:
    """``viewport=vw,vh[,sx,sy,sw,sh]``: the picture's bounds, and the region of the source shown
    (None: the whole image; each of ``sx``, ``sy`` None for 0, ``sw``, ``sh`` None for the rest of
    the image)."""

    columns: int
    rows: int
    sx: int | None = None
    sy: int | None = None
    sw: int | None = None
    sh: int | None = None


@dataclass(frozen=True, slots=True)
class Window:
    """``window=center,width,function`` (PS3.3 C.11.2.1.2 Window Center and Width)."""

    center: float
    width: float
    function: str


@dataclass(frozen=True, slots=True)
class GreyLevels:
    """What a greyscale object's rendered picture's values are, for windowing: the bits of each
    stored value, the Modality LUT's Rescale Slope and Intercept, and whether it is MONOCHROME1
    (0 = white; its PNG rendering shows it inverted, adapter.imaging.render.encode_png)."""

    bits_stored: int
    slope: float = 1.0
    intercept: float = 0.0
    monochrome1: bool = False


def rendered_with(data: bytes, content_type: str, media_type: str, *, viewport: Viewport | None,
                  window: Window | None, quality: int | None, grey: GreyLevels | None, max_side: int,
                  max_pixels: int) -> bytes:
    """``data`` (a JPEG or PNG: what an instance renders as) made anew as ``media_type`` (one of
    :data:`adapter.imaging.thumbnail.RENDERED_TYPES`) as the parameters ask (module docstring);
    without a viewport a JPEG is at most ``max_side`` a side. ``grey``: None for a colour image
    (``window`` then does not apply).

    Raises:
        ValueError: ``media_type`` is not one made here.
        InvalidQuery: the viewport's region lies outside the image (expression ``viewport``).
        UnsupportedMediaType, UndecodableImage, ImageTooLarge: as adapter.imaging.render.decode_pixels.
    """
    if media_type not in RENDERED_TYPES:
        raise ValueError(f"cannot render as {media_type}")
    kind = check_declared(data, content_type)
    with whole_decode():
        if window is not None and grey is not None:
            picture = _windowed(data, kind, window, grey, max_pixels)
        else:
            pixels = decode_pixels(data, kind, orientation=read_orientation(data, kind), max_pixels=max_pixels)
            picture = picture_of(pixels)
            del pixels
        if viewport is not None:
            picture = _in_viewport(picture, viewport)
        elif media_type == "image/jpeg":
            picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return _encoded(picture, media_type, quality)


def _windowed(data: bytes, kind: str, window: Window, grey: GreyLevels, max_pixels: int) -> Image.Image:
    """The greyscale picture's values back in stored units (a PNG rendering scaled them to its
    bit depth and inverted MONOCHROME1), through the Modality LUT and the window, to 8 bits."""
    with opened(data, "JPEG" if kind == JPEG else "PNG", max_pixels=max_pixels) as im:
        im.load()
        turned = ImageOps.exif_transpose(im)
        if turned.mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
            turned = turned.convert("L")
        values = np.asarray(turned).astype(np.float64)
    depth = 8 if turned.mode == "L" else 16
    mask = (1 << grey.bits_stored) - 1
    if kind == PNG:
        values = np.floor(values / (1 << max(depth - grey.bits_stored, 0)))
        if grey.monochrome1:
            values = mask - values
    x = values * grey.slope + grey.intercept
    c, w = window.center, window.width
    if window.function == "linear":
        y = np.clip(((x - (c - 0.5)) / (w - 1) + 0.5) * 255, 0, 255) if w > 1 else np.where(x <= c - 0.5, 0, 255)
    elif window.function == "linear-exact":
        y = np.clip(((x - c) / w + 0.5) * 255, 0, 255)
    else:
        with np.errstate(over="ignore"):  # far outside the window: exp overflows to inf, y to 0
            y = 255 / (1 + np.exp(-4 * (x - c) / w))
    out = np.rint(y).astype(np.uint8)
    if grey.monochrome1:
        out = 255 - out
    return Image.fromarray(out, "L")


def _in_viewport(picture: Image.Image, viewport: Viewport) -> Image.Image:
    """The viewport's region of ``picture`` (mirrored where its sw or sh is negative), scaled to
    fit ``columns`` x ``rows``, aspect kept (PS3.18 8.3.5.1.3)."""
    width, height = picture.size
    sx, sy = viewport.sx or 0, viewport.sy or 0
    sw = viewport.sw if viewport.sw is not None else width - sx
    sh = viewport.sh if viewport.sh is not None else height - sy
    left, right = sorted((sx, sx + sw))
    top, bottom = sorted((sy, sy + sh))
    left, top, right, bottom = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
    if right <= left or bottom <= top:
        raise InvalidQuery(f"viewport: the region sx,sy,sw,sh lies outside the {width}x{height} image",
                           expression="viewport")
    if (left, top, right, bottom) != (0, 0, width, height):
        picture = picture.crop((left, top, right, bottom))
    if sw < 0:
        picture = picture.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if sh < 0:
        picture = picture.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    scale = min(viewport.columns / picture.width, viewport.rows / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture if size == picture.size else picture.resize(size, Image.Resampling.LANCZOS)


def _encoded(picture: Image.Image, media_type: str, quality: int | None) -> bytes:
    """``picture`` as ``media_type``, with nothing but the pixels (and JFIF's header)."""
    if media_type == "image/jpeg":
        return baseline_jpeg(picture, quality=quality or RENDERED_QUALITY)
    if media_type == "image/gif":
        return gif_of(picture)
    picture.info = {}
    out = io.BytesIO()
    picture.save(out, format="PNG", optimize=False, compress_level=6)
    return out.getvalue()


__all__ = ["WINDOW_FUNCTIONS", "GreyLevels", "Viewport", "Window", "rendered_with"]
