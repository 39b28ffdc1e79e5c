"""Peak memory of ``POST /photos`` uploads carrying a consent form's scan (verify review 2, finding 4).

    .venv/bin/python benchmarks/scan_upload_memory.py [--scan-side 5600x4400] [--at-once 1 4 8]

For each count, starts a fresh adapter (one worker, SQLite, a temp data folder), posts that many
uploads at once, each a photo (samples/wound.jpg) and a metadata part with a written consent whose
``consent.form`` is a 12 MP-class JPEG scan in base64 (about 12 MB: 16 MB of base64), and prints the
server's RSS before, its peak (sampled every 20 ms) and the answers. Informational: a script, not a
test (the numbers depend on the machine and the allocator).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import REPO_ROOT, started_adapter  # the benchmark's own helpers


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _scan(width: int, height: int) -> bytes:
    noise = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).filter(ImageFilter.GaussianBlur(1))
    out = io.BytesIO()
    noise.save(out, "JPEG", quality=93)
    return out.getvalue()


def _metadata(form: str) -> bytes:
    meta = json.loads((REPO_ROOT / "samples" / "metadata-wound.json").read_text())
    meta["patient"]["value"] = f"MRN-SCAN-{uuid.uuid4().hex[:8]}"
    meta["consent"].update(method="written", form=form, formContentType="image/jpeg")
    return json.dumps(meta).encode()


def measure(at_once: int, form: str) -> None:
    photo = (REPO_ROOT / "samples" / "wound.jpg").read_bytes()
    bodies = [_metadata(form) for _ in range(at_once)]
    with tempfile.TemporaryDirectory() as work, started_adapter(Path(work), 60.0) as (url, pid):
        time.sleep(1.0)
        before = _rss_mb(pid)
        peak, done = [before], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_mb(pid))
                time.sleep(0.02)

        answers: list[int] = []

        def post(metadata: bytes) -> None:
            files = {"file": ("w.jpg", photo, "image/jpeg"), "metadata": (None, metadata, "application/json")}
            with httpx.Client(trust_env=False, timeout=300.0) as client:
                answers.append(client.post(f"{url}/photos", files=files,
                                           headers={"X-Purpose-Of-Use": "TREAT"}).status_code)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        posts = [threading.Thread(target=post, args=(b,)) for b in bodies]
        for t in posts:
            t.start()
        for t in posts:
            t.join()
        time.sleep(0.5)
        done.set()
        sampler.join()
        print(f"{at_once} at once: RSS {before:.0f} MiB before, peak {peak[0]:.0f} MiB "
              f"(+{peak[0] - before:.0f} MiB, {(peak[0] - before) / at_once:.0f} MiB each); answers {sorted(answers)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan-side", default="5600x4400", help="the scan's pixels, WxH (default 5600x4400)")
    parser.add_argument("--at-once", type=int, nargs="+", default=[1, 4, 8])
    args = parser.parse_args()
    width, height = (int(n) for n in args.scan_side.split("x"))
    scan = _scan(width, height)
    form = base64.b64encode(scan).decode()
    print(f"scan {len(scan) / 1e6:.1f} MB, {len(form) / 1e6:.1f} MB in base64")
    for n in args.at_once:
        measure(n, form)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
