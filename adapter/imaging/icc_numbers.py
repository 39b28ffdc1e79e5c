"""The bytes of an ICC tag of a numeric type that hold its numbers (review of the merges F3).

A numeric tag (curves, matrices, XYZ, LUTs…: what the colour transform reads) is kept, but only
the length its type and its counts define (ICC.1:2010 §10, and the v2/v4.4/Apple types named in
:data:`NUMERIC_TYPES`): its type signature, then its numbers. The reserved bytes 4-7 (§10.1,
zero by definition), the pad bytes of a LUT's header, a CLUT's unused grid points, and every
byte past the numbers within the tag's declared size are read by no CMM and may hold anything
("JaneDoe MRN01"): :func:`numeric_tag` zeroes them.

Where a type's count is its size (the arrays ``sf32``, ``uf32``, ``ui08``… §10.18-10.23) the
numbers run to the last whole value, except ``chad`` (§9.2.15: nine values). Every XYZType tag
ICC.1:2010 §9 defines holds one value, so an ``XYZ `` tag keeps one. A ``mpet`` tag (§10.14) keeps
its header, its position table and the spans that table gives its elements (an element's own
inner slack is not reached). A tag shorter than its numbers, or of an unknown curve or gamma
kind, is a layout fault: None (the caller drops the profile).
"""

from __future__ import annotations

import math
import struct

#: ICC.1:2010 §10 (and v2's ``mft1``/``mft2`` LUTs, v4.4's ``cicp``, Apple's ``vcgt`` gamma table):
#: types of numbers and signatures only, which the colour transform reads.
NUMERIC_TYPES = frozenset({
    b"XYZ ", b"curv", b"para", b"sf32", b"uf32", b"ui08", b"ui16", b"ui32", b"ui64", b"chrm", b"clro",
    b"mft1", b"mft2", b"mAB ", b"mBA ", b"meas", b"mpet", b"sig ", b"view", b"dtim", b"cicp", b"vcgt",
})
#: A type signature and its 4 reserved bytes (§10.1) start every tag.
TYPE_HEADER = 8
#: Fixed lengths (§10.4 dateTimeType, §10.12 measurementType, §10.23 signatureType, §10.30
#: viewingConditionsType, ICC.1:2022 §10.2 cicpType; one XYZNumber, §10.31 and §9).
_FIXED = {b"dtim": 20, b"meas": 36, b"sig ": 12, b"view": 36, b"cicp": 12, b"XYZ ": 20}
#: Array types: the size of one value (§10.18-10.23).
_ARRAYS = {b"sf32": 4, b"uf32": 4, b"ui08": 1, b"ui16": 2, b"ui32": 4, b"ui64": 8}
#: Arrays whose tag fixes their count (§9.2.15 chromaticAdaptationTag: a 3x3 matrix).
_ARRAY_COUNTS = {b"chad": 9}
#: parametricCurveType (§10.16): parameters per function type.
_PARA_PARAMETERS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}

Span = tuple[int, int]


def numeric_tag(data: bytes, signature: bytes) -> bytes | None:
    """``data`` (a tag of a :data:`NUMERIC_TYPES` type) with every byte but its type signature and
    numbers zeroed, of the same length; None when it is shorter than they are (module docstring)."""
    spans = _spans(data, signature)
    if spans is None or any(end > len(data) for _, end in spans):
        return None
    out = bytearray(len(data))
    for start, end in spans:
        out[start:end] = data[start:end]
    return bytes(out)


def _spans(data: bytes, signature: bytes) -> list[Span] | None:
    """The tag's spans of type signature and numbers (offsets in the tag)."""
    kind = data[:4]
    if kind in _FIXED:
        return [(0, 4), (TYPE_HEADER, _FIXED[kind])]
    if kind in _ARRAYS:
        width = _ARRAYS[kind]
        count = _ARRAY_COUNTS.get(signature, (len(data) - TYPE_HEADER) // width)
        return [(0, 4), (TYPE_HEADER, TYPE_HEADER + width * count)]
    if kind in (b"curv", b"para"):
        end = _curve_end(data, 0)
        return None if end is None else [(0, 4), (TYPE_HEADER, end)]
    if kind == b"chrm":  # §10.2: channels, phosphor or colorant type, then an xy pair per channel
        channels = _u16(data, 8)
        return None if channels is None else [(0, 4), (TYPE_HEADER, 12 + 8 * channels)]
    if kind == b"clro":  # §10.3: count, then one colorant number per byte
        colorants = _u32(data, 8)
        return None if colorants is None else [(0, 4), (TYPE_HEADER, 12 + colorants)]
    if kind in (b"mft1", b"mft2"):
        return _lut(data)
    if kind in (b"mAB ", b"mBA "):
        return _lut_ab(data, kind)
    if kind == b"mpet":
        return _mpet(data)
    if kind == b"vcgt":
        return _vcgt(data)
    return None


def _u16(data: bytes, offset: int) -> int | None:
    return struct.unpack_from(">H", data, offset)[0] if offset + 2 <= len(data) else None


def _u32(data: bytes, offset: int) -> int | None:
    return struct.unpack_from(">I", data, offset)[0] if offset + 4 <= len(data) else None


def _curve_end(data: bytes, start: int) -> int | None:
    """The end of the curve (§10.5 curveType, §10.16 parametricCurveType) at ``start``."""
    kind = data[start:start + 4]
    if kind == b"curv":
        count = _u32(data, start + 8)
        return None if count is None else start + 12 + 2 * count
    if kind == b"para":
        function = _u16(data, start + 8)
        if function not in _PARA_PARAMETERS:
            return None
        return start + 12 + 4 * _PARA_PARAMETERS[function]
    return None


def _curves(data: bytes, start: int, count: int) -> list[Span] | None:
    """A sequence of ``count`` curves from ``start``, each 4-byte aligned (§10.10): each curve's
    type signature and numbers (its reserved bytes and the padding between curves left out)."""
    spans: list[Span] = []
    for _ in range(count):
        end = _curve_end(data, start)
        if end is None:
            return None
        spans += [(start, start + 4), (start + TYPE_HEADER, end)]
        start = end + (-end % 4)
    return spans


def _lut(data: bytes) -> list[Span] | None:
    """lut8Type (§10.8) and lut16Type (§10.9): counts, matrix, input tables, CLUT, output tables."""
    if len(data) < 52:
        return None
    inputs, outputs, grid = data[8], data[9], data[10]
    if data[:4] == b"mft1":
        return [(0, 4), (TYPE_HEADER, 11), (12, 48 + 256 * inputs + grid ** inputs * outputs + 256 * outputs)]
    entries_in, entries_out = struct.unpack_from(">HH", data, 48)
    return [(0, 4), (TYPE_HEADER, 11),
            (12, 52 + 2 * (entries_in * inputs + grid ** inputs * outputs + entries_out * outputs))]


def _lut_ab(data: bytes, kind: bytes) -> list[Span] | None:
    """lutAToBType (§10.10) and lutBToAType (§10.11): channels, then the elements its offsets name
    (B curves, matrix, M curves, CLUT, A curves; an offset of 0: absent)."""
    if len(data) < 32:
        return None
    inputs, outputs = data[8], data[9]
    b_curves, matrix, m_curves, clut, a_curves = struct.unpack_from(">5I", data, 12)
    # the B and M curves are on the output side of an A-to-B LUT, the input side of a B-to-A one
    b_count, a_count = (outputs, inputs) if kind == b"mAB " else (inputs, outputs)
    spans: list[Span] = [(0, 4), (TYPE_HEADER, 10), (12, 32)]
    for offset, count in ((b_curves, b_count), (m_curves, b_count), (a_curves, a_count)):
        if offset:
            curves = _curves(data, offset, count)
            if curves is None:
                return None
            spans += curves
    if matrix:
        spans.append((matrix, matrix + 48))
    if clut:
        if clut + 20 > len(data) or data[clut + 16] not in (1, 2):
            return None
        points = math.prod(data[clut:clut + min(inputs, 16)])
        spans += [(clut, clut + min(inputs, 16)), (clut + 16, clut + 17),
                  (clut + 20, clut + 20 + points * outputs * data[clut + 16])]
    return spans


def _mpet(data: bytes) -> list[Span] | None:
    """multiProcessElementsType (§10.14): channels, element count, the position table, and the
    span of each element it names."""
    count = _u32(data, 12)
    if count is None or 16 + 8 * count > len(data):
        return None
    spans: list[Span] = [(0, 4), (TYPE_HEADER, 16 + 8 * count)]
    for i in range(count):
        offset, size = struct.unpack_from(">II", data, 16 + 8 * i)
        spans.append((offset, offset + size))
    return spans


def _vcgt(data: bytes) -> list[Span] | None:
    """Apple's video card gamma type: a table (channels, entry count and size, the entries) or a
    formula (gamma, minimum and maximum of each of three channels, s15Fixed16)."""
    gamma_type = _u32(data, 8)
    if gamma_type == 0 and len(data) >= 18:
        channels, entries, size = struct.unpack_from(">3H", data, 12)
        return [(0, 4), (TYPE_HEADER, 18 + channels * entries * size)]
    if gamma_type == 1:
        return [(0, 4), (TYPE_HEADER, 48)]
    return None


__all__ = ["NUMERIC_TYPES", "TYPE_HEADER", "numeric_tag"]
