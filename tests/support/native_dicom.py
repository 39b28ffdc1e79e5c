"""Reading the Native DICOM Model (PS3.19 A.1) back, for tests: the structure its schema (PS3.19
A.1.6, RELAX NG) allows, checked rule by rule (no RELAX NG validator is installed here), and
the DICOM JSON Model (PS3.18 F.2) the document stands for, so that an XML answer can be
compared with the JSON answer to the same request, attribute by attribute.

The rules checked, as A.1.6 states them:

* the root is ``NativeDicomModel`` in the namespace ``http://dicom.nema.org/PS3.19/models/NativeDICOM``,
  its children are ``DicomAttribute`` elements only (a data set);
* a ``DicomAttribute`` has ``tag`` (exactly 8 characters of ``[0-9A-F]``) and ``vr`` (a DICOM VR),
  may have ``keyword`` (a token) and ``privateCreator``, and no other attribute; its content is
  empty, or one ``BulkData`` (with ``uri`` or ``uuid``), or one or more ``Value``, or one or more
  ``Item``, or one or more ``PersonName``, or one ``InlineBinary`` (base64), never a mixture;
* ``Value``, ``Item`` and ``PersonName`` carry ``number`` (a positive integer); ``Value`` holds
  text only, ``Item`` a data set;
* ``PersonName`` holds at most one each of ``Alphabetic``, ``Ideographic``, ``Phonetic``, in that
  order; each holds at most one each of ``FamilyName``, ``GivenName``, ``MiddleName``,
  ``NamePrefix``, ``NameSuffix``, in that order, each text only.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from typing import Any

import httpx

NS = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
_Q = f"{{{NS}}}"
#: The VRs of the current PS3.19 A.1.6 schema (with OL, OV, SV, UV, UC, UR added since 2014).
VRS = frozenset({"AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV",
                 "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV"})
GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
_INTEGER_VRS = frozenset({"IS", "SL", "SS", "UL", "US", "SV", "UV"})
_DECIMAL_VRS = frozenset({"DS", "FL", "FD"})


def _local(element: ET.Element) -> str:
    assert element.tag.startswith(_Q), f"{element.tag} is not in the Native DICOM Model namespace"
    return element.tag[len(_Q):]


def _no_text(element: ET.Element) -> None:
    assert not (element.text or "").strip(), f"{_local(element)} holds text"
    for child in element:
        assert not (child.tail or "").strip(), f"text after {_local(child)}"


def _numbered(elements: list[ET.Element]) -> None:
    for element in elements:
        number = element.get("number", "")
        assert re.fullmatch(r"[1-9][0-9]*", number), f"{_local(element)} number={number!r}"


def check_structure(document: bytes) -> ET.Element:
    """Parse ``document`` (well-formed or an error) and assert the A.1.6 rules above; the root."""
    root = ET.fromstring(document)
    assert root.tag == f"{_Q}NativeDicomModel", root.tag
    assert not root.attrib, root.attrib
    _check_data_set(root)
    return root


def _check_data_set(parent: ET.Element) -> None:
    _no_text(parent)
    for attribute in parent:
        assert _local(attribute) == "DicomAttribute", _local(attribute)
        _check_attribute(attribute)


def _check_attribute(attribute: ET.Element) -> None:
    assert set(attribute.attrib) <= {"tag", "vr", "keyword", "privateCreator"}, attribute.attrib
    assert re.fullmatch(r"[0-9A-F]{8}", attribute.get("tag", "")), attribute.get("tag")
    assert attribute.get("vr") in VRS, attribute.get("vr")
    keyword = attribute.get("keyword")
    assert keyword is None or re.fullmatch(r"\S+", keyword), keyword
    _no_text(attribute)
    kinds = [_local(child) for child in attribute]
    if not kinds:
        return
    kind = kinds[0]
    assert kind in ("BulkData", "Value", "Item", "PersonName", "InlineBinary"), kind
    assert set(kinds) == {kind}, f"a mixture of {sorted(set(kinds))}"
    children = list(attribute)
    if kind in ("BulkData", "InlineBinary"):
        assert len(children) == 1, f"{len(children)} {kind}"
    if kind == "BulkData":
        assert set(children[0].attrib) in ({"uri"}, {"uuid"}) and not len(children[0]), children[0].attrib
    elif kind == "InlineBinary":
        assert not children[0].attrib and not len(children[0])
        base64.b64decode(children[0].text or "", validate=True)
    else:
        _numbered(children)
        for child in children:
            assert set(child.attrib) == {"number"}, child.attrib
            if kind == "Value":
                assert not len(child), "a Value holds elements"
            elif kind == "Item":
                _check_data_set(child)
            else:
                _check_person_name(child)


def _check_person_name(name: ET.Element) -> None:
    _no_text(name)
    groups = [_local(g) for g in name]
    assert groups == [g for g in GROUPS if g in groups], groups
    for group in name:
        _no_text(group)
        assert not group.attrib
        components = [_local(c) for c in group]
        assert components == [c for c in COMPONENTS if c in components], components
        for component in group:
            assert not component.attrib and not len(component)


def to_json_model(root: ET.Element) -> dict[str, Any]:
    """The DICOM JSON object ``root`` (a NativeDicomModel, or an Item) stands for."""
    out: dict[str, Any] = {}
    for attribute in root:
        vr = attribute.get("vr", "")
        item: dict[str, Any] = {"vr": vr}
        children = list(attribute)
        if children and _local(children[0]) == "BulkData":
            item["BulkDataURI"] = children[0].get("uri")
        elif children and _local(children[0]) == "InlineBinary":
            item["InlineBinary"] = children[0].text or ""
        elif children:
            values: list[Any] = [None] * max(int(c.get("number", "0")) for c in children)
            for child in children:
                values[int(child.get("number", "0")) - 1] = _json_value(vr, child)
            item["Value"] = values
        out[attribute.get("tag", "")] = item
    return out


def _json_value(vr: str, child: ET.Element) -> Any:
    kind = _local(child)
    if kind == "Item":
        return to_json_model(child)
    if kind == "PersonName":
        groups = {}
        for group in child:
            parts = {_local(c): c.text or "" for c in group}
            groups[_local(group)] = "^".join(parts.get(c, "") for c in COMPONENTS).rstrip("^")
        return groups or None
    if child.text is None:
        return None
    if vr in _INTEGER_VRS:
        return int(child.text)
    if vr in _DECIMAL_VRS:
        return float(child.text)
    return child.text


def comparable(model: Any) -> Any:
    """A DICOM JSON object (or list of them) as :func:`to_json_model` reads it back: numbers of
    numeric VRs as numbers, an empty string value as null, PN groups without trailing empty
    components (insignificant in PS3.5 6.2)."""
    if isinstance(model, list):
        return [comparable(m) for m in model]
    out: dict[str, Any] = {}
    for tag, attribute in model.items():
        vr = attribute["vr"]
        item = dict(attribute)
        if "Value" in attribute:
            if vr == "SQ":
                item["Value"] = [comparable(v) for v in attribute["Value"]]
            elif vr == "PN":
                item["Value"] = [{g: str(t).rstrip("^") for g, t in v.items() if t} or None if v else None
                                 for v in attribute["Value"]]
            else:
                item["Value"] = [None if v is None or v == "" else int(v) if vr in _INTEGER_VRS
                                 else float(v) if vr in _DECIMAL_VRS else v for v in attribute["Value"]]
            if not item["Value"]:
                del item["Value"]
        out[tag] = item
    return out


def xml_parts(response: httpx.Response) -> list[bytes]:
    """The parts of a ``multipart/related; type="application/dicom+xml"`` answer, each checked to be
    of Content-Type application/dicom+xml; none for a body of the closing delimiter alone (no
    result)."""
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related") and 'type="application/dicom+xml"' in ctype, ctype
    match = re.search(r"boundary=([^;\s]+)", ctype)
    assert match, ctype
    boundary = match.group(1).strip('"')
    body = response.content
    delimiter = f"--{boundary}".encode()
    if body == delimiter + b"--\r\n":
        return []
    assert body.startswith(delimiter) and body.endswith(delimiter + b"--\r\n"), body[-80:]
    out = []
    for chunk in body[len(delimiter):-len(delimiter) - 4].split(b"\r\n" + delimiter):
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(b":", 1) for line in head.split(b"\r\n"))}
        assert headers[b"content-type"] == b"application/dicom+xml", head
        length = int(headers[b"content-length"])
        assert data[length:] in (b"", b"\r\n"), data[length:]
        out.append(data[:length])
    return out
