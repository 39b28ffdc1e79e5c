"""Checks on text from outside (headers, query parameters, EXIF and DICOM values) shared by the
edges and the mappings."""

from __future__ import annotations


def is_digits(text: str) -> bool:
    """Only ASCII 0-9, at least one. ``str.isdigit`` also takes ², ³ or ①, which ``int``
    refuses (a ValueError where a clear refusal was meant), and other scripts' digits, which
    no standard field here allows."""
    return text.isascii() and text.isdigit()
