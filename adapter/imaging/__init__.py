"""Imaging: the only package that imports Pillow (in ``probe``). Pure functions; no network,
no database.

``sanitize`` removes identifying metadata from an uploaded JPEG or PNG losslessly (by JPEG
segment / PNG chunk surgery, never re-encoding) and reports what it removed and what it
measured; ``strip_to_pixels_only`` gives the bytes for the de-identified view, and
``strip_but_orientation`` those for the pseudonymised one (the same, with an Orientation-only EXIF).

For the DICOM bridge: ``jpeg_frame_info``, ``read_orientation`` and ``jpeg_for_encapsulation``
read the stored bytes without decoding (``frame``); ``decode_pixels`` and ``encode_png`` (in
``render``, the second module that imports Pillow) go between stored photos and raw samples;
``thumbnail_jpeg`` (``thumbnail``, the third) makes a viewer's small picture.

For documents: ``pdf.pdf_without_metadata`` (``pdf``, the only module that imports pikepdf) gives
the PDF the restricted views release: its metadata removed, its content as it is.
"""

from adapter.imaging.exif import ExifSummary, orientation_only_tiff, parse_exif
from adapter.imaging.facts import ImageFacts
from adapter.imaging.frame import JpegFrameInfo, jpeg_for_encapsulation, jpeg_frame_info, read_orientation
from adapter.imaging.jpeg import jpeg_pixel_size
from adapter.imaging.png import png_pixel_size
from adapter.imaging.quality import estimate_jpeg_quality
from adapter.imaging.render import Pixels, decode_pixels, encode_png
from adapter.imaging.sanitize import sanitize, sanitize_scan, strip_but_orientation, strip_to_pixels_only
from adapter.imaging.sniff import JPEG, PNG, sniff_content_type
from adapter.imaging.thumbnail import thumbnail_jpeg

__all__ = [
    "JPEG", "PNG", "ExifSummary", "ImageFacts", "JpegFrameInfo", "Pixels", "decode_pixels", "encode_png",
    "estimate_jpeg_quality", "jpeg_for_encapsulation", "jpeg_frame_info", "jpeg_pixel_size",
    "orientation_only_tiff", "parse_exif", "png_pixel_size", "read_orientation", "sanitize", "sanitize_scan",
    "sniff_content_type", "strip_but_orientation", "strip_to_pixels_only", "thumbnail_jpeg",
]
