"""The data folder against the database's record of it (adapter.services.data_folder): an
instance on the right database and another folder started, said it was ready and answered
every image read 404 (operations review); it is now refused at start, and verify says so. Real
SQLite files and the real PostgreSQL, the pseudonym key given so that only the folder differs."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adapter.config import Settings
from adapter.errors import ConfigurationError
from adapter.services.data_folder import (
    DATA_FOLDER_FINGERPRINT,
    FOLDER_ID_FILE,
    claim_data_folder,
    data_folder_problem,
)
from adapter.services.registry import build_services
from adapter.store import open_store
from adapter.store.locks import SCHEMA_KEY
from tests.conftest import ROOT
from tests.support.postgres import named_postgres_schema, postgres_schema, sessions_waiting_on_a_lock

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


def test_a_folder_of_another_database_is_refused_and_never_to_be_unclaimed(tmp_path: Path, database_url: str) -> None:
    # the advice was "to start this database anew with this folder's images, delete store.id": every
    # image of the other database then read as unreferenced, and the nightly removal deleted them all
    # (operations review 1)
    _start(_settings(tmp_path / "data", f"sqlite:///{tmp_path / 'other.db'}"))
    with pytest.raises(ConfigurationError) as info:
        _start(_settings(tmp_path / "data", database_url))  # a new database over that folder
    said = info.value.diagnostics
    assert "data folder of another database" in said
    assert "delete" not in said and "remove" not in said
    assert "a new database needs a new, empty data folder" in said
    assert "python -m adapter copy-store" in said  # the way to move the records with their images
    # named where it is: the README only links to it (newcomer review 9)
    assert "(docs/operations.md: Moving the records to another database)" in said
    assert "\n### Moving the records to another database\n" in (ROOT / "docs" / "operations.md").read_text()


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


#: adapter.store.sql._FINGERPRINT_LOCK, which every write of key_fingerprints takes
FINGERPRINT_LOCK = 0x1A6E5707


def test_two_instances_claiming_a_new_store_at_once_both_start(tmp_path: Path) -> None:
    """Two instances starting together on a new shared store: the second read the folder after the
    first had written store.id and before it had recorded it in the database, and exited 2 with
    "the data folder of another database" (operations review 5). A session holding the fingerprint
    lock stands in for the first instance's slow moment: the first claim waits on it, then the
    second comes."""
    data = tmp_path / "data"
    data.mkdir()
    with named_postgres_schema("folder_race") as (url, name):
        settings = _settings(data, url)
        stores = [open_store(settings.store)[0] for _ in range(2)]  # both: a new store, nothing claimed
        failures: list[BaseException] = []

        def claim(store: object) -> None:
            try:
                claim_data_folder(data, store)  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - reported below
                failures.append(exc)

        admin = create_engine(url)
        try:
            with admin.connect() as gate:
                gate.execute(text(f"SELECT pg_advisory_lock({SCHEMA_KEY})"), {"key": FINGERPRINT_LOCK})
                gate.commit()
                first = threading.Thread(target=claim, args=(stores[0],))
                first.start()
                _until(lambda: sessions_waiting_on_a_lock(admin, name) == 1)
                second = threading.Thread(target=claim, args=(stores[1],))
                second.start()
                _until(lambda: not second.is_alive() or sessions_waiting_on_a_lock(admin, name) == 2)
                gate.execute(text(f"SELECT pg_advisory_unlock({SCHEMA_KEY})"), {"key": FINGERPRINT_LOCK})
                gate.commit()
            first.join(30)
            second.join(30)
            assert failures == []
            recorded = stores[0].stored_fingerprints()[DATA_FOLDER_FINGERPRINT]
            assert (data / FOLDER_ID_FILE).read_text().strip() == recorded
        finally:
            for store in stores:
                store.close()
            admin.dispose()


def _until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
