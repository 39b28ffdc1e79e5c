"""Security review 4 (HTTP): slow uploads, as many as a client likes, took every file descriptor
of the process (the common limit of 1,024), and with them the DICOM SCP's: its acceptor thread
died on EMFILE and the PACS was turned away. Against the real process under a low open-file
limit: the process holds no more than ADAPTER_HTTP_MAX_CONNECTIONS (a newcomer takes the slot of the
upload arriving slowest, which is answered 503 and closed), the PACS's C-ECHO goes through during
the flood, and nothing runs out of descriptors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, require_or_skip
from tests.support.dcmtk import dcmtk_missing, echoscu
from tests.support.orthanc import free_ports
from tests.support.server import running_adapter

pytestmark = pytest.mark.e2e

UPLOAD_HEAD = (b"POST /photos HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: multipart/form-data; boundary=x\r\n"
               b"Content-Length: 50000000\r\n\r\n--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n")


def _under_limit(limit: int) -> list[str]:
    return ["sh", "-c", f'ulimit -n {limit} && exec "$0" -m adapter serve', sys.executable]


def _slow_upload(port: int) -> socket.socket | None:
    """A connection that sends an upload's header and a first piece of its body, then waits:
    the socket, or None when the server answered and closed it at once."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(UPLOAD_HEAD % port + b"\xff" * 1000)  # the Host named so, no 421: an upload held
    except OSError:
        sock.close()
        return None
    return sock


def test_an_upload_flood_is_capped_and_the_pacs_still_gets_in(tmp_path: Path) -> None:
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    held: list[socket.socket] = []
    # all from 127.0.0.1: the bound per address (test_slow_bodies_e2e) lifted, the process's own is tested
    with running_adapter(tmp_path, command=_under_limit(700), ADAPTER_HTTP_MAX_CONNECTIONS="100",
                         ADAPTER_HTTP_MAX_CONNECTIONS_PER_ADDRESS="1000",
                         ADAPTER_DICOM_ALLOWED_AE_TITLES="PACS", ADAPTER_HTTP_BODY_TIMEOUT="120") as server:
        try:
            for _ in range(800):  # past the 700 descriptors of the process
                sock = _slow_upload(server.http_port)
                if sock is not None:
                    held.append(sock)
            time.sleep(1.0)
            refused = 0
            for sock in held:
                sock.settimeout(0.05)
                try:
                    refused += bool(sock.recv(65536))
                except TimeoutError:
                    pass  # held: one of the 100
                except ConnectionResetError:
                    refused += 1  # answered and closed while its upload was arriving: reset
            assert refused >= 650, refused
            with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as health:
                # served while the uploads hold every slot: the slowest of them is let go for it
                health.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n"
                               % server.http_port)
                answer = b""
                while chunk := health.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
            answers = [answer for answer in map(_answer_of, held) if answer]
            assert answers, "no upload was let go"
            head, _, body = answers[0].partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503 "), head
            assert b"retry-after: 5" in head.lower()
            assert json.loads(body)["resourceType"] == "OperationOutcome"
            result = echoscu(server.dicom_port, "ADAPTER", calling_aet="PACS", check=False)
            assert result.returncode == 0, result.stderr
        finally:
            for sock in held:
                sock.close()
        time.sleep(1.0)
        assert httpx.get(f"{server.url}/fhir/metadata", timeout=10).status_code == 200
        log = server.log.read_text()
    assert "Too many open files" not in log
    assert "Traceback" not in log
    assert "ADAPTER_HTTP_MAX_CONNECTIONS" in log  # the cap said once in the log


def _answer_of(sock: socket.socket) -> bytes:
    """What the server answered on ``sock`` before closing it (nothing: still held, or reset)."""
    sock.settimeout(0.05)
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return answer


def test_a_start_whose_connections_cannot_fit_the_open_file_limit_is_refused(tmp_path: Path) -> None:
    http_port, dicom_port = free_ports(2)
    env = {**os.environ, "ADAPTER_HTTP_PORT": str(http_port), "ADAPTER_DICOM_PORT": str(dicom_port),
           "ADAPTER_DATA_DIR": str(tmp_path / "data"), "ADAPTER_HTTP_MAX_CONNECTIONS": "2000"}
    result = subprocess.run(_under_limit(1024), check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "open-file limit (1024)" in result.stdout + result.stderr
