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
(take the photo again).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from adapter.consent.ingest import PENDING_PREFIX
from adapter.mapping.codes import INGEST_WARNING_SYSTEM
from adapter.mapping.fhir_r4 import JSON, coding
from adapter.mapping.outcome import issue

CONSENT_PENDING = "consent-pending"
IMAGE_QUALITY = "image-quality"
_DISPLAY = {CONSENT_PENDING: "consent pending", IMAGE_QUALITY: "image quality below the policy's minimum"}


def warning_issues(warnings: Sequence[str], *, consent_pending: bool, quality: Collection[str] = ()) -> list[JSON]:
    """An issue per warning of a receipt (its ``warnings``, ``consentPending``); ``quality``:
    which of them are the image's quality warnings (the record's quality-warning extensions)."""
    out: list[JSON] = []
    for text in warnings:
        if consent_pending and text.startswith(PENDING_PREFIX):
            out.append(_issue("business-rule", text, CONSENT_PENDING))
        else:
            out.append(_issue("informational", text, IMAGE_QUALITY if text in quality else None))
    return out


def _issue(issue_type: str, text: str, code: str | None) -> JSON:
    details: JSON = {"coding": [coding(INGEST_WARNING_SYSTEM, code, _DISPLAY[code])]} if code else {}
    details["text"] = text
    return issue("warning", issue_type, details=details)


__all__ = ["CONSENT_PENDING", "IMAGE_QUALITY", "warning_issues"]
