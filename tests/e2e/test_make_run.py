"""End to end: the server `make run` starts, as its own process, driven over HTTP the way a
person with curl would: post a photo, read it for TREAT, find nothing for TRAIN until a Consent
permits it (TRAIN names it by its own id), and be refused again after the Consent is withdrawn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, record_emitted
from tests.support.app import PATIENT, consent_resource, metadata
from tests.support.orthanc import free_ports
from tests.support.server import running_adapter


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[str]:
    with running_adapter(tmp_path, command=["make", "--no-print-directory", "run"]) as running:
        yield running.url
    # the access log carries no patient data
    assert PATIENT["value"] not in running.log.read_text()


def _json(r: httpx.Response) -> dict:
    body = r.json()
    if "fhir+json" in r.headers.get("content-type", ""):
        record_emitted(body)
    return body


def test_the_demo_over_http(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as http:
        wound = ROOT / "samples" / "wound.jpg"
        meta = json.loads((ROOT / "samples" / "metadata-wound.json").read_text())
        r = http.post("/photos", files={"file": ("wound.jpg", wound.read_bytes(), "image/jpeg"),
                                        "metadata": (None, json.dumps(meta), "application/json")})
        assert r.status_code == 201, r.text
        receipt = r.json()
        assert receipt["safeToDeleteFromDevice"] is True
        media = r.headers["location"]
        assert _json(http.get(media, headers={"X-Purpose-Of-Use": "TREAT"}))["resourceType"] == "Media"
        img = http.get(f"/fhir/{receipt['binary']}", headers={"X-Purpose-Of-Use": "TREAT", "Accept": "image/*"})
        assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"
        # TRAIN names records by its view's own ids: care's id finds nothing there, and before a
        # Consent its search finds nothing either
        assert http.get(media, headers={"X-Purpose-Of-Use": "TRAIN"}).status_code == 404
        assert _json(http.get("/fhir/Media", headers={"X-Purpose-Of-Use": "TRAIN"}))["total"] == 0
        consent = json.loads((ROOT / "samples" / "consent-train.json").read_text())
        created = http.post("/fhir/Consent", json=consent, headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201, created.text
        stored = _json(created)
        [entry] = _json(http.get("/fhir/Media", headers={"X-Purpose-Of-Use": "TRAIN"}))["entry"]
        train = http.get(entry["fullUrl"], headers={"X-Purpose-Of-Use": "TRAIN"})
        assert train.status_code == 200 and meta["patient"]["value"] not in train.text
        stored["status"] = "inactive"
        assert http.put(f"/fhir/Consent/{stored['id']}", json=stored,
                        headers={"Content-Type": "application/fhir+json"}).status_code == 200
        assert http.get(entry["fullUrl"], headers={"X-Purpose-Of-Use": "TRAIN"}).status_code == 404
        assert http.get(media).status_code == 403
        cap = _json(http.get("/fhir/metadata"))
        assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"


def test_consent_lifecycle_over_http(server: str) -> None:
    with httpx.Client(base_url=server, timeout=30) as http:
        c = _json(http.post("/fhir/Consent", json=consent_resource(["HRESCH"]),
                            headers={"Content-Type": "application/fhir+json"}))
        read = http.get(f"/fhir/Consent/{c['id']}", headers={"X-Purpose-Of-Use": "TREAT"})
        assert read.status_code == 200 and _json(read)["meta"]["versionId"] == "1"
        c["status"] = "inactive"
        stale = http.put(f"/fhir/Consent/{c['id']}", json=c,
                         headers={"Content-Type": "application/fhir+json", "If-Match": 'W/"7"'})
        assert stale.status_code == 412
        ok = http.put(f"/fhir/Consent/{c['id']}", json=c,
                      headers={"Content-Type": "application/fhir+json", "If-Match": 'W/"1"'})
        assert ok.status_code == 200 and ok.headers["etag"] == 'W/"2"'
        found = _json(http.get("/fhir/Consent", params={
            "patient:identifier": f"{PATIENT['system']}|{PATIENT['value']}", "status": "inactive"},
            headers={"X-Purpose-Of-Use": "TREAT"}))
        assert found["total"] == 1
        assert metadata()  # the factory stays importable for the e2e tier


def test_an_invalid_policy_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text((ROOT / "mappings" / "policy.yaml").read_text().replace("confidentiality: R", "confidentiality: Q"))
    http_port, dicom_port = free_ports(2)
    env = {**os.environ, "ADAPTER_POLICY": str(bad), "ADAPTER_MAPPINGS_DIR": str(ROOT / "mappings"),
           "ADAPTER_DATA_DIR": str(tmp_path / "data"), "ADAPTER_HTTP_PORT": str(http_port),
           "ADAPTER_DICOM_PORT": str(dicom_port)}
    proc = subprocess.run([sys.executable, "-m", "adapter", "serve"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "labels.confidentiality" in proc.stderr
