"""Streaming ``multipart/form-data`` (RFC 7578 on RFC 2046 §5.1.1) for ``POST /photos``.

The ``file`` part is hashed (SHA-256, for the receipt) and collected as it arrives, without
being copied: up to ``memory_bytes`` it is, while the process-wide ``MEMORY_BUDGET`` (all
uploads in flight together) allows, kept in memory (a list of views of the received chunks, joined once at the end), so a photo
goes from the socket to the imaging code without a round trip through the disk; a larger one is
spilled to a staging file as it streams in, written in blocks of ``SPILL_BLOCK`` bytes from a
worker thread (never held whole in memory, never written from the event loop). The ``metadata``
part is kept in memory up to ``METADATA_PART_LIMIT`` (room for a phone's scan of a consent form
in base64), its bytes past ``SMALL_PART_LIMIT`` counted in the process-wide ``METADATA_BUDGET``
(503 when it is full); a part of another name is ignored, read and dropped as it arrives (its
name is kept, for the refusal of an upload without ``file``: review mobile finding 8, a photo
sent as ``photo`` was refused as too large). Over-size uploads stop early with 413, naming the
part (``expression``).

The parser looks for the delimiter (CRLF ``--boundary``) with ``bytes.find`` in each received
chunk (plus the few bytes kept back from the chunk before, which may hold the start of a
delimiter split across two chunks), so the cost is one C-speed scan of the body. Accepted as
RFC 2046 has it: a preamble before the first delimiter (which may open the body without the
CRLF) and an epilogue after the close delimiter (both ignored), transport padding (spaces,
tabs) after a delimiter, parts without headers. Refused as malformed (400): a body that ends
before the close delimiter, a delimiter followed by anything but ``--``, padding and CRLF, a
header line without a colon or whose name is no token, part headers over ``HEADER_LIMIT`` bytes.

Nothing a gateway could read otherwise is taken (security review 3; README ``POST /photos``):
a part header line repeated, a parameter of the Content-Type or of a part's Content-Disposition
or Content-Type repeated, in RFC 2231 extended form or malformed (400,
:func:`adapter.api.media_type.parse_parameters`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from starlette.concurrency import run_in_threadpool

from adapter.api.media_type import is_token, parse_parameters
from adapter.errors import (
    AmbiguousRequest,
    InvalidInput,
    PayloadTooLarge,
    RequestTimeout,
    Transient,
    UnsupportedMediaType,
    staging_failure,
)

#: The metadata up to this size is taken without a turn of METADATA_BUDGET (any photo's is far
#: smaller without a consent form).
SMALL_PART_LIMIT = 1024 * 1024
#: The ``metadata`` part: its JSON with a consent form scanned by a phone in ``consent.form``
#: (base64: 4/3 of the scan's bytes; a 12 MP camera scan is 1-4 MB). A 1 MiB bound refused any
#: form over ~768 KB (review mobile finding 4); a larger one goes as a Consent (POST /fhir/Consent).
METADATA_PART_LIMIT = 16 * 1024 * 1024
#: What a body may hold besides the photo: the metadata, part headers, preamble and padding.
UPLOAD_OVERHEAD = METADATA_PART_LIMIT + 1024 * 1024
#: Bytes of metadata past SMALL_PART_LIMIT all uploads in flight together hold (a slow client's
#: are held while it sends): beyond it an upload with a large form is answered 503, retry later,
#: so the memory large metadata can take stays bounded however many clients post at once.
METADATA_BUDGET_BYTES = 64 * 1024 * 1024
#: An upload holding METADATA_BUDGET must keep its body coming at this average rate (bytes a
#: second, after METADATA_HOLD_GRACE seconds) from when it first took some, else it is answered
#: 408 and its budget given back: five connections trickling a byte now and then held the whole
#: budget for as long as they liked, and every consent form scan got 503 (verify review 2,
#: finding 3). 64 KiB/s is a slow phone link's (512 kbit/s): a 16 MiB part takes at most ~4 min.
METADATA_MIN_RATE = 64 * 1024
METADATA_HOLD_GRACE = 10.0
#: The part names ``POST /photos`` reads; a part of another name is ignored.
PART_NAMES = ("file", "metadata")
#: Names of ignored parts a refusal may quote (each cut to 40 characters).
_IGNORED_KEPT = 4
#: Parts one upload may have: a photo and its metadata, with room to spare. Parsing runs on the
#: event loop; 50 MB of empty parts (over a million) would hold it for tens of seconds.
MAX_PARTS = 16
#: A ``file`` part up to this size is kept in memory; a larger one is spilled to disk.
MEMORY_LIMIT = 8 * 1024 * 1024
#: All uploads in flight together keep at most this many bytes in memory; beyond it an upload
#: streams to disk, so memory stays bounded however many clients post at once.
MEMORY_BUDGET_BYTES = 64 * 1024 * 1024
#: Spilled bytes are written in blocks of at least this size.
SPILL_BLOCK = 1024 * 1024
#: The headers of one part (Content-Disposition, Content-Type) fit in far less.
HEADER_LIMIT = 16 * 1024
#: Transport padding after a delimiter (RFC 2046 LWSP) longer than this is refused.
PADDING_LIMIT = 1024
_MAX_BOUNDARY = 70  # RFC 2046 §5.1.1

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _EPILOGUE = range(5)


class MemoryBudget:
    """Bytes of upload held in memory by this process, across concurrent requests."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self.used -= n


MEMORY_BUDGET = MemoryBudget(MEMORY_BUDGET_BYTES)
METADATA_BUDGET = MemoryBudget(METADATA_BUDGET_BYTES)


@dataclass
class ParsedUpload:
    """The outcome: the ``file`` part in memory (``file_data``) or spilled to ``file_path``
    (at most one of them set), and the other named parts as bytes."""

    file_data: bytes | None = None
    file_path: Path | None = None
    file_size: int = 0
    file_content_type: str | None = None
    file_sha256: str | None = None  # of the file part's bytes, hashed as they arrived
    fields: dict[str, bytes | bytearray] = field(default_factory=dict)
    held: int = 0  # bytes of MEMORY_BUDGET this upload holds until release()
    budget: MemoryBudget | None = None
    ignored: list[str] = field(default_factory=list)  # names of parts ignored (the first few)
    metadata_held: int = 0  # bytes of METADATA_BUDGET this upload holds until release()
    metadata_budget: MemoryBudget | None = None

    def release(self) -> None:
        """Give the in-memory bytes back to the budgets (after the ingest used them)."""
        self.release_file()
        if self.metadata_budget is not None and self.metadata_held:
            self.metadata_budget.give_back(self.metadata_held)
        self.metadata_held = 0

    def release_file(self) -> None:
        """Give the file part's in-memory bytes back to its budget (spilled, or done with)."""
        if self.budget is not None and self.held:
            self.budget.give_back(self.held)
        self.held = 0
        self.file_data = None

    @property
    def has_file(self) -> bool:
        return self.file_data is not None or self.file_path is not None

    def head(self, size: int = 16) -> bytes:
        """The first ``size`` bytes of the file part (what its type is read from)."""
        if self.file_data is not None:
            return self.file_data[:size]
        if self.file_path is not None:
            with self.file_path.open("rb") as f:
                return f.read(size)
        return b""

    @property
    def upload(self) -> bytes | Path | None:
        """What the ingest takes: the bytes, or the path of the spilled file."""
        return self.file_data if self.file_data is not None else self.file_path


def _malformed(reason: str) -> InvalidInput:
    return InvalidInput(f"malformed multipart body: {reason}")


def _part_headers(block: bytes) -> dict[bytes, bytes]:
    headers: dict[bytes, bytes] = {}
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon or not name.strip():
            raise _malformed("a part header line has no name and colon")
        if not is_token(name):  # "Content-Disposition :" is another header to some parsers
            raise AmbiguousRequest("malformed multipart body: a part header name is not a token (RFC 9110 5.1)")
        name = name.lower()
        if name in headers:
            # the last line would win here and the first in other parsers (security review 3)
            raise AmbiguousRequest(f"malformed multipart body: a part has header {name.decode('latin-1')[:40]!r} "
                                   "more than once")
        headers[name] = value.strip(b" \t")
    return headers


class _Collector:
    """Where part bytes go; decides memory or disk for the ``file`` part."""

    def __init__(self, spill_path: Path, max_bytes: int, memory_bytes: int, budget: MemoryBudget,
                 metadata_budget: MemoryBudget | None = None) -> None:
        self.result = ParsedUpload(budget=budget, metadata_budget=metadata_budget or METADATA_BUDGET)
        self._budget = budget
        self._over_budget = False
        self._spill_path = spill_path
        self._max_bytes = max_bytes
        self._memory_bytes = memory_bytes
        self._name: str | None = None
        self._is_file = False
        self._pieces: list[bytes | memoryview] = []  # file bytes not yet joined or written
        self._pending = 0  # bytes in _pieces
        self._small: bytearray | None = None
        self._sink: BinaryIO | None = None
        self._file_done = False
        self._digest = hashlib.sha256()
        self._parts = 0

    # -- events from the parser --------------------------------------------------------------

    def part_begin(self, headers: dict[bytes, bytes]) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise _malformed(f"more than {MAX_PARTS} parts (a photo upload has two: file and metadata)")
        _, params = parse_parameters(headers.get(b"content-disposition"), "Content-Disposition")
        raw_name = params.get("name")
        self._name = raw_name.encode("latin-1").decode("utf-8", "replace") if raw_name else None
        self._is_file = self._name == "file"
        # every part's, not only the file's: a repeated charset of the metadata is as ambiguous
        ctype, params = parse_parameters(headers.get(b"content-type"), "Content-Type")
        if self._name == "metadata" and params.get("charset", "utf-8").lower() not in ("utf-8", "utf8"):
            # JSON is UTF-8 (RFC 8259 8.1): metadata said to be another encoding is not read as
            # UTF-8 all the same, nor in the encoding it names (pentest finding 2), as a FHIR body
            raise UnsupportedMediaType(f"the 'metadata' part is JSON, UTF-8, not charset={params['charset'][:20]}")
        if self._is_file:
            if self._file_done or self._pieces or self._sink is not None:
                raise InvalidInput("more than one 'file' part", expression="file")
            self.result.file_content_type = ctype or None
            self.result.file_size = 0
        elif self._name in PART_NAMES:
            if self._name in self.result.fields:
                # the last one would win: a gateway that checked the first would have approved
                # another patient or consent than the one stored (refused as a second file is)
                raise InvalidInput(f"more than one '{self._name}' part", expression=self._name)
            self._small = bytearray()
        elif len(self.result.ignored) < _IGNORED_KEPT:  # read and dropped, whatever its size
            self.result.ignored.append("" if self._name is None else self._name[:40])

    def part_data(self, data: bytes | memoryview) -> None:
        if self._is_file:
            size = self.result.file_size + len(data)
            if size > self._max_bytes:
                raise PayloadTooLarge(f"the photo is larger than {self._max_bytes} bytes (ADAPTER_MAX_UPLOAD_BYTES)",
                                      expression="file")
            self.result.file_size = size
            self._digest.update(data)  # releases the GIL (for more than 2 KiB)
            if self._sink is None and not self._over_budget:
                if self._budget.take(len(data)):
                    self.result.held += len(data)
                else:
                    self._over_budget = True  # spill what is held, stream the rest to disk
            self._pieces.append(data)
            self._pending += len(data)
        elif self._small is not None:
            before = len(self._small)
            self._small += data
            after = len(self._small)
            if after > METADATA_PART_LIMIT:
                raise PayloadTooLarge(
                    f"the 'metadata' part is larger than {METADATA_PART_LIMIT} bytes (16 MiB): a consent form "
                    f"scan in consent.form (base64, 4/3 of its size) must be under about 12 MiB; make the scan "
                    "smaller, or record the form as a Consent with POST /fhir/Consent and send the photo "
                    "without it", expression="metadata")
            over = after - max(before, SMALL_PART_LIMIT)
            if over > 0:
                result = self.result
                if result.metadata_budget is None or not result.metadata_budget.take(over):
                    raise Transient("the server holds as much upload metadata (consent form scans) in memory as "
                                    "it takes: try again shortly", expression="metadata")
                result.metadata_held += over

    def part_end(self) -> None:
        if self._is_file:
            self._is_file = False
            self._file_done = True
            self.result.file_sha256 = self._digest.hexdigest()
            if self._sink is None:
                self.result.file_data = b"".join(self._pieces)
                self._pieces, self._pending = [], 0
        elif self._small is not None and self._name:
            # as received, not copied: a consent form's scan was held twice (verify review 2, finding 4)
            self.result.fields[self._name] = self._small
        self._small = None

    # -- spilling ---------------------------------------------------------------------------

    def spill_due(self) -> bool:
        """Are there file bytes to write now (the part is over the memory limit, and a block is
        ready or the part has ended)?"""
        if not self._pieces:
            return False
        if self._sink is None:
            return self._over_budget or self.result.file_size > self._memory_bytes
        return self._pending >= SPILL_BLOCK or self._file_done

    def spill(self) -> None:
        """Write the collected file bytes to the staging file (run in a worker thread). A disk
        without room for them is the reserve's refusal (507 no-store), any other failure of it
        503 (adapter.errors.staging_failure); the caller removes the partial file."""
        pieces, self._pieces, self._pending = self._pieces, [], 0
        if self._sink is None:
            try:
                self._sink = self._spill_path.open("wb")
            except OSError as exc:  # a read-only or missing staging folder: the disk's failure, not the client's
                raise staging_failure("the staged upload could not be created in the staging folder", exc) from exc
            self.result.file_path = self._spill_path
        try:
            self._sink.writelines(pieces)
        except OSError as exc:
            raise staging_failure("the staged upload could not be written to the staging folder", exc) from exc
        self.result.release_file()  # on disk now: the memory is the budget's again

    def finish(self) -> None:
        """After the close delimiter: the staging file complete and closed."""
        if self._sink is not None:
            sink, self._sink = self._sink, None
            try:
                sink.close()  # writes what it buffers
            except OSError as exc:
                raise staging_failure("the staged upload could not be written to the staging folder", exc) from exc

    def close(self) -> None:
        if self._sink is not None:
            sink, self._sink = self._sink, None
            with contextlib.suppress(OSError):  # a failure being raised already says what failed
                sink.close()
        self.result.release()


class PartSink(Protocol):
    """Where :class:`MultipartParser` sends the parts it finds."""

    def part_begin(self, headers: dict[bytes, bytes]) -> None: ...

    def part_data(self, data: bytes | memoryview) -> None: ...

    def part_end(self) -> None: ...


class MultipartParser:
    """Incremental parser of one multipart body: :meth:`feed` each received chunk, then
    :meth:`end`. Events go to ``collector`` (part_begin, part_data, part_end)."""

    def __init__(self, boundary: bytes, collector: PartSink) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._keep = len(self._delimiter) - 1  # the longest delimiter prefix a chunk can end with
        self._collector = collector
        self._state = _PREAMBLE
        # The first delimiter may open the body, without the CRLF that precedes later ones.
        self._buffer = b"\r\n"

    @property
    def complete(self) -> bool:
        return self._state == _EPILOGUE

    def feed(self, chunk: bytes) -> None:
        if self._state == _EPILOGUE or not chunk:
            return
        buffer = self._buffer
        if not buffer:
            data = chunk
        elif self._state == _BODY and len(chunk) >= self._keep:
            # Kept-back bytes of a body: a delimiter starting in them ends within the first
            # _keep bytes of the chunk. If there is none, they are data: the chunk is scanned
            # alone (not copied behind them).
            if (buffer + chunk[:self._keep]).find(self._delimiter) < 0:
                self._collector.part_data(buffer)
                data = chunk
            else:
                data = buffer + chunk
        else:
            data = buffer + chunk
        self._buffer = b""
        self._parse(data)

    def _parse(self, data: bytes) -> None:
        delimiter, n, pos = self._delimiter, len(data), 0
        collector = self._collector
        while True:
            state = self._state
            if state == _BODY:
                found = data.find(delimiter, pos)
                if found < 0:
                    # keep back what may be the start of a delimiter (it starts with CR)
                    cr = data.find(b"\r", max(pos, n - self._keep))
                    keep = n if cr < 0 else cr
                    if keep > pos:
                        collector.part_data(memoryview(data)[pos:keep] if pos or keep < n else data)
                    self._buffer = data[keep:]
                    return
                if found > pos:
                    collector.part_data(memoryview(data)[pos:found])
                collector.part_end()
                pos = found + len(delimiter)
                self._state = _AFTER_DELIMITER
            elif state == _PREAMBLE:
                found = data.find(delimiter, pos)
                if found < 0:  # the preamble is ignored; keep a possible delimiter start
                    self._buffer = data[max(pos, n - self._keep):]
                    return
                pos = found + len(delimiter)
                self._state = _AFTER_DELIMITER
            elif state == _AFTER_DELIMITER:
                if n - pos < 2:
                    self._buffer = data[pos:]
                    return
                if data[pos] == 0x2D and data[pos + 1] == 0x2D:  # "--": the close delimiter
                    self._state = _EPILOGUE
                    return
                start = pos
                while pos < n and data[pos] in (0x20, 0x09):  # transport padding
                    pos += 1
                if pos - start > PADDING_LIMIT:
                    raise _malformed("too much padding after a boundary")
                if n - pos < 2:
                    self._buffer = data[start:]
                    return
                if data[pos] != 0x0D or data[pos + 1] != 0x0A:
                    raise _malformed("a boundary is followed by something other than CRLF or '--'")
                pos += 2
                self._state = _HEADERS
            elif state == _HEADERS:
                if n - pos < 2:
                    self._buffer = data[pos:]
                    return
                if data[pos] == 0x0D and data[pos + 1] == 0x0A:  # a part without headers
                    headers: dict[bytes, bytes] = {}
                    pos += 2
                else:
                    end = data.find(b"\r\n\r\n", pos)
                    if end < 0 or end - pos > HEADER_LIMIT:
                        # without the blank line, refused only once it could not end within the
                        # limit: up to 3 of its bytes may be here, the rest in the next chunk
                        if end >= 0 or n - pos > HEADER_LIMIT + 3:
                            raise _malformed(f"part headers longer than {HEADER_LIMIT} bytes")
                        self._buffer = data[pos:]
                        return
                    headers = _part_headers(data[pos:end])
                    pos = end + 4
                collector.part_begin(headers)
                self._state = _BODY
            else:  # _EPILOGUE: ignored
                return

    def end(self) -> None:
        """The body has ended: raises InvalidInput unless the close delimiter was seen."""
        if self._state != _EPILOGUE:
            raise _malformed("the body ends before the closing boundary")


async def parse_multipart(content_type: str | None, stream: AsyncIterator[bytes], spill_path: Path,
                          max_bytes: int, *, memory_bytes: int | None = None,
                          budget: MemoryBudget = MEMORY_BUDGET,
                          metadata_budget: MemoryBudget = METADATA_BUDGET) -> ParsedUpload:
    """Parse a multipart/form-data body. The ``file`` part comes back in memory when it has at
    most ``memory_bytes`` (default MEMORY_LIMIT) and ``budget`` has room, else in the file
    ``spill_path``. The caller calls ``release()`` on the result when done with it.

    On any error the partial file is removed and the error raised (nothing half-stored)."""
    ctype, params = parse_parameters(content_type, "Content-Type")
    if ctype != "multipart/form-data":
        raise UnsupportedMediaType("POST /photos takes multipart/form-data with parts 'file' and 'metadata'")
    boundary = params.get("boundary", "").encode("latin-1")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary")
    if len(boundary) > _MAX_BOUNDARY:
        raise InvalidInput(f"the multipart boundary is longer than {_MAX_BOUNDARY} characters")
    collector = _Collector(spill_path, max_bytes, MEMORY_LIMIT if memory_bytes is None else memory_bytes, budget,
                           metadata_budget)
    parser = MultipartParser(boundary, collector)
    total = 0
    chunks = aiter(stream)
    held_since: tuple[float, int] | None = None  # when the upload took METADATA_BUDGET, and total then
    try:
        while True:
            if held_since is None and collector.result.metadata_held:
                held_since = (time.monotonic(), total)
            chunk = await (anext(chunks, None) if held_since is None else _next_while_held(chunks, held_since, total))
            if chunk is None:
                break
            total += len(chunk)
            if total > max_bytes + UPLOAD_OVERHEAD:
                raise PayloadTooLarge(f"the upload is larger than {max_bytes + UPLOAD_OVERHEAD} bytes (a photo of at "
                                      f"most {max_bytes} and its metadata of at most {METADATA_PART_LIMIT})")
            parser.feed(chunk)
            if collector.spill_due():
                await run_in_threadpool(collector.spill)
        parser.end()
        if collector.spill_due():
            await run_in_threadpool(collector.spill)
        collector.finish()
    except BaseException:
        collector.close()
        with contextlib.suppress(OSError):  # never made, or a read-only folder: the staging sweep's
            spill_path.unlink(missing_ok=True)
        raise
    return collector.result


async def _next_while_held(chunks: AsyncIterator[bytes], held_since: tuple[float, int], total: int) -> bytes | None:
    """The body's next chunk (None at its end) for an upload holding METADATA_BUDGET: refused
    (408, its budget given back by the caller) once its body has come slower than
    METADATA_MIN_RATE on average since it took the budget (after METADATA_HOLD_GRACE)."""
    started, received_then = held_since
    deadline = started + METADATA_HOLD_GRACE + (total - received_then) / METADATA_MIN_RATE
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await anext(chunks, None)
    except TimeoutError:
        raise RequestTimeout(
            f"the upload holds a large metadata part (a consent form scan) and its body came slower than "
            f"{METADATA_MIN_RATE // 1024} KiB/s: nothing was stored; send it again over a faster link, or record the "
            "form with POST /fhir/Consent and send the photo without it", expression="metadata") from None
