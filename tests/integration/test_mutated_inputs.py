"""Seeded mutations of valid inputs: whatever is refused is refused as an AdapterError (an
OperationOutcome over HTTP, a DIMSE failure status), and whatever is accepted can be read back
in every view without a server error.

A small, fixed-seed version of the fuzzing that found the ingest bugs fixed with tests in
test_dicom_scp.py, test_mapping_transaction.py and test_api_read.py: deterministic, so it can
fail, and bounded (a few hundred inputs) so it stays a few seconds of the suite.
"""

from __future__ import annotations

import copy
import json
import random
import struct
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.uid import generate_uid

from adapter.api.fhir_xml import from_xml
from adapter.errors import AdapterError
from adapter.imaging.sanitize import sanitize
from adapter.model.decision import View
from adapter.services.dicom_ingest import ReceivedStore
from adapter.services.registry import Services
from tests.conftest import ROOT
from tests.support.app import FhirClient, adapter_client, consent_resource, seen_as
from tests.support.dicom_files import jpeg, multiframe_file, native_sc_file, pdf_file, sc_file, vl_photo_file
from tests.support.fhir_factories import tables

PURPOSES = ("TREAT", "TRAIN", "HRESCH")
VIEWS = {"TREAT": View.FULL, "TRAIN": View.DEIDENTIFIED, "HRESCH": View.PSEUDONYMISED}
OCTET_ANY_SYNTAX = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


def mutations(data: bytes, rnd: random.Random, *, start: int, head: int) -> bytes:
    """1-6 byte flips, cuts, deletions or 32-bit overwrites, mostly within ``head`` bytes
    after ``start`` (where the headers are)."""
    out = bytearray(data)
    for _ in range(rnd.randint(1, 6)):
        if len(out) < start + 16:
            out += bytes(16)
        op = rnd.random()
        if op < 0.5:
            at = rnd.randrange(start, min(len(out), start + head) if rnd.random() < 0.7 else len(out))
            out[at] = rnd.randrange(256)
        elif op < 0.65:
            out = out[:rnd.randrange(start, len(out))]
        elif op < 0.8:
            at = rnd.randrange(start, len(out))
            del out[at:at + rnd.randrange(1, 40)]
        else:
            at = rnd.randrange(start, len(out) - 4)
            out[at:at + 4] = struct.pack("<I", rnd.choice([0xFFFFFFFF, 0, 1, 3, 0x7FFFFFFF, rnd.randrange(2**32)]))
    return bytes(out)


# -- images ---------------------------------------------------------------------------------------


def test_mutated_photos_are_sanitized_or_refused(tmp_path: Path) -> None:
    policy = tables().policy
    seeds = [(ROOT / "samples" / name).read_bytes() for name in ("wound.jpg", "lesion.png", "tiny.jpg")]
    rnd = random.Random(20261126)
    out = tmp_path / "out"
    accepted = 0
    for _ in range(300):
        data = mutations(rnd.choice(seeds), rnd, start=2, head=4096)
        try:
            sanitize(data, out, quality=policy.quality, limits=policy.limits)
            accepted += 1
        except AdapterError:
            assert not out.exists()  # a refusal never creates the destination
        out.unlink(missing_ok=True)
    assert 0 < accepted < 300  # both ways were taken


# -- DICOM ----------------------------------------------------------------------------------------


@pytest.fixture
def adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FhirClient, Services]]:
    # as the SCP sets it: received values are read as sent, never validated into the logs
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.IGNORE)
    with adapter_client(tmp_path) as (client, services):
        for purposes in (["TRAIN"], ["HRESCH"]):
            assert client.post("/fhir/Consent", json=consent_resource(purposes)).status_code == 201
        yield client, services


SEEDS: dict[str, Callable[[Path], pydicom.Dataset]] = {
    "sc": lambda p: sc_file(p, frame=jpeg(64, 48)),
    "vl": vl_photo_file,
    "multiframe": multiframe_file,
    "native": lambda p: native_sc_file(p, bytes(range(256)) * 36, 48, 64),
    "pdf": pdf_file,
}


def test_mutated_dicom_objects_are_refused_or_released_in_every_view(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    client, services = adapter
    seeds = []
    for name, make in SEEDS.items():
        path = tmp_path / f"seed-{name}.dcm"
        ds = make(path)
        # the same UIDs every run (the factories draw new ones), so the same mutations, the same objects
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, keyword, generate_uid(entropy_srcs=[name, keyword]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(path, enforce_file_format=True)
        seeds.append((name, path.read_bytes(), pydicom.dcmread(path)))
    rnd = random.Random(1126)
    stored = refused = 0
    for i in range(250):
        name, raw, ds = rnd.choice(seeds)
        uid = str(ds.SOPInstanceUID)
        fresh = uid[:-12] + str(rnd.randrange(10**11, 10**12))  # same length: the lengths stay valid
        data = mutations(raw.replace(uid.encode(), fresh.encode()), rnd, start=132, head=1200)
        path = tmp_path / f"in-{i}.dcm"
        path.write_bytes(data)
        sop_class = str(ds.SOPClassUID)
        received = ReceivedStore(path=path, calling_ae="STORESCU", peer_address="127.0.0.1",
                                 context_sop_class=sop_class, transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                                 affected_sop_class=sop_class, affected_sop_instance=fresh)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pydicom's warnings on mangled values
                result = services.dicom_ingest.ingest_received(received)
        except AdapterError:
            refused += 1
            continue
        if result.replayed:
            continue
        stored += 1
        instance = services.store.find_dicom_instance(fresh)
        assert instance is not None
        with warnings.catch_warnings():
            # pydicom's warnings on mangled values (an unknown escape sequence: decoded by a
            # guess), which the service logs (logging.captureWarnings) and pytest makes errors
            warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
            _read_in_every_view(client, services, instance, fresh, name, result, i)
    assert stored and refused  # both ways were taken


def _read_in_every_view(client: FhirClient, services: Services, instance: Any, fresh: str, name: str,
                        result: Any, i: int) -> None:
    for purpose in PURPOSES:
        headers = {"X-Purpose-Of-Use": purpose}
        # a PDF a restricted view cannot take the metadata out of (damaged beyond what qpdf
        # repairs) is refused in that view, 422, never released as stored (UncleanableDocument)
        uncleanable = (422,) if name == "pdf" and purpose != "TREAT" else ()
        wado = client.get(f"/dicomweb/studies/{instance.study_instance_uid}/series/"
                          f"{instance.series_instance_uid}/instances/{fresh}", headers=headers)
        assert wado.status_code in (200, 403, 404, *uncleanable), (i, purpose, wado.text[:200])
        # what a viewer asks next, in the purpose's released space: metadata, frames, bulk data
        view = VIEWS[purpose]
        released = "/".join(services.released_uids.uid(view, u) for u in (
            instance.study_instance_uid, instance.series_instance_uid, fresh))
        study, series, sop = released.split("/")
        base = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        wado = f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
        for url, accept in ((f"{base}/metadata", "application/dicom+json"),
                            (f"/dicomweb/studies/{study}/metadata", "*/*"), (f"{base}/frames/1", "*/*"),
                            (f"{base}/frames/1", OCTET_ANY_SYNTAX),
                            (f"{base}/bulk/00420011", "*/*"), (f"{base}/rendered", "*/*"),
                            (f"{base}/thumbnail", "*/*"), (f"/dicomweb/studies/{study}/thumbnail", "image/*"),
                            (f"{wado}", "*/*"), (f"{wado}&contentType=image/jpeg&rows=32", "*/*")):
            answer = client.get(url, headers={**headers, "Accept": accept})
            assert answer.status_code in (200, 403, 404, 406, *uncleanable), (i, purpose, url, answer.text[:300])
            if answer.status_code >= 400:
                assert answer.json()["resourceType"] == "OperationOutcome"
            if answer.status_code == 422:
                assert answer.json()["issue"][0]["diagnostics"].startswith("the PDF"), answer.text
        record = client.get(f"/fhir/{seen_as(services, purpose, result.record)}", headers=headers)
        assert record.status_code in (200, 403), (i, purpose, record.text[:200])
        for accept in ("application/dicom", "*/*", "application/fhir+json"):  # the object, the bytes, JSON
            binary = client.get(f"/fhir/{seen_as(services, purpose, result.receipt['binary'])}",
                                headers={**headers, "Accept": accept})
            assert binary.status_code in (200, 403, *uncleanable), (i, purpose, accept, binary.text[:200])
            if binary.status_code == 422:
                assert binary.json()["issue"][0]["diagnostics"].startswith("the PDF"), binary.text


# -- FHIR JSON ------------------------------------------------------------------------------------

ODD_VALUES = [None, True, 0, -1, 1.5, "", "x", "2024-02-30", "a" * 300, [], {}, [None], {"a": 1},
              "urn:uuid:7d1c2b8e-4f3a-4c1e-9b6d-0a1b2c3d4e02", "Binary/x", "TREAT"]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


def mutated_json(document: dict[str, Any], rnd: random.Random) -> dict[str, Any]:
    """1-4 elements replaced by odd values (wrong JSON types, nulls, bad codes) or removed."""
    out = copy.deepcopy(document)
    for _ in range(rnd.randint(1, 4)):
        where = rnd.choice([p for p in _paths(out) if p])
        parent = out
        for key in where[:-1]:
            parent = parent[key]
        if rnd.random() < 0.75:
            parent[where[-1]] = copy.deepcopy(rnd.choice(ODD_VALUES))
        elif isinstance(parent, dict):
            del parent[where[-1]]
        else:
            parent.pop(where[-1])
    return out


def test_mutated_bundles_consents_and_metadata_never_answer_a_server_error(
        adapter: tuple[FhirClient, Services]) -> None:
    client, _ = adapter
    bundle = json.loads((ROOT / "samples" / "bundle-transaction.json").read_text())
    consent = json.loads((ROOT / "samples" / "consent-train.json").read_text())
    metadata = json.loads((ROOT / "samples" / "metadata-wound.json").read_text())
    photo = (ROOT / "samples" / "tiny.jpg").read_bytes()
    fhir_json = {"Content-Type": "application/fhir+json"}
    rnd = random.Random(2611)
    answers: dict[int, int] = {}
    for i in range(300):
        which = i % 3
        if which == 0:
            r = client.post("/fhir", content=json.dumps(mutated_json(bundle, rnd)), headers=fhir_json)
        elif which == 1:
            r = client.post("/fhir/Consent", content=json.dumps(mutated_json(consent, rnd)), headers=fhir_json)
        else:
            r = client.post("/photos", files={"file": ("x.jpg", photo, "image/jpeg"),
                                              "metadata": (None, json.dumps(mutated_json(metadata, rnd)),
                                                           "application/json")})
        answers[r.status_code] = answers.get(r.status_code, 0) + 1
        assert r.status_code < 500, (i, r.text[:300])
        if r.status_code >= 400:
            assert r.json()["resourceType"] == "OperationOutcome"
    assert len(answers) > 1  # refusals and acceptances both


# -- searches -------------------------------------------------------------------------------------

SEARCH_PARAMS = ["patient", "subject", "patient:identifier", "subject:identifier", "identifier", "created", "date",
                 "_id", "type", "category", "status", "kind", "purpose", "recorded", "_count", "_offset",
                 "patient:Patient", "subject:other", "_lastUpdated", "_lastUpdated:missing", "_sort", "_summary",
                 "_format", "_elements", "unknown", "target", "target:Media", "_include", "_revinclude",
                 "creation", "creation:missing", "security-label", "format", "setting", "event", "author.given",
                 "period", "patient.identifier"]
SEARCH_VALUES = ["", "x", "|", "a|", "|b", "urn:oid:2.999.1.1|MRN-0001", "urn:clinical-image-adapter:pseudonym|x",
                 "urn:clinical-image-adapter:sha256|ab", "2024", "2024-03-05", "ge2024", "lt2024-02-30", "Patient/1",
                 "http://h/Patient/1", "1,2", ",", "9" * 300, "sa2024-01-01T00:00:00+99:00", "\u00e9",
                 "-_lastUpdated", "_lastUpdated", "count", "json", "xml", "gt2026-11-26T10:00:00.123456789Z",
                 "ge2026-11-26T10:00:00.1+01:00", "0", "Provenance:target", "Provenance:target:Media", "Media/1",
                 "http://h/fhir/Media/1/_history/2", "true", "text", "data", "false", "status,note", "created",
                 "²", "①", "٣", "-1", "2024-0²"]
QIDO_KEYS = ["PatientID", "IssuerOfPatientID", "StudyDate", "StudyInstanceUID", "SeriesInstanceUID",
             "SOPInstanceUID", "Modality", "limit", "offset", "00100020"]


def test_mutated_searches_never_answer_a_server_error(adapter: tuple[FhirClient, Services]) -> None:
    """FHIR searches and QIDO-RS queries with odd parameters, under a care, a de-identified and
    a pseudonymised purpose (adapter.services.view_search takes each in its view's terms), in
    R4 and R5: refused with an OperationOutcome or answered, never a server error."""
    client, _ = adapter
    posted = client.post("/photos", files={
        "file": ("w.jpg", (ROOT / "samples" / "tiny.jpg").read_bytes(), "image/jpeg"),
        "metadata": (None, (ROOT / "samples" / "metadata-wound.json").read_text(), "application/json")})
    assert posted.status_code == 201
    receipt = posted.json()
    rnd = random.Random(2612)
    answers: dict[int, int] = {}
    for i in range(400):
        purpose = {"X-Purpose-Of-Use": rnd.choice(PURPOSES)}
        if i % 2:
            resource_type = rnd.choice(["Media", "DocumentReference", "Consent", "Provenance"])
            query = [(rnd.choice(SEARCH_PARAMS), rnd.choice(SEARCH_VALUES)) for _ in range(rnd.randint(0, 3))]
            if rnd.random() < 0.3:
                purpose["Accept"] = rnd.choice(["application/fhir+json; fhirVersion=5.0", "application/fhir+xml",
                                                "*/*;q=0", "text/html,*/*;q=0.8"])
            if rnd.random() < 0.2:
                purpose["Prefer"] = "handling=lenient"
            if rnd.random() < 0.3:  # the same search by POST, its parameters in the body
                body = "&".join(f"{quote(k)}={quote(v)}" for k, v in query)
                if rnd.random() < 0.1:
                    body = rnd.choice(["%", "a=%zz", "\udcff", "=", "&&&", "a" * 70_000])
                r = client.post(f"/fhir/{resource_type}/_search", content=body.encode("utf-8", "surrogateescape"),
                                headers={**purpose, "Content-Type": "application/x-www-form-urlencoded"})
            elif rnd.random() < 0.1:  # the same search and a read in a batch, and a malformed entry
                entries = [{"request": {"method": "GET", "url": f"{resource_type}?{urlencode(query)}"}},
                           {"request": {"method": rnd.choice(["GET", "PUT", None]),
                                        "url": rnd.choice([receipt["record"], "", "/x", 7, "Media?_count=x"])}},
                           rnd.choice([{}, {"request": "GET"}, None])]
                r = client.post("/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                                headers={**purpose, "Content-Type": "application/fhir+json"})
            elif rnd.random() < 0.2:  # a read, with what a search takes (_summary, _elements...)
                target = rnd.choice([receipt["record"], receipt["binary"], receipt["provenance"],
                                     f"{receipt['record']}/_history/1", f"{receipt['record']}/_history",
                                     f"{receipt['consents'][0]}/_history"])
                r = client.get(f"/fhir/{target}", params=query, headers=purpose)
            else:
                r = client.get(f"/fhir/{resource_type}", params=query, headers=purpose)
        else:
            query = [(rnd.choice(QIDO_KEYS), rnd.choice([*SEARCH_VALUES, "MRN-*", "?", "20240101-"]))
                     for _ in range(rnd.randint(0, 3))]
            r = client.get(f"/dicomweb/{rnd.choice(['studies', 'series', 'instances'])}", params=query,
                           headers={**purpose, "Accept": "application/dicom+json"})
        answers[r.status_code] = answers.get(r.status_code, 0) + 1
        assert r.status_code < 500, (i, query, purpose, r.text[:300])
        if r.status_code >= 400:  # in the format asked for: FHIR XML for Accept application/fhir+xml
            xml = r.headers["content-type"].startswith("application/fhir+xml")
            assert (from_xml(r.content) if xml else r.json())["resourceType"] == "OperationOutcome"
    assert answers.get(200) and len(answers) > 1
