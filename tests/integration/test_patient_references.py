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
    """A photo misfiled under the wrong reference, marked entered-in-error, frees the reference:
    its own Consent (the photo's consent statement, restricted to it) holds it no longer."""
    with adapter_client(tmp_path, database_url=database_url) as (client, _services):
        misfiled = post_photo(client, WOUND, metadata(patient=_patient("MRN-W1"))).json()
        _refused_at(post_photo(client, WOUND, metadata(patient=_patient("MRN-W2"))), "patient.reference")
        # the documented correction: the PATCH of the record alone; its own Consent (restricted to
        # it, provision.data) no longer holds the reference with it
        assert mark_entered_in_error(client, misfiled["record"]).status_code == 200
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


def _withdrawn(client: Any, consent_ref: str, status: str = "inactive") -> Any:
    """PUT of the Consent ``consent_ref`` with ``status``: the patient withdraws it (inactive),
    or it is marked entered-in-error."""
    consent = client.get(f"/fhir/{consent_ref}", headers=as_purpose("TREAT")).json()
    consent["status"] = status
    return client.put(f"/fhir/{consent_ref}", json=consent)


def test_the_other_patients_withdrawals_and_marks_are_never_refused(tmp_path: Path, database_url: str | None) -> None:
    """Only a version that names a reference first, or names it with another identifier than the
    version before, claims it: once the reference has passed to another patient, the first one's
    Consent can still be withdrawn and marked; naming the reference again is refused."""
    with adapter_client(tmp_path, database_url=database_url) as (client, _services):
        misfiled = post_photo(client, WOUND, metadata(patient=_patient("MRN-W1"))).json()
        assert mark_entered_in_error(client, misfiled["record"]).status_code == 200
        assert post_photo(client, WOUND, metadata(patient=_patient("MRN-W2"))).status_code == 201
        [consent_ref] = misfiled["consents"]
        assert _withdrawn(client, consent_ref).status_code == 200, "the withdrawal of MRN-W1's Consent"
        assert _withdrawn(client, consent_ref, "entered-in-error").status_code == 200
        # made active again, it would name the reference anew with MRN-W1: refused
        _refused_at(_withdrawn(client, consent_ref, "active"), "Consent.patient.reference")
        consent = consent_resource(["TREAT"], patient={"system": PATIENT["system"], "value": "MRN-W1"})
        consent["patient"]["reference"] = "Patient/p-777"
        _refused_at(client.post("/fhir/Consent", json=consent), "Consent.patient.reference")


def _build_mixed_chart_at_schema_21(tmp_path: Path, database_url: str | None,
                                    monkeypatch: pytest.MonkeyPatch) -> dict[str, dict[str, Any]]:
    """The chart safety review 1 found, as schema 21 held it (no claims then): ``Patient/u-1``
    stored for MRN-U1 (the photo marked entered-in-error before the upgrade), then MRN-U2, then
    MRN-U3 by an absolute URL; then the store put back to schema 21 (as the migration tests do)."""
    from adapter.store import sql

    monkeypatch.setattr(sql, "claim_patient_references", lambda *args, **kwargs: None)
    receipts: dict[str, dict[str, Any]] = {}
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        for mrn, reference in (("MRN-U1", "Patient/u-1"), ("MRN-U2", "Patient/u-1"),
                               ("MRN-U3", "http://ehr.example/fhir/Patient/u-1")):
            stored = post_photo(client, WOUND, metadata(patient=_patient(mrn, reference)))
            assert stored.status_code == 201, stored.text
            receipts[mrn] = stored.json()
        assert mark_entered_in_error(client, receipts["MRN-U1"]["record"]).status_code == 200
        with services.store.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(text("DROP TABLE patient_references"))
            conn.execute(text("UPDATE schema_version SET version = 21"))
    monkeypatch.undo()
    return receipts


def test_after_the_upgrade_a_disputed_reference_is_corrected_as_documented(
        tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """21 → 22 on the mixed chart: the records and Consents marked entered-in-error before the
    upgrade hold nothing (the reference goes to MRN-U2, disputed with MRN-U3); the other patient's
    Consent can be withdrawn and its record marked; marking the holder's misfiled photo (its own
    Consent with it) frees the reference for the right patient."""
    receipts = _build_mixed_chart_at_schema_21(tmp_path, database_url, monkeypatch)
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
            held = conn.execute(text("SELECT reference, patient_value, disputed FROM patient_references")).all()
        assert [(row[0], row[1], bool(row[2])) for row in held] == [("Patient/u-1", "MRN-U2", True)]
        # MRN-U3, who does not hold it: its withdrawal and its record's mark go through
        [u3_consent] = receipts["MRN-U3"]["consents"]
        assert _withdrawn(client, u3_consent).status_code == 200
        assert mark_entered_in_error(client, receipts["MRN-U3"]["record"]).status_code == 200
        # the right patient's new photo is refused while MRN-U2's holds the reference, and told how to free it
        issue = _refused_at(post_photo(client, ROOT / "samples" / "tiny.jpg",
                                       metadata(patient=_patient("MRN-U3", "Patient/u-1"))), "patient.reference")
        assert "entered-in-error" in issue["diagnostics"] and "Correcting a misfiled record" in issue["diagnostics"]
        assert "MRN-U2" not in issue["diagnostics"]
        # the documented correction: MRN-U2's misfiled photo marked, nothing else
        assert mark_entered_in_error(client, receipts["MRN-U2"]["record"]).status_code == 200
        assert post_photo(client, ROOT / "samples" / "tiny.jpg",
                          metadata(patient=_patient("MRN-U3", "Patient/u-1"))).status_code == 201
        _refused_at(post_photo(client, ROOT / "samples" / "tiny.jpg",
                               metadata(patient=_patient("MRN-U2", "Patient/u-1"))), "patient.reference")
