"""What a DICOM object says of its series and of itself that a QIDO-RS result returns (PS3.18
Table 10.6.3-4 Series, Table 10.6.3-5 Instance, "if present in the Instance"), and of its study
(Table 10.6.3-3: ReferringPhysicianName, PatientBirthDate, PatientSex, StudyID), read once from
the object (at ingest, or at start for an instance stored before: adapter.store.schema 13 and 14)
so that a search answers from the store's index, not by opening every object.

A value is kept only when it is one of its VR (PS3.5 6.2): an IS an integer within its range, a
US within 0..65535, a DA a day of the calendar and a TM a time of day (adapter.mapping.dicom_dates:
``20240231`` is neither), an SH (TimezoneOffsetFromUTC ``±HHMM``, -1200 to +1400), LO or CS
(upper case letters, digits, space and ``_``) of its form and length, a PN as sent (up to three
component groups); none with a control character (adapter.text.has_control_character); anything else is left out (the object keeps it as sent, and WADO-RS shows it
there). NumberOfFrames only when the object has it: a single-frame object without it is not given
one its retrieved copy would not show.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from adapter.mapping.dicom_dates import is_date, is_time, is_utc_offset
from adapter.model.dicom import InstanceAttributes
from adapter.text import has_control_character

_IS_RANGE = (-(2**31), 2**31 - 1)
_CS = re.compile(r"^[A-Z0-9_ ]{1,16}$", re.ASCII)
#: The longest PN kept: 5 components of 64 characters, 3 groups (as PatientName at ingest).
_PN_LIMIT = 1000


def instance_attributes(ds: Dataset) -> InstanceAttributes:
    """The QIDO-RS attributes ``ds`` carries (module docstring); never raises on a bad value."""
    return InstanceAttributes(
        series_number=_integer(ds, "SeriesNumber", *_IS_RANGE),
        series_description=_text(ds, "SeriesDescription", 64),
        performed_procedure_step_start_date=_matching(ds, "PerformedProcedureStepStartDate", is_date),
        performed_procedure_step_start_time=_matching(ds, "PerformedProcedureStepStartTime", is_time),
        timezone_offset_from_utc=_matching(ds, "TimezoneOffsetFromUTC", is_utc_offset),
        instance_number=_integer(ds, "InstanceNumber", *_IS_RANGE),
        rows=_integer(ds, "Rows", 0, 65535),
        columns=_integer(ds, "Columns", 0, 65535),
        bits_allocated=_integer(ds, "BitsAllocated", 0, 65535),
        number_of_frames=_integer(ds, "NumberOfFrames", 1, _IS_RANGE[1]),
        referring_physician_name=_text(ds, "ReferringPhysicianName", _PN_LIMIT),
        patient_birth_date=_matching(ds, "PatientBirthDate", is_date),
        patient_sex=_matching(ds, "PatientSex", _CS.match),
        study_id=_text(ds, "StudyID", 16))


def _value(ds: Dataset, keyword: str) -> Any:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert: not one of its VR, left out
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        return None  # these are single-valued (VM 1): several values are not one of them
    return value


def _integer(ds: Dataset, keyword: str, low: int, high: int) -> int | None:
    value = _value(ds, keyword)
    if value is None or value == "" or isinstance(value, bool) or \
            (isinstance(value, float) and not value.is_integer()):
        return None  # a decimal IS ("1.5", pydicom's ISfloat) is not one
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if low <= number <= high else None


def _text(ds: Dataset, keyword: str, limit: int) -> str | None:
    value = _value(ds, keyword)
    text = str(value if value is not None else "").strip(" \x00")
    return text if text and len(text) <= limit and "\\" not in text and not has_control_character(text) else None


def _matching(ds: Dataset, keyword: str, conforms: Callable[[str], object]) -> str | None:
    text = _text(ds, keyword, 16)
    return text if text is not None and conforms(text) else None


__all__ = ["instance_attributes"]
