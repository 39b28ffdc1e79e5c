"""The AuditEvents of the IHE MHD transactions the adapter serves (MHD 4.2.x,
https://profiles.ihe.net/ITI/MHD/): ITI-65 Provide Document Bundle at the Document Recipient
(IHE.MHD.ProvideBundle.Audit.Recipient: DCM 110107 Import), ITI-67 Find Document References and
ITI-68 Retrieve Document at the Document Responder (IHE.MHD.FindDocumentReferences.Audit.Responder,
IHE.MHD.RetrieveDocument.Audit.Responder: BALP PatientQuery and PatientRead with the transaction
as a second subtype). Found by an IHE ATNA review: all three were audited in the generic BALP
RESTful shape only, ITI-65 as a ``rest create`` naming no SubmissionSet."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, as_purpose, metadata, post_photo, seen_as
from tests.support.audit import caller_request_ids
from tests.support.mhd import provide_document_bundle

pytestmark = pytest.mark.integration

DOCUMENT = (ROOT / "samples" / "document.jpg").read_bytes()
DCM = "http://dicom.nema.org/resources/ontology/DCM"
IHE = "urn:ihe:event-type-code"
REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}
BY_PATIENT = f"patient.identifier={PATIENT['system']}|{PATIENT['value']}"


def _new_events(services: Any, before: int) -> list[dict[str, Any]]:
    """The events stored since there were ``before``, oldest first."""
    events = services.store.list_audit(10_000)
    return list(reversed(events[:len(events) - before]))


def _count(services: Any) -> int:
    return len(services.store.list_audit(10_000))


def _codes(codings: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["system"], c["code"]) for c in codings]


def _role(entity: dict[str, Any]) -> str:
    return str(entity.get("role", {}).get("code", ""))


def _by_type(event: dict[str, Any], code: str) -> dict[str, Any]:
    [agent] = [a for a in event["agent"] if a["type"]["coding"][0]["code"] == code]
    return agent


def _attachment_url(client: Any) -> str:
    r = client.post("/fhir", json=provide_document_bundle(DOCUMENT), headers=FHIR_JSON)
    assert r.status_code == 200, r.text
    found = client.get(f"/fhir/DocumentReference?{BY_PATIENT}", headers=as_purpose("TREAT")).json()
    return str(found["entry"][0]["resource"]["content"][0]["attachment"]["url"])


def test_a_provide_document_bundle_is_audited_as_mhds_import_naming_the_submission_set(tmp_path: Path) -> None:
    """ITI-65 at the Recipient: type DCM 110107 Import, subtype ITI-65, action C; the Document
    Source as Source (with its address), this server as Destination (the audit source, with its
    FHIR base as network address); the patient and the SubmissionSet by its uniqueId (System
    Object, role 20 Job). What the BALP event said is kept: the records stored, the purpose, the
    X-Request-Id."""
    with adapter_client(tmp_path) as (client, services):
        before = _count(services)
        r = client.post("/fhir", json=provide_document_bundle(DOCUMENT),
                        headers={**FHIR_JSON, **as_purpose("TREAT"), "X-Request-Id": "iti65-1"})
        assert r.status_code == 200, r.text
        [event] = _new_events(services, before)
        assert event["type"] == {"system": DCM, "code": "110107", "display": "Import"}
        assert _codes(event["subtype"]) == [(IHE, "ITI-65")] and event["action"] == "C"
        assert event["outcome"] == "0"
        source, recipient = _by_type(event, "110153"), _by_type(event, "110152")
        assert source["network"]["address"] == "testclient"
        assert recipient["who"] == event["source"]["observer"]
        assert recipient["network"] == {"address": "http://testserver/fhir", "type": "5"}
        [submission_set] = [e for e in event["entity"] if _role(e) == "20"]
        assert submission_set["what"] == {"identifier": {"system": "urn:ietf:rfc:3986",
                                                         "value": "urn:oid:1.2.3.4.99.1"}}
        assert submission_set["type"]["code"] == "2"
        [patient] = [e for e in event["entity"] if _role(e) == "1"]
        assert patient["what"]["identifier"] == PATIENT
        stored = [e["what"]["reference"] for e in event["entity"] if _role(e) == "4"]
        assert any(ref.startswith("DocumentReference/") for ref in stored)
        assert any(ref.startswith("Binary/") for ref in stored)
        assert caller_request_ids(event) == ["iti65-1"]
        [user] = [a for a in event["agent"] if a["requestor"]]
        assert user["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"


def test_a_transaction_without_a_submission_set_stays_a_balp_create(tmp_path: Path) -> None:
    """Only a Bundle in MHD's shape is an ITI-65: a plain FHIR transaction (a Binary and its
    DocumentReference, no SubmissionSet List) is audited as BALP's RESTful create."""
    with adapter_client(tmp_path) as (client, services):
        bundle = provide_document_bundle(DOCUMENT)
        bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "List"]
        del bundle["meta"]  # no MHD ProvideBundle profile either: a Bundle that claims one needs its SubmissionSet
        before = _count(services)
        assert client.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 200
        [event] = _new_events(services, before)
        assert _codes([event["type"]]) == [(REST["system"], "rest")]
        assert _codes(event["subtype"]) == [("http://hl7.org/fhir/restful-interaction", "create")]
        assert not [e for e in event["entity"] if _role(e) == "20"]


def test_a_provide_document_bundle_refused_is_audited_as_a_failed_import(tmp_path: Path) -> None:
    """A refusal of an ITI-65 is audited in ITI-65's shape, outcome 4: for a purpose that may not
    write (403), an unknown purpose (400), and again the same document sent as another
    SubmissionSet with another consent statement (409: the stored one stands)."""
    with adapter_client(tmp_path) as (client, services):
        for purpose, status in (("TRAIN", 403), ("NO-SUCH-PURPOSE", 400)):
            before = _count(services)
            r = client.post("/fhir", json=provide_document_bundle(DOCUMENT), headers={**FHIR_JSON,
                                                                                    **as_purpose(purpose)})
            assert r.status_code == status, r.text
            [event] = _new_events(services, before)
            assert event["type"]["code"] == "110107" and _codes(event["subtype"]) == [(IHE, "ITI-65")], purpose
            assert event["outcome"] == "4" and event["outcomeDesc"], purpose
            assert [e for e in event["entity"] if _role(e) == "20"], purpose


def test_a_find_document_references_is_audited_with_iti_67(tmp_path: Path) -> None:
    """ITI-67 at the Responder: BALP's PatientQuery (rest, search-type, action E, the query as
    received) with ITI-67 as a second subtype, by GET and by POST _search; a Media search and an
    R5 reader's search (no MHD 4.2 transaction: MHD's are R4's) stay BALP searches."""
    with adapter_client(tmp_path) as (client, services):
        _attachment_url(client)
        for request in (lambda: client.get(f"/fhir/DocumentReference?{BY_PATIENT}", headers=as_purpose("TREAT")),
                        lambda: client.post("/fhir/DocumentReference/_search", content=BY_PATIENT.encode(),
                                            headers={**as_purpose("TREAT"),
                                                     "Content-Type": "application/x-www-form-urlencoded"})):
            before = _count(services)
            assert request().status_code == 200
            [event] = _new_events(services, before)
            assert event["type"] == {**REST, "display": "RESTful Operation"}
            assert _codes(event["subtype"]) == [("http://hl7.org/fhir/restful-interaction", "search-type"),
                                                (IHE, "ITI-67")]
            assert event["action"] == "E" and event["outcome"] == "0"
            assert [e for e in event["entity"] if _role(e) == "24" and e["query"]]
            assert [e for e in event["entity"] if _role(e) == "1"]
            assert _by_type(event, "110152")["network"]["type"] == "5"
        for path, headers in (("/fhir/Media", {}), ("/fhir/DocumentReference", {
                "Accept": "application/fhir+json; fhirVersion=5.0"})):
            before = _count(services)
            assert client.get(f"{path}?{BY_PATIENT}", headers={**as_purpose("TREAT"), **headers}).status_code == 200
            events = _new_events(services, before)
            assert events and all(_codes(e["subtype"]) == [("http://hl7.org/fhir/restful-interaction", "search-type")]
                                  for e in events), path


def test_a_find_document_references_refused_for_its_purpose_is_audited_with_iti_67(tmp_path: Path) -> None:
    """A search without a purpose of use is refused (403) before anything is decided: audited as
    ITI-67 all the same, outcome 4, the query as received."""
    with adapter_client(tmp_path) as (client, services):
        before = _count(services)
        assert client.get(f"/fhir/DocumentReference?{BY_PATIENT}").status_code == 403
        [event] = _new_events(services, before)
        assert _codes(event["subtype"])[-1] == (IHE, "ITI-67") and event["outcome"] == "4"
        assert [e for e in event["entity"] if _role(e) == "24"]


def test_a_retrieve_document_is_audited_with_iti_68_and_the_document_as_report(tmp_path: Path) -> None:
    """ITI-68 at the Responder: BALP's PatientRead (rest, read, action R) with ITI-68 as a
    second subtype and the document's entity in role 3 Report; sent (0), not sent for the type
    asked (406: 4), refused by the consent decision (403: 4) and refused for want of a purpose
    (403: 4, no patient named: nothing was decided)."""
    with adapter_client(tmp_path) as (client, services):
        url = _attachment_url(client)
        binary = url.rsplit("/fhir/", 1)[1]
        for headers, status, outcome in (({**as_purpose("TREAT"), "Accept": "image/jpeg"}, 200, "0"),
                                         ({**as_purpose("TREAT"), "Accept": "image/png"}, 406, "4"),
                                         ({**as_purpose("TRAIN"), "Accept": "image/jpeg"}, 404, "4"),
                                         ({"Accept": "image/jpeg"}, 403, "4")):
            before = _count(services)
            # under TRAIN the Binary is named by its de-identified view's id; the audit names it as stored
            asked = url if headers.get("X-Purpose-Of-Use") != "TRAIN" else \
                f"{url.rsplit('/fhir/', 1)[0]}/fhir/{seen_as(services, 'TRAIN', binary)}"
            assert client.get(asked, headers=headers).status_code == status, headers
            [event] = _new_events(services, before)
            assert event["type"]["code"] == "rest" and event["action"] == "R", headers
            assert _codes(event["subtype"]) == [("http://hl7.org/fhir/restful-interaction", "read"),
                                                (IHE, "ITI-68")], headers
            assert event["outcome"] == outcome, headers
            [document] = [e for e in event["entity"] if e.get("what", {}).get("reference") == binary]
            assert _role(document) == "3", headers
            assert bool([e for e in event["entity"] if _role(e) == "1"]) == ("X-Purpose-Of-Use" in headers), headers


def test_a_photos_binary_stays_a_balp_read(tmp_path: Path) -> None:
    """Only a DocumentReference's document is retrieved by ITI-68: a Media's Binary is a BALP
    read, its record a Domain Resource."""
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        before = _count(services)
        assert client.get(f"/fhir/{receipt['binary']}", headers={**as_purpose("TREAT"),
                                                                 "Accept": "image/jpeg"}).status_code == 200
        [event] = _new_events(services, before)
        assert _codes(event["subtype"]) == [("http://hl7.org/fhir/restful-interaction", "read")]
        [binary] = [e for e in event["entity"] if e.get("what", {}).get("reference") == receipt["binary"]]
        assert _role(binary) == "4"


def test_a_submission_set_without_a_unique_id_is_named_by_its_full_url(tmp_path: Path) -> None:
    """The SubmissionSet's uniqueId is its identifier holding an OID (MHD 4.2 marks it usual,
    this suite's Bundles official); one sent without (MHD requires it: the Bundle is refused, 422,
    as it is read) is named in the audit of a refusal that comes before (a purpose that may not
    write, 403) by its entry's urn:uuid fullUrl."""
    with adapter_client(tmp_path) as (client, services):
        bundle = copy.deepcopy(provide_document_bundle(DOCUMENT))
        submission_set = bundle["entry"][0]
        submission_set["resource"]["identifier"] = [i for i in submission_set["resource"]["identifier"]
                                                    if not i["value"].startswith("urn:oid:")]
        before = _count(services)
        assert client.post("/fhir", json=bundle, headers=FHIR_JSON).status_code == 422
        [refused] = _new_events(services, before)  # a Bundle refused as read: a refused create (newwrites F5)
        assert refused["outcome"] == "4" and not [e for e in refused["entity"] if _role(e) == "1"]
        before = _count(services)
        r = client.post("/fhir", json=bundle, headers={**FHIR_JSON, **as_purpose("TRAIN")})
        assert r.status_code == 403, r.text
        [event] = _new_events(services, before)
        [entity] = [e for e in event["entity"] if _role(e) == "20"]
        assert entity["what"]["identifier"] == {"system": "urn:ietf:rfc:3986", "value": submission_set["fullUrl"]}
