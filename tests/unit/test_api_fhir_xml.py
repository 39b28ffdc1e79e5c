"""adapter.api.fhir_xml on its own: the cases of json.html's primitive representation that the
adapter's own resources rarely have (xml.html, json.html#primitive)."""

from __future__ import annotations

import json

import pytest

from adapter.api.fhir_xml import MAX_NAMESPACE_DECLARATIONS, from_xml, to_xml
from adapter.api.json_input import MAX_STRING_BYTES, MAX_STRUCTURE_BYTES, load_json
from adapter.errors import InvalidResource
from adapter.json_decimal import dumps

pytestmark = pytest.mark.unit


def test_a_repeated_primitive_pairs_its_values_and_extensions_by_position() -> None:
    patient = {"resourceType": "Patient", "name": [{
        "given": ["Ann", None, "Lee"],
        "_given": [None, {"extension": [{"url": "http://example.org/x", "valueBoolean": True}]}, {"id": "g3"}]}]}
    document = to_xml(patient)
    assert b'<given value="Ann"/><given><extension url="http://example.org/x"><valueBoolean value="true"/>' \
           b'</extension></given><given value="Lee" id="g3"/>' in document
    assert from_xml(document) == patient


def test_numbers_are_read_as_the_json_path_reads_them() -> None:
    """A decimal's digits as json.loads reads them (1.50 is 1.5 either way), an integer an int,
    a boolean a bool; R5's integer64 stays the string JSON has it as."""
    document = (b'<Observation xmlns="http://hl7.org/fhir"><status value="final"/><code><text value="x"/></code>'
                b'<valueQuantity><value value="1.50"/></valueQuantity></Observation>')
    assert from_xml(document)["valueQuantity"]["value"] == json.loads("1.50")
    r5 = {"resourceType": "Binary", "contentType": "image/png", "data": "AA=="}
    assert from_xml(to_xml(r5, "5"), "5") == r5
    doc = {"resourceType": "DocumentReference", "status": "current",
           "content": [{"attachment": {"contentType": "image/png", "size": "12"}}]}
    assert b'<size value="12"/>' in to_xml(doc, "5") and from_xml(to_xml(doc, "5"), "5") == doc


def test_what_the_adapter_would_write_wrongly_is_not_written() -> None:
    with pytest.raises(ValueError, match="nonsense"):
        to_xml({"resourceType": "Binary", "contentType": "image/png", "nonsense": 1})


@pytest.mark.parametrize("document", [
    b'<Binary xmlns="http://hl7.org/fhir"><contentType value="a"/><data value="AA=="/></Binary> trailing',
    b'<Binary xmlns="http://hl7.org/fhir"><id value="1"/><text><div>no namespace</div></text></Binary>',
    b'<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>',
])
def test_not_fhir_xml(document: bytes) -> None:
    with pytest.raises(InvalidResource):
        from_xml(document)


def test_namespace_declarations_and_attributes_are_bounded_before_the_parse() -> None:
    """Security review 2: 64 MB of ``xmlns:aN="u"`` on the root took 1.1 GB to parse; the ``<``
    count bound did not see them."""
    many = " ".join(f'xmlns:a{i}="u"' for i in range(MAX_NAMESPACE_DECLARATIONS + 1))
    with pytest.raises(InvalidResource, match="namespace declarations"):
        from_xml(f'<Binary xmlns="http://hl7.org/fhir" {many}><contentType value="a"/></Binary>'.encode())
    spread = "".join(f'<extension url="u{i}" xmlns:a="x"><valueString value="v"/></extension>'
                     for i in range(MAX_NAMESPACE_DECLARATIONS + 1))
    with pytest.raises(InvalidResource, match="namespace declarations"):
        from_xml(f'<Consent xmlns="http://hl7.org/fhir">{spread}<status value="active"/></Consent>'.encode())
    attrs = " ".join(f'a{i}="x"' for i in range(100))
    with pytest.raises(InvalidResource, match="more attributes than a FHIR XML element has"):
        from_xml(f'<Binary xmlns="http://hl7.org/fhir"><contentType {attrs} value="a"/></Binary>'.encode())


def test_a_value_longer_than_fhir_allows_is_refused_but_base64_data_is_not() -> None:
    long = "a" * (MAX_STRING_BYTES + 1)
    with pytest.raises(InvalidResource, match="string longer than"):
        from_xml(f'<Binary xmlns="http://hl7.org/fhir"><contentType value="{long}"/></Binary>'.encode())
    data = "QUFB" * (MAX_STRUCTURE_BYTES // 2)
    read = from_xml(f'<Binary xmlns="http://hl7.org/fhir"><contentType value="a"/><data value="{data}"/>'
                    "</Binary>".encode())
    assert read["data"] == data


@pytest.mark.parametrize("number", ["1.50", "0.010", "1e2", "0.12345678901234567890123456789", "3.14"])
def test_a_decimal_goes_through_xml_as_written(number: str) -> None:
    """Security review 6: what the JSON path takes, the adapter's XML of it is taken back, unchanged."""
    body = f'{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},' \
           f'"valueQuantity":{{"value":{number}}}}}'
    read = load_json(body.encode(), what="the body")
    document = to_xml(read)
    assert f'<value value="{number}"/>'.encode() in document
    assert dumps(from_xml(document), separators=(",", ":")) == body
