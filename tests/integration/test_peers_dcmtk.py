"""Smoke test of the dcmtk helpers (tests/support/dcmtk.py) against Orthanc, both directions.

echoscu and storescu (-xy, JPEG Baseline) into Orthanc's C-STORE SCP; Orthanc C-STOREs back to a
storescp (+xa) on loopback; the JPEG arrives byte for byte. Skipped without the peers installed,
failed in CI (CI=true).
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit

from tests.conftest import require_or_skip
from tests.support.dcmtk import StoreSCP, dcmtk_missing, echoscu, storescu, wrap_jpeg_as_sc
from tests.support.orthanc import OrthancPeer, orthanc_missing

pytestmark = pytest.mark.integration


def require_peers() -> None:
    missing = orthanc_missing() or dcmtk_missing()
    require_or_skip(missing is None, missing or "")


def sc_file(path: Path, shade: int) -> bytes:
    img = Image.new("RGB", (40, 30), (shade, 255 - shade, 128))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    data = wrap_jpeg_as_sc(buf.getvalue(), patient_id=f"DCMTK-{shade}")
    path.write_bytes(data)
    return data


def frame(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def test_storescu_to_orthanc_and_orthanc_to_storescp(tmp_path: Path) -> None:
    require_peers()
    files = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    sent = [sc_file(files[0], 10), sc_file(files[1], 200)]
    with (
        StoreSCP(tmp_path / "recv", aet="ADAPTER") as scp,
        OrthancPeer(tmp_path / "orthanc", modalities={"recv": ("ADAPTER", "127.0.0.1", scp.port)}) as orthanc,
    ):
        echoscu(orthanc.dicom_port, orthanc.aet)
        echoscu(scp.port, scp.aet)

        done = storescu(orthanc.dicom_port, orthanc.aet, files)
        assert done.returncode == 0, done.stderr
        ids = orthanc.instances()
        assert len(ids) == 2
        got = sorted(frame(orthanc.instance_file(i)) for i in ids)
        assert got == sorted(frame(d) for d in sent)  # stored as JPEG Baseline, not transcoded

        job = orthanc.store_to("recv", ids)
        assert job.get("FailedInstancesCount", 0) == 0, job
        received = scp.files()
        assert len(received) == 2
        assert sorted(frame(p.read_bytes()) for p in received) == got

        scp.clear()
        assert storescu(scp.port, scp.aet, files[:1]).returncode == 0
        assert [frame(p.read_bytes()) for p in scp.files()] == [frame(sent[0])]
