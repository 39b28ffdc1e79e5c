"""Search in a restricted view's own terms (adapter.services.view_search)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from adapter.errors import NotSupported
from adapter.mapping.codes import SHA256_SYSTEM
from adapter.model.decision import View
from adapter.model.photo import Identifier
from adapter.services.search_params import parse_search
from adapter.services.view_search import criteria_in_view
from adapter.store.port import SearchCriteria

PSEUDONYMS = "urn:example:pseudonym"
MRN = Identifier(system="urn:oid:2.999.1.1", value="MRN-0001")
KNOWN = {"p1": MRN}


def resolve(pseudonyms: Sequence[str]) -> list[Identifier]:
    return [KNOWN[p] for p in pseudonyms if p in KNOWN]


def criteria(resource_type: str, query: str) -> SearchCriteria:
    params = [tuple(p.split("=", 1)) for p in query.split("&")] if query else []
    return parse_search(resource_type, params).criteria  # type: ignore[arg-type]


def in_view(view: View, resource_type: str, query: str) -> SearchCriteria | None:
    return criteria_in_view(criteria(resource_type, query), view, pseudonym_system=PSEUDONYMS, resolve=resolve)


@pytest.mark.parametrize("query", [
    f"patient:identifier={MRN.system}|{MRN.value}", f"subject:identifier={PSEUDONYMS}|p1", "patient=Patient/123",
    "subject=123", "identifier=urn:dicom:uid|urn:oid:1.2.3", f"identifier={SHA256_SYSTEM}|ab", "identifier=x",
    "created=2024-03-05", "date=ge2024-03", "created=2024-03-05T10:00:00Z", "date=lt2025-01-01",
])
def test_the_deidentified_view_refuses_what_it_hides(query: str) -> None:
    with pytest.raises(NotSupported) as refused:
        in_view(View.DEIDENTIFIED, "Media", query)
    assert MRN.value not in str(refused.value)


@pytest.mark.parametrize("query", ["", "created=2024", "date=ge2023&date=lt2025", "type=http://snomed.info/sct|1",
                                   "status=current", "_id=abc", "kind=clinical&_count=5"])
def test_the_deidentified_view_keeps_what_it_shows(query: str) -> None:
    assert in_view(View.DEIDENTIFIED, "Media", query) == criteria("Media", query)


def test_the_pseudonymised_view_searches_by_the_pseudonym_it_shows() -> None:
    found = in_view(View.PSEUDONYMISED, "Media", f"patient:identifier={PSEUDONYMS}|p1&created=2024-03-05")
    assert found is not None and found.patient == (MRN,) and len(found.dates) == 1
    assert in_view(View.PSEUDONYMISED, "Consent", f"patient:identifier={PSEUDONYMS}|p1,{PSEUDONYMS}|nobody") \
        == criteria("Consent", f"patient:identifier={MRN.system}|{MRN.value}")
    # a pseudonym nobody has: nothing can match (not an error: the reader holds a pseudonym)
    assert in_view(View.PSEUDONYMISED, "Media", f"subject:identifier={PSEUDONYMS}|unknown") is None
    # a value in the form of a pseudonym, without its system: the pseudonym searched (none known: nothing)
    assert in_view(View.PSEUDONYMISED, "Media", f"patient:identifier={'a' * 26}") is None
    with pytest.raises(NotSupported):  # no identifier is shown, none is searched (a receipt's digest found the pseudonym)
        in_view(View.PSEUDONYMISED, "Media", f"identifier={SHA256_SYSTEM}|ab")


@pytest.mark.parametrize("query", [
    f"patient:identifier={MRN.system}|{MRN.value}", f"patient:identifier={PSEUDONYMS}|p1,{MRN.system}|{MRN.value}",
    "patient=Patient/123", "identifier=urn:dicom:uid|urn:oid:1.2.3", "identifier=ab",
    # a value without a system that is no pseudonym (an MRN): refused as system|value is (review EHR F8)
    "patient:identifier=MRN-0001", "subject:identifier=p1", f"patient:identifier={'a' * 26},MRN-0001",
])
def test_the_pseudonymised_view_refuses_the_real_identity(query: str) -> None:
    with pytest.raises(NotSupported):
        in_view(View.PSEUDONYMISED, "Media", query)


def test_the_full_view_searches_as_given() -> None:
    query = f"patient:identifier={MRN.system}|{MRN.value}&identifier=x&created=2024-03-05"
    assert in_view(View.FULL, "Media", query) == criteria("Media", query)


@pytest.mark.parametrize(("value", "start", "end"), [
    ("2026-11-26T16:13:38.407Z", "2026-11-26T16:13:38.407000+00:00", "2026-11-26T16:13:38.408000+00:00"),
    ("2026-11-26T16:13:38.4Z", "2026-11-26T16:13:38.400000+00:00", "2026-11-26T16:13:38.500000+00:00"),
    ("2026-11-26T16:13:38.1234567+01:00", "2026-11-26T15:13:38.123456+00:00", "2026-11-26T15:13:38.123457+00:00"),
    ("2026-11-26T16:13:38Z", "2026-11-26T16:13:38+00:00", "2026-11-26T16:13:39+00:00"),
])
def test_an_instant_with_a_fraction_covers_its_own_precision(value: str, start: str, end: str) -> None:
    """A search value is a range as precise as it is written (search.html#date): an instant to the
    millisecond (as meta.lastUpdated shows) covers that millisecond, not its whole second, or a
    sync asking for _lastUpdated=gt<the last instant it saw> misses what was stored later in it."""
    [[when]] = criteria("Media", f"_lastUpdated=gt{value}").last_updated
    assert (when.prefix, when.start.isoformat(), when.end.isoformat()) == ("gt", start, end)
