"""FastAPI dependencies: the services, the request context, the scoped reader."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Header, Request

from adapter.api.forwarded import forwarded_for_of
from adapter.api.negotiation import fhir_version
from adapter.api.request_id import client_request_id_of, own_request_id_of, request_id_of
from adapter.api.urls import absolute, base
from adapter.errors import Forbidden, NotAcceptable, PurposeOfUseMissing, UnknownPurposeOfUse
from adapter.mapping.audit_mhd import find_document_references, retrieve_document
from adapter.mapping.capability import R4_TYPES
from adapter.model.purpose import MhdTransaction, PurposeOfUse, RequestContext
from adapter.refusals import RefusalCode
from adapter.services.access import ScopedReader
from adapter.services.audit import DicomAudit
from adapter.services.purpose import parse_purpose_of_use
from adapter.services.registry import Services
from adapter.text import is_fhir_id


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _request_id(request: Request) -> str:
    """The id RequestIdMiddleware gave the request (the caller's X-Request-Id when a plain token)."""
    return request_id_of(request.scope)


def _peer(request: Request) -> str | None:
    """The TCP connection's peer (a proxy's address, behind one): the network access point an
    AuditEvent names (uvicorn's proxy headers are off: adapter.api.forwarded)."""
    return request.client.host if request.client else None


def _actor(request: Request) -> str:
    # Until OAuth2 tokens arrive, the caller is known only by its address: the one a trusted
    # proxy forwarded, with the proxy's, else the peer's
    peer, forwarded = _peer(request), forwarded_for_of(request.scope)
    if forwarded is not None:
        return f"client {forwarded} (forwarded by {peer})"
    return f"client {peer}" if peer else "client"


def purpose_header(request: Request) -> str | None:
    """The request's one ``X-Purpose-Of-Use``. Given more than once it is refused (400), not
    read first-wins: a caller's own header placed before the one a gateway adds would override
    the gateway's, break-glass included."""
    values = request.headers.getlist("x-purpose-of-use")
    if len(values) > 1:
        raise UnknownPurposeOfUse(f"X-Purpose-Of-Use is given {len(values)} times: a request states one purpose",
                                  expression="X-Purpose-Of-Use")
    return values[0] if values else None


def get_read_context(request: Request, services: ServicesDep, x_purpose_of_use: Annotated[str | None, Header(
        description="The purpose of use: a v3-ActReason code (TREAT) or system|code; once")] = None) -> RequestContext:
    """Every read states its purpose of use; none fails closed (403), unknown is 400.
    (``x_purpose_of_use`` puts the header in the OpenAPI description; :func:`purpose_header`
    reads it, every value of it.)"""
    try:
        purpose = parse_purpose_of_use(purpose_header(request), services.tables)
    except (PurposeOfUseMissing, UnknownPurposeOfUse) as exc:
        _audit_refused_purpose(request, services, exc)
        raise
    return _context(request, services, purpose, query=_request_line(request))


def _request_line(request: Request) -> bytes:
    """The method, path and query string as the client sent them (not decoded: what was asked,
    malformed or malicious parts included, as IHE BALP Query records a search)."""
    path: bytes = request.scope.get("raw_path") or request.scope["path"].encode()
    query: bytes = request.scope.get("query_string", b"")
    return request.method.encode() + b" " + path + (b"?" + query if query else b"")


_TYPE_BEFORE_ID = re.compile(r"/(\{resource_type\}|[A-Z][A-Za-z]*)/\{id\}")


def _named_resource(request: Request, route: str) -> str | None:
    """``Type/id`` of the resource the request's path names (``/fhir/Media/abc``, its
    ``_history``), as the caller sent it: a type served and a FHIR id, else None. Nothing is
    looked up: the caller learns nothing, and no record is read for a refused request."""
    found = _TYPE_BEFORE_ID.search(route)
    id = request.path_params.get("id")
    if found is None or not isinstance(id, str) or not is_fhir_id(id):
        return None
    resource_type = request.path_params.get("resource_type") if found[1] == "{resource_type}" else found[1]
    return f"{resource_type}/{id}" if resource_type in R4_TYPES else None


def _audit_refused_purpose(request: Request, services: Services,
                           exc: PurposeOfUseMissing | UnknownPurposeOfUse, interaction: str | None = None,
                           mhd: MhdTransaction | None = None, dicom: DicomAudit | None = None) -> None:
    """A read (or a write: its ``interaction``) refused for its purpose of use is a decision too:
    audited, naming the route (its template) and why, and what was asked as IHE BALP Read and
    Query name it: the resource the path names (Type/id, :func:`_named_resource`), or a
    search's request line (entity.query). A request that is an IHE MHD transaction (``mhd``, or
    a read's: :func:`_mhd_read`) is refused in that transaction's shape."""
    route = getattr(request.scope.get("route"), "path", None) or "(unmatched route)"
    if interaction is None:
        reads_one = any(name in request.path_params for name in ("id", "instance", "vid"))
        interaction = "read" if reads_one else "search-type"
        mhd = _mhd_read(request, services, route)
    named = _named_resource(request, route)
    services.auditor.record_refused_purpose(
        interaction=interaction, actor=_actor(request), request_id=own_request_id_of(request.scope),
        client_address=_peer(request), forwarded_for=forwarded_for_of(request.scope),
        client_request_id=client_request_id_of(request.scope),
        missing=isinstance(exc, PurposeOfUseMissing), reason=f"{request.method} {route}: {exc.diagnostics}",
        entities=[named] if named else [], query=_request_line(request) if interaction == "search-type" else None,
        mhd=mhd, server_url=base(request, services), dicom=dicom)


def get_update_context(request: Request, services: ServicesDep, x_purpose_of_use: Annotated[str | None, Header(
        description="The purpose of use: a v3-ActReason code (RECORDMGT, TREAT) or system|code; once")] = None
                       ) -> RequestContext:
    """An operation that changes what the adapter does with records (``POST /outbox/requeue``:
    patients' objects disclosed to a PACS again) states its purpose of use as a read does: none
    fails closed (403), unknown or repeated is 400, either audited as the update refused (BALP
    action U). Which purposes it permits is the service's decision."""
    try:
        try:
            purpose = parse_purpose_of_use(purpose_header(request), services.tables)
        except PurposeOfUseMissing as exc:
            raise PurposeOfUseMissing("this operation must state its purpose of use (X-Purpose-Of-Use: a "
                                      "v3-ActReason code such as RECORDMGT or TREAT)") from exc
    except (PurposeOfUseMissing, UnknownPurposeOfUse) as exc:
        _audit_refused_purpose(request, services, exc, "update")
        raise
    return _context(request, services, purpose)


#: The routes of IHE MHD's reads: ITI-67 searches DocumentReference (GET, or POST _search), ITI-68
#: GETs the Binary a DocumentReference's attachment.url names.
_SEARCH_ROUTES = frozenset({"/fhir/{resource_type}", "/fhir/{resource_type}/_search"})
_READ_ROUTE = "/fhir/{resource_type}/{id}"


def _mhd_read(request: Request, services: Services, route: str) -> MhdTransaction | None:
    """The IHE MHD transaction a read refused before anything was decided is: ITI-67, a search of
    DocumentReference by an R4 reader (an R5 one is no MHD 4.2 Document Consumer: its
    transactions are R4's); ITI-68, a GET of a Binary whose record is a DocumentReference.
    For that one the Binary's record type is looked up; nothing of it reaches the caller, and the
    event still names no record's patient: it only says which transaction was refused."""
    resource_type = request.path_params.get("resource_type")
    base = absolute(request, services, "fhir")
    if route in _SEARCH_ROUTES and resource_type == "DocumentReference":
        try:
            accepted = fhir_version(request.headers.get("accept"), request.query_params.get("_format"))
        except NotAcceptable:  # neither R4 nor R5: no Document Consumer's
            return None
        return find_document_references(base) if accepted == "4" else None
    id = request.path_params.get("id")
    if (route == _READ_ROUTE and resource_type == "Binary" and request.method in ("GET", "HEAD")
            and isinstance(id, str) and is_fhir_id(id)):
        stored = services.store.get("Binary", id)
        facts = stored.facts if stored is not None else None
        if facts is not None and facts.governed_by.startswith("DocumentReference/"):
            return retrieve_document(base)
    return None


def _context(request: Request, services: Services, purpose: PurposeOfUse, query: bytes | None = None,
             mhd: MhdTransaction | None = None) -> RequestContext:
    """The context of an HTTP request made for ``purpose``: its caller, address and request id,
    the adapter's base URL (and ``query``, a read's request line; ``mhd``, the IHE MHD
    transaction it is)."""
    return RequestContext(purpose=purpose, actor=_actor(request), request_id=_request_id(request),
                          client_address=_peer(request), forwarded_for=forwarded_for_of(request.scope),
                          own_request_id=own_request_id_of(request.scope), query=query, mhd=mhd,
                          server_url=base(request, services))


#: The purpose a write stating none is filed under: writes are made for care (README, "Before
#: you deploy"), so an ingest or a Consent written without a header is recorded as done for TREAT.
WRITE_PURPOSE_UNSTATED = PurposeOfUse("TREAT")


def get_write_context(request: Request, services: Services, interaction: str,
                      mhd: MhdTransaction | None = None, dicom: DicomAudit | None = None) -> RequestContext:
    """The context a write (a photo, a transaction, a Consent, STOW-RS: its ``interaction``,
    create or update) is made and audited under, once its ``X-Purpose-Of-Use`` is checked.

    Its purpose is the one the caller stated, so the AuditEvent's agent[user].purposeOfUse is the
    purpose asserted for the request (IHE BALP), and a break-glass write (BTG, ETREAT) shows as
    such; a write stating none is filed for care, TREAT (:data:`WRITE_PURPOSE_UNSTATED`). The
    purpose only names why the write was made: no consent decision of a write reads it (the
    ingest rules look at the photo's own consent statement and the patient's Consents, and
    nothing a write stores is read back through a decision), so recording it changes nothing
    that is stored or refused.

    Which purposes may write: one that sees less than the whole record (TRAIN, HRESCH and the
    other de-identified or pseudonymised purposes of mappings/purposes.yaml) is refused (403,
    audited): a caller a gateway marks as a trainer or a researcher could otherwise file photos
    under identified patients, or record for itself the Consent it then reads under. A write
    stating no purpose, or one seeing the whole record (care, break-glass, RECORDMGT, PATRQT),
    goes on; an unknown or repeated one is 400, as on a read. Called before the body is read,
    but for a transaction: POST /fhir reads its body to tell a transaction (checked) from a batch
    of reads (which states its purpose for reading). ``mhd``: the IHE MHD transaction the write
    is (ITI-65), whose shape its AuditEvents take, this refusal's too; ``dicom``: the DICOM audit
    message a refusal is (STOW-RS: DICOM Instances Transferred, as its other events)."""
    try:
        stated = purpose_header(request)
        if stated is None or not stated.strip():
            return _context(request, services, WRITE_PURPOSE_UNSTATED, mhd=mhd)
        purpose = parse_purpose_of_use(stated, services.tables)
    except UnknownPurposeOfUse as exc:  # audited as the write refused, as a read's refusal is
        _audit_refused_purpose(request, services, exc, interaction, mhd, dicom)
        raise
    ctx = _context(request, services, purpose, mhd=mhd)
    view = services.tables.purposes.codes[purpose.code].view
    if view == "full":
        return ctx
    reason = (f"a write is made for care: {purpose.code} sees records {view}, so a caller stating it files no "
              "photo, document or Consent")
    services.auditor.record(ctx, interaction=interaction, action="U" if interaction == "update" else "C",
                            decision=None, entities=[], patient=None, reason=reason, refused=True, dicom=dicom)
    raise Forbidden(reason, refusal=RefusalCode.PURPOSE_NOT_FOR_WRITE)


ReadContextDep = Annotated[RequestContext, Depends(get_read_context)]
UpdateContextDep = Annotated[RequestContext, Depends(get_update_context)]


def get_reader(ctx: ReadContextDep, services: ServicesDep) -> ScopedReader:
    return services.reader(ctx)


ReaderDep = Annotated[ScopedReader, Depends(get_reader)]
