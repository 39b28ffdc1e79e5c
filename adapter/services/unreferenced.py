"""Removal of unreferenced blobs: image files no committed record refers to, once they are older
than a grace period (``python -m adapter verify --remove-unreferenced``).

Where they come from. Ingest (a photo, a transaction Bundle, a C-STORE or STOW-RS object) commits
its image, and a DICOM object as received, to its content address, fsynced, before the database
transaction that refers to it: nothing is visible until that commit. When the transaction fails
(a database error, a conflict such as an Idempotency-Key used concurrently for another photo, a
crash) the file stays, referenced by nothing: a patient's image nobody can reach, delete or
account for. It cannot be deleted where the failure is seen: blobs are shared by address, and
another ingest (a thread, an HTTP worker process, the SCP) may have just committed the same bytes
and be about to refer to them.

The protocol. A blob is a candidate when its mtime is older than the grace period (24 hours by
default, never less than one) and no committed record refers to it. Every commit of a blob sets
its mtime to now, also when the bytes are stored already (FileBlobStore.commit), before the
ingest's transaction. For each candidate, a batch at a time:

1. it is moved into ``quarantine/`` (an atomic rename on the same file system): from then on no
   commit can find it, and a commit of the same bytes stores a copy of its own at the address;
2. the moved file's mtime is read again: a commit that refreshed it between the first look and
   the move made it young, and it is put back;
3. the database is asked again, in a read that begins after the move: a record that refers to it
   now has it put back (hard-linked to its address, fsynced, then the quarantined name removed);
4. otherwise it is deleted.

Why nothing an ingest refers to, or will refer to, is deleted. Say an ingest commits blob X at t1
(X is then at its address with an mtime of at least t1) and its transaction commits at t2 > t1;
the removal moves X at tm and begins the read of step 3 at tr > tm.
- t1 > tm: the commit did not find the moved file (or refreshing it failed) and stored its own
  copy under the address; the file deleted is not the one the record refers to.
- t1 < tm: the moved file is the one refreshed at t1. Step 2 keeps it unless t1 is older than the
  cutoff (the removal's start less the grace period); step 3 keeps it if t2 < tr. So a deletion
  needs an ingest still uncommitted more than the grace period after its blob commit. That is the
  one assumption: an ingest takes seconds (its upload is whole, checked and staged before the
  blob is committed); the grace period is at least an hour, a day by default.
- A record committed before the removal began refers to X: X is skipped (and step 3 would see it).
Records are never deleted, so a blob referenced once stays referenced, and a backup (database
first, then files) never misses a file its database refers to. A reader can miss a blob only in
the case the assumption excludes, for the instant between steps 1 and 3.

Across processes. One removal at a time per data folder (``flock`` on ``quarantine/.lock``; a
second one does nothing and says so). What an interrupted removal left in ``quarantine/`` (a
crash, a database error) is put back by the next removal and whenever a process opens the store.
The data folder must be a local file system of one host (rename, hard links, flock, and one clock
for the mtimes).

Bounded work. Blobs are looked at in batches of ``batch``: memory holds one batch, and each check
of a batch is one indexed read (schema 11); at most ``limit`` blobs are deleted per run. The
walk of the blob folders reads every file's mtime once.

When it runs: by the operator (cron or a systemd timer, daily is plenty: orphans come only from
failed transactions), never in the request path of the service; it is safe while the service
runs, with any number of HTTP workers and the SCP. Logs and output carry counts and sizes only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import islice

from adapter.errors import AdapterError
from adapter.store.port import BlobStore, RecordStore

log = logging.getLogger(__name__)

#: The default grace period: a blob unreferenced for less is left alone (an ingest may refer to it yet).
DEFAULT_GRACE_SECONDS = 24 * 3600
#: The shortest grace period allowed: far beyond any ingest between its blob commit and its transaction.
MIN_GRACE_SECONDS = 3600
#: Blobs looked at together: one read of the database per batch and check.
BATCH = 400


@dataclass
class RemovalReport:
    busy: bool = False  # another removal held the lock: nothing was done
    restored_leftovers: int = 0  # put back from an interrupted removal
    aged: int = 0  # blobs older than the grace period looked at (referenced ones included)
    removed: int = 0
    removed_bytes: int = 0
    kept: int = 0  # moved aside, then found young or referenced: put back
    limited: bool = False  # stopped at ``limit``: more may be left


def remove_unreferenced(store: RecordStore, blobs: BlobStore, *, older_than_seconds: float = DEFAULT_GRACE_SECONDS,
                        limit: int | None = None, batch: int = BATCH,
                        now: Callable[[], float] = time.time) -> RemovalReport:
    """Delete the blobs no committed record refers to whose mtime is older than
    ``older_than_seconds`` (at least MIN_GRACE_SECONDS), at most ``limit`` of them; the
    protocol and its guarantees are the module's. Raises StorageError when the store or the
    files fail (what it held aside then is put back, or else by the next removal)."""
    if older_than_seconds < MIN_GRACE_SECONDS:
        raise ValueError(f"the grace period is at least {MIN_GRACE_SECONDS} seconds")
    if limit is not None and limit < 0:
        raise ValueError("limit is not negative")
    report = RemovalReport()
    with blobs.removal_lock() as held:
        if not held:
            report.busy = True
            return report
        report.restored_leftovers = blobs.restore_quarantined()
        cutoff = now() - older_than_seconds
        with closing(blobs.iter_aged(cutoff)) as aged:
            _remove_aged(store, blobs, aged, cutoff, limit, batch, report)
    if report.removed or report.kept:
        log.info("removed %d unreferenced blob(s) (%d bytes); %d put back (made young or referenced meanwhile)",
                 report.removed, report.removed_bytes, report.kept)
    return report


def _remove_aged(store: RecordStore, blobs: BlobStore, aged: Iterator[str], cutoff: float, limit: int | None,
                 batch: int, report: RemovalReport) -> None:
    """The aged blobs a batch at a time: those no record refers to go through steps 1-4."""
    while True:
        room = batch if limit is None else min(batch, limit - report.removed)
        if room <= 0:
            report.limited = True
            return
        chunk = list(islice(aged, room))
        if not chunk:
            return
        report.aged += len(chunk)
        referenced = store.referenced_blobs(chunk)
        _remove(store, blobs, [a for a in chunk if a not in referenced], cutoff, report)


def _remove(store: RecordStore, blobs: BlobStore, candidates: Sequence[str], cutoff: float,
            report: RemovalReport) -> None:
    """Steps 1-4 of the module's protocol for a batch of candidates."""
    held: list[str] = []
    try:
        for address in candidates:
            if blobs.quarantine(address, cutoff):
                held.append(address)
            else:
                report.kept += 1
        referenced = store.referenced_blobs(held) if held else set()  # a read begun after every move
        while held:
            address = held[-1]
            if address in referenced:
                blobs.restore(address)
                report.kept += 1
            else:
                report.removed_bytes += blobs.remove_quarantined(address)
                report.removed += 1
            held.pop()
    finally:
        for address in held:  # interrupted: put back what is still aside (else the next removal does)
            try:
                blobs.restore(address)
            except AdapterError:  # the next removal, or the next start, puts it back
                log.warning("could not put back a quarantined blob; the next removal will", exc_info=True)
