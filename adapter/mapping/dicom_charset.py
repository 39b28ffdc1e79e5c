"""Specific Character Set (0008,0005) values: the defined terms of PS3.3 C.12.1.1.2.

A value outside them says nothing the adapter can rely on: pydicom decodes the object's text as
its default repertoire then (a guess, right only when the bytes happen to be what it guesses),
and the adapter says so (adapter.services.dicom_ingest) rather than store the guess silently.
"""

from __future__ import annotations

from pydicom import Dataset

_SINGLE_BYTE = ("100", "101", "109", "110", "144", "127", "126", "138", "148", "203", "13", "166")

#: PS3.3 Tables C.12-2 to C.12-5: single-byte without and with code extensions, multi-byte with
#: code extensions, and those without (UTF-8, GB18030, GBK); empty is the default repertoire.
DEFINED_TERMS = frozenset({
    "", *(f"ISO_IR {n}" for n in _SINGLE_BYTE), "ISO 2022 IR 6", *(f"ISO 2022 IR {n}" for n in _SINGLE_BYTE),
    "ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58",
    "ISO_IR 192", "GB18030", "GBK",
})

#: At most this many characters of a value are quoted (a log line stays short).
_QUOTED_MAX = 32


def undefined_character_sets(ds: Dataset) -> list[str]:
    """The values of ``ds``'s Specific Character Set that are no defined term, each quoted (repr,
    control characters escaped) and cut to 32 characters; empty when all are defined (or it
    is absent)."""
    value = ds.get("SpecificCharacterSet")
    if value is None:
        return []
    values = [value] if isinstance(value, (str, bytes)) else list(value)
    out = []
    for v in values:
        text = v.decode("latin-1") if isinstance(v, bytes) else str(v)
        if text.strip() not in DEFINED_TERMS:
            out.append(repr(text[:_QUOTED_MAX]))
    return out


__all__ = ["DEFINED_TERMS", "undefined_character_sets"]
