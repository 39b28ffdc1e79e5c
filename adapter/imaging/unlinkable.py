"""A restricted view's copy of an image made unlike, byte for byte, the stored image and the other
view's copy, its decoded pixels unchanged and nothing added that is metadata.

The SHA-256 of the stored bytes is care's record identifier and the uploader's receipt gives it;
a copy released byte for byte as stored would hash to it, and the de-identified and the
pseudonymised copies of it to each other, so that a file hash would link a research extract to the
patient, or a de-identified copy to its pseudonym. Each copy is therefore written in its view's
own, equally standard, way:

* **JPEG**: fill bytes ``FF`` before the first SOS marker (ITU-T T.81 B.1.1.2: "Any marker may
  optionally be preceded by any number of fill bytes"; libjpeg and Pillow skip them): 1 or 3 in
  the de-identified copy, 2 or 4 in the pseudonymised one.
* **PNG**: the zlib stream split between two IDAT chunks (PNG §10.1: it may be divided among any
  number of IDAT chunks), the first holding 1 or 3 bytes of it in the de-identified copy, 2 or 4
  in the pseudonymised one; the CRCs computed afresh.

A JPEG or PNG parses into one marker-segment (chunk) sequence only, so copies whose counts differ
in parity differ whatever else they hold: the two views' copies never coincide. Of its view's
two counts a copy takes the one its source already has (a copy made again from a released copy,
as a rendered frame is made from the released DICOM object, keeps that copy's count and bytes),
else the first; and the other when that would give exactly the bytes it must not be
(``unlike``: the stored image, which may itself hold such fill bytes or split).

The pixels, and so the picture, are the same in every view: whoever holds the photo can still
recognise it. Only the file hash stops being a key.
"""

from __future__ import annotations

from adapter.errors import ImageTooLarge, UndecodableImage
from adapter.imaging.jpeg import SOS
from adapter.imaging.jpeg import walk as walk_jpeg
from adapter.imaging.png import make_chunk
from adapter.imaging.png import walk as walk_png
from adapter.imaging.sniff import JPEG, PNG

#: Which restricted copy (its counts: this + 1 and this + 3).
DEIDENTIFIED_COPY = 0
PSEUDONYMISED_COPY = 1


def unlinkable_copy(data: bytes, content_type: str, copy: int, *, source: bytes | None = None,
                    unlike: bytes | None = None) -> bytes:
    """``data`` (a view's stripped JPEG or PNG) as view ``copy`` (:data:`DEIDENTIFIED_COPY`,
    :data:`PSEUDONYMISED_COPY`) releases it (module docstring); ``source``: what ``data`` was made
    from (its count is kept when it is one of the view's); ``unlike``: bytes the copy must not be.
    Anything that is not a JPEG or PNG the project's walkers read is returned as it is."""
    counts = (1 + copy, 3 + copy)
    if content_type == JPEG:
        write, count_of = _jpeg_with_fill, _jpeg_fill
    elif content_type == PNG:
        write, count_of = _png_split, _png_first_idat
    else:
        return data
    had = count_of(source) if source is not None else None
    first, other = (counts[1], counts[0]) if had == counts[1] else counts
    out = write(data, first)
    if out is not None and unlike is not None and _same(out, unlike):
        out = write(data, other)
    return data if out is None else out


def _same(out: bytes, unlike: bytes) -> bool:
    """``out`` is ``unlike``, or ``unlike`` but for the NULs that pad it to even (a DICOM frame)."""
    return out == unlike or (unlike.startswith(out) and not unlike[len(out):].strip(b"\x00"))


def _first_scan(data: bytes) -> tuple[int, int] | None:
    """Where the first SOS marker's ``FF`` is and how many fill bytes precede it (after the
    segment before it); None when the stream does not walk (adapter.imaging.jpeg.walk)."""
    try:
        layout = walk_jpeg(data)
    except (UndecodableImage, ImageTooLarge):
        return None
    before = 2  # after SOI
    for segment in layout.segments:
        if segment.marker == SOS:
            fill = segment.start
            while fill > before and data[fill - 1] == 0xFF:
                fill -= 1
            return segment.start, segment.start - fill
        before = segment.end
    return None


def _jpeg_fill(data: bytes) -> int | None:
    found = _first_scan(data)
    return None if found is None else found[1]


def _jpeg_with_fill(data: bytes, count: int) -> bytes | None:
    found = _first_scan(data)
    if found is None:
        return None
    start, fill = found
    return data[:start - fill] + b"\xff" * count + data[start:]


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """Each chunk's type and where its data is (start, end); None when the stream does not walk
    (adapter.imaging.png.walk)."""
    try:
        layout = walk_png(data)
    except UndecodableImage:
        return None
    return [(chunk.type, chunk.start + 8, chunk.end - 4) for chunk in layout.chunks]


def _png_first_idat(data: bytes) -> int | None:
    chunks = _png_chunks(data)
    idats = [(start, end) for ctype, start, end in chunks or () if ctype == b"IDAT"]
    return idats[0][1] - idats[0][0] if len(idats) == 2 else None


def _png_split(data: bytes, count: int) -> bytes | None:
    chunks = _png_chunks(data)
    if chunks is None:
        return None
    at = [i for i, (ctype, _, _) in enumerate(chunks) if ctype == b"IDAT"]
    if not at or at != list(range(at[0], at[-1] + 1)):  # §5.6: IDAT chunks are consecutive
        return None
    stream = b"".join(data[start:end] for _, start, end in chunks[at[0]:at[-1] + 1])
    if len(stream) <= count:
        return None
    head = chunks[at[0]][1] - 8  # where the first IDAT chunk starts
    tail = chunks[at[-1]][2] + 4  # where the last one ends
    return data[:head] + make_chunk(b"IDAT", stream[:count]) + make_chunk(b"IDAT", stream[count:]) + data[tail:]


__all__ = ["DEIDENTIFIED_COPY", "PSEUDONYMISED_COPY", "unlinkable_copy"]
