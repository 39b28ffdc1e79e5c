"""A store of an older schema version met by the new version's commands as their own processes
(operations review, "ops" 1 and 4): ``audit`` (the SIEM export a cron job runs) and ``verify``
upgraded it under the older instances still running on it, which then answered 503 until the new
version was started. They now refuse it, exit 2, and leave it as it was; only ``serve`` upgrades,
and says so in one INFO line. A store made now, its audit.key made with it, is said too."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from adapter.store.schema import SCHEMA_VERSION
from tests.conftest import ROOT
from tests.support.app import adapter_client, metadata, post_photo
from tests.support.postgres import postgres_schema
from tests.support.server import running_adapter


@contextmanager
def _database(tmp_path: Path, kind: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'data' / 'adapter.db'}"
    else:
        with postgres_schema("upgrade_e2e") as url:
            yield url


def _older_store(tmp_path: Path, url: str) -> sa.Engine:
    """A store with a photo, as schema SCHEMA_VERSION - 1 left it (from schema 22 on, the upgrades
    to the last one are steps a store that never needed them takes as no change: no receipt to
    move, the references already filled)."""
    assert SCHEMA_VERSION - 1 >= 22, "the chain's start of a store before 21 is not sealed: take that back too"
    with adapter_client(tmp_path, database_url=url) as (client, services):
        post_photo(client, ROOT / "samples" / "wound.jpg", metadata())
        services.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE schema_version SET version = {SCHEMA_VERSION - 1} "
                             f"WHERE version = {SCHEMA_VERSION}")
    return engine


def _adapter(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_DATA_DIR=str(tmp_path / "data"), ADAPTER_DATABASE_URL=url,
               ADAPTER_POLICY=str(ROOT / "mappings" / "policy.yaml"))
    return subprocess.run([sys.executable, "-m", "adapter", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def _version(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.exec_driver_sql("SELECT max(version) FROM schema_version").scalar_one())


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_audit_and_verify_refuse_a_store_of_another_schema_and_leave_it_as_it_was(tmp_path: Path, kind: str) -> None:
    with _database(tmp_path, kind) as url:
        engine = _older_store(tmp_path, url)
        try:
            for command in (["audit", "--limit", "1"], ["verify"], ["verify", "--digests"]):
                done = _adapter(tmp_path, url, *command)
                assert done.returncode == 2, done.stdout + done.stderr
                said = done.stderr
                assert f"schema version {SCHEMA_VERSION - 1}" in said and "nothing was changed" in said, said
                assert "start serve of this version" in said and "back up" in said, said
                assert not done.stdout.strip(), done.stdout  # not one event exported
                assert _version(engine) == SCHEMA_VERSION - 1
            with engine.connect() as conn:  # no upgrade step ran: no version recorded past the store's
                assert conn.exec_driver_sql(f"SELECT count(*) FROM schema_version WHERE version >= {SCHEMA_VERSION}"
                                            ).scalar() == 0
            # a newer one: the newer version's commands are the ones to run
            with engine.begin() as conn:
                conn.exec_driver_sql(f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1} "
                                     f"WHERE version = {SCHEMA_VERSION - 1}")
            for command in (["audit", "--limit", "1"], ["verify"]):
                done = _adapter(tmp_path, url, *command)
                assert done.returncode == 2, done.stdout + done.stderr
                assert f"schema version {SCHEMA_VERSION + 1}" in done.stderr and "newer" in done.stderr, done.stderr
            assert _version(engine) == SCHEMA_VERSION + 1
        finally:
            engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_serve_says_in_one_line_that_it_upgraded_the_schema(tmp_path: Path, kind: str) -> None:
    with _database(tmp_path, kind) as url:
        engine = _older_store(tmp_path, url)
        try:
            with running_adapter(tmp_path, ADAPTER_DATABASE_URL=url, ADAPTER_DICOM_ENABLED="false") as server:
                assert _version(engine) == SCHEMA_VERSION
                log = server.log.read_text()
            upgraded = [line for line in log.splitlines() if "schema upgraded" in line]
            assert len(upgraded) == 1, log[-3000:]
            assert f" INFO adapter.store.schema: schema upgraded from {SCHEMA_VERSION - 1} to {SCHEMA_VERSION} in " \
                   in upgraded[0] and upgraded[0].endswith(" s"), upgraded
            # the verify after the upgrade finds it sound
            done = _adapter(tmp_path, url, "verify")
            assert done.returncode == 0, done.stdout + done.stderr
        finally:
            engine.dispose()


def test_a_new_audit_key_is_said_at_start_with_where_to_back_it_up(tmp_path: Path) -> None:
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false") as server:
        key = tmp_path / "data" / "audit.key"
        assert key.is_file()
        made = [line for line in server.log.read_text().splitlines() if "audit.key" in line]
    assert len(made) == 1 and " INFO adapter.store.audit_chain: " in made[0], made
    assert str(key) in made[0] and "back it up" in made[0], made
    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false") as again:  # made once: not said again
        assert "audit.key" not in again.log.read_text()
