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


#: A declared type that says nothing of the bytes (RFC 2046 4.5.1: "arbitrary binary data"):
#: the type is read from them.
UNDECLARED = "application/octet-stream"
#: Names some clients give the two types (not registered, but meaning them).
_ALIASES = {"image/jpg": JPEG, "image/pjpeg": JPEG, "image/x-png": PNG}
#: How much of a declared type a refusal quotes.
_QUOTED = 100


def check_declared_upload(head: bytes, declared: str | None) -> None:
    """Refuse an upload whose declared type (a multipart part's Content-Type) contradicts its
    first bytes ``head``: one declared as another image type than the bytes are, or as a type
    other than an image (``text/plain``). None, or ``application/octet-stream``, declares
    nothing: the bytes decide, as they do anyway (:func:`sniff_content_type`); a declared JPEG
    or PNG must be what the bytes are.

    Raises :class:`~adapter.errors.UnsupportedMediaType` (expression ``file``).
    """
    media = (declared or "").split(";", 1)[0].strip().lower()
    if not media or media == UNDECLARED:
        return
    named = _ALIASES.get(media, media)
    if named not in (JPEG, PNG):
        raise UnsupportedMediaType(f"the photo is declared {media[:_QUOTED]}: only JPEG and PNG photos are accepted "
                                   "(image/jpeg or image/png, or application/octet-stream to have the bytes decide)",
                                   expression="file")
    try:
        sniffed = sniff_content_type(head)
    except UnsupportedMediaType as exc:
        raise UnsupportedMediaType(f"the photo is declared {media} but its bytes are neither JPEG nor PNG",
                                   expression="file") from exc
    if sniffed != named:
        raise UnsupportedMediaType(f"the photo is declared {media} but its bytes are {sniffed}", expression="file")


def check_declared(data: bytes, content_type: str) -> str:
    """Sniff ``data`` and require it to match ``content_type`` (parameters ignored)."""
    sniffed = sniff_content_type(data)
    declared = content_type.split(";", 1)[0].strip().lower()
    if declared not in (JPEG, PNG):
        raise UnsupportedMediaType("only JPEG and PNG photos are accepted")
    if declared != sniffed:
        raise UnsupportedMediaType(f"declared {declared} but the bytes are {sniffed}")
    return sniffed
