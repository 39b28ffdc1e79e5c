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

import base64
import binascii
import hashlib
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from adapter.consent import grants_from_consent, inverted_period
from adapter.consent.grants import literal_type_id
from adapter.errors import (
    AdapterError,
    BusinessRuleViolation,
    Conflict,
    InvalidInput,
    InvalidResource,
    PreconditionFailed,
    StorageError,
    UnknownCode,
    UpdateCreateNotSupported,
)
from adapter.mapping.codes import CONSENT_ACTION
from adapter.mapping.consent import signed_form
from adapter.mapping.fhir_json import validate_r4_resource
from adapter.mapping.narrative import check_narratives
from adapter.mapping.photo import index_resource
from adapter.mapping.tables import Tables
from adapter.model.photo import Identifier, identifier_too_long
from adapter.model.purpose import V3_ACT_REASON, V3_ACT_REASON_SYSTEMS, RequestContext
from adapter.model.record import AccessFacts, NewResource, StoredResource
from adapter.services.access import consent_facts, named_resource
from adapter.services.audit import Auditor
from adapter.services.consent_pending import Documented, PendingRecords
from adapter.store.port import RecordStore
from adapter.text import has_control_character

log = logging.getLogger(__name__)

CONSENT_STATUS = frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})
#: http://terminology.hl7.org/CodeSystem/consentaction (R4), bound required to provision.action
CONSENT_ACTIONS = frozenset({"collect", "access", "use", "disclose", "correct"})


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
        """Validate a Consent and return a copy carrying ``id`` and no client-supplied meta;
        ``current``: the version an update replaces."""
        if resource.get("resourceType") != "Consent":
            raise InvalidResource("expected a Consent resource", expression="Consent.resourceType")
        if resource.get("id") not in (None, id):
            raise InvalidResource("the resource id must match the URL", expression="Consent.id")
        resource = {**resource, "id": id}
        resource.pop("meta", None)
        validate_r4_resource(resource)
        if not resource.get("policy") and not resource.get("policyRule"):
            # FHIR invariant ppc-1 (https://hl7.org/fhir/R4/consent.html#invs): fails basic validation, 400
            raise InvalidResource("a Consent names the policy it is given under: policy or policyRule (FHIR "
                                  "invariant ppc-1; e.g. policyRule v3-ActCode OPTIN)", expression="Consent.policyRule")
        check_narratives(resource, "Consent")
        self._clean_source_attachment(resource, current)
        # required bindings fhir.resources does not check (https://hl7.org/fhir/R4/consent.html)
        if resource.get("status") not in CONSENT_STATUS:
            raise UnknownCode(f"Consent.status must be one of {', '.join(sorted(CONSENT_STATUS))}",
                              expression="Consent.status")
        provision_type = (resource.get("provision") or {}).get("type")
        if provision_type not in (None, "permit", "deny"):
            raise UnknownCode("Consent.provision.type must be permit or deny", expression="Consent.provision.type")
        ident = (resource.get("patient") or {}).get("identifier") or {}
        if not ident.get("system") or not ident.get("value"):
            # FHIR allows a Consent without one: a rule of this server, 422 (http.html#create)
            raise BusinessRuleViolation("Consent.patient must carry an identifier (system and value): the adapter "
                                        "matches patients by identifier", expression="Consent.patient.identifier")
        for where, coding in _action_codings(resource.get("provision"), "Consent.provision"):
            if coding.get("code") not in CONSENT_ACTIONS:
                raise UnknownCode(f"{where}.code is not a code of {CONSENT_ACTION}", expression=f"{where}.code")
        for where, coding in _purpose_codings(resource.get("provision"), "Consent.provision"):
            if coding.get("system") not in V3_ACT_REASON_SYSTEMS or coding.get("code") not in self._known:
                # a purpose the decision cannot read would make a deny deny everything, a
                # permit permit nothing: refused when written, in nested provisions too
                raise InvalidInput(f"{where} is not a known v3-ActReason purpose-of-use code ({V3_ACT_REASON})",
                                   expression=where)
        for where, literal in _data_references(resource.get("provision"), "Consent.provision"):
            if literal_type_id(literal) is None:
                # read, it would name no record: a deny would then deny all the patient's data,
                # a permit permit none; refused rather than half-applied
                raise InvalidInput(f"{where} is not a literal reference [base/]Type/id[/_history/vid] "
                                   "(https://hl7.org/fhir/R4/references.html#literal): the record it names "
                                   "cannot be told", expression=where)
        self._check_data_of_the_patient(resource, current, Identifier(system=ident["system"], value=ident["value"]))
        try:
            grants_from_consent(resource)
        except (ValueError, ValidationError) as exc:
            raise InvalidResource(f"Consent cannot be interpreted: {exc}", expression="Consent") from exc
        inverted = inverted_period(resource)
        if inverted is not None:  # fails basic FHIR validation: 400, as an invalid element
            raise InvalidResource("the period ends before it starts (FHIR invariant per-1)", expression=inverted)
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
        held = {literal for _, literal in _data_references((current or {}).get("provision"), "")}
        for where, literal in _data_references(resource.get("provision"), "Consent.provision"):
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

    def _clean_source_attachment(self, resource: dict[str, Any], current: dict[str, Any] | None) -> None:
        """The signed form a Consent carries in ``sourceAttachment.data`` is kept as the photo
        path keeps one (adapter.mapping.consent.signed_form): a PDF, or a scan as JPEG or PNG
        without its metadata (GPS, serials, the owner's name), within the policy's pixel limit
        and proven to decode; its size (and hash, when given: SHA-1, R4 Attachment.hash) then
        describe the bytes kept. A form given by url only is not fetched. An update carrying the
        form the current version holds keeps it as it is: it was cleaned when written, and a
        withdrawal must not fail on a form a later policy (a lower pixel limit) would refuse."""
        attachment = resource.get("sourceAttachment")
        if not isinstance(attachment, dict) or attachment.get("data") is None:
            return
        held = (current or {}).get("sourceAttachment")
        if isinstance(held, dict) and held.get("data") == attachment["data"]:
            return
        where = "Consent.sourceAttachment"
        try:
            raw = base64.b64decode("".join(str(attachment["data"]).split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidResource("sourceAttachment.data is not base64", expression=f"{where}.data") from exc
        content_type, kept = signed_form(raw, attachment.get("contentType"), self._tables, where)
        cleaned = {**attachment, "contentType": content_type, "data": base64.b64encode(kept).decode("ascii"),
                   "size": len(kept)}
        if "hash" in attachment:
            cleaned["hash"] = base64.b64encode(hashlib.sha1(kept).digest()).decode("ascii")  # R4 Attachment.hash is SHA-1
        resource["sourceAttachment"] = cleaned

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
    purposes = {str(c.get("code")) for _, c in _purpose_codings(provision, "")}
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


def _purpose_codings(provision: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, coding) of every purpose coding in ``provision`` and its nested provisions."""
    if not isinstance(provision, dict):
        return
    for i, coding in enumerate(provision.get("purpose") or []):
        yield f"{path}.purpose[{i}]", coding if isinstance(coding, dict) else {}
    for k, nested in enumerate(provision.get("provision") or []):
        yield from _purpose_codings(nested, f"{path}.provision[{k}]")


def _data_references(provision: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, literal reference) of every ``data[].reference`` in ``provision`` and its nested
    provisions: its ``reference``, or "" for one naming its record otherwise (by identifier or
    display only), which the decision cannot match either (the model has checked the shapes)."""
    if not isinstance(provision, dict):
        return
    for i, data in enumerate(provision.get("data") or []):
        ref = data.get("reference") if isinstance(data, dict) else None
        if isinstance(ref, dict):
            literal = ref.get("reference")
            yield f"{path}.data[{i}].reference.reference", literal if isinstance(literal, str) else ""
    for k, nested in enumerate(provision.get("provision") or []):
        yield from _data_references(nested, f"{path}.provision[{k}]")


def _action_codings(provision: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, coding) of every consentaction coding in ``provision`` and its nested provisions
    (the model has checked the shapes; anything else is skipped)."""
    if not isinstance(provision, dict):
        return
    for i, action in enumerate(provision.get("action") or []):
        codings = action.get("coding") if isinstance(action, dict) else None
        for j, coding in enumerate(codings if isinstance(codings, list) else []):
            if isinstance(coding, dict) and coding.get("system") == CONSENT_ACTION:
                yield f"{path}.action[{i}].coding[{j}]", coding
    for k, nested in enumerate(provision.get("provision") or []):
        yield from _action_codings(nested, f"{path}.provision[{k}]")
