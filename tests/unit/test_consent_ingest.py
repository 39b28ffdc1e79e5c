"""The ingest rules (adapter.consent.ingest): one test or more per row of the guidance's table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from adapter.consent import IngestAssessment, assess_ingest
from adapter.consent.ingest import PENDING_WARNING, PENDING_WARNING_NO_BREAK_GLASS
from adapter.errors import (
    AdapterError,
    BusinessRuleViolation,
    ConsentRequired,
    RequiredElementMissing,
    UnknownCode,
)
from adapter.mapping.tables import Tables
from adapter.model.consent import ConsentGrant
from adapter.model.photo import ConsentMethod, Identifier, PhotoKind, PhotoMetadata
from tests.support.fhir_factories import policy_variant

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
MRN = "urn:example:mrn"
PATIENT = Identifier(system=MRN, value="P-123")
SECONDARY_WARNING = ("Secondary image: a photograph of an image or trace shown on another platform. "
                     "Review the original on its platform before diagnosis.")


_UNSET: Any = object()


def make_meta(*, kind: str = "clinical", source: str = "clinician", consent: Any = _UNSET,
              **extra: Any) -> PhotoMetadata:
    """Metadata as a capture app sends it; by default a clinician's clinical photo with written
    consent for TREAT."""
    data: dict[str, Any] = {"patient": {"system": MRN, "value": PATIENT.value},
                            "kind": kind, "source": source}
    data["consent"] = {"purposes": ["TREAT"], "method": "written"} if consent is _UNSET else consent
    if data["consent"] is None:
        del data["consent"]
    data.update(extra)
    return PhotoMetadata.model_validate(data)


def make_grant(*purposes: str, id: str = "c1", status: str = "active", decision: str = "permit",
               start: datetime | None = NOW - timedelta(days=30), end: datetime | None = None,
               data_refs: tuple[str, ...] = (), patient: Identifier = PATIENT,
               method: ConsentMethod | None = ConsentMethod.WRITTEN, implied: bool = False) -> ConsentGrant:
    return ConsentGrant(id=id, patient=patient, status=status, decision=decision,
                        purposes=frozenset(purposes),
                        method=method, period_start=start, period_end=end, data_refs=frozenset(data_refs),
                        implied=implied)


def assess(meta: PhotoMetadata, existing: tuple[ConsentGrant, ...] = (), tables: Tables | None = None,
           now: datetime = NOW) -> IngestAssessment:
    return assess_ingest(meta, existing, tables or policy_variant(), now)


def refused(meta: PhotoMetadata, existing: tuple[ConsentGrant, ...] = (),
            tables: Tables | None = None) -> AdapterError:
    with pytest.raises(AdapterError) as info:
        assess(meta, existing, tables)
    err = info.value
    assert PATIENT.value not in err.diagnostics
    return err


CLEAN = IngestAssessment(consent_pending=False, implied_purposes=(), warnings=(), notes=())


# -- clinical photo, TREAT ---------------------------------------------------------------------------

def test_clinical_with_written_consent_for_treat_is_accepted() -> None:
    assert assess(make_meta()) == CLEAN


def test_clinical_with_verbal_consent_is_accepted_by_default() -> None:
    assert assess(make_meta(consent={"purposes": ["TREAT"], "method": "verbal"})) == CLEAN


def test_clinical_without_consent_is_refused() -> None:
    err = refused(make_meta(consent=None))
    assert type(err) is ConsentRequired and err.issue_type == "business-rule"
    assert err.expression == ["consent"]
    assert "documented consent for TREAT" in err.diagnostics
    assert "no consent was given" in err.diagnostics and "no active Consent" in err.diagnostics


def test_clinical_with_consent_that_lacks_treat_is_refused() -> None:
    err = refused(make_meta(consent={"purposes": ["TRAIN"], "method": "written"}))
    assert type(err) is ConsentRequired and err.expression == ["consent.purposes"]
    assert "lists TRAIN but not TREAT" in err.diagnostics


def test_consent_for_a_child_of_treat_is_not_consent_for_treat() -> None:
    err = refused(make_meta(consent={"purposes": ["COC"], "method": "written"}))
    assert err.expression == ["consent.purposes"]


def test_clinical_without_statement_but_active_consent_on_file_is_accepted() -> None:
    assert assess(make_meta(consent=None), (make_grant("TREAT"),)) == CLEAN


def test_statement_without_treat_is_completed_by_consent_on_file() -> None:
    meta = make_meta(consent={"purposes": ["TRAIN"], "method": "written"})
    assert assess(meta, (make_grant("TREAT"),)) == CLEAN


@pytest.mark.parametrize("grant", [
    make_grant("TREAT", patient=Identifier(system=MRN, value="P-999")),
    make_grant("TREAT", status="inactive"),
    make_grant("TREAT", status="draft"),
    make_grant("TREAT", start=NOW + timedelta(days=1)),
    make_grant("TREAT", end=NOW - timedelta(seconds=1)),
    make_grant("TREAT", data_refs=("Media/m0",)),
    make_grant("COC"),
    make_grant("TRAIN"),
    make_grant("TREAT", decision="deny"),
], ids=["other-patient", "withdrawn", "draft", "not-yet", "expired", "other-record", "coc", "train", "deny"])
def test_consent_on_file_that_does_not_apply_is_no_basis(grant: ConsentGrant) -> None:
    err = refused(make_meta(consent=None), (grant,))
    assert type(err) is ConsentRequired and err.expression == ["consent"]


def test_active_deny_of_treat_refuses_even_with_a_statement() -> None:
    err = refused(make_meta(), (make_grant("TREAT", decision="deny"),))
    assert type(err) is ConsentRequired and "denies TREAT" in err.diagnostics


def test_active_deny_of_treat_is_not_bypassed_by_pending() -> None:
    tables = policy_variant(consent={"allow_pending": True})
    with pytest.raises(ConsentRequired):
        assess(make_meta(consent=None), (make_grant("TREAT", decision="deny"),), tables)


@pytest.mark.parametrize("kind", ["document", "secondary"])
def test_active_deny_of_treat_refuses_photos_that_need_no_consent_for_care(kind: str) -> None:
    """Review finding: document and secondary photos were stored while a Consent denied TREAT
    (no consent needed for care, so the deny was never looked at), though deny wins at read time
    whatever the kind: a record nobody may use for care. Refused as a clinical photo is."""
    deny = (make_grant("TREAT", decision="deny"),)
    err = refused(make_meta(kind=kind, consent=None), deny)
    assert type(err) is ConsentRequired and "denies TREAT" in err.diagnostics and err.expression == ["consent"]
    assert assess(make_meta(kind=kind, consent=None), (make_grant("TREAT", decision="deny",
                                                                 data_refs=("Media/m0",)),)).consent_pending is False


def test_deny_of_another_purpose_does_not_block_ingest() -> None:
    assert assess(make_meta(), (make_grant("TRAIN", decision="deny"),)) == CLEAN


# -- consent pending ---------------------------------------------------------------------------------

def test_clinical_without_consent_is_kept_pending_when_policy_allows() -> None:
    a = assess(make_meta(consent=None), tables=policy_variant(consent={"allow_pending": True}))
    assert a.consent_pending and a.warnings == (PENDING_WARNING,) and a.implied_purposes == ()


def test_pending_warning_says_when_break_glass_is_disabled() -> None:
    tables = policy_variant(consent={"allow_pending": True}, break_glass={"enabled": False})
    a = assess(make_meta(consent=None), tables=tables)
    assert a.consent_pending and a.warnings == (PENDING_WARNING_NO_BREAK_GLASS,)


def test_pending_is_not_used_when_consent_is_present() -> None:
    assert assess(make_meta(), tables=policy_variant(consent={"allow_pending": True})) == CLEAN


# -- document and secondary photos -------------------------------------------------------------------

def test_document_without_consent_is_accepted() -> None:
    assert assess(make_meta(kind="document", consent=None)) == CLEAN


def test_secondary_without_consent_is_accepted_with_warning_and_note() -> None:
    a = assess(make_meta(kind="secondary", consent=None))
    assert not a.consent_pending
    assert a.warnings == (SECONDARY_WARNING,) and a.notes == (SECONDARY_WARNING,)
    assert policy_variant().kinds[PhotoKind.SECONDARY].warning == SECONDARY_WARNING


@pytest.mark.parametrize("kind", ["document", "secondary"])
def test_document_and_secondary_are_never_pending(kind: str) -> None:
    a = assess(make_meta(kind=kind, consent=None), tables=policy_variant(consent={"allow_pending": True}))
    assert not a.consent_pending


# -- source patient: implied consent -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["clinical", "document", "secondary"])
def test_patient_sent_photo_implies_consent_for_treat_only(kind: str) -> None:
    a = assess(make_meta(kind=kind, source="patient", consent=None))
    assert a.implied_purposes == ("TREAT",) and not a.consent_pending


def test_implied_purposes_follow_the_policy() -> None:
    tables = policy_variant(consent={"patient_implied_purposes": ["TREAT", "COC"]})
    a = assess(make_meta(source="patient", consent=None), tables=tables)
    assert a.implied_purposes == ("TREAT", "COC")


def test_implied_consent_that_does_not_cover_treat_is_no_basis() -> None:
    tables = policy_variant(consent={"patient_implied_purposes": ["COC"]})
    err = refused(make_meta(source="patient", consent=None), tables=tables)
    assert type(err) is ConsentRequired and "implied consent covers COC but not TREAT" in err.diagnostics


FORM = "JVBERi0xLjQK"  # base64 of "%PDF-1.4\n": the signed form


def test_patient_written_consent_with_its_form_governs_and_may_include_training() -> None:
    meta = make_meta(source="patient", consent={"purposes": ["TREAT", "TRAIN"], "method": "written", "form": FORM})
    assert assess(meta) == CLEAN


@pytest.mark.parametrize("statement", [
    {"purposes": ["TREAT", "TRAIN"], "method": "verbal"},
    {"purposes": ["TREAT", "HRESCH"], "method": "written"},  # no form
])
def test_a_patients_own_channel_cannot_grant_training_or_research_without_a_signed_form(
        statement: dict[str, object]) -> None:
    """Review finding: a photo the patient sent, with a 'verbal' consent for TRAIN in its
    metadata, recorded a patient-wide Consent permitting TRAIN."""
    err = refused(make_meta(source="patient", consent=statement))
    assert type(err) is ConsentRequired and err.expression == ["consent.purposes[1]"]


def test_patient_explicit_consent_without_treat_is_refused_for_clinical() -> None:
    meta = make_meta(source="patient", consent={"purposes": ["TRAIN"], "method": "written", "form": FORM})
    assert refused(meta).expression == ["consent.purposes"]


def test_a_consent_dated_in_the_future_is_refused() -> None:
    """Review finding: a consent dated 2099 was stored (as not yet in force) and the photo was
    unreadable for care, without a warning."""
    err = refused(make_meta(consent={"purposes": ["TREAT"], "method": "verbal", "date": "2099-01-01"}))
    assert type(err) is ConsentRequired and err.expression == ["consent.date"]
    assert assess(make_meta(consent={"purposes": ["TREAT"], "method": "verbal", "date": "2024-01-01"})) == CLEAN


def test_patient_statement_of_implied_consent_for_care_is_accepted() -> None:
    meta = make_meta(source="patient", consent={"purposes": ["TREAT"], "method": "implied"})
    assert assess(meta) == CLEAN


@pytest.mark.parametrize("code", ["TRAIN", "HRESCH", "ETREAT"])
def test_implied_consent_cannot_cover_non_care_purposes(code: str) -> None:
    meta = make_meta(source="patient", consent={"purposes": ["TREAT", code], "method": "implied"})
    err = refused(meta)
    assert type(err) is ConsentRequired and err.expression == ["consent.purposes[1]"]


@pytest.mark.parametrize("source", ["clinician", "colleague-internal", "colleague-external"])
@pytest.mark.parametrize("kind", ["clinical", "document"])
def test_implied_consent_only_comes_from_the_patient(source: str, kind: str) -> None:
    meta = make_meta(kind=kind, source=source, consent={"purposes": ["TREAT"], "method": "implied"},
                     colleague={"name": "Dr A", "discussionNote": "seen together"})
    err = refused(meta)
    assert type(err) is ConsentRequired and err.expression == ["consent.method"]


# -- colleague sources -------------------------------------------------------------------------------

def test_internal_colleague_photo_is_accepted_with_consent() -> None:
    assert assess(make_meta(source="colleague-internal", colleague={"name": "Dr A"})) == CLEAN


def test_internal_colleague_discussion_note_goes_on_the_record() -> None:
    meta = make_meta(source="colleague-internal",
                     colleague={"name": "Dr A", "discussionNote": "wound check on ward 3"})
    assert assess(meta).notes == ("Discussed with Dr A: wound check on ward 3",)


def test_an_internal_colleagues_photo_needs_documented_consent_as_a_clinicians_does() -> None:
    """Review finding (clinical safety): a body photo posted as ``colleague-internal`` with no
    consent at all was stored, where the same photo with verbal consent was refused under
    ``writtenRequired``: giving less got round the rule. Inside one organisation there is one
    record, and the patient's consent is documented in it."""
    bare = make_meta(source="colleague-internal", consent=None, colleague={"name": "Dr A"})
    err = refused(bare)
    assert type(err) is ConsentRequired and err.expression == ["consent"]
    written = policy_variant(consent={"written_required": True})
    verbal = make_meta(source="colleague-internal", colleague={"name": "Dr A"},
                       consent={"purposes": ["TREAT"], "method": "verbal"})
    assert type(refused(bare, tables=written)) is type(refused(verbal, tables=written)) is ConsentRequired
    assert assess(bare, (make_grant("TREAT"),)) == CLEAN  # a Consent on file documents it
    assert assess(bare, tables=policy_variant(consent={"allow_pending": True})).consent_pending


def test_a_system_of_the_organisation_is_responsible_for_consent() -> None:
    # a PACS (the DICOM bridge's sender_responsible): its images are the organisation's record already
    meta = make_meta(source="colleague-internal", consent=None, colleague={"name": "PACS"})
    result = assess_ingest(meta, (), policy_variant(), NOW, sender_responsible=True)
    assert not result.consent_pending and result.implied_purposes == ()
    with pytest.raises(ConsentRequired):
        assess_ingest(meta, (make_grant("TREAT", decision="deny"),), policy_variant(), NOW, sender_responsible=True)


def test_internal_colleague_photo_is_still_refused_when_a_consent_denies_treat() -> None:
    deny = (make_grant("TREAT", decision="deny"),)
    err = refused(make_meta(source="colleague-internal", consent=None, colleague={"name": "Dr A"}), deny)
    assert type(err) is ConsentRequired


@pytest.mark.parametrize("source", ["colleague-internal", "colleague-external"])
def test_colleague_source_needs_colleague(source: str) -> None:
    err = refused(make_meta(source=source))
    assert type(err) is RequiredElementMissing and err.expression == ["colleague"]
    assert err.issue_type == "required"


def test_external_colleague_with_discussion_note_is_accepted_with_note() -> None:
    meta = make_meta(source="colleague-external",
                     colleague={"name": "Dr B", "organisation": "Clinic C",
                                "discussionNote": "referred for review"})
    a = assess(meta)
    assert a.notes == ("Discussed with Dr B (Clinic C): referred for review",) and a.warnings == ()


@pytest.mark.parametrize("note", [None, "", "   "])
def test_external_colleague_without_discussion_note_is_refused(note: str | None) -> None:
    colleague: dict[str, Any] = {"name": "Dr B", "organisation": "Clinic C"}
    if note is not None:
        colleague["discussionNote"] = note
    err = refused(make_meta(source="colleague-external", colleague=colleague))
    assert type(err) is RequiredElementMissing and err.expression == ["colleague.discussionNote"]


def test_external_colleague_secondary_image_gets_both_notes() -> None:
    meta = make_meta(kind="secondary", source="colleague-external", consent=None,
                     colleague={"name": "Dr B", "discussionNote": "ECG discussed by phone"})
    a = assess(meta)
    assert a.notes == ("Discussed with Dr B: ECG discussed by phone", SECONDARY_WARNING)


# -- written consent required ------------------------------------------------------------------------

WRITTEN = {"written_required": True}


def test_written_required_refuses_verbal_for_clinical() -> None:
    verbal = make_meta(consent={"purposes": ["TREAT"], "method": "verbal"})
    err = refused(verbal, tables=policy_variant(consent=WRITTEN))
    assert type(err) is ConsentRequired and err.expression == ["consent.method"]
    assert "written" in err.diagnostics


def test_written_required_refuses_verbal_even_when_pending_is_allowed() -> None:
    tables = policy_variant(consent={"written_required": True, "allow_pending": True})
    with pytest.raises(ConsentRequired):
        assess(make_meta(consent={"purposes": ["TREAT"], "method": "verbal"}), tables=tables)


def test_written_required_accepts_written_for_clinical() -> None:
    assert assess(make_meta(), tables=policy_variant(consent=WRITTEN)) == CLEAN


@pytest.mark.parametrize("kind", ["document", "secondary"])
def test_written_required_does_not_apply_to_other_kinds(kind: str) -> None:
    meta = make_meta(kind=kind, consent={"purposes": ["TREAT"], "method": "verbal"})
    assert not assess(meta, tables=policy_variant(consent=WRITTEN)).consent_pending


def test_written_required_refuses_verbal_consent_on_file_as_only_basis() -> None:
    existing = (make_grant("TREAT", method=ConsentMethod.VERBAL),)
    err = refused(make_meta(consent=None), existing, policy_variant(consent=WRITTEN))
    assert type(err) is ConsentRequired and "not documented as written" in err.diagnostics


def test_written_required_refuses_consent_on_file_of_unknown_method() -> None:
    existing = (make_grant("TREAT", method=None),)
    with pytest.raises(ConsentRequired):
        assess(make_meta(consent=None), existing, policy_variant(consent=WRITTEN))


def test_written_required_accepts_written_consent_on_file() -> None:
    existing = (make_grant("TREAT", id="v", method=ConsentMethod.VERBAL), make_grant("TREAT", id="w"))
    assert assess(make_meta(consent=None), existing, policy_variant(consent=WRITTEN)) == CLEAN


def test_written_required_accepts_patient_implied_consent() -> None:
    """writtenRequired concerns consent recorded by staff: a photo the patient sent carries
    their implied consent for the care it was sent for (the clinical images guidance), and that
    documents care whatever the policy says of verbal consent (review finding 7, kept)."""
    a = assess(make_meta(source="patient", consent=None), tables=policy_variant(consent=WRITTEN))
    assert a.implied_purposes == ("TREAT",)


def test_verbal_consent_on_file_is_a_basis_by_default() -> None:
    existing = (make_grant("TREAT", method=ConsentMethod.VERBAL),)
    assert assess(make_meta(consent=None), existing) == CLEAN


# -- devices -----------------------------------------------------------------------------------------

def test_personal_device_is_refused_when_policy_forbids() -> None:
    err = refused(make_meta(device="personal"), tables=policy_variant(devices={"personal_allowed": False}))
    assert type(err) is BusinessRuleViolation and err.expression == ["device"]


def test_an_organisation_device_is_accepted_when_personal_is_forbidden() -> None:
    assert assess(make_meta(device="organisation"), tables=policy_variant(devices={"personal_allowed": False})) == CLEAN


@pytest.mark.parametrize("kind", ["clinical", "document"])
@pytest.mark.parametrize("source", ["clinician", "colleague-internal"])
def test_a_staff_photo_not_stating_its_device_is_refused_when_personal_is_forbidden(source: str, kind: str) -> None:
    """Review finding F9: the ban was bypassed by leaving ``device`` out (and the record then
    said nothing of the device). Where personal devices are forbidden, staff state theirs."""
    colleague = {"name": "Dr C", "discussionNote": "seen"} if source.startswith("colleague") else None
    meta = make_meta(source=source, kind=kind, **({"colleague": colleague} if colleague else {}))
    err = refused(meta, tables=policy_variant(devices={"personal_allowed": False}))
    assert type(err) is RequiredElementMissing and err.expression == ["device"]
    assert "device" in err.diagnostics
    assert not assess(meta).consent_pending  # allowed by default: the device need not be stated


@pytest.mark.parametrize("device", ["personal", None])
def test_an_external_colleagues_photo_is_not_held_to_the_staff_device_rule(device: str | None) -> None:
    """Review finding (clinical safety): under ``personalAllowed: false`` an external colleague's
    photo, already taken on a device of another organisation, was refused unless the sender
    claimed it was taken on one of this organisation's, and so stayed on the phone it came in."""
    meta = make_meta(source="colleague-external", colleague={"name": "Dr B", "discussionNote": "seen"},
                     **({"device": device} if device else {}))
    assert assess(meta, tables=policy_variant(devices={"personal_allowed": False})).notes == ("Discussed with Dr B: seen",)


@pytest.mark.parametrize("device", ["personal", None])
def test_a_patients_own_photo_is_not_held_to_the_staff_device_rule(device: str | None) -> None:
    """Review finding F8: a patient's upload from their own phone (``device: personal``, the
    truth) was refused under ``personalAllowed: false``, a rule about staff photographing
    patients on their own phones."""
    meta = make_meta(source="patient", consent=None, **({"device": device} if device else {}))
    assert assess(meta, tables=policy_variant(devices={"personal_allowed": False})).implied_purposes == ("TREAT",)


def test_the_personal_device_refusal_fits_a_document_too() -> None:
    err = refused(make_meta(kind="document", device="personal"),
                  tables=policy_variant(devices={"personal_allowed": False}))
    assert "clinical photography" not in err.diagnostics and "personal device" in err.diagnostics


def test_personal_device_is_accepted_by_default() -> None:
    assert assess(make_meta(device="personal")) == CLEAN


# -- codes and hygiene -------------------------------------------------------------------------------

@pytest.mark.parametrize("code", ["EDU", "treat", "PurposeOfUse"])
def test_unknown_purpose_code_is_refused_with_its_position(code: str) -> None:
    err = refused(make_meta(consent={"purposes": ["TREAT", code], "method": "written"}))
    assert type(err) is UnknownCode and err.expression == ["consent.purposes[1]"]
    assert err.issue_type == "code-invalid"


def test_statement_for_non_care_purposes_is_accepted_alongside_treat() -> None:
    meta = make_meta(consent={"purposes": ["TREAT", "TRAIN", "HRESCH"], "method": "written"})
    assert assess(meta) == CLEAN


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        assess(make_meta(), now=datetime(2025, 6, 1, 12, 0))



def test_a_colleagues_photo_needs_the_senders_name_not_blanks() -> None:
    """Rules review: a colleague named "   " was accepted, and the Provenance named no one."""
    err = refused(make_meta(source="colleague-internal", consent=None, colleague={"name": "   "}))
    assert type(err) is RequiredElementMissing and err.expression == ["colleague.name"]


@pytest.mark.parametrize(("taken", "given", "said"), [
    ("2024-03-01T10:15:00+01:00", "2024-06-01", True),       # three months after
    ("2024-03-01", "2024-03-02T08:00:00Z", True),            # the next day
    ("2024-03-01T10:15:00+01:00", "2024-03-01", False),      # the same day
    ("2024-03-01T10:15:00+01:00", "2024-02-20", False),      # before
    (None, "2024-06-01", False),                              # not known when it was taken
])
def test_a_consent_given_after_the_photo_was_taken_is_kept_and_said(taken: str | None, given: str, said: bool) -> None:
    """Clinical safety review: a consent dated months after the photo was recorded without a
    word. The guidance has consent come first; a retrospective one is the patient's consent all the
    same (kept), and said: a warning and a note on the record."""
    meta = make_meta(consent={"purposes": ["TREAT"], "method": "written", "date": given},
                     **({"takenAt": taken} if taken else {}))
    result = assess(meta, now=datetime(2025, 6, 1, 12, 0, tzinfo=UTC))
    expected = ("consent documented as given on " + given[:10] + ", after the photo was taken on "
                + (taken or "")[:10] + " (retrospective consent)")
    assert result.warnings == ((expected,) if said else ())
    assert result.notes == ((expected,) if said else ())


@pytest.mark.parametrize(("taken", "given", "said"), [
    # review mobile finding 3: a Sydney phone writes takenAt in UTC, its consent screen local time
    ("2026-11-27T23:30:00Z", "2026-11-28T10:25:00+11:00", None),          # 5 minutes before the photo
    ("2026-11-27T23:30:00Z", "2026-11-28T10:30:00+11:00", None),          # the same instant
    ("2026-11-28T10:30:00+11:00", "2026-11-27T23:35:00Z", None),          # minutes after, the same day in +11:00
    ("2026-11-27T23:30:00Z", "2026-11-28T11:00:00+11:00", "2026-11-28"),  # 00:00Z: the next day of the photo's
    ("2026-11-28T10:30:00+11:00", "2026-11-28T13:00:00Z", "2026-11-29"),  # 00:00+11:00 on the 29th
    # a date alone is compared with the other value's date in that value's own offset
    ("2026-11-27T23:30:00Z", "2026-11-28", "2026-11-28"),
    ("2026-11-28T10:30:00+11:00", "2026-11-28", None),
    ("2026-11-27", "2026-11-28T08:00:00+11:00", "2026-11-28"),
    ("2026-11-27", "2026-11-27T23:00:00-05:00", None),
])
def test_a_consent_and_takenat_in_other_offsets_are_compared_on_one_clock(taken: str, given: str,
                                                                           said: str | None) -> None:
    meta = make_meta(consent={"purposes": ["TREAT"], "method": "written", "date": given}, takenAt=taken)
    result = assess(meta, now=datetime(2026, 12, 1, 12, 0, tzinfo=UTC))
    if said is None:
        assert result.warnings == () and result.notes == ()
    else:
        expected = f"consent documented as given on {said}, after the photo was taken on {taken[:10]}"
        assert result.warnings == (expected + " (retrospective consent)",)


def test_a_consent_restricted_to_other_records_is_named_not_denied_to_exist() -> None:
    """Review newwrites F6: a photo sent again without its consent statement, whose patient's
    only Consent for TREAT is restricted to the records it was given with (provision.data, as a
    submission's one Consent is), was refused saying "no active Consent permitting TREAT is on
    file for this patient": an engine concluded the consent was lost. It says there is one, for
    other records only, and what to send."""
    bare = make_meta(consent=None)
    err = refused(bare, (make_grant("TREAT", data_refs=("Media/m1", "Media/m2")),))
    assert type(err) is ConsentRequired
    assert "no active Consent permitting TREAT is on file" not in err.diagnostics
    assert "restricted to other records" in err.diagnostics and "Idempotency-Key" in err.diagnostics
    # none at all: said as before
    assert "no active Consent permitting TREAT is on file" in refused(bare).diagnostics
