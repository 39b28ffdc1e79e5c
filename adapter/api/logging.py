"""Access log without patient data: method, path (no query string), status, duration, and the
request id (adapter.api.request_id).
A plain ASGI middleware, so request bodies stream through untouched."""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from adapter.api.headers import HttpMiddleware
from adapter.metrics import HTTP_RESPONSES, HTTP_SECONDS

log = logging.getLogger("adapter.access")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


def _logged_path(scope: Scope) -> str:
    """The path as the client sent it (percent-encoding kept, bytes past ASCII escaped, at most
    200 characters): the decoded path can hold a line break (%0A) that would forge a log line."""
    raw = scope.get("raw_path")
    if not isinstance(raw, bytes):
        raw = str(scope.get("path", "")).encode("utf-8", "replace")
    text = raw.decode("ascii", "backslashreplace")
    text = "".join(c if " " < c < "\x7f" else f"\\x{ord(c):02x}" for c in text)
    return text if len(text) <= 200 else text[:200] + "..."


class AccessLogMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 0}

        async def _send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            elapsed = time.perf_counter() - start
            state = scope.get("state")
            rid = state.get("request_id", "-") if isinstance(state, dict) else "-"
            log.info("%s %s %d %.1fms %s", scope.get("method"), _logged_path(scope), status["code"], elapsed * 1000,
                     rid)
            # by route template, never the path (it holds ids): bounded labels, nothing about a patient
            route = str(getattr(scope.get("route"), "path", "") or "unmatched")
            method = str(scope.get("method") or "")
            if method not in _METHODS:  # any token is a method to the parser: labels stay bounded
                method = "other"
            HTTP_RESPONSES.labels(method, route, str(status["code"])).inc()
            HTTP_SECONDS.labels(method, route).observe(elapsed)
