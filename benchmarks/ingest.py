#!/usr/bin/env python3
"""Ingest benchmark: the adapter's ``POST /photos`` beside Orthanc's ``POST /instances``.

    python benchmarks/ingest.py --start [-n 300] [-c 8] [--workers 1] [--floor]
    python benchmarks/ingest.py --url http://127.0.0.1:8080 [--server-pid PID] [-n 300] [-c 8]

Posts N distinct ~3 MB 12 MP photos from C concurrent clients to the adapter and prints photos/s,
p50/p99 latency and the server's peak RSS (summed over its processes: the uvicorn supervisor, its
worker processes and any other child); then, in the same run and with the same client, posts
the same photos wrapped as DICOM Secondary Capture (JPEG Baseline, no re-encode) to an Orthanc
(Debian's, started here on loopback by tests/support/orthanc.py) through ``POST /instances``.

``--floor`` also measures, in the same run and with the same client and bodies,
``benchmarks/floor_server.py``: the adapter's server stack doing only what no ingest design can
leave out (receive the body, one SHA-256, write+fsync the file and its folder). Its rate beside
Orthanc's is a ceiling for any Python ingest on this stack and machine.

Targets (this 2-core machine): the adapter at least 1.5x Orthanc's rate at C=8, and its peak RSS
under 300 MB. The result is informational: the exit code is 0 whatever the numbers; 2 when a side
could not be measured at all (the adapter does not start or answer, Orthanc is not installed), after
printing whatever was measured.

Workers: the default is one process (ADAPTER_HTTP_WORKERS=1, the adapter's own default): ~150 MB.
``--workers 2`` gave ~15-25% more photos/s here when the 8 keep-alive connections happened to split
evenly between the workers (uvicorn's workers share one listening socket: whichever wakes first
accepts, so a split of 6/2 or 8/0 is possible and the busier worker caps the rate), at ~350 MB:
the supervisor (which runs the DICOM SCP and the forwarder) ~90 MB, multiprocessing's resource
tracker ~13 MB, each worker ~120 MB (~85 MB of it imports, pydicom and numpy ~33 MB of those).

Besides photos/s and latency it prints the server's CPU per photo (user + kernel, and the kernel
part; steadier than the rate on a shared machine), the busy share of a core and the peak RSS of
each server process.

The client: one httpx.Client shared by C worker threads (keep-alive connections, one per worker),
each request body prebuilt in memory; the timed window runs from the first request after the
warm-up to the last answer. Loopback only; bounded by N and --max-seconds; every process it
started is stopped on exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx

from tests.support.dcmtk import wrap_jpeg_as_sc
from tests.support.orthanc import (
    OrthancPeer,
    PeerError,
    PeerUnavailable,
    free_port,
    is_loopback_host,
    listening_sockets,
    stop_process,
    tail,
)

TARGET_RATIO = 1.5
TARGET_RSS_MB = 300.0
MAX_N = 5000
CACHE_DIR = Path(tempfile.gettempdir()) / "clinical-image-adapter-bench"
PATIENT_SYSTEM = "urn:oid:2.999.1.1"


# --------------------------------------------------------------------------- photos


def base_photo(megapixels: float = 12, target_bytes: int = 3_000_000) -> tuple[bytes, str]:
    """One large JPEG from samples/make_samples.py (``make_large_photo``), cached in the temp dir."""
    from samples.make_samples import make_large_photo

    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    cached = CACHE_DIR / f"base-{megapixels:g}mp-{target_bytes}-samples.jpg"
    if not cached.is_file():
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        make_large_photo(tmp, megapixels=megapixels, target_bytes=target_bytes)
        tmp.replace(cached)
    return cached.read_bytes(), f"samples ({cached})"


def _dqt_entry_offsets(jpeg: bytes) -> list[int]:
    """Offsets of the last two (highest-frequency) entries of the first 8-bit quantisation table."""
    i = 2
    while i + 4 <= len(jpeg) and jpeg[i] == 0xFF:
        marker = jpeg[i + 1]
        seg_len = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        if marker == 0xDB and jpeg[i + 4] >> 4 == 0:  # DQT, Pq=0 (8-bit entries)
            table = i + 5
            return [table + 62, table + 63]
        if marker == 0xDA:
            break
        i += 2 + seg_len
    return []


def photo_variants(base: bytes, count: int) -> Iterator[bytes]:
    """``count`` distinct, valid JPEGs from ``base``: two high-frequency entries of the luma
    quantisation table are set per variant (the image changes invisibly; every variant has its own
    pixels and SHA-256, so no upload is a duplicate even after metadata stripping). Falls back to
    a unique COM segment if the JPEG has no 8-bit DQT."""
    offsets = _dqt_entry_offsets(base)
    for i in range(count):
        if offsets:
            b = bytearray(base)
            b[offsets[0]] = 1 + (i // 255) % 255
            b[offsets[1]] = 1 + i % 255
            yield bytes(b)
        else:
            text = f"bench variant {i} {uuid.uuid4()}".encode()
            yield base[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + base[2:]


def multipart_body(jpeg: bytes, index: int) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    metadata = {
        "patient": {"system": PATIENT_SYSTEM, "value": f"MRN-{index}"},
        "kind": "clinical",
        "source": "clinician",
        "consent": {"purposes": ["TREAT"], "method": "verbal"},
    }
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="metadata"\r\n'
        "Content-Type: application/json\r\n\r\n"
        f"{json.dumps(metadata)}\r\n"
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="x.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail_ = f"\r\n--{boundary}--\r\n".encode()
    return head + jpeg + tail_, f"multipart/form-data; boundary={boundary}"


# --------------------------------------------------------------------------- measuring


@dataclass
class Request:
    path: str
    body: bytes
    content_type: str


@dataclass
class Result:
    target: str
    n: int
    c: int
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    rss_processes: int = 0
    server_cpu_ms: float | None = None  # CPU seconds (user + system) of the server's processes in the window
    process_cpu_ms: dict[int, float] = field(default_factory=dict)  # the same, per server process
    server_sys_ms: float | None = None  # of server_cpu_ms, the part spent in the kernel (system time)
    process_peak_rss_mb: dict[int, float] = field(default_factory=dict)  # VmHWM per server process
    client_cpu_ms: float = 0.0  # CPU of this benchmark process in the timed window

    def per_photo(self, cpu_ms: float | None) -> float | None:
        return cpu_ms / self.ok if cpu_ms is not None and self.ok else None
    first_error: str = ""
    note: str = ""

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def pct(self, p: int) -> float | None:
        lat = sorted(self.latencies_ms)
        if not lat:
            return None
        if len(lat) == 1:
            return lat[0]
        return statistics.quantiles(lat, n=100, method="inclusive")[p - 1]


def run_load(
    client: httpx.Client,
    requests: list[Request],
    concurrency: int,
    expect: int,
    max_seconds: float,
    result: Result,
    extra_headers: dict[str, str],
) -> None:
    """C worker threads take requests from one queue; records latency of every expected answer."""
    todo: queue.Queue[Request] = queue.Queue()
    for r in requests:
        todo.put(r)
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        while time.monotonic() < deadline:
            try:
                req = todo.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            status, text = 0, ""
            try:
                resp = client.post(
                    req.path, content=req.body, headers={"Content-Type": req.content_type, **extra_headers}
                )
                status, text = resp.status_code, resp.text[:300] if resp.status_code != expect else ""
            except httpx.HTTPError as exc:
                text = f"{type(exc).__name__}: {exc}"
            ms = (time.perf_counter() - t0) * 1000
            with lock:
                if status == expect:
                    result.ok += 1
                    result.latencies_ms.append(ms)
                else:
                    result.errors += 1
                    if not result.first_error:
                        result.first_error = f"HTTP {status} {text}"

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    t_start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - t_start
    left = todo.qsize()
    if left:
        result.note = f"stopped at --max-seconds with {left} not sent"


def measure(
    target: str,
    base_url: str,
    build: Callable[[int], Request],
    n: int,
    c: int,
    warmup: int,
    expect: int,
    max_seconds: float,
    pid_for_rss: Callable[[], int | None],
    extra_headers: dict[str, str] | None = None,
) -> Result:
    result = Result(target, n, c)
    print(f"[{target}] building {n + warmup} request bodies ...", flush=True)
    warm = [build(n + i) for i in range(warmup)]
    timed = [build(i) for i in range(n)]
    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    with httpx.Client(
        base_url=base_url, limits=limits, timeout=httpx.Timeout(120.0, connect=10.0), trust_env=False
    ) as client:
        if warm:
            w = Result(target, warmup, c)
            run_load(client, warm, c, expect, max_seconds, w, extra_headers or {})
            if w.errors:
                print(f"[{target}] warm-up: {w.errors} error(s), first: {w.first_error}", file=sys.stderr)
        print(f"[{target}] posting {n} from {c} clients ...", flush=True)
        pid = pid_for_rss()
        cpu_before = tree_cpu_seconds(pid) if pid else None
        per_before = process_cpu_seconds(pid) if pid else {}
        client_before = time.process_time()
        run_load(client, timed, c, expect, max_seconds, result, extra_headers or {})
        result.client_cpu_ms = (time.process_time() - client_before) * 1000
        cpu_after = tree_cpu_seconds(pid) if pid else None
        per_after = process_cpu_seconds(pid) if pid else {}
        result.process_cpu_ms = {p: (t - per_before.get(p, (0.0, 0.0))[0]) * 1000 for p, (t, _) in per_after.items()}
        if pid:
            result.server_sys_ms = 1000 * sum(s - per_before.get(p, (0.0, 0.0))[1] for p, (_, s) in per_after.items())
        if cpu_before is not None and cpu_after is not None:
            result.server_cpu_ms = (cpu_after - cpu_before) * 1000
    if pid:
        result.rss_processes = len(process_tree(pid))
        result.peak_rss_mb = peak_rss_mb(pid)
        result.process_peak_rss_mb = process_peak_rss_mb(pid)
    return result


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def process_cpu_seconds(pid: int) -> dict[int, tuple[float, float]]:
    """(user + system, system) CPU seconds consumed so far by ``pid`` and each of its live
    descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[float, float]] = {}
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        utime, stime = int(fields[11]), int(fields[12])  # fields 14, 15 of stat
        out[p] = ((utime + stime) / ticks, stime / ticks)
    return out


def tree_cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds consumed so far by ``pid`` and its live descendants."""
    total = sum(t for t, _ in process_cpu_seconds(pid).values())
    return total if total else None


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (uvicorn's supervisor: its workers, its resource tracker)."""
    seen: list[int] = []
    stack = [pid]
    while stack:
        p = stack.pop()
        if p in seen or not Path(f"/proc/{p}").exists():
            continue
        seen.append(p)
        stack += _children(p)
    return seen


def process_peak_rss_mb(pid: int) -> dict[int, float]:
    """VmHWM of ``pid`` and of each of its live descendants, in MB (1e6 bytes)."""
    out: dict[int, float] = {}
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[p] = int(line.split()[1]) * 1024 / 1e6
        except OSError:
            continue
    return out


def peak_rss_mb(pid: int) -> float | None:
    """VmHWM of ``pid`` plus that of all its live descendants, in MB (1e6 bytes). Each process's
    own high-water mark is summed: an upper bound of the tree's peak, as the peaks need not
    coincide."""
    per_process = process_peak_rss_mb(pid)
    if pid not in per_process:
        return None
    return sum(per_process.values()) or None


def pid_listening_on(port: int) -> int | None:
    try:
        for pid_line in subprocess.run(
            ["ss", "-H", "-ltnp", f"sport = :{port}"], check=False, capture_output=True, text=True, timeout=10
        ).stdout.splitlines():
            if "pid=" in pid_line:
                return int(pid_line.split("pid=", 1)[1].split(",", 1)[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        pass
    return None


# --------------------------------------------------------------------------- the adapter


def wait_adapter(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the adapter exited with {proc.returncode}:\n{tail(log) if log else ''}")
            try:
                r = client.get(f"{url}/fhir/metadata", headers={"X-Purpose-Of-Use": "TREAT"})
                if r.status_code == 200:
                    return
                last = f"HTTP {r.status_code} {r.text[:200]}"
            except httpx.TransportError as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the adapter at {url} did not answer GET /fhir/metadata in {timeout:.0f}s "
                    f"({last})" + (f":\n{tail(log)}" if log else "")
                )
            time.sleep(0.2)


@contextmanager
def started_adapter(workdir: Path, timeout: float, workers: int = 1) -> Iterator[tuple[str, int]]:
    """``python -m adapter serve`` on a free loopback port with a fresh data dir and
    ``ADAPTER_HTTP_WORKERS=workers``, in its own process group (stopped as a whole)."""
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    port = free_port()
    data = workdir / "adapter-data"
    data.mkdir(parents=True)
    log = workdir / "adapter.log"
    env = dict(
        os.environ,
        ADAPTER_DATA_DIR=str(data),
        ADAPTER_HTTP_PORT=str(port),
        ADAPTER_HTTP_HOST="127.0.0.1",
        ADAPTER_HTTP_WORKERS=str(workers),
    )
    # its DICOM SCP (when enabled) on a free loopback port too, beside any other adapter
    env.setdefault("ADAPTER_DICOM_PORT", str(free_port()))
    env.setdefault("ADAPTER_DICOM_HOST", "127.0.0.1")
    with open(log, "ab") as log_f:
        proc = subprocess.Popen(
            [python, "-m", "adapter", "serve"],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_adapter(url, timeout, proc, log)
            bad = [a for a in listening_sockets(proc.pid) if not is_loopback_host(a.rsplit(":", 1)[0])]
            if bad:
                raise RuntimeError(f"the adapter listens on non-loopback {bad}")
            yield url, proc.pid
        finally:
            stop_process(proc, grace=15.0)
            try:  # workers the supervisor did not take down with it (it was killed)
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


@contextmanager
def started_floor(workdir: Path, timeout: float) -> Iterator[tuple[str, int]]:
    """``benchmarks/floor_server.py`` (the floor: receive, one SHA-256, write+fsync) on a free
    loopback port, in its own process group."""
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    port = free_port()
    log = workdir / "floor.log"
    with open(log, "ab") as log_f:
        proc = subprocess.Popen(
            [python, str(REPO_ROOT / "benchmarks" / "floor_server.py"), str(port), str(workdir / "floor-data")],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + timeout
            with httpx.Client(trust_env=False, timeout=5.0) as client:
                while True:
                    if proc.poll() is not None:
                        raise RuntimeError(f"the floor server exited with {proc.returncode}:\n{tail(log)}")
                    try:
                        if client.get(url).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the floor server did not answer in {timeout:.0f}s:\n{tail(log)}")
                    time.sleep(0.2)
            yield url, proc.pid
        finally:
            stop_process(proc, grace=5.0)


# --------------------------------------------------------------------------- report


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def sha256_ms(data: bytes, repeat: int = 20) -> float:
    """CPU time of one SHA-256 of ``data`` on this machine (the best of ``repeat``; one core)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        hashlib.sha256(data).digest()
        best = min(best, time.process_time() - start)
    return best * 1000


def report(results: list[Result], digest_ms: float | None = None) -> None:
    print()
    head = ("target", "n", "c", "photos/s", "p50 ms", "p99 ms", "peak RSS MB", "procs", "errors")
    widths = (-8, 5, 3, 9, 8, 8, 12, 5, 7)
    print(" ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for r in results:
        print(
            f"{r.target:<8} {r.n:>5} {r.c:>3} {r.rate:>9.1f} {fmt(r.pct(50)):>8} {fmt(r.pct(99)):>8} "
            f"{fmt(r.peak_rss_mb):>12} {r.rss_processes:>5} {r.errors:>7}"
        )
    for r in results:
        server, client = r.per_photo(r.server_cpu_ms), r.per_photo(r.client_cpu_ms)
        kernel = r.per_photo(r.server_sys_ms)
        print(
            f"  {r.target}: CPU per accepted request: server {fmt(server)} ms (kernel {fmt(kernel)}), "
            f"this client {fmt(client)} ms "
            f"({os.cpu_count()} cores; the window's budget at the measured rate: "
            f"{fmt(1000 * (os.cpu_count() or 1) / r.rate if r.rate else None)} ms)"
        )
        if len(r.process_cpu_ms) > 1 and r.seconds > 0:  # is the load spread over the worker processes?
            split = ", ".join(f"pid {p} {ms / 1000 / r.seconds:.0%}" for p, ms in sorted(r.process_cpu_ms.items()))
            print(f"    {r.target}: busy share of a core per process: {split}")
            rss = ", ".join(f"pid {p} {mb:.0f}" for p, mb in sorted(r.process_peak_rss_mb.items()))
            print(f"    {r.target}: peak RSS MB per process: {rss}")
    if digest_ms is not None:
        # the receipt's two digests (the bytes received, the bytes stored): CPU no design removes
        print(f"  SHA-256 of one photo here: {digest_ms:.1f} ms; the adapter hashes each photo twice (received, "
              f"stored): {2 * digest_ms:.1f} ms of its server CPU per photo")
    for r in results:
        if r.first_error:
            print(f"  {r.target}: first error: {r.first_error}")
        if r.note:
            print(f"  {r.target}: {r.note}")
    by = {r.target: r for r in results}
    a, o, f = by.get("adapter"), by.get("orthanc"), by.get("floor")
    ratio = a.rate / o.rate if a and o and o.rate > 0 else None
    print()
    if f is not None and o is not None and o.rate > 0:
        print(f"ratio floor/orthanc: {f.rate / o.rate:.2f}x  (receive, one SHA-256, write+fsync: "
              f"no parsing, stripping, second digest or database)")
    if a is not None and ratio is not None:
        verdict = "PASS" if ratio >= TARGET_RATIO and not a.errors else "MISS"
        print(f"ratio adapter/orthanc: {ratio:.2f}x  (target >= {TARGET_RATIO}x at c=8)  {verdict}")
    else:
        print("ratio adapter/orthanc: n/a (one side not measured)")
    if a is not None:
        rss = a.peak_rss_mb
        verdict = (
            "n/a (no server pid: use --start or --server-pid)"
            if rss is None
            else ("PASS" if rss < TARGET_RSS_MB else "MISS")
        )
        print(f"adapter peak RSS: {fmt(rss)} MB  (target < {TARGET_RSS_MB:.0f} MB)  {verdict}")
    parts = []
    for r in results:
        parts += [
            f"{r.target}_rate={r.rate:.2f}",
            f"{r.target}_p50_ms={fmt(r.pct(50), '.1f')}",
            f"{r.target}_p99_ms={fmt(r.pct(99), '.1f')}",
            f"{r.target}_peak_rss_mb={fmt(r.peak_rss_mb)}",
            f"{r.target}_errors={r.errors}",
            f"{r.target}_server_cpu_ms={fmt(r.per_photo(r.server_cpu_ms), '.2f')}",
            f"{r.target}_client_cpu_ms={fmt(r.per_photo(r.client_cpu_ms), '.2f')}",
        ]
    if digest_ms is not None:
        parts.append(f"sha256_ms={digest_ms:.2f}")
    print("RESULT " + " ".join(parts) + f" ratio={fmt(ratio, '.2f')}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    where = ap.add_mutually_exclusive_group()
    where.add_argument(
        "--url", default=None, help="a running adapter (loopback), default http://127.0.0.1:8080"
    )
    where.add_argument(
        "--start", action="store_true", help="start the adapter here (python -m adapter serve)"
    )
    ap.add_argument("-n", type=int, default=300, help="photos per target (default 300)")
    ap.add_argument("-c", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="with --start: ADAPTER_HTTP_WORKERS, the adapter's worker processes (default 1; see the module doc)",
    )
    ap.add_argument(
        "--server-pid",
        type=int,
        default=None,
        help="the adapter's pid for peak RSS with --url (default: the process listening on the port)",
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed requests first (default: c)")
    ap.add_argument("--max-seconds", type=float, default=300.0, help="time bound per target (default 300)")
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--photo-bytes", type=int, default=3_000_000)
    ap.add_argument("--skip-adapter", action="store_true", help="measure Orthanc only")
    ap.add_argument("--skip-orthanc", action="store_true", help="measure the adapter only")
    ap.add_argument(
        "--floor",
        action="store_true",
        help="also measure benchmarks/floor_server.py (the same server stack doing only the receive, one "
        "SHA-256 and the write+fsync): what any Python ingest here can reach",
    )
    ap.add_argument(
        "--work-dir", type=Path, default=None, help="where servers keep their data (default: a temp dir)"
    )
    args = ap.parse_args(argv)
    if not 1 <= args.n <= MAX_N:
        ap.error(f"-n must be 1..{MAX_N}")
    if not 1 <= args.c <= 64:
        ap.error("-c must be 1..64")
    if not 1 <= args.workers <= 32:
        ap.error("--workers must be 1..32")
    warmup = args.c if args.warmup is None else max(0, args.warmup)
    url = (args.url or "http://127.0.0.1:8080").rstrip("/")
    host = urllib.parse.urlparse(url).hostname or ""
    if not args.start and not is_loopback_host(host):
        ap.error(f"--url must be a loopback address, not {host!r}")

    base, source = base_photo(args.megapixels, args.photo_bytes)
    print(
        f"photo: {len(base) / 1e6:.2f} MB from {source}; {args.n} timed + {warmup} warm-up variants; "
        f"c={args.c}",
        flush=True,
    )
    photos = list(photo_variants(base, args.n + warmup))

    results: list[Result] = []
    failed: list[str] = []
    workdir = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.work_dir))
    try:
        if not args.skip_adapter:

            def adapter_request(i: int) -> Request:
                body, ctype = multipart_body(photos[i], i)
                return Request("/photos", body, ctype)

            def measure_adapter(a_url: str, a_pid: int | None) -> Result:
                return measure("adapter", a_url, adapter_request, args.n, args.c, warmup, 201,
                               args.max_seconds, lambda: a_pid, {"X-Purpose-Of-Use": "TREAT"})

            try:
                if args.start:
                    with started_adapter(workdir, args.startup_timeout, args.workers) as (a_url, a_pid):
                        print(
                            f"[adapter] started pid {a_pid} at {a_url} with {args.workers} worker process(es)",
                            flush=True,
                        )
                        results.append(measure_adapter(a_url, a_pid))
                else:
                    wait_adapter(url, 5.0)
                    port = urllib.parse.urlparse(url).port or 80
                    a_pid = args.server_pid or pid_listening_on(port)
                    print(f"[adapter] {url}, pid {a_pid or 'unknown'}", flush=True)
                    results.append(measure_adapter(url, a_pid))
            except RuntimeError as exc:
                print(f"[adapter] cannot run: {exc}", file=sys.stderr)
                failed.append("adapter")

        if args.floor:
            try:
                with started_floor(workdir, args.startup_timeout) as (f_url, f_pid):
                    print(f"[floor] started pid {f_pid} at {f_url}", flush=True)
                    results.append(
                        measure("floor", f_url, lambda i: Request("/photos", *multipart_body(photos[i], i)),
                                args.n, args.c, warmup, 201, args.max_seconds, lambda: f_pid)
                    )
            except RuntimeError as exc:
                print(f"[floor] cannot run: {exc}", file=sys.stderr)
                failed.append("floor")

        if not args.skip_orthanc:

            def orthanc_request(i: int) -> Request:
                return Request(
                    "/instances",
                    wrap_jpeg_as_sc(photos[i], patient_id=f"MRN-{i}", instance_number=i + 1),
                    "application/dicom",
                )

            try:
                with OrthancPeer(workdir / "orthanc") as orthanc:
                    print(f"[orthanc] started pid {orthanc.pid} at {orthanc.url}", flush=True)
                    results.append(
                        measure(
                            "orthanc",
                            orthanc.url,
                            orthanc_request,
                            args.n,
                            args.c,
                            warmup,
                            200,
                            args.max_seconds,
                            lambda: orthanc.pid,
                        )
                    )
            except (PeerUnavailable, PeerError) as exc:
                print(f"[orthanc] cannot run: {exc}", file=sys.stderr)
                failed.append("orthanc")
    finally:
        photos.clear()
        shutil.rmtree(workdir, ignore_errors=True)

    report(results, sha256_ms(base))
    if failed:
        print(f"not measured: {', '.join(failed)} (see above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
