"""Search by encounter (review EHR F8): R4 ``Media?encounter`` (Media.encounter) and
``DocumentReference?encounter`` (context.encounter), R5 ``DocumentReference?context``; a reference
search (https://hl7.org/fhir/R4/search.html#reference) and ``:identifier`` for an encounter the
records name by its identifier."""

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
TINY = ROOT / "samples" / "tiny.jpg"
ENCOUNTERS = "urn:oid:2.999.1.9"
OTHER = {"system": "urn:oid:2.999.1.1", "value": "MRN-0002"}  # a file posted twice is another patient's photo
R5 = {"Accept": "application/fhir+json; fhirVersion=5.0"}


def _store(client: Any) -> dict[str, str]:
    """Records of encounter 77 (two photos, a document), 78, one named by identifier, one by
    another server's URL, and one of no encounter: their ``Type/id`` by name."""
    def post(name: str, path: Path, **fields: Any) -> tuple[str, str]:
        r = post_photo(client, path, metadata(**fields))
        assert r.status_code == 201, r.text
        return name, str(r.json()["record"])
    return dict([
        post("a", WOUND, encounter={"reference": "Encounter/77"}, takenAt="2024-04-01T09:00:00Z"),
        post("b", LESION, encounter={"reference": "Encounter/77/_history/3"}, takenAt="2024-04-02T09:00:00Z"),
        post("doc", DOCUMENT, kind="document", consent=None, encounter={"reference": "Encounter/77"}),
        post("c", TINY, encounter={"reference": "Encounter/78"}),
        post("ident", WOUND, patient=OTHER, encounter={"identifier": {"system": ENCOUNTERS, "value": "ENC-42"}},
             takenAt="2024-04-03T09:00:00Z"),
        post("elsewhere", LESION, patient=OTHER, encounter={"reference": "http://ehr.example.org/fhir/Encounter/9"},
             takenAt="2024-04-04T09:00:00Z"),
        post("none", TINY, patient=OTHER, takenAt="2024-04-05T09:00:00Z"),
    ])


def _found(client: Any, path: str, headers: dict[str, str] | None = None) -> list[str]:
    r = client.get(f"/fhir/{path}", headers=headers or as_purpose("TREAT"))
    assert r.status_code == 200, (path, r.text)
    return sorted(f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in r.json().get("entry", []))


def test_media_and_document_reference_are_searched_by_encounter(tmp_path: Path) -> None:
    """Test seen failing: 400 unknown parameter 'encounter'."""
    with adapter_client(tmp_path) as (client, _):
        rec = _store(client)
        of_77 = sorted([rec["a"], rec["b"]])
        for query in ("encounter=Encounter/77", "encounter=77", "encounter:Encounter=77",
                      "encounter=http://testserver/fhir/Encounter/77", "encounter=Encounter/77/_history/1"):
            assert _found(client, f"Media?{query}") == of_77, query
        assert _found(client, "Media?encounter=Encounter/77,Encounter/78") == sorted([*of_77, rec["c"]])
        assert _found(client, "Media?encounter=Encounter/77&encounter=Encounter/78") == []  # repeats AND
        assert _found(client, "Media?encounter=Encounter/79") == []
        assert _found(client, "Media?encounter=http://ehr.example.org/fhir/Encounter/9") == [rec["elsewhere"]]
        assert _found(client, "Media?encounter=Encounter/9") == []  # another server's Encounter 9
        assert _found(client, f"Media?encounter:identifier={ENCOUNTERS}|ENC-42") == [rec["ident"]]
        assert _found(client, "Media?encounter:identifier=ENC-42") == [rec["ident"]]  # in any system
        assert _found(client, "Media?encounter:identifier=urn:other|ENC-42") == []
        assert _found(client, "DocumentReference?encounter=Encounter/77") == [rec["doc"]]
        assert _found(client, "DocumentReference?encounter=Encounter/78") == []
        # R5: a photo is a DocumentReference, its encounter in context[] (R5 DocumentReference-context)
        r5 = _found(client, "DocumentReference?context=Encounter/77", {**as_purpose("TREAT"), **R5})
        assert r5 == sorted(f"DocumentReference/{r.split('/')[1]}" for r in (rec["a"], rec["b"], rec["doc"]))
        for bad in ("encounter=Patient/1", "encounter:Patient=1", "encounter=a/b/c", "encounter:missing=true",
                    "encounter:identifier=urn:x|"):
            refused = client.get(f"/fhir/Media?{bad}", headers=as_purpose("TREAT"))
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["resourceType"] == "OperationOutcome"


def test_restricted_views_show_no_encounter_and_refuse_a_search_by_it(tmp_path: Path) -> None:
    """TRAIN and HRESCH views leave the encounter out (adapter.mapping.views): a search by it would
    link the copies to the admission, so it is refused, as ``patient`` is, whatever the store
    holds."""
    with adapter_client(tmp_path) as (client, _):
        _store(client)
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN", "HRESCH"])).status_code == 201
        for purpose in ("TRAIN", "HRESCH"):
            shown = client.get("/fhir/Media", headers=as_purpose(purpose)).json()
            assert shown["total"] > 0 and not any("encounter" in e["resource"] for e in shown["entry"])
            for query in ("Media?encounter=Encounter/77", "Media?encounter=Encounter/79",
                          f"Media?encounter:identifier={ENCOUNTERS}|ENC-42", "DocumentReference?encounter=77"):
                refused = client.get(f"/fhir/{query}", headers=as_purpose(purpose))
                assert refused.status_code == 400, (purpose, query, refused.text)
                assert "encounter" in refused.json()["issue"][0]["diagnostics"]


def test_the_capability_statement_declares_encounter(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        r4 = client.get("/fhir/metadata").json()
        params = {r["type"]: {p["name"]: p for p in r.get("searchParam", [])} for r in r4["rest"][0]["resource"]}
        assert params["Media"]["encounter"]["type"] == "reference"
        assert params["Media"]["encounter"]["definition"] == "http://hl7.org/fhir/SearchParameter/Media-encounter"
        assert params["DocumentReference"]["encounter"]["definition"] \
            == "http://hl7.org/fhir/SearchParameter/clinical-encounter"
        r5 = client.get("/fhir/metadata", headers=R5).json()
        params = {r["type"]: {p["name"]: p for p in r.get("searchParam", [])} for r in r5["rest"][0]["resource"]}
        assert "encounter" not in params["DocumentReference"]
        assert params["DocumentReference"]["context"]["definition"] \
            == "http://hl7.org/fhir/SearchParameter/DocumentReference-context"


def test_records_stored_before_encounter_was_indexed_are_found_after_a_restart(tmp_path: Path) -> None:
    """The start re-derives the records' index (RecordStore.reindex_records, a new index version)."""
    with adapter_client(tmp_path) as (client, _):
        rec = _store(client)
    with sqlite3.connect(tmp_path / "data" / "adapter.db") as db:  # as an index of records:3 held them
        db.execute("DELETE FROM tokens WHERE param LIKE 'encounter%'")
        db.execute("UPDATE key_fingerprints SET fingerprint = 'records:3' WHERE name = 'search-index'")
    with adapter_client(tmp_path) as (client, services):
        assert _found(client, "Media?encounter=Encounter/77") == sorted([rec["a"], rec["b"]])
        assert _found(client, "Media?encounter:identifier=ENC-42") == [rec["ident"]]
        assert _found(client, "DocumentReference?encounter=77") == [rec["doc"]]
        assert services.store.reindex_records(RECORD_INDEX_VERSION, lambda _: pytest.fail("indexed again")) == 0
