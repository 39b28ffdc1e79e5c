"""Every setting is documented in the README; unsafe production settings are refused."""

from __future__ import annotations

import pytest

from adapter.config import Settings
from adapter.errors import ConfigurationError
from tests.conftest import ROOT


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f"ADAPTER_{name.upper()}" for name in Settings.model_fields
               if f"`ADAPTER_{name.upper()}`" not in readme]
    assert not missing, f"undocumented settings: {missing}"


def test_defaults_are_the_embedded_store_on_loopback(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Settings()
    assert (s.http_host, s.http_port) == ("127.0.0.1", 8080)
    assert s.resolved_database_url.startswith("sqlite:///") and s.resolved_database_url.endswith("data/adapter.db")


def test_environment_variables_are_read(monkeypatch) -> None:
    monkeypatch.setenv("ADAPTER_HTTP_PORT", "9999")
    monkeypatch.setenv("ADAPTER_DATABASE_URL", "postgresql+psycopg://u@h/db")
    s = Settings()
    assert s.http_port == 9999 and s.resolved_database_url == "postgresql+psycopg://u@h/db"


def test_production_refuses_a_missing_pseudonym_key() -> None:
    with pytest.raises(ConfigurationError):
        Settings(environment="production").check_safe()
    Settings(environment="production", pseudonym_key="x" * 40).check_safe()


def test_cors_origins_are_origins_and_never_a_wildcard() -> None:
    s = Settings(cors_origins=" https://viewer.example.org , http://127.0.0.1:3000/ ")
    assert s.allowed_cors_origins == ["https://viewer.example.org", "http://127.0.0.1:3000"]
    assert Settings().allowed_cors_origins == []
    for bad in ("*", "https://*.example.org", "viewer.example.org", "https://viewer.example.org/app",
                "ftp://viewer.example.org", "https://user@viewer.example.org", "https://"):
        with pytest.raises(ConfigurationError):
            Settings(cors_origins=bad).check_safe()


def test_check_safe_refuses_a_malformed_forward_destination() -> None:
    # `python -m adapter check` relies on check_safe for the settings: a destination that is not
    # AE@host:port must fail there, not only once `serve` starts the forwarder
    with pytest.raises(ConfigurationError, match="ADAPTER_FORWARD_TO"):
        Settings(forward_to="ORTHANC:4242").check_safe()
    Settings(forward_to="ORTHANC@127.0.0.1:4242").check_safe()


@pytest.mark.parametrize("level", ["TRACE", "trace", "NOTSET", "5", ""])
def test_a_log_level_beyond_debug_or_unknown_is_refused(level: str) -> None:
    """uvicorn's TRACE logs each request's scope, query string (patient identifiers) included;
    TRACE, NOTSET or a number crashed the start with a traceback. Found by the operations review."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="log_level"):
        Settings(log_level=level)
    assert Settings(log_level="debug").log_level == "DEBUG"
