"""The pages of a search: a snapshot, and keyset paging within it.

FHIR leaves paging to the server (https://hl7.org/fhir/R4/search.html#paging, http.html#paging).
Paging by offset over a result set that moves gives a reader the same record twice, or none of
one, when records are stored, or withheld by a changed Consent, while it follows ``next``:
newest first, a new record takes the first place and pushes every other one page-ward; in a
restricted view, whose order is its keyed ids (adapter.services.view_search), a new record
falls anywhere, so oldest first too; and a Consent withdrawn takes its records out of pages
already read, pulling the rest back. So a search's pages are:

- **a snapshot**, fixed by the first page: per resource type, the latest ``meta.lastUpdated``
  stored then. The store stamps every write after every one committed before it of its type
  (adapter.store.sql, ``_stamp``), so what is stored later is on none of the pages that follow,
  nor in their ``total``; ``_lastUpdated=gt`` the last instant seen finds it. A Consent updated
  meanwhile stays in the walk at the place its version at the snapshot had (shown as it is now,
  and once: an update would otherwise move it onto a page read already, or off the pages to
  come). Each page is still decided afresh for the request's purpose of use.
- **keyset pages** within it: a link names the sort key of the entry its page follows
  (``next``) or precedes (``previous``), not a position, so a record withheld or let through
  meanwhile moves no other.

The keys are strings: an instant as fixed-width UTC ISO text sorts as the instant does.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from operator import itemgetter
from typing import Any, Generic, TypeVar

from adapter.store.port import DateCriterion, SearchCriteria

T = TypeVar("T")
Key = tuple[str, ...]

#: The precision of a stored instant is a millisecond; a bound a microsecond on covers it.
_TICK = timedelta(microseconds=1)
#: The types whose resources are updated (new versions; every other is stored once): a
#: resource of one is in the snapshot if a version of it was, ordered as that version.
UPDATED_TYPES = frozenset({"Consent"})


def instant_key(moment: datetime) -> str:
    """``moment`` as a sort key: UTC, to the microsecond, fixed width."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def within_snapshot(criteria: SearchCriteria, latest: str) -> SearchCriteria:
    """``criteria`` limited to what the snapshot holds: lastUpdated at or before ``latest``
    (an :func:`instant_key`). Added after the view's checks (adapter.services.view_search): it is
    the server's bound, not the reader's ``_lastUpdated``."""
    bound = datetime.fromisoformat(latest)
    return dataclasses.replace(criteria, last_updated=criteria.last_updated + (
        (DateCriterion(prefix="le", start=bound, end=bound + _TICK),),))


def last_updated_at(versions: Iterable[dict[str, Any]], latest: str) -> str | None:
    """The lastUpdated (an :func:`instant_key`) of the version current at the snapshot
    ``latest``: the newest of ``versions`` (newest first) stored at or before it; None when
    none was (the resource was created since)."""
    for version in versions:
        stamp = (version.get("meta") or {}).get("lastUpdated")
        if isinstance(stamp, str) and (key := instant_key(datetime.fromisoformat(stamp))) <= latest:
            return key
    return None


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page: its items (with their keys) in order, whether items precede and follow it,
    and how many items there were in all (when every one was read)."""

    items: list[tuple[Key, T]]
    has_previous: bool
    more: bool
    seen: int


def page_of(items: Iterable[tuple[Key, T]], *, count: int, descending: bool = False, offset: int = 0,
            after: Key | None = None, before: Key | None = None, ordered: bool = False,
            read_all: bool = True) -> Page[T]:
    """The page of ``items`` (each with its unique key) that a cursor names: the ``count``
    first after the key ``after`` (the first ones when neither is given, skipping ``offset``
    of them), or the ``count`` last before the key ``before``, in key order (largest first when
    ``descending``). Memory is bounded by the page: the items are read once and only the best
    ``offset + count + 1`` kept. ``ordered``: the items come in that order already, and (unless
    ``read_all``, the total being asked for) the reading stops once the page and one more are
    found."""
    outside = seen = 0

    def precedes(a: Key, b: Key) -> bool:
        return a > b if descending else a < b

    def kept(inside: Iterable[tuple[Key, T]], keep: Key | None, *, keep_before: bool) -> Iterator[tuple[Key, T]]:
        nonlocal outside, seen
        for item in inside:
            seen += 1
            if keep is None or (precedes(item[0], keep) if keep_before else precedes(keep, item[0])):
                yield item
            else:
                outside += 1

    first = heapq.nlargest if descending else heapq.nsmallest
    last = heapq.nsmallest if descending else heapq.nlargest
    if before is not None:
        chosen = last(count + 1, kept(items, before, keep_before=True), key=itemgetter(0))
        return Page(items=chosen[:count][::-1], has_previous=len(chosen) > count, more=outside > 0, seen=seen)
    pool: Iterator[tuple[Key, T]] = kept(items, after, keep_before=False)
    wanted = offset + count + 1
    if ordered and not read_all:
        pool = islice(pool, wanted)
    chosen = first(wanted, pool, key=itemgetter(0))
    return Page(items=chosen[offset:offset + count], has_previous=outside > 0 or (offset > 0 and bool(chosen)),
                more=len(chosen) > offset + count, seen=seen)


__all__ = ["UPDATED_TYPES", "Key", "Page", "instant_key", "last_updated_at", "page_of", "within_snapshot"]
