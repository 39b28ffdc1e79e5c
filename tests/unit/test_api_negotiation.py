"""What a Binary read answers for an Accept header (adapter.api.negotiation.binary_answer): its
own content or Binary JSON, by the header's preference; 406 for neither (IHE MHD ITI-68)."""

from __future__ import annotations

import pytest

from adapter.api.negotiation import binary_answer
from adapter.errors import NotAcceptable


@pytest.mark.parametrize(("accept", "answer"), [
    (None, "content"), ("", "content"), ("image/jpeg", "content"), ("image/*", "content"), ("*/*", "content"),
    ("application/fhir+json", "json"), ("application/json", "json"),
    ("image/jpeg, application/fhir+json;q=0.9", "content"), ("image/jpeg;q=0.5, application/fhir+json", "json"),
    ("application/fhir+json;q=0.2, */*;q=0.8", "content"), ("image/png, application/*;q=0.1", "json"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "content"),
    ("image/jpeg;q=0, application/fhir+json", "json"),
])
def test_the_preferred_of_content_and_json(accept: str | None, answer: str) -> None:
    assert binary_answer(accept, "image/jpeg") == answer


@pytest.mark.parametrize("accept", ["image/png", "application/pdf, text/plain", "image/jpeg;q=0", "application/xml"])
def test_neither_is_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        binary_answer(accept, "image/jpeg")


def test_a_pdf_is_its_own_content_for_application_wildcards() -> None:
    assert binary_answer("application/*", "application/pdf") == "content"
    assert binary_answer("application/pdf; charset=binary", "application/pdf") == "content"
