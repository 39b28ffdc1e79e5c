"""FHIR's JSON representation rules that the fhir.resources models do not enforce."""

from __future__ import annotations

from typing import Any

from adapter.errors import InvalidResource


def check_json_representation(value: Any, path: str) -> None:
    """The rules of FHIR's JSON representation that the models let through
    (https://hl7.org/fhir/R4/json.html): no empty object, array or string, and no null except
    in an array of primitives whose extensions sit in the ``_name`` sibling array. Raises
    InvalidResource naming the first offending element. Found by fuzzing: an empty
    ``Consent.category[0]``, ``performer[0]`` or ``Extension.url`` was stored and emitted."""
    if isinstance(value, dict):
        if not value:
            raise InvalidResource(f"{path} is an empty object", expression=path)
        for key, item in value.items():
            where = f"{path}.{key}"
            if item is None:
                raise InvalidResource(f"{where} is null", expression=where)
            if isinstance(item, list):
                if not item:
                    raise InvalidResource(f"{where} is an empty array", expression=where)
                extended = isinstance(value.get(f"_{key}"), list) or (
                    key.startswith("_") and isinstance(value.get(key[1:]), list))
                for i, element in enumerate(item):
                    if element is None and extended:
                        continue
                    if element is None:
                        raise InvalidResource(f"{where}[{i}] is null", expression=f"{where}[{i}]")
                    check_json_representation(element, f"{where}[{i}]")
            else:
                check_json_representation(item, where)
    elif isinstance(value, str) and not value:
        raise InvalidResource(f"{path} is an empty string", expression=path)
