"""A URL with a trailing slash (adapter.api.trailing_slash) over the real app on a real SQLite
store: answered as the URL without it, never redirected (review EHR F7)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import ROOT
from tests.support.app import adapter_client, as_purpose, consent_resource, metadata, post_photo

WOUND = ROOT / "samples" / "wound.jpg"


def test_a_trailing_slash_is_answered_as_the_url_without_it_never_redirected(tmp_path: Path) -> None:
    """Review finding (EHR F7): /fhir/Media/, /fhir/, /dicomweb/studies/ and POST /fhir/Consent/
    got Starlette's empty 307 to the same URL without the slash, built from the request's Host
    header (not ADAPTER_BASE_URL), so behind a gateway it pointed at an internal host or at any
    host a caller named, and a client following the POST's re-sent the write. Each is now
    answered as the URL without the slash would be; the links of the answer name the base."""
    treat = as_purpose("TREAT", Host="ehr-gw.example.org")
    # the name the gateway forwards is one the adapter answers for (adapter.api.allowed_hosts)
    with adapter_client(tmp_path, allowed_hosts="testserver, ehr-gw.example.org") as (client, _):
        assert post_photo(client, WOUND, metadata()).status_code == 201
        for path in ("/fhir/Media/", "/fhir/Media/?_count=1", "/fhir/", "/dicomweb/studies/", "/fhir/metadata/",
                     "/fhir/Media//"):
            slashed = client.get(path, headers=treat, follow_redirects=False)
            plain = client.get(path.replace("//", "/").replace("/?", "?").rstrip("/"), headers=treat,
                               follow_redirects=False)
            assert slashed.status_code == plain.status_code != 307, (path, slashed.status_code, slashed.text)
            assert "location" not in slashed.headers, path
            assert "ehr-gw.example.org" not in slashed.text or "ehr-gw.example.org" in plain.text, path
            if slashed.headers.get("content-type", "").startswith("application/fhir+json"):
                body, same = slashed.json(), plain.json()
                assert body["resourceType"] == same["resourceType"], path
                assert body.get("total") == same.get("total"), path
        head = client.head("/fhir/Media/", headers=treat, follow_redirects=False)
        assert head.status_code == 200 and not head.content
        created = client.post("/fhir/Consent/", json=consent_resource(["TRAIN"]), follow_redirects=False,
                              headers={"Content-Type": "application/fhir+json"})
        assert created.status_code == 201, created.text
        assert created.headers["location"].startswith("http://testserver/fhir/Consent/")
        found = client.get("/fhir/Consent?status=active", headers=as_purpose("TREAT")).json()
        assert found["total"] == 2  # the photo's, and this one: stored once
