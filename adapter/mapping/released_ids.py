"""The logical ids a restricted view releases (https://hl7.org/fhir/R4/resource.html#id).

A de-identified copy (TRAIN and its kin) or a pseudonymised one (HRESCH and its kin) that kept
the stored logical id could be joined on it: with the other view's copy (TRAIN then gains the
pseudonym and the full dates) or with any data of care's full view (the patient). The DICOM
copies avoid this with keyed UIDs, one UID space per view (adapter.mapping.dicom_deid); the FHIR
copies do the same with ids: each restricted view shows every resource, and every reference to
one, under its own keyed id, which cannot be linked to the stored id or to another view's.

A released id is the stored id encrypted with AES-SIV (RFC 5297: deterministic authenticated
encryption), under a key derived from the pseudonym key, with the view's context (the one its
DICOM UIDs use: TRAIN and MLTRAINING share the de-identified view and its ids) and the resource
type as associated data; written in lower-case RFC 4648 base32, which FHIR ids allow
(``[A-Za-z0-9\\-.]{1,64}``). Deterministic, so the same record has the same id in every answer
and after a restart; invertible with the key, so a read by a released id needs no index (and no
table to keep up to date or migrate); authenticated, so any other string (a stored id, another
view's id, one of another type) decrypts to nothing and finds nothing (404). A stored id is a
UUID (the server assigns them): 16 bytes, released in 53 characters. Another id, of at most
``MAX_OTHER_ID_BYTES`` (hand-made stores, tests), is released as its UTF-8; a longer one cannot
fit in 64 characters and is refused rather than shown.

A new pseudonym key gives every resource new released ids, as it gives new pseudonyms and mapped
UIDs: the old ones then find nothing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
import uuid
from typing import TYPE_CHECKING

from adapter.errors import ConfigurationError, NotSupported
from adapter.mapping.release_contexts import HRESCH_CONTEXT, TRAIN_CONTEXT
from adapter.model.decision import View

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESSIV

#: The id space of each restricted view: the context its DICOM UIDs are mapped in.
ID_CONTEXTS: dict[View, str] = {View.DEIDENTIFIED: TRAIN_CONTEXT, View.PSEUDONYMISED: HRESCH_CONTEXT}
#: Domain separation from any other use of the key.
_LABEL = b"clinical-image-adapter/released-id/v1"
_UUID, _OTHER = b"u", b"i"  # what the plaintext holds: a UUID's 16 bytes, or another id's UTF-8
_SIV = 16
#: 64 base32 characters hold 40 bytes: the synthetic IV, the tag, and this many of another id.
MAX_OTHER_ID_BYTES = 40 - _SIV - 1
_RELEASED = re.compile(r"[a-z2-7]{29,64}", re.ASCII)
_REFERENCE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?P<version>/_history/.+)?$")


class IdSpace:
    """The logical ids of one view: care's full view shows the stored ids; a restricted view
    its released ones (module docstring)."""

    __slots__ = ("_cipher", "_context", "view")

    def __init__(self, view: View, cipher: _Cipher | None = None) -> None:
        context = ID_CONTEXTS.get(view)
        if context is not None and cipher is None:
            raise ConfigurationError(f"the {view.value} view needs the released-id key")
        self.view = view
        self._context = context
        self._cipher = cipher

    def __repr__(self) -> str:  # never show the key
        return f"IdSpace({self.view.value})"

    @property
    def released_ids(self) -> bool:
        """Whether this view shows ids other than the stored ones."""
        return self._context is not None

    def released(self, resource_type: str, id: str) -> str:
        """The id the view shows for ``resource_type``/``id`` (stored).

        Raises:
            NotSupported: a stored id that is no UUID and longer than MAX_OTHER_ID_BYTES (the id
                itself is not said: it is what the view hides).
        """
        if self._context is None or self._cipher is None:
            return id
        return _encrypted(self._cipher, self._context, resource_type, id)

    def stored(self, resource_type: str, id: str) -> str | None:
        """The stored id of ``resource_type``/``id`` as the view shows it; None when ``id`` is
        no id of this view and type (a stored id in a restricted view, another view's id)."""
        if self._context is None or self._cipher is None:
            return id
        return self._cipher.decrypt(self._context, resource_type, id)

    def reference(self, reference: str) -> str:
        """A literal relative reference ``Type/id`` (or ``Type/id/_history/n``) as the view
        shows it; anything else unchanged (the caller keeps only literal references)."""
        found = _REFERENCE.match(reference)
        if self._context is None or found is None:
            return reference
        return f"{found['type']}/{self.released(found['type'], found['id'])}{found['version'] or ''}"

    def stored_reference(self, reference: str) -> str | None:
        """``Type/id`` with the view's id as stored; None when the id is no id of this view."""
        if self._context is None:
            return reference
        resource_type, _, id = reference.partition("/")
        stored = self.stored(resource_type, id)
        return None if stored is None else f"{resource_type}/{stored}"


#: Care's full view: the stored ids.
STORED_IDS = IdSpace(View.FULL)


class ReleasedIds:
    """The id spaces of the views under one key (a key derived from the pseudonym key:
    adapter.services.registry)."""

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes) -> None:
        self._cipher = _Cipher(key)

    def __repr__(self) -> str:  # never show the key
        return "ReleasedIds()"

    def space(self, view: View) -> IdSpace:
        """The ids ``view`` shows."""
        return IdSpace(view, self._cipher) if view in ID_CONTEXTS else STORED_IDS


class _Cipher:
    """AES-SIV under one key, the cipher made on first use: cryptography's bindings hold ~8 MB
    in each process that loads them (adapter.services.search_pages)."""

    __slots__ = ("_aead", "_key")

    def __init__(self, key: bytes) -> None:
        if len(key) not in (32, 48, 64):
            raise ConfigurationError("the released-id key must have 32, 48 or 64 bytes (AES-SIV)")
        self._key = key
        self._aead: AESSIV | None = None

    @property
    def aead(self) -> AESSIV:
        if self._aead is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESSIV

            self._aead = AESSIV(self._key)
        return self._aead

    def encrypt(self, context: str, resource_type: str, id: str) -> str:
        plain = _plaintext(id)
        if plain is None:
            raise NotSupported(f"a stored {resource_type[:40]} id that is not a UUID and longer than "
                               f"{MAX_OTHER_ID_BYTES} bytes cannot be released in a restricted view")
        sealed = self.aead.encrypt(plain, _associated(context, resource_type))
        return base64.b32encode(sealed).decode("ascii").rstrip("=").lower()

    def decrypt(self, context: str, resource_type: str, released: str) -> str | None:
        if not _RELEASED.fullmatch(released):
            return None
        from cryptography.exceptions import InvalidTag

        try:
            sealed = base64.b32decode(released.upper() + "=" * (-len(released) % 8))
            plain = self.aead.decrypt(sealed, _associated(context, resource_type))
        except (binascii.Error, ValueError, InvalidTag):
            return None
        id = _id_of(plain)
        # one spelling per id: base32's unused low bits of the last character are not read
        if id is None or _encrypted(self, context, resource_type, id) != released:
            return None
        return id


@functools.lru_cache(maxsize=65536)
def _encrypted(cipher: _Cipher, context: str, resource_type: str, id: str) -> str:
    """:meth:`_Cipher.encrypt`, remembered: a restricted view's search orders every match by
    its released id, page after page (as adapter.services.released_uids remembers mapped UIDs)."""
    return cipher.encrypt(context, resource_type, id)


def _associated(context: str, resource_type: str) -> list[bytes]:
    return [_LABEL, context.encode("utf-8"), resource_type.encode("utf-8")]


def _plaintext(id: str) -> bytes | None:
    try:
        if str(uuid.UUID(id)) == id:  # canonical (lower case, dashed): what the server assigns
            return _UUID + uuid.UUID(id).bytes
    except ValueError:
        pass
    raw = id.encode("utf-8")
    return _OTHER + raw if 0 < len(raw) <= MAX_OTHER_ID_BYTES else None


def _id_of(plain: bytes) -> str | None:
    tag, body = plain[:1], plain[1:]
    if tag == _UUID and len(body) == 16:
        return str(uuid.UUID(bytes=body))
    if tag == _OTHER and body:
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


__all__ = ["ID_CONTEXTS", "MAX_OTHER_ID_BYTES", "STORED_IDS", "IdSpace", "ReleasedIds"]
