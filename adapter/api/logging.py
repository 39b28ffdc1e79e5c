"""Access log without patient data: method, route template (never the path a client sent),
status, duration, and the request id (adapter.api.request_id).

The path is not logged: DICOMweb paths hold Study, Series and SOP Instance UIDs (which some
modalities build from the patient's ID and birth date) and a client may put anything in a FHIR
id (``/fhir/Patient/<MRN>``). The route template (``/dicomweb/studies/{study}``) says what was
asked; the request id ties the line to the request's AuditEvents, which name what was read.
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


def route_template(scope: Scope) -> str:
    """The matched route's template, or ``unmatched``: bounded, and nothing a client chose.

    FastAPI's own routes put themselves in the scope; a plain Starlette route (FastAPI's
    ``/openapi.json`` and ``/docs``) puts only its endpoint there, so it is looked up by that
    among the app's routes (logged as ``unmatched`` before, though served)."""
    route = scope.get("route")
    endpoint, router = scope.get("endpoint"), scope.get("router")
    if route is None and endpoint is not None and router is not None:
        route = next((r for r in getattr(router, "routes", ()) if getattr(r, "endpoint", None) is endpoint), None)
    return str(getattr(route, "path", "") or "unmatched")


class AccessLogMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        # an exception that escapes the app is answered 500 by Starlette's outermost middleware
        status: dict[str, Any] = {"code": 500}

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
            own = state.get("own_request_id") if isinstance(state, dict) else None
            if own and own != rid:  # the caller's id, which another request may carry too: and the adapter's
                rid = f"{rid} ({own})"
            route = route_template(scope)
            method = str(scope.get("method") or "")
            if method not in _METHODS:  # any token is a method to the parser: logs and labels stay bounded
                method = "other"
            log.info("%s %s %d %.1fms %s", method, route, status["code"], elapsed * 1000, rid)
            HTTP_RESPONSES.labels(method, route, str(status["code"])).inc()
            HTTP_SECONDS.labels(method, route).observe(elapsed)
