"""The bound on identifiers (adapter.model.photo.IDENTIFIER_MAX_BYTES: a system and a value of at
most 1024 bytes of UTF-8 each), at every edge that takes one, on SQLite and PostgreSQL alike; and
the other values whose length one store refused where the other kept them (references, codes,
a Modality).

Found from the last session's note: a patient identifier of thousands of characters was stored on
SQLite and refused by PostgreSQL (an index row over its limit, SQLSTATE class 54, answered 422),
so the same request got two answers; searches naming one were answered as any other."""

from __future__ import annotations

import copy
import random
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from adapter.mapping.dicom_photo import encode_dataset
from adapter.mapping.dimse_status import CANNOT_UNDERSTAND
from adapter.model.photo import PhotoKind
from tests.conftest import ROOT
from tests.support.app import (
    PATIENT,
    FhirClient,
    as_purpose,
    consent_resource,
    metadata,
    pacs_client,
    post_photo,
)
from tests.support.dciodvfy import photo_object, stored_sample
from tests.support.mhd import provide_document_bundle
from tests.support.postgres import postgres_schema

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
#: The documented bound (README "Limits"; adapter.model.photo.IDENTIFIER_MAX_BYTES).
IDENTIFIER_MAX_BYTES = 1024
#: One byte over the bound, in ASCII and in 4-byte characters (257 of them: 1028 bytes).
OVER = "M" * (IDENTIFIER_MAX_BYTES + 1)
OVER_WIDE = "\U0001F600" * (IDENTIFIER_MAX_BYTES // 4 + 1)


def incompressible(size: int, *, wide: bool = False) -> str:
    """Text of exactly ``size`` bytes of UTF-8 that PostgreSQL cannot compress into an index row:
    random hex, or random CJK ideographs (3 bytes each) and hex for the rest."""
    if not wide:
        return secrets.token_hex(size)[:size]
    rng = random.Random(secrets.randbits(64))
    text = "".join(chr(0x4E00 + rng.randrange(20000)) for _ in range(size // 3))
    return text + secrets.token_hex(2)[: size - len(text.encode())]


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FhirClient]:
    if request.param == "postgresql":
        with postgres_schema("test_ident") as url, pacs_client(tmp_path, database_url=url) as (c, _):
            yield c
    else:
        with pacs_client(tmp_path) as (c, _):
            yield c


def refused(r: Any, status: int, expression: str, secret: str) -> None:
    """``r`` is refused with ``status``, an OperationOutcome naming ``expression``, not quoting the value."""
    assert r.status_code == status, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and "Retry-After" not in r.headers
    assert outcome["issue"][0]["expression"] == [expression], outcome
    assert str(IDENTIFIER_MAX_BYTES) in outcome["issue"][0]["diagnostics"]
    assert secret[:20] not in r.text


def nothing_stored(client: FhirClient) -> None:
    for rtype in ("Media", "DocumentReference", "Consent"):
        assert client.get(f"/fhir/{rtype}", headers=as_purpose("TREAT")).json()["total"] == 0, rtype


def test_a_photo_naming_an_identifier_over_the_bound_is_refused_where_it_is(client: FhirClient) -> None:
    """POST /photos: the patient's system or value, a masterIdentifier, an author's identifier:
    422 naming the element, nothing stored, on both stores (SQLite stored them, PostgreSQL
    refused the patient's with a 422 naming nothing)."""
    for meta, where, secret in (
            (metadata(patient={"system": PATIENT["system"], "value": OVER}), "patient.value", OVER),
            (metadata(patient={"system": PATIENT["system"], "value": OVER_WIDE}), "patient.value", OVER_WIDE),
            (metadata(patient={"system": "urn:x:" + OVER, "value": "MRN-1"}), "patient.system", OVER),
            (metadata(kind="document", masterIdentifier={"system": "urn:ietf:rfc:3986", "value": OVER}),
             "masterIdentifier.value", OVER),
            (metadata(author={"identifier": {"system": "urn:x", "value": OVER}}), "author.identifier.value", OVER)):
        refused(post_photo(client, WOUND, meta), 422, where, secret)
    nothing_stored(client)


def test_identifiers_at_the_bound_are_stored_and_found_on_both_stores(client: FhirClient) -> None:
    """What the bound admits, each store keeps and indexes (the 1024 bytes of a system and of a
    value, beyond ASCII too, incompressible) and a search finds: the bound is below
    PostgreSQL's index limit, so both stores take the same identifiers."""
    patient = {"system": "urn:x:" + incompressible(IDENTIFIER_MAX_BYTES - 6),
               "value": incompressible(IDENTIFIER_MAX_BYTES, wide=True)}
    assert all(len(v.encode()) == IDENTIFIER_MAX_BYTES for v in patient.values())
    r = post_photo(client, WOUND, metadata(patient=patient, consent={"purposes": ["TREAT", "TRAIN"],
                                                                     "method": "written"}))
    assert r.status_code == 201, r.text
    assert client.post("/fhir/Consent", json=consent_resource(["HRESCH"], patient=patient)).status_code == 201
    found = client.post("/fhir/Media/_search", data={"patient:identifier": f"{patient['system']}|{patient['value']}"},
                        headers=as_purpose("TREAT")).json()
    assert found["total"] == 1
    consents = client.post("/fhir/Consent/_search", data={"patient:identifier": f"{patient['system']}|"
                                                                                f"{patient['value']}"},
                           headers=as_purpose("TREAT")).json()
    assert consents["total"] >= 1


def test_a_transaction_naming_an_identifier_over_the_bound_is_refused_at_that_element(client: FhirClient) -> None:
    """POST /fhir transaction (IHE MHD ITI-65): the subject's identifier, the Patient's, the
    masterIdentifier, an extension's valueIdentifier, and one nested in a SubmissionSet: 422
    naming the element, nothing stored."""
    document = WOUND.read_bytes()
    good = provide_document_bundle(document)
    assert [e["resource"]["resourceType"] for e in good["entry"]] == ["List", "DocumentReference", "Binary"]

    def changed(edit: Any) -> dict[str, Any]:
        bundle = copy.deepcopy(good)
        edit(bundle["entry"])
        return bundle

    cases = (
        (lambda e: e[1]["resource"].update(subject={"identifier": {"system": PATIENT["system"], "value": OVER}}),
         "Bundle.entry[1].resource.subject.identifier.value"),
        (lambda e: e[1]["resource"]["masterIdentifier"].update(value=OVER_WIDE),
         "Bundle.entry[1].resource.masterIdentifier.value"),
        (lambda e: e[0]["resource"]["identifier"][1].update(system=OVER),
         "Bundle.entry[0].resource.identifier[1].system"),
        (lambda e: e[0]["resource"]["extension"][0]["valueIdentifier"].update(value=OVER),
         "Bundle.entry[0].resource.extension[0].valueIdentifier.value"),
    )
    for edit, where in cases:
        refused(client.post("/fhir", json=changed(edit), headers=FHIR_JSON), 422, where, OVER)
    with_patient = changed(lambda e: e.insert(0, {
        "fullUrl": "urn:uuid:6f1e2c3a-0000-4000-8000-000000000001",
        "resource": {"resourceType": "Patient", "identifier": [{"system": PATIENT["system"], "value": OVER}]},
        "request": {"method": "POST", "url": "Patient"}}))
    refused(client.post("/fhir", json=with_patient, headers=FHIR_JSON), 422,
            "Bundle.entry[0].resource.identifier[0].value", OVER)
    nothing_stored(client)
    assert client.post("/fhir", json=good, headers=FHIR_JSON).status_code == 200


def test_a_consent_naming_an_identifier_over_the_bound_is_refused_on_create_and_update(client: FhirClient) -> None:
    """POST and PUT /fhir/Consent: Consent.patient.identifier over the bound, 422 naming it."""
    long_patient = {"system": PATIENT["system"], "value": OVER}
    refused(client.post("/fhir/Consent", json=consent_resource(["TRAIN"], patient=long_patient), headers=FHIR_JSON),
            422, "Consent.patient.identifier.value", OVER)
    nothing_stored(client)
    created = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON).json()
    update = {**created, "patient": {"identifier": {"system": OVER, "value": PATIENT["value"]}}}
    refused(client.put(f"/fhir/Consent/{created['id']}", json=update, headers=FHIR_JSON), 422,
            "Consent.patient.identifier.system", OVER)
    [stored] = [e["resource"] for e in client.get("/fhir/Consent", headers=as_purpose("TREAT")).json()["entry"]]
    assert stored["patient"] == created["patient"] and stored["meta"]["versionId"] == "1"


def test_a_search_naming_an_identifier_over_the_bound_is_not_understood(client: FhirClient) -> None:
    """patient:identifier, subject:identifier, patient.identifier (MHD's chain), identifier: 400
    (InvalidQuery, a query that cannot be understood), by GET and by POST _search alike."""
    for rtype, name, value in (
            ("Media", "patient:identifier", f"{PATIENT['system']}|{OVER}"),
            ("Media", "subject:identifier", f"{OVER_WIDE}|MRN-0001"),
            ("DocumentReference", "patient.identifier", f"{PATIENT['system']}|MRN-1,{PATIENT['system']}|{OVER}"),
            ("Consent", "patient:identifier", f"{PATIENT['system']}|{OVER}"),
            ("DocumentReference", "identifier", f"urn:ietf:rfc:3986|{OVER}"),
            ("Media", "identifier", OVER)):
        expression = name.replace(".", ":")
        refused(client.get(f"/fhir/{rtype}", params={name: value}, headers=as_purpose("TREAT")), 400,
                expression, OVER if OVER in value else OVER_WIDE)
        refused(client.post(f"/fhir/{rtype}/_search", data={name: value}, headers=as_purpose("TREAT")), 400,
                expression, OVER if OVER in value else OVER_WIDE)
    r = client.get("/fhir/Media", params={"patient:identifier": f"{PATIENT['system']}|{'M' * IDENTIFIER_MAX_BYTES}"},
                   headers=as_purpose("TREAT"))
    assert r.status_code == 200 and r.json()["total"] == 0


def _received(patient_id: str, **attrs: Any) -> Dataset:
    ds = photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg"), record_id=f"rec-{secrets.token_hex(4)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds.PatientID = patient_id
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
    return ds


def _stow(client: FhirClient, ds: Dataset) -> Any:
    with warnings.catch_warnings():  # pydicom warns of a value over its VR's length: what is sent here
        warnings.simplefilter("ignore", UserWarning)
        body = b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + encode_dataset(ds) + b"\r\n--b0--\r\n"
    return client.post("/dicomweb/studies", content=body,
                       headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0'})


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # pydicom's, reading the PatientID sent
def test_a_dicom_object_whose_patient_id_is_over_the_bound_is_refused_and_an_lo_never_is(client: FhirClient) -> None:
    """STOW-RS (the SCP's ingest path): a PatientID past the bound (far past LO's 64 characters)
    is refused with 0xC000, as PostgreSQL's index refused it and SQLite stored it; a PatientID
    of 64 characters beyond ASCII (LO, ISO_IR 192: 256 bytes) is stored on both stores."""
    r = _stow(client, _received(OVER))
    assert r.status_code == 409, r.text
    [failed] = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    nothing_stored(client)
    wide = "\U0001F600" * 64
    r = _stow(client, _received(wide, SpecificCharacterSet="ISO_IR 192"))
    assert r.status_code == 200, r.text
    found = client.get("/fhir/Media", params={"patient:identifier": f"{PATIENT['system']}|{wide}"},
                       headers=as_purpose("TREAT")).json()
    assert found["total"] == 1


def test_a_dicom_object_whose_patient_id_holds_a_control_character_is_refused(client: FhirClient) -> None:
    """A PatientID is an LO, which holds no control character: one that did went into the FHIR
    identifier.value as sent (FHIR strings allow none but tab, CR, LF), where a search by the
    patient's MRN never found it (found by the input-limits review). The patient cannot be
    matched: refused, 0xC000, nothing stored."""
    for patient_id in ("MRN\x01-0001", "MRN-0001\x7f", "MRN\t0001"):
        r = _stow(client, _received(patient_id))
        assert r.status_code == 409, (patient_id, r.text)
        [failed] = r.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [CANNOT_UNDERSTAND]
        nothing_stored(client)


def test_a_reference_or_code_over_the_bound_is_refused_as_an_identifier_is(client: FhirClient) -> None:
    """The same divergence for the other values the store indexes: the patient's literal
    reference (indexed to search by ``patient=Patient/…``) and the codes of a Consent or a record
    (search tokens) of thousands of characters were stored on SQLite and refused by PostgreSQL
    (422 naming nothing). The same bound applies: 422 naming the element, on both stores."""
    long_reference = "Patient/" + OVER
    refused(post_photo(client, WOUND, metadata(patient={**PATIENT, "reference": long_reference})), 422,
            "patient.reference", OVER)
    consent = consent_resource(["TRAIN"])
    consent["patient"]["reference"] = long_reference
    refused(client.post("/fhir/Consent", json=consent, headers=FHIR_JSON), 422, "Consent.patient.reference", OVER)
    consent = consent_resource(["TRAIN"])
    consent["category"][0]["coding"][0]["code"] = OVER
    refused(client.post("/fhir/Consent", json=consent, headers=FHIR_JSON), 422, "Consent.category[0].coding[0].code",
            OVER)
    bundle = provide_document_bundle(WOUND.read_bytes())
    bundle["entry"][1]["resource"]["securityLabel"][0]["coding"][0]["system"] = "urn:x:" + OVER
    refused(client.post("/fhir", json=bundle, headers=FHIR_JSON), 422,
            "Bundle.entry[1].resource.securityLabel[0].coding[0].system", OVER)
    nothing_stored(client)


@pytest.mark.filterwarnings("ignore:The value length:UserWarning")  # pydicom's, reading the Modality sent
def test_a_modality_longer_than_its_vr_is_refused_on_both_stores(client: FhirClient) -> None:
    """Found beside the identifiers: a Modality (CS, at most 16 characters) of 17 was stored on
    SQLite and, on PostgreSQL, overflowed the index's 16-character column (SQLSTATE 22001): a
    storage failure answered 0xA700 Out of Resources, which a PACS retries for ever. It was then
    left out of the index and the record, the object stored; since the DICOM review (finding 7)
    a value longer than its VR allows, in an attribute the adapter keeps as text, is refused:
    0xC000 naming the tag (STOW-RS: 409, FailureReason 0xC000), never a storage failure, the
    same on both stores (adapter.mapping.dicom_value_length)."""
    photo = _received(PATIENT["value"], Modality="ABCDEFGHIJKLMNOPQ")
    r = _stow(client, photo)
    assert r.status_code == 409, r.text
    [failed] = r.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [CANNOT_UNDERSTAND]
    nothing_stored(client)


def test_a_qido_rs_patient_id_over_the_bound_is_not_understood(client: FhirClient) -> None:
    """QIDO-RS PatientID and IssuerOfPatientID name a patient identifier as a FHIR search does:
    over the bound, the query is not understood (400, naming the key), at every level; at the
    bound it is a query like any other."""
    for path in ("studies", "series", "instances"):
        for keyword, value in (("PatientID", OVER), ("IssuerOfPatientID", OVER_WIDE), ("00100020", OVER)):
            r = client.get(f"/dicomweb/{path}", params={keyword: value}, headers=as_purpose("TREAT"))
            assert r.status_code == 400, (path, keyword, r.text[:200])
            assert r.json()["issue"][0]["expression"] == [keyword.replace("00100020", "PatientID")]
            assert value[:20] not in r.text
    r = client.get("/dicomweb/studies", params={"PatientID": "M" * IDENTIFIER_MAX_BYTES}, headers=as_purpose("TREAT"))
    assert r.status_code == 200 and r.content in (b"", b"[]")
