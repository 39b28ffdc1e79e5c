"""OperationOutcome builders: every AdapterError subclass renders a valid R4 OperationOutcome."""

from __future__ import annotations

from typing import Any

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from adapter import errors
from adapter.mapping import codes
from adapter.mapping.fhir_r4 import coding
from adapter.mapping.outcome import (
    break_glass_hint,
    information_outcome,
    issue,
    operation_outcome,
    outcome,
    outcome_from_error,
    refusal_coding,
    warnings_outcome,
)
from adapter.refusals import RefusalCode
from tests.support.fhir_validator import validate_r4

pytestmark = pytest.mark.unit

ERROR_CLASSES = [getattr(errors, name) for name in errors.__all__ if isinstance(getattr(errors, name), type)]


def subclasses(cls: type) -> set[type]:
    out: set[type] = set(cls.__subclasses__())
    for sub in list(out):
        out |= subclasses(sub)
    return out


def test_every_error_class_is_listed() -> None:
    # the adapter's own: a test may subclass one for its purpose (test_dicom_status's Unlisted),
    # which lives on among the subclasses until it is collected
    ours = {c for c in subclasses(errors.AdapterError) if c.__module__ == errors.__name__}
    assert ours | {errors.AdapterError} == set(ERROR_CLASSES)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_outcome_from_every_error(cls: type[errors.AdapterError]) -> None:
    body = outcome_from_error(cls("something went wrong", expression="Media.status"))
    OperationOutcome.model_validate(body)
    (only,) = body["issue"]
    expected: dict[str, Any] = {"severity": "error", "code": cls.issue_type, "diagnostics": "something went wrong",
                                "expression": ["Media.status"]}
    if cls.refusal is not None:  # its refusal code (adapter.refusals)
        expected["details"] = {"coding": [refusal_coding(cls.refusal)]}
    assert only == expected


def test_all_outcomes_validate_with_npm_validators() -> None:
    bodies: list[dict[str, Any]] = [outcome_from_error(cls("x")) for cls in ERROR_CLASSES]
    bodies += [break_glass_hint(), outcome_from_error(errors.Forbidden("refused", details_code="BTG")),
               operation_outcome("fatal", "exception", "internal error"),
               warnings_outcome(["image is blurred", "consent pending"]) or {}]
    assert validate_r4(bodies) == []


def test_details_code() -> None:
    body = outcome_from_error(errors.Forbidden("refused", details_code="BTG"))
    assert body["issue"][0]["details"] == {"coding": [{"system": codes.V3_ACT_REASON, "code": "BTG",
                                                       "display": "break the glass"},
                                                      refusal_coding(RefusalCode.FORBIDDEN)]}
    body = outcome_from_error(errors.InvalidInput("bad", details_code="http://example.org/cs|E1"))
    assert body["issue"][0]["details"] == {"coding": [{"system": "http://example.org/cs", "code": "E1"},
                                                      refusal_coding(RefusalCode.INVALID_CONTENT)]}


def test_break_glass_hint_is_the_core_example_shape() -> None:
    (hint,) = break_glass_hint()["issue"]
    assert (hint["severity"], hint["code"]) == ("information", "suppressed")
    assert hint["details"]["coding"][0]["code"] == "BTG"
    btg = coding(codes.V3_ACT_REASON, "BTG", "break the glass")
    same = information_outcome("suppressed", hint["diagnostics"], btg)
    assert same == break_glass_hint()


def test_issue_helpers() -> None:
    assert issue("warning", "informational", "w", ["a", ""]) == {
        "severity": "warning", "code": "informational", "diagnostics": "w", "expression": ["a"]}
    assert issue("error", "invalid", details={"text": "why"})["details"] == {"text": "why"}
    with pytest.raises(ValueError):
        issue("success", "informational")  # R5 only
    with pytest.raises(ValueError):
        outcome([])
    assert warnings_outcome([]) is None
    multi = outcome([issue("error", "required", "a"), issue("warning", "informational", "b")])
    OperationOutcome.model_validate(multi)
