"""FHIR search parameter escaping (https://hl7.org/fhir/R4/search.html#escaping, 2.1.1.6): in a
search value ``,`` separates values (an OR), ``|`` a token's system from its code and ``$`` the parts
of a composite; each is part of a value when escaped with ``\\`` (``\\,`` ``\\|`` ``\\$``), and a
backslash itself is ``\\\\``.

The one place the adapter splits a FHIR search value on ``,`` or ``|``
(adapter.services.search_params reads every token, identifier, reference, status, ``_id`` and date
value through it). Fail closed: a token with more than one unescaped ``|`` could name two patients
(``urn:oid:2.999|1.1|AB``: system ``urn:oid:2.999|1.1`` and value ``AB``, or system ``urn:oid:2.999``
and value ``1.1|AB``), and a backslash that escapes nothing (``A\\B``) is no value the client could
be sure to have sent: both are refused (400), never guessed. The adapter has no composite
parameters, so an unescaped ``$`` is a character of the value.

A refusal names the parameter, never the value: it may be a patient identifier."""

from __future__ import annotations

from adapter.errors import InvalidQuery

#: The characters a backslash escapes in a search value.
ESCAPABLE = frozenset("\\,|$")
#: Separates the values of a parameter (an OR).
VALUE_SEPARATOR = ","
#: Separates a token's system from its code (search.html#token).
TOKEN_SEPARATOR = "|"


def _escapes_nothing(param: str) -> InvalidQuery:
    return InvalidQuery(f"{param} holds a \\ that escapes nothing: in a search value a \\ is sent as \\\\, and a "
                        ", | or $ that is part of the value as \\, \\| or \\$ (FHIR search.html#escaping)",
                        expression=param)


def _split(value: str, separator: str, param: str) -> list[str]:
    """``value`` cut at each unescaped ``separator``, the parts still escaped; InvalidQuery when
    a backslash escapes nothing (or ends the value)."""
    parts: list[str] = []
    start = i = 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            if i + 1 >= len(value) or value[i + 1] not in ESCAPABLE:
                raise _escapes_nothing(param)
            i += 2
            continue
        if c == separator:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return parts


def search_values(value: str, param: str) -> list[str]:
    """The values of a parameter, separated by unescaped commas (an OR, search.html#combining),
    each still escaped (a token's ``\\|`` is told from its separator after this split)."""
    return _split(value, VALUE_SEPARATOR, param)


def unescape(value: str, param: str) -> str:
    """One value as the client meant it: ``\\,`` ``\\|`` ``\\$`` ``\\\\`` each the character it escapes."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value[i] == "\\":
            if i + 1 >= len(value) or value[i + 1] not in ESCAPABLE:
                raise _escapes_nothing(param)
            i += 1
        out.append(value[i])
        i += 1
    return "".join(out)


def token_parts(value: str, param: str) -> tuple[str | None, str]:
    """A token value (search.html#token) as (system, code), each unescaped: ``system|code``;
    ``|code`` (system ``""``: a code without one); ``code`` alone (system None: any system).
    InvalidQuery for more than one unescaped ``|``: which is the separator cannot be known."""
    parts = _split(value, TOKEN_SEPARATOR, param)
    if len(parts) > 2:
        raise InvalidQuery(f"{param} holds more than one unescaped |: a token is system|code, and a | that is "
                           "part of the system or the code is sent as \\| (FHIR search.html#escaping)",
                           expression=param)
    if len(parts) == 1:
        return None, unescape(parts[0], param)
    return unescape(parts[0], param), unescape(parts[1], param)


__all__ = ["ESCAPABLE", "TOKEN_SEPARATOR", "VALUE_SEPARATOR", "search_values", "token_parts", "unescape"]
