"""Writes a web page of another origin makes are refused (403), whatever their content type.

Why: CORS keeps pages of unlisted origins from *reading* the API (and from any request that
needs a preflight: every read states ``X-Purpose-Of-Use``), but a browser sends a "simple" request,
a form's ``multipart/form-data`` POST among them, without asking first. ``POST /photos`` states
no purpose, so any page a clinician opened on the workstation running the adapter could file photos
and consent statements in any patient's record (security review 4); the answer was unreadable to
the page, the write was done. A browser names the page's origin in ``Origin`` on every cross-origin
POST and PUT (Fetch standard), and ``Sec-Fetch-Site: cross-site`` on modern ones: a write carrying
an origin not listed in ``ADAPTER_CORS_ORIGINS`` (``null`` included: a sandboxed page, a file), or
marked cross-site without one, is refused before anything is read of it; the adapter's own pages
(``/docs``, whose origin names a host the adapter answers for: adapter.api.allowed_hosts) write as
before. An origin equal to the request's ``Host`` is not enough: a page whose domain an attacker
re-pointed at the adapter (DNS rebinding) names its domain in both (security review finding 1).
Integration engines,
PACS, curl and the capture apps send neither, and are not concerned; a listed origin writes as
before.
"""

from __future__ import annotations

import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from adapter.api.allowed_hosts import AllowedHosts
from adapter.api.headers import HttpMiddleware, send_outcome
from adapter.model.authority import parse_authority
from adapter.refusals import RefusalCode

log = logging.getLogger("adapter.api")

#: Methods that read: a cross-origin page gets no answer of theirs unless its origin is listed (CORS).
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_DIAGNOSTICS = ("a write from a web page of another origin is refused: list the page's origin in "
                "ADAPTER_CORS_ORIGINS to let it write")


class CrossSiteWriteMiddleware(HttpMiddleware):
    """Refuses (403 OperationOutcome) a write from a page of an unlisted origin (module docstring)."""

    def __init__(self, app: ASGIApp, *, allowed_origins: list[str], hosts: AllowedHosts) -> None:
        super().__init__(app)
        self._allowed = frozenset(allowed_origins)
        self._hosts = hosts

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] in _SAFE_METHODS or self._same_site(scope):
            await self.app(scope, receive, send)
            return
        log.warning("refused a write from a web page of an unlisted origin (%s %s)", scope["method"], scope["path"])
        await send_outcome(send, 403, "forbidden", _DIAGNOSTICS, refusal=RefusalCode.FORBIDDEN)

    def _same_site(self, scope: Scope) -> bool:
        """Not a page of another origin: none named (not a browser), the adapter's own (its
        /docs page: the origin names a host the adapter answers for), or one listed."""
        origin: str | None = None
        cross_site = False
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value.decode("latin-1").strip().rstrip("/")
            elif name == b"sec-fetch-site":
                cross_site = value.decode("latin-1").strip().lower() == "cross-site"
        if origin is None:
            return not cross_site
        if origin in self._allowed:
            return True
        return not cross_site and self._own(origin, scope)

    def _own(self, origin: str, scope: Scope) -> bool:
        """Whether ``origin`` is a page of the adapter's own: one of the hosts it answers for."""
        scheme, sep, authority = origin.partition("://")
        scheme = scheme.lower()
        if not sep or scheme not in ("http", "https"):
            return False
        try:
            return self._hosts.admits(parse_authority(authority), scheme, scope.get("server"))
        except ValueError:
            return False
