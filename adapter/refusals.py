"""The adapter's refusal codes: what a refusal is, said for a machine. Each error of
adapter.errors carries one (its class's, or a more precise one its raise gives), and the HTTP edge
writes it in the OperationOutcome's ``issue.details.coding`` (system :data:`REFUSAL_SYSTEM`,
adapter.mapping.outcome.outcome_from_error). An integration engine routes on the code, never on
the English diagnostics (review mhd finding 4): refusals that share their HTTP status, IssueType
and expression ("no consent on file", "Idempotency-Key reused") differ by it.

The codes are stable: a code once given keeps its meaning. The class codes (``invalid-content``,
``business-rule``…) say only the kind of refusal; a later version may give one of those refusals
a more precise code of its own. docs/fhir-api.md "Refusal codes" lists them all, and
tests/unit/test_refusals.py keeps that table and this one the same.
"""

from __future__ import annotations

from enum import Enum

#: OperationOutcome.issue.details.coding.system of a refusal's code.
REFUSAL_SYSTEM = "urn:clinical-image-adapter:refusal"


class RefusalCode(Enum):
    """A refusal code (``code``) and its display."""

    # consent (POST /photos, POST /fhir)
    CONSENT_REQUIRED = ("consent-required", "documented consent for care is required")
    CONSENT_INSUFFICIENT = ("consent-insufficient", "the consent given does not cover the purpose in the way given")
    WRITTEN_CONSENT_REQUIRED = ("written-consent-required", "the policy requires written consent")
    CONSENT_DENIED = ("consent-denied", "an active Consent on file denies care for the patient")
    DATED_IN_FUTURE = ("dated-in-future", "a date or time sent is in the future")
    PERSONAL_DEVICE_REFUSED = ("personal-device-refused", "the policy forbids photos taken on a personal device")
    # retries and what is stored
    IDEMPOTENCY_KEY_REUSED = ("idempotency-key-reused", "the Idempotency-Key was used for another request")
    STORED_WITH_OTHER_DETAILS = ("stored-with-other-details", "stored before, with other details")
    STORED_ENTERED_IN_ERROR = ("stored-entered-in-error", "stored before, as a record since marked entered-in-error")
    PARTIALLY_STORED = ("partially-stored", "some documents of the submission are stored already, the others not")
    DUPLICATE_DOCUMENT = ("duplicate-document", "the same document is sent twice in one submission")
    # the image or document
    UNDECODABLE_IMAGE = ("undecodable-image", "the image does not decode")
    UNSUPPORTED_MEDIA_TYPE = ("unsupported-media-type", "a media type (or content coding) the adapter does not take")
    UNSUPPORTED_PIXEL_DATA = ("unsupported-pixel-data", "pixel data or a transfer syntax the adapter cannot render")
    TOO_MANY_PIXELS = ("too-many-pixels", "more pixels than the policy allows (a decompression bomb?)")
    PAYLOAD_TOO_LARGE = ("payload-too-large", "the request or one of its parts is over the size limit")
    ATTACHMENT_MISMATCH = ("attachment-mismatch", "attachment.size or attachment.hash is not that of the bytes sent")
    # patients
    SEVERAL_PATIENTS = ("several-patients", "the Bundle holds records of more than one patient")
    PATIENT_REFERENCE_CONFLICT = ("patient-reference-conflict", "the Patient reference is held for another patient")
    # purpose of use
    PURPOSE_NOT_FOR_WRITE = ("purpose-not-for-write", "the purpose of use stated may not write")
    PURPOSE_OF_USE_MISSING = ("purpose-of-use-missing", "the request states no purpose of use")
    UNKNOWN_PURPOSE_OF_USE = ("unknown-purpose-of-use", "the purpose of use is unknown or given more than once")
    # corrections (PATCH)
    ONLY_ENTERED_IN_ERROR = ("only-entered-in-error", "a PATCH only marks a record entered-in-error")
    PATCH_TEST_FAILED = ("patch-test-failed", "a test operation of the JSON Patch does not hold")
    # the kind of refusal, when no code above says more
    INVALID_CONTENT = ("invalid-content", "the content is invalid")
    INVALID_RESOURCE = ("invalid-resource", "the FHIR resource or Bundle does not validate")
    INVALID_QUERY = ("invalid-query", "a query parameter or request header cannot be understood")
    AMBIGUOUS_REQUEST = ("ambiguous-request", "a part of the request can be read in two ways")
    REQUIRED_ELEMENT_MISSING = ("required-element-missing", "a required element is missing")
    UNKNOWN_CODE = ("unknown-code", "a code outside the code system or value set accepted")
    BUSINESS_RULE = ("business-rule", "refused by a rule of the guidance or the organisation's policy")
    NOT_SUPPORTED = ("not-supported", "an interaction, parameter or content the adapter does not support")
    NOT_ACCEPTABLE = ("not-acceptable", "a representation the adapter does not produce")
    TOO_COSTLY = ("too-costly", "the request would cost far more than any client needs")
    REQUEST_TIMEOUT = ("request-timeout", "the request did not arrive whole in time")
    FORBIDDEN = ("forbidden", "the request is not permitted")
    NOT_FOUND = ("not-found", "no such resource")
    GONE = ("gone", "what was there is no longer")
    CONFLICT = ("conflict", "a conflict with what is stored")
    VERSION_CONFLICT = ("version-conflict", "If-Match names a version that is not the current one")
    PRECONDITION_REQUIRED = ("precondition-required", "an irreversible write names no version (If-Match) it is for")
    INSTANCE_CONFLICT = ("instance-conflict", "the DICOM instance contradicts what is stored under its UIDs")
    TRANSIENT = ("transient", "a temporary failure: send the request again later")
    INSUFFICIENT_STORAGE = ("insufficient-storage", "the data folder is below its free-space reserve")

    def __init__(self, code: str, display: str) -> None:
        self.code = code
        self.display = display


__all__ = ["REFUSAL_SYSTEM", "RefusalCode"]
