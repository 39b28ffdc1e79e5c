"""PS3.4 C.2.2.2.4 wildcard matching of QIDO-RS keys (PatientID): ``*`` any run, ``?`` any one
character; the same answers as the regular expression it replaced, without its backtracking."""

from __future__ import annotations

import random
import re

import pytest

from adapter.services.dicom_objects import _wildcard


def _as_regex(pattern: str, value: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


@pytest.mark.parametrize(("pattern", "value", "expected"), [
    ("MRN-*", "MRN-0001", True), ("MRN-*", "MRN-", True), ("*", "x", True), ("?", "x", True),
    ("M?N-0001", "MRN-0001", True), ("*0*1", "MRN-0001", True), ("MRN", "MRN-0001", False),
    ("*2", "MRN-0001", False), ("??", "x", False),
    # * matches the empty run too: an empty value by * alone (PS3.4 C.2.2.2.4), never by a character
    ("*", "", True), ("**", "", True), ("", "", True), ("?", "", False), ("*?", "", False), ("a*", "", False), ("a*b*c", "aXbYc", True),
    ("a*b*c", "aXbYcZ", False), ("*.*", "a.b", True), ("a\\\\b", "a\\\\b", True),
])
def test_wildcards(pattern: str, value: str, expected: bool) -> None:
    assert _wildcard(pattern, value) is expected


def test_the_same_answers_as_the_regular_expression() -> None:
    rng = random.Random(7)
    for _ in range(20_000):
        pattern = "".join(rng.choice("ab?*") for _ in range(rng.randint(0, 8)))
        value = "".join(rng.choice("ab?*") for _ in range(rng.randint(0, 8)))
        assert _wildcard(pattern, value) is _as_regex(pattern, value), (pattern, value)


def test_an_absent_value_is_matched_as_the_empty_one() -> None:
    assert _wildcard("*", None) is True and _wildcard("a*", None) is False


def test_many_stars_take_pattern_times_value_steps_at_most() -> None:
    # "*~" * 24 + "x" against 64 "~" backtracked for ~20 s as a regular expression
    assert _wildcard("*~" * 24 + "x", "~" * 64) is False
    assert _wildcard("*" * 5000 + "x", "a" * 64) is False
    assert _wildcard("*~" * 24, "~" * 64) is True
