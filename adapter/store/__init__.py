"""Storage: the port (``port.py``) and its adapters, a SQL record store for SQLite and
PostgreSQL and a file blob store. ``open_store`` picks the backend from the database URL."""

from __future__ import annotations

from functools import partial

from adapter.config import StoreOptions
from adapter.errors import NoStore
from adapter.store.audit_chain import read_audit_key
from adapter.store.blobs import FileBlobStore
from adapter.store.port import (
    BlobStore,
    DateCriterion,
    NamePrefix,
    RecordStore,
    SearchCriteria,
    TokenCriterion,
)
from adapter.store.sql import SqlRecordStore


def open_store(options: StoreOptions, *, existing_only: bool = False,
               make_audit_key: bool = True) -> tuple[SqlRecordStore, FileBlobStore]:
    """The record store for ``options.database_url`` (``sqlite:///…`` or
    ``postgresql+psycopg://…``; anything else raises ConfigurationError) and the blob store
    under ``options.data_dir``. ``existing_only``: a database without the adapter's tables is
    not given them (NoStore, a ConfigurationError), nor is the data folder's audit.key made (the
    audit chain's key: adapter.store.audit_chain; without it the store writes no audit event).
    Nor is it without ``make_audit_key``: ``serve``'s start has the store's claim_audit_key make
    it, once nothing refuses the start (a refused start left a new audit.key in the folder). A
    store opened without the key reads it again once its trail records one (another instance
    starting beside this one made it)."""
    audit_key = read_audit_key(options.data_dir, create=make_audit_key and not existing_only)
    records = SqlRecordStore(options.database_url, existing_only=existing_only, timeouts=options.timeouts,
                             audit_key=audit_key, read_audit_key=partial(read_audit_key, options.data_dir, create=False))
    try:
        blobs = FileBlobStore(options)
    except BaseException:
        records.close()
        raise
    return records, blobs


__all__ = [
    "BlobStore", "DateCriterion", "FileBlobStore", "NamePrefix", "NoStore", "RecordStore", "SearchCriteria", "SqlRecordStore",
    "TokenCriterion", "open_store",
]
