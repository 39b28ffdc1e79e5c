"""``X-Forwarded-For`` from the reverse proxies ADAPTER_TRUSTED_PROXIES names, and from nobody else.

The AuditEvents name an HTTP caller by its network address, the TCP connection's peer (IHE BALP
Read and Query: agent[client].network "as known by TCP connection information"; DICOM PS3.15
A.5 Network Access Point). uvicorn's own proxy-header handling (on by default, trusting
127.0.0.1) replaced that peer with whatever ``X-Forwarded-For`` said, so any process on the
host chose the address a read was recorded under (audit review F1); the adapter starts uvicorn
with it off (adapter.__main__), and this middleware takes its place: from a trusted proxy the
address it forwards is kept beside the peer (``scope["state"]["forwarded_for"]``, recorded as an
agent of its own), never instead of it; from anyone else the header is ignored.

The forwarded client is found as uvicorn finds it: the ``X-Forwarded-For`` addresses from the
right, past those of trusted proxies, the first that is not one (the leftmost when all are);
an entry that is no IP address ends the search with none (nothing a caller wrote is recorded
but an address). ``X-Forwarded-Proto`` (http or https) from a trusted proxy sets the scheme the
links are built with, as uvicorn's did. RFC 7239 ``Forwarded`` is not read.
"""

from __future__ import annotations

import ipaddress

from starlette.types import ASGIApp, Receive, Scope, Send

from adapter.api.headers import HttpMiddleware
from adapter.model.ae_title import Network
from adapter.model.network import is_in

_FORWARDED_FOR = b"x-forwarded-for"
_FORWARDED_PROTO = b"x-forwarded-proto"


def forwarded_for_of(scope: Scope) -> str | None:
    """The client address a trusted proxy forwarded for the request (ForwardedForMiddleware), or None."""
    state = scope.get("state")
    address = state.get("forwarded_for") if isinstance(state, dict) else None
    return address if isinstance(address, str) else None


def forwarded_client(values: list[bytes], trusted: list[Network]) -> str | None:
    """The client address of ``X-Forwarded-For`` header ``values`` (module docstring), or None."""
    entries = [e.strip() for value in values for e in value.decode("latin-1").split(",")]
    addresses: list[str | None] = []
    for entry in entries:
        try:
            addresses.append(str(ipaddress.ip_address(entry.removeprefix("[").removesuffix("]"))))
        except ValueError:
            addresses.append(None)
    for address in reversed(addresses):
        if address is None:
            return None
        if not is_in(address, trusted):
            return address
    return addresses[0] if addresses else None


class ForwardedForMiddleware(HttpMiddleware):
    def __init__(self, app: ASGIApp, trusted: list[Network]) -> None:
        super().__init__(app)
        self.trusted = trusted

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        peer = scope.get("client")
        if self.trusted and peer and is_in(peer[0], self.trusted):
            headers = scope.get("headers", [])
            address = forwarded_client([v for n, v in headers if n.lower() == _FORWARDED_FOR], self.trusted)
            if address is not None:
                scope.setdefault("state", {})["forwarded_for"] = address
            proto = [v for n, v in headers if n.lower() == _FORWARDED_PROTO]
            scheme = proto[-1].decode("latin-1").split(",")[-1].strip().lower() if proto else ""
            if scheme in ("http", "https"):
                scope["scheme"] = scheme
        await self.app(scope, receive, send)
