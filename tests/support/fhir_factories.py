"""Small factories for the FHIR mapping tests: tables, a real JPEG, stored-image facts, photo
metadata and transaction Bundles built with the adapter's own builders."""

from __future__ import annotations

import base64
import dataclasses
import io
import uuid
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

from adapter.mapping.photo import build_photo_resources
from adapter.mapping.tables import Tables, load_tables
from adapter.model.image import StoredImage
from adapter.model.photo import PhotoKind, PhotoMetadata, PhotoSource

ROOT = Path(__file__).resolve().parents[2]
PATIENT_SYSTEM = "urn:oid:2.999.1.1"
PATIENT_VALUE = "MRN-0001"
NOW = datetime(2024, 3, 1, 9, 16, 2, 120000, tzinfo=UTC)


@cache
def tables() -> Tables:
    """The project's mapping tables and policy (mappings/), loaded once (they are immutable)."""
    return load_tables(ROOT / "mappings", ROOT / "mappings" / "policy.yaml")


def policy_variant(*, consent: dict[str, Any] | None = None, break_glass: dict[str, Any] | None = None,
                   devices: dict[str, Any] | None = None) -> Tables:
    """The shipped tables with policy variants applied to copies of the nested frozen models."""
    base = tables()
    update: dict[str, Any] = {}
    if consent:
        update["consent"] = base.policy.consent.model_copy(update=consent)
    if break_glass:
        update["break_glass"] = base.policy.break_glass.model_copy(update=break_glass)
    if devices:
        update["devices"] = base.policy.devices.model_copy(update=devices)
    return dataclasses.replace(base, policy=base.policy.model_copy(update=update))


def jpeg_bytes(width: int = 700, height: int = 500, quality: int = 80) -> bytes:
    """A real baseline JPEG (JFIF, no EXIF): a gradient with a darker ellipse, like a lesion."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height))
    px = img.load()
    assert px is not None
    for y in range(height):
        for x in range(width):
            px[x, y] = (200 + (x * 40) // width, 150 + (y * 50) // height, 130)
    ImageDraw.Draw(img).ellipse((width // 3, height // 3, width // 2, height // 2), fill=(120, 60, 50))
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def stored_image(**overrides: Any) -> StoredImage:
    values: dict[str, Any] = {
        "content_type": "image/jpeg", "width": 700, "height": 500, "size": 23456,
        "sha256": "a" * 64, "received_sha256": "b" * 64, "removed": ("APP1 Exif (GPS, serial numbers)",),
        "capture_time": datetime(2024, 3, 1, 10, 15, 0), "device_name": "Acme Camera X1",
        "quality_warnings": (),
    }
    values.update(overrides)
    return StoredImage(**values)


def metadata(kind: PhotoKind | str = PhotoKind.CLINICAL, source: PhotoSource | str = PhotoSource.CLINICIAN,
             **overrides: Any) -> PhotoMetadata:
    """Metadata as a capture app sends it (aliases as in POST /photos); ``None`` drops a key."""
    kind, source = PhotoKind(kind), PhotoSource(source)
    data: dict[str, Any] = {
        "patient": {"system": PATIENT_SYSTEM, "value": PATIENT_VALUE, "reference": "Patient/p-1"},
        "kind": kind.value,
        "source": source.value,
        "author": {"reference": "Practitioner/dr-a", "display": "Dr A"},
        "encounter": {"reference": "Encounter/e-1"},
        "takenAt": "2024-03-01T10:15:00+01:00",
        "note": "Taken after dressing removal",
        "device": "organisation",
        "title": "Wound, right forearm",
    }
    if kind is PhotoKind.CLINICAL:
        data.update({"bodySite": "14975008", "laterality": "right"})
    if source is not PhotoSource.PATIENT:
        data["consent"] = {"purposes": ["TREAT"], "method": "verbal"}
    if source in (PhotoSource.COLLEAGUE_INTERNAL, PhotoSource.COLLEAGUE_EXTERNAL):
        data["colleague"] = {"name": "Dr B", "organisation": "Other Hospital",
                             "discussionNote": "Discussed by phone: refer to plastics"}
    for key, value in overrides.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return PhotoMetadata.model_validate(data)


def transaction_bundle(jpeg: bytes, *, kind: PhotoKind | str = PhotoKind.CLINICAL,
                       consent_purposes: tuple[str, ...] | None = ("TREAT",),
                       **meta_overrides: Any) -> dict[str, Any]:
    """An ITI-65-shaped transaction Bundle (Binary with data, record, optional Consent) built
    from the adapter's own builders, with urn:uuid fullUrls and POST requests."""
    t = tables()
    consent = ({"purposes": list(consent_purposes), "method": "verbal", "date": "2024-03-01"}
               if consent_purposes else None)
    meta = metadata(kind, PhotoSource.CLINICIAN, consent=consent, **meta_overrides)
    image = stored_image(size=len(jpeg), capture_time=None, device_name=None)
    built = build_photo_resources(
        meta, image, record_id=str(uuid.uuid4()), binary_id="bin", provenance_id="prov",
        consent_ids=["consent"], assessment_notes=(), assessment_warnings=(), consent_pending=False,
        implied_purposes=(), tables=t, now=NOW)
    urls = {name: uuid.uuid4().urn for name in ("binary", "record", "consent")}
    record = {k: v for k, v in built.record.items() if k != "id"}
    if record["resourceType"] == "Media":
        record["content"] = {**record["content"], "url": urls["binary"]}
    else:
        record.pop("masterIdentifier", None)
        record["content"] = [{**record["content"][0],
                              "attachment": {**record["content"][0]["attachment"], "url": urls["binary"]}}]
    binary = {"resourceType": "Binary", "contentType": "image/jpeg",
              "securityContext": {"reference": urls["record"]},
              "data": base64.b64encode(jpeg).decode("ascii")}
    entries = [
        {"fullUrl": urls["binary"], "resource": binary, "request": {"method": "POST", "url": "Binary"}},
        {"fullUrl": urls["record"], "resource": record,
         "request": {"method": "POST", "url": record["resourceType"]}},
    ]
    if built.consents:
        consent_resource = {k: v for k, v in built.consents[0].items() if k != "id"}
        # a Document Source does not know the record's id; the Consent recorded names it
        consent_resource["provision"] = {k: v for k, v in consent_resource["provision"].items() if k != "data"}
        entries.append({"fullUrl": urls["consent"], "resource": consent_resource,
                        "request": {"method": "POST", "url": "Consent"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
