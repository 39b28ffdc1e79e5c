"""FHIR ``batch`` of reads (https://hl7.org/fhir/R4/http.html#transaction): ``POST /fhir`` with a
Bundle of type ``batch`` whose entries are GET requests (reads, vreads, histories, searches), or
HEAD and DELETE ones; answered with a ``batch-response`` Bundle, one entry per request, in order.

Each entry is served as the same request sent on its own would be, by this very application
(an in-process ASGI call through httpx, so routing, the decision, the views, the audit and the
metrics are the ones every GET gets): with the batch's ``X-Purpose-Of-Use``, the entry's
``ifNoneMatch`` and ``ifModifiedSince``, FHIR JSON (a batch answers resources, never
image bytes: a Binary comes as its JSON; an entry's ``_format=xml`` answer is read back into
JSON, and the batch-response as a whole is written in the format the batch negotiated), the caller's address (the audit names the real
client), and an ``X-Request-Id`` of the batch's id and the entry's index. Entries are
independent: one refused (403) or not found (404) carries its OperationOutcome in
``response.outcome`` and the others are answered. A HEAD entry is that GET without its body (200
and the ETag, no resource), and a DELETE one gets what a DELETE alone gets (405: the server
deletes nothing; the batch-response has no Allow header, the OperationOutcome says why), as the
entries of a batch are each processed as the interaction alone would be (http.html#transaction;
fhirrest review finding 5: both answered 400). Anything else (a write, an absolute URL, another
path) is refused in its own entry (400); a read of a type not served here gets the 404 it gets
alone: ingest goes in a ``transaction``.
"""

from __future__ import annotations

import http
import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

import httpx
from fastapi import Request

from adapter.api.deps import purpose_header
from adapter.api.fhir_xml import from_xml
from adapter.api.forwarded import forwarded_for_of
from adapter.api.headers import BREAK_GLASS_HEADER, overrode_said
from adapter.api.request_id import request_id_of
from adapter.errors import InvalidInput
from adapter.mapping.outcome import operation_outcome, refusal_coding
from adapter.refusals import RefusalCode

#: At most this many entries in one batch (each is a full request).
MAX_BATCH_ENTRIES = 100
#: The entries' answers of one batch, in bytes: a Binary comes as base64 JSON, so 30 reads of a
#: 19 MB image made a 2.6 KB request cost 2.7 GB. Entries after the answers reached it are not
#: read; each says so (too-costly), and the client asks for them in another batch.
MAX_BATCH_ANSWER_BYTES = 64 * 1024 * 1024
_RESPONSE_HEADERS = {"etag": "etag", "location": "location"}
#: What a FHIR resource type's name looks like (Patient, Observation)
_TYPE_NAME = re.compile(r"[A-Z][A-Za-z]{0,63}", re.ASCII)
#: The methods of a batch entry sent on as they are (Bundle.request.method): the reads, and
#: DELETE, which no route of this server serves (answered 405 as alone). Writes go in a transaction.
_SENT_ON = ("GET", "HEAD", "DELETE")
#: The methods a batch entry may be answered for (a DELETE's 405 names them, of its URL's Allow).
_ANSWERED = ("GET", "HEAD")


#: The refusal code (adapter.refusals) of an entry refused here, by its IssueType.
_REFUSALS = {"not-supported": RefusalCode.NOT_SUPPORTED, "too-costly": RefusalCode.TOO_COSTLY,
             "invalid": RefusalCode.INVALID_QUERY}


def _refused(index: int, why: str, *, status: str = "400 Bad Request", code: str = "not-supported") -> dict[str, Any]:
    return {"response": {"status": status,
                         "outcome": operation_outcome("error", code, why, [f"Bundle.entry[{index}].request"],
                                                      details=refusal_coding(_REFUSALS[code]))}}


def _target(entry: Any, types: tuple[str, ...]) -> str | None:
    """The relative URL an entry asks for (with one of _SENT_ON), or None when it is not a
    request this server answers in a batch."""
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict) or request.get("method") not in _SENT_ON:
        return None
    url = request.get("url")
    if not isinstance(url, str) or not url or url.startswith("/") or "://" in url or ".." in url:
        return None
    if not url.isprintable():  # a control character or lone surrogate makes no request URL (httpx InvalidURL)
        return None
    first = url.split("?", 1)[0].split("/", 1)[0]
    # a type not served here is asked for all the same, to get the answer it gets alone (404)
    return url if first in (*types, "metadata") or _TYPE_NAME.fullmatch(first) else None


async def process_batch(request: Request, bundle: dict[str, Any], types: tuple[str, ...],
                        accept: str = "application/fhir+json") -> tuple[dict[str, Any], bool, tuple[str, ...]]:
    """The batch-response Bundle, whether any entry was answered under break-glass and what
    break-glass overrode in answering them (each once); each entry is asked for as ``accept``
    (the batch's FHIR version)."""
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise InvalidInput("a batch needs entries", expression="Bundle.entry")
    if len(entries) > MAX_BATCH_ENTRIES:
        raise InvalidInput(f"a batch takes at most {MAX_BATCH_ENTRIES} entries", expression="Bundle.entry")
    purpose = purpose_header(request)  # every entry is sent with the batch's purpose of use
    forwarded = {"x-purpose-of-use": purpose} if purpose else {}
    address = forwarded_for_of(request.scope)  # a trusted proxy's: the entries come from its client too
    if address is not None:
        forwarded["x-forwarded-for"] = address
    batch_id = request_id_of(request.scope)[:48]
    client = (request.client.host, request.client.port) if request.client else ("127.0.0.1", 0)
    out: list[dict[str, Any]] = []
    glass = False
    overrode: dict[str, None] = {}  # in the order the entries said them
    transport = httpx.ASGITransport(app=request.app, client=client)
    answered = 0
    # the entries are answered as if sent alone, to this server as the batch was: their links
    # and fullUrls name the batch's scheme and host (ADAPTER_BASE_URL, when set, names its own)
    outer = f"{request.url.scheme}://{request.url.netloc}"
    async with httpx.AsyncClient(transport=transport, base_url=outer) as inner:
        for index, entry in enumerate(entries):
            if answered > MAX_BATCH_ANSWER_BYTES:
                out.append(_refused(index, f"not read: the answers of this batch passed {MAX_BATCH_ANSWER_BYTES} "
                                           "bytes; ask for it in another batch", status="422 Unprocessable Content",
                                    code="too-costly"))
                continue
            url = _target(entry, types)
            if url is None:
                out.append(_refused(index, "a batch here takes GET (HEAD, DELETE) requests with a URL relative to "
                                           "the FHIR base (Type/id, Type?params); post photos in a transaction"))
                continue
            headers = {**forwarded, "accept": accept, "x-request-id": f"{batch_id}.{index}"}
            if_none_match = entry["request"].get("ifNoneMatch")
            if isinstance(if_none_match, str):
                if not (if_none_match.isascii() and if_none_match.isprintable()):  # no header holds it
                    out.append(_refused(index, "ifNoneMatch takes an ETag, W/\"<version>\"", code="invalid"))
                    continue
                headers["if-none-match"] = if_none_match
            if "ifModifiedSince" in entry["request"]:
                since = _http_date(entry["request"]["ifModifiedSince"])
                if since is None:
                    out.append(_refused(index, "ifModifiedSince takes an instant, e.g. 2026-11-26T10:00:00Z",
                                        code="invalid"))
                    continue
                headers["if-modified-since"] = since
            answer = await inner.request(entry["request"]["method"], f"/fhir/{url}", headers=headers)
            answered += len(answer.content)
            glass = glass or BREAK_GLASS_HEADER in answer.headers
            overrode.update(dict.fromkeys(overrode_said(answer.headers.get(BREAK_GLASS_HEADER))))
            out.append(_entry(answer))
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}, glass, tuple(overrode)


def _http_date(instant: Any) -> str | None:
    """A FHIR instant (``request.ifModifiedSince``) as the HTTP-date of an If-Modified-Since
    (RFC 9110 5.6.7, whole seconds: a read's Last-Modified is one too); None when it is no instant."""
    if not isinstance(instant, str) or "T" not in instant:
        return None
    try:
        moment = datetime.fromisoformat(instant)
        if moment.tzinfo is None:
            return None
        return format_datetime(moment.astimezone(UTC), usegmt=True)
    except (ValueError, OverflowError):  # OverflowError: year 1 east of UTC, year 9999 west of it
        return None


def _entry(answer: httpx.Response) -> dict[str, Any]:
    response: dict[str, Any] = {"status": f"{answer.status_code} {http.HTTPStatus(answer.status_code).phrase}"}
    for header, element in _RESPONSE_HEADERS.items():
        if header in answer.headers:
            response[element] = answer.headers[header]
    body: Any = None
    ctype = answer.headers.get("content-type", "")
    if not answer.content:  # a HEAD's, a 304's
        body = None
    elif "json" in ctype:
        body = answer.json()
    elif "fhir+xml" in ctype:  # an entry's own _format=xml: the Bundle holds its JSON
        body = from_xml(answer.content, "5" if "fhirversion=5" in ctype.lower().replace(" ", "") else "4")
    entry: dict[str, Any] = {}
    if answer.status_code < 300 and isinstance(body, dict) and "resourceType" in body:
        entry["resource"] = body
        last_updated = (body.get("meta") or {}).get("lastUpdated") if isinstance(body.get("meta"), dict) else None
        if isinstance(last_updated, str):
            response["lastModified"] = last_updated
    elif isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        response["outcome"] = body
        if answer.status_code == 405 and "allow" in answer.headers:  # no header of an entry carries Allow
            # what an entry may do with the URL: not the writes it takes alone, which a batch refuses
            allowed = [m for m in (m.strip() for m in answer.headers["allow"].split(",")) if m in _ANSWERED]
            for issue in body.get("issue") or []:
                issue["diagnostics"] = f"{issue.get('diagnostics') or 'Method Not Allowed'}; in a batch this URL " \
                    f"takes {', '.join(allowed) or 'no request'}"
    if "lastModified" not in response and answer.status_code < 300 and "last-modified" in answer.headers:
        # a HEAD's: no resource to read it from, its Last-Modified as alone (none where the view shows none)
        response["lastModified"] = parsedate_to_datetime(answer.headers["last-modified"]) \
            .astimezone(UTC).isoformat().replace("+00:00", "Z")
    entry["response"] = response
    return entry


__all__ = ["MAX_BATCH_ANSWER_BYTES", "MAX_BATCH_ENTRIES", "process_batch"]
