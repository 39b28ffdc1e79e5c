"""The Code Meaning (0008,0104) a restricted DICOM copy writes for a coded concept: never the
sender's words (privacy review F2: "Forearm of Jane Doe" as the meaning of SNOMED 14975008).

PS3.3 8.8 (Code Sequence Macro): a code is identified by its Coding Scheme Designator and its
Code Value (or Long Code Value, or URN Code Value); the Code Meaning is text for people, which a
sender may fill with anything. The meaning is therefore looked up, in order:

1. the adapter's own tables (``tables``: mappings/body_sites.yaml, as
   adapter.mapping.dicom_photo.code_meanings gives them), so a copy shows what the FHIR views
   and the adapter's own objects show;
2. the PS3.16 codes pydicom carries (``pydicom.sr.codedict``: SCT, DCM, LN, UCUM…; the first
   keyword's meaning where one code has several), the standard's own text;
3. else the code value itself (cut to LO's 64 characters): the copy keeps that anyway, so it adds
   nothing, and the item stays valid (Code Meaning is Type 1).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from pydicom.dataset import Dataset

#: PS3.5 6.2: LO holds 64 characters.
_LO = 64


@functools.cache
def _standard(designator: str) -> Mapping[str, str]:
    """Code value -> meaning of one coding scheme in pydicom's PS3.16 code dictionary (loaded once
    a scheme, on first use: SNOMED CT's is some 10,000 codes); empty for a scheme it lacks.
    Imported here, at the first restricted copy of a coded item: the dictionary's module holds
    every PS3.16 concept, some 20 MB that a process serving no restricted DICOM copy need not hold."""
    from pydicom.sr.codedict import Collection

    try:
        concepts = Collection(designator).concepts
    except (ValueError, KeyError, AttributeError):
        return {}
    meanings: dict[str, str] = {}
    for code in concepts.values():
        meanings.setdefault(str(code.value), str(code.meaning))
    return meanings


def _text(value: object) -> str:
    return str(value).strip() if isinstance(value, str) else ""


def code_meaning(item: Dataset, tables: Mapping[tuple[str, str], str]) -> str | None:
    """The meaning of the code ``item`` holds (module docstring); None when it holds no code value
    at all (then the item names no concept and its meaning says nothing the copy may keep).

    ``tables``: (Coding Scheme Designator, Code Value) -> meaning, the adapter's own."""
    designator = _text(item.get("CodingSchemeDesignator"))
    value = _text(item.get("CodeValue")) or _text(item.get("LongCodeValue")) or _text(item.get("URNCodeValue"))
    if not value:
        return None
    known = tables.get((designator, value)) or (_standard(designator).get(value) if designator else None)
    return (known or value)[:_LO]


__all__ = ["code_meaning"]
