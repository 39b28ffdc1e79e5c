"""The length of the values the adapter keeps as text from a received object, against the
maximum their Value Representation allows (PS3.5 6.2, Table 6.2-1).

A received object is kept as received, and most values pydicom would warn about are stored
with it (a date that is no date is left out of the record and the index, as an absent one is).
The values below are different: the adapter copies them as they are into its records, its
index and what it sends on, so one longer than its VR allows would make a record no DICOM peer
can take back (a PatientID of 90 characters is a patient identifier the forwarder can never put
in a PatientID), or an index answering QIDO-RS with a value no DICOM attribute holds. An object
holding one is refused, 0xC000 (the value is not of its VR, as one of odd length is not),
naming the tag, never the value (it is often the patient's).

Checked (:data:`CHECKED`): who and what the object is (PatientID, IssuerOfPatientID, the SOP
Class, SOP Instance, Study and Series UIDs) and the text the index and the records keep as
sent (PatientName, AccessionNumber, Modality, StudyDescription, StudyID, SeriesDescription,
ReferringPhysicianName; InstitutionName, the manufacturer and model names, OperatorsName and
DocumentTitle the FHIR records show). Each at the top level of the dataset, under its
dictionary VR (an element sent under an interchangeable VR, adapter.mapping.dicom_vr, is kept
and sent on under the dictionary's), each value of a multi-valued one on its own, a PN per
component group. Not checked: the other elements, kept as received and released as they are
(modalities send an over-long DS or LO in attributes nobody here reads, and refusing the image
for it would lose it); values the adapter parses (dates, times, numbers, codes it looks up),
which are left out when they do not parse; items of sequences.

Lengths are in characters of the decoded value (PS3.5 6.2: "chars"), its padding (trailing
spaces, a UI's NUL) aside, so a name in a multi-byte character set is held to 64 characters,
not bytes. Cost: one dictionary lookup and a ``len`` per checked value, on the dataset pydicom
read already (about 20 attributes whatever the size of the object).
"""

from __future__ import annotations

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from adapter.errors import InvalidInput

#: The longest value of each VR that has a maximum, in characters (PS3.5 Table 6.2-1); a PN's
#: per component group (alphabetic, ideographic, phonetic: ``=`` between them).
MAX_LENGTH: dict[str, int] = {"AE": 16, "AS": 4, "CS": 16, "DA": 8, "DS": 16, "DT": 26, "IS": 12, "LO": 64,
                              "LT": 10240, "PN": 64, "SH": 16, "ST": 1024, "TM": 14, "UI": 64}

#: The attributes whose values are checked (module docstring).
KEYWORDS = (
    "PatientID", "IssuerOfPatientID", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
    "PatientName", "AccessionNumber", "Modality", "StudyDescription", "StudyID", "SeriesDescription",
    "ReferringPhysicianName", "InstitutionName", "Manufacturer", "ManufacturerModelName",
    "SecondaryCaptureDeviceManufacturer", "SecondaryCaptureDeviceManufacturerModelName", "OperatorsName",
    "DocumentTitle",
)


def _checked(keyword: str) -> tuple[str, int, str]:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return keyword, tag, str(dictionary_VR(tag))


#: (keyword, tag, dictionary VR) of each of :data:`KEYWORDS`.
CHECKED: tuple[tuple[str, int, str], ...] = tuple(_checked(keyword) for keyword in KEYWORDS)


def check_value_lengths(ds: Dataset) -> None:
    """Every value of the attributes :data:`CHECKED` of ``ds`` is within its VR's maximum
    length (module docstring).

    Raises:
        InvalidInput: naming the first attribute with a value too long (0xC000).
    """
    for keyword, tag, vr in CHECKED:
        element = ds.get(tag)
        if element is None:
            continue
        value = element.value
        limit = MAX_LENGTH[vr]
        for one in value if isinstance(value, (MultiValue, list, tuple)) else (value,):
            if one is None:
                continue
            text = (one.decode("latin-1") if isinstance(one, bytes) else str(one)).rstrip(" \x00")
            if len(text) <= limit:  # the usual case: no split
                continue
            if vr != "PN" or any(len(group) > limit for group in text.split("=")):
                where = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
                per = " per component group" if vr == "PN" else ""
                raise InvalidInput(f"{keyword} {where} is longer than its VR {vr} allows ({limit} characters{per}, "
                                   "PS3.5 6.2)", expression=f"{where} {keyword}")


__all__ = ["CHECKED", "KEYWORDS", "MAX_LENGTH", "check_value_lengths"]
