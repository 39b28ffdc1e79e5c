"""Rules shared by the ingest assessment and the read decision: how a purpose of use is
classified under the organisation's policy, and when a :class:`ConsentGrant` applies.

A grant applies the way a FHIR R4 Consent provision does (https://hl7.org/fhir/R4/consent.html,
"Consent.provision"): it concerns one patient, it is in force only while ``Consent.status`` is
``active`` and ``now`` is inside ``provision.period``, ``provision.data`` (when present) limits
it to the listed resources, and ``provision.purpose`` names the purposes of use it covers. A
purpose covers its descendants in the v3-ActReason hierarchy (a Consent for TREAT covers COC),
never its siblings or ancestors (a Consent for TRAIN does not cover MLTRAINING). A permit covers a
descendant only when the descendant's view (mappings/purposes.yaml) shows no more than the
purpose the patient consented to: a Consent for HOPERAT, whose use is de-identified, does not
release the identified record to RECORDMGT, its child with care's full view (a deny covers every
descendant).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from adapter.mapping.tables import Tables
from adapter.model.consent import ConsentGrant
from adapter.model.photo import Identifier

#: A deny grant whose provision names no purpose (or one we do not recognise) denies every
#: purpose: FHIR reads an unrestricted deny provision as "deny everything in scope". Only ever
#: honoured on deny grants; a permit grant with no purposes permits nothing (fail closed).
ANY_PURPOSE = "*"

#: The care purpose a clinical photo needs documented consent for (clinical images guidance).
TREAT = "TREAT"

PERMIT = "permit"
DENY = "deny"
ACTIVE = "active"
#: Consent.status of a withdrawn consent (R4 ConsentState "inactive").
WITHDRAWN = "inactive"


class PurposeClass(StrEnum):
    """How the policy treats a purpose of use."""

    UNKNOWN = "unknown"                # not a code of mappings/purposes.yaml
    BREAK_GLASS = "break-glass"        # policy.breakGlass.purposes (or a descendant)
    CARE = "care"                      # policy.consent.carePurposes (or a descendant)
    EXPLICIT = "explicit"              # policy.consent.explicitPurposes (or a descendant)
    NOT_PERMITTED = "not-permitted"    # known, but the policy names neither it nor an ancestor


def classify_purpose(code: str, tables: Tables) -> PurposeClass:
    """Classify a v3-ActReason code under the policy.

    Break-glass is checked first: a code is break-glass when it or an ancestor is listed in
    ``breakGlass.purposes`` (ETREAT is a child of TREAT but is never plain care). Otherwise the
    nearest listed ancestor decides between care and explicit consent, so the most specific
    entry of the policy wins.
    """
    if code not in tables.purposes.codes:
        return PurposeClass.UNKNOWN
    chain = tables.purposes.ancestors(code)
    rules = tables.policy.consent
    if not set(chain).isdisjoint(tables.policy.break_glass.purposes):
        return PurposeClass.BREAK_GLASS
    for ancestor in chain:
        if ancestor in rules.explicit_purposes:
            return PurposeClass.EXPLICIT
        if ancestor in rules.care_purposes:
            return PurposeClass.CARE
    return PurposeClass.NOT_PERMITTED


def purposes_cover(purposes: Iterable[str], code: str, tables: Tables) -> bool:
    """True when ``purposes`` lists ``code`` or one of its ancestors."""
    return not set(purposes).isdisjoint(tables.purposes.ancestors(code))


#: How much of a record each view withholds (mappings/purposes.yaml ``view``), least first.
_WITHHOLDS = {"full": 0, "pseudonymised": 1, "deidentified": 2}


def grant_covers(grant: ConsentGrant, code: str, tables: Tables) -> bool:
    """True when the grant's provision covers the purpose ``code`` (see :data:`ANY_PURPOSE`).

    A deny covers ``code`` when it names it or an ancestor. A permit does only through a purpose
    whose view withholds no less than ``code``'s (module docstring): what the patient agreed to
    is a use in that purpose's view, so a child purpose shown more fully is not agreed to."""
    if grant.decision == DENY:
        return ANY_PURPOSE in grant.purposes or purposes_cover(grant.purposes, code, tables)
    if grant.implied:
        # the guidance: a photo the patient sent carries consent only for the purpose it was sent
        # for, not for that purpose's children (TREAT's CLINTRL, care within a clinical trial, read
        # it in the full view: clinical safety review); a policy wanting more lists them in
        # consent.patientImpliedPurposes
        return code in grant.purposes
    codes = tables.purposes.codes
    if code not in codes:
        return False
    shown = _WITHHOLDS[codes[code].view]
    return any(_WITHHOLDS[codes[p].view] <= shown for p in set(grant.purposes) & set(tables.purposes.ancestors(code)))


def in_period(grant: ConsentGrant, now: datetime) -> bool:
    """``now`` inside provision.period, both ends inclusive; an absent end is open."""
    if grant.period_start is not None and now < grant.period_start:
        return False
    return grant.period_end is None or now <= grant.period_end


def grant_scope_matches(grant: ConsentGrant, patient: Identifier, data_ref: str | None) -> bool:
    """Same patient, and either no provision.data restriction or ``data_ref`` is listed.

    ``data_ref`` None stands for a record that does not exist yet (ingest): only grants with no
    data restriction can concern it.
    """
    if grant.patient != patient:
        return False
    return not grant.data_refs or (data_ref is not None and data_ref in grant.data_refs)


def grant_in_force(grant: ConsentGrant, patient: Identifier, data_ref: str | None, now: datetime) -> bool:
    """Active, in its period, and scoped to this patient and record."""
    return (grant.status == ACTIVE and in_period(grant, now)
            and grant_scope_matches(grant, patient, data_ref))


def require_aware(now: datetime) -> None:
    """Consent periods are instants; a naive ``now`` cannot be compared with them."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
