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
- **kept** (:func:`read_document_metadata`, for a DocumentReference stored as one): what an MHD
  Document Source says of the document and its context that the stored record can carry as
  sent, so an ITI-67 query by it finds the document (ITI-65 2:3.65.4.1.3 asks a recipient to
  persist it). Codes carry no identifier and are kept in the restricted views (adapter.mapping.views,
  without the sender's displays); identifiers are not (the views' rules for record identifiers):

  ``type``
      R4 DocumentReference.type is 0..1 and its codings must mean the same concept
      (datatypes.html#CodeableConcept), so the sender's LOINC type cannot be added beside the
      adapter's photo-kind code (a photographed document is not an outpatient note): the sender's
      type is the stored type, and the photo kind stays what it always is too, a ``category``
      (0..*), with the ``kind`` search parameter. Without a sender's type, the kind's type.
  ``category``
      the adapter's photo-kind category first, then each of the sender's (one with the same codes
      is not repeated).
  ``securityLabel``
      the confidentiality is the more restrictive of the organisation's policy and the sender's:
      a sender may raise it (the stored record then also carries it in ``meta.security``, which
      every release keeps: adapter.mapping.views never lowers a stored confidentiality), never
      lower it. The sender's other labels (sensitivity codes) are kept after it, except those the
      adapter states itself of each release (purposes of use, obligations, integrity:
      :func:`adapter.mapping.views.is_release_label`): a sender cannot say what a record is
      permitted for, nor that it is de-identified.
  ``identifier``
      each with a system and a value (MHD's entryUUID), after the adapter's SHA-256 of the stored
      bytes; one in a system the adapter writes itself (that SHA-256, its DICOM object's SOP
      Instance UID) is not taken: it would name other bytes or another object.
  ``context.facilityType``, ``context.practiceSetting``, ``context.event``, ``content.format``
      as sent (``content.format`` instead of the adapter's mimeTypeSufficient).
  ``date``
      not kept: R4 DocumentReference.date is when *this* DocumentReference was made, and the
      stored one is made by the adapter when it stores the document; when the document was made
      is ``attachment.creation``, which is kept (ITI-67 ``creation``).

  Of each CodeableConcept its codings with a system and a code (system, version, code, display,
  userSelected) and its text are kept; of each Identifier its use, system and value. What else
  it carries (an ``id``, an extension, a coding without a system) is warned of.
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
    DICOM_UID_SYSTEM,
    FORMAT_MIME_TYPE_SUFFICIENT,
    MEDIA_TYPE,
    SD_BASE,
    SHA256_SYSTEM,
    V3_CONFIDENTIALITY,
)
from adapter.mapping.fhir_json import first_modifier
from adapter.mapping.tables import Tables
from adapter.mapping.views import confidentiality_rank, is_release_label
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
                                    "type", "category", "securityLabel", "identifier"}),
    "Media": frozenset({"resourceType", "id", "meta", "contained", "extension", "status", "modality", "subject",
                        "encounter", "createdDateTime", "operator", "bodySite", "note", "content", "height", "width",
                        "frames", "type"}),
}
#: Why an element is not kept as sent, where it is replaced rather than left out.
_WHY = {
    "date": "date was stored as when the adapter stored the document",
    "identifier": "identifier was stored as the SHA-256 of the stored bytes",
    "issued": "issued was stored as when the adapter stored the photo",
    "text": "the narrative was not stored (the adapter writes none)",
}
#: Of an attachment: what is read, or describes the bytes (recomputed from those stored; ``size``
#: and ``hash`` are first checked against the bytes sent, adapter.mapping.transaction).
_KEPT_ATTACHMENT = frozenset({"contentType", "url", "title", "creation", "size"})
#: Of DocumentReference.context: the first encounter is read; the codes and the period (its start
#: and end) kept for a DocumentReference stored as one; of a Media, the period's start is read as
#: when the photo was taken.
_KEPT_CONTEXT = frozenset({"encounter", "period", "facilityType", "practiceSetting", "event"})
#: The sender's document metadata (module docstring), kept only when the record is stored as a
#: DocumentReference: ``(element of DocumentReference, of its context, of content[0])``.
_DOCUMENT_ELEMENTS = ("type", "category", "securityLabel", "identifier")
_DOCUMENT_CONTEXT = ("facilityType", "practiceSetting", "event")
#: What of a Coding, an Identifier is kept.
_CODING_KEYS = ("system", "version", "code", "display", "userSelected")
_IDENTIFIER_KEYS = ("use", "system", "value")
#: The identifier systems the adapter writes itself of a record: the SHA-256 of the stored bytes and
#: the SOP Instance UID of its DICOM object (adapter.services.ingest). A sender's in them would name
#: other bytes or another object (and be found by a search for those): not taken.
_OWN_IDENTIFIER_SYSTEMS = frozenset({SHA256_SYSTEM, DICOM_UID_SYSTEM})


def refuse_not_understood(bundle: Mapping[str, Any], record: Mapping[str, Any], record_path: str) -> None:
    """Refuse (422) a Bundle carrying a modifier the adapter does not understand, and a record
    whose status the stored record would not keep (module docstring)."""
    found = first_modifier(bundle, "Bundle", ("modifierExtension", "implicitRules"))
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


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def kept_coding(value: Any) -> dict[str, Any] | None:
    """A Coding as the stored record keeps it (its system, version, code, display, userSelected),
    or None when it has no system and code (nothing a search could match)."""
    if not (isinstance(value, Mapping) and _text(value.get("system")) and _text(value.get("code"))):
        return None
    return {k: value[k] for k in _CODING_KEYS if k in value}


def kept_concept(value: Any) -> dict[str, Any] | None:
    """A CodeableConcept as the stored record keeps it (its codings with a system and a code, its
    text), or None when no coding has both."""
    if not isinstance(value, Mapping):
        return None
    kept = [c for c in (kept_coding(v) for v in _list(value.get("coding"))) if c is not None]
    if not kept:
        return None
    out: dict[str, Any] = {"coding": kept}
    if _text(value.get("text")):
        out["text"] = value["text"]
    return out


def _kept_identifier(value: Any) -> dict[str, Any] | None:
    if not (isinstance(value, Mapping) and _text(value.get("system")) and _text(value.get("value"))):
        return None
    if value["system"] in _OWN_IDENTIFIER_SYSTEMS:
        return None
    return {k: value[k] for k in _IDENTIFIER_KEYS if k in value}


def _confidentiality(concept: Any) -> str | None:
    """The most restrictive v3-Confidentiality code of a securityLabel concept, if it has one."""
    codes = [c.get("code") for c in (concept.get("coding") or [] if isinstance(concept, Mapping) else [])
             if isinstance(c, Mapping) and c.get("system") == V3_CONFIDENTIALITY and confidentiality_rank(
                 str(c.get("code"))) >= 0]
    return max(codes, key=lambda c: confidentiality_rank(str(c)), default=None)


def _sender_confidentiality(labels: Any) -> str | None:
    found = [c for c in (_confidentiality(v) for v in (labels if isinstance(labels, list) else [])) if c]
    return max(found, key=confidentiality_rank, default=None)


def stored_as_document_reference(record: Mapping[str, Any], kind: PhotoKind, tables: Tables) -> bool:
    """Whether the sent ``record`` is a DocumentReference stored as one (its photo kind's resource)."""
    return record.get("resourceType") == "DocumentReference" and tables.kinds[kind].resource == "DocumentReference"


def read_document_metadata(record: Mapping[str, Any], kind: PhotoKind, tables: Tables) -> dict[str, Any] | None:
    """What of the sent DocumentReference the stored one keeps beyond PhotoMetadata, as
    :class:`adapter.model.photo.DocumentMetadata` fields (module docstring); None for a record not
    stored as a DocumentReference."""
    if not stored_as_document_reference(record, kind, tables):
        return None
    out: dict[str, Any] = {}
    type_ = kept_concept(record.get("type"))
    if type_ is not None:
        out["type"] = type_
    out["category"] = [c for c in (kept_concept(v) for v in _list(record.get("category"))) if c is not None]
    policy = tables.policy.labels.confidentiality
    sent = _sender_confidentiality(record.get("securityLabel"))
    if sent is not None and confidentiality_rank(sent) > confidentiality_rank(policy):
        out["confidentiality"] = sent
    out["security_label"] = [c for v in _list(record.get("securityLabel")) if _confidentiality(v) is None
                             and not _release_label(v) and (c := kept_concept(v)) is not None]
    out["identifier"] = [i for i in (_kept_identifier(v) for v in _list(record.get("identifier"))) if i is not None]
    context = record.get("context")
    if isinstance(context, Mapping):
        for key, field in (("facilityType", "facility_type"), ("practiceSetting", "practice_setting")):
            concept = kept_concept(context.get(key))
            if concept is not None:
                out[field] = concept
        out["event"] = [c for c in (kept_concept(v) for v in _list(context.get("event"))) if c is not None]
        period = context.get("period")
        if isinstance(period, Mapping):
            kept = {key: period[key] for key in ("start", "end") if isinstance(period.get(key), str)}
            if kept:
                out["period"] = kept
    content = record.get("content")
    first = content[0] if isinstance(content, list) and content and isinstance(content[0], Mapping) else {}
    fmt = kept_coding(first.get("format"))
    if fmt is not None:
        out["format"] = fmt
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _release_label(concept: Any) -> bool:
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    return any(isinstance(c, Mapping) and is_release_label(c) for c in _list(codings))


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
    if rtype == "Media":
        if "type" in r and not _same_codes(r["type"], {(MEDIA_TYPE, "image")}):
            yield f"{path}.type", "type was stored as media-type#image"
        attachment = r.get("content")
        yield from _attachment(attachment, f"{path}.content")
        return
    # DocumentReference
    as_document = stored_as_document_reference(r, kind, tables)
    if as_document:
        yield from _document_not_kept(r, path, tables)
    else:
        for key in _DOCUMENT_ELEMENTS:
            if key in r:
                yield f"{path}.{key}", f"{key} was not stored: the photo is stored as a Media ({kind.value})"
        if "masterIdentifier" in r:
            yield f"{path}.masterIdentifier", ("masterIdentifier was stored as an identifier of the Media (the photo "
                                               f"is stored as a Media, {kind.value}, which has no masterIdentifier)")
    # the authors: adapter.mapping.transaction says which it kept (it resolves them)
    content = r.get("content")
    first = content[0] if isinstance(content, list) and content and isinstance(content[0], Mapping) else {}
    yield from _description(r, path, first.get("attachment"), as_document)
    for key in first:
        if key not in ("attachment", "format"):
            yield f"{path}.content[0].{key}", f"content.{key} was not stored"
    fmt = first.get("format")
    if as_document and fmt is not None and kept_coding(fmt) != fmt:
        yield f"{path}.content[0].format", ("content.format was stored as its system, version, code and display"
                                            if kept_coding(fmt) is not None else
                                            f"content.format (no system and code) was stored as "
                                            f"{FORMAT_MIME_TYPE_SUFFICIENT}")
    elif not as_document and fmt is not None:
        yield f"{path}.content[0].format", "content.format was not stored: the photo is stored as a Media"
    attachment = first.get("attachment")
    yield from _attachment(attachment, f"{path}.content[0].attachment")
    context = r.get("context")
    if isinstance(context, Mapping):
        for key in context:
            if key not in _KEPT_CONTEXT or (key in _DOCUMENT_CONTEXT and not as_document):
                yield f"{path}.context.{key}", f"context.{key} was not stored"
            elif key in ("facilityType", "practiceSetting"):
                yield from _concept_not_kept(context[key], f"{path}.context.{key}", f"context.{key}")
        for k, event in enumerate(_list(context.get("event")) if as_document else []):
            yield from _concept_not_kept(event, f"{path}.context.event[{k}]", "context.event")
        for k in range(1, len(context.get("encounter") or [])):
            yield f"{path}.context.encounter[{k}]", "only the first encounter was stored"
        period = context.get("period")
        if isinstance(period, Mapping) and as_document:
            for key in period:
                if key not in ("start", "end"):
                    yield f"{path}.context.period.{key}", f"context.period.{key} was not stored"
        elif isinstance(period, Mapping):
            if "end" in period:
                yield f"{path}.context.period.end", "context.period.end was not stored"
            creation = attachment.get("creation") if isinstance(attachment, Mapping) else None
            if "start" in period and creation is not None and creation != period["start"]:
                yield f"{path}.context.period.start", "context.period.start was stored as attachment.creation"


def _concept_not_kept(sent: Any, where: str, name: str) -> Iterator[tuple[str, str]]:
    """A sent CodeableConcept the stored record keeps (:func:`kept_concept`): said when not as sent."""
    stored = kept_concept(sent)
    if stored is None:
        yield where, f"{name} was not stored: it has no coding with a system and a code"
    elif stored != sent:
        yield where, f"{name} was stored as its codings with a system and a code, and its text"


def _document_not_kept(r: Mapping[str, Any], path: str, tables: Tables) -> Iterator[tuple[str, str]]:
    """The sender's type, category, securityLabel and identifier (module docstring)."""
    if "type" in r:
        if kept_concept(r["type"]) is None:
            yield f"{path}.type", "type was stored as the adapter's photo kind: it has no coding with a system and a code"
        else:
            yield from _concept_not_kept(r["type"], f"{path}.type", "type")
    for k, category in enumerate(_list(r.get("category"))):
        yield from _concept_not_kept(category, f"{path}.category[{k}]", "category")
    policy = tables.policy.labels.confidentiality
    stored = max([policy, *filter(None, [_sender_confidentiality(r.get("securityLabel"))])], key=confidentiality_rank)
    for k, label in enumerate(_list(r.get("securityLabel"))):
        where = f"{path}.securityLabel[{k}]"
        code = _confidentiality(label)
        if code is not None:
            if code != stored:
                whose = "the organisation's policy's" if stored == policy else "another label's"
                yield where, (f"securityLabel was stored as the confidentiality {stored} ({whose}), more restrictive "
                              f"than {code}: a confidentiality is never lowered")
            elif not _same_codes(label, {(V3_CONFIDENTIALITY, code)}):
                yield where, f"securityLabel was stored as the confidentiality {code} alone"
        elif _release_label(label):
            yield where, ("securityLabel was not stored: the adapter states the purposes of use, obligations and "
                          "integrity of each release itself")
        else:
            yield from _concept_not_kept(label, where, "securityLabel")
    for k, ident in enumerate(_list(r.get("identifier"))):
        kept = _kept_identifier(ident)
        if kept is None:
            yield f"{path}.identifier[{k}]", ("identifier was not stored: it needs a system and a value, in a system "
                                              f"other than the adapter's own ({SHA256_SYSTEM}, {DICOM_UID_SYSTEM})")
        elif kept != ident:
            yield f"{path}.identifier[{k}]", "identifier was stored as its use, system and value"


def _description(r: Mapping[str, Any], path: str, attachment: Any, as_document: bool) -> Iterator[tuple[str, str]]:
    """A DocumentReference's ``description``: stored after the attachment's title (the stored
    description is the title, the sender's description, the adapter's notes: adapter.mapping.photo),
    or, of one filed as a Media, as its note."""
    description = r.get("description")
    if not isinstance(description, str) or not description.strip():
        return
    if not as_document:
        yield f"{path}.description", "description was stored as a note of the Media"
        return
    title = attachment.get("title") if isinstance(attachment, Mapping) else None
    if isinstance(title, str) and title and description.split("\n\n", 1)[0] != title:
        yield f"{path}.description", ("description was stored after the attachment title: the stored description "
                                      "is the title, then the description")


def _attachment(attachment: Any, path: str) -> Iterator[tuple[str, str]]:
    for key in attachment if isinstance(attachment, Mapping) else ():
        if key == "hash":
            continue  # checked against the bytes sent; kept or said by adapter.services.transaction (stored bytes)
        if key not in _KEPT_ATTACHMENT:
            yield f"{path}.{key}", f"attachment.{key} was not stored"


__all__ = ["NOT_SAVED", "STORED_STATUS", "kept_coding", "kept_concept", "not_kept", "read_document_metadata",
           "refuse_not_understood", "stored_as_document_reference"]
