"""Every decision, allow or deny, becomes an IHE BALP-shaped AuditEvent in the store, or for a
DICOM exchange a DICOM audit message (adapter.mapping.audit_dicom); the audit trail leaves the
adapter only through :func:`export_audit`, itself audited."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapter.consent import decide_audit_export
from adapter.errors import BusinessRuleViolation, Forbidden
from adapter.mapping.audit import audit_event, outbox_item_entity, patient_entity
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
from adapter.model.purpose import RequestContext
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
    """The outcome description of a permitted read answered with nothing (a 406), naming why."""
    return f"not sent: {why}"[:500]


class Auditor:
    def __init__(self, store: RecordStore, now: Callable[[], datetime]) -> None:
        self._store = store
        self._now = now

    def event(self, ctx: RequestContext, *, interaction: str, action: str, permitted: bool,
              reason: str | None, entities: Sequence[str], patient: Identifier | None,
              dicom: DicomAudit | None = None, outcome: str | None = None) -> dict[str, Any]:
        """Build (not store) an AuditEvent; ingest stores it in its own transaction. ``dicom``:
        a DICOM exchange, typed by its DICOM audit EventID (``interaction`` then only names the
        decision in the metrics); otherwise the BALP event of the FHIR ``interaction``.
        ``outcome``: the outcome code when it is not ``0``/``4`` by ``permitted`` (8, a serious
        failure)."""
        outcome = outcome or ("0" if permitted else "4")
        if dicom is not None:
            return dicom_audit_event(
                event=dicom.event, action=action, outcome=outcome, outcome_desc=reason,
                recorded=self._now(), client_address=ctx.client_address, actor=ctx.actor,
                purpose=(ctx.purpose.system, ctx.purpose.code), request_id=ctx.request_id, entities=entities,
                patient=patient, studies=dicom.studies, query=ctx.query if dicom.event == QUERY else None,
                client_ae_title=ctx.ae_title, instances=dicom.instances, adapter_requestor=dicom.pushed)
        return audit_event(
            interaction=interaction, action=action, outcome=outcome, outcome_desc=reason,
            recorded=self._now(), client_address=ctx.client_address, actor=ctx.actor,
            purpose=(ctx.purpose.system, ctx.purpose.code), request_id=ctx.request_id, entities=entities,
            patient=patient, query=ctx.query if interaction == "search-type" else None, client_ae_title=ctx.ae_title)

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
                          entities=entities, patient=patient, dicom=dicom)

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

    def record_search(self, ctx: RequestContext, *, found: Sequence[tuple[str, Identifier | None]],
                      reason: str, dicom: DicomAudit | None = None) -> None:
        """Store the AuditEvents of a permitted search that returned ``found`` (each reference
        with its record's patient): one per patient of the results, naming that patient and its
        resources, as IHE BALP PatientQuery asks (https://profiles.ihe.net/ITI/BALP/
        StructureDefinition-IHE.BasicAudit.PatientQuery.html: "one AuditEvent is created for
        every Patient identified in the resulting search set"), so the trail of a patient shows
        every search that returned their data; one naming no patient for what has none, or when
        nothing was returned (BALP Query). ``dicom``: a QIDO-RS search, a DICOM Query
        (:meth:`event`), split by patient the same way."""
        DECISIONS.labels("search-type", ctx.purpose.code, "permit").inc()
        by_patient: dict[Identifier | None, list[str]] = {}
        for ref, patient in found:
            by_patient.setdefault(patient, []).append(ref)
        self._store.append_audit(*(self.event(ctx, interaction="search-type", action="E", permitted=True,
                                              reason=reason, entities=refs, patient=patient, dicom=dicom)
                                   for patient, refs in (by_patient or {None: []}).items()))

    def record_not_sent(self, ctx: RequestContext, *, entities: Sequence[str], patient: Identifier | None,
                        why: str, dicom: DicomAudit | None = None) -> None:
        """Store the AuditEvent of a read its decision permitted and then answered with nothing
        (406: no representation the client accepts): a read that failed, outcome 4 saying why
        (:func:`not_sent_reason`), not a disclosure, and not counted as a decision again."""
        self._store.append_audit(self.event(ctx, interaction="read", action="R", permitted=False, entities=entities,
                                            patient=patient, reason=not_sent_reason(why), dicom=dicom))

    def record_transfers(self, ctx: RequestContext, *,
                         transferred: Sequence[tuple[str, Identifier, str, Decision]],
                         not_sent: str | None = None) -> None:
        """Store the AuditEvents of a retrieval of many DICOM instances (a WADO-RS study or
        series), each given as (its record, its patient, its Study Instance UID, its decision):
        one DICOM Instances Transferred message per patient and decision, naming each record and
        study once (IHE BALP: one AuditEvent per patient), in one transaction; not one event and
        one commit per instance. ``not_sent``: why the answer was refused after the decisions
        (406, nothing sent): the permitted transfers are then reads that failed, outcome 4 with
        that reason (not counted as decisions again, as a FHIR Binary's), the refused ones as
        they are."""
        groups: dict[tuple[Identifier, bool, str], tuple[list[str], list[str]]] = {}
        for ref, patient, study, decision in transferred:
            key = (patient, decision.permitted, decision.reason if not_sent is None or not decision.permitted
                   else not_sent_reason(not_sent))
            refs, studies = groups.setdefault(key, ([], []))
            refs.append(ref)
            studies.append(study)
        events = []
        for (patient, permitted, reason), (refs, studies) in groups.items():
            sent = permitted and not_sent is None
            if sent or not permitted:
                DECISIONS.labels("read", ctx.purpose.code, "permit" if permitted else "deny").inc()
            events.append(self.event(ctx, interaction="read", action="R", permitted=sent, reason=reason,
                                     entities=list(dict.fromkeys(refs)), patient=patient,
                                     dicom=DicomAudit.transferred(*dict.fromkeys(studies))))
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
            request_id=ctx.request_id, entities=records, patient=None, query=None, client_ae_title=ctx.ae_title,
            more_entities=[*(outbox_item_entity(item.id, item.destination) for item, _ in requeued),
                           *(patient_entity(p) for p in patients)])

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
                               request_id: str, missing: bool, reason: str) -> None:
        """Store the AuditEvent of a read (or a write: ``interaction`` create or update) refused for
        its purpose of use: none stated (403) or one that is not known (400). There is no purpose
        to record, and the metric's label is ``none`` or ``unknown`` (never the caller's text)."""
        DECISIONS.labels(interaction, "none" if missing else "unknown", "refused").inc()
        self._store.append_audit(audit_event(
            interaction=interaction, action={"read": "R", "create": "C", "update": "U"}.get(interaction, "E"),
            outcome="4",
            outcome_desc=reason, recorded=self._now(), client_address=client_address, actor=actor, purpose=None,
            request_id=request_id, entities=[], patient=None, query=None))


def export_audit(store: RecordStore, auditor: Auditor, ctx: RequestContext, tables: Tables, *, after: int = 0,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """The stored AuditEvents (sequence number, event with ``id`` the sequence number), in the
    order they were stored, after sequence number ``after``, recorded in [``since``, ``until``),
    at most ``limit``: for a security officer or a SIEM, which continues later from the last
    sequence number it got. The trail names patients, so taking it out is decided
    (adapter.consent.decide_audit_export: one of the organisation's operations, in care's full
    view) and audited, before the first event leaves (an AuditEvent of AuditEvents, purpose
    ``ctx.purpose``). Forbidden when the decision refuses it (the refusal is audited too)."""
    window = ", ".join(f"{k} {v}" for k, v in (("after", after or None), ("since", since), ("until", until),
                                                ("limit", limit)) if v is not None)
    decision = decide_audit_export(ctx.purpose, tables)
    auditor.record(ctx, interaction="search-type", action="E", decision=decision, entities=[], patient=None,
                   reason=f"audit trail export{': ' + window if window else ''}: {decision.reason}")
    if not decision.permitted:
        raise Forbidden(f"the audit trail cannot be exported for {ctx.purpose.code}: {decision.reason}")
    for count, (seq, event) in enumerate(store.iter_audit(after=after, since=since, until=until)):
        if limit is not None and count >= limit:
            return
        yield seq, {"resourceType": event.get("resourceType", "AuditEvent"), "id": str(seq),
                    **{k: v for k, v in event.items() if k not in ("resourceType", "id")}}
