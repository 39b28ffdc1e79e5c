"""Every setting is documented in the README; unsafe production settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adapter.config import Settings
from adapter.errors import ConfigurationError
from tests.conftest import ROOT


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f"ADAPTER_{name.upper()}" for name in Settings.model_fields
               if f"`ADAPTER_{name.upper()}`" not in readme]
    assert not missing, f"undocumented settings: {missing}"


def _readme_settings_defaults() -> dict[str, str]:
    """The Settings table of the README: ``ADAPTER_X`` -> its default column, as written."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`ADAPTER_") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells[1]
    return rows


def test_the_readme_states_every_setting_with_its_default() -> None:
    """What the Settings table says of a default is what Settings holds: a literal in backticks is
    the value (`./data` the path, `true` the boolean), 'empty' is the empty string, and any other
    words (computed at start: from the request, in the data dir) stand for no value set."""
    table = _readme_settings_defaults()
    assert sorted(table) == sorted(f"ADAPTER_{name.upper()}" for name in Settings.model_fields)
    wrong = {}
    for name, field in Settings.model_fields.items():
        said, default = table[f"ADAPTER_{name.upper()}"], field.default
        if said.startswith("`") and said.endswith("`"):
            literal = said.strip("`")
            if isinstance(default, bool):
                ok = literal == str(default).lower()
            elif isinstance(default, Path):
                ok = Path(literal) == default
            elif isinstance(default, int | float):
                ok = float(literal) == default
            else:
                ok = literal == str(default)
        elif said.strip("()") == "empty":
            ok = default == ""
        else:
            ok = default is None
        if not ok:
            wrong[f"ADAPTER_{name.upper()}"] = (said, default)
    assert not wrong, f"README's Settings table gives other defaults: {wrong}"


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


def test_an_adapter_variable_that_is_no_setting_is_refused_naming_the_setting_meant(monkeypatch, capsys) -> None:
    """README review: ADAPTER_DICOM_ALLOWED_AE_TITLE=PACS (singular) passed `check` and every
    DICOM caller was then rejected; a misspelt ADAPTER_ENVIRONMENT or ADAPTER_PSEUDONYM_KEY
    would as silently run with the default. An ADAPTER_ variable that is no setting is refused
    (serve and check exit 2), naming the setting it most resembles."""
    from adapter.__main__ import main

    monkeypatch.setenv("ADAPTER_DICOM_ALLOWED_AE_TITLE", "PACS")
    monkeypatch.setenv("ADAPTER_PSEUDONYM_KEY", "SECRET-KEY-" + "k" * 40)
    with pytest.raises(ConfigurationError) as info:
        Settings()
    assert "ADAPTER_DICOM_ALLOWED_AE_TITLE" in str(info.value) and "ADAPTER_DICOM_ALLOWED_AE_TITLES" in str(info.value)
    assert "PACS" not in str(info.value).replace("ADAPTER_DICOM_ALLOWED_AE_TITLE", "")  # the name, not the value
    assert main(["check"]) == 2
    said = capsys.readouterr().err
    # and never another setting's value: pydantic's ValidationError printed the settings, the key among them
    assert "ADAPTER_DICOM_ALLOWED_AE_TITLES" in said and "SECRET" not in said and "kkkk" not in said, said
    monkeypatch.delenv("ADAPTER_PSEUDONYM_KEY")
    monkeypatch.delenv("ADAPTER_DICOM_ALLOWED_AE_TITLE")
    monkeypatch.setenv("adapter_http_port", "9998")  # read whatever its case, as pydantic-settings reads it
    monkeypatch.setenv("ADAPTER_SUPERVISOR_PID", "1")  # what serve sets for its workers
    assert Settings().http_port == 9998


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


def test_the_default_policy_is_the_working_directorys_else_the_installed_copy(tmp_path, monkeypatch) -> None:
    # an installed package run outside the checkout found no mappings/policy.yaml (ops review 5)
    from adapter import config

    installed = tmp_path / "prefix" / "policy.yaml"
    monkeypatch.setattr(config, "installed_policy", lambda: installed)
    monkeypatch.chdir(tmp_path)
    assert Settings().resolved_policy == installed
    assert Settings().resolved_mappings_dir == installed.parent
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "policy.yaml").write_text("version: 1\n")
    assert Settings().resolved_policy == Path("mappings/policy.yaml")
    (tmp_path / "mappings" / "policy.yaml").unlink()
    assert Settings(policy=Path("other.yaml")).resolved_policy == Path("other.yaml")  # as given, even if missing
    monkeypatch.setattr(config, "installed_policy", lambda: None)
    assert Settings().resolved_policy == Path("mappings/policy.yaml")  # missing: named as the setting says


def test_the_installed_example_policy_is_not_used_in_production(tmp_path, monkeypatch) -> None:
    # code review: a production unit whose working directory changed fell back, without a word,
    # to the example policy (break-glass on, verbal consent enough) instead of the organisation's
    from adapter import config
    from adapter.errors import ConfigurationError

    monkeypatch.setattr(config, "installed_policy", lambda: tmp_path / "prefix" / "policy.yaml")
    monkeypatch.chdir(tmp_path)
    key = "k" * 40
    assert Settings(environment="production", pseudonym_key=key).policy_is_the_installed_example
    with pytest.raises(ConfigurationError, match="ADAPTER_POLICY must name the organisation's policy"):
        Settings(environment="production", pseudonym_key=key).check_safe()
    Settings(environment="production", pseudonym_key=key, policy=tmp_path / "ours.yaml").check_safe()
    Settings().check_safe()  # in development the example serves


@pytest.mark.parametrize("url", ["notaurl", "ftp://host", "https://", "http:///x", "https://h/x?a=1"])
def test_a_base_url_is_an_absolute_http_url(url: str) -> None:
    # "notaurl" was accepted, and the CapabilityStatement said implementation.url "notaurl/fhir"
    with pytest.raises(ValidationError, match="base_url"):
        Settings(base_url=url)
    assert Settings(base_url="https://adapter.example/prefix").base_url == "https://adapter.example/prefix"


def test_a_package_imported_from_its_checkout_falls_back_to_the_checkouts_example(tmp_path, monkeypatch) -> None:
    # new-user review 8: after `make run` (an editable install, which installs no data files),
    # .venv/bin/clinical-image-adapter run outside the checkout said "policy file not found"
    from adapter import config

    monkeypatch.setattr(config.sysconfig, "get_path", lambda *args: str(tmp_path / "no-data-files"))
    monkeypatch.chdir(tmp_path)
    example = ROOT / "mappings" / "policy.yaml"
    assert config.example_policies() == [example]
    s = Settings()
    assert s.resolved_policy == example and s.resolved_mappings_dir == ROOT / "mappings"
    assert s.policy_is_the_installed_example and s.policy_is_the_example
    # the production guard for the installed example holds for this copy too
    with pytest.raises(ConfigurationError, match="ADAPTER_POLICY must name the organisation's policy"):
        Settings(environment="production", pseudonym_key="k" * 40).check_safe()
    # an installed copy comes first
    installed = tmp_path / "prefix" / config.INSTALLED_MAPPINGS / "policy.yaml"
    installed.parent.mkdir(parents=True)
    installed.write_text("version: 1\n")
    monkeypatch.setattr(config.sysconfig, "get_path", lambda *args: str(tmp_path / "prefix"))
    assert config.installed_policy() == installed and config.example_policies()[1:] == [example]


def test_an_installed_package_has_no_checkout(tmp_path, monkeypatch) -> None:
    # the folder beside an installed package is site-packages: its mappings/ (another project's?) is not ours
    from adapter import config

    site = tmp_path / "site-packages"
    (site / "adapter").mkdir(parents=True)
    (site / "mappings").mkdir()
    (site / "mappings" / "policy.yaml").write_text("version: 1\n")
    monkeypatch.setattr(config, "__file__", str(site / "adapter" / "config.py"))
    assert config._checkout_mappings() is None
    (site / "pyproject.toml").write_text('[project]\nname = "another-project"\n')
    assert config._checkout_mappings() is None
    (site / "pyproject.toml").write_text('[project]\nname = "clinical-image-adapter"\n')
    assert config._checkout_mappings() == site / "mappings"


def test_the_checkouts_example_policy_is_said_to_be_the_example(monkeypatch, tmp_path) -> None:
    # new-user review 2: `make run` served mappings/policy.yaml ("Example Hospital") with nothing
    # in its log saying it was the example; a copy of it elsewhere is the operator's own file
    monkeypatch.chdir(ROOT)
    assert Settings().policy_is_the_example and not Settings().policy_is_the_installed_example
    assert Settings(policy=ROOT / "mappings" / "policy.yaml").policy_is_the_example
    ours = tmp_path / "policy.yaml"
    ours.write_text((ROOT / "mappings" / "policy.yaml").read_text())
    assert not Settings(policy=ours).policy_is_the_example
    # named, the example is the operator's choice: production refuses only the fallback to it
    Settings(environment="production", pseudonym_key="k" * 40).check_safe()


def test_the_pseudonym_key_may_come_from_a_file(tmp_path, monkeypatch) -> None:
    # new-user review 7: `docker run -e ADAPTER_PSEUDONYM_KEY=...` shows the key to `docker inspect`
    from adapter.api.asgi import settings_environment

    key = tmp_path / "pseudonym.key"
    key.write_text("s" * 40 + "\n")
    monkeypatch.setenv("ADAPTER_PSEUDONYM_KEY_FILE", str(key))
    s = Settings(environment="production")
    assert s.pseudonym_key == "s" * 40
    s.check_safe()
    # HTTP workers rebuild the settings from the environment: they read the file again, and the
    # key itself is not put in their environment
    workers = settings_environment(s)
    assert "ADAPTER_PSEUDONYM_KEY" not in workers and workers["ADAPTER_PSEUDONYM_KEY_FILE"] == str(key)
    for name, value in workers.items():
        monkeypatch.setenv(name, value)
    assert Settings() == s
    monkeypatch.setenv("ADAPTER_PSEUDONYM_KEY", "t" * 40)
    with pytest.raises(ConfigurationError, match="not both"):
        Settings()
    monkeypatch.delenv("ADAPTER_PSEUDONYM_KEY")
    key.write_text("short\n")
    with pytest.raises(ConfigurationError, match="is 5 characters; at least 32 are needed"):
        Settings(environment="production").check_safe()
    key.write_text(" \n")
    with pytest.raises(ConfigurationError, match="is empty"):
        Settings()
    key.unlink()
    with pytest.raises(ConfigurationError, match="cannot be read") as refused:
        Settings()
    assert "t" * 40 not in str(refused.value)


def test_the_interactive_docs_page_is_off_unless_asked_for_and_never_in_production() -> None:
    """Newcomer review 3: /docs served Swagger UI, its scripts loaded unpinned from a public CDN into
    the API's own origin (which does not authenticate), in production too. It is off by default;
    ADAPTER_HTTP_DOCS=true serves it in development, and production refuses that."""
    assert Settings().http_docs is False
    Settings(http_docs=True).check_safe()
    with pytest.raises(ConfigurationError, match="ADAPTER_HTTP_DOCS"):
        Settings(environment="production", pseudonym_key="x" * 40, http_docs=True).check_safe()
