"""A data folder on a disk that fills, against the server process over real HTTP: the data folder
is a small tmpfs of its own (tests.support.small_disk) filled with a file, so statvfs, ENOSPC and
SQLite's SQLITE_FULL are the kernel's own. Found by the operations review (findings 3 and 4).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.config import StoreOptions
from adapter.store import open_store
from tests.conftest import record_emitted
from tests.support.app import PATIENT, metadata
from tests.support.audit import caller_request_ids
from tests.support.server import RunningAdapter, running_adapter
from tests.support.small_disk import MIB, fill, free_bytes, small_disk

TREAT = {"X-Purpose-Of-Use": "TREAT"}


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "small", 40) as mounted:
        yield mounted


def serve(tmp_path: Path, disk: Path, min_free_mb: int) -> Any:
    return running_adapter(tmp_path, ADAPTER_DATA_DIR=str(disk / "data"), ADAPTER_MIN_FREE_MB=str(min_free_mb),
                           ADAPTER_DICOM_ENABLED="false", ADAPTER_MAX_UPLOAD_BYTES=str(16 * MIB))


def audit_trail(data: Path) -> list[dict[str, Any]]:
    """The server's AuditEvents, oldest first, read from its SQLite file."""
    store, _ = open_store(StoreOptions(database_url=f"sqlite:///{data / 'adapter.db'}", data_dir=data))
    try:
        events = store.list_audit(10_000)[::-1]
    finally:
        store.close()
    record_emitted(events)
    return events


def photo_body(size: int, boundary: str) -> tuple[bytes, bytes]:
    """The head and tail of a multipart photo upload whose file part is ``size`` bytes (between them)."""
    import json

    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n"
            "Content-Type: application/json\r\n\r\n").encode() + json.dumps(metadata()).encode() + (
        f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n").encode()
    return head, f"\r\n--{boundary}--\r\n".encode()


def staged(data: Path) -> list[Path]:
    return [p for p in (data / "staging").iterdir() if p.is_file()]


def ready(server: RunningAdapter) -> httpx.Response:
    return httpx.get(f"{server.url}/health/ready", timeout=10)


def assert_failed_create_audited(events: list[dict[str, Any]], request_id: str) -> dict[str, Any]:
    """One AuditEvent of the request: a create that failed (outcome 8), naming no record."""
    [event] = [e for e in events if caller_request_ids(e) == [request_id]]
    assert (event["subtype"][0]["code"], event["action"], event["outcome"]) == ("create", "C", "8"), event
    assert not [e for e in event["entity"] if "reference" in e["what"]]
    return event


def test_readiness_fails_when_the_data_folder_has_no_room_for_the_databases_writes(
        tmp_path: Path, disk: Path) -> None:
    """Finding 3: with the disk full, every read failed 503 (its audit event: SQLITE_FULL), and
    /health/ready said 200 "warn", so a load balancer kept sending it work. Below the reserve
    and above the database's floor it still warns (reads go on); out of room it fails, saying why."""
    with serve(tmp_path, disk, min_free_mb=10) as server:
        assert ready(server).status_code == 200
        filler = fill(disk / "filler", leave_bytes=8 * MIB)  # below the reserve of 10 MiB
        r = ready(server)
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "warn" and r.json()["checks"]["storage:freeSpace"][0]["status"] == "warn"
        # the premise: reads still work and are audited
        found = httpx.get(f"{server.url}/fhir/Media", params={"patient:identifier": f"{PATIENT['system']}|"
                                                              f"{PATIENT['value']}"}, headers=TREAT, timeout=10)
        assert found.status_code == 200, found.text

        fill(disk / "filler2")  # no room left at all
        assert free_bytes(disk) == 0
        r = ready(server)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "fail"
        [check] = body["checks"]["database:freeSpace"]
        assert check["status"] == "fail" and check["observedUnit"] == "MiB" and check["observedValue"] == 0, check
        assert "database" in check["output"] and "audit" in check["output"], check

        (disk / "filler2").unlink()
        filler.unlink()
        assert ready(server).status_code == 200


def test_a_photo_declared_larger_than_the_room_above_the_reserve_is_refused_507_before_it_is_staged(
        tmp_path: Path, disk: Path) -> None:
    """Finding 4: the reserve was checked only at the commit, after the photo was staged (twice
    its size: as received, then stripped), so a disk short of room answered 503 "transient" and
    the capture app retried for ever. A Content-Length that cannot be staged above the reserve is
    refused 507 no-store before a byte of the body is written, audited as the reserve's refusals."""
    data = disk / "data"
    with serve(tmp_path, disk, min_free_mb=4) as server:
        fill(disk / "filler", leave_bytes=16 * MIB)  # room for 12 MiB above the reserve; 10 MiB staged twice is 20
        boundary = uuid.uuid4().hex
        head, tail = photo_body(10 * MIB, boundary)
        body = head + b"\xff\xd8\xff\xe0" + os.urandom(10 * MIB - 4) + tail
        r = httpx.post(f"{server.url}/photos", content=body, timeout=30,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                "X-Request-Id": "declared-507"})
        assert r.status_code == 507, r.text
        issue = r.json()["issue"][0]
        assert issue["code"] == "no-store", issue
        assert "ADAPTER_MIN_FREE_MB" in issue["diagnostics"], issue
        assert r.headers["cache-control"] == "no-store"
        assert staged(data) == []
        assert_failed_create_audited(audit_trail(data), "declared-507")


def test_no_room_while_a_photo_is_staged_is_507_no_store_and_leaves_nothing(tmp_path: Path, disk: Path) -> None:
    """Finding 4: ENOSPC while the upload was written to the staging folder answered 503
    "transient". It is the reserve's answer, 507 no-store (send it again later will not help
    until room is made), audited alike; nothing is left in the staging folder. The upload is
    chunked (no Content-Length to check before), so the disk runs out as it is written."""
    data = disk / "data"
    with serve(tmp_path, disk, min_free_mb=0) as server:
        fill(disk / "filler", leave_bytes=4 * MIB)
        boundary = uuid.uuid4().hex
        head, tail = photo_body(9 * MIB, boundary)

        def chunks() -> Iterator[bytes]:
            yield head + b"\xff\xd8\xff\xe0"
            for _ in range(9):
                yield os.urandom(MIB)
            yield tail

        r = httpx.post(f"{server.url}/photos", content=chunks(), timeout=30,
                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}",
                                "X-Request-Id": "enospc-507"})
        assert r.status_code == 507, r.text
        issue = r.json()["issue"][0]
        assert issue["code"] == "no-store", issue
        assert "room" in issue["diagnostics"], issue
        assert staged(data) == []
        event = assert_failed_create_audited(audit_trail(data), "enospc-507")
        assert "room" in event["outcomeDesc"]
        assert "request failed: InsufficientStorage (ENOSPC)" in server.log.read_text()
