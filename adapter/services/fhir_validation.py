"""Structural validation of incoming FHIR R4 JSON with fhir.resources (R4B models read R4:
standards.md §1), errors pointing at the element."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ValidationError

from adapter.errors import InvalidResource
from adapter.mapping.fhir_json import check_json_representation

_MODULES = {"Consent": "consent", "Media": "media", "DocumentReference": "documentreference",
            "Binary": "binary", "Bundle": "bundle", "Provenance": "provenance"}


def validate_r4_resource(resource: dict[str, Any]) -> None:
    rtype = resource.get("resourceType")
    module = _MODULES.get(str(rtype))
    if module is None:
        raise InvalidResource(f"unsupported resourceType {str(rtype)[:40]}", expression="resourceType")
    model = getattr(importlib.import_module(f"fhir.resources.R4B.{module}"), str(rtype))
    check_json_representation(resource, str(rtype))
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        errors = exc.errors()
        paths = [".".join([str(rtype)] + [str(p) for p in e["loc"] if not str(p).startswith("function")])
                 for e in errors[:10]]
        text = "; ".join(f"{p}: {e['msg']}" for p, e in zip(paths, errors[:10], strict=False))
        raise InvalidResource(f"invalid {rtype}: {text}", expression=paths) from exc
    except (KeyError, AttributeError, TypeError, ValueError) as exc:
        # fhir.resources raises these (not ValidationError) for some wrong JSON types
        raise InvalidResource(f"invalid {rtype}: an element has the wrong type ({type(exc).__name__})",
                              expression=str(rtype)) from exc
