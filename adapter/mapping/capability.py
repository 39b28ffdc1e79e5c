"""The server's CapabilityStatement (``GET [base]/metadata``) for FHIR R4 (4.0.1) and R5 (5.0.0).

https://hl7.org/fhir/R4/capabilitystatement.html · https://hl7.org/fhir/R5/capabilitystatement.html ·
https://hl7.org/fhir/R4/http.html#capabilities. ``kind`` instance describes this running
server, so ``implementation`` is present (cpb-14).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from adapter.errors import NotSupported

JSON = dict[str, Any]

FHIR_VERSIONS = ("4.0.1", "5.0.0")
#: The versions as the fhirVersion media-type parameter names them (http.html#version-parameter),
#: the default first: what ``$versions`` answers.
VERSION_PARAMETERS = ("4.0", "5.0")
DEFAULT_VERSION_PARAMETER = "4.0"
#: The operation that names them (the same canonical URL in R4 and R5).
VERSIONS_OPERATION = "http://hl7.org/fhir/OperationDefinition/CapabilityStatement-versions"
#: The resource types this server serves in R4 (R5 has no Media: a photo is a DocumentReference there).
R4_TYPES = ("Media", "DocumentReference", "Binary", "Consent", "Provenance")
SOFTWARE_NAME = "clinical-image-adapter"
PURPOSE_OF_USE_HEADER = "X-Purpose-Of-Use"

_SECURITY = (
    "Every read and search must state its purpose of use in the `" + PURPOSE_OF_USE_HEADER + "` header: "
    "a code of http://terminology.hl7.org/CodeSystem/v3-ActReason (e.g. `TREAT`, `HRESCH`, `TRAIN`) "
    "or `system|code`. A request without one is refused. What is returned, and in which view "
    "(full, pseudonymised for research, de-identified for training), follows the patient's "
    "consent for that purpose; every returned resource carries its security labels in "
    "`meta.security` (confidentiality; purposes: those permitted in the full view, the one served in a "
    "restricted view; obligations, integrity) and a Bundle "
    "the most confidential label of its entries. Break-the-glass access (`BTG`, `ETREAT`) is "
    "audited. Binary content is served under the access rules of its `securityContext`."
)


@dataclass(frozen=True)
class _Param:
    name: str
    type: str
    documentation: str
    definition: str | None = None  # the SearchParameter's canonical URL, when not the base spec's


_ID = _Param("_id", "token", "Logical id of the resource.")
#: The result parameters (search.html#count, #sort, #total, #paging): not search parameters, so
#: not in searchParam; told in rest.documentation, with how every date parameter compares (R4's
#: searchParam has no place for the prefixes a server supports).
_RESULT_PARAMETERS = (
    "Result parameters of every search: `_count` (page size, at most 200; the server may lower it), `_sort` "
    "(`_lastUpdated`, oldest first, the default, or `-_lastUpdated`, newest first; on Media also `date` and "
    "`created`, on DocumentReference `date` and `creation` (R5: `creation`), by the record's date, `-` newest first, "
    "the id breaking ties, not in the de-identified view; one key; other keys are refused), "
    "`_total` (`none` leaves Bundle.total out, so a page costs what it shows; `estimate` and `accurate`, the "
    "default, count every permitted match), `_summary`, `_elements`, `_include`/`_revinclude` as declared. Pages: "
    "follow the `next`, `previous` and `first` links as given; the first page fixes the search's snapshot, so a "
    "record stored while they are followed is on none of them (search `_lastUpdated=gt` the last "
    "`meta.lastUpdated` seen for it), a Consent updated meanwhile keeps its place (shown once as it is now, if it still matches), "
    "and the links are valid for an hour. "
    "Date parameters (search.html#date) compare the implicit range of the value searched with that of the "
    "resource's date, each its precision: a photo taken `2024-06-10` covers that day (`created=gt2024-06-10T12:00:00Z` "
    "finds it, `created=2024-06-10T00:00:00Z` does not), a time its second; prefixes `eq` (the resource's range "
    "within the value's), `ne`, `gt`, `ge`, `lt`, `le`, `sa`, `eb`; `ap` is not supported (400 not-supported).")
_PATIENT = _Param("patient", "reference",
                  "The patient. The adapter does not own Patient resources: use the `:identifier` modifier, "
                  "`patient:identifier=system|value` (or chained, `patient.identifier=system|value`, as IHE MHD "
                  "ITI-67 writes it, or with the type, `patient:Patient.identifier`: the only chain taken, a chain "
                  "through another type is refused; a value alone matches it in any system), or a literal "
                  "`Patient/<id>` of the EHR. "
                  "Not in the "
                  "de-identified view (TRAIN); in the pseudonymised view (HRESCH) only the pseudonym it shows, "
                  "`patient:identifier=<pseudonym system>|<pseudonym>`.")
_SUBJECT = _Param("subject", "reference", "As `patient` (`subject:identifier=system|value`, chained "
                  "`subject.identifier` or `subject:Patient.identifier`).")
_IDENTIFIER = _Param("identifier", "token", "A record identifier, e.g. `urn:clinical-image-adapter:sha256|<hex>` "
                     "(not in the de-identified view; only that system in the pseudonymised view).")
_STATUS = _Param("status", "token", "Resource status.")
_TYPE = _Param("type", "token", "Type code.")
_CATEGORY = _Param("category", "token", "Category, e.g. `urn:clinical-image-adapter:photo-kind|clinical`.")
_MODALITY = _Param("modality", "token", "Acquisition modality, e.g. `http://dicom.nema.org/resources/ontology/DCM|XC`.")
_KIND = _Param("kind", "token", "Photo kind (local parameter): `clinical`, `secondary` or `document`.")
_LAST_UPDATED = _Param("_lastUpdated", "date", "When the resource was stored or last changed (meta.lastUpdated), "
                       "e.g. `_lastUpdated=gt2026-11-26T10:00:00Z` for what arrived since a sync. Not in the "
                       "de-identified view (TRAIN), which shows no lastUpdated.")
_COMMON = (_ID, _PATIENT, _SUBJECT, _LAST_UPDATED)
_ENCOUNTER = _Param("encounter", "reference",
                    "The encounter the record was made in, as the record names it: `Encounter/<id>` (its id alone, "
                    "or this server's absolute URL of it), another server's absolute URL as stored, or its identifier, "
                    "`encounter:identifier=system|value` (a value alone matches it in any system). Not in the "
                    "de-identified (TRAIN) or pseudonymised (HRESCH) view, which show no encounter.")

#: Search parameters per resource type, as the search service accepts them
#: (adapter.services.search_params); unknown parameters are refused with 400.
SEARCH_PARAMS: dict[str, tuple[_Param, ...]] = {
    "Media": (*_COMMON, _Param("created", "date", "When the photo was taken."),
              _Param("date", "date", "As `created`."), _TYPE, _MODALITY, _CATEGORY, _STATUS, _IDENTIFIER,
              _KIND, _ENCOUNTER),
    "DocumentReference": (*_COMMON, _Param("date", "date", "When the reference was created (in R5, for a photo, "
                                           "when it was stored: every parameter matches the resource as served "
                                           "in the FHIR version asked for)."),
                          _Param("type", "token", "Type code (in R5 a photo has none)."),
                          _Param("category", "token", "Category, e.g. `urn:clinical-image-adapter:photo-kind|clinical` "
                                 "(in R5 a photo's media type too, "
                                 "`http://terminology.hl7.org/CodeSystem/media-type|image`)."),
                          _Param("status", "token", "Resource status (in R5 a photo's is `current`, or "
                                 "`entered-in-error`)."),
                          _IDENTIFIER, _MODALITY, _KIND,
                          _Param("creation", "date", "When the document was photographed "
                                 "(content.attachment.creation; IHE MHD ITI-67).",
                                 "https://profiles.ihe.net/ITI/MHD/SearchParameter/DocumentReference-Creation"),
                          _Param("security-label", "token", "Security label, e.g. the policy's confidentiality "
                                 "`http://terminology.hl7.org/CodeSystem/v3-Confidentiality|R`."),
                          _Param("format", "token", "Format (content.format), e.g. "
                                 "`http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode|urn:ihe:iti:xds:2017:"
                                 "mimeTypeSufficient`, or the one an IHE MHD Document Source sent."),
                          _Param("setting", "token", "Practice setting (context.practiceSetting), as an IHE MHD "
                                 "Document Source sent it."),
                          _Param("facility", "token", "Facility type (context.facilityType), as an IHE MHD Document "
                                 "Source sent it."),
                          _Param("event", "token", "Main clinical act (context.event), as an IHE MHD Document Source "
                                 "sent it."),
                          _Param("period", "date", "Time of service documented (context.period; R5 period), as a "
                                 "range: a period without end is still going on (IHE MHD ITI-67)."),
                          dataclasses.replace(_ENCOUNTER, documentation=_ENCOUNTER.documentation + " R4: "
                                              "context.encounter; R5 names it `context` (DocumentReference.context), "
                                              "where a photo's encounter is too.")),
    "Consent": (*_COMMON, _Param("date", "date", "When the consent was given (in R5 the day: Consent.date)."),
                _Param("status", "token", "Resource status (in R5 as R5 has it: R4 `proposed` is `draft`, "
                       "`rejected` is `not-done`)."),
                _Param("category", "token", "Category, e.g. `http://loinc.org|59284-0` (Patient Consent), which "
                       "every Consent the adapter records carries."),
                _Param("purpose", "token", "A v3-ActReason purpose of use the consent covers.")),
    "Provenance": (*_COMMON, _Param("recorded", "date", "When the provenance was recorded."),
                   _Param("date", "date", "As `recorded`."),
                   _Param("target", "reference", "The record the provenance is about: `Media/<id>` or "
                          "`DocumentReference/<id>` (also `target:Media=<id>`), or its Binary: `Binary/<id>` "
                          "(also `target:Binary=<id>`); never a Consent (who recorded or withdrew one is in its "
                          "history and the audit trail). `_include=Provenance:target` adds the record, not the "
                          "Binary (the image itself: read it at the record's `content.url`).")),
}
#: The names R5 gives some parameters of R4 (R5 DocumentReference-format-code, -event-code; R4's
#: format and event): an R5 reader searches by them (adapter.services.search_params, which takes
#: the R4 names from an R5 reader too).
R5_NAMES: dict[str, dict[str, str]] = {"DocumentReference": {"format": "format-code", "event": "event-code",
                                                               "encounter": "context"}}
#: The SearchParameter of the core specification each parameter is (its ``definition``, which
#: CapabilityStatement.rest.resource.searchParam.definition says "SHALL be populated if the search
#: parameter refers to a SearchParameter defined by the FHIR core specification"), per FHIR version and
#: resource type ("*": every type); the ids after http://hl7.org/fhir/SearchParameter/. A parameter
#: not listed is local (or an IG's: _Param.definition).
_CORE_DEFINITIONS: dict[str, dict[str, dict[str, str]]] = {
    "4.0.1": {
        "*": {"_id": "Resource-id", "_lastUpdated": "Resource-lastUpdated"},
        "Media": {"patient": "Media-patient", "subject": "Media-subject", "created": "Media-created",
                  "type": "Media-type", "modality": "Media-modality", "status": "Media-status",
                  "identifier": "Media-identifier", "encounter": "Media-encounter"},
        "DocumentReference": {"patient": "clinical-patient", "subject": "DocumentReference-subject",
                              "date": "DocumentReference-date", "type": "clinical-type",
                              "category": "DocumentReference-category", "status": "DocumentReference-status",
                              "identifier": "clinical-identifier",
                              "security-label": "DocumentReference-security-label",
                              "format": "DocumentReference-format", "setting": "DocumentReference-setting",
                              "facility": "DocumentReference-facility", "event": "DocumentReference-event",
                              "period": "DocumentReference-period", "encounter": "clinical-encounter"},
        "Consent": {"patient": "clinical-patient", "date": "clinical-date", "status": "Consent-status",
                    "category": "Consent-category", "purpose": "Consent-purpose"},
        # not R4's Provenance-patient (Provenance.target being the Patient): here the patient of the
        # records a Provenance is about, which R5 names Provenance.patient (clinical-patient)
        "Provenance": {"recorded": "Provenance-recorded", "target": "Provenance-target"},
    },
    "5.0.0": {
        "*": {"_id": "Resource-id", "_lastUpdated": "Resource-lastUpdated"},
        "DocumentReference": {"patient": "clinical-patient", "subject": "DocumentReference-subject",
                              "date": "clinical-date", "type": "clinical-type",
                              "category": "DocumentReference-category", "status": "DocumentReference-status",
                              "identifier": "clinical-identifier",
                              "security-label": "DocumentReference-security-label",
                              "setting": "DocumentReference-setting", "facility": "DocumentReference-facility",
                              "modality": "DocumentReference-modality", "creation": "DocumentReference-creation",
                              "period": "DocumentReference-period", "format-code": "DocumentReference-format-code",
                              "event-code": "DocumentReference-event-code", "context": "DocumentReference-context"},
        "Consent": {"patient": "clinical-patient", "subject": "Consent-subject", "date": "clinical-date",
                    "status": "Consent-status", "category": "Consent-category", "purpose": "Consent-purpose"},
        "Provenance": {"patient": "clinical-patient", "recorded": "Provenance-recorded",
                       "target": "Provenance-target"},
    },
}


#: Parameters of an element only R5 has: R4 DocumentReference has no ``modality`` (R5's, where a
#: photo is a DocumentReference); declared in R4 it would match nothing.
R5_ONLY: dict[str, frozenset[str]] = {"DocumentReference": frozenset({"modality"})}


def _definition(resource_type: str, param: _Param, fhir_version: str) -> str | None:
    """The canonical URL of the SearchParameter ``param`` is: the core specification's (in the
    FHIR version answered), else the IG's it names, else None (a parameter of this server's)."""
    core = _CORE_DEFINITIONS[fhir_version]
    name = core.get(resource_type, {}).get(param.name) or core["*"].get(param.name)
    return f"http://hl7.org/fhir/SearchParameter/{name}" if name else param.definition


#: _include / _revinclude (adapter.services.search_params): the records' Provenance, and a
#: Provenance's records, each included resource decided on its own.
#: Only records have a Provenance (adapter.mapping.provenance: its targets are the record and
#: its Binary): a Consent has none, so none is declared for it (its history and the audit trail
#: tell who recorded or withdrew it). The search refuses what is not declared here (400).
REVINCLUDES: dict[str, tuple[str, ...]] = {"Media": ("Provenance:target",), "DocumentReference": ("Provenance:target",)}
_INCLUDE = {"Provenance": ("Provenance:target", "Provenance:target:Media", "Provenance:target:DocumentReference")}
_DOCUMENTATION = {
    "Media": "Clinical and secondary photos (R4). Read and search are filtered by consent and purpose of use.",
    "DocumentReference": "Photographed documents; in R5 also every photo (R5 has no Media: a photo keeps its "
                         "Media id as DocumentReference id).",
    "Binary": "The image bytes, metadata-stripped, under the access rules of the record in `securityContext`.",
    "Consent": "The patient's consent for clinical photography and its uses.",
    "Provenance": "Where a photo came from (colleagues, external clinicians, the patient).",
}
#: What PATCH of a record does (R4 only: the R5 endpoint is read-only); adapter.mapping.status_patch.
_PATCH_DOCUMENTATION = (" PATCH takes a JSON Patch (application/json-patch+json) that only marks the record "
                        'entered-in-error: one {"op": "replace", "path": "/status", "value": "entered-in-error"} '
                        "(test operations may come before it), stated for records management (X-Purpose-Of-Use: "
                        'RECORDMGT), If-Match W/"n" required (428 without it, 412 when stale). It is irreversible: '
                        "the image is then released to no one and the record to care only. Any other patch is "
                        "refused (422); FHIRPath Patch and merge patches are not supported (415).")
_PATCHED = ("Media", "DocumentReference")
_INTERACTIONS = {
    "Media": ("read", "vread", "patch", "history-instance", "search-type"),
    "DocumentReference": ("read", "vread", "patch", "history-instance", "search-type"),
    "Binary": ("read", "vread"),
    "Consent": ("read", "vread", "history-instance", "search-type", "create", "update"),
    "Provenance": ("read", "vread", "history-instance", "search-type"),
}
#: Every resource carries meta.versionId and an ETag; a Consent update honours If-Match
#: (versioned-update, where update is an interaction: R4's; the R5 endpoint is read-only), and its
#: past versions are served by vread (the others are never updated: one version each).
_VERSIONING = {"Consent": "versioned-update"}
_VERSIONED_UPDATE_R4 = frozenset({"Consent", *_PATCHED})  # a record's PATCH requires If-Match
_READ_HISTORY = frozenset({"Consent", *_PATCHED})  # a record marked entered-in-error has a version 1 before it


def _resource(resource_type: str, fhir_version: str) -> JSON:
    out: JSON = {
        "type": resource_type,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{resource_type}",
        "documentation": _DOCUMENTATION[resource_type]
        + (_PATCH_DOCUMENTATION if resource_type in _PATCHED and fhir_version == "4.0.1" else ""),
        # the R5 endpoint is read-only: writes take and answer R4 (adapter.api.routes.fhir)
        "interaction": [{"code": code} for code in _INTERACTIONS[resource_type]
                        if fhir_version == "4.0.1" or code not in ("create", "update", "patch")],
        # versioned-update: updates (and a record's PATCH) honour If-Match, where there are any
        # (R4's; the R5 endpoint is read-only: review EHR F5)
        "versioning": "versioned-update" if fhir_version == "4.0.1" and resource_type in _VERSIONED_UPDATE_R4
        else "versioned",
        "readHistory": resource_type in _READ_HISTORY,
        # the server assigns ids: an update of an id it does not hold is refused (405), never a create
        **({"updateCreate": False} if "update" in _INTERACTIONS[resource_type] and fhir_version == "4.0.1" else {}),
        # a read answers If-None-Match (its ETag) and If-Modified-Since (its Last-Modified)
        "conditionalRead": "full-support",
    }
    params = SEARCH_PARAMS.get(resource_type)
    if params:
        out["searchParam"] = []
        names = R5_NAMES.get(resource_type, {}) if fhir_version == "5.0.0" else {}
        for p in params:
            if p.name in R5_ONLY.get(resource_type, ()) and fhir_version == "4.0.1":
                continue
            p = dataclasses.replace(p, name=names[p.name]) if p.name in names else p
            definition = _definition(resource_type, p, fhir_version)
            out["searchParam"].append({"name": p.name, **({"definition": definition} if definition else {}),
                                       "type": p.type, "documentation": p.documentation})
    if resource_type in _INCLUDE:  # R5 has no Media
        out["searchInclude"] = [i for i in _INCLUDE[resource_type] if fhir_version == "4.0.1" or not i.endswith(":Media")]
    if resource_type in REVINCLUDES:
        out["searchRevInclude"] = list(REVINCLUDES[resource_type])
    return out


def capability_statement(*, base_url: str, fhir_version: str, software_version: str, now: datetime) -> JSON:
    """The CapabilityStatement of this server for ``fhir_version`` "4.0.1" or "5.0.0".

    Resources: Media (R4 only), DocumentReference, Binary, Consent (also create/update in R4),
    Provenance; system interactions ``transaction`` (ingest Bundles, R4) and ``batch`` (reads). ``now`` is the
    statement's date (timezone-naive values are taken as UTC).
    """
    # No ``instantiates`` of IHE MHD's DocumentRecipient or DocumentResponder CapabilityStatements:
    # the Responder serves Find Document Lists [ITI-66], which the adapter does not (it keeps no
    # Lists), and the Recipient takes documents of any type, where the adapter takes JPEG and PNG
    # only (and keeps no Folders or relationships); claiming either would send an engine that
    # discovers MHD from /metadata down a path that fails.
    if fhir_version not in FHIR_VERSIONS:
        raise NotSupported(f"unsupported FHIR version {fhir_version!r}; supported: {', '.join(FHIR_VERSIONS)}")
    when = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    types = [t for t in R4_TYPES if fhir_version == "4.0.1" or t != "Media"]
    return {
        "resourceType": "CapabilityStatement",
        "name": "ClinicalImageAdapter",
        "title": "Clinical image adapter",
        "status": "active",
        "date": when.isoformat(timespec="seconds"),
        "description": "Clinical photos in, FHIR records out, released only for purposes the patient's consent "
                       "permits.",
        "kind": "instance",
        "software": {"name": SOFTWARE_NAME, "version": software_version},
        "implementation": {"description": "Clinical image adapter FHIR endpoint", "url": base_url.rstrip("/")},
        "fhirVersion": fhir_version,
        # http.html#mime-type: both encodings, each both ways (adapter.api.fhir_xml); R4's PATCH
        # of a record takes a JSON Patch only
        "format": ["json", "xml"],
        **({"patchFormat": ["application/json-patch+json"]} if fhir_version == "4.0.1" else {}),
        "rest": [{
            "mode": "server",
            "documentation": _RESULT_PARAMETERS,
            "security": {"description": _SECURITY},
            "resource": [_resource(t, fhir_version) for t in types],
            "interaction": [{"code": "transaction"}, {"code": "batch"}] if fhir_version == "4.0.1"
            else [{"code": "batch"}],
            "operation": [{"name": "versions", "definition": VERSIONS_OPERATION}],
        }],
    }


def versions_parameters() -> JSON:
    """``GET [base]/$versions`` (CapabilityStatement-versions): the versions this endpoint serves,
    told apart by the media type's fhirVersion parameter, and the one it uses without it."""
    return {"resourceType": "Parameters",
            "parameter": [*({"name": "version", "valueCode": v} for v in VERSION_PARAMETERS),
                          {"name": "default", "valueCode": DEFAULT_VERSION_PARAMETER}]}


def versions_plain() -> JSON:
    """The same for ``Accept: application/json`` (the operation's plain JSON form, which "servers
    that implement this operation SHALL also support")."""
    return {"versions": list(VERSION_PARAMETERS), "default": DEFAULT_VERSION_PARAMETER}


__all__ = ["DEFAULT_VERSION_PARAMETER", "FHIR_VERSIONS", "PURPOSE_OF_USE_HEADER", "R4_TYPES", "R5_NAMES", "SEARCH_PARAMS",
           "VERSIONS_OPERATION", "VERSION_PARAMETERS", "capability_statement", "versions_parameters", "versions_plain"]
