"""``python -m adapter``: what an operator reads when the adapter cannot start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapter.__main__ import main, serve
from adapter.config import Settings
from tests.conftest import ROOT


def test_serve_names_the_policy_not_the_dicom_scp_when_the_policy_is_missing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the DICOM SCP's services are built first, so their failure to load the policy was
    # reported as "cannot start the DICOM SCP or the forwarder"
    settings = Settings(policy=tmp_path / "nope.yaml", data_dir=tmp_path / "data")
    with caplog.at_level(logging.ERROR, logger="adapter"):
        assert serve(settings) == 2
    message = caplog.messages[-1]
    assert "nope.yaml" in message
    assert "DICOM" not in message and "forwarder" not in message


@pytest.mark.parametrize("url", ["foo://", "postgres://adapter@127.0.0.1/adapter"])
def test_serve_refuses_a_database_url_of_no_known_dialect_naming_the_setting(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, url: str) -> None:
    # NoSuchModuleError ended the start in a traceback (ops review 10); mysql:// was refused plainly
    settings = Settings(policy=ROOT / "mappings" / "policy.yaml", data_dir=tmp_path / "data", database_url=url,
                        dicom_enabled=False)
    with caplog.at_level(logging.ERROR, logger="adapter"):
        assert serve(settings) == 2
    assert "postgresql+psycopg://" in caplog.messages[-1] and "ADAPTER_DATABASE_URL" in caplog.messages[-1]


def test_serve_says_in_one_line_that_the_example_policy_is_in_force(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    # new-user review 2: `make run` logged "policy mappings/policy.yaml" and nothing said it was
    # the example ("Example Hospital", break-glass on, verbal consent enough)
    monkeypatch.chdir(ROOT)
    ours = tmp_path / "policy.yaml"
    ours.write_text((ROOT / "mappings" / "policy.yaml").read_text())
    for policy, said in ((Path("mappings/policy.yaml"), True), (ours, False)):
        caplog.clear()
        settings = Settings(policy=policy, mappings_dir=ROOT / "mappings", data_dir=tmp_path / "data",
                            database_url="foo://", dicom_enabled=False)
        with caplog.at_level(logging.INFO, logger="adapter"):
            assert serve(settings) == 2  # stops at the database URL, after saying which policy
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        example = ("mappings/policy.yaml is the example policy the adapter's source comes with: fine for trying the "
                   "adapter, not the organisation's policy (set ADAPTER_POLICY to the organisation's own)")
        assert warned == ([example] if said else []), warned


def test_audit_refuses_a_limit_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    # --limit -1 exported 0 events and exited 0 (ops review 12)
    with pytest.raises(SystemExit) as info:
        main(["audit", "--limit", "-1"])
    assert info.value.code == 2
    assert "not a positive whole number: -1" in capsys.readouterr().err
