"""The HTTP dates of the running server (uvicorn, as deployed): review finding F7."""

from __future__ import annotations

import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx

from tests.support.app import consent_resource
from tests.support.server import running_adapter

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def test_no_answer_has_a_last_modified_later_than_its_date(tmp_path: Path) -> None:
    """Review finding F7: a Consent update answered ``Last-Modified`` a second later than its
    ``Date`` (RFC 9110 8.8.2.1: an origin server MUST NOT). uvicorn's Date is refreshed once a
    second, so it lagged the clock the stored instant was read from. Updates spread over a few
    seconds (a lag of up to a second each time): every answer has one Date, not before its
    Last-Modified. Test seen failing: Last-Modified a second after Date."""
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false") as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        created = client.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        consent = created.json()
        late = []
        for n in range(12):
            time.sleep(0.27)
            consent = {**consent, "status": "inactive" if n % 2 == 0 else "active"}
            answer = client.put(f"/fhir/Consent/{consent['id']}", json=consent,
                                headers={**FHIR_JSON, "If-Match": f'W/"{consent["meta"]["versionId"]}"'})
            assert answer.status_code == 200, answer.text
            consent = answer.json()
            assert len(answer.headers.get_list("date")) == 1
            read = client.get(f"/fhir/Consent/{consent['id']}", headers={"X-Purpose-Of-Use": "TREAT"})
            for response in (answer, read):
                if parsedate_to_datetime(response.headers["last-modified"]) > \
                        parsedate_to_datetime(response.headers["date"]):
                    late.append((response.headers["date"], response.headers["last-modified"]))
        assert late == []
