"""The adapter's own audit messages as R4 AuditEvents: Application Activity (DICOM PS3.15
A.5.3.1, IHE ATNA Actor-start-stop) and Audit Log Used (A.5.3.2)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from adapter.errors import ConfigurationError
from adapter.mapping import codes
from adapter.mapping.audit_application import (
    Application,
    application_activity_event,
    audit_log_used_event,
)
from adapter.store.engine import audit_log_uri
from tests.support.fhir_validator import validate_r4

pytestmark = pytest.mark.unit

RECORDED = datetime(2026, 11, 27, 9, 0, 0, tzinfo=UTC)
SERVING = Application(process_id=4242, host="imaging-01", ae_title="ADAPTER")


def _coding(concept: dict) -> tuple[str, str]:
    return concept["coding"][0]["system"], concept["coding"][0]["code"]


def test_an_application_start_names_the_application_by_its_process_id_host_and_ae_title_and_its_launcher() -> None:
    event = application_activity_event(start=True, recorded=RECORDED, application=SERVING, launcher="imaging")
    assert (event["type"]["code"], event["subtype"][0]["code"], event["action"], event["outcome"]) == \
        ("110100", "110120", "E", "0")
    application, launcher = event["agent"]
    assert _coding(application["type"]) == (codes.DCM, "110150")
    assert application["who"]["identifier"]["value"] == "4242"
    assert application["who"]["display"] == codes.ADAPTER_NAME
    assert application["altId"] == "ADAPTER" and application["network"] == {"address": "imaging-01", "type": "1"}
    assert application["requestor"] is False
    assert _coding(launcher["type"]) == (codes.DCM, "110151")
    assert launcher["who"]["identifier"]["value"] == "imaging" and launcher["requestor"] is True
    assert "entity" not in event  # no participant object: nothing of a patient


def test_an_application_stop_names_no_launcher_and_says_why_it_stopped() -> None:
    event = application_activity_event(start=False, recorded=RECORDED, application=Application(7, None),
                                       launcher=None, outcome="8", outcome_desc="could not start: port taken")
    assert (event["subtype"][0]["code"], event["outcome"], event["outcomeDesc"]) == \
        ("110121", "8", "could not start: port taken")
    [application] = event["agent"]
    assert "network" not in application and "altId" not in application


def test_an_audit_log_used_names_the_operator_and_the_audit_log_as_a_security_resource() -> None:
    event = audit_log_used_event(recorded=RECORDED, outcome="0", outcome_desc="audit trail export", operator="alice",
                                 operator_display="operator alice (python -m adapter audit)",
                                 purpose=(codes.V3_ACT_REASON, "RECORDMGT"),
                                 application=Application(99, "imaging-01"), audit_log="file:///srv/adapter.db#audit")
    assert (event["type"]["system"], event["type"]["code"], event["action"]) == (codes.DCM, "110101", "R")
    assert "subtype" not in event
    user, application = event["agent"]
    assert user["requestor"] is True and user["who"]["identifier"]["value"] == "alice"
    assert user["purposeOfUse"][0]["coding"][0]["code"] == "RECORDMGT"
    assert "network" not in user  # it came over no network
    assert _coding(application["type"]) == (codes.DCM, "110150")
    [log] = event["entity"]
    assert log["what"]["identifier"] == {"system": codes.URN_IETF_RFC_3986, "value": "file:///srv/adapter.db#audit"}
    assert (log["type"]["code"], log["role"]["code"]) == ("2", "13")


def test_the_events_are_valid_fhir_r4() -> None:
    events = [
        application_activity_event(start=True, recorded=RECORDED, application=SERVING, launcher="imaging"),
        application_activity_event(start=False, recorded=RECORDED, application=SERVING, launcher=None,
                                   outcome_desc="stopped by SIGTERM"),
        audit_log_used_event(recorded=RECORDED, outcome="4", outcome_desc="unknown purpose", operator="uid 1234",
                             operator_display="operator uid 1234 (python -m adapter audit)", purpose=None,
                             application=SERVING, audit_log="postgresql://db.example:5432/adapter#audit"),
    ]
    for event in events:
        AuditEvent.model_validate(event)
    assert validate_r4(events) == []


def test_the_audit_log_uri_names_the_database_and_never_its_credentials() -> None:
    assert audit_log_uri("sqlite:////srv/data dir/adapter.db") == "file:///srv/data%20dir/adapter.db#audit"
    uri = audit_log_uri("postgresql+psycopg://adapter:s3cret@db.example:5433/images?sslpassword=x")
    assert uri == "postgresql://db.example:5433/images#audit"
    with pytest.raises(ConfigurationError):
        audit_log_uri("mysql://db/x")
