"""End to end: ``python -m adapter verify`` as its own process, on a store holding a photo and a
DICOM object received by the SCP, finds an image file removed and one damaged (as after a bad
restore or a disk incident), names the records by logical id only, and exits 1; on a sound store
it exits 0; pointed at a folder with no store it refuses rather than verify an empty new one."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from adapter.dicom import AeOptions, StoreSCP
from adapter.dicom.status import SUCCESS
from adapter.services.verify import DAMAGED, MISSING, verify_store
from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, metadata, pacs_client, post_photo
from tests.support.dicom_files import pynet_store, sc_file
from tests.support.postgres import postgres_schema, table_names


def _verify(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_DATA_DIR=str(tmp_path / "data"), ADAPTER_POLICY=str(tmp_path / "policy.yaml"),
               ADAPTER_MAPPINGS_DIR=str(ROOT / "mappings"), **extra)
    return subprocess.run([sys.executable, "-m", "adapter", "verify", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _blob(data: Path, sha256: str) -> Path:
    return data / "blobs" / sha256[:2] / sha256[2:4] / sha256


@pytest.mark.usefixtures("pynetdicom_config")
def test_verify_finds_missing_and_damaged_images(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with adapter_client(tmp_path) as (client, services):
        wound = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        lesion = post_photo(client, ROOT / "samples" / "lesion.png", metadata(), content_type="image/png").json()
        scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",)), services.dicom_ingest)
        scp.start()
        try:
            sent = sc_file(tmp_path / "sc.dcm")
            assert pynet_store(scp.port, tmp_path / "sc.dcm", chunked=True).Status == SUCCESS
        finally:
            scp.stop()
        instance = services.store.find_dicom_instance(sent.SOPInstanceUID)
        assert instance is not None and instance.blob_sha256
        sound = verify_store(services.store, services.blobs, digests=True)
        # each photo: its record and Binary; the DICOM object: itself, its record and the Binary that
        # is a byte range of it
        assert sound.ok and sound.references == 7 and sound.blobs == 3 and sound.digests_checked == 3

    done = _verify(tmp_path, "--digests")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 reference(s) to 3 stored image(s), 3 re-hashed; 0 problem(s)" in done.stdout

    # the wound photo's file is lost, one byte of the received DICOM object is flipped
    _blob(data, wound["sha256"]["stored"]).unlink()
    damaged = _blob(data, instance.blob_sha256)
    raw = bytearray(damaged.read_bytes())
    raw[200] ^= 0xFF
    damaged.write_bytes(bytes(raw))

    quick = _verify(tmp_path)  # sizes only: the missing file, not the flipped byte
    assert quick.returncode == 1, quick.stdout + quick.stderr
    assert f"{wound['binary']}: image {wound['sha256']['stored'][:16]}… {MISSING}" in quick.stdout
    assert f"{wound['record']}: image" in quick.stdout
    assert DAMAGED not in quick.stdout

    full = _verify(tmp_path, "--digests")
    assert full.returncode == 1
    lines = full.stdout.splitlines()
    assert sum(MISSING in line for line in lines) == 2  # the record and its Binary
    broken = sorted(line.split(": image")[0] for line in lines if DAMAGED in line)
    assert broken[0].startswith("Binary/") and broken[1:] == [
        f"DICOM object of Media/{instance.record_id}", f"Media/{instance.record_id}"]
    assert lesion["binary"] not in full.stdout  # intact
    assert "7 reference(s) to 3 stored image(s), 2 re-hashed; 5 problem(s)" in full.stdout
    assert PATIENT["value"] not in full.stdout + full.stderr


def test_verify_counts_images_no_record_refers_to(tmp_path: Path) -> None:
    """A crash between a blob's commit and the database's leaves an image nobody refers to:
    counted, not a problem."""
    with adapter_client(tmp_path) as (client, services):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        staged = services.blobs.new_staging_path()
        staged.write_bytes(b"committed, then the process died before the database commit")
        services.blobs.commit(staged, hashlib.sha256(staged.read_bytes()).hexdigest())
    done = _verify(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 problem(s); 1 image(s) no record refers to" in done.stdout


def test_verify_counts_the_uploads_left_in_the_staging_folder(tmp_path: Path) -> None:
    """Operations review: after ``kill -9`` mid-upload, the photos as received (EXIF, GPS, serial
    numbers not yet removed) stayed in ``staging/`` and verify said nothing of them; an operator
    backing up the whole folder copied them. verify counts them, with their size; not a problem
    (an upload under way is staged too), and the ones stale enough are swept at its start."""
    with adapter_client(tmp_path) as (client, services):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        left = services.blobs.new_staging_path()
        left.write_bytes(b"a photo as received, its metadata not yet removed")
    done = _verify(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"1 staged upload(s) ({left.stat().st_size} bytes) in the staging folder" in done.stdout, done.stdout
    assert "0 problem(s)" in done.stdout
    left.unlink()
    assert "staged upload" not in _verify(tmp_path).stdout


def test_verify_refuses_a_folder_with_no_store(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text((ROOT / "mappings" / "policy.yaml").read_text())
    done = _verify(tmp_path)
    assert done.returncode == 2
    assert "no database at" in done.stderr
    assert not (tmp_path / "data" / "adapter.db").exists()


def test_verify_refuses_an_empty_sqlite_file_and_gives_it_no_tables(tmp_path: Path) -> None:
    # what sqlite3.connect on a mistyped backup path leaves: verify said "0 problem(s)", exit 0 (ops review 1)
    (tmp_path / "policy.yaml").write_text((ROOT / "mappings" / "policy.yaml").read_text())
    (tmp_path / "data").mkdir()
    sqlite3.connect(tmp_path / "data" / "adapter.db").close()
    done = _verify(tmp_path, "--digests")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "holds no record store of the adapter" in done.stderr and "0 problem(s)" not in done.stdout
    with sqlite3.connect(tmp_path / "data" / "adapter.db") as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_verify_refuses_an_empty_postgresql_schema_and_creates_nothing_in_it(tmp_path: Path) -> None:
    # on PostgreSQL verify created the 11 tables in the empty database, then passed it (ops review 1)
    (tmp_path / "policy.yaml").write_text((ROOT / "mappings" / "policy.yaml").read_text())
    with postgres_schema("verify_empty") as url:
        done = _verify(tmp_path, env={"ADAPTER_DATABASE_URL": url})
        assert done.returncode == 2, done.stdout + done.stderr
        assert "holds no record store of the adapter" in done.stderr
        assert table_names(url) == []


def test_verify_reports_a_restore_without_the_pseudonym_key(tmp_path: Path) -> None:
    # serve generated a new key (INFO) and verify said 0 problem(s): every pseudonym unlinkable (ops review 8)
    with adapter_client(tmp_path) as (client, _):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
    (tmp_path / "data" / "pseudonym.key").unlink()
    done = _verify(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "pseudonym key:" in done.stdout and "pseudonym.key is missing" in done.stdout
    assert "1 problem(s)" in done.stdout
    assert not (tmp_path / "data" / "pseudonym.key").exists()


def _age(path: Path, days: float) -> None:
    then = time.time() - days * 24 * 3600
    os.utime(path, (then, then))


def _orphan(services: Any, content: bytes) -> Path:
    """An image committed by an ingest whose transaction then failed."""
    staged = services.blobs.new_staging_path()
    staged.write_bytes(content)
    return Path(services.blobs.commit(staged, hashlib.sha256(content).hexdigest()))


def test_verify_removes_unreferenced_images_older_than_the_grace_period(tmp_path: Path) -> None:
    """``--remove-unreferenced``: an orphan two days old goes, one half an hour old stays (an ingest
    may still refer to it), and so does the photo's image however old; the output says how many
    and how large, and names nothing of a patient."""
    data = tmp_path / "data"
    with adapter_client(tmp_path) as (client, services):
        photo = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        old, young = _orphan(services, b"failed two days ago"), _orphan(services, b"failed half an hour ago")
    kept = _blob(data, photo["sha256"]["stored"])
    _age(old, 2), _age(young, 1 / 48), _age(kept, 30)
    done = _verify(tmp_path, "--remove-unreferenced", env={"ADAPTER_LOG_LEVEL": "DEBUG"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 problem(s); 2 image(s) no record refers to" in done.stdout
    assert (f"removed 1 image(s) no record refers to, older than 24 hour(s) ({len(b'failed two days ago')} bytes); "
            "1 left") in done.stdout
    assert not old.exists() and young.exists() and kept.exists()
    assert PATIENT["value"] not in done.stdout + done.stderr and "MRN" not in done.stdout + done.stderr

    shorter = _verify(tmp_path, "--remove-unreferenced", "--older-than", "0.5")
    assert shorter.returncode == 2 and "at least 1 hour" in shorter.stderr and young.exists()
    hour = _verify(tmp_path, "--remove-unreferenced", "--older-than", "0.9", "--limit", "1")
    assert hour.returncode == 2 and young.exists()
    again = _verify(tmp_path, "--remove-unreferenced", "--older-than", "1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "removed 0 image(s)" in again.stdout and young.exists()
    _age(young, 2 / 24)
    last = _verify(tmp_path, "--remove-unreferenced", "--older-than", "1", "--limit", "5")
    assert "removed 1 image(s)" in last.stdout and "0 left" in last.stdout and not young.exists()
    assert _verify(tmp_path).stdout.rstrip().endswith("0 image(s) no record refers to")


def test_verify_removes_nothing_from_a_store_with_problems(tmp_path: Path) -> None:
    """A missing image is looked at first (a restore may be incomplete): nothing is removed, exit 1."""
    data = tmp_path / "data"
    with adapter_client(tmp_path) as (client, services):
        photo = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        old = _orphan(services, b"failed two days ago")
    _age(old, 2)
    _blob(data, photo["sha256"]["stored"]).unlink()
    done = _verify(tmp_path, "--remove-unreferenced")
    assert done.returncode == 1
    assert "unreferenced images not removed: the store has problems" in done.stdout
    assert old.exists()


def test_verify_lists_a_consent_the_decision_cannot_read(tmp_path: Path) -> None:
    # code review: a Consent stored before writes refused modifierExtensions and untyped nested
    # provisions (or written to the database by hand) is read as a denial of every purpose of
    # its patient, care included, and refuses every ingest for them: silently, until listed
    from adapter.mapping.photo import index_resource
    from adapter.model.record import NewResource
    from tests.support.app import consent_resource

    with adapter_client(tmp_path) as (client, services):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        unreadable = {**consent_resource(["TRAIN"]), "id": "legacy-1",
                      "modifierExtension": [{"url": "http://example.org/revoked-pending", "valueBoolean": True}]}
        services.store.create(NewResource("Consent", "legacy-1", unreadable, index_resource(unreadable)))
    done = _verify(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ("Consent/legacy-1: the consent decision cannot read it (BusinessRuleViolation at "
            "Consent.modifierExtension)") in done.stdout
    assert "1 problem(s)" in done.stdout
    assert "Consent/" not in done.stdout.replace("Consent/legacy-1", ""), done.stdout  # the photo's own is readable


def test_verify_finds_an_audit_trail_edited_or_renumbered(tmp_path: Path) -> None:
    """Review audit F2: an event rewritten in the database (a read's purpose changed), or one
    deleted and the later ones renumbered so no number is missing, went unnoticed (exit 0). The
    hash chain breaks at the event touched; the export names the end of the chain to keep off
    the host."""
    with adapter_client(tmp_path) as (client, _):
        receipt = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        for _ in range(3):
            assert client.get(f"/fhir/{receipt['record']}", headers={"X-Purpose-Of-Use": "TREAT"}).status_code == 200
    clean = _verify(tmp_path)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 problem(s)" in clean.stdout
    db = tmp_path / "data" / "adapter.db"
    with sqlite3.connect(db) as conn:
        count = conn.execute("SELECT count(*) FROM audit").fetchone()[0]
        assert count >= 4
        conn.execute("UPDATE audit SET json = replace(json, 'TREAT', 'RECORDMGT') WHERE seq = 3")
    edited = _verify(tmp_path)
    assert edited.returncode == 1, edited.stdout + edited.stderr
    assert "the hash chain breaks at event 3 " in edited.stdout and "1 problem(s)" in edited.stdout
    with sqlite3.connect(db) as conn:  # back as it was, then event 2 removed and the rest renumbered
        conn.execute("UPDATE audit SET json = replace(json, 'RECORDMGT', 'TREAT') WHERE seq = 3")
        conn.commit()
        restored = _verify(tmp_path)
        assert restored.returncode == 0 and f"audit trail: {count} event(s), events 1..{count} chained" in restored.stdout
        conn.execute("DELETE FROM audit WHERE seq = 2")
        conn.execute("UPDATE audit SET seq = seq - 1 WHERE seq > 2")
    renumbered = _verify(tmp_path)
    assert renumbered.returncode == 1, renumbered.stdout + renumbered.stderr
    assert "the hash chain breaks at event 2 " in renumbered.stdout


def test_verify_names_a_study_whose_instances_are_filed_under_two_patients(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a study of two patients stored before such an instance was refused (clinical safety review
    # finding 1) stood unreported: a retrieve of it shows both patients' images to care
    from tests.integration.test_dicomweb import received, stored_before_studies_were_checked, stow

    with pacs_client(tmp_path) as (client, services):
        mine = received(record_id="rec-a")
        theirs = received(record_id="rec-b", PatientID="MRN-0002", PatientName="Roe^Rick")
        stored_before_studies_were_checked(monkeypatch)
        assert stow(client, mine, theirs).status_code == 200
        records = sorted(f"{i.record_type}/{i.record_id}"
                         for i in services.store.search_dicom_instances(study=mine.StudyInstanceUID))
    done = _verify(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert (f"study {mine.StudyInstanceUID}: its instances are filed under more than one patient "
            f"({', '.join(records)})") in done.stdout
    assert "1 problem(s)" in done.stdout
    assert "MRN-000" not in done.stdout and "Roe" not in done.stdout  # names records, not patients


def _images(data: Path) -> list[Path]:
    return sorted(p for p in (data / "blobs").rglob("*") if p.is_file())


def test_the_removal_keeps_the_images_of_a_sqlite_store_left_in_the_folder(tmp_path: Path) -> None:
    """Operations review 1: the SQLite folder pointed at a new PostgreSQL database, store.id deleted as
    the refusal advised, and the nightly ``--remove-unreferenced`` deleted every photo taken under
    SQLite, whose records were still in the folder's adapter.db. Refused while the folder has no
    store.id (never claimed by the database), and while it holds an adapter.db beside another
    configured database: exit 1, nothing removed."""
    from adapter.config import Settings
    from adapter.errors import ConfigurationError
    from adapter.services.registry import build_services

    data = tmp_path / "data"
    with adapter_client(tmp_path) as (client, services):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        post_photo(client, ROOT / "samples" / "lesion.png", metadata(), content_type="image/png")
        services.close()
    photos = _images(data)
    assert len(photos) == 2
    for photo in photos:
        _age(photo, 2)
    with postgres_schema("verify_moved") as url:
        settings = Settings(data_dir=data, database_url=url, policy=tmp_path / "policy.yaml",
                            mappings_dir=ROOT / "mappings")
        with pytest.raises(ConfigurationError, match="data folder of another database"):
            build_services(settings)  # serve's refusal; the database now holds the tables
        sqlite_claim = (data / "store.id").read_text()
        (data / "store.id").unlink()  # what the refusal used to advise
        done = _verify(tmp_path, "--remove-unreferenced", env={"ADAPTER_DATABASE_URL": url})
        assert done.returncode == 1, done.stdout + done.stderr
        assert "2 image(s) no record refers to" in done.stdout
        assert "unreferenced images not removed" in done.stdout and "adapter.db" in done.stdout
        assert "store.id" in done.stdout
        assert _images(data) == photos

        build_services(settings).close()  # started: the folder claimed anew for PostgreSQL
        claimed = _verify(tmp_path, "--remove-unreferenced", env={"ADAPTER_DATABASE_URL": url})
        assert claimed.returncode == 1, claimed.stdout + claimed.stderr
        assert "unreferenced images not removed" in claimed.stdout and "adapter.db" in claimed.stdout
        assert _images(data) == photos
    # the SQLite store itself, configured, its store.id put back: its own folder, the removal as before
    (data / "store.id").write_text(sqlite_claim)
    sqlite_removal = _verify(tmp_path, "--remove-unreferenced")
    assert sqlite_removal.returncode == 0, sqlite_removal.stdout + sqlite_removal.stderr
    assert "removed 0 image(s)" in sqlite_removal.stdout and _images(data) == photos


def test_the_removal_refuses_a_folder_no_start_claimed(tmp_path: Path) -> None:
    """A data folder without store.id is no folder this database's start claimed (an old store.id
    deleted by hand, another database's folder): its images are not this database's to remove,
    whatever database holds their records (here one outside the folder)."""
    from adapter.config import Settings
    from adapter.errors import ConfigurationError
    from adapter.services.registry import build_services

    data = tmp_path / "data"
    elsewhere = f"sqlite:///{tmp_path / 'records.db'}"
    with adapter_client(tmp_path, database_url=elsewhere) as (client, services):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        services.close()
    (photo,) = _images(data)
    _age(photo, 2)
    with postgres_schema("verify_unclaimed") as url:
        with pytest.raises(ConfigurationError):
            build_services(Settings(data_dir=data, database_url=url, policy=tmp_path / "policy.yaml",
                                    mappings_dir=ROOT / "mappings"))
        (data / "store.id").unlink()
        done = _verify(tmp_path, "--remove-unreferenced", env={"ADAPTER_DATABASE_URL": url})
        assert done.returncode == 1, done.stdout + done.stderr
        assert "unreferenced images not removed" in done.stdout and "store.id" in done.stdout
        assert _images(data) == [photo]
