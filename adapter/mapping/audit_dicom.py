"""DICOM audit messages (DICOM PS3.15 Annex A.5, Audit Trail Message Format Profile) as R4
AuditEvents, following the DICOM mapping of https://hl7.org/fhir/R4/auditevent.html (EventID to
AuditEvent.type, EventActionCode to action, RoleIDCode to agent.type, AlternativeUserID to
agent.altId, ParticipantObjectID and ParticipantObjectIDTypeCode to entity.what,
ParticipantObjectTypeCode and ...Role to entity.type and entity.role).

The DICOM exchanges, and the associations refused, are typed by their DICOM EventID (PS3.16 CID 400), so that an audit
repository, or a privacy officer searching by DICOM audit event, finds them; FHIR REST stays
IHE BALP (adapter.mapping.audit), and everything else is shaped as there (the requestor and its
purpose of use, the records, the patient, the query, the X-Request-Id):

* ``110104`` DICOM Instances Transferred (PS3.15 A.5.3.7): action ``C`` when the adapter receives
  (C-STORE SCP, STOW-RS: "C (Create) if the receiver did not hold copies"; an instance it already
  holds is answered from its record and not audited again), the sender the Source (DCM 110153)
  and the adapter the Destination (DCM 110152); action ``R`` when the adapter sends (the
  forwarding C-STORE SCU, WADO-RS, WADO-URI, a Binary read as application/dicom: "If the Audit
  Source is ... not the receiver ... use R"), the adapter the Source and the peer the
  Destination. A retrieval is a transfer of instances between two applications, not DICOM
  Instances Accessed (110103, A.5.3.6: instances "viewed, utilized, updated, or deleted", whose
  participant is the one "accessing the data", no Source or Destination);
* the forwarding C-STORE SCU is the one exchange the adapter initiates: it pushes the object, so
  it is the requestor (A.5.3.7 Source, UserIsRequestor; R4 ``agent.requestor`` marks the
  initiator) with the purpose of use it forwards for, and the PACS is the Destination, named by
  its AE title and address, requestor false; there is no third agent (``adapter_requestor``).
  Every attempt is one message: acknowledged (outcome 0); its data set sent and the C-STORE
  answered with a failure status, or with none (outcome 4 or 8, the status in outcomeDesc); or
  the object not sent at all, the association rejected or aborted, the connection refused, no
  presentation context accepted (outcome 4 or 8, outcomeDesc "not sent: ...": nothing was
  disclosed). adapter.services.forwarding says which outcome when;
* ``110112`` Query (A.5.3.10): action ``E``, the process issuing the query the Source, the one
  answering it the Destination; the query is recorded as it was received (role 24 Query,
  base64: QIDO-RS is a non-DICOM query, A.5.3.10 Note 2);
* each study a transfer carries is an entity (A.5.3.7 "Studies being transferred"): type 2
  System Object, role 3 Report, what.identifier.value the Study Instance UID with
  what.identifier.type EV (110180, DCM, "Study Instance UID") (PS3.16 CID 404);
* an object received and refused (a C-STORE request or a STOW-RS part the adapter did not keep)
  is one message of its own, naming its SOP instance (A.5.3.7: the SOP Instance UIDs of a
  transfer), the only name it may have when it was not read far enough to know its study:
  an entity of type 2 System Object, role 3 Report, whose what.identifier is the SOP Instance
  UID as the records name it (system ``urn:dicom:uid``, value ``urn:oid:<uid>``, type text
  "SOP Instance UID": CID 404 has no code for it). A STOW-RS request refused as a whole before
  any part was looked at (not multipart/related of application/dicom, over the size limits,
  malformed, cut short, no part) is one such message naming no instance: nothing was read.
  Its outcome (:func:`refusal_outcome`) is 4 Minor failure when the object was refused (the
  sender can correct it and send it again), 8 Serious failure when the adapter failed to keep it
  (A.5.1 EventOutcomeIndicator);
* ``110113`` Security Alert (A.5.3.11): an association the C-STORE SCP rejected (A-ASSOCIATE-RJ:
  a calling AE title not allowed, more associations than ``maximum_associations``; or accepted
  with every presentation context rejected, which dcmtk's storescp rejects), action
  ``E`` ("Shall be: E"), outcome 4 Minor failure (A.5.3.11: a minor failure "indicates that
  mitigation efforts were effective in maintaining system security": the peer was kept out).
  Its EventTypeCode (AuditEvent.subtype, PS3.16 CID 403 Security Alert Type) is ``110126`` Node
  Authentication: the A-ASSOCIATE-RQ is a node asking to be let in under the AE title it
  claims, and the rejection is the SCP turning that node away, the event IHE ATNA names
  "node-authentication-failure" and dcm4chee-arc audits as Security Alert / Node Authentication
  for a refused connection. Not the other messages: no instance was transferred (A.5.3.7 names
  the instances; none was read), and User Authentication (A.5.3.12, 110114) is a person's
  login or logout, its EventTypeCode 110122/110123; nor dcm4chee-arc's private
  "AssociationFailure" type, which no audit repository knows. The agents: the peer, requestor
  (A.5.3.11 "Performing ... Processes", UserIsRequestor), by its address, its calling AE title
  as altId (A.5.2.2 Alternative User ID) and its network access point; the adapter (the
  "Reporting ... Process"), both of role 110150 Application (CID 402). The Alert Subject entity
  is the peer's node: type 2 System Object, what.identifier typed 110182 Node ID, its value the
  peer's IP address; its details the Alert Description (the A-ASSOCIATE-RJ result, source and
  reason in PS3.8 Table 9-21's words, or the rejected presentation contexts' results in Table
  9-18's, and the called AE title the request named) and the number
  of Occurrences. A peer retrying in a loop is not one message per rejection: its repeats are
  counted into one message (outcomeDesc "(N associations)", AuditEvent.period the first and last
  of them; adapter.services.association_audit says when each is written). There is no patient,
  purpose of use or request to name.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from adapter import errors
from adapter.mapping.audit import assemble_audit_event, network_access_point
from adapter.mapping.codes import (
    ADAPTER_NAME,
    AUDIT_ENTITY_TYPE,
    DCM,
    DICOM_UID_SYSTEM,
    OBJECT_ROLE,
    SECURITY_SOURCE_TYPE,
)
from adapter.mapping.fhir_r4 import JSON, coding, concept, fhir_instant
from adapter.model.photo import Identifier

INSTANCES_TRANSFERRED = "110104"
QUERY = "110112"
SECURITY_ALERT = "110113"
#: The DICOM EventIDs the adapter writes (PS3.16 CID 400 Audit Event ID), with their meanings.
EVENT_IDS = {INSTANCES_TRANSFERRED: "DICOM Instances Transferred", QUERY: "Query", SECURITY_ALERT: "Security Alert"}
#: The EventActionCodes each message allows: A.5.3.7 enumerates C, R and U (the adapter never
#: updates held copies), A.5.3.10 and A.5.3.11 "Shall be: E".
_ACTIONS = {INSTANCES_TRANSFERRED: frozenset({"C", "R"}), QUERY: frozenset({"E"}), SECURITY_ALERT: frozenset({"E"})}
#: The EventTypeCode of a rejected association (PS3.16 CID 403 Security Alert Type, module docstring).
NODE_AUTHENTICATION = coding(DCM, "110126", "Node Authentication")
_APPLICATION = coding(DCM, "110150", "Application")  # RoleIDCode, PS3.16 CID 402
_NODE_ID = coding(DCM, "110182", "Node ID")          # ParticipantObjectIDTypeCode of an Alert Subject
#: The fields of an A-ASSOCIATE-RJ PDU (PS3.8 Table 9-21): Result, Source, and the Reason/Diag.
#: of each source, in the standard's words.
_RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_RJ_SOURCE = {1: "DICOM UL service-user", 2: "DICOM UL service-provider (ACSE related function)",
              3: "DICOM UL service-provider (Presentation related function)"}
_RJ_REASON = {(1, 1): "no-reason-given", (1, 2): "application-context-name-not-supported",
              (1, 3): "calling-AE-title-not-recognized", (1, 7): "called-AE-title-not-recognized",
              (2, 1): "no-reason-given", (2, 2): "protocol-version-not-supported",
              (3, 1): "temporary-congestion", (3, 2): "local-limit-exceeded"}
_STUDY_INSTANCE_UID = coding(DCM, "110180", "Study Instance UID")
#: A UID has at most 64 characters (PS3.5 9.1); a request's may be anything its sender wrote.
_UID_LENGTH = 64
#: Failures that are the adapter's, not the object's: it could not keep what it was sent.
_SERIOUS = (errors.Transient, errors.Conflict, errors.ConfigurationError, errors.PolicyError)


def study_entity(study_instance_uid: str) -> JSON:
    """The Participant Object of a study (PS3.15 A.5.3.7, see the module docstring)."""
    return {
        "what": {"identifier": {"type": concept(_STUDY_INSTANCE_UID), "value": study_instance_uid}},
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "3", "Report"),
    }


def sop_instance_entity(sop_instance_uid: str) -> JSON:
    """The Participant Object of one SOP instance (see the module docstring)."""
    return {
        "what": {"identifier": {"type": {"text": "SOP Instance UID"}, "system": DICOM_UID_SYSTEM,
                                "value": f"urn:oid:{sop_instance_uid[:_UID_LENGTH]}"}},
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "3", "Report"),
    }


def refusal_outcome(error: BaseException) -> str:
    """The EventOutcomeIndicator of an object received and not kept because of ``error``: ``8``
    Serious failure when the adapter failed (its store, a conflict it could not resolve, its
    configuration, or a bug: anything outside the error hierarchy), else ``4`` Minor failure
    (the object, or the consent rules, refused it). PS3.15 A.5.1, AuditEvent.outcome."""
    if isinstance(error, errors.InstanceConflict):  # the object's: it names another patient than the stored one
        return "4"
    if not isinstance(error, errors.AdapterError) or isinstance(error, _SERIOUS):
        return "8"
    return "4"


def association_rejection(result: int, source: int, reason: int) -> str:
    """The A-ASSOCIATE-RJ ``result``, ``source`` and ``reason`` (PS3.8 Table 9-21) as the
    standard words them, each with its number (a value PS3.8 does not define is given as a
    number alone)."""
    def field(name: str, value: int, words: str | None) -> str:
        return f"{name} {value}" + (f" ({words})" if words else "")
    return ", ".join((field("result", result, _RJ_RESULT.get(result)), field("source", source, _RJ_SOURCE.get(source)),
                      field("reason", reason, _RJ_REASON.get((source, reason)))))


def security_alert_event(*, recorded: datetime, start: datetime, end: datetime, count: int, description: str,
                         peer_address: str | None, calling_ae_title: str | None, event_id: str | None = None) -> JSON:
    """The Security Alert (PS3.15 A.5.3.11) of ``count`` associations rejected between ``start``
    and ``end`` (AuditEvent.period), all from ``calling_ae_title`` at ``peer_address`` (None: from
    several) for one reason, ``description`` (see the module docstring).

    Raises:
        ValueError: ``count`` below 1, or a naive datetime.
    """
    if count < 1:
        raise ValueError("a Security Alert reports at least one event")
    peer: JSON = {"type": concept(_APPLICATION), "who": {"display": peer_address or "several peers"},
                  "requestor": True}
    if calling_ae_title:
        peer["altId"] = calling_ae_title
    if peer_address:
        peer["network"] = network_access_point(peer_address)
    subject: JSON = {
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "detail": [{"type": "Alert Description", "valueString": description},
                   {"type": "Occurrences", "valueString": str(count)}],
    }
    if peer_address:
        subject["what"] = {"identifier": {"type": concept(_NODE_ID), "value": peer_address}}
    event: JSON = {"resourceType": "AuditEvent"}
    if event_id:
        event["id"] = event_id
    event.update({
        "type": coding(DCM, SECURITY_ALERT, EVENT_IDS[SECURITY_ALERT]),
        "subtype": [NODE_AUTHENTICATION],
        "action": "E",
        "period": {"start": fhir_instant(start), "end": fhir_instant(end)},
        "recorded": fhir_instant(recorded),
        "outcome": "4",
        "outcomeDesc": description if count == 1 else f"{description} ({count} associations)",
        "agent": [peer, {"type": concept(_APPLICATION), "who": {"display": ADAPTER_NAME}, "requestor": False}],
        "source": {"observer": {"display": ADAPTER_NAME},
                   "type": [coding(SECURITY_SOURCE_TYPE, "4", "Application Server")]},
        "entity": [subject],
    })
    return event


def dicom_audit_event(*, event: str, action: str, outcome: str, outcome_desc: str | None, recorded: datetime,
                      client_address: str | None, actor: str, purpose: tuple[str, str] | None, request_id: str,
                      entities: Sequence[str], patient: Identifier | None, studies: Sequence[str],
                      query: bytes | None, event_id: str | None = None,
                      client_ae_title: str | None = None, instances: Sequence[str] = (),
                      more_entities: Sequence[JSON] = (), policy: str | None = None,
                      adapter_requestor: bool = False, server_url: str | None = None,
                      forwarded_for: str | None = None, client_request_id: str | None = None) -> JSON:
    """One DICOM audit message as an R4 AuditEvent (see the module docstring): ``event`` is its
    DICOM EventID, ``studies`` the Study Instance UIDs it names (each once, in order), ``instances``
    the SOP Instance UIDs (each once, after the studies); the other arguments are those of
    adapter.mapping.audit.audit_event (``client_ae_title``: the peer's AE title, its Alternative
    User ID, PS3.15 A.5.2.2; ``more_entities``, after the studies and instances, and ``policy``:
    the Consents and the policy of a decision). ``adapter_requestor``: the adapter pushed the
    instances to the peer (the forwarding C-STORE SCU): it is the requestor, the peer (``actor``)
    the Destination. ``server_url``: the adapter's network address, a URI (its base URL, for an
    exchange over HTTP: DICOMweb).

    Raises:
        ValueError: an EventID the adapter does not write, an action its message does not allow,
            an unknown outcome, a naive ``recorded``, or ``adapter_requestor`` for anything but
            instances the adapter sends (110104, action R).
    """
    if event not in EVENT_IDS:
        raise ValueError(f"unknown DICOM audit EventID {event!r}")
    if action not in _ACTIONS[event]:
        raise ValueError(f"EventActionCode {action!r} is not one of DCM {event} {EVENT_IDS[event]!r}")
    # the adapter sends (Source) when instances are read out of it; a query flows to it
    to_client = event == INSTANCES_TRANSFERRED and action == "R"
    if adapter_requestor and not to_client:
        raise ValueError("the adapter is the requestor only of instances it sends (110104, action R)")
    return assemble_audit_event(
        type_=coding(DCM, event, EVENT_IDS[event]), subtype=None, action=action, outcome=outcome,
        outcome_desc=outcome_desc, recorded=recorded, to_client=to_client, recipient=action in ("R", "E"),
        client_address=client_address, client_ae_title=client_ae_title, actor=actor, purpose=purpose,
        request_id=request_id, entities=entities, patient=patient, query=query, event_id=event_id, policy=policy,
        more_entities=[*(study_entity(uid) for uid in dict.fromkeys(studies)),
                       *(sop_instance_entity(uid) for uid in dict.fromkeys(instances)), *more_entities],
        adapter_requestor=adapter_requestor, server_url=server_url, forwarded_for=forwarded_for,
        client_request_id=client_request_id)


__all__ = ["EVENT_IDS", "INSTANCES_TRANSFERRED", "NODE_AUTHENTICATION", "QUERY", "SECURITY_ALERT",
           "association_rejection", "dicom_audit_event", "refusal_outcome", "security_alert_event",
           "sop_instance_entity", "study_entity"]
