"""What every harness shares: a private temporary folder (the only place a harness writes),
a reference decode with Pillow for the pixel-identity invariant, and the libFuzzer entry point.

A harness raises an ``AssertionError`` for a broken invariant and lets any exception other than
an :class:`adapter.errors.AdapterError` escape: atheris reports both as a crash, with the input.
"""

from __future__ import annotations

import atexit
import io
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import atheris

#: Image size up to which the harnesses compare decoded pixels (the reference decode costs).
PIXEL_CHECK_MAX = 1 << 16

_TMP: Path | None = None


def temp_dir() -> Path:
    """This process's temporary folder, removed at exit (with everything the harness wrote).
    libFuzzer ends the process without running ``atexit`` when it stops (time limit, crash):
    ``fuzz/run.sh`` points TMPDIR into its work folder, so the folder is left there."""
    global _TMP
    if _TMP is None:
        _TMP = Path(tempfile.mkdtemp(prefix="adapter-fuzz-"))
        atexit.register(shutil.rmtree, _TMP, True)
    return _TMP


def decoded(data: bytes | memoryview, fmt: str) -> tuple[Any, ...] | None:
    """The pixels Pillow decodes from ``data`` (mode, size, samples, palette, transparency), or
    None when it does not decode: the oracle, so any error of Pillow's means "not decodable"."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(bytes(data)), formats=[fmt]) as im:
                im.load()
                return (im.mode, im.size, im.tobytes(), im.getpalette() if im.mode in ("P", "PA") else None,
                        im.info.get("transparency"))
    except Exception:  # noqa: BLE001 - the oracle: whatever Pillow refuses is not decodable
        return None


def same_pixels(original: bytes, out: bytes, width: int, height: int, fmt: str, what: str) -> None:
    """The hygiene invariant: ``out`` (a stripped ``original``) decodes to what ``original``
    decodes to (mode, size, samples, palette, transparency), for images small enough to check."""
    if width * height > PIXEL_CHECK_MAX:
        return
    before = decoded(original, fmt)
    if before is None:
        return
    after = decoded(out, fmt)
    assert after is not None, f"{what}: the input decodes, the stripped {fmt} does not"
    assert before[:2] == after[:2], f"{what}: mode/size changed {before[:2]} -> {after[:2]}"
    assert before[2] == after[2], f"{what}: decoded pixels changed"
    assert before[3] == after[3], f"{what}: palette changed"
    assert before[4] == after[4], f"{what}: transparency changed {before[4]!r} -> {after[4]!r}"


def plain_numpy_search() -> None:
    """Give the instrumented ``adapter.imaging.jpeg`` an uninstrumented copy of its numpy block
    search. atheris traces every comparison in instrumented code, numpy array ones too, and
    keeps something of each: the harness grew by ~18 KB per walk until libFuzzer's RSS limit
    stopped it. The search is a loop of vector compares (tested against the regex path in
    tests/unit/test_imaging_jpeg.py); coverage guidance gains nothing inside it."""
    import inspect

    from adapter.imaging import jpeg

    # compiled here, not imported: atheris instruments what the import machinery loads
    source = inspect.getsource(jpeg._marker_candidate_np)
    plain: dict[str, Any] = {"_np": jpeg._np}
    exec(compile(source, jpeg.__file__, "exec"), plain)  # noqa: S102 - the adapter's own function
    jpeg._marker_candidate_np = plain["_marker_candidate_np"]


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under libFuzzer (its options from the command line)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
