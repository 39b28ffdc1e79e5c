"""An object stored in JPEG Baseline → the same instance with its pixel data decompressed to
native samples, for a PACS that accepts no compressed transfer syntax (the C-STORE SCU's
fallback, adapter.dicom.scu).

A PACS need accept only Implicit VR Little Endian (PS3.5 10.1); many take Explicit VR Little
Endian but no lossy JPEG. The adapter keeps a JPEG photo as the JPEG it received and sends it as
stored wherever the PACS accepts it; only for a PACS that does not is the frame decoded, never
compressed again (Orthanc and dcm4chee transcode the same way).

What the native object is (PS3.3 C.7.6.3 Image Pixel, PS3.5 8.1):

* **The same instance.** Every attribute but the Image Pixel ones is kept, the SOP Instance UID
  first: a change of transfer syntax is not a new instance (PS3.5 8.1, PS3.4 B.4.1). ImageType
  stays as it was, no DerivationDescription is added: the pixels are the ones every viewer of
  the JPEG shows.
* **Pixels.** Each frame is decoded by the decoder the adapter uses everywhere (Pillow, through
  :func:`adapter.imaging.decode_pixels`): 8-bit RGB for a colour frame (a YCbCr stream is
  converted to RGB by the decoder, as a viewer shows it), MONOCHROME2 (or MONOCHROME1, as the
  object said) for a one-component frame. PlanarConfiguration 0 (colour-by-pixel), Bits
  Allocated/Stored 8, High Bit 7, unsigned; the frames one after the other, padded to even
  length. Any frame the decoder would have to change (CMYK, an alpha channel) or whose size or
  colour model is not the one the object states is refused: the object is not sent rather than
  sent showing something else.
* **Lossy history.** LossyImageCompression stays (or becomes) "01" with its ratio and method
  (PS3.3 C.7.6.1.1.5: once lossy, always flagged); an object that named neither gets method
  ISO_10918_1 and the ratio of its native to its compressed size.
* **Cost.** A 12 MP colour photo is 36 MB native, against a few MB as JPEG: decoding takes
  about half a second (measured here: 0.6 s for a 4 MB 4000×3000 JPEG on a shared 2-core
  machine), the decoder's copies hold two to three times the native size for that moment, and
  the C-STORE carries ten times the bytes. The caller decodes one object at a time, right
  before its C-STORE, and drops it after.

A native object in Explicit VR Little Endian (a PNG or rotated photo) has a fallback of its own
for a PACS that takes only Implicit VR Little Endian: :func:`explicit_to_implicit`, the same
elements with the same values (pixel data byte for byte), only their headers written without
VRs; nothing is decoded.

An ICC profile inside the frame is not lifted into the ICC Profile module (as for photos stored
native, adapter.mapping.dicom_photo); an ICC Profile the object carries as an attribute stays.
"""

from __future__ import annotations

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from adapter.errors import AdapterError, UndecodableImage, UnsupportedPixelData
from adapter.imaging import JPEG, decode_pixels, jpeg_frame_info
from adapter.mapping.dicom_uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME

#: Transfer syntaxes whose pixel data this module can decompress: the one the adapter stores
#: compressed objects in (a photo's JPEG; what the SCP and STOW-RS accept, adapter.dicom.scp).
DECOMPRESSIBLE = frozenset({UID(JPEGBaseline8Bit)})
#: What a decompressed object can be sent in, the preferred first: explicit VRs keep what each
#: element is; Implicit VR Little Endian is the one every SCP must accept (PS3.5 10.1).
NATIVE_SYNTAXES = (UID(ExplicitVRLittleEndian), UID(ImplicitVRLittleEndian))

#: Uncompressed syntaxes an object may be re-encoded to, by the syntax it is stored in: a
#: JPEG Baseline one decompressed (:func:`encapsulated_to_native`), an Explicit VR Little Endian
#: one with implicit VRs (:func:`explicit_to_implicit`), the preferred first.
FALLBACKS: dict[UID, tuple[UID, ...]] = {
    UID(JPEGBaseline8Bit): NATIVE_SYNTAXES,
    UID(ExplicitVRLittleEndian): (UID(ImplicitVRLittleEndian),),
}

# Image Pixel attributes rewritten, and the encapsulation-only ones dropped
_REWRITTEN = frozenset(Tag(k) for k in (
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "BitsAllocated", "BitsStored",
    "HighBit", "PixelRepresentation", "PixelData", "ExtendedOffsetTable", "ExtendedOffsetTableLengths",
    "LossyImageCompression"))
# the decoder's colour model of the stream (adapter.imaging.frame) → the PhotometricInterpretations
# an object may state for it, and what the decoded samples are
_COLOURS = {
    "YBR": (("YBR_FULL_422", "YBR_FULL"), "RGB"),
    "RGB": (("RGB",), "RGB"),
}
_GREYS = ("MONOCHROME2", "MONOCHROME1")


def encapsulated_to_native(ds: Dataset, transfer_syntax: str) -> Dataset:
    """A new dataset: ``ds`` (in a transfer syntax of :data:`DECOMPRESSIBLE`) with its pixel
    data decoded to native samples, its file meta naming ``transfer_syntax`` (one of
    :data:`NATIVE_SYNTAXES`); see the module docstring. ``ds`` is not changed (the new dataset
    shares its other elements).

    Raises:
        UnsupportedPixelData: not an object this module can decompress faithfully (its transfer
            syntax, a colour model the object and its frames disagree on, a frame the decoder
            would have to change).
        UndecodableImage: the pixel data is missing or does not decode.
        ImageTooLarge: a frame has more pixels than the decoder allows.
    """
    target = UID(transfer_syntax)
    meta, source = _file_meta(ds)
    if source not in DECOMPRESSIBLE or target not in NATIVE_SYNTAXES:
        raise UnsupportedPixelData(f"no decompression from {source.name or '(none)'} to {target.name}",
                                   expression="(0002,0010) TransferSyntaxUID")
    rows, columns = _int(ds, "Rows"), _int(ds, "Columns")
    samples, frames = _int(ds, "SamplesPerPixel"), _int(ds, "NumberOfFrames", 1)
    stated = str(ds.get("PhotometricInterpretation", "")).strip()
    if "PixelData" not in ds or not isinstance(ds.PixelData, bytes) or not ds.PixelData:
        raise UndecodableImage("the object has no pixel data")
    if rows <= 0 or columns <= 0 or frames <= 0 or samples not in (1, 3):
        raise UnsupportedPixelData("the Image Pixel module does not describe 8-bit frames of 1 or 3 samples",
                                   expression="(0028,0002)")

    decoded: list[bytes] = []
    compressed = 0
    photometric = ""
    try:
        for frame in generate_frames(ds.PixelData, number_of_frames=frames):
            compressed += len(frame)
            photometric = _photometric(bytes(frame), samples, stated)
            pixels = decode_pixels(bytes(frame), JPEG)
            if pixels.changes or (pixels.rows, pixels.columns, pixels.samples) != (rows, columns, samples):
                raise UnsupportedPixelData("a frame does not decode to the pixels the object describes",
                                           expression="(7FE0,0010) PixelData")
            decoded.append(pixels.data)
            del pixels
    except AdapterError:
        raise
    except ValueError as exc:  # pydicom: fragments that do not make the frames
        raise UndecodableImage("the encapsulated pixel data does not hold the frames it states") from exc
    if len(decoded) != frames:
        raise UndecodableImage("the encapsulated pixel data does not hold the frames it states")
    data = decoded[0] if frames == 1 else b"".join(decoded)
    decoded.clear()
    if len(data) % 2:
        data += b"\x00"  # PS3.5 8.1.1: even length

    out = Dataset()
    for elem in ds:
        if elem.tag not in _REWRITTEN:
            out.add(elem)
    out.SamplesPerPixel = samples
    out.PhotometricInterpretation = photometric
    if samples == 3:
        out.PlanarConfiguration = 0
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 8, 8, 7, 0
    out.LossyImageCompression = "01"
    if "LossyImageCompressionRatio" not in ds and "LossyImageCompressionMethod" not in ds:
        out.LossyImageCompressionRatio = f"{rows * columns * samples * frames / max(compressed, 1):.2f}"[:16]
        out.LossyImageCompressionMethod = "ISO_10918_1"
    out.PixelData = data
    out["PixelData"].VR = "OB"
    out.file_meta = _meta(meta, target)
    return out


def explicit_to_implicit(ds: Dataset) -> Dataset:
    """A new dataset: native ``ds`` in Explicit VR Little Endian as Implicit VR Little Endian,
    for a PACS that takes nothing else (module docstring). The elements are ``ds``'s own (shared,
    not changed: only how their headers are written differs); the file meta is a new one naming
    the new syntax. Raises UnsupportedPixelData for an object in any other syntax."""
    return _vrs_rewritten(ds, ExplicitVRLittleEndian, ImplicitVRLittleEndian, "written with implicit VRs")


def implicit_to_explicit(ds: Dataset) -> Dataset:
    """A new dataset: ``ds`` in Implicit VR Little Endian as Explicit VR Little Endian, the
    syntax DICOMweb answers in by default (PS3.18 8.7.3.4: Implicit VR Little Endian is not used
    there). The elements are ``ds``'s own; each VR is written as the data dictionary gives it
    (an element it does not know as UN). Raises UnsupportedPixelData for another syntax."""
    return _vrs_rewritten(ds, ImplicitVRLittleEndian, ExplicitVRLittleEndian, "written with explicit VRs")


def _vrs_rewritten(ds: Dataset, source: UID, target: UID, done: str) -> Dataset:
    """A new dataset of ``ds``'s own elements (shared: only how their headers are written
    differs) whose file meta names ``target``; ``ds`` must be in ``source``."""
    meta, found = _file_meta(ds)
    if found != source:
        raise UnsupportedPixelData(f"only {source.name} is {done} here, not {found}",
                                   expression="(0002,0010) TransferSyntaxUID")
    out = Dataset()
    for elem in ds:
        out.add(elem)
    out.file_meta = _meta(meta, UID(target))
    return out


def to_explicit_vr_little_endian(ds: Dataset) -> Dataset:
    """``ds`` in Explicit VR Little Endian, the default transfer syntax of DICOMweb (PS3.18
    8.7.3.4, 9.4.2.4): itself when it is in it already, a JPEG Baseline object decompressed
    (:func:`encapsulated_to_native`: the same instance, RGB or monochrome samples colour-by-pixel,
    LossyImageCompression "01" with its ratio and method kept or added), an Implicit VR Little
    Endian one with explicit VRs (:func:`implicit_to_explicit`). Raises UnsupportedPixelData for
    any other syntax, UndecodableImage or ImageTooLarge when the frames cannot be decoded."""
    _, source = _file_meta(ds)
    if source == ExplicitVRLittleEndian:
        return ds
    if source == ImplicitVRLittleEndian:
        return implicit_to_explicit(ds)
    return encapsulated_to_native(ds, ExplicitVRLittleEndian)


#: The syntaxes an object may be stored in that :func:`to_explicit_vr_little_endian` converts.
TO_EXPLICIT = frozenset({UID(ExplicitVRLittleEndian), UID(ImplicitVRLittleEndian), *DECOMPRESSIBLE})


def _file_meta(ds: Dataset) -> tuple[FileMetaDataset | None, UID]:
    """``ds``'s file meta (None without one) and the transfer syntax it names ("" for none)."""
    meta = getattr(ds, "file_meta", None)
    return meta, UID(str(meta.get("TransferSyntaxUID", ""))) if meta is not None else UID("")


def _meta(meta: FileMetaDataset | None, transfer_syntax: UID) -> FileMetaDataset:
    """A new file meta: ``meta``'s elements but its TransferSyntaxUID, which names
    ``transfer_syntax``, and the Implementation Class UID and Version Name, the adapter's, which
    wrote the object in it (PS3.10 7.1) (the elements are shared: those that change are new ones)."""
    out = FileMetaDataset()
    for elem in meta or ():
        if elem.keyword not in ("TransferSyntaxUID", "ImplementationClassUID", "ImplementationVersionName"):
            out.add(elem)
    out.TransferSyntaxUID = transfer_syntax
    out.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    out.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    return out


def _photometric(frame: bytes, samples: int, stated: str) -> str:
    """The PhotometricInterpretation of the decoded ``frame``, refusing a stream whose colour
    model (as the decoder reads its markers, adapter.imaging.frame) is not what the object
    states: decoding it would show colours the object does not mean."""
    try:
        info = jpeg_frame_info(frame)
    except AdapterError as exc:
        raise UndecodableImage("a frame is not a JPEG stream") from exc
    if not info.baseline:
        raise UnsupportedPixelData("a frame is not a baseline JPEG stream", expression="(7FE0,0010) PixelData")
    if samples == 1 and info.colour == "GREY" and stated in _GREYS:
        return stated
    allowed, decoded = _COLOURS.get(info.colour, ((), ""))
    if samples == 3 and stated in allowed:
        return decoded
    raise UnsupportedPixelData(f"the object states {stated or '(nothing)'} for a {info.colour} JPEG stream",
                               expression="(0028,0004) PhotometricInterpretation")


def _int(ds: Dataset, keyword: str, default: int = 0) -> int:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError):
        return -1


__all__ = ["DECOMPRESSIBLE", "FALLBACKS", "NATIVE_SYNTAXES", "TO_EXPLICIT", "encapsulated_to_native",
           "explicit_to_implicit", "implicit_to_explicit", "to_explicit_vr_little_endian"]
