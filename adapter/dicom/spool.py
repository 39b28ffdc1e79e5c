"""The spool file of a received C-STORE data set, looked after while it is written.

The SCP writes a data set to its spool file as the P-DATA fragments arrive
(adapter.dicom.scp ``_StreamingDUL``). Two things the ingest would otherwise do after the last
byte, on the path between the C-STORE request and its response, happen here while the sender is
still sending:

* **Digest.** The SHA-256 of the file, which is the stored object's content address, is computed
  from the very bytes written, by one hashing thread per association (hashlib releases the GIL,
  so hashing runs on the other core beside the socket reads). The receive thread hands it
  buffers from a small ring and blocks only when all of them wait to be hashed, so an
  association holds at most ``BUFFERS`` x ``BUFFER_SIZE`` bytes in memory.
* **Writeback.** Every ``WRITEBACK_EVERY`` bytes the kernel is asked to start writing the pages
  out (Linux ``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait), so the fsync
  that makes the object durable finds most of it on the disk already. Durability still comes
  only from that fsync; this is a head start, and a no-op where the call does not exist.

A digest is trusted only for a file every byte of which went through it: :meth:`SpoolDigest.result`
compares the bytes hashed with the file's size, and gives None (the ingest then hashes the file
itself) when anything else was written to it or the last fragment never came through here.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import queue
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

BUFFER_SIZE = 256 * 1024   # socket -> spool file in pieces of this size (one multi-MB write is slow)
BUFFERS = 8                # per association: at most 2 MiB received but not yet hashed
WRITEBACK_EVERY = 1 << 20  # start writing out the spool file after each MiB
_IDLE_CHECK = 1.0          # the hashing thread looks this often whether its association ended

_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``length`` bytes of ``fd`` from ``offset`` to the disk,
    without waiting (best effort: errors and platforms without the call are ignored)."""
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class SpoolDigest:
    """SHA-256 of one spool file, fed by :class:`SpoolWriter` as the file is written."""

    def __init__(self, prefix: bytes) -> None:
        self._sha = hashlib.sha256(prefix)
        self._hashed = len(prefix)
        self._closed = False          # the last fragment was written through the SpoolWriter
        self._done = threading.Event()  # ... and hashed

    def _update(self, data: memoryview) -> None:
        self._sha.update(data)
        self._hashed += len(data)

    def result(self, path: Path, timeout: float = 60.0) -> str | None:
        """The file's SHA-256 when every byte of the file at ``path`` was hashed here; None when
        not (the caller hashes the file). Call once the data set is complete."""
        if not self._closed or not self._done.wait(timeout):
            return None
        try:
            size = os.stat(path).st_size
        except OSError:
            return None
        return self._sha.hexdigest() if size == self._hashed else None


_DIGESTS: weakref.WeakKeyDictionary[Any, SpoolDigest] = weakref.WeakKeyDictionary()
_DIGESTS_LOCK = threading.Lock()


def digest_of(spool: Any) -> SpoolDigest | None:
    """The digest kept for a spool file object (pynetdicom's temporary file), if any."""
    if spool is None:
        return None
    with _DIGESTS_LOCK:
        try:
            return _DIGESTS.get(spool)
        except TypeError:  # not weakly referenceable: never one of ours
            return None


class SpoolWriter:
    """Writes an association's data set fragments to their spool files, hashing them in its own
    thread and starting their writeback (module docstring). Used by one receive thread; the
    hashing thread ends once ``alive()`` is false and nothing is left to hash."""

    def __init__(self, alive: Callable[[], bool]) -> None:
        self._alive = alive
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(BUFFERS):
            self._free.put(bytearray(BUFFER_SIZE))
        self._work: queue.SimpleQueue[tuple[SpoolDigest, bytearray | None, int]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._current: tuple[Any, SpoolDigest | None] | None = None  # (spool key, digest) being written
        self._written_at = 0   # the file offset after the last byte written
        self._flushed_at = 0   # writeback was started up to here

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._hash_loop, name="dicom-spool-digest", daemon=True)
            self._thread.start()

    def _hash_loop(self) -> None:
        while True:
            try:
                digest, buffer, n = self._work.get(timeout=_IDLE_CHECK)
            except queue.Empty:
                if not self._alive():
                    return
                continue
            if buffer is None:
                digest._done.set()
                continue
            with memoryview(buffer) as view:
                digest._update(view[:n])
            self._free.put(buffer)

    def _digest_for(self, key: Any, spool: Any) -> SpoolDigest | None:
        """The digest of ``spool`` (``key``: the object pynetdicom keeps for it), begun with what
        pynetdicom wrote to the file before the first fragment (preamble and File Meta). None
        when that cannot be read back: the file is then written without a digest."""
        if self._current is not None and self._current[0] is key:
            return self._current[1]
        spool.flush()
        prefix_length = spool.tell()
        try:
            prefix = os.pread(spool.fileno(), prefix_length, 0)
        except OSError:
            prefix = b""
        if len(prefix) != prefix_length:
            self._current = (key, None)
            self._written_at = self._flushed_at = prefix_length
            return None
        digest = SpoolDigest(prefix)
        with _DIGESTS_LOCK:
            _DIGESTS[key] = digest
        self._current = (key, digest)
        self._written_at = self._flushed_at = prefix_length
        self._start()
        return digest

    def write_from(self, key: Any, spool: Any, read_into: Callable[[memoryview], int], length: int,
                   *, last: bool) -> None:
        """Write ``length`` bytes read by ``read_into`` (which fills the view it is given, fewer
        bytes only at the end of the connection: EOFError) to ``spool``; ``last``: the data
        set's last fragment."""
        digest = self._digest_for(key, spool)
        fd = spool.fileno()
        while length:
            buffer = self._free.get()
            n = min(length, BUFFER_SIZE)
            try:
                with memoryview(buffer) as view:
                    if read_into(view[:n]) != n:
                        raise EOFError
                    spool.write(view[:n])
            except BaseException:
                self._free.put(buffer)
                self._current = None  # this file's digest is never finished: never trusted
                raise
            if digest is not None:
                self._work.put((digest, buffer, n))
            else:
                self._free.put(buffer)
            length -= n
            self._written_at += n
            if self._written_at - self._flushed_at >= WRITEBACK_EVERY:
                spool.flush()
                with contextlib.suppress(OSError):
                    start_writeback(fd, self._flushed_at, self._written_at - self._flushed_at)
                self._flushed_at = self._written_at
        if last:
            self._current = None
            if digest is not None:
                digest._closed = True
                self._work.put((digest, None, 0))


__all__ = ["BUFFERS", "BUFFER_SIZE", "SpoolDigest", "SpoolWriter", "digest_of", "start_writeback"]
