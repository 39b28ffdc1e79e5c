"""``PATCH /fhir/Media/{id}`` and ``PATCH /fhir/DocumentReference/{id}``: a record filed in error
(under the wrong patient, or otherwise) marked ``entered-in-error``, the one FHIR PATCH taken
(http.html#patch; adapter.mapping.status_patch, adapter.services.corrections).

A JSON Patch (``application/json-patch+json``, RFC 6902) only; FHIRPath Patch (a Parameters
resource) and merge patches are refused (415). Stated for records management
(``X-Purpose-Of-Use: RECORDMGT``), any other purpose 403; ``If-Match: W/"n"`` required: none
(or ``*``) 428 Precondition Required (RFC 6585 3: the mark cannot be undone, so it is of the
version the client read), another version than the current 412.
The answer is an OperationOutcome, not the record: records management is not a care read, and a
record entered in error is released to care only (adapter.consent.decision); ETag and
Content-Location name the version written. Irreversible."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adapter.api.deps import ServicesDep, get_write_context
from adapter.api.json_input import load_json
from adapter.api.openapi import (
    BODY,
    FHIR_NEGOTIATION,
    FHIR_RESOURCE,
    WRITE,
    answers,
    ok,
    refusals,
    request_body,
)
from adapter.api.routes.fhir import _answerable, _body, _etag, _if_match_versions, _out, _r4_write
from adapter.api.urls import absolute
from adapter.errors import AdapterError, InvalidResource
from adapter.mapping.outcome import information_outcome
from adapter.mapping.status_patch import parse_status_patch

router = APIRouter(prefix="/fhir", default_response_class=Response, responses=refusals(*FHIR_NEGOTIATION))

JSON_PATCH = "application/json-patch+json"
#: A JSON Patch is a few operations: more than this is no status patch.
MAX_PATCH_BYTES = 64 * 1024

_PATCHED = ok(200, "an OperationOutcome saying the record is marked entered-in-error (or was already: nothing "
              "changed); ETag and Content-Location name its version", FHIR_RESOURCE)
_PATCH_BODY = request_body({JSON_PATCH: {"type": "array", "items": {"type": "object"}}},
                           'a JSON Patch (RFC 6902) whose one change is {"op": "replace", "path": "/status", '
                           '"value": "entered-in-error"}, test operations allowed before it')
_RESPONSES = answers(_PATCHED, refusals(*BODY, *WRITE, 404, 409, 412, 428))


@router.patch("/Media/{id}", openapi_extra=_PATCH_BODY, responses=_RESPONSES)
async def patch_media(id: str, request: Request, services: ServicesDep,
                      if_match: Annotated[str | None, Header()] = None) -> Response:
    """Mark a Media entered-in-error (irreversible; module docstring)."""
    return await _patch(request, services, "Media", id, if_match)


@router.patch("/DocumentReference/{id}", openapi_extra=_PATCH_BODY, responses=_RESPONSES)
async def patch_document_reference(id: str, request: Request, services: ServicesDep,
                                   if_match: Annotated[str | None, Header()] = None) -> Response:
    """Mark a DocumentReference entered-in-error (irreversible; module docstring)."""
    return await _patch(request, services, "DocumentReference", id, if_match)


async def _patch(request: Request, services: ServicesDep, resource_type: str, id: str,
                 if_match: str | None) -> Response:
    ctx = get_write_context(request, services, "update")
    await run_in_threadpool(services.corrections.authorise, resource_type, id, ctx)
    try:
        fmt = _answerable(request)
        _r4_write(request)
        expected = _if_match_versions(if_match)
        raw = await _body(request, (JSON_PATCH,),
                          f"FHIR PATCH takes a JSON Patch ({JSON_PATCH}, RFC 6902) here; FHIRPath Patch (Parameters) "
                          "and merge patches are not supported", MAX_PATCH_BYTES,
                          f"the JSON Patch is larger than {MAX_PATCH_BYTES} bytes")
        patch = parse_status_patch(load_json(raw, what="the JSON Patch", error=InvalidResource))
    except AdapterError as exc:  # refused before the record is looked up: audited as its other refusals
        await run_in_threadpool(services.corrections.audit_unread, resource_type, id, ctx, exc)
        raise
    marked = await run_in_threadpool(services.corrections.mark_entered_in_error, resource_type, id, ctx, expected,
                                     patch)
    stored = marked.stored
    headers = {"Content-Location": absolute(request, services,
                                            f"fhir/{resource_type}/{id}/_history/{stored.version_id}"),
               **_etag(stored.resource)}
    if marked.changed:
        text = (f"{resource_type}/{id} marked entered-in-error (version {stored.version_id}); this cannot be undone. "
                f"Its image is released to no one and the record to care only; {marked.cancelled} outbox item(s) not "
                "yet sent were cancelled (a copy already forwarded must be corrected at the PACS)")
        if marked.sending:
            text += (f"; {marked.sending} outbox item(s) were being sent at the time and may have reached the PACS "
                     "(check /outbox)")
    else:
        text = f"{resource_type}/{id} was entered-in-error already (version {stored.version_id}): nothing changed"
    return _out(information_outcome("informational", text), "4", 200, headers, fmt=fmt)
