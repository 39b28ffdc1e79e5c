"""adapter.mapping.dicom_decompress: a JPEG Baseline object → the same instance with native
pixels, exactly as Pillow decodes the frame, still flagged lossy; and what it refuses."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless

from adapter.errors import UndecodableImage, UnsupportedPixelData
from adapter.mapping.dicom_decompress import encapsulated_to_native
from adapter.model.photo import PhotoKind
from tests.support.dciodvfy import jpeg_of, photo_object, reread, stored_bytes, stored_sample


def frame_of(ds: Dataset) -> bytes:
    return bytes(next(generate_frames(ds.PixelData, number_of_frames=1)))


def pillow(jpeg: bytes) -> Any:
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.asarray(im)


def test_a_photo_object_becomes_the_same_instance_with_the_pixels_pillow_decodes() -> None:
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("wound.jpg"), orientation=1))
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    before = {elem.tag: elem.value for elem in ds if elem.keyword != "PixelData"}
    out = encapsulated_to_native(ds, ExplicitVRLittleEndian)
    assert out.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID == ds.SOPInstanceUID
    assert (out.PhotometricInterpretation, out.PlanarConfiguration, out.SamplesPerPixel) == ("RGB", 0, 3)
    assert (out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation) == (8, 8, 7, 0)
    assert (out.LossyImageCompression, out.LossyImageCompressionRatio, out.LossyImageCompressionMethod) == \
        ("01", ds.LossyImageCompressionRatio, "ISO_10918_1")
    # every other attribute as it was: UIDs, ImageType, no DerivationDescription
    pixel_module = {"PhotometricInterpretation"}
    assert {t: v for t, v in before.items() if out[t].keyword not in pixel_module} == \
        {elem.tag: elem.value for elem in out if elem.keyword not in pixel_module | {"PixelData"}}
    assert np.array_equal(reread(out).pixel_array, pillow(frame_of(ds)))
    # the stored object is untouched
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert frame_of(ds)[:2] == b"\xff\xd8"


def test_greyscale_stays_monochrome_without_planar_configuration_and_odd_sizes_are_padded() -> None:
    ds = reread(photo_object(PhotoKind.DOCUMENT, stored_bytes(jpeg_of("L", size=(7, 5)), "image/jpeg")))
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    out = encapsulated_to_native(ds, ImplicitVRLittleEndian)
    assert (out.PhotometricInterpretation, out.SamplesPerPixel) == ("MONOCHROME2", 1)
    assert "PlanarConfiguration" not in out
    assert len(out.PixelData) == 36 and out.PixelData[-1] == 0  # 35 samples, padded to even
    assert np.array_equal(reread(out).pixel_array, pillow(frame_of(ds)))
    assert reread(out).file_meta.TransferSyntaxUID == ImplicitVRLittleEndian


def encapsulated(frames: list[bytes], *, photometric: str = "YBR_FULL_422", samples: int = 3,
                 size: tuple[int, int] = (96, 64)) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.7", "1.2.3.4"
    ds.Rows, ds.Columns = size[1], size[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = samples, photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if len(frames) > 1:
        ds.NumberOfFrames = len(frames)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta = Dataset()
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    return ds


def test_frames_follow_one_another_and_an_unflagged_object_is_flagged_lossy() -> None:
    frames = [jpeg_of(quality=80), jpeg_of(quality=30)]
    ds = encapsulated(frames)
    out = encapsulated_to_native(ds, ExplicitVRLittleEndian)
    assert out.NumberOfFrames == 2 and len(out.PixelData) == 2 * 96 * 64 * 3
    assert out.PixelData == b"".join(pillow(f).tobytes() for f in frames)
    assert out.LossyImageCompression == "01" and out.LossyImageCompressionMethod == "ISO_10918_1"
    assert float(out.LossyImageCompressionRatio) == pytest.approx(2 * 96 * 64 * 3 / sum(map(len, frames)), rel=0.01)


@pytest.mark.parametrize(("change", "error"), [
    (lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"), UnsupportedPixelData),  # a YCbCr stream
    (lambda ds: setattr(ds, "PhotometricInterpretation", "MONOCHROME2"), UnsupportedPixelData),
    (lambda ds: setattr(ds, "Rows", 65), UnsupportedPixelData),
    (lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", RLELossless), UnsupportedPixelData),
    (lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", ExplicitVRLittleEndian), UnsupportedPixelData),
    (lambda ds: setattr(ds, "PixelData", encapsulate([b"\xff\xd8not a jpeg"])), UndecodableImage),
    (lambda ds: setattr(ds, "NumberOfFrames", 3), UndecodableImage),
], ids=["RGB-for-YCbCr", "grey-for-colour", "rows", "RLE", "native", "broken", "frames"])
def test_what_cannot_be_decompressed_faithfully_is_refused(change: Any, error: type[Exception]) -> None:
    ds = encapsulated([jpeg_of()])
    change(ds)
    with pytest.raises(error):
        encapsulated_to_native(ds, ExplicitVRLittleEndian)


def test_an_rgb_stream_stated_rgb_is_decoded_without_a_colour_transform() -> None:
    """An Adobe APP14 transform 0 stream holds RGB itself; the object says RGB: the samples are
    the decoder's, as for any other JPEG."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 8), (10, 200, 30)).save(buf, "JPEG", quality=95, keep_rgb=True)
    ds = encapsulated([buf.getvalue()], photometric="RGB", size=(16, 8))
    out = encapsulated_to_native(ds, ExplicitVRLittleEndian)
    assert out.PhotometricInterpretation == "RGB"
    assert np.array_equal(reread(out).pixel_array, pillow(buf.getvalue()))
    with pytest.raises(UnsupportedPixelData):  # the same stream said to be YCbCr
        encapsulated_to_native(encapsulated([buf.getvalue()], size=(16, 8)), ExplicitVRLittleEndian)
