"""IHE MHD Provide Document Bundle [ITI-65] (https://profiles.ihe.net/ITI/MHD/ITI-65.html) as a
Document Source sends it, over the real app and a real SQLite store: the Minimal ProvideBundle
with its SubmissionSet List, and the push case where the Bundle carries the Patient (2:3.65.4.1.2.2)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from adapter.mapping.ingest_warnings import FILED_FOR_ANOTHER_PATIENT_WARNING
from tests.conftest import ROOT, record_emitted
from tests.support.app import PATIENT, adapter_client, as_purpose, consent_resource, metadata
from tests.support.fhir_factories import jpeg_bytes
from tests.support.mhd import ingest_warnings, provide_document_bundle

pytestmark = pytest.mark.integration

DOCUMENT = (ROOT / "samples" / "document.jpg").read_bytes()
FHIR = {"Content-Type": "application/fhir+json"}
PATIENT_ID = f"{PATIENT['system']}|{PATIENT['value']}"
OTHER_ID = {"system": "urn:oid:2.16.756.5.30.1.123.100.1.1", "value": "756.1234.5678.97"}
PHOTO_KIND = "http://clinical-image-adapter.org/fhir/StructureDefinition/photo-kind"


def _stored(services: Any) -> int:
    with services.store.engine.connect() as conn:
        return int(conn.execute(text("SELECT COUNT(*) FROM resources")).scalar_one())


def _found(client: Any) -> list[dict[str, Any]]:
    r = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&status=current",
                   headers=as_purpose("TREAT"))
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]


def _with_patient(bundle: dict[str, Any], patient: dict[str, Any], *, subject: dict[str, Any] | None = None,
                  full_url: str = "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000a") -> dict[str, Any]:
    """The push case: the Patient in the Bundle, the subjects referencing its fullUrl."""
    out = copy.deepcopy(bundle)
    for entry in out["entry"]:
        if "subject" in entry["resource"]:
            entry["resource"]["subject"] = subject if subject is not None else {"reference": full_url}
    out["entry"].append({"fullUrl": full_url, "resource": patient, "request": {"method": "POST", "url": "Patient"}})
    return out


def test_a_minimal_provide_document_bundle_is_stored_and_answered_entry_by_entry(tmp_path: Path) -> None:
    """The SubmissionSet is acknowledged (not stored: the adapter keeps no registry of
    submissions); the DocumentReference and the Binary are created, 201 with their locations,
    in the request's order (2:3.65.4.2.2)."""
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=provide_document_bundle(DOCUMENT), headers=FHIR)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["type"] == "transaction-response"
        submission_set, document_reference, binary = (e["response"] for e in answer["entry"])
        # acknowledged, and said to be not stored (there is no location to give)
        assert submission_set["status"] == "200 OK" and "location" not in submission_set
        [note] = submission_set["outcome"]["issue"]
        assert note["severity"] == "information" and "not stored" in note["diagnostics"]
        assert "outcome" not in binary
        # what the Minimal DocumentReference carries that the adapter does not store as sent, each
        # named (ITI-65 2:3.65.4.1.3): its date, confidentiality N (the policy's R is more
        # restrictive), the SHA-1 and size of the document as sent (stored without its metadata);
        # its entryUUID identifier and format are kept
        issues = document_reference["outcome"]["issue"]
        assert {i["details"]["text"] for i in issues} == {"XDSExtraMetadataNotSaved"}
        assert [i["expression"] for i in issues] == [
            ["Bundle.entry[1].resource.date"], ["Bundle.entry[1].resource.securityLabel[0]"],
            ["Bundle.entry[1].resource.content[0].attachment.hash"],
            ["Bundle.entry[1].resource.content[0].attachment.size"]]
        assert document_reference["status"] == binary["status"] == "201 Created"
        assert document_reference["location"].startswith("DocumentReference/")
        assert binary["location"].startswith("Binary/")
        [found] = _found(client)
        assert document_reference["location"].startswith(f"DocumentReference/{found['id']}/")


def test_the_patient_the_bundle_carries_names_the_subject(tmp_path: Path) -> None:
    """2:3.65.4.1.2.2: in a push the Patient may be in the Bundle, the subjects a reference to its
    fullUrl, the recipient matching the patient. It was refused (400, "a Patient entry is not
    supported"). The adapter owns no Patient: it takes the patient's identifier from it, keeps no
    reference to the Bundle-local fullUrl, and acknowledges the entry without storing it."""
    patient = {"resourceType": "Patient", "identifier": [dict(PATIENT)], "name": [{"family": "Muster"}]}
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=_with_patient(provide_document_bundle(DOCUMENT), patient), headers=FHIR)
        assert r.status_code == 200, r.text
        statuses = [e["response"]["status"] for e in r.json()["entry"]]
        assert statuses[1:3] == ["201 Created", "201 Created"] and statuses[3].startswith("200")
        assert "location" not in r.json()["entry"][3]["response"]
        assert "not stored" in r.json()["entry"][3]["response"]["outcome"]["issue"][0]["diagnostics"]
        [found] = _found(client)
        assert found["subject"]["identifier"] == PATIENT
        assert "reference" not in found["subject"]
        assert _stored(services) == 3  # DocumentReference, Binary, Provenance: no Patient, no List


def test_a_consent_in_the_bundle_may_name_the_patient_by_its_fullurl(tmp_path: Path) -> None:
    patient = {"resourceType": "Patient", "identifier": [dict(PATIENT)]}
    bundle = _with_patient(provide_document_bundle(DOCUMENT), patient)
    consent = consent_resource(["TREAT"])
    consent["patient"] = {"reference": "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000a"}
    bundle["entry"].append({"fullUrl": "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000c", "resource": consent,
                            "request": {"method": "POST", "url": "Consent"}})
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        assert r.json()["entry"][4]["response"]["location"].startswith("Consent/")


def test_a_patient_with_several_identifiers_needs_the_subject_to_name_one(tmp_path: Path) -> None:
    """Which of the Patient's identifiers the adapter files the document under is not guessed:
    the subject names it, and it must be one of the Patient's."""
    patient = {"resourceType": "Patient", "identifier": [dict(OTHER_ID), dict(PATIENT)]}
    full_url = "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000a"
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=_with_patient(provide_document_bundle(DOCUMENT), patient), headers=FHIR)
        assert r.status_code == 422, r.text
        assert "subject.identifier" in r.json()["issue"][0]["diagnostics"]
        elsewhere = {"reference": full_url, "identifier": {"system": "urn:oid:9.9", "value": "x"}}
        r = client.post("/fhir", json=_with_patient(provide_document_bundle(DOCUMENT), patient, subject=elsewhere),
                        headers=FHIR)
        assert r.status_code == 422, r.text
        assert "another patient" in r.json()["issue"][0]["diagnostics"]
        assert _stored(services) == 0
        named = {"reference": full_url, "identifier": dict(PATIENT)}
        r = client.post("/fhir", json=_with_patient(provide_document_bundle(DOCUMENT), patient, subject=named),
                        headers=FHIR)
        assert r.status_code == 200, r.text
        [found] = _found(client)
        assert found["subject"]["identifier"] == PATIENT and "reference" not in found["subject"]


@pytest.mark.parametrize("case", ["two patients", "not the subject's", "no identifier"])
def test_a_patient_that_does_not_identify_the_subject_is_refused(tmp_path: Path, case: str) -> None:
    full_url = "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000a"
    bundle = provide_document_bundle(DOCUMENT)
    if case == "two patients":
        bundle = _with_patient(bundle, {"resourceType": "Patient", "identifier": [dict(PATIENT)]})
        bundle["entry"].append({"fullUrl": "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000b",
                                "resource": {"resourceType": "Patient", "identifier": [dict(OTHER_ID)]},
                                "request": {"method": "POST", "url": "Patient"}})
    elif case == "not the subject's":  # the subject names a patient by identifier, the Bundle carries another
        bundle = _with_patient(bundle, {"resourceType": "Patient", "identifier": [dict(OTHER_ID)]},
                               subject={"identifier": dict(PATIENT)}, full_url=full_url)
    else:
        bundle = _with_patient(bundle, {"resourceType": "Patient", "name": [{"family": "Muster"}]})
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code in (400, 422), r.text
        assert r.json()["resourceType"] == "OperationOutcome"
        assert _stored(services) == 0


def test_the_document_sources_master_identifier_is_kept_and_found(tmp_path: Path) -> None:
    """The DocumentReference's masterIdentifier is the document's uniqueId, assigned by the
    Document Source (MHD DocumentReference Minimal: 1..1; ITI-67 ``identifier`` searches it). It
    was replaced by the adapter's own (urn:uuid of the record id), so the source's id found
    nothing. Without one (POST /photos, a plain transaction that has none: an MHD one is refused,
    test_mhd_document_source_metadata) the adapter's is used as before."""
    master = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.99.2"}
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=provide_document_bundle(DOCUMENT), headers=FHIR)
        assert r.status_code == 200, r.text
        [found] = _found(client)
        assert found["masterIdentifier"] == master
        r = client.get(f"/fhir/DocumentReference?identifier={master['system']}|{master['value']}",
                       headers=as_purpose("TREAT"))
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [found["id"]]
        without = provide_document_bundle((ROOT / "samples" / "tiny.jpg").read_bytes())
        del without["entry"][1]["resource"]["masterIdentifier"]
        del without["meta"], without["entry"][0]  # no MHD profile, no SubmissionSet: a plain transaction
        r = client.post("/fhir", json=without, headers=FHIR)
        assert r.status_code == 200, r.text
        record_id = r.json()["entry"][0]["response"]["location"].split("/")[1]
        read = client.get(f"/fhir/DocumentReference/{record_id}", headers=as_purpose("TREAT")).json()
        assert read["masterIdentifier"] == {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{record_id}"}


def test_a_master_identifier_without_system_or_value_is_refused(tmp_path: Path) -> None:
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"][1]["resource"]["masterIdentifier"] = {"value": "urn:oid:1.2.3.4.99.2"}
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.masterIdentifier"]
        assert _stored(services) == 0


def test_a_folder_is_not_processed_and_the_answer_says_so(tmp_path: Path) -> None:
    """2:3.65.4.1.3: a recipient that does not support Folders fails the transaction or ignores the
    Folder type List "and returns a PartialFolderContentNotProcessed warning". It was taken for a
    second SubmissionSet and acknowledged without a word."""
    bundle = provide_document_bundle(DOCUMENT)
    folder = copy.deepcopy(bundle["entry"][0])
    folder["fullUrl"] = "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000f0"
    folder["resource"]["code"]["coding"][0]["code"] = "folder"
    folder["resource"]["meta"]["profile"] = ["https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Minimal.Folder"]
    for key in ("extension", "date", "subject"):
        folder["resource"].pop(key, None)
    bundle["entry"].append(folder)
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        entries = [e["response"] for e in r.json()["entry"]]
        assert entries[1]["status"] == entries[2]["status"] == "201 Created"
        [issue] = entries[3]["outcome"]["issue"]
        assert issue["severity"] == "warning" and issue["details"]["text"] == "PartialFolderContentNotProcessed"
        assert entries[0]["outcome"]["issue"][0]["severity"] == "information"  # the SubmissionSet: acknowledged
        assert len(_found(client)) == 1


@pytest.mark.parametrize(("code", "warning"), [("replaces", "PartialReplaceContentNotProcessed"),
                                               ("transforms", "PartialTransformContentNotProcessed"),
                                               ("appends", "PartialAppendContentNotProcessed")])
def test_a_relationship_the_adapter_does_not_keep_is_answered_with_its_warning(tmp_path: Path, code: str,
                                                                                warning: str) -> None:
    """Table 2:3.65.4.1.3-1: a DocumentReference whose relatesTo.code the recipient does not
    support gets the warning; the adapter keeps no relationships between documents. It was
    stored as if the relationship had been recorded."""
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"][1]["resource"]["relatesTo"] = [
        {"code": code, "target": {"identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.99.1"}}}]
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        response = r.json()["entry"][1]["response"]
        assert response["status"] == "201 Created"
        issue = response["outcome"]["issue"][0]
        assert issue["severity"] == "warning" and issue["details"]["text"] == warning
        assert issue["expression"] == ["Bundle.entry[1].resource.relatesTo[0]"]


def test_a_contained_author_is_resolved_not_kept_as_a_dangling_local_reference(tmp_path: Path) -> None:
    """The MHD Comprehensive DocumentReference contains its author (``author`` aggregation
    contained: ``{"reference": "#a1"}`` and a Practitioner in ``contained``). The adapter builds
    its own DocumentReference without the contained resources, and kept ``#a1``: a local
    reference to nothing (FHIR ref-1), the author lost. It is now the contained Practitioner's
    identifier and name."""
    bundle = provide_document_bundle(DOCUMENT)
    document_reference = bundle["entry"][1]["resource"]
    document_reference["contained"] = [
        {"resourceType": "Practitioner", "id": "a1", "identifier": [{"system": "urn:oid:2.999.1.2", "value": "dr-a"}],
         "name": [{"family": "Arzt", "given": ["Anna"], "prefix": ["Dr"]}]},
        {"resourceType": "Patient", "id": "sp", "identifier": [dict(PATIENT)]}]
    document_reference["author"] = [{"reference": "#a1"}]
    document_reference["context"] = {"sourcePatientInfo": {"reference": "#sp"}}
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        [found] = _found(client)
        assert found["author"] == [{"identifier": {"system": "urn:oid:2.999.1.2", "value": "dr-a"},
                                    "display": "Dr Anna Arzt"}]
        assert "contained" not in found


def test_an_unresolvable_local_reference_is_refused(tmp_path: Path) -> None:
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"][1]["resource"]["author"] = [{"reference": "#nobody"}]
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.author[0].reference"]
        assert _stored(services) == 0


def test_a_relative_attachment_url_resolves_against_the_entrys_full_url(tmp_path: Path) -> None:
    """bundle.html#references: in an entry whose fullUrl is a RESTful URL, a relative reference
    (``Binary/123``) resolves against that fullUrl's base, and names the Binary entry whose fullUrl
    is ``<base>/Binary/123``. It was refused (422, "does not reference the Binary")."""
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"][1]["fullUrl"] = "http://example.org/fhir/DocumentReference/456"
    bundle["entry"][0]["resource"]["entry"][0]["item"]["reference"] = "DocumentReference/456"
    bundle["entry"][2]["fullUrl"] = "http://example.org/fhir/Binary/123"
    bundle["entry"][1]["resource"]["content"][0]["attachment"]["url"] = "Binary/123"
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        # a Binary of another server is not this one
        bundle["entry"][2]["fullUrl"] = "http://elsewhere.example/fhir/Binary/123"
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text


def test_restful_full_urls_resolve_the_subjects_reference_to_the_bundles_patient(tmp_path: Path) -> None:
    """As MHD's own example Bundles are built: RESTful fullUrls, the subject a relative
    reference (``Patient/p-9``) that resolves against the DocumentReference's fullUrl to the
    Patient entry's (bundle.html#references)."""
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"][1]["fullUrl"] = "http://example.org/fhir/DocumentReference/456"
    bundle["entry"][0]["resource"]["entry"][0]["item"]["reference"] = "http://example.org/fhir/DocumentReference/456"
    bundle = _with_patient(bundle, {"resourceType": "Patient", "identifier": [dict(PATIENT)]},
                           subject={"reference": "Patient/p-9"}, full_url="http://example.org/fhir/Patient/p-9")
    bundle["entry"][0]["resource"]["subject"] = {"reference": "http://example.org/fhir/Patient/p-9"}
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        [found] = _found(client)
        assert found["subject"]["identifier"] == PATIENT and "reference" not in found["subject"]


def test_a_submission_set_for_another_patient_is_refused(tmp_path: Path) -> None:
    """2:3.65.4.1.2.1: every DocumentReference.subject and List.subject is the identity of the
    (one) patient. A SubmissionSet naming another patient than the document is a misfiled
    submission: refused whole, nothing stored. It was acknowledged and the document stored."""
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"][0]["resource"]["subject"] = {"identifier": dict(OTHER_ID)}
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.subject"]
        assert _stored(services) == 0
        # a urn names an entry of the Bundle or nothing
        bundle["entry"][0]["resource"]["subject"] = {"reference": "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000ff"}
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422 and "names no Patient" in r.json()["issue"][0]["diagnostics"]
        assert _stored(services) == 0
        # the same patient by a reference the adapter cannot compare is not second-guessed
        bundle["entry"][0]["resource"]["subject"] = {"reference": "http://pdqm.example/fhir/Patient/9"}
        assert client.post("/fhir", json=bundle, headers=FHIR).status_code == 200


def test_the_same_document_sent_again_under_another_master_identifier_is_refused(tmp_path: Path) -> None:
    """A Bundle whose document (bytes and patient) is stored already is answered with the stored
    record (a retry). Its masterIdentifier, the document's uniqueId that ITI-67 finds it by, is
    part of what the retry must repeat: under another one the answer would say the document is
    stored while the new uniqueId was dropped (ITI-67 by it finds nothing). Refused as a conflict
    (409), nothing stored; the same one is answered as the retry it is."""
    first = provide_document_bundle(DOCUMENT)
    again = copy.deepcopy(first)
    again["entry"][1]["resource"]["masterIdentifier"] = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4.99.3"}
    with adapter_client(tmp_path) as (client, services):
        assert client.post("/fhir", json=first, headers=FHIR).status_code == 200
        stored = _stored(services)
        r = client.post("/fhir", json=again, headers=FHIR)
        assert r.status_code == 409, r.text
        # a FHIRPath into the Bundle (MHD review: it was the bare "masterIdentifier")
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.masterIdentifier"]
        assert _stored(services) == stored
        r = client.post("/fhir", json=copy.deepcopy(first), headers=FHIR)
        assert r.status_code == 200, r.text
        assert r.json()["entry"][1]["response"]["status"] == "200 OK"


@pytest.mark.parametrize("reference", ["urn:uuid:0c0c0c0c-0000-4000-8000-0000000000ff", "urn:oid:1.2.3.4.5"])
def test_a_subject_referencing_a_urn_no_entry_of_the_bundle_has_is_refused(tmp_path: Path, reference: str) -> None:
    """Found by the diff review: with no Patient in the Bundle, a subject reference to a urn
    (a Bundle-local name) that no entry has was stored as it came: outside the Bundle it names
    nothing, so the stored record carried a reference to nothing. Refused, nothing stored; an
    absolute or relative reference (a Patient on the MPI, as a PIXm lookup gives it) is kept."""
    bundle = provide_document_bundle(DOCUMENT)
    for entry in bundle["entry"]:
        if "subject" in entry["resource"]:
            entry["resource"]["subject"]["reference"] = reference
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code in (400, 422), r.text
        assert any(e.endswith(".subject.reference") for e in r.json()["issue"][0]["expression"])
        assert _stored(services) == 0
        ok = provide_document_bundle(DOCUMENT)  # "Patient/p-1" and the identifier: kept
        assert client.post("/fhir", json=ok, headers=FHIR).status_code == 200
        [found] = _found(client)
        assert found["subject"]["reference"] == "Patient/p-1"


def test_two_entries_with_the_same_full_url_are_refused(tmp_path: Path) -> None:
    """FHIR bdl-7: a fullUrl is unique in a Bundle (different versions aside). A Patient given the
    Binary's urn was taken (found by the diff review): a reference to it named either entry."""
    bundle = provide_document_bundle(DOCUMENT)
    binary_url = bundle["entry"][2]["fullUrl"]
    bundle = _with_patient(bundle, {"resourceType": "Patient", "identifier": [dict(PATIENT)]}, full_url=binary_url)
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 400, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[3].fullUrl"]
        assert _stored(services) == 0


def test_a_consent_entry_with_if_none_exist_is_refused_not_created_twice(tmp_path: Path) -> None:
    """Review finding: ``request.ifNoneExist`` on a Consent entry was ignored: the Bundle sent
    twice made two active Consents (standalone, If-None-Exist is 400 for that reason, README).
    FHIR http.html#transaction: each entry processed per its request; now refused (400, as the
    standalone create), nothing stored."""
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"].append({"fullUrl": "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000c",
                            "resource": consent_resource(["TREAT"]),
                            "request": {"method": "POST", "url": "Consent",
                                        "ifNoneExist": f"patient:identifier={PATIENT_ID}&status=active"}})
    with adapter_client(tmp_path) as (client, services):
        for _ in range(2):
            r = client.post("/fhir", json=bundle, headers=FHIR)
            assert r.status_code == 400, r.text
            [issue] = r.json()["issue"]
            assert issue["code"] == "not-supported" and issue["expression"] == ["Bundle.entry[3].request.ifNoneExist"]
        assert _stored(services) == 0


def test_a_put_of_a_document_reference_is_refused(tmp_path: Path) -> None:
    """Review finding: ``PUT DocumentReference/abc`` in a transaction created a record under a
    server id (``GET DocumentReference/abc`` then 404), an update-as-create the CapabilityStatement
    denies; a ``request.url`` on another server's base was taken too. One under this server's
    own base is the same as a relative one."""
    with adapter_client(tmp_path) as (client, services):
        bundle = provide_document_bundle(DOCUMENT)
        bundle["entry"][1]["resource"]["id"] = "abc"
        bundle["entry"][1]["request"] = {"method": "PUT", "url": "DocumentReference/abc"}
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 400, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].request.method"]
        bundle = provide_document_bundle(DOCUMENT)
        bundle["entry"][1]["request"]["url"] = "http://ehr.example/fhir/DocumentReference"
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 400, r.text
        assert _stored(services) == 0
        bundle["entry"][1]["request"]["url"] = "http://testserver/fhir/DocumentReference"
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        assert len(_found(client)) == 1


def test_a_document_reference_entered_in_error_or_with_a_modifier_is_refused(tmp_path: Path) -> None:
    """Review finding: status entered-in-error was stored as current, a modifierExtension dropped;
    each now 422 naming the element, nothing stored (ITI-65 2:3.65.4.1.3 lets a recipient reject;
    FHIR extensibility forbids ignoring a modifier)."""
    with adapter_client(tmp_path) as (client, services):
        bundle = provide_document_bundle(DOCUMENT)
        bundle["entry"][1]["resource"]["status"] = "entered-in-error"
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.status"]
        bundle = provide_document_bundle(DOCUMENT)
        bundle["entry"][1]["resource"]["modifierExtension"] = [
            {"url": "http://example.org/fhir/StructureDefinition/not-final", "valueBoolean": True}]
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.modifierExtension"]
        assert _stored(services) == 0


def test_metadata_kept_is_not_named_in_the_entry_outcome(tmp_path: Path) -> None:
    """Review finding: type and category (LOINC), context.facilityType/practiceSetting/event and
    content.format were replaced or dropped (then: with 201 and a warning each). They are kept
    now, so not named; what is not (docStatus) still is."""
    bundle = provide_document_bundle(DOCUMENT)
    document = bundle["entry"][1]["resource"]
    document["type"] = {"coding": [{"system": "http://loinc.org", "code": "34108-1"}]}
    document["category"] = [{"coding": [{"system": "http://loinc.org", "code": "11369-6"}]}]
    document["context"] = {"practiceSetting": {"coding": [{"system": "http://snomed.info/sct", "code": "394802001"}]},
                           "event": [{"coding": [{"system": "http://snomed.info/sct", "code": "71388002"}]}]}
    document["content"][0]["format"] = {"system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                                        "code": "urn:ihe:pcc:xphr:2007"}
    document["docStatus"] = "final"
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        response = r.json()["entry"][1]["response"]
        assert response["status"] == "201 Created"
        named = {i["expression"][0].removeprefix("Bundle.entry[1].resource") for i in response["outcome"]["issue"]}
        assert named == {".date", ".securityLabel[0]", ".docStatus", ".content[0].attachment.hash",
                         ".content[0].attachment.size"}, named


@pytest.mark.parametrize("element,value", [("size", 5), ("size", "1436"), ("hash", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
                                           ("hash", "not base64")])
def test_a_size_or_hash_that_is_not_the_documents_is_refused(tmp_path: Path, element: str, value: Any) -> None:
    """MHD review: a source's attachment.size and hash (the SHA-1, base64) were neither checked nor
    named as not stored. A source populates them accurately (ITI-65 2:3.65.4.1.2.1); a document
    whose size or hash is not its own was damaged or cut on its way, or is another one: refused,
    as an XDS Repository refuses it (XDSRepositoryMetadataError), nothing stored."""
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"][1]["resource"]["content"][0]["attachment"][element] = value
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code in (400, 422), r.text
        [issue] = r.json()["issue"]
        assert issue["expression"] == [f"Bundle.entry[1].resource.content[0].attachment.{element}"], issue
        if r.status_code == 422:
            assert issue["details"]["text"] == "XDSRepositoryMetadataError", issue
        assert _stored(services) == 0


def test_a_size_and_hash_that_are_the_documents_are_checked_and_said_not_stored_as_sent(tmp_path: Path) -> None:
    """The document sent with its metadata is stored without it: fewer bytes, another hash. The
    stored attachment's size is then that of the bytes stored, and the SHA-1 is not kept (the
    record's identifier is the SHA-256 of the stored bytes): both named in the entry's outcome."""
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=provide_document_bundle(DOCUMENT), headers=FHIR)
        assert r.status_code == 200, r.text
        issues = r.json()["entry"][1]["response"]["outcome"]["issue"]
        said = {i["expression"][0]: i["diagnostics"] for i in issues}
        size = said["Bundle.entry[1].resource.content[0].attachment.size"]
        [stored] = _found(client)
        stored_size = stored["content"][0]["attachment"]["size"]
        assert stored_size < len(DOCUMENT) and f"stored as {stored_size}" in size, size
        assert "hash" not in stored["content"][0]["attachment"]
        assert "SHA-1" in said["Bundle.entry[1].resource.content[0].attachment.hash"]


def test_the_sources_context_period_is_kept_as_sent(tmp_path: Path) -> None:
    """MHD review: context.period (XDS serviceStartTime/serviceStopTime) was replaced by the
    photo's creation time, its end dropped: a value the source never sent, shown as the source's.
    It is kept as sent; the de-identified view keeps its years."""
    bundle = provide_document_bundle(DOCUMENT)
    dr = bundle["entry"][1]["resource"]
    dr["context"] = {"period": {"start": "2026-10-31T08:00:00Z", "end": "2026-10-31T11:00:00Z"}}
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        issues = r.json()["entry"][1]["response"]["outcome"]["issue"]
        assert not [i for i in issues if "period" in i["expression"][0]], issues
        [stored] = _found(client)
        assert stored["context"]["period"] == {"start": "2026-10-31T08:00:00Z", "end": "2026-10-31T11:00:00Z"}
        assert stored["content"][0]["attachment"]["creation"] == "2026-11-01T09:00:00+00:00"
        # ITI-67 period finds it by the period sent, not by when it was photographed
        for query, found in (("period=2026-10-31", 1), ("period=2026-11-01", 0), ("period=lt2026-10-31T09:00:00Z", 1),
                             ("period=gt2026-10-31T12:00:00Z", 0)):
            r = client.get(f"/fhir/DocumentReference?patient.identifier={PATIENT_ID}&{query}",
                           headers=as_purpose("TREAT"))
            assert r.status_code == 200 and r.json()["total"] == found, (query, r.text)


def test_a_clinical_photo_without_consent_is_refused_pointing_into_the_bundle(tmp_path: Path) -> None:
    """MHD review: the refusal of a clinical photo sent without its consent said expression
    ["consent"], a field of POST /photos' metadata, not a FHIRPath into what was sent. It points
    at the record's entry (no Consent entry to point at)."""
    bundle = provide_document_bundle(DOCUMENT)
    bundle["entry"][1]["resource"]["extension"] = [
        {"url": "http://clinical-image-adapter.org/fhir/StructureDefinition/photo-kind", "valueCode": "clinical"}]
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource"], r.text
        assert _stored(services) == 0


@pytest.mark.parametrize("document_type", [None, {"system": "http://loinc.org", "code": "72170-4",
                                                   "display": "Photographic image"}])
def test_a_document_source_that_does_not_say_the_kind_sends_a_clinical_photo(tmp_path: Path,
                                                                             document_type: Any) -> None:
    """Safety review finding 2 (HIGH): a Document Source knows nothing of the adapter's
    photo-kind extension, and every DocumentReference without it was stored as a photographed
    document, which needs no consent, whatever it showed (a wound photo, type LOINC 72170-4
    "Photographic image"). Not said to be a document, it is a clinical photo: refused without
    documented consent (422 at the record, as a clinical photo), nothing stored; with a Consent,
    stored as one."""
    bundle = provide_document_bundle(DOCUMENT)
    document = bundle["entry"][1]["resource"]
    del document["extension"]
    if document_type is not None:
        document["type"] = {"coding": [document_type]}
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 422, r.text
        [issue] = r.json()["issue"]
        assert "consent" in issue["diagnostics"] and issue["expression"] == ["Bundle.entry[1].resource"]
        assert _stored(services) == 0
        bundle["entry"].append({"fullUrl": "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000c1",
                                "request": {"method": "POST", "url": "Consent"}, "resource": consent_resource(["TREAT"])})
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        location = r.json()["entry"][1]["response"]["location"]
        assert location.startswith("Media/")  # mappings/kinds.yaml files a clinical photo as a Media
        stored = client.get("/fhir/" + "/".join(location.split("/")[:2]), headers=as_purpose("TREAT")).json()
        assert [x["valueCode"] for x in stored["extension"] if x["url"].endswith("/photo-kind")] == ["clinical"]


def test_a_document_source_says_a_document_by_a_type_the_kinds_table_lists(tmp_path: Path) -> None:
    """Without the extension, a DocumentReference whose type mappings/kinds.yaml lists under
    ``document.documentTypes`` (LOINC 11502-2 Laboratory report) is a photographed document:
    stored without consent, its type kept, found by ITI-67."""
    bundle = provide_document_bundle(DOCUMENT)
    document = bundle["entry"][1]["resource"]
    del document["extension"]
    document["type"] = {"coding": [{"system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report"}]}
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        assert r.json()["entry"][1]["response"]["location"].startswith("DocumentReference/")
        [found] = _found(client)
        assert found["type"]["coding"][0]["code"] == "11502-2"
        assert found["category"][0]["coding"][0]["code"] == "document"


def test_what_fails_basic_fhir_validation_is_400_and_a_read_in_a_transaction_not_supported(tmp_path: Path) -> None:
    """MHD review: an entry without request (FHIR bdl-3), a Bundle without its type (1..1) and a
    resource that is no Bundle posted to the base were 422 (business rules); FHIR http.html gives
    400 for what fails basic validation. A GET entry (no resource) was 422 "needs a resource":
    it is a read, which a transaction here does not take (400 not-supported)."""
    no_request = provide_document_bundle(DOCUMENT)
    del no_request["entry"][1]["request"]
    no_type = provide_document_bundle(DOCUMENT)
    del no_type["type"]
    read = provide_document_bundle(DOCUMENT)
    read["entry"].append({"request": {"method": "GET", "url": "DocumentReference?patient.identifier=x|y"}})
    with adapter_client(tmp_path) as (client, services):
        for body, where, code in ((no_request, "Bundle.entry[1].request", "structure"), (no_type, "Bundle.type", "structure"),
                                  (read, "Bundle.entry[3].request.method", "not-supported"),
                                  (consent_resource(["TREAT"]), "Bundle.resourceType", "structure")):
            r = client.post("/fhir", json=body, headers=FHIR)
            assert r.status_code == 400, (where, r.status_code, r.text)
            [issue] = r.json()["issue"]
            assert (issue["code"], issue["expression"]) == (code, [where]), issue
        assert _stored(services) == 0


def test_a_deployment_may_file_clinical_photos_as_document_references(tmp_path: Path) -> None:
    """MHD review 3: a DocumentReference sent as a clinical photo (the photo-kind extension) was
    filed as a Media, as mappings/kinds.yaml maps the kind, so an R4 ITI-67 Document Consumer never
    found it. The map is data: a deployment whose consumers use MHD maps clinical photos to
    DocumentReference, and then the clinical photo's rules (documented consent for care) apply to
    a DocumentReference that ITI-67 finds, sent over ITI-65 or POST /photos alike."""
    import shutil

    from adapter.api.app import create_app
    from adapter.config import Settings
    from adapter.services.registry import build_services
    from tests.support.app import TEST_HOST, FhirClient, metadata, post_photo

    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    kinds = mappings / "kinds.yaml"
    kinds.write_text(kinds.read_text().replace("clinical:\n  resource: Media", "clinical:\n  resource: DocumentReference", 1))
    services = build_services(Settings(data_dir=tmp_path / "data", policy=mappings / "policy.yaml",
                                       mappings_dir=mappings, allowed_hosts=TEST_HOST))
    clinical = [{"url": "http://clinical-image-adapter.org/fhir/StructureDefinition/photo-kind", "valueCode": "clinical"}]
    with FhirClient(create_app(services), raise_server_exceptions=False) as client:
        bundle = provide_document_bundle(DOCUMENT)
        bundle["entry"][1]["resource"]["extension"] = clinical
        refused = client.post("/fhir", json=bundle, headers=FHIR)  # a clinical photo: consent for care needed
        assert refused.status_code == 422, refused.text
        bundle["entry"].append({"fullUrl": "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000c1",
                                "request": {"method": "POST", "url": "Consent"}, "resource": consent_resource(["TREAT"])})
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        assert r.json()["entry"][1]["response"]["location"].startswith("DocumentReference/")
        posted = post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        assert posted.status_code == 201 and posted.json()["record"].startswith("DocumentReference/"), posted.text
        found = _found(client)
        assert len(found) == 2
        assert all(("urn:clinical-image-adapter:photo-kind", "clinical") in
                   [(c["system"], c["code"]) for cat in d["category"] for c in cat["coding"]] for d in found), found


def _without(bundle: dict[str, Any], index: int, *keys: str) -> dict[str, Any]:
    for key in keys:
        bundle["entry"][index]["resource"].pop(key, None)
    return bundle


def _bogus_list_code(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"][0]["resource"]["code"]["coding"][0]["code"] = "bogus"
    return bundle


def _no_source_id(bundle: dict[str, Any]) -> dict[str, Any]:
    return _without(bundle, 0, "extension")


def _no_unique_id(bundle: dict[str, Any]) -> dict[str, Any]:
    ss = bundle["entry"][0]["resource"]
    ss["identifier"] = [i for i in ss["identifier"] if not i["value"].startswith("urn:oid:")]
    return bundle


def _dangling_item(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"][0]["resource"]["entry"].append({"item": {"reference": "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000ee"}})
    return bundle


def _bad_profile(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["meta"]["profile"] = ["https://profiles.ihe.net/ITI/MHD/StructureDefinition/IHE.MHD.Bogus.ProvideBundle"]
    return bundle


def _no_content_type(bundle: dict[str, Any]) -> dict[str, Any]:
    del bundle["entry"][1]["resource"]["content"][0]["attachment"]["contentType"]
    return bundle


def _no_submission_set(bundle: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"] = bundle["entry"][1:]  # the Minimal ProvideBundle profile stays
    return bundle


def _two_submission_sets(bundle: dict[str, Any]) -> dict[str, Any]:
    second = copy.deepcopy(bundle["entry"][0])
    second["fullUrl"] = "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000e5"
    bundle["entry"].append(second)
    return bundle


@pytest.mark.parametrize(("malform", "status", "where"), [
    (_no_submission_set, 422, "Bundle.entry"),
    (_two_submission_sets, 422, "Bundle.entry[3].resource"),
    (_bogus_list_code, 422, "Bundle.entry[0].resource.code"),
    (_no_source_id, 422, "Bundle.entry[0].resource.extension"),
    (_no_unique_id, 422, "Bundle.entry[0].resource.identifier"),
    (lambda b: _without(b, 0, "date"), 422, "Bundle.entry[0].resource.date"),
    (_dangling_item, 422, "Bundle.entry[0].resource.entry[1].item"),
    (_bad_profile, 400, "Bundle.meta.profile[0]"),
    (_no_content_type, 422, "Bundle.entry[1].resource.content[0].attachment.contentType"),
], ids=["no SubmissionSet", "two SubmissionSets", "List code bogus", "no sourceId", "no uniqueId",
        "no submissionTime", "item naming no entry", "unknown MHD profile", "no contentType"])
def test_an_mhd_submission_that_is_not_whole_is_refused_and_nothing_stored(tmp_path: Path, malform: Any, status: int,
                                                                           where: str) -> None:
    """MHD review M4: each of these was answered 200 and stored. A Bundle that says it is an MHD
    submission (an MHD ProvideBundle profile, or a List) is held to the ProvideBundle profiles:
    SubmissionSet 1..1 coded MHDlistTypes#submissionset, with its sourceId, uniqueId and date
    (IHE.MHD.Minimal.SubmissionSet), items that name entries of the Bundle, a DocumentReference
    with its contentType (IHE.MHD.Minimal.DocumentReference), and no MHD profile that is no
    ProvideBundle. Refused naming the element, nothing stored."""
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=malform(provide_document_bundle(DOCUMENT)), headers=FHIR)
        assert r.status_code == status, r.text
        [issue] = r.json()["issue"]
        assert issue["expression"] == [where], issue
        assert _stored(services) == 0


def test_a_plain_transaction_without_a_list_or_mhd_profile_is_not_held_to_mhd(tmp_path: Path) -> None:
    """The adapter's own transaction (a Binary and its DocumentReference, no SubmissionSet, no
    MHD profile) is no MHD submission: taken as before, also without the attachment's contentType
    (the Binary's is the document's)."""
    bundle = _no_submission_set(_no_content_type(provide_document_bundle(DOCUMENT)))
    del bundle["meta"]
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        assert len(_found(client)) == 1


def test_a_submission_set_marked_as_mhd_4_2_marks_it_is_taken(tmp_path: Path) -> None:
    """MHD 4.2 marks the SubmissionSet's uniqueId (an OID) ``usual`` and its entryUUID ``official``
    (IHE.MHD.SubmissionSetUniqueIdIdentifier, IHE.MHD.EntryUUID.Identifier); the uniqueId is found
    by its OID value whichever way a source labels them."""
    bundle = provide_document_bundle(DOCUMENT)
    for identifier in bundle["entry"][0]["resource"]["identifier"]:
        identifier["use"] = "usual" if identifier["value"].startswith("urn:oid:") else "official"
    with adapter_client(tmp_path) as (client, _):
        assert client.post("/fhir", json=bundle, headers=FHIR).status_code == 200


def test_a_retry_that_describes_the_document_otherwise_is_refused_naming_the_elements(tmp_path: Path) -> None:
    """MHD review m2: a resend with another entryUUID (an engine that regenerates its urn:uuids)
    or another type got 409 naming only "(document)". It names the DocumentReference's elements
    that differ, in the message and as FHIRPaths into the Bundle; the same Bundle with only its
    date and timestamp changed is still answered as the retry it is."""
    first = provide_document_bundle(DOCUMENT)
    first["entry"][1]["resource"]["type"] = {"coding": [{"system": "http://loinc.org", "code": "34108-1"}]}
    again = copy.deepcopy(first)
    again["entry"][1]["resource"]["identifier"] = [{"system": "urn:ietf:rfc:3986",
                                                    "value": "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000d1"}]
    again["entry"][1]["resource"]["type"] = {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]}
    with adapter_client(tmp_path) as (client, services):
        assert client.post("/fhir", json=first, headers=FHIR).status_code == 200
        stored = _stored(services)
        r = client.post("/fhir", json=again, headers=FHIR)
        assert r.status_code == 409, r.text
        [issue] = r.json()["issue"]
        assert "DocumentReference.identifier" in issue["diagnostics"] and "DocumentReference.type" in issue["diagnostics"]
        assert "(document)" not in issue["diagnostics"]
        assert issue["expression"] == ["Bundle.entry[1].resource.identifier", "Bundle.entry[1].resource.type"]
        assert _stored(services) == stored
        resent = copy.deepcopy(first)
        resent["timestamp"] = resent["entry"][1]["resource"]["date"] = "2026-11-02T10:00:00Z"
        r = client.post("/fhir", json=resent, headers=FHIR)
        assert r.status_code == 200 and r.json()["entry"][1]["response"]["status"] == "200 OK", r.text


def test_a_conditional_reference_names_the_patient_by_the_identifier_it_holds(tmp_path: Path) -> None:
    """MHD review M3: ``subject.reference`` ``Patient?identifier=system|value`` (FHIR R4
    http.html#trules, conditional references) was refused, 422 "the subject must carry the
    patient's identifier", though it names one. It is resolved as that identifier (the query is
    not kept); a conditional reference by anything else is refused (400), not guessed."""
    conditional = {"reference": f"Patient?identifier={PATIENT['system']}|{PATIENT['value']}"}
    bundle = provide_document_bundle(DOCUMENT)
    for entry in bundle["entry"][:2]:
        entry["resource"]["subject"] = dict(conditional)
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 200, r.text
        [found] = _found(client)
        assert found["subject"]["identifier"] == PATIENT and "reference" not in found["subject"]
        other = provide_document_bundle((ROOT / "samples" / "tiny.jpg").read_bytes())
        other["entry"][1]["resource"]["subject"] = {"reference": "Patient?name=Muster"}
        r = client.post("/fhir", json=other, headers=FHIR)
        assert r.status_code == 400, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[1].resource.subject.reference"]
        # a SubmissionSet naming another patient so is a misfiled submission, as by identifier
        other = provide_document_bundle((ROOT / "samples" / "tiny.jpg").read_bytes())
        other["entry"][0]["resource"]["subject"] = {"reference": f"Patient?identifier={OTHER_ID['system']}|x"}
        assert client.post("/fhir", json=other, headers=FHIR).status_code == 422
        assert len(_found(client)) == 1


def test_a_conditional_update_of_the_patient_is_refused_as_such(tmp_path: Path) -> None:
    """MHD review M3: ``PUT Patient?identifier=…`` got "request.url … names no resource of this
    server" (the colon of the OID taken for a scheme). It says conditional update is not supported."""
    bundle = _with_patient(provide_document_bundle(DOCUMENT), {"resourceType": "Patient",
                                                               "identifier": [dict(PATIENT)]})
    bundle["entry"][3]["request"] = {"method": "PUT", "url": f"Patient?identifier={PATIENT_ID}"}
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers=FHIR)
        assert r.status_code == 400, r.text
        [issue] = r.json()["issue"]
        assert "conditional update" in issue["diagnostics"] and issue["expression"] == ["Bundle.entry[3].request.url"]
        assert _stored(services) == 0


@pytest.mark.parametrize("prefer", [None, "return=minimal", "return=representation", "return=OperationOutcome"])
def test_the_ingest_warnings_are_in_the_record_entry_outcome(tmp_path: Path, prefer: str | None) -> None:
    """Clinical safety review finding 6: ``POST /photos`` answers a photo's warnings (consent
    pending, below the quality minimums) in its receipt, the transaction-response said none of
    them, so the capture app was not told, while the patient is there, that the photo cannot be
    read until consent is recorded or should be taken again. Each is in the record entry's
    ``response.outcome`` now, one warning issue each with the receipt's words in ``details.text``,
    whatever ``Prefer`` asks, and again in a replay (answered from the stored receipt, as ``POST
    /photos`` answers one); consent pending and quality coded in the adapter's ingest-warning
    system. Seen failing: no such issue."""
    image = jpeg_bytes(320, 240, quality=30)
    bundle = provide_document_bundle(image)
    bundle["entry"][1]["resource"]["extension"] = [{"url": PHOTO_KIND, "valueCode": "clinical"}]
    headers = {**FHIR, **({"Prefer": prefer} if prefer else {})}
    with adapter_client(tmp_path, policy={"consent": {"allowPending": True}}) as (client, _):
        # the same photo of another patient, over POST /photos: the words the receipt gives
        receipt = client.post("/photos", files={
            "file": ("p.jpg", image, "image/jpeg"),
            "metadata": (None, json.dumps(metadata(patient=OTHER_ID, consent=None)), "application/json")}).json()
        assert receipt["consentPending"] is True and len(receipt["warnings"]) == 4, receipt  # size, blur, JPEG quality
        pending, *quality = receipt["warnings"]
        # and, that photo being filed for that other patient, the warning saying so (naming no one)
        expected = [("business-rule", "consent-pending", pending),
                    *(("informational", "image-quality", w) for w in quality),
                    ("informational", "filed-for-another-patient", FILED_FOR_ANOTHER_PATIENT_WARNING)]
        for attempt in ("stored", "replayed"):
            r = client.post("/fhir", json=bundle, headers=headers)
            assert r.status_code == 200, r.text
            record_emitted(r.json())
            submission_set, record, binary = r.json()["entry"]
            assert record["response"]["status"] == ("201 Created" if attempt == "stored" else "200 OK")
            assert ingest_warnings(record) == expected, attempt
            assert ingest_warnings(submission_set) == ingest_warnings(binary) == []
            # the Document Sharing warnings stay (the DocumentReference's date, …)
            assert any(i["code"] == "not-supported" for i in record["response"]["outcome"]["issue"])


# ---------------------------------------------------------------------------------------------
# The Bundle's Consent is stored as POST /fhir/Consent stores it (review "ingest" findings 1, 2)

CONSENT_METHOD = "http://clinical-image-adapter.org/fhir/StructureDefinition/consent-method"
GUARDIAN = {"reference": "RelatedPerson/mother-1", "display": "Jane Doe (mother, legal guardian)"}
VERIFICATION = [{"verified": True, "verifiedWith": {"display": "Jane Doe"}, "verificationDate": "2026-11-20"}]
SIGNED_FORM = {"contentType": "application/pdf", "url": "https://ehr.example.org/documents/consent-form-123.pdf",
               "title": "Signed photography consent"}
WRITTEN_REQUIRED = {"consent": {"writtenRequired": True}}


def _clinical_bundle_with(consent: dict[str, Any]) -> dict[str, Any]:
    """One clinical photo (a Document Source's DocumentReference without the photo-kind
    extension) and ``consent``."""
    bundle = provide_document_bundle(jpeg_bytes(700, 500))
    del bundle["entry"][1]["resource"]["extension"]
    bundle["entry"].append({"fullUrl": "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000c9", "resource": consent,
                            "request": {"method": "POST", "url": "Consent"}})
    return bundle


def test_under_written_required_a_bundle_consent_saying_written_over_a_title_only_form_is_refused(
        tmp_path: Path) -> None:
    """Safety review 3: the consent-method extension's written won over a sourceAttachment that
    documents nothing (a title only): the Bundle was stored under writtenRequired. Refused now,
    as the same Consent without the extension is; with the form linked it is stored."""
    consent = consent_resource(["TREAT"])
    consent["extension"] = [{"url": CONSENT_METHOD, "valueCode": "written"}]
    consent["sourceAttachment"] = {"title": "signed form"}
    with adapter_client(tmp_path, policy=WRITTEN_REQUIRED) as (client, _services):
        refused = client.post("/fhir", json=_clinical_bundle_with(consent))
        assert refused.status_code == 422, refused.text
        assert "written" in refused.json()["issue"][0]["diagnostics"]
        consent["sourceAttachment"] = dict(SIGNED_FORM)
        stored = client.post("/fhir", json=_clinical_bundle_with(consent))
        assert stored.status_code == 200, stored.text


def _guardian_consent(patient: dict[str, str] | None = None) -> dict[str, Any]:
    consent = consent_resource(["TREAT"], patient=patient)
    consent["extension"] = [{"url": CONSENT_METHOD, "valueCode": "written"}]
    consent["performer"] = [dict(GUARDIAN)]
    consent["organization"] = [{"display": "Example Hospital"}]
    consent["verification"] = copy.deepcopy(VERIFICATION)
    consent["sourceAttachment"] = dict(SIGNED_FORM)
    return consent


def _as_sent(consent: dict[str, Any]) -> dict[str, Any]:
    """A stored Consent without what the server gives every one (id, meta) and without the
    provision.data the Consent of a Bundle is restricted to (its photos)."""
    out = {k: v for k, v in consent.items() if k not in ("id", "meta")}
    out["provision"] = {k: v for k, v in consent["provision"].items() if k != "data"}
    return out


def test_a_bundle_consent_keeps_who_consented_its_verification_and_its_form(tmp_path: Path) -> None:
    """Review "ingest" finding 1 and 2a: a Consent in a Bundle was rebuilt from its purposes,
    method and date: its performer (the legal guardian who consented) became the patient, its
    verification was dropped, and so was its sourceAttachment.url (the signed form in the EHR),
    while the same Consent posted to POST /fhir/Consent kept them all. It is stored as POST
    /fhir/Consent stores it now (one path), restricted to the Bundle's photo."""
    with adapter_client(tmp_path, policy=WRITTEN_REQUIRED) as (client, _):
        r = client.post("/fhir", json=_clinical_bundle_with(_guardian_consent()), headers=FHIR)
        assert r.status_code == 200, r.text
        location = r.json()["entry"][3]["response"]["location"].split("/_history/")[0]
        stored = client.get(f"/fhir/{location}", headers=as_purpose("TREAT")).json()
        assert stored["performer"] == [GUARDIAN]
        assert stored["verification"] == VERIFICATION
        assert stored["sourceAttachment"] == SIGNED_FORM
        record = r.json()["entry"][1]["response"]["location"].split("/_history/")[0]
        assert stored["provision"]["data"] == [{"meaning": "instance", "reference": {"reference": record}}]
        alone = client.post("/fhir/Consent", json=_guardian_consent(OTHER_ID), headers=FHIR)
        assert alone.status_code == 201, alone.text
        expected = _as_sent(alone.json())
        expected["patient"] = {"identifier": PATIENT}
        assert _as_sent(stored) == expected


def test_a_bundle_consent_naming_a_bundle_entry_it_cannot_keep_is_refused(tmp_path: Path) -> None:
    """A reference to another entry of the Bundle (a urn: that names nothing once stored) would
    be kept naming nothing: the Bundle is refused, nothing stored, the element named."""
    consent = _guardian_consent()
    consent["performer"] = [{"reference": "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000dd"}]
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=_clinical_bundle_with(consent), headers=FHIR)
        assert r.status_code == 422, r.text
        assert r.json()["issue"][0]["expression"] == ["Bundle.entry[3].resource.performer[0].reference"]
        assert _stored(services) == 0


def test_an_empty_source_attachment_is_no_written_consent_in_a_bundle_or_alone(tmp_path: Path) -> None:
    """Review "ingest" finding 2b: a Bundle's Consent with a sourceAttachment holding neither data
    nor url (a title only) was taken as written consent and stored saying ``written``, while the
    same Consent posted alone was not written. Under writtenRequired neither is: the Bundle is
    refused (nothing stored), and a photo resting on the Consent posted alone too."""
    def empty_form(patient: dict[str, str] | None = None) -> dict[str, Any]:
        consent = consent_resource(["TREAT"], patient=patient)
        consent["sourceAttachment"] = {"title": "form"}
        return consent

    with adapter_client(tmp_path, policy=WRITTEN_REQUIRED) as (client, services):
        r = client.post("/fhir", json=_clinical_bundle_with(empty_form()), headers=FHIR)
        assert r.status_code == 422, r.text
        assert "written" in r.json()["issue"][0]["diagnostics"]
        assert _stored(services) == 0
        alone = client.post("/fhir/Consent", json=empty_form(), headers=FHIR)
        assert alone.status_code == 201, alone.text
        r = client.post("/photos", files={"file": ("p.jpg", jpeg_bytes(700, 500), "image/jpeg"),
                                          "metadata": (None, json.dumps(metadata(consent=None)), "application/json")})
        assert r.status_code == 422, r.text
        assert "not documented as written" in r.json()["issue"][0]["diagnostics"]


def test_a_signed_form_linked_by_url_is_written_consent_in_a_bundle_and_alone(tmp_path: Path) -> None:
    """The other side of the same rule: a Consent without the consent-method extension whose
    sourceAttachment links the signed form (url) is written consent, in a Bundle and alone."""
    def linked_form(patient: dict[str, str] | None = None) -> dict[str, Any]:
        consent = consent_resource(["TREAT"], patient=patient)
        consent["sourceAttachment"] = dict(SIGNED_FORM)
        return consent

    with adapter_client(tmp_path, policy=WRITTEN_REQUIRED) as (client, _):
        r = client.post("/fhir", json=_clinical_bundle_with(linked_form()), headers=FHIR)
        assert r.status_code == 200, r.text
        alone = client.post("/fhir/Consent", json=linked_form(OTHER_ID), headers=FHIR)
        assert alone.status_code == 201, alone.text
        r = client.post("/photos", files={"file": ("p.jpg", jpeg_bytes(700, 500), "image/jpeg"),
                                          "metadata": (None, json.dumps(metadata(patient=OTHER_ID, consent=None)),
                                                       "application/json")})
        assert r.status_code == 201, r.text
