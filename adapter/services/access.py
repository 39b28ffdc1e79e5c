"""Reading records back under purpose of use: the only read path out of the store.

Following Medplum's approach (STYLE §4), a :class:`ScopedReader` is built for one request
context; every resource it returns has passed the consent decision, been rendered in the view
that decision requires and stamped with security labels, and every decision (allow or deny) is
audited. Routes and DICOM handlers never read the store directly.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapter.consent import decide, grants_from_consent
from adapter.errors import Forbidden, NotFound, NotSupported
from adapter.imaging import strip_to_pixels_only
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.mapping.tables import Tables
from adapter.mapping.views import render
from adapter.model.consent import ConsentGrant
from adapter.model.decision import Decision, View
from adapter.model.photo import Identifier, PhotoKind, PhotoSource
from adapter.model.purpose import RequestContext
from adapter.model.record import AccessFacts, IndexRow, StoredResource
from adapter.services.audit import Auditor
from adapter.services.search_params import SearchRequest
from adapter.store.port import BlobStore, RecordStore

READABLE_TYPES = ("Media", "DocumentReference", "Binary", "Consent", "Provenance")
_DENIED = "access denied for this purpose of use"


@dataclass(frozen=True)
class ReadResult:
    resource: dict[str, Any]
    decision: Decision


@dataclass(frozen=True)
class BinaryContent:
    content_type: str
    data: bytes
    resource: dict[str, Any]
    decision: Decision


@dataclass(frozen=True)
class SearchResult:
    resources: list[dict[str, Any]]
    total: int
    break_glass: bool


def consent_facts(resource_id: str, resource: dict[str, Any]) -> AccessFacts | None:
    """A Consent is patient record data too: it is guarded like a document (care needs no
    further consent, any other purpose needs the patient's consent for it)."""
    ident = (resource.get("patient") or {}).get("identifier") or {}
    if not ident.get("system") or not ident.get("value"):
        return None
    return AccessFacts(governed_by=f"Consent/{resource_id}",
                       patient=Identifier(system=ident["system"], value=ident["value"]),
                       kind=PhotoKind.DOCUMENT, source=PhotoSource.CLINICIAN)


class ScopedReader:
    """All reads for one request context."""

    def __init__(self, ctx: RequestContext, *, store: RecordStore, blobs: BlobStore, tables: Tables,
                 pseudonymizer: Pseudonymizer, auditor: Auditor, now: Callable[[], datetime]) -> None:
        self.ctx = ctx
        self._store = store
        self._blobs = blobs
        self._tables = tables
        self._pseudonymizer = pseudonymizer
        self._auditor = auditor
        self._now = now
        self._grants: dict[Identifier, list[ConsentGrant]] = {}

    # -- the decision -------------------------------------------------------------------
    def _grants_for(self, patient: Identifier) -> list[ConsentGrant]:
        if patient not in self._grants:
            grants: list[ConsentGrant] = []
            for stored in self._store.consents_for_patient(patient):
                try:
                    grants.extend(grants_from_consent(stored.resource))
                except Exception:  # noqa: BLE001 - an unreadable consent grants nothing (fail closed)
                    continue
            self._grants[patient] = grants
        return self._grants[patient]

    def _facts(self, resource_type: str, id: str, facts: AccessFacts | None,
               resource: dict[str, Any] | None) -> AccessFacts | None:
        if facts is not None:
            return facts
        if resource_type == "Consent" and resource is not None:
            return consent_facts(id, resource)
        return None

    def decide(self, facts: AccessFacts | None) -> Decision:
        if facts is None:  # nothing says whose data this is: fail closed
            return Decision(permitted=False, reason="no access facts for this resource", purpose=self.ctx.purpose)
        return decide(self.ctx.purpose, facts, self._grants_for(facts.patient), self._tables, self._now())

    # -- reads --------------------------------------------------------------------------
    def _load(self, resource_type: str, id: str) -> StoredResource:
        if resource_type not in READABLE_TYPES:
            raise NotSupported(f"{resource_type} is not served here")
        stored = self._store.get(resource_type, id)
        if stored is None:
            raise NotFound(f"{resource_type}/{id} is not known")
        return stored

    def _render(self, stored: StoredResource, decision: Decision) -> dict[str, Any]:
        return render(stored.resource, decision, tables=self._tables, pseudonymizer=self._pseudonymizer)

    def read(self, resource_type: str, id: str) -> ReadResult:
        """Read one resource; 403 (saying little) when the purpose is not permitted."""
        stored = self._load(resource_type, id)
        facts = self._facts(resource_type, id, stored.facts, stored.resource)
        decision = self.decide(facts)
        self._auditor.record(self.ctx, interaction="read", action="R", decision=decision,
                             entities=[f"{resource_type}/{id}"], patient=facts.patient if facts else None)
        if not decision.permitted:
            raise Forbidden(_DENIED)
        return ReadResult(resource=self._render(stored, decision), decision=decision)

    def read_binary(self, id: str) -> BinaryContent:
        """The image bytes of a Binary, under the decision of the record it belongs to
        (Binary.securityContext). The de-identified view gets bytes with no metadata at all."""
        stored = self._load("Binary", id)
        decision = self.decide(stored.facts)
        self._auditor.record(self.ctx, interaction="read", action="R", decision=decision,
                             entities=[f"Binary/{id}"], patient=stored.facts.patient if stored.facts else None)
        if not decision.permitted:
            raise Forbidden(_DENIED)
        if stored.blob_sha256 is None:
            raise NotFound(f"Binary/{id} has no content")
        content_type = str(stored.resource.get("contentType", "application/octet-stream"))
        data = self._blobs.path(stored.blob_sha256).read_bytes()
        if decision.view is View.DEIDENTIFIED:
            data = strip_to_pixels_only(data, content_type)
        resource = self._render(stored, decision)
        resource["data"] = base64.b64encode(data).decode("ascii")
        return BinaryContent(content_type=content_type, data=data, resource=resource, decision=decision)

    def search(self, resource_types: Sequence[str], request: SearchRequest) -> SearchResult:
        """Search; records not permitted for the purpose are left out and not counted."""
        rows: list[IndexRow] = []
        for rt in resource_types:
            if rt not in READABLE_TYPES:
                raise NotSupported(f"{rt} is not served here")
            rows.extend(self._store.search_index(rt, request.criteria))
        rows.sort(key=lambda r: (r.last_updated, r.id))
        permitted: list[tuple[IndexRow, Decision]] = []
        denied = 0
        for row in rows:
            facts = row.facts
            if facts is None and row.resource_type == "Consent":
                stored = self._store.get("Consent", row.id)
                facts = consent_facts(row.id, stored.resource) if stored else None
            decision = self.decide(facts)
            if decision.permitted:
                permitted.append((row, decision))
            else:
                denied += 1
        page = permitted[request.offset:request.offset + request.count]
        resources: list[dict[str, Any]] = []
        by_type: dict[str, list[tuple[IndexRow, Decision]]] = {}
        for row, decision in page:
            by_type.setdefault(row.resource_type, []).append((row, decision))
        loaded: dict[tuple[str, str], StoredResource] = {}
        for rt, items in by_type.items():
            for stored in self._store.get_many(rt, [r.id for r, _ in items]):
                loaded[(rt, stored.id)] = stored
        for row, decision in page:
            stored = loaded.get((row.resource_type, row.id))
            if stored is not None:
                resources.append(self._render(stored, decision))
        self._auditor.record(
            self.ctx, interaction="search-type", action="E", decision=None,
            entities=[f"{r['resourceType']}/{r['id']}" for r in resources], patient=None,
            reason=f"{len(permitted)} permitted, {denied} withheld")
        return SearchResult(resources=resources, total=len(permitted),
                            break_glass=any(d.break_glass for _, d in page))
