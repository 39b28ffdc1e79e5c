"""The outcome of the consent decision."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from adapter.model.purpose import PurposeOfUse


class CareRefusal(StrEnum):
    """Why the consent decision refuses a record to a care purpose (TREAT and its kin), or what
    break-glass set aside that care alone would have been refused (clinical-safety review 6).
    Care may read the patient's Consents anyway (adapter.consent.decision, step 5), so the reason
    tells a care reader nothing new; it is never given for any other purpose (it would say that a
    record exists). What is said of each: adapter.consent.decision.CARE_REFUSALS."""

    CONSENT_DENIES = "consent-denies"          # a Consent in force denies the purpose (deny wins)
    CONSENT_WITHDRAWN = "consent-withdrawn"    # the Consent that permitted care was withdrawn
    CONSENT_PENDING = "consent-pending"        # stored without documented consent for care
    NO_CONSENT = "no-consent"                  # no Consent in force permits care (none, or its period ended)


class View(StrEnum):
    """How a permitted record is shown."""

    FULL = "full"                     # care: the record and the metadata-clean image
    DEIDENTIFIED = "deidentified"     # ANONYED: no identifiers, names, notes, dates beyond year
    PSEUDONYMISED = "pseudonymised"   # PSEUDED: subject replaced by a keyed pseudonym


@dataclass(frozen=True)
class Decision:
    """A read decision and what it rested on, for the answer and its AuditEvent.

    ``consent_ids`` are the ids of the Consents the answer rested on (the permitting ones of a
    permit, the denying ones of a deny; none when the policy alone decided, or care needed no
    consent), ``consents`` the same as literal references, versioned where the version is known
    (``Consent/c1/_history/2``). ``overridden`` are the Consents denying the purpose that
    break-glass set aside (it rests on the policy, not on them). ``policy`` is the URI of the
    organisation's policy the decision applied (mappings/policy.yaml ``uri``), None when no
    policy was consulted (no facts to decide on).
    """

    permitted: bool
    reason: str
    purpose: PurposeOfUse
    view: View = View.FULL
    break_glass: bool = False
    consent_ids: tuple[str, ...] = ()
    permitted_purposes: frozenset[str] = frozenset()
    obligations: tuple[str, ...] = field(default_factory=tuple)
    consents: tuple[str, ...] = ()
    overridden: tuple[str, ...] = ()
    policy: str | None = None
    #: Of a refusal for want of an active permit: the withdrawn Consents that would have given
    #: it, so its AuditEvent tells a withdrawal from a purpose never consented to (not said to
    #: the caller, who is told no more than of any refusal).
    withdrawn: tuple[str, ...] = ()
    #: The record was entered in error and this purpose may still see its resource (care,
    #: break-glass), so a refusal of its image may say why (a restricted purpose is told nothing).
    entered_in_error: bool = False
    #: The record's picture may identify its patient (a photo of the person, text in a document
    #: or a screen: adapter.mapping.tables.Tables.pixels_may_identify), which no view cleans: a
    #: restricted view of its image then claims no anonymisation (adapter.mapping.views,
    #: adapter.mapping.dicom_deid). True unless the decision knew otherwise (fail closed).
    pixels_may_identify: bool = True
    #: Of a refusal to a care purpose by the Consents (steps 4 to 6 of adapter.consent.decide):
    #: why, which a care reader is told (adapter.consent.decision.CARE_REFUSALS). None for every
    #: other refusal and every other purpose, which are told no more than "access denied".
    care_refusal: CareRefusal | None = None
    #: Of a break-glass permit: why care (TREAT) alone would have been refused the record, which
    #: the answer and its AuditEvent say break-glass overrode; None when care would read it too.
    overrode: CareRefusal | None = None
    #: Of a refusal: answer it as for an id that names nothing (404, the same OperationOutcome),
    #: not 403. True for a purpose whose view is restricted (TRAIN, HRESCH and kin): it names
    #: records by its view's own ids, and a 403 would tell it that the id it holds (from a
    #: Consent's provision.data, a guess) is a record's it may not see (adapter.consent.decision).
    hidden: bool = False
    #: Of a Consent released to a purpose other than care (adapter.consent.decision, step 7): the
    #: records (``Type/id``, stored) its provision.data names that the purpose is released; the
    #: view then shows the permission alone (adapter.mapping.views: no nested deny provision, no
    #: data naming another record). None: the Consent is shown whole (care, break-glass), or the
    #: record is no Consent.
    released_data: frozenset[str] | None = None
