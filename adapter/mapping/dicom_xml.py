"""The DICOM JSON Model (PS3.18 F.2) written as the Native DICOM Model (PS3.19 A.1), the XML
the DICOMweb answers take when ``multipart/related; type="application/dicom+xml"`` is asked for.

It is made from the DICOM JSON the routes already built, after the consent decision, the
purpose's view and the audit: the XML carries exactly the attributes and values of that JSON,
nothing read again from the object. One JSON object is one ``NativeDicomModel`` document:

* each attribute a ``DicomAttribute`` with ``tag`` (8 upper-case hex digits), ``vr``,
  ``keyword`` (the data dictionary's, when it has one) and, for a private data element,
  ``privateCreator`` (the value of its Private Creator element in the same data set);
* its values as ``Value number="n"`` (1-based); a PN value as ``PersonName number="n"`` with
  ``Alphabetic`` / ``Ideographic`` / ``Phonetic`` groups, each split into ``FamilyName``,
  ``GivenName``, ``MiddleName``, ``NamePrefix``, ``NameSuffix`` (an empty component left out);
  a sequence's items as ``Item number="n"``, each a data set; ``BulkDataURI`` as
  ``BulkData uri=``; ``InlineBinary`` as it is (base64);
* an empty value (JSON null) as an empty ``Value`` / ``PersonName`` of its number, so the
  numbering of the values after it holds.

Text is escaped so that a parser gives back the very characters (a carriage return as
``&#13;``, which XML would otherwise read as a line feed). A value holding a character XML 1.0
cannot carry at all (a control character, a lone surrogate) makes :class:`NotAcceptable`: the
answer is refused rather than altered; the client may ask for the DICOM JSON instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydicom.datadict import keyword_for_tag

from adapter.errors import NotAcceptable

NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
#: PS3.19 A.1.5: the name components of a PN component group, in order.
NAME_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")
#: PS3.18 F.2.2 / PS3.19 A.1.5: the component groups of a PN value, in order.
NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")

#: Characters outside XML 1.0's Char production (https://www.w3.org/TR/xml/#charsets).
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: What escaping adds to &, < and >: a carriage return kept as one (XML 1.0 2.11).
_TEXT_ENTITIES = {"\r": "&#13;"}
_ATTRIBUTE_ENTITIES = {"\r": "&#13;", "\n": "&#10;", "\t": "&#9;"}


def native_dicom_model(dataset: Mapping[str, Any]) -> bytes:
    """One DICOM JSON object as a Native DICOM Model document, UTF-8 (module docstring)."""
    out = ['<?xml version="1.0" encoding="UTF-8"?>\n', f"<NativeDicomModel xmlns={quoteattr(NAMESPACE)}>"]
    _data_set(dataset, out)
    out.append("</NativeDicomModel>\n")
    return "".join(out).encode("utf-8")


def _data_set(dataset: Mapping[str, Any], out: list[str]) -> None:
    for tag, attribute in dataset.items():
        _attribute(tag.upper(), attribute, dataset, out)


def _attribute(tag: str, attribute: Mapping[str, Any], dataset: Mapping[str, Any], out: list[str]) -> None:
    vr = str(attribute.get("vr", ""))
    head = f"<DicomAttribute tag={_attr(tag)} vr={_attr(vr)}"
    keyword = keyword_for_tag(int(tag, 16))
    if keyword:
        head += f" keyword={_attr(keyword)}"
    creator = _private_creator(tag, dataset)
    if creator is not None:
        head += f" privateCreator={_attr(creator)}"
    out.append(head + ">")
    if "BulkDataURI" in attribute:
        out.append(f"<BulkData uri={_attr(str(attribute['BulkDataURI']))}/>")
    elif "InlineBinary" in attribute:
        out.append(f"<InlineBinary>{_text(str(attribute['InlineBinary']))}</InlineBinary>")
    for number, value in enumerate(attribute.get("Value") or (), start=1):
        if vr == "SQ":
            out.append(f'<Item number="{number}">')
            _data_set(value or {}, out)
            out.append("</Item>")
        elif vr == "PN":
            out.append(_person_name(number, value))
        elif value is None or value == "":
            out.append(f'<Value number="{number}"/>')
        else:
            out.append(f'<Value number="{number}">{_text(_value_text(value))}</Value>')
    out.append("</DicomAttribute>")


def _private_creator(tag: str, dataset: Mapping[str, Any]) -> str | None:
    """The Private Creator of a private data element (PS3.5 7.8.1): the value of (gggg,00xx) in
    the same data set, xx the high byte of the element number; None for any other element."""
    group, element = int(tag[:4], 16), int(tag[4:], 16)
    if group % 2 == 0 or element < 0x1000:
        return None
    creator = dataset.get(f"{group:04X}00{element >> 8:02X}", {})
    values = creator.get("Value") or [None]
    return str(values[0]) if values[0] is not None else None


def _person_name(number: int, value: Any) -> str:
    if value is not None and not isinstance(value, Mapping):
        raise NotAcceptable("a person name of this answer has no Native DICOM Model form: "
                            "ask for application/dicom+json")
    inner = []
    for group in NAME_GROUPS:
        text = (value or {}).get(group)
        if not text:
            continue
        parts = str(text).split("^")
        if len(parts) > len(NAME_COMPONENTS):  # more than PS3.5 6.2 allows: not dropped silently
            raise NotAcceptable("a person name of this answer has more than five components: "
                                "ask for application/dicom+json")
        names = "".join(f"<{name}>{_text(part)}</{name}>" for name, part in zip(NAME_COMPONENTS, parts, strict=False)
                        if part)
        inner.append(f"<{group}>{names}</{group}>")
    return f'<PersonName number="{number}">{"".join(inner)}</PersonName>'


def _value_text(value: Any) -> str:
    if isinstance(value, bool):  # not a DICOM value type: refused below rather than written as True
        raise NotAcceptable("a value of this answer has no Native DICOM Model form: ask for application/dicom+json")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _text(text: str) -> str:
    _refuse_unrepresentable(text)
    return escape(text, _TEXT_ENTITIES)


def _attr(text: str) -> str:
    _refuse_unrepresentable(text)
    return quoteattr(text, _ATTRIBUTE_ENTITIES)


def _refuse_unrepresentable(text: str) -> None:
    if _NOT_XML.search(text):
        raise NotAcceptable("a value of this answer holds a character XML 1.0 cannot carry: "
                            "ask for application/dicom+json")
