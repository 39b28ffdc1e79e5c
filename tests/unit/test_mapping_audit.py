"""IHE BALP-shaped R4 AuditEvents (standards.md §2.6)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from adapter.mapping import codes
from adapter.mapping.audit import audit_event, outbox_item_entity, patient_entity
from adapter.mapping.photo import index_resource
from adapter.model.photo import Identifier
from tests.support.fhir_validator import validate_r4

pytestmark = pytest.mark.unit

RECORDED = datetime(2024, 3, 1, 9, 16, 2, 120000, tzinfo=UTC)
PATIENT = Identifier(system="urn:oid:2.999.1.1", value="MRN-0001")


def event(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "interaction": "read", "action": "R", "outcome": "0", "outcome_desc": None, "recorded": RECORDED,
        "client_address": "127.0.0.1", "actor": "dr-a", "purpose": (codes.V3_ACT_REASON, "TREAT"),
        "request_id": "req-42", "entities": ["Media/m-1"], "patient": PATIENT, "query": None,
    }
    args.update(overrides)
    return audit_event(**args)


def agent_role(ev: dict[str, Any], i: int) -> str:
    return str(ev["agent"][i]["type"]["coding"][0]["code"])


def entity(ev: dict[str, Any], type_code: str) -> list[dict[str, Any]]:
    return [e for e in ev["entity"] if e["type"]["code"] == type_code]


CASES = {
    "read": event(),
    "vread": event(interaction="vread"),
    "search": event(interaction="search-type", action="E", entities=["Media/m-1", "Media/m-2"],
                    query=b"patient:identifier=urn:oid:2.999.1.1|MRN-0001&_count=20"),
    "create": event(interaction="create", action="C", entities=["Media/m-1", "Binary/b-1", "Provenance/p-1"]),
    "update": event(interaction="update", action="U", entities=["Consent/c-1"]),
    "deny": event(outcome="4", outcome_desc="no active consent for TRAIN",
                  purpose=(codes.V3_ACT_REASON, "TRAIN")),
    "sparse": event(client_address=None, purpose=None, request_id="", entities=[], patient=None, actor=""),
    "hostname": event(client_address="ward-3-tablet.local", event_id="ae-1"),
    "c-store": event(interaction="create", action="C", client_ae_title="STORESCU", request_id=""),
    "forwarded": event(forwarded_for="203.0.113.66", client_request_id="eng-7", actor="client 203.0.113.66"),
    "outbox requeue": event(
        interaction="update", action="U", purpose=(codes.V3_ACT_REASON, "RECORDMGT"), entities=["Media/m-1", "Media/m-2"],
        patient=None, outcome_desc="outbox requeue of every failed item: 2 failed item(s) back to pending",
        more_entities=[outbox_item_entity(3, "PACS@10.0.0.5:104"), outbox_item_entity(4, "PACS@10.0.0.5:104"),
                       patient_entity(PATIENT), patient_entity(Identifier(system="urn:oid:2.999.1.1", value="MRN-2"))]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_validates_with_r4b_model(name: str) -> None:
    AuditEvent.model_validate(CASES[name])


def test_validates_with_npm_validators() -> None:
    assert validate_r4(list(CASES.values())) == []


def test_read_shape() -> None:
    ev = CASES["read"]
    assert ev["type"] == {"system": codes.AUDIT_EVENT_TYPE, "code": "rest", "display": "RESTful Operation"}
    assert ev["subtype"] == [{"system": codes.RESTFUL_INTERACTION, "code": "read", "display": "read"}]
    assert (ev["action"], ev["outcome"], ev["recorded"]) == ("R", "0", "2024-03-01T09:16:02.120Z")
    assert "outcomeDesc" not in ev
    # BALP Read: the client is the Destination, the server the Source
    assert [agent_role(ev, i) for i in range(3)] == ["110152", "110153", "IRCP"]
    client, server, user = ev["agent"]
    assert client["network"] == {"address": "127.0.0.1", "type": "2"} and client["requestor"] is False
    assert server["who"] == {"display": "clinical-image-adapter"} and server["requestor"] is False
    assert user["requestor"] is True and user["who"] == {"display": "dr-a"}
    assert user["purposeOfUse"] == [{"coding": [{"system": codes.V3_ACT_REASON, "code": "TREAT"}]}]
    assert ev["source"]["observer"] == {"display": "clinical-image-adapter"}
    (data,) = entity(ev, "2")
    assert data == {"what": {"reference": "Media/m-1"},
                    "type": {"system": codes.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                    "role": {"system": codes.OBJECT_ROLE, "code": "4", "display": "Domain Resource"}}
    (patient,) = entity(ev, "1")
    assert patient["what"] == {"identifier": {"system": PATIENT.system, "value": PATIENT.value}}
    assert patient["role"]["code"] == "1"
    (transaction,) = entity(ev, "XrequestId")
    assert transaction["type"]["system"] == codes.BALP_ENTITY_TYPE
    # the adapter's own id of the request; no caller's X-Request-Id here
    assert transaction["what"] == {"identifier": {"system": codes.REQUEST_ID_SYSTEM, "value": "req-42"}}
    assert "detail" not in transaction


def test_a_forwarded_client_is_an_agent_of_its_own_the_peer_stays_the_network_access_point() -> None:
    """Audit review F1: the address a trusted proxy forwarded is recorded beside the TCP peer,
    not instead of it; the caller's X-Request-Id beside the adapter's own id."""
    ev = CASES["forwarded"]
    client, _, user, forwarded = ev["agent"]
    assert client["network"] == {"address": "127.0.0.1", "type": "2"}
    assert forwarded == {
        "type": {"coding": [{"system": codes.AUDIT_AGENT_TYPE_SYSTEM, "code": "forwarded-client",
                             "display": "forwarded client"}],
                 "text": "client address forwarded by a trusted proxy (X-Forwarded-For)"},
        "who": {"display": "203.0.113.66"}, "requestor": False,
        "network": {"address": "203.0.113.66", "type": "2"}}
    assert user["requestor"] is True
    (transaction,) = entity(ev, "XrequestId")
    assert transaction["what"] == {"identifier": {"system": codes.REQUEST_ID_SYSTEM, "value": "req-42"}}
    assert transaction["detail"] == [{"type": "X-Request-Id", "valueString": "eng-7"}]


def test_create_swaps_client_and_server_roles() -> None:
    ev = CASES["create"]
    assert [agent_role(ev, i) for i in range(3)] == ["110153", "110152", "AUT"]
    assert [e["what"]["reference"] for e in entity(ev, "2")] == ["Media/m-1", "Binary/b-1", "Provenance/p-1"]


def test_search_types_the_client_as_the_source_of_the_query() -> None:
    """BALP Query (IHE.BasicAudit.Query): the client is DCM 110153 Source Role ID and the server
    110152 Destination Role ID (the query parameters flow to the server), unlike Read."""
    ev = CASES["search"]
    assert [agent_role(ev, i) for i in range(3)] == ["110153", "110152", "IRCP"]


def test_search_records_the_query() -> None:
    ev = CASES["search"]
    assert ev["subtype"][0]["code"] == "search-type" and ev["action"] == "E"
    (query,) = [e for e in ev["entity"] if e.get("role", {}).get("code") == "24"]
    assert base64.b64decode(query["query"]).startswith(b"patient:identifier=")


def test_deny_is_a_minor_failure_with_the_reason() -> None:
    ev = CASES["deny"]
    assert (ev["outcome"], ev["outcomeDesc"]) == ("4", "no active consent for TRAIN")


def test_sparse_event() -> None:
    ev = CASES["sparse"]
    assert "entity" not in ev and "network" not in ev["agent"][0]
    assert "purposeOfUse" not in ev["agent"][2]
    assert CASES["hostname"]["agent"][0]["network"]["type"] == "1"
    assert CASES["hostname"]["id"] == "ae-1"


def test_a_dicom_peer_is_named_by_its_ae_title() -> None:
    """DICOM PS3.15 A.5.2.2: the Alternative User ID of a DICOM application participant is its
    AE title; R4 AuditEvent.agent.altId holds it, on the agent that is the peer."""
    client, server, _ = CASES["c-store"]["agent"]
    assert client["altId"] == "STORESCU" and "altId" not in server
    assert "altId" not in CASES["read"]["agent"][0]


def test_an_outbox_requeue_names_each_item_as_a_job_and_each_patient() -> None:
    """POST /outbox/requeue (BALP Update shape, action U): the outbox items requeued are jobs
    (audit-entity-type 2 System Object, object-role 20 Job) by their id, with their destination;
    the records and each patient are named as in any event, the patients after the items."""
    ev = CASES["outbox requeue"]
    assert ev["subtype"][0]["code"] == "update" and ev["action"] == "U"
    assert [agent_role(ev, i) for i in range(3)] == ["110153", "110152", "AUT"]
    jobs = [e for e in ev["entity"] if e.get("role", {}).get("code") == "20"]
    assert jobs[0] == {
        "what": {"identifier": {"system": codes.OUTBOX_ITEM_SYSTEM, "value": "3"}},
        "type": {"system": codes.AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": codes.OBJECT_ROLE, "code": "20", "display": "Job"},
        "detail": [{"type": "destination", "valueString": "PACS@10.0.0.5:104"}],
    }
    assert [e["what"]["identifier"]["value"] for e in ev["entity"] if e.get("role", {}).get("code") == "1"] == \
        ["MRN-0001", "MRN-2"]
    assert [e["what"]["reference"] for e in ev["entity"] if e.get("role", {}).get("code") == "4"] == \
        ["Media/m-1", "Media/m-2"]
    assert ev["entity"][-1]["type"]["code"] == "XrequestId"


def test_refuses_unknown_codes() -> None:
    for bad in ({"interaction": "frobnicate"}, {"action": "X"}, {"outcome": "1"}):
        with pytest.raises(ValueError):
            event(**bad)
    with pytest.raises(ValueError):
        event(recorded=datetime(2024, 3, 1))


def test_index() -> None:
    index = index_resource(CASES["read"])
    assert index.patient == PATIENT and index.date == RECORDED
    assert ("entity", None, "Media/m-1") in index.tokens and ("action", None, "R") in index.tokens
