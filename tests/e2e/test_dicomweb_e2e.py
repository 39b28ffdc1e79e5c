"""End to end, interop: Orthanc's DICOMweb client against ``python -m adapter serve`` running as
its own process. Orthanc STOWs a study to the adapter, queries it (QIDO-RS) and retrieves it back
(WADO-RS) for TREAT; for TRAIN it sees nothing until the patient's Consent permits it, then
retrieves the de-identified copy under the mapped UIDs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.mapping.dicom_photo import encode_dataset
from adapter.model.photo import PhotoKind
from tests.conftest import record_emitted, require_or_skip
from tests.support.app import PATIENT, consent_resource
from tests.support.dciodvfy import photo_object, stored_sample
from tests.support.orthanc import OrthancPeer, orthanc_missing
from tests.support.server import running_adapter

TREAT = {"X-Purpose-Of-Use": "TREAT"}


@pytest.fixture()
def adapter_url(tmp_path: Path) -> Iterator[str]:
    # Orthanc, on loopback, is the organisation's PACS: a trusted STOW-RS sender
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false", ADAPTER_STOW_TRUSTED_SENDERS="127.0.0.1") as server:
        yield server.url


class _Orthanc(OrthancPeer):
    """Orthanc with the adapter as a DICOMweb server, once per purpose of use."""

    def __init__(self, workdir: Path, adapter_url: str) -> None:
        super().__init__(workdir)
        self.adapter_url = adapter_url

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["DicomWeb"]["Servers"] = {
            purpose.lower(): {"Url": f"{self.adapter_url}/dicomweb/", "HttpHeaders": {"X-Purpose-Of-Use": purpose}}
            for purpose in ("TREAT", "TRAIN")}
        return config


@pytest.fixture()
def orthanc(tmp_path: Path, adapter_url: str) -> Iterator[_Orthanc]:
    missing = orthanc_missing()
    require_or_skip(missing is None, missing or "")
    workdir = tmp_path / "orthanc"
    workdir.mkdir()
    with _Orthanc(workdir, adapter_url) as peer:
        yield peer


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def test_orthanc_stows_queries_and_retrieves(orthanc: _Orthanc, adapter_url: str) -> None:
    objects = [photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg"), record_id=f"interop-{n}")
               for n in range(2)]
    study = objects[0].StudyInstanceUID
    assert objects[1].StudyInstanceUID == study
    uploaded = [orthanc.upload(encode_dataset(ds)) for ds in objects]
    orthanc_study = uploaded[0]["ParentStudy"]

    # STOW-RS from Orthanc to the adapter
    stowed = orthanc.client.post("/dicom-web/servers/treat/stow", json={"Resources": [orthanc_study]})
    assert stowed.status_code == 200, stowed.text
    with httpx.Client(base_url=adapter_url, timeout=30) as http:
        for ds in objects:
            found = http.get("/fhir/Media", params={"identifier": f"urn:dicom:uid|urn:oid:{ds.SOPInstanceUID}"},
                             headers=TREAT)
            record_emitted(found.json())
            assert found.json()["total"] == 1

        # QIDO-RS by Orthanc
        answer = orthanc.client.post("/dicom-web/servers/treat/get", json={"Uri": "/studies"})
        assert answer.status_code == 200, answer.text
        [found_study] = answer.json()
        assert _value(found_study, "0020000D") == study and _value(found_study, "00201208") == 2
        assert orthanc.client.post("/dicom-web/servers/train/get", json={"Uri": "/studies"}).json() == []

        # WADO-RS by Orthanc: delete its copy, retrieve the study from the adapter
        orthanc.reset()
        assert orthanc.instances() == []
        retrieved = orthanc.client.post("/dicom-web/servers/treat/retrieve",
                                        json={"Resources": [{"Study": study}]})
        assert retrieved.status_code == 200, retrieved.text
        tags = [orthanc.instance_tags(i) for i in orthanc.instances()]
        assert sorted(t["SOPInstanceUID"] for t in tags) == sorted(ds.SOPInstanceUID for ds in objects)
        assert {t["PatientID"] for t in tags} == {PATIENT["value"]}

        # TRAIN: nothing until the Consent, then the de-identified study under mapped UIDs
        consent = http.post("/fhir/Consent", json=consent_resource(["TRAIN"]),
                            headers={"Content-Type": "application/fhir+json"})
        assert consent.status_code == 201
        record_emitted(consent.json())
        [train_study] = orthanc.client.post("/dicom-web/servers/train/get", json={"Uri": "/studies"}).json()
        mapped = _value(train_study, "0020000D")
        assert mapped != study
        orthanc.reset()
        retrieved = orthanc.client.post("/dicom-web/servers/train/retrieve",
                                        json={"Resources": [{"Study": mapped}]})
        assert retrieved.status_code == 200, retrieved.text
        tags = [orthanc.instance_tags(i) for i in orthanc.instances()]
        assert len(tags) == 2
        assert {t["StudyInstanceUID"] for t in tags} == {mapped}
        assert {t.get("PatientIdentityRemoved") for t in tags} == {"NO"}  # the pixels were not cleaned
        assert {t.get("PatientID", "") for t in tags} == {""}
