"""The adapter answers only requests for a host it serves (ADAPTER_BASE_URL's, ADAPTER_ALLOWED_HOSTS,
the names of its listening address): security review findings 1 (DNS rebinding) and 3 (the Host
header chose the adapter's address in the AuditEvents and every link it built).

A web page whose domain an attacker re-points at the adapter (DNS rebinding) sends same-origin
requests: no preflight, ``X-Purpose-Of-Use`` sent freely, answers readable, and its ``Origin``
equal to its ``Host``, which the cross-site check took for the adapter's own /docs page. Every such
request names the attacker's domain in ``Host``: it is answered 421 Misdirected Request before
anything is read of it. TestClient names the adapter ``testserver``: adapter_client lists that name
in ADAPTER_ALLOWED_HOSTS, as a deployment lists the names its reverse proxy forwards."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.app import adapter_client, as_purpose, consent_resource, metadata, post_photo

pytestmark = pytest.mark.integration

SAMPLES = ROOT / "samples"
REBOUND = "rebind.attacker.example:18200"
FHIR = {"Content-Type": "application/fhir+json"}


def _ingest(client: Any) -> dict[str, Any]:
    posted = post_photo(client, SAMPLES / "wound.jpg", metadata())
    assert posted.status_code == 201, posted.text
    return posted.json()


def _assert_misdirected(answer: Any) -> None:
    assert answer.status_code == 421, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"
    assert "ADAPTER_ALLOWED_HOSTS" in answer.json()["issue"][0]["diagnostics"]
    assert answer.headers["cache-control"] == "no-store" and answer.headers["x-request-id"]


def test_a_page_rebound_to_the_adapter_cannot_write_as_its_own(tmp_path: Path) -> None:
    """Review finding 1: the same POST that got 403 from another origin got 201 from a page whose
    domain resolved to the adapter (Origin == Host, Sec-Fetch-Site same-origin)."""
    same_origin = {"Host": REBOUND, "Origin": f"http://{REBOUND}", "Sec-Fetch-Site": "same-origin"}
    with adapter_client(tmp_path) as (client, services):
        before = len(services.store.list_audit(1000))
        _assert_misdirected(client.post("/fhir/Consent", json=consent_resource(["TRAIN"]),
                                        headers={**FHIR, **same_origin}))
        _assert_misdirected(post_photo(client, SAMPLES / "wound.jpg", metadata(), headers=same_origin))
        assert len(services.store.list_audit(1000)) == before  # nothing was read, nothing stored
        # the adapter's own page (/docs, under a name the adapter answers to) writes as before
        own = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"}
        assert post_photo(client, SAMPLES / "wound.jpg", metadata(), headers=own).status_code == 201


@pytest.mark.parametrize("host", [REBOUND, "evil.example.com", "pacs-archive.hospital.example", "testserver:8080",
                                  "testserver.evil.example", "10.9.9.9:80"])
def test_a_read_naming_another_host_is_refused_before_anything_is_read(tmp_path: Path, host: str) -> None:
    """Review findings 1 and 3: records and images were read (200) for any Host, and the Host was
    recorded as the adapter's network address in the AuditEvent."""
    with adapter_client(tmp_path) as (client, services):
        receipt = _ingest(client)
        before = len(services.store.list_audit(1000))
        for path in (f"/fhir/{receipt['record']}", f"/fhir/{receipt['binary']}", "/fhir/Media?patient:identifier=x|y"):
            _assert_misdirected(client.get(path, headers={**as_purpose("TREAT"), "Host": host}))
        assert len(services.store.list_audit(1000)) == before


def test_a_host_header_that_is_no_host_is_answered_400(tmp_path: Path) -> None:
    # RFC 9112 3.2: a Host field with an invalid value is a bad request, not a misdirected one
    with adapter_client(tmp_path) as (client, _):
        for host in ("testserver:http", "a b", "user@testserver", "[::1", "testserver:99999"):
            answer = client.get("/fhir/metadata", headers={"Host": host})
            assert answer.status_code == 400, (host, answer.text)
            assert answer.json()["issue"][0]["code"] == "invalid"


def test_links_and_the_audit_name_the_host_as_admitted(tmp_path: Path) -> None:
    """Without ADAPTER_BASE_URL the links and the adapter's network address in the AuditEvents
    name the host the request was admitted for, as listed (lower case, without the scheme's
    default port), never the Host header's own spelling of it."""
    with adapter_client(tmp_path, allowed_hosts="testserver, Adapter.Hospital.Example:8443") as (client, services):
        receipt = _ingest(client)
        read = client.get(f"/fhir/{receipt['record']}",
                          headers={**as_purpose("TREAT"), "Host": "ADAPTER.hospital.example:8443"})
        assert read.status_code == 200, read.text
        assert read.json()["content"]["url"].startswith("http://adapter.hospital.example:8443/fhir/Binary/")
        event = services.store.list_audit(1)[0]  # newest first: the read
        [server] = [a for a in event["agent"] if a["who"] == event["source"]["observer"]]
        assert server["network"]["address"] == "http://adapter.hospital.example:8443"
        default_port = client.get(f"/fhir/{receipt['record']}", headers={**as_purpose("TREAT"), "Host": "TestServer:80"})
        assert default_port.json()["content"]["url"].startswith("http://testserver/fhir/Binary/")


def test_links_come_from_the_base_url_whatever_host_was_admitted(tmp_path: Path) -> None:
    with adapter_client(tmp_path, base_url="https://adapter.hospital.example/imaging") as (client, _):
        receipt = _ingest(client)
        # the base URL's own host is admitted (a gateway forwarding the Host it was asked for)
        read = client.get(f"/fhir/{receipt['record']}",
                          headers={**as_purpose("TREAT"), "Host": "adapter.hospital.example"})
        assert read.status_code == 200, read.text
        assert read.json()["content"]["url"].startswith("https://adapter.hospital.example/imaging/fhir/Binary/")
        _assert_misdirected(client.get(f"/fhir/{receipt['record']}",
                                       headers={**as_purpose("TREAT"), "Host": "adapter.hospital.example.evil.example"}))
