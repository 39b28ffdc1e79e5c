"""A released object as WADO-RS metadata, frames and bulk data (adapter.mapping.dicom_json)."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from adapter.errors import InvalidInput, NotFound
from adapter.mapping.dicom_json import INLINE_LIMIT, bulk_value, frames, metadata, parse_frame_list

pytestmark = pytest.mark.unit

URL = "http://h/dicomweb/studies/1/series/2/instances/3"


def dataset(syntax: str = ExplicitVRLittleEndian, **attrs: object) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = syntax
    ds.PatientName = "Doe^Jane"
    ds.SOPInstanceUID = "1.2.3"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def test_bulk_data_goes_by_uri_and_the_rest_inline() -> None:
    icon = Dataset()
    icon.PixelData = b"\x01" * (INLINE_LIMIT + 10)  # inside a sequence: inline
    ds = dataset(NumberOfFrames=3, PixelData=b"\x00" * 12, EncapsulatedDocument=b"%PDF" + b"x" * 2000,
                 ICCProfile=b"\x02" * 16, IconImageSequence=Sequence([icon]), BitsAllocated=8,
                 PixelRepresentation=0, SmallestImagePixelValue=0)
    assert ds["PixelData"].VR == "OB or OW" and ds["SmallestImagePixelValue"].VR == "US or SS"
    body = metadata(ds, URL)
    assert body["7FE00010"] == {"vr": "OB", "BulkDataURI": f"{URL}/frames/1,2,3"}  # small, still by its frames
    assert body["00420011"] == {"vr": "OB", "BulkDataURI": f"{URL}/bulk/00420011"}
    assert body["00282000"]["InlineBinary"]  # 16 bytes: inline
    assert "InlineBinary" in body["00880200"]["Value"][0]["7FE00010"]
    assert body["00100010"]["Value"] == [{"Alphabetic": "Doe^Jane"}]
    assert list(body) == sorted(body)
    assert body["00280106"]["vr"] == "US"  # one VR, as the dataset decides (PixelRepresentation 0)
    assert " or " not in str(body)
    wide = dataset(BitsAllocated=16, PixelRepresentation=1, IconImageSequence=Sequence([Dataset()]),
                   SmallestImagePixelValue=-5, PixelData=b"\x00" * 4)
    wide.IconImageSequence[0].PixelData = b"\x00" * 2  # an item without BitsAllocated: the first VR
    wide_body = metadata(wide, URL)
    assert wide_body["7FE00010"]["vr"] == "OW" and wide_body["00280106"]["vr"] == "SS"
    assert wide_body["00880200"]["Value"][0]["7FE00010"]["vr"] == "OB"


def test_an_encapsulated_document_goes_by_uri_however_small() -> None:
    """Found by the de-identification review (finding 1): WADO-RS metadata gave a PDF under the
    inline limit as InlineBinary, the whole document in the metadata (test seen failing). A
    document is bulk data, as Pixel Data is (PS3.18 10.4.3.3.2), whatever its size."""
    body = metadata(dataset(EncapsulatedDocument=b"%PDF-1.4\n%%EOF\n"), URL)
    assert body["00420011"] == {"vr": "OB", "BulkDataURI": f"{URL}/bulk/00420011"}


def test_frames_as_stored() -> None:
    native = dataset(NumberOfFrames=2, PixelData=b"ab" + b"cd")
    assert frames(native, [2, 1]) == [b"cd", b"ab"]
    jpegs = [b"\xff\xd8one\xff\xd9", b"\xff\xd8two\xff\xd9"]
    encapsulated = dataset(JPEGBaseline8Bit, NumberOfFrames=2, PixelData=encapsulate(jpegs))
    assert [f.rstrip(b"\0") for f in frames(encapsulated, [1, 2])] == jpegs
    with pytest.raises(NotFound):
        frames(native, [3])
    with pytest.raises(NotFound):
        frames(dataset(), [1])


def test_a_frame_the_pixel_data_does_not_hold_is_not_found() -> None:
    """NumberOfFrames 3 over pixel data of 2 frames (an object stored before the ingest counted
    them): frame 3 is NotFound (404), not an IndexError (500); with no offset table and fewer
    fragments than frames (pydicom's ValueError), one frame a fragment."""
    jpegs = [b"\xff\xd8one\xff\xd9", b"\xff\xd8two\xff\xd9"]
    for has_bot in (True, False):
        claimed = dataset(JPEGBaseline8Bit, NumberOfFrames=3, PixelData=encapsulate(jpegs, has_bot=has_bot))
        assert [f.rstrip(b"\0") for f in frames(claimed, [2, 1])] == jpegs[::-1]
        with pytest.raises(NotFound, match="holds 2 frame"):
            frames(claimed, [1, 3])


@pytest.mark.parametrize("text", ["", "0", "1,", "-1", "a", "1.5", "9" * 10, ",".join(["1"] * 10_001),
                                  # a frame twice: PS3.18 frame lists hold no duplicates, and each
                                  # number is a copy of the frame's pixels (5,000 of one took 24 GB)
                                  "1,1", "2,1,2", ",".join(["1"] * 60)])
def test_a_frame_list_is_positive_integers(text: str) -> None:
    with pytest.raises(InvalidInput):
        parse_frame_list(text)


def test_frame_lists_and_bulk_values() -> None:
    assert parse_frame_list("3, 1,2") == [3, 1, 2]
    ds = dataset(EncapsulatedDocument=b"%PDF-1.4", PixelData=b"\x00" * 4)
    assert bulk_value(ds, "00420011") == b"%PDF-1.4"
    for tag in ("7FE00010", "00100010", "00281050", "zz", "0042001"):
        with pytest.raises(NotFound):
            bulk_value(ds, tag)
