"""A data folder the adapter cannot use as one, met by ``python -m adapter serve`` and ``check``
as their own processes (operations review): ADAPTER_DATA_DIR naming a regular file, and a data
folder whose staging folder cannot be written (a read-only file system of its own mounted there:
the kernel's EROFS, which stops root too, tests.support.small_disk)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.orthanc import free_ports
from tests.support.postgres import postgres_schema
from tests.support.server import running_adapter
from tests.support.small_disk import small_disk

NOT_A_DIRECTORY = "ADAPTER_DATA_DIR is not a directory"


def _run(tmp_path: Path, *command: str, data_dir: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_DATA_DIR=str(data_dir), ADAPTER_DICOM_ENABLED="false", ADAPTER_HTTP_PORT="0", **settings)
    return subprocess.run([sys.executable, "-m", "adapter", *command], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("where", ["the file", "under the file"])
def test_a_data_dir_that_is_a_regular_file_is_refused_saying_so(tmp_path: Path, where: str) -> None:
    """Was: check said "…/store.id cannot be read (NotADirectoryError)" and serve ended with a
    FileExistsError traceback (exit 1) from the SQLite file's folder; the setting is what is
    wrong, and every command says so before it touches anything: exit 2."""
    a_file = tmp_path / "data"
    a_file.write_bytes(b"not a folder")
    data_dir = a_file if where == "the file" else a_file / "adapter"
    for command in (("check",), ("check", "--offline"), ("serve",), ("verify",)):
        done = _run(tmp_path, *command, data_dir=data_dir)
        said = done.stdout + done.stderr
        assert done.returncode == 2, (command, said[-2000:])
        assert NOT_A_DIRECTORY in done.stderr and str(a_file) in done.stderr, (command, said[-2000:])
        assert "Traceback" not in said and "audit.key" not in said and "store.id" not in said, (command, said)
    assert a_file.read_bytes() == b"not a folder"


def test_a_staging_folder_that_cannot_be_written_is_said_at_start(tmp_path: Path) -> None:
    """Was: the adapter started without a word; only /health/ready failed (storage) and every
    upload got 503. One WARNING at start names the folder and what fails (no patient data)."""
    staging = tmp_path / "data" / "staging"
    with small_disk(staging, 1, read_only=True), \
            running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false") as server:
        ready = httpx.get(f"{server.url}/health/ready", timeout=10)
        assert ready.status_code == 503 and ready.json()["checks"]["storage:freeSpace"][0]["status"] == "fail"
        lines = server.log.read_text().splitlines()
        said = [line for line in lines if str(staging) in line]
        assert len(said) == 1, lines
        assert " WARNING " in said[0] and "EROFS" in said[0], said


def _serve(workdir: Path, data_dir: Path, url: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    http_port, dicom_port = free_ports(2)
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")},
           "ADAPTER_DATA_DIR": str(data_dir), "ADAPTER_DATABASE_URL": url, "ADAPTER_HTTP_PORT": str(http_port),
           "ADAPTER_DICOM_PORT": str(dicom_port), "TMPDIR": str(workdir)}
    log = workdir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{http_port}", log


def _up(proc: subprocess.Popen[bytes], url: str, within: float = 60) -> bool:
    """Whether ``serve`` answers /health within ``within`` s (False: it exited first)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("run", range(3))
def test_two_instances_started_together_on_a_new_shared_store_both_start(tmp_path: Path, run: int) -> None:
    """Ops review 2: one of two instances started at the same moment on a new PostgreSQL database
    and a new shared data folder refused to start, telling the operator to "restore the audit.key
    backed up with the database", a backup that does not exist: it had read the folder's audit.key
    (none yet) when it opened the store, before the other made it and recorded its fingerprint.
    It reads it again once a key is recorded, after the other's claim."""
    data = tmp_path / "shared"
    with postgres_schema("data_folder_race") as url:
        started = [_serve(tmp_path / name, data, url) for name in ("a", "b")]
        try:
            up = [_up(proc, http) for proc, http, _ in started]
            logs = [log.read_text() for _, _, log in started]
            assert up == [True, True], [log[-1500:] for log in logs]
            assert all("cannot start" not in log for log in logs), logs
            # both chain under the one key made, and both serve
            assert (data / "audit.key").is_file()
        finally:
            for proc, _, _ in started:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            for proc, _, _ in started:
                proc.wait(timeout=30)


def test_a_read_only_data_folder_is_said_to_be_read_only(tmp_path: Path) -> None:
    """Ops review 5: a data folder on a read-only file system was refused as "the record store
    failed (unreachable, …)", check said the SQLite database "cannot be read" (it can), and with
    PostgreSQL serve said "cannot create the blob folders", with no path and no errno."""
    from adapter.config import Settings
    from adapter.errors import StorageError
    from adapter.store import FileBlobStore, open_store

    data = tmp_path / "ro" / "data"
    with small_disk(tmp_path / "ro", 40):
        store, _ = open_store(Settings(data_dir=data).store)
        store.close()
        shutil.rmtree(data / "blobs")
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "ro")], check=True)
        for command in (("serve",), ("check",)):
            done = _run(tmp_path, *command, data_dir=data)
            said = done.stderr
            assert done.returncode == 2, (command, done.stdout + said)
            assert "read-only" in said and str(data) in said and "EROFS" in said, (command, said)
            assert "unreachable" not in said and "cannot be read" not in said, (command, said)
        with pytest.raises(StorageError) as refused:
            FileBlobStore(Settings(data_dir=data, database_url="postgresql+psycopg://x@127.0.0.1/x").store)
        assert "read-only" in refused.value.diagnostics and str(data / "blobs") in refused.value.diagnostics
        assert "EROFS" in refused.value.diagnostics


def test_a_postgresql_stores_data_folder_made_read_only_is_named_by_serve_and_check(tmp_path: Path) -> None:
    """Verify review 2, finding 5: a PostgreSQL store's data folder in use (blobs/ and quarantine/
    made), mounted read-only, was refused by serve as "cannot open the removal lock in the
    quarantine folder" (no path, no errno), and check passed it."""
    from tests.support.app import adapter_client

    data = tmp_path / "ro" / "data"
    with postgres_schema("ro_data_folder") as url, small_disk(tmp_path / "ro", 40):
        with adapter_client(tmp_path / "ro", database_url=url) as (_, services):
            services.close()
        assert (data / "quarantine").is_dir() and (data / "blobs").is_dir()
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "ro")], check=True)
        for command in (("serve",), ("check",)):
            done = _run(tmp_path, *command, data_dir=data, ADAPTER_DATABASE_URL=url)
            said = done.stderr
            assert done.returncode == 2, (command, done.stdout + said)
            assert any(str(data) in line and "EROFS" in line for line in said.splitlines()), (command, said)


@contextmanager
def _unreadable(paths: list[Path]) -> Iterator[list[str]]:
    """``paths`` made unreadable to the commands run with the prefix yielded: their modes 000 for
    the duration, and, run as root, the command's capabilities to pass over file modes dropped
    (setpriv: root reads everything else): what the image's user (uid 10001) meets in a folder
    restored as root, its modes 700 and 600."""
    modes = {path: path.stat().st_mode for path in paths}
    for path in paths:
        path.chmod(0)
    try:
        yield ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    finally:
        for path, mode in modes.items():
            path.chmod(mode)


@pytest.mark.parametrize("restored", ["the folder", "its files"])
def test_a_data_folder_this_user_cannot_read_is_said_so_by_every_command(tmp_path: Path, restored: str) -> None:
    """Newcomer review 1: a data folder restored as root (700, files 600) and run as the image's
    user: check ended in a PermissionError traceback (exit 1), as did copy-store, and serve,
    verify and audit said "audit.key cannot be read (PermissionError)". Each now names the path,
    that this user cannot read it, and that the adapter's user needs read and write access: exit 2."""
    from tests.support.app import adapter_client

    with adapter_client(tmp_path) as (_, services):
        services.close()
    data = tmp_path / "data"
    paths = [data] if restored == "the folder" else [p for p in data.iterdir() if p.is_file()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_DATA_DIR=str(data), ADAPTER_DICOM_ENABLED="false", ADAPTER_HTTP_PORT="0",
               ADAPTER_POLICY=str(tmp_path / "policy.yaml"), ADAPTER_MAPPINGS_DIR=str(ROOT / "mappings"))
    commands = [("check",), ("verify",), ("audit",), ("copy-store", "--to", f"sqlite:///{tmp_path / 'copy.db'}"),
                ("serve",)]
    with _unreadable(paths) as prefix:
        for command in commands:
            done = subprocess.run([*prefix, sys.executable, "-m", "adapter", *command], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
            said = done.stdout + done.stderr
            assert done.returncode == 2, (command, said[-3000:])
            assert "Traceback" not in said, (command, said[-3000:])
            assert "cannot be read by this user" in done.stderr and str(data) in done.stderr, (command, said)
            assert "read and write access" in done.stderr, (command, said)
    assert not (tmp_path / "copy.db").exists()


def test_entries_the_adapter_does_not_own_are_left_alone(tmp_path: Path) -> None:
    """Review codereview finding 1: a data folder that is a volume of its own holds a root-owned
    ``lost+found`` (mode 700), an NFS one a ``.snapshot``; the access check opened every entry
    in the folder, and every command refused to run (exit 2, "lost+found cannot be read"). Only
    what the adapter owns is checked: these hosts start as they did."""
    from tests.support.app import adapter_client

    with adapter_client(tmp_path) as (_, services):
        services.close()
    data = tmp_path / "data"
    (data / "lost+found").mkdir()
    (data / "lost+found" / "#12").write_bytes(b"")
    (data / ".snapshot").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    settings = {"ADAPTER_DATA_DIR": str(data), "ADAPTER_DICOM_ENABLED": "false",
                "ADAPTER_POLICY": str(tmp_path / "policy.yaml"), "ADAPTER_MAPPINGS_DIR": str(ROOT / "mappings")}
    env.update(ADAPTER_HTTP_PORT="0", **settings)
    commands = [("check",), ("verify",), ("audit",),
                ("copy-store", "--to", f"sqlite:///{tmp_path / 'copy.db'}")]
    with _unreadable([data / "lost+found", data / ".snapshot"]) as prefix:
        for command in commands:
            done = subprocess.run([*prefix, sys.executable, "-m", "adapter", *command], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
            said = done.stdout + done.stderr
            assert done.returncode == 0, (command, said[-3000:])
            assert "lost+found" not in said and ".snapshot" not in said, (command, said[-3000:])
        with running_adapter(tmp_path, command=[*prefix, sys.executable, "-m", "adapter", "serve"],
                             **settings) as server:
            assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200
        # what the adapter owns is still checked, with the foreign entries there
        with _unreadable([data / "audit.key"]):
            done = subprocess.run([*prefix, sys.executable, "-m", "adapter", "verify"], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2 and "audit.key cannot be read by this user" in done.stderr, done.stderr
