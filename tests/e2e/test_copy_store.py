"""End to end: ``python -m adapter copy-store --to <URL>`` as its own process moves a SQLite store
(photos, a DICOM object received by the SCP, a Consent, reads: records, history, indexes, the
audit trail and its hash chain, receipts, key fingerprints) into an empty PostgreSQL database,
row for row; the data folder then serves the PostgreSQL store: it starts on it, verify --digests
finds no problem, new photos are stored after the copied ones. A target that is not empty is
refused and left as it was (operations review 1: there was no way to move a store at all)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adapter.dicom import AeOptions, StoreSCP
from adapter.dicom.status import SUCCESS
from adapter.store.schema import SCHEMA_VERSION
from adapter.store.schema import metadata as tables
from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, consent_resource, metadata, post_photo
from tests.support.dicom_files import pynet_store, sc_file
from tests.support.orthanc import free_port
from tests.support.postgres import postgres_schema, table_names


def _adapter(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    clean.update(ADAPTER_DATA_DIR=str(tmp_path / "data"), ADAPTER_POLICY=str(tmp_path / "policy.yaml"),
                 ADAPTER_MAPPINGS_DIR=str(ROOT / "mappings"), **(env or {}))
    return subprocess.run([sys.executable, "-m", "adapter", *args], cwd=ROOT, env=clean, capture_output=True,
                          text=True, timeout=180, check=False)


def _rows(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the record store, in primary key order."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                    for t in tables.sorted_tables}
    finally:
        engine.dispose()


@pytest.mark.usefixtures("pynetdicom_config")
def test_a_sqlite_store_copied_to_postgresql_serves_from_the_same_data_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    pacs = f"PACS@127.0.0.1:{free_port()}"  # down: the photos' forwards stay in the outbox
    with adapter_client(tmp_path, forward_to=pacs) as (client, services):
        wound = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        post_photo(client, ROOT / "samples" / "lesion.png", metadata(), content_type="image/png")
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"]),
                           headers={"X-Purpose-Of-Use": "TREAT"}).status_code == 201
        assert client.get(f"/fhir/{wound['record']}", headers={"X-Purpose-Of-Use": "TREAT"}).status_code == 200
        scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",)), services.dicom_ingest)
        scp.start()
        try:
            sc_file(tmp_path / "sc.dcm")
            assert pynet_store(scp.port, tmp_path / "sc.dcm", chunked=True).Status == SUCCESS
        finally:
            scp.stop()
        services.close()
    source = f"sqlite:///{data / 'adapter.db'}"
    before = _rows(source)
    assert len(before["audit"]) >= 5 and before["dicom_instances"] and before["tokens"] and before["receipts"]
    assert before["outbox"] and before["dicom_released_uids"] and before["patient_pseudonyms"]

    with postgres_schema("copy_store") as url:
        done = _adapter(tmp_path, "copy-store", "--to", url)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"{len(before['audit'])} audit" in done.stdout and "copied" in done.stdout
        assert PATIENT["value"] not in done.stdout + done.stderr
        assert _rows(url) == before  # row for row, the audit trail's sequence numbers and MACs with it
        assert _rows(source) == before  # the source is only read

        verified = _adapter(tmp_path, "verify", "--digests", env={"ADAPTER_DATABASE_URL": url})
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "0 problem(s); 0 image(s) no record refers to" in verified.stdout
        assert f"events 1..{len(before['audit'])} chained" in verified.stdout

        # serve's start on the target with the same folder, then writes after the copied rows
        with adapter_client(tmp_path, database_url=url, forward_to=pacs) as (client, services):
            read = client.get(f"/fhir/{wound['record']}", headers={"X-Purpose-Of-Use": "TREAT"})
            assert read.status_code == 200, read.text
            again = post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
            assert again.status_code in (200, 201) and again.json()["record"] == wound["record"]  # its receipt
            other = post_photo(client, ROOT / "samples" / "wound.jpg",
                               metadata(patient={"system": PATIENT["system"], "value": "MRN-0002"}))
            assert other.status_code == 201, other.text
            assert len(services.store.list_outbox()) == len(before["outbox"]) + 1  # numbered after the copied
            chain = services.store.check_audit_chain()
            assert chain.first_broken is None and chain.last > len(before["audit"])
            services.close()

        # a target holding a store already: refused, left as it was
        now = _rows(url)
        refused = _adapter(tmp_path, "copy-store", "--to", url)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "not empty" in refused.stderr
        assert _rows(url) == now

        # the SQLite store moved out of the folder once the copy is verified: the removal runs again
        kept = tmp_path / "kept"
        kept.mkdir()
        for name in ("adapter.db", "adapter.db-wal", "adapter.db-shm"):
            if (data / name).exists():
                shutil.move(data / name, kept / name)
        removal = _adapter(tmp_path, "verify", "--remove-unreferenced", env={"ADAPTER_DATABASE_URL": url})
        assert removal.returncode == 0, removal.stdout + removal.stderr
        assert "removed 0 image(s)" in removal.stdout


def test_copy_store_refuses_a_folder_that_is_not_the_databases(tmp_path: Path) -> None:
    """The images come with the records only when the folder is the source's: a copy from a database
    whose folder is another (store.id differs) would give the target records without images."""
    with adapter_client(tmp_path, database_url=f"sqlite:///{tmp_path / 'records.db'}") as (client, services):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        services.close()
    (tmp_path / "data" / "store.id").write_text("0" * 32 + "\n")
    with postgres_schema("copy_store_folder") as url:
        done = _adapter(tmp_path, "copy-store", "--to", url,
                        env={"ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path / 'records.db'}"})
        assert done.returncode == 2, done.stdout + done.stderr
        assert "store.id" in done.stderr
        assert table_names(url) == []


def _sqlite_source_with_a_photo(tmp_path: Path) -> sa.Engine:
    """A SQLite store in the data folder holding one photo, the policy beside it (as the copy's
    commands read it), and an engine on its file for the test to change what a release left."""
    with adapter_client(tmp_path) as (client, services):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        services.close()
    (tmp_path / "policy.yaml").write_text((ROOT / "mappings" / "policy.yaml").read_text())
    return sa.create_engine(f"sqlite:///{tmp_path / 'data' / 'adapter.db'}")


def test_copy_store_refuses_a_source_of_an_older_schema_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    """Review of the day's merges: the copy opened its source as serve does, which upgraded a store
    of an older schema version before refusing it, so the SQLite file the operator kept as the way
    back no longer was one for the version that wrote it. It is refused now before anything is
    written: its schema version and tables stay, and the target gets nothing."""
    engine = _sqlite_source_with_a_photo(tmp_path)
    try:
        with engine.begin() as conn:  # the store as schema 20 left it: its audit chain's start not sealed
            conn.exec_driver_sql("DELETE FROM key_fingerprints WHERE name = 'audit-start-mac'")
            conn.exec_driver_sql(f"UPDATE schema_version SET version = 20 WHERE version = {SCHEMA_VERSION}")
        with postgres_schema("copy_store_older") as url:
            done = _adapter(tmp_path, "copy-store", "--to", url)
            assert done.returncode == 2, done.stdout + done.stderr
            assert "schema version 20" in done.stderr and "nothing was changed" in done.stderr, done.stderr
            assert table_names(url) == []
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT max(version) FROM schema_version").scalar() == 20
            assert conn.exec_driver_sql("SELECT count(*) FROM key_fingerprints WHERE name = 'audit-start-mac'"
                                        ).scalar() == 0
    finally:
        engine.dispose()


def test_copy_store_says_a_source_of_a_newer_schema_is_newer(tmp_path: Path) -> None:
    """Verify review 2, finding 7: a store a newer version upgraded was answered "start this version
    of the adapter on it once (it upgrades it)", which serve refuses: the newer version copies it."""
    engine = _sqlite_source_with_a_photo(tmp_path)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO schema_version (version, applied) VALUES ({SCHEMA_VERSION + 1}, "
                                 "'2030-01-01T00:00:00.000000+00:00')")
        with postgres_schema("copy_store_newer") as url:
            done = _adapter(tmp_path, "copy-store", "--to", url)
            assert done.returncode == 2, done.stdout + done.stderr
            assert f"schema version {SCHEMA_VERSION + 1}, newer than this adapter's" in done.stderr, done.stderr
            assert "copy-store of that version" in done.stderr and "upgrades it" not in done.stderr, done.stderr
            assert table_names(url) == []
    finally:
        engine.dispose()
