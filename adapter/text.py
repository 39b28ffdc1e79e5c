"""Checks on text from outside (headers, query parameters, EXIF and DICOM values) shared by the
edges and the mappings."""

from __future__ import annotations

import re

#: C0 control characters, U+0000 to U+001F.
_C0 = re.compile(r"[\x00-\x1f]")
#: A FHIR id (https://hl7.org/fhir/R4/datatypes.html#id).
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)


def is_fhir_id(text: str) -> bool:
    """``text`` is a FHIR id (datatypes.html#id: 1 to 64 of A-Z, a-z, 0-9, '-' and '.'), what a
    route's ``{id}`` must be to be named (an audit, a message) as sent."""
    return _FHIR_ID.fullmatch(text) is not None


def is_digits(text: str) -> bool:
    """Only ASCII 0-9, at least one. ``str.isdigit`` also takes ², ³ or ①, which ``int``
    refuses (a ValueError where a clear refusal was meant), and other scripts' digits, which
    no standard field here allows."""
    return text.isascii() and text.isdigit()


def pixel_count(text: str, cap: int) -> int | None:
    """A number of pixels as a query gives it (WADO-URI rows/columns, a thumbnail's viewport):
    ASCII digits naming at least 1 (read from the first six), at most ``cap``; None when the
    text is not one."""
    if not is_digits(text) or int(text[:6]) < 1:
        return None
    return min(int(text[:6]), cap)


#: Why a search (FHIR, QIDO-RS) whose value holds U+0000 is refused (400): no stored value holds
#: it, and the record store refuses it in any value it is given ("nothing was saved", a write's
#: refusal, was a read's answer too: security review finding 6).
NUL_IN_SEARCH = "a search value holds the character U+0000, which no stored value holds (nor FHIR strings, nor DICOM)"


def has_control_character(text: str) -> bool:
    """``text`` holds a C0 control character. No DICOM short string, long string, code string or
    person name has one (PS3.5 6.1.2.3, 6.2: ESC only, for the code extensions of ISO 2022,
    which a decoded value no longer holds), and FHIR strings are not to (R4 datatypes "string":
    below U+0020 only TAB, CR and LF)."""
    return _C0.search(text) is not None
