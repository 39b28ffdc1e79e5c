"""IP addresses and networks named in settings: the reverse proxies the adapter believes
(ADAPTER_TRUSTED_PROXIES), the DICOMweb clients it trusts as senders (ADAPTER_STOW_TRUSTED_SENDERS),
and whether an address is one of them."""

from __future__ import annotations

import ipaddress

from adapter.errors import ConfigurationError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def network_of(text: str, what: str) -> Network:
    """An IP address (a /32 or /128) or a network (CIDR) named in a setting, ``what`` naming
    where in the message. Refused (ConfigurationError): a host name (resolving it would make the
    setting's meaning depend on DNS), an IPv6 zone (the address alone would match on every
    interface), a network with host bits set (10.0.0.1/8 would silently widen to 10.0.0.0/8)."""
    text = text.strip()
    shown = text[:80]
    if "%" in text:
        raise ConfigurationError(f"{what}: {shown!r}: an IPv6 zone (%...) cannot be used: give the address without "
                                 "it, or a global address")
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigurationError(f"{what}: {shown!r} is not an IP address or a network (10.1.2.0/24): a host name "
                                 "cannot be used") from None
    if "/" in text and str(network.network_address) != text.split("/", 1)[0].strip():
        raise ConfigurationError(f"{what}: {shown!r}: the network has host bits set "
                                 f"(did you mean {network}, or an address alone?)")
    return network


def proxy_network(entry: str) -> Network:
    """A trusted proxy of ADAPTER_TRUSTED_PROXIES (:func:`network_of`)."""
    return network_of(entry, "ADAPTER_TRUSTED_PROXIES")


def stow_sender_network(entry: str) -> Network:
    """A trusted STOW-RS sender of ADAPTER_STOW_TRUSTED_SENDERS (:func:`network_of`); never every
    address (0.0.0.0/0, ::/0): every caller would answer for consent, as before the setting."""
    network = network_of(entry, "ADAPTER_STOW_TRUSTED_SENDERS")
    if network.prefixlen == 0:
        raise ConfigurationError(f"ADAPTER_STOW_TRUSTED_SENDERS: {entry.strip()[:80]!r} names every address: every "
                                 "caller would answer for consent; list the PACS's and modalities' addresses")
    return network


def ip_address_of(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address, None when it is none; an IPv4-mapped IPv6 one
    (::ffff:10.0.0.5, a dual-stack socket's peer) as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_in(address: str, networks: list[Network]) -> bool:
    """``address`` (an IP address, as a connection's peer or a header gives it) is in one of
    ``networks`` (:func:`ip_address_of`); False for anything that is no IP address."""
    ip = ip_address_of(address)
    return ip is not None and any(ip in network for network in networks)


__all__ = ["Network", "ip_address_of", "is_in", "network_of", "proxy_network", "stow_sender_network"]
