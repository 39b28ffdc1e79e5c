"""FHIR content negotiation (https://hl7.org/fhir/R4/http.html#mime-type): the format, FHIR JSON
(the default) or FHIR XML, by ``_format`` or else the Accept header's preference; and the version
by the ``fhirVersion`` parameter of the media type (http.html#version-parameter): R4 is the
default, ``fhirVersion=5.0`` answers in R5. Turtle is not produced (406)."""

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


Format = Literal["json", "xml"]


def media_type(version: str, fmt: Format = "json") -> str:
    """The FHIR media type of ``version`` and ``fmt``, as a request asks for it (Accept)."""
    return f"application/fhir+{fmt}; fhirVersion={'5.0' if version == '5' else '4.0'}"


def answer_media_type(version: str | None, fmt: Format = "json") -> str:
    """The Content-Type of a FHIR answer: the media type, naming ``version`` when given, with
    ``charset=utf-8`` (http.html#mime-type, R4 and R5 alike: requests and responses SHALL set
    the charset to UTF-8, HTTP's historic default being ISO-8859-1, which would mangle a
    patient's name or note in a client that falls back on it)."""
    if version is None:
        return f"application/fhir+{fmt}; charset=utf-8"
    return f"application/fhir+{fmt}; charset=utf-8; fhirVersion={'5.0' if version == '5' else '4.0'}"


def response_format(accept: str | None, format_param: str | None = None) -> Format:
    """The format of a FHIR answer: ``_format`` when given (http.html#mime-type: it "overrides
    the Accept header"; ``xml``, ``text/xml``, ``application/xml`` and ``application/fhir+xml``
    mean XML), else the first range of ``accept``, highest quality first (RFC 9110 12.5.1), that
    is FHIR XML or FHIR JSON (a wildcard is JSON, the default). :func:`check_acceptable` has
    refused what is neither."""
    if format_param is not None and format_param.strip():
        return "xml" if _format_media(format_param) in _XML_FORMATS else "json"
    for r in by_preference(media_ranges(accept, default=None)):
        if r.media in _XML_RANGES:
            return "xml"
        if r.media in _JSON_RANGES:
            return "json"
    return "json"


def body_format(content_type: str | None) -> Format | None:
    """The format of a FHIR request body by its Content-Type (the JSON and XML media types
    http.html#mime-type names, FHIR's and the generic ones); None for another type."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media in ("application/fhir+json", "application/json"):
        return "json"
    if media in _XML_RANGES:
        return "xml"
    return None


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


def binary_answer(accept: str | None, content_type: str) -> Literal["content", "resource"]:
    """What a Binary read answers (http.html#binary): its own content or the Binary resource (in
    FHIR JSON or XML, :func:`response_format`), whichever ``accept`` prefers (RFC 9110 12.5.1: highest quality first, in the order given among
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
        # FHIR XML by its own type only: a browser's application/xml;q=0.9 still gets the image
        if r.media in _JSON_RANGES or r.media == "application/fhir+xml":
            return "resource"
    raise NotAcceptable(f"this document is {media}, which the Accept header does not list (nor FHIR JSON or XML): "
                        "it is not converted to another type")


def format_is_fhir(format_param: str | None) -> bool:
    """Does ``_format`` (http.html#mime-type) ask for FHIR JSON or XML (``json``, ``xml``, one
    of their media types), the Binary resource rather than its content?"""
    if format_param is None or not format_param.strip():
        return False
    media = _format_media(format_param)
    return media in _JSON_FORMATS or media in _XML_FORMATS


def _format_media(format_param: str) -> str:
    # an unencoded "+" in a query string arrives as a space (application/fhir json)
    return format_param.split(";")[0].strip().lower().replace(" ", "+")


#: What a FHIR JSON answer satisfies in an Accept header (http.html#mime-type).
_JSON_RANGES = frozenset({"*/*", "application/*", "application/fhir+json", "application/json"})
#: What a FHIR XML answer satisfies in an Accept header: FHIR's own type and the generic ones
#: http.html#mime-type names beside it.
_XML_RANGES = frozenset({"application/fhir+xml", "application/xml", "text/xml"})
#: The values of ``_format`` that mean JSON, and XML (http.html#mime-type).
_JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})
_XML_FORMATS = frozenset({"xml", "text/xml", "application/xml", "application/fhir+xml"})
#: FHIR's other representation (Turtle), which this server does not produce.
_OTHER_FHIR = ("turtle", "ttl", "rdf")


def check_acceptable(accept: str | None, format_param: str | None = None, *, binary: bool = False) -> None:
    """Raise NotAcceptable (406) when the client asks only for what this server does not produce.

    ``_format`` (http.html#mime-type) overrides Accept: ``json``, ``xml`` or one of their media
    types is answered whatever Accept says, ``ttl`` (and anything else) is refused. Accept: some
    listed range (q above 0) must be FHIR JSON, FHIR XML or a wildcard; for a Binary, whose read
    also answers with its own content (an image, application/dicom), only a list of nothing but
    Turtle is refused."""
    if format_param is not None and format_param.strip():
        if not format_is_fhir(format_param):
            raise NotAcceptable(f"_format {format_param[:40]!r}: this server answers in FHIR JSON or XML")
        return  # _format overrides Accept
    ranges = [r.media for r in media_ranges(accept, default=None)]
    if not ranges:
        if accept and accept.strip(" ,") and not binary:
            # every range it lists has quality 0, "not acceptable" (RFC 9110 12.4.2, 12.5.1): FHIR
            # JSON too (a Binary's read decides it with its content type: binary_answer)
            raise NotAcceptable(f"the Accept header refuses every type it lists ({accept[:80]}); this server "
                                "answers in application/fhir+json or application/fhir+xml")
        return  # no Accept: FHIR JSON it is
    if binary:
        if all(any(word in media for word in _OTHER_FHIR) for media in ranges):
            raise NotAcceptable("this server answers in FHIR JSON or XML or the Binary's own content, not Turtle")
        return
    if not any(media in _JSON_RANGES or media in _XML_RANGES for media in ranges):
        raise NotAcceptable(f"this server answers in application/fhir+json or application/fhir+xml, not "
                            f"{(accept or '')[:80]}")
