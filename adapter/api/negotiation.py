"""FHIR version negotiation by the Accept header's ``fhirVersion`` parameter
(https://hl7.org/fhir/R4/http.html#version-parameter): R4 is the default, ``fhirVersion=5.0``
answers in R5."""

from __future__ import annotations

from typing import Literal

from adapter.api.accept import by_preference, media_ranges
from adapter.errors import NotAcceptable


def fhir_version(accept: str | None, format_param: str | None = None) -> Literal["4", "5"]:
    """'4' or '5': the ``fhirVersion`` of the first acceptable range that names one; a
    ``_format`` given overrides Accept, its ``fhirVersion`` parameter included
    (http.html#mime-type: "_format ... overrides the Accept header"; ``application/fhir+json;
    fhirVersion=5.0`` asks for R5, ``json`` alone for the default). NotAcceptable (406) for
    another version, by either."""
    if format_param is not None and format_param.strip():
        accept = format_param
    for media_range in media_ranges(accept, default=None):
        v = media_range.params.get("fhirversion")
        if v is None:
            continue
        if v.startswith("5.0"):
            return "5"
        if v.startswith("4.0"):
            return "4"
        raise NotAcceptable(f"fhirVersion {v[:10]} is not supported (4.0 or 5.0)")
    return "4"


def media_type(version: str) -> str:
    return f"application/fhir+json; fhirVersion={'5.0' if version == '5' else '4.0'}"


def wants_plain_json(accept: str | None) -> bool:
    """Does ``accept`` prefer plain ``application/json`` (no FHIR JSON ranked with or above it)?
    ``$versions`` then answers in its plain JSON form."""
    ranges = by_preference(media_ranges(accept, default=None))
    return bool(ranges) and ranges[0].media == "application/json"


def wants_dicom(accept: str | None) -> bool:
    """For a Binary: the record's DICOM object when ``accept`` prefers ``application/dicom``
    (RFC 9110 12.5.1: highest quality first, in the order given among equals), not merely lists
    it: ``q=0`` refuses it (12.4.2), and a type ranked above it is answered instead."""
    ranges = by_preference(media_ranges(accept, default=None))
    return bool(ranges) and ranges[0].media == "application/dicom"


def binary_answer(accept: str | None, content_type: str) -> Literal["content", "json"]:
    """What a Binary read answers (http.html#binary): its own content or the Binary as FHIR JSON,
    whichever ``accept`` prefers (RFC 9110 12.5.1: highest quality first, in the order given among
    equals); with no Accept, its content. NotAcceptable (406) when no range the client lists is
    either: IHE MHD Retrieve Document [ITI-68] answers "unable to format document in content types
    listed in the 'Accept' field" so, and the adapter does not transform documents."""
    ranges = by_preference(media_ranges(accept, default=None))
    media = content_type.split(";")[0].strip().lower()
    if not ranges:
        if accept and accept.strip(" ,"):  # every range it lists has quality 0: none is acceptable
            raise NotAcceptable(f"the Accept header refuses every type it lists; this document is {media}")
        return "content"
    for r in ranges:
        if r.media in ("*/*", f"{media.split('/')[0]}/*", media):
            return "content"
        if r.media in ("application/fhir+json", "application/json", "application/*"):
            return "json"
    raise NotAcceptable(f"this document is {media}, which the Accept header does not list (nor FHIR JSON): "
                        "it is not converted to another type")


def format_is_json(format_param: str | None) -> bool:
    """Does ``_format`` (http.html#mime-type) ask for JSON (``json``, a JSON media type)?"""
    if format_param is None or not format_param.strip():
        return False
    # an unencoded "+" in a query string arrives as a space (application/fhir json)
    return format_param.split(";")[0].strip().lower().replace(" ", "+") in _JSON_RANGES


#: What a FHIR JSON answer satisfies in an Accept header (http.html#mime-type).
_JSON_RANGES = frozenset({"*/*", "application/*", "application/fhir+json", "application/json", "json"})
#: FHIR's other representations, which this server does not produce.
_OTHER_FHIR = ("xml", "turtle", "ttl", "rdf")


def check_acceptable(accept: str | None, format_param: str | None = None, *, binary: bool = False) -> None:
    """Raise NotAcceptable (406) when the client asks only for what this server does not produce.

    ``_format`` (http.html#mime-type) overrides Accept: ``json`` or a JSON media type is
    answered whatever Accept says, ``xml``/``ttl`` and their media types are refused. Accept: some listed range (q above 0) must be
    FHIR JSON or a wildcard; for a Binary, whose read also answers with its own content (an image,
    application/dicom), only a list of nothing but FHIR XML or Turtle is refused."""
    if format_param is not None and format_param.strip():
        if not format_is_json(format_param):
            raise NotAcceptable(f"_format {format_param[:40]!r}: this server answers in FHIR JSON only")
        return  # _format overrides Accept
    ranges = [r.media for r in media_ranges(accept, default=None)]
    if not ranges:
        if accept and accept.strip(" ,") and not binary:
            # every range it lists has quality 0, "not acceptable" (RFC 9110 12.4.2, 12.5.1): FHIR
            # JSON too (a Binary's read decides it with its content type: binary_answer)
            raise NotAcceptable(f"the Accept header refuses every type it lists ({accept[:80]}); this server "
                                "answers in application/fhir+json")
        return  # no Accept: FHIR JSON it is
    if binary:
        if all(any(word in media for word in _OTHER_FHIR) for media in ranges):
            raise NotAcceptable("this server answers in FHIR JSON or the Binary's own content, not FHIR XML or Turtle")
        return
    if not any(media in _JSON_RANGES for media in ranges):
        raise NotAcceptable(f"this server answers in application/fhir+json only, not {(accept or '')[:80]}")
