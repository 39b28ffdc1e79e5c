"""Fuzz the streaming multipart parsers of the HTTP edge: ``multipart/form-data`` for
``POST /photos`` (adapter.api.multipart) and ``multipart/related`` for STOW-RS
(adapter.api.multipart_related).

The first byte of an input chooses how the body arrives (chunk sizes; a small memory limit and
budget, so the file part spills to disk) and the rest is the body, under the boundary
``fuzzBOUNDARY``. Contract: a body is parsed or refused with an AdapterError, never another
exception. Invariants: the outcome does not depend on how the body was cut into chunks (the same
parts, bytes, SHA-256 and refusal); the memory budget is given back whole; a refusal leaves no
spilled or part file behind; a spilled file holds exactly the part's bytes.

Run: ``.venv/bin/python fuzz/fuzz_multipart.py CORPUS -max_total_time=300`` (fuzz/README.md).
Spilled and part files are written in the harness's temporary folder only.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["adapter", "python_multipart"]):
    from adapter.api import multipart, multipart_related
    from adapter.errors import AdapterError

from common import fuzz, temp_dir

BOUNDARY = "fuzzBOUNDARY"
FORM = f"multipart/form-data; boundary={BOUNDARY}"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MAX_BYTES = 1 << 16
LOOP = asyncio.new_event_loop()
_counter = itertools.count()
logging.disable(logging.CRITICAL)  # python-multipart logs every malformed body it meets


async def _chunks(body: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos, cycle = 0, itertools.cycle(sizes)
    while pos < len(body):
        size = next(cycle)
        yield body[pos:pos + size]
        pos += size


def _files() -> list[Path]:
    return sorted(temp_dir().glob("part-*"))


def _form(body: bytes, sizes: list[int], memory_bytes: int, budget_bytes: int) -> object:
    spill = temp_dir() / f"part-{next(_counter)}.spill"
    budget = multipart.MemoryBudget(budget_bytes)
    try:
        parsed = LOOP.run_until_complete(multipart.parse_multipart(
            FORM, _chunks(body, sizes), spill, MAX_BYTES, memory_bytes=memory_bytes, budget=budget))
    except AdapterError as exc:
        assert budget.used == 0, f"a refused upload holds {budget.used} bytes of the memory budget"
        assert not _files(), "a refused upload left its spilled file"
        return type(exc).__name__
    try:
        if parsed.file_path is not None:
            assert parsed.file_data is None
            data: bytes | None = parsed.file_path.read_bytes()
        else:
            data = parsed.file_data
        assert budget.used == parsed.held, "the memory budget does not hold what the upload holds"
        if data is not None:
            assert len(data) == parsed.file_size, "file_size is not the file part's size"
            assert parsed.file_sha256 == hashlib.sha256(data).hexdigest(), "file_sha256 is not the digest"
        return ("ok", data, parsed.file_content_type, sorted(parsed.fields.items()))
    finally:
        parsed.release()
        assert budget.used == 0, f"release() left {budget.used} bytes of the memory budget taken"
        if parsed.file_path is not None:
            parsed.file_path.unlink()


def _related(body: bytes, sizes: list[int]) -> object:
    def new_path() -> Path:
        return temp_dir() / f"part-{next(_counter)}.dcm"

    try:
        parsed = LOOP.run_until_complete(multipart_related.parse_multipart_related(
            RELATED, _chunks(body, sizes), new_path, max_part_bytes=MAX_BYTES // 2, max_total_bytes=MAX_BYTES,
            max_parts=8))
    except AdapterError as exc:
        assert not _files(), "a refused STOW-RS request left part files"
        return type(exc).__name__
    parts = []
    for part in parsed.parts:
        data = None
        if part.path is not None:
            data = part.path.read_bytes()
            assert len(data) == part.size, "a part file does not hold the part's bytes"
            part.path.unlink()
        parts.append((part.content_type, part.size, data))
    assert not _files(), "a part file is not in the parsed result"
    return ("ok", parts)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode, body = data[0], data[1:]
    sizes = [1 + (mode & 0x0F), 1 + (mode >> 2), 7] if mode & 0x30 else [len(body) or 1]
    spill = bool(mode & 0x40)
    memory_bytes, budget_bytes = (16, 64) if spill else (multipart.MEMORY_LIMIT, MAX_BYTES * 2)
    whole = _form(body, [len(body) or 1], memory_bytes, budget_bytes)
    chunked = _form(body, sizes, memory_bytes, budget_bytes)
    assert whole == chunked, f"form-data: whole body {whole!r:.200} but in chunks {sizes} {chunked!r:.200}"
    whole = _related(body, [len(body) or 1])
    chunked = _related(body, sizes)
    assert whole == chunked, f"related: whole body {whole!r:.200} but in chunks {sizes} {chunked!r:.200}"


if __name__ == "__main__":
    fuzz(test_one_input)
