"""adapter.api.json_input: what a JSON body may hold is bounded before it is parsed (security
review 2: a 66 MB transaction Bundle of plain numbers took 3.6 GB and 67 s, the container bound not
seeing them), and a FHIR decimal is kept as written (security review 6)."""

from __future__ import annotations

import json
import tracemalloc
from decimal import Decimal

import pytest

from adapter.api.json_input import (
    MAX_NUMBER_CHARS,
    MAX_STRING_BYTES,
    MAX_STRUCTURE_BYTES,
    MAX_VALUES,
    load_json,
)
from adapter.errors import InvalidInput, InvalidResource
from adapter.json_decimal import dumps, loads

pytestmark = pytest.mark.unit


def _bundle(items: str) -> bytes:
    return ('{"resourceType":"Bundle","type":"transaction","x":[' + items + "]}").encode()


@pytest.mark.parametrize("item", ["1", '"a"', "true", "null", "1.5"])
def test_a_body_of_more_values_than_any_resource_holds_is_refused_before_it_is_parsed(item: str) -> None:
    body = _bundle(",".join([item] * (MAX_VALUES + 10)))
    with pytest.raises(InvalidResource, match=f"more than {MAX_VALUES} values"):
        load_json(body, what="the body", error=InvalidResource)


def test_a_bundle_of_millions_of_numbers_costs_no_memory_to_refuse() -> None:
    """The review's body: 66 MB of ``1,1,1…`` within the transaction limit."""
    body = _bundle(",".join(["1"] * (33 * 1024 * 1024)))
    tracemalloc.start()
    try:
        with pytest.raises(InvalidResource, match=f"more than {MAX_VALUES} values"):
            load_json(body, what="the body", error=InvalidResource)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024, peak  # was 2.75 GB (json.loads 366 MB, then the check's stack)


def test_values_within_the_bound_are_taken() -> None:
    body = _bundle(",".join(["1"] * (MAX_VALUES - 100)))
    assert len(load_json(body, what="the body")["x"]) == MAX_VALUES - 100


def test_a_string_longer_than_fhir_allows_is_refused_but_base64_data_is_not() -> None:
    long = "a" * (MAX_STRING_BYTES + 1)
    with pytest.raises(InvalidInput, match="string longer than"):
        load_json(json.dumps({"resourceType": "Consent", "text": {"div": long}}).encode(), what="the body")
    data = "QUFB" * (MAX_STRUCTURE_BYTES // 2)  # base64Binary: Binary.data, Attachment.data
    taken = load_json(json.dumps({"resourceType": "Binary", "data": data}).encode(), what="the body")
    assert taken["data"] == data


def test_the_body_outside_base64_data_is_bounded() -> None:
    strings = ",".join(['"' + "a" * 1000 + '"'] * (MAX_STRUCTURE_BYTES // 1000 + 10))
    with pytest.raises(InvalidInput, match="outside base64 data"):
        load_json(_bundle(strings), what="the body")


def test_an_unterminated_string_or_many_escaped_quotes_cost_no_more_than_a_look() -> None:
    with pytest.raises(InvalidInput, match="not valid JSON"):
        load_json(b'{"data":"' + b'\\"' * 1_000_000, what="the body")
    with pytest.raises(InvalidInput):
        load_json(b'"\\"' * 300_000, what="the body")


@pytest.mark.parametrize("number", ["1" * (MAX_NUMBER_CHARS + 1), "0." + "1" * MAX_NUMBER_CHARS,
                                    "1" * 4001, "0." + "1" * 100_000])
def test_a_number_of_more_digits_than_the_bound_is_refused_not_cut(number: str) -> None:
    """Security review 6: 0.111… of 100,000 digits was cut to a float's 16 in silence; 1000…0 of
    4,001 digits was stored, then refused in the adapter's own XML of it."""
    body = ('{"resourceType":"Consent","extension":[{"url":"http://x","valueDecimal":' + number + "}]}").encode()
    with pytest.raises(InvalidResource, match="number of more than"):
        load_json(body, what="the body", error=InvalidResource)


@pytest.mark.parametrize("number", ["1e400", "-1e400", "1e-400"])
def test_a_decimal_no_double_can_hold_is_refused(number: str) -> None:
    with pytest.raises(InvalidResource):
        load_json(f'{{"valueDecimal":{number}}}'.encode(), what="the body", error=InvalidResource)


@pytest.mark.parametrize("number", ["1.50", "0.010", "1e2", "1.0E-7", "0.12345678901234567890123456789",
                                    "-123456789012345678901234567890.5", "3.14", "0", "-0.0", "100"])
def test_a_decimal_is_written_back_as_it_was_read(number: str) -> None:
    """FHIR R4 datatypes decimal: "the precision of the decimal value has significance" (0.010 is
    not 0.01), json.html: a parser reading numbers as floats loses it."""
    body = f'{{"valueDecimal":{number}}}'
    read = load_json(body.encode(), what="the body")
    assert dumps(read, separators=(",", ":")) == body
    assert Decimal(str(read["valueDecimal"])) == Decimal(number)
    assert dumps(loads(dumps([read, "x", 2]))) == dumps([read, "x", 2])  # as the store keeps it


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
def test_a_body_in_utf_16_or_utf_32_is_refused_not_detected(encoding: str) -> None:
    """Pentest finding 2: ``json.loads`` on bytes detects UTF-16 and UTF-32 by itself, so a Consent
    a gateway could not read as UTF-8 was stored, and the bounds above (counted on UTF-8 bytes) did
    not hold. JSON between systems is UTF-8 (RFC 8259 8.1; FHIR http.html#mime-type)."""
    body = json.dumps({"resourceType": "Consent", "status": "active", "x": [1, True, None]}).encode(encoding)
    with pytest.raises(InvalidResource, match="not UTF-8"):
        load_json(body, what="the body", error=InvalidResource)


@pytest.mark.parametrize("body", [b'{"a":"\x00"}', b'{"a":1}\x00', b' \n {"note":"M\xc3\xbcller\x00"}'])
def test_a_raw_nul_byte_in_utf_8_is_refused_as_what_it_is(body: bytes) -> None:
    """Code review 7: a UTF-8 body holding a NUL byte was refused as "looks like UTF-16 or
    UTF-32"; JSON allows no control character unescaped (RFC 8259 7), and the adapter takes no
    U+0000 escaped either."""
    with pytest.raises(InvalidInput, match="a NUL byte") as refused:
        load_json(body, what="the body")
    assert "UTF-16" not in refused.value.diagnostics


def test_bytes_that_are_not_utf_8_are_refused() -> None:
    with pytest.raises(InvalidInput, match="not UTF-8"):
        load_json('{"note":"Müller"}'.encode("latin-1"), what="the body")
    with pytest.raises(InvalidInput, match="not UTF-8"):
        load_json(b'{"note":"\xed\xa0\x80"}', what="the body")  # a surrogate written as UTF-8 (CESU)


def test_a_utf_8_byte_order_mark_is_ignored_as_fhir_xml_ignores_it() -> None:
    """RFC 8259 8.1: a parser MAY ignore a byte order mark; libxml2 does on the FHIR XML side."""
    assert load_json(b'\xef\xbb\xbf{"note":"M\xc3\xbcller"}', what="the body") == {"note": "Müller"}
