"""Streaming ``multipart/related`` (RFC 2387) for STOW-RS (PS3.18 10.5, 8.6.1.2): each
``application/dicom`` part goes straight to a staging file of its own as it arrives (never held
whole in memory). Limits stop an over-size request early with 413: bytes per part, bytes in all,
and the number of parts.

A part of another media type is not written anywhere: it is recorded (``path`` None) so the
caller can answer for it (STOW-RS lists it as failed) without storing it.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import parse_options_header

from adapter.api.multipart import MultipartParser
from adapter.errors import InvalidInput, PayloadTooLarge, StorageError, UnsupportedMediaType

DICOM = "application/dicom"


@dataclass
class RelatedPart:
    """One body part: ``path`` holds its bytes when it is ``application/dicom``."""

    content_type: str
    path: Path | None
    size: int = 0


@dataclass
class ParsedRelated:
    parts: list[RelatedPart] = field(default_factory=list)

    def paths(self) -> list[Path]:
        return [p.path for p in self.parts if p.path is not None]


def related_type(content_type: str | None) -> str:
    """The ``type`` parameter of a ``multipart/related`` Content-Type (``application/dicom``
    when absent, as STOW-RS clients mean it).

    Raises:
        UnsupportedMediaType: not multipart/related, or a root type other than application/dicom.
    """
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/related":
        raise UnsupportedMediaType('STOW-RS takes multipart/related; type="application/dicom"')
    root = params.get(b"type", DICOM.encode()).decode("latin-1").strip().lower()
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

    def part_begin(self, headers: dict[bytes, bytes]) -> None:
        if len(self.result.parts) >= self._max_parts:
            raise PayloadTooLarge(f"more than {self._max_parts} parts in one request")
        ctype, _ = parse_options_header(headers.get(b"content-type", b""))
        media_type = ctype.decode("latin-1").lower() or DICOM  # RFC 2387: the root type by default
        path = self._new_path() if media_type == DICOM else None
        self._part = RelatedPart(content_type=media_type, path=path)
        self.result.parts.append(self._part)
        if path is not None:
            try:
                self._sink = path.open("wb")
            except OSError as exc:  # the staging folder: a local failure (read-only, full), 503 not a bare 500
                raise StorageError("a received part could not be created in the staging folder") from exc

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
                raise StorageError("a received part could not be written to the staging folder") from exc

    def part_end(self) -> None:
        self.close()
        self._part = None

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


async def parse_multipart_related(content_type: str | None, stream: AsyncIterator[bytes],
                                  new_path: Callable[[], Path], *, max_part_bytes: int, max_total_bytes: int,
                                  max_parts: int) -> ParsedRelated:
    """Parse a ``multipart/related; type="application/dicom"`` body: each application/dicom
    part is written to its own file from ``new_path()``.

    The body is parsed by the RFC 2046 parser of ``POST /photos``
    (:class:`adapter.api.multipart.MultipartParser`), whose outcome does not depend on how the
    body arrives in chunks (python-multipart's did, for malformed bodies: found by fuzzing).

    On any error every part file is removed and the error raised (nothing half-received is
    left); on success the caller owns (and removes) the files.

    Raises:
        UnsupportedMediaType: see :func:`related_type`.
        InvalidInput: no boundary, or a malformed body.
        PayloadTooLarge: a limit was passed.
    """
    related_type(content_type)
    _, params = parse_options_header(content_type or "")
    boundary = params.get(b"boundary")
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
