"""A small file system of its own (tmpfs) for a test that fills a disk: the kernel's own ENOSPC
and statvfs, not a stand-in. Mounting takes root (CAP_SYS_ADMIN), as the CI machine has; where
it is refused the test is skipped (CI: fails, tests.conftest.require_or_skip)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import require_or_skip

MIB = 1024 * 1024


@contextmanager
def small_disk(mount_point: Path, size_mib: int, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size_mib`` MiB mounted on ``mount_point`` (made) for the duration;
    ``read_only``: mounted read-only (EROFS for every write, root's too, where chmod stops no root)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    options = f"size={size_mib}m,mode=700{',ro' if read_only else ''}"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    require_or_skip(done.returncode == 0, f"cannot mount a tmpfs (root needed): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file at ``path`` until its file system has at most ``leave_bytes`` free
    (0: full, the last write answered ENOSPC); the filler's path."""
    block = b"\0" * (64 * 1024)
    with path.open("wb", buffering=0) as f:
        while True:
            room = free_bytes(path.parent) - leave_bytes
            if room <= 0 and leave_bytes:
                break
            try:
                f.write(block if leave_bytes == 0 or room >= len(block) else block[:room])
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return path
