"""SearchCriteria to one SELECT over the ``resources`` index columns (no JSON is read).

Date prefixes follow FHIR search (https://hl7.org/fhir/R4/search.html#prefix, #date): a stored
date is the implicit range of its precision (a date-only value its day), compared with the search
value's range [start, end) (:func:`_compare_ranges`); ``ap`` is not supported.
Token parameters follow https://hl7.org/fhir/R4/search.html#token: ``system`` None matches any
system, an empty ``system`` matches only codes without one (``|code``).

Plans. Results come in (last_updated, id) order, which ix_resources_type_last_updated gives
without sorting; SQLite, without statistics, takes that index whenever it can, and then walks
every resource of the type, testing each, to find the few an ``_id``, a patient reference, several
patients or an identifier select (the whole store for a patient's ten photos). When a criterion
selects few rows (:func:`selective`), the statement orders by :class:`SortKey` terms, which
SQLite cannot read from an index (``ORDER BY +last_updated``): it then looks the rows up through
the criterion's index and sorts them. Elsewhere (a type's page of everything, a category, a
status), the order index stays the right plan. Other databases get the plain columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from sqlalchemy import ColumnElement, Select, and_, false, or_, select, true, union
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from adapter.errors import InvalidInput, NotSupported
from adapter.store.dates import to_utc
from adapter.store.port import DateCriterion, SearchCriteria, TokenCriterion
from adapter.store.schema import date_ranges, resources, tokens

_r = resources.c

#: The columns an IndexRow is built from.
INDEX_COLUMNS = (_r.resource_type, _r.id, _r.last_updated, _r.governed_by, _r.fact_patient_system,
                 _r.fact_patient_value, _r.kind, _r.source, _r.consent_pending, _r.consent_ids,
                 _r.entered_in_error, _r.date, _r.creation)


def _any(conditions: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    """OR of ``conditions``; false when there are none (an empty OR matches nothing)."""
    return or_(false(), *conditions)


def _before_end(col: Any, c: DateCriterion) -> ColumnElement[bool]:
    """Before the end of the criterion's range; a range without end (year 9999) has every date
    before it."""
    return and_(col.is_not(None)) if c.end is None else col < to_utc(c.end)


def _from_end(col: Any, c: DateCriterion) -> ColumnElement[bool]:
    """At or after the end of the criterion's range; nothing is after a range without end."""
    return false() if c.end is None else col >= to_utc(c.end)


#: An instant (``last_updated``: meta.lastUpdated, to the millisecond) against the search value's
#: range: the comparisons of :func:`_compare_ranges` for a range whose first and last instants are
#: one. For a search value to the millisecond or coarser they are those of the instant's millisecond.
_DATE_PREFIXES: dict[str, Callable[[Any, DateCriterion], ColumnElement[bool]]] = {
    "eq": lambda col, c: and_(col >= to_utc(c.start), _before_end(col, c)),
    "ne": lambda col, c: or_(col < to_utc(c.start), _from_end(col, c)),
    "gt": _from_end,
    "sa": _from_end,
    "ge": lambda col, c: col >= to_utc(c.start),
    "lt": lambda col, c: col < to_utc(c.start),
    "eb": lambda col, c: col < to_utc(c.start),
    "le": _before_end,
}


#: The indexed dates a DateCriterion.param names that are columns of ``resources``: the first and
#: last instants of the date's implicit range; any other param is a range of ``date_ranges``.
_DATE_COLUMNS = {"date": (_r.date, _r.date_last), "creation": (_r.creation, _r.creation_last)}


def _refuse_prefix(prefix: str) -> NoReturn:
    if prefix == "ap":
        raise NotSupported("the date prefix 'ap' is not supported", expression="date")
    raise InvalidInput(f"unknown date prefix {prefix!r}", expression="date")


def date_condition(criterion: DateCriterion, column: Any = _r.last_updated) -> ColumnElement[bool]:
    """The condition for one date criterion on an instant ``column`` (``last_updated`` for
    _lastUpdated); resources without one never match."""
    build = _DATE_PREFIXES.get(criterion.prefix)
    if build is None:
        _refuse_prefix(criterion.prefix)
    return build(column, criterion)


def _compare_ranges(low: Any, high: Any, c: DateCriterion, *, open_ends: bool) -> ColumnElement[bool]:
    """A stored range [low, high] (its first and last instants) against the search value's range
    [start, end), as search.html#date compares a search value with a target range: eq, the
    value's range contains the target's; ne, it does not; gt/ge, the range above the value (from
    its start, for ge) overlaps the target; lt/le, the range below it (to its end, for le) does;
    sa, the target starts after the value; eb, it ends before it. ``open_ends``: a NULL end is
    open (a Period without end is still going on); else a row without the date never matches."""
    low_open, high_open = (low.is_(None), high.is_(None)) if open_ends else (false(), false())
    start = to_utc(c.start)
    end = to_utc(c.end) if c.end is not None else None
    within = and_(~low_open, low >= start, ~high_open, true() if end is None else high < end)
    conditions: dict[str, ColumnElement[bool]] = {
        "eq": within,
        "ne": ~within,
        "gt": or_(high_open, false() if end is None else high >= end),
        "ge": or_(high_open, high >= start),
        "lt": or_(low_open, low < start),
        "le": or_(low_open, true() if end is None else low < end),
        "sa": and_(~low_open, false() if end is None else low >= end),
        "eb": and_(~high_open, high < start),
    }
    condition = conditions.get(c.prefix)
    if condition is None:
        _refuse_prefix(c.prefix)
    return condition if open_ends else and_(low.is_not(None), high.is_not(None), condition)


def _range_match(c: DateCriterion) -> ColumnElement[bool]:
    """A ``date_ranges`` row of the criterion's param matching it (:func:`_compare_ranges`; an
    open end is a Period's)."""
    d = date_ranges.c
    return and_(d.param == c.param, _compare_ranges(d.low, d.high, c, open_ends=True))


def range_condition(resource_type: str, criterion: DateCriterion) -> ColumnElement[bool]:
    """The resource has a date range (DateCriterion.param) matching ``criterion``; as
    :func:`token_condition`, an uncorrelated ``id IN (SELECT …)``."""
    d = date_ranges.c
    return _r.id.in_(select(d.id).where(d.resource_type == resource_type, _range_match(criterion)))


def _date_criterion(resource_type: str, criterion: DateCriterion) -> ColumnElement[bool]:
    columns = _DATE_COLUMNS.get(criterion.param)
    if columns is None:
        return range_condition(resource_type, criterion)
    return _compare_ranges(*columns, criterion, open_ends=False)


def _token_match(token: TokenCriterion) -> ColumnElement[bool]:
    t = tokens.c
    condition = and_(t.param == token.param, t.code == token.code)
    if token.system == "":
        return and_(condition, t.system.is_(None))
    if token.system is not None:
        return and_(condition, t.system == token.system)
    return condition


def token_condition(resource_type: str, alternatives: tuple[TokenCriterion, ...]) -> ColumnElement[bool]:
    """The resource has a token matching any of ``alternatives``.

    An uncorrelated ``id IN (SELECT …)`` rather than a correlated EXISTS: the subquery is
    evaluated once through the (param, code, system) index, where a correlated one may be run
    per candidate row (SQLite without statistics does exactly that).
    """
    t = tokens.c
    if len(alternatives) > 1:
        # one SELECT per alternative, each a range of (param, code, system): an OR of them used
        # only the resource_type column, reading every token of the type
        matching: Any = union(*(select(t.id).where(t.resource_type == resource_type, _token_match(token))
                                for token in alternatives))
    else:
        matching = select(t.id).where(t.resource_type == resource_type,
                                      _any([_token_match(token) for token in alternatives]))
    return _r.id.in_(matching)


class SortKey(FunctionElement[Any]):
    """A column to order by that SQLite cannot take from an index (module docstring): ``+col``
    there, ``col`` elsewhere. Ordering is unchanged (unary + leaves a value as it is)."""

    inherit_cache = True
    name = "sort_key"


@compiles(SortKey)
def _sort_key(element: SortKey, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.clauses, **kw))


@compiles(SortKey, "sqlite")
def _sort_key_sqlite(element: SortKey, compiler: Any, **kw: Any) -> str:
    return "+" + str(compiler.process(element.clauses, **kw))


#: Token parameters whose codes name one thing (an identifier, a target record), not a kind.
SELECTIVE_TOKEN_PARAMS = frozenset({"identifier", "target", "entity", "encounter", "encounter:identifier"})


def selective(criteria: SearchCriteria) -> bool:
    """Does ``criteria`` select few resources, through an index of its own (module docstring)?
    One patient is not counted: ix_resources_patient gives that patient's rows in order."""
    return (criteria.ids is not None or criteria.patient_reference is not None
            or (criteria.patient is not None and len(criteria.patient) != 1)
            or any(t.param in SELECTIVE_TOKEN_PARAMS for group in criteria.tokens for t in group))


def search_statement(resource_type: str, criteria: SearchCriteria, *,
                     descending: bool = False) -> Select[tuple[object, ...]]:
    """The SELECT of INDEX_COLUMNS matching ``criteria``, ordered by last_updated then id
    (newest first when ``descending``)."""
    where: list[ColumnElement[bool]] = [_r.resource_type == resource_type]
    if criteria.ids is not None:
        where.append(_r.id.in_(criteria.ids))
    if criteria.patient is not None or criteria.patient_value is not None:
        # one IN per system, which ix_resources_patient answers value by value (an OR of
        # (system, value) pairs used only its system column: every patient of the system)
        values_by_system: dict[str, list[str]] = {}
        for p in criteria.patient or ():
            values_by_system.setdefault(p.system, []).append(p.value)
        named: list[ColumnElement[bool]] = [and_(_r.patient_system == system, _r.patient_value.in_(values))
                 if len(values) > 1 else and_(_r.patient_system == system, _r.patient_value == values[0])
                 for system, values in values_by_system.items()]
        # a value in any system: no index leads with the value, so the type's rows are walked
        # in order and tested, as for a category (not selective())
        bare: list[ColumnElement[bool]] = [_r.patient_value.in_(criteria.patient_value)] \
            if criteria.patient_value else []
        where.append(_any(named + bare))
    if criteria.patient_reference is not None:
        where.append(_r.patient_reference.in_(criteria.patient_reference))
    where.extend(_any([_date_criterion(resource_type, d) for d in group]) for group in criteria.dates)
    where.extend(_any([date_condition(d, _r.last_updated) for d in group]) for group in criteria.last_updated)
    if criteria.status is not None:
        where.append(_r.status.in_(criteria.status))
    where.extend(token_condition(resource_type, group) for group in criteria.tokens)
    keys: tuple[Any, Any] = (SortKey(_r.last_updated), SortKey(_r.id)) if selective(criteria) \
        else (_r.last_updated, _r.id)
    if descending:
        keys = (keys[0].desc(), keys[1].desc())
    return select(*INDEX_COLUMNS).where(*where).order_by(*keys)

