"""BoundedSpool: a received data set's spool file never grows past its limit; the rest of the
object is dropped as it arrives, and the C-STORE handler is told. What it writes is handed to
the kernel's writeback as it arrives."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

import adapter.dicom.spool as spool_module
from adapter import files
from adapter.dicom.spool import BoundedSpool
from adapter.files import start_writeback


def test_writes_up_to_the_limit_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spool.dcm"
    with path.open("wb") as raw:
        spool = BoundedSpool(raw, 10)
        assert spool.write(b"12345") == 5
        assert spool.write(memoryview(b"67890")) == 5
        spool.flush()  # everything else is the file's
        assert not spool.overflowed and spool.written == 10
    assert path.read_bytes() == b"1234567890"


def test_past_the_limit_nothing_more_reaches_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spool.dcm"
    with path.open("wb") as raw:
        spool = BoundedSpool(raw, 10)
        spool.write(b"1234")
        # the write that would pass the limit is dropped whole, and so is everything after it
        assert spool.write(b"5678901") == 7  # reported written: the peer's data is read and let go
        assert spool.overflowed
        assert spool.write(b"x" * 100_000) == 100_000
        assert spool.write(b"") == 0
    assert path.read_bytes() == b"1234"
    assert spool.written == 4


def test_a_limit_of_zero_takes_everything(tmp_path: Path) -> None:
    path = tmp_path / "spool.dcm"
    with path.open("wb") as raw:
        spool = BoundedSpool(raw, 0)
        spool.write(b"x" * 100_000)
        assert not spool.overflowed and spool.written == 100_000
    assert path.stat().st_size == 100_000


def test_written_bytes_are_handed_to_the_kernel_every_writeback_bytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The spool asks for the writeback of each new stretch of at least ``writeback`` bytes, from
    where the last one ended, after flushing its buffer (the kernel's ranges are the file's)."""
    asked: list[tuple[int, int, int]] = []

    def record(fd: int, offset: int, length: int) -> None:
        asked.append((offset, length, os.fstat(fd).st_size))
        start_writeback(fd, offset, length)  # and the real call, on the real file

    monkeypatch.setattr(spool_module, "start_writeback", record)
    path = tmp_path / "spool.dcm"
    with path.open("wb") as raw:
        spool = BoundedSpool(raw, 0, writeback=1000)
        spool.write(b"\x00" * 128)  # buffered by the file object, below the threshold
        spool.write(b"a" * 600)
        spool.write(b"b" * 600)  # 1328 written: the first 1328 bytes
        spool.write(b"c" * 999)  # 999 more: not yet
        spool.write(b"d")  # 1000 more
        spool.write(b"e" * 5000)
    assert asked == [(0, 1328, 1328), (1328, 1000, 2328), (2328, 5000, 7328)]
    assert path.read_bytes() == b"\x00" * 128 + b"a" * 600 + b"b" * 600 + b"c" * 999 + b"d" + b"e" * 5000


def test_no_writeback_where_there_is_no_file_descriptor() -> None:
    """A file object without a descriptor (as in memory): the writes go on, writeback stops."""
    buffer = io.BytesIO()
    spool = BoundedSpool(buffer, 0, writeback=10)
    for _ in range(5):
        assert spool.write(b"0123456789") == 10
    assert buffer.getvalue() == b"0123456789" * 5


def test_start_writeback_on_a_real_file_keeps_its_bytes(tmp_path: Path) -> None:
    """sync_file_range only starts writing (Linux; nothing elsewhere): the file's bytes and size
    are what was written, and a range past the end or of no length is harmless."""
    if sys.platform.startswith("linux"):  # found, so the spool's writeback is not silently nothing
        assert files._SYNC_FILE_RANGE is not None
    path = tmp_path / "f"
    data = os.urandom(3 * 1024 * 1024)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
        start_writeback(fd, 0, len(data))
        start_writeback(fd, len(data), 4096)
        start_writeback(fd, 0, 0)
    finally:
        os.close(fd)
    assert path.read_bytes() == data
