"""WADO-RS rendered resources over the real app on a real SQLite store: the rendering query
parameters of PS3.18 8.3.5.1 (viewport, quality, window, iccprofile, annotation), rendered
frames (PS3.18 10.4.1, 8.3.5), WADO-URI ``frameNumber`` (PS3.18 9.1.2.2), all under the one
decision the instance's retrieve takes."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import PIL.Image
import pytest
from pydicom.uid import generate_uid

from adapter.services.registry import Services
from tests.integration.test_dicomweb import (
    TRAIN,
    TREAT,
    _photo_pdf_and_native,
    add_consent,
    qido,
    received,
    stow,
    value,
)
from tests.support.app import FhirClient
from tests.support.dicom_files import multiframe_file, native_sc_file

pytestmark = pytest.mark.integration


@pytest.fixture
def adapter(tmp_path: Path) -> Any:
    from tests.support.app import pacs_client

    with pacs_client(tmp_path) as pair:
        yield pair


def url_of(obj: Any, suffix: str = "/rendered") -> str:
    return f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/" \
           f"{obj.SOPInstanceUID}{suffix}"


def picture(response: httpx.Response) -> PIL.Image.Image:
    assert response.status_code == 200, response.text[:300]
    image = PIL.Image.open(io.BytesIO(response.content))
    image.load()
    return image


def refused(response: httpx.Response, parameter: str, code: str = "invalid") -> None:
    assert response.status_code == 400, (parameter, response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/fhir+json")
    [issue] = response.json()["issue"]
    assert issue["code"] == code and issue["expression"] == [parameter], issue


def grey_file(path: Path, values: list[int], rows: int, columns: int) -> Any:
    """A native 12-bit MONOCHROME2 Secondary Capture holding ``values`` (row by row)."""
    ds = native_sc_file(path, bytes(rows * columns * 3), rows=rows, columns=columns)
    ds.PixelData = np.array(values, dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    del ds.PlanarConfiguration
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_rendered_viewport_scales_and_crops_the_picture_in_every_type(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """``viewport=vw,vh`` scales the picture to fit, its aspect kept (it was ignored: a viewer
    asking for a small preview got the full picture, as JPEG and PNG); ``vw,vh,sx,sy,sw,sh``
    shows that region, a negative sw mirrors it; each made anew with no metadata."""
    client, _ = adapter
    photo, _, native = _photo_pdf_and_native(client, tmp_path)
    full = picture(client.get(url_of(photo), headers=TREAT))
    half = (full.width // 2, full.height // 2)
    for accept, fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG"), ("image/gif", "GIF")):
        scaled = picture(client.get(url_of(photo), params={"viewport": f"{half[0]},{half[1]}"},
                                    headers={**TREAT, "Accept": accept}))
        assert scaled.format == fmt and scaled.size == half, accept
        assert not {"exif", "icc_profile", "comment"} & set(scaled.info)
    # fit: the aspect is kept, the smaller of the two scales taken (native: 64 x 24)
    assert picture(client.get(url_of(native), params={"viewport": "32,32"}, headers=TREAT)).size == (32, 12)
    assert picture(client.get(url_of(native), params={"viewport": "128,48"}, headers=TREAT)).size == (128, 48)
    # a region: columns 16..47 of rows 0..11, shown at its own size, then mirrored left-right
    stored = picture(client.get(url_of(native), headers={**TREAT, "Accept": "image/png"})).convert("RGB")
    region = picture(client.get(url_of(native), params={"viewport": "32,12,16,0,32,12"},
                                headers={**TREAT, "Accept": "image/png"})).convert("RGB")
    assert np.array_equal(np.asarray(region), np.asarray(stored)[0:12, 16:48])
    mirrored = picture(client.get(url_of(native), params={"viewport": "32,12,48,0,-32,12"},
                                  headers={**TREAT, "Accept": "image/png"})).convert("RGB")
    assert np.array_equal(np.asarray(mirrored), np.asarray(stored)[0:12, 16:48][:, ::-1])
    empty_sides = picture(client.get(url_of(native), params={"viewport": "64,24,,,,"},
                                     headers={**TREAT, "Accept": "image/png"})).convert("RGB")
    assert np.array_equal(np.asarray(empty_sides), np.asarray(stored))
    refused(client.get(url_of(native), params={"viewport": "10,10,70,0,5,5"}, headers=TREAT), "viewport")


def test_rendered_quality_sets_a_lossy_answers_quality_only(adapter: tuple[FhirClient, Services],
                                                            tmp_path: Path) -> None:
    """``quality`` (1-100) is the quality of a JPEG answer, made anew; a PNG is lossless and the
    same at any quality."""
    client, _ = adapter
    photo, _, native = _photo_pdf_and_native(client, tmp_path)
    low = client.get(url_of(photo), params={"quality": "5"}, headers=TREAT)
    high = client.get(url_of(photo), params={"quality": "100"}, headers=TREAT)
    plain = client.get(url_of(photo), headers=TREAT)
    assert picture(low).size == picture(high).size == picture(plain).size
    assert low.headers["content-type"] == "image/jpeg" and len(low.content) < len(high.content)
    assert low.content != plain.content and b"Exif" not in low.content
    png = {q: client.get(url_of(native), params={"quality": q}, headers={**TREAT, "Accept": "image/png"}).content
           for q in ("5", "100")}
    assert png["5"] == png["100"]


def test_rendered_window_maps_a_greyscale_images_values_and_leaves_colour_alone(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """``window=center,width,function`` (PS3.3 C.11.2.1.2/.3) in the units of the stored values:
    a 12-bit greyscale image (0..4095) windowed at 1000 +- 50 is black below 950 and white above
    1050, with the ramp between; linear-exact and sigmoid likewise; a colour picture has no
    window and is shown as it is."""
    client, _ = adapter
    values = [x * 64 + y for y in range(4) for x in range(64)]  # 0 .. 4035 along each row
    grey = grey_file(tmp_path / "grey.dcm", values, rows=4, columns=64)
    assert stow(client, (tmp_path / "grey.dcm").read_bytes()).status_code == 200
    stored = np.array(values, dtype=float).reshape(4, 64)
    for function in ("linear", "linear-exact", "sigmoid"):
        shown = np.asarray(picture(client.get(url_of(grey), params={"window": f"1000,100,{function}"},
                                              headers={**TREAT, "Accept": "image/png"})).convert("L")).astype(int)
        assert (shown[stored < 900] <= 30).all() and (shown[stored > 1100] >= 225).all(), function
        assert shown[stored < 900].min() == 0 if function != "sigmoid" else True
    exact = np.asarray(picture(client.get(url_of(grey), params={"window": "1000,100,linear-exact"},
                                          headers={**TREAT, "Accept": "image/png"})).convert("L")).astype(int)
    expected = np.rint(np.clip(((stored - 1000) / 100 + 0.5) * 255, 0, 255)).astype(int)
    assert np.array_equal(exact, expected)
    default = np.asarray(picture(client.get(url_of(grey), params={"window": "1000,100"},
                                            headers={**TREAT, "Accept": "image/png"})).convert("L"))
    linear = np.asarray(picture(client.get(url_of(grey), params={"window": "1000,100,LINEAR"},
                                           headers={**TREAT, "Accept": "image/png"})).convert("L"))
    assert np.array_equal(default, linear)
    # a colour photo: no window to apply; made anew (no metadata) at its own size
    photo = received(record_id="rec-w")
    assert stow(client, photo).status_code == 200
    windowed = picture(client.get(url_of(photo), params={"window": "10,20,linear"}, headers=TREAT))
    assert windowed.size == picture(client.get(url_of(photo), headers=TREAT)).size


def test_rendered_parameters_that_do_not_parse_or_are_not_supported_are_400_naming_them(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """Malformed values were answered 200 with the plain picture; now 400 with an
    OperationOutcome naming the parameter. ``annotation`` and an ``iccprofile`` asking for a
    profile are refused as not supported (nothing is burned in, no profile embedded);
    ``iccprofile=no`` and unknown parameters are answered."""
    client, services = adapter
    photo, pdf, _ = _photo_pdf_and_native(client, tmp_path)
    before = len(services.store.list_audit(1000))
    for name, bad in (("viewport", "abc"), ("viewport", "0,10"), ("viewport", "10"), ("viewport", "5000,10"),
                      ("viewport", "10,10,1,1,0,5"), ("viewport", "10,10,-1,0,5,5"), ("quality", "0"),
                      ("quality", "500"), ("quality", "x"), ("window", "bad"), ("window", "1,0,linear"),
                      ("window", "1,0.5"), ("window", "1,2,cubic"), ("window", "nan,2"), ("iccprofile", "maybe")):
        refused(client.get(url_of(photo), params={name: bad}, headers=TREAT), name)
    refused(client.get(url_of(photo) + "?quality=50&quality=60", headers=TREAT), "quality")
    for name, asked in (("annotation", "patient"), ("annotation", "technique"), ("iccprofile", "srgb"),
                        ("iccprofile", "yes")):
        refused(client.get(url_of(photo), params={name: asked}, headers=TREAT), name, "not-supported")
    assert len(services.store.list_audit(1000)) == before  # refused before anything is read
    plain = client.get(url_of(photo), headers=TREAT)
    assert client.get(url_of(photo), params={"foo": "bar"}, headers=TREAT).content == plain.content
    no_profile = client.get(url_of(photo), params={"iccprofile": "no"}, headers=TREAT)
    assert picture(no_profile).size == picture(plain).size and "icc_profile" not in picture(no_profile).info
    # a document has no picture to scale: the PDF as it renders
    doc = client.get(url_of(pdf), params={"viewport": "10,10"}, headers=TREAT)
    assert doc.status_code == 200 and doc.headers["content-type"] == "application/pdf"


def test_rendered_parameters_change_nothing_in_the_decision(adapter: tuple[FhirClient, Services],
                                                           tmp_path: Path) -> None:
    """The same decision before any rendering: refused (and audited) without a consent, one
    audited read when permitted; under TRAIN the scaled picture of the de-identified copy."""
    client, services = adapter
    photo = received(record_id="rec-a")
    assert stow(client, photo).status_code == 200
    assert client.get(url_of(photo), params={"viewport": "16,16"}, headers={}).status_code == 403
    assert client.get(url_of(photo), params={"viewport": "16,16"}, headers=TRAIN).status_code in (403, 404)
    before = len(services.store.list_audit(1000))
    assert picture(client.get(url_of(photo), params={"viewport": "16,16", "quality": "50"}, headers=TREAT))
    assert len(services.store.list_audit(1000)) == before + 1
    add_consent(client, ["TRAIN"])
    [item] = qido(client, "instances", TRAIN, Modality="XC")
    train = client.get(value(item, "00081190").split("testserver")[-1] + "/rendered",
                       params={"viewport": "16,16"}, headers=TRAIN)
    assert max(picture(train).size) == 16 and b"Exif" not in train.content


def test_rendered_frames_and_wado_uri_frame_number_render_any_frame(adapter: tuple[FhirClient, Services],
                                                                    tmp_path: Path) -> None:
    """Rendered Frames (``frames/{n}/rendered``, PS3.18 10.4.1) and WADO-URI ``frameNumber``
    (PS3.18 9.1.2.2) give frame n of a multi-frame image (404 and 400 before: only frame 1 could
    be had rendered); frame 1 is the instance's rendered picture; a frame not held is 404; a
    list of frames and study or series rendered resources are 400 not-supported, saying so."""
    client, _ = adapter
    path = tmp_path / "mf.dcm"
    mf = multiframe_file(path, frames=3)  # frame n: one colour, shade 20 * (n - 1)
    assert stow(client, path.read_bytes()).status_code == 200
    rendered = client.get(url_of(mf), headers=TREAT)
    assert client.get(url_of(mf, "/frames/1/rendered"), headers=TREAT).content == rendered.content
    reds = []
    for n in (1, 2, 3):
        r = client.get(url_of(mf, f"/frames/{n}/rendered"), headers=TREAT)
        assert r.headers["content-type"] == "image/jpeg"
        reds.append(int(np.asarray(picture(r).convert("RGB"))[..., 0].mean()))
        uri = client.get("/wado", params={"requestType": "WADO", "studyUID": mf.StudyInstanceUID,
                                          "seriesUID": mf.SeriesInstanceUID, "objectUID": mf.SOPInstanceUID,
                                          "frameNumber": str(n)}, headers=TREAT)
        assert uri.status_code == 200 and uri.content == r.content, n
    assert [abs(red - 20 * n) <= 3 for n, red in enumerate(reds)] == [True] * 3, reds
    as_png = client.get(url_of(mf, "/frames/2/rendered"), params={"viewport": "32,24"},
                        headers={**TREAT, "Accept": "image/png"})
    assert picture(as_png).size == (32, 24) and picture(as_png).format == "PNG"
    assert client.get(url_of(mf, "/frames/4/rendered"), headers=TREAT).status_code == 404
    refused(client.get(url_of(mf, "/frames/0/rendered"), headers=TREAT), "frames")
    refused(client.get(url_of(mf, "/frames/1,2/rendered"), headers=TREAT), "frames", "not-supported")
    base = {"requestType": "WADO", "studyUID": mf.StudyInstanceUID, "seriesUID": mf.SeriesInstanceUID,
            "objectUID": mf.SOPInstanceUID}
    assert client.get("/wado", params={**base, "frameNumber": "4"}, headers=TREAT).status_code == 404
    refused(client.get("/wado", params={**base, "frameNumber": "x"}, headers=TREAT), "frameNumber")
    refused(client.get("/wado", params={**base, "frameNumber": "2", "contentType": "application/dicom"},
                       headers=TREAT), "frameNumber")
    for path_ in (f"/dicomweb/studies/{mf.StudyInstanceUID}/rendered",
                  f"/dicomweb/studies/{mf.StudyInstanceUID}/series/{mf.SeriesInstanceUID}/rendered"):
        r = client.get(path_, headers=TREAT)
        assert r.status_code == 400 and "not supported" in r.json()["issue"][0]["diagnostics"], path_
    # under TRAIN: frame 2 of the de-identified copy, by its mapped UIDs
    add_consent(client, ["TRAIN"])
    [item] = qido(client, "instances", TRAIN)
    train = client.get(value(item, "00081190").split("testserver")[-1] + "/frames/2/rendered", headers=TRAIN)
    assert abs(int(np.asarray(picture(train).convert("RGB"))[..., 0].mean()) - 20) <= 3
    assert client.get(url_of(mf, "/frames/2/rendered"), headers=TRAIN).status_code == 404  # care's UIDs


def test_a_document_has_no_frames_to_render_not_even_frame_1(adapter: tuple[FhirClient, Services],
                                                             tmp_path: Path) -> None:
    """Re-verification R6: ``frames/1/rendered`` and WADO-URI ``frameNumber=1`` of an Encapsulated
    PDF gave the PDF, while frame 2 said the instance has no frames; now 404 for every frame of
    a document, which is rendered whole by its instance's rendered resource (and without
    frameNumber)."""
    client, _ = adapter
    _, pdf, _ = _photo_pdf_and_native(client, tmp_path)
    assert client.get(url_of(pdf), headers=TREAT).headers["content-type"] == "application/pdf"
    for n in (1, 2):
        framed = client.get(url_of(pdf, f"/frames/{n}/rendered"), headers=TREAT)
        assert framed.status_code == 404 and "no frames" in framed.json()["issue"][0]["diagnostics"], n
    base = {"requestType": "WADO", "studyUID": pdf.StudyInstanceUID, "seriesUID": pdf.SeriesInstanceUID,
            "objectUID": pdf.SOPInstanceUID}
    assert client.get("/wado", params=base, headers=TREAT).headers["content-type"] == "application/pdf"
    assert client.get("/wado", params={**base, "frameNumber": "1"}, headers=TREAT).status_code == 404


def test_a_wado_uri_parameter_given_twice_is_refused_naming_it(adapter: tuple[FhirClient, Services],
                                                               tmp_path: Path) -> None:
    """Re-verification R5: a repeated frameNumber took the last in silence."""
    client, _ = adapter
    path = tmp_path / "mf.dcm"
    mf = multiframe_file(path, frames=3)
    assert stow(client, path.read_bytes()).status_code == 200
    base = [("requestType", "WADO"), ("studyUID", mf.StudyInstanceUID), ("seriesUID", mf.SeriesInstanceUID),
            ("objectUID", mf.SOPInstanceUID)]
    for name, values in (("frameNumber", ("1", "2")), ("contentType", ("image/jpeg", "image/png"))):
        refused(client.get("/wado", params=[*base, *((name, v) for v in values)], headers=TREAT), name)
    assert client.get("/wado", params=[*base, ("frameNumber", "2")], headers=TREAT).status_code == 200

