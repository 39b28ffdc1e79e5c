"""Builds every service from Settings, once, and hands them to the edges (HTTP, DICOM)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from adapter.config import Settings
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.mapping.tables import Tables, load_tables
from adapter.model.purpose import RequestContext
from adapter.services.access import ScopedReader
from adapter.services.audit import Auditor
from adapter.services.consents import ConsentService
from adapter.services.ingest import IngestService
from adapter.services.transaction import TransactionService
from adapter.store import open_store
from adapter.store.port import BlobStore, RecordStore


def utc_now() -> datetime:
    return datetime.now(UTC)


def _pseudonym_key(settings: Settings) -> bytes:
    """The configured key, or one generated once and kept (0600) in the data dir, so
    pseudonyms stay stable across restarts."""
    if settings.pseudonym_key:
        return settings.pseudonym_key.encode("utf-8")
    path: Path = settings.data_dir / "pseudonym.key"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
            fh.flush()
            os.fsync(fh.fileno())
    return path.read_text().strip().encode("utf-8")


@dataclass
class Services:
    settings: Settings
    tables: Tables
    store: RecordStore
    blobs: BlobStore
    pseudonymizer: Pseudonymizer
    auditor: Auditor
    ingest: IngestService
    transactions: TransactionService
    consents: ConsentService
    now: Callable[[], datetime]

    def reader(self, ctx: RequestContext) -> ScopedReader:
        """A reader scoped to one request context: the only way to read records."""
        return ScopedReader(ctx, store=self.store, blobs=self.blobs, tables=self.tables,
                            pseudonymizer=self.pseudonymizer, auditor=self.auditor, now=self.now)

    def close(self) -> None:
        self.store.close()


def build_services(settings: Settings, now: Callable[[], datetime] = utc_now) -> Services:
    settings.check_safe()
    tables = load_tables(settings.resolved_mappings_dir, settings.policy)
    store, blobs = open_store(settings.store)
    auditor = Auditor(store, now)
    pseudonymizer = Pseudonymizer(_pseudonym_key(settings), tables.policy.pseudonyms.system)
    ingest = IngestService(store=store, blobs=blobs, tables=tables, auditor=auditor, now=now)
    return Services(
        settings=settings, tables=tables, store=store, blobs=blobs, pseudonymizer=pseudonymizer,
        auditor=auditor, ingest=ingest,
        transactions=TransactionService(ingest=ingest, blobs=blobs, tables=tables, now=now),
        consents=ConsentService(store=store, auditor=auditor, known_purposes=set(tables.purposes.codes), now=now),
        now=now)
