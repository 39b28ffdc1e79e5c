"""An A-ASSOCIATE-RQ loses only the items pynetdicom cannot decode (a vendor's User Information
sub-item, an unknown variable item), so the association is accepted as dcmtk accepts it; what
pynetdicom decodes afterwards is the rest of the request, unchanged."""

from __future__ import annotations

import struct

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ

from adapter.dicom.associate_pdu import without_unrecognised_items
from tests.support.dicom_raw import associate_rq, sub_item


def _with_user_items(*extra: bytes) -> bytes:
    return associate_rq(user_items=b"".join(extra))


def _decoded(pdu: bytes) -> A_ASSOCIATE_RQ:
    decoded = A_ASSOCIATE_RQ()
    decoded.decode(pdu)
    return decoded


def test_a_request_without_unknown_items_is_returned_as_it_is() -> None:
    pdu = associate_rq()
    kept, removed = without_unrecognised_items(pdu)
    assert kept is pdu and removed == []


def test_an_unknown_user_information_sub_item_is_removed_and_the_rest_kept() -> None:
    version_name = sub_item(0x55, b"VENDOR_1")
    pdu = _with_user_items(sub_item(0x5F, b"vendor data"), version_name)
    kept, removed = without_unrecognised_items(pdu)
    assert removed == [0x5F]
    assert kept == _with_user_items(version_name)
    request = _decoded(kept)
    assert request.calling_ae_title == "PYNETSCU"
    user = request.user_information
    assert user is not None
    assert user.maximum_length == 16384
    assert user.implementation_class_uid == "1.2.3.4"
    assert user.implementation_version_name == "VENDOR_1"


def test_an_unknown_variable_item_is_removed() -> None:
    kept, removed = without_unrecognised_items(associate_rq(items=sub_item(0x7E, b"\x01\x02")))
    assert removed == [0x7E]
    assert kept == associate_rq()


def test_items_that_do_not_parse_are_left_for_pynetdicom_to_refuse() -> None:
    pdu = _with_user_items(sub_item(0x5F, b"x"))
    truncated = pdu[:-3]  # the last sub-item now runs past its item
    assert without_unrecognised_items(truncated) == (truncated, [])
    assert without_unrecognised_items(b"\x01\x00") == (b"\x01\x00", [])


def test_other_pdus_are_not_touched() -> None:
    release = struct.pack(">BBL", 5, 0, 4) + b"\0" * 4
    assert without_unrecognised_items(release) == (release, [])


def test_an_acceptance_loses_its_unknown_sub_items_too() -> None:
    request = associate_rq()
    # an A-ASSOCIATE-AC: the request's fixed fields, then Application Context, a Presentation
    # Context (AC: ID 1, result 0, one transfer syntax) and User Information
    fixed = request[6:74]
    context = sub_item(0x21, bytes([1, 0, 0, 0]) + sub_item(0x40, b"1.2.840.10008.1.2.1"))
    user = sub_item(0x51, struct.pack(">L", 16384)) + sub_item(0x52, b"1.2.3.4")

    def acceptance(extra: bytes) -> bytes:
        body = fixed + sub_item(0x10, b"1.2.840.10008.3.1.1.1") + context + sub_item(0x50, user + extra)
        return struct.pack(">BBL", 2, 0, len(body)) + body

    kept, removed = without_unrecognised_items(acceptance(sub_item(0x5F, b"vendor data")))
    assert removed == [0x5F]
    assert kept == acceptance(b"")
    decoded = A_ASSOCIATE_AC()
    decoded.decode(kept)
    assert decoded.user_information is not None and decoded.user_information.maximum_length == 16384



def test_an_unknown_sub_item_of_a_presentation_context_is_removed_too() -> None:
    """Diff review: dcmtk accepts a Presentation Context item holding a sub-item of an unknown
    type; pynetdicom aborted it."""
    kept, removed = without_unrecognised_items(associate_rq(context_items=sub_item(0x60, b"\x01\x02")))
    assert removed == [0x60]
    assert kept == associate_rq()
    [context_item] = _decoded(kept).presentation_context
    assert context_item.abstract_syntax == "1.2.840.10008.5.1.4.1.1.7"
