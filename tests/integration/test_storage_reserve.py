"""The data folder's free-space reserve (ADAPTER_MIN_FREE_MB) and readiness (GET /health/ready).

A disk really filled to its reserve cannot be made here without filling the machine's disk, so
the reserve is set above the free space the test's file system really has (measured with
statvfs, as the adapter does): for the adapter that disk is full, and everything else (the
database, the files, the DICOM association) is real.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pydicom
import pytest
import sqlalchemy as sa

from adapter.dicom import AeOptions, StoreSCP
from adapter.dicom.status import OUT_OF_RESOURCES, SUCCESS
from adapter.services.readiness import check_dicom_listener
from tests.conftest import record_emitted
from tests.integration.test_dicomweb import stow
from tests.support.app import PATIENT, adapter_client, consent_resource, metadata, pacs_client, post_photo
from tests.support.audit import (
    INSTANCES_TRANSFERRED,
    caller_request_ids,
    dicom_events,
    patients,
    sop_instance_uids,
    study_uids,
)
from tests.support.dicom_files import pynet_store, sc_file
from tests.support.mhd import provide_document_bundle
from tests.support.orthanc import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WOUND = ROOT / "samples" / "wound.jpg"
TREAT = {"X-Purpose-Of-Use": "TREAT"}


def over_free_mb(path: Path) -> int:
    """A reserve (MiB) larger than what the file system holding ``path`` has free: a full disk."""
    st = os.statvfs(path)
    return (st.f_bavail * st.f_frsize) // (1024 * 1024) + 1024


def blob_files(data_dir: Path) -> list[Path]:
    return [p for p in (data_dir / "blobs").rglob("*") if p.is_file()]


def media_total(client: Any) -> int:
    r = client.get("/fhir/Media", params={"_summary": "count"}, headers=TREAT)
    assert r.status_code == 200, r.text
    return int(r.json()["total"])


def assert_failed_create(event: dict[str, Any], request_id: str, purpose: str = "TREAT",
                         subtype: str = "create") -> None:
    """``event`` is the AuditEvent of a create the adapter failed to store (BALP create, or for an
    IHE MHD ITI-65 its Import: ``subtype``; outcome 8 Serious failure, saying why) for the
    patient, naming no record (none was stored) and the request by its X-Request-Id."""
    record_emitted(event)
    assert (event["subtype"][0]["code"], event["action"], event["outcome"]) == (subtype, "C", "8")
    assert "ADAPTER_MIN_FREE_MB" in event["outcomeDesc"]
    assert [e["what"]["identifier"] for e in event["entity"] if e.get("role", {}).get("code") == "1"] == [PATIENT]
    assert not [e for e in event["entity"] if "reference" in e["what"]]
    assert caller_request_ids(event) == [request_id]
    assert event["agent"][2]["purposeOfUse"][0]["coding"][0]["code"] == purpose


def test_a_photo_is_refused_with_507_audited_as_a_failed_create_and_nothing_is_stored(tmp_path: Path) -> None:
    """Found by the audit review: a photo refused for lack of room left no AuditEvent, where a
    C-STORE or STOW-RS object refused so is audited (outcome 8). It is audited as a create that
    failed (ATNA outcome 8), naming the patient and the request; nothing else is stored."""
    with adapter_client(tmp_path, min_free_mb=over_free_mb(tmp_path)) as (client, services):
        r = post_photo(client, WOUND, metadata(), headers={"X-Request-Id": "photo-507"})
        assert r.status_code == 507, r.text
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "no-store"
        assert "ADAPTER_MIN_FREE_MB" in outcome["issue"][0]["diagnostics"]
        assert PATIENT["value"] not in r.text
        [failure] = services.store.list_audit()
        assert_failed_create(failure, "photo-507")
        assert media_total(client) == 0
        assert blob_files(tmp_path / "data") == []
        assert list((tmp_path / "data" / "staging").iterdir()) == []


def test_a_transaction_is_refused_with_507_audited_as_a_failed_create_and_nothing_is_stored(tmp_path: Path) -> None:
    """The same for an ITI-65 Provide Document Bundle (POST /fhir transaction): 507, one
    AuditEvent of the failed create under the purpose stated, in MHD's shape (DCM 110107 Import,
    ITI-65, naming the SubmissionSet), nothing stored."""
    bundle = provide_document_bundle((ROOT / "samples" / "document.jpg").read_bytes())
    with adapter_client(tmp_path, min_free_mb=over_free_mb(tmp_path)) as (client, services):
        r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json",
                                                       "X-Request-Id": "iti65-507", "X-Purpose-Of-Use": "PATRQT"})
        assert r.status_code == 507, r.text
        assert r.json()["issue"][0]["code"] == "no-store" and PATIENT["value"] not in r.text
        [failure] = services.store.list_audit()
        assert_failed_create(failure, "iti65-507", "PATRQT", subtype="ITI-65")
        assert failure["type"]["code"] == "110107"
        assert [e for e in failure["entity"] if e.get("role", {}).get("code") == "20"]
        assert len(_documents(client)) == 0
        assert blob_files(tmp_path / "data") == []
        assert list((tmp_path / "data" / "staging").iterdir()) == []


def test_reads_consent_changes_and_their_audit_go_on_in_the_reserve(tmp_path: Path) -> None:
    """A photo stored while there was room; then the disk fills: the photo is still read, a
    Consent is still written and withdrawn (a patient's withdrawal never waits for disk space),
    each audited; a retry of the stored photo is still answered with its receipt."""
    with adapter_client(tmp_path) as (client, _):
        first = post_photo(client, WOUND, metadata())
        assert first.status_code == 201, first.text
    with adapter_client(tmp_path, min_free_mb=over_free_mb(tmp_path)) as (client, services):
        audited = len(services.store.list_audit())
        record = first.headers["location"].split("/fhir/")[1].split("/_history")[0]
        assert client.get(f"/fhir/{record}", headers=TREAT).status_code == 200
        created = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]),
                              headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201, created.text
        withdrawn = {**created.json(), "status": "inactive"}
        updated = client.put(f"/fhir/Consent/{withdrawn['id']}", json=withdrawn,
                             headers={"Content-Type": "application/fhir+json"})
        assert updated.status_code == 200, updated.text
        assert len(services.store.list_audit()) >= audited + 3
        again = post_photo(client, WOUND, metadata())
        assert again.status_code == 201, again.text
        assert again.headers.get("idempotent-replayed") == "true"
        assert again.json()["record"] == first.json()["record"]
        # a new photo is not
        other = post_photo(client, ROOT / "samples" / "document.jpg", metadata(kind="document", consent=None))
        assert other.status_code == 507, other.text
        assert media_total(client) + len(_documents(client)) == 1


def _documents(client: Any) -> list[dict[str, Any]]:
    r = client.get("/fhir/DocumentReference", headers=TREAT)
    assert r.status_code == 200, r.text
    return list(r.json().get("entry", []))


@pytest.mark.usefixtures("pynetdicom_config")
def test_a_c_store_is_refused_with_out_of_resources_and_nothing_is_stored(tmp_path: Path) -> None:
    with adapter_client(tmp_path, min_free_mb=over_free_mb(tmp_path)) as (_, services):
        scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",)), services.dicom_ingest)
        scp.start()
        try:
            sent = sc_file(tmp_path / "sc.dcm")
            answer = pynet_store(scp.port, tmp_path / "sc.dcm", chunked=True)
            assert answer.Status == OUT_OF_RESOURCES, hex(answer.Status)
            assert services.store.find_dicom_instance(sent.SOPInstanceUID) is None
            assert blob_files(tmp_path / "data") == []
            assert list((tmp_path / "data" / "staging").iterdir()) == []
            # the adapter failed to keep a good object: audited (in the reserve) as a serious
            # failure, naming the patient and study it read before the blobs were refused
            [failure] = services.store.list_audit()
            record_emitted(failure)
            assert dicom_events([failure], INSTANCES_TRANSFERRED) == [failure]
            assert (failure["action"], failure["outcome"]) == ("C", "8") and "ADAPTER_MIN_FREE_MB" in failure["outcomeDesc"]
            assert failure["agent"][0]["altId"] == "PYNETSCU"
            assert sop_instance_uids(failure) == [sent.SOPInstanceUID]
            assert patients(failure) == [PATIENT] and study_uids(failure) == [sent.StudyInstanceUID]
        finally:
            scp.stop()
    # the same object once there is room again
    with adapter_client(tmp_path) as (_, services):
        scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",)), services.dicom_ingest)
        scp.start()
        try:
            assert pynet_store(scp.port, tmp_path / "sc.dcm", chunked=True).Status == SUCCESS
            assert services.store.find_dicom_instance(sent.SOPInstanceUID) is not None
        finally:
            scp.stop()


def test_stow_rs_lists_the_object_as_failed_out_of_resources(tmp_path: Path) -> None:
    with pacs_client(tmp_path, min_free_mb=over_free_mb(tmp_path)) as (client, services):
        sent = sc_file(tmp_path / "sc.dcm")
        r = stow(client, pydicom.dcmread(tmp_path / "sc.dcm"))
        assert r.status_code == 409, r.text
        failed = r.json()["00081198"]["Value"][0]
        assert failed["00081197"]["Value"] == [OUT_OF_RESOURCES]
        assert services.store.find_dicom_instance(sent.SOPInstanceUID) is None
        assert blob_files(tmp_path / "data") == []


# -- readiness --------------------------------------------------------------------------------


def test_ready_when_the_database_and_the_data_folder_answer(tmp_path: Path) -> None:
    with adapter_client(tmp_path, dicom_enabled=False) as (client, _):
        live = client.get("/health")
        assert live.status_code == 200 and live.json()["status"] == "ok"
        r = client.get("/health/ready")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/health+json")
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert body["status"] == "pass"
        assert set(body["checks"]) == {"database:responseTime", "storage:freeSpace", "database:freeSpace"}
        room = body["checks"]["database:freeSpace"][0]
        assert room["status"] == "pass" and room["observedUnit"] == "MiB" and room["componentType"] == "datastore"
        storage = body["checks"]["storage:freeSpace"][0]
        assert storage["status"] == "pass" and storage["observedUnit"] == "MiB" and storage["observedValue"] > 0
        assert body["checks"]["database:responseTime"][0]["componentType"] == "datastore"


def test_down_to_the_reserve_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    with adapter_client(tmp_path, dicom_enabled=False, min_free_mb=over_free_mb(tmp_path)) as (client, _):
        r = client.get("/health/ready")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "warn"
        storage = body["checks"]["storage:freeSpace"][0]
        assert storage["status"] == "warn" and "new images are refused" in storage["output"]


@pytest.mark.usefixtures("pynetdicom_config")
def test_a_dicom_scp_that_does_not_listen_fails_readiness(tmp_path: Path) -> None:
    port = free_port()
    with adapter_client(tmp_path, dicom_port=port) as (client, services):
        r = client.get("/health/ready")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "fail"
        assert body["checks"]["dicom:listener"][0]["status"] == "fail"
        assert body["checks"]["database:responseTime"][0]["status"] == "pass"
        scp = StoreSCP(AeOptions(port=port, allowed_ae_titles=("PYNETSCU",)), services.dicom_ingest)
        scp.start()
        try:
            r = client.get("/health/ready")
            assert r.status_code == 200, r.text
            assert r.json()["checks"]["dicom:listener"][0]["status"] == "pass"
        finally:
            scp.stop()


def test_a_database_that_cannot_be_read_fails_readiness(tmp_path: Path) -> None:
    """The SQLite file replaced under the running adapter by one without its tables (a wrong
    volume mounted, say): the store no longer answers its schema version."""
    with adapter_client(tmp_path, dicom_enabled=False) as (client, services):
        services.store.close()  # the pool holds no connection to the old file
        db = tmp_path / "data" / "adapter.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        db.write_bytes(b"")
        r = client.get("/health/ready")
        assert r.status_code == 503, r.text
        check = r.json()["checks"]["database:responseTime"][0]
        assert check["status"] == "fail" and check["output"]
        assert json.dumps(r.json()).find(str(tmp_path)) == -1  # no paths, nothing internal


def test_a_database_missing_a_table_fails_readiness(tmp_path: Path) -> None:
    """A database restored in part under the running adapter: its schema version still answers,
    the table the next request needs does not."""
    with adapter_client(tmp_path, dicom_enabled=False) as (client, services):
        with services.store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE audit"))
        r = client.get("/health/ready")
        assert r.status_code == 503, r.text
        check = r.json()["checks"]["database:responseTime"][0]
        assert check["status"] == "fail" and "audit" in check["output"]


def test_an_scp_bound_to_every_address_is_looked_for_on_loopback() -> None:
    """ADAPTER_DICOM_HOST=0.0.0.0 (the container's setting): 0.0.0.0 is no address to connect
    to; the SCP is reached on loopback (a loopback listener stands in for it here)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert check_dicom_listener("0.0.0.0", server.getsockname()[1]).status == "pass"
