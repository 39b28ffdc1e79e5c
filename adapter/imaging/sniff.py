"""Content-type sniffing from magic bytes; the declared type is never trusted."""

from __future__ import annotations

from adapter.errors import UnsupportedMediaType

JPEG = "image/jpeg"
PNG = "image/png"

JPEG_MAGIC = b"\xff\xd8\xff"                 # SOI then the first marker (ITU-T T.81 B.1.1.2)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"         # PNG (Third Edition) §5.2


#: The major brands of an ISO BMFF ``ftyp`` box (ISO/IEC 14496-12 4.3) that make a file HEIF
#: (ISO/IEC 23008-12: HEIC, what iPhones take by default) or AVIF, with what to call them.
_HEIF_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC", b"hevc": "HEIC",
                b"hevx": "HEIC", b"hevm": "HEIC", b"hevs": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
                b"avif": "AVIF", b"avis": "AVIF"}
#: The refusal's words: what to send instead, and how an iPhone does.
NOT_HEIF = ("is not accepted: send the photo as JPEG (or PNG): convert it on the device, or set an iPhone's "
            "camera to take JPEG (Settings > Camera > Formats > Most Compatible)")


def heif_kind(head: bytes) -> str | None:
    """"HEIC", "HEIF" or "AVIF" when ``head`` (a file's first bytes) opens with an ``ftyp`` box
    naming such a major brand (review mobile finding 9: sent as application/octet-stream, a HEIC
    was refused without saying it was one); else None."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        return _HEIF_BRANDS.get(head[8:12])
    return None


def sniff_content_type(data: bytes) -> str:
    """Return ``image/jpeg`` or ``image/png`` from the first bytes, else raise
    :class:`~adapter.errors.UnsupportedMediaType` (saying so of a HEIC, HEIF or AVIF)."""
    if data.startswith(JPEG_MAGIC):
        return JPEG
    if data.startswith(PNG_SIGNATURE):
        return PNG
    heif = heif_kind(data[:12])
    if heif is not None:
        raise UnsupportedMediaType(f"the photo is {heif} (ISO BMFF ftyp brand {data[8:12].decode('latin-1')!r}), "
                                   f"which {NOT_HEIF}")
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
        if heif_kind(head[:12]) is not None:  # refused now, naming the part (sniff_content_type would later)
            _refuse_heif(head)
        return
    named = _ALIASES.get(media, media)
    if named not in (JPEG, PNG):
        raise UnsupportedMediaType(f"the photo is declared {media[:_QUOTED]}: only JPEG and PNG photos are accepted "
                                   "(image/jpeg or image/png, or application/octet-stream to have the bytes decide)",
                                   expression="file")
    if heif_kind(head[:12]) is not None:
        _refuse_heif(head, media)
    try:
        sniffed = sniff_content_type(head)
    except UnsupportedMediaType as exc:
        raise UnsupportedMediaType(f"the photo is declared {media} but its bytes are neither JPEG nor PNG",
                                   expression="file") from exc
    if sniffed != named:
        raise UnsupportedMediaType(f"the photo is declared {media} but its bytes are {sniffed}", expression="file")


def _refuse_heif(head: bytes, declared: str | None = None) -> None:
    as_declared = f" (declared {declared[:_QUOTED]})" if declared else ""
    raise UnsupportedMediaType(f"the photo is {heif_kind(head[:12])}{as_declared}, which {NOT_HEIF}", expression="file")


def check_declared(data: bytes, content_type: str) -> str:
    """Sniff ``data`` and require it to match ``content_type`` (parameters ignored)."""
    sniffed = sniff_content_type(data)
    declared = content_type.split(";", 1)[0].strip().lower()
    if declared not in (JPEG, PNG):
        raise UnsupportedMediaType("only JPEG and PNG photos are accepted")
    if declared != sniffed:
        raise UnsupportedMediaType(f"declared {declared} but the bytes are {sniffed}")
    return sniffed
