"""Consent documented with a photo → R4 Consent (https://hl7.org/fhir/R4/consent.html).

Shape (standards.md §2.4, §3.4), read back by adapter.consent.grants:

* status ``active``; scope consentscope#patient-privacy; category LOINC 59284-0 Patient Consent;
* patient and performer = the patient, by identifier (plus the EHR reference when known);
* organization = our organisation (display and identifier, from the policy);
* policy.uri = the policy document URI (satisfies ppc-1) and policyRule v3-ActCode ``OPTIN``
  for verbal or written consent, ``IMPLIED`` for the consent a patient implies by sending a photo;
* extensions consent-method (valueCode) and consent-recorded-by (valueReference);
* sourceAttachment = the scanned form of a written consent (base64, content type sniffed when
  not given);
* provision: permit, period.start = the consent date, action consentaction#collect and #use,
  purpose = v3-ActReason codings. A consent given with a photo (verbal, written or implied)
  also gets provision.data (meaning ``instance``) naming that photo's record: it is that photo's
  consent, not the patient's for every photo. The record governs its Binary and Provenance (their
  access facts are the record's), so naming it covers the image too. A Consent the patient gives
  for all their photos is recorded on its own (``POST /fhir/Consent``), without provision.data.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from datetime import UTC, date, datetime

from adapter.errors import ImageTooLarge, InvalidInput, UndecodableImage, UnsupportedMediaType
from adapter.imaging import sanitize_scan
from adapter.mapping.codes import (
    CONSENT_ACTION,
    CONSENT_CATEGORY_LOINC,
    CONSENT_SCOPE,
    EXT_CONSENT_METHOD,
    EXT_CONSENT_RECORDED_BY,
    LOINC,
    V3_ACT_CODE,
)
from adapter.mapping.fhir_r4 import (
    JSON,
    coding,
    concept,
    extension,
    fhir_datetime,
    parse_fhir_datetime,
    patient_reference,
    purpose_coding,
    reference,
    utc_instant,
)
from adapter.mapping.tables import Tables
from adapter.model.photo import (
    ConsentMethod,
    ConsentStatement,
    PatientRef,
    Reference,
    TransactionConsentStatement,
)

#: v3-ActCode ActConsentDirective codes (standards.md §3.4) per consent method.
POLICY_RULE: dict[ConsentMethod, tuple[str, str]] = {
    ConsentMethod.VERBAL: ("OPTIN", "opt-in"),
    ConsentMethod.WRITTEN: ("OPTIN", "opt-in"),
    ConsentMethod.IMPLIED: ("IMPLIED", "implied consent"),
}

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
)


def _form_attachment(form: str, content_type: str | None, when: str, tables: Tables) -> JSON:
    """Consent.sourceAttachment for a signed form (R4 Attachment: data is base64): see
    :func:`signed_form`, at ``consent.form``."""
    try:
        raw = base64.b64decode("".join(form.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput("consent.form must be base64", expression="consent.form") from exc
    content_type, raw = signed_form(raw, content_type, tables, "consent.form")
    return {
        "contentType": content_type,
        "data": base64.b64encode(raw).decode("ascii"),
        "size": len(raw),
        "title": "Signed consent form",
        "creation": when,
    }


def signed_form(raw: bytes, content_type: str | None, tables: Tables, expression: str) -> tuple[str, bytes]:
    """A signed consent form's bytes as they are kept: (content type, bytes). A PDF as it is, or a
    scan as JPEG or PNG without its metadata. UnsupportedMediaType for anything else, or for a
    ``content_type`` that says otherwise than the bytes. (A PDF's own metadata, its author and
    producer, is kept: it is the signed document.) A scan passes what a photo does (the policy's
    pixel limit before anything is inflated, the decode proof): ImageTooLarge or
    UndecodableImage, at ``expression``, as a photo would get them."""
    if not raw:
        raise InvalidInput(f"{expression} is empty", expression=expression)
    # What the form is, is read from its bytes: a PDF, or a scan as JPEG or PNG, whose metadata
    # (a phone's GPS and serials, the owner's name) is removed as a photo's is.
    found = next((ct for magic, ct in _MAGIC if raw.startswith(magic)), None)
    if found is None or (content_type is not None and content_type.split(";")[0].strip().lower() != found):
        raise UnsupportedMediaType(f"{expression} must be a PDF, or a scan as JPEG or PNG (its content type, when "
                                   "given, saying which)", expression=expression)
    if found == "application/pdf":
        return found, raw
    policy = tables.policy
    try:
        return sanitize_scan(raw, quality=policy.quality, limits=policy.limits)
    except (ImageTooLarge, UndecodableImage) as exc:
        raise type(exc)(f"{expression}: {exc.diagnostics}", expression=expression, refusal=exc.refusal) from exc


def build_consent_resource(*, consent_id: str, patient: PatientRef, purposes: Sequence[str],
                           method: ConsentMethod, tables: Tables, now: datetime,
                           consent_date: datetime | date | None = None,
                           recorded_by: Reference | None = None, form: str | None = None,
                           form_content_type: str | None = None,
                           data_refs: Sequence[str] = ()) -> JSON:
    """One active permit Consent for ``purposes`` (v3-ActReason codes of the purposes table).

    ``consent_date`` (default ``now``) gives Consent.dateTime and provision.period.start (a
    naive datetime or a date gives date precision, see adapter.mapping.fhir_r4). ``data_refs``
    ("Media/abc") restrict the provision to those records (provision.data, meaning instance);
    a consent given with a photo should always be restricted to that photo.

    Raises:
        InvalidInput: no purposes, or ``form`` is not base64 (expression ``consent.form``).
        UnsupportedMediaType: ``form`` is neither a PDF nor a JPEG or PNG scan, or
            ``form_content_type`` says otherwise than its bytes.
        ImageTooLarge, UndecodableImage: a scan over the policy's pixel limit, or one that does
            not decode (expression ``consent.form``).
        ValueError: ``now`` is naive.
    """
    if not purposes:
        raise InvalidInput("a Consent needs at least one purpose", expression="consent.purposes")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    when = fhir_datetime(consent_date if consent_date is not None else now)
    rule_code, rule_display = POLICY_RULE[method]
    subject = patient_reference(patient)
    org = tables.policy.organisation

    extensions: list[JSON] = [extension(EXT_CONSENT_METHOD, "Code", method.value)]
    if recorded_by is not None:
        extensions.append(extension(EXT_CONSENT_RECORDED_BY, "Reference", reference(recorded_by)))

    provision: JSON = {
        "type": "permit",
        "period": {"start": when},
        "action": [concept(coding(CONSENT_ACTION, "collect", "Collect")),
                   concept(coding(CONSENT_ACTION, "use", "Use"))],
        "purpose": [purpose_coding(p, tables.purposes.codes) for p in dict.fromkeys(purposes)],
    }
    if data_refs:
        provision["data"] = [{"meaning": "instance", "reference": {"reference": ref}} for ref in data_refs]

    resource: JSON = {
        "resourceType": "Consent",
        "id": consent_id,
        "extension": extensions,
        "status": "active",
        "scope": concept(coding(CONSENT_SCOPE, "patient-privacy", "Privacy Consent")),
        "category": [concept(coding(LOINC, CONSENT_CATEGORY_LOINC, "Patient Consent"))],
        "patient": subject,
        "dateTime": when,
        "performer": [dict(subject)],
        "organization": [{"identifier": {"system": org.identifier.system, "value": org.identifier.value},
                          "display": org.name}],
    }
    if form is not None:
        resource["sourceAttachment"] = _form_attachment(form, form_content_type, when, tables)
    resource["policy"] = [{"uri": tables.policy.uri}]
    resource["policyRule"] = concept(coding(V3_ACT_CODE, rule_code, rule_display))
    resource["provision"] = provision
    return resource


def consent_from_statement(statement: ConsentStatement, *, consent_id: str, patient: PatientRef,
                           tables: Tables, now: datetime, recorded_by: Reference | None = None,
                           record_ref: str | None = None, record_refs: Sequence[str] = ()) -> JSON:
    """The Consent for a ``consent`` statement sent with a photo.

    ``statement.recordedBy`` wins over ``recorded_by`` (the caller's fallback, e.g. the photo's
    author). Whatever its method, the statement is restricted to ``record_ref`` ("Media/abc"),
    the record the submission creates: the metadata speaks of one photo, so what the patient
    agreed to there is that photo's use, not the use of their earlier or later photos (nor does
    it document a photo kept as consent pending). A statement sent once for several documents
    (the Consent of a transaction of several) is restricted to their records, ``record_refs``.

    The Consent a transaction Bundle carries (a :class:`TransactionConsentStatement`) is stored
    as sent, as ``POST /fhir/Consent`` stores it (:func:`_consent_from_resource`), not rebuilt
    from the statement: who consented (a guardian), its verification and its signed form's link
    are kept (review "ingest" finding 1).
    """
    if isinstance(statement, TransactionConsentStatement):
        return _consent_from_resource(statement.resource, consent_id=consent_id, now=now,
                                      data_refs=tuple(record_refs) or ((record_ref,) if record_ref else ()))
    given = statement.date
    # A date (or a time without its zone) is local to whoever wrote it: "today" east of UTC is
    # tomorrow in UTC, and a clock may run ahead. The ingest refuses what lies more than a day
    # ahead (adapter.consent.ingest); within that, a Consent starting later would leave the photo
    # unreadable for care until then: it is recorded as given now.
    if given is not None and utc_instant(given) > now:
        given = now if isinstance(given, datetime) else now.astimezone(UTC).date()
    return build_consent_resource(
        consent_id=consent_id, patient=patient, purposes=statement.purposes, method=statement.method,
        tables=tables, now=now, consent_date=given,
        recorded_by=statement.recorded_by or recorded_by, form=statement.form,
        form_content_type=statement.form_content_type,
        data_refs=tuple(record_refs) or ((record_ref,) if record_ref else ()))


def _consent_from_resource(resource: JSON, *, consent_id: str, now: datetime, data_refs: Sequence[str]) -> JSON:
    """The Consent a transaction Bundle carries, checked as ``POST /fhir/Consent`` checks one
    (adapter.mapping.consent_checks, adapter.mapping.transaction), with ``consent_id`` and
    restricted to the Bundle's records (``provision.data``, meaning instance: it is their
    consent, as a statement's is its photo's). A ``provision.period.start`` ahead of ``now``
    (the ingest refuses one more than a day ahead: a date east of UTC) starts now, as a
    statement's date does, so that the photos are readable for care from the time they are
    stored."""
    provision = dict(resource["provision"])
    start = parse_fhir_datetime((provision.get("period") or {}).get("start"))
    if start is not None and utc_instant(start) > now:
        given: datetime | date = now if start.tzinfo is not None else now.astimezone(UTC).date()  # a date: a date
        provision["period"] = {**provision["period"], "start": fhir_datetime(given)}
    if data_refs:
        provision["data"] = [{"meaning": "instance", "reference": {"reference": ref}} for ref in data_refs]
    return {"resourceType": "Consent", "id": consent_id, **{k: v for k, v in resource.items() if k != "provision"},
            "provision": provision}


__all__ = ["POLICY_RULE", "build_consent_resource", "consent_from_statement"]
