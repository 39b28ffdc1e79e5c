"""When a read's release labels may have changed with no new version of what it reads.

A record's ``meta.security`` in the whole-record view (care, records management) lists the
purposes its patient's Consents permit it for (adapter.mapping.views.security_labels), and a
Consent read in a restricted view shows which of the records it names the purpose is released
(adapter.mapping.views, ``_as_permission``): both change with the patient's Consents, with no
new version of the record or Consent read. The read's ``Last-Modified`` must then move (RFC 9110
8.8.2; adapter.api.routes.fhir), so a client's ``If-Modified-Since`` from before gets 200.

Only a Consent that can apply to the record counts (FHIR REST review finding 1: the implied
TREAT Consent recorded with each new photo of a patient named that photo only, yet made every
other record of the patient answer 200): one with no ``provision.data``, or naming the record
(a deny naming its Binary or Provenance names it too: adapter.services.access.denial_of_the_photo).
A Consent updated since its first version counts whatever it names now, as an earlier version
may have named the record. A restricted view's labels of a record list the purpose it serves
only, so there no Consent relabels a record: a 304 or a 200 tells its reader nothing of the
patient's other Consents (review finding 4). A Consent read there is shown as the permission it
gives, its provision.data cut to the records the purpose is released: it changes with the other
Consents only through the records it names, so only a Consent that can apply to one of them
counts, and none for a Consent that names none (review codereview: the pseudonymised view's
Last-Modified of a Consent moved, to the day, whenever the patient changed any Consent, one the
reader cannot read included).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from adapter.consent.rules import grant_scope_matches
from adapter.model.consent import ConsentGrant
from adapter.model.decision import Decision, View
from adapter.model.record import AccessFacts


@dataclass(frozen=True)
class ConsentChange:
    """One Consent of a patient as a read's validators see it: ``instant``, its last write or
    the latest start or end of its ``provision.period`` that has passed since (a period
    boundary changes what it permits as a write does); ``updated``, it has had more than one
    version; ``grants``, what it grants (scoped as the decision reads them)."""

    instant: datetime
    updated: bool
    grants: tuple[ConsentGrant, ...]

    @classmethod
    def of(cls, last_updated: datetime, version_id: int, grants: Iterable[ConsentGrant],
           now: datetime) -> ConsentChange:
        """The change a Consent version stored ``last_updated`` (``version_id``) with ``grants``
        makes as of ``now``."""
        grants = tuple(grants)
        instant = last_updated
        for boundary in (b for g in grants for b in (g.period_start, g.period_end)):
            if boundary is not None and instant < boundary <= now:
                instant = boundary
        return cls(instant, version_id > 1, grants)

    def may_apply(self, facts: AccessFacts) -> bool:
        """Whether this Consent can change what is shown of the resource of ``facts``: every
        Consent of the patient for a Consent read; else one not scoped to other records."""
        return (facts.consent_directive or self.updated or not self.grants
                or any(grant_scope_matches(g, facts.patient, facts.governed_by) for g in self.grants))


def relabelled(changes: Iterable[ConsentChange], facts: AccessFacts | None, decision: Decision,
               updated: datetime | str | None, named: Sequence[AccessFacts] | None = None) -> datetime | None:
    """The last change of a Consent that may apply to the resource of ``facts`` read under
    ``decision`` (:meth:`ConsentChange.may_apply`), if after ``updated`` (the lastUpdated of
    the version read); else None. None too where the representation does not depend on the
    Consents: a restricted view of a record. A Consent read in a restricted view: a change that
    may apply to one of the records it names (``named``, their facts; None: not known, and every
    change counts). A version whose lastUpdated cannot be read counts as relabelled (fail safe:
    a 200, never a stale 304)."""
    if facts is None or (decision.view is not View.FULL and not facts.consent_directive):
        return None
    if decision.view is not View.FULL and named is not None:
        applying = [c for c in changes if any(c.may_apply(record) for record in named)]
    else:
        applying = [c for c in changes if c.may_apply(facts)]
    changed = max((c.instant for c in applying), default=None)
    if changed is None:
        return None
    if isinstance(updated, str):
        try:
            updated = datetime.fromisoformat(updated)
        except ValueError:
            updated = None
    if isinstance(updated, datetime) and updated.tzinfo is not None and changed <= updated:
        return None
    return changed


__all__ = ["ConsentChange", "relabelled"]
