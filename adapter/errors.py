"""The single exception hierarchy of the adapter.

Each class carries a FHIR IssueType (http://hl7.org/fhir/R4/valueset-issue-type.html) as
``issue_type``; the HTTP edge (adapter.api.outcome) and the DICOM edge (adapter.dicom.status)
each map that hierarchy through one table. Diagnostics never carry patient data.
"""

from __future__ import annotations

import errno

from adapter.refusals import RefusalCode


class AdapterError(Exception):
    """Base of every error the adapter raises on purpose."""

    issue_type: str = "exception"
    severity: str = "error"
    #: The refusal (or failure) has its AuditEvent already: whoever catches it further out does
    #: not audit it again (adapter.services.ingest.IngestService.audit_refusal).
    audited: bool = False
    #: The record (``Type/id``) a refusal is about when it is stored and held (a retry of a photo
    #: stored with other details: 409), answered as ``Location`` (adapter.api.outcome); else None.
    location: str | None = None
    #: What the refusal is, for a machine (adapter.refusals; ``issue.details.coding`` over HTTP):
    #: the class's code, unless the raise gives a more precise one (``refusal=``). None for a
    #: failure that is no refusal (a 500).
    refusal: RefusalCode | None = None

    def __init__(self, diagnostics: str, *, expression: str | list[str] | None = None,
                 details_code: str | None = None, details_text: str | None = None,
                 refusal: RefusalCode | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        if refusal is not None:
            self.refusal = refusal
        if expression is None:
            self.expression: list[str] = []
        elif isinstance(expression, str):
            self.expression = [expression]
        else:
            self.expression = list(expression)
        self.details_code = details_code
        #: A code without a system, given as the issue's details.text (an IHE Document Sharing
        #: error code, ITI TF-3 Table 4.2.4.1-2, as ITI-65 answers carry them).
        self.details_text = details_text

    def for_log(self) -> str:
        """The error as a log line may hold it: its type and the elements it points at (FHIR
        paths, DICOM tags and keywords), not its diagnostics. These are written for the caller,
        who sent what they may quote (an IssuerOfPatientID, a value); the caller gets them in
        the OperationOutcome or the DIMSE Error Comment, the log does not need them."""
        where = ", ".join(self.expression)
        return f"{type(self).__name__}{f' at {where}' if where else ''}"


class InvalidInput(AdapterError):
    """Structurally or semantically invalid request content (FHIR 'invalid')."""

    issue_type = "invalid"
    refusal = RefusalCode.INVALID_CONTENT


class InvalidQuery(InvalidInput):
    """A request's query that cannot be understood: a search parameter's value (FHIR search, a
    ``_page`` link, ``_summary``/``_elements``), a QIDO-RS key or paging parameter, a WADO-URI or
    WADO-RS parameter, a frame list; or a request header that cannot be parsed (If-Match) or is
    over its bound (an Idempotency-Key over 200 characters). 400
    Bad Request where the request is a read (FHIR R4
    search.html "Handling Errors"; PS3.18 8.3.x, 9.x, 10.4.x, 10.6.x), not 422, which FHIR keeps
    for content (a resource, a photo) that was understood and cannot be processed."""

    refusal = RefusalCode.INVALID_QUERY


class AmbiguousRequest(InvalidInput):
    """A request that two parsers may read differently, so a gateway may have checked another
    than the one the adapter would act on: a header field given twice (Content-Type), a
    parameter of a media type or Content-Disposition given twice or in RFC 2231 extended form,
    a multipart part header line given twice (security review 3; adapter.api.media_type). 400
    Bad Request: the request was not understood, nothing stored."""

    refusal = RefusalCode.AMBIGUOUS_REQUEST


class InvalidResource(InvalidInput):
    """A FHIR resource or Bundle that does not validate (FHIR 'structure')."""

    issue_type = "structure"
    refusal = RefusalCode.INVALID_RESOURCE


class RequiredElementMissing(InvalidInput):
    """A required element is absent (FHIR 'required')."""

    issue_type = "required"
    refusal = RefusalCode.REQUIRED_ELEMENT_MISSING


class UnknownCode(InvalidInput):
    """A code outside the code system or value set we accept (FHIR 'code-invalid')."""

    issue_type = "code-invalid"
    refusal = RefusalCode.UNKNOWN_CODE


class BusinessRuleViolation(AdapterError):
    """Well-formed input refused by a rule of the guidance or the organisation's policy."""

    issue_type = "business-rule"
    refusal = RefusalCode.BUSINESS_RULE


class ConsentRequired(BusinessRuleViolation):
    """A photo that needs documented consent arrived without it."""

    refusal = RefusalCode.CONSENT_REQUIRED


class PatientReferenceConflict(BusinessRuleViolation):
    """A photo or Consent whose literal Patient reference (``Patient/<id>``) is held already with
    another patient identifier: one reference names one patient, else a search by it would
    return several patients' photos (safety review 1). Nothing is stored (HTTP 422; never raised
    over DIMSE, whose objects carry no reference). The diagnostics never name the other patient."""

    refusal = RefusalCode.PATIENT_REFERENCE_CONFLICT


class UnsupportedMediaType(AdapterError):
    """Content that is not a JPEG or PNG (HTTP 415)."""

    issue_type = "not-supported"
    refusal = RefusalCode.UNSUPPORTED_MEDIA_TYPE


class NotSupported(AdapterError):
    """An interaction or parameter the adapter does not support."""

    issue_type = "not-supported"
    refusal = RefusalCode.NOT_SUPPORTED


class UpdateCreateNotSupported(NotSupported):
    """An update of a resource that does not exist (HTTP 405): the server assigns resource ids, so
    an update never creates one (CapabilityStatement ``updateCreate`` false; FHIR http.html#update:
    "405 Method Not allowed - the resource did not exist prior to the update, and the server does
    not allow client defined ids")."""


class NotAcceptable(NotSupported):
    """A representation the adapter does not produce was asked for (HTTP 406): FHIR XML or
    Turtle, say; it answers in FHIR JSON."""

    refusal = RefusalCode.NOT_ACCEPTABLE


class UnsupportedPixelData(NotSupported):
    """Pixel data the adapter has no lossless rendering for, in an object whose SOP class it
    accepts: a native layout a PNG cannot carry as it is (YBR, palette colour, signed samples)."""

    refusal = RefusalCode.UNSUPPORTED_PIXEL_DATA


class UnsupportedTransferSyntax(UnsupportedPixelData):
    """An object in a transfer syntax the adapter cannot render losslessly (JPEG 2000, JPEG-LS,
    RLE, lossless JPEG…): STOW-RS has no negotiation to refuse it before it arrives."""


class UndecodableImage(InvalidInput):
    """Bytes that claim to be an image but do not decode."""

    refusal = RefusalCode.UNDECODABLE_IMAGE


class UncleanableDocument(NotSupported):
    """A document (PDF) that a restricted view (de-identified, pseudonymised) releases only
    without its metadata, whose metadata cannot be removed (adapter.imaging.pdf): encrypted, not
    a PDF that parses, or over the cleaner's bounds. The read is refused in that view (HTTP
    422): failing closed, never released as stored; care's view has it as stored."""


class ImageTooLarge(AdapterError):
    """More pixels than the policy allows: a decompression bomb."""

    issue_type = "too-costly"
    refusal = RefusalCode.TOO_MANY_PIXELS


class TooCostly(AdapterError):
    """A request that would cost far more than any client needs: a search of hundreds of
    criteria, say (the database would refuse it, or take its time over it)."""

    issue_type = "too-costly"
    refusal = RefusalCode.TOO_COSTLY


class PayloadTooLarge(AdapterError):
    """An upload over the size limit (HTTP 413)."""

    issue_type = "too-long"
    refusal = RefusalCode.PAYLOAD_TOO_LARGE


class RequestTimeout(AdapterError):
    """The client stopped sending its request part-way (HTTP 408, adapter.api.request_limits):
    nothing of it was stored."""

    issue_type = "timeout"
    refusal = RefusalCode.REQUEST_TIMEOUT


class Forbidden(AdapterError):
    """Refused by the consent decision or missing purpose of use. Says little on purpose."""

    issue_type = "forbidden"
    refusal = RefusalCode.FORBIDDEN


class PurposeOfUseMissing(Forbidden):
    """A read that does not state its purpose of use: fail closed."""

    issue_type = "security"
    refusal = RefusalCode.PURPOSE_OF_USE_MISSING


class UnknownPurposeOfUse(InvalidInput):
    """A purpose of use that is not a v3-ActReason code we know."""

    issue_type = "code-invalid"
    refusal = RefusalCode.UNKNOWN_PURPOSE_OF_USE


class NotFound(AdapterError):
    """No such resource."""

    issue_type = "not-found"
    refusal = RefusalCode.NOT_FOUND


class MissingImage(AdapterError):
    """A record's stored image (or received DICOM file) is not in the data folder: a fault of
    the deployment, not a resource that does not exist (500, logged as an error, never 404,
    which a client would take for "no such image" and an operator would never see): a data
    folder other than the one the database's images are in, or an image removed by hand.
    ``python -m adapter verify`` lists every one."""


class UnreleasableObject(AdapterError):
    """A stored DICOM object that cannot be released: made, cleaned for a restricted view or
    encoded, it fails the same way at every try (an element no encoder can write, say). A fault of
    what is stored, never a passing one: 500, logged as an error, no Retry-After (it was a
    StorageError, 503 "transient", which told clients to retry what no retry cures)."""


class Gone(NotFound):
    """What was there is no longer (HTTP 410): an expired page of a search."""

    refusal = RefusalCode.GONE


class UnsupportedResourceType(NotFound):
    """A resource type this server does not serve (FHIR http.html: 404, "resource type not
    supported")."""

    issue_type = "not-supported"


class Conflict(AdapterError):
    """A duplicate or a version conflict."""

    issue_type = "conflict"
    refusal = RefusalCode.CONFLICT


class PreconditionFailed(Conflict):
    """If-Match names a version that is not current (HTTP 412)."""

    refusal = RefusalCode.VERSION_CONFLICT


class PreconditionRequired(AdapterError):
    """An irreversible write that names no version it was meant for (no If-Match, or ``*``): HTTP
    428 Precondition Required (RFC 6585 3), so a blind or replayed request cannot change whatever
    version is current."""

    issue_type = "required"
    refusal = RefusalCode.PRECONDITION_REQUIRED


class InstanceConflict(Conflict):
    """A DICOM instance that contradicts what is stored under a UID it names: an object sent
    again under a SOP Instance UID already stored, naming another patient, study, series or SOP
    class than the stored one (the stored record stands); or a new instance whose Study Instance
    UID is held for another patient, or whose Series Instance UID is held in another study (one
    patient per study, one study per series: PS3.3 A.1.2), whether received or made from a
    posted photo. Nothing is stored (HTTP 409, DIMSE 0xA900: adapter.mapping.dimse_status)."""

    refusal = RefusalCode.INSTANCE_CONFLICT


class Transient(AdapterError):
    """A temporary failure (storage busy, peer unavailable); the client may retry."""

    issue_type = "transient"
    refusal = RefusalCode.TRANSIENT


class StudyStarted(Transient):
    """A posted photo that was to open its DICOM study (the first photo of its encounter) found
    the study opened by another photo meanwhile (two stored at once): nothing was written; made
    again, it joins that study, with its StudyDate and StudyTime (adapter.services.ingest)."""


class StorageError(Transient):
    """The store failed; nothing was committed."""

    def for_log(self) -> str:
        """As :meth:`AdapterError.for_log`, with the errno name of the operating system's error
        that caused it (``StorageError (ENOSPC)``): a full, read-only or failing disk tells apart
        at a glance, and an errno name carries no patient data (a path would: none is logged)."""
        name = errno_name(self)
        return f"{super().for_log()} ({name})" if name else super().for_log()


def errno_name(exc: BaseException) -> str | None:
    """The errno name (ENOSPC, EROFS, EACCES, EDQUOT, EIO...) of the OSError that ``exc`` is or
    was raised from (its chain of ``__cause__``), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno:
            return errno.errorcode.get(current.errno, str(current.errno))
        current = current.__cause__
    return None


class InsufficientStorage(StorageError):
    """The data folder's free space is below the reserve kept for the database and the audit
    trail (ADAPTER_MIN_FREE_MB): new images are refused, nothing was stored (HTTP 507, DIMSE
    0xA700). Reads, consent changes and their audit events go on in the reserve."""

    issue_type = "no-store"
    refusal = RefusalCode.INSUFFICIENT_STORAGE


#: The operating system's errors for a file system with no room left for what is written: full
#: (ENOSPC), or the account's quota reached (EDQUOT).
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def staging_failure(diagnostics: str, exc: OSError) -> StorageError:
    """The error for an upload that could not be written to the staging folder: for want of room
    (ENOSPC, EDQUOT), the reserve's answer (InsufficientStorage: 507 no-store, DIMSE 0xA700),
    since sending it again helps only once room is made; else a failure of the disk
    (StorageError: 503, retry). Raise it ``from exc``: the log names the errno."""
    if exc.errno in NO_ROOM_ERRNOS:
        return InsufficientStorage("the data folder has no room left for the upload (its disk is full): nothing "
                                   "was stored; reads and consent changes go on while room is made")
    return StorageError(diagnostics)


class PolicyError(AdapterError):
    """The organisation's policy or a mapping table is invalid: start-up stops."""

    issue_type = "invalid"


class ConfigurationError(AdapterError):
    """A setting is invalid or unsafe."""

    issue_type = "invalid"


class NoStore(ConfigurationError):
    """The database the settings name holds no record store of the adapter (opened with
    ``existing_only``: ``python -m adapter verify`` never verifies a new, empty one)."""


__all__ = [
    "NO_ROOM_ERRNOS",
    "AdapterError",
    "AmbiguousRequest",
    "BusinessRuleViolation",
    "ConfigurationError",
    "Conflict",
    "ConsentRequired",
    "Forbidden",
    "Gone",
    "ImageTooLarge",
    "InstanceConflict",
    "InsufficientStorage",
    "InvalidInput",
    "InvalidQuery",
    "InvalidResource",
    "MissingImage",
    "NoStore",
    "NotAcceptable",
    "NotFound",
    "NotSupported",
    "PatientReferenceConflict",
    "PayloadTooLarge",
    "PolicyError",
    "PreconditionFailed",
    "PreconditionRequired",
    "PurposeOfUseMissing",
    "RequestTimeout",
    "RequiredElementMissing",
    "StorageError",
    "StudyStarted",
    "TooCostly",
    "Transient",
    "UncleanableDocument",
    "UndecodableImage",
    "UnknownCode",
    "UnknownPurposeOfUse",
    "UnreleasableObject",
    "UnsupportedMediaType",
    "UnsupportedPixelData",
    "UnsupportedResourceType",
    "UnsupportedTransferSyntax",
    "UpdateCreateNotSupported",
    "errno_name",
    "staging_failure",
]
