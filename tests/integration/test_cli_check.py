"""``python -m adapter check`` as its own process: it refuses what ``serve`` refuses before it
listens (the settings, the policy, every mapping table, the SCP's AE titles), and writes nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, require_or_skip


def _run(command: str, tmp_path: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update({"ADAPTER_DATA_DIR": str(tmp_path / "data"), "ADAPTER_POLICY": str(ROOT / "mappings" / "policy.yaml"),
                "ADAPTER_HTTP_PORT": "0", "ADAPTER_DICOM_PORT": "0", **settings})
    return subprocess.run([sys.executable, "-m", "adapter", command], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def _mappings_with(tmp_path: Path, name: str, old: str, new: str) -> Path:
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    text = (mappings / name).read_text()
    assert old in text
    (mappings / name).write_text(text.replace(old, new, 1))
    return mappings / "policy.yaml"


def test_check_passes_the_shipped_configuration_and_writes_nothing(tmp_path: Path) -> None:
    done = _run("check", tmp_path)
    assert done.returncode == 0, done.stderr
    assert "valid" in done.stdout
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("setup,named", [
    (lambda t: {"ADAPTER_UID_ROOT": "abc"}, "ADAPTER_UID_ROOT"),
    (lambda t: {"ADAPTER_POLICY": str(_mappings_with(t, "dicom.yaml", "unknownIssuer: refuse",
                                                      "unknownIssuer: maybe"))},
     "dicom.yaml: patientIdentifiers.unknownIssuer"),
    # a receive rule that would fail open: camera photos filed as secondary images (dicomsafety F1)
    (lambda t: {"ADAPTER_POLICY": str(_mappings_with(t, "dicom.yaml", "imageModalities: [CR,",
                                                      "imageModalities: [XC, CR,"))},
     "dicom.yaml: receive.secondaryCapture"),
    (lambda t: {"ADAPTER_DATABASE_URL": "postgres://adapter@127.0.0.1/adapter"}, "ADAPTER_DATABASE_URL"),
    (lambda t: {"ADAPTER_DICOM_ALLOWED_AE_TITLES": "THIS_AE_TITLE_IS_TOO_LONG"}, "AE title"),
    (lambda t: {"ADAPTER_ALLOWED_HOSTS": "adapter.hospital.example, *.hospital.example"}, "ADAPTER_ALLOWED_HOSTS"),
])
def test_check_refuses_what_serve_refuses(tmp_path: Path, setup, named: str) -> None:  # type: ignore[no-untyped-def]
    # check said "valid" for a dicom.yaml and a UID root serve then refused (ops review 3)
    settings = setup(tmp_path)
    checked = _run("check", tmp_path, **settings)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert named in checked.stderr
    assert not (tmp_path / "data").exists()
    served = _run("serve", tmp_path, **settings)
    assert served.returncode == 2, served.stderr
    assert named in served.stderr


def test_the_source_package_run_outside_its_checkout_finds_its_example_policy(tmp_path: Path) -> None:
    # new-user review 8: after `make run` (an editable install, which installs no data files),
    # .venv/bin/clinical-image-adapter check outside the checkout said "policy file not found"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env["ADAPTER_DATA_DIR"] = str(tmp_path / "data")
    where = subprocess.run([sys.executable, "-c", "import adapter; print(adapter.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    # make test installs the checkout editable: in CI this always holds (require_or_skip fails the run)
    require_or_skip(Path(where).is_relative_to(ROOT), f"the package is not imported from this checkout here ({where})")
    done = subprocess.run([sys.executable, "-m", "adapter", "check"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and "valid" in done.stdout, done.stderr
    # the example, which production refuses unless ADAPTER_POLICY names it
    env.update(ADAPTER_ENVIRONMENT="production", ADAPTER_PSEUDONYM_KEY="k" * 40)
    done = subprocess.run([sys.executable, "-m", "adapter", "check"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 2 and "ADAPTER_POLICY must name the organisation's policy" in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()


def test_production_refuses_a_copy_of_the_example_policy_wherever_it_lies(tmp_path: Path) -> None:
    """Ops review 4: production refused the example policy only when the package's own copy was
    fallen back to; an unedited copy (the README's Docker steps copy mappings/ for the
    organisation to edit) ran with no word: verbal consent enough, break-glass on, "Example
    Hospital". A policy naming the example organisation (under the ISO example arc 2.999) is
    refused in production, by check and serve; edited, it is taken. Development still runs it."""
    copy = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", copy)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_DATA_DIR=str(tmp_path / "data"), ADAPTER_POLICY=str(copy / "policy.yaml"))

    def check(**more: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "adapter", "check"], cwd=tmp_path, env={**env, **more},
                              capture_output=True, text=True, timeout=60, check=False)

    production = {"ADAPTER_ENVIRONMENT": "production", "ADAPTER_PSEUDONYM_KEY": "k" * 40}
    assert check().returncode == 0
    refused = check(**production)
    assert refused.returncode == 2 and "names the example organisation" in refused.stderr, refused.stderr
    policy = copy / "policy.yaml"
    original = policy.read_text()
    # its OID changed, still "Example Hospital" (re-verification: passed), and the other way round
    for edited in (original.replace("urn:oid:2.999.1", "urn:oid:1.2.826.0.1.3680043.10.1"),
                   original.replace("Example Hospital", "St Elsewhere")):
        policy.write_text(edited)
        assert check(**production).returncode == 2
    policy.write_text(original)
    policy.write_text(policy.read_text().replace("urn:oid:2.999.1", "urn:oid:1.2.826.0.1.3680043.10.1")
                      .replace("Example Hospital", "St Elsewhere"))
    # newcomer review 8: the policy edited, dicom.yaml left as the example's (issuer HOSP filed under
    # urn:oid:2.999.1.1, the ISO example arc) was taken: a PACS's patients under the example's OID
    dicom = copy / "dicom.yaml"
    refused = check(**production)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert str(dicom) in refused.stderr and "urn:oid:2.999.1.1" in refused.stderr and "HOSP" in refused.stderr
    assert check().returncode == 0  # development still runs the example
    dicom.write_text(dicom.read_text().replace("urn:oid:2.999.1.1", "urn:oid:1.2.826.0.1.3680043.10.1.1"))
    taken = check(**production)
    assert taken.returncode == 0 and "valid" in taken.stdout, taken.stderr


def test_check_connects_to_the_database_and_says_what_serve_would_do_with_its_schema(tmp_path: Path) -> None:
    """check said "valid" for a database that does not exist, which serve then could not open (ops
    review 7): it now connects, bounded by ADAPTER_DATABASE_CONNECT_TIMEOUT, and reads the schema
    version; --offline leaves the database out."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from adapter.store.schema import SCHEMA_VERSION
    from tests.support.postgres import PG_URL, postgres_schema

    missing = make_url(PG_URL).set(database="ops_fix_no_such_database").render_as_string(hide_password=False)
    unreachable = _run("check", tmp_path, ADAPTER_DATABASE_URL=missing)
    assert unreachable.returncode == 2, unreachable.stdout + unreachable.stderr
    assert "ops_fix_no_such_database" in unreachable.stderr and "--offline" in unreachable.stderr
    assert _run("check", tmp_path, ADAPTER_DATABASE_URL=missing, ADAPTER_DATABASE_CONNECT_TIMEOUT="2").returncode == 2
    offline = subprocess.run([sys.executable, "-m", "adapter", "check", "--offline"], cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, check=False,
                             env={**{k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")},
                                  "ADAPTER_DATABASE_URL": missing,
                                  "ADAPTER_POLICY": str(ROOT / "mappings" / "policy.yaml")})
    assert offline.returncode == 0, offline.stderr
    with postgres_schema("test_cli_check") as url:
        empty = _run("check", tmp_path, ADAPTER_DATABASE_URL=url)
        assert empty.returncode == 0, empty.stderr
        assert "creates it" in empty.stdout
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE schema_version (version integer PRIMARY KEY, applied text)"))
                conn.execute(text("INSERT INTO schema_version VALUES (:v, 'x')"), {"v": SCHEMA_VERSION - 1})
            older = _run("check", tmp_path, ADAPTER_DATABASE_URL=url)
            assert older.returncode == 0 and "upgrades it" in older.stdout, older.stdout + older.stderr
            # ops review 4: a backup first, and no way back but that backup
            assert "back up the database and the data folder's keys" in older.stdout
            assert "no downgrade" in older.stdout and "cannot open the upgraded store" in older.stdout
            with engine.begin() as conn:
                conn.execute(text("INSERT INTO schema_version VALUES (:v, 'x')"), {"v": SCHEMA_VERSION + 1})
            newer = _run("check", tmp_path, ADAPTER_DATABASE_URL=url)
            assert newer.returncode == 2 and f"schema version {SCHEMA_VERSION + 1}" in newer.stderr, newer.stderr
        finally:
            engine.dispose()
    # SQLite: a file not made yet is made by serve; check makes nothing
    fresh = _run("check", tmp_path)
    assert fresh.returncode == 0 and "creates it" in fresh.stdout, fresh.stdout + fresh.stderr
    assert not (tmp_path / "data").exists()
