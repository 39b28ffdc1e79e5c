"""The staging folder swept on a timer (adapter.services.staging_sweep): what a crash left there
(the photos as received: EXIF, GPS, serial numbers) goes once stale, uploads or none."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from adapter.config import StoreOptions
from adapter.services.staging_sweep import StagingSweep
from adapter.store.blobs import FileBlobStore
from tests.conftest import wait_until

pytestmark = pytest.mark.unit


def test_a_crashs_leftovers_are_swept_on_a_timer_without_any_new_upload(tmp_path: Path) -> None:
    """Operations review: the sweep ran only when a new upload asked for a staging path, so on a
    quiet instance a crash's leftovers stayed indefinitely. A timer sweeps them; what is fresh
    (an upload under way) stays."""
    blobs = FileBlobStore(StoreOptions(database_url="sqlite:///unused.db", data_dir=tmp_path / "data"))
    left = blobs.staging_dir / "left-by-a-crash.part"
    left.write_bytes(b"a photo as received")
    two_hours_ago = time.time() - 7200
    os.utime(left, (two_hours_ago, two_hours_ago))
    under_way = blobs.staging_dir / "under-way.part"
    under_way.write_bytes(b"an upload arriving")
    sweep = StagingSweep(blobs, interval=0.05)
    sweep.start()
    try:
        wait_until(lambda: not left.exists(), timeout=5)
        assert under_way.exists()
    finally:
        sweep.stop()
    assert not sweep.running


def test_a_failing_sweep_tries_again_at_the_next_round(tmp_path: Path) -> None:
    blobs = FileBlobStore(StoreOptions(database_url="sqlite:///unused.db", data_dir=tmp_path / "data"))
    staging = blobs.staging_dir
    staging.rmdir()
    staging.write_bytes(b"")  # listing it fails (ENOTDIR)
    sweep = StagingSweep(blobs, interval=0.05)
    sweep.start()
    try:
        time.sleep(0.2)
        assert sweep.running
        staging.unlink()
        staging.mkdir()
        left = staging / "left.part"
        left.write_bytes(b"x")
        os.utime(left, (time.time() - 7200,) * 2)
        wait_until(lambda: not left.exists(), timeout=5)
    finally:
        sweep.stop()
