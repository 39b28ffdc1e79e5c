"""Plain file reads shared by the blob store and the DICOM ingest (the received object is a file,
not yet a blob), and the kernel's writeback of a file being received (the SCP's spool)."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import sys
from collections.abc import Callable
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
