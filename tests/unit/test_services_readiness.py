"""The readiness checks and their application/health+json document (draft-inadarei-api-health-check)."""

from __future__ import annotations

import socket
from datetime import UTC, datetime

import pytest

from adapter.services.readiness import (
    FAIL,
    PASS,
    WARN,
    Check,
    check_dicom_listener,
    health_document,
    overall,
)

pytestmark = pytest.mark.unit


def at() -> datetime:
    return datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def test_the_worst_check_decides() -> None:
    assert overall([]) == PASS
    assert overall([Check("a:b", PASS, "system"), Check("c:d", WARN, "system")]) == WARN
    assert overall([Check("a:b", FAIL, "system"), Check("c:d", WARN, "system")]) == FAIL


def test_the_document_has_the_drafts_shape() -> None:
    body = health_document([Check("database:responseTime", PASS, "datastore", 1.5, "ms"),
                            Check("storage:freeSpace", WARN, "system", 10, "MiB", "below the reserve")],
                           version="1.2.3", now=at)
    assert body == {
        "status": "warn", "version": "1.2.3",
        "checks": {
            "database:responseTime": [{"componentType": "datastore", "status": "pass", "time": "2026-11-26T12:00:00Z",
                                       "observedValue": 1.5, "observedUnit": "ms"}],
            "storage:freeSpace": [{"componentType": "system", "status": "warn", "time": "2026-11-26T12:00:00Z",
                                   "observedValue": 10, "observedUnit": "MiB", "output": "below the reserve"}],
        },
    }


def test_a_port_nobody_listens_on_fails() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        check = check_dicom_listener("127.0.0.1", port, timeout=1.0)
    assert check.status == FAIL and check.observed_unit == "ms"
