"""The refusal codes (adapter.refusals): one per refusal class, each once, each in the table of
docs/fhir-api.md "Refusal codes" with the status the HTTP edge answers it with."""

from __future__ import annotations

import json
import re

from adapter import errors as e
from adapter.api import request_limits
from adapter.api.outcome import HTTP_STATUS
from adapter.mapping.outcome import outcome_from_error
from adapter.refusals import REFUSAL_SYSTEM, RefusalCode
from tests.conftest import ROOT

DOC = (ROOT / "docs" / "fhir-api.md").read_text()


def _documented() -> dict[str, set[int]]:
    start = DOC.index("\n## Refusal codes\n")
    section = DOC[start:DOC.index("\n## ", start + 1)]
    rows = re.findall(r"^\| `([a-z-]+)` \| ([0-9, ]+) \|", section, re.MULTILINE)
    return {code: {int(s) for s in statuses.split(",")} for code, statuses in rows}


def test_every_code_is_distinct_and_documented() -> None:
    codes = [r.code for r in RefusalCode]
    assert len(codes) == len(set(codes))
    assert all(r.display for r in RefusalCode)
    assert set(_documented()) == set(codes)


def test_every_refusal_class_has_a_code_documented_with_its_status() -> None:
    documented = _documented()
    for cls, status in HTTP_STATUS.items():
        if status >= 500 and not issubclass(cls, e.Transient):
            assert cls.refusal is None, cls  # the adapter's own fault: no refusal
            continue
        assert cls.refusal is not None, cls
        assert status in documented[cls.refusal.code], (cls, status)


def test_the_code_is_a_coding_beside_the_details_already_given() -> None:
    plain = outcome_from_error(e.ConsentRequired("no consent"))["issue"][0]
    assert plain["details"] == {"coding": [{"system": REFUSAL_SYSTEM, "code": "consent-required",
                                            "display": RefusalCode.CONSENT_REQUIRED.display}]}
    precise = e.BusinessRuleViolation("hash", details_text="XDSRepositoryMetadataError",
                                      refusal=RefusalCode.ATTACHMENT_MISMATCH)
    details = outcome_from_error(precise)["issue"][0]["details"]
    assert details["text"] == "XDSRepositoryMetadataError"
    assert [c["code"] for c in details["coding"]] == ["attachment-mismatch"]
    other = outcome_from_error(e.Conflict("stored", details_code="urn:x#y"))["issue"][0]["details"]
    assert [(c["system"], c["code"]) for c in other["coding"]] == [("urn:x", "y"), (REFUSAL_SYSTEM, "conflict")]


def _raw_answers() -> list[bytes]:
    """The answers the HTTP protocol bounds write themselves, outside the app and its exception
    handler (adapter.api.request_limits): its module-level answers and the one built per timeout."""
    built = [value for value in vars(request_limits).values()
             if isinstance(value, bytes) and value.startswith(b"HTTP/1.1 ")]
    return [*built, request_limits.header_timeout_answer(30)]


def test_every_raw_protocol_answer_carries_its_code_and_the_fhir_media_type() -> None:
    """Retest 1 finding 2: the 503s of the connection bounds, the 431, the 408 of a header that
    does not arrive, the 400s and the 501 (written by the protocol, never through HTTP_STATUS)
    carried no code, and their media type no fhirVersion."""
    documented = _documented()
    answers = _raw_answers()
    assert len(answers) >= 9
    for answer in answers:
        head, _, body = answer.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        assert b"\r\ncontent-type: application/fhir+json; charset=utf-8; fhirVersion=4.0\r\n" in head, head
        issue = json.loads(body)["issue"][0]
        codings = [c for c in issue["details"]["coding"] if c["system"] == REFUSAL_SYSTEM]
        assert len(codings) == 1, issue
        refusal = RefusalCode[codings[0]["code"].upper().replace("-", "_")]
        assert codings[0]["display"] == refusal.display
        assert status in documented[refusal.code], (status, refusal)
        assert (status == 503) == (refusal is RefusalCode.TRANSIENT), (status, refusal)
