"""A patient's consent reduced to what the decision needs (built from a FHIR Consent)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapter.model.photo import ConsentMethod, Identifier


@dataclass(frozen=True)
class ConsentGrant:
    """One FHIR Consent as facts.

    ``status`` is Consent.status (draft, proposed, active, rejected, inactive, entered-in-error).
    ``decision`` is the provision type (permit or deny). ``purposes`` are v3-ActReason codes of
    provision.purpose. ``data_refs`` non-empty restricts the grant to those resources
    ("Media/123"), as an implied consent for one patient-sent photo does.
    Periods are timezone-aware or None (open).
    """

    id: str
    patient: Identifier
    status: str
    decision: str
    purposes: frozenset[str]
    method: ConsentMethod | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    data_refs: frozenset[str] = frozenset()
    implied: bool = False
