"""Content-type sniffing from magic bytes; the declared type is never trusted."""

from __future__ import annotations

from adapter.errors import UnsupportedMediaType

JPEG = "image/jpeg"
PNG = "image/png"

JPEG_MAGIC = b"\xff\xd8\xff"                 # SOI then the first marker (ITU-T T.81 B.1.1.2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"         # PNG (Third Edition) §5.2


def sniff_content_type(data: bytes) -> str:
    """Return ``image/jpeg`` or ``image/png`` from the first bytes, else raise
    :class:`~adapter.errors.UnsupportedMediaType`."""
    if data.startswith(JPEG_MAGIC):
        return JPEG
    if data.startswith(PNG_SIGNATURE):
        return PNG
    raise UnsupportedMediaType("only JPEG and PNG photos are accepted")


def check_declared(data: bytes, content_type: str) -> str:
    """Sniff ``data`` and require it to match ``content_type`` (parameters ignored)."""
    sniffed = sniff_content_type(data)
    declared = content_type.split(";", 1)[0].strip().lower()
    if declared not in (JPEG, PNG):
        raise UnsupportedMediaType("only JPEG and PNG photos are accepted")
    if declared != sniffed:
        raise UnsupportedMediaType(f"declared {declared} but the bytes are {sniffed}")
    return sniffed
