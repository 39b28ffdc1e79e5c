"""Read views: what a reader gets back of a stored R4 resource, given the consent decision.

``render`` never changes its input. It returns a new resource in the decision's view and
labels it (``meta.security``) with the FHIR security labels of the release
(https://hl7.org/fhir/R4/security-labels.html, standards.md §3.2, §3.3, §6.5):

- **FULL** (care): the stored content unchanged.
- **DEIDENTIFIED** (ANONYED; TRAIN, MLTRAINING, HOPERAT, HTEST): built from an allow-list, so
  an element this module does not know is left out rather than leaked. No subject, no
  encounter, no names, no displays but the adapter's own (:func:`_site`: a body site's from
  mappings/body_sites.yaml; a Consent's, a Provenance's and a DocumentReference's codes go
  without theirs, which a sender wrote or may have: research review finding 1), no policy URI
  but the adapter's own (``policy.uri``), no extension value outside the adapter's vocabulary,
  no notes, narrative, titles, descriptions or device names
  (but the adapter's own secondary-image warning, word for word: :class:`_Ctx`),
  no record identifiers (the SHA-256 of the bytes links the copy back to the record), no
  attachment hash or size, dates cut to the year.
- **PSEUDONYMISED** (PSEUDED; HRESCH and children, PUBHLTH): the same allow-list, but the
  subject (and Consent.patient) becomes a keyed pseudonym that is stable across resources and
  requests, clinical dates are kept, the adapter's own instants (meta.lastUpdated, Media.issued,
  DocumentReference.date, Provenance.recorded: when it stored the record) are cut to their UTC
  day (:func:`_instant`: to the millisecond, whoever knows when a photo was uploaded - the
  uploader, a gateway's access log - would find its pseudonym by it, as by the hash: research
  review finding 3), and no record identifier either: the SHA-256 of the stored bytes,
  kept until the de-identification review, is in the uploader's receipt, so whoever saw the
  receipt found the patient's pseudonym by it; the custodian traces a finding back by the
  view's keyed id, which the key inverts (adapter.mapping.released_ids). The attachment's size
  and hash go, as when de-identifying: they describe the stored bytes, not the copy the view
  releases.

Neither view changes a picture. A Media, DocumentReference or Binary whose picture may identify the
patient (kinds.yaml ``recognizable`` or ``textInPixels``: a photo of the person, a document, a
screen; ``Decision.pixels_may_identify``) is labelled REDACTED, not ANONYED or PSEUDED, and the
record says so in words (:data:`PIXELS_NOT_CLEANED_NOTE`), as its DICOM copy does
(adapter.mapping.dicom_deid: PatientIdentityRemoved NO): a label never claims more than was done
(clinical-safety review F3). Consent and Provenance, which hold no picture, keep the view's label.

In both restricted views the resource's id and every literal reference it keeps (an attachment's
url, Binary.securityContext, Provenance.target and entity.what, Consent.provision.data) are the
view's own keyed ids (adapter.mapping.released_ids), so a copy cannot be joined on its id with
care's data or with the other restricted view's copy.

The output stays valid R4: required elements survive (a required Reference that had to lose
its target becomes a display-only Reference, e.g. Provenance.agent.who = "author (redacted)";
Provenance.recorded, a required instant, becomes 1 January 00:00 UTC of its year in the
de-identified view).
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapter.consent.grants import literal_type_id
from adapter.errors import Forbidden, NotSupported
from adapter.mapping import codes
from adapter.mapping.fhir_json import first_modifier
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.mapping.released_ids import IdSpace
from adapter.mapping.tables import Tables
from adapter.model.decision import Decision, View
from adapter.model.photo import ConsentMethod, DeviceOwnership, PhotoKind, PhotoSource

JSON = dict[str, Any]

# --- security-label vocabulary (standards.md §3.2, §3.3; displays from HL7 UTG) ------------

#: v3-Confidentiality, least to most confidential (https://hl7.org/fhir/R4/v3/Confidentiality/cs.html)
CONFIDENTIALITY_ORDER: tuple[str, ...] = ("U", "L", "M", "N", "R", "V")
CONFIDENTIALITY_DISPLAY: dict[str, str] = {
    "U": "unrestricted", "L": "low", "M": "moderate", "N": "normal", "R": "restricted",
    "V": "very restricted",
}
#: v3-ActCode obligation policies (SecurityPolicy), displays as in UTG.
OBLIGATION_DISPLAY: dict[str, str] = {
    "ANONY": "anonymize", "AOD": "accounting of disclosure", "AUDIT": "audit", "DEID": "deidentify",
    "DELAU": "delete after use", "ENCRYPT": "encrypt", "MASK": "mask", "MINEC": "minimum necessary",
    "PSEUD": "pseudonymize", "REDACT": "redact",
}
#: v3-ActCode obligation and refrain codes this module may write (and so replaces when present).
_ACT_CODE_LABELS = frozenset(OBLIGATION_DISPLAY) | {
    "CPLYCD", "NOREUSE", "NORDSCLCD", "NODSCLCD", "NOAUTH", "NOCOLLECT", "NOINTEGRATE", "NOPERSISTP", "ORCON",
}
#: v3-ObservationValue integrity labels for the views.
INTEGRITY_DISPLAY: dict[str, str] = {"ANONYED": "anonymized", "PSEUDED": "pseudonymized", "REDACTED": "redacted"}
_INTEGRITY_LABELS = frozenset({"ANONYED", "PSEUDED", "REDACTED", "MASKED", "SUBSETTED"})
_VIEW_INTEGRITY: dict[View, str] = {View.DEIDENTIFIED: "ANONYED", View.PSEUDONYMISED: "PSEUDED"}
#: The integrity label of a restricted view of an image whose picture may identify the patient
#: (Decision.pixels_may_identify): ANONYED ("strip portions of the resource that could allow the
#: identification of ... the information subject") and PSEUDED would claim it of the pixels too,
#: which no view cleans; REDACTED ("remove any portion of the resource that is not authorized to be
#: accessed, used, or disclosed") is what was done: identifiers, names, notes and dates removed.
#: (MASKED is for data made unintelligible, e.g. encrypted: not this.)
PIXELS_MAY_IDENTIFY_INTEGRITY = "REDACTED"
#: The resources that carry the picture (or, a Binary, are it).
_IMAGE_TYPES = frozenset({"Media", "DocumentReference", "Binary"})
#: What a restricted view of such an image says in words (Media.note; a paragraph of
#: DocumentReference.description), as the DICOM copy's DeidentificationMethod does
#: (adapter.mapping.dicom_deid): the labels alone do not tell a reader what to look out for.
PIXELS_NOT_CLEANED_NOTE = ("Pixel data not cleaned: the picture may show the patient or text that names them. "
                           "Not anonymised; released on the patient's consent for this purpose.")
BREAK_GLASS = "BTG"

# Extensions of ours that carry coded, non-identifying facts, and the values each may keep (a code
# of its vocabulary, True, or - a record's quality warning - the adapter's own text); every other
# extension, and one of these with another value, is left out of the restricted views
# (consent-recorded-by is a Reference to a person). Keyed by the resource types the adapter writes
# them on: a Consent is stored as its sender wrote it, so its extensions are the sender's, and only
# a consent method of the vocabulary stays (research review finding 1).
_CODED_EXTENSIONS: dict[str, frozenset[str]] = {
    codes.EXT_PHOTO_KIND: frozenset(k.value for k in PhotoKind),
    codes.EXT_PHOTO_SOURCE: frozenset(s.value for s in PhotoSource),
    codes.EXT_CAPTURE_DEVICE: frozenset(d.value for d in DeviceOwnership),
    codes.EXT_CONSENT_METHOD: frozenset(m.value for m in ConsentMethod),
}
_RECORD_EXTENSIONS = frozenset({codes.EXT_PHOTO_KIND, codes.EXT_PHOTO_SOURCE, codes.EXT_CONSENT_PENDING,
                                codes.EXT_CAPTURE_DEVICE, codes.EXT_QUALITY_WARNING})
_SAFE_EXTENSIONS: dict[str, frozenset[str]] = {
    "Media": _RECORD_EXTENSIONS, "DocumentReference": _RECORD_EXTENSIONS,
    "Consent": frozenset({codes.EXT_CONSENT_METHOD}),
}
#: A language tag (BCP 47's shape): Resource.language is a code, nothing else stays.
_LANGUAGE = re.compile(r"^[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*$", re.ASCII)
# Coded extensions on a CodeableConcept that are kept (valueCoding only).
_SAFE_CONCEPT_EXTENSIONS = frozenset({codes.EXT_LATERALITY})
# Identifier.system under which a subject known only by a literal reference is pseudonymised.
LITERAL_REFERENCE_SYSTEM = "urn:clinical-image-adapter:literal-reference"
_LITERAL = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?$")
_YEAR = re.compile(r"^(\d{4})", re.ASCII)
REDACTED = "redacted"


def confidentiality_rank(code: str) -> int:
    """Position of a v3-Confidentiality code in U < L < M < N < R < V (-1 if unknown)."""
    return CONFIDENTIALITY_ORDER.index(code) if code in CONFIDENTIALITY_ORDER else -1


def confidentiality_coding(code: str) -> JSON:
    """The v3-Confidentiality Coding for ``code``."""
    out: JSON = {"system": codes.V3_CONFIDENTIALITY, "code": code}
    if code in CONFIDENTIALITY_DISPLAY:
        out["display"] = CONFIDENTIALITY_DISPLAY[code]
    return out


def security_labels(decision: Decision, tables: Tables, *, image: bool = False) -> list[JSON]:
    """The ``meta.security`` Codings of a resource released under ``decision``
    (https://hl7.org/fhir/R4/security-labels.html, HCS categories):

    1. exactly one confidentiality Coding (v3-Confidentiality, ``policy.labels.confidentiality``);
    2. purposes of use (v3-ActReason, sorted by code) - as a label on data a PoU code states its
       permitted uses. The whole record (``View.FULL``: care, records management) lists those the
       record's Consents permit; a break-glass release adds ``BTG``: the copy was released for
       that emergency only and must not be reused for anything else. A restricted view lists the
       purpose it serves only: the patient's other consented purposes are a per-patient attribute
       that would let its de-identified or pseudonymised copies be grouped by patient, and the
       label is policy for the recipient, not a disclosure of the patient's other choices (FHIR
       REST review finding 4). So a restricted copy's labels do not change with the Consents;
    3. the obligations of the decision (v3-ActCode, e.g. DEID, PSEUD), in the decision's order;
    4. the integrity label of a restricted view (v3-ObservationValue ANONYED or PSEUDED); of an
       ``image`` (a Media, DocumentReference or Binary) whose picture may identify the patient
       (``decision.pixels_may_identify``) REDACTED, since no view cleans pixels
       (:data:`PIXELS_MAY_IDENTIFY_INTEGRITY`).
    """
    labels: list[JSON] = [confidentiality_coding(tables.policy.labels.confidentiality)]
    purposes = set(decision.permitted_purposes) if decision.view is View.FULL else {decision.purpose.code}
    if decision.break_glass:
        purposes.add(BREAK_GLASS)
    for code in sorted(purposes):
        coding: JSON = {"system": codes.V3_ACT_REASON, "code": code}
        entry = tables.purposes.codes.get(code)
        if entry is not None:
            coding["display"] = entry.display
        labels.append(coding)
    seen: set[str] = set()
    for code in decision.obligations:
        if code in seen:
            continue
        seen.add(code)
        coding = {"system": codes.V3_ACT_CODE, "code": code}
        if code in OBLIGATION_DISPLAY:
            coding["display"] = OBLIGATION_DISPLAY[code]
        labels.append(coding)
    integrity = _VIEW_INTEGRITY.get(decision.view)
    if integrity is not None and image and decision.pixels_may_identify:
        integrity = PIXELS_MAY_IDENTIFY_INTEGRITY
    if integrity is not None:
        labels.append({"system": codes.V3_OBSERVATION_VALUE, "code": integrity,
                       "display": INTEGRITY_DISPLAY[integrity]})
    return labels


def is_release_label(coding: Any) -> bool:
    """Whether a label is one ``security_labels`` owns (and so replaces): the confidentiality,
    purposes of use, obligations and integrity the adapter states of each release."""
    if not isinstance(coding, dict):
        return True
    system, code = coding.get("system"), coding.get("code")
    return (system in (codes.V3_CONFIDENTIALITY, codes.V3_ACT_REASON)
            or (system == codes.V3_ACT_CODE and code in _ACT_CODE_LABELS)
            or (system == codes.V3_OBSERVATION_VALUE and code in _INTEGRITY_LABELS))


def _apply_labels(resource: JSON, stored: list[Any], labels: list[JSON]) -> JSON:
    """Put ``labels`` in meta.security, keeping stored labels of other vocabularies (e.g.
    sensitivity codes) after them. A stored confidentiality more restrictive than the policy's
    wins: a relabelling intermediary must not lower a label (security-labels.html)."""
    stored_conf = [c.get("code", "") for c in stored
                   if isinstance(c, dict) and c.get("system") == codes.V3_CONFIDENTIALITY]
    labels = [dict(c) for c in labels]
    for code in stored_conf:
        if confidentiality_rank(code) > confidentiality_rank(labels[0]["code"]):
            labels[0] = confidentiality_coding(code)
    kept = [copy.deepcopy(c) for c in stored if not is_release_label(c)]
    meta = dict(resource.get("meta") or {})
    meta["security"] = labels + kept
    # meta goes where FHIR JSON puts it: after resourceType and id
    head: JSON = {k: resource[k] for k in ("resourceType", "id") if k in resource}
    return {**head, "meta": meta, **{k: v for k, v in resource.items() if k not in head and k != "meta"}}


# --- building blocks ----------------------------------------------------------------------

@dataclass(frozen=True)
class _Ctx:
    view: View
    pseudonymizer: Pseudonymizer
    ids: IdSpace
    #: The adapter's own texts (mappings/kinds.yaml ``warning``: the secondary image's "review the
    #: original"), holding no patient data: a note or a description paragraph equal to one word
    #: for word is kept, as the restricted DICOM copies keep it (adapter.mapping.dicom_deid)
    fixed_texts: frozenset[str] = frozenset()
    #: The picture may identify the patient: the view says so in words (:data:`PIXELS_NOT_CLEANED_NOTE`)
    pixels_may_identify: bool = True
    #: The adapter's own policy URI (policy.yaml ``uri``): the only Consent.policy.uri and
    #: Provenance.policy a restricted view keeps (another is the sender's, and may name anyone)
    policy_uri: str | None = None
    #: The body sites' system and displays (mappings/body_sites.yaml): the only displays of a
    #: bodySite a restricted view keeps (a received object's site outside it has its sender's words)
    site_system: str | None = None
    site_displays: Mapping[str, str] = field(default_factory=dict)

    @property
    def deid(self) -> bool:
        return self.view is View.DEIDENTIFIED


def _year(value: Any) -> str | None:
    """The year of a FHIR date/dateTime/instant as written (local time of the value)."""
    m = _YEAR.match(value) if isinstance(value, str) else None
    return m.group(1) if m else None


def _date_time(value: Any, ctx: _Ctx) -> str | None:
    """A dateTime in the view: the year only when de-identifying (YYYY is a valid dateTime)."""
    if not isinstance(value, str):
        return None
    return _year(value) if ctx.deid else value


def _instant(value: Any, ctx: _Ctx, *, required: bool = False) -> str | None:
    """One of the adapter's instants (when it stored the record: meta.lastUpdated, Media.issued,
    DocumentReference.date, Provenance.recorded) in the view. An instant cannot be cut to a year,
    so an optional one is left out when de-identifying; a required one (Provenance.recorded)
    becomes YYYY-01-01T00:00:00Z. The pseudonymised view cuts it to its day (UTC midnight: an
    instant needs a time), which the search and paging, on the stored values, do not change."""
    if not isinstance(value, str):
        return None
    if not ctx.deid:
        day = _day(value)
        if day is not None or not required:
            return day
    year = _year(value)
    return f"{year}-01-01T00:00:00Z" if required and year else None


def _day(value: str) -> str | None:
    """A FHIR instant as 00:00:00Z of its UTC day; None when it is no instant with a zone."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return f"{moment.astimezone(UTC):%Y-%m-%d}T00:00:00Z"


def _period(value: Any, ctx: _Ctx, *, as_date: Callable[[Any, _Ctx], str | None] | None = None) -> JSON | None:
    if not isinstance(value, dict):
        return None
    shown = as_date or _date_time
    out = {k: v for k in ("start", "end") if (v := shown(value.get(k), ctx)) is not None}
    return out or None


def _consent_time(value: Any, ctx: _Ctx) -> str | None:
    """A Consent's own dateTime (Consent.dateTime, provision.period, verification.verificationDate:
    when it was given and recorded) in the view: the year when de-identifying; in the pseudonymised
    view its UTC date alone, a date-only dateTime (``2026-11-28``). The adapter dates a Consent made
    without a date (a statement sent without ``consent.date``, the IMPLIED consent of a photo the
    patient sent) with the instant it stored the photo, and one sent with a photo has the upload's
    time besides: to the millisecond, whoever knows when a photo was uploaded would find its
    pseudonym by it (research review finding 3), as by meta.lastUpdated, which is cut to its day."""
    if not isinstance(value, str) or ctx.deid:
        return _date_time(value, ctx)
    if "T" not in value:
        return value  # a date, or a year and month: no time to cut
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None  # no dateTime: not shown
    return f"{(moment.astimezone(UTC) if moment.tzinfo is not None else moment):%Y-%m-%d}"


def _coding(value: Any, *, display: bool = True) -> JSON | None:
    """A Coding; without its ``display`` when ``display`` is False: where the coding is a
    sender's (an IHE MHD Document Source's codes on a DocumentReference), its display is text the
    sender wrote, which no table vouches for (as CodeableConcept.text)."""
    if not isinstance(value, dict):
        return None
    keys = ("system", "version", "code", "display", "userSelected") if display else \
        ("system", "version", "code", "userSelected")
    out = {k: value[k] for k in keys if k in value}
    return out if ("code" in out or "system" in out) else None


def _codings(values: Any, *, display: bool = True) -> list[JSON]:
    return [c for v in values or [] if (c := _coding(v, display=display)) is not None] \
        if isinstance(values, list) else []


def _concept(value: Any, *, required: bool = False, display: bool = True) -> JSON | None:
    """A CodeableConcept reduced to its Codings (CodeableConcept.text is free text; their
    displays too when ``display`` is False) and our coded element extensions (the laterality on
    bodySite)."""
    if not isinstance(value, dict):
        return None
    coding = _codings(value.get("coding"), display=display)
    if not coding:
        return {"text": REDACTED} if required else None
    out: JSON = {}
    extensions = [{"url": ext["url"], "valueCoding": c} for ext in value.get("extension") or []
                  if isinstance(ext, dict) and ext.get("url") in _SAFE_CONCEPT_EXTENSIONS
                  and (c := _coding(ext.get("valueCoding"))) is not None]
    if extensions:
        out["extension"] = extensions
    out["coding"] = coding
    return out


def _concepts(values: Any, *, required: bool = False, display: bool = True) -> list[JSON]:
    out = [c for v in values or [] if (c := _concept(v, display=display)) is not None] \
        if isinstance(values, list) else []
    if not out and required:
        return [{"text": REDACTED}]
    return out


def _site(value: Any, ctx: _Ctx) -> JSON | None:
    """A bodySite: its codings without displays, but a body site of mappings/body_sites.yaml with
    the table's (a received object's site outside the table keeps its sender's CodeMeaning as
    the display: adapter.mapping.dicom_fhir; the DICOM copies write the table's, PS3.16's or the
    code itself, never the sender's words). The laterality extension is the adapter's."""
    out = _concept(value, display=False)
    for coding in (out or {}).get("coding", []):
        code = coding.get("code")
        if coding.get("system") == ctx.site_system and isinstance(code, str) and code in ctx.site_displays:
            coding["display"] = ctx.site_displays[code]
    return out


def _literal(value: Any, ctx: _Ctx) -> JSON | None:
    """A Reference reduced to its literal ``Type/id``, in the view's ids (display, identifier
    and contained references dropped)."""
    if not isinstance(value, dict):
        return None
    ref = value.get("reference")
    if isinstance(ref, str) and _LITERAL.match(ref):
        out: JSON = {"reference": ctx.ids.reference(ref)}
        if isinstance(value.get("type"), str):
            out["type"] = value["type"]
        return out
    return None


def _literal_or_redacted(value: Any, ctx: _Ctx, label: str = REDACTED) -> JSON:
    """For a required Reference: the literal reference, else a display-only Reference (valid
    R4, https://hl7.org/fhir/R4/references.html#Reference)."""
    return _literal(value, ctx) or {"display": label}


def _subject(value: Any, ctx: _Ctx) -> JSON | None:
    """The record's subject in the view: nothing when de-identifying; a logical Reference to
    the keyed pseudonym of the identifier otherwise. A subject known only by a literal
    reference is pseudonymised under LITERAL_REFERENCE_SYSTEM (our records always carry the
    identifier, so this is a fallback)."""
    if ctx.deid or not isinstance(value, dict):
        return None
    ident = value.get("identifier")
    if isinstance(ident, dict) and isinstance(ident.get("system"), str) and isinstance(ident.get("value"), str):
        return ctx.pseudonymizer.patient_reference(ident["system"], ident["value"])
    ref = value.get("reference")
    if isinstance(ref, str) and ref:
        return ctx.pseudonymizer.patient_reference(LITERAL_REFERENCE_SYSTEM, ref)
    return None


def _extensions(values: Any, resource_type: str) -> list[JSON]:
    """Our extensions the resource type carries (:data:`_SAFE_EXTENSIONS`), each with a value of
    its vocabulary only: a coded one's code, consent-pending's True, a quality warning's text."""
    if not isinstance(values, list):
        return []
    allowed = _SAFE_EXTENSIONS.get(resource_type, frozenset())
    out: list[JSON] = []
    for ext in values:
        url = ext.get("url") if isinstance(ext, dict) else None
        if url not in allowed:
            continue
        if url in _CODED_EXTENSIONS:
            code = ext.get("valueCode")
            if isinstance(code, str) and code in _CODED_EXTENSIONS[url]:
                out.append({"url": url, "valueCode": code})
        elif url == codes.EXT_CONSENT_PENDING:
            if ext.get("valueBoolean") is True:
                out.append({"url": url, "valueBoolean": True})
        elif isinstance(ext.get("valueString"), str):  # a quality warning: the adapter's (records are rebuilt)
            out.append({"url": url, "valueString": ext["valueString"]})
    return out


def _attachment(value: Any, ctx: _Ctx) -> JSON:
    """An Attachment in the view. The title is free text; ``data`` is left out because the
    bytes are served (metadata-stripped) through Binary. ``size`` and ``hash`` are left out in
    both restricted views: they describe the stored bytes, and the Binary these views release is
    another copy (no metadata; in the pseudonymised view without the ICC profile, so of another
    length), whereas R4 Attachment.size and .hash are those of the data at ``url`` (a consumer
    checking them would reject the download as corrupt)."""
    if not isinstance(value, dict):
        return {}
    out: JSON = {k: value[k] for k in ("contentType", "language") if k in value}
    url = value.get("url")
    if isinstance(url, str) and _LITERAL.match(url):
        out["url"] = ctx.ids.reference(url)
    creation = _date_time(value.get("creation"), ctx)
    if creation is not None:
        out["creation"] = creation
    return out


def _meta(value: Any, ctx: _Ctx) -> JSON:
    """meta without source and tags (free URIs and workflow codes); lastUpdated is an instant
    and goes when de-identifying, and is cut to its day when pseudonymising (:func:`_instant`).
    Security labels are set by ``render``."""
    if not isinstance(value, dict):
        return {}
    out = {k: value[k] for k in ("versionId", "profile") if k in value}
    _put(out, "lastUpdated", _instant(value.get("lastUpdated"), ctx))
    return {k: out[k] for k in ("versionId", "lastUpdated", "profile") if k in out}


def _base(resource: JSON, ctx: _Ctx) -> JSON:
    out: JSON = {"resourceType": resource["resourceType"]}
    if "id" in resource:
        out["id"] = ctx.ids.released(resource["resourceType"], resource["id"])
    meta = _meta(resource.get("meta"), ctx)
    if meta:
        out["meta"] = meta
    language = resource.get("language")
    if isinstance(language, str) and _LANGUAGE.match(language):
        out["language"] = language
    extension = _extensions(resource.get("extension"), resource["resourceType"])
    if extension:
        out["extension"] = extension
    return out


def _put(out: JSON, key: str, value: Any) -> None:
    """Set ``key`` unless the value is empty (FHIR forbids empty elements, ele-1)."""
    if value is None or value == [] or value == {}:
        return
    out[key] = value


def _copy(out: JSON, source: JSON, keys: Iterable[str]) -> None:
    for key in keys:
        if key in source:
            out[key] = source[key]


# --- resources ----------------------------------------------------------------------------

def _media(r: JSON, ctx: _Ctx) -> JSON:
    """Media (https://hl7.org/fhir/R4/media.html): required status and content survive."""
    out = _base(r, ctx)
    _copy(out, r, ("status",))
    for key in ("type", "modality", "view"):
        _put(out, key, _concept(r.get(key)))
    _put(out, "subject", _subject(r.get("subject"), ctx))
    _put(out, "createdDateTime", _date_time(r.get("createdDateTime"), ctx))
    _put(out, "createdPeriod", _period(r.get("createdPeriod"), ctx))
    _put(out, "issued", _instant(r.get("issued"), ctx))
    _put(out, "reasonCode", _concepts(r.get("reasonCode")))
    _put(out, "bodySite", _site(r.get("bodySite"), ctx))
    _copy(out, r, ("height", "width", "frames", "duration"))
    out["content"] = _attachment(r.get("content"), ctx)
    notes = [{"text": n["text"]} for n in r.get("note") or []
             if isinstance(n, dict) and n.get("text") in ctx.fixed_texts]
    if ctx.pixels_may_identify:
        notes.append({"text": PIXELS_NOT_CLEANED_NOTE})
    _put(out, "note", notes)
    return out


def _document_reference(r: JSON, ctx: _Ctx) -> JSON:
    """DocumentReference (https://hl7.org/fhir/R4/documentreference.html). ``date`` is an
    instant: dropped when de-identifying. context keeps only coded facts and the period. The
    codes (type, category, securityLabel, context.event, facilityType, practiceSetting,
    content.format) may be an IHE MHD Document Source's (adapter.mapping.document_metadata): they
    stay, without their displays (text the sender wrote); its identifiers (masterIdentifier,
    entryUUID) are record identifiers, not released (module docstring). The view's own
    masterIdentifier stands in (:func:`_released_master_identifier`)."""
    out = _base(r, ctx)
    if "id" in out:
        out["masterIdentifier"] = _released_master_identifier(out["id"])
    _copy(out, r, ("status", "docStatus"))
    _put(out, "type", _concept(r.get("type"), display=False))
    _put(out, "category", _concepts(r.get("category"), display=False))
    _put(out, "subject", _subject(r.get("subject"), ctx))
    _put(out, "date", _instant(r.get("date"), ctx))
    paragraphs = [p for p in (_fixed_paragraph(r.get("description"), ctx),
                              PIXELS_NOT_CLEANED_NOTE if ctx.pixels_may_identify else None) if p]
    _put(out, "description", "\n\n".join(paragraphs) or None)
    _put(out, "securityLabel", _concepts(r.get("securityLabel"), display=False))
    content: list[JSON] = []
    for item in r.get("content") or []:
        entry: JSON = {"attachment": _attachment(item.get("attachment") if isinstance(item, dict) else None, ctx)}
        if isinstance(item, dict):
            _put(entry, "format", _coding(item.get("format"), display=False))
        content.append(entry)
    out["content"] = content
    src = r.get("context")
    if isinstance(src, dict):
        context: JSON = {}
        _put(context, "event", _concepts(src.get("event"), display=False))
        _put(context, "period", _period(src.get("period"), ctx))
        _put(context, "facilityType", _concept(src.get("facilityType"), display=False))
        _put(context, "practiceSetting", _concept(src.get("practiceSetting"), display=False))
        _put(out, "context", context)
    return out


def _fixed_paragraph(value: Any, ctx: _Ctx) -> str | None:
    """The adapter's own text among the paragraphs of a description (the record's description is
    the sender's title and note, then the kind's warning: adapter.mapping.photo), else None."""
    if not isinstance(value, str):
        return None
    return next((p for p in value.split("\n\n") if p in ctx.fixed_texts), None)


#: The namespace of :func:`_released_master_identifier`'s name-based UUIDs (RFC 9562 5.5).
_RELEASED_DOCUMENT_NAMESPACE = uuid.UUID("5b0c8f7e-3f4a-5d9b-9c1e-2a6f0d4b7c11")


def _released_master_identifier(released_id: str) -> JSON:
    """A restricted view's masterIdentifier of a DocumentReference: IHE MHD requires one (1..1 in
    the Minimal DocumentReference; the document's uniqueId, an OID, that a Document Consumer keys
    documents by: MHD review m6), and the stored one is the record's identifier, not released. The
    view's own is an OID under 2.25 (ITU-T X.667: a UUID as an OID) of the name-based UUID of the
    view's released id: the same document has the same one in every answer of the view, and it
    is made from the released id alone, so it links to nothing the released id does not."""
    value = uuid.uuid5(_RELEASED_DOCUMENT_NAMESPACE, f"DocumentReference/{released_id}").int
    return {"system": "urn:ietf:rfc:3986", "value": f"urn:oid:2.25.{value}"}


#: Consent.provision.data.meaning (R4 consent-data-meaning, a required binding).
_DATA_MEANINGS = frozenset({"instance", "related", "dependents", "authoredby"})


def _provision(p: JSON, ctx: _Ctx) -> JSON:
    """Consent.provision (recursive). Actors keep their role, their Reference becomes
    "redacted" (dropping the actor would widen the rule); data keeps the literal reference to
    our record. Codes go without their displays: the Consent is as its sender wrote it."""
    out: JSON = {}
    _copy(out, p, ("type",))
    _put(out, "period", _period(p.get("period"), ctx, as_date=_consent_time))
    actors = []
    for actor in p.get("actor") or []:
        if isinstance(actor, dict):
            actors.append({"role": _concept(actor.get("role"), required=True, display=False),
                           "reference": {"display": REDACTED}})
    _put(out, "actor", actors)
    _put(out, "action", _concepts(p.get("action"), display=False))
    _put(out, "securityLabel", _codings(p.get("securityLabel"), display=False))
    _put(out, "purpose", _codings(p.get("purpose"), display=False))
    _put(out, "class", _codings(p.get("class"), display=False))
    _put(out, "code", _concepts(p.get("code"), display=False))
    _put(out, "dataPeriod", _period(p.get("dataPeriod"), ctx))
    data = []
    for item in p.get("data") or []:
        if isinstance(item, dict) and item.get("meaning") in _DATA_MEANINGS:
            data.append({"meaning": item["meaning"], "reference": _literal_or_redacted(item.get("reference"), ctx)})
    _put(out, "data", data)
    _put(out, "provision", [_provision(n, ctx) for n in p.get("provision") or [] if isinstance(n, dict)])
    return out


def _consent(r: JSON, ctx: _Ctx) -> JSON:
    """Consent (https://hl7.org/fhir/R4/consent.html): scope, category and policy/policyRule
    (ppc-1) survive, codes without their displays (a Consent is stored as its sender wrote it,
    and a display can name the patient: research review finding 1); of the policies only the
    adapter's own URI (``policy.uri``; another, and every authority, is the sender's URL and may
    identify), and when none is left and no policyRule either, a policyRule of text "redacted"
    keeps ppc-1; patient is dropped or pseudonymised; performer, organization, the signed form
    (sourceAttachment) and other sources are left out."""
    out = _base(r, ctx)
    _copy(out, r, ("status",))
    _put(out, "scope", _concept(r.get("scope"), required=True, display=False))
    _put(out, "category", _concepts(r.get("category"), required=True, display=False))
    _put(out, "patient", _subject(r.get("patient"), ctx))
    _put(out, "dateTime", _consent_time(r.get("dateTime"), ctx))
    policies = [{"uri": ctx.policy_uri} for p in r.get("policy") or []
                if isinstance(p, dict) and ctx.policy_uri is not None and p.get("uri") == ctx.policy_uri]
    _put(out, "policy", policies[:1])
    _put(out, "policyRule", _concept(r.get("policyRule"), display=False, required=not policies))
    verification = []
    for v in r.get("verification") or []:
        if isinstance(v, dict) and "verified" in v:
            item: JSON = {"verified": v["verified"]}
            _put(item, "verificationDate", _consent_time(v.get("verificationDate"), ctx))
            verification.append(item)
    _put(out, "verification", verification)
    if isinstance(r.get("provision"), dict):
        _put(out, "provision", _provision(r["provision"], ctx))
    return out


def _as_permission(consent: JSON, released: frozenset[str]) -> JSON:
    """A Consent shown to a purpose other than care as the permission it gives (Decision.
    released_data; adapter.consent.decision: it is released only when it permits the purpose):
    its nested deny provisions, the patient's refusals, are left out (with what they nest), and
    provision.data keeps only the relative references to ``released``, the records the purpose
    is released (a withheld record's id, even the view's own, says it exists). A nested permit
    left with no data is left out: without data it would cover every record. A root left so
    cannot be shown (the decision refuses such a Consent): fail closed."""
    out = dict(consent)
    if isinstance(consent.get("provision"), dict):
        provision = _permission_provision(consent["provision"], released, root=True)
        if provision is None:
            raise Forbidden("the read is not permitted")
        out["provision"] = provision
    return out


def _permission_provision(p: JSON, released: frozenset[str], *, root: bool) -> JSON | None:
    if not root and p.get("type") != "permit":
        return None
    out = dict(p)
    if p.get("data") is not None:
        data = [item for item in p["data"] if isinstance(item, dict) and _names_released(item, released)]
        if not data:
            return None
        out["data"] = data
    nested = [n for c in p.get("provision") or [] if isinstance(c, dict)
              and (n := _permission_provision(c, released, root=False)) is not None]
    out.pop("provision", None)
    if nested:
        out["provision"] = nested
    return out


def _names_released(item: JSON, released: frozenset[str]) -> bool:
    ref = item.get("reference")
    literal = ref.get("reference") if isinstance(ref, dict) else None
    return isinstance(literal, str) and literal_type_id(literal) in released


def _agent_label(agent: JSON) -> str:
    concept = agent.get("type")
    coding = concept.get("coding") if isinstance(concept, dict) else None
    code = coding[0].get("code") if isinstance(coding, list) and coding and isinstance(coding[0], dict) else None
    return f"{code if isinstance(code, str) else 'agent'} ({REDACTED})"


def _provenance(r: JSON, ctx: _Ctx) -> JSON:
    """Provenance (https://hl7.org/fhir/R4/provenance.html). target keeps literal references;
    every agent.who (required) becomes a display-only Reference naming only its type, e.g.
    "author (redacted)"; onBehalfOf, location and signatures are left out; entity.what keeps a
    literal reference or becomes "<role> (redacted)" (the original file's hash and message id
    are identifiers). Codes go without displays and policy keeps only the adapter's own URI, as
    in a Consent: the view does not rest on the Provenance being the adapter's alone."""
    out = _base(r, ctx)
    _put(out, "target", [_literal_or_redacted(t, ctx) for t in r.get("target") or []])
    _put(out, "occurredDateTime", _date_time(r.get("occurredDateTime"), ctx))
    _put(out, "occurredPeriod", _period(r.get("occurredPeriod"), ctx))
    _put(out, "recorded", _instant(r.get("recorded"), ctx, required=True))
    _put(out, "policy", [p for p in r.get("policy") or [] if ctx.policy_uri is not None and p == ctx.policy_uri])
    _put(out, "reason", _concepts(r.get("reason"), display=False))
    _put(out, "activity", _concept(r.get("activity"), display=False))
    agents = []
    for agent in r.get("agent") or []:
        if isinstance(agent, dict):
            item: JSON = {}
            _put(item, "type", _concept(agent.get("type"), display=False))
            _put(item, "role", _concepts(agent.get("role"), display=False))
            item["who"] = {"display": _agent_label(agent)}
            agents.append(item)
    _put(out, "agent", agents)
    entities = []
    for entity in r.get("entity") or []:
        if isinstance(entity, dict) and isinstance(entity.get("role"), str):
            entities.append({"role": entity["role"],
                             "what": _literal_or_redacted(entity.get("what"), ctx, f"{entity['role']} ({REDACTED})")})
    _put(out, "entity", entities)
    return out


def _binary(r: JSON, ctx: _Ctx) -> JSON:
    """Binary (https://hl7.org/fhir/R4/binary.html): contentType and the literal
    securityContext; ``data`` is passed through - the caller strips the image's metadata."""
    out = _base(r, ctx)
    _copy(out, r, ("contentType",))
    _put(out, "securityContext", _literal(r.get("securityContext"), ctx))
    _copy(out, r, ("data",))
    return out


_VIEWS: dict[str, Callable[[JSON, _Ctx], JSON]] = {
    "Media": _media,
    "DocumentReference": _document_reference,
    "Consent": _consent,
    "Provenance": _provenance,
    "Binary": _binary,
}


def render(resource: JSON, decision: Decision, *, tables: Tables, pseudonymizer: Pseudonymizer,
           ids: IdSpace) -> JSON:
    """Return a new resource: ``resource`` in ``decision.view``, labelled with
    :func:`security_labels` in ``meta.security``. The input is not changed.

    ``ids``: the logical ids the reader's view shows (adapter.mapping.released_ids), those of its
    purpose: a restricted view shows its own for the resource and every reference it keeps. It is
    a required argument so that no caller can release a restricted copy under its stored id.

    Raises :class:`~adapter.errors.Forbidden` for a decision that does not permit the read
    (fail closed), and :class:`~adapter.errors.NotSupported` for a restricted view of a
    resource type it has no allow-list for, or of a resource carrying a modifierExtension
    (leaving one out could change the meaning; https://hl7.org/fhir/R4/extensibility.html#modifierExtension).
    """
    if not decision.permitted:
        raise Forbidden("the read is not permitted")
    resource_type = resource.get("resourceType")
    if decision.released_data is not None and resource_type == "Consent":
        resource = _as_permission(resource, decision.released_data)
    if decision.view is View.FULL:
        out = copy.deepcopy(resource)
    else:
        build = _VIEWS.get(resource_type) if isinstance(resource_type, str) else None
        if build is None:
            raise NotSupported(f"no {decision.view.value} view of {resource_type}")
        if first_modifier(resource, str(resource_type)) is not None:
            raise NotSupported(f"no {decision.view.value} view of a resource with a modifierExtension")
        out = build(copy.deepcopy(resource), _Ctx(decision.view, pseudonymizer, ids, tables.kind_warnings,
                                                  decision.pixels_may_identify, tables.policy.uri,
                                                  tables.body_sites.system, tables.body_sites.codes))
    meta = resource.get("meta")
    stored = meta.get("security") if isinstance(meta, dict) else None
    labels = security_labels(decision, tables, image=resource_type in _IMAGE_TYPES)
    return _apply_labels(out, stored if isinstance(stored, list) else [], labels)


__all__ = [
    "BREAK_GLASS", "CONFIDENTIALITY_DISPLAY", "CONFIDENTIALITY_ORDER", "INTEGRITY_DISPLAY",
    "LITERAL_REFERENCE_SYSTEM", "OBLIGATION_DISPLAY", "PIXELS_MAY_IDENTIFY_INTEGRITY", "PIXELS_NOT_CLEANED_NOTE",
    "confidentiality_coding", "confidentiality_rank",
    "is_release_label", "render", "security_labels",
]
