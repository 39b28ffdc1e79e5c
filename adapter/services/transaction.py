"""``POST /fhir`` transaction Bundles (IHE MHD ITI-65 shape): a Binary, the Media or
DocumentReference that references it and optionally a Consent (a SubmissionSet List and the
Patient are acknowledged, not stored). The same rules, stripping and
storage as ``POST /photos`` apply; the answer is a transaction-response Bundle."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from adapter.errors import Conflict
from adapter.mapping.tables import Tables
from adapter.mapping.transaction import (
    ACKNOWLEDGED_ROLES,
    ROLE_BINARY,
    ROLE_CONSENT,
    ROLE_RECORD,
    parse_transaction,
    transaction_response,
)
from adapter.model.purpose import RequestContext
from adapter.services.ingest import IngestResult, IngestService


class TransactionService:
    def __init__(self, *, ingest: IngestService, tables: Tables, now: Callable[[], datetime]) -> None:
        self._ingest = ingest
        self._tables = tables
        self._now = now

    def process(self, bundle: dict[str, Any], *, idempotency_key: str | None,
                ctx: RequestContext) -> tuple[dict[str, Any], IngestResult]:
        submission = parse_transaction(bundle, self._tables)
        # the decoded Binary.data is already in memory: hand it over as bytes (no staging file)
        result = self._ingest.ingest_photo(submission.image_bytes, submission.meta,
                                           idempotency_key=idempotency_key, ctx=ctx)
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
                entries.append(("", "200 OK"))
            else:
                entries.append((f"{locations[role]}/_history/1", status))
        return transaction_response(entries, self._now(), submission.entry_warnings), result
