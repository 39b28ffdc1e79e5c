"""Removal of unreferenced blobs (adapter.services.unreferenced), on a real SQLite file and the
real PostgreSQL, with real files: what a failed ingest leaves (a photo, a transaction Bundle, a
C-STORE and a STOW-RS object) goes once the grace period has passed and not before; referenced
blobs never go; and each race the protocol relies on is played out by injecting the concurrent
commit between its steps."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapter.config import StoreOptions
from adapter.errors import StorageError
from adapter.services.registry import Services
from adapter.services.unreferenced import DEFAULT_GRACE_SECONDS, remove_unreferenced
from adapter.services.verify import verify_store
from adapter.store import FileBlobStore, SqlRecordStore
from tests.conftest import ROOT
from tests.integration.test_dicomweb import stow
from tests.integration.test_store_contract import make_dicom_unit, make_instance, make_unit
from tests.support.app import PATIENT, metadata, pacs_client, post_photo
from tests.support.audit import TEST_AUDIT_KEY
from tests.support.dicom_files import jpeg, pynet_store, sc_file
from tests.support.fhir_factories import transaction_bundle
from tests.support.postgres import postgres_schema

pytestmark = pytest.mark.integration

DAY = 24 * 3600


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'adapter.db'}"
        return
    with postgres_schema("test_unref") as url:
        yield url


@pytest.fixture
def stores(database_url: str, tmp_path: Path) -> Iterator[tuple[SqlRecordStore, FileBlobStore]]:
    (tmp_path / "data").mkdir(exist_ok=True)
    records = SqlRecordStore(database_url, audit_key=TEST_AUDIT_KEY)
    yield records, FileBlobStore(StoreOptions(database_url=database_url, data_dir=tmp_path / "data"))
    records.close()


def blob_files(data: Path) -> set[str]:
    return {p.name for p in (data / "blobs").rglob("*") if p.is_file()}


def age_all(data: Path, seconds: float) -> None:
    """Every blob committed ``seconds`` ago (its mtime)."""
    then = time.time() - seconds
    for path in (data / "blobs").rglob("*"):
        if path.is_file():
            os.utime(path, (then, then))


def commit_bytes(blobs: FileBlobStore, content: bytes) -> str:
    """Commit ``content``, padded to 4 KiB (make_unit's Binary is a range of it), as an ingest does."""
    content = content.ljust(4096, b".")
    staged = blobs.new_staging_path()
    staged.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    blobs.commit(staged, sha)
    return sha


def fail_transactions(services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """The database fails every ingest's transaction (after the blobs were committed)."""
    def broken(unit: Any) -> None:
        raise StorageError("the record store failed; nothing was saved")
    monkeypatch.setattr(services.store, "save_ingest", broken)


# -- what failed ingests leave ------------------------------------------------------------------


def _post_photo(client: Any, tmp_path: Path) -> Any:
    return post_photo(client, ROOT / "samples" / "wound.jpg", metadata())


def _post_bundle(client: Any, tmp_path: Path) -> Any:
    bundle = transaction_bundle(jpeg(80, 60, 90))
    return client.post("/fhir", content=json.dumps(bundle), headers={"Content-Type": "application/fhir+json"})


def _stow(client: Any, tmp_path: Path) -> Any:
    sc_file(tmp_path / "stow.dcm", frame=jpeg(70, 50, 120))
    return stow(client, (tmp_path / "stow.dcm").read_bytes())


@pytest.mark.parametrize("send", [_post_photo, _post_bundle, _stow], ids=["photo", "bundle", "stow-rs"])
def test_what_a_failed_ingest_leaves_is_removed_after_the_grace_period_and_not_before(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        send: Any) -> None:
    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    with pacs_client(tmp_path, database_url=database_url) as (client, services):
        stored = post_photo(client, ROOT / "samples" / "lesion.png", metadata(), content_type="image/png")
        assert stored.status_code == 201, stored.text
        kept = blob_files(data)
        with monkeypatch.context() as patch:
            fail_transactions(services, patch)
            failed = send(client, tmp_path)
        assert failed.status_code in (409, 503), failed.text  # STOW-RS: 409, none stored
        assert list((data / "staging").iterdir()) == []  # nothing staged is left behind
        orphans = blob_files(data) - kept
        assert orphans  # the image (and a DICOM object as received) committed before the transaction
        assert verify_store(services.store, services.blobs).unreferenced == len(orphans)

        early = remove_unreferenced(services.store, services.blobs)
        assert (early.removed, early.aged) == (0, 0) and blob_files(data) == kept | orphans
        age_all(data, DEFAULT_GRACE_SECONDS - 600)  # not quite old enough
        assert remove_unreferenced(services.store, services.blobs).removed == 0

        age_all(data, DEFAULT_GRACE_SECONDS + 600)  # everything, the referenced photo's too
        done = remove_unreferenced(services.store, services.blobs)
        assert done.removed == len(orphans) and done.aged == len(kept | orphans) and done.removed_bytes > 0
        assert blob_files(data) == kept
        sound = verify_store(services.store, services.blobs, digests=True)
        assert sound.ok and sound.unreferenced == 0
        assert client.get(f"/fhir/{stored.json()['binary']}", headers={"X-Purpose-Of-Use": "TREAT",
                                                                        "Accept": "image/png"}).status_code == 200
    assert "removed" in caplog.text and PATIENT["value"] not in caplog.text


@pytest.mark.usefixtures("pynetdicom_config")
def test_what_a_failed_c_store_leaves_is_removed_after_the_grace_period(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from adapter.dicom import AeOptions, StoreSCP
    from adapter.dicom.status import SUCCESS

    caplog.set_level(logging.DEBUG)
    data = tmp_path / "data"
    with pacs_client(tmp_path, database_url=database_url) as (_client, services):
        scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",)), services.dicom_ingest)
        scp.start()
        try:
            sc_file(tmp_path / "sc.dcm", frame=jpeg(64, 48, 10))
            with monkeypatch.context() as patch:
                fail_transactions(services, patch)
                assert pynet_store(scp.port, tmp_path / "sc.dcm").Status != SUCCESS
            sc_file(tmp_path / "ok.dcm", frame=jpeg(64, 48, 200))
            assert pynet_store(scp.port, tmp_path / "ok.dcm").Status == SUCCESS
        finally:
            scp.stop()
        assert [p for p in (data / "staging").iterdir() if p.is_file()] == []
        assert verify_store(services.store, services.blobs).unreferenced == 1  # the first object as received
        assert remove_unreferenced(services.store, services.blobs).removed == 0
        age_all(data, 2 * DAY)
        assert remove_unreferenced(services.store, services.blobs).removed == 1
        sound = verify_store(services.store, services.blobs, digests=True)
        assert sound.ok and sound.unreferenced == 0 and sound.blobs == 1
    assert PATIENT["value"] not in caplog.text


def test_a_key_used_concurrently_for_another_photo_leaves_an_orphan_that_is_removed(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two photos sent at once with one Idempotency-Key: the second passes the key's lookup
    before the first commits (played here by hiding the first's receipt from that lookup),
    commits its image, then loses in the database (422): its image is an orphan."""
    data = tmp_path / "data"
    with pacs_client(tmp_path, database_url=database_url) as (client, services):
        first = post_photo(client, ROOT / "samples" / "wound.jpg", metadata(), headers={"Idempotency-Key": "k1"})
        assert first.status_code == 201, first.text
        real = services.store.find_keyed_receipt
        calls: list[str] = []

        def concurrent(key: str) -> Any:
            calls.append(key)
            return None if len(calls) == 1 else real(key)

        monkeypatch.setattr(services.store, "find_keyed_receipt", concurrent)
        second = post_photo(client, ROOT / "samples" / "lesion.png", metadata(), content_type="image/png",
                            headers={"Idempotency-Key": "k1"})
        monkeypatch.undo()
        assert second.status_code == 422, second.text
        assert verify_store(services.store, services.blobs).unreferenced == 1
        age_all(data, 2 * DAY)
        assert remove_unreferenced(services.store, services.blobs).removed == 1
        assert blob_files(data) == {first.json()["sha256"]["stored"]}


# -- the protocol, on the store ----------------------------------------------------------------


def test_referenced_blobs_are_never_removed(stores: tuple[SqlRecordStore, FileBlobStore], tmp_path: Path) -> None:
    records, blobs = stores
    photo_sha = commit_bytes(blobs, b"a photo")
    object_sha = commit_bytes(blobs, b"a DICOM object as received, referred to by the instance only")
    photo = make_unit(sha=photo_sha)
    received = make_dicom_unit(make_instance(blob_sha256=object_sha))
    for unit in (photo, received):
        records.save_ingest(unit)
    orphans = {commit_bytes(blobs, f"orphan {n}".encode()) for n in range(5)}
    age_all(tmp_path / "data", 30 * DAY)
    done = remove_unreferenced(records, blobs, batch=2)  # several batches
    assert (done.removed, done.aged) == (5, 7)
    assert blob_files(tmp_path / "data") == {photo_sha, object_sha}
    assert not orphans & blob_files(tmp_path / "data")


def test_a_blob_re_committed_by_an_ingest_in_the_grace_window_survives(
        stores: tuple[SqlRecordStore, FileBlobStore], tmp_path: Path) -> None:
    """An orphan two days old is uploaded again: the commit makes it young before the new
    transaction, so a removal meanwhile keeps it, and the record then finds it."""
    records, blobs = stores
    sha = commit_bytes(blobs, b"failed once, uploaded again")
    age_all(tmp_path / "data", 2 * DAY)
    commit_bytes(blobs, b"failed once, uploaded again")  # the new ingest's blob commit ...
    assert remove_unreferenced(records, blobs).removed == 0
    records.save_ingest(make_unit(sha=sha))  # ... then its transaction
    assert verify_store(records, blobs).ok and blobs.exists(sha)


def test_a_commit_between_the_look_and_the_move_has_the_blob_put_back(
        stores: tuple[SqlRecordStore, FileBlobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 2: the ingest refreshes the blob after the removal found it old and unreferenced,
    just before the move; its transaction commits after the removal's re-check."""
    records, blobs = stores
    sha = commit_bytes(blobs, b"racing bytes")
    age_all(tmp_path / "data", 2 * DAY)
    real = blobs.quarantine

    def commit_just_before(address: str, older_than: float) -> bool:
        commit_bytes(blobs, b"racing bytes")
        return real(address, older_than)

    monkeypatch.setattr(blobs, "quarantine", commit_just_before)
    done = remove_unreferenced(records, blobs)
    monkeypatch.undo()
    assert (done.removed, done.kept) == (0, 1)
    records.save_ingest(make_unit(sha=sha))
    assert verify_store(records, blobs).ok and blobs.exists(sha)


@pytest.mark.parametrize("transaction", ["before the re-check", "after the deletion"])
def test_a_commit_after_the_move_stores_a_copy_the_removal_does_not_touch(
        stores: tuple[SqlRecordStore, FileBlobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        transaction: str) -> None:
    """Step 1: once the blob is aside, an ingest's commit of the same bytes stores them afresh;
    whether its transaction commits before the removal's re-check (the blob is then put back
    onto the copy) or after the deletion, the record finds its bytes."""
    records, blobs = stores
    sha = commit_bytes(blobs, b"bytes committed while aside")
    age_all(tmp_path / "data", 2 * DAY)
    real = blobs.quarantine
    unit = make_unit(sha=sha)

    def commit_just_after(address: str, older_than: float) -> bool:
        moved = real(address, older_than)
        assert moved and not blobs.exists(sha)
        commit_bytes(blobs, b"bytes committed while aside")
        if transaction == "before the re-check":
            records.save_ingest(unit)
        return moved

    monkeypatch.setattr(blobs, "quarantine", commit_just_after)
    done = remove_unreferenced(records, blobs)
    monkeypatch.undo()
    assert (done.removed, done.kept) == ((0, 1) if transaction == "before the re-check" else (1, 0))
    if transaction == "after the deletion":
        records.save_ingest(unit)
    assert verify_store(records, blobs, digests=True).ok and blobs.read(sha).startswith(b"bytes committed while aside")
    assert list((tmp_path / "data" / "quarantine").glob("[0-9a-f]*")) == []


def test_a_record_committed_between_the_look_and_the_re_check_keeps_its_blob(
        stores: tuple[SqlRecordStore, FileBlobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Step 3: an ingest slower than the grace period (its blob commit long past) commits its
    transaction after the removal's first look: the re-check, a read begun after the move, sees
    it and the blob is put back."""
    records, blobs = stores
    sha = commit_bytes(blobs, b"a very slow ingest")
    age_all(tmp_path / "data", 2 * DAY)
    real = records.referenced_blobs
    asked: list[int] = []

    def transaction_commits_after_first_look(addresses: Any) -> set[str]:
        found = real(addresses)
        asked.append(len(found))
        if len(asked) == 1:
            records.save_ingest(make_unit(sha=sha))
        return found

    monkeypatch.setattr(records, "referenced_blobs", transaction_commits_after_first_look)
    done = remove_unreferenced(records, blobs)
    monkeypatch.undo()
    assert asked == [0, 1] and (done.removed, done.kept) == (0, 1)
    assert verify_store(records, blobs, digests=True).ok


def test_a_removal_interrupted_by_the_database_puts_everything_back(
        stores: tuple[SqlRecordStore, FileBlobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records, blobs = stores
    orphans = {commit_bytes(blobs, f"orphan {n}".encode()) for n in range(3)}
    age_all(tmp_path / "data", 2 * DAY)
    real = records.referenced_blobs
    asked: list[int] = []

    def fails_at_the_re_check(addresses: Any) -> set[str]:
        asked.append(1)
        if len(asked) == 2:
            raise StorageError("the record store failed")
        return real(addresses)

    monkeypatch.setattr(records, "referenced_blobs", fails_at_the_re_check)
    with pytest.raises(StorageError):
        remove_unreferenced(records, blobs)
    monkeypatch.undo()
    assert blob_files(tmp_path / "data") == orphans
    assert list((tmp_path / "data" / "quarantine").glob("[0-9a-f]*")) == []


def test_a_removal_stops_at_its_limit(stores: tuple[SqlRecordStore, FileBlobStore], tmp_path: Path) -> None:
    records, blobs = stores
    for n in range(5):
        commit_bytes(blobs, f"orphan {n}".encode())
    age_all(tmp_path / "data", 2 * DAY)
    first = remove_unreferenced(records, blobs, limit=2, batch=1)
    assert (first.removed, first.limited) == (2, True) and len(blob_files(tmp_path / "data")) == 3
    rest = remove_unreferenced(records, blobs, limit=10)
    assert (rest.removed, rest.limited) == (3, False) and blob_files(tmp_path / "data") == set()
    with pytest.raises(ValueError, match="at least"):
        remove_unreferenced(records, blobs, older_than_seconds=60)


def test_one_removal_at_a_time_across_processes(stores: tuple[SqlRecordStore, FileBlobStore], tmp_path: Path) -> None:
    """Another process holds the data folder's removal lock: this removal does nothing."""
    records, blobs = stores
    commit_bytes(blobs, b"an orphan")
    age_all(tmp_path / "data", 2 * DAY)
    lock = tmp_path / "data" / "quarantine" / ".lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                                "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)"), str(lock)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        busy = remove_unreferenced(records, blobs)
        assert busy.busy and busy.removed == 0 and len(blob_files(tmp_path / "data")) == 1
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert remove_unreferenced(records, blobs).removed == 1
