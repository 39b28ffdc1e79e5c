"""IHE MHD Retrieve Document [ITI-68] (https://profiles.ihe.net/ITI/MHD/ITI-68.html): the GET of a
DocumentReference's attachment url as a Document Consumer sends it, answered with the document
in the MIME type it asks for, or the error of Table 3.68.4.2.2-1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, as_purpose
from tests.support.mhd import provide_document_bundle

pytestmark = pytest.mark.integration

DOCUMENT = (ROOT / "samples" / "document.jpg").read_bytes()


def _attachment(client: Any) -> dict[str, Any]:
    r = client.post("/fhir", json=provide_document_bundle(DOCUMENT), headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.text
    found = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT['system']}|{PATIENT['value']}"
                       "&status=current", headers=as_purpose("TREAT")).json()
    return dict(found["entry"][0]["resource"]["content"][0]["attachment"])


def test_the_document_is_answered_in_its_mime_type(tmp_path: Path) -> None:
    """2:3.68.4.2.2: 200, the body the document; its contentType is the type assured (also for a
    wildcard, or no Accept)."""
    with adapter_client(tmp_path) as (client, _):
        attachment = _attachment(client)
        for accept in (attachment["contentType"], "image/*", "*/*", None,
                       "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"):
            r = client.get(attachment["url"], headers={**as_purpose("TREAT"), **({"Accept": accept} if accept else {})})
            assert r.status_code == 200, (accept, r.text[:200])
            assert r.headers["content-type"] == "image/jpeg" and r.content[:2] == b"\xff\xd8", accept


def test_a_type_the_document_is_not_in_gets_406_not_another_type(tmp_path: Path) -> None:
    """Table 3.68.4.2.2-1: "Document Responder unable to format document in content types listed
    in the 'Accept' field: 406 Not Acceptable"; the responder need not transform. A JPEG was
    answered as image/jpeg to a consumer that listed only image/png or application/pdf."""
    with adapter_client(tmp_path) as (client, _):
        attachment = _attachment(client)
        for accept in ("image/png", "application/pdf", "text/plain, image/gif"):
            r = client.get(attachment["url"], headers={**as_purpose("TREAT"), "Accept": accept})
            assert r.status_code == 406, (accept, r.status_code, r.headers.get("content-type"))
            assert r.json()["resourceType"] == "OperationOutcome"


def test_the_accept_headers_preference_decides_between_the_document_and_binary_json(tmp_path: Path) -> None:
    """RFC 9110 12.5.1: the quality values order what the consumer prefers. A consumer listing the
    document's type first and FHIR JSON as a fallback (q=0.9) got the Binary's JSON."""
    with adapter_client(tmp_path) as (client, _):
        attachment = _attachment(client)
        r = client.get(attachment["url"], headers={**as_purpose("TREAT"),
                                                   "Accept": "image/jpeg, application/fhir+json;q=0.9"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        r = client.get(attachment["url"], headers={**as_purpose("TREAT"),
                                                   "Accept": "image/jpeg;q=0.5, application/fhir+json"})
        assert r.status_code == 200 and r.json()["resourceType"] == "Binary"


def test_a_document_not_sent_for_its_type_is_audited_as_a_read_that_failed(tmp_path: Path) -> None:
    """Found by the diff review: a 406 came after the read was decided and audited as a read
    (outcome 0), though nothing was sent. Now the read that failed is audited outcome 4 with why;
    a refused reader still gets its 403 (and its refusal audited) whatever it accepts."""
    with adapter_client(tmp_path) as (client, services):
        attachment = _attachment(client)
        before = len(services.store.list_audit(1000))
        r = client.get(attachment["url"], headers={**as_purpose("TREAT"), "Accept": "image/png"})
        assert r.status_code == 406
        [event] = services.store.list_audit(1000)[:len(services.store.list_audit(1000)) - before]
        assert event["subtype"][0]["code"] == "read" and event["outcome"] == "4"
        assert "not sent" in event["outcomeDesc"] and "image/jpeg" in event["outcomeDesc"]
        assert client.get(attachment["url"], headers={**as_purpose("TREAT"), "Accept": "image/jpeg"}).status_code == 200
        assert services.store.list_audit(1)[0]["outcome"] == "0"
        refused = client.get(attachment["url"], headers={**as_purpose("TRAIN"), "Accept": "image/png"})
        assert refused.status_code in (403, 404) and "image/jpeg" not in refused.text


def test_unknown_and_refused_documents(tmp_path: Path) -> None:
    """404 for a URI not known; a read without a stated purpose is refused (403), and a purpose the
    patient's consent does not cover is answered as Appendix Z.7 allows (403 or 404), saying little."""
    with adapter_client(tmp_path) as (client, _):
        attachment = _attachment(client)
        base = attachment["url"].rsplit("/", 1)[0]
        assert client.get(f"{base}/no-such-document", headers={**as_purpose("TREAT"), "Accept": "image/jpeg"}
                          ).status_code == 404
        assert client.get(attachment["url"], headers={"Accept": "image/jpeg"}).status_code == 403
        assert client.get(attachment["url"], headers={**as_purpose("TRAIN"), "Accept": "image/jpeg"}
                          ).status_code in (403, 404)


def test_the_dicom_object_is_answered_only_where_the_accept_header_prefers_it(tmp_path: Path) -> None:
    """``Accept: application/dicom`` on a Binary answers the record's DICOM object; RFC 9110
    12.4.2 makes ``q=0`` "not acceptable". The DICOM branch looked for application/dicom anywhere
    in the header, its quality ignored: a consumer that refused it (``q=0``) or ranked it below
    the document's own type got the DICOM object, Part 10 bytes it had not asked for."""
    with adapter_client(tmp_path) as (client, _):
        attachment = _attachment(client)
        treat = as_purpose("TREAT")
        for accept in ("image/jpeg, application/dicom;q=0", "application/dicom;q=0.2, image/jpeg"):
            r = client.get(attachment["url"], headers={**treat, "Accept": accept})
            assert r.status_code == 200, (accept, r.text[:200])
            assert r.headers["content-type"] == "image/jpeg", accept
        for accept in ("application/dicom", "application/dicom, image/*;q=0.1"):
            r = client.get(attachment["url"], headers={**treat, "Accept": accept})
            assert r.status_code == 200 and r.headers["content-type"] == "application/dicom", accept
        r = client.get(attachment["url"], headers={**treat, "Accept": "application/dicom;q=0"})
        assert r.status_code == 406, r.headers.get("content-type")
