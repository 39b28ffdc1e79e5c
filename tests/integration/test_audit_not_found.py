"""A read by an id (or DICOM UIDs) that names nothing in the purpose's view is audited, once
(security review finding 4): a trainer or researcher asking for care's ids or UIDs, copied
from care's receipts, reached a 404 and left no trace, while a request stating no purpose was
audited. Each such read is an AuditEvent of outcome 4 saying it was not found in the purpose's
view, naming what was asked as the caller sent it (the path's Type/id, the UIDs), the purpose and
the caller, never a patient (nothing was looked up in another view); the answer does not tell an id
of another view from one that exists nowhere. Care's 404 for an id nobody has is audited alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapter.model.decision import View
from adapter.services.registry import Services
from tests.conftest import ROOT, record_emitted
from tests.support.app import (
    FhirClient,
    adapter_client,
    as_purpose,
    consent_resource,
    metadata,
    post_photo,
    seen_as,
)
from tests.support.audit import (
    INSTANCES_TRANSFERRED,
    dicom_events,
    patients,
    sop_instance_uids,
    study_uids,
)

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
R5 = "application/fhir+json; fhirVersion=5.0"
#: An id and UIDs nothing has, in any view.
NOWHERE_ID = "a0b1c2d3-e4f5-4a6b-8c7d-9e0f1a2b3c4d"
NOWHERE_UIDS = ("1.2.3.4.5.6", "1.2.3.4.5.7", "1.2.3.4.5.8")


def _purpose_of(event: dict[str, Any]) -> list[str]:
    return [c["code"] for a in event["agent"] for p in a.get("purposeOfUse", []) for c in p.get("coding", [])]


def _refs(event: dict[str, Any]) -> list[str]:
    return [e["what"]["reference"] for e in event.get("entity", []) if "reference" in e.get("what", {})]


def _asked_once(client: FhirClient, services: Services, method: str, path: str, headers: dict[str, str]
                ) -> tuple[Any, dict[str, Any]]:
    """The answer to one request, and the one AuditEvent it left (asserted to be one)."""
    before = len(services.store.list_audit(100000))
    answer = client.request(method, path, headers=headers)
    events = services.store.list_audit(100000)
    fresh = events[: len(events) - before]
    assert len(fresh) == 1, (method, path, headers, answer.status_code, [e.get("outcomeDesc") for e in fresh])
    record_emitted(fresh[0])
    return answer, fresh[0]


def _fhir_reads(record: str, binary: str, provenance: str) -> list[tuple[str, str, dict[str, str], str, str]]:
    """(method, path, headers, interaction audited, Type/id named) of every FHIR read by id."""
    media_id = record.split("/")[1]
    return [
        ("GET", f"/fhir/{record}", {}, "read", record), ("HEAD", f"/fhir/{record}", {}, "read", record),
        ("GET", f"/fhir/{record}", {"If-None-Match": 'W/"1"'}, "read", record),
        ("GET", f"/fhir/{record}/_history", {}, "history-instance", record),
        ("GET", f"/fhir/{record}/_history/1", {}, "vread", record),
        ("GET", f"/fhir/DocumentReference/{media_id}", {"Accept": R5}, "read", f"DocumentReference/{media_id}"),
        ("GET", f"/fhir/{binary}", {"Accept": "image/jpeg"}, "read", binary),
        ("GET", f"/fhir/{binary}", {"Accept": "application/fhir+json"}, "read", binary),
        ("GET", f"/fhir/{binary}/_history/1", {}, "vread", binary),
        ("GET", f"/fhir/{provenance}", {}, "read", provenance),
    ]


def _dicom_reads(study: str, series: str, sop: str) -> list[tuple[str, tuple[str, ...]]]:
    """(path, SOP Instance UIDs named) of every DICOMweb and WADO-URI retrieve by UIDs."""
    instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    wado = f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    return [
        (f"/dicomweb/studies/{study}", ()), (f"/dicomweb/studies/{study}/metadata", ()),
        (f"/dicomweb/studies/{study}/thumbnail", ()), (f"/dicomweb/studies/{study}/series/{series}", ()),
        (f"/dicomweb/studies/{study}/series/{series}/metadata", ()),
        (f"/dicomweb/studies/{study}/series/{series}/thumbnail", ()),
        (instance, (sop,)), (f"{instance}/metadata", (sop,)), (f"{instance}/frames/1", (sop,)),
        (f"{instance}/frames/1/rendered", (sop,)), (f"{instance}/rendered", (sop,)), (f"{instance}/thumbnail", (sop,)),
        (f"{instance}/bulk/7FE00010", (sop,)), (wado, (sop,)), (f"{wado}&contentType=application/dicom", (sop,)),
    ]


@pytest.mark.parametrize("purpose", ["TRAIN", "HRESCH"])
def test_a_read_by_cares_ids_in_a_restricted_view_is_audited_as_not_found(tmp_path: Path, purpose: str) -> None:
    """Seen failing: 404 and no AuditEvent, for every read below."""
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN", "HRESCH"])).status_code == 201
        view = "de-identified" if purpose == "TRAIN" else "pseudonymised"
        # care's ids, copied from the receipt: a record that exists, but not in this view
        for method, path, headers, interaction, asked in _fhir_reads(receipt["record"], receipt["binary"],
                                                                     receipt["provenance"]):
            answer, event = _asked_once(client, services, method, path, {**as_purpose(purpose), **headers})
            assert answer.status_code == 404, (path, headers)
            assert event["outcome"] == "4" and event["subtype"][0]["code"] == interaction, (path, event)
            assert event["outcomeDesc"] == f"not found in the {view} view of {purpose}", event["outcomeDesc"]
            assert _refs(event) == [asked] and not patients(event), (path, event)
            assert _purpose_of(event) == [purpose]
            assert any(a.get("requestor") and "testclient" in a["who"]["display"] for a in event["agent"])
        # the Binary as a DICOM object is a DICOM transfer: typed so, as its other reads
        _, event = _asked_once(client, services, "GET", f"/fhir/{receipt['binary']}",
                               {**as_purpose(purpose), "Accept": "application/dicom"})
        assert dicom_events([event], INSTANCES_TRANSFERRED) == [event] and event["outcome"] == "4"
        assert _refs(event) == [receipt["binary"]] and not patients(event)
        # care's UIDs: every DICOMweb and WADO-URI retrieve, named by the UIDs as sent
        dicom = receipt["dicom"]
        uids = (dicom["studyInstanceUid"], dicom["seriesInstanceUid"], dicom["sopInstanceUid"])
        for path, instances in _dicom_reads(*uids):
            answer, event = _asked_once(client, services, "GET", path, {**as_purpose(purpose), "Accept": "*/*"})
            assert answer.status_code == 404, path
            assert dicom_events([event], INSTANCES_TRANSFERRED) == [event], path
            assert event["outcome"] == "4" and event["action"] == "R", path
            assert event["outcomeDesc"] == f"not found in the {view} view of {purpose}", path
            assert study_uids(event) == [uids[0]] and sop_instance_uids(event) == list(instances), (path, event)
            assert not patients(event) and _purpose_of(event) == [purpose], path


def test_a_not_found_answer_does_not_tell_an_id_of_another_view_from_one_nobody_has(tmp_path: Path) -> None:
    """The 404 (and its audit) are the same for care's id of a real record and for an id that
    exists nowhere, but for the id itself: the answer tells nothing of another view."""
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).status_code == 201
        media_id = receipt["record"].split("/")[1]
        dicom = receipt["dicom"]
        cares = (dicom["studyInstanceUid"], dicom["seriesInstanceUid"], dicom["sopInstanceUid"])
        asked = [(f"/fhir/Media/{media_id}", f"/fhir/Media/{NOWHERE_ID}", media_id, NOWHERE_ID)]
        asked += [(path, nowhere_path, cares, NOWHERE_UIDS) for (path, _), (nowhere_path, _)
                  in zip(_dicom_reads(*cares), _dicom_reads(*NOWHERE_UIDS), strict=True)]
        for path, nowhere_path, real, none in asked:
            real_answer, real_event = _asked_once(client, services, "GET", path, as_purpose("TRAIN"))
            none_answer, none_event = _asked_once(client, services, "GET", nowhere_path, as_purpose("TRAIN"))
            assert real_answer.status_code == none_answer.status_code == 404
            for a, b in zip(real if isinstance(real, tuple) else (real,), none if isinstance(none, tuple) else (none,),
                            strict=True):
                assert real_answer.text.replace(a, "X") == none_answer.text.replace(b, "X"), path
            assert real_event["outcomeDesc"] == none_event["outcomeDesc"]


def test_cares_read_of_an_id_nobody_has_is_audited_as_not_found_too(tmp_path: Path) -> None:
    """Consistently, care's 404 for an id that exists nowhere (TREAT's view holds every record)
    is audited the same way; so is a batch's entry answered 404, one event for it alone."""
    with adapter_client(tmp_path) as (client, services):
        post_photo(client, WOUND, metadata())
        answer, event = _asked_once(client, services, "GET", f"/fhir/Media/{NOWHERE_ID}", as_purpose("TREAT"))
        assert answer.status_code == 404 and event["outcome"] == "4"
        assert event["outcomeDesc"] == "not found in the full view of TREAT"
        assert _refs(event) == [f"Media/{NOWHERE_ID}"] and _purpose_of(event) == ["TREAT"]
        answer, event = _asked_once(client, services, "GET", f"/dicomweb/studies/{NOWHERE_UIDS[0]}", as_purpose("TREAT"))
        assert answer.status_code == 404 and study_uids(event) == [NOWHERE_UIDS[0]]
        # not a FHIR id: named by nothing but the event itself (as a refusal for its purpose names it)
        answer, event = _asked_once(client, services, "GET", "/fhir/Media/not%20an%20id", as_purpose("TREAT"))
        assert answer.status_code == 404 and _refs(event) == [] and event["outcome"] == "4"
        batch = {"resourceType": "Bundle", "type": "batch",
                 "entry": [{"request": {"method": "GET", "url": f"Media/{NOWHERE_ID}"}},
                           {"request": {"method": "GET", "url": f"Binary/{NOWHERE_ID}"}}]}
        before = len(services.store.list_audit(100000))
        answer = client.post("/fhir", json=batch, headers=as_purpose("TRAIN"))
        assert [e["response"]["status"][:3] for e in answer.json()["entry"]] == ["404", "404"]
        fresh = services.store.list_audit(100000)[: len(services.store.list_audit(100000)) - before]
        assert sorted(r for e in fresh for r in _refs(e)) == [f"Binary/{NOWHERE_ID}", f"Media/{NOWHERE_ID}"]
        assert all(e["outcome"] == "4" and _purpose_of(e) == ["TRAIN"] for e in fresh)


def test_an_r5_read_of_a_photo_is_audited_once(tmp_path: Path) -> None:
    """An R5 reader knows a photo as the DocumentReference of its Media's id: found as the Media,
    the read is audited once, as a read of it (no "not found" for the DocumentReference first);
    found as neither, once as not found, naming the DocumentReference asked for."""
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).status_code == 201
        for purpose in ("TREAT", "TRAIN"):
            record = seen_as(services, purpose, receipt["record"])
            media_id = record.split("/")[1]
            for path in (f"/fhir/DocumentReference/{media_id}", f"/fhir/DocumentReference/{media_id}/_history",
                         f"/fhir/DocumentReference/{media_id}/_history/1"):
                answer, event = _asked_once(client, services, "GET", path, {**as_purpose(purpose), "Accept": R5})
                assert answer.status_code == 200 and event["outcome"] == "0", (purpose, path)
                # a vread and a history page name the version they released (review dpo F6)
                released = receipt["record"] + ("/_history/1" if "_history" in path else "")
                assert _refs(event)[0] == released, (purpose, path)
        answer, event = _asked_once(client, services, "GET", f"/fhir/DocumentReference/{NOWHERE_ID}",
                                    {**as_purpose("TREAT"), "Accept": R5})
        assert answer.status_code == 404 and _refs(event) == [f"DocumentReference/{NOWHERE_ID}"]


def test_a_view_id_that_deciphers_is_audited_by_the_stored_id_it_names(tmp_path: Path) -> None:
    """The trail names stored resources: a restricted view's id of a record that is not there is
    named by the stored id it deciphers to, as a read of a record is; an id that deciphers to
    nothing (care's, the other view's, one of another type) as the caller sent it."""
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        assert services.released_ids is not None
        released = services.released_ids.space(View.DEIDENTIFIED).released("Media", NOWHERE_ID)
        answer, event = _asked_once(client, services, "GET", f"/fhir/Media/{released}", as_purpose("TRAIN"))
        assert answer.status_code == 404 and _refs(event) == [f"Media/{NOWHERE_ID}"]
        assert released in answer.text and NOWHERE_ID not in answer.text
        media = seen_as(services, "TRAIN", receipt["record"]).split("/")[1]
        answer, event = _asked_once(client, services, "GET", f"/fhir/Provenance/{media}", as_purpose("TRAIN"))
        assert answer.status_code == 404 and _refs(event) == [f"Provenance/{media}"]
