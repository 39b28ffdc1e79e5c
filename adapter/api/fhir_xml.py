"""FHIR XML (https://hl7.org/fhir/R4/xml.html) at the HTTP edge: a body sent as
``application/fhir+xml`` read into the FHIR JSON the JSON path receives, and an answer the client
negotiated as XML written from the JSON the route built. Nothing behind the edge sees XML.

The conversion is the one the two representations define (json.html "JSON representation of
primitive elements"; xml.html), element by element, with the structure of each type read off the
fhir.resources models (R4B for R4, which has the same elements for the types served here, and
R5): element order, which elements repeat, each primitive's JSON type, and where a resource or
XHTML sits. The models only describe; nothing passes through them, so a value is carried as
written (an instant keeps its digits, ``size`` of R5 stays the string integer64 is in JSON):

* a primitive is ``<name value="..."/>``; its ``id`` and ``extension`` (``_name`` in JSON) sit on
  it as an attribute and children; a repeating one's values and extensions pair up by position
  (``null`` in JSON where one has no value or no extension);
* ``id`` of an element (not a resource's) and ``url`` of an Extension are attributes;
* a resource inside another (``contained``, ``Bundle.entry.resource``, ``response.outcome``) is
  wrapped in an element named after its type;
* ``Narrative.div`` is the XHTML element itself in XML, its serialisation as a string in JSON.

Reading is hardened as defusedxml is: no DTD (a document holding ``<!DOCTYPE``, where entities
are declared, is refused before it is parsed), no entity resolved, nothing fetched from the network, comments and processing instructions dropped,
nesting bounded (:data:`MAX_DEPTH`, as JSON's), and the body already bounded in bytes by the
route that read it. ``huge_tree`` is on: libxml2's default limits one attribute value to 10 MB,
and a transaction's Binary carries a photo (up to ADAPTER_MAX_UPLOAD_BYTES, base64) in one
``value`` attribute; the bounds above are what make it safe. What is not FHIR XML (another
namespace or root, an element or attribute the type does not have, text where FHIR has none, a
value that is not its primitive's, a singleton repeated) is InvalidResource (400: "could not be
parsed", http.html#create), naming the element.
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import types
import typing
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, Literal

from fhir_core.constraints import FHIR_PRIMITIVES_MAPS
from lxml import etree  # type: ignore[import-untyped]  # no stubs; a dependency (pyproject)

from adapter.api.json_input import (
    MAX_CONTAINERS,
    MAX_DEPTH,
    MAX_NUMBER_CHARS,
    MAX_STRING_BYTES,
    MAX_STRUCTURE_BYTES,
    MAX_VALUES,
    check_loaded,
)
from adapter.errors import InvalidResource
from adapter.json_decimal import JsonDecimal, parse_float

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
Version = Literal["4", "5"]

#: The primitives whose JSON value is not a string (json.html#primitive): R5's integer64 is one.
_JSON_BOOLEAN = frozenset({"boolean"})
_JSON_INTEGER = frozenset({"integer", "unsignedInt", "positiveInt"})
_JSON_DECIMAL = frozenset({"decimal"})
#: Lexical forms (datatypes.html) of those, checked where XML carries them as text.
_INTEGER = re.compile(r"[0]|[-+]?[1-9][0-9]*")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
#: More digits than any FHIR integer (32-bit) or decimal (18 significant digits, datatypes.html)
#: needs; Python refuses to convert an int of over 4300 digits (a ValueError, not a refusal). The
#: JSON path's bound, so what one takes the other does (security review 6).
_MAX_DIGITS = MAX_NUMBER_CHARS
#: Attributes one element may carry: FHIR XML gives an element at most ``value``, ``id`` and
#: ``url``, beside another namespace's few (xsi:schemaLocation). 90,000 on one element took 11 s
#: of CPU to read one by one, the whole API waiting (security review 1): refused before.
_MAX_ATTRIBUTES = 8
#: Namespace declarations (``xmlns``, ``xmlns:x``) in a whole document: FHIR XML needs FHIR's,
#: XHTML's in each narrative and perhaps xsi's. 64 MB of them on the root took 1.1 GB to parse
#: (security review 2); lxml does not list them among the attributes :data:`_MAX_ATTRIBUTES` bounds.
MAX_NAMESPACE_DECLARATIONS = 1000
#: Attributes and namespace declarations one start tag may have, counted before the parse.
_MAX_TAG_ATTRIBUTES = 16
_ATTRIBUTE = re.compile(rb"""[\s"'][^\s=<>"']+\s*=\s*["']""")
#: The element whose ``value`` may be longer than MAX_STRING_BYTES: base64Binary (Binary.data,
#: Attachment.data), as in JSON.
_BULK_TAG = re.compile(rb"(?:[A-Za-z_][-.\w]*:)?data[\s/>]")


@dataclass(frozen=True)
class _Element:
    """One element of a type: its name (the same in JSON and XML), whether it repeats, and what
    it holds: a primitive (its FHIR type), XHTML, a resource, or a complex type (the model path)."""

    name: str
    many: bool
    kind: Literal["primitive", "xhtml", "resource", "complex"]
    primitive: str = ""
    model: str = ""


def _models(version: Version) -> str:
    return "fhir.resources.R4B" if version == "4" else "fhir.resources"


@functools.lru_cache(maxsize=64)
def _resource_model(version: Version, resource_type: str) -> str | None:
    """The model path of ``resource_type`` in ``version``; None when FHIR has no such resource."""
    if not resource_type.isascii() or not resource_type.isalpha():
        return None
    try:
        model = importlib.import_module(_models(version)).get_fhir_model_class(resource_type)
    except (ValueError, KeyError, AttributeError):
        return None
    if not model.has_resource_base():
        return None
    return f"{model.__module__}.{model.__name__}"


def _model_class(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The element type of a field's annotation (Optional and List taken off), and whether it repeats."""
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        elif origin is list:
            many = True
            annotation = typing.get_args(annotation)[0]
        else:
            return annotation, many


def _primitive_name(annotation: Any) -> str | None:
    """The FHIR primitive type an ``Annotated[python type, Marker()]`` (or a bare ``bool``,
    ``str``...) stands for; None for a complex type."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *markers = typing.get_args(annotation)
        for marker in markers:
            name = FHIR_PRIMITIVES_MAPS.get(type(marker))
            if name is not None:
                return str(name)
        annotation = base
    plain = FHIR_PRIMITIVES_MAPS.get(annotation) if isinstance(annotation, type) else None
    return None if plain is None else str(plain)


@functools.lru_cache(maxsize=1024)
def _schema(path: str) -> dict[str, _Element]:
    """The elements of the type whose model is ``path``, in the order FHIR XML writes them."""
    model = _model_class(path)
    aliases = model.get_alias_mapping()
    out: dict[str, _Element] = {}
    for name in model.elements_sequence():
        field = model.model_fields[aliases[name]]
        annotation, many = _unwrap(field.annotation)
        primitive = _primitive_name(annotation)
        if primitive == "xhtml":
            out[name] = _Element(name, many, "xhtml")
        elif primitive is not None:
            out[name] = _Element(name, many, "primitive", primitive=primitive)
        else:
            target = str(annotation._model_klass)
            kind: Literal["resource", "complex"] = "resource" if target.endswith(".resource.Resource") else "complex"
            out[name] = _Element(name, many, kind, model=target)
    return out


def _is_extension(path: str) -> bool:
    return path.endswith(".extension.Extension")


# -- JSON to XML ---------------------------------------------------------------------------------

#: What XML 1.0 cannot carry (its Char production): control characters but tab, line feed and
#: carriage return, surrogates, U+FFFE and U+FFFF. The input refuses them (adapter.api.json_input);
#: a value stored before that, or an error's words quoting a request, may still hold one.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _strings(value: Any) -> typing.Iterator[str]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def xml_cannot_carry(body: Any) -> bool:
    """Whether a string of ``body`` holds a character XML 1.0 cannot carry."""
    return any(_NOT_XML.search(text) for text in _strings(body))


def replaced_for_xml(body: Any) -> Any:
    """``body`` with each character XML 1.0 cannot carry replaced by U+FFFD: for the adapter's own
    words (an OperationOutcome quoting what a request sent), never for a record."""
    if isinstance(body, str):
        return _NOT_XML.sub("\ufffd", body)
    if isinstance(body, dict):
        return {key: replaced_for_xml(value) for key, value in body.items()}
    if isinstance(body, list):
        return [replaced_for_xml(value) for value in body]
    return body



def to_xml(resource: dict[str, Any], version: Version = "4") -> bytes:
    """``resource`` (FHIR JSON, as the adapter built it) as a FHIR XML document, UTF-8.

    Raises ValueError when it holds what its type does not (a bug of the adapter's, not the
    client's: an answer that cannot be written is not sent half written)."""
    root = _resource_element(resource, version)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _resource_element(resource: dict[str, Any], version: Version) -> Any:
    resource_type = resource.get("resourceType")
    model = _resource_model(version, str(resource_type))
    if model is None:
        raise ValueError(f"no FHIR resource type {resource_type!r}")
    element = etree.Element(f"{{{FHIR_NS}}}{resource_type}", nsmap={None: FHIR_NS})
    _write(element, model, resource, version, resource=True)
    return element


def _write(parent: Any, path: str, data: dict[str, Any], version: Version, *, resource: bool) -> None:
    schema = _schema(path)
    known = {"resourceType"} if resource else set()
    if not resource and "id" in data:
        parent.set("id", str(data["id"]))
        known.add("id")
    if _is_extension(path) and "url" in data:
        parent.set("url", str(data["url"]))
        known.add("url")
    for name, element in schema.items():
        if name in known:
            continue
        value, extra = data.get(name), data.get(f"_{name}")
        if value is None and extra is None:
            continue
        known.update((name, f"_{name}"))
        values = (value if isinstance(value, list) else [value]) if value is not None else []
        if element.kind == "primitive":
            extras = (extra if isinstance(extra, list) else [extra]) if extra is not None else []
            for item, ext in zip_longest(values, extras):
                child = etree.SubElement(parent, f"{{{FHIR_NS}}}{name}")
                if item is not None:
                    child.set("value", _lexical(item))
                if isinstance(ext, dict):
                    _write(child, element_model(version), ext, version, resource=False)
        elif element.kind == "xhtml":
            for item in values:
                parent.append(_xhtml(str(item)))
        elif element.kind == "resource":
            for item in values:
                etree.SubElement(parent, f"{{{FHIR_NS}}}{name}").append(_resource_element(item, version))
        else:
            for item in values:
                _write(etree.SubElement(parent, f"{{{FHIR_NS}}}{name}"), element.model, item, version,
                       resource=False)
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path.rpartition('.')[2]} has no element {min(unknown)!r}")


def element_model(version: Version) -> str:
    """The model of what ``_name`` holds in JSON: an Element's ``id`` and ``extension``."""
    return f"{_models(version)}.element.Element"


def _lexical(value: Any) -> str:
    """A JSON primitive as the ``value`` attribute writes it (a decimal as JSON writes it)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, JsonDecimal):
        return value.text  # as it was read (adapter.json_decimal)
    if isinstance(value, (int, float)):
        return json.dumps(value)
    return str(value)


def _xhtml(div: str) -> Any:
    """A narrative's ``div`` (XHTML as a string, checked when it was written) as an element."""
    try:
        element = etree.fromstring(div.encode("utf-8"), _parser())
    except etree.XMLSyntaxError as exc:
        raise ValueError("a narrative div is not well-formed XML") from exc
    if element.tag != f"{{{XHTML_NS}}}div":
        raise ValueError("a narrative div is not an XHTML div")
    element.tail = None
    return element


# -- XML to JSON ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _parser() -> Any:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=True, remove_comments=True, remove_pis=True, strip_cdata=True)


def from_xml(raw: bytes, version: Version = "4", *, what: str = "the body") -> dict[str, Any]:
    """The FHIR JSON of the FHIR XML document ``raw`` (what a JSON client would have sent:
    :func:`adapter.api.json_input.load_json`'s checks are made on it too).

    Raises:
        InvalidResource: ``raw`` is not well-formed XML, declares a DTD, is not UTF-8, nests
            deeper than MAX_DEPTH, or is not a FHIR resource in FHIR XML (module docstring).
    """
    # refused before libxml2 reads anything of them: a DTD is where entities are declared (XXE,
    # entity expansion; with huge_tree libxml2's own amplification bound is lifted too), and
    # <!DOCTYPE occurs nowhere else in well-formed XML but in a comment, CDATA or a processing
    # instruction, none of which FHIR XML needs; UTF-16 and UTF-32 would hide it from this look
    if raw[:4] in (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff") or raw[:2] in (b"\xff\xfe", b"\xfe\xff") \
            or b"\x00" in raw[:4]:
        raise InvalidResource(f"{what} is not UTF-8: FHIR XML is UTF-8")
    if _DOCTYPE.search(raw):
        raise InvalidResource(f"{what} declares a DTD (<!DOCTYPE>), which FHIR XML does not use: not read")
    if raw.count(b"<") > 4 * MAX_CONTAINERS:  # tags: an element a primitive, an object or an array's item
        raise InvalidResource(f"{what} holds more than {2 * MAX_CONTAINERS} elements")
    problem = _scan(raw)
    if problem is not None:
        raise InvalidResource(f"{what} {problem}")
    try:
        tree = etree.fromstring(raw, _parser()).getroottree()
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise InvalidResource(f"{what} is not well-formed XML") from exc
    info = tree.docinfo
    if info.doctype or info.internalDTD is not None or info.externalDTD is not None:
        raise InvalidResource(f"{what} declares a DTD (<!DOCTYPE>), which FHIR XML does not use: not read")
    if (info.encoding or "UTF-8").upper() not in ("UTF-8", "UTF8"):
        raise InvalidResource(f"{what} is {str(info.encoding)[:20]}: FHIR XML is UTF-8")
    root = tree.getroot()
    depth = _depth(root)
    if depth > MAX_DEPTH:
        raise InvalidResource(f"{what} nests deeper than {MAX_DEPTH} levels")
    data = _read_resource(root, version, _local(root))
    return dict(check_loaded(data, what=what, error=InvalidResource))


def _scan(raw: bytes) -> str | None:
    """What of the JSON path's bounds (adapter.api.json_input) and of the attributes' ``raw``
    passes, looked at tag by tag (at most 4 * MAX_CONTAINERS of them, bounded above) before libxml2
    reads it; None when within them. A tag's text runs to the next ``<``, which no attribute value
    may hold (XML 1.0 AttValue): its attributes and namespace declarations, then any text after it."""
    if raw.count(b"xmlns") > MAX_NAMESPACE_DECLARATIONS:
        return f"holds more than {MAX_NAMESPACE_DECLARATIONS} namespace declarations (xmlns)"
    attributes = bulk = 0
    start = raw.find(b"<")
    while start >= 0:
        end = raw.find(b"<", start + 1)
        stop = len(raw) if end < 0 else end
        if raw.count(b"=", start, stop) > _MAX_TAG_ATTRIBUTES:  # '=' also in values: then counted exactly
            count = sum(1 for _ in zip(_ATTRIBUTE.finditer(raw, start, stop), range(_MAX_TAG_ATTRIBUTES + 1)))
            if count > _MAX_TAG_ATTRIBUTES:
                return f"has an element of more attributes than a FHIR XML element has ({_MAX_TAG_ATTRIBUTES} at most)"
        attributes += raw.count(b"=", start, stop)
        if attributes > MAX_VALUES:
            return f"holds more than {MAX_VALUES} attributes"
        if stop - start > MAX_STRING_BYTES:
            if not _BULK_TAG.match(raw, start + 1):
                return f"holds a string longer than {MAX_STRING_BYTES} bytes (datatypes.html string: 1 MB)"
            bulk += stop - start
        start = end
    if len(raw) - bulk > MAX_STRUCTURE_BYTES:
        return f"holds more than {MAX_STRUCTURE_BYTES} bytes outside base64 data (Binary.data, Attachment.data)"
    return None


def _depth(root: Any) -> int:
    deepest = 0
    stack = [(root, 1)]
    while stack:
        element, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > MAX_DEPTH:
            break
        stack.extend((child, depth + 1) for child in element)
    return deepest


def _local(element: Any) -> str:
    return str(etree.QName(element).localname)


def _refuse(where: str, why: str) -> InvalidResource:
    return InvalidResource(f"not FHIR XML: {where} {why}", expression=where)


def _read_resource(element: Any, version: Version, where: str) -> dict[str, Any]:
    qname = etree.QName(element)
    if qname.namespace != FHIR_NS:
        raise _refuse(where, f"is not in the FHIR namespace ({FHIR_NS})")
    model = _resource_model(version, qname.localname)
    if model is None:
        raise _refuse(where, f"names no FHIR resource type ({qname.localname[:40]})")
    return {"resourceType": qname.localname, **_read(element, model, version, where, resource=True)}


def _read(element: Any, path: str, version: Version, where: str, *, resource: bool,
          primitive: bool = False) -> dict[str, Any]:
    """The JSON object of ``element`` of the type ``path`` (a resource's, or an element's whose
    ``id`` is an attribute; a ``primitive``'s: its ``value`` attribute is taken too)."""
    schema = _schema(path)
    out: dict[str, Any] = {}
    allowed = set() if resource else {"id"}
    if primitive:
        allowed.add("value")
    if _is_extension(path):
        allowed.add("url")
    attributes = element.attrib
    if len(attributes) > _MAX_ATTRIBUTES:  # lxml's items() costs the square of their number, holding the GIL
        raise _refuse(where, f"has more attributes than a FHIR XML element has ({_MAX_ATTRIBUTES} at most here)")
    for name, value in attributes.items():
        if name.startswith("{"):  # another namespace's (xsi:schemaLocation): not FHIR's, left
            continue
        if name not in allowed:
            raise _refuse(where, f"has an attribute {name[:40]!r} FHIR XML does not")
        out[name] = value
    _no_text(element.text, where)
    values: dict[str, list[Any]] = {}
    extras: dict[str, list[Any]] = {}
    for child in element:
        _no_text(child.tail, where)
        name = _local(child)
        at = f"{where}.{name}"
        spec = schema.get(name)
        namespace = etree.QName(child).namespace
        if spec is None or (namespace != (XHTML_NS if spec.kind == "xhtml" else FHIR_NS)):
            raise _refuse(at, "is not an element of this type")
        if not spec.many and (name in values or name in extras):
            raise _refuse(at, "is given more than once and does not repeat")
        if spec.kind == "primitive":
            value, extra = _read_primitive(child, spec, version, at)
            values.setdefault(name, []).append(value)
            extras.setdefault(name, []).append(extra)
            continue
        if spec.kind == "xhtml":
            item: Any = etree.tostring(child, encoding="unicode", with_tail=False)
        elif spec.kind == "resource":
            _no_text(child.text, at)
            inner = list(child)
            if len(inner) != 1:
                raise _refuse(at, "holds one resource")
            _no_text(inner[0].tail, at)
            item = _read_resource(inner[0], version, f"{at}.{_local(inner[0])}")
        else:
            item = _read(child, spec.model, version, at, resource=False)
        values.setdefault(name, []).append(item)
    for name, spec in schema.items():
        if name not in values:
            continue
        items, exts = values[name], extras.get(name)
        if spec.many:
            if any(v is not None for v in items):
                out[name] = items
            if exts and any(e is not None for e in exts):
                out[f"_{name}"] = exts
        else:
            if items[0] is not None:
                out[name] = items[0]
            if exts and exts[0] is not None:
                out[f"_{name}"] = exts[0]
    return out


def _read_primitive(element: Any, spec: _Element, version: Version, where: str) -> tuple[Any, Any]:
    """A primitive's JSON value and its ``_name`` object (id, extensions), each None when absent."""
    extra = _read(element, element_model(version), version, where, resource=False, primitive=True)
    raw = element.get("value")
    extra.pop("value", None)
    if raw is None and not extra:
        raise _refuse(where, "has neither a value nor an extension")
    return (None if raw is None else _typed(raw, spec.primitive, where)), (extra or None)


def _typed(raw: str, primitive: str, where: str) -> Any:
    """The JSON value of a primitive's ``value`` attribute (json.html: booleans and numbers are
    JSON's own; every other primitive a string, integer64 included)."""
    if primitive in _JSON_BOOLEAN:
        if raw not in ("true", "false"):
            raise _refuse(where, "is a boolean: true or false")
        return raw == "true"
    if primitive in _JSON_INTEGER:
        if not _INTEGER.fullmatch(raw) or len(raw) > _MAX_DIGITS:
            raise _refuse(where, f"is an {primitive}, a whole number")
        return int(raw)
    if primitive in _JSON_DECIMAL:
        if not _DECIMAL.fullmatch(raw) or len(raw) > _MAX_DIGITS:
            raise _refuse(where, "is a decimal")
        try:
            return json.loads(raw, parse_float=parse_float)  # as the JSON path reads the same digits
        except ValueError as exc:  # Python's bound on the digits of an int it converts
            raise _refuse(where, "is a decimal") from exc
    return raw


def _no_text(text: str | None, where: str) -> None:
    if text is not None and text.strip():
        raise _refuse(where, "holds text: FHIR XML puts values in value attributes")
