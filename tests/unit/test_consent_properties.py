"""Properties of the consent decision (adapter.consent.decision, grants, rules), checked with
Hypothesis over generated photos, Consents and purposes of use.

Each property is a promise of a module docstring or of the README ("The rules"): fail closed,
deny wins, withdrawal, scope to the patient and the record, the provision's period, the kinds
that need no consent for care, the purpose labels, and a decision that depends on the Consents
and not on the order they come in. The examples are derandomized and bounded, so the file is
fast and CI never sees a new example from one run to the next; a failure Hypothesis found is
kept below as an explicit regression test.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from adapter.consent import (
    ANY_PURPOSE,
    IngestAssessment,
    PurposeClass,
    assess_ingest,
    classify_purpose,
    decide,
    grants_from_consent,
    permitted_purposes,
)
from adapter.consent.rules import grant_covers, grant_in_force, grant_scope_matches
from adapter.errors import AdapterError, ConsentRequired
from adapter.mapping.photo import build_photo_resources
from adapter.mapping.tables import Tables
from adapter.model.consent import ConsentGrant
from adapter.model.decision import Decision, View
from adapter.model.photo import ConsentMethod, Identifier, PhotoKind, PhotoMetadata, PhotoSource
from adapter.model.purpose import V3_ACT_REASON, PurposeOfUse
from adapter.model.record import AccessFacts
from tests.support.fhir_factories import policy_variant, stored_image

pytestmark = pytest.mark.unit

#: Derandomized (the same examples on every run and machine), no example database, no deadline
#: (the 2-core CI machine is shared), and few enough examples that the file runs in seconds.
#: CONSENT_PROPERTY_EXAMPLES raises the count for a deeper local search (say 2000); CI leaves it unset.
EXAMPLES = int(os.environ.get("CONSENT_PROPERTY_EXAMPLES", "100"))
PROPERTY = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MRN = "urn:example:mrn"
PATIENT = Identifier(system=MRN, value="P-123")
OTHER_PATIENT = Identifier(system=MRN, value="P-999")
RECORD = "Media/m1"
OTHER_RECORD = "Media/m2"

class _Variant(Tables):
    """The tables of one policy variant, shown by its switches in a falsifying example."""

    def __repr__(self) -> str:
        consent, glass = self.policy.consent, self.policy.break_glass
        return (f"policy(writtenRequired={consent.written_required}, allowPending={consent.allow_pending}, "
                f"careAfterWithdrawal={consent.care_after_withdrawal}, breakGlass={glass.enabled})")


def _variant(written: bool, after: bool, glass: bool, pending: bool = False) -> Tables:
    tables = policy_variant(consent={"written_required": written, "care_after_withdrawal": after,
                                     "allow_pending": pending}, break_glass={"enabled": glass})
    return _Variant(**{f.name: getattr(tables, f.name) for f in dataclasses.fields(tables)})


#: Every combination of the policy switches the decision reads (consent.writtenRequired,
#: consent.careAfterWithdrawal, breakGlass.enabled), built once: the tables are immutable.
POLICIES: dict[tuple[bool, bool, bool], Tables] = {
    switches: _variant(*switches) for switches in itertools.product((False, True), repeat=3)}
SHIPPED = policy_variant()
SERVED = tuple(sorted(SHIPPED.purposes.codes))
STATUSES = ("active", "inactive", "rejected", "entered-in-error", "draft", "proposed")
#: Instants around NOW: long before, just before, NOW itself, just after, long after.
OFFSETS = (timedelta(days=-400), timedelta(days=-30), timedelta(seconds=-1), timedelta(0),
           timedelta(seconds=1), timedelta(days=30))


def klass(code: str, tables: Tables = SHIPPED) -> PurposeClass:
    return classify_purpose(code, tables)


CARE = tuple(c for c in SERVED if klass(c) is PurposeClass.CARE)
EXPLICIT = tuple(c for c in SERVED if klass(c) is PurposeClass.EXPLICIT)
BREAK_GLASS = tuple(c for c in SERVED if klass(c) is PurposeClass.BREAK_GLASS)
NOT_BREAK_GLASS = tuple(c for c in SERVED if c not in BREAK_GLASS)


def descendants(code: str, tables: Tables = SHIPPED) -> list[str]:
    """The served codes under ``code`` in the v3-ActReason hierarchy (not ``code`` itself)."""
    return [c for c in tables.purposes.codes if c != code and code in tables.purposes.ancestors(c)]


def covered(labels: frozenset[str], tables: Tables) -> set[str]:
    """The served purposes a set of purpose labels covers: each label and its descendants."""
    return {c for c in tables.purposes.codes if not labels.isdisjoint(tables.purposes.ancestors(c))}


# -- strategies ------------------------------------------------------------------------------------

policies = st.sampled_from(sorted(POLICIES)).map(POLICIES.__getitem__)
#: Open periods and active Consents of this patient are the common case, drawn more often, so
#: that Consents in force meet each other (a permit and a deny) in a few dozen examples.
instants = st.one_of(st.none(), st.sampled_from(OFFSETS).map(lambda d: NOW + d))
statuses = st.one_of(st.just("active"), st.sampled_from(STATUSES))
patients = st.sampled_from((PATIENT, PATIENT, PATIENT, OTHER_PATIENT))
scopes = st.one_of(st.just(frozenset()), st.frozensets(st.sampled_from((RECORD, OTHER_RECORD)), min_size=1))
#: Purposes from the served set (parents and children of the hierarchy), and a few that are not.
grant_purposes = st.frozensets(st.sampled_from(SERVED + ("SYSDEV", "EDU")), max_size=3)


@st.composite
def access_facts(draw: st.DrawFn, kinds: Sequence[PhotoKind] = tuple(PhotoKind),
                 directive: bool | None = None) -> AccessFacts:
    """A photo's facts; now and then those of a Consent itself, which adapter.services.access
    gives as a document from a clinician (decide(), step 5)."""
    if (draw(st.booleans()) and draw(st.booleans())) if directive is None else directive:   # 1 in 4
        return AccessFacts(governed_by="Consent/c9", patient=PATIENT, kind=PhotoKind.DOCUMENT,
                           source=PhotoSource.CLINICIAN, consent_directive=True)
    return AccessFacts(governed_by=RECORD, patient=PATIENT, kind=draw(st.sampled_from(kinds)),
                       source=draw(st.sampled_from(PhotoSource)), consent_pending=draw(st.booleans()))


@st.composite
def consent_grants(draw: st.DrawFn, *, patient: st.SearchStrategy[Identifier] | None = None,
                   status: st.SearchStrategy[str] | None = None,
                   decision: st.SearchStrategy[str] | None = None,
                   data_refs: st.SearchStrategy[frozenset[str]] | None = None,
                   start: st.SearchStrategy[datetime | None] | None = None,
                   end: st.SearchStrategy[datetime | None] | None = None) -> ConsentGrant:
    """A grant as grants_from_consent makes them: any status, permit or deny, purposes (a deny
    maybe of every purpose), a period around NOW, data scoped to this record or another."""
    chosen = draw(st.sampled_from(("permit", "deny")) if decision is None else decision)
    purposes = draw(grant_purposes)
    if chosen == "deny" and draw(st.booleans()):
        purposes = frozenset({ANY_PURPOSE})
    implied = draw(st.booleans())
    return ConsentGrant(
        id=draw(st.sampled_from(("c1", "c2", "c3", "c4", "c5"))),
        patient=draw(patients if patient is None else patient),
        status=draw(statuses if status is None else status),
        decision=chosen, purposes=purposes,
        method=ConsentMethod.IMPLIED if implied else draw(st.sampled_from((None, ConsentMethod.VERBAL,
                                                                           ConsentMethod.WRITTEN))),
        period_start=draw(instants if start is None else start), period_end=draw(instants if end is None else end),
        data_refs=draw(scopes if data_refs is None else data_refs),
        implied=implied)


grant_lists = st.lists(consent_grants(), max_size=5)
purposes_of_use = st.sampled_from(SERVED).map(PurposeOfUse)


def run(code: str, facts: AccessFacts, grants: Sequence[ConsentGrant], tables: Tables) -> Decision:
    return decide(PurposeOfUse(code), facts, grants, tables, NOW)


def outcome(d: Decision) -> tuple[object, ...]:
    """What a decision says, with the Consents it rests on as a set (their order is the input's)."""
    return (d.permitted, d.reason, d.view, d.break_glass, frozenset(d.consent_ids), d.permitted_purposes,
            d.obligations)


def in_force(grants: Sequence[ConsentGrant], facts: AccessFacts) -> list[ConsentGrant]:
    return [g for g in grants if grant_in_force(g, facts.patient, facts.governed_by, NOW)]


# -- fail closed -----------------------------------------------------------------------------------

@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies,
       code=st.one_of(st.sampled_from(("SYSDEV", "EDU", "EDUC", "treat", "", "*")), st.text(max_size=8)),
       )
def test_an_unknown_purpose_is_refused_whatever_the_consents(facts: AccessFacts, grants: list[ConsentGrant],
                                                            tables: Tables, code: str) -> None:
    if code in tables.purposes.codes:
        return
    d = run(code, facts, grants, tables)
    assert not d.permitted and d.reason == "unknown purpose of use"


@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(SERVED),
       system=st.sampled_from(("http://snomed.info/sct", "urn:oid:2.16.840.1.113883.5.8", "")))
def test_a_purpose_of_another_code_system_is_refused(facts: AccessFacts, grants: list[ConsentGrant],
                                                     tables: Tables, code: str, system: str) -> None:
    """The edge (adapter.services.purpose) states every purpose in the canonical v3-ActReason
    URI; anything else reaching decide() is unknown, even the OID form of the same system."""
    assert not decide(PurposeOfUse(code, system), facts, grants, tables, NOW).permitted


@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(EXPLICIT))
def test_an_explicit_purpose_needs_an_active_express_permit_for_this_record(
        facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, code: str) -> None:
    """Step 7: TRAIN, HRESCH... are permitted only on an active, in-period, non-implied permit of
    this patient, scoped to this record, covering the purpose, and no applicable deny of it."""
    d = run(code, facts, grants, tables)
    live = in_force(grants, facts)
    if d.permitted:
        assert any(g.decision == "permit" and not g.implied and grant_covers(g, code, tables) for g in live)
        assert not any(g.decision == "deny" and grant_covers(g, code, tables) for g in live)
        assert set(d.consent_ids) <= {g.id for g in live}
        assert d.view is View(tables.purposes.codes[code].view) and not d.break_glass
    # and none at all: refused, whatever the photo
    assert not run(code, facts, [], tables).permitted


@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(NOT_BREAK_GLASS))
def test_a_consent_pending_photo_opens_only_with_a_documented_care_consent(
        facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, code: str) -> None:
    """Step 4: a consent-pending clinical photo is refused for every purpose but break-glass until
    a Consent permitting TREAT (written, under writtenRequired) is in force for it, as at ingest."""
    facts = AccessFacts(governed_by=RECORD, patient=PATIENT, kind=PhotoKind.CLINICAL, source=facts.source,
                        consent_pending=True)
    documented = [g for g in in_force(grants, facts) if g.decision == "permit" and grant_covers(g, "TREAT", tables)
                  and (not tables.policy.consent.written_required or g.method is ConsentMethod.WRITTEN)]
    if run(code, facts, grants, tables).permitted:
        assert documented
    assert not run(code, facts, [g for g in grants if g not in documented], tables).permitted


# -- break-glass -----------------------------------------------------------------------------------

@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(BREAK_GLASS))
def test_break_glass_is_the_policy_switch_alone(facts: AccessFacts, grants: list[ConsentGrant], tables: Tables,
                                                code: str) -> None:
    d = run(code, facts, grants, tables)
    assert d.permitted is tables.policy.break_glass.enabled
    assert d.break_glass is d.permitted
    if d.permitted:
        assert d.view is View.FULL and d.consent_ids == ()


# -- withdrawal ------------------------------------------------------------------------------------

@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(NOT_BREAK_GLASS))
def test_withdrawing_every_consent_never_permits_more_for_a_non_care_purpose(
        facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, code: str) -> None:
    withdrawn = [dataclasses.replace(g, status="inactive") for g in grants]
    after = run(code, facts, withdrawn, tables)
    if klass(code, tables) is not PurposeClass.CARE:
        assert not after.permitted
    elif after.permitted and not run(code, facts, grants, tables).permitted:
        # care only: a withdrawn deny no longer denies, and careAfterWithdrawal keeps a clinical
        # photo readable once its permit is withdrawn (whatever the period's end: decision._withdrawn)
        assert (any(g.decision == "deny" for g in grants)
                or tables.policy.consent.care_after_withdrawal)


@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(NOT_BREAK_GLASS))
def test_withdrawing_permits_never_permits_more_unless_the_policy_keeps_care(
        facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, code: str) -> None:
    withdrawn = [dataclasses.replace(g, status="inactive") if g.decision == "permit" else g for g in grants]
    before, after = run(code, facts, grants, tables), run(code, facts, withdrawn, tables)
    if after.permitted and not before.permitted:
        assert tables.policy.consent.care_after_withdrawal and klass(code, tables) is PurposeClass.CARE
        assert facts.kind is PhotoKind.CLINICAL and not facts.consent_pending


# -- deny wins -------------------------------------------------------------------------------------

@st.composite
def applicable_denials(draw: st.DrawFn, code: str, record: str) -> ConsentGrant:
    """An active deny of ``code`` (or of an ancestor, or of every purpose) in force for ``record``."""
    grant = draw(consent_grants(patient=st.just(PATIENT), status=st.just("active"), decision=st.just("deny"),
                                data_refs=st.sampled_from((frozenset(), frozenset({record}),
                                                           frozenset({record, OTHER_RECORD}))),
                                start=st.sampled_from((None, NOW - timedelta(days=30), NOW)),
                                end=st.sampled_from((None, NOW, NOW + timedelta(days=30)))))
    covering = st.sampled_from(SHIPPED.purposes.ancestors(code) + [ANY_PURPOSE])
    return dataclasses.replace(grant, purposes=grant.purposes | {draw(covering)})


@PROPERTY
@given(data=st.data(), facts=access_facts(), grants=grant_lists, tables=policies,
       denied=st.sampled_from(NOT_BREAK_GLASS), asked=st.sampled_from(SERVED))
def test_adding_a_deny_never_permits_more_and_never_permits_its_purpose(
        data: st.DataObject, facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, denied: str,
        asked: str) -> None:
    deny = data.draw(applicable_denials(denied, facts.governed_by))
    at = data.draw(st.integers(0, len(grants)))
    more = [*grants[:at], deny, *grants[at:]]
    if run(asked, facts, more, tables).permitted:
        assert run(asked, facts, grants, tables).permitted
    d = run(denied, facts, more, tables)
    # step 5's one exception: care reads a Consent itself, whatever it denies
    assert not d.permitted or (facts.consent_directive and klass(denied, tables) is PurposeClass.CARE)
    # and the labels (each covering the purposes under it) cover no more
    assert (covered(permitted_purposes(facts, more, tables, NOW), tables)
            <= covered(permitted_purposes(facts, grants, tables, NOW), tables))


@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, extra=consent_grants(decision=st.just("deny")),
       code=st.sampled_from(SERVED))
def test_any_deny_grant_never_permits_more(facts: AccessFacts, grants: list[ConsentGrant], tables: Tables,
                                           extra: ConsentGrant, code: str) -> None:
    if run(code, facts, [*grants, extra], tables).permitted:
        assert run(code, facts, grants, tables).permitted


# -- scope: the patient, the record, the period ----------------------------------------------------

@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(SERVED),
       foreign=st.lists(st.one_of(consent_grants(patient=st.just(OTHER_PATIENT)),
                                  consent_grants(data_refs=st.just(frozenset({OTHER_RECORD})))), min_size=1,
                        max_size=3))
def test_a_consent_about_another_patient_or_record_changes_nothing(
        facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, code: str,
        foreign: list[ConsentGrant]) -> None:
    assert outcome(run(code, facts, [*grants, *foreign], tables)) == outcome(run(code, facts, grants, tables))


@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(SERVED),
       outside=st.lists(st.one_of(
           consent_grants(start=st.sampled_from((NOW + timedelta(seconds=1), NOW + timedelta(days=30)))),
           consent_grants(status=st.just("active"),
                          end=st.sampled_from((NOW - timedelta(seconds=1), NOW - timedelta(days=30))))),
           min_size=1, max_size=3))
def test_a_consent_outside_its_period_grants_and_denies_nothing(
        facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, code: str,
        outside: list[ConsentGrant]) -> None:
    """Not begun (any status), or over (active): the provision is not in force. A withdrawn
    Consent whose period is over still keeps care under careAfterWithdrawal (its end says when it
    was withdrawn: decision._withdrawn), so that case is the withdrawal property's."""
    assert outcome(run(code, facts, [*grants, *outside], tables)) == outcome(run(code, facts, grants, tables))


@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, code=st.sampled_from(SERVED),
       status=st.sampled_from(("rejected", "entered-in-error", "draft", "proposed")))
def test_a_consent_never_in_force_changes_nothing(facts: AccessFacts, grants: list[ConsentGrant], tables: Tables,
                                                  code: str, status: str) -> None:
    """Only ``active`` applies, and ``inactive`` (withdrawn) under careAfterWithdrawal."""
    others = [dataclasses.replace(g, status=status) for g in grants]
    assert run(code, facts, others, tables).permitted is run(code, facts, [], tables).permitted


# -- kinds and the rules table ---------------------------------------------------------------------

@PROPERTY
@given(facts=access_facts(kinds=(PhotoKind.DOCUMENT, PhotoKind.SECONDARY)), grants=grant_lists, tables=policies,
       code=st.sampled_from(CARE))
def test_document_and_secondary_photos_are_read_for_care_without_consent(
        facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, code: str) -> None:
    assert run(code, facts, [], tables).permitted
    d = run(code, facts, grants, tables)
    denied = any(g.decision == "deny" and grant_covers(g, code, tables) for g in in_force(grants, facts))
    assert d.permitted is (not denied or facts.consent_directive)
    if d.permitted:
        assert d.view is View.FULL and d.obligations == ()


@PROPERTY
@given(facts=access_facts(kinds=(PhotoKind.CLINICAL,)), grants=grant_lists, tables=policies,
       code=st.sampled_from(CARE))
def test_clinical_photos_for_care_follow_the_rules_table(facts: AccessFacts, grants: list[ConsentGrant],
                                                         tables: Tables, code: str) -> None:
    """decide()'s steps 4 to 6 for a clinical photo and a care purpose, restated from its
    docstring (and the ingest rule that an internal colleague answers for consent for care)."""
    rules = tables.policy.consent
    live = in_force(grants, facts)
    # step 4: a consent-pending photo opens with the ingest's consent for care, for TREAT
    documents = (lambda g: grant_covers(g, "TREAT", tables)
                 and (not rules.written_required or g.method is ConsentMethod.WRITTEN))
    withdrawn = [g for g in grants if g.status == "inactive" and g.decision == "permit"
                 and grant_scope_matches(g, facts.patient, facts.governed_by)
                 and (g.period_start is None or g.period_start <= NOW) and grant_covers(g, code, tables)]
    denied = any(g.decision == "deny" and grant_covers(g, code, tables) for g in live)
    consented = any(g.decision == "permit" and grant_covers(g, code, tables)
                    and (not facts.consent_pending or documents(g)) for g in live)
    sender_answers = facts.source is PhotoSource.COLLEAGUE_INTERNAL and not facts.consent_pending
    kept = bool(withdrawn) and rules.care_after_withdrawal and not facts.consent_pending
    expected = facts.consent_directive or (not denied and (sender_answers or consented or kept))
    assert run(code, facts, grants, tables).permitted is expected


# -- the purpose labels ----------------------------------------------------------------------------

@settings(PROPERTY, max_examples=max(EXAMPLES // 2, 1))   # decides every purpose per example
@given(facts=access_facts(), grants=grant_lists, tables=policies, asked=purposes_of_use)
def test_the_labels_are_the_purposes_decide_permits(facts: AccessFacts, grants: list[ConsentGrant],
                                                    tables: Tables, asked: PurposeOfUse) -> None:
    """README: a record's meta.security purpose labels name exactly the purposes the decision
    permits it for without break-glass; a label covers its descendants in v3-ActReason
    (permitted_purposes: "a grant for TREAT yields TREAT, which covers its descendants")."""
    labels = permitted_purposes(facts, grants, tables, NOW)
    assert decide(asked, facts, grants, tables, NOW).permitted_purposes == labels
    assert labels <= set(tables.purposes.codes)
    for label in labels:
        assert klass(label, tables) in (PurposeClass.CARE, PurposeClass.EXPLICIT)
        # the label and every (non-break-glass) purpose it covers are permitted
        for code in [label, *descendants(label, tables)]:
            if klass(code, tables) is not PurposeClass.BREAK_GLASS:
                assert run(code, facts, grants, tables).permitted, (label, code)
    # every permitted purpose is covered by a label, unless a purpose under it is refused (then no
    # label may cover it, and its permitted descendants are labelled instead)
    for code in tables.purposes.codes:
        if klass(code, tables) is not PurposeClass.BREAK_GLASS and run(code, facts, grants, tables).permitted:
            assert (not labels.isdisjoint(tables.purposes.ancestors(code))
                    or any(klass(d, tables) is not PurposeClass.BREAK_GLASS
                           and not run(d, facts, grants, tables).permitted for d in descendants(code, tables))), code


# -- determinism -----------------------------------------------------------------------------------

@PROPERTY
@given(facts=access_facts(), grants=grant_lists, tables=policies, asked=purposes_of_use,
       order=st.randoms(use_true_random=False))
def test_the_decision_does_not_depend_on_the_order_of_the_consents(
        facts: AccessFacts, grants: list[ConsentGrant], tables: Tables, asked: PurposeOfUse, order: Any) -> None:
    shuffled = list(grants)
    order.shuffle(shuffled)
    first = decide(asked, facts, grants, tables, NOW)
    assert decide(asked, facts, grants, tables, NOW) == first
    assert outcome(decide(asked, facts, shuffled, tables, NOW)) == outcome(first)


# -- what the ingest accepts, the read decision honours ------------------------------------------

INGEST_POLICIES: dict[tuple[bool, bool], Tables] = {
    (written, pending): _variant(written, False, True, pending)
    for written, pending in itertools.product((False, True), repeat=2)}


@st.composite
def photo_metadata(draw: st.DrawFn) -> PhotoMetadata:
    """What a capture app sends: any kind and source (a colleague named, with the discussion's
    note), with or without a consent statement (purposes, method, a form, a date around now)."""
    source = draw(st.sampled_from(PhotoSource))
    data: dict[str, Any] = {"patient": {"system": MRN, "value": PATIENT.value},
                            "kind": draw(st.sampled_from(PhotoKind)).value, "source": source.value}
    if source in (PhotoSource.COLLEAGUE_INTERNAL, PhotoSource.COLLEAGUE_EXTERNAL):
        data["colleague"] = {"name": "Dr A", "discussionNote": "seen together"}
    if draw(st.booleans()):
        statement: dict[str, Any] = {
            "purposes": sorted(draw(st.sets(st.sampled_from(SERVED), min_size=1, max_size=3))),
            "method": draw(st.sampled_from(ConsentMethod)).value}
        if draw(st.booleans()):
            statement["form"] = "JVBERi0xLjQK"                    # "%PDF-1.4"
        when = draw(st.sampled_from((None, "2025-05-30", "2025-06-01", "2025-06-02",
                                     "2025-06-01T13:00:00+02:00", "2025-06-01T20:00:00Z")))
        if when is not None:
            statement["date"] = when
        data["consent"] = statement
    return PhotoMetadata.model_validate(data)


def ingest_then_read(meta: PhotoMetadata, existing: list[ConsentGrant], tables: Tables,
                     ) -> tuple[IngestAssessment, AccessFacts, list[ConsentGrant]] | None:
    """The ingest of one photo as the service does it (assessment, then the resources and the
    Consents it records), and what a read of it then decides on; None when the ingest refuses."""
    try:
        assessment = assess_ingest(meta, existing, tables, NOW)
    except AdapterError:
        return None
    built = build_photo_resources(
        meta, stored_image(), record_id="m1", binary_id="b1", provenance_id="p1", consent_ids=("n1", "n2"),
        assessment_notes=assessment.notes, assessment_warnings=assessment.warnings,
        consent_pending=assessment.consent_pending, implied_purposes=assessment.implied_purposes,
        tables=tables, now=NOW)
    record = f"{built.record['resourceType']}/m1"
    facts = AccessFacts(governed_by=record, patient=PATIENT, kind=meta.kind, source=meta.source,
                        consent_pending=assessment.consent_pending)
    recorded = [g for c in built.consents for g in grants_from_consent(c)]
    return assessment, facts, [*existing, *recorded]


@PROPERTY
@given(meta=photo_metadata(), existing=st.lists(consent_grants(patient=st.just(PATIENT)), max_size=3),
       tables=st.sampled_from(sorted(INGEST_POLICIES)).map(INGEST_POLICIES.__getitem__),
       code=st.sampled_from(NOT_BREAK_GLASS))
def test_a_photo_the_ingest_keeps_is_read_as_the_ingest_said(meta: PhotoMetadata, existing: list[ConsentGrant],
                                                             tables: Tables, code: str) -> None:
    """A clinical photo kept with its consent for care documented is readable for TREAT at once;
    one kept consent-pending is readable for nothing but break-glass (ingest.PENDING_WARNING); a
    document or secondary photo for care unless a Consent denies it; a purpose the statement
    names is readable when it is express consent (not implied) and nothing denies it."""
    result = ingest_then_read(meta, existing, tables)
    event("ingest refused" if result is None else "pending" if result[0].consent_pending else "kept")
    if result is None:
        return
    assessment, facts, grants = result
    d = run(code, facts, grants, tables)
    live = in_force(grants, facts)
    denied = any(g.decision == "deny" and grant_covers(g, code, tables) for g in live)
    if assessment.consent_pending:
        assert not d.permitted
        return
    if code == "TREAT":
        assert d.permitted is not denied
    if (meta.consent is not None and code in meta.consent.purposes and not denied
            and meta.consent.method is not ConsentMethod.IMPLIED):
        assert d.permitted


# -- FHIR R4 Consents, read by adapter.consent.grants ----------------------------------------------

OID = "urn:oid:2.16.840.1.113883.5.8"
#: provision.period values: FHIR dates of every precision and dateTimes, around NOW (2025-06-01T12:00Z).
#: An end is inclusive through the last instant of a partial date ("2025-06" ends with June).
ENDED = ("2025-05-31", "2025-05", "2024", "2025-06-01T11:59:59Z", "2025-06-01T13:59:59+02:00")
NOT_BEGUN = ("2025-06-02", "2025-07", "2026", "2025-06-01T12:00:01Z", "2025-06-01T08:00:01-04:00")
IN_FORCE_END = ("2025-06-01", "2025-06", "2025", "2025-06-01T12:00:00Z")
IN_FORCE_START = ("2025-06-01", "2025-06", "2025", "2025-06-01T12:00:00Z", "2024-01-01")
#: The same record named in each form a Consent may use, and another record.
THIS_RECORD = ("Media/m1", "Media/m1/_history/3", "https://ehr.example.org/fhir/Media/m1",
               "https://ehr.example.org/fhir/Media/m1/_history/3")
ANOTHER_RECORD = ("Media/m2", "Media/m2/_history/1", "https://ehr.example.org/fhir/Media/m2", "DocumentReference/m3")


def periods(starts: Sequence[str] = IN_FORCE_START + NOT_BEGUN + ENDED,
            ends: Sequence[str] = IN_FORCE_END + ENDED + NOT_BEGUN, required: str | None = None,
            ) -> st.SearchStrategy[dict[str, str]]:
    fields = {"start": st.sampled_from(starts), "end": st.sampled_from(ends)}
    must = {k: v for k, v in fields.items() if k == required}
    return st.fixed_dictionaries(must, optional={k: v for k, v in fields.items() if k != required})


@st.composite
def provisions(draw: st.DrawFn, depth: int = 2, refs: Sequence[str] = THIS_RECORD + ANOTHER_RECORD,
               decision: str | None = None, period: st.SearchStrategy[dict[str, str]] | None = None,
               unresolved: bool = True, nested: bool = False) -> dict[str, Any]:
    """A provision: a type (or none at the top level; a nested one always has one, as the
    adapter refuses one without), purposes (v3-ActReason by URI or OID, or another system),
    a period, data references (and, if ``unresolved``, now and then one without a literal
    reference, which a deny reads as all data), an action, and nested provisions."""
    out: dict[str, Any] = {}
    kinds = ("permit", "deny") if nested else (None, "permit", "deny")
    kind = draw(st.sampled_from(kinds)) if decision is None else decision
    if kind is not None:
        out["type"] = kind
    if draw(st.booleans()):
        out["purpose"] = [{"system": draw(st.sampled_from((V3_ACT_REASON, V3_ACT_REASON, OID, "http://snomed.info/sct"))),
                           "code": code} for code in draw(st.lists(st.sampled_from(SERVED), min_size=1, max_size=3))]
    if period is not None or draw(st.booleans()):
        out["period"] = draw(periods() if period is None else period)
    if draw(st.booleans()):
        out["data"] = [{"meaning": "instance", "reference": {"reference": ref}}
                       for ref in draw(st.lists(st.sampled_from(refs), min_size=1, max_size=2))]
        if unresolved and draw(st.integers(0, 5)) == 0:
            out["data"].append({"meaning": "related", "reference": {"display": "the photo"}})   # no literal
    if draw(st.integers(0, 4)) == 0:
        out["action"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                      "code": draw(st.sampled_from(("access", "use", "collect", "disclose")))}]}]
    if depth and draw(st.booleans()):
        out["provision"] = draw(st.lists(provisions(depth - 1, refs, unresolved=unresolved, nested=True), min_size=1, max_size=2))
    return out


@st.composite
def consents(draw: st.DrawFn, *, patient: Identifier | None = None, status: str | None = None,
             provision: st.SearchStrategy[dict[str, Any]] | None = None) -> dict[str, Any]:
    who = draw(patients) if patient is None else patient
    out: dict[str, Any] = {
        "resourceType": "Consent", "id": draw(st.sampled_from(("k1", "k2", "k3"))),
        "status": draw(statuses) if status is None else status,
        "patient": {"identifier": {"system": who.system, "value": who.value}}}
    if draw(st.integers(0, 4)) == 0:
        out["policyRule"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                         "code": "IMPLIED"}]}
    if draw(st.booleans()):
        out["extension"] = [{"url": "http://clinical-image-adapter.org/fhir/StructureDefinition/consent-method",
                             "valueCode": draw(st.sampled_from(ConsentMethod)).value}]
    if provision is not None or draw(st.integers(0, 9)):
        out["provision"] = draw(provisions() if provision is None else provision)
    return out


def read_all(resources: Sequence[dict[str, Any]]) -> list[ConsentGrant]:
    return [g for r in resources for g in grants_from_consent(r)]


photo_facts = access_facts(directive=False)
#: A Consent resource costs more to draw than a grant: fewer examples each.
RESOURCES = settings(PROPERTY, max_examples=max(EXAMPLES // 2, 1))


@RESOURCES
@given(facts=photo_facts, on_file=st.lists(consents(), max_size=3), tables=policies, code=st.sampled_from(SERVED),
       extra=st.one_of(consents(patient=OTHER_PATIENT),
                       consents(provision=provisions(refs=ANOTHER_RECORD, unresolved=False)
                                .filter(lambda p: "data" in p))))
def test_a_consent_resource_about_another_patient_or_record_changes_nothing(
        facts: AccessFacts, on_file: list[dict[str, Any]], tables: Tables, code: str, extra: dict[str, Any]) -> None:
    """provision.data naming only other records, in any reference form, or Consent.patient
    another patient: the Consent is not about this record."""
    before = read_all(on_file)
    assert outcome(run(code, facts, [*before, *grants_from_consent(extra)], tables)) == outcome(
        run(code, facts, before, tables))


@RESOURCES
@given(facts=photo_facts, on_file=st.lists(consents(), max_size=3), tables=policies, code=st.sampled_from(SERVED),
       extra=st.one_of(
           consents(provision=provisions(period=periods(starts=NOT_BEGUN, ends=IN_FORCE_END + NOT_BEGUN,
                                                        required="start"))),
           consents(status="active", provision=provisions(period=periods(starts=ENDED, ends=ENDED,
                                                                         required="end")))))
def test_a_consent_resource_outside_its_period_changes_nothing(
        facts: AccessFacts, on_file: list[dict[str, Any]], tables: Tables, code: str, extra: dict[str, Any]) -> None:
    """provision.period not begun, or (for an active Consent) over, whatever date precision: the
    nested provisions are clipped to it, so nothing of the Consent is in force."""
    before = read_all(on_file)
    assert outcome(run(code, facts, [*before, *grants_from_consent(extra)], tables)) == outcome(
        run(code, facts, before, tables))


@RESOURCES
@given(facts=photo_facts, on_file=st.lists(consents(), max_size=3), tables=policies, asked=st.sampled_from(SERVED),
       extra=consents(provision=provisions(decision="deny")))
def test_a_deny_consent_never_permits_more(facts: AccessFacts, on_file: list[dict[str, Any]], tables: Tables,
                                           asked: str, extra: dict[str, Any]) -> None:
    """A Consent whose top-level provision denies, whatever it nests (nested permits, exceptions
    to the deny, are not honoured), never opens anything."""
    before = read_all(on_file)
    if run(asked, facts, [*before, *grants_from_consent(extra)], tables).permitted:
        assert run(asked, facts, before, tables).permitted


@RESOURCES
@given(facts=photo_facts, on_file=st.lists(consents(), max_size=3), tables=policies, denied=st.sampled_from(NOT_BREAK_GLASS),
       system=st.sampled_from((V3_ACT_REASON, OID)), data=st.data())
def test_an_active_deny_consent_of_a_purpose_refuses_it(facts: AccessFacts, on_file: list[dict[str, Any]],
                                                        tables: Tables, denied: str, system: str,
                                                        data: st.DataObject) -> None:
    """Deny wins: an active Consent of this patient denying the purpose (or an ancestor, or with a
    purpose of a system we do not read, or with no purpose), in force now, for this record in any
    reference form or for all data, refuses it whatever else is on file."""
    covering = data.draw(st.sampled_from(tables.purposes.ancestors(denied)))
    provision = data.draw(provisions(depth=0, refs=THIS_RECORD, decision="deny",
                                     period=periods(starts=IN_FORCE_START, ends=IN_FORCE_END)))
    provision.pop("action", None)
    provision["purpose"] = data.draw(st.sampled_from((
        [{"system": system, "code": covering}], [{"system": "http://snomed.info/sct", "code": "1"}], None)))
    if provision["purpose"] is None:
        del provision["purpose"]
    deny = data.draw(consents(patient=PATIENT, status="active", provision=st.just(provision)))
    at = data.draw(st.integers(0, len(on_file)))
    assert not run(denied, facts, read_all([*on_file[:at], deny, *on_file[at:]]), tables).permitted


@RESOURCES
@given(facts=photo_facts, on_file=st.lists(consents(provision=provisions(refs=THIS_RECORD[:1] + ANOTHER_RECORD)),
                                           max_size=3),
       tables=policies, code=st.sampled_from(SERVED), form=st.sampled_from(THIS_RECORD))
def test_the_record_is_the_same_in_every_reference_form(facts: AccessFacts, on_file: list[dict[str, Any]],
                                                        tables: Tables, code: str, form: str) -> None:
    """Media/m1, its version Media/m1/_history/3 and its absolute URL are one record (grants:
    the reference is compared by Type/id)."""
    renamed = [_rename(c, "Media/m1", form) for c in on_file]
    assert outcome(run(code, facts, read_all(renamed), tables)) == outcome(run(code, facts, read_all(on_file), tables))


def _rename(value: Any, old: str, new: str) -> Any:
    if isinstance(value, dict):
        return {k: _rename(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_rename(v, old, new) for v in value]
    return new if value == old else value


# -- the ingest rules (adapter.consent.ingest): kind x source x method ---------------------------

ingest_policies = st.sampled_from(sorted(INGEST_POLICIES)).map(INGEST_POLICIES.__getitem__)


def assessed(meta: PhotoMetadata, existing: Sequence[ConsentGrant], tables: Tables) -> object:
    """The assessment, or the type and message of the refusal."""
    try:
        return assess_ingest(meta, existing, tables, NOW)
    except AdapterError as exc:
        return type(exc), exc.diagnostics, exc.expression


@PROPERTY
@given(meta=photo_metadata(), existing=st.lists(consent_grants(patient=st.just(PATIENT)), max_size=4),
       tables=ingest_policies, foreign=st.lists(consent_grants(patient=st.just(OTHER_PATIENT)), max_size=2),
       order=st.randoms(use_true_random=False))
def test_the_ingest_rules_read_the_patients_consents_in_force_in_any_order(
        meta: PhotoMetadata, existing: list[ConsentGrant], tables: Tables, foreign: list[ConsentGrant],
        order: Any) -> None:
    """Another patient's Consents change nothing, nor does their order; a Consent not in force
    (not active, or outside its period) neither."""
    shuffled = [*existing, *foreign]
    order.shuffle(shuffled)
    first = assessed(meta, existing, tables)
    assert assessed(meta, shuffled, tables) == first
    live = [g for g in existing if grant_in_force(g, PATIENT, None, NOW)]
    assert assessed(meta, live, tables) == first


@PROPERTY
@given(meta=photo_metadata(), existing=st.lists(consent_grants(patient=st.just(PATIENT)), max_size=4),
       tables=ingest_policies)
def test_the_ingest_rules_by_kind_and_source(meta: PhotoMetadata, existing: list[ConsentGrant],
                                             tables: Tables) -> None:
    """assess_ingest's docstring: document and secondary photos need no consent for care; only
    a clinical photo is kept pending, and only under allowPending; a photo from the patient
    without a statement implies consent for patientImpliedPurposes and nothing more; an active
    Consent denying TREAT refuses a photo of any kind whatever its source or statement."""
    rules = tables.policy.consent
    result = assessed(meta, existing, tables)
    denies_treat = any(g.decision == "deny" and grant_covers(g, "TREAT", tables)
                       for g in existing if grant_in_force(g, PATIENT, None, NOW))
    if denies_treat:
        assert isinstance(result, tuple) and result[0] is ConsentRequired
    if isinstance(result, IngestAssessment):
        assert not result.consent_pending or (meta.kind is PhotoKind.CLINICAL and rules.allow_pending)
        expected = tuple(rules.patient_implied_purposes) if (
            meta.source is PhotoSource.PATIENT and meta.consent is None) else ()
        assert result.implied_purposes == expected
    if meta.kind is not PhotoKind.CLINICAL and meta.consent is None and not denies_treat:
        # nothing to check of a statement: a document or secondary photo is refused for consent
        # only when the patient denied care
        assert isinstance(result, IngestAssessment)
        assert not result.consent_pending
        warning = tables.kinds[meta.kind].warning
        assert result.warnings == ((warning,) if warning else ())
