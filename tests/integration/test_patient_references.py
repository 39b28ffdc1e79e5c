"""One literal Patient reference names one patient (safety review 1): a photo or Consent naming
``Patient/<id>`` with another identifier than the one stored with it is refused 422 at the
reference, over POST /photos, a transaction Bundle and POST /fhir/Consent, on SQLite and
PostgreSQL; two concurrent ingests of one reference for two patients never both get through. A
patient's reference in another form than a literal ``Patient/<id>`` (the id alone, a query, a
fragment, another type) is refused on the same paths ("verify" review 1, finding B1)."""

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
from tests.support.postgres import data_folder_or_postgres

WOUND = ROOT / "samples" / "wound.jpg"
SAMPLES = ROOT / "samples"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    yield from data_folder_or_postgres(request.param, "test_patient_refs")


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


#: Forms that are no literal reference to a Patient (https://hl7.org/fhir/R4/references.html#literal)
#: yet were stored as sent and never claimed ("verify" review 1, finding B1): the id alone, a query,
#: a fragment, a contained reference, another type, an id outside FHIR's id type, an empty version.
NOT_PATIENT_REFERENCES = ("z-5", "Patient/z-5?x=1", "Patient/z-5#a", "#z-5", "Practitioner/z-5", "Patient/",
                          "https://ehr.example.org/fhir/Patient/z-5?x=1", "Patient/z 5", "Patient/z-5/_history/")


def _not_a_patient_reference(response: Any, expression: str) -> None:
    if response.status_code == 400 and expression.startswith("Bundle."):  # a Bundle's query: a conditional reference
        [issue] = response.json()["issue"]
        assert issue["code"] == "not-supported" and issue["expression"] == [expression], issue
        assert "Patient?identifier=system|value" in issue["diagnostics"], issue
        return
    assert response.status_code == 422, response.text
    [issue] = response.json()["issue"]
    assert issue["code"] == "invalid" and issue["expression"] == [expression], issue
    assert "Patient/<id>" in issue["diagnostics"], issue  # the form expected


def _bundle_of(mrn: str, subject_reference: str | None, consent_reference: str | None) -> dict[str, Any]:
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    for entry, reference in zip(bundle["entry"][1:], (subject_reference, consent_reference), strict=True):
        named: dict[str, Any] = {"type": "Patient", "identifier": {"system": PATIENT["system"], "value": mrn}}
        if reference is not None:
            named["reference"] = reference
        entry["resource"]["subject" if entry["resource"]["resourceType"] == "Media" else "patient"] = named
    return bundle


def test_a_reference_that_is_no_literal_patient_reference_is_refused_on_every_path(
        tmp_path: Path, database_url: str | None) -> None:
    """The id alone (``z-5``), a query, a fragment, no type or another is refused 422 at the
    reference, saying the form expected, over POST /photos, a transaction Bundle (the record's
    subject, the Consent's patient) and POST/PUT /fhir/Consent: stored, it would not be claimed
    nor found by a search by that Patient, while a client following it would land on another
    patient's Patient. ``Patient/<id>``, with a version, or an absolute URL ending so, is taken,
    claimed by its ``Patient/<id>``; a search by the id alone finds it."""
    with adapter_client(tmp_path, database_url=database_url) as (client, _services):
        assert post_photo(client, WOUND, metadata(patient=_patient("MRN-Z1", "Patient/z-5"))).status_code == 201
        for reference in NOT_PATIENT_REFERENCES:
            _not_a_patient_reference(post_photo(client, WOUND, metadata(patient=_patient("MRN-Z2", reference))),
                                     "patient.reference")
            if reference != "#z-5":  # a subject's contained reference is not stored (its identifier is)
                refused = client.post("/fhir", json=_bundle_of("MRN-Z9", reference, None),
                                      headers={"Content-Type": "application/fhir+json"})
                _not_a_patient_reference(refused, "Bundle.entry[1].resource.subject.reference")
            refused = client.post("/fhir", json=_bundle_of("MRN-Z9", None, reference),
                                  headers={"Content-Type": "application/fhir+json"})
            _not_a_patient_reference(refused, "Bundle.entry[2].resource.patient.reference")
            consent = consent_resource(["TREAT"], patient={"system": PATIENT["system"], "value": "MRN-Z8"})
            consent["patient"]["reference"] = reference
            _not_a_patient_reference(client.post("/fhir/Consent", json=consent), "Consent.patient.reference")
        # a PUT naming such a reference anew
        consent = consent_resource(["TREAT"], patient={"system": PATIENT["system"], "value": "MRN-W1"})
        created = client.post("/fhir/Consent", json=consent)
        assert created.status_code == 201, created.text
        consent = {**created.json(), "patient": {**created.json()["patient"], "reference": "z-5"}}
        _not_a_patient_reference(client.put(f"/fhir/Consent/{consent['id']}", json=consent), "Consent.patient.reference")
        # the literal forms: a version, an absolute URL; the id alone is refused only as a reference
        for reference, photo in (("Patient/z-5/_history/3", "tiny.jpg"),
                                 ("https://ehr.example.org/fhir/Patient/z-5", "lesion.png")):
            stored = post_photo(client, SAMPLES / photo, metadata(patient=_patient("MRN-Z1", reference)))
            assert stored.status_code == 201, stored.text
            _refused_at(post_photo(client, WOUND, metadata(patient=_patient("MRN-Z2", reference))), "patient.reference")
        for query in ("patient=z-5", "patient=Patient/z-5", "subject=z-5"):
            found = client.get(f"/fhir/Media?{query}", headers=as_purpose("TREAT")).json()
            assert {e["resource"]["subject"]["identifier"]["value"] for e in found["entry"]} == {"MRN-Z1"}
            assert found["total"] == 2  # the absolute URL is another server's: found by that URL only
        for mrn in ("MRN-Z2", "MRN-Z8", "MRN-Z9"):
            none = client.get(f"/fhir/Media?patient:identifier={PATIENT['system']}|{mrn}", headers=as_purpose("TREAT"))
            assert none.json()["total"] == 0
            none = client.get(f"/fhir/Consent?patient:identifier={PATIENT['system']}|{mrn}", headers=as_purpose("TREAT"))
            assert none.json()["total"] == 0


#: docs/operations.md, "Upgrading to schemas 22 and 23": the records and Consents stored before
#: with a patient reference that is no literal Patient reference (kept, neither claimed nor searched).
_STORED_UNCLAIMED = {
    "sqlite": "SELECT resource_type, id FROM resources WHERE resource_type IN ('Media', 'DocumentReference', "
              "'Consent') AND patient_reference IS NULL AND coalesce(json_extract(json, '$.subject.reference'), "
              "json_extract(json, '$.patient.reference')) IS NOT NULL",
    "postgresql": "SELECT resource_type, id FROM resources WHERE resource_type IN ('Media', 'DocumentReference', "
                  "'Consent') AND patient_reference IS NULL AND coalesce(json::jsonb #>> '{subject,reference}', "
                  "json::jsonb #>> '{patient,reference}') IS NOT NULL",
}


def test_what_was_stored_before_with_such_a_reference_is_found_and_corrected(
        tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """A photo and a Consent stored before the check with the id alone: the documented query
    finds them; the Consent can be withdrawn and the record marked, keeping the reference (never
    refused); naming another such reference anew is refused."""
    from adapter.mapping import consent_checks
    from adapter.model import photo

    monkeypatch.setattr(photo, "patient_reference_problem", lambda reference: None)
    monkeypatch.setattr(consent_checks, "patient_reference_problem", lambda reference: None)
    with adapter_client(tmp_path, database_url=database_url) as (client, services):
        before = post_photo(client, WOUND, metadata(patient=_patient("MRN-Z2", "z-5")))
        assert before.status_code == 201, before.text
        consent = consent_resource(["TREAT"], patient={"system": PATIENT["system"], "value": "MRN-Z8"})
        consent["patient"]["reference"] = "Patient/z-5?x=1"
        created = client.post("/fhir/Consent", json=consent)
        assert created.status_code == 201, created.text
        monkeypatch.undo()
        engine = services.store.engine  # type: ignore[attr-defined]
        with engine.connect() as conn:
            found = {f"{row[0]}/{row[1]}" for row in conn.execute(text(_STORED_UNCLAIMED[engine.dialect.name]))}
        assert found == {before.json()["record"], *before.json()["consents"], f"Consent/{created.json()['id']}"}
        assert _withdrawn(client, f"Consent/{created.json()['id']}").status_code == 200
        [own] = before.json()["consents"]
        assert _withdrawn(client, own).status_code == 200
        assert mark_entered_in_error(client, before.json()["record"]).status_code == 200
        renamed = client.get(f"/fhir/Consent/{created.json()['id']}", headers=as_purpose("TREAT")).json()
        renamed["patient"]["reference"] = "y-6"
        _not_a_patient_reference(client.put(f"/fhir/Consent/{renamed['id']}", json=renamed), "Consent.patient.reference")
