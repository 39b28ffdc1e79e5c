"""What a capture app or integration engine tells us about a photo (the ``metadata`` part of
``POST /photos``), validated with pydantic so errors point at the offending element."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)


class PhotoKind(StrEnum):
    """What the photo shows. Drives consent rules and the FHIR/DICOM resource chosen."""

    CLINICAL = "clinical"    # part of the patient's body: wound, lesion, tissue
    DOCUMENT = "document"    # report, result, notes
    SECONDARY = "secondary"  # photo of an x-ray, ECG, CTG or screen


class PhotoSource(StrEnum):
    CLINICIAN = "clinician"
    PATIENT = "patient"
    COLLEAGUE_INTERNAL = "colleague-internal"
    COLLEAGUE_EXTERNAL = "colleague-external"


class DeviceOwnership(StrEnum):
    ORGANISATION = "organisation"
    PERSONAL = "personal"


class ConsentMethod(StrEnum):
    VERBAL = "verbal"
    WRITTEN = "written"
    IMPLIED = "implied"


class Laterality(StrEnum):
    LEFT = "left"
    RIGHT = "right"
    BILATERAL = "bilateral"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


#: A date or a date and time as JSON text: ISO 8601 / FHIR dateTime with a full date (a time
#: without its zone is the writer's local time, kept to the date, see adapter.mapping.consent; a
#: photo's ``takenAt`` refuses it, :func:`_time_with_zone`).
_ISO_DATE_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
                            r"([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?")


def _iso_text(value: Any) -> Any:
    """A date sent as JSON must be ISO 8601 text: pydantic reads a number, or a string of
    digits, as seconds since 1970, so a DICOM-style ``"20240517"`` was recorded as 1970-08-23
    and a consent dated ``"2024"`` as 1970-01-01T00:33:44Z. Values made in Python (the
    transaction Bundle's parsed FHIR dates) pass as they are."""
    if value is None or isinstance(value, date):  # datetime is a date
        return value
    if not isinstance(value, str) or not _ISO_DATE_TIME.fullmatch(value):
        raise ValueError("must be an ISO 8601 date or date and time as text: YYYY-MM-DD or "
                         "YYYY-MM-DDThh:mm:ss with Z or an offset")
    return value


def _time_with_zone(value: Any) -> Any:
    """A photo's time taken with its time of day needs its zone (FHIR dateTime: "if hours and
    minutes are specified, a timezone offset SHALL be populated", datatypes.html#dateTime): a
    local time without one (as EXIF DateTimeOriginal and many phone APIs give it) cannot be
    stored as sent, and was cut to its date without a word, losing what tells apart the photos of
    one wound taken on one day. Refused; a date alone (the time not known) is taken."""
    match = _ISO_DATE_TIME.fullmatch(value) if isinstance(value, str) else None
    if match is not None and match.group(1) and not match.group(4):
        raise ValueError("a time needs its zone (FHIR dateTime): YYYY-MM-DDThh:mm:ss with Z or an offset "
                         "such as +01:00, or a date alone (YYYY-MM-DD) when the time is not known")
    return value


def _in_utc_calendar(value: datetime | date | None) -> datetime | date | None:
    """A time with an offset that puts it before year 1 or after 9999 in UTC
    (``0001-01-01T00:00:00+14:00``) cannot be indexed or compared as an instant: refused here,
    before anything of the upload is stored."""
    if isinstance(value, datetime) and value.utcoffset():
        try:
            value.astimezone(UTC)
        except OverflowError:
            raise ValueError("the time falls outside the years 1 to 9999 in UTC") from None
    return value


#: The longest identifier ``system`` and ``value`` the adapter takes, each, in bytes of UTF-8 (a
#: character beyond ASCII counts 2 to 4). Far more than real ones need: an MRN or accession
#: number is a few dozen characters, a DICOM PatientID or IssuerOfPatientID (LO) at most 64
#: characters (256 bytes), an OID system ``urn:oid:`` and 64, a system made of an IssuerOfPatientID
#: percent-encoded (adapter.mapping.dicom_tables) at most 768 bytes and its prefix. Bounded in
#: bytes because that is what the store indexes: with both parts at most 1 KiB a row of any index
#: over a patient identifier stays under PostgreSQL's 2704-byte limit, so SQLite and PostgreSQL
#: take the same identifiers (beyond it PostgreSQL refused what SQLite stored). The other values a
#: request gives that the store indexes, a patient's literal reference and the codes and systems
#: of codings (search tokens), take the same bound (adapter.mapping.fhir_json).
IDENTIFIER_MAX_BYTES = 1024


def identifier_too_long(text: str) -> bool:
    """``text`` (an identifier's system or value) is over :data:`IDENTIFIER_MAX_BYTES`."""
    if len(text) > IDENTIFIER_MAX_BYTES:
        return True
    return len(text) * 4 > IDENTIFIER_MAX_BYTES and \
        len(text.encode("utf-8", "surrogatepass")) > IDENTIFIER_MAX_BYTES


def _bounded(text: str) -> str:
    if identifier_too_long(text):
        raise ValueError(f"is longer than the adapter takes ({IDENTIFIER_MAX_BYTES} bytes in UTF-8)")
    return text


#: Unicode categories of characters no identifier may hold: control (Cc) and format (Cf: a
#: zero-width space, a soft hyphen, a byte order mark, a direction mark), invisible when shown.
_INVISIBLE = frozenset({"Cc", "Cf"})


def unmatchable(text: str) -> str | None:
    """Why ``text`` (an identifier's system or value, a code, a reference) cannot stand as one,
    or None. Matching is exact (FHIR search.html#token), so ``MRN-1 `` or ``MRN-1`` with a
    zero-width space would be another patient than ``MRN-1`` to a Consent, while a person, a
    PACS or a viewer reads them as that patient (DICOM's padding is not significant, PS3.5 6.2):
    a photo sent so passed its patient's denial of care and reached the PACS as that patient's.
    Refused on every channel that takes FHIR, as DICOM's are read without their padding (and
    refused with a control character)."""
    if text != text.strip():
        return "begins or ends with white space"
    if any(unicodedata.category(c) in _INVISIBLE for c in text):
        return "holds an invisible character (a control or format character, such as a zero-width space)"
    return None


def _matchable(text: str) -> str:
    why = unmatchable(text)
    if why is not None:
        raise ValueError(f"{why} (an identifier is matched exactly)")
    return text


#: An identifier's system or value as a client submits it (:data:`IDENTIFIER_MAX_BYTES`).
SubmittedText = Annotated[str, Field(min_length=1), AfterValidator(_bounded), AfterValidator(_matchable)]
#: A literal reference as a client submits it, within the same bound (a patient's is indexed).
SubmittedReference = Annotated[str, AfterValidator(_bounded), AfterValidator(_matchable)]


#: A literal reference to a Patient, FHIR's for that type (https://hl7.org/fhir/R4/references.html#literal):
#: ``Patient/<id>``, or an absolute URL ending so, with an optional ``/_history/<vid>``; the id and
#: version of FHIR's id type.
PATIENT_LITERAL_REFERENCE = re.compile(r"(?:https?://(?:[A-Za-z0-9\-\\.:%$]*/)+)?Patient/[A-Za-z0-9\-.]{1,64}"
                                       r"(?:/_history/[A-Za-z0-9\-.]{1,64})?")
_TYPED = re.compile(r"(?:.*/)?(?P<type>[A-Za-z]+)/[^/]*")


def patient_reference_problem(reference: str) -> str | None:
    """Why ``reference``, a patient's (a photo's subject, a Consent's patient), is no
    :data:`PATIENT_LITERAL_REFERENCE`, or None. One is claimed and searched by its
    ``Patient/<id>`` (adapter.store.patient_references, adapter.services.search_params), so
    another form would be stored unclaimed and unsearched, while a client following it may land
    on another patient's Patient: the id alone (``z-5``: a search value names a Patient so, a
    reference does not), a query, a fragment (a contained Patient is none the adapter holds),
    another type ("verify" review 1, finding B1)."""
    if PATIENT_LITERAL_REFERENCE.fullmatch(reference):
        return None
    typed = _TYPED.fullmatch(reference.partition("?")[0].partition("#")[0])
    if "#" in reference:
        why = "has a fragment (a contained resource is no Patient the adapter holds)"
    elif "?" in reference:
        why = "has a query (a search URL names no one Patient)"
    elif "/" not in reference:
        why = "is an id alone, without its type"
    elif typed is not None and typed["type"] != "Patient" and "/_history/" not in reference:
        why = f"names a {typed['type'][:40]}, not a Patient"
    else:
        why = "is not a literal reference to a Patient"
    return (f"{why}: a patient is referenced as Patient/<id>, or an absolute URL ending so, optionally with "
            "/_history/<version> (https://hl7.org/fhir/R4/references.html#literal; <id> of FHIR's id type: letters, "
            "digits, '-' and '.', at most 64); or by its identifier alone")


class Identifier(_Model):
    """A FHIR Identifier reduced to what matching needs. Not bounded: the store's identifiers are
    read into it too; what a client submits is a :class:`SubmittedIdentifier`."""

    system: str = Field(min_length=1)
    value: str = Field(min_length=1)

    def token(self) -> str:
        return f"{self.system}|{self.value}"


class SubmittedIdentifier(Identifier):
    """An Identifier in a request: each part within :data:`IDENTIFIER_MAX_BYTES`."""

    system: SubmittedText
    value: SubmittedText


class Reference(_Model):
    """A FHIR Reference: a literal ``reference`` and/or a logical ``identifier``."""

    reference: SubmittedReference | None = None
    identifier: SubmittedIdentifier | None = None
    display: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> Reference:
        if self.reference is None and self.identifier is None:
            raise ValueError("needs a reference or an identifier")
        return self


class NamedReference(Reference):
    """A Reference that may name its target by ``display`` alone (FHIR R4 references.html: "a
    reference may contain only a display"): an IHE MHD Document Source's author given by name only
    (a contained Organization with a name, a Practitioner without identifier), which the adapter
    keeps as that name rather than drops. Only a transaction's records take one; ``POST /photos``
    keeps asking for a reference or an identifier."""

    @model_validator(mode="after")
    def _one_of(self) -> NamedReference:
        if self.reference is None and self.identifier is None and not self.display:
            raise ValueError("needs a reference, an identifier or a display")
        return self


class PatientRef(_Model):
    """The subject. The adapter does not own Patient resources: the identifier is required
    for matching; ``reference`` (the EHR's Patient) is kept when given."""

    system: SubmittedText
    value: SubmittedText
    reference: SubmittedReference | None = None

    @field_validator("reference")
    @classmethod
    def _patient_literal(cls, reference: str | None) -> str | None:
        problem = None if reference is None else patient_reference_problem(reference)
        if problem is not None:
            raise ValueError(problem)
        return reference

    @property
    def identifier(self) -> Identifier:
        return Identifier(system=self.system, value=self.value)


class ConsentStatement(_Model):
    """Consent documented with the photo."""

    purposes: list[str] = Field(min_length=1)
    method: ConsentMethod
    recorded_by: Reference | None = Field(None, alias="recordedBy")
    date: datetime | date | None = None
    form: str | None = Field(None, description="base64 scan/PDF of a written consent form")
    form_content_type: str | None = Field(None, alias="formContentType")

    _date_as_text = field_validator("date", mode="before")(_iso_text)
    _date_in_utc_calendar = field_validator("date")(_in_utc_calendar)


class Colleague(_Model):
    name: str = Field(min_length=1)
    organisation: str | None = None
    discussion_note: str | None = Field(None, alias="discussionNote")


class PhotoMetadata(_Model):
    """The ``metadata`` JSON part of ``POST /photos``."""

    patient: PatientRef
    kind: PhotoKind
    source: PhotoSource
    author: Reference | None = None
    encounter: Reference | None = None
    taken_at: datetime | None = Field(None, alias="takenAt")
    body_site: str | None = Field(None, alias="bodySite", pattern=r"^[0-9]{6,18}$")
    laterality: Laterality | None = None
    note: str | None = None
    device: DeviceOwnership | None = None
    consent: ConsentStatement | None = None
    colleague: Colleague | None = None
    title: str | None = None
    master_identifier: SubmittedIdentifier | None = Field(
        None, alias="masterIdentifier",
        description="a photographed document's own identifier, assigned by its source (IHE MHD: the "
                    "DocumentReference.masterIdentifier, XDS uniqueId); else the adapter's")

    _taken_as_text = field_validator("taken_at", mode="before")(_iso_text)
    _taken_with_zone = field_validator("taken_at", mode="before")(_time_with_zone)
    _taken_in_utc_calendar = field_validator("taken_at")(_in_utc_calendar)

    @field_validator("body_site")
    @classmethod
    def _of_a_body(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A photographed document (``kind: document``) shows no part of the body: a body site
        with it says the photo is of the patient's body, which needs consent, and was dropped
        without a word (a document needs no consent for care, and its record has no body site):
        the usual cause is a body photo filed under the wrong kind. Refused, naming the field."""
        if value is not None and info.data.get("kind") is PhotoKind.DOCUMENT:
            raise ValueError("a photographed document shows no body site: a photo of the patient's body is of "
                             "kind clinical (which needs the patient's consent), or leave bodySite out")
        return value

    @field_validator("laterality")
    @classmethod
    def _qualifies_a_body_site(cls, value: Laterality | None, info: ValidationInfo) -> Laterality | None:
        """A laterality qualifies a body site (FHIR: the laterality extension of ``bodySite``;
        DICOM ImageLaterality with the anatomic region): without ``bodySite`` it has nothing to
        qualify and was dropped without a word. Refused; not when ``bodySite`` was given but
        refused itself (not in ``info.data``), which its own error says."""
        if value is not None and "body_site" in info.data and info.data["body_site"] is None:
            raise ValueError("qualifies a body site: give bodySite (a SNOMED CT code) with it")
        return value


#: FHIR R4 JSON of an element as the stored record keeps it (a CodeableConcept, Coding or Identifier).
FhirElement = dict[str, Any]


class DocumentMetadata(_Model):
    """What an IHE MHD Document Source says of a document (its DocumentReference in an ITI-65
    transaction) beyond :class:`PhotoMetadata`, in the FHIR R4 form the stored DocumentReference
    keeps it: already read and reduced by adapter.mapping.document_metadata (which decides what is
    kept and warns of the rest). Not part of ``POST /photos``."""

    type: FhirElement | None = None
    category: tuple[FhirElement, ...] = ()
    #: The sender's labels other than its confidentiality (sensitivity codes, …).
    security_label: tuple[FhirElement, ...] = ()
    #: The sender's confidentiality (v3-Confidentiality code), kept when more restrictive than the policy's.
    confidentiality: str | None = Field(None, pattern="^(U|L|M|N|R|V)$")
    #: Other identifiers (IHE MHD: the DocumentEntry entryUUID).
    identifier: tuple[FhirElement, ...] = ()
    facility_type: FhirElement | None = None
    practice_setting: FhirElement | None = None
    event: tuple[FhirElement, ...] = ()
    #: context.period (the service the document records: XDS serviceStartTime/serviceStopTime),
    #: its start and end as sent.
    period: FhirElement | None = None
    format: FhirElement | None = None


class TransactionConsentStatement(ConsentStatement):
    """The Consent a transaction Bundle carries, read as a statement (its purposes, method and
    date, which the ingest's rules judge) and ``resource``: the Consent as it is stored (as
    ``POST /fhir/Consent`` stores it, adapter.mapping.consent_checks), without its id and the
    ``provision.data`` the ingest restricts it with."""

    resource: dict[str, Any]


class TransactionPhotoMetadata(PhotoMetadata):
    """A photo read from a transaction Bundle: :class:`PhotoMetadata` and, for a
    DocumentReference, what its Document Source said of the document (:class:`DocumentMetadata`)."""

    author: NamedReference | None = None
    encounter: NamedReference | None = None
    consent: TransactionConsentStatement | None = None
    document: DocumentMetadata | None = None
    #: The attachment's ``hash`` as sent (the base64 SHA-1 of the bytes sent, checked equal to
    #: them): the stored record keeps it when the bytes are stored as sent (adapter.mapping.photo).
    #: Not part of a photo's description (adapter.services.photo_description): the bytes are.
    attachment_hash: str | None = Field(None, alias="attachmentHash")
