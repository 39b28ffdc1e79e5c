"""Pure quality heuristics: JPEG quality from quantization tables, the reduced-scale plan used
for the sharpness measure, and the warnings built from ``Quality`` (policy.quality)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from adapter.model.policy import Quality

# ITU-T T.81 Annex K, Table K.1: the luminance quantization table that the IJG encoder scales
# by its quality setting (any order: only the sum is used).
_K1_LUMINANCE = (
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
)
_K1_SUM = sum(_K1_LUMINANCE)

# The sharpness measure runs on a greyscale image whose long side is brought into
# [SHARPNESS_MIN_SIDE, 2 * SHARPNESS_MIN_SIDE) when the photo is bigger than that, so the
# policy's minSharpness means the same for a 1 MP and a 48 MP photo.
SHARPNESS_MIN_SIDE = 256


def estimate_jpeg_quality(tables: Mapping[int, Sequence[int]]) -> int | None:
    """Invert the IJG (libjpeg ``jpeg_quality_scaling``) mapping for table 0.

    IJG scales Table K.1 by ``S = 5000/Q`` (Q < 50) or ``S = 200 - 2Q`` per cent and clamps
    each entry to 1..255 (baseline). We estimate ``S = 100 * sum(q) / sum(K.1)`` over the
    entries the clamps did not touch, then invert. Encoders with their own tables (most
    phones) land near the IJG quality that gives the same average step size.
    """
    luma = tables.get(0)
    if not luma or len(luma) != 64:
        return None
    pairs = [(q, k) for q, k in zip(luma, _K1_LUMINANCE, strict=True) if 1 < q < 255]
    if not pairs:
        return 100 if max(luma) <= 1 else 1
    scale = 100.0 * sum(q for q, _ in pairs) / sum(k for _, k in pairs)
    quality = (200.0 - scale) / 2.0 if scale <= 100.0 else 5000.0 / scale
    return max(1, min(100, round(quality)))


def dct_scale(width: int, height: int) -> int:
    """The largest JPEG DCT scaling denominator (8, 4, 2 or 1, as libjpeg offers) that keeps the
    long side at or above ``SHARPNESS_MIN_SIDE``."""
    long_side = max(width, height)
    for scale in (8, 4, 2):
        if long_side // scale >= SHARPNESS_MIN_SIDE:
            return scale
    return 1


def box_factor(width: int, height: int) -> int:
    """An integer box-reduction factor bringing the long side under ``2 * SHARPNESS_MIN_SIDE``
    (1 when it already is)."""
    return max(1, max(width, height) // SHARPNESS_MIN_SIDE)


def quality_warnings(*, width: int, height: int, sharpness: float | None, jpeg_quality: int | None,
                     quality: Quality) -> tuple[str, ...]:
    """Warnings (never refusals) about a photo that may not serve its clinical purpose.

    The size check ignores orientation: a portrait 480x640 photo meets a 640x480 minimum.
    """
    warnings: list[str] = []
    need_long = max(quality.min_width, quality.min_height)
    need_short = min(quality.min_width, quality.min_height)
    if max(width, height) < need_long or min(width, height) < need_short:
        warnings.append(f"image is {width}x{height} pixels, below the policy minimum of "
                        f"{quality.min_width}x{quality.min_height}")
    if sharpness is not None and sharpness < quality.min_sharpness:
        warnings.append(f"image looks blurred (sharpness {sharpness:.1f} < {quality.min_sharpness:g})")
    if jpeg_quality is not None and jpeg_quality < quality.min_jpeg_quality:
        warnings.append(f"JPEG quality estimated at {jpeg_quality}, below {quality.min_jpeg_quality}")
    return tuple(warnings)
