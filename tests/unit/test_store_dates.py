"""Instants in the store: UTC everywhere, and SQLite text that sorts like time."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from adapter.store.dates import UtcDateTime, format_instant, now_instant, to_utc

pytestmark = pytest.mark.unit


def test_format_instant_is_a_fhir_instant_in_utc() -> None:
    value = datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_instant(value) == "2024-01-01T10:00:00.123Z"
    assert format_instant(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00.000Z"


def test_to_utc_takes_naive_values_as_utc() -> None:
    assert to_utc(datetime(2024, 5, 1, 8)) == datetime(2024, 5, 1, 8, tzinfo=UTC)
    converted = to_utc(datetime(2024, 5, 1, 8, tzinfo=timezone(timedelta(hours=-5))))
    assert converted.utcoffset() == timedelta(0) and converted.hour == 13


def test_now_instant_has_millisecond_precision() -> None:
    now = now_instant()
    assert now.tzinfo is UTC and now.microsecond % 1000 == 0


def test_sqlite_text_sorts_like_time() -> None:
    column = UtcDateTime()
    dialect = sqlite.dialect()
    rng = random.Random(7)
    values = [datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28), rng.randint(0, 23),
                       rng.randint(0, 59), rng.randint(0, 59), rng.choice([0, rng.randint(0, 999999)]),
                       tzinfo=timezone(timedelta(minutes=rng.randint(-14 * 60, 14 * 60))))
              for _ in range(500)]
    values = [v for v in values if datetime(1, 1, 2, tzinfo=UTC) < v < datetime(9999, 12, 30, tzinfo=UTC)]
    stored = [column.process_bind_param(v, dialect) for v in values]
    assert all(isinstance(s, str) and len(s) == 32 for s in stored)
    assert sorted(stored) == [column.process_bind_param(v, dialect) for v in sorted(values)]
    for value, text in zip(values, stored, strict=True):
        back = column.process_result_value(text, dialect)
        assert back == value and back is not None and back.utcoffset() == timedelta(0)


def test_postgresql_gets_aware_utc_datetimes() -> None:
    column = UtcDateTime()
    dialect = postgresql.dialect()
    bound = column.process_bind_param(datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), dialect)
    assert bound == datetime(2024, 1, 1, tzinfo=UTC) and bound.tzinfo is UTC
    back = column.process_result_value(datetime(2024, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), dialect)
    assert back is not None and back.tzinfo is UTC and back.hour == 0
    with pytest.raises(TypeError):
        column.process_bind_param("2024-01-01", dialect)  # type: ignore[arg-type]
