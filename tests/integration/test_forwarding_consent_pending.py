"""A consent-pending photo's forwarding, and its record, once consent for care is documented
(clinical safety review, findings 4 and 5).

A clinical photo kept without documented consent for care (policy ``allowPending``) has its
outbox item held, not failed: the forwarder decides it for TREAT as every item, holds it
(status ``held``, audited once), and does not decide it again at each poll. A Consent that
documents care for the patient's pending photo releases the item in its own transaction, also
while no forwarder runs, and writes the record's next version: it no longer says it is pending,
but when and by which Consent its consent for care was documented. The PACS is dcmtk's
storescp (tests.support.dcmtk).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
import pytest

from adapter.dicom.scu import StoreSCU
from adapter.mapping.codes import EXT_CONSENT_METHOD, EXT_CONSENT_PENDING
from adapter.services.dicom_objects import dicom_object_for
from adapter.services.registry import Services
from tests.conftest import record_emitted, require_or_skip
from tests.integration.test_forwarding import (
    FAST,
    all_sent,
    forward_events,
    meta_for,
    outbox,
    photo_jpeg,
    wait_for,
    withdraw,
)
from tests.support.app import (
    PATIENT,
    adapter_client,
    as_purpose,
    consent_resource,
    mark_entered_in_error,
    post_photo,
)
from tests.support.audit import patients
from tests.support.dcmtk import StoreSCP, dcmtk_missing
from tests.support.postgres import postgres_schema

TREAT = as_purpose("TREAT")
BTG = as_purpose("BTG")
FHIR_JSON = {"Content-Type": "application/fhir+json"}
#: Clinical photos without consent are kept, flagged, readable only under break-glass.
PENDING = {"consent": {"allowPending": True}}


def require_dcmtk() -> None:
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")


@contextmanager
def database(kind: str) -> Iterator[str | None]:
    """The database URL of ``kind``: None (SQLite in the data folder) or a PostgreSQL schema."""
    if kind == "sqlite":
        yield None
        return
    with postgres_schema("pending") as url:
        yield url


def patient(n: int) -> dict[str, str]:
    return {"system": PATIENT["system"], "value": f"MRN-{n:04d}"}


def pending_photo(client: Any, folder: Path, n: int) -> dict[str, Any]:
    """POST /photos: a clinical photo of patient MRN-<n> without consent (kept consent pending)."""
    r = post_photo(client, photo_jpeg(folder, n, size=(320, 240)), meta_for(n, consent=None))
    assert r.status_code == 201, r.text
    receipt: dict[str, Any] = r.json()
    assert receipt["consentPending"] is True
    return receipt


def record_consent(client: Any, n: int, *, method: str | None = None) -> str:
    """POST /fhir/Consent: patient MRN-<n> permits TREAT (with ``method``, its consent-method)."""
    consent = consent_resource(["TREAT"], patient=patient(n))
    if method is not None:
        consent["extension"] = [{"url": EXT_CONSENT_METHOD, "valueCode": method}]
    r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return f"Consent/{r.json()['id']}"


def statuses(client: Any) -> list[str]:
    return [i["status"] for i in outbox(client)]


def pending_extension(record: dict[str, Any]) -> list[dict[str, Any]]:
    return [x for x in record.get("extension", []) if x["url"] == EXT_CONSENT_PENDING]


def dicom_object(services: Services, receipt: dict[str, Any]) -> Any:
    """The record's DICOM object as the forwarder and WADO-RS make it, from the record stored now."""
    instance = services.store.find_dicom_instance(receipt["dicom"]["sopInstanceUid"])
    assert instance is not None
    stored = services.store.get(instance.record_type, instance.record_id)
    assert stored is not None
    return dicom_object_for(instance, stored, services.blobs, services.tables, services.dicom_ingest.dicom_tables)


def assert_held_once(client: Any, services: Services) -> None:
    """The item is held, its one attempt audited once (a refusal, outcome 4), and ten polls later
    it is neither decided nor audited again."""
    wait_for(lambda: statuses(client) == ["held"], what="the item to be held")
    time.sleep(0.5)  # ten polls
    [item] = outbox(client)
    assert (item["status"], item["attempts"], item["nextAttemptAt"]) == ("held", 1, None), item
    assert "consent for care" in item["lastError"], item
    [hold] = forward_events(services)
    assert (hold["action"], hold["outcome"]) == ("R", "4"), hold
    assert "until consent for care is documented" in hold["outcomeDesc"], hold


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_consent_pending_photo_is_held_then_forwarded_once_a_consent_documents_care(
        tmp_path: Path, kind: str) -> None:
    """Clinical safety review 4 and 5: a consent-pending photo's outbox item failed at once ("the
    consent decision for treatment does not permit it"), and after a Consent permitting TREAT was
    recorded the photo was readable for care but never reached the PACS; its record still said
    "consent pending: readable only under break-glass", with the consent-pending extension. Now
    the item is held (audited once, not decided at every poll), the Consent releases it and it
    is sent, decided for TREAT as every item; the record's version 2 says when and by which
    Consent consent for care was documented, its history keeps version 1, and its DICOM object
    stays the same object. Seen failing:
    the item was failed, the record unchanged."""
    require_dcmtk()
    with database(kind) as url, StoreSCP(tmp_path / "received", aet="PACS") as pacs, \
            adapter_client(tmp_path, database_url=url, policy=PENDING,
                           forward_to=f"PACS@127.0.0.1:{pacs.port}") as (client, services):
        services.start_forwarding(StoreSCU(), FAST)
        receipt = pending_photo(client, tmp_path, 70)
        record = receipt["record"]
        assert_held_once(client, services)
        assert pacs.files() == []
        assert client.get(f"/fhir/{record}", headers=TREAT).status_code == 403
        before = dicom_object(services, receipt)

        consent = record_consent(client, 70)
        wait_for(all_sent(client, 1), what="the held item to be forwarded")
        [path] = pacs.files()
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == receipt["dicom"]["sopInstanceUid"]
        hold, disclosure = forward_events(services)
        assert (disclosure["action"], disclosure["outcome"]) == ("R", "0")
        [item] = outbox(client)
        assert (item["status"], item["attempts"], item["lastError"]) == ("sent", 1, None), item

        read = client.get(f"/fhir/{record}", headers=TREAT)
        assert read.status_code == 200 and read.headers["etag"].startswith('W/"2.')  # the version, and its labels
        media = read.json()
        assert media["meta"]["versionId"] == "2" and pending_extension(media) == []
        texts = [n["text"] for n in media["note"]]
        assert not any(t.startswith("consent pending") for t in texts), texts
        [documented] = [t for t in texts if f"{consent}/_history/1" in t]
        assert documented.startswith("consent for care documented after the photo was stored"), documented
        assert "TREAT" in [c["code"] for c in media["meta"]["security"]]
        first = client.get(f"/fhir/{record}/_history/1", headers=TREAT).json()
        assert pending_extension(first) == [{"url": EXT_CONSENT_PENDING, "valueBoolean": True}]
        assert any(n["text"].startswith("consent pending") for n in first["note"])
        # the DICOM object, made from the record, is the same object: no note nor flag is in it
        after = dicom_object(services, receipt)
        assert after == before and after.file_meta == before.file_meta
        # the new version is audited: an update of the record, naming it and its patient
        [update] = [e for e in services.store.list_audit(50)
                    if e["action"] == "U" and f"{record}/_history/2" in str(e.get("entity"))]
        assert (update["action"], update["outcome"], update["subtype"][0]["code"]) == ("U", "0", "update")
        assert consent in update["outcomeDesc"]
        assert patients(update) == [patient(70)]
        record_emitted([hold, disclosure, update, media])


def test_a_consent_recorded_while_no_forwarder_runs_releases_the_item_and_a_verbal_one_under_written_required_does_not(
        tmp_path: Path) -> None:
    """The release is the Consent write's, in its transaction, not the forwarder's: recorded while
    no forwarder runs, it leaves the item pending and due, and a forwarder started later sends
    it. Under ``writtenRequired`` a verbal Consent does not document care (as at ingest): the
    item stays held and the record pending."""
    require_dcmtk()
    policy = {"consent": {"allowPending": True, "writtenRequired": True}}
    with StoreSCP(tmp_path / "received", aet="PACS") as pacs, \
            adapter_client(tmp_path, policy=policy, forward_to=f"PACS@127.0.0.1:{pacs.port}") as (client, services):
        services.start_forwarding(StoreSCU(), FAST)
        receipt = pending_photo(client, tmp_path, 71)
        assert_held_once(client, services)

        record_consent(client, 71, method="verbal")
        time.sleep(0.5)
        assert statuses(client) == ["held"] and len(forward_events(services)) == 1
        media = client.get(f"/fhir/{receipt['record']}", headers=BTG).json()
        assert media["meta"]["versionId"] == "1" and pending_extension(media) != []

        services.stop_forwarding()
        consent = record_consent(client, 71, method="written")
        [item] = outbox(client)
        assert (item["status"], item["attempts"], item["lastError"]) == ("pending", 0, None), item
        time.sleep(0.3)
        assert pacs.files() == []
        services.start_forwarding(StoreSCU(), FAST)
        wait_for(all_sent(client, 1), what="the released item to be forwarded")
        [path] = pacs.files()
        assert pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID == receipt["dicom"]["sopInstanceUid"]
        media = client.get(f"/fhir/{receipt['record']}", headers=TREAT).json()
        assert media["meta"]["versionId"] == "2" and pending_extension(media) == []
        assert any(f"{consent}/_history/1" in n["text"] for n in media["note"])


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_consent_recorded_between_the_forwarders_decision_and_its_hold_does_not_leave_the_item_held(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """The forwarder decides, then records the hold: a Consent written in between found the item
    pending (not held: nothing to release) and the hold, recorded after it, would keep the item
    held for good. The hold is recorded only while the patient's Consents are those the decision
    read; otherwise the item is retried, decided again, and sent. Seen failing with the hold
    recorded whatever the Consents (the item held for good)."""
    require_dcmtk()
    with database(kind) as url, StoreSCP(tmp_path / "received", aet="PACS") as pacs, \
            adapter_client(tmp_path, database_url=url, policy=PENDING,
                           forward_to=f"PACS@127.0.0.1:{pacs.port}") as (client, services):
        receipt = pending_photo(client, tmp_path, 72)
        hold = services.store.hold_outbox
        recorded: list[str] = []

        def consent_first(*args: Any, **kwargs: Any) -> bool:
            if not recorded:
                recorded.append(record_consent(client, 72))
            return hold(*args, **kwargs)

        monkeypatch.setattr(services.store, "hold_outbox", consent_first)
        services.start_forwarding(StoreSCU(), FAST)
        wait_for(all_sent(client, 1), what="the item to be forwarded")
        assert recorded and len(pacs.files()) == 1
        refused, disclosure = forward_events(services)
        assert (refused["outcome"], disclosure["outcome"]) == ("4", "0")
        assert client.get(f"/fhir/{receipt['record']}", headers=TREAT).json()["meta"]["versionId"] == "2"


def test_a_record_documented_later_keeps_its_note_after_a_withdrawal_and_its_item_is_held_again(
        tmp_path: Path) -> None:
    """A withdrawal afterwards: the decision refuses the record for care again (the note is
    information: it says when consent for care was documented, by which version of which
    Consent, and claims no consent in force); no new version is written. An item not sent yet is
    held again, not failed (the photo again awaits consent for care), and goes once a Consent
    documents care anew."""
    require_dcmtk()
    with StoreSCP(tmp_path / "received", aet="PACS") as pacs, \
            adapter_client(tmp_path, policy=PENDING, forward_to=f"PACS@127.0.0.1:{pacs.port}") as (client, services):
        services.start_forwarding(StoreSCU(), FAST)
        receipt = pending_photo(client, tmp_path, 73)
        record = receipt["record"]
        assert_held_once(client, services)
        services.stop_forwarding()
        consent = record_consent(client, 73)
        assert statuses(client) == ["pending"]
        withdraw(client, consent)
        services.start_forwarding(StoreSCU(), FAST)
        wait_for(lambda: statuses(client) == ["held"], what="the item to be held again")
        assert [e["outcome"] for e in forward_events(services)] == ["4", "4"]
        assert pacs.files() == []
        assert client.get(f"/fhir/{record}", headers=TREAT).status_code == 403
        media = client.get(f"/fhir/{record}", headers=BTG).json()
        assert media["meta"]["versionId"] == "2" and pending_extension(media) == []
        assert any(f"{consent}/_history/1" in n["text"] for n in media["note"])
        assert "TREAT" not in [c["code"] for c in media["meta"]["security"]]

        again = record_consent(client, 73)
        wait_for(all_sent(client, 1), what="the item to be forwarded")
        assert len(pacs.files()) == 1
        media = client.get(f"/fhir/{record}", headers=TREAT).json()
        assert media["meta"]["versionId"] == "2" and again not in str(media["note"])


def test_a_held_item_is_cancelled_when_its_record_is_marked_entered_in_error(tmp_path: Path) -> None:
    """A record marked entered-in-error cancels its items not sent: a held one too (seen failing:
    it stayed held). A Consent written afterwards neither releases it nor versions the record."""
    with adapter_client(tmp_path, policy=PENDING, forward_to="PACS@127.0.0.1:1") as (client, services):
        services.start_forwarding(StoreSCU(), FAST)
        receipt = pending_photo(client, tmp_path, 74)
        wait_for(lambda: statuses(client) == ["held"], what="the item to be held")
        r = mark_entered_in_error(client, receipt["record"])
        assert r.status_code == 200, r.text
        assert statuses(client) == ["cancelled"]
        record_consent(client, 74)
        time.sleep(0.3)
        assert statuses(client) == ["cancelled"]
        # nor is a record entered in error given a version saying its consent was documented
        media = client.get(f"/fhir/{receipt['record']}", headers=TREAT).json()
        assert (media["meta"]["versionId"], media["status"]) == ("2", "entered-in-error")
        assert pending_extension(media) != []
