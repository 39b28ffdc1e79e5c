"""pynetdicom's log records made safe to keep.

pynetdicom quotes what a peer sent into its log: an AffectedSOPInstanceUID of 20 KB with a line
break was logged whole, three times, and its second line read as a log record of the adapter's
own (a forged line). Its records are therefore rewritten before any handler sees them: control
characters escaped, the message cut at :data:`MAX_MESSAGE` characters, and a traceback reduced
to the exception's type (its text quotes the same values), as is an exception logged as the
message itself (``LOGGER.exception(exc)``). Identifiers of C-FIND and the like
are not logged at all (``_config.LOG_REQUEST_IDENTIFIERS``, set by the SCP). At DEBUG it prints
each DIMSE message's SOP Instance UID, received and sent: the value is replaced (some modalities
build UIDs from the patient's ID and birth date; PS3.15 E.1-1 treats them as identifying), and
each A-ASSOCIATE-RQ with its User Identity: a passcode is replaced too.

pynetdicom logs a peer it cannot connect to (the forwarder's PACS is down) as two ERROR lines
per attempt; the forwarder retries it as routine, and says so itself (a WARNING; an ERROR when
it gives an item up), so those two are WARNINGs here: an alert on the rate of ERROR lines does
not page on a PACS's restart. So are the lines for what a peer did on an association (closed
the connection inside a PDU, sent one that cannot be decoded, let the association idle past the
network timeout), with the exception pynetdicom logs after some of them: the adapter's answer
(an abort) is routine; its own failures stay ERRORs.
"""

from __future__ import annotations

import logging
import re
import threading

MAX_MESSAGE = 300
#: pynetdicom's "Affected SOP Instance UID     : 1.2.3..." (and Requested, in N- services), and
#: the "Password: [...]" of a User Identity (PS3.7 D.3.3.7) in its A-ASSOCIATE-RQ dump
_REDACTED = re.compile(r"((?:Instance UID|Password)\s*:).*", re.IGNORECASE | re.DOTALL)


def _escaped(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


#: pynetdicom.transport's lines for a connection that could not be made (a refused port, a
#: timeout, an unknown host): each attempt the forwarder retries
_UNREACHABLE = ("Association request failed: unable to connect to remote", "TCP Initialisation Error: ")


#: pynetdicom's lines for what a peer did on an association (dul.py, association.py): routine
_PEER_EVENTS = ("Connection closed before the entire PDU was received", "The received PDU is shorter than expected",
                "Unable to decode the received PDU data", "Unknown PDU type received", "Network timeout reached")


def _warning(record: logging.LogRecord) -> None:
    record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)


class SafeRecords(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._after_peer_event = threading.local()  # the thread's last record was one of _PEER_EVENTS

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR:
            if isinstance(record.msg, str) and record.msg.startswith(_UNREACHABLE + _PEER_EVENTS):
                _warning(record)
                self._after_peer_event.seen = isinstance(record.msg, str) and record.msg.startswith(_PEER_EVENTS)
            elif isinstance(record.msg, BaseException) and getattr(self._after_peer_event, "seen", False):
                _warning(record)  # pynetdicom's ``LOGGER.exception(exc)`` after the line that said what
                self._after_peer_event.seen = False
            else:
                self._after_peer_event.seen = False
        else:
            self._after_peer_event.seen = False
        if isinstance(record.msg, BaseException):
            # pynetdicom's ``LOGGER.exception(exc)``: the message is the exception's text, which
            # pydicom writes with the element's value (its name, a patient's): the type only
            message = f"an exception ({type(record.msg).__name__}), its text not logged"
        else:
            try:
                message = record.getMessage()
            except Exception:  # noqa: BLE001 - a record whose arguments do not fit its message
                message = str(record.msg)
        if record.exc_info and record.exc_info[0] is not None:
            message = f"{message} ({record.exc_info[0].__name__})"
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        message = _escaped(_REDACTED.sub(r"\1 (not logged)", message))
        record.msg = message if len(message) <= MAX_MESSAGE else message[:MAX_MESSAGE] + "..."
        record.args = ()
        return True


_FILTER = SafeRecords()


def make_pynetdicom_logs_safe() -> None:
    """Put the filter on pynetdicom's loggers (each module has its own, and a logger's filters
    are not inherited by its children); idempotent, process-wide."""
    names = [name for name in logging.root.manager.loggerDict if name == "pynetdicom" or name.startswith("pynetdicom.")]
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
