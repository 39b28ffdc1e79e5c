"""C-STORE SCU: sends DICOM objects to a PACS (PS3.4 Annex B, Storage Service Class).

One :class:`StoreSCU` serves every destination (``AE@host:port``), with one pynetdicom AE and one
lock per destination: destinations are sent to at once from the forwarder's workers, each
destination's batches one after the other. A batch goes over ONE association; the association is kept open for the next batch
to the same destination when it was negotiated with every presentation context that batch needs
(accepted or not: the PACS has answered for each), until :meth:`StoreSCU.release`. The forwarder
sends a claim in small batches (bounded memory) and releases when the outbox is drained, so a
backlog of N photos costs one association.

Presentation contexts (PS3.8 §7.1.1.13) are proposed for the SOP Class × Transfer Syntax pairs
actually in the batch, and for no others (none carried over from an earlier association to the
destination: PACS review finding 4), each context with exactly one transfer syntax, so that the PACS's answer
says which syntaxes it takes: an object in its own syntax and, for a PACS that accepts no
compressed syntax or no explicit VRs (it need accept only Implicit VR Little Endian, PS3.5
10.1), in the uncompressed ones it can fall back on (adapter.mapping.dicom_decompress.FALLBACKS):
a JPEG Baseline object (1.2.840.10008.1.2.4.50) also in Explicit and Implicit VR Little Endian,
a native Explicit VR Little Endian one (what the adapter generates for a PNG or rotated photo)
also in Implicit VR Little Endian.

An object goes as stored whenever the PACS accepted its own transfer syntax. Only when it
accepted none but an uncompressed one is a JPEG Baseline object decoded to native pixel data,
right before its C-STORE and after the ``withhold`` check (adapter.mapping.dicom_decompress: the
same SOP Instance, still flagged lossy, never compressed again; Explicit VR preferred), one
object at a time, dropped once sent. That costs a decode (about half a second for a 12 MP photo)
and ten times the bytes on the wire (36 MB instead of a few). A native Explicit VR Little
Endian object goes to a PACS that took only Implicit VR Little Endian with the same elements and
values, its element headers written without VRs (nothing decoded). An object the PACS accepts in
none of the proposed syntaxes, or one that cannot be decompressed faithfully, fails permanently. With three
contexts for a compressed object the 128 contexts of one association (``MAX_CONTEXTS``) hold at
least 42 SOP classes; a batch with more goes over more associations.

A PACS that does not answer is said to time out, not to refuse: an A-ASSOCIATE-RQ unanswered within
the ACSE timeout, a C-STORE unanswered within the DIMSE timeout (the PACS may have stored it: the
retry resends the same SOP Instance UID), told apart from a rejection, a refused connection and an
abort (PACS review finding 2).

Results (PS3.7 Annex C, PS3.4 B.2.3): Success and every Warning (0xB000 coercion, 0xB006 element
discarded, 0xB007 data set does not match SOP class, ...) mean the PACS stored the object:
acknowledged. Each result says whether the object's data set went out (``transmitted``: the
C-STORE-RQ was sent, whatever the answer; or nothing of it, when the association, its presentation
contexts, a last check or the encoding stopped it before), for the forwarder's audit of a failed
attempt. Failures are split into retryable (out of resources 0xA7xx, processing failure,
timeouts, lost connections, transient association rejection) and permanent (cannot understand
0xCxxx, data set does not match SOP class 0xA9xx, SOP class not supported, not authorised,
permanent association rejection, no acceptable presentation context).

A caller may hold objects back at the last moment: ``send_batch``'s ``withhold`` is asked about
each object right before its C-STORE-RQ goes out (after the association and its presentation
context are settled, in the thread that sends, before any decompression), and an object it gives
a reason for is not sent (a permanent failure with that reason); one it cannot answer for (it
raises) is not sent either (retried). The SCU does not know why: the forwarder takes the consent
decision again there (adapter.services.forwarding), so consent policy stays out of the DICOM edge.
And it may learn of each acknowledgement as it happens: ``send_batch``'s ``acknowledged`` is
called with the object's index and result right after the PACS answered its C-STORE with Success
or a Warning, before the next object goes, so the caller can record it as sent at once (the
outbox's "never sent twice once acknowledged"); an exception from it is logged and the batch
goes on (the result is returned all the same).

Sockets get TCP_NODELAY (Nagle's algorithm plus delayed ACKs stalls each C-STORE ~40 ms).
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from adapter.config import Settings
from adapter.dicom.associate_pdu import NegotiationDUL
from adapter.dicom.logs import make_pynetdicom_logs_safe
from adapter.errors import AdapterError, ConfigurationError
from adapter.mapping.dicom_decompress import (
    DECOMPRESSIBLE,
    FALLBACKS,
    encapsulated_to_native,
    explicit_to_implicit,
)
from adapter.mapping.dicom_uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from adapter.services.forwarding import SendOutcome, SendResult
from adapter.text import is_digits

log = logging.getLogger(__name__)

#: PS3.8 §9.3.2.2: at most 128 presentation contexts in one A-ASSOCIATE-RQ (odd IDs 1..255).
MAX_CONTEXTS = 128

#: Failure statuses worth retrying (PS3.7 C.5, PS3.4 B.2.3): the SCP may manage later.
_RETRYABLE_FAILURES = frozenset({0x0110, 0x0213, 0xFE00})  # processing failure, resource limitation, cancel


@dataclass(frozen=True)
class Destination:
    """A C-STORE SCP: ``AE@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        ae, sep, addr = text.strip().partition("@")
        host, colon, port = addr.rpartition(":")
        if not sep or not ae or not colon or not host or not is_digits(port) or len(ae) > 16:
            raise ConfigurationError(f"'{text[:60]}' is not AE@host:port")
        return cls(ae_title=ae, host=host.strip("[]"), port=int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class ScuOptions:
    """The SCU's AE title and timeouts (seconds)."""

    ae_title: str = "ADAPTER"
    connection_timeout: float = 10.0   # TCP connect
    acse_timeout: float = 30.0         # waiting for A-ASSOCIATE-AC/RJ and A-RELEASE-RP
    dimse_timeout: float = 120.0       # waiting for a C-STORE response (the PACS may write slowly)
    network_timeout: float = 120.0     # an idle connection is closed after this
    max_pdu: int = 4 * 1024 * 1024     # largest PDU we receive (we receive only small responses)

    @classmethod
    def from_settings(cls, settings: Settings) -> ScuOptions:
        return cls(ae_title=settings.ae_title, max_pdu=settings.dicom_max_pdu)


class _RequestorAE(AE):
    """pynetdicom's AE, keeping each requestor socket so that it can be closed when connecting
    fails: pynetdicom 3.0 drops a refused socket without closing it (a ResourceWarning and a
    leaked descriptor per failed attempt, i.e. per retry during a PACS outage); and whose DUL
    ignores unrecognised items of an A-ASSOCIATE-AC (adapter.dicom.associate_pdu)."""

    def _create_socket(self, assoc: Association, address: Any, tls_args: Any) -> Any:
        sock = super()._create_socket(assoc, address, tls_args)
        assoc.adapter_raw_socket = sock.socket  # type: ignore[attr-defined]
        if type(assoc) is Association:  # its reactor starts once the association is established
            assoc.__class__ = _RequestorAssociation
        if type(assoc.dul) is DULServiceProvider:  # not started yet: its reader is chosen now
            assoc.dul.__class__ = NegotiationDUL  # a PACS's vendor items in its A-ASSOCIATE-AC are ignored
        return sock


class _RequestorAssociation(Association):
    """An association whose reactor hands back the response a C-STORE is waiting for.

    pynetdicom's send_c_store() pauses the reactor thread before it sends, but the pause races
    (the reactor may already be past its checkpoint, pydicom/pynetdicom#875): the reactor then
    takes the C-STORE-RSP off the DIMSE queue, drops it as an "unexpected C-STORE service
    message", and the sender waits its DIMSE timeout, or until the PACS closes the idle
    association; the object the PACS acknowledged is then sent again. A response to the message
    the sender awaits (``awaiting_response``, set around each send) goes back on the queue."""

    awaiting_response: int | None = None

    def _serve_request(self, msg: Any, context_id: int) -> None:
        awaited = self.awaiting_response
        if (awaited is not None and not msg.is_valid_request
                and getattr(msg, "MessageIDBeingRespondedTo", None) == awaited):
            self.dimse.msg_queue.put((context_id, msg))
            return
        super()._serve_request(msg, context_id)


def _close_raw_socket(assoc: Association) -> None:
    raw = getattr(assoc, "adapter_raw_socket", None)
    if isinstance(raw, socket.socket):
        raw.close()


def _keep_rejection(event: evt.Event) -> None:
    """EVT_PDU_RECV: keep the peer's A-ASSOCIATE-RJ on the association. pynetdicom's DUL thread
    reads it and closes the connection; a requesting thread that looks only after that (a loaded
    machine) finds the connection gone and reports an abort, though the peer rejected. Any PDU
    received says the peer answered (:meth:`StoreSCU._why_not`: not an ACSE timeout)."""
    setattr(event.assoc, "adapter_answered", True)  # noqa: B010 - read by _why_not
    pdu = getattr(event, "pdu", None)
    if isinstance(pdu, A_ASSOCIATE_RJ):
        setattr(event.assoc, "adapter_rejection", pdu.to_primitive())  # noqa: B010 - read by _why_not


def _nodelay(event: evt.Event) -> None:
    """EVT_CONN_OPEN: switch Nagle's algorithm off before the A-ASSOCIATE-RQ goes out; note when
    the connection opened (:meth:`StoreSCU._why_not` tells an ACSE timeout from a refusal)."""
    setattr(event.assoc, "adapter_opened_at", time.monotonic())  # noqa: B010 - read by _why_not
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _pair(ds: Dataset) -> tuple[UID, UID] | None:
    """(SOP Class UID, Transfer Syntax UID) of a dataset, None if it lacks either."""
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    sop_class = ds.get("SOPClassUID")
    if not ts or not sop_class or not ds.get("SOPInstanceUID"):
        return None
    return UID(str(sop_class)), UID(str(ts))


def _contexts_for(pair: tuple[UID, UID]) -> list[tuple[UID, UID]]:
    """The presentation contexts (SOP class, transfer syntax) proposed for objects of ``pair``:
    its own, then the uncompressed ones it may fall back on (FALLBACKS: decompressed, or Explicit
    VR Little Endian written with implicit VRs)."""
    return [pair, *((pair[0], ts) for ts in FALLBACKS.get(pair[1], ()))]


def _syntax_for(pair: tuple[UID, UID], accepted: dict[tuple[UID, UID], PresentationContext]) -> UID | None:
    """The transfer syntax an object of ``pair`` goes in over an association that accepted
    ``accepted``: its own whenever accepted (as stored), else the first accepted fallback of
    :func:`_contexts_for` (decompressed), else None."""
    for context in _contexts_for(pair):
        if context in accepted:
            return context[1]
    return None


def _load(obj: Dataset | Path) -> tuple[Dataset, SendResult | None]:
    """A dataset to send; a Part 10 file is read as stored (its transfer syntax is kept)."""
    if isinstance(obj, Dataset):
        return obj, None
    try:
        return dcmread(obj), None
    except (OSError, InvalidDicomError, ValueError) as exc:
        return Dataset(), SendResult("", SendOutcome.PERMANENT, None, f"unreadable DICOM file: {type(exc).__name__}",
                                     transmitted=False)


def _undefined_length_pixel_data(ds: Dataset, transfer_syntax: UID) -> None:
    """Encapsulated Pixel Data must be written with undefined length (PS3.5 A.4). A dataset built
    in memory with ``pydicom.encaps.encapsulate`` has a defined-length element (``save_as`` fixes
    that for files, the network encoder does not): the SCP cannot parse it and aborts."""
    if transfer_syntax.is_encapsulated and "PixelData" in ds:
        elem = ds["PixelData"]
        if not elem.is_undefined_length:
            elem.is_undefined_length = True


def _held_back(uid: str, index: int, withhold: Callable[[int], str | None] | None) -> SendResult | None:
    """The caller's last word on the ``index``-th object, right before its C-STORE-RQ: None to
    send it. Fail closed: a check that raises holds it back too (retried later, asked again)."""
    if withhold is None:
        return None
    try:
        reason = withhold(index)
    except Exception as exc:
        log.exception("the check before a C-STORE failed; the object is not sent")
        return SendResult(uid, SendOutcome.RETRY, None, f"not sent: the check before sending failed "
                                                        f"({type(exc).__name__})", transmitted=False)
    if reason is None:
        return None
    return SendResult(uid, SendOutcome.PERMANENT, None, reason[:300] or "not sent: held back", transmitted=False)


def _tell_acknowledged(index: int, result: SendResult,
                       acknowledged: Callable[[int, SendResult], None] | None) -> None:
    """Tell the caller at once that the ``index``-th object was acknowledged (module docstring)."""
    if acknowledged is None or not result.acknowledged:
        return
    try:
        acknowledged(index, result)
    except Exception:
        log.exception("the caller failed to take note of an acknowledged C-STORE; the batch goes on")


#: A-ASSOCIATE-AC presentation context results (PS3.8 9.3.3.2): 1 user-rejection,
#: 2 no-reason (provider rejection), 3 abstract-syntax-not-supported, 4 transfer-syntaxes-not-supported.
ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
_CONTEXT_RESULTS = {1: "user rejection", 2: "provider rejection, no reason given",
                    ABSTRACT_SYNTAX_NOT_SUPPORTED: "abstract syntax not supported",
                    4: "transfer syntaxes not supported"}


def _rejections(assoc: Association) -> dict[UID, set[int]]:
    """The results of the presentation contexts the PACS rejected, by SOP class (abstract syntax)."""
    out: dict[UID, set[int]] = {}
    for cx in assoc.rejected_contexts:
        if cx.abstract_syntax and cx.result is not None:
            out.setdefault(UID(cx.abstract_syntax), set()).add(int(cx.result))
    return out


def _refuses_sop_class(results: set[int]) -> bool:
    """Whether the PACS's answers for a SOP class's contexts say it does not take the SOP class
    at all (abstract-syntax-not-supported), rather than not in the syntaxes proposed."""
    return ABSTRACT_SYNTAX_NOT_SUPPORTED in results and 4 not in results


def _not_accepted(dest: Destination, pair: tuple[UID, UID] | None, results: set[int] | None = None) -> str:
    """lastError of an object the PACS accepted in none of the syntaxes proposed for it, in the
    words of the PACS's answer (``results``, :func:`_rejections`): a SOP class it does not take
    at all (result 3) is said to be so, not taken for a transfer syntax mismatch (result 4)."""
    if pair is None:
        return f"{dest} did not accept ? in ? (not re-encoded)"
    results = results or set()
    if _refuses_sop_class(results):
        return f"{dest} does not accept {pair[0].name} (presentation contexts rejected: abstract syntax not supported)"
    why = ", ".join(_CONTEXT_RESULTS.get(r, f"result {r}") for r in sorted(results))
    because = f" ({why})" if why else ""
    if pair[1] in FALLBACKS:
        return (f"{dest} accepted {pair[0].name} neither in {pair[1].name} nor in another uncompressed "
                f"syntax{because}")
    return f"{dest} did not accept {pair[0].name} in {pair[1].name}{because} (not re-encoded)"


def classify_status(sop_instance_uid: str, status: Dataset) -> SendResult:
    """Map a C-STORE response's status to a :class:`SendResult` (see the module docstring). Its
    request went out with the data set (``transmitted``), whatever the PACS answered, or if it
    answered nothing."""
    return dataclasses.replace(_classify(sop_instance_uid, status), transmitted=True)


def _classify(sop_instance_uid: str, status: Dataset) -> SendResult:
    code = status.get("Status")
    if code is None:  # pynetdicom: no (valid) response, i.e. DIMSE timeout or the connection was lost
        return SendResult(sop_instance_uid, SendOutcome.RETRY, None, "no C-STORE response (timeout or aborted)")
    code = int(code)
    if code == 0x0000:
        return SendResult(sop_instance_uid, SendOutcome.ACKNOWLEDGED, code)
    said = _what_the_pacs_said(code, status)
    comment = pacs_error_comment(status)
    if code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF:
        return SendResult(sop_instance_uid, SendOutcome.ACKNOWLEDGED, code, f"stored with warning {said}",
                          error_comment=comment)
    if 0xA700 <= code <= 0xA7FF or code in _RETRYABLE_FAILURES:
        return SendResult(sop_instance_uid, SendOutcome.RETRY, code, f"C-STORE failed {said}", error_comment=comment)
    return SendResult(sop_instance_uid, SendOutcome.PERMANENT, code, f"C-STORE refused {said}", error_comment=comment)


#: What is kept of a PACS's answer (PS3.7 C.4): at most this many Offending Element tags, and
#: this many characters of its Error Comment (LO, 64 characters, though some PACSs send more).
OFFENDING_ELEMENTS_MAX = 8
ERROR_COMMENT_MAX = 200


def _what_the_pacs_said(code: int, status: Dataset) -> str:
    """A failure or warning status as the log, lastError and the audit say it: the code, its
    meaning for the Storage Service Class (PS3.4 Annex B Table B.2-1, PS3.7 Annex C general
    statuses) and the Offending Element(s) (0000,0901) the response lists, each as its tag and
    keyword. No patient data: the PACS's Error Comment, which may quote some, is kept apart
    (:func:`pacs_error_comment`)."""
    _, meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", ""))
    said = f"0x{code:04X} ({meaning or 'a status of no meaning defined for C-STORE'})"
    tags = _offending_elements(status)
    return f"{said}, Offending Element {', '.join(tags)}" if tags else said


def _offending_elements(status: Dataset) -> list[str]:
    """Offending Element (0000,0901) of a response, AT of VM 1-n: ``(gggg,eeee) Keyword`` each,
    at most :data:`OFFENDING_ELEMENTS_MAX` (more: "..."); none when it is absent or unreadable."""
    try:
        value = status.get("OffendingElement")
        if value is None or value == "":
            return []
        tags = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
        named = []
        for tag in (Tag(t) for t in tags[:OFFENDING_ELEMENTS_MAX]):
            keyword = keyword_for_tag(tag)
            named.append(f"({tag.group:04X},{tag.element:04X})" + (f" {keyword}" if keyword else ""))
    except (TypeError, ValueError, OverflowError, KeyError):
        return ["(unreadable)"]
    return named + (["..."] if len(tags) > OFFENDING_ELEMENTS_MAX else [])


def pacs_error_comment(status: Dataset) -> str | None:
    """Error Comment (0000,0902) of a response as the PACS sent it, control characters (C0, DEL,
    C1) replaced by spaces and cut at :data:`ERROR_COMMENT_MAX` characters; None when absent or
    empty. A PACS may quote patient data in it: it goes to lastError and the audit, never the log."""
    try:
        value = status.get("ErrorComment")
    except (TypeError, ValueError, KeyError):
        return None
    if value is None:
        return None
    text = " ".join("".join(" " if ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F else ch for ch in str(value)).split())
    if not text:
        return None
    return text if len(text) <= ERROR_COMMENT_MAX else text[:ERROR_COMMENT_MAX - 3].rstrip() + "..."


def _groups(pairs: Sequence[tuple[UID, UID]]) -> list[tuple[set[tuple[UID, UID]], list[tuple[UID, UID]]]]:
    """``pairs`` in groups whose presentation contexts (:func:`_contexts_for`, shared ones
    once) fit one association: (the pairs, the contexts) per group, in order."""
    groups: list[tuple[set[tuple[UID, UID]], list[tuple[UID, UID]]]] = []
    for pair in pairs:
        contexts = _contexts_for(pair)
        if groups:
            current, proposed = groups[-1]
            new = [c for c in contexts if c not in proposed]
            if len(proposed) + len(new) <= MAX_CONTEXTS:
                current.add(pair)
                proposed.extend(new)
                continue
        groups.append(({pair}, list(contexts)))
    return groups


class StoreSCU:
    """C-STORE SCU for every forwarding destination (satisfies ``services.forwarding.StoreSender``).

    Destinations are independent: calls for different destinations run at once (the forwarder
    sends each destination from its own worker, so a hung PACS holds up only its own); calls for
    one destination are serialised by that destination's lock. ``associations_opened`` counts
    established associations (operations, tests).
    """

    def __init__(self, options: ScuOptions | None = None) -> None:
        self.options = options or ScuOptions()
        make_pynetdicom_logs_safe()  # a forwarder without the SCP: pynetdicom's records made safe too
        self._aes: dict[Destination, AE] = {}
        self._held: dict[Destination, Association] = {}
        self._proposed: dict[Destination, set[tuple[UID, UID]]] = {}  # by the held association
        self._message_id: dict[Destination, int] = {}  # last Message ID used on the held association
        self._locks: dict[Destination, threading.Lock] = {}  # one per destination
        self._count_lock = threading.Lock()  # the dict above and the count below
        self.associations_opened = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreSCU:
        return cls(ScuOptions.from_settings(settings))

    # -- public ------------------------------------------------------------------------------
    def send_batch(self, destination: str, datasets: Iterable[Dataset | Path], *,
                   withhold: Callable[[int], str | None] | None = None,
                   acknowledged: Callable[[int, SendResult], None] | None = None) -> list[SendResult]:
        """C-STORE ``datasets`` (a Path: a Part 10 file, sent as stored) to ``destination``
        over one association; one result per dataset, in order. The association stays open for
        the next batch (see :meth:`release`). ``withhold(i)`` is called right before the i-th
        dataset's C-STORE-RQ: a reason keeps it from being sent; ``acknowledged(i, result)``
        right after the PACS acknowledged it (module docstring)."""
        dest = Destination.parse(destination)
        items: list[Dataset] = []
        results: list[SendResult | None] = []
        for obj in datasets:
            ds, failed = _load(obj)
            items.append(ds)
            results.append(failed)
        pairs: list[tuple[UID, UID]] = []
        for i, ds in enumerate(items):
            pair = _pair(ds)
            if results[i] is not None:
                continue
            if pair is None:
                results[i] = SendResult(str(ds.get("SOPInstanceUID", "")), SendOutcome.PERMANENT, None,
                                        "not sendable: SOP Class/Instance UID or Transfer Syntax missing",
                                        transmitted=False)
            elif pair not in pairs:
                pairs.append(pair)
        with self._lock_for(dest):
            # more contexts than one association can carry: one association per group
            for group, contexts in _groups(pairs):
                todo = [i for i, ds in enumerate(items) if results[i] is None and _pair(ds) in group]
                self._send_group(dest, contexts, [(i, items[i]) for i in todo], results, withhold, acknowledged)
        return [r if r is not None else SendResult(str(ds.get("SOPInstanceUID", "")), SendOutcome.RETRY, None,
                                                   "not attempted", transmitted=False)
                for r, ds in zip(results, items, strict=True)]

    def release(self, destination: str | None = None) -> None:
        """Release (A-RELEASE) the association held open between batches for ``destination``, or
        every one (None; waits for a batch in flight to each)."""
        dests = [Destination.parse(destination)] if destination is not None else list(self._held)
        for dest in dests:
            with self._lock_for(dest):
                self._drop(dest)

    close = release

    # -- internals ---------------------------------------------------------------------------
    def _lock_for(self, dest: Destination) -> threading.Lock:
        with self._count_lock:
            return self._locks.setdefault(dest, threading.Lock())

    def _ae(self, dest: Destination) -> AE:
        ae = self._aes.get(dest)
        if ae is None:
            o = self.options
            ae = _RequestorAE(ae_title=o.ae_title)
            ae.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)  # the adapter's, not pynetdicom's
            ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
            ae.connection_timeout = o.connection_timeout
            ae.acse_timeout = o.acse_timeout
            ae.dimse_timeout = o.dimse_timeout
            ae.network_timeout = o.network_timeout
            ae.maximum_pdu_size = o.max_pdu
            self._aes[dest] = ae
        return ae

    def _drop(self, dest: Destination) -> None:
        self._proposed.pop(dest, None)
        assoc = self._held.pop(dest, None)
        if assoc is None:
            return
        try:
            if assoc.is_established:
                assoc.release()
            else:
                assoc.abort()
        except Exception:
            log.warning("releasing the association with %s failed", dest, exc_info=True)

    @staticmethod
    def _accepted(assoc: Association) -> dict[tuple[UID, UID], PresentationContext]:
        out: dict[tuple[UID, UID], PresentationContext] = {}
        for cx in assoc.accepted_contexts:
            if cx.as_scu and cx.abstract_syntax and cx.transfer_syntax:
                out[(UID(cx.abstract_syntax), UID(cx.transfer_syntax[0]))] = cx
        return out

    def _association(self, dest: Destination, group: Sequence[tuple[UID, UID]]) -> Association | SendResult:
        """The held association when it was negotiated with every context of ``group`` (accepted
        or not: the PACS has answered for each, a new association would be answered the same),
        else a new one proposing exactly ``group``: the contexts the objects of this batch need,
        nothing carried over from an earlier association (PACS review finding 4). A SendResult
        template (uid left empty) when no association could be established."""
        held = self._held.get(dest)
        if held is not None:
            if held.is_established and all(p in self._proposed.get(dest, ()) for p in group):
                return held
            self._drop(dest)
        proposal = list(group)
        contexts = [build_context(sop_class, [ts]) for sop_class, ts in proposal]
        started = time.monotonic()
        try:
            # max_pdu: associate() announces its own argument (default 16382), not the AE's maximum_pdu_size
            assoc = self._ae(dest).associate(dest.host, dest.port, contexts=contexts, ae_title=dest.ae_title,
                                             max_pdu=self.options.max_pdu, evt_handlers=[(evt.EVT_CONN_OPEN, _nodelay),
                                                           (evt.EVT_PDU_RECV, _keep_rejection)])
        except (OSError, RuntimeError, ValueError) as exc:
            return SendResult("", SendOutcome.RETRY, None, f"association with {dest} failed: {type(exc).__name__}",
                              transmitted=False)
        if assoc.is_established:
            with self._count_lock:
                self.associations_opened += 1
            self._held[dest] = assoc
            self._proposed[dest] = set(proposal)
            self._message_id[dest] = 0
            return assoc
        _close_raw_socket(assoc)
        return self._why_not(dest, assoc, started)

    def _why_not(self, dest: Destination, assoc: Association, started: float) -> SendResult:
        """Why no association was established, in the words of what happened (PACS review finding
        2): rejected (A-ASSOCIATE-RJ), no context accepted, no answer to the A-ASSOCIATE-RQ within
        the ACSE timeout (pynetdicom aborts it then: a hung PACS, not a refusal), the connection
        closed or aborted by the PACS, the TCP connection timed out or refused."""
        rejection = getattr(assoc, "adapter_rejection", None)
        if assoc.is_rejected or rejection is not None:
            rsp: Any = assoc.acceptor.primitive if assoc.is_rejected else rejection
            result = getattr(rsp, "result", None)
            reason = f"{getattr(rsp, 'result_str', '?')}, {getattr(rsp, 'source_str', '?')}: " \
                     f"{getattr(rsp, 'reason_str', '?')}"
            outcome = SendOutcome.PERMANENT if result == 0x01 else SendOutcome.RETRY
            return SendResult("", outcome, None, f"association rejected by {dest} ({reason})", transmitted=False)
        if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
            refused = sorted(sop.name for sop, results in _rejections(assoc).items() if _refuses_sop_class(results))
            which = f": it does not accept {', '.join(refused)} (abstract syntax not supported)" if refused else ""
            return SendResult("", SendOutcome.PERMANENT, None,
                              f"{dest} accepted none of the presentation contexts proposed{which}"[:300],
                              transmitted=False)
        o = self.options
        opened_at: float | None = getattr(assoc, "adapter_opened_at", None)
        if opened_at is None:  # no TCP connection
            waited = time.monotonic() - started
            why = f"no TCP connection within {o.connection_timeout:g} s (connect timeout)" \
                if waited >= o.connection_timeout * 0.9 else "could not connect (the connection was refused)"
            return SendResult("", SendOutcome.RETRY, None, f"no association with {dest}: {why}", transmitted=False)
        if not getattr(assoc, "adapter_answered", False) and time.monotonic() - opened_at >= o.acse_timeout * 0.9:
            return SendResult("", SendOutcome.RETRY, None,
                              f"no association with {dest}: no answer to the A-ASSOCIATE-RQ within "
                              f"{o.acse_timeout:g} s (ACSE timeout): the PACS took the connection and did not answer",
                              transmitted=False)
        return SendResult("", SendOutcome.RETRY, None,
                          f"no association with {dest}: it closed the connection or aborted the association "
                          "(A-ABORT) before accepting", transmitted=False)

    def _unanswered(self, dest: Destination, result: SendResult, *, waited: float) -> tuple[SendResult, str]:
        """A C-STORE that got no response (PACS review finding 2): the DIMSE timeout (pynetdicom
        waited ``dimse_timeout`` and aborted the association; the PACS may have stored the
        object, so the retry sends the same SOP Instance UID again, PS3.4 B.2.3), or the
        association ended first (aborted, connection closed). Its result, and the lastError of
        the objects of the batch not sent after it."""
        timeout = self.options.dimse_timeout
        if waited >= timeout * 0.9:
            error = (f"no C-STORE response within {timeout:g} s (DIMSE timeout) from {dest}: the PACS may have "
                     "stored it; the retry sends the same SOP Instance UID again")
            lost = f"not sent: the association with {dest} was aborted at the DIMSE timeout of an earlier object"
        else:
            error = f"no C-STORE response from {dest}: the association was aborted or its connection closed"
            lost = f"not sent: the association with {dest} ended during the batch"
        return dataclasses.replace(result, error=error), lost

    def _send_group(self, dest: Destination, group: Sequence[tuple[UID, UID]],
                    todo: Sequence[tuple[int, Dataset]], results: list[SendResult | None],
                    withhold: Callable[[int], str | None] | None = None,
                    acknowledged: Callable[[int, SendResult], None] | None = None) -> None:
        if not todo:
            return
        got = self._association(dest, group)
        if isinstance(got, SendResult):
            for i, ds in todo:
                results[i] = SendResult(str(ds.SOPInstanceUID), got.outcome, None, got.error, transmitted=False)
            return
        assoc = got
        accepted = self._accepted(assoc)
        rejections = _rejections(assoc)
        lost: str | None = None
        for i, ds in todo:
            uid = str(ds.SOPInstanceUID)
            pair = _pair(ds)
            if lost is not None:
                results[i] = SendResult(uid, SendOutcome.RETRY, None, lost, transmitted=False)
                continue
            syntax = _syntax_for(pair, accepted) if pair is not None else None
            if pair is None or syntax is None:
                results[i] = SendResult(uid, SendOutcome.PERMANENT, None,
                                        _not_accepted(dest, pair, rejections.get(pair[0]) if pair else None),
                                        transmitted=False)
                continue
            held_back = _held_back(uid, i, withhold)
            if held_back is not None:
                results[i] = held_back
                continue
            outgoing = ds
            if syntax != pair[1] and pair[1] not in DECOMPRESSIBLE:  # Explicit VR LE to an Implicit-only PACS
                outgoing = explicit_to_implicit(ds)
            elif syntax != pair[1]:  # the PACS takes no compressed syntax: decoded now, dropped once sent
                try:
                    outgoing = encapsulated_to_native(ds, syntax)
                except AdapterError as exc:  # it would not show what it is: not sent, for good
                    results[i] = SendResult(uid, SendOutcome.PERMANENT, None,
                                            f"{dest} accepted {pair[0].name} only uncompressed, and the object "
                                            f"cannot be decompressed: {exc.diagnostics}"[:300], transmitted=False)
                    continue
                except Exception as exc:  # e.g. MemoryError: this object only, the batch goes on
                    log.exception("decompressing an object for %s failed", dest)
                    results[i] = SendResult(uid, SendOutcome.RETRY, None,
                                            f"decompressing for {dest} failed: {type(exc).__name__}", transmitted=False)
                    continue
            else:
                _undefined_length_pixel_data(ds, syntax)
            message_id = self._message_id[dest] = self._message_id.get(dest, 0) % 65535 + 1
            if isinstance(assoc, _RequestorAssociation):
                assoc.awaiting_response = message_id
            sent_at = time.monotonic()
            try:
                status = assoc.send_c_store(outgoing, msg_id=message_id)
            except ValueError as exc:  # pynetdicom could not encode it: retrying will not help
                results[i] = SendResult(uid, SendOutcome.PERMANENT, None, f"cannot encode: {type(exc).__name__}",
                                        transmitted=False)  # its text can quote a value
                continue
            except (OSError, RuntimeError) as exc:
                # pynetdicom raises RuntimeError before sending anything (the association ended);
                # an OSError may come when part of the request went: not known
                lost = f"association with {dest} lost: {type(exc).__name__}"
                results[i] = SendResult(uid, SendOutcome.RETRY, None, lost,
                                        transmitted=False if isinstance(exc, RuntimeError) else None)
                continue
            finally:
                del outgoing  # a decompressed object (~36 MB for 12 MP) is not kept past its C-STORE
                if isinstance(assoc, _RequestorAssociation):
                    assoc.awaiting_response = None
            result = classify_status(uid, status)
            if "Status" not in status:  # no response: the DIMSE timeout, or the association ended
                result, lost = self._unanswered(dest, result, waited=time.monotonic() - sent_at)
            results[i] = result
            _tell_acknowledged(i, result, acknowledged)
            # No response means pynetdicom saw an abort or the DIMSE timeout, even when the
            # association does not say so yet: sending more would wait a DIMSE timeout each.
            if lost is None and not assoc.is_established:
                lost = f"not sent: the association with {dest} ended during the batch"
        if lost is not None or not assoc.is_established:
            self._drop(dest)
