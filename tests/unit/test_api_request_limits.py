"""Which peer addresses share ADAPTER_HTTP_MAX_CONNECTIONS_PER_ADDRESS (adapter.api.request_limits)."""

from __future__ import annotations

import pytest

from adapter.api.request_limits import address_key


def test_an_ipv4_address_is_counted_alone() -> None:
    assert address_key("192.0.2.1") != address_key("192.0.2.2")
    assert address_key("192.0.2.1") == address_key("192.0.2.1")


@pytest.mark.parametrize("other", ["2001:db8:0:1::2", "2001:db8:0:1:ffff:ffff:ffff:ffff", "2001:DB8:0:1::1"])
def test_ipv6_addresses_of_one_64_prefix_count_as_one_client(other: str) -> None:
    """An IPv6 host is given a whole /64 (RFC 7421) and may pick any address of it for each
    connection: counted per address, one client could hold every connection."""
    assert address_key("2001:db8:0:1::1") == address_key(other)


def test_ipv6_addresses_of_other_prefixes_and_ipv4_mapped_ones() -> None:
    assert address_key("2001:db8:0:1::1") != address_key("2001:db8:0:2::1")
    assert address_key("::ffff:192.0.2.1") == address_key("192.0.2.1")  # a dual-stack socket's IPv4 peer
    assert address_key("::ffff:192.0.2.1") != address_key("::ffff:192.0.2.2")
    assert address_key("not an address") == "not an address"  # a Unix socket's peer, as given
