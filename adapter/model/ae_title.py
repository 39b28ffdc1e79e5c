"""Application Entity titles (PS3.5 6.2, VR AE) and the callers allowed by one: a title, or a
title bound to the hosts it may call from (``AE@address``, ``AE@network``)."""

from __future__ import annotations

import ipaddress

from adapter.errors import ConfigurationError

#: PS3.5 6.2: an AE title is 1..16 characters of the default repertoire, no backslash or control
#: characters; leading and trailing spaces are not significant.
_AE_MAX = 16


def check_ae_title(title: str, what: str) -> str:
    title = title.strip()
    if not title or len(title) > _AE_MAX or any(ch == "\\" or not " " <= ch <= "~" for ch in title):
        shown = title if len(title) <= 64 else f"{title[:64]}…"  # whole, as set (a long one, shortened visibly)
        raise ConfigurationError(f"{what}: {shown!r} is not an AE title ({len(title)} characters; an AE title has "
                                 "1-16 printable ASCII characters, no backslash)")
    return title


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def split_caller(entry: str, what: str) -> tuple[str, Network | None]:
    """An allowed caller: ``AE`` (from any host) or ``AE@address`` / ``AE@network`` (CIDR), the
    title bound to the hosts it may call from. Raises ConfigurationError naming ``what``."""
    title, at, host = entry.strip().rpartition("@")
    if not at:
        return check_ae_title(entry, what), None
    host = host.strip()
    if "%" in host:  # an IPv6 zone (fe80::1%eth0): the address alone would match on every interface
        raise ConfigurationError(f"{what}: {entry.strip()[:80]!r}: an IPv6 zone (%...) cannot be bound to: "
                                 "give the address without it, or a global address")
    try:
        network = ipaddress.ip_network(host, strict=False)
    except ValueError:
        raise ConfigurationError(f"{what}: {entry.strip()[:80]!r}: after '@' an IP address or a network "
                                 "(10.1.2.0/24) the AE title may call from, not a host name") from None
    if "/" in host and str(network.network_address) != host.split("/", 1)[0].strip():
        # 10.0.0.1/8 would silently widen to 10.0.0.0/8: a typo in the mask or the address
        raise ConfigurationError(f"{what}: {entry.strip()[:80]!r}: the network has host bits set "
                                 f"(did you mean {network}, or an address alone?)")
    return check_ae_title(title, what), network


__all__ = ["Network", "check_ae_title", "split_caller"]
