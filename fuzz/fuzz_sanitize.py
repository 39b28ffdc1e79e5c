"""Fuzz the ingest entry point (adapter.imaging.sanitize): sniffing, stripping with the decoding
checks, the decode proof (adapter.imaging.probe) under both ``decodeProof`` settings, and the
pixels-only stream of the de-identified view.

Contract: every input is stored or refused with an AdapterError; a refusal leaves no file. A
stored photo: the written bytes are those the facts' size and SHA-256 describe; sanitizing them
again stores the same bytes; both decode proofs accept and refuse the same JPEGs (the prefix
proof claims to refuse exactly what a full decode refuses).

Run: ``.venv/bin/python fuzz/fuzz_sanitize.py CORPUS -max_total_time=300`` (fuzz/README.md).
The only files written are in the harness's temporary folder.
"""

from __future__ import annotations

import hashlib
import warnings

import atheris
from PIL import Image

with atheris.instrument_imports(include=["adapter"]):
    from adapter.errors import AdapterError
    from adapter.imaging.sanitize import sanitize, strip_to_pixels_only
    from adapter.model.policy import Limits, Quality

from common import fuzz, plain_numpy_search, temp_dir

plain_numpy_search()

LIMITS = Limits(maxPixels=1 << 22)
PROOFS = {proof: Quality(decodeProof=proof) for proof in ("prefix", "full")}


def test_one_input(data: bytes) -> None:
    dst = temp_dir() / "stored"
    outcome: dict[str, object] = {}
    for proof, quality in PROOFS.items():
        dst.unlink(missing_ok=True)
        try:
            with warnings.catch_warnings():
                # as under pytest, Pillow's bomb warning is an error (probe wraps it); Pillow's
                # other warnings (a palette with alphas...) are no refusal in production
                warnings.simplefilter("ignore")
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                facts = sanitize(data, dst, quality=quality, limits=LIMITS)
        except AdapterError as exc:
            assert not dst.exists(), f"{proof}: a refusal left the stored file"
            outcome[proof] = type(exc).__name__
            continue
        stored = dst.read_bytes()
        assert len(stored) == facts.stored_size, f"{proof}: stored size differs from the facts"
        assert hashlib.sha256(stored).hexdigest() == facts.stored_sha256, f"{proof}: stored SHA-256 differs"
        assert facts.received_sha256 == hashlib.sha256(data).hexdigest()
        again = temp_dir() / "again"
        again.unlink(missing_ok=True)
        sanitize(stored, again, quality=quality, limits=LIMITS)
        assert again.read_bytes() == stored, f"{proof}: sanitizing the stored photo changed it"
        strip_to_pixels_only(stored, facts.content_type)
        outcome[proof] = "stored"
    assert outcome["prefix"] == outcome["full"], f"the decode proofs disagree: {outcome}"
    for content_type in ("image/jpeg", "image/png"):
        try:
            strip_to_pixels_only(data, content_type)
        except AdapterError:
            pass


if __name__ == "__main__":
    fuzz(test_one_input)
