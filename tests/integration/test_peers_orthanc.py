"""Smoke test of the Orthanc peer harness (tests/support/orthanc.py).

Starts Debian's Orthanc on free loopback ports, uploads a small JPEG-Baseline Secondary Capture
over REST and reads it back unchanged. Without Orthanc installed the test is skipped, except in CI
(CI=true), where a missing peer fails the run: tools/install-peers.sh must have installed it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit

from tests.conftest import require_or_skip
from tests.support.dcmtk import wrap_jpeg_as_sc
from tests.support.orthanc import OrthancPeer, assert_loopback_only, orthanc_missing

pytestmark = pytest.mark.integration


def require_orthanc() -> None:
    missing = orthanc_missing()
    require_or_skip(missing is None, missing or "")


def small_jpeg(width: int = 64, height: int = 48) -> bytes:
    img = Image.new("RGB", (width, height))
    img.putdata(
        [((x * 4) % 256, (y * 5) % 256, ((x + y) * 3) % 256) for y in range(height) for x in range(width)]
    )
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, subsampling=1, comment=b"dropped when wrapped")  # 4:2:2 baseline
    return buf.getvalue()


def test_orthanc_rest_roundtrip(tmp_path: Path) -> None:
    require_orthanc()
    jpeg = small_jpeg()
    dicom = wrap_jpeg_as_sc(jpeg)
    with OrthancPeer(tmp_path / "orthanc") as orthanc:
        assert orthanc.url.startswith("http://127.0.0.1:")
        assert orthanc.pid is not None
        assert len(assert_loopback_only(orthanc.pid, "Orthanc")) >= 2
        assert orthanc.instances() == []

        answer = orthanc.upload(dicom)
        assert answer["Status"] == "Success"
        assert orthanc.instances() == [answer["ID"]]

        back = pydicom.dcmread(io.BytesIO(orthanc.instance_file(answer["ID"])))
        assert back.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
        assert back.PhotometricInterpretation == "YBR_FULL_422"
        assert (back.Rows, back.Columns) == (48, 64)
        frames = list(generate_frames(back.PixelData, number_of_frames=1))
        sent = pydicom.dcmread(io.BytesIO(dicom))
        sent_frame = next(generate_frames(sent.PixelData, number_of_frames=1))
        assert frames == [sent_frame]  # Orthanc kept the JPEG byte for byte
        assert b"dropped when wrapped" in jpeg and b"dropped when wrapped" not in frames[0]
        assert frames[0].rstrip(b"\0").endswith(b"\xff\xd9")
        assert (back.pixel_array == sent.pixel_array).all()
        with Image.open(
            io.BytesIO(jpeg)
        ) as im:  # and decodes to the photo (pydicom's YBR->RGB may round off by 1)
            diff = back.pixel_array.astype(np.int16) - np.asarray(im.convert("RGB"), dtype=np.int16)
            assert back.pixel_array.shape == (48, 64, 3) and np.abs(diff).max() <= 1

        # the DICOMweb plugin is loaded and sees the same study
        studies = orthanc.get_json("/dicom-web/studies")
        assert [s["0020000D"]["Value"][0] for s in studies] == [sent.StudyInstanceUID]

        orthanc.reset()
        assert orthanc.instances() == []
    assert orthanc.proc is None
