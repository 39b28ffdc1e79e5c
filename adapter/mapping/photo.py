"""Photo + metadata → R4 resources: the record (Media, or DocumentReference for photographed
documents), its Binary, the Consents documented with it and its Provenance.

Sources: https://hl7.org/fhir/R4/media.html, https://hl7.org/fhir/R4/documentreference.html,
https://hl7.org/fhir/R4/binary.html, IHE MHD (https://profiles.ihe.net/ITI/MHD/) for the
DocumentReference shape, standards.md §2 and §4.8.

Decisions (also in the builders' docstrings):

* **Attachment.hash only as sent.** R4 defines it as the SHA-1 of the data; we identify the
  stored bytes by SHA-256 instead, as ``identifier`` {system urn:clinical-image-adapter:sha256}.
  A transaction's record keeps the SHA-1 its sender gave (checked against the bytes sent) when
  the bytes are stored as sent (no metadata removed), so a consumer can check it.
* **Binary without data.** The bytes live in the blob store; the read path adds ``data``.
  ``securityContext`` points at the record, so the record's consent governs the Binary.
* **bodySite** is one SNOMED coding of the site (display from mappings/body_sites.yaml) plus
  ``text`` ("Forearm, right"); the laterality is an extension (valueCoding, SNOMED CID 244) on
  the CodeableConcept. Codings in one CodeableConcept are alternatives for the *same* concept
  (https://hl7.org/fhir/R4/datatypes.html#CodeableConcept), so laterality as a second coding
  (standards.md §4.8 ⚠) would say "forearm *or* right".
* **Notes.** Media.note: the sender's note, then the ingest assessment's notes (colleague
  discussion, secondary-image warning), then assessment warnings not already among the notes,
  then "Quality warning: …" per quality warning; generated notes carry the ingest time. R4
  DocumentReference has no note: the same texts go, after the title, into ``description``.
* **Consent pending, then documented.** A record kept consent pending carries the
  consent-pending extension and the ingest's warning as a note; the version written when a
  Consent documents consent for care (:func:`consent_documented`) has neither, and a note saying
  when and by which Consent in the warning's place.
* **Naive times** become date-only dateTimes (adapter.mapping.fhir_r4).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from adapter.errors import UnknownCode
from adapter.mapping.codes import (
    EXT_CAPTURE_DEVICE,
    EXT_CONSENT_PENDING,
    EXT_LATERALITY,
    EXT_PHOTO_KIND,
    EXT_PHOTO_SOURCE,
    EXT_QUALITY_WARNING,
    FORMAT_MIME_TYPE_SUFFICIENT,
    IHE_FORMAT_CODE,
    MEDIA_TYPE,
    SHA256_SYSTEM,
    URN_IETF_RFC_3986,
    V3_CONFIDENTIALITY,
)
from adapter.mapping.consent import build_consent_resource, consent_from_statement
from adapter.mapping.fhir_r4 import (
    JSON,
    audit_event_to_index,
    coding,
    concept,
    consent_to_index,
    display_reference,
    extension,
    fhir_datetime,
    fhir_instant,
    identifier,
    index_resource,
    patient_reference,
    provenance_to_index,
    record_to_index,
    reference,
)
from adapter.mapping.provenance import build_provenance, taken_time
from adapter.mapping.tables import KindEntry, Tables
from adapter.mapping.views import confidentiality_coding, confidentiality_rank
from adapter.model.image import StoredImage
from adapter.model.photo import ConsentMethod, PhotoMetadata, PhotoSource, TransactionPhotoMetadata

CONFIDENTIALITY_DISPLAY = {"U": "unrestricted", "L": "low", "M": "moderate", "N": "normal",
                           "R": "restricted", "V": "very restricted"}
QUALITY_WARNING_PREFIX = "Quality warning: "
_COLLEAGUE_SOURCES = frozenset({PhotoSource.COLLEAGUE_INTERNAL, PhotoSource.COLLEAGUE_EXTERNAL})


@dataclass(frozen=True)
class PhotoResources:
    """Everything one photo ingest writes, as R4 JSON."""

    record: JSON
    binary: JSON
    consents: list[JSON]
    provenance: JSON

    @property
    def record_type(self) -> str:
        return str(self.record["resourceType"])

    @property
    def record_ref(self) -> str:
        return f"{self.record['resourceType']}/{self.record['id']}"

    def all(self) -> list[JSON]:
        """Record, Binary, Consents, Provenance: the order they are written and referenced in."""
        return [self.record, self.binary, *self.consents, self.provenance]


# ---------------------------------------------------------------------------------------------
# shared pieces


def _extensions(meta: PhotoMetadata, image: StoredImage, consent_pending: bool) -> list[JSON]:
    out = [extension(EXT_PHOTO_KIND, "Code", meta.kind.value),
           extension(EXT_PHOTO_SOURCE, "Code", meta.source.value)]
    if meta.device is not None:
        out.append(extension(EXT_CAPTURE_DEVICE, "Code", meta.device.value))
    if consent_pending:
        out.append(extension(EXT_CONSENT_PENDING, "Boolean", True))
    out.extend(extension(EXT_QUALITY_WARNING, "String", w) for w in image.quality_warnings)
    return out


def _note_texts(meta: PhotoMetadata, image: StoredImage, assessment_notes: Sequence[str],
                assessment_warnings: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the sender's notes, generated notes) in the order they are written."""
    sender = [meta.note] if meta.note and meta.note.strip() else []
    generated = list(dict.fromkeys(n for n in assessment_notes if n))
    generated += [w for w in dict.fromkeys(assessment_warnings) if w and w not in generated]
    generated += [QUALITY_WARNING_PREFIX + w for w in image.quality_warnings]
    return sender, generated


def body_site_concept(code: str, laterality: str | None, tables: Tables) -> JSON:
    """Media.bodySite: one SNOMED coding, ``text``, laterality as an extension (module docstring).

    Raises:
        UnknownCode: the code is not in mappings/body_sites.yaml (expression ``bodySite``).
    """
    table = tables.body_sites
    display = table.codes.get(code)
    if display is None:
        raise UnknownCode(f"body site {code} is not one of the SNOMED CT codes accepted "
                          "(mappings/body_sites.yaml)", expression="bodySite")
    out: JSON = {}
    text = display
    if laterality is not None:
        side = table.laterality[laterality]
        side_coding = coding(table.system, side.code, side.display)
        out["extension"] = [extension(EXT_LATERALITY, "Coding", side_coding)]
        text = f"{display}, {side.display.lower()}"
    out["coding"] = [coding(table.system, code, display)]
    out["text"] = text
    return out


def _attachment(meta: PhotoMetadata, image: StoredImage, binary_id: str, kind: KindEntry) -> JSON:
    out: JSON = {
        "contentType": image.content_type,
        "url": f"Binary/{binary_id}",
        "size": image.size,
        "title": meta.title or kind.display,
    }
    if isinstance(meta, TransactionPhotoMetadata) and meta.attachment_hash and image.sha256 == image.received_sha256:
        out["hash"] = meta.attachment_hash  # the sender's SHA-1, checked against the bytes sent, which are those stored
    taken = taken_time(meta, image)
    if taken is not None:
        out["creation"] = fhir_datetime(taken)
    return out


def _same_codes(a: JSON, b: JSON) -> bool:
    """Whether two CodeableConcepts have the same codings (system and code)."""
    def codes(c: JSON) -> set[tuple[Any, Any]]:
        return {(x.get("system"), x.get("code")) for x in c.get("coding") or []}
    return codes(a) == codes(b)


def _sha256_identifier(image: StoredImage) -> list[JSON]:
    return [{"system": SHA256_SYSTEM, "value": image.sha256}]


def _author(meta: PhotoMetadata) -> JSON | None:
    """Who produced the photo: the colleague for colleague sources (display only), else the
    metadata's author. None for a patient's photo without an author."""
    if meta.source in _COLLEAGUE_SOURCES and meta.colleague is not None:
        return display_reference(meta.colleague.name)
    if meta.source is PhotoSource.PATIENT:
        return None
    return reference(meta.author) if meta.author is not None else None


# ---------------------------------------------------------------------------------------------
# records


def photo_to_media(meta: PhotoMetadata, image: StoredImage, *, record_id: str, binary_id: str,
                   assessment_notes: Sequence[str] = (), assessment_warnings: Sequence[str] = (),
                   consent_pending: bool = False, tables: Tables, now: datetime) -> JSON:
    """R4 Media (https://hl7.org/fhir/R4/media.html) for a clinical or secondary photo.

    status completed; type media-type#image; modality from mappings/kinds.yaml; subject the
    patient by identifier; createdDateTime = takenAt, else the EXIF capture time; issued = now;
    operator = the author (the colleague for colleague sources, none for the patient's own
    photos); deviceName = camera make and model; content points at the Binary (its hash: module
    docstring); identifier = SHA-256 of the stored bytes, then the masterIdentifier its source gave
    (``meta.masterIdentifier``: a Media has none, so an IHE MHD Document Source's uniqueId, of a
    DocumentReference filed as a Media, stays findable by ``identifier``).
    """
    kind = tables.kinds[meta.kind]
    resource: JSON = {
        "resourceType": "Media",
        "id": record_id,
        "extension": _extensions(meta, image, consent_pending),
        "identifier": _sha256_identifier(image) + ([identifier(meta.master_identifier)]
                                                    if meta.master_identifier is not None else []),
        "status": "completed",
        "type": concept(coding(MEDIA_TYPE, "image", "Image")),
        "modality": concept(kind.modality.as_fhir()),
        "subject": patient_reference(meta.patient),
    }
    if meta.encounter is not None:
        resource["encounter"] = reference(meta.encounter, "Encounter")
    taken = taken_time(meta, image)
    if taken is not None:
        resource["createdDateTime"] = fhir_datetime(taken)
    resource["issued"] = fhir_instant(now)
    operator = _author(meta)
    if operator is not None:
        resource["operator"] = operator
    if meta.body_site is not None:
        resource["bodySite"] = body_site_concept(
            meta.body_site, meta.laterality.value if meta.laterality else None, tables)
    if image.device_name:
        resource["deviceName"] = image.device_name
    if image.height > 0 and image.width > 0:  # positiveInt; 0 is unknown (a DICOM object without Rows/Columns)
        # The sides as the photo is shown: EXIF Orientation 5..8 turns the stored pixels a quarter
        # turn, as every viewer (and the de-identified view's upright bytes, and the DICOM copy's
        # Rows/Columns) shows them.
        turned = image.orientation is not None and 5 <= image.orientation <= 8
        resource["height"], resource["width"] = (image.width, image.height) if turned else (image.height, image.width)
    resource["content"] = _attachment(meta, image, binary_id, kind)
    sender, generated = _note_texts(meta, image, assessment_notes, assessment_warnings)
    notes = [{"text": t} for t in sender] + [{"time": fhir_instant(now), "text": t} for t in generated]
    if notes:
        resource["note"] = notes
    return resource


def photo_to_document_reference(meta: PhotoMetadata, image: StoredImage, *, record_id: str,
                                binary_id: str, assessment_notes: Sequence[str] = (),
                                assessment_warnings: Sequence[str] = (), consent_pending: bool = False,
                                tables: Tables, now: datetime) -> JSON:
    """R4 DocumentReference (https://hl7.org/fhir/R4/documentreference.html), MHD-like, for a
    photographed document.

    status current; masterIdentifier the one its source gave (``meta.masterIdentifier``: an MHD
    Document Source's uniqueId, which ITI-67 ``identifier`` finds), else urn:uuid of the record id
    (MHD requires one); identifier
    SHA-256; type and category from mappings/kinds.yaml; date = now; author = the author (the
    colleague for colleague sources); description = title, the sender's note and the generated
    notes (R4 DocumentReference has no note element); securityLabel = the policy's
    confidentiality; content.format = IHE formatCode mimeTypeSufficient; context.encounter and
    context.period.start (when the photo was taken). Body site and laterality are not
    representable in R4 DocumentReference and are left out.

    A document sent in a transaction (``meta.document``: what its IHE MHD Document Source said,
    as adapter.mapping.document_metadata keeps it) also has the sender's identifiers (entryUUID)
    after the SHA-256, the sender's type instead of the kind's (R4 type is 0..1 and its codings
    must mean one concept: the photo kind stays a category), the sender's categories after the
    kind's, the sender's confidentiality when more restrictive than the policy's (also in
    ``meta.security``, so every release carries it) and its other labels, its content.format,
    context.event, facilityType, practiceSetting and period (start and end as sent, instead of
    when the photo was taken).
    """
    kind = tables.kinds[meta.kind]
    sent = meta.document if isinstance(meta, TransactionPhotoMetadata) else None
    label = tables.policy.labels.confidentiality
    if sent is not None and sent.confidentiality is not None \
            and confidentiality_rank(sent.confidentiality) > confidentiality_rank(label):
        label = sent.confidentiality
    resource: JSON = {"resourceType": "DocumentReference", "id": record_id}
    if label != tables.policy.labels.confidentiality:
        # every release keeps a stored confidentiality more restrictive than the policy's (adapter.mapping.views)
        resource["meta"] = {"security": [confidentiality_coding(label)]}
    resource["extension"] = _extensions(meta, image, consent_pending)
    if meta.master_identifier is not None:
        resource["masterIdentifier"] = identifier(meta.master_identifier)
    else:
        try:
            resource["masterIdentifier"] = {"system": URN_IETF_RFC_3986, "value": uuid.UUID(record_id).urn}
        except ValueError:
            pass  # not a UUID: the SHA-256 identifier still identifies the document
    resource["identifier"] = _sha256_identifier(image) + [dict(i) for i in (sent.identifier if sent else ())]
    resource["status"] = "current"
    if sent is not None and sent.type is not None:
        resource["type"] = copy.deepcopy(sent.type)
    elif kind.type is not None:
        resource["type"] = concept(kind.type.as_fhir())
    categories = [concept(kind.category.as_fhir())]
    for category in sent.category if sent else ():
        if not any(_same_codes(category, c) for c in categories):
            categories.append(copy.deepcopy(category))
    resource["category"] = categories
    resource["subject"] = patient_reference(meta.patient)
    resource["date"] = fhir_instant(now)
    author = _author(meta)
    if author is not None:
        resource["author"] = [author]
    sender, generated = _note_texts(meta, image, assessment_notes, assessment_warnings)
    description = [t for t in [meta.title, *sender, *generated] if t]
    if description:
        resource["description"] = "\n\n".join(description)
    label_coding = coding(V3_CONFIDENTIALITY, label, CONFIDENTIALITY_DISPLAY.get(label))
    resource["securityLabel"] = [concept(label_coding)] + [copy.deepcopy(c) for c in (sent.security_label if sent
                                                                                       else ())]
    fmt = copy.deepcopy(sent.format) if sent is not None and sent.format is not None else \
        coding(IHE_FORMAT_CODE, FORMAT_MIME_TYPE_SUFFICIENT)
    resource["content"] = [{"attachment": _attachment(meta, image, binary_id, kind), "format": fmt}]
    context: JSON = {}
    if meta.encounter is not None:
        context["encounter"] = [reference(meta.encounter, "Encounter")]
    if sent is not None and sent.event:
        context["event"] = copy.deepcopy(list(sent.event))
    taken = taken_time(meta, image)
    if sent is not None and sent.period is not None:
        context["period"] = copy.deepcopy(sent.period)
    elif taken is not None:
        # a photograph is taken at an instant: the period of the service it records begins and
        # ends then (a start alone is a period still going on, which ITI-67 period=ge<any future
        # date> matched: MHD review m3)
        context["period"] = {"start": fhir_datetime(taken), "end": fhir_datetime(taken)}
    if sent is not None and sent.facility_type is not None:
        context["facilityType"] = copy.deepcopy(sent.facility_type)
    if sent is not None and sent.practice_setting is not None:
        context["practiceSetting"] = copy.deepcopy(sent.practice_setting)
    if context:
        resource["context"] = context
    return resource


def photo_to_binary(image: StoredImage, *, binary_id: str, record_ref: str,
                    security: Sequence[JSON] = ()) -> JSON:
    """R4 Binary (https://hl7.org/fhir/R4/binary.html) without ``data``: the bytes live in the
    blob store and the read path adds them. securityContext = the record, whose consent
    governs the Binary (standards.md §2.3); ``security``: the record's stored ``meta.security``
    (a confidentiality its source raised), which the Binary's content carries as well."""
    out: JSON = {"resourceType": "Binary", "id": binary_id}
    if security:
        out["meta"] = {"security": [dict(c) for c in security]}
    out.update({"contentType": image.content_type, "securityContext": {"reference": record_ref}})
    return out


# ---------------------------------------------------------------------------------------------
# everything for one photo


def build_photo_resources(meta: PhotoMetadata, image: StoredImage, *, record_id: str, binary_id: str,
                          provenance_id: str, consent_ids: Sequence[str], assessment_notes: Sequence[str],
                          assessment_warnings: Sequence[str], consent_pending: bool,
                          implied_purposes: Sequence[str], tables: Tables, now: datetime) -> PhotoResources:
    """All R4 resources for one photo.

    The record is a Media or a DocumentReference as mappings/kinds.yaml says for the kind.
    Consents, in this order, take their ids from ``consent_ids``: the ``consent`` statement sent
    with the photo (recorded by its ``recordedBy``, else the photo's author), then, when
    ``implied_purposes`` is not empty, an IMPLIED Consent; both restricted to this record
    (provision.data). ``consent_pending`` adds the consent-pending extension.

    Raises:
        ValueError: fewer ``consent_ids`` than Consents to create, or ``now`` is naive.
        UnknownCode: ``meta.body_site`` is not in mappings/body_sites.yaml.
        InvalidInput: the consent form is not base64.
    """
    kind = tables.kinds[meta.kind]
    record_ref = f"{kind.resource}/{record_id}"
    build = photo_to_media if kind.resource == "Media" else photo_to_document_reference
    record = build(meta, image, record_id=record_id, binary_id=binary_id, assessment_notes=assessment_notes,
                   assessment_warnings=assessment_warnings, consent_pending=consent_pending,
                   tables=tables, now=now)
    binary = photo_to_binary(image, binary_id=binary_id, record_ref=record_ref,
                             security=(record.get("meta") or {}).get("security") or ())

    needed = (1 if meta.consent is not None else 0) + (1 if implied_purposes else 0)
    if len(consent_ids) < needed:
        raise ValueError(f"{needed} consent id(s) needed, {len(consent_ids)} given")
    ids = iter(consent_ids)
    consents: list[JSON] = []
    if meta.consent is not None:
        consents.append(consent_from_statement(meta.consent, consent_id=next(ids), patient=meta.patient,
                                               tables=tables, now=now, recorded_by=meta.author,
                                               record_ref=record_ref))
    if implied_purposes:
        consents.append(build_consent_resource(
            consent_id=next(ids), patient=meta.patient, purposes=implied_purposes,
            method=ConsentMethod.IMPLIED, tables=tables, now=now, data_refs=(record_ref,)))

    provenance = build_provenance(meta, image, provenance_id=provenance_id, record_ref=record_ref,
                                  binary_ref=f"Binary/{binary_id}", tables=tables, now=now)
    return PhotoResources(record=record, binary=binary, consents=consents, provenance=provenance)


def consent_documented(record: JSON, *, note: str, replaced: Sequence[str], now: datetime) -> JSON:
    """The next version of consent-pending ``record`` (Media or DocumentReference), once a
    Consent documents its consent for care: without the consent-pending extension, and with
    ``note`` (when, by which Consent) where the record said it was pending (a note, or a
    paragraph of a DocumentReference's description, whose text is one of ``replaced``), or last
    when it said so nowhere (an object received over DICOM carries the extension alone). A
    Media's note is an Annotation of ``now``, as the ingest's generated notes. Everything else is
    kept as it is; ``record`` is not changed."""
    out = copy.deepcopy(record)
    extensions = [x for x in out.get("extension", []) if x.get("url") != EXT_CONSENT_PENDING]
    if extensions:
        out["extension"] = extensions
    else:
        out.pop("extension", None)
    if out.get("resourceType") == "DocumentReference":
        paragraphs = out["description"].split("\n\n") if out.get("description") else []
        out["description"] = "\n\n".join(_in_place(paragraphs, note, lambda p: p in replaced))
        return out
    annotation: JSON = {"time": fhir_instant(now), "text": note}
    out["note"] = _in_place(out.get("note") or [], annotation, lambda n: n.get("text") in replaced)
    return out


def _in_place(items: list[Any], new: Any, is_old: Callable[[Any], bool]) -> list[Any]:
    """``items`` with ``new`` in place of the first of them ``is_old`` holds of, without the
    others it holds of; ``new`` last when there is none."""
    out: list[Any] = []
    placed = False
    for item in items:
        if not is_old(item):
            out.append(item)
        elif not placed:
            out.append(new)
            placed = True
    return out if placed else [*out, new]


__all__ = [
    "PhotoResources", "audit_event_to_index", "body_site_concept", "build_photo_resources",
    "consent_documented", "consent_to_index", "index_resource", "photo_to_binary", "photo_to_document_reference",
    "photo_to_media", "provenance_to_index", "record_to_index",
]
