"""The HTTP edge of the error hierarchy: one handler for AdapterError renders a FHIR
OperationOutcome, and one table maps the error class to the HTTP status (most specific class
along the MRO wins). Anything unexpected is a 500 OperationOutcome without internals."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from adapter import errors as e
from adapter.api.fhir_xml import replaced_for_xml, to_xml, xml_cannot_carry
from adapter.api.negotiation import Format, answer_media_type, check_acceptable, fhir_version, response_format
from adapter.api.request_limits import LET_GO_STATE
from adapter.api.urls import absolute
from adapter.json_decimal import dumps
from adapter.mapping.capability import R4_TYPES
from adapter.mapping.outcome import operation_outcome, outcome_from_error, refusal_coding
from adapter.refusals import RefusalCode

log = logging.getLogger("adapter.api")

FHIR_JSON = "application/fhir+json"

HTTP_STATUS: dict[type[e.AdapterError], int] = {
    e.AdapterError: 500,
    e.InvalidInput: 422,
    e.InvalidResource: 400,
    e.InvalidQuery: 400,
    e.AmbiguousRequest: 400,
    e.RequiredElementMissing: 422,
    e.UnknownCode: 422,
    e.UndecodableImage: 422,
    e.UncleanableDocument: 422,
    e.UnknownPurposeOfUse: 400,
    e.BusinessRuleViolation: 422,
    e.ConsentRequired: 422,
    e.PatientReferenceConflict: 422,
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
    e.MissingImage: 500,  # the deployment's fault, not a resource that does not exist
    e.UnreleasableObject: 500,  # what is stored: no retry cures it (no 503, no Retry-After)
    e.Gone: 410,
    e.UnsupportedResourceType: 404,
    e.Conflict: 409,
    e.PreconditionFailed: 412,
    e.PreconditionRequired: 428,
    e.InstanceConflict: 409,
    e.Transient: 503,
    e.StorageError: 503,
    e.StudyStarted: 503,  # two photos opening one study at once: sent again, it joins the study
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


def fhir_response(body: Any, status: int = 200, headers: dict[str, str] | None = None, *, fmt: Format = "json",
                  version: str | None = None) -> Response:
    """``body`` as FHIR JSON, or FHIR XML (``fmt``: adapter.api.fhir_xml, written from the same
    JSON); its media type names ``version`` (``fhirVersion=4.0``/``5.0``) when given, and
    always the charset, UTF-8 (adapter.api.negotiation.answer_media_type)."""
    if fmt == "xml":
        if xml_cannot_carry(body):
            if not (isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"):
                # a record stored with a character XML 1.0 has none for (refused on input now)
                raise e.NotAcceptable("this answer holds a character FHIR XML cannot carry (a control character): "
                                      "ask for it in FHIR JSON")
            body = replaced_for_xml(body)  # the adapter's words, quoting what a request sent
        content = to_xml(body, "5" if version == "5" else "4")
    else:
        content = dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(content=content, status_code=status, media_type=answer_media_type(version or None, fmt),
                    headers=headers)


def _is_fhir(request: Request) -> bool:
    """Whether ``request`` is one of the FHIR API's (its path ``/fhir`` or under it)."""
    path = str(request.scope.get("path", ""))
    return path == "/fhir" or path.startswith("/fhir/")


def answer_format(request: Request) -> Format:
    """The format a FHIR answer to ``request`` takes, its refusals included: the one the route
    negotiated (``request.state.fhir_format``), or else the one Accept and ``_format`` ask for;
    FHIR JSON outside ``/fhir``, and when what they ask for is not produced (a 406 is answered
    in JSON)."""
    if not _is_fhir(request):
        return "json"
    chosen = getattr(request.state, "fhir_format", None)
    if chosen in ("json", "xml"):
        return "xml" if chosen == "xml" else "json"
    accept, format_param = request.headers.get("accept"), request.query_params.get("_format")
    try:
        check_acceptable(accept, format_param, binary=True)
        return response_format(accept, format_param)
    except e.AdapterError:
        return "json"


def answer_version(request: Request) -> str | None:
    """The FHIR version a refusal of a ``/fhir`` request names in its media type, as its success
    would (``fhirVersion=4.0``/``5.0``): the one the route negotiated, else the one Accept and
    ``_format`` ask for (R4 when they ask for none or for one not served); None elsewhere."""
    if not _is_fhir(request):
        return None
    chosen = getattr(request.state, "fhir_version", None)
    if chosen in ("4", "5"):
        return str(chosen)
    try:
        return fhir_version(request.headers.get("accept"), request.query_params.get("_format"))
    except e.AdapterError:
        return "4"


def _outcome(request: Request, body: Any, status: int, headers: dict[str, str] | None = None) -> Response:
    """A refusal's OperationOutcome, in the format and FHIR version the request negotiated
    (:func:`answer_format`, :func:`answer_version`)."""
    return fhir_response(body, status, headers, fmt=answer_format(request), version=answer_version(request))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(e.AdapterError)
    async def _adapter_error(request: Request, exc: e.AdapterError) -> Response:
        status = status_for(exc)
        if status >= 500:
            log.error("request failed: %s", exc.for_log())  # StorageError (ENOSPC): what failed, no patient data
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
        if status == 405:  # RFC 9110 15.5.6: the methods the target allows, the refused one not among them
            headers = {"Allow": ", ".join(m for m in allowed_methods(request) if m != request.method)}
        if exc.location and (services := getattr(request.app.state, "services", None)) is not None:
            # the record the refusal is about, stored and held (a photo stored before with other
            # details: adapter.services.ingest): where the photo is, as a 201's Location says
            headers = {**(headers or {}), "Location": absolute(request, services, f"fhir/{exc.location}")}
        return _outcome(request, outcome_from_error(exc), status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        errors = exc.errors()[:10]
        if errors and all(tuple(err.get("loc", ()))[:1] == ("query",) for err in errors):
            # a query parameter that cannot be understood (GET /outbox?limit=x): 400, as
            # InvalidQuery is on every read; 422 stays for a body understood and not processable
            where = [".".join(str(p) for p in tuple(err["loc"])[1:]) for err in errors]
            return _outcome(request, operation_outcome("error", "invalid", "invalid query", expression=where,
                                                        details=refusal_coding(RefusalCode.INVALID_QUERY)), 400)
        where = [".".join(str(p) for p in err.get("loc", ())) for err in errors]
        return _outcome(request, operation_outcome("error", "invalid", "invalid request", expression=where,
                                                    details=refusal_coding(RefusalCode.INVALID_CONTENT)), 422)

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
        refusal = {404: RefusalCode.NOT_FOUND, 405: RefusalCode.NOT_SUPPORTED}.get(exc.status_code)
        return _outcome(request, operation_outcome("error", code, str(exc.detail)[:200],
                                                   details=refusal_coding(refusal) if refusal else None),
                        exc.status_code, headers=headers or None)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, exc: ClientDisconnect) -> Response:
        # the client closed the connection before its request was whole: nobody to answer, no
        # error of ours; the route stored nothing (its staging file is removed as it unwinds)
        if getattr(request.state, LET_GO_STATE, False):
            # let go for a newer connection (adapter.api.request_limits): the client was answered
            # 503, and this (dropped) answer says the same, so that the access log does too
            log.info("a request arriving the slowest was let go for a new connection (503)")
            return _outcome(request, operation_outcome("error", "transient", "let go for a new connection",
                                                        details=refusal_coding(RefusalCode.TRANSIENT)), 503)
        log.info("the client disconnected before its request was whole")
        return _outcome(request, operation_outcome("error", "incomplete", "the request did not arrive whole",
                                                    details=refusal_coding(RefusalCode.REQUEST_TIMEOUT)), 400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error (%s)", type(exc).__name__)
        # Starlette raises the exception again once this answer is sent, and uvicorn then closes
        # the connection: said here, a client's pool does not send its next request into a
        # connection being closed (an integration engine's next message failed with a reset)
        return _outcome(request, operation_outcome("fatal", "exception", "internal error"), 500,
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
