"""``_sort`` by clinical date (review EHR F8): Media ``date``/``created``, DocumentReference
``date``/``creation``, newest first with ``-`` (https://hl7.org/fhir/R4/search.html#sort), paged
by keyset with the id breaking ties (adapter.services.search_paging)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.app import adapter_client, as_purpose, consent_resource, metadata, post_photo
from tests.support.fhir_factories import jpeg_bytes

pytestmark = pytest.mark.integration

R5 = {"Accept": "application/fhir+json; fhirVersion=5.0"}
#: When each photo was taken, in the order posted (two the same day and time: the id breaks the tie).
TAKEN = ["2024-04-03T09:00:00Z", "2024-04-01T09:00:00Z", "2024-04-05T09:00:00Z", "2024-04-02T09:00:00Z",
         "2024-04-03T09:00:00Z"]


def _post(client: Any, tmp_path: Path, k: int, **fields: Any) -> str:
    path = tmp_path / f"photo{k}.jpg"
    path.write_bytes(jpeg_bytes(300 + 20 * k, 200))
    r = post_photo(client, path, metadata(**fields))
    assert r.status_code == 201, r.text
    return str(r.json()["record"]).split("/")[1]


def _walk(client: Any, url: str, headers: dict[str, str]) -> tuple[list[str], list[str]]:
    """Every id shown following ``next`` from ``url`` (two a page), then following ``previous``
    back from the last page."""
    forward: list[str] = []
    pages: list[dict[str, Any]] = []
    while url and len(pages) < 20:
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        pages.append(r.json())
        forward += [e["resource"]["id"] for e in pages[-1].get("entry", [])]
        url = next((link["url"] for link in pages[-1]["link"] if link["relation"] == "next"), "")
    backward: list[str] = []
    bundle = pages[-1]
    while True:
        backward = [e["resource"]["id"] for e in bundle.get("entry", [])] + backward
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "previous"), "")
        if not url:
            return forward, backward
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        bundle = r.json()


def _expected(ids: list[str], taken: list[str], newest_first: bool) -> list[str]:
    return [i for _, i in sorted(zip(taken, ids, strict=True), reverse=newest_first)]


@pytest.mark.parametrize("sort", ["-date", "date", "-created", "created"])
def test_media_sorted_by_when_taken_newest_or_oldest_first(tmp_path: Path, sort: str) -> None:
    """Test seen failing: 400 "_sort=-date is not supported"."""
    with adapter_client(tmp_path) as (client, _):
        ids = [_post(client, tmp_path, k, takenAt=t) for k, t in enumerate(TAKEN)]
        expected = _expected(ids, TAKEN, sort.startswith("-"))
        forward, backward = _walk(client, f"/fhir/Media?_sort={sort}&_count=2", as_purpose("TREAT"))
        assert forward == backward == expected
        # with a filter, and the whole set on one page
        one = client.get(f"/fhir/Media?_sort={sort}&created=ge2024-04-02", headers=as_purpose("TREAT")).json()
        assert [e["resource"]["id"] for e in one["entry"]] == [i for i in expected if i != ids[1]]


def test_document_references_sorted_by_date_and_creation(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        ids = [_post(client, tmp_path, k, kind="document", consent=None, takenAt=t) for k, t in enumerate(TAKEN)]
        by_creation = _expected(ids, TAKEN, True)
        forward, backward = _walk(client, "/fhir/DocumentReference?_sort=-creation&_count=2", as_purpose("TREAT"))
        assert forward == backward == by_creation
        # date: DocumentReference.date, when the reference was made (stored, here): the order of posting
        dated = client.get("/fhir/DocumentReference?_sort=-date", headers=as_purpose("TREAT")).json()
        assert [e["resource"]["id"] for e in dated["entry"]] == ids[::-1]
        # R5: creation is a photo's too; date is refused (R5's is another value: not indexed to sort)
        photo = _post(client, tmp_path, 9, takenAt="2024-04-04T09:00:00Z")
        r5 = client.get("/fhir/DocumentReference?_sort=-creation", headers={**as_purpose("TREAT"), **R5}).json()
        assert [e["resource"]["id"] for e in r5["entry"]] \
            == _expected([*ids, photo], [*TAKEN, "2024-04-04T09:00:00Z"], True)
        assert client.get("/fhir/DocumentReference?_sort=-date", headers={**as_purpose("TREAT"), **R5}).status_code \
            == 400


def test_restricted_views_and_other_keys(tmp_path: Path) -> None:
    """The de-identified view shows dates to the year only: sorting by the day would tell it
    (400, as _lastUpdated is); the pseudonymised view shows them, and sorts by them (ties by its
    own ids). Other keys and types stay refused."""
    with adapter_client(tmp_path) as (client, _):
        ids = [_post(client, tmp_path, k, takenAt=t) for k, t in enumerate(TAKEN)]
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN", "HRESCH"])).status_code == 201
        refused = client.get("/fhir/Media?_sort=-date", headers=as_purpose("TRAIN"))
        assert refused.status_code == 400 and "year" in refused.text, refused.text
        hresch = as_purpose("HRESCH")
        forward, backward = _walk(client, "/fhir/Media?_sort=-created&_count=2", hresch)
        shown = client.get("/fhir/Media?_count=10", headers=hresch).json()
        taken = {e["resource"]["id"]: e["resource"]["createdDateTime"] for e in shown["entry"]}
        assert len(taken) == len(ids) and forward == backward
        assert [taken[i] for i in forward] == sorted(taken.values(), reverse=True)
        for query in ("Media?_sort=-status", "Media?_sort=creation", "DocumentReference?_sort=created",
                      "Consent?_sort=-date", "Provenance?_sort=-date", "Media?_sort=-date,_id"):
            r = client.get(f"/fhir/{query}", headers=as_purpose("TREAT"))
            assert r.status_code == 400, (query, r.text)
