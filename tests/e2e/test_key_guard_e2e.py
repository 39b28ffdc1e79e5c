"""End to end: the keys and the data folder a store was made with, guarded by ``python -m adapter
serve``, ``check`` and ``verify`` as their own processes (operations review 2, 6 and 8), on a real
SQLite file and the real PostgreSQL.

* A pseudonym key given by ADAPTER_PSEUDONYM_KEY_FILE or ADAPTER_PSEUDONYM_KEY (production's only
  way) other than the one the records were pseudonymised under was taken with a WARNING: the store
  was re-keyed (pseudonyms, mapped DICOM UIDs, released FHIR ids), its fingerprint overwritten, and
  ``verify`` said 0 problems under any key. Now serve refuses it (exit 2), verify reports it, check
  says so, unless ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY=true (a deliberate rotation, recorded).
* ``check`` said "valid" (exit 0) where serve refused a folder of another database or an audit.key:
  it now says what serve would refuse, writing nothing.
* A start refused (a wrong or missing audit.key, a folder of another database, a database that
  cannot be opened) wrote a new audit.key into the folder first: an operator copying keys with
  ``cp -n`` then kept the wrong one.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapter.services.registry import PSEUDONYM_KEY_FINGERPRINT
from tests.conftest import ROOT
from tests.support.orthanc import free_ports
from tests.support.postgres import PG_URL, postgres_schema
from tests.support.server import running_adapter


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'records.db'}"
    else:
        with postgres_schema("key_guard") as url:
            yield url


def _key_file(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A key file as the README's Docker steps make one (48 random bytes, base64), and its key."""
    key = base64.b64encode(secrets.token_bytes(48)).decode("ascii")
    path = tmp_path / name
    path.write_text(f"{key}\n")
    path.chmod(0o600)
    return path, key


def _env(tmp_path: Path, data: Path, database_url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    http_port, dicom_port = free_ports(2)
    env.update(ADAPTER_DATA_DIR=str(data), ADAPTER_DATABASE_URL=database_url,
               ADAPTER_POLICY=str(ROOT / "mappings" / "policy.yaml"), ADAPTER_HTTP_PORT=str(http_port),
               ADAPTER_DICOM_PORT=str(dicom_port), ADAPTER_DATABASE_START_WAIT="0", TMPDIR=str(tmp_path),
               **settings)
    return env


def _cli(tmp_path: Path, command: str, data: Path, database_url: str,
         **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adapter", command], cwd=tmp_path,
                          env=_env(tmp_path, data, database_url, **settings), capture_output=True, text=True,
                          timeout=120, check=False)


def _refused_start(tmp_path: Path, data: Path, database_url: str, **settings: str) -> str:
    """``serve``'s output, asserting it refused to start (exit 2) rather than served."""
    with subprocess.Popen([sys.executable, "-m", "adapter", "serve"], cwd=tmp_path,
                          env=_env(tmp_path, data, database_url, **settings), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True) as proc:
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
            raise AssertionError(f"serve started, it was to refuse: {out[-2000:]}") from None
    assert proc.returncode == 2, out[-2000:]
    assert "cannot start" in out, out[-2000:]
    return out


def _start_and_stop(tmp_path: Path, data: Path, database_url: str, **settings: str) -> None:
    """``serve`` started (it answers /health), then stopped."""
    env = _env(tmp_path, data, database_url, **settings)
    workdir = tmp_path / f"run-{time.monotonic_ns()}"
    workdir.mkdir()
    passed = {k: v for k, v in env.items() if k.startswith("ADAPTER_") and k not in (
        "ADAPTER_HTTP_PORT", "ADAPTER_DICOM_PORT")}
    with running_adapter(workdir, **passed):
        pass


def _fingerprints(database_url: str) -> dict[str, str]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            return {name: value for name, value in conn.execute(sa.text("SELECT name, fingerprint FROM key_fingerprints"))}
    finally:
        engine.dispose()


def _state(data: Path) -> dict[str, tuple[int, int]]:
    """Every file under the data folder, with its size and modification time."""
    return {str(p.relative_to(data)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(data.rglob("*"))}


def test_another_configured_pseudonym_key_is_refused_unless_accepted(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    first, first_key = _key_file(tmp_path, "pseudonym.key")
    other, other_key = _key_file(tmp_path, "new.key")  # a disaster recovery's "generate a key once", say
    _start_and_stop(tmp_path, data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(first))
    recorded = _fingerprints(database_url)
    assert PSEUDONYM_KEY_FINGERPRINT in recorded

    for given in ({"ADAPTER_PSEUDONYM_KEY_FILE": str(other)}, {"ADAPTER_PSEUDONYM_KEY": other_key}):
        out = _refused_start(tmp_path, data, database_url, **given)
        assert "pseudonym key" in out and "ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY=true" in out, out[-2000:]
        assert next(iter(given)) in out  # names where the key came from
        assert other_key not in out and first_key not in out  # never the key itself
        assert _fingerprints(database_url) == recorded  # not re-keyed

        checked = _cli(tmp_path, "check", data, database_url, **given)
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert "pseudonym key" in checked.stderr and other_key not in checked.stdout + checked.stderr

        verified = _cli(tmp_path, "verify", data, database_url, **given)
        assert verified.returncode == 1, verified.stdout + verified.stderr
        assert "pseudonym key:" in verified.stdout and "1 problem(s)" in verified.stdout
    assert _fingerprints(database_url) == recorded

    # the original key file: all is well
    assert _cli(tmp_path, "check", data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(first)).returncode == 0
    assert _cli(tmp_path, "verify", data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(first)).returncode == 0

    # a deliberate rotation: accepted once, recorded; from then on the new key is the store's
    _start_and_stop(tmp_path, data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(other),
                    ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY="true")
    rotated = _fingerprints(database_url)
    assert rotated[PSEUDONYM_KEY_FINGERPRINT] != recorded[PSEUDONYM_KEY_FINGERPRINT]
    assert _cli(tmp_path, "check", data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(other)).returncode == 0
    assert _cli(tmp_path, "verify", data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(other)).returncode == 0
    _start_and_stop(tmp_path, data, database_url, ADAPTER_PSEUDONYM_KEY=other_key)
    _refused_start(tmp_path, data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(first))
    assert _fingerprints(database_url) == rotated


def test_check_says_what_serve_refuses_and_writes_nothing(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    key, _ = _key_file(tmp_path, "pseudonym.key")
    _start_and_stop(tmp_path, data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    fine = _cli(tmp_path, "check", data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    assert fine.returncode == 0, fine.stdout + fine.stderr
    recorded = _fingerprints(database_url)

    def refused_alike(folder: Path, url: str, named: str, **settings: str) -> None:
        before = _state(folder) if folder.exists() else None
        checked = _cli(tmp_path, "check", folder, url, **settings)
        assert checked.returncode == 2, checked.stdout + checked.stderr
        assert named in checked.stderr, checked.stderr
        assert (_state(folder) if folder.exists() else None) == before  # check wrote nothing
        out = _refused_start(tmp_path, folder, url, **settings)
        assert named in out, out[-2000:]
        assert (_state(folder) if folder.exists() else None) == before  # nor did the refused start

    # the folder of another database: this one's, given a new database
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    refused_alike(data, other_url, "data folder of another database", ADAPTER_PSEUDONYM_KEY_FILE=str(key))

    # the database's own folder without its audit.key (a restore that left it behind), then another one
    (data / "audit.key").rename(tmp_path / "audit.key")
    refused_alike(data, database_url, "audit.key", ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    assert not (data / "audit.key").exists()
    (data / "audit.key").write_text(secrets.token_hex(32))
    refused_alike(data, database_url, "audit.key", ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    (tmp_path / "audit.key").replace(data / "audit.key")

    # the data folder's generated pseudonym.key against a store keyed from a file
    refused_alike(data, database_url, "pseudonym.key is missing")
    assert not (data / "pseudonym.key").exists()
    assert _fingerprints(database_url) == recorded
    assert _cli(tmp_path, "check", data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(key)).returncode == 0


def test_a_refused_start_makes_no_audit_key(tmp_path: Path, database_url: str) -> None:
    key, _ = _key_file(tmp_path, "pseudonym.key")
    _start_and_stop(tmp_path, tmp_path / "data", database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    # a new folder holding the identity of another database's folder (a copy of it): refused
    copy = tmp_path / "copy"
    copy.mkdir(mode=0o700)
    shutil.copy(tmp_path / "data" / "store.id", copy / "store.id")
    _refused_start(tmp_path, copy, f"sqlite:///{tmp_path / 'new.db'}", ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    assert not (copy / "audit.key").exists()
    assert (copy / "store.id").read_bytes() == (tmp_path / "data" / "store.id").read_bytes()
    # a database that cannot be opened (one that does not exist on the server)
    fresh = tmp_path / "fresh"
    missing = sa.make_url(PG_URL).set(database="key_guard_no_such_database").render_as_string(hide_password=False)
    _refused_start(tmp_path, fresh, missing, ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    assert not (fresh / "audit.key").exists()


def test_an_audit_trail_whose_chain_start_was_moved_is_refused(tmp_path: Path, database_url: str) -> None:
    """Privacy review F1: a database writer without audit.key cleared every event's chain MAC and
    moved the chain's start (key_fingerprints ``audit-start``) past the last event; ``verify``
    passed (exit 0, every event "stored before the chain") and serve chained on from there, so
    every earlier event could be rewritten unseen. The start is sealed under the chain's key:
    verify finds it (exit 1), serve refuses to start (exit 2), both saying why."""
    data = tmp_path / "data"
    key, _ = _key_file(tmp_path, "pseudonym.key")
    _start_and_stop(tmp_path, data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    sound = _cli(tmp_path, "verify", data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    assert sound.returncode == 0, sound.stdout + sound.stderr
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:
            last = conn.execute(sa.text("SELECT max(seq) FROM audit")).scalar_one()
            assert last >= 2  # the start and the stop, at least
            conn.execute(sa.text("UPDATE audit SET json = replace(json, '\"outcome\":\"0\"', '\"outcome\":\"4\"') "
                                 "WHERE seq = 1"))
            conn.execute(sa.text("UPDATE audit SET chain_mac = NULL"))
            conn.execute(sa.text("UPDATE key_fingerprints SET fingerprint = :start WHERE name = 'audit-start'"),
                         {"start": str(last + 1)})
    finally:
        engine.dispose()
    verified = _cli(tmp_path, "verify", data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "audit trail: the chain's start" in verified.stdout and "audit-start" in verified.stdout, verified.stdout
    out = _refused_start(tmp_path, data, database_url, ADAPTER_PSEUDONYM_KEY_FILE=str(key))
    assert "audit trail: the chain's start" in out, out[-2000:]
