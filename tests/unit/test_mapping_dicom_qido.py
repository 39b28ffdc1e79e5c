"""The QIDO-RS series and instance attributes read from an object (adapter.mapping.dicom_qido):
the values of their VR, and nothing for a value that is not one (never an error: the object is
stored as sent, and its retrieve shows it there)."""

from __future__ import annotations

import warnings

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from adapter.mapping.dicom_qido import instance_attributes
from adapter.model.dicom import InstanceAttributes


def dataset(**attrs: object) -> Dataset:
    """A dataset with these values; one pydicom refuses to set is kept raw, as read from a file
    (then converted when read, and refused there)."""
    ds = Dataset()
    with warnings.catch_warnings():  # pydicom warns of the invalid values these tests give
        warnings.simplefilter("ignore")
        for keyword, value in attrs.items():
            try:
                setattr(ds, keyword, value)
            except ValueError:
                tag = Tag(keyword)
                raw = str(value).encode() + b" " * (len(str(value)) % 2)
                ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    return ds


def read(ds: Dataset) -> InstanceAttributes:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return instance_attributes(ds)


def test_every_attribute_of_a_multiframe_object() -> None:
    ds = dataset(SeriesNumber="7", SeriesDescription="Wound series ", PerformedProcedureStepStartDate="20240102",
                 PerformedProcedureStepStartTime="093000.5", TimezoneOffsetFromUTC="-0500", InstanceNumber=" 2",
                 Rows=480, Columns=640, BitsAllocated=8, NumberOfFrames="3")
    assert read(ds) == InstanceAttributes(
        series_number=7, series_description="Wound series", performed_procedure_step_start_date="20240102",
        performed_procedure_step_start_time="093000.5", timezone_offset_from_utc="-0500", instance_number=2,
        rows=480, columns=640, bits_allocated=8, number_of_frames=3)


def test_the_last_day_and_second_there_are_are_kept() -> None:
    """A leap day, a leap second (SS 60), the last instant of a day: real days and times."""
    ds = dataset(PerformedProcedureStepStartDate="20240229", PerformedProcedureStepStartTime="235960.999999",
                 PatientBirthDate="19991231", TimezoneOffsetFromUTC="+1400")
    assert read(ds) == InstanceAttributes(performed_procedure_step_start_date="20240229",
                                          performed_procedure_step_start_time="235960.999999",
                                          patient_birth_date="19991231", timezone_offset_from_utc="+1400")
    assert read(dataset(TimezoneOffsetFromUTC="-1200")).timezone_offset_from_utc == "-1200"


def test_none_for_an_object_without_them() -> None:
    assert read(Dataset()) == InstanceAttributes()


@pytest.mark.parametrize("attrs", [
    {"InstanceNumber": "1.5"}, {"InstanceNumber": "two"}, {"InstanceNumber": "99999999999"},
    {"InstanceNumber": ["1", "2"]}, {"NumberOfFrames": "0"}, {"SeriesDescription": "x" * 65},
    {"SeriesDescription": ""}, {"PerformedProcedureStepStartDate": "2024"},
    {"PerformedProcedureStepStartTime": "9:30"}, {"TimezoneOffsetFromUTC": "CET"},
    # of the form, naming no day or time (PS3.5 6.2: a Gregorian date; HH 00-23, MM 00-59, SS 00-60)
    {"PerformedProcedureStepStartDate": "20240231"}, {"PerformedProcedureStepStartDate": "20241301"},
    {"PerformedProcedureStepStartDate": "20230229"}, {"PerformedProcedureStepStartDate": "00000101"},
    {"PerformedProcedureStepStartTime": "2400"}, {"PerformedProcedureStepStartTime": "2561"},
    {"PerformedProcedureStepStartTime": "235961"},
    {"TimezoneOffsetFromUTC": "+9999"}, {"TimezoneOffsetFromUTC": "+0160"}, {"TimezoneOffsetFromUTC": "-1201"},
    {"TimezoneOffsetFromUTC": "+1401"},  # PS3.5 6.2 DT: an offset of -1200 to +1400
    {"SeriesDescription": "Wound\x08 series"}, {"SeriesDescription": "Wound\x1b series"},  # no LO has C0 controls
])
def test_a_value_that_is_not_one_of_its_vr_is_left_out(attrs: dict[str, object]) -> None:
    assert read(dataset(**attrs)) == InstanceAttributes()


def test_the_study_attributes_of_a_received_object() -> None:
    """PS3.18 Table 10.6.3-3: ReferringPhysicianName as sent (a PN of up to three groups),
    PatientBirthDate, PatientSex and StudyID when of their VR."""
    ds = dataset(ReferringPhysicianName="Welby^Marcus^^Dr.=\u30a6\u30a7\u30eb\u30d3\u30fc", PatientBirthDate="19700521",
                 PatientSex="F ", StudyID=" S-42")
    assert read(ds) == InstanceAttributes(
        referring_physician_name="Welby^Marcus^^Dr.=\u30a6\u30a7\u30eb\u30d3\u30fc", patient_birth_date="19700521",
        patient_sex="F", study_id="S-42")


@pytest.mark.parametrize("attrs", [
    {"ReferringPhysicianName": ""}, {"ReferringPhysicianName": ["A^B", "C^D"]}, {"PatientBirthDate": "1970"},
    {"PatientBirthDate": "19700521-19710101"}, {"PatientBirthDate": "19xx0101"}, {"PatientBirthDate": "20240231"},
    {"PatientBirthDate": "19701301"}, {"PatientSex": "female"}, {"PatientSex": "X" * 17},
    {"StudyID": "x" * 17}, {"StudyID": ""}, {"StudyID": "S\x0142"}, {"ReferringPhysicianName": "Wel\x07by^Marcus"},
])
def test_a_study_value_that_is_not_one_of_its_vr_is_left_out(attrs: dict[str, object]) -> None:
    assert read(dataset(**attrs)) == InstanceAttributes()
