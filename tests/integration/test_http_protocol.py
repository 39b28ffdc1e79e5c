"""BoundedHttpProtocol (adapter.api.request_limits) in a real uvicorn server over real sockets,
with a plain ASGI app whose answer takes a known time: what the header timeout does when
requests are pipelined (the adapter's own routes are never slow on purpose)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from adapter.api.request_limits import bounded_http_protocol
from tests.support.orthanc import free_ports

HEADER_TIMEOUT = 0.5
SLOW = 3 * HEADER_TIMEOUT


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/slow answers after SLOW seconds, anything else at once."""
    assert scope["type"] == "http"
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW)
    body = scope["path"].encode() * 100
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture()
def port() -> Iterator[int]:
    (free,) = free_ports(1)
    server = uvicorn.Server(uvicorn.Config(_app, host="127.0.0.1", port=free, lifespan="off", log_level="warning",
                                           http=bounded_http_protocol(HEADER_TIMEOUT, 30.0)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield free
    server.should_exit = True
    thread.join(timeout=10)


def _read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_a_pipelined_header_is_not_timed_out_while_the_answer_before_it_is_made(port: int) -> None:
    """The second request's header began in the same read as the first request: uvicorn reads
    no more until the first is answered, so that wait is the server's. The first answer comes
    whole (a 408 written when the timer first ran would have cut into it), then the second,
    still not whole a timeout later, gets its 408."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHo")
        data = _read_all(sock)
        elapsed = time.monotonic() - start
    first, _, rest = data.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200"), data[:200]
    assert rest.startswith(b"/slow" * 100), data[:400]
    second = rest[len(b"/slow" * 100):]
    assert second.startswith(b"HTTP/1.1 408 Request Timeout"), second[:200]
    assert SLOW <= elapsed < SLOW + 5 * HEADER_TIMEOUT, elapsed


def test_pipelined_requests_are_all_answered(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = _read_all(sock)
    assert data.count(b"HTTP/1.1 200") == 2, data[:300]
    assert data.endswith(b"/fast" * 100)
