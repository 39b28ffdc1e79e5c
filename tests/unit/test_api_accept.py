"""The one reading of the Accept header (adapter.api.accept): ranges in order, with their
parameters; a range of quality 0 ("not acceptable") left out."""

from __future__ import annotations

import pytest

from adapter.api.accept import MediaRange, accepts, media_ranges, quality


def test_ranges_in_order_with_their_parameters() -> None:
    got = media_ranges('multipart/related; type="application/dicom"; transfer-syntax=*, Application/DICOM+JSON')
    assert got == [MediaRange("multipart/related", {"type": "application/dicom", "transfer-syntax": "*"}),
                   MediaRange("application/dicom+json", {})]


@pytest.mark.parametrize("q", ["0", "0.", "0.0", "0.000", " 0 "])
def test_a_range_of_quality_zero_is_not_acceptable(q: str) -> None:
    assert media_ranges(f"application/dicom+json;q={q}, image/jpeg") == [MediaRange("image/jpeg", {})]


@pytest.mark.parametrize("q", ["0.001", "1", "0.5", "abc"])
def test_any_other_quality_is_acceptable(q: str) -> None:
    assert [r.media for r in media_ranges(f"image/png;q={q}")] == ["image/png"]


def test_no_header_is_the_default() -> None:
    assert media_ranges(None) == [MediaRange("*/*", {})]
    assert media_ranges("  ") == [MediaRange("*/*", {})]
    assert media_ranges(None, default=None) == []
    assert media_ranges(" , ;q=1") == []


def test_accepts_with_wildcards() -> None:
    assert accepts("image/*", "image/jpeg")
    assert accepts("*/*", "image/jpeg")
    assert accepts(None, "image/jpeg")
    assert not accepts("image/png", "image/jpeg")
    assert not accepts("image/jpeg;q=0, */*;q=0", "image/jpeg")

XML_PARTS = 'multipart/related; type="application/dicom+xml"'


@pytest.mark.parametrize(("accept", "media_type", "expected"), [
    ("application/dicom+json;q=0, */*", "application/dicom+json", 0.0),
    ("application/dicom+json;q=0, */*", XML_PARTS, 1.0),
    ('multipart/*;q=0.3, multipart/related; type="application/dicom+xml";q=0', XML_PARTS, 0.0),
    ("multipart/*;q=0.3, application/*;q=0.1", XML_PARTS, 0.3),
    ("image/jpeg", "application/dicom+json", 0.0),
    (None, "application/dicom+json", 1.0),
])
def test_the_most_specific_range_gives_a_types_quality(accept: str | None, media_type: str, expected: float) -> None:
    """RFC 9110 12.5.1: a more specific range (or one with parameters) overrides a wildcard."""
    assert quality(accept, media_type) == expected
