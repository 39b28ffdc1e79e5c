"""Incoming FHIR R4 JSON checked: with the fhir.resources R4B models (they read R4:
standards.md §1), and against FHIR's JSON representation rules that the models do not enforce;
errors point at the element."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.reference import Reference
from pydantic import BaseModel, ValidationError

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
        instance = model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        where = [expression(prefix, e["loc"]) for e in errors[:10]]
        text = "; ".join(f"{w}: {e['msg']}" for w, e in zip(where, errors[:10], strict=False))
        raise InvalidResource(f"invalid {resource_type}: {text}", expression=where) from exc
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        # fhir.resources raises these (not ValidationError) for some wrong JSON types
        raise InvalidResource(f"invalid {resource_type}: an element has the wrong type ({type(exc).__name__})",
                              expression=prefix) from exc
    check_as_read(instance, data, prefix)
    check_closed_codes(data, prefix)


#: Small HL7 code systems whose whole content FHIR R4 gives (so a code not listed is certainly no
#: code of the system), which a Coding of a resource taken in may name.
CLOSED_CODE_SYSTEMS: dict[str, frozenset[str]] = {
    "http://terminology.hl7.org/CodeSystem/consentscope": frozenset({"adr", "research", "patient-privacy",
                                                                      "treatment"}),
    "http://terminology.hl7.org/CodeSystem/consentaction": frozenset({"collect", "access", "use", "disclose",
                                                                       "correct"}),
    "http://terminology.hl7.org/CodeSystem/v3-Confidentiality": frozenset({"U", "L", "M", "N", "R", "V"}),
    "http://terminology.hl7.org/CodeSystem/media-type": frozenset({"image", "video", "audio"}),
    "http://terminology.hl7.org/CodeSystem/provenance-participant-type": frozenset({
        "enterer", "performer", "author", "verifier", "legal", "attester", "informant", "custodian", "assembler",
        "composer"}),
}


def check_closed_codes(value: Any, path: str) -> None:
    """Every Coding (an object with ``system`` and ``code``) of one of :data:`CLOSED_CODE_SYSTEMS`
    names a code of it: a Consent whose scope was consentscope#TREAT was stored, and emitted as
    a Consent no validator accepts. Raises InvalidResource naming the code."""
    if isinstance(value, Mapping):
        system = value.get("system")
        codes = CLOSED_CODE_SYSTEMS.get(system) if isinstance(system, str) else None
        if codes is not None and isinstance(value.get("code"), str) and value["code"] not in codes:
            raise InvalidResource(f"{path}.code is not a code of {value['system']} ({', '.join(sorted(codes))})",
                                  expression=f"{path}.code")
        for key, item in value.items():
            check_closed_codes(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_closed_codes(item, f"{path}[{i}]")


def check_as_read(instance: BaseModel, data: Mapping[str, Any], path: str) -> None:
    """What the models read leniently, held against FHIR's JSON (https://hl7.org/fhir/R4/json.html)
    and datatypes, walking the model read from ``data`` beside ``data`` itself:

    * every primitive has its JSON type: a boolean ``true``/``false``, a number a JSON number, and
      every other primitive a string (the models take ``"true"`` for a boolean, ``"5"`` for an
      integer, and ``0`` for a dateTime, which they read as 1970, while the resource kept and
      emitted says ``0``);
    * a Reference's ``type`` names a resource type the element may refer to (Consent.patient a
      Patient: https://hl7.org/fhir/R4/references.html#Reference, Reference.type).

    Raises InvalidResource naming the element. Found by the seeded fuzzing of the Consent API, whose
    stored Consents an independent validator then refused."""
    for name, field in type(instance).model_fields.items():
        key = field.alias or name
        if key not in data:
            continue
        raw, read = data[key], getattr(instance, name, None)
        pairs = (list(enumerate(zip(raw, read, strict=False))) if isinstance(raw, list) and isinstance(read, list)
                 else [(None, (raw, read))])
        for index, (raw_item, read_item) in pairs:
            where = f"{path}.{key}" if index is None else f"{path}.{key}[{index}]"
            if raw_item is None or read_item is None:
                continue
            if isinstance(read_item, BaseModel):
                if isinstance(raw_item, Mapping):
                    if isinstance(read_item, Reference) and read_item.type is not None:
                        _check_reference_type(str(read_item.type), field.json_schema_extra, f"{where}.type")
                    check_as_read(read_item, raw_item, where)
            elif not _json_type_fits(raw_item, read_item):
                raise InvalidResource(f"{where} has the wrong JSON type for its FHIR datatype ({_json_name(raw_item)}, "
                                      f"not {_json_name_of_read(read_item)})", expression=where)


def _json_type_fits(raw: Any, read: Any) -> bool:
    if isinstance(read, bool):
        return isinstance(raw, bool)
    if isinstance(read, int | float | Decimal):
        return isinstance(raw, int | float | Decimal) and not isinstance(raw, bool)
    return isinstance(raw, str)


def _json_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, Mapping) else "an array" if isinstance(value, list) else "another type"


def _json_name_of_read(read: Any) -> str:
    if isinstance(read, bool):
        return "a boolean"
    return "a number" if isinstance(read, int | float | Decimal) else "a string"


def _check_reference_type(value: str, extra: Any, where: str) -> None:
    allowed = extra.get("enum_reference_types") if isinstance(extra, Mapping) else None
    if allowed and "Resource" not in allowed:
        if value not in allowed:
            raise InvalidResource(f"{where} names a resource type this reference may not refer to (one of "
                                  f"{', '.join(allowed)})", expression=where)
        return
    try:
        get_fhir_model_class(value)
    except (ValueError, KeyError):
        raise InvalidResource(f"{where} is not a FHIR resource type", expression=where) from None


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


#: An absolute URI (RFC 3986 section 4.3): a scheme, a colon, and what follows it.
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[^\s]+\Z")


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
                    if key in ("extension", "modifierExtension") and isinstance(element, dict) and \
                            isinstance(element.get("url"), str) and not _ABSOLUTE_URI.match(element["url"]):
                        raise InvalidResource(f"{where}[{i}].url is not an absolute URI (FHIR extensibility.html: "
                                              "an extension's url identifies its definition)",
                                              expression=f"{where}[{i}].url")
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
