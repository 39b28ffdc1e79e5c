"""Plain file reads shared by the blob store and the DICOM ingest (the received object is a file,
not yet a blob)."""

from __future__ import annotations

import os
from pathlib import Path


def read_range(path: Path, offset: int, length: int) -> bytes:
    """``length`` bytes of the file at ``path`` from ``offset``, in one pread. Raises EOFError
    when the file ends before them, OSError when it cannot be read."""
    with open(path, "rb") as fh:
        data = os.pread(fh.fileno(), length, offset)
    if len(data) != length:
        raise EOFError(f"{len(data)} of {length} bytes")
    return data
