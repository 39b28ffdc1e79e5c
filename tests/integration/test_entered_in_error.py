"""A record filed in error withdrawn: PATCH of its status to entered-in-error (PACS review
finding 1), over the real app on a real SQLite store. The mark is a new version with its history,
tokens, Provenance and AuditEvent; care still reads the record (with its status) but no path
releases its image; a restricted purpose sees nothing of it; its outbox items not sent are
cancelled. Every FHIR answer goes to the independent validator (tests.support.app.FhirClient)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, record_emitted
from tests.integration.test_access_egress import _refused_everywhere, _treat_uids
from tests.support.app import (
    MARK_ENTERED_IN_ERROR,
    adapter_client,
    as_purpose,
    consent_resource,
    mark_entered_in_error,
    metadata,
    post_photo,
)
from tests.support.orthanc import free_port

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
PATCH = "application/json-patch+json"
MARK = MARK_ENTERED_IN_ERROR
IMAGE_REFUSED = "the record was entered in error: its image is not released"


_mark = mark_entered_in_error


def test_a_record_marked_entered_in_error_is_a_new_version_with_history_tokens_provenance_and_audit(
        tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        record = receipt["record"]
        marked = _mark(client, record, [{"op": "test", "path": "/status", "value": "completed"}, *MARK],
                       if_match='W/"1"')
        assert marked.status_code == 200, marked.text
        body = marked.json()
        assert body["resourceType"] == "OperationOutcome"
        assert "marked entered-in-error (version 2); this cannot be undone" in body["issue"][0]["diagnostics"]
        assert marked.headers["etag"] == 'W/"2"'
        assert marked.headers["content-location"].endswith(f"/fhir/{record}/_history/2")
        read = client.get(f"/fhir/{record}", headers=as_purpose("TREAT"))
        assert read.status_code == 200 and read.json()["status"] == "entered-in-error"
        assert read.json()["meta"]["versionId"] == "2"
        history = client.get(f"/fhir/{record}/_history", headers=as_purpose("TREAT")).json()
        assert [e["resource"]["status"] for e in history["entry"]] == ["entered-in-error", "completed"]
        found = client.get("/fhir/Media?status=entered-in-error", headers=as_purpose("TREAT")).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [record.split("/")[1]]
        assert client.get("/fhir/Media?status=completed", headers=as_purpose("TREAT")).json()["total"] == 0
        provenances = client.get(f"/fhir/Provenance?target={record}", headers=as_purpose("TREAT")).json()
        nullified = [e["resource"] for e in provenances["entry"]
                     if e["resource"]["activity"]["coding"][0]["code"] == "NULLIFY"]
        assert len(nullified) == 1 and nullified[0]["target"][0]["reference"] == f"{record}/_history/2"
        assert nullified[0]["reason"][0]["coding"][0]["code"] == "RECORDMGT"
        [event] = [e for e in services.store.list_audit(1000) if e["subtype"][0]["code"] == "patch"]
        assert event["outcome"] == "0" and event["action"] == "U"
        assert "entered-in-error (irreversible)" in event["outcomeDesc"]
        assert {e["what"].get("reference") for e in event["entity"]} >= {record}
        record_emitted(event)
        # again: 200, nothing new
        again = _mark(client, record, if_match='W/"2"')
        assert again.status_code == 200 and "already" in again.json()["issue"][0]["diagnostics"]
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).json()["meta"]["versionId"] == "2"


def test_care_reads_the_record_but_no_path_releases_its_image(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        receipt = post_photo(client, WOUND, metadata()).json()
        record, binary = receipt["record"], receipt["binary"]
        study, series, sop = _treat_uids(receipt)
        instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        image_paths = [(f"/fhir/{binary}", {"Accept": "image/jpeg"}),
                       (f"/fhir/{binary}", {"Accept": "application/fhir+json"}),
                       (f"/fhir/{binary}", {"Accept": "application/dicom"}),
                       (instance, {}), (f"{instance}/frames/1", {}), (f"{instance}/rendered", {}),
                       (f"{instance}/metadata", {}), (f"/dicomweb/studies/{study}", {})]
        for path, extra in image_paths:
            assert client.get(path, headers=as_purpose("TREAT", **extra)).status_code == 200, path
        assert _mark(client, record).status_code == 200
        for purpose in ("TREAT", "BTG"):
            assert client.get(f"/fhir/{record}", headers=as_purpose(purpose)).json()["status"] == "entered-in-error"
            for path, extra in image_paths:
                r = client.get(path, headers=as_purpose(purpose, **extra))
                assert r.status_code == 403, (purpose, path, extra, r.status_code)
                assert r.headers["content-type"].startswith("application/fhir+json"), path
            assert client.get("/dicomweb/instances", headers=as_purpose(purpose)).json() == []
        said = client.get(f"/fhir/{binary}", headers=as_purpose("TREAT", Accept="image/jpeg"))
        assert IMAGE_REFUSED in said.text
        assert IMAGE_REFUSED in client.get(instance, headers=as_purpose("TREAT")).text


def test_a_restricted_purpose_no_longer_sees_a_record_entered_in_error(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).status_code == 201
        [kept] = client.get("/dicomweb/instances", headers=as_purpose("TRAIN")).json()
        uids = (kept["0020000D"]["Value"][0], kept["0020000E"]["Value"][0], kept["00080018"]["Value"][0])
        assert client.get("/fhir/Media?_summary=count", headers=as_purpose("TRAIN")).json()["total"] == 1
        assert _mark(client, receipt["record"]).status_code == 200
        _refused_everywhere(client, services, receipt, uids, "TRAIN")


@pytest.mark.parametrize("purpose", ["TREAT", "BTG", "PATRQT"])
def test_a_mark_states_records_management(tmp_path: Path, purpose: str) -> None:
    with adapter_client(tmp_path) as (client, services):
        record = post_photo(client, WOUND, metadata()).json()["record"]
        refused = _mark(client, record, purpose=purpose)
        assert refused.status_code == 403, refused.text
        assert "records management (RECORDMGT)" in refused.text
        none = client.patch(f"/fhir/{record}", content=b"[]", headers={"Content-Type": PATCH})
        assert none.status_code == 403  # no purpose stated: filed for TREAT, refused
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).json()["status"] == "completed"
        assert [e["outcome"] for e in services.store.list_audit(1000) if e["subtype"][0]["code"] == "patch"] == \
            ["4", "4"]
        for restricted in ("TRAIN", "HOPERAT"):  # a purpose that sees less than the record writes nothing
            assert _mark(client, record, purpose=restricted).status_code == 403


@pytest.mark.parametrize("ops", [
    [{"op": "replace", "path": "/status", "value": "completed"}],
    [{"op": "replace", "path": "/note", "value": []}],
    [{"op": "remove", "path": "/status"}],
    [{"op": "add", "path": "/status", "value": "entered-in-error"}],
    [*MARK, {"op": "replace", "path": "/subject", "value": {}}],
    [*MARK, {"op": "test", "path": "/status", "value": "entered-in-error"}],
    [],
])
def test_other_patches_are_refused_as_not_supported(tmp_path: Path, ops: list[dict[str, Any]]) -> None:
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, WOUND, metadata()).json()["record"]
        r = _mark(client, record, ops)
        assert r.status_code == 422, r.text
        assert "only marking a record entered-in-error is supported" in r.json()["issue"][0]["diagnostics"]
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).json()["meta"]["versionId"] == "1"


def test_a_failing_test_operation_changes_nothing(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, WOUND, metadata()).json()["record"]
        r = _mark(client, record, [{"op": "test", "path": "/status", "value": "preparation"}, *MARK])
        assert r.status_code == 422 and "does not hold" in r.text
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).json()["status"] == "completed"


@pytest.mark.parametrize("content_type", ["application/fhir+json", "application/merge-patch+json", "application/json"])
def test_other_patch_formats_are_refused_naming_json_patch(tmp_path: Path, content_type: str) -> None:
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, WOUND, metadata()).json()["record"]
        body = {"resourceType": "Parameters", "parameter": []} if content_type == "application/fhir+json" else MARK
        r = _mark(client, record, body, content_type=content_type)
        assert r.status_code == 415, r.text
        assert PATCH in r.json()["issue"][0]["diagnostics"]


def test_a_stale_if_match_is_refused(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, WOUND, metadata()).json()["record"]
        r = _mark(client, record, if_match='W/"7"')
        assert r.status_code == 412, r.text
        # the current version is not said (review codereview 4): a retry names the version it read
        diagnostics = r.json()["issue"][0]["diagnostics"]
        assert not re.search(r"\b1\b", diagnostics) and "read the record again" in diagnostics, diagnostics
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).json()["status"] == "completed"
        assert _mark(client, "Media/unknown").status_code == 404
        # other resource types take no PATCH: 405, Allow saying what they take
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).json()
        assert client.patch(f"/fhir/Consent/{consent['id']}", content=b"[]",
                            headers={"Content-Type": PATCH}).status_code == 405


@pytest.mark.parametrize("if_match", [None, "*", " * "])
def test_a_mark_that_names_no_version_is_428_and_changes_nothing(tmp_path: Path, if_match: str | None) -> None:
    """Pentest finding 3, newcomer review 2: the irreversible mark went through without If-Match
    (or with ``*``), so a blind or replayed request withdrew whatever version was current. It must
    name the version read: 428 Precondition Required (RFC 6585 3), audited, nothing changed."""
    with adapter_client(tmp_path) as (client, services):
        record = post_photo(client, WOUND, metadata()).json()["record"]
        r = _mark(client, record, if_match=if_match)
        assert r.status_code == 428, r.text
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert "If-Match" in outcome["issue"][0]["diagnostics"]
        assert outcome["issue"][0]["expression"] == ["If-Match"]
        # review codereview 4: the 428 said "the current one is 1", which a client echoed without
        # reading the record; it says where the version comes from instead
        diagnostics = outcome["issue"][0]["diagnostics"]
        assert not re.search(r"\b1\b", diagnostics) and "current" not in diagnostics, diagnostics
        assert "ETag" in diagnostics and "care" in diagnostics, diagnostics
        record_emitted(outcome)
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).json()["status"] == "completed"
        assert [e["outcome"] for e in services.store.list_audit(1000) if e["subtype"][0]["code"] == "patch"] == ["4"]
        assert _mark(client, record, if_match='W/"1"').status_code == 200


def test_a_pending_outbox_item_is_cancelled_and_never_sent(tmp_path: Path) -> None:
    closed = f"NOBODY@127.0.0.1:{free_port()}"
    with adapter_client(tmp_path, forward_to=closed) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        other = post_photo(client, ROOT / "samples" / "lesion.png", metadata(), content_type="image/png").json()
        assert {i.status for i in services.store.list_outbox()} == {"pending"}
        marked = _mark(client, receipt["record"])
        assert "1 outbox item(s) not yet sent were cancelled" in marked.text
        items = {i.sop_instance_uid: i.status for i in services.store.list_outbox()}
        assert items == {receipt["dicom"]["sopInstanceUid"]: "cancelled", other["dicom"]["sopInstanceUid"]: "pending"}
        assert services.store.claim_outbox(services.now(), 10)[0].sop_instance_uid == other["dicom"]["sopInstanceUid"]
        assert [i["status"] for i in client.get("/outbox?status=cancelled", headers=as_purpose("TREAT")).json()] == \
            ["cancelled"]


def test_records_management_marks_the_version_care_read(tmp_path: Path) -> None:
    """Review codereview 4: a RECORDMGT read is refused (403: records management reads no
    patient's record), so the version a mark names is the one the clinician who found the
    misfiled record read for care: its ETag as it is (labelled), or W/"<meta.versionId>"."""
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, WOUND, metadata()).json()["record"]
        assert client.get(f"/fhir/{record}", headers=as_purpose("RECORDMGT")).status_code == 403
        read = client.get(f"/fhir/{record}", headers=as_purpose("TREAT"))
        assert read.status_code == 200 and read.headers["etag"].startswith(f'W/"{read.json()["meta"]["versionId"]}.')
        marked = _mark(client, record, if_match=read.headers["etag"])
        assert marked.status_code == 200, marked.text
        # a care read after the mark carries the new version; the read before it is stale now
        assert _mark(client, record, if_match='W/"1"').status_code == 412
        assert _mark(client, record, if_match=client.get(f"/fhir/{record}", headers=as_purpose("TREAT"))
                     .headers["etag"]).status_code == 200
