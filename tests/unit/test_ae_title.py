"""Allowed callers of the SCP: AE titles, bound or not to the hosts they may call from."""

from __future__ import annotations

import pytest

from adapter.dicom.ae import AeOptions
from adapter.errors import ConfigurationError


def test_a_bound_title_may_call_from_its_hosts_only() -> None:
    options = AeOptions(allowed_ae_titles=("PACS@10.0.0.0/24", "PACS@10.1.0.1", "ANY", "WS@2001:db8::/64"))
    assert options.allowed_ae_titles == ("PACS", "ANY", "WS")
    assert options.may_call("PACS", "10.0.0.200") and options.may_call("PACS", "10.1.0.1")
    assert not options.may_call("PACS", "10.1.0.2")
    assert options.may_call("PACS", "::ffff:10.0.0.7")  # a dual-stack listener's view of an IPv4 peer
    assert options.may_call("WS", "2001:db8::5") and not options.may_call("WS", "2001:db9::5")
    assert options.may_call("ANY", "203.0.113.9")
    assert not options.may_call("OTHER", "10.0.0.1")
    assert not options.may_call("PACS", "") and not options.may_call("PACS", "not-an-address")


@pytest.mark.parametrize("entries", [("PACS", "PACS@10.0.0.1"), ("PACS@10.0.0.1", "PACS")])
def test_a_title_allowed_from_any_host_anywhere_is_allowed_from_any_host(entries: tuple[str, ...]) -> None:
    options = AeOptions(allowed_ae_titles=entries)
    assert options.may_call("PACS", "192.0.2.1")
    assert options.unbound == ("PACS",)  # which the SCP warns of at start (review newwrites F4)
    assert AeOptions(allowed_ae_titles=("PACS@10.0.0.1", "ANY")).unbound == ()


@pytest.mark.parametrize("entry", ["PACS@pacs.example.org", "PACS@", "@10.0.0.1", "PACS@10.0.0.0/33",
                                   # review newwrites F4: silently widened, or bound on every interface
                                   "PACS@10.0.0.1/8", "PACS@fe80::1%eth0", "PACS@2001:db8::1/64"])
def test_a_binding_that_is_not_an_address_or_network_is_refused(entry: str) -> None:
    with pytest.raises(ConfigurationError):
        AeOptions(allowed_ae_titles=(entry,))
