"""The FastAPI application factory: the only place (with routes/) that imports FastAPI."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adapter import __version__
from adapter.api.allowed_hosts import AllowedHosts, AllowedHostsMiddleware
from adapter.api.content_coding import ContentCodingMiddleware
from adapter.api.cross_site import CrossSiteWriteMiddleware
from adapter.api.forwarded import ForwardedForMiddleware
from adapter.api.head import HeadMiddleware
from adapter.api.headers import NoStoreMiddleware
from adapter.api.openapi import install_openapi, ok
from adapter.api.outcome import install_error_handlers
from adapter.api.request_id import RequestIdMiddleware
from adapter.api.request_limits import BodyTimeoutMiddleware
from adapter.api.routes import corrections, dicomweb, fhir, health, outbox, photos, wado_bulk, wado_uri
from adapter.api.stopping import CancelledRequestMiddleware
from adapter.api.trailing_slash import TrailingSlashMiddleware
from adapter.errors import StorageError
from adapter.metrics import CONTENT_TYPE, exposition
from adapter.services.registry import Services

log = logging.getLogger("adapter.api")

#: What a browser page may send (CORS) besides the safelisted headers: the purpose of use and
#: the FHIR/HTTP conditionals and preferences the API reads.
CORS_REQUEST_HEADERS = ("X-Purpose-Of-Use", "Authorization", "Content-Type", "Accept", "Prefer", "If-Match",
                        "If-None-Match", "Idempotency-Key", "X-Request-Id")
#: What it may read of an answer besides the safelisted ones.
CORS_EXPOSED_HEADERS = ("Location", "ETag", "Last-Modified", "X-Break-Glass", "Idempotent-Replayed", "X-Request-Id",
                        "Content-Location", "Warning")


def create_app(services: Services, *, owns_services: bool = True) -> FastAPI:
    """The FastAPI app over ``services``; it closes them at shutdown when it owns them."""
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_services:
            services.close()

    app = FastAPI(title="Clinical image adapter", version=__version__, lifespan=lifespan,
                  # Swagger UI loads its scripts from a public CDN into this origin: development only
                  docs_url="/docs" if services.settings.http_docs else None, redoc_url=None,
                  # never Starlette's 307 built from the Host header: adapter.api.trailing_slash
                  redirect_slashes=False)
    app.state.services = services
    install_error_handlers(app)
    install_openapi(app)
    app.add_middleware(TrailingSlashMiddleware)  # innermost: routed (and logged) without the slash
    app.add_middleware(HeadMiddleware)  # innermost: the other middlewares see HEAD
    app.add_middleware(CancelledRequestMiddleware)  # its 503 gets the headers of the ones outside it
    # a compressed request body, refused before a byte of it is read (RFC 9110 8.4.1, 15.5.16)
    app.add_middleware(ContentCodingMiddleware)
    hosts = AllowedHosts.of(services.settings)
    # inside NoStore: its refusals carry the headers every answer does; a simple POST needs no preflight
    app.add_middleware(CrossSiteWriteMiddleware, allowed_origins=services.settings.allowed_cors_origins, hosts=hosts)
    # a Host the adapter does not answer for (DNS rebinding), refused before anything else is read;
    # inside ForwardedFor, whose X-Forwarded-Proto from a trusted proxy sets the scheme
    app.add_middleware(AllowedHostsMiddleware, hosts=hosts)
    app.add_middleware(NoStoreMiddleware)
    app.add_middleware(BodyTimeoutMiddleware, seconds=services.settings.http_body_timeout,
                       min_rate=services.settings.http_body_min_rate)
    origins = services.settings.allowed_cors_origins
    if origins:  # outside the others: preflights are answered here, and refusals carry the headers too
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH"], allow_headers=list(CORS_REQUEST_HEADERS),
                           expose_headers=list(CORS_EXPOSED_HEADERS), max_age=600)
    # a trusted proxy's X-Forwarded-For, beside the TCP peer (uvicorn's handling is off: __main__)
    app.add_middleware(ForwardedForMiddleware, trusted=services.settings.trusted_proxy_networks)
    app.add_middleware(RequestIdMiddleware)  # outermost: every answer names its request, preflights too
    app.include_router(photos.router)
    app.include_router(fhir.router)
    app.include_router(corrections.router)
    app.include_router(outbox.router)
    app.include_router(dicomweb.router)
    app.include_router(wado_bulk.router)
    app.include_router(wado_uri.router)
    app.include_router(health.router)

    @app.get("/metrics", response_class=Response,
             responses=ok(200, "Prometheus metrics (text exposition format)", {"text/plain": {"type": "string"}}))
    async def metrics() -> Response:
        """Prometheus metrics (adapter.metrics): counts by route, purpose, outcome and status,
        the outbox by status and the data folder's free space; nothing about a patient."""
        body = await run_in_threadpool(exposition, await _outbox_counts(services), services.blobs.free_bytes,
                                       services.blobs.reserve_bytes)
        return Response(content=body, media_type=CONTENT_TYPE)

    return app


async def _outbox_counts(services: Services) -> Mapping[str, int] | None:
    """The outbox's counts for a scrape, or ``None`` when the database fails or does not answer
    within ADAPTER_DATABASE_CONNECT_TIMEOUT (a silent partition, a lock held): the scrape answers
    without them rather than failing, or outlasting Prometheus's scrape timeout, when the process's
    own counts matter most. A read that does not answer is left to finish in its thread, as
    readiness leaves its check."""
    seconds = services.settings.database_connect_timeout
    with anyio.move_on_after(seconds):
        try:
            return await anyio.to_thread.run_sync(services.store.outbox_counts, abandon_on_cancel=True)
        except StorageError as exc:
            log.warning("/metrics: the outbox was not counted, the record store failed (%s)", type(exc).__name__)
            return None
    log.warning("/metrics: the outbox was not counted, the record store did not answer within %g s", seconds)
    return None
