"""De-identified (TRAIN) and pseudonymised (HRESCH) copies: nothing identifying left, UIDs mapped
consistently, burned-in annotation and documents released but never claimed clean, the input
untouched (PS3.15 Annex E)."""

from __future__ import annotations

import copy
import io
from collections.abc import Iterator

import pytest
from PIL import Image
from pydicom.datadict import DicomDictionary, dictionary_VR, keyword_dict, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

from adapter.errors import ConfigurationError, InvalidInput, UncleanableDocument
from adapter.imaging.pdf import pdf_without_metadata
from adapter.mapping.dicom_deid import (
    BASIC_PROFILE_DUMMY,
    BASIC_PROFILE_REMOVE,
    BASIC_PROFILE_ZERO,
    DATES_REMOVE,
    DATES_ZERO,
    DUMMY_VALUE,
    KEEP_UIDS,
    NOT_CLEANED_DOCUMENT,
    NOT_CLEANED_FEATURES,
    NOT_CLEANED_PIXELS,
    REPLACED_CODE_MEANINGS,
    deidentify,
    pseudonymise,
)
from adapter.mapping.dicom_photo import encode_dataset
from adapter.mapping.dicom_tables import SC_IMAGE
from adapter.mapping.dicom_uids import is_valid_uid
from adapter.mapping.dicom_vr import NonConformingVR, dictionary_vr, vr_tolerated
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.model.photo import PhotoKind
from samples import make_samples as ms
from tests.support.dciodvfy import SAMPLES, UID_KEY, photo_object, reread, stored_bytes, stored_sample
from tests.support.dcmtk import wrap_jpeg_as_sc
from tests.support.fhir_factories import PATIENT_SYSTEM, PATIENT_VALUE
from tests.support.pdf import minimal_pdf, page_contents

pytestmark = pytest.mark.unit

OUT_ROOT = "1.2.826.0.1.3680043.8.498"  # pydicom's prefix, open to its users
PSEUDONYMS = Pseudonymizer(b"p" * 32, "urn:clinical-image-adapter:pseudonym")
PSEUDONYM = PSEUDONYMS.pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
IDENTIFYING_TEXT = ("MRN-0001", "HOSP", "Example Hospital", "Doe^Jane", "Smith^Operator", "ACC-77", "STUDY-9",
                    "SN-12345", "Ward 7", "STATION-1", "private secret", "Other^Name", "OTHER-ID-1", "Comment text")


def clinical() -> Dataset:
    return reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg")))


def loaded() -> Dataset:
    """A clinical object carrying every kind of identifying attribute a PACS object may carry."""
    ds = clinical()
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700102"
    ds.PatientSex = "F"
    ds.OtherPatientIDs = "OTHER-ID-1"
    ds.OtherPatientNames = "Other^Name"
    ds.PatientAddress = "Ward 7, Example Street"
    ds.AccessionNumber = "ACC-77"
    ds.StudyID = "STUDY-9"
    ds.OperatorsName = "Smith^Operator"
    ds.PerformingPhysicianName = "Dr^Who"
    ds.DeviceSerialNumber = "SN-12345"
    ds.StationName = "STATION-1"
    ds.InstitutionalDepartmentName = "Ward 7"
    ds.ImageComments = "Comment text"
    ds.StudyDescription = "Wound of Doe^Jane"
    ds.SeriesDate, ds.SeriesTime = "20240301", "101500"
    ds.FrameOfReferenceUID = "2.999.5.5.5"
    ref = Dataset()
    ref.ReferencedSOPClassUID = SC_IMAGE
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    ds.ReferencedImageSequence = Sequence([ref])
    request = Dataset()
    request.RequestedProcedureID = "RP-1"
    request.ScheduledProcedureStepID = "SPS-1"
    ds.RequestAttributesSequence = Sequence([request])
    nested = Dataset()
    nested.PersonName = "Nested^Person"
    nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "121000", "DCM", "x"
    ds.AnatomicRegionSequence[0].AnatomicRegionModifierSequence.append(nested)
    ds.add_new(0x00091010, "LO", "private secret")
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x60000010, "US", 8)
    ds.add_new(0x60003000, "OW", b"\x00" * 16)
    ds.file_meta.SourceApplicationEntityTitle = "MODALITY1"
    return ds


def walk(ds: Dataset) -> Iterator[tuple[Dataset, object]]:
    for elem in ds:
        yield ds, elem
        if elem.VR == "SQ":
            for item in elem.value:
                yield from walk(item)


def assert_nothing_identifying(out: Dataset, *, dates: bool, allowed: frozenset[str] = frozenset()) -> None:
    data = encode_dataset(out)
    for text in IDENTIFYING_TEXT:
        assert text.encode() not in data, text
    for _, elem in walk(out):
        keyword = elem.keyword  # type: ignore[attr-defined]
        assert keyword not in BASIC_PROFILE_REMOVE - allowed, keyword
        assert not elem.tag.is_private, elem  # type: ignore[attr-defined]
        assert not 0x6000 <= elem.tag.group <= 0x60FF, elem  # type: ignore[attr-defined]
        if elem.VR == "PN" and keyword != "PatientName" and elem.value:  # type: ignore[attr-defined]
            raise AssertionError(f"name left: {elem}")
        if not dates and elem.VR in ("DA", "TM", "DT"):  # type: ignore[attr-defined]
            assert elem.value in ("", None), elem  # type: ignore[attr-defined]
    assert "SourceApplicationEntityTitle" not in out.file_meta
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


# ---------------------------------------------------------------------------------------------


def test_deidentified_copy_has_nothing_identifying() -> None:
    source = loaded()
    out = deidentify(source, uid_root=OUT_ROOT, key=UID_KEY)
    assert_nothing_identifying(out, dates=False)
    assert out.PatientIdentityRemoved == "NO"  # a photo of the person: not removed from its pixels
    assert (out.PatientName, out.PatientID, out.PatientBirthDate, out.PatientSex) == ("", "", "", "")
    assert "IssuerOfPatientID" not in out
    assert (out.StudyDate, out.StudyTime, out.ContentDate, out.AccessionNumber, out.StudyID) == ("",) * 5
    assert "ContentTime" not in out and "TimezoneOffsetFromUTC" not in out
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    # the nested item's meaning "x" is the sender's: replaced (privacy review F2)
    assert list(out.DeidentificationMethod) == ["Basic Application Confidentiality Profile", REPLACED_CODE_MEANINGS,
                                                NOT_CLEANED_FEATURES]
    (code,) = out.DeidentificationMethodCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    # kept: what the image is and what it shows
    assert out.SOPClassUID == source.SOPClassUID and out.Modality == "XC"
    assert out.AnatomicRegionSequence[0].CodeValue == "14975008" and out.ImageLaterality == "R"
    assert out.RecognizableVisualFeatures == "YES" and out.BurnedInAnnotation == "NO"
    assert out.AcquisitionContextSequence == []
    assert_same_pixels_other_bytes(out, source)


def test_uids_are_replaced_consistently_and_references_follow() -> None:
    source = loaded()
    out = deidentify(source, uid_root=OUT_ROOT, key=UID_KEY)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert out[keyword].value != source[keyword].value
        assert out[keyword].value.startswith(OUT_ROOT + ".") and is_valid_uid(out[keyword].value)
    assert out.ReferencedImageSequence[0].ReferencedSOPInstanceUID == out.SOPInstanceUID
    assert out.ReferencedImageSequence[0].ReferencedSOPClassUID == SC_IMAGE
    assert out.file_meta.TransferSyntaxUID == JPEGBaseline8Bit


@pytest.mark.parametrize(("keyword", "vr", "value", "nested"), [
    ("StudyInstanceUID", "LO", "1.2.3.4", False),
    ("PatientName", "LO", "Doe^Jane", False),
    ("StudyDate", "SH", "20240101", False),
    ("ReferencedSOPInstanceUID", "LO", "1.2.3.4.5", True),
])
def test_an_element_under_a_vr_its_tag_does_not_allow_stops_the_copy(keyword: str, vr: str, value: str,
                                                                      nested: bool) -> None:
    """The rules go by VR: a UID as LO would keep its value, a name or a date as LO too. Such a
    dataset is not copied at all (the ingest refuses them; this guards older stored objects)."""
    source = loaded()
    target = source.ReferencedImageSequence[0] if nested else source
    tag = Tag(keyword)
    target[tag] = DataElement(tag, vr, value)
    for release in (lambda: deidentify(source, uid_root=OUT_ROOT, key=UID_KEY),
                    lambda: pseudonymise(source, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system,
                                         uid_root=OUT_ROOT, key=UID_KEY)):
        with pytest.raises(NonConformingVR) as refused:
            release()
        assert refused.value.tag == tag and value not in str(refused.value)
    # private elements have no dictionary VR: allowed here, and removed by the copy
    fine = loaded()
    fine.add_new(0x00091010, "LO", "x")
    fine.add_new(0x00090010, "LO", "ACME")
    assert 0x00091010 not in deidentify(fine, uid_root=OUT_ROOT, key=UID_KEY)


@pytest.mark.parametrize(("keyword", "vr", "tolerated"), [
    ("Modality", "LO", True), ("StationName", "LO", True), ("PatientAge", "LO", True), ("SliceThickness", "IS", True),
    ("Rows", "SS", True), ("Rows", "UL", True), ("PixelData", "OW", True), ("ExposureTime", "IS", True),
    ("StudyInstanceUID", "LO", False), ("PatientName", "LO", False), ("StudyDate", "LO", False),
    ("ImageComments", "LO", False), ("InstanceNumber", "US", False), ("Rows", "IS", False),
    ("ReferencedImageSequence", "UN", False), ("PatientID", "UT", False), ("ExposureTime", "FL", False),
])
def test_which_vr_mismatches_are_tolerated(keyword: str, vr: str, tolerated: bool) -> None:
    """Only within one class of VRs no rule goes by: never a UI, PN, date, free text or SQ on
    either side, never a string for a binary number."""
    assert vr_tolerated(Tag(keyword), vr) is tolerated
    assert vr_tolerated(0x00091010, "UT") and dictionary_vr(0x00091010) is None  # private: no dictionary VR
    assert dictionary_vr(Tag("PixelData")) == "OB" and dictionary_vr(Tag("SmallestImagePixelValue")) == "US"


def test_mismatches_no_rule_tells_apart_are_cleaned_as_under_their_own_vr() -> None:
    """Modalities send a CS as LO, an SH as LO, a DS as IS, a US as SS: no rule goes by those VRs,
    so such elements are cleaned exactly as under their own (removed, emptied, kept), and a value
    the release writes (empty, a dummy, the pseudonym) goes under the dictionary's VR."""
    source = loaded()
    source["PatientID"].VR = "SH"                      # LO: emptied, then the pseudonym (HRESCH)
    source["StationName"].VR = "LO"                    # SH: removed
    source["DeviceSerialNumber"].VR = "SH"             # LO: removed
    source.add_new(Tag("DeviceLabel"), "SH", "LABEL-1")  # LO, dummy
    source.add_new(Tag("Modality"), "LO", "XC")       # CS: kept as sent
    source.add_new(Tag("SliceThickness"), "IS", "2")   # DS: kept as sent
    source.add_new(Tag("PatientAge"), "LO", "054Y")    # AS: removed
    source["Rows"].VR = "SS"                           # US: kept
    before = copy.deepcopy(source)
    train = deidentify(source, uid_root=OUT_ROOT, key=UID_KEY)
    hresch = pseudonymise(source, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                          key=UID_KEY)
    assert source == before
    for copy_ in (train, hresch):
        for keyword in ("StationName", "DeviceSerialNumber", "PatientAge"):
            assert keyword not in copy_
        assert copy_["DeviceLabel"].VR == "LO" and copy_.DeviceLabel == DUMMY_VALUE
        assert copy_["Modality"].VR == "LO" and copy_.Modality == "XC"  # a code, though sent as LO
        assert copy_["SliceThickness"].VR == "IS" and copy_["Rows"].VR == "SS" and copy_.Rows == source.Rows
        assert copy_["PatientID"].VR == "LO"
    assert train.PatientID == ""
    assert hresch.PatientID == PSEUDONYM
    assert reread(hresch).PatientID == PSEUDONYM  # written and read back under LO, whole
    text = str(train) + str(hresch)
    for value in IDENTIFYING_TEXT:
        assert value not in text


def test_public_elements_the_dictionary_does_not_know_are_removed() -> None:
    """A newer standard's attribute arrives as UN (its VR unknown here): nothing says what it
    holds (a name, an ID), so the copies leave it out, at any depth; group lengths go too."""
    source = loaded()
    source.add_new(0x00109999, "UN", b"Doe^Jane")
    source.ReferencedImageSequence[0].add_new(0x00204444, "UN", b"MRN-0001")
    source.add_new(0x00080000, "UL", 1234)
    for out in (deidentify(source, uid_root=OUT_ROOT, key=UID_KEY),
                pseudonymise(source, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                             key=UID_KEY)):
        assert 0x00109999 not in out and 0x00080000 not in out
        assert 0x00204444 not in out.ReferencedImageSequence[0]
        assert b"Doe^Jane" not in encode_dataset(out) and b"MRN-0001" not in encode_dataset(out)
    assert 0x00109999 in source  # the input is not changed


def test_two_objects_of_one_study_stay_one_study() -> None:
    a = reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg"), record_id="rec-a"))
    b = reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg"), record_id="rec-b"))
    assert a.StudyInstanceUID == b.StudyInstanceUID
    da, db = (deidentify(x, uid_root=OUT_ROOT, key=UID_KEY) for x in (a, b))
    assert da.StudyInstanceUID == db.StudyInstanceUID != a.StudyInstanceUID
    assert da.SeriesInstanceUID != db.SeriesInstanceUID and da.SOPInstanceUID != db.SOPInstanceUID
    # again: the same answer
    assert deidentify(a, uid_root=OUT_ROOT, key=UID_KEY).SOPInstanceUID == da.SOPInstanceUID
    # another key or the other release: unlinkable
    assert deidentify(a, uid_root=OUT_ROOT, key=b"another key").StudyInstanceUID != da.StudyInstanceUID
    pa = pseudonymise(a, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT, key=UID_KEY)
    assert pa.StudyInstanceUID != da.StudyInstanceUID


def test_the_input_is_not_changed() -> None:
    source = loaded()
    before = encode_dataset(source)
    meta_before = copy.deepcopy(source.file_meta)
    deidentify(source, uid_root=OUT_ROOT, key=UID_KEY)
    pseudonymise(source, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT, key=UID_KEY)
    assert encode_dataset(source) == before
    assert source.file_meta == meta_before


def test_pseudonymised_copy_carries_the_pseudonym_and_keeps_dates() -> None:
    source = loaded()
    out = pseudonymise(source, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                       key=UID_KEY)
    assert_nothing_identifying(out, dates=True, allowed=frozenset({"IssuerOfPatientID"}))
    assert (out.PatientID, out.IssuerOfPatientID, str(out.PatientName)) == (
        PSEUDONYM, "urn:clinical-image-adapter:pseudonym", f"{PSEUDONYM}^")
    assert out.PatientID == PSEUDONYMS.identifier(PATIENT_SYSTEM, PATIENT_VALUE)["value"]  # as the FHIR view
    assert out.PatientBirthDate == ""
    assert (out.StudyDate, out.ContentDate, out.ContentTime) == (source.StudyDate, source.ContentDate,
                                                                  source.ContentTime)
    assert out.TimezoneOffsetFromUTC == source.TimezoneOffsetFromUTC
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert out.PatientIdentityRemoved == "NO"
    assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == ["113100", "113106"]


def test_the_secondary_images_warning_stays_in_both_copies_and_nothing_else_of_the_kind() -> None:
    """ImageComments and SeriesDescription are free text (Table E.1-1: X). The adapter's own
    fixed texts (the secondary image's warning) hold no patient data and are kept word for
    word; any other value of them, or the warning without the caller naming it, is removed."""
    from adapter.mapping.dicom_photo import fixed_texts
    from tests.support.dciodvfy import dicom_tables
    from tests.support.fhir_factories import tables

    texts = fixed_texts(tables(), dicom_tables())
    warning = tables().kinds[PhotoKind.SECONDARY].warning
    assert warning in texts and len(texts) == 3  # and the external colleague's (EXTERNAL_COLLEAGUE_COMMENT)
    secondary = reread(photo_object(PhotoKind.SECONDARY, stored_sample("document.jpg")))
    copies = (lambda ds, **kw: deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY, **kw),
              lambda ds, **kw: pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system,
                                            uid_root=OUT_ROOT, key=UID_KEY, **kw))
    for make in copies:
        out = make(secondary, fixed_texts=texts)
        assert out.ImageComments == warning
        assert out.SeriesDescription == secondary.SeriesDescription
        bare = make(secondary)
        assert "ImageComments" not in bare and "SeriesDescription" not in bare
        other = copy.deepcopy(secondary)
        other.ImageComments = warning + " Jane Doe"
        other.SeriesDescription = "Chest of Doe^Jane"
        out = make(other, fixed_texts=texts)
        assert "ImageComments" not in out and "SeriesDescription" not in out


def test_the_records_quality_warnings_stay_in_both_copies_only_beside_fixed_texts() -> None:
    """The adapter's ImageComments of a photo is the kind's warning and then the record's quality
    warnings, one line each (adapter.mapping.dicom_photo.image_comments): the adapter's own texts,
    no patient data, kept by both copies when the caller names them (the FHIR restricted views
    keep the quality-warning extension likewise). A value with any other line, or the same lines
    the caller did not name, is removed whole."""
    from adapter.mapping.dicom_photo import fixed_texts, quality_texts
    from tests.support.dciodvfy import dicom_tables, photo_record
    from tests.support.fhir_factories import tables

    sample = stored_sample("tiny.jpg")
    for kind in (PhotoKind.SECONDARY, PhotoKind.CLINICAL):
        record = photo_record(kind, sample, quality_warnings=("image looks blurred (sharpness 0.4 < 2)",))
        ds = reread(photo_object(kind, sample, record=record))
        assert ds.ImageComments.endswith("\r\nQuality warning: image looks blurred (sharpness 0.4 < 2)") \
            or ds.ImageComments == "Quality warning: image looks blurred (sharpness 0.4 < 2)"
        texts = fixed_texts(tables(), dicom_tables()) | set(quality_texts(record))
        copies = (lambda ds, **kw: deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY, **kw),
                  lambda ds, **kw: pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system,
                                                uid_root=OUT_ROOT, key=UID_KEY, **kw))
        for make in copies:
            assert make(ds, fixed_texts=texts).ImageComments == ds.ImageComments
            assert "ImageComments" not in make(ds, fixed_texts=fixed_texts(tables(), dicom_tables()))
            other = copy.deepcopy(ds)
            other.ImageComments = ds.ImageComments + "\r\nseen by Dr Jane Doe"
            assert "ImageComments" not in make(other, fixed_texts=texts)


@pytest.mark.parametrize("pseudonym", ["", "a\\b", "x" * 65])
def test_a_pseudonym_that_is_not_a_lo_value_is_refused(pseudonym: str) -> None:
    with pytest.raises(InvalidInput):
        pseudonymise(clinical(), pseudonym=pseudonym, pseudonym_issuer="urn:p", uid_root=OUT_ROOT, key=UID_KEY)


def assert_same_pixels_other_bytes(out: Dataset, source: Dataset) -> None:
    """Each JPEG frame of ``out`` decodes to the pixels of ``source``'s, and is not its bytes
    (adapter.imaging.unlinkable: a copy's file hash is not the stored one's)."""
    frames = int(source.get("NumberOfFrames") or 1)
    for mine, theirs in zip(generate_frames(out.PixelData, number_of_frames=frames),
                            generate_frames(source.PixelData, number_of_frames=frames), strict=True):
        assert mine.rstrip(b"\x00") != theirs.rstrip(b"\x00")
        with Image.open(io.BytesIO(mine)) as a, Image.open(io.BytesIO(theirs)) as b:
            assert a.tobytes() == b.tobytes()


def test_the_two_copies_frames_are_other_files_than_the_stored_one_and_each_other() -> None:
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg")))
    train = deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY)
    hresch = pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer="urn:p", uid_root=OUT_ROOT, key=UID_KEY)
    assert_same_pixels_other_bytes(train, ds)
    assert_same_pixels_other_bytes(hresch, ds)
    assert next(generate_frames(train.PixelData, number_of_frames=1)) != \
        next(generate_frames(hresch.PixelData, number_of_frames=1))


@pytest.mark.parametrize("kind", [PhotoKind.DOCUMENT, PhotoKind.SECONDARY])
def test_burned_in_annotation_is_released_and_says_the_pixels_are_not_cleaned(kind: PhotoKind) -> None:
    """The consent decision permits the release; de-identification does not claim to clean the
    pixels: BurnedInAnnotation stays YES, no 113101 Clean Pixel Data, and the method says so."""
    ds = reread(photo_object(kind, stored_sample("document.jpg")))
    assert ds.BurnedInAnnotation == "YES"
    for out, codes in (
            (deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY), ["113100"]),
            (pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer="urn:p", uid_root=OUT_ROOT, key=UID_KEY),
             ["113100", "113106"])):
        assert out.BurnedInAnnotation == "YES" and out.PatientIdentityRemoved == "NO"
        assert [c.CodeValue for c in out.DeidentificationMethodCodeSequence] == codes
        assert "113101" not in [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
        assert NOT_CLEANED_PIXELS in list(out.DeidentificationMethod)
        assert_same_pixels_other_bytes(out, ds)
        assert_nothing_identifying(out, dates=len(codes) > 1, allowed=frozenset({"IssuerOfPatientID"}))


def test_clean_pixels_are_not_flagged() -> None:
    out = deidentify(clinical(), uid_root=OUT_ROOT, key=UID_KEY)
    assert out.BurnedInAnnotation == "NO"
    assert NOT_CLEANED_PIXELS not in list(out.DeidentificationMethod)


def test_absent_burned_in_annotation_counts_as_may_be_present() -> None:
    ds = clinical()
    del ds.BurnedInAnnotation
    out = deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY)
    assert "BurnedInAnnotation" not in out
    assert list(out.DeidentificationMethod) == ["Basic Application Confidentiality Profile", NOT_CLEANED_PIXELS,
                                                NOT_CLEANED_FEATURES]


@pytest.mark.parametrize(("text_in_pixels", "recognizable", "burned_in", "features", "notes"), [
    (False, False, "NO", "NO", []),
    (True, False, "NO", "NO", [NOT_CLEANED_PIXELS]),    # a document or screen: text by nature
    (False, True, "NO", "NO", [NOT_CLEANED_FEATURES]),  # the kind shows the person
    (False, False, "YES", "NO", [NOT_CLEANED_PIXELS]),  # the object says so
    (False, False, "NO", None, [NOT_CLEANED_FEATURES]),  # absent: may be
])
def test_patient_identity_removed_only_when_nothing_may_be_left_in_the_pixels(
        text_in_pixels: bool, recognizable: bool, burned_in: str, features: str | None, notes: list[str]) -> None:
    """Clinical-safety review F3: every copy said PatientIdentityRemoved YES ("removed from the
    Attributes and the Pixel Data", PS3.3 C.7.1.1) though no pixel is cleaned (test seen failing:
    YES whatever the pixels). Now YES only when neither the object (BurnedInAnnotation,
    RecognizableVisualFeatures) nor its kind (kinds.yaml) says the picture may identify; the
    method says why otherwise, as the FHIR views label the record REDACTED."""
    ds = clinical()
    ds.BurnedInAnnotation = burned_in
    if features is None:
        del ds.RecognizableVisualFeatures
    else:
        ds.RecognizableVisualFeatures = features
    for out in (deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY, text_in_pixels=text_in_pixels,
                           recognizable=recognizable),
                pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer="urn:p", uid_root=OUT_ROOT, key=UID_KEY,
                             text_in_pixels=text_in_pixels, recognizable=recognizable)):
        assert out.PatientIdentityRemoved == ("NO" if notes else "YES")
        methods = list(out.DeidentificationMethod) if out["DeidentificationMethod"].VM > 1 \
            else [out.DeidentificationMethod]
        assert [m for m in methods if m.startswith("Pixel data")] == notes
        assert not {"113101", "113102"} & {c.CodeValue for c in out.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize(("recognizable", "features", "expected"), [
    (True, "NO", "YES"),    # the sender said NO; the kind shows the person
    (True, None, "YES"),    # absent: the kind says it
    (True, "YES", "YES"),
    (False, "NO", "NO"),    # neither says so: the sender's NO stands
    (False, "YES", "YES"),
    (False, None, None),    # absent stays absent (Type 3)
])
def test_recognizable_visual_features_agrees_with_the_kind(recognizable: bool, features: str | None,
                                                          expected: str | None) -> None:
    """Research review finding 4: a received object's copies kept the sender's
    RecognizableVisualFeatures NO while PatientIdentityRemoved said NO and the method "the person
    may be recognised" for a recognisable kind (test seen failing: NO). A pipeline selecting images
    by RecognizableVisualFeatures (PS3.3 C.7.6.1.1.6) must not be told NO of a body photo."""
    ds = clinical()
    if features is None:
        del ds.RecognizableVisualFeatures
    else:
        ds.RecognizableVisualFeatures = features
    for out in (deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY, recognizable=recognizable),
                pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer="urn:p", uid_root=OUT_ROOT, key=UID_KEY,
                             recognizable=recognizable)):
        assert out.get("RecognizableVisualFeatures") == expected
        if expected == "YES":
            assert out.PatientIdentityRemoved == "NO"


def pdf() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.104.1", "2.25.1234"
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "Doe^Jane", "MRN-0001", "HOSP"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "2.25.5678", "2.25.9012"
    ds.StudyDate, ds.StudyTime = "20240101", "120000"
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    ds.BurnedInAnnotation, ds.DocumentTitle = "YES", "Letter about Doe^Jane"
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = PDF_DOCUMENT + b"\0" * (len(PDF_DOCUMENT) % 2)
    ds.EncapsulatedDocumentLength = len(PDF_DOCUMENT)
    return ds


#: A letter whose document information names the patient (the de-identification review's).
PDF_DOCUMENT = minimal_pdf(b"BT /F1 12 Tf 20 100 Td (Letter) Tj ET", info=(
    b"<</Author(Dr Jane SMITH)/Title(Discharge letter for Doe^Jane MRN-0001)"
    b"/CreationDate(D:20240301101500+01'00')/Producer(HospitalEHR v9 Example Hospital)>>"))


def test_an_encapsulated_pdf_is_released_and_says_the_document_is_not_cleaned() -> None:
    source = pdf()
    out = deidentify(source, uid_root=OUT_ROOT, key=UID_KEY)
    assert list(out.DeidentificationMethod) == ["Basic Application Confidentiality Profile", NOT_CLEANED_DOCUMENT]
    # Table E.1-1 would replace the document (D): its content is kept, so the profile is not claimed in codes
    assert "DeidentificationMethodCodeSequence" not in out
    assert page_contents(bytes(out.EncapsulatedDocument)) == page_contents(PDF_DOCUMENT)
    # Type 2 in the Encapsulated Document module: emptied, not removed
    assert (out.DocumentTitle, out.ContentDate, out.ContentTime, out.AcquisitionDateTime) == ("", "", "", "")
    assert (out.PatientName, out.PatientID) == ("", "")
    pseudo = pseudonymise(source, pseudonym=PSEUDONYM, pseudonym_issuer="urn:p", uid_root=OUT_ROOT, key=UID_KEY)
    assert pseudo.DocumentTitle == "" and pseudo.ContentTime == "120000"
    assert NOT_CLEANED_DOCUMENT in list(pseudo.DeidentificationMethod)


@pytest.mark.parametrize("copy_of", ["TRAIN", "HRESCH"])
def test_the_encapsulated_pdf_loses_its_metadata(copy_of: str) -> None:
    """Found by the de-identification review (finding 1): the copies said PatientIdentityRemoved
    YES and carried the PDF byte for byte, its /Title naming the patient and MRN, its /Author,
    /CreationDate and /Producer too (test seen failing: the document was the source's). Now the
    PDF is the one adapter.imaging.pdf makes, its length in EncapsulatedDocumentLength, padded to
    even; its pages as they were; and DeidentificationMethod says what was done and what not."""
    source = pdf()
    out = deidentify(source, uid_root=OUT_ROOT, key=UID_KEY) if copy_of == "TRAIN" else \
        pseudonymise(source, pseudonym=PSEUDONYM, pseudonym_issuer="urn:p", uid_root=OUT_ROOT, key=UID_KEY)
    out = reread(out)  # as written and read back (PS3.5 7.1.1: an even length)
    document = bytes(out.EncapsulatedDocument)
    for text in (b"SMITH", b"MRN-0001", b"Doe^Jane", b"20240301", b"HospitalEHR", b"Example Hospital"):
        assert text not in document, text
    assert len(document) % 2 == 0 and out.EncapsulatedDocumentLength in (len(document), len(document) - 1)
    cleaned = document[:out.EncapsulatedDocumentLength]
    assert cleaned == pdf_without_metadata(PDF_DOCUMENT) and cleaned.endswith(b"%%EOF\n")
    assert page_contents(cleaned) == page_contents(PDF_DOCUMENT)
    assert out.PatientIdentityRemoved == "NO"  # its content was not cleaned
    methods = list(out.DeidentificationMethod)
    assert NOT_CLEANED_DOCUMENT in methods and "metadata removed" in NOT_CLEANED_DOCUMENT
    assert source.EncapsulatedDocument.startswith(PDF_DOCUMENT)  # the input untouched


@pytest.mark.parametrize("document", [b"%PDF-1.4\n%%EOF\n", b"<ClinicalDocument/>"])
def test_an_encapsulated_document_that_cannot_be_cleaned_stops_the_copy(document: bytes) -> None:
    """Fail closed: a document whose metadata cannot be removed is never released with it."""
    source = pdf()
    source.EncapsulatedDocument, source.EncapsulatedDocumentLength = document, len(document)
    with pytest.raises(UncleanableDocument):
        deidentify(source, uid_root=OUT_ROOT, key=UID_KEY)
    with pytest.raises(UncleanableDocument):
        pseudonymise(source, pseudonym=PSEUDONYM, pseudonym_issuer="urn:p", uid_root=OUT_ROOT, key=UID_KEY)


def test_configuration_is_checked() -> None:
    with pytest.raises(ConfigurationError):
        deidentify(clinical(), uid_root="01.2", key=UID_KEY)
    with pytest.raises(ConfigurationError):
        deidentify(clinical(), uid_root=OUT_ROOT, key=b"")


def test_exif_inside_a_received_jpeg_frame_is_cut_out() -> None:
    """A peer's SC whose frame still carries the camera's APP1 EXIF (with GPS): the copy's frame
    has none, and the entropy-coded data is unchanged."""
    import io

    from pydicom import dcmread

    raw = (SAMPLES / "document.jpg").read_bytes()
    ds = dcmread(io.BytesIO(wrap_jpeg_as_sc(raw, strip=False)))
    (frame,) = generate_frames(ds.PixelData, number_of_frames=1)
    assert b"Exif\x00\x00" in frame
    out = deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY)
    (clean,) = generate_frames(out.PixelData, number_of_frames=1)
    assert b"Exif\x00" not in clean
    scan = frame.index(b"\xff\xda")
    assert clean[clean.index(b"\xff\xda"):].rstrip(b"\x00") == frame[scan:frame.index(b"\xff\xd9", scan) + 2]
    assert out.PatientName == "" and b"Test^Peer" not in encode_dataset(out)


def test_every_listed_attribute_is_a_dictionary_keyword() -> None:
    """A misspelt keyword would match nothing and leave its attribute in every copy."""
    lists = {"zero": BASIC_PROFILE_ZERO, "remove": BASIC_PROFILE_REMOVE, "dummy": BASIC_PROFILE_DUMMY,
             "dates": DATES_ZERO | DATES_REMOVE, "keep": KEEP_UIDS}
    unknown = {name: sorted(k for k in keywords if k not in keyword_dict) for name, keywords in lists.items()}
    assert unknown == {name: [] for name in lists}
    assert not BASIC_PROFILE_ZERO & BASIC_PROFILE_REMOVE and not BASIC_PROFILE_DUMMY & (
        BASIC_PROFILE_ZERO | BASIC_PROFILE_REMOVE)
    # the dummy value fits the VR of each attribute it replaces
    longest = {"SH": 16, "AE": 16, "LO": 64, "UC": 2**32 - 2}
    vrs = {k: dictionary_VR(tag_for_keyword(k)) for k in BASIC_PROFILE_DUMMY}
    assert all(vr in longest and len(DUMMY_VALUE) <= longest[vr] for vr in vrs.values()), vrs



def test_urls_dates_in_another_calendar_and_media_ids_leave_both_copies() -> None:
    """Review finding: RetrieveURL kept the PACS's host and the original Study UID, and the
    birth and death dates in an alternative calendar and the storage medium's id stayed."""
    ds = loaded()
    study = str(ds.StudyInstanceUID)
    ds.RetrieveURL = f"https://pacs.example/dicomweb/studies/{study}"
    ds.PatientBirthDateInAlternativeCalendar = "1380/10/11"
    ds.PatientDeathDateInAlternativeCalendar = "1440/01/02"
    ds.PatientAlternativeCalendar = "I"
    ds.StorageMediaFileSetID = "MRN0001DISK"
    concept = Dataset()
    concept.URNCodeValue = "urn:example:concept:1"
    concept.CodingSchemeURL = "https://terminology.example/cs"
    concept.CodeMeaning = "a concept"
    ds.ConceptNameCodeSequence = Sequence([concept])
    gone = ("RetrieveURL", "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
            "PatientAlternativeCalendar", "StorageMediaFileSetID")
    for copy_ in (deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY),
                  pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                               key=UID_KEY)):
        assert [k for k in gone if k in copy_] == []
        assert study not in str(copy_) and "pacs.example" not in str(copy_) and "MRN0001" not in str(copy_)
        kept = copy_.ConceptNameCodeSequence[0]
        assert (kept.URNCodeValue, kept.CodingSchemeURL) == (concept.URNCodeValue, concept.CodingSchemeURL)


#: What of the patient module (group 0010) and of the URL and unlimited-text VRs may pass into a
#: copy unchanged: kinds and codes, a veterinary subject's species, breed and strain (none of them
#: names a patient). A new attribute of the data dictionary in those places fails this list and
#: has to be judged.
HARMLESS_SURVIVORS = frozenset({
    "TypeOfPatientID", "QualityControlSubject", "StrainNomenclature", "StrainStockNumber", "StrainSource",
    "GeneticModificationsNomenclature", "PatientSpeciesDescription", "AnatomicalOrientationType",
    "PatientBreedDescription", "CodingSchemeURL", "LongCodeValue", "URNCodeValue",
})
_SAMPLE_VALUES = {"AE": "AETITLE", "AS": "042Y", "CS": "CODE", "DA": "20240101", "DT": "20240101120000",
                  "LO": "LOVAL", "LT": "text", "PN": "Doe^John", "SH": "SHVAL", "ST": "st", "TM": "120000",
                  "UC": "UCVAL", "UI": "1.2.3.4.5", "UR": "http://pacs.example/1.2.3.4.5", "UT": "ut"}


def test_no_patient_attribute_url_or_description_of_the_dictionary_survives_unless_known_harmless() -> None:
    """Every string attribute of the data dictionary (none retired) with a value, through both
    copies: of the patient module and the UR/UC VRs only HARMLESS_SURVIVORS come out unchanged."""
    ds = Dataset()
    for tag, (vr, _vm, _name, retired, keyword) in DicomDictionary.items():
        vr = vr.split(" or ")[0]
        if retired or not keyword or tag >> 16 in (0x0000, 0x0002) or vr not in _SAMPLE_VALUES:
            continue
        ds.add(DataElement(tag, vr, _SAMPLE_VALUES[vr]))
    ds.SOPClassUID = SC_IMAGE
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for copy_ in (deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY),
                  pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                               key=UID_KEY)):
        unchanged = {elem.keyword for elem in copy_
                     if elem.tag in ds and ds[elem.tag].value == elem.value
                     and (Tag(elem.tag).group == 0x0010 or elem.VR in ("UR", "UC"))}
        assert unchanged - HARMLESS_SURVIVORS == set()


#: Found by the de-identification review and a cross-check against PS3.15 Table E.1-1 (2026c):
#: attributes the table removes (X, X/D) that both copies kept, and the retired order numbers
#: (identifiers of the RIS's order, whose current forms are emptied) that it does not list.
REVIEW_REMOVED = {
    "HardcopyCreationDeviceID": "LO", "ChannelLabel": "SH", "ChannelDerivationDescription": "LO",
    "MultiplexGroupLabel": "SH", "PlacerOrderNumberProcedure": "SH", "FillerOrderNumberProcedure": "SH",
    "PlacerOrderNumberImagingServiceRequestRetired": "SH", "FillerOrderNumberImagingServiceRequestRetired": "SH",
}


def test_retired_order_numbers_device_ids_channel_labels_and_coded_ethnic_group_are_removed() -> None:
    """De-identification review: retired order numbers (0040,1006/1007/2006/2007) and
    HardcopyCreationDeviceID (0018,1011) came back unchanged in the TRAIN and HRESCH copies, as
    did Table E.1-1's X attributes ChannelLabel, ChannelDerivationDescription,
    MultiplexGroupLabel, EthnicGroupCodeSequence and WaveformAnnotationSequence (X/D)."""
    ds = loaded()
    for keyword, vr in REVIEW_REMOVED.items():
        ds.add(DataElement(tag_for_keyword(keyword), vr, "LEAK-" + keyword[:10]))
    ethnic = Dataset()
    ethnic.CodeValue, ethnic.CodingSchemeDesignator, ethnic.CodeMeaning = "LEAK-E", "99X", "LEAK-ethnic"
    ds.EthnicGroupCodeSequence = Sequence([ethnic])
    note = Dataset()
    note.UnformattedTextValue = "LEAK-said"
    ds.WaveformAnnotationSequence = Sequence([note])
    for copy_ in (deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY),
                  pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                               key=UID_KEY)):
        kept = [k for k in [*REVIEW_REMOVED, "EthnicGroupCodeSequence", "WaveformAnnotationSequence"] if k in copy_]
        assert kept == [] and "LEAK" not in str(copy_)


def test_an_animals_registration_is_emptied_and_private_element_descriptions_go() -> None:
    """Diff review: removing BreedRegistrationNumber and the UC names of private element
    definitions (Type 1 in their items) left those items invalid; the sequences are emptied
    (BreedRegistrationSequence, Type 2C) or removed (the private elements are removed anyway)."""
    ds = loaded()
    registration = Dataset()
    registration.BreedRegistrationNumber = "REG-1"
    ds.BreedRegistrationSequence = Sequence([registration])
    definition = Dataset()
    definition.PrivateDataElementName = "Acme thing"
    block = Dataset()
    block.PrivateCreatorReference = "ACME"
    block.PrivateDataElementDefinitionSequence = Sequence([definition])
    ds.PrivateDataElementCharacteristicsSequence = Sequence([block])
    for copy_ in (deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY),
                  pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                               key=UID_KEY)):
        assert len(copy_.BreedRegistrationSequence) == 0
        assert "PrivateDataElementCharacteristicsSequence" not in copy_ and "REG-1" not in str(copy_)


def test_frames_lose_their_icc_profile_and_equipment_names_their_free_text() -> None:
    """Hygiene review: the de-identified DICOM kept the frame's ICC profile (whose text tags can
    name anyone) and the EXIF Make/Model free text as Manufacturer/ManufacturerModelName, where
    the de-identified FHIR view keeps neither."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (150, 90, 60)).save(buf, "JPEG", quality=90, icc_profile=ms.srgb_icc())
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_bytes(buf.getvalue(), "image/jpeg")))
    assert b"ICC_PROFILE" in next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.Manufacturer = "OWNER-Jane-Roe"
    ds.ManufacturerModelName = "SERIAL-SN998877"
    ds.ICCProfile = ms.srgb_icc()
    for copy_ in (deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY),
                  pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                               key=UID_KEY)):
        frame = next(generate_frames(copy_.PixelData, number_of_frames=1))
        assert b"ICC_PROFILE" not in frame and frame.startswith(b"\xff\xd8")
        assert copy_.Manufacturer == "" and "ManufacturerModelName" not in copy_ and "ICCProfile" not in copy_
        assert "OWNER-Jane-Roe" not in str(copy_) and "SERIAL-SN998877" not in str(copy_)


def test_native_pixel_data_is_cut_to_its_frames() -> None:
    """Hygiene review: bytes after the last native frame stayed in the de-identified copy."""
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("lesion.png")))
    expected = len(ds.PixelData)
    ds.PixelData = ds.PixelData + b"GPS-LEAK-47.123~"
    copy_ = deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY)
    assert len(copy_.PixelData) == expected and b"GPS-LEAK" not in copy_.PixelData


# -- free text the sender wrote (privacy review F2: "Forearm of Jane Doe" in a code meaning) -------


def _copies(ds: Dataset, **kw: object) -> list[Dataset]:
    return [deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY, **kw),  # type: ignore[arg-type]
            pseudonymise(ds, pseudonym=PSEUDONYM, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                         key=UID_KEY, **kw)]  # type: ignore[arg-type]


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _methods(ds: Dataset) -> list[str]:
    return list(ds.DeidentificationMethod) if ds["DeidentificationMethod"].VM > 1 else [ds.DeidentificationMethod]


def test_code_meanings_the_sender_wrote_are_replaced_by_the_adapters_in_both_copies() -> None:
    """Privacy review F2: a received object's AnatomicRegionSequence CodeMeaning "Forearm of Jane
    Doe" came out word for word in the TRAIN and HRESCH copies (test seen failing). Every code
    meaning, at any depth, is now the one the adapter's tables give (mappings/body_sites.yaml,
    then the PS3.16 codes pydicom carries), else the code value itself; the codes stay, and
    the method says the meanings were replaced."""
    from adapter.mapping.dicom_photo import code_meanings
    from tests.support.fhir_factories import tables

    ds = loaded()
    region = ds.AnatomicRegionSequence[0]
    region.CodeMeaning = "Forearm of Jane Doe"
    region.AnatomicRegionModifierSequence[0].CodeMeaning = "Right, said Jane Doe"
    region.MappingResourceName = "Jane Doe's own mapping"
    structure = _code("L-123", "99LOCAL", "Mole Jane Doe showed us")
    structure.EquivalentCodeSequence = Sequence([_code("113100", "DCM", "Jane Doe equivalent")])
    ds.PrimaryAnatomicStructureSequence = Sequence([structure])
    for out in _copies(ds, code_meanings=code_meanings(tables())):
        assert b"jane" not in encode_dataset(out).lower()
        region_out = out.AnatomicRegionSequence[0]
        assert (region_out.CodeValue, region_out.CodingSchemeDesignator, region_out.CodeMeaning) == (
            "14975008", "SCT", "Forearm")                                   # body_sites.yaml
        assert region_out.AnatomicRegionModifierSequence[0].CodeMeaning == "Right"  # its laterality table
        assert "MappingResourceName" not in region_out
        structure_out = out.PrimaryAnatomicStructureSequence[0]
        assert structure_out.CodeMeaning == "L-123"                          # known to no table: the code
        assert structure_out.EquivalentCodeSequence[0].CodeMeaning == "Basic Application Confidentiality Profile"
        assert REPLACED_CODE_MEANINGS in _methods(out)


def test_the_adapters_own_code_meanings_are_no_replacement() -> None:
    """An object the adapter made carries its tables' meanings: the copy keeps them, and says
    nothing was replaced."""
    from adapter.mapping.dicom_photo import code_meanings
    from tests.support.fhir_factories import tables

    for out in _copies(clinical(), code_meanings=code_meanings(tables())):
        assert out.AnatomicRegionSequence[0].CodeMeaning == "Forearm"
        assert REPLACED_CODE_MEANINGS not in _methods(out)


def test_body_part_examined_and_every_description_the_sender_wrote_leave_both_copies() -> None:
    """BodyPartExamined is a CS, but its Defined Terms (PS3.16 Annex L) are not enumerated and any
    upper-case words fit ("JANE DOE"); the adapter has no table of them: removed (the site stays
    coded in AnatomicRegionSequence). Descriptions, comments, labels and names the sender wrote,
    listed in Table E.1-1 or not, go at every depth: ViewName, ContentDescription, a LUT's
    explanation, the acquisition protocol's name... (test seen failing for the unlisted ones)."""
    ds = loaded()
    ds.BodyPartExamined = "JANE DOE"
    ds.ImageComments = "Jane Doe ImageComments"
    ds.StudyDescription, ds.SeriesDescription = "Jane Doe study", "Jane Doe series"
    ds.DerivationDescription = "Jane Doe derivation"
    ds.ViewName = "JANE DOE VIEW"
    ds.ContentDescription = "Jane Doe content"
    ds.AcquisitionProtocolName = "Jane Doe protocol"
    ds.WindowCenterWidthExplanation = "Jane Doe window"
    ds.TimezoneOffsetFromUTC = "JANE"                                     # not ±HHMM
    ds.ReferencedImageSequence[0].ContentDescription = "Jane Doe nested"
    for out in _copies(ds):
        assert b"jane" not in encode_dataset(out).lower()
        for keyword in ("BodyPartExamined", "ViewName", "ContentDescription", "AcquisitionProtocolName",
                        "WindowCenterWidthExplanation", "TimezoneOffsetFromUTC", "ImageComments", "StudyDescription",
                        "SeriesDescription", "DerivationDescription"):
            assert keyword not in out, keyword
    hresch = _copies(clinical())[1]
    assert hresch.TimezoneOffsetFromUTC == "+0100"  # an offset (the dates' zone) stays with the dates


def test_coded_strings_keep_only_their_defined_terms_in_both_copies() -> None:
    """Review of the merges F4: CS attributes hold the sender's words too. ImageType values 3 on
    (implementation-defined, PS3.3 C.7.6.1.1.2), a ContentLabel, a ViewPosition or a
    PatientOrientation not of their defined terms or grammar came out word for word (test seen
    failing). ImageType keeps values 1-2 only, ContentLabel is the adapter's own, the others go
    (PatientOrientation, Type 2C, is emptied)."""
    ds = loaded()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "JANE DOE", "MRN 0012345"]
    ds.ContentLabel = "JANE_DOE"
    ds.ViewPosition = "JANEDOE MRN1"
    ds.PatientOrientation = ["JANE", "DOE"]
    for out in _copies(ds):
        encoded = encode_dataset(out).lower()
        assert b"jane" not in encoded and b"mrn" not in encoded
        assert list(out.ImageType) == ["ORIGINAL", "PRIMARY"]
        assert out.ContentLabel == DUMMY_VALUE
        assert "ViewPosition" not in out
        assert out.PatientOrientation == ""


@pytest.mark.parametrize(("keyword", "value", "written"), [
    ("ImageType", ["DERIVED", "SECONDARY"], ["DERIVED", "SECONDARY"]),
    ("ImageType", ["JANE", "DOE"], ["DERIVED", "SECONDARY"]),     # not claimed ORIGINAL nor PRIMARY
    ("ImageType", ["ORIGINAL", "DOE", "X"], ["ORIGINAL", "SECONDARY"]),
    ("ViewPosition", "PA", "PA"),
    ("ViewPosition", "MLO", "MLO"),
    ("PatientOrientation", ["A", "FR"], ["A", "FR"]),
    ("PatientOrientation", ["A"], ""),                             # VM 2
])
def test_coded_strings_of_their_defined_terms_stay(keyword: str, value: object, written: object) -> None:
    ds = loaded()
    setattr(ds, keyword, value)
    for out in _copies(ds):
        kept = out[keyword].value
        assert (list(kept) if isinstance(kept, list) or out[keyword].VM > 1 else kept) == written


#: What of the sender's LO/SH/UC/AE values may stay in a copy: the codes (a code meaning is
#: replaced), and a time zone offset that is one (checked apart).
CODED_TEXT = frozenset({"CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "LongCodeValue",
                        "CodeMeaning", "TimezoneOffsetFromUTC"})
_SENDER_TEXT = {"LO": "Jane Doe LO", "SH": "JANEDOE SH", "UC": "Jane Doe UC", "AE": "JANEDOE",
                "LT": "Jane Doe LT", "ST": "Jane Doe ST", "UT": "Jane Doe UT", "PN": "Doe^Jane"}


def test_no_free_text_attribute_of_the_dictionary_keeps_the_senders_words() -> None:
    """Every free-text attribute of the data dictionary (LO, SH, UC, AE, LT, ST, UT, PN; none
    retired) holding a name, through both copies: the name is nowhere; each attribute is gone,
    emptied, a dummy or a value the copy writes itself (the pseudonym, the method)."""
    ds = Dataset()
    for tag, (vr, _vm, _name, retired, keyword) in DicomDictionary.items():
        vr = vr.split(" or ")[0]
        if retired or not keyword or tag >> 16 in (0x0000, 0x0002) or vr not in _SENDER_TEXT:
            continue
        if keyword not in CODED_TEXT:
            ds.add(DataElement(tag, vr, _SENDER_TEXT[vr]))
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = "14975008", "SCT", "Forearm of Jane Doe"
    ds.SOPClassUID = SC_IMAGE
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    for out in _copies(ds):
        left = {elem.keyword: elem.value for _, elem in walk(out)  # type: ignore[attr-defined]
                if "jane" in str(elem.value).lower()}  # type: ignore[attr-defined]
        assert left == {}
        assert out.CodeMeaning == "Forearm"  # PS3.16 (pydicom's codes) when no table is given


def test_a_copy_that_keeps_the_adapters_descriptors_claims_clean_descriptors() -> None:
    """Table E.1-1 removes ImageComments and SeriesDescription (X); keeping them, even as the
    adapter's own warning, is the Clean Descriptors Option (PS3.15 E.3.5; CID 7050 113105), which
    the copy then says in codes and words. Without them it claims only what it did."""
    from adapter.mapping.dicom_photo import fixed_texts
    from tests.support.dciodvfy import dicom_tables
    from tests.support.fhir_factories import tables

    secondary = reread(photo_object(PhotoKind.SECONDARY, stored_sample("document.jpg")))
    for out in _copies(secondary, fixed_texts=fixed_texts(tables(), dicom_tables())):
        assert "ImageComments" in out
        assert "113105" in [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
        assert "Clean Descriptors Option" in _methods(out)
    for out in _copies(secondary):
        assert "ImageComments" not in out and "SeriesDescription" not in out
        assert "113105" not in [c.CodeValue for c in out.DeidentificationMethodCodeSequence]
        assert "Clean Descriptors Option" not in _methods(out)


def test_the_standards_code_dictionary_is_loaded_only_when_a_restricted_copy_needs_it() -> None:
    """pydicom's PS3.16 code dictionary (every concept: ~20 MB of resident memory) was imported with
    the application; a process serving no restricted DICOM copy of a coded item never needs it
    (seen failing: loaded at import)."""
    import subprocess
    import sys

    probe = ("import sys, adapter.__main__, adapter.api.app, adapter.mapping.dicom_deid; "
             "print('pydicom.sr._concepts_dict' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "False", done.stdout + done.stderr
