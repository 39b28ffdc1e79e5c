"""Whether two Part 10 files hold the same data set in other encodings: the comparison of an
object re-sent under a SOP Instance UID stored already (adapter.services.dicom_ingest
``_check_resend``) when its bytes are not the stored object's.

A transfer syntax is an encoding of the SOP Instance, not part of it (PS3.5 10): an archive
that received an object in Explicit VR Little Endian sends it on in Implicit VR Little Endian,
or the other way round, when that is what the peer accepts. Both are little endian, so every
element's value is the same bytes in either; what differs is the element headers (the VR
written or not, 2- or 4-byte lengths), how a sequence or item is delimited (defined or
undefined length), and how a private sequence whose creator is not in the dictionary reads in
Implicit VR (as UN, its items Implicit VR encoded: PS3.5 6.2.2). So the data sets are compared
element by element, tag and value bytes, sequences item by item, the file meta aside (group
0002, written by the sender's toolkit) and Data Set Trailing Padding (FFFC,FFFC) aside (it has
no meaning: PS3.10 7.2).

Pixel data compares as bytes too: native pixel data is the same bytes in every native syntax.
Encapsulated pixel data against native is never the same: a JPEG frame decoded is the decoder's
rendering of lossy data (PS3.5 8.2.1), which no other decoder is bound to reproduce bit for bit,
and its Photometric Interpretation changes with it; so a compressed object re-sent
decompressed is another content (docs/dicom.md).

Cost: the elements are read in step, one pair at a time, and the comparison stops at the first
difference; a value past :data:`_DEFER` bytes (the pixel data) is not loaded but compared a
chunk at a time from both files, and only once everything before it was the same.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filereader import data_element_generator, read_file_meta_info, read_sequence
from pydicom.sequence import Sequence
from pydicom.uid import UID

_DEFER = 1 << 16  # values longer than this are compared from the files, not loaded
_CHUNK = 1 << 20
_TRAILING_PADDING = 0xFFFCFFFC
_ITEM = b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item, little endian
_Element = RawDataElement | DataElement


def transfer_syntax_of(path: Path) -> UID:
    """The Transfer Syntax UID of the Part 10 file at ``path`` (its file meta)."""
    return UID(str(read_file_meta_info(path).get("TransferSyntaxUID", "")).strip("\x00 "))


def same_data_set_decoded(path: Path, at: int, stored: Path, stored_at: int) -> bool:
    """Whether the data sets of the Part 10 files at ``path`` and ``stored`` (from their offsets
    ``at`` and ``stored_at``, past the file meta) hold the same elements and values in whatever
    little-endian transfer syntaxes their file meta name (module docstring). A data set pydicom
    cannot read, or in a syntax that is not little endian or is deflated, is not the same.

    Raises:
        ValueError, KeyError, ...: a malformed data set (the caller's to catch);
        OSError: the disk.
    """
    syntaxes = transfer_syntax_of(path), transfer_syntax_of(stored)
    if not all(s.is_transfer_syntax and s.is_little_endian and not s.is_deflated for s in syntaxes):
        return False
    with open(path, "rb") as fh, open(stored, "rb") as gh:
        fh.seek(at)
        gh.seek(stored_at)
        mine = data_element_generator(fh, syntaxes[0].is_implicit_VR, True, defer_size=_DEFER)
        theirs = data_element_generator(gh, syntaxes[1].is_implicit_VR, True, defer_size=_DEFER)
        return _same_elements(_content(mine), _content(theirs), fh, gh)


def _content(elements: Iterable[_Element]) -> Iterator[_Element]:
    """The elements of a data set that are its content: not the file meta, not the padding."""
    for element in elements:
        if element.tag >> 16 != 0x0002 and element.tag != _TRAILING_PADDING:
            yield element


def _same_elements(mine: Iterator[_Element], theirs: Iterator[_Element], fh: BinaryIO, gh: BinaryIO) -> bool:
    while True:
        a, b = next(mine, None), next(theirs, None)
        if a is None or b is None:
            return a is b
        if a.tag != b.tag or not _same_value(a, b, fh, gh):
            return False


def _same_value(a: _Element, b: _Element, fh: BinaryIO, gh: BinaryIO) -> bool:
    mine, theirs = _sequence(a, fh), _sequence(b, gh)
    if mine is not None or theirs is not None:
        if mine is None or theirs is None or len(mine) != len(theirs):
            return False
        return all(_same_elements(_content(x.elements()), _content(y.elements()), fh, gh)
                   for x, y in zip(mine, theirs, strict=True))
    if a.value is None or b.value is None or isinstance(a.value, bytes) and isinstance(b.value, bytes):
        return _same_bytes(a, b, fh, gh)  # a deferred one (long, read from its file) or both loaded
    return False  # a value pydicom decoded already: not compared, so not taken as the same


def _sequence(element: _Element, fh: BinaryIO) -> Sequence | None:
    """The element's items if it is a sequence, read from its value bytes: a sequence in Explicit
    VR (its items Explicit VR encoded), one in Implicit VR (its VR from the data dictionary), or
    a private sequence read from Implicit VR, or sent, as UN (its items Implicit VR Little Endian
    encoded: PS3.5 6.2.2)."""
    if isinstance(element.value, Sequence):
        return element.value
    if element.VR == "SQ" or element.VR is None and _dictionary_sequence(element.tag):
        value = _value(element, fh)
    elif element.VR in (None, "UN") and element.tag >> 16 & 1:  # private: a sequence if it holds items
        value = _value(element, fh)
        if value[:4] != _ITEM:
            return None
    else:
        return None
    return read_sequence(io.BytesIO(value), element.VR != "SQ", True, len(value), [default_encoding])


def _dictionary_sequence(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def _value(element: _Element, fh: BinaryIO) -> bytes:
    if isinstance(element.value, bytes):
        return element.value
    return b"".join(_chunk(element, fh, start) for start in range(0, _length(element), _CHUNK))


def _same_bytes(a: _Element, b: _Element, fh: BinaryIO, gh: BinaryIO) -> bool:
    """Two values, either deferred (read from its file, a chunk at a time) or loaded."""
    if _length(a) != _length(b):
        return False
    for start in range(0, _length(a), _CHUNK):
        if _chunk(a, fh, start) != _chunk(b, gh, start):
            return False
    return True


def _length(element: _Element) -> int:
    if isinstance(element.value, bytes):
        return len(element.value)
    return int(_deferred(element).length)


def _deferred(element: _Element) -> RawDataElement:
    """A value pydicom left in the file (longer than :data:`_DEFER`, or empty)."""
    if not isinstance(element, RawDataElement) or element.value is not None or element.value_tell is None:
        raise ValueError("a value that is neither bytes nor left in the file")
    return element


def _chunk(element: _Element, fh: BinaryIO, start: int) -> bytes:
    if isinstance(element.value, bytes):
        return element.value[start:start + _CHUNK]
    deferred = _deferred(element)
    here = fh.tell()
    try:
        fh.seek(int(deferred.value_tell) + start)
        return fh.read(min(_CHUNK, int(deferred.length) - start))
    finally:
        fh.seek(here)


__all__ = ["same_data_set_decoded", "transfer_syntax_of"]
