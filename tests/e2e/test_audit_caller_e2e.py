"""End to end: who an AuditEvent says asked, over the real HTTP server (``python -m adapter serve``).

Found by the privacy officer's audit review (F1): uvicorn trusted ``X-Forwarded-For`` from
127.0.0.1 by default, so any process on the host chose the address a break-glass read was
recorded under; and a caller's ``X-Request-Id`` was recorded as the request's id, though two
requests could carry the same one. The address recorded is the TCP peer's (IHE BALP: "as known
by TCP connection information"; DICOM PS3.15 A.5 Network Access Point); a forwarded address is
honoured only from a proxy ADAPTER_TRUSTED_PROXIES names, and then recorded beside the peer.
Each request is recorded under the adapter's own unique id, the caller's X-Request-Id beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT
from tests.support.audit import exported_trail
from tests.support.fhir_validator import validate_r4
from tests.support.server import running_adapter

PATIENT = {"system": "urn:oid:2.999.1.1", "value": "XFF-0001"}
FORGED = "203.0.113.66"
REQUEST_ID_SYSTEM = "urn:clinical-image-adapter:request-id"


def _photo(http: httpx.Client) -> str:
    meta = '{"patient": {"system": "urn:oid:2.999.1.1", "value": "XFF-0001"}, "kind": "clinical", ' \
           '"source": "clinician", "consent": {"purposes": ["TREAT"], "method": "verbal"}}'
    with (ROOT / "samples" / "wound.jpg").open("rb") as photo:
        posted = http.post("/photos", files={"file": ("w.jpg", photo, "image/jpeg"),
                                             "metadata": (None, meta, "application/json")})
    assert posted.status_code == 201, posted.text
    record: str = posted.json()["record"]
    return record


def _break_glass_reads(tmp_path: Path, **env: str) -> list[dict[str, Any]]:
    """Two break-glass reads from loopback, each saying it was forwarded for FORGED, under the same
    X-Request-Id; the AuditEvents of those reads, as the export gives them."""
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false", **env) as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        record = _photo(http)
        for _ in range(2):
            read = http.get(f"/fhir/{record}", headers={"X-Purpose-Of-Use": "BTG", "X-Forwarded-For": FORGED,
                                                        "X-Request-Id": "q-dup"})
            assert read.status_code == 200, read.text
            assert read.headers["x-request-id"] == "q-dup"  # the caller's, echoed as before
    events = [e for e in exported_trail(tmp_path / "data")
              if e.get("subtype", [{}])[0].get("code") == "read"]
    assert len(events) == 2
    assert validate_r4(events) == []
    return events


def _request_ids(event: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in event["entity"] if e["type"].get("code") == "XrequestId"]


def test_a_forwarded_address_from_loopback_is_not_believed_by_default(tmp_path: Path) -> None:
    events = _break_glass_reads(tmp_path)
    for event in events:
        assert FORGED not in str(event)
        client, _, user = event["agent"]
        assert client["network"] == {"address": "127.0.0.1", "type": "2"}
        assert client["who"]["display"] == "127.0.0.1"
        assert user["who"]["display"] == "client 127.0.0.1"
    # the same X-Request-Id twice: each event names the adapter's own id for its request, unique,
    # and the caller's beside it
    [first], [second] = (_request_ids(e) for e in events)
    assert first["what"]["identifier"]["system"] == REQUEST_ID_SYSTEM
    assert first["what"]["identifier"]["value"] != second["what"]["identifier"]["value"]
    assert first["detail"] == second["detail"] == [{"type": "X-Request-Id", "valueString": "q-dup"}]


def test_a_trusted_proxy_s_forwarded_address_is_recorded_with_the_proxy(tmp_path: Path) -> None:
    events = _break_glass_reads(tmp_path, ADAPTER_TRUSTED_PROXIES="127.0.0.1")
    for event in events:
        client, _, user, forwarded = event["agent"]
        # the network access point stays the TCP connection's peer: the proxy
        assert client["network"] == {"address": "127.0.0.1", "type": "2"}
        assert client["who"]["display"] == "127.0.0.1"
        assert forwarded["network"] == {"address": FORGED, "type": "2"}
        assert forwarded["who"]["display"] == FORGED and forwarded["requestor"] is False
        assert "X-Forwarded-For" in forwarded["type"]["text"]
        assert user["who"]["display"] == f"client {FORGED} (forwarded by 127.0.0.1)"
