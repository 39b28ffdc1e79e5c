"""End to end: a photo posted over HTTP to `python -m adapter serve` (as its own process, with
ADAPTER_FORWARD_TO) arrives in Orthanc, whose REST API returns the same pixel data; the outbox
endpoint shows it sent."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import pydicom
from pydicom.encaps import generate_frames

from tests.conftest import ROOT, require_or_skip
from tests.support.app import metadata
from tests.support.orthanc import OrthancPeer, orthanc_missing
from tests.support.server import running_adapter


def test_photo_posted_over_http_arrives_in_orthanc(tmp_path: Path) -> None:
    missing = orthanc_missing()
    require_or_skip(missing is None, missing or "")
    with OrthancPeer(tmp_path / "orthanc") as orthanc:
        forward_to = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
        with running_adapter(tmp_path, ADAPTER_FORWARD_TO=forward_to) as server:
            url = server.url
            # document.jpg has no EXIF orientation: the JPEG is wrapped as stored
            photo = ROOT / "samples" / "document.jpg"
            meta = metadata(kind="document", consent=None)
            r = httpx.post(f"{url}/photos", timeout=30, files={
                "file": (photo.name, photo.read_bytes(), "image/jpeg"),
                "metadata": (None, json.dumps(meta), "application/json")})
            assert r.status_code == 201, r.text
            receipt = r.json()
            sop = receipt["dicom"]["sopInstanceUid"]
            assert receipt["dicom"]["forwardTo"] == [forward_to]
            deadline = time.monotonic() + 30
            found: list[str] = []
            while not found and time.monotonic() < deadline:
                found = orthanc.client.post("/tools/lookup", content=sop).json()
                time.sleep(0.2)
            assert found, "the photo did not arrive in Orthanc"
            dicom = orthanc.instance_file(found[0]["ID"])
            ds = pydicom.dcmread(io.BytesIO(dicom))
            assert ds.SOPInstanceUID == sop
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            stored = httpx.get(f"{url}/fhir/{receipt['binary']}", timeout=30,
                               headers={"X-Purpose-Of-Use": "TREAT", "Accept": "image/jpeg"}).content
            assert frame.rstrip(b"\x00") == stored  # the same JPEG, not re-encoded
            outbox = httpx.get(f"{url}/outbox", timeout=10, headers={"X-Purpose-Of-Use": "TREAT"}).json()
            assert [i["status"] for i in outbox if i["sopInstanceUid"] == sop] == ["sent"]
