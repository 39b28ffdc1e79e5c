"""The C-STORE SCP: receives objects from a PACS or modality (PS3.4 Annex B) and answers
C-ECHO (Annex A).

Wiring decisions:

* **Who may associate.** The calling AE title must be one of ``AeOptions.allowed_ae_titles``
  (ADAPTER_DICOM_ALLOWED_AE_TITLES with the policy's ``allowedAETitles``); others are rejected
  with A-ASSOCIATE-RJ (rejected-permanent, "calling AE title not recognised"). An empty list
  rejects every caller: fail closed, the SCP never accepts anonymous senders. Every rejected
  association (this, or pynetdicom's local-limit-exceeded beyond ``maximum_associations``) is
  audited as a DICOM Security Alert, a misconfigured peer's repeats counted into one a minute
  (adapter.services.association_audit); so is one accepted with every presentation context
  rejected (below), which dcmtk's storescp would have rejected.
* **What is accepted.** Presentation contexts for the SOP classes of mappings/dicom.yaml
  (``receive.sopClasses``) and Verification. Any other SOP class is refused at negotiation
  (abstract syntax not supported), so its C-STORE is never sent. Image classes accept Explicit
  and Implicit VR Little Endian and JPEG Baseline: the syntaxes whose first frame becomes the
  Binary without decoding (the JPEG stream as received) or losslessly (a PNG of native
  samples), see adapter.mapping.dicom_fhir.extract_image. A sender holding JPEG 2000, JPEG-LS,
  RLE or lossless JPEG objects finds no context and must convert (most SCUs offer to);
  accepting them and refusing every C-STORE afterwards would only hide the refusal. Objects are
  stored as received, never transcoded. Encapsulated PDF accepts the uncompressed syntaxes only
  (it has no pixel data). Deflated Explicit VR Little Endian is not accepted: inflating happens
  in memory, a deflate bomb away from exhausting it.
* **Speed.** Datasets are spooled straight to a file while they arrive
  (``_config.STORE_RECV_CHUNKED_DATASET``), so no object is held in memory nor decoded by
  pynetdicom; the handler reads the attributes it needs and leaves pixel data alone. The spool
  file is made in the blobs' staging folder (:func:`_spool_file`), not the system's temporary
  folder: on the blobs' file system the object as received is hard-linked into its blob rather
  than copied (in a container, /tmp and the /data volume are two file systems), and a file
  left by a crash holds patient data that the staging sweep removes at the next start.
  TCP_NODELAY is set on every accepted socket; the maximum PDU is ADAPTER_DICOM_MAX_PDU.
  pynetdicom's own receive path costs more than the ingest that follows it (it reads sockets
  4 KiB at a time, copies each PDU five times before writing it in one multi-MB write, and
  polls: its threads sleep 1 ms between looks at the socket and at the message queue). Each
  accepted association is therefore given three small subclasses (:func:`_accelerate`): a
  socket wrapper reading with ``recv_into`` that blocks in ``select`` on the socket and a wake-up
  pipe instead of sleeping; a DUL that writes the data set fragments of a C-STORE request
  from the socket to the spool file in 256 KiB pieces (pynetdicom still sees every PDV, its
  state machine, events and message assembly unchanged, only without the bytes it would have
  copied into that file anyway); and an association loop that waits on the message queue
  instead of sleeping. They rely on pynetdicom 3 internals and are only installed when those
  are as expected (plain TCP, the stock classes); otherwise the association runs as before.
* **Durability.** The C-STORE handler commits the object before it answers Success (see
  adapter.dicom.handlers). Each association has its own thread, so senders run concurrently.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import select
import socket
import ssl
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydicom import config as pydicom_config
from pydicom.uid import UID
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from adapter.dicom.ae import AeOptions
from adapter.dicom.associate_pdu import NegotiationDUL
from adapter.dicom.connections import (
    ThreadedServer,
    admission,
    out_of_descriptors,
    refusal,
    warn_out_of_descriptors,
)
from adapter.dicom.handlers import (
    discard_spooled,
    handle_accepted,
    handle_conn_close,
    handle_conn_open,
    handle_echo,
    handle_rejected,
    handle_store,
)
from adapter.dicom.logs import make_pynetdicom_logs_safe
from adapter.dicom.spool import BoundedSpool, UnopenedSpool
from adapter.errors import ConfigurationError, errno_name
from adapter.mapping.dicom_tables import IMAGE_SYNTAXES, UNCOMPRESSED_SYNTAXES, accepted_transfer_syntaxes
from adapter.mapping.dicom_uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from adapter.services.dicom_ingest import DicomIngestService

log = logging.getLogger("adapter.dicom")

#: Verification SOP Class (C-ECHO, PS3.4 Annex A).
VERIFICATION = "1.2.840.10008.1.1"

# A calling AE title arrives in a 16-byte field: a longer required title matches no caller.
_NOBODY = "<no-caller-is-allowed>"

pynetdicom_log = logging.getLogger("pynetdicom")


# ---------------------------------------------------------------------------------------------
# A faster receive path for accepted associations (module docstring, "Speed")

_P_DATA_TF = 0x04
#: The PDU types of PS3.8 9.3: A-ASSOCIATE-RQ/AC/RJ, P-DATA-TF, A-RELEASE-RQ/RP, A-ABORT.
_PDU_TYPES = frozenset(range(0x01, 0x08))
_SPOOL_CHUNK = 256 * 1024     # socket -> spool file in pieces of this size (one multi-MB write is slow)
_RECV_PIECE = 1024 * 1024     # a PDU read into memory grows by at most this much per read
#: PDV items in one P-DATA-TF PDU: SCUs send one or two; 690,000 empty ones in a 4 MB PDU cost
#: pynetdicom 2.5 s of CPU to decode.
MAX_PDVS_PER_PDU = 1024
#: A DIMSE message's command set, or a data set held in memory (anything but a spooled C-STORE
#: data set), in bytes: fragments past it abort the association instead of filling the memory.
MAX_MESSAGE_IN_MEMORY = 1024 * 1024
#: The largest PDU other than P-DATA-TF read (an A-ASSOCIATE-RQ of 128 presentation contexts and a
#: user identity token is tens of KiB; the others have a fixed few bytes).
MAX_CONTROL_PDU = 1024 * 1024
#: PDUs the DUL reads in one go while they need nothing from pynetdicom (_StreamingDUL): then
#: back to pynetdicom's reactor, which checks its timers and whether to stop between reads.
PDUS_PER_READ = 64
_DUL_WAIT = 0.02              # the DUL blocks in select this long at most (timers are checked between)
_REACTOR_WAIT = 0.005         # the association loop waits this long for a message at most
_POLL_DELAY = 0.001           # pynetdicom's DUL loop delay
_STOPPED_WAIT = 0.05          # how often a wait for a primitive looks whether the DUL has stopped


class _AssociationSocket(AssociationSocket):
    """pynetdicom's socket wrapper with ``recv`` reading straight into its buffer (a bounded wait
    inside a PDU, :meth:`recv_into`), data put back by
    :class:`_StreamingDUL` (``_pushback``) served first, and ``ready`` blocking in ``select`` on
    the socket and a wake-up pipe (:meth:`wake`, written when a primitive is queued for sending)
    once :meth:`open_wakeup` was called, instead of the DUL sleeping 1 ms between polls."""

    _pushback: bytes = b""
    _wakeup: tuple[int, int] | None = None
    _wakeup_lock: threading.Lock
    #: When the connection was accepted (the ARTIM timer's start, PS3.8 9.1.5); when the PDU being
    #: read must be whole (:meth:`begin_pdu`).
    opened: float | None = None
    _pdu_deadline: float | None = None
    _pdu_limit: float | None = None  # the timeout that set the deadline

    def open_wakeup(self) -> bool:
        """Open the wake-up pipe; False when the process has no file descriptor for it (the
        DUL then polls, as pynetdicom's: security review 4, the thread died there)."""
        self._wakeup_lock = threading.Lock()
        try:
            read_end, write_end = os.pipe()
        except OSError as exc:
            if not out_of_descriptors(exc):
                raise
            warn_out_of_descriptors("a DICOM association's wake-up pipe")
            return False
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        self._wakeup = (read_end, write_end)
        return True

    def close_wakeup(self) -> None:
        """Close the pipe, from the DUL thread or once it has ended (it selects on the pipe);
        the DUL polls as pynetdicom's again."""
        if self._wakeup is None:
            return
        with self._wakeup_lock:
            wakeup, self._wakeup = self._wakeup, None
        if wakeup is None:
            return
        self.assoc.dul._run_loop_delay = _POLL_DELAY
        for fd in wakeup:
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        super().close()
        if threading.current_thread() is self.assoc.dul:
            self.close_wakeup()

    def wake(self) -> None:
        if self._wakeup is None:
            return
        with self._wakeup_lock:  # never writes to a closed (maybe reused) descriptor
            if self._wakeup is not None:
                with contextlib.suppress(OSError):  # full pipe: a wake-up is pending anyway
                    os.write(self._wakeup[1], b"\x01")

    def recv(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` from the socket; fewer only when the connection is closed. The buffer
        grows with what arrives (a piece at a time), never ahead of it: a PDU's length field is
        the peer's word, and a 4 GiB one must not be 4 GiB of memory before a byte of it came."""
        buffer = bytearray(self._pushback[:nr_bytes])
        self._pushback = self._pushback[len(buffer):]
        while len(buffer) < nr_bytes:
            got = len(buffer)
            buffer.extend(bytes(min(nr_bytes - got, _RECV_PIECE)))
            with memoryview(buffer) as view:
                arrived = self.recv_into(view[got:])
            if got + arrived < len(buffer):  # the connection was closed: what arrived, as pynetdicom's recv
                del buffer[got + arrived:]
                break
        return buffer

    def begin_pdu(self) -> None:
        """A PDU is about to be read (its first byte has arrived): it must be whole by a deadline,
        or the peer is dropped (TimeoutError in :meth:`recv_into`). Until the association is
        established, the ACSE timeout counted from the connection (ARTIM, PS3.8 9.1.5: the
        A-ASSOCIATE-RQ is whole within it); then the network timeout counted from the PDU's
        first byte. A wait restarted by every byte let a peer dripping a byte now and then
        hold the connection, and two threads, for ever: 64 of them locked every caller out."""
        limit = self._stall_limit()
        if limit is None:
            self._pdu_deadline = None
            return
        assoc = getattr(self, "assoc", None)
        # ARTIM counts from the connection only while the association is being set up; after
        # it ended (an abort: the peer's last PDUs are drained) a PDU has its own time again
        starting = not any(getattr(assoc, flag, False) for flag in ("is_established", "is_aborted", "is_released"))
        start = self.opened if self.opened is not None and starting else time.monotonic()
        self._pdu_deadline = start + limit
        self._pdu_limit = limit

    def recv_into(self, view: memoryview) -> int:
        """Fill ``view`` from the socket; fewer bytes only when the connection is closed.
        TimeoutError when the peer sends nothing for the association's timeout in the middle of
        it (:meth:`_stall_limit`): pynetdicom checks its timers only between PDUs, so a peer
        that stopped inside one held the connection, and two threads, for ever; or when the PDU
        is not whole by its deadline (:meth:`begin_pdu`)."""
        sock = self.socket
        assert sock is not None
        limit = self._stall_limit()
        got, size = 0, len(view)
        while got < size:
            wait = limit
            if self._pdu_deadline is not None:
                left = self._pdu_deadline - time.monotonic()
                if left <= 0:
                    log.warning("DICOM peer did not send a whole PDU within %s s: connection closed", self._pdu_limit)
                    raise TimeoutError("the PDU was not whole by its deadline")
                wait = left if wait is None else min(wait, left)
            if sock.gettimeout() != wait:
                sock.settimeout(wait)
            try:
                n = sock.recv_into(view[got:], size - got)
            except TimeoutError:
                log.warning("DICOM peer sent no whole PDU for %s s: connection closed", limit)
                raise
            if not n:
                break
            got += n
        return got

    def _stall_limit(self) -> float | None:
        """How long a read may wait: the ACSE timeout until the association is established,
        then the network timeout (ADAPTER's AeOptions)."""
        assoc = getattr(self, "assoc", None)
        if assoc is None:
            return None
        limit = assoc.network_timeout if assoc.is_established else assoc.acse_timeout
        return float(limit) if limit is not None else None

    def readable_now(self) -> bool:
        """Is there something to read this moment (no waiting)?"""
        if self._pushback:
            return True
        sock = self.socket
        if sock is None:
            return False
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return bool(readable)

    @property
    def ready(self) -> bool:
        if self.socket is None or self._is_connected is False:
            return False
        if self._pushback:
            return True
        wakeup = self._wakeup
        sock = self.socket.fileno()
        try:
            if wakeup is None:
                readable, _, _ = select.select([sock], [], [], 0)
            else:
                readable, _, _ = select.select([sock, wakeup[0]], [], [], _DUL_WAIT)
                if wakeup[0] in readable:
                    with contextlib.suppress(OSError):
                        os.read(wakeup[0], 4096)
        except (OSError, TimeoutError, ValueError):
            self.event_queue.put("Evt17")  # as pynetdicom: transport connection closed
            return False
        return sock in readable


class _StreamingDUL(NegotiationDUL):
    """pynetdicom's DUL, except that the data set fragments of a C-STORE request being spooled
    go from the socket straight to the spool file, and that queuing a primitive for sending
    wakes the reactor (:class:`_AssociationSocket`)."""

    _chunk: bytearray | None = None

    def receive_pdu(self, wait: bool = False, timeout: float | None = None) -> Any:
        """pynetdicom's, except that a wait ends as soon as this DUL has stopped with nothing
        queued: nothing can come any more. pynetdicom waits out the whole timeout, so a peer
        that closes its connection before its A-ASSOCIATE-RQ (a TCP health probe, a port scan;
        AA-5 stops the DUL) held two threads and the SCP's stop for the ACSE timeout (30 s)."""
        if wait and not self._primitive_queued(timeout):
            return None
        return super().receive_pdu(wait=False)

    def _primitive_queued(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = self.to_user_queue
        with pending.not_empty:  # the Queue's own condition, notified when a primitive is put
            while not pending.queue:
                if not self.is_alive():
                    return False
                left = _STOPPED_WAIT if deadline is None else min(_STOPPED_WAIT, deadline - time.monotonic())
                if left <= 0:
                    return False
                pending.not_empty.wait(left)
        return True

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        sock = self.socket
        if isinstance(sock, _AssociationSocket):
            sock.wake()

    def _spool(self) -> Any:
        """The file the current C-STORE request's data set is written to, when one is open."""
        spool = getattr(self._message(), "_data_set_file", None)
        return getattr(spool, "file", None)

    def _message(self) -> Any:
        """The DIMSE message being assembled (its command complete once its spool is open)."""
        return getattr(getattr(self.assoc, "dimse", None), "message", None)

    def _read_pdu_data(self) -> None:
        """Read a PDU and hand it to pynetdicom, as pynetdicom's own; except that a PDU holding
        only data set fragments of the object being spooled (:meth:`_read_one_pdu`) is not
        handed over, and the PDUs that follow it are read at once while they are there (at most
        :data:`PDUS_PER_READ`): pynetdicom's reactor, finding no event after a read, yields
        before it looks again (~80 us each time)."""
        for _ in range(PDUS_PER_READ):
            if not self._read_one_pdu():
                return
            sock = self.socket
            if not isinstance(sock, _AssociationSocket) or not sock.readable_now():
                return

    def _read_one_pdu(self) -> bool:
        """Read one PDU. True when it needed nothing from pynetdicom (no event queued)."""
        if getattr(self, "_invalid_pdu", False) and isinstance(self.socket, _AssociationSocket):
            # after an invalid PDU (aborted at its header) what follows is no PDU: read and
            # dropped, unlogged, until the peer closes or the abort's timer closes the connection
            # (PS3.8 9.2 Sta13); handed to pynetdicom, each 6 bytes were another ERROR line
            raw = self.socket.socket
            try:
                if raw is None or not raw.recv(64 * 1024):  # what has arrived, at most that: dropped
                    self.event_queue.put("Evt17")
            except (OSError, TimeoutError):
                self.event_queue.put("Evt17")
            return False
        sock = self.socket
        if isinstance(sock, _AssociationSocket) and not sock._pushback:
            sock.begin_pdu()  # a PDU put back is one begun already
        if not isinstance(sock, _AssociationSocket) or sock._pushback:
            super()._read_pdu_data()
            return False
        try:
            header = bytes(sock.recv(6))
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return False
        if len(header) == 6 and (self._unknown_type(header) or self._too_long(header)):
            self.event_queue.put("Evt19")  # an invalid PDU: pynetdicom aborts (AA-8) and closes
            self._invalid_pdu = True
            return False
        spool = self._spool()
        if spool is None or len(header) != 6 or header[0] != _P_DATA_TF:
            sock._pushback = header + sock._pushback  # not for us: pynetdicom reads it
            super()._read_pdu_data()
            return False
        try:
            kept, spooled_only = self._stream_pdvs(sock, spool, struct.unpack_from(">L", header, 2)[0],
                                                   getattr(self._message(), "context_id", None))
        except (OSError, TimeoutError, EOFError):
            pynetdicom_log.warning("Connection closed before the entire PDU was received")
            self.event_queue.put("Evt17")
            return False
        except ValueError:
            pynetdicom_log.warning("Unable to decode the received PDU data")
            self.event_queue.put("Evt19")
            return False
        if spooled_only:
            # Nothing in it for pynetdicom: data set fragments of the message being received, none
            # the last, on its command's context, all in the spool now. Handed over, each would
            # go through the state machine and the message assembly to write nothing (~50 us a
            # PDU; an object of 3 MB comes in ~24 PDUs of 128 KB, dcmtk's largest); the fragment
            # that ends the data set, and anything else, still goes the whole way. The idle timer
            # restarts as for every PDU read (pynetdicom's reactor, on any transport event).
            return True
        try:
            pdu, event = self._decode_pdu(bytearray(header[:2] + struct.pack(">L", len(kept)) + kept))
        except Exception:  # noqa: BLE001 - as pynetdicom: an undecodable PDU
            pynetdicom_log.warning("Unable to decode the received PDU data", exc_info=True)
            self.event_queue.put("Evt19")
            return False
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)
        return False

    def _decode_pdu(self, bytestream: bytearray) -> Any:
        """NegotiationDUL's, after counting a P-DATA-TF's PDV items (at most
        :data:`MAX_PDVS_PER_PDU`; ValueError otherwise, which pynetdicom takes for an invalid PDU
        and aborts)."""
        if bytestream[:1] == bytes([_P_DATA_TF]):
            offset, items = 6, 0
            while offset + 4 <= len(bytestream):
                items += 1
                if items > MAX_PDVS_PER_PDU:
                    raise ValueError(f"more than {MAX_PDVS_PER_PDU} PDV items in one PDU")
                offset += 4 + struct.unpack_from(">L", bytestream, offset)[0]
        return super()._decode_pdu(bytestream)

    @staticmethod
    def _unknown_type(header: bytes) -> bool:
        """Whether the PDU this header starts is of no type PS3.8 9.3 defines (0x01 to 0x07): an
        invalid PDU at its header. Handed to pynetdicom, each 6 bytes after it were read as
        another header and logged as an ERROR of their own (zero bytes streamed at the port:
        ~20,000 lines a second, security review 5); one line, and the abort, here."""
        if header[0] in _PDU_TYPES:
            return False
        pynetdicom_log.warning("A PDU of unknown type 0x%02X: aborting", header[0])
        return True

    def _too_long(self, header: bytes) -> bool:
        """Whether the PDU this header starts is longer than the peer may send: a P-DATA-TF
        over the maximum length this SCP declared (PS3.8 D.1; ADAPTER_DICOM_MAX_PDU, 0: no
        limit), any other over :data:`MAX_CONTROL_PDU`. It is not read: a length field of up
        to 4 GiB is the peer's word, and pynetdicom would read the whole PDU into memory."""
        (length,) = struct.unpack_from(">L", header, 2)
        if header[0] == _P_DATA_TF:
            limit = getattr(getattr(self.assoc, "ae", None), "maximum_pdu_size", 0) or 0
        else:
            limit = MAX_CONTROL_PDU
        if not limit or length <= limit:
            return False
        pynetdicom_log.warning("A PDU of type 0x%02X and %d bytes is longer than %d bytes: aborting", header[0],
                               length, limit)
        return True

    def _stream_pdvs(self, sock: _AssociationSocket, spool: Any, length: int,
                     context_id: int | None) -> tuple[bytes, bool]:
        """Read the PDV items of a P-DATA-TF PDU of ``length`` bytes: data set fragments are
        written to ``spool`` and kept as empty PDVs (context and control header only), command
        fragments are kept whole. Returns the PDU's items as pynetdicom will decode them, and
        whether every one of them was a data set fragment other than the last on ``context_id``
        (the context of the message being received): then pynetdicom has nothing to do with it."""
        if self._chunk is None:
            self._chunk = bytearray(_SPOOL_CHUNK)
        kept = bytearray()
        spooled_only = context_id is not None
        items = 0
        with memoryview(self._chunk) as chunk:
            while length > 0:
                items += 1
                if items > MAX_PDVS_PER_PDU:
                    raise ValueError(f"more than {MAX_PDVS_PER_PDU} PDV items in one PDU")
                item = bytes(sock.recv(6))
                if len(item) != 6:
                    raise EOFError
                (item_length,) = struct.unpack_from(">L", item, 0)
                length -= 4 + item_length
                if item_length < 2 or length < 0:
                    raise ValueError("a PDV item runs past its PDU")
                left = item_length - 2
                if item[5] & 0x01:  # a command fragment: small, pynetdicom decodes it
                    data = bytes(sock.recv(left))
                    if len(data) != left:
                        raise EOFError
                    kept += item + data
                    spooled_only = False
                    continue
                if item[5] & 0x02 or item[4] != context_id:  # the last fragment, or misplaced: pynetdicom's
                    spooled_only = False
                kept += struct.pack(">L", 2) + item[4:6]
                while left:
                    piece = chunk[:min(left, _SPOOL_CHUNK)]
                    if sock.recv_into(piece) != len(piece):
                        raise EOFError
                    spool.write(piece)
                    left -= len(piece)
        return bytes(kept), spooled_only and items > 0


class _DIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, except that a message it cannot decode, or one growing in
    memory past :data:`MAX_MESSAGE_IN_MEMORY`, aborts the association cleanly. pynetdicom raised
    out of the DUL thread (a command set without AffectedSOPInstanceUID or on a context never
    accepted: KeyError, AttributeError): the thread died with a traceback, the peer got no
    A-ABORT, the connection-close event never came and the spool file stayed behind; and it
    kept command fragments, or data fragments of anything but a spooled C-STORE, in memory
    without limit."""

    def receive_primitive(self, primitive: Any) -> None:
        misplaced = self._misplaced(primitive)
        if misplaced:
            self._abort(misplaced)
            return
        try:
            super().receive_primitive(primitive)
        except OSError as exc:  # a file of ours (the spool's are caught before: adapter.dicom.spool), not the peer
            log.error("a local file operation failed while a DIMSE message was received (%s): association aborted",
                      errno_name(exc) or type(exc).__name__)
            self._abort(None)
            return
        except Exception as exc:  # noqa: BLE001 - whatever pynetdicom's decoding raises
            self._abort(f"a DIMSE message that cannot be decoded ({type(exc).__name__})")
            return
        message = self.message
        if message is None:
            return
        held = message.encoded_command_set.getbuffer().nbytes
        if message.data_set is not None:
            held += message.data_set.getbuffer().nbytes
        if held > MAX_MESSAGE_IN_MEMORY:
            self._abort(f"a DIMSE message of more than {MAX_MESSAGE_IN_MEMORY} bytes held in memory")

    def _misplaced(self, primitive: Any) -> str | None:
        """What is wrong with where the PDVs of ``primitive`` are (PS3.8 9.3.5, PS3.7 6.3.1), or
        None: each on an accepted presentation context, data set fragments on their command's
        (pynetdicom checks neither: data on a context never accepted was stored), and no command
        begun before the data set of the message before it has ended (pynetdicom began the new
        message and dropped the unfinished one, unanswered)."""
        accepted = getattr(self.assoc, "_accepted_cx", None)
        message = self.message
        current = message.context_id if message is not None else None
        # a message whose command set is whole and still held is waiting for its data set
        in_data_set = current is not None
        for context_id, data in getattr(primitive, "presentation_data_value_list", None) or ():
            if accepted is not None and context_id not in accepted:
                return "a PDV on a presentation context that was not accepted"
            control = data[0] if data else 0
            if control & 1:  # a command fragment; the last one names the message's context
                if in_data_set:
                    # PS3.8 9.3.5.1, PS3.7 6.3.1: a message's fragments are not interleaved with
                    # another's; pynetdicom would start the new message and drop the old one unanswered
                    return "a command inside the data set of the message before it"
                if control & 2:
                    current = context_id
            elif current != context_id:
                return "data set fragments on another presentation context than their command's"
            elif control & 2:
                in_data_set = False  # the data set's last fragment: the message is whole
        return None

    def _abort(self, what: str | None) -> None:
        """A-ABORT, and log ``what`` the peer sent (None: the cause was logged already)."""
        if what is not None:
            log.warning("DICOM peer sent %s: association aborted", what)
        message, self.message = self.message, None
        if message is not None:
            discard_spooled(message)
        self.assoc.dul.event_queue.put("Evt19")  # as an invalid PDU: A-ABORT (AA-8), then closed


#: The one DIMSE operation served on a context, by its abstract syntax: C-ECHO on Verification's,
#: C-STORE on every storage SOP class's (the only contexts the SCP accepts).
_VERIFICATION = "1.2.840.10008.1.1"


def _unserved_operation(assoc: Association, msg: Any, context_id: int) -> str | None:
    """What is wrong with request ``msg`` on presentation context ``context_id``, or None.
    pynetdicom hands any request to the context's service class, which answered an N-ACTION on a
    storage context with a C-STORE-RSP (and the adapter audited a refused object). A response
    is of its request's type (PS3.7 9.3, 10.3); the SCP performs no other operation, so it ends
    the association (A-ABORT) rather than answer a request it does not know in a form it is not."""
    context = getattr(assoc, "_accepted_cx", {}).get(context_id)
    if context is None:
        return None  # pynetdicom's own checks answer it
    verification = context.abstract_syntax == _VERIFICATION
    expected = C_ECHO if verification else C_STORE
    if isinstance(msg, expected):
        return None
    return (f"a {type(msg).__name__.replace('_', '-')} request on a {'Verification' if verification else 'storage'} "
            f"presentation context, which is not served there (only {expected.__name__.replace('_', '-')})")


class _Association(Association):
    """pynetdicom's acceptor loop, waiting on the message queue instead of sleeping 1 ms
    between looks; everything it checks, and in which order, is pynetdicom's. ``in_request``
    is true while a request is being served, from the moment it is taken from the queue until
    its answer is queued for sending."""

    in_request = False

    def _serve_request(self, msg: Any, context_id: int) -> None:
        """pynetdicom's, for the operations a context serves only (:func:`_unserved_operation`):
        anything else aborts the association. Every request comes this way, from the reactor's
        queue or, for an N-EVENT-REPORT, from the thread pynetdicom starts for it at once."""
        unserved = _unserved_operation(self, msg, context_id)
        if unserved is not None:
            log.warning("DICOM peer sent %s: association aborted", unserved)
            discard_spooled(msg)  # a C-STORE's data set spooled for a context that serves none
            self.dul.event_queue.put("Evt19")  # A-ABORT, then closed, as for a misplaced PDV
            return
        super()._serve_request(msg, context_id)

    def _run_reactor(self) -> None:
        sock = self.dul.socket
        if isinstance(sock, _AssociationSocket) and sock.open_wakeup():
            self.dul._run_loop_delay = 0  # the DUL now blocks in select instead
        try:
            self._serve()
        finally:
            if isinstance(sock, _AssociationSocket) and not self.dul.is_alive():
                sock.close_wakeup()  # else the DUL thread closes it with the socket

    def _abort_blocking(self, block: bool = True) -> None:
        """pynetdicom's abort (``abort`` is bound to this, or to a non-blocking call of it),
        except before an A-ASSOCIATE-RQ has arrived (Sta1, Sta2): there is no association to
        abort, and an A-ABORT request is no event of those states (pynetdicom's DUL thread dies
        on it with InvalidEventError when the SCP stops while a peer is connected but silent: a
        TCP probe, a scan). The DUL is stopped instead; the association then ends as when no
        request comes (receive_pdu finds the DUL stopped) and closes the connection."""
        dul = self.dul
        if self.is_acceptor and not self.is_established and dul.state_machine.current_state in ("Sta1", "Sta2"):
            dul.kill_dul()
            return
        super()._abort_blocking(block)

    def kill(self) -> None:
        # pynetdicom waits for the DUL to stop in a loop sleeping its loop delay: not 0 (a spin)
        self.dul._run_loop_delay = _POLL_DELAY
        super().kill()

    def _serve(self) -> None:
        self._is_paused = False
        messages = self.dimse.msg_queue
        while not self._kill:
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            try:
                context_id, msg = messages.get(timeout=_REACTOR_WAIT)
            except queue.Empty:
                context_id, msg = None, None
            if msg and context_id is not None:
                # until the answer is queued for the DUL: StoreSCP.stop waits for it (the DUL sends
                # what is queued before it reads the end of the connection)
                self.in_request = True
                try:
                    self._serve_request(msg, context_id)
                finally:
                    self.in_request = False
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                pynetdicom_log.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                pynetdicom_log.info("Association Aborted" + (" (A-P-ABORT)" if self.acse.is_aborted("a-p-abort")
                                                             else ""))
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            if self.dul.idle_timer_expired():
                # what the peer did (left the association idle): a WARNING, not an ERROR to page on
                log.warning("DICOM association idle for %s s (the network timeout): %s", self.network_timeout,
                            "released" if self.network_timeout_response == "A-RELEASE" else "aborted")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


#: The DICOM Application Context Name (PS3.7 A.2.1), the only one an association may name.
DICOM_APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"


class _ACSE(ACSE):
    """pynetdicom's ACSE, except that as acceptor it rejects a request naming another
    application context than DICOM's (PS3.8 7.1.1.2, Table 9-21: rejected-permanent,
    service-user, reason 2 application-context-name-not-supported); pynetdicom accepted it,
    answering with DICOM's name as if asked for it."""

    def _negotiate_as_acceptor(self) -> None:
        request = self.requestor.primitive
        name = str(getattr(request, "application_context_name", "") or "").rstrip("\0 ")
        if request is not None and name != DICOM_APPLICATION_CONTEXT:
            self._reject(request, "application context name not supported", 0x02)
            return
        may_call = getattr(self.assoc.ae, "may_call", None)
        calling = str(getattr(request, "calling_ae_title", "") or "").strip()
        if request is not None and may_call is not None and calling in self.assoc.ae.require_calling_aet \
                and not may_call(calling, str(getattr(self.requestor, "address", "") or "")):
            # an allowed title from a host it is not bound to: an unknown caller (reason 3)
            self._reject(request, "calling AE title not allowed from this host", 0x03)
            return
        super()._negotiate_as_acceptor()

    def _reject(self, request: Any, why: str, reason: int) -> None:
        """A-ASSOCIATE-RJ rejected-permanent by the service user for ``reason`` (PS3.8 Table 9-21)."""
        self.requestor.ae_title = request.calling_ae_title
        pynetdicom_log.info("Rejecting Association: %s", why)
        self.send_reject(0x01, 0x01, reason)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


def _accelerate(assoc: Association) -> None:
    """Give an accepted association the faster receive path, when pynetdicom is as expected."""
    dul = getattr(assoc, "dul", None)
    if type(dul) is not DULServiceProvider:
        return
    dul.__class__ = NegotiationDUL  # at least: vendors' association items are ignored, as dcmtk does
    if type(getattr(assoc, "acse", None)) is ACSE:
        assoc.acse.__class__ = _ACSE
    sock = getattr(dul, "socket", None)
    if type(assoc) is not Association or type(sock) is not AssociationSocket or isinstance(sock.socket, ssl.SSLSocket):
        return
    dimse = getattr(assoc, "dimse", None)
    needed = (hasattr(dimse, "message") and hasattr(dimse, "msg_queue") and hasattr(dul, "_recv_pdu")
              and hasattr(dul, "_run_loop_delay") and hasattr(assoc, "_reactor_checkpoint")
              and hasattr(getattr(dul, "to_user_queue", None), "not_empty")
              and callable(getattr(dul, "_decode_pdu", None)) and callable(getattr(assoc, "_serve_request", None)))
    if not needed:
        return
    sock.__class__ = _AssociationSocket
    dul.__class__ = _StreamingDUL
    assoc.__class__ = _Association
    if type(dimse) is DIMSEServiceProvider:
        dimse.__class__ = _DIMSE


class _RequestHandler(RequestHandler):
    def handle(self) -> None:
        """pynetdicom's, except that a connection beyond CONNECTIONS_PER_ASSOCIATION times the
        AE's maximum associations, or beyond the connections not associated yet that one address
        may hold, is closed at once (adapter.dicom.connections). pynetdicom gives every
        connection two threads, and refuses only at negotiation (maximum_associations): peers
        that connect and stay silent would each hold them until the ACSE timeout, without limit."""
        with admission():
            if refusal(self.server, str(self.client_address[0])) is None:
                super().handle()  # started under the lock: the next connection counts this one
                return
        with contextlib.suppress(OSError):
            self.request.shutdown(socket.SHUT_RDWR)
        self.request.close()

    def _create_association(self) -> Association:
        assoc = super()._create_association()
        _accelerate(assoc)
        if getattr(self.ae, "may_call", None) is not None and not isinstance(assoc.acse, _ACSE):
            # the check of a title's hosts lives in _ACSE: without it every caller is refused
            raise RuntimeError("pynetdicom's ACSE is not the one the adapter checks callers' hosts in")
        sock = getattr(getattr(assoc, "dul", None), "socket", None)
        if isinstance(sock, _AssociationSocket):
            sock.opened = time.monotonic()  # ARTIM starts at the connection (PS3.8 9.1.5)
        return assoc


def _spool_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's ``NamedTemporaryFile`` for the data set of a C-STORE request it spools: in
    the ``spool_dir`` of the adapter's AE whose association receives it (pynetdicom opens the
    file in that association's DUL thread), else where pynetdicom would have made it."""
    ae = getattr(getattr(threading.current_thread(), "assoc", None), "ae", None)
    if not isinstance(ae, _ApplicationEntity):
        return tempfile.NamedTemporaryFile(*args, **kwargs)
    # pynetdicom opens a spool file for each C-STORE command; a command that comes before the
    # previous one's data set has ended replaces that file in the message being decoded without
    # closing or removing it: a peer could fill the data folder with abandoned partial objects
    # (patient data) that nothing would remove while the process runs
    message = getattr(getattr(getattr(threading.current_thread(), "assoc", None), "dimse", None), "message", None)
    if message is not None:
        discard_spooled(message)
    if ae.spool_dir is not None:
        kwargs.setdefault("dir", ae.spool_dir)
    # unbuffered: a write the disk refuses fails there, in BoundedSpool, and not again when closed
    kwargs["buffering"] = 0
    try:
        spool = tempfile.NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115 - pynetdicom owns and closes it
    except OSError as exc:  # the SCP's disk, not the peer: the object is read, dropped and refused (0xA700)
        where = kwargs.get("dir") or tempfile.gettempdir()
        return UnopenedSpool(os.path.join(where, f"unopened-{uuid.uuid4().hex}.dcm"), exc, ae.max_object_bytes)
    # every write goes through .file: pynetdicom's (the wrapper delegates) and _StreamingDUL's
    spool.file = BoundedSpool(spool.file, ae.max_object_bytes)  # type: ignore[assignment]
    return spool


def _file_meta(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's ``create_file_meta`` for the File Meta it writes at the head of a spooled
    C-STORE data set (the object the adapter keeps): naming the adapter, which writes the file,
    as its implementation (PS3.10 7.1), for an association of the adapter's AE."""
    ae = getattr(getattr(threading.current_thread(), "assoc", None), "ae", None)
    if isinstance(ae, _ApplicationEntity):
        kwargs.setdefault("implementation_uid", UID(IMPLEMENTATION_CLASS_UID))
        kwargs.setdefault("implementation_version", IMPLEMENTATION_VERSION_NAME)
    return create_file_meta(*args, **kwargs)


def _spool_in_staging() -> None:
    """Install :func:`_spool_file` and :func:`_file_meta` in pynetdicom (once; process-wide, and
    a no-op for AEs that are not the adapter's)."""
    if getattr(dimse_messages, "NamedTemporaryFile", None) is tempfile.NamedTemporaryFile:
        setattr(dimse_messages, "NamedTemporaryFile", _spool_file)  # noqa: B010 - mypy: a module attribute
    if getattr(dimse_messages, "create_file_meta", None) is create_file_meta:
        setattr(dimse_messages, "create_file_meta", _file_meta)  # noqa: B010 - mypy: a module attribute


class _ApplicationEntity(AE):
    """pynetdicom's AE, except that an empty list of required calling AE titles refuses every
    caller instead of accepting all (pynetdicom's meaning of an empty list), and that received
    data sets are spooled in ``spool_dir``, at most ``max_object_bytes`` each (:func:`_spool_file`)."""

    def __init__(self, ae_title: str, allowed: tuple[str, ...], spool_dir: Path | None = None,
                 max_object_bytes: int = 0, may_call: Callable[[str, str], bool] | None = None) -> None:
        super().__init__(ae_title=ae_title)
        self._allowed = list(allowed)
        #: whether an allowed title may call from an address (None: from any; AeOptions.may_call)
        self.may_call = may_call
        self.spool_dir = spool_dir
        self.max_object_bytes = max_object_bytes
        #: connections from one address not associated yet (adapter.dicom.connections)
        self.max_pending_per_address: int | None = None

    @property
    def require_calling_aet(self) -> list[str]:
        return self._allowed or [_NOBODY]

    @require_calling_aet.setter
    def require_calling_aet(self, ae_titles: list[str]) -> None:
        raise AttributeError("the allowed calling AE titles come from AeOptions")

    def make_server(self, *args: Any, **kwargs: Any) -> Any:
        """pynetdicom's server, its accepted associations given the faster receive path."""
        kwargs.setdefault("request_handler", _RequestHandler)
        if kwargs.get("server_class") is ThreadedAssociationServer:
            kwargs["server_class"] = ThreadedServer
        return super().make_server(*args, **kwargs)


class StoreSCP:
    """The SCP on ``options.host:options.port`` (port 0: an ephemeral one, see :attr:`port`).

    ``start()`` returns once the socket listens; associations are served in background
    threads until ``stop()``. Usable as a context manager.
    """

    def __init__(self, options: AeOptions, ingest: DicomIngestService,
                 sop_classes: Iterable[str] | None = None) -> None:
        self.options = options
        self._ingest = ingest
        self._sop_classes = tuple(dict.fromkeys(sop_classes if sop_classes is not None
                                                else ingest.accepted_sop_classes))
        if not self._sop_classes:
            raise ConfigurationError("the SCP accepts no SOP class (mappings/dicom.yaml receive.sopClasses)")
        self._ae: _ApplicationEntity | None = None
        self._server: Any = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # set by stop(): C-STOREs are refused from then on
        self._flusher: threading.Thread | None = None  # writes the ended windows of rejected associations

    def _build_ae(self) -> _ApplicationEntity:
        o = self.options
        bound = any(hosts is not None for hosts in o.callers.values())
        ae = _ApplicationEntity(o.ae_title, o.allowed_ae_titles, self._ingest.spool_dir, o.max_object_bytes,
                                o.may_call if bound else None)
        # the adapter's, not pynetdicom's, in the A-ASSOCIATE-AC (PS3.7 D.3.3.2; README, DICOM conformance)
        ae.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_pdu_size = o.max_pdu
        ae.acse_timeout = o.acse_timeout
        ae.dimse_timeout = o.dimse_timeout
        ae.network_timeout = o.network_timeout
        ae.maximum_associations = o.maximum_associations
        ae.max_pending_per_address = o.max_pending_per_address
        # by default a PACS may call us by another configured title (ADAPTER_DICOM_REQUIRE_CALLED_AE_TITLE)
        ae.require_called_aet = o.require_called_ae_title
        ae.add_supported_context(VERIFICATION)
        for sop_class in self._sop_classes:
            # the table STOW-RS checks its parts against (one list for both edges)
            ae.add_supported_context(sop_class, list(accepted_transfer_syntaxes(sop_class)))
        return ae

    def start(self) -> None:
        """Bind and listen; raises ConfigurationError when the address cannot be bound."""
        with self._lock:
            if self._server is not None:
                return
            # Spool C-STORE datasets to disk as they arrive instead of holding them in memory.
            # A process-wide pynetdicom switch; it changes nothing for SCU associations.
            _config.STORE_RECV_CHUNKED_DATASET = True
            _spool_in_staging()
            # C-FIND identifiers and the like hold patient data: never logged; nor a peer's
            # values quoted into pynetdicom's records as they are (adapter.dicom.logs)
            _config.LOG_REQUEST_IDENTIFIERS = False
            _config.LOG_RESPONSE_IDENTIFIERS = False
            make_pynetdicom_logs_safe()
            # Read received values as sent, without validating them against their VR: pydicom's
            # validation warnings quote the value (a name, an ID) into the logs. Process-wide too.
            pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
            ae = self._build_ae()
            self._stopping.clear()
            handlers: list[Any] = [
                (evt.EVT_CONN_OPEN, handle_conn_open),
                (evt.EVT_CONN_CLOSE, handle_conn_close),
                (evt.EVT_C_ECHO, handle_echo),
                (evt.EVT_C_STORE, handle_store, [self._ingest, self._stopping]),
                (evt.EVT_REJECTED, handle_rejected, [self._ingest.rejected_associations]),
                (evt.EVT_ACCEPTED, handle_accepted, [self._ingest.rejected_associations]),
            ]
            try:
                self._server = ae.start_server((self.options.host, self.options.port), block=False,
                                               evt_handlers=handlers)
            except OSError as exc:
                ae.shutdown()
                raise ConfigurationError(f"the DICOM SCP cannot listen on {self.options.host}:"
                                         f"{self.options.port} ({exc.strerror or exc})") from exc
            self._ae = ae
            rejections = self._ingest.rejected_associations
            stopping = self._stopping

            def flush_ended() -> None:  # a flood that stopped is in the trail within two windows
                while not stopping.wait(rejections.window):
                    rejections.flush_ended()

            self._flusher = threading.Thread(target=flush_ended, name="dicom-rejections", daemon=True)
            self._flusher.start()
        if not self.options.allowed_ae_titles:
            log.warning("no calling AE title is allowed (ADAPTER_DICOM_ALLOWED_AE_TITLES and the policy's "
                        "allowedAETitles are empty): every association will be rejected")
        if self.options.unbound:  # an operator's binding voided by a bare title elsewhere (the policy, say)
            log.warning("calling AE title(s) %s bound to hosts are also allowed without a host "
                        "(ADAPTER_DICOM_ALLOWED_AE_TITLES and the policy's allowedAETitles together): "
                        "allowed from any host", ", ".join(self.options.unbound))
        callers = [title if hosts is None else f"{title} from {' '.join(map(str, hosts))}"
                   for title, hosts in self.options.callers.items()]
        log.info("DICOM SCP %s on %s:%d (calling AE titles allowed: %s)", self.options.ae_title, self.host,
                 self.port, ", ".join(callers) or "none")

    @property
    def host(self) -> str:
        return str(self._server.server_address[0]) if self._server is not None else self.options.host

    @property
    def port(self) -> int:
        """The port listened on (the ephemeral one chosen when the options said 0)."""
        return int(self._server.server_address[1]) if self._server is not None else self.options.port

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let each C-STORE being ingested finish and its answer go out, then
        abort the open associations and wait (up to ``timeout`` seconds in all) for their
        threads, so that no ingest is cut off by the store being closed.

        A sender must never be told an object failed that was stored, nor the reverse. Aborting
        at once (as before) sent A-ABORT while an object that had arrived whole was still being
        ingested: storescu reported the store failed, and the object was stored a moment later.
        So: from now on every C-STORE is refused (0xA700, nothing stored; ``handle_store``), an
        association serving a request is waited for until its answer is queued (the DUL sends it
        before the A-ABORT queued after it), and only then are the associations aborted. An
        object still arriving is cut off (the connection closed: nothing of it is stored)."""
        with self._lock:
            ae, server, self._ae, self._server = self._ae, self._server, None, None
        if ae is None:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        with contextlib.suppress(Exception):  # no new associations (ae.shutdown() below also stops it)
            server.shutdown()
        associations = list(ae.active_associations)
        for assoc in associations:
            while getattr(assoc, "in_request", False) and assoc.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
        ae.shutdown()
        for assoc in associations:
            # a DUL thread waiting inside a PDU hears nothing of the abort until its read times
            # out (the network timeout): end its reads now; a C-STORE being ingested in the
            # association's own thread goes on and is waited for below
            sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
            if sock is not None and assoc.is_alive():
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD)
        for assoc in associations:
            assoc.join(max(0.0, deadline - time.monotonic()))
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.join(max(0.0, deadline - time.monotonic()))
        self._ingest.rejected_associations.flush()  # the counts of repeated rejections (module docstring)
        log.info("DICOM SCP stopped")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


__all__ = ["IMAGE_SYNTAXES", "UNCOMPRESSED_SYNTAXES", "StoreSCP", "accepted_transfer_syntaxes"]
