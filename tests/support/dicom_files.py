"""DICOM test objects made with pydicom (small factories, one per kind of object the SCP takes)
and a pynetdicom C-STORE SCU that can also send a dataset's bytes as they are (malformed ones
included)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pydicom
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid
from pynetdicom import AE, _config

from tests.support.app import PATIENT
from tests.support.dcmtk import wrap_jpeg_as_sc
from tests.support.pdf import minimal_pdf

SC = "1.2.840.10008.5.1.4.1.1.7"
MF_SC = "1.2.840.10008.5.1.4.1.1.7.4"
VL_PHOTO = "1.2.840.10008.5.1.4.1.1.77.1.4"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"


def jpeg(width: int = 64, height: int = 48, shade: int = 30, *, noise: bool = False) -> bytes:
    """A baseline JPEG; ``noise`` makes it large (random pixels do not compress)."""
    buf = io.BytesIO()
    image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)) if noise \
        else Image.new("RGB", (width, height), (shade, 255 - shade, 128))
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _finish(ds: Dataset, path: Path, **attrs: Any) -> Dataset:
    for keyword, value in attrs.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return ds


def sc_file(path: Path, *, frame: bytes | None = None, **attrs: Any) -> Dataset:
    """A JPEG Baseline Secondary Capture for patient MRN-0001 (issuer HOSP); ``attrs`` override
    (None removes)."""
    ds = pydicom.dcmread(io.BytesIO(wrap_jpeg_as_sc(frame or jpeg(), patient_id=PATIENT["value"])))
    base: dict[str, Any] = {"IssuerOfPatientID": "HOSP", "InstitutionName": "Example Hospital Radiology"}
    return _finish(ds, path, **{**base, **attrs})


def vl_photo_file(path: Path, **attrs: Any) -> Dataset:
    return sc_file(path, SOPClassUID=VL_PHOTO, Modality="XC", ConversionType=None, **attrs)


def multiframe_file(path: Path, frames: int = 3, *, number_of_frames: int | None = None, has_bot: bool = True,
                    fragments_per_frame: int = 1) -> Dataset:
    """A multi-frame true colour SC of ``frames`` JPEG frames, each in ``fragments_per_frame``
    fragments, with a Basic Offset Table unless not ``has_bot``; its NumberOfFrames says
    ``number_of_frames`` (by default, truly ``frames``)."""
    ds = sc_file(path, SOPClassUID=MF_SC)
    ds.PixelData = encapsulate([jpeg(shade=20 * n) for n in range(frames)], has_bot=has_bot,
                               fragments_per_frame=fragments_per_frame)
    ds["PixelData"].VR = "OB"
    return _finish(ds, path, NumberOfFrames=number_of_frames or frames)


def native_sc_file(path: Path, pixels: bytes, rows: int, columns: int) -> Dataset:
    ds = sc_file(path)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = pixels
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "RGB"
    for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
        if keyword in ds:
            delattr(ds, keyword)
    return _finish(ds, path, Rows=rows, Columns=columns, SamplesPerPixel=3, BitsAllocated=8, BitsStored=8,
                   HighBit=7, PixelRepresentation=0, PlanarConfiguration=0)


#: A well-formed one-page PDF (the restricted views release a PDF only once its metadata is
#: removed, which needs one qpdf reads: adapter.imaging.pdf).
PDF_BYTES = minimal_pdf()


def pdf_file(path: Path) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = PDF_CLASS, generate_uid()
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "", PATIENT["value"], "HOSP"
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
        "20240101", "120000", "1", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType = "DOC", 1, 1, "SD"
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    ds.BurnedInAnnotation, ds.DocumentTitle = "YES", "Discharge letter"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = PDF_BYTES + (b"\0" if len(PDF_BYTES) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(PDF_BYTES)
    return _finish(ds, path)


def frame_of(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    frame = next(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))
    return frame[:-1] if frame.endswith(b"\xff\xd9\x00") else frame  # the even-length pad is not JPEG


def pynet_store_dataset(port: int, ds: Dataset, transfer_syntax: str, *, ae_title: str = "PYNETSCU") -> Dataset:
    """C-STORE ``ds`` as it is (its elements encoded by pynetdicom in ``transfer_syntax``, group
    0002 elements in it included: they are sent inside the data set) with a pynetdicom SCU."""
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(ds.SOPClassUID, transfer_syntax)
    fresh = Dataset()  # without the encoding it was read in
    for element in ds:
        fresh.add(element)
    fresh.file_meta = FileMetaDataset()
    fresh.file_meta.TransferSyntaxUID = transfer_syntax
    assoc = ae.associate("127.0.0.1", port, ae_title="ADAPTER")
    assert assoc.is_established
    try:
        return assoc.send_c_store(fresh)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def pynet_store(port: int, path: Path, *, ae_title: str = "PYNETSCU", chunked: bool = False,
                sop_class: str | None = None, transfer_syntax: str | None = None) -> Dataset:
    """C-STORE ``path`` with a pynetdicom SCU; ``chunked`` sends the file's dataset bytes as they
    are (no decoding, so a malformed dataset goes out malformed)."""
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    ae = AE(ae_title=ae_title)
    ae.add_requested_context(sop_class or meta.MediaStorageSOPClassUID,
                             transfer_syntax or meta.TransferSyntaxUID)
    previous, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, chunked
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="ADAPTER")
        assert assoc.is_established
        try:
            return assoc.send_c_store(path if chunked else pydicom.dcmread(path))
        finally:
            if assoc.is_established:
                assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        ae.shutdown()
