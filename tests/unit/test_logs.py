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
