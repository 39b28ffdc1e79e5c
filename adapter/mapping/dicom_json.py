"""A released DICOM object as WADO-RS metadata and frames (PS3.18 10.4 and 8.7, PS3.18 F).

Both take the Part 10 bytes a release made (adapter.services.access: decided, audited, cleaned
for the purpose's view), never the stored object, so they show exactly what the object shows.

* :func:`metadata`: the DICOM JSON Model of every attribute, with bulk data replaced by
  BulkDataURIs (PS3.18 10.4.1.2): Pixel Data by the frames resource of the instance, the
  Encapsulated Document (a whole PDF, however small) and other binary values over
  :data:`INLINE_LIMIT` bytes (an ICC profile) by the instance's bulkdata resource for their tag;
  smaller ones inline (InlineBinary).
* :func:`frames`: the frames an instance's Pixel Data holds, each as stored: the bitstream of an
  encapsulated frame (JPEG Baseline, say), or the bytes of a native frame.
* :func:`bulk_value`: the bytes of one bulk data element the metadata pointed to.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, generate_frames, parse_basic_offsets
from pydicom.filewriter import correct_ambiguous_vr_element
from pydicom.tag import Tag

from adapter.errors import InvalidQuery, NotFound, StorageError
from adapter.text import is_digits

#: Binary values up to this many bytes are given inline (InlineBinary), larger ones by BulkDataURI.
INLINE_LIMIT = 1024
PIXEL_DATA = 0x7FE00010
#: The Encapsulated Document (0042,0011): a document, never metadata, so always by BulkDataURI
#: (PS3.18 10.4.3.3.2 lets the origin server choose; the metadata resources are the instance
#: "without retrieving Bulkdata"). Inlined whole, a metadata answer was the document itself.
ENCAPSULATED_DOCUMENT = 0x00420011
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_ENCAPSULATED_SYNTAXES_PREFIX = "1.2.840.10008.1.2.4."
_RLE = "1.2.840.10008.1.2.5"


def read_released(data: bytes) -> Dataset:
    """The dataset of a released object (Part 10 bytes the adapter made)."""
    try:
        return dcmread(io.BytesIO(data))
    except Exception as exc:  # pydicom's read errors share no base class: any is a fault of ours
        raise StorageError("the released DICOM object cannot be read back") from exc


def is_encapsulated(ds: Dataset) -> bool:
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    return syntax.startswith(_ENCAPSULATED_SYNTAXES_PREFIX) or syntax == _RLE


def transfer_syntax(ds: Dataset) -> str:
    return str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")


def number_of_frames(ds: Dataset) -> int:
    try:
        n = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        n = 1
    return max(n, 1)


def metadata(ds: Dataset, instance_url: str) -> dict[str, Any]:
    """The DICOM JSON of ``ds`` (module docstring); ``instance_url`` is the instance's WADO-RS URL.
    Bulk data of the top-level dataset goes by URI; inside sequences every value is inline (the
    bulkdata resource serves top-level elements). Ambiguous VRs of ``ds`` are resolved in place."""
    # an element read in Implicit VR (or made without one) may carry "OB or OW", "US or SS":
    # DICOM JSON names one VR, the one the dataset's own attributes decide (PS3.5 A.1)
    _resolve_ambiguous_vrs(ds)
    bulk: dict[str, dict[str, str]] = {}
    rest = Dataset()
    for element in ds:
        if element.tag == PIXEL_DATA:
            count = number_of_frames(ds)
            bulk[f"{element.tag:08X}"] = {"vr": element.VR, "BulkDataURI": f"{instance_url}/frames/"
                                          + ",".join(str(n) for n in range(1, count + 1))}
        elif element.VR in _BULK_VRS and isinstance(element.value, bytes | bytearray) \
                and (len(element.value) > INLINE_LIMIT or element.tag == ENCAPSULATED_DOCUMENT):
            bulk[f"{element.tag:08X}"] = {"vr": element.VR, "BulkDataURI": f"{instance_url}/bulk/{element.tag:08X}"}
        else:
            rest.add(element)
    body: dict[str, Any] = _without_empty_values(rest.to_json_dict(bulk_data_threshold=2**62))
    body.update(bulk)
    return dict(sorted(body.items()))


def _without_empty_values(body: dict[str, Any]) -> dict[str, Any]:
    """PS3.18 F.2.5: an attribute with an empty value has no ``Value`` (pydicom writes an empty
    sequence as ``"Value": []``), in sequence items too."""
    for attribute in body.values():
        values = attribute.get("Value")
        if values == []:
            del attribute["Value"]
        elif attribute.get("vr") == "SQ" and isinstance(values, list):
            for item in values:
                if isinstance(item, dict):
                    _without_empty_values(item)
    return body


def _resolve_ambiguous_vrs(ds: Dataset) -> None:
    """Each ambiguous element takes the VR its dataset's attributes decide (pydicom's rules), or,
    where they are missing (an item without BitsAllocated, say), the first its dictionary entry
    names; sequence items likewise, each by its own attributes."""
    for element in ds:
        if " or " in element.VR:
            try:
                correct_ambiguous_vr_element(element, ds, True)
            except (AttributeError, ValueError, KeyError, TypeError):
                pass
            if " or " in element.VR:
                element.VR = element.VR.split(" or ")[0]
        if element.VR == "SQ":
            for item in element.value or ():
                _resolve_ambiguous_vrs(item)


def frames(ds: Dataset, wanted: Sequence[int]) -> list[bytes]:
    """The ``wanted`` frames (1-based) of ``ds``'s Pixel Data, as stored. NotFound (404, PS3.18
    9.5: the target resource does not exist) for a frame number the object does not have: beyond
    its NumberOfFrames, or beyond the frames its encapsulated pixel data really holds (an object
    stored before the ingest counted them, adapter.mapping.dicom_fhir.extract_image), or any
    frame of an object without pixel data."""
    if PIXEL_DATA not in ds:
        raise NotFound("the instance has no pixel data")
    count = number_of_frames(ds)
    for n in wanted:
        if not 1 <= n <= count:
            raise NotFound(f"the instance has {count} frame(s), not frame {n}")
    if is_encapsulated(ds):
        stored = _encapsulated_frames(ds.PixelData, count)
        for n in wanted:
            if n > len(stored):
                raise NotFound(f"the instance's pixel data holds {len(stored)} frame(s), not frame {n}")
        return [stored[n - 1] for n in wanted]
    data = bytes(ds.PixelData)
    size = len(data) // count
    return [data[(n - 1) * size:n * size] for n in wanted]


def _encapsulated_frames(pixel_data: bytes, count: int) -> list[bytes]:
    """The frames of encapsulated pixel data as pydicom splits them given NumberOfFrames
    ``count``; where it cannot (no offset table and fewer fragments than ``count``), one frame a
    fragment (PS3.5 A.4: a fragment never holds two frames)."""
    try:
        return [bytes(f) for f in generate_frames(pixel_data, number_of_frames=count)]
    except ValueError:
        buffer = io.BytesIO(pixel_data)
        parse_basic_offsets(buffer)  # empty: pydicom splits by a table whenever there is one
        return [bytes(f) for f in generate_fragments(buffer)]


def parse_frame_list(text: str) -> list[int]:
    """A frame list as PS3.18 has it: comma-separated positive integers, none twice (each frame
    asked for is a copy of its pixels in the answer: a number repeated thousands of times in one
    short URL would be that many copies)."""
    numbers = []
    for raw in text.split(","):
        part = raw.strip()
        if not is_digits(part) or len(part) > 9 or int(part) < 1:  # the length first: int() refuses 4,301 digits
            raise InvalidQuery("frames takes a comma-separated list of frame numbers from 1", expression="frames")
        numbers.append(int(part))
    if not numbers or len(numbers) > 10_000:
        raise InvalidQuery("frames takes a comma-separated list of frame numbers from 1", expression="frames")
    if len(set(numbers)) != len(numbers):
        raise InvalidQuery("frames names a frame more than once", expression="frames")
    return numbers


def bulk_value(ds: Dataset, tag_hex: str) -> bytes:
    """The bytes of the top-level bulk data element ``tag_hex`` (8 hex digits), as the metadata
    pointed to it. NotFound when the object has no such binary element."""
    if len(tag_hex) != 8 or any(c not in "0123456789abcdefABCDEF" for c in tag_hex):
        raise NotFound("no such bulk data")
    tag = Tag(int(tag_hex, 16))
    if tag == PIXEL_DATA or tag not in ds:
        raise NotFound("no such bulk data")
    element = ds[tag]
    if element.VR not in _BULK_VRS or not isinstance(element.value, bytes | bytearray):
        raise NotFound("no such bulk data")
    return bytes(element.value)


__all__ = ["ENCAPSULATED_DOCUMENT", "INLINE_LIMIT", "bulk_value", "frames", "is_encapsulated", "metadata",
           "number_of_frames", "parse_frame_list", "read_released", "transfer_syntax"]
