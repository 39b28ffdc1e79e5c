"""The warnings of an ingest (the ``warnings`` of a ``POST /photos`` receipt: consent pending,
the image below the policy's quality minimums, a kind's warning such as a secondary image's,
retrospective consent) as R4 OperationOutcome issues (https://hl7.org/fhir/R4/operationoutcome.html),
for the record's entry of a transaction-response (IHE MHD ITI-65 2:3.65.4.2.2: a Recipient
returns its warnings in ``response.outcome``), so a client that sends a transaction is told what
one that sends ``POST /photos`` is.

One issue each, in the receipt's order: severity ``warning`` (the photo was stored),
``details.text`` the receipt's words. The IssueType says whether a rule is left unmet:
``business-rule`` for consent pending, since the rule that refuses a clinical photo without
documented consent for TREAT (the refusal is ``business-rule`` too) is met only once a Consent
is recorded, and until then reads are refused; ``informational`` for the others, advice no rule
enforces (a photo below the quality minimums is never refused). Those a client may act on while
the patient is there carry a code of the adapter's own (``details.coding``,
:data:`INGEST_WARNING_SYSTEM`): ``consent-pending`` (record the consent) and ``image-quality``
(take the photo again), ``filed-for-another-patient`` (the same image is filed for another
patient: if that filing was the mistake, mark it entered-in-error).

The same system codes the refusals of a photo stored before (``details.coding`` of a 409's
issue): ``stored-with-other-details`` (the photo IS stored and held, as the record its
``Location`` names, with other details than the request's: keep the record, or correct it as
docs/operations.md says) and ``stored-entered-in-error`` (the record it was stored as is marked
entered-in-error, its image released to no one: the device keeps the photo and files it again,
with corrected details, under a new Idempotency-Key).

The ``POST /photos`` receipt carries the same issues as an OperationOutcome (its ``outcome``,
:func:`receipt_outcome`), beside the plain ``warnings`` it always had (review mobile finding 7:
an app could tell "take it again now" from information only by matching English words).

A capture time EXIF gives without an offset (``OffsetTimeOriginal``), kept when ``takenAt`` is not
sent, is kept as its date alone (FHIR dateTime needs a zone with a time): said as a warning
(:func:`capture_time_warnings`; review mobile finding 11), so that the app sends ``takenAt``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from adapter.consent.ingest import PENDING_PREFIX
from adapter.mapping.codes import INGEST_WARNING_SYSTEM
from adapter.mapping.fhir_r4 import JSON, coding
from adapter.mapping.outcome import issue, outcome

CONSENT_PENDING = "consent-pending"
IMAGE_QUALITY = "image-quality"
FILED_FOR_ANOTHER_PATIENT = "filed-for-another-patient"
STORED_WITH_OTHER_DETAILS = "stored-with-other-details"
STORED_ENTERED_IN_ERROR = "stored-entered-in-error"
_DISPLAY = {CONSENT_PENDING: "consent pending", IMAGE_QUALITY: "image quality below the policy's minimum",
            FILED_FOR_ANOTHER_PATIENT: "the same image is filed for another patient",
            STORED_WITH_OTHER_DETAILS: "stored before, with other details",
            STORED_ENTERED_IN_ERROR: "stored before, as a record since marked entered-in-error"}

#: The receipt's warning when the same stored image is filed for another patient (a record not
#: marked entered-in-error): it names neither that patient nor that record. Only a caller holding
#: the photo's bytes learns it, and learns no more than that the photo is in another chart.
FILED_FOR_ANOTHER_PATIENT_WARNING = (
    "the same image is filed for another patient already; if it was filed under the wrong patient, have that "
    "record marked entered-in-error (docs/operations.md, Correcting a misfiled record)")


def details_code(code: str) -> str:
    """``code`` of :data:`INGEST_WARNING_SYSTEM` as an error's ``details_code`` (``system#code``)."""
    return f"{INGEST_WARNING_SYSTEM}#{code}"


def warning_issues(warnings: Sequence[str], *, consent_pending: bool, quality: Collection[str] = ()) -> list[JSON]:
    """An issue per warning of a receipt (its ``warnings``, ``consentPending``); ``quality``:
    which of them are the image's quality warnings (the record's quality-warning extensions)."""
    out: list[JSON] = []
    for text in warnings:
        if consent_pending and text.startswith(PENDING_PREFIX):
            out.append(_issue("business-rule", text, CONSENT_PENDING))
        elif text == FILED_FOR_ANOTHER_PATIENT_WARNING:
            out.append(_issue("informational", text, FILED_FOR_ANOTHER_PATIENT))
        else:
            out.append(_issue("informational", text, IMAGE_QUALITY if text in quality else None))
    return out


#: The receipt's ``warnings`` entry for a capture time kept as its date (:func:`capture_time_warnings`).
DATE_ONLY_CAPTURE_TIME = ("the photo's EXIF capture time has no offset (no OffsetTimeOriginal), so it was kept as its "
                          "date alone: send takenAt with the time and its zone to keep the time")


def capture_time_warnings(taken_at: datetime | None, capture_time: datetime | None) -> list[str]:
    """The warning for a photo whose time taken is the EXIF capture time (no ``takenAt``), which
    is kept as its date because EXIF gave no offset (a naive time); else none."""
    if taken_at is None and capture_time is not None and capture_time.utcoffset() is None:
        return [DATE_ONLY_CAPTURE_TIME]
    return []


def receipt_outcome(warnings: Sequence[str], *, consent_pending: bool, quality: Collection[str] = ()) -> JSON:
    """The receipt's ``outcome``: an OperationOutcome of :func:`warning_issues` (the issues the
    transaction-response gives the record's entry), or, without warnings, of one ``information``
    issue saying the photo was stored (an OperationOutcome has at least one issue)."""
    issues = warning_issues(warnings, consent_pending=consent_pending, quality=quality)
    return outcome(issues or [issue("information", "informational", details={"text": "the photo was stored"})])


#: How the image's quality warnings begin (adapter.imaging.quality.quality_warnings): a receipt
#: keeps its warnings alone, so :func:`replayed_outcome` tells them by their words.
QUALITY_WARNING_STARTS = ("image is ", "image looks blurred ", "JPEG quality estimated at ")


def replayed_outcome(receipt: Mapping[str, Any]) -> JSON | None:
    """The ``outcome`` of a receipt stored before receipts had one (schema 22 and before: verify
    review 2, finding 6), rebuilt from its ``warnings`` and ``consentPending`` as
    :func:`receipt_outcome` made it; None for a receipt without warnings (not a photo's)."""
    warnings = receipt.get("warnings")
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        return None
    return receipt_outcome(warnings, consent_pending=receipt.get("consentPending") is True,
                           quality=[w for w in warnings if w.startswith(QUALITY_WARNING_STARTS)])


def _issue(issue_type: str, text: str, code: str | None) -> JSON:
    details: JSON = {"coding": [coding(INGEST_WARNING_SYSTEM, code, _DISPLAY[code])]} if code else {}
    details["text"] = text
    return issue("warning", issue_type, details=details)


__all__ = ["CONSENT_PENDING", "DATE_ONLY_CAPTURE_TIME", "FILED_FOR_ANOTHER_PATIENT",
           "FILED_FOR_ANOTHER_PATIENT_WARNING", "IMAGE_QUALITY", "QUALITY_WARNING_STARTS", "STORED_ENTERED_IN_ERROR",
           "STORED_WITH_OTHER_DETAILS", "capture_time_warnings", "details_code", "receipt_outcome",
           "replayed_outcome", "warning_issues"]
