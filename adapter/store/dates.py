"""Instants in the store: always timezone-aware UTC.

PostgreSQL keeps them as ``timestamptz``. SQLite has no date type, so they are kept as
fixed-width ISO 8601 text in UTC (``2024-01-01T10:00:00.123000+00:00``): with one offset and
one width, text order is time order, so ``ORDER BY`` and range comparisons work unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, String
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


def to_utc(value: datetime) -> datetime:
    """``value`` in UTC. A naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def now_instant() -> datetime:
    """The current time in UTC, truncated to milliseconds (the precision of meta.lastUpdated)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def format_instant(value: datetime) -> str:
    """A FHIR ``instant`` with millisecond precision, e.g. ``2024-01-01T10:00:00.123Z``.

    See https://hl7.org/fhir/R4/datatypes.html#instant.
    """
    return to_utc(value).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _sqlite_text(value: datetime) -> str:
    # isoformat pads the year to four digits and, with timespec, always writes microseconds.
    return to_utc(value).isoformat(timespec="microseconds")


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime: ``timestamptz`` on PostgreSQL, sortable text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(32))
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if not isinstance(value, datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}")
        if dialect.name == "sqlite":
            return _sqlite_text(value)
        return to_utc(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return to_utc(datetime.fromisoformat(value))
        if isinstance(value, datetime):
            return to_utc(value)
        raise TypeError(f"unexpected stored instant of type {type(value).__name__}")
