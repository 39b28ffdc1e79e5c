"""Code systems, extension URLs and identifier systems the adapter writes. One place, so the
ingest mapping, the read views and the tests agree."""

from __future__ import annotations

V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
V3_CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
V3_OBSERVATION_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
V3_DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
PROVENANCE_ENTITY_ROLE = "http://hl7.org/fhir/provenance-entity-role"
AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
URN_IETF_RFC_3986 = "urn:ietf:rfc:3986"
IHE_EVENT_TYPE_CODE = "urn:ihe:event-type-code"   # AuditEvent.subtype of an IHE transaction (ITI-65…)
DICOM_UID_SYSTEM = "urn:dicom:uid"

# Our own canonical base for extensions (no HL7 element carries these facts).
SD_BASE = "http://clinical-image-adapter.org/fhir/StructureDefinition/"
EXT_PHOTO_KIND = SD_BASE + "photo-kind"              # valueCode: clinical | document | secondary
EXT_PHOTO_SOURCE = SD_BASE + "photo-source"          # valueCode: clinician | patient | colleague-*
EXT_CONSENT_PENDING = SD_BASE + "consent-pending"    # valueBoolean
EXT_CAPTURE_DEVICE = SD_BASE + "capture-device"      # valueCode: organisation | personal
EXT_CONSENT_METHOD = SD_BASE + "consent-method"      # valueCode: verbal | written | implied
EXT_CONSENT_RECORDED_BY = SD_BASE + "consent-recorded-by"  # valueReference
EXT_QUALITY_WARNING = SD_BASE + "quality-warning"    # valueString

# Identifier systems
SHA256_SYSTEM = "urn:clinical-image-adapter:sha256"  # value: hex SHA-256 of the stored bytes
PHOTO_KIND_SYSTEM = "urn:clinical-image-adapter:photo-kind"
OUTBOX_ITEM_SYSTEM = "urn:clinical-image-adapter:outbox-item"  # value: an outbox item's id (an audited job)
#: The adapter's own id of a request (unique: the caller's X-Request-Id is recorded beside it).
REQUEST_ID_SYSTEM = "urn:clinical-image-adapter:request-id"
#: AuditEvent.agent.type of the client address a trusted proxy forwarded (X-Forwarded-For).
AUDIT_AGENT_TYPE_SYSTEM = "urn:clinical-image-adapter:audit-agent-type"
#: OperationOutcome.issue.details of an ingest's warning a client may act on (a transaction-response
#: entry's outcome, adapter.mapping.ingest_warnings): consent-pending | image-quality.
INGEST_WARNING_SYSTEM = "urn:clinical-image-adapter:ingest-warning"

# Added for the R4 builders (adapter.mapping.photo, consent, provenance, audit, outcome).
EXT_LATERALITY = SD_BASE + "laterality"              # valueCoding (SNOMED CID 244) on bodySite
CONSENT_CATEGORY_LOINC = "59284-0"                   # Patient Consent (standards.md 3.4)
CONSENT_DATA_MEANING = "http://hl7.org/fhir/consent-data-meaning"
CONSENT_PROVISION_TYPE = "http://hl7.org/fhir/consent-provision-type"
V3_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"       # AuditEvent.entity.type of a Consent (BALP)
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
ISSUE_TYPE = "http://hl7.org/fhir/issue-type"
# IHE FormatCode (https://profiles.ihe.net/fhir/ihe.formatcode.fhir/): the MIME type says it all
IHE_FORMAT_CODE = "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode"
FORMAT_MIME_TYPE_SUFFICIENT = "urn:ihe:iti:xds:2017:mimeTypeSufficient"
ADAPTER_NAME = "clinical-image-adapter"              # display of the adapter as observer / enterer
