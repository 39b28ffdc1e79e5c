"""X-Forwarded-For is read from trusted proxies only, as uvicorn read it (audit review F1)."""

from __future__ import annotations

import pytest

from adapter.api.forwarded import forwarded_client
from adapter.config import Settings
from adapter.errors import ConfigurationError

pytestmark = pytest.mark.unit

PROXIES = Settings(trusted_proxies="10.0.0.5, 10.1.0.0/16, ::1").trusted_proxy_networks


@pytest.mark.parametrize(("values", "client"), [
    ([b"203.0.113.66"], "203.0.113.66"),
    # from the right, past trusted proxies: what the client put on the left is not believed
    ([b"198.51.100.1, 203.0.113.66, 10.1.2.3"], "203.0.113.66"),
    ([b"198.51.100.1", b"203.0.113.66,10.0.0.5"], "203.0.113.66"),
    ([b"10.0.0.5, 10.1.9.9"], "10.0.0.5"),  # all proxies: the leftmost
    ([b"[2001:db8::1]"], "2001:db8::1"),
    ([b"203.0.113.66, not-an-address"], None),  # nothing but an address is recorded
    ([b"Jane Doe"], None),
    ([b"203.0.113.66:4711"], None),
    ([], None),
])
def test_the_forwarded_client(values: list[bytes], client: str | None) -> None:
    assert forwarded_client(values, PROXIES) == client


@pytest.mark.parametrize("value", ["proxy.example", "10.0.0.1/8", "fe80::1%eth0"])
def test_a_proxy_must_be_an_address_or_a_network(value: str) -> None:
    with pytest.raises(ConfigurationError, match="ADAPTER_TRUSTED_PROXIES"):
        Settings(trusted_proxies=value).trusted_proxy_networks  # noqa: B018
