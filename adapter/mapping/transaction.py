"""Transaction Bundle (IHE MHD ITI-65 shape, https://profiles.ihe.net/ITI/MHD/ITI-65.html) →
a submission of one or more photos (documents) of one patient, and the transaction-response
Bundle (https://hl7.org/fhir/R4/http.html#transaction-response).

Accepted: ``Bundle.type`` transaction with one or more documents, at most :data:`MAX_DOCUMENTS`
(more: 413): each a Media or DocumentReference whose attachment url references its own Binary
(the image, base64 in ``data``; by its fullUrl, e.g. ``urn:uuid:…``, or ``Binary/<id>``, also
relative to the record's RESTful fullUrl). A Binary no record references, or one that two
records reference, is refused; so is a record of another patient than the first record's (an
ITI-65 submission is of one patient, 2:3.65.4.1.2.1). At most one Consent, which applies to
every document (the ingest records it once, restricted to all of their records). Every entry has ``request.method`` POST to its resource type (a Binary,
the record and the Consent: the adapter assigns their ids) or, for a List or the Patient, PUT to
its ``Type/id``, and no conditional element (``ifNoneExist``…): see ``_check_request``. The SubmissionSet List
IHE MHD always sends, and at most one Patient (the push case, ITI-65 2:3.65.4.1.2.2), are read and
acknowledged, not stored: the adapter keeps no registry of submissions and owns no Patient (their
answer, 200 OK without a location, says so in its outcome). A Folder type List is acknowledged
with the PartialFolderContentNotProcessed warning and a DocumentReference's relatesTo with its
Partial…ContentNotProcessed one (ITI-65 2:3.65.4.1.3): the adapter keeps neither. A List whose
subject is another patient than the document's is refused (a misfiled submission). Any other
resource type (a Provenance) is refused as not supported: the adapter writes its own Provenance.
Ids the client chose are not kept; the response's locations name the stored ones.

Validation: the Bundle and each entry resource with their fhir.resources R4B models (R4B reads
R4, standards.md §1) — errors carry FHIRPath-like expressions such as
``Bundle.entry[1].resource.status`` — plus what those models do not check: required bindings
of the status codes, ``request.method``, base64 of ``Binary.data``.

How metadata is read (``PhotoMetadata`` of ``POST /photos``):

======================  ==================================================================
patient                 subject.identifier and subject.reference (a conditional reference
                        ``Patient?identifier=system|value``, http.html#trules, as the identifier
                        it names; a reference alone is not resolved); when the subject references
                        the Patient the Bundle carries (its fullUrl), that Patient's identifier
                        (subject.identifier names which when it has several) and no reference
                        (a fullUrl means nothing outside the Bundle)
kind                    extension photo-kind; else, for a DocumentReference, document when its
                        type is one mappings/kinds.yaml lists (document.documentTypes: a report,
                        a result, a form); else clinical, whatever the modality or resource
                        type (:func:`_kind`: fail closed, a clinical photo needs consent)
source                  extension photo-source; else clinician
author                  Media.operator / the first DocumentReference.author that names something
                        to keep (:func:`_chosen_reference`; the others warned of); for colleague
                        sources its display is the colleague's name (required); a local reference
                        to a contained Practitioner, Organization or PractitionerRole (MHD
                        Comprehensive) is its identifier and name, a display alone a display
encounter               Media.encounter / DocumentReference.context.encounter[0] (a contained
                        one likewise)
takenAt                 Media.createdDateTime / attachment.creation / context.period.start
                        (a date-only value becomes midnight, naive, and is written back as
                        a date)
bodySite, laterality    the SNOMED coding of bodySite that mappings/body_sites.yaml knows;
                        laterality from our laterality extension or a laterality coding
note                    note[].text (our "Quality warning: " notes are skipped: they are
                        recomputed); DocumentReference: description after the title. For an
                        external colleague the notes are the discussion note
device                  extension capture-device
title                   attachment.title
attachmentHash          attachment.hash (checked against the bytes sent): kept when they are stored
                        as sent
masterIdentifier        DocumentReference.masterIdentifier (system and value): the document's
                        own id (MHD: its uniqueId), kept as the record's masterIdentifier
document                a DocumentReference's type, category, securityLabel, identifier
                        (MHD's entryUUID), context.facilityType, practiceSetting, event and
                        content.format, as adapter.mapping.document_metadata keeps them
consent                 the Consent: purposes = provision.purpose (v3-ActReason); method as
                        every Consent is read (adapter.consent.grants.consent_method: extension
                        consent-method, else ``implied`` for policyRule v3-ActCode#IMPLIED,
                        else ``written`` when sourceAttachment holds data or a url, else
                        ``verbal``: OPTIN alone does not say whether it was written);
                        date = dateTime; recordedBy = extension consent-recorded-by; form =
                        sourceAttachment.data. It must be active, a permit, and for the
                        subject's patient. The Consent itself is stored as POST /fhir/Consent
                        stores it, every element as sent (:func:`_consent_as_stored`).
======================  ==================================================================
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import unquote

from pydantic import ValidationError

from adapter.consent.grants import consent_method, names_read_action
from adapter.errors import (
    AdapterError,
    BusinessRuleViolation,
    InvalidInput,
    InvalidResource,
    NotSupported,
    PayloadTooLarge,
    RequiredElementMissing,
    UnknownCode,
    UnsupportedMediaType,
)
from adapter.imaging.sniff import check_declared_upload
from adapter.mapping.codes import (
    EXT_CAPTURE_DEVICE,
    EXT_CONSENT_METHOD,
    EXT_CONSENT_RECORDED_BY,
    EXT_LATERALITY,
    EXT_PHOTO_KIND,
    EXT_PHOTO_SOURCE,
    V3_ACT_REASON,
)
from adapter.mapping.consent_checks import check_consent
from adapter.mapping.document_metadata import (
    NOT_SAVED,
    not_kept,
    read_document_metadata,
    refuse_not_understood,
)
from adapter.mapping.fhir_json import check_indexed_values, check_json_representation, validate_model
from adapter.mapping.fhir_r4 import JSON, find_extension, parse_fhir_datetime, utc_instant
from adapter.mapping.mhd_provide_bundle import FOLDER, check_provide_bundle, list_type
from adapter.mapping.outcome import issue, outcome
from adapter.mapping.photo import QUALITY_WARNING_PREFIX
from adapter.mapping.tables import Tables
from adapter.model.photo import (
    ConsentMethod,
    DeviceOwnership,
    PhotoKind,
    PhotoSource,
    TransactionPhotoMetadata,
    patient_reference_problem,
)
from adapter.model.purpose import V3_ACT_REASON_SYSTEMS
from adapter.refusals import RefusalCode

ROLE_BINARY = "binary"
ROLE_RECORD = "record"
ROLE_CONSENT = "consent"
# IHE MHD ITI-65 always sends a SubmissionSet List: it is checked as the ProvideBundle profiles
# require (adapter.mapping.mhd_provide_bundle) and acknowledged, not stored (the adapter keeps no
# document registry of its own).
ROLE_SUBMISSION_SET = "submission-set"
# The Patient a Document Source may carry in the Bundle (ITI-65 2:3.65.4.1.2.2): read for the
# subject's identifier, acknowledged, not stored (the adapter owns no Patient).
ROLE_PATIENT = "patient"
#: The Document Sharing error for a document whose size or hash is not its own (ITI TF-3 Table 4.2.4.1-2).
XDS_REPOSITORY_METADATA_ERROR = "XDSRepositoryMetadataError"
#: The most documents (records, each with its Binary) one transaction may carry: a bound on the work of
#: one request beside its size (ADAPTER_MAX_UPLOAD_BYTES), answered 413 beyond it.
MAX_DOCUMENTS = 20
#: Roles whose entries are acknowledged, not stored.
ACKNOWLEDGED_ROLES = frozenset({ROLE_SUBMISSION_SET, ROLE_PATIENT})
_ROLES = {"Binary": ROLE_BINARY, "Media": ROLE_RECORD, "DocumentReference": ROLE_RECORD,
          "Consent": ROLE_CONSENT, "List": ROLE_SUBMISSION_SET, "Patient": ROLE_PATIENT}
_METHODS = frozenset({"POST", "PUT"})
#: What a PUT may send: what the adapter acknowledges without storing (a Folder or SubmissionSet
#: List, the Patient of the push case), which ITI-65 lets a Document Source PUT.
_PUT_TYPES = frozenset({"List", "Patient"})
#: Bundle.entry.request's conditional elements (http.html#transaction), none supported.
_CONDITIONAL_REQUESTS = ("ifNoneExist", "ifMatch", "ifNoneMatch", "ifModifiedSince")
_HTTP_VERBS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
_BUNDLE_TYPES = frozenset({"document", "message", "transaction", "transaction-response", "batch",
                           "batch-response", "history", "searchset", "collection"})
#: Required bindings of ``status`` (R4 EventStatus, DocumentReferenceStatus, ConsentState).
_STATUS = {
    "Media": frozenset({"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
                        "entered-in-error", "unknown"}),
    "DocumentReference": frozenset({"current", "superseded", "entered-in-error"}),
    "Consent": frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"}),
}
_COLLEAGUE_SOURCES = frozenset({PhotoSource.COLLEAGUE_INTERNAL, PhotoSource.COLLEAGUE_EXTERNAL})
_HISTORY = re.compile(r"/_history/([^/]+)$")
#: The warning ITI-65 Table 2:3.65.4.1.3-1 gives for each relatesTo.code a recipient does not keep
#: (``signs``, which the table leaves out, with the Document Sharing code for relationships:
#: ITI TF-3 Table 4.2.4.1-2).
_RELATIONSHIP_WARNINGS = {"replaces": "PartialReplaceContentNotProcessed",
                          "transforms": "PartialTransformContentNotProcessed",
                          "appends": "PartialAppendContentNotProcessed",
                          "signs": "PartialRelationshipContentNotProcessed"}


@dataclass(frozen=True)
class EntryWarning:
    """What of an entry was not processed (the entry's ``response.outcome``, ITI-65
    2:3.65.4.2.2): the Document Sharing warning code (ITI TF-3 Table 4.2.4.1-2), why, and where;
    an entry acknowledged and not stored (the SubmissionSet, the Patient) gets a note of
    severity ``information`` and no code."""

    code: str | None
    diagnostics: str
    expression: str
    severity: str = "warning"


@dataclass(frozen=True)
class TransactionDocument:
    """One document of the transaction: a record (Media or DocumentReference) read as photo
    metadata, and the Binary it references.

    ``record_index`` and ``binary_index`` are their entries' indexes; ``sent_size`` the record's
    entry index, the expression of its attachment.size and the size sent (checked against the
    bytes sent), when sent: the stored bytes may be fewer (metadata removed)."""

    meta: TransactionPhotoMetadata
    image_bytes: bytes
    content_type: str
    record_index: int
    binary_index: int
    sent_size: tuple[int, str, int] | None = None
    #: The record's entry index and the expression of its attachment.hash, when sent (checked
    #: against the bytes sent; kept when they are stored as sent).
    sent_hash: tuple[int, str] | None = None


@dataclass(frozen=True)
class TransactionSubmission:
    """A transaction Bundle read as a submission of one or more documents of one patient.

    ``documents`` in the order of their records in the Bundle; ``entry_roles`` has one role per
    Bundle entry, in request order ("binary", "record", "consent"…), so the response can answer
    entry by entry; ``entry_full_urls`` maps each role to (the last of) its entries' fullUrl
    (roles whose entry has none are absent); ``entry_warnings`` maps an entry's index to what of
    it was not processed (a Folder, a relationship, each element of a record not stored as sent);
    ``consent_index`` is the Consent's entry, which applies to every document.
    """

    documents: tuple[TransactionDocument, ...]
    entry_roles: tuple[str, ...]
    entry_full_urls: dict[str, str] = field(default_factory=dict)
    entry_warnings: dict[int, tuple[EntryWarning, ...]] = field(default_factory=dict)
    consent_index: int | None = None

    @property
    def meta(self) -> TransactionPhotoMetadata:
        """The first document's metadata."""
        return self.documents[0].meta

    @property
    def image_bytes(self) -> bytes:
        """The first document's bytes."""
        return self.documents[0].image_bytes

    @property
    def content_type(self) -> str:
        return self.documents[0].content_type

    @property
    def sent_size(self) -> tuple[int, str, int] | None:
        return self.documents[0].sent_size


@dataclass(frozen=True)
class _Entry:
    index: int
    resource: Mapping[str, Any]
    full_url: str | None
    request: Mapping[str, Any]

    @property
    def path(self) -> str:
        return f"Bundle.entry[{self.index}].resource"


# ---------------------------------------------------------------------------------------------
# structural validation


def _entries(bundle: Mapping[str, Any], fhir_base: str | None) -> list[_Entry]:
    raw = bundle.get("entry")
    if not isinstance(raw, list) or not raw:
        raise RequiredElementMissing("a transaction Bundle needs entries (a Binary and a Media or "
                                     "DocumentReference)", expression="Bundle.entry")
    entries: list[_Entry] = []
    shell_entries: list[Any] = []
    for i, entry in enumerate(raw):
        if not isinstance(entry, Mapping):
            raise InvalidResource("a Bundle entry must be an object", expression=f"Bundle.entry[{i}]")
        resource = entry.get("resource")
        method = entry.get("request", {}).get("method") if isinstance(entry.get("request"), Mapping) else None
        if not isinstance(resource, Mapping) and method in _HTTP_VERBS and method not in _METHODS:
            # a read or a delete in a transaction: not that it lacks a resource, that it is not taken
            raise NotSupported(f"request.method {method} is not supported in a transaction: POST or PUT",
                               expression=f"Bundle.entry[{i}].request.method")
        if not isinstance(resource, Mapping):
            raise RequiredElementMissing("every entry of the transaction needs a resource",
                                         expression=f"Bundle.entry[{i}].resource")
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str) or rtype not in _ROLES:
            raise NotSupported(f"a {str(rtype)[:40]} entry is not supported: send a Binary, a Media or "
                               "DocumentReference and optionally a Consent (a SubmissionSet List and the "
                               "Patient are acknowledged)",
                               expression=f"Bundle.entry[{i}].resource.resourceType")
        validate_model(str(rtype), resource, f"Bundle.entry[{i}].resource")
        shell_entries.append({k: v for k, v in entry.items() if k != "resource"})
        request = entry.get("request")
        full_url = entry.get("fullUrl")
        entries.append(_Entry(i, resource, full_url if isinstance(full_url, str) else None,
                              request if isinstance(request, Mapping) else {}))
    # the Bundle itself, without the resources already validated (Bundle.entry.resource is 0..1)
    validate_model("Bundle", {**bundle, "entry": shell_entries}, "Bundle")
    seen: set[str] = set()
    for e in entries:  # bdl-7: a fullUrl names one entry (versions aside, which a transaction's POSTs have not)
        if e.full_url is not None and e.full_url in seen:
            raise InvalidResource("two entries have the same fullUrl (FHIR bdl-7): a reference to it would name "
                                  "either", expression=f"Bundle.entry[{e.index}].fullUrl")
        if e.full_url is not None:
            seen.add(e.full_url)
    for e in entries:
        method = e.request.get("method")
        if not e.request:  # FHIR invariant bdl-3: basic validation, 400
            raise InvalidResource("a transaction entry needs request (FHIR invariant bdl-3)",
                                  expression=f"Bundle.entry[{e.index}].request")
        if method not in _HTTP_VERBS:
            raise UnknownCode(f"request.method {str(method)[:20]!r} is not an HTTP verb of FHIR",
                              expression=f"Bundle.entry[{e.index}].request.method")
        if method not in _METHODS:
            raise NotSupported(f"request.method {method} is not supported: POST or PUT",
                               expression=f"Bundle.entry[{e.index}].request.method")
        _check_request(e, fhir_base)
        rtype = str(e.resource["resourceType"])
        status = e.resource.get("status")
        if rtype in _STATUS and status not in _STATUS[rtype]:
            raise UnknownCode(f"{rtype}.status {str(status)[:40]!r} is not in the required value set "
                              f"({', '.join(sorted(_STATUS[rtype]))})", expression=f"{e.path}.status")
    return entries


def _relative_url(url: str, fhir_base: str | None) -> str | None:
    """``request.url`` relative to this server's base (http.html#transaction: "the URL is
    relative to the root of the server"; an absolute one names this server only under its own
    base); None when it names another server, or a Bundle-local ``urn:``."""
    if fhir_base and url.startswith(fhir_base.rstrip("/") + "/"):
        return url[len(fhir_base.rstrip("/")) + 1:]
    if ":" in url.split("/", 1)[0] or url.startswith("/"):
        return None
    return url


def _check_request(e: _Entry, fhir_base: str | None) -> None:
    """The entry's ``request`` as FHIR http.html#transaction processes it, each entry by its
    ``method`` and ``url``: a POST creates a resource of the url's type, which must be the
    entry's (``DocumentReference``, or ``<this base>/DocumentReference``); a PUT updates the
    resource the url names, or creates it with that id. The adapter assigns every id it stores
    and never updates a record, a Binary or (here) a Consent (``updateCreate`` false: a PUT alone
    to an id it does not hold gets 405), so a PUT is taken only of what it acknowledges without
    storing (a Folder or SubmissionSet List, the Patient of the push case: ITI-65 lets a Document
    Source PUT those), whose url names the entry's type and id. A conditional request
    (``ifNoneExist``, ``ifMatch``, ``ifNoneMatch``, ``ifModifiedSince``) is refused, as
    ``If-None-Exist`` on ``POST /fhir/Consent`` is: ignored, a retried Bundle would create twice.
    Any refusal fails the whole transaction (nothing stored), the expression naming the entry."""
    where = f"Bundle.entry[{e.index}].request"
    for name in _CONDITIONAL_REQUESTS:
        if e.request.get(name) is not None:
            raise NotSupported(f"conditional requests ({name}) are not supported in a transaction: the adapter would "
                               "ignore the condition, and a Bundle sent again would create a second record or "
                               "Consent; search (e.g. Consent?patient:identifier=…) before sending",
                               expression=f"{where}.{name}")
    rtype = str(e.resource["resourceType"])
    method = e.request.get("method")
    url = e.request.get("url")
    if not isinstance(url, str) or not url:
        raise RequiredElementMissing("a transaction entry's request needs its url", expression=f"{where}.url")
    if "?" in url.split("#", 1)[0]:  # before the url's server is judged: "Patient?identifier=urn:oid:…" has a colon
        raise NotSupported(f"a request.url with a query is a conditional {'update' if method == 'PUT' else 'create'}, "
                           "which is not supported in a transaction: " + (
                               "the adapter owns no Patient; name the patient in the subject's identifier (or as "
                               "Patient?identifier=system|value in subject.reference), or send the Patient with POST "
                               "Patient or PUT Patient/<id>" if rtype == "Patient" else f"send it with POST {rtype}"),
                           expression=f"{where}.url")
    path = _relative_url(url, fhir_base)
    if path is None:
        raise NotSupported(f"request.url {url[:80]!r} names no resource of this server: give it relative to the "
                           f"FHIR base ({rtype}), or absolute under this server's base", expression=f"{where}.url")
    if "#" in path:
        raise NotSupported("a request.url with a fragment names no resource", expression=f"{where}.url")
    if method == "POST":
        if path != rtype:
            raise InvalidResource(f"a POST of a {rtype} goes to {rtype}, not {path[:80]}", expression=f"{where}.url")
        return
    if rtype not in _PUT_TYPES:
        raise NotSupported(f"PUT {path[:80]} is not supported: the adapter assigns the ids of what it stores and "
                           f"never updates a {rtype} in a transaction (updateCreate false); send it with POST "
                           f"{rtype}" + (" (update a Consent with PUT /fhir/Consent/<id>)" if rtype == "Consent"
                                         else ""), expression=f"{where}.method")
    target_type, _, target_id = path.partition("/")
    if target_type != rtype or not target_id or "/" in target_id:
        raise InvalidResource(f"a PUT of a {rtype} goes to {rtype}/<id>, not {path[:80]}", expression=f"{where}.url")
    own = e.resource.get("id")
    if own is not None and own != target_id:  # http.html#update: the id is the url's
        raise InvalidResource(f"the {rtype}'s id differs from the id its request.url names",
                              expression=f"Bundle.entry[{e.index}].resource.id")


def _all(entries: Sequence[_Entry], role: str, what: str) -> list[_Entry]:
    """The entries of ``role``; at least one."""
    found = [e for e in entries if _ROLES[str(e.resource["resourceType"])] == role]
    if not found:
        raise RequiredElementMissing(f"the transaction has no {what}", expression="Bundle.entry")
    return found


def _one(entries: Sequence[_Entry], role: str, what: str, why: str) -> _Entry | None:
    """The entry of ``role``, None when there is none; a second is refused, saying ``why``."""
    found = [e for e in entries if _ROLES[str(e.resource["resourceType"])] == role]
    if len(found) > 1:
        raise NotSupported(f"more than one {what}: {why}", expression=f"Bundle.entry[{found[1].index}]")
    return found[0] if found else None


# ---------------------------------------------------------------------------------------------
# reading values


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _reference(value: Any) -> dict[str, Any] | None:
    """Our Reference model's fields from an R4 Reference (its reference, identifier and display:
    a display alone names the target by its name, references.html), or None if it names nothing."""
    if not isinstance(value, Mapping):
        return None
    out: dict[str, Any] = {}
    if _str(value.get("reference")):
        out["reference"] = value["reference"]
    ident = value.get("identifier")
    if isinstance(ident, Mapping) and _str(ident.get("system")) and _str(ident.get("value")):
        out["identifier"] = {"system": ident["system"], "value": ident["value"]}
    if _str(value.get("display")):
        out["display"] = value["display"]
    return out or None


def _ext_code(resource: Mapping[str, Any], url: str, allowed: Sequence[str], path: str) -> str | None:
    ext = find_extension(resource, url)
    if ext is None:
        return None
    value = ext.get("valueCode")
    if value not in allowed:
        index = list(resource.get("extension") or []).index(ext)
        raise UnknownCode(f"{url.rsplit('/', 1)[-1]} must be one of {list(allowed)}",
                          expression=f"{path}.extension[{index}].valueCode")
    return str(value)


def _kind(record: _Entry, tables: Tables) -> PhotoKind:
    """What the record shows, as its sender said it: the photo-kind extension; else, for a
    DocumentReference, a ``type`` that mappings/kinds.yaml lists under ``document.documentTypes``
    (a report, a result, a form: what an IHE MHD Document Source, which knows nothing of the
    extension, says of a photographed document), provided no other coding of the type in the same
    system names another concept; else clinical. A photo not said to be of a document or of an
    image on another platform may be of the patient's body, which needs the patient's consent, so
    it is not guessed to need none (fail closed; safety review finding 2): neither a DICOM
    modality (ophthalmic OP and endoscopy ES photos are of the body) nor the resource type (a
    Document Source sends every photo as a DocumentReference) nor a category (MHD's classCode
    groups documents coarsely) decides it."""
    r = record.resource
    code = _ext_code(r, EXT_PHOTO_KIND, [k.value for k in PhotoKind], record.path)
    if code is not None:
        return PhotoKind(code)
    listed = {(c.system, c.code) for c in tables.kinds[PhotoKind.DOCUMENT].document_types}
    concept = r.get("type") if r["resourceType"] == "DocumentReference" else None
    codings = concept.get("coding") if isinstance(concept, Mapping) else None
    said = [(c.get("system"), c.get("code")) for c in codings if isinstance(c, Mapping)] \
        if isinstance(codings, list) else []
    systems = {system for system, _ in listed}
    if any(s in listed for s in said) and all(s in listed for s in said if s[0] in systems):
        return PhotoKind.DOCUMENT
    return PhotoKind.CLINICAL


def _attachment(record: _Entry) -> tuple[Mapping[str, Any], str]:
    """The record's Attachment and its path; RequiredElementMissing when it has none (a JSON
    null passes the model as absent)."""
    r = record.resource
    if r["resourceType"] == "Media":
        attachment, where = r.get("content"), f"{record.path}.content"
    else:
        content = r.get("content") or []
        if not isinstance(content, list) or len(content) > 1:
            raise NotSupported("a DocumentReference with more than one content is not supported",
                               expression=f"{record.path}.content")
        first = content[0] if content else None
        attachment = first.get("attachment") if isinstance(first, Mapping) else None
        where = f"{record.path}.content[0].attachment"
    if not isinstance(attachment, Mapping):
        raise RequiredElementMissing("the record needs its attachment, which references the Binary",
                                     expression=where)
    return attachment, where


def _body_site(record: _Entry, tables: Tables) -> tuple[str | None, str | None]:
    site = record.resource.get("bodySite")
    if not isinstance(site, Mapping):
        return None, None
    table = tables.body_sites
    by_code = {v.code: k for k, v in table.laterality.items()}
    codings = [c for c in site.get("coding") or []
               if isinstance(c, Mapping) and c.get("system") == table.system]
    code = next((c["code"] for c in codings if c.get("code") in table.codes), None)
    if code is None:
        raise UnknownCode("bodySite has no SNOMED CT code accepted here (mappings/body_sites.yaml)",
                          expression=f"{record.path}.bodySite")
    laterality = next((by_code[c["code"]] for c in codings if c.get("code") in by_code), None)
    ext = find_extension(site, EXT_LATERALITY)
    if ext is not None:
        value = ext.get("valueCoding")
        lat = value.get("code") if isinstance(value, Mapping) else None
        if lat not in by_code:
            raise UnknownCode("laterality must be a SNOMED CT laterality code (mappings/body_sites.yaml)",
                              expression=f"{record.path}.bodySite.extension")
        laterality = by_code[lat]
    return code, laterality


def _notes(record: _Entry, title: str | None) -> str | None:
    r = record.resource
    if r["resourceType"] == "Media":
        texts = [n["text"] for n in r.get("note") or [] if isinstance(n, Mapping) and _str(n.get("text"))
                 and not n["text"].startswith(QUALITY_WARNING_PREFIX)]
    else:
        paragraphs = [p for p in str(r.get("description") or "").split("\n\n") if p.strip()]
        if paragraphs and title is not None and paragraphs[0] == title:
            paragraphs = paragraphs[1:]
        texts = [p for p in paragraphs if not p.startswith(QUALITY_WARNING_PREFIX)]
    return "\n\n".join(texts) or None


#: Provision elements a Consent sent in a transaction may not have (they are not carried into the
#: Consent recorded, so leaving them out would widen it): refused. ``period`` is carried by its
#: start (an end is refused) and ``action`` must name use or access as a grant reads it
#: (adapter.consent.grants.names_read_action; the Consent recorded names collect and use).
_UNCARRIED_PROVISION = ("actor", "securityLabel", "class", "code", "dataPeriod", "data", "provision")


def _consent(entry: _Entry, patient: Mapping[str, str], tables: Tables,
             patient_aliases: frozenset[str] = frozenset(),
             names_entry: Callable[[str, Any], bool] = lambda _reference, _entry: False) -> dict[str, Any]:
    """The Bundle's Consent as a statement of the photo's consent (module docstring) and, in
    ``resource``, as it is stored (:func:`_consent_as_stored`). ``patient_aliases``: the
    references that name the Patient the Bundle carries, which is the photo's patient;
    ``names_entry``: does a reference, written in an entry, name an entry of the Bundle."""
    r = entry.resource
    path = entry.path
    if r.get("status") != "active":
        raise NotSupported("a Consent sent with a photo must be active", expression=f"{path}.status")
    named: Mapping[str, Any] = r["patient"] if isinstance(r.get("patient"), Mapping) else {}
    ident = named.get("identifier")
    conditional = _conditional_identifier(_str(named.get("reference")), f"{path}.patient")
    if conditional is not None and not isinstance(ident, Mapping):
        ident = {"system": conditional[0], "value": conditional[1]}
    if isinstance(ident, Mapping):
        if (ident.get("system"), ident.get("value")) != (patient["system"], patient["value"]):
            raise InvalidInput("the Consent is for another patient than the photo",
                               expression=f"{path}.patient.identifier", refusal=RefusalCode.SEVERAL_PATIENTS)
    elif not (_str(named.get("reference")) and (named.get("reference") == patient.get("reference")
                                                 or _names(str(named["reference"]), entry, patient_aliases))):
        # a reference alone names the photo's patient only if it is the photo's own subject reference
        # (or the Patient of this Bundle, whose identifier the photo's patient is)
        raise InvalidInput("the Consent must name the photo's patient: by its identifier, or by the reference "
                           "the photo's subject has", expression=f"{path}.patient")
    provision = r.get("provision")
    if not isinstance(provision, Mapping):
        raise RequiredElementMissing("the Consent needs a provision with the purposes it permits",
                                     expression=f"{path}.provision")
    # The Consent is stored as sent, but restricted to the Bundle's photos (provision.data): a
    # restriction of its own would be lost in that (or read as nothing by the decision), and the
    # Consent would grant other than it said.
    actions = provision.get("action")
    if actions and not (isinstance(actions, list) and names_read_action(actions)):
        raise NotSupported("a Consent sent with a photo must permit its use (provision.action use or access)",
                           expression=f"{path}.provision.action")
    for element in _UNCARRIED_PROVISION:
        if provision.get(element):
            raise NotSupported(f"a Consent sent with a photo cannot restrict its provision by {element}; record "
                               "such a Consent with POST /fhir/Consent", expression=f"{path}.provision.{element}")
    if provision.get("type", "permit") != "permit":
        raise NotSupported("a Consent sent with a photo must permit (provision.type permit)",
                           expression=f"{path}.provision.type")
    purposes: list[str] = []
    for k, c in enumerate(provision.get("purpose") or []):
        if not (isinstance(c, Mapping) and c.get("system") in V3_ACT_REASON_SYSTEMS
                and c.get("code") in tables.purposes.codes):
            raise UnknownCode(f"provision.purpose must be v3-ActReason purpose-of-use codes accepted here "
                              f"({V3_ACT_REASON})", expression=f"{path}.provision.purpose[{k}]")
        purposes.append(str(c["code"]))
    if not purposes:
        raise RequiredElementMissing("the Consent must name the purposes it permits",
                                     expression=f"{path}.provision.purpose")
    _ext_code(r, EXT_CONSENT_METHOD, [m.value for m in ConsentMethod], path)  # an unknown method, named
    stored = _consent_as_stored(entry, patient, tables, patient_aliases, names_entry)
    # as every Consent is read (adapter.consent.grants.consent_method); a Consent that does not say
    # how it was given is no written one, so the rules judge it as verbal
    method = consent_method(stored) or ConsentMethod.VERBAL
    out: dict[str, Any] = {"purposes": purposes, "method": method.value, "resource": stored}
    when = parse_fhir_datetime(r.get("dateTime"))
    period = provision.get("period")
    if isinstance(period, Mapping):
        if period.get("end"):
            raise NotSupported("a Consent sent with a photo cannot end (provision.period.end); record such a "
                               "Consent with POST /fhir/Consent", expression=f"{path}.provision.period.end")
        start = parse_fhir_datetime(period.get("start"))
        if start is not None and (when is None or utc_instant(start) > utc_instant(when)):
            when = start  # in force from the later of the two
    if when is not None:
        out["date"] = when
    recorded = find_extension(r, EXT_CONSENT_RECORDED_BY)
    recorded_by = _reference(recorded.get("valueReference")) if recorded is not None else None
    if recorded_by is not None:
        out["recordedBy"] = recorded_by
    attachment = stored.get("sourceAttachment")
    if isinstance(attachment, Mapping) and _str(attachment.get("data")):
        out["form"] = attachment["data"]
        out["formContentType"] = attachment["contentType"]
    return out


#: The id the Consent is checked under (adapter.mapping.consent_checks); the ingest gives it its own.
_CHECKED_ID = "bundle-consent"


def _consent_as_stored(entry: _Entry, patient: Mapping[str, str], tables: Tables, patient_aliases: frozenset[str],
                       names_entry: Callable[[str, Any], bool]) -> dict[str, Any]:
    """The Bundle's Consent as ``POST /fhir/Consent`` stores it (adapter.mapping.consent_checks:
    the same checks, its signed form kept alike), every element as sent (who consented, its
    verification, the link to its signed form…: review "ingest" finding 1), but for what only
    means something inside the Bundle: its ``patient`` is the photo's patient by identifier (a
    reference to the Patient the Bundle carries, or a conditional one, resolved to it), and so is
    any other reference to that Patient. A reference to another entry of the Bundle, or to a
    ``urn:`` no entry has, is refused: stored, it would name nothing (no id the adapter assigns
    is known to the sender). Without its id: the id a POST entry's resource carries is ignored
    (https://hl7.org/fhir/R4/http.html#transaction, as ``POST /fhir/Consent`` ignores it; review
    "merges" finding 2), the ingest gives it one, and the provision.data of the Bundle's photos."""
    r = copy.deepcopy({k: v for k, v in entry.resource.items() if k != "id"})
    identifier = {"system": patient["system"], "value": patient["value"]}
    sent = r.get("patient")
    named: dict[str, Any] = sent if isinstance(sent, dict) else {}
    kept = {k: v for k, v in named.items() if k != "reference"}
    kept.setdefault("identifier", identifier)
    reference = _str(named.get("reference"))
    if reference and "?" not in reference and not reference.lower().startswith("urn:") \
            and not _names(reference, entry, patient_aliases):
        kept["reference"] = reference
    r["patient"] = kept
    for where, ref in _references({k: v for k, v in r.items() if k != "patient"}, entry.path):
        literal = _str(ref.get("reference"))
        if literal is None or literal.startswith("#"):  # none, or a contained resource, kept with it
            continue
        if _names(literal, entry, patient_aliases):
            del ref["reference"]
            ref.setdefault("identifier", dict(identifier))
        elif literal.lower().startswith("urn:") or names_entry(literal, entry):
            raise InvalidInput(f"{literal[:80]} names an entry of the Bundle (or nothing): stored, the Consent would "
                               "name nothing there; name it by its server URL or identifier",
                               expression=f"{where}.reference")
    try:
        checked = check_consent(r, _CHECKED_ID, tables=tables, known_purposes=set(tables.purposes.codes))
    except AdapterError as exc:
        exc.expression = [entry.path + e[len("Consent"):] if e.startswith("Consent") else e for e in exc.expression]
        raise
    checked.pop("id")
    return checked


def _references(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, object) of every Reference in ``value`` (an object with a string ``reference``), at
    any depth, contained resources aside (their references name what the resource holding them
    names)."""
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            yield path, value
        for key, item in value.items():
            if key != "contained":
                yield from _references(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _references(item, f"{path}[{i}]")


def _aliases(entry: _Entry) -> frozenset[str]:
    """The references that name an entry's resource inside the Bundle: its fullUrl, its
    ``Type/id``, the url of a PUT (https://hl7.org/fhir/R4/bundle.html#references)."""
    out = {entry.full_url} if entry.full_url else set()
    if _str(entry.resource.get("id")):
        out.add(f"{entry.resource['resourceType']}/{entry.resource['id']}")
    if entry.request.get("method") == "PUT" and _str(entry.request.get("url")):
        out.add(str(entry.request["url"]))
    return frozenset(out)


_RESTFUL_URL = re.compile(r"^(https?://.+)/[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}$")


def _resolved_url(url: str, full_url: str | None) -> str:
    """A relative reference as https://hl7.org/fhir/R4/bundle.html#references resolves it: in an
    entry whose fullUrl is a RESTful URL, against that URL's base (``Binary/123`` in
    ``http://x/fhir/DocumentReference/1`` names ``http://x/fhir/Binary/123``); else as it is."""
    match = _RESTFUL_URL.match(full_url or "")
    if match is None or ":" in url:
        return url
    return f"{match.group(1)}/{url}"


def _names(reference: str, entry: _Entry, aliases: frozenset[str]) -> bool:
    """Does ``reference``, in ``entry``, name the resource whose references are ``aliases``
    (as it is, or resolved against the entry's RESTful fullUrl)?"""
    return reference in aliases or _resolved_url(reference, entry.full_url) in aliases


def _entry_named(entries: Sequence[_Entry]) -> Callable[[str, Any], int | None]:
    """The index of the entry of the Bundle a reference, written in an entry, names (None: none):
    one of its aliases, as it is or resolved against the writing entry's RESTful fullUrl; a
    relative ``Type/id`` also names the entry whose RESTful fullUrl ends so (as servers resolve
    it in a transaction)."""
    named = [(e.index, _aliases(e), "/".join(e.full_url.rsplit("/", 2)[-2:])
              if e.full_url and _RESTFUL_URL.match(e.full_url) else None) for e in entries]

    def index(reference: str, entry: Any) -> int | None:
        return next((i for i, aliases, tail in named
                     if (isinstance(entry, _Entry) and _names(reference, entry, aliases)) or reference == tail), None)
    return index


def _entry_namer(entries: Sequence[_Entry]) -> Callable[[str, Any], bool]:
    """Does a reference, written in an entry, name an entry of the Bundle (:func:`_entry_named`)."""
    named = _entry_named(entries)
    return lambda reference, entry: named(reference, entry) is not None


def _lists_of_the_patient(entries: Sequence[_Entry], patient: Mapping[str, str], patient_entry: _Entry | None,
                          patient_aliases: frozenset[str]) -> None:
    """A SubmissionSet (or Folder) List for another patient than the document's is refused
    (ITI-65 2:3.65.4.1.2.1: every subject is the identity of the one patient): a misfiled
    submission. Its subject is compared where it can be: an identifier, or a reference to the
    Patient the Bundle carries; a reference to a Patient elsewhere is not second-guessed."""
    same = {(patient["system"], patient["value"])}
    if patient_entry is not None:
        same |= set(_identifiers_of(patient_entry.resource))
    for e in entries:
        subject = e.resource.get("subject") if e.resource["resourceType"] == "List" else None
        if not isinstance(subject, Mapping):
            continue
        named = _identifier_of(subject.get("identifier"))
        reference = _str(subject.get("reference"))
        conditional = _conditional_identifier(reference, f"{e.path}.subject")
        if conditional is not None:
            named, reference = named or conditional, None
            if conditional not in same:
                raise InvalidInput("the List is for another patient than the document", expression=f"{e.path}.subject",
                                   refusal=RefusalCode.SEVERAL_PATIENTS)
        if named is not None and named not in same:
            raise InvalidInput("the List is for another patient than the document", expression=f"{e.path}.subject",
                               refusal=RefusalCode.SEVERAL_PATIENTS)
        if named is None and reference and reference.startswith("urn:") and not _names(reference, e, patient_aliases):
            # a urn names an entry of this Bundle or nothing (bundle.html#references)
            raise InvalidInput("the List's subject names no Patient in this Bundle", expression=f"{e.path}.subject")


def _contained_name(resource: Mapping[str, Any]) -> str | None:
    """A contained resource's name as a display: an Organization's ``name``, a person's first
    HumanName (its text, else prefix, given and family)."""
    name = resource.get("name")
    if isinstance(name, str):
        return _str(name)
    first = next(iter(name), None) if isinstance(name, list) else None
    if not isinstance(first, Mapping):
        return None
    if _str(first.get("text")):
        return str(first["text"])
    parts = [*(first.get("prefix") or []), *(first.get("given") or []), first.get("family")]
    return " ".join(p for p in parts if isinstance(p, str) and p) or None


#: The elements of a contained author or encounter the Reference made of it always keeps (its
#: first identifier: the others are named); its name, or a PractitionerRole's practitioner or
#: organization, only when that gave the display kept (:func:`_contained_element_kept`).
_CONTAINED_KEPT = frozenset({"resourceType", "id", "meta", "identifier"})


def _contained_element_kept(resource: Mapping[str, Any], key: str, display_from: str, display: str | None) -> bool:
    """Whether the element ``key`` of a contained resource is kept by the Reference made of it
    (:func:`_kept_reference`): its id and first identifier; its name when that is the display
    kept; a PractitionerRole's practitioner or organization when the display kept is theirs and
    they held nothing else. Every other element is named as not stored."""
    if key in _CONTAINED_KEPT:
        return True
    if key == "name":
        return display_from == "name" or display is not None and _contained_name(resource) == display
    value = resource[key]
    return key == display_from and isinstance(value, Mapping) and set(value) <= {"display"}


def _contained_display(resource: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The name of a contained resource (:func:`_contained_name`) and where it came from (None:
    its own); a PractitionerRole's, which has none, the display of its practitioner, else of its
    organization (``"practitioner"``, ``"organization"``)."""
    name = _contained_name(resource)
    if name is not None or resource.get("resourceType") != "PractitionerRole":
        return name, None
    for key in ("practitioner", "organization"):
        ref = resource.get(key)
        if isinstance(ref, Mapping) and _str(ref.get("display")):
            return str(ref["display"]), key
    return None, None


def _stored_as(identifier: bool, display_from: str) -> str:
    """What a contained resource was stored as, in words (:func:`_kept_reference`)."""
    named = {"": "", "reference": "the display given", "name": "its name"}.get(display_from,
                                                                           f"its {display_from}'s name")
    return " and ".join(part for part in ("its identifier" if identifier else "", named) if part)


def _kept_reference(value: Any, resource: Mapping[str, Any], path: str) -> tuple[dict[str, Any] | None, str | None]:
    """A Reference (an author, an operator, an encounter) as the record the adapter builds keeps
    it (our Reference model's fields), and what of it is not kept (a warning's diagnostics), both
    None for an absent one.

    The adapter's record has no contained resources, so a local reference (``#a1``, to a resource
    in ``contained``, as MHD's Comprehensive DocumentReference has its author) becomes that
    resource's first identifier and its name (kept, ``#a1`` would name nothing: FHIR ref-1); one
    to nothing contained is refused. A Reference with neither a reference, an identifier nor a
    display (a contained Practitioner with a telecom only) is not kept: said."""
    if value is None:
        return None, None
    if not isinstance(value, Mapping) or not str(value.get("reference") or "").startswith("#"):
        kept = _reference(value)
        return kept, None if kept is not None else "was not stored: it has no reference, identifier or display"
    local = str(value["reference"])[1:]
    contained = resource.get("contained")
    found = next((c for c in contained if isinstance(c, Mapping) and c.get("id") == local), None) \
        if isinstance(contained, list) else None
    if found is None:
        raise InvalidInput(f"#{local[:40]} names no contained resource", expression=f"{path}.reference")
    rtype = str(found.get("resourceType"))[:40]
    out: dict[str, Any] = {}
    identifiers = _identifiers_of(found)
    if identifiers:
        out["identifier"] = {"system": identifiers[0][0], "value": identifiers[0][1]}
    display, display_from = _str(value.get("display")), "reference"
    if display is None:
        display, role_key = _contained_display(found)
        display_from = role_key or "name"
    if display is not None:
        out["display"] = display
    else:
        display_from = ""
    if not out:
        return None, (f"(a contained {rtype} with no identifier and no name) was not stored: the adapter keeps "
                      "what it references as an identifier and a name, having no contained resources")
    left = sorted(k for k in found if not _contained_element_kept(found, k, display_from, display))
    if len(identifiers) > 1:
        left.insert(0, "its other identifiers")
    why = (f"(a contained {rtype}) was stored as {_stored_as(bool(identifiers), display_from)}: "
           f"{', '.join(left)} not stored") if left else None
    return out, why


def _chosen_reference(candidates: Sequence[tuple[Any, str]], resource: Mapping[str, Any], what: str,
                      ) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """Of ``candidates`` (each Reference sent and its path: a DocumentReference's authors), the
    first that can be kept (:func:`_kept_reference`), the record keeping one ``what``; and a
    ``(path, diagnostics)`` for each one not kept as sent (XDSExtraMetadataNotSaved)."""
    chosen: dict[str, Any] | None = None
    chosen_path = ""
    said: list[tuple[str, str]] = []
    for value, path in candidates:
        kept, why = _kept_reference(value, resource, path)
        if chosen is not None and value is not None:
            said.append((path, f"{what} was not stored: only one {what} is stored ({chosen_path})"))
            continue
        if why is not None:
            said.append((path, f"{what} {why}"))
        if kept is not None:
            chosen, chosen_path = kept, path.rsplit(".", 1)[-1]
    return chosen, said


def _identifier_of(value: Any) -> tuple[str, str] | None:
    if isinstance(value, Mapping) and _str(value.get("system")) and _str(value.get("value")):
        return str(value["system"]), str(value["value"])
    return None


def _identifiers_of(resource: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The usable identifiers (system and value) of a resource (a Patient, a contained
    Practitioner), in their order."""
    raw = resource.get("identifier")
    return [i for i in (_identifier_of(v) for v in (raw if isinstance(raw, list) else [])) if i is not None]


#: A conditional reference naming a patient by one identifier (FHIR R4 http.html#trules,
#: "Conditional References"): ``Patient?identifier=system|value``, nothing else in the query.
_CONDITIONAL_PATIENT = re.compile(r"^Patient\?identifier=([^&#|,\\]+)\|([^&#|,\\]+)$")


def _conditional_identifier(reference: str | None, where: str) -> tuple[str, str] | None:
    """The identifier a conditional reference ``Patient?identifier=system|value`` names (FHIR R4
    http.html#trules: in a transaction the server resolves it by that search), which is how the
    adapter matches patients anyway; None for a reference that is not conditional. A conditional
    reference by other criteria (a name, a birth date, several identifiers, an identifier without
    system) would need a Patient registry the adapter does not keep: refused, not guessed."""
    if not reference or "?" not in reference:
        return None
    match = _CONDITIONAL_PATIENT.match(reference)
    system, value = (unquote(match.group(1)), unquote(match.group(2))) if match else ("", "")
    if not (system.strip() and value.strip()):
        raise NotSupported("a conditional reference is resolved only as Patient?identifier=system|value (one "
                           "identifier, with its system): the adapter keeps no Patient registry to search otherwise",
                           expression=f"{where}.reference")
    return system, value


def _subject_patient(record: _Entry, subject: Mapping[str, Any], patient_entry: _Entry | None,
                     patient_aliases: frozenset[str]) -> dict[str, str]:
    """The photo's patient: ``subject.identifier``, or the identifier of the Patient the Bundle
    carries when the subject references it (IHE MHD ITI-65 2:3.65.4.1.2.2, the push case).

    The adapter files a photo under one identifier and owns no Patient, so a Patient with several
    identifiers needs the subject to name which (one of them); a Bundle whose Patient is not the
    subject's is refused rather than one of the two taken. The reference to the Patient's
    fullUrl is not kept: outside the Bundle it names nothing."""
    where = f"{record.path}.subject"
    named = _identifier_of(subject.get("identifier"))
    reference = _str(subject.get("reference"))
    conditional = _conditional_identifier(reference, where)
    if conditional is not None:  # resolved as the identifier it names; the query itself is not kept
        if named is not None and named != conditional:
            raise InvalidInput("the subject's identifier and its conditional reference name different patients",
                               expression=f"{where}.reference")
        named, reference = conditional, None
    if patient_entry is None:
        if named is None:
            raise RequiredElementMissing("the subject must carry the patient's identifier (system and value), or "
                                         "reference the Patient the Bundle carries: the adapter matches patients "
                                         "by identifier", expression=f"{where}.identifier")
        out = {"system": named[0], "value": named[1]}
        if reference and reference.lower().startswith("urn:"):  # a Bundle-local name no entry has
            raise InvalidInput("the subject references a urn that is no entry of the Bundle: outside it, the "
                               "reference names nothing (reference the Patient's server URL, or carry the "
                               "Patient in the Bundle)", expression=f"{where}.reference")
        if reference and not reference.startswith("#"):  # a contained resource is not kept
            out["reference"] = _patient_literal(reference, where)
        return out
    known = _identifiers_of(patient_entry.resource)
    if not known:
        raise RequiredElementMissing("the Patient in the Bundle must carry an identifier (system and value): "
                                     "the adapter matches patients by identifier",
                                     expression=f"{patient_entry.path}.identifier")
    if named is not None and named not in known:
        raise InvalidInput("the subject names another patient than the Patient in the Bundle",
                           expression=f"{where}.identifier", refusal=RefusalCode.SEVERAL_PATIENTS)
    names_patient = reference is not None and _names(reference, record, patient_aliases)
    if named is None and not names_patient:
        raise InvalidInput("the subject must reference the Patient in the Bundle (its fullUrl) or name one of "
                           "its identifiers", expression=f"{where}.reference")
    if named is None and len(known) > 1:
        raise RequiredElementMissing("the Patient in the Bundle has several identifiers: name in "
                                     "subject.identifier the one the photo is filed under",
                                     expression=f"{where}.identifier")
    system, value = named or known[0]
    out = {"system": system, "value": value}
    if reference and not names_patient and not reference.startswith("#"):
        out["reference"] = _patient_literal(reference, where)
    return out


def _patient_literal(reference: str, where: str) -> str:
    """``reference``, the subject's, kept when it is a literal reference to a Patient
    (adapter.model.photo.patient_reference_problem); refused at ``where``.reference otherwise."""
    problem = patient_reference_problem(reference)
    if problem is not None:
        raise InvalidInput(f"subject.reference {problem}", expression=f"{where}.reference")
    return reference


def _warnings(entries: Sequence[_Entry], records: Sequence[tuple[_Entry, PhotoKind]], tables: Tables,
              read_not_kept: Mapping[int, Sequence[tuple[str, str]]]) -> dict[int, tuple[EntryWarning, ...]]:
    """What ITI-65 2:3.65.4.1.3 has a recipient that does not process it say so of: a Folder
    type List (the adapter keeps no folders), each relationship of a record (``relatesTo``:
    the adapter keeps none) and each element of a record it does not store as sent
    (adapter.mapping.document_metadata, ``XDSExtraMetadataNotSaved``; ``read_not_kept``: what
    reading each record's references left out, by entry index); and, as a note, the entries
    acknowledged without being stored (the SubmissionSet, the Patient), whose answer has no
    location to give, and a DocumentReference filed as a Media (which an R4 DocumentReference
    search does not find)."""
    out: dict[int, EntryWarning] = {}
    for e in entries:
        if e.resource["resourceType"] == "Patient":
            out[e.index] = EntryWarning(None, "acknowledged, not stored: the adapter owns no Patient; the "
                                        "document is filed under the patient's identifier", e.path, "information")
            continue
        if e.resource["resourceType"] != "List":
            continue
        # IHE MHD's List types (MHDlistTypes): a Folder is acknowledged with
        # PartialFolderContentNotProcessed (ITI-65 2:3.65.4.1.3)
        if list_type(e.resource) == FOLDER:
            out[e.index] = EntryWarning("PartialFolderContentNotProcessed", "the adapter keeps no folders: this "
                                        "Folder was not created or updated", e.path)
        else:
            out[e.index] = EntryWarning(None, "acknowledged, not stored: the adapter keeps no registry of "
                                        "submissions; the documents it names are stored as their entries say",
                                        e.path, "information")
    for record, _kind in records:
        relations = record.resource.get("relatesTo") if record.resource["resourceType"] == "DocumentReference" \
            else None
        for k, relation in enumerate(relations if isinstance(relations, list) else []):
            code = relation.get("code") if isinstance(relation, Mapping) else None
            if code in _RELATIONSHIP_WARNINGS and record.index not in out:
                out[record.index] = EntryWarning(_RELATIONSHIP_WARNINGS[str(code)],
                                                 f"the adapter keeps no relationships between documents: the document "
                                                 f"was stored, its {code} relationship was not recorded",
                                                 f"{record.path}.relatesTo[{k}]")
    together: dict[int, tuple[EntryWarning, ...]] = {index: (warning,) for index, warning in out.items()}
    for record, kind in records:
        filed_as = tables.kinds[kind].resource
        if record.resource["resourceType"] == "DocumentReference" and filed_as == "Media":
            together[record.index] = together.get(record.index, ()) + (EntryWarning(
                None, f"filed as a Media, as the adapter files every {kind.value} photo (mappings/kinds.yaml): an R4 "
                "Find Document References (ITI-67, GET DocumentReference) does not find it; search Media (the "
                "masterIdentifier is an identifier of it), or DocumentReference on the FHIR R5 endpoint",
                record.path, "information"),)
        dropped = tuple(EntryWarning(NOT_SAVED, f"{why}: the document was stored without it", where)
                        for where, why in [*not_kept(record.resource, record.path, kind, tables),
                                           *read_not_kept.get(record.index, ())])
        if dropped:
            together[record.index] = together.get(record.index, ()) + dropped
    return together


# ---------------------------------------------------------------------------------------------
# public


def parse_transaction(bundle: Mapping[str, Any], tables: Tables, fhir_base: str | None = None) -> TransactionSubmission:
    """Read an ITI-65-shaped transaction Bundle as a submission of one or more documents of one
    patient (module docstring); ``fhir_base``: this server's FHIR base, under which an absolute
    ``request.url`` names it.

    Raises:
        InvalidResource: not a Bundle, or an element fails its R4 model (expression names it).
        InvalidInput: ``Bundle.type`` is not transaction; a record does not reference a Binary, or
            references one another record references; the Binary data is not base64; content
            types disagree; the records are of different patients; the Consent is for another
            patient; the subject and the Bundle's Patient name different patients; a
            masterIdentifier without system or value; a local reference to nothing contained.
        RequiredElementMissing: no Binary, no record, no Binary.data, no subject.identifier (nor
            a Patient in the Bundle it references, with one identifier), no colleague name, no
            consent purposes.
        UnknownCode: an invalid status, method, extension code, body site or purpose.
        NotSupported: another resource type, a Binary no record references, more than one Consent
            or Patient, a method other than POST/PUT, a PUT of what the adapter stores, a
            conditional request, a request.url on another server, a Consent that is not an active
            permit.
        PayloadTooLarge: more than :data:`MAX_DOCUMENTS` documents (413).
    """
    if not isinstance(bundle, Mapping) or bundle.get("resourceType") != "Bundle":
        raise InvalidResource("expected a Bundle", expression="resourceType")
    check_json_representation(dict(bundle), "Bundle")
    check_indexed_values(dict(bundle), "Bundle")
    btype = bundle.get("type")
    if btype is None:  # Bundle.type is 1..1: basic validation, 400
        raise InvalidResource("a Bundle needs its type (Bundle.type 1..1): transaction", expression="Bundle.type")
    if btype != "transaction":
        if not isinstance(btype, str) or btype not in _BUNDLE_TYPES:
            raise UnknownCode(f"Bundle.type {str(btype)[:40]!r} is not a Bundle type",
                              expression="Bundle.type")
        raise InvalidInput(f"Bundle.type must be 'transaction', not {btype!r}", expression="Bundle.type")
    entries = _entries(bundle, fhir_base)
    check_provide_bundle(bundle, entries, _entry_named(entries))
    binaries = _all(entries, ROLE_BINARY, "Binary")
    records = _all(entries, ROLE_RECORD, "Media or DocumentReference")
    if len(records) > MAX_DOCUMENTS:
        raise PayloadTooLarge(f"a transaction carries at most {MAX_DOCUMENTS} documents: send the others in a "
                              "Bundle of their own", expression=f"Bundle.entry[{records[MAX_DOCUMENTS].index}]")
    consent = _one(entries, ROLE_CONSENT, "Consent", "one Consent applies to every document of the transaction")
    for record in records:
        refuse_not_understood(bundle, record.resource, record.path)
    images = {binary.index: _image(binary) for binary in binaries}
    patient_entry = _one(entries, ROLE_PATIENT, "Patient", "the documents of a transaction are of one patient")
    patient_aliases = _aliases(patient_entry) if patient_entry is not None else frozenset()
    read = _DocumentReader(entries, binaries, images, consent, patient_entry, patient_aliases, tables)
    documents = tuple(read.document(record) for record in records)
    unreferenced = next((b for b in binaries if b.index not in read.taken), None)
    if unreferenced is not None:
        raise NotSupported("this Binary is the content of no Media or DocumentReference of the transaction: the adapter "
                           "stores a Binary only as a document's content", expression=f"Bundle.entry[{unreferenced.index}]")

    roles = tuple(_ROLES[str(e.resource["resourceType"])] for e in entries)
    full_urls = {_ROLES[str(e.resource["resourceType"])]: e.full_url for e in entries if e.full_url}
    return TransactionSubmission(documents=documents, entry_roles=roles, entry_full_urls=full_urls,
                                 entry_warnings=_warnings(entries, [(r, d.meta.kind) for r, d in zip(
                                     records, documents, strict=True)], tables, read.not_kept),
                                 consent_index=consent.index if consent is not None else None)


def _image(binary: _Entry) -> tuple[bytes, str]:
    """The document a Binary carries (base64 in ``data``) and its contentType, which its bytes
    must not contradict (as ``POST /photos`` refuses it)."""
    data = binary.resource.get("data")
    if not _str(data):
        raise RequiredElementMissing("the Binary must carry the image in data (base64)",
                                     expression=f"{binary.path}.data")
    try:
        # base64Binary may hold whitespace (R4 datatypes: a MIME encoder's line breaks)
        image_bytes = base64.b64decode("".join(str(data).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("Binary.data is not base64", expression=f"{binary.path}.data") from exc
    content_type = str(binary.resource["contentType"])
    try:  # as POST /photos: a declared type the bytes contradict is refused, not corrected silently
        check_declared_upload(image_bytes[:64], content_type)
    except UnsupportedMediaType as exc:
        raise UnsupportedMediaType(exc.diagnostics.replace("the photo is declared", "Binary.contentType is"),
                                   expression=f"{binary.path}.contentType") from exc
    return image_bytes, content_type


class _DocumentReader:
    """Reads each record of the transaction with the Binary it references as one document; every
    document of one patient (ITI-65 2:3.65.4.1.2.1: a submission is of one patient), the
    transaction's Consent (if any) the statement of each. ``taken``: the entry index of each
    Binary a record referenced."""

    def __init__(self, entries: Sequence[_Entry], binaries: Sequence[_Entry], images: Mapping[int, tuple[bytes, str]],
                 consent: _Entry | None, patient_entry: _Entry | None, patient_aliases: frozenset[str],
                 tables: Tables) -> None:
        self._entries = entries
        self._binaries = binaries
        self._images = images
        self._consent = consent
        self._patient_entry = patient_entry
        self._patient_aliases = patient_aliases
        self._tables = tables
        self._patient: dict[str, str] | None = None
        self._statement: dict[str, Any] | None = None
        self.taken: dict[int, int] = {}  # a Binary's entry index -> the record's that references it
        #: what of each record (by entry index) its reading did not keep as sent: (expression, diagnostics)
        self.not_kept: dict[int, list[tuple[str, str]]] = {}

    def _binary_of(self, record: _Entry, attachment: Mapping[str, Any], att_path: str) -> _Entry:
        url = attachment.get("url")
        if not _str(url):
            raise RequiredElementMissing("the attachment must reference the Binary (url)",
                                         expression=f"{att_path}.url")
        binary = next((b for b in self._binaries if _names(str(url), record, _aliases(b))), None)
        if binary is None:
            raise InvalidInput(f"{url!s:.80} does not reference the Binary of this Bundle",
                               expression=f"{att_path}.url")
        if binary.index in self.taken:
            raise InvalidInput(f"{url!s:.80} references the Binary of another document (Bundle.entry["
                               f"{self.taken[binary.index]}]): each document has a Binary of its own",
                               expression=f"{att_path}.url")
        self.taken[binary.index] = record.index
        return binary

    def _subject(self, record: _Entry) -> dict[str, str]:
        subject = record.resource.get("subject") or {}
        patient = _subject_patient(record, subject if isinstance(subject, Mapping) else {}, self._patient_entry,
                                   self._patient_aliases)
        if self._patient is None:
            self._patient = patient
            _lists_of_the_patient(self._entries, patient, self._patient_entry, self._patient_aliases)
        elif (patient["system"], patient["value"]) != (self._patient["system"], self._patient["value"]):
            raise InvalidInput("this document is of another patient than the transaction's first: the documents of a "
                               "submission are of one patient (ITI-65); send each patient's in a Bundle of its own",
                               expression=f"{record.path}.subject", refusal=RefusalCode.SEVERAL_PATIENTS)
        return patient

    def document(self, record: _Entry) -> TransactionDocument:
        """The record's document and metadata (module docstring)."""
        tables = self._tables
        attachment, att_path = _attachment(record)
        binary = self._binary_of(record, attachment, att_path)
        image_bytes, content_type = self._images[binary.index]
        declared = attachment.get("contentType")
        if _str(declared) and declared != content_type:
            raise InvalidInput(f"attachment.contentType {declared} differs from Binary.contentType "
                               f"{content_type}", expression=f"{att_path}.contentType")
        sent_size = _check_size_and_hash(attachment, att_path, image_bytes)

        # metadata
        r = record.resource
        is_media = r["resourceType"] == "Media"
        patient = self._subject(record)
        source = PhotoSource(_ext_code(r, EXT_PHOTO_SOURCE, [s.value for s in PhotoSource], record.path)
                             or PhotoSource.CLINICIAN.value)
        meta: dict[str, Any] = {"patient": patient, "kind": _kind(record, tables).value, "source": source.value}
        authors = [(r.get("operator"), f"{record.path}.operator")] if is_media else \
            [(a, f"{record.path}.author[{k}]") for k, a in enumerate(r.get("author") or [])]
        author, said = _chosen_reference(authors, r, "operator" if is_media else "author")
        title = _str(attachment.get("title"))
        note = _notes(record, title)
        if source in _COLLEAGUE_SOURCES:
            author_path = authors[0][1] if authors else f"{record.path}.{'operator' if is_media else 'author[0]'}"
            name = _str(author.get("display")) if author is not None else None
            if name is None:
                raise RequiredElementMissing(f"a photo from a {source.value} source needs the colleague's name "
                                             "in the display of its author", expression=f"{author_path}.display")
            colleague: dict[str, Any] = {"name": name}
            if source is PhotoSource.COLLEAGUE_EXTERNAL and note:
                colleague["discussionNote"] = note
                note = None
            meta["colleague"] = colleague
        elif author is not None:
            meta["author"] = author
        encounter_raw = r.get("encounter") if is_media else next(
            iter((r.get("context") or {}).get("encounter") or []), None)
        encounter_path = f"{record.path}.encounter" if is_media else f"{record.path}.context.encounter[0]"
        encounter, encounter_said = _chosen_reference([(encounter_raw, encounter_path)], r, "encounter")
        if encounter is not None:
            meta["encounter"] = encounter
        self.not_kept[record.index] = said + encounter_said
        taken: datetime | None = parse_fhir_datetime(r.get("createdDateTime")) if is_media else None
        taken = taken or parse_fhir_datetime(attachment.get("creation"))
        if taken is None and not is_media:
            taken = parse_fhir_datetime(((r.get("context") or {}).get("period") or {}).get("start"))
        if taken is not None:
            meta["takenAt"] = taken
        if is_media:
            site, laterality = _body_site(record, tables)
            if site is not None:
                meta["bodySite"] = site
            if laterality is not None:
                meta["laterality"] = laterality
        if note:
            meta["note"] = note
        device = _ext_code(r, EXT_CAPTURE_DEVICE, [d.value for d in DeviceOwnership], record.path)
        if device is not None:
            meta["device"] = device
        if title is not None:
            meta["title"] = title
        if attachment.get("hash") is not None:  # checked above: the SHA-1 of the bytes sent
            meta["attachmentHash"] = "".join(str(attachment["hash"]).split())
        if not is_media and r.get("masterIdentifier") is not None:
            master = _identifier_of(r["masterIdentifier"])
            if master is None:
                raise InvalidInput("masterIdentifier is the document's own id: it needs system and value (e.g. "
                                   "urn:ietf:rfc:3986 and urn:oid:…)", expression=f"{record.path}.masterIdentifier")
            meta["masterIdentifier"] = {"system": master[0], "value": master[1]}
        if self._consent is not None:
            if self._statement is None:  # read once: one Consent for every document
                self._statement = _consent(self._consent, patient, tables, self._patient_aliases,
                                           _entry_namer(self._entries))
            meta["consent"] = self._statement
        document = read_document_metadata(r, PhotoKind(meta["kind"]), tables)
        if document is not None:
            meta["document"] = document

        try:
            photo_meta = TransactionPhotoMetadata.model_validate(meta)
        except ValidationError as exc:
            errors = exc.errors()
            text = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
            # a body site with kind document (refused as POST /photos refuses it): the record's bodySite
            where = f"{record.path}.bodySite" if is_media and errors and errors[0]["loc"][:1] == ("bodySite",) \
                else record.path
            raise InvalidInput(f"the Bundle does not give valid photo metadata: {text}", expression=where) from exc
        return TransactionDocument(meta=photo_meta, image_bytes=image_bytes, content_type=content_type,
                                   record_index=record.index, binary_index=binary.index,
                                   sent_size=(record.index, f"{att_path}.size", sent_size) if sent_size is not None
                                   else None,
                                   sent_hash=(record.index, f"{att_path}.hash") if "attachmentHash" in meta else None)


def _check_size_and_hash(attachment: Mapping[str, Any], path: str, data: bytes) -> int | None:
    """The document's ``size`` and ``hash`` (R4 Attachment: its length in bytes, the base64 of
    its SHA-1), when its source gives them, must be those of the bytes sent (ITI-65
    2:3.65.4.1.2.1: the source populates them accurately; a recipient that finds them wrong
    refuses the document, as an XDS Repository does, XDSRepositoryMetadataError): a document
    damaged or cut on its way is not stored as if whole. Returns the size sent."""
    size = attachment.get("size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size != len(data)):
        raise BusinessRuleViolation(f"attachment.size {str(size)[:20]} is not the size of the document sent "
                                    f"({len(data)} bytes): nothing was stored", expression=f"{path}.size",
                                    details_text=XDS_REPOSITORY_METADATA_ERROR, refusal=RefusalCode.ATTACHMENT_MISMATCH)
    sent_hash = attachment.get("hash")
    if sent_hash is not None:
        try:
            digest = base64.b64decode("".join(str(sent_hash).split()), validate=True)
        except (binascii.Error, ValueError):
            digest = b""
        if digest != hashlib.sha1(data, usedforsecurity=False).digest():
            raise BusinessRuleViolation("attachment.hash is not the SHA-1 (base64) of the document sent: nothing "
                                        "was stored", expression=f"{path}.hash",
                                        details_text=XDS_REPOSITORY_METADATA_ERROR,
                                        refusal=RefusalCode.ATTACHMENT_MISMATCH)
    return size if isinstance(size, int) else None


def transaction_response(entries: Sequence[tuple[str, str, str]],
                         warnings: Mapping[int, Sequence[EntryWarning]] | None = None, *,
                         resources: Mapping[int, JSON] | None = None,
                         informed: Mapping[int, str] | None = None,
                         ingested: Mapping[int, Sequence[JSON]] | None = None) -> JSON:
    """The transaction-response Bundle: one entry per request entry, in request order, each
    ``(location, status, last_modified)`` with response.status (e.g. "201 Created"), location
    ("Media/abc/_history/1"), etag (W/"<version>", the version taken from the location's
    _history, else 1) and lastModified, the meta.lastUpdated of the version the location names
    (https://hl7.org/fhir/R4/bundle.html, Bundle.entry.response: "the date/time that the resource
    was modified on the server"); an entry of ``warnings`` (by index) also ``outcome``, an
    OperationOutcome with an issue per warning (its Document Sharing code in ``details.text``,
    IHE MHD ITI-65 2:3.65.4.2.2); an entry of ``ingested`` (a record's: the ingest's warnings as
    issues, adapter.mapping.ingest_warnings) those issues first, whatever ``Prefer`` asks.
    ``Prefer: return=`` (http.html#ops): an entry of ``resources`` carries its resource
    (representation), one of ``informed`` an informational issue in its outcome
    (OperationOutcome)."""
    out: list[JSON] = []
    for index, (location, status, modified) in enumerate(entries):
        response: JSON = {"status": status}
        if location:  # else acknowledged, not stored (the MHD SubmissionSet, the Patient)
            match = _HISTORY.search(location)
            version = match.group(1) if match else "1"
            response.update({"location": location, "etag": f'W/"{version}"', "lastModified": modified})
        issues = list((ingested or {}).get(index, ()))
        issues += [issue(w.severity, "not-supported" if w.code else "informational", w.diagnostics, w.expression,
                         {"text": w.code} if w.code else None) for w in (warnings or {}).get(index, ())]
        note = (informed or {}).get(index)
        if note:
            issues.append(issue("information", "informational", note))
        if issues:
            response["outcome"] = outcome(issues)
        resource = (resources or {}).get(index)
        out.append({"resource": resource, "response": response} if resource is not None else {"response": response})
    return {"resourceType": "Bundle", "type": "transaction-response", "entry": out}


__all__ = ["ACKNOWLEDGED_ROLES", "MAX_DOCUMENTS", "ROLE_BINARY", "ROLE_CONSENT", "ROLE_PATIENT", "ROLE_RECORD", "ROLE_SUBMISSION_SET",
           "EntryWarning", "TransactionDocument", "TransactionSubmission", "parse_transaction", "transaction_response"]
