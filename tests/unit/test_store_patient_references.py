"""adapter.store.patient_references.restricted_to: the photo records a Consent is restricted to
(provision.data), which stop it holding its Patient reference once all are entered in error."""

from __future__ import annotations

from typing import Any

import pytest

from adapter.store.patient_references import restricted_to


def _consent(provision: Any) -> dict[str, Any]:
    return {"resourceType": "Consent", "status": "active", "provision": provision}


def _data(*references: str) -> list[dict[str, Any]]:
    return [{"meaning": "instance", "reference": {"reference": r}} for r in references]


@pytest.mark.parametrize("provision,records", [
    # the Consent POST /photos records with a photo, and a transaction's with its documents
    ({"type": "permit", "data": _data("Media/abc")}, {"Media/abc"}),
    ({"type": "permit", "data": _data("DocumentReference/d1", "Media/m-2")}, {"DocumentReference/d1", "Media/m-2"}),
    # an absolute URL and a version name the record
    ({"data": _data("https://ehr.example.org/fhir/Media/abc/_history/2")}, {"Media/abc"}),
    # a nested provision's data counts with its parent's
    ({"data": _data("Media/a"), "provision": [{"type": "deny", "data": _data("Media/b")}, {"type": "deny"}]},
     {"Media/a", "Media/b"}),
])
def test_a_consent_restricted_to_photo_records(provision: Any, records: set[str]) -> None:
    assert restricted_to(_consent(provision)) == frozenset(records)


@pytest.mark.parametrize("provision", [
    {"type": "permit"},                                        # the patient's Consent for all their photos
    {"type": "permit", "data": []},
    {"type": "permit", "provision": [{"data": _data("Media/a")}]},  # restricted below the top only
    {"data": _data("Media/a", "Binary/b")},                    # not a photo record
    {"data": _data("Media/a/")},                                # no literal reference to a record
    {"data": [{"meaning": "instance", "reference": {"identifier": {"value": "x"}}}]},
    {"data": _data("Media/a"), "provision": [{"data": _data("Patient/p-1")}]},
    {"data": "Media/a"},
    None,
])
def test_a_consent_not_restricted_to_photo_records_only_holds_its_reference(provision: Any) -> None:
    assert restricted_to(_consent(provision)) is None
