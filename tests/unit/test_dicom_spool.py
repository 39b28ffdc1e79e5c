"""BoundedSpool: a received data set's spool file never grows past its limit; the rest of the
object is dropped as it arrives, and the C-STORE handler is told."""

from __future__ import annotations

from pathlib import Path

from adapter.dicom.spool import BoundedSpool


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
