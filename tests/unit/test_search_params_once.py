"""adapter.services.search_params: the result parameters a search takes once (re-verification R5:
a repeated _count or _sort took the last in silence, while repeated rendering parameters were
refused)."""

from __future__ import annotations

import pytest

from adapter.errors import InvalidQuery
from adapter.services.search_params import parse_search


@pytest.mark.parametrize(("name", "values"), [
    ("_count", ("5", "50")), ("_sort", ("_lastUpdated", "-_lastUpdated")), ("_total", ("none", "accurate")),
    ("_offset", ("0", "10")), ("_cursor", ("a", "b")), ("_count", ("5", "5"))])
def test_a_result_parameter_given_twice_is_refused_naming_it(name: str, values: tuple[str, str]) -> None:
    with pytest.raises(InvalidQuery) as refused:
        parse_search("Media", [(name, values[0]), ("_id", "x"), (name, values[1])])
    assert refused.value.expression == [name] and "more than once" in refused.value.diagnostics


def test_search_parameters_may_repeat_as_before() -> None:
    request = parse_search("Media", [("_lastUpdated", "ge2025-01-01"), ("_lastUpdated", "le2026-01-01"),
                                     ("_count", "5"), ("_id", "a,b"), ("_id", "b")])
    assert request.count == 5 and len(request.criteria.last_updated) == 2
