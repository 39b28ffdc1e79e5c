"""The Native DICOM Model writer (adapter.mapping.dicom_xml): PS3.19 A.1 shapes from the DICOM
JSON Model, read back to the very same JSON, schema structure checked."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from adapter.errors import NotAcceptable
from adapter.mapping.dicom_xml import native_dicom_model
from tests.support.native_dicom import NS, check_structure, comparable, to_json_model

Q = f"{{{NS}}}"


def sample() -> dict[str, Any]:
    ds = Dataset()
    ds.PatientName = "Doe^Jane^^Dr=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046"
    ds.ReferringPhysicianName = ""
    ds.ImageType = ["ORIGINAL", "", "OTHER"]
    ds.InstanceNumber = "7"
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.StudyDescription = "wound <left> & \"right\""
    ds.ImageComments = "line one\r\nline two\ttabbed "
    ds.SourceImageSequence = Sequence([Dataset()])
    ds.SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3"
    ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence = Sequence([Dataset()])
    ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue = "121320"
    ds.OtherPatientIDsSequence = Sequence()
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "LO", "private value")
    ds.ICCProfile = bytes(range(16))
    body: dict[str, Any] = ds.to_json_dict()
    body["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://pacs.example/dicomweb/studies/1/frames/1"}
    return dict(sorted(body.items()))


def attribute(root: ET.Element, tag: str) -> ET.Element:
    found = root.find(f"{Q}DicomAttribute[@tag='{tag}']")
    assert found is not None, tag
    return found


def test_a_dataset_reads_back_as_the_json_it_was_written_from() -> None:
    body = sample()
    document = native_dicom_model(body)
    assert document.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = check_structure(document)
    assert to_json_model(root) == comparable(body)
    assert [a.get("tag") for a in root] == list(body)  # the JSON's order: by tag


def test_the_elements_take_the_shapes_ps3_19_gives_them() -> None:
    root = check_structure(native_dicom_model(sample()))
    name = attribute(root, "00100010")
    assert (name.get("vr"), name.get("keyword")) == ("PN", "PatientName")
    [person] = name
    assert person.tag == f"{Q}PersonName" and person.get("number") == "1"
    assert [g.tag.removeprefix(Q) for g in person] == ["Alphabetic", "Ideographic", "Phonetic"]
    alphabetic = person.find(f"{Q}Alphabetic")
    assert alphabetic is not None
    # the empty middle name is left out, the prefix keeps its place by name
    assert [(c.tag.removeprefix(Q), c.text) for c in alphabetic] == [
        ("FamilyName", "Doe"), ("GivenName", "Jane"), ("NamePrefix", "Dr")]
    empty_name = attribute(root, "00080090")
    assert list(empty_name) == [] and empty_name.get("vr") == "PN"
    image_type = attribute(root, "00080008")
    assert [(v.get("number"), v.text) for v in image_type] == [("1", "ORIGINAL"), ("2", None), ("3", "OTHER")]
    assert [v.text for v in attribute(root, "00280030")] == ["0.5", "0.25"]
    assert [v.text for v in attribute(root, "00200013")] == ["7"]
    assert attribute(root, "00204000")[0].text == "line one\r\nline two\ttabbed "  # CR kept as &#13;
    assert attribute(root, "00081030")[0].text == "wound <left> & \"right\""
    [item] = attribute(root, "00082112")
    assert item.tag == f"{Q}Item" and item.get("number") == "1"
    nested = item.find(f"{Q}DicomAttribute[@tag='0040A170']/{Q}Item/{Q}DicomAttribute[@tag='00080100']/{Q}Value")
    assert nested is not None and nested.text == "121320"
    assert list(attribute(root, "00101002")) == []  # an empty sequence: no Item
    private = attribute(root, "00091001")
    assert private.get("privateCreator") == "ACME 1.0" and private.get("keyword") is None
    assert attribute(root, "00090010").get("privateCreator") is None
    [inline] = attribute(root, "00282000")
    assert inline.tag == f"{Q}InlineBinary" and inline.text == sample()["00282000"]["InlineBinary"]
    [bulk] = attribute(root, "7FE00010")
    assert bulk.tag == f"{Q}BulkData" and bulk.get("uri") == "https://pacs.example/dicomweb/studies/1/frames/1"
    assert attribute(root, "7FE00010").get("keyword") == "PixelData"


@pytest.mark.parametrize("bad", [
    {"00081030": {"vr": "LO", "Value": ["bell\x07"]}},
    {"00081030": {"vr": "LO", "Value": ["\ud800"]}},
    {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "a^b^c^d^e^f"}]}},
    {"00100010": {"vr": "PN", "Value": ["Doe^Jane"]}},
])
def test_what_xml_cannot_carry_is_refused_not_altered(bad: dict[str, Any]) -> None:
    with pytest.raises(NotAcceptable):
        native_dicom_model(bad)


def test_an_empty_dataset_is_an_empty_model() -> None:
    root = check_structure(native_dicom_model({}))
    assert list(root) == []
