"""The description a photo was stored with, kept with its receipt so a retry can be compared with it.

A retry of a stored photo (same patient and bytes, by ``Idempotency-Key`` or not) is answered with
the original receipt only if it describes the photo as it was stored: a retry that corrects the
side, the kind or the note would otherwise be told "stored" while the correction was dropped (a
record is not updated by ``POST /photos`` or a transaction). The IETF Idempotency-Key draft
(draft-ietf-httpapi-idempotency-key-header §2.7) refuses a key reused with another payload alike.

What is compared is the parsed metadata (:class:`adapter.model.photo.PhotoMetadata`), not its
JSON text: each field, as the model normalises it (keys in any order, an absent field as a null
one), reduced to a digest. An instant (``takenAt``, a DocumentReference's ``context.period``) is
compared as the instant it is, in UTC: ``2026-11-28T10:15:30+01:00`` and ``2026-11-28T09:15:30Z``
are the same (a retry queue re-serialising in UTC, a device changing zone between attempts). A
description stored before instants were compared so holds the digest of the instant with its
offset: a field matches either digest (:func:`differing`). The consent statement is left
out: it is compared with the Consent recorded (adapter.services.ingest ``_same_statement``),
which may since have been updated. Digests, not values, so the receipts table holds no note or
name of its own; one per field, so a refusal can name the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from adapter.model.photo import PhotoMetadata

#: The receipt's member holding the description (field name → digest). Stored with the receipt,
#: never answered (:func:`answered`); a receipt stored before it was kept has none, and its
#: retries are answered as before.
DESCRIPTION = "_description"


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


#: What a transaction's DocumentReference says of the document (``document``,
#: :class:`adapter.model.photo.DocumentMetadata`), each part by the element of the
#: DocumentReference that holds it, so a refusal names the element (its entryUUID
#: ``identifier``, its ``type``…) rather than "document".
DOCUMENT_ELEMENTS = {"type": "type", "category": "category", "security_label": "securityLabel",
                     "confidentiality": "securityLabel", "identifier": "identifier",
                     "facility_type": "context.facilityType", "practice_setting": "context.practiceSetting",
                     "event": "context.event", "period": "context.period", "format": "content[0].format"}
#: The whole ``document`` as one field: how descriptions were stored before its parts were.
_DOCUMENT = "document"


def _utc_instant(text: Any) -> Any:
    """``text``, an instant with its offset (FHIR instant or dateTime to the second or finer), as
    the same instant in UTC (``Z``); anything else (a date, a time without zone) as it is."""
    if not isinstance(text, str) or len(text) <= 10 or "T" not in text:
        return text
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    except ValueError:
        return text
    if parsed.utcoffset() is None:
        return text
    return parsed.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _instants_in_utc(fields: dict[str, Any]) -> dict[str, Any]:
    """The dumped ``fields`` with their instants in UTC: ``takenAt``, and the start and end of
    the document's ``period`` (DocumentReference.context.period)."""
    out = dict(fields)
    if "takenAt" in out:
        out["takenAt"] = _utc_instant(out["takenAt"])
    document = out.get(_DOCUMENT)
    if isinstance(document, dict) and isinstance(document.get("period"), dict):
        period = {k: _utc_instant(v) if k in ("start", "end") else v for k, v in document["period"].items()}
        out[_DOCUMENT] = {**document, "period": period}
    return out


def describe(meta: PhotoMetadata, *, document_whole: bool = False, instants_as_sent: bool = False) -> dict[str, str]:
    """Each field of ``meta`` that says something (consent aside), by its name in the request
    (``takenAt``, ``bodySite``…), with the digest of its normalised value; what a DocumentReference
    says of the document, each part by its element (``DocumentReference.identifier``…,
    :data:`DOCUMENT_ELEMENTS`; with ``document_whole`` as the one field ``document``, as
    descriptions stored before were). A field left at its default (absent, null, an empty list) is
    not listed, so a field added to the model later leaves the descriptions stored before it
    unchanged. Instants are described in UTC; with ``instants_as_sent`` with their offsets, as
    descriptions stored before were."""
    # the attachment's hash is of the bytes, which a retry's are checked to be (adapter.services.ingest)
    fields = meta.model_dump(mode="json", by_alias=True, exclude={"consent", "attachment_hash"},
                             exclude_defaults=True)
    if not instants_as_sent:
        fields = _instants_in_utc(fields)
    out = {name: _digest(value) for name, value in sorted(fields.items())
           if value not in ({}, [], None) and (document_whole or name != _DOCUMENT)}
    document = fields.get(_DOCUMENT)
    if not document_whole and isinstance(document, dict):
        parts: dict[str, list[Any]] = {}
        for name, value in sorted(document.items()):
            if value not in ({}, [], None):
                parts.setdefault(f"DocumentReference.{DOCUMENT_ELEMENTS.get(name, name)}", []).append([name, value])
        out.update({element: _digest(value) for element, value in parts.items()})
    return dict(sorted(out.items()))


def differing(receipt: Mapping[str, Any], meta: PhotoMetadata) -> list[str] | None:
    """The fields in which ``meta`` describes the photo otherwise than the one ``receipt`` was
    stored with (sorted; empty: the same description); None when the receipt keeps no description
    (stored before descriptions were kept: nothing to compare). A description stored with the
    document as one field is compared so; a field stored with its instants as sent (before they
    were described in UTC) matches that digest too."""
    stored = receipt.get(DESCRIPTION)
    if not isinstance(stored, dict):
        return None
    whole = _DOCUMENT in stored
    wanted = describe(meta, document_whole=whole)
    as_sent = describe(meta, document_whole=whole, instants_as_sent=True)
    return sorted(name for name in stored.keys() | wanted.keys() | as_sent.keys()
                  if stored.get(name) not in (wanted.get(name), as_sent.get(name)))


def answered(receipt: Mapping[str, Any]) -> dict[str, Any]:
    """The receipt as the client gets it: without what is kept with it for the adapter only (each
    member whose name starts with ``_``: the description, a submission's documents)."""
    return {key: value for key, value in receipt.items() if not key.startswith("_")}
