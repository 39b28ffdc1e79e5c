"""End to end, IHE MHD: ``python -m adapter serve`` as its own process, driven over HTTP as a Document
Source and a Document Consumer drive it. Provide Document Bundle [ITI-65] with the SubmissionSet and
the Patient of a push, Find Document References [ITI-67] by the patient's identifier and status,
Retrieve Document [ITI-68] by the attachment url exactly as the DocumentReference gives it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, record_emitted
from tests.support.app import PATIENT
from tests.support.mhd import provide_document_bundle
from tests.support.server import running_adapter

DOCUMENT = (ROOT / "samples" / "document.jpg").read_bytes()
TREAT = {"X-Purpose-Of-Use": "TREAT"}


@pytest.fixture()
def adapter_url(tmp_path: Path) -> Iterator[str]:
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false") as server:
        yield server.url


def test_provide_find_and_retrieve_as_mhd_actors_do(adapter_url: str) -> None:
    bundle = provide_document_bundle(DOCUMENT)
    patient_url = "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000a"
    for entry in bundle["entry"]:
        if "subject" in entry["resource"]:
            entry["resource"]["subject"] = {"reference": patient_url}
    bundle["entry"].append({"fullUrl": patient_url, "request": {"method": "POST", "url": "Patient"},
                            "resource": {"resourceType": "Patient", "identifier": [dict(PATIENT)]}})
    with httpx.Client(base_url=adapter_url, timeout=30) as http:
        provided = http.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json",
                                                            "Accept": "application/fhir+json"})
        assert provided.status_code == 200, provided.text
        record_emitted(provided.json(), "4")
        statuses = [e["response"]["status"] for e in provided.json()["entry"]]
        assert statuses[1:3] == ["201 Created", "201 Created"]

        found = http.get("/fhir/DocumentReference", headers={**TREAT, "Accept": "application/fhir+json"},
                         params={"patient.identifier": f"{PATIENT['system']}|{PATIENT['value']}",
                                 "status": "current"})
        assert found.status_code == 200, found.text
        record_emitted(found.json(), "4")
        assert found.json()["type"] == "searchset"
        [document_reference] = [e["resource"] for e in found.json()["entry"]]
        assert document_reference["masterIdentifier"]["value"] == "urn:oid:1.2.3.4.99.2"
        attachment = document_reference["content"][0]["attachment"]
        assert attachment["url"].startswith(f"{adapter_url}/fhir/Binary/")

        # the consumer follows the url as given, not relative to anything it knows
        with httpx.Client(timeout=30) as consumer:
            document = consumer.get(attachment["url"], headers={**TREAT, "Accept": attachment["contentType"]})
        assert document.status_code == 200
        assert document.headers["content-type"] == attachment["contentType"]
        assert len(document.content) == attachment["size"] and document.content[:2] == b"\xff\xd8"
