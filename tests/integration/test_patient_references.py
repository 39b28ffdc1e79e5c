"""One literal Patient reference names one patient (safety review 1): a photo or Consent naming
``Patient/<id>`` with another identifier than the one stored with it is refused 422 at the
reference, over POST /photos, a transaction Bundle and POST /fhir/Consent, on SQLite and
PostgreSQL; two concurrent ingests of one reference for two patients never both get through."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from adapter.errors import PatientReferenceConflict
from adapter.model.photo import PhotoMetadata
from adapter.model.purpose import PurposeOfUse, RequestContext
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
from tests.support.postgres import postgres_schema

WOUND = ROOT / "samples" / "wound.jpg"
SAMPLES = ROOT / "samples"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "sqlite":
        yield None
        return
    with postgres_schema("test_patient_refs") as url:
        yield url


def _patient(mrn: str, reference: str | None = "Patient/p-777") -> dict[str, Any]:
    patient: dict[str, Any] = {"system": PATIENT["system"], "value": mrn}
    if reference is not None:
        patient["reference"] = reference
    return patient


def _refused_at(response: Any, expression: str) -> dict[str, Any]:
    assert response.status_code == 422, response.text
    [issue] = response.json()["issue"]
    assert issue["code"] == "business-rule" and issue["expression"] == [expression]
    assert "MRN-W1" not in response.text  # the other patient's identifier is never echoed
    return issue


def test_a_reference_held_for_another_identifier_is_refused_on_every_path(tmp_path: Path,
                                                                          database_url: str | None) -> None:
    with adapter_client(tmp_path, database_url=database_url) as (client, _services):
        first = post_photo(client, WOUND, metadata(patient=_patient("MRN-W1")))
        assert first.status_code == 201, first.text
        # the same patient again, by the same reference, and its absolute URL: fine
        assert post_photo(client, ROOT / "samples" / "tiny.jpg", metadata(patient=_patient("MRN-W1"))).status_code == 201
        # POST /photos: another MRN, the same reference (relative, or an absolute URL of it)
        _refused_at(post_photo(client, WOUND, metadata(patient=_patient("MRN-W2"))), "patient.reference")
        _refused_at(post_photo(client, WOUND, metadata(patient=_patient(
            "MRN-W2", "https://ehr.example.org/fhir/Patient/p-777"))), "patient.reference")
        # a transaction Bundle whose subject pairs the reference with another identifier
        bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
        for entry in bundle["entry"]:
            for element in ("subject", "patient"):
                if element in entry["resource"]:
                    entry["resource"][element] = {"reference": "Patient/p-777", "type": "Patient",
                                                  "identifier": {"system": PATIENT["system"], "value": "MRN-W3"}}
        refused = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        _refused_at(refused, "Bundle.entry[1].resource.subject.reference")
        # a Consent naming the reference with another identifier
        consent = consent_resource(["TREAT"], patient={"system": PATIENT["system"], "value": "MRN-W4"})
        consent["patient"]["reference"] = "Patient/p-777"
        _refused_at(client.post("/fhir/Consent", json=consent), "Consent.patient.reference")
        # the search by the reference finds one patient's photos only; nothing of the refused stored
        for query in ("patient=Patient/p-777", "subject=Patient/p-777", "patient=p-777"):
            found = client.get(f"/fhir/Media?{query}", headers=as_purpose("TREAT")).json()
            assert found["total"] == 2
            assert {e["resource"]["subject"]["identifier"]["value"] for e in found["entry"]} == {"MRN-W1"}
        consents = client.get("/fhir/Consent?patient=Patient/p-777", headers=as_purpose("TREAT")).json()
        assert {e["resource"]["patient"]["identifier"]["value"] for e in consents["entry"]} == {"MRN-W1"}
        for mrn in ("MRN-W2", "MRN-W3", "MRN-W4"):
            none = client.get(f"/fhir/Media?patient:identifier={PATIENT['system']}|{mrn}", headers=as_purpose("TREAT"))
            assert none.json()["total"] == 0
        # without the reference, the other patients' photos are stored as before
        assert post_photo(client, WOUND, metadata(patient=_patient("MRN-W2", None))).status_code == 201


def test_a_reference_whose_records_are_all_entered_in_error_passes_to_the_right_patient(
        tmp_path: Path, database_url: str | None) -> None:
    """A photo misfiled under the wrong reference, marked entered-in-error, frees the reference
    once nothing of its patient names it any more (its Consent included)."""
    with adapter_client(tmp_path, database_url=database_url) as (client, _services):
        misfiled = post_photo(client, WOUND, metadata(patient=_patient("MRN-W1"))).json()
        _refused_at(post_photo(client, WOUND, metadata(patient=_patient("MRN-W2"))), "patient.reference")
        assert mark_entered_in_error(client, misfiled["record"]).status_code == 200
        # its Consent (the photo's consent statement) names the reference still
        _refused_at(post_photo(client, WOUND, metadata(patient=_patient("MRN-W2"))), "patient.reference")
        for consent_ref in misfiled["consents"]:
            consent = client.get(f"/fhir/{consent_ref}", headers=as_purpose("TREAT")).json()
            consent["status"] = "entered-in-error"
            assert client.put(f"/fhir/{consent_ref}", json=consent).status_code == 200
        assert post_photo(client, WOUND, metadata(patient=_patient("MRN-W2"))).status_code == 201
        _refused_at(post_photo(client, ROOT / "samples" / "tiny.jpg", metadata(patient=_patient("MRN-W1"))),
                    "patient.reference")


def test_two_patients_sent_at_once_with_one_reference_store_one(tmp_path: Path, database_url: str | None) -> None:
    """The race: eight ingests at once, four patients, one reference: exactly one patient's get
    through, every other is refused, whichever wins."""
    photo = WOUND.read_bytes()
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        start = threading.Barrier(8)
        outcomes: list[tuple[str, object]] = []
        ctx = RequestContext(purpose=PurposeOfUse("TREAT"))

        def post(n: int) -> None:
            mrn = f"MRN-R{n % 4}"
            meta = PhotoMetadata.model_validate(metadata(patient=_patient(mrn)))
            start.wait()
            try:
                services.ingest.ingest_photo(photo, meta, idempotency_key=None,
                                             ctx=ctx)
                outcomes.append((mrn, "stored"))
            except PatientReferenceConflict as exc:
                outcomes.append((mrn, exc))

        threads = [threading.Thread(target=post, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(outcomes) == 8
        winners = {mrn for mrn, outcome in outcomes if outcome == "stored"}
        assert len(winners) == 1
        found = client.get("/fhir/Media?patient=Patient/p-777", headers=as_purpose("TREAT")).json()
        assert {e["resource"]["subject"]["identifier"]["value"] for e in found["entry"]} == winners
        with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
            held = conn.execute(text("SELECT reference, patient_value FROM patient_references")).all()
        assert [tuple(row) for row in held] == [("Patient/p-777", next(iter(winners)))]
