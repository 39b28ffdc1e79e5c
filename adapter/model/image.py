"""What the imaging step tells the mapping about the stored (metadata-stripped) image."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class StoredImage:
    """The image bytes as stored in the blob store, described.

    ``sha256`` is the hex SHA-256 of the *stored* bytes (after metadata removal) and becomes the
    record's identifier; ``received_sha256`` is that of the file as received and becomes the
    Provenance source entity. ``removed`` names the metadata blocks taken out (never their
    values). ``capture_time`` comes from EXIF when the policy keeps it (naive when the camera
    recorded no offset); ``device_name`` is make and model when the policy keeps it.
    """

    content_type: str
    width: int
    height: int
    size: int
    sha256: str
    received_sha256: str
    removed: tuple[str, ...] = ()
    capture_time: datetime | None = None
    device_name: str | None = None
    quality_warnings: tuple[str, ...] = ()
    orientation: int | None = None  # the EXIF Orientation (1..8) the stored bytes keep, if any
