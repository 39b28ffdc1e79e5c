"""Run the adapter as its own process, the way a deployment does, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import ROOT
from tests.support.orthanc import free_ports


@dataclass(frozen=True)
class RunningAdapter:
    url: str
    http_port: int
    dicom_port: int
    pid: int
    log: Path


def _temp_dir(workdir: Path) -> Path:
    folder = workdir / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def running_adapter(workdir: Path, *, command: Sequence[str] | None = None,
                    ready: Callable[[RunningAdapter], bool] | None = None, timeout: float = 60,
                    **env: str) -> Iterator[RunningAdapter]:
    """Start ``python -m adapter serve`` (or ``command``) in its own process group on free
    loopback ports with its own data dir; wait until /health answers (and ``ready``, if given);
    stop it with SIGTERM on exit (SIGKILL after 30 s, and the test fails unless it failed
    already). ``env``: extra ADAPTER_* settings."""
    http_port, dicom_port = free_ports(2)
    full_env = {**os.environ, "ADAPTER_HTTP_PORT": str(http_port), "ADAPTER_DICOM_PORT": str(dicom_port),
                "ADAPTER_DATA_DIR": str(workdir / "data"), "ADAPTER_LOG_LEVEL": "INFO",
                # its temp files (the workers' metrics folder) stay in the test's folder
                "TMPDIR": str(_temp_dir(workdir)), **env}
    log_path = workdir / "server.log"
    test_passed = hung = False
    with log_path.open("wb") as log:
        proc = subprocess.Popen(list(command or [sys.executable, "-m", "adapter", "serve"]), cwd=ROOT,
                                env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        server = RunningAdapter(url=f"http://127.0.0.1:{http_port}", http_port=http_port, dicom_port=dicom_port,
                                pid=proc.pid, log=log_path)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"the adapter exited: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(f"{server.url}/health", timeout=1).status_code == 200 \
                            and (ready is None or ready(server)):
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the adapter did not answer within {timeout:.0f} s: "
                                         f"{log_path.read_text()[-2000:]}")
                time.sleep(0.2)
            yield server
            test_passed = True
        finally:
            with contextlib.suppress(ProcessLookupError):  # a test may have ended it (and its group) itself
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
                hung = False
            except subprocess.TimeoutExpired:
                hung = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    # a server that SIGTERM does not stop is a defect of its own (README, Stopping), not the test's
    # business to hide: said here unless the test itself failed
    if hung and test_passed:
        raise AssertionError(f"the adapter did not stop within 30 s of SIGTERM: {log_path.read_text()[-2000:]}")
