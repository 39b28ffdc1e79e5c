"""Search result Bundles (https://hl7.org/fhir/R4/bundle.html, https://hl7.org/fhir/R4/search.html).

The Bundle is labelled with the most confidential label of its entries: "a Bundle is as
confidential as its most confidential entry" (https://hl7.org/fhir/R4/security-labels.html,
standards.md §6.5), in the v3-Confidentiality order U < L < M < N < R < V.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any, Literal

from adapter.errors import NotSupported
from adapter.mapping import codes
from adapter.mapping.views import confidentiality_coding, confidentiality_rank

JSON = dict[str, Any]


def bundle_confidentiality(entries: Sequence[JSON]) -> JSON | None:
    """The v3-Confidentiality Coding of the most confidential entry (its ``meta.security``),
    or None when no entry carries one."""
    best: str | None = None
    for resource in entries:
        meta = resource.get("meta")
        labels = meta.get("security") if isinstance(meta, dict) else None
        for label in labels if isinstance(labels, list) else []:
            if not isinstance(label, dict) or label.get("system") != codes.V3_CONFIDENTIALITY:
                continue
            code = label.get("code")
            if isinstance(code, str) and confidentiality_rank(code) >= 0 and (
                    best is None or confidentiality_rank(code) > confidentiality_rank(best)):
                best = code
    return confidentiality_coding(best) if best is not None else None


def _bundle(bundle_type: str, resources: Sequence[JSON], *, total: int | None, self_url: str,
            next_url: str | None, first_url: str | None = None, previous_url: str | None = None) -> JSON:
    """A Bundle's head: the label of its most confidential resource, type, total (left out when
    None: not counted) and the paging links: self, then first, previous and next where given
    (http.html#paging)."""
    bundle: JSON = {"resourceType": "Bundle"}
    label = bundle_confidentiality(resources)
    if label is not None:
        bundle["meta"] = {"security": [label]}
    bundle["type"] = bundle_type
    if total is not None:
        bundle["total"] = total
    links = [{"relation": "self", "url": self_url}]
    for relation, url in (("first", first_url), ("previous", previous_url), ("next", next_url)):
        if url:
            links.append({"relation": relation, "url": url})
    bundle["link"] = links
    return bundle


def searchset(entries: Sequence[JSON], *, total: int | None, self_url: str, next_url: str | None, base_url: str,
              fhir_version: Literal["4", "5"], included: Sequence[JSON] = (), first_url: str | None = None,
              previous_url: str | None = None) -> JSON:
    """A ``searchset`` Bundle of ``entries`` (resources already rendered for the reader), then
    the ``included`` ones (``_include``/``_revinclude``, ``search.mode`` ``include``).

    Each entry gets ``fullUrl`` ``<base_url>/<type>/<id>`` and ``search.mode`` ``match``; an
    OperationOutcome entry (e.g. a break-the-glass notice) gets ``search.mode`` ``outcome`` and,
    when it has no id, no fullUrl in R4 and a ``urn:uuid`` one in R5, which requires a fullUrl in
    every searchset entry (see :func:`outcome_entry`;
    https://hl7.org/fhir/R4/bundle-definitions.html#Bundle.entry.search.mode).
    Links: ``self``; ``first`` and ``previous`` on a page after the first; ``next`` when there
    is a next page. ``fhir_version`` "5" refuses an
    R4-only resource (Media) - convert entries with :func:`adapter.mapping.r5.to_r5` first.
    """
    if fhir_version not in ("4", "5"):
        raise NotSupported(f"unknown FHIR version {fhir_version!r}")
    if total is not None and total < 0:
        raise ValueError("total must not be negative")
    base = base_url.rstrip("/")
    bundle = _bundle("searchset", [*entries, *included], total=total, self_url=self_url, next_url=next_url,
                     first_url=first_url, previous_url=previous_url)
    out_entries: list[JSON] = []
    for resource, mode in [*((e, "match") for e in entries), *((e, "include") for e in included)]:
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            raise TypeError("a Bundle entry needs a resourceType")
        if fhir_version == "5" and resource_type == "Media":
            raise NotSupported("Media does not exist in FHIR R5; convert it to DocumentReference first")
        entry: JSON = {}
        rid = resource.get("id")
        if isinstance(rid, str) and rid:
            entry["fullUrl"] = f"{base}/{resource_type}/{rid}"
        elif fhir_version == "5":
            entry["fullUrl"] = _anonymous_full_url()
        entry["resource"] = resource
        entry["search"] = {"mode": "outcome" if resource_type == "OperationOutcome" else mode}
        out_entries.append(entry)
    if out_entries:
        bundle["entry"] = out_entries
    return bundle


def _anonymous_full_url() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def outcome_entry(outcome: JSON, *, fhir_version: Literal["4", "5"]) -> JSON:
    """A searchset entry for an OperationOutcome about the search itself (``search.mode``
    ``outcome``: parameters left out, a break-the-glass notice). Such an outcome has no RESTful
    identity; R5 requires a fullUrl in every entry of a searchset (Bundle invariant bdl-15,
    https://hl7.org/fhir/R5/bundle.html#invs), so in R5 it is a fresh ``urn:uuid``
    (https://hl7.org/fhir/R5/bundle-definitions.html#Bundle.entry.fullUrl)."""
    entry: JSON = {"fullUrl": _anonymous_full_url()} if fhir_version == "5" else {}
    entry["resource"] = outcome
    entry["search"] = {"mode": "outcome"}
    return entry


def history(resources: Sequence[JSON], *, total: int, self_url: str, next_url: str | None, base_url: str,
            first_url: str | None = None, previous_url: str | None = None) -> JSON:
    """A ``history`` Bundle (https://hl7.org/fhir/R4/http.html#history) of the versions of one
    resource, newest first, already rendered for the reader. Each entry says how the version
    came about, as the history interaction does: ``request`` POST for version 1 (the create),
    PUT for later ones; ``response`` with the status, the version's ETag and, where the view
    shows it, its lastUpdated as ``lastModified``."""
    base = base_url.rstrip("/")
    bundle = _bundle("history", resources, total=total, self_url=self_url, next_url=next_url, first_url=first_url,
                     previous_url=previous_url)
    entries: list[JSON] = []
    for resource in resources:
        rtype, rid = resource["resourceType"], resource["id"]
        meta = resource.get("meta") or {}
        version = str(meta.get("versionId", ""))
        created = version == "1"
        response: JSON = {"status": "201 Created" if created else "200 OK"}
        if version:
            response["etag"] = f'W/"{version}"'
        if meta.get("lastUpdated"):
            response["lastModified"] = meta["lastUpdated"]
        entries.append({"fullUrl": f"{base}/{rtype}/{rid}", "resource": resource,
                        "request": {"method": "POST" if created else "PUT",
                                    "url": rtype if created else f"{rtype}/{rid}"},
                        "response": response})
    if entries:
        bundle["entry"] = entries
    return bundle


__all__ = ["bundle_confidentiality", "history", "outcome_entry", "searchset"]
