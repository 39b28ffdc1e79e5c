"""``_summary`` and ``_elements``: a resource cut to what the reader asked for
(https://hl7.org/fhir/R4/search.html#summary, #elements; http.html#read).

Applied to a resource already rendered in the reader's view (adapter.mapping.views), so it only
ever removes: the decision and the view are made before. What stays whatever is asked:
``resourceType``, ``id``, ``meta`` (with the security labels the view stamped),
``implicitRules`` and ``modifierExtension`` (modifiers: a reader must see them to understand
the rest) and the elements the resource type requires. A cut resource carries the tag
``v3-ObservationValue#SUBSETTED`` in ``meta.tag``, as the specification asks, so it is never
mistaken for the whole.

A photo record also keeps its photo-kind extension (:data:`_SAFETY_EXTENSIONS`; the record's
other extensions go unless asked for), though ``extension`` is no summary element: without it a
list of ``_summary=true`` or ``_elements`` answers cannot tell a photo of an x-ray or ECG (a
secondary image, to be reviewed on its original platform before diagnosis) from a clinical
photo; R4 Media has no category, and its modality ``OT`` says nothing of the kind. search.html
#summary lets a server return more than the summary elements; the SUBSETTED tag stays.

- ``_summary=true``: the elements marked "summary" in the base definition of the type (read off
  the fhir.resources models of the FHIR version: R4B for R4, which has the same flags for the
  types served here, and R5);
- ``_summary=text``: ``text`` and the required elements;
- ``_summary=data``: everything but ``text``;
- ``_summary=false``: the whole resource, untagged;
- ``_elements=a,b``: those top-level elements (a choice element by its name without the type,
  ``created`` for ``createdDateTime``), with the required ones.
``_summary=count`` is a search's own (adapter.services.search_params). ``_elements`` with a
``_summary`` other than ``false`` is refused: the specification leaves the combination
undefined.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapter.errors import InvalidQuery
from adapter.mapping import codes

JSON = dict[str, Any]

SUBSETTED = {"system": codes.V3_OBSERVATION_VALUE, "code": "SUBSETTED", "display": "subsetted"}
SUMMARY_MODES = ("true", "text", "data", "false")
#: Kept in every subset (besides each type's required elements).
_ALWAYS = frozenset({"resourceType", "id", "meta", "implicitRules", "modifierExtension"})
#: Invariants that need one of a few optional elements: when a cut keeps none of them, the
#: first the resource has is kept, so the cut resource stays valid. Consent ppc-1: "Either a
#: Policy or PolicyRule" (policy is not a summary element in R4).
_ONE_OF = {"Consent": ("policyRule", "policy")}

#: Extensions a cut photo record keeps whatever is asked (module docstring).
_SAFETY_EXTENSIONS = frozenset({codes.EXT_PHOTO_KIND})
#: The types whose cut keeps them.
_PHOTO_TYPES = frozenset({"Media", "DocumentReference"})

#: The types cut (their fhir.resources module is the type's name in lower case); anything else,
#: such as an OperationOutcome entry of a search, is left whole.
_CUT_TYPES = frozenset({"Binary", "Media", "DocumentReference", "Consent", "Provenance"})


@dataclass(frozen=True)
class Subsetting:
    """What the reader asked for: ``summary`` one of SUMMARY_MODES (or None), ``elements`` the
    names given to ``_elements`` (or None)."""

    summary: str | None = None
    elements: tuple[str, ...] | None = None

    @property
    def cuts(self) -> bool:
        return self.elements is not None or self.summary in ("true", "text", "data")


def parse_subsetting(params: Sequence[tuple[str, str]]) -> Subsetting:
    """``_summary`` and ``_elements`` among request parameters. ``_summary=count`` is left to
    the search. Raises InvalidQuery for another value, a repeat, or both together."""
    summary: str | None = None
    elements: list[str] | None = None
    for name, value in params:
        if name == "_summary":
            if value == "count":
                continue
            if value not in SUMMARY_MODES:
                raise InvalidQuery(f"_summary takes {', '.join(SUMMARY_MODES)} or count", expression="_summary")
            if summary is not None and summary != value:
                raise InvalidQuery("_summary is given twice with different values", expression="_summary")
            summary = value
        elif name == "_elements":
            names = [v.strip() for v in value.split(",") if v.strip()]
            if not names or any(not n.replace("_", "").isalnum() for n in names):
                raise InvalidQuery("_elements takes a comma-separated list of element names", expression="_elements")
            elements = (elements or []) + names
    if elements is not None and summary not in (None, "false"):
        raise InvalidQuery("_elements cannot be combined with _summary (other than false)", expression="_elements")
    return Subsetting(summary=summary, elements=tuple(dict.fromkeys(elements)) if elements is not None else None)


@dataclass(frozen=True)
class _Definition:
    summary: frozenset[str]   # JSON names of the summary elements
    required: frozenset[str]  # JSON names of the required elements (one name per choice type)
    choices: Mapping[str, frozenset[str]]  # choice name -> its JSON names (created -> createdDateTime, ...)


@functools.cache
def _definition(resource_type: str, fhir_version: str) -> _Definition:
    package = "fhir.resources.R4B" if fhir_version == "4" else "fhir.resources"
    model = getattr(importlib.import_module(f"{package}.{resource_type.lower()}"), resource_type)
    summary: set[str] = set()
    required: set[str] = set()
    choices: dict[str, set[str]] = {}
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        key = info.alias or name
        if extra.get("summary_element_property"):
            summary.add(key)
        choice = extra.get("one_of_many")
        if isinstance(choice, str):
            choices.setdefault(choice, set()).add(key)
        if info.is_required() or extra.get("element_required") or extra.get("one_of_many_required"):
            required.add(key)
    return _Definition(summary=frozenset(summary), required=frozenset(required),
                       choices={k: frozenset(v) for k, v in choices.items()})


def _kept(resource_type: str, fhir_version: str, how: Subsetting) -> frozenset[str] | None:
    """The top-level JSON names kept, or None for all but ``text`` (``_summary=data``)."""
    definition = _definition(resource_type, fhir_version)
    base = _ALWAYS | definition.required
    if how.elements is not None:
        wanted: set[str] = set()
        for name in how.elements:
            wanted |= definition.choices.get(name, {name})
        return base | wanted
    if how.summary == "true":
        return base | definition.summary
    if how.summary == "text":
        return base | {"text"}
    return None


def subset(resource: JSON, how: Subsetting, *, fhir_version: str) -> JSON:
    """``resource`` cut as ``how`` asks, tagged SUBSETTED; the resource itself when nothing is
    cut (``_summary=false``, none given) or its type is not one the adapter serves (an
    OperationOutcome entry of a search)."""
    resource_type = resource.get("resourceType")
    if not how.cuts or resource_type not in _CUT_TYPES:
        return resource
    kept = _kept(str(resource_type), fhir_version, how)
    one_of = _ONE_OF.get(str(resource_type), ())
    present = [k for k in one_of if k in resource]
    if kept is not None and present and not kept & set(present):
        kept = kept | {present[0]}
    out: JSON = {}
    for key, value in resource.items():
        name = key.removeprefix("_")  # a primitive's extensions follow it
        if (name != "text" if kept is None else name in kept):
            out[key] = value
        elif key == "extension" and resource_type in _PHOTO_TYPES and isinstance(value, list):
            safety = [e for e in value if isinstance(e, dict) and e.get("url") in _SAFETY_EXTENSIONS]
            if safety:
                out[key] = safety
    meta = dict(out.get("meta") or {})
    tags = [t for t in meta.get("tag") or [] if not (isinstance(t, dict) and t.get("code") == "SUBSETTED"
                                                     and t.get("system") == SUBSETTED["system"])]
    meta["tag"] = [*tags, dict(SUBSETTED)]
    out["meta"] = meta
    if "resourceType" in out:  # resourceType first, as FHIR JSON writes it
        out = {"resourceType": out.pop("resourceType"), **out}
    return out


__all__ = ["SUBSETTED", "SUMMARY_MODES", "Subsetting", "parse_subsetting", "subset"]
