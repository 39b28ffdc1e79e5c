"""A consent-pending photo whose documenting Consent comes into force later: its held forwarding
is released, and its record's next version written, once the Consent's period starts, by the
forwarder's pass (adapter.services.consent_pending, RecordStore.release_in_force), as the
Consent's write would have done at that moment.

A Consent written with ``provision.period.start`` after the moment it is written documents
nothing then (it is not in force); before, nothing looked again when its period started, and
the photo stayed held, its record "consent pending", for good. The services' clock is the
test's (tests.integration.test_outbox_leases.Clock); the PACS a fake that acknowledges every
object; the forwarders' passes are run by the test (Forwarder.run_once), on SQLite and on
PostgreSQL, by the process that wrote the Consent or by another one on the same database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from adapter.api.app import create_app
from adapter.config import Settings
from adapter.mapping.codes import EXT_CONSENT_PENDING
from adapter.mapping.fhir_r4 import fhir_instant
from adapter.services.forwarding import Forwarder
from adapter.services.registry import Services, build_services
from tests.conftest import ROOT
from tests.integration.test_forwarding_consent_pending import (
    BTG,
    FHIR_JSON,
    PENDING,
    TREAT,
    patient,
    pending_photo,
)
from tests.integration.test_outbox_leases import PACS, Clock, Sender, forwarder
from tests.support.app import (
    TEST_HOST,
    FhirClient,
    consent_resource,
    write_policy,
)
from tests.support.audit import patients
from tests.support.postgres import data_folder_or_postgres

HOUR = timedelta(hours=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    yield from data_folder_or_postgres(request.param, "consent_start")


@contextmanager
def adapter(tmp_path: Path, database_url: str | None, clock: Clock) -> Iterator[tuple[Any, Services]]:
    """The HTTP app of a ``serve`` process whose clock is ``clock``, forwarding to PACS (its
    forwarder not started: the test runs its passes)."""
    settings = Settings(data_dir=tmp_path / "data", policy=write_policy(tmp_path, **PENDING),
                        mappings_dir=ROOT / "mappings", database_url=database_url, forward_to=PACS,
                        allowed_hosts=TEST_HOST)
    services = build_services(settings, now=clock)
    with FhirClient(create_app(services), raise_server_exceptions=False) as client:
        yield client, services


@contextmanager
def another_process(services: Services, clock: Clock) -> Iterator[Services]:
    """The services of a second ``serve`` process on the same data folder and database."""
    other = build_services(services.settings, now=clock)
    try:
        yield other
    finally:
        other.close()


def consent_from(client: Any, n: int, start: datetime, end: datetime | None = None) -> str:
    """POST /fhir/Consent: patient MRN-<n> permits TREAT from ``start`` (until ``end``)."""
    consent = consent_resource(["TREAT"], patient=patient(n), start=fhir_instant(start),
                               end=fhir_instant(end) if end is not None else None)
    r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return f"Consent/{r.json()['id']}"


def update_consent(client: Any, consent: str, change: Any) -> None:
    """PUT the Consent with ``change`` applied to it (as read for care)."""
    resource = client.get(f"/fhir/{consent}", headers=TREAT).json()
    resource.pop("meta", None)
    change(resource)
    r = client.put(f"/fhir/{consent}", json=resource, headers=FHIR_JSON)
    assert r.status_code == 200, r.text


def item_of(services: Services, receipt: dict[str, Any]) -> Any:
    [item] = [i for i in services.store.list_outbox(limit=1000)
              if i.sop_instance_uid == receipt["dicom"]["sopInstanceUid"]]
    return item


def record_of(client: Any, receipt: dict[str, Any]) -> dict[str, Any]:
    """The record as break-glass reads it (whatever care may)."""
    r = client.get(f"/fhir/{receipt['record']}", headers=BTG)
    assert r.status_code == 200, r.text
    record: dict[str, Any] = r.json()
    return record


def says_pending(record: dict[str, Any]) -> bool:
    return any(x["url"] == EXT_CONSENT_PENDING for x in record.get("extension", []))


def held(f: Forwarder, services: Services, receipt: dict[str, Any], clock: Clock) -> None:
    """A pass holds the photo's item (its first attempt: refused for want of consent for care).
    The clock first catches up with the real time the photo was posted at (its item is due then;
    on a loaded machine posting took longer than the clock had run: seen failing in CI)."""
    clock.catch_up()
    f.run_once()
    assert item_of(services, receipt).status == "held"


def documented_updates(services: Services, record: str) -> list[dict[str, Any]]:
    """The AuditEvents of the record's version that says consent for care is documented."""
    return [e for e in services.store.list_audit(200)
            if e["action"] == "U" and f"{record}/_history/2" in str(e.get("entity"))]


def test_a_consent_whose_period_starts_later_releases_the_held_photo_once_it_starts(
        tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The defect: a Consent permitting TREAT whose period starts an hour after it is written
    released nothing when written (not in force), and nothing looked again once its period
    started: the item stayed held and the record "consent pending" for good. Now the first pass
    of a forwarder after the start (another process's: what it needs is in the database) releases
    the item, which goes in that same pass, and writes the record's version 2 as the Consent's
    write would have, audited as an update of the record. Before the start, a pass does not so
    much as read the patient's Consents (cheap when nothing is due). Seen failing: the item was
    still held after the start, the record at version 1."""
    clock = Clock()
    sender = Sender()
    with adapter(tmp_path, database_url, clock) as (client, services), another_process(services, clock) as other:
        receipt = pending_photo(client, tmp_path, 80)
        record = receipt["record"]
        f = forwarder(other, sender, clock)
        held(f, services, receipt, clock)

        consent = consent_from(client, 80, clock() + HOUR)
        assert item_of(services, receipt).status == "held"
        assert client.get(f"/fhir/{record}", headers=TREAT).status_code == 403

        read: list[Any] = []
        consents_for_patient = other.store.consents_for_patient
        monkeypatch.setattr(other.store, "consents_for_patient",
                            lambda *a, **k: read.append(a) or consents_for_patient(*a, **k))
        clock.advance(HOUR - timedelta(seconds=5))
        f.run_once()
        assert (item_of(services, receipt).status, sender.sent, read) == ("held", [], [])
        assert record_of(client, receipt)["meta"]["versionId"] == "1"

        clock.advance(timedelta(seconds=6))  # the Consent's period has started
        f.run_once()
        assert sender.sent == [receipt["dicom"]["sopInstanceUid"]]
        item = item_of(services, receipt)
        assert (item.status, item.attempts, item.last_error) == ("sent", 1, None), item

        media = client.get(f"/fhir/{record}", headers=TREAT).json()
        assert media["meta"]["versionId"] == "2" and not says_pending(media)
        texts = [n["text"] for n in media["note"]]
        assert not any(t.startswith("consent pending") for t in texts), texts
        [documented] = [t for t in texts if f"{consent}/_history/1" in t]
        assert documented.startswith("consent for care documented after the photo was stored"), documented
        assert says_pending(client.get(f"/fhir/{record}/_history/1", headers=TREAT).json())
        [update] = documented_updates(services, record)
        assert (update["outcome"], update["subtype"][0]["code"]) == ("0", "update")
        assert consent in update["outcomeDesc"] and "period" in update["outcomeDesc"], update["outcomeDesc"]
        assert patients(update) == [patient(80)]

        f.run_once()  # nothing more: released once, versioned once
        assert len(sender.sent) == 1 and len(documented_updates(services, record)) == 1


def test_a_withdrawal_or_a_later_start_written_before_the_start_keeps_the_photo_held(
        tmp_path: Path, database_url: str | None) -> None:
    """What is decided once the period starts is the patient's Consents as they are then: a
    Consent withdrawn before its start releases nothing at it, and one whose start was moved
    later (written again) nothing before the new start, then the photo goes."""
    clock = Clock()
    sender = Sender()
    with adapter(tmp_path, database_url, clock) as (client, services):
        withdrawn, moved = pending_photo(client, tmp_path, 81), pending_photo(client, tmp_path, 82)
        f = forwarder(services, sender, clock)
        clock.catch_up()  # the photos are due (as in held())
        f.run_once()
        assert [item_of(services, r).status for r in (withdrawn, moved)] == ["held", "held"]
        start = clock() + HOUR
        first = consent_from(client, 81, start)
        second = consent_from(client, 82, start)
        update_consent(client, first, lambda c: c.update(status="inactive"))
        later = start + 2 * HOUR
        update_consent(client, second, lambda c: c["provision"]["period"].update(start=fhir_instant(later)))

        clock.advance(HOUR + timedelta(seconds=1))
        f.run_once()
        assert [item_of(services, r).status for r in (withdrawn, moved)] == ["held", "held"]
        assert sender.sent == []
        assert [record_of(client, r)["meta"]["versionId"] for r in (withdrawn, moved)] == ["1", "1"]

        # the withdrawn Consent's item is never looked at again by the clock; the moved one's at its new start
        far = [i for i, _ in services.store.holds_due(clock() + 1000 * HOUR, 10)]
        assert far == [item_of(services, moved).id]
        assert services.store.holds_due(clock(), 10) == []

        clock.advance(2 * HOUR)
        f.run_once()
        assert sender.sent == [moved["dicom"]["sopInstanceUid"]]
        assert [item_of(services, r).status for r in (withdrawn, moved)] == ["held", "sent"]
        assert [record_of(client, r)["meta"]["versionId"] for r in (withdrawn, moved)] == ["1", "2"]
        assert f"{second}/_history/2" in str(record_of(client, moved)["note"])


def test_a_photo_posted_while_the_consent_on_file_starts_later_is_pending_and_goes_once_it_starts(
        tmp_path: Path, database_url: str | None) -> None:
    """A Consent permitting TREAT from tomorrow is on file when the photo is posted: not in force,
    it documents nothing, so the photo is kept consent pending (as any photo without documented
    consent for care) and its item held. No Consent is written afterwards: its hold knows when
    to look again, and once the period starts the photo goes and its record is versioned. Seen
    failing: held for good."""
    clock = Clock()
    sender = Sender()
    with adapter(tmp_path, database_url, clock) as (client, services):
        consent = consent_from(client, 83, clock() + 24 * HOUR)
        receipt = pending_photo(client, tmp_path, 83)
        f = forwarder(services, sender, clock)
        held(f, services, receipt, clock)
        clock.advance(23 * HOUR)
        f.run_once()
        assert item_of(services, receipt).status == "held" and sender.sent == []

        clock.advance(HOUR + timedelta(seconds=1))
        f.run_once()
        assert sender.sent == [receipt["dicom"]["sopInstanceUid"]]
        media = client.get(f"/fhir/{receipt['record']}", headers=TREAT).json()
        assert media["meta"]["versionId"] == "2" and not says_pending(media)
        assert f"{consent}/_history/1" in str(media["note"])


def test_a_consent_withdrawn_while_a_pass_looks_at_its_start_is_not_taken_as_documenting_care(
        tmp_path: Path, database_url: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass decides on the patient's Consents as it read them, then writes: a withdrawal
    written in between would otherwise see the photo released and its record say consent for
    care is documented by a Consent withdrawn before it came into force. The write is made only
    while the patient's Consents are those the decision read; otherwise nothing is written and
    the next pass decides again (held, not looked at again by the clock). Seen failing without
    that condition: the item released, the record at version 2."""
    clock = Clock()
    sender = Sender()
    with adapter(tmp_path, database_url, clock) as (client, services):
        receipt = pending_photo(client, tmp_path, 84)
        f = forwarder(services, sender, clock)
        held(f, services, receipt, clock)
        consent = consent_from(client, 84, clock() + HOUR)
        release = services.store.release_in_force
        withdrawn: list[str] = []

        def withdrawal_first(*args: Any, **kwargs: Any) -> int | None:
            if not withdrawn:
                update_consent(client, consent, lambda c: c.update(status="inactive"))
                withdrawn.append(consent)
            return release(*args, **kwargs)

        monkeypatch.setattr(services.store, "release_in_force", withdrawal_first)
        clock.advance(HOUR + timedelta(seconds=1))
        f.run_once()
        assert withdrawn and item_of(services, receipt).status == "held"
        assert record_of(client, receipt)["meta"]["versionId"] == "1"
        assert [i for i, _ in services.store.holds_due(clock(), 10)] == [item_of(services, receipt).id]
        f.run_once()
        assert (item_of(services, receipt).status, sender.sent) == ("held", [])
        assert services.store.holds_due(clock() + 1000 * HOUR, 10) == []
        assert record_of(client, receipt)["meta"]["versionId"] == "1"
        assert documented_updates(services, receipt["record"]) == []
