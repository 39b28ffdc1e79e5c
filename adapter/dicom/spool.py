"""The spool file a C-STORE data set is written to as it arrives, bounded in size."""

from __future__ import annotations

from typing import Any


class BoundedSpool:
    """The spool file of one C-STORE data set, taking at most ``limit`` bytes: past that the
    rest is read from the peer and dropped as it arrives, nothing more reaches the disk, and
    :attr:`overflowed` tells the C-STORE handler to refuse the object (Out of Resources) once it
    has all been sent. A peer sending an object without end (a loop, a 10 GB file) cannot fill
    the data folder, and the association goes on. Everything else is the file's."""

    def __init__(self, file: Any, limit: int) -> None:
        self._file = file
        self.limit = limit
        self.written = 0
        self.overflowed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        if not self.overflowed:
            if self.written + size > self.limit:
                self.overflowed = True
            else:
                self._file.write(data)
                self.written += size
        return size

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)
