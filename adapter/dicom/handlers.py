"""pynetdicom event handlers of the SCP: C-ECHO, C-STORE, and the connection hooks.

Each association runs in its own thread (pynetdicom's acceptor thread), and ``handle_store``
does the durable ingest in that thread before answering: a Success status means the object
and its FHIR record are committed (files fsynced, one database commit), as on the HTTP path.

Logs name the calling AE, the peer address, the request's Message ID, the record stored and the
status with the error's type and the element it concerns (``AdapterError.for_log``); never a
dataset value nor the SOP Instance UID: UIDs are built from patient IDs and birth dates by some
modalities (PS3.15 E.1-1 replaces them for that reason), and an error's diagnostics may quote a
value. The sender's own log ties the Message ID to its object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING, Any, cast

from pydicom.dataset import Dataset

from adapter.dicom.spool import BoundedSpool
from adapter.dicom.status import (
    BUG_STATUS,
    SUCCESS,
    dimse_status_for,
    error_comment,
    offending_elements,
)
from adapter.errors import AdapterError, InvalidInput, PayloadTooLarge, Transient, staging_failure
from adapter.mapping.audit_dicom import association_rejection
from adapter.metrics import ASSOCIATIONS, C_STORES, INGESTS
from adapter.services.association_audit import RejectedAssociations, Rejection
from adapter.services.dicom_ingest import DicomIngestService, ReceivedStore

if TYPE_CHECKING:
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event

log = logging.getLogger("adapter.dicom")

#: The Result/Reason of a rejected presentation context in an A-ASSOCIATE-AC (PS3.8 Table 9-18).
_CONTEXT_RESULTS = {1: "user-rejection", 2: "no-reason (provider rejection)",
                    3: "abstract-syntax-not-supported (provider rejection)",
                    4: "transfer-syntaxes-not-supported (provider rejection)"}


def handle_echo(event: Event) -> int:
    """C-ECHO (Verification, PS3.4 Annex A): always Success once associated."""
    return SUCCESS


def _received_store(event: Event) -> ReceivedStore:
    request = cast("C_STORE", event.request)
    requestor = event.assoc.requestor
    return ReceivedStore(
        path=event.dataset_path,
        calling_ae=str(requestor.ae_title).strip(),
        peer_address=str(requestor.address),
        context_sop_class=str(event.context.abstract_syntax),
        transfer_syntax=str(event.context.transfer_syntax),
        affected_sop_class=str(request.AffectedSOPClassUID or ""),
        affected_sop_instance=str(request.AffectedSOPInstanceUID or ""),
    )


def _check_data_set(event: Event) -> None:
    """InvalidInput when the C-STORE request came without a data set (Command Data Set Type
    0101H: there is no object to store); StorageError when its spool file could not be created
    or written (adapter.dicom.spool: the rest was read and dropped), InsufficientStorage where
    that was for want of room (adapter.errors.staging_failure); PayloadTooLarge when the data set outgrew its spool
    file (adapter.dicom.spool): what arrived past the limit was dropped, so the file holds part
    of the object."""
    if getattr(event.request, "_dataset_path", None) is None:
        raise InvalidInput("the C-STORE request has no data set")
    spool = getattr(getattr(event.request, "_dataset_file", None), "file", None)
    if isinstance(spool, BoundedSpool) and spool.failed is not None:
        # the SCP's disk failed (logged with its errno where it did): Out of Resources, to be sent
        # again; for want of room (ENOSPC, EDQUOT) said and audited as the reserve's refusal is.
        # The partial spool file goes first: on a full disk its bytes are the room the refusal's
        # audit event needs (pynetdicom's own removal after the handler then finds nothing)
        discard_spooled(event.request)
        raise staging_failure("could not spool the object in the staging folder", spool.failed) from spool.failed
    if isinstance(spool, BoundedSpool) and spool.overflowed:
        raise PayloadTooLarge(f"the object is larger than {spool.limit} bytes")


def handle_store(event: Event, ingest: DicomIngestService, stopping: threading.Event | None = None) -> int | Dataset:
    """C-STORE (Storage Service Class, PS3.4 Annex B): ingest the received object durably, then
    answer: Success (an object stored, or sent again as it was stored: adapter.services.dicom_ingest).
    Refusals go through the one status table (adapter.dicom.status) with an Error
    Comment and, when the refusal names elements and its status has the field (A9xx, Cxxx),
    Offending Element (0000,0901) (PS3.7 C.4, PS3.4 Table B.2-1); anything outside the error hierarchy is a bug and answered with BUG_STATUS. Every
    refusal is audited once: by the ingest, or here when the request never reached it. Once the
    SCP is ``stopping`` nothing is ingested any more (0xA700, to be sent again): an ingest started
    then could be cut off by the store closing after its sender was told it failed."""
    received = _received_store(event)
    where = f"{received.calling_ae}@{received.peer_address}, message ID {getattr(event.request, 'MessageID', '?')}"
    try:
        try:
            if stopping is not None and stopping.is_set():
                raise Transient("the SCP is stopping: send the object again later")
            _check_data_set(event)
        except AdapterError as exc:
            ingest.record_refusal(calling_ae=received.calling_ae, peer_address=received.peer_address,
                                  sop_instance_uid=received.affected_sop_instance, error=exc)
            raise
        result = ingest.ingest_received(received)
    except AdapterError as exc:
        status = dimse_status_for(exc)
        log.warning("C-STORE from %s refused (0x%04X %s)", where, status, exc.for_log())
        answer = Dataset()
        answer.Status = status
        answer.ErrorComment = error_comment(exc)
        offending = offending_elements(exc, status)
        if offending:  # the tags the refusal names, whole, where the comment is cut to 64 characters
            answer.OffendingElement = offending
        C_STORES.labels(f"0x{status:04X}").inc()
        return answer
    except Exception:
        log.exception("C-STORE from %s failed with an unexpected error (a bug)", where)
        C_STORES.labels(f"0x{BUG_STATUS:04X}").inc()
        return BUG_STATUS
    INGESTS.labels("dicom", "replayed" if result.replayed else "stored").inc()
    log.info("C-STORE from %s: %s %s", where, "already stored as" if result.replayed else "stored as", result.record)
    C_STORES.labels(f"0x{SUCCESS:04X}").inc()
    return SUCCESS


def _ae_title(value: Any) -> str:
    """An AE title as the peer sent it, for the audit: at most 16 characters (PS3.8's field),
    anything but printable ASCII replaced. pynetdicom aborts a request whose AE titles are not
    ASCII or hold control characters (measured), so this only keeps that true whatever it does."""
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or "")
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text[:16]).strip()


def _rejection(assoc: Any, reason: str) -> Rejection:
    request = getattr(assoc.requestor, "primitive", None)
    return Rejection(calling_ae_title=_ae_title(getattr(request, "calling_ae_title", "")),
                     called_ae_title=_ae_title(getattr(request, "called_ae_title", "")),
                     peer_address=str(assoc.requestor.address or ""), reason=reason)


def handle_rejected(event: Event, rejections: RejectedAssociations) -> None:
    """An A-ASSOCIATE-RJ was sent (the calling AE title not allowed, too many associations):
    audited as a Security Alert, repeats coalesced (adapter.services.association_audit)."""
    rj = getattr(event.assoc.acceptor, "primitive", None)
    if rj is None:
        return
    why = association_rejection(int(rj.result or 0), int(rj.result_source or 0), int(rj.diagnostic or 0))
    rejection = _rejection(event.assoc, f"association rejected (A-ASSOCIATE-RJ {why})")
    if rejections.record(rejection):  # a caller's repeats within a minute: counted, not logged again
        log.info("association from %s@%s rejected (%s; repeats within a minute are counted in the audit trail)",
                 rejection.calling_ae_title, rejection.peer_address, why)


def handle_accepted(event: Event, rejections: RejectedAssociations) -> None:
    """An A-ASSOCIATE-AC was sent. pynetdicom accepts an association whose every presentation
    context it rejected (PS3.8 9.3.3.2: abstract syntax or transfer syntaxes not supported),
    where dcmtk's storescp rejects it: nothing can be sent on it, the SCP refused all the peer
    asked for. Audited as a rejected association is (adapter.services.association_audit), and
    not counted as accepted (adapter_dicom_associations_total counts the others)."""
    assoc = event.assoc
    if assoc.accepted_contexts:
        ASSOCIATIONS.inc()
        return
    results = sorted({int(cx.result) for cx in assoc.rejected_contexts if cx.result is not None})
    why = ", ".join(f"{r} ({_CONTEXT_RESULTS.get(r, 'rejected')})" for r in results) or "none proposed"
    rejection = _rejection(assoc, f"no presentation context accepted (results {why})")
    if rejections.record(rejection):
        log.info("association from %s@%s accepted with no presentation context (results %s; repeats within a "
                 "minute are counted in the audit trail)", rejection.calling_ae_title, rejection.peer_address, why)


def handle_conn_open(event: Event) -> None:
    """Turn Nagle's algorithm off on the accepted socket: with it, each small C-STORE response
    waits for the peer's delayed ACK (~40 ms per object). Not an association yet: a readiness
    probe or a port scan connects and says nothing (:func:`handle_accepted` counts)."""
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def discard_spooled(message: Any) -> None:
    """Close and remove the temporary file pynetdicom spools a C-STORE dataset into
    (``_config.STORE_RECV_CHUNKED_DATASET``), when the message never reached the handler."""
    for name in ("_data_set_file", "_dataset_file"):
        spool = getattr(message, name, None)
        if spool is None:
            continue
        with contextlib.suppress(OSError):
            spool.close()
        with contextlib.suppress(OSError):
            os.unlink(spool.name)


def handle_conn_close(event: Event) -> None:
    """The connection is closed (released, aborted or lost). A C-STORE whose dataset was still
    arriving, or that arrived but was never served, left a spool file that pynetdicom does not
    remove: remove it, so an aborted transfer leaves nothing behind. Runs in the association's
    DUL thread, the one that writes the spool, after it stopped reading."""
    dimse = getattr(event.assoc, "dimse", None)
    if dimse is None:
        return
    partial = getattr(dimse, "message", None)
    if partial is not None:
        discard_spooled(partial)
    queue = getattr(dimse, "msg_queue", None)
    if queue is not None:
        with queue.mutex:
            pending = list(queue.queue)
        for _context_id, primitive in pending:
            discard_spooled(primitive)


__all__ = ["discard_spooled", "handle_accepted", "handle_conn_close", "handle_conn_open", "handle_echo",
           "handle_rejected", "handle_store"]
