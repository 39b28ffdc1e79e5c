"""The audit trail's keyed hash chain: each row of ``audit`` carries a MAC over its own content and
the MAC of the row before it, so an event edited, removed (the later ones renumbered), inserted or
moved breaks the chain where it was touched (review audit F2).

The MAC of the row of sequence number ``seq``::

    mac(seq) = HMAC-SHA256(K, previous || seq as 8 bytes big-endian || recorded || canonical json)

* ``K``: HMAC-SHA256 of the label ``clinical-image-adapter/audit-chain/v1`` under the secret in
  the data folder's ``audit.key`` (32 random bytes as hex, made once, mode 0600, as ``pseudonym.key``
  is): never in the database, so an account that can write the database but not read the data
  folder cannot make a MAC. Its own file, not the pseudonym key: that one may be rotated
  (ADAPTER_PSEUDONYM_KEY), and come from the environment rather than the folder.
* ``previous``: the 32-byte MAC of row ``seq - 1``; for the chain's first row, ``seq`` equal to the
  start recorded in key_fingerprints (``audit-start``: 1 for a store made with the chain, the
  first number after the events of a store upgraded to schema 18), HMAC-SHA256(K, ``genesis`` ||
  seq as 8 bytes): the start is bound into the chain, so moving it is seen where a chained event
  stands on it; and the start itself is sealed under K (adapter.store.audit_start), so it cannot
  be moved past the last event with every MAC cleared, nor deleted (privacy review F1).
* ``recorded``: the row's instant in UTC as ASCII ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (27 bytes).
* ``canonical json``: the event as UTF-8 JSON, keys sorted, no spaces (``,`` and ``:``), non-ASCII
  as itself, last (so the message needs no length prefix).

Stored as 64 hex digits in ``audit.chain_mac``; events before the start have none.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from adapter.errors import ConfigurationError
from adapter.files import publish_once, remove_abandoned_candidates, unreadable_problem
from adapter.store.dates import to_utc
from adapter.store.schema import AUDIT_CHAIN_START

#: key_fingerprints' row: the first sequence number the chain covers.
CHAIN_START = AUDIT_CHAIN_START
#: The file in the data folder holding the secret the chain's key is derived from.
AUDIT_KEY_FILE = "audit.key"
#: key_fingerprints' row: a fingerprint of the chain's key (which audit.key the chain was made with).
CHAIN_KEY_FINGERPRINT = "audit-key"
_LABEL = b"clinical-image-adapter/audit-chain/v1"

_log = logging.getLogger(__name__)


def chain_key(secret: bytes) -> bytes:
    """The chain's HMAC key, derived from the data folder's secret (domain-separated)."""
    return hmac.new(secret, _LABEL, hashlib.sha256).digest()


def key_fingerprint(key: bytes) -> str:
    """Names the chain key without revealing it."""
    return hmac.new(key, b"clinical-image-adapter/audit-chain-fingerprint/v1", hashlib.sha256).hexdigest()


def read_audit_key(data_dir: Path, *, create: bool) -> bytes | None:
    """The chain key from ``data_dir/audit.key``; made once when missing and ``create`` (several
    processes may start at once: one is published, whole), else None when missing. Without
    ``create`` it only reads (``check``, ``verify``): the candidates a killed start left are
    removed by the next start that may make the key. The key made is said in one INFO line: a new
    secret every later start needs, which backups made before it (and a container's secrets,
    kept outside the volume) do not hold (ops review 4e)."""
    path = data_dir / AUDIT_KEY_FILE
    try:
        if not path.exists():
            if not create:
                return None
            data_dir.mkdir(parents=True, exist_ok=True)
            if publish_once(path, secrets.token_hex(32)):
                _log.info("made %s, the audit trail's chain key: back it up with the database, as pseudonym.key and "
                          "store.id (every later start needs it: without it serve refuses to start)", path)
        if create:
            remove_abandoned_candidates(path)
        secret = path.read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigurationError(unreadable_problem(path, exc)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"{path} cannot be read ({type(exc).__name__})") from exc
    if not secret:
        raise ConfigurationError(f"{path} is empty: restore the audit.key backed up with the database")
    return chain_key(secret.encode("ascii"))


def make_audit_key(data_dir: Path) -> bytes:
    """The chain key from ``data_dir/audit.key``, made now when missing (:func:`read_audit_key`):
    what a start gives a store opened without a key, once nothing refuses the start."""
    key = read_audit_key(data_dir, create=True)
    if key is None:  # made when missing: not reached
        raise ConfigurationError(f"{data_dir / AUDIT_KEY_FILE} could not be made")
    return key


def audit_key_refusal(recorded: str | None, key: bytes | None) -> str | None:
    """Why a start must not chain new events under ``key`` (the data folder's, None when it has no
    audit.key) for a trail whose key's fingerprint is ``recorded`` (None: no event chained under a
    key yet, so a start makes and records one), or None. Fail closed: a lost or other audit.key
    would chain new events under a key the earlier ones do not verify with."""
    if recorded is None:
        return None
    if key is None:
        return ("the data folder has no audit.key, but this database's audit trail is chained with one: restore the "
                "audit.key backed up with the database (ADAPTER_DATA_DIR), or point at the folder that holds it")
    if recorded != key_fingerprint(key):
        return ("the data folder's audit.key is not the key this database's audit trail is chained with: restore "
                "the audit.key backed up with the database (ADAPTER_DATA_DIR), or point at the folder that holds it")
    return None


def genesis(key: bytes, start: int) -> bytes:
    """What the chain's first row (sequence number ``start``) chains to."""
    return hmac.new(key, b"genesis" + start.to_bytes(8, "big"), hashlib.sha256).digest()


def canonical_json(event: Any) -> bytes:
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def chain_mac(key: bytes, previous: bytes, seq: int, recorded: datetime, event: Any) -> bytes:
    """The MAC of one row (module docstring)."""
    stamp = to_utc(recorded).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode("ascii")
    return hmac.new(key, previous + seq.to_bytes(8, "big") + stamp + canonical_json(event), hashlib.sha256).digest()


@dataclass
class ChainReport:
    """What :func:`check_chain` found: ``events`` rows read, ``start`` the first chained sequence
    number, ``first_broken`` the first row that does not verify (None: none), ``broken`` how many
    do not, ``last`` the last sequence number and ``last_mac`` its MAC (hex), to compare with a copy
    kept off the host (a chain cannot show that its newest rows were cut off). ``start_problem``:
    why the start itself cannot be trusted (adapter.store.audit_start.start_problem), or None."""

    events: int = 0
    start: int | None = None
    start_problem: str | None = None
    first_broken: int | None = None
    first_problem: str = ""
    broken: int = 0
    last: int = 0
    last_mac: str | None = None

    def _break(self, seq: int, problem: str) -> None:
        self.broken += 1
        if self.first_broken is None:
            self.first_broken, self.first_problem = seq, problem


def check_chain(key: bytes, start: int | None, rows: Iterable[tuple[int, datetime, Any, str | None]]) -> ChainReport:
    """Walk ``rows`` (sequence number, recorded, event, stored MAC hex), in sequence order, once,
    keeping only the previous row's MAC. A row is broken when its number is not its predecessor's
    plus one (a row removed or added), when it lies before the start and carries a MAC, or from the
    start on carries none or another than its content and its predecessor's MAC give (its content
    edited, or it moved). Each row is checked against the MAC its predecessor stored, so one edited
    row breaks itself only; a removal breaks the rows renumbered after it."""
    report = ChainReport(start=start)
    first = start if start is not None else 1
    previous_seq, previous_mac = 0, b""
    for seq, recorded, event, stored in rows:
        report.events += 1
        report.last, report.last_mac = seq, stored
        if seq != previous_seq + 1:
            report._break(seq, f"follows {previous_seq}: event(s) removed or added")
        elif seq < first:
            if stored is not None:
                report._break(seq, f"carries a MAC before the chain's start {first}")
        elif stored is None:
            report._break(seq, "carries no MAC")
        else:
            before = genesis(key, first) if seq == first else previous_mac
            if not hmac.compare_digest(chain_mac(key, before, seq, recorded, event).hex(), stored):
                report._break(seq, "its MAC does not match: edited, inserted, removed or moved")
        previous_seq = seq
        previous_mac = bytes.fromhex(stored) if stored is not None and _is_hex(stored) else b""
    return report


def _is_hex(value: str) -> bool:
    try:
        bytes.fromhex(value)
    except ValueError:
        return False
    return True
