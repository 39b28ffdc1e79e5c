#!/usr/bin/env python3
"""Decode proof: ``full`` vs ``prefix`` (policy ``quality.decodeProof``) on the same inputs.

    python benchmarks/decode_proof.py [--trials 100] [--seed 1]

1. Refusals: JPEGs of several kinds (baseline, progressive, restart markers, 4:4:4, grey, CMYK,
   arithmetic-coded, lossless) are damaged at random (1-50 bytes, in the headers, in the scan data
   or both) and each damaged file goes through the adapter as it was before the decode-proof work
   (marker walk without decoding checks, then a full decode) and through ``prefix`` (walk with
   decoding checks, then the cut stream). Both must accept or both refuse; every disagreement is
   printed. Exit code 1 if there is any.
2. Cost: CPU time of ``sanitize`` (upload in, stored file out) on a ~3 MB 12 MP photo under each
   proof.
3. Sharpness: the measurement under each proof on sharp and blurred 12 MP and 4 MP photos,
   baseline and progressive, q85 and q95 (``prefix`` gives the same number or none).
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from PIL import Image, ImageFilter

from adapter.errors import AdapterError
from adapter.imaging import sanitize
from adapter.imaging.jpeg import ECS, strip_jpeg, strip_jpeg_segments, walk
from adapter.imaging.probe import decode_jpeg_prefix, decode_reduced
from adapter.model.policy import Limits, Quality
from benchmarks.ingest import base_photo
from tests.unit.test_imaging_decode_proof import ARITHMETIC_JPEG, LOSSLESS_JPEG
from tests.unit.test_imaging_jpeg import ms


def jpeg(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **params)
    return buf.getvalue()


def before(data: bytes) -> str:
    """The ingest checks as they were: structural walk, then a full reduced decode."""
    try:
        decode_reduced(strip_jpeg(data).data, "image/jpeg", proof="full")
        return "accepted"
    except AdapterError as exc:
        return f"refused ({exc})"


def prefix(data: bytes) -> str:
    try:
        decode_jpeg_prefix(strip_jpeg_segments(data, check_decoding=True))
        return "accepted"
    except AdapterError as exc:
        return f"refused ({exc})"


def refusals(trials: int, seed: int) -> int:
    scene = ms.photo((2400, 1800), seed=5)
    corpus = {
        "baseline": jpeg(scene, quality=92),
        "progressive": jpeg(scene, quality=92, progressive=True),
        "restart markers": jpeg(scene, quality=92, restart_marker_rows=2),
        "4:4:4": jpeg(scene, quality=92, subsampling=0),
        "grey": jpeg(scene.convert("L"), quality=92),
        "CMYK": jpeg(scene.convert("CMYK"), quality=92),
        "small": jpeg(ms.photo((320, 240), seed=6), quality=90),
        "small progressive": jpeg(ms.photo((320, 240), seed=6), quality=90, progressive=True),
        "arithmetic": ARITHMETIC_JPEG,
        "lossless": LOSSLESS_JPEG,
    }
    rng = random.Random(seed)
    table: collections.Counter[tuple[str, str, str]] = collections.Counter()
    disagreements = []
    for name, data in corpus.items():
        assert before(data) == prefix(data) == "accepted", name
        scan = next(s for s in walk(data).segments if s.marker == ECS)
        for _ in range(trials):
            damaged = bytearray(data)
            where = rng.choice(("scan", "headers", "both"))
            for _ in range(rng.choice((1, 2, 5, 50))):
                in_headers = where == "headers" or (where == "both" and rng.random() < 0.5)
                i = rng.randrange(2, scan.start) if in_headers else rng.randrange(scan.start, len(data) - 2)
                damaged[i] = rng.randrange(256) if rng.random() < 0.7 else damaged[i] ^ (1 << rng.randrange(8))
            a, b = before(bytes(damaged)), prefix(bytes(damaged))
            table[(name, a.split(" ")[0], b.split(" ")[0])] += 1
            if a.split(" ")[0] != b.split(" ")[0]:
                disagreements.append((name, where, a, b))
    print(f"1. refusals: {trials} damaged files per kind, before (walk + full decode) vs prefix")
    print(f"   {'kind':<18} {'both accept':>11} {'both refuse':>11} {'disagree':>8}")
    for name in corpus:
        ok = table[(name, "accepted", "accepted")]
        ko = table[(name, "refused", "refused")]
        print(f"   {name:<18} {ok:>11} {ko:>11} {trials - ok - ko:>8}")
    for d in disagreements[:20]:
        print("   DISAGREE", d)
    return len(disagreements)


def cost() -> None:
    data, source = base_photo()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "upload", Path(tmp) / "stored"
        src.write_bytes(data)
        print(f"\n2. sanitize CPU time, {len(data) / 1e6:.1f} MB 12 MP photo from {source} (best of 10)")
        for proof in ("full", "prefix"):
            best = float("inf")
            for _ in range(10):
                start = time.thread_time()
                facts = sanitize(src, dst, quality=Quality(decodeProof=proof), limits=Limits())
                best = min(best, time.thread_time() - start)
            print(f"   {proof:<7} {best * 1000:6.1f} ms   warnings {list(facts.quality_warnings)}")


def sharpness() -> None:
    print("\n3. sharpness (Gaussian blur radius in % of the width; '-' = not measured)")
    print(f"   {'photo':<38} {'B/px':>6} {'full':>6} {'prefix':>6} {'prefix ms':>9}")
    scene = ms.photo((4000, 3000), seed=12)
    for size in ((4000, 3000), (2400, 1800)):
        base = scene.resize(size)
        for blur in (0, 0.2, 0.4, 0.6):
            im = base.filter(ImageFilter.GaussianBlur(blur * size[0] / 100)) if blur else base
            for quality in (85, 95):
                for progressive in (False, True):
                    data = jpeg(im, quality=quality, progressive=progressive)
                    full = decode_reduced(data, "image/jpeg", proof="full").sharpness
                    start = time.thread_time()
                    pre = decode_reduced(data, "image/jpeg", proof="prefix").sharpness
                    ms_ = (time.thread_time() - start) * 1000
                    label = f"{size[0]}x{size[1]} blur {blur:.1f}% q{quality} {'progressive' if progressive else 'baseline'}"
                    print(f"   {label:<38} {len(data) / size[0] / size[1]:6.3f} {full:6.2f} "
                          f"{'-' if pre is None else format(pre, '6.2f'):>6} {ms_:9.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=100, help="damaged files per kind (default 100)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-sharpness", action="store_true")
    args = ap.parse_args()
    disagreements = refusals(args.trials, args.seed)
    cost()
    if not args.skip_sharpness:
        sharpness()
    print(f"\nRESULT disagreements={disagreements}")
    return 1 if disagreements else 0


if __name__ == "__main__":
    sys.exit(main())
