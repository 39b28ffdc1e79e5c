"""An ingest's warnings as OperationOutcome issues of a transaction-response entry
(adapter.mapping.ingest_warnings; clinical safety review finding 6)."""

from __future__ import annotations

import pytest

from adapter.consent.ingest import PENDING_WARNING, PENDING_WARNING_NO_BREAK_GLASS
from adapter.imaging.quality import quality_warnings
from adapter.mapping.codes import INGEST_WARNING_SYSTEM
from adapter.mapping.ingest_warnings import (
    QUALITY_WARNING_STARTS,
    receipt_outcome,
    replayed_outcome,
    warning_issues,
)
from adapter.mapping.outcome import outcome
from adapter.mapping.transaction import transaction_response
from adapter.model.policy import Quality
from tests.conftest import record_emitted

pytestmark = pytest.mark.unit

SECONDARY = "Secondary image: a photograph of an image or trace shown on another platform."
SMALL = "image is 320x240 pixels, below the policy minimum of 640x480"


def _coded(issue: dict[str, object]) -> list[str]:
    details = issue["details"]
    assert isinstance(details, dict)
    return [c["code"] for c in details.get("coding", []) if c["system"] == INGEST_WARNING_SYSTEM]


@pytest.mark.parametrize("pending", [PENDING_WARNING, PENDING_WARNING_NO_BREAK_GLASS])
def test_each_warning_is_an_issue_in_the_receipt_s_words_and_order(pending: str) -> None:
    issues = warning_issues([SECONDARY, pending, SMALL], consent_pending=True, quality={SMALL})
    assert [i["severity"] for i in issues] == ["warning"] * 3
    assert [i["details"]["text"] for i in issues] == [SECONDARY, pending, SMALL]
    assert [i["code"] for i in issues] == ["informational", "business-rule", "informational"]
    assert [_coded(i) for i in issues] == [[], ["consent-pending"], ["image-quality"]]
    assert all("diagnostics" not in i and "expression" not in i for i in issues)
    record_emitted(outcome(issues))


def test_consent_pending_is_coded_only_when_the_receipt_says_so() -> None:
    """The words alone do not make a record consent pending: the receipt's consentPending does."""
    [issue] = warning_issues([PENDING_WARNING], consent_pending=False)
    assert issue["code"] == "informational" and _coded(issue) == []
    assert warning_issues([], consent_pending=True) == []


def test_the_ingest_s_issues_come_first_in_the_entry_s_outcome_whatever_else_it_carries() -> None:
    ingested = warning_issues([PENDING_WARNING], consent_pending=True)
    response = transaction_response([("Binary/b/_history/1", "201 Created", "2024-03-01T09:16:03.000Z"),
                                     ("Media/m/_history/1", "201 Created", "2024-03-01T09:16:03.000Z")],
                                    informed={1: "Media/m created (version 1)"}, ingested={1: ingested})
    binary, record = (e["response"] for e in response["entry"])
    assert "outcome" not in binary
    assert record["outcome"]["issue"][0] == ingested[0]
    assert record["outcome"]["issue"][1]["severity"] == "information"
    record_emitted(response)


def test_a_receipt_stored_without_an_outcome_gets_the_one_its_warnings_make() -> None:
    """Verify review 2, finding 6: receipts stored before ``outcome`` replayed without it."""
    warnings = [SECONDARY, PENDING_WARNING, SMALL]
    assert replayed_outcome({"warnings": warnings, "consentPending": True}) \
        == receipt_outcome(warnings, consent_pending=True, quality={SMALL})
    assert replayed_outcome({"warnings": [], "consentPending": False}) == receipt_outcome([], consent_pending=False)
    assert replayed_outcome({"record": "Media/m"}) is None


def test_every_quality_warning_is_told_by_its_words() -> None:
    said = quality_warnings(width=100, height=80, sharpness=0.5, jpeg_quality=10, quality=Quality())
    assert len(said) == 3 and all(w.startswith(QUALITY_WARNING_STARTS) for w in said)
    assert not SECONDARY.startswith(QUALITY_WARNING_STARTS) and not PENDING_WARNING.startswith(QUALITY_WARNING_STARTS)
