"""Date search on the target's implicit range (review EHR, finding 1 and 3): FHIR R4
search.html#date treats both the search value and the target's date as ranges of their
precision: a photo taken "2024-06-10" covers that whole day, one taken at 12:30:00 that second.
Before, a date-only target was one instant at midnight UTC (``gt`` noon missed it, ``eq``
midnight found it), and ``ap`` was answered "not a FHIR date"."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from adapter.mapping.fhir_r4 import RECORD_INDEX_VERSION
from tests.conftest import ROOT
from tests.support.app import adapter_client, as_purpose, consent_resource, metadata, post_photo

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
LESION = ROOT / "samples" / "lesion.png"
DOCUMENT = ROOT / "samples" / "document.jpg"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _post(client: Any, path: Path, **fields: Any) -> str:
    r = post_photo(client, path, metadata(**fields))
    assert r.status_code == 201, r.text
    return str(r.json()["record"])


def _found(client: Any, query: str) -> list[str]:
    r = client.get(f"/fhir/{query}", headers=as_purpose("TREAT"))
    assert r.status_code == 200, (query, r.text)
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json().get("entry", []))


#: A photo taken on 2024-06-10 (the day: [00:00Z, next day)) and one at 2024-06-10T12:30:00Z (that
#: second), against search values of a second, a minute, a day and a month.
MEDIA_CASES = [
    ("gt2024-06-10T12:00:00Z", {"day", "timed"}),
    ("ge2024-06-10T12:00:00Z", {"day", "timed"}),
    ("lt2024-06-10T12:00:00Z", {"day"}),
    ("le2024-06-10T12:00:00Z", {"day"}),
    ("sa2024-06-10T12:00:00Z", {"timed"}),
    ("eb2024-06-10T23:00:00Z", {"timed"}),
    ("2024-06-10T00:00:00Z", set()),
    ("eq2024-06-10T12:30:00Z", {"timed"}),
    ("2024-06-10T14:30:00%2B02:00", {"timed"}),
    ("2024-06-10T12:30Z", {"timed"}),
    ("ne2024-06-10T12:30:00Z", {"day"}),
    ("2024-06-10", {"day", "timed"}),
    ("2024-06", {"day", "timed"}),
    ("gt2024-06-10", set()),
    ("ge2024-06-10", {"day", "timed"}),
    ("sa2024-06-09", {"day", "timed"}),
    ("eb2024-06-11", {"day", "timed"}),
    ("lt2024-06-10", set()),
]


def test_a_photo_taken_on_a_day_is_searched_as_the_whole_day(tmp_path: Path) -> None:
    """Test seen failing: ``created=gt2024-06-10T12:00:00Z`` left the date-only photo out,
    ``created=2024-06-10T00:00:00Z`` found it."""
    with adapter_client(tmp_path) as (client, _):
        rec = {"day": _post(client, WOUND, takenAt="2024-06-10"),
               "timed": _post(client, LESION, takenAt="2024-06-10T14:30:00+02:00")}
        for value, expected in MEDIA_CASES:
            for param in ("created", "date"):
                assert _found(client, f"Media?{param}={value}") == sorted(rec[n] for n in expected), (param, value)


def test_a_document_photographed_on_a_day_is_searched_by_creation_as_the_whole_day(tmp_path: Path) -> None:
    """IHE MHD ITI-67 ``creation`` (content.attachment.creation) is a date search alike."""
    with adapter_client(tmp_path) as (client, _):
        doc = _post(client, DOCUMENT, kind="document", consent=None, takenAt="2024-06-10")
        assert _found(client, "DocumentReference?creation=gt2024-06-10T12:00:00Z") == [doc]
        assert _found(client, "DocumentReference?creation=ge2024-06-10T23:59:59Z") == [doc]
        assert _found(client, "DocumentReference?creation=2024-06-10T00:00:00Z") == []
        assert _found(client, "DocumentReference?creation=eb2024-06-10T23:00:00Z") == []
        assert _found(client, "DocumentReference?creation=2024-06-10") == [doc]


def test_a_consent_dated_a_day_is_searched_as_the_whole_day(tmp_path: Path) -> None:
    """Consent ``date`` (Consent.dateTime): the review's 2024-03-01 Consents were all found by
    ``date=2024-03-01T00:00:00Z`` and none by ``gt2024-03-01T12:00:00Z``."""
    with adapter_client(tmp_path) as (client, _):
        ids = {}
        for name, when in (("day", "2024-03-01"), ("timed", "2024-03-01T10:00:00Z")):
            created = client.post("/fhir/Consent", json={**consent_resource(["TRAIN"]), "dateTime": when},
                                  headers=FHIR_JSON)
            assert created.status_code == 201, created.text
            ids[name] = f"Consent/{created.json()['id']}"
        assert _found(client, "Consent?date=2024-03-01T00:00:00Z") == []
        assert _found(client, "Consent?date=gt2024-03-01T12:00:00Z") == [ids["day"]]
        assert _found(client, "Consent?date=lt2024-03-01T12:00:00Z") == sorted(ids.values())
        assert _found(client, "Consent?date=2024-03-01T10:00:00Z") == [ids["timed"]]
        assert _found(client, "Consent?date=2024-03-01") == sorted(ids.values())


@pytest.mark.parametrize("query", ["Media?created=ap2024-03-01", "Media?date=ap2024-03-01T10:00:00Z",
                                   "DocumentReference?creation=ap2024", "DocumentReference?period=ap2024-03",
                                   "Consent?date=ap2024-03-01", "Provenance?recorded=ap2024-03-01",
                                   "Media?_lastUpdated=ap2024-03-01", "Media?created=2024,ap2025"])
def test_the_approximate_prefix_is_refused_as_not_supported(tmp_path: Path, query: str) -> None:
    """``ap`` is an R4 date prefix (search.html#prefix) the adapter does not support: 400
    not-supported saying so, not "not a FHIR date" (test seen failing: 400 invalid)."""
    with adapter_client(tmp_path) as (client, _):
        refused = client.get(f"/fhir/{query}", headers=as_purpose("TREAT"))
        assert refused.status_code == 400, refused.text
        issue = refused.json()["issue"][0]
        assert issue["code"] == "not-supported", issue
        assert "prefix 'ap'" in issue["diagnostics"] and "not a FHIR date" not in issue["diagnostics"]


def test_the_capability_statement_says_how_dates_are_compared_and_that_ap_is_refused(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        documentation = client.get("/fhir/metadata").json()["rest"][0]["documentation"]
        assert "implicit range" in documentation
        assert "`ap` is not supported" in documentation


def test_records_indexed_by_schema_19_are_searched_as_ranges_after_the_upgrade(tmp_path: Path) -> None:
    """A store of schema 19 (no date_last, creation_last; the records' dates indexed as instants)
    is upgraded at start and its records and Consents re-indexed from their JSON (test seen
    failing before the fix: the date-only photo was still one instant)."""
    with adapter_client(tmp_path) as (client, _):
        photo = _post(client, WOUND, takenAt="2024-06-10")
        doc = _post(client, DOCUMENT, kind="document", consent=None, takenAt="2024-06-10")
    with sqlite3.connect(tmp_path / "data" / "adapter.db") as db:  # as schema 19 and index records:4 left it
        columns = {row[1] for row in db.execute("PRAGMA table_info(resources)")}
        if "date_last" in columns:
            db.execute("DROP INDEX ix_resources_date_last")
            db.execute("ALTER TABLE resources DROP COLUMN date_last")
            db.execute("ALTER TABLE resources DROP COLUMN creation_last")
        db.execute("UPDATE schema_version SET version = 19")
        db.execute("UPDATE key_fingerprints SET fingerprint = 'records:4' WHERE name = 'search-index'")
    with adapter_client(tmp_path) as (client, services):
        assert _found(client, "Media?created=gt2024-06-10T12:00:00Z") == [photo]
        assert _found(client, "Media?created=2024-06-10T00:00:00Z") == []
        assert _found(client, "DocumentReference?creation=gt2024-06-10T12:00:00Z") == [doc]
        assert services.store.reindex_records(RECORD_INDEX_VERSION, lambda _: pytest.fail("indexed again")) == 0
