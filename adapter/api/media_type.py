"""Media types and their parameters, each at most once: the Content-Type of a request or of a
body part (RFC 9110 8.3.1, 5.6.6) and a part's Content-Disposition (RFC 6266 4.1, RFC 7578 4.2),
read so that no other parser can read them otherwise.

Security review 3: where a parameter (``boundary``, ``name``, ``type``, ``charset``), a part's
header line or the Content-Type header itself was repeated, the adapter read the last and gateways
and WAFs commonly read the first, so a gateway checking an upload approved one patient while the
photo was filed under another. Whatever two parsers may read differently is refused (400,
AmbiguousRequest), as Go's ``mime.ParseMediaType`` refuses a duplicate parameter:

* a parameter named twice (names are case-insensitive);
* an RFC 2231 extended parameter (``name*=``, ``name*0=``): RFC 7578 4.2 forbids it in form-data,
  no STOW-RS client sends one, and some parsers decode it while others ignore it; except a
  Content-Disposition's ``filename*`` (once), which .NET's MultipartFormDataContent writes beside
  ``filename`` and which decides nothing here (no file name is read);
* a parameter that is not ``token=token`` or ``token="quoted-string"`` (an unterminated quote,
  a value followed by anything but ``;``, a parameter without ``=``): where it ends is each
  parser's guess;
* more than one Content-Type header field (RFC 9110 5.3: it is not a list).
"""

from __future__ import annotations

import re

from starlette.requests import Request

from adapter.errors import AmbiguousRequest

#: RFC 9110 5.6.2 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: A parameter name and its ``=`` (whitespace allowed around ``=`` as most parsers do).
_NAME = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*")
#: A token value: anything up to ``;`` or whitespace but a quote (RFC 2046 boundaries may hold
#: ``:``, ``=``, ``?``..., which clients send unquoted).
_VALUE = re.compile(r'[^;"\s]*')
#: RFC 9110 5.6.4 quoted-string, with quoted-pairs.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_OWS = " \t"
#: The one extended parameter taken (once): .NET's MultipartFormDataContent writes it beside
#: ``filename``, and the adapter reads no file name, so no two parsers can file a photo otherwise.
_FILENAME_STAR = "filename*"


def is_token(name: bytes | str) -> bool:
    """Is ``name`` an RFC 9110 token (what a header field name is)?"""
    text = name.decode("latin-1") if isinstance(name, bytes) else name
    return _TOKEN.fullmatch(text) is not None


def parse_parameters(value: str | bytes | None, field: str) -> tuple[str, dict[str, str]]:
    """The value of header field ``field`` (a media type, a disposition type) in lower case, and
    its parameters by lower-case name, their values unquoted.

    Raises:
        AmbiguousRequest: a parameter repeated, in RFC 2231 extended form, or malformed (module
            docstring).
    """
    text = (value.decode("latin-1") if isinstance(value, bytes) else value) or ""
    head, sep, rest = text.partition(";")
    params: dict[str, str] = {}
    pos, n = 0, len(rest)
    while sep and pos < n:
        while pos < n and rest[pos] in _OWS:
            pos += 1
        if pos < n and rest[pos] == ";":  # an empty parameter (RFC 9110 5.6.6 allows it)
            pos += 1
            continue
        if pos == n:
            break
        named = _NAME.match(rest, pos)
        if named is None:
            raise _malformed(field, "a parameter without a name and '='")
        name = named.group(1).lower()
        pos = named.end()
        quoted = _QUOTED.match(rest, pos)
        if quoted is not None:
            param = _QUOTED_PAIR.sub(r"\1", quoted.group(1))
            pos = quoted.end()
        else:
            token = _VALUE.match(rest, pos)
            param = token.group(0) if token else ""
            pos += len(param)
        while pos < n and rest[pos] in _OWS:
            pos += 1
        if pos < n and rest[pos] != ";":
            raise _malformed(field, f"the value of parameter '{name[:40]}' does not end where a parameter ends")
        pos += 1
        if "*" in name and not (name == _FILENAME_STAR and field == "Content-Disposition"):
            raise AmbiguousRequest(f"{field}: RFC 2231 extended parameters ({name[:40]}) are not taken")
        if name in params:
            # the last would win here and the first in other parsers (security review 3)
            raise AmbiguousRequest(f"{field} has parameter '{name[:40]}' more than once")
        params[name] = param
    return head.strip(_OWS).lower(), params


def _malformed(field: str, reason: str) -> AmbiguousRequest:
    return AmbiguousRequest(f"malformed {field}: {reason}")


def content_type(request: Request) -> str | None:
    """The request's one Content-Type header (None without one).

    Raises:
        AmbiguousRequest: more than one (RFC 9110 5.3: Content-Type is no list; which of two a gateway
            read is anybody's guess).
    """
    values = request.headers.getlist("content-type")
    if len(values) > 1:
        raise AmbiguousRequest("the request has more than one Content-Type header")
    return values[0] if values else None


__all__ = ["content_type", "is_token", "parse_parameters"]
