"""``X-Request-Id``: every answer names the request it answers, so an integration engine can tie
its own log, the adapter's access log and the AuditEvents of the request together (IHE BALP
records it as the ``XrequestId`` entity).

The caller's ``X-Request-Id`` is kept when it is a plain token (letters, digits, ``.``, ``_``,
``:``, ``-``; at most 64); anything else, or none, is replaced by a new UUID: the value goes
into logs and AuditEvents, so it can never carry a line break or a patient's name of any
length. A plain ASGI middleware (bodies stream through untouched); the id is in
``scope["state"]["request_id"]`` for the routes and the access log.

The caller chooses its id, and two requests may carry the same one (audit review F1): the
adapter also gives every request an id of its own, a new UUID, unique
(``scope["state"]["own_request_id"]``; the one answered when the caller sent none), which its
AuditEvents name, the caller's beside it (``scope["state"]["client_request_id"]``).
"""

from __future__ import annotations

import re
import uuid

from starlette.types import Receive, Scope, Send

from adapter.api.headers import HttpMiddleware, editing_response_headers

HEADER = b"x-request-id"
_TOKEN = re.compile(rb"[A-Za-z0-9._:-]{1,64}")


def request_id_of(scope: Scope) -> str:
    """The request's id (RequestIdMiddleware), or a new one when it did not run."""
    state = scope.get("state")
    rid = state.get("request_id") if isinstance(state, dict) else None
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def own_request_id_of(scope: Scope) -> str:
    """The adapter's own id of the request, unique (RequestIdMiddleware), or a new one."""
    state = scope.get("state")
    rid = state.get("own_request_id") if isinstance(state, dict) else None
    return rid if isinstance(rid, str) else uuid.uuid4().hex


def client_request_id_of(scope: Scope) -> str | None:
    """The caller's own X-Request-Id (a plain token), or None when it sent none usable."""
    state = scope.get("state")
    rid = state.get("client_request_id") if isinstance(state, dict) else None
    return rid if isinstance(rid, str) else None


class RequestIdMiddleware(HttpMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        given = next((value for name, value in scope.get("headers", []) if name.lower() == HEADER), b"")
        own = uuid.uuid4().hex
        client = given.decode("ascii") if _TOKEN.fullmatch(given) else None
        rid = client or own
        state = scope.setdefault("state", {})
        state.update(request_id=rid, own_request_id=own)
        if client is not None:
            state["client_request_id"] = client
        raw = rid.encode("ascii")
        await self.app(scope, receive, editing_response_headers(
            send, lambda headers: [*(h for h in headers if h[0].lower() != HEADER), (HEADER, raw)]))
