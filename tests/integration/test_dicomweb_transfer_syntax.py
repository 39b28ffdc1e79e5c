"""WADO-RS and WADO-URI in Explicit VR Little Endian (PS3.18 8.7.3.4, 9.4.2.4): a JPEG-stored
object asked for in it (or with no transfer syntax named: the default) is served decompressed
(adapter.mapping.dicom_decompress), in the purpose's view; ``transfer-syntax=*`` or the JPEG UID
gets it as stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from adapter.model.photo import PhotoKind
from adapter.services.registry import Services
from tests.conftest import require_or_skip
from tests.integration.test_dicomweb import (
    TRAIN,
    TREAT,
    Checked,
    add_consent,
    parts_of,
    qido,
    read,
    received,
    stow,
    value,
)
from tests.support.app import FhirClient, pacs_client
from tests.support.dciodvfy import dciodvfy_failures, dciodvfy_missing

pytestmark = pytest.mark.integration


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with pacs_client(tmp_path) as pair:
        yield pair


@pytest.fixture
def checked(tmp_path: Path) -> Iterator[Checked]:
    """Every object a test answered: dciodvfy finds no error in any (as tests.integration.test_dicomweb)."""
    seen = Checked()
    yield seen
    missing = dciodvfy_missing()
    require_or_skip(missing is None, missing or "")
    assert dciodvfy_failures(seen.objects, tmp_path) == []

EXPLICIT = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _accept(syntax: str | None) -> dict[str, str]:
    ts = f"; transfer-syntax={syntax}" if syntax else ""
    return {"Accept": f'multipart/related; type="application/dicom"{ts}'}


def _assert_decompressed(ds: Dataset, label: str) -> None:
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT, label
    assert not ds["PixelData"].is_undefined_length, label  # no encapsulation
    assert ds.PhotometricInterpretation == "RGB" and ds.PlanarConfiguration == 0, label  # YBR_FULL_422 JPEG
    assert ds.SamplesPerPixel == 3 and ds.BitsAllocated == 8, label
    assert len(ds.PixelData) >= ds.Rows * ds.Columns * 3, label
    # once lossy, always flagged (PS3.3 C.7.6.1.1.5): the pixels came from a JPEG
    assert ds.LossyImageCompression == "01", label
    assert "ISO_10918_1" in list(ds.get("LossyImageCompressionMethod", [])) or \
        ds.get("LossyImageCompressionMethod") == "ISO_10918_1", label
    assert ds.get("LossyImageCompressionRatio"), label


@pytest.mark.parametrize("purpose", ["TREAT", "TRAIN"])
def test_wado_rs_serves_a_jpeg_object_in_explicit_vr_little_endian_when_asked_or_by_default(
        adapter: tuple[FhirClient, Services], checked: Checked, purpose: str) -> None:
    client, _ = adapter
    photo = received()  # JPEG Baseline, YBR_FULL_422
    assert stow(client, photo).status_code == 200
    headers = TREAT
    if purpose == "TRAIN":
        add_consent(client, ["TRAIN"])
        headers = TRAIN
    [item] = qido(client, "instances", headers)
    study, series, sop = value(item, "0020000D"), value(item, "0020000E"), value(item, "00080018")
    instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    for url in (instance, f"/dicomweb/studies/{study}", f"/dicomweb/studies/{study}/series/{series}"):
        for syntax in (EXPLICIT, None):  # named, or the default (PS3.18 8.7.3.4)
            r = client.get(url, headers={**headers, **_accept(syntax)})
            assert r.status_code == 200, (url, syntax, r.text)
            assert f"transfer-syntax={EXPLICIT}" in r.text[:2000] or f"transfer-syntax={EXPLICIT}".encode() in \
                r.content[:2000], url
            [part] = parts_of(r)
            ds = checked(f"{purpose} {url} {syntax}", part)
            _assert_decompressed(ds, f"{url} {syntax}")
            assert ds.SOPInstanceUID == sop  # the same instance, in the purpose's UID space
        for syntax in ("*", JPEG_BASELINE):  # as stored
            [part] = parts_of(client.get(url, headers={**headers, **_accept(syntax)}))
            stored = read(part)
            assert stored.file_meta.TransferSyntaxUID == JPEG_BASELINE and stored["PixelData"].is_undefined_length
    if purpose == "TREAT":  # care: the object as received, but for the pixel encoding
        [part] = parts_of(client.get(instance, headers={**headers, **_accept(EXPLICIT)}))
        assert read(part).PatientName == photo.PatientName


def test_wado_uri_serves_explicit_vr_little_endian_by_default_and_when_asked(
        adapter: tuple[FhirClient, Services], checked: Checked) -> None:
    """PS3.18 9.4.2.4: without transferSyntax the payload is in Explicit VR Little Endian; naming
    it gets it too; the JPEG UID or ``*`` gets the object as stored."""
    client, _ = adapter
    photo = received(PhotoKind.CLINICAL)
    assert stow(client, photo).status_code == 200
    params = {"requestType": "WADO", "studyUID": photo.StudyInstanceUID, "seriesUID": photo.SeriesInstanceUID,
              "objectUID": photo.SOPInstanceUID, "contentType": "application/dicom"}
    for syntax in (None, EXPLICIT):
        r = client.get("/wado", params={**params, **({"transferSyntax": syntax} if syntax else {})}, headers=TREAT)
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom", r.text
        _assert_decompressed(checked(f"WADO-URI {syntax}", r.content), f"WADO-URI {syntax}")
    for syntax in (JPEG_BASELINE, "*"):
        r = client.get("/wado", params={**params, "transferSyntax": syntax}, headers=TREAT)
        assert r.status_code == 200, r.text
        assert pydicom.dcmread(pydicom.filebase.DicomBytesIO(r.content)).file_meta.TransferSyntaxUID == JPEG_BASELINE
