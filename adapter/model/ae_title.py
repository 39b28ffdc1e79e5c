"""Application Entity titles (PS3.5 6.2, VR AE) and the callers allowed by one: a title, or a
title bound to the hosts it may call from (``AE@address``, ``AE@network``)."""

from __future__ import annotations

from adapter.errors import ConfigurationError
from adapter.model.network import Network, network_of

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


def split_caller(entry: str, what: str) -> tuple[str, Network | None]:
    """An allowed caller: ``AE`` (from any host) or ``AE@address`` / ``AE@network`` (CIDR), the
    title bound to the hosts it may call from (adapter.model.network.network_of: no host name,
    IPv6 zone or host bits). Raises ConfigurationError naming ``what``."""
    title, at, host = entry.strip().rpartition("@")
    if not at:
        return check_ae_title(entry, what), None
    network = network_of(host, f"{what}: {entry.strip()[:80]!r}: after '@'")
    return check_ae_title(title, what), network


__all__ = ["Network", "check_ae_title", "split_caller"]
