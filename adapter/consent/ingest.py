"""Consent rules applied when a photo arrives (the clinical images guidance, issue text).

Pure: the caller passes the photo's metadata, the patient's Consents already on file (as
:class:`ConsentGrant`) and ``now``; the result says what to record, or an exception says why the
photo is refused. Nothing here writes a Consent: the ingest service does, from this assessment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from adapter.consent.rules import (
    DENY,
    PERMIT,
    TREAT,
    PurposeClass,
    classify_purpose,
    grant_covers,
    grant_in_force,
    purposes_cover,
    require_aware,
)
from adapter.errors import BusinessRuleViolation, ConsentRequired, RequiredElementMissing, UnknownCode
from adapter.mapping.fhir_r4 import parse_fhir_datetime, utc_instant
from adapter.mapping.tables import Tables
from adapter.model.consent import ConsentGrant
from adapter.model.photo import (
    Colleague,
    ConsentMethod,
    DeviceOwnership,
    DocumentMetadata,
    PhotoKind,
    PhotoMetadata,
    PhotoSource,
)
from adapter.model.policy import Policy
from adapter.refusals import RefusalCode

_COLLEAGUE_SOURCES = frozenset({PhotoSource.COLLEAGUE_INTERNAL, PhotoSource.COLLEAGUE_EXTERNAL})

#: How the consent-pending warning begins, whatever the policy (each version of its words so far):
#: a receipt's warning is told by it (adapter.mapping.ingest_warnings).
PENDING_PREFIX = "consent pending: "
PENDING_WARNING = PENDING_PREFIX + "readable only under break-glass until a Consent permitting TREAT is recorded"
PENDING_WARNING_NO_BREAK_GLASS = (PENDING_PREFIX + "not readable until consent for TREAT is recorded "
                                  "(break-glass is disabled by policy)")
#: What a consent-pending record says of itself (a note), until consent for care is documented.
PENDING_NOTES = (PENDING_WARNING, PENDING_WARNING_NO_BREAK_GLASS)


def documented_later(consents: Sequence[str], when: str) -> str:
    """The note of a consent-pending record once Consent versions ``consents`` document its
    consent for care (recorded at ``when``, an instant), in place of its pending note: what was
    documented then, and by what; not that the consent is still in force (a withdrawal later
    changes the decision, not the note)."""
    return (f"consent for care documented after the photo was stored: {', '.join(consents)}, recorded {when} "
            "(consent pending until then)")


@dataclass(frozen=True)
class IngestAssessment:
    """What the consent rules require the ingest service to record with the photo."""

    consent_pending: bool
    """A clinical photo kept without consent for TREAT (``consent.allowPending``): flag the
    record (``AccessFacts.consent_pending``); it is readable only under break-glass."""
    implied_purposes: tuple[str, ...]
    """Purposes to record as a Consent with policyRule v3-ActCode#IMPLIED, scoped by
    provision.data to the new record: set only for a photo the patient sent without a consent
    statement. Empty otherwise (a given ``consent`` statement is recorded as given)."""
    warnings: tuple[str, ...]
    """For the ingest response (OperationOutcome issues of severity warning)."""
    notes: tuple[str, ...]
    """Annotations to put on the record (Media.note / DocumentReference description)."""


def assess_ingest(meta: PhotoMetadata, existing: Sequence[ConsentGrant], tables: Tables,
                  now: datetime, *, sender_responsible: bool = False) -> IngestAssessment:
    """Apply the guidance's ingest rules to one photo.

    * An object a system of the organisation sends (``sender_responsible``: a PACS, an allowed
      calling AE of the DICOM bridge, whose images are already the organisation's record): the
      sender is responsible for consent, so no documented consent is required here (an active
      Consent denying TREAT still refuses it); non-care purposes still need the patient's
      explicit Consent at read time.
    * A photo a person sends is held to the rules below whoever took it: a colleague inside the
      organisation (``colleague-internal``) shares its one record, where the guidance wants the
      patient's consent documented, as a clinician's photo does (it was the way round
      ``writtenRequired``: a photo refused for verbal consent was stored when it stated none).
    * ``clinical`` photos need documented consent for TREAT: a ``consent`` statement listing
      TREAT, the implied consent of a patient who sent the photo, or an active Consent on file
      for this patient that permits TREAT now and is not limited to other records
      (provision.data). Without one the photo is refused unless ``consent.allowPending``.
    * ``document`` and ``secondary`` photos need no consent for care; a kind's warning
      (mappings/kinds.yaml) becomes a warning and a note.
    * Whatever the kind and source, an active Consent denying TREAT for the patient refuses the
      photo: it could not be read for care (deny wins at read time).
    * A photo from the patient implies consent for ``consent.patientImpliedPurposes`` only.
    * Colleague sources need ``colleague``; an external colleague also ``discussionNote``.
    * A statement sent with a photo from the patient covers care purposes only; one dated in
      the future is refused; one dated after the day the photo was taken is kept with a warning
      and a note saying so (retrospective consent).
    * ``consent.writtenRequired`` refuses verbal consent for clinical photos: consent recorded
      by staff (a statement, or the Consent on file the photo rests on). A photo the patient sent
      still carries their implied consent for care (the guidance: the purpose it was sent for),
      which documents care under it too.
    * ``devices.personalAllowed: false`` is about the organisation's staff photographing patients
      on their own phones: a photo from a clinician or a colleague inside the organisation is
      refused with ``device: personal``, and without ``device`` (fail closed: the ban is not
      bypassed by leaving the field out). A photo the patient sent is taken on the patient's own
      device by nature, and an external colleague's on a device no policy of this organisation
      governs, already taken: neither is held to it (refusing it would leave it on the phone or
      messaging app it arrived in).

    Raises:
        RequiredElementMissing: ``colleague`` or ``colleague.discussionNote`` is missing, or
            ``device`` from staff where the policy forbids personal devices.
        UnknownCode: a purpose in ``consent.purposes`` is not a v3-ActReason code we know.
        BusinessRuleViolation: a personal device where the policy forbids it.
        ConsentRequired: consent for TREAT is missing, refused by an active deny Consent (for
            every kind), or
            given in a form the rules do not accept (implied from someone other than the
            patient, implied for a non-care purpose, verbal where written is required).
    """
    require_aware(now)
    policy = tables.policy
    _check_colleague(meta)
    _check_statement_codes(meta, tables)
    _check_device(meta, policy)
    _check_statement_method(meta, tables)
    _check_statement_source(meta, tables)
    _check_statement_date(meta, now)

    implied: tuple[str, ...] = ()
    if meta.source is PhotoSource.PATIENT and meta.consent is None:
        implied = tuple(policy.consent.patient_implied_purposes)

    warnings: list[str] = []
    notes: list[str] = []
    if meta.colleague is not None and meta.colleague.discussion_note:
        notes.append(_discussion_note(meta.colleague))
    kind_warning = tables.kinds[meta.kind].warning
    if kind_warning:
        warnings.append(kind_warning)
        notes.append(kind_warning)
    retrospective = _retrospective_consent(meta)
    if retrospective:
        warnings.append(retrospective)
        notes.append(retrospective)

    _check_care_not_denied(meta, existing, tables, now)
    pending = False
    if tables.kinds[meta.kind].needs_care_consent:
        pending = _needs_pending(meta, implied, existing, tables, now, sender_responsible=sender_responsible)
        if pending:
            warnings.append(PENDING_WARNING if policy.break_glass.enabled else PENDING_WARNING_NO_BREAK_GLASS)

    return IngestAssessment(consent_pending=pending, implied_purposes=implied,
                            warnings=tuple(warnings), notes=tuple(notes))


def _check_colleague(meta: PhotoMetadata) -> None:
    """The guidance: a colleague's photo is stored with Provenance naming the sender; an
    external colleague's also with the note of the discussion."""
    if meta.source not in _COLLEAGUE_SOURCES:
        return
    if meta.colleague is None or not meta.colleague.name.strip():
        raise RequiredElementMissing(
            f"a photo from a {meta.source.value} source needs 'colleague' with the sender's name, so its "
            "Provenance can name the sender", expression="colleague" if meta.colleague is None else "colleague.name")
    note = meta.colleague.discussion_note
    if meta.source is PhotoSource.COLLEAGUE_EXTERNAL and (note is None or not note.strip()):
        raise RequiredElementMissing(
            "a photo from an external colleague needs 'colleague.discussionNote': the note of the "
            "discussion is stored with it", expression="colleague.discussionNote")


def _check_statement_codes(meta: PhotoMetadata, tables: Tables) -> None:
    if meta.consent is None:
        return
    for i, code in enumerate(meta.consent.purposes):
        if code not in tables.purposes.codes:
            raise UnknownCode(f"consent purpose '{code}' is not a v3-ActReason purpose-of-use code "
                              f"accepted here ({tables.purposes.system})",
                              expression=f"consent.purposes[{i}]")


def _check_device(meta: PhotoMetadata, policy: Policy) -> None:
    """The guidance's personal-device rule, for the photos the organisation's staff take
    (clinician, colleague inside it): a patient's own upload comes from the patient's own device,
    and an external colleague's from a device of another organisation, which the rule is not about."""
    if policy.devices.personal_allowed or meta.source in (PhotoSource.PATIENT, PhotoSource.COLLEAGUE_EXTERNAL):
        return
    if meta.device is None:
        raise RequiredElementMissing(
            "the organisation's policy forbids staff to take patient photos on personal devices, so a photo "
            f"from a {meta.source.value} source must state its capture device ('device': organisation)",
            expression="device")
    if meta.device is DeviceOwnership.PERSONAL:
        raise BusinessRuleViolation("the organisation's policy forbids staff to take patient photos on personal "
                                    "devices; take it on a device of the organisation", expression="device",
                                    refusal=RefusalCode.PERSONAL_DEVICE_REFUSED)


def _check_statement_method(meta: PhotoMetadata, tables: Tables) -> None:
    """Refuse a consent statement whose method the rules do not accept."""
    statement = meta.consent
    if statement is None:
        return
    if statement.method is ConsentMethod.IMPLIED:
        if meta.source is not PhotoSource.PATIENT:
            raise ConsentRequired(
                f"implied consent only comes from the patient sending the photo; for a photo from a "
                f"{meta.source.value} source document verbal or written consent",
                expression="consent.method", refusal=RefusalCode.CONSENT_INSUFFICIENT)
        for i, code in enumerate(statement.purposes):
            if classify_purpose(code, tables) is not PurposeClass.CARE:
                raise ConsentRequired(
                    f"implied consent covers care only; '{code}' needs explicit (verbal or written) "
                    "consent", expression=f"consent.purposes[{i}]", refusal=RefusalCode.CONSENT_INSUFFICIENT)
    if (statement.method is ConsentMethod.VERBAL and meta.kind is PhotoKind.CLINICAL
            and tables.policy.consent.written_required):
        raise ConsentRequired("the organisation's policy requires written consent for clinical photos; "
                              "verbal consent was given", expression="consent.method",
                              refusal=RefusalCode.WRITTEN_CONSENT_REQUIRED)


def _check_statement_source(meta: PhotoMetadata, tables: Tables) -> None:
    """The guidance: a photo the patient sent carries consent only for the purpose it was sent
    for (care). A statement sent with it through the patient's own channel grants more only as
    the patient's written consent with its form (a signed document): a "verbal" consent there
    was given to no one who could document it. Otherwise the consent for training or research
    is recorded as its own Consent."""
    statement = meta.consent
    if meta.source is not PhotoSource.PATIENT or statement is None:
        return
    if statement.method is ConsentMethod.WRITTEN and statement.form:
        return
    for i, code in enumerate(statement.purposes):
        if classify_purpose(code, tables) is not PurposeClass.CARE:
            raise ConsentRequired(
                f"a photo the patient sent carries consent only for the care it was sent for; '{code}' needs the "
                "patient's written consent with its form (consent.form), or a Consent recorded on its own "
                "(POST /fhir/Consent)", expression=f"consent.purposes[{i}]",
                refusal=RefusalCode.CONSENT_INSUFFICIENT)


#: How far ahead of the adapter's clock a date its sender gives may lie (the clocks and time zones
#: of capture devices): a consent's date, and the time the photo was taken, alike.
DATE_AHEAD_SLACK = timedelta(days=1)


def dated_ahead(value: datetime | date, now: datetime) -> bool:
    """Whether ``value`` lies more than :data:`DATE_AHEAD_SLACK` after ``now``: a date from its
    first instant in UTC, a time without a zone read as UTC (the slack covers any zone)."""
    return utc_instant(value) > now + DATE_AHEAD_SLACK


def _check_statement_date(meta: PhotoMetadata, now: datetime) -> None:
    """A consent is documented when it was given: a date in the future is refused (the Consent
    would not be in force, and the photo unreadable for care without a word)."""
    given = meta.consent.date if meta.consent is not None else None
    if given is not None and dated_ahead(given, now):
        raise ConsentRequired("the consent is dated in the future: give the date it was given",
                              expression="consent.date", refusal=RefusalCode.DATED_IN_FUTURE)


def check_capture_time(meta: PhotoMetadata, now: datetime) -> None:
    """A photo is taken before it is received: a time it was taken that its sender gives in the
    future is refused, as a consent's date is (:func:`_check_statement_date`, the same slack).
    Stored, it would be the record's created time and its DICOM StudyDate, sort the photo first
    in every search by date, and keep a consent given after it from being said to be
    retrospective. What a sender gives: ``takenAt`` (in a transaction Bundle a Media's
    ``createdDateTime``, a DocumentReference's ``attachment.creation``, else its
    ``context.period.start``), and a DocumentReference's ``context.period.start`` kept as sent
    (the object's StudyDate is read from it first). Checked before the photo is decoded.

    Raises:
        BusinessRuleViolation: a time more than DATE_AHEAD_SLACK ahead of ``now`` (422,
            ``takenAt``, or ``DocumentReference.context.period.start``).
    """
    require_aware(now)
    if meta.taken_at is not None and dated_ahead(meta.taken_at, now):
        raise BusinessRuleViolation(f"the photo is dated in the future ({meta.taken_at.isoformat()}): give the time "
                                    "it was taken: nothing was stored", expression="takenAt",
                                    refusal=RefusalCode.DATED_IN_FUTURE)
    document = getattr(meta, "document", None)  # a transaction's DocumentReference (TransactionPhotoMetadata)
    period = document.period if isinstance(document, DocumentMetadata) else None
    start = parse_fhir_datetime(period.get("start")) if period else None
    if start is not None and dated_ahead(start, now):
        raise BusinessRuleViolation(f"the document's service period starts in the future ({start.isoformat()}): "
                                    "give when the photo was taken: nothing was stored",
                                    expression="DocumentReference.context.period.start",
                                    refusal=RefusalCode.DATED_IN_FUTURE)


def check_exif_capture_time(meta: PhotoMetadata, capture_time: datetime | None, now: datetime) -> None:
    """The photo's EXIF capture time (kept under ``metadata.keepCaptureTime``) is when it was
    taken unless its sender gives ``takenAt`` (adapter.mapping.provenance.taken_time): held then
    to :func:`check_capture_time`'s rule. A camera's clock set wrong is the usual cause; the
    sender can say when the photo was taken with ``takenAt``, which is kept instead.

    Raises:
        BusinessRuleViolation: no ``takenAt``, and the EXIF time is more than DATE_AHEAD_SLACK
            ahead of ``now`` (422, at ``file``: the image says it).
    """
    if meta.taken_at is None and capture_time is not None and dated_ahead(capture_time, now):
        raise BusinessRuleViolation(f"the photo's EXIF capture time ({capture_time.isoformat()}) is in the future "
                                    "(the camera's clock?): send takenAt with the time it was taken: nothing was "
                                    "stored", expression="file", refusal=RefusalCode.DATED_IN_FUTURE)


def _retrospective_consent(meta: PhotoMetadata) -> str | None:
    """The guidance has consent come before the photo. A statement dated after the day the photo
    was taken (a consent obtained once an unconscious patient could give it, or one documented
    late) is kept, as the consent it is, and said: a warning and a note on the record, so that no
    reader takes it for consent given beforehand (clinical safety review: it was recorded without
    a word).

    The two are compared on one clock (review mobile finding 3: a phone writing ``takenAt`` in UTC
    and the consent in local time got a false note): both with a time and a zone, the consent's
    instant is read in ``takenAt``'s offset, and flagged when it falls on a later day there (after
    the end of the photo's day, so a consent minutes after the photo, the same day, is not); a
    date alone (a consent's ``date``, or a ``takenAt`` without a time) has no zone, and is compared
    with the other value's date in that value's own offset."""
    given = meta.consent.date if meta.consent is not None else None
    taken = meta.taken_at
    if given is None or taken is None:
        return None
    if isinstance(given, datetime) and _zoned(given) and _zoned(taken):
        given = given.astimezone(taken.tzinfo)
    given_day = given.date() if isinstance(given, datetime) else given
    taken_day = taken.date()
    if given_day <= taken_day:
        return None
    return (f"consent documented as given on {given_day.isoformat()}, after the photo was taken on "
            f"{taken_day.isoformat()} (retrospective consent)")


def _zoned(value: datetime) -> bool:
    """A time with its zone (a date-only ``takenAt`` is read as a naive midnight)."""
    return value.tzinfo is not None and value.utcoffset() is not None


def _needs_pending(meta: PhotoMetadata, implied: tuple[str, ...], existing: Sequence[ConsentGrant],
                   tables: Tables, now: datetime, *, sender_responsible: bool = False) -> bool:
    """Find the documented consent for TREAT a clinical photo needs.

    Returns False when there is one, True when there is none and the policy allows keeping the
    photo as consent pending; raises ConsentRequired otherwise.
    """
    rules = tables.policy.consent
    patient = meta.patient.identifier
    in_force = [g for g in existing if grant_in_force(g, patient, None, now)]

    if sender_responsible:
        return False
    if meta.consent is not None and purposes_cover(meta.consent.purposes, TREAT, tables):
        return False
    if implied and purposes_cover(implied, TREAT, tables):
        return False

    on_file = [g for g in in_force if g.decision == PERMIT and grant_covers(g, TREAT, tables)]
    acceptable = [g for g in on_file if not rules.written_required or g.method is ConsentMethod.WRITTEN]
    if acceptable:
        return False
    if rules.allow_pending:
        return True

    if meta.consent is not None:
        given = ", ".join(meta.consent.purposes)
        missing = f"the consent given lists {given} but not TREAT"
        expression = "consent.purposes"
    elif implied:
        missing = f"the patient's implied consent covers {', '.join(implied)} but not TREAT"
        expression = "consent"
    else:
        missing = "no consent was given with the photo"
        expression = "consent"
    elsewhere = [g for g in existing if g.data_refs and g.decision == PERMIT and grant_covers(g, TREAT, tables)
                 and grant_in_force(g, patient, next(iter(g.data_refs)), now)]
    if on_file:
        on_file_text = ("the Consent on file for TREAT is not documented as written, which the "
                        "organisation's policy requires")
    elif elsewhere:  # one given with other photos (a submission's, restricted by provision.data)
        on_file_text = ("the patient's active Consent permitting TREAT on file is restricted to other records "
                        "(provision.data): send the photo with its consent statement, or, if it was stored "
                        "before, again with the Idempotency-Key it was stored under")
    else:
        on_file_text = "no active Consent permitting TREAT is on file for this patient"
    raise ConsentRequired(f"a clinical photo needs documented consent for TREAT: {missing}, and "
                          f"{on_file_text}", expression=expression,
                          refusal=RefusalCode.WRITTEN_CONSENT_REQUIRED if on_file else None)


def _check_care_not_denied(meta: PhotoMetadata, existing: Sequence[ConsentGrant], tables: Tables,
                           now: datetime) -> None:
    """An active Consent that denies TREAT (for all the patient's data, not only other records)
    is a refusal, not an absence: deny wins at read time whatever the kind of photo
    (adapter.consent.decision, step 5), so keeping the photo, a document or secondary one too,
    would store a record nobody may use for care."""
    patient = meta.patient.identifier
    if any(g.decision == DENY and grant_covers(g, TREAT, tables) and grant_in_force(g, patient, None, now)
           for g in existing):
        raise ConsentRequired("an active Consent on file denies TREAT for this patient; record the "
                              "patient's new decision (make that Consent inactive) before sending "
                              "photos of this patient", expression="consent",
                              refusal=RefusalCode.CONSENT_DENIED)


def _discussion_note(colleague: Colleague) -> str:
    who = colleague.name if not colleague.organisation else f"{colleague.name} ({colleague.organisation})"
    return f"Discussed with {who}: {colleague.discussion_note}"
