"""Streaming ``multipart/related`` (RFC 2387) for STOW-RS (PS3.18 10.5, 8.6.1.2): each
``application/dicom`` part goes straight to a staging file of its own as it arrives (never held
whole in memory). Limits stop an over-size request early with 413: bytes per part, bytes in all,
and the number of parts.

A part of another media type is not written anywhere: it is recorded (``path`` None) so the
caller can answer for it (STOW-RS lists it as failed) without storing it.

A staging folder with no room left (ENOSPC, EDQUOT) fails the part being written, not the
request: its partial file is removed at once and it is recorded with ``no_room`` (the reserve's
refusal, adapter.errors.staging_failure), the rest of the body is read and dropped, every later
application/dicom part recorded so too, and the parts received whole before it are the caller's
to store as usual (STOW-RS lists the others as failed with 0xA700, as for the reserve). Any
other failure of the folder (read-only, failing) is the request's: StorageError, 503.

Nothing another parser could read otherwise is taken (security review 3): a parameter of the
Content-Type (``boundary``, ``type``, ``start``, ``start-info``, ``charset``...) or of a part's
Content-Type repeated, in RFC 2231 extended form or malformed, or a part header line repeated:
400 (:func:`adapter.api.media_type.parse_parameters`), nothing stored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from adapter.api.media_type import parse_parameters
from adapter.api.multipart import MultipartParser
from adapter.errors import (
    InsufficientStorage,
    InvalidInput,
    PayloadTooLarge,
    UnsupportedMediaType,
    staging_failure,
)

DICOM = "application/dicom"

log = logging.getLogger("adapter.api")


@dataclass
class RelatedPart:
    """One body part: ``path`` holds its bytes when it is ``application/dicom``; ``no_room``
    when it is one the staging folder had no room for (``path`` None: nothing of it kept)."""

    content_type: str
    path: Path | None
    size: int = 0
    no_room: InsufficientStorage | None = None


@dataclass
class ParsedRelated:
    parts: list[RelatedPart] = field(default_factory=list)

    def paths(self) -> list[Path]:
        return [p.path for p in self.parts if p.path is not None]


def related_type(content_type: str | None) -> str:
    """The ``type`` parameter of a ``multipart/related`` Content-Type (``application/dicom``
    when absent, as STOW-RS clients mean it).

    Raises:
        InvalidInput: a parameter repeated or malformed (:func:`~adapter.api.media_type.parse_parameters`).
        UnsupportedMediaType: not multipart/related, or a root type other than application/dicom.
    """
    ctype, params = parse_parameters(content_type, "Content-Type")
    if ctype != "multipart/related":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"')
    root = params.get("type", DICOM).strip().lower()
    if root != DICOM:
        raise UnsupportedMediaType(f'STOW-RS here takes type="{DICOM}" only (not {root[:60]!r})')
    return root


class _Collector:
    """The :class:`~adapter.api.multipart.PartSink` of a STOW-RS body: each application/dicom
    part into a file of its own."""

    def __init__(self, new_path: Callable[[], Path], max_part_bytes: int, max_parts: int) -> None:
        self.result = ParsedRelated()
        self._new_path = new_path
        self._max_part_bytes = max_part_bytes
        self._max_parts = max_parts
        self._part: RelatedPart | None = None
        self._sink: BinaryIO | None = None
        #: The staging folder ran out of room: nothing more is written (module docstring).
        self._no_room: InsufficientStorage | None = None

    def part_begin(self, headers: dict[bytes, bytes]) -> None:
        if len(self.result.parts) >= self._max_parts:
            raise PayloadTooLarge(f"more than {self._max_parts} parts in one request")
        ctype, _ = parse_parameters(headers.get(b"content-type"), "Content-Type")
        media_type = ctype or DICOM  # RFC 2387: the root type by default
        path = self._new_path() if media_type == DICOM and self._no_room is None else None
        self._part = RelatedPart(content_type=media_type, path=path)
        self.result.parts.append(self._part)
        if media_type == DICOM and self._no_room is not None:
            self._part.no_room = self._no_room
        if path is not None:
            try:
                self._sink = path.open("wb")
            except OSError as exc:  # the staging folder: a local failure (read-only, full), 503 not a bare 500
                self._fail(exc, "a received part could not be created in the staging folder")

    def part_data(self, data: bytes | memoryview) -> None:
        if self._part is None:
            return
        self._part.size += len(data)
        if self._part.size > self._max_part_bytes:
            raise PayloadTooLarge(f"a part is larger than {self._max_part_bytes} bytes")
        if self._sink is not None:
            try:
                self._sink.write(data)
            except OSError as exc:
                self._fail(exc, "a received part could not be written to the staging folder")

    def _fail(self, exc: OSError, diagnostics: str) -> None:
        """The staging folder refused the current part: for want of room, that part fails (its
        partial file removed now: its bytes are the room the answer's audit events need) and
        nothing more is written; else the request fails (StorageError)."""
        error = staging_failure(diagnostics, exc)
        if not isinstance(error, InsufficientStorage) or self._part is None:
            raise error from exc
        error.__cause__ = exc  # the log names its errno (StorageError.for_log)
        self._no_room = self._part.no_room = error
        # once, as the C-STORE spool's (adapter.dicom.spool); each part's refusal is logged as refused
        log.error("a STOW-RS part could not be staged: %s; the rest of the request is read and dropped, its "
                  "instances refused with 0xA700 (Out of Resources)", error.for_log())
        path, self._part.path = self._part.path, None
        with contextlib.suppress(OSError):  # what cannot be removed now the staging sweep removes
            self.close()
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def part_end(self) -> None:
        try:
            self.close()  # what the file's buffer held is written now, and may not fit
        except OSError as exc:
            self._fail(exc, "a received part could not be written to the staging folder")
        self._part = None

    def close(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.close()


async def parse_multipart_related(content_type: str | None, stream: AsyncIterator[bytes],
                                  new_path: Callable[[], Path], *, max_part_bytes: int, max_total_bytes: int,
                                  max_parts: int) -> ParsedRelated:
    """Parse a ``multipart/related; type="application/dicom"`` body: each application/dicom
    part is written to its own file from ``new_path()``.

    The body is parsed by the RFC 2046 parser of ``POST /photos``
    (:class:`adapter.api.multipart.MultipartParser`), whose outcome does not depend on how the
    body arrives in chunks (python-multipart's did, for malformed bodies: found by fuzzing).

    On any error every part file is removed and the error raised (nothing half-received is
    left); on success the caller owns (and removes) the files. A part the staging folder had no
    room for is no error: it has ``no_room`` and no file (module docstring).

    Raises:
        UnsupportedMediaType: see :func:`related_type`.
        InvalidInput: no boundary, a parameter or part header repeated, or a malformed body.
        PayloadTooLarge: a limit was passed.
        StorageError: the staging folder failed, other than for want of room.
    """
    related_type(content_type)
    _, params = parse_parameters(content_type, "Content-Type")
    boundary = params.get("boundary", "").encode("latin-1")
    if not boundary:
        raise InvalidInput("multipart/related without a boundary")
    collector = _Collector(new_path, max_part_bytes, max_parts)
    parser = MultipartParser(boundary, collector)
    total = 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > max_total_bytes:
                raise PayloadTooLarge(f"the request is larger than {max_total_bytes} bytes")
            parser.feed(chunk)
        parser.end()
    except BaseException:
        _discard(collector)
        raise
    collector.close()
    return collector.result


def _discard(collector: _Collector) -> None:
    """Remove the parts received so far. A part that could not be removed (its folder failing,
    or never created there) does not hide the error being raised: the staging sweep removes
    what is left (adapter.store.blobs)."""
    with contextlib.suppress(OSError):
        collector.close()
    for path in collector.result.paths():
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


__all__ = ["DICOM", "ParsedRelated", "RelatedPart", "parse_multipart_related", "related_type"]
