"""Shared test wiring: tier markers from folders, a clean environment, and the session-wide
check that every FHIR R4 and R5 resource the adapter emitted during the tests validates with the
independent npm validators (0 errors)."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"

# Every FHIR R4 (and R5) resource an adapter response carried, validated once at the end of the
# session: R4 with tools/validate-fhir.mjs, R5 with tools/validate-fhir-r5.mjs. An R4 answer in
# FHIR XML is validated as XML (the driver reads it with FHIR.js, not with the adapter's reader).
EMITTED_R4: list[dict[str, Any] | bytes] = []
EMITTED_R5: list[dict[str, Any] | bytes] = []


def record_emitted(body: Any, fhir_version: str = "4") -> None:
    """Collect a FHIR response body (or a list of them) of ``fhir_version`` ("4" or "5") for
    the end-of-session validation."""
    if fhir_version not in ("4", "5"):
        raise ValueError(f"fhir_version is '4' or '5', not {fhir_version!r}")
    if isinstance(body, list):
        for b in body:
            record_emitted(b, fhir_version)
    elif isinstance(body, dict) and "resourceType" in body:
        (EMITTED_R5 if fhir_version == "5" else EMITTED_R4).append(body)


def record_emitted_xml(document: bytes, fhir_version: str = "4") -> None:
    """Collect a FHIR XML response body for the end-of-session validation: R4 as XML (read by
    FHIR.js in the validator); R5, for which no independent XML reader is installed, read by
    the adapter's own (adapter.api.fhir_xml) and validated as the R5 JSON it is."""
    if fhir_version == "5":
        from adapter.api.fhir_xml import from_xml

        record_emitted(from_xml(document, "5"), "5")
    else:
        EMITTED_R4.append(bytes(document))


def wait_until(condition: Any, timeout: float = 10.0) -> None:
    """Until ``condition()`` holds; AssertionError after ``timeout`` seconds (what another
    thread or process does, e.g. an association ending, is seen a little later)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def require_or_skip(ok: bool, why: str) -> None:
    """In CI a missing peer, database or tool fails the run; elsewhere the test is skipped."""
    if not ok:
        if IN_CI:
            pytest.fail(f"required in CI: {why}")
        pytest.skip(why)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if parts and parts[0] in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, parts[0]))


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist"):
        config.pluginmanager.register(_EmittedAcrossWorkers(), "emitted-across-workers")


class _EmittedAcrossWorkers:
    """Under pytest-xdist (``make test`` runs ``-n``) each worker process collects what its own
    tests emitted: it writes them to a folder the controller made, and the controller validates
    them all once at its session's end (a worker's exit status would not fail the run)."""

    def __init__(self) -> None:
        self.folder: Path | None = None

    @pytest.hookimpl
    def pytest_configure_node(self, node: Any) -> None:
        if self.folder is None:
            import tempfile

            self.folder = Path(tempfile.mkdtemp(prefix="emitted-fhir-"))
        node.workerinput["emitted_fhir_folder"] = str(self.folder)


def _worker_input(config: pytest.Config) -> dict[str, Any] | None:
    return getattr(config, "workerinput", None)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    worker = _worker_input(session.config)
    if worker is not None:  # an xdist worker: hand its resources to the controller
        folder = Path(worker["emitted_fhir_folder"])
        for version, emitted in (("R4", EMITTED_R4), ("R5", EMITTED_R5)):
            records = [{"xml": base64.b64encode(r).decode()} if isinstance(r, bytes) else {"json": r}
                       for r in emitted]
            (folder / f"{worker['workerid']}-{version}.json").write_text(json.dumps(records))
        return
    plugin = session.config.pluginmanager.get_plugin("emitted-across-workers")
    if plugin is not None and plugin.folder is not None:  # the controller: read what workers left
        import shutil

        for path in sorted(plugin.folder.glob("*.json")):
            target = EMITTED_R5 if path.stem.endswith("-R5") else EMITTED_R4
            target.extend(base64.b64decode(r["xml"]) if "xml" in r else r["json"]
                          for r in json.loads(path.read_text()))
        shutil.rmtree(plugin.folder, ignore_errors=True)
    from tests.support.fhir_validator import validate_r4, validate_r5

    for version, emitted, validate in (("R4", EMITTED_R4, validate_r4), ("R5", EMITTED_R5, validate_r5)):
        if emitted and not _validate_emitted(session, version, emitted, validate):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _validate_emitted(session: pytest.Session, version: str, emitted: list[dict[str, Any] | bytes],
                      validate: Any) -> bool:
    """Validate the emitted resources of one FHIR version; report the count and errors; False
    on any error (in CI, missing validators are one)."""
    # identical bodies (the same record read many times) are validated once
    unique = list({r if isinstance(r, bytes) else json.dumps(r, sort_keys=True): r for r in emitted}.values())
    try:
        errors = validate(unique)
    except RuntimeError as exc:
        errors = [f"FHIR {version} validators unavailable: {exc}"]
        if not IN_CI:
            print(f"\nWARNING: {errors[0]} (not checked outside CI)")
            return True
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    line = f"FHIR validation of {len(unique)} emitted {version} resources: {len(errors)} error(s)"
    if reporter is not None:
        reporter.write_line(line)
        for e in errors[:50]:
            reporter.write_line(f"  {e}")
    return not errors


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ADAPTER_* setting leaks into a test from the environment."""
    for key in list(os.environ):
        if key.startswith("ADAPTER_"):
            monkeypatch.delenv(key, raising=False)
    yield


@pytest.fixture
def pynetdicom_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """For a test that starts the adapter's SCP in this process: the process-wide switches it
    sets (pynetdicom's chunked receive and send, pydicom's reading validation) and the spool
    folder are restored after the test, so no later test runs under them."""
    import tempfile

    import pydicom
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_RECV_CHUNKED_DATASET", _config.STORE_RECV_CHUNKED_DATASET)
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", _config.STORE_SEND_CHUNKED_DATASET)
    monkeypatch.setattr(_config, "LOG_REQUEST_IDENTIFIERS", _config.LOG_REQUEST_IDENTIFIERS)
    monkeypatch.setattr(_config, "LOG_RESPONSE_IDENTIFIERS", _config.LOG_RESPONSE_IDENTIFIERS)
    for name in [n for n in logging.root.manager.loggerDict if n.split(".")[0] == "pynetdicom"]:
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "filters", list(logger.filters))
    monkeypatch.setattr(pydicom.config.settings, "reading_validation_mode",
                        pydicom.config.settings.reading_validation_mode)
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    return spool
