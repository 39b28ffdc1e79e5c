"""Finding the DICOM audit messages (PS3.15 A.5.3) among the AuditEvents a test made."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

DCM = "http://dicom.nema.org/resources/ontology/DCM"
INSTANCES_TRANSFERRED = "110104"
QUERY = "110112"


def dicom_events(events: Iterable[dict[str, Any]], event_id: str) -> list[dict[str, Any]]:
    """The AuditEvents typed by the DICOM EventID ``event_id`` (AuditEvent.type, DCM)."""
    return [e for e in events if e.get("type", {}).get("system") == DCM and e["type"].get("code") == event_id]


def study_uids(event: dict[str, Any]) -> list[str]:
    """The Study Instance UIDs an AuditEvent names (entities identified by DCM 110180)."""
    out = []
    for entity in event.get("entity", []):
        identifier = entity.get("what", {}).get("identifier", {})
        if any(c.get("system") == DCM and c.get("code") == "110180"
               for c in identifier.get("type", {}).get("coding", [])):
            out.append(identifier["value"])
    return out


def agent_roles(event: dict[str, Any]) -> list[str]:
    """The agents' type codes, in order (client, server, user)."""
    return [a["type"]["coding"][0]["code"] for a in event["agent"]]


def sop_instance_uids(event: dict[str, Any]) -> list[str]:
    """The SOP Instance UIDs an AuditEvent names (entities identified in urn:dicom:uid, typed
    "SOP Instance UID"), without their ``urn:oid:`` prefix."""
    out = []
    for entity in event.get("entity", []):
        identifier = entity.get("what", {}).get("identifier", {})
        if identifier.get("system") == "urn:dicom:uid" and identifier.get("type", {}).get("text") == "SOP Instance UID":
            out.append(identifier["value"].removeprefix("urn:oid:"))
    return out


def patients(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The patient identifiers an AuditEvent names (entities of role 1 Patient)."""
    return [entity["what"]["identifier"] for entity in event.get("entity", [])
            if entity.get("role", {}).get("code") == "1"]
