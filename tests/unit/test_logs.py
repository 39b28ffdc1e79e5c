"""adapter.logs: an exception is logged by its frames and types, never by its message (which
quotes the value it failed on). Found by the operations review."""

from __future__ import annotations

import io
import logging

from adapter.logs import SafeExceptions

MRN, NAME = "MRN-" + "SECRET-1", "Doe^Jane " + "19470314"  # source lines are logged: kept apart


def _fail() -> None:
    try:
        {}[MRN]  # a KeyError quoting a patient identifier
    except KeyError as exc:
        raise ValueError(f"Invalid isoformat string: {NAME!r}") from exc


def test_a_logged_exception_keeps_its_frames_and_types_without_messages() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(SafeExceptions())
    logger = logging.getLogger("tests.unit.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            _fail()
        except ValueError:
            logger.exception("unexpected error (ValueError)")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = stream.getvalue()
    assert "unexpected error (ValueError)" in text
    assert "in _fail" in text and "KeyError" in text and "ValueError" in text  # where, and what kind
    assert "MRN-SECRET-1" not in text and "Doe^Jane" not in text and "19470314" not in text


def test_a_librarys_record_carrying_control_characters_is_one_line() -> None:
    """Security review 6: pydicom quoted a SpecificCharacterSet of CR LF and a forged CRITICAL line
    (and terminal escapes), and the log showed the forged line as a line of its own."""
    from adapter.logs import make_exceptions_safe

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger("tests.unit.test_logs.escaped")
    root.propagate = False
    root.addHandler(handler)
    make_exceptions_safe(root)
    record = logging.LogRecord("pydicom", logging.WARNING, __file__, 1,
                               "Unknown encoding '%s' - using default encoding instead", (
                                   "X\r\n2026-11-28 11:11:11,111 CRITICAL adapter: FORGED\x1b[2J",), None)
    root.handle(record)
    text = stream.getvalue()
    assert text.count("\n") == 1 and "\x1b" not in text and "\r" not in text
    assert "\\x0d\\x0a2026-11-28 11:11:11,111 CRITICAL adapter: FORGED\\x1b[2J" in text
    own = logging.LogRecord("adapter.dicom", logging.INFO, __file__, 1, "two\nlines", None, None)
    root.handle(own)  # the adapter's own messages are its own to shape (they quote values with !r)
    root.removeHandler(handler)
    assert stream.getvalue().endswith("two\nlines\n")
