"""End to end: ``python -m adapter serve`` as its own process runs the HTTP API and the DICOM SCP.
dcmtk's storescu pushes a Secondary Capture and an Encapsulated PDF; both are read back over HTTP
as FHIR for TREAT (and refused for TRAIN). An unknown AE is rejected, a truncated object is refused,
and the SCP keeps serving."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.conftest import ROOT, record_emitted, require_or_skip
from tests.support.app import PATIENT
from tests.support.dcmtk import dcmtk_missing, echoscu, storescu
from tests.support.dicom_files import PDF_BYTES, frame_of, jpeg, pdf_file, pynet_store, sc_file
from tests.support.orthanc import assert_loopback_only, free_ports

TREAT = {"X-Purpose-Of-Use": "TREAT"}


@dataclass
class Server:
    url: str
    dicom_port: int
    pid: int
    log: Path


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[Server]:
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    http_port, dicom_port = free_ports(2)
    env = {**os.environ, "ADAPTER_HTTP_PORT": str(http_port), "ADAPTER_DICOM_PORT": str(dicom_port),
           "ADAPTER_DATA_DIR": str(tmp_path / "data"), "ADAPTER_DICOM_ALLOWED_AE_TITLES": "STORESCU, ECHOSCU",
           "ADAPTER_AE_TITLE": "ADAPTER", "ADAPTER_LOG_LEVEL": "INFO"}
    log_path = tmp_path / "server.log"
    log = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"the adapter exited: {log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200 \
                        and echoscu(dicom_port, "ADAPTER", calling_aet="ECHOSCU", check=False).returncode == 0:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"the adapter did not answer within 60 s: {log_path.read_text()[-2000:]}")
            time.sleep(0.2)
        yield Server(url=url, dicom_port=dicom_port, pid=proc.pid, log=log_path)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    logged = log_path.read_text()
    assert PATIENT["value"] not in logged  # logs carry no patient data
    assert "DICOM SCP stopped" in logged


def _find(http: httpx.Client, resource_type: str, uid: str, purpose: str = "TREAT") -> list[dict]:
    r = http.get(f"/fhir/{resource_type}", params={"identifier": f"urn:dicom:uid|urn:oid:{uid}"},
                 headers={"X-Purpose-Of-Use": purpose})
    assert r.status_code == 200, r.text
    body = r.json()
    record_emitted(body)
    return [e["resource"] for e in body.get("entry", [])]


def test_storescu_to_the_running_adapter(server: Server, tmp_path: Path) -> None:
    assert {int(a.rsplit(":", 1)[1]) for a in assert_loopback_only(server.pid, "the adapter")} >= {server.dicom_port}
    assert f"on 127.0.0.1:{server.dicom_port}" in server.log.read_text()  # the SCP logged its address
    sc, pdf = tmp_path / "sc.dcm", tmp_path / "letter.dcm"
    sent_sc: Dataset = sc_file(sc, frame=jpeg(640, 480))
    sent_pdf: Dataset = pdf_file(pdf)
    assert storescu(server.dicom_port, "ADAPTER", [sc]).returncode == 0
    assert storescu(server.dicom_port, "ADAPTER", [pdf], jpeg=False).returncode == 0

    with httpx.Client(base_url=server.url, timeout=30) as http:
        [media] = _find(http, "Media", sent_sc.SOPInstanceUID)
        assert media["subject"]["identifier"] == PATIENT
        image = http.get(f"/fhir/{media['content']['url']}", headers={**TREAT, "Accept": "image/*"})
        assert image.status_code == 200 and image.content == frame_of(sc)
        assert _find(http, "Media", sent_sc.SOPInstanceUID, "TRAIN") == []
        assert http.get(f"/fhir/Media/{media['id']}", headers={"X-Purpose-Of-Use": "TRAIN"}).status_code == 403

        [doc] = _find(http, "DocumentReference", sent_pdf.SOPInstanceUID)
        attachment = doc["content"][0]["attachment"]
        assert attachment["contentType"] == "application/pdf"
        body = http.get(f"/fhir/{attachment['url']}", headers={**TREAT, "Accept": "application/pdf"})
        assert body.content == PDF_BYTES

        # the same object again: nothing new
        assert storescu(server.dicom_port, "ADAPTER", [sc]).returncode == 0
        assert len(_find(http, "Media", sent_sc.SOPInstanceUID)) == 1


def test_misbehaving_peers_do_not_stop_the_scp(server: Server, tmp_path: Path) -> None:
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
