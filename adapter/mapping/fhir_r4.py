"""FHIR R4 JSON building blocks shared by the builders, and the search index read back from the
resources they build.

Everything here works on plain JSON dicts in R4 form (https://hl7.org/fhir/R4/datatypes.html),
the canonical stored form; R5 views are derived elsewhere (adapter.mapping.r5).

Time values, decided once for every builder:

* ``instant`` (Media.issued, Provenance.recorded, AuditEvent.recorded, DocumentReference.date):
  always UTC with milliseconds (``2024-03-01T09:16:02.120Z``), like the store's
  meta.lastUpdated. A naive datetime is refused: an instant needs a zone.
* ``dateTime`` from a timezone-aware datetime keeps its offset and second precision.
* ``dateTime`` from a *naive* datetime (EXIF without OffsetTimeOriginal, or a takenAt without an
  offset) is written with **date precision only**. FHIR requires a zone whenever a time is
  given (https://hl7.org/fhir/R4/datatypes.html#dateTime) and guessing one would invent a
  precision we do not have; the calendar date is what the camera clock actually tells us.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from adapter.errors import InvalidInput, NotSupported
from adapter.mapping.codes import (
    EXT_PHOTO_KIND,
    EXT_PHOTO_SOURCE,
    PHOTO_KIND_SYSTEM,
    V3_ACT_REASON,
)
from adapter.mapping.r5 import to_r5
from adapter.model.photo import Identifier, PatientRef, Reference
from adapter.model.record import SearchIndex

JSON = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# primitives


def fhir_instant(value: datetime) -> str:
    """An R4 ``instant`` in UTC with millisecond precision.

    Raises:
        ValueError: ``value`` is naive (https://hl7.org/fhir/R4/datatypes.html#instant needs a zone).
    """
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("an instant needs a timezone-aware datetime")
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fhir_datetime(value: datetime | date) -> str:
    """An R4 ``dateTime``: full precision with offset when aware, the date alone when naive
    (see the module docstring) or when given a :class:`date`."""
    if not isinstance(value, datetime):
        return value.isoformat()
    if value.tzinfo is None or value.utcoffset() is None:
        return value.date().isoformat()
    spec = "milliseconds" if value.microsecond else "seconds"
    return value.isoformat(timespec=spec)


def fhir_date(value: datetime | date) -> str:
    """An R4 ``date`` (YYYY-MM-DD). An aware datetime gives its UTC date, so a date-only
    period start is never later than the instant it came from."""
    if isinstance(value, datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            value = value.astimezone(UTC)
        return value.date().isoformat()
    return value.isoformat()


def parse_fhir_datetime(value: Any) -> datetime | None:
    """Read an R4 date, dateTime or instant as a datetime for indexing and parsing.

    A full date gives midnight; year or year-month precision gives None (too coarse to be a
    point in time). A zone-less value is returned naive; a malformed value gives None.
    """
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        if len(value) == 10:
            return datetime.fromisoformat(value)
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def utc_instant(value: datetime | date) -> datetime:
    """``value`` as an aware instant in UTC: a naive datetime (date precision, or a time without
    its zone) is read as UTC, a date as its first instant in UTC.

    Raises:
        InvalidInput: the instant falls before year 1 or after 9999 in UTC (``0001-01-01T00:00:00+14:00``
            is a valid dateTime that no datetime holds in UTC).
    """
    if not isinstance(value, datetime):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"the date {value.isoformat()[:40]} falls outside the years 1 to 9999 in UTC") from None


def _aware_utc(value: datetime | None) -> datetime | None:
    return None if value is None else utc_instant(value)


# ---------------------------------------------------------------------------------------------
# datatypes


def coding(system: str, code: str, display: str | None = None) -> JSON:
    """An R4 Coding (https://hl7.org/fhir/R4/datatypes.html#Coding)."""
    out: JSON = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(*codings: JSON, text: str | None = None) -> JSON:
    """An R4 CodeableConcept of the given codings."""
    out: JSON = {}
    if codings:
        out["coding"] = list(codings)
    if text:
        out["text"] = text
    return out


def identifier(ident: Identifier) -> JSON:
    return {"system": ident.system, "value": ident.value}


def reference(ref: Reference, type_: str | None = None) -> JSON:
    """An R4 Reference (https://hl7.org/fhir/R4/references.html) from our model: the literal
    reference and/or the logical identifier, plus display."""
    out: JSON = {}
    if ref.reference:
        out["reference"] = ref.reference
    if type_:
        out["type"] = type_
    if ref.identifier is not None:
        out["identifier"] = identifier(ref.identifier)
    if ref.display:
        out["display"] = ref.display
    return out


def patient_reference(patient: PatientRef) -> JSON:
    """Reference(Patient) by identifier, plus the EHR's literal reference when known. The
    adapter owns no Patient resources, so the identifier is what matching relies on."""
    out: JSON = {}
    if patient.reference:
        out["reference"] = patient.reference
    out["type"] = "Patient"
    out["identifier"] = identifier(patient.identifier)
    return out


def display_reference(display: str) -> JSON:
    """A display-only Reference (allowed by ref-1: no literal reference to check)."""
    return {"display": display}


def extension(url: str, value_type: str, value: Any) -> JSON:
    """An R4 Extension with ``value[x]`` of the given type, e.g. ``("Code", "clinical")``."""
    return {"url": url, f"value{value_type}": value}


def record_attachment(record: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A photo record's Attachment: Media.content, or DocumentReference.content[0].attachment."""
    content: Any = record.get("content")
    if isinstance(content, list):
        content = content[0].get("attachment") if content and isinstance(content[0], Mapping) else None
    return content if isinstance(content, Mapping) else None


def find_extension(resource: Mapping[str, Any], url: str) -> Mapping[str, Any] | None:
    """The first extension with ``url`` on an element, or None."""
    for ext in resource.get("extension") or []:
        if isinstance(ext, Mapping) and ext.get("url") == url:
            return ext
    return None


def extension_code(resource: Mapping[str, Any], url: str) -> str | None:
    ext = find_extension(resource, url)
    value = ext.get("valueCode") if ext is not None else None
    return value if isinstance(value, str) else None


# ---------------------------------------------------------------------------------------------
# search index


#: A literal reference to a Patient, relative (``Patient/p1``) or absolute (an EHR's
#: ``http://ehr.example.org/fhir/Patient/p9``, as IHE MHD ITI-65 recommends): indexed as sent, for
#: ``patient``/``subject`` (adapter.services.search_params: search.html#reference).
_PATIENT_REFERENCE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://[^?#]*/)?Patient/[^/?#]+(?:/_history/[^/?#]+)?$")


def _patient_of(ref: Any) -> tuple[Identifier | None, str | None]:
    if not isinstance(ref, Mapping):
        return None, None
    ident = ref.get("identifier")
    patient: Identifier | None = None
    if isinstance(ident, Mapping) and ident.get("system") and ident.get("value"):
        patient = Identifier(system=str(ident["system"]), value=str(ident["value"]))
    literal = ref.get("reference")
    if not isinstance(literal, str) or not _PATIENT_REFERENCE.match(literal):
        return patient, None
    return patient, literal.partition("/_history/")[0]  # the patient, whichever version was named


def _concept_tokens(param: str, value: Any) -> list[tuple[str, str | None, str]]:
    concepts = value if isinstance(value, list) else [value]
    out: list[tuple[str, str | None, str]] = []
    for cc in concepts:
        if not isinstance(cc, Mapping):
            continue
        for c in cc.get("coding") or []:
            if isinstance(c, Mapping) and isinstance(c.get("code"), str):
                system = c.get("system")
                out.append((param, system if isinstance(system, str) else None, c["code"]))
    return out


def _identifier_tokens(value: Any) -> list[tuple[str, str | None, str]]:
    idents = value if isinstance(value, list) else [value]
    return [("identifier", i.get("system") if isinstance(i.get("system"), str) else None, str(i["value"]))
            for i in idents if isinstance(i, Mapping) and i.get("value")]


def _kind_tokens(resource: Mapping[str, Any]) -> list[tuple[str, str | None, str]]:
    kind = extension_code(resource, EXT_PHOTO_KIND)
    source = extension_code(resource, EXT_PHOTO_SOURCE)
    out: list[tuple[str, str | None, str]] = []
    if kind:
        out.append(("kind", None, kind))
    if source:
        out.append(("source", None, source))
    return out


#: The version of what record_to_index and consent_to_index derive: a store holding records
#: indexed by another version re-indexes them at start (RecordStore.reindex_records). Bump it
#: with any change here.
#: 2: creation, and the IHE MHD ITI-67 tokens security-label, format, setting, facility, event.
#: 3: the values an R5 reader searches (r5:status, r5:type, r5:category, the r5:date range), the
#:    ``period`` range, an absolute Patient reference, a Media's creation as its R5 attachment's;
#:    Consents too.
#: 4: the record's encounter (tokens ``encounter``, ``encounter:identifier``).
#: 5: every date as the implicit range of its precision (search.html#date): ``date`` and
#:    ``creation`` with their last instants (a date-only value its day, a year or month too, a
#:    time its second), and the ranges' ends of a time (``period``, ``r5:date``) at its second's last.
RECORD_INDEX_VERSION = "records:5"
#: The token param a record's encounter is indexed under by its logical identifier (``encounter``:
#: by its literal reference).
ENCOUNTER_IDENTIFIER = "encounter:identifier"

#: The search values of a record or Consent as an R5 reader sees it (adapter.mapping.r5), where
#: they differ from R4's: a token param or date range ``R5_PREFIX + <R5 search parameter>``
#: (adapter.services.search_params searches them for an R5 reader).
R5_PREFIX = "r5:"
_DATE_ONLY = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$", re.ASCII)
_MICROSECOND = timedelta(microseconds=1)


#: The time of a dateTime or instant, for its precision: minutes, seconds, the digits of a fraction.
_TIME = re.compile(r"T\d{2}:\d{2}(?::\d{2}(?:\.(\d+))?)?", re.ASCII)
_LAST_INSTANT = datetime.max.replace(tzinfo=UTC)


def _time_step(value: str) -> timedelta:
    """The span a dateTime's time covers: a second (FHIR's times have seconds), a minute without
    them, 10^-n s with n digits of fraction (to the microsecond a datetime holds)."""
    m = _TIME.search(value)
    if m is None:
        return _MICROSECOND
    if m[1] is not None:
        return timedelta(microseconds=10 ** (6 - min(len(m[1]), 6)))
    return timedelta(seconds=1) if m[0].count(":") == 2 else timedelta(minutes=1)


def _range_of(value: Any) -> tuple[datetime, datetime] | None:
    """The first and last instants (UTC) of a FHIR date, dateTime or instant: the implicit range
    of its precision (https://hl7.org/fhir/R4/search.html#date): a date of year, month or day
    precision covers all of it, a time its second (or the digits of its fraction: an instant to
    the millisecond, that millisecond). A time without its zone is read as UTC (utc_instant)."""
    if not isinstance(value, str):
        return None
    m = _DATE_ONLY.match(value)
    if m is None:
        first = _aware_utc(parse_fhir_datetime(value))
        if first is None:
            return None
        try:
            return first, first + _time_step(value) - _MICROSECOND
        except OverflowError:  # its second is the last a datetime holds
            return first, _LAST_INSTANT
    try:
        y = int(m[1])
        if m[2] is None:
            first, after = datetime(y, 1, 1, tzinfo=UTC), (datetime(y + 1, 1, 1, tzinfo=UTC) if y < 9999 else None)
        elif m[3] is None:
            mo = int(m[2])
            first = datetime(y, mo, 1, tzinfo=UTC)
            after = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=UTC) if (y, mo) < (9999, 12) else None
        else:
            first = datetime(y, int(m[2]), int(m[3]), tzinfo=UTC)
            after = first + timedelta(days=1) if first.date() < date(9999, 12, 31) else None
    except ValueError:  # no such month or day
        return None
    return first, (after - _MICROSECOND) if after is not None else _LAST_INSTANT


def _first_last(value: Any) -> tuple[datetime | None, datetime | None]:
    """:func:`_range_of` as a SearchIndex date and its last instant; (None, None) for no date."""
    span = _range_of(value)
    return span if span is not None else (None, None)


def _period_range(param: str, period: Any) -> list[tuple[str, datetime | None, datetime | None]]:
    """A Period as a range: from its start's first instant to its end's last, an end missing
    being open (the period goes on, https://hl7.org/fhir/R4/datatypes.html#Period), as is a
    start missing."""
    if not isinstance(period, Mapping):
        return []
    start, end = _range_of(period.get("start")), _range_of(period.get("end"))
    if start is None and end is None:
        return []
    return [(param, start[0] if start else None, end[1] if end else None)]


def _r5_values(resource: Mapping[str, Any]) -> tuple[list[tuple[str, str | None, str]],
                                                     list[tuple[str, datetime | None, datetime | None]]]:
    """The tokens and ranges an R5 reader searches a record or Consent by, taken from the R5
    resource it is served as (adapter.mapping.r5.to_r5): status, type and category (an R4 Media
    is an R5 DocumentReference: status current, its media type a category, no type), and date
    (a Media's is its issued; a Consent's the day of its dateTime). None for what R5 cannot
    express (it is not served in R5 either)."""
    try:
        r5 = to_r5(dict(resource))
    except NotSupported:
        return [], []
    tokens: list[tuple[str, str | None, str]] = []
    if isinstance(r5.get("status"), str):
        tokens.append((R5_PREFIX + "status", None, r5["status"]))
    tokens += _concept_tokens(R5_PREFIX + "type", r5.get("type"))
    tokens += _concept_tokens(R5_PREFIX + "category", r5.get("category") or [])
    when = _range_of(r5.get("date"))
    return tokens, [(R5_PREFIX + "date", *when)] if when is not None else []


def _coding_tokens(param: str, value: Any) -> list[tuple[str, str | None, str]]:
    if isinstance(value, Mapping) and isinstance(value.get("code"), str):
        system = value.get("system")
        return [(param, system if isinstance(system, str) else None, value["code"])]
    return []


def _document_tokens(resource: Mapping[str, Any]) -> list[tuple[str, str | None, str]]:
    """The IHE MHD ITI-67 tokens of a DocumentReference: security-label (securityLabel), format
    (content.format), setting (context.practiceSetting), facility (context.facilityType), event
    (context.event)."""
    tokens = _concept_tokens("security-label", resource.get("securityLabel") or [])
    for content in resource.get("content") or []:
        if isinstance(content, Mapping):
            tokens += _coding_tokens("format", content.get("format"))
    context = resource.get("context")
    if isinstance(context, Mapping):
        tokens += _concept_tokens("setting", context.get("practiceSetting"))
        tokens += _concept_tokens("facility", context.get("facilityType"))
        tokens += _concept_tokens("event", context.get("event") or [])
    return tokens


def _encounter_tokens(refs: Any) -> list[tuple[str, str | None, str]]:
    """The tokens of a record's encounters (Media.encounter, DocumentReference.context.encounter;
    R4 Media-encounter, clinical-encounter): ``encounter`` = the literal reference as sent, its
    version left out (search.html#reference: a search matches the resource whichever version);
    ``encounter:identifier`` = the logical identifier (references.html#logical). A reference to a
    contained resource (``#…``) names nothing a search can name."""
    tokens: list[tuple[str, str | None, str]] = []
    for ref in refs if isinstance(refs, list) else [refs]:
        if not isinstance(ref, Mapping):
            continue
        literal = ref.get("reference")
        if isinstance(literal, str) and literal and not literal.startswith("#"):
            head, sep, version = literal.rpartition("/_history/")
            tokens.append(("encounter", None, head if sep and version and "/" not in version else literal))
        ident = ref.get("identifier")
        if isinstance(ident, Mapping) and isinstance(ident.get("value"), str) and ident["value"]:
            system = ident.get("system")
            tokens.append((ENCOUNTER_IDENTIFIER, system if isinstance(system, str) else None, ident["value"]))
    return tokens


def _attachment_creation(resource: Mapping[str, Any]) -> tuple[datetime, datetime] | None:
    for content in resource.get("content") or []:
        attachment = content.get("attachment") if isinstance(content, Mapping) else None
        if isinstance(attachment, Mapping) and isinstance(attachment.get("creation"), str):
            return _range_of(attachment["creation"])
    return None


def record_to_index(resource: Mapping[str, Any]) -> SearchIndex:
    """The SearchIndex of a Media or DocumentReference we built.

    Every date is the implicit range of its precision (:func:`_range_of`): ``date`` and
    ``creation`` its first instant, ``date_last`` and ``creation_last`` its last.
    Media: date = createdDateTime, else issued (https://hl7.org/fhir/R4/media.html#search);
    creation = createdDateTime (its attachment's creation once it is an R5 DocumentReference);
    tokens type, modality, identifier, site, kind, source and ``category`` (the photo-kind
    coding: R4 Media has no category element, the kinds table's category is that coding).
    DocumentReference: date = date; creation = content.attachment.creation (IHE MHD); tokens
    type, category, identifier (and masterIdentifier), kind, source and the ITI-67 ones
    (:func:`_document_tokens`), encounter (context.encounter); the range ``period`` = context.period
    (ITI-67).
    Both: patient_reference = a literal Patient reference, relative or absolute, as sent (its
    version left out); and the values an R5 reader searches by (:func:`_r5_values`). A Media's
    creation is its R5 attachment's (content.creation, else createdDateTime), searched in R5 only.
    """
    rtype = resource.get("resourceType")
    patient, patient_ref = _patient_of(resource.get("subject"))
    tokens: list[tuple[str, str | None, str]] = []
    tokens += _identifier_tokens(resource.get("identifier") or [])
    tokens += _concept_tokens("type", resource.get("type"))
    ranges: list[tuple[str, datetime | None, datetime | None]] = []
    if rtype == "Media":
        taken = _range_of(resource.get("createdDateTime"))
        when = taken or _range_of(resource.get("issued"))
        content = resource.get("content")
        # creation: an R5 reader's (the Media is a DocumentReference there), its attachment's
        created = (_range_of(content.get("creation")) if isinstance(content, Mapping) else None) or taken
        ranges += _period_range("period", resource.get("createdPeriod"))
        tokens += _concept_tokens("modality", resource.get("modality"))
        tokens += _concept_tokens("site", resource.get("bodySite"))
        kind = extension_code(resource, EXT_PHOTO_KIND)
        if kind:
            tokens.append(("category", PHOTO_KIND_SYSTEM, kind))
        tokens += _encounter_tokens(resource.get("encounter"))
    elif rtype == "DocumentReference":
        when = _range_of(resource.get("date"))
        created = _attachment_creation(resource)
        tokens += _concept_tokens("category", resource.get("category") or [])
        tokens += _identifier_tokens(resource.get("masterIdentifier") or [])
        tokens += _document_tokens(resource)
        context = resource.get("context")
        ranges += _period_range("period", context.get("period") if isinstance(context, Mapping) else None)
        tokens += _encounter_tokens(context.get("encounter") if isinstance(context, Mapping) else None)
    else:
        raise ValueError(f"not a photo record: {rtype}")
    tokens += _kind_tokens(resource)
    r5_tokens, r5_ranges = _r5_values(resource)
    status = resource.get("status")
    date, date_last = when or (None, None)
    creation, creation_last = created or (None, None)
    return SearchIndex(patient=patient, patient_reference=patient_ref, date=date, date_last=date_last,
                       status=status if isinstance(status, str) else None, tokens=tuple(tokens + r5_tokens),
                       creation=creation, creation_last=creation_last, ranges=tuple(ranges + r5_ranges))


def consent_to_index(resource: Mapping[str, Any]) -> SearchIndex:
    """The SearchIndex of an R4 Consent (https://hl7.org/fhir/R4/consent.html#search): patient,
    date = dateTime (its range: :func:`_range_of`), status, tokens category, scope, purpose (provision.purpose at any depth),
    action and policy-rule."""
    patient, patient_ref = _patient_of(resource.get("patient"))
    tokens: list[tuple[str, str | None, str]] = []
    tokens += _concept_tokens("category", resource.get("category") or [])
    tokens += _concept_tokens("scope", resource.get("scope"))
    tokens += _concept_tokens("policy-rule", resource.get("policyRule"))

    def walk(provision: Any) -> None:
        if not isinstance(provision, Mapping):
            return
        for c in provision.get("purpose") or []:
            if isinstance(c, Mapping) and isinstance(c.get("code"), str):
                system = c.get("system")
                tokens.append(("purpose", system if isinstance(system, str) else None, c["code"]))
        tokens.extend(_concept_tokens("action", provision.get("action") or []))
        for child in provision.get("provision") or []:
            walk(child)

    walk(resource.get("provision"))
    r5_tokens, r5_ranges = _r5_values(resource)
    status = resource.get("status")
    date, date_last = _first_last(resource.get("dateTime"))
    return SearchIndex(patient=patient, patient_reference=patient_ref, date=date, date_last=date_last,
                       status=status if isinstance(status, str) else None, tokens=tuple(tokens + r5_tokens),
                       ranges=tuple(r5_ranges))


def provenance_to_index(resource: Mapping[str, Any]) -> SearchIndex:
    """Provenance: date = recorded; tokens target (literal references) and activity. R4
    Provenance names no patient: the caller adds the patient of the target record."""
    tokens: list[tuple[str, str | None, str]] = []
    for target in resource.get("target") or []:
        if isinstance(target, Mapping) and isinstance(target.get("reference"), str):
            tokens.append(("target", None, target["reference"]))
    tokens += _concept_tokens("activity", resource.get("activity"))
    date, date_last = _first_last(resource.get("recorded"))
    return SearchIndex(date=date, date_last=date_last, tokens=tuple(tokens))


def audit_event_to_index(resource: Mapping[str, Any]) -> SearchIndex:
    """AuditEvent: patient from the patient entity (role object-role#1), date = recorded,
    tokens type, subtype, action, outcome, entity (literal references)."""
    patient: Identifier | None = None
    tokens: list[tuple[str, str | None, str]] = []
    for entity in resource.get("entity") or []:
        if not isinstance(entity, Mapping):
            continue
        what = entity.get("what")
        role = entity.get("role")
        if isinstance(role, Mapping) and role.get("code") == "1":
            patient, _ = _patient_of(what)
        if isinstance(what, Mapping) and isinstance(what.get("reference"), str):
            tokens.append(("entity", None, what["reference"]))
    for param in ("type", "subtype"):
        value = resource.get(param)
        for c in value if isinstance(value, list) else [value]:
            if isinstance(c, Mapping) and isinstance(c.get("code"), str):
                system = c.get("system")
                tokens.append((param, system if isinstance(system, str) else None, c["code"]))
    for param in ("action", "outcome"):
        if isinstance(resource.get(param), str):
            tokens.append((param, None, resource[param]))
    date, date_last = _first_last(resource.get("recorded"))
    return SearchIndex(patient=patient, date=date, date_last=date_last, tokens=tuple(tokens))


def index_resource(resource: Mapping[str, Any]) -> SearchIndex:
    """The SearchIndex of any resource the adapter stores, dispatching on resourceType.

    Binary has no searchable values of its own (it is governed by its record): an empty index.

    Raises:
        ValueError: a resource type the adapter does not store.
    """
    rtype = resource.get("resourceType")
    if rtype in ("Media", "DocumentReference"):
        return record_to_index(resource)
    if rtype == "Consent":
        return consent_to_index(resource)
    if rtype == "Provenance":
        return provenance_to_index(resource)
    if rtype == "AuditEvent":
        return audit_event_to_index(resource)
    if rtype == "Binary":
        return SearchIndex()
    raise ValueError(f"no search index for resourceType {rtype!r}")


def purpose_coding(code: str, purposes: Mapping[str, Any] | None = None) -> JSON:
    """A v3-ActReason Coding, with the display from the purposes table when known."""
    entry = purposes.get(code) if purposes is not None else None
    display = getattr(entry, "display", None)
    return coding(V3_ACT_REASON, code, display if isinstance(display, str) else None)


__all__ = [
    "ENCOUNTER_IDENTIFIER", "JSON", "R5_PREFIX", "RECORD_INDEX_VERSION", "audit_event_to_index", "coding", "concept", "consent_to_index", "display_reference",
    "extension", "extension_code", "fhir_date", "fhir_datetime", "fhir_instant", "find_extension",
    "identifier", "index_resource", "parse_fhir_datetime", "patient_reference", "provenance_to_index",
    "purpose_coding", "record_attachment", "record_to_index", "reference",
]
