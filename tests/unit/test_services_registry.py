"""The pseudonym key kept in the data folder (adapter.services.registry._pseudonym_key)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from adapter.config import Settings
from adapter.services.registry import _pseudonym_key


def test_a_key_candidate_left_by_a_killed_start_is_removed_at_the_next_start(tmp_path: Path) -> None:
    """A start SIGKILLed while it made the key left its candidate (0600) in the data folder for
    good: a key never used, or (killed after publishing) a second name of the key itself (found
    by the crash review). A live process's candidate is its own, in the middle of publishing."""
    finished = subprocess.Popen(["true"])  # its pid, once reaped, no process has
    finished.wait()
    dead_pid = finished.pid
    abandoned = tmp_path / f".pseudonym.key.{dead_pid}.0a1b2c3d"
    abandoned.write_text("f" * 64)
    live = tmp_path / f".pseudonym.key.{os.getpid()}.0a1b2c3d"
    live.write_text("e" * 64)
    unrelated = tmp_path / ".pseudonym.key.notapid.0a1b2c3d"
    unrelated.write_text("d" * 64)
    young = tmp_path / f".pseudonym.key.{dead_pid}.0e1f2a3b"  # another container's, being published
    young.write_text("c" * 64)
    an_hour_ago = time.time() - 3600
    for old in (abandoned, live, unrelated):
        os.utime(old, (an_hour_ago, an_hour_ago))
    key = _pseudonym_key(Settings(data_dir=tmp_path))
    assert len(key) == 64 and (tmp_path / "pseudonym.key").read_bytes().strip() == key
    assert not abandoned.exists()
    assert live.exists() and unrelated.exists() and young.exists()
    assert _pseudonym_key(Settings(data_dir=tmp_path)) == key  # kept across starts
