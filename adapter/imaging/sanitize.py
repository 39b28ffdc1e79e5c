"""The ingest hot path: received upload in, metadata-clean bytes out, facts returned."""

from __future__ import annotations

import hashlib
from pathlib import Path

from adapter.errors import StorageError, UndecodableImage
from adapter.imaging.facts import ImageFacts, Stripped
from adapter.imaging.jpeg import strip_jpeg, strip_jpeg_to_pixels_only
from adapter.imaging.png import strip_png, strip_png_to_pixels_only
from adapter.imaging.probe import decode_reduced
from adapter.imaging.quality import quality_warnings
from adapter.imaging.sniff import JPEG, check_declared, sniff_content_type
from adapter.model.policy import Limits, Quality


def sanitize(src: Path, dst: Path, *, quality: Quality, limits: Limits) -> ImageFacts:
    """Strip identifying metadata from the upload at ``src`` losslessly and write the result
    to ``dst`` (written, flushed and closed; the caller fsyncs and moves it).

    Follows standards.md §5.3: the type is sniffed from the magic bytes; JPEG segments and PNG
    chunks are removed by surgery, never by re-encoding, so decoded pixels are bit-identical.
    The pixel count is checked from the header before anything is decoded; the JPEG walk also
    refuses marker segments libjpeg would refuse. Then the stripped bytes are decoded at reduced
    scale to prove they decode and to measure quality: all of them, or for a JPEG under
    ``quality.decodeProof: prefix`` every header with the first part of the scan data
    (``adapter.imaging.probe``).

    Raises :class:`UnsupportedMediaType` (not JPEG/PNG), :class:`UndecodableImage`,
    :class:`ImageTooLarge` (over ``limits.max_pixels``) or :class:`StorageError` (``src``
    unreadable or ``dst`` unwritable). ``dst`` is opened only once every check has passed, so
    a refusal never creates or touches it; a failed write removes it.
    """
    try:
        received = src.read_bytes()
    except OSError as exc:
        raise StorageError("the received upload could not be read") from exc
    received_sha256 = hashlib.sha256(received).hexdigest()

    content_type = sniff_content_type(received)
    stripped: Stripped
    if content_type == JPEG:
        stripped = strip_jpeg(received, max_pixels=limits.max_pixels, check_decoding=True)
    else:
        stripped = strip_png(received, max_pixels=limits.max_pixels)
    del received  # the stripped copy is all that is needed from here on
    decoded = decode_reduced(stripped.data, content_type, proof=quality.decode_proof, layout=stripped.layout)
    if (decoded.width, decoded.height) != (stripped.width, stripped.height):
        raise UndecodableImage("the decoder disagrees with the image header about its size")

    stored = stripped.data
    stored_sha256 = hashlib.sha256(stored).hexdigest()
    _write(dst, stored)

    exif = stripped.exif
    return ImageFacts(
        content_type=content_type,
        width=stripped.width,
        height=stripped.height,
        orientation=exif.orientation if exif else None,
        removed=stripped.removed,
        capture_time=exif.capture_time if exif else None,
        device_make=exif.make if exif else None,
        device_model=exif.model if exif else None,
        quality_warnings=quality_warnings(width=stripped.width, height=stripped.height,
                                          sharpness=decoded.sharpness,
                                          jpeg_quality=decoded.jpeg_quality, quality=quality),
        received_sha256=received_sha256,
        stored_sha256=stored_sha256,
        stored_size=len(stored),
    )


def strip_to_pixels_only(data: bytes, content_type: str) -> bytes:
    """Bytes for the de-identified (TRAIN) view: no metadata at all, identical pixels.

    JPEG keeps only the decoding segments, APP14 Adobe and a canonical JFIF (if there was one);
    PNG keeps the critical chunks plus tRNS, gAMA and sRGB. ICC profiles and the Orientation
    EXIF are dropped, so a viewer shows the stored (unrotated) pixels.
    ``content_type`` must match the magic bytes (:class:`UnsupportedMediaType` otherwise).
    """
    sniffed = check_declared(data, content_type)
    if sniffed == JPEG:
        return strip_jpeg_to_pixels_only(data)
    return strip_png_to_pixels_only(data)


def _write(dst: Path, data: bytes) -> None:
    try:
        with dst.open("wb") as out:
            out.write(data)
            out.flush()
    except OSError as exc:
        dst.unlink(missing_ok=True)
        raise StorageError("the sanitized photo could not be written") from exc
