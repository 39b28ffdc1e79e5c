"""408 Request Timeout (RFC 9110 §15.5.9): a client that stops sending part-way through a
request loses its connection instead of holding it, and a slot of the server, for ever.

uvicorn itself times out only the wait between requests of a kept-alive connection. A
connection that never sends a byte, a request whose header arrives a byte at a time, or an upload
that stops half-way (a phone losing its network, or a "slowloris" client doing it on purpose)
would each hold a socket, and the body's reader, with no end. Two bounds close that, as a
reverse proxy's would (nginx's ``client_header_timeout`` and ``client_body_timeout``):

* :class:`HeaderTimeoutProtocol` (uvicorn's httptools protocol, ``ADAPTER_HTTP_HEADER_TIMEOUT``):
  a request's header must be whole within the timeout, counted from the connection's opening
  for its first request and from the first byte for a later one, or the request is answered 408
  and the connection closed (a new connection that sent nothing is closed without an answer).
* :class:`BodyTimeoutMiddleware` (``ADAPTER_HTTP_BODY_TIMEOUT``): while a route reads a request
  body, each wait for the next part of it is bounded (the time between two reads, not the whole
  upload: a large photo on a slow line is fine while it keeps moving). A wait past the bound
  raises :class:`~adapter.errors.RequestTimeout`: the route stores nothing and the client gets a
  408 OperationOutcome with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from adapter.api.headers import HttpMiddleware, editing_response_headers
from adapter.errors import RequestTimeout
from adapter.mapping.outcome import operation_outcome


def _timeout_answer(what: str) -> bytes:
    body = json.dumps(operation_outcome("error", "timeout", what), separators=(",", ":")).encode()
    return (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/fhir+json\r\ncache-control: no-store\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on a request header's arrival (module docstring)."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._begun = False  # a request's first byte came, its header is not whole yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # a new connection's first request must come within the same bound (as nginx's
        # client_header_timeout): one that never sends a byte is closed, without an answer
        self._begun = False
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        if self._header_timer is None:  # a later request of a kept-alive connection
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._begun = False
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._begun:
            self.transport.write(_timeout_answer(
                f"the request header did not arrive within {self.header_timeout:g} s"))
        self.transport.close()


def header_timeout_protocol(header_timeout: float) -> Any:
    """The protocol class to give uvicorn (``Config(http=...)``); a partial, so it pickles into
    the worker processes of ``ADAPTER_HTTP_WORKERS`` > 1."""
    return functools.partial(HeaderTimeoutProtocol, header_timeout=header_timeout)


class BodyTimeoutMiddleware(HttpMiddleware):
    """Bounds each wait for the next part of a request body (module docstring). Only while the
    body is incomplete: afterwards ``receive`` waits for a disconnect (a streamed answer listens
    for one), unbounded as before."""

    def __init__(self, app: ASGIApp, *, seconds: float) -> None:
        super().__init__(app)
        self.seconds = seconds

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"body_done": False, "timed_out": False}

        async def _receive() -> Message:
            if state["body_done"]:
                return await receive()
            try:
                async with asyncio.timeout(self.seconds):  # no task per wait, unlike wait_for
                    message = await receive()
            except TimeoutError:
                state["timed_out"] = True
                raise RequestTimeout(
                    f"the request body stopped arriving: nothing for {self.seconds:g} s; nothing was stored") from None
            if message.get("type") != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        def _close(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
            if not state["timed_out"]:
                return headers
            # the rest of the body may still come: this connection carries no other request
            return [*(h for h in headers if h[0].lower() != b"connection"), (b"connection", b"close")]

        await self.app(scope, _receive, editing_response_headers(send, _close))
