"""STOW-RS requests refused as a whole, against the server process over real HTTP: each is
audited once (DICOM PS3.15 A.5.3.7 DICOM Instances Transferred, action C, outcome 4, the reason,
the client as the Source, no instance named: none was read), as each refused part is; a request
whose parts were looked at is audited per part only, never once more for the request."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.config import StoreOptions
from adapter.store import open_store
from tests.conftest import record_emitted
from tests.support.audit import INSTANCES_TRANSFERRED, agent_roles, dicom_events, sop_instance_uids
from tests.support.dicom_files import sc_file
from tests.support.server import RunningAdapter, running_adapter

MAX_UPLOAD = 200_000   # ADAPTER_MAX_UPLOAD_BYTES of the server under test; a request may carry 10 times that
TIMEOUT = 1.0          # its ADAPTER_HTTP_BODY_TIMEOUT
BOUNDARY = "b0undary-1234"
DICOM_RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    # the raw requests name the adapter "adapter" (Host), as a proxy in front would: a host it answers for
    with running_adapter(tmp_path_factory.mktemp("stow"), ADAPTER_MAX_UPLOAD_BYTES=str(MAX_UPLOAD),
                         ADAPTER_HTTP_BODY_TIMEOUT=str(TIMEOUT), ADAPTER_DICOM_ENABLED="false",
                         ADAPTER_ALLOWED_HOSTS="adapter") as running:
        yield running


def audit_trail(server: RunningAdapter) -> list[dict[str, Any]]:
    """The server's AuditEvents, oldest first, read from its SQLite file (as the export does)."""
    data = server.log.parent / "data"
    store, _ = open_store(StoreOptions(database_url=f"sqlite:///{data / 'adapter.db'}", data_dir=data))
    try:
        return store.list_audit(10_000)[::-1]
    finally:
        store.close()


def new_events(server: RunningAdapter, before: int) -> list[dict[str, Any]]:
    events = audit_trail(server)[before:]
    record_emitted(events)
    return events


def related(*parts: bytes, closing: bool = True) -> bytes:
    body = b"".join(f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n" for p in parts)
    return body + (f"--{BOUNDARY}--\r\n".encode() if closing else b"")


def dicom_part(tmp_path: Path, **attrs: Any) -> tuple[bytes, str]:
    ds = sc_file(tmp_path / "sc.dcm", **attrs)
    return (tmp_path / "sc.dcm").read_bytes(), str(ds.SOPInstanceUID)


def assert_whole_request_refusal(event: dict[str, Any], reason: str) -> None:
    """One DICOM Instances Transferred message of a STOW-RS request refused as a whole."""
    assert dicom_events([event], INSTANCES_TRANSFERRED) == [event]
    assert (event["action"], event["outcome"]) == ("C", "4")
    assert reason in event["outcomeDesc"], event["outcomeDesc"]
    assert agent_roles(event) == ["110153", "110152", "AUT"]
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"
    assert sop_instance_uids(event) == []
    assert not [e for e in event.get("entity", []) if e.get("role", {}).get("code") in ("1", "3")]


@pytest.mark.parametrize(("content_type", "body", "status", "reason"), [
    ("application/dicom", b"DICM", 415, "multipart/related"),
    ('multipart/related; type="application/dicom+json"; boundary=x', related(b"x"), 415, "application/dicom"),
    ('multipart/related; type="application/dicom"', related(b"x"), 422, "without a boundary"),
    (DICOM_RELATED, related(b"x", closing=False), 422, "closing boundary"),
    (DICOM_RELATED, f"--{BOUNDARY}--\r\n".encode(), 400, "no application/dicom part"),
    (DICOM_RELATED, related(b"\0" * (MAX_UPLOAD + 1)), 413, "a part is larger than"),
])
def test_a_stow_request_refused_as_a_whole_is_audited_once(server: RunningAdapter, content_type: str, body: bytes,
                                                           status: int, reason: str) -> None:
    before = len(audit_trail(server))
    r = httpx.post(f"{server.url}/dicomweb/studies", content=body, headers={"Content-Type": content_type},
                   timeout=30)
    assert r.status_code == status, r.text
    [event] = new_events(server, before)
    assert_whole_request_refusal(event, reason)


def test_a_request_declared_over_the_limit_is_audited_before_its_body_is_read(server: RunningAdapter) -> None:
    before = len(audit_trail(server))
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(f"POST /dicomweb/studies HTTP/1.1\r\nHost: adapter\r\nContent-Type: {DICOM_RELATED}\r\n"
                     f"Expect: 100-continue\r\nContent-Length: {MAX_UPLOAD * 10 + 1}\r\n\r\n".encode())
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
    [event] = new_events(server, before)
    assert_whole_request_refusal(event, "the request is larger than")


def test_a_request_whose_body_stops_arriving_is_audited(server: RunningAdapter, tmp_path: Path) -> None:
    data, _ = dicom_part(tmp_path)
    body = related(data)
    before = len(audit_trail(server))
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(f"POST /dicomweb/studies HTTP/1.1\r\nHost: adapter\r\nContent-Type: {DICOM_RELATED}\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[: len(body) // 2])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    deadline = time.monotonic() + 5
    while len(audit_trail(server)) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    [event] = new_events(server, before)
    assert_whole_request_refusal(event, "")


def test_a_request_whose_parts_were_looked_at_is_audited_per_part_only(server: RunningAdapter,
                                                                       tmp_path: Path) -> None:
    """Two parts of another study than the URL's (0xA900 each) and one that is not DICOM: three
    refusals, each audited once; nothing more for the request (409, none stored)."""
    first, first_uid = dicom_part(tmp_path)
    second, second_uid = dicom_part(tmp_path)
    before = len(audit_trail(server))
    r = httpx.post(f"{server.url}/dicomweb/studies/1.2.3.4", content=related(first, second, b"not DICOM"),
                   headers={"Content-Type": DICOM_RELATED}, timeout=30)
    assert r.status_code == 409, r.text
    events = new_events(server, before)
    assert [sop_instance_uids(e) for e in events] == [[first_uid], [second_uid], []]
    assert all(e["outcome"] == "4" for e in events)
    assert "not a DICOM Part 10 object" in events[2]["outcomeDesc"]
