"""IHE MHD Find Document References [ITI-67]: the search parameters a Document Consumer sends
beside the patient and status (creation, security-label, format, and on what a Document Source sent
in ITI-65, type, category, setting, facility, event), those the adapter cannot honour refused with
the reason, the de-identified view's year-only rule on
creation, R5 (where photos are DocumentReference too), and a store indexed before these existed
being re-indexed at start."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from adapter.mapping.fhir_r4 import RECORD_INDEX_VERSION, index_resource
from adapter.model.record import NewResource
from tests.conftest import ROOT
from tests.support.app import (
    PATIENT,
    adapter_client,
    as_purpose,
    consent_resource,
    metadata,
    post_photo,
    seen_as,
)
from tests.support.mhd import provide_document_bundle

pytestmark = pytest.mark.integration

DOCUMENT = ROOT / "samples" / "document.jpg"
WOUND = ROOT / "samples" / "wound.jpg"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
FORMAT = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode|urn:ihe:iti:xds:2017:mimeTypeSufficient"
PATIENT_ID = f"{PATIENT['system']}|{PATIENT['value']}"
R5 = {"Accept": "application/fhir+json; fhirVersion=5.0"}


def _document(client: Any, taken: str, path: Path = DOCUMENT) -> dict[str, Any]:
    r = post_photo(client, path, metadata(kind="document", consent=None, takenAt=taken))
    assert r.status_code == 201, r.text
    return dict(r.json())


def _found(client: Any, query: str, headers: dict[str, str] | None = None) -> list[str]:
    r = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&status=current&{query}",
                   headers=headers or as_purpose("TREAT"))
    assert r.status_code == 200, r.text
    return sorted(f"DocumentReference/{e['resource']['id']}" for e in r.json().get("entry", [])
                  if e["search"]["mode"] == "match")


def test_iti_67_parameters(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        march = _document(client, "2026-03-05T10:00:00Z")["record"]
        older = _document(client, "2025-01-01T09:00:00Z", ROOT / "samples" / "tiny.jpg")["record"]
        assert _found(client, "creation=ge2026-01-01") == [march]
        assert _found(client, "creation=2026-03-05") == [march]
        assert _found(client, "creation=lt2026&creation=ge2025") == [older]
        assert _found(client, f"security-label={CONFIDENTIALITY}|R") == sorted([march, older])
        assert _found(client, f"security-label={CONFIDENTIALITY}|N") == []
        assert _found(client, f"format={FORMAT}") == sorted([march, older])
        assert _found(client, "format=urn:ihe:iti:xds:2017:mimeTypeSufficient") == sorted([march, older])
        # a photo posted with its metadata has no practice setting, facility type or event (a
        # Document Source's, in a transaction, are kept: test_a_document_sources_metadata_…)
        for param in ("setting", "facility", "event"):
            assert _found(client, f"{param}=http://snomed.info/sct|394802001") == []


def test_status_is_a_token_and_its_modifiers_are_refused_not_dropped(tmp_path: Path) -> None:
    """Review finding: ``status:not=current`` and ``_id:not=…`` were read without their
    modifier (the opposite search), ``status=<system>|current`` matched nothing, and a repeated
    ``status`` kept its last value only."""
    status_system = "http://hl7.org/fhir/document-reference-status"
    with adapter_client(tmp_path) as (client, _):
        document = _document(client, "2026-03-05T10:00:00Z")["record"]
        doc_id = document.split("/")[1]

        def found(query: str) -> list[str]:
            r = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&{query}",
                           headers=as_purpose("TREAT"))
            assert r.status_code == 200, (query, r.text)
            return [f"DocumentReference/{e['resource']['id']}" for e in r.json().get("entry", [])
                    if e["search"]["mode"] == "match"]

        assert found(f"status={status_system}|current") == [document]
        assert found("status=|current") == [document]
        assert found("status=http://hl7.org/fhir/event-status|current") == []
        assert found("status=current&status=superseded") == found("status=superseded&status=current") == []
        assert found("status=current,superseded&status=current") == [document]
        assert found(f"_id={doc_id}&_id=other") == []
        for query in ("status:not=current", "status:missing=true", f"_id:not={doc_id}", "_id:missing=true"):
            r = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&{query}",
                           headers=as_purpose("TREAT"))
            assert r.status_code == 400 and "modifier" in r.json()["issue"][0]["diagnostics"], query


@pytest.mark.parametrize("param", ["author.given=Jane", "author.family=Doe", "related=x"])
def test_what_cannot_be_honoured_is_refused_with_the_reason(tmp_path: Path, param: str) -> None:
    with adapter_client(tmp_path) as (client, _):
        _document(client, "2026-03-05T10:00:00Z")
        url = f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&{param}"
        strict = client.get(url, headers=as_purpose("TREAT"))
        assert strict.status_code == 400, strict.text
        issue = strict.json()["issue"][0]
        assert issue["code"] == "not-supported" and param.split("=")[0] in issue["diagnostics"]
        lenient = client.get(url, headers={**as_purpose("TREAT"), "Prefer": "handling=lenient"})
        assert lenient.status_code == 200
        [outcome] = [e["resource"] for e in lenient.json()["entry"] if e["search"]["mode"] == "outcome"]
        assert param.split("=")[0] in outcome["issue"][0]["diagnostics"]


def test_creation_is_searched_to_the_year_in_the_de_identified_view(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        doc = _document(client, "2026-03-05T10:00:00Z")
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]),
                              headers={"Content-Type": "application/fhir+json"})
        assert consent.status_code == 201, consent.text
        train = as_purpose("TRAIN")
        day = client.get("/fhir/DocumentReference?creation=2026-03-05", headers=train)
        assert day.status_code == 400 and "year" in day.json()["issue"][0]["diagnostics"]
        year = client.get("/fhir/DocumentReference?creation=2026", headers=train)
        assert year.status_code == 200, year.text
        assert [e["resource"]["id"] for e in year.json()["entry"]] == [seen_as(services, "TRAIN", doc["record"]).split("/")[1]]
        assert client.get("/fhir/DocumentReference?creation=2025", headers=train).json()["total"] == 0


def test_in_r5_creation_finds_photos_too(tmp_path: Path) -> None:
    """R5 has no Media: a photo is a DocumentReference whose attachment's creation is when it was taken."""
    with adapter_client(tmp_path) as (client, _):
        photo = post_photo(client, WOUND, metadata(takenAt="2026-03-05T08:00:00Z")).json()["record"]
        doc = _document(client, "2026-03-05T10:00:00Z")["record"]
        r = client.get("/fhir/DocumentReference?creation=2026-03-05", headers={**as_purpose("TREAT"), **R5})
        assert r.status_code == 200, r.text
        assert sorted(e["resource"]["id"] for e in r.json()["entry"]) == sorted(
            [photo.split("/")[1], doc.split("/")[1]])
        # in R4 a photo is Media, not a DocumentReference
        assert _found(client, "creation=2026-03-05") == [doc]


def test_records_stored_before_the_parameters_existed_are_re_indexed_at_start(tmp_path: Path) -> None:
    """A store of schema 9 has no creation column, no ITI-67 tokens, no date ranges, no R5 values
    and no index version: the upgrade adds the column and the table, and the start re-derives
    every record's (and Consent's) index from its JSON."""
    with adapter_client(tmp_path) as (client, _):
        march = _document(client, "2026-03-05T10:00:00Z")["record"]
        photo = post_photo(client, WOUND, metadata(takenAt="2026-03-05T08:00:00Z")).json()["record"]
        consent = client.post("/fhir/Consent", json=consent_resource(["TREAT"], status="proposed"),
                              headers={"Content-Type": "application/fhir+json"}).json()["id"]
    with sqlite3.connect(tmp_path / "data" / "adapter.db") as db:  # back to what schema 9 held
        db.execute("ALTER TABLE resources DROP COLUMN creation")
        db.execute("DELETE FROM tokens WHERE param IN ('security-label', 'format') OR param LIKE 'r5:%'")
        db.execute("DROP TABLE date_ranges")
        db.execute("DELETE FROM key_fingerprints WHERE name = 'search-index'")
        db.execute("UPDATE schema_version SET version = 9")  # as a version 9 database says
    with adapter_client(tmp_path) as (client, services):
        assert _found(client, "creation=2026-03-05") == [march]
        assert _found(client, f"security-label={CONFIDENTIALITY}|R&format={FORMAT}") == [march]
        assert _found(client, "period=ge2026-03-05") == [march]
        assert _r5_found(client, "status=current&category=http://terminology.hl7.org/CodeSystem/media-type|image"
                         "&date=ge2020") == [photo.split("/")[1]]
        assert _r5_found(client, "status=draft", "Consent") == [consent]
        assert services.store.reindex_records(RECORD_INDEX_VERSION, lambda _: pytest.fail("indexed again")) == 0


def test_document_location_is_a_full_url_the_consumer_retrieves_as_given(tmp_path: Path) -> None:
    """ITI-67 2:3.67.4.2.2.1.1: the Document Responder places into content.attachment.url "a full
    URL that can be used by the Document Consumer to retrieve the document" with ITI-68. It was
    ``Binary/<id>``, relative: a consumer GETting it as given reached nothing. Every answer that
    renders a record (read, vread, search, history, batch; R4 and R5; Media too) now completes
    it against the base, and the GET of it answers the document in its attachment.contentType."""
    with adapter_client(tmp_path) as (client, _):
        doc = _document(client, "2026-03-05T10:00:00Z")["record"]
        photo = post_photo(client, WOUND, metadata()).json()["record"]
        base = "http://testserver/fhir/"
        r = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&status=current",
                       headers=as_purpose("TREAT"))
        [found] = [e["resource"] for e in r.json()["entry"]]
        attachment = found["content"][0]["attachment"]
        assert attachment["url"].startswith(base + "Binary/"), attachment["url"]
        document = client.get(attachment["url"], headers={**as_purpose("TREAT"), "Accept": attachment["contentType"]})
        assert document.status_code == 200
        assert document.headers["content-type"] == attachment["contentType"] == "image/jpeg"
        assert document.content[:2] == b"\xff\xd8" and len(document.content) == attachment["size"]

        def urls(resource: dict[str, Any]) -> list[str]:
            content = resource["content"]
            return [content["url"]] if isinstance(content, dict) else [c["attachment"]["url"] for c in content]

        reads = [client.get(f"/fhir/{doc}", headers=as_purpose("TREAT")).json(),
                 client.get(f"/fhir/{doc}/_history/1", headers=as_purpose("TREAT")).json(),
                 client.get(f"/fhir/{photo}", headers=as_purpose("TREAT")).json(),
                 client.get(f"/fhir/DocumentReference/{photo.split('/')[1]}", headers={**as_purpose("TREAT"), **R5}).json(),
                 client.get(f"/fhir/{doc}/_history", headers=as_purpose("TREAT")).json()["entry"][0]["resource"],
                 client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": [
                     {"request": {"method": "GET", "url": doc}}]},
                     headers=as_purpose("TREAT")).json()["entry"][0]["resource"]]
        for resource in reads:
            assert all(u.startswith(base + "Binary/") for u in urls(resource)), resource["content"]


LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
XPHR = {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode", "code": "urn:ihe:pcc:xphr:2007"}


def _mhd_document(client: Any) -> tuple[str, str]:
    """An ITI-65 Provide Document Bundle as a Document Source sends one (tests.support.mhd) with
    a LOINC type and category, the context's facility type, practice setting and event, a format
    and its entryUUID; the record stored and the entryUUID."""
    bundle = provide_document_bundle(DOCUMENT.read_bytes())
    document = bundle["entry"][1]["resource"]
    document.update({"type": {"coding": [{"system": LOINC, "code": "34108-1", "display": "Outpatient Note"}]},
                     "category": [{"coding": [{"system": LOINC, "code": "11369-6"}]}],
                     "context": {"facilityType": {"coding": [{"system": SNOMED, "code": "225732001"}]},
                                 "practiceSetting": {"coding": [{"system": SNOMED, "code": "394802001"}]},
                                 "event": [{"coding": [{"system": SNOMED, "code": "71388002"}]}]}})
    document["identifier"][0]["use"] = "official"
    document["content"][0]["format"] = XPHR
    r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    response = r.json()["entry"][1]["response"]
    assert response["status"] == "201 Created"
    warned = {i["expression"][0] for i in response.get("outcome", {}).get("issue", [])}
    # only the sender's date (the adapter's is when it stored the document), its confidentiality
    # N (the policy's R is more restrictive) and the SHA-1 and size of the document as sent (it is
    # stored without its metadata) are not kept as sent
    attachment = "Bundle.entry[1].resource.content[0].attachment"
    assert warned == {"Bundle.entry[1].resource.date", "Bundle.entry[1].resource.securityLabel[0]",
                      f"{attachment}.hash", f"{attachment}.size"}, warned
    return "DocumentReference/" + response["location"].split("/")[1], document["identifier"][0]["value"]


def test_a_document_sources_metadata_is_what_iti_67_finds_it_by(tmp_path: Path) -> None:
    """Review finding: a Document Consumer's ITI-67 query by the LOINC type or category a
    Document Source submitted (and by setting, facility, event, format) never found the document:
    the adapter stored its own type and category and dropped the rest. They are kept, searched,
    and shown in each view as it allows (codes, not the entryUUID, in TRAIN and HRESCH)."""
    with adapter_client(tmp_path) as (client, services):
        doc, entry_uuid = _mhd_document(client)
        posted = _document(client, "2026-03-05T10:00:00Z", ROOT / "samples" / "tiny.jpg")["record"]  # own codes
        for query in (f"type={LOINC}|34108-1", "type=34108-1", f"category={LOINC}|11369-6",
                      f"setting={SNOMED}|394802001", f"facility={SNOMED}|225732001", f"event={SNOMED}|71388002",
                      f"format={XPHR['system']}|{XPHR['code']}", f"identifier=urn:ietf:rfc:3986|{entry_uuid}",
                      "type=34108-1,urn:clinical-image-adapter:photo-kind|nothing"):
            assert _found(client, query) == [doc], query
        assert _found(client, "category=urn:clinical-image-adapter:photo-kind|document") == sorted([doc, posted])
        assert _found(client, "kind=document") == sorted([doc, posted])
        assert _found(client, f"format={FORMAT}") == [posted]
        for query in (f"type={LOINC}|11369-6", f"setting={SNOMED}|1", f"facility={SNOMED}|394802001",
                      f"event={LOINC}|71388002"):
            assert _found(client, query) == [], query
        stored = client.get(f"/fhir/{doc}", headers=as_purpose("TREAT")).json()
        assert stored["type"]["coding"][0]["code"] == "34108-1"
        assert [c["coding"][0]["code"] for c in stored["category"]] == ["document", "11369-6"]
        assert entry_uuid in [i["value"] for i in stored["identifier"]]
        assert stored["context"]["event"][0]["coding"][0]["code"] == "71388002"
        # R5: masterIdentifier, SHA-256 and entryUUID as identifiers; event[].concept; format as profile
        r5 = client.get(f"/fhir/{doc}", headers={**as_purpose("TREAT"), **R5}).json()
        assert entry_uuid in [i["value"] for i in r5["identifier"]]
        assert r5["event"] == [{"concept": {"coding": [{"system": SNOMED, "code": "71388002"}]}}]
        assert r5["practiceSetting"]["coding"][0]["code"] == "394802001"
        assert r5["facilityType"]["coding"][0]["code"] == "225732001"
        assert r5["content"][0]["profile"] == [{"valueCoding": XPHR}]
        found = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&type={LOINC}|34108-1",
                           headers={**as_purpose("TREAT"), **R5})
        assert [e["resource"]["id"] for e in found.json()["entry"]] == [doc.split("/")[1]]

        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN", "HRESCH"]),
                              headers={"Content-Type": "application/fhir+json"})
        assert consent.status_code == 201, consent.text
        for purpose in ("TRAIN", "HRESCH"):
            shown = client.get(f"/fhir/{seen_as(services, purpose, doc)}", headers=as_purpose(purpose))
            assert shown.status_code == 200, shown.text
            view = shown.json()
            assert entry_uuid not in shown.text and "Outpatient Note" not in shown.text  # the sender's text
            assert "identifier" not in view  # no record identifier: the masterIdentifier is the view's own
            assert view["masterIdentifier"]["value"].startswith("urn:oid:2.25.")
            assert view["type"] == {"coding": [{"system": LOINC, "code": "34108-1"}]}
            assert [c["coding"][0]["code"] for c in view["category"]] == ["document", "11369-6"]
            assert view["context"]["practiceSetting"]["coding"][0]["code"] == "394802001"
            assert view["content"][0]["format"] == XPHR
            # a reader in the view selects by the codes too, never by the entryUUID
            r = client.get(f"/fhir/DocumentReference?type={LOINC}|34108-1&event={SNOMED}|71388002",
                           headers=as_purpose(purpose))
            assert [e["resource"]["id"] for e in r.json()["entry"]] == [seen_as(services, purpose, doc).split("/")[1]]
            r = client.get(f"/fhir/DocumentReference?identifier=urn:ietf:rfc:3986|{entry_uuid}",
                           headers=as_purpose(purpose))
            assert r.status_code == 400, r.text


def test_a_document_source_may_raise_the_confidentiality(tmp_path: Path) -> None:
    """The policy's confidentiality (R) is never lowered by a sender (N: stored R, warned); a
    more restrictive one (V) is kept, found by security-label, and labels every release of the
    record and its Binary."""
    with adapter_client(tmp_path) as (client, _):
        bundle = provide_document_bundle(DOCUMENT.read_bytes())
        bundle["entry"][1]["resource"]["securityLabel"][0]["coding"][0]["code"] = "V"
        r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        response = r.json()["entry"][1]["response"]
        assert [i["expression"][0] for i in response["outcome"]["issue"]][:1] == ["Bundle.entry[1].resource.date"]
        assert not [i for i in response["outcome"]["issue"] if "securityLabel" in i["expression"][0]]
        doc = response["location"].split("/_history")[0]
        assert _found(client, f"security-label={CONFIDENTIALITY}|V") == [doc]
        assert _found(client, f"security-label={CONFIDENTIALITY}|R") == []
        record = client.get(f"/fhir/{doc}", headers=as_purpose("TREAT")).json()
        binary = client.get(record["content"][0]["attachment"]["url"],
                            headers={**as_purpose("TREAT"), "Accept": "application/fhir+json"}).json()
        for resource in (record, binary):
            labels = [c["code"] for c in resource["meta"]["security"] if c["system"] == CONFIDENTIALITY]
            assert labels == ["V"], resource["resourceType"]


def _r5_found(client: Any, query: str, rtype: str = "DocumentReference") -> list[str]:
    r = client.get(f"/fhir/{rtype}?{query}", headers={**as_purpose("TREAT"), **R5})
    assert r.status_code == 200, (query, r.text)
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


def test_an_r5_search_matches_the_r5_resource_it_returns(tmp_path: Path) -> None:
    """Review finding (mhd 1): in R5, where a photo (an R4 Media) is a DocumentReference with
    status current, ``status=current`` found no photo and ``status=completed`` (no R5
    DocumentReference status) did; ``category`` and ``type`` matched the Media's codes, not the
    R5 resource's (the media type is its category; it has no type); ``date`` matched when the
    photo was taken, not its R5 date (when it was stored). Every value is now the served one."""
    media_type = "http://terminology.hl7.org/CodeSystem/media-type|image"
    with adapter_client(tmp_path) as (client, _):
        photo = post_photo(client, WOUND, metadata(takenAt="2020-03-05T08:00:00Z")).json()["record"]
        doc = _document(client, "2020-03-05T10:00:00Z")["record"]
        photo_id, doc_id = photo.split("/")[1], doc.split("/")[1]
        both = sorted([photo_id, doc_id])
        shown = client.get(f"/fhir/DocumentReference/{photo_id}", headers={**as_purpose("TREAT"), **R5}).json()
        assert shown["status"] == "current" and "type" not in shown
        patient = f"patient.identifier={PATIENT_ID}"
        assert _r5_found(client, f"{patient}&status=current") == both
        assert _r5_found(client, f"{patient}&status=http://hl7.org/fhir/document-reference-status|current") == both
        assert _r5_found(client, f"{patient}&status=completed") == []
        assert _r5_found(client, f"{patient}&status=entered-in-error") == []
        assert _r5_found(client, f"{patient}&category={media_type}") == [photo_id]
        assert _r5_found(client, f"{patient}&category=urn:clinical-image-adapter:photo-kind|clinical") == [photo_id]
        assert _r5_found(client, f"{patient}&type={media_type}") == []
        assert _r5_found(client, f"{patient}&type=image") == []
        # the R5 date of a photo is Media.issued (when stored), of a document its date
        assert _r5_found(client, f"{patient}&date=2020-03-05") == []
        assert _r5_found(client, f"{patient}&date=ge2024") == both
        assert _r5_found(client, f"{patient}&creation=2020-03-05") == both
        # R4 keeps R4's values
        r4 = client.get(f"/fhir/Media?{patient}&status=completed&type={media_type}&date=2020-03-05",
                        headers=as_purpose("TREAT"))
        assert [e["resource"]["id"] for e in r4.json()["entry"]] == [photo_id]
        assert _found(client, "") == [doc]


def test_an_r5_consent_search_matches_the_r5_consent(tmp_path: Path) -> None:
    """R4 Consent status proposed is R5 draft (rejected: not-done), and R5 Consent.date is the
    day of R4 dateTime: searched as R5 shows them."""
    fhir_json = {"Content-Type": "application/fhir+json"}
    with adapter_client(tmp_path) as (client, _):
        proposed = client.post("/fhir/Consent", json=consent_resource(["TREAT"], status="proposed"), headers=fhir_json)
        assert proposed.status_code == 201, proposed.text
        cid = proposed.json()["id"]
        patient = f"patient:identifier={PATIENT_ID}"
        assert _r5_found(client, f"{patient}&status=draft", "Consent") == [cid]
        assert _r5_found(client, f"{patient}&status=proposed", "Consent") == []
        # R5 date 2026-11-26 (a day) overlaps what is after noon of that day; R4's instant (10:00Z) does not
        assert _r5_found(client, f"{patient}&date=ge2026-11-26T12:00:00Z", "Consent") == [cid]
        assert _r5_found(client, f"{patient}&date=gt2026-11-26", "Consent") == []
        r4 = client.get(f"/fhir/Consent?{patient}&status=proposed&date=lt2026-11-26T12:00:00Z",
                        headers=as_purpose("TREAT"))
        assert [e["resource"]["id"] for e in r4.json()["entry"]] == [cid]


def _mhd_document_of(client: Any, subject: dict[str, Any], path: Path = DOCUMENT) -> str:
    bundle = provide_document_bundle(path.read_bytes())
    for entry in bundle["entry"][:2]:
        entry["resource"]["subject"] = subject
    bundle["entry"][1]["resource"]["masterIdentifier"]["value"] += "." + str(len(path.name))
    r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    return str(r.json()["entry"][1]["response"]["location"].split("/")[1])


def test_a_patient_reference_search_follows_fhir_reference_search(tmp_path: Path) -> None:
    """Review finding (mhd 2): ``patient=<absolute URL>`` was cut to its last two segments: a
    document filed with ``http://ehr.example.org/fhir/Patient/p9`` was not found by that URL, and
    one filed with ``Patient/p11`` was found by another server's ``.../Patient/p11``. A relative
    value (or an id) means a Patient of this server; an absolute URL only that URL, this server's
    own base meaning the relative form (search.html#reference)."""
    ehr = "http://ehr.example.org/fhir/Patient/p9"
    with adapter_client(tmp_path) as (client, _):
        absolute = _mhd_document_of(client, {"reference": ehr, "identifier": dict(PATIENT)})
        relative = _mhd_document_of(client, {"reference": "Patient/p11", "identifier": dict(PATIENT)},
                                    ROOT / "samples" / "tiny.jpg")
        assert relative != absolute
        for query in (f"patient={ehr}", f"subject={ehr}", f"patient:Patient={ehr}", f"subject={ehr}/_history/2"):
            assert _r4_ids(client, query) == [absolute], query
        for query in ("patient=Patient/p9", "patient=p9", "patient=http://other.example.net/fhir/Patient/p9"):
            assert _r4_ids(client, query) == [], query
        for query in ("patient=Patient/p11", "patient=p11", "subject:Patient=p11",
                      "patient=http://testserver/fhir/Patient/p11"):
            assert _r4_ids(client, query) == [relative], query
        for query in ("patient=http://other.example.net/fhir/Patient/p11", "patient=http://ehr.example.org/fhir/Patient/p11"):
            assert _r4_ids(client, query) == [], query
        # the Provenance of each record, as the records were found (the same rule)
        provenance = client.get(f"/fhir/Provenance?patient={ehr}", headers=as_purpose("TREAT")).json()
        assert provenance["total"] == 1
        r = client.get(f"/fhir/Provenance?target=http://testserver/fhir/DocumentReference/{absolute}",
                       headers=as_purpose("TREAT"))
        assert r.json()["total"] == 1, r.text
        r = client.get(f"/fhir/Provenance?target=http://other.example.net/fhir/DocumentReference/{absolute}",
                       headers=as_purpose("TREAT"))
        assert r.status_code == 200 and r.json()["total"] == 0, r.text


def _r4_ids(client: Any, query: str) -> list[str]:
    r = client.get(f"/fhir/DocumentReference?{query}", headers=as_purpose("TREAT"))
    assert r.status_code == 200, (query, r.text)
    return sorted(e["resource"]["id"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match")


def test_period_is_a_date_search_on_the_context_period(tmp_path: Path) -> None:
    """Review finding (mhd 5): ITI-67 ``period`` was refused. It searches context.period as a
    FHIR date search on a Period (search.html#date): a start without an end is open-ended. A
    photo's own period is the instant it was taken (MHD review m3: a start alone was a service
    still going on, found by period=ge<any future date>)."""
    with adapter_client(tmp_path) as (client, services):
        march = _document(client, "2026-03-05T10:00:00Z")["record"]  # context.period: the instant taken
        stored = services.store.get("DocumentReference", march.split("/")[1])
        assert stored is not None
        assert stored.resource["context"]["period"] == {"start": "2026-03-05T10:00:00+00:00", "end": "2026-03-05T10:00:00+00:00"}
        span = _document(client, "2025-01-01T09:00:00Z", ROOT / "samples" / "tiny.jpg")["record"]
        spanned = services.store.get("DocumentReference", span.split("/")[1])
        assert spanned is not None
        resource = {**spanned.resource, "context": {**spanned.resource["context"],
                                                    "period": {"start": "2025-01-01T09:00:00Z", "end": "2025-01-03"}}}
        services.store.update(NewResource("DocumentReference", spanned.id, resource, index_resource(resource),
                                          spanned.facts, spanned.blob_sha256))
        assert _found(client, "period=2026-03-05") == [march]  # an instant: within the day
        assert _found(client, "period=ge2026-03-05") == [march]
        assert _found(client, "period=ge2030") == []  # not going on
        assert sorted(_found(client, "period=lt2026-03-06")) == sorted([march, span])
        assert _found(client, "period=le2025-01-01") == [span]
        assert _found(client, "period=2025-01") == [span]  # 1 to 3 January: within January
        assert _found(client, "period=ge2025-01-03&period=le2025-01-03") == [span]
        assert _found(client, "period=gt2025-01-03") == [march]
        assert _found(client, "period=sa2024&period=eb2026") == [span]
        assert _found(client, "period=ne2025-01") == [march]
        r5 = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&period=2025-01",
                        headers={**as_purpose("TREAT"), **R5})
        assert [e["resource"]["id"] for e in r5.json()["entry"]] == [span.split("/")[1]]


def test_an_r5_reader_searches_format_and_event_by_their_r5_names(tmp_path: Path) -> None:
    """R5 names R4's DocumentReference ``format`` and ``event`` parameters ``format-code`` and
    ``event-code`` (hl7.fhir.r5.core SearchParameter DocumentReference-format-code, -event-code):
    an R5 reader searches by them (400 before), and the R5 CapabilityStatement declares them so."""
    with adapter_client(tmp_path) as (client, _):
        doc, _entry_uuid = _mhd_document(client)
        doc_id = doc.split("/")[1]
        for query in (f"format-code={XPHR['system']}|{XPHR['code']}", f"event-code={SNOMED}|71388002"):
            assert _r5_found(client, query) == [doc_id], query
            assert _r5_found(client, query.replace("|", "|x")) == [], query
        cs = client.get("/fhir/metadata", headers=R5).json()
        [resource] = [r for r in cs["rest"][0]["resource"] if r["type"] == "DocumentReference"]
        declared = {p["name"]: p.get("definition") for p in resource["searchParam"]}
        assert declared["format-code"] == "http://hl7.org/fhir/SearchParameter/DocumentReference-format-code"
        assert declared["event-code"] == "http://hl7.org/fhir/SearchParameter/DocumentReference-event-code"
        assert "format" not in declared and "event" not in declared
