"""JSON from a request (a FHIR resource, the metadata of a photo) parsed once, with its nesting
bounded: Python's parser raises RecursionError on a few thousand nested arrays (a server error
where a refusal was meant), and what parses deeper than any FHIR resource the adapter takes
would only meet the same limit later, in validation or storage."""

from __future__ import annotations

import json
from typing import Any

from adapter.errors import InvalidInput

#: Deeper than any resource or metadata the adapter takes (a transaction Bundle's Consent with
#: nested provisions is about 12).
MAX_DEPTH = 64


def load_json(raw: bytes | str, *, what: str, expression: str | None = None) -> Any:
    """``raw`` parsed; InvalidInput (422) naming ``what`` when it is not JSON or nests deeper
    than MAX_DEPTH."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{what} is not valid JSON", expression=expression) from exc
    except RecursionError:
        raise InvalidInput(f"{what} nests deeper than {MAX_DEPTH} levels", expression=expression) from None
    if not _within_depth(data):
        raise InvalidInput(f"{what} nests deeper than {MAX_DEPTH} levels", expression=expression)
    return data


def _within_depth(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH and children:
            return False
        stack.extend((child, depth + 1) for child in children)
    return True
