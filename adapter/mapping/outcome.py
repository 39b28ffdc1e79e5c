"""R4 OperationOutcome (https://hl7.org/fhir/R4/operationoutcome.html) builders.

One issue per outcome unless :func:`outcome` is given several. ``code`` is an IssueType
(https://hl7.org/fhir/R4/valueset-issue-type.html); ``details`` a CodeableConcept, e.g. the
break-the-glass hint of the FHIR core example: severity information, code ``suppressed``,
details v3-ActReason#BTG (standards.md §2.7).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adapter.errors import AdapterError
from adapter.mapping.codes import V3_ACT_REASON
from adapter.mapping.fhir_r4 import JSON, coding, concept
from adapter.refusals import REFUSAL_SYSTEM, RefusalCode

SEVERITIES = frozenset({"fatal", "error", "warning", "information"})

#: Displays of the v3-ActReason codes used as issue details.
_DETAIL_DISPLAY = {"BTG": "break the glass", "ETREAT": "Emergency Treatment", "TREAT": "treatment"}


def issue(severity: str, code: str, diagnostics: str | None = None,
          expression: str | Sequence[str] | None = None, details: Mapping[str, Any] | None = None) -> JSON:
    """One OperationOutcome.issue. ``details`` is a Coding (wrapped in a CodeableConcept) or a
    CodeableConcept (a mapping with ``coding`` or ``text``).

    Raises:
        ValueError: ``severity`` is not an R4 IssueSeverity.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"not an R4 IssueSeverity: {severity!r}")
    out: JSON = {"severity": severity, "code": code}
    if details is not None:
        is_concept = "coding" in details or "text" in details
        out["details"] = dict(details) if is_concept else concept(dict(details))
    if diagnostics:
        out["diagnostics"] = diagnostics
    if expression:
        exprs = [expression] if isinstance(expression, str) else [e for e in expression if e]
        if exprs:
            out["expression"] = exprs
    return out


def outcome(issues: Sequence[JSON]) -> JSON:
    """An OperationOutcome of the given issues (at least one: R4 issue is 1..*)."""
    if not issues:
        raise ValueError("an OperationOutcome needs at least one issue")
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def operation_outcome(severity: str, code: str, diagnostics: str | None = None,
                      expression: str | Sequence[str] | None = None,
                      details: Mapping[str, Any] | None = None) -> JSON:
    """An OperationOutcome with one issue."""
    return outcome([issue(severity, code, diagnostics, expression, details)])


def coding_for_details(details_code: str) -> JSON:
    """The Coding for an error's ``details_code``: ``system|code`` or ``system#code`` as given;
    a bare code is a v3-ActReason code (the only bare use: purpose-of-use hints such as BTG)."""
    for sep in ("|", "#"):
        if sep in details_code:
            system, _, code = details_code.rpartition(sep)
            return coding(system, code)
    return coding(V3_ACT_REASON, details_code, _DETAIL_DISPLAY.get(details_code))


def outcome_from_error(err: AdapterError) -> JSON:
    """The OperationOutcome for an adapter error: issue code = ``err.issue_type``, severity =
    ``err.severity``, diagnostics and expression as raised; details: the coding of
    ``err.details_code`` (first, as before: a client that reads ``coding[0]`` of a
    stored-with-other-details refusal still finds it), then the refusal's code
    (:func:`refusal_coding`, adapter.refusals), and ``err.details_text`` as the text."""
    codings = [coding_for_details(err.details_code)] if err.details_code else []
    if err.refusal is not None:
        codings.append(refusal_coding(err.refusal))
    details = concept(*codings, text=err.details_text) if codings or err.details_text else None
    severity = err.severity if err.severity in SEVERITIES else "error"
    return operation_outcome(severity, err.issue_type, err.diagnostics, err.expression or None, details)


def refusal_coding(refusal: RefusalCode) -> JSON:
    """A refusal's code as the Coding of its issue's details (system :data:`REFUSAL_SYSTEM`)."""
    return coding(REFUSAL_SYSTEM, refusal.code, refusal.display)


def information_outcome(code: str, diagnostics: str | None = None,
                        details_coding: Mapping[str, Any] | None = None) -> JSON:
    """An informational OperationOutcome, e.g. the break-the-glass hint:
    ``information_outcome("suppressed", "…", coding(V3_ACT_REASON, "BTG", "break the glass"))``."""
    return operation_outcome("information", code, diagnostics, None, details_coding)


BREAK_GLASS_DIAGNOSTICS = "some content was withheld; break-the-glass (BTG) may give access"


def break_glass_hint(diagnostics: str = BREAK_GLASS_DIAGNOSTICS) -> JSON:
    """The FHIR core break-the-glass hint: information / suppressed / v3-ActReason#BTG."""
    return information_outcome("suppressed", diagnostics, coding(V3_ACT_REASON, "BTG", "break the glass"))


def warnings_outcome(warnings: Sequence[str], code: str = "informational") -> JSON | None:
    """Warnings (e.g. of an ingest) as one OperationOutcome with a warning issue each; None when
    there are none."""
    if not warnings:
        return None
    return outcome([issue("warning", code, w) for w in warnings])


__all__ = [
    "BREAK_GLASS_DIAGNOSTICS", "SEVERITIES", "break_glass_hint", "coding_for_details", "information_outcome",
    "issue", "operation_outcome", "outcome", "outcome_from_error", "refusal_coding", "warnings_outcome",
]
