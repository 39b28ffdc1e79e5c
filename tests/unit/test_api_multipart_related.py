"""The streaming multipart/related parser of STOW-RS: its outcome does not depend on how the body
arrives in chunks."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from adapter.api.multipart_related import ParsedRelated, parse_multipart_related
from adapter.errors import AdapterError, InvalidInput

pytestmark = pytest.mark.unit

CTYPE = 'multipart/related; type="application/dicom"; boundary=fuzzBOUNDARY'


async def _stream(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def _pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in itertools.cycle(sizes):
        if pos >= len(data):
            return out
        out.append(data[pos:pos + size])
        pos += size
    return out


def parse(data: bytes, sizes: list[int], tmp_path: Path) -> ParsedRelated | str:
    counter = itertools.count()

    def new_path() -> Path:
        return tmp_path / f"part-{next(counter)}"

    try:
        parsed = asyncio.run(parse_multipart_related(CTYPE, _stream(_pieces(data, sizes)), new_path,
                                                     max_part_bytes=1 << 20, max_total_bytes=1 << 21, max_parts=8))
    except AdapterError as exc:
        assert not list(tmp_path.iterdir()), "a refused request left part files"
        return type(exc).__name__
    return parsed


@pytest.mark.parametrize("body", [
    b"\n\r\nross--fuzzBOUNDARY--",  # no delimiter at a line start: no multipart body at all
    b"--fuzzBOUNDARY\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--fuzzBOUNDARYx",
])
def test_a_malformed_body_is_refused_however_it_is_cut(tmp_path: Path, body: bytes) -> None:
    """Found by the fuzzing review (fuzz_multipart): with python-multipart underneath, the first
    body was an empty multipart (no parts) in one chunk and malformed in chunks of 1, 5, 7 bytes,
    and a longer one gave two garbage parts whole but a refusal in chunks."""
    assert parse(body, [len(body)], tmp_path) == "InvalidInput"
    assert parse(body, [1, 5, 7], tmp_path) == "InvalidInput"


def test_parts_are_the_same_however_the_body_is_cut(tmp_path: Path) -> None:
    body = (b"preamble\r\n--fuzzBOUNDARY\r\nContent-Type: application/dicom\r\n\r\n" + b"DICM" * 8
            + b"\r\n--fuzzBOUNDARY\r\nContent-Type: application/json\r\n\r\n{}\r\n--fuzzBOUNDARY\r\n\r\n"
            + b"rootless\r\n--fuzzBOUNDARY--\r\nepilogue")
    seen = []
    for sizes in ([len(body)], [1], [1, 5, 7], [13]):
        folder = tmp_path / str(len(seen))
        folder.mkdir()
        parsed = parse(body, sizes, folder)
        assert not isinstance(parsed, str)
        seen.append([(p.content_type, p.size, p.path.read_bytes() if p.path else None) for p in parsed.parts])
    assert seen[0] == [("application/dicom", 32, b"DICM" * 8), ("application/json", 2, None),
                       ("application/dicom", 8, b"rootless")]
    assert all(parts == seen[0] for parts in seen)


def test_no_boundary_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput):
        asyncio.run(parse_multipart_related('multipart/related; type="application/dicom"', _stream([b"x"]),
                                            lambda: tmp_path / "p", max_part_bytes=1, max_total_bytes=1,
                                            max_parts=1))


# -- security review finding 3: nothing another parser could read otherwise ----------------------

def _parse_as(content_type: str, data: bytes, tmp_path: Path) -> ParsedRelated | str:
    try:
        return asyncio.run(parse_multipart_related(content_type, _stream([data]), lambda: tmp_path / "part",
                                                   max_part_bytes=1 << 20, max_total_bytes=1 << 21, max_parts=8))
    except AdapterError as exc:
        assert not list(tmp_path.iterdir()), "a refused request left part files"
        return f"{type(exc).__name__}: {exc}"


_ONE = b"--fuzzBOUNDARY\r\nContent-Type: application/dicom\r\n\r\nDICM\r\n--fuzzBOUNDARY--"


@pytest.mark.parametrize("content_type", [
    'multipart/related; type="application/dicom"; boundary=fuzzBOUNDARY; boundary=other',
    'multipart/related; type="application/dicom"; boundary=other; boundary=fuzzBOUNDARY',
    'multipart/related; type="application/dicom"; type="application/dicom+xml"; boundary=fuzzBOUNDARY',
    'multipart/related; type="application/dicom+xml"; type="application/dicom"; boundary=fuzzBOUNDARY',
    'multipart/related; type="application/dicom"; start="<a>"; start="<b>"; boundary=fuzzBOUNDARY',
    'multipart/related; type="application/dicom"; charset=utf-8; charset=latin1; boundary=fuzzBOUNDARY',
    "multipart/related; type*=utf-8''application%2Fdicom; boundary=fuzzBOUNDARY",
])
def test_a_repeated_or_extended_content_type_parameter_is_refused(tmp_path: Path, content_type: str) -> None:
    """Security review 3: the last of a repeated parameter won here (python-multipart), the first
    in other parsers."""
    assert _parse_as(content_type, _ONE, tmp_path).startswith("AmbiguousRequest")  # type: ignore[union-attr]


@pytest.mark.parametrize("headers", [
    b"Content-Type: application/dicom\r\nContent-Type: image/jpeg",
    b"Content-Type: image/jpeg\r\nContent-Type: application/dicom",
    b'Content-Type: application/dicom; transfer-syntax="1.2.840.10008.1.2.1"; transfer-syntax="1.2.840.10008.1.2"',
    b"Content-ID: <a>\r\nContent-Type: application/dicom\r\nContent-ID: <b>",
])
def test_a_repeated_part_header_or_parameter_is_refused(tmp_path: Path, headers: bytes) -> None:
    data = b"--fuzzBOUNDARY\r\n" + headers + b"\r\n\r\nDICM\r\n--fuzzBOUNDARY--"
    assert _parse_as(CTYPE, data, tmp_path).startswith("AmbiguousRequest")  # type: ignore[union-attr]


def test_the_first_part_is_kept_when_nothing_is_repeated(tmp_path: Path) -> None:
    parsed = _parse_as(CTYPE + '; start="<a>"; start-info="x"', _ONE, tmp_path)
    assert isinstance(parsed, ParsedRelated) and [p.content_type for p in parsed.parts] == ["application/dicom"]
