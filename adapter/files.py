"""Plain file reads shared by the blob store and the DICOM ingest (the received object is a file,
not yet a blob)."""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path


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
