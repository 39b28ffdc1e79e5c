"""Every egress path of a record the consent decision refuses, over the real app on a real SQLite
store (the egress review): a consent-pending clinical photo read for care, and for TRAIN with a
TRAIN Consent but no consent for care; a photo whose TRAIN Consent was withdrawn, asked for again
by the URLs a TRAIN reader kept (its released UIDs); and a photo of an encounter beside one a
Consent names (provision.data). Each read is refused (403, saying nothing of the record; to care,
why: clinical-safety review 6; to a restricted view, TRAIN, 404 as for an id that names nothing) and
audited once as a refusal; each search, count, include, QIDO-RS,
batch and outbox leaves it out (a care search saying how many it withheld, and why).
tests/integration/test_deid_canary.py checks what permitted reads carry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapter.consent.decision import CARE_REFUSALS
from adapter.model.decision import CareRefusal, View
from adapter.services.registry import Services
from tests.conftest import ROOT
from tests.support.app import (
    FhirClient,
    adapter_client,
    as_purpose,
    consent_resource,
    metadata,
    post_photo,
    seen_as,
)

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
LESION = ROOT / "samples" / "lesion.png"
STUDY, SERIES, SOP = "0020000D", "0020000E", "00080018"


def _reads(receipt: dict[str, Any], study: str, series: str, sop: str) -> list[tuple[str, str, dict[str, str]]]:
    """(method, path, headers) of every read of the photo's records, image and DICOM object."""
    record, binary, provenance = receipt["record"], receipt["binary"], receipt["provenance"]
    r5 = {"Accept": "application/fhir+json; fhirVersion=5.0"}
    instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    wado = f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    return [
        ("GET", f"/fhir/{record}", {}), ("HEAD", f"/fhir/{record}", {}),
        ("GET", f"/fhir/{record}", {"If-None-Match": 'W/"1"'}),
        ("GET", f"/fhir/{record}/_history", {}), ("GET", f"/fhir/{record}/_history/1", {}),
        ("GET", f"/fhir/{record}?_elements=id", {}),
        ("GET", f"/fhir/DocumentReference/{record.split('/')[1]}", r5),
        ("GET", f"/fhir/{binary}", {"Accept": "image/jpeg"}), ("GET", f"/fhir/{binary}", {"Accept": "text/plain"}),
        ("GET", f"/fhir/{binary}", {"Accept": "application/fhir+json"}),
        ("GET", f"/fhir/{binary}", {"Accept": "application/dicom"}), ("GET", f"/fhir/{binary}/_history/1", {}),
        ("GET", f"/fhir/{provenance}", {}), ("GET", f"/fhir/{provenance}/_history", {}),
        ("GET", f"/dicomweb/studies/{study}", {}), ("GET", f"/dicomweb/studies/{study}/series/{series}", {}),
        ("GET", instance, {}), ("GET", f"/dicomweb/studies/{study}/metadata", {}),
        ("GET", f"/dicomweb/studies/{study}/series/{series}/metadata", {}), ("GET", f"{instance}/metadata", {}),
        ("GET", f"{instance}/rendered", {}), ("GET", f"{instance}/rendered", {"Accept": "image/gif"}),
        ("GET", f"{instance}/thumbnail", {}), ("GET", f"/dicomweb/studies/{study}/thumbnail", {}),
        ("GET", f"/dicomweb/studies/{study}/series/{series}/thumbnail", {}),
        ("GET", f"{instance}/frames/1", {}), ("GET", f"{instance}/bulk/7FE00010", {}),
        ("GET", wado, {}), ("GET", f"{wado}&contentType=application/dicom", {}),
        ("GET", f"{wado}&contentType=image/png", {}), ("GET", f"{wado}&rows=64", {}),
    ]


DENIED = "access denied for this purpose of use"


def _refused_everywhere(client: FhirClient, services: Services, receipt: dict[str, Any], uids: tuple[str, str, str],
                        purpose: str, told: str = DENIED) -> None:
    """Every read refused, saying ``told`` (to care, why: CARE_REFUSALS; to another purpose, only
    :data:`DENIED`); every search leaves the record out, a care search saying so in a search.mode
    ``outcome`` entry (FHIR) or a Warning (QIDO-RS), another purpose's saying nothing."""
    care = told != DENIED
    # a restricted view (its own ids) is answered as for an id that names nothing
    hidden = View(services.tables.purposes.codes[purpose].view) is not View.FULL
    # named as a reader of the purpose names them: by the ids its view shows (the UIDs likewise)
    receipt = {k: seen_as(services, purpose, v) if k in ("record", "binary", "provenance") else v
               for k, v in receipt.items()}
    record_id = receipt["record"].split("/")[1]
    for method, path, extra in _reads(receipt, *uids):
        before = len(services.store.list_audit(100000))
        r = client.request(method, path, headers=as_purpose(purpose, **extra))
        events = services.store.list_audit(100000)
        fresh = events[: len(events) - before]
        assert r.status_code == (404 if hidden else 403), (purpose, method, path, extra, r.status_code)
        assert method == "HEAD" or (("not known" in r.text or "no such" in r.text) and told not in r.text if hidden
                                    else told in r.text), (method, path, extra, r.text)
        assert care or method == "HEAD" or "consent" not in r.text.lower()
        assert len(fresh) == 1 and fresh[0]["outcome"] == "4", (path, extra, [e["outcome"] for e in fresh])
    for query in ("/fhir/Media?_summary=count", "/fhir/Provenance?_summary=count", f"/fhir/Media?_id={record_id}",
                  f"/fhir/Provenance?target={receipt['record']}", "/fhir/Media?_revinclude=Provenance:target",
                  "/fhir/Provenance?_include=Provenance:target"):
        found = client.get(query, headers=as_purpose(purpose)).json()
        assert found["total"] == 0, (purpose, query)
        outcomes = [e for e in found.get("entry", [])]
        assert all(e["search"]["mode"] == "outcome" for e in outcomes), (purpose, query)
        said = [i["diagnostics"] for e in outcomes for i in e["resource"]["issue"]]
        if care:
            assert len(said) == 1 and said[0].endswith(f"withheld from this search: {told}"), (query, said)
            assert said[0].split()[0].isdigit() and outcomes[0]["resource"]["issue"][0]["code"] == "suppressed"
        else:
            assert said == [], (purpose, query, said)
    for query in ("/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances", f"/dicomweb/studies/{uids[0]}/instances"):
        qido = client.get(query, headers=as_purpose(purpose))
        assert qido.json() == [], (purpose, query)
        warnings = qido.headers.get_list("Warning")
        assert [w.endswith(f"withheld from this search: {told}") for w in warnings] == ([True] if care else []), \
            (purpose, query, warnings)
    listed = client.get("/outbox", headers=as_purpose(purpose))  # TRAIN: not read at all (privacy review F3)
    assert listed.status_code == 403 if purpose == "TRAIN" else all(item.get("withheld") for item in listed.json())
    batch = client.post("/fhir", headers=as_purpose(purpose), json={"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": url}} for url in (receipt["record"], receipt["binary"],
                                                               receipt["provenance"], f"Media?_id={record_id}")]})
    entries = batch.json()["entry"]
    assert [e["response"]["status"] for e in entries[:3]] == ["404 Not Found" if hidden else "403 Forbidden"] * 3
    assert all((told in str(e["response"].get("outcome"))) is not hidden for e in entries[:3]), entries[:3]
    assert entries[3]["resource"]["total"] == 0


def test_every_break_glass_answer_says_what_it_overrode(tmp_path: Path) -> None:
    """Merges review finding 5: X-Break-Glass said what break-glass overrode on FHIR reads and
    searches, QIDO-RS and WADO-RS retrieves, but not on WADO-RS metadata, rendered, thumbnails,
    frames, bulk data, WADO-URI's pictures, a batch's answer or the outbox (the bare "suppressed;
    …" alone: test seen failing). Every answer break-glass released now says it, the same way."""
    with adapter_client(tmp_path, policy={"consent": {"careAfterWithdrawal": False}},
                        forward_to="PACS@127.0.0.1:1") as (client, _):
        receipt = post_photo(client, WOUND, metadata()).json()
        for entry in client.get("/fhir/Consent", headers=as_purpose("TREAT")).json()["entry"]:
            consent = entry["resource"]
            assert client.put(f"/fhir/Consent/{consent['id']}", json={**consent, "status": "inactive"}).status_code == 200
        said = f"; overrode: {CARE_REFUSALS[CareRefusal.CONSENT_WITHDRAWN]}"
        unsaid = []
        for method, path, extra in _reads(receipt, *_treat_uids(receipt)):
            r = client.request(method, path, headers=as_purpose("ETREAT", **extra))
            assert r.status_code in (200, 304, 404, 406), (method, path, extra, r.status_code, r.text[:200])
            if r.status_code < 400 and not r.headers.get("X-Break-Glass", "").endswith(said):
                unsaid.append((method, path, extra, r.headers.get("X-Break-Glass")))
        batch = client.post("/fhir", headers=as_purpose("ETREAT"), json={"resourceType": "Bundle", "type": "batch",
                                                                          "entry": [{"request": {"method": "GET",
                                                                                                 "url": receipt["record"]}}]})
        listed = client.get("/outbox", headers=as_purpose("ETREAT"))
        assert [item.get("withheld") for item in listed.json()] == [None], listed.json()
        for name, r in (("batch", batch), ("outbox", listed)):
            assert r.status_code == 200, (name, r.text[:200])
            if not r.headers.get("X-Break-Glass", "").endswith(said):
                unsaid.append((name, r.headers.get("X-Break-Glass")))
        assert unsaid == []


def _treat_uids(receipt: dict[str, Any]) -> tuple[str, str, str]:
    dicom = receipt["dicom"]
    return dicom["studyInstanceUid"], dicom["seriesInstanceUid"], dicom["sopInstanceUid"]


def test_a_consent_pending_photo_leaves_by_no_path_but_break_glass(tmp_path: Path) -> None:
    with adapter_client(tmp_path, policy={"consent": {"allowPending": True}}) as (client, services):
        receipt = post_photo(client, WOUND, metadata(consent=None)).json()
        assert receipt["consentPending"]
        _refused_everywhere(client, services, receipt, _treat_uids(receipt), "TREAT",
                            CARE_REFUSALS[CareRefusal.CONSENT_PENDING])
        # a Consent for training alone does not open a photo whose taking has no documented consent
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).status_code == 201
        train = client.get("/dicomweb/instances", headers=as_purpose("TRAIN"))
        assert train.json() == []
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', receipt['record'])}", headers=as_purpose("TRAIN")).status_code == 404
        assert client.get(f"/fhir/{receipt['record']}", headers=as_purpose("BTG")).status_code == 200


def test_a_withdrawn_consent_closes_every_path_the_reader_kept(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).json()
        [kept] = client.get("/dicomweb/instances", headers=as_purpose("TRAIN")).json()
        uids = (kept[STUDY]["Value"][0], kept[SERIES]["Value"][0], kept[SOP]["Value"][0])
        assert client.get(f"/dicomweb/studies/{uids[0]}", headers=as_purpose("TRAIN")).status_code == 200
        assert client.put(f"/fhir/Consent/{consent['id']}", json={**consent, "status": "inactive"}).status_code == 200
        _refused_everywhere(client, services, receipt, uids, "TRAIN")


def test_a_consent_naming_one_photo_opens_no_other_of_its_encounter(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        encounter = {"reference": "Encounter/77"}
        named = post_photo(client, WOUND, metadata(encounter=encounter)).json()
        other = post_photo(client, LESION, metadata(encounter=encounter), content_type="image/png").json()
        assert named["dicom"]["studyInstanceUid"] == other["dicom"]["studyInstanceUid"]
        consent = consent_resource(["TRAIN"])
        consent["provision"]["data"] = [{"meaning": "instance", "reference": {"reference": named["record"]}}]
        assert client.post("/fhir/Consent", json=consent).status_code == 201
        [study] = client.get("/dicomweb/studies", headers=as_purpose("TRAIN")).json()
        assert study["00201208"]["Value"] == [1]  # NumberOfStudyRelatedInstances counts what is shown
        assert client.get("/fhir/Media?_summary=count", headers=as_purpose("TRAIN")).json()["total"] == 1
        # the Consent names the photo, not the other photo's records; TRAIN reads it (the
        # permission the photo rests on), naming the photo by TRAIN's id
        [shown] = client.get("/fhir/Consent", headers=as_purpose("TRAIN")).json()["entry"]
        assert shown["resource"]["provision"]["data"] == [
            {"meaning": "instance", "reference": {"reference": seen_as(services, "TRAIN", named["record"])}}]
        for path in (other["record"], other["binary"], other["provenance"]):
            assert client.get(f"/fhir/{seen_as(services, 'TRAIN', path)}", headers=as_purpose("TRAIN")).status_code == 404, path
        retrieved = client.get(f"/dicomweb/studies/{study[STUDY]['Value'][0]}/metadata", headers=as_purpose("TRAIN"))
        assert retrieved.status_code == 200 and len(retrieved.json()) == 1


def test_a_consent_for_operations_does_not_open_the_identified_record_to_records_management(tmp_path: Path) -> None:
    """RECORDMGT is a child of HOPERAT with care's full view: a Consent for HOPERAT (de-identified
    use) released the MRN, the note and the image to it (found by the egress review)."""
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata(note="seen at home")).json()
        assert client.post("/fhir/Consent", json=consent_resource(["HOPERAT"])).status_code == 201
        train = client.get(f"/fhir/{seen_as(services, 'TRAIN', receipt['record'])}", headers=as_purpose("TRAIN"))
        assert train.status_code == 200 and "seen at home" not in train.text
        _refused_everywhere(client, services, receipt, _treat_uids(receipt), "RECORDMGT")
        assert client.post("/fhir/Consent", json=consent_resource(["RECORDMGT"])).status_code == 201
        assert "seen at home" in client.get(f"/fhir/{receipt['record']}", headers=as_purpose("RECORDMGT")).text


def test_care_is_told_why_and_break_glass_says_what_it_overrode(tmp_path: Path) -> None:
    """Clinical-safety review 6: a care reader refused by the patient's Consents is told why (the
    Consent withdrawn, denied by a Consent), a care search says how many it withheld and why, and
    a break-glass read that releases what care would not says what it overrode, in X-Break-Glass,
    in a break-glass search's outcome entry and in the AuditEvent. Another purpose is told nothing."""
    with adapter_client(tmp_path, policy={"consent": {"careAfterWithdrawal": False}}) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        assert client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT")).status_code == 200
        for entry in client.get("/fhir/Consent", headers=as_purpose("TREAT")).json()["entry"]:
            consent = entry["resource"]
            assert client.put(f"/fhir/Consent/{consent['id']}", json={**consent, "status": "inactive"}).status_code == 200
        withdrawn = CARE_REFUSALS[CareRefusal.CONSENT_WITHDRAWN]
        _refused_everywhere(client, services, receipt, _treat_uids(receipt), "TREAT", withdrawn)
        glass = client.get(f"/fhir/{receipt['record']}", headers=as_purpose("ETREAT"))
        assert glass.status_code == 200
        assert glass.headers["X-Break-Glass"].endswith(f"; overrode: {withdrawn}")
        [event] = [e for e in services.store.list_audit(100)
                   if e.get("outcomeDesc", "").startswith("break-glass (ETREAT)")][:1]
        assert withdrawn in event["outcomeDesc"]
        search = client.get("/fhir/Media", headers=as_purpose("ETREAT"))
        assert search.headers["X-Break-Glass"].endswith(f"; overrode: {withdrawn}")
        said = [i["diagnostics"] for e in search.json()["entry"] if e["search"]["mode"] == "outcome"
                for i in e["resource"]["issue"]]
        assert any(withdrawn in s and "overrode" in s for s in said), said
        study = receipt["dicom"]["studyInstanceUid"]
        wado = client.get(f"/dicomweb/studies/{study}", headers=as_purpose("ETREAT"))
        assert wado.status_code == 200 and wado.headers["X-Break-Glass"].endswith(withdrawn)
        # a photo care reads without consent (secondary): break-glass overrides nothing
        posted = post_photo(client, ROOT / "samples" / "document.jpg", metadata(kind="secondary", consent=None))
        assert posted.status_code == 201, posted.text
        other = posted.json()
        plain = client.get(f"/fhir/{other['record']}", headers=as_purpose("ETREAT"))
        assert plain.headers["X-Break-Glass"] == "suppressed; v3-ActReason#BTG; break-glass access, audited"
        # a Consent denying care: said so; break-glass overrides it, and says so
        deny = consent_resource(["TREAT"])
        deny["provision"]["type"] = "deny"
        assert client.post("/fhir/Consent", json=deny).status_code == 201
        denied = CARE_REFUSALS[CareRefusal.CONSENT_DENIES]
        r = client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT"))
        assert r.status_code == 403 and denied in r.text
        assert client.get(f"/fhir/{receipt['record']}", headers=as_purpose("ETREAT")).headers[
            "X-Break-Glass"].endswith(denied)
        # TRAIN is told nothing, and its searches say nothing of what they left out
        train = client.get(f"/fhir/{seen_as(services, 'TRAIN', receipt['record'])}", headers=as_purpose("TRAIN"))
        assert train.status_code == 404 and DENIED not in train.text
        assert "entry" not in client.get("/fhir/Media", headers=as_purpose("TRAIN")).json()
