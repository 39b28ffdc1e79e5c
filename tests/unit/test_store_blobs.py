"""FileBlobStore: content addresses, durable commits, idempotency, staging hygiene."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import pytest

from adapter.config import StoreOptions
from adapter.errors import InsufficientStorage, InvalidInput, MissingImage, StorageError
from adapter.store import blobs as blobs_module
from adapter.store.blobs import FileBlobStore

pytestmark = pytest.mark.unit


def make_store(tmp_path: Path, *, min_free_bytes: int = 0) -> FileBlobStore:
    return FileBlobStore(StoreOptions(database_url="sqlite:///unused.db", data_dir=tmp_path / "data",
                                      min_free_bytes=min_free_bytes))


def free_here(tmp_path: Path) -> int:
    st = os.statvfs(tmp_path)
    return st.f_bavail * st.f_frsize


def stage(store: FileBlobStore, content: bytes) -> tuple[Path, str]:
    path = store.new_staging_path()
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def test_folders_are_created(tmp_path: Path) -> None:
    make_store(tmp_path)
    assert (tmp_path / "data" / "blobs").is_dir()
    assert (tmp_path / "data" / "staging").is_dir()


def test_staging_paths_are_fresh_and_inside_staging(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    a, b = store.new_staging_path(), store.new_staging_path()
    assert a != b
    assert a.parent == b.parent == (tmp_path / "data" / "staging").resolve()


def test_commit_moves_the_bytes_to_their_content_address(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    staged, sha = stage(store, b"jpeg bytes")
    final = store.commit(staged, sha)
    assert final == (tmp_path / "data" / "blobs" / sha[:2] / sha[2:4] / sha).resolve()
    assert final.read_bytes() == b"jpeg bytes"
    assert not staged.exists()
    assert store.exists(sha)
    assert store.path(sha) == final


def test_read_gives_the_blob_or_a_range_of_it(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    staged, sha = stage(store, b"DICM header|frame bytes|tail")
    store.commit(staged, sha)
    assert store.read(sha) == b"DICM header|frame bytes|tail"
    assert store.read(sha, (12, 11)) == b"frame bytes"
    with pytest.raises(StorageError):  # a range past the end: the record and the blob disagree
        store.read(sha, (12, 100))
    with pytest.raises(MissingImage):  # a record's image missing from the data folder: a fault, not a 404
        store.read("0" * 64)


def test_commit_is_idempotent(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    staged, sha = stage(store, b"same")
    final = store.commit(staged, sha)
    again, _ = stage(store, b"same")
    assert store.commit(again, sha) == final
    assert not again.exists()
    assert store.commit(staged, sha) == final  # already moved: still fine
    assert final.read_bytes() == b"same"
    assert list((tmp_path / "data" / "staging").iterdir()) == []


def test_commit_fsyncs_file_before_rename_and_folders_after(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = make_store(tmp_path)
    events: list[tuple[str, Path]] = []
    real_file, real_dir, real_replace = blobs_module._fsync_file, blobs_module._fsync_dir, os.replace

    def fsync_file(path: Path) -> None:
        events.append(("fsync", Path(path)))
        real_file(path)

    def fsync_dir(path: Path) -> None:
        events.append(("fsync-dir", Path(path)))
        real_dir(path)

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        events.append(("replace", Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(blobs_module, "_fsync_file", fsync_file)
    monkeypatch.setattr(blobs_module, "_fsync_dir", fsync_dir)
    monkeypatch.setattr(blobs_module.os, "replace", replace)
    staged, sha = stage(store, b"durable")
    final = store.commit(staged, sha)
    blob_root = (tmp_path / "data" / "blobs").resolve()
    assert events == [
        ("fsync", staged),
        ("replace", final),
        ("fsync-dir", final.parent),
        ("fsync-dir", blob_root / sha[:2]),     # new shard folder sha[2:4]
        ("fsync-dir", blob_root),               # new shard folder sha[:2]
        ("fsync-dir", staged.parent),
    ]


def test_a_commit_finding_its_blob_in_place_makes_the_folder_entries_durable(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A blob found at its address may have been renamed there by a concurrent commit of the
    same bytes that has not fsynced the folders yet; this commit's record must not refer to it
    before they are (a power cut would leave the record without its image). It returned at once."""
    store = make_store(tmp_path)
    staged, sha = stage(store, b"same bytes")
    final = store.commit(staged, sha)
    synced: list[Path] = []
    monkeypatch.setattr(blobs_module, "_fsync_dir", lambda path: synced.append(Path(path)))
    again, _ = stage(store, b"same bytes")
    assert store.commit(again, sha) == final
    blob_root = (tmp_path / "data" / "blobs").resolve()
    assert synced == [final.parent, blob_root / sha[:2], blob_root]


def test_discard(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    staged, _ = stage(store, b"aborted upload")
    store.discard(staged)
    assert not staged.exists()
    store.discard(staged)  # absent: no error
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("keep")
    with pytest.raises(ValueError):
        store.discard(outside)
    assert outside.exists()


def test_missing_and_malformed_addresses(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(MissingImage):
        store.path("0" * 64)
    assert not store.exists("0" * 64)
    for bad in ("../../etc/passwd", "A" * 64, "0" * 63, ""):
        assert not store.exists(bad)
        with pytest.raises(MissingImage):
            store.path(bad)
    staged, _ = stage(store, b"x")
    with pytest.raises(InvalidInput):
        store.commit(staged, "../" + "0" * 61)
    assert staged.exists()


def test_commit_of_a_missing_staged_file_fails(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    with pytest.raises(StorageError):
        store.commit(store.new_staging_path(), "1" * 64)
    assert not store.exists("1" * 64)


def test_stale_staged_files_are_removed_on_start(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    stale, _ = stage(store, b"old")
    fresh, _ = stage(store, b"new")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    make_store(tmp_path)
    assert not stale.exists()
    assert fresh.exists()


def test_staged_files_a_crash_left_are_removed_while_the_store_runs(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash's leftover (patient data) is fresh when the adapter restarts at once, so the sweep
    at start keeps it; a store that runs on removes it once it is stale, not at some later start."""
    left, _ = stage(make_store(tmp_path), b"a crash left this")  # the store before the crash
    store = make_store(tmp_path)  # restarted at once: the leftover is not stale yet
    assert left.exists()
    two_hours_ago = time.time() - 7200  # two hours on
    os.utime(left, (two_hours_ago, two_hours_ago))
    in_use = store.new_staging_path()
    in_use.write_bytes(b"an upload arriving")
    later = time.monotonic() + 7200
    monkeypatch.setattr(blobs_module.time, "monotonic", lambda: later)
    store.new_staging_path()
    assert not left.exists()
    assert in_use.exists()


MIB = 1024 * 1024


def test_free_space_is_what_statvfs_says_is_available(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    assert abs(store.free_bytes() - free_here(tmp_path)) < 64 * MIB  # the rest of the machine writes too
    assert store.reserve_bytes == 0
    store.ensure_room(0)  # no reserve: nothing is kept back
    store.ensure_room(MIB)
    # ... but bytes that cannot fit at all are refused before their write fails half-way (ENOSPC,
    # which answers the same 507 no-store: adapter.errors.staging_failure)
    with pytest.raises(InsufficientStorage):
        store.ensure_room(10**18)


def test_ensure_room_counts_the_incoming_bytes_against_the_reserve(tmp_path: Path) -> None:
    reserve = max(MIB, free_here(tmp_path) - 512 * MIB)  # ~512 MiB above the reserve now
    store = make_store(tmp_path, min_free_bytes=reserve)
    assert store.reserve_bytes == reserve
    store.ensure_room(0)
    store.ensure_room(MIB)
    with pytest.raises(InsufficientStorage) as refused:
        store.ensure_room(2048 * MIB)
    assert refused.value.issue_type == "no-store"
    assert "ADAPTER_MIN_FREE_MB" in refused.value.diagnostics


def test_commit_of_new_bytes_below_the_reserve_is_refused_and_leaves_them_staged(tmp_path: Path) -> None:
    """The caller discards what it staged (every ingest does); the bytes never reach an address."""
    store = make_store(tmp_path, min_free_bytes=free_here(tmp_path) + 1024 * MIB)
    staged, sha = stage(store, b"new photo bytes")
    with pytest.raises(InsufficientStorage):
        store.commit(staged, sha)
    assert not store.exists(sha)
    assert staged.exists()
    store.discard(staged)


def test_bytes_stored_before_are_committed_below_the_reserve(tmp_path: Path) -> None:
    """A retry of a stored photo takes no new space, and gets its receipt rather than a refusal."""
    roomy = make_store(tmp_path)
    staged, sha = stage(roomy, b"stored while there was room")
    roomy.commit(staged, sha)
    full = make_store(tmp_path, min_free_bytes=free_here(tmp_path) + 1024 * MIB)
    again, _ = stage(full, b"stored while there was room")
    assert full.commit(again, sha) == roomy.path(sha)
    assert not again.exists()


# -- ageing and the removal primitives (the protocol: adapter.services.unreferenced) ---------------

DAY = 24 * 3600


def age(path: Path, seconds: float) -> None:
    """Set a file's mtime ``seconds`` back, as if committed that long ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_commit_of_stored_bytes_makes_the_blob_young_again(tmp_path: Path) -> None:
    """A re-upload of old bytes refreshes their blob before its transaction: the removal of
    unreferenced blobs leaves it alone for a grace period."""
    store = make_store(tmp_path)
    staged, sha = stage(store, b"old bytes")
    final = store.commit(staged, sha)
    age(final, 2 * DAY)
    again, _ = stage(store, b"old bytes")
    store.commit(again, sha)
    assert time.time() - final.stat().st_mtime < 60
    assert not again.exists()


def test_a_new_blob_arrives_young_however_old_its_staged_file(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    staged, sha = stage(store, b"written a while ago")
    age(staged, 2 * DAY)
    assert time.time() - store.commit(staged, sha).stat().st_mtime < 60


def test_iter_aged_names_only_blobs_older_than_the_cutoff(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    old = [store.commit(*stage(store, f"old {n}".encode())) for n in range(3)]
    young = store.commit(*stage(store, b"young"))
    for path in old:
        age(path, 2 * DAY)
    assert sorted(store.iter_aged(time.time() - DAY)) == sorted(p.name for p in old)
    assert young.name in set(store.iter_aged(time.time() + 60))


def test_quarantine_moves_an_old_blob_aside_and_leaves_a_young_one(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    old, young = store.commit(*stage(store, b"old")), store.commit(*stage(store, b"young"))
    age(old, 2 * DAY)
    cutoff = time.time() - DAY
    assert store.quarantine(old.name, cutoff)
    assert not old.exists() and not store.exists(old.name)
    assert (tmp_path / "data" / "quarantine" / old.name).read_bytes() == b"old"
    assert not store.quarantine(young.name, cutoff) and young.exists()
    assert not store.quarantine("0" * 64, cutoff)  # nothing there
    assert store.remove_quarantined(old.name) == 3
    assert not (tmp_path / "data" / "quarantine" / old.name).exists()
    assert store.remove_quarantined(old.name) == 0


def test_a_commit_refreshing_the_blob_before_the_move_has_it_put_back(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The race of step 2: a commit of the same bytes makes the blob young between the removal's
    look at its mtime and the move; the moved file is found young and put back."""
    store = make_store(tmp_path)
    staged, sha = stage(store, b"re-uploaded")
    final = store.commit(staged, sha)
    age(final, 2 * DAY)
    real_replace = os.replace

    def commit_first(source: Any, target: Any) -> None:
        if Path(source) == final:  # the move: a concurrent ingest commits just before it
            store.commit(*stage(store, b"re-uploaded"))
        real_replace(source, target)

    monkeypatch.setattr(blobs_module.os, "replace", commit_first)
    assert not store.quarantine(sha, time.time() - DAY)
    monkeypatch.undo()
    assert final.read_bytes() == b"re-uploaded" and time.time() - final.stat().st_mtime < 60
    assert list((tmp_path / "data" / "quarantine").glob("[0-9a-f]*")) == []


def test_a_commit_after_the_move_stores_its_own_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commit found the blob, but the removal moved it before its refresh: the commit stores
    the staged bytes under the address, and deleting the moved file leaves them."""
    store = make_store(tmp_path)
    staged, sha = stage(store, b"shared bytes")
    final = store.commit(staged, sha)
    age(final, 2 * DAY)
    real_refresh = blobs_module._refresh

    def moved_first(target: Path) -> bool:
        assert store.quarantine(sha, time.time() - DAY)
        return real_refresh(target)

    monkeypatch.setattr(blobs_module, "_refresh", moved_first)
    again, _ = stage(store, b"shared bytes")
    assert store.commit(again, sha) == final
    monkeypatch.undo()
    assert store.remove_quarantined(sha) == len(b"shared bytes")
    assert final.read_bytes() == b"shared bytes" and time.time() - final.stat().st_mtime < 60


def test_restore_puts_a_blob_back_young_or_keeps_a_copy_committed_meanwhile(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    final = store.commit(*stage(store, b"aside"))
    age(final, 2 * DAY)
    assert store.quarantine(final.name, time.time() - DAY)
    store.restore(final.name)
    assert final.read_bytes() == b"aside" and time.time() - final.stat().st_mtime < 60
    assert not (tmp_path / "data" / "quarantine" / final.name).exists()
    age(final, 2 * DAY)
    assert store.quarantine(final.name, time.time() - DAY)
    store.commit(*stage(store, b"aside"))  # the same bytes committed while it is aside
    store.restore(final.name)
    assert final.read_bytes() == b"aside"
    assert not (tmp_path / "data" / "quarantine" / final.name).exists()


def test_what_an_interrupted_removal_left_aside_is_put_back_when_the_store_opens(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    final = store.commit(*stage(store, b"left aside by a crash"))
    age(final, 2 * DAY)
    assert store.quarantine(final.name, time.time() - DAY)
    reopened = make_store(tmp_path)  # a process starting (or verify) opens the store
    assert reopened.exists(final.name) and final.read_bytes() == b"left aside by a crash"
    assert reopened.restore_quarantined() == 0


def test_the_removal_lock_is_held_by_one_at_a_time(tmp_path: Path) -> None:
    """flock: two opens (here two stores of one process, as two processes would) exclude each other."""
    first, second = make_store(tmp_path), make_store(tmp_path)
    with first.removal_lock() as held:
        assert held
        with second.removal_lock() as also:
            assert not also
        final = second.commit(*stage(second, b"aside while locked"))
        age(final, 2 * DAY)
        assert first.quarantine(final.name, time.time() - DAY)
        make_store(tmp_path)  # opening while a removal runs leaves what it holds alone
        assert not final.exists()
        first.restore(final.name)
    with second.removal_lock() as held:
        assert held
