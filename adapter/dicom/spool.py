"""The spool file a C-STORE data set is written to as it arrives: bounded in size, and written
out to the disk while it arrives."""

from __future__ import annotations

import logging
from typing import Any

from adapter.errors import errno_name
from adapter.files import start_writeback

log = logging.getLogger("adapter.dicom")

#: Written bytes after which the spool asks the kernel to start writing them to the disk
#: (adapter.files.start_writeback) while the rest arrives: the fsync that makes the received
#: object durable before it is answered then has at most about this much left to write. For
#: 3 MB written in 256 KiB pieces here, that fsync took ~1.5 ms after the last byte without and
#: ~0.3 ms with 512 KiB, at ~0.2 ms of calls while writing; benchmarks/dicom.py, six alternating
#: pairs on 2026-11-27: 68.8 images/s against 64.5 without (five pairs of six faster).
WRITEBACK_BYTES = 512 * 1024


class BoundedSpool:
    """The spool file of one C-STORE data set, taking at most ``limit`` bytes (0: no limit):
    past that the rest is read from the peer and dropped as it arrives, nothing more reaches the
    disk, and :attr:`overflowed` tells the C-STORE handler to refuse the object (Out of
    Resources) once it has all been sent. A peer sending an object without end (a loop, a 10 GB
    file) cannot fill the data folder, and the association goes on.

    Every ``writeback`` bytes (:data:`WRITEBACK_BYTES`; 0: never) the kernel is asked to start
    writing what was written to the disk, without waiting, so the fsync before the answer finds
    little left to write. Everything else is the file's.

    A write the disk refuses (ENOSPC, EROFS, EIO, EDQUOT, a file size limit: any OSError) is
    the SCP's failure, not the peer's: it is logged once with its errno name, kept in
    :attr:`failed`, and from then on the rest is read and dropped as past the limit, so that the
    association stays in step and the C-STORE handler answers 0xA700 Out of Resources (PS3.4
    B.2.3) once the object has been sent. Before, the OSError ran out of the receive path and
    the association was aborted as if the peer had sent something undecodable. ``file`` None is
    a spool file that could not even be created (:func:`unopened_spool`): ``failed`` from the
    start. ``file`` must be unbuffered (every write the disk's at once), or what a buffer held
    would fail again when it is closed."""

    def __init__(self, file: Any, limit: int = 0, *, writeback: int = WRITEBACK_BYTES,
                 failed: OSError | None = None) -> None:
        self._file = file
        self.limit = limit
        self.written = 0
        self.overflowed = False
        self.failed = failed
        self._writeback = writeback
        self._written_back = 0  # the bytes before this offset were handed to start_writeback

    def write(self, data: bytes | bytearray | memoryview) -> int:
        size = len(data)
        if self.overflowed or self.failed is not None:
            return size
        if self.limit and self.written + size > self.limit:
            self.overflowed = True
            return size
        left = memoryview(data)
        try:
            while len(left):  # an unbuffered file may take part of it (a disk filling up)
                n = self._file.write(left)
                left = left[n:]
                self.written += n
        except OSError as exc:
            self._fail(exc, "written")
            return size
        if self._writeback and self.written - self._written_back >= self._writeback:
            self._start_writeback()
        return size

    def flush(self) -> None:
        if self._file is None or self.failed is not None:
            return
        try:
            self._file.flush()
        except OSError as exc:
            self._fail(exc, "written")

    def _fail(self, exc: OSError, what: str) -> None:
        self.failed = exc
        log.error("the spool file of a C-STORE data set being received could not be %s in the staging folder "
                  "(%s): the rest of the object is read and dropped, and it is refused with 0xA700 (Out of "
                  "Resources)", what, errno_name(exc) or type(exc).__name__)

    def _start_writeback(self) -> None:
        try:
            self._file.flush()  # what the file object buffers is not the kernel's yet
            start_writeback(self._file.fileno(), self._written_back, self.written - self._written_back)
        except (OSError, ValueError, AttributeError):  # not a real file, or closed: nothing to start
            self._writeback = 0
            return
        self._written_back = self.written

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


class UnopenedSpool:
    """What pynetdicom is given for the spool file of a C-STORE data set when that file could
    not be created (a read-only, full or missing staging folder): pynetdicom would raise out of
    its message decoding, and the association was aborted as if the peer's message could not be
    decoded. Writes go to a :class:`BoundedSpool` failed from the start, which drops them; the
    C-STORE handler refuses the object (0xA700). ``name`` names no file: removing it (as
    pynetdicom and :func:`adapter.dicom.handlers.discard_spooled` do) finds nothing."""

    def __init__(self, name: str, error: OSError, limit: int = 0) -> None:
        self.name = name
        self.file = BoundedSpool(None, limit, writeback=0, failed=error)
        self.closed = False
        log.error("the spool file of a C-STORE data set being received could not be created in the staging "
                  "folder (%s): the object is read and dropped, and it is refused with 0xA700 (Out of Resources)",
                  errno_name(error) or type(error).__name__)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.file.write(data)

    def flush(self) -> None:
        return None

    def tell(self) -> int:
        return self.file.written

    def close(self) -> None:
        self.closed = True
