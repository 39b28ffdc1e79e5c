"""A request still under way when the stop's grace is over (uvicorn's
``timeout_graceful_shutdown``, ADAPTER_HTTP_BODY_TIMEOUT) is cancelled by uvicorn, which then
answered a bare ``500 Internal Server Error`` in plain text and logged the cancellation's
traceback: a client could not tell a bug from a stop. :class:`CancelledRequestMiddleware` answers
it 503 ``transient`` instead, as an OperationOutcome (the client sends it again, to this instance
once it is back or to another), and logs one line.

What the request had begun in a worker thread (a database statement waiting on a hung database)
is not stopped by the cancellation: it may still commit before the process ends, so the answer
says it may be stored; a photo sent again is stored once (its receipt, with or without the same
``Idempotency-Key``), as after any lost answer (README, Stopping).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import Message, Receive, Scope, Send

from adapter.api.headers import HttpMiddleware, send_outcome
from adapter.refusals import RefusalCode

log = logging.getLogger("adapter.api")

_DIAGNOSTICS = ("the adapter is stopping and could not finish the request in time: it may or may not have been "
                "stored; send it again (a photo stored already gets its receipt)")


class CancelledRequestMiddleware(HttpMiddleware):
    """A request cancelled before its answer started is answered 503 ``transient``; one whose answer
    had started is cut off, as before (its status is sent already)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def _send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, _send)
        except asyncio.CancelledError:
            if started:
                raise
            log.warning("a request under way was cancelled at the stop (ADAPTER_HTTP_BODY_TIMEOUT passed): "
                        "answered 503")
            # answered, not raised again: the cancellation came from uvicorn's stop, which waits for
            # nothing of this task any more, and raised it would be answered 500 with a traceback
            await send_outcome(send, 503, "transient", _DIAGNOSTICS,
                               [(b"connection", b"close"), (b"retry-after", b"30")], refusal=RefusalCode.TRANSIENT)
