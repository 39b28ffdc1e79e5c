#!/usr/bin/env python3
"""C-STORE benchmark: the same N files sent with dcmtk ``storescu`` to the adapter's SCP, to dcmtk
``storescp`` and to Orthanc in one run.

    python benchmarks/dicom.py [-n 300] [--skip-adapter] [--skip-storescp] [--skip-orthanc]

The files: N distinct JPEG Secondary Captures of ~2.9 MB (a 12 MP photo from
samples/make_samples.py's ``make_large_photo``, metadata segments dropped, JPEG stream encapsulated
as-is, one fragment; every file with its own pixels, SOP Instance UID and PatientID, IssuerOfPatientID
``HOSP`` as mappings/dicom.yaml maps it), made once and cached under the temp dir.

Each target is started here on free loopback ports with its own data dir:
  adapter   ``python -m adapter serve`` (one process: ADAPTER_HTTP_WORKERS=1), its SCP allowing the
            calling AE ``STORESCU``;
  storescp  dcmtk's, under the loopback bind shim, ``+xa`` (accepts JPEG Baseline), writing every
            object to a file;
  orthanc   Debian's Orthanc (tests/support/orthanc.py), storage compression off.
Every dcmtk process (and Orthanc, which is built on DCMTK) runs with ``TCP_NODELAY=1``.

Per target: ONE ``storescu -xy`` (proposes JPEG Baseline) invocation sends all N files over one
association; its wall time is the measurement. Afterwards the target must hold N objects (adapter:
``GET /fhir/Media?_count=0`` under purpose TREAT; storescp: files written; Orthanc: /statistics).
Printed: images/s, MB/s, the target's peak RSS (VmHWM summed over its process tree), its CPU per
image (user + system of its processes during the send) and storescu's; then the ratios
adapter/Orthanc and adapter/storescp, and PASS/MISS for the target adapter >= 1.5 x Orthanc.

Exit status: 0 whatever the rates (informational); 1 when a target answered a C-STORE with a
failure or holds fewer objects than were sent; 2 when a target could not be measured at all.
Loopback only; bounded by N and --max-seconds per target; every process started here is stopped
and the temp dirs removed on exit.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import httpx

from benchmarks.ingest import (
    CACHE_DIR,
    base_photo,
    fmt,
    peak_rss_mb,
    photo_variants,
    process_tree,
    sha256_ms,
    tree_cpu_seconds,
    wait_adapter,
)
from tests.support.dcmtk import StoreSCP, dcmtk_missing, echoscu, storescu
from tests.support.orthanc import (
    OrthancPeer,
    PeerError,
    PeerUnavailable,
    free_ports,
    is_loopback_host,
    listening_sockets,
    stop_process,
    tail,
)

TARGET_RATIO = 1.5
MAX_N = 2000
CALLING_AET = "STORESCU"
ISSUER = "HOSP"  # mappings/dicom.yaml patientIdentifiers: HOSP -> urn:oid:2.999.1.1
FILES_VERSION = 1  # bump when the way the files are made changes (invalidates the cache)


# --------------------------------------------------------------------------- the files


def make_files(n: int, cache_root: Path) -> tuple[list[Path], str]:
    """``n`` distinct JPEG Baseline Secondary Captures, cached under ``cache_root`` (made once;
    a folder is used only when complete, as the marker file written last says)."""
    with warnings.catch_warnings():  # tests.support imports starlette's TestClient, which warns
        warnings.simplefilter("ignore")
        from tests.support.dicom_files import sc_file

    base, source = base_photo(12, 3_000_000)
    key = hashlib.sha256(base).hexdigest()[:12]
    folder = cache_root / f"dicom-sc-v{FILES_VERSION}-{key}-{n}"
    done = folder / "COMPLETE"
    if not done.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        tmp = folder.with_name(folder.name + f".{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        print(f"making {n} Secondary Capture files in {folder} (once) ...", flush=True)
        for i, jpeg in enumerate(photo_variants(base, n)):
            sc_file(tmp / f"sc-{i:05d}.dcm", frame=jpeg, PatientID=f"BENCH-{i:05d}", IssuerOfPatientID=ISSUER,
                    InstanceNumber=i + 1)
        (tmp / "COMPLETE").write_text(f"{n} files from {source}\n")
        try:
            tmp.rename(folder)
        except OSError:  # made by a concurrent run meanwhile
            shutil.rmtree(tmp, ignore_errors=True)
    files = sorted(folder.glob("sc-*.dcm"))
    if len(files) != n:
        raise RuntimeError(f"{folder} holds {len(files)} files, expected {n}: remove it and run again")
    return files, source


def warm_page_cache(files: list[Path]) -> int:
    """Read every file once, so that no target pays for the first read from disk; returns bytes."""
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    return total


# --------------------------------------------------------------------------- measuring


@dataclass
class Result:
    target: str
    n: int
    sent_ok: int = 0          # C-STOREs answered with Success (storescu -v)
    stored: int | None = None  # objects the target holds afterwards
    seconds: float = 0.0
    mb: float = 0.0
    peak_rss_mb: float | None = None
    procs: int = 0
    cpu_ms: float | None = None      # the target's CPU (user + system) during the send
    scu_cpu_ms: float | None = None  # storescu's CPU
    exit_code: int | None = None
    error: str = ""

    @property
    def rate(self) -> float:
        return self.sent_ok / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.mb * (self.sent_ok / self.n) / self.seconds if self.seconds > 0 and self.n else 0.0

    @property
    def complete(self) -> bool:
        return self.sent_ok == self.n and self.stored == self.n

    def per_image(self, cpu_ms: float | None) -> float | None:
        return cpu_ms / self.sent_ok if cpu_ms is not None and self.sent_ok else None


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def send(target: str, port: int, called_aet: str, files: list[Path], mb: float, pid: int | None,
         max_seconds: float) -> Result:
    """One storescu association carrying every file; timed from its start to its exit."""
    result = Result(target, len(files), mb=mb)
    print(f"[{target}] storescu -xy: {len(files)} files to {called_aet}@127.0.0.1:{port} ...", flush=True)
    # tree_cpu_seconds says None for a process that has not used a clock tick yet
    cpu_before = (tree_cpu_seconds(pid) or 0.0) if pid else None
    scu_before = _children_cpu_seconds()
    t0 = time.perf_counter()
    try:
        done = storescu(port, called_aet, files, calling_aet=CALLING_AET, jpeg=True, timeout=max_seconds,
                        check=False, extra=["-v"])
    except subprocess.TimeoutExpired:
        result.seconds = time.perf_counter() - t0
        result.error = f"storescu did not finish within --max-seconds {max_seconds:.0f}"
        return result
    result.seconds = time.perf_counter() - t0
    result.scu_cpu_ms = (_children_cpu_seconds() - scu_before) * 1000
    cpu_after = (tree_cpu_seconds(pid) or 0.0) if pid else None
    if cpu_before is not None and cpu_after is not None:
        result.cpu_ms = (cpu_after - cpu_before) * 1000
    result.exit_code = done.returncode
    # -v: one "Received Store Response (<status>)" line per C-STORE (storescu -nh exits 0 after failures)
    answers = [line.split("Received Store Response", 1)[1].strip()
               for line in (done.stdout + done.stderr).splitlines() if "Received Store Response" in line]
    result.sent_ok = sum(1 for answer in answers if answer.startswith("(Success"))
    failed = [answer for answer in answers if not answer.startswith("(Success")]
    if failed or done.returncode != 0 or len(answers) != len(files):
        result.error = (f"storescu exited with {done.returncode}; {len(answers)} answers, {len(failed)} failures"
                        + (f", first: {failed[0]}" if failed else ""))
    if pid:
        result.procs = len(process_tree(pid))
        result.peak_rss_mb = peak_rss_mb(pid)
    return result


# --------------------------------------------------------------------------- the targets


@contextmanager
def started_adapter(workdir: Path, timeout: float) -> Iterator[tuple[str, int, int]]:
    """``python -m adapter serve`` in one process (HTTP + SCP), fresh data dir, free loopback
    ports, calling AE STORESCU allowed; in its own process group. Yields (url, dicom port, pid)."""
    venv_python = REPO_ROOT / ".venv" / "bin" / "python"
    python = str(venv_python) if venv_python.exists() else sys.executable
    http_port, dicom_port = free_ports(2)
    data = workdir / "adapter-data"
    data.mkdir(parents=True)
    log = workdir / "adapter.log"
    env = {k: v for k, v in os.environ.items() if k != "ADAPTER_FORWARD_TO"}  # no forwarding here
    env.update(
        ADAPTER_DATA_DIR=str(data),
        ADAPTER_HTTP_HOST="127.0.0.1",
        ADAPTER_HTTP_PORT=str(http_port),
        ADAPTER_HTTP_WORKERS="1",
        ADAPTER_DICOM_ENABLED="true",
        ADAPTER_DICOM_HOST="127.0.0.1",
        ADAPTER_DICOM_PORT=str(dicom_port),
        ADAPTER_DICOM_ALLOWED_AE_TITLES=CALLING_AET,
    )
    with open(log, "ab") as log_f:
        proc = subprocess.Popen([python, "-m", "adapter", "serve"], cwd=REPO_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=log_f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            url = f"http://127.0.0.1:{http_port}"
            wait_adapter(url, timeout, proc, log)
            deadline = time.monotonic() + timeout
            while echoscu(dicom_port, "ADAPTER", calling_aet=CALLING_AET, check=False, timeout=15).returncode != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the adapter's SCP on port {dicom_port} does not answer C-ECHO:\n{tail(log)}")
                time.sleep(0.2)
            bad = [a for a in listening_sockets(proc.pid) if not is_loopback_host(a.rsplit(":", 1)[0])]
            if bad:
                raise RuntimeError(f"the adapter listens on non-loopback {bad}")
            yield url, dicom_port, proc.pid
        finally:
            stop_process(proc, grace=15.0)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


def adapter_count(url: str) -> int | None:
    """Media records the adapter holds (each received SC is one), as the FHIR search counts them."""
    with httpx.Client(base_url=url, trust_env=False, timeout=60.0) as client:
        r = client.get("/fhir/Media", params={"_count": "0"}, headers={"X-Purpose-Of-Use": "TREAT"})
        if r.status_code != 200:
            print(f"[adapter] GET /fhir/Media?_count=0: HTTP {r.status_code} {r.text[:200]}", file=sys.stderr)
            return None
        total = r.json().get("total")
        return int(total) if isinstance(total, int) else None


def run_adapter(workdir: Path, files: list[Path], mb: float, args: argparse.Namespace) -> Result:
    with started_adapter(workdir, args.startup_timeout) as (url, port, pid):
        print(f"[adapter] started pid {pid}: HTTP {url}, SCP ADAPTER@127.0.0.1:{port}", flush=True)
        result = send("adapter", port, "ADAPTER", files, mb, pid, args.max_seconds)
        result.stored = adapter_count(url)
        return result


def run_storescp(workdir: Path, files: list[Path], mb: float, args: argparse.Namespace) -> Result:
    # storescp's default maximum PDU (the one the adapter has is 4 MB; storescp allows at most 128 KB)
    with StoreSCP(workdir / "storescp-recv", aet="STORESCP") as scp:
        print(f"[storescp] started pid {scp.pid} on 127.0.0.1:{scp.port} -> {scp.directory}", flush=True)
        result = send("storescp", scp.port, scp.aet, files, mb, scp.pid, args.max_seconds)
        result.stored = scp.count()
        return result


def run_orthanc(workdir: Path, files: list[Path], mb: float, args: argparse.Namespace) -> Result:
    with OrthancPeer(workdir / "orthanc") as orthanc:
        print(f"[orthanc] started pid {orthanc.pid}: HTTP {orthanc.url}, DICOM {orthanc.aet}@127.0.0.1:"
              f"{orthanc.dicom_port}", flush=True)
        result = send("orthanc", orthanc.dicom_port, orthanc.aet, files, mb, orthanc.pid, args.max_seconds)
        result.stored = int(orthanc.statistics().get("CountInstances", 0))
        return result


# --------------------------------------------------------------------------- report


def report(results: list[Result], digest_ms: float | None = None) -> None:
    print()
    head = ("target", "n", "stored", "seconds", "images/s", "MB/s", "peak RSS MB", "procs", "CPU ms/img",
            "scu CPU ms/img")
    widths = (-9, 5, 6, 8, 9, 7, 12, 5, 11, 14)
    print(" ".join(f"{h:<{-w}}" if w < 0 else f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for r in results:
        print(f"{r.target:<9} {r.n:>5} {fmt(r.stored, 'd') if r.stored is not None else 'n/a':>6} "
              f"{r.seconds:>8.2f} {r.rate:>9.1f} {r.mb_per_s:>7.1f} {fmt(r.peak_rss_mb):>12} {r.procs:>5} "
              f"{fmt(r.per_image(r.cpu_ms), '.2f'):>11} {fmt(r.per_image(r.scu_cpu_ms), '.2f'):>14}")
    for r in results:
        if r.error:
            print(f"  {r.target}: {r.error}")
        if r.stored is not None and r.stored != r.n:
            print(f"  {r.target}: holds {r.stored} objects after {r.n} were sent")
    if digest_ms is not None:
        # the object's content address and its JPEG frame's (the Binary): CPU no design removes
        print(f"  SHA-256 of one file here: {digest_ms:.1f} ms; the adapter hashes each object and its frame: "
              f"~{2 * digest_ms:.1f} ms of its CPU per image")
    by = {r.target: r for r in results}
    a, o, s = by.get("adapter"), by.get("orthanc"), by.get("storescp")
    ratio_o = a.rate / o.rate if a and o and o.rate > 0 else None
    ratio_s = a.rate / s.rate if a and s and s.rate > 0 else None
    print()
    print(f"ratio adapter/storescp: {fmt(ratio_s, '.2f')}{'x' if ratio_s is not None else ''}")
    if ratio_o is not None and a is not None:
        verdict = "PASS" if ratio_o >= TARGET_RATIO and a.complete else "MISS"
        print(f"ratio adapter/orthanc:  {ratio_o:.2f}x  (target >= {TARGET_RATIO}x, one association)  {verdict}")
    else:
        print("ratio adapter/orthanc:  n/a (one side not measured)")
    parts = []
    for r in results:
        parts += [f"{r.target}_rate={r.rate:.2f}", f"{r.target}_stored={r.stored}",
                  f"{r.target}_peak_rss_mb={fmt(r.peak_rss_mb)}",
                  f"{r.target}_cpu_ms={fmt(r.per_image(r.cpu_ms), '.2f')}"]
    if digest_ms is not None:
        parts.append(f"sha256_ms={digest_ms:.2f}")
    print("RESULT " + " ".join(parts) + f" ratio_orthanc={fmt(ratio_o, '.2f')} ratio_storescp={fmt(ratio_s, '.2f')}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=300, help=f"files sent to each target (1..{MAX_N}, default 300)")
    ap.add_argument("--skip-adapter", action="store_true")
    ap.add_argument("--skip-storescp", action="store_true")
    ap.add_argument("--skip-orthanc", action="store_true")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="where the targets keep their data (default: a temp dir, removed afterwards)")
    ap.add_argument("--cache-dir", type=Path, default=CACHE_DIR,
                    help=f"where the test files are made once and kept (default {CACHE_DIR})")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="time bound per target (default 600)")
    ap.add_argument("--startup-timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    if not 1 <= args.n <= MAX_N:
        ap.error(f"-n must be 1..{MAX_N}")
    missing = dcmtk_missing()
    if missing:
        print(f"cannot run: {missing}", file=sys.stderr)
        return 2

    files, source = make_files(args.n, args.cache_dir)
    total = warm_page_cache(files)
    mb = total / 1e6
    print(f"files: {len(files)} JPEG Baseline SC, {mb / len(files):.2f} MB each ({mb:.0f} MB), photo from {source}; "
          f"{os.cpu_count()} cores", flush=True)

    runners = [("adapter", run_adapter, args.skip_adapter), ("storescp", run_storescp, args.skip_storescp),
               ("orthanc", run_orthanc, args.skip_orthanc)]
    results: list[Result] = []
    failed: list[str] = []
    if args.work_dir is not None:
        args.work_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="dicom-bench-", dir=args.work_dir))
    try:
        for name, run, skip in runners:
            if skip:
                continue
            target_dir = workdir / name
            target_dir.mkdir()
            try:
                results.append(run(target_dir, files, mb, args))
            except (RuntimeError, PeerUnavailable, PeerError, httpx.HTTPError, OSError) as exc:
                print(f"[{name}] cannot run: {exc}", file=sys.stderr)
                failed.append(name)
            finally:
                shutil.rmtree(target_dir, ignore_errors=True)  # the next target's writes need the space
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    report(results, sha256_ms(files[0].read_bytes()))
    if failed:
        print(f"not measured: {', '.join(failed)} (see above)", file=sys.stderr)
        return 2
    return 0 if all(r.complete for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
