"""A small picture of a stored image, for a viewer's study list (DICOMweb thumbnails, PS3.18
8.3.5.1.2 / 9.x "Thumbnail resources"). Pillow stays in this package.

The thumbnail is a new, baseline JPEG encoded from decoded pixels: it carries no metadata at all
(no EXIF, XMP, ICC or comment; Pillow writes only the JFIF header), whatever the source held. A
JPEG source is decoded at a reduced scale (``Image.draft``: the decoder skips the detail a small
picture does not need, an eighth of the work for 1/8 scale), so a 12 MP photo costs a few
milliseconds, not a full decode. EXIF Orientation in the source is applied, so the picture is
upright as a viewer shows the full image.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

from adapter.errors import ImageTooLarge, UndecodableImage
from adapter.imaging.probe import DECODE_ERRORS
from adapter.imaging.render import decode_pixels
from adapter.imaging.sniff import JPEG, check_declared

#: JPEG quality of thumbnails: small files that still show a wound's edges.
THUMBNAIL_QUALITY = 80


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
        pixels = decode_pixels(data, kind, max_pixels=max_pixels)
        picture = Image.frombytes("L" if pixels.samples == 1 else "RGB", (pixels.columns, pixels.rows), pixels.data)
        picture.thumbnail((columns, rows), Image.Resampling.LANCZOS)
        return _jpeg(picture)
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
            if im.width * im.height > max_pixels:
                raise ImageTooLarge(f"image is {im.width}x{im.height} pixels, over the limit of {max_pixels}")
            # the scale is chosen on the stored (unrotated) sides: the larger bound for both
            side = max(rows, columns)
            im.draft("L" if im.mode == "L" else "RGB", (side, side))
            upright = ImageOps.exif_transpose(im)
            picture = upright.convert("L" if upright.mode == "L" else "RGB")
            picture.thumbnail((columns, rows), Image.Resampling.LANCZOS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge("image has more pixels than the decoder allows") from exc
    except DECODE_ERRORS as exc:
        raise UndecodableImage("the JPEG image does not decode") from exc
    return _jpeg(picture)


def _jpeg(picture: Image.Image) -> bytes:
    """A baseline JPEG with nothing but the JFIF header. Pillow would write a comment (and may
    write other info) carried over from the source image's ``info``: it is emptied first."""
    picture.info = {}
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=THUMBNAIL_QUALITY, optimize=False, progressive=False)
    return out.getvalue()


__all__ = ["THUMBNAIL_QUALITY", "thumbnail_jpeg"]
