"""The query parameters of WADO-RS rendered resources (PS3.18 8.3.5.1, Table 8.3.5-1), read
once for the instance's and a frame's ``/rendered``: a value that does not parse is 400, an
OperationOutcome naming the parameter (PS3.18 8.3.5.1: the origin server checks them; 10.4.1.3:
an invalid query parameter is 400).

- ``viewport=vw,vh[,sx,sy,sw,sh]`` (8.3.5.1.3): ``vw``, ``vh`` 1 to :data:`MAX_SIDE` pixels;
  each of ``sx``, ``sy`` (from 0) and ``sw``, ``sh`` (a negative one mirrors) may be left empty.
- ``quality=1..100`` (8.3.5.1.2): the quality of a lossy answer.
- ``window=center,width,function`` (8.3.5.1.4): numbers, width at least 1 for ``linear`` (PS3.3
  C.11.2.1.2) and above 0 for ``linear-exact`` and ``sigmoid``; the function may be left out
  (``linear``).
- ``iccprofile`` (8.3.5.1.5): ``no`` is honoured (a picture made anew carries no profile);
  ``yes``, ``srgb``, ``adobergb`` and ``rommrgb`` are not supported (400): no colour management is
  done here, and the profile a source carries can name a person or a device (the restricted
  views drop it), so none is ever embedded.
- ``annotation`` (8.3.5.1.1: ``patient``, ``technique``) is refused (400 not-supported): an
  annotation is burned into the pixels, where no consent view could take it out again (a
  pseudonymised or de-identified answer would show the patient's name), and answering without it
  would tell a client asking for a labelled image that it got one. WADO-URI refuses it likewise.

Other parameters are disregarded, as PS3.18 has unknown ones be (Supplement 174, closed issue 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from adapter.errors import InvalidQuery, NotSupported
from adapter.imaging.rendition import WINDOW_FUNCTIONS, Viewport, Window
from adapter.text import is_digits, pixel_count

#: The largest viewport side (the largest side of any rendered JPEG).
MAX_SIDE = 4096
_PARAMETERS = ("viewport", "quality", "window", "iccprofile", "annotation")


@dataclass(frozen=True, slots=True)
class RenderingParameters:
    viewport: Viewport | None = None
    quality: int | None = None
    window: Window | None = None
    no_icc_profile: bool = False

    @property
    def make_anew(self) -> bool:
        """Whether the answer must be made anew rather than be the bytes the instance renders as."""
        return self.viewport is not None or self.quality is not None or self.window is not None \
            or self.no_icc_profile


def rendering_parameters(query: Sequence[tuple[str, str]]) -> RenderingParameters:
    """The rendering parameters of a request's query (module docstring).

    Raises:
        InvalidQuery: a value that does not parse, or a parameter given twice.
        NotSupported: ``annotation``, or an ``iccprofile`` other than ``no``.
    """
    given: dict[str, str] = {}
    for name, value in query:
        if name in _PARAMETERS:
            if name in given:
                raise InvalidQuery(f"{name} is given more than once", expression=name)
            given[name] = value.strip()
    if "annotation" in given:
        raise NotSupported("annotation is not supported: nothing is burned into a rendered image (a consent "
                           "view could not take the patient's name out of the pixels again)",
                           expression="annotation")
    icc = given.get("iccprofile")
    if icc is not None and icc.lower() != "no":
        if icc.lower() in ("yes", "srgb", "adobergb", "rommrgb"):
            raise NotSupported("iccprofile: only no is supported (a rendered image carries no ICC profile)",
                               expression="iccprofile")
        raise InvalidQuery("iccprofile takes no, yes, srgb, adobergb or rommrgb", expression="iccprofile")
    return RenderingParameters(viewport=_viewport(given.get("viewport")), quality=quality_of(given.get("quality")),
                               window=_window(given.get("window")), no_icc_profile=icc is not None)


def _viewport(text: str | None) -> Viewport | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    wrong = InvalidQuery("viewport takes vw,vh[,sx,sy,sw,sh]: vw and vh whole numbers of pixels from 1 to "
                         f"{MAX_SIDE}, sx and sy from 0, sw and sh non-zero (each of the four may be empty)",
                         expression="viewport")
    if len(parts) not in (2, 6):
        raise wrong
    vw, vh = (pixel_count(p, MAX_SIDE + 1) for p in parts[:2])
    if vw is None or vh is None or vw > MAX_SIDE or vh > MAX_SIDE:
        raise wrong
    if len(parts) == 2:
        return Viewport(vw, vh)
    region: list[int | None] = []
    for n, p in enumerate(parts[2:]):
        if not p:
            region.append(None)
            continue
        negative = p.startswith("-")
        digits = p[1:] if negative else p
        if not is_digits(digits) or len(digits) > 6 or (negative and n < 2):
            raise wrong
        number = -int(digits) if negative else int(digits)
        if n >= 2 and number == 0:
            raise wrong
        region.append(number)
    sx, sy, sw, sh = region
    return Viewport(vw, vh, sx, sy, sw, sh)


def quality_of(text: str | None, name: str = "quality") -> int | None:
    """A lossy answer's quality, 1 to 100 (WADO-RS ``quality``, WADO-URI ``imageQuality``: ``name``);
    None when not given. Raises InvalidQuery naming ``name`` for anything else."""
    if text is None:
        return None
    if not (is_digits(text) and len(text) <= 3 and 1 <= int(text) <= 100):
        raise InvalidQuery(f"{name} takes an integer from 1 to 100", expression=name)
    return int(text)


def _window(text: str | None) -> Window | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    wrong = InvalidQuery("window takes center,width,function: two numbers and linear, linear-exact or sigmoid "
                         "(the width at least 1 for linear, above 0 otherwise)", expression="window")
    if len(parts) not in (2, 3):
        raise wrong
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise wrong from None
    function = parts[2].lower() if len(parts) == 3 else "linear"
    if not (math.isfinite(center) and math.isfinite(width)) or function not in WINDOW_FUNCTIONS \
            or width < (1 if function == "linear" else 0) or width == 0:
        raise wrong
    return Window(center, width, function)


__all__ = ["MAX_SIDE", "RenderingParameters", "quality_of", "rendering_parameters"]
