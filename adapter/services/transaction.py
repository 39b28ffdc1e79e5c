"""``POST /fhir`` transaction Bundles (IHE MHD ITI-65 shape): a Binary, the Media or
DocumentReference that references it and optionally a Consent (a SubmissionSet List and the
Patient are acknowledged, not stored). The same rules, stripping and
storage as ``POST /photos`` apply; the answer is a transaction-response Bundle."""

from __future__ import annotations

from typing import Any

from adapter.errors import AdapterError, Conflict, StorageError
from adapter.mapping.document_metadata import NOT_SAVED
from adapter.mapping.tables import Tables
from adapter.mapping.transaction import (
    ACKNOWLEDGED_ROLES,
    ROLE_BINARY,
    ROLE_CONSENT,
    ROLE_RECORD,
    EntryWarning,
    parse_transaction,
    transaction_response,
)
from adapter.model.purpose import RequestContext
from adapter.services.ingest import IngestResult, IngestService
from adapter.store.port import RecordStore


class TransactionService:
    def __init__(self, *, ingest: IngestService, tables: Tables, store: RecordStore) -> None:
        self._ingest = ingest
        self._tables = tables
        self._store = store

    def process(self, bundle: dict[str, Any], *, idempotency_key: str | None, ctx: RequestContext,
                fhir_base: str | None = None) -> tuple[dict[str, Any], IngestResult]:
        """``fhir_base``: this server's FHIR base, under which an absolute ``request.url`` names it."""
        submission = parse_transaction(bundle, self._tables, fhir_base)
        # the decoded Binary.data is already in memory: hand it over as bytes (no staging file)
        try:
            result = self._ingest.ingest_photo(submission.image_bytes, submission.meta,
                                               idempotency_key=idempotency_key, ctx=ctx)
        except AdapterError as exc:
            # several fields of the record (a retry describing it otherwise) name its entry once
            exc.expression = list(dict.fromkeys(_in_bundle(e, submission.entry_roles) for e in exc.expression))
            raise
        receipt = result.receipt
        locations: dict[str, str] = {ROLE_BINARY: receipt["binary"], ROLE_RECORD: receipt["record"]}
        if receipt["consents"]:
            locations[ROLE_CONSENT] = receipt["consents"][0]
        elif ROLE_CONSENT in submission.entry_roles:
            # a replay: the photo was stored for the patient before, without a Consent, and this
            # Bundle's Consent was not stored (a response naming one would say it was)
            raise Conflict("this photo is stored for the patient already, without a Consent: nothing was stored, "
                           "the Bundle's Consent neither; record the Consent with POST /fhir/Consent",
                           expression="Bundle.entry")
        status = "200 OK" if result.replayed else "201 Created"
        entries = []
        for role in submission.entry_roles:
            if role in ACKNOWLEDGED_ROLES:
                entries.append(("", "200 OK", ""))
            else:
                entries.append((f"{locations[role]}/_history/1", status, self._last_updated(locations[role])))
        warnings = dict(submission.entry_warnings)
        if submission.sent_size is not None:
            index, where, sent = submission.sent_size
            stored = int(receipt["size"]["stored"])
            if stored != sent:
                warnings[index] = warnings.get(index, ()) + (EntryWarning(
                    NOT_SAVED, f"attachment.size was stored as {stored}, the size of the document stored without "
                    f"its metadata ({sent} bytes sent)", where),)
        return transaction_response(entries, warnings), result

    def _last_updated(self, reference: str) -> str:
        """The meta.lastUpdated of version 1 of ``reference`` (``Type/id``, just stored or stored
        before: a replay), which its entry's lastModified states; the time stored was taken by the
        store, in the transaction that wrote it."""
        resource_type, _, id = reference.partition("/")
        stored = self._store.get_version(resource_type, id, 1)
        if stored is None:  # written by this very request, or before it: never gone (no deletes)
            raise StorageError(f"{resource_type} just stored cannot be read back")
        return str(stored["meta"]["lastUpdated"])


#: Where in the Bundle a refusal of the photo's metadata points (the ingest names the fields of
#: ``POST /photos``' metadata): the element of the record, else the entry that holds it.
_RECORD_ELEMENTS = {"masterIdentifier": "masterIdentifier", "bodySite": "bodySite"}


def _in_bundle(expression: str, roles: tuple[str, ...]) -> str:
    """An expression of the ingest (a ``POST /photos`` metadata field: ``consent.method``,
    ``masterIdentifier``, ``file``…; ``DocumentReference.identifier``, an element of the record a
    retry describes otherwise) as a FHIRPath into the transaction Bundle (FHIR
    OperationOutcome.issue.expression): the record's element where it has one, else the entry
    whose resource said it (the Consent's for consent, the Binary's for the file, the record's
    for the rest). One already in the Bundle is kept."""
    if expression.startswith("Bundle"):
        return expression
    def entry(role: str) -> str | None:
        return f"Bundle.entry[{roles.index(role)}].resource" if role in roles else None
    record = entry(ROLE_RECORD) or "Bundle"
    head = expression.split(".", 1)[0].split("[", 1)[0]
    if head == "DocumentReference" and "." in expression:  # an element of the record (photo_description)
        return f"{record}.{expression.split('.', 1)[1]}"
    if head in _RECORD_ELEMENTS:
        return f"{record}.{_RECORD_ELEMENTS[head]}"
    if head == "consent":
        return entry(ROLE_CONSENT) or record
    if head == "file":
        return entry(ROLE_BINARY) or record
    return record
