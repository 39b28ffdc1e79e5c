"""The adapter's own audit messages, IHE ATNA Record Audit Event [ITI-20] "Actor-start-stop" and
"Audit-Log-Used", as R4 AuditEvents (DICOM PS3.15 A.5.3.1 and A.5.3.2, mapped as
https://hl7.org/fhir/R4/auditevent.html maps DICOM audit messages):

* ``110100`` Application Activity (A.5.3.1): ``python -m adapter serve`` started (subtype
  ``110120`` Application Start) or stopped (``110121`` Application Stop), action ``E``. The
  application is an agent of role ``110150`` Application: its UserID is its process id
  (A.5.2.1: "the process ID as used within the local operating system in the local system
  logs", ``who.identifier``), its name ``who.display``, its AE title ``altId`` when it serves
  DICOM (A.5.2.2 Alternative User ID) and its host ``network`` (A.5.2.4). The account that
  started it is an agent of role ``110151`` Application Launcher, requestor: "Persons and or
  processes that started the Application", 0..N. A stop names none: a signal does not say who
  sent it (docker stop, systemd, an operator), and naming the account the process runs under
  would claim one that may not have. No participant object: nothing of a patient is named.
* ``110101`` Audit Log Used (A.5.3.2): the audit trail exported (``python -m adapter audit``),
  action ``R``. The user is the requestor, by the operating-system account that ran the
  command (``who.identifier``), with the purpose of use it stated; the adapter is the
  Application. The audit log is the participant object: type 2 System Object, role 13 Security
  Resource, identified by its URI (ParticipantObjectIDTypeCode 12 URI: ``what.identifier`` in
  ``urn:ietf:rfc:3986``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from adapter.mapping.audit import audit_event_frame, network_access_point
from adapter.mapping.codes import (
    ADAPTER_NAME,
    AUDIT_ENTITY_TYPE,
    DCM,
    OBJECT_ROLE,
    URN_IETF_RFC_3986,
    V3_PARTICIPATION_TYPE,
)
from adapter.mapping.fhir_r4 import JSON, coding, concept

APPLICATION_ACTIVITY = "110100"
AUDIT_LOG_USED = "110101"
APPLICATION_START = coding(DCM, "110120", "Application Start")  # PS3.16 CID 401 EventTypeCode
APPLICATION_STOP = coding(DCM, "110121", "Application Stop")
_APPLICATION = coding(DCM, "110150", "Application")  # RoleIDCode, PS3.16 CID 402
_APPLICATION_LAUNCHER = coding(DCM, "110151", "Application Launcher")
_RECIPIENT = coding(V3_PARTICIPATION_TYPE, "IRCP", "information recipient")


@dataclass(frozen=True)
class Application:
    """The running adapter as an audit participant (module docstring): its process id, the host
    it runs on (None: not known), and its AE title when it serves DICOM."""

    process_id: int
    host: str | None
    ae_title: str | None = None
    name: str = ADAPTER_NAME


def application_agent(application: Application) -> JSON:
    """The agent of role 110150 Application (PS3.15 A.5.2.1, A.5.2.2, A.5.2.4)."""
    agent: JSON = {
        "type": concept(_APPLICATION),
        "who": {"identifier": {"type": {"text": "process ID"}, "value": str(application.process_id)},
                "display": application.name},
        "requestor": False,
    }
    if application.ae_title:
        agent["altId"] = application.ae_title
    if application.host:
        agent["network"] = network_access_point(application.host)
    return agent


def _account_agent(role: JSON, account: str, display: str) -> JSON:
    """An operating-system account, requestor (A.5.2.3 UserIsRequestor)."""
    return {"type": concept(role), "who": {"identifier": {"type": {"text": "operating-system account"},
                                                          "value": account}, "display": display},
            "requestor": True}


def application_activity_event(*, start: bool, recorded: datetime, application: Application,
                               launcher: str | None, outcome: str = "0", outcome_desc: str | None = None) -> JSON:
    """Application Activity (PS3.15 A.5.3.1): ``application`` started (``start``) or stopped,
    started by the operating-system account ``launcher`` (None: not known, as for a stop).

    Raises:
        ValueError: an unknown outcome code, or a naive ``recorded``.
    """
    agents = [application_agent(application)]
    if launcher is not None:
        agents.append(_account_agent(_APPLICATION_LAUNCHER, launcher, launcher))
    return audit_event_frame(type_=coding(DCM, APPLICATION_ACTIVITY, "Application Activity"),
                             subtypes=[APPLICATION_START if start else APPLICATION_STOP], action="E", outcome=outcome,
                             outcome_desc=outcome_desc, recorded=recorded, agents=agents, entities=[])


def audit_log_entity(audit_log: str) -> JSON:
    """The audit log as a participant object (PS3.15 A.5.3.2): type 2 System Object, role 13
    Security Resource, identified by its URI ``audit_log``."""
    return {
        "what": {"identifier": {"system": URN_IETF_RFC_3986, "value": audit_log}},
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "13", "Security Resource"),
        "name": "audit trail",
    }


def audit_log_used_event(*, recorded: datetime, outcome: str, outcome_desc: str | None, operator: str,
                         operator_display: str, purpose: tuple[str, str] | None, application: Application,
                         audit_log: str) -> JSON:
    """Audit Log Used (PS3.15 A.5.3.2): the audit log ``audit_log`` (its URI) read out by the
    operating-system account ``operator`` (shown as ``operator_display``) for ``purpose``
    (system, code; None when the one stated is not known), through ``application``.

    Raises:
        ValueError: an unknown outcome code, or a naive ``recorded``.
    """
    user = _account_agent(_RECIPIENT, operator, operator_display)
    if purpose is not None:
        user["purposeOfUse"] = [concept(coding(purpose[0], purpose[1]))]
    return audit_event_frame(type_=coding(DCM, AUDIT_LOG_USED, "Audit Log Used"), subtypes=[], action="R",
                             outcome=outcome, outcome_desc=outcome_desc, recorded=recorded,
                             agents=[user, application_agent(application)], entities=[audit_log_entity(audit_log)])


__all__ = ["APPLICATION_ACTIVITY", "APPLICATION_START", "APPLICATION_STOP", "AUDIT_LOG_USED", "Application",
           "application_activity_event", "application_agent", "audit_log_entity", "audit_log_used_event"]
