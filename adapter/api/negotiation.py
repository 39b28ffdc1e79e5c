"""FHIR version negotiation by the Accept header's ``fhirVersion`` parameter
(https://hl7.org/fhir/R4/http.html#version-parameter): R4 is the default, ``fhirVersion=5.0``
answers in R5."""

from __future__ import annotations

from typing import Literal

from adapter.errors import NotSupported


def fhir_version(accept: str | None) -> Literal["4", "5"]:
    """'4' or '5'."""
    if not accept:
        return "4"
    for part in accept.split(","):
        for param in part.split(";")[1:]:
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "fhirversion":
                v = value.strip().strip('"')
                if v.startswith("5.0"):
                    return "5"
                if v.startswith("4.0"):
                    return "4"
                raise NotSupported(f"fhirVersion {v[:10]} is not supported (4.0 or 5.0)")
    return "4"


def media_type(version: str) -> str:
    return f"application/fhir+json; fhirVersion={'5.0' if version == '5' else '4.0'}"


def wants_fhir_json(accept: str | None) -> bool:
    """For Binary: FHIR JSON when asked for (fhir+json or json), else the raw content."""
    if not accept:
        return False
    a = accept.lower()
    return "fhir+json" in a or "application/json" in a
