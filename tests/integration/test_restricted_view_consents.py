"""What a purpose other than care learns of a patient's Consents and of the records they withhold,
over the real app (review verify-1, section B findings 2 and 3).

A researcher (HRESCH, pseudonymised) or a trainer (TRAIN, de-identified) reads only the Consents
that permit its purpose, shown as that permission: not a deny naming (by the view's own id) a
photo it is not released, not a withdrawn or a care Consent, not a nested refusal; a view id
whose record the purpose may not read is 404 as an id that never existed, on read, vread,
_history, Binary and WADO-RS; and the pseudonymised view shows the dates the adapter gave a
Consent from its clock (the storage instant) as their UTC day. Care still reads every Consent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapter.mapping.codes import DICOM_UID_SYSTEM
from adapter.model.decision import View
from adapter.services.registry import Services
from tests.integration.test_forwarding import photo_jpeg
from tests.support.app import FhirClient, adapter_client, as_purpose, consent_resource, post_photo, seen_as

pytestmark = pytest.mark.integration

SYSTEM, MRN = "urn:oid:2.999.1.1", "MRN-VIEWS-1"
PATIENT = {"system": SYSTEM, "value": MRN}
JSON_TYPE = {"Content-Type": "application/fhir+json"}
V3 = "http://terminology.hl7.org/CodeSystem/v3-ActReason"


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with adapter_client(tmp_path) as pair:
        yield pair


def _photo(client: FhirClient, tmp_path: Path, seed: int, consent: dict[str, Any]) -> dict[str, Any]:
    meta = {"patient": PATIENT, "kind": "clinical", "source": "clinician", "consent": consent}
    r = post_photo(client, photo_jpeg(tmp_path, seed), meta)
    assert r.status_code == 201, r.text
    receipt: dict[str, Any] = r.json()
    return receipt


def _consent(client: FhirClient, body: dict[str, Any]) -> str:
    r = client.post("/fhir/Consent", json=body, headers=JSON_TYPE)
    assert r.status_code == 201, r.text
    return f"Consent/{r.json()['id']}"


def _data(*records: str) -> list[dict[str, Any]]:
    return [{"meaning": "instance", "reference": {"reference": r}} for r in records]


def _consents(client: FhirClient, purpose: str) -> dict[str, dict[str, Any]]:
    r = client.get("/fhir/Consent?_count=100", headers=as_purpose(purpose))
    assert r.status_code == 200, r.text
    return {f"Consent/{e['resource']['id']}": e["resource"] for e in r.json().get("entry", [])}


def _unknown(reference: str) -> str:
    """``reference`` with its id's last character changed: an id of nothing."""
    return reference[:-1] + ("a" if reference[-1] != "a" else "b")


def _outcome(r: Any, asked: str) -> str:
    """The 404's OperationOutcome, the id asked for replaced, to compare with another's."""
    assert r.status_code == 404, (r.status_code, r.text[:300])
    return json.dumps(r.json()).replace(asked.rsplit("/", 1)[-1], "<id>")


@pytest.fixture
def chart(adapter: tuple[FhirClient, Services], tmp_path: Path) -> dict[str, str]:
    """One patient: a research and training permit, two photos, a deny of research and training
    for the second, a withdrawn and a denying care Consent, a research permit limited to both
    photos with a nested refusal of care, and a photo consented to for care and research without
    a date (the adapter dates that Consent when it stores the photo)."""
    client, _ = adapter
    out = {"research": _consent(client, consent_resource(["TRAIN", "HRESCH"], patient=PATIENT))}
    care = {"purposes": ["TREAT"], "method": "verbal", "date": "2026-11-01"}
    first, second = _photo(client, tmp_path, 1, care), _photo(client, tmp_path, 2, care)
    out.update(kept=first["record"], withheld=second["record"], withheld_binary=second["binary"],
               withheld_sop=second["dicom"]["sopInstanceUid"], kept_sop=first["dicom"]["sopInstanceUid"])
    out["care_kept"], out["care_withheld"] = first["consents"][0], second["consents"][0]
    deny = consent_resource(["TRAIN", "HRESCH"], patient=PATIENT)
    deny["provision"].update(type="deny", data=_data(second["record"]))
    out["deny"] = _consent(client, deny)
    out["withdrawn"] = _consent(client, consent_resource(["TREAT"], patient=PATIENT, status="inactive"))
    scoped = consent_resource(["HRESCH"], patient=PATIENT)
    scoped["provision"].update(data=_data(first["record"], second["record"]),
                               provision=[{"type": "deny", "purpose": [{"system": V3, "code": "CLINTRL"}]}])
    out["scoped"] = _consent(client, scoped)
    undated = _photo(client, tmp_path, 3, {"purposes": ["TREAT", "HRESCH"], "method": "verbal"})
    out["undated"] = undated["consents"][0]
    return out


def test_a_restricted_view_reads_only_the_consents_that_permit_its_purpose(
        adapter: tuple[FhirClient, Services], chart: dict[str, str]) -> None:
    client, services = adapter
    care = _consents(client, "TREAT")
    every = {chart[k] for k in ("research", "care_kept", "care_withheld", "deny", "withdrawn", "scoped", "undated")}
    assert every <= set(care)  # care reads every Consent, whatever it denies
    assert care[chart["deny"]]["provision"]["data"] == _data(chart["withheld"])

    hresch = _consents(client, "HRESCH")
    assert set(hresch) == {seen_as(services, "HRESCH", chart[k]) for k in ("research", "scoped", "undated")}
    train = _consents(client, "TRAIN")
    assert set(train) == {seen_as(services, "TRAIN", chart["research"])}

    # the permit limited to both photos names the one released, and not the patient's refusal of CLINTRL
    scoped = hresch[seen_as(services, "HRESCH", chart["scoped"])]
    assert scoped["provision"]["data"] == _data(seen_as(services, "HRESCH", chart["kept"]))
    assert "provision" not in scoped["provision"]
    assert seen_as(services, "HRESCH", chart["withheld"]).split("/")[1] not in json.dumps(hresch)

    # the Consents it is not released are 404, as an id of nothing; so is the same read by care's id
    for key in ("deny", "withdrawn", "care_withheld", "care_kept"):
        for purpose in ("HRESCH", "TRAIN"):
            ref = seen_as(services, purpose, chart[key])
            r = client.get(f"/fhir/{ref}", headers=as_purpose(purpose))
            assert _outcome(r, ref) == _outcome(client.get(f"/fhir/{_unknown(ref)}", headers=as_purpose(purpose)),
                                                _unknown(ref)), (key, purpose)
            assert client.get(f"/fhir/{ref}/_history", headers=as_purpose(purpose)).status_code == 404
            assert client.get(f"/fhir/{ref}/_history/1", headers=as_purpose(purpose)).status_code == 404


def test_a_view_id_of_a_withheld_record_is_not_known(adapter: tuple[FhirClient, Services],
                                                     chart: dict[str, str]) -> None:
    client, services = adapter
    assert client.get(f"/fhir/{chart['withheld']}", headers=as_purpose("TREAT")).status_code == 200
    for purpose in ("HRESCH", "TRAIN"):
        assert client.get(f"/fhir/{seen_as(services, purpose, chart['kept'])}",
                          headers=as_purpose(purpose)).status_code == 200
        for record in (chart["withheld"], chart["withheld_binary"]):
            ref = seen_as(services, purpose, record)
            gone = _unknown(ref)
            for suffix in ("", "/_history/1") if record.startswith("Binary/") else ("", "/_history", "/_history/1"):
                r = client.get(f"/fhir/{ref}{suffix}", headers=as_purpose(purpose))
                other = client.get(f"/fhir/{gone}{suffix}", headers=as_purpose(purpose))
                assert _outcome(r, ref) == _outcome(other, gone), (purpose, record, suffix)
        ref = seen_as(services, purpose, chart["withheld_binary"])
        for accept in ("image/jpeg", "application/dicom"):
            assert client.get(f"/fhir/{ref}", headers=as_purpose(purpose, Accept=accept)).status_code == 404


def _wado(services: Services, client: FhirClient, sop: str, view: View) -> str:
    """The WADO-RS URL of an instance (care's UIDs: ``sop``) in ``view``'s UIDs."""
    bundle = client.get(f"/fhir/Media?identifier={DICOM_UID_SYSTEM}|urn:oid:{sop}", headers=as_purpose("TREAT"))
    assert bundle.json()["total"] == 1
    [found] = client.get(f"/dicomweb/instances?SOPInstanceUID={sop}", headers=as_purpose("TREAT")).json()
    study, series = (found[tag]["Value"][0] for tag in ("0020000D", "0020000E"))
    assert services.released_uids is not None
    study, series, sop = (services.released_uids.uid(view, uid) for uid in (study, series, sop))
    return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


def test_wado_rs_of_a_withheld_instance_in_a_restricted_view_is_not_known(
        adapter: tuple[FhirClient, Services], chart: dict[str, str]) -> None:
    client, services = adapter
    for purpose, view in (("HRESCH", View.PSEUDONYMISED), ("TRAIN", View.DEIDENTIFIED)):
        kept = _wado(services, client, chart["kept_sop"], view)
        assert client.get(kept, headers=as_purpose(purpose)).status_code == 200
        withheld = _wado(services, client, chart["withheld_sop"], view)
        for suffix in ("", "/rendered", "/metadata"):
            r = client.get(f"{withheld}{suffix}", headers=as_purpose(purpose))
            assert r.status_code == 404, (purpose, suffix, r.status_code, r.text[:200])
        study_url = withheld.rsplit("/instances/", 1)[0]
        assert client.get(study_url, headers=as_purpose(purpose)).status_code == 404
        assert client.get(f"{study_url}/thumbnail", headers=as_purpose(purpose)).status_code == 404


def test_the_pseudonymised_view_shows_a_consent_s_own_dates_as_their_utc_day(
        adapter: tuple[FhirClient, Services], chart: dict[str, str]) -> None:
    client, services = adapter
    care = client.get(f"/fhir/{chart['undated']}", headers=as_purpose("TREAT")).json()
    stored = care["dateTime"]
    assert "T" in stored and care["provision"]["period"]["start"] == stored  # the instant it was stored
    ref = seen_as(services, "HRESCH", chart["undated"])
    for body in (client.get(f"/fhir/{ref}", headers=as_purpose("HRESCH")).json(),
                 _consents(client, "HRESCH")[ref],
                 client.get(f"/fhir/{ref}/_history", headers=as_purpose("HRESCH")).json()["entry"][0]["resource"]):
        assert body["dateTime"] == stored[:10]
        assert body["provision"]["period"] == {"start": stored[:10]}
        assert stored[11:19] not in json.dumps(body)
    given = client.get(f"/fhir/{seen_as(services, 'HRESCH', chart['research'])}", headers=as_purpose("HRESCH")).json()
    assert given["dateTime"] == "2026-11-26" and given["provision"]["period"] == {"start": "2020-01-01"}
