"""End to end: what ``python -m adapter serve`` writes to its output, at the most verbose level the
settings allow (DEBUG), holds none of the patient data it was sent or read: not in the access log
(paths hold DICOM UIDs and whatever a client put in an id), not in the C-STORE and STOW-RS lines,
not in pynetdicom's DEBUG dump of each DIMSE message, and not in the traceback of an unexpected
error (its message quoted the stored value it failed on). Found by the operations review."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import httpx

from tests.conftest import require_or_skip
from tests.support.dcmtk import dcmtk_missing, echoscu, storescu
from tests.support.dicom_files import jpeg, sc_file
from tests.support.server import running_adapter

MRN = "90417733"
FAMILY, GIVEN, BIRTH = "Vandersloot", "Hermione", "19470314"
NOTE, COLLEAGUE = "Zebulon laceration", "Xanthippe Quarrington"
# a UID of the kind some modalities build: root, then the patient's ID and birth date
STUDY = f"1.2.826.0.1.3680043.9.{MRN}.{BIRTH}"
SECRETS = (MRN, FAMILY, GIVEN, BIRTH, NOTE, "Zebulon", "Quarrington")
TREAT = {"X-Purpose-Of-Use": "TREAT"}


def test_debug_logs_hold_no_patient_data(tmp_path: Path) -> None:
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    with running_adapter(tmp_path, ready=lambda s: echoscu(s.dicom_port, "ADAPTER", calling_aet="STORESCU",
                                                           check=False).returncode == 0,
                         ADAPTER_LOG_LEVEL="DEBUG", ADAPTER_DICOM_ALLOWED_AE_TITLES="STORESCU",
                         ADAPTER_STOW_TRUSTED_SENDERS="127.0.0.1") as server:  # STOW-RS: the PACS
        meta = {"patient": {"system": "urn:oid:2.999.1.1", "value": MRN}, "kind": "clinical",
                "source": "colleague-internal", "note": NOTE, "consent": {"purposes": ["TREAT"], "method": "verbal"},
                "colleague": {"name": COLLEAGUE, "organisation": "Other Trust", "discussionNote": NOTE}}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            posted = http.post("/photos", files={"file": ("p.jpg", jpeg(), "image/jpeg"),
                                                 "metadata": (None, json.dumps(meta), "application/json")})
            assert posted.status_code == 201, posted.text
            media_id = posted.json()["record"].split("/")[1]
            assert http.get(f"/fhir/Patient/{MRN}", headers=TREAT).status_code == 404  # an id a client chose
            # C-STORE: names, birth date and UIDs naming the patient; and a refusal quoting its issuer
            stored, refused = tmp_path / "stored.dcm", tmp_path / "refused.dcm"
            for path, uid, issuer in ((stored, f"{STUDY}.1.1", "HOSP"), (refused, f"{STUDY}.1.2", f"{FAMILY}ISSUER")):
                sc_file(path, PatientID=MRN, PatientName=f"{FAMILY}^{GIVEN}", PatientBirthDate=BIRTH,
                        StudyInstanceUID=STUDY, SeriesInstanceUID=f"{STUDY}.1", SOPInstanceUID=uid,
                        IssuerOfPatientID=issuer)
            assert storescu(server.dicom_port, "ADAPTER", [stored]).returncode == 0
            storescu(server.dicom_port, "ADAPTER", [refused], check=False)  # refused: 0xC000
            # STOW-RS: one stored, one refused (its study is not the URL's)
            stowed = tmp_path / "stowed.dcm"
            sc_file(stowed, PatientID=MRN, PatientName=f"{FAMILY}^{GIVEN}", PatientBirthDate=BIRTH,
                    StudyInstanceUID=STUDY, SeriesInstanceUID=f"{STUDY}.2", SOPInstanceUID=f"{STUDY}.2.1")
            part = b"--P\r\nContent-Type: application/dicom\r\n\r\n" + stowed.read_bytes() + b"\r\n--P--\r\n"
            stow = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=P'}
            assert http.post(f"/dicomweb/studies/{STUDY}9", content=part, headers=stow).status_code == 409
            assert http.post("/dicomweb/studies", content=part, headers=stow).status_code == 200
            # DICOMweb: the study's UID in the path, names in the query
            assert http.get(f"/dicomweb/studies/{STUDY}/series", headers=TREAT).status_code == 200
            assert http.get("/dicomweb/studies", params={"PatientName": f"{FAMILY}*"}, headers=TREAT).status_code == 200
            # an unexpected error whose message quotes a stored value (a damaged row)
            with sqlite3.connect(tmp_path / "data" / "adapter.db") as db:
                db.execute("UPDATE resources SET last_updated = ? WHERE resource_type = 'Media' AND id = ?",
                           (f"{FAMILY} {MRN}", media_id))
            failed = http.get(f"/fhir/Media/{media_id}", headers=TREAT)
            assert failed.status_code == 500 and failed.headers["connection"] == "close"
            # the client's next request does not go into the connection uvicorn closes after it
            assert http.get("/fhir/metadata").status_code == 200
    logged = server.log.read_text()
    leaked = [(secret, line) for line in logged.splitlines() for secret in SECRETS if secret in line]
    assert not leaked, leaked[:5]
    assert "unexpected error (ValueError)" in logged and "Traceback" in logged  # the bug is still located
    assert "DEBUG pynetdicom" in logged and "refused (0xC000" in logged  # the level was DEBUG
    assert "GET /fhir/{resource_type}/{id} 500" in logged  # the access log names the route and the status


def test_json_logs_are_one_object_a_line_and_as_safe(tmp_path: Path) -> None:
    """Ops review 8: logs were plain text only, for a log collector to parse, and every start
    printed pikepdf's INFO line about its logger bridge. ``ADAPTER_LOG_FORMAT=json`` writes each
    record as one JSON object (time, level, logger, message; an exception as its frames and
    types, its message left out, as in text); pikepdf says nothing at INFO."""
    with running_adapter(tmp_path, ADAPTER_LOG_FORMAT="json", ADAPTER_DICOM_ENABLED="false") as server:
        meta = {"patient": {"system": "urn:oid:2.999.1.1", "value": MRN}, "kind": "clinical", "source": "clinician",
                "consent": {"purposes": ["TREAT"], "method": "verbal"}}
        with httpx.Client(base_url=server.url, timeout=30) as http:
            posted = http.post("/photos", files={"file": ("p.jpg", jpeg(), "image/jpeg"),
                                                 "metadata": (None, json.dumps(meta), "application/json")})
            assert posted.status_code == 201, posted.text
            media_id = posted.json()["record"].split("/")[1]
            with sqlite3.connect(tmp_path / "data" / "adapter.db") as db:
                db.execute("UPDATE resources SET last_updated = ? WHERE resource_type = 'Media' AND id = ?",
                           (f"{FAMILY} {MRN}", media_id))
            assert http.get(f"/fhir/Media/{media_id}", headers=TREAT).status_code == 500
    records = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "adapter.access" and r["message"].startswith("POST /photos 201") for r in records)
    failures = [r for r in records if "exception" in r]
    assert failures and all("Traceback" in r["exception"] for r in failures)
    assert MRN not in json.dumps(records) and FAMILY not in json.dumps(records)
    assert not [r for r in records if r["logger"].startswith("pikepdf")]


def test_an_undefined_character_set_is_said_in_the_log_and_pydicom_s_warnings_come_out_in_its_format(
        tmp_path: Path) -> None:
    """The PACS review (F6): an object whose Specific Character Set is no defined term (PS3.3
    C.12.1.1.2; ``ISO_IR 999``) was stored with its text decoded by pydicom's guess, silently but
    for pydicom's own lines and a raw Python warning (file, line and source line) on stderr that
    broke ``ADAPTER_LOG_FORMAT=json``'s one object a line. It is still stored; the adapter says
    in its log that the value is no defined term (the value named: not patient data), and
    Python warnings go through its logging, in its format."""
    import warnings

    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    path = tmp_path / "charset.dcm"
    with warnings.catch_warnings():  # pydicom warns writing an unknown encoding's text
        warnings.simplefilter("ignore")
        sc_file(path, SpecificCharacterSet="ISO_IR 999", InstitutionName=b"H\xf4pital " + FAMILY.encode(),
                PatientName=b"M\xfcller^" + GIVEN.encode() + b" ")
    with running_adapter(tmp_path, ready=lambda s: echoscu(s.dicom_port, "ADAPTER", calling_aet="STORESCU",
                                                           check=False).returncode == 0,
                         ADAPTER_LOG_FORMAT="json", ADAPTER_DICOM_ALLOWED_AE_TITLES="STORESCU") as server:
        done = storescu(server.dicom_port, "ADAPTER", [path], calling_aet="STORESCU", extra=["-v"])
        assert "Received Store Response (Success)" in done.stderr + done.stdout, done.stderr
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line one JSON object
    said = [r for r in records if r["logger"].startswith("adapter.") and "ISO_IR 999" in r["message"]]
    assert said and said[0]["level"] == "WARNING" and "not a defined term" in said[0]["message"], records
    assert any(r["logger"] == "py.warnings" for r in records), records
    assert FAMILY not in json.dumps(records) and GIVEN not in json.dumps(records)


def test_text_log_times_are_utc_with_their_offset_whatever_the_hosts_zone(tmp_path: Path) -> None:
    """Ops review 7: text lines carried the host's local time without an offset (an hour of log
    ambiguous at the autumn DST change, and a join with the audit trail needing the host's zone):
    ISO 8601 in UTC with its offset now, as the JSON format writes it."""
    import re

    with running_adapter(tmp_path, ADAPTER_DICOM_ENABLED="false", TZ="America/New_York") as server:
        lines = server.log.read_text().splitlines()
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (INFO|WARNING|ERROR|DEBUG) ")
    assert lines and all(stamp.match(line) for line in lines if line[:1].isdigit()), lines[:5]
