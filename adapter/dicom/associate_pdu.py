"""An A-ASSOCIATE-RQ or -AC PDU (PS3.8 9.3.2, 9.3.3) without the items pynetdicom does not
recognise.

pynetdicom decodes a variable item or a User Information sub-item of a type it does not know as
an invalid PDU and aborts the association; dcmtk (``storescp``, ``storescu``, and so Orthanc)
ignores them (measured for storescp: sub-items of types 5FH and 60H beside Maximum Length and
Implementation Class UID). A PACS that adds a vendor's sub-item to its request (the SCP,
adapter.dicom.scp) or to its acceptance (the SCU, adapter.dicom.scu) is therefore served as those
peers serve it: the unrecognised items are removed before pynetdicom decodes the PDU, and their
types (never their content) are reported for the log.

Anything that does not parse as items (a length running past its parent) is returned unchanged,
for pynetdicom to refuse as before.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import A_ABORT, A_P_ABORT

log = logging.getLogger("adapter.dicom")

A_ASSOCIATE_RQ, A_ASSOCIATE_AC = 0x01, 0x02
USER_INFORMATION = 0x50
#: Variable items (PS3.8 Tables 9-11 and 9-17): Application Context, Presentation Context (RQ in
#: a request, AC in an acceptance), User Information.
VARIABLE_ITEMS = {A_ASSOCIATE_RQ: frozenset({0x10, 0x20, USER_INFORMATION}),
                  A_ASSOCIATE_AC: frozenset({0x10, 0x21, USER_INFORMATION})}
#: User Information sub-items (PS3.8 Annex D, PS3.7 Annex D.3.3): Maximum Length, Implementation
#: Class UID, Asynchronous Operations Window, SCP/SCU Role Selection, Implementation Version
#: Name, SOP Class Extended Negotiation, SOP Class Common Extended Negotiation, User Identity
#: (RQ, and AC, which pynetdicom decodes too).
USER_SUB_ITEMS = frozenset(range(0x51, 0x5A))
#: The sub-items of each item whose sub-items are filtered, and how many bytes of fields come
#: before them: a Presentation Context (RQ: ID, reserved; Abstract and Transfer Syntax; AC: ID,
#: reserved, result, reserved; Transfer Syntax, PS3.8 9.3.2.2, 9.3.3.2) and User Information.
SUB_ITEMS: dict[int, tuple[int, frozenset[int]]] = {
    0x20: (4, frozenset({0x30, 0x40})),
    0x21: (4, frozenset({0x40})),
    USER_INFORMATION: (0, USER_SUB_ITEMS),
}
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
    """``pdu`` without its unrecognised variable items and the unrecognised sub-items of its
    Presentation Context and User Information items, and the types removed (empty, and ``pdu``
    itself, when there are none or it is not an A-ASSOCIATE-RQ or -AC whose items parse)."""
    known = VARIABLE_ITEMS.get(pdu[0]) if pdu else None
    if known is None or len(pdu) < _FIXED:
        return pdu, []
    items = _items(pdu, _FIXED, len(pdu))
    if items is None:
        return pdu, []
    removed: list[int] = []
    body = bytearray(pdu[6:_FIXED])
    for kind, start, stop in items:
        if kind not in known:
            removed.append(kind)
            continue
        if kind not in SUB_ITEMS:
            body += pdu[start:stop]
            continue
        fields, recognised = SUB_ITEMS[kind]
        if stop - start < 4 + fields:
            return pdu, []
        sub_items = _items(pdu, start + 4 + fields, stop)
        if sub_items is None:
            return pdu, []
        kept = bytearray(pdu[start + 4:start + 4 + fields])
        for sub_kind, sub_start, sub_stop in sub_items:
            if sub_kind in recognised:
                kept += pdu[sub_start:sub_stop]
            else:
                removed.append(sub_kind)
        body += pdu[start:start + 2] + struct.pack(">H", len(kept)) + kept
    if not removed:
        return pdu, []
    return pdu[:2] + struct.pack(">L", len(body)) + bytes(body), removed


def lacks_user_information(pdu: bytes) -> bool:
    """Whether an A-ASSOCIATE-RQ whose items parse has no User Information item (PS3.8 9.3.2:
    its variable items are one Application Context item, one or more Presentation Context items
    and one User Information item; PS3.7 D.3.3.1: the Maximum Length a peer can receive is
    negotiated there). False when the items do not parse: pynetdicom refuses the PDU as it is."""
    if len(pdu) < _FIXED or pdu[0] != A_ASSOCIATE_RQ:
        return False
    items = _items(pdu, _FIXED, len(pdu))
    return items is not None and not any(kind == USER_INFORMATION for kind, _, _ in items)


def even_context_ids(pdu: bytes) -> list[int]:
    """The presentation context IDs of an A-ASSOCIATE-RQ that are not odd (PS3.8 9.3.2.2: odd
    integers 1 to 255); empty when there are none or the items do not parse (pynetdicom then
    refuses the PDU as it is)."""
    if len(pdu) < _FIXED or pdu[0] != A_ASSOCIATE_RQ:
        return []
    items = _items(pdu, _FIXED, len(pdu)) or []
    return [pdu[start + 4] for kind, start, stop in items if kind == 0x20 and stop > start + 4 and not pdu[start + 4] % 2]


class NegotiationDUL(DULServiceProvider):
    """pynetdicom's DUL, except that a received A-ASSOCIATE-RQ or -AC loses the items
    pynetdicom cannot decode (:func:`without_unrecognised_items`) before it is decoded, and
    that an A-ABORT request made once the association is over is dropped
    (:meth:`_process_recv_primitive`)."""

    def _process_recv_primitive(self) -> bool:
        """pynetdicom's, except for an A-ABORT request in Sta13 (the association rejected or
        released, the peer's close awaited): PS3.8's state table has no such event there, and
        pynetdicom's DUL thread died on it (InvalidEventError) when the SCP stopped, aborting
        its associations, just after rejecting one. There is nothing left to abort, only the
        wait for the peer's close to give up: the request becomes the end of that wait, the
        ARTIM timer's expiry (Evt18: the connection is closed, Sta1)."""
        queued = self.to_provider_queue.queue
        if queued and isinstance(queued[0], A_ABORT | A_P_ABORT) and self.state_machine.current_state == "Sta13":
            self.to_provider_queue.get_nowait()
            self.event_queue.put("Evt18")
            return True
        return super()._process_recv_primitive()

    def _decode_pdu(self, bytestream: bytearray) -> Any:
        """pynetdicom's, on the PDU without the items it cannot decode; an A-ASSOCIATE-RQ
        proposing a presentation context of even ID is an invalid PDU (ValueError: the caller
        aborts the association, Evt19): pynetdicom accepted it into negotiation, where its DUL
        thread died on it (AE-6) and the connection closed without an A-ABORT; so is one without a
        User Information item (:func:`lacks_user_information`), which pynetdicom accepted, logging
        an AttributeError."""
        even = even_context_ids(bytes(bytestream)) if bytestream[:1] == bytes([A_ASSOCIATE_RQ]) else []
        if even:
            raise ValueError(f"A-ASSOCIATE-RQ with presentation context ID(s) {even[:4]}: IDs are odd (PS3.8 9.3.2.2)")
        if lacks_user_information(bytes(bytestream)):
            raise ValueError("A-ASSOCIATE-RQ without a User Information item (PS3.8 9.3.2)")
        if bytestream[:1] in (bytes([A_ASSOCIATE_RQ]), bytes([A_ASSOCIATE_AC])):
            kept, removed = without_unrecognised_items(bytes(bytestream))
            if removed:
                assoc = self.assoc
                peer = assoc.acceptor if assoc.is_requestor else assoc.requestor
                log.info("A-ASSOCIATE-%s from %s: ignored item(s) of unrecognised type %s",
                         "RQ" if kept[0] == A_ASSOCIATE_RQ else "AC", getattr(peer, "address", "") or "a peer",
                         ", ".join(f"{kind:02X}H" for kind in removed))
                bytestream = bytearray(kept)
        return super()._decode_pdu(bytestream)
