"""Every refusal of a write carries a code of the adapter's own in ``issue.details.coding``
(system ``urn:clinical-image-adapter:refusal``, docs/fhir-api.md "Refusal codes"), so an
integration engine routes on it, never on the English diagnostics: refusals that share their HTTP
status, IssueType and expression (no consent on file; an Idempotency-Key reused) differ by it
(review mhd finding 4). Over the real app and a real SQLite store."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT
from tests.support.app import (
    PATIENT,
    adapter_client,
    as_purpose,
    consent_resource,
    mark_entered_in_error,
    metadata,
    post_photo,
)
from tests.support.fhir_factories import jpeg_bytes
from tests.support.mhd import INGEST_WARNING, provide_document_bundle, provide_documents_bundle

REFUSAL = "urn:clinical-image-adapter:refusal"
WOUND = ROOT / "samples" / "wound.jpg"
TINY = ROOT / "samples" / "tiny.jpg"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def refusal_code(response: httpx.Response, status: int) -> str:
    """The refusal's code in the adapter's refusal system, with its display (one issue, one code)."""
    assert response.status_code == status, response.text
    [issue] = response.json()["issue"]
    codings = [c for c in issue["details"]["coding"] if c["system"] == REFUSAL]
    assert len(codings) == 1, issue
    assert codings[0]["display"], codings[0]
    return str(codings[0]["code"])


def _jpeg_file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _post_bundle(client: Any, bundle: dict[str, Any], **headers: str) -> httpx.Response:
    return client.post("/fhir", content=json.dumps(bundle).encode(), headers={**FHIR_JSON, **headers})


# -- consent -------------------------------------------------------------------------------------


def test_no_consent_and_a_reused_key_differ_by_their_code(tmp_path: Path) -> None:
    """The review's two rows: same status, IssueType and expression; told apart by the code."""
    with adapter_client(tmp_path) as (client, _services):
        no_consent = provide_document_bundle(jpeg_bytes(64, 48))
        no_consent["entry"][1]["resource"].pop("extension")  # a clinical photo, with no consent on file
        assert refusal_code(_post_bundle(client, no_consent), 422) == "consent-required"
        stored = _post_bundle(client, provide_document_bundle(jpeg_bytes(64, 48)), **{"Idempotency-Key": "k-1"})
        assert stored.status_code == 200, stored.text
        reused = _post_bundle(client, provide_document_bundle(jpeg_bytes(66, 50)), **{"Idempotency-Key": "k-1"})
        assert refusal_code(reused, 422) == "idempotency-key-reused"


def test_a_photo_without_consent_is_refused_as_consent_required(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        assert refusal_code(post_photo(client, WOUND, metadata(consent=None)), 422) == "consent-required"


def test_verbal_consent_where_written_is_required(tmp_path: Path) -> None:
    with adapter_client(tmp_path, policy={"consent": {"writtenRequired": True}}) as (client, _services):
        assert refusal_code(post_photo(client, WOUND, metadata()), 422) == "written-consent-required"


def test_implied_consent_for_more_than_care_is_insufficient(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        meta = metadata(source="patient", consent={"purposes": ["TREAT", "HRESCH"], "method": "implied"})
        assert refusal_code(post_photo(client, WOUND, meta), 422) == "consent-insufficient"


def test_a_consent_on_file_denying_care(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        deny = consent_resource(["TREAT"])
        deny["provision"]["type"] = "deny"
        assert client.post("/fhir/Consent", json=deny).status_code == 201
        assert refusal_code(post_photo(client, WOUND, metadata()), 422) == "consent-denied"


def test_a_personal_device_where_the_policy_forbids_it(tmp_path: Path) -> None:
    with adapter_client(tmp_path, policy={"devices": {"personalAllowed": False}}) as (client, _services):
        assert refusal_code(post_photo(client, WOUND, metadata(device="personal")), 422) == "personal-device-refused"


# -- retries -------------------------------------------------------------------------------------


def test_a_key_reused_for_another_photo(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        assert post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "k-2"}).status_code == 201
        reused = post_photo(client, TINY, metadata(), headers={"Idempotency-Key": "k-2"})
        assert refusal_code(reused, 422) == "idempotency-key-reused"


def test_stored_with_other_details_keeps_its_ingest_warning_code(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        key = {"Idempotency-Key": "k-3"}
        assert post_photo(client, WOUND, metadata(bodySite="14975008", laterality="left"), headers=key).status_code == 201
        other = post_photo(client, WOUND, metadata(bodySite="14975008", laterality="right"), headers=key)
        assert refusal_code(other, 409) == "stored-with-other-details"
        [issue] = other.json()["issue"]
        assert {"system": INGEST_WARNING, "code": "stored-with-other-details"}.items() <= \
            issue["details"]["coding"][0].items()


def test_a_retry_of_a_photo_since_marked_entered_in_error(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        first = post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "k-4"})
        assert first.status_code == 201, first.text
        assert mark_entered_in_error(client, first.json()["record"]).status_code == 200
        again = post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "k-4"})
        assert refusal_code(again, 409) == "stored-entered-in-error"


def test_a_submission_partly_stored_before(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        one, two = jpeg_bytes(64, 48), jpeg_bytes(66, 50)
        assert _post_bundle(client, provide_document_bundle(one)).status_code == 200
        assert refusal_code(_post_bundle(client, provide_documents_bundle([one, two])), 409) == "partially-stored"


# -- the image -----------------------------------------------------------------------------------


def test_an_image_that_does_not_decode(tmp_path: Path) -> None:
    broken = _jpeg_file(tmp_path, "broken.jpg", WOUND.read_bytes()[:600])
    with adapter_client(tmp_path) as (client, _services):
        assert refusal_code(post_photo(client, broken, metadata()), 422) == "undecodable-image"


def test_an_image_of_another_type(tmp_path: Path) -> None:
    text = _jpeg_file(tmp_path, "note.txt", b"not a photo\n" * 20)
    with adapter_client(tmp_path) as (client, _services):
        assert refusal_code(post_photo(client, text, metadata()), 415) == "unsupported-media-type"


def test_an_image_of_too_many_pixels(tmp_path: Path) -> None:
    with adapter_client(tmp_path, policy={"limits": {"maxPixels": 100_000}}) as (client, _services):
        assert refusal_code(post_photo(client, WOUND, metadata()), 422) == "too-many-pixels"


def test_a_photo_over_the_upload_limit(tmp_path: Path) -> None:
    with adapter_client(tmp_path, max_upload_bytes=50_000) as (client, _services):
        assert refusal_code(post_photo(client, WOUND, metadata()), 413) == "payload-too-large"


def test_a_document_whose_hash_or_size_is_not_the_bytes_sent(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        for element, value in (("hash", base64.b64encode(b"\0" * 20).decode()), ("size", 7)):
            bundle = provide_document_bundle(jpeg_bytes(64, 48))
            bundle["entry"][1]["resource"]["content"][0]["attachment"][element] = value
            refused = _post_bundle(client, bundle)
            assert refusal_code(refused, 422) == "attachment-mismatch"
            assert refused.json()["issue"][0]["details"]["text"] == "XDSRepositoryMetadataError"


# -- patients ------------------------------------------------------------------------------------


def test_documents_of_two_patients_in_one_bundle(tmp_path: Path) -> None:
    other = {"system": PATIENT["system"], "value": "MRN-OTHER"}
    with adapter_client(tmp_path) as (client, _services):
        bundle = provide_documents_bundle([jpeg_bytes(64, 48), jpeg_bytes(66, 50)], patients=[None, other])
        assert refusal_code(_post_bundle(client, bundle), 422) == "several-patients"


def test_a_patient_reference_held_for_another_patient(tmp_path: Path) -> None:
    def patient(mrn: str) -> dict[str, str]:
        return {"system": PATIENT["system"], "value": mrn, "reference": "Patient/p-9"}

    with adapter_client(tmp_path) as (client, _services):
        assert post_photo(client, WOUND, metadata(patient=patient("MRN-A"))).status_code == 201
        refused = post_photo(client, TINY, metadata(patient=patient("MRN-B")))
        assert refusal_code(refused, 422) == "patient-reference-conflict"
        consent = consent_resource(["TREAT"], patient={"system": PATIENT["system"], "value": "MRN-C"})
        consent["patient"]["reference"] = "Patient/p-9"
        assert refusal_code(client.post("/fhir/Consent", json=consent), 422) == "patient-reference-conflict"


# -- purpose, Consent writes, PATCH --------------------------------------------------------------


def test_a_write_stated_for_a_purpose_that_sees_less(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        refused = post_photo(client, WOUND, metadata(), headers=as_purpose("TRAIN"))
        assert refusal_code(refused, 403) == "purpose-not-for-write"
        unknown = client.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=as_purpose("NOPE"))
        assert refusal_code(unknown, 400) == "unknown-purpose-of-use"


def test_consent_writes_and_patches_are_coded(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        invalid = consent_resource(["TREAT"])
        invalid["status"] = "nonsense"
        assert refusal_code(client.post("/fhir/Consent", json=invalid), 422) == "unknown-code"
        stored = post_photo(client, WOUND, metadata())
        record = stored.json()["record"]
        other = [{"op": "replace", "path": "/status", "value": "inactive"}]
        assert refusal_code(mark_entered_in_error(client, record, other), 422) == "only-entered-in-error"
        unknown = mark_entered_in_error(client, "Media/not-there")
        assert refusal_code(unknown, 404) == "not-found"


def test_a_batch_entry_refused_is_coded(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _services):
        batch = {"resourceType": "Bundle", "type": "batch",
                 "entry": [{"request": {"method": "POST", "url": "Consent"}, "resource": consent_resource(["TREAT"])}]}
        answer = _post_bundle(client, batch, **as_purpose("TREAT"))
        assert answer.status_code == 200, answer.text
        [issue] = answer.json()["entry"][0]["response"]["outcome"]["issue"]
        assert [(c["system"], c["code"]) for c in issue["details"]["coding"]] == [(REFUSAL, "not-supported")]
