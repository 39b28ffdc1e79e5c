"""adapter.dicom.spool: the digest of a spool file computed while it is written."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapter.dicom import spool as spool_module
from adapter.dicom.spool import BUFFER_SIZE, SpoolWriter, digest_of, start_writeback

pytestmark = pytest.mark.unit


class Key:
    """Stands for pynetdicom's temporary file object (weakly referenceable)."""


def reader(data: bytes) -> Callable[[memoryview], int]:
    """A ``read_into`` over ``data``, as the socket's: fills the view, fewer bytes at the end."""
    position = 0

    def read_into(view: memoryview) -> int:
        nonlocal position
        n = min(len(view), len(data) - position)
        view[:n] = data[position:position + n]
        position += n
        return n

    return read_into


def written(tmp_path: Path, prefix: bytes, fragments: list[tuple[bytes, bool]],
            writer: SpoolWriter | None = None) -> tuple[Path, Any, SpoolWriter]:
    path = tmp_path / "spool.dcm"
    writer = writer or SpoolWriter(threading.main_thread().is_alive)
    key = Key()
    with open(path, "w+b") as fh:  # as pynetdicom's NamedTemporaryFile, whose descriptor reads too
        fh.write(prefix)  # what pynetdicom writes first: preamble, DICM, File Meta
        for data, last in fragments:
            writer.write_from(key, fh, reader(data), len(data), last=last)
    return path, key, writer


def test_the_digest_is_the_files_sha256_when_every_byte_went_through_it(tmp_path: Path) -> None:
    body = os.urandom(3 * BUFFER_SIZE + 1234)  # several buffers, the last one partial
    path, key, _ = written(tmp_path, b"\0" * 128 + b"DICM" + b"meta",
                           [(body[:1000], False), (body[1000:], True)])
    digest = digest_of(key)
    assert digest is not None
    assert digest.result(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_digest_is_not_trusted_for_a_file_written_to_otherwise(tmp_path: Path) -> None:
    path, key, _ = written(tmp_path, b"prefix", [(b"fragment one", True)])
    with open(path, "ab") as fh:
        fh.write(b"a fragment pynetdicom wrote itself")
    digest = digest_of(key)
    assert digest is not None and digest.result(path) is None


def test_the_digest_is_not_trusted_before_the_last_fragment(tmp_path: Path) -> None:
    path, key, _ = written(tmp_path, b"prefix", [(b"first of two", False)])
    digest = digest_of(key)
    assert digest is not None and digest.result(path, timeout=0.1) is None


def test_a_connection_closed_mid_fragment_leaves_no_trusted_digest(tmp_path: Path) -> None:
    path = tmp_path / "spool.dcm"
    writer = SpoolWriter(threading.main_thread().is_alive)
    key = Key()
    with open(path, "w+b") as fh, pytest.raises(EOFError):
        writer.write_from(key, fh, reader(b"short"), 100, last=True)
    digest = digest_of(key)
    assert digest is not None and digest.result(path, timeout=0.1) is None
    # the writer carries on with the next file (its buffers all came back)
    (tmp_path / "next").mkdir()
    path2, key2, _ = written(tmp_path / "next", b"p", [(b"x" * (BUFFER_SIZE * 9), True)], writer)
    digest2 = digest_of(key2)
    assert digest2 is not None and digest2.result(path2) == hashlib.sha256(path2.read_bytes()).hexdigest()


def test_one_writer_serves_files_one_after_another(tmp_path: Path) -> None:
    writer = SpoolWriter(threading.main_thread().is_alive)
    for n in range(3):
        folder = tmp_path / str(n)
        folder.mkdir()
        path, key, _ = written(folder, bytes([n]) * 10, [(os.urandom(BUFFER_SIZE + n), True)], writer)
        digest = digest_of(key)
        assert digest is not None and digest.result(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_hashing_thread_ends_with_its_association(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_module, "_IDLE_CHECK", 0.01)
    alive = threading.Event()
    alive.set()
    writer = SpoolWriter(alive.is_set)
    written(tmp_path, b"p", [(b"data", True)], writer)
    assert writer._thread is not None and writer._thread.is_alive()
    alive.clear()
    writer._thread.join(2)
    assert not writer._thread.is_alive()


def test_a_spool_that_cannot_be_read_back_is_written_without_a_digest(tmp_path: Path) -> None:
    path = tmp_path / "spool.dcm"
    key = Key()
    with open(path, "wb") as fh:  # write-only: the prefix cannot be read back
        fh.write(b"prefix")
        SpoolWriter(threading.main_thread().is_alive).write_from(key, fh, reader(b"data"), 4, last=True)
    assert path.read_bytes() == b"prefixdata"
    assert digest_of(key) is None


def test_digest_of_unknown_objects_is_none() -> None:
    assert digest_of(None) is None
    assert digest_of(Key()) is None
    assert digest_of(b"not weakly referenceable") is None


def test_start_writeback_is_harmless(tmp_path: Path) -> None:
    path = tmp_path / "f"
    with open(path, "w+b") as fh:
        fh.write(b"x" * 100_000)
        fh.flush()
        start_writeback(fh.fileno(), 0, 100_000)
        start_writeback(fh.fileno(), 0, 0)
    assert path.read_bytes() == b"x" * 100_000
