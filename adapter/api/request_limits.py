"""Bounds on what a client can make the HTTP server hold: 408 Request Timeout (RFC 9110
§15.5.9) for a client that stops sending part-way through a request, 431 Request Header Fields
Too Large (RFC 6585 §5) for a header without end, and a FHIR OperationOutcome (not uvicorn's plain
text) for a request that is not HTTP/1.1 at all.

uvicorn itself times out only the wait between requests of a kept-alive connection, and keeps a
request header in memory however long it grows (161 MB were taken in one test before the
connection broke). A connection that never sends a byte, a header sent a byte at a time or
without end, or an upload that stops half-way (a phone losing its network, or a "slowloris"
client doing it on purpose) would each hold a socket, memory and the body's reader with no
end. These bounds close that, as a reverse proxy's would (nginx's ``client_header_timeout``,
``large_client_header_buffers`` and ``client_body_timeout``):

* :class:`BoundedHttpProtocol` (uvicorn's httptools protocol): a request's header must be whole
  within ``ADAPTER_HTTP_HEADER_TIMEOUT``, counted from the connection's opening for its first
  request and from the first byte for a later one, or the request is answered 408 and the
  connection closed (a new connection that sent nothing is closed without an answer); and it
  must be at most :data:`MAX_HEADER_BYTES`, or it is answered 431 and the connection closed.
  It also bounds the other direction (nginx's ``send_timeout``): a client that reads nothing of
  its answer for ``ADAPTER_HTTP_BODY_TIMEOUT`` loses the connection, and the answer it held in
  memory; and a request answered before its body was read (a refusal) has that long for the
  rest of the body to arrive (and be dropped) before the connection closes.
* **How many** (``ADAPTER_HTTP_MAX_CONNECTIONS``, nginx's ``worker_connections``): when a new
  connection finds them all held, the one that needs its slot least is let go for it
  (:meth:`BoundedHttpProtocol.eviction_rank`): first one answered already, then the one idle
  longest between requests (closed without an answer, as nginx reuses an idle keep-alive
  connection when it runs out), then the one whose request header has been arriving longest,
  then the request body arriving slowest (answered 503 with ``Retry-After``; nothing of it is
  stored). A request being answered is never let go; when every connection holds one, the new
  connection is answered 503 with ``Retry-After`` at once and closed, before it has sent
  anything, so that its descriptor is given back (each slow upload holds one, and at the common
  limit of 1,024 they took the DICOM SCP's). Retest 1 finding 1: bodies from 8 addresses, each
  just above the minimum rate below, held every slot for hours and /health answered 503; now
  they must arrive faster than the uploads they would push out, which ends them soon. uvicorn's
  ``limit_concurrency`` answers only once a request's header has arrived, a header timeout
  later for a silent client, and in plain text; so it is not used.
* **How many from one address** (``ADAPTER_HTTP_MAX_CONNECTIONS_PER_ADDRESS``, nginx's
  ``limit_conn`` per ``$binary_remote_addr``): one more from a peer address that holds as many is
  answered 503 on arrival and closed alike, so that one address cannot hold every connection
  (pentest finding 1: 256 slow bodies from one host took them all). IPv6 peers are counted per
  /64 (:func:`address_key`): a host is given a whole /64 and may take a new address of it for each
  connection. A proxy of ``ADAPTER_TRUSTED_PROXIES`` carries every client's connections from its
  one address: it is not bounded so (it bounds its clients itself).
* :class:`BodyTimeoutMiddleware` (``ADAPTER_HTTP_BODY_TIMEOUT``): while a route reads a request
  body, each wait for the next part of it is bounded (the time between two reads, not the whole
  upload: a large photo on a slow line is fine while it keeps moving). A wait past the bound
  raises :class:`~adapter.errors.RequestTimeout`: the route stores nothing and the client gets a
  408 OperationOutcome with ``Connection: close``. A body that keeps moving a byte at a time is
  bounded too (nginx has no such bound; Apache's ``mod_reqtimeout`` ``MinRate``): once its waits
  add up to the body timeout, they may add up to no more than the body timeout and one second
  for each ``ADAPTER_HTTP_BODY_MIN_RATE`` bytes received (the time the client is waited for, not
  the time the route works), else the same 408 (pentest finding 1: 256 bodies sending a byte every
  20 s held every connection for as long as they liked).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import logging
import time
import uuid
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from adapter.api.headers import OUTCOME_MEDIA_TYPE, HttpMiddleware, editing_response_headers, outcome_body
from adapter.api.request_id import HEADER as REQUEST_ID_HEADER
from adapter.api.request_id import request_id_of
from adapter.errors import PayloadTooLarge, RequestTimeout
from adapter.model.network import Network, is_in
from adapter.refusals import RefusalCode
from adapter.text import is_digits

log = logging.getLogger("adapter.api")

#: The request line and header fields of one request, in bytes: far above what any client of
#: the adapter sends (a bearer token is a few KiB), and what a reverse proxy would allow.
MAX_HEADER_BYTES = 64 * 1024

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
            501: b"Not Implemented", 503: b"Service Unavailable"}


def _answer(status: int, code: str, refusal: RefusalCode, diagnostics: str, extra: bytes = b"") -> bytes:
    """A whole HTTP/1.1 answer carrying an OperationOutcome with its refusal code (as every
    refusal the app answers: docs/fhir-api.md "Refusal codes"), after which the connection closes."""
    body = outcome_body(code, diagnostics, refusal)
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\n"
            b"cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n"
            b"%scontent-length: %d\r\n\r\n" % (status, _REASONS[status], OUTCOME_MEDIA_TYPE, extra, len(body))) + body


_RETRY = b"retry-after: 5\r\n"
_HEADER_TOO_LARGE = _answer(431, "too-long", RefusalCode.PAYLOAD_TOO_LARGE,
                            f"the request header is larger than {MAX_HEADER_BYTES} bytes")
_NOT_HTTP = _answer(400, "invalid", RefusalCode.INVALID_QUERY, "the request is not valid HTTP/1.1")
_UNKNOWN_CODING = _answer(501, "not-supported", RefusalCode.NOT_SUPPORTED,
                          "the only transfer coding taken is chunked (RFC 9112 6.1)")
_TOO_MANY_CONNECTIONS = _answer(503, "transient", RefusalCode.TRANSIENT, "the server holds as many connections as "
                                "it takes, each with a request being answered; try again shortly", _RETRY)
_TOO_MANY_FROM_ADDRESS = _answer(503, "transient", RefusalCode.TRANSIENT, "the server holds as many connections "
                                 "from this address as it takes from one; close some, or try again shortly", _RETRY)
_LET_GO = _answer(503, "transient", RefusalCode.TRANSIENT, "the server held as many connections as it takes, and "
                  "this request was arriving the slowest of them: it was let go for a new connection, and nothing of "
                  "it was stored; send it again shortly", _RETRY)
_NO_HOST = _answer(400, "invalid", RefusalCode.INVALID_QUERY,
                   "an HTTP/1.1 request carries a Host header (RFC 9112 3.2)")
_TWO_HOSTS = _answer(400, "invalid", RefusalCode.AMBIGUOUS_REQUEST,
                     "a request carries exactly one Host header (RFC 9112 3.2): which of two names the target is "
                     "anybody's guess")


def with_request_id(answer: bytes, request_id: str) -> bytes:
    """``answer`` (one of :func:`_answer`'s) naming ``request_id`` (a plain token:
    adapter.api.request_id) in ``X-Request-Id`` after its status line: every answer names the
    request it answers, these too, which the protocol sends before (or instead of) the app's."""
    status_line, _, rest = answer.partition(b"\r\n")
    return b"%s\r\n%s: %s\r\n%s" % (status_line, REQUEST_ID_HEADER, request_id.encode("ascii"), rest)


@functools.cache
def header_timeout_answer(seconds: float) -> bytes:
    """The 408 of a request header that did not arrive within ``seconds``."""
    return _answer(408, "timeout", RefusalCode.REQUEST_TIMEOUT,
                   f"the request header did not arrive within {seconds:g} s")


def address_key(peer: str) -> str:
    """What ADAPTER_HTTP_MAX_CONNECTIONS_PER_ADDRESS counts ``peer`` as: an IPv4 address itself
    (an IPv4-mapped IPv6 one too, as a dual-stack socket gives it), an IPv6 address its /64 (the
    least a host is given: RFC 7421; any address of it is the same client's), anything else
    (a Unix socket's peer) as given."""
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return peer
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


#: The request state key (``request.state``) of a request let go for a newer connection: the
#: client got the 503 :data:`_LET_GO`; the route's answer is dropped, and logged as that 503.
LET_GO_STATE = "adapter_let_go"

#: Seconds a request body must have been arriving before its rate is measured: until then it is
#: let go only after every body measured (a new upload has sent little yet, however fast its line).
RATE_MEASURED_AFTER = 2.0
#: Connections let go for newer ones whose answer may still be read (each held until its client has
#: stopped sending, for at most the body timeout: BoundedHttpProtocol._send_and_close) beyond
#: ADAPTER_HTTP_MAX_CONNECTIONS; past them the oldest is closed at once. Their descriptors fit in
#: the 128 adapter.descriptors keeps besides the connections.
LINGERING_LET_GO = 8
# what a connection is doing, from the least need of its slot (eviction_rank)
_ANSWERED, _IDLE, _HEADER_ARRIVING, _BODY_ARRIVING, _BODY_BEGUN = range(5)


_last_full_logged = -3600.0
_last_address_full_logged = -3600.0
_last_let_go_logged = -3600.0
_opened = itertools.count()  # the order connections opened in: the older first among equals


class _Refused(Exception):
    """Raised from a parser callback to stop parsing; uvicorn then calls send_400_response,
    which sends the answer already chosen."""


class BoundedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on a request header's arrival and size (module
    docstring)."""

    def __init__(self, *args: Any, header_timeout: float, body_timeout: float, max_connections: int | None = None,
                 max_per_address: int | None = None, unbounded_peers: tuple[Network, ...] = (),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.unbounded_peers = list(unbounded_peers)
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None  # the client reads nothing of its answer
        self._linger_timer: asyncio.TimerHandle | None = None  # answered, the body still coming
        self._message_done = False  # the current request arrived whole
        self._begun = False  # a request's first byte came, its header is not whole yet
        self._header_bytes = 0  # bytes of reads that all went into the header not yet whole
        self._piece_bytes = 0  # bytes of its request line and fields the parser has handed over
        self._refusal: bytes | None = None
        self._discarding = False  # refused and half-closed: what still comes is read and dropped
        self.address_key: str | None = None  # what the limit per address counts the peer as
        self._idle_since = 0.0  # since when no request is under way (opened, or last answered)
        self._request_began = 0.0  # when the current request's first byte came
        self._body_began = 0.0  # when the current request's header was whole
        self._body_bytes = 0  # bytes of the current request's body received
        self._order = next(_opened)
        self.let_go = False  # its slot given to a newer connection: no longer counted as holding one

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        if self.client is not None:
            self.address_key = address_key(self.client[0])
        if self._over_address_limit():  # before a slot is made for it: it would not take it
            global _last_address_full_logged
            if self.loop.time() - _last_address_full_logged > 60:
                _last_address_full_logged = self.loop.time()
                log.warning("HTTP connections from one address answered 503 on arrival: it holds %d "
                            "(ADAPTER_HTTP_MAX_CONNECTIONS_PER_ADDRESS)", self.max_per_address)
            transport.write(with_request_id(_TOO_MANY_FROM_ADDRESS, uuid.uuid4().hex))
            transport.close()
            return
        if (self.max_connections is not None and self._held_slots() > self.max_connections
                and not self._make_room()):
            # ADAPTER_HTTP_MAX_CONNECTIONS, each with a request being answered: one more is
            # answered and let go at once, so that slow clients cannot take every file
            # descriptor (review 4: the DICOM SCP lost its own)
            global _last_full_logged
            if self.loop.time() - _last_full_logged > 60:  # a flood logs once a minute
                _last_full_logged = self.loop.time()
                log.warning("HTTP connections answered 503 on arrival: %d are open, each with a request being "
                            "answered (ADAPTER_HTTP_MAX_CONNECTIONS)", self.max_connections)
            transport.write(with_request_id(_TOO_MANY_CONNECTIONS, uuid.uuid4().hex))
            transport.close()  # after the answer is written; the descriptor is given back then
            return
        # a new connection's first request must come within the same bound (as nginx's
        # client_header_timeout): one that never sends a byte is closed, without an answer
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _over_address_limit(self) -> bool:
        """Whether the peer (its /64, for IPv6: :func:`address_key`) holds more than
        ``max_per_address`` connections, this one counted (never for a peer of
        ``unbounded_peers``, the trusted proxies, nor one of no IP address)."""
        if self.max_per_address is None or self.client is None or self.address_key is None:
            return False
        if is_in(self.client[0], self.unbounded_peers):
            return False
        held = 0
        for other in self.connections:
            if getattr(other, "address_key", None) == self.address_key:
                held += 1
                if held > self.max_per_address:
                    return True
        return False

    def _held_slots(self) -> int:
        """Connections holding a slot of ADAPTER_HTTP_MAX_CONNECTIONS, this one counted: neither
        let go for a newer one nor closing (one answered 503 on arrival, say)."""
        return sum(1 for other in self.connections
                   if not getattr(other, "let_go", False) and not other.transport.is_closing())

    def _make_room(self) -> bool:
        """Let go the connection that needs its slot least (:meth:`eviction_rank`) for this new
        one; False when every other has a request being answered."""
        now = self.loop.time()
        victim: BoundedHttpProtocol | None = None
        least: tuple[int, float, int] | None = None
        for other in self.connections:
            if other is self or not isinstance(other, BoundedHttpProtocol):
                continue
            rank = other.eviction_rank(now)
            if rank is not None and (least is None or rank < least):
                victim, least = other, rank
        if victim is None or least is None:
            return False
        if least[0] >= _HEADER_ARRIVING:
            global _last_let_go_logged
            if now - _last_let_go_logged > 60:
                _last_let_go_logged = now
                log.warning("every HTTP connection was taken (ADAPTER_HTTP_MAX_CONNECTIONS=%d): the one arriving "
                            "slowest was answered 503 and let go for a new one", self.max_connections)
            victim.let_go = True
            victim._send_and_close(_LET_GO, cut_short=True)
            lingering = sorted((other for other in self.connections if isinstance(other, BoundedHttpProtocol)
                                and other.let_go and not other.transport.is_closing()), key=lambda c: c._order)
            for other in lingering[:max(0, len(lingering) - LINGERING_LET_GO)]:
                other.transport.close()
        else:  # answered already, or idle between requests: closed without a word (RFC 9112 9.3)
            victim.let_go = True
            victim.transport.close()
        return True

    def eviction_rank(self, now: float) -> tuple[int, float, int] | None:
        """How little this connection needs its slot, the least first; None when it must keep
        it (its request is being answered, the body it is sending waits on the server, or it
        is closing already). In order: a request answered whose refused body is still being
        dropped; idle between requests (or since it opened), the longest first; a request header
        arriving, the oldest first; a request body arriving, the slowest first (bytes a second,
        once it has been arriving RATE_MEASURED_AFTER seconds); a body begun since, the one with
        the fewest bytes first."""
        if self.let_go or self.transport.is_closing():
            return None
        if self._discarding:
            return (_ANSWERED, self._idle_since, self._order)
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if self._linger_timer is not None:
                return (_ANSWERED, self._idle_since, self._order)
            if self._begun:
                return (_HEADER_ARRIVING, self._request_began, self._order)
            return (_IDLE, self._idle_since, self._order)
        if self._message_done or cycle.response_started or self.flow.read_paused or self.pipeline:
            return None
        arriving = now - self._body_began
        if arriving < RATE_MEASURED_AFTER:
            return (_BODY_BEGUN, self._body_bytes, self._order)
        return (_BODY_ARRIVING, self._body_bytes / arriving, self._order)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        counting = self._begun
        super().data_received(data)  # parse errors and refusals: send_400_response
        if counting and self._begun and not self.transport.is_closing():
            # all of this read went into a header that is still not whole (the parser keeps it)
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self._send_and_close(_HEADER_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._begun = True
        self._message_done = False
        self._request_began = self.loop.time()
        if self._header_timer is None:  # a later request of a kept-alive connection
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        self._begun = False
        self._header_bytes = self._piece_bytes = 0
        hosts = sum(1 for name, _ in self.headers if name == b"host")
        if hosts > 1 or (hosts == 0 and self.parser.get_http_version() == "1.1"):
            # RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, and to
            # any request with more than one (which of two names the target is anybody's guess)
            self._refusal = _TWO_HOSTS if hosts > 1 else _NO_HOST
            raise _Refused
        codings = [c.strip().lower() for name, value in self.headers if name == b"transfer-encoding"
                   for c in value.split(b",") if c.strip()]
        if codings and codings != [b"chunked"]:
            # RFC 9112 6.1: a transfer coding the server does not understand: 501 (httptools read
            # "gzip, chunked" as plain chunked, handing the route compressed bytes as the body)
            self._refusal = _UNKNOWN_CODING
            raise _Refused
        self._body_began = self.loop.time()
        self._body_bytes = 0
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._message_done = True
        self._linger_timer = _cancel(self._linger_timer)
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()
        if not self._message_done and not self.transport.is_closing():
            # answered before its body was read (a refusal): what is left of the body is read
            # and dropped, for at most the body timeout, then the connection closes (nginx's
            # lingering_time); one more byte now and then kept it open for ever
            self._linger_timer = self.loop.call_later(self.body_timeout, self._close)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._watch_reading(self.transport.get_write_buffer_size())

    def resume_writing(self) -> None:
        self._send_timer = _cancel(self._send_timer)
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        self._send_timer = _cancel(self._send_timer)
        self._linger_timer = _cancel(self._linger_timer)
        super().connection_lost(exc)

    def _watch_reading(self, unsent: int) -> None:
        self._send_timer = self.loop.call_later(self.body_timeout, self._check_reading, unsent)

    def _check_reading(self, unsent_before: int) -> None:
        """A body timeout after the answer's buffer filled (or after the last look): if the
        client read some of it meanwhile (less is waiting to be sent), look again a body timeout
        later; if it read nothing (nginx's send_timeout: between two successful writes), the
        answer, held in memory until it is read, and the connection are let go. A slow reader
        is never cut off; transport.resume_writing comes only once the buffer has nearly
        emptied, which a large answer read slowly reaches only at its end."""
        self._send_timer = None
        unsent = self.transport.get_write_buffer_size()
        if unsent < unsent_before:
            self._watch_reading(unsent)
            return
        log.info("a client read nothing of its answer for %g s: connection closed", self.body_timeout)
        self.transport.abort()

    def _close(self) -> None:
        self._linger_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to what the parser refused (plain text there): an OperationOutcome,
        or the refusal a bound chose."""
        refusal, self._refusal = self._refusal, None
        self._send_and_close(refusal or _NOT_HTTP)

    def _count(self, size: int) -> None:
        # pieces the parser completed within one read (a long header spread over reads is
        # counted in data_received before the parser hands it over)
        self._piece_bytes += size
        if self._piece_bytes > MAX_HEADER_BYTES:
            self._refusal = _HEADER_TOO_LARGE
            raise _Refused

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.cycle is not None and not self.cycle.response_complete and not self.transport.is_closing():
            # a pipelined request waits while the one before it is answered (uvicorn stops
            # reading meanwhile): the wait is the server's, and an answer now would cut into that one
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)
            return
        if self._begun:
            self._send_and_close(header_timeout_answer(self.header_timeout))
        elif not self.transport.is_closing():
            self.transport.close()

    def _send_and_close(self, answer: bytes, *, cut_short: bool = False) -> None:
        """Send ``answer`` and close the connection the way RFC 9112 9.6 asks: the sending side
        first (FIN after the answer), then, while the client may still be sending what the answer
        cut short, its bytes are read and dropped until it closes, for at most the body timeout
        (nginx's lingering close). Closed at once, the connection would answer those bytes with a
        reset, and a reset can make the client lose the answer it has not read yet.
        ``cut_short``: the request under way, its answer not begun, is let go: the route reading
        its body sees the client gone (and stores nothing), and whatever it answers is dropped."""
        self._cancel_header_timer()
        if self.transport.is_closing():
            return
        if cut_short and self.cycle is not None and not self.cycle.response_started:
            # the route sees its client gone; its (dropped) answer and the access log say why
            self.cycle.scope.setdefault("state", {})[LET_GO_STATE] = True
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        # a request the app took names the id the app gave it (the access log's); else a new one
        taken = cut_short and self.cycle is not None
        request_id = request_id_of(dict(self.cycle.scope)) if taken and self.cycle is not None else uuid.uuid4().hex
        self.transport.write(with_request_id(answer, request_id))
        answering = self.cycle is not None and not self.cycle.response_complete and not self.cycle.disconnected
        if answering or not self.transport.can_write_eof():
            self.transport.close()  # an answer of the request before is still being sent
            return
        self._discarding = True
        self.transport.write_eof()
        self._linger_timer = _cancel(self._linger_timer)
        self._linger_timer = self.loop.call_later(self.body_timeout, self._close)


def _cancel(timer: asyncio.TimerHandle | None) -> asyncio.TimerHandle | None:
    """Cancel ``timer`` (if any); None, to put in its place."""
    if timer is not None:
        timer.cancel()
    return None


def bounded_http_protocol(header_timeout: float, body_timeout: float, max_connections: int | None = None,
                          max_per_address: int | None = None, unbounded_peers: tuple[Network, ...] = ()) -> Any:
    """The protocol class to give uvicorn (``Config(http=...)``); a partial, so it pickles into
    the worker processes of ``ADAPTER_HTTP_WORKERS`` > 1. ``unbounded_peers``: the addresses
    ``max_per_address`` does not apply to (the trusted proxies)."""
    return functools.partial(BoundedHttpProtocol, header_timeout=header_timeout, body_timeout=body_timeout,
                             max_connections=max_connections, max_per_address=max_per_address,
                             unbounded_peers=unbounded_peers)


def refuse_declared_over(request: Request, limit: int, message: str) -> None:
    """PayloadTooLarge (413) with ``message`` when the request's Content-Length declares more
    than ``limit`` bytes: refused before any of the body is read, and before uvicorn sends a
    ``100 Continue`` for it. A body without one is bounded as it is read."""
    declared = request.headers.get("content-length")
    if declared and is_digits(declared) and (len(declared) > 18 or int(declared) > limit):
        raise PayloadTooLarge(message)


class BodyTimeoutMiddleware(HttpMiddleware):
    """Bounds each wait for the next part of a request body, and their sum by the body's
    minimum rate (module docstring). Only while the body is incomplete: afterwards ``receive``
    waits for a disconnect (a streamed answer listens for one), unbounded as before."""

    def __init__(self, app: ASGIApp, *, seconds: float, min_rate: int | None = None) -> None:
        super().__init__(app)
        self.seconds = seconds
        self.min_rate = min_rate

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = {"body_done": False, "timed_out": False}
        waited = 0.0  # seconds spent waiting for the body (not the route's own)
        received = 0  # bytes of it received

        async def _receive() -> Message:
            nonlocal waited, received
            if state["body_done"]:
                return await receive()
            allowed = self.seconds
            if self.min_rate is not None:
                allowed = min(allowed, self.seconds + received / self.min_rate - waited)
            began = time.monotonic()
            try:
                async with asyncio.timeout(max(0.0, allowed)):  # no task per wait, unlike wait_for
                    message = await receive()
            except TimeoutError:
                state["timed_out"] = True
                if allowed < self.seconds:
                    raise RequestTimeout(
                        f"the request body came slower than {self.min_rate} bytes a second on average once "
                        f"{self.seconds:g} s of waiting for it were over (it keeps moving, too slowly); nothing was "
                        "stored") from None
                raise RequestTimeout(
                    f"the request body stopped arriving: nothing for {self.seconds:g} s; nothing was stored") from None
            waited += time.monotonic() - began
            received += len(message.get("body", b""))
            if message.get("type") != "http.request" or not message.get("more_body", False):
                state["body_done"] = True
            return message

        def _close(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
            if not state["timed_out"]:
                return headers
            # the rest of the body may still come: this connection carries no other request
            return [*(h for h in headers if h[0].lower() != b"connection"), (b"connection", b"close")]

        await self.app(scope, _receive, editing_response_headers(send, _close))
