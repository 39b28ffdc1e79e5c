"""The authority of an HTTP URL, ``host[:port]`` (RFC 3986 3.2, RFC 9110 4.2.1): what a request's
``Host`` header names, what an ``Origin`` and ADAPTER_BASE_URL carry after their scheme, and what
ADAPTER_ALLOWED_HOSTS lists.

The host is a registered name (letters, digits, ``-``, ``.``, ``_``; compared in lower case, RFC
3986 6.2.2.1), an IPv4 address, or an IPv6 address in brackets (no zone). A port the URL's scheme
has by default (80 for http, 443 for https) is the same authority as none (RFC 3986 6.2.3), so
``adapter.example:443`` under https is ``adapter.example``. No user information: a ``Host``
carries none (RFC 9110 7.2)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from adapter.model.network import ip_address_of

#: RFC 3986 reg-name as host names are written (no percent-encoding or sub-delimiters: no name
#: in DNS has them); a label may not be empty (no leading or doubled dot; a trailing one, the
#: root's, is a name of its own: ``localhost.`` is not ``localhost``).
_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", re.ASCII)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Authority:
    """``host`` in lower case (an IPv6 address in brackets, compressed), ``port`` None when not
    given or the scheme's default."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def address(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        """The host as an IP address (an IPv4-mapped IPv6 one as its IPv4), None for a name."""
        return ip_address_of(self.host.removeprefix("[").removesuffix("]"))

    def under(self, scheme: str) -> Authority:
        """The same authority with ``scheme``'s default port said as none."""
        return Authority(self.host, None) if self.port == _DEFAULT_PORTS.get(scheme) else self


def parse_authority(text: str) -> Authority:
    """``host[:port]`` as an :class:`Authority`, its port as written (:meth:`Authority.under`
    drops a scheme's default). ValueError when it is none: empty, user information, a path, a port that is not 0-65535, an
    IPv6 address unbracketed or with a zone, a character no host name has."""
    text = text.strip().lower()
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[1:end], text[end + 1:]
        if end == -1 or "%" in host:
            raise ValueError("not an IPv6 address in brackets, without a zone")
        try:
            host = f"[{ipaddress.IPv6Address(host).compressed}]"
        except ValueError:
            raise ValueError("not an IPv6 address in brackets") from None
        if rest and not rest.startswith(":"):
            raise ValueError("nothing but a port may follow the host")
        port = rest[1:] if rest else ""
    else:
        host, _, port = text.partition(":")
        if not _NAME.fullmatch(host):
            raise ValueError("not a host name or address")
    if port and not (port.isascii() and port.isdigit() and len(port) <= 5 and int(port) <= 65535):
        raise ValueError("the port is not a number 0-65535")
    return Authority(host, int(port) if port else None)


def host_literal(address: str) -> str:
    """An IP address as the host of a URL: an IPv6 one in brackets."""
    return f"[{address}]" if ":" in address else address


def default_port(scheme: str) -> int | None:
    return _DEFAULT_PORTS.get(scheme)


__all__ = ["Authority", "default_port", "host_literal", "parse_authority"]
