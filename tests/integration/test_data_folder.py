"""The data folder against the database's record of it (adapter.services.data_folder): an
instance on the right database and another folder started, said it was ready and answered
every image read 404 (operations review); it is now refused at start, and verify says so. Real
SQLite files and the real PostgreSQL, the pseudonym key given so that only the folder differs."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter.config import Settings
from adapter.errors import ConfigurationError
from adapter.services.data_folder import DATA_FOLDER_FINGERPRINT, FOLDER_ID_FILE, data_folder_problem
from adapter.services.registry import build_services
from tests.conftest import ROOT
from tests.support.postgres import postgres_schema

KEY = "ab" * 32


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'records.db'}"
    else:
        with postgres_schema("folder") as url:
            yield url


def _settings(data_dir: Path, database_url: str) -> Settings:
    return Settings(data_dir=data_dir, database_url=database_url, pseudonym_key=KEY,
                    policy=ROOT / "mappings" / "policy.yaml")


def _start(settings: Settings) -> dict[str, str]:
    services = build_services(settings)
    try:
        return services.store.stored_fingerprints()
    finally:
        services.close()


def test_the_first_start_gives_folder_and_database_one_identity_kept_after(tmp_path: Path, database_url: str) -> None:
    data = tmp_path / "data"
    recorded = _start(_settings(data, database_url))[DATA_FOLDER_FINGERPRINT]
    assert (data / FOLDER_ID_FILE).read_text().strip() == recorded
    assert _start(_settings(data, database_url))[DATA_FOLDER_FINGERPRINT] == recorded  # a restart: the same
    assert [p.name for p in data.iterdir() if p.name.startswith(f".{FOLDER_ID_FILE}")] == []


def test_another_folder_for_the_same_database_is_refused(tmp_path: Path, database_url: str) -> None:
    _start(_settings(tmp_path / "data", database_url))
    with pytest.raises(ConfigurationError) as info:
        _start(_settings(tmp_path / "empty", database_url))
    assert "is not the data folder of this database's images" in info.value.diagnostics
    assert "ADAPTER_DATA_DIR" in info.value.diagnostics
    assert not (tmp_path / "empty" / FOLDER_ID_FILE).exists()  # nothing claimed on the way


def test_a_folder_of_another_database_is_refused_until_started_anew(tmp_path: Path, database_url: str) -> None:
    _start(_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'other.db'}"))
    with pytest.raises(ConfigurationError) as info:
        _start(_settings(tmp_path / "data", database_url))  # a new database over that folder
    assert "data folder of another database" in info.value.diagnostics
    assert f"delete {tmp_path / 'data' / FOLDER_ID_FILE}" in info.value.diagnostics
    (tmp_path / "data" / FOLDER_ID_FILE).unlink()  # deliberately: this database starts anew with the folder
    _start(_settings(tmp_path / "data", database_url))


def test_folders_of_two_databases_swapped_are_refused(tmp_path: Path, database_url: str) -> None:
    _start(_settings(tmp_path / "a", database_url))
    _start(_settings(tmp_path / "b", f"sqlite:///{tmp_path / 'b.db'}"))
    shutil.copy(tmp_path / "b" / FOLDER_ID_FILE, tmp_path / "a" / FOLDER_ID_FILE)
    with pytest.raises(ConfigurationError, match="differs from the one this database names"):
        _start(_settings(tmp_path / "a", database_url))


def test_verify_names_the_problem_and_serve_refuses_it(tmp_path: Path, database_url: str) -> None:
    settings = _settings(tmp_path / "data", database_url)
    services = build_services(settings)
    try:
        assert data_folder_problem(settings.data_dir, services.store) is None
        assert data_folder_problem(tmp_path / "elsewhere", services.store) is not None
    finally:
        services.close()
