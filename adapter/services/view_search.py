"""What a reader may search on in a restricted view, and in which terms.

A restricted view (adapter.mapping.views) hides the subject (DEIDENTIFIED: TRAIN and its kin) or
replaces it by a keyed pseudonym (PSEUDONYMISED: HRESCH and its kin), shows no record identifier
(not even the SHA-256 of the stored bytes: the uploader's receipt carries it), and cuts dates to
the year when de-identifying. Search parameters on what the view hides would undo it: "the
de-identified photos of MRN-0001" links every copy returned to the patient, and "created on
2024-03-05?" asked day by day reads the dates that were cut. So a search is taken in the view's
own terms:

- **DEIDENTIFIED**: ``patient`` and ``subject`` (by reference or identifier), ``identifier`` and
  ``encounter`` are not supported (400 not-supported, saying why); dates to the year only.
- **PSEUDONYMISED**: ``patient``/``subject`` by identifier in the pseudonym system only (the
  pseudonym the view shows; a value without a system only if it has a pseudonym's form),
  looked up in the pseudonym index; ``identifier`` and ``encounter`` not supported (the view
  shows neither); ``_lastUpdated`` and ``date`` (a Media's is its issued when no time taken is
  known, a DocumentReference's and a Provenance's are the adapter's instants, an R5 reader's a
  photo's issued) by whole UTC days
  only, as the view shows the adapter's instants to the day (research review finding 3); the
  other dates as in the full view. A history's ``_since`` likewise: not at all when
  de-identifying, a UTC midnight when pseudonymising (:func:`since_refusal`). Sorted by
  ``_lastUpdated`` or a date, the pseudonymised view orders by the UTC day (:func:`sort_key_in_view`).
- **FULL**: as given.

Ids are the view's own too (adapter.mapping.released_ids): in a restricted view ``_id`` and a
reference parameter (Provenance ``target``) take the ids the view shows, and a stored id (care's)
finds nothing there. Nor does the order of the answer tell what the view hides: a restricted
view's results come in the order of their released ids (keyed, so it means nothing), not in the
order they were stored; ``_sort`` by ``_lastUpdated`` is refused in the de-identified view, which
shows no lastUpdated (the pseudonymised view shows it to the day, and may sort by it), and so is ``_sort`` by
a clinical date, which it shows to the year only (the pseudonymised view sorts by it, its own ids
breaking ties).

A refusal is the same whatever the store holds, so it tells the reader nothing. DICOM QIDO-RS
applies the same rule on its own keys (adapter.services.access: PatientID is matched in the
released space).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from adapter.errors import NotSupported
from adapter.mapping.fhir_r4 import ENCOUNTER_IDENTIFIER, R5_PREFIX
from adapter.mapping.pseudonym import is_pseudonym
from adapter.mapping.released_ids import IdSpace
from adapter.model.decision import View
from adapter.model.photo import Identifier
from adapter.store.port import DateCriterion, SearchCriteria, TokenCriterion

#: The index tokens of a record's encounter (adapter.mapping.fhir_r4), which no restricted view shows.
ENCOUNTER_PARAMS = frozenset({"encounter", ENCOUNTER_IDENTIFIER})
#: The search parameters whose values are references (``Type/id``) to the adapter's resources.
REFERENCE_PARAMS = frozenset({"target"})


def criteria_in_view(criteria: SearchCriteria, view: View, *, pseudonym_system: str,
                     resolve: Callable[[Sequence[str]], Sequence[Identifier]],
                     sorted_by_last_updated: bool = False, sorted_by_date: bool = False) -> SearchCriteria | None:
    """``criteria`` in stored terms for a reader in ``view``; None when nothing can match (no
    pseudonym given is known). ``resolve``: the patients of the given pseudonyms.
    ``sorted_by_last_updated``: the search has ``_sort`` on ``_lastUpdated``; ``sorted_by_date``:
    on a clinical date (search_params.DATE_SORTS). Ids stay the
    view's: :func:`criteria_in_id_space` takes them to stored ones, per resource type.

    Raises:
        NotSupported: a parameter on what the view hides (module docstring).
    """
    if view is View.FULL:
        return criteria
    deid = view is View.DEIDENTIFIED
    name = "de-identified" if deid else "pseudonymised"
    if deid and sorted_by_last_updated:
        # in lastUpdated order the answer would tell in which order (and so, beside the years,
        # about when) the records were stored, which the view hides
        raise NotSupported("in the de-identified view records show no lastUpdated: _sort by it is not supported")
    if deid and sorted_by_date:
        # in the order of the day (and time) taken, the answer would tell what the years shown hide
        raise NotSupported("in the de-identified view dates are shown to the year only: _sort by a date is not "
                           "supported")
    if criteria.patient_reference:
        raise NotSupported(f"in the {name} view records cannot be searched by a patient reference"
                           + ("" if deid else f": use patient:identifier={pseudonym_system}|<pseudonym>"))
    for group in criteria.tokens:
        for token in group:
            if token.param == "identifier":  # the views show none (adapter.mapping.views)
                raise NotSupported(f"in the {name} view records cannot be searched by identifier")
            if token.param in ENCOUNTER_PARAMS:  # nor an encounter: it would link the copies to the admission
                raise NotSupported(f"in the {name} view records cannot be searched by encounter: the view "
                                   "shows none")
    if deid:
        if criteria.patient or criteria.patient_value:
            raise NotSupported("in the de-identified view records cannot be searched by patient: "
                               "the view has no subject")
        if criteria.last_updated:
            raise NotSupported("in the de-identified view records show no lastUpdated: search by the "
                               "year of their date instead (e.g. date=2024)")
        for date in (d for group in criteria.dates for d in group):
            if not _whole_year(date):
                raise NotSupported("in the de-identified view dates are shown to the year only: "
                                   "search by year (e.g. date=2024 or date=ge2023)")
        return criteria
    if any(not _whole_days(d) for d in _instant_criteria(criteria)):
        raise NotSupported("in the pseudonymised view the times the adapter stored records are shown to the day: "
                           "search _lastUpdated and date by whole days (e.g. date=2024-03-05 or _lastUpdated=ge2024-03-05)")
    if not criteria.patient and not criteria.patient_value:
        return criteria
    if any(p.system != pseudonym_system for p in criteria.patient or ()) \
            or not all(is_pseudonym(v) for v in criteria.patient_value or ()):
        # a value in any system that is no pseudonym (an MRN) is the real identity's, as
        # system|value is: refused alike, by its form alone (review EHR F8)
        raise NotSupported(f"in the pseudonymised view the subject is a pseudonym: search by "
                           f"patient:identifier={pseudonym_system}|<pseudonym>")
    # a value without a system is one in any system the view shows: a pseudonym
    patients = tuple(resolve([p.value for p in criteria.patient or ()] + list(criteria.patient_value or ())))
    if not patients:
        return None
    return dataclasses.replace(criteria, patient=patients, patient_value=None)


def criteria_in_id_space(criteria: SearchCriteria, resource_type: str, ids: IdSpace) -> SearchCriteria | None:
    """``criteria`` of a search of ``resource_type`` with the ids of the reader's view (``_id``,
    and the ``Type/id`` of a reference parameter) as stored; None when nothing can match (no id
    given is one the view shows). In care's full view, as given."""
    if not ids.released_ids:
        return criteria
    found_ids = criteria.ids
    if found_ids is not None:
        found_ids = tuple(stored for id in found_ids if (stored := ids.stored(resource_type, id)) is not None)
        if not found_ids:
            return None
    tokens: list[tuple[TokenCriterion, ...]] = []
    for group in criteria.tokens:
        kept: list[TokenCriterion] = []
        for token in group:
            if token.param not in REFERENCE_PARAMS:
                kept.append(token)
            elif (stored := ids.stored_reference(token.code)) is not None:
                kept.append(dataclasses.replace(token, code=stored))
        if not kept:  # an OR of references none of which is one the view shows
            return None
        tokens.append(tuple(kept))
    return dataclasses.replace(criteria, ids=found_ids, tokens=tuple(tokens))


def since_refusal(since: datetime, view: View) -> str | None:
    """Why a history's ``_since`` (http.html#history) is not taken in ``view``, or None: asked
    instant by instant, it reads back when each version was stored, as ``_lastUpdated`` would
    (merges review finding 3: a binary search found the millisecond). The de-identified view shows
    no lastUpdated: not at all; the pseudonymised one shows it to the day: a UTC midnight only."""
    if view is View.DEIDENTIFIED:
        return "in the de-identified view versions show no lastUpdated: _since is not supported"
    if view is View.PSEUDONYMISED and not _midnight(since):
        return ("in the pseudonymised view the times the adapter stored records are shown to the day: "
                "_since takes whole days (e.g. _since=2024-03-05)")
    return None


def sort_key_in_view(key: str, view: View) -> str:
    """An instant's sort key (adapter.services.search_paging.instant_key: UTC, ISO) as ``view``
    may order by it: the pseudonymised view, which shows the adapter's instants to the day (and a
    record's date is one when no time taken is known), orders by the UTC day only, ties broken by
    its keyed ids; in the order they were stored, the records of a day matched against an upload
    log would give each its pseudonym (merges review finding 3). Care's view: as it is."""
    return key[:10] if view is View.PSEUDONYMISED else key


#: The indexed dates that may be the adapter's instants: ``date`` (a Media's issued when no time
#: taken is known, a DocumentReference's and a Provenance's own) and an R5 reader's ``date`` (a
#: photo's issued, adapter.mapping.fhir_r4).
_INSTANT_DATES = frozenset({"date", R5_PREFIX + "date"})


def _instant_criteria(criteria: SearchCriteria) -> list[DateCriterion]:
    """The criteria on values that may be the adapter's instants: ``_lastUpdated`` and ``date``."""
    return [d for group in criteria.last_updated for d in group] + \
        [d for group in criteria.dates for d in group if d.param in _INSTANT_DATES]


def _whole_days(date: DateCriterion) -> bool:
    """Whether ``date`` runs from a UTC midnight to a UTC midnight (or past the end of time)."""
    return _midnight(date.start) and (date.end is None or _midnight(date.end))


def _midnight(moment: datetime) -> bool:
    utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment
    return (utc.hour, utc.minute, utc.second, utc.microsecond) == (0, 0, 0, 0)


def _whole_year(date: DateCriterion) -> bool:
    start, end = date.start, date.end
    next_year = start.replace(year=start.year + 1) if start.year < 9999 else None  # None: year 9999 has no end
    return (start.month, start.day, start.hour, start.minute, start.second, start.microsecond) == (1, 1, 0, 0, 0, 0) \
        and end == next_year
