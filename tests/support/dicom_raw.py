"""A DICOM peer at the byte level, for tests of what a well-behaved SCU never sends: PDUs and
DIMSE messages built by hand (PS3.8 9.3, PS3.7 6.3) on a plain socket."""

from __future__ import annotations

import socket
import struct

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
A_ASSOCIATE_AC, P_DATA_TF, A_RELEASE_RP, A_ABORT = 0x02, 0x04, 0x06, 0x07
A_RELEASE_RQ = struct.pack(">BBL", 5, 0, 4) + b"\0" * 4


def _item(kind: int, data: bytes) -> bytes:
    return struct.pack(">BBH", kind, 0, len(data)) + data


def encode(ds: Dataset, *, implicit: bool = True) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def command(**elements: object) -> bytes:
    """A command set (Implicit VR Little Endian) with its group length."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    body = encode(ds)
    group = Dataset()
    group.CommandGroupLength = len(body)
    return encode(group) + body


def store_command(sop_instance: str, message_id: int = 1, **elements: object) -> bytes:
    return command(**{"AffectedSOPClassUID": SECONDARY_CAPTURE, "CommandField": 1, "MessageID": message_id,
                      "Priority": 0, "CommandDataSetType": 0, "AffectedSOPInstanceUID": sop_instance,
                      **elements})


def p_data(context_id: int, data: bytes, *, is_command: bool, last: bool) -> bytes:
    pdv = struct.pack(">LBB", len(data) + 2, context_id, (1 if is_command else 0) | (2 if last else 0)) + data
    return struct.pack(">BBL", P_DATA_TF, 0, len(pdv)) + pdv


def associate_rq(abstract: str = SECONDARY_CAPTURE, transfer: str = EXPLICIT_LE, calling: str = "PYNETSCU",
                 called: str = "ADAPTER", user_items: bytes = b"", items: bytes = b"") -> bytes:
    """An A-ASSOCIATE-RQ proposing one presentation context; ``user_items`` are appended to its
    User Information item (after Maximum Length and Implementation Class UID), ``items`` after
    that item."""
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + b"\0" * 32
    body += _item(0x10, b"1.2.840.10008.3.1.1.1")
    body += _item(0x20, bytes([1, 0, 0, 0]) + _item(0x30, abstract.encode()) + _item(0x40, transfer.encode()))
    body += _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.3.4") + user_items)
    body += items
    return struct.pack(">BBL", 1, 0, len(body)) + body


def sub_item(kind: int, data: bytes) -> bytes:
    """A PDU item or sub-item (PS3.8 9.3): type, reserved, 16-bit length, data."""
    return _item(kind, data)


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """(PDU type, its data); EOFError when the connection closes first."""
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("connection closed")
            data += chunk
        return data

    head = exactly(6)
    return head[0], exactly(struct.unpack_from(">L", head, 2)[0])


def associate(port: int, **kwargs: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(associate_rq(**kwargs))
    kind, _ = read_pdu(sock)
    assert kind == A_ASSOCIATE_AC, kind
    return sock


def response_status(sock: socket.socket) -> tuple[int, str]:
    """(Status, ErrorComment) of the next DIMSE response, sent as one PDV."""
    kind, data = read_pdu(sock)
    assert kind == P_DATA_TF, kind
    fp = DicomBytesIO(data[6:])
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    ds = read_dataset(fp, True, True)
    return int(ds.Status), str(ds.get("ErrorComment", ""))


def closed_or_aborted(sock: socket.socket) -> bool:
    """Whether the peer ends the connection (an A-ABORT or a close) before anything else."""
    try:
        kind, _ = read_pdu(sock)
    except (EOFError, ConnectionResetError):
        return True
    return kind == A_ABORT
