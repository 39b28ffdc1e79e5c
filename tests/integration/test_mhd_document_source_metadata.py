"""What of an IHE MHD Document Source's DocumentReference (ITI-65) the adapter keeps, and what it
says it did not keep, over the real app and a real SQLite store (MHD review `mhd`, findings 1, 2,
3, 5, 7, 8 and 9): authors without an identifier, a DocumentReference filed as a Media, the
SHA-1 of unchanged bytes, the SubmissionSet's and masterIdentifier's checks, a replay's header,
a retried Consent with another date."""

from __future__ import annotations

import base64
import copy
import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, as_purpose, consent_resource, metadata, post_photo
from tests.support.fhir_factories import jpeg_bytes
from tests.support.mhd import provide_document_bundle, provide_documents_bundle

pytestmark = pytest.mark.integration

DOCUMENT = (ROOT / "samples" / "document.jpg").read_bytes()
FHIR = {"Content-Type": "application/fhir+json"}
PATIENT_ID = f"{PATIENT['system']}|{PATIENT['value']}"
NOT_SAVED = "XDSExtraMetadataNotSaved"


def _stored(services: Any) -> int:
    with services.store.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM resources")).scalar_one())


def _record(client: Any, location: str) -> dict[str, Any]:
    r = client.get("/fhir/" + "/".join(location.split("/")[:2]), headers=as_purpose("TREAT"))
    assert r.status_code == 200, r.text
    return dict(r.json())


def _issues(entry: dict[str, Any]) -> dict[str, tuple[str, str, str | None]]:
    """The entry's outcome issues by their expression: (severity, diagnostics, details.text)."""
    return {i["expression"][0] if i.get("expression") else "": (i["severity"], i.get("diagnostics", ""),
                                                                 i.get("details", {}).get("text"))
            for i in entry["response"].get("outcome", {}).get("issue", [])}


_BOB = {"resourceType": "Practitioner", "id": "a1", "name": [{"given": ["Bob"], "family": "Jones"}]}
_ORG = {"resourceType": "Organization", "id": "org", "name": "Some Hospital"}
_EMAIL = {"resourceType": "Practitioner", "id": "pr", "telecom": [{"system": "email", "value": "jo@example.org"}]}
_ROLE = {"resourceType": "PractitionerRole", "id": "role", "practitioner": {"display": "Dr Ray Role"}}
_EMPTY_ROLE = {"resourceType": "PractitionerRole", "id": "role", "active": True}


@pytest.mark.parametrize(("contained", "authors", "kept", "warned"), [
    ([_BOB], [{"reference": "#a1"}], [{"display": "Bob Jones"}], {}),
    ([_ORG], [{"reference": "#org"}], [{"display": "Some Hospital"}], {}),
    ([], [{"display": "Dr Who"}], [{"display": "Dr Who"}], {}),
    ([_ROLE], [{"reference": "#role"}], [{"display": "Dr Ray Role"}], {}),
    ([_EMAIL], [{"reference": "#pr"}], None, {"author[0]": "no identifier"}),
    ([_EMPTY_ROLE], [{"reference": "#role"}], None, {"author[0]": "no identifier"}),
    # IHE MHD "Comprehensive complete" (ex-ProvideBundles5.fsh): a name-only Organization, an email-only Practitioner
    ([_ORG, _EMAIL], [{"reference": "#org"}, {"reference": "#pr"}], [{"display": "Some Hospital"}],
     {"author[1]": "only one author"}),
    # the first that can be kept is, the other said
    ([_EMAIL, _BOB], [{"reference": "#pr"}, {"reference": "#a1"}], [{"display": "Bob Jones"}],
     {"author[0]": "no identifier"}),
    # a contained author kept as its identifier and name: its other elements said
    ([{**_BOB, "identifier": [{"system": "urn:oid:2.999.1.2", "value": "dr-b"}], "telecom": [{"value": "1"}]}],
     [{"reference": "#a1"}], [{"identifier": {"system": "urn:oid:2.999.1.2", "value": "dr-b"}, "display": "Bob Jones"}],
     {"author[0]": "telecom"}),
    # the re-test after the MHD fixes (N3): the organization was dropped unsaid, and the warning
    # said "stored as its identifier and name" of a role that has no identifier
    ([{**_ROLE, "organization": {"display": "Org"}, "code": [{"text": "surgeon"}]}], [{"reference": "#role"}],
     [{"display": "Dr Ray Role"}],
     {"author[0]": "(a contained PractitionerRole) was stored as its practitioner's name: code, organization not "
                   "stored"}),
    ([{**_BOB, "identifier": [{"system": "urn:oid:2.999.1.2", "value": "dr-b"}]}],
     [{"reference": "#a1"}], [{"identifier": {"system": "urn:oid:2.999.1.2", "value": "dr-b"}, "display": "Bob Jones"}],
     {}),
], ids=["name-only Practitioner", "name-only Organization", "display only", "PractitionerRole with a display",
        "telecom-only Practitioner", "empty PractitionerRole", "IHE Comprehensive example", "first keepable",
        "telecom of a kept author", "organization of a kept role", "identifier and name"])
def test_an_author_without_an_identifier_is_kept_by_its_name_or_said_not_stored(
        tmp_path: Path, contained: list[dict[str, Any]], authors: list[dict[str, Any]], kept: Any,
        warned: dict[str, str]) -> None:
    """MHD review finding 1: an author given by name only (normal in MHD; the IHE examples have a
    name-only Organization and an email-only Practitioner) was dropped with no warning, and in the
    IHE example the warning said the first author was kept when none was. Kept now as a Reference
    whose display is the name (and identifier when it has one); what cannot be kept is said, at the
    author it concerns."""
    bundle = provide_document_bundle(DOCUMENT)
    document = bundle["entry"][1]["resource"]
    if contained:
        document["contained"] = copy.deepcopy(contained)
    document["author"] = authors
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        entry = r.json()["entry"][1]
        stored = _record(client, entry["response"]["location"])
        assert stored.get("author") == kept, stored.get("author")
        said = {k.removeprefix("Bundle.entry[1].resource."): v for k, v in _issues(entry).items()
                if ".author" in k}
        assert set(said) == set(warned), said
        for where, words in warned.items():
            severity, diagnostics, code = said[where]
            assert severity == "warning" and code == NOT_SAVED and words in diagnostics, said[where]


def test_a_media_operator_given_by_display_only_is_kept(tmp_path: Path) -> None:
    """Media.operator takes the same path as a DocumentReference's author (this Media, of kind
    document, is filed as a DocumentReference: its operator is the author)."""
    bundle = provide_document_bundle(DOCUMENT)
    document = bundle["entry"][1]["resource"]
    media = {"resourceType": "Media", "status": "completed", "subject": document["subject"],
             "extension": document["extension"], "operator": {"display": "Nurse Ann"},
             "content": {"contentType": "image/jpeg", "url": document["content"][0]["attachment"]["url"]}}
    bundle["entry"][1]["resource"] = media
    bundle["entry"][1]["request"]["url"] = "Media"
    del bundle["entry"][0]  # a plain transaction: MHD has no Media
    del bundle["meta"]
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        stored = _record(client, r.json()["entry"][0]["response"]["location"])
        assert stored["author"] == [{"display": "Nurse Ann"}]


def test_the_title_put_before_the_description_is_said(tmp_path: Path) -> None:
    """MHD review finding 1: the attachment title was put before the sender's description without
    a word. The stored description is the title and the description: said in the outcome."""
    bundle = provide_document_bundle(DOCUMENT)
    document = bundle["entry"][1]["resource"]
    document["description"] = "a complete comprehensive document"
    document["content"][0]["attachment"]["title"] = "Hello World"
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        entry = r.json()["entry"][1]
        stored = _record(client, entry["response"]["location"])
        assert stored["description"] == "Hello World\n\na complete comprehensive document"
        _, diagnostics, code = _issues(entry)["Bundle.entry[1].resource.description"]
        assert code == NOT_SAVED and "title" in diagnostics


def _clinical(bundle: dict[str, Any]) -> dict[str, Any]:
    """What a plain MHD Document Source sends of a photo: no photo-kind extension (a clinical
    photo, filed as a Media), a Consent in the Bundle."""
    del bundle["entry"][1]["resource"]["extension"]
    bundle["entry"][1]["resource"]["type"] = {"coding": [{"system": "http://loinc.org", "code": "72170-4"}]}
    bundle["entry"].append({"fullUrl": "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000c1",
                            "request": {"method": "POST", "url": "Consent"}, "resource": consent_resource(["TREAT"])})
    return bundle


def test_a_document_reference_filed_as_a_media_keeps_its_unique_id_and_says_so(tmp_path: Path) -> None:
    """MHD review findings 2 and 3: a DocumentReference filed as a Media (a clinical photo) lost
    its masterIdentifier (the uniqueId) and content.format without a word, and nothing said it was
    filed as a Media, which an R4 ITI-67 DocumentReference search does not find. The uniqueId is
    now an identifier of the Media (found by ``identifier=``), content.format is said not stored,
    and an information issue says the entry was filed as a Media and how to find it."""
    bundle = _clinical(provide_document_bundle(DOCUMENT))
    bundle["entry"][1]["resource"]["content"][0]["format"] = {
        "system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode", "code": "urn:ihe:pcc:xphr:2007"}
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        entry = r.json()["entry"][1]
        location = entry["response"]["location"]
        assert location.startswith("Media/")
        stored = _record(client, location)
        assert {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.99.2"} in stored["identifier"]
        found = client.get(f"/fhir/Media?patient.identifier={PATIENT_ID}&identifier=urn:ietf:rfc:3986|"
                           "urn:oid:1.2.3.4.99.2", headers=as_purpose("TREAT")).json()
        assert found["total"] == 1, found
        said = _issues(entry)
        severity, diagnostics, code = said["Bundle.entry[1].resource.content[0].format"]
        assert code == NOT_SAVED and "Media" in diagnostics
        severity, diagnostics, code = said["Bundle.entry[1].resource.masterIdentifier"]
        assert code == NOT_SAVED and "identifier" in diagnostics
        severity, diagnostics, code = said["Bundle.entry[1].resource"]
        assert severity == "information" and "Media" in diagnostics and "ITI-67" in diagnostics


def test_the_sha1_of_bytes_stored_as_sent_is_kept(tmp_path: Path) -> None:
    """MHD review finding 7: the verified SHA-1 was dropped even when the stored bytes are the
    bytes sent (a JPEG without metadata), the warning saying the document was stored without its
    metadata. It is kept then, and not said; bytes changed still drop it, saying why."""
    plain = jpeg_bytes()
    bundle = provide_document_bundle(plain)
    sent_hash = bundle["entry"][1]["resource"]["content"][0]["attachment"]["hash"]
    assert sent_hash == base64.b64encode(hashlib.sha1(plain).digest()).decode()
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        entry = r.json()["entry"][1]
        stored = _record(client, entry["response"]["location"])
        assert stored["content"][0]["attachment"]["size"] == len(plain), "stored as sent"
        assert stored["content"][0]["attachment"]["hash"] == sent_hash
        assert not [k for k in _issues(entry) if k.endswith(".hash")]
        r = client.post("/fhir", json=provide_document_bundle(DOCUMENT), headers=FHIR)
        entry = r.json()["entry"][1]
        stored = _record(client, entry["response"]["location"])
        assert "hash" not in stored["content"][0]["attachment"]
        _, diagnostics, _ = _issues(entry)["Bundle.entry[1].resource.content[0].attachment.hash"]
        assert "metadata" in diagnostics and "other bytes" in diagnostics


def _no_master_identifier(bundle: dict[str, Any]) -> dict[str, Any]:
    del bundle["entry"][1]["resource"]["masterIdentifier"]
    return bundle


def _no_items(bundle: dict[str, Any]) -> dict[str, Any]:
    del bundle["entry"][0]["resource"]["entry"]
    return bundle


def _second_not_listed(bundle: dict[str, Any]) -> dict[str, Any]:
    del bundle["entry"][0]["resource"]["entry"][1]
    return bundle


@pytest.mark.parametrize(("malform", "where"), [
    (_no_master_identifier, "Bundle.entry[1].resource.masterIdentifier"),
    (_no_items, "Bundle.entry[0].resource.entry"),
    (_second_not_listed, "Bundle.entry[3].resource"),
], ids=["no masterIdentifier", "SubmissionSet without entry", "a DocumentReference not listed"])
def test_an_mhd_submission_missing_a_unique_id_or_an_item_is_refused(tmp_path: Path, malform: Any,
                                                                     where: str) -> None:
    """MHD review finding 8: an MHD DocumentReference without masterIdentifier
    (IHE.MHD.Minimal.DocumentReference 1..1), a SubmissionSet with no entry, and one that does not
    list a DocumentReference of the Bundle were stored. Not whole submissions: refused (422)
    naming the element, nothing stored."""
    bundle = malform(provide_documents_bundle([DOCUMENT, jpeg_bytes()]))
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text
        [issue] = r.json()["issue"]
        assert issue["expression"] == [where], issue
        assert _stored(services) == 0


def test_a_replayed_transaction_says_it_is_a_replay(tmp_path: Path) -> None:
    """MHD review finding 9: POST /photos answers a retry with Idempotent-Replayed: true, POST /fhir
    did not."""
    bundle = provide_document_bundle(DOCUMENT)
    with adapter_client(tmp_path) as (client, _):
        first = client.post("/fhir", json=bundle, headers={**FHIR, "Idempotency-Key": "k-1"})
        assert first.status_code == 200 and "Idempotent-Replayed" not in first.headers
        again = client.post("/fhir", json=bundle, headers={**FHIR, "Idempotency-Key": "k-1"})
        assert again.status_code == 200, again.text
        assert again.headers.get("Idempotent-Replayed") == "true"


def test_a_retried_bundle_whose_consent_has_another_date_is_refused(tmp_path: Path) -> None:
    """MHD review finding 5: a retry whose Consent differs only in dateTime was answered as stored,
    the new date dropped. Refused as other consents are (409 stored-with-other-details)."""
    bundle = _clinical(provide_document_bundle(DOCUMENT))
    with adapter_client(tmp_path) as (client, services):
        assert client.post("/fhir", json=bundle, headers={**FHIR, "Idempotency-Key": "k-2"}).status_code == 200
        stored = _stored(services)
        same = client.post("/fhir", json=bundle, headers={**FHIR, "Idempotency-Key": "k-2"})
        assert same.status_code == 200, same.text
        bundle["entry"][-1]["resource"]["dateTime"] = "2026-11-20T10:00:00Z"
        again = client.post("/fhir", json=bundle, headers={**FHIR, "Idempotency-Key": "k-2"})
        assert again.status_code == 409, again.text
        codes = [c["code"] for c in again.json()["issue"][0]["details"]["coding"]]
        assert "stored-with-other-details" in codes
        assert _stored(services) == stored


def test_a_retried_photo_whose_consent_has_another_date_is_refused(tmp_path: Path) -> None:
    """The same over POST /photos: consent.date changed in a retry was dropped (201 replayed)."""
    photo = ROOT / "samples" / "wound.jpg"
    with adapter_client(tmp_path) as (client, _):
        consent = {"purposes": ["TREAT"], "method": "verbal", "date": "2026-11-26T10:00:00Z"}
        first = post_photo(client, photo, metadata(consent=consent), headers={"Idempotency-Key": "k-3"})
        assert first.status_code == 201, first.text
        same = post_photo(client, photo, metadata(consent={**consent, "date": "2026-11-26T11:00:00+01:00"}),
                          headers={"Idempotency-Key": "k-3"})
        assert same.status_code == 201 and same.headers.get("Idempotent-Replayed") == "true", same.text
        again = post_photo(client, photo, metadata(consent={**consent, "date": "2026-11-20"}),
                           headers={"Idempotency-Key": "k-3"})
        assert again.status_code == 409, again.text
        codes = [c["code"] for c in again.json()["issue"][0]["details"]["coding"]]
        assert "stored-with-other-details" in codes
