"""Verify the store: every image the records refer to is there, whole, and (with ``digests``)
its bytes still have the SHA-256 they are stored under. What an operator runs after restoring a
backup, moving the data folder or a disk incident (``python -m adapter verify``).

It reads hashes and sizes, never a patient's data; findings name records by logical id. A blob
no record refers to is counted, not a problem: it is what a failed transaction or a crash between
the blob's commit and the database's leaves (ingest commits the blob first), and it holds nobody's
record; ``verify --remove-unreferenced`` then removes those past a grace period
(adapter.services.unreferenced); one that removal holds aside in ``quarantine/`` for an instant is
not counted. Files in ``staging/`` are counted too (not a problem): uploads under way, or what a
crash left there, the photos as received with their metadata, which a backup of the whole folder
would copy; opening the store sweeps the stale ones (adapter.store.blobs).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from adapter.consent import grants_from_consent
from adapter.errors import AdapterError, MissingImage
from adapter.store.port import BlobStore, RecordStore, SearchCriteria

MISSING = "missing"
TOO_SHORT = "shorter than the byte range recorded for it"
DAMAGED = "its bytes no longer have the SHA-256 it is stored under"


@dataclass(frozen=True)
class Finding:
    owner: str  # "Binary/<id>", "DICOM object of Media/<id>"
    sha256: str
    problem: str


@dataclass
class VerifyReport:
    references: int = 0  # resources and DICOM objects with bytes
    blobs: int = 0  # distinct blobs they refer to
    digests_checked: int = 0
    unreferenced: int = 0  # stored blobs no record refers to
    #: files in the staging folder, and their bytes: uploads under way, or a crash's leftovers
    #: (the photos as received) younger than the sweep's age (opening the store swept older ones)
    staged: int = 0
    staged_bytes: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings


def verify_store(store: RecordStore, blobs: BlobStore, *, digests: bool = False) -> VerifyReport:
    """Check every blob reference of ``store`` against ``blobs``; with ``digests`` also
    re-hash each referenced blob once (reads every image: minutes for a large store). The
    references stream from the store; what is kept is each blob's size and verdict (~150
    bytes per blob)."""
    report = VerifyReport()
    # blob (32 raw bytes) -> its size (None: missing) and whether its digest matches
    seen: dict[bytes, tuple[int | None, bool]] = {}
    for ref in store.iter_blob_references():
        report.references += 1
        key = bytes.fromhex(ref.sha256)
        verdict = seen.get(key)
        if verdict is None:
            verdict = seen[key] = _check_blob(blobs, ref.sha256, digests, report)
        size, intact = verdict
        if size is None:
            report.findings.append(Finding(ref.owner, ref.sha256, MISSING))
        elif not intact:
            report.findings.append(Finding(ref.owner, ref.sha256, DAMAGED))
        elif ref.offset is not None and ref.length is not None and ref.offset + ref.length > size:
            report.findings.append(Finding(ref.owner, ref.sha256, TOO_SHORT))
    report.blobs = len(seen)
    report.unreferenced = sum(1 for address in blobs.iter_addresses() if bytes.fromhex(address) not in seen)
    report.staged, report.staged_bytes = blobs.staged_uploads()
    return report


def _check_blob(blobs: BlobStore, sha256: str, digests: bool, report: VerifyReport) -> tuple[int | None, bool]:
    size = blobs.size(sha256)
    if size is None or not digests:
        return size, True
    try:
        actual = blobs.digest(sha256)
    except MissingImage:  # removed meanwhile
        return None, True
    report.digests_checked += 1
    return size, actual == sha256


#: Consents read per batch by :func:`unreadable_consents`.
_CONSENT_BATCH = 200


def unreadable_consents(store: RecordStore) -> Iterator[tuple[str, str]]:
    """(id, why) of each stored Consent whose current version the consent decision cannot read
    (adapter.consent.grants_from_consent: a modifierExtension, a nested provision without a
    type, an element it cannot parse; a write refuses them, but one stored before that rule, or
    written to the database by hand, is not). Each is read as a denial of every purpose, care
    included, and refuses every ingest of its patient: fail closed, and silent until listed here."""
    ids: list[str] = []
    for row in store.search_index("Consent", SearchCriteria()):
        ids.append(row.id)
        if len(ids) >= _CONSENT_BATCH:
            yield from _unreadable(store, ids)
            ids = []
    if ids:
        yield from _unreadable(store, ids)


def _unreadable(store: RecordStore, ids: list[str]) -> Iterator[tuple[str, str]]:
    for stored in store.get_many("Consent", ids):
        try:
            grants_from_consent(stored.resource)
        except AdapterError as exc:
            where = f" at {', '.join(exc.expression)}" if exc.expression else ""
            yield stored.id, f"{type(exc).__name__}{where}"

