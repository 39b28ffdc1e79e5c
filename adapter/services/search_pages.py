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

The ``_cursor`` of every search's paging links (GET or POST; adapter.services.search_paging) is
sealed the same way, under its own associated data, and lives as long; so is the ``_cursor``
of a history's links (adapter.services.history_paging), under the resource's.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from adapter.errors import Gone, InvalidQuery
from adapter.services.history_paging import HistoryCursor
from adapter.services.search_params import CURSOR_PARAM, PageCursor

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

#: The paging parameter of a sealed link (a server-defined parameter, as FHIR allows for paging).
PAGE_PARAM = "_page"
#: How long a sealed link can be followed.
PAGE_LIFETIME = timedelta(hours=1)
_VERSION = b"\x01"
#: The associated data of a ``_cursor`` (with the resource type): a cursor is no ``_page`` token.
_CURSOR_AAD = b"cursor:"
#: The associated data of a history's ``_cursor`` (with the resource it pages): no search's.
_HISTORY_AAD = b"history:"
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
        return self._seal(resource_type.encode(), params)

    def open(self, resource_type: str, token: str) -> list[tuple[str, str]]:
        """The parameters a token of this server holds. InvalidQuery (400) for a token this
        server did not issue for ``resource_type``; Gone (410) for one older than PAGE_LIFETIME."""
        content = self._open(resource_type.encode(), token, PAGE_PARAM, resource_type)
        return [(str(k), str(v)) for k, v in content]

    def seal_cursor(self, resource_type: str, cursor: PageCursor) -> str:
        """The ``_cursor`` of a paging link (adapter.services.search_paging): sealed as a search
        by POST is, so the snapshot (when the latest record was stored, which the de-identified
        view hides) and the keys (the stored ids, in care's view) are not shown, and a client
        cannot make up a snapshot to learn when records were stored."""
        return self._seal(_CURSOR_AAD + resource_type.encode(),
                          {"s": cursor.snapshot, "v": cursor.view, "a": cursor.after, "b": cursor.before,
                           "q": cursor.query})

    def open_cursor(self, resource_type: str, token: str) -> PageCursor:
        """The PageCursor a ``_cursor`` of this server holds; refused as :meth:`open` refuses."""
        content = self._open(_CURSOR_AAD + resource_type.encode(), token, CURSOR_PARAM, resource_type)
        return PageCursor(snapshot=tuple((str(t), str(i)) for t, i in content["s"]), view=str(content["v"]),
                          after=tuple(str(k) for k in content["a"]) if content["a"] is not None else None,
                          before=tuple(str(k) for k in content["b"]) if content["b"] is not None else None,
                          query=str(content.get("q", "")))

    def seal_history_cursor(self, resource: str, cursor: HistoryCursor) -> str:
        """The ``_cursor`` of a history page's link (adapter.services.history_paging) of
        ``resource`` (``Type/id``, the id as the link names it): sealed, so its version ids are
        not shown and a link of one resource, view or ``_since`` pages no other."""
        return self._seal(_HISTORY_AAD + resource.encode(),
                          {"s": cursor.snapshot, "v": cursor.view, "b": cursor.before, "q": cursor.query,
                           "a": cursor.after})

    def open_history_cursor(self, resource: str, token: str) -> HistoryCursor:
        """The HistoryCursor a ``_cursor`` of ``resource``'s history holds; refused as
        :meth:`open` refuses (a search's cursor, or another resource's, is not one)."""
        content = self._open(_HISTORY_AAD + resource.encode(), token, CURSOR_PARAM, resource, "history")
        return HistoryCursor(snapshot=int(content["s"]), view=str(content["v"]),
                             before=int(content["b"]) if content["b"] is not None else None,
                             query=str(content["q"]),
                             after=int(content["a"]) if content.get("a") is not None else None)

    def _seal(self, aad: bytes, content: Any) -> str:
        plain = json.dumps({"iat": int(self._now().timestamp()), "p": content}, separators=(",", ":")).encode()
        nonce = os.urandom(_NONCE)
        sealed = _VERSION + nonce + self._aead.encrypt(nonce, plain, aad)
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def _open(self, aad: bytes, token: str, param: str, resource_type: str, what: str = "search") -> Any:
        refused = InvalidQuery(f"the {param} link is not one this server issued for a {resource_type[:40]} "
                               f"{what}: follow the links of a {what} answer unchanged", expression=param)
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
            plain = self._aead.decrypt(raw[1:1 + _NONCE], raw[1 + _NONCE:], aad)
        except InvalidTag:
            raise refused from None
        content = json.loads(plain)
        issued = datetime.fromtimestamp(content["iat"], UTC)
        if self._now() - issued > PAGE_LIFETIME:
            raise Gone(f"this page of the search has expired (links are valid for "
                       f"{int(PAGE_LIFETIME.total_seconds() // 60)} minutes): search again")
        return content["p"]
