"""``GET /health`` (liveness: the process answers) and ``GET /health/ready`` (readiness: the
database, the data folder and the DICOM SCP can take work; adapter.services.readiness), for
orchestrators and load balancers. Neither says anything about a patient."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from adapter import __version__
from adapter.api.deps import get_services
from adapter.api.openapi import JSON, answers, ok
from adapter.services.readiness import (
    DATABASE,
    DATABASE_ROOM,
    DICOM_LISTENER,
    FAIL,
    STORAGE,
    Check,
    Component,
    check_database,
    check_database_room,
    check_dicom_listener,
    check_storage,
    database_folder,
    health_document,
)

router = APIRouter()

#: application/health+json (draft-inadarei-api-health-check)
HEALTH_JSON = "application/health+json"
#: How long one check may take before it counts as failed (a database that does not answer
#: within it is not ready; its thread is left to finish on its own).
CHECK_TIMEOUT_SECONDS = 3.0


@router.get("/health", responses=ok(200, "the process answers", {JSON: {"type": "object"}}))
async def health() -> JSONResponse:
    """Liveness: the process serves HTTP. Nothing else is looked at (a database outage must
    not get a healthy process restarted)."""
    return JSONResponse({"status": "ok", "version": __version__})


async def _run(component: Component, check: Callable[[], Check]) -> Check:
    with anyio.move_on_after(CHECK_TIMEOUT_SECONDS):
        return await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    return component.check(FAIL, output=f"no answer within {CHECK_TIMEOUT_SECONDS:g} s")


#: draft-inadarei-api-health-check's document: status and checks.
_HEALTH = {HEALTH_JSON: {"type": "object", "required": ["status"],
                         "properties": {"status": {"type": "string", "enum": ["pass", "warn", "fail"]},
                                        "checks": {"type": "object"}}}}


@router.get("/health/ready", response_class=Response,
            responses=answers(ok(200, "ready: every check passes or warns", _HEALTH), ok(503, "a check fails", _HEALTH)))
async def ready(request: Request) -> Response:
    """Readiness: 200 when every check passes or only warns (the data folder is down to its
    reserve: reads go on, new images are refused), 503 when one fails (the SQLite database's disk
    has no room left for its writes, say); the checks in the body."""
    services = get_services(request)
    settings = services.settings
    planned: list[tuple[Component, Callable[[], Check]]] = [
        (DATABASE, partial(check_database, services.store)),
        (STORAGE, partial(check_storage, services.blobs, settings.max_upload_bytes)),
    ]
    folder = database_folder(settings.resolved_database_url)
    if folder is not None:  # the database writes where the adapter can look
        planned.append((DATABASE_ROOM, partial(check_database_room, folder)))
    if settings.dicom_enabled:
        planned.append((DICOM_LISTENER, partial(check_dicom_listener, settings.dicom_host, settings.dicom_port)))
    checks: list[Check | None] = [None] * len(planned)

    async def run(i: int) -> None:
        checks[i] = await _run(*planned[i])

    async with anyio.create_task_group() as group:  # at once: the answer waits for the slowest only
        for i in range(len(planned)):
            group.start_soon(run, i)
    body = health_document([c for c in checks if c is not None], version=__version__, now=services.now)
    return Response(json.dumps(body), status_code=503 if body["status"] == FAIL else 200, media_type=HEALTH_JSON)
