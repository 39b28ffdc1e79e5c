"""Value objects returned by the imaging package."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapter.imaging.exif import ExifSummary


@dataclass(frozen=True)
class ImageFacts:
    """What :func:`adapter.imaging.sanitize` learnt about one upload.

    ``removed`` names what was stripped (never the values). ``capture_time``,
    ``device_make`` and ``device_model`` come from the received EXIF and are only returned:
    the caller decides, under ``MetadataRules``, whether to keep them. ``width`` and
    ``height`` are the stored (unrotated) pixel dimensions; ``orientation`` is the EXIF
    Orientation (1..8) of the upload, kept in the stored bytes as an Orientation-only EXIF
    when it is not 1.
    """

    content_type: str
    width: int
    height: int
    orientation: int | None
    removed: tuple[str, ...]
    capture_time: datetime | None
    device_make: str | None
    device_model: str | None
    quality_warnings: tuple[str, ...]
    received_sha256: str
    stored_sha256: str
    stored_size: int


@dataclass(frozen=True)
class Stripped:
    """Result of a format module's metadata surgery (internal)."""

    data: bytes
    width: int
    height: int
    removed: tuple[str, ...]
    exif: ExifSummary | None
