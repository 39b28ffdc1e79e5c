"""A version id is an ``id`` (FHIR R4 datatypes.html#id), compared as a string (review EHR: vread
``_history/01`` answered version 1). The adapter's are "1", "2"…: ``01`` names no version, in a
vread (404) and in an ETag (``W/"01"`` matches no version: If-Match 412, If-None-Match no 304)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.app import (
    adapter_client,
    as_purpose,
    consent_resource,
    mark_entered_in_error,
    metadata,
    post_photo,
)

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
TREAT = as_purpose("TREAT")


def test_a_vread_of_a_version_id_with_a_leading_zero_is_404(tmp_path: Path) -> None:
    """Test seen failing: 200, versionId "1"."""
    with adapter_client(tmp_path) as (client, _):
        receipt = post_photo(client, WOUND, metadata()).json()
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).json()
        for resource in (receipt["record"], receipt["binary"], receipt["provenance"], f"Consent/{consent['id']}"):
            assert client.get(f"/fhir/{resource}/_history/1", headers=TREAT).status_code == 200, resource
            for vid in ("01", "001", "0001"):
                r = client.get(f"/fhir/{resource}/_history/{vid}", headers=TREAT)
                assert r.status_code == 404, (resource, vid, r.text)
                assert r.json()["resourceType"] == "OperationOutcome"
        # in a batch too: each entry is read as the request would be
        batch = client.post("/fhir", headers=TREAT, json={"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"{receipt['record']}/_history/01"}},
            {"request": {"method": "GET", "url": f"{receipt['record']}/_history/1"}}]})
        assert batch.status_code == 200, batch.text
        assert [e["response"]["status"][:3] for e in batch.json()["entry"]] == ["404", "200"]


def test_an_etag_with_a_leading_zero_names_no_version(tmp_path: Path) -> None:
    """Test seen failing: If-Match W/"01" updated version 1 of a Consent (and let a GET and a
    PATCH through); If-None-Match compared the strings already (no 304), kept so."""
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, WOUND, metadata()).json()["record"]
        for url in (f"/fhir/{record}", f"/fhir/{record}/_history/1"):
            assert client.get(url, headers={**TREAT, "If-Match": 'W/"01"'}).status_code == 412, url
            assert client.get(url, headers={**TREAT, "If-Match": 'W/"01", W/"1"'}).status_code == 200, url
            assert client.get(url, headers={**TREAT, "If-None-Match": 'W/"01"'}).status_code == 200, url
            assert client.get(url, headers={**TREAT, "If-None-Match": 'W/"1"'}).status_code == 304, url
        # a Consent update: If-Match W/"01" is stale, nothing written
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).json()
        consent["status"] = "inactive"
        url = f"/fhir/Consent/{consent['id']}"
        stale = client.put(url, json=consent, headers={"If-Match": 'W/"01"'})
        assert stale.status_code == 412 and stale.json()["resourceType"] == "OperationOutcome", stale.text
        held = client.get(url, headers=TREAT)
        assert held.json()["meta"]["versionId"] == "1" and held.json()["status"] == "active"
        assert client.put(url, json=consent, headers={"If-Match": 'W/"1"'}).status_code == 200
        # marking a record entered-in-error: the same
        r = mark_entered_in_error(client, record, **{"If-Match": 'W/"01"'})
        assert r.status_code == 412, r.text
        assert client.get(f"/fhir/{record}", headers=TREAT).json()["status"] == "completed"
