"""The pages of a resource's history (history-instance, FHIR R4 http.html#history): a
snapshot, and keyset pages within it, as a search's are (adapter.services.search_paging).

A history is newest first, so paging it by offset shifts every page by one when a version is
written while a client follows ``next``: the version it just read comes again (review fhirrest
finding 2: a Consent PUT mid-walk showed versions 3, 3, 2, 1), and it is when a Consent changes
that people look at its history. So a history's pages are:

- **a snapshot**, fixed by the first page: the version current then. A version written later
  is on none of the pages that follow, nor in their ``total``; a new walk (or ``_since``) shows it.
- **keyset pages** within it: a link names the version its page comes before (``before``,
  exclusive: the page shows the versions older than it, newest first), not a position.

A resource's version ids are 1, 2, 3... with no gap (adapter.store), so the page before one
(``previous``) is the ``count`` versions after its newest, up to the snapshot's: fewer when
fewer are newer (a page reached by ``_offset``, or by ``next`` followed with another
``_count``), so its link bounds it below too (``after``, exclusive): it ends just before the
page it came from and shows none of its versions again (review codereview finding 2: after
``_offset=1&_count=2``, the page ['4', '3'] had a previous page ['5', '4']). The pages the
links lead to, either way, show each version of the snapshot once.

The cursor is sealed as a search's is (adapter.services.search_pages), bound to the resource
the link names (the id of the reader's view), to the purpose's view, and to the history's
``_since``: the version ids it holds are not shown in clear, nor can a client make one up.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HistoryCursor:
    """Where a page of a history lies, as its links hold it. ``snapshot``: the version current
    at the first page; ``view``: the purpose's view the link was issued in; ``before``: the
    page shows the versions older than this one (None: the snapshot's first page); ``after``:
    and newer than this one (a ``previous`` link's: None, no lower bound); ``query``: a digest
    of the history's filter (``_since``), so a link followed with another is refused."""

    snapshot: int
    view: str
    before: int | None = None
    query: str = ""
    after: int | None = None


@dataclass(frozen=True)
class HistoryPaging:
    """The cursors of a history page's links: ``first`` (the snapshot's first page), ``next``
    when older versions follow, ``previous`` when newer ones (within the snapshot) precede."""

    first: HistoryCursor
    next: HistoryCursor | None
    previous: HistoryCursor | None


def history_paging(snapshot: int, view: str, shown: list[int], *, count: int, more: bool) -> HistoryPaging:
    """The links of a page of ``count`` that shows the versions ``shown`` (newest first) of a
    history whose snapshot is version ``snapshot``; ``more``: older versions follow."""
    first = HistoryCursor(snapshot=snapshot, view=view)
    following = HistoryCursor(snapshot=snapshot, view=view, before=shown[-1]) if more and shown else None
    preceding = None
    if shown and shown[0] < snapshot:
        preceding = HistoryCursor(snapshot=snapshot, view=view, before=min(snapshot, shown[0] + count) + 1,
                                  after=shown[0])
    return HistoryPaging(first=first, next=following, previous=preceding)


__all__ = ["HistoryCursor", "HistoryPaging", "history_paging"]
