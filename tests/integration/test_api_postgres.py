"""The same service on PostgreSQL: ingest, read under purpose, consent lifecycle and search,
through the HTTP app, with the store chosen by ADAPTER_DATABASE_URL; and the concurrent retry
of one upload, on PostgreSQL and SQLite alike."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from adapter.errors import BusinessRuleViolation
from adapter.mapping.dicom_photo import encode_dataset
from adapter.model.photo import PhotoKind, PhotoMetadata
from adapter.model.purpose import PurposeOfUse, RequestContext
from tests.conftest import ROOT
from tests.support.app import (
    PATIENT,
    adapter_client,
    as_purpose,
    consent_resource,
    metadata,
    pacs_client,
    post_photo,
    seen_as,
)
from tests.support.dciodvfy import photo_object, stored_sample
from tests.support.postgres import postgres_schema


@pytest.fixture()
def pg_url() -> Iterator[str]:
    with postgres_schema("test_api") as url:
        yield url


def test_ingest_and_purpose_checked_reads_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    with pacs_client(tmp_path, database_url=pg_url) as (client, services):
        assert services.settings.resolved_database_url.startswith("postgresql")
        receipt = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        media = receipt["record"]
        assert client.get(f"/fhir/{media}", headers=as_purpose("TREAT")).status_code == 200
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', media)}", headers=as_purpose("TRAIN")).status_code == 404
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).json()
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', media)}", headers=as_purpose("TRAIN")).status_code == 200
        consent["status"] = "inactive"
        assert client.put(f"/fhir/Consent/{consent['id']}", json=consent).status_code == 200
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', media)}", headers=as_purpose("TRAIN")).status_code == 404
        ident = f"{PATIENT['system']}|{PATIENT['value']}"
        found = client.get(f"/fhir/Media?patient:identifier={ident}&created=ge2000", headers=as_purpose("TREAT"))
        assert found.json()["total"] == 1
        again = post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        assert again.json() == receipt
        with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute(text("SELECT COUNT(*) FROM resources")).scalar_one() == 5
        # QIDO-RS streams the instances from PostgreSQL (a server-side cursor) and pages them
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata(patient={"system": PATIENT["system"],
                                                                             "value": "MRN-0002"}))
        for path in ("studies", "series", "instances"):
            every = client.get(f"/dicomweb/{path}", headers=as_purpose("TREAT")).json()
            assert len(every) == 2
            page = client.get(f"/dicomweb/{path}?limit=1&offset=1", headers=as_purpose("TREAT")).json()
            assert page == every[1:]
        studies = client.get("/dicomweb/studies", headers=as_purpose("TREAT")).json()
        day = studies[0]["00080020"]["Value"][0]
        on_day = client.get(f"/dicomweb/studies?StudyDate={day}", headers=as_purpose("TREAT")).json()
        assert [s["0020000D"] for s in on_day] == [s["0020000D"] for s in studies if s["00080020"]["Value"][0] == day]
        assert client.get("/dicomweb/studies?StudyDate=19000101", headers=as_purpose("TREAT")).json() == []
        # the series and instance attributes (PS3.18 Tables 10.6.3-4, -5), kept in PostgreSQL's index too
        instances = client.get("/dicomweb/instances?InstanceNumber=1", headers=as_purpose("TREAT")).json()
        assert len(instances) == 2
        assert all(i["00280010"]["vr"] == "US" and i["00280010"]["Value"][0] > 0 for i in instances)
        number = instances[0]["00200011"]["Value"][0]
        assert len(client.get(f"/dicomweb/series?SeriesNumber={number}", headers=as_purpose("TREAT")).json()) == 2
        assert client.get("/dicomweb/instances?InstanceNumber=2", headers=as_purpose("TREAT")).json() == []
        # the study attributes of a received object (PS3.18 Table 10.6.3-3), kept in PostgreSQL's index too
        received = photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg"), record_id="rec-pg")
        received.ReferringPhysicianName, received.PatientSex, received.StudyID = "Welby^Marcus", "F", "S-42"
        body = (b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + encode_dataset(received) + b"\r\n--b0--\r\n")
        stored = client.post("/dicomweb/studies", content=body,
                             headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0'})
        assert stored.status_code == 200, stored.text
        [study] = client.get("/dicomweb/studies?ReferringPhysicianName=welby*&StudyID=S-42",
                             headers=as_purpose("TREAT")).json()
        assert (study["0020000D"]["Value"], study["00080090"], study["00100040"], study["00200010"]) == (
            [received.StudyInstanceUID], {"vr": "PN", "Value": [{"Alphabetic": "Welby^Marcus"}]},
            {"vr": "CS", "Value": ["F"]}, {"vr": "SH", "Value": ["S-42"]})
        assert client.get("/dicomweb/studies?StudyID=S-4", headers=as_purpose("TREAT")).json() == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_same_upload_posted_eight_times_at_once_is_stored_once(tmp_path: Path, backend: str,
                                                                    request: pytest.FixtureRequest) -> None:
    """A capture app retrying on a flaky network can send the same photo with the same
    Idempotency-Key several times at once: every request gets the one receipt (the race lost
    in the database answers with the winner's receipt), and one record is stored."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    photo = (ROOT / "samples" / "wound.jpg").read_bytes()
    with adapter_client(tmp_path, database_url=url) as (client, services):
        meta = PhotoMetadata.model_validate(metadata())
        ctx = RequestContext(purpose=PurposeOfUse("TREAT"))
        start = threading.Barrier(8)
        receipts: list[dict] = []
        errors: list[BaseException] = []

        def post() -> None:
            try:
                start.wait()
                result = services.ingest.ingest_photo(photo, meta, idempotency_key="retry-1", ctx=ctx)
                receipts.append(result.receipt)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=post) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(receipts) == 8 and all(r == receipts[0] for r in receipts)
        ident = f"{PATIENT['system']}|{PATIENT['value']}"
        found = client.get(f"/fhir/Media?patient:identifier={ident}", headers=as_purpose("TREAT")).json()
        assert found["total"] == 1 and found["entry"][0]["resource"]["id"] == receipts[0]["record"].split("/")[1]
        assert list((tmp_path / "data" / "staging").iterdir()) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_one_key_for_two_photos_at_once_stores_one_and_refuses_the_other(tmp_path: Path, backend: str,
                                                                         request: pytest.FixtureRequest) -> None:
    """The race on a reused Idempotency-Key: whichever photo wins is stored and its retries get
    its receipt; the other photo is refused (BusinessRuleViolation, 422), never answered with
    the winner's receipt."""
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    photos = [(ROOT / "samples" / "wound.jpg").read_bytes(), (ROOT / "samples" / "tiny.jpg").read_bytes()]
    with adapter_client(tmp_path, database_url=url) as (client, services):
        meta = PhotoMetadata.model_validate(metadata())
        ctx = RequestContext(purpose=PurposeOfUse("TREAT"))
        start = threading.Barrier(8)
        outcomes: list[tuple[int, object]] = []

        def post(which: int) -> None:
            start.wait()
            try:
                result = services.ingest.ingest_photo(photos[which], meta, idempotency_key="shared-1", ctx=ctx)
                outcomes.append((which, result.receipt))
            except BusinessRuleViolation as exc:
                outcomes.append((which, exc))

        threads = [threading.Thread(target=post, args=(n % 2,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stored = {which for which, outcome in outcomes if isinstance(outcome, dict)}
        assert len(outcomes) == 8 and len(stored) == 1
        [winner] = stored
        assert all(isinstance(outcome, BusinessRuleViolation) for which, outcome in outcomes if which != winner)
        assert len({str(o) for w, o in outcomes if w == winner}) == 1
        ident = f"{PATIENT['system']}|{PATIENT['value']}"
        assert client.get(f"/fhir/Media?patient:identifier={ident}", headers=as_purpose("TREAT")).json()["total"] == 1
        assert list((tmp_path / "data" / "staging").iterdir()) == []



def test_a_value_too_long_for_the_store_to_index_is_refused_not_retried(tmp_path: Path, pg_url: str) -> None:
    """Found by the diff review: a patient identifier (or an MHD masterIdentifier) of ~8000
    characters passes the API, and PostgreSQL refuses to index it ("index row size exceeds",
    SQLSTATE class 54). That came back as 503 with Retry-After, so the client retried for ever;
    it is the request's fault: 422, nothing stored, and the store goes on."""
    with adapter_client(tmp_path, database_url=pg_url) as (client, _):
        long = {"system": PATIENT["system"], "value": "M" + secrets.token_hex(4000)}  # incompressible
        r = post_photo(client, ROOT / "samples" / "wound.jpg", metadata(patient=long))
        assert r.status_code == 422, r.text
        assert r.json()["resourceType"] == "OperationOutcome" and "Retry-After" not in r.headers
        assert long["value"][:40] not in r.text  # the value is not quoted back
        assert client.get("/fhir/Media", headers=as_purpose("TREAT")).json()["total"] == 0
        assert post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).status_code == 201
