"""Every refusal of a ``POST /fhir`` transaction or a ``POST /photos`` upload writes one failure
AuditEvent (IHE BALP: a refused create, outcome 4), as the refusals by the rules always did (review
newwrites F5: a Bundle refused while it was read, or its image while it was stripped, left none).
A refusal audited already (the rules, a partial resend) is audited once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, metadata, post_photo
from tests.support.audit import patients
from tests.support.fhir_factories import jpeg_bytes
from tests.support.mhd import provide_documents_bundle

pytestmark = pytest.mark.integration

FHIR = {"Content-Type": "application/fhir+json"}
OTHER = {"system": "urn:oid:2.999.1.1", "value": "MRN-0002"}
DOCUMENTS = [jpeg_bytes(320 + 40 * k, 240) for k in range(3)]


def _not_an_image(entries: list[dict[str, Any]]) -> None:
    entries[6]["resource"]["data"] = base64.b64encode(b"%PDF-1.4 not an image at all").decode()


def _truncated(entries: list[dict[str, Any]]) -> None:
    entries[6]["resource"]["data"] = base64.b64encode((ROOT / "samples" / "truncated.jpg").read_bytes()).decode()
    for key in ("size", "hash"):
        del entries[5]["resource"]["content"][0]["attachment"][key]


def _entered_in_error(entries: list[dict[str, Any]]) -> None:
    entries[5]["resource"]["status"] = "entered-in-error"


def _modifier_extension(entries: list[dict[str, Any]]) -> None:
    entries[5]["resource"]["modifierExtension"] = [{"url": "http://example.org/x", "valueBoolean": True}]


def _put(entries: list[dict[str, Any]]) -> None:
    entries[5]["request"] = {"method": "PUT", "url": "DocumentReference/x"}


def _wrong_size(entries: list[dict[str, Any]]) -> None:
    entries[5]["resource"]["content"][0]["attachment"]["size"] = 7


def _no_binary(entries: list[dict[str, Any]]) -> None:
    entries[5]["resource"]["content"][0]["attachment"]["url"] = "urn:uuid:00000000-0000-4000-8000-000000000000"


def _binary_twice(entries: list[dict[str, Any]]) -> None:
    entries[5]["resource"]["content"][0]["attachment"] = dict(entries[3]["resource"]["content"][0]["attachment"])


REFUSALS: dict[str, tuple[Callable[[list[dict[str, Any]]], None] | None, bool]] = {
    # the refusal, and whether the patient is known when it is made (the Bundle was read)
    "not an image": (_not_an_image, False),  # its contentType contradicted while the Bundle is read
    "truncated JPEG": (_truncated, True),
    "another patient": (None, False),
    "status entered-in-error": (_entered_in_error, False),
    "modifierExtension": (_modifier_extension, False),
    "PUT": (_put, False),
    "wrong attachment.size": (_wrong_size, False),
    "content.url naming no Binary": (_no_binary, False),
    "a Binary referenced twice": (_binary_twice, False),
}


def _events(services: Any) -> list[dict[str, Any]]:
    return list(services.store.list_audit(10_000))


def _one_refusal(services: Any, before: int, *, patient_known: bool) -> dict[str, Any]:
    events = _events(services)
    assert len(events) == before + 1, [e.get("outcomeDesc") for e in events[:3]]
    event = events[0]  # newest first
    assert event["outcome"] == "4" and event["action"] == "C", event
    assert event["subtype"][0]["code"] in ("create", "ITI-65")  # a transaction is MHD-shaped
    assert patients(event) == ([{"system": PATIENT["system"], "value": PATIENT["value"]}] if patient_known else [])
    return event


@pytest.mark.parametrize("refusal", list(REFUSALS))
def test_every_refused_transaction_is_audited_once(tmp_path: Path, refusal: str) -> None:
    """Seen failing: no AuditEvent for any of these."""
    change, patient_known = REFUSALS[refusal]
    if refusal == "another patient":
        bundle = provide_documents_bundle(DOCUMENTS, patients=[None, None, OTHER])
    else:
        bundle = provide_documents_bundle(DOCUMENTS)
        assert change is not None
        change(bundle["entry"])
    with adapter_client(tmp_path) as (client, services):
        before = len(_events(services))
        r = client.post("/fhir", content=json.dumps(bundle).encode(), headers=FHIR)
        assert 400 <= r.status_code < 500, r.text
        event = _one_refusal(services, before, patient_known=patient_known)
        assert event["outcomeDesc"] == r.json()["issue"][0]["diagnostics"]


def test_a_refused_single_document_transaction_and_photo_are_audited_once(tmp_path: Path) -> None:
    not_an_image = tmp_path / "photo.jpg"
    not_an_image.write_bytes(b"%PDF-1.4 not an image at all")
    bundle = provide_documents_bundle(DOCUMENTS[:1])  # a truncated JPEG: refused by the ingest of one photo
    bundle["entry"][2]["resource"]["data"] = base64.b64encode((ROOT / "samples" / "truncated.jpg").read_bytes()).decode()
    for key in ("size", "hash"):
        del bundle["entry"][1]["resource"]["content"][0]["attachment"][key]
    with adapter_client(tmp_path) as (client, services):
        before = len(_events(services))
        refused = client.post("/fhir", json=bundle, headers=FHIR)
        assert refused.status_code == 422, refused.text
        _one_refusal(services, before, patient_known=True)
        before += 1
        assert post_photo(client, not_an_image, metadata(), content_type="application/octet-stream").status_code == 415
        _one_refusal(services, before, patient_known=True)
        before += 1
        # metadata refused for another element than its valid patient: the patient is known (DPO review
        # F5; seen failing: no patient named)
        bad_metadata = post_photo(client, ROOT / "samples" / "wound.jpg", {"patient": PATIENT, "kind": "nonsense"})
        assert bad_metadata.status_code == 422, bad_metadata.text
        _one_refusal(services, before, patient_known=True)
        before += 1
        document = metadata(kind="document", bodySite="14975008", consent=None)
        refused = post_photo(client, ROOT / "samples" / "wound.jpg", document)
        assert refused.status_code == 422 and "bodySite" in refused.text, refused.text
        _one_refusal(services, before, patient_known=True)
        before += 1
        # a patient element that is itself invalid names no patient
        for patient in ({"system": PATIENT["system"]}, "MRN-0001", {**PATIENT, "value": ""}):
            bad_patient = post_photo(client, ROOT / "samples" / "wound.jpg", metadata(patient=patient))
            assert bad_patient.status_code == 422, bad_patient.text
            _one_refusal(services, before, patient_known=False)
            before += 1


def test_a_refusal_audited_by_the_rules_is_audited_once(tmp_path: Path) -> None:
    """A clinical photo without consent: refused by the rules, which audit it; not twice."""
    bundle = provide_documents_bundle(DOCUMENTS)
    bundle["entry"][3]["resource"]["extension"] = [
        {"url": "http://clinical-image-adapter.org/fhir/StructureDefinition/photo-kind", "valueCode": "clinical"}]
    with adapter_client(tmp_path) as (client, services):
        before = len(_events(services))
        assert client.post("/fhir", json=bundle, headers=FHIR).status_code == 422
        _one_refusal(services, before, patient_known=True)
