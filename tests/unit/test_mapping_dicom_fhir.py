"""Received DICOM → ReceivedObject, Binary bytes and R4 resources: kind, patient, identifiers,
times, anatomy, the JPEG frame extracted byte for byte, lossless PNG renderings, PDFs, refusals.
Every resource built here is also validated with the npm R4 validators at the end of the session."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import warnings
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest
from fhir.resources.R4B import get_fhir_model_class
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

from adapter.errors import (
    InvalidInput,
    InvalidResource,
    NotSupported,
    RequiredElementMissing,
    UndecodableImage,
    UnknownCode,
)
from adapter.mapping.codes import DICOM_UID_SYSTEM
from adapter.mapping.dicom_fhir import (
    ExtractedImage,
    extract_image,
    jpeg_binary,
    read_received,
    received_to_fhir,
)
from adapter.mapping.dicom_photo import encode_dataset
from adapter.mapping.dicom_tables import ENCAPSULATED_PDF, MF_TRUE_COLOR_SC, PatientIdentifierTable
from adapter.model.photo import Identifier, Laterality, PhotoKind
from tests.conftest import record_emitted
from tests.support.dciodvfy import dicom_tables, photo_object, reread, stored_sample
from tests.support.dcmtk import wrap_jpeg_as_sc
from tests.support.fhir_factories import NOW, PATIENT_SYSTEM, PATIENT_VALUE, tables

pytestmark = pytest.mark.unit

PATIENT = Identifier(system=PATIENT_SYSTEM, value=PATIENT_VALUE)


def read(ds: Dataset, **kw: Any) -> Any:
    return read_received(ds, calling_ae=kw.pop("calling_ae", "MODALITY1"), dicom_tables=kw.pop("t", dicom_tables()),
                         tables=tables())


def to_fhir(ds: Dataset, **kw: Any) -> Any:
    received = read(ds)
    image = extract_image(ds)
    resources = received_to_fhir(received, image, record_id="9d7a5a8e-1f0b-4a43-9a43-1b9c8f0e2a11",
                                 binary_id="bin-r", provenance_id="prov-r",
                                 received_sha256=hashlib.sha256(encode_dataset(ds)).hexdigest(), tables=tables(),
                                 dicom_tables=dicom_tables(), now=NOW, **kw)
    for resource in resources.all():
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    record_emitted(resources.all())
    return received, image, resources


def base(sop_class: str, *, native: bool = True) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = "2.999.7.3"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, "2.999.7.3"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.999.7.1", "2.999.7.2"
    ds.PatientID, ds.IssuerOfPatientID = PATIENT_VALUE, "HOSP"
    ds.Modality = "OT"
    return ds


def native(ds: Dataset, *, rows: int, cols: int, samples: int, bits: int, photometric: str, data: bytes,
           frames: int = 1, planar: int = 0, stored: int | None = None) -> Dataset:
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, samples, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored or bits, (stored or bits) - 1, 0
    if samples == 3:
        ds.PlanarConfiguration = planar
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = data
    return reread(ds)


def png_array(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


# ---------------------------------------------------------------------------------------------
# our own objects come back as they went out


@pytest.mark.parametrize(("kind", "resource"), [(PhotoKind.CLINICAL, "Media"), (PhotoKind.SECONDARY, "Media"),
                                                (PhotoKind.DOCUMENT, "DocumentReference")])
def test_an_adapter_object_round_trips(kind: PhotoKind, resource: str) -> None:
    sample = stored_sample("document.jpg")
    ds = reread(photo_object(kind, sample))
    received, image, resources = to_fhir(ds)
    assert received.kind is kind and received.patient == PATIENT
    assert (received.sop_instance_uid, received.study_uid, received.series_uid) == (
        ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert received.created == datetime(2024, 3, 1, 10, 15, tzinfo=timezone(timedelta(hours=1)))
    assert image == ExtractedImage(sample.data, "image/jpeg")  # the stored JPEG, byte for byte
    record = resources.record
    assert record["resourceType"] == resource
    assert record["subject"]["identifier"] == {"system": PATIENT_SYSTEM, "value": PATIENT_VALUE}
    dicom_ids = {i["type"]["text"]: i["value"] for i in record["identifier"] if i["system"] == DICOM_UID_SYSTEM}
    assert dicom_ids == {"SOP Instance UID": f"urn:oid:{ds.SOPInstanceUID}",
                         "Study Instance UID": f"urn:oid:{ds.StudyInstanceUID}",
                         "Series Instance UID": f"urn:oid:{ds.SeriesInstanceUID}"}
    assert resources.binary["contentType"] == "image/jpeg"
    if resource == "Media":
        assert record["modality"]["coding"][0]["code"] == ("XC" if kind is PhotoKind.CLINICAL else "OT")
        assert record["createdDateTime"] == "2024-03-01T10:15:00+01:00"
        assert (record["width"], record["height"]) == (sample.width, sample.height)
    if kind is PhotoKind.CLINICAL:
        assert received.body_site == "14975008" and received.laterality is Laterality.RIGHT
        assert record["bodySite"]["coding"][0]["code"] == "14975008"
        assert record["bodySite"]["text"] == "Forearm, right"


def test_a_rotated_object_gives_a_lossless_png_of_its_pixels() -> None:
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("lesion.png")))
    _, image, resources = to_fhir(ds)
    assert image.content_type == "image/png"
    assert np.array_equal(png_array(image.data), ds.pixel_array)
    assert resources.record["content"]["contentType"] == "image/png"


def test_provenance_names_the_sending_ae_and_institution_and_the_sop_instance() -> None:
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg")))
    ds.OperatorsName = "Smith^Anna^^Dr"
    _, _, resources = to_fhir(ds)
    agents = resources.provenance["agent"]
    author, transmitter = agents[0], agents[1]
    assert author["who"] == {"display": "Dr Anna Smith"} and author["type"]["coding"][0]["code"] == "author"
    assert author["onBehalfOf"] == {"display": "Example Hospital"}
    assert transmitter["who"] == {"display": "AE MODALITY1"}
    assert transmitter["type"]["text"] == "Transmitter" and transmitter["type"]["coding"][0]["code"] == "110153"
    assert agents[-1]["type"]["coding"][0]["code"] == "enterer"
    sources = [e["what"]["identifier"] for e in resources.provenance["entity"]]
    assert {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{ds.SOPInstanceUID}"} in sources


# ---------------------------------------------------------------------------------------------
# peers' objects


def test_a_peer_sc_without_issuer_is_refused_by_default_and_mapped_when_configured() -> None:
    ds = dcmread(io.BytesIO(wrap_jpeg_as_sc((stored_sample("tiny.jpg")).data)))
    with pytest.raises(UnknownCode):
        read(ds)
    lenient = dicom_tables().patient_identifiers.model_dump(by_alias=True)
    lenient["missingIssuer"] = "HOSP"
    t = dicom_tables()
    from dataclasses import replace

    received = read(ds, t=replace(t, patient_identifiers=PatientIdentifierTable.model_validate(lenient)))
    assert received.patient == Identifier(system=PATIENT_SYSTEM, value="PEER-1")
    assert received.kind is PhotoKind.CLINICAL  # ConversionType DI from Modality OT: nothing says it is an image's
    assert received.created == datetime(2024, 1, 1, 12, 0)  # no zone given: naive
    assert received.operators == ()


def test_a_naive_time_is_written_with_date_precision() -> None:
    ds = reread(photo_object(PhotoKind.SECONDARY, stored_sample("tiny.jpg")))
    del ds.TimezoneOffsetFromUTC
    del ds.AcquisitionDateTime
    received, _, resources = to_fhir(ds)
    assert received.created == datetime(2024, 3, 1, 10, 15)
    assert resources.record["createdDateTime"] == "2024-03-01"


@pytest.mark.parametrize(("changes", "created"), [
    ({"AcquisitionDateTime": "20240231101500"}, datetime(2024, 3, 1, 10, 15, tzinfo=timezone(timedelta(hours=1)))),
    ({"AcquisitionDateTime": "20241301101500", "ContentTime": "2561"},
     datetime(2024, 3, 1)),
    ({"AcquisitionDateTime": "2024030199", "ContentDate": "20240231"}, None),
    # an offset beyond -1200..+1400 (PS3.5 6.2 DT) names no zone; FHIR dateTime takes none such
    ({"AcquisitionDateTime": "20240301101500+2300"}, datetime(2024, 3, 1, 10, 15, tzinfo=timezone(timedelta(hours=1)))),
    ({"AcquisitionDateTime": "20240301101500", "TimezoneOffsetFromUTC": "+2300"}, datetime(2024, 3, 1, 10, 15)),
    ({"AcquisitionDateTime": "20240301101500", "TimezoneOffsetFromUTC": "-0075"}, datetime(2024, 3, 1, 10, 15)),
])
def test_a_time_that_names_no_real_moment_is_passed_over_for_the_next(changes: dict[str, str],
                                                                     created: datetime | None) -> None:
    """createdDateTime comes from the first of AcquisitionDateTime, ContentDate+ContentTime,
    AcquisitionDate+AcquisitionTime, ContentDate that names a real moment: one that names none
    (20240231, a TM 2561, an offset +2300 that FHIR's dateTime cannot carry) is passed over as an
    absent one is, and a TimezoneOffsetFromUTC that names no zone gives none. Before, the first
    such date or time left the record without a time at all, whatever the others said, and such an
    offset went into createdDateTime."""
    ds = reread(photo_object(PhotoKind.SECONDARY, stored_sample("tiny.jpg")))
    with warnings.catch_warnings():  # pydicom warns of the invalid values set here
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in changes.items():
            setattr(ds, keyword, value)
        received = read(ds)
    assert received.created == created


def test_a_text_with_a_control_character_is_left_out_of_the_record() -> None:
    """Found from the last session's note: an OperatorsName, InstitutionName, Manufacturer or
    CodeMeaning holding a control character (no PN, LO or SH value has one, PS3.5 6.1.2.3) went
    into the Provenance's and Media's display texts as sent, where FHIR strings are not to have
    them. The record goes without such a value, as without an absent one (the object keeps it)."""
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg")))
    ds.OperatorsName = ["Doe\x01^John", "Roe^Richard"]
    ds.InstitutionName, ds.Manufacturer, ds.ManufacturerModelName = "Hosp\x02ital", "Ac\x03me", "X1"
    received, _, resources = to_fhir(ds)
    assert (received.operators, received.institution, received.device_name) == (("Richard Roe",), None, "X1")
    assert "\\u000" not in json.dumps(resources.all()) and "\\u001" not in json.dumps(resources.all())  # C0, escaped


def test_sc_document_conversion_gives_a_document_reference() -> None:
    ds = reread(photo_object(PhotoKind.SECONDARY, stored_sample("tiny.jpg")))
    ds.ConversionType = "SD"
    received, _, resources = to_fhir(ds)
    assert received.kind is PhotoKind.DOCUMENT
    assert resources.record["resourceType"] == "DocumentReference"


@pytest.mark.parametrize("kind", list(PhotoKind))
def test_the_adapters_own_objects_come_back_as_the_kind_they_were_written(kind: PhotoKind) -> None:
    """An object the adapter made from a photo (VL Photographic XC; SC DOC/SD; SC OT/SI), sent back
    by a PACS, is filed as the same kind under the fail-closed receive rule."""
    ds = reread(photo_object(kind, stored_sample("tiny.jpg")))
    assert read(ds).kind is kind


@pytest.mark.parametrize(("keyword", "value"), [
    ("BodyPartExamined", "ELBOW"),
    ("AnatomicRegionSequence", [{"CodeValue": "T-D8300", "CodingSchemeDesignator": "SRT", "CodeMeaning": "Elbow"}]),
    ("PrimaryAnatomicStructureSequence",
     [{"CodeValue": "127949000", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Elbow"}]),
])
def test_a_scanned_document_naming_a_body_part_is_not_a_document(keyword: str, value: Any) -> None:
    """dicomsafety F1: an SD object naming the elbow became a document, its site dropped (a
    document has no body site: POST /photos refuses one). Naming a body part in any of the three
    attributes, in any coding scheme, makes it clinical."""
    ds = reread(photo_object(PhotoKind.DOCUMENT, stored_sample("tiny.jpg")))
    assert read(ds).kind is PhotoKind.DOCUMENT
    if isinstance(value, list):
        items = []
        for fields in value:
            item = Dataset()
            for name, text in fields.items():
                setattr(item, name, text)
            items.append(item)
        value = items
    setattr(ds, keyword, value)
    assert read(ds).kind is PhotoKind.CLINICAL


def test_an_sc_without_conversion_type_or_modality_is_refused_naming_them() -> None:
    """dicomsafety F4: both are Type 1 and decide the kind; the object is refused (0xA900 with
    Offending Element over DIMSE), as README says of a required attribute missing."""
    ds = reread(photo_object(PhotoKind.SECONDARY, stored_sample("tiny.jpg")))
    del ds.ConversionType
    with pytest.raises(RequiredElementMissing) as refused:
        read(ds)
    assert refused.value.expression == ["(0008,0064) ConversionType"]
    ds.ConversionType, ds.Modality = "SI", ""
    with pytest.raises(RequiredElementMissing) as refused:
        read(ds)
    assert refused.value.expression == ["(0008,0060) Modality"]


def test_encapsulated_pdf() -> None:
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    ds = base(ENCAPSULATED_PDF)
    ds.Modality = "DOC"
    ds.DocumentTitle = "Referral letter"
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + b"\x00"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds = reread(ds)
    received, image, resources = to_fhir(ds)
    assert received.kind is PhotoKind.DOCUMENT
    assert image == ExtractedImage(pdf, "application/pdf")
    record = resources.record
    assert record["resourceType"] == "DocumentReference"
    assert record["content"][0]["attachment"]["contentType"] == "application/pdf"
    assert record["content"][0]["attachment"]["title"] == "Referral letter"
    assert resources.binary["contentType"] == "application/pdf"
    ds.MIMETypeOfEncapsulatedDocument = "text/plain"
    with pytest.raises(UndecodableImage):
        extract_image(ds)


def test_multi_frame_true_colour_sc_gives_frame_one() -> None:
    rows, cols = 4, 5
    f1 = bytes(range(rows * cols * 3))
    f2 = bytes(255 - b for b in f1)
    ds = base(MF_TRUE_COLOR_SC)
    ds.ConversionType = "WSD"
    ds = native(ds, rows=rows, cols=cols, samples=3, bits=8, photometric="RGB", data=f1 + f2, frames=2)
    received, image, resources = to_fhir(ds)
    assert received.number_of_frames == 2 and received.kind is PhotoKind.CLINICAL  # OT, WSD: fails closed
    assert png_array(image.data).tobytes() == f1
    assert any("Frame 1 of 2" in n["text"] for n in resources.record["note"])


def test_pixel_data_holding_fewer_frames_than_stated_is_refused() -> None:
    """PS3.5 8.1.1 and A.4: native pixel data is NumberOfFrames frames long, and encapsulated
    pixel data holds NumberOfFrames frames; an object that states more is not read as it says."""
    rows, cols = 4, 5
    one = bytes(range(rows * cols * 3))
    ds = base(MF_TRUE_COLOR_SC)
    ds.ConversionType = "WSD"
    ds = native(ds, rows=rows, cols=cols, samples=3, bits=8, photometric="RGB", data=one + one, frames=3)
    with pytest.raises(UndecodableImage, match="fewer frames than the 3"):
        extract_image(ds)


def test_planar_rgb_is_interleaved() -> None:
    rows, cols = 3, 4
    pixels = np.arange(rows * cols * 3, dtype=np.uint8).reshape(rows, cols, 3)
    planes = b"".join(pixels[:, :, i].tobytes() for i in range(3))
    ds = native(base("1.2.840.10008.5.1.4.1.1.7"), rows=rows, cols=cols, samples=3, bits=8, photometric="RGB",
                data=planes, planar=1)
    assert np.array_equal(png_array(extract_image(ds).data), pixels)


def test_monochrome1_and_16_bit_are_rendered_losslessly() -> None:
    rows, cols = 2, 3
    values = np.array([[0, 100, 4095], [1, 2048, 3000]], dtype="<u2")
    ds = native(base("1.2.840.10008.5.1.4.1.1.7"), rows=rows, cols=cols, samples=1, bits=16,
                photometric="MONOCHROME1", data=values.tobytes(), stored=12)
    rendered = png_array(extract_image(ds).data)
    assert np.array_equal(rendered, ((4095 - values) << 4).astype(rendered.dtype))
    grey8 = np.array([[0, 7, 255], [128, 3, 9]], dtype=np.uint8)
    ds8 = native(base("1.2.840.10008.5.1.4.1.1.7"), rows=rows, cols=cols, samples=1, bits=8,
                 photometric="MONOCHROME2", data=grey8.tobytes())
    assert np.array_equal(png_array(extract_image(ds8).data), grey8)


def test_body_site_outside_the_table_is_kept_as_coded() -> None:
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg")))
    ds.AnatomicRegionSequence[0].CodeValue = "127949000"
    ds.AnatomicRegionSequence[0].CodeMeaning = "Elbow region structure"
    del ds.AnatomicRegionSequence[0].AnatomicRegionModifierSequence
    ds.ImageLaterality = "L"
    _, _, resources = to_fhir(ds)
    site = resources.record["bodySite"]
    assert site["coding"] == [{"system": "http://snomed.info/sct", "code": "127949000",
                               "display": "Elbow region structure"}]
    assert site["extension"][0]["valueCoding"]["code"] == "7771000"


# ---------------------------------------------------------------------------------------------
# refusals


def test_refusals() -> None:
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg")))
    other = copy.deepcopy(ds)
    other.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT
    with pytest.raises(NotSupported):
        read(other)
    no_patient = copy.deepcopy(ds)
    del no_patient.PatientID
    with pytest.raises(RequiredElementMissing):
        read(no_patient)
    for keyword, values in (("PatientID", "MRN-0001\\MRN-0002"), ("IssuerOfPatientID", "HOSP\\OTHER")):
        several = copy.deepcopy(ds)
        setattr(several, keyword, values)  # LO of VM 1 (PS3.6): whose of the two the object is, is not known
        several = reread(several)
        assert several[keyword].VM == 2
        with pytest.raises(InvalidResource, match=f"{keyword} has 2 values") as refused:
            read(several)
        assert "MRN" not in refused.value.diagnostics and "OTHER" not in refused.value.diagnostics
    bad_uid = copy.deepcopy(ds)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        bad_uid.SeriesInstanceUID = "1.02.3"  # a peer's bad UID (pydicom warns, reading does not)
    with pytest.raises(InvalidInput):
        read(bad_uid)
    no_uid = copy.deepcopy(ds)
    del no_uid.StudyInstanceUID
    with pytest.raises(RequiredElementMissing):
        read(no_uid)


def test_unsupported_pixel_data_is_refused() -> None:
    rle = base("1.2.840.10008.5.1.4.1.1.7")
    rle.file_meta.TransferSyntaxUID = RLELossless
    rle.PixelData = b"\x00\x00"
    with pytest.raises(NotSupported):
        extract_image(rle)
    signed = base("1.2.840.10008.5.1.4.1.1.7")
    signed.Rows = signed.Columns = signed.SamplesPerPixel = 1
    signed.PhotometricInterpretation, signed.BitsAllocated, signed.PixelRepresentation = "MONOCHROME2", 16, 1
    signed.PixelData = b"\x00\x00"
    with pytest.raises(NotSupported):
        extract_image(signed)
    palette = base("1.2.840.10008.5.1.4.1.1.7")
    palette.Rows = palette.Columns = palette.SamplesPerPixel = 1
    palette.PhotometricInterpretation, palette.BitsAllocated, palette.PixelRepresentation = "PALETTE COLOR", 8, 0
    palette.PixelData = b"\x00\x00"
    with pytest.raises(NotSupported):
        extract_image(palette)
    with pytest.raises(UndecodableImage):
        extract_image(base("1.2.840.10008.5.1.4.1.1.7"))


def test_a_given_image_digest_is_the_one_computed_otherwise() -> None:
    ds = reread(photo_object(PhotoKind.SECONDARY, stored_sample("document.jpg")))
    _, image, computed = to_fhir(ds)
    _, _, given = to_fhir(ds, image_sha256=hashlib.sha256(image.data).hexdigest())
    assert given.all() == computed.all()


def test_jpeg_binary_is_extract_image_in_pieces() -> None:
    ds = reread(photo_object(PhotoKind.SECONDARY, stored_sample("document.jpg")))
    image = extract_image(ds)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    plan = jpeg_binary(bytes(frame))
    assert plan.join() == image.data and plan.size == len(image.data)
    assert plan.prefix  # the adapter's own objects carry a stream that needs no cut
