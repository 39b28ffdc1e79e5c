"""End to end: ``python -m adapter audit`` as its own process exports the audit trail of what a
client did (NDJSON, FHIR R4 AuditEvents, oldest first), continues from where an earlier export
stopped, and leaves an AuditEvent of the export itself."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, record_emitted
from tests.support.app import PATIENT, adapter_client, as_purpose, metadata, post_photo, seen_as
from tests.support.audit import DCM, run_audit_export

#: The operating-system account running the tests, as the password database names it.
ACCOUNT = pwd.getpwuid(os.getuid()).pw_name
AUDIT_LOG_USED = "110101"


def _export(tmp_path: Path, *args: str, environ: dict[str, str | None] | None = None,
            ) -> tuple[list[dict[str, Any]], subprocess.CompletedProcess[str]]:
    """``python -m adapter audit *args`` on ``tmp_path``'s store; ``environ``: variables to set
    (or, None, to unset) for it."""
    return run_audit_export(tmp_path / "data", *args, environ={
        "ADAPTER_POLICY": str(tmp_path / "policy.yaml"), "ADAPTER_MAPPINGS_DIR": str(ROOT / "mappings"),
        **(environ or {})})


def test_the_audit_trail_is_exported_and_the_export_audited(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        receipt = post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).json()
        assert client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT")).status_code == 200
        trained = seen_as(services, "TRAIN", receipt["record"])  # as TRAIN names it
        assert client.get(f"/fhir/{trained}", headers=as_purpose("TRAIN")).status_code == 404

    events, done = _export(tmp_path)
    assert done.returncode == 0, done.stderr
    # the client's create and reads, then the export itself, recorded before the first event left
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in events[:-1]] == \
        [("create", "0"), ("read", "0"), ("read", "4")]
    export = events[-1]
    assert (export["type"], export["action"], export["outcome"]) == \
        ({"system": DCM, "code": AUDIT_LOG_USED, "display": "Audit Log Used"}, "R", "0")
    assert "audit trail export" in export["outcomeDesc"]
    assert all(e["resourceType"] == "AuditEvent" for e in events)
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(ids)
    assert f"continue with --after {ids[-1]}" in done.stderr
    assert any(ent.get("what", {}).get("identifier") == PATIENT for ent in events[0]["entity"])
    record_emitted(events)

    [user] = [a for a in export["agent"] if a.get("requestor")]
    assert "python -m adapter audit" in user["who"]["display"]
    assert user["purposeOfUse"][0]["coding"][0]["code"] == "RECORDMGT"  # the default
    # the audit log it read: a security resource, named by the URI of the store's audit table
    [audit_log] = export["entity"]
    assert audit_log["what"]["identifier"] == {
        "system": "urn:ietf:rfc:3986", "value": f"{(tmp_path / 'data' / 'adapter.db').resolve().as_uri()}#audit"}
    assert (audit_log["type"]["code"], audit_log["role"]["code"]) == ("2", "13")
    # it ran on this host, over no network: no invented address, the host by its name
    assert [a.get("network") for a in export["agent"]] == [None, {"address": socket.gethostname(), "type": "1"}]

    # a SIEM continues where it stopped: only what came after, here the second export itself
    later, done = _export(tmp_path, "--after", str(ids[-1]), "--purpose", "RECORDMGT")
    assert done.returncode == 0, done.stderr
    [export] = later
    assert export["type"]["code"] == AUDIT_LOG_USED and int(export["id"]) > ids[-1]
    assert f"after {ids[-1]}" in export["outcomeDesc"]
    [user] = [a for a in export["agent"] if a.get("requestor")]
    assert user["purposeOfUse"][0]["coding"][0]["code"] == "RECORDMGT"
    record_emitted(later)

    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _export(tmp_path, "--since", soon)[0] == []
    limited, _ = _export(tmp_path, "--limit", "1")
    assert len(limited) == 1 and limited[0]["id"] == str(ids[0])
    bad = _export(tmp_path, "--since", "yesterday")[1]
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr
    naive = _export(tmp_path, "--since", "2026-01-01T00:00:00")[1]
    assert naive.returncode == 2 and "offset" in naive.stderr
    unknown = _export(tmp_path, "--purpose", "NOPE")[1]
    assert unknown.returncode == 2 and "purpose" in unknown.stderr


def test_the_audit_trail_is_not_exported_for_a_restricted_purpose_or_a_disabled_break_glass(tmp_path: Path) -> None:
    """Review finding: the export took any purpose (its default was HOPERAT, a de-identified
    one) and wrote identified events, and took BTG with break-glass disabled, or a family's
    request. Each refusal is itself audited."""
    with adapter_client(tmp_path, policy={"breakGlass": {"enabled": False}}) as (client, _):
        assert post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).status_code == 201
    for purpose, why in (("TRAIN", "deidentified purpose"), ("HRESCH", "not for HRESCH"),
                         ("BTG", "not for BTG"), ("FAMRQT", "not for FAMRQT")):
        events, done = _export(tmp_path, "--purpose", purpose)
        assert (events, done.returncode) == ([], 2), purpose
        assert why in done.stderr and PATIENT["value"] not in done.stdout + done.stderr
    events, done = _export(tmp_path)
    assert done.returncode == 0, done.stderr
    refusals = [e for e in events if e["outcome"] == "4" and "audit trail export" in e.get("outcomeDesc", "")]
    assert [next(a for a in e["agent"] if a.get("requestor"))["purposeOfUse"][0]["coding"][0]["code"]
            for e in refusals] == ["TRAIN", "HRESCH", "BTG", "FAMRQT"]


def test_an_export_from_a_folder_with_no_store_creates_none(tmp_path: Path) -> None:
    # ops review: `audit` from the wrong folder made a new, empty database there and exported
    # 0 events with exit 0, as verify did before it was made to look for the store first
    events, done = _export(tmp_path)
    assert done.returncode == 2 and events == [], done.stdout + done.stderr
    assert "nothing to export" in done.stderr
    assert not (tmp_path / "data" / "adapter.db").exists()


def test_the_operator_is_the_account_running_the_export_whatever_the_environment_says(tmp_path: Path) -> None:
    """Audit review: the operator was taken from USER, which any caller sets (``USER="Dr Someone
    Else" python -m adapter audit`` was recorded as that operator, and with USER unset as
    "operator unknown"). It is the account of the process's real uid."""
    with adapter_client(tmp_path) as (client, _):
        assert post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).status_code == 201
    assert _export(tmp_path, environ={"USER": "Dr Someone Else", "LOGNAME": "Dr Someone Else"})[1].returncode == 0
    assert _export(tmp_path, environ={"USER": None, "LOGNAME": None})[1].returncode == 0
    events, done = _export(tmp_path)
    assert done.returncode == 0, done.stderr
    exports = [e for e in events if e["type"]["code"] == AUDIT_LOG_USED]
    assert len(exports) == 3
    for export in exports:
        [user] = [a for a in export["agent"] if a.get("requestor")]
        assert user["who"]["identifier"]["value"] == ACCOUNT
        assert user["who"]["display"] == f"operator {ACCOUNT} (python -m adapter audit)"
    assert "Someone Else" not in done.stdout and "operator unknown" not in done.stdout


def test_an_export_refused_for_an_unknown_purpose_is_audited(tmp_path: Path) -> None:
    """Audit review: ``--purpose FOO`` was refused but, unlike the other refusals, not audited."""
    with adapter_client(tmp_path) as (client, _):
        assert post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).status_code == 201
    events, done = _export(tmp_path, "--purpose", "FOO")
    assert (events, done.returncode) == ([], 2) and "purpose" in done.stderr
    events, done = _export(tmp_path)
    assert done.returncode == 0, done.stderr
    refused, export = [e for e in events if e["type"]["code"] == AUDIT_LOG_USED]
    assert (refused["action"], refused["outcome"]) == ("R", "4")
    assert refused["outcomeDesc"] == "audit trail export: unknown purpose-of-use code 'FOO'"
    [user] = [a for a in refused["agent"] if a.get("requestor")]
    assert "purposeOfUse" not in user and user["who"]["identifier"]["value"] == ACCOUNT
    assert refused["entity"] == export["entity"]  # the same audit log, which it did not get
    record_emitted(events)


def test_an_export_whose_reader_stops_reading_ends_quietly(tmp_path: Path) -> None:
    """Operations review: ``python -m adapter audit --limit 3 | head -c 1500`` ended with a
    BrokenPipeError traceback. A reader that closes the pipe ends the export quietly, as Unix
    tools do: no traceback, exit 1 (the export did not reach its reader whole, so not 0). The
    reader here closes its end before the export writes a byte: every write meets the closed pipe."""
    with adapter_client(tmp_path) as (client, _):
        assert post_photo(client, ROOT / "samples" / "wound.jpg", metadata()).status_code == 201
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    env.update(ADAPTER_DATA_DIR=str(tmp_path / "data"), ADAPTER_POLICY=str(tmp_path / "policy.yaml"),
               ADAPTER_MAPPINGS_DIR=str(ROOT / "mappings"))
    export = subprocess.Popen([sys.executable, "-m", "adapter", "audit", "--limit", "3"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert export.stdout is not None and export.stderr is not None
    export.stdout.close()
    with export.stderr:
        stderr = export.stderr.read().decode()
    assert export.wait(timeout=120) == 1, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr, stderr
