"""End to end: the adapter behind a TLS-terminating reverse proxy (nginx ``proxy_pass
http://127.0.0.1:8080``, ``proxy_set_header Host $host``, ``X-Forwarded-Proto $scheme``), over the
real HTTP server. The proxy's requests name the public host, which the Host allow-list admits as
listed (ADAPTER_BASE_URL or ADAPTER_ALLOWED_HOSTS, adapter.api.allowed_hosts); the scheme the
links are built with is the proxy's ``X-Forwarded-Proto`` only when the proxy is trusted
(ADAPTER_TRUSTED_PROXIES, adapter.api.forwarded), never a caller's word otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT
from tests.support.server import running_adapter

PUBLIC = "images.hospital.example"
META = ('{"patient": {"system": "urn:oid:2.999.1.1", "value": "PRX-0001"}, "kind": "clinical", '
        '"source": "clinician", "consent": {"purposes": ["TREAT"], "method": "verbal"}}')


def _posted(http: httpx.Client, **headers: str) -> httpx.Response:
    with (ROOT / "samples" / "wound.jpg").open("rb") as photo:
        return http.post("/photos", headers=headers, files={"file": ("w.jpg", photo, "image/jpeg"),
                                                            "metadata": (None, META, "application/json")})


def _links(http: httpx.Client, record: str, **headers: str) -> tuple[str, str]:
    """The Binary URL of the record's Media and the self link of a search finding it, as read."""
    read = http.get(f"/fhir/{record}", headers={"X-Purpose-Of-Use": "TREAT", **headers})
    assert read.status_code == 200, read.text
    found = http.get("/fhir/Media", params={"patient:identifier": "urn:oid:2.999.1.1|PRX-0001"},
                     headers={"X-Purpose-Of-Use": "TREAT", **headers})
    assert found.status_code == 200, found.text
    media: dict[str, Any] = read.json()
    [self_link] = [link["url"] for link in found.json()["link"] if link["relation"] == "self"]
    return str(media["content"]["url"]), str(self_link)


def test_a_trusted_proxy_s_https_and_public_host_make_the_links(tmp_path: Path) -> None:
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false", ADAPTER_TRUSTED_PROXIES="127.0.0.1",
                         ADAPTER_ALLOWED_HOSTS=PUBLIC) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        proxied = {"Host": PUBLIC, "X-Forwarded-Proto": "https"}
        posted = _posted(http, **proxied)
        assert posted.status_code == 201, posted.text
        assert posted.headers["location"].startswith(f"https://{PUBLIC}/fhir/Media/"), posted.headers
        binary, self_link = _links(http, posted.json()["record"], **proxied)
        assert binary.startswith(f"https://{PUBLIC}/fhir/Binary/"), binary
        assert self_link.startswith(f"https://{PUBLIC}/fhir/Media?"), self_link
        # a client on the adapter's own address is not the proxy's public name: its links say so
        binary, _ = _links(http, posted.json()["record"])
        assert binary.startswith(f"{server.url}/fhir/Binary/"), binary
        # another host, though the proxy is trusted: not admitted
        other = http.get("/fhir/metadata", headers={"Host": "evil.example", "X-Forwarded-Proto": "https"})
        assert other.status_code == 421, other.text


def test_an_untrusted_caller_s_forwarded_proto_is_not_believed(tmp_path: Path) -> None:
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false", ADAPTER_ALLOWED_HOSTS=PUBLIC) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        posted = _posted(http, Host=PUBLIC, **{"X-Forwarded-Proto": "https"})
        assert posted.status_code == 201, posted.text
        assert posted.headers["location"].startswith(f"http://{PUBLIC}/fhir/Media/"), posted.headers
        binary, self_link = _links(http, posted.json()["record"], Host=PUBLIC, **{"X-Forwarded-Proto": "https"})
        assert binary.startswith(f"http://{PUBLIC}/fhir/Binary/"), binary
        assert self_link.startswith(f"http://{PUBLIC}/fhir/Media?"), self_link


def test_behind_a_proxy_the_base_url_names_the_public_https_address(tmp_path: Path) -> None:
    """ADAPTER_BASE_URL set to the proxy's public https URL: the proxy's requests (its Host, https)
    are admitted and every link is the base URL's, whoever asks."""
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false", ADAPTER_TRUSTED_PROXIES="127.0.0.1",
                         ADAPTER_BASE_URL=f"https://{PUBLIC}") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        proxied = {"Host": PUBLIC, "X-Forwarded-Proto": "https"}
        posted = _posted(http, **proxied)
        assert posted.status_code == 201, posted.text
        binary, self_link = _links(http, posted.json()["record"], **proxied)
        assert binary.startswith(f"https://{PUBLIC}/fhir/Binary/"), binary
        assert self_link.startswith(f"https://{PUBLIC}/fhir/Media?"), self_link
        binary, _ = _links(http, posted.json()["record"])  # on the listening address itself
        assert binary.startswith(f"https://{PUBLIC}/fhir/Binary/"), binary

