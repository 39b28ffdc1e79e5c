"""What of a record sent in an ITI-65 transaction the adapter keeps, refuses or says it did not
keep (IHE MHD ITI-65 2:3.65.4.1.3: a Document Recipient persists the metadata, or rejects the
submission, or warns in the entry's ``response.outcome``).

The record the adapter stores is built from ``PhotoMetadata`` (adapter.mapping.transaction reads
it), not copied from what was sent. So:

- **refused** (:func:`refuse_not_understood`): a modifier it does not understand anywhere in the
  Bundle (``modifierExtension``, ``implicitRules``: FHIR extensibility.html#modifierExtension, "SHALL
  NOT process the resource as if it were absent"), and a record whose ``status`` is not the one
  the adapter stores (DocumentReference ``current``, Media ``completed``): stored as that, an
  entered-in-error or superseded document would read as a current one;
- **warned** (:func:`not_kept`): every other element sent that the stored record does not carry
  as sent, each named by its path (``XDSExtraMetadataNotSaved``, ITI TF-3 Table 4.2.4.1-2). An
  allow-list: an element not listed as kept is warned of, so an element the adapter has never
  heard of is never dropped in silence.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from adapter.errors import BusinessRuleViolation
from adapter.mapping.codes import (
    FORMAT_MIME_TYPE_SUFFICIENT,
    IHE_FORMAT_CODE,
    MEDIA_TYPE,
    SD_BASE,
    V3_CONFIDENTIALITY,
)
from adapter.mapping.tables import Tables
from adapter.model.photo import PhotoKind

#: The Document Sharing warning for metadata a recipient did not save (ITI TF-3 Table 4.2.4.1-2).
NOT_SAVED = "XDSExtraMetadataNotSaved"
#: The status every stored record has (adapter.mapping.photo).
STORED_STATUS = {"DocumentReference": "current", "Media": "completed"}
#: Elements read into the stored record (or recomputed from the image, and our own extensions'
#: values), per type; checked one by one where the stored value may differ from the sent one
#: (below). ``relatesTo`` has its own warning (adapter.mapping.transaction).
_KEPT = {
    "DocumentReference": frozenset({"resourceType", "id", "meta", "contained", "extension", "masterIdentifier",
                                    "status", "subject", "author", "description", "content", "context", "relatesTo",
                                    "type", "category", "securityLabel"}),
    "Media": frozenset({"resourceType", "id", "meta", "contained", "extension", "status", "modality", "subject",
                        "encounter", "createdDateTime", "operator", "bodySite", "note", "content", "height", "width",
                        "frames", "type"}),
}
#: Why an element is not kept as sent, where it is replaced rather than left out.
_WHY = {
    "date": "date was stored as when the adapter stored the document",
    "identifier": "identifier was stored as the SHA-256 of the stored bytes (a DocumentReference's masterIdentifier "
                  "is kept)",
    "issued": "issued was stored as when the adapter stored the photo",
    "text": "the narrative was not stored (the adapter writes none)",
}
#: Of an attachment: what is read, or describes the bytes (recomputed from those stored).
_KEPT_ATTACHMENT = frozenset({"contentType", "url", "title", "creation", "size", "hash"})
#: Of DocumentReference.context: the first encounter and the period's start are read.
_KEPT_CONTEXT = frozenset({"encounter", "period"})


def _modifier(value: Any, path: str) -> str | None:
    """The path of the first modifier element (``modifierExtension``, ``implicitRules``) in ``value``."""
    if isinstance(value, Mapping):
        for key in ("modifierExtension", "implicitRules"):
            if key in value:
                return f"{path}.{key}"
        for key, item in value.items():
            found = _modifier(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list):
        for k, item in enumerate(value):
            found = _modifier(item, f"{path}[{k}]")
            if found is not None:
                return found
    return None


def refuse_not_understood(bundle: Mapping[str, Any], record: Mapping[str, Any], record_path: str) -> None:
    """Refuse (422) a Bundle carrying a modifier the adapter does not understand, and a record
    whose status the stored record would not keep (module docstring)."""
    found = _modifier(bundle, "Bundle")
    if found is not None:
        raise BusinessRuleViolation("the adapter does not understand this modifier, and may not ignore it (FHIR "
                                    "extensibility: a modifier changes the meaning of what holds it): nothing was "
                                    "stored", expression=found)
    rtype = str(record.get("resourceType"))
    expected = STORED_STATUS.get(rtype)
    if expected is not None and record.get("status") != expected:
        raise BusinessRuleViolation(f"the adapter stores a {rtype} as {expected} only: stored so, this one (status "
                                    f"{str(record.get('status'))[:30]}) would read as another; nothing was stored",
                                    expression=f"{record_path}.status")


def _codes(concept: Any) -> set[tuple[Any, Any]]:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return {(c.get("system"), c.get("code")) for c in codings or [] if isinstance(c, Mapping)}


def _same_codes(sent: Any, stored: set[tuple[Any, Any]]) -> bool:
    """Whether a sent CodeableConcept (or list of them) codes nothing but what is stored."""
    concepts = sent if isinstance(sent, list) else [sent]
    return all(_codes(c) and _codes(c) <= stored and not (isinstance(c, Mapping) and "text" in c) for c in concepts)


def not_kept(record: Mapping[str, Any], path: str, kind: PhotoKind, tables: Tables) -> list[tuple[str, str]]:
    """``(expression, diagnostics)`` for each element of the sent ``record`` (at ``path``) the
    stored record does not carry as sent; ``kind`` is the photo kind it is stored as."""
    return list(_not_kept(record, path, kind, tables))


def _not_kept(r: Mapping[str, Any], path: str, kind: PhotoKind, tables: Tables) -> Iterator[tuple[str, str]]:
    rtype = str(r.get("resourceType"))
    kept = _KEPT.get(rtype, frozenset())
    for key in r:
        if key not in kept:
            yield f"{path}.{key}", _WHY.get(key, f"{key} was not stored")
    for k, ext in enumerate(r.get("extension") or []):
        url = ext.get("url") if isinstance(ext, Mapping) else None
        if not (isinstance(url, str) and url.startswith(SD_BASE)):
            yield f"{path}.extension[{k}]", f"the extension {str(url)[:80]} was not stored"
    entry = tables.kinds[kind]
    if rtype == "Media":
        if "type" in r and not _same_codes(r["type"], {(MEDIA_TYPE, "image")}):
            yield f"{path}.type", "type was stored as media-type#image"
        attachment = r.get("content")
        yield from _attachment(attachment, f"{path}.content")
        return
    # DocumentReference
    for key, stored in (("type", entry.type), ("category", entry.category)):
        if key in r and (stored is None or not _same_codes(r[key], {(stored.as_fhir()["system"],
                                                                      stored.as_fhir()["code"])})):
            yield f"{path}.{key}", f"{key} was stored as the adapter's photo kind ({kind.value}), not as sent"
    label = tables.policy.labels.confidentiality
    if "securityLabel" in r and not _same_codes(r["securityLabel"], {(V3_CONFIDENTIALITY, label)}):
        yield f"{path}.securityLabel", f"securityLabel was stored as the policy's confidentiality ({label})"
    for k in range(1, len(r.get("author") or [])):
        yield f"{path}.author[{k}]", "only the first author was stored"
    content = r.get("content")
    first = content[0] if isinstance(content, list) and content and isinstance(content[0], Mapping) else {}
    for key in first:
        if key not in ("attachment", "format"):
            yield f"{path}.content[0].{key}", f"content.{key} was not stored"
    fmt = first.get("format")
    if fmt is not None and not (isinstance(fmt, Mapping) and (fmt.get("system"), fmt.get("code"))
                                == (IHE_FORMAT_CODE, FORMAT_MIME_TYPE_SUFFICIENT)):
        yield f"{path}.content[0].format", f"content.format was stored as {FORMAT_MIME_TYPE_SUFFICIENT}"
    attachment = first.get("attachment")
    yield from _attachment(attachment, f"{path}.content[0].attachment")
    context = r.get("context")
    if isinstance(context, Mapping):
        for key in context:
            if key not in _KEPT_CONTEXT:
                yield f"{path}.context.{key}", f"context.{key} was not stored"
        for k in range(1, len(context.get("encounter") or [])):
            yield f"{path}.context.encounter[{k}]", "only the first encounter was stored"
        period = context.get("period")
        if isinstance(period, Mapping):
            if "end" in period:
                yield f"{path}.context.period.end", "context.period.end was not stored"
            creation = attachment.get("creation") if isinstance(attachment, Mapping) else None
            if "start" in period and creation is not None and creation != period["start"]:
                yield f"{path}.context.period.start", "context.period.start was stored as attachment.creation"


def _attachment(attachment: Any, path: str) -> Iterator[tuple[str, str]]:
    for key in attachment if isinstance(attachment, Mapping) else ():
        if key not in _KEPT_ATTACHMENT:
            yield f"{path}.{key}", f"attachment.{key} was not stored"


__all__ = ["NOT_SAVED", "STORED_STATUS", "not_kept", "refuse_not_understood"]
