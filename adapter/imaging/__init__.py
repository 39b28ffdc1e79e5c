"""Imaging: the only package that imports Pillow (in ``probe``). Pure functions; no network,
no database.

``sanitize`` removes identifying metadata from an uploaded JPEG or PNG losslessly (by JPEG
segment / PNG chunk surgery, never re-encoding) and reports what it removed and what it
measured; ``strip_to_pixels_only`` gives the bytes for the de-identified view.
"""

from adapter.imaging.exif import ExifSummary, orientation_only_tiff, parse_exif
from adapter.imaging.facts import ImageFacts
from adapter.imaging.jpeg import jpeg_pixel_size
from adapter.imaging.png import png_pixel_size
from adapter.imaging.quality import estimate_jpeg_quality
from adapter.imaging.sanitize import sanitize, strip_to_pixels_only
from adapter.imaging.sniff import JPEG, PNG, sniff_content_type

__all__ = [
    "JPEG", "PNG", "ExifSummary", "ImageFacts", "estimate_jpeg_quality", "jpeg_pixel_size",
    "orientation_only_tiff", "parse_exif", "png_pixel_size", "sanitize", "sniff_content_type",
    "strip_to_pixels_only",
]
