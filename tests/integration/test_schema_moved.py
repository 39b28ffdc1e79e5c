"""A rolling upgrade on a shared database: another version of the adapter upgrades the schema
while this one runs (ops review 1). This instance must then fail readiness and answer its
requests 503 ``transient`` (send again: another instance), not 409 (a client's conflict, which an
integration engine does not retry), while a real conflict at its own schema stays a conflict."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from adapter.services.registry import Services
from adapter.store.schema import SCHEMA_VERSION
from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, as_purpose, metadata, post_photo
from tests.support.postgres import data_folder_or_postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    yield from data_folder_or_postgres(request.param, "test_schema_moved")


def _upgrade_under_it(services: Services, version: int = SCHEMA_VERSION + 1) -> None:
    """What the next version's start does to the shared database: a newer schema version row."""
    with services.store.engine.begin() as conn:  # type: ignore[attr-defined]
        sqlite = conn.dialect.name == "sqlite"
        conn.execute(text("INSERT INTO schema_version (version, applied) VALUES (:v, :t)"),
                     {"v": version, "t": "2030-01-01T00:00:00.000000+00:00" if sqlite else datetime(2030, 1, 1, tzinfo=UTC)})


def _count(services: Services, table: str) -> int:
    with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _other_patient() -> dict[str, str]:
    return {"system": PATIENT["system"], "value": "MRN-0002"}


def test_a_schema_upgraded_under_the_running_adapter_fails_readiness_and_requests_as_transient(
        tmp_path: Path, database_url: str | None) -> None:
    with adapter_client(tmp_path, database_url=database_url, dicom_enabled=False) as (client, services):
        stored = post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        assert stored.status_code == 201, stored.text
        assert client.get("/health/ready").status_code == 200
        _upgrade_under_it(services)
        ready = client.get("/health/ready")
        assert ready.status_code == 503, ready.text
        check = ready.json()["checks"]["database:responseTime"][0]
        assert check["status"] == "fail"
        assert str(SCHEMA_VERSION + 1) in check["output"] and str(SCHEMA_VERSION) in check["output"]
        assert "postgres@" not in ready.text and "password" not in ready.text
        resources, audit = _count(services, "resources"), _count(services, "audit")
        # a write: 503 transient, nothing stored
        refused = post_photo(client, ROOT / "samples" / "lesion.png", metadata(patient=_other_patient()))
        assert refused.status_code == 503, refused.text
        assert refused.json()["issue"][0]["code"] == "transient"
        assert "schema" in refused.json()["issue"][0]["diagnostics"]
        # a read is audited, so it cannot be served unaudited either: 503, not an answer or a 409
        read = client.get(f"/fhir/{stored.json()['record']}", headers=as_purpose("TREAT"))
        assert read.status_code == 503, read.text
        assert read.json()["issue"][0]["code"] == "transient"
        assert (_count(services, "resources"), _count(services, "audit")) == (resources, audit)


def test_a_unique_violation_under_a_newer_schema_is_transient_and_at_its_own_a_conflict(
        tmp_path: Path, database_url: str | None) -> None:
    """The review's 409: the old release's insert clashed with what the new one had written (its
    audit numbers). Stood for here by a unique index the newer schema brought: at this adapter's
    own schema the clash is a conflict (409), under the newer schema it is the upgrade's (503)."""
    with adapter_client(tmp_path, database_url=database_url, dicom_enabled=False) as (client, services):
        assert post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).status_code == 201
        with services.store.engine.begin() as conn:  # type: ignore[attr-defined]
            # one Media per patient system now: the next photo's Media clashes
            conn.execute(text("CREATE UNIQUE INDEX ix_newer_media ON resources (resource_type, patient_system)"))
        resources = _count(services, "resources")
        clash = post_photo(client, ROOT / "samples" / "lesion.png", metadata(patient=_other_patient()))
        assert clash.status_code == 409, clash.text
        _upgrade_under_it(services)
        moved = post_photo(client, ROOT / "samples" / "lesion.png", metadata(patient=_other_patient()))
        assert moved.status_code == 503, moved.text
        assert moved.json()["issue"][0]["code"] == "transient"
        assert _count(services, "resources") == resources
