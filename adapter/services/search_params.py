"""FHIR search parameters (https://hl7.org/fhir/R4/search.html) parsed into store criteria.

Unknown parameters are refused (400) rather than ignored, so a typo never widens a search. Every
value is split on ``,`` and ``|`` and unescaped by adapter.services.search_escaping
(search.html#escaping: ``\\,`` ``\\|`` ``\\$`` ``\\\\``), nowhere else."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from adapter.errors import InvalidQuery, NotSupported, TooCostly, UnsupportedResourceType
from adapter.mapping.capability import R5_NAMES, R5_ONLY, REVINCLUDES
from adapter.mapping.fhir_r4 import ENCOUNTER_IDENTIFIER, R5_PREFIX
from adapter.model.photo import IDENTIFIER_MAX_BYTES, Identifier, identifier_too_long
from adapter.services.search_escaping import search_values, token_parts, unescape
from adapter.store.port import DateCriterion, SearchCriteria, TokenCriterion
from adapter.text import NUL_IN_SEARCH, is_digits

DEFAULT_COUNT = 20
MAX_COUNT = 200
#: Search criteria (parameters that filter, each AND-ed with the others) one search may have.
#: Far more than any client asks; at about 1,000 SQLite refuses the statement ("Expression tree
#: is too large"), which surfaced as a 503 the client would retry in vain.
MAX_CRITERIA = 100
#: Comma-separated values (OR) of one token, identifier or target parameter, and patient
#: identifiers in all: each value (each type a bare target id stands for) is a term of a UNION
#: or an OR, and at 500 terms SQLite refuses the UNION ("too many terms in compound SELECT"), at
#: about 1,000 the OR. ``_id``, ``status`` and patient references are IN lists: not limited.
MAX_VALUES = 100
#: Read by the route, not a criterion: the answer's format and shape (_summary other than count,
#: _elements: adapter.mapping.subsetting).
_IGNORED = {"_format", "_pretty", "_elements"}
#: ``_total`` (https://hl7.org/fhir/R4/search.html#total): "none" skips the count, so a page costs
#: what it shows, not what matches; "estimate" is answered accurately.
TOTAL_MODES = ("none", "estimate", "accurate")
_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
#: Why ``ap`` (approximately, search.html#prefix: "implementation-defined", e.g. 10% of the gap
#: to now) is refused: a match that changes with the clock cannot be paged over a fixed snapshot.
_NO_APPROXIMATE = ("the date prefix 'ap' (approximately) is not supported: give the range wanted with ge and le, "
                   "or a value of the precision wanted (a day, a month)")
_DATE_RE = re.compile(  # ASCII: \d would take other scripts' digits too
    r"^(?P<y>\d{4})(-(?P<m>\d{2})(-(?P<d>\d{2})(T(?P<H>\d{2}):(?P<M>\d{2})(:(?P<S>\d{2})(\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$", re.ASCII)

# resource type -> supported search parameters -> kind
_PARAMS: dict[str, dict[str, str]] = {
    "Media": {"created": "date", "date": "date", "type": "token", "modality": "token", "category": "token",
              "status": "status", "identifier": "token", "kind": "token", "encounter": "encounter"},
    "DocumentReference": {"date": "date", "type": "token", "category": "token", "status": "status",
                          "identifier": "token", "modality": "token", "kind": "token",
                          # IHE MHD Find Document References [ITI-67]
                          "creation": "date", "security-label": "token", "format": "token", "setting": "token",
                          "facility": "token", "event": "token", "period": "date", "encounter": "encounter"},
    "Binary": {},
    "Consent": {"date": "date", "status": "status", "category": "token", "purpose": "token"},
    "Provenance": {"recorded": "date", "date": "date", "target": "reference"},
}
#: The indexed date each date parameter searches (DateCriterion.param): MHD's ``creation`` is the
#: attachment's creation, ``period`` the range of context.period (R5: DocumentReference.period);
#: every other date parameter is the resource's search date.
_DATE_PARAMS = {"creation": "creation", "period": "period"}
#: The parameters whose values an R5 reader sees otherwise than R4's (adapter.mapping.r5: an R4
#: Media is an R5 DocumentReference with status current, its media type a category, no type,
#: its issued as date; an R4 Consent's status proposed is R5 draft, its dateTime an R5 date):
#: searched, for an R5 reader, on the values of the R5 resource served (indexed with R5_PREFIX,
#: adapter.mapping.fhir_r4). The others have the same values in both.
_R5_VALUES = {"DocumentReference": frozenset({"status", "type", "category", "date"}),
              "Consent": frozenset({"status", "date"})}
#: Why IHE MHD ITI-67's author.given and author.family are refused.
_NO_AUTHOR_NAME = ("an author is kept as its identifier and display name (an MHD Document Source's contained "
                   "Practitioner is not stored), which has no given and family parts to match; search by "
                   "patient, type, category or date")
#: ITI-67 parameters the adapter cannot honour, and why: refused (400), since leaving one out would
#: widen the search (with ``Prefer: handling=lenient`` they are left out, and named).
_NOT_SUPPORTED = {
    "DocumentReference": {
        "author.given": _NO_AUTHOR_NAME,
        "author.family": _NO_AUTHOR_NAME,
        "related": "the adapter keeps no related references",
    },
}
#: The code system of each type's ``status`` (a token: ``status=system|code`` matches only in it).
STATUS_SYSTEMS = {
    "Media": "http://hl7.org/fhir/event-status",
    "DocumentReference": "http://hl7.org/fhir/document-reference-status",
    "Consent": "http://hl7.org/fhir/consent-state-codes",
}
#: A status no resource has: what a ``status`` criterion holds when nothing can match it.
_NO_STATUS = ""
#: The types a Provenance ``target`` may name: the record it is about, or the record's Binary,
#: which every Provenance of a photo or document names beside it (adapter.mapping.provenance);
#: never a Consent (who recorded or withdrew one is in its history and the audit trail).
TARGET_TYPES = ("Media", "DocumentReference", "Binary")
#: The targets ``_include=Provenance:target`` adds: the records. Not the Binary: that would put
#: the image itself, base64, in the searchset (up to MAX_INCLUDED of them on one page) beside the
#: record that already links to it (content.url); the CapabilityStatement says so.
INCLUDED_TARGET_TYPES = ("Media", "DocumentReference")
#: ``_include`` / ``_revinclude`` (search.html#include): the Provenance of the records found
#: (``Media?patient=...&_revinclude=Provenance:target``, on the types the CapabilityStatement
#: declares it for: REVINCLUDES) and the records a Provenance search found the Provenance of
#: (``Provenance?...&_include=Provenance:target``); each included resource gets its own
#: decision. Nothing else, and no ``:iterate``.
INCLUDES = {"Provenance": ("Provenance:target",)}
#: The paging parameter of the links a search answer gives (a server-defined parameter, as FHIR
#: allows for paging, search.html#paging): the sealed PageCursor of the page it links to.
CURSOR_PARAM = "_cursor"
#: The result parameters a search takes once: each says one thing of the whole answer.
_ONCE = frozenset({"_count", "_offset", "_sort", "_total", CURSOR_PARAM})
_COMMON = {"_id", "patient", "subject", "_count", "_offset", "_total", "_lastUpdated", "_sort", CURSOR_PARAM}
#: Parameters that shape the answer rather than filter it (not counted against MAX_CRITERIA).
_CONTROL = _IGNORED | {"_count", "_offset", "_total", "_sort", "_summary", "_include", "_revinclude", CURSOR_PARAM}
#: The chained forms IHE MHD's Find Document References [ITI-67] uses for the patient's identifier
#: (``patient.identifier=system|value``): the same search as the ``:identifier`` modifier, since
#: the adapter holds no Patient resources to chain through.
_CHAINS = {"patient.identifier": "patient:identifier", "subject.identifier": "subject:identifier"}
#: The references a chain goes through: a record's ``patient`` and ``subject`` are a Patient.
_CHAINED_THROUGH = {"patient": "Patient", "subject": "Patient"}
#: FHIR R4 search parameters of each type whose reference may be a Patient (its list of target
#: types names Patient), which the adapter does not take: the operator, author, actor, consentor
#: or agent may be the patient. Like ``patient`` and ``subject`` in any form the adapter cannot
#: read, each is refused even under lenient handling (:func:`_names_patient`), but for the chains
#: :data:`_NOT_SUPPORTED` names (ITI-67's ``author.given``, ``author.family``: a name, left out
#: leniently and said so).
_PATIENT_REFERENCES = {"Media": frozenset({"operator"}), "DocumentReference": frozenset({"author"}),
                       "Consent": frozenset({"actor", "consentor"}), "Provenance": frozenset({"agent"})}
#: Parameters whose criterion may name a patient in any of its parts, which the adapter cannot
#: read: a reverse chain (search.html#has), a filter (``_filter=patient eq …``).
_OPEN_CRITERIA = frozenset({"_has", "_filter"})
_NAME_PARTS = re.compile(r"[:.]")
#: ``_sort`` (search.html#sort): results come in meta.lastUpdated order (then id), oldest first,
#: the order of the store's index; newest first on request. Other keys are not supported.
SORTS = {"_lastUpdated": False, "-_lastUpdated": True}
#: ``_sort`` by a record's clinical date (review EHR F8: a documents tab's "newest first"), per
#: type: the parameter to the indexed date it sorts by (IndexRow.date, the one ``date`` and
#: ``created`` search; IndexRow.creation, MHD's ``creation``), oldest first, newest first with
#: ``-``; ties broken by id. An R5 reader's ``date`` is another value (a photo's issued, a
#: range), not indexed as a point: only ``creation`` there.
DATE_SORTS = {"Media": {"date": "date", "created": "date"},
              "DocumentReference": {"date": "date", "creation": "creation"}}
R5_DATE_SORTS = {"DocumentReference": {"creation": "creation"}}


@dataclass(frozen=True)
class PageCursor:
    """Where a page of a search lies, as its links hold it (search.html#paging leaves paging to
    the server; adapter.services.search_paging).

    ``snapshot``: the search's snapshot, fixed by its first page: per resource type searched, the
    latest meta.lastUpdated stored then (ISO, "" when none was), so that a record stored later,
    which the store stamps after every one before it, is not on the pages that follow, nor in
    their total (a Consent updated since keeps the place its version then had). ``view``: the
    purpose's view the keys belong to.
    ``after``/``before``: the sort key of the entry the page follows or precedes (keyset paging:
    a record added or withheld meanwhile shifts nothing); neither: the snapshot's first page."""

    snapshot: tuple[tuple[str, str], ...]
    view: str
    after: tuple[str, ...] | None = None
    before: tuple[str, ...] | None = None
    #: The search the cursor pages (a digest of its parameters, adapter.api.routes.fhir): a link
    #: followed with another filter or order is refused, not answered with a page of another search.
    query: str = ""


@dataclass(frozen=True)
class SearchRequest:
    criteria: SearchCriteria
    count: int
    offset: int
    total: bool = True  # count every match (Bundle.total); False for _total=none
    descending: bool = False  # _sort=-_lastUpdated: newest first
    sorted_by_last_updated: bool = False  # _sort was given (the full view's order is _lastUpdated's without it)
    sort_by_date: str | None = None  # _sort by a clinical date: the IndexRow date sorted by (DATE_SORTS)
    ignored: tuple[str, ...] = ()  # unknown parameters left out (Prefer: handling=lenient)
    include_targets: tuple[str, ...] = ()  # _include=Provenance:target[:Type]: the target types to include
    revinclude_provenance: bool = False  # _revinclude=Provenance:target
    cursor_token: str | None = None  # _cursor: a sealed PageCursor, opened by the route
    cursor: PageCursor | None = None  # the page a link names (None: the first page of a new snapshot)


def _date_range(raw: str) -> tuple[datetime, datetime | None]:
    """The instants a FHIR date, dateTime or instant covers (end None: past the last instant a
    datetime holds). InvalidQuery when it does not match the format or names no real time
    (month 13, 30 February, offset +25:00, year 0000)."""
    m = _DATE_RE.match(raw)
    if not m:
        raise InvalidQuery(f"not a FHIR date: {raw[:40]}")
    try:
        return _covered(m)
    except (ValueError, OverflowError) as exc:  # datetime refuses a date or offset that does not exist
        raise InvalidQuery(f"not a FHIR date: {raw[:40]} ({exc})") from exc


#: The first and last instants a datetime holds: FHIR's years run from 0001 to 9999
#: (datatypes.html#date), and an offset can move an instant of their first or last day past them.
_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)


def _utc(moment: datetime) -> datetime | None:
    """``moment`` in UTC; one an offset moves before year 1 is the first instant (nothing stored
    is earlier), one it moves past year 9999 None (later than anything stored)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return _FIRST if moment.year == 1 else None


def _plus(moment: datetime, step: timedelta) -> datetime | None:
    """The end of a range of ``step`` from ``moment`` in UTC; None past year 9999."""
    try:
        return _utc(moment + step)
    except OverflowError:
        return None


def _covered(m: re.Match[str]) -> tuple[datetime, datetime | None]:
    y = int(m["y"])
    if m["m"] is None:
        return datetime(y, 1, 1, tzinfo=UTC), datetime(y + 1, 1, 1, tzinfo=UTC) if y < 9999 else None
    mo = int(m["m"])
    if m["d"] is None:
        end = datetime(y + (mo == 12), 1 if mo == 12 else mo + 1, 1, tzinfo=UTC) if (y, mo) < (9999, 12) else None
        return datetime(y, mo, 1, tzinfo=UTC), end
    day = datetime(y, mo, int(m["d"]), tzinfo=UTC)
    if m["H"] is None:
        return day, _plus(day, timedelta(days=1))
    tz = UTC if m["tz"] in (None, "Z") else datetime.strptime(m["tz"].replace(":", ""), "%z").tzinfo
    start = datetime(y, mo, int(m["d"]), int(m["H"]), int(m["M"]), int(m["S"] or 0), tzinfo=tz)
    step = timedelta(seconds=1) if m["S"] is not None else timedelta(minutes=1)
    if m["f"]:
        # an instant to the millisecond (meta.lastUpdated) covers that millisecond: a sync asking
        # for gt<the last instant it saw> must get what was stored later in the same second
        digits = m["f"][:6]
        start = start.replace(microsecond=int(digits.ljust(6, "0")))
        step = timedelta(microseconds=10 ** (6 - len(digits)))
    # an instant past year 9999 in UTC starts after anything stored: at the last instant (only a
    # value stored at that very microsecond would be taken as at or after it)
    return _utc(start) or _LAST, _plus(start, step)


def parse_date_param(value: str) -> DateCriterion:
    """A date search value (search.html#date): its prefix and the range its precision covers.
    ``ap`` is read as a prefix and refused as not supported (NotSupported), not as a malformed date."""
    prefix = "eq"
    if value[:2] in _DATE_PREFIXES:
        prefix, value = value[:2], value[2:]
    if prefix == "ap":
        raise NotSupported(_NO_APPROXIMATE)
    start, end = _date_range(value)
    return DateCriterion(prefix=prefix, start=start, end=end)


def parse_token(value: str, param: str) -> TokenCriterion:
    """One token value, still escaped (search.html#token and #escaping): ``system|code``,
    ``|code`` (a code without a system), or ``code`` in any system."""
    system, code = token_parts(value, param)
    if system is not None and not code:
        raise NotSupported(f"{param}: a token with a system and no code is not supported")
    return TokenCriterion(param=param, code=code, system=system)  # "" = no system (FHIR |code)


def _r5_types(types: Sequence[str], r5: bool) -> tuple[str, ...]:
    """The types a reader names: R5 has no Media (a photo is the DocumentReference of its id)."""
    return tuple(t for t in types if t != "Media") if r5 else tuple(types)


def _stored_types(rtype: str, r5: bool) -> list[str]:
    """The stored types an R4 or R5 reader's type stands for."""
    return ["DocumentReference", "Media"] if r5 and rtype == "DocumentReference" else [rtype]


#: An absolute reference: a URI with a scheme (http(s) URL, urn:uuid, urn:oid).
_ABSOLUTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _unversioned(reference: str) -> str:
    """``reference`` without a version (``.../_history/n``): a reference search matches the
    resource, whichever version is named (search.html#reference)."""
    head, sep, version = reference.rpartition("/_history/")
    return head if sep and version and "/" not in version else reference


def _on_this_server(reference: str, base_url: str | None) -> str | None:
    """A reference value as this server's relative ``Type/id``, or None for another server's
    (search.html#reference: a relative reference is a resource on this server; an absolute URL
    means the resource at that URL, and one on this server's own base its relative form)."""
    reference = _unversioned(reference.strip())
    if not _ABSOLUTE.match(reference):
        return reference
    base = (base_url or "").rstrip("/")
    if base and reference.startswith(base + "/"):
        return reference[len(base) + 1:]
    return None


def _references(value: str, param: str, modifier: str, types: Sequence[str], r5: bool,
                base_url: str | None = None) -> list[TokenCriterion]:
    """A reference search (search.html#reference) on a literal reference as the index keeps it
    (``Type/id``, as the adapter writes them): ``Type/id``, this server's absolute URL of it, a
    version-specific one (``.../_history/n``, the version left out), ``param:Type=id``, or a
    bare id, which may be any of ``types``; another server's absolute URL matches only a
    reference stored as that URL. For an R5 reader a DocumentReference is also the Media of that
    id."""
    types = _r5_types(types, r5)
    if modifier and modifier not in types:
        raise NotSupported(f"modifier :{modifier[:20]} on {param} is not supported (one of {', '.join(types)})",
                           expression=param)
    out: list[TokenCriterion] = []
    for v in (unescape(v, param) for v in _or_values(value, param)):
        local = _on_this_server(v, base_url)
        if local is None:  # another server's: the URL as given
            out.append(TokenCriterion(param=param, code=_unversioned(v.strip())))
            continue
        parts = [p for p in local.split("/") if p]
        if not parts or len(parts) > 2:
            raise InvalidQuery(f"{param} takes a reference Type/id", expression=param)
        if len(parts) == 1:
            rid, candidates = parts[0], [modifier] if modifier else list(types)
        else:
            rtype, rid = parts[-2], parts[-1]
            if rtype not in types or (modifier and rtype != modifier):
                raise InvalidQuery(f"{param} names {', '.join(types)} resources", expression=param)
            candidates = [rtype]
        out += [TokenCriterion(param=param, code=f"{s}/{rid}") for t in candidates for s in _stored_types(t, r5)]
    return out


def _include(name: str, value: str, resource_type: str, r5: bool) -> tuple[str, ...] | None:
    """What an ``_include``/``_revinclude`` value asks for, if supported here (else None): for
    ``_include=Provenance:target[:Type]`` the stored target types to include."""
    if name == "_revinclude":
        return () if value in REVINCLUDES.get(resource_type, ()) else None
    allowed = INCLUDES.get(resource_type, ())
    source, _, rest = value.partition(":")
    param, _, target = rest.partition(":")
    types = _r5_types(INCLUDED_TARGET_TYPES, r5)
    if f"{source}:{param}" not in allowed or (target and target not in types):
        return None
    return tuple(s for t in ([target] if target else types) for s in _stored_types(t, r5))


def _encounters(value: str, modifier: str, base_url: str | None) -> list[TokenCriterion]:
    """The index tokens an ``encounter`` value matches (adapter.mapping.fhir_r4._encounter_tokens):
    a reference (search.html#reference, as ``patient``'s: ``Encounter/<id>``, the id alone, this
    server's absolute URL, ``encounter:Encounter=<id>``; another server's URL as stored) or, with
    ``:identifier``, the encounter's logical identifier as a token (``system|value``, a value in
    any system, ``|value`` one without a system)."""
    values = _or_values(value, "encounter")
    if modifier == "identifier":
        out = [parse_token(v, ENCOUNTER_IDENTIFIER) for v in values]
        for token in out:
            _check_identifier_length(token.system or "", token.code, "encounter:identifier")
        return out
    if modifier not in ("", "Encounter"):
        raise NotSupported(f"modifier :{modifier[:20]} on encounter is not supported (:identifier or :Encounter)",
                           expression="encounter")
    return [TokenCriterion(param="encounter", code=ref)
            for v in values for ref in _typed_refs(unescape(v, "encounter"), "encounter", "Encounter", base_url)]


def _patient_refs(value: str, param: str, base_url: str | None) -> list[str]:
    """The stored references a ``patient``/``subject`` reference value matches (search.html#reference):
    a relative one (``Patient/<id>``, or the id alone) means a Patient on this server, stored as
    ``Patient/<id>`` or as this server's absolute URL of it; another server's absolute URL
    (``http://ehr.example.org/fhir/Patient/p9``) only a reference stored as that URL; a
    version-specific one, the resource whichever version."""
    return [ref for v in search_values(value, param) for ref in _typed_refs(unescape(v, param), param, "Patient", base_url)]


def _typed_refs(value: str, param: str, rtype: str, base_url: str | None) -> list[str]:
    """The stored literal references one value of a reference parameter to ``rtype`` matches:
    ``rtype/<id>`` and this server's absolute URL of it for a relative one, the URL as given for
    another server's."""
    base = (base_url or "").rstrip("/")
    local = _on_this_server(value, base_url)
    if local is None:
        return [_unversioned(value.strip())]
    named, sep, rid = local.rpartition("/")
    if (sep and named != rtype) or not rid:
        raise InvalidQuery(f"{param} takes a {rtype} reference: {rtype}/<id>, its id, or an absolute URL",
                           expression=param)
    return [f"{rtype}/{rid}"] + ([f"{base}/{rtype}/{rid}"] if base else [])


def _patients_in_every(groups: Sequence[tuple[list[Identifier], list[str]]]) -> tuple[list[Identifier], list[str]]:
    """The patient identifiers each of ``groups`` (repeats of ``patient:identifier``, each an OR
    of identifiers and values in any system) names: repeated parameters AND (search.html#combining),
    and a record has one patient, so it matches the repeats only by an identifier they all name.
    A value in any system and an identifier of that value meet in the identifier."""
    if not groups:
        return [], []
    identified, bare = list(groups[0][0]), list(groups[0][1])
    for more_identified, more_bare in groups[1:]:
        pairs = {(i.system, i.value) for i in more_identified}
        kept = [i for i in identified if (i.system, i.value) in pairs or i.value in more_bare]
        kept += [i for i in more_identified if i.value in bare and i not in kept]
        identified, bare = kept, [v for v in bare if v in more_bare]
    return list(dict.fromkeys(identified)), bare


def _references_in_every(groups: Sequence[list[str]]) -> list[str]:
    """The stored references each of ``groups`` (repeats of ``patient``, each an OR) matches:
    repeated parameters AND, and a record has one patient reference."""
    if not groups:
        return []
    common = list(dict.fromkeys(groups[0]))
    for more in groups[1:]:
        common = [r for r in common if r in more]
    return common


def _statuses(value: str, system: str | None) -> list[str]:
    """The codes a ``status`` value names (comma-separated, OR; ``code``, ``system|code`` or
    ``|code``): a code of another system matches nothing (search.html#token)."""
    out = []
    for v in search_values(value, "status"):
        named_system, code = token_parts(v, "status")
        if named_system is None or (named_system in ("", system) and code):
            out.append(code)
    return out


def _or_values(value: str, param: str) -> list[str]:
    """The comma-separated values of a parameter (an OR: a token, identifier, reference or
    date), each still escaped (adapter.services.search_escaping: an escaped comma separates
    nothing); TooCostly past MAX_VALUES."""
    values = search_values(value, param)
    if len(values) > MAX_VALUES:
        raise TooCostly(f"{param[:40]} takes at most {MAX_VALUES} comma-separated values ({len(values)} given); "
                        "split the search", expression=param[:40])
    return values


def _identifiers(value: str, param: str) -> tuple[list[Identifier], list[str]]:
    """The patient identifiers a ``:identifier`` value names (search.html#token, which the
    modifier takes): ``system|value``, and a bare ``value``, which matches in any system (an EHR
    with one MRN system sends the MRN alone). ``|value`` (no system) matches nothing a patient
    identifier can be (the adapter keeps them with their system) and ``system|`` names no
    patient: both refused."""
    out: list[Identifier] = []
    bare: list[str] = []
    for v in _or_values(value, f"{param}:identifier"):
        system, code = token_parts(v, f"{param}:identifier")
        if system is None and code:
            _check_identifier_length("", code, f"{param}:identifier")
            bare.append(code)
            continue
        if not system or not code:
            raise InvalidQuery(f"{param}:identifier takes system|value, or a value in any system", expression=param)
        _check_identifier_length(system, code, f"{param}:identifier")
        out.append(Identifier(system=system, value=code))
    return out, bare


def _check_identifier_length(system: str, value: str, param: str) -> None:
    """An identifier a search names is within the bound of every identifier the adapter takes
    (adapter.model.photo.IDENTIFIER_MAX_BYTES): a longer one names nothing the adapter could
    hold, so the query is not understood (400), on every store alike."""
    if identifier_too_long(system) or identifier_too_long(value):
        raise InvalidQuery(f"{param} names an identifier longer than one may be ({IDENTIFIER_MAX_BYTES} bytes in "
                           "UTF-8 for its system and for its value)", expression=param)


def _untyped_chain(name: str) -> str:
    """``name`` with the chain's type left out: ``subject:Patient.identifier`` is
    ``subject.identifier`` (search.html#chaining: the type modifier names which of the types a
    reference may point to the chain goes through; here a Patient, the only one a record's
    ``patient`` and ``subject`` are). A chain through another type names nothing the adapter
    holds: refused (400), not left out, which would widen the search to every patient."""
    base, colon, rest = name.partition(":")
    target, dot, chained = rest.partition(".")
    through = _CHAINED_THROUGH.get(base)
    if not (colon and dot and through):
        return name
    if target != through:
        raise NotSupported(f"{name[:60]}: a {base} here is a {through}, not a {target[:40]}; chain as "
                           f"{base}:{through}.identifier or {base}.identifier", expression=name[:60])
    return f"{base}.{chained}"


def _names_patient(resource_type: str, name: str) -> bool:
    """Might the parameter ``name`` restrict the search to a patient? ``patient`` or ``subject``
    in any case, chain or modifier, mistyped or not (``patient:Patient.identifer``,
    ``patient.identifier:exact``, ``Patient.identifier``, ``_has:Provenance:target:patient``), a
    reference parameter a Patient may be the value of (:data:`_PATIENT_REFERENCES`), a reverse
    chain or a filter. Such a parameter the adapter cannot read is refused even under
    ``Prefer: handling=lenient``: left out, it would widen the search to every patient's records,
    more than the search without lenient handling answers (review "merges" finding 6)."""
    parts = [part.lower() for part in _NAME_PARTS.split(name)]
    if name in _NOT_SUPPORTED.get(resource_type, {}):
        return False
    return (not {"patient", "subject"}.isdisjoint(parts) or parts[0] in _OPEN_CRITERIA
            or parts[0] in _PATIENT_REFERENCES.get(resource_type, frozenset()))


def parse_search(resource_type: str, params: Sequence[tuple[str, str]], *, lenient: bool = False,
                 r5: bool = False, base_url: str | None = None) -> SearchRequest:
    """Turn query parameters into criteria. Repeated parameters AND; comma-separated values OR.

    An unknown parameter is refused (422): leaving it out could widen the search past what the
    client meant (a misspelt ``patient`` would match every patient). ``lenient``
    (``Prefer: handling=lenient``, search.html#errors): the client accepts that, and unknown
    parameters are left out and named in ``ignored``, but for one that may name a patient
    (:func:`_names_patient`), refused as without it. ``r5``: the reader speaks R5, where a photo
    is a DocumentReference (a reference to one also finds the Media of its id). ``base_url``:
    this server's FHIR base, which an absolute reference on it names a resource of this server
    by (search.html#reference)."""
    allowed = _PARAMS.get(resource_type)
    if allowed is None:
        raise UnsupportedResourceType(f"search on {resource_type} is not supported")
    if not r5:  # an element only R5 has (R4 DocumentReference has no modality): not declared in R4
        allowed = {name: kind for name, kind in allowed.items() if name not in R5_ONLY.get(resource_type, ())}
    r5_values = _R5_VALUES.get(resource_type, frozenset()) if r5 else frozenset()
    ids: list[str] | None = None
    patient_groups: list[tuple[list[Identifier], list[str]]] = []  # each a repeat of patient:identifier
    ref_groups: list[list[str]] = []  # each a repeat of patient (a reference)
    dates: list[tuple[DateCriterion, ...]] = []
    last_updated: list[tuple[DateCriterion, ...]] = []
    status: list[str] | None = None
    tokens: list[tuple[TokenCriterion, ...]] = []
    count, offset, total, descending = DEFAULT_COUNT, 0, True, False
    sorted_by_last_updated = False
    sort_by_date: str | None = None
    date_sorts = (R5_DATE_SORTS if r5 else DATE_SORTS).get(resource_type, {})
    summary_count = False
    ignored: list[str] = []
    include_targets: list[str] = []
    revinclude = False
    cursor_token: str | None = None
    filters = [name for name, _ in params if name.partition(":")[0] not in _CONTROL]
    if len(filters) > MAX_CRITERIA:
        raise TooCostly(f"a search takes at most {MAX_CRITERIA} criteria ({len(filters)} given); "
                        "combine values of one parameter with commas (OR)")
    r5_names = {r5_name: name for name, r5_name in R5_NAMES.get(resource_type, {}).items()} if r5 else {}
    given_once: set[str] = set()
    for name, value in params:
        if "\x00" in name or "\x00" in value:
            raise InvalidQuery(NUL_IN_SEARCH)
        chain = _untyped_chain(name)
        base, _, modifier = _CHAINS.get(chain, chain).partition(":")
        base = r5_names.get(base, base)  # format-code, event-code: R5's names of format, event
        if base in _IGNORED:
            continue
        if base in _ONCE:  # which of two would a client mean? (the last was taken, in silence)
            if base in given_once:
                raise InvalidQuery(f"{base} is given more than once: give it once", expression=base)
            given_once.add(base)
        if base == "_summary":
            summary_count = summary_count or value == "count"
            continue
        if base in ("_include", "_revinclude"):
            wanted = _include(base, value, resource_type, r5) if not modifier else None
            if wanted is None and lenient:
                ignored.append(f"{name[:40]}={value[:60]}")
            elif wanted is None:
                supported = (REVINCLUDES if base == "_revinclude" else INCLUDES).get(resource_type, ())
                raise NotSupported(f"{name[:40]}={value[:60]} is not supported on {resource_type}"
                                   + (f" (supported: {', '.join(supported)})" if supported else ""),
                                   expression=name[:40])
            elif base == "_revinclude":
                revinclude = True
            else:
                include_targets += [t for t in wanted if t not in include_targets]
            continue
        if base not in _COMMON and base not in allowed and lenient and not _names_patient(resource_type, name):
            ignored.append(name[:40])
            continue
        why = _NOT_SUPPORTED.get(resource_type, {}).get(base)
        if why is not None:
            raise NotSupported(f"search parameter '{base}' is not supported: {why}", expression=base)
        if base not in _COMMON and base not in allowed:
            raise InvalidQuery(f"unknown or unsupported search parameter '{name[:40]}' for {resource_type}",
                               expression=name[:40])
        if base == "_total":
            if value not in TOTAL_MODES:
                raise InvalidQuery(f"_total takes {', '.join(TOTAL_MODES)}", expression="_total")
            total = value != "none"
        elif base == "_count":
            count = page_param(name, value, MAX_COUNT)
        elif base == "_offset":
            offset = page_param(name, value, 10**9)
        elif base == CURSOR_PARAM:
            cursor_token = value
        elif base == "_sort":
            if value in SORTS:
                descending = SORTS[value]
                sorted_by_last_updated = True
            elif value.removeprefix("-") in date_sorts:
                descending, sort_by_date = value.startswith("-"), date_sorts[value.removeprefix("-")]
            else:
                keys = ", ".join(f"{k} or -{k}" for k in ("_lastUpdated", *date_sorts))
                raise NotSupported(f"_sort={value[:40]} is not supported on {resource_type}: results are sorted "
                                   f"by {keys} (- newest first), one key", expression="_sort")
        elif base == "_lastUpdated":
            if modifier:
                raise NotSupported(f"modifier :{modifier[:20]} on _lastUpdated is not supported")
            last_updated.append(tuple(parse_date_param(unescape(v, base)) for v in _or_values(value, base)))
        elif base == "_id":
            if modifier:
                raise NotSupported(f"modifier :{modifier[:20]} on _id is not supported", expression=name[:40])
            named = [unescape(v, base) for v in search_values(value, base) if v]
            ids = named if ids is None else [v for v in ids if v in named]  # repeated: AND
        elif base in ("patient", "subject"):
            if modifier == "identifier":
                patient_groups.append(_identifiers(value, base))
            elif modifier in ("", "Patient"):
                ref_groups.append(_patient_refs(value, base, base_url))
            else:
                raise NotSupported(f"modifier :{modifier[:20]} on {base} is not supported")
        elif allowed[base] == "encounter":
            tokens.append(tuple(_encounters(value, modifier, base_url)))
        elif allowed[base] == "reference":
            tokens.append(tuple(_references(value, base, modifier, TARGET_TYPES, r5, base_url)))
        elif allowed[base] == "date":
            if modifier:
                raise NotSupported(f"modifier :{modifier[:20]} on {base} is not supported")
            indexed = R5_PREFIX + base if base in r5_values else _DATE_PARAMS.get(base, "date")
            dates.append(tuple(dataclasses.replace(parse_date_param(unescape(v, base)), param=indexed)
                               for v in _or_values(value, base)))
        elif allowed[base] == "status":
            if modifier:
                raise NotSupported(f"modifier :{modifier[:20]} on {base} is not supported", expression=name[:40])
            codes = _statuses(value, STATUS_SYSTEMS.get(resource_type))
            if base in r5_values:  # a token of the R5 resource's status; repeated: AND
                tokens.append(tuple(TokenCriterion(param=R5_PREFIX + base, code=c) for c in codes or [_NO_STATUS]))
                continue
            status = codes if status is None else [v for v in status if v in codes]  # repeated: AND
            status = status or [_NO_STATUS]
        else:
            if modifier:
                raise NotSupported(f"modifier :{modifier[:20]} on {base} is not supported")
            param = R5_PREFIX + base if base in r5_values else base
            alternatives = tuple(parse_token(v, param) for v in _or_values(value, base))
            if base == "identifier":
                for token in alternatives:
                    _check_identifier_length(token.system or "", token.code, base)
            tokens.append(alternatives)
    identifiers_given = sum(len(identified) + len(bare) for identified, bare in patient_groups)
    if identifiers_given > MAX_VALUES:
        raise TooCostly(f"a search names at most {MAX_VALUES} patient identifiers ({identifiers_given} given); "
                        "split the search", expression="patient")
    patients, patient_values = _patients_in_every(patient_groups)
    refs = _references_in_every(ref_groups)
    if (patient_groups and not patients and not patient_values) or (ref_groups and not refs):
        # repeats naming no patient in common: a record has one patient, so none matches (the
        # first repeat is kept, so a view refusing a search by patient still refuses this one)
        ids = []
        patients, patient_values = patient_groups[0] if patient_groups else ([], [])
        refs = ref_groups[0] if ref_groups else []
    if cursor_token is not None and offset:
        raise InvalidQuery(f"{CURSOR_PARAM} names the page: _offset cannot be given with it", expression="_offset")
    if summary_count:  # _summary=count: the total only, no entries
        count, total = 0, True
    criteria = SearchCriteria(
        ids=tuple(ids) if ids is not None else None,
        patient=tuple(patients) if patients else None,
        patient_value=tuple(dict.fromkeys(patient_values)) if patient_values else None,
        patient_reference=tuple(refs) if refs else None,
        dates=tuple(dates), status=tuple(status) if status else None, tokens=tuple(tokens),
        last_updated=tuple(last_updated))
    return SearchRequest(criteria=criteria, count=count, offset=offset, total=total, descending=descending,
                         sorted_by_last_updated=sorted_by_last_updated, sort_by_date=sort_by_date,
                         ignored=tuple(dict.fromkeys(ignored)), include_targets=tuple(include_targets),
                         revinclude_provenance=revinclude, cursor_token=cursor_token)


def page_param(name: str, value: str, high: int) -> int:
    """A paging parameter (``_count``, ``_offset``): a whole number, at most ``high``; anything
    else, a negative number included, is refused (422) rather than read as something else."""
    if not is_digits(value):
        raise InvalidQuery(f"{name} takes a whole number", expression=name)
    return min(int(value[:12]), high)
