"""Read an R4 Consent (https://hl7.org/fhir/R4/consent.html) into :class:`ConsentGrant` facts.

The mapping, and where it fails closed:

* ``Consent.patient.identifier`` (system and value) is required: our Consents are written with
  it, and a grant must name its patient.
* ``provision.type`` gives the decision; a missing top-level type means ``permit`` when there is
  a provision. A Consent with no provision at all yields one ``deny`` grant with no purposes,
  which neither permits nor denies anything.
* ``provision.purpose`` codings of v3-ActReason give the purposes. A permit without purposes
  permits nothing. A deny without purposes, or with a purpose coding from another system,
  denies every purpose (:data:`ANY_PURPOSE`).
* ``provision.period`` gives the period: a date-only (or year/month) end is inclusive through
  the last instant of that day; a timezone-naive dateTime is read as UTC.
* ``provision.data[].reference.reference`` gives the data scope (any ``meaning`` is read as
  ``instance``; a ``/_history/n`` suffix is dropped; an absolute reference is read as its
  ``Type/id``, so a deny naming a record by its full URL applies). A data entry without a literal
  reference of that form (:func:`literal_type_id`: ``Media/abc/`` or ``Media/abc `` is none) cannot be
  matched: a deny then applies to all data, a permit only to the entries that can be matched
  (to nothing if there are none).
* Restrictions this adapter cannot evaluate (``actor``, ``class``, ``code``, ``securityLabel``,
  ``dataPeriod``, or an ``action`` that names neither access nor use) make a permit permit
  nothing and are ignored on a deny, which then denies more.
* Nested ``provision.provision[]`` of type deny become extra deny grants, inheriting what they
  do not restate from their parents (purposes, data) and clipped to their parents' period.
  Nested permits (exceptions to a deny) are not honoured: the deny stands. A nested provision
  without a type cannot be read (R4 has no meaning for it: read as its parent's opposite, a
  patient's permit of research under an untyped rule would become a denial of care), nor can a
  Consent carrying a ``modifierExtension`` anywhere (FHIR extensibility.html: an application
  SHALL NOT process a resource whose modifier extension it does not understand as if it were
  absent): both raise :class:`BusinessRuleViolation`, so a write refuses them (422) and a
  decision that meets a stored one reads it as a denial of every purpose.
* ``policyRule`` v3-ActCode#IMPLIED, or the consent-method extension ``implied``, marks an
  implied consent; the method comes from the consent-method extension, else IMPLIED for an
  implied consent, else WRITTEN when ``sourceAttachment`` holds or links the signed form
  (``data`` or ``url``), else None (:func:`consent_method`). The extension's ``written`` beside a
  ``sourceAttachment`` that neither holds nor links the form (a title only) is None: that
  attachment documents nothing, and cannot make the claim written (safety review 3); without any
  ``sourceAttachment`` the claim stands, the recorder's word, as ``POST /photos``' ``method:
  written`` without ``form``.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from adapter.consent.rules import ANY_PURPOSE, DENY, PERMIT
from adapter.errors import BusinessRuleViolation, InvalidResource, NotSupported
from adapter.mapping.fhir_json import first_modifier
from adapter.model.consent import ConsentGrant
from adapter.model.photo import ConsentMethod, Identifier
from adapter.model.purpose import V3_ACT_REASON_SYSTEMS

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CONSENT_ACTION = "http://terminology.hl7.org/CodeSystem/consentaction"
CONSENT_METHOD_EXTENSION = "http://clinical-image-adapter.org/fhir/StructureDefinition/consent-method"

_READ_ACTIONS = frozenset({"access", "use"})
_UNEVALUABLE = ("actor", "class", "code", "securityLabel", "dataPeriod")
_PARTIAL_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$", re.ASCII)
#: The R4 literal reference (references.html#literal, the pattern on Reference.reference), any
#: resource type: an optional http(s) base, ``Type/id``, an optional ``/_history/vid``.
_LITERAL_REFERENCE = re.compile(r"(?:https?://(?:[A-Za-z0-9\-\\.:%$]*/)+)?"
                                r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")


@dataclass(frozen=True)
class _Scope:
    """One provision with what it inherits from its parents."""

    decision: str
    purposes: frozenset[str] | None          # None: not restricted by purpose
    foreign_purpose: bool                    # a purpose coding outside v3-ActReason
    start: datetime | None
    end: datetime | None
    data_refs: frozenset[str] | None         # None: not restricted by data
    unresolved_data: bool                    # a data entry without a literal reference
    unevaluable: bool                        # a restriction we cannot evaluate


def grants_from_consent(resource: Mapping[str, Any]) -> list[ConsentGrant]:
    """Every grant a Consent makes: the top-level provision first, then nested deny provisions.

    All grants carry the Consent's id, status, patient, method and implied flag. Use this (not
    :func:`grant_from_consent`) when reading Consents for a decision, so nested denies count.

    Raises:
        InvalidResource: not a Consent, or an element we need is missing or malformed; the
            expression names the element.
    """
    if resource.get("resourceType") != "Consent":
        raise InvalidResource("not a Consent resource", expression="Consent.resourceType")
    modifier = first_modifier(resource, "Consent")
    if modifier is not None:
        raise BusinessRuleViolation("the Consent carries a modifierExtension, which changes its meaning in a way the "
                                    "adapter does not understand: it cannot be applied", expression=modifier)
    consent_id = _string(resource.get("id"), "Consent.id")
    status = _string(resource.get("status"), "Consent.status")
    patient = _patient(resource)
    # an implied consent says so in policyRule or in its consent-method extension: either way
    # it is no express consent (it covers care only)
    by_rule = _implied(resource)
    method = _method(resource, by_rule)
    implied = by_rule or method is ConsentMethod.IMPLIED

    def grant(scope: _Scope) -> ConsentGrant:
        return ConsentGrant(id=consent_id, patient=patient, status=status, decision=scope.decision,
                            purposes=_purposes(scope), method=method, period_start=scope.start,
                            period_end=scope.end, data_refs=_data_refs(scope), implied=implied)

    provision = resource.get("provision")
    if provision is None:
        return [ConsentGrant(id=consent_id, patient=patient, status=status, decision=DENY,
                             purposes=frozenset(), method=method, implied=implied)]
    top = _scope(_object(provision, "Consent.provision"), "Consent.provision", None)
    grants = [grant(top)]
    grants.extend(grant(s) for s in _nested_denials(_object(provision, "Consent.provision"),
                                                    "Consent.provision", top))
    return grants


def grant_from_consent(resource: Mapping[str, Any]) -> ConsentGrant:
    """The grant of a Consent's top-level provision (see :func:`grants_from_consent`).

    Raises:
        NotSupported: the Consent has nested deny provisions, which one grant cannot express;
            dropping them silently would permit what the patient denied.
        InvalidResource: as :func:`grants_from_consent`.
    """
    grants = grants_from_consent(resource)
    if len(grants) > 1:
        raise NotSupported("Consent has nested deny provisions; read it with grants_from_consent",
                           expression="Consent.provision.provision")
    return grants[0]


def _patient(resource: Mapping[str, Any]) -> Identifier:
    patient = resource.get("patient")
    identifier = patient.get("identifier") if isinstance(patient, Mapping) else None
    system = identifier.get("system") if isinstance(identifier, Mapping) else None
    value = identifier.get("value") if isinstance(identifier, Mapping) else None
    if not isinstance(system, str) or not system or not isinstance(value, str) or not value:
        raise InvalidResource("Consent.patient.identifier (system and value) is required",
                              expression="Consent.patient.identifier")
    return Identifier(system=system, value=value)


def _implied(resource: Mapping[str, Any]) -> bool:
    rule = resource.get("policyRule")
    if not isinstance(rule, Mapping):
        return False
    codings = _array(rule.get("coding"), "Consent.policyRule.coding")
    return any(isinstance(c, Mapping) and c.get("system") == V3_ACT_CODE and c.get("code") == "IMPLIED"
               for c in codings)


def consent_method(resource: Mapping[str, Any]) -> ConsentMethod | None:
    """How the consent was given, as every path reads it (a Consent posted alone, or carried by
    a transaction Bundle: review "ingest" finding 2): the consent-method extension when present
    (``written`` beside a ``sourceAttachment`` with neither ``data`` nor ``url``: None);
    else ``implied`` for policyRule v3-ActCode#IMPLIED; else ``written`` when ``sourceAttachment``
    holds the signed form (``data``) or links it (``url``), the evidence of a written consent (an
    attachment with neither, a title only, is none); else None (not said: neither written nor
    implied).

    Raises:
        InvalidResource: a consent-method extension whose code is not a method.
    """
    return _method(resource, _implied(resource))


def _method(resource: Mapping[str, Any], implied: bool) -> ConsentMethod | None:
    for i, ext in enumerate(_array(resource.get("extension"), "Consent.extension")):
        if isinstance(ext, Mapping) and ext.get("url") == CONSENT_METHOD_EXTENSION:
            value = ext.get("valueCode")
            try:
                method = ConsentMethod(str(value))
            except ValueError as exc:
                raise InvalidResource(f"consent-method must be one of {[m.value for m in ConsentMethod]}",
                                      expression=f"Consent.extension[{i}].valueCode") from exc
            attachment = resource.get("sourceAttachment")
            if method is ConsentMethod.WRITTEN and attachment is not None and not signed_form_given(attachment):
                # safety review 3: an attachment that neither holds nor links the form (a title
                # only) documents nothing, so it cannot back a claim of written consent either
                return None
            return method
    if implied:
        return ConsentMethod.IMPLIED
    return ConsentMethod.WRITTEN if signed_form_given(resource.get("sourceAttachment")) else None


def signed_form_given(attachment: Any) -> bool:
    """Does a Consent's ``sourceAttachment`` hold the signed form (``data``) or link it (``url``)?"""
    return isinstance(attachment, Mapping) and any(
        isinstance(attachment.get(k), str) and attachment[k].strip() for k in ("data", "url"))


def _scope(provision: Mapping[str, Any], expr: str, parent: _Scope | None) -> _Scope:
    decision = provision.get("type")
    if decision is None and parent is not None:
        raise BusinessRuleViolation("a nested provision must say whether it permits or denies (type)",
                                    expression=f"{expr}.type")
    if decision is None:
        decision = PERMIT  # R4 leaves the top-level type optional: a provision that exists is a permit
    if decision not in (PERMIT, DENY):
        raise InvalidResource("provision.type must be 'permit' or 'deny'", expression=f"{expr}.type")

    purposes: frozenset[str] | None = parent.purposes if parent else None
    foreign = parent.foreign_purpose if parent else False
    if provision.get("purpose") is not None:
        codings = _array(provision.get("purpose"), f"{expr}.purpose")
        ours = [c.get("code") if isinstance(c, Mapping) and c.get("system") in V3_ACT_REASON_SYSTEMS else None
                for c in codings]
        purposes = frozenset(c for c in ours if isinstance(c, str) and c)
        foreign = not all(isinstance(c, str) and c for c in ours)

    start, end = _period(provision.get("period"), f"{expr}.period")
    if parent is not None:
        start = _later(start, parent.start)
        end = _earlier(end, parent.end)

    data_refs = parent.data_refs if parent else None
    unresolved = parent.unresolved_data if parent else False
    if provision.get("data") is not None:
        refs: set[str] = set()
        unresolved = False
        for item in _array(provision.get("data"), f"{expr}.data"):
            ref = item.get("reference") if isinstance(item, Mapping) else None
            literal = ref.get("reference") if isinstance(ref, Mapping) else None
            named = literal_type_id(literal) if isinstance(literal, str) else None
            if named is not None:
                refs.add(named)
            else:
                unresolved = True
        data_refs = frozenset(refs)

    unevaluable = (parent.unevaluable if parent else False) or any(
        provision.get(name) is not None for name in _UNEVALUABLE)
    actions = provision.get("action")
    if actions is not None and not names_read_action(_array(actions, f"{expr}.action")):
        unevaluable = True
    return _Scope(decision=decision, purposes=purposes, foreign_purpose=foreign, start=start, end=end,
                  data_refs=data_refs, unresolved_data=unresolved, unevaluable=unevaluable)


def _nested_denials(provision: Mapping[str, Any], expr: str, scope: _Scope) -> list[_Scope]:
    out: list[_Scope] = []
    for i, child in enumerate(_array(provision.get("provision"), f"{expr}.provision")):
        child_expr = f"{expr}.provision[{i}]"
        child_map = _object(child, child_expr)
        child_scope = _scope(child_map, child_expr, scope)
        if child_scope.decision == DENY:
            out.append(child_scope)
        out.extend(_nested_denials(child_map, child_expr, child_scope))
    return out


def _purposes(scope: _Scope) -> frozenset[str]:
    if scope.decision == PERMIT:
        if scope.unevaluable or scope.purposes is None or (scope.unresolved_data and not scope.data_refs):
            return frozenset()
        return scope.purposes
    if scope.purposes is None or scope.foreign_purpose or not scope.purposes:
        return frozenset({ANY_PURPOSE})
    return scope.purposes


def literal_type_id(reference: str) -> str | None:
    """``Type/id`` of a literal reference (R4 Reference.reference, https://hl7.org/fhir/R4/
    references.html#literal): ``Type/id``, or an absolute URL ending in it, either with an optional
    ``/_history/vid`` (the version left out: the record is what a data scope names). None for
    anything else (``Media/abc/``, ``/Media/abc``, ``Media/abc `` or ``Media/abc/_history``, a
    fragment, a search URL): the data entry names no record the decision can match, so it is
    read as one whose data cannot be told (a deny then applies to all data, a permit to none);
    a write refuses it (adapter.services.consents)."""
    match = _LITERAL_REFERENCE.fullmatch(reference)
    return f"{match['type']}/{match['id']}" if match else None


def data_references(resource: Mapping[str, Any]) -> frozenset[str]:
    """The records (``Type/id``, :func:`literal_type_id`) a Consent's provision.data names, at
    any depth of its provisions; what is no literal reference is left out. Reads what it can
    and never raises (a view of the Consent asks it)."""
    out: set[str] = set()
    todo = [resource.get("provision")]
    while todo:
        provision = todo.pop()
        if not isinstance(provision, Mapping):
            continue
        data = provision.get("data")
        for item in data if isinstance(data, list) else []:
            ref = item.get("reference") if isinstance(item, Mapping) else None
            literal = ref.get("reference") if isinstance(ref, Mapping) else None
            named = literal_type_id(literal) if isinstance(literal, str) else None
            if named is not None:
                out.add(named)
        nested = provision.get("provision")
        todo.extend(nested if isinstance(nested, list) else [])
    return frozenset(out)


def _data_refs(scope: _Scope) -> frozenset[str]:
    if scope.data_refs is None:
        return frozenset()
    if scope.decision == DENY and scope.unresolved_data:
        return frozenset()          # cannot tell which data: deny for all
    return scope.data_refs


def names_read_action(actions: list[Any]) -> bool:
    """Does a provision's ``action`` name access or use (consentaction, or a code without a
    system)? A permit naming neither permits no read."""
    for concept in actions:
        codings = concept.get("coding") if isinstance(concept, Mapping) else None
        for coding in codings if isinstance(codings, list) else []:
            if (isinstance(coding, Mapping) and coding.get("system") in (CONSENT_ACTION, None)
                    and coding.get("code") in _READ_ACTIONS):
                return True
    return False


def inverted_period(resource: Mapping[str, Any]) -> str | None:
    """Where a provision's period of Consent ``resource`` (the top-level or a nested one) ends
    before it starts, breaking FHIR invariant per-1 (https://hl7.org/fhir/R4/datatypes.html#Period:
    "If present, start SHALL have a lower value than end"); None when none does. Compared as the
    instants each bound covers (a date-only end runs through its last instant), so only a period
    that certainly ends before it starts is found. A write refuses it; a decision reads such a
    period as one no moment is in."""
    pending: list[tuple[Any, str]] = [(resource.get("provision"), "Consent.provision")]
    while pending:
        provision, expr = pending.pop()
        if not isinstance(provision, Mapping):
            continue
        start, end = _period(provision.get("period"), f"{expr}.period")
        if start is not None and end is not None and start > end:
            return f"{expr}.period"
        pending += [(child, f"{expr}.provision[{i}]")
                    for i, child in enumerate(_array(provision.get("provision"), f"{expr}.provision"))]
    return None


def _period(value: Any, expr: str) -> tuple[datetime | None, datetime | None]:
    if value is None:
        return None, None
    period = _object(value, expr)
    start = period.get("start")
    end = period.get("end")
    return (None if start is None else _instant(start, f"{expr}.start", end=False),
            None if end is None else _instant(end, f"{expr}.end", end=True))


def _instant(value: Any, expr: str, *, end: bool) -> datetime:
    """A FHIR date or dateTime as an aware instant; a partial date's end is its last instant."""
    if not isinstance(value, str):
        raise InvalidResource("expected a FHIR date or dateTime", expression=expr)
    try:
        match = _PARTIAL_DATE.match(value)
        if match is None:
            parsed = datetime.fromisoformat(value)
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        year = int(match.group(1))
        month = int(match.group(2)) if match.group(2) else None
        day = int(match.group(3)) if match.group(3) else None
        first = datetime(year, month or 1, day or 1, tzinfo=UTC)
        if not end:
            return first
        if day is not None:
            after = first + timedelta(days=1)
        elif month is not None:
            after = first + timedelta(days=calendar.monthrange(year, month)[1])
        else:
            after = first.replace(year=year + 1)
        return after - timedelta(microseconds=1)
    except (ValueError, OverflowError) as exc:
        raise InvalidResource(f"not a valid FHIR date or dateTime: {value!r}", expression=expr) from exc


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


def _earlier(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _string(value: Any, expr: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidResource(f"{expr} is required", expression=expr)
    return value


def _object(value: Any, expr: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidResource(f"{expr} must be an object", expression=expr)
    return value


def _array(value: Any, expr: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidResource(f"{expr} must be an array", expression=expr)
    return value
