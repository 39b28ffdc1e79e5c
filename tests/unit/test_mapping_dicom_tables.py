"""mappings/dicom.yaml: patient identifier table both ways, kind → IOD, receive rules, and the
start-up refusal of a bad table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.errors import InvalidInput, PolicyError, RequiredElementMissing, UnknownCode
from adapter.mapping.dicom_tables import (
    ENCAPSULATED_PDF,
    MF_TRUE_COLOR_SC,
    SC_IMAGE,
    VL_PHOTOGRAPHIC,
    PatientIdentifierTable,
    load_dicom_tables,
)
from adapter.model.photo import Identifier, PhotoKind, PhotoSource
from tests.support.dciodvfy import ROOT, dicom_tables

pytestmark = pytest.mark.unit

YAML = ROOT / "mappings" / "dicom.yaml"


def raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(YAML.read_text(encoding="utf-8"))
    return data


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "dicom.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_the_project_table_loads_with_the_decided_iods() -> None:
    t = dicom_tables()
    clinical, document, secondary = (t.kinds[k] for k in (PhotoKind.CLINICAL, PhotoKind.DOCUMENT,
                                                          PhotoKind.SECONDARY))
    assert (clinical.sop_class, clinical.modality, clinical.conversion_type) == (VL_PHOTOGRAPHIC, "XC", None)
    assert (document.sop_class, document.modality, document.conversion_type) == (SC_IMAGE, "DOC", "SD")
    assert (secondary.sop_class, secondary.modality, secondary.conversion_type) == (SC_IMAGE, "OT", "SI")
    assert clinical.burned_in_annotation == "NO"
    assert (clinical.without_body_site, document.without_body_site, secondary.without_body_site) == (
        "unknown", "unpaired", "unknown")
    assert document.burned_in_annotation == secondary.burned_in_annotation == "YES"
    assert set(t.receive.sop_classes) == {VL_PHOTOGRAPHIC, SC_IMAGE, MF_TRUE_COLOR_SC, ENCAPSULATED_PDF}
    assert t.receive.source is PhotoSource.COLLEAGUE_INTERNAL


def test_patient_identifier_both_ways() -> None:
    table = dicom_tables().patient_identifiers
    ident = table.to_fhir("MRN-0001", "HOSP")
    assert ident == Identifier(system="urn:oid:2.999.1.1", value="MRN-0001")
    assert table.to_dicom(ident) == ("MRN-0001", "HOSP")
    assert table.to_fhir(" MRN-0001 ", "HOSP ").value == "MRN-0001"


def test_unknown_and_missing_issuers_are_refused_by_default() -> None:
    table = dicom_tables().patient_identifiers
    with pytest.raises(UnknownCode) as unknown:
        table.to_fhir("MRN-0001", "OTHER")
    assert unknown.value.expression == ["(0010,0021) IssuerOfPatientID"]
    with pytest.raises(UnknownCode):
        table.to_fhir("MRN-0001", None)
    with pytest.raises(RequiredElementMissing) as missing:
        table.to_fhir("", "HOSP")
    assert missing.value.expression == ["(0010,0020) PatientID"]
    with pytest.raises(UnknownCode) as egress:
        table.to_dicom(Identifier(system="urn:other", value="1"))
    assert egress.value.expression == ["subject.identifier.system"]


@pytest.mark.parametrize("value", ["a\\b", "x" * 65, "line\nbreak"])
def test_a_value_that_cannot_be_a_patient_id_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput):
        dicom_tables().patient_identifiers.to_dicom(Identifier(system="urn:oid:2.999.1.1", value=value))


def test_prefix_mode_and_default_issuer() -> None:
    table = PatientIdentifierTable.model_validate({
        "issuers": [{"issuer": "HOSP", "system": "urn:oid:2.999.1.1"}],
        "unknownIssuer": "prefix", "missingIssuer": "HOSP"})
    other = table.to_fhir("42", "Other Clinic/2")
    assert other == Identifier(system="urn:dicom:issuer:Other%20Clinic%2F2", value="42")
    assert table.to_dicom(other) == ("42", "Other Clinic/2")
    assert table.to_fhir("42", None).system == "urn:oid:2.999.1.1"


def test_every_identifier_of_an_lo_patient_id_and_issuer_is_within_the_bound_and_a_longer_one_is_refused() -> None:
    """The bound of every identifier the adapter takes (1024 bytes of UTF-8, its system and its
    value): a PatientID and an IssuerOfPatientID of 64 characters beyond ASCII (LO, 4 bytes each)
    map within it, percent-encoded after the prefix too, so no object DICOM allows is refused for
    it; past it (a value no LO can be) the object is refused naming the element, as the API
    refuses such an identifier (before, it was stored on SQLite and refused by PostgreSQL)."""
    table = PatientIdentifierTable.model_validate({
        "issuers": [{"issuer": "HOSP", "system": "urn:oid:2.999.1.1"}], "unknownIssuer": "prefix"})
    wide = "\U0001F600" * 64
    ident = table.to_fhir(wide, wide)
    assert (len(ident.value.encode()), len(ident.system.encode())) == (256, len("urn:dicom:issuer:") + 768)
    assert table.to_dicom(ident) == (wide, wide)
    with pytest.raises(InvalidInput) as refused:
        table.to_fhir("M" * 1025, "HOSP")
    assert refused.value.expression == ["(0010,0020) PatientID"]
    with pytest.raises(InvalidInput) as refused:
        table.to_fhir("42", "\U0001F600" * 86)
    assert refused.value.expression == ["(0010,0021) IssuerOfPatientID"]


def test_receive_rules_pick_the_kind() -> None:
    receive = dicom_tables().receive
    fixed = {"conversion_types": [], "modalities": [], "names_body_part": False}
    assert receive.kind_of(VL_PHOTOGRAPHIC, **fixed) is PhotoKind.CLINICAL
    assert receive.kind_of(ENCAPSULATED_PDF, **fixed) is PhotoKind.DOCUMENT


C, D, S = PhotoKind.CLINICAL, PhotoKind.DOCUMENT, PhotoKind.SECONDARY


@pytest.mark.parametrize(("conversion", "modality", "body_part", "kind"), [
    # a photo of the body (the equipment that acquired it, PS3.3 C.8.6.1) whatever its ConversionType
    ("WSD", "XC", True, C), ("DV", "XC", False, C), ("DI", "XC", False, C), ("SYN", "XC", False, C),
    ("DV", "ES", False, C), ("SD", "XC", True, C), ("SD", "XC", False, C), ("SI", "XC", False, C),
    ("DF", "OP", False, C), ("WSD", "GM", False, C), ("WSD", "SM", False, C), ("DI", "DMS", False, C),
    # a document, unless it names a body part
    ("SD", "OT", False, D), ("SD", "DX", False, D), ("WSD", "DOC", False, D), ("SI", "DOC", False, D),
    ("SD", "OT", True, C), ("SD", "DOC", True, C), ("WSD", "DOC", True, C),
    # a picture of an image: scanned or digitized film, whatever the (non-photo) equipment
    ("SI", "OT", False, S), ("DF", "OT", True, S), ("SI", "DX", True, S),
    # a video, interface or workstation capture of imaging or waveform equipment
    ("WSD", "DX", True, S), ("DI", "US", False, S), ("DV", "XA", False, S), ("WSD", "ECG", False, S),
    # nothing says it is an image of an image: clinical
    ("WSD", "OT", False, C), ("WSD", "OT", True, C), ("DI", "OT", False, C), ("DV", "OT", False, C),
    ("SYN", "CT", False, C), ("DRW", "US", False, C), ("XYZ", "DX", False, C), ("WSD", "ZZ", False, C),
    ("wsd", "DX", False, C), ("WSD", "dx", False, C),
])
def test_the_secondary_capture_rule_fails_closed(conversion: str, modality: str, body_part: bool,
                                                 kind: PhotoKind) -> None:
    """dicomsafety F1: every SC was `secondary` (no consent for care, readable after a
    withdrawal) unless SD or DOC made it a `document` (SD first, so a camera's SD with the elbow
    too). Seen failing before the rule: secondary for XC, ES, OT… and document for SD+XC."""
    receive = dicom_tables().receive
    for sop_class in (SC_IMAGE, MF_TRUE_COLOR_SC):
        assert receive.kind_of(sop_class, conversion_types=[conversion], modalities=[modality],
                               names_body_part=body_part) is kind, (sop_class, conversion, modality, body_part)


def test_two_values_where_one_is_allowed_are_unclear_and_none_is_refused() -> None:
    receive = dicom_tables().receive
    assert receive.kind_of(SC_IMAGE, conversion_types=["SD", "WSD"], modalities=["OT"],
                           names_body_part=False) is PhotoKind.CLINICAL
    assert receive.kind_of(SC_IMAGE, conversion_types=["SI"], modalities=["DX", "OT"],
                           names_body_part=False) is PhotoKind.CLINICAL
    for conversion, modality, named in (([], ["XC"], ["(0008,0064) ConversionType"]),
                                        (["SI"], [], ["(0008,0060) Modality"]),
                                        ([], [], ["(0008,0060) Modality", "(0008,0064) ConversionType"])):
        with pytest.raises(RequiredElementMissing) as refused:
            receive.kind_of(MF_TRUE_COLOR_SC, conversion_types=conversion, modalities=modality, names_body_part=False)
        assert refused.value.expression == named


def test_the_table_loads_from_a_copy(tmp_path: Path) -> None:
    assert load_dicom_tables(write(tmp_path, raw())).kinds == dicom_tables().kinds


@pytest.mark.parametrize("change", [
    lambda d: d["kinds"].pop("secondary"),
    lambda d: d["kinds"]["document"].pop("conversionType"),
    lambda d: d["kinds"]["document"].update(conversionType="XX"),
    lambda d: d["kinds"]["clinical"].update(conversionType="SD"),
    lambda d: d["kinds"]["clinical"].update(sopClass="1.2.840.10008.5.1.4.1.1.2"),
    lambda d: d["kinds"]["clinical"].update(burnedInAnnotation="MAYBE"),
    lambda d: d["receive"]["sopClasses"].update({"1.02.3": {"name": "x", "kind": "clinical"}}),
    lambda d: d["receive"]["sopClasses"][SC_IMAGE].update(kind="other"),
    lambda d: d["patientIdentifiers"]["issuers"].append({"issuer": "B", "system": "urn:oid:2.999.1.1"}),
    lambda d: d["patientIdentifiers"].update(missingIssuer="NOPE"),
    lambda d: d["patientIdentifiers"]["issuers"][0].update(issuer="A\\B"),
    lambda d: d["patientIdentifiers"]["issuers"][0].update(system="urn:x:" + "1" * 1019),  # over the bound
    lambda d: d["patientIdentifiers"].update(unknownIssuerPrefix="urn:" + "x" * 253),  # + 768 encoded
    lambda d: d.update(unexpected=True),
    lambda d: d["kinds"]["document"].update(withoutBodySite="paired"),  # unknown or unpaired only
    # the receive rule fails closed (dicomsafety F1): a table that would make it fail open stops start-up
    lambda d: d["receive"]["sopClasses"][SC_IMAGE].update(kind="secondary"),  # both kind and kindBy
    lambda d: d["receive"]["sopClasses"][SC_IMAGE].pop("kindBy"),  # neither
    lambda d: d["receive"]["sopClasses"][SC_IMAGE].update(kindBy=None, kind="secondary"),
    lambda d: d["receive"]["sopClasses"][MF_TRUE_COLOR_SC].update(kindBy=None, kind="document"),
    lambda d: d["receive"]["sopClasses"][ENCAPSULATED_PDF].update(kind="secondary"),
    lambda d: d["receive"]["sopClasses"][SC_IMAGE].update(byConversionType={"SD": "document"}),  # the old keys
    lambda d: d["receive"].pop("secondaryCapture"),
    lambda d: d["receive"]["secondaryCapture"]["bodyPhotoModalities"].remove("ES"),
    lambda d: d["receive"]["secondaryCapture"]["imageModalities"].append("XC"),
    lambda d: d["receive"]["secondaryCapture"]["documentModalities"].append("OP"),
    lambda d: d["receive"]["secondaryCapture"]["imageModalities"].append("OT"),
    lambda d: d["receive"]["secondaryCapture"]["documentModalities"].append("OT"),
    lambda d: d["receive"]["secondaryCapture"]["documentModalities"].append("DX"),  # also an image modality
    lambda d: d["receive"]["secondaryCapture"]["imageConversionTypes"].append("SD"),  # also a document's
    lambda d: d["receive"]["secondaryCapture"]["captureConversionTypes"].append("SI"),
    lambda d: d["receive"]["secondaryCapture"]["captureConversionTypes"].append("XX"),  # not a defined term
    lambda d: d["receive"]["secondaryCapture"]["imageModalities"].append("d x"),
    lambda d: d["receive"]["secondaryCapture"].update(unexpected=["WSD"]),
])
def test_a_bad_table_stops_start_up(tmp_path: Path, change: Any) -> None:
    data = raw()
    change(data)
    with pytest.raises(PolicyError, match="dicom.yaml"):
        load_dicom_tables(write(tmp_path, data))


def test_a_missing_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="not found"):
        load_dicom_tables(tmp_path / "absent.yaml")


def test_a_dicom_table_from_before_the_fail_closed_rule_is_told_what_replaces_it(tmp_path: Path) -> None:
    """Review of the day's merges: an organisation's dicom.yaml with the old ``kind: secondary`` and
    ``byConversionType``/``byModality`` keys was refused as unknown keys, with a "did you mean" that
    pointed elsewhere; the refusal names ``kindBy: secondaryCapture`` and the block to copy."""
    data = raw()
    data["receive"]["sopClasses"]["1.2.840.10008.5.1.4.1.1.7"] = {
        "name": "Secondary Capture Image Storage", "kind": "secondary",
        "byConversionType": {"SD": "document"}, "byModality": {"DOC": "document"}}
    with pytest.raises(PolicyError) as info:
        load_dicom_tables(write(tmp_path, data))
    assert "kindBy: secondaryCapture" in info.value.diagnostics
    assert "receive.secondaryCapture" in info.value.diagnostics
