"""DICOM audit messages (PS3.15 A.5.3) as R4 AuditEvents: the EventID, the Source and
Destination agents and the studies of DICOM Instances Transferred (A.5.3.7) and Query (A.5.3.10)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from adapter import errors
from adapter.mapping import codes
from adapter.mapping.audit_dicom import (
    INSTANCES_TRANSFERRED,
    QUERY,
    association_rejection,
    dicom_audit_event,
    refusal_outcome,
    security_alert_event,
)
from adapter.mapping.photo import index_resource
from adapter.model.photo import Identifier
from tests.support.fhir_validator import validate_r4

pytestmark = pytest.mark.unit

RECORDED = datetime(2024, 3, 1, 9, 16, 2, 120000, tzinfo=UTC)
PATIENT = Identifier(system="urn:oid:2.999.1.1", value="MRN-0001")
STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.3"


def event(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "event": INSTANCES_TRANSFERRED, "action": "R", "outcome": "0", "outcome_desc": None,
        "recorded": RECORDED, "client_address": "127.0.0.1", "actor": "dr-a",
        "purpose": (codes.V3_ACT_REASON, "TREAT"), "request_id": "req-42", "entities": ["Media/m-1"],
        "patient": PATIENT, "studies": [STUDY], "query": None,
    }
    args.update(overrides)
    return dicom_audit_event(**args)


def roles(ev: dict[str, Any]) -> list[str]:
    return [str(a["type"]["coding"][0]["code"]) for a in ev["agent"]]


def studies(ev: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in ev.get("entity", []) if e.get("role", {}).get("code") == "3"]


CASES = {
    "c-store received": event(action="C", client_ae_title="STORESCU", request_id="",
                              entities=["Media/m-1", "Binary/b-1", "Provenance/p-1"]),
    "c-store refused": event(action="C", outcome="4", outcome_desc="the patient's Consent denies TREAT",
                             client_ae_title="STORESCU", request_id="", entities=[]),
    "stow-rs": event(action="C", entities=["Media/m-1"]),
    "c-store sent": event(client_ae_title="ORTHANC", client_address="pacs.example.org", request_id="outbox-7",
                          actor="PACS ORTHANC (C-STORE)", adapter_requestor=True),
    "c-store sent, refused by the pacs": event(
        client_ae_title="ORTHANC", client_address="10.0.0.5", request_id="outbox-7", actor="PACS ORTHANC (C-STORE)",
        adapter_requestor=True, outcome="8",
        outcome_desc="sent: C-STORE refused 0xC000; the item failed, not retried"),
    "c-store not sent": event(
        client_ae_title="ORTHANC", client_address="10.0.0.5", request_id="outbox-7", actor="PACS ORTHANC (C-STORE)",
        adapter_requestor=True, outcome="4",
        outcome_desc="not sent: could not connect to ORTHANC@10.0.0.5:104; nothing was disclosed; to be retried"),
    "wado-rs": event(),
    "wado denied": event(outcome="4", outcome_desc="no active consent for TRAIN",
                         purpose=(codes.V3_ACT_REASON, "TRAIN")),
    "two studies": event(studies=[STUDY, OTHER_STUDY, STUDY]),
    "qido-rs": event(event=QUERY, action="E", studies=[], entities=["Media/m-1", "Media/m-2"],
                     query=b"GET /dicomweb/studies?PatientID=MRN-0001"),
    "qido nothing found": event(event=QUERY, action="E", studies=[], entities=[], patient=None,
                                query=b"GET /dicomweb/studies?PatientID=nobody"),
    "sparse": event(client_address=None, purpose=None, request_id="", entities=[], patient=None, studies=[],
                    actor=""),
    "c-store malformed": event(action="C", outcome="4", outcome_desc="the object has no StudyInstanceUID",
                               client_ae_title="STORESCU", request_id="", entities=[], patient=None, studies=[],
                               instances=[INSTANCE, INSTANCE]),
    "c-store not kept": event(action="C", outcome="8", outcome_desc="could not stage the received object",
                              client_ae_title="STORESCU", request_id="", entities=[], instances=[INSTANCE]),
    "association rejected": security_alert_event(
        recorded=RECORDED, start=RECORDED, end=RECORDED, count=1, description="calling AE title not recognised",
        peer_address="127.0.0.1", calling_ae_title="INTRUDER"),
    "associations rejected from several peers": security_alert_event(
        recorded=RECORDED, start=datetime(2024, 3, 1, 9, 15, tzinfo=UTC), end=RECORDED, count=1200,
        description="local limit exceeded", peer_address=None, calling_ae_title=None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_validates_with_r4b_model(name: str) -> None:
    AuditEvent.model_validate(CASES[name])


def test_validates_with_npm_validators() -> None:
    assert validate_r4(list(CASES.values())) == []


def test_instances_transferred_is_typed_by_its_dicom_event_id() -> None:
    """PS3.15 A.5.3.7: EventID EV (110104, DCM, "DICOM Instances Transferred"), R4 AuditEvent.type
    (the EventId); no restful-interaction subtype: this is not a FHIR interaction."""
    for name in ("c-store received", "c-store refused", "stow-rs", "c-store sent", "wado-rs", "wado denied"):
        ev = CASES[name]
        assert ev["type"] == {"system": codes.DCM, "code": "110104", "display": "DICOM Instances Transferred"}, name
        assert "subtype" not in ev, name


def test_a_receiver_creates_and_the_sender_is_the_source() -> None:
    """The adapter receiving (C-STORE SCP, STOW-RS): action C, the peer the Source (110153), the
    adapter the Destination (110152), the requestor the author."""
    ev = CASES["c-store received"]
    assert ev["action"] == "C" and ev["outcome"] == "0"
    assert roles(ev) == ["110153", "110152", "AUT"]
    client, server, user = ev["agent"]
    assert client["altId"] == "STORESCU" and client["network"] == {"address": "127.0.0.1", "type": "2"}
    assert server["who"] == {"display": codes.ADAPTER_NAME} and "altId" not in server
    assert user["requestor"] is True and client["requestor"] is False and server["requestor"] is False


def test_a_refused_object_keeps_the_failure_outcome_and_the_reason() -> None:
    ev = CASES["c-store refused"]
    assert (ev["action"], ev["outcome"], ev["outcomeDesc"]) == ("C", "4", "the patient's Consent denies TREAT")
    assert [s["what"]["identifier"]["value"] for s in studies(ev)] == [STUDY]


def test_a_refused_object_is_named_by_its_sop_instance_and_names_no_patient_it_was_not_read_for() -> None:
    """An object received and refused before its patient was read: the SOP Instance UID the
    request named, once, as the records name it (urn:dicom:uid, urn:oid:), after any study;
    no patient entity, no study entity."""
    ev = CASES["c-store malformed"]
    assert (ev["action"], ev["outcome"]) == ("C", "4") and roles(ev) == ["110153", "110152", "AUT"]
    assert ev["entity"] == [{
        "what": {"identifier": {"type": {"text": "SOP Instance UID"}, "system": "urn:dicom:uid",
                                "value": f"urn:oid:{INSTANCE}"}},
        "type": {"system": codes.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": codes.OBJECT_ROLE, "code": "3", "display": "Report"},
    }]
    kept = CASES["c-store not kept"]
    assert [e["what"]["identifier"]["value"] for e in kept["entity"][:2]] == [STUDY, f"urn:oid:{INSTANCE}"]
    assert kept["entity"][2]["what"]["identifier"] == {"system": PATIENT.system, "value": PATIENT.value}
    # a request's UID is whatever the sender wrote: never more than a UID's 64 characters
    long = event(action="C", outcome="4", instances=["1." * 100], patient=None, studies=[], entities=[])
    assert long["entity"][0]["what"]["identifier"]["value"] == "urn:oid:" + ("1." * 100)[:64]


@pytest.mark.parametrize(("error", "outcome"), [
    (errors.InvalidInput("truncated"), "4"), (errors.InvalidResource("mismatch"), "4"),
    (errors.RequiredElementMissing("no study"), "4"), (errors.NotSupported("class"), "4"),
    (errors.UnsupportedTransferSyntax("j2k"), "4"), (errors.UndecodableImage("frame"), "4"),
    (errors.PayloadTooLarge("big"), "4"), (errors.ConsentRequired("denied"), "4"),
    (errors.StorageError("disk"), "8"), (errors.InsufficientStorage("full"), "8"),
    (errors.Transient("busy"), "8"), (errors.Conflict("race"), "8"), (errors.ConfigurationError("key"), "8"),
    (RuntimeError("a bug"), "8"),
])
def test_a_refusal_is_a_minor_failure_and_the_adapters_own_failure_a_serious_one(error: BaseException,
                                                                                   outcome: str) -> None:
    """PS3.15 A.5.1 EventOutcomeIndicator: 4 when the object (or the consent rules) was refused and
    the sender can send a corrected one; 8 when the adapter failed to keep it."""
    assert refusal_outcome(error) == outcome


def test_a_sender_reads_and_the_peer_is_the_destination() -> None:
    """The adapter sending (forwarding C-STORE SCU, WADO retrieve): PS3.15 A.5.3.7, "If the Audit
    Source is ... not the receiver ... use R"; the adapter the Source, the peer the Destination."""
    for name in ("c-store sent", "c-store sent, refused by the pacs", "c-store not sent", "wado-rs"):
        assert CASES[name]["action"] == "R", name
    assert roles(CASES["wado-rs"]) == ["110152", "110153", "IRCP"]
    pacs = CASES["c-store sent"]["agent"][0]
    assert pacs["altId"] == "ORTHANC" and pacs["network"] == {"address": "pacs.example.org", "type": "1"}


@pytest.mark.parametrize("name", ["c-store sent", "c-store sent, refused by the pacs", "c-store not sent"])
def test_a_push_by_the_adapter_has_the_adapter_as_the_requestor_and_the_pacs_as_the_destination(name: str) -> None:
    """Found by the audit review: the forwarding C-STORE's event named the PACS as the requestor
    (agent "PACS ... (C-STORE)", requestor true, with the purpose of use) and the adapter, the
    Source, as not. The adapter initiated the push: R4 agent.requestor marks the initiator, and
    PS3.15 A.5.3.7 has the pushing Source as UserIsRequestor. So the adapter (110153 Source) is
    the requestor, with the purpose it forwards for; the PACS (110152 Destination) is not, named by
    its AE title, address and name; there is no third agent claiming to have asked."""
    ev = CASES[name]
    assert roles(ev) == ["110152", "110153"]
    pacs, adapter = ev["agent"]
    assert pacs["requestor"] is False and "purposeOfUse" not in pacs
    assert pacs["who"] == {"display": "PACS ORTHANC (C-STORE)"} and pacs["altId"] == "ORTHANC"
    assert adapter["requestor"] is True and adapter["who"] == {"display": codes.ADAPTER_NAME}
    assert adapter["purposeOfUse"] == [{"coding": [{"system": codes.V3_ACT_REASON, "code": "TREAT"}]}]
    assert [a for a in ev["agent"] if a["requestor"]] == [adapter]


def test_only_a_transfer_the_adapter_sends_can_have_it_as_the_requestor() -> None:
    for bad in ({"action": "C"}, {"event": QUERY, "action": "E"}):
        with pytest.raises(ValueError):
            event(adapter_requestor=True, **bad)


def test_the_study_is_an_entity_by_its_study_instance_uid() -> None:
    """PS3.15 A.5.3.7 Participant Object "Studies being transferred": ParticipantObjectTypeCode 2
    (System Object), ParticipantObjectTypeCodeRole 3 (Report), ParticipantObjectIDTypeCode
    EV (110180, DCM, "Study Instance UID"), ParticipantObjectID the Study Instance UID; R4 maps the
    ID and its type code to entity.what (identifier.value and identifier.type)."""
    [study] = studies(CASES["wado-rs"])
    assert study == {
        "what": {"identifier": {
            "type": {"coding": [{"system": codes.DCM, "code": "110180", "display": "Study Instance UID"}]},
            "value": STUDY}},
        "type": {"system": codes.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": codes.OBJECT_ROLE, "code": "3", "display": "Report"},
    }
    assert [s["what"]["identifier"]["value"] for s in studies(CASES["two studies"])] == [STUDY, OTHER_STUDY]


def test_the_patient_and_the_records_are_named_as_in_a_balp_event() -> None:
    ev = CASES["wado-rs"]
    [patient] = [e for e in ev["entity"] if e.get("role", {}).get("code") == "1"]
    assert patient["what"] == {"identifier": {"system": PATIENT.system, "value": PATIENT.value}}
    assert patient["type"]["code"] == "1"
    assert [e["what"]["reference"] for e in ev["entity"] if e.get("role", {}).get("code") == "4"] == ["Media/m-1"]
    user = ev["agent"][2]
    assert user["purposeOfUse"] == [{"coding": [{"system": codes.V3_ACT_REASON, "code": "TREAT"}]}]
    denied = CASES["wado denied"]
    assert (denied["outcome"], denied["outcomeDesc"]) == ("4", "no active consent for TRAIN")


def test_query_is_typed_110112_executed_by_the_client_as_the_source() -> None:
    """PS3.15 A.5.3.10: EventID EV (110112, DCM, "Query"), EventActionCode E; the process issuing
    the query the Source (110153), the one answering it the Destination (110152); the query
    itself recorded (a non-DICOM query: the request as received, base64)."""
    ev = CASES["qido-rs"]
    assert ev["type"] == {"system": codes.DCM, "code": "110112", "display": "Query"}
    assert "subtype" not in ev and ev["action"] == "E"
    assert roles(ev) == ["110153", "110152", "IRCP"]
    [query] = [e for e in ev["entity"] if e.get("role", {}).get("code") == "24"]
    assert base64.b64decode(query["query"]) == b"GET /dicomweb/studies?PatientID=MRN-0001"
    assert studies(ev) == []
    assert "entity" in CASES["qido nothing found"]


def test_sparse_event() -> None:
    ev = CASES["sparse"]
    assert "entity" not in ev and "network" not in ev["agent"][0] and "purposeOfUse" not in ev["agent"][2]


def test_refuses_unknown_events_and_actions_the_message_does_not_allow() -> None:
    for bad in ({"event": "110103"}, {"action": "E"}, {"action": "D"},
                {"event": QUERY, "action": "R"}, {"outcome": "1"}):
        with pytest.raises(ValueError):
            event(**bad)
    with pytest.raises(ValueError):
        event(recorded=datetime(2024, 3, 1))


def test_index_finds_the_event_by_its_dicom_event_id() -> None:
    index = index_resource(CASES["wado-rs"])
    assert ("type", codes.DCM, "110104") in index.tokens and index.patient == PATIENT
    assert ("entity", None, "Media/m-1") in index.tokens


def test_a_rejected_association_is_a_security_alert_of_node_authentication() -> None:
    """PS3.15 A.5.3.11: EventID EV (110113, DCM, "Security Alert"), EventActionCode E, outcome 4
    (Minor failure: the rejection kept the peer out), EventTypeCode (AuditEvent.subtype) from
    CID 403, here 110126 Node Authentication; the peer is the requestor, by its address and its
    calling AE title (Alternative User ID); the Alert Subject the peer's node (ID type 110182
    Node ID) with the RJ's reason as its Alert Description; nothing of a patient."""
    ev = CASES["association rejected"]
    assert ev["type"] == {"system": codes.DCM, "code": "110113", "display": "Security Alert"}
    assert ev["subtype"] == [{"system": codes.DCM, "code": "110126", "display": "Node Authentication"}]
    assert (ev["action"], ev["outcome"], ev["outcomeDesc"]) == ("E", "4", "calling AE title not recognised")
    assert ev["period"] == {"start": "2024-03-01T09:16:02.120Z", "end": "2024-03-01T09:16:02.120Z"}
    peer, adapter = ev["agent"]
    assert peer["requestor"] is True and peer["altId"] == "INTRUDER"
    assert peer["network"] == {"address": "127.0.0.1", "type": "2"}
    assert adapter == {"type": {"coding": [{"system": codes.DCM, "code": "110150", "display": "Application"}]},
                       "who": {"display": codes.ADAPTER_NAME}, "requestor": False}
    [subject] = ev["entity"]
    assert subject["what"]["identifier"]["value"] == "127.0.0.1"
    assert subject["what"]["identifier"]["type"]["coding"][0]["code"] == "110182"
    assert subject["detail"] == [{"type": "Alert Description", "valueString": "calling AE title not recognised"},
                                 {"type": "Occurrences", "valueString": "1"}]


def test_coalesced_rejections_say_their_count_and_their_period() -> None:
    ev = CASES["associations rejected from several peers"]
    assert ev["outcomeDesc"] == "local limit exceeded (1200 associations)"
    assert ev["period"]["start"] == "2024-03-01T09:15:00.000Z"
    assert ev["entity"][0]["detail"][1] == {"type": "Occurrences", "valueString": "1200"}
    assert "what" not in ev["entity"][0] and "network" not in ev["agent"][0] and "altId" not in ev["agent"][0]
    with pytest.raises(ValueError):
        security_alert_event(recorded=RECORDED, start=RECORDED, end=RECORDED, count=0, description="x",
                             peer_address=None, calling_ae_title=None)


def test_an_association_rejection_is_described_in_ps3_8_words() -> None:
    """PS3.8 Table 9-21: the Result, Source and Reason/Diag. of an A-ASSOCIATE-RJ."""
    assert association_rejection(1, 1, 3) == ("result 1 (rejected-permanent), source 1 (DICOM UL service-user), "
                                              "reason 3 (calling-AE-title-not-recognized)")
    assert association_rejection(2, 3, 2).endswith("reason 2 (local-limit-exceeded)")
    assert association_rejection(9, 9, 9) == "result 9, source 9, reason 9"
