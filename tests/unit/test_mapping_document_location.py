"""IHE MHD Document Location: a record's relative ``Binary/<id>`` attachment url completed
against the FHIR base; nothing else touched, the stored resource not changed."""

from __future__ import annotations

import copy

from adapter.mapping.document_location import with_document_location

BASE = "https://images.example.org/fhir"


def test_a_document_references_attachment_url_is_completed() -> None:
    stored = {"resourceType": "DocumentReference", "id": "d",
              "content": [{"attachment": {"url": "Binary/b-1", "contentType": "image/jpeg"}, "format": {}}]}
    before = copy.deepcopy(stored)
    out = with_document_location(stored, BASE + "/")
    assert out["content"][0]["attachment"] == {"url": f"{BASE}/Binary/b-1", "contentType": "image/jpeg"}
    assert out["content"][0]["format"] == {}
    assert stored == before


def test_a_medias_content_url_is_completed() -> None:
    out = with_document_location({"resourceType": "Media", "content": {"url": "Binary/b-2"}}, BASE)
    assert out["content"]["url"] == f"{BASE}/Binary/b-2"


def test_what_is_not_a_relative_binary_url_is_left_as_it_is() -> None:
    for url in ("https://elsewhere.example/Binary/b", "urn:uuid:00000000-0000-4000-8000-000000000000",
                "DocumentReference/x", "Binary/a/b"):
        resource = {"resourceType": "DocumentReference", "content": [{"attachment": {"url": url}}]}
        assert with_document_location(resource, BASE) == resource
    consent = {"resourceType": "Consent", "sourceAttachment": {"url": "Binary/b"}}
    assert with_document_location(consent, BASE) is consent
    assert with_document_location({"resourceType": "Media"}, BASE) == {"resourceType": "Media"}
