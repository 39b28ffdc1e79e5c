"""The tables of the record store (SQLAlchemy Core), shared by SQLite and PostgreSQL.

JSON columns use ``sqlalchemy.JSON``: TEXT on SQLite, ``json`` on PostgreSQL. ``json`` (not
``jsonb``) keeps the document as written, so a resource comes back with its elements in the
order the mapping produced them (``resourceType`` first).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    select,
)
from sqlalchemy.engine import Connection

from adapter.errors import ConfigurationError
from adapter.store.dates import UtcDateTime, now_instant

#: Bump when the tables change, and add a migration step that upgrades the previous version.
SCHEMA_VERSION = 1

metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s",
    "pk": "pk_%(table_name)s",
})

# SQLite only autoincrements an INTEGER PRIMARY KEY.
_Serial = BigInteger().with_variant(Integer(), "sqlite")

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied", UtcDateTime, nullable=False),
)

resources = Table(
    "resources", metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("json", JSON, nullable=False),
    # search index
    Column("patient_system", Text),
    Column("patient_value", Text),
    Column("patient_reference", Text),
    Column("date", UtcDateTime),
    Column("status", String(64)),
    # access facts (AccessFacts); governed_by NULL means the resource has none
    Column("governed_by", String(140)),
    Column("fact_patient_system", Text),
    Column("fact_patient_value", Text),
    Column("kind", String(32)),
    Column("source", String(32)),
    Column("consent_pending", Boolean),
    Column("consent_ids", JSON),
    Column("blob_sha256", String(64)),
    PrimaryKeyConstraint("resource_type", "id"),
    Index("ix_resources_patient", "patient_system", "patient_value"),
    Index("ix_resources_fact_patient", "fact_patient_system", "fact_patient_value"),
    Index("ix_resources_type_last_updated", "resource_type", "last_updated", "id"),
    Index("ix_resources_date", "date"),
)

resource_history = Table(
    "resource_history", metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime, nullable=False),
    Column("json", JSON, nullable=False),
    PrimaryKeyConstraint("resource_type", "id", "version_id"),
)

tokens = Table(
    "tokens", metadata,
    Column("resource_type", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", Text),
    Column("code", Text, nullable=False),
    ForeignKeyConstraint(["resource_type", "id"], [resources.c.resource_type, resources.c.id],
                         ondelete="CASCADE"),
    Index("ix_tokens_param_code_system", "param", "code", "system"),
    Index("ix_tokens_resource", "resource_type", "id"),
)

receipts = Table(
    "receipts", metadata,
    Column("seq", _Serial, primary_key=True, autoincrement=True),
    Column("idempotency_key", String(200)),
    Column("patient_system", Text, nullable=False),
    Column("patient_value", Text, nullable=False),
    Column("stored_sha256", String(64), nullable=False),
    Column("recorded", UtcDateTime, nullable=False),
    Column("receipt", JSON, nullable=False),
    UniqueConstraint("idempotency_key", name="uq_receipts_idempotency_key"),
    UniqueConstraint("patient_system", "patient_value", "stored_sha256", name="uq_receipts_patient_sha"),
)

audit = Table(
    "audit", metadata,
    Column("seq", _Serial, primary_key=True, autoincrement=True),
    Column("recorded", UtcDateTime, nullable=False),
    Column("json", JSON, nullable=False),
)


def create_schema(conn: Connection) -> None:
    """Create missing tables and record the schema version, inside the caller's transaction.

    Raises ConfigurationError when the database was written by a newer schema than this code
    knows: running old code against it could lose data.
    """
    metadata.create_all(conn)
    found = conn.execute(select(func.max(schema_version.c.version))).scalar()
    if found is None:
        conn.execute(insert(schema_version).values(version=SCHEMA_VERSION, applied=now_instant()))
    elif found > SCHEMA_VERSION:
        raise ConfigurationError(
            f"the database has schema version {found}; this adapter supports up to {SCHEMA_VERSION}")
