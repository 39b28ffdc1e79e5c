"""HEAD: whatever answers GET also answers HEAD (RFC 9110 §9.3.2: every general-purpose server
MUST), with the status and headers the GET would have, Content-Length and ETag included, and
no body. The request is that GET in everything else: a read of a record, a Binary or a DICOM
object is decided under its purpose of use and audited as the read it is, so HEAD learns nothing
a GET would not have shown. A path that takes no GET answers 405, as before.

A plain ASGI middleware, innermost, so the access log and the metrics still say HEAD; the route
finds it asked so (:func:`asked_as_head`), and its audit says that no body was sent.
"""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

from adapter.api.headers import HttpMiddleware

#: The request state key (``scope["state"]``) of a GET that answers a HEAD.
HEAD_STATE = "adapter_head"


def asked_as_head(scope: Scope) -> bool:
    """Whether the request, a GET by now, was sent as HEAD (no body is sent)."""
    state = scope.get("state")
    return isinstance(state, dict) and state.get(HEAD_STATE) is True


class HeadMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):  # the end of the GET's body: none of it is sent
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        scope.setdefault("state", {})[HEAD_STATE] = True
        await self.app({**scope, "method": "GET"}, receive, without_body)
