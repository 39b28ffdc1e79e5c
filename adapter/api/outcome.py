"""The HTTP edge of the error hierarchy: one handler for AdapterError renders a FHIR
OperationOutcome, and one table maps the error class to the HTTP status (most specific class
along the MRO wins). Anything unexpected is a 500 OperationOutcome without internals."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from adapter import errors as e
from adapter.mapping.capability import R4_TYPES
from adapter.mapping.outcome import operation_outcome, outcome_from_error

log = logging.getLogger("adapter.api")

FHIR_JSON = "application/fhir+json"

HTTP_STATUS: dict[type[e.AdapterError], int] = {
    e.AdapterError: 500,
    e.InvalidInput: 422,
    e.InvalidResource: 400,
    e.InvalidQuery: 400,
    e.RequiredElementMissing: 422,
    e.UnknownCode: 422,
    e.UndecodableImage: 422,
    e.UncleanableDocument: 422,
    e.UnknownPurposeOfUse: 400,
    e.BusinessRuleViolation: 422,
    e.ConsentRequired: 422,
    e.UnsupportedMediaType: 415,
    e.NotSupported: 400,
    e.NotAcceptable: 406,
    e.UpdateCreateNotSupported: 405,
    e.UnsupportedPixelData: 422,
    e.UnsupportedTransferSyntax: 422,
    e.ImageTooLarge: 422,
    e.TooCostly: 422,
    e.PayloadTooLarge: 413,
    e.RequestTimeout: 408,
    e.Forbidden: 403,
    e.PurposeOfUseMissing: 403,
    e.NotFound: 404,
    e.Gone: 410,
    e.UnsupportedResourceType: 404,
    e.Conflict: 409,
    e.PreconditionFailed: 412,
    e.InstanceConflict: 409,
    e.Transient: 503,
    e.StorageError: 503,
    e.InsufficientStorage: 507,
    e.PolicyError: 500,
    e.ConfigurationError: 500,
    e.NoStore: 500,
}


#: Retry-After (RFC 9110 10.2.3) of a 503: the store was busy past its wait (SQLite's busy timeout, the
#: connection pool's) or failed for the moment; nothing of the request was stored, and a client that
#: retries at once only adds to the queue it waited in.
RETRY_AFTER_SECONDS = 5


def status_for(err: e.AdapterError) -> int:
    for cls in type(err).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def fhir_response(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(content=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
                    status_code=status, media_type=FHIR_JSON, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.AdapterError)
    async def _adapter_error(request: Request, exc: e.AdapterError) -> Response:
        status = status_for(exc)
        if status >= 500:
            log.error("request failed: %s", type(exc).__name__)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
        if status == 405:  # RFC 9110 15.5.6: the methods the target allows, the refused one not among them
            headers = {"Allow": ", ".join(m for m in allowed_methods(request) if m != request.method)}
        return fhir_response(outcome_from_error(exc), status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()[:10]
        if errors and all(tuple(err.get("loc", ()))[:1] == ("query",) for err in errors):
            # a query parameter that cannot be understood (GET /outbox?limit=x): 400, as
            # InvalidQuery is on every read; 422 stays for a body understood and not processable
            where = [".".join(str(p) for p in tuple(err["loc"])[1:]) for err in errors]
            return fhir_response(operation_outcome("error", "invalid", "invalid query", expression=where), 400)
        where = [".".join(str(p) for p in err.get("loc", ())) for err in errors]
        return fhir_response(operation_outcome("error", "invalid", "invalid request", expression=where), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        resource_type = request.path_params.get("resource_type")
        if exc.status_code == 405 and isinstance(resource_type, str) and resource_type not in R4_TYPES:
            # a write (no route takes it) of a FHIR type not served here: 404 "resource type not
            # supported" (http.html#create, #update), as a read of it is, not 405 for a type served
            return await _adapter_error(request, e.UnsupportedResourceType(f"{resource_type[:40]} is not served here"))
        code = {404: "not-found", 405: "not-supported"}.get(exc.status_code, "processing")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return fhir_response(operation_outcome("error", code, str(exc.detail)[:200]), exc.status_code,
                             headers=headers or None)

    @app.exception_handler(ClientDisconnect)
    async def _gone(_: Request, exc: ClientDisconnect) -> Response:
        # the client closed the connection before its request was whole: nobody to answer, no
        # error of ours; the route stored nothing (its staging file is removed as it unwinds)
        log.info("the client disconnected before its request was whole")
        return fhir_response(operation_outcome("error", "incomplete", "the request did not arrive whole"), 400)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error (%s)", type(exc).__name__)
        # Starlette raises the exception again once this answer is sent, and uvicorn then closes
        # the connection: said here, a client's pool does not send its next request into a
        # connection being closed (an integration engine's next message failed with a reset)
        return fhir_response(operation_outcome("fatal", "exception", "internal error"), 500,
                             headers={"Connection": "close"})


def allowed_methods(request: Request) -> list[str]:
    """What a 405 must list in ``Allow`` (RFC 9110 §15.5.6): each method some route takes on
    this path (Starlette lists only the first matching route's), found by asking the routes with
    the request's path under each method; HEAD wherever GET is (adapter.api.head answers it)."""
    routes = request.app.router.routes
    allowed = [method for method in _METHODS
               if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)]
    if "GET" in allowed:
        allowed.insert(allowed.index("GET") + 1, "HEAD")
    return allowed


_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
