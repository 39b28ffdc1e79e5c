"""Our stored R4 resources as FHIR R5 (5.0.0), for readers that ask for R5.

Sources: https://hl7.org/fhir/R5/documentreference.html · https://hl7.org/fhir/R5/consent.html ·
https://hl7.org/fhir/R5/provenance.html · the cross-version package
https://hl7.org/fhir/uv/xver-r4.r5/ (R4 Media → R5 DocumentReference) · standards.md §2.2-2.5.

R5 has no Media: a Media becomes a DocumentReference **with the same id**, so
``GET [base]/DocumentReference/<media id>`` works for R5 readers (the caller looks the Media up
by id). R4 elements with no R5 home travel in the cross-version extensions
``http://hl7.org/fhir/4.0/StructureDefinition/extension-<Path>`` (view, reasonCode, partOf).
``meta.profile`` is left out: R4 profiles do not apply to R5 content.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from adapter.errors import NotSupported
from adapter.mapping import codes

JSON = dict[str, Any]

#: Base of the R4 → R5 cross-version extensions (hl7.fhir.uv.xver-r4.r5).
XVER_R4 = "http://hl7.org/fhir/4.0/StructureDefinition/extension-"
COMPOSITION_ATTESTATION_MODE = "http://hl7.org/fhir/composition-attestation-mode"
DOCUMENT_RELATIONSHIP_TYPE = "http://hl7.org/fhir/document-relationship-type"
R4_RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
R5_FHIR_TYPES = "http://hl7.org/fhir/fhir-types"

# Media.status (EventStatus) → DocumentReference (status, docStatus). DocumentReference.status
# is only current | superseded | entered-in-error; the event's progress goes to docStatus
# (CompositionStatus, https://hl7.org/fhir/R5/valueset-composition-status.html).
_MEDIA_STATUS: dict[str, tuple[str, str | None]] = {
    "completed": ("current", "final"),
    "preparation": ("current", "preliminary"),
    "in-progress": ("current", "preliminary"),
    "on-hold": ("current", "preliminary"),
    "stopped": ("current", "cancelled"),
    "not-done": ("current", "cancelled"),
    "entered-in-error": ("entered-in-error", "entered-in-error"),
    "unknown": ("current", "unknown"),
}
# R4 Consent.status → R5 (proposed and rejected are gone; https://hl7.org/fhir/R5/valueset-consent-state-codes.html)
_CONSENT_STATUS = {"proposed": "draft", "rejected": "not-done"}
# R4 Provenance entity role → R5: 'derivation' was dropped in R5; its nearest meaning is 'source'.
_ENTITY_ROLE = {"derivation": "source"}
# R4 Device deviceName.type → R5 Device.name.type (registered-name | user-friendly-name | patient-reported-name)
_DEVICE_NAME_TYPE = {
    "user-friendly-name": "user-friendly-name", "patient-reported-name": "patient-reported-name",
    "udi-label-name": "registered-name", "manufacturer-name": "registered-name", "model-name": "registered-name",
    "other": "user-friendly-name",
}


def _put(out: JSON, key: str, value: Any) -> None:
    if value is None or value == [] or value == {}:
        return
    out[key] = value


def _copy(out: JSON, source: JSON, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key in source:
            out[key] = source[key]


def _meta(value: Any) -> JSON | None:
    if not isinstance(value, dict):
        return None
    return {k: v for k, v in value.items() if k != "profile"} or None


def _resource_base(r: JSON, resource_type: str) -> JSON:
    """id, meta (without profile), implicitRules, language, text, contained (converted) and
    the extensions, in R5 order."""
    out: JSON = {"resourceType": resource_type}
    _copy(out, r, ("id",))
    _put(out, "meta", _meta(r.get("meta")))
    _copy(out, r, ("implicitRules", "language", "text"))
    contained = [_contained(c) for c in r.get("contained") or [] if isinstance(c, dict)]
    _put(out, "contained", contained)
    _copy(out, r, ("extension", "modifierExtension"))
    return out


def _xver(out: JSON, path: str, value_key: str, values: list[Any]) -> None:
    """Append R4 ``path`` values as cross-version extensions."""
    for value in values:
        if value is not None:
            out.setdefault("extension", []).append({"url": XVER_R4 + path, value_key: value})


def _device(r: JSON) -> JSON:
    """A (contained) R4 Device reduced to the elements that mean the same in R5
    (https://hl7.org/fhir/R5/device.html): names, identifiers, manufacturer and model facts."""
    out = _resource_base(r, "Device")
    _copy(out, r, ("identifier",))
    if r.get("status") in ("active", "inactive", "entered-in-error"):
        out["status"] = r["status"]
    _copy(out, r, ("manufacturer", "manufactureDate", "expirationDate", "lotNumber", "serialNumber"))
    names = []
    for name in r.get("deviceName") or []:
        if isinstance(name, dict) and isinstance(name.get("name"), str):
            names.append({"value": name["name"], "type": _DEVICE_NAME_TYPE.get(str(name.get("type")), "user-friendly-name")})
    _put(out, "name", names)
    _copy(out, r, ("modelNumber", "partNumber"))
    if isinstance(r.get("type"), dict):
        out["type"] = [r["type"]]
    _copy(out, r, ("owner", "contact", "location", "url", "note", "safety", "parent"))
    return out


def _contained(r: JSON) -> JSON:
    if r.get("resourceType") == "Device":
        return _device(r)
    return to_r5(r)


def _attachment(value: Any) -> Any:
    """An R4 Attachment as R5 has it: ``size`` became integer64, which FHIR JSON writes as a
    string (https://hl7.org/fhir/R5/datatypes.html#integer64, https://hl7.org/fhir/R5/json.html#primitive)."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    if isinstance(out.get("size"), int) and not isinstance(out["size"], bool):
        out["size"] = str(out["size"])
    return out


def _photo_kind_category(r: JSON) -> JSON | None:
    """Category from our photo-kind extension (the R4 Media has no category element)."""
    for ext in r.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == codes.EXT_PHOTO_KIND and isinstance(ext.get("valueCode"), str):
            return {"coding": [{"system": codes.PHOTO_KIND_SYSTEM, "code": ext["valueCode"]}]}
    return None


def _media(r: JSON, patient: JSON | None) -> JSON:
    """R4 Media → R5 DocumentReference (xver R4MediaElementMapToR5, standards.md §2.2).

    - status: completed → current/final, entered-in-error → entered-in-error, others → current
      with docStatus preliminary/cancelled/unknown;
    - category: the photo kind (extension) and Media.type (media-type image/video/audio): the
      media type says what the content is, not which kind of document it is, so it is a
      category rather than DocumentReference.type (left empty: no verified LOINC photo code);
    - modality → modality[]; bodySite → bodySite[].concept; encounter → context[];
      issued → date; operator and device (or a display-only Device from deviceName) → author;
      created[x] → content.attachment.creation / period; height, width, frames, duration →
      attachment (whose size, integer64 in R5, is a JSON string); basedOn → basedOn;
    - note → description (R5 DocumentReference has no note; texts joined by blank lines,
      annotation authors and times are not carried);
    - view, reasonCode and partOf → cross-version extensions.
    """
    out = _resource_base(r, "DocumentReference")
    _xver(out, "Media.view", "valueCodeableConcept", [r.get("view")])
    _xver(out, "Media.reasonCode", "valueCodeableConcept", list(r.get("reasonCode") or []))
    _xver(out, "Media.partOf", "valueReference", list(r.get("partOf") or []))
    _copy(out, r, ("identifier", "basedOn"))
    status, doc_status = _MEDIA_STATUS.get(str(r.get("status")), ("current", None))
    out["status"] = status
    _put(out, "docStatus", doc_status)
    _put(out, "modality", [r["modality"]] if isinstance(r.get("modality"), dict) else None)
    _put(out, "category", [c for c in (_photo_kind_category(r), r.get("type")) if isinstance(c, dict)])
    _copy(out, r, ("subject",))
    _put(out, "context", [r["encounter"]] if isinstance(r.get("encounter"), dict) else None)
    _put(out, "period", r.get("createdPeriod"))
    _copy(out, r, ("issued",))
    if "issued" in out:
        out["date"] = out.pop("issued")
    authors: list[JSON] = []
    if isinstance(r.get("operator"), dict):
        authors.append(r["operator"])
    device = r.get("device")
    if isinstance(device, dict):
        target = str(device.get("type") or device.get("reference") or "")
        if target.startswith("DeviceMetric"):
            _xver(out, "Media.device", "valueReference", [device])
        else:
            authors.append(device)
    elif isinstance(r.get("deviceName"), str):
        authors.append({"type": "Device", "display": r["deviceName"]})
    _put(out, "author", authors)
    notes = [n["text"] for n in r.get("note") or [] if isinstance(n, dict) and isinstance(n.get("text"), str)]
    _put(out, "description", "\n\n".join(notes) if notes else None)
    _put(out, "bodySite", [{"concept": r["bodySite"]}] if isinstance(r.get("bodySite"), dict) else None)
    attachment: JSON = _attachment(dict(r.get("content") or {}))
    if "creation" not in attachment and isinstance(r.get("createdDateTime"), str):
        attachment["creation"] = r["createdDateTime"]
    _copy(attachment, r, ("height", "width", "frames", "duration"))
    out["content"] = [{"attachment": attachment}]
    return out


def _document_reference(r: JSON, patient: JSON | None) -> JSON:
    """R4 DocumentReference → R5 (standards.md §2.2): masterIdentifier → identifier (first);
    context.encounter → context[]; context.event → event[].concept; context.period,
    facilityType, practiceSetting → root; authenticator → attester {mode legal, party};
    relatesTo.code → CodeableConcept; content.format → content.profile[].valueCoding;
    content.attachment.size (integer64 in R5) → a JSON string.
    context.sourcePatientInfo and context.related have no R5 home and are left out."""
    out = _resource_base(r, "DocumentReference")
    identifiers = ([r["masterIdentifier"]] if isinstance(r.get("masterIdentifier"), dict) else [])
    identifiers += list(r.get("identifier") or [])
    _put(out, "identifier", identifiers)
    _copy(out, r, ("status", "docStatus", "type", "category", "subject"))
    raw_context = r.get("context")
    ctx: JSON = raw_context if isinstance(raw_context, dict) else {}
    _put(out, "context", list(ctx.get("encounter") or []))
    _put(out, "event", [{"concept": e} for e in ctx.get("event") or [] if isinstance(e, dict)])
    _copy(out, ctx, ("facilityType", "practiceSetting", "period"))
    _copy(out, r, ("date", "author"))
    if isinstance(r.get("authenticator"), dict):
        out["attester"] = [{"mode": {"coding": [{"system": COMPOSITION_ATTESTATION_MODE, "code": "legal",
                                                 "display": "Legal"}]},
                            "party": r["authenticator"]}]
    _copy(out, r, ("custodian",))
    relates = []
    for rel in r.get("relatesTo") or []:
        if isinstance(rel, dict):
            item = {k: v for k, v in rel.items() if k != "code"}
            if isinstance(rel.get("code"), str):
                item["code"] = {"coding": [{"system": DOCUMENT_RELATIONSHIP_TYPE, "code": rel["code"]}]}
            relates.append(item)
    _put(out, "relatesTo", relates)
    _copy(out, r, ("description", "securityLabel"))
    content = []
    for item in r.get("content") or []:
        if isinstance(item, dict):
            entry = {k: v for k, v in item.items() if k != "format"}
            if "attachment" in entry:
                entry["attachment"] = _attachment(entry["attachment"])
            if isinstance(item.get("format"), dict):
                entry["profile"] = [{"valueCoding": item["format"]}]
            content.append(entry)
    out["content"] = content
    return out


def _provision(p: JSON, parent_type: str | None) -> JSON:
    """R4 provision → R5 provision without ``type``: in R5 each nested level negates its
    parent. An R4 nested provision of the parent's own type has no R5 equivalent. A class
    naming a resource type becomes resourceType (fhir-types), where Media, which R5 does not
    define, is DocumentReference (what R5 calls a photo); other classes become documentType."""
    own = p.get("type")
    if parent_type is not None and own is not None and own == parent_type:
        raise NotSupported("a nested Consent provision of its parent's type has no R5 equivalent",
                           expression="Consent.provision.provision.type")
    out: JSON = {k: p[k] for k in ("id", "extension", "modifierExtension") if k in p}
    _copy(out, p, ("period", "actor", "action", "securityLabel", "purpose"))
    resource_types: list[JSON] = []
    document_types = []
    for c in p.get("class") or []:
        if isinstance(c, dict) and c.get("system") == R4_RESOURCE_TYPES:
            r5_type = {**c, "system": R5_FHIR_TYPES}
            if c.get("code") == "Media":  # R5 has no Media: photos are DocumentReference
                r5_type = {k: v for k, v in r5_type.items() if k != "display"} | {"code": "DocumentReference"}
            if not any(t.get("code") == r5_type["code"] for t in resource_types):
                resource_types.append(r5_type)
        elif isinstance(c, dict):
            document_types.append(c)
    _put(out, "documentType", document_types)
    _put(out, "resourceType", resource_types)
    _copy(out, p, ("code", "dataPeriod", "data"))
    effective = own if own is not None else ({"permit": "deny", "deny": "permit"}.get(parent_type or ""))
    _put(out, "provision", [_provision(n, effective) for n in p.get("provision") or [] if isinstance(n, dict)])
    return out


def _consent(r: JSON, patient: JSON | None) -> JSON:
    """R4 Consent → R5 (standards.md §2.4): scope is dropped (R5 uses category); patient →
    subject; dateTime → date (the date part); performer → grantor; organization → manager
    (R4: "the organization that manages the consent"); source[x] → sourceAttachment[] /
    sourceReference[]; policy[0].uri → policyBasis.url (R5 allows one); policyRule →
    regulatoryBasis[]; provision.type → decision; provision → provision[] (no type);
    verification.verificationDate → verificationDate[]; status proposed → draft,
    rejected → not-done."""
    out = _resource_base(r, "Consent")
    _copy(out, r, ("identifier",))
    status = r.get("status")
    if isinstance(status, str):
        out["status"] = _CONSENT_STATUS.get(status, status)
    _copy(out, r, ("category",))
    _put(out, "subject", r.get("patient"))
    if isinstance(r.get("dateTime"), str):
        out["date"] = r["dateTime"].split("T", 1)[0]
    _put(out, "grantor", list(r.get("performer") or []))
    _put(out, "manager", list(r.get("organization") or []))
    _put(out, "sourceAttachment",
         [_attachment(r["sourceAttachment"])] if isinstance(r.get("sourceAttachment"), dict) else None)
    _put(out, "sourceReference", [r["sourceReference"]] if isinstance(r.get("sourceReference"), dict) else None)
    uris = [p["uri"] for p in r.get("policy") or [] if isinstance(p, dict) and isinstance(p.get("uri"), str)]
    _put(out, "policyBasis", {"url": uris[0]} if uris else None)
    _put(out, "regulatoryBasis", [r["policyRule"]] if isinstance(r.get("policyRule"), dict) else None)
    verification = []
    for v in r.get("verification") or []:
        if isinstance(v, dict):
            item = {k: v[k] for k in ("id", "extension", "verified", "verifiedWith") if k in v}
            if isinstance(v.get("verificationDate"), str):
                item["verificationDate"] = [v["verificationDate"]]
            verification.append(item)
    _put(out, "verification", verification)
    provision = r.get("provision")
    if isinstance(provision, dict):
        _put(out, "decision", provision.get("type"))
        converted = _provision(provision, None)
        _put(out, "provision", [converted] if converted else None)
    return out


def _entity(e: JSON) -> JSON:
    out = {k: v for k, v in e.items() if k not in ("role", "agent")}
    if isinstance(e.get("role"), str):
        out["role"] = _ENTITY_ROLE.get(e["role"], e["role"])
    _put(out, "agent", list(e.get("agent") or []))
    return out


#: A literal reference to one of our Media, relative or absolute (references.html#literal).
_MEDIA_REFERENCE = re.compile(r"(?:^|/)Media/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def _r5_references(value: Any) -> None:
    """Every Reference in ``value`` (changed in place) to one of our Media names what R5 knows
    it as: the DocumentReference of the same id (R5 has no Media, so ``Media/<id>`` and
    ``type: Media`` are references to a type R5 does not define)."""
    if isinstance(value, list):
        for item in value:
            _r5_references(item)
        return
    if not isinstance(value, dict):
        return
    ref = value.get("reference")
    if isinstance(ref, str) and (match := _MEDIA_REFERENCE.search(ref)):
        at = match.start() + (1 if ref[match.start()] == "/" else 0)
        value["reference"] = ref[:at] + "DocumentReference/" + ref[at + len("Media/"):]
    if value.get("type") == "Media" and any(k in value for k in ("reference", "identifier", "display")):
        value["type"] = "DocumentReference"
    for key, item in value.items():
        if key != "reference" or not isinstance(item, str):
            _r5_references(item)


def _provenance(r: JSON, patient: JSON | None) -> JSON:
    """R4 Provenance → R5 (standards.md §2.5): reason → authorization[].concept; entity role
    derivation → source (R5 dropped derivation ⚠); ``patient`` (R5 only) is set when the
    caller knows it, the R4 resource does not say; a target Media is the DocumentReference of
    the same id."""
    out = _resource_base(r, "Provenance")
    _put(out, "target", list(r.get("target") or []))
    _copy(out, r, ("occurredPeriod", "occurredDateTime", "recorded", "policy", "location"))
    _put(out, "authorization", [{"concept": c} for c in r.get("reason") or [] if isinstance(c, dict)])
    _copy(out, r, ("activity",))
    _put(out, "patient", patient)
    _copy(out, r, ("agent",))
    _put(out, "entity", [_entity(e) for e in r.get("entity") or [] if isinstance(e, dict)])
    _copy(out, r, ("signature",))
    return out


def _unchanged(r: JSON, patient: JSON | None) -> JSON:
    """OperationOutcome has the same shape in R4 and R5."""
    return copy.deepcopy(r)


def _binary(r: JSON, patient: JSON | None) -> JSON:
    """Binary has the same shape in R4 and R5 (a securityContext naming a Media names the
    DocumentReference of the same id, as every reference does)."""
    return copy.deepcopy(r)


_CONVERTERS: dict[str, Callable[[JSON, JSON | None], JSON]] = {
    "Media": _media,
    "DocumentReference": _document_reference,
    "Consent": _consent,
    "Provenance": _provenance,
    "Binary": _binary,
    "OperationOutcome": _unchanged,
}


def to_r5(resource: JSON, *, patient: JSON | None = None) -> JSON:
    """Return ``resource`` (one of our R4 resources) as a new FHIR R5 resource; the input is
    not changed. ``patient`` (a Reference) fills R5 Provenance.patient, which R4 lacks. Every
    reference to a Media (Provenance.target, Binary.securityContext, Consent.provision.data,
    ...) names the DocumentReference of the same id.

    Raises :class:`~adapter.errors.NotSupported` for other resource types and for Consent
    structures R5 cannot express.
    """
    resource_type = resource.get("resourceType")
    convert = _CONVERTERS.get(resource_type) if isinstance(resource_type, str) else None
    if convert is None:
        raise NotSupported(f"no R5 form of {resource_type}")
    out = convert(copy.deepcopy(resource), copy.deepcopy(patient))
    _r5_references(out)
    return out


__all__ = ["XVER_R4", "to_r5"]
