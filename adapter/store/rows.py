"""Between model objects (NewResource, StoredResource, IndexRow, AccessFacts, DicomInstance,
OutboxItem) and table rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.engine import RowMapping

from adapter.errors import InvalidResource
from adapter.model.dicom import (
    INSTANCE_ATTRIBUTES_VERSION,
    DicomInstance,
    InstanceAttributes,
    NewOutboxItem,
    OutboxItem,
    ReleasedUids,
    person_name_key,
)
from adapter.model.photo import Identifier, PhotoKind, PhotoSource
from adapter.model.record import AccessFacts, IndexRow, NewResource, StoredResource
from adapter.store.dates import format_instant, to_utc
from adapter.store.schema import EncodedJson

#: Outbox item states (``OutboxItem.status``).
OUTBOX_PENDING, OUTBOX_SENT, OUTBOX_FAILED = "pending", "sent", "failed"
#: An item whose record was marked entered-in-error before it was sent: never sent.
OUTBOX_CANCELLED = "cancelled"
#: An item of a consent-pending record that the consent decision refused for want of documented
#: consent for care: not claimed until a Consent documenting care releases it (pending again).
OUTBOX_HELD = "held"


def with_meta(new: NewResource, version_id: int, last_updated: datetime) -> dict[str, Any]:
    """A copy of the resource with meta.versionId and meta.lastUpdated set
    (https://hl7.org/fhir/R4/resource.html#Meta); the caller's dict is left alone."""
    resource = new.resource
    if resource.get("resourceType", new.resource_type) != new.resource_type \
            or resource.get("id", new.id) != new.id:
        raise InvalidResource("resourceType or id of the resource does not match where it is stored")
    document = dict(resource)
    meta = dict(document.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = format_instant(last_updated)
    document["meta"] = meta
    return document


def resource_row(new: NewResource, document: dict[str, Any] | EncodedJson, version_id: int,
                 last_updated: datetime) -> dict[str, Any]:
    """The ``resources`` row of a resource version: JSON, search index and access facts."""
    index, facts = new.index, new.facts
    return {
        "resource_type": new.resource_type,
        "id": new.id,
        "version_id": version_id,
        "last_updated": last_updated,
        "json": document,
        "patient_system": index.patient.system if index.patient else None,
        "patient_value": index.patient.value if index.patient else None,
        "patient_reference": index.patient_reference,
        "date": to_utc(index.date) if index.date is not None else None,
        "creation": to_utc(index.creation) if index.creation is not None else None,
        "date_last": last_instant(index.date, index.date_last),
        "creation_last": last_instant(index.creation, index.creation_last),
        "status": index.status,
        "governed_by": facts.governed_by if facts else None,
        "fact_patient_system": facts.patient.system if facts else None,
        "fact_patient_value": facts.patient.value if facts else None,
        "kind": facts.kind.value if facts else None,
        "source": facts.source.value if facts else None,
        "consent_pending": facts.consent_pending if facts else None,
        "consent_ids": list(facts.consent_ids) if facts else None,
        "entered_in_error": facts.entered_in_error if facts else None,
        "blob_sha256": new.blob_sha256,
        "blob_offset": new.blob_range[0] if new.blob_range else None,
        "blob_length": new.blob_range[1] if new.blob_range else None,
    }


def last_instant(first: datetime | None, last: datetime | None) -> datetime | None:
    """The last instant of a SearchIndex date's range, in UTC: ``last``, or ``first`` when the date
    is given as an instant (no last); None without a date."""
    if first is None:
        return None
    return to_utc(last if last is not None else first)


def history_row(new: NewResource, document: dict[str, Any] | EncodedJson, version_id: int,
                last_updated: datetime) -> dict[str, Any]:
    return {"resource_type": new.resource_type, "id": new.id, "version_id": version_id,
            "last_updated": last_updated, "json": document}


def token_rows(new: NewResource) -> list[dict[str, Any]]:
    """One ``tokens`` row per distinct (param, system, code) of the search index."""
    return [{"resource_type": new.resource_type, "id": new.id, "param": param, "system": system,
             "code": code} for param, system, code in dict.fromkeys(new.index.tokens)]


def date_range_rows(new: NewResource) -> list[dict[str, Any]]:
    """One ``date_ranges`` row per distinct (param, low, high) of the search index."""
    return [{"resource_type": new.resource_type, "id": new.id, "param": param,
             "low": to_utc(low) if low is not None else None, "high": to_utc(high) if high is not None else None}
            for param, low, high in dict.fromkeys(new.index.ranges)]


def facts_from_row(row: RowMapping) -> AccessFacts | None:
    if row["governed_by"] is None:
        return None
    return AccessFacts(
        governed_by=row["governed_by"],
        patient=Identifier(system=row["fact_patient_system"], value=row["fact_patient_value"]),
        kind=PhotoKind(row["kind"]),
        source=PhotoSource(row["source"]),
        consent_pending=bool(row["consent_pending"]),
        consent_ids=tuple(row["consent_ids"] or ()),
        entered_in_error=bool(row["entered_in_error"]),
    )


def stored_from_row(row: RowMapping) -> StoredResource:
    return StoredResource(
        resource_type=row["resource_type"],
        id=row["id"],
        version_id=row["version_id"],
        last_updated=row["last_updated"],
        resource=row["json"],
        facts=facts_from_row(row),
        blob_sha256=row["blob_sha256"],
        blob_range=(row["blob_offset"], row["blob_length"]) if row["blob_offset"] is not None else None,
    )


def index_row_from(row: RowMapping) -> IndexRow:
    return IndexRow(resource_type=row["resource_type"], id=row["id"], last_updated=row["last_updated"],
                    facts=facts_from_row(row), date=row["date"], creation=row["creation"])


def dicom_instance_row(instance: DicomInstance, created: datetime) -> dict[str, Any]:
    """The ``dicom_instances`` row; ``created`` is used when the instance carries none."""
    return {
        "sop_instance_uid": instance.sop_instance_uid,
        "study_instance_uid": instance.study_instance_uid,
        "series_instance_uid": instance.series_instance_uid,
        "sop_class_uid": instance.sop_class_uid,
        "modality": instance.modality,
        "record_type": instance.record_type,
        "record_id": instance.record_id,
        "patient_system": instance.patient.system,
        "patient_value": instance.patient.value,
        "blob_sha256": instance.blob_sha256,
        "study_date": instance.study_date,
        "created": to_utc(instance.created) if instance.created is not None else created,
        "patient_name": instance.patient_name,
        "study_description": instance.study_description,
        "accession_number": instance.accession_number,
        "study_time": instance.study_time,
        **match_keys(instance.patient_name, instance.study_description),
        **attribute_columns(instance.attributes),
        "object_version": instance.object_version,
    }


#: The dicom_instances column of each InstanceAttributes field.
_ATTRIBUTE_COLUMNS = {
    "series_number": "series_number", "series_description": "series_description",
    "performed_procedure_step_start_date": "pps_start_date", "performed_procedure_step_start_time": "pps_start_time",
    "timezone_offset_from_utc": "timezone_offset", "instance_number": "instance_number", "rows": "image_rows",
    "columns": "image_columns", "bits_allocated": "bits_allocated", "number_of_frames": "number_of_frames",
    "referring_physician_name": "referring_physician_name", "patient_birth_date": "patient_birth_date",
    "patient_sex": "patient_sex", "study_id": "study_id",
}


def attribute_columns(attributes: InstanceAttributes | None) -> dict[str, Any]:
    """The columns of an instance's QIDO-RS attributes; all NULL (attributes_read too) when not read."""
    return {**{column: getattr(attributes, field) if attributes is not None else None
               for field, column in _ATTRIBUTE_COLUMNS.items()},
            "attributes_read": INSTANCE_ATTRIBUTES_VERSION if attributes is not None else None}


def _attributes_from(row: RowMapping) -> InstanceAttributes | None:
    if row.get("attributes_read") is None:
        return None
    return InstanceAttributes(**{field: row[column] for field, column in _ATTRIBUTE_COLUMNS.items()})


def match_keys(patient_name: str | None, study_description: str | None) -> dict[str, str | None]:
    """The QIDO-RS match key columns of an instance with this PatientName and StudyDescription
    (what each holds: adapter.store.schema, dicom_instances)."""
    key = person_name_key(patient_name)
    groups = key.split("=")
    return {
        "patient_name_key": key,
        "patient_name_ideographic_key": groups[1] if len(groups) > 1 and groups[1] else None,
        "patient_name_phonetic_key": "" if len(groups) > 3 else groups[2] if len(groups) > 2 and groups[2] else None,
        "study_description_key": study_description or "",
    }


def released_uids_row(released: ReleasedUids) -> dict[str, Any]:
    return {
        "view": released.view,
        "sop_instance_uid": released.sop_instance_uid,
        "study_instance_uid": released.study_instance_uid,
        "series_instance_uid": released.series_instance_uid,
        "released_sop_instance_uid": released.released_sop_instance_uid,
    }


def dicom_instance_from(row: RowMapping) -> DicomInstance:
    return DicomInstance(
        sop_instance_uid=row["sop_instance_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        modality=row["modality"],
        record_type=row["record_type"],
        record_id=row["record_id"],
        patient=Identifier(system=row["patient_system"], value=row["patient_value"]),
        blob_sha256=row["blob_sha256"],
        study_date=row["study_date"],
        created=row["created"],
        patient_name=row.get("patient_name"),
        study_description=row.get("study_description"),
        accession_number=row.get("accession_number"),
        study_time=row.get("study_time"),
        attributes=_attributes_from(row),
        object_version=row.get("object_version"),
    )


def outbox_row(item: NewOutboxItem, now: datetime) -> dict[str, Any]:
    """A new ``outbox`` row: pending, due now, no attempt yet."""
    return {"sop_instance_uid": item.sop_instance_uid, "destination": item.destination,
            "status": OUTBOX_PENDING, "attempts": 0, "next_attempt_at": now, "last_error": None,
            "created": now, "updated": now}


def outbox_item_from(row: RowMapping) -> OutboxItem:
    return OutboxItem(
        id=row["id"], sop_instance_uid=row["sop_instance_uid"], destination=row["destination"],
        status=row["status"], attempts=row["attempts"], next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"], created=row["created"], updated=row["updated"])
