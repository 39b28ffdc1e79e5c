"""``POST /fhir`` transaction Bundles (IHE MHD ITI-65 shape): one or more documents of one
patient, each a Media or DocumentReference with the Binary it references, and optionally a
Consent for all of them (a SubmissionSet List and the Patient are acknowledged, not stored). The
same rules, stripping and storage as ``POST /photos`` apply; the answer is a transaction-response
Bundle, one entry per request entry in its order.

A Bundle of one document is ingested as a ``POST /photos`` photo is (IngestService.ingest_photo),
answered as it always was. One of several is processed as a whole (FHIR http.html#transaction,
ITI-65 2:3.65.4.1.3: IngestService.ingest_documents): every document checked before any is
stored, all stored in one database transaction or none, a refusal naming the refused document's
entry. Idempotency (sent again): with the ``Idempotency-Key`` it was stored under, the Bundle is
answered as a whole with what was stored (each entry ``200 OK``, the same locations, nothing new;
the key with another Bundle: 422); without a key, every document stored for the patient before is
answered as a replay, and some stored and some not is refused (409, naming the entries of those
stored, nothing stored): storing the new ones while answering the others as replays would say
the Bundle was processed as a whole when it was not, and leave the client unsure which
documents are whose. Each document's record entry tells the warnings its receipt gives (consent
pending, quality: what ``POST /photos`` answers in ``warnings``), whatever ``Prefer`` asks
(adapter.mapping.ingest_warnings)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from adapter.errors import AdapterError, Conflict, StorageError
from adapter.mapping.codes import EXT_QUALITY_WARNING
from adapter.mapping.document_location import with_document_location
from adapter.mapping.document_metadata import NOT_SAVED
from adapter.mapping.ingest_warnings import warning_issues
from adapter.mapping.tables import Tables
from adapter.mapping.transaction import (
    ACKNOWLEDGED_ROLES,
    EntryWarning,
    TransactionSubmission,
    parse_transaction,
    transaction_response,
)
from adapter.model.photo import Identifier
from adapter.model.purpose import RequestContext
from adapter.services.ingest import IngestResult, IngestService
from adapter.store.port import RecordStore

#: ``Prefer: return=`` of a transaction (FHIR R4 http.html#ops): what each entry carries (_returned).
RETURN_MINIMAL = "minimal"
RETURN_REPRESENTATION = "representation"
RETURN_OPERATION_OUTCOME = "OperationOutcome"


class TransactionService:
    def __init__(self, *, ingest: IngestService, tables: Tables, store: RecordStore) -> None:
        self._ingest = ingest
        self._tables = tables
        self._store = store

    def process(self, bundle: dict[str, Any], *, idempotency_key: str | None, ctx: RequestContext,
                fhir_base: str | None = None, returned: str = RETURN_MINIMAL) -> tuple[dict[str, Any], list[IngestResult]]:
        """The transaction-response Bundle, and each document's ingest result in the order of
        their records; ``fhir_base``: this server's FHIR base, under which an absolute
        ``request.url`` names it. ``returned``: what ``Prefer: return=`` asks of each entry
        (http.html#ops, #transaction-response; :func:`_returned`)."""
        submission = self._parsed(bundle, ctx, fhir_base)
        documents = submission.documents
        if len(documents) == 1:
            document = documents[0]
            # the decoded Binary.data is already in memory: hand it over as bytes (no staging file)
            try:
                results = [self._ingest.ingest_photo(document.image_bytes, document.meta,
                                                     idempotency_key=idempotency_key, ctx=ctx)]
            except AdapterError as exc:
                # several fields of the record (a retry describing it otherwise) name its entry once
                exc.expression = _located(submission, 0, exc.expression)
                raise
        else:
            results = self._ingest.ingest_documents(
                [(d.image_bytes, d.meta) for d in documents], idempotency_key=idempotency_key, ctx=ctx,
                locate=lambda k, expressions: _located(submission, k, expressions))
        locations: dict[int, tuple[str, IngestResult]] = {}
        for document, result in zip(documents, results, strict=True):
            locations[document.record_index] = (result.receipt["record"], result)
            locations[document.binary_index] = (result.receipt["binary"], result)
        if submission.consent_index is not None:
            first = results[0]
            if not all(result.receipt["consents"] for result in results):
                # a replay: the photo was stored for the patient before, without a Consent, and this
                # Bundle's Consent was not stored (a response naming one would say it was)
                raise self._refused(ctx, documents[0].meta.patient.identifier, Conflict(
                    "this photo is stored for the patient already, without a Consent: nothing was stored, "
                    "the Bundle's Consent neither; record the Consent with POST /fhir/Consent",
                    expression="Bundle.entry"))
            locations[submission.consent_index] = (first.receipt["consents"][0], first)
        entries = []
        written: dict[int, dict[str, Any]] = {}  # version 1 of each entry's resource
        for index, role in enumerate(submission.entry_roles):
            if role in ACKNOWLEDGED_ROLES:
                entries.append(("", "200 OK", ""))
            else:
                location, result = locations[index]
                status = "200 OK" if result.replayed else "201 Created"
                written[index] = self._version_1(location)
                entries.append((f"{location}/_history/1", status, str(written[index]["meta"]["lastUpdated"])))
        warnings = dict(submission.entry_warnings)
        for document, result in zip(documents, results, strict=True):
            if document.sent_hash is not None and "hash" not in _stored_attachment(written[document.record_index]):
                index, where = document.sent_hash
                hashes = result.receipt.get("sha256") or {}
                why = ("the document was stored without its metadata, as other bytes (their SHA-256 is the record's "
                       "identifier)" if hashes.get("stored") != hashes.get("received") else
                       "the record was stored before the adapter kept it")
                warnings[index] = warnings.get(index, ()) + (EntryWarning(
                    NOT_SAVED, f"attachment.hash (checked: the SHA-1 of the bytes sent) was not stored: {why}", where),)
            if document.sent_size is None:
                continue
            index, where, sent = document.sent_size
            stored = int(result.receipt["size"]["stored"])
            if stored != sent:
                warnings[index] = warnings.get(index, ()) + (EntryWarning(
                    NOT_SAVED, f"attachment.size was stored as {stored}, the size of the document stored without "
                    f"its metadata ({sent} bytes sent)", where),)
        ingested = {document.record_index: _ingest_issues(result, written[document.record_index])
                    for document, result in zip(documents, results, strict=True)}
        resources, informed = _returned(returned, entries, written, warnings, fhir_base)
        return transaction_response(entries, warnings, resources=resources, informed=informed,
                                    ingested=ingested), results

    def _parsed(self, bundle: dict[str, Any], ctx: RequestContext, fhir_base: str | None) -> TransactionSubmission:
        """The Bundle read (parse_transaction); a refusal of its shape is audited as a refused
        create (IngestService.audit_refusal), naming no patient: none is known yet."""
        try:
            return parse_transaction(bundle, self._tables, fhir_base)
        except AdapterError as exc:
            self._ingest.audit_refusal(ctx, exc, None)
            raise

    def _refused(self, ctx: RequestContext, patient: Identifier | None, error: AdapterError) -> AdapterError:
        """``error``, audited once as the refusal of this transaction (IngestService.audit_refusal)."""
        self._ingest.audit_refusal(ctx, error, patient)
        return error

    def _version_1(self, reference: str) -> dict[str, Any]:
        """Version 1 of ``reference`` (``Type/id``, just stored or stored before: a replay), whose
        meta.lastUpdated its entry's lastModified states (the time stored was taken by the store,
        in the transaction that wrote it)."""
        resource_type, _, id = reference.partition("/")
        stored = self._store.get_version(resource_type, id, 1)
        if stored is None:  # written by this very request, or before it: never gone (no deletes)
            raise StorageError(f"{resource_type} just stored cannot be read back")
        return stored


def _stored_attachment(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The attachment of a stored record (a Media's ``content``, a DocumentReference's first)."""
    content = record.get("content")
    if isinstance(content, list):
        content = content[0].get("attachment") if content and isinstance(content[0], Mapping) else None
    return content if isinstance(content, Mapping) else {}


def _ingest_issues(result: IngestResult, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The warnings of the document's receipt (as ``POST /photos`` answers it: a replay's as
    stored) as issues of its record's entry (adapter.mapping.ingest_warnings); which are of the
    image's quality, the stored record's quality-warning extensions say."""
    quality = {str(e.get("valueString")) for e in record.get("extension", ()) if e.get("url") == EXT_QUALITY_WARNING}
    return warning_issues(result.receipt.get("warnings") or (), consent_pending=bool(result.receipt.get("consentPending")),
                          quality=quality)


def _returned(returned: str, entries: Sequence[tuple[str, str, str]], stored: Mapping[int, dict[str, Any]],
              warnings: Mapping[int, Sequence[EntryWarning]], fhir_base: str | None,
              ) -> tuple[dict[int, dict[str, Any]], dict[int, str]]:
    """What each entry carries besides its response, as ``Prefer: return=`` asks (FHIR R4
    http.html#ops; #transaction-response: "the server MAY return the resource"):
    ``representation``: each stored record and Consent as stored (the writer's own: the
    Consent as POST /fhir/Consent answers it), the record's attachment url absolute (IHE MHD
    Document Location); never a Binary, whose resource would be the image again in base64
    (read it at its location, as the record's url says), nor what was acknowledged and not
    stored. ``OperationOutcome``: an informational outcome per entry (created, or stored
    before: a replay; acknowledged), beside the entry's warnings. ``minimal``, the default:
    neither (the response's location, etag and lastModified)."""
    resources: dict[int, dict[str, Any]] = {}
    informed: dict[int, str] = {}
    for index, (location, status, _) in enumerate(entries):
        if returned == RETURN_REPRESENTATION and index in stored and stored[index]["resourceType"] != "Binary":
            resources[index] = with_document_location(stored[index], fhir_base) if fhir_base else stored[index]
        elif returned == RETURN_OPERATION_OUTCOME:
            if not location:
                if not warnings.get(index):  # else its note says so already
                    informed[index] = "acknowledged, not stored"
                continue
            reference = location.split("/_history/")[0]
            informed[index] = f"{reference} created (version 1)" if status.startswith("201") \
                else f"{reference} was stored before (version 1): answered as stored, nothing new"
    return resources, informed


def _located(submission: TransactionSubmission, document: int, expressions: Sequence[str]) -> list[str]:
    """The expressions of a refusal of the submission's ``document`` (by its index) as FHIRPaths
    into the Bundle (:func:`_in_bundle`), each once."""
    d = submission.documents[document]
    return list(dict.fromkeys(_in_bundle(e, d.record_index, d.binary_index, submission.consent_index)
                              for e in expressions))


#: Where in the Bundle a refusal of the photo's metadata points (the ingest names the fields of
#: ``POST /photos``' metadata): the element of the record, else the entry that holds it.
_RECORD_ELEMENTS = {"masterIdentifier": "masterIdentifier", "bodySite": "bodySite"}


def _in_bundle(expression: str, record_index: int, binary_index: int, consent_index: int | None) -> str:
    """An expression of the ingest (a ``POST /photos`` metadata field: ``consent.method``,
    ``masterIdentifier``, ``file``…; ``DocumentReference.identifier``, an element of the record a
    retry describes otherwise) as a FHIRPath into the transaction Bundle (FHIR
    OperationOutcome.issue.expression): the document's record's element where it has one, else
    the entry whose resource said it (the Consent's for consent, the document's Binary's for the
    file, its record's for the rest). One already in the Bundle is kept."""
    if expression.startswith("Bundle"):
        return expression
    record = f"Bundle.entry[{record_index}].resource"
    head = expression.split(".", 1)[0].split("[", 1)[0]
    if head == "DocumentReference" and "." in expression:  # an element of the record (photo_description)
        return f"{record}.{expression.split('.', 1)[1]}"
    if expression == "patient.reference":  # the Patient reference of the record's subject
        return f"{record}.subject.reference"
    if head in _RECORD_ELEMENTS:
        return f"{record}.{_RECORD_ELEMENTS[head]}"
    if head == "consent":
        return f"Bundle.entry[{consent_index}].resource" if consent_index is not None else record
    if head == "file":
        return f"Bundle.entry[{binary_index}].resource"
    return record
