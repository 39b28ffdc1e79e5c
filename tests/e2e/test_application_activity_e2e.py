"""End to end: ``python -m adapter serve`` audits its start and its stop (IHE ATNA ITI-20
Actor-start-stop, DICOM PS3.15 A.5.3.1 Application Activity), once for the service whatever the
number of HTTP workers: the start before it takes work, the stop after it stopped taking work.
Found by the audit review: neither was recorded."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT
from tests.support.audit import DCM, dicom_events, exported_trail
from tests.support.server import running_adapter

APPLICATION_ACTIVITY = "110100"
START, STOP = "110120", "110121"
ACCOUNT = pwd.getpwuid(os.getuid()).pw_name


def _trail(workdir: Path) -> list[dict[str, Any]]:
    """Every AuditEvent stored in ``workdir``'s data folder, through ``python -m adapter audit``."""
    return exported_trail(workdir / "data")


def _activity(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """The Application Activity events, as (subtype code, outcome)."""
    return [(e["subtype"][0]["code"], e["outcome"]) for e in dicom_events(events, APPLICATION_ACTIVITY)]


def _application(event: dict[str, Any]) -> dict[str, Any]:
    [agent] = [a for a in event["agent"] if a["type"]["coding"][0] == {"system": DCM, "code": "110150",
                                                                        "display": "Application"}]
    return agent


def test_serve_records_its_start_before_any_work_and_its_stop_after_it(tmp_path: Path) -> None:
    with running_adapter(tmp_path) as server:
        # a read refused for stating no purpose: work, audited
        assert httpx.get(f"{server.url}/fhir/Media", timeout=30).status_code == 403
        os.killpg(server.pid, signal.SIGTERM)
        _, status = os.waitpid(server.pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM, server.log.read_text()[-1500:]
    events = _trail(tmp_path)
    start, read, stop, export = events
    assert (start["type"]["code"], start["subtype"][0]["code"], start["action"], start["outcome"]) == \
        (APPLICATION_ACTIVITY, START, "E", "0")
    assert read["subtype"][0]["code"] == "search-type" and read["outcome"] == "4"
    assert (stop["type"]["code"], stop["subtype"][0]["code"], stop["outcome"], stop["outcomeDesc"]) == \
        (APPLICATION_ACTIVITY, STOP, "0", "stopped by SIGTERM")
    assert export["type"]["code"] == "110101"
    application = _application(start)
    assert application["who"]["identifier"]["value"] == str(server.pid)
    assert application["altId"] == "ADAPTER"  # it serves DICOM
    assert application["network"] == {"address": socket.gethostname(), "type": "1"}
    [launcher] = [a for a in start["agent"] if a["requestor"]]
    assert launcher["type"]["coding"][0]["code"] == "110151" and launcher["who"]["identifier"]["value"] == ACCOUNT
    assert _application(stop) == application
    assert "entity" not in start and "entity" not in stop


def test_several_http_workers_record_one_start_and_one_stop(tmp_path: Path) -> None:
    with running_adapter(tmp_path, ADAPTER_HTTP_WORKERS="3", ADAPTER_DICOM_ENABLED="false") as server:
        for _ in range(6):  # answered by the workers, whichever
            assert httpx.get(f"{server.url}/health/ready", timeout=30).status_code == 200
        os.killpg(server.pid, signal.SIGTERM)
        os.waitpid(server.pid, 0)
    events = _trail(tmp_path)
    assert _activity(events) == [(START, "0"), (STOP, "0")], server.log.read_text()[-1500:]
    start, stop = dicom_events(events, APPLICATION_ACTIVITY)
    # the service is the supervisor, the process the operator started and stopped
    assert _application(start)["who"]["identifier"]["value"] == str(server.pid)
    assert "altId" not in _application(start)  # no SCP
    assert _application(stop) == _application(start)


def test_a_serve_that_cannot_listen_records_its_stop_as_a_failure_and_one_refused_its_settings_nothing(
        tmp_path: Path) -> None:
    """Decided: the start is recorded once the store is open, and from then on the stop always
    is, so every start has its stop; a start refused before the store is open has no trail to
    write to and records nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_DATA_DIR=str(tmp_path / "data"), ADAPTER_DICOM_ENABLED="false")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "adapter", "serve"], cwd=ROOT, timeout=120, check=False,
                              env={**env, "ADAPTER_HTTP_PORT": str(port)}, capture_output=True, text=True)
    # exit 2 as every refused start (was uvicorn's 3: deployer review F3)
    assert done.returncode == 2 and "cannot listen on" in done.stderr, done.stderr[-1500:]
    refused = subprocess.run([sys.executable, "-m", "adapter", "serve"], cwd=ROOT, timeout=120, check=False,
                             env={**env, "ADAPTER_UID_ROOT": "not-a-uid-root"}, capture_output=True, text=True)
    assert refused.returncode == 2 and "cannot start" in refused.stderr, refused.stderr[-1500:]
    events = _trail(tmp_path)
    assert _activity(events) == [(START, "0"), (STOP, "8")], done.stderr[-1500:]
    stop = dicom_events(events, APPLICATION_ACTIVITY)[1]
    assert "HTTP server" in stop["outcomeDesc"] and f"127.0.0.1:{port} taken" in stop["outcomeDesc"], stop
