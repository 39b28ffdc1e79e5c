"""Consent lifecycle: create, update (add a purpose, withdraw with status inactive).

A change is committed before the response, and the read path loads consents on every request,
so it takes effect on the very next request. A Consent that documents consent for care for the
patient's photos kept consent pending releases their held forwarding and writes their records'
next versions, in its own transaction (adapter.services.consent_pending).

Every write is audited: a stored one in its own transaction (outcome 0), a refused one (invalid,
against a rule, a stale If-Match, an id never made…) as a refused POST /photos is (outcome 4 with
the refusal's diagnostics), and one the store failed to make as a failed write (outcome 8). A
refusal names the patient the Consent concerns (the stored Consent's for an update, else the
one the request names, when it names one that can be an identifier) and, for an update, the
Consent; never a record the request named (it may be another patient's)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

from adapter.consent.grants import literal_type_id
from adapter.errors import (
    AdapterError,
    BusinessRuleViolation,
    Conflict,
    InvalidResource,
    PreconditionFailed,
    StorageError,
    UpdateCreateNotSupported,
)
from adapter.mapping.consent_checks import check_consent, data_references, purpose_codings
from adapter.mapping.photo import index_resource
from adapter.mapping.tables import Tables
from adapter.model.photo import Identifier, identifier_too_long
from adapter.model.purpose import RequestContext
from adapter.model.record import AccessFacts, NewResource, StoredResource
from adapter.services.access import consent_facts, named_resource
from adapter.services.audit import Auditor
from adapter.services.consent_pending import Documented, PendingRecords
from adapter.store.port import RecordStore
from adapter.text import has_control_character

log = logging.getLogger(__name__)


class ConsentService:
    def __init__(self, *, store: RecordStore, auditor: Auditor, known_purposes: set[str],
                 now: Callable[[], datetime], tables: Tables) -> None:
        self._tables = tables
        self._store = store
        self._auditor = auditor
        self._known = known_purposes
        self._now = now
        self._pending = PendingRecords(store=store, tables=tables, auditor=auditor)
        #: Called after a write released held outbox items (Services.start_forwarding: the
        #: forwarder's wake), so they go at once rather than at its next poll.
        self.on_released: Callable[[], None] | None = None

    def _check(self, resource: dict[str, Any], id: str, current: dict[str, Any] | None = None) -> dict[str, Any]:
        """Validate a Consent and return a copy carrying ``id`` and no client-supplied meta
        (adapter.mapping.consent_checks.check_consent, which a transaction Bundle's Consent goes
        through too), each record it names one of its own patient's; ``current``: the version an
        update replaces."""
        resource = check_consent(resource, id, tables=self._tables, known_purposes=self._known, current=current)
        ident = resource["patient"]["identifier"]
        self._check_data_of_the_patient(resource, current, Identifier(system=ident["system"], value=ident["value"]))
        return resource

    def _check_data_of_the_patient(self, resource: dict[str, Any], current: dict[str, Any] | None,
                                   patient: Identifier) -> None:
        """Each record a provision names (``data.reference``) is one held here of the Consent's
        patient. A Consent naming another patient's record does nothing for it (the decision
        applies a Consent to its own patient's data only: a deny written so protects nothing,
        silently), and its restricted views would show that record's id in this patient's
        Consent, telling a reader that a record exists for a patient who never consented.
        Refused (422) with the same words whether the record is another patient's or not held,
        so the answer tells the writer nothing of other patients. A reference the current
        version already holds is not checked again: a withdrawal must not fail on it."""
        held = {literal for _, literal in data_references((current or {}).get("provision"), "")}
        for where, literal in data_references(resource.get("provision"), "Consent.provision"):
            named = literal_type_id(literal)
            if literal in held or named is None:
                continue
            stored = named_resource(self._store, named)
            facts = stored.facts if stored is not None else None
            if stored is not None and facts is None and stored.resource_type == "Consent":
                facts = consent_facts(stored.id, stored.resource)
            if facts is None or facts.patient != patient:
                raise BusinessRuleViolation(f"{where} names no record of this Consent's patient held here: a "
                                            "Consent governs its own patient's records", expression=where)

    def create(self, resource: dict[str, Any], ctx: RequestContext) -> StoredResource:
        try:
            return self._create(resource, ctx)
        except AdapterError as exc:
            self._audit_refusal(ctx, "create", exc, consent_id=None, patient=_named_patient(resource))
            raise

    def update(self, id: str, resource: dict[str, Any], ctx: RequestContext,
               if_match: frozenset[str] | None) -> StoredResource:
        """Write the next version of Consent ``id``; ``if_match``: the versions the client's
        If-Match accepts (None: any)."""
        held: list[StoredResource] = []
        try:
            return self._update(id, resource, ctx, if_match, held)
        except AdapterError as exc:
            stored = consent_facts(id, held[0].resource) if held else None
            patient = stored.patient if stored is not None else _named_patient(resource)
            self._audit_refusal(ctx, "update", exc, consent_id=id, patient=patient)
            raise

    def audit_unread(self, ctx: RequestContext, interaction: str, error: AdapterError,
                     consent_id: str | None = None) -> None:
        """Audit a create or update (of ``consent_id``) refused before its body was read as a
        Consent (its media type, encoding, size or JSON: the API's), as its other refusals are:
        naming, for an update, the Consent and the stored Consent's patient; no patient from the
        body, which was not read."""
        stored = self._store.get("Consent", consent_id) if consent_id is not None else None
        facts = consent_facts(stored.id, stored.resource) if stored is not None else None
        self._audit_refusal(ctx, interaction, error, consent_id=consent_id,
                            patient=facts.patient if facts is not None else None)

    def _audit_refusal(self, ctx: RequestContext, interaction: str, error: AdapterError, *,
                       consent_id: str | None, patient: Identifier | None) -> None:
        """Audit a write not made (module docstring): refused, outcome 4; failed in the store,
        outcome 8, whose audit, written in its own transaction, may fail too (the store is what
        failed): then logged by the request id, without patient data, and the failure stands."""
        action = "C" if interaction == "create" else "U"
        entities = [f"Consent/{consent_id}"] if consent_id is not None else []
        if not isinstance(error, StorageError):
            self._auditor.record_refused_write(ctx, interaction=interaction, action=action, error=error,
                                               entities=entities, patient=patient)
            return
        try:
            self._auditor.record_failed_write(ctx, interaction=interaction, action=action, reason=error.diagnostics,
                                              patient=patient)
        except Exception as exc:  # noqa: BLE001 - the failure stands whatever the audit store does
            log.error("could not audit the failed %s of a Consent (request %s): %s", interaction,
                      ctx.request_id or "-", type(exc).__name__)

    def _create(self, resource: dict[str, Any], ctx: RequestContext) -> StoredResource:
        resource = self._check({k: v for k, v in resource.items() if k != "id"}, str(uuid.uuid4()))
        facts = consent_facts(resource["id"], resource)
        audit = self._auditor.event(ctx, interaction="create", action="C", permitted=True,
                                    reason=consent_change(None, resource, 1),
                                    entities=[f"Consent/{resource['id']}/_history/1"],
                                    patient=facts.patient if facts else None)
        return self._save(NewResource("Consent", resource["id"], resource, index_resource(resource)), 1, ctx, facts,
                          audit)

    def _save(self, new: NewResource, version: int, ctx: RequestContext, facts: AccessFacts | None,
              audit: dict[str, Any]) -> StoredResource:
        """Write version ``version`` of Consent ``new`` (RecordStore.save_consent: Conflict as a
        create or an update over the version before) with its AuditEvent, and what it does for
        the patient's consent-pending records (adapter.services.consent_pending: those it leaves
        held are looked at again when a Consent of the patient comes into force), in one
        transaction; the forwarder is woken when held items were released."""
        now = self._now()
        documented = Documented() if facts is None else self._pending.documented_by(
            StoredResource("Consent", new.id, version, now, new.resource), facts.patient, now)
        stored, released = self._store.save_consent(
            new, version=version, now=now, audit_events=[audit], documented=documented.versions,
            released=documented.released, waiting=documented.waiting, recheck_at=documented.recheck_at,
            audit_documented=None if facts is None else self._pending.audit(
                ctx, f"written with Consent/{new.id}/_history/{version}", facts.patient))
        if released and self.on_released is not None:
            self.on_released()
        return stored

    def _update(self, id: str, resource: dict[str, Any], ctx: RequestContext, if_match: frozenset[str] | None,
                held: list[StoredResource]) -> StoredResource:
        """:meth:`update`; the current version, once read, is put in ``held`` (its patient is
        the one a refusal names). The version is written only over the version read (the store's
        If-Match), so that the AuditEvent, built before, names the version written and what
        changed from the one before it; without the client's If-Match, a writer that came in
        between makes it read and decide again, a few times at most."""
        for _ in range(_ATTEMPTS - 1):
            try:
                return self._update_once(id, resource, ctx, if_match, held)
            except _ChangedMeanwhile:
                held.clear()
        try:
            return self._update_once(id, resource, ctx, if_match, held)
        except _ChangedMeanwhile as exc:
            raise Conflict(f"Consent/{id} was changed concurrently, again and again: send the update again") from exc

    def _update_once(self, id: str, resource: dict[str, Any], ctx: RequestContext, if_match: frozenset[str] | None,
                     held: list[StoredResource]) -> StoredResource:
        if isinstance(resource, dict) and resource.get("resourceType") == "Consent" and resource.get("id") is None:
            # http.html#update: "If no id element is provided, or the id disagrees with the id in
            # the URL, the server SHALL respond with an HTTP 400 error code"
            raise InvalidResource("an update carries the resource's id, the same as in the URL", expression="Consent.id")
        current = self._store.get("Consent", id)
        if current is not None:
            held.append(current)
        resource = self._check(resource, id, current.resource if current is not None else None)
        if current is None:  # ids are the server's: an update never creates (http.html#update: 405)
            raise UpdateCreateNotSupported(f"Consent/{id} does not exist, and an update does not create one: "
                                           "create a Consent with POST /fhir/Consent (the server assigns its id)")
        if if_match is not None and str(current.version_id) not in if_match:
            raise PreconditionFailed(f"If-Match names {_versions(if_match)}; the current version differs")
        facts = consent_facts(id, resource)
        before = consent_facts(id, current.resource)
        if before is not None and (facts is None or facts.patient != before.patient):
            # the patient would lose the Consent with no event naming them: a new patient's
            # consent is a new Consent
            raise BusinessRuleViolation("a Consent's patient cannot change: record the other patient's consent as a "
                                        "new Consent", expression="Consent.patient")
        version = current.version_id + 1  # the store's next (RecordStore.update), written over current only
        audit = self._auditor.event(ctx, interaction="update", action="U", permitted=True,
                                    reason=consent_change(current.resource, resource, version),
                                    entities=[f"Consent/{id}/_history/{version}"],
                                    patient=facts.patient if facts else None)
        try:
            return self._save(NewResource("Consent", id, resource, index_resource(resource)), version, ctx, facts,
                              audit)
        except Conflict as exc:
            if if_match is None:
                raise _ChangedMeanwhile from exc
            # another writer committed after the version was read above: the If-Match is as stale
            # as if it had been seen there (http.html#concurrency: 412)
            raise PreconditionFailed(f"If-Match names {_versions(if_match)}; the current version differs") from exc


#: How many times an update without If-Match reads and decides again when another writer came in between.
_ATTEMPTS = 3


class _ChangedMeanwhile(Exception):
    """The Consent changed between the read of its current version and the write of the next."""


def consent_change(before: dict[str, Any] | None, after: dict[str, Any], version: int) -> str:
    """What a Consent write changed, for its AuditEvent's outcomeDesc (IHE BALP Update names the
    version written; this says what it is, so a withdrawal is found in the trail alone): the
    status (``active -> inactive (withdrawn)``, ``inactive -> active (re-activated)``), the
    top provision's type (permit, deny) and the purposes its provisions name, added and
    removed; codes only, nothing of the patient. ``before``: the version replaced (None: a create)."""
    status, kind, purposes = _consent_summary(after)
    if before is None:
        return f"Consent created (version {version}): status {status}; {kind or 'no provision'}" \
               f"{' ' + ', '.join(sorted(purposes)) if purposes else ''}"
    was_status, was_kind, was_purposes = _consent_summary(before)
    changes = []
    if status != was_status:
        said = {("active", "inactive"): " (withdrawn)", ("inactive", "active"): " (re-activated)"}
        changes.append(f"status {was_status} -> {status}{said.get((was_status, status), '')}")
    if kind != was_kind:
        changes.append(f"provision {was_kind or 'none'} -> {kind or 'none'}")
    added, removed = sorted(purposes - was_purposes), sorted(was_purposes - purposes)
    if added or removed:
        changes.append("purposes" + (f" added {', '.join(added)}" if added else "")
                       + (";" if added and removed else "") + (f" removed {', '.join(removed)}" if removed else ""))
    return f"Consent version {version}: " + ("; ".join(changes) or "status, provision type and purposes unchanged")


def _consent_summary(resource: dict[str, Any]) -> tuple[str, str | None, set[str]]:
    """A checked Consent's status, top provision type and the purpose codes of its provisions."""
    provision = resource.get("provision")
    kind = provision.get("type") if isinstance(provision, dict) else None
    purposes = {str(c.get("code")) for _, c in purpose_codings(provision, "")}
    return str(resource.get("status")), kind if isinstance(kind, str) else None, purposes


def _named_patient(resource: Any) -> Identifier | None:
    """The patient identifier a Consent in a request names, when it names one that can be an
    identifier (a system and a value, each a string within the bound, no control character);
    else None (an audit then names no patient rather than text that is no identifier)."""
    patient = resource.get("patient") if isinstance(resource, dict) else None
    ident = patient.get("identifier") if isinstance(patient, dict) else None
    if not isinstance(ident, dict):
        return None
    system, value = ident.get("system"), ident.get("value")
    parts = (system, value)
    if not all(isinstance(p, str) and p.strip() and not identifier_too_long(p) and not has_control_character(p)
               for p in parts):
        return None
    return Identifier(system=str(system), value=str(value))


def _versions(if_match: frozenset[str]) -> str:
    return ("version " if len(if_match) == 1 else "versions ") + ", ".join(sorted(if_match, key=lambda v: (len(v), v)))
