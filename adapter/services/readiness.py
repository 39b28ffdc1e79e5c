"""Readiness: can this process take work now? What an orchestrator (a Kubernetes readinessProbe,
Docker's HEALTHCHECK, a load balancer) asks of ``GET /health/ready``, answered in the shape of
the IETF draft "Health Check Response Format for HTTP APIs" (draft-inadarei-api-health-check:
``status`` pass | warn | fail, ``checks`` by ``component:measurement``).

- ``database:responseTime``: the record store answers a read of its schema version;
- ``storage:freeSpace``: the data folder's staging folder is writable, and its free space is
  above the reserve (ADAPTER_MIN_FREE_MB); below it is a warning, not a failure: reads, consent
  changes and their audit go on, only new images are refused (HTTP 507, DIMSE 0xA700); so is
  less free space than one largest upload (ADAPTER_MAX_UPLOAD_BYTES), whatever the reserve;
- ``database:freeSpace`` (a SQLite store): the file system holding the database file has at
  least DATABASE_FLOOR_BYTES free; under it the readiness fails: every request writes there
  (each read is audited), and with the disk full every one of them failed 503 (SQLITE_FULL)
  while this answered 200 "warn" (operations review 3). PostgreSQL's files are its server's;
- ``dicom:listener``: the DICOM SCP accepts a TCP connection on its port (when it is enabled;
  it may run in another process than the HTTP worker asking).

Any ``fail`` makes the whole ``fail`` (HTTP 503); else any ``warn`` a ``warn``; both answer with
the checks, and nothing about a patient.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from adapter.errors import AdapterError, errno_name
from adapter.store.engine import sqlite_path
from adapter.store.port import BlobStore, RecordStore

PASS, WARN, FAIL = "pass", "warn", "fail"
_ORDER = {PASS: 0, WARN: 1, FAIL: 2}
_MIB = 1024 * 1024
#: Free space under which the database's file system cannot be trusted to take its writes.
#: SQLite in WAL mode appends each transaction's pages to the WAL and starts it over only at a
#: checkpoint (every 1000 pages: 4 MiB at its default page size of 4 KiB), so with less free than
#: that its next transactions, an audit event for every request, may find no room. A small
#: floor of its own, not the image reserve (ADAPTER_MIN_FREE_MB, 0 allowed): below the reserve
#: reads and consent changes go on (a warning); below this floor they fail.
DATABASE_FLOOR_BYTES = 4 * _MIB


@dataclass(frozen=True)
class Check:
    """One measurement of one component (the draft's "check object")."""

    name: str  # component:measurement
    status: str
    component_type: str
    observed_value: float | int | None = None
    observed_unit: str | None = None
    output: str | None = None  # why it is not ``pass``; never patient data


@dataclass(frozen=True)
class Component:
    """What a check measures (the draft's ``component:measurement``) and its componentType."""

    name: str
    type: str

    def check(self, status: str, observed_value: float | None = None, observed_unit: str | None = None,
              output: str | None = None) -> Check:
        return Check(self.name, status, self.type, observed_value, observed_unit, output)


DATABASE = Component("database:responseTime", "datastore")
DATABASE_ROOM = Component("database:freeSpace", "datastore")
STORAGE = Component("storage:freeSpace", "system")
DICOM_LISTENER = Component("dicom:listener", "component")


def _elapsed_ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


def check_database(store: RecordStore) -> Check:
    start = time.perf_counter()
    try:
        store.ping()
    except AdapterError as exc:
        return DATABASE.check(FAIL, _elapsed_ms(start), "ms", exc.diagnostics)
    except Exception as exc:  # noqa: BLE001 - a check reports, it does not raise
        return DATABASE.check(FAIL, _elapsed_ms(start), "ms", type(exc).__name__)
    return DATABASE.check(PASS, _elapsed_ms(start), "ms")


def database_folder(database_url: str) -> Path | None:
    """The folder of the SQLite database file (``check_database_room`` looks at its file system);
    None for PostgreSQL, whose files are its server's."""
    database_file = sqlite_path(database_url)
    return None if database_file is None else database_file.parent


def check_database_room(folder: Path, floor: int = DATABASE_FLOOR_BYTES) -> Check:
    """The free space of the file system holding the database file (its ``folder``): below
    ``floor``, fail. Free space rather than a write probe: it is one statvfs, and what SQLite's
    writes fail on; a probe row would take SQLite's one write lock at every probe (ingests wait
    on it) and grow the WAL, and a probe file beside the database would prove only that its own
    few bytes fit (and, to be true on a file system that allocates late, cost an fsync)."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return DATABASE_ROOM.check(FAIL, output="the free space of the database's folder cannot be read")
    free = st.f_bavail * st.f_frsize
    if free < floor:
        return DATABASE_ROOM.check(FAIL, free // _MIB, "MiB",
                                   f"less than {floor // _MIB} MiB free where the database is: its writes, "
                                   "and the audit event every request records, fail (make room on that disk)")
    return DATABASE_ROOM.check(PASS, free // _MIB, "MiB")


def check_storage(blobs: BlobStore, largest_upload: int = 0) -> Check:
    """The staging folder writable, and room in the data folder: below the reserve, or below one
    ``largest_upload`` (ADAPTER_MAX_UPLOAD_BYTES) whatever the reserve (with ADAPTER_MIN_FREE_MB=0
    a full disk said pass), a warning."""
    if not os.access(blobs.staging_dir, os.W_OK | os.X_OK):
        return STORAGE.check(FAIL, output="the staging folder is not writable")
    try:
        free = blobs.free_bytes()
    except OSError:
        return STORAGE.check(FAIL, output="the free space of the data folder cannot be read")
    free_mib = free // _MIB
    if free < blobs.reserve_bytes:
        return STORAGE.check(WARN, free_mib, "MiB",
                             f"below the reserve of {blobs.reserve_bytes // _MIB} MiB: new images are refused")
    if free < largest_upload:
        return STORAGE.check(WARN, free_mib, "MiB",
                             f"less free than the largest upload ({largest_upload // _MIB} MiB): an image of that "
                             "size cannot be stored")
    return STORAGE.check(PASS, free_mib, "MiB")


def staging_write_problem(staging_dir: Path) -> str | None:
    """Why no file can be made in the staging folder (the errno name of the refusal: EROFS,
    EACCES, ENOSPC...), or None when one can. ``serve`` says it at start: every upload is staged
    there first, and a folder that cannot take one otherwise shows only in this readiness
    (:func:`check_storage`) and in each upload's 503. The probe is a real file, unnamed where the
    file system allows it (O_TMPFILE), removed at once."""
    try:
        with tempfile.TemporaryFile(dir=staging_dir):
            pass
    except OSError as exc:
        return errno_name(exc) or type(exc).__name__
    return None


def _connect_address(host: str) -> str:
    """Where to reach a listener bound to ``host``: a wildcard address is reached on loopback."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def check_dicom_listener(host: str, port: int, timeout: float = 2.0) -> Check:
    """A TCP connection to the SCP, closed at once (pynetdicom drops it quietly, no association)."""
    start = time.perf_counter()
    try:
        with socket.create_connection((_connect_address(host), port), timeout=timeout):
            pass
    except OSError:
        return DICOM_LISTENER.check(FAIL, _elapsed_ms(start), "ms", "the DICOM SCP does not accept connections")
    return DICOM_LISTENER.check(PASS, _elapsed_ms(start), "ms")


def overall(checks: Sequence[Check]) -> str:
    return max((c.status for c in checks), key=_ORDER.__getitem__, default=PASS)


def health_document(checks: Sequence[Check], *, version: str, now: Callable[[], datetime]) -> dict[str, Any]:
    """The application/health+json body."""
    at = now().isoformat().replace("+00:00", "Z")
    body: dict[str, Any] = {"status": overall(checks), "version": version, "checks": {}}
    for check in checks:
        item: dict[str, Any] = {"componentType": check.component_type, "status": check.status, "time": at}
        if check.observed_value is not None:
            item["observedValue"] = check.observed_value
            item["observedUnit"] = check.observed_unit
        if check.output:
            item["output"] = check.output
        body["checks"].setdefault(check.name, []).append(item)
    return body
