"""Keyset pages within a snapshot (adapter.services.search_paging)."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from adapter.services.search_paging import instant_key, page_of, within_snapshot
from adapter.store.port import SearchCriteria

KEYS = [(f"{n:03d}",) for n in range(10)]


def _items(order: list[tuple[str, ...]]) -> list[tuple[tuple[str, ...], str]]:
    return [(k, k[0]) for k in order]


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("descending", [False, True])
def test_walking_forwards_and_back_gives_each_item_once(ordered: bool, descending: bool) -> None:
    order = sorted(KEYS, reverse=descending)
    given = _items(order) if ordered else random.Random(7).sample(_items(order), len(order))
    seen: list[str] = []
    after = None
    pages = []
    while True:
        page = page_of(given, count=3, descending=descending, after=after, ordered=ordered)
        assert page.seen == 10
        assert page.has_previous == (after is not None)
        pages.append(page)
        seen += [v for _, v in page.items]
        if not page.more:
            break
        after = page.items[-1][0]
    assert seen == [k[0] for k in order]
    back = page_of(given, count=3, descending=descending, before=pages[-1].items[0][0], ordered=ordered)
    assert back.items == pages[-2].items and back.more and back.has_previous
    first = page_of(given, count=3, descending=descending, before=pages[1].items[0][0], ordered=ordered)
    assert first.items == pages[0].items and not first.has_previous


def test_an_offset_skips_and_an_early_stop_reads_no_further() -> None:
    read = []

    def items():
        for item in _items(KEYS):
            read.append(item)
            yield item

    page = page_of(items(), count=2, offset=3, ordered=True, read_all=False)
    assert [v for _, v in page.items] == ["003", "004"] and page.more and page.has_previous
    assert len(read) == 6  # the page, the three before it and the one that says more follow


def test_the_snapshot_bound_covers_its_own_instant() -> None:
    moment = datetime(2026, 11, 28, 6, 20, 0, 123000, tzinfo=UTC)
    key = instant_key(moment)
    assert key == "2026-11-28T06:20:00.123000+00:00" and key < instant_key(moment.replace(microsecond=124000))
    [[bound]] = within_snapshot(SearchCriteria(), key).last_updated
    assert bound.prefix == "le" and bound.start == moment and bound.end is not None and bound.end > moment


def test_the_version_at_the_snapshot_is_the_newest_stored_by_then() -> None:
    from adapter.services.search_paging import last_updated_at

    versions = [{"meta": {"lastUpdated": f"2026-11-28T06:2{n}:00.000Z"}} for n in (5, 3, 1)]  # newest first
    latest = instant_key(datetime(2026, 11, 28, 6, 24, tzinfo=UTC))
    assert last_updated_at(versions, latest) == instant_key(datetime(2026, 11, 28, 6, 23, tzinfo=UTC))
    assert last_updated_at(versions, instant_key(datetime(2026, 11, 28, 6, 20, tzinfo=UTC))) is None
