"""The SCP against peers that send what no SCU should, byte by byte (tests/support/dicom_raw.py):
each is answered with a DIMSE failure or an A-ABORT, leaves no spool file and no patient data in
the log, and the SCP goes on serving. Found by an adversarial review of the SCP."""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from adapter.dicom import AeOptions, StoreSCP
from adapter.dicom.status import CANNOT_UNDERSTAND
from adapter.services.registry import Services
from tests.conftest import record_emitted, wait_until
from tests.support.app import adapter_client
from tests.support.audit import patients, sop_instance_uids
from tests.support.dicom_raw import (
    A_ABORT,
    A_ASSOCIATE_AC,
    A_ASSOCIATE_RJ,
    A_RELEASE_RQ,
    IMPLICIT_LE,
    P_DATA_TF,
    VERIFICATION,
    associate,
    associate_rq,
    closed_or_aborted,
    command,
    encode,
    p_data,
    read_pdu,
    response_status,
    store_command,
    sub_item,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("pynetdicom_config")]

TIMEOUT = 1.0  # the SCP's ACSE and network timeouts here


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with adapter_client(tmp_path) as (_, services):
        yield services


def _scp(services: Services, timeout: float) -> Iterator[StoreSCP]:
    server = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",), acse_timeout=timeout,
                                network_timeout=timeout), services.dicom_ingest)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def scp(services: Services) -> Iterator[StoreSCP]:
    """Timeouts longer than the peer's own wait (15 s): an abort is the SCP's answer, not its
    idle timer's."""
    yield from _scp(services, 60.0)


@pytest.fixture
def quick_scp(services: Services) -> Iterator[StoreSCP]:
    yield from _scp(services, TIMEOUT)


def _staging(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "data" / "staging").iterdir())


def _still_serving(port: int) -> None:
    ae = AE(ae_title="PYNETSCU")
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="ADAPTER")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0
        assoc.release()
    finally:
        ae.shutdown()


@pytest.mark.parametrize("where", ["before association", "inside an association"])
def test_a_peer_that_stops_in_the_middle_of_a_pdu_is_closed_at_the_timeout(quick_scp: StoreSCP, where: str) -> None:
    """pynetdicom checks its timers between PDUs only: a peer that stopped inside one held the
    connection and two threads for ever (64 of them locked every caller out)."""
    scp = quick_scp
    if where == "before association":
        sock = socket.create_connection(("127.0.0.1", scp.port), timeout=15)
        sock.sendall(associate_rq()[:8])  # the header and 2 bytes of an A-ASSOCIATE-RQ
    else:
        sock = associate(scp.port)
        sock.sendall(struct.pack(">BBL", P_DATA_TF, 0, 1000) + b"\0\0\0\x10")  # 4 of 1000 bytes
    with sock:
        start = time.monotonic()
        assert closed_or_aborted(sock)
        elapsed = time.monotonic() - start
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 5, elapsed
    _still_serving(scp.port)


@pytest.mark.parametrize("where", ["before association", "inside an association"])
def test_a_peer_that_drips_a_pdu_a_byte_at_a_time_is_closed_at_the_timeout(quick_scp: StoreSCP, where: str) -> None:
    """DICOM review: the timeouts were enforced on a peer that sent nothing, not on one that sent
    a byte now and then (each byte restarted the wait): 64 such connections kept every modality
    and PACS out of the SCP for as long as they liked (PS3.8 9.1.5: ARTIM bounds the time from
    the connection to a complete A-ASSOCIATE-RQ). An association request must now be whole
    within the ACSE timeout of the connection, and inside an association a PDU within the
    network timeout of its first byte."""
    scp = quick_scp
    if where == "before association":
        sock = socket.create_connection(("127.0.0.1", scp.port), timeout=15)
        rest = associate_rq()
    else:
        sock = associate(scp.port)
        rest = struct.pack(">BBL", P_DATA_TF, 0, 1000) + b"\0\0\0\x10" + b"\0" * 996
    with sock:
        start = time.monotonic()
        closed = False
        for i in range(len(rest)):  # a byte every TIMEOUT / 4: each gap well within the timeout
            try:
                sock.sendall(rest[i:i + 1])
            except OSError:
                closed = True
                break
            if time.monotonic() - start > TIMEOUT + 5:
                break
            sock.settimeout(TIMEOUT / 4)
            try:
                sock.recv(65536)  # an A-ABORT (the SCP's only answer to a PDU not whole), or b"": closed
            except TimeoutError:
                continue
            except OSError:
                pass
            closed = True
            break
        elapsed = time.monotonic() - start
    assert closed and TIMEOUT * 0.9 <= elapsed < TIMEOUT + 3, (closed, elapsed)
    _still_serving(scp.port)


def test_an_unknown_application_context_is_rejected_and_an_even_context_id_aborted_cleanly(
        scp: StoreSCP, services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """DICOM review: an A-ASSOCIATE-RQ naming another application context than DICOM's was
    accepted (PS3.8 7.1.1.2, Table 9-21: rejected-permanent, service-user, reason 2
    application-context-name-not-supported); one proposing a presentation context of even ID
    (PS3.8 9.3.2.2: odd integers) closed the connection without an A-ABORT, pynetdicom's DUL
    thread dying with a traceback. The first is rejected and audited as a rejection; the
    second aborted (A-ABORT: an invalid PDU parameter) with no thread dying."""
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    before = len(services.store.list_audit(1000))
    with socket.create_connection(("127.0.0.1", scp.port), timeout=15) as sock:
        sock.sendall(associate_rq(abstract=VERIFICATION, transfer=IMPLICIT_LE, application_context="1.2.3.4"))
        kind, data = read_pdu(sock)
    assert kind == A_ASSOCIATE_RJ and tuple(data[1:4]) == (1, 1, 2), (kind, data.hex())
    wait_until(lambda: len(services.store.list_audit(1000)) > before)
    [event] = services.store.list_audit(1)[:1]
    assert "application-context-name-not-supported" in event["outcomeDesc"], event["outcomeDesc"]
    with socket.create_connection(("127.0.0.1", scp.port), timeout=15) as sock:
        sock.sendall(associate_rq(abstract=VERIFICATION, transfer=IMPLICIT_LE, context_id=2))
        kind, _ = read_pdu(sock)
    assert kind == A_ABORT
    time.sleep(0.2)
    assert died == []
    _still_serving(scp.port)


def test_a_request_without_user_information_is_aborted(scp: StoreSCP, monkeypatch: pytest.MonkeyPatch) -> None:
    """An A-ASSOCIATE-RQ has one User Information item (PS3.8 9.3.2), where the peer says the
    largest PDU it receives (PS3.7 D.3.3.1). One without it was accepted (pynetdicom logging an
    AttributeError); it is an invalid PDU: aborted, no thread dying. A User Information item
    without a Maximum Length sub-item is still accepted (pynetdicom reads it as no limit)."""
    died: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    for user_information, answer in ((b"", A_ABORT), (sub_item(0x50, sub_item(0x52, b"1.2.3.4")), A_ASSOCIATE_AC)):
        with socket.create_connection(("127.0.0.1", scp.port), timeout=15) as sock:
            sock.sendall(associate_rq(abstract=VERIFICATION, transfer=IMPLICIT_LE, user_information=user_information))
            kind, _ = read_pdu(sock)
            assert kind == answer, (user_information.hex(), kind)
            if kind == A_ASSOCIATE_AC:
                sock.sendall(A_RELEASE_RQ)
                read_pdu(sock)
    time.sleep(0.2)
    assert died == []
    _still_serving(scp.port)


def test_the_called_ae_title_is_checked_when_the_setting_asks(services: Services) -> None:
    """DICOM review: the called AE title was never checked, so an SCU configured for another AE
    on this host and port had its objects stored here with Success. By default it still is not
    (a PACS may call the adapter by another title it was configured with);
    ADAPTER_DICOM_REQUIRE_CALLED_AE_TITLE=true rejects another (PS3.8 Table 9-21: rejected-
    permanent, service-user, reason 7 called-AE-title-not-recognized)."""
    for required, called, answer in ((False, "WRONG", A_ASSOCIATE_AC), (True, "WRONG", A_ASSOCIATE_RJ),
                                     (True, "ADAPTER", A_ASSOCIATE_AC)):
        server = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",), require_called_ae_title=required),
                          services.dicom_ingest)
        server.start()
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=15) as sock:
                sock.sendall(associate_rq(abstract=VERIFICATION, transfer=IMPLICIT_LE, called=called))
                kind, data = read_pdu(sock)
            assert kind == answer, (required, called, kind)
            if kind == A_ASSOCIATE_RJ:
                assert tuple(data[1:4]) == (1, 1, 7)
        finally:
            server.stop()


@pytest.mark.parametrize(("allowed", "source", "accepted"), [
    ("PYNETSCU@127.0.0.2", "127.0.0.1", False), ("PYNETSCU@127.0.0.2", "127.0.0.2", True),
    ("PYNETSCU@127.0.0.0/30", "127.0.0.2", True), ("PYNETSCU@127.0.0.0/30", "127.0.0.9", False),
    ("PYNETSCU", "127.0.0.9", True)])
def test_a_calling_ae_title_bound_to_hosts_is_accepted_from_them_only(services: Services, allowed: str, source: str,
                                                                       accepted: bool) -> None:
    """PACS review 3: a calling AE title is a name any peer can send, and it was the SCP's only
    access control: any host that reached the port and called itself PACS filed objects into
    any patient's record, released for care. ``AE@address`` or ``AE@network`` (CIDR) binds an
    allowed title to the hosts it may call from, as PACSs bind their modalities (Orthanc's
    DicomCheckModalityHost); from another host it is rejected as an unknown caller (PS3.8
    Table 9-21: rejected-permanent, service-user, reason 3), and the rejection audited."""
    server = StoreSCP(AeOptions(port=0, allowed_ae_titles=(allowed,)), services.dicom_ingest)
    server.start()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(15)
            sock.bind((source, 0))
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(associate_rq(abstract=VERIFICATION, transfer=IMPLICIT_LE))
            kind, data = read_pdu(sock)
        assert kind == (A_ASSOCIATE_AC if accepted else A_ASSOCIATE_RJ), kind
        if not accepted:
            assert tuple(data[1:4]) == (1, 1, 3)
            wait_until(lambda: len(services.store.list_audit(10)) >= 1)
    finally:
        server.stop()
    alerts = [e for e in services.store.list_audit(10) if e["type"]["code"] == "110113"]
    assert len(alerts) == (0 if accepted else 1)
    for alert in alerts:
        assert alert["agent"][0]["network"]["address"] == source
        assert "reason 3 (calling-AE-title-not-recognized)" in alert["outcomeDesc"]


def test_a_binding_voided_by_the_same_title_allowed_bare_is_warned_of_at_start(
        services: Services, caplog: pytest.LogCaptureFixture) -> None:
    """Review newwrites F4: ADAPTER_DICOM_ALLOWED_AE_TITLES=PACS@10.0.0.20 and the policy's
    allowedAETitles [PACS] together allow PACS from any host (as documented); the operator who
    set the binding is told at start, not left to find a PACS calling from elsewhere."""
    caplog.set_level(logging.INFO, logger="adapter")
    server = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU@127.0.0.2", "PYNETSCU")), services.dicom_ingest)
    server.start()
    server.stop()
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "PYNETSCU" in r.getMessage()]
    assert len(warned) == 1 and "allowed from any host" in warned[0], warned


def test_a_command_before_the_last_data_set_ended_aborts_and_leaves_no_spool_file(
        scp: StoreSCP, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """pynetdicom opens a spool file per C-STORE command and dropped the previous one, unclosed,
    when a command came before its data set ended: each such round left up to 50 MB of a
    partial object in the data folder while the process ran. Review finding: the dropped C-STORE
    was never answered either (only the next message was), and the peer waited for its response
    until it gave up. Fragments of one message are not interleaved with another's (PS3.8
    9.3.5.1, PS3.7 6.3.1): the association is aborted, nothing stays behind, the SCP serves on."""
    with associate(scp.port) as sock:
        sock.sendall(p_data(1, store_command(generate_uid(), 1), is_command=True, last=True))
        for _ in range(2):
            sock.sendall(p_data(1, b"\0" * 1500, is_command=False, last=False))  # never the last
        try:
            sock.sendall(p_data(1, store_command(generate_uid(), 2), is_command=True, last=True))
            sock.sendall(p_data(1, b"\0" * 16, is_command=False, last=True))
        except OSError:
            pass
        assert closed_or_aborted(sock)
    wait_until(lambda: _staging(tmp_path) == [])
    assert "a command inside the data set of the message before it" in caplog.text
    _still_serving(scp.port)


@pytest.mark.parametrize("case", ["no AffectedSOPInstanceUID", "a context never accepted", "no CommandDataSetType",
                                  "not a command set"])
def test_a_command_set_pynetdicom_cannot_decode_aborts_cleanly(scp: StoreSCP, tmp_path: Path, case: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """pynetdicom raised out of the DUL thread: the thread died with a traceback, the peer got no
    A-ABORT and the spool file stayed behind."""
    base: dict[str, object] = {"AffectedSOPClassUID": "1.2.840.10008.5.1.4.1.1.7", "CommandField": 1,
                               "MessageID": 1, "Priority": 0, "CommandDataSetType": 0,
                               "AffectedSOPInstanceUID": generate_uid()}
    context = 1
    if case == "no AffectedSOPInstanceUID":
        del base["AffectedSOPInstanceUID"]
    elif case == "a context never accepted":
        context = 99
    elif case == "no CommandDataSetType":
        del base["CommandDataSetType"]
    data = b"\x01\x02garbage" * 10 if case == "not a command set" else command(**base)
    with associate(scp.port) as sock:
        sock.sendall(p_data(context, data, is_command=True, last=True))
        assert closed_or_aborted(sock)
    wait_until(lambda: _staging(tmp_path) == [])
    _still_serving(scp.port)
    assert ("was not accepted" if context == 99 else "cannot be decoded") in caplog.text


@pytest.mark.parametrize("operation", ["N-ACTION on a storage context", "C-STORE on the Verification context",
                                       "C-ECHO on a storage context", "N-EVENT-REPORT on a storage context"])
def test_a_request_the_context_does_not_serve_aborts_and_is_not_answered_as_a_c_store(
        scp: StoreSCP, tmp_path: Path, caplog: pytest.LogCaptureFixture, operation: str) -> None:
    """Review finding: an N-ACTION-RQ on an accepted storage context was answered with a
    C-STORE-RSP (0xC000, "the C-STORE request has no data set") and audited as a refused object.
    A response is of its request's type (PS3.7 9.3, 10.3) and the SCP performs only C-ECHO and
    C-STORE: the association is aborted, nothing is stored or audited as an object."""
    sc, verification = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.1"
    abstract = sc
    if operation.startswith("N-ACTION"):
        request = command(CommandField=0x0130, MessageID=1, RequestedSOPClassUID=sc,
                          RequestedSOPInstanceUID=generate_uid(), ActionTypeID=1, CommandDataSetType=0x0101)
    elif operation.startswith("N-EVENT-REPORT"):  # pynetdicom serves this one from a thread of its own
        request = command(CommandField=0x0100, MessageID=1, AffectedSOPClassUID=sc,
                          AffectedSOPInstanceUID=generate_uid(), EventTypeID=1, CommandDataSetType=0x0101)
    elif operation.startswith("C-STORE"):
        abstract, request = verification, store_command(generate_uid(), 1)
    else:
        request = command(CommandField=0x0030, MessageID=1, AffectedSOPClassUID=verification,
                          CommandDataSetType=0x0101)
    with associate(scp.port, abstract=abstract) as sock:
        sock.sendall(p_data(1, request, is_command=True, last=True))
        if operation.startswith("C-STORE"):
            sock.sendall(p_data(1, b"\0" * 16, is_command=False, last=True))
        assert closed_or_aborted(sock)
    assert "presentation context, which is not served there" in caplog.text
    wait_until(lambda: _staging(tmp_path) == [])
    _still_serving(scp.port)


def test_fragments_that_never_end_are_not_kept_in_memory_without_limit(scp: StoreSCP) -> None:
    """Data fragments before any command (and command fragments never marked last) went to
    pynetdicom's memory buffers: 400 MB sent, 410 MB held. Past 1 MiB the association ends."""
    with associate(scp.port) as sock:
        try:
            for _ in range(200):  # up to 3 MB: refused long before
                sock.sendall(p_data(1, b"\0" * 16000, is_command=False, last=False))
        except OSError:
            pass
        assert closed_or_aborted(sock)
    with associate(scp.port) as sock:
        try:
            for _ in range(200):
                sock.sendall(p_data(1, b"\0" * 16000, is_command=True, last=False))
        except OSError:
            pass
        assert closed_or_aborted(sock)
    _still_serving(scp.port)


def test_a_pdu_of_many_empty_pdvs_is_aborted(scp: StoreSCP) -> None:
    """Each PDV is a round of decoding: 690,000 empty ones in one 4 MB PDU cost 2.5 s of CPU."""
    empty = struct.pack(">LBB", 2, 1, 0)
    many = empty * 5000
    with associate(scp.port) as sock:
        sock.sendall(p_data(1, store_command(generate_uid()), is_command=True, last=True))
        sock.sendall(struct.pack(">BBL", P_DATA_TF, 0, len(many)) + many)
        assert closed_or_aborted(sock)
    with associate(scp.port) as sock:  # before any command: pynetdicom's own decoding
        sock.sendall(struct.pack(">BBL", P_DATA_TF, 0, len(many)) + many)
        assert closed_or_aborted(sock)
    _still_serving(scp.port)


def test_a_c_store_without_a_data_set_is_refused_not_a_bug(scp: StoreSCP, services: Services,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    requested = generate_uid()
    with associate(scp.port) as sock:
        sock.sendall(p_data(1, store_command(requested, CommandDataSetType=0x0101), is_command=True, last=True))
        status, comment = response_status(sock)
        sock.sendall(A_RELEASE_RQ)
    assert status == CANNOT_UNDERSTAND and "no data set" in comment
    assert "a bug" not in caplog.text
    # audited as a refused transfer of the instance the request named, naming no patient
    [refusal] = services.store.list_audit()
    record_emitted(refusal)
    assert (refusal["action"], refusal["outcome"]) == ("C", "4") and "no data set" in refusal["outcomeDesc"]
    assert refusal["agent"][0]["altId"] == "PYNETSCU"
    assert sop_instance_uids(refusal) == [requested] and patients(refusal) == []


def test_a_peer_cannot_forge_or_flood_log_lines(scp: StoreSCP, caplog: pytest.LogCaptureFixture) -> None:
    """pynetdicom quoted a 'UID' holding a line break and 20 KB whole into three ERROR records."""
    caplog.set_level(logging.DEBUG)
    forged = "1.2.3\n2026-01-01 00:00:00,000 INFO adapter.dicom: C-STORE from PACS: FORGED " + "Z" * 20000
    with associate(scp.port) as sock:
        sock.sendall(p_data(1, store_command(forged), is_command=True, last=True))
        sock.sendall(p_data(1, b"\x08\x00\x16\x00UI\x02\x001\x00", is_command=False, last=True))
        closed_or_aborted(sock)
    time.sleep(0.5)
    for record in caplog.records:
        message = record.getMessage()
        assert "\n" not in message and len(message) < 1000, (record.name, message[:200])
        assert record.exc_info is None or not record.name.startswith("pynetdicom")
    _still_serving(scp.port)


@pytest.mark.parametrize("first", [b"\x00", b"\x08", b"\xff"])
def test_a_pdu_of_an_unknown_type_aborts_at_its_header_and_logs_one_line(
        scp: StoreSCP, caplog: pytest.LogCaptureFixture, first: bytes) -> None:
    """Security review 5: zero bytes streamed at the port, no association asked for, gave one
    ERROR line per 6-byte "header" read (Unknown PDU type received '0x00'), ~20,000 a second for
    the 30 s the connection stayed open: a log flood anyone reaching the port could start, where
    the README has operators alert on ERROR. A PDU of no type PS3.8 9.3 defines is now an invalid
    PDU at its header, as one too long is: aborted and closed, one line."""
    caplog.set_level(logging.DEBUG)
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
        try:
            sock.sendall(first + b"\x00" * (256 * 1024 - 1))
        except OSError:
            pass  # closed while sending: the abort came first
        assert closed_or_aborted(sock)
    time.sleep(0.5)
    lines = [r for r in caplog.records if r.name.startswith("pynetdicom") and r.levelno >= logging.WARNING]
    assert len(lines) <= 3, [r.getMessage() for r in lines[:5]]
    _still_serving(scp.port)


def test_identifiers_of_other_services_are_never_logged(scp: StoreSCP, caplog: pytest.LogCaptureFixture) -> None:
    """pynetdicom chooses the service class from the command's SOP class, not the context, and
    logged a C-FIND identifier (patient name and ID) sent on the Secondary Capture context."""
    caplog.set_level(logging.DEBUG)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "PATIENT"
    identifier.PatientName = "SECRETNAME^ALICE"
    identifier.PatientID = "MRN-SECRET-4711"
    find = command(AffectedSOPClassUID="1.2.840.10008.5.1.4.37.1", CommandField=0x0020, MessageID=1, Priority=0,
                   CommandDataSetType=0)
    with associate(scp.port) as sock:
        sock.sendall(p_data(1, find, is_command=True, last=True))
        sock.sendall(p_data(1, encode(identifier, implicit=False), is_command=False, last=True))
        try:
            read_pdu(sock)
        except (EOFError, OSError):
            pass
        sock.sendall(A_RELEASE_RQ)
    time.sleep(0.5)
    assert "SECRETNAME" not in caplog.text and "MRN-SECRET-4711" not in caplog.text


def test_stop_ends_associations_of_peers_stuck_inside_a_pdu(services: Services) -> None:
    """A DUL thread waiting inside a PDU heard nothing of the SCP's stop until its read timed
    out (the network timeout), and stop waited for each such association in turn."""
    scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",), acse_timeout=120, network_timeout=120),
                   services.dicom_ingest)
    scp.start()
    peers = []
    try:
        for _ in range(3):
            sock = associate(scp.port)
            sock.sendall(struct.pack(">BBL", P_DATA_TF, 0, 1000) + b"\0\0\0\x10")
            peers.append(sock)
        sock = socket.create_connection(("127.0.0.1", scp.port), timeout=15)
        sock.sendall(associate_rq()[:8])
        peers.append(sock)
        assert scp._ae is not None
        wait_until(lambda: len(scp._ae.active_associations) == 4)  # type: ignore[union-attr]
        associations = list(scp._ae.active_associations)
        scp.stop(timeout=10)
        assert not any(assoc.is_alive() for assoc in associations)
    finally:
        for sock in peers:
            sock.close()


def test_data_on_a_presentation_context_never_accepted_is_aborted_and_not_stored(scp: StoreSCP,
                                                                                 services: Services) -> None:
    """pynetdicom checks no PDV's context: a data set sent on context 77 after its command on
    context 1 was answered Success and stored."""
    uid = generate_uid()
    with associate(scp.port) as sock:
        sock.sendall(p_data(1, store_command(uid), is_command=True, last=True))
        sock.sendall(p_data(77, b"\x08\x00\x16\x00UI\x02\x001\x00", is_command=False, last=True))
        assert closed_or_aborted(sock)
    assert services.store.find_dicom_instance(uid) is None
    _still_serving(scp.port)


def test_a_peers_user_identity_passcode_is_never_logged(scp: StoreSCP, caplog: pytest.LogCaptureFixture) -> None:
    """At DEBUG pynetdicom dumps every A-ASSOCIATE-RQ, a User Identity's username and passcode in
    clear (PS3.7 D.3.3.7, type 2). Found by the operations review."""
    caplog.set_level(logging.DEBUG)
    username, passcode = b"pacs-user", b"S3cret-passcode"
    identity = (bytes([2, 0]) + struct.pack(">H", len(username)) + username
                + struct.pack(">H", len(passcode)) + passcode)
    with socket.create_connection(("127.0.0.1", scp.port), timeout=10) as sock:
        sock.sendall(associate_rq(user_items=sub_item(0x58, identity)))
        assert read_pdu(sock)[0] == A_ASSOCIATE_AC
        sock.sendall(A_RELEASE_RQ)
        read_pdu(sock)
    time.sleep(0.2)
    assert "Requested User Identity Negotiation" in caplog.text  # the dump was logged
    assert "S3cret-passcode" not in caplog.text


@pytest.mark.parametrize("event", ["idle association", "closed inside a PDU", "PDU too long", "PDU of unknown type"])
def test_what_a_peer_does_is_never_logged_as_an_error(quick_scp: StoreSCP, caplog: pytest.LogCaptureFixture,
                                                       event: str) -> None:
    """PACS review 4: the README has operators alert on ERROR lines, and a sender switched off
    in the middle of an object, an association left idle past the network timeout or a PDU the
    SCP refuses at its header were ERROR lines (pynetdicom's "Network timeout reached",
    "Connection closed before the entire PDU was received" and the exception after it): each
    would page someone for what a peer did. They are WARNINGs; and an idle association's abort
    said "did not send a whole PDU within 30.0 s" (the ACSE timeout, counted from the
    connection) where it had been idle for the network timeout."""
    caplog.set_level(logging.DEBUG)
    scp = quick_scp
    if event == "idle association":
        sock = associate(scp.port)
        with sock:
            assert closed_or_aborted(sock)  # after TIMEOUT
    elif event == "closed inside a PDU":
        sock = associate(scp.port)
        sock.sendall(struct.pack(">BBL", P_DATA_TF, 0, 1000) + b"\0\0\0\x10")  # 4 of 1000 bytes
        time.sleep(0.2)
        sock.close()
    else:
        sock = associate(scp.port)
        header = struct.pack(">BBL", P_DATA_TF, 0, 64 * 1024 * 1024) if event == "PDU too long" else b"\x09\0\0\0\0\x04"
        with sock:
            sock.sendall(header + b"\0" * 4)
            assert closed_or_aborted(sock)
    wait_until(lambda: not scp._ae.active_associations, timeout=10)  # type: ignore[union-attr]
    time.sleep(0.2)
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "the event is logged, as a WARNING"
    assert not any("whole PDU" in w for w in warnings) or event == "closed inside a PDU", warnings
    if event == "idle association":
        assert any(f"idle for {TIMEOUT} s" in w for w in warnings), warnings
    _still_serving(scp.port)
