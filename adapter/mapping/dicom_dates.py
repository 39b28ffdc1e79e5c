"""Whether a DICOM DA or TM value names a real day or time of day, and an offset from UTC a real
zone (PS3.5 6.2, Table 6.2-1).

A DA is ``YYYYMMDD``, "a date of the Gregorian calendar system": eight digits are not enough
(``20240231``, ``20241301`` are none). A TM is ``HH[MM[SS[.F{1,6}]]]`` with HH 00-23, MM 00-59
and SS 00-60 (a leap second): ``2561`` is no time. An offset (a DT's, TimezoneOffsetFromUTC) is
``&ZZXX``, from -1200 to +1400 (as FHIR's dateTime takes them too): ``+2300`` is none. Objects are stored as they are received, as
a PACS stores them, and WADO-RS returns them so; but what the adapter says of them itself, a
QIDO-RS result (PS3.18 F.2: a value of its VR) or a match on one, takes only these (the others
are left out, as values of the wrong form always were: adapter.mapping.dicom_qido), and a query
naming a day or time that is none is not understood.
"""

from __future__ import annotations

import re
from datetime import date

_DA = re.compile(r"(\d{4})(\d{2})(\d{2})", re.ASCII)
_TM = re.compile(r"(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?", re.ASCII)
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})", re.ASCII)


def is_date(text: str) -> bool:
    """``text`` is a DA that names a day: ``YYYYMMDD``, a date of the Gregorian calendar (years
    0001 to 9999, as an ISO date and a FHIR date take them)."""
    found = _DA.fullmatch(text)
    if found is None:
        return False
    try:
        date(*(int(part) for part in found.groups()))
    except ValueError:
        return False
    return True


def is_time(text: str) -> bool:
    """``text`` is a TM that names a time of day: ``HH``, ``HHMM``, ``HHMMSS`` or
    ``HHMMSS.F`` to six fraction digits, HH 00-23, MM 00-59, SS 00-60."""
    found = _TM.fullmatch(text)
    if found is None:
        return False
    hours, minutes, seconds = found.groups()
    return int(hours) <= 23 and int(minutes or 0) <= 59 and int(seconds or 0) <= 60


def is_utc_offset(text: str) -> bool:
    """``text`` is an offset from UTC that names a zone: ``&ZZXX``, ``&`` ``+`` or ``-``, XX at
    most 59, from -1200 to +1400 (PS3.5 Table 6.2-1, DT)."""
    found = _OFFSET.fullmatch(text)
    if found is None:
        return False
    sign, hours, minutes = found.groups()
    return int(minutes) <= 59 and int(hours + minutes) <= (1400 if sign == "+" else 1200)


__all__ = ["is_date", "is_time", "is_utc_offset"]
