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
"""

from __future__ import annotations

import functools

from pydicom.datadict import dictionary_VR


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


def vr_allowed(tag: int, vr: str | None) -> bool:
    allowed = allowed_vrs(int(tag))
    return allowed is None or vr in allowed


class NonConformingVR(ValueError):
    """An element of a public tag under a VR its dictionary entry does not allow."""

    def __init__(self, tag: int, vr: str | None) -> None:
        allowed = allowed_vrs(int(tag)) or frozenset()
        self.tag = int(tag)
        self.vr = vr
        super().__init__(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) has the VR {vr}, not "
                         f"{' or '.join(sorted(v for v in allowed if ' ' not in v))}")
