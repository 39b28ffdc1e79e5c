"""Sealed paging links for a search by POST.

A client searches with POST ``[type]/_search`` to keep the parameters (a patient identifier,
often) out of URLs, which proxies and servers log (FHIR R4 search.html#Introduction). Its
answer's ``self`` and ``next`` links are URLs the client then GETs, so they carry the search
sealed instead of in clear: ``[type]?_page=<token>``, where the token is the parameters
encrypted and authenticated with AES-GCM (``cryptography``) under a key derived from the
pseudonym key, with the resource type as associated data (a token names one type's search) and
the time it was issued. A token is valid for ``PAGE_LIFETIME``; after that, or if it was not
issued here (a changed, truncated or foreign token), following it is refused. Every worker
process derives the same key, so any of them can follow any token.

The token holds only the search; the request that follows it states its own purpose of use and
is decided afresh, as any search.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from adapter.errors import Gone, InvalidQuery

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The paging parameter of a sealed link (a server-defined parameter, as FHIR allows for paging).
PAGE_PARAM = "_page"
#: How long a sealed link can be followed.
PAGE_LIFETIME = timedelta(hours=1)
_VERSION = b"\x01"
_NONCE = 12
#: A sealed search is at most a search body (64 KiB) and then some; anything longer is not ours.
MAX_TOKEN_CHARS = 128 * 1024


class SearchPages:
    """Seals and opens the parameters of a search for its paging links."""

    def __init__(self, key: bytes, now: Callable[[], datetime]) -> None:
        self._key = key
        self._cipher: AESGCM | None = None
        self._now = now

    @property
    def _aead(self) -> AESGCM:
        # imported on the first search by POST: cryptography's bindings hold ~8 MB in each
        # process that loads them, and most processes never page a search by POST
        if self._cipher is None:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._cipher = AESGCM(self._key)
        return self._cipher

    def seal(self, resource_type: str, params: list[tuple[str, str]]) -> str:
        """The token for a link to ``resource_type``'s search with ``params``."""
        plain = json.dumps({"iat": int(self._now().timestamp()), "p": params}, separators=(",", ":")).encode()
        nonce = os.urandom(_NONCE)
        sealed = _VERSION + nonce + self._aead.encrypt(nonce, plain, resource_type.encode())
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, resource_type: str, token: str) -> list[tuple[str, str]]:
        """The parameters a token of this server holds. InvalidQuery (400) for a token this
        server did not issue for ``resource_type``; Gone (410) for one older than PAGE_LIFETIME."""
        refused = InvalidQuery(f"the {PAGE_PARAM} link is not one this server issued for a {resource_type[:40]} "
                               f"search: follow the links of a search answer unchanged", expression=PAGE_PARAM)
        if len(token) > MAX_TOKEN_CHARS:
            raise refused
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise refused from None
        if len(raw) < 1 + _NONCE + 16 or raw[:1] != _VERSION:
            raise refused
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(raw[1:1 + _NONCE], raw[1 + _NONCE:], resource_type.encode())
        except InvalidTag:
            raise refused from None
        content = json.loads(plain)
        issued = datetime.fromtimestamp(content["iat"], UTC)
        if self._now() - issued > PAGE_LIFETIME:
            raise Gone(f"this page of the search has expired (links are valid for "
                       f"{int(PAGE_LIFETIME.total_seconds() // 60)} minutes): search again")
        return [(str(k), str(v)) for k, v in content["p"]]
