"""Log records made safe to keep: an exception is logged by where it happened, never by what
its message says.

An exception's message quotes what it failed on: ``Invalid isoformat string: '<a stored
value>'``, a database driver's error with the statement's parameters (a patient identifier),
pydicom's ``Invalid value for VR PN: '<a name>'``. The traceback Python's logging prints ends
with that message (and with each chained exception's), so an unexpected error would write
patient data into a log kept for years. :class:`SafeExceptions` sits on the handlers of the
root logger (and uvicorn's loggers propagate to it) and renders ``exc_info`` as the frames
(file, line, function, source line: code only) and the exception types, chained ones included.
The bug is found from that; the values are in the database the request read.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from datetime import UTC, datetime
from types import TracebackType

#: How many chained exceptions (``__cause__``/``__context__``) are followed.
MAX_CHAIN = 8


def _types_and_frames(exc: BaseException | None, tb: TracebackType | None) -> list[str]:
    chain: list[tuple[BaseException | None, TracebackType | None]] = []
    seen: set[int] = set()
    current, current_tb = exc, tb
    while current is not None and id(current) not in seen and len(chain) < MAX_CHAIN:
        seen.add(id(current))
        chain.append((current, current_tb))
        nxt = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
        current, current_tb = nxt, nxt.__traceback__ if nxt is not None else None
    lines: list[str] = []
    for i, (link, link_tb) in enumerate(reversed(chain)):
        if i:
            lines.append("\nthen, while handling it or caused by it:\n")
        lines.append("Traceback (most recent call last; exception messages are not logged):\n")
        lines.extend(traceback.format_list(traceback.extract_tb(link_tb)))
        kind = type(link)
        lines.append(f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ != "builtins" else kind.__qualname__)
    return lines


def exception_without_messages(exc_info: tuple[type[BaseException], BaseException, TracebackType | None]) -> str:
    """``exc_info`` as a traceback whose every exception is named by its type only."""
    if exc_info[1] is None:
        return exc_info[0].__qualname__
    return "".join(_types_and_frames(exc_info[1], exc_info[2])).rstrip("\n")


class SafeExceptions(logging.Filter):
    """A handler filter: the record's exception is pre-rendered without messages (the
    formatter uses ``exc_text`` when it is set), whichever logger the record comes from."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = exception_without_messages(record.exc_info)
        return True


#: Control characters a log line must not carry as they are: a line break forges a line, an
#: escape sequence rewrites a terminal (tab aside).
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class EscapedControls(logging.Filter):
    """A handler filter: the message of a record from a library's logger (pydicom quoting a DICOM
    value: a SpecificCharacterSet of CR LF and a forged line, over C-STORE or STOW-RS, security
    review 6) has its control characters written as escapes (``\\x0d``), so one record is one
    line, as the adapter's own are (they quote values with ``!r``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("adapter"):
            text = record.getMessage()
            if _CONTROLS.search(text):
                record.msg, record.args = _CONTROLS.sub(lambda m: f"\\x{ord(m.group()):02x}", text), None
        return True


def make_exceptions_safe(logger: logging.Logger | None = None) -> None:
    """Put :class:`SafeExceptions` and :class:`EscapedControls` on every handler of ``logger``
    (the root logger); idempotent."""
    for handler in (logger or logging.getLogger()).handlers:
        if not any(isinstance(f, SafeExceptions) for f in handler.filters):
            handler.addFilter(SafeExceptions())
        if not any(isinstance(f, EscapedControls) for f in handler.filters):
            handler.addFilter(EscapedControls())


class OneLineWarnings(logging.Filter):
    """A Python warning logged by ``logging.captureWarnings`` (the ``py.warnings`` logger) as one
    line: ``file:line: Category: message``, without the source line ``warnings.formatwarning``
    appends (code, and a second line in a text log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        first = text.splitlines()[0] if text else text
        record.msg, record.args = first, None
        return True


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line (``ADAPTER_LOG_FORMAT=json``, for a log
    collector): ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message`` and,
    when the record has one, ``exception``, rendered as :class:`SafeExceptions` renders it (the
    filter has set ``exc_text`` by then: frames and types, no messages)."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": utc_time(record),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info and record.exc_info[0] is not None:
            out["exception"] = record.exc_text or exception_without_messages(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def utc_time(record: logging.LogRecord) -> str:
    """A record's instant in UTC, ISO 8601 with its offset, to the millisecond
    (``2026-11-28T23:35:26.864+00:00``): the text and JSON formats alike."""
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    """``ADAPTER_LOG_FORMAT=text``: ``<time> <LEVEL> <logger>: <message>``, the time in UTC with
    its offset (:func:`utc_time`), as the JSON format, the audit export and /health/ready give
    theirs. The host's local time without an offset made an hour of log ambiguous at the autumn
    DST change, and its join with the audit trail needed the host's zone (ops review 7)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return utc_time(record)


#: What uvicorn logs at ERROR when requests under way outlive the graceful shutdown's timeout.
_GRACEFUL_SHUTDOWN_EXCEEDED = "timeout graceful shutdown exceeded"


class RoutineStopAsWarning(logging.Filter):
    """On ``uvicorn.error``: its "Cancel N running task(s), timeout graceful shutdown exceeded",
    an ERROR, lowered to WARNING. A stop (a deploy, docker stop) with one slow upload under way
    cancels it after ADAPTER_HTTP_BODY_TIMEOUT, as it is meant to, and the adapter's own WARNING
    says so (answered 503): an alert on ERROR lines must not page for it (ops review 6)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and _GRACEFUL_SHUTDOWN_EXCEEDED in str(record.msg):
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return True


__all__ = ["EscapedControls", "JsonFormatter", "OneLineWarnings", "RoutineStopAsWarning", "SafeExceptions", "TextFormatter",
           "exception_without_messages", "make_exceptions_safe", "utc_time"]
