"""End to end: ``python -m adapter serve`` as its own process runs the HTTP API and the DICOM SCP.
dcmtk's storescu pushes a Secondary Capture and an Encapsulated PDF; both are read back over HTTP
as FHIR for TREAT (and refused for TRAIN). An unknown AE is rejected, a truncated object is refused,
and the SCP keeps serving."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.conftest import ROOT, record_emitted, require_or_skip
from tests.support.app import PATIENT
from tests.support.audit import (
    INSTANCES_TRANSFERRED,
    dicom_events,
    exported_trail,
    patients,
    sop_instance_uids,
    study_uids,
)
from tests.support.dcmtk import dcmtk_missing, echoscu, storescu
from tests.support.dicom_files import PDF_BYTES, frame_of, jpeg, pdf_file, pynet_store, sc_file
from tests.support.orthanc import assert_loopback_only
from tests.support.server import RunningAdapter, running_adapter

TREAT = {"X-Purpose-Of-Use": "TREAT"}


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[RunningAdapter]:
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    with running_adapter(
            tmp_path, ready=lambda s: echoscu(s.dicom_port, "ADAPTER", calling_aet="ECHOSCU",
                                              check=False).returncode == 0,
            ADAPTER_DICOM_ALLOWED_AE_TITLES="STORESCU, ECHOSCU", ADAPTER_AE_TITLE="ADAPTER") as server:
        yield server
    logged = server.log.read_text()
    assert PATIENT["value"] not in logged  # logs carry no patient data
    assert "DICOM SCP stopped" in logged


def _find(http: httpx.Client, resource_type: str, uid: str, purpose: str = "TREAT") -> list[dict]:
    r = http.get(f"/fhir/{resource_type}", params={"identifier": f"urn:dicom:uid|urn:oid:{uid}"},
                 headers={"X-Purpose-Of-Use": purpose})
    assert r.status_code == 200, r.text
    body = r.json()
    record_emitted(body)
    return [e["resource"] for e in body.get("entry", [])]


def test_storescu_to_the_running_adapter(server: RunningAdapter, tmp_path: Path) -> None:
    assert {int(a.rsplit(":", 1)[1]) for a in assert_loopback_only(server.pid, "the adapter")} >= {server.dicom_port}
    assert f"on 127.0.0.1:{server.dicom_port}" in server.log.read_text()  # the SCP logged its address
    sc, pdf = tmp_path / "sc.dcm", tmp_path / "letter.dcm"
    sent_sc: Dataset = sc_file(sc, frame=jpeg(640, 480))
    sent_pdf: Dataset = pdf_file(pdf)
    assert storescu(server.dicom_port, "ADAPTER", [sc]).returncode == 0
    assert storescu(server.dicom_port, "ADAPTER", [pdf], jpeg=False).returncode == 0

    with httpx.Client(base_url=server.url, timeout=30) as http:
        # readiness sees the store, the data folder and the SCP of this process
        ready = http.get("/health/ready")
        assert ready.status_code == 200, ready.text
        assert ready.headers["content-type"].startswith("application/health+json")
        assert ready.json()["status"] == "pass"
        assert {name: c[0]["status"] for name, c in ready.json()["checks"].items()} == {
            "database:responseTime": "pass", "database:freeSpace": "pass", "storage:freeSpace": "pass",
            "dicom:listener": "pass"}

        [media] = _find(http, "Media", sent_sc.SOPInstanceUID)
        assert media["subject"]["identifier"] == PATIENT
        image = http.get(media['content']['url'], headers={**TREAT, "Accept": "image/*"})
        assert image.status_code == 200 and image.content == frame_of(sc)
        # TRAIN shows no record identifiers, so it cannot search by one (that would link the copy back)
        refused = http.get("/fhir/Media", params={"identifier": f"urn:dicom:uid|urn:oid:{sent_sc.SOPInstanceUID}"},
                           headers={"X-Purpose-Of-Use": "TRAIN"})
        assert refused.status_code == 400 and refused.json()["issue"][0]["code"] == "not-supported"
        # TRAIN names records by its view's own ids: care's finds nothing there, and it is not permitted
        assert http.get(f"/fhir/Media/{media['id']}", headers={"X-Purpose-Of-Use": "TRAIN"}).status_code == 404
        assert http.get("/fhir/Media", headers={"X-Purpose-Of-Use": "TRAIN"}).json()["total"] == 0

        [doc] = _find(http, "DocumentReference", sent_pdf.SOPInstanceUID)
        attachment = doc["content"][0]["attachment"]
        assert attachment["contentType"] == "application/pdf"
        body = http.get(attachment['url'], headers={**TREAT, "Accept": "application/pdf"})
        assert body.content == PDF_BYTES

        # the same object again: nothing new
        assert storescu(server.dicom_port, "ADAPTER", [sc]).returncode == 0
        assert len(_find(http, "Media", sent_sc.SOPInstanceUID)) == 1


def test_misbehaving_peers_do_not_stop_the_scp(server: RunningAdapter, tmp_path: Path) -> None:
    # an AE title nobody allowed: rejected at association
    refused = echoscu(server.dicom_port, "ADAPTER", calling_aet="INTRUDER", check=False)
    assert refused.returncode != 0
    # a truncated object: refused with a failure status, nothing stored
    whole = tmp_path / "whole.dcm"
    sent = sc_file(whole, frame=jpeg(320, 240))
    data = whole.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-400])
    answer = pynet_store(server.dicom_port, cut, ae_title="STORESCU", chunked=True)  # the bytes as they are
    assert answer.Status == 0xC000, answer  # cannot understand
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert _find(http, "Media", sent.SOPInstanceUID) == []
        # and it keeps serving
        assert echoscu(server.dicom_port, "ADAPTER", calling_aet="ECHOSCU").returncode == 0
        assert storescu(server.dicom_port, "ADAPTER", [whole]).returncode == 0
        assert len(_find(http, "Media", sent.SOPInstanceUID)) == 1
    assert pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID == sent.SOPInstanceUID
    # the rejected association is in the operator's export: a DICOM Security Alert naming the caller
    [alert] = dicom_events(_export(tmp_path), "110113")
    assert (alert["action"], alert["outcome"]) == ("E", "4")
    assert alert["agent"][0]["altId"] == "INTRUDER" and "calling-AE-title-not-recognized" in alert["outcomeDesc"]


def _export(tmp_path: Path) -> list[dict]:
    """The audit trail as ``python -m adapter audit`` exports it (it goes to the FHIR validation)."""
    return exported_trail(tmp_path / "data", {"ADAPTER_MAPPINGS_DIR": str(ROOT / "mappings")})


def test_refusals_over_dimse_and_stow_rs_are_in_the_exported_audit_trail(server: RunningAdapter,
                                                                          tmp_path: Path) -> None:
    """The running adapter refuses an object storescu sends without its Study Instance UID
    (0xA900) and a STOW-RS part that is not DICOM (0xC000 in the failed SOP sequence); the
    operator's export of the audit trail holds one DICOM Instances Transferred message for each,
    with the failure outcome, the sender, the SOP instance and no patient."""
    path = tmp_path / "no-study.dcm"
    sent = sc_file(path, StudyInstanceUID=None)
    done = storescu(server.dicom_port, "ADAPTER", [path], check=False, extra=["-v"])
    assert "Error: DataSetDoesNotMatchSOPClass" in done.stderr + done.stdout, done.stderr
    boundary = "b0undary-e2e"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + b"not DICOM at all\r\n"
            + f"--{boundary}--\r\n".encode())
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/dicomweb/studies", content=body,
                      headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        assert r.status_code == 409, r.text
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
        assert _find(http, "Media", sent.SOPInstanceUID) == []

    events = _export(tmp_path)
    dimse, stow = [e for e in dicom_events(events, INSTANCES_TRANSFERRED) if e["outcome"] != "0"]
    for refusal in (dimse, stow):
        assert refusal["outcome"] == "4" and refusal["action"] == "C" and refusal["outcomeDesc"]
        assert refusal["agent"][0]["type"]["coding"][0]["code"] == "110153"  # the sender is the Source
        assert refusal["agent"][0]["network"]["address"] == "127.0.0.1"
        assert patients(refusal) == [] and study_uids(refusal) == []
    assert dimse["agent"][0]["altId"] == "STORESCU" and sop_instance_uids(dimse) == [sent.SOPInstanceUID]
    assert "StudyInstanceUID" in dimse["outcomeDesc"]
    assert "altId" not in stow["agent"][0] and sop_instance_uids(stow) == []  # not DICOM: no instance to name
    assert stow["outcomeDesc"] == "the part is not a DICOM Part 10 object"
