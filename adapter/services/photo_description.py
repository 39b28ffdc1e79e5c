"""The description a photo was stored with, kept with its receipt so a retry can be compared with it.

A retry of a stored photo (same patient and bytes, by ``Idempotency-Key`` or not) is answered with
the original receipt only if it describes the photo as it was stored: a retry that corrects the
side, the kind or the note would otherwise be told "stored" while the correction was dropped (a
record is not updated by ``POST /photos`` or a transaction). The IETF Idempotency-Key draft
(draft-ietf-httpapi-idempotency-key-header §2.7) refuses a key reused with another payload alike.

What is compared is the parsed metadata (:class:`adapter.model.photo.PhotoMetadata`), not its
JSON text: each field, as the model normalises it (``takenAt`` ``+00:00`` reads as ``Z``, keys in
any order, an absent field as a null one), reduced to a digest. The consent statement is left
out: it is compared with the Consent recorded (adapter.services.ingest ``_same_statement``),
which may since have been updated. Digests, not values, so the receipts table holds no note or
name of its own; one per field, so a refusal can name the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
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


def describe(meta: PhotoMetadata, *, document_whole: bool = False) -> dict[str, str]:
    """Each field of ``meta`` that says something (consent aside), by its name in the request
    (``takenAt``, ``bodySite``…), with the digest of its normalised value; what a DocumentReference
    says of the document, each part by its element (``DocumentReference.identifier``…,
    :data:`DOCUMENT_ELEMENTS`; with ``document_whole`` as the one field ``document``, as
    descriptions stored before were). A field left at its default (absent, null, an empty list) is
    not listed, so a field added to the model later leaves the descriptions stored before it
    unchanged."""
    fields = meta.model_dump(mode="json", by_alias=True, exclude={"consent"}, exclude_defaults=True)
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
    document as one field is compared so."""
    stored = receipt.get(DESCRIPTION)
    if not isinstance(stored, dict):
        return None
    wanted = describe(meta, document_whole=_DOCUMENT in stored)
    return sorted(name for name in stored.keys() | wanted.keys() if stored.get(name) != wanted.get(name))


def answered(receipt: Mapping[str, Any]) -> dict[str, Any]:
    """The receipt as the client gets it: without what is kept with it for the adapter only (each
    member whose name starts with ``_``: the description, a submission's documents)."""
    return {key: value for key, value in receipt.items() if not key.startswith("_")}
