"""Headers every answer carries: nothing the adapter sends may be kept by a cache or re-read
by a browser as another type.

* ``Cache-Control: no-store``: records, images, DICOM objects and even refusals concern a
  patient; a shared proxy or a browser cache must not keep them (RFC 9111 §5.2.2.5), whatever
  the purpose they were released for.
* ``X-Content-Type-Options: nosniff``: a Binary is served with its own media type (an image, a
  PDF); a browser must not sniff it into something it would run.
* ``Date`` (RFC 9110 6.6.1), the time the answer starts: uvicorn's own is refreshed once a
  second (its ticks), so it lagged the clock by up to a second, and an answer's
  ``Last-Modified`` (the instant just stored, read from the clock) came out later than its
  ``Date``, which 8.8.2.1 forbids (review finding F7, a Consent update). uvicorn's is turned off
  (adapter.__main__) and this one set from the clock when the answer starts, after anything it
  answers was stored.

A plain ASGI middleware, so request and response bodies stream through untouched.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from email.utils import formatdate

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapter.api.negotiation import answer_media_type
from adapter.mapping.outcome import operation_outcome, refusal_coding
from adapter.refusals import RefusalCode

HEADERS = ((b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff"))
#: Said on an answer released under break-the-glass (FHIR: information / suppressed / BTG).
BREAK_GLASS_HEADER = "X-Break-Glass"

RawHeaders = list[tuple[bytes, bytes]]


def break_glass_headers(break_glass: bool, overrode: Iterable[str] = ()) -> dict[str, str]:
    """The header an answer released under break-the-glass carries; none otherwise. ``overrode``:
    what break-glass set aside that would have refused care alone (adapter.services.access.
    overrode_for_care: "consent withdrawn: …"), said after it (clinical-safety review 6)."""
    if not break_glass:
        return {}
    overridden = "; ".join(overrode)
    return {BREAK_GLASS_HEADER: f"{_BREAK_GLASS_SAID}{_OVERRODE}{overridden}" if overridden else _BREAK_GLASS_SAID}


_BREAK_GLASS_SAID = "suppressed; v3-ActReason#BTG; break-glass access, audited"
_OVERRODE = "; overrode: "


def overrode_said(header: str | None) -> tuple[str, ...]:
    """What an X-Break-Glass made by :func:`break_glass_headers` says break-glass overrode (a
    batch's entries are answered as requests of their own: the batch's answer says what theirs
    said); () for none."""
    _, found, overridden = (header or "").partition(_OVERRODE)
    return tuple(overridden.split("; ")) if found and overridden else ()


def editing_response_headers(send: Send, edit: Callable[[RawHeaders], RawHeaders]) -> Send:
    """``send`` with the headers of the response start passed through ``edit`` (the shape of
    the plain ASGI middlewares that add headers: bodies stream through untouched)."""
    async def _send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = edit(list(message.get("headers", [])))
        await send(message)

    return _send


#: The Content-Type of an OperationOutcome answered below the routes (a middleware's, or the
#: HTTP protocol's own: adapter.api.request_limits): FHIR R4 JSON, as the routes' answers say it.
OUTCOME_MEDIA_TYPE = answer_media_type("4").encode("ascii")


def outcome_body(code: str, diagnostics: str, refusal: RefusalCode) -> bytes:
    """The JSON of an OperationOutcome of one error issue (FHIR IssueType ``code``, the
    ``refusal`` code in its details: adapter.refusals), as answered below the routes."""
    outcome = operation_outcome("error", code, diagnostics, details=refusal_coding(refusal))
    return json.dumps(outcome, separators=(",", ":")).encode()


async def send_outcome(send: Send, status: int, code: str, diagnostics: str,
                       headers: RawHeaders | None = None, *, refusal: RefusalCode) -> None:
    """Answer, from a plain ASGI middleware, with an OperationOutcome (:func:`outcome_body`) and
    ``status``; ``headers`` beside its content type and length."""
    body = outcome_body(code, diagnostics, refusal)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", OUTCOME_MEDIA_TYPE), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class HttpMiddleware:
    """A plain ASGI middleware acting on HTTP requests (:meth:`handle`); lifespan and anything
    else pass through untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


def _no_store(headers: RawHeaders) -> RawHeaders:
    present = {name.lower() for name, _ in headers}
    dated = [] if b"date" in present else [(b"date", formatdate(usegmt=True).encode("ascii"))]
    return [*headers, *((name, value) for name, value in HEADERS if name not in present), *dated]


class NoStoreMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, editing_response_headers(send, _no_store))
