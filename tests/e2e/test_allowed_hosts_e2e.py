"""End to end: ``python -m adapter serve`` on loopback (the default, as `make run` starts it, no
ADAPTER_BASE_URL) answers for the names a client on loopback gives it, at its port, and nothing
else (security review findings 1 and 3: DNS rebinding, and the Host header chosen as the adapter's
address in links and the audit)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import RunningAdapter, running_adapter


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    with running_adapter(tmp_path_factory.mktemp("hosts"), ADAPTER_DICOM_ENABLED="false") as running:
        yield running


def _metadata(server: RunningAdapter, host: str) -> httpx.Response:
    return httpx.get(f"{server.url}/fhir/metadata", headers={"Host": host}, timeout=30)


def test_the_loopback_names_at_its_port_are_answered_and_name_the_links(server: RunningAdapter) -> None:
    for host in (f"127.0.0.1:{server.http_port}", f"localhost:{server.http_port}"):
        answer = _metadata(server, host)
        assert answer.status_code == 200, (host, answer.text)
        assert answer.json()["implementation"]["url"] == f"http://{host}/fhir"
    # the log at start says which (the listening port a system-chosen one here, as given)
    port = server.http_port
    assert f"HTTP answers for the hosts localhost:{port}, 127.0.0.1:{port}, [::1]:{port}, the IP address" \
        in Path(server.log).read_text()


@pytest.mark.parametrize("host", ["rebind.attacker.example:{port}", "evil.example.com", "localhost:{other}",
                                  "10.9.9.9:{port}"])
def test_another_host_is_misdirected(server: RunningAdapter, host: str) -> None:
    named = host.format(port=server.http_port, other=server.http_port + 1)
    answer = _metadata(server, named)
    assert answer.status_code == 421, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert answer.headers["cache-control"] == "no-store"
    assert f"Host {named!r}" in Path(server.log).read_text()


def test_an_http_1_0_request_without_host_names_the_address_it_arrived_at(server: RunningAdapter) -> None:
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=30) as sock:
        sock.sendall(b"GET /fhir/metadata HTTP/1.0\r\n\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert f'"url":"http://127.0.0.1:{server.http_port}/fhir"'.encode() in raw
