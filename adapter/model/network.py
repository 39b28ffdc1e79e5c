"""IP addresses and networks named in settings: the reverse proxies the adapter believes
(ADAPTER_TRUSTED_PROXIES), and whether an address is one of them."""

from __future__ import annotations

import ipaddress

from adapter.errors import ConfigurationError
from adapter.model.ae_title import Network


def proxy_network(entry: str) -> Network:
    """A trusted proxy of ADAPTER_TRUSTED_PROXIES: an IP address (a /32 or /128) or a network
    (CIDR). Refused (ConfigurationError) as an AE title's host is (adapter.model.ae_title): a host
    name, an IPv6 zone, a network with host bits set."""
    shown = entry[:80]
    if "%" in entry:
        raise ConfigurationError(f"ADAPTER_TRUSTED_PROXIES: {shown!r}: an IPv6 zone (%...) cannot be trusted: "
                                 "give the address without it")
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ConfigurationError(f"ADAPTER_TRUSTED_PROXIES: {shown!r} is not an IP address or a network "
                                 "(10.1.2.0/24), nor a host name") from None
    if "/" in entry and str(network.network_address) != entry.split("/", 1)[0].strip():
        raise ConfigurationError(f"ADAPTER_TRUSTED_PROXIES: {shown!r}: the network has host bits set "
                                 f"(did you mean {network}, or an address alone?)")
    return network


def is_in(address: str, networks: list[Network]) -> bool:
    """``address`` (an IP address, as a connection's peer or a header gives it) is in one of
    ``networks``; False for anything that is no IP address. An IPv4-mapped IPv6 peer
    (::ffff:10.0.0.5, a dual-stack socket's) is its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


__all__ = ["is_in", "proxy_network"]
