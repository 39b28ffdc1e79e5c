"""JSON from a request (a FHIR resource, the metadata of a photo) parsed once, with its nesting
bounded: Python's parser raises RecursionError on a few thousand nested arrays (a server error
where a refusal was meant), and what parses deeper than any FHIR resource the adapter takes
would only meet the same limit later, in validation or storage."""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

from adapter.errors import InvalidInput
from adapter.json_decimal import parse_float

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
#: Values (strings, member names, numbers, true/false/null, objects, arrays) a body may hold: a
#: 66 MB transaction Bundle of plain numbers (34 M of them, which the container bound did not see)
#: took 3.6 GB and 67 s, and 1.4 GB of it stayed (security review 2). A transaction Bundle with a
#: Consent holds a few thousand.
MAX_VALUES = 200_000
#: The longest string, in bytes as the body writes it: FHIR's own bound on a string ("SHALL NOT
#: exceed 1MB", datatypes.html string). base64Binary (``data``: Binary.data, Attachment.data) is
#: bounded only by the route's body limit (a transaction's photo, a Consent's scanned form).
MAX_STRING_BYTES = 1024 * 1024
#: The body outside its base64 ``data`` values: what becomes many small objects when parsed (the
#: route's limit, the upload limit for a transaction, is for its image).
MAX_STRUCTURE_BYTES = 4 * 1024 * 1024
#: The longest number, in characters: more than any FHIR integer (32-bit) or decimal needs (18
#: significant digits do; datatypes.html decimal) and well within what a decimal keeps as written
#: (adapter.json_decimal); a longer one is refused, never cut (security review 6). FHIR XML's
#: values are bounded alike (adapter.api.fhir_xml).
MAX_NUMBER_CHARS = 64


def load_json(raw: bytes | bytearray | str, *, what: str, expression: str | None = None,
              error: type[InvalidInput] = InvalidInput, bulk: tuple[str, ...] = ("data",)) -> Any:
    """``raw`` parsed (a decimal kept as written: adapter.json_decimal); ``error`` (InvalidInput,
    422; a FHIR body's InvalidResource, 400) naming ``what`` when it is not JSON, holds more than
    the bounds above allow (looked at before it is parsed), nests deeper than MAX_DEPTH or holds a
    lone surrogate or U+0000. ``bulk``: the members whose strings are base64 bounded only by the
    route (a FHIR body's ``data``; photo metadata's ``form`` too, its consent form scan)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if not isinstance(raw, str) and not _may_be_utf_8(data):
        if _is_utf_8_with_nul(data):
            raise error(f"{what} holds a NUL byte: JSON allows no control character unescaped (RFC 8259 7), "
                        "and U+0000 is not taken escaped either", expression=expression)
        raise error(f"{what} is not UTF-8 (it looks like UTF-16 or UTF-32): JSON is UTF-8 (RFC 8259 8.1)",
                    expression=expression)
    problem = _scan(data, tuple(f'"{name}"'.encode() for name in bulk))
    if problem is not None:
        # before parsing: each value costs the parser, the models and the store memory and time
        raise error(f"{what} {problem}", expression=expression)
    try:
        text = raw if isinstance(raw, str) else _utf_8(raw)
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not UTF-8 (its byte {exc.start} is not): JSON is UTF-8 (RFC 8259 8.1)",
                    expression=expression) from None
    try:
        parsed = json.loads(text, object_pairs_hook=_unique_names, parse_float=parse_float)
    except _DuplicateName as exc:
        raise error(f"{what} names the member {str(exc)[:40]!r} twice in one object: which is meant cannot be told "
                    "(a reader taking the first would see another resource than the one kept)",
                    expression=expression) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise error(f"{what} is not valid JSON", expression=expression) from exc
    except RecursionError:
        raise error(f"{what} nests deeper than {MAX_DEPTH} levels", expression=expression) from None
    return check_loaded(parsed, what=what, expression=expression, error=error)


#: UTF-8's byte order mark, which RFC 8259 8.1 lets a parser ignore (as libxml2 does for FHIR XML).
_UTF_8_BOM = b"\xef\xbb\xbf"


def _may_be_utf_8(raw: bytes | bytearray) -> bool:
    """False when ``raw`` is UTF-16 or UTF-32, which ``json.loads`` would detect and read from
    bytes (pentest finding 2: a Consent a gateway could not read as UTF-8 was stored, and
    :func:`_scan`, counting UTF-8 tokens, missed its values). Looked at before the scan, without
    a copy: their byte order mark is no UTF-8, and their ASCII characters hold NUL bytes, which
    JSON text never holds in UTF-8 (U+0000 only as the escape ``\\u0000``)."""
    return not raw.startswith((b"\xff\xfe", b"\xfe\xff")) and b"\x00" not in raw


def _is_utf_8_with_nul(raw: bytes | bytearray) -> bool:
    """Whether ``raw``, refused by :func:`_may_be_utf_8` for a NUL byte, is UTF-8 all the same
    (code review 7): no UTF-16 or UTF-32 byte order mark, neither of its first two bytes NUL (JSON
    text in UTF-16 or UTF-32 has one there: RFC 4627 3, its first character being ASCII), and it
    decodes. Only on the way to a refusal: the decoding is a copy."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or 0 in raw[:2]:
        return False
    try:
        _utf_8(raw)
    except UnicodeDecodeError:
        return False
    return True


def _utf_8(raw: bytes | bytearray) -> str:
    """``raw`` decoded as UTF-8, strictly (a surrogate written as UTF-8 is refused), its byte
    order mark, if any, dropped (RFC 8259 8.1: a parser MAY ignore it)."""
    start = len(_UTF_8_BOM) if raw.startswith(_UTF_8_BOM) else 0
    return codecs.decode(memoryview(raw)[start:], "utf-8")


#: A token of JSON that is, or begins, a value (or the colon after a member name): a string is
#: only its opening quote here (:func:`_string_end` finds its end).
_TOKEN = re.compile(rb'"|-?[0-9][-+.0-9eE]*|[:{\[]|true|false|null')
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
#: The member whose string may be longer than MAX_STRING_BYTES: base64Binary (Binary.data,
#: Attachment.data).
_BULK_NAME = b'"data"'


def _scan(raw: bytes | bytearray, bulk_names: tuple[bytes, ...] = (_BULK_NAME,)) -> str | None:
    """What of the bounds above ``raw`` passes, looked at in one pass that stops at the first
    (nothing parsed, nothing kept but counts); None when within them. What is not JSON is left to
    the parser to refuse."""
    values = containers = 0
    bulk = 0
    name: bytes | bytearray | None = None  # the last string, while the colon after it may come
    after_name = False
    pos = 0
    find = _TOKEN.search
    while (token := find(raw, pos)) is not None:
        start, pos = token.span()
        first = raw[start]
        if first == 0x3A:  # ':' after a member name
            after_name = name is not None
            continue
        values += 1
        if values > MAX_VALUES:
            return f"holds more than {MAX_VALUES} values (strings, numbers, objects and arrays)"
        if first == 0x22:  # '"'
            pos = _string_end(raw, pos)
            length = pos - start
            if length > MAX_STRING_BYTES:
                if not (after_name and name in bulk_names):
                    return f"holds a string longer than {MAX_STRING_BYTES} bytes (datatypes.html string: 1 MB)"
                bulk += length
            name = raw[start:pos] if length <= 40 else b""
        elif first in (0x7B, 0x5B):  # '{', '['
            name = None
            containers += 1
            if containers > MAX_CONTAINERS:
                return f"holds more than {MAX_CONTAINERS} objects and arrays"
        else:
            name = None
            if pos - start > MAX_NUMBER_CHARS:
                return f"holds a number of more than {MAX_NUMBER_CHARS} characters"
        after_name = False
    if len(raw) - bulk > MAX_STRUCTURE_BYTES:
        return f"holds more than {MAX_STRUCTURE_BYTES} bytes outside base64 data (Binary.data, Attachment.data)"
    return None


def _string_end(raw: bytes | bytearray, pos: int) -> int:
    """Where the string whose content begins at ``pos`` ends (after its closing quote; the end of
    ``raw`` when it has none). Base64 has no escape: one ``find``."""
    close = raw.find(b'"', pos)
    if close >= 0 and raw.find(b"\\", pos, close) < 0:
        return close + 1
    match = _STRING_REST.match(raw, pos)
    return match.end() if match is not None else len(raw)


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
            problem = _string_problem(item)
            if problem is not None:
                return problem
            continue
        if isinstance(item, dict):
            for key in item:
                problem = _string_problem(key)
                if problem is not None:
                    return problem
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH and children:
            return "depth"
        for child in children:
            # a string or number looked at here, not stacked: one tuple per scalar of a body of
            # millions cost gigabytes (security review 2)
            if isinstance(child, str):
                problem = _string_problem(child)
                if problem is not None:
                    return problem
            elif isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return None


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "nul"
    if not _is_text(text):
        return "surrogate"
    if CONTROL.search(text):
        return "control"
    return None


def _is_text(value: str) -> bool:
    if value.isascii():  # base64 image data and most of a resource: no copy made
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
