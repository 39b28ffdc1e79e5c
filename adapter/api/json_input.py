"""JSON from a request (a FHIR resource, the metadata of a photo) parsed once, with its nesting
bounded: Python's parser raises RecursionError on a few thousand nested arrays (a server error
where a refusal was meant), and what parses deeper than any FHIR resource the adapter takes
would only meet the same limit later, in validation or storage."""

from __future__ import annotations

import json
import re
from typing import Any

from adapter.errors import InvalidInput

#: What a FHIR string should not hold (datatypes.html: no code point below 32 but tab, line feed and
#: carriage return) and XML 1.0 cannot carry at all (its Char production: nor U+FFFE, U+FFFF); U+0000
#: and lone surrogates are told apart (load_json). A record holding one could not be answered in
#: FHIR XML.
CONTROL = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
#: More objects and arrays than any resource or metadata the adapter takes holds (a transaction
#: Bundle with a Consent has a few hundred): a body of hundreds of thousands of empty extensions
#: cost the parser, the models and the store gigabytes and tens of seconds. FHIR XML is bounded
#: alike (adapter.api.fhir_xml: its elements).
MAX_CONTAINERS = 50_000
#: Deeper than any resource or metadata the adapter takes (a transaction Bundle's Consent with
#: nested provisions is about 12).
MAX_DEPTH = 64


def load_json(raw: bytes | str, *, what: str, expression: str | None = None,
              error: type[InvalidInput] = InvalidInput) -> Any:
    """``raw`` parsed; ``error`` (InvalidInput, 422; a FHIR body's InvalidResource, 400) naming
    ``what`` when it is not JSON, nests deeper than MAX_DEPTH or holds a lone surrogate or U+0000."""
    containers = raw.count(b"{") + raw.count(b"[") if isinstance(raw, bytes) else raw.count("{") + raw.count("[")
    if containers > MAX_CONTAINERS:
        # before parsing: each object costs the parser, the models and the store memory and time
        raise error(f"{what} holds more than {MAX_CONTAINERS} objects and arrays", expression=expression)
    try:
        data = json.loads(raw, object_pairs_hook=_unique_names)
    except _DuplicateName as exc:
        raise error(f"{what} names the member {str(exc)[:40]!r} twice in one object: which is meant cannot be told "
                    "(a reader taking the first would see another resource than the one kept)",
                    expression=expression) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what} is not valid JSON", expression=expression) from exc
    except RecursionError:
        raise error(f"{what} nests deeper than {MAX_DEPTH} levels", expression=expression) from None
    return check_loaded(data, what=what, expression=expression, error=error)


class _DuplicateName(ValueError):
    """A member name given twice in one JSON object."""


def _unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, each name once (RFC 8259 4: names SHOULD be unique; Python's parser
    kept the last in silence, so a gateway reading the first saw another resource than the one
    stored: security review 11)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _DuplicateName(name)
            seen.add(name)
    return out


def check_loaded(data: Any, *, what: str, expression: str | None = None,
                 error: type[InvalidInput] = InvalidInput) -> Any:
    """``data`` (JSON parsed, or made from FHIR XML) when :func:`load_json` would take it: not
    nested deeper than MAX_DEPTH, no lone surrogate, no U+0000, no other control character or
    non-character (:data:`CONTROL`); else ``error``."""
    problem = _problem(data)
    if problem == "depth":
        raise error(f"{what} nests deeper than {MAX_DEPTH} levels", expression=expression)
    if problem == "nul":
        raise error(f"{what} holds the character U+0000, which FHIR strings do not allow", expression=expression)
    if problem == "control":
        raise error(f"{what} holds a control character (U+0001 to U+001F other than tab, line feed and carriage "
                    "return) or a non-character (U+FFFE, U+FFFF), which FHIR strings should not hold (datatypes.html "
                    "string) and FHIR XML cannot carry (XML 1.0 Char)", expression=expression)
    if problem == "surrogate":
        raise error(f"{what} holds an unpaired surrogate escape (\\ud800-\\udfff), which is no Unicode "
                    "character (RFC 8259 8.2)", expression=expression)
    return data


def _problem(value: Any) -> str | None:
    """What is wrong with ``value``: "depth" when it nests deeper than MAX_DEPTH; "surrogate"
    when a string (or key) of it holds a lone UTF-16 surrogate, which Python's parser lets
    through from a ``\\udc80`` escape and no UTF-8 text can hold (the record store failed on
    it, a 500 after the photo was written); "nul" when one holds U+0000, which FHIR strings do
    not allow and the record store refuses only once the photo is written; else None."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "nul"
            if not _is_text(item):
                return "surrogate"
            if CONTROL.search(item):
                return "control"
            continue
        if isinstance(item, dict):
            if not all(_is_text(key) for key in item):
                return "surrogate"
            if any("\x00" in key for key in item):
                return "nul"
            if any(CONTROL.search(key) for key in item):
                return "control"
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH and children:
            return "depth"
        stack.extend((child, depth + 1) for child in children)
    return None


def _is_text(value: str) -> bool:
    if value.isascii():  # base64 image data and most of a resource: no copy made
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
