"""IHE BALP-shaped R4 AuditEvent (https://hl7.org/fhir/R4/auditevent.html,
https://profiles.ihe.net/ITI/BALP/; standards.md §2.6).

Every read, search and write, permitted or refused, becomes one AuditEvent; a DICOM exchange
(C-STORE, STOW-RS, WADO, QIDO-RS) is typed by its DICOM audit EventID instead
(adapter.mapping.audit_dicom), in the same shape otherwise. A FHIR interaction:

* type audit-event-type#rest, subtype restful-interaction#<interaction>, action R/C/U/D/E;
* outcome ``0`` (success) or, for a refusal by the consent decision, ``4`` (minor failure) with
  outcomeDesc = the reason; ``8``/``12`` for serious/major failures;
* agent[client] and agent[server] with the DICOM role IDs BALP gives: for a read (read, vread,
  history) the client is the Destination (DCM 110152) and the server the Source (DCM 110153);
  for a search (BALP Query: the query parameters flow to the server) and when the client sends
  data (create, update, delete) it is the other way;
* a DICOM peer's AE title (a DIMSE exchange) is agent[client].altId, the Alternative User ID
  DICOM gives an application participant (PS3.15 A.5.2.2);
* agent[user]: v3-ParticipationType IRCP (information recipient) for reads and searches, AUT
  (author) for writes; requestor = true; purposeOfUse = the request's purpose of use;
* an exchange the adapter itself initiates (the forwarder pushing an object to a PACS,
  ``adapter_requestor``) has no agent[user]: R4 ``agent.requestor`` marks the initiator, and DICOM
  PS3.15 A.5.3.7 has the pushing Source as UserIsRequestor, so agent[server] (the adapter, the
  Source) is the requestor and carries the purposeOfUse, and agent[client] (the peer, the
  Destination, named by ``actor``) is not;
* source.observer = the adapter, type security-source-type#4 (application server);
* a client address a trusted proxy forwarded (X-Forwarded-For, adapter.api.forwarded) is an
  agent of its own after the others (type ``urn:clinical-image-adapter:audit-agent-type#
  forwarded-client``, requestor false, its address as network): agent[client]'s network stays the
  TCP connection's peer, the proxy, as BALP and DICOM PS3.15 A.5 (Network Access Point) have it;
* entity[data] per resource: audit-entity-type#2 System Object, object-role#4 Domain Resource;
  entity[patient]: #1 Person / #1 Patient with what.identifier; entity[query] for searches:
  #2 / object-role#24 Query, ``query`` = the search request as received, base64; entity[transaction]: BALP
  BasicAuditEntityType#XrequestId with what.identifier the adapter's own id of the request, unique
  (system ``urn:clinical-image-adapter:request-id``), and the caller's X-Request-Id, when it sent
  one, as a detail ``X-Request-Id`` (two requests may carry the same);
* entity[consent] per Consent a decision rested on (BALP AuthZconsent, the R4 example
  auditevent-example-consent-authz): what = Reference(Consent/<id>/_history/<version>), type
  resource-types#Consent, role object-role#13 Security Resource (one break-glass overrode says
  so in its description); agent[user].policy = the URI of the organisation's policy applied.
* an outbox item (a forwarding job, ``POST /outbox/requeue``): #2 System Object / object-role#20
  Job, what.identifier the item's id in ``urn:clinical-image-adapter:outbox-item``, its
  destination as a detail (:func:`outbox_item_entity`).

A request that is an IHE MHD transaction the adapter serves (ITI-65 Provide Document Bundle,
ITI-67 Find Document References, ITI-68 Retrieve Document) is audited in MHD's shape for it
(adapter.mapping.audit_mhd), which changes the type and subtype and adds MHD's entities.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Sequence
from datetime import datetime

from adapter.mapping.audit_mhd import mhd_shape
from adapter.mapping.codes import (
    ADAPTER_NAME,
    AUDIT_AGENT_TYPE_SYSTEM,
    AUDIT_ENTITY_TYPE,
    AUDIT_EVENT_TYPE,
    BALP_ENTITY_TYPE,
    DCM,
    OBJECT_ROLE,
    OUTBOX_ITEM_SYSTEM,
    REQUEST_ID_SYSTEM,
    RESOURCE_TYPES,
    RESTFUL_INTERACTION,
    SECURITY_SOURCE_TYPE,
    V3_PARTICIPATION_TYPE,
)
from adapter.mapping.fhir_r4 import JSON, coding, concept, fhir_instant
from adapter.model.photo import Identifier
from adapter.model.purpose import MhdTransaction

INTERACTIONS = frozenset({"read", "vread", "history-instance", "search-type", "create", "update", "patch",
                          "delete"})
ACTIONS = frozenset({"C", "R", "U", "D", "E"})
OUTCOMES = frozenset({"0", "4", "8", "12"})
#: Interactions where the client is the Destination (BALP Read). Not a search: BALP Query types
#: the client as the Source, the query parameters flowing to the server.
_TO_CLIENT = frozenset({"read", "vread", "history-instance"})
#: Interactions whose requestor receives information (v3-ParticipationType IRCP, BALP Read and Query).
_RECIPIENT = _TO_CLIENT | {"search-type"}

_SOURCE_ROLE = coding(DCM, "110153", "Source Role ID")
_DESTINATION_ROLE = coding(DCM, "110152", "Destination Role ID")


def network_access_point(address: str) -> JSON:
    """agent.network: type 2 (IP address) for an IP, 1 (machine name) otherwise."""
    try:
        ipaddress.ip_address(address)
        kind = "2"
    except ValueError:
        kind = "1"
    return {"address": address, "type": kind}


def patient_entity(patient: Identifier) -> JSON:
    """entity[patient]: #1 Person / object-role #1 Patient, by the patient's identifier."""
    return {
        "what": {"identifier": {"system": patient.system, "value": patient.value}},
        "type": coding(AUDIT_ENTITY_TYPE, "1", "Person"),
        "role": coding(OBJECT_ROLE, "1", "Patient"),
    }


def outbox_item_entity(item_id: int, destination: str) -> JSON:
    """An outbox item, the job of forwarding one object to one destination (module docstring):
    #2 System Object / object-role #20 Job, by its id; its destination (``AE@host:port``) as a
    detail. Nothing of a patient: the record and the patient are entities of their own."""
    return {
        "what": {"identifier": {"system": OUTBOX_ITEM_SYSTEM, "value": str(item_id)}},
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "20", "Job"),
        "detail": [{"type": "destination", "valueString": destination}],
    }


def audit_event(*, interaction: str, action: str, outcome: str, outcome_desc: str | None, recorded: datetime,
                client_address: str | None, actor: str, purpose: tuple[str, str] | None, request_id: str,
                entities: Sequence[str], patient: Identifier | None, query: bytes | None,
                event_id: str | None = None, client_ae_title: str | None = None, more_entities: Sequence[JSON] = (),
                policy: str | None = None, mhd: MhdTransaction | None = None, server_url: str | None = None,
                forwarded_for: str | None = None, client_request_id: str | None = None) -> JSON:
    """One BALP-shaped AuditEvent (see the module docstring), or, for a request that is an IHE MHD
    transaction (``mhd``: ITI-65, ITI-67, ITI-68), that transaction's shape
    (adapter.mapping.audit_mhd): its type and subtypes and the entities MHD adds, all else alike.

    ``purpose`` is (system, code) of the request's purpose of use; ``client_ae_title`` the
    AE title of a DICOM peer (a DIMSE exchange); ``entities`` are literal
    references ("Media/abc"); ``query`` the raw search request of a search (its request line, and
    the body of a search by POST); ``more_entities`` go after the records (outbox items, the
    patients of an event naming several, the Consents of the decision: :func:`consent_entity`);
    ``policy``: the policy the decision applied; ``server_url``: this server's network address
    (its base URL, a URI), that of agent[server] (an MHD transaction's FHIR base instead);
    ``forwarded_for``: the client address a trusted proxy forwarded (``client_address`` is the
    proxy's); ``request_id``: the adapter's own id of the request, ``client_request_id`` the
    caller's X-Request-Id, when it sent one.

    Raises:
        ValueError: an unknown interaction, action or outcome code, or a naive ``recorded``.
    """
    if interaction not in INTERACTIONS:
        raise ValueError(f"unknown interaction {interaction!r}")
    type_ = coding(AUDIT_EVENT_TYPE, "rest", "RESTful Operation")
    subtypes = [coding(RESTFUL_INTERACTION, interaction, interaction)]
    data_role: JSON | None = None
    if mhd is not None:
        shape = mhd_shape(mhd, subtypes[0])
        type_, subtypes, data_role = shape.type_, shape.subtypes, shape.data_role
        more_entities = [*more_entities, *shape.entities]
    return assemble_audit_event(
        type_=type_, subtype=subtypes[0], more_subtypes=subtypes[1:], action=action, outcome=outcome,
        outcome_desc=outcome_desc, recorded=recorded, to_client=interaction in _TO_CLIENT,
        recipient=interaction in _RECIPIENT, client_address=client_address, client_ae_title=client_ae_title,
        actor=actor, purpose=purpose, request_id=request_id, entities=entities, patient=patient, query=query,
        event_id=event_id, more_entities=more_entities, policy=policy, data_role=data_role,
        server_url=mhd.server_url if mhd is not None and mhd.server_url else server_url,
        forwarded_for=forwarded_for, client_request_id=client_request_id)


def consent_entity(reference: str, description: str | None = None) -> JSON:
    """entity[consent]: a Consent a decision rested on (``reference``, ``Consent/<id>`` or
    version-specific), typed as BALP AuthZconsent types it (resource-types#Consent) in the role
    of a Security Resource (object-role#13: what the access control was decided by)."""
    entity: JSON = {
        "what": {"reference": reference},
        "type": coding(RESOURCE_TYPES, "Consent", "Consent"),
        "role": coding(OBJECT_ROLE, "13", "Security Resource"),
    }
    if description:
        entity["description"] = description
    return entity


def assemble_audit_event(*, type_: JSON, subtype: JSON | None, action: str, outcome: str, outcome_desc: str | None,
                         recorded: datetime, to_client: bool, recipient: bool, client_address: str | None,
                         client_ae_title: str | None, actor: str, purpose: tuple[str, str] | None, request_id: str,
                         entities: Sequence[str], patient: Identifier | None, query: bytes | None,
                         event_id: str | None = None, more_entities: Sequence[JSON] = (),
                         policy: str | None = None, adapter_requestor: bool = False,
                         more_subtypes: Sequence[JSON] = (), data_role: JSON | None = None,
                         server_url: str | None = None, forwarded_for: str | None = None,
                         client_request_id: str | None = None) -> JSON:
    """The AuditEvent of type ``type_`` (and ``subtype``): the agents, source and entities the
    module docstring describes, shared by the BALP events and the DICOM audit messages
    (adapter.mapping.audit_dicom). ``to_client``: the data flows to the client (it is the
    Destination, the adapter the Source; otherwise the other way); ``recipient``: the
    requestor receives information (IRCP; otherwise it is the author, AUT); ``more_entities``
    go after the records, before the patient; ``policy``: the requestor's policy, that which
    authorised (or refused) the activity. ``adapter_requestor``: the adapter initiated the
    exchange (it pushes to the peer, ``to_client``): agent[server] is the requestor with the
    purpose of use, agent[client] the peer named ``actor``, and there is no agent[user].
    ``more_subtypes``: after ``subtype`` (an IHE transaction's code); ``data_role``: the role
    of the records' entities when not Domain Resource (an MHD document retrieved: Report);
    ``server_url``: the server agent's network address, a URI (this server's FHIR base);
    ``forwarded_for``, ``client_request_id``: as :func:`audit_event` takes them.

    Raises:
        ValueError: an unknown action or outcome code, a naive ``recorded``, or
            ``adapter_requestor`` for an exchange whose data does not flow to the peer.
    """
    check_action_and_outcome(action, outcome)
    if adapter_requestor and not to_client:
        raise ValueError("the adapter initiates only exchanges in which it sends (it is the Source)")

    client: JSON = {
        "type": concept(_DESTINATION_ROLE if to_client else _SOURCE_ROLE),
        "who": {"display": (actor if adapter_requestor and actor else client_address) or "unknown client"},
        "requestor": False,
    }
    if client_ae_title:
        client["altId"] = client_ae_title
    if client_address:
        client["network"] = network_access_point(client_address)
    server: JSON = {
        "type": concept(_SOURCE_ROLE if to_client else _DESTINATION_ROLE),
        "who": {"display": ADAPTER_NAME},
        "requestor": adapter_requestor,
    }
    if server_url:
        server["network"] = {"address": server_url, "type": "5"}  # network-type 5: URI
    user_role = coding(V3_PARTICIPATION_TYPE, "IRCP", "information recipient") if recipient \
        else coding(V3_PARTICIPATION_TYPE, "AUT", "author (originator)")
    user: JSON = {"type": concept(user_role), "who": {"display": actor or "anonymous"}, "requestor": True}
    requestor = server if adapter_requestor else user
    if policy:
        requestor["policy"] = [policy]
    if purpose is not None:
        requestor["purposeOfUse"] = [concept(coding(purpose[0], purpose[1]))]

    entity: list[JSON] = [{
        "what": {"reference": ref},
        "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
        "role": data_role or coding(OBJECT_ROLE, "4", "Domain Resource"),
    } for ref in dict.fromkeys(entities)]
    entity.extend(more_entities)
    if patient is not None:
        entity.append(patient_entity(patient))
    if query is not None:
        entity.append({
            "type": coding(AUDIT_ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "24", "Query"),
            "query": base64.b64encode(query).decode("ascii"),
        })
    if request_id:
        transaction: JSON = {
            "what": {"identifier": {"system": REQUEST_ID_SYSTEM, "value": request_id}},
            "type": coding(BALP_ENTITY_TYPE, "XrequestId"),
        }
        if client_request_id:
            transaction["detail"] = [{"type": "X-Request-Id", "valueString": client_request_id}]
        entity.append(transaction)

    agents = [client, server] if adapter_requestor else [client, server, user]
    if forwarded_for:
        agents.append(forwarded_client_agent(forwarded_for))
    return audit_event_frame(type_=type_, subtypes=[subtype, *more_subtypes] if subtype is not None else [],
                             action=action, outcome=outcome, outcome_desc=outcome_desc, recorded=recorded,
                             agents=agents, entities=entity, event_id=event_id)


def forwarded_client_agent(address: str) -> JSON:
    """The agent of a client address a trusted proxy forwarded (module docstring): not the
    requestor (the user agent is), and not agent[client], whose network access point is the TCP
    connection's peer; only what the proxy said, by a type of the adapter's own."""
    return {
        "type": {"coding": [coding(AUDIT_AGENT_TYPE_SYSTEM, "forwarded-client", "forwarded client")],
                 "text": "client address forwarded by a trusted proxy (X-Forwarded-For)"},
        "who": {"display": address},
        "requestor": False,
        "network": network_access_point(address),
    }


def check_action_and_outcome(action: str, outcome: str) -> None:
    """ValueError unless ``action`` and ``outcome`` are AuditEvent codes (R4 audit-event-action,
    audit-event-outcome)."""
    if action not in ACTIONS:
        raise ValueError(f"unknown AuditEvent.action {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown AuditEvent.outcome {outcome!r}")


def audit_event_frame(*, type_: JSON, subtypes: Sequence[JSON], action: str, outcome: str, outcome_desc: str | None,
                      recorded: datetime, agents: list[JSON], entities: list[JSON],
                      event_id: str | None = None) -> JSON:
    """An AuditEvent of ``agents`` and ``entities``, the adapter its source (observer, an
    application server): what every event the adapter writes shares, the BALP ones, the DICOM
    audit messages and the application's own (adapter.mapping.audit_application).

    Raises:
        ValueError: an unknown action or outcome code, or a naive ``recorded``.
    """
    check_action_and_outcome(action, outcome)
    event: JSON = {"resourceType": "AuditEvent"}
    if event_id:
        event["id"] = event_id
    event["type"] = type_
    if subtypes:
        event["subtype"] = list(subtypes)
    event.update({"action": action, "recorded": fhir_instant(recorded), "outcome": outcome})
    if outcome_desc:
        event["outcomeDesc"] = outcome_desc
    event["agent"] = agents
    event["source"] = {"observer": {"display": ADAPTER_NAME},
                       "type": [coding(SECURITY_SOURCE_TYPE, "4", "Application Server")]}
    if entities:
        event["entity"] = entities
    return event


__all__ = ["ACTIONS", "INTERACTIONS", "OUTCOMES", "assemble_audit_event", "audit_event", "audit_event_frame",
           "check_action_and_outcome", "consent_entity", "forwarded_client_agent", "network_access_point", "outbox_item_entity",
           "patient_entity"]
