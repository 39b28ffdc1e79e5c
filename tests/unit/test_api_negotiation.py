"""What a Binary read answers for an Accept header (adapter.api.negotiation.binary_answer): its
own content or the Binary resource (FHIR JSON or XML), by the header's preference; 406 for
neither (IHE MHD ITI-68). The format of a FHIR answer (response_format): ``_format``, else the
preferred FHIR JSON or XML range of Accept."""

from __future__ import annotations

import pytest

from adapter.api.negotiation import (
    binary_answer,
    body_format,
    check_acceptable,
    fhir_version,
    response_format,
)
from adapter.errors import NotAcceptable


@pytest.mark.parametrize(("accept", "answer"), [
    (None, "content"), ("", "content"), ("image/jpeg", "content"), ("image/*", "content"), ("*/*", "content"),
    ("application/fhir+json", "resource"), ("application/json", "resource"),
    ("image/jpeg, application/fhir+json;q=0.9", "content"), ("image/jpeg;q=0.5, application/fhir+json", "resource"),
    ("application/fhir+json;q=0.2, */*;q=0.8", "content"), ("image/png, application/*;q=0.1", "resource"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "content"),
    ("image/jpeg;q=0, application/fhir+json", "resource"),
    ("application/fhir+xml", "resource"), ("application/fhir+xml; fhirVersion=5.0", "resource"),
    ("image/jpeg;q=0.5, application/fhir+xml", "resource"), ("image/jpeg, application/fhir+xml;q=0.5", "content"),
])
def test_the_preferred_of_content_and_the_resource(accept: str | None, answer: str) -> None:
    assert binary_answer(accept, "image/jpeg") == answer


@pytest.mark.parametrize("accept", ["image/png", "application/pdf, text/plain", "image/jpeg;q=0", "application/xml",
                                    "text/turtle"])
def test_neither_is_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        binary_answer(accept, "image/jpeg")


def test_a_pdf_is_its_own_content_for_application_wildcards() -> None:
    assert binary_answer("application/*", "application/pdf") == "content"
    assert binary_answer("application/pdf; charset=binary", "application/pdf") == "content"


@pytest.mark.parametrize("accept, format_param, version", [
    (None, "application/fhir+json; fhirVersion=5.0", "5"),
    (None, "application/fhir json; fhirVersion=5.0", "5"),  # an unencoded "+" arrives as a space
    ("application/fhir+json; fhirVersion=5.0", "json", "4"),
    ("application/fhir+json; fhirVersion=5.0", "application/fhir+json", "4"),
    ("application/fhir+json; fhirVersion=5.0", None, "5"),
])
def test_format_overrides_accept_with_its_fhir_version(accept: str | None, format_param: str | None,
                                                       version: str) -> None:
    """Review finding: ``_format=application/fhir+json; fhirVersion=5.0`` answered R4 (http.html
    #mime-type: _format overrides Accept, its version parameter too)."""
    assert fhir_version(accept, format_param) == version


def test_a_format_naming_another_fhir_version_is_not_acceptable() -> None:
    with pytest.raises(NotAcceptable):
        fhir_version(None, "application/fhir+json; fhirVersion=3.0")


def test_fhir_json_refused_by_quality_zero_is_not_acceptable() -> None:
    """Review finding: ``Accept: application/fhir+json;q=0`` was answered in FHIR JSON (RFC 9110
    12.4.2: q=0 means not acceptable), whereas a Binary answered 406 for image/jpeg;q=0."""
    with pytest.raises(NotAcceptable):
        check_acceptable("application/fhir+json;q=0")
    check_acceptable(None)
    check_acceptable("application/fhir+json;q=0, application/json")


@pytest.mark.parametrize("accept, format_param, fmt", [
    (None, None, "json"), ("*/*", None, "json"), ("application/fhir+json", None, "json"),
    ("application/fhir+xml", None, "xml"), ("application/xml", None, "xml"), ("text/xml", None, "xml"),
    ("application/fhir+json;q=0.5, application/fhir+xml", None, "xml"),
    ("application/fhir+xml;q=0.5, application/fhir+json", None, "json"),
    ("application/fhir+xml, application/fhir+json", None, "xml"),  # equal quality: the order given
    ("application/fhir+xml;q=0.5, */*", None, "json"), ("image/jpeg, application/fhir+xml", None, "xml"),
    ("application/fhir+xml; fhirVersion=5.0", None, "xml"),
    # _format overrides Accept (http.html#mime-type: these four values are XML, three are JSON)
    ("application/fhir+json", "xml", "xml"), (None, "text/xml", "xml"), (None, "application/xml", "xml"),
    (None, "application/fhir+xml", "xml"), (None, "application/fhir xml", "xml"),
    ("application/fhir+xml", "json", "json"), ("application/fhir+xml", "application/fhir+json", "json"),
])
def test_the_format_of_an_answer(accept: str | None, format_param: str | None, fmt: str) -> None:
    check_acceptable(accept, format_param)
    assert response_format(accept, format_param) == fmt


@pytest.mark.parametrize("accept, format_param", [
    ("text/turtle", None), ("application/fhir+turtle", None), (None, "ttl"), (None, "text/turtle"),
    ("application/fhir+xml;q=0", None), (None, "html"),
])
def test_turtle_is_not_produced(accept: str | None, format_param: str | None) -> None:
    with pytest.raises(NotAcceptable):
        check_acceptable(accept, format_param)


@pytest.mark.parametrize("content_type, fmt", [
    ("application/fhir+json", "json"), ("application/json; charset=utf-8", "json"),
    ("application/fhir+xml; fhirVersion=4.0", "xml"), ("application/xml", "xml"), ("text/xml", "xml"),
    ("text/turtle", None), (None, None),
])
def test_the_format_of_a_body(content_type: str | None, fmt: str | None) -> None:
    assert body_format(content_type) == fmt
