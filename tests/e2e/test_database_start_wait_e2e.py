"""End to end: ``serve`` waits at start for a PostgreSQL that does not answer yet
(ADAPTER_DATABASE_START_WAIT, adapter.store.reach), and does not wait for one that answered and
refused. Before, a database container started a moment after the adapter's ended the start at once
(exit 2, "the record store failed ...")."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests.conftest import ROOT, require_or_skip
from tests.support.orthanc import free_ports
from tests.support.postgres import postgres_schema
from tests.support.server import running_adapter


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            target.sendall(data)
    except OSError:
        pass
    finally:
        for s in (source, target):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@contextmanager
def relay_from(port: int, to: tuple[str, int], delay: float) -> Iterator[None]:
    """A TCP relay on 127.0.0.1:``port`` to ``to``, listening from ``delay`` seconds on (until then
    a connection there is refused) until the end of the block."""
    stop = threading.Event()
    open_sockets: list[socket.socket] = []

    def serve() -> None:
        if stop.wait(delay):
            return
        with socket.create_server(("127.0.0.1", port)) as listener:
            listener.settimeout(0.2)
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                upstream = socket.create_connection(to)
                open_sockets.extend((client, upstream))
                threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
                threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        for s in open_sockets:
            s.close()


def _via(url: str, port: int) -> tuple[str, tuple[str, int]]:
    """``url`` pointed at 127.0.0.1:``port`` instead, and where it pointed."""
    parsed = make_url(url)
    return (parsed.set(host="127.0.0.1", port=port).render_as_string(hide_password=False),
            (parsed.host or "127.0.0.1", parsed.port or 5432))


def _serve_env(tmp_path: Path, url: str, wait: str) -> dict[str, str]:
    """The environment of a ``serve`` on free ports with its own data dir, the database at
    ``url`` waited for ``wait`` seconds; no other ADAPTER_* setting of this process."""
    port, dicom = free_ports(2)
    return {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")} | {
        "ADAPTER_DATA_DIR": str(tmp_path / "data"), "ADAPTER_HTTP_PORT": str(port), "ADAPTER_DICOM_PORT": str(dicom),
        "ADAPTER_DATABASE_URL": url, "ADAPTER_DATABASE_START_WAIT": wait, "ADAPTER_DATABASE_CONNECT_TIMEOUT": "2",
        "ADAPTER_DICOM_ENABLED": "false"}


def _serve(tmp_path: Path, url: str, wait: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "adapter", "serve"], cwd=ROOT, env=_serve_env(tmp_path, url, wait),
                          capture_output=True, text=True, timeout=120, check=False)


def test_serve_waits_for_a_database_that_answers_a_moment_later(tmp_path: Path) -> None:
    [port] = free_ports(1)
    with postgres_schema("test_start_wait") as url:
        relayed, upstream = _via(url, port)
        with relay_from(port, upstream, delay=4.0), running_adapter(
                tmp_path, ADAPTER_DATABASE_URL=relayed, ADAPTER_DICOM_ENABLED="false",
                ADAPTER_DATABASE_START_WAIT="60", ADAPTER_DATABASE_CONNECT_TIMEOUT="2", timeout=90) as server:
            ready = httpx.get(f"{server.url}/health/ready", timeout=10)
            assert ready.status_code == 200, ready.text
            log = server.log.read_text()
    assert "trying again in" in log and "ADAPTER_DATABASE_START_WAIT" in log, log[-2000:]
    assert "Connection refused" in log, log[-2000:]  # the line before says why


def test_serve_gives_up_on_a_database_that_never_answers_after_its_wait(tmp_path: Path) -> None:
    [port] = free_ports(1)  # nothing listens there
    started = time.monotonic()
    done = _serve(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{port}/test", "3")
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert "did not answer within ADAPTER_DATABASE_START_WAIT (3 s)" in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("trying again in") >= 2, done.stderr[-2000:]
    assert took < 60


def test_serve_does_not_wait_for_a_database_that_refused(tmp_path: Path) -> None:
    with postgres_schema("test_start_refused") as url:
        missing = make_url(url).set(database="no_such_database_here").render_as_string(hide_password=False)
        started = time.monotonic()
        done = _serve(tmp_path, missing, "60")
        took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert "does not exist" in done.stderr and "trying again" not in done.stderr, done.stderr[-2000:]
    assert took < 30, f"waited {took:.0f} s for a database that does not exist"


def _waiting(tmp_path: Path, command: list[str]) -> subprocess.Popen[str]:
    """``command`` (serve, perhaps under unshare) waiting for a database nobody answers for."""
    [port] = free_ports(1)  # nothing listens there
    env = _serve_env(tmp_path, f"postgresql+psycopg://postgres@127.0.0.1:{port}/test", "120")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    lines: list[str] = []
    assert proc.stdout is not None
    while time.monotonic() < deadline:  # until it waits
        line = proc.stdout.readline()
        lines.append(line)
        if "trying again in" in line or not line:
            break
    assert "trying again in" in lines[-1], "".join(lines)[-2000:]
    return proc


def _stopped(proc: subprocess.Popen[str], signum: int, *, pid: int | None = None) -> tuple[int, str]:
    os.kill(pid or proc.pid, signum)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"still waiting 15 s after the signal: {out[-2000:]}") from None
    return proc.returncode, out


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_ends_the_wait_at_once_without_a_traceback(tmp_path: Path, signum: signal.Signals) -> None:
    # re-verification R2: Ctrl-C during the wait printed an 88-line traceback
    proc = _waiting(tmp_path, [sys.executable, "-m", "adapter", "serve"])
    status, out = _stopped(proc, signum)
    assert status == -signum, out[-2000:]  # ended by the signal, as a stop while serving is
    assert f"stopped by {signum.name} while starting" in out and "Traceback" not in out, out[-2000:]


def test_as_pid_1_sigterm_ends_the_wait(tmp_path: Path) -> None:
    """Re-verification R1: as a container's PID 1 (the Dockerfile's CMD) SIGTERM was ignored for
    the whole wait (no handler yet, and the kernel ignores a PID 1's default action): docker
    stop waited for its SIGKILL. In a PID namespace of its own, as the deployer review did."""
    unshare = shutil.which("unshare")
    require_or_skip(unshare is not None and os.geteuid() == 0, "unshare and root are needed for a PID namespace")
    assert unshare is not None
    proc = _waiting(tmp_path, [unshare, "--pid", "--fork", "--kill-child", sys.executable, "-m", "adapter", "serve"])
    # the adapter is unshare's child, PID 1 in its namespace: signal it by its outer pid
    child = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True,
                               check=True).stdout.split()[0])
    status, out = _stopped(proc, signal.SIGTERM, pid=child)
    assert status == 0, out[-2000:]  # as PID 1: exit 0 (README, Stopping)
    assert "stopped by SIGTERM while starting" in out, out[-2000:]
