"""The Image Pixel module of a received image (PS3.3 C.7.6.3) against its pixel data: the one
place that says whether the attributes describing the pixels are there and say what the pixels
are. The ingest asks it of every object it stores (adapter.services.dicom_ingest); a release
of an object stored before does not (adapter.mapping.dicom_fhir.extract_image takes no module
to check against then).

* **Present.** Rows, Columns, Samples per Pixel, Photometric Interpretation and Bits Allocated
  are Type 1 (PS3.3 C.7.6.3): without them the pixel data has no shape (Media.height and width,
  the PNG of native pixels, the frame a viewer is given). An image without one is refused as
  one without a PatientID is: 0xA900 Data Set does not match SOP Class (PS3.4 B.2.3), naming
  it. A value that is no positive integer is refused by the reading itself
  (adapter.mapping.dicom_fhir.read_received: 0xC000).
* **JPEG frames.** PS3.5 8.2.1: the attributes related to the pixel data encoding "shall
  contain values which are consistent with the characteristics of the compressed data stream".
  Each frame's header (T.81 B.2.2) must have Rows lines, Columns samples per line and Samples per
  Pixel components; otherwise the data set says something else than its pixel data holds, and a
  decoder sized by it fails (dcmdjpeg: "buffer too small") or a viewer draws another image than
  the record describes: 0xA900, naming the attribute. Every frame is checked, not only the
  first: the ingest walks each of them anyway (adapter.mapping.dicom_fhir.walk_other_frames).
* **JPEG coding process.** Each JPEG transfer syntax allows given processes only (PS3.5 A.4.1,
  10.2, Table F.1-5; the process is the frame header's SOFn marker, T.81 Table B.1):
  1.2.840.10008.1.2.4.50 JPEG Baseline allows process 1 only, baseline sequential DCT with
  Huffman coding: SOF0, 8-bit samples. (1.2.840.10008.1.2.4.51 JPEG Extended allows processes 2
  and 4, extended sequential DCT with Huffman coding, 8 or 12 bits: SOF1; a progressive SOF2
  stream belongs in neither. The adapter takes no JPEG syntax but Baseline: the others are
  refused at negotiation, and in STOW-RS with 0xC122.) A frame of another process is pixel data
  that is not what the negotiated transfer syntax says, which the SCP cannot understand under
  it (a Process 1 decoder, as the syntax promises the receiver, cannot decode it): 0xC000, as
  for encapsulated pixel data under a native syntax (adapter.services.dicom_ingest), naming the
  Pixel Data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit

from adapter.errors import InvalidResource, RequiredElementMissing, UndecodableImage
from adapter.imaging.frame import FrameHeader, is_baseline_process
from adapter.imaging.jpeg import SOF_MARKERS

#: Whether a frame header (SOFn marker, sample precision P) is of a process each JPEG transfer
#: syntax the adapter takes allows, with what it allows (module docstring).
JPEG_PROCESSES: dict[str, tuple[Callable[[int, int], bool], str]] = {
    JPEGBaseline8Bit: (is_baseline_process, "process 1 only (baseline: SOF0, 8-bit samples)"),
}
_SOF_NAMES = {0xC0: "baseline", 0xC1: "extended sequential", 0xC2: "progressive", 0xC3: "lossless",
              0xC9: "arithmetic extended sequential", 0xCA: "arithmetic progressive", 0xCB: "arithmetic lossless"}
#: The Type 1 attributes read to give the pixels their shape (module docstring), with their tags.
_REQUIRED = (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)"), ("SamplesPerPixel", "(0028,0002)"),
             ("PhotometricInterpretation", "(0028,0004)"), ("BitsAllocated", "(0028,0100)"))


@dataclass(frozen=True)
class ImagePixel:
    """What the Image Pixel module of a received image says of its frames."""

    rows: int
    columns: int
    samples_per_pixel: int


def image_pixel(ds: Dataset) -> ImagePixel:
    """The Image Pixel module of ``ds``, an image (it has pixel data), its Type 1 attributes
    present (module docstring).

    Raises:
        RequiredElementMissing: one is absent or empty (0xA900), naming it.
    """
    for keyword, tag in _REQUIRED:
        if _value(ds, keyword) in (None, ""):
            raise RequiredElementMissing(f"the image has no {keyword}, which the Image Pixel module requires "
                                         "(Type 1, PS3.3 C.7.6.3)", expression=f"{tag} {keyword}")
    return ImagePixel(rows=_integer(ds, "Rows"), columns=_integer(ds, "Columns"),
                      samples_per_pixel=_integer(ds, "SamplesPerPixel"))


def check_jpeg_frame(pixel: ImagePixel, header: FrameHeader, *, frame: int, transfer_syntax: str) -> None:
    """Frame ``frame`` (1 the first) of an image in the JPEG ``transfer_syntax`` has a frame
    header its transfer syntax allows and the Image Pixel module describes (module docstring).

    Raises:
        UndecodableImage: a coding process the transfer syntax does not allow (0xC000).
        InvalidResource: Rows, Columns or Samples per Pixel is not what the frame holds (0xA900).
    """
    allowed, which = JPEG_PROCESSES[transfer_syntax]
    if not allowed(header.sof, header.precision):
        name = _SOF_NAMES.get(header.sof, "differential" if header.sof in SOF_MARKERS else "unknown")
        raise UndecodableImage(f"JPEG frame {frame} is {name} (SOF{header.sof - 0xC0}, {header.precision}-bit): "
                               f"the transfer syntax {transfer_syntax} allows {which} (PS3.5 A.4.1)",
                               expression="(7FE0,0010) PixelData")
    for stated, held, keyword, tag, unit in (
            (pixel.rows, header.height, "Rows", "(0028,0010)", "lines"),
            (pixel.columns, header.width, "Columns", "(0028,0011)", "samples per line"),
            (pixel.samples_per_pixel, header.components, "SamplesPerPixel", "(0028,0002)", "components")):
        if stated != held:
            raise InvalidResource(f"{keyword} is {stated}, but JPEG frame {frame} has {held} {unit}: the Image "
                                  "Pixel module must describe the compressed stream (PS3.5 8.2.1)",
                                  expression=f"{tag} {keyword}")


def _value(ds: Dataset, keyword: str) -> Any:
    value = ds.get(keyword)
    return value.value if hasattr(value, "value") and hasattr(value, "tag") else value


def _integer(ds: Dataset, keyword: str) -> int:
    """A Type 1 integer (US; Rows and Columns read_received has checked to be positive), or 0
    when it is none (several values, say): it then matches no frame."""
    try:
        return int(_value(ds, keyword))
    except (TypeError, ValueError):
        return 0


__all__ = ["JPEG_PROCESSES", "ImagePixel", "check_jpeg_frame", "image_pixel"]
