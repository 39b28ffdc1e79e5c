"""Image bytes as content-addressed files: ``blobs/<sha[:2]>/<sha[2:4]>/<sha256>``.

An upload is written to ``staging/`` (same file system) and committed by fsync of the file,
an atomic rename to its address and fsync of the folders whose entries changed, so a
committed blob survives a crash and a half-written one is never visible under its address.

A blob's mtime is when it was last committed (a commit of bytes stored before refreshes it), so
a blob no record refers to and whose mtime is old can be removed safely: it is first moved into
``quarantine/`` (where no commit finds it), checked again, then deleted or put back; the protocol
and its guarantees are adapter.services.unreferenced's.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
import uuid
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from pathlib import Path

from adapter.config import StoreOptions
from adapter.errors import InsufficientStorage, InvalidInput, MissingImage, StorageError
from adapter.files import describe_os_error, file_sha256, read_range

_log = logging.getLogger(__name__)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

#: Staged files older than this are left over from a crash or an aborted upload.
STALE_STAGING_SECONDS = 3600
#: How often a running store sweeps its staging folder: on a timer in the serving process
#: (adapter.services.staging_sweep), and when an upload asks for a staging path after as long. A
#: crash's leftovers are fresh when the adapter restarts at once, so the sweep at start keeps
#: them: these remove them once they are stale, instead of at a later start (weeks away, perhaps).
STAGING_SWEEP_SECONDS = 600


def _refresh(target: Path) -> bool:
    """Set the blob's mtime to now; False when it is gone (the removal of unreferenced blobs
    moved it away meanwhile: the caller then stores its own copy)."""
    try:
        os.utime(target)
    except FileNotFoundError:
        return False
    return True


def _fsync_dir(path: Path) -> None:
    """Make the entries of a folder durable (POSIX; a no-op where folders cannot be opened)."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:
        return
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None)


def _fsync_file(path: Path) -> None:
    """Make the file's bytes durable, then let its pages leave the page cache.

    A committed photo is rarely read again soon (a forward or a viewer reads it later, from the
    disk), so ingest does not fill the cache with write-once data and its pages are reused for
    the next photo's write. Where free memory is handed back to a VM's host (free page
    reporting, as on the benchmark machine), touching never-used page-cache pages is what
    costs: writing a 3 MB photo into fresh pages took ~4-6 ms of CPU there, into reused ones
    well under 1 ms (benchmarks/ingest.py: up to ~4 ms less kernel CPU per photo)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        if _DONTNEED is not None:
            os.posix_fadvise(fd, 0, 0, _DONTNEED)  # clean after the fsync: dropped, not written
    finally:
        os.close(fd)


class FileBlobStore:
    """BlobStore on the local file system under ``options.data_dir``."""

    def __init__(self, options: StoreOptions, *, stale_after_seconds: float = STALE_STAGING_SECONDS) -> None:
        self._blob_dir = options.blob_dir.resolve()
        self._staging_dir = options.staging_dir.resolve()
        self._quarantine_dir = options.quarantine_dir.resolve()
        self._reserve = max(0, options.min_free_bytes)
        try:
            self._blob_dir.mkdir(parents=True, exist_ok=True)
            self._staging_dir.mkdir(parents=True, exist_ok=True)
            self._quarantine_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # the path and errno: a read-only data folder says EROFS (ops review 5)
            raise StorageError(f"cannot create the blob folders: {exc.filename or self._blob_dir} "
                               f"({describe_os_error(exc)})") from exc
        self._stale_after = stale_after_seconds
        self.remove_stale_staging(stale_after_seconds)
        self._next_sweep = time.monotonic() + STAGING_SWEEP_SECONDS
        with self.removal_lock() as held:
            if held:  # else a removal is running in another process: what it holds is its own
                self.restore_quarantined()

    def remove_stale_staging(self, older_than_seconds: float = STALE_STAGING_SECONDS) -> int:
        """Delete staged files not modified for ``older_than_seconds``; return how many."""
        cutoff = time.time() - older_than_seconds
        removed = 0
        for entry in self._staging_dir.iterdir():
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed += 1
            except FileNotFoundError:
                continue  # another process cleaned it up
        if removed:
            _log.info("removed %d stale staged upload(s)", removed)
        return removed

    def sweep_staging(self) -> int:
        """Delete the staged files older than this store's stale age (STALE_STAGING_SECONDS):
        what a crash or an aborted upload left; return how many. OSError when the folder cannot
        be listed."""
        return self.remove_stale_staging(self._stale_after)

    @property
    def staging_dir(self) -> Path:
        return self._staging_dir

    @property
    def reserve_bytes(self) -> int:
        """The free space kept for the database and the audit trail (0: none)."""
        return self._reserve

    def free_bytes(self) -> int:
        """Bytes free for the adapter on the blobs' file system (not counting the part only
        root may use). Raises OSError when the file system cannot be asked."""
        st = os.statvfs(self._blob_dir)
        return st.f_bavail * st.f_frsize

    def ensure_room(self, incoming: int = 0) -> None:
        """Refuse (InsufficientStorage) a new image of ``incoming`` bytes, not yet written, when
        it would leave less free than the reserve, or when the reserve is already reached. The
        reserve keeps the database and the audit trail writable on a filling disk: reads, and
        the consent changes a patient asks for, must never wait for photos to be moved away.
        Bytes that do not fit at all are refused so even without a reserve (ADAPTER_MIN_FREE_MB=0):
        their write would fail half-way (ENOSPC) with the same answer."""
        incoming = max(0, incoming)
        if self._reserve <= 0 and incoming == 0:
            return
        try:
            free = self.free_bytes()
        except OSError as exc:
            raise StorageError("cannot read the free space of the data folder") from exc
        if free < self._reserve:
            raise InsufficientStorage(
                "the data folder is down to the free space it keeps for the database and the audit trail "
                "(ADAPTER_MIN_FREE_MB): no new image is stored; reads and consent changes go on")
        if free - incoming < self._reserve:
            raise InsufficientStorage(
                "the data folder has no room for an upload of this size above the free space it keeps for the "
                "database and the audit trail (ADAPTER_MIN_FREE_MB): nothing was stored; reads and consent "
                "changes go on")

    def staged_uploads(self) -> tuple[int, int]:
        """How many files are in the staging folder, and their bytes: uploads under way, or left by
        a crash (the photos as received, their metadata not yet removed) until they are swept."""
        count = size = 0
        try:
            with os.scandir(self._staging_dir) as entries:
                for entry in entries:
                    try:
                        if entry.is_file(follow_symlinks=False):
                            size += entry.stat(follow_symlinks=False).st_size
                            count += 1
                    except FileNotFoundError:
                        continue  # committed or removed meanwhile
        except OSError as exc:
            raise StorageError("could not list the staging folder") from exc
        return count, size

    def new_staging_path(self) -> Path:
        """A fresh path in the staging folder (same file system as the blobs). Every
        STAGING_SWEEP_SECONDS, stale staged files are removed first."""
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + STAGING_SWEEP_SECONDS
            try:
                self.sweep_staging()
            except OSError:  # the upload goes on; the next sweep tries again
                _log.warning("could not sweep the staging folder", exc_info=True)
        return self._staging_dir / f"{uuid.uuid4().hex}.part"

    def _address(self, sha256: str) -> Path:
        return self._blob_dir / sha256[:2] / sha256[2:4] / sha256

    def _check_staged(self, staged: Path) -> Path:
        staged = staged.resolve()
        if staged.parent != self._staging_dir:
            raise ValueError("not a path in the staging folder")
        return staged

    def commit(self, staged: Path, sha256: str) -> Path:
        """fsync ``staged``, move it to its content address, fsync the folders; return the final
        path. If the blob exists already, ``staged`` is removed. Idempotent.

        The caller vouches that ``sha256`` is the digest of the staged bytes.
        """
        if not _SHA256.match(sha256):
            raise InvalidInput("a blob address is a lower-case hex SHA-256")
        staged = self._check_staged(staged)
        target = self._address(sha256)
        try:
            if target.is_file() and _refresh(target):
                # stored before: the ingest's record will refer to it, so it is made young again
                # (its mtime) before the staged copy goes, and before the ingest's transaction:
                # the removal of unreferenced blobs leaves young ones alone (adapter.services.unreferenced)
                staged.unlink(missing_ok=True)
                self._sync_entry(target)
                return target
            # New bytes, on the disk already: refused once the reserve is reached (the caller
            # discards them, and nothing of the record is written). Bytes stored before are not
            # (above), so a retry is still answered with its receipt.
            self.ensure_room()
            _fsync_file(staged)
            os.utime(staged)  # arrives young, whenever its bytes were written (a linked DICOM object)
            created_in = self._make_dirs(target.parent)
            os.replace(staged, target)
            # The folders whose entries changed, innermost first, each once: on a journaling
            # file system the first fsync commits the lot, the others find nothing to do.
            _fsync_dir(target.parent)
            for parent in created_in:
                _fsync_dir(parent)
            _fsync_dir(self._staging_dir)
        except FileNotFoundError as exc:
            if target.is_file():  # a concurrent commit of the same bytes won
                self._sync_entry(target)
                return target
            raise StorageError("the staged upload is missing") from exc
        except OSError as exc:
            raise StorageError("could not store the image bytes") from exc
        return target

    def _sync_entry(self, target: Path) -> None:
        """Make the folder entries leading to a blob found in place durable before its record
        refers to it: a concurrent commit of the same bytes may have renamed it there and not
        yet fsynced the folders (its own record waits for that; this one would not). The file's
        bytes were fsynced before the rename."""
        folder = target.parent
        while True:
            _fsync_dir(folder)
            if folder == self._blob_dir or self._blob_dir not in folder.parents:
                return
            folder = folder.parent

    def _make_dirs(self, folder: Path) -> list[Path]:
        """Create the shard folders; return the folders whose entries changed, innermost first
        (the caller fsyncs them once the blob is in place, before it reports the commit)."""
        missing: list[Path] = []
        while not folder.is_dir():
            missing.append(folder)
            folder = folder.parent
        changed: list[Path] = []
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            changed.append(path.parent)
        return changed[::-1]

    def discard(self, staged: Path) -> None:
        """Remove a staged file if present. One that was never made is no failure, even where
        nothing can be removed (a read-only folder answers EROFS before it looks)."""
        staged = self._check_staged(staged)
        try:
            staged.unlink(missing_ok=True)
        except OSError as exc:
            if not staged.exists():
                return
            raise StorageError("could not remove a staged upload") from exc

    def path(self, sha256: str) -> Path:
        """Path of a committed blob (raises MissingImage if absent: a record or instance names
        every digest asked for here, so its image is missing from the data folder)."""
        if not self.exists(sha256):
            raise MissingImage("the stored image is missing from the data folder (python -m adapter verify lists "
                               "every missing image)")
        return self._address(sha256)

    def read(self, sha256: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The bytes of a committed blob, or the (offset, length) range of them (raises
        MissingImage if absent, StorageError if the blob is shorter than the range)."""
        path = self.path(sha256)
        try:
            return path.read_bytes() if byte_range is None else read_range(path, *byte_range)
        except EOFError as exc:
            raise StorageError("the stored blob is shorter than the range recorded for it") from exc
        except OSError as exc:
            raise StorageError("could not read the stored image bytes") from exc

    def exists(self, sha256: str) -> bool:
        return bool(_SHA256.match(sha256)) and self._address(sha256).is_file()

    def size(self, sha256: str) -> int | None:
        """The size of a committed blob in bytes; None if there is none at that address."""
        if not _SHA256.match(sha256):
            return None
        try:
            return self._address(sha256).stat().st_size
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError("could not read the stored image bytes") from exc

    def digest(self, sha256: str) -> str:
        """The SHA-256 of the bytes at address ``sha256``, computed afresh (equal to it unless
        the file was damaged). MissingImage if absent."""
        path = self.path(sha256)
        try:
            return file_sha256(path)
        except OSError as exc:
            raise StorageError("could not read the stored image bytes") from exc

    def iter_addresses(self) -> Iterator[str]:
        """The address of every blob file stored, in no particular order."""
        for shard in self._blob_dir.iterdir():
            if not shard.is_dir():
                continue
            for sub in shard.iterdir():
                if sub.is_dir():
                    yield from (f.name for f in sub.iterdir() if f.is_file() and _SHA256.match(f.name))

    # -- removal of unreferenced blobs (the protocol is adapter.services.unreferenced's) --------

    @contextmanager
    def removal_lock(self) -> Iterator[bool]:
        """Hold the data folder's removal lock (``flock`` on ``quarantine/.lock``: one process
        or thread at a time, released if it dies) while the block runs, if no one else holds it;
        yield whether it is held. Never waits."""
        lock = self._quarantine_dir / ".lock"
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # the path and errno: a read-only data folder says EROFS (verify review 2)
            raise StorageError(f"cannot open the removal lock in the quarantine folder: {lock} "
                               f"({describe_os_error(exc)})") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    def iter_aged(self, older_than: float) -> Generator[str, None, None]:
        """The address of every blob whose mtime is before ``older_than`` (seconds since the
        epoch), in no particular order; a blob made young by a commit while the walk runs may
        be named or not."""
        try:  # each folder's listing closed as it ends, or when the caller closes the walk
            with os.scandir(self._blob_dir) as shards:
                for shard in shards:
                    if not shard.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(shard.path) as subs:
                        for sub in subs:
                            if sub.is_dir(follow_symlinks=False):
                                yield from self._aged_in(sub.path, older_than)
        except OSError as exc:
            raise StorageError("could not list the stored blobs") from exc

    @staticmethod
    def _aged_in(folder: str, older_than: float) -> Iterator[str]:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if _SHA256.match(entry.name) and entry.is_file(follow_symlinks=False) \
                            and entry.stat(follow_symlinks=False).st_mtime < older_than:
                        yield entry.name
                except FileNotFoundError:
                    continue

    def quarantine(self, sha256: str, older_than: float) -> bool:
        """Move the blob at ``sha256`` into the quarantine folder if its mtime is before
        ``older_than``; True if it is held there now. Once moved, no commit can find it (a
        commit of the same bytes stores a copy of its own); if a commit made it young between
        the look at its mtime and the move, it is put back (False)."""
        if not _SHA256.match(sha256):
            raise InvalidInput("a blob address is a lower-case hex SHA-256")
        target, held = self._address(sha256), self._quarantine_dir / sha256
        try:
            if target.stat().st_mtime >= older_than:
                return False
            os.replace(target, held)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError("could not move a blob into the quarantine folder") from exc
        try:
            young = held.stat().st_mtime >= older_than
        except OSError as exc:
            self.restore(sha256)
            raise StorageError("could not read a quarantined blob") from exc
        if young:  # refreshed by a commit just before the move
            self.restore(sha256)
            return False
        return True

    def restore(self, sha256: str) -> None:
        """Put a quarantined blob back under its address, young (its mtime now); if a commit has
        stored the same bytes there meanwhile, theirs stays and the quarantined copy goes."""
        held, target = self._quarantine_dir / sha256, self._address(sha256)
        try:
            try:
                os.utime(held)
            except FileNotFoundError:
                return
            created_in = self._make_dirs(target.parent)
            try:
                os.link(held, target)
            except FileExistsError:
                pass  # the same bytes, committed meanwhile
            except OSError:  # a file system without hard links
                if not target.exists():
                    os.replace(held, target)
            _fsync_dir(target.parent)
            for parent in created_in:
                _fsync_dir(parent)
            held.unlink(missing_ok=True)  # only once the address is durable again
            _fsync_dir(self._quarantine_dir)
        except OSError as exc:
            raise StorageError("could not restore a quarantined blob") from exc

    def remove_quarantined(self, sha256: str) -> int:
        """Delete a quarantined blob for good; return its size in bytes (0 if it is gone)."""
        held = self._quarantine_dir / sha256
        try:
            size = held.stat().st_size
            held.unlink()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise StorageError("could not remove a quarantined blob") from exc
        return size

    def restore_quarantined(self) -> int:
        """Put back every blob a removal left in the quarantine folder (it was interrupted: a
        crash, a database error); return how many. Call it holding the removal lock."""
        restored = 0
        try:
            names = [e.name for e in os.scandir(self._quarantine_dir) if _SHA256.match(e.name)]
        except OSError as exc:
            raise StorageError("could not list the quarantine folder") from exc
        for name in names:
            self.restore(name)
            restored += 1
        if restored:
            _log.info("put back %d blob(s) an interrupted removal of unreferenced blobs had moved aside", restored)
        return restored
