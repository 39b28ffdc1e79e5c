"""Every decision, allow or deny, becomes an IHE BALP-shaped AuditEvent in the store (for a request
that is an IHE MHD transaction, ``RequestContext.mhd``, in MHD's shape for it:
adapter.mapping.audit_mhd), or for a DICOM exchange a DICOM audit message
(adapter.mapping.audit_dicom); the adapter's start and stop and every use of the audit trail are
audited as IHE ATNA asks (adapter.mapping.audit_application). The audit trail leaves the adapter
only through :func:`export_audit`, itself audited."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapter.consent import decide_audit_export
from adapter.errors import (
    AdapterError,
    BusinessRuleViolation,
    Forbidden,
    PurposeOfUseMissing,
    UnknownPurposeOfUse,
)
from adapter.mapping.audit import audit_event, consent_entity, outbox_item_entity, patient_entity
from adapter.mapping.audit_application import Application, application_activity_event, audit_log_used_event
from adapter.mapping.audit_dicom import (
    INSTANCES_TRANSFERRED,
    QUERY,
    dicom_audit_event,
    refusal_outcome,
    security_alert_event,
)
from adapter.mapping.tables import Tables
from adapter.metrics import DECISIONS
from adapter.model.decision import Decision
from adapter.model.dicom import DicomInstance, OutboxItem
from adapter.model.photo import Identifier
from adapter.model.purpose import MhdTransaction, PurposeOfUse, RequestContext
from adapter.services.purpose import parse_purpose_of_use
from adapter.store.port import RecordStore


@dataclass(frozen=True)
class DicomAudit:
    """What makes an AuditEvent a DICOM audit message: its DICOM EventID (``INSTANCES_TRANSFERRED``
    or ``QUERY``), the Study Instance UIDs of the instances transferred and, where the message
    names them, their SOP Instance UIDs; ``pushed``: the adapter initiated the transfer (the
    forwarding C-STORE SCU), so it is the requestor and the peer the Destination."""

    event: str
    studies: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    pushed: bool = False

    @classmethod
    def transferred(cls, *studies: str, instances: tuple[str, ...] = ()) -> DicomAudit:
        """DICOM Instances Transferred (PS3.15 A.5.3.7) of instances of ``studies``."""
        return cls(INSTANCES_TRANSFERRED, studies, instances)

    @classmethod
    def pushed_to_peer(cls, *studies: str, instances: tuple[str, ...] = ()) -> DicomAudit:
        """DICOM Instances Transferred of instances of ``studies`` the adapter pushes to a peer
        (a PACS it forwards to): the adapter the requesting Source, the peer the Destination
        (PS3.15 A.5.3.7, adapter.mapping.audit_dicom)."""
        return cls(INSTANCES_TRANSFERRED, studies, instances, pushed=True)

    @classmethod
    def query(cls) -> DicomAudit:
        """Query (PS3.15 A.5.3.10)."""
        return cls(QUERY)


def not_sent_reason(why: str) -> str:
    """The outcome description of a permitted read answered with nothing (a 406, a 404 for a
    version that does not exist, a 412 for one If-Match does not name), naming why."""
    return f"not sent: {why}"[:500]


#: entity.description of a Consent break-glass set aside (Decision.overridden).
OVERRIDDEN = "denies this purpose; overridden by break-glass"
#: entity.description of a withdrawn Consent that would have permitted a refused read (Decision.withdrawn).
WITHDRAWN = "withdrawn: would have permitted this purpose"


def _decided_by(decision: Decision | None) -> tuple[list[dict[str, Any]], str | None]:
    """The Consent entities and the policy URI of ``decision`` for its AuditEvent: the Consents
    it rested on, then those break-glass overrode, then those whose withdrawal refused it (IHE
    BALP AuthZconsent)."""
    if decision is None:
        return [], None
    return ([consent_entity(ref) for ref in decision.consents]
            + [consent_entity(ref, OVERRIDDEN) for ref in decision.overridden]
            + [consent_entity(ref, WITHDRAWN) for ref in decision.withdrawn]), decision.policy


#: A result of a search as its audit names it: the record ("Media/abc"), its patient, and the
#: decision that released it (None where nothing was decided).
Found = tuple[str, Identifier | None, Decision | None]


def _merged(decisions: Sequence[Decision | None]) -> Decision | None:
    """One decision naming what ``decisions`` (a search's, of one patient's results) rested on:
    each Consent once, in order, those break-glass overrode, those withdrawn, and the policy."""
    made = [d for d in decisions if d is not None]
    if not made:
        return None
    return dataclasses.replace(made[0], consents=tuple(dict.fromkeys(c for d in made for c in d.consents)),
                               overridden=tuple(dict.fromkeys(c for d in made for c in d.overridden)),
                               withdrawn=tuple(dict.fromkeys(c for d in made for c in d.withdrawn)),
                               policy=next((d.policy for d in made if d.policy), None))


class OnePatientDecided:
    """Whose records a search decided (released, counted or withheld), while they are one
    patient's: the patient and the distinct decisions on them (each Consent set once, so memory
    stays bounded however many records a count reads). A search naming a patient decides only
    theirs. Of records of several patients (or of none), nothing: the search's event then names
    only what it released, not every patient withheld."""

    def __init__(self) -> None:
        self._patient: Identifier | None = None
        self._several = False
        self._decisions: dict[tuple[object, ...], Decision] = {}

    def add(self, patient: Identifier | None, decision: Decision) -> None:
        if self._several:
            return
        if patient is None or (self._patient is not None and patient != self._patient):
            self._several = True
            self._decisions.clear()
            return
        self._patient = patient
        self._decisions.setdefault((decision.consents, decision.overridden, decision.withdrawn, decision.policy),
                                   decision)

    def concerned(self) -> list[tuple[Identifier, Decision]]:
        """The patient with each decision on their records; none unless one patient's."""
        if self._several or self._patient is None:
            return []
        return [(self._patient, d) for d in self._decisions.values()]


class Auditor:
    def __init__(self, store: RecordStore, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now

    def event(self, ctx: RequestContext, *, interaction: str, action: str, permitted: bool,
              reason: str | None, entities: Sequence[str], patient: Identifier | None,
              dicom: DicomAudit | None = None, outcome: str | None = None,
              decision: Decision | None = None) -> dict[str, Any]:
        """Build (not store) an AuditEvent; ingest stores it in its own transaction. ``dicom``:
        a DICOM exchange, typed by its DICOM audit EventID (``interaction`` then only names the
        decision in the metrics); otherwise the BALP event of the FHIR ``interaction``.
        ``outcome``: the outcome code when it is not ``0``/``4`` by ``permitted`` (8, a serious
        failure). ``decision``: the read decision the event records, whose Consents and policy
        it names (its outcome is ``permitted``'s). A request that is an IHE MHD transaction
        (``ctx.mhd``) is audited in that transaction's shape, refusals and failures included."""
        outcome = outcome or ("0" if permitted else "4")
        consents, policy = _decided_by(decision)
        if dicom is not None:
            return dicom_audit_event(
                event=dicom.event, action=action, outcome=outcome, outcome_desc=reason,
                recorded=self._now(), client_address=ctx.client_address, actor=ctx.actor,
                purpose=(ctx.purpose.system, ctx.purpose.code), request_id=ctx.audit_request_id, entities=entities,
                patient=patient, studies=dicom.studies, query=ctx.query if dicom.event == QUERY else None,
                client_ae_title=ctx.ae_title, instances=dicom.instances, more_entities=consents, policy=policy,
                adapter_requestor=dicom.pushed, server_url=ctx.server_url, forwarded_for=ctx.forwarded_for,
                client_request_id=ctx.client_request_id)
        return audit_event(
            interaction=interaction, action=action, outcome=outcome, outcome_desc=reason,
            recorded=self._now(), client_address=ctx.client_address, actor=ctx.actor,
            purpose=(ctx.purpose.system, ctx.purpose.code), request_id=ctx.audit_request_id, entities=entities,
            patient=patient, query=ctx.query if interaction == "search-type" else None, client_ae_title=ctx.ae_title,
            more_entities=consents, policy=policy, mhd=ctx.mhd, server_url=ctx.server_url,
            forwarded_for=ctx.forwarded_for, client_request_id=ctx.client_request_id)

    def record(self, ctx: RequestContext, *, interaction: str, action: str, decision: Decision | None,
               entities: Sequence[str], patient: Identifier | None, reason: str | None = None,
               refused: bool = False, dicom: DicomAudit | None = None) -> None:
        """Store an AuditEvent of a read: its outcome is the decision's, or a refusal (``refused``:
        a request turned down before any record was decided, e.g. a search on what its view hides).
        ``dicom``: a DICOM exchange (:meth:`event`)."""
        self._store.append_audit(self.decision_event(ctx, interaction=interaction, action=action, decision=decision,
                                                     entities=entities, patient=patient, reason=reason,
                                                     refused=refused, dicom=dicom))

    def decision_event(self, ctx: RequestContext, *, interaction: str, action: str, decision: Decision | None,
                       entities: Sequence[str], patient: Identifier | None, reason: str | None = None,
                       refused: bool = False, dicom: DicomAudit | None = None) -> dict[str, Any]:
        """The AuditEvent :meth:`record` stores, counted as a decision in the metrics, for the
        caller to store in the transaction of what it audits (an outbox item marked sent)."""
        permitted = (decision.permitted if decision is not None else True) and not refused
        why = reason if reason is not None else (decision.reason if decision is not None else None)
        DECISIONS.labels(interaction, ctx.purpose.code, "refused" if refused else "permit" if permitted else "deny").inc()
        return self.event(ctx, interaction=interaction, action=action, permitted=permitted, reason=why,
                          entities=entities, patient=patient, dicom=dicom, decision=decision)

    def record_refused_transfer(self, ctx: RequestContext, *, error: BaseException, reason: str,
                                patient: Identifier | None, dicom: DicomAudit) -> None:
        """Store the DICOM Instances Transferred message of an object received and not kept
        (a C-STORE request or a STOW-RS part refused, or one the adapter failed to keep because of
        ``error``): action C, outcome 4 or 8 (adapter.mapping.audit_dicom.refusal_outcome) with
        ``reason``, naming ``patient`` only where the caller knows it. A refusal by the consent
        rules or the policy (BusinessRuleViolation) is a decision, counted as one in the metrics."""
        if isinstance(error, BusinessRuleViolation):
            DECISIONS.labels("create", ctx.purpose.code, "refused").inc()
        self._store.append_audit(self.event(ctx, interaction="create", action="C", permitted=False, reason=reason,
                                            entities=[], patient=patient, dicom=dicom,
                                            outcome=refusal_outcome(error)))

    def record_refused_write(self, ctx: RequestContext, *, interaction: str, action: str, error: AdapterError,
                             entities: Sequence[str], patient: Identifier | None) -> None:
        """Store the AuditEvent of a write refused (a Consent create or update the adapter turned
        down: invalid, against a rule, a stale If-Match…): outcome 4 with the refusal's
        diagnostics, as a refused POST /photos is, naming ``patient`` (the patient the write
        concerns, where known) and ``entities``. A refusal by a rule (BusinessRuleViolation) is a
        decision, counted as one in the metrics, as :meth:`record_refused_transfer` counts it."""
        if isinstance(error, BusinessRuleViolation):
            DECISIONS.labels(interaction, ctx.purpose.code, "refused").inc()
        self._store.append_audit(self.event(ctx, interaction=interaction, action=action, permitted=False,
                                            reason=error.diagnostics, entities=entities, patient=patient))

    def record_failed_write(self, ctx: RequestContext, *, interaction: str, action: str, reason: str,
                            patient: Identifier | None) -> None:
        """Store the AuditEvent of a write the adapter failed to make (its store refused it for
        want of room, or failed): outcome 8 Serious failure with ``reason`` (ATNA, as IHE BALP
        records a Create or Update that failed; the DICOM receipts' failures are the same,
        :meth:`record_refused_transfer`), naming ``patient`` when the request named one and no
        record (none was stored). Not a decision: the metrics do not count it as one."""
        self._store.append_audit(self.event(ctx, interaction=interaction, action=action, permitted=False,
                                            reason=reason, entities=[], patient=patient, outcome="8"))

    def record_search(self, ctx: RequestContext, *, found: Sequence[Found],
                      reason: str, dicom: DicomAudit | None = None,
                      concerned: Sequence[tuple[Identifier, Decision]] = ()) -> None:
        """Store the AuditEvents of a permitted search that returned ``found`` (each reference
        with its record's patient): one per patient of the results, naming that patient and its
        resources, as IHE BALP PatientQuery asks (https://profiles.ihe.net/ITI/BALP/
        StructureDefinition-IHE.BasicAudit.PatientQuery.html: "one AuditEvent is created for
        every Patient identified in the resulting search set"), so the trail of a patient shows
        every search that returned their data; one naming no patient for what has none, or when
        nothing was returned (BALP Query). ``dicom``: a QIDO-RS search, a DICOM Query
        (:meth:`event`), split by patient the same way. Each event names what the decisions that
        released that patient's results rested on (their Consents, the policy), as a read's.
        ``concerned``: the patient whose records the search counted or withheld (all of them one
        patient's: :class:`OnePatientDecided`), with the decisions on them: their event names
        the patient and what those decisions rested on (a withdrawn Consent described so), as
        a read of one of those records would, and no record it did not release. A count
        (``_summary=count``) discloses how many records the patient has; a search withholding
        them is a decision on them."""
        DECISIONS.labels("search-type", ctx.purpose.code, "permit").inc()
        by_patient: dict[Identifier | None, tuple[list[str], list[Decision | None]]] = {}
        for ref, patient, decision in found:
            refs, decisions = by_patient.setdefault(patient, ([], []))
            refs.append(ref)
            decisions.append(decision)
        for patient, decision in concerned:
            by_patient.setdefault(patient, ([], []))[1].append(decision)
        self._store.append_audit(*(self.event(ctx, interaction="search-type", action="E", permitted=True,
                                              reason=reason, entities=refs, patient=patient, dicom=dicom,
                                              decision=_merged(decisions))
                                   for patient, (refs, decisions) in (by_patient or {None: ([], [])}).items()))

    def record_not_sent(self, ctx: RequestContext, *, entities: Sequence[str], patient: Identifier | None,
                        why: str, dicom: DicomAudit | None = None, decision: Decision | None = None,
                        interaction: str = "read") -> None:
        """Store the AuditEvent of a read (or vread: ``interaction``) its decision permitted and
        then answered with nothing (406: no representation the client accepts; 404: no such
        version; 412: If-Match names another version): a read that failed, outcome 4 saying why
        (:func:`not_sent_reason`), not a disclosure, and not counted as a decision again. What
        the permitted ``decision`` rested on (its Consents, the policy) is named as on a read."""
        self._store.append_audit(self.event(ctx, interaction=interaction, action="R", permitted=False,
                                            entities=entities, patient=patient, reason=not_sent_reason(why),
                                            dicom=dicom, decision=decision))

    def record_not_found(self, ctx: RequestContext, *, interaction: str, entities: Sequence[str], reason: str,
                         dicom: DicomAudit | None = None) -> None:
        """Store the AuditEvent of a read by an id (a read, vread or history; ``dicom``: a DICOM
        retrieve by UIDs) that names nothing in the view of the caller's purpose (404): a read
        that failed, outcome 4 with ``reason``, naming what was asked as the caller sent it
        (``entities``: its ``Type/id``; ``dicom``'s studies and instances: its UIDs) and no
        patient: nothing was found, and nothing is looked up in another view to name one. IHE
        BALP and ATNA record failed attempts: one with an id copied from care's receipts, under a
        purpose whose view shows other ids, shows in the trail as an attempt on that record. Not
        a decision: the metrics do not count it as one."""
        self._store.append_audit(self.event(ctx, interaction=interaction, action="R", permitted=False, reason=reason,
                                            entities=entities, patient=None, dicom=dicom))

    def record_transfers(self, ctx: RequestContext, *,
                         transferred: Sequence[tuple[str, Identifier, str, Decision]],
                         not_sent: str | None = None) -> None:
        """Store the AuditEvents of a retrieval of many DICOM instances (a WADO-RS study or
        series), each given as (its record, its patient, its Study Instance UID, its decision):
        one DICOM Instances Transferred message per patient and decision (its outcome and reason),
        naming each record and study once and the Consents the decisions rested on, each once (as a
        search's event per patient: each photo's own implied Consent makes no event of its own;
        review dpo F7), in one transaction (IHE BALP: one AuditEvent per patient); not one event
        and one commit per instance. ``not_sent``: why the answer was refused after the decisions
        (406, nothing sent): the permitted transfers are then reads that failed, outcome 4 with
        that reason (not counted as decisions again, as a FHIR Binary's), the refused ones as
        they are."""
        groups: dict[tuple[Identifier, bool, str], tuple[list[str], list[str], list[Decision]]] = {}
        for ref, patient, study, decision in transferred:
            key = (patient, decision.permitted, decision.reason if not_sent is None or not decision.permitted
                   else not_sent_reason(not_sent))
            refs, studies, decisions = groups.setdefault(key, ([], [], []))
            refs.append(ref)
            studies.append(study)
            decisions.append(decision)
        events = []
        for (patient, permitted, reason), (refs, studies, decisions) in groups.items():
            sent = permitted and not_sent is None
            if sent or not permitted:
                DECISIONS.labels("read", ctx.purpose.code, "permit" if permitted else "deny").inc()
            events.append(self.event(ctx, interaction="read", action="R", permitted=sent, reason=reason,
                                     entities=list(dict.fromkeys(refs)), patient=patient,
                                     dicom=DicomAudit.transferred(*dict.fromkeys(studies)),
                                     decision=_merged(decisions)))
        self._store.append_audit(*events)

    def requeue_event(self, ctx: RequestContext, *, requeued: Sequence[tuple[OutboxItem, DicomInstance | None]],
                      reason: str) -> dict[str, Any]:
        """The AuditEvent of one ``POST /outbox/requeue`` that put ``requeued`` (each outbox item
        as it was, failed, with its DICOM instance where the store has it) back to pending: the
        request's patients' objects will be disclosed to a PACS again. One event per request,
        shaped as IHE BALP Update (subtype update, action U, the caller the requestor with its
        purpose of use, its X-Request-Id): each item an entity (object-role 20 Job, its id and
        destination), each record and each patient named once. Built, not stored: the store
        writes it in the transaction of the requeue (RecordStore.requeue_outbox); not counted
        as a decision here (:meth:`count_decision` once it committed)."""
        records = [f"{i.record_type}/{i.record_id}" for _, i in requeued if i is not None]
        patients = list(dict.fromkeys(i.patient for _, i in requeued if i is not None))
        return audit_event(
            interaction="update", action="U", outcome="0", outcome_desc=reason, recorded=self._now(),
            client_address=ctx.client_address, actor=ctx.actor, purpose=(ctx.purpose.system, ctx.purpose.code),
            request_id=ctx.audit_request_id, entities=records, patient=None, query=None, client_ae_title=ctx.ae_title,
            more_entities=[*(outbox_item_entity(item.id, item.destination) for item, _ in requeued),
                           *(patient_entity(p) for p in patients)], server_url=ctx.server_url,
            forwarded_for=ctx.forwarded_for, client_request_id=ctx.client_request_id)

    @staticmethod
    def count_decision(interaction: str, ctx: RequestContext, *, permitted: bool) -> None:
        """Count a decision audited by an event built with :meth:`requeue_event` (or another
        built without :meth:`decision_event`) in the metrics."""
        DECISIONS.labels(interaction, ctx.purpose.code, "permit" if permitted else "deny").inc()

    def record_security_alert(self, *, start: datetime, end: datetime, count: int, description: str,
                              peer_address: str | None, calling_ae_title: str | None) -> None:
        """Store the Security Alert (DICOM PS3.15 A.5.3.11) of ``count`` associations rejected
        between ``start`` and ``end`` for ``description`` (adapter.mapping.audit_dicom;
        adapter.services.association_audit decides when)."""
        self._store.append_audit(security_alert_event(
            recorded=self._now(), start=start, end=end, count=count, description=description,
            peer_address=peer_address, calling_ae_title=calling_ae_title))

    def record_refused_purpose(self, *, interaction: str, actor: str, client_address: str | None,
                               request_id: str, missing: bool, reason: str, entities: Sequence[str] = (),
                               query: bytes | None = None, mhd: MhdTransaction | None = None,
                               server_url: str | None = None, dicom: DicomAudit | None = None,
                               forwarded_for: str | None = None, client_request_id: str | None = None) -> None:
        """Store the AuditEvent of a read (or a write: ``interaction`` create or update) refused for
        its purpose of use: none stated (403) or one that is not known (400). There is no purpose
        to record, and the metric's label is ``none`` or ``unknown`` (never the caller's text).
        What was asked is named as the caller sent it (IHE BALP Read, Query): ``entities`` the
        resource its path names (nothing read, so no patient), ``query`` a search's request;
        ``mhd``: the IHE MHD transaction the request is, whose shape the refusal takes;
        ``server_url``: the adapter's base URL (agent[server]'s network address); ``dicom``: the
        DICOM audit message the refusal is (STOW-RS), instead of a BALP event; ``forwarded_for``,
        ``client_request_id``: as RequestContext has them."""
        DECISIONS.labels(interaction, "none" if missing else "unknown", "refused").inc()
        if dicom is not None:
            self._store.append_audit(dicom_audit_event(
                event=dicom.event, action="C", outcome="4", outcome_desc=reason, recorded=self._now(),
                client_address=client_address, actor=actor, purpose=None, request_id=request_id, entities=entities,
                patient=None, studies=dicom.studies, query=None, server_url=server_url, forwarded_for=forwarded_for,
                client_request_id=client_request_id))
            return
        self._store.append_audit(audit_event(
            interaction=interaction, action={"read": "R", "create": "C", "update": "U"}.get(interaction, "E"),
            outcome="4",
            outcome_desc=reason, recorded=self._now(), client_address=client_address, actor=actor, purpose=None,
            request_id=request_id, entities=entities, patient=None, query=query, mhd=mhd, server_url=server_url,
            forwarded_for=forwarded_for, client_request_id=client_request_id))

    def record_application_activity(self, application: Application, *, start: bool, launcher: str | None = None,
                                    outcome: str = "0", reason: str | None = None) -> None:
        """Store the Application Activity (DICOM PS3.15 A.5.3.1) of ``application`` starting
        (``start``) or stopping, started by the operating-system account ``launcher``
        (adapter.mapping.audit_application)."""
        self._store.append_audit(application_activity_event(
            start=start, recorded=self._now(), application=application, launcher=launcher, outcome=outcome,
            outcome_desc=reason))

    def record_audit_log_used(self, *, operator: str, purpose: PurposeOfUse | None, permitted: bool, reason: str,
                              application: Application, audit_log: str) -> None:
        """Store the Audit Log Used (DICOM PS3.15 A.5.3.2) of an export of the audit log
        ``audit_log`` by the operating-system account ``operator`` for ``purpose`` (None: the
        one stated is not known), permitted or refused (outcome 4) for ``reason``."""
        DECISIONS.labels("audit-export", purpose.code if purpose is not None else "unknown",
                         "permit" if permitted else "deny" if purpose is not None else "refused").inc()
        self._store.append_audit(audit_log_used_event(
            recorded=self._now(), outcome="0" if permitted else "4", outcome_desc=reason, operator=operator,
            operator_display=f"operator {operator} (python -m adapter audit)",
            purpose=(purpose.system, purpose.code) if purpose is not None else None, application=application,
            audit_log=audit_log))


def export_audit(store: RecordStore, auditor: Auditor, tables: Tables, *, operator: str, purpose: str,
                 application: Application, audit_log: str, after: int = 0, since: datetime | None = None,
                 until: datetime | None = None, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """The stored AuditEvents (sequence number, event with ``id`` the sequence number), in the
    order they were stored, after sequence number ``after``, recorded in [``since``, ``until``),
    at most ``limit``: for a security officer or a SIEM, which continues later from the last
    sequence number it got. The trail names patients, so taking it out is decided
    (adapter.consent.decide_audit_export: one of the organisation's operations, in care's full
    view, ``purpose`` as the operator stated it) and audited before the first event leaves: an
    Audit Log Used (DICOM PS3.15 A.5.3.2, IHE ATNA ITI-20) of the audit log ``audit_log`` (its
    URI) by the operating-system account ``operator``, through ``application``. A purpose that
    is not known (UnknownPurposeOfUse, PurposeOfUseMissing) or that the decision refuses
    (Forbidden) is refused, and the refusal audited (outcome 4)."""
    window = ", ".join(f"{k} {v}" for k, v in (("after", after or None), ("since", since), ("until", until),
                                                ("limit", limit)) if v is not None)
    what = f"audit trail export{': ' + window if window else ''}"

    def audit(purpose_of_use: PurposeOfUse | None, permitted: bool, reason: str) -> None:
        auditor.record_audit_log_used(operator=operator, purpose=purpose_of_use, permitted=permitted,
                                      reason=f"{what}: {reason}", application=application, audit_log=audit_log)

    try:
        purpose_of_use = parse_purpose_of_use(purpose, tables)
    except (PurposeOfUseMissing, UnknownPurposeOfUse) as exc:
        audit(None, False, exc.diagnostics or "unknown purpose of use")
        raise
    decision = decide_audit_export(purpose_of_use, tables)
    audit(purpose_of_use, decision.permitted, decision.reason)
    if not decision.permitted:
        raise Forbidden(f"the audit trail cannot be exported for {purpose_of_use.code}: {decision.reason}")
    for count, (seq, event) in enumerate(store.iter_audit(after=after, since=since, until=until)):
        if limit is not None and count >= limit:
            return
        yield seq, {"resourceType": event.get("resourceType", "AuditEvent"), "id": str(seq),
                    **{k: v for k, v in event.items() if k not in ("resourceType", "id")}}
