"""A data folder the adapter cannot use as one, met by ``python -m adapter serve`` and ``check``
as their own processes (operations review): ADAPTER_DATA_DIR naming a regular file, and a data
folder whose staging folder cannot be written (a read-only file system of its own mounted there:
the kernel's EROFS, which stops root too, tests.support.small_disk)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT
from tests.support.server import running_adapter
from tests.support.small_disk import small_disk

NOT_A_DIRECTORY = "ADAPTER_DATA_DIR is not a directory"


def _run(tmp_path: Path, *command: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_DATA_DIR=str(data_dir), ADAPTER_DICOM_ENABLED="false", ADAPTER_HTTP_PORT="0")
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
