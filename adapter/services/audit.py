"""Every decision, allow or deny, becomes an IHE BALP-shaped AuditEvent in the store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from adapter.mapping.audit import audit_event
from adapter.metrics import DECISIONS
from adapter.model.decision import Decision
from adapter.model.photo import Identifier
from adapter.model.purpose import RequestContext
from adapter.store.port import RecordStore


class Auditor:
    def __init__(self, store: RecordStore, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now

    def event(self, ctx: RequestContext, *, interaction: str, action: str, permitted: bool,
              reason: str | None, entities: Sequence[str], patient: Identifier | None) -> dict[str, Any]:
        """Build (not store) an AuditEvent; ingest stores it in its own transaction."""
        return audit_event(
            interaction=interaction, action=action, outcome="0" if permitted else "4",
            outcome_desc=reason, recorded=self._now(), client_address=ctx.client_address,
            actor=ctx.actor, purpose=(ctx.purpose.system, ctx.purpose.code), request_id=ctx.request_id,
            entities=entities, patient=patient, query=None)

    def record(self, ctx: RequestContext, *, interaction: str, action: str, decision: Decision | None,
               entities: Sequence[str], patient: Identifier | None, reason: str | None = None,
               refused: bool = False) -> None:
        """Store an AuditEvent of a read: its outcome is the decision's, or a refusal (``refused``:
        a request turned down before any record was decided, e.g. a search on what its view hides)."""
        permitted = (decision.permitted if decision is not None else True) and not refused
        why = reason if reason is not None else (decision.reason if decision is not None else None)
        DECISIONS.labels(interaction, ctx.purpose.code, "refused" if refused else "permit" if permitted else "deny").inc()
        self._store.append_audit(self.event(ctx, interaction=interaction, action=action, permitted=permitted,
                                            reason=why, entities=entities, patient=patient))
