"""Headers every answer carries: nothing the adapter sends may be kept by a cache or re-read
by a browser as another type.

* ``Cache-Control: no-store``: records, images, DICOM objects and even refusals concern a
  patient; a shared proxy or a browser cache must not keep them (RFC 9111 §5.2.2.5), whatever
  the purpose they were released for.
* ``X-Content-Type-Options: nosniff``: a Binary is served with its own media type (an image, a
  PDF); a browser must not sniff it into something it would run.

A plain ASGI middleware, so request and response bodies stream through untouched.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))


class NoStoreMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []),
                                      *((name, value) for name, value in HEADERS if name not in present)]
            await send(message)

        await self.app(scope, receive, _send)
