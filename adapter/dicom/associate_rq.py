"""An A-ASSOCIATE-RQ PDU (PS3.8 9.3.2) without the items this SCP does not recognise.

pynetdicom decodes a variable item or a User Information sub-item of a type it does not know as
an invalid PDU and aborts the association; dcmtk's ``storescp`` (and so Orthanc) accepts such an
association and ignores them (measured: a sub-item of type 5FH beside Maximum Length and
Implementation Class UID). A PACS that adds a vendor's sub-item to its requests is therefore
accepted here as it is by those peers: the unrecognised items are removed before pynetdicom
decodes the PDU, and their types (never their content) are reported for the log.

Anything that does not parse as items (a length running past its parent) is returned unchanged,
for pynetdicom to refuse as before.
"""

from __future__ import annotations

import struct

A_ASSOCIATE_RQ = 0x01
USER_INFORMATION = 0x50
#: Variable items of an A-ASSOCIATE-RQ (PS3.8 Table 9-11): Application Context, Presentation
#: Context (RQ), User Information.
REQUEST_ITEMS = frozenset({0x10, 0x20, USER_INFORMATION})
#: User Information sub-items (PS3.8 Annex D, PS3.7 Annex D.3.3): Maximum Length, Implementation
#: Class UID, Asynchronous Operations Window, SCP/SCU Role Selection, Implementation Version
#: Name, SOP Class Extended Negotiation, SOP Class Common Extended Negotiation, User Identity
#: (RQ, and AC, which pynetdicom decodes too).
USER_SUB_ITEMS = frozenset(range(0x51, 0x5A))
_FIXED = 6 + 68  # PDU header; protocol version, reserved, called and calling AE titles, reserved


def _items(data: bytes, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """(type, start, end) of each item in ``data[start:end]``; None if they do not tile it."""
    found = []
    pos = start
    while pos < end:
        if end - pos < 4:
            return None
        kind = data[pos]
        (length,) = struct.unpack_from(">H", data, pos + 2)
        stop = pos + 4 + length
        if stop > end:
            return None
        found.append((kind, pos, stop))
        pos = stop
    return found


def without_unrecognised_items(pdu: bytes) -> tuple[bytes, list[int]]:
    """``pdu`` without its unrecognised variable items and User Information sub-items, and the
    types removed (empty, and ``pdu`` itself, when there are none or it is not an A-ASSOCIATE-RQ
    whose items parse)."""
    if len(pdu) < _FIXED or pdu[0] != A_ASSOCIATE_RQ:
        return pdu, []
    items = _items(pdu, _FIXED, len(pdu))
    if items is None:
        return pdu, []
    removed: list[int] = []
    body = bytearray(pdu[6:_FIXED])
    for kind, start, stop in items:
        if kind not in REQUEST_ITEMS:
            removed.append(kind)
            continue
        if kind != USER_INFORMATION:
            body += pdu[start:stop]
            continue
        sub_items = _items(pdu, start + 4, stop)
        if sub_items is None:
            return pdu, []
        kept = bytearray()
        for sub_kind, sub_start, sub_stop in sub_items:
            if sub_kind in USER_SUB_ITEMS:
                kept += pdu[sub_start:sub_stop]
            else:
                removed.append(sub_kind)
        body += struct.pack(">BBH", USER_INFORMATION, 0, len(kept)) + kept
    if not removed:
        return pdu, []
    return pdu[:2] + struct.pack(">L", len(body)) + bytes(body), removed
