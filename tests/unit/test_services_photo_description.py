"""A retry's description against the one its photo was stored with (adapter.services.photo_description)."""

from __future__ import annotations

from typing import Any

import pytest

from adapter.model.photo import TransactionPhotoMetadata
from adapter.services.photo_description import DESCRIPTION, describe, differing

pytestmark = pytest.mark.unit

LOINC = "http://loinc.org"


def _meta(**document: Any) -> TransactionPhotoMetadata:
    return TransactionPhotoMetadata.model_validate({
        "patient": {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}, "kind": "document",
        "source": "clinician", "document": document})


def test_the_document_is_described_by_the_elements_of_its_document_reference() -> None:
    """MHD review m2: a DocumentReference's metadata was one field, "document", so a 409 could
    not say which element of it differs."""
    first = _meta(type={"coding": [{"system": LOINC, "code": "34108-1"}]},
                  identifier=[{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:1"}])
    again = _meta(type={"coding": [{"system": LOINC, "code": "11488-4"}]},
                  identifier=[{"system": "urn:ietf:rfc:3986", "value": "urn:uuid:2"}])
    assert differing({DESCRIPTION: describe(first)}, again) == ["DocumentReference.identifier",
                                                                 "DocumentReference.type"]
    assert differing({DESCRIPTION: describe(first)}, first) == []


def test_a_description_stored_with_the_document_whole_is_compared_so() -> None:
    """A receipt stored before the parts were named keeps "document" as one digest: a retry that
    is the same is still the same, one that differs is named as it was."""
    first = _meta(type={"coding": [{"system": LOINC, "code": "34108-1"}]})
    stored = {DESCRIPTION: describe(first, document_whole=True)}
    assert "document" in stored[DESCRIPTION]
    assert differing(stored, first) == []
    assert differing(stored, _meta(type={"coding": [{"system": LOINC, "code": "11488-4"}]})) == ["document"]


def _photo(taken_at: str) -> TransactionPhotoMetadata:
    return TransactionPhotoMetadata.model_validate({
        "patient": {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}, "kind": "clinical",
        "source": "clinician", "takenAt": taken_at})


def test_the_same_instant_in_another_offset_is_the_same_taken_at() -> None:
    """Mobile review 2, finding 5: ``+01:00`` and ``Z`` for one instant were "other details"."""
    stored = {DESCRIPTION: describe(_photo("2026-11-28T10:15:30+01:00"))}
    assert differing(stored, _photo("2026-11-28T09:15:30Z")) == []
    assert differing(stored, _photo("2026-11-28T20:15:30+11:00")) == []
    assert differing(stored, _photo("2026-11-28T10:15:30Z")) == ["takenAt"]
    assert differing(stored, _photo("2026-11-28")) == ["takenAt"]


def test_a_description_stored_with_the_offset_as_sent_still_matches_its_retry() -> None:
    """A receipt stored before instants were described in UTC holds the digest of the offset as
    sent: the same text still matches it (another offset cannot: a digest is no instant)."""
    stored = {DESCRIPTION: describe(_photo("2026-11-28T10:15:30+01:00"), instants_as_sent=True)}
    assert differing(stored, _photo("2026-11-28T10:15:30+01:00")) == []
    assert differing(stored, _photo("2026-11-28T11:15:30+01:00")) == ["takenAt"]
