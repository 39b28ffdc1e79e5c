"""The outcome of the consent decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from adapter.model.purpose import PurposeOfUse


class View(StrEnum):
    """How a permitted record is shown."""

    FULL = "full"                     # care: the record and the metadata-clean image
    DEIDENTIFIED = "deidentified"     # ANONYED: no identifiers, names, notes, dates beyond year
    PSEUDONYMISED = "pseudonymised"   # PSEUDED: subject replaced by a keyed pseudonym


@dataclass(frozen=True)
class Decision:
    permitted: bool
    reason: str
    purpose: PurposeOfUse
    view: View = View.FULL
    break_glass: bool = False
    consent_ids: tuple[str, ...] = ()
    permitted_purposes: frozenset[str] = frozenset()
    obligations: tuple[str, ...] = field(default_factory=tuple)
