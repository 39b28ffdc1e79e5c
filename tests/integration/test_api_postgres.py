"""The same service on PostgreSQL: ingest, read under purpose, consent lifecycle and search,
through the HTTP app, with the store chosen by ADAPTER_DATABASE_URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import ROOT, require_or_skip
from tests.support.app import PATIENT, adapter_client, as_purpose, consent_resource, metadata, post_photo

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture()
def pg_url() -> Iterator[str]:
    schema = f"test_api_{uuid.uuid4().hex[:12]}"
    try:
        engine = create_engine(PG_URL)
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001
        require_or_skip(False, f"PostgreSQL at {PG_URL} is not reachable: {type(exc).__name__}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with engine.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    engine.dispose()


def test_ingest_and_purpose_checked_reads_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    with adapter_client(tmp_path, database_url=pg_url) as (client, services):
        assert services.settings.resolved_database_url.startswith("postgresql")
        receipt = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        media = receipt["record"]
        assert client.get(f"/fhir/{media}", headers=as_purpose("TREAT")).status_code == 200
        assert client.get(f"/fhir/{media}", headers=as_purpose("TRAIN")).status_code == 403
        consent = client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).json()
        assert client.get(f"/fhir/{media}", headers=as_purpose("TRAIN")).status_code == 200
        consent["status"] = "inactive"
        assert client.put(f"/fhir/Consent/{consent['id']}", json=consent).status_code == 200
        assert client.get(f"/fhir/{media}", headers=as_purpose("TRAIN")).status_code == 403
        ident = f"{PATIENT['system']}|{PATIENT['value']}"
        found = client.get(f"/fhir/Media?patient:identifier={ident}&created=ge2000", headers=as_purpose("TREAT"))
        assert found.json()["total"] == 1
        again = post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        assert again.json() == receipt
        with services.store.engine.connect() as conn:  # type: ignore[attr-defined]
            assert conn.execute(text("SELECT COUNT(*) FROM resources")).scalar_one() == 5
