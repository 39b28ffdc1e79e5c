"""The C-STORE SCU against misbehaving and ordinary peers on loopback: what it says when a PACS
times out, and which presentation contexts it proposes.

PACS review finding 2: an A-ASSOCIATE-RQ never answered read "no association (refused or
aborted)", and a C-STORE answered after the DIMSE timeout (the PACS had stored it) did not say
that the response timed out. Finding 4: an association carrying only a PNG photo (native Explicit
VR Little Endian) also proposed JPEG Baseline, a context kept from an earlier association to the
same destination. Tests seen failing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage, VLPhotographicImageStorage

from adapter.dicom.scu import ScuOptions, StoreSCU
from adapter.mapping.dicom_decompress import encapsulated_to_native
from adapter.services.forwarding import SendOutcome
from tests.integration.test_forwarding import small_photo_dataset
from tests.integration.test_forwarding_destinations import SilentPeer


@contextmanager
def peer(*, answer_after: float = 0.0, abort: bool = False) -> Iterator[tuple[str, list[set[tuple[str, str]]]]]:
    """A pynetdicom SCP taking JPEG Baseline and both uncompressed syntaxes, answering each C-STORE
    Success after ``answer_after`` seconds (or aborting the association, ``abort``); yields its
    address and the presentation contexts each association proposed, as it saw them."""
    proposals: list[set[tuple[str, str]]] = []
    done = threading.Event()

    def handle_requested(event: evt.Event) -> None:
        proposals.append({(str(cx.abstract_syntax), str(ts)) for cx in event.assoc.requestor.requested_contexts
                          for ts in cx.transfer_syntax})

    def handle_store(event: evt.Event) -> int:
        if abort:
            event.assoc.abort()
            return 0x0000
        done.wait(answer_after)
        return 0x0000

    ae = AE(ae_title="PEER")
    for sop_class in (VLPhotographicImageStorage, SecondaryCaptureImageStorage):
        ae.add_supported_context(sop_class, [JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_ACCEPTED, handle_requested), (evt.EVT_C_STORE, handle_store)])
    try:
        yield f"PEER@127.0.0.1:{server.server_address[1]}", proposals
    finally:
        done.set()
        server.shutdown()
        ae.shutdown()


def native_photo_dataset(uid: str) -> object:
    """A native Explicit VR Little Endian VL Photographic object, as the adapter makes for a PNG."""
    return encapsulated_to_native(small_photo_dataset(uid), ExplicitVRLittleEndian)


# --------------------------------------------------------------------------- finding 2: timeouts


def test_an_a_associate_rq_never_answered_is_said_to_have_timed_out() -> None:
    silent = SilentPeer()
    try:
        started = time.monotonic()
        [result] = StoreSCU(ScuOptions(acse_timeout=1)).send_batch(f"HUNG@127.0.0.1:{silent.port}",
                                                                    [small_photo_dataset()])
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    assert (result.outcome, result.transmitted) == (SendOutcome.RETRY, False)
    error = result.error or ""
    assert "no answer to the A-ASSOCIATE-RQ within 1 s (ACSE timeout)" in error, error
    assert "refused" not in error and "aborted" not in error


def test_a_c_store_answered_after_the_dimse_timeout_says_the_response_timed_out_and_may_be_stored() -> None:
    with peer(answer_after=3) as (dest, _):
        scu = StoreSCU(ScuOptions(dimse_timeout=1))
        try:
            first, second = scu.send_batch(dest, [small_photo_dataset("1.2.3.1"), small_photo_dataset("1.2.3.2")])
        finally:
            scu.release()
    assert (first.outcome, first.status, first.transmitted) == (SendOutcome.RETRY, None, True)
    assert "no C-STORE response within 1 s (DIMSE timeout)" in (first.error or ""), first.error
    assert "may have stored it" in (first.error or "")
    assert (second.outcome, second.transmitted) == (SendOutcome.RETRY, False)
    assert "DIMSE timeout" in (second.error or "") and "not sent" in (second.error or ""), second.error


def test_an_association_the_pacs_aborts_is_said_to_be_aborted_not_timed_out() -> None:
    with peer(abort=True) as (dest, _):
        scu = StoreSCU(ScuOptions(dimse_timeout=20))
        try:
            started = time.monotonic()
            [result] = scu.send_batch(dest, [small_photo_dataset()])
            assert time.monotonic() - started < 10
        finally:
            scu.release()
    assert result.outcome is SendOutcome.RETRY and result.status is None
    assert "timed out" not in (result.error or "") and "DIMSE timeout" not in (result.error or ""), result.error
    assert "aborted" in (result.error or "") or "closed" in (result.error or ""), result.error


# --------------------------------------------------------------------------- finding 4: proposals


VLP = str(VLPhotographicImageStorage)


def test_an_association_for_a_native_photo_proposes_only_the_uncompressed_syntaxes() -> None:
    """A JPEG photo, then (on a new association) a PNG's native object: the second proposes its own
    syntax and its fallback only, not the JPEG Baseline of the first."""
    with peer() as (dest, proposals):
        scu = StoreSCU()
        try:
            assert scu.send_batch(dest, [small_photo_dataset("1.2.3.10")])[0].acknowledged
            scu.release()
            assert scu.send_batch(dest, [native_photo_dataset("1.2.3.11")])[0].acknowledged  # type: ignore[list-item]
        finally:
            scu.release()
    assert proposals == [{(VLP, JPEGBaseline8Bit), (VLP, ExplicitVRLittleEndian), (VLP, ImplicitVRLittleEndian)},
                         {(VLP, ExplicitVRLittleEndian), (VLP, ImplicitVRLittleEndian)}]


def test_a_held_association_lacking_a_context_a_batch_needs_is_replaced_by_one_proposing_that_batch() -> None:
    """A native photo's association is held; a JPEG batch needs JPEG Baseline, which it did not
    propose: a new association, proposing what the JPEG batch needs (and nothing kept from before)."""
    with peer() as (dest, proposals):
        scu = StoreSCU()
        try:
            assert scu.send_batch(dest, [native_photo_dataset("1.2.3.20")])[0].acknowledged  # type: ignore[list-item]
            assert scu.send_batch(dest, [small_photo_dataset("1.2.3.21", SecondaryCaptureImageStorage)])[0].acknowledged
        finally:
            scu.release()
    sc = str(SecondaryCaptureImageStorage)
    assert proposals == [{(VLP, ExplicitVRLittleEndian), (VLP, ImplicitVRLittleEndian)},
                         {(sc, JPEGBaseline8Bit), (sc, ExplicitVRLittleEndian), (sc, ImplicitVRLittleEndian)}]


# --------------------------------------------------------------------------- Maximum Length Received


def test_an_association_announces_the_maximum_length_the_scu_receives() -> None:
    """PS3.8 D.1: the A-ASSOCIATE-RQ's Maximum Length Received is the SCU's own (ScuOptions.max_pdu,
    ADAPTER_DICOM_MAX_PDU). Seen failing: pynetdicom's associate() announced its own default, 16382,
    whatever the AE was set to (conformance statement review)."""
    announced: list[int] = []

    def handle_requested(event: evt.Event) -> None:
        announced.append(event.assoc.requestor.maximum_length)

    ae = AE(ae_title="PEER")
    ae.add_supported_context(VLPhotographicImageStorage, [JPEGBaseline8Bit, ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_ACCEPTED, handle_requested),
                                                                          (evt.EVT_C_STORE, lambda event: 0x0000)])
    scu = StoreSCU(ScuOptions(max_pdu=262_144))
    try:
        assert scu.send_batch(f"PEER@127.0.0.1:{server.server_address[1]}", [small_photo_dataset("1.2.3.30")])[0].acknowledged
    finally:
        scu.release()
        server.shutdown()
        ae.shutdown()
    assert announced == [262_144]
