"""What the store keeps about a record beside its FHIR JSON: the facts the consent decision
needs, so a search can be filtered without parsing resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from adapter.model.dicom import DicomInstance, NewOutboxItem, ReleasedUids
from adapter.model.photo import Identifier, PhotoKind, PhotoSource


@dataclass(frozen=True)
class AccessFacts:
    """Facts about the photo record that governs a resource.

    For a Media/DocumentReference it is the record itself; a Binary and a Provenance carry the
    facts of the record they belong to (``governed_by``), so one decision guards all of them.
    """

    governed_by: str                 # "Media/abc" or "DocumentReference/abc"
    patient: Identifier
    kind: PhotoKind
    source: PhotoSource
    consent_pending: bool = False
    consent_ids: tuple[str, ...] = ()
    consent_directive: bool = False  # the resource is a Consent itself (adapter.consent.decision, step 5)
    #: the record's status is ``entered-in-error`` (R4 event-status, document-reference-status):
    #: set on the record and on every resource it governs when it is marked so, never cleared
    entered_in_error: bool = False


@dataclass(frozen=True)
class SearchIndex:
    """Searchable values of a resource (computed by mapping/, stored by store/)."""

    patient: Identifier | None = None
    patient_reference: str | None = None
    #: The search date (``date``, Media ``created``) as the implicit range of its precision
    #: (https://hl7.org/fhir/R4/search.html#date): its first and its last instant; a date-only
    #: value covers its day. ``date_last`` None with a ``date``: an instant (first = last).
    date: datetime | None = None
    status: str | None = None
    tokens: tuple[tuple[str, str | None, str], ...] = ()  # (param, system, code)
    creation: datetime | None = None  # the attachment's creation (IHE MHD ``creation``), first instant
    date_last: datetime | None = None
    creation_last: datetime | None = None  # the creation's last instant (as ``date_last``)
    #: Dates searched as ranges: (param, first instant, last instant), None an open end.
    ranges: tuple[tuple[str, datetime | None, datetime | None], ...] = ()


@dataclass(frozen=True)
class StoredResource:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    resource: dict[str, Any]
    facts: AccessFacts | None = None
    blob_sha256: str | None = None
    blob_range: tuple[int, int] | None = None  # NewResource.blob_range


@dataclass(frozen=True)
class IndexRow:
    """One search candidate: no JSON, just what filtering needs."""

    resource_type: str
    id: str
    last_updated: datetime
    facts: AccessFacts | None
    #: The indexed dates a search may be sorted by (``_sort=date``/``creation``): the resource's
    #: search date and a record's creation (None when it has none).
    date: datetime | None = None
    creation: datetime | None = None


@dataclass
class NewResource:
    """A resource to be written inside an ingest unit."""

    resource_type: str
    id: str
    resource: dict[str, Any]
    index: SearchIndex
    facts: AccessFacts | None = None
    #: The blob holding the resource's bytes, and where in it: ``blob_range`` (offset, length)
    #: when they are a byte range of a larger blob (a received DICOM object's JPEG frame, kept
    #: once inside the object as received), None when they are the whole blob.
    blob_sha256: str | None = None
    blob_range: tuple[int, int] | None = None


#: The longest Idempotency-Key a POST /photos or a transaction takes (the receipts' column,
#: adapter.store.schema): a longer one is refused (400, adapter.api.idempotency), never cut, which
#: made two keys alike in their first 200 characters one key.
MAX_IDEMPOTENCY_KEY = 200


@dataclass
class IngestUnit:
    """Everything one ingest writes, in one transaction."""

    resources: list[NewResource]
    receipt: dict[str, Any]
    idempotency_key: str | None
    patient: Identifier
    stored_sha256: str
    audit_events: list[dict[str, Any]] = field(default_factory=list)
    dicom_instance: DicomInstance | None = None       # the SOP instance of this record, if any
    released_uids: list[ReleasedUids] = field(default_factory=list)  # its UIDs in the restricted views
    outbox: list[NewOutboxItem] = field(default_factory=list)  # forwarding, committed with the record
    # a posted photo's instance that opens its study (no posted photo of the study is stored):
    # saved only if none is by then (StudyStarted), as it carries its own StudyDate and StudyTime
    opens_study: bool = False


@dataclass(frozen=True)
class BlobReference:
    """Where the store says image bytes are: the resource (or the DICOM object as received, of
    a record) naming blob ``sha256``, whole or the range ``offset``/``length`` of it."""

    owner: str  # "Binary/<id>", "Media/<id>", or "DICOM object of Media/<id>": logical ids only
    sha256: str
    offset: int | None = None
    length: int | None = None

#: The member a stored receipt carries when its record was marked entered-in-error since (the
#: store adds it to a receipt read from withdrawn_receipts, adapter.store.schema): its photo is
#: released to no one, so no retry is answered with it. Never answered (the receipt's members
#: starting with ``_`` are the adapter's own: adapter.services.photo_description.answered).
WITHDRAWN = "_enteredInError"


def received_sha256_of(receipt: Any) -> str | None:
    """A photo receipt's ``sha256.received``, the SHA-256 of the photo as received (stored with
    the receipt, adapter.store.schema receipts): None if it has none (a receipt of another shape)."""
    hashes = receipt.get("sha256") if isinstance(receipt, dict) else None
    received = hashes.get("received") if isinstance(hashes, dict) else None
    return received if isinstance(received, str) and len(received) == 64 else None
