"""FHIR REST at ``/fhir`` (https://hl7.org/fhir/R4/http.html): capabilities, transaction,
Consent create/update, read and search under purpose of use. R4 by default; R5 with
``Accept: application/fhir+json; fhirVersion=5.0``. FHIR JSON, or FHIR XML both ways
(adapter.api.fhir_xml): a body sent as XML is read into the JSON a JSON client sends, and an
answer negotiated as XML is written from the JSON the route built."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime
from functools import partial
from typing import IO, Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode

import anyio
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from adapter import __version__
from adapter.api.batch import process_batch
from adapter.api.deps import ReaderDep, ServicesDep, get_write_context
from adapter.api.fhir_xml import from_xml
from adapter.api.head import asked_as_head
from adapter.api.headers import break_glass_headers
from adapter.api.idempotency import idempotency_key as checked_key
from adapter.api.json_input import load_json
from adapter.api.media_type import content_type, parse_parameters
from adapter.api.negotiation import (
    Format,
    binary_answer,
    body_format,
    check_acceptable,
    fhir_version,
    format_is_fhir,
    media_type,
    response_format,
    wants_dicom,
    wants_plain_json,
)
from adapter.api.openapi import (
    BODY,
    BUNDLE_SCHEMA,
    DICOM,
    FHIR_BUNDLE,
    FHIR_JSON,
    FHIR_NEGOTIATION,
    FHIR_RESOURCE,
    FORM,
    IMAGES,
    INVALID,
    JSON,
    NEW_IMAGES,
    READ_ONE,
    RESOURCE_SCHEMA,
    WRITE,
    answers,
    ok,
    refusals,
    request_body,
)
from adapter.api.outcome import fhir_response
from adapter.api.request_limits import refuse_declared_over
from adapter.api.routes.photos import ingest_limiter
from adapter.api.urls import absolute, base
from adapter.errors import (
    AdapterError,
    InvalidQuery,
    InvalidResource,
    NotAcceptable,
    NotFound,
    NotSupported,
    PayloadTooLarge,
    PreconditionFailed,
    UnsupportedMediaType,
    UnsupportedResourceType,
)
from adapter.mapping.audit_mhd import find_document_references, provide_document_bundle, retrieve_document
from adapter.mapping.bundle import history as history_bundle
from adapter.mapping.bundle import outcome_entry, searchset
from adapter.mapping.capability import R4_TYPES, capability_statement, versions_parameters, versions_plain
from adapter.mapping.document_location import with_document_location
from adapter.mapping.outcome import information_outcome, operation_outcome
from adapter.mapping.r5 import to_r5
from adapter.mapping.subsetting import Subsetting, parse_subsetting, subset
from adapter.memory import give_back
from adapter.model.decision import Decision, View
from adapter.services.access import SearchPaging, overrode_for_care
from adapter.services.history_paging import HistoryPaging
from adapter.services.registry import Services
from adapter.services.search_pages import PAGE_PARAM
from adapter.services.search_params import (
    CURSOR_PARAM,
    DEFAULT_COUNT,
    MAX_COUNT,
    page_param,
    parse_date_param,
    parse_search,
)
from adapter.services.transaction import RETURN_MINIMAL, RETURN_OPERATION_OUTCOME, RETURN_REPRESENTATION
from adapter.text import is_digits

#: Every FHIR route negotiates the format and FHIR version (406) and answers as it builds it.
router = APIRouter(prefix="/fhir", default_response_class=Response, responses=refusals(*FHIR_NEGOTIATION))

#: A read's answer: the resource; a Binary's own bytes for Accept image/* (or the record's
#: DICOM object for application/dicom).
_READ_ANSWER = ok(200, "the resource (a Binary: its own bytes unless FHIR JSON is asked for; application/dicom: "
                  "the record's DICOM object)", {**FHIR_RESOURCE, **dict.fromkeys(IMAGES), DICOM: None})
#: The validators of a read (its ETag and Last-Modified) answered for a conditional one.
_NOT_MODIFIED = ok(304, "not modified: If-None-Match names the current version (or If-Modified-Since is at or "
                   "after it), after the decision as any read")
#: What a Consent create or update answers, as Prefer: return= asks.
_WRITTEN = "the Consent (Prefer: return=representation, the default), an OperationOutcome (return=OperationOutcome) " \
    "or no body (return=minimal); Location names the version"
_CONSENT_BODY = request_body({FHIR_JSON: RESOURCE_SCHEMA, JSON: RESOURCE_SCHEMA}, "a FHIR R4 Consent")

WHOLE = Subsetting()  # no _summary, no _elements


def _versioned(resource: dict[str, Any], version: str, fhir_base: str) -> dict[str, Any]:
    """A stored resource as an answer renders it: in the FHIR version asked for, a record's
    attachment url completed against ``fhir_base`` (IHE MHD Document Location,
    adapter.mapping.document_location)."""
    return with_document_location(to_r5(resource) if version == "5" else resource, fhir_base)


def _fhir_base(request: Request, services: Services) -> str:
    return f"{base(request, services)}/fhir"


def _out(body: Any, version: str, status: int = 200, headers: dict[str, str] | None = None, *,
         fmt: Format = "json") -> Response:
    """A FHIR answer of ``version`` in the format negotiated (``fmt``), its media type naming both."""
    return fhir_response(body, status, headers, fmt=fmt, version=version)


def _negotiate(request: Request, accept: str | None, format_param: str | None, *,
               binary: bool = False) -> tuple[Literal["4", "5"], Format]:
    """The FHIR version and format of the answer (adapter.api.negotiation: 406 for what is not
    produced); the format is kept on the request, so a refusal after this point is answered in
    it too (adapter.api.outcome.answer_format)."""
    check_acceptable(accept, format_param, binary=binary)
    version = fhir_version(accept, format_param)
    fmt = response_format(accept, format_param)
    request.state.fhir_format = fmt
    request.state.fhir_version = version
    return version, fmt


def _glass_headers(decision: Decision) -> dict[str, str]:
    return break_glass_headers(decision.break_glass, overrode_for_care([decision]))


async def _read_body(request: Request, media_types: tuple[str, ...], refusal: str, limit: int,
                     too_large: str, spool: IO[bytes]) -> int:
    """Read the request body into ``spool``, if its media type is one of ``media_types`` (else
    415 with ``refusal``) and it has at most ``limit`` bytes (else 413 with ``too_large``, read
    no further); its size."""
    ctype = (content_type(request) or "").split(";")[0].strip().lower()
    if ctype not in media_types:
        raise UnsupportedMediaType(refusal)
    refuse_declared_over(request, limit, too_large)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(too_large)
        spool.write(chunk)
    return size


async def _body(request: Request, media_types: tuple[str, ...], refusal: str, limit: int,
                too_large: str) -> bytes:
    """A small request body (a form-encoded search), in memory: see :func:`_read_body`."""
    body = io.BytesIO()
    await _read_body(request, media_types, refusal, limit, too_large, body)
    return body.getvalue()


@asynccontextmanager
async def _json_body(request: Request, services: Services, limit: int) -> AsyncIterator[dict[str, Any]]:
    """The FHIR resource of the request body, for the ``async with`` block working on it.

    A body of more than LARGE_BODY_BYTES is received into a file in the staging folder (not
    held in memory while a slow client sends it), and read, parsed and worked on only when one
    of LARGE_BODY_SLOTS is free: in memory whole, and several times over while it is parsed and
    stored (the bytes, the JSON, the decoded image), at most that many at once per process, so
    memory stays bounded however many clients post at once (24 concurrent 60 MB Bundles peaked
    at 1.35 GB without it), while a fast client never waits for slow ones to finish sending.
    The file is unnamed (gone with the process, whatever happens)."""
    staging = str(services.blobs.staging_dir)
    with tempfile.SpooledTemporaryFile(max_size=LARGE_BODY_BYTES, mode="w+b", dir=staging) as spool:
        size = await _read_body(request, _BODY_TYPES,
                                "FHIR requests take application/fhir+json or application/fhir+xml", limit,
                                f"the request body is larger than {limit} bytes", spool)
        xml = body_format(content_type(request)) == "xml"
        async with _large_body_turn(request, size):
            spool.seek(0)
            # in a worker thread: reading and parsing (and bounding) up to ~68 MB of JSON would
            # hold the event loop
            try:
                data = await run_in_threadpool(partial(_load_resource, spool, xml=xml))
                yield data
            finally:
                if size > LARGE_BODY_BYTES:
                    # the parse's and the work's freed blocks given back to the system, as an
                    # image's are (1.4 GB stayed after one body: security review 2)
                    await run_in_threadpool(give_back)


#: The media types of a FHIR request body: FHIR JSON and FHIR XML (http.html#mime-type), with
#: the generic JSON and XML types.
_BODY_TYPES = ("application/fhir+json", "application/json", "application/fhir+xml", "application/xml", "text/xml")


def _load_resource(spool: IO[bytes], *, xml: bool = False) -> dict[str, Any]:
    """The resource of a FHIR body, FHIR JSON or (``xml``) FHIR XML read into the JSON a JSON
    client would have sent, before any check of it; a body that cannot be parsed as one is 400
    (http.html#create, #update, #transaction: "could not be parsed"), 422 being a parsed resource
    a rule refuses."""
    if xml:
        return from_xml(spool.read())
    data = load_json(spool.read(), what="the body", error=InvalidResource)
    if not isinstance(data, dict) or "resourceType" not in data:
        raise InvalidResource("the body is not a FHIR resource", expression="resourceType")
    return data


@router.get("/metadata", responses=ok(200, "the CapabilityStatement (R4; R5 with fhirVersion=5.0)", FHIR_RESOURCE))
async def metadata(request: Request, services: ServicesDep,
                   accept: Annotated[str | None, Header()] = None) -> Response:
    """The CapabilityStatement (http.html#capabilities). ``mode`` ``full`` (the default) and
    ``normal`` answer it (the adapter's is the same in both); ``terminology`` asks for a
    TerminologyCapabilities resource, which a server without a terminology service has none of:
    refused (400 not-supported) rather than answered with another resource type."""
    version, fmt = _negotiate(request, accept, request.query_params.get("_format"))
    modes = request.query_params.getlist("mode")
    if any(mode not in _CAPABILITY_MODES for mode in modes) or len(modes) > 1:
        why = "this server has no terminology service: no TerminologyCapabilities" \
            if "terminology" in modes else f"mode takes one of {', '.join(_CAPABILITY_MODES)}"
        raise NotSupported(f"metadata?mode={','.join(m[:20] for m in modes)[:60]}: {why}", expression="mode")
    body = capability_statement(base_url=absolute(request, services, "fhir"),
                                fhir_version="5.0.0" if version == "5" else "4.0.1",
                                software_version=__version__, now=services.started)
    return _out(body, version, fmt=fmt)


#: The ``mode`` values of ``metadata`` answered with the CapabilityStatement (http.html#capabilities).
_CAPABILITY_MODES = ("full", "normal")

_VERSIONS_PLAIN = {"type": "object", "required": ["versions", "default"],
                   "properties": {"versions": {"type": "array", "items": {"type": "string"}},
                                  "default": {"type": "string"}}}


@router.get("/$versions", responses=answers(
    ok(200, "the FHIR versions served (the fhirVersion of the media type) and the default: a Parameters "
       "resource, or {versions, default} for Accept: application/json", {**FHIR_RESOURCE, JSON: _VERSIONS_PLAIN}),
    refusals(*FHIR_NEGOTIATION)))
async def versions(request: Request, accept: Annotated[str | None, Header()] = None) -> Response:
    """CapabilityStatement-versions: R4 and R5 are served here, told apart by the fhirVersion
    parameter of the media type (http.html#version-parameter); this operation is how a client
    finds out. No patient data: no purpose of use asked, as for the CapabilityStatement."""
    version, fmt = _negotiate(request, accept, request.query_params.get("_format"))
    if wants_plain_json(accept) and request.query_params.get("_format") is None:
        return JSONResponse(versions_plain())
    return _out(versions_parameters(), version, fmt=fmt)


#: Large FHIR JSON bodies (over LARGE_BODY_BYTES: transaction Bundles with their base64 images,
#: Consents with a scanned form) worked on at once in one process (:func:`_json_body`).
LARGE_BODY_SLOTS = 2
LARGE_BODY_BYTES = 1024 * 1024


@asynccontextmanager
async def _large_body_turn(request: Request, size: int) -> AsyncIterator[None]:
    if size <= LARGE_BODY_BYTES:
        yield
        return
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "large_body_limiter", None)
    if limiter is None:
        limiter = state.large_body_limiter = anyio.CapacityLimiter(LARGE_BODY_SLOTS)
    async with limiter:
        yield


@router.post("", responses=answers(ok(200, "a transaction-response or batch-response Bundle", FHIR_BUNDLE),
                                   refusals(*BODY, *WRITE, *NEW_IMAGES)),
             openapi_extra=request_body({FHIR_JSON: BUNDLE_SCHEMA, JSON: BUNDLE_SCHEMA},
                                        "a transaction Bundle (IHE MHD ITI-65 shape) or a batch of reads"))
async def transaction(request: Request, services: ServicesDep,
                      idempotency_key: Annotated[str | None, Header()] = None) -> Response:
    """An ITI-65-shaped transaction Bundle (base64 image in Binary.data, hence the 4/3 limit), or
    a batch of reads."""
    fmt = _answerable(request)
    async with _json_body(request, services, services.settings.max_upload_bytes * 4 // 3 + 1024 * 1024) as bundle:
        return await _transaction(request, services, idempotency_key, bundle, fmt)


async def _transaction(request: Request, services: Services, idempotency_key: str | None,
                       bundle: dict[str, Any], fmt: Format) -> Response:
    if bundle.get("resourceType") != "Bundle":
        raise InvalidResource("POST /fhir takes a transaction or batch Bundle", expression="Bundle.resourceType")
    if bundle.get("type") == "batch":  # reads, each under the batch's purpose of use (adapter.api.batch)
        version = fhir_version(request.headers.get("accept"), request.query_params.get("_format"))
        types = R4_TYPES if version == "4" else tuple(t for t in R4_TYPES if t != "Media")
        answer, glass, overrode = await process_batch(request, bundle, types, media_type(version))
        return _out(answer, version, headers=break_glass_headers(glass, overrode), fmt=fmt)
    fhir_base = _fhir_base(request, services)
    # an ITI-65 Provide Document Bundle (one with a SubmissionSet) is audited as MHD's Import
    ctx = get_write_context(request, services, "create", provide_document_bundle(bundle, fhir_base))
    _r4_write(request)
    try:
        key = checked_key(idempotency_key)
    except AdapterError as exc:  # a refused create, audited as the transaction's other refusals are
        await anyio.to_thread.run_sync(services.ingest.audit_refusal, ctx, exc, None)
        raise
    response, results = await anyio.to_thread.run_sync(  # a photo's ingest: the turns POST /photos takes
        partial(services.transactions.process, bundle, idempotency_key=key, ctx=ctx, fhir_base=fhir_base,
                returned=_return_preference(request, RETURN_MINIMAL)),
        limiter=ingest_limiter(request))
    # a Bundle answered as stored before (a retry), as POST /photos says of its retries
    replayed = {"Idempotent-Replayed": "true"} if results and all(r.replayed for r in results) else None
    return _out(response, "4", headers=replayed, fmt=fmt)


def _answerable(request: Request) -> Format:
    """The format of a write's (or batch's) answer; one whose Accept or ``_format`` wants only
    what this server does not produce (FHIR Turtle) is refused (406) before its body is read:
    answered in another after it was stored, the client could not read the answer and would send
    the write again."""
    return _negotiate(request, request.headers.get("accept"), request.query_params.get("_format"))[1]


def _r4_write(request: Request) -> None:
    """Writes (transactions, Consent create and update) take and answer R4 only (the R5
    CapabilityStatement lists none): a body of another FHIR version (its Content-Type's
    fhirVersion: R5, STU3, R4B) is refused (415) rather than read as R4, and so is an Accept that
    wants only R5 (406), rather than answered in R4 under an R4 content type it did not ask for;
    a charset other than UTF-8 is refused too (415), FHIR JSON and XML alike; a parameter
    repeated, or two Content-Type headers, 400 (security review 3: which one a gateway read is
    anybody's guess)."""
    _, params = parse_parameters(content_type(request), "Content-Type")
    charset = params.get("charset")
    if charset is not None and charset.strip('"').lower() not in ("utf-8", "utf8"):
        # FHIR's JSON and XML are UTF-8 (http.html#mime-type, RFC 8259 8.1): a body said to be
        # another encoding is not read as UTF-8 all the same
        raise UnsupportedMediaType(f"FHIR bodies are UTF-8, not charset={charset[:20]}")
    declared = params.get("fhirversion")
    if declared is not None and not declared.startswith("4.0"):  # STU3, R4B, R5...: not read as R4
        raise UnsupportedMediaType(f"writes take FHIR R4 (fhirVersion=4.0), not fhirVersion={declared[:10]}"
                                   + (": the R5 endpoint is read-only" if declared.startswith("5.") else ""))
    if fhir_version(request.headers.get("accept"), request.query_params.get("_format")) == "5":
        raise NotAcceptable("writes answer in FHIR R4 (fhirVersion=4.0): the R5 endpoint is read-only")


def _return_preference(request: Request, default: str) -> str:
    """What ``Prefer: return=`` asks (http.html#ops): ``minimal``, ``representation`` or
    ``OperationOutcome`` (case aside); ``default`` when it asks none of them."""
    preferences = {p.strip().lower().replace(" ", "") for item in (request.headers.get("prefer") or "").split(",")
                   for p in item.split(";")}
    for returned in (RETURN_MINIMAL, RETURN_OPERATION_OUTCOME, RETURN_REPRESENTATION):
        if f"return={returned.lower()}" in preferences:
            return returned
    return default


def _written(request: Request, services: Services, stored: Any, status: int, fmt: Format) -> Response:
    """The answer to a create or update, as ``Prefer: return=`` asks (http.html#ops): the
    resource (``representation``, the default), nothing (``minimal``) or an OperationOutcome;
    with the version's Location and a read's validators (ETag, Last-Modified)."""
    returned = _return_preference(request, RETURN_REPRESENTATION)
    headers = {"Location": absolute(request, services, f"fhir/Consent/{stored.id}/_history/{stored.version_id}"),
               **_etag(stored.resource)}
    if returned == RETURN_MINIMAL:
        return Response(status_code=status, headers=headers)
    if returned == RETURN_OPERATION_OUTCOME:
        done = "created" if status == 201 else "updated"
        return _out(information_outcome("informational", f"Consent/{stored.id} {done} (version {stored.version_id})",
                                        None), "4", status, headers, fmt=fmt)
    return _out(stored.resource, "4", status, headers, fmt=fmt)


@router.post("/Consent", status_code=201, openapi_extra=_CONSENT_BODY,
             responses=answers(ok(201, _WRITTEN, FHIR_RESOURCE), refusals(*BODY, *WRITE)))
async def create_consent(request: Request, services: ServicesDep) -> Response:
    ctx = get_write_context(request, services, "create")
    read = False
    try:
        fmt = _answerable(request)
        _r4_write(request)
        if "if-none-exist" in request.headers:
            # ignored, a retried create made a second active Consent, which outlived the withdrawal
            # of the first: refused, as conditional create is not claimed (CapabilityStatement)
            raise NotSupported("conditional create (If-None-Exist) is not supported: each POST creates a Consent; "
                               "search Consent?patient:identifier=… first to find one recorded before")
        async with _json_body(request, services, 10 * 1024 * 1024) as resource:
            read = True  # from here the service audits its refusals
            stored = await run_in_threadpool(services.consents.create, resource, ctx)
    except AdapterError as exc:
        if not read:  # refused before the body was read as a Consent: audited as its other refusals
            await run_in_threadpool(services.consents.audit_unread, ctx, "create", exc)
        raise
    return _written(request, services, stored, 201, fmt)


@router.put("/Consent/{id}", openapi_extra=_CONSENT_BODY,
            responses=answers(ok(200, _WRITTEN, FHIR_RESOURCE), refusals(*BODY, *WRITE, 405, 409, 412)))
async def update_consent(id: str, request: Request, services: ServicesDep,
                         if_match: Annotated[str | None, Header()] = None) -> Response:
    ctx = get_write_context(request, services, "update")
    read = False
    try:
        fmt = _answerable(request)
        _r4_write(request)
        expected = _if_match_versions(if_match)
        async with _json_body(request, services, 10 * 1024 * 1024) as resource:
            read = True  # from here the service audits its refusals
            stored = await run_in_threadpool(services.consents.update, id, resource, ctx, expected)
    except AdapterError as exc:
        if not read:  # refused before the body was read as a Consent (a withdrawal too): audited
            await run_in_threadpool(services.consents.audit_unread, ctx, "update", exc, id)
        raise
    return _written(request, services, stored, 200, fmt)


def _if_match_versions(if_match: str | None) -> frozenset[str] | None:
    """The version ids an ``If-Match`` accepts (RFC 9110 13.1.1: ``*`` or a list of entity tags;
    FHIR's are weak, ``W/"<versionId>"``; a read's may name its labels too, ``W/"<versionId>.<labels>"``
    (:func:`_etag`): an update is made to a version, so it is its version that is compared);
    None when any version will do (no header, or ``*``).
    A version id is an ``id`` (datatypes.html#id), compared as a string: ``W/"01"`` names no
    version of the adapter's ("1", "2"…), so it accepts none, not version 1."""
    if if_match is None or not if_match.strip() or if_match.strip() == "*":
        return None
    versions = set()
    for tag in if_match.split(","):
        quoted = tag.strip().removeprefix("W/")
        version, dot, labels = quoted[1:-1].partition(".")
        if (len(quoted) < 3 or quoted[0] != '"' or quoted[-1] != '"' or not is_digits(version)
                or (dot and not _RELEASE_TAG.fullmatch(labels))):
            # a header that cannot be parsed: the request is not understood (400), as a search
            # parameter's value is; 422 is for a body understood and not processable
            raise InvalidQuery("If-Match takes ETags W/\"<version>\" (a list of them, or *)", expression="If-Match")
        versions.add(version)
    return frozenset(versions)


@router.get("/{resource_type}/{id}", responses=answers(_READ_ANSWER, _NOT_MODIFIED, refusals(*READ_ONE, *INVALID, 412)))
async def read(resource_type: str, id: str, request: Request, reader: ReaderDep, services: ServicesDep,
               accept: Annotated[str | None, Header()] = None,
               format_: Annotated[str | None, Query(alias="_format")] = None) -> Response:
    if id == "_history":  # history-type: no resource has that id (FHIR ids take no "_")
        raise NotSupported(f"history of a resource type is not supported: ask for a resource's own, "
                           f"{resource_type[:40]}/<id>/_history", expression="_history")
    return await _read(request, resource_type, id, reader, accept, format_=format_,
                       fhir_base=_fhir_base(request, services),
                       how=_read_subsetting(request),
                       conditions=_Conditions.of(request))


def _read_subsetting(request: Request) -> Subsetting:
    """A read's ``_summary``/``_elements``; ``_summary=count`` (the total of a search,
    search.html#summary) asks a read for nothing it can answer: 400, as another value is."""
    params = list(request.query_params.multi_items())
    if ("_summary", "count") in params:
        raise InvalidQuery("_summary=count is a search's (the number of matches): a read answers one resource",
                           expression="_summary")
    return parse_subsetting(params)


@router.get("/{resource_type}/{id}/_history/{vid}",
            responses=answers(_READ_ANSWER, _NOT_MODIFIED, refusals(*READ_ONE, *INVALID, 412)))
async def vread(resource_type: str, id: str, vid: str, request: Request, reader: ReaderDep,
                services: ServicesDep, accept: Annotated[str | None, Header()] = None,
                format_: Annotated[str | None, Query(alias="_format")] = None) -> Response:
    """vread: the version-specific URL every Location and transaction-response location names.
    Binary and the records are never updated (their one version is the current one); a Consent's
    past versions are served from its history, under the decision a read gets now."""
    if not is_digits(vid) or len(vid) > 9 or vid != str(int(vid)):  # an id, as a string: "01" is not "1"
        raise NotFound(f"{resource_type[:40]}/{id[:64]} has no version {vid[:20]}")
    return await _read(request, resource_type, id, reader, accept, int(vid), format_=format_,
                       fhir_base=_fhir_base(request, services), how=_read_subsetting(request),
                       conditions=_Conditions.of(request))


#: The parameters a history-instance takes (http.html#history): ``_cursor`` names a page of its
#: links (adapter.services.history_paging); ``_offset``, a page by position (the links of old
#: answers), is still honoured.
_HISTORY_PARAMS = frozenset({"_count", "_offset", CURSOR_PARAM, "_since", "_format", "_pretty", "_summary",
                             "_elements"})


@router.get("/{resource_type}/{id}/_history",
            responses=answers(ok(200, "a history Bundle", FHIR_BUNDLE), refusals(*READ_ONE, *INVALID)))
async def history_instance(resource_type: str, id: str, request: Request, reader: ReaderDep, services: ServicesDep,
                           accept: Annotated[str | None, Header()] = None,
                           format_: Annotated[str | None, Query(alias="_format")] = None) -> Response:
    """history-instance: every version of a resource, newest first (a Consent's purposes added
    and withdrawn; a record's one version), under the decision a read gets now; ``_count``
    and the ``next`` link page through a long history, keyset pages of the history as the
    first page found it (adapter.services.history_paging): a version written meanwhile is not
    shown twice."""
    version, fmt = _negotiate(request, accept, format_)
    if resource_type not in R4_TYPES:
        raise UnsupportedResourceType(f"{resource_type[:40]} is not served here")
    if resource_type == "Binary":  # bytes, never updated: read or vread it
        raise NotSupported("history of Binary is not served here")
    _no_media_in_r5(resource_type, version)
    params = list(request.query_params.multi_items())
    if _lenient(request.headers.get("prefer")):  # unknown ones left out, as a search does; the links say so
        params = [(name, value) for name, value in params if name in _HISTORY_PARAMS]
    how = parse_subsetting(params)
    count, offset, since, token = DEFAULT_COUNT, 0, None, None
    for name, value in params:
        if name in ("_count", "_offset", CURSOR_PARAM) and sum(k == name for k, _ in params) > 1:
            raise InvalidQuery(f"{name} is given once", expression=name)
        if name == "_count":
            count = page_param(name, value, MAX_COUNT)
        elif name == "_offset":
            offset = page_param(name, value, 10**9)
        elif name == CURSOR_PARAM:
            token = value
        elif name == "_since":  # an instant; a coarser date counts from its start
            if value[:2].isalpha():
                raise InvalidQuery("_since takes an instant, e.g. 2026-11-26T10:00:00Z", expression="_since")
            since = parse_date_param(value).start
        elif name not in _HISTORY_PARAMS:
            raise NotSupported(f"history takes _since, _count, _summary and _elements; not {name[:40]}",
                               expression=name[:40])
    if ("_summary", "count") in params:  # the total only, as a search (search.html#summary)
        count = 0
    cursor = None
    if token is not None:  # a page a link names: of this resource (as this view names it) and _since
        if offset:
            raise InvalidQuery(f"{CURSOR_PARAM} names the page: _offset cannot be given with it", expression="_offset")
        cursor = services.search_pages.open_history_cursor(f"{resource_type}/{id}", token)
        if cursor.query != _query_digest(params):
            raise InvalidQuery(f"this {CURSOR_PARAM} link pages another history (its _since was changed): follow "
                               "the links of a history answer as they are", expression=CURSOR_PARAM)

    result = await _as_r5_photo_too(
        lambda rt: reader.read_history(rt, id, offset=offset, count=count, since=since, cursor=cursor),
        resource_type, version, reader, id)
    params = _count_used(params)
    url = absolute(request, services, f"fhir/{resource_type}/{id}/_history")

    def link(link_params: list[tuple[str, str]]) -> str:
        return f"{url}?{urlencode(link_params)}" if link_params else url

    pages = _paging_links(link, params, result.paging,
                          partial(services.search_pages.seal_history_cursor, f"{resource_type}/{id}"))
    fhir_base = _fhir_base(request, services)
    bundle = history_bundle([subset(_versioned(r, version, fhir_base), how, fhir_version=version) for r in result.resources],
                            total=result.total, self_url=link(params), base_url=fhir_base, **pages)
    return _out(bundle, version, headers=_glass_headers(result.decision), fmt=fmt)


async def _read(request: Request, resource_type: str, id: str, reader: Any, accept: str | None,
                version_id: int | None = None, *, format_: str | None = None, fhir_base: str,
                how: Subsetting = WHOLE, conditions: _Conditions | None = None) -> Response:
    """A read or vread; ``how``: the _summary/_elements cut of a FHIR JSON answer (the image
    bytes of a Binary are never cut); ``conditions``: a conditional read (http.html#cread; RFC
    9110 13), answered 304 or 412 after the decision as any read (:meth:`_Conditions.answer`); a 412
    sends nothing, so the reader checks If-Match before it audits (:meth:`_Conditions.check_match`)."""
    conditions = conditions or _Conditions()
    version, fmt = _negotiate(request, accept, format_, binary=resource_type == "Binary")
    answering = partial(_answering, conditions, head=asked_as_head(request.scope), vread=version_id is not None)
    if resource_type == "Binary":
        if version_id is not None:
            await run_in_threadpool(reader.check_binary_version, id, version_id)
        if not format_is_fhir(format_) and wants_dicom(accept):
            # the record's DICOM object, one application/dicom body, under the same decision
            dicom = await run_in_threadpool(reader.read_binary_dicom, id)
            return Response(content=dicom.data, media_type="application/dicom",
                            headers=_glass_headers(dicom.decision))
        answerable = None if format_is_fhir(format_) else partial(binary_answer, accept)  # 406 audited as such
        # a read (not a vread) is IHE MHD ITI-68 when the Binary is a DocumentReference's document
        content = await run_in_threadpool(partial(reader.read_binary, id, answerable=answerable,
                                                  precondition=answering,
                                                  retrieve=retrieve_document(fhir_base) if version_id is None
                                                  else None))
        validators, not_modified = _validated(conditions, content.resource, content.decision, content.relabelled,
                                              vread=version_id is not None)
        headers = {**_glass_headers(content.decision), **validators}
        if not_modified:
            return Response(status_code=304, headers=headers)
        if format_is_fhir(format_) or binary_answer(accept, content.content_type) == "resource":
            return _out(subset(_versioned(content.resource, version, fhir_base), how, fhir_version=version), version,
                        headers=headers, fmt=fmt)
        return Response(content=content.data, media_type=content.content_type, headers=headers)
    if resource_type not in R4_TYPES:
        raise UnsupportedResourceType(f"{resource_type[:40]} is not served here")
    _no_media_in_r5(resource_type, version)

    result = await _as_r5_photo_too(
        lambda rt: reader.read(rt, id, precondition=answering) if version_id is None
        else reader.read_version(rt, id, version_id, precondition=answering),
        resource_type, version, reader, id)
    validators, not_modified = _validated(conditions, result.resource, result.decision, result.relabelled,
                                          vread=version_id is not None)
    headers = {**_glass_headers(result.decision), **validators}
    if not_modified:
        return Response(status_code=304, headers=headers)
    return _out(subset(_versioned(result.resource, version, fhir_base), how, fhir_version=version), version,
                headers=headers, fmt=fmt)


def _answering(conditions: _Conditions, resource: dict[str, Any], decision: Decision, relabelled: datetime | None,
               *, head: bool, vread: bool) -> str | None:
    """The read's answer as the reader audits it (adapter.services.access.Answering): its
    If-Match checked (412: nothing sent, :meth:`_Conditions.check_match`), then what the answer
    leaves out: a 304 (:func:`_validated`, as the answer decides it) or a HEAD sends no body, and
    the trail says so (review dpo F6: a 200, a 304 and a HEAD left the same event); None for a
    whole answer."""
    conditions.check_match(resource)
    _, not_modified = _validated(conditions, resource, decision, relabelled, vread=vread)
    if not_modified:
        return f"{'HEAD ' if head else ''}answered 304 Not Modified: the client's copy is current, no body sent"
    return "HEAD answered: headers only, no body sent" if head else None


async def _as_r5_photo_too(load: Callable[[str], Any], resource_type: str, version: str, reader: Any,
                           id: str) -> Any:
    """``load(resource_type)`` in the thread pool; for an R5 reader a DocumentReference that is
    not one may be a photo, which R5 knows as the DocumentReference of its Media's id: which one
    ``id`` is, is looked up first, so that one read is made and audited (a read that found
    nothing is audited too: not a first try's miss before the photo is found). A 404 of the photo
    (a restricted view's id of one it may not read, a version it does not have) names the
    DocumentReference asked for, as one of an id that names nothing does: not the Media it is."""
    if version == "5" and resource_type == "DocumentReference":
        stored_type = await run_in_threadpool(reader.r5_document_type, id)
        try:
            return await run_in_threadpool(load, stored_type)
        except NotFound as exc:
            if stored_type == "DocumentReference":
                raise
            raise NotFound(exc.diagnostics.replace(f"Media/{id}", f"DocumentReference/{id}", 1)) from None
    return await run_in_threadpool(load, resource_type)


def _no_media_in_r5(resource_type: str, version: str, hint: str = "photos are DocumentReference in R5") -> None:
    """An R5 reader asking for Media: R5 has none (a photo is the DocumentReference of its id)."""
    if version == "5" and resource_type == "Media":
        raise NotFound(f"R5 has no Media; {hint}")


@dataclasses.dataclass(frozen=True)
class _Conditions:
    """A read's preconditions (RFC 9110 13.1): If-Match, If-None-Match, If-Modified-Since."""

    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: str | None = None

    @classmethod
    def of(cls, request: Request) -> _Conditions:
        headers = request.headers
        return cls(headers.get("if-match"), headers.get("if-none-match"), headers.get("if-modified-since"))

    def check_match(self, resource: dict[str, Any]) -> None:
        """PreconditionFailed (412) when If-Match names none of the ETag of ``resource`` (the
        version read; RFC 9110 13.1.1, evaluated first: 13.2.2). The reader calls it before it
        audits the read, so a 412 is audited as a read that sent nothing (outcome 4), not as a
        disclosure; a 304 is one (the client's copy is confirmed current: outcome 0)."""
        if self.if_match is None:
            return
        version = str((resource.get("meta") or {}).get("versionId") or "")
        accepted = _if_match_versions(self.if_match)
        if accepted is not None and version not in accepted:
            raise PreconditionFailed(f"If-Match names {self.if_match.strip()[:60]}; the version read is "
                                     f"W/\"{version}\"")

    def answer(self, resource: dict[str, Any], *, vread: bool = False, relabelled: datetime | None = None,
               whole: bool = True, etag: str | None = None, plain: bool = True) -> bool:
        """Whether the read of ``resource`` (the version selected: the current one, or the one a
        ``vread`` names) is answered 304 Not Modified; If-Match is checked first (RFC 9110 13.2.2:
        :meth:`check_match`, again here, should a reader not have). If-None-Match (13.1.2, weak
        comparison) names its ETag; without it, If-Modified-Since (13.1.3) is at or after its
        modification (an unreadable date is disregarded, as the RFC says).

        If-Modified-Since has whole seconds, as Last-Modified has, and two versions of a Consent
        may be written within one second: compared by the second, the later would be answered
        "not modified" to a client holding the earlier (review finding: a withdrawal, so). So the
        second is enough only where no other version can be held under that URL: a version URL
        (vread: it always names the same content) and a resource never updated (version 1: all
        records and Binaries); for a later version of a read ``meta.lastUpdated`` is compared
        whole, 304 only when it is at or before the instant given (when in doubt, 200: never a
        304 for a change the client has not seen; If-None-Match has no such doubt).

        ``etag``: the ETag the answer sends (:func:`_etag`), which If-None-Match names to get a
        304, whatever Consent changed since that did not change the representation (FHIR REST
        review finding 1: every Consent change of the patient answered 200 to the ETag the
        server still sent). ``plain``: whether ``W/"<versionId>"``, which a FHIR client may
        build from meta.versionId, names the representation too: always where the ETag is that
        (nothing shown changes without a new version); where the ETag names the labels as well,
        only in the whole-record view and when no Consent that may apply changed since the
        version (``relabelled`` None): the version's representation is then the one served since
        it was written. Not in a restricted view (only a Consent read there names its labels),
        whose 304 or 200 would tell that some Consent of the patient changed.

        ``relabelled``: when a Consent that may apply changed after the version (the reader's
        ``relabelled``, adapter.services.relabelling): what is shown may have changed with no
        new version, so If-Modified-Since must be at or after that change, whole.

        ``whole`` False: the view shows lastUpdated cut to its day (the pseudonymised one,
        adapter.mapping.views), which cannot tell two versions of one day apart: If-Modified-Since
        then answers 304 only where the second was enough (a vread, version 1), and never after
        a relabelling (whose instant a 304 or 200 would tell to the second)."""
        meta = resource.get("meta") or {}
        version = str(meta.get("versionId") or "")
        self.check_match(resource)
        if self.if_none_match:
            if not version:
                return False
            tags = {t.strip().removeprefix("W/") for t in self.if_none_match.split(",")}
            current = (etag or f'W/"{version}"').removeprefix("W/")
            return "*" in tags or current in tags or (plain and f'"{version}"' in tags)
        if not self.if_modified_since:
            return False
        try:
            since = parsedate_to_datetime(self.if_modified_since)
            updated = datetime.fromisoformat(str(meta.get("lastUpdated")))
        except (TypeError, ValueError, IndexError, OverflowError):  # a year past any datetime: unreadable too
            return False
        if since.tzinfo is None or updated.tzinfo is None:
            return False
        if not whole and relabelled is not None:
            return False
        if vread or version == "1":
            updated = updated.replace(microsecond=0)
        elif not whole:
            return False
        return updated <= since and (relabelled is None or relabelled <= since)


#: What an ETag names of a read's labels besides its version (:func:`release_tag`).
_RELEASE_TAG = re.compile(r"[0-9a-f]{12}", re.ASCII)


def release_tag(resource: dict[str, Any]) -> str:
    """What a read shows that may change with the patient's Consents and no new version, as 12
    hex digits of a SHA-256: its ``meta.security`` (the purposes the Consents permit, in the
    whole-record view) and a Consent's ``provision`` (a restricted view shows the records it
    names that the purpose is released: adapter.mapping.views)."""
    shown = {"security": (resource.get("meta") or {}).get("security"), "provision": resource.get("provision")}
    text = json.dumps(shown, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


def _shows_consents(decision: Decision, resource: dict[str, Any]) -> bool:
    """Whether the representation read under ``decision`` depends on the patient's Consents
    beyond its version: every resource in the whole-record view (its labels list what they
    permit), a Consent in any view; not a record in a restricted view, whose labels name the
    purpose served only (adapter.mapping.views.security_labels)."""
    return decision.view is View.FULL or resource.get("resourceType") == "Consent"


def _validated(conditions: _Conditions, resource: dict[str, Any], decision: Decision,
               relabelled: datetime | None, *, vread: bool) -> tuple[dict[str, str], bool]:
    """The validator headers of a read of ``resource`` (:func:`_etag`) and whether the read is
    answered 304 (:meth:`_Conditions.answer`)."""
    whole = decision.view is not View.PSEUDONYMISED
    labelled = _shows_consents(decision, resource)
    validators = _etag(resource, relabelled, whole=whole, labelled=labelled)
    plain = not labelled or (decision.view is View.FULL and relabelled is None)
    return validators, conditions.answer(resource, vread=vread, relabelled=relabelled, whole=whole,
                                         etag=validators.get("ETag"), plain=plain)


def _etag(resource: dict[str, Any], relabelled: datetime | None = None, *, whole: bool = True,
          labelled: bool = False) -> dict[str, str]:
    """The validators of a read (FHIR http.html#read, #versioning): ETag W/"<meta.versionId>"
    and Last-Modified, meta.lastUpdated as an HTTP date; never later than now (RFC 9110 8.8.2.1:
    a modification time in the future by the server's clock is replaced by the message's date,
    and the store may stamp a write a millisecond ahead of the clock, adapter.store.sql).

    ``labelled`` (a representation that depends on the patient's Consents, :func:`_shows_consents`):
    the ETag is W/"<versionId>.<release_tag>", so it changes whenever the labels served do, and
    only then (RFC 9110 8.8.1: a weak validator is shared only by semantically equivalent
    representations; FHIR REST review finding 1: W/"<versionId>" kept while the labels changed
    could not be honoured after any Consent change). If-Match takes it or W/"<versionId>"
    (:func:`_if_match_versions`).

    ``relabelled`` (a Consent that may apply changed after the version, :meth:`_Conditions.answer`):
    Last-Modified is that change, rounded up to its next second (If-Modified-Since compares it
    whole, so the second it began in would never match; not later than now, which in the same
    second gives one a change can still follow: not matched either). None in a view that
    shows no lastUpdated (the de-identified one): the header does not show it either. ``whole``
    False (the pseudonymised view, which shows the adapter's instants to the day): Last-Modified
    is the UTC midnight of that day, not the relabelling's second."""
    meta = resource.get("meta") or {}
    out = {}
    if meta.get("versionId"):
        out["ETag"] = f'W/"{meta["versionId"]}.{release_tag(resource)}"' if labelled else f'W/"{meta["versionId"]}"'
    try:
        updated = datetime.fromisoformat(str(meta.get("lastUpdated")))
    except ValueError:
        return out
    if updated.tzinfo is not None:
        modified = updated.astimezone(UTC)
        if relabelled is not None:
            second = relabelled.astimezone(UTC).replace(microsecond=0)
            modified = max(modified, second if second == relabelled else second + timedelta(seconds=1))
        modified = min(modified, datetime.now(UTC))
        if not whole:
            modified = modified.replace(hour=0, minute=0, second=0, microsecond=0)
        out["Last-Modified"] = format_datetime(modified, usegmt=True)
    return out


#: A form-encoded search body (POST _search) holds parameters, not documents.
SEARCH_BODY_LIMIT = 64 * 1024


@router.get("/{resource_type}", responses=answers(ok(200, "a searchset Bundle", FHIR_BUNDLE),
                                                  refusals(*READ_ONE, 410, *INVALID)))
async def search(resource_type: str, request: Request, reader: ReaderDep, services: ServicesDep,
                 accept: Annotated[str | None, Header()] = None) -> Response:
    if resource_type == "_history":  # history-system: not a resource type
        raise NotSupported("history of the whole server is not supported: ask for a resource's own, "
                           "<type>/<id>/_history", expression="_history")
    params = list(request.query_params.multi_items())
    if any(k == PAGE_PARAM for k, _ in params):  # a sealed link of a search by POST
        opened = _opened(resource_type, params, services)
        # the token alone says nothing to a reader of the audit trail: the search it holds is added
        _audit_search_as(reader, urlencode(opened).encode())
        return await _search(resource_type, request, reader, services, accept, opened, sealed=True)
    return await _search(resource_type, request, reader, services, accept, params)


def _audit_search_as(reader: Any, search: bytes) -> None:
    """The search the AuditEvent records (IHE BALP Query, entity[query]) is the request line and,
    after a blank line, ``search``: the parameters the request line does not show (the body of a
    search by POST, the search a sealed link holds)."""
    reader.ctx = dataclasses.replace(reader.ctx, query=(reader.ctx.query or b"") + b"\n\n" + search)


def _opened(resource_type: str, params: list[tuple[str, str]], services: Any) -> list[tuple[str, str]]:
    """The search a sealed link (``_page``) holds; with it only ``_format`` may be given, which
    overrides the sealed one."""
    pages = [v for k, v in params if k == PAGE_PARAM]
    others = [k for k, _ in params if k not in (PAGE_PARAM, "_format")]
    if len(pages) != 1 or others:
        raise InvalidQuery(f"a {PAGE_PARAM} link is followed as it was given: one {PAGE_PARAM} and no other "
                           f"parameter but _format", expression=PAGE_PARAM)
    opened = services.search_pages.open(resource_type, pages[0])
    formats = [(k, v) for k, v in params if k == "_format"]
    return [(k, v) for k, v in opened if not (formats and k == "_format")] + formats


@router.post("/{resource_type}/_search",
             responses=answers(ok(200, "a searchset Bundle", FHIR_BUNDLE), refusals(*READ_ONE, *BODY)),
             openapi_extra=request_body({FORM: {"type": "object", "additionalProperties": {"type": "string"}}},
                                        "the search parameters"))
async def search_by_post(resource_type: str, request: Request, reader: ReaderDep, services: ServicesDep,
                         accept: Annotated[str | None, Header()] = None) -> Response:
    """Search with the parameters in an application/x-www-form-urlencoded body (and any in the
    URL, combined), as FHIR's search by POST: a patient identifier then stays out of the URLs
    that proxies and servers log. The links of the answer are GET URLs holding the search sealed
    (``?_page=``, adapter.services.search_pages), so following them keeps it out too.

    A request with no body needs no Content-Type: the URL's parameters are the search (the IHE
    MHD ITI-67 example, 2:3.67.4.1.2.3.2, POSTs ``DocumentReference/_search?<params>`` so)."""
    form_type = "application/x-www-form-urlencoded"
    refusal = f"a search by POST takes {form_type} parameters"
    too_large = f"the search parameters are longer than {SEARCH_BODY_LIMIT} bytes"
    if "content-type" in request.headers:
        body = await _body(request, (form_type,), refusal, SEARCH_BODY_LIMIT, too_large)
    elif await _body_is_empty(request):
        body = b""
    else:  # a body of a type not declared
        raise UnsupportedMediaType(refusal)
    try:
        form = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(body),
                         max_num_fields=1000)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidQuery("the body is not application/x-www-form-urlencoded search parameters") from exc
    params = list(request.query_params.multi_items()) + form
    if any(k == PAGE_PARAM for k, _ in params):
        raise InvalidQuery(f"{PAGE_PARAM} is a link to follow with GET", expression=PAGE_PARAM)
    _audit_search_as(reader, body)
    return await _search(resource_type, request, reader, services, accept, params, sealed=True)


async def _body_is_empty(request: Request) -> bool:
    """Whether the request has no body (reading at most one chunk of it)."""
    async for chunk in request.stream():
        if chunk:
            return False
    return True


def _count_used(params: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``params`` with a ``_count`` above MAX_COUNT (already checked to be a whole number) as the
    page size used: the self link states the parameters the server actually used (search.html
    "the server SHALL return the parameters that were actually used"), so a client sees its
    page was made smaller, and the next link asks for what it will get."""
    return [(k, str(MAX_COUNT)) if k == "_count" and int(v[:12]) > MAX_COUNT else (k, v) for k, v in params]


def _paging_links(link: Callable[[list[tuple[str, str]]], str], params: list[tuple[str, str]],
                  paging: SearchPaging | HistoryPaging | None, seal: Callable[[Any], str]) -> dict[str, str | None]:
    """The paging links of a search or history page (http.html#paging): the page's ``params``
    with the cursor of the page each names, sealed by ``seal`` (adapter.services.search_pages,
    bound to the resource type searched or the resource whose history it is), in place of its
    own ``_cursor`` or ``_offset``: ``first`` (the first page of the same snapshot), ``next``
    when more follow, ``previous`` when some precede (adapter.services.search_paging,
    adapter.services.history_paging); none without ``paging`` (``_count=0``: the total only)."""
    pages: dict[str, str | None] = {"next_url": None, "first_url": None, "previous_url": None}
    if paging is None:
        return pages
    kept = [(k, v) for k, v in params if k not in ("_offset", CURSOR_PARAM)]
    query = _query_digest(kept)
    for name, cursor in (("first_url", paging.first), ("next_url", paging.next), ("previous_url", paging.previous)):
        if cursor is not None:
            pages[name] = link(kept + [(CURSOR_PARAM, seal(dataclasses.replace(cursor, query=query)))])
    return pages


#: What a paging link's cursor does not bind: where the page starts and how it is shown.
_NOT_THE_SEARCH = frozenset({"_offset", CURSOR_PARAM, "_count", "_format", "_summary", "_elements", "_pretty"})


def _query_digest(params: list[tuple[str, str]]) -> str:
    """The search ``params`` name, as a cursor binds it: its filters, order, includes and total,
    in any order of the parameters; not the page's size, place or format."""
    search = sorted((k, v) for k, v in params if k not in _NOT_THE_SEARCH)
    return hashlib.sha256(json.dumps(search, separators=(",", ":")).encode()).hexdigest()[:32]


def _lenient(prefer: str | None) -> bool:
    """Prefer: handling=lenient (RFC 7240; FHIR search.html#errors)."""
    preferences = (p.strip().lower().replace(" ", "") for item in (prefer or "").split(",") for p in item.split(";"))
    return "handling=lenient" in preferences


async def _search(resource_type: str, request: Request, reader: Any, services: Any, accept: str | None,
                  params: list[tuple[str, str]], *, sealed: bool = False) -> Response:
    """A search; ``sealed``: its links hold the parameters sealed (a search by POST, or a page
    of one)."""
    format_ = next((v for k, v in params if k == "_format"), None)
    version, fmt = _negotiate(request, accept, format_)
    if resource_type not in R4_TYPES:
        raise UnsupportedResourceType(f"{resource_type[:40]} is not served here")
    if resource_type == "Binary":  # read it (ITI-68), by the reference its record holds
        raise NotSupported("search on Binary is not supported")
    _no_media_in_r5(resource_type, version, "search DocumentReference")
    req = parse_search(resource_type, params, lenient=_lenient(request.headers.get("prefer")), r5=version == "5",
                       base_url=_fhir_base(request, services))
    if req.cursor_token is not None:  # a page a link names (adapter.services.search_paging)
        req = dataclasses.replace(req, cursor=services.search_pages.open_cursor(resource_type, req.cursor_token))
    how = parse_subsetting(params)
    if req.ignored:  # the links name only the parameters the search used (search.html#errors)
        params = [(k, v) for k, v in params if k[:40] not in req.ignored and f"{k[:40]}={v[:60]}" not in req.ignored]
    if req.cursor is not None and req.cursor.query != _query_digest(params):
        raise InvalidQuery(f"this {CURSOR_PARAM} link pages another search (its filters or order were changed): "
                           "follow the links of a search answer as they are, or search again", expression=CURSOR_PARAM)
    params = _count_used(params)
    types = ["DocumentReference", "Media"] if version == "5" and resource_type == "DocumentReference" \
        else [resource_type]
    if resource_type == "DocumentReference" and version == "4":
        # IHE MHD ITI-67 Find Document References, audited in its shape; an R5 reader's search is
        # no MHD 4.2 transaction (MHD's are R4's) and stays a BALP search
        reader.ctx = dataclasses.replace(reader.ctx, mhd=find_document_references(_fhir_base(request, services)))
    result = await run_in_threadpool(reader.search, types, req)
    def link(link_params: list[tuple[str, str]]) -> str:
        if sealed:
            link_params = [(PAGE_PARAM, services.search_pages.seal(resource_type, link_params))]
        return f"{absolute(request, services, 'fhir/' + resource_type)}?{urlencode(link_params)}"

    pages = _paging_links(link, params, result.paging if req.count else None,
                          partial(services.search_pages.seal_cursor, resource_type))
    fhir_base = _fhir_base(request, services)
    entries = [subset(_versioned(r, version, fhir_base), how, fhir_version=version) for r in result.resources]
    bundle = searchset(entries, total=result.total, self_url=link(params), **pages,
                       base_url=fhir_base, fhir_version=version,
                       included=[subset(_versioned(r, version, fhir_base), how, fhir_version=version) for r in result.included])
    if req.ignored:
        bundle.setdefault("entry", []).append(outcome_entry(
            operation_outcome("warning", "not-supported", f"parameters not supported, left out "
                              f"(Prefer: handling=lenient): {', '.join(req.ignored)}"), fhir_version=version))
    for withheld in result.withheld:  # to care only: why matches were left out (clinical-safety review 6)
        bundle.setdefault("entry", []).append(outcome_entry(
            operation_outcome("warning", "suppressed", withheld), fhir_version=version))
    if result.break_glass:
        said = "break-glass access: records shown under emergency access, audited"
        if result.overrode:
            said += f"; overrode what refuses care: {'; '.join(result.overrode)}"
        bundle.setdefault("entry", []).append(outcome_entry(
            information_outcome("suppressed", said, None), fhir_version=version))
    return _out(bundle, version, headers=break_glass_headers(result.break_glass, result.overrode), fmt=fmt)
