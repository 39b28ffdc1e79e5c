"""POST /photos and POST /fhir over the real app and a real SQLite store: every row of the rules
table, the failure cases (with nothing stored), idempotency and the transaction Bundle."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from adapter.mapping.dicom_uids import stable_uid
from tests.conftest import ROOT, record_emitted
from tests.support.app import PATIENT, adapter_client, as_purpose, metadata, post_photo, seen_as
from tests.support.audit import caller_request_ids

SAMPLES = ROOT / "samples"
WOUND = SAMPLES / "wound.jpg"


def _counts(services) -> tuple[int, int]:
    """(resources in the database, committed blob files)."""
    with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
        rows = conn.execute(text("SELECT COUNT(*) FROM resources")).scalar_one()
    blobs = [p for p in (services.settings.data_dir / "blobs").rglob("*") if p.is_file()]
    return int(rows), len(blobs)


def _staging_empty(services) -> bool:
    staging = services.settings.data_dir / "staging"
    return not staging.exists() or not any(staging.iterdir())


def _outcome(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    return body


def test_receipt_lists_everything_and_is_only_then_safe(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        r = post_photo(client, WOUND, metadata())
        assert r.status_code == 201, r.text
        receipt = r.json()
        assert r.headers["location"].endswith(f"/fhir/{receipt['record']}")
        assert receipt["record"].startswith("Media/") and receipt["binary"].startswith("Binary/")
        assert receipt["provenance"].startswith("Provenance/") and len(receipt["consents"]) == 1
        assert set(receipt["created"]) >= {receipt["record"], receipt["binary"], receipt["provenance"]}
        assert receipt["sha256"]["received"] == hashlib.sha256(WOUND.read_bytes()).hexdigest()
        assert len(receipt["sha256"]["stored"]) == 64
        removed = " ".join(receipt["metadataRemoved"])
        assert "GPS" in removed and "XMP" in removed
        assert receipt["safeToDeleteFromDevice"] is True
        assert _counts(services)[0] == 4 and _counts(services)[1] == 1 and _staging_empty(services)
        stored = next((services.settings.data_dir / "blobs").rglob(receipt["sha256"]["stored"]))
        data = stored.read_bytes()
        assert hashlib.sha256(data).hexdigest() == receipt["sha256"]["stored"]
        assert receipt["size"]["stored"] == len(data)
        for needle in (b"Jane Example", b"GPS", b"http://ns.adobe.com/xap/1.0/", b"Photoshop 3.0"):
            assert needle not in data


def test_a_photo_over_the_memory_limit_streams_to_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adapter.api import multipart
    monkeypatch.setattr(multipart, "MEMORY_LIMIT", 10_000)
    with adapter_client(tmp_path) as (client, services):
        r = post_photo(client, WOUND, metadata())
        assert r.status_code == 201, r.text
        assert r.json()["sha256"]["received"] == hashlib.sha256(WOUND.read_bytes()).hexdigest()
        assert _counts(services) == (4, 1) and _staging_empty(services)
        not_an_image = tmp_path / "big.txt"
        not_an_image.write_bytes(b"not a photo\n" * 2000)
        _outcome(post_photo(client, not_an_image, metadata()), 415)
        assert _counts(services) == (4, 1) and _staging_empty(services)


# -- the rules table ---------------------------------------------------------------------------

def test_clinical_without_consent_is_refused_and_says_what_is_missing(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        body = _outcome(post_photo(client, WOUND, metadata(consent=None)), 422)
        assert "consent" in body["issue"][0]["diagnostics"].lower()
        assert body["issue"][0]["code"] == "business-rule"
        assert _counts(services) == (0, 0) and _staging_empty(services)
        # the refusal is a decision: audited (outcome 4, the patient, why), and only that is stored
        [refusal] = services.store.list_audit(10)
        assert refusal["subtype"][0]["code"] == "create" and refusal["outcome"] == "4"
        assert "consent" in refusal["outcomeDesc"].lower()
        assert any(ent.get("what", {}).get("identifier") == metadata()["patient"] for ent in refusal["entity"])
        # a malformed upload is refused too: audited as a refused create (review newwrites F5)
        _outcome(post_photo(client, SAMPLES / "truncated.jpg", metadata()), 422)
        malformed, _ = services.store.list_audit(10)
        assert malformed["subtype"][0]["code"] == "create" and malformed["outcome"] == "4"


def test_clinical_with_consent_already_on_file_is_accepted(tmp_path: Path) -> None:
    from tests.support.app import consent_resource
    with adapter_client(tmp_path) as (client, _):
        assert client.post("/fhir/Consent", json=consent_resource(["TREAT"])).status_code == 201
        assert post_photo(client, WOUND, metadata(consent=None)).status_code == 201


def test_a_changed_consent_on_file_counts_at_once(tmp_path: Path) -> None:
    """The ingest keeps what each Consent version grants: a new version is read afresh."""
    from tests.support.app import consent_resource
    with adapter_client(tmp_path) as (client, _):
        created = client.post("/fhir/Consent", json=consent_resource(["TREAT"]))
        assert created.status_code == 201
        consent_id = created.json()["id"]
        assert post_photo(client, WOUND, metadata(consent=None)).status_code == 201
        inactive = {**consent_resource(["TREAT"], status="inactive"), "id": consent_id}
        assert client.put(f"/fhir/Consent/{consent_id}", json=inactive).status_code == 200
        _outcome(post_photo(client, SAMPLES / "document.jpg", metadata(consent=None)), 422)
        active = {**consent_resource(["TREAT"]), "id": consent_id}
        assert client.put(f"/fhir/Consent/{consent_id}", json=active).status_code == 200
        assert post_photo(client, SAMPLES / "document.jpg", metadata(consent=None)).status_code == 201


def test_a_consent_version_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support.app import consent_resource
    with adapter_client(tmp_path) as (client, services):
        assert client.post("/fhir/Consent", json=consent_resource(["TREAT"])).status_code == 201
        loaded: list[list[str]] = []
        get_many = services.store.get_many
        monkeypatch.setattr(services.store, "get_many", lambda t, ids: loaded.append(list(ids)) or get_many(t, ids))
        for photo in ("wound.jpg", "document.jpg", "tiny.jpg"):
            assert post_photo(client, SAMPLES / photo, metadata(consent=None)).status_code == 201
        assert len(loaded) == 1 and len(loaded[0]) == 1


def test_consent_pending_when_policy_allows(tmp_path: Path) -> None:
    with adapter_client(tmp_path, policy={"consent": {"allowPending": True}}) as (client, _):
        r = post_photo(client, WOUND, metadata(consent=None))
        assert r.status_code == 201 and r.json()["consentPending"] is True
        media = client.get(f"/fhir/{r.json()['record']}", headers=as_purpose("BTG")).json()
        assert any(e["url"].endswith("consent-pending") for e in media.get("extension", []))


def test_a_consent_given_with_a_photo_covers_that_photo_only(tmp_path: Path) -> None:
    """Review finding (HIGH): a verbal or written statement sent with one photo was stored as a
    patient-wide, open-ended Consent: it opened the patient's earlier photos (TREAT only) to
    TRAIN and covered later photos sent without any consent. It is that photo's consent now:
    its record, Binary and Provenance, nothing else; a POST /fhir/Consent stays patient-wide."""
    from tests.support.app import consent_resource
    with adapter_client(tmp_path) as (client, services):
        earlier = post_photo(client, WOUND, metadata()).json()
        given = post_photo(client, SAMPLES / "lesion.png", metadata(consent={"purposes": ["TREAT", "TRAIN"],
                                                                             "method": "verbal"}),
                           content_type="image/png")
        assert given.status_code == 201, given.text
        given_receipt = given.json()
        consent = client.get(f"/fhir/{given_receipt['consents'][0]}", headers=as_purpose("TREAT")).json()
        assert consent["provision"]["data"] == [{"meaning": "instance",
                                                 "reference": {"reference": given_receipt["record"]}}]
        train = as_purpose("TRAIN")
        for ref in (given_receipt["record"], given_receipt["binary"], given_receipt["provenance"]):
            assert client.get(f"/fhir/{seen_as(services, 'TRAIN', ref)}", headers=train).status_code == 200, ref
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', earlier['record'])}", headers=train).status_code == 404
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', earlier['binary'])}", headers=train).status_code == 404
        # a later photo without a statement is not covered: refused, saying the Consent on file is
        # for other records (review newwrites F6: it said none was on file)
        body = _outcome(post_photo(client, SAMPLES / "document.jpg", metadata(consent=None)), 422)
        assert "Consent permitting TREAT on file is restricted to other records" in body["issue"][0]["diagnostics"]
        # a written statement (with its form) is the photo's too
        written = post_photo(client, SAMPLES / "tiny.jpg", metadata(consent={
            "purposes": ["TREAT", "TRAIN"], "method": "written",
            "form": base64.b64encode(b"%PDF-1.4\n%%EOF\n").decode()})).json()
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', written['record'])}", headers=train).status_code == 200
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', earlier['record'])}", headers=train).status_code == 404
        # a Consent recorded on its own is the patient's: it covers every photo
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).status_code == 201
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', earlier['record'])}", headers=train).status_code == 200


def test_a_consent_given_with_a_photo_does_not_document_a_pending_one(tmp_path: Path) -> None:
    """Review finding (HIGH): under allowPending, a second photo sent with verbal consent for
    TREAT (and TRAIN) made the photo kept without consent readable for care and training. A
    pending photo opens only by a Consent that covers it (recorded for the patient, or naming it)."""
    from tests.support.app import consent_resource
    with adapter_client(tmp_path, policy={"consent": {"allowPending": True}}) as (client, services):
        pending = post_photo(client, WOUND, metadata(consent=None)).json()
        assert pending["consentPending"] is True
        second = post_photo(client, SAMPLES / "document.jpg",
                            metadata(consent={"purposes": ["TREAT", "TRAIN"], "method": "verbal"})).json()
        assert second["consentPending"] is False
        for purpose in ("TREAT", "COC", "TRAIN"):
            assert client.get(f"/fhir/{seen_as(services, purpose, pending['record'])}",
                              headers=as_purpose(purpose)).status_code == (404 if purpose == "TRAIN" else 403)
            assert client.get(f"/fhir/{seen_as(services, purpose, second['record'])}",
                              headers=as_purpose(purpose)).status_code == 200
        # a third one sent without consent is pending too: the second photo's consent is not on file
        assert post_photo(client, SAMPLES / "tiny.jpg", metadata(consent=None)).json()["consentPending"] is True
        assert client.post("/fhir/Consent", json=consent_resource(["TREAT"])).status_code == 201
        assert client.get(f"/fhir/{pending['record']}", headers=as_purpose("TREAT")).status_code == 200


def test_a_consent_sent_in_a_transaction_covers_its_photo_only(tmp_path: Path) -> None:
    """The same finding over POST /fhir: the Bundle's Consent was stored patient-wide."""
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    consent = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent")
    consent["provision"]["purpose"].append({"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                                            "code": "TRAIN"})
    with adapter_client(tmp_path) as (client, services):
        earlier = post_photo(client, SAMPLES / "document.jpg", metadata()).json()
        r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        locations = ["/".join(e["response"]["location"].split("/")[:2]) for e in r.json()["entry"]]
        record = next(loc for loc in locations if loc.startswith(("Media/", "DocumentReference/")))
        stored = client.get(f"/fhir/{next(loc for loc in locations if loc.startswith('Consent/'))}",
                            headers=as_purpose("TREAT")).json()
        assert stored["provision"]["data"] == [{"meaning": "instance", "reference": {"reference": record}}]
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', record)}", headers=as_purpose("TRAIN")).status_code == 200
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', earlier['record'])}", headers=as_purpose("TRAIN")).status_code == 404


def test_a_consent_with_an_id_in_a_transaction_is_created_under_an_id_the_server_assigns(tmp_path: Path) -> None:
    """Review "merges" finding 2: a POST entry's resource id is ignored (FHIR R4 http.html#transaction,
    #create), as POST /fhir/Consent ignores it; the Bundle's Consent with an id got the whole
    transaction refused (400 "the resource id must match the URL")."""
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    consent = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent")
    consent["id"] = "consent-1"
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created"] * 3
        location = next(e["response"]["location"] for e in r.json()["entry"]
                        if e["response"]["location"].startswith("Consent/"))
        assigned = location.split("/")[1]
        assert assigned != "consent-1"
        stored = client.get(f"/fhir/Consent/{assigned}", headers=as_purpose("TREAT"))
        assert stored.status_code == 200, stored.text
        assert stored.json()["id"] == assigned
        assert client.get("/fhir/Consent/consent-1", headers=as_purpose("TREAT")).status_code == 404


@pytest.mark.parametrize("kind,sample", [("document", "document.jpg"), ("secondary", "tiny.jpg")])
def test_document_and_secondary_need_no_consent_for_care(tmp_path: Path, kind: str, sample: str) -> None:
    with adapter_client(tmp_path) as (client, services):
        r = post_photo(client, SAMPLES / sample, metadata(kind=kind, consent=None))
        assert r.status_code == 201, r.text
        record = r.json()["record"]
        assert record.startswith("DocumentReference/" if kind == "document" else "Media/")
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).status_code == 200
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', record)}", headers=as_purpose("TRAIN")).status_code == 404


@pytest.mark.parametrize("kind,sample", [("document", "document.jpg"), ("secondary", "tiny.jpg")])
def test_document_and_secondary_are_refused_while_a_consent_denies_treat(tmp_path: Path, kind: str,
                                                                         sample: str) -> None:
    """Review finding: with a Consent denying TREAT on file, document and secondary photos were
    stored (201, safe to delete from the device) though no one could read them for care; a
    clinical one was refused. Refused the same way now, audited, nothing else stored."""
    from tests.support.app import consent_resource
    deny = consent_resource(["TREAT"])
    deny["provision"]["type"] = "deny"
    with adapter_client(tmp_path) as (client, services):
        assert client.post("/fhir/Consent", json=deny).status_code == 201
        counts = _counts(services)
        clinical = _outcome(post_photo(client, WOUND, metadata()), 422)
        body = _outcome(post_photo(client, SAMPLES / sample, metadata(kind=kind, consent=None)), 422)
        assert body["issue"][0]["code"] == clinical["issue"][0]["code"] == "business-rule"
        assert body["issue"][0]["expression"] == ["consent"] and "denies TREAT" in body["issue"][0]["diagnostics"]
        assert _counts(services) == counts and _staging_empty(services)
        assert services.store.list_audit(1)[0]["outcome"] == "4"


def test_patient_sent_photo_carries_implied_consent_for_treat_only(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        r = post_photo(client, WOUND, metadata(source="patient", consent=None))
        assert r.status_code == 201, r.text
        receipt = r.json()
        consent = client.get(f"/fhir/{receipt['consents'][0]}", headers=as_purpose("TREAT")).json()
        assert consent["policyRule"]["coding"][0]["code"] == "IMPLIED"
        assert [p["code"] for p in consent["provision"]["purpose"]] == ["TREAT"]
        assert consent["provision"]["data"][0]["reference"]["reference"] == receipt["record"]
        assert client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT")).status_code == 200
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', receipt['record'])}", headers=as_purpose("TRAIN")).status_code == 404


def test_colleague_internal_provenance_names_the_sender(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        r = post_photo(client, WOUND, metadata(
            source="colleague-internal", colleague={"name": "Dr Sender", "organisation": "Dermatology"}))
        assert r.status_code == 201, r.text
        prov = client.get(f"/fhir/{r.json()['provenance']}", headers=as_purpose("TREAT")).json()
        text_ = json.dumps(prov)
        assert "Dr Sender" in text_ and "Dermatology" in text_
        assert any("onBehalfOf" in a for a in prov["agent"])


def test_colleague_external_needs_the_discussion_note(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        _outcome(post_photo(client, WOUND, metadata(
            source="colleague-external", colleague={"name": "Dr Out", "organisation": "Other Trust"})), 422)
        assert _counts(services) == (0, 0)
        r = post_photo(client, WOUND, metadata(source="colleague-external", colleague={
            "name": "Dr Out", "organisation": "Other Trust", "discussionNote": "phoned about healing"}))
        assert r.status_code == 201, r.text
        media = client.get(f"/fhir/{r.json()['record']}", headers=as_purpose("TREAT")).json()
        assert any("phoned about healing" in n["text"] for n in media["note"])


def test_secondary_photo_gets_the_review_the_original_warning(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        r = post_photo(client, SAMPLES / "document.jpg", metadata(kind="secondary", consent=None))
        receipt = r.json()
        assert any("original" in w.lower() for w in receipt["warnings"])
        media = client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT")).json()
        assert any("original" in n["text"].lower() for n in media["note"])


def test_low_quality_photo_is_accepted_with_a_quality_warning(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        r = post_photo(client, SAMPLES / "tiny.jpg", metadata())
        assert r.status_code == 201
        receipt = r.json()
        assert any("640" in w or "blur" in w.lower() or "quality" in w.lower() for w in receipt["warnings"])
        media = client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT")).json()
        assert any("quality" in json.dumps(x).lower() for x in media.get("note", []) + media.get("extension", []))
        clean = post_photo(client, WOUND, metadata()).json()
        assert clean["warnings"] == []


def test_written_consent_policy_refuses_verbal_for_clinical(tmp_path: Path) -> None:
    with adapter_client(tmp_path, policy={"consent": {"writtenRequired": True}}) as (client, services):
        _outcome(post_photo(client, WOUND, metadata()), 422)
        assert _counts(services) == (0, 0)
        ok = post_photo(client, WOUND, metadata(consent={"purposes": ["TREAT"], "method": "written"}))
        assert ok.status_code == 201
        doc = post_photo(client, SAMPLES / "document.jpg", metadata(kind="document", consent=None))
        assert doc.status_code == 201


def test_personal_device_refused_when_policy_forbids(tmp_path: Path) -> None:
    with adapter_client(tmp_path, policy={"devices": {"personalAllowed": False}}) as (client, services):
        body = _outcome(post_photo(client, WOUND, metadata(device="personal")), 422)
        assert "device" in body["issue"][0].get("expression", [""])[0]
        assert _counts(services) == (0, 0)
        assert post_photo(client, WOUND, metadata(device="organisation")).status_code == 201


def test_where_personal_devices_are_forbidden_staff_state_theirs_and_patients_are_not_held_to_it(
        tmp_path: Path) -> None:
    """Review findings F8, F9: under ``personalAllowed: false`` a clinician's photo that left
    ``device`` out was stored (the ban bypassed, the record silent on the device), while a
    patient's upload truthfully marked ``device: personal`` was refused. Now the clinician's is
    422 at ``device`` and the patient's is stored; over POST /fhir a record without its
    capture-device extension is refused alike."""
    with adapter_client(tmp_path, policy={"devices": {"personalAllowed": False}}) as (client, services):
        body = _outcome(post_photo(client, WOUND, metadata()), 422)
        assert body["issue"][0]["expression"] == ["device"] and _counts(services) == (0, 0)
        patient = metadata(source="patient", consent=None, device="personal")
        assert post_photo(client, WOUND, patient).status_code == 201
        bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
        record = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media")
        record["extension"] = [x for x in record["extension"] if not x["url"].endswith("/capture-device")]
        counts = _counts(services)
        _outcome(client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"}), 422)
        assert _counts(services) == counts


# -- failure cases: clear error, nothing stored --------------------------------------------------

def test_not_an_image_is_415(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        _outcome(post_photo(client, SAMPLES / "not-an-image.txt", metadata(), content_type="text/plain"), 415)
        _outcome(post_photo(client, SAMPLES / "not-an-image.txt", metadata()), 415)
        assert _counts(services) == (0, 0) and _staging_empty(services)


def test_truncated_jpeg_is_422(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        _outcome(post_photo(client, SAMPLES / "truncated.jpg", metadata()), 422)
        assert _counts(services) == (0, 0) and _staging_empty(services)


def test_decompression_bomb_is_refused(tmp_path: Path) -> None:
    with adapter_client(tmp_path, policy={"limits": {"maxPixels": 100_000}}) as (client, services):
        body = _outcome(post_photo(client, WOUND, metadata()), 422)
        assert body["issue"][0]["code"] == "too-costly"
        assert _counts(services) == (0, 0) and _staging_empty(services)


def _png_bomb(width: int, height: int) -> bytes:
    """A greyscale PNG of ``width`` x ``height`` zero pixels: its IDAT deflates a thousandfold."""
    import struct
    import zlib

    def chunk(ctype: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))
    deflate = zlib.compressobj(9)
    row = b"\x00" * (1 + width)
    idat = b"".join([deflate.compress(row) for _ in range(height)] + [deflate.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_a_consent_form_is_held_to_the_limits_of_a_photo(tmp_path: Path) -> None:
    """Review finding: a PNG sent as the signed consent form (consent.form, or a transaction
    Consent's sourceAttachment) skipped the pixel limit and the decode proof: a decompression
    bomb was inflated whole (~107 s of CPU at 60000x60000) and stored as the form. It is refused
    as the photo would be (422 too-costly at consent.form) before it is inflated, storing nothing;
    a form that does not decode is refused as a photo that does not."""
    bomb = base64.b64encode(_png_bomb(3000, 1000)).decode()
    broken = base64.b64encode((SAMPLES / "truncated.jpg").read_bytes()).decode()
    with adapter_client(tmp_path, policy={"limits": {"maxPixels": 2_000_000}}) as (client, services):
        for form, code in ((bomb, "too-costly"), (broken, "invalid")):
            meta = metadata(consent={"purposes": ["TREAT", "TRAIN"], "method": "written", "form": form})
            body = _outcome(post_photo(client, SAMPLES / "tiny.jpg", meta), 422)
            assert body["issue"][0]["code"] == code and body["issue"][0]["expression"] == ["consent.form"]
            assert _counts(services) == (0, 0) and _staging_empty(services)
        bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
        consent = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent")
        consent["sourceAttachment"] = {"contentType": "image/png", "data": bomb}
        body = _outcome(client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"}), 422)
        assert body["issue"][0]["code"] == "too-costly"
        assert _counts(services) == (0, 0) and _staging_empty(services)
        # within the limit, the scan is stored without its metadata
        meta = metadata(consent={"purposes": ["TREAT", "TRAIN"], "method": "written",
                                 "form": base64.b64encode(WOUND.read_bytes()).decode()})
        receipt = post_photo(client, SAMPLES / "tiny.jpg", meta).json()
        stored = client.get(f"/fhir/{receipt['consents'][0]}", headers=as_purpose("TREAT")).json()
        assert b"Jane Example" not in base64.b64decode(stored["sourceAttachment"]["data"])


def test_oversize_upload_is_413(tmp_path: Path) -> None:
    with adapter_client(tmp_path, max_upload_bytes=50_000) as (client, services):
        _outcome(post_photo(client, WOUND, metadata()), 413)
        assert _counts(services) == (0, 0) and _staging_empty(services)


@pytest.mark.parametrize("meta,where", [
    ({"kind": "clinical", "source": "clinician"}, "patient"),
    ({"patient": PATIENT, "kind": "selfie", "source": "clinician"}, "kind"),
    ({"patient": PATIENT, "kind": "clinical"}, "source"),
    ({"patient": PATIENT, "kind": "clinical", "source": "clinician",
      "consent": {"purposes": ["EDU"], "method": "verbal"}}, "consent.purposes"),
    # dates as numbers or digits were read as seconds since 1970: "20240517" became 1970-08-23
    ({"patient": PATIENT, "kind": "document", "source": "clinician", "takenAt": "20240517"}, "takenAt"),
    ({"patient": PATIENT, "kind": "document", "source": "clinician", "takenAt": 1715940000}, "takenAt"),
    ({"patient": PATIENT, "kind": "document", "source": "clinician", "takenAt": 0.5}, "takenAt"),
    ({"patient": PATIENT, "kind": "clinical", "source": "clinician",
      "consent": {"purposes": ["TREAT"], "method": "verbal", "date": "2024"}}, "consent.date"),
    ({"patient": PATIENT, "kind": "clinical", "source": "clinician",
      "consent": {"purposes": ["TREAT"], "method": "verbal", "date": 1715940000}}, "consent.date"),
    # review F5: a time without its zone was cut to the date (FHIR dateTime needs the zone with a time)
    ({"patient": PATIENT, "kind": "document", "source": "clinician", "takenAt": "2024-03-01T10:15:00"}, "takenAt"),
    ({"patient": PATIENT, "kind": "document", "source": "clinician", "takenAt": "2024-03-01 10:15"}, "takenAt"),
    # review F6: a laterality without the body site it qualifies was dropped
    ({"patient": PATIENT, "kind": "document", "source": "clinician", "laterality": "left"}, "laterality"),
    # clinical safety review: a "document" with a body site (a body photo filed under the wrong
    # kind, so needing no consent) was stored without consent and the body site dropped
    ({"patient": PATIENT, "kind": "document", "source": "clinician", "bodySite": "14975008"}, "bodySite"),
    ({"patient": PATIENT, "kind": "document", "source": "clinician", "bodySite": "14975008",
      "laterality": "right"}, "bodySite"),
])
def test_invalid_metadata_points_at_the_element(tmp_path: Path, meta: dict, where: str) -> None:
    with adapter_client(tmp_path) as (client, services):
        body = _outcome(post_photo(client, WOUND, meta), 422)
        assert any(e.startswith(where) for e in body["issue"][0]["expression"]), body
        assert _counts(services) == (0, 0)


def test_a_laterality_without_its_body_site_is_refused_alone(tmp_path: Path) -> None:
    """Review F6: ``laterality`` without ``bodySite`` was stored without it (the side lost, the
    app told all was stored): 422 at laterality. A bodySite refused for its form is not also
    blamed on the laterality."""
    with adapter_client(tmp_path) as (client, services):
        issue = _outcome(post_photo(client, WOUND, metadata(laterality="left")), 422)["issue"][0]
        assert issue["expression"] == ["laterality"] and "bodySite" in issue["diagnostics"]
        issue = _outcome(post_photo(client, WOUND, metadata(bodySite="forearm", laterality="left")), 422)["issue"][0]
        assert issue["expression"] == ["bodySite"]
        assert _counts(services) == (0, 0)


@pytest.mark.parametrize("taken", ["2024-03-01", "2024-03-01T10:15:00Z", "2024-03-01T10:15:00.250+05:30",
                                   "2024-03-01T10:15-08:00"])
def test_a_taken_at_with_its_zone_or_a_date_alone_is_kept(tmp_path: Path, taken: str) -> None:
    with adapter_client(tmp_path) as (client, _):
        r = post_photo(client, WOUND, metadata(takenAt=taken, bodySite="14975008", laterality="left"))
        assert r.status_code == 201, r.text


def test_missing_parts_and_wrong_content_type(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, _):
        _outcome(client.post("/photos", files={"file": ("w.jpg", WOUND.read_bytes(), "image/jpeg")}), 422)
        _outcome(client.post("/photos", files={"metadata": (None, json.dumps(metadata()), "application/json")}),
                 422)
        _outcome(client.post("/photos", content=b"{}", headers={"Content-Type": "application/json"}), 415)
        _outcome(client.post("/photos", files={"file": ("w.jpg", WOUND.read_bytes(), "image/jpeg"),
                                               "metadata": (None, "{not json", "application/json")}), 422)


@pytest.mark.parametrize("path,declared", [(WOUND, "text/plain"), (SAMPLES / "lesion.png", "image/jpeg"),
                                           (WOUND, "image/png"), (WOUND, "image/gif"),
                                           (WOUND, "application/json")])
def test_a_photo_declared_as_another_type_than_its_bytes_is_refused(tmp_path: Path, path: Path,
                                                                     declared: str) -> None:
    """Review finding: the file part's declared Content-Type was never looked at (a JPEG declared
    text/plain, a PNG declared image/jpeg: 201), while consent.form's formContentType is held to
    its bytes. A declared type that contradicts the bytes is 415, nothing stored."""
    with adapter_client(tmp_path) as (client, services):
        body = _outcome(post_photo(client, path, metadata(), content_type=declared), 415)
        assert body["issue"][0]["expression"] == ["file"]
        assert _counts(services) == (0, 0) and _staging_empty(services)


@pytest.mark.parametrize("declared", [None, "application/octet-stream", "image/jpeg; charset=binary", "IMAGE/JPEG"])
def test_a_photo_declared_as_nothing_in_particular_or_as_itself_is_sniffed(tmp_path: Path,
                                                                          declared: str | None) -> None:
    with adapter_client(tmp_path) as (client, _):
        files = {"file": ("w.jpg", WOUND.read_bytes()) if declared is None else ("w.jpg", WOUND.read_bytes(), declared),
                 "metadata": (None, json.dumps(metadata()), "application/json")}
        r = client.post("/photos", files=files)
        assert r.status_code == 201, r.text


def test_a_repeated_metadata_part_is_refused(tmp_path: Path) -> None:
    """Review finding: the last of two metadata parts won silently (another patient, a broader
    consent than the first part a gateway may have checked); refused as a repeated file is."""
    with adapter_client(tmp_path) as (client, services):
        other = metadata(patient={"system": PATIENT["system"], "value": "MRN-0002"},
                         consent={"purposes": ["TREAT", "TRAIN"], "method": "verbal"})
        files = [("file", ("w.jpg", WOUND.read_bytes(), "image/jpeg")),
                 ("metadata", (None, json.dumps(metadata()), "application/json")),
                 ("metadata", (None, json.dumps(other), "application/json"))]
        body = _outcome(client.post("/photos", files=files), 422)
        assert body["issue"][0]["expression"] == ["metadata"]
        assert _counts(services) == (0, 0) and _staging_empty(services)


# -- idempotency --------------------------------------------------------------------------------

def test_same_idempotency_key_returns_the_original_receipt(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "abc-1"})
        counts = _counts(services)
        again = post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "abc-1"})
        assert again.status_code == 201 and again.json() == first.json()
        assert again.headers["idempotent-replayed"] == "true"
        assert _counts(services) == counts


def test_a_replay_and_a_refused_retry_are_audited_as_every_create_is(tmp_path: Path) -> None:
    """Found by review: a retry answered with the stored receipt, and a retry refused (the key
    reused for other bytes, another consent statement), left no AuditEvent, while a first
    create and a refusal by the rules each leave one. A replay names the records it answers
    with (outcome 0, saying it stored nothing new); a refused retry is outcome 4 with why."""
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "au-1"}).json()
        assert len(services.store.list_audit(10)) == 1  # the create
        for headers in ({"Idempotency-Key": "au-1"}, {}):  # by key, by bytes
            assert post_photo(client, WOUND, metadata(), headers=headers).status_code == 201
        replays = services.store.list_audit(10)[:-1]  # newest first
        assert len(replays) == 2
        for event in replays:
            assert event["subtype"][0]["code"] == "create" and event["outcome"] == "0"
            assert "nothing new" in event["outcomeDesc"]
            named = {e["what"].get("reference") for e in event["entity"] if "reference" in e.get("what", {})}
            assert {first["record"], first["binary"], first["provenance"], *first["consents"]} <= named
            assert any(e.get("what", {}).get("identifier") == metadata()["patient"] for e in event["entity"])
        _outcome(post_photo(client, SAMPLES / "lesion.png", metadata(), content_type="image/png",
                            headers={"Idempotency-Key": "au-1"}), 422)
        _outcome(post_photo(client, WOUND, metadata(consent={"purposes": ["TREAT", "TRAIN"],
                                                             "method": "written"})), 409)
        refusals = services.store.list_audit(10)[:2][::-1]
        assert [(e["outcome"], e["subtype"][0]["code"]) for e in refusals] == [("4", "create")] * 2
        assert "Idempotency-Key" in refusals[0]["outcomeDesc"] and "consent" in refusals[1]["outcomeDesc"]
        assert len(services.store.list_audit(10)) == 5
        record_emitted(services.store.list_audit(10))


def test_a_retry_with_another_consent_statement_is_refused_not_dropped(tmp_path: Path) -> None:
    """A retry of the same photo for the same patient answers the original receipt only when it
    states the consent recorded with it: a broader statement (TRAIN added), another method, or
    one for a photo stored without any was dropped while the 201 said the photo was stored.
    Now 409, nothing new stored, by key or by bytes, over /photos and in a Bundle; the retry
    with the recorded statement still replays, even after that Consent was updated."""
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "st-1"})
        assert first.status_code == 201
        counts = _counts(services)
        for meta, headers in (
                (metadata(consent={"purposes": ["TREAT", "TRAIN"], "method": "written"}), {}),
                (metadata(consent={"purposes": ["TREAT"], "method": "written"}), {}),
                (metadata(consent={"purposes": ["TREAT", "TRAIN"], "method": "verbal"}), {"Idempotency-Key": "st-1"})):
            refused = post_photo(client, WOUND, meta, headers=headers)
            assert _outcome(refused, 409)["issue"][0]["expression"] == ["consent"], (meta, headers)
            assert "safeToDeleteFromDevice" not in refused.text and _counts(services) == counts
        # the recorded statement replays, by key and by bytes, also once the Consent was updated
        consent_ref = first.json()["consents"][0]
        stored = client.get(f"/fhir/{consent_ref}", headers=as_purpose("TREAT")).json()
        stored["provision"]["purpose"].append(
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TRAIN"})
        assert client.put(f"/fhir/{consent_ref}", json=stored,
                          headers={"Content-Type": "application/fhir+json"}).status_code == 200
        for headers in ({"Idempotency-Key": "st-1"}, {}):
            again = post_photo(client, WOUND, metadata(), headers=headers)
            assert again.status_code == 201 and again.json() == first.json()
        # a document stored without a consent statement, sent again with one
        doc = post_photo(client, SAMPLES / "document.jpg", metadata(kind="document", consent=None))
        assert doc.status_code == 201 and doc.json()["consents"] == []
        _outcome(post_photo(client, SAMPLES / "document.jpg", metadata(kind="document")), 409)


@pytest.mark.parametrize("changed", [{"laterality": "right"}, {"kind": "document", "consent": None, "bodySite": None, "laterality": None},
                                     {"note": "second note"}, {"takenAt": "2024-03-01T10:16:00Z"},
                                     {"bodySite": "14975008"}, {"device": "personal"},
                                     {"author": {"identifier": {"system": "urn:oid:2.999.1.2", "value": "dr-b"}}},
                                     {"encounter": {"reference": "Encounter/78"}}, {"title": "other title"},
                                     {"source": "colleague-internal", "colleague": {"name": "Dr C"}}])
def test_a_retry_with_other_metadata_is_refused_not_dropped(tmp_path: Path, changed: dict[str, Any]) -> None:
    """Review finding F1: the same photo re-sent for the same patient with other metadata (the
    side corrected, another kind, a new note) got the original receipt, the change silently
    dropped. Now 409 naming the differing fields, audited, nothing stored, by key and by bytes;
    the same description still replays (the JSON spelled otherwise: the parsed content counts)."""
    described = metadata(bodySite="14975008", laterality="left", note="first note",
                         takenAt="2024-03-01T10:15:00+00:00", device="organisation",
                         encounter={"reference": "Encounter/77"})
    if "bodySite" in changed:
        described["bodySite"] = "85562004"
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, WOUND, described, headers={"Idempotency-Key": "md-1"})
        assert first.status_code == 201, first.text
        counts, audits = _counts(services), len(services.store.list_audit(100))
        other = {k: v for k, v in {**described, **changed}.items() if v is not None}
        for headers in ({"Idempotency-Key": "md-1"}, {}, {"Idempotency-Key": "md-2"}):
            refused = post_photo(client, WOUND, other, headers=headers)
            issue = _outcome(refused, 409)["issue"][0]
            names = sorted(k for k in changed if k != "consent")
            assert issue["expression"] == names, (issue, headers)
            assert first.json()["record"] in issue["diagnostics"] and "not updat" in issue["diagnostics"]
            assert "safeToDeleteFromDevice" not in refused.text and _counts(services) == counts
            event = services.store.list_audit(1)[0]
            assert event["outcome"] == "4" and names[0] in event["outcomeDesc"]
        assert len(services.store.list_audit(100)) == audits + 3
        # the same description replays, its JSON spelled otherwise (the offset as Z, keys reordered)
        same = dict(reversed(list({**described, "takenAt": "2024-03-01T10:15:00Z"}.items())))
        for headers in ({"Idempotency-Key": "md-1"}, {}):
            again = post_photo(client, WOUND, same, headers=headers)
            assert again.status_code == 201 and again.json() == first.json(), again.text
            assert again.headers["idempotent-replayed"] == "true"
        assert _counts(services) == counts


def test_a_receipt_stored_without_its_description_still_replays(tmp_path: Path) -> None:
    """Receipts stored before the description was kept with them (nothing to compare a retry
    with) are answered as before: the original receipt."""
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, WOUND, metadata(note="first"), headers={"Idempotency-Key": "old-1"})
        assert first.status_code == 201
        with services.store.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(text("UPDATE receipts SET receipt = :r"), {"r": json.dumps(first.json())})
        for headers in ({"Idempotency-Key": "old-1"}, {}):
            again = post_photo(client, WOUND, metadata(note="changed"), headers=headers)
            assert again.status_code == 201 and again.json() == first.json(), again.text


def test_a_transaction_sent_again_replays_and_one_describing_otherwise_is_refused(tmp_path: Path) -> None:
    """ITI-65 takes the same replay: the same Bundle again is answered as stored (200 OK each
    entry); the Bundle with the record's note changed is 409 naming the record's element."""
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    headers = {"Content-Type": "application/fhir+json"}
    with adapter_client(tmp_path) as (client, services):
        first = client.post("/fhir", json=bundle, headers=headers)
        assert first.status_code == 200, first.text
        counts = _counts(services)
        for extra in ({}, {"Idempotency-Key": "tx-md"}):
            again = client.post("/fhir", json=bundle, headers={**headers, **extra})
            assert again.status_code == 200, again.text
            assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK"] * len(bundle["entry"])
        record = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media")
        record["note"] = [{"text": "another note"}]
        issue = _outcome(client.post("/fhir", json=bundle, headers=headers), 409)["issue"][0]
        assert issue["expression"] == [f"Bundle.entry[{bundle['entry'].index(next(e for e in bundle['entry'] if e['resource'] is record))}].resource"]
        assert "note" in issue["diagnostics"]
        assert _counts(services) == counts


def test_a_retry_of_a_patient_photo_with_its_implied_consent_statement_replays(tmp_path: Path) -> None:
    """A patient's app that sent its photo with an implied consent statement (care only) and
    retries it, by key or by bytes, states the consent recorded with it: the original receipt,
    not a 409 saying the statement differs (a Consent with method implied reads as implied)."""
    with adapter_client(tmp_path) as (client, services):
        meta = metadata(source="patient", consent={"purposes": ["TREAT"], "method": "implied"})
        first = post_photo(client, WOUND, meta, headers={"Idempotency-Key": "imp-1"})
        assert first.status_code == 201, first.text
        counts = _counts(services)
        for headers in ({"Idempotency-Key": "imp-1"}, {}):
            again = post_photo(client, WOUND, meta, headers=headers)
            assert again.status_code == 201 and again.json() == first.json(), again.text
        assert _counts(services) == counts
        # another statement is still refused
        _outcome(post_photo(client, WOUND, metadata(source="patient", consent={"purposes": ["TREAT"],
                                                                             "method": "verbal"})), 409)


def test_an_idempotency_key_reused_for_another_photo_or_patient_is_refused(tmp_path: Path) -> None:
    """Answering a reused key with the first receipt would tell the capture app that this photo
    is stored and safe to delete from the phone, when nothing of it was stored: 422, nothing
    stored, and the photo goes in with a new key. Over POST /fhir too."""
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, WOUND, metadata(), headers={"Idempotency-Key": "abc-2"})
        assert first.status_code == 201
        counts = _counts(services)
        for path, meta in ((SAMPLES / "lesion.png", metadata()),
                           (WOUND, metadata(patient={"system": PATIENT["system"], "value": "MRN-0002"}))):
            reused = post_photo(client, path, meta, content_type="image/png" if path.suffix == ".png" else "image/jpeg",
                                headers={"Idempotency-Key": "abc-2"})
            body = _outcome(reused, 422)
            assert body["issue"][0]["expression"] == ["Idempotency-Key"]
            assert "safeToDeleteFromDevice" not in reused.text and first.json()["record"] not in reused.text
            assert _counts(services) == counts
        assert list((tmp_path / "data" / "staging").iterdir()) == []
        fresh = post_photo(client, SAMPLES / "lesion.png", metadata(), content_type="image/png",
                           headers={"Idempotency-Key": "abc-3"})
        assert fresh.status_code == 201 and fresh.json()["record"] != first.json()["record"]
        # the transaction path: the same key, another Binary
        bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
        headers = {"Content-Type": "application/fhir+json", "Idempotency-Key": "tx-1"}
        assert client.post("/fhir", json=bundle, headers=headers).status_code == 200
        assert client.post("/fhir", json=bundle, headers=headers).status_code == 200  # the same: replayed
        binary = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Binary")
        binary["data"] = base64.b64encode((SAMPLES / "tiny.jpg").read_bytes()).decode()
        _outcome(client.post("/fhir", json=bundle, headers=headers), 422)


def test_same_patient_and_content_returns_the_original_receipt(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, WOUND, metadata()).json()
        counts = _counts(services)
        assert post_photo(client, WOUND, metadata()).json() == first
        assert _counts(services) == counts
        other = post_photo(client, WOUND, metadata(patient={"system": PATIENT["system"], "value": "MRN-0002"}))
        assert other.status_code == 201 and other.json()["record"] != first["record"]


# -- transaction Bundle ------------------------------------------------------------------------

def test_transaction_bundle_is_stored_like_a_photo(tmp_path: Path) -> None:
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        resp = r.json()
        assert resp["type"] == "transaction-response"
        assert len(resp["entry"]) == len(bundle["entry"])
        assert all(e["response"]["status"].startswith("201") for e in resp["entry"])
        locations = [e["response"]["location"] for e in resp["entry"]]
        record = next(loc for loc in locations if loc.startswith(("Media/", "DocumentReference/")))
        rid = "/".join(record.split("/")[:2])
        assert client.get(f"/fhir/{rid}", headers=as_purpose("TREAT")).status_code == 200
        again = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert again.status_code == 200 and _counts(services)[1] == 1


def _unsaid_kind_bundles() -> list[tuple[str, dict[str, Any]]]:
    """Photos of the body sent over POST /fhir without the adapter's photo-kind extension and
    without a Consent (safety review finding 2): a Media of a forearm of DCM modality OP
    (ophthalmic photography) and ES (endoscopy), and an IHE MHD DocumentReference of a pressure
    ulcer, type LOINC 72170-4 "Photographic image"."""
    out: list[tuple[str, dict[str, Any]]] = []
    for modality, photo in (("OP", "wound.jpg"), ("ES", "lesion.png")):  # each its own bytes (else a replay)
        bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
        bundle["entry"] = [e for e in bundle["entry"] if e["resource"]["resourceType"] != "Consent"]
        image = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Binary")
        image.update(data=base64.b64encode((SAMPLES / photo).read_bytes()).decode(),
                     contentType="image/png" if photo.endswith(".png") else "image/jpeg")
        media = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media")
        media["extension"] = [x for x in media["extension"] if not x["url"].endswith("/photo-kind")]
        media["modality"] = {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": modality}]}
        media["content"] = {**{k: v for k, v in media["content"].items() if k not in ("size", "hash")},
                            "contentType": image["contentType"]}
        for element in ("height", "width", "identifier"):  # the sample's, of its own bytes
            media.pop(element, None)
        out.append((modality, bundle))
    binary = next(e for e in json.loads((SAMPLES / "bundle-transaction.json").read_text())["entry"]
                  if e["resource"]["resourceType"] == "Binary")
    binary["resource"] = {**binary["resource"], "data": base64.b64encode((SAMPLES / "tiny.jpg").read_bytes()).decode()}
    document = {"resourceType": "DocumentReference", "status": "current",
                "type": {"coding": [{"system": "http://loinc.org", "code": "72170-4", "display": "Photographic image"}]},
                "subject": {"identifier": dict(PATIENT)}, "description": "Photo of pressure ulcer, sacrum",
                "content": [{"attachment": {"contentType": "image/jpeg", "url": binary["fullUrl"]}}]}
    out.append(("DocumentReference", {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": binary["fullUrl"], "resource": {k: v for k, v in binary["resource"].items() if k != "securityContext"},
         "request": {"method": "POST", "url": "Binary"}},
        {"fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222", "resource": document,
         "request": {"method": "POST", "url": "DocumentReference"}}]}))
    return out


def test_a_record_that_does_not_say_its_kind_needs_consent_as_a_clinical_photo(tmp_path: Path) -> None:
    """Safety review finding 2 (HIGH): without the photo-kind extension a Media of DCM modality OP
    or ES was stored as a ``secondary`` image (no consent, and the false warning "review the
    original before diagnosis", in its DICOM copy too), and a DocumentReference of a wound photo as
    a ``document`` (no consent). The sender has not said it is not a photo of the body: it is
    clinical, refused without documented consent as ``POST /photos`` refuses a clinical photo
    (422 at the consent), nothing stored; sent with a Consent, stored as a clinical photo."""
    with adapter_client(tmp_path) as (client, services):
        for what, bundle in _unsaid_kind_bundles():
            body = _outcome(client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"}), 422)
            assert "consent" in body["issue"][0]["diagnostics"].lower(), what
            assert _counts(services) == (0, 0), what
        consent = consent_resource_entry()
        for what, bundle in _unsaid_kind_bundles():
            bundle["entry"].append(consent)
            r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json",
                                                           "Prefer": "return=representation"})
            assert r.status_code == 200, (what, r.text)
            record = next(e["resource"] for e in r.json()["entry"]
                          if e.get("resource", {}).get("resourceType") in ("Media", "DocumentReference"))
            assert record["resourceType"] == "Media", what  # mappings/kinds.yaml: clinical photos are Media
            kinds = [x["valueCode"] for x in record["extension"] if x["url"].endswith("/photo-kind")]
            assert kinds == ["clinical"], what
            assert not any("Secondary image" in n["text"] for n in record.get("note", [])), what


def test_a_record_that_does_not_say_its_kind_is_consent_pending_under_allow_pending(tmp_path: Path) -> None:
    """As ``POST /photos`` keeps a clinical photo without consent under ``allowPending``."""
    with adapter_client(tmp_path, policy={"consent": {"allowPending": True}}) as (client, _):
        for what, bundle in _unsaid_kind_bundles():
            r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json",
                                                           "Prefer": "return=representation"})
            assert r.status_code == 200, (what, r.text)
            record = next(e["resource"] for e in r.json()["entry"]
                          if e.get("resource", {}).get("resourceType") in ("Media", "DocumentReference"))
            assert any(x["url"].endswith("/consent-pending") for x in record["extension"]), what
            assert client.get(f"/fhir/Media/{record['id']}", headers=as_purpose("TREAT")).status_code == 403, what


def test_a_document_reference_of_a_listed_document_type_needs_no_consent(tmp_path: Path) -> None:
    """A DocumentReference whose type mappings/kinds.yaml lists under ``document.documentTypes``
    (LOINC 11502-2 Laboratory report) is a photographed document without the extension: stored
    without consent, as ``POST /photos`` stores ``kind: document``."""
    _, bundle = _unsaid_kind_bundles()[-1]
    document = bundle["entry"][1]["resource"]
    document["type"] = {"coding": [{"system": "http://loinc.org", "code": "11502-2", "display": "Laboratory report"}]}
    document["description"] = "Photo of a laboratory report"
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        location = r.json()["entry"][1]["response"]["location"]
        assert location.startswith("DocumentReference/")
        stored = client.get("/fhir/" + "/".join(location.split("/")[:2]), headers=as_purpose("TREAT"))
        assert stored.status_code == 200
        assert stored.json()["category"][0]["coding"][0]["code"] == "document"


def consent_resource_entry() -> dict[str, Any]:
    """The sample Bundle's Consent entry (TREAT, verbal), for the suite's patient."""
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    return next(e for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent")


def test_a_bundle_with_a_consent_for_a_photo_stored_without_one_is_refused(tmp_path: Path) -> None:
    """The photo is stored for the patient already (same stored SHA-256), posted without a
    Consent: the Bundle's retry is answered from that receipt, which names no Consent to put in
    the Consent entry's response. It was a 500 (KeyError, after the replay); now a 409 saying
    the Consent was not stored, and nothing new is."""
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    binary = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Binary")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(base64.b64decode(binary["data"]))
    with adapter_client(tmp_path) as (client, services):
        first = post_photo(client, photo, metadata(kind="document", consent=None))
        assert first.status_code == 201, first.text
        assert first.json()["consents"] == []
        counts = _counts(services)
        body = _outcome(client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"}), 409)
        assert "Consent" in body["issue"][0]["diagnostics"]
        assert _counts(services) == counts


def test_invalid_transaction_gets_an_outcome_pointing_at_the_element(tmp_path: Path) -> None:
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    with adapter_client(tmp_path) as (client, services):
        bad_type = dict(bundle, type="collection")
        body = _outcome(client.post("/fhir", json=bad_type), 422)
        assert "Bundle.type" in body["issue"][0]["expression"][0]
        # the photo sent as a batch (which here takes reads only): each entry is refused, nothing stored
        as_batch = client.post("/fhir", json=dict(bundle, type="batch"))
        assert as_batch.status_code == 200 and as_batch.json()["type"] == "batch-response"
        assert {e["response"]["status"] for e in as_batch.json()["entry"]} == {"400 Bad Request"}
        assert "transaction" in as_batch.json()["entry"][0]["response"]["outcome"]["issue"][0]["diagnostics"]
        broken = json.loads(json.dumps(bundle))
        for entry in broken["entry"]:
            if entry["resource"]["resourceType"] in ("Media", "DocumentReference"):
                entry["resource"]["status"] = 42
        r = client.post("/fhir", json=broken)
        assert r.status_code in (400, 422)
        assert any("status" in e for e in r.json()["issue"][0]["expression"])
        # a body that cannot be parsed: 400 (http.html#transaction), 422 being a parsed Bundle a rule refuses
        _outcome(client.post("/fhir", content=b"not json", headers={"Content-Type": "application/fhir+json"}), 400)
        assert _counts(services) == (0, 0)


def test_mhd_submission_set_list_is_acknowledged(tmp_path: Path) -> None:
    from tests.support.mhd import submission_set_resource
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    submission_set = {
        "fullUrl": "urn:uuid:5a0b6e2c-0000-4000-8000-00000000005e",
        "resource": submission_set_resource([e["fullUrl"] for e in bundle["entry"]
                                             if e["resource"]["resourceType"] in ("Media", "DocumentReference")]),
        "request": {"method": "POST", "url": "List"}}
    bundle["entry"].insert(0, submission_set)
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir", json=bundle, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, r.text
        entries = r.json()["entry"]
        assert entries[0]["response"]["status"] == "200 OK" and "location" not in entries[0]["response"]
        assert entries[0]["response"]["outcome"]["issue"][0]["severity"] == "information"
        assert all(e["response"]["status"].startswith("201") for e in entries[1:])


@pytest.mark.parametrize("patch", [{"patient": 3}, {"provision": "x"}, {"status": "bogus"}, {"scope": None}])
def test_invalid_consent_is_400_not_500(tmp_path: Path, patch: dict) -> None:
    from tests.support.app import consent_resource
    with adapter_client(tmp_path) as (client, _):
        bad = {k: v for k, v in {**consent_resource(["TRAIN"]), **patch}.items() if v is not None}
        r = client.post("/fhir/Consent", json=bad)
        assert r.status_code in (400, 422), r.text
        assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("change", "where"), [
    (lambda c: c["category"].__setitem__(0, {}), "Consent.category[0]"),
    (lambda c: c["performer"].__setitem__(0, {}), "Consent.performer[0]"),
    (lambda c: c["provision"]["action"].append({}), "Consent.provision.action[2]"),
    (lambda c: c.__setitem__("extension", [{"url": "", "valueCode": "written"}]), "Consent.extension[0].url"),
    (lambda c: c.__setitem__("policy", []), "Consent.policy"),
    (lambda c: c["provision"]["action"][0]["coding"][0].__setitem__("code", "x"),
     "Consent.provision.action[0].coding[0].code"),
])
def test_consent_that_is_not_valid_fhir_is_refused_naming_the_element(tmp_path: Path, change: Any,
                                                                        where: str) -> None:
    """Found by the npm validators on what the mutation tests got stored: empty objects, arrays
    and strings (FHIR's JSON rules) and a consentaction code outside its required binding passed
    the models and were stored and emitted. They are refused, the element named."""
    consent = json.loads((SAMPLES / "consent-train.json").read_text())
    change(consent)
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir/Consent", json=consent, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code in (400, 422), r.text
        outcome = r.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["expression"] == [where]


def test_colleague_internal_needs_documented_consent_and_training_its_own(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        colleague = {"name": "Dr Sender", "organisation": "Dermatology"}
        refused = post_photo(client, WOUND, metadata(source="colleague-internal", consent=None, colleague=colleague))
        assert refused.status_code == 422, refused.text  # no consent documented: as a clinician's photo
        assert refused.json()["issue"][0]["expression"] == ["consent"]
        r = post_photo(client, WOUND, metadata(source="colleague-internal", colleague=colleague))
        assert r.status_code == 201, r.text
        record = r.json()["record"]
        assert client.get(f"/fhir/{record}", headers=as_purpose("TREAT")).status_code == 200
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', record)}", headers=as_purpose("TRAIN")).status_code == 404


def test_photo_record_names_its_stable_dicom_uids(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, WOUND, metadata(encounter={"reference": "Encounter/77"})).json()
        sop = receipt["dicom"]["sopInstanceUid"]
        found = client.get(f"/fhir/Media?identifier=urn:dicom:uid|urn:oid:{sop}", headers=as_purpose("TREAT"))
        assert found.json()["total"] == 1
        assert found.json()["entry"][0]["resource"]["id"] == receipt["record"].split("/")[1]
        instance = services.store.find_dicom_instance(sop)
        assert instance is not None and instance.study_instance_uid == receipt["dicom"]["studyInstanceUid"]
        second = post_photo(client, SAMPLES / "lesion.png", metadata(encounter={"reference": "Encounter/77"}),
                            content_type="image/png").json()
        assert second["dicom"]["studyInstanceUid"] == receipt["dicom"]["studyInstanceUid"]
        assert second["dicom"]["sopInstanceUid"] != sop
        assert receipt["dicom"]["forwardTo"] == []


def test_photos_of_an_encounter_named_by_its_identifier_share_one_study(tmp_path: Path) -> None:
    """An encounter referenced by its identifier (system|value), as by a literal reference, makes
    one DICOM study of the patient's photos of it (the README: the study of an encounter is a hash
    of patient and encounter); another encounter another study. Before, only a literal reference
    was passed on, and each such photo was its own study."""
    visit = {"identifier": {"system": "urn:oid:2.999.5", "value": "V-1"}}
    with adapter_client(tmp_path) as (client, _):
        first = post_photo(client, WOUND, metadata(encounter=visit)).json()
        second = post_photo(client, SAMPLES / "lesion.png", metadata(encounter=visit), content_type="image/png").json()
        other = post_photo(client, SAMPLES / "tiny.jpg",  # another photo: the same one again is a retry
                           metadata(encounter={"identifier": {"system": "urn:oid:2.999.5", "value": "V-2"}})).json()
    assert first["dicom"]["studyInstanceUid"] == second["dicom"]["studyInstanceUid"]
    assert first["dicom"]["sopInstanceUid"] != second["dicom"]["sopInstanceUid"]
    assert other["dicom"]["studyInstanceUid"] != first["dicom"]["studyInstanceUid"]


@pytest.mark.parametrize("body", [
    "[" * 100_000 + "]" * 100_000,  # Python's parser: RecursionError
    '{"resourceType": "Consent", "x": ' + "[" * 500 + "]" * 500 + "}",  # parses; deeper than any resource
])
def test_json_nested_deeper_than_any_resource_is_refused_not_a_server_error(tmp_path: Path, body: str) -> None:
    with adapter_client(tmp_path) as (client, services):
        fhir_json = {"Content-Type": "application/fhir+json"}
        answers = [client.post("/fhir", content=body, headers=fhir_json),
                   client.post("/fhir/Consent", content=body, headers=fhir_json),
                   client.put("/fhir/Consent/c1", content=body, headers=fhir_json),
                   client.post("/photos", files={"file": ("w.jpg", (ROOT / "samples" / "tiny.jpg").read_bytes(),
                                                          "image/jpeg"),
                                                 "metadata": (None, body, "application/json")})]
        # a FHIR body that cannot be parsed is 400 (http.html); the photo's metadata 422
        for r, status in zip(answers, (400, 400, 400, 422), strict=True):
            assert r.status_code == status, r.text[:200]
            said = r.json()["issue"][0]["diagnostics"]
            # the first also holds more arrays than any resource (counted before it is parsed)
            assert "nests deeper than 64 levels" in said or "more than 50000 objects and arrays" in said, said
        # the photo's refusal is audited as every refused upload is (review newwrites F5), and so
        # are the Consent create and update (review dpo F1); a transaction body that is no JSON at
        # all is refused before it is known to be one, and is not
        refused = services.store.list_audit()
        assert sorted(e["subtype"][0]["code"] for e in refused) == ["create", "create", "update"], refused
        assert all(e["outcome"] == "4" for e in refused)
        assert client.get("/fhir/Consent", headers=as_purpose("TREAT")).json()["total"] == 0


@pytest.mark.parametrize("field", ["note", "title", "author"])
def test_a_lone_surrogate_escape_is_refused_before_anything_is_stored(tmp_path: Path, field: str) -> None:
    """Crafted request (http robustness): photo metadata whose note, title or author display held
    a lone surrogate escape ("x\\udc80y": valid JSON syntax, no Unicode text) passed the model and
    failed in the record store (UnicodeEncodeError, a 500 with its traceback logged) after the
    photo's blob was written, left on disk without a record. Such JSON is refused as it is
    parsed (422; a FHIR body, which then cannot be parsed, 400), and nothing is stored."""
    value: Any = {"display": "__S", "reference": "Practitioner/9"} if field == "author" else "__S"
    raw_metadata = json.dumps(metadata(**{field: value})).replace('"__S"', '"x\\udc80y"')
    consent = (SAMPLES / "consent-train.json").read_text().replace('"active"', '"\\udc80"', 1)
    with adapter_client(tmp_path) as (client, services):
        photo = client.post("/photos", files={"file": ("w.jpg", WOUND.read_bytes(), "image/jpeg"),
                                              "metadata": (None, raw_metadata, "application/json")})
        assert "surrogate" in _outcome(photo, 422)["issue"][0]["diagnostics"]
        _outcome(client.post("/fhir/Consent", content=consent, headers={"Content-Type": "application/fhir+json"}), 400)
        assert _counts(services) == (0, 0) and _staging_empty(services)


@pytest.mark.parametrize("fields", [{"patient": {**PATIENT, "reference": "Patient/a\u0000"}},
                                    {"title": "a\u0000b"}, {"encounter": {"reference": "Encounter/\u0000"}}])
def test_u0000_in_photo_metadata_is_refused_before_anything_is_stored(tmp_path: Path, fields: dict) -> None:
    """Crafted requests (http robustness): U+0000 in the photo's patient.reference was refused by
    the record store (422) only after the photo's blob was written, left on disk without a
    record; in its title or encounter it was stored (201) and emitted in FHIR strings, which do
    not allow it. The metadata is refused as it is parsed (422), nothing stored."""
    with adapter_client(tmp_path) as (client, services):
        body = _outcome(post_photo(client, WOUND, metadata(**fields)), 422)
        assert "U+0000" in body["issue"][0]["diagnostics"]
        assert _counts(services) == (0, 0) and _staging_empty(services)


def test_large_fhir_bodies_are_worked_on_a_few_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each large JSON body (a transaction Bundle with its base64 image) is in memory whole,
    several times over: 24 concurrent 60 MB Bundles peaked at 1.35 GB. Past LARGE_BODY_SLOTS at
    once, the others wait their turn unread; small bodies do not wait."""
    import threading
    import time

    from adapter.api.routes import fhir as fhir_routes

    monkeypatch.setattr(fhir_routes, "LARGE_BODY_SLOTS", 1)
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    large = json.dumps(bundle).encode() + b" " * (fhir_routes.LARGE_BODY_BYTES + 1)  # JSON allows the spaces
    with adapter_client(tmp_path) as (client, services):
        real = services.transactions.process
        state = {"now": 0, "most": 0}
        lock = threading.Lock()

        def process(*args: Any, **kwargs: Any) -> Any:  # the real one, counted
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            try:
                time.sleep(0.3)
                return real(*args, **kwargs)
            finally:
                with lock:
                    state["now"] -= 1

        monkeypatch.setattr(services.transactions, "process", process)
        answers: list[int] = []

        def post() -> None:
            answers.append(client.post("/fhir", content=large,
                                       headers={"Content-Type": "application/fhir+json"}).status_code)

        threads = [threading.Thread(target=post) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert answers == [200, 200, 200]
        assert state["most"] == 1


def test_a_photos_dicom_uids_are_keyed_and_its_encounter_keeps_one_study_across_restarts(tmp_path: Path) -> None:
    """The record id stays in de-identified views: the photo's UIDs must not be computable from
    it (they were an unkeyed hash of it). A photo of the same encounter posted after a restart
    joins the same study."""
    encounter = {"reference": "Encounter/e-1"}
    with adapter_client(tmp_path) as (client, _):
        first = post_photo(client, WOUND, metadata(encounter=encounter)).json()
    with adapter_client(tmp_path) as (client, _):
        second = post_photo(client, SAMPLES / "lesion.png", metadata(encounter=encounter),
                            content_type="image/png").json()
    assert first["dicom"]["studyInstanceUid"] == second["dicom"]["studyInstanceUid"]
    assert first["dicom"]["sopInstanceUid"] != second["dicom"]["sopInstanceUid"]
    record_id = first["record"].split("/", 1)[1]
    unkeyed = {stable_uid("2.25", "instance", record_id), stable_uid("2.25", "series", record_id)}
    uids = first["dicom"]
    assert unkeyed.isdisjoint({uids["seriesInstanceUid"], uids["sopInstanceUid"]})


def test_every_refusal_of_the_ingest_rules_is_audited(tmp_path: Path) -> None:
    """Review finding: only BusinessRuleViolation refusals were audited; a missing discussion
    note or an unknown consent purpose were refused without an AuditEvent."""
    with adapter_client(tmp_path) as (client, services):
        before = len(services.store.list_audit(100))
        no_note = metadata(source="colleague-external", consent=None, colleague={"name": "Dr Out"})
        assert post_photo(client, WOUND, no_note).status_code == 422
        unknown = metadata(consent={"purposes": ["FOO"], "method": "verbal"})
        assert post_photo(client, WOUND, unknown).status_code == 422
        events = services.store.list_audit(100)
        assert len(events) == before + 2 and all(e["outcome"] == "4" for e in events[:2])
        assert "discussionNote" in events[1]["outcomeDesc"] and "FOO" in events[0]["outcomeDesc"]


def test_a_consent_dated_today_east_of_utc_leaves_the_photo_readable_for_care(tmp_path: Path) -> None:
    """Second diff review: a date-only consent date of "today" in a zone ahead of UTC (UTC's
    tomorrow) made a Consent starting tomorrow, and the photo unreadable for care until then."""
    from datetime import UTC, datetime, timedelta

    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    with adapter_client(tmp_path) as (client, _):
        receipt = post_photo(client, WOUND, metadata(consent={"purposes": ["TREAT"], "method": "verbal",
                                                              "date": tomorrow})).json()
        assert client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT")).status_code == 200


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_a_date_whose_utc_instant_falls_outside_the_calendar_is_refused(tmp_path: Path, when: str) -> None:
    """Crafted requests (http robustness): a valid FHIR dateTime whose UTC instant is before year
    1 or after 9999 (a photo's takenAt, its consent date, a Bundle's Media.createdDateTime, a
    Consent.dateTime) made the UTC conversion overflow, a 500 with its traceback logged. It is
    refused (422), nothing stored."""
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    media = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Media")
    media["createdDateTime"] = when
    consent = json.loads((SAMPLES / "consent-train.json").read_text())
    consent["dateTime"] = when
    fhir_json = {"Content-Type": "application/fhir+json"}
    with adapter_client(tmp_path) as (client, services):
        _outcome(post_photo(client, WOUND, metadata(takenAt=when)), 422)
        _outcome(post_photo(client, WOUND, metadata(consent={"purposes": ["TREAT"], "method": "verbal",
                                                              "date": when})), 422)
        _outcome(client.post("/fhir", json=bundle, headers=fhir_json), 422)
        media["createdDateTime"] = "2024-03-01T10:15:00+01:00"
        bundled_consent = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent")
        bundled_consent["dateTime"] = when
        _outcome(client.post("/fhir", json=bundle, headers=fhir_json), 422)
        _outcome(client.post("/fhir/Consent", json=consent, headers=fhir_json), 422)
        assert _counts(services) == (0, 0) and _staging_empty(services)


def test_a_write_stating_a_purpose_that_sees_less_than_the_record_is_refused(tmp_path: Path) -> None:
    """Writes were taken for care whatever X-Purpose-Of-Use said: a caller a gateway marks as a
    trainer (TRAIN, de-identified view) could file photos under identified patients and record
    for itself the Consent it then reads under (found by the egress review). Such a write is
    refused (403, audited, nothing stored); one stating no purpose, care, or another purpose
    seeing the whole record goes on; an unknown purpose is 400 as on a read."""
    from tests.support.app import consent_resource
    with adapter_client(tmp_path) as (client, services):
        consent = consent_resource(["TRAIN"])
        transaction = {"resourceType": "Bundle", "type": "transaction", "entry": []}
        for purpose in ("TRAIN", "HRESCH", "http://terminology.hl7.org/CodeSystem/v3-ActReason|MLTRAINING"):
            before = len(services.store.list_audit(1000))
            answers = [
                post_photo(client, WOUND, metadata(), headers=as_purpose(purpose)),
                client.post("/fhir/Consent", json=consent, headers=as_purpose(purpose)),
                client.put("/fhir/Consent/x", json={**consent, "id": "x"}, headers=as_purpose(purpose)),
                client.post("/fhir", json=transaction, headers=as_purpose(purpose)),
                client.post("/dicomweb/studies", content=b"--b--\r\n", headers={
                    **as_purpose(purpose), "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}),
            ]
            assert [a.status_code for a in answers] == [403] * 5, [(a.status_code, a.text[:200]) for a in answers]
            assert all(a.json()["issue"][0]["code"] == "forbidden" for a in answers)
            events = services.store.list_audit(1000)[: len(services.store.list_audit(1000)) - before]
            assert len(events) == 5 and {e["outcome"] for e in events} == {"4"}
            # STOW-RS's refusal is a DICOM Instances Transferred (action C), as every STOW-RS event
            # (it was a BALP create: found in the last session's leftovers; test seen failing)
            assert events[0]["type"]["code"] == "110104" and events[0]["action"] == "C", events[0]["type"]
        assert client.get("/fhir/Media?_summary=count", headers=as_purpose("TREAT")).json()["total"] == 0
        assert client.get("/fhir/Consent?_summary=count", headers=as_purpose("TREAT")).json()["total"] == 0
        assert post_photo(client, WOUND, metadata(), headers=as_purpose("XYZ")).status_code == 400
        assert post_photo(client, WOUND, metadata(), headers=as_purpose("RECORDMGT")).status_code == 201
        assert client.post("/fhir/Consent", json=consent, headers=as_purpose("TREAT")).status_code == 201
        assert client.post("/fhir/Consent", json=consent).status_code == 201
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Media"}}]}
        assert client.post("/fhir", json=batch, headers=as_purpose("TRAIN")).status_code == 200  # reads


def test_a_write_refused_for_an_unknown_or_repeated_purpose_is_audited_as_the_write(tmp_path: Path) -> None:
    """Found by the diff review: a write stating an unknown purpose (400) was audited as a search
    or a read (the read's refusal, by the route's path parameters), and one stating two purposes
    (400) was not audited at all, where a read's is. Each is one AuditEvent of the write refused
    (create or update, outcome 4), nothing stored."""
    from tests.support.app import consent_resource
    consent = consent_resource(["TREAT"])
    twice = [("X-Purpose-Of-Use", "TREAT"), ("X-Purpose-Of-Use", "TRAIN")]
    with adapter_client(tmp_path) as (client, services):
        for headers in (as_purpose("NOPE"), twice):
            before = len(services.store.list_audit(1000))
            stow = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
            answers = [
                post_photo(client, WOUND, metadata(), headers=headers),
                client.post("/fhir/Consent", json=consent, headers=headers),
                client.put("/fhir/Consent/x", json={**consent, "id": "x"}, headers=headers),
                client.post("/dicomweb/studies", content=b"--b--\r\n",
                            headers=[*(headers.items() if isinstance(headers, dict) else headers), *stow.items()]),
            ]
            assert [a.status_code for a in answers] == [400] * 4, [(a.status_code, a.text[:200]) for a in answers]
            events = services.store.list_audit(1000)[: len(services.store.list_audit(1000)) - before]
            shapes = [(e["type"]["code"], e.get("subtype", [{}])[0].get("code"), e["action"], e["outcome"])
                      for e in reversed(events)]
            assert shapes == [("rest", "create", "C", "4"), ("rest", "create", "C", "4"), ("rest", "update", "U", "4"),
                              ("110104", None, "C", "4")], headers
        assert _counts(services) == (0, 0)


def _purpose_of_use(event: dict[str, Any]) -> list[tuple[str, str]]:
    """agent[user].purposeOfUse of an AuditEvent, as (system, code) pairs."""
    [user] = [a for a in event["agent"] if a.get("requestor")]
    return [(c["system"], c["code"]) for concept in user.get("purposeOfUse", []) for c in concept["coding"]]


def test_a_write_is_audited_under_the_purpose_its_caller_stated(tmp_path: Path) -> None:
    """Found by the audit review: every write was audited with purposeOfUse TREAT whatever the
    caller stated, so a break-glass Consent write (BTG), a patient's own upload (PATRQT) or a
    records-management transaction (RECORDMGT) read as ordinary care in the trail. IHE BALP:
    agent[user].purposeOfUse is the purpose asserted for the request. A write stating none is
    filed for care (TREAT). What may write, and what is stored, is unchanged."""
    from tests.support.app import consent_resource
    act_reason = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
    fhir_json = {"Content-Type": "application/fhir+json"}
    bundle = json.loads((SAMPLES / "bundle-transaction.json").read_text())
    with adapter_client(tmp_path) as (client, services):
        def last_event() -> dict[str, Any]:
            event = services.store.list_audit(1)[0]
            record_emitted(event)
            return event

        created = client.post("/fhir/Consent", json=consent_resource(["TREAT"]),
                              headers={**fhir_json, **as_purpose("BTG")})
        assert created.status_code == 201, created.text
        assert _purpose_of_use(last_event()) == [(act_reason, "BTG")]
        updated = client.put(f"/fhir/Consent/{created.json()['id']}", json={**created.json(), "status": "inactive"},
                             headers={**fhir_json, **as_purpose(f"{act_reason}|ETREAT")})
        assert updated.status_code == 200, updated.text
        event = last_event()
        assert event["action"] == "U" and _purpose_of_use(event) == [(act_reason, "ETREAT")]
        photo = post_photo(client, WOUND, metadata(), headers=as_purpose("PATRQT"))
        assert photo.status_code == 201, photo.text
        event = last_event()
        assert photo.json()["record"] in [e["what"].get("reference") for e in event["entity"]]
        assert _purpose_of_use(event) == [(act_reason, "PATRQT")]
        transaction = client.post("/fhir", json=bundle, headers={**fhir_json, **as_purpose("RECORDMGT")})
        assert transaction.status_code == 200, transaction.text
        assert _purpose_of_use(last_event()) == [(act_reason, "RECORDMGT")]
        # none stated: filed for care
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=fhir_json).status_code == 201
        assert _purpose_of_use(last_event()) == [(act_reason, "TREAT")]


def test_a_photo_the_store_fails_to_keep_is_audited_as_a_failed_create(tmp_path: Path) -> None:
    """Found by the audit review: a photo the adapter failed to store (503, StorageError) left no
    AuditEvent, where a C-STORE or STOW-RS object it failed to keep is audited (outcome 8). The
    failure is made real: the photo's content address in the blob folder is taken by a folder,
    so moving the photo there fails. It is audited as a create that failed (outcome 8), naming
    the patient and the request, and nothing else is stored; once the folder is gone, the same
    photo is stored."""
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    with adapter_client(tmp_path / "first") as (client, _):
        stored_sha256 = post_photo(client, WOUND, metadata()).json()["sha256"]["stored"]
    with adapter_client(tmp_path / "second") as (client, services):
        taken = services.settings.data_dir / "blobs" / stored_sha256[:2] / stored_sha256[2:4] / stored_sha256
        taken.mkdir(parents=True)
        r = post_photo(client, WOUND, metadata(), headers={"X-Request-Id": "photo-503", **as_purpose("BTG")})
        assert r.status_code == 503, r.text
        assert r.json()["issue"][0]["code"] == "transient" and PATIENT["value"] not in r.text
        [failure] = services.store.list_audit()
        record_emitted(failure)
        assert (failure["subtype"][0]["code"], failure["action"], failure["outcome"]) == ("create", "C", "8")
        assert failure["outcomeDesc"] == "could not store the image bytes"
        assert _purpose_of_use(failure)[0][1] == "BTG"
        # the patient and the request: no record (none was stored)
        patient, request = failure["entity"]
        assert patient["what"] == {"identifier": PATIENT} and request["type"]["code"] == "XrequestId"
        assert caller_request_ids(failure) == ["photo-503"]
        assert _counts(services) == (0, 0) and _staging_empty(services)
        taken.rmdir()
        assert post_photo(client, WOUND, metadata()).status_code == 201


def test_transactions_take_the_turns_photo_ingests_take(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Security review 3: a transaction Bundle's photo is decoded and proved as an upload's, but
    Bundles took no turn of the ingest's (16 at once reached 2.6 GB). They now share POST /photos'
    turns: with one turn, never two photos ingested at once, whichever way they came."""
    import threading
    import time

    from adapter.api.routes import photos
    from tests.support.fhir_factories import transaction_bundle

    monkeypatch.setattr(photos, "INGEST_THREADS", 1)
    with adapter_client(tmp_path) as (client, services):
        running, most, lock = 0, 0, threading.Lock()
        ingest = services.ingest.ingest_photo

        def counted(*args: Any, **kwargs: Any) -> Any:
            nonlocal running, most
            with lock:
                running += 1
                most = max(most, running)
            try:
                time.sleep(0.2)
                return ingest(*args, **kwargs)
            finally:
                with lock:
                    running -= 1

        monkeypatch.setattr(services.ingest, "ingest_photo", counted)
        picture = WOUND.read_bytes()
        answers: list[int] = []

        def send(n: int) -> None:
            patient = {"system": PATIENT["system"], "value": f"MRN-T{n}"}
            if n % 2:
                r = client.post("/fhir", json=transaction_bundle(picture, patient=patient),
                                headers={"Content-Type": "application/fhir+json"})
            else:
                r = post_photo(client, WOUND, metadata(patient=patient))
            answers.append(r.status_code)

        threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(answers) == [200, 200, 201, 201], answers
        assert most == 1


def test_an_icc_profiles_text_is_rewritten_in_cares_copy_and_listed_in_the_receipt(tmp_path: Path) -> None:
    """Privacy review F3: a JPEG's ICC profile naming "JaneDoe MRN01" in its desc, cprt, dmnd and
    dmdd tags was kept word for word in the stored copy (and so in care's Binary and DICOM
    object, and what is forwarded to a PACS), and the receipt's metadataRemoved did not list it,
    though the README says owner names are removed at ingest (test seen failing). The profile
    stays for the colours, its text rewritten, and the receipt says so."""
    import io

    from PIL import Image

    from tests.unit.test_imaging_icc import NEEDLES, identifying

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (150, 90, 60)).save(buf, "JPEG", quality=90, icc_profile=identifying())
    photo = tmp_path / "icc.jpg"
    photo.write_bytes(buf.getvalue())
    with adapter_client(tmp_path) as (client, services):
        r = post_photo(client, photo, metadata())
        assert r.status_code == 201, r.text
        receipt = r.json()
        assert "ICC profile text" in receipt["metadataRemoved"]
        stored = next((services.settings.data_dir / "blobs").rglob(receipt["sha256"]["stored"])).read_bytes()
        binary = client.get(f"/fhir/{receipt['binary']}", headers=as_purpose("TREAT", Accept="image/jpeg"))
        dicom = client.get(f"/fhir/{receipt['binary']}", headers=as_purpose("TREAT", Accept="application/dicom"))
        assert binary.status_code == dicom.status_code == 200
        for data in (stored, binary.content, dicom.content):
            assert b"ICC_PROFILE" in data
            for needle in NEEDLES:
                assert needle not in data, needle


# -- security review finding 3: a gateway and the adapter read the same upload ------------------

def _smuggling_body(case: str) -> tuple[bytes, str]:
    """The review's ``mpdiff.py`` bodies: a first-wins parser (a gateway, Python's ``email``)
    reads metadata A (MRN-GATEWAY-OK), a last-wins one metadata B (MRN-SMUGGLED)."""
    jpg = (SAMPLES / "tiny.jpg").read_bytes()
    meta_a = json.dumps(metadata(patient={**PATIENT, "value": "MRN-GATEWAY-OK"})).encode()
    meta_b = json.dumps(metadata(patient={**PATIENT, "value": "MRN-SMUGGLED"})).encode()

    def parts(b: bytes, meta: bytes) -> bytes:
        return (b"--" + b + b'\r\nContent-Disposition: form-data; name="metadata"\r\nContent-Type: application/json'
                b"\r\n\r\n" + meta + b"\r\n--" + b + b'\r\nContent-Disposition: form-data; name="file"; '
                b'filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n' + jpg + b"\r\n--" + b + b"--\r\n")

    file_part = (b'\r\n--bbbb\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
                 b"Content-Type: image/jpeg\r\n\r\n" + jpg + b"\r\n--bbbb--\r\n")
    if case == "boundary":
        return parts(b"aaaa", meta_a) + parts(b"bbbb", meta_b), "multipart/form-data; boundary=aaaa; boundary=bbbb"
    if case == "cdhdr":
        return (b'--bbbb\r\nContent-Disposition: form-data; name="metadata"\r\nContent-Disposition: form-data; '
                b'name="x1"\r\n\r\n' + meta_a + b'\r\n--bbbb\r\nContent-Disposition: form-data; name="x2"\r\n'
                b'Content-Disposition: form-data; name="metadata"\r\n\r\n' + meta_b + file_part,
                "multipart/form-data; boundary=bbbb")
    assert case == "nameparam"
    return (b'--bbbb\r\nContent-Disposition: form-data; name="metadata"; name="x1"\r\n\r\n' + meta_a
            + b'\r\n--bbbb\r\nContent-Disposition: form-data; name="x2"; name="metadata"\r\n\r\n' + meta_b
            + file_part, "multipart/form-data; boundary=bbbb")


@pytest.mark.parametrize("case", ["boundary", "cdhdr", "nameparam"])
def test_an_upload_read_differently_by_a_gateway_is_400_and_nothing_stored(tmp_path: Path, case: str) -> None:
    """Security review 3: a repeated ``boundary``, part header line or ``name`` parameter was read
    last here and first by gateways: the gateway approved MRN-GATEWAY-OK, the photo was filed
    under MRN-SMUGGLED (201). Refused now (400), nothing stored."""
    content, ctype = _smuggling_body(case)
    with adapter_client(tmp_path) as (client, services):
        before = _counts(services)
        body = _outcome(client.post("/photos", content=content, headers={"Content-Type": ctype}), 400)
        assert "more than once" in body["issue"][0]["diagnostics"]
        assert _counts(services) == before and _staging_empty(services)


def test_an_upload_with_two_content_type_headers_is_400(tmp_path: Path) -> None:
    content, _ = _smuggling_body("boundary")
    with adapter_client(tmp_path) as (client, services):
        before = _counts(services)
        r = client.post("/photos", content=content, headers=[("Content-Type", "multipart/form-data; boundary=aaaa"),
                                                             ("Content-Type", "multipart/form-data; boundary=bbbb")])
        assert "Content-Type" in _outcome(r, 400)["issue"][0]["diagnostics"]
        assert _counts(services) == before and _staging_empty(services)


def test_an_upload_as_dotnet_writes_it_filename_and_filename_star_is_stored(tmp_path: Path) -> None:
    """.NET's MultipartFormDataContent.Add(content, "file", "wound.jpg") writes the part's
    Content-Disposition ``form-data; name=file; filename=wound.jpg; filename*=utf-8''wound.jpg``
    (unquoted, both names): an integration engine built on it is served (201)."""
    jpg = (SAMPLES / "tiny.jpg").read_bytes()
    meta = json.dumps(metadata()).encode()
    content = (b"--dotnet\r\nContent-Type: application/json; charset=utf-8\r\nContent-Disposition: form-data; "
               b"name=metadata\r\n\r\n" + meta + b"\r\n--dotnet\r\nContent-Type: image/jpeg\r\nContent-Disposition: "
               b"form-data; name=file; filename=wound.jpg; filename*=utf-8''wound.jpg\r\n\r\n" + jpg
               + b"\r\n--dotnet--\r\n")
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/photos", content=content, headers={"Content-Type": 'multipart/form-data; boundary="dotnet"'})
        assert r.status_code == 201, r.text


def _upload_with_metadata(meta: bytes, part_type: str) -> bytes:
    jpg = (SAMPLES / "tiny.jpg").read_bytes()
    return (b"--b\r\nContent-Type: " + part_type.encode() + b"\r\nContent-Disposition: form-data; name=metadata\r\n\r\n"
            + meta + b"\r\n--b\r\nContent-Type: image/jpeg\r\nContent-Disposition: form-data; name=file; "
            b"filename=wound.jpg\r\n\r\n" + jpg + b"\r\n--b--\r\n")


def test_metadata_in_utf_16_or_utf_32_or_declared_so_is_refused_and_nothing_is_stored(tmp_path: Path) -> None:
    """Pentest finding 2: metadata in UTF-16 or UTF-32 (with a charset saying so or none) was
    detected and the photo filed under the patient it named, which a gateway reading the part as
    UTF-8 JSON could not see. It is refused: 415 for a declared charset, 422 for the bytes."""
    meta = json.dumps(metadata())
    with adapter_client(tmp_path) as (client, services):
        for encoding in ("utf-16", "utf-16-le", "utf-32"):
            r = client.post("/photos", content=_upload_with_metadata(meta.encode(encoding), "application/json"),
                            headers={"Content-Type": "multipart/form-data; boundary=b"})
            assert "not UTF-8" in _outcome(r, 422)["issue"][0]["diagnostics"]
        for charset in ("utf-16", "iso-8859-1"):
            r = client.post("/photos", content=_upload_with_metadata(
                meta.encode(), f"application/json; charset={charset}"),
                headers={"Content-Type": "multipart/form-data; boundary=b"})
            assert "UTF-8" in _outcome(r, 415)["issue"][0]["diagnostics"]
        assert _counts(services) == (0, 0) and _staging_empty(services)
        r = client.post("/photos", content=_upload_with_metadata(meta.encode(), "application/json; charset=UTF-8"),
                        headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 201, r.text
