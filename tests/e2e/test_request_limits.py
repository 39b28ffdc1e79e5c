"""Bounds on what a client can make the server hold (adapter.api.request_limits), against the
server process over raw sockets: a client that stops sending part-way through a request (a phone
losing its network, a "slowloris" client) loses its connection within the timeouts and stores
nothing, while a slow upload that keeps moving is stored; a header without end is refused (431)
before it fills the memory; what is not HTTP at all gets a FHIR OperationOutcome."""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.app import PATIENT, consent_resource, metadata
from tests.support.dicom_files import sc_file
from tests.support.server import RunningAdapter, running_adapter

TIMEOUT = 1.0  # ADAPTER_HTTP_HEADER_TIMEOUT and ADAPTER_HTTP_BODY_TIMEOUT of the server under test
TREAT = {"X-Purpose-Of-Use": "TREAT"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    # the raw requests name the adapter "adapter" (Host), as a proxy in front would: a host it answers for
    with running_adapter(tmp_path_factory.mktemp("timeouts"), ADAPTER_HTTP_HEADER_TIMEOUT=str(TIMEOUT),
                         ADAPTER_HTTP_BODY_TIMEOUT=str(TIMEOUT), ADAPTER_DICOM_ENABLED="false",
                         ADAPTER_ALLOWED_HOSTS="adapter") as running:
        yield running


def _connect(server: RunningAdapter) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and the seconds that took."""
    start = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data, time.monotonic() - start


def _read_answer(sock: socket.socket) -> bytes:
    """One whole answer (its header and Content-Length bytes of body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    _, headers, _ = _answer(head + b"\r\n\r\n")
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _assert_outcome(raw: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = _answer(raw)
    assert got == status, raw[:300]
    assert headers["connection"] == "close"
    assert headers["content-type"].replace(" ", "").startswith("application/fhir+json;charset=utf-8")
    assert headers["cache-control"] == "no-store"
    assert re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", "")), headers  # a fresh one (README)
    outcome = json.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == code
    return headers


def _assert_timeout_outcome(raw: bytes, elapsed: float) -> dict[str, str]:
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 5, elapsed
    return _assert_outcome(raw, 408, "timeout")


def _stored(server: RunningAdapter) -> int:
    with httpx.Client(base_url=server.url, headers=TREAT, timeout=10) as http:
        return sum(http.get(f"/fhir/{kind}", params={"_count": "0"}).json()["total"]
                   for kind in ("Media", "DocumentReference", "Consent"))


def _staging(server: RunningAdapter) -> list[Path]:
    return list((server.log.parent / "data" / "staging").iterdir())


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(server: RunningAdapter) -> None:
    with _connect(server) as sock:
        data, elapsed = _read_until_closed(sock)
    assert data == b""
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 5, elapsed


def test_a_header_that_stops_arriving_is_answered_408(server: RunningAdapter) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: adapter\r\nX-Purpose-")
        data, elapsed = _read_until_closed(sock)
    headers = _assert_timeout_outcome(data, elapsed)
    assert headers["cache-control"] == "no-store"


def test_a_refused_client_still_sending_gets_the_answer_not_a_reset(server: RunningAdapter) -> None:
    """RFC 9112 9.6: the server closes its sending side first and reads (and drops) what the
    client still sends until it closes. Closed with the client's bytes unread, the connection
    answers with a reset instead, and the client's next read fails where the answer should end
    (the flake of the byte-at-a-time test below)."""
    fields = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70))  # over the limit
    with _connect(server) as sock:
        try:  # the rest comes in the same breath: unread when the server refuses the header
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: adapter\r\n" + fields + b"a" * 2_000_000)
        except OSError:
            pass
        time.sleep(0.3)
        data, _ = _read_until_closed(sock)  # a reset raises ConnectionResetError here
    _assert_outcome(data, 431, "too-long")


def test_a_header_sent_a_byte_at_a_time_is_cut_off_at_the_timeout(server: RunningAdapter) -> None:
    """Each byte comes well within the timeout; the whole header does not."""
    request = b"GET /health HTTP/1.1\r\nHost: adapter\r\n" + b"X-Filler: " + b"a" * 400 + b"\r\n\r\n"
    with _connect(server) as sock:
        start = time.monotonic()
        sock.settimeout(0.01)
        received = b""
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # closed by the server: expected once the timeout is past
                break
            time.sleep(0.01)
            try:
                received += sock.recv(65536)
            except TimeoutError:
                continue
            if received:
                break
        sock.settimeout(10)
        rest, _ = _read_until_closed(sock)
        elapsed = time.monotonic() - start
    _assert_timeout_outcome(received + rest, elapsed)


def test_a_later_request_of_a_kept_alive_connection_is_timed_too(server: RunningAdapter) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: adapter\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        time.sleep(TIMEOUT * 1.5)  # the wait between requests is uvicorn's keep-alive (30 s), not this
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        data, elapsed = _read_until_closed(sock)
    _assert_timeout_outcome(data, elapsed)


def _photo_request(folder: Path) -> tuple[bytes, bytes]:
    boundary = uuid.uuid4().hex
    photo = (ROOT / "samples" / "wound.jpg").read_bytes()
    meta = json.dumps(metadata(patient={"system": PATIENT["system"], "value": f"TIMEOUT-{boundary[:8]}"}))
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n"
            f"Content-Type: application/json\r\n\r\n{meta}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"wound.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /photos HTTP/1.1\r\nHost: adapter\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def _consent_request(folder: Path) -> tuple[bytes, bytes]:
    body = json.dumps(consent_resource(["TREAT", "TRAIN"])).encode()
    head = (f"POST /fhir/Consent HTTP/1.1\r\nHost: adapter\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def _stow_request(folder: Path) -> tuple[bytes, bytes]:
    sc_file(folder / "sc.dcm", PatientID=f"TIMEOUT-{uuid.uuid4().hex[:8]}")
    boundary = uuid.uuid4().hex
    part = (folder / "sc.dcm").read_bytes()
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode() + part + \
        f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /dicomweb/studies HTTP/1.1\r\nHost: adapter\r\nAccept: application/dicom+json\r\n"
            f"Content-Type: multipart/related; type=\"application/dicom\"; boundary={boundary}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head, body


@pytest.mark.parametrize("make", [_photo_request, _consent_request, _stow_request], ids=["photo", "consent", "stow"])
def test_a_body_that_stops_arriving_is_answered_408_and_stores_nothing(
        server: RunningAdapter, make: Callable[[Path], tuple[bytes, bytes]], tmp_path: Path) -> None:
    head, body = make(tmp_path)
    before = _stored(server)
    with _connect(server) as sock:
        sock.sendall(head + body[: len(body) // 2])
        data, elapsed = _read_until_closed(sock)
    _assert_timeout_outcome(data, elapsed)
    assert _stored(server) == before
    assert _staging(server) == []
    # the server goes on serving
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200


def test_a_slow_upload_that_keeps_moving_is_stored(server: RunningAdapter, tmp_path: Path) -> None:
    """The bound is on each wait, not on the whole upload: this one takes several timeouts."""
    head, body = _photo_request(tmp_path)
    pause = TIMEOUT / 2
    step = len(body) // 6 + 1
    groups = [body[i:i + step] for i in range(0, len(body), step)]
    before = _stored(server)
    with _connect(server) as sock:
        start = time.monotonic()
        sock.sendall(head)
        for group in groups:
            time.sleep(pause)
            sock.sendall(group)
        data = _read_answer(sock)
        elapsed = time.monotonic() - start
    status, _, body = _answer(data)
    assert status == 201, data[:500]
    assert json.loads(body)["safeToDeleteFromDevice"] is True
    assert elapsed > 2 * TIMEOUT
    assert _stored(server) == before + 2  # the Media and its Consent


def test_a_header_over_the_limit_in_one_read_is_answered_431(server: RunningAdapter) -> None:
    fields = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(70))  # ~71 KB
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: adapter\r\n" + fields + b"\r\n")
        data, elapsed = _read_until_closed(sock)
    _assert_outcome(data, 431, "too-long")
    assert elapsed < TIMEOUT  # refused at once, not when the header timeout ends it


def test_a_header_without_end_is_refused_before_it_fills_the_memory(server: RunningAdapter) -> None:
    """One field value sent on and on: refused once the header passes the limit (uvicorn alone
    kept 161 MB of it), long before the header timeout."""
    sent = 0
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: adapter\r\nX-Endless: ")
        start = time.monotonic()
        sock.setblocking(False)
        answered = b""
        try:
            while sent < 50_000_000 and not answered:
                sent += sock.send(b"a" * 16384)
                try:
                    answered = sock.recv(65536)
                except BlockingIOError:
                    pass
        except OSError:  # the server closed the connection: the answer is waiting to be read
            pass
        sock.setblocking(True)
        sock.settimeout(10)
        rest, _ = _read_until_closed(sock)
        data = answered + rest
        elapsed = time.monotonic() - start
    _assert_outcome(data, 431, "too-long")
    assert sent < 5_000_000 and elapsed < TIMEOUT, (sent, elapsed)


def test_a_header_under_the_limit_is_served(server: RunningAdapter) -> None:
    fields = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(60))  # ~61 KB
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: adapter\r\n" + fields + b"\r\n")
        assert _read_answer(sock).startswith(b"HTTP/1.1 200")


@pytest.mark.parametrize("garbage", [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
                                     b"GET /health HTTP/9.9\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n"],
                         ids=["tls-hello", "version", "nul"])
def test_what_is_not_http_gets_an_operation_outcome(server: RunningAdapter, garbage: bytes) -> None:
    with _connect(server) as sock:
        sock.sendall(garbage)
        data, _ = _read_until_closed(sock)
    _assert_outcome(data, 400, "invalid")


def test_each_protocol_answer_names_a_request_id_of_its_own(server: RunningAdapter) -> None:
    """README: every answer carries X-Request-Id, those the HTTP protocol makes before any route too
    (review dpo F4); each a new one, as the app gives a request that sent none."""
    ids = []
    for _ in range(2):
        with _connect(server) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\n\r\n")
            data, _ = _read_until_closed(sock)
        ids.append(_assert_outcome(data, 400, "invalid")["x-request-id"])
    assert ids[0] != ids[1]


def test_a_websocket_upgrade_is_an_http_request_and_its_query_is_not_logged(server: RunningAdapter) -> None:
    """No route takes WebSocket: uvicorn's websockets protocol answered upgrades in plain text
    and logged their request line, query string (patient identifier) included."""
    with _connect(server) as sock:
        sock.sendall(b"GET /fhir/Media?patient:identifier=urn:oid:2.999|WS-SECRET-42 HTTP/1.1\r\nHost: adapter\r\n"
                     b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        answer = _read_answer(sock)
    status, _, body = _answer(answer)
    assert status == 403 and json.loads(body)["resourceType"] == "OperationOutcome"  # no purpose: refused
    time.sleep(0.2)
    assert "WS-SECRET-42" not in server.log.read_text()


def test_the_access_log_keeps_a_path_on_one_line(server: RunningAdapter) -> None:
    """The decoded path held what %0A encodes: a line break starting a forged log line. The path
    is not logged at all now (it can hold patient data), so nothing of it reaches the log."""
    forged = "/fhir/Consent/x%0A2026-01-01%2000:00:00,000%20INFO%20adapter.access:%20GET%20/FORGED-LINE%20200"
    httpx.get(server.url + forged, headers=TREAT, timeout=10)
    time.sleep(0.2)
    logged = server.log.read_text()
    # the access log names the route, never the path the client sent (adapter.api.logging)
    assert "FORGED-LINE" not in logged
    assert "adapter.access: GET unmatched 404 " in logged  # its decoded path matches no route


def test_a_client_that_disconnects_mid_body_is_no_server_error(server: RunningAdapter) -> None:
    head, body = _photo_request(Path(__file__).parent)
    with _connect(server) as sock:
        sock.sendall(head + body[: len(body) // 3])
    time.sleep(0.5)
    log = server.log.read_text()
    assert "unexpected error" not in log and "Exception in ASGI application" not in log
    assert "disconnected before its request was whole" in log
    assert _staging(server) == []


@pytest.mark.parametrize("path", ["/fhir", "/fhir/Consent", "/fhir/Media/_search"])
def test_a_declared_body_over_the_limit_is_refused_before_100_continue(server: RunningAdapter, path: str) -> None:
    ctype = "application/x-www-form-urlencoded" if path.endswith("_search") else "application/fhir+json"
    with _connect(server) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: adapter\r\nContent-Type: {ctype}\r\n"
                     f"X-Purpose-Of-Use: TREAT\r\nExpect: 100-continue\r\nContent-Length: 900000000\r\n\r\n".encode())
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_client_that_reads_nothing_of_its_answer_loses_the_connection(server: RunningAdapter) -> None:
    """An answer waits in memory until the client reads it: 20 clients not reading two 19 MB
    Binaries each held ~900 MB for as long as they liked. After the body timeout without a
    read, the connection (and the answer) are let go."""
    photo = (ROOT / "samples" / "wound.jpg").read_bytes()
    meta = json.dumps(metadata(patient={"system": PATIENT["system"], "value": f"UNREAD-{uuid.uuid4().hex[:8]}"}))
    posted = httpx.post(f"{server.url}/photos", files={"file": ("wound.jpg", photo, "image/jpeg")},
                        data={"metadata": meta}, timeout=30)
    assert posted.status_code == 201, posted.text
    binary = posted.json()["binary"]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
        sock.connect(("127.0.0.1", server.http_port))
        request = (f"GET /fhir/{binary} HTTP/1.1\r\nHost: adapter\r\nAccept: image/jpeg\r\n"
                   f"X-Purpose-Of-Use: TREAT\r\n\r\n").encode()
        sock.sendall(request * 40)  # ~21 MB of answers: more than the kernel's buffers hold
        time.sleep(3 * TIMEOUT)  # reading nothing
        sock.settimeout(10)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    assert len(got) < 40 * len(photo)  # the connection ended before the answers did
    assert "read nothing of its answer" in server.log.read_text()


def test_a_body_nobody_reads_may_not_trickle_in_for_ever(server: RunningAdapter) -> None:
    """Answered before its body was read (415 here), the request's body kept the connection open
    for as long as a byte came now and then: it has the body timeout to arrive, then the
    connection closes."""
    with _connect(server) as sock:
        sock.sendall(b"POST /fhir/Consent HTTP/1.1\r\nHost: adapter\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 1000000\r\n\r\nx")
        answer = _read_answer(sock)
        assert answer.startswith(b"HTTP/1.1 415"), answer[:100]
        start = time.monotonic()
        sock.settimeout(0.3)
        closed = False
        while time.monotonic() - start < TIMEOUT + 5 and not closed:
            try:
                sock.sendall(b"x")
                closed = sock.recv(100) == b""
            except TimeoutError:
                continue
            except OSError:
                closed = True
        elapsed = time.monotonic() - start
    assert closed and elapsed < TIMEOUT + 5, elapsed


@pytest.mark.parametrize("request_head", [b"GET /health HTTP/1.1\r\n\r\n",
                                          b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                                          b"GET /health HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"],
                         ids=["no-host", "two-hosts", "two-hosts-1.0"])
def test_a_request_without_exactly_one_host_is_answered_400(server: RunningAdapter, request_head: bytes) -> None:
    """RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, and to any
    request with more than one."""
    with _connect(server) as sock:
        sock.sendall(request_head)
        data, _ = _read_until_closed(sock)
    _assert_outcome(data, 400, "invalid")


def test_an_http_1_0_request_without_host_is_served(server: RunningAdapter) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        data, _ = _read_until_closed(sock)
    assert data.startswith(b"HTTP/1.1 200"), data[:100]


@pytest.mark.parametrize("coding", [b"gzip, chunked", b"deflate", b"br, chunked"])
def test_a_transfer_coding_other_than_chunked_is_answered_501(server: RunningAdapter, coding: bytes) -> None:
    """RFC 9112 6.1: httptools read 'gzip, chunked' as plain chunked, and the route would have
    taken the compressed bytes for the body."""
    with _connect(server) as sock:
        sock.sendall(b"POST /fhir/Consent HTTP/1.1\r\nHost: adapter\r\nContent-Type: application/fhir+json\r\n"
                     b"Transfer-Encoding: " + coding + b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        data, _ = _read_until_closed(sock)
    _assert_outcome(data, 501, "not-supported")


def test_a_chunked_upload_is_taken(server: RunningAdapter) -> None:
    body = json.dumps(consent_resource(["TREAT"])).encode()
    with _connect(server) as sock:
        sock.sendall(b"POST /fhir/Consent HTTP/1.1\r\nHost: adapter\r\nContent-Type: application/fhir+json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        answer = _read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 201"), answer[:300]


def test_a_slow_but_steady_reader_gets_its_whole_answer(server: RunningAdapter, tmp_path: Path) -> None:
    """The bound is on reading nothing, not on reading slowly: an answer larger than the
    kernel's buffers, read steadily over several body timeouts, arrives whole (the first version
    cut such a reader off one body timeout after the buffer first filled: 22 MB read at
    150 KB/s lost its last 8 MB)."""
    import io
    import os

    from PIL import Image

    noise = Image.frombytes("RGB", (2400, 2400), os.urandom(2400 * 2400 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, "JPEG", quality=95)
    photo = buffer.getvalue()  # ~10 MB: noise does not compress
    meta = json.dumps(metadata(patient={"system": PATIENT["system"], "value": f"SLOW-{uuid.uuid4().hex[:8]}"}))
    posted = httpx.post(f"{server.url}/photos", files={"file": ("noise.jpg", photo, "image/jpeg")},
                        data={"metadata": meta}, timeout=60)
    assert posted.status_code == 201, posted.text
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.connect(("127.0.0.1", server.http_port))
        sock.sendall(f"GET /fhir/{posted.json()['binary']} HTTP/1.1\r\nHost: adapter\r\nAccept: image/jpeg\r\n"
                     f"X-Purpose-Of-Use: TREAT\r\nConnection: close\r\n\r\n".encode())
        start = time.monotonic()
        got = b""
        sock.settimeout(10)
        while chunk := sock.recv(65536):
            got += chunk
            time.sleep(0.02)  # at most ~3 MB/s: the answer takes several body timeouts to read
        elapsed = time.monotonic() - start
    _, headers, body = _answer(got)
    assert int(headers["content-length"]) == len(body) > 5_000_000
    assert elapsed > 2 * TIMEOUT, elapsed


def test_a_fast_large_upload_does_not_wait_for_slow_ones(server: RunningAdapter) -> None:
    """Large FHIR bodies are worked on two at a time, but received first, each into a file of
    its own: two clients sending 2 MB Bundles slowly (over several body timeouts) do not make a
    third, fast one wait for them (the first version held the slots while the bodies arrived: a
    fast 5 MB Bundle waited 50 s behind two slow uploads)."""
    import threading

    bundle = (ROOT / "samples" / "bundle-transaction.json").read_bytes()
    body = bundle + b" " * (2 * 1024 * 1024)  # JSON allows the spaces: a body over LARGE_BODY_BYTES
    head = (b"POST /fhir HTTP/1.1\r\nHost: adapter\r\nContent-Type: application/fhir+json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    finished: dict[str, float] = {}

    def slow(name: str) -> None:
        with _connect(server) as sock:
            sock.sendall(head)
            step = len(body) // 12 + 1
            for n, i in enumerate(range(0, len(body), step)):
                if n:
                    time.sleep(TIMEOUT / 2)  # each wait well within the body timeout, ~6 s in all
                sock.sendall(body[i:i + step])
            finished[name] = time.monotonic()  # the last byte sent
            assert _read_answer(sock).startswith(b"HTTP/1.1 200")

    slow_ones = [threading.Thread(target=slow, args=(f"slow{n}",)) for n in range(2)]
    for thread in slow_ones:
        thread.start()
    time.sleep(TIMEOUT)  # both are sending
    with _connect(server) as sock:
        sock.sendall(head + body)
        answer = _read_answer(sock)
    fast_done = time.monotonic()
    for thread in slow_ones:
        thread.join(timeout=60)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert len(finished) == 2 and fast_done < min(finished.values()), (fast_done, finished)


def test_a_batch_leaves_no_patient_identifier_in_the_log(server: RunningAdapter) -> None:
    """A batch's entries are requests made in-process with httpx, which logged each full URL at
    INFO, query string and patient identifier included."""
    secret = f"BATCH-SECRET-{uuid.uuid4().hex[:8]}"
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Media?patient:identifier={PATIENT['system']}|{secret}"}}]}
    answer = httpx.post(f"{server.url}/fhir", json=batch, timeout=10,
                        headers={"Content-Type": "application/fhir+json", **TREAT})
    assert answer.status_code == 200, answer.text
    time.sleep(0.2)
    assert secret not in server.log.read_text()
