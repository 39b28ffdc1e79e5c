"""White space around an identifier or a reference, or an invisible character in one, refused on
every channel that takes FHIR (adapter.model.photo.unmatchable), and a Consent's data reference that is no literal reference,
refused when written (adapter.services.consents) and read as naming no record
(adapter.consent.grants.literal_type_id).

Found by the egress review: a photo sent for patient ``MRN-2001 `` passed the active Consent of
``MRN-2001`` denying care (identifiers are matched exactly) and was forwarded to the PACS as
``MRN-2001`` (DICOM's padding is not significant); a deny of TRAIN naming its record
``Media/<id>/`` was stored (201) and never applied, so the patient's TRAIN permit released the
record."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.app import (
    PATIENT,
    FhirClient,
    adapter_client,
    as_purpose,
    consent_resource,
    metadata,
    post_photo,
)
from tests.support.mhd import provide_document_bundle

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
DOCUMENT = ROOT / "samples" / "document.jpg"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
V3_ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FhirClient]:
    with adapter_client(tmp_path) as (c, _):
        yield c


def refused(r: Any, expression: str) -> None:
    assert r.status_code == 422, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [expression], outcome


def stored(client: FhirClient) -> int:
    return sum(client.get(f"/fhir/{rtype}", headers=as_purpose("TREAT")).json()["total"]
               for rtype in ("Media", "DocumentReference", "Consent"))


def deny(purpose: str, patient: dict[str, str] = PATIENT, **provision: Any) -> dict[str, Any]:
    consent = consent_resource([purpose], patient=patient)
    consent["provision"] = {"type": "deny", "period": {"start": "2020-01-01"},
                            "purpose": [{"system": V3_ACT_REASON, "code": purpose}], **provision}
    return consent


@pytest.mark.parametrize("value", [f"{PATIENT['value']} ", f" {PATIENT['value']}", f"{PATIENT['value']}\n",
                                   f"{PATIENT['value']}\u200b", "MRN\u00ad-0001", f"\ufeff{PATIENT['value']}",
                                   "MRN\t-0001"], ids=["trailing", "leading", "newline", "zero-width-space",
                                                          "soft-hyphen", "bom", "tab"])
def test_a_photo_for_a_padded_identifier_does_not_escape_the_patients_denial_of_care(
        client: FhirClient, value: str) -> None:
    assert client.post("/fhir/Consent", json=deny("TREAT"), headers=FHIR_JSON).status_code == 201
    document = metadata(kind="document")
    r = post_photo(client, DOCUMENT, document)
    assert r.status_code == 422 and "denies TREAT" in r.text, r.text  # the patient as the Consent names them
    refused(post_photo(client, DOCUMENT, metadata(kind="document", patient={**PATIENT, "value": value})),
            "patient.value")
    refused(post_photo(client, WOUND, metadata(patient={**PATIENT, "system": PATIENT["system"] + " "})),
            "patient.system")
    assert stored(client) == 1  # the Consent only


@pytest.mark.parametrize("suffix", [" ", "\u200b"])
def test_a_consent_or_transaction_naming_a_padded_identifier_is_refused(client: FhirClient, suffix: str) -> None:
    """A deny for ``MRN-0001 `` (or with a zero-width space) would deny nobody; a document filed
    for it would escape the patient's Consents: 422 naming the element, nothing stored."""
    padded = {**PATIENT, "value": PATIENT["value"] + suffix}
    refused(client.post("/fhir/Consent", json=deny("TREAT", patient=padded), headers=FHIR_JSON),
            "Consent.patient.identifier.value")
    bundle = provide_document_bundle(DOCUMENT.read_bytes())
    bundle["entry"][1]["resource"]["subject"] = {"identifier": padded}
    refused(client.post("/fhir", json=bundle, headers=FHIR_JSON), "Bundle.entry[1].resource.subject.identifier.value")
    assert stored(client) == 0


@pytest.mark.parametrize("written", ["{id}/", "/{id}", "{id} ", "{id}/_history", "{bare}"])
def test_a_deny_naming_its_record_in_no_literal_reference_form_is_refused_and_the_record_stays_closed(
        client: FhirClient, written: str) -> None:
    photo = post_photo(client, WOUND, metadata(consent={"purposes": ["TREAT", "TRAIN"], "method": "written"}))
    assert photo.status_code == 201, photo.text
    record = photo.json()["record"]
    [entry] = client.get("/fhir/Media", headers=as_purpose("TRAIN")).json()["entry"]
    trained = f"Media/{entry['resource']['id']}"  # as TRAIN names it
    assert client.get(f"/fhir/{trained}", headers=as_purpose("TRAIN")).status_code == 200
    reference = written.format(id=record, bare=record.split("/")[1])
    refused(client.post("/fhir/Consent", json=deny("TRAIN", data=[
        {"meaning": "instance", "reference": {"reference": reference}}]), headers=FHIR_JSON),
        "Consent.provision.data[0].reference.reference")
    nested = consent_resource(["TRAIN"])
    nested["provision"]["provision"] = [{"type": "deny", "data": [
        {"meaning": "instance", "reference": {"reference": reference}}]}]
    refused(client.post("/fhir/Consent", json=copy.deepcopy(nested), headers=FHIR_JSON),
            "Consent.provision.provision[0].data[0].reference.reference")
    good = deny("TRAIN", data=[{"meaning": "instance", "reference": {"reference": record}}])
    assert client.post("/fhir/Consent", json=good, headers=FHIR_JSON).status_code == 201
    assert client.get(f"/fhir/{trained}", headers=as_purpose("TRAIN")).status_code == 404


def test_a_consent_naming_its_record_by_identifier_only_is_refused_not_half_applied(client: FhirClient) -> None:
    """Review finding: a data entry naming its record by identifier (or display) only was stored
    (201), and read as data that cannot be told: a permit permitting nothing, a deny denying all
    the patient's data. Refused (422) as the README says of what the decision cannot read."""
    for provision_type in ("permit", "deny"):
        consent = consent_resource(["TRAIN"])
        consent["provision"]["type"] = provision_type
        consent["provision"]["data"] = [{"meaning": "instance", "reference": {
            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:oid:1.2.3.4"}}}]
        refused(client.post("/fhir/Consent", json=consent, headers=FHIR_JSON),
                "Consent.provision.data[0].reference.reference")
    assert stored(client) == 0
