"""Correcting a misfiled record: marking a Media or DocumentReference ``entered-in-error``.

FHIR R4 (https://hl7.org/fhir/R4/valueset-event-status.html,
https://hl7.org/fhir/R4/valueset-document-reference-status.html): the record "should not have
existed". The mark is the only change a record takes (PATCH of ``/status``,
adapter.api.routes.corrections) and it cannot be undone: a record filed in error stays withdrawn,
and the photo is posted again under the right patient. It is written as the record's next
version, with its history row, search tokens, a Provenance (activity NULLIFY) and the AuditEvent,
in one transaction that also marks every resource the record governs (its Binary, its
Provenance) and cancels its outbox items not yet sent (adapter.store.sql.mark_entered_in_error),
except an item whose C-STORE the forwarder has started (RecordStore.start_outbox_send, ordered
with the mark on the item's row): that one is counted as being sent, and may reach the PACS.
From then on the consent decision (adapter.consent.decision) releases its image to no one and the
record to care and break-glass only. A copy already forwarded to a PACS is not recalled: it is
corrected at the PACS.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapter.consent import decide_mark_entered_in_error
from adapter.errors import (
    AdapterError,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    PreconditionRequired,
    StorageError,
)
from adapter.mapping.fhir_r4 import index_resource, record_attachment
from adapter.mapping.provenance import build_entered_in_error_provenance
from adapter.mapping.status_patch import StatusPatch
from adapter.mapping.tables import Tables
from adapter.model.photo import Identifier
from adapter.model.purpose import RequestContext
from adapter.model.record import NewResource, SearchIndex, StoredResource
from adapter.services.audit import Auditor
from adapter.store.port import RecordStore

#: The status of a record withdrawn (R4 event-status and document-reference-status alike).
ENTERED_IN_ERROR = "entered-in-error"
#: The record types that can be marked so.
CORRECTABLE_TYPES = ("Media", "DocumentReference")


@dataclass(frozen=True)
class Marked:
    """The record as stored after the mark; ``changed`` False when it was entered in error
    already (nothing written); ``cancelled``: the outbox items cancelled with it; ``sending``:
    those whose C-STORE had started (not cancelled: they may have reached the PACS)."""

    stored: StoredResource
    changed: bool
    cancelled: int = 0
    sending: int = 0


class RecordCorrections:
    """Marks records entered in error, for records management (RECORDMGT)."""

    def __init__(self, *, store: RecordStore, tables: Tables, auditor: Auditor, now: Callable[[], datetime]) -> None:
        self._store = store
        self._tables = tables
        self._auditor = auditor
        self._now = now

    def mark_entered_in_error(self, resource_type: str, id: str, ctx: RequestContext,
                              if_match: frozenset[str] | None, patch: StatusPatch | None = None) -> Marked:
        """Mark ``resource_type``/``id`` entered-in-error (module docstring); ``if_match``: the
        versions the client's If-Match accepts (None: it named none, no header or ``*``, refused:
        the mark cannot be undone, so it must be of the version the client read); ``patch``: the
        request's, whose test operations must hold on the record as stored. Every refusal is
        audited: the purpose (403), an unknown record (404), no version named (428), a stale
        If-Match (412), a test that fails (422)."""
        reference = f"{resource_type}/{id}"
        held: list[StoredResource] = []
        try:
            return self._mark(resource_type, id, ctx, if_match, patch or StatusPatch(), held)
        except AdapterError as exc:
            patient = held[0].facts.patient if held and held[0].facts is not None else None
            if isinstance(exc, StorageError):
                self._auditor.record_failed_write(ctx, interaction="patch", action="U", reason=exc.diagnostics,
                                                  patient=patient)
            else:
                self._auditor.record_refused_write(ctx, interaction="patch", action="U", error=exc,
                                                   entities=[reference] if held else [], patient=patient)
            raise

    def authorise(self, resource_type: str, id: str, ctx: RequestContext) -> None:
        """Refuse (403, audited) a mark stated for another purpose than records management,
        before its body is read (adapter.consent.decide_mark_entered_in_error)."""
        decision = decide_mark_entered_in_error(ctx.purpose, self._tables)
        if not decision.permitted:
            error = Forbidden(decision.reason)
            self._auditor.record_refused_write(ctx, interaction="patch", action="U", error=error,
                                               entities=[f"{resource_type}/{id}"], patient=None)
            raise error

    def audit_unread(self, resource_type: str, id: str, ctx: RequestContext, error: AdapterError) -> None:
        """Audit a mark refused before its JSON Patch was read (its media type, encoding, size,
        JSON, or a patch other than the mark: the API's) or for its If-Match's syntax, as
        :meth:`authorise` audits a refusal made before anything is looked up: naming the record
        asked for, no patient."""
        self._auditor.record_refused_write(ctx, interaction="patch", action="U", error=error,
                                           entities=[f"{resource_type}/{id}"], patient=None)

    def _mark(self, resource_type: str, id: str, ctx: RequestContext, if_match: frozenset[str] | None,
              patch: StatusPatch, held: list[StoredResource]) -> Marked:
        decision = decide_mark_entered_in_error(ctx.purpose, self._tables)
        if not decision.permitted:
            raise Forbidden(decision.reason)
        current = self._store.get(resource_type, id) if resource_type in CORRECTABLE_TYPES else None
        if current is None or current.facts is None:
            raise NotFound(f"{resource_type}/{id} is not known")
        held.append(current)
        # RFC 6585 3: a mark that names no version would withdraw whatever is current. Neither
        # refusal says the current version: a client that echoed it would mark a record nobody
        # read as it is (review codereview 4). The version is the care read's (docs/operations.md).
        if if_match is None:
            raise PreconditionRequired(
                "marking a record entered-in-error cannot be undone: send If-Match naming the version read, "
                'the ETag (or W/"<meta.versionId>") of the record as care reads it; * is not taken',
                expression="If-Match")
        if str(current.version_id) not in if_match:
            raise PreconditionFailed(f"If-Match names {_versions(if_match)}; not the record's current version: read "
                                     "the record again (as care does) and check it before marking it")
        patch.check(current.resource)
        if current.resource.get("status") == ENTERED_IN_ERROR:
            return Marked(stored=current, changed=False)  # idempotent: nothing new
        facts = dataclasses.replace(current.facts, entered_in_error=True)
        resource = {**current.resource, "status": ENTERED_IN_ERROR}
        record = NewResource(resource_type, id, resource, index_resource(resource), facts,
                             blob_sha256=current.blob_sha256, blob_range=current.blob_range)
        provenance = self._provenance(current, ctx, facts.patient, record.index)
        provenance.facts = facts
        reason = ("marked entered-in-error (irreversible): its image is released to no one, the record to care "
                  "only, and its outbox items not sent are cancelled")
        audit = self._auditor.event(ctx, interaction="patch", action="U", permitted=True, reason=reason,
                                    entities=[f"{resource_type}/{id}", f"Provenance/{provenance.id}"],
                                    patient=facts.patient)
        try:
            stored, cancelled, sending = self._store.mark_entered_in_error(record, if_match=current.version_id,
                                                                  created=[provenance], audit_events=[audit])
        except Conflict as exc:
            # another writer committed after the version was read above (http.html#concurrency)
            raise PreconditionFailed(f"If-Match names {_versions(if_match)}; the current version differs") from exc
        return Marked(stored=stored, changed=True, cancelled=cancelled, sending=sending)

    def _provenance(self, current: StoredResource, ctx: RequestContext, patient: Identifier,
                    record_index: SearchIndex) -> NewResource:
        provenance_id = str(uuid.uuid4())
        version = f"{current.resource_type}/{current.id}/_history/{current.version_id + 1}"
        resource = build_entered_in_error_provenance(
            provenance_id=provenance_id, record_version=version, binary_ref=_binary_of(current.resource),
            actor=ctx.actor if ctx.actor and ctx.actor != "anonymous" else None, tables=self._tables,
            now=self._now())
        index = index_resource(resource)
        # the record's unversioned reference too: Provenance?target=Media/<id> finds it
        tokens = (*index.tokens, ("target", None, f"{current.resource_type}/{current.id}"))
        return NewResource("Provenance", provenance_id, resource,
                           SearchIndex(patient=patient, patient_reference=record_index.patient_reference,
                                       date=index.date, date_last=index.date_last, tokens=tokens))


def _binary_of(resource: dict[str, Any]) -> str | None:
    """The Binary the record's attachment points at (fhir_r4.record_attachment)."""
    attachment = record_attachment(resource)
    url = attachment.get("url") if attachment is not None else None
    return url if isinstance(url, str) and url.startswith("Binary/") else None


def _versions(if_match: frozenset[str]) -> str:
    return ("version " if len(if_match) == 1 else "versions ") + ", ".join(sorted(if_match, key=lambda v: (len(v), v)))
