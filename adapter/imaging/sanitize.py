"""The ingest hot path: received upload in, metadata-clean bytes out, facts returned."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from pathlib import Path

from adapter.errors import StorageError, UndecodableImage, staging_failure
from adapter.imaging.facts import ImageFacts, Stripped
from adapter.imaging.jpeg import (
    StrippedJpeg,
    strip_jpeg_but_orientation,
    strip_jpeg_segments,
    strip_jpeg_to_pixels_only,
)
from adapter.imaging.png import strip_png, strip_png_but_orientation, strip_png_to_pixels_only
from adapter.imaging.probe import Decoded, decode_jpeg_prefix, decode_reduced
from adapter.imaging.quality import quality_warnings
from adapter.imaging.sniff import JPEG, check_declared, sniff_content_type
from adapter.model.policy import Limits, Quality

#: A check of the image's size (width, height), read from its header, that raises to refuse it.
SizeCheck = Callable[[int, int], None]


def sanitize(src: Path | bytes, dst: Path, *, quality: Quality, limits: Limits,
             received_sha256: str | None = None, check_size: SizeCheck | None = None) -> ImageFacts:
    """Strip identifying metadata from the upload (``src``: its bytes, or the file holding them)
    losslessly and write the result to ``dst`` (written, flushed and closed; the caller fsyncs
    and moves it). ``received_sha256``: the upload's SHA-256 when the caller hashed it already
    (as it streamed in); the caller vouches for it. Otherwise it is computed here.
    ``check_size``: the caller's own bound on the image's sides (what it is to become can hold:
    adapter.mapping.dicom_photo.check_rows_columns), applied to the header's width and height
    before anything is decoded.

    Follows standards.md §5.3: the type is sniffed from the magic bytes; JPEG segments and PNG
    chunks are removed by surgery, never by re-encoding, so decoded pixels are bit-identical.
    The pixel count is checked from the header before anything is decoded; the JPEG walk also
    refuses marker segments libjpeg would refuse. Then the stripped bytes are decoded at reduced
    scale to prove they decode and to measure quality: all of them, or for a JPEG under
    ``quality.decodeProof: prefix`` every header with the first part of the scan data
    (``adapter.imaging.probe``).

    Raises :class:`UnsupportedMediaType` (not JPEG/PNG), :class:`UndecodableImage`,
    :class:`ImageTooLarge` (over ``limits.max_pixels``), what ``check_size`` raises, or
    :class:`StorageError` (``src`` unreadable or ``dst`` unwritable). ``dst`` is opened only once every check has passed, so
    a refusal never creates or touches it; a failed write removes it.
    """
    if isinstance(src, bytes):
        received = src
    else:
        try:
            received = src.read_bytes()
        except OSError as exc:
            raise StorageError("the received upload could not be read") from exc
    if received_sha256 is None:
        received_sha256 = hashlib.sha256(received).hexdigest()

    content_type = sniff_content_type(received)
    stripped, parts, decoded = _strip_and_prove(received, content_type, quality=quality, limits=limits,
                                                check_size=check_size)

    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    _write(dst, parts)

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
        stored_sha256=digest.hexdigest(),
        stored_size=sum(len(part) for part in parts),
    )


def sanitize_scan(data: bytes, *, quality: Quality, limits: Limits) -> tuple[str, bytes]:
    """A scanned document sent as a JPEG or PNG (a signed consent form), without its metadata:
    (its content type, the stripped bytes). It passes what a photo does in :func:`sanitize`, in
    the same order: the pixel limit from the header before anything is inflated or decoded, the
    JPEG walk's libjpeg checks, then the decode proof; no quality is measured (a scan is no photo).

    Raises :class:`UnsupportedMediaType` (neither JPEG nor PNG), :class:`UndecodableImage` or
    :class:`ImageTooLarge` (over ``limits.max_pixels``), as :func:`sanitize` does.
    """
    content_type = sniff_content_type(data)
    _, parts, _ = _strip_and_prove(data, content_type, quality=quality, limits=limits)
    return content_type, b"".join(parts)


def _strip_and_prove(received: bytes, content_type: str, *, quality: Quality, limits: Limits,
                     check_size: SizeCheck | None = None,
                     ) -> tuple[Stripped | StrippedJpeg, list[bytes | memoryview], Decoded]:
    """Strip ``received`` (of ``content_type``, sniffed) and prove the result decodes: the pixel
    limit is checked from the header before any inflation or decoding, ``check_size`` before any
    decoding. (stripped, the stored stream's parts, what the decode proof measured)."""
    stripped: Stripped | StrippedJpeg
    parts: list[bytes | memoryview]
    if content_type == JPEG:
        # The stored stream stays in pieces (views into ``received``): hashed and written
        # piece by piece, assembled only for a full decode.
        stripped = strip_jpeg_segments(received, max_pixels=limits.max_pixels, check_decoding=True)
        parts = stripped.parts()
        if check_size is not None:
            check_size(stripped.width, stripped.height)
        if quality.decode_proof == "prefix":
            decoded = decode_jpeg_prefix(stripped)
        else:
            decoded = decode_reduced(stripped.join(), JPEG)
    else:
        stripped = strip_png(received, max_pixels=limits.max_pixels)
        parts = [stripped.data]
        if check_size is not None:
            check_size(stripped.width, stripped.height)
        decoded = decode_reduced(stripped.data, content_type)
    if (decoded.width, decoded.height) != (stripped.width, stripped.height):
        raise UndecodableImage("the decoder disagrees with the image header about its size")
    return stripped, parts, decoded


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


def strip_but_orientation(data: bytes, content_type: str) -> bytes:
    """Bytes for the pseudonymised (HRESCH) view: what :func:`strip_to_pixels_only` keeps, and an
    Orientation-only EXIF (a PNG's eXIf), so the photo shows upright. No ICC profile, whose
    description, copyright and device tags (and any private tag) are free text that can
    identify, nor the uploader's other colour and density values the stored photo keeps for care
    (JFIF densities; PNG cHRM, sBIT, bKGD, pHYs...): of what changes how the pixels render, this
    view keeps what the de-identified one keeps. The pixels are identical. ``content_type`` must
    match the magic bytes, as for :func:`strip_to_pixels_only`."""
    if check_declared(data, content_type) == JPEG:
        return strip_jpeg_but_orientation(data)
    return strip_png_but_orientation(data)


def _write(dst: Path, parts: list[bytes | memoryview]) -> None:
    """Write the staged upload ``dst``; StorageError saying which step failed (its cause the
    OSError: a read-only, full or missing staging folder; for want of room InsufficientStorage,
    adapter.errors.staging_failure), the file removed if it was made."""
    try:
        out = dst.open("wb")
    except OSError as exc:
        raise staging_failure("the staged upload could not be created in the staging folder", exc) from exc
    try:
        with out:
            out.writelines(parts)
            out.flush()
    except OSError as exc:
        with contextlib.suppress(OSError):  # the staging sweep removes it if this fails too
            dst.unlink(missing_ok=True)
        raise staging_failure("the staged upload could not be written to the staging folder", exc) from exc
