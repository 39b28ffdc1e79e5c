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
    Periods are timezone-aware or None (open). ``version`` is the Consent's meta.versionId where
    the reader knows it (the store's), so a decision can name the version it rested on.
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
    version: int | None = None

    @property
    def reference(self) -> str:
        """The Consent as a literal reference: ``Consent/<id>/_history/<version>`` when the
        version is known, else ``Consent/<id>``."""
        return f"Consent/{self.id}" + (f"/_history/{self.version}" if self.version is not None else "")
