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


def test_serve_and_check_say_the_postgresql_driver_is_missing_instead_of_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # deployer review F1: an install without psycopg printed "settings ... are valid" and then a
    # ModuleNotFoundError traceback (exit 1), from check and from serve alike
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "psycopg" else real_find_spec(name, *a))
    url = "postgresql+psycopg://adapter@127.0.0.1:1/adapter"
    settings = Settings(policy=ROOT / "mappings" / "policy.yaml", data_dir=tmp_path / "data", database_url=url,
                        dicom_enabled=False)
    with caplog.at_level(logging.ERROR, logger="adapter"):
        assert serve(settings) == 2
    assert "psycopg is not installed" in caplog.messages[-1]
    monkeypatch.setenv("ADAPTER_DATABASE_URL", url)
    monkeypatch.setenv("ADAPTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ADAPTER_POLICY", str(ROOT / "mappings" / "policy.yaml"))
    assert main(["check", "--offline"]) == 2
    err = capsys.readouterr()
    assert "psycopg is not installed" in err.err and "valid" not in err.out
    assert not (tmp_path / "data").exists()


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


@pytest.mark.parametrize(("variable", "value", "said"), [
    ("ADAPTER_LOG_FORMAT", "xml", "ADAPTER_LOG_FORMAT: must be text or json"),
    ("ADAPTER_HTTP_PORT", "eighty", "ADAPTER_HTTP_PORT: Input should be a valid integer"),
    ("ADAPTER_BASE_URL", "ftp://adapter:s3cret@x", "ADAPTER_BASE_URL: must be an absolute http(s) URL"),
])
def test_an_invalid_setting_is_named_by_its_variable_without_its_value_or_pydantic_s_report(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        variable: str, value: str, said: str) -> None:
    # deployer review F5: pydantic's report named the field (log_format), quoted the value and
    # linked to errors.pydantic.dev
    monkeypatch.setenv("ADAPTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(variable, value)
    assert main(["check", "--offline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"invalid settings: {said}"), err
    assert value not in err and "pydantic" not in err and variable.removeprefix("ADAPTER_").lower() + "\n" not in err


def test_an_ae_title_too_long_is_quoted_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # deployer review F5: a 28-character title was quoted cut at 20, as if the value were mangled
    monkeypatch.setenv("ADAPTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("ADAPTER_POLICY", str(ROOT / "mappings" / "policy.yaml"))
    monkeypatch.setenv("ADAPTER_DICOM_ALLOWED_AE_TITLES", "THIS_IS_A_VERY_LONG_AE_TITLE")
    assert main(["check", "--offline"]) == 2
    assert "'THIS_IS_A_VERY_LONG_AE_TITLE' is not an AE title (28 characters" in capsys.readouterr().err


def test_a_second_stop_signal_arriving_while_the_scp_s_stop_begins_does_not_hang_the_process() -> None:
    # `make run` stopped by SIGTERM to its process group: the adapter got the signal from the
    # group and again from make as it died. The second handler ran in the main thread while
    # the first held the stop's lock (inside Thread.start), waited on that lock for ever, and
    # the process never stopped (test_make_run's server needed SIGKILL after 30 s).
    import threading

    from adapter.__main__ import _StopAtOnce

    stopped = threading.Event()
    stopper = _StopAtOnce(stopped.set)
    first_start = stopper._thread.start

    def start_interrupted_by_a_second_signal() -> None:
        stopper.start()  # the second signal's handler, run in the middle of the first's
        first_start()

    stopper._thread.start = start_interrupted_by_a_second_signal  # type: ignore[method-assign]
    signalled = threading.Thread(target=stopper.start, daemon=True)  # stands for the main thread
    signalled.start()
    signalled.join(5)
    assert not signalled.is_alive(), "the second stop signal waited for ever on the first one's lock"
    assert stopped.wait(5)
    stopper.join()


def test_a_short_pseudonym_key_is_said_at_start_in_development_and_its_length_in_production(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Newcomer review 5: a short key was taken in development without a word (and the store it
    pseudonymised cannot go to production without new pseudonyms for every patient), and
    production said the key "must be set" when it was set, too short. Its length is said, never it."""
    from adapter.errors import ConfigurationError

    key = "k3y-abc"
    for pseudonym_key, said in ((key, True), ("k" * 32, False)):
        caplog.clear()
        settings = Settings(pseudonym_key=pseudonym_key, policy=ROOT / "mappings" / "policy.yaml",
                            data_dir=tmp_path / "data", database_url="foo://", dicom_enabled=False)
        with caplog.at_level(logging.WARNING, logger="adapter"):
            assert serve(settings) == 2  # stops at the database URL, after the warnings
        warned = [m for m in caplog.messages if "pseudonym key" in m]
        assert len(warned) == int(said), caplog.messages
        if said:
            assert "7 characters" in warned[0] and "at least 32" in warned[0] and key not in warned[0]
    with pytest.raises(ConfigurationError) as refused:
        Settings(environment="production", pseudonym_key=key).check_safe()
    assert "is 7 characters; at least 32 are needed" in refused.value.diagnostics
    assert "must be set" not in refused.value.diagnostics and key not in refused.value.diagnostics
    with pytest.raises(ConfigurationError, match="must be set"):
        Settings(environment="production").check_safe()
