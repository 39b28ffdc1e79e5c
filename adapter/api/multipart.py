"""Streaming ``multipart/form-data`` for ``POST /photos``: the ``file`` part goes straight to
a staging file on disk as it arrives (never held whole in memory); small parts (``metadata``)
are kept in memory up to a limit. Over-size uploads stop early with 413."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from adapter.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

SMALL_PART_LIMIT = 1024 * 1024  # metadata JSON, with room for a base64 consent form


@dataclass
class ParsedUpload:
    file_path: Path | None = None
    file_size: int = 0
    file_content_type: str | None = None
    fields: dict[str, bytes] = field(default_factory=dict)


class _Collector:
    def __init__(self, file_path: Path, max_bytes: int) -> None:
        self.result = ParsedUpload()
        self._file_path = file_path
        self._max_bytes = max_bytes
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._sink: BinaryIO | None = None
        self._buffer: bytearray | None = None

    def on_part_begin(self) -> None:
        self._headers = {}
        self._name = None
        self._sink = None
        self._buffer = None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field = b""
        self._header_value = b""

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        raw_name = params.get(b"name")
        self._name = raw_name.decode("utf-8", "replace") if raw_name else None
        if self._name == "file":
            if self.result.file_path is not None:
                raise InvalidInput("more than one 'file' part", expression="file")
            ctype, _ = parse_options_header(self._headers.get(b"content-type", b""))
            self.result.file_content_type = ctype.decode("latin-1") or None
            self.result.file_path = self._file_path
            self._sink = self._file_path.open("wb")
        else:
            self._buffer = bytearray()

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._sink is not None:
            self.result.file_size += len(chunk)
            if self.result.file_size > self._max_bytes:
                raise PayloadTooLarge(f"the photo is larger than {self._max_bytes} bytes")
            self._sink.write(chunk)
        elif self._buffer is not None:
            self._buffer += chunk
            if len(self._buffer) > SMALL_PART_LIMIT:
                raise PayloadTooLarge(f"part '{self._name}' is larger than {SMALL_PART_LIMIT} bytes")

    def on_part_end(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None
        elif self._buffer is not None and self._name:
            self.result.fields[self._name] = bytes(self._buffer)
            self._buffer = None

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()
            self._sink = None


async def parse_multipart(content_type: str | None, stream: AsyncIterator[bytes], file_path: Path,
                          max_bytes: int) -> ParsedUpload:
    """Parse a multipart/form-data body; the ``file`` part is written to ``file_path``.

    On any error the partial file is removed and the error raised (nothing half-stored)."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        raise UnsupportedMediaType("POST /photos takes multipart/form-data with parts 'file' and 'metadata'")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidInput("multipart/form-data without a boundary")
    collector = _Collector(file_path, max_bytes)
    callbacks = {name: getattr(collector, name) for name in (
        "on_part_begin", "on_header_field", "on_header_value", "on_header_end", "on_headers_finished",
        "on_part_data", "on_part_end")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    total = 0
    try:
        async for chunk in stream:
            total += len(chunk)
            if total > max_bytes + SMALL_PART_LIMIT:
                raise PayloadTooLarge(f"the upload is larger than {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        collector.close()
        file_path.unlink(missing_ok=True)
        raise InvalidInput(f"malformed multipart body: {exc}") from exc
    except BaseException:
        collector.close()
        file_path.unlink(missing_ok=True)
        raise
    collector.close()
    return collector.result
