"""A DICOM peer at the byte level, for tests of what a well-behaved SCU never sends: PDUs and
DIMSE messages built by hand (PS3.8 9.3, PS3.7 6.3) on a plain socket."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Self

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
VERIFICATION = "1.2.840.10008.1.1"
A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RP, A_ABORT = 0x02, 0x03, 0x04, 0x06, 0x07
IMPLICIT_LE = "1.2.840.10008.1.2"
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
                 called: str = "ADAPTER", user_items: bytes = b"", items: bytes = b"",
                 context_items: bytes = b"", application_context: str = "1.2.840.10008.3.1.1.1",
                 context_id: int = 1, user_information: bytes | None = None) -> bytes:
    """An A-ASSOCIATE-RQ proposing one presentation context (``context_id``); ``context_items``
    are appended to that context's sub-items, ``user_items`` to its User Information item (after
    Maximum Length and Implementation Class UID), ``items`` after that item. ``user_information``,
    when given, is that item whole instead (``b""``: none at all)."""
    body = struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + b"\0" * 32
    body += _item(0x10, application_context.encode())
    body += _item(0x20, bytes([context_id, 0, 0, 0]) + _item(0x30, abstract.encode()) + _item(0x40, transfer.encode())
                  + context_items)
    if user_information is None:
        user_information = _item(0x50, _item(0x51, struct.pack(">L", 16384)) + _item(0x52, b"1.2.3.4") + user_items)
    body += user_information
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


class AcceptanceRewriter:
    """A loopback TCP relay to ``upstream_port`` that appends ``user_items`` to the User
    Information item of the A-ASSOCIATE-AC the upstream SCP answers with (its last item, as
    dcmtk and pynetdicom encode it); everything else is relayed as it is. A real SCP made to
    answer as a PACS adding a vendor's sub-item would."""

    def __init__(self, upstream_port: int, user_items: bytes) -> None:
        self._upstream = upstream_port
        self._user_items = user_items
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.rewritten = 0
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Self:
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._upstream), timeout=30)
            for source, sink, first in ((client, upstream, False), (upstream, client, True)):
                thread = threading.Thread(target=self._relay, args=(source, sink, first), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _rewrite(self, pdu_type: int, data: bytes) -> bytes:
        if pdu_type != A_ASSOCIATE_AC:
            return data
        user = data.rindex(bytes([0x50, 0]))
        (length,) = struct.unpack_from(">H", data, user + 2)
        assert user + 4 + length == len(data), "the User Information item is not the last item"
        self.rewritten += 1
        return data[:user] + _item(0x50, data[user + 4:] + self._user_items)

    def _relay(self, source: socket.socket, sink: socket.socket, first: bool) -> None:
        try:
            if first:
                kind, data = read_pdu(source)
                data = self._rewrite(kind, data)
                sink.sendall(struct.pack(">BBL", kind, 0, len(data)) + data)
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except (OSError, EOFError):
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)
