"""FHIR HTTP details (R4 http.html) found by the black-box REST review (fhirrest): the charset of
every FHIR answer's media type (finding 3), and a batch entry answered as the same request alone
(finding 5)."""

from __future__ import annotations

import json
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from tests.conftest import ROOT
from tests.support.app import adapter_client, as_purpose, metadata, post_photo

SAMPLES = ROOT / "samples"
TREAT = as_purpose("TREAT")
FHIR_JSON = {"Content-Type": "application/fhir+json"}
R4_JSON = "application/fhir+json; charset=utf-8; fhirVersion=4.0"
R4_XML = "application/fhir+xml; charset=utf-8; fhirVersion=4.0"
R5_JSON = "application/fhir+json; charset=utf-8; fhirVersion=5.0"


def test_every_fhir_answer_names_its_charset(tmp_path: Path) -> None:
    """http.html#mime-type: responses SHALL set the charset to UTF-8 (HTTP's historic default is
    ISO-8859-1): successes, refusals (the error handler's, a middleware's), HEAD, a batch-response;
    R4 and R5, JSON and XML."""
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, SAMPLES / "wound.jpg", metadata()).json()["record"]
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": record}}]}
        answers = {
            "read": (client.get(f"/fhir/{record}", headers=TREAT), R4_JSON),
            "search": (client.get("/fhir/Media", headers=TREAT), R4_JSON),
            "metadata": (client.get("/fhir/metadata"), R4_JSON),
            "xml": (client.get(f"/fhir/{record}", headers={**TREAT, "Accept": "application/fhir+xml"}), R4_XML),
            "r5": (client.get("/fhir/metadata", headers={"Accept": "application/fhir+json; fhirVersion=5.0"}),
                   R5_JSON),
            "head": (client.head(f"/fhir/{record}", headers=TREAT), R4_JSON),
            "not found": (client.get("/fhir/Media/nothing", headers=TREAT), R4_JSON),
            "refused in xml": (client.get(f"/fhir/{record}", headers={"Accept": "application/fhir+xml"}), R4_XML),
            "batch": (client.post("/fhir", content=json.dumps(batch), headers={**FHIR_JSON, **TREAT}), R4_JSON),
        }
        for what, (answer, expected) in answers.items():
            assert answer.headers["content-type"] == expected, (what, answer.status_code, answer.headers)
        coded = client.post("/fhir/Consent", content=b"{}", headers={**FHIR_JSON, "Content-Encoding": "gzip"})
        assert coded.status_code == 415 and coded.headers["content-type"] == R4_JSON


def test_a_batch_head_or_delete_entry_answers_as_the_same_request_alone(tmp_path: Path) -> None:
    """http.html#transaction: each entry is processed as the interaction it is alone: HEAD of a
    record 200 (no resource: HEAD has no body), DELETE 405 (with why, as alone; the batch-response
    has no Allow header to carry), where both answered 400."""
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, SAMPLES / "wound.jpg", metadata()).json()["record"]
        alone_head = client.head(f"/fhir/{record}", headers=TREAT)
        alone_delete = client.delete(f"/fhir/{record}", headers=TREAT)
        assert (alone_head.status_code, alone_delete.status_code) == (200, 405)
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "HEAD", "url": record}},
            {"request": {"method": "DELETE", "url": record}},
            {"request": {"method": "HEAD", "url": "Media/nothing"}},
            {"request": {"method": "PUT", "url": record}}]}
        answer = client.post("/fhir", content=json.dumps(batch), headers={**FHIR_JSON, **TREAT})
        assert answer.status_code == 200, answer.text[:300]
        head, delete, missing, put = answer.json()["entry"]
        assert head["response"]["status"] == "200 OK" and "resource" not in head
        assert head["response"]["etag"] == alone_head.headers["etag"]
        assert parsedate_to_datetime(alone_head.headers["last-modified"]) == \
            datetime.fromisoformat(head["response"]["lastModified"])
        assert delete["response"]["status"] == "405 Method Not Allowed"
        assert delete["response"]["outcome"]["resourceType"] == "OperationOutcome"
        # what a batch entry may do with the URL: not the PATCH it takes alone (review codereview 8),
        # which a batch refuses (400, as the PUT below)
        assert "PATCH" in alone_delete.headers["allow"]
        said = delete["response"]["outcome"]["issue"][0]["diagnostics"]
        assert said.endswith("; in a batch this URL takes GET, HEAD") and "PATCH" not in said, said
        assert missing["response"]["status"] == "404 Not Found"
        assert put["response"]["status"] == "400 Bad Request"  # a write goes in a transaction
        # the record is still there
        assert client.get(f"/fhir/{record}", headers=TREAT).status_code == 200
