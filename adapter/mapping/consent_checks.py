"""The checks every Consent the adapter stores goes through, and the form it is stored in: one
path for a Consent posted alone (``POST``/``PUT /fhir/Consent``, adapter.services.consents) and
the Consent a transaction Bundle carries (adapter.mapping.transaction), so both are validated,
kept and read alike (review "ingest" findings 1 and 2: the Bundle's was rebuilt from its
purposes, and lost who consented, its verification and the link to its signed form).

What the checks do not cover, and the callers do: a ``provision.data`` reference naming a record
of another patient (the service, which reads the store), and what a Bundle's Consent may not say
(adapter.mapping.transaction).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterator
from collections.abc import Set as AbstractSet
from typing import Any

from pydantic import ValidationError

from adapter.consent import grants_from_consent, inverted_period
from adapter.consent.grants import literal_type_id
from adapter.errors import BusinessRuleViolation, InvalidInput, InvalidResource, UnknownCode
from adapter.mapping.codes import CONSENT_ACTION
from adapter.mapping.consent import signed_form
from adapter.mapping.fhir_json import validate_r4_resource
from adapter.mapping.narrative import check_narratives
from adapter.mapping.tables import Tables
from adapter.model.photo import patient_reference_problem
from adapter.model.purpose import V3_ACT_REASON, V3_ACT_REASON_SYSTEMS

CONSENT_STATUS = frozenset({"draft", "proposed", "active", "rejected", "inactive", "entered-in-error"})
#: http://terminology.hl7.org/CodeSystem/consentaction (R4), bound required to provision.action
CONSENT_ACTIONS = frozenset({"collect", "access", "use", "disclose", "correct"})


def check_consent(resource: dict[str, Any], id: str, *, tables: Tables, known_purposes: AbstractSet[str],
                  current: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Consent as it is stored: a copy carrying ``id``, without client-supplied meta, its
    signed form (``sourceAttachment.data``) kept as :func:`clean_source_attachment` keeps it;
    everything else as sent. ``current``: the version an update replaces. Expressions start with
    ``Consent``.

    Raises:
        InvalidResource: not a Consent, another id, invalid R4, neither policy nor policyRule
            (ppc-1), a period ending before it starts (per-1), a Consent that cannot be read.
        UnknownCode: a status, provision.type or action outside its required binding.
        BusinessRuleViolation: no patient identifier; a modifierExtension, a nested provision
            without a type (adapter.consent.grants).
        InvalidInput: a purpose that is no known v3-ActReason code; a provision.data reference
            that is no literal reference; a patient.reference named anew that is no literal
            reference to a Patient.
        UnsupportedMediaType, ImageTooLarge, UndecodableImage: a signed form refused as a
            photo's consent form is.
    """
    if resource.get("resourceType") != "Consent":
        raise InvalidResource("expected a Consent resource", expression="Consent.resourceType")
    if resource.get("id") not in (None, id):
        raise InvalidResource("the resource id must match the URL", expression="Consent.id")
    resource = {**resource, "id": id}
    resource.pop("meta", None)
    validate_r4_resource(resource)
    if not resource.get("policy") and not resource.get("policyRule"):
        # FHIR invariant ppc-1 (https://hl7.org/fhir/R4/consent.html#invs): fails basic validation, 400
        raise InvalidResource("a Consent names the policy it is given under: policy or policyRule (FHIR "
                              "invariant ppc-1; e.g. policyRule v3-ActCode OPTIN)", expression="Consent.policyRule")
    check_narratives(resource, "Consent")
    clean_source_attachment(resource, current, tables)
    # required bindings fhir.resources does not check (https://hl7.org/fhir/R4/consent.html)
    if resource.get("status") not in CONSENT_STATUS:
        raise UnknownCode(f"Consent.status must be one of {', '.join(sorted(CONSENT_STATUS))}",
                          expression="Consent.status")
    provision_type = (resource.get("provision") or {}).get("type")
    if provision_type not in (None, "permit", "deny"):
        raise UnknownCode("Consent.provision.type must be permit or deny", expression="Consent.provision.type")
    ident = (resource.get("patient") or {}).get("identifier") or {}
    if not ident.get("system") or not ident.get("value"):
        # FHIR allows a Consent without one: a rule of this server, 422 (http.html#create)
        raise BusinessRuleViolation("Consent.patient must carry an identifier (system and value): the adapter "
                                    "matches patients by identifier", expression="Consent.patient.identifier")
    _check_patient_reference(resource, current)
    for where, coding in action_codings(resource.get("provision"), "Consent.provision"):
        if coding.get("code") not in CONSENT_ACTIONS:
            raise UnknownCode(f"{where}.code is not a code of {CONSENT_ACTION}", expression=f"{where}.code")
    for where, coding in purpose_codings(resource.get("provision"), "Consent.provision"):
        if coding.get("system") not in V3_ACT_REASON_SYSTEMS or coding.get("code") not in known_purposes:
            # a purpose the decision cannot read would make a deny deny everything, a
            # permit permit nothing: refused when written, in nested provisions too
            raise InvalidInput(f"{where} is not a known v3-ActReason purpose-of-use code ({V3_ACT_REASON})",
                               expression=where)
    for where, literal in data_references(resource.get("provision"), "Consent.provision"):
        if literal_type_id(literal) is None:
            # read, it would name no record: a deny would then deny all the patient's data,
            # a permit permit none; refused rather than half-applied
            raise InvalidInput(f"{where} is not a literal reference [base/]Type/id[/_history/vid] "
                               "(https://hl7.org/fhir/R4/references.html#literal): the record it names "
                               "cannot be told", expression=where)
    try:
        grants_from_consent(resource)
    except (ValueError, ValidationError) as exc:
        raise InvalidResource(f"Consent cannot be interpreted: {exc}", expression="Consent") from exc
    inverted = inverted_period(resource)
    if inverted is not None:  # fails basic FHIR validation: 400, as an invalid element
        raise InvalidResource("the period ends before it starts (FHIR invariant per-1)", expression=inverted)
    return resource


def _check_patient_reference(resource: dict[str, Any], current: dict[str, Any] | None) -> None:
    """``Consent.patient.reference``, when named anew (not the one ``current`` holds), is a
    literal reference to a Patient (adapter.model.photo.patient_reference_problem): as a photo's
    subject is claimed and searched by its ``Patient/<id>``, so is a Consent's patient. A version
    keeping the reference stored before the check is not refused: a withdrawal must not fail."""
    reference = (resource.get("patient") or {}).get("reference")
    if reference is None or reference == ((current or {}).get("patient") or {}).get("reference"):
        return
    problem = patient_reference_problem(reference) if isinstance(reference, str) else "is not a string"
    if problem is not None:
        raise InvalidInput(f"Consent.patient.reference {problem}", expression="Consent.patient.reference")


def clean_source_attachment(resource: dict[str, Any], current: dict[str, Any] | None, tables: Tables) -> None:
    """The signed form a Consent carries in ``sourceAttachment.data`` is kept as the photo
    path keeps one (adapter.mapping.consent.signed_form): a PDF, or a scan as JPEG or PNG
    without its metadata (GPS, serials, the owner's name), within the policy's pixel limit
    and proven to decode; its size (and hash, when given: SHA-1, R4 Attachment.hash) then
    describe the bytes kept. A form given by url only is not fetched. An update carrying the
    form the current version holds keeps it as it is: it was cleaned when written, and a
    withdrawal must not fail on a form a later policy (a lower pixel limit) would refuse."""
    attachment = resource.get("sourceAttachment")
    if not isinstance(attachment, dict) or attachment.get("data") is None:
        return
    held = (current or {}).get("sourceAttachment")
    if isinstance(held, dict) and held.get("data") == attachment["data"]:
        return
    where = "Consent.sourceAttachment"
    try:
        raw = base64.b64decode("".join(str(attachment["data"]).split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidResource("sourceAttachment.data is not base64", expression=f"{where}.data") from exc
    content_type, kept = signed_form(raw, attachment.get("contentType"), tables, where)
    cleaned = {**attachment, "contentType": content_type, "data": base64.b64encode(kept).decode("ascii"),
               "size": len(kept)}
    if "hash" in attachment:
        cleaned["hash"] = base64.b64encode(hashlib.sha1(kept).digest()).decode("ascii")  # R4 Attachment.hash is SHA-1
    resource["sourceAttachment"] = cleaned


def purpose_codings(provision: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, coding) of every purpose coding in ``provision`` and its nested provisions."""
    if not isinstance(provision, dict):
        return
    for i, coding in enumerate(provision.get("purpose") or []):
        yield f"{path}.purpose[{i}]", coding if isinstance(coding, dict) else {}
    for k, nested in enumerate(provision.get("provision") or []):
        yield from purpose_codings(nested, f"{path}.provision[{k}]")


def data_references(provision: Any, path: str) -> Iterator[tuple[str, str]]:
    """(path, literal reference) of every ``data[].reference`` in ``provision`` and its nested
    provisions: its ``reference``, or "" for one naming its record otherwise (by identifier or
    display only), which the decision cannot match either (the model has checked the shapes)."""
    if not isinstance(provision, dict):
        return
    for i, data in enumerate(provision.get("data") or []):
        ref = data.get("reference") if isinstance(data, dict) else None
        if isinstance(ref, dict):
            literal = ref.get("reference")
            yield f"{path}.data[{i}].reference.reference", literal if isinstance(literal, str) else ""
    for k, nested in enumerate(provision.get("provision") or []):
        yield from data_references(nested, f"{path}.provision[{k}]")


def action_codings(provision: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, coding) of every consentaction coding in ``provision`` and its nested provisions
    (the model has checked the shapes; anything else is skipped)."""
    if not isinstance(provision, dict):
        return
    for i, action in enumerate(provision.get("action") or []):
        codings = action.get("coding") if isinstance(action, dict) else None
        for j, coding in enumerate(codings if isinstance(codings, list) else []):
            if isinstance(coding, dict) and coding.get("system") == CONSENT_ACTION:
                yield f"{path}.action[{i}].coding[{j}]", coding
    for k, nested in enumerate(provision.get("provision") or []):
        yield from action_codings(nested, f"{path}.provision[{k}]")


__all__ = ["CONSENT_ACTIONS", "CONSENT_STATUS", "action_codings", "check_consent", "clean_source_attachment",
           "data_references", "purpose_codings"]
