"""PostgreSQL advisory locks in the space of one schema.

An advisory lock is the database's, not a schema's: two adapters whose tables lie in two schemas
of one database (two sites, staging beside production, a test beside another) waited on each
other's audit inserts and index rebuilds, and one holding a lock for long (a hung instance) held
up the other. Each key here is taken with the hash of ``current_schema()`` (the schema the
adapter's tables are in, from the URL's search_path) in its upper 32 bits, so only instances on
the same tables share it. SQLite needs none: its write transaction is the lock."""

from __future__ import annotations

from sqlalchemy import Connection, text

#: The bigint key of a 32-bit lock ``:key`` in the current schema's space (also for a test that
#: holds the lock as a hung instance would: ``SELECT pg_advisory_lock(<this>)``).
SCHEMA_KEY = "((hashtext(coalesce(current_schema(), ''))::bigint << 32) | :key)"
_LOCK = text(f"SELECT pg_advisory_xact_lock({SCHEMA_KEY})")
# the two-key form is a space of its own: (the schema's hash, 32 bits of what is locked)
_PAIR_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(coalesce(current_schema(), '')), :second)")


def lock_in_schema(conn: Connection, key: int) -> None:
    """Take the transaction-scoped advisory lock ``key`` (0 <= key < 2**31) of this schema."""
    if not 0 <= key < 2 ** 31:
        raise ValueError(f"an advisory lock key is 31 bits, not {key:#x}")
    conn.execute(_LOCK, {"key": key})


def lock_pair_in_schema(conn: Connection, second: int) -> None:
    """Take the transaction-scoped two-key advisory lock (this schema, ``second``)."""
    conn.execute(_PAIR_LOCK, {"second": second})
