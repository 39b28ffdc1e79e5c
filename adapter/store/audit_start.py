"""The audit chain's start, sealed under the chain's key (privacy review F1).

key_fingerprints ``audit-start`` holds the first sequence number the chain covers
(adapter.store.audit_chain): 1 for a store made with the chain, the number after the last event
for a store upgraded from schema 17 or older, whose events have no MAC. Whatever verify exempts
from the chain follows from that number, and the database holds it: a writer without the key
cleared every MAC and moved it past the last event, and the whole trail read as "stored before
the chain". So it is sealed, in key_fingerprints ``audit-start-mac``::

    seal = HMAC-SHA256(K, "clinical-image-adapter/audit-start/v1" || start as 8 bytes || exempt)

``exempt``: for a start above 1, the last event it exempts (number ``start - 1``) as the chain's
MAC takes an event (its number as 8 bytes, its recorded instant, its canonical JSON); nothing for
a start of 1. A writer without K cannot move the start, delete the seal (a store with its key
must hold one), nor take another store's (another key's, or another trail's last exempt event).

The seal is written once, in one of two places, each where the start can be trusted:

* in the transaction that makes the store or upgrades it to schema 21, when the store is opened
  with its key. A start recorded there (upgraded from 17 or older) is the number after the last
  event; one recorded before (schema 18, 19 or 20) is sealed only when the chain stands on it: at 1,
  or above 1 on a store upgraded from before the chain, with the event at the start chained from
  it (its MAC made from the start under K, which a writer without K cannot make);
* else by the start that makes the data folder's audit.key (adapter.store.sql.claim_audit_key:
  the folder had none, so no event can carry a MAC): the start must be the number after the last
  event, and above 1 only on a store upgraded from before the chain.

Anything else is left unsealed and refused: serve does not start, verify reports it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from adapter.store.audit_chain import CHAIN_START, chain_mac, genesis
from adapter.store.dates import now_instant
from adapter.store.schema import AUDIT_CHAIN_VERSION, audit, key_fingerprints, schema_version

#: key_fingerprints' row holding the start's seal (hex).
START_SEAL = "audit-start-mac"
#: The schema version that seals the start.
START_SEAL_VERSION = 21
_LABEL = b"clinical-image-adapter/audit-start/v1"

#: One event as the chain reads it: (sequence number, recorded, event, stored MAC hex).
Row = tuple[int, datetime, Any, str | None]


@dataclass(frozen=True)
class StartFacts:
    """What the start's seal is checked against, read in a few indexed statements (a start's
    check reads no more than this, whatever the trail's length): the start and seal as stored,
    the last event's number and MAC, the last event the start exempts, the event at the start,
    and the first schema version the store was at (made at, or upgraded from)."""

    start_text: str | None
    seal: str | None
    last: int
    last_mac: str | None
    exempt: Row | None
    first_chained: Row | None
    made_at: int

    @property
    def start(self) -> int | None:
        """The recorded start, None when missing or not a positive number."""
        text = self.start_text
        return int(text) if text is not None and text.isdigit() and int(text) >= 1 else None


def start_seal(key: bytes, start: int, exempt: Row | None) -> str:
    """The seal of ``start`` (module docstring), hex."""
    message = _LABEL + start.to_bytes(8, "big")
    if exempt is not None:
        seq, recorded, event, _ = exempt
        message += chain_mac(key, b"", seq, recorded, event)  # the event as the chain takes it, under K
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def read_start_facts(conn: Connection) -> StartFacts:
    """The facts of the trail's start, in ``conn``'s transaction."""
    k, a = key_fingerprints.c, audit.c
    stored = dict(conn.execute(select(k.name, k.fingerprint).where(k.name.in_((CHAIN_START, START_SEAL)))).all())
    last_row = conn.execute(select(a.seq, a.chain_mac).order_by(a.seq.desc()).limit(1)).first()
    last, last_mac = (int(last_row[0]), last_row[1]) if last_row is not None else (0, None)
    made_at = conn.execute(select(func.min(schema_version.c.version))).scalar()
    facts = StartFacts(stored.get(CHAIN_START), stored.get(START_SEAL), last, last_mac, None, None,
                       int(made_at) if made_at is not None else 0)
    start = facts.start
    if start is None:
        return facts

    def row(seq: int) -> Row | None:
        found = conn.execute(select(a.seq, a.recorded, a.json, a.chain_mac).where(a.seq == seq)).first()
        return (int(found[0]), found[1], found[2], found[3]) if found is not None else None

    return StartFacts(facts.start_text, facts.seal, last, last_mac, row(start - 1) if start > 1 else None,
                      row(start) if start <= last else None, facts.made_at)


def start_problem(key: bytes, facts: StartFacts) -> str | None:
    """Why the start of a trail chained under ``key`` cannot be trusted, or None: missing, not
    sealed, its seal not this start's under this key (moved, or taken from another store), or
    inconsistent with the events (checked on the few events :class:`StartFacts` holds; verify's
    walk checks every one)."""
    start = facts.start
    if start is None:
        return _not_recorded(facts)
    if facts.seal is None:
        why = sealing_refusal(key, facts, fresh=False)
        return (f"the chain's start (key_fingerprints audit-start, {start}) is not sealed under the audit key "
                f"(audit-start-mac): removed from the database, or not sealed at the upgrade to schema "
                f"{START_SEAL_VERSION}" + (f" ({why})" if why else ""))
    if not hmac.compare_digest(start_seal(key, start, facts.exempt), facts.seal):
        return (f"the chain's start (key_fingerprints audit-start, {start}) does not match its seal "
                "(audit-start-mac) under the audit key: the start moved, the last event before it edited or "
                "removed, or the seal taken from another store, in the database")
    return _inconsistency(key, start, facts)


def sealing_refusal(key: bytes | None, facts: StartFacts, *, fresh: bool) -> str | None:
    """Why the start in ``facts`` must not be sealed, or None. ``fresh``: no event can carry a
    MAC yet (the start was recorded in this transaction from the events, or ``key`` is being made
    now: None), so the start must be the number after the last event; otherwise the chain must
    stand on it (module docstring)."""
    start = facts.start
    if start is None:
        return _not_recorded(facts)
    if start > 1 and facts.made_at >= AUDIT_CHAIN_VERSION:
        return (f"a start of {start} on a store made with the chain (schema {facts.made_at}), whose start is 1: "
                "moved in the database")
    if start > facts.last + 1:
        return f"the start {start} lies past the last event, {facts.last}: moved in the database"
    if fresh:
        if start != facts.last + 1 or facts.last_mac is not None:
            return (f"no event can be chained yet, so the start is the number after the last event ({facts.last + 1}), "
                    f"not {start}, and no event carries a MAC")
        return None
    if start > 1 and facts.first_chained is None:
        return (f"no event is chained from the start {start}, where a store upgraded from before the chain and "
                "since served chains its first: moved in the database")
    if key is not None:
        return _inconsistency(key, start, facts)
    return None


def seal_start(conn: Connection, key: bytes, *, fresh: bool) -> bool:
    """Seal the trail's start in ``conn``'s transaction unless sealed or :func:`sealing_refusal`
    refuses it (left unsealed: every start is then refused, saying why). True when sealed now."""
    facts = read_start_facts(conn)
    start = facts.start
    if facts.seal is not None or start is None or sealing_refusal(key, facts, fresh=fresh) is not None:
        return False
    conn.execute(key_fingerprints.insert().values(name=START_SEAL, fingerprint=start_seal(key, start, facts.exempt),
                                                  updated=now_instant()))
    return True


def _not_recorded(facts: StartFacts) -> str:
    if facts.start_text is None:
        return "the chain's start is not recorded (key_fingerprints audit-start): removed from the database"
    return f"the chain's start (key_fingerprints audit-start) is not a sequence number: {facts.start_text[:20]!r}"


def _inconsistency(key: bytes, start: int, facts: StartFacts) -> str | None:
    """What of the events at the start's edges contradicts it, or None: the event before it with
    a MAC, the event at it without the one the start gives, or the last event without one (a
    chain begun again on top of events whose MACs were cleared)."""
    if facts.exempt is not None and facts.exempt[3] is not None:
        return f"event {start - 1}, before the chain's start {start}, carries a MAC: the start moved in the database"
    first = facts.first_chained
    if first is not None:
        seq, recorded, event, stored = first
        if stored is None or not hmac.compare_digest(chain_mac(key, genesis(key, start), seq, recorded, event).hex(),
                                                     stored):
            return (f"event {start}, the chain's first, does not carry the MAC its start gives: the start moved, or "
                    "the event edited or its MAC cleared, in the database")
    if facts.last >= start and facts.last_mac is None:
        return (f"the last event, {facts.last}, carries no MAC: the chain's MACs cleared in the database, where a "
                "start would chain on from it")
    return None
