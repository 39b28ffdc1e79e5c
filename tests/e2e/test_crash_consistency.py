"""End to end: ``python -m adapter serve`` killed with SIGKILL at seeded random moments while photos
(``POST /photos``), transaction Bundles, C-STOREs (dcmtk's storescu), STOW-RS requests and Consent
withdrawals arrive at once, then restarted on the same data folder (SQLite, with one HTTP worker and
with two; PostgreSQL). Before each restart every start-up fill (search index, StudyDates, QIDO-RS keys and
attributes, released UIDs, pseudonyms) is given its work again and a start doing it is killed too
(the very first start, creating the schema, as well). After every restart:

- the start-up fills derived exactly what they had before;
- what was answered (201, a transaction-response, C-STORE Success, a withdrawal's 200) is there, and
  in force;
- nothing is half-visible: every receipt's resources are all stored, every record, Binary and
  Provenance belongs to one receipt and every receipt to one DICOM instance, every image has its
  bytes with the digest it is stored under (``verify --digests``: 0 problems);
- whatever got no answer is sent again as a client does (the same Idempotency-Key and bytes, or the
  same bytes without a key; the same Bundle; the same SOP Instance; the same STOW-RS request) and
  answered as stored, once: never two records, never an error that sticks; a withdrawal not
  answered is in force wholly (its version and its audit) or not at all;
- the audit trail (``python -m adapter audit``) has no gap in its sequence numbers, audits the
  creation of every resource stored and names none that was not committed.

With a forwarder sending to a PACS, every photo arrives, at most one object per kill twice, and
each disclosure is audited once. ``CRASH_SEED`` (an integer) replaces the fixed seeds, to explore
or replay a run: the moments of the kills and the photos come from it (not the threads' timing).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from PIL import Image
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.conftest import ROOT, require_or_skip
from tests.support.app import PATIENT, consent_resource
from tests.support.dcmtk import StoreSCP, dcmtk_missing, storescu, wrap_jpeg_as_sc
from tests.support.mhd import provide_document_bundle
from tests.support.orthanc import free_ports
from tests.support.postgres import named_postgres_schema, postgres_schema
from tests.support.server import RunningAdapter, running_adapter

TREAT = {"X-Purpose-Of-Use": "TREAT"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}
RECORD_TYPES = ("Media", "DocumentReference")


def _picture(rng: random.Random) -> bytes:
    """A small baseline JPEG of seeded noise: every one differs (a new photo, not a retry)."""
    width, height = rng.randrange(48, 97, 8), rng.randrange(32, 73, 8)
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


@dataclass
class Attempt:
    """One request as a client made it, kept to be sent again as it was, and what it was answered."""

    kind: str  # photo, bundle, cstore, stow, withdraw
    payload: Any
    key: str | None = None
    answers: list[Any] = field(default_factory=list)  # each try's status (None: no answer)
    result: Any = None  # the answered receipt / transaction-response / SOP Instance UID / Consent

    @property
    def answered(self) -> bool:
        return bool(self.answers) and self.answers[-1] is not None


class Clients:
    """Concurrent clients of one running adapter; each stops at its first request left without an
    answer (the adapter was killed), so every attempt is either answered or to be sent again."""

    def __init__(self, seed: str, folder: Path, consents: list[dict[str, Any]]) -> None:
        self.seed = seed  # each client draws from its own generator: the photos do not depend on timing
        self.folder = folder
        self.attempts: list[Attempt] = []
        self.to_withdraw = list(consents)
        self._lock = threading.Lock()

    # -- what each client sends -------------------------------------------------------------

    def new_photo(self, rng: random.Random) -> Attempt:
        picture, keyed = _picture(rng), rng.random() < 0.7
        meta = {"patient": dict(PATIENT), "kind": "clinical", "source": "clinician",
                "consent": {"purposes": ["TREAT"], "method": "verbal"}}
        return Attempt("photo", (picture, meta), key=str(uuid.UUID(int=rng.getrandbits(128))) if keyed else None)

    def new_bundle(self, rng: random.Random) -> Attempt:
        picture = _picture(rng)
        return Attempt("bundle", provide_document_bundle(picture))

    def _object(self, rng: random.Random) -> tuple[Path, str]:
        """A JPEG Secondary Capture of the patient, written to a file; its SOP Instance UID."""
        path = self.folder / f"{uuid.UUID(int=rng.getrandbits(128)).hex}.dcm"
        path.write_bytes(wrap_jpeg_as_sc(_picture(rng), patient_id=PATIENT["value"]))
        ds = pydicom.dcmread(path)
        ds.IssuerOfPatientID = "HOSP"
        ds.InstitutionName = "Example Hospital Radiology"
        ds.save_as(path, enforce_file_format=True)
        return path, str(ds.SOPInstanceUID)

    def new_cstore(self, rng: random.Random) -> Attempt:
        path, uid = self._object(rng)
        return Attempt("cstore", path, result=uid)

    def new_stow(self, rng: random.Random) -> Attempt:
        """A STOW-RS request of two objects (each stored in its own transaction)."""
        objects = [self._object(rng) for _ in range(2)]
        return Attempt("stow", [path for path, _ in objects], result=[uid for _, uid in objects])

    def new_withdrawal(self, _rng: random.Random) -> Attempt | None:
        with self._lock:
            if not self.to_withdraw:
                return None
            consent = self.to_withdraw.pop(0)
        return Attempt("withdraw", {**consent, "status": "inactive"})

    # -- sending (also again, after a restart) -----------------------------------------------

    @staticmethod
    def send(server: RunningAdapter, attempt: Attempt) -> None:
        try:
            if attempt.kind == "photo":
                picture, meta = attempt.payload
                headers = {"Idempotency-Key": attempt.key} if attempt.key else {}
                answer = httpx.post(f"{server.url}/photos", timeout=30, headers=headers, files={
                    "file": ("p.jpg", picture, "image/jpeg"),
                    "metadata": (None, json.dumps(meta), "application/json")})
                attempt.answers.append(answer.status_code)
                attempt.result = answer.json()
            elif attempt.kind == "bundle":
                answer = httpx.post(f"{server.url}/fhir", timeout=30, headers=FHIR_JSON,
                                    content=json.dumps(attempt.payload))
                attempt.answers.append(answer.status_code)
                attempt.result = answer.json()
            elif attempt.kind == "stow":
                boundary = "crash-review-boundary"
                body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                                + path.read_bytes() + b"\r\n" for path in attempt.payload) + f"--{boundary}--\r\n".encode()
                answer = httpx.post(f"{server.url}/dicomweb/studies", timeout=30, content=body, headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                    "Accept": "application/dicom+json"})
                attempt.answers.append(answer.status_code)
            elif attempt.kind == "withdraw":
                consent = attempt.payload
                answer = httpx.put(f"{server.url}/fhir/Consent/{consent['id']}", timeout=30, headers=FHIR_JSON,
                                   content=json.dumps(consent))
                attempt.answers.append(answer.status_code)
            else:
                done = storescu(server.dicom_port, "ADAPTER", [attempt.payload], timeout=60, check=False)
                # storescu exits 0 only when the C-STORE got Success; anything else (no
                # association, one cut off, a failure status) counts as no answer: sent again,
                # it must then get Success
                attempt.answers.append(0 if done.returncode == 0 else None)
        except (httpx.TransportError, json.JSONDecodeError):
            attempt.answers.append(None)

    def until_killed(self, server: RunningAdapter, kinds: list[str], after: float) -> None:
        """A client of each of ``kinds`` sends to ``server`` until the adapter is SIGKILLed,
        ``after`` seconds from their start; each ends at its request left without an answer."""
        stop = threading.Event()
        threads = [threading.Thread(target=self.run, args=(server, kind, i, stop)) for i, kind in enumerate(kinds)]
        for thread in threads:
            thread.start()
        time.sleep(after)
        _kill(server)
        stop.set()
        for thread in threads:
            thread.join(90)

    def run(self, server: RunningAdapter, kind: str, number: int, stop: threading.Event) -> None:
        rng = random.Random(f"{self.seed}/{kind}/{number}")
        while not stop.is_set():
            attempt = {"photo": self.new_photo, "bundle": self.new_bundle, "cstore": self.new_cstore,
                       "stow": self.new_stow, "withdraw": self.new_withdrawal}[kind](rng)
            if attempt is None:
                return
            with self._lock:
                self.attempts.append(attempt)
            self.send(server, attempt)
            if not attempt.answered:
                return
            if kind == "withdraw":
                stop.wait(0.05)


def _kill(server: RunningAdapter) -> None:
    """SIGKILL the adapter's whole process group, as a power cut of the process would."""
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@contextmanager
def _adapter(workdir: Path, data: Path, env: dict[str, str]) -> Iterator[RunningAdapter]:
    workdir.mkdir(parents=True, exist_ok=True)
    # the STOW-RS client is the PACS, trusted as its C-STOREs are (ADAPTER_STOW_TRUSTED_SENDERS)
    with running_adapter(workdir, ADAPTER_DATA_DIR=str(data), ADAPTER_DICOM_ALLOWED_AE_TITLES="STORESCU",
                         ADAPTER_AE_TITLE="ADAPTER", ADAPTER_STOW_TRUSTED_SENDERS="127.0.0.1", **env) as server:
        yield server


def _killed_start(workdir: Path, data: Path, env: dict[str, str], after: float) -> None:
    """Start ``serve`` and SIGKILL it ``after`` seconds later, wherever its start has got to
    (creating the schema, opening the store, the start-up fills, serving)."""
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_ports(2)
    full = {**os.environ, "ADAPTER_HTTP_PORT": str(http_port), "ADAPTER_DICOM_PORT": str(dicom_port),
            "ADAPTER_DATA_DIR": str(data), "ADAPTER_DICOM_ALLOWED_AE_TITLES": "STORESCU", "TMPDIR": str(workdir),
            **env}
    with (workdir / "server.log").open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "adapter", "serve"], cwd=ROOT, env=full, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(after)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


#: What the start-up fills derive from the records and objects (search index, StudyDates, QIDO-RS
#: match keys and attributes, released UIDs, pseudonyms) and the fingerprints saying it is done.
_DERIVED = (
    "SELECT resource_type, id, param, system, code FROM tokens ORDER BY 1, 2, 3, 4, 5",
    "SELECT resource_type, id, date, status, creation FROM resources ORDER BY 1, 2",
    ("SELECT sop_instance_uid, study_date, patient_name_key, patient_name_ideographic_key, "
     "patient_name_phonetic_key, study_description_key, series_number, instance_number, image_rows, "
     "image_columns, bits_allocated, number_of_frames, attributes_read, referring_physician_name, "
     "patient_birth_date, patient_sex, study_id FROM dicom_instances ORDER BY 1"),
    ("SELECT view, sop_instance_uid, study_instance_uid, series_instance_uid, released_sop_instance_uid "
     "FROM dicom_released_uids ORDER BY 1, 2"),
    "SELECT pseudonym, patient_system, patient_value FROM patient_pseudonyms ORDER BY 1",
    "SELECT name, fingerprint FROM key_fingerprints ORDER BY 1",
)

#: Every start-up fill made to run again, as after an upgrade that changes what they derive.
_STALE = (
    # the fills' fingerprints; not the pseudonym key's own, which names the key, nor the data
    # folder's, which names the folder (adapter.services.data_folder), nor the audit chain's key and start
    # (adapter.store.audit_chain, audit_start): no derivation
    ("UPDATE key_fingerprints SET fingerprint = 'stale' "
     "WHERE name NOT IN ('pseudonym-key', 'data-folder', 'audit-key', 'audit-start', 'audit-start-mac')"),
    "DELETE FROM tokens WHERE resource_type IN ('Media', 'DocumentReference')",
    ("UPDATE resources SET date = NULL, status = NULL, creation = NULL "
     "WHERE resource_type IN ('Media', 'DocumentReference')"),
    "UPDATE dicom_instances SET study_date = NULL WHERE blob_sha256 IS NULL",
    ("UPDATE dicom_instances SET patient_name_key = NULL, patient_name_ideographic_key = NULL, "
     "patient_name_phonetic_key = NULL, study_description_key = NULL, series_number = NULL, instance_number = NULL, "
     "image_rows = NULL, image_columns = NULL, bits_allocated = NULL, number_of_frames = NULL, "
     "attributes_read = NULL, referring_physician_name = NULL, patient_birth_date = NULL, patient_sex = NULL, "
     "study_id = NULL"),
    "DELETE FROM dicom_released_uids",
    "DELETE FROM patient_pseudonyms",
)


def _derived(db_url: str) -> list[list[Any]]:
    return [[tuple(row) for row in _rows(db_url, sql)] for sql in _DERIVED]


def _make_stale(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            for sql in _STALE:
                conn.execute(text(sql))
    finally:
        engine.dispose()


def _cli(data: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ADAPTER_")}
    full.update(ADAPTER_DATA_DIR=str(data), **env)
    return subprocess.run([sys.executable, "-m", "adapter", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=120, check=False)


# -- the invariants -----------------------------------------------------------------------------


def _rows(db_url: str, sql: str) -> list[Any]:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql)).all())
    finally:
        engine.dispose()


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _check_store(db_url: str) -> dict[str, Any]:
    """Nothing half-visible, read from the database itself: every receipt names resources that
    are all there, every record, Binary and Provenance belongs to one receipt, every DICOM instance
    to a record; return what is stored, for the other checks."""
    resources = {(rt, rid): (version, _json(doc)) for rt, rid, version, doc in
                 _rows(db_url, "SELECT resource_type, id, version_id, json FROM resources")}
    receipts = [_json(r) for (r,) in _rows(db_url, "SELECT receipt FROM receipts")]
    owned: dict[str, int] = {}
    for receipt in receipts:
        for ref in (receipt["record"], receipt["binary"], receipt["provenance"], *(receipt.get("consents") or ())):
            rtype, _, rid = ref.partition("/")
            assert (rtype, rid) in resources, f"a receipt names {rtype}, which is not stored"
            owned[ref] = owned.get(ref, 0) + 1
    for (rtype, rid) in resources:
        if rtype in (*RECORD_TYPES, "Binary", "Provenance"):
            assert owned.get(f"{rtype}/{rid}") == 1, f"{rtype}/{rid} belongs to {owned.get(f'{rtype}/{rid}', 0)} receipts"
    instances = _rows(db_url, "SELECT sop_instance_uid, record_type, record_id FROM dicom_instances")
    assert len(instances) == len(receipts), (len(instances), len(receipts))
    for _uid, rtype, rid in instances:
        assert (rtype, rid) in resources
    history = {(rt, rid, v) for rt, rid, v in _rows(db_url, "SELECT resource_type, id, version_id FROM resource_history")}
    for (rtype, rid), (version, _doc) in resources.items():
        assert all((rtype, rid, v) in history for v in range(1, version + 1)), f"{rtype} lacks history"
    return {"resources": resources, "receipts": receipts,
            "instances": {uid: f"{rtype}/{rid}" for uid, rtype, rid in instances}}


def _check_audit(data: Path, env: dict[str, str], stored: dict[str, Any]) -> list[dict[str, Any]]:
    """The export: sequence numbers 1..N without a gap; every create or update it records names
    resources that are stored, every resource stored is named by a create, every Consent version
    after the first by its one update event."""
    done = _cli(data, env, "audit")
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    seqs = [int(e["id"]) for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), f"gaps in the audit sequence: {_gaps(seqs)}"
    resources = stored["resources"]
    updates: dict[str, int] = {}
    created: set[tuple[str, str]] = set()
    for event in events:
        if event.get("outcome") != "0" or event.get("action") not in ("C", "U"):
            continue
        for entity in event.get("entity") or ():
            ref = (entity.get("what") or {}).get("reference") or ""
            rtype, _, rid = ref.partition("/")
            rid, _, version = rid.partition("/_history/")  # a Consent write names the version it wrote
            if rtype in (*RECORD_TYPES, "Binary", "Provenance", "Consent"):
                assert (rtype, rid) in resources, f"the audit names {rtype}/… that was never committed"
                assert not version or int(version) <= resources[(rtype, rid)][0], \
                    f"the audit names a version of {rtype}/… that was never committed"
                if event["action"] == "C":
                    created.add((rtype, rid))
                if event["action"] == "U" and rtype == "Consent":
                    updates[rid] = updates.get(rid, 0) + 1
    assert set(resources) <= created, f"{len(set(resources) - created)} resource(s) stored with no create audited"
    for (rtype, rid), (version, _doc) in resources.items():
        if rtype == "Consent":
            assert updates.get(rid, 0) == version - 1, f"Consent version {version} with {updates.get(rid, 0)} updates"
    return events


def _gaps(seqs: list[int]) -> list[int]:
    present = set(seqs)
    return [n for n in range(1, max(seqs, default=0) + 1) if n not in present][:20]


def _check_answered(server: RunningAdapter, attempts: list[Attempt], stored: dict[str, Any]) -> None:
    """What a client was answered is there after the restart: each receipt's record and its
    image (by the digest the receipt gave), each transaction's, each C-STORE's, each withdrawal."""
    with httpx.Client(base_url=server.url, headers=TREAT, timeout=30) as http:
        for attempt in attempts:
            if not attempt.answered:
                continue
            if attempt.kind == "photo":
                receipt = attempt.result
                assert attempt.answers[-1] == 201 and receipt["safeToDeleteFromDevice"] is True, attempt.result
                assert http.get(f"/fhir/{receipt['record']}").status_code == 200
                image = http.get(f"/fhir/{receipt['binary']}", headers={"Accept": "image/*"})
                assert image.status_code == 200
                assert hashlib.sha256(image.content).hexdigest() == receipt["sha256"]["stored"]
            elif attempt.kind == "bundle":
                assert attempt.answers[-1] == 200, attempt.result
                locations = [e["response"].get("location") for e in attempt.result["entry"]]
                records = [loc for loc in locations if loc and loc.split("/")[0] in (*RECORD_TYPES, "Binary")]
                assert len(records) == 2, locations
                for location in records:
                    rtype, rid = location.split("/")[:2]
                    assert (rtype, rid) in stored["resources"]
                    assert http.get(f"/fhir/{rtype}/{rid}").status_code == 200
            elif attempt.kind == "cstore":
                assert attempt.answers[-1] == 0
                assert attempt.result in stored["instances"], "an object answered Success is not stored"
            elif attempt.kind == "stow":
                assert attempt.answers[-1] == 200
                assert all(uid in stored["instances"] for uid in attempt.result), "a STOW-RS answered 200 is not stored"
            else:
                assert attempt.answers[-1] == 200
                consent = attempt.payload
                read = http.get(f"/fhir/Consent/{consent['id']}")
                assert read.status_code == 200 and read.json()["status"] == "inactive"


def _check_unanswered_withdrawals(attempts: list[Attempt], stored: dict[str, Any]) -> None:
    """A withdrawal not answered is in force wholly (its version, with status inactive) or not at all."""
    for attempt in attempts:
        if attempt.kind == "withdraw" and not attempt.answered:
            version, document = stored["resources"][("Consent", attempt.payload["id"])]
            assert (version, document["status"]) in ((1, "active"), (2, "inactive")), (version, document["status"])


def _send_again(server: RunningAdapter, attempts: list[Attempt]) -> None:
    """Every attempt left without an answer, sent again as it was: answered as stored now."""
    for attempt in attempts:
        if attempt.answered:
            continue
        Clients.send(server, attempt)
        assert attempt.answered, f"a {attempt.kind} sent again after the restart got no answer"
        if attempt.kind == "photo":
            assert attempt.answers[-1] == 201, attempt.result
        elif attempt.kind == "bundle":
            assert attempt.answers[-1] == 200, attempt.result
        elif attempt.kind == "cstore":
            assert attempt.answers[-1] == 0
        else:  # a STOW-RS (each of its objects stored, now or before), a withdrawal
            assert attempt.answers[-1] == 200


def _check_once(attempts: list[Attempt], stored: dict[str, Any]) -> None:
    """Once every attempt is answered: exactly one record per photo, Bundle and object sent."""
    receipts = stored["receipts"]
    photos = sum({"photo": 1, "bundle": 1, "cstore": 1, "stow": 2}.get(a.kind, 0) for a in attempts)
    assert len(receipts) == photos, f"{len(receipts)} receipts for {photos} photos and objects"
    by_record = {r["record"] for r in receipts}
    for attempt in attempts:
        if attempt.kind == "photo":
            assert attempt.result["record"] in by_record
        elif attempt.kind == "cstore":
            assert stored["instances"].get(attempt.result) in by_record
        elif attempt.kind == "stow":
            assert all(stored["instances"].get(uid) in by_record for uid in attempt.result)


def _crash_rounds(tmp_path: Path, seed: int, rounds: int, env: dict[str, str], db_url: str) -> None:
    rng = random.Random(seed)
    data = tmp_path / "data"
    attempts: list[Attempt] = []
    consents: list[dict[str, Any]] = []
    (tmp_path / "dicom").mkdir()
    derived: list[list[Any]] = []
    for n in range(rounds + 1):
        if n:  # every start-up fill has its work to do again, and the first start doing it is killed
            derived = _derived(db_url)
            _make_stale(db_url)
        _killed_start(tmp_path / f"killed{n}", data, env, rng.uniform(0.5, 3.5))
        with _adapter(tmp_path / f"run{n}", data, env) as server:
            if n:
                assert _derived(db_url) == derived, "the start-up fills left something underived"
                stored = _check_store(db_url)
                _check_answered(server, attempts, stored)
                _check_unanswered_withdrawals(attempts, stored)
                _send_again(server, attempts)
            else:
                for _ in range(12):
                    created = httpx.post(f"{server.url}/fhir/Consent", headers=FHIR_JSON, timeout=30,
                                         content=json.dumps(consent_resource(["TRAIN"])))
                    assert created.status_code == 201, created.text
                    consents.append(created.json())
            if n == rounds:
                stored = _check_store(db_url)
                _check_answered(server, attempts, stored)
                _check_once(attempts, stored)
                break
            clients = Clients(f"{seed}/{n}", tmp_path / "dicom", consents)
            clients.until_killed(server, ["photo", "photo", "bundle", "cstore", "stow", "withdraw"],
                                 rng.uniform(0.3, 2.0))
            attempts += clients.attempts
            consents = clients.to_withdraw
    stored = _check_store(db_url)
    _check_audit(data, env, stored)
    verify = _cli(data, env, "verify", "--digests")
    assert verify.returncode == 0 and " 0 problem(s)" in verify.stdout, verify.stdout + verify.stderr
    lost = [a for a in attempts if a.answers[0] is None]
    assert lost, "no request was left without an answer: the kills hit nothing"


def _post_photo(server: RunningAdapter, picture: bytes, key: str) -> httpx.Response:
    meta = {"patient": dict(PATIENT), "kind": "clinical", "source": "clinician",
            "consent": {"purposes": ["TREAT"], "method": "verbal"}}
    return httpx.post(f"{server.url}/photos", timeout=30, headers={"Idempotency-Key": key}, files={
        "file": ("p.jpg", picture, "image/jpeg"), "metadata": (None, json.dumps(meta), "application/json")})


def _wait(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _safe(call: Any) -> Any:
    try:
        return call()
    except httpx.TransportError:
        return None


def _sqlite(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'data' / 'adapter.db'}"


@pytest.fixture
def dcmtk() -> None:
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")


@pytest.mark.usefixtures("dcmtk")
@pytest.mark.parametrize(("seed", "workers"), [(int(os.environ.get("CRASH_SEED", "0")) or s, w)
                                               for s, w in ((11, "1"), (23, "2"))])
def test_sigkill_during_ingest_on_sqlite(tmp_path: Path, seed: int, workers: str) -> None:
    """``workers``: HTTP worker processes (with two, the SCP runs in their supervisor)."""
    _crash_rounds(tmp_path, seed, rounds=3, env={"ADAPTER_HTTP_WORKERS": workers}, db_url=_sqlite(tmp_path))


@pytest.mark.usefixtures("dcmtk")
def test_sigkill_during_ingest_on_postgres(tmp_path: Path) -> None:
    seed = int(os.environ.get("CRASH_SEED", "0")) or 37
    with postgres_schema("crash") as url:
        _crash_rounds(tmp_path, seed, rounds=3, env={"ADAPTER_DATABASE_URL": url}, db_url=url)


@pytest.mark.usefixtures("dcmtk")
def test_sigkill_while_forwarding_sends_each_object_and_audits_each_disclosure_once(tmp_path: Path) -> None:
    """Photos posted while the forwarder sends them to a PACS (dcmtk's storescp), the adapter
    killed three times: once the leases the killed forwarders held have run out (60 s; set past
    here, the adapter stopped, rather than waited for), every photo reaches the PACS, at most one
    object per kill twice (a kill between the PACS's acknowledgement and the commit marking it
    sent: the README's window), every item is sent and its disclosure audited exactly once."""
    seed = int(os.environ.get("CRASH_SEED", "0")) or 53
    rng = random.Random(seed)
    data, kills = tmp_path / "data", 3
    attempts: list[Attempt] = []
    db_url = _sqlite(tmp_path)
    with StoreSCP(tmp_path / "pacs", aet="PACS", accept=("+xa", "-uf")) as pacs:
        env = {"ADAPTER_FORWARD_TO": f"PACS@127.0.0.1:{pacs.port}"}
        for n in range(kills + 1):
            with _adapter(tmp_path / f"run{n}", data, env) as server:
                _send_again(server, attempts)
                if n == kills:
                    break
                clients = Clients(f"{seed}/{n}", tmp_path, [])
                clients.until_killed(server, ["photo", "photo"], rng.uniform(0.3, 2.5))
                attempts += clients.attempts
        engine = create_engine(db_url)
        with engine.begin() as conn:
            conn.execute(text("UPDATE outbox SET next_attempt_at = :past WHERE status = 'pending'"),
                         {"past": "2000-01-01 00:00:00.000000"})
        engine.dispose()
        with _adapter(tmp_path / "drain", data, env) as server:
            _wait(lambda: _rows(db_url, "SELECT count(*) FROM outbox WHERE status <> 'sent'")[0][0] == 0,
                  "the outbox to drain")
        received: dict[str, int] = {}
        for path in pacs.files():
            uid = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            received[uid] = received.get(uid, 0) + 1
    sent = {str(uid) for (uid,) in _rows(db_url, "SELECT sop_instance_uid FROM outbox")}
    photos = {a.result["dicom"]["sopInstanceUid"] for a in attempts}
    assert sent == photos == set(received), "a photo did not reach the PACS"
    assert sum(received.values()) - len(received) <= kills, f"objects sent twice: {received}"
    stored = _check_store(db_url)
    events = _check_audit(data, {}, stored)
    disclosed: dict[str, int] = {}
    for event in events:
        if event.get("action") == "R" and event.get("outcome") == "0" and "PACS" in json.dumps(event.get("agent")):
            for entity in event.get("entity") or ():
                ref = (entity.get("what") or {}).get("reference")
                if ref and (entity.get("role") or {}).get("code") == "4":  # the records (not the Consents)
                    disclosed[ref] = disclosed.get(ref, 0) + 1
    assert disclosed == {a.result["record"]: 1 for a in attempts}, "a disclosure to the PACS is audited other than once"


def test_a_kill_between_the_audit_insert_and_the_commit_leaves_no_gap_on_postgres(tmp_path: Path) -> None:
    """Found by this review: on PostgreSQL the audit's sequence numbers came from a sequence,
    which hands a number out for good, committed or not. An ingest killed after its AuditEvent
    was inserted and before its commit left a number no event has: a gap in the export, which a
    SIEM cannot tell from an event deleted. A trigger that sleeps on each audit insert widens
    that window (a round trip, else) so the kill lands in it; the photo sent again after the
    restart is stored once, and the export's sequence numbers are 1..N."""
    rng = random.Random(41)
    with named_postgres_schema("crash_gap") as (url, name):
        env = {"ADAPTER_DATABASE_URL": url}
        engine = create_engine(url, poolclass=NullPool)  # none of its sessions stays open between uses
        others = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                      "AND pid <> pg_backend_pid()")
        sleeping = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                        "AND wait_event = 'PgSleep'")

        def count(query: Any) -> int:  # in a transaction of its own: pg_stat_activity is a snapshot
            with engine.connect() as conn:
                return int(conn.execute(query, {"name": name}).scalar_one())

        try:
            with _adapter(tmp_path / "run0", tmp_path / "data", env) as server:
                assert _post_photo(server, _picture(rng), str(uuid.uuid4())).status_code == 201
                with engine.begin() as conn:
                    conn.execute(text("CREATE FUNCTION slow_audit() RETURNS trigger LANGUAGE plpgsql AS "
                                      "$$ BEGIN PERFORM pg_sleep(1.5); RETURN NEW; END $$"))
                    conn.execute(text("CREATE TRIGGER slow_audit AFTER INSERT ON audit FOR EACH ROW "
                                      "EXECUTE FUNCTION slow_audit()"))
                picture, key = _picture(rng), str(uuid.uuid4())
                lost: list[Any] = []
                sender = threading.Thread(target=lambda: lost.append(_safe(lambda: _post_photo(server, picture, key))))
                sender.start()
                _wait(lambda: count(sleeping) == 1, "the audit insert")
                _kill(server)
                sender.join(30)
                assert lost == [None], "the photo was answered before the kill"
            # the killed sessions end once their statement has
            _wait(lambda: count(others) == 0, "the killed sessions")
            with engine.begin() as conn:
                conn.execute(text("DROP TRIGGER slow_audit ON audit"))
            with _adapter(tmp_path / "run1", tmp_path / "data", env) as server:
                again = _post_photo(server, picture, key)
                assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers, again.text
            stored = _check_store(url)
            assert len(stored["receipts"]) == 2
            _check_audit(tmp_path / "data", env, stored)
        finally:
            engine.dispose()
