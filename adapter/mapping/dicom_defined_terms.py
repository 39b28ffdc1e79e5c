"""Coded strings (CS) of a released copy kept only as their defined terms (review of the merges F4).

A CS holds upper-case words, and some CS attributes fit any ("JANE DOE"): a restricted copy
(TRAIN, HRESCH: adapter.mapping.dicom_deid) keeps no word the sender wrote, so each of these is
checked against the terms or grammar the standard gives it, and what is not one goes:

* ImageType (PS3.3 C.7.6.1.1.2, VM 2-n): value 1 ORIGINAL or DERIVED, value 2 PRIMARY or
  SECONDARY (Enumerated Values); values 3 on are implementation-defined (free words): dropped.
  A value 1 or 2 not of its terms is written DERIVED or SECONDARY (what claims least: ImageType
  is Type 1 where the adapter's objects carry it).
* ContentLabel (C.10.9, Type 1 where it occurs): a label, in the sender's words: the adapter's own.
* ViewPosition (C.8.11.5 DX Positioning, C.8.1.1 CR Series): its Defined Terms, and the
  mammography views' abbreviations (PS3.16 CID 4014): kept only when one of them, else removed.
* PatientOrientation (C.7.6.1.1.1, VM 2): each value letters of A, P, R, L, H, F (anterior,
  posterior, right, left, head, foot; a biped's): kept only when two such values, else emptied
  (Type 2C in the General Image module: present, empty).
"""

from __future__ import annotations

import re

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

#: The value ContentLabel gets (as adapter.mapping.dicom_deid.DUMMY_VALUE: a CS may hold it).
CONTENT_LABEL = "DEIDENTIFIED"
IMAGE_TYPE_VALUE_1 = ("ORIGINAL", "DERIVED")
IMAGE_TYPE_VALUE_2 = ("PRIMARY", "SECONDARY")
#: ViewPosition: CR/DX Defined Terms, then the mammography views (CID 4014 abbreviations).
VIEW_POSITIONS = frozenset({
    "AP", "PA", "LL", "RL", "RLD", "LLD", "RLO", "LLO",
    "CC", "FB", "LM", "LMO", "ML", "MLO", "SIO", "XCC", "XCCL", "XCCM",
})
_PATIENT_DIRECTION = re.compile(r"^[APRLHF]{1,3}$")
#: The attributes this module writes (adapter.mapping.dicom_deid gives them their dictionary VR).
CHECKED = frozenset({"ImageType", "ContentLabel", "ViewPosition", "PatientOrientation"})


def keep_defined_terms(ds: Dataset, elem: DataElement) -> None:
    """``elem`` (of :data:`CHECKED`) in ``ds`` as its defined terms allow (module docstring)."""
    keyword = elem.keyword
    values = [str(v).strip() for v in (elem.value if elem.VM > 1 else [elem.value] if elem.value else [])]
    if keyword == "ContentLabel":
        elem.value = CONTENT_LABEL
    elif keyword == "ImageType" and values:
        first = values[0] if values and values[0] in IMAGE_TYPE_VALUE_1 else IMAGE_TYPE_VALUE_1[1]
        second = values[1] if len(values) > 1 and values[1] in IMAGE_TYPE_VALUE_2 else IMAGE_TYPE_VALUE_2[1]
        elem.value = [first, second]
    elif keyword == "ViewPosition" and values and (len(values) > 1 or values[0] not in VIEW_POSITIONS):
        del ds[elem.tag]
    elif keyword == "PatientOrientation" and not (
            len(values) == 2 and all(_PATIENT_DIRECTION.match(v) for v in values)):
        elem.value = ""


__all__ = ["CHECKED", "CONTENT_LABEL", "IMAGE_TYPE_VALUE_1", "IMAGE_TYPE_VALUE_2", "VIEW_POSITIONS",
           "keep_defined_terms"]
