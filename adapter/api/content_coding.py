"""A request body sent with a content coding (``Content-Encoding: gzip``…) is refused, 415 with
``Accept-Encoding: identity``, before anything of it is read.

RFC 9110 8.4.1: a server that cannot decode a request body's content coding should answer 415;
15.5.16: with ``Accept-Encoding`` (12.5.3) saying which codings it takes. The adapter takes none:
a compressed upload was read as it was, and a gzip-compressed multipart photo was refused as a
"malformed multipart body", which told a client that compresses its uploads nothing it could act
on (review mobile finding 10); a compressed FHIR body as "not JSON". Decoding one would also be a
decompression bomb in front of every bound on a body's size. ``identity`` (no coding) passes.
"""

from __future__ import annotations

from starlette.types import Receive, Scope, Send

from adapter.api.headers import HttpMiddleware, send_outcome
from adapter.refusals import RefusalCode

#: The methods whose requests carry a body the adapter reads.
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})


def content_codings(headers: list[tuple[bytes, bytes]]) -> list[str]:
    """The content codings a request's ``Content-Encoding`` fields name, lower case, in order,
    ``identity`` left out."""
    return [coding for name, value in headers if name == b"content-encoding"
            for coding in (c.strip().lower() for c in value.decode("latin-1").split(","))
            if coding and coding != "identity"]


class ContentCodingMiddleware(HttpMiddleware):
    """Refuses (415 OperationOutcome, ``Accept-Encoding: identity``) a write whose body has a
    content coding (module docstring)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        codings = content_codings(scope.get("headers", [])) if scope["method"] in _WITH_BODY else []
        if not codings:
            await self.app(scope, receive, send)
            return
        await send_outcome(send, 415, "not-supported",
                           f"the request body has the content coding {codings[0][:40]!r} (Content-Encoding): this "
                           "server takes request bodies without one (Accept-Encoding: identity); send the body "
                           "uncompressed", headers=[(b"accept-encoding", b"identity")],
                           refusal=RefusalCode.UNSUPPORTED_MEDIA_TYPE)


__all__ = ["ContentCodingMiddleware", "content_codings"]
