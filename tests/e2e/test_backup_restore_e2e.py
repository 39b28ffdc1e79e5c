"""End to end: the SQLite backup and restore of docs/operations.md (the README's Backup, restore, verify
moved there), run as written while ``python -m adapter serve``
ingests photos. The restored data folder passes ``verify --digests``, and every receipt issued before
the backup began is served by an adapter started on it (operations review drill)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.support.app import PATIENT
from tests.support.dicom_files import jpeg
from tests.support.server import running_adapter

TREAT = {"X-Purpose-Of-Use": "TREAT"}


def _readme_commands() -> tuple[str, str, str, str]:
    """The backup's commands and the restore's file copies, as docs/operations.md gives them (SQLite's, not
    PostgreSQL's): what makes the backup folder, the database copy, the files' copy, and the
    restore's commands up to ``verify``; each run with the umask the document sets first. The files'
    copy includes the audit chain's key (step 3)."""
    operations = (ROOT / "docs" / "operations.md").read_text()
    section = operations[operations.index("\n## Backup, restore, verify\n"):operations.index("\n### Removing images")]
    umask = re.findall(r"^umask 077\b.*$", section, re.MULTILINE)
    # the chain key goes to a folder of its own, apart from the database copy, as step 3 advises
    # (newcomer review 6: the command put it beside the database in /backup)
    folder = re.search(r"^install -d -m 700 /backup /backup-keys(?: .*)?$", section, re.MULTILINE)
    database = re.search(r"^\.venv/bin/python -c \"import sqlite3;.*$", section, re.MULTILINE)
    files = re.search(r"^rsync -a data/blobs/ /backup/blobs/.*$", section, re.MULTILINE)
    audit_key = re.search(r"^cp -p data/audit\.key /backup-keys/audit\.key$", section, re.MULTILINE)
    restore = re.search(r"^install -d -m 700 restored && cp /backup/adapter\.db restored/.*\n(?:.*\n)*?"
                        r"^rsync -a /backup/blobs/ restored/blobs/.*$", section, re.MULTILINE)
    assert len(umask) >= 2 and folder and database and files and audit_key and restore, \
        "docs/operations.md's backup commands moved"
    keep = [line for line in restore.group(0).splitlines()
            if line.startswith(("install ", "rsync "))]  # not PostgreSQL's createdb and pg_restore
    return (f"umask 077\n{folder.group(0)}", f"umask 077\n{database.group(0)}",
            f"umask 077\n{files.group(0)}\n{audit_key.group(0)}", "umask 077\n" + "\n".join(keep))


def _here(command: str, backup: Path) -> str:
    """A command of docs/operations.md with this test's interpreter and backup folder (restored/ is relative: the
    commands run in the test's folder)."""
    return re.sub(r"/backup\b", str(backup), command.replace(".venv/bin/python", sys.executable))


def _post(url: str, n: int) -> httpx.Response:
    meta = {"patient": PATIENT, "kind": "clinical", "source": "clinician",
            "consent": {"purposes": ["TREAT"], "method": "verbal"}}
    return httpx.post(f"{url}/photos", timeout=30, files={
        "file": ("p.jpg", jpeg(96, 64, shade=n % 250, noise=n % 2 == 0), "image/jpeg"),
        "metadata": (None, json.dumps(meta), "application/json")})


def test_the_readme_backup_taken_while_ingesting_restores_whole(tmp_path: Path) -> None:
    backup_folder, backup_db, backup_files, restore_files = _readme_commands()
    backup = tmp_path / "backup"
    python = sys.executable
    # from a shell of the usual umask (022): the documented commands set their own
    here = lambda command: "umask 022\n" + _here(command, backup)
    receipts: list[tuple[float, dict]] = []
    stop = threading.Event()
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false") as server:
        def ingest() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                answer = _post(server.url, n)
                assert answer.status_code == 201, answer.text
                receipts.append((time.time(), answer.json()))  # when the receipt was in hand
        for n in range(3):
            receipts.append((time.time(), _post(server.url, 1000 + n).json()))
        ingesting = threading.Thread(target=ingest)
        ingesting.start()
        try:
            time.sleep(0.5)
            began = time.time()
            subprocess.run(here(backup_folder), shell=True, cwd=tmp_path, check=True, timeout=60)
            subprocess.run(here(backup_db), shell=True, cwd=tmp_path, check=True, timeout=60)
            time.sleep(0.5)  # photos stored between the database copy and the files
            subprocess.run(here(backup_files), shell=True, cwd=tmp_path, check=True, timeout=60)
        finally:
            stop.set()
            ingesting.join(60)
    before = [receipt for answered, receipt in receipts if answered < began]
    assert len(before) >= 3 and len(receipts) > len(before)

    # the copies are their user's only, as the adapter keeps its own data (new-user review 4: the
    # database copy was 644, from the shell's umask)
    assert _mode(backup) == 0o700
    keys = tmp_path / "backup-keys"
    assert not (backup / "audit.key").exists() and _mode(keys) == 0o700 and _mode(keys / "audit.key") == 0o600
    assert {name: _mode(backup / name) for name in ("adapter.db", "blobs", "pseudonym.key")} == \
        {"adapter.db": 0o600, "blobs": 0o700, "pseudonym.key": 0o600}
    restored = tmp_path / "restored"
    subprocess.run(here(restore_files), shell=True, cwd=tmp_path, check=True, timeout=60)
    assert {name: _mode(restored / name) for name in (".", "adapter.db", "blobs", "pseudonym.key")} == \
        {".": 0o700, "adapter.db": 0o600, "blobs": 0o700, "pseudonym.key": 0o600}
    env = {**os.environ, "ADAPTER_DATA_DIR": str(restored)}
    verify = subprocess.run([python, "-m", "adapter", "verify", "--digests"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert verify.returncode == 0 and " 0 problem(s)" in verify.stdout, verify.stdout + verify.stderr
    # restored into a 755 folder, verify warned that other users could read it
    assert "other users" not in verify.stderr, verify.stderr
    workdir = tmp_path / "again"
    workdir.mkdir()
    with running_adapter(workdir, ADAPTER_DATA_DIR=str(restored), ADAPTER_DICOM_ENABLED="false") as again, \
            httpx.Client(base_url=again.url, headers=TREAT, timeout=30) as http:
        for receipt in before:
            assert http.get(f"/fhir/{receipt['record']}").status_code == 200, receipt
            image = http.get(f"/fhir/{receipt['binary']}", headers={"Accept": "image/*"})
            assert image.status_code == 200 and image.content[:2] == b"\xff\xd8", receipt


def test_the_readme_backup_from_a_mistyped_path_fails_and_creates_nothing(tmp_path: Path) -> None:
    # sqlite3.connect('data/adapter.db') made an empty database there, and the backup of it
    # passed a restore drill (ops review 1): the documented command opens its source read-only
    backup_folder, backup_db, _, _ = _readme_commands()
    backup = tmp_path / "backup"
    (tmp_path / "data").mkdir()  # the wrong folder: no adapter.db in it
    command = _here(backup_db, backup)
    # without the backup folder, which the documented steps make first, the same message (new-user review 4)
    done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "unable to open database file" in done.stderr
    subprocess.run(_here(backup_folder, backup), shell=True, cwd=tmp_path, check=True, timeout=60)
    done = subprocess.run(command, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    assert "unable to open database file" in done.stderr
    assert not (tmp_path / "data" / "adapter.db").exists() and not (backup / "adapter.db").exists()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
