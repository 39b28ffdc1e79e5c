"""The decode proof (policy ``quality.decodeProof``): ``prefix`` refuses exactly what ``full``
refuses, keeps pixels identical, and measures sharpness exactly as ``full`` or not at all.

Every refused stream below is also refused by a full decode with Pillow/libjpeg
(``assert_libjpeg_refuses``): the walk's decoding checks refuse nothing libjpeg decodes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import struct
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from adapter.errors import UndecodableImage
from adapter.imaging import sanitize
from adapter.imaging.jpeg import ECS, SOS, decode_stream, strip_jpeg_segments, walk
from adapter.imaging.probe import PREFIX_SCAN_BYTES, decode_jpeg_prefix, decode_reduced
from adapter.model.policy import Limits, Policy, Quality
from tests.unit.test_imaging_jpeg import ms

pytestmark = pytest.mark.unit

PROOFS = ("full", "prefix")

# 48x32 photos made with jpegtran -arithmetic (from a Pillow JPEG, q90) and dcmcjpeg +e1
# (lossless process 14, first-order prediction, 8-bit grey): processes Pillow's libjpeg-turbo
# decodes, which the walk must not refuse.
ARITHMETIC_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYIDAoMDAsKCwsNDhIQDQ4RDgsLEBYQ"
    "ERMUFRUVDA8XGBYUGBIUFRT/2wBDAQMEBAUEBQkFBQkUDQsNFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQU"
    "FBQUFBQUFBQUFBQUFBT/yQARCAAgADADASIAAhEBAxEB/8wACgAQEAUBEBEF/9oADAMBAAIRAxEAPwDSOjAD6XiaWJ9y6sGZ"
    "mcUxrhUQC4T366pqcTZaZQkFuACkm2k1XvimFkpIgmuShWZNeLduwpKxuPj1ORDUg35MiIDQ+CTxY/5OqCrmkuzfNc2n8ZO7"
    "ZGJ0gaERwzFeQn9ZzeWrirJwrOdpgWsYDxGhznQ/NDOgL+QSlg/FKcgd8f5ZRro6QSrD/wB4GrSasvn00wWQ3bhiJ749izba"
    "7T9XO34myRssKUzK1baiM7DkBl4RH8mKqrp9oI6lzS38Rcr2XnSfLSNR0uddxu2qVkNLz6gg/J8Lp0Y1eUO20q7Pc9EamVBA"
    "6AADQPUdoAFZKXl9U5J5JENRHdSkxEVRQhmVkevkopJ32resLdxxwOw7onFtuVxM8wTMXyGKJAdcARmY7GmwFrGyixNWSzsj"
    "C/4h0ZcHNuQscFWb1RTMZRWLEmutiMj0s8fCokRr/wDecMKdJg2Ly4PL63DT5xBapHKBGokHDYYQhulqc03sddcHH1C5SuPI"
    "mPB4q4DB03eW1am8TtmYq4R3bZV9jR+jzgQURemt5YEhSptCMWbSnM6HiHNt7ciqRQ3VA01bu6axOX/1nipl8wxWv6fIwvyG"
    "KFSfDJjqo5/FfM7DNR6d928YipSQPQ36CwhCeBKbgNTIHt+tIez+FYQz7zU/56D6dTXCXup6qFkrnR+CLhLySSEAoDDPIdWw"
    "Zwm5xcdnd5Hf6/sq3ZYbGTHgGB1c/wDavb1349Cy6pVbwOgPQlwWMzhVbVHhtVYB51zLynBr3pZrU5mqnKwEoDOmNgHeAC68"
    "fmRYeJZ2g0KJuXBQmCRZFISdvlotW+4pGbXWFq8BFv7gzitz5wAZ3URXKNQa7v5XWGQ0wkK0Rv8AmKBCRx4Ad37x4qbsr0D1"
    "gAszprLeQS3Wa/N61gx1QvavSlSZ4c/uHVkfzQk4BSEUcncF0MqwZkUjssBYBmkMBRnAZvWZxPodlk5fdhDPgNG163IO+Bcd"
    "1HIo2ub5yjHYI3DhSpoJR8SYhtNWKmibEX9i1G5rNR6o8/awdeR4x5Nmdf4nq8HWPeitURlqa6AoaSBADhgqTCa6z5h5bd9I"
    "oVuFhQKbte+fkgE8Bdxw41mMUmrSIMofGIHEMeVdAZDF2systOyIEO9fafaIxzRPVa4pS+ufRM23uFyZFMT/ADGORItCaBHc"
    "F0Boi6wRF8cI5EH4WqgxnKYEanVE7jp18M1fgJe0V3dzQx1ijMaUjXbI4ied2Be8URhWUREnt5lkRYo0d1wHucK9imgLpAfL"
    "SNDIdxW3p+Ub34Q+FGvKH/KEO6aInWreX2J6nFK01BCaSt+2cg64wJSwlMD8xgElU9IrMbd9KDWtAZpnx9JK4jB97TL7FuZd"
    "qbqk+YT9TfuA56nOmFAKMgAqgYTgbFzf/Mglf+g59500tJnvsVfN7rG3WpIupusCtVfqwyQDcq16O10Gz9n7vYCF7IUzKSWX"
    "Ue2+5Bv+uvaoE4qg5UfIJHb4wWkSlOn0kKhgyaMwcyQMXXjl6IdD8g6URWYhykz2E0CmczeSPr8FfZTYd+bB0e5nd4OLTRhP"
    "89/jRcmCa4OTtC+d0Wljb+vE8Qe+S39tfDgWR721Dx9KGrZlMT4fsbbQKtc9c3sttrvCIQtYrnHYFoodF94ud92XlPF/0lP7"
    "skM5d5ZEQQi/6pTbTjRv7fBy49TJUCLbn4PzQoQxVPTkq2hiClctmP1JzFlAsg/nFIjxBWBa3YpA/9k="
)
LOSSLESS_JPEG = base64.b64decode(
    "/9j/4AAQSkZJRgABAQAAAQABAAD/wwALCAAgADABAREA/8QAHAAAAgMBAQEBAAAAAAAAAAAAAgMBBAgABwUG/9oACAEBAAEA"
    "APm1orwBENcTVGos0MAu0nmLgtVGOIHg5UWhZGhjXDq9lMq5aUsQ6upinadzOzlWF9pbL6YtBwQyWDZ0hXsItLA84VTkq2iL"
    "NWzWcjNAWFMDTOcCGzokHANhcEhhiLpzok1Q5ejc2qGGaHzNxC7l6gzFWdXcGouZU8HlMPrlojOYV+fOiM+r6TFfM0Rm6pJZ"
    "rS5D5rMXqHMJLXIJ1hn9XORwPDQWb7ArkdFZ9SsmSGjzrWKtjTeY0WkC4tO5a6qXcpk6i8DF0of2gc2uUFleh4Y+oxi4zmR3"
    "ETmvSDIW062aK0JgyAQnVci8VWFuqPQcqzDcU8bI6RGWK8BfpAX182jptioPLaSVXsVJdW64l6yXDbHc4llZS3TWZxapuls9"
    "5YWRams5XGyh2mQsMyM5MtDkhNtXOlkOlDbWmzmt2bmgh+mK9hQ6uy4dhRLZqHwUfeMmQrmFWMyVYKdVOQxWYdQZsNle1ojO"
    "Eu0Vn3rXTqvsti6q7T3hQSnQeRTSl7FNhgdrjL51ysaTztWlhFo5InYz1q0+jN9fSzYVYz6wO95yW5ASqya03C1fmlEzYirq"
    "LN8KDTGdm1jDR2fBrOovqt01ANKKx5MBlSzVgbUpa3V+apAk6azPpuwlmeQ5VgkMCoYoROnc6QAWOZoTI76LZq260OYR65rP"
    "WOWbtc9ULTncrK50AgQ5LgrBqPOkAp+gsnCyvyiSwXAy2mxYmWrLUeWJravYnmZ7tCgITpB6WQiwoMqKdSgZmuQMbDLpmlj5"
    "1Rk0LCTSxtbWK+Ak6MzdCYsaUy3V1ZEC6ZXOOjJdyDYxNzl3Y0/lM1Jei3qnPN1Sa2j4EWIJ9W1mLTmbVqdXsJ07kPlWElYa"
    "SnFqA7FSwVcHHnlpU2R754FK2TXZoHM2lM48fCuwK9J5MKGMbETb1BlAheeps4S5qWe6Ppn4JNcbSh5mgc4aLza+vzU2NI5R"
    "rPNwiDLWo8sqYBgjVGebFivazkmQ0pn40nyX++Z1VGkYfMKHMNdkrMxYTB05lx1Up1Zm8mPOCVyZ03AK54eBe/5sElHpXMA1"
    "rKuFwtA2PWGn+rBYz7y3PkerFYqN0rmGdP57Wix74RKfmUG9Wcp+miXyyDODiYq4q0lzmLPRHDJt8B95Yt3LJGdWVX1rK4W0"
    "dJZXJ6WobqDO1lBvGWssCq35LXJRVOhYQhiISxZxK1aQaGWZfWLnpjUJurWez5aJDhstrRIrGn72Fe2h689vquXoNiQa0cq8"
    "DGos6b8ImYBWgPCblc7U+sxPeKrb7VlJ3Mq87UPhqF6Iz0fC8Ge6RLq763gFuvzlnGgvEiHnZXDn6k8g9lygu5FNroLVGfvd"
    "vB3ioW8h+gMvdX1JOfSkkqtaC8Mc5cGt0T2q/HPYctI4GrdqHxYfbLHgKieNYvfpTzfCh96Ku4RLxllb2XrdWzyn6k8nBXro"
    "A9TVeKsTPuSw431GM8DZzuXaiBKxXez17NB2Y/A7hXGLvfZX4H7/AAjwT3aZ8J92WnxfaqzxRtcfFfFvanL8R9pefhHvcz4J"
    "7z7Lmfzz0oI7Ti0FWa2ibKXTzVqCfDPd0P6m7mTXcIPrPC7PgXu7PXs0MBn/2Q=="
)


def jpeg(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **params)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        return np.asarray(im).copy()


def run(tmp_path: Path, data: bytes, proof: str):
    src, dst = tmp_path / f"upload-{proof}", tmp_path / f"stored-{proof}"
    src.write_bytes(data)
    dst.unlink(missing_ok=True)
    facts = sanitize(src, dst, quality=Quality(decodeProof=proof), limits=Limits())
    return facts, dst.read_bytes()


def refused(tmp_path: Path, data: bytes, proof: str) -> UndecodableImage:
    src, dst = tmp_path / "upload", tmp_path / "stored"
    src.write_bytes(data)
    with pytest.raises(UndecodableImage) as caught:
        sanitize(src, dst, quality=Quality(decodeProof=proof), limits=Limits())
    assert not dst.exists()
    return caught.value


def assert_libjpeg_refuses(data: bytes) -> None:
    with pytest.raises((OSError, SyntaxError)), Image.open(io.BytesIO(data)) as im:
        im.load()


def offset(data: bytes, marker: int, nth: int = 0) -> int:
    """Offset of the ``FF`` of the nth segment with ``marker``."""
    return [s.start for s in walk(data).segments if s.marker == marker][nth]


def patched(data: bytes, at: int, value: int) -> bytes:
    out = bytearray(data)
    out[at] = value
    return bytes(out)


def without(data: bytes, marker: int) -> bytes:
    layout = walk(data)
    return b"\xff\xd8" + b"".join(data[s.start:s.end] for s in layout.segments if s.marker != marker) + b"\xff\xd9"


BASE = jpeg(ms.photo((64, 48), seed=31), quality=85)                  # SOF0, 4:2:0, Y Cb Cr ids 1 2 3
PROGRESSIVE = jpeg(ms.photo((64, 48), seed=32), quality=85, progressive=True)
SOF = offset(BASE, 0xC0)
SOS_AT = offset(BASE, SOS)
# SOF0: FF C0, Lf (2), P, Y (2), X (2), Nf, then (Ci, HiVi, Tqi) from SOF + 10.
# SOS: FF DA, Ls (2), Ns, then (Csj, TdjTaj) from SOS + 5, then Ss, Se, AhAl.
CORRUPT: dict[str, Callable[[], bytes]] = {
    "differential (hierarchical) SOF5": lambda: patched(BASE, SOF + 1, 0xC5),
    "lossless arithmetic SOF11": lambda: patched(BASE, SOF + 1, 0xCB),
    "DCT stream relabelled lossless SOF3": lambda: patched(BASE, SOF + 1, 0xC3),
    "12-bit samples": lambda: patched(BASE, SOF + 4, 12),
    "two components": lambda: (BASE[:SOF + 2] + struct.pack(">H", 14) + BASE[SOF + 4:SOF + 9] + b"\x02"
                               + BASE[SOF + 10:SOF + 16] + BASE[SOF + 19:]),
    "sampling factor 0": lambda: patched(BASE, SOF + 11, 0x02),
    "sampling factor 5": lambda: patched(BASE, SOF + 11, 0x52),
    "more than 10 blocks per MCU": lambda: patched(BASE, SOF + 11, 0x44),
    "duplicate component id": lambda: patched(BASE, SOF + 13, BASE[SOF + 10]),
    "quantization table never defined": lambda: patched(BASE, SOF + 12, 3),
    "DQT index 4": lambda: patched(BASE, offset(BASE, 0xDB) + 4, 0x04),
    "DHT index 4": lambda: patched(BASE, offset(BASE, 0xC4) + 4, 0x04),
    "DHT with more codes than bytes": lambda: patched(BASE, offset(BASE, 0xC4) + 5 + 15, 0xFF),
    "scan names a component the frame lacks": lambda: patched(BASE, SOS_AT + 5, 9),
    "scan names a component twice": lambda: patched(BASE, SOS_AT + 7, BASE[SOS_AT + 5]),
    "scan uses undefined DC Huffman table 2": lambda: patched(BASE, SOS_AT + 6, 0x20),
    "scan uses undefined AC Huffman table 3": lambda: patched(BASE, SOS_AT + 6, 0x03),
    "progressive JPEG without DHT": lambda: without(PROGRESSIVE, 0xC4),
    "progressive AC scan with Se < Ss": lambda: patched(
        PROGRESSIVE, offset(PROGRESSIVE, SOS, 1) + 5 + 2 * PROGRESSIVE[offset(PROGRESSIVE, SOS, 1) + 4] + 1, 0),
    "reserved marker FF02": lambda: BASE[:SOS_AT] + b"\xff\x02\x00\x04ab" + BASE[SOS_AT:],
    "reserved marker FFC8 after the scan": lambda: BASE[:-2] + b"\xff\xc8\x00\x04ab\xff\xd9",
    "a second scan after a scan of every component": lambda: (
        BASE[:-2] + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 8 + b"\xff\xd9"),
    "DC Huffman table holding symbol 16 (libjpeg's own check)": lambda: patched(
        BASE, offset(BASE, 0xC4) + 5 + 16, 16),
}


@pytest.mark.parametrize("name", list(CORRUPT))
@pytest.mark.parametrize("proof", PROOFS)
def test_unsupported_or_broken_streams_are_refused(tmp_path: Path, name: str, proof: str) -> None:
    data = CORRUPT[name]()
    refused(tmp_path, data, proof)
    assert_libjpeg_refuses(data)


@pytest.mark.parametrize("proof", PROOFS)
def test_truncated_scan_data_is_refused(tmp_path: Path, proof: str) -> None:
    large = jpeg(ms.photo((1600, 1200), seed=33), quality=90)
    for cut in (len(large) - 2, len(large) // 2, SOS_AT + 40):
        error = refused(tmp_path, large[:cut], proof)
        assert "EOI" in str(error)


def test_the_walk_names_what_it_refuses(tmp_path: Path) -> None:
    assert "SOF5" in str(refused(tmp_path, CORRUPT["differential (hierarchical) SOF5"](), "prefix"))
    assert "quantization table 3" in str(refused(tmp_path, CORRUPT["quantization table never defined"](), "prefix"))
    assert "DC Huffman table 2" in str(refused(tmp_path, CORRUPT["scan uses undefined DC Huffman table 2"](), "prefix"))
    assert "component 9" in str(refused(tmp_path, CORRUPT["scan names a component the frame lacks"](), "prefix"))
    # a table error only libjpeg finds comes back with its cause
    error = refused(tmp_path, CORRUPT["DC Huffman table holding symbol 16 (libjpeg's own check)"](), "prefix")
    assert isinstance(error.__cause__, OSError)


VALID: dict[str, Callable[[], bytes]] = {
    "baseline 4:2:0": lambda: BASE,
    "progressive": lambda: PROGRESSIVE,
    "4:4:4": lambda: jpeg(ms.photo((64, 48), seed=34), quality=85, subsampling=0),
    "greyscale": lambda: jpeg(ms.photo((64, 48), seed=35).convert("L"), quality=85),
    "CMYK": lambda: jpeg(ms.photo((64, 48), seed=36).convert("CMYK"), quality=85),
    "restart markers": lambda: jpeg(ms.photo((64, 48), seed=37), quality=85, restart_marker_blocks=2),
    "arithmetic coding (SOF9)": lambda: ARITHMETIC_JPEG,
    "lossless (SOF3)": lambda: LOSSLESS_JPEG,
    # libjpeg-turbo decodes a sequential scan without DHT with the Annex K tables (Motion-JPEG);
    # Pillow encodes with exactly those, so the pixels are the same.
    "baseline without DHT (standard tables)": lambda: without(BASE, 0xC4),
    "arithmetic label on Huffman data (decodes, as garbage, in both)": lambda: patched(BASE, SOF + 1, 0xC9),
}


@pytest.mark.parametrize("name", list(VALID))
def test_what_libjpeg_decodes_is_accepted_with_identical_pixels(tmp_path: Path, name: str) -> None:
    received = VALID[name]()
    results = {proof: run(tmp_path, received, proof) for proof in PROOFS}
    (full, stored_full), (prefix, stored_prefix) = results["full"], results["prefix"]
    assert stored_prefix == stored_full
    assert prefix.stored_sha256 == full.stored_sha256 == hashlib.sha256(stored_prefix).hexdigest()
    assert prefix.received_sha256 == hashlib.sha256(received).hexdigest()
    assert prefix.stored_size == len(stored_prefix)
    assert np.array_equal(pixels(stored_prefix), pixels(received))
    assert prefix.quality_warnings == full.quality_warnings


def test_scan_data_corruption_gets_the_same_answer_under_both_proofs(tmp_path: Path) -> None:
    """libjpeg treats damage to entropy-coded data as warnings, so a full decode refuses only
    what the marker walk refuses; random damage gets the same answer from both proofs."""
    rng = random.Random(5)
    sources = [jpeg(ms.photo((2400, 1800), seed=38), quality=92),
               jpeg(ms.photo((2400, 1800), seed=39), quality=92, progressive=True)]
    answers = set()
    for data in sources:
        first = next(s for s in walk(data).segments if s.marker == ECS)
        for _ in range(12):
            damaged = bytearray(data)
            for _ in range(rng.choice((1, 5, 50))):
                damaged[rng.randrange(first.start, len(data) - 2)] = rng.randrange(256)
            outcome = []
            for proof in PROOFS:
                try:
                    run(tmp_path, bytes(damaged), proof)
                    outcome.append("accepted")
                except UndecodableImage:
                    outcome.append("refused")
            assert outcome[0] == outcome[1]
            answers.add(outcome[0])
    assert answers == {"accepted", "refused"}


# --------------------------------------------------------------------------- the decode stream

def test_decode_stream_keeps_every_header_and_cuts_scan_data_cleanly() -> None:
    data = jpeg(ms.photo((2400, 1800), seed=40), quality=95)
    stripped = strip_jpeg_segments(data, check_decoding=True)
    stream = decode_stream(stripped, budget=PREFIX_SCAN_BYTES)
    assert not stream.complete
    assert PREFIX_SCAN_BYTES - 2 <= len(stream.data) - sum(
        len(p) for m, p in stripped.segments if m != ECS) - 4 <= PREFIX_SCAN_BYTES
    headers = [(m, bytes(p)) for m, p in stripped.segments if m != ECS]
    cut = walk(stream.data, check_decoding=True)
    assert [(s.marker, stream.data[s.start:s.end]) for s in cut.segments if s.marker != ECS] == headers
    ecs = next(s for s in cut.segments if s.marker == ECS)
    assert stream.data[ecs.end - 1] != 0xFF
    # small enough: the stream itself
    assert decode_stream(stripped, budget=len(data)).data == stripped.join()


def test_progressive_preview_is_the_dc_scans() -> None:
    data = jpeg(ms.photo((2400, 1800), seed=41), quality=90, progressive=True)
    stripped = strip_jpeg_segments(data, check_decoding=True)
    stream = decode_stream(stripped, budget=PREFIX_SCAN_BYTES, dc_preview=True)
    assert stream.dc_preview and not stream.complete
    scans = list(zip(stripped.scans, (p for m, p in stripped.segments if m == ECS), strict=True))
    kept = [s for s in walk(stream.data).segments if s.marker == ECS]
    assert len(kept) == len(scans)  # every scan header is still there
    for (scan, original), segment in zip(scans, kept, strict=True):
        assert segment.end - segment.start == (len(original) if scan.ss == 0 else 0)
    # at 1/8 scale the DC scans alone give the pixels of a full decode
    def eighth(jpeg_bytes: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(jpeg_bytes)) as im:
            im.draft("L", (im.width // 8, im.height // 8))
            im.load()
            return np.asarray(im).copy()
    assert np.array_equal(eighth(stream.data), eighth(stripped.join()))


# --------------------------------------------------------------------------- quality

@pytest.fixture(scope="module")
def large_scene() -> Image.Image:
    return ms.photo((4000, 3000), seed=42)


@pytest.mark.parametrize("progressive", [False, True])
def test_blurred_large_photo_warns_under_prefix(tmp_path: Path, large_scene: Image.Image,
                                                progressive: bool) -> None:
    blurred = jpeg(large_scene.filter(ImageFilter.GaussianBlur(28)), quality=95, progressive=progressive)
    full, _ = run(tmp_path, blurred, "full")
    prefix, _ = run(tmp_path, blurred, "prefix")
    assert any(w.startswith("image looks blurred (sharpness ") for w in full.quality_warnings)
    assert prefix.quality_warnings == full.quality_warnings  # the same measurement, not an estimate


def test_sharp_large_photo_under_prefix(tmp_path: Path, large_scene: Image.Image, capsys) -> None:
    """A large sequential JPEG with many bytes per pixel: only its headers and first scan bytes
    are decoded, sharpness is not measured, nothing is warned; timings are printed."""
    data = jpeg(large_scene, quality=90)
    stripped = strip_jpeg_segments(data, check_decoding=True)
    assert decode_jpeg_prefix(stripped).sharpness is None
    assert decode_reduced(stripped.join(), "image/jpeg").sharpness is not None
    timings = {}
    for proof in PROOFS:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            facts, _ = run(tmp_path, data, proof)
            best = min(best, time.perf_counter() - start)
        timings[proof] = best
        assert facts.quality_warnings == ()
    with capsys.disabled():
        print(f"\n  sanitize of a {len(data) / 1e6:.1f} MB 12 MP JPEG: full {timings['full'] * 1000:.1f} ms, "
              f"prefix {timings['prefix'] * 1000:.1f} ms")


def test_decode_proof_in_the_policy() -> None:
    assert Quality().decode_proof == "prefix"
    assert Quality(decodeProof="full").decode_proof == "full"
    with pytest.raises(ValueError):
        Quality(decodeProof="none")
    policy = Policy.model_validate(__import__("yaml").safe_load(
        (Path(__file__).resolve().parents[2] / "mappings" / "policy.yaml").read_text()))
    assert policy.quality.decode_proof in ("full", "prefix")
