"""The read decision: may this record be used for this purpose of use, and how is it shown?

Pure and fail-closed: anything the rules do not positively permit is denied. The services call
:func:`decide` for every read and audit both outcomes (STYLE.md §4).

Consent semantics follow FHIR R4 Consent (https://hl7.org/fhir/R4/consent.html): an ``active``
Consent whose provision is in its period, scoped to the record (provision.data) and covering
the purpose (provision.purpose, with v3-ActReason descendants) applies; a ``deny`` provision
that applies overrides every ``permit`` (deny wins).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple

from adapter.consent.rules import (
    ACTIVE,
    DENY,
    PERMIT,
    TREAT,
    WITHDRAWN,
    PurposeClass,
    classify_purpose,
    grant_covers,
    grant_in_force,
    grant_scope_matches,
    in_period,
    require_aware,
)
from adapter.mapping.tables import Tables
from adapter.model.consent import ConsentGrant
from adapter.model.decision import CareRefusal, Decision, View
from adapter.model.photo import ConsentMethod, PhotoSource
from adapter.model.purpose import PurposeOfUse
from adapter.model.record import AccessFacts

#: What a care reader is told of a refusal (Decision.care_refusal), and what break-glass overrode
#: (Decision.overrode): never a value of the record, only which rule of the patient's Consents
#: (which care reads anyway) applies, and what would let care read it.
CARE_REFUSALS: dict[CareRefusal, str] = {
    CareRefusal.CONSENT_DENIES: "denied by the patient's Consent: a Consent in force denies this purpose",
    CareRefusal.CONSENT_WITHDRAWN: "consent withdrawn: the patient withdrew the Consent that permitted care",
    CareRefusal.CONSENT_PENDING: "consent pending: no consent for care is documented for this photo; record a "
                                 "Consent permitting TREAT (written, where the organisation's policy requires it)",
    CareRefusal.NO_CONSENT: "no Consent in force permits care for this photo (none recorded, or its period has "
                            "ended): record a Consent permitting TREAT",
}

#: v3-ActCode obligation codes for the view a permitted purpose gets (standards.md §3.3).
OBLIGATIONS: dict[View, tuple[str, ...]] = {
    View.FULL: (),
    View.DEIDENTIFIED: ("DEID",),
    View.PSEUDONYMISED: ("PSEUD",),
}


def decide(purpose: PurposeOfUse, facts: AccessFacts, consents: Sequence[ConsentGrant], tables: Tables,
           now: datetime, *, resource_only: bool = False, released_data: frozenset[str] = frozenset()) -> Decision:
    """Decide whether the record described by ``facts`` may be read for ``purpose`` at ``now``.

    A record entered in error (``facts.entered_in_error``; FHIR R4 status ``entered-in-error``)
    is decided as below, then (:func:`_entered_in_error`): its image is released to no purpose
    (Binary bytes, the DICOM object, WADO-RS, forwarding), and its resources (the record itself,
    its Provenance: ``resource_only``, asked by a caller that sends no image bytes) only to the
    purposes that read the record in care's full view for care (care, break-glass), so an EHR can
    reconcile what it holds; every other purpose (TRAIN, HRESCH and kin) is refused as for a
    record it is not permitted. The default is the image's decision: a caller that forgets to
    say otherwise releases nothing of such a record.

    In order (the clinical images guidance, issue text):

    1. An unknown purpose (not in mappings/purposes.yaml, or not in the v3-ActReason system's
       URI: the edge, adapter.services.purpose, states an OID-given one by the URI) is denied.
    2. Break-glass purposes (``breakGlass.purposes`` and their descendants) are permitted, in the
       full view and flagged ``break_glass``, only if ``breakGlass.enabled``; consent is not
       evaluated, so this is the only way to read a consent-pending record.
    3. A purpose the policy names neither as care nor as explicit-consent is denied.
    4. A consent-pending record (stored without documented consent for care) is denied for
       every other purpose until the consent for care the ingest asked for is recorded: a
       Consent permitting TREAT, as at ingest (a Consent for COC or CLINTRL alone left the photo
       pending there, and the ingest's warning says "until a Consent permitting TREAT is
       recorded"). Then care reads it as any clinical photo (6), and an explicit-consent purpose
       needs that care Consent besides its own (7); a Consent for training alone never opens a
       photo whose taking has no documented consent. With ``writtenRequired`` only a written
       Consent documents it, as at ingest.
    5. An applicable ``deny`` grant covering the purpose denies it (deny wins), whatever the kind;
       except that a care purpose reads a Consent itself (``facts.consent_directive``): what the
       patient permits and denies must stay visible to the clinicians bound by it (a deny-all
       Consent hid itself, and the ETag its withdrawal needs, from care). Any other purpose reads
       only the Consents that permit it (:func:`_directive_verdict`): the permission its records
       rest on, not the patient's refusals.
    6. Care: ``document`` and ``secondary`` photos need no consent, nor does a photo (not
       consent-pending) from a colleague inside the organisation, who answers for consent for
       care (adapter.consent.ingest), until a Consent covering it for the purpose is withdrawn;
       a ``clinical`` photo needs an applicable active permit covering the purpose (a Consent
       for TREAT covers COC); when there is none but such a Consent was withdrawn (status
       ``inactive``), the policy's ``careAfterWithdrawal`` decides, for a colleague's photo too.
    7. Explicit-consent purposes (TRAIN, HRESCH, ...) need an applicable active permit that is
       not an implied consent (of a Consent itself: it is that permit, :func:`_directive_verdict`;
       ``released_data``, the records its provision.data names that the purpose is released,
       decided by the caller, goes into the decision, which the view shows no other of); the view is the purpose's (mappings/purposes.yaml) and a
       de-identified or pseudonymised view never stands in for consent. A permit for a parent
       purpose covers a child only when the child is shown no more fully (adapter.consent.rules:
       a Consent for HOPERAT, de-identified, does not open the whole record to RECORDMGT).

    ``consents`` may hold every Consent of the patient: each grant is checked for the patient,
    status, period and data scope here. ``facts.consent_ids`` is not used to grant anything.

    The decision names what it rested on, for its AuditEvent (IHE BALP AuthZconsent: the Consent
    used): the Consents that permit (5 to 7) or deny (4, 5) it, none where the policy alone
    decided (1 to 3) or care needed no consent (a document, a colleague's photo, a consent
    directive); under break-glass the denials it overrode (``overridden``); of a refusal for want
    of an active permit (6, 7), the withdrawn Consents that would have given it (``withdrawn``);
    and the policy's URI.

    A refusal under a purpose whose view is restricted is ``hidden`` (:func:`refusal_hidden`):
    answered as for an id that names nothing.

    What a care reader may be told (clinical-safety review 6): a refusal of a care purpose by
    steps 4 to 6 says why (``care_refusal``: a Consent denies it, the consent was withdrawn, the
    photo is consent pending, no Consent in force permits it; :data:`CARE_REFUSALS`); a break-glass
    permit says why care (TREAT) alone would have been refused (``overrode``). No other refusal,
    and no refusal of another purpose, carries a reason for the caller.
    """
    require_aware(now)
    code = purpose.code
    in_force = _in_force(facts, consents, now)
    permitted = _permitted_purposes(facts, consents, in_force, tables, now, released_data)

    policy = tables.policy.uri

    hidden = refusal_hidden(purpose, tables)

    def deny(reason: str, used: Sequence[ConsentGrant] = (), withdrawn: Sequence[ConsentGrant] = (),
             care_refusal: CareRefusal | None = None) -> Decision:
        return Decision(permitted=False, reason=reason, purpose=purpose, consent_ids=_ids(used),
                        consents=_refs(used), permitted_purposes=permitted, policy=policy,
                        withdrawn=_refs(withdrawn), care_refusal=care_refusal, hidden=hidden)

    klass = _purpose_class(purpose, tables)
    refusal = _refusal_of(klass, code, tables)
    if refusal is not None:
        return deny(refusal)
    if klass is PurposeClass.BREAK_GLASS:
        overridden = [g for g in in_force if g.decision == DENY and grant_covers(g, code, tables)]
        overrode = _care_would_refuse(facts, consents, in_force, tables, now)
        reason = f"break-glass ({code}): consent not evaluated; access audited"
        if overrode is not None:
            reason += f"; overrode what refuses care: {CARE_REFUSALS[overrode]}"
        decision = Decision(permitted=True, reason=reason,
                            purpose=purpose, view=View.FULL, break_glass=True, permitted_purposes=permitted,
                            overridden=_refs(overridden), policy=policy, overrode=overrode)
        return _entered_in_error(decision, klass, facts, resource_only)
    verdict = _by_consent(code, klass, facts, consents, in_force, tables, now, released_data)
    if not verdict.permitted:
        return deny(verdict.reason, verdict.used, verdict.withdrawn,
                    verdict.care_refusal if klass is PurposeClass.CARE else None)
    view = View(tables.purposes.codes[code].view)
    decision = Decision(permitted=True, reason=verdict.reason, purpose=purpose, view=view,
                        consent_ids=_ids(verdict.used), consents=_refs(verdict.used), permitted_purposes=permitted,
                        obligations=OBLIGATIONS[view], policy=policy,
                        pixels_may_identify=tables.pixels_may_identify(facts.kind),
                        released_data=released_data if facts.consent_directive and klass is not PurposeClass.CARE
                        else None)
    return _entered_in_error(decision, klass, facts, resource_only)


#: Why an entered-in-error record's image is refused to a purpose that sees its resource.
ENTERED_IN_ERROR_IMAGE = "the record was entered in error: its image is not released"
#: Why an entered-in-error record is refused to a purpose that is not care's.
ENTERED_IN_ERROR_RECORD = "the record was entered in error: it is released to care only"


def _entered_in_error(decision: Decision, klass: PurposeClass, facts: AccessFacts, resource_only: bool) -> Decision:
    """A permit of :func:`decide` for a record entered in error: kept for its resources under
    care or break-glass in the full view (FHIR R4 event-status: the record "should not have
    existed", yet a reader holding it must learn that it is withdrawn); refused otherwise, for
    its image always. No permitted purposes for its labels: it is released to none."""
    if not facts.entered_in_error:
        return decision
    cared = klass in (PurposeClass.CARE, PurposeClass.BREAK_GLASS) and decision.view is View.FULL
    if cared and resource_only:
        return dataclasses.replace(decision, reason=f"{decision.reason}; {ENTERED_IN_ERROR_IMAGE}",
                                   permitted_purposes=frozenset(), entered_in_error=True)
    return Decision(permitted=False, reason=ENTERED_IN_ERROR_IMAGE if cared else ENTERED_IN_ERROR_RECORD,
                    purpose=decision.purpose, consent_ids=decision.consent_ids, consents=decision.consents,
                    permitted_purposes=frozenset(), policy=decision.policy, entered_in_error=cared,
                    hidden=decision.view is not View.FULL)


def refusal_hidden(purpose: PurposeOfUse, tables: Tables) -> bool:
    """Whether a refusal under ``purpose`` is answered as for an id that names nothing (404, the
    same OperationOutcome: Decision.hidden), not 403. So for a purpose whose view is restricted
    (de-identified, pseudonymised: mappings/purposes.yaml): it names records by its view's own
    ids (adapter.mapping.released_ids), and a 403 would confirm that an id it holds or guesses
    (one a Consent's provision.data named, say) is a record's, one it may not see. A purpose
    with care's full view (care, break-glass, records management…) names records by care's ids
    and keeps its 403: care is told why (CARE_REFUSALS)."""
    entry = tables.purposes.codes.get(purpose.code) if purpose.system == tables.purposes.system else None
    return entry is not None and View(entry.view) is not View.FULL


def reads_consents_whole(purpose: PurposeOfUse, tables: Tables) -> bool:
    """Whether ``purpose`` reads a Consent whole, whatever it permits or denies (care, step 5 of
    :func:`decide`; break-glass, which decides nothing on Consents). Any other purpose reads only
    a Consent that permits it, shown as that permission (Decision.released_data): the caller need
    decide the records a Consent names (its ``released_data``) only when this is False."""
    klass = _purpose_class(purpose, tables)
    return klass in (PurposeClass.CARE, PurposeClass.BREAK_GLASS)


def refused_for_every_record(purpose: PurposeOfUse, tables: Tables) -> str | None:
    """Why :func:`decide` denies ``purpose`` whatever the record and its Consents (steps 1 to 3:
    an unknown purpose, break-glass the policy does not enable, a purpose the policy does not
    permit), else None. A search under such a purpose is refused outright, not an ordinary
    search that found nothing it may show: its audit says so (adapter.services.access)."""
    return _refusal_of(_purpose_class(purpose, tables), purpose.code, tables)


def _refusal_of(klass: PurposeClass, code: str, tables: Tables) -> str | None:
    if klass is PurposeClass.UNKNOWN:
        return "unknown purpose of use"
    if klass is PurposeClass.BREAK_GLASS and not tables.policy.break_glass.enabled:
        return f"break-glass ({code}) is not enabled by policy"
    if klass is PurposeClass.NOT_PERMITTED:
        return f"purpose {code} not permitted by policy"
    return None


class _Verdict(NamedTuple):
    permitted: bool
    reason: str
    used: Sequence[ConsentGrant] = ()
    #: of a refusal: the withdrawn Consents that would have permitted the purpose (its audit names them)
    withdrawn: Sequence[ConsentGrant] = ()
    #: of a refusal: why, as a care reader is told it (kept by :func:`decide` for care purposes only)
    care_refusal: CareRefusal | None = None


def _care_would_refuse(facts: AccessFacts, consents: Sequence[ConsentGrant], in_force: Sequence[ConsentGrant],
                       tables: Tables, now: datetime) -> CareRefusal | None:
    """Of a break-glass read: why care (TREAT, steps 4 to 6) alone would be refused the record,
    which break-glass overrides; None when care would read it, or the policy knows TREAT as no
    care purpose (nothing to compare with)."""
    if classify_purpose(TREAT, tables) is not PurposeClass.CARE:
        return None
    verdict = _by_consent(TREAT, PurposeClass.CARE, facts, consents, in_force, tables, now)
    return None if verdict.permitted else verdict.care_refusal


def _in_force(facts: AccessFacts, consents: Sequence[ConsentGrant], now: datetime) -> list[ConsentGrant]:
    """The grants that apply to the record now: active, in their period, its patient's, scoped to it."""
    return [g for g in consents if grant_in_force(g, facts.patient, facts.governed_by, now)]


def _by_consent(code: str, klass: PurposeClass, facts: AccessFacts, consents: Sequence[ConsentGrant],
                in_force: Sequence[ConsentGrant], tables: Tables, now: datetime,
                released_data: frozenset[str] = frozenset()) -> _Verdict:
    """Steps 4 to 7 of :func:`decide`: what the Consents (and the kind and source of the photo)
    say of ``code``, a care or explicit-consent purpose; ``in_force`` is :func:`_in_force` of
    ``consents`` (``consents`` also gives the withdrawn ones)."""
    if klass is PurposeClass.CARE and facts.consent_directive:
        return _Verdict(True, "a consent directive is readable for care, whatever it denies")
    # A consent-pending record has no consent of its own: the rules below deny it for care
    # until a Consent permitting TREAT is recorded for the patient (then it is documented).
    denials = [g for g in in_force if g.decision == DENY and grant_covers(g, code, tables)]
    if denials:
        return _Verdict(False, f"a Consent denies {code}", denials, care_refusal=CareRefusal.CONSENT_DENIES)

    if klass is PurposeClass.CARE:
        if not tables.kinds[facts.kind].needs_care_consent:
            return _Verdict(True, f"{facts.kind.value} photos need no consent for care")
        withdrawn = _withdrawn(facts, consents, code, tables, now)
        if facts.source is PhotoSource.COLLEAGUE_INTERNAL and not facts.consent_pending and not withdrawn:
            # the colleague answered for consent; a Consent covering the photo that the patient
            # has since withdrawn is decided below as for any clinical photo (safety review 3)
            return _Verdict(True, "sent by a colleague inside the organisation, who is responsible for consent")
        grants = [g for g in (_care_documented(in_force, tables) if facts.consent_pending else in_force)
                  if g.decision == PERMIT and grant_covers(g, code, tables)]
        if grants:
            return _Verdict(True, f"active Consent permits {code}", grants)
        if withdrawn and tables.policy.consent.care_after_withdrawal and not facts.consent_pending:
            return _Verdict(True, f"consent withdrawn; policy keeps clinical photos readable for {code}", withdrawn)
        why = CareRefusal.CONSENT_PENDING if facts.consent_pending else \
            CareRefusal.CONSENT_WITHDRAWN if withdrawn else CareRefusal.NO_CONSENT
        return _Verdict(False, f"no active consent for {code}", withdrawn=withdrawn, care_refusal=why)

    if facts.consent_directive:
        return _directive_verdict(code, facts, consents, tables, now, released_data)
    if facts.consent_pending and not _care_documented(in_force, tables):
        return _Verdict(False, "consent pending: no consent for care is documented for this photo; readable "
                               "only under break-glass")
    grants = [g for g in in_force
              if g.decision == PERMIT and not g.implied and grant_covers(g, code, tables)]
    if grants and tables.policy.consent.written_required_for_explicit:
        # the organisation's policy: consent for education, research... is written (clinical
        # safety review 7: writtenRequired, which concerns care, let verbal consent open them)
        written = [g for g in grants if g.method is ConsentMethod.WRITTEN]
        if not written:
            return _Verdict(False, f"the Consent permitting {code} is not documented as written, which the "
                                   "organisation's policy requires for this purpose", grants)
        grants = written
    if grants:
        return _Verdict(True, f"active Consent permits {code}", grants)
    withdrawn = [g for g in _withdrawn(facts, consents, code, tables, now) if not g.implied]
    return _Verdict(False, f"no active consent permitting {code}", withdrawn=withdrawn)


def _directive_verdict(code: str, facts: AccessFacts, consents: Sequence[ConsentGrant], tables: Tables,
                       now: datetime, released_data: frozenset[str]) -> _Verdict:
    """Step 7 for a Consent itself (``facts.consent_directive``) under an explicit-consent purpose,
    none of whose denials applies (step 5): released only when it is an active Consent, in its
    period, whose provision permits ``code`` and is no implied consent (written where the policy
    requires it for these purposes): the permission the purpose's records rest on. Its
    refusals (a deny, a withdrawn or implied Consent, one for care or another purpose) are the
    patient's business with care, not the researcher's. A permit limited to records
    (provision.data) none of which the purpose is released (``released_data``) permits nothing
    the reader sees: refused too (its data would name only withheld records)."""
    own = [g for g in consents
           if f"Consent/{g.id}" == facts.governed_by and g.patient == facts.patient and g.status == ACTIVE
           and in_period(g, now) and g.decision == PERMIT and not g.implied and grant_covers(g, code, tables)]
    if own and tables.policy.consent.written_required_for_explicit:
        own = [g for g in own if g.method is ConsentMethod.WRITTEN]
    if not own:
        return _Verdict(False, f"the Consent does not permit {code}: only the Consents permitting it are released to it")
    if all(g.data_refs for g in own) and not any(g.data_refs & released_data for g in own):
        return _Verdict(False, f"the Consent permits {code} only for records not released for it", own)
    return _Verdict(True, f"the Consent permits {code}", own)


#: The purpose the audit trail's export must be (or descend from): the organisation's own
#: operations (v3-ActReason HOPERAT), not the care or the request of one patient.
AUDIT_EXPORT_PARENT = "HOPERAT"


def decide_audit_export(purpose: PurposeOfUse, tables: Tables) -> Decision:
    """May the audit trail be taken out for ``purpose``? The trail is the organisation's record of
    who read what, about every patient: no consent applies, but the purpose must be one of the
    organisation's operations (HOPERAT or a descendant the policy knows) with care's full view,
    since the events name patients (RECORDMGT in the shipped table). A de-identified or
    pseudonymised purpose, a care or break-glass purpose, or a patient's request is refused."""
    code = purpose.code
    klass = _purpose_class(purpose, tables)
    if klass is PurposeClass.UNKNOWN:
        return Decision(permitted=False, reason="unknown purpose of use", purpose=purpose)
    if AUDIT_EXPORT_PARENT not in tables.purposes.ancestors(code) or klass is PurposeClass.BREAK_GLASS:
        return Decision(permitted=False, reason=f"the audit trail is exported for the organisation's operations "
                                                f"({AUDIT_EXPORT_PARENT} or a descendant), not for {code}",
                        purpose=purpose)
    view = View(tables.purposes.codes[code].view)
    if view is not View.FULL:
        return Decision(permitted=False, reason=f"the audit trail names patients: {code} is a {view.value} purpose",
                        purpose=purpose)
    return Decision(permitted=True, reason=f"audit trail export for {code}", purpose=purpose, view=View.FULL)


#: The organisation's operations (v3-ActReason HOPERAT): besides the purposes with care's full view,
#: the one purpose ``GET /outbox`` may state, seeing every item withheld.
OUTBOX_LIST_OPERATION = "HOPERAT"


def decide_outbox_list(purpose: PurposeOfUse, tables: Tables) -> Decision:
    """May the forwarding outbox be listed for ``purpose``? It lists the items of every patient,
    each naming its record and original SOP Instance UID only where the purpose sees that record
    in care's full view (adapter.services.access.ScopedReader.shown_in_full), and otherwise its
    destination, status and times. A purpose with care's full view (care, break-glass, records
    management, a patient's request: each record is then decided on its own) or the
    organisation's operations themselves (HOPERAT: every item withheld) may; the purposes of
    education and research, de-identified or pseudonymised (TRAIN, MLTRAINING, HRESCH, …), have
    nothing to do with forwarding identified photos to the PACS, and even a withheld item says
    that a patient had a photo forwarded then, one who may have consented to none of them."""
    code = purpose.code
    if _purpose_class(purpose, tables) is PurposeClass.UNKNOWN:
        return Decision(permitted=False, reason="unknown purpose of use", purpose=purpose)
    view = View(tables.purposes.codes[code].view)
    if view is View.FULL or code == OUTBOX_LIST_OPERATION:
        return Decision(permitted=True, reason=f"forwarding outbox for {code}", purpose=purpose, view=view)
    return Decision(permitted=False, reason=f"the forwarding outbox is read for care, records management or the "
                                            f"organisation's operations ({OUTBOX_LIST_OPERATION}), not for {code}",
                    purpose=purpose)


#: The operation that puts failed forwarding back in hand (v3-ActReason RECORDMGT, records
#: management): besides care, the one purpose ``POST /outbox/requeue`` may state.
OUTBOX_REQUEUE_OPERATION = "RECORDMGT"


def decide_outbox_requeue(purpose: PurposeOfUse, tables: Tables) -> Decision:
    """May failed outbox items be put back for forwarding, for ``purpose``? A requeue has the
    patients' objects disclosed to a PACS again. The forwarder sends them for care (TREAT), and
    decides each again against its patient's Consents right before its C-STORE, so no consent is
    decided here; what is decided is whether the caller's purpose is one that resends identified
    objects to the care record: care itself (the policy's ``carePurposes`` or a descendant: TREAT,
    COC, CLINTRL) or records management (RECORDMGT or a descendant), with care's full view. Not
    break-glass (an emergency read is no reason to resend anything), nor a de-identified or
    pseudonymised purpose (TRAIN, HRESCH: it sees no identified record, and may not have one
    sent), a patient's request or another of the organisation's operations."""
    code = purpose.code
    klass = _purpose_class(purpose, tables)
    if klass is PurposeClass.UNKNOWN:
        return Decision(permitted=False, reason="unknown purpose of use", purpose=purpose)
    full = View(tables.purposes.codes[code].view) is View.FULL
    records_management = OUTBOX_REQUEUE_OPERATION in tables.purposes.ancestors(code) \
        and klass is not PurposeClass.BREAK_GLASS
    if full and (klass is PurposeClass.CARE or records_management):
        return Decision(permitted=True, reason=f"outbox requeue for {code}", purpose=purpose, view=View.FULL)
    return Decision(permitted=False, reason=f"failed outbox items are requeued for care or records management "
                                            f"({OUTBOX_REQUEUE_OPERATION}), not for {code}", purpose=purpose)


#: The one purpose that marks a record entered in error (v3-ActReason RECORDMGT, records management).
ENTERED_IN_ERROR_OPERATION = "RECORDMGT"


def decide_mark_entered_in_error(purpose: PurposeOfUse, tables: Tables) -> Decision:
    """May a record be marked ``entered-in-error`` (PATCH of its status) for ``purpose``? It
    withdraws the record from every reader and its image from every path, for good: a correction
    of the record, which is records management (RECORDMGT or a descendant, with care's full
    view), not care, a break-glass read nor any other purpose. No consent is decided: the mark
    releases nothing (the answer is an OperationOutcome, not the record)."""
    code = purpose.code
    klass = _purpose_class(purpose, tables)
    if klass is PurposeClass.UNKNOWN:
        return Decision(permitted=False, reason="unknown purpose of use", purpose=purpose)
    full = View(tables.purposes.codes[code].view) is View.FULL
    if full and klass is not PurposeClass.BREAK_GLASS and ENTERED_IN_ERROR_OPERATION in tables.purposes.ancestors(code):
        return Decision(permitted=True, reason=f"records management ({code}): record marked entered-in-error",
                        purpose=purpose, view=View.FULL)
    return Decision(permitted=False, reason=f"a record is marked entered-in-error for records management "
                                            f"({ENTERED_IN_ERROR_OPERATION}), not for {code}", purpose=purpose)


def decide_outbox_follow_up(purpose: PurposeOfUse, tables: Tables) -> Decision | None:
    """For the forwarding outbox only: may ``purpose`` see the record reference and SOP Instance
    UID of an item whose record was entered in error? Records management (the purposes that may
    mark a record so, :func:`decide_mark_entered_in_error`) may: an item of such a record that
    was sent (or was being sent when it was marked) is a copy it must correct at the PACS (IHE
    IOCM), and nothing else tells it which. None for every other purpose, which keeps the
    record's own decision (:func:`decide`: withheld, as its image is released to no one)."""
    if not decide_mark_entered_in_error(purpose, tables).permitted:
        return None
    return Decision(permitted=True, reason=f"records management ({purpose.code}): the record was entered in error; "
                                           "its outbox items are shown to correct a copy forwarded at the PACS",
                    purpose=purpose, view=View.FULL, policy=tables.policy.uri)


def permitted_purposes(facts: AccessFacts, consents: Sequence[ConsentGrant], tables: Tables,
                       now: datetime) -> frozenset[str]:
    """The purposes the record may be read for without break-glass, for its security labels.

    The candidates are the purposes listed by applicable active permit grants, every care
    purpose of the policy for kinds and sources that need no consent for care, and the care
    purposes of a withdrawn Consent when ``careAfterWithdrawal``; a candidate is listed only
    when :func:`decide` permits it (steps 4 to 7), so a label never names a purpose the record
    is refused for (a denied, implied-only or consent-pending one). Codes are listed as granted
    (a grant for TREAT yields TREAT, which covers its descendants); a candidate one of whose
    descendants (break-glass aside) is refused would name that one too, so its children are
    candidates instead: with a Consent permitting TREAT and one denying CLINTRL the label is COC,
    not TREAT. Fail closed: TREAT is then permitted but not labelled, as no v3-ActReason code
    says "TREAT but not CLINTRL".
    """
    return _permitted_purposes(facts, consents, _in_force(facts, consents, now), tables, now)


def _permitted_purposes(facts: AccessFacts, consents: Sequence[ConsentGrant], in_force: Sequence[ConsentGrant],
                        tables: Tables, now: datetime, released_data: frozenset[str] = frozenset()) -> frozenset[str]:
    rules = tables.policy.consent
    codes: set[str] = set()
    for grant in in_force:
        if grant.decision == PERMIT:
            codes.update(grant.purposes)
    if not tables.kinds[facts.kind].needs_care_consent or facts.source is PhotoSource.COLLEAGUE_INTERNAL:
        codes.update(rules.care_purposes)
    elif rules.care_after_withdrawal:
        codes.update(c for c in rules.care_purposes if _withdrawn(facts, consents, c, tables, now))
    verdicts: dict[str, bool] = {}

    def permits(code: str) -> bool:
        if code not in verdicts:
            klass = classify_purpose(code, tables)
            verdicts[code] = (klass in (PurposeClass.CARE, PurposeClass.EXPLICIT)
                              and _by_consent(code, klass, facts, consents, in_force, tables, now,
                                              released_data).permitted)
        return verdicts[code]

    # A label covers the purposes under it (v3-ActReason): one whose descendant is refused would
    # name a refused purpose (TREAT when a Consent denies CLINTRL), so its children stand in for it.
    listed: set[str] = set()
    todo = [c for c in codes if c in tables.purposes.codes]
    seen: set[str] = set()  # each code once: a parent chain that loops (load_tables refuses it) ended never
    while todo:
        code = todo.pop()
        if code in seen:
            continue
        seen.add(code)
        below = tables.purposes.descendants(code)
        if permits(code) and all(permits(d) for d in below
                                 if classify_purpose(d, tables) is not PurposeClass.BREAK_GLASS):
            listed.add(code)
        else:
            todo.extend(c for c in below if tables.purposes.codes[c].parent == code)
    return frozenset(listed)


def _withdrawn(facts: AccessFacts, consents: Sequence[ConsentGrant], code: str, tables: Tables,
               now: datetime) -> list[ConsentGrant]:
    """Withdrawn (``inactive``) permits that would otherwise cover ``code`` for this record.

    Only the period start is checked: withdrawing a Consent usually closes its period, so the
    end says when it was withdrawn, not that it never applied.
    """
    return [g for g in consents
            if g.status == WITHDRAWN and g.decision == PERMIT
            and grant_scope_matches(g, facts.patient, facts.governed_by)
            and (g.period_start is None or g.period_start <= now)
            and grant_covers(g, code, tables)]


def _care_documented(in_force: Sequence[ConsentGrant], tables: Tables) -> list[ConsentGrant]:
    """The grants in force that are the documented consent for care a consent-pending photo
    awaits. As at ingest (adapter.consent.ingest): a permit covering TREAT, and only a written
    one when the policy requires written consent."""
    return [g for g in in_force if g.decision == PERMIT and grant_covers(g, TREAT, tables)
            and (not tables.policy.consent.written_required or g.method is ConsentMethod.WRITTEN)]


def _purpose_class(purpose: PurposeOfUse, tables: Tables) -> PurposeClass:
    """The class of ``purpose`` in the policy: UNKNOWN for a code of another system than the
    purpose table's, whatever its code."""
    if purpose.system != tables.purposes.system:
        return PurposeClass.UNKNOWN
    return classify_purpose(purpose.code, tables)


def _ids(grants: Sequence[ConsentGrant]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(g.id for g in grants))


def _refs(grants: Sequence[ConsentGrant]) -> tuple[str, ...]:
    """The Consents of ``grants`` as literal references, each once (a Consent's nested denials
    are grants of the same Consent), versioned where the version is known."""
    return tuple(dict.fromkeys(g.reference for g in grants))
