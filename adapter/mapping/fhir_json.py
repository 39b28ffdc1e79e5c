"""Incoming FHIR R4 JSON checked: with the fhir.resources R4B models (they read R4:
standards.md §1), and against FHIR's JSON representation rules that the models do not enforce;
errors point at the element."""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import ValidationError

from adapter.errors import InvalidInput, InvalidResource
from adapter.model.photo import IDENTIFIER_MAX_BYTES, identifier_too_long, unmatchable

#: The resource types the adapter takes in, and their fhir.resources.R4B modules.
R4B_MODULES = {"Binary": "binary", "Media": "media", "DocumentReference": "documentreference",
               "Consent": "consent", "Provenance": "provenance", "List": "list", "Patient": "patient",
               "Bundle": "bundle"}


def validate_model(resource_type: str, data: Mapping[str, Any], prefix: str) -> None:
    """Validate ``data`` with the R4B model of ``resource_type`` (one of R4B_MODULES); errors
    become InvalidResource with FHIRPath-like expressions under ``prefix``."""
    model = getattr(importlib.import_module(f"fhir.resources.R4B.{R4B_MODULES[resource_type]}"), resource_type)
    try:
        model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        where = [expression(prefix, e["loc"]) for e in errors[:10]]
        text = "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, errors[:10], strict=False))
        raise InvalidResource(f"invalid {resource_type}: {text}", expression=where) from exc
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        # fhir.resources raises these (not ValidationError) for some wrong JSON types
        raise InvalidResource(f"invalid {resource_type}: an element has the wrong type ({type(exc).__name__})",
                              expression=prefix) from exc


def validate_r4_resource(resource: Mapping[str, Any]) -> None:
    """One resource received on its own (a Consent POST or PUT): its JSON representation, then
    its model; InvalidResource names the element."""
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or rtype not in R4B_MODULES:
        raise InvalidResource(f"unsupported resourceType {str(rtype)[:40]}", expression="resourceType")
    check_json_representation(resource, rtype)
    check_indexed_values(resource, rtype)
    validate_model(rtype, resource, rtype)


def expression(prefix: str, loc: Sequence[int | str]) -> str:
    """A FHIRPath-like expression from a pydantic error location."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part and not any(c in part for c in "[]()"):
            out += f".{part}"
    return out


def check_json_representation(value: Any, path: str) -> None:
    """The rules of FHIR's JSON representation that the models let through
    (https://hl7.org/fhir/R4/json.html): no empty object, array or string, and no null except
    in an array of primitives whose extensions sit in the ``_name`` sibling array; and an
    extension has either extensions or a value (ext-1: one with neither says nothing, yet every
    reader must carry it). Raises
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
                    if key in ("extension", "modifierExtension") and isinstance(element, dict) and \
                            any(k.startswith("value") for k in element) == ("extension" in element):
                        raise InvalidResource(f"{where}[{i}] has either extensions or a value, not both and not "
                                              "neither (FHIR invariant ext-1)", expression=f"{where}[{i}]")
                    check_json_representation(element, f"{where}[{i}]")
            else:
                check_json_representation(item, where)
    elif isinstance(value, str) and not value:
        raise InvalidResource(f"{path} is an empty string", expression=path)


#: The elements of type Identifier (https://hl7.org/fhir/R4/datatypes.html#Identifier) in the
#: resources the adapter takes in: every resource's and Reference's ``identifier``,
#: DocumentReference.masterIdentifier, and an extension's ``valueIdentifier``.
_IDENTIFIER_ELEMENTS = frozenset({"identifier", "masterIdentifier", "valueIdentifier"})
def first_modifier(value: Any, path: str, keys: Sequence[str] = ("modifierExtension",)) -> str | None:
    """The FHIRPath of the first modifier element (one of ``keys``: ``modifierExtension``, and
    ``implicitRules`` where asked) present in ``value``, a resource or any element of it,
    contained resources included; None when there is none. FHIR extensibility.html: an
    application SHALL NOT process a resource whose modifier it does not understand as if the
    modifier were absent."""
    if isinstance(value, Mapping):
        for key in keys:
            if key in value:
                return f"{path}.{key}"
        for key, item in value.items():
            found = first_modifier(item, f"{path}.{key}", keys)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = first_modifier(item, f"{path}[{i}]", keys)
            if found is not None:
                return found
    return None


#: What the store indexes beside an Identifier's value: a Coding's (or an Identifier's) ``system``
#: and ``code`` (search tokens), and a Reference's ``reference`` (a patient's, for ``patient=``).
_INDEXED = frozenset({"system", "code", "reference"})


def check_indexed_values(value: Any, path: str, *, identifier: bool = False) -> None:
    """Every Identifier's ``system`` and ``value`` in ``value`` (a resource or Bundle, contained
    and nested ones included), every coding's ``system`` and ``code`` and every ``reference`` is
    at most IDENTIFIER_MAX_BYTES (adapter.model.photo), the bound of every identifier the adapter
    takes, on every channel, so that what one store keeps another does too; and none begins or
    ends with white space or holds an invisible character (adapter.model.photo.unmatchable:
    matched exactly, a padded patient identifier escaped its patient's Consent). Raises
    InvalidInput (422: understood, and over the adapter's limit or refused by its rule) naming
    the element, never quoting it."""
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}"
            if isinstance(item, str) and (key in _INDEXED or (identifier and key == "value")):
                if identifier_too_long(item):
                    raise InvalidInput(f"{where} is longer than the adapter takes ({IDENTIFIER_MAX_BYTES} bytes in "
                                       "UTF-8): nothing was stored", expression=where)
                why = unmatchable(item)
                if why is not None:
                    raise InvalidInput(f"{where} {why}: it is matched exactly, so it would name another patient "
                                       "or record than meant; nothing was stored", expression=where)
            check_indexed_values(item, where, identifier=key in _IDENTIFIER_ELEMENTS)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_indexed_values(item, f"{path}[{i}]", identifier=identifier)
