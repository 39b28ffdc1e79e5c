"""FHIR decimals kept as they were written, through JSON read, stored and written again.

FHIR R4 datatypes.html ``decimal``: "the precision of the decimal value has significance" (0.010
is not 0.01) and is to be kept; json.html warns that a JSON parser reading numbers as floats loses
it. Python's parser reads ``1.50`` as the float 1.5 and ``0.1111…`` (100,000 digits) as a float's
16 digits (security review 6). A number with a fraction or an exponent is read here as a float when
the float writes back the very text read (``1.5``, ``37.2``: most, and code doing arithmetic on
them sees the float it always did), else as a :class:`JsonDecimal`, a Decimal remembering its text,
which :func:`dumps` writes as it was read. Integers are Python's ints, as before.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from decimal import Decimal
from typing import Any, Self


class JsonDecimal(Decimal):
    """A JSON number as its text was (``text``), with its Decimal value."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> Self:
        self = super().__new__(cls, text)
        self.text = text
        return self


def parse_float(text: str) -> float | JsonDecimal:
    """A JSON number with a fraction or an exponent (module docstring). Raises ValueError for one
    a double cannot hold (over about 1e308, or not zero but under about 1e-308): what reads it as
    a double elsewhere (most FHIR servers, the models' float) would hold infinity or zero."""
    value = float(text)
    if not math.isfinite(value) or (value == 0 and Decimal(text) != 0):
        raise ValueError(f"a number no double can hold: {text[:20]}")
    return value if repr(value) == text else JsonDecimal(text)


def loads(text: str | bytes, **options: Any) -> Any:
    """``json.loads`` keeping decimals as written (:func:`parse_float`)."""
    return json.loads(text, parse_float=parse_float, **options)


def dumps(value: Any, **options: Any) -> str:
    """``json.dumps`` writing each Decimal as its text (a JsonDecimal as it was read).

    The C encoder has no hook for a number's text, so each Decimal is written first as a string
    marked with a nonce drawn for this call (which no string of ``value`` can hold but by a 2**-128
    chance), whose quotes are then taken off; without a Decimal the encoder runs as it always did."""
    nonce = secrets.token_hex(16)
    found = False

    def marked(item: Any) -> Any:
        nonlocal found
        if isinstance(item, Decimal) and item.is_finite():
            found = True
            return nonce + (item.text if isinstance(item, JsonDecimal) else str(item))
        raise TypeError(f"Object of type {type(item).__name__} is not JSON serializable")

    text = json.dumps(value, default=marked, **options)
    if not found:
        return text
    return re.sub(f'"{nonce}([-+.0-9eE]+)"', r"\1", text)


__all__ = ["JsonDecimal", "dumps", "loads", "parse_float"]
