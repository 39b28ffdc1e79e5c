"""Reading R4 Consent JSON into grants (adapter.consent.grants), and deciding with them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from adapter.consent import ANY_PURPOSE, decide, grant_from_consent, grants_from_consent
from adapter.consent.grants import CONSENT_ACTION, CONSENT_METHOD_EXTENSION, V3_ACT_CODE, literal_type_id
from adapter.errors import BusinessRuleViolation, InvalidResource, NotSupported
from adapter.model.photo import ConsentMethod, Identifier, PhotoKind, PhotoSource
from adapter.model.purpose import V3_ACT_REASON, PurposeOfUse
from adapter.model.record import AccessFacts
from tests.support.fhir_factories import policy_variant, tables

pytestmark = pytest.mark.unit

MRN = "urn:example:mrn"
PATIENT = Identifier(system=MRN, value="P-123")




def purpose(*codes: str, system: str = V3_ACT_REASON) -> list[dict[str, str]]:
    return [{"system": system, "code": c} for c in codes]


def make_consent(provision: Any = None, **extra: Any) -> dict[str, Any]:
    """A Consent as the adapter writes it; ``provision`` defaults to permit TREAT from 2025-01-01."""
    resource: dict[str, Any] = {
        "resourceType": "Consent",
        "id": "c1",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "treatment"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": MRN, "value": PATIENT.value}},
        "policyRule": {"coding": [{"system": V3_ACT_CODE, "code": "OPTIN"}]},
        "provision": {"type": "permit", "period": {"start": "2025-01-01"}, "purpose": purpose("TREAT")}
        if provision is None else provision,
    }
    resource.update(extra)
    return resource


def facts(kind: PhotoKind = PhotoKind.CLINICAL, governed_by: str = "Media/m1") -> AccessFacts:
    return AccessFacts(governed_by=governed_by, patient=PATIENT, kind=kind, source=PhotoSource.CLINICIAN)


def permitted(resource: dict[str, Any], code: str, now: datetime, governed_by: str = "Media/m1") -> bool:
    return decide(PurposeOfUse(code), facts(governed_by=governed_by), grants_from_consent(resource),
                  tables(), now).permitted


NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


# -- the top-level provision -------------------------------------------------------------------------

def test_permit_consent_becomes_one_grant() -> None:
    [g] = grants_from_consent(make_consent())
    assert g.id == "c1" and g.patient == PATIENT and g.status == "active" and g.decision == "permit"
    assert g.purposes == frozenset({"TREAT"}) and g.data_refs == frozenset()
    assert g.period_start == datetime(2025, 1, 1, tzinfo=UTC) and g.period_end is None
    assert g.method is None and not g.implied


def test_grant_from_consent_returns_the_top_level_grant() -> None:
    assert grant_from_consent(make_consent()) == grants_from_consent(make_consent())[0]


def test_method_comes_from_the_extension() -> None:
    ext = [{"url": CONSENT_METHOD_EXTENSION, "valueCode": "written"}]
    assert grant_from_consent(make_consent(extension=ext)).method is ConsentMethod.WRITTEN


@pytest.mark.parametrize(("attachment", "method"), [
    ({"contentType": "application/pdf", "url": "https://ehr.example.org/forms/1.pdf"}, ConsentMethod.WRITTEN),
    ({"contentType": "application/pdf", "data": "JVBERi0xLjQK"}, ConsentMethod.WRITTEN),
    ({"title": "form"}, None),
    ({"contentType": "application/pdf", "url": "  "}, None),
])
def test_without_the_extension_a_signed_form_and_only_a_signed_form_says_written(attachment: dict[str, Any],
                                                                                   method: ConsentMethod | None) -> None:
    """Review "ingest" finding 2: a transaction's Consent with a sourceAttachment holding nothing
    (a title only) was written consent, the same Consent posted alone was not, and one linking its
    signed form by url was written in a Bundle only. One rule for both now
    (adapter.consent.grants.consent_method): the form itself (data) or its link (url) is written
    consent when the consent-method extension says nothing; an attachment without either is not."""
    assert grant_from_consent(make_consent(sourceAttachment=attachment)).method is method
    said = [{"url": CONSENT_METHOD_EXTENSION, "valueCode": "verbal"}]
    assert grant_from_consent(make_consent(sourceAttachment=attachment, extension=said)).method is ConsentMethod.VERBAL


@pytest.mark.parametrize(("attachment", "method"), [
    (None, ConsentMethod.WRITTEN),  # said written, no attachment: the recorder's word (docs/rules.md)
    ({"contentType": "application/pdf", "url": "https://ehr.example.org/forms/1.pdf"}, ConsentMethod.WRITTEN),
    ({"contentType": "application/pdf", "data": "JVBERi0xLjQK"}, ConsentMethod.WRITTEN),
    ({"title": "signed form"}, None),
    ({"contentType": "application/pdf", "url": " ", "data": ""}, None),
])
def test_written_said_with_an_attachment_that_documents_nothing_is_not_written(
        attachment: dict[str, Any] | None, method: ConsentMethod | None) -> None:
    """Safety review 3: the extension's ``written`` won before the attachment was looked at, so a
    title-only sourceAttachment, which documents nothing (docs/fhir-api.md), met writtenRequired.
    A claim of written whose attachment holds and links no form is no written consent (method
    not said); without an attachment the claim stands, as POST /photos' ``method: written``
    without ``form`` does."""
    said = [{"url": CONSENT_METHOD_EXTENSION, "valueCode": "written"}]
    extra = {} if attachment is None else {"sourceAttachment": attachment}
    assert grant_from_consent(make_consent(extension=said, **extra)).method is method


@pytest.mark.parametrize("attachment", [{"title": "signed form"}, None])
def test_written_required_policies_take_no_title_only_attachment(attachment: dict[str, Any] | None) -> None:
    """Under writtenRequiredForExplicitPurposes a Consent saying written with a title-only
    attachment does not open TRAIN (its claim is discredited); saying written without one does."""
    strict = policy_variant(consent={"written_required": True, "written_required_for_explicit": True})
    said = [{"url": CONSENT_METHOD_EXTENSION, "valueCode": "written"}]
    extra = {} if attachment is None else {"sourceAttachment": attachment}
    consent = make_consent({"type": "permit", "period": {"start": "2025-01-01"}, "purpose": purpose("TRAIN")},
                           extension=said, **extra)
    decision = decide(PurposeOfUse("TRAIN"), facts(), grants_from_consent(consent), strict, NOW)
    assert decision.permitted is (attachment is None)


def test_invalid_method_is_refused() -> None:
    ext = [{"url": "urn:other", "valueString": "x"}, {"url": CONSENT_METHOD_EXTENSION, "valueCode": "nodded"}]
    with pytest.raises(InvalidResource) as info:
        grant_from_consent(make_consent(extension=ext))
    assert info.value.expression == ["Consent.extension[1].valueCode"]


def test_implied_policy_rule_marks_an_implied_consent() -> None:
    rule = {"coding": [{"system": V3_ACT_CODE, "code": "IMPLIED"}]}
    g = grant_from_consent(make_consent(policyRule=rule))
    assert g.implied and g.method is ConsentMethod.IMPLIED


def test_a_consent_method_of_implied_marks_an_implied_consent() -> None:
    """Review finding: a Consent whose consent-method extension says implied, but with no
    policyRule IMPLIED, was read as express consent: it permitted TRAIN and HRESCH."""
    resource = make_consent(extension=[{"url": CONSENT_METHOD_EXTENSION, "valueCode": "implied"}])
    g = grant_from_consent(resource)
    assert g.implied and g.method is ConsentMethod.IMPLIED


def test_implied_code_from_another_system_is_not_implied() -> None:
    g = grant_from_consent(make_consent(policyRule={"coding": [{"system": "urn:x", "code": "IMPLIED"}]}))
    assert not g.implied


def test_implied_consent_as_written_for_a_patient_photo_covers_care_of_that_photo_only() -> None:
    resource = make_consent(
        {"type": "permit", "period": {"start": "2025-05-01T08:00:00Z"}, "purpose": purpose("TREAT"),
         "data": [{"meaning": "instance", "reference": {"reference": "Media/m1"}}]},
        policyRule={"coding": [{"system": V3_ACT_CODE, "code": "IMPLIED"}]},
        extension=[{"url": CONSENT_METHOD_EXTENSION, "valueCode": "implied"}])
    assert permitted(resource, "TREAT", NOW)
    assert not permitted(resource, "COC", NOW)  # the purpose it was sent for, not its children
    assert not permitted(resource, "TRAIN", NOW)
    assert not permitted(resource, "TREAT", NOW, governed_by="Media/m2")


@pytest.mark.parametrize("patient", [
    None, {"reference": "Patient/1"}, {"identifier": {"system": MRN}}, {"identifier": {"value": "P-1"}},
    {"identifier": {"system": "", "value": "P-1"}}, "Patient/1",
])
def test_patient_identifier_is_required(patient: Any) -> None:
    resource = make_consent()
    if patient is None:
        del resource["patient"]
    else:
        resource["patient"] = patient
    with pytest.raises(InvalidResource) as info:
        grants_from_consent(resource)
    assert info.value.expression == ["Consent.patient.identifier"]


@pytest.mark.parametrize(("element", "expression"), [("id", "Consent.id"), ("status", "Consent.status")])
def test_id_and_status_are_required(element: str, expression: str) -> None:
    resource = make_consent()
    del resource[element]
    with pytest.raises(InvalidResource) as info:
        grants_from_consent(resource)
    assert info.value.expression == [expression]


def test_other_resource_types_are_refused() -> None:
    with pytest.raises(InvalidResource):
        grants_from_consent(make_consent(resourceType="Provenance"))


def test_missing_provision_grants_nothing() -> None:
    resource = make_consent()
    del resource["provision"]
    [g] = grants_from_consent(resource)
    assert g.decision == "deny" and g.purposes == frozenset()
    assert not permitted(resource, "TREAT", NOW)
    # it neither permits nor denies: a document photo stays readable for care
    assert decide(PurposeOfUse("TREAT"), facts(PhotoKind.DOCUMENT), [g], tables(), NOW).permitted


def test_provision_without_type_is_a_permit() -> None:
    g = grant_from_consent(make_consent({"purpose": purpose("TREAT")}))
    assert g.decision == "permit" and g.purposes == frozenset({"TREAT"})


def test_invalid_provision_type_is_refused() -> None:
    with pytest.raises(InvalidResource) as info:
        grants_from_consent(make_consent({"type": "maybe"}))
    assert info.value.expression == ["Consent.provision.type"]


def test_permit_without_purpose_permits_nothing() -> None:
    resource = make_consent({"type": "permit"})
    assert grant_from_consent(resource).purposes == frozenset()
    assert not permitted(resource, "TREAT", NOW)


def test_purposes_from_other_systems_are_ignored_on_a_permit() -> None:
    codings = [*purpose("TRAIN"), *purpose("EDU", system="urn:x")]
    resource = make_consent({"type": "permit", "purpose": codings})
    assert grant_from_consent(resource).purposes == frozenset({"TRAIN"})


def test_deny_without_purpose_denies_every_purpose() -> None:
    g = grant_from_consent(make_consent({"type": "deny"}))
    assert g.decision == "deny" and g.purposes == frozenset({ANY_PURPOSE})


def test_deny_with_a_foreign_purpose_denies_every_purpose() -> None:
    g = grant_from_consent(make_consent({"type": "deny", "purpose": purpose("LOCAL", system="urn:x")}))
    assert g.purposes == frozenset({ANY_PURPOSE})


# -- period ------------------------------------------------------------------------------------------

def test_date_only_end_is_inclusive_through_that_day() -> None:
    resource = make_consent({"type": "permit", "purpose": purpose("TRAIN"),
                             "period": {"start": "2025-06-01", "end": "2025-06-30"}})
    g = grant_from_consent(resource)
    assert g.period_end == datetime(2025, 6, 30, 23, 59, 59, 999999, tzinfo=UTC)
    assert permitted(resource, "TRAIN", datetime(2025, 6, 30, 23, 59, tzinfo=UTC))
    assert not permitted(resource, "TRAIN", datetime(2025, 7, 1, tzinfo=UTC))
    assert permitted(resource, "TRAIN", datetime(2025, 6, 1, tzinfo=UTC))
    assert not permitted(resource, "TRAIN", datetime(2025, 5, 31, 23, 59, tzinfo=UTC))


@pytest.mark.parametrize(("end", "last"), [
    ("2024-02", datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2025", datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ("2025-03-01T10:00:00+01:00", datetime(2025, 3, 1, 9, 0, tzinfo=UTC)),
    ("2025-03-01T10:00:00Z", datetime(2025, 3, 1, 10, 0, tzinfo=UTC)),
    ("2025-03-01T10:00:00", datetime(2025, 3, 1, 10, 0, tzinfo=UTC)),
])
def test_period_end_precision_and_time_zones(end: str, last: datetime) -> None:
    provision = {"type": "permit", "purpose": purpose("TREAT"), "period": {"end": end}}
    g = grant_from_consent(make_consent(provision))
    assert g.period_end == last and g.period_end.tzinfo is not None and g.period_start is None


def test_offset_is_kept_on_start() -> None:
    g = grant_from_consent(make_consent({"type": "permit", "period": {"start": "2025-03-01T10:00:00+02:00"}}))
    assert g.period_start == datetime(2025, 3, 1, 10, tzinfo=timezone(timedelta(hours=2)))


@pytest.mark.parametrize("value", ["2025-13-01", "yesterday", 20250101, "2025-02-30"])
def test_invalid_period_is_refused(value: Any) -> None:
    with pytest.raises(InvalidResource) as info:
        grants_from_consent(make_consent({"type": "permit", "period": {"end": value}}))
    assert info.value.expression == ["Consent.provision.period.end"]


# -- data scope --------------------------------------------------------------------------------------

def test_data_references_scope_the_grant() -> None:
    resource = make_consent({"type": "permit", "purpose": purpose("TRAIN"), "data": [
        {"meaning": "instance", "reference": {"reference": "Media/m1/_history/2"}},
        {"meaning": "related", "reference": {"reference": "Media/m3"}}]})
    assert grant_from_consent(resource).data_refs == frozenset({"Media/m1", "Media/m3"})
    assert permitted(resource, "TRAIN", NOW)
    assert not permitted(resource, "TRAIN", NOW, governed_by="Media/m2")


def test_a_deny_naming_the_record_by_its_full_url_applies() -> None:
    """Review finding: a deny whose data named the record by absolute URL was stored and never
    applied (references were compared as written), while the permit it meant to narrow did."""
    deny = make_consent({"type": "deny", "purpose": purpose("TRAIN"), "data": [
        {"meaning": "instance", "reference": {"reference": "https://images.example.org/fhir/Media/m1/_history/1"}}]})
    assert grant_from_consent(deny).data_refs == frozenset({"Media/m1"})


def test_permit_scoped_only_to_data_we_cannot_match_permits_nothing() -> None:
    resource = make_consent({"type": "permit", "purpose": purpose("TRAIN"), "data": [
        {"meaning": "instance", "reference": {"identifier": {"system": "urn:x", "value": "1"}}}]})
    assert grant_from_consent(resource).purposes == frozenset()


def test_deny_scoped_to_data_we_cannot_match_applies_to_all_data() -> None:
    resource = make_consent({"type": "deny", "purpose": purpose("TRAIN"), "data": [
        {"meaning": "instance", "reference": {"reference": "Media/m2"}},
        {"meaning": "instance", "reference": {"identifier": {"system": "urn:x", "value": "1"}}}]})
    assert grant_from_consent(resource).data_refs == frozenset()


@pytest.mark.parametrize("written", ["Media/m1/", "/Media/m1", "Media/m1 ", "Media/m1/_history", "m1",
                                     "Media/m1?_id=m1", "#m1", "Media/"])
def test_a_deny_naming_its_record_in_no_literal_reference_form_applies_to_all_data(written: str) -> None:
    """Review finding: a deny of TRAIN naming the record ``Media/m1/`` (or ``/Media/m1``,
    ``Media/m1 ``, ``Media/m1/_history``) was read as naming a record ``Media/m1/`` that does not
    exist, so the patient's TRAIN permit released the record. What is no literal reference
    names no record the decision can match: the deny applies to all the patient's data."""
    consent = make_consent({"type": "permit", "purpose": purpose("TRAIN"), "provision": [
        {"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": written}}]}]})
    assert permitted(make_consent({"type": "permit", "purpose": purpose("TRAIN")}), "TRAIN", NOW)
    assert not permitted(consent, "TRAIN", NOW, governed_by="Media/m1")
    assert not permitted(consent, "TRAIN", NOW, governed_by="Media/m2")


@pytest.mark.parametrize(("written", "named"), [
    ("Media/m1", "Media/m1"), ("Media/m1/_history/3", "Media/m1"), ("DocumentReference/a-b.c", "DocumentReference/a-b.c"),
    ("https://images.example.org/fhir/Media/m1", "Media/m1"), ("http://h:8080/base/Media/m1/_history/1", "Media/m1")])
def test_a_literal_reference_names_its_type_and_id(written: str, named: str) -> None:
    assert literal_type_id(written) == named


# -- restrictions we cannot evaluate -----------------------------------------------------------------

@pytest.mark.parametrize("restriction", [
    {"actor": [{"role": {"text": "x"}, "reference": {"reference": "Practitioner/1"}}]},
    {"class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
    {"securityLabel": [{"system": "urn:x", "code": "R"}]},
    {"dataPeriod": {"start": "2024-01-01"}},
    {"action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                             "code": "collect"}]}]},
])
def test_unevaluable_restriction_makes_a_permit_permit_nothing_and_a_deny_deny_more(
        restriction: dict[str, Any]) -> None:
    permit = grant_from_consent(make_consent({"type": "permit", "purpose": purpose("TREAT"), **restriction}))
    assert permit.purposes == frozenset()
    deny = grant_from_consent(make_consent({"type": "deny", "purpose": purpose("TREAT"), **restriction}))
    assert deny.purposes == frozenset({"TREAT"})


def test_access_action_is_evaluable() -> None:
    action = [{"coding": [{"system": CONSENT_ACTION, "code": "access"}]}]
    g = grant_from_consent(make_consent({"type": "permit", "purpose": purpose("TREAT"), "action": action}))
    assert g.purposes == frozenset({"TREAT"})


# -- nested provisions -------------------------------------------------------------------------------

def _with_nested(*nested: dict[str, Any], purposes: tuple[str, ...] = ("TREAT", "TRAIN")) -> dict[str, Any]:
    return make_consent({"type": "permit", "period": {"start": "2025-01-01", "end": "2025-12-31"},
                         "purpose": purpose(*purposes), "provision": list(nested)})


def test_nested_deny_becomes_a_deny_grant_that_wins() -> None:
    resource = _with_nested({"type": "deny", "purpose": purpose("TRAIN")})
    top, deny = grants_from_consent(resource)
    assert top.decision == "permit" and top.purposes == frozenset({"TREAT", "TRAIN"})
    assert deny.decision == "deny" and deny.purposes == frozenset({"TRAIN"}) and deny.id == "c1"
    assert permitted(resource, "TREAT", NOW) and not permitted(resource, "TRAIN", NOW)


def test_nested_deny_inherits_purposes_and_data_and_is_clipped_to_the_parent_period() -> None:
    resource = _with_nested({"type": "deny", "period": {"start": "2024-06-01", "end": "2026-06-01"},
                             "data": [{"meaning": "instance", "reference": {"reference": "Media/m2"}}]})
    _, deny = grants_from_consent(resource)
    assert deny.purposes == frozenset({"TREAT", "TRAIN"}) and deny.data_refs == frozenset({"Media/m2"})
    assert deny.period_start == datetime(2025, 1, 1, tzinfo=UTC)
    assert deny.period_end == datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert permitted(resource, "TREAT", NOW) and not permitted(resource, "TREAT", NOW, governed_by="Media/m2")


def test_nested_provision_without_type_cannot_be_read() -> None:
    # R4 gives an untyped nested provision no meaning: read as its parent's opposite, the
    # patient's research permit below it would turn into a denial of care
    resource = make_consent({"provision": [{"provision": [{"type": "permit", "purpose": purpose("HRESCH")}]}]})
    with pytest.raises(BusinessRuleViolation) as info:
        grants_from_consent(resource)
    assert info.value.expression == ["Consent.provision.provision[0].type"]


@pytest.mark.parametrize("where", ["top", "provision", "nested", "contained"])
def test_a_modifier_extension_anywhere_makes_the_consent_unreadable(where: str) -> None:
    modifier = [{"url": "http://example.org/fhir/StructureDefinition/revoked-pending", "valueBoolean": True}]
    provision: dict[str, object] = {"type": "permit", "purpose": purpose("TRAIN")}
    resource = make_consent(provision)
    expected = {"top": "Consent.modifierExtension", "provision": "Consent.provision.modifierExtension",
                "nested": "Consent.provision.provision[0].modifierExtension",
                "contained": "Consent.contained[0].modifierExtension"}[where]
    if where == "top":
        resource["modifierExtension"] = modifier
    elif where == "provision":
        provision["modifierExtension"] = modifier
    elif where == "nested":
        provision["provision"] = [{"type": "deny", "purpose": purpose("TRAIN"), "modifierExtension": modifier}]
    else:
        resource["contained"] = [{"resourceType": "Basic", "id": "b", "modifierExtension": modifier}]
    with pytest.raises(BusinessRuleViolation) as info:
        grants_from_consent(resource)
    assert info.value.expression == [expected]


def test_nested_permit_exception_under_a_deny_is_not_honoured() -> None:
    resource = make_consent({"type": "deny", "provision": [{"type": "permit", "purpose": purpose("TREAT")}]})
    grants = grants_from_consent(resource)
    assert [g.decision for g in grants] == ["deny"]
    assert not permitted(resource, "TREAT", NOW)


def test_deeply_nested_deny_is_found() -> None:
    resource = _with_nested({"type": "permit", "purpose": purpose("TRAIN"),
                             "provision": [{"type": "deny", "purpose": purpose("TRAIN")}]})
    assert [g.decision for g in grants_from_consent(resource)] == ["permit", "deny"]
    assert not permitted(resource, "TRAIN", NOW)


def test_grant_from_consent_refuses_to_drop_nested_denials() -> None:
    with pytest.raises(NotSupported):
        grant_from_consent(_with_nested({"type": "deny", "purpose": purpose("TRAIN")}))


def test_withdrawn_consent_keeps_its_status() -> None:
    resource = make_consent(status="inactive")
    assert grant_from_consent(resource).status == "inactive"
    assert not permitted(resource, "TREAT", NOW)
    on = policy_variant(consent={"care_after_withdrawal": True})
    assert decide(PurposeOfUse("TREAT"), facts(), grants_from_consent(resource), on, NOW).permitted


@pytest.mark.parametrize(("element", "value", "expression"), [
    ("provision", [], "Consent.provision"),
    ("extension", {}, "Consent.extension"),
])
def test_malformed_elements_are_refused(element: str, value: Any, expression: str) -> None:
    with pytest.raises(InvalidResource) as info:
        grants_from_consent(make_consent(**{element: value}))
    assert info.value.expression == [expression]
