"""DICOM objects the adapter knows about (received from a PACS or generated from a photo), the
durable outbox of objects to forward, and the normal form QIDO-RS matches a PatientName in
(:func:`person_name_key`: the store indexes it, the matching compares it), and what an object
says of its study, its series and itself for QIDO-RS (:class:`InstanceAttributes`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapter.model.photo import Identifier

#: The version of how :class:`InstanceAttributes` are read from an object (the store keeps it with
#: them; an instance without one has not been read yet). 2: with the study attributes (schema 14).
INSTANCE_ATTRIBUTES_VERSION = 2


@dataclass(frozen=True)
class InstanceAttributes:
    """What a DICOM object says of its series and of itself that QIDO-RS returns (PS3.18 Tables
    10.6.3-4 and 10.6.3-5), and of its study beside the study attributes :class:`DicomInstance`
    holds (Table 10.6.3-3), read from the object at ingest (adapter.mapping.dicom_qido); None
    where the object has no usable value. These are the stored object's: a restricted view shows
    what its copy keeps (adapter.services.dicom_objects.DicomRelease.entry)."""

    series_number: int | None = None                         # IS (0020,0011)
    series_description: str | None = None                    # LO (0008,103E)
    performed_procedure_step_start_date: str | None = None   # DA (0040,0244), YYYYMMDD
    performed_procedure_step_start_time: str | None = None   # TM (0040,0245)
    timezone_offset_from_utc: str | None = None              # SH (0008,0201), ±HHMM
    instance_number: int | None = None                       # IS (0020,0013)
    rows: int | None = None                                  # US (0028,0010)
    columns: int | None = None                               # US (0028,0011)
    bits_allocated: int | None = None                        # US (0028,0100)
    number_of_frames: int | None = None                      # IS (0028,0008), only when the object has it
    # of its study (schema 14): a study result shows the first of its instances that has each
    referring_physician_name: str | None = None              # PN (0008,0090), as sent (Alphabetic^…=…)
    patient_birth_date: str | None = None                    # DA (0010,0030), YYYYMMDD
    patient_sex: str | None = None                           # CS (0010,0040)
    study_id: str | None = None                              # SH (0020,0010)


@dataclass(frozen=True)
class DicomInstance:
    """One SOP instance and the FHIR record it belongs to.

    ``blob_sha256`` is the DICOM file as received (Part 10); None for an object generated from a
    photo, which is regenerated on demand with the same UIDs."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    modality: str
    record_type: str            # "Media" | "DocumentReference"
    record_id: str
    patient: Identifier
    blob_sha256: str | None = None
    study_date: str | None = None   # DICOM DA (YYYYMMDD) for QIDO
    created: datetime | None = None
    # what a received object says of its study, for a viewer's study list (QIDO-RS, care only);
    # None for a photo (its object has none) and for instances stored before schema 8
    patient_name: str | None = None      # PN, as sent (Alphabetic^group)
    study_description: str | None = None
    accession_number: str | None = None
    study_time: str | None = None        # TM
    # what the object says of its series and itself, and of its study beside the above (QIDO-RS);
    # None: not read yet (stored before schema 13, or read before 14 without the study's;
    # SqlRecordStore.fill_dicom_attributes reads them at start)
    attributes: InstanceAttributes | None = None
    # how a posted photo's object is made (adapter.mapping.dicom_photo.PHOTO_OBJECT_VERSION),
    # fixed at ingest so every regeneration is the object first made (schema 19); None for a
    # received object, and for a photo stored before (made as version 1)
    object_version: int | None = None


def person_name_key(value: str | None) -> str:
    """A PN value (or a QIDO-RS PatientName pattern) in the form PatientName is matched in: each
    component group without its empty trailing components (``Doe^John^^^`` is ``Doe^John``),
    empty trailing groups dropped, groups joined by ``=``, case folded (PS3.4 C.2.2.2.1 lets PN
    matching disregard case; ``str.casefold``, so ``Straße`` is ``strasse`` and the Kelvin sign
    ``k``). ``""`` for no value."""
    if not value:
        return ""
    return "=".join(group.rstrip("^ ") for group in value.strip().split("=")).rstrip("=").casefold()


@dataclass(frozen=True)
class ReleasedUids:
    """An instance's UIDs as a restricted view releases them (keyed, irreversible: see
    adapter.services.released_uids), indexed so that a reader naming them finds the instance."""

    view: str                      # adapter.model.decision.View value
    sop_instance_uid: str          # the instance, as stored
    study_instance_uid: str        # the rest as released
    series_instance_uid: str
    released_sop_instance_uid: str


@dataclass(frozen=True)
class OutboxItem:
    """One object to C-STORE to one destination (``AE@host:port``)."""

    id: int
    sop_instance_uid: str
    destination: str
    status: str                  # pending | held | sent | failed | cancelled
    attempts: int
    next_attempt_at: datetime
    last_error: str | None = None
    created: datetime | None = None
    updated: datetime | None = None


@dataclass(frozen=True)
class NewOutboxItem:
    sop_instance_uid: str
    destination: str
