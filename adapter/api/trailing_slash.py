"""A URL with a trailing slash (``/fhir/Media/``, ``/dicomweb/studies/``) is answered as the URL
without it: generic FHIR clients build ``base + "/" + type + "/"`` when their configured base
ends in ``/``. Starlette instead answers an empty 307 to the URL without the slash, built from
the request's Host header (not ADAPTER_BASE_URL, which every link of the adapter names), so
behind a gateway it pointed at the internal host, or at any host a caller named, and a client
following the 307 of a POST sent the write again (review EHR F7). The app is built with
``redirect_slashes=False``; this middleware takes the slashes off before routing, so the
answer, its links and its audit are those of the URL without them. No route of the adapter
ends in a slash but ``/``, which is left as it is.

A plain ASGI middleware, innermost.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from adapter.api.headers import HttpMiddleware


class TrailingSlashMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if len(path) > 1 and path.endswith("/"):
            # in place: the router records the route it matched in this scope, which the access
            # log and the metrics outside read (adapter.api.logging.route_template)
            scope["path"] = path.rstrip("/") or "/"
            raw: bytes | None = scope.get("raw_path")
            if raw:
                scope["raw_path"] = raw.rstrip(b"/") or b"/"
        await self.app(scope, receive, send)
