"""Security review 4 (DICOM): peers that connect and send nothing cannot lock the allowed PACS
out of the SCP. The ARTIM timer (PS3.8 9.1.5) is short and configurable
(ADAPTER_DICOM_ACSE_TIMEOUT), one address holds at most a few connections that have not
associated (ADAPTER_DICOM_MAX_PENDING_PER_ADDRESS), and the SCP keeps accepting after the
process ran out of file descriptors (EMFILE) instead of losing its threads."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter.config import Settings
from adapter.dicom import AeOptions, StoreSCP, connections
from adapter.services.registry import Services
from tests.conftest import require_or_skip, wait_until
from tests.support.app import adapter_client
from tests.support.dcmtk import dcmtk_missing, echoscu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("pynetdicom_config")]

ATTACKER = "127.0.0.2"  # the silent peer's address; echoscu (the allowed PACS) connects from 127.0.0.1


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    with adapter_client(tmp_path) as (_, services):
        yield services


@contextlib.contextmanager
def running(services: Services, **options: object) -> Iterator[StoreSCP]:
    server = StoreSCP(AeOptions(**{"port": 0, "allowed_ae_titles": ("PACS",), **options}),  # type: ignore[arg-type]
                      services.dicom_ingest)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _silent(port: int, count: int, source: str = ATTACKER) -> list[socket.socket]:
    """``count`` connections from ``source`` that send nothing (no A-ASSOCIATE-RQ)."""
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        socks.append(sock)
    return socks


def _closed_by_peer(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_the_artim_timeout_is_short_by_default_and_a_setting(services: Services) -> None:
    policy = services.tables.policy
    assert AeOptions.from_settings(Settings(), policy).acse_timeout <= 10
    options = AeOptions.from_settings(Settings(dicom_acse_timeout=2.5, dicom_max_pending_per_address=3), policy)
    assert options.acse_timeout == 2.5
    assert options.max_pending_per_address == 3


def test_a_connection_that_sends_no_a_associate_rq_is_closed_at_the_artim_timeout(services: Services) -> None:
    """PS3.8 9.1.5: ARTIM runs from the connection; no A-ASSOCIATE-RQ by its end, the
    connection is closed."""
    options = AeOptions.from_settings(Settings(dicom_acse_timeout=1.0), services.tables.policy)
    with running(services, acse_timeout=options.acse_timeout) as server:
        (sock,) = _silent(server.port, 1)
        with sock:
            started = time.monotonic()
            assert _closed_by_peer(sock, 8)
            assert time.monotonic() - started < 4


def test_an_allowed_pacs_gets_in_while_one_address_holds_many_silent_sockets(services: Services) -> None:
    """The review's reproduction: 70 silent connections from one address, then echoscu as the
    allowed PACS. Every one was held for the ACSE timeout and the 64th filled the SCP: the PACS
    was aborted at once. Now that address holds a few; the rest are closed on arrival."""
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    with running(services) as server:
        socks = _silent(server.port, 70)
        try:
            time.sleep(0.5)
            result = echoscu(server.port, "ADAPTER", calling_aet="PACS", check=False)
            assert result.returncode == 0, result.stderr
            held = [s for s in socks if not _closed_by_peer(s, 0.05)]
            assert len(held) <= AeOptions().max_pending_per_address
        finally:
            for sock in socks:
                sock.close()


def test_connections_past_the_pending_cap_of_one_address_are_closed_on_arrival(services: Services,
                                                                              caplog: pytest.LogCaptureFixture,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, logger="adapter.dicom")
    monkeypatch.setattr(connections, "_pending", connections._OncePerMinute())  # logged once a minute
    with running(services, max_pending_per_address=2) as server:
        socks = _silent(server.port, 2)
        try:
            wait_until(lambda: server._ae is not None and len(server._ae.active_associations) >= 2)
            (extra,) = _silent(server.port, 1)
            assert _closed_by_peer(extra, 5)
            extra.close()
            (other,) = _silent(server.port, 1, source="127.0.0.3")  # another address is not held back
            assert not _closed_by_peer(other, 0.3)
            other.close()
        finally:
            for sock in socks:
                sock.close()
    assert any("127.0.0.2" in r.getMessage() and "not associated" in r.getMessage() for r in caplog.records)


def _fill_descriptors() -> list[int]:
    """Open /dev/null until the process has no file descriptor left."""
    fds = []
    with contextlib.suppress(OSError):
        while True:
            fds.append(os.open(os.devnull, os.O_RDONLY))
    return fds


def _later_echo(port: int, delay: float, out: Path) -> subprocess.Popen[bytes]:
    """echoscu as the allowed PACS, started now (this process can still make its pipes) and
    calling ``delay`` seconds later, its output in ``out``."""
    with out.open("wb") as sink:
        return subprocess.Popen(["sh", "-c", f'sleep {delay}; exec "$0" "$@"', shutil.which("echoscu") or "echoscu",
                                 "-aet", "PACS", "-aec", "ADAPTER", "-to", "20", "-ta", "20", "127.0.0.1", str(port)],
                                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def test_the_scp_survives_running_out_of_file_descriptors(services: Services, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Review 4: with the process out of descriptors (slow HTTP uploads had taken them), an
    accepted association's thread died on EMFILE (its wake-up pipe) with a traceback outside the
    adapter's log format, and the PACS was turned away. Now the association goes on without the
    pipe (polling, as pynetdicom does), accepting backs off and tries again, and once descriptors
    are free the PACS waiting in the listen queue is served."""
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    caplog.set_level(logging.WARNING)
    monkeypatch.setattr(connections, "_descriptors", connections._OncePerMinute())
    errors: list[str] = []
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: errors.append(repr(args.exc_value))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fds: list[int] = []
    try:
        with running(services) as server:
            one_left = _later_echo(server.port, 1.0, tmp_path / "one_left.txt")
            none_left = _later_echo(server.port, 4.0, tmp_path / "none_left.txt")
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, len(os.listdir("/proc/self/fd")) + 64), hard))
            fds = _fill_descriptors()
            os.close(fds.pop())  # one left: the connection is accepted, nothing more can be opened
            assert one_left.wait(30) == 0, (tmp_path / "one_left.txt").read_text()
            fds += _fill_descriptors()  # none left: accepting fails until some are free
            time.sleep(6.0)
            for fd in fds:
                os.close(fd)
            fds = []
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            assert none_left.wait(30) == 0, (tmp_path / "none_left.txt").read_text()
            result = echoscu(server.port, "ADAPTER", calling_aet="PACS", check=False)
            assert result.returncode == 0, result.stderr
    finally:
        for fd in fds:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        threading.excepthook = previous_hook
    assert errors == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("adapter.dicom")]
    assert any("file descriptors" in r.getMessage() for r in caplog.records if r.name == "adapter.dicom")
