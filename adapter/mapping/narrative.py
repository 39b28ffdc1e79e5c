"""FHIR Narrative rules for a narrative a client sends (https://hl7.org/fhir/R4/narrative.html).

The adapter keeps a client's narrative only where it stores the client's resource as sent (a
Consent); an EHR shows it to people, so it is checked when written, against the invariants of
``Narrative.div``:

* txt-1: "The narrative SHALL contain only the basic html formatting elements and attributes
  described in chapters 7-11 (except section 4 of chapter 9) and 15 of the HTML 4.0 standard, <a>
  elements (either name or href), images and internally contained style attributes": no head,
  body, scripts, forms, frames, objects, base/link, and no event attributes (``onerror``);
* txt-2: "The narrative SHALL have some non-whitespace content".

The elements and attributes allowed are those lists (the HTML 4.0 chapters named, as the FHIR
reference validator reads them). Beyond the letter of txt-1, what a viewer would follow is
limited where it could run or fetch something: ``href`` only to ``http(s)``, ``mailto`` or a
fragment, ``img src`` only to a fragment (a contained image) or a ``data:image/...`` URL, and
no ``url(``/``expression(`` or ``javascript:`` in a style attribute. A div that is not
well-formed XML, declares a DTD or entities, or is not ``div`` in the XHTML namespace is refused
too. Refusals are :class:`InvalidResource` (400: the resource fails a FHIR invariant).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from xml.etree import ElementTree

from adapter.errors import InvalidResource

XHTML = "http://www.w3.org/1999/xhtml"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

#: HTML 4.0 chapters 7-11 (but 9.4, ins/del) and 15, with a, img, map and area
ELEMENTS = frozenset({
    "div", "span", "p", "br", "h1", "h2", "h3", "h4", "h5", "h6", "address", "bdo",
    "em", "strong", "dfn", "code", "samp", "kbd", "var", "cite", "abbr", "acronym", "blockquote", "q",
    "sub", "sup", "pre", "ul", "ol", "li", "dl", "dt", "dd",
    "table", "caption", "thead", "tfoot", "tbody", "colgroup", "col", "tr", "th", "td",
    "tt", "i", "b", "big", "small", "hr", "a", "img", "map", "area",
})
_COMMON = frozenset({"id", "class", "style", "title", "lang", _XML_LANG, "dir", "accesskey", "tabindex"})
_CELL = frozenset({"abbr", "axis", "headers", "scope", "rowspan", "colspan", "align", "valign", "char", "charoff",
                   "width", "height", "nowrap"})
_ATTRIBUTES: dict[str, frozenset[str]] = {
    "a": frozenset({"href", "name", "hreflang", "type", "rel", "rev", "shape", "coords"}),
    "img": frozenset({"src", "alt", "longdesc", "height", "width", "usemap", "ismap", "align", "border", "hspace",
                      "vspace"}),
    "area": frozenset({"shape", "coords", "href", "nohref", "alt"}),
    "map": frozenset({"name"}),
    "table": frozenset({"summary", "width", "border", "frame", "rules", "cellspacing", "cellpadding", "align",
                        "bgcolor"}),
    "col": frozenset({"span", "width", "align", "valign", "char", "charoff"}),
    "colgroup": frozenset({"span", "width", "align", "valign", "char", "charoff"}),
    "thead": frozenset({"align", "valign", "char", "charoff"}),
    "tbody": frozenset({"align", "valign", "char", "charoff"}),
    "tfoot": frozenset({"align", "valign", "char", "charoff"}),
    "tr": frozenset({"align", "valign", "char", "charoff", "bgcolor"}),
    "td": _CELL, "th": _CELL,
    "blockquote": frozenset({"cite"}), "q": frozenset({"cite"}),
    "ol": frozenset({"type", "start", "compact"}), "ul": frozenset({"type", "compact"}),
    "li": frozenset({"type", "value"}),
    "p": frozenset({"align"}), "div": frozenset({"align"}),
    "h1": frozenset({"align"}), "h2": frozenset({"align"}), "h3": frozenset({"align"}),
    "h4": frozenset({"align"}), "h5": frozenset({"align"}), "h6": frozenset({"align"}),
    "hr": frozenset({"align", "noshade", "size", "width"}), "br": frozenset({"clear"}),
    "pre": frozenset({"width"}), "caption": frozenset({"align"}),
}
_HREF = re.compile(r"^(?:#|https?:|mailto:)", re.IGNORECASE)
_IMG_SRC = re.compile(r"^(?:#|data:image/(?:png|jpeg|gif);)", re.IGNORECASE)
_STYLE_ACTIVE = re.compile(r"url\s*\(|expression\s*\(|javascript:|@import|behavior\s*:", re.IGNORECASE)
_DECLARATION = re.compile(r"<!(?:DOCTYPE|ENTITY|\[CDATA)", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def check_narratives(resource: Mapping[str, Any], path: str) -> None:
    """Check the narrative of ``resource`` and of each resource it contains (``path``: the
    resource's FHIRPath, e.g. ``Consent``).

    Raises:
        InvalidResource: a narrative breaks txt-1 or txt-2 (expression: its ``text.div``).
    """
    text = resource.get("text")
    if text is not None:
        div = text.get("div") if isinstance(text, Mapping) else None
        if not isinstance(div, str):
            raise InvalidResource("Narrative.div is required (a string of XHTML)", expression=f"{path}.text.div")
        check_div(div, f"{path}.text.div")
    contained = resource.get("contained")
    for i, inner in enumerate(contained if isinstance(contained, list) else []):
        if isinstance(inner, Mapping):
            check_narratives(inner, f"{path}.contained[{i}]")


def check_div(div: str, expression: str) -> None:
    """One ``Narrative.div``: txt-1 and txt-2, as the module docstring reads them."""
    if _DECLARATION.search(div):
        raise InvalidResource("the narrative declares a DTD, entities or CDATA: a narrative is plain XHTML (txt-1)",
                              expression=expression)
    try:
        root = ElementTree.fromstring(div)
    except ElementTree.ParseError as exc:
        raise InvalidResource(f"the narrative is not well-formed XHTML: {exc}", expression=expression) from exc
    if root.tag != f"{{{XHTML}}}div":
        raise InvalidResource("the narrative is one div element in the XHTML namespace "
                              f"({XHTML})", expression=expression)
    for element in root.iter():
        _check_element(element, expression)
    if not _SPACE.sub("", "".join(root.itertext())) and root.find(f".//{{{XHTML}}}img") is None:
        raise InvalidResource("the narrative has no content (FHIR invariant txt-2)", expression=expression)


def _check_element(element: ElementTree.Element, expression: str) -> None:
    tag = element.tag
    name = tag[len(XHTML) + 2:] if isinstance(tag, str) and tag.startswith(f"{{{XHTML}}}") else None
    if name is None or name not in ELEMENTS:
        shown = name or (tag if isinstance(tag, str) else "?")
        raise InvalidResource(f"the narrative holds a <{shown[:40]}> element, which a FHIR narrative may not (txt-1: "
                              "basic HTML formatting only; no scripts, forms, frames, objects or other namespaces)",
                              expression=expression)
    allowed = _COMMON | _ATTRIBUTES.get(name, frozenset())
    for attribute, value in element.attrib.items():
        if attribute not in allowed:
            raise InvalidResource(f"the narrative's <{name}> has a {attribute[:40]} attribute, which a FHIR narrative "
                                  "may not (txt-1: no event attributes or attributes HTML 4.0 does not give it)",
                                  expression=expression)
        if attribute in ("href", "cite", "longdesc") and not _HREF.match(value.strip()):
            raise InvalidResource(f"the narrative's <{name}> {attribute} may only link to http(s), mailto or a "
                                  "fragment", expression=expression)
        if attribute == "src" and not _IMG_SRC.match(value.strip()):
            raise InvalidResource("a narrative's image is a contained one (#id) or a data:image URL", expression=expression)
        if attribute == "style" and _STYLE_ACTIVE.search(value):
            raise InvalidResource("a narrative's style attribute may not load or run anything (url(), expression(), "
                                  "javascript:, @import)", expression=expression)
