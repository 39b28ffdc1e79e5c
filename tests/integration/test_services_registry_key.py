"""The pseudonym key against the store's record of it (adapter.services.registry): a restore that
left pseudonym.key behind is refused rather than given a new key (ops review 8), and so is another
ADAPTER_PSEUDONYM_KEY (ops review 2); ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY accepts a new key deliberately.
Real SQLite files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapter.config import Settings
from adapter.errors import ConfigurationError
from adapter.services.registry import build_services
from tests.conftest import ROOT


def _settings(tmp_path: Path, **kwargs: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", policy=ROOT / "mappings" / "policy.yaml", **kwargs)


def _start(settings: Settings) -> str:
    """The pseudonym of one patient under the key the services start with."""
    services = build_services(settings)
    try:
        return services.pseudonymizer.pseudonym("urn:oid:2.999.1.1", "MRN-0001")
    finally:
        services.close()


def test_a_missing_key_file_is_refused_once_the_store_has_pseudonymised(tmp_path: Path) -> None:
    first = _start(_settings(tmp_path))
    key = tmp_path / "data" / "pseudonym.key"
    key.rename(tmp_path / "saved.key")
    with pytest.raises(ConfigurationError) as info:
        _start(_settings(tmp_path))
    assert "pseudonym.key is missing" in info.value.diagnostics
    assert "ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY=true" in info.value.diagnostics
    assert not key.exists()  # no new key was made
    (tmp_path / "saved.key").rename(key)
    assert _start(_settings(tmp_path)) == first


def test_another_key_file_is_refused(tmp_path: Path) -> None:
    _start(_settings(tmp_path))
    (tmp_path / "data" / "pseudonym.key").write_text("0" * 64)
    with pytest.raises(ConfigurationError, match="is not the key the records were pseudonymised under"):
        _start(_settings(tmp_path))


def test_a_new_key_is_accepted_deliberately_then_kept(tmp_path: Path) -> None:
    first = _start(_settings(tmp_path))
    (tmp_path / "data" / "pseudonym.key").unlink()
    second = _start(_settings(tmp_path, accept_new_pseudonym_key=True))
    assert second != first
    assert _start(_settings(tmp_path)) == second  # the new key is the store's from then on


def test_changing_the_configured_key_is_refused_unless_accepted(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # ops review 2: another ADAPTER_PSEUDONYM_KEY (or key file) was taken with a WARNING, re-keying the store
    first = _start(_settings(tmp_path, pseudonym_key="a" * 32))
    with pytest.raises(ConfigurationError) as info:
        _start(_settings(tmp_path, pseudonym_key="b" * 32))
    assert "ADAPTER_PSEUDONYM_KEY gives is not the key the records were pseudonymised under" in info.value.diagnostics
    assert "a" * 32 not in info.value.diagnostics and "b" * 32 not in info.value.diagnostics
    assert _start(_settings(tmp_path, pseudonym_key="a" * 32)) == first  # still the store's key
    with caplog.at_level(logging.WARNING, logger="adapter.services.registry"):
        second = _start(_settings(tmp_path, pseudonym_key="b" * 32, accept_new_pseudonym_key=True))
    assert second != first
    assert any("a new pseudonym key, accepted by ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY" in m for m in caplog.messages)
    assert _start(_settings(tmp_path, pseudonym_key="b" * 32)) == second  # the rotation is recorded
    # the key then unset, and no key file: the records' key is missing
    with pytest.raises(ConfigurationError, match="pseudonym.key is missing"):
        _start(_settings(tmp_path))
