"""``GET /outbox`` and ``POST /outbox/requeue``: the forwarding outbox, for operations.
Operational data only: the SOP Instance UID, the destination, the status and the record's
logical id, never a patient identifier or a name.

The list is read as any read is, with a purpose of use (none: 403), and audited. An item pairs a
record with its original SOP Instance UID, which a de-identified view maps so that it cannot be
followed to the PACS: the record reference and the UID are shown only if the record is, in care's
full view, for that purpose (adapter.services.access.ScopedReader.shown_in_full; a record entered
in error: for records management only, who must correct its copies at the PACS); otherwise the
item says ``"withheld": true`` and keeps what names no one (id, destination, status, attempts,
times, the error without the PACS's Error Comment, which may quote patient data), so operations
still see, and can requeue, what failed.

A requeue has patients' objects disclosed to a PACS again: it states its purpose of use too (none:
403, unknown: 400), one of care or records management (RECORDMGT; another: 403,
adapter.consent.decide_outbox_requeue), and every requeue, refused or done, is audited: done, as
one BALP Update event naming the items requeued, their records and patients, with the request's
X-Request-Id, committed with the requeue (adapter.services.forwarding.OutboxService.requeue)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from adapter.api.deps import ReaderDep, ServicesDep, UpdateContextDep
from adapter.api.headers import break_glass_headers
from adapter.api.openapi import INVALID, JSON, READ, answers, ok, refusals
from adapter.errors import InvalidQuery
from adapter.services.forwarding import OUTBOX_STATUSES, OutboxEntry, without_error_comment

router = APIRouter()


def _instant(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _entry_json(entry: OutboxEntry, *, shown: bool) -> dict[str, Any]:
    item = entry.item
    return {
        "id": item.id,
        "sopInstanceUid": item.sop_instance_uid if shown else None,
        "destination": item.destination,
        "status": item.status,
        "attempts": item.attempts,
        "nextAttemptAt": _instant(item.next_attempt_at) if item.status == "pending" else None,
        "lastError": item.last_error if shown else without_error_comment(item.last_error),
        "record": {"reference": entry.record} if entry.record and shown else None,
        "created": _instant(item.created),
        "updated": _instant(item.updated),
        **({} if shown else {"withheld": True}),
    }


@router.get("/outbox", responses=answers(ok(200, "the outbox items, oldest first", {JSON: {"type": "array", "items": {
    "type": "object"}}}), refusals(*READ)))
async def list_outbox(services: ServicesDep, reader: ReaderDep, status: str | None = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    """Outbox items, oldest first; ``status`` one of pending, held, sent, failed, cancelled; the
    record and UID of an item only where the purpose of use may see the record in full (module
    docstring)."""
    if status is not None and status not in OUTBOX_STATUSES:
        raise InvalidQuery(f"status must be one of {', '.join(OUTBOX_STATUSES)}", expression="status")

    def listed() -> tuple[list[dict[str, Any]], dict[str, str]]:
        entries = services.outbox.list_entries(status=status, limit=limit)
        visible, glass, overrode = reader.shown_in_full([e.record for e in entries if e.record],
                                                        what="forwarding outbox")
        return [_entry_json(e, shown=e.record in visible) for e in entries], break_glass_headers(glass, overrode)

    body, headers = await run_in_threadpool(listed)
    return JSONResponse(body, headers=headers)


class RequeueRequest(BaseModel):
    """Which failed items to put back; none named: all of them."""

    model_config = ConfigDict(extra="forbid")

    # an id is the store's 64-bit key: a larger number overflowed the driver (a 500), now 422
    ids: list[Annotated[int, Field(ge=1, le=2**63 - 1)]] | None = Field(None, max_length=10_000,
                                                                        description="outbox item ids")
    destination: str | None = Field(None, max_length=200, description="AE@host:port as in ADAPTER_FORWARD_TO")


@router.post("/outbox/requeue", responses=answers(
    ok(200, "how many items were requeued", {JSON: {"type": "object", "properties": {"requeued": {"type": "integer"}}}}),
    refusals(400, 403, *INVALID, 503)))
async def requeue_outbox(services: ServicesDep, ctx: UpdateContextDep,
                         body: RequeueRequest | None = None) -> JSONResponse:
    """Failed items back to pending, due at once, attempts counted afresh, for care or records
    management, audited (module docstring; adapter.services.forwarding.OutboxService.requeue)."""
    wanted = body or RequeueRequest()
    count = await run_in_threadpool(services.outbox.requeue, ctx, ids=wanted.ids, destination=wanted.destination)
    return JSONResponse({"requeued": count})
