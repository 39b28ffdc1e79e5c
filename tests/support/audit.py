"""Finding the DICOM audit messages (PS3.15 A.5.3) among the AuditEvents a test made, and the
audit trail as ``python -m adapter audit`` exports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from adapter.store.audit_chain import chain_key
from tests.conftest import ROOT, record_emitted

DCM = "http://dicom.nema.org/resources/ontology/DCM"
#: The audit chain key of a store a test opens itself (open_store reads the data folder's audit.key).
TEST_AUDIT_KEY = chain_key(b"test audit key")
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


def caller_request_ids(event: dict[str, Any]) -> list[str]:
    """The X-Request-Id the caller sent, as an AuditEvent records it: a detail of its XrequestId
    entity, beside the adapter's own id of the request (its what.identifier)."""
    return [d["valueString"] for e in event.get("entity", []) if e.get("type", {}).get("code") == "XrequestId"
            for d in e.get("detail", []) if d.get("type") == "X-Request-Id"]


def own_request_ids(event: dict[str, Any]) -> list[str]:
    """The adapter's own id of the request an AuditEvent records (its XrequestId entity's identifier)."""
    return [e["what"]["identifier"]["value"] for e in event.get("entity", [])
            if e.get("type", {}).get("code") == "XrequestId"]


def run_audit_export(data_dir: Path, *args: str, environ: Mapping[str, str | None] | None = None,
                     ) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    """``python -m adapter audit *args`` on the store in ``data_dir``, from the repository root
    with no ADAPTER_* variable of this process; ``environ``: variables to set (or, None, to unset)
    for it. The events it wrote (NDJSON) and the finished process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env["ADAPTER_DATA_DIR"] = str(data_dir)
    for name, value in (environ or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    done = subprocess.run([sys.executable, "-m", "adapter", "audit", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    return [json.loads(line) for line in done.stdout.splitlines()], done


def exported_trail(data_dir: Path, environ: Mapping[str, str | None] | None = None) -> list[dict[str, Any]]:
    """The whole audit trail of the store in ``data_dir``, as the export gives it (it must
    succeed); its events go to the FHIR validation."""
    events, done = run_audit_export(data_dir, environ=environ)
    assert done.returncode == 0, done.stderr
    record_emitted(events)
    return events
