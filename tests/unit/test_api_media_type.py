"""Parameters of Content-Type and Content-Disposition (RFC 9110 5.6.6, RFC 6266 4.1), each at
most once: security review finding 3 (a repeated ``boundary`` or ``name`` read last here and first
by a gateway let the gateway approve one patient while the photo was filed under another)."""

from __future__ import annotations

import pytest

from adapter.api.media_type import parse_parameters
from adapter.errors import InvalidInput

pytestmark = pytest.mark.unit


def test_type_and_parameters() -> None:
    assert parse_parameters('Multipart/Related; Type="application/dicom"; boundary=b0und;start="<a@b>"',
                            "Content-Type") == ("multipart/related", {
                                "type": "application/dicom", "boundary": "b0und", "start": "<a@b>"})
    assert parse_parameters(b'form-data; name="me\\"ta;data"; filename="x.jpg"', "Content-Disposition") == (
        "form-data", {"name": 'me"ta;data', "filename": "x.jpg"})
    assert parse_parameters("image/jpeg", "Content-Type") == ("image/jpeg", {})
    assert parse_parameters(" text/plain ;; charset=utf-8 ; ", "Content-Type") == ("text/plain", {"charset": "utf-8"})
    assert parse_parameters("", "Content-Type") == ("", {})


@pytest.mark.parametrize("value,name", [
    ("multipart/form-data; boundary=aaaa; boundary=bbbb", "boundary"),
    ('multipart/form-data; boundary="aaaa"; BOUNDARY=bbbb', "boundary"),
    ('multipart/related; type="application/dicom"; type="application/dicom+json"; boundary=x', "type"),
    ('multipart/related; type="application/dicom"; start="<a>"; start="<b>"; boundary=x', "start"),
    ('multipart/related; start-info="a"; start-info="b"; boundary=x', "start-info"),
    ("application/fhir+json; charset=utf-8; charset=iso-8859-1", "charset"),
    ('form-data; name="metadata"; name="x1"', "name"),
    ('form-data; name="file"; filename="a.jpg"; filename="b.jpg"', "filename"),
])
def test_a_repeated_parameter_is_refused(value: str, name: str) -> None:
    with pytest.raises(InvalidInput, match=f"parameter '{name}' more than once"):
        parse_parameters(value, "Content-Type")


@pytest.mark.parametrize("value", [
    "form-data; name*=utf-8''metadata",               # RFC 2231 extended: read by some parsers only
    'form-data; name="x"; name*=utf-8\'\'metadata',
    'form-data; name*0="meta"; name*1="data"',
    'form-data; name="file"; filename*0="a.jpg"',
    'form-data; name="file"; filename="a.jpg"; filename*=utf-8\'\'a.jpg; filename*=utf-8\'\'b.jpg',
])
def test_an_extended_parameter_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="RFC 2231|more than once"):
        parse_parameters(value, "Content-Disposition")


def test_a_dotnet_filename_star_beside_filename_is_taken() -> None:
    """.NET's MultipartFormDataContent.Add(content, name, fileName) writes ``filename`` and
    ``filename*`` (RFC 5987) both, as many integration engines built on it send. The adapter reads
    no file name, so the one extended parameter a client commonly sends is taken, once; ``name*``,
    which decides the part, is not."""
    assert parse_parameters("form-data; name=file; filename=wound.jpg; filename*=utf-8''wound.jpg",
                            "Content-Disposition") == ("form-data", {"name": "file", "filename": "wound.jpg",
                                                                     "filename*": "utf-8''wound.jpg"})
    with pytest.raises(InvalidInput, match="RFC 2231"):
        parse_parameters("form-data; name*=utf-8''file; filename*=utf-8''wound.jpg", "Content-Disposition")
    with pytest.raises(InvalidInput, match="RFC 2231"):
        parse_parameters("image/jpeg; filename*=utf-8''wound.jpg", "Content-Type")


@pytest.mark.parametrize("value", [
    'form-data; name="metadata',                       # quoted string without its end
    'form-data; name="metadata"x; name="x2"',          # something after a quoted string
    "form-data; name",                                 # a parameter without "="
    "form-data; =metadata",
    "multipart/form-data; boundary=a, multipart/form-data; boundary=b",  # two values joined
    'form-data; name=meta"data',
])
def test_a_malformed_parameter_is_refused(value: str) -> None:
    with pytest.raises(InvalidInput, match="malformed"):
        parse_parameters(value, "Content-Disposition")
