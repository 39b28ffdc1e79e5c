"""Fuzz the EXIF (TIFF) reader (adapter.imaging.exif.parse_exif).

Contract: it never raises (a malformed directory ends the walk quietly: the block is dropped
anyway) and returns only what it promises: an Orientation in 1..8, short texts, category names
from its own table, never a value.

Run: ``.venv/bin/python fuzz/fuzz_exif.py CORPUS -max_total_time=300`` (fuzz/README.md).
"""

from __future__ import annotations

import atheris

with atheris.instrument_imports(include=["adapter"]):
    from adapter.imaging import exif

from common import fuzz

_CATEGORIES = {name for name, _ in exif._CATEGORIES} | {"EXIF thumbnail"}


def test_one_input(data: bytes) -> None:
    summary = exif.parse_exif(data)
    assert summary.orientation is None or 1 <= summary.orientation <= 8
    assert set(summary.categories) <= _CATEGORIES, summary.categories
    assert len(summary.categories) == len(set(summary.categories))
    for text in (summary.make, summary.model):
        assert text is None or 0 < len(text) <= exif._MAX_TEXT
    if summary.capture_time is not None:
        summary.capture_time.isoformat()  # a datetime that can be written out


if __name__ == "__main__":
    fuzz(test_one_input)
