"""The one FHIR PATCH the adapter takes: a JSON Patch (RFC 6902, FHIR R4 http.html#patch) that
marks a record ``entered-in-error``.

Its operations are, in order: any number of ``test`` operations (RFC 6902 4.6: each must hold on
the record as stored, or nothing is changed), then exactly one ``replace`` of ``/status`` with
``"entered-in-error"``. Anything else (another element, another status, add, remove, move,
copy) is refused: FHIR PATCH of other elements is not supported. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapter.errors import BusinessRuleViolation, InvalidResource
from adapter.refusals import RefusalCode

ENTERED_IN_ERROR = "entered-in-error"
#: What the refusal of any other patch says.
ONLY_ENTERED_IN_ERROR = ("only marking a record entered-in-error is supported: a JSON Patch whose one change is "
                         '{"op": "replace", "path": "/status", "value": "entered-in-error"} (test operations may come '
                         "before it); FHIR PATCH of other elements is not supported")
_MISSING = object()


@dataclass(frozen=True)
class StatusPatch:
    """A patch that marks a record entered-in-error, with its ``tests`` (JSON Pointer, value)."""

    tests: tuple[tuple[str, Any], ...] = ()

    def check(self, resource: Mapping[str, Any]) -> None:
        """RFC 6902 4.6: every test holds on ``resource`` (422 otherwise: nothing is changed)."""
        for path, value in self.tests:
            found = _pointed(resource, path)
            if found is _MISSING or not _equal(found, value):
                raise BusinessRuleViolation(f"the patch's test of {path[:80]} does not hold: nothing was changed",
                                            expression=path[:80], refusal=RefusalCode.PATCH_TEST_FAILED)


def parse_status_patch(document: Any) -> StatusPatch:
    """The StatusPatch of a parsed JSON Patch document; 400 when it is no JSON Patch (not an
    array of operation objects), 422 (:data:`ONLY_ENTERED_IN_ERROR`) when it changes anything else."""
    if not isinstance(document, list) or not all(isinstance(op, dict) for op in document):
        raise InvalidResource("a JSON Patch (RFC 6902) is an array of operation objects")
    tests: list[tuple[str, Any]] = []
    changes: list[dict[str, Any]] = []
    for op in document:
        if op.get("op") == "test" and not changes and isinstance(op.get("path"), str) and "value" in op:
            tests.append((op["path"], op["value"]))
        else:
            changes.append(op)
    if len(changes) != 1 or changes[0].get("op") != "replace" or changes[0].get("path") != "/status" \
            or changes[0].get("value") != ENTERED_IN_ERROR:
        raise BusinessRuleViolation(ONLY_ENTERED_IN_ERROR, refusal=RefusalCode.ONLY_ENTERED_IN_ERROR)
    return StatusPatch(tests=tuple(tests))


def _pointed(document: Any, pointer: str) -> Any:
    """The value ``pointer`` (RFC 6901) names in ``document``, or _MISSING."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        return _MISSING
    node = document
    for token in pointer[1:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            if token not in node:
                return _MISSING
            node = node[token]
        elif isinstance(node, Sequence) and not isinstance(node, str) and token.isascii() and token.isdigit() \
                and (token == "0" or not token.startswith("0")) and len(token) <= 18 and int(token) < len(node):
            node = node[int(token)]
        else:
            return _MISSING
    return node


def _equal(a: Any, b: Any) -> bool:
    """JSON equality (RFC 6902 4.6): a number is not a boolean."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) \
        else a == b
