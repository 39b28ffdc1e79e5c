"""Plain file reads shared by the blob store and the DICOM ingest (the received object is a file,
not yet a blob), the kernel's writeback of a file being received (the SCP's spool), and the small
files the data folder keeps once made (the pseudonym key, the folder's identity)."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import mmap
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, in one call over its mapping: the GIL is released once for the whole
    file (hashlib.file_digest takes it back after every 256 KiB, and then waits for whichever
    thread holds it). Raises OSError when it cannot be read."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return hashlib.sha256().hexdigest()
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return hashlib.sha256(mapped).hexdigest()


def read_range(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes of the file at ``path`` from ``offset``, in one pread. Raises EOFError
    when the file ends before them, OSError when it cannot be read."""
    with open(path, "rb") as fh:
        data = os.pread(fh.fileno(), length, offset)
    if len(data) != length:
        raise EOFError(f"{len(data)} of {length} bytes")
    return data


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) from the C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        # the symbols the process has loaded already, the C library's among them (find_library
        # would run ldconfig in a subprocess)
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", function)


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages, do not wait


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of the file from ``offset`` to the disk,
    without waiting (Linux's sync_file_range with SYNC_FILE_RANGE_WRITE; nothing elsewhere).
    No durability promise: that stays the fsync's, which then finds less left to write. Unlike
    an early fdatasync it commits no journal transaction and flushes no disk cache."""
    if _SYNC_FILE_RANGE is not None and length > 0:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # a failure costs only the head start


def publish_once(path: Path, text: str) -> bool:
    """Make the file ``path`` holding ``text`` unless it exists; True when this call made it.

    Several processes (HTTP workers, instances sharing the folder) may start at once: each writes
    a candidate beside it (``.<name>.<pid>.<hex>``, 0600, synced) and publishes it with ``link``,
    which fails if ``path`` exists; so the file appears complete or not at all, and a loser reads
    the winner's. Raises OSError when it cannot be written."""
    candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(candidate, path)
        except FileExistsError:
            return False  # another process published its own first: that one is the file
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True
    finally:
        candidate.unlink(missing_ok=True)


def remove_abandoned_candidates(path: Path) -> None:
    """Remove the candidates of :func:`publish_once` for ``path`` (``.<name>.<pid>.<hex>``) of
    processes that are gone: a start killed while it made the file leaves its candidate (its
    ``finally`` never ran), a file never used or, killed after publishing, a second name of the
    file itself. A candidate of a live process is its own, in the middle of being published:
    left alone (a recycled pid only keeps a file, never removes one in use), and so is one younger
    than a minute (a candidate lives milliseconds; a process of another container on the same
    volume has a pid this one cannot see)."""
    for candidate in path.parent.glob(f".{path.name}.*.*"):
        pid = candidate.name[len(path.name) + 2:].split(".")[0]
        try:
            young = time.time() - candidate.stat().st_mtime < 60
        except FileNotFoundError:
            continue
        if not pid.isdigit() or young:
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            candidate.unlink(missing_ok=True)
        except (PermissionError, OverflowError):
            continue  # a process of another user has that pid (alive), or no pid at all


def describe_os_error(exc: OSError) -> str:
    """An OSError as its errno's name and text (``EROFS, read-only file system``), what an operator
    looks up; its class name when it has no errno."""
    if not exc.errno:
        return type(exc).__name__
    return f"{errno.errorcode.get(exc.errno, str(exc.errno))}, {os.strerror(exc.errno).lower()}"


def unreadable_problem(path: Path, exc: OSError) -> str:
    """Why ``path`` (in the data folder, or the folder itself) cannot be read, said with its errno:
    for want of permission, that the adapter's user needs read and write access (a folder restored
    as root, its modes 700 and 600, run as the image's user, uid 10001: newcomer review 1)."""
    if isinstance(exc, PermissionError):
        return (f"{path} cannot be read by this user (uid {os.geteuid()}, EACCES): give the adapter's user read "
                "and write access to the data folder and what the adapter keeps in it (ADAPTER_DATA_DIR; a folder "
                "restored as another user: chown what was copied in to the adapter's user, 10001:10001 in the "
                "Docker image)")
    return f"{path} cannot be read ({describe_os_error(exc)})"


def folder_access_problem(folder: Path, owned: Iterable[str]) -> str | None:
    """Why this user cannot read ``folder`` or what the adapter keeps directly in it (``owned``:
    its names; each file opened for reading, each folder listed), or None when it can, or when
    ``folder`` is not there yet (a start makes it) or is no folder (the setting's own check says
    so). Checked before a command opens the store: a PermissionError met later was a traceback, or
    "audit.key cannot be read". Nothing else in the folder is opened: a volume's root-owned
    ``lost+found`` (mode 700), an NFS ``.snapshot``, are none of the adapter's (a check of every
    entry refused to start on such a volume: review codereview finding 1)."""
    try:
        if not folder.is_dir():
            return None
        with os.scandir(folder):
            pass
    except OSError as exc:
        return unreadable_problem(folder, exc)
    for path in (folder / name for name in owned):
        try:
            if path.is_dir():
                with os.scandir(path):
                    pass
            elif path.is_file():
                with path.open("rb"):
                    pass
        except FileNotFoundError:
            continue  # not made yet, or removed since (a journal file)
        except OSError as exc:
            return unreadable_problem(path, exc)
    return None


def folder_write_problem(folder: Path) -> str | None:
    """Why files cannot be made in ``folder`` (a read-only file system, or no write permission
    for this user), said with the path and the errno it gives; None when they can, or when the
    folder cannot be looked at (its own error says why)."""
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return f"{folder} is on a read-only file system (EROFS): mount it read-write"
        if not os.access(folder, os.W_OK | os.X_OK):
            return f"{folder} cannot be written by this user (EACCES): give the adapter's user write access"
    except OSError:
        return None
    return None
