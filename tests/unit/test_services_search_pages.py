"""Sealed paging links of a search by POST (adapter.services.search_pages)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from adapter.errors import Gone, InvalidInput
from adapter.services.search_pages import PAGE_LIFETIME, SearchPages

KEY = bytes(range(32))
PARAMS = [("patient:identifier", "urn:oid:2.999.1.1|MRN-0001"), ("_count", "1"), ("_offset", "1")]


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_sealed_search_opens_to_its_parameters_and_shows_none_of_them() -> None:
    pages = SearchPages(KEY, Clock())
    token = pages.seal("Media", PARAMS)
    assert "MRN-0001" not in token and "MRN" not in base64.urlsafe_b64decode(token + "==").decode("latin-1")
    assert token.isascii() and all(c.isalnum() or c in "-_" for c in token)  # safe in a URL as it is
    assert pages.open("Media", token) == PARAMS
    assert pages.seal("Media", PARAMS) != token  # a fresh nonce each time


def test_a_token_is_refused_when_changed_foreign_for_another_type_or_not_a_token() -> None:
    pages = SearchPages(KEY, Clock())
    token = pages.seal("Media", PARAMS)
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    for bad in (flipped, token[:-4], "", "not a token!", "AAAA", "x" * 200_000):
        with pytest.raises(InvalidInput):
            pages.open("Media", bad)
    with pytest.raises(InvalidInput):
        pages.open("DocumentReference", token)  # a Media search's link, not a DocumentReference one
    with pytest.raises(InvalidInput):
        SearchPages(bytes(32), Clock()).open("Media", token)  # another key: another deployment's link


def test_a_token_expires_after_its_lifetime() -> None:
    clock = Clock()
    pages = SearchPages(KEY, clock)
    token = pages.seal("Media", PARAMS)
    clock.now += PAGE_LIFETIME - timedelta(seconds=1)
    assert pages.open("Media", token) == PARAMS
    clock.now += timedelta(seconds=2)
    with pytest.raises(Gone):
        pages.open("Media", token)
