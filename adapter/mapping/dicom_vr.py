"""Whether a data element is encoded under a Value Representation its tag allows.

In an explicit VR transfer syntax each element carries its VR, and PS3.5 §7.1.2 requires it to be
the one the data dictionary (PS3.6) gives the tag; a few tags allow one of several (``US or
SS``, ``OB or OW``…). An element under another VR is not only malformed: the de-identification
(adapter.mapping.dicom_deid) goes by VR (every PN, every free text, every date, every UI), so a
StudyInstanceUID sent as LO, or a name sent as LO under a PN tag, would pass through a TRAIN or
HRESCH release unchanged. The ingest therefore refuses such an object, and the release refuses
to clean one stored before it did.

Private and unknown tags have no dictionary VR: whatever they carry is allowed here (the
releases remove every private element).

Some mismatches are common in what modalities and PACS send and change nothing the rules do: a
CS sent as LO, an SH as LO, a DS as IS, a US as SS. Both VRs then belong to one class of
:data:`INTERCHANGEABLE` VRs, none of which any rule goes by (no PN, free text, date, UI or SQ),
so the element is cleaned exactly as under its own VR: :func:`vr_tolerated` accepts it, and a
release that writes a value into it (an emptied or dummy attribute, a pseudonym) writes it
under the dictionary's VR (:func:`dictionary_vr`).
"""

from __future__ import annotations

import functools

from pydicom.datadict import dictionary_VR, tag_for_keyword


@functools.lru_cache(maxsize=4096)
def allowed_vrs(tag: int) -> frozenset[str] | None:
    """The VRs the dictionary allows ``tag`` (the alternatives of ``US or SS`` and the
    ambiguous string itself, as pydicom keeps it before resolving); None when the dictionary
    has no entry (private, unknown)."""
    if (tag >> 16) % 2 == 1:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return frozenset({vr, *vr.split(" or ")})


#: Classes of VRs no de-identification rule tells apart (module docstring): short strings,
#: binary integers, binary floats, and the two bulk binaries.
INTERCHANGEABLE: tuple[frozenset[str], ...] = (
    frozenset({"AE", "AS", "CS", "DS", "IS", "LO", "SH"}),
    frozenset({"SL", "SS", "SV", "UL", "US", "UV"}),
    frozenset({"FD", "FL"}),
    frozenset({"OB", "OW"}),
)


def vr_allowed(tag: int, vr: str | None) -> bool:
    """``vr`` is one the dictionary gives ``tag`` (or the tag has no dictionary entry)."""
    allowed = allowed_vrs(int(tag))
    return allowed is None or vr in allowed


def _interchangeable(allowed: frozenset[str], vr: str | None) -> bool:
    plain = {v for v in allowed if " " not in v}
    return any(vr in group and plain <= group for group in INTERCHANGEABLE)


def vr_tolerated(tag: int, vr: str | None) -> bool:
    """:func:`vr_allowed`, or ``vr`` and every VR the dictionary gives ``tag`` are of one class
    of :data:`INTERCHANGEABLE` VRs (module docstring)."""
    allowed = allowed_vrs(int(tag))
    return allowed is None or vr in allowed or _interchangeable(allowed, vr)


def dictionary_vr(tag: int) -> str | None:
    """The VR to write a new value of a public ``tag`` under: the dictionary's (the first of
    ``US or SS`` alternatives); None for a private or unknown tag."""
    if allowed_vrs(int(tag)) is None:
        return None
    return str(dictionary_VR(int(tag))).split(" or ")[0]


class NonConformingVR(ValueError):
    """An element of a public tag under a VR its dictionary entry does not allow."""

    def __init__(self, tag: int, vr: str | None) -> None:
        allowed = allowed_vrs(int(tag)) or frozenset()
        self.tag = int(tag)
        self.vr = vr
        super().__init__(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has the VR {vr}, not "
                         f"{' or '.join(sorted(v for v in allowed if ' ' not in v))}")


_HEX = frozenset("0123456789abcdefABCDEF")


def attribute_tag(name: str) -> int | None:
    """The tag of the attribute ``name`` names, as a DICOMweb query does (PS3.18 8.3.4.1): its
    keyword in the data dictionary (PS3.6), or its tag as 8 hexadecimal digits (private ones
    too); None for anything else."""
    if len(name) == 8 and set(name) <= _HEX:
        return int(name, 16)
    return tag_for_keyword(name) if name.isascii() and name.isalnum() else None
