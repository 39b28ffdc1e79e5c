"""The Accept header (RFC 9110 §12.5.1), read one way for every route: FHIR's content and
version negotiation (adapter.api.negotiation) and DICOMweb's (routes/dicomweb, routes/wado_bulk).

Each media range comes with its parameters (names in lower case, values unquoted), in the
order given. A range whose quality is 0 says "not acceptable" (§12.4.2): it is left out, so a
route never answers with what the client refused.
"""

from __future__ import annotations

import re
from typing import NamedTuple

#: A qvalue of zero: "0", "0.", "0.0" ... "0.000" (§12.4.2).
_ZERO = re.compile(r"0(\.0{0,3})?", re.ASCII)


class MediaRange(NamedTuple):
    media: str  # type/subtype (or a wildcard), lower case
    params: dict[str, str]


def media_ranges(accept: str | None, *, default: str | None = "*/*", refused: bool = False) -> list[MediaRange]:
    """The acceptable media ranges of ``accept``; with no header (or a blank one), those of
    ``default`` (``*/*``: anything; None: none). ``refused``: those of quality 0 too."""
    if not accept or not accept.strip():
        return media_ranges(default, default=None) if default else []
    ranges = []
    for item in accept.split(","):
        media, *params = item.split(";")
        media = media.strip().lower()
        if not media:
            continue
        parsed: dict[str, str] = {}
        for param in params:
            name, _, value = param.partition("=")
            parsed.setdefault(name.strip().lower(), value.strip().strip('"'))
        if _ZERO.fullmatch(parsed.get("q", "1")) and not refused:
            continue
        ranges.append(MediaRange(media, parsed))
    return ranges


def quality(accept: str | None, media_type: str) -> float:
    """The quality ``accept`` gives ``media_type`` (its parameters included, as
    ``multipart/related; type="application/dicom+xml"``): that of the most specific range
    matching it (RFC 9110 12.5.1: ``type/subtype;param`` over ``type/subtype`` over ``type/*``
    over ``*/*``), so that ``application/dicom+json;q=0, */*`` refuses the JSON; 0 when no range
    matches it. A range matches when its type and subtype (or wildcards) and its parameters,
    ``q`` aside, are the type's."""
    [candidate] = media_ranges(media_type, default=None)
    major, _, minor = candidate.media.partition("/")
    best: tuple[int, float] = (-1, 0.0)
    for r in media_ranges(accept, refused=True):
        r_major, _, r_minor = r.media.partition("/")
        params = {k: v.lower() for k, v in r.params.items() if k != "q"}
        if r_major not in ("*", major) or r_minor not in ("*", minor) or any(
                candidate.params.get(k, "").lower() != v for k, v in params.items()):
            continue
        specificity = (r_major != "*") + (r_minor != "*") + len(params)
        if specificity > best[0]:
            best = (specificity, _quality_of(r))
    return best[1]


def _quality_of(r: MediaRange) -> float:
    """The qvalue of ``r`` (RFC 9110 12.4.2); one that does not parse counts as 1."""
    try:
        return float(r.params.get("q", "1"))
    except ValueError:
        return 1.0


def by_preference(ranges: list[MediaRange]) -> list[MediaRange]:
    """``ranges`` highest quality first (§12.4.2), in the order given among equals; a quality
    that does not parse counts as 1."""

    return sorted(ranges, key=lambda r: -_quality_of(r))


def accepts(accept: str | None, media_type: str) -> bool:
    """Does the Accept header take ``media_type`` (its wildcards included)?"""
    major = media_type.split("/")[0]
    return any(r.media in ("*/*", f"{major}/*", media_type) for r in media_ranges(accept))
