"""The hosts the adapter answers for: a request whose ``Host`` names another is answered 421
Misdirected Request (RFC 9110 15.5.20, 7.4) before anything is read of it.

Why (security review findings 1 and 3): the adapter answered any ``Host``. A web page whose domain
an attacker re-points at the adapter's address (DNS rebinding) then makes same-origin requests:
the browser sends no preflight, lets the page state ``X-Purpose-Of-Use`` and read the answers, and
names the attacker's domain in ``Origin`` and ``Host`` alike, which the cross-site check took for
the adapter's own /docs page. CORS and the loopback address keep out no such page; a ``Host``
allow-list does, since the page's requests always name its own domain. And without
ADAPTER_BASE_URL the links the adapter builds (a Binary's URL, an ITI-68 document location, a
search's pages) and its own network address in the AuditEvents came from ``Host``: a caller chose
them. They now come from the host the request was admitted for (:func:`admitted_host`), as listed.

A request is admitted when its ``Host`` (RFC 3986 authority; a scheme's default port the same as
none) is:

* ADAPTER_BASE_URL's host[:port], or one of ADAPTER_ALLOWED_HOSTS (the names a reverse proxy
  forwards);
* at the port the connection arrived on (a proxy or Docker mapping another port in front: list
  that host:port), the name of the listening address: for a loopback address (``127.0.0.1``,
  ``::1``), ``localhost`` and the loopback addresses; for every address (``0.0.0.0``, ``::``, a
  container's), those too (the image's HEALTHCHECK asks ``127.0.0.1``); a host name as set;
* at that port, the IP address the connection arrived at (the machine's address as the socket
  knows it; not the peer's word: a Kubernetes probe, a client of a development machine).

No rebinding page can name any of these: its requests carry its own domain, and an IP address or
``localhost`` is no domain of an attacker's. ``X-Forwarded-Host`` is not read: a proxy forwards
the ``Host`` it was asked for (nginx ``proxy_set_header Host $host``; list the name) or its
upstream's (the listening address, admitted). An HTTP/1.0 request without ``Host`` names the
address it arrived at. A ``Host`` that is no host[:port] at all is answered 400 (RFC 9112 3.2).
Refusals are logged (the Host named) and not audited: nothing was asked of a record, as for the
other refusals before routing (adapter.api.cross_site, adapter.api.request_limits).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from adapter.api.headers import HttpMiddleware, send_outcome
from adapter.model.authority import Authority, host_literal, parse_authority
from adapter.refusals import RefusalCode

if TYPE_CHECKING:
    from adapter.config import Settings

log = logging.getLogger("adapter.api")

#: What a client on loopback names the adapter by, when it listens there.
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")

_MISDIRECTED = ("this adapter does not answer for the host the request names (Host): it answers for "
                "ADAPTER_BASE_URL's host, the names in ADAPTER_ALLOWED_HOSTS and the address it listens on; "
                "list the name clients use (host[:port]) in ADAPTER_ALLOWED_HOSTS")
_NO_HOST = "the Host header names no host (RFC 9112 3.2): host[:port], an IPv6 address in brackets"


@dataclass(frozen=True)
class AllowedHosts:
    """The hosts a request may name (module docstring)."""

    #: ADAPTER_BASE_URL's authority and ADAPTER_ALLOWED_HOSTS, each at its own port
    listed: tuple[Authority, ...]
    #: names of the listening address, at the port a connection arrived on
    names: tuple[str, ...]
    #: the listening port, for a connection whose own is not known
    port: int

    @classmethod
    def of(cls, settings: Settings) -> AllowedHosts:
        listed = list(settings.allowed_host_authorities)
        if settings.base_url:
            listed.insert(0, base_url_authority(settings.base_url))
        return cls(listed=tuple(listed), names=listening_names(settings.http_host), port=settings.http_port)

    def admits(self, asked: Authority, scheme: str, server: tuple[str, int | None] | None) -> bool:
        """Whether a request under ``scheme`` naming ``asked``, on a connection whose local
        address is ``server`` (ASGI's), is for this adapter."""
        here = asked.under(scheme)
        if any(entry.under(scheme) == here for entry in self.listed):
            return True
        port = server[1] if server and server[1] is not None else self.port
        if here != Authority(here.host, port).under(scheme):
            return False
        if here.host in self.names:
            return True
        local = Authority(host_literal(server[0])).address if server else None
        return local is not None and asked.address == local

    def describe(self) -> str:
        """The hosts admitted, for the log at start."""
        said = [str(entry) for entry in self.listed] + [f"{name}:{self.port}" for name in self.names]
        return ", ".join([*said, "the IP address a connection arrives at (its port)"])


def base_url_authority(base_url: str) -> Authority:
    """The host[:port] of ADAPTER_BASE_URL (validated at start: adapter.config)."""
    scheme, _, rest = base_url.partition("://")
    return parse_authority(rest.split("/", 1)[0]).under(scheme.lower())


def listening_names(http_host: str) -> tuple[str, ...]:
    """What clients name the listening address ``http_host`` by (module docstring)."""
    host = http_host.strip().lower()
    if host == "localhost":
        return LOOPBACK_NAMES
    try:
        address = ipaddress.ip_address(host.removeprefix("[").removesuffix("]"))
    except ValueError:
        return (host,)  # a host name, as set
    if address.is_loopback or address.is_unspecified:
        return LOOPBACK_NAMES  # (another loopback address, 127.0.0.2, is admitted as the one arrived at)
    return ()  # a connection to it arrives at it: admitted as such


def admitted_host(scope: Scope) -> str | None:
    """The host[:port] the request was admitted for (AllowedHostsMiddleware), None when none was
    named or known."""
    state = scope.get("state")
    host = state.get("host") if isinstance(state, dict) else None
    return host if isinstance(host, str) else None


class AllowedHostsMiddleware(HttpMiddleware):
    """Refuses (421 OperationOutcome) a request for a host the adapter does not serve (module
    docstring); records the host it was admitted for (:func:`admitted_host`)."""

    def __init__(self, app: ASGIApp, *, hosts: AllowedHosts) -> None:
        super().__init__(app)
        self.hosts = hosts

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        named = [value for name, value in scope.get("headers", ()) if name == b"host"]
        scheme: str = scope.get("scheme", "http")
        server = scope.get("server")
        if not named:  # HTTP/1.0: the address the connection arrived at
            admitted = Authority(host_literal(server[0]), server[1]).under(scheme) if server else None
        else:
            try:
                if len(named) > 1:
                    raise ValueError("more than one")  # the protocol refuses it first (adapter.api.request_limits)
                asked = parse_authority(named[0].decode("latin-1"))
            except ValueError:
                await send_outcome(send, 400, "invalid", _NO_HOST, refusal=RefusalCode.INVALID_QUERY)
                return
            if not self.hosts.admits(asked, scheme, server):
                log.warning("refused a request for a host this adapter does not answer for (Host %r): "
                            "ADAPTER_ALLOWED_HOSTS lists the names it does", named[0].decode("latin-1")[:100])
                await send_outcome(send, 421, "not-supported", _MISDIRECTED, refusal=RefusalCode.NOT_SUPPORTED)
                return
            admitted = asked.under(scheme)
        if admitted is not None:
            scope.setdefault("state", {})["host"] = str(admitted)
        await self.app(scope, receive, send)
