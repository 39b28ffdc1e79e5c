"""Consent pending, then documented: what a Consent write does for the patient's photos kept
consent pending (policy ``allowPending``).

A clinical photo stored without documented consent for care is consent pending
(AccessFacts.consent_pending): readable only under break-glass, its record saying so (the
consent-pending extension, and the ingest's warning as a note), its forwarding to PACS held
(adapter.services.forwarding: the forwarder decides its item for TREAT, holds it and audits that
once). When a Consent of the patient is written (POST or PUT /fhir/Consent), each such record
of the patient (not entered in error) is decided for TREAT with the patient's Consents as they
are once this one is written: the read decision itself (adapter.consent.decide), on the grants
every reader takes (adapter.services.access.consent_grants, denial_of_the_photo). Where it is
permitted, in the Consent's own transaction (RecordStore.save_consent):

* the record's held outbox items are released: pending and due, to be decided for TREAT again
  right before each is sent, as every item is; a forwarder started later (or in another
  process) finds them so;
* a record that still says it is pending gets its next version (its history kept, as a mark
  entered-in-error writes one), without the consent-pending extension and with a note saying by
  which Consent versions, and when, consent for care was documented, in place of the pending
  note (adapter.mapping.photo.consent_documented); audited as an update of the record.

A version rather than a rendering at each read: the record's content changes, so its versionId,
ETag and history say so, every read path (FHIR JSON and XML, R5, IHE MHD, searches, _history)
shows the one document stored, and its search index is that version's; the DICOM object, made
from the record, carries neither the note nor the extension (adapter.mapping.dicom_photo), so it
stays the same object. The facts stay as stored (consent_pending): the photo is still read as a
consent-pending photo is (adapter.consent.decision step 4: care needs a Consent documenting care,
written where the policy requires it; no care after a withdrawal). A withdrawal later changes
the decision, not the note, which says what was documented then (no version is written for it);
an item not sent by then is held again when its forwarder decides it.

A Consent that documents care from later on (its ``provision.period.start`` after the moment it
is written, say a form signed for next week) documents nothing when written: not in force, it
permits nothing. What it would do at its start is done then, by the forwarder's pass
(:meth:`PendingRecords.release_in_force`, RecordStore.release_in_force): the same decision at
that moment, the same version, release and audit, in one transaction of the same discipline,
recorded only while the patient's Consents are still those it decided on. A pass learns which
holds to look at again from the outbox itself: a held item's next_attempt_at is the moment its
patient's Consents next come into force (:func:`next_change`: a permit's period starts, a
denial's ends), set when the item is held (RecordStore.hold_outbox) and moved earlier by every
Consent write of the patient that leaves it held (RecordStore.save_consent); without such a
moment it is never due. A pass thus reads one range of the outbox's due index when nothing is
due (it runs every few seconds), and a patient's Consents only once one of them comes into
force. In the database, not in a forwarder's memory: any forwarder of any process sharing it
(PostgreSQL, or the SQLite file) finds the hold due, also after a restart; a look that finds
nothing (the Consent withdrawn, or its start moved later, before it started) leaves the photo
held until the next such moment. Rather than a scan of the Consents' periods at each pass:
neither the patients nor the periods of the held photos are indexed, and a moment written at
the hold costs nothing to find. A photo stored before this was kept (its item held with the
lease end of its last claim, long past) is looked at once, by the first pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from adapter.consent import decide
from adapter.consent.ingest import PENDING_NOTES, documented_later
from adapter.consent.rules import ACTIVE, DENY, PERMIT
from adapter.mapping.codes import EXT_CONSENT_PENDING
from adapter.mapping.fhir_r4 import fhir_instant, index_resource
from adapter.mapping.photo import consent_documented
from adapter.mapping.tables import Tables
from adapter.model.photo import Identifier
from adapter.model.purpose import PurposeOfUse, RequestContext
from adapter.model.record import NewResource, StoredResource
from adapter.services.access import consent_grants, denial_of_the_photo
from adapter.services.audit import Auditor
from adapter.store.port import RecordStore

#: The purpose a consent-pending photo awaits documented consent for (as at ingest).
CARE = PurposeOfUse("TREAT")
#: Who writes what a Consent coming into force does (:meth:`PendingRecords.release_in_force`):
#: the adapter, at a pass of its forwarder, for care (the decision's purpose).
IN_FORCE = RequestContext(purpose=CARE, actor="the adapter (a Consent of the patient came into force)",
                          request_id="consent-in-force", channel="outbox")
#: After the last instant of a period (its end is inclusive): the first it no longer covers.
_INSTANT = timedelta(microseconds=1)


@dataclass(frozen=True)
class Documented:
    """What a Consent write (or a Consent coming into force) does for its patient's
    consent-pending records: ``versions``, the next version of each that still says it is
    pending (with the version it replaces), and ``released``, every record now permitted for
    care ("Media/<id>"), whose held items go; ``waiting``, the other records, whose held items
    are looked at again at ``recheck_at`` (:func:`next_change`; None: not by the clock alone);
    ``consents``, the Consent versions that document the records released."""

    versions: tuple[tuple[NewResource, int], ...] = ()
    released: tuple[str, ...] = ()
    waiting: tuple[str, ...] = ()
    recheck_at: datetime | None = None
    consents: tuple[str, ...] = ()


class PendingRecords:
    """The consent-pending records a Consent documents (module docstring)."""

    def __init__(self, *, store: RecordStore, tables: Tables, auditor: Auditor) -> None:
        self._store = store
        self._tables = tables
        self._auditor = auditor

    def documented_by(self, consent: StoredResource, patient: Identifier, now: datetime) -> Documented:
        """What writing ``consent`` (the version about to be written, of ``patient``) does for the
        patient's consent-pending records, decided at ``now``."""
        records = self._store.consent_pending_records(patient)
        if not records:
            return Documented()
        consents = [c for c in self._store.consents_for_patient(patient) if c.id != consent.id] + [consent]
        return self._documented(records, consents, patient, now)

    def release_in_force(self, patient: Identifier, items: Sequence[int], now: datetime) -> int | None:
        """What the patient's Consents do at ``now`` for their consent-pending records, once one of
        them came into force (module docstring): the held ``items`` (of the patient, due) were
        waiting for it. Decided as :meth:`documented_by` decides, written as a Consent write
        writes it (RecordStore.release_in_force) and audited alike, the adapter the writer; the
        items not released wait for the next moment the Consents come into force. Returns how
        many items were released; None when the patient's Consents changed meanwhile (nothing
        written: the items stay due, for the next pass)."""
        consents = self._store.consents_for_patient(patient)
        records = self._store.consent_pending_records(patient)
        documented = self._documented(records, consents, patient, now) if records else Documented(
            recheck_at=next_change(consents, patient, now))
        why = f"{', '.join(documented.consents)}, whose period had started by {fhir_instant(now)}"
        return self._store.release_in_force(
            patient, consents=[(c.id, c.version_id) for c in consents], items=items, now=now,
            documented=documented.versions, released=documented.released, recheck_at=documented.recheck_at,
            audit_documented=self.audit(IN_FORCE, why, patient))

    def _documented(self, records: Sequence[StoredResource], consents: Sequence[StoredResource],
                    patient: Identifier, now: datetime) -> Documented:
        """What ``consents`` (all the patient's, as they are to be) do at ``now`` for ``records``
        (the patient's consent-pending ones)."""
        grants = [denial_of_the_photo(self._store, g) for c in consents for g in consent_grants(c, patient)]
        versions: list[tuple[NewResource, int]] = []
        released: list[str] = []
        waiting: list[str] = []
        documenting: list[str] = []
        for record in records:
            decision = decide(CARE, record.facts, grants, self._tables, now) if record.facts is not None else None
            if decision is None or not decision.permitted:
                waiting.append(f"{record.resource_type}/{record.id}")
                continue
            released.append(f"{record.resource_type}/{record.id}")
            documenting.extend(decision.consents)
            if _says_pending(record.resource):
                note = documented_later(decision.consents, fhir_instant(now))
                resource = consent_documented(record.resource, note=note, replaced=PENDING_NOTES, now=now)
                versions.append((NewResource(record.resource_type, record.id, resource, index_resource(resource),
                                             record.facts, blob_sha256=record.blob_sha256,
                                             blob_range=record.blob_range), record.version_id))
        return Documented(tuple(versions), tuple(released), tuple(waiting),
                          next_change(consents, patient, now) if waiting else None, tuple(dict.fromkeys(documenting)))

    def audit(self, ctx: RequestContext, why: str,
              patient: Identifier) -> Callable[[Sequence[str]], list[dict[str, Any]]]:
        """The AuditEvents of the record versions written because of ``why`` (a Consent write:
        "written with <its versioned reference>"; a Consent coming into force, :meth:`release_in_force`)
        (RecordStore.save_consent's and release_in_force's ``audit_documented``): one update
        event naming them and their patient, for ``ctx``, the writer's request."""
        def events(written: Sequence[str]) -> list[dict[str, Any]]:
            return [self._auditor.event(
                ctx, interaction="update", action="U", permitted=True, entities=list(written), patient=patient,
                reason=f"consent pending no more: consent for care is documented ({why}); the record's next "
                       "version names the Consents that document it in place of its consent-pending note and flag")]
        return events


def next_change(consents: Sequence[StoredResource], patient: Identifier, now: datetime) -> datetime | None:
    """The first moment after ``now`` at which the patient's ``consents`` may come to document care
    by the clock alone: the period of an active permit starts, or the period of an active denial
    ends (the instant after its last); None when there is none (only a Consent write can then).
    A permit ending or a denial starting never documents anything, so neither is a moment."""
    moments: list[datetime] = []
    for consent in consents:
        for grant in consent_grants(consent, patient):
            if grant.status != ACTIVE:
                continue
            if grant.decision == PERMIT and grant.period_start is not None and grant.period_start > now:
                moments.append(grant.period_start)
            if grant.decision == DENY and grant.period_end is not None and grant.period_end >= now:
                moments.append(grant.period_end + _INSTANT)
    return min(moments, default=None)


def _says_pending(record: dict[str, Any]) -> bool:
    """Whether a record carries the consent-pending extension (true)."""
    return any(x.get("url") == EXT_CONSENT_PENDING and x.get("valueBoolean") is True
               for x in record.get("extension", []))
