"""Orthanc as a real PACS peer for tests and benchmarks, on loopback only.

    with OrthancPeer(tmp_path) as orthanc:
        orthanc.upload(dicom_bytes)          # POST /instances
        orthanc.instances()                  # ["<orthanc id>", ...]
        orthanc.url                          # http://127.0.0.1:<free port>
        orthanc.dicom_port, orthanc.aet      # its C-STORE SCP

Debian 12's Orthanc 1.10 has no bind-address option, so it is started with the LD_PRELOAD shim
built by ``tools/install-peers.sh`` (``$PEERS/lib/bind-localhost.so``; ``$PEERS``, else ``$PEERS_DIR``,
else ``<repo>/.peers``), and after start-up ``ss`` must show it listening on loopback only, else it
is stopped and an error raised. ``TCP_NODELAY=1`` is put in its environment: Debian's DCMTK
inside Orthanc keeps Nagle's algorithm on otherwise and every C-STORE stalls ~45 ms.

The helpers at the top (``peers_dir``, ``shim_path``, ``free_port``, ``assert_loopback_only``,
``peer_env``) are shared with ``tests/support/dcmtk.py``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Self

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class PeerUnavailable(RuntimeError):
    """A peer program (or the bind shim) is not installed: run tools/install-peers.sh."""


class PeerError(RuntimeError):
    """A peer was installed but failed to start, or did something it must not."""


# --------------------------------------------------------------------------- shared helpers


def peers_dir() -> Path:
    """Where tools/install-peers.sh put its output: $PEERS, else $PEERS_DIR, else <repo>/.peers."""
    return Path(os.environ.get("PEERS") or os.environ.get("PEERS_DIR") or REPO_ROOT / ".peers")


def shim_path() -> Path:
    return peers_dir() / "lib" / "bind-localhost.so"


def require_shim() -> Path:
    shim = shim_path()
    if not shim.is_file():
        raise PeerUnavailable(
            f"missing {shim} (run tools/install-peers.sh); refusing to start a peer "
            "that would listen on all interfaces"
        )
    return shim


def peer_env(**extra: str) -> dict[str, str]:
    """Environment for a peer process: loopback shim preloaded, Nagle off for DCMTK."""
    env = dict(os.environ)
    env["LD_PRELOAD"] = str(require_shim())
    env["TCP_NODELAY"] = "1"
    env.update(extra)
    return env


def start_with_retries(start_once: Callable[[], None], stop: Callable[[], None], *, attempts: int) -> None:
    """Start a peer on a free port; a PeerError (e.g. the port was taken before the peer bound
    it) is retried up to ``attempts`` times, anything else stops the peer and propagates."""
    for attempt in range(attempts):
        try:
            start_once()
            return
        except PeerError:
            stop()
            if attempt == attempts - 1:
                raise
        except BaseException:
            stop()
            raise


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on loopback (the kernel picks; a small race remains)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free ports (all sockets held open until every port is chosen)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


def listening_sockets(pid: int) -> list[str]:
    """Local addresses (``host:port``) on which process ``pid`` listens (TCP) or is bound (UDP), per ss."""
    ss = shutil.which("ss")
    if ss is None:
        raise PeerUnavailable("ss not found (apt-get install iproute2; tools/install-peers.sh)")
    out = subprocess.run(
        [ss, "-H", "-l", "-t", "-u", "-n", "-p"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    addrs = []
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        fields = line.split()
        if len(fields) >= 5:
            addrs.append(fields[4])  # Netid State Recv-Q Send-Q Local Peer Process
    return addrs


def assert_loopback_only(pid: int, what: str) -> list[str]:
    addrs = listening_sockets(pid)
    if not addrs:
        raise PeerError(f"{what} (pid {pid}) listens on nothing according to ss")
    bad = [a for a in addrs if not is_loopback_host(a.rsplit(":", 1)[0])]
    if bad:
        raise PeerError(f"{what} (pid {pid}) listens on non-loopback address(es) {bad}")
    return addrs


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """terminate, then kill after ``grace`` seconds; always reaps the child."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- Orthanc


def orthanc_binary() -> str | None:
    return shutil.which("Orthanc")


def orthanc_missing() -> str | None:
    """Why an OrthancPeer cannot start here, or None if it can."""
    if orthanc_binary() is None:
        return "Orthanc is not installed (tools/install-peers.sh)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"{DICOMWEB_PLUGIN} missing (orthanc-dicomweb; tools/install-peers.sh)"
    if not shim_path().is_file():
        return f"{shim_path()} missing (tools/install-peers.sh)"
    if shutil.which("ss") is None:
        return "ss missing (iproute2; tools/install-peers.sh)"
    return None


class OrthancPeer:
    """Debian's Orthanc + DICOMweb plugin on 127.0.0.1, state under ``workdir``.

    ``http_port``/``dicom_port`` default to free ephemeral ports. ``modalities`` maps a name to
    ``(aet, host, port)`` of C-STORE SCPs Orthanc may send to (hosts must be loopback).
    """

    def __init__(
        self,
        workdir: Path,
        http_port: int | None = None,
        dicom_port: int | None = None,
        aet: str = "ORTHANC",
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        *,
        startup_timeout: float = 30.0,
    ) -> None:
        self.workdir = Path(workdir)
        self.aet = aet
        self.modalities = dict(modalities or {})
        for name, (_, host, _) in self.modalities.items():
            if not is_loopback_host(host):
                raise ValueError(f"modality {name}: host {host} is not loopback")
        self._fixed_ports = (http_port, dicom_port)
        self.http_port = http_port or 0
        self.dicom_port = dicom_port or 0
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._client: httpx.Client | None = None
        self.config_path = self.workdir / "orthanc.json"
        self.log_path = self.workdir / "orthanc.log"
        self.storage_dir = self.workdir / "db"

    # ---- addresses
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    base_url = url

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            raise PeerError("Orthanc is not running")
        return self._client

    # ---- lifecycle
    def config(self) -> dict[str, Any]:
        return {
            "Name": "TestPACS",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpCompressionEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowMove": True,
            "DicomScuTimeout": 30,
            "DicomAssociationCloseDelay": 0,
            "UnknownSopClassAccepted": True,
            "OverwriteInstances": True,
            "SaveJobs": False,
            "LimitJobs": 10,
            "ExecuteLuaEnabled": False,
            "RestApiWriteToFileSystemEnabled": False,
            "DicomModalities": {
                name: {"AET": m_aet, "Host": host, "Port": port}
                for name, (m_aet, host, port) in self.modalities.items()
            },
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": True,
                "WadoRoot": "/wado",
                "Ssl": False,
                "StowMaxInstances": 0,
                "StowMaxSize": 0,
            },
        }

    def start(self) -> Self:
        if self.proc is not None:
            return self
        missing = orthanc_missing()
        if missing:
            raise PeerUnavailable(missing)
        # a free port may be taken before Orthanc binds it
        start_with_retries(self._start_once, self.stop, attempts=1 if all(self._fixed_ports) else 3)
        return self

    def _start_once(self) -> None:
        fixed_http, fixed_dicom = self._fixed_ports
        ports = free_ports(2)
        self.http_port = fixed_http or ports[0]
        self.dicom_port = fixed_dicom or ports[1]
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the peer runs; closed by stop()
        binary = orthanc_binary()
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=peer_env(),
            cwd=self.workdir,
        )
        self._client = httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(120.0, connect=5.0), trust_env=False
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise PeerError(f"Orthanc exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            try:
                if self._client.get("/system", timeout=2.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise PeerError(
                    f"Orthanc did not answer /system in {self.startup_timeout}s:\n{tail(self.log_path)}"
                )
            time.sleep(0.1)
        # /system answers once HTTP is up; the DICOM SCP listens by then too (it starts first)
        addrs = assert_loopback_only(self.proc.pid, "Orthanc")
        want = {self.http_port, self.dicom_port}
        have = {int(a.rsplit(":", 1)[1]) for a in addrs}
        if not want <= have:
            raise PeerError(f"Orthanc listens on {addrs}, expected ports {sorted(want)}")

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- REST
    def _check(self, r: httpx.Response) -> httpx.Response:
        if r.status_code >= 400:
            raise PeerError(
                f"Orthanc {r.request.method} {r.request.url.path}: HTTP {r.status_code} {r.text[:500]}"
            )
        return r

    def get_json(self, path: str) -> Any:
        return self._check(self.client.get(path)).json()

    def upload(self, dicom_bytes: bytes) -> dict[str, Any]:
        """POST /instances; returns Orthanc's answer (ID, ParentStudy, Status, ...)."""
        r = self._check(
            self.client.post("/instances", content=dicom_bytes, headers={"Content-Type": "application/dicom"})
        )
        result: dict[str, Any] = r.json()
        return result

    def instances(self) -> list[str]:
        result: list[str] = self.get_json("/instances")
        return result

    def instance_file(self, instance_id: str) -> bytes:
        return self._check(self.client.get(f"/instances/{instance_id}/file")).content

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json(f"/instances/{instance_id}/simplified-tags")
        return result

    def reset(self) -> None:
        """Delete every stored resource."""
        for patient in self.get_json("/patients"):
            self._check(self.client.delete(f"/patients/{patient}"))

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"modality {name}: host {host} is not loopback")
        self._check(self.client.put(f"/modalities/{name}", json={"AET": aet, "Host": host, "Port": port}))
        self.modalities[name] = (aet, host, port)

    def store_to(self, modality: str, resources: list[str]) -> dict[str, Any]:
        """Have Orthanc C-STORE ``resources`` (instance/series/study ids) to ``modality``, synchronously."""
        r = self._check(
            self.client.post(
                f"/modalities/{modality}/store", json={"Resources": resources, "Synchronous": True}
            )
        )
        result: dict[str, Any] = r.json()
        return result

    def statistics(self) -> dict[str, Any]:
        result: dict[str, Any] = self.get_json("/statistics")
        return result
