"""The hosts the adapter answers for (adapter.api.allowed_hosts), the authority they are parsed as
(adapter.model.authority), ADAPTER_ALLOWED_HOSTS, and the cross-site check's own origins."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from adapter.api.allowed_hosts import AllowedHosts
from adapter.api.cross_site import CrossSiteWriteMiddleware
from adapter.config import Settings
from adapter.errors import ConfigurationError
from adapter.model.authority import Authority, parse_authority


def _hosts(**settings: Any) -> AllowedHosts:
    return AllowedHosts.of(Settings(**settings))


def _admits(hosts: AllowedHosts, host: str, server: tuple[str, int] | None = ("127.0.0.1", 8080),
            scheme: str = "http") -> bool:
    return hosts.admits(parse_authority(host), scheme, server)


@pytest.mark.parametrize(("text", "authority"), [
    ("Adapter.Example", Authority("adapter.example")), ("adapter.example:8443", Authority("adapter.example", 8443)),
    ("10.0.0.7:80", Authority("10.0.0.7", 80)), ("[::1]:8080", Authority("[::1]", 8080)),
    ("[0:0:0:0:0:0:0:1]", Authority("[::1]")), ("localhost.", Authority("localhost.")), ("host:", Authority("host")),
])
def test_an_authority_is_read_in_lower_case_with_its_port(text: str, authority: Authority) -> None:
    assert parse_authority(text) == authority


@pytest.mark.parametrize("text", ["", "a b", "user@host", "host/path", "[::1", "[::1]x", "::1", "[fe80::1%25eth0]",
                                  "host:http", "host:99999", "*.example", "http://host", "ex..ample", ".example"])
def test_what_is_no_authority_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_authority(text)


def test_a_scheme_s_default_port_is_the_same_authority_as_none() -> None:
    assert parse_authority("a.example:443").under("https") == parse_authority("a.example").under("https")
    assert parse_authority("a.example:443").under("http") != parse_authority("a.example").under("http")


def test_on_loopback_the_adapter_answers_for_its_loopback_names_at_its_port_only() -> None:
    # the default: 127.0.0.1:8080, no base URL, nothing listed
    hosts = _hosts()
    for host in ("127.0.0.1:8080", "localhost:8080", "LOCALHOST:8080"):
        assert _admits(hosts, host), host
    for host in ("rebind.attacker.example:8080", "localhost:9090", "127.0.0.1", "localhost", "localhost.:8080",
                 "10.0.0.7:8080", "0.0.0.0:8080", "127.0.0.1.nip.io:8080"):
        assert not _admits(hosts, host), host
    # another loopback address the connection arrived at is its own too
    assert _admits(hosts, "127.0.0.2:8080", ("127.0.0.2", 8080))


def test_the_port_is_the_one_the_connection_arrived_on() -> None:
    # ADAPTER_HTTP_PORT=0 (a port the system chooses), or a test's server
    hosts = _hosts(http_port=0)
    assert _admits(hosts, "localhost:41234", ("127.0.0.1", 41234))
    assert not _admits(hosts, "localhost:0", ("127.0.0.1", 41234))


def test_on_every_address_the_loopback_names_and_the_address_arrived_at_are_admitted() -> None:
    """0.0.0.0 (the image's): the HEALTHCHECK's 127.0.0.1 and a client on the host, whose
    connection Docker's proxy hands on to the container's address, at the listening port; the
    address a connection arrived at (a Kubernetes probe's pod IP); not a name."""
    hosts = _hosts(http_host="0.0.0.0")
    container = ("172.17.0.2", 8080)
    for host in ("127.0.0.1:8080", "localhost:8080", "[::1]:8080", "172.17.0.2:8080"):
        assert _admits(hosts, host, container), host
    for host in ("172.17.0.3:8080", "172.17.0.2:9090", "127.0.0.1:9090", "adapter.hospital.example",
                 "rebind.attacker.example:8080"):
        assert not _admits(hosts, host, container), host
    # a dual-stack socket names an IPv4 address as IPv4-mapped IPv6
    assert _admits(_hosts(http_host="::"), "10.0.0.7:8080", ("::ffff:10.0.0.7", 8080))
    assert _admits(_hosts(http_host="::"), "[2001:db8::7]:8080", ("2001:db8::7", 8080))


def test_a_specific_address_or_name_is_admitted_as_such() -> None:
    assert _admits(_hosts(http_host="10.0.0.7"), "10.0.0.7:8080", ("10.0.0.7", 8080))
    assert not _admits(_hosts(http_host="10.0.0.7"), "localhost:8080", ("10.0.0.7", 8080))
    named = _hosts(http_host="imaging-01.internal")
    assert _admits(named, "imaging-01.internal:8080", ("10.0.0.7", 8080))
    assert not _admits(named, "imaging-01.internal:8081", ("10.0.0.7", 8080))


def test_the_base_url_and_the_listed_hosts_are_admitted_at_their_own_ports() -> None:
    hosts = _hosts(base_url="https://adapter.hospital.example/imaging",
                   allowed_hosts="proxy.hospital.example, 10.0.0.9:8443, [2001:db8::1]")
    for host in ("adapter.hospital.example", "Adapter.Hospital.Example", "proxy.hospital.example",
                 "10.0.0.9:8443", "[2001:db8::1]"):
        assert _admits(hosts, host, ("10.0.0.7", 8080)), host
    # the scheme's default port is the same as none
    assert _admits(hosts, "adapter.hospital.example:443", ("10.0.0.7", 8080), scheme="https")
    for host in ("adapter.hospital.example:8080", "evil.adapter.hospital.example", "adapter.hospital.example.evil",
                 "10.0.0.9", "proxy.hospital.example:444"):
        assert not _admits(hosts, host, ("10.0.0.7", 8080)), host
    assert _admits(_hosts(base_url="http://adapter.hospital.example:8080"), "adapter.hospital.example:8080", None)


@pytest.mark.parametrize("value", ["*", "*.hospital.example", "https://adapter.example", "adapter.example/fhir",
                                   "adapter.example:http", "user@adapter.example", "::1"])
def test_allowed_hosts_that_are_no_host_stop_the_start(value: str) -> None:
    with pytest.raises(ConfigurationError, match="ADAPTER_ALLOWED_HOSTS"):
        Settings(allowed_hosts=f"localhost, {value}")


def test_a_base_url_with_user_information_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute http"):
        Settings(base_url="https://user:secret@adapter.example")


def _write(middleware: CrossSiteWriteMiddleware, host: str, origin: str) -> int:
    """The status a POST with ``host`` and ``origin`` (same-origin, as a browser marks it) gets."""
    statuses: list[int] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    scope = {"type": "http", "method": "POST", "path": "/photos", "scheme": "http", "server": ("127.0.0.1", 8080),
             "headers": [(b"host", host.encode()), (b"origin", origin.encode()), (b"sec-fetch-site", b"same-origin")]}
    asyncio.run(middleware(scope, receive, send))
    return statuses[0]


def test_the_adapter_s_own_pages_are_those_of_a_host_it_answers_for_not_any_origin_equal_to_host() -> None:
    """Review finding 1: an Origin equal to the request's Host was taken for the adapter's own
    /docs page; after DNS rebinding a page of any domain names it in both."""
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    middleware = CrossSiteWriteMiddleware(app, allowed_origins=[], hosts=_hosts())
    rebound = "rebind.attacker.example:8080"
    assert _write(middleware, rebound, f"http://{rebound}") == 403
    assert _write(middleware, "127.0.0.1:8080", "http://127.0.0.1:8080") == 201
    assert _write(middleware, "127.0.0.1:8080", "http://localhost:8080") == 201  # another name of its own
    assert _write(middleware, "127.0.0.1:8080", "http://localhost:9999") == 403
    assert _write(middleware, "127.0.0.1:8080", "http://localhost:8080/x@y") == 403
