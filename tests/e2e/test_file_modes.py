"""What the adapter writes in its data folder is its own user's only (ops review finding: under
the usual umask 022 the photos and the SQLite database were readable by every local account)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.support.app import metadata
from tests.support.server import running_adapter


def test_the_data_folder_and_what_is_in_it_are_private_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # what a shell usually has: the adapter started under it
    try:
        with running_adapter(tmp_path) as server:
            photo = (ROOT / "samples" / "wound.jpg").read_bytes()
            r = httpx.post(f"{server.url}/photos", timeout=30, files={
                "file": ("wound.jpg", photo, "image/jpeg"),
                "metadata": (None, json.dumps(metadata()), "application/json")})
            assert r.status_code == 201, r.text[:300]
    finally:
        os.umask(previous)
    data = tmp_path / "data"
    made = [data, *data.rglob("*")]
    assert any(p.suffix == ".db" for p in made) and any("blobs" in p.parts and p.is_file() for p in made)
    shared = {str(p.relative_to(tmp_path)): oct(stat.S_IMODE(p.stat().st_mode)) for p in made
              if p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO)}
    assert shared == {}, shared


def test_a_data_folder_others_can_read_is_said_in_the_log(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with running_adapter(tmp_path) as server:
        log = server.log.read_text()
    assert "can be read or entered by other users (mode 0o755)" in log, log[-1500:]
    assert stat.S_IMODE(data.stat().st_mode) == 0o755  # said, not changed
