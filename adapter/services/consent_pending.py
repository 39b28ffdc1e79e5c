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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapter.consent import decide
from adapter.consent.ingest import PENDING_NOTES, documented_later
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


@dataclass(frozen=True)
class Documented:
    """What a Consent write does for its patient's consent-pending records: ``versions``, the
    next version of each that still says it is pending (with the version it replaces), and
    ``released``, every record now permitted for care ("Media/<id>"), whose held items go."""

    versions: tuple[tuple[NewResource, int], ...] = ()
    released: tuple[str, ...] = ()


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
        grants = [denial_of_the_photo(self._store, g) for c in consents for g in consent_grants(c, patient)]
        versions: list[tuple[NewResource, int]] = []
        released: list[str] = []
        for record in records:
            decision = decide(CARE, record.facts, grants, self._tables, now) if record.facts is not None else None
            if decision is None or not decision.permitted:
                continue
            released.append(f"{record.resource_type}/{record.id}")
            if _says_pending(record.resource):
                note = documented_later(decision.consents, fhir_instant(now))
                resource = consent_documented(record.resource, note=note, replaced=PENDING_NOTES, now=now)
                versions.append((NewResource(record.resource_type, record.id, resource, index_resource(resource),
                                             record.facts, blob_sha256=record.blob_sha256,
                                             blob_range=record.blob_range), record.version_id))
        return Documented(tuple(versions), tuple(released))

    def audit(self, ctx: RequestContext, consent: str,
              patient: Identifier) -> Callable[[Sequence[str]], list[dict[str, Any]]]:
        """The AuditEvents of the record versions the write of ``consent`` (its versioned
        reference) made (RecordStore.save_consent's ``audit_documented``): one update event
        naming them and their patient, for the writer's request."""
        def events(written: Sequence[str]) -> list[dict[str, Any]]:
            return [self._auditor.event(
                ctx, interaction="update", action="U", permitted=True, entities=list(written), patient=patient,
                reason=f"consent pending no more: consent for care is documented (written with {consent}); the "
                       "record's next version names the Consents that document it in place of its consent-pending "
                       "note and flag")]
        return events


def _says_pending(record: dict[str, Any]) -> bool:
    """Whether a record carries the consent-pending extension (true)."""
    return any(x.get("url") == EXT_CONSENT_PENDING and x.get("valueBoolean") is True
               for x in record.get("extension", []))
