"""FastAPI dependencies: the services, the request context, the scoped reader."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from adapter.api.request_id import request_id_of
from adapter.model.purpose import PurposeOfUse, RequestContext
from adapter.services.access import ScopedReader
from adapter.services.purpose import parse_purpose_of_use
from adapter.services.registry import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def _request_id(request: Request) -> str:
    """The id RequestIdMiddleware gave the request (the caller's X-Request-Id when a plain token)."""
    return request_id_of(request.scope)


def _actor(request: Request) -> str:
    # Until OAuth2 tokens arrive, the caller is known only by its address.
    return f"client {request.client.host}" if request.client else "client"


def get_read_context(request: Request, services: ServicesDep,
                     x_purpose_of_use: Annotated[str | None, Header()] = None) -> RequestContext:
    """Every read states its purpose of use; none fails closed (403), unknown is 400."""
    purpose = parse_purpose_of_use(x_purpose_of_use, services.tables)
    return RequestContext(purpose=purpose, actor=_actor(request), request_id=_request_id(request),
                          client_address=request.client.host if request.client else None)


def get_write_context(request: Request) -> RequestContext:
    """Writes (ingest, consent changes) are done for care: purpose TREAT."""
    return RequestContext(purpose=PurposeOfUse("TREAT"), actor=_actor(request), request_id=_request_id(request),
                          client_address=request.client.host if request.client else None)


ReadContextDep = Annotated[RequestContext, Depends(get_read_context)]
WriteContextDep = Annotated[RequestContext, Depends(get_write_context)]


def get_reader(ctx: ReadContextDep, services: ServicesDep) -> ScopedReader:
    return services.reader(ctx)


ReaderDep = Annotated[ScopedReader, Depends(get_reader)]
