"""DICOMweb over the real app on a real SQLite store: STOW-RS through the SCP's ingest path,
WADO-RS / Binary as application/dicom / QIDO-RS under purpose of use (the FHIR read's decision,
audited), TRAIN de-identified and HRESCH pseudonymised objects with consistently mapped UIDs, and
every object WADO returns checked with dciodvfy (0 errors)."""

from __future__ import annotations

import base64
import copy
import io
import json
import re
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import numpy as np
import pikepdf
import PIL.Image
import PIL.ImageFilter
import PIL.ImageOps
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from adapter.mapping.codes import EXT_PHOTO_SOURCE
from adapter.mapping.dicom_deid import NOT_CLEANED_DOCUMENT, NOT_CLEANED_PIXELS
from adapter.mapping.dicom_photo import EXTERNAL_COLLEAGUE_COMMENT, STUDY_DATE_VERSION, encode_dataset
from adapter.mapping.dimse_status import (
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED,
    SOP_CLASS_NOT_SUPPORTED,
)
from adapter.model.decision import View
from adapter.model.photo import PhotoKind
from adapter.services.registry import Services
from adapter.services.released_uids import ReleasedUidSpaces
from adapter.store.schema import SCHEMA_VERSION
from tests.conftest import ROOT, record_emitted, require_or_skip
from tests.support.app import (
    PACS_PEER,
    PATIENT,
    FhirClient,
    consent_resource,
    metadata,
    pacs_client,
    post_photo,
    seen_as,
)
from tests.support.audit import (
    INSTANCES_TRANSFERRED,
    QUERY,
    agent_roles,
    caller_request_ids,
    dicom_events,
    own_request_ids,
    patients,
    sop_instance_uids,
    study_uids,
)
from tests.support.dciodvfy import (
    dciodvfy_failures,
    dciodvfy_missing,
    photo_object,
    stored_sample,
)
from tests.support.dicom_files import multiframe_file, native_sc_file
from tests.support.pdf import IDENTIFYING, identifying_pdf, minimal_pdf, page_contents

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
TREAT = {"X-Purpose-Of-Use": "TREAT"}
TRAIN = {"X-Purpose-Of-Use": "TRAIN"}
HRESCH = {"X-Purpose-Of-Use": "HRESCH"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
PATIENT_NAME = "Doe^Jane"


# -- factories ------------------------------------------------------------------------------------


def received(kind: PhotoKind = PhotoKind.CLINICAL, record_id: str = "rec-a", **attrs: Any) -> Dataset:
    """A valid object as a PACS would send it: the adapter's own VL Photographic / SC mapping of a
    sample (dciodvfy-clean), for patient MRN-0001 (issuer HOSP), with a patient name added."""
    ds = photo_object(kind, stored_sample("tiny.jpg" if kind is PhotoKind.CLINICAL else "document.jpg"),
                      record_id=record_id)
    ds.PatientName = PATIENT_NAME
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def pdf_object(pdf: bytes | None = None) -> Dataset:
    """An Encapsulated PDF of the test patient holding ``pdf`` (default: a minimal well-formed
    one-page PDF)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = PDF_CLASS, generate_uid(prefix="2.25.")
    ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = PATIENT_NAME, PATIENT["value"], "HOSP"
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(prefix="2.25."), generate_uid(prefix="2.25.")
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
        "20240101", "120000", "1", "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType, ds.Manufacturer = "DOC", 1, 1, "SD", ""
    ds.ContentDate, ds.ContentTime, ds.AcquisitionDateTime = "20240101", "120000", "20240101120000"
    ds.BurnedInAnnotation, ds.DocumentTitle = "YES", "Discharge letter"
    ds.ConceptNameCodeSequence = Sequence()
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf = minimal_pdf() if pdf is None else pdf
    ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def ct_object() -> Dataset:
    ds = received(record_id="rec-ct")
    ds.SOPClassUID = CT_CLASS
    ds.file_meta.MediaStorageSOPClassUID = CT_CLASS
    return ds


def related(*parts: tuple[str, bytes], boundary: str = "b0undary-1234") -> tuple[bytes, str]:
    body = b"".join(f"--{boundary}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
                    for ctype, data in parts) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: FhirClient, *objects: Dataset | bytes, study: str | None = None) -> httpx.Response:
    body, ctype = related(*[("application/dicom", o if isinstance(o, bytes) else encode_dataset(o))
                            for o in objects])
    url = "/dicomweb/studies" + (f"/{study}" if study else "")
    return client.post(url, content=body, headers={"Content-Type": ctype})


def parts_of(response: httpx.Response) -> list[bytes]:
    """The application/dicom parts of a multipart/related WADO-RS answer."""
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related") and 'type="application/dicom"' in ctype, ctype
    boundary = re.search(r"boundary=([^;\s]+)", ctype).group(1).strip('"')  # type: ignore[union-attr]
    body, out, pos = response.content, [], 0
    delimiter = f"--{boundary}".encode()
    while True:
        start = body.index(delimiter, pos) + len(delimiter)
        if body[start:start + 2] == b"--":
            return out
        head_end = body.index(b"\r\n\r\n", start)
        headers = body[start:head_end].decode().strip().splitlines()
        assert any(h.lower().startswith("content-type: application/dicom; transfer-syntax=") for h in headers)
        length = int(next(h.split(":")[1] for h in headers if h.lower().startswith("content-length")))
        out.append(body[head_end + 4:head_end + 4 + length])
        pos = head_end + 4 + length


def read(data: bytes) -> Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


def valued(result: dict[str, Any]) -> set[str]:
    """The tags of a DICOM JSON result that carry a value: a Type 2 attribute of a study result
    is there empty (no Value, PS3.18 F.2.5) when the view shows none."""
    return {tag for tag, element in result.items() if "Value" in element}


def find(client: FhirClient, resource_type: str, sop_uid: str, headers: dict[str, str] = TREAT) -> list[dict]:
    r = client.get(f"/fhir/{resource_type}", params={"identifier": f"urn:dicom:uid|urn:oid:{sop_uid}"},
                   headers=headers)
    assert r.status_code == 200, r.text
    # the matches: not the outcome entry a care search has when it withheld some (search.mode outcome)
    return [e["resource"] for e in r.json().get("entry", []) if e.get("search", {}).get("mode") != "outcome"]


def add_consent(client: FhirClient, purposes: list[str]) -> dict[str, Any]:
    r = client.post("/fhir/Consent", json=consent_resource(purposes), headers=FHIR_JSON)
    assert r.status_code == 201, r.text
    return dict(r.json())


def withdraw(client: FhirClient, consent: dict[str, Any]) -> None:
    r = client.put(f"/fhir/Consent/{consent['id']}", json={**consent, "status": "inactive"}, headers=FHIR_JSON)
    assert r.status_code == 200, r.text


#: WADO-RS as stored (``transfer-syntax=*``); with none named a JPEG object comes decompressed
#: (tests.integration.test_dicomweb_transfer_syntax).
AS_STORED = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}


def wado(client: FhirClient, study: str, series: str | None = None, instance: str | None = None, *,
         headers: dict[str, str] = TREAT) -> httpx.Response:
    """A WADO-RS retrieve, the objects as stored unless ``headers`` has an Accept of its own."""
    url = f"/dicomweb/studies/{study}" + (f"/series/{series}" if series else "") + \
        (f"/instances/{instance}" if instance else "")
    return client.get(url, headers={**AS_STORED, **headers})


def qido(client: FhirClient, path: str, headers: dict[str, str] = TREAT, **params: str) -> list[dict[str, Any]]:
    r = client.get(f"/dicomweb/{path}", params=params, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    return list(r.json())


# -- fixtures -------------------------------------------------------------------------------------


class Checked:
    """Every object WADO (or Binary) returned in a test: dciodvfy runs on each at teardown."""

    def __init__(self) -> None:
        self.objects: list[tuple[str, bytes]] = []

    def __call__(self, label: str, data: bytes) -> Dataset:
        self.objects.append((label, data))
        return read(data)


@pytest.fixture
def checked(tmp_path: Path) -> Iterator[Checked]:
    seen = Checked()
    yield seen
    if not seen.objects:
        return
    missing = dciodvfy_missing()
    require_or_skip(missing is None, missing or "")
    assert dciodvfy_failures(seen.objects, tmp_path) == []


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with pacs_client(tmp_path) as pair:
        yield pair


# -- STOW-RS --------------------------------------------------------------------------------------


def test_stow_stores_through_the_scp_path_and_answers_referenced_sops(adapter: tuple[FhirClient, Services]) -> None:
    client, services = adapter
    vl, sc = received(), received(PhotoKind.DOCUMENT, record_id="rec-doc")
    r = stow(client, vl, sc)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/dicom+json")
    body = r.json()
    assert "00081198" not in body
    refs = body["00081199"]["Value"]
    assert [(value(i, "00081150"), value(i, "00081155")) for i in refs] == [
        (vl.SOPClassUID, vl.SOPInstanceUID), (sc.SOPClassUID, sc.SOPInstanceUID)]
    assert value(refs[0], "00081190").endswith(
        f"/dicomweb/studies/{vl.StudyInstanceUID}/series/{vl.SeriesInstanceUID}/instances/{vl.SOPInstanceUID}")
    # the FHIR records, as the SCP makes them
    [media] = find(client, "Media", vl.SOPInstanceUID)
    assert media["subject"]["identifier"] == PATIENT
    assert {"url": EXT_PHOTO_SOURCE, "valueCode": "colleague-internal"} in media["extension"]
    [doc] = find(client, "DocumentReference", sc.SOPInstanceUID)
    assert doc["subject"]["identifier"] == PATIENT
    instance = services.store.find_dicom_instance(vl.SOPInstanceUID)
    assert instance is not None and instance.blob_sha256 is not None
    # the same instance again: no new record
    again = stow(client, vl)
    assert again.status_code == 200
    assert value(again.json()["00081199"]["Value"][0], "00081155") == vl.SOPInstanceUID
    assert len(find(client, "Media", vl.SOPInstanceUID)) == 1
    assert len(services.store.search_dicom_instances()) == 2
    assert list((services.settings.data_dir / "staging").iterdir()) == []


def test_stow_is_not_refused_for_want_of_a_device_where_personal_devices_are_forbidden(tmp_path: Path) -> None:
    """An object a DICOM peer of the organisation sends (an admitted AE, not a staff phone) is not
    held to the capture apps' duty to state their device under ``personalAllowed: false``."""
    with pacs_client(tmp_path, policy={"devices": {"personalAllowed": False}}) as (client, _):
        r = stow(client, received())
        assert r.status_code == 200, r.text


def test_stow_of_a_stored_instance_for_another_patient_is_a_conflict(adapter: tuple[FhirClient, Services]) -> None:
    """A SOP Instance UID stored for one patient, sent again for another: 409 with the instance in
    FailedSOPSequence, FailureReason 0xA900 (PS3.18 10.5.3: a conflict the request holds), audited,
    the stored record unchanged; the same object again is still stored (200, idempotent)."""
    client, services = adapter
    first = received()
    assert stow(client, first).status_code == 200
    moved = copy.deepcopy(first)
    moved.PatientID = "MRN-0002"
    r = stow(client, moved)
    assert r.status_code == 409, r.text
    [failed] = r.json()["00081198"]["Value"]
    assert (value(failed, "00081155"), value(failed, "00081197")) == (first.SOPInstanceUID,
                                                                      DATASET_DOES_NOT_MATCH_SOP_CLASS)
    [media] = find(client, "Media", first.SOPInstanceUID)
    assert media["subject"]["identifier"] == PATIENT
    refusal = dicom_events(services.store.list_audit(100), INSTANCES_TRANSFERRED)[0]
    assert refusal["outcome"] == "4" and sop_instance_uids(refusal) == [first.SOPInstanceUID]
    assert stow(client, first).status_code == 200


def test_stow_of_another_patients_object_into_a_held_study_is_a_conflict(adapter: tuple[FhirClient, Services]) -> None:
    """The clinical safety review (finding 1): an object of patient B sent to the study of a
    photo posted for patient A (``POST /dicomweb/studies/{A's study}``) was stored (200), and
    A's study metadata then held B's instance. One study is one patient's (PS3.3 A.1.2): 409,
    the instance in FailedSOPSequence with FailureReason 0xA900 (as a re-send naming another
    patient), audited naming the instance, never A's identifier; nothing stored. So is one
    naming A's series under another study. Seen failing with 200."""
    client, services = adapter
    photo = post_photo(client, WOUND, metadata(encounter={"reference": "Encounter/77"}))
    assert photo.status_code == 201, photo.text
    study, series = photo.json()["dicom"]["studyInstanceUid"], photo.json()["dicom"]["seriesInstanceUid"]
    other = received(record_id="rec-b", PatientID="MRN-0002", PatientName="Other^Patient", StudyInstanceUID=study)
    elsewhere = received(record_id="rec-a2", SeriesInstanceUID=series, StudyInstanceUID=generate_uid(prefix="2.25."))
    for sent, url_study, said in ((other, study, "the study is held for another patient"),
                                  (elsewhere, None, "the series is held in another study")):
        r = stow(client, sent, study=url_study)
        assert r.status_code == 409, r.text
        [failed] = r.json()["00081198"]["Value"]
        assert (value(failed, "00081155"), value(failed, "00081197")) == (sent.SOPInstanceUID,
                                                                          DATASET_DOES_NOT_MATCH_SOP_CLASS)
        [refusal] = dicom_events(services.store.list_audit(1), INSTANCES_TRANSFERRED)
        record_emitted([refusal])
        assert refusal["outcome"] == "4" and sop_instance_uids(refusal) == [sent.SOPInstanceUID]
        assert refusal["outcomeDesc"].startswith(said)
        if sent is other:
            assert [p["value"] for p in patients(refusal)] == ["MRN-0002"] and PATIENT["value"] not in json.dumps(refusal)
        assert services.store.find_dicom_instance(sent.SOPInstanceUID) is None
        assert find(client, "Media", sent.SOPInstanceUID) == []
    metadata_of_study = client.get(f"/dicomweb/studies/{study}/metadata", headers=TREAT)
    assert metadata_of_study.status_code == 200, metadata_of_study.text
    assert [value(i, "00100020") for i in metadata_of_study.json()] == [PATIENT["value"]]
    assert list((services.settings.data_dir / "staging").iterdir()) == []


def test_a_photo_whose_encounters_study_is_held_for_another_patient_is_refused(
        adapter: tuple[FhirClient, Services]) -> None:
    """The HTTP side of the clinical safety review's finding 1. A posted photo's study is a hash
    of its patient and encounter under ADAPTER_UID_ROOT (adapter.mapping.dicom_uids), so two
    patients with the same encounter identifier get two studies; but an object received for
    another patient may name the very UID (a PACS's error, or one stored before studies were
    checked). The photo then does not join that patient's study: 409, nothing stored, the
    refusal audited, without the other patient's identifier. Seen failing: stored (201), in the
    other patient's study."""
    from adapter.mapping.dicom_uids import photo_uids
    from adapter.model.photo import Identifier

    client, services = adapter
    study = photo_uids(services.settings.uid_root, b"any key", record_id="any", encounter="Encounter/77",
                       patient=Identifier(**PATIENT)).study
    other = received(record_id="rec-b", PatientID="MRN-0002", PatientName="Other^Patient", StudyInstanceUID=study)
    assert stow(client, other).status_code == 200
    photo = post_photo(client, WOUND, metadata(encounter={"reference": "Encounter/77"}))
    assert photo.status_code == 409, photo.text
    assert "held for another patient" in photo.text and "MRN-0002" not in photo.text
    assert [i.patient.value for i in services.store.search_dicom_instances(study=study)] == ["MRN-0002"]
    [refusal] = services.store.list_audit(1)
    record_emitted([refusal])
    assert refusal["outcome"] == "4" and "held for another patient" in refusal["outcomeDesc"]
    assert "MRN-0002" not in json.dumps(refusal)
    other_encounter = post_photo(client, WOUND, metadata(encounter={"reference": "Encounter/78"}))
    assert other_encounter.status_code == 201, other_encounter.text


def test_stow_failures_are_listed_and_nothing_is_stored(adapter: tuple[FhirClient, Services]) -> None:
    client, services = adapter
    good = received()
    ct = ct_object()
    other_study = received(record_id="rec-other", StudyInstanceUID=generate_uid(prefix="2.25."))
    mismatch = received(record_id="rec-mismatch")
    # the file meta names another instance than the dataset (as a C-STORE request could)
    uid = mismatch.SOPInstanceUID.encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    mismatched = encode_dataset(mismatch).replace(uid, other, 1)
    assert read(mismatched).file_meta.MediaStorageSOPInstanceUID == other.decode()
    r = stow(client, good, b"this is not DICOM at all", ct, other_study, mismatched, study=good.StudyInstanceUID)
    assert r.status_code == 202, r.text
    body = r.json()
    assert [value(i, "00081155") for i in body["00081199"]["Value"]] == [good.SOPInstanceUID]
    assert value(body, "00081190").endswith(f"/dicomweb/studies/{good.StudyInstanceUID}")
    failed = {value(i, "00081155"): value(i, "00081197") for i in body["00081198"]["Value"]}
    assert failed == {None: CANNOT_UNDERSTAND, ct.SOPInstanceUID: SOP_CLASS_NOT_SUPPORTED,
                      other_study.SOPInstanceUID: DATASET_DOES_NOT_MATCH_SOP_CLASS,
                      mismatch.SOPInstanceUID: DATASET_DOES_NOT_MATCH_SOP_CLASS}
    not_dicom = next(i for i in body["00081198"]["Value"] if value(i, "00081155") is None)
    assert not_dicom["00081155"] == {"vr": "UI"}
    for uid in (ct.SOPInstanceUID, other_study.SOPInstanceUID, mismatch.SOPInstanceUID):
        assert services.store.find_dicom_instance(uid) is None
        assert find(client, "Media", uid) == []
    assert [i.sop_instance_uid for i in services.store.search_dicom_instances()] == [good.SOPInstanceUID]
    assert list((services.settings.data_dir / "staging").iterdir()) == []
    # every part failing: 409
    all_failed = stow(client, ct)
    assert all_failed.status_code == 409
    assert "00081199" not in all_failed.json()


def test_stow_refuses_other_media_types(adapter: tuple[FhirClient, Services]) -> None:
    client, _ = adapter
    data = encode_dataset(received())
    r = client.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
    assert r.status_code == 415 and r.json()["resourceType"] == "OperationOutcome"
    body, _ = related(("application/dicom", data))
    r = client.post("/dicomweb/studies", content=body,
                    headers={"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=b0undary-1234'})
    assert r.status_code == 415
    # a part of another type in a DICOM request fails on its own
    body, ctype = related(("application/dicom", data), ("image/jpeg", b"\xff\xd8\xff\xd9"))
    r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 202
    assert value(r.json()["00081198"]["Value"][0], "00081197") == CANNOT_UNDERSTAND



@pytest.mark.parametrize("ctype", [
    'multipart/related; type="application/dicom"; boundary=b0undary-1234; boundary=other',
    'multipart/related; type="application/dicom+xml"; type="application/dicom"; boundary=b0undary-1234',
    'multipart/related; type="application/dicom"; start="<a>"; start="<b>"; boundary=b0undary-1234',
    None,  # two Content-Type headers
    "part",  # a part with two Content-Type lines
])
def test_stow_refuses_a_repeated_parameter_or_header(adapter: tuple[FhirClient, Services], ctype: str | None) -> None:
    """Security review 3: the last of a repeated parameter or part header won here, the first in
    other parsers. Refused (400), nothing stored."""
    client, services = adapter
    data = encode_dataset(received())
    body, plain = related(("application/dicom", data))
    headers: list[tuple[str, str]] = [("Content-Type", ctype or plain)]
    if ctype is None:
        headers.append(("Content-Type", plain.replace("b0undary-1234", "other")))
    elif ctype == "part":
        body, _ = related(("image/jpeg\r\nContent-Type: application/dicom", data))
        headers = [("Content-Type", plain)]
    r = client.post("/dicomweb/studies", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", r.text[:300]
    for folder in ("staging", "blobs"):
        assert not [p for p in (services.settings.data_dir / folder).rglob("*") if p.is_file()], folder

def test_every_refused_stow_part_is_audited_once(adapter: tuple[FhirClient, Services]) -> None:
    """IHE ATNA / DICOM PS3.15 A.5.3.7: each part the adapter does not keep is one DICOM
    Instances Transferred message with a failure outcome, the client the Source, naming the SOP
    instance as the store response does (the dataset's own, where it could be read) and no
    patient (none of these was read as far as its patient); a stored part is audited as before.
    Before, only the consent refusals were audited: these left no trace."""
    client, services = adapter
    good = received()
    ct = ct_object()
    no_series = received(record_id="rec-no-series")
    del no_series.SeriesInstanceUID
    mismatch = received(record_id="rec-mismatch")
    uid = mismatch.SOPInstanceUID.encode()
    other = uid[:-1] + (b"1" if uid[-1:] != b"1" else b"2")
    mismatched = encode_dataset(mismatch).replace(uid, other, 1)  # the file meta names another instance
    body, ctype = related(("application/dicom", encode_dataset(good)), ("application/dicom", b"not DICOM at all"),
                          ("application/dicom", encode_dataset(ct)), ("application/dicom", encode_dataset(no_series)),
                          ("application/dicom", mismatched), ("image/jpeg", b"\xff\xd8\xff\xd9"))
    r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype})
    assert r.status_code == 202, r.text
    failed = [(value(i, "00081155"), value(i, "00081197")) for i in r.json()["00081198"]["Value"]]
    assert failed == [(None, CANNOT_UNDERSTAND), (ct.SOPInstanceUID, SOP_CLASS_NOT_SUPPORTED),
                      (no_series.SOPInstanceUID, DATASET_DOES_NOT_MATCH_SOP_CLASS),
                      (mismatch.SOPInstanceUID, DATASET_DOES_NOT_MATCH_SOP_CLASS), (None, CANNOT_UNDERSTAND)]
    assert [i.sop_instance_uid for i in services.store.search_dicom_instances()] == [good.SOPInstanceUID]
    assert list((services.settings.data_dir / "staging").iterdir()) == []

    events = dicom_events(services.store.list_audit(100)[::-1], INSTANCES_TRANSFERRED)
    record_emitted(events)
    assert [e["outcome"] for e in events] == ["0", "4", "4", "4", "4", "4"]
    stored, *refusals = events
    assert study_uids(stored) == [good.StudyInstanceUID]
    assert [sop_instance_uids(e) for e in refusals] == [[], [ct.SOPInstanceUID], [no_series.SOPInstanceUID],
                                                        [mismatch.SOPInstanceUID], []]
    for refusal in refusals:
        assert refusal["action"] == "C" and refusal["outcomeDesc"]
        assert agent_roles(refusal) == ["110153", "110152", "AUT"]
        source = refusal["agent"][0]
        assert source["network"]["address"] == PACS_PEER and "altId" not in source  # DICOMweb has no AE title
        assert patients(refusal) == [] and study_uids(refusal) == []
        assert PATIENT["value"] not in json.dumps(refusal) and PATIENT_NAME not in json.dumps(refusal)
    assert [r["outcomeDesc"] for r in refusals] == [
        "the part is not a DICOM Part 10 object", f"SOP class {CT_CLASS} is not accepted",
        "the object has no SeriesInstanceUID", "the dataset's SOP Instance UID is not the one of the C-STORE request",
        "a part of type image/jpeg"]


def test_every_stow_rs_event_names_the_http_client_its_request_id_and_stated_purpose(
        adapter: tuple[FhirClient, Services]) -> None:
    """Found by the audit review: STOW-RS AuditEvents carried no X-Request-Id (the README says
    the request's AuditEvents record it), named the requestor "AE DICOMWEB (C-STORE)", which
    misdescribes an HTTP request (PS3.18), and recorded purposeOfUse TREAT whatever the client
    stated. Every event of a STOW-RS request (each instance stored, each part refused, a request
    refused whole, an instance already stored) now names the HTTP client by its address (no AE
    title), the request's X-Request-Id and the purpose it stated; TREAT when it stated none."""
    client, services = adapter
    good, ct = received(), ct_object()
    body, ctype = related(("application/dicom", encode_dataset(good)), ("application/dicom", encode_dataset(ct)),
                          ("image/jpeg", b"\xff\xd8\xff\xd9"))
    headers = {"Content-Type": ctype, "X-Request-Id": "stow-req-1", "X-Purpose-Of-Use": "RECORDMGT"}
    r = client.post("/dicomweb/studies", content=body, headers=headers)
    assert r.status_code == 202, r.text
    assert client.post("/dicomweb/studies", content=b"--x--\r\n", headers={
        **headers, "X-Request-Id": "stow-req-2", "Content-Type": 'multipart/related; type="application/dicom"',
    }).status_code == 422  # no boundary: refused whole
    resent, _ = related(("application/dicom", encode_dataset(good)))
    again = client.post("/dicomweb/studies", content=resent, headers={"Content-Type": ctype})  # no purpose, no id
    assert again.status_code == 200, again.text

    events = dicom_events(services.store.list_audit(100)[::-1], INSTANCES_TRANSFERRED)
    record_emitted(events)
    assert [(e["outcome"], caller_request_ids(e)) for e in events] == [
        ("0", ["stow-req-1"]), ("4", ["stow-req-1"]), ("4", ["stow-req-1"]), ("4", ["stow-req-2"]), ("0", [])]
    # a request that sent no id is answered with the adapter's own, which its event names
    assert own_request_ids(events[-1]) == [again.headers["x-request-id"]]
    assert study_uids(events[0]) == [good.StudyInstanceUID] and sop_instance_uids(events[1]) == [ct.SOPInstanceUID]
    for event in events:
        source, _, user = event["agent"]
        assert "altId" not in source and source["network"]["address"] == PACS_PEER
        assert user["who"]["display"] == f"client {PACS_PEER} (STOW-RS)"
        assert "DICOMWEB" not in json.dumps(event) and "C-STORE" not in json.dumps(event)
    assert [e["agent"][2]["purposeOfUse"][0]["coding"][0]["code"] for e in events] == ["RECORDMGT"] * 4 + ["TREAT"]


def test_a_received_object_with_nul_inside_a_text_value_is_refused_not_mapped_into_fhir(
        adapter: tuple[FhirClient, Services]) -> None:
    """NUL pads DICOM values (PS3.5 6.2), never sits inside one, and FHIR strings refuse it: an
    InstitutionName "Gen<NUL>eral" went into the Provenance (onBehalfOf.display) as U+0000,
    invalid FHIR served to every reader. Now 0xC000 Cannot understand, nothing stored; NUL
    padding at the end is still trimmed."""
    client, _ = adapter
    bad = received(record_id="rec-nul", InstitutionName="Gen\x00eral")
    r = stow(client, bad)
    assert r.status_code == 409 and value(r.json()["00081198"]["Value"][0], "00081197") == CANNOT_UNDERSTAND
    assert find(client, "Media", bad.SOPInstanceUID) == []
    padded = received(record_id="rec-pad", InstitutionName="General\x00")
    assert stow(client, padded).status_code == 200
    [media] = find(client, "Media", padded.SOPInstanceUID)
    provenance = client.get("/fhir/Provenance", params={"target": f"Media/{media['id']}"}, headers=TREAT).json()
    assert "\\u0000" not in json.dumps(provenance) and "General" in json.dumps(provenance)


def test_stow_of_an_object_with_several_patient_ids_or_issuers_is_refused_and_audited(
        adapter: tuple[FhirClient, Services]) -> None:
    """PatientID and IssuerOfPatientID are LO of VM 1 (PS3.6): an object with two cannot tell whose
    it is, and is refused as one with none is (0xA900), audited naming no patient, nothing stored.
    Before, it was filed under the Python text "['MRN-0001', 'MRN-0002']"."""
    client, services = adapter
    two_ids = received(record_id="rec-two-ids", PatientID=f"{PATIENT['value']}\\MRN-0002")
    two_issuers = received(record_id="rec-two-issuers", IssuerOfPatientID="HOSP\\OTHER")
    r = stow(client, two_ids, two_issuers)
    assert r.status_code == 409, r.text
    failed = [(value(i, "00081155"), value(i, "00081197")) for i in r.json()["00081198"]["Value"]]
    assert failed == [(two_ids.SOPInstanceUID, DATASET_DOES_NOT_MATCH_SOP_CLASS),
                      (two_issuers.SOPInstanceUID, DATASET_DOES_NOT_MATCH_SOP_CLASS)]
    assert services.store.search_dicom_instances() == []
    assert find(client, "Media", two_ids.SOPInstanceUID) == [] and find(client, "Media", two_issuers.SOPInstanceUID) == []
    refusals = dicom_events(services.store.list_audit(100)[::-1], INSTANCES_TRANSFERRED)
    record_emitted(refusals)
    assert [e["outcome"] for e in refusals] == ["4", "4"]
    assert [sop_instance_uids(e) for e in refusals] == [[two_ids.SOPInstanceUID], [two_issuers.SOPInstanceUID]]
    for refusal in refusals:
        assert patients(refusal) == [] and "MRN-0002" not in json.dumps(refusal) and "OTHER" not in json.dumps(refusal)


def test_stow_refuses_a_body_cut_before_its_closing_boundary(adapter: tuple[FhirClient, Services]) -> None:
    """python-multipart's finalize() does not check that the body ended: a cut one was stored."""
    client, services = adapter
    sent = received()
    body, ctype = related(("application/dicom", encode_dataset(sent)))
    for cut in (body[: -len("--b0undary-1234--\r\n")], body[: -len("--\r\n")]):
        r = client.post("/dicomweb/studies", content=cut, headers={"Content-Type": ctype})
        assert r.status_code == 422 and "closing boundary" in r.text, r.text
        assert services.store.find_dicom_instance(sent.SOPInstanceUID) is None


def test_stow_size_limits_answer_413_and_leave_nothing(tmp_path: Path) -> None:
    data = encode_dataset(received())
    with pacs_client(tmp_path, max_upload_bytes=len(data) - 1) as (client, services):
        r = stow(client, data)  # one part over the limit
        assert r.status_code == 413, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
        assert services.store.search_dicom_instances() == []
        assert list((services.settings.data_dir / "staging").iterdir()) == []


# -- WADO-RS and Binary ---------------------------------------------------------------------------


def test_wado_for_treat_returns_the_received_bytes(adapter: tuple[FhirClient, Services], checked: Checked) -> None:
    client, _ = adapter
    vl = received()
    sent = encode_dataset(vl)
    assert stow(client, sent).status_code == 200
    r = wado(client, vl.StudyInstanceUID, vl.SeriesInstanceUID, vl.SOPInstanceUID)
    assert r.status_code == 200, r.text
    [part] = parts_of(r)
    assert part == sent
    checked("received, TREAT", part)
    # study and series retrieve: the same single object
    assert parts_of(wado(client, vl.StudyInstanceUID)) == [sent]
    assert parts_of(wado(client, vl.StudyInstanceUID, vl.SeriesInstanceUID)) == [sent]
    # wrong series for the instance, unknown instance
    assert wado(client, vl.StudyInstanceUID, "2.25.1", vl.SOPInstanceUID).status_code == 404
    assert wado(client, "2.25.1").status_code == 404


def test_wado_of_a_photo_is_regenerated_with_its_fixed_uids(adapter: tuple[FhirClient, Services],
                                                            checked: Checked) -> None:
    client, _ = adapter
    receipt = post_photo(client, WOUND, metadata()).json()
    uids = receipt["dicom"]
    first = wado(client, uids["studyInstanceUid"], uids["seriesInstanceUid"], uids["sopInstanceUid"])
    second = wado(client, uids["studyInstanceUid"], uids["seriesInstanceUid"], uids["sopInstanceUid"])
    assert first.status_code == 200, first.text
    [a], [b] = parts_of(first), parts_of(second)
    assert a == b  # the identical object every time
    ds = checked("photo, TREAT", a)
    assert ds.SOPInstanceUID == uids["sopInstanceUid"] and ds.PatientID == PATIENT["value"]
    # Binary as application/dicom: the same object, one body
    binary = client.get(f"/fhir/{receipt['binary']}", headers={**TREAT, "Accept": "application/dicom"})
    assert binary.status_code == 200
    assert binary.headers["content-type"] == "application/dicom"
    assert binary.content == a


def test_a_secondary_images_object_warns_every_reader_and_a_clinical_photos_does_not(
        adapter: tuple[FhirClient, Services], checked: Checked) -> None:
    """A photo of an x-ray or ECG is to be reviewed on its original platform: the object the
    adapter serves (and forwards: the one object dicom_object_for makes) says so in
    ImageComments, as the FHIR record's note does, and in SeriesDescription; the TRAIN and
    HRESCH copies keep those fixed texts. The sender's own note is never in the object."""
    client, services = adapter
    note = "photo of chest x-ray from screen, bed 4"
    secondary = post_photo(client, ROOT / "samples" / "document.jpg",
                           metadata(kind="secondary", note=note, consent=None)).json()
    clinical = post_photo(client, WOUND, metadata(note=note)).json()
    warning = services.tables.kinds[PhotoKind.SECONDARY].warning
    assert warning and "Review the original on its platform before diagnosis." in warning
    record = client.get(f"/fhir/{secondary['record']}", headers=TREAT).json()
    assert warning in [n["text"] for n in record["note"]]  # the same words as the FHIR record

    def served(receipt: dict[str, Any], headers: dict[str, str]) -> tuple[bytes, Dataset]:
        answer = client.get(f"/fhir/{seen_as(services, headers['X-Purpose-Of-Use'], receipt['binary'])}",
                            headers={**headers, "Accept": "application/dicom"})
        assert answer.status_code == 200, answer.text
        return answer.content, read(answer.content)

    data, ds = served(secondary, TREAT)
    checked("secondary photo, TREAT", data)
    assert ds.ImageComments == warning
    assert "review the original" in ds.SeriesDescription
    assert note.encode() not in data
    data, ds = served(clinical, TREAT)
    assert "ImageComments" not in ds and "SeriesDescription" not in ds and note.encode() not in data
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TRAIN, HRESCH):
        data, ds = served(secondary, headers)
        checked(f"secondary photo, {headers['X-Purpose-Of-Use']}", data)
        assert ds.ImageComments == warning and "review the original" in ds.SeriesDescription
        assert ds.PatientIdentityRemoved == "NO" and note.encode() not in data
        series = [item for item in qido(client, "series", headers) if value(item, "00080060") == "OT"]
        assert [value(item, "0008103E") for item in series] == [ds.SeriesDescription]


def test_a_received_secondary_images_object_carries_the_warning_in_every_view(
        adapter: tuple[FhirClient, Services], checked: Checked) -> None:
    """Clinical-safety review 2: an object received over STOW-RS (or C-STORE) that the adapter
    files as ``secondary`` carried the "review the original" warning on its FHIR record only.
    Care's copy now says it first in ImageComments, the sender's comments after it (the stored
    file stays as received); the TRAIN and HRESCH copies say it alone (the sender's text is
    removed there). Study metadata says it too. dciodvfy: 0 errors."""
    client, services = adapter
    warning = services.tables.kinds[PhotoKind.SECONDARY].warning
    assert warning
    bare = received(PhotoKind.SECONDARY, record_id="rec-s1")
    del bare.ImageComments, bare.SeriesDescription
    commented = received(PhotoKind.SECONDARY, record_id="rec-s2", ImageComments="screen of bay 4, see PACS")
    del commented.SeriesDescription
    sent = {o.SOPInstanceUID: encode_dataset(o) for o in (bare, commented)}
    assert stow(client, *sent.values()).status_code == 200
    expected = {bare.SOPInstanceUID: [warning], commented.SOPInstanceUID: [warning, "screen of bay 4, see PACS"]}
    add_consent(client, ["TRAIN", "HRESCH"])
    for obj in (bare, commented):
        sop, lines = obj.SOPInstanceUID, expected[obj.SOPInstanceUID]
        [media] = find(client, "Media", sop)
        assert warning in [n["text"] for n in media["note"]]  # filed as secondary
        [data] = parts_of(wado(client, obj.StudyInstanceUID, obj.SeriesInstanceUID, sop))
        ds = checked("received secondary, TREAT", data)
        assert ds.ImageComments.split("\r\n") == lines
        stored = services.store.find_dicom_instance(sop)
        assert stored is not None and stored.blob_sha256 is not None
        assert services.blobs.path(stored.blob_sha256).read_bytes() == sent[sop]  # kept as received
        binary = media["content"]["url"].split("/fhir/")[-1]
        for headers in (TRAIN, HRESCH):
            answer = client.get(f"/fhir/{seen_as(services, headers['X-Purpose-Of-Use'], binary)}",
                                headers={**headers, "Accept": "application/dicom"})
            assert answer.status_code == 200, answer.text
            copy_ds = checked(f"received secondary, {headers['X-Purpose-Of-Use']}", answer.content)
            assert copy_ds.ImageComments == warning and b"bay 4" not in answer.content
            assert "113105" in [c.CodeValue for c in copy_ds.DeidentificationMethodCodeSequence]
    metadata_of = client.get(f"/dicomweb/studies/{bare.StudyInstanceUID}/metadata", headers=TREAT)
    assert metadata_of.status_code == 200, metadata_of.text
    assert all(value(item, "00204000").startswith(warning) for item in metadata_of.json())
    # a received clinical photo is released for care as received, byte for byte
    clinical = received(record_id="rec-c1")
    assert stow(client, clinical).status_code == 200
    [data] = parts_of(wado(client, clinical.StudyInstanceUID, clinical.SeriesInstanceUID, clinical.SOPInstanceUID))
    assert data == encode_dataset(clinical)


def test_an_external_colleagues_photo_names_no_institution_and_says_where_it_came_from(
        adapter: tuple[FhirClient, Services], checked: Checked) -> None:
    """Clinical-safety review 5: the object of a ``colleague-external`` photo named this
    organisation as InstitutionName (Type 3, General Equipment) and said nothing of its origin. It
    now carries no InstitutionName and says in ImageComments, in the adapter's fixed words (never
    the sender's), that the photo came from outside and its discussion note is in the record; the
    TRAIN and HRESCH copies keep that text (no organisation: they remove InstitutionName)."""
    client, services = adapter
    colleague = {"name": "Dr X Ext", "organisation": "Other Trust", "discussionNote": "Discussed by phone, bed 4"}
    posted = post_photo(client, WOUND, metadata(source="colleague-external", colleague=colleague))
    assert posted.status_code == 201, posted.text
    external = posted.json()
    own = post_photo(client, ROOT / "samples" / "tiny.jpg", metadata()).json()
    add_consent(client, ["TRAIN", "HRESCH"])
    for receipt, purpose in ((own, "TREAT"), (external, "TREAT"), (external, "TRAIN"), (external, "HRESCH")):
        answer = client.get(f"/fhir/{seen_as(services, purpose, receipt['binary'])}",
                            headers={"X-Purpose-Of-Use": purpose, "Accept": "application/dicom"})
        assert answer.status_code == 200, answer.text
        ds = checked(f"{receipt['record']}, {purpose}", answer.content)
        assert b"Other Trust" not in answer.content and b"Dr X Ext" not in answer.content
        assert b"bed 4" not in answer.content
        if receipt is own:
            assert ds.InstitutionName == services.tables.policy.organisation.name
            assert EXTERNAL_COLLEAGUE_COMMENT not in str(ds.get("ImageComments", ""))
            continue
        assert "InstitutionName" not in ds
        assert ds.ImageComments == EXTERNAL_COLLEAGUE_COMMENT
        assert "outside the organisation" in ds.ImageComments and "discussion note" in ds.ImageComments


QUALITY_WARNING = "Quality warning: "


def blurred_photo(path: Path) -> Path:
    """samples/wound.jpg blurred (Gaussian, radius 20): ingest warns "image looks blurred"."""
    out = io.BytesIO()
    with PIL.Image.open(WOUND) as image:
        image.filter(PIL.ImageFilter.GaussianBlur(20)).save(out, "JPEG", quality=90)
    path.write_bytes(out.getvalue())
    return path


def test_a_photos_quality_warnings_reach_its_object_in_the_records_words(
        adapter: tuple[FhirClient, Services], checked: Checked, tmp_path: Path) -> None:
    """Clinical-safety review ("quality warnings never reach DICOM"): what ingest judged of the
    photo (too small, blurred…), which its receipt and its FHIR record's notes say, a PACS reader
    is told too: the object WADO-RS serves (the one object dicom_object_for makes, also forwarded)
    carries it in ImageComments, after the kind's warning, one line each, in the notes' words;
    the TRAIN and HRESCH copies keep those lines (no patient data). dciodvfy: 0 errors."""
    client, services = adapter
    small = post_photo(client, ROOT / "samples" / "tiny.jpg", metadata()).json()
    shaky = post_photo(client, blurred_photo(tmp_path / "blurred.jpg"),
                       metadata(kind="secondary", consent=None)).json()
    warning = services.tables.kinds[PhotoKind.SECONDARY].warning
    add_consent(client, ["TRAIN", "HRESCH"])
    for receipt, first, said in ((small, [], "below the policy minimum of 640x480"),
                                 (shaky, [warning], "image looks blurred (sharpness ")):
        record = client.get(f"/fhir/{receipt['record']}", headers=TREAT).json()
        quality = [n["text"] for n in record["note"] if n["text"].startswith(QUALITY_WARNING)]
        assert any(said in text for text in quality), quality
        assert all(text.removeprefix(QUALITY_WARNING) in receipt["warnings"] for text in quality)  # its words too
        uids = receipt["dicom"]
        [data] = parts_of(wado(client, uids["studyInstanceUid"], uids["seriesInstanceUid"], uids["sopInstanceUid"]))
        ds = checked(f"{receipt['record']} with quality warnings, TREAT", data)
        assert ds.ImageComments.split("\r\n") == first + quality
        for headers in (TRAIN, HRESCH):
            answer = client.get(f"/fhir/{seen_as(services, headers['X-Purpose-Of-Use'], receipt['binary'])}",
                                headers={**headers, "Accept": "application/dicom"})
            assert answer.status_code == 200, answer.text
            copy_ds = checked(f"{receipt['record']} with quality warnings, {headers['X-Purpose-Of-Use']}",
                              answer.content)
            # the copy keeps the warnings; a photo's pixels may show the person: identity not removed
            assert copy_ds.ImageComments == ds.ImageComments and copy_ds.PatientIdentityRemoved == "NO"


def test_a_photo_stored_before_its_object_carried_quality_warnings_keeps_its_object(tmp_path: Path) -> None:
    """The object is made afresh at every read and forward: an instance stored before (schema 18,
    no object_version) is made as it was then and sent, its ImageComments without the quality
    warnings (the identical object every time: a PACS holding it is never contradicted under
    its SOP Instance UID); a photo posted after the upgrade carries them."""
    with pacs_client(tmp_path) as (client, _):
        before = post_photo(client, ROOT / "samples" / "tiny.jpg", metadata()).json()
    db = sqlite3.connect(tmp_path / "data" / "adapter.db")
    try:
        with db:  # one transaction: the tables as schema 18 made them
            db.execute("ALTER TABLE dicom_instances DROP COLUMN object_version")
            db.execute("UPDATE schema_version SET version = 18")
    finally:
        db.close()
    with pacs_client(tmp_path) as (client, services):
        with services.store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT max(version) FROM schema_version").scalar() == SCHEMA_VERSION
        record = client.get(f"/fhir/{before['record']}", headers=TREAT).json()
        assert any(n["text"].startswith(QUALITY_WARNING) for n in record["note"])
        uids = before["dicom"]
        served = [parts_of(wado(client, uids["studyInstanceUid"], uids["seriesInstanceUid"],
                                uids["sopInstanceUid"]))[0] for _ in range(2)]
        assert served[0] == served[1] and "ImageComments" not in read(served[0])
        after = post_photo(client, blurred_photo(tmp_path / "blurred.jpg"), metadata()).json()
        uids = after["dicom"]
        [data] = parts_of(wado(client, uids["studyInstanceUid"], uids["seriesInstanceUid"], uids["sopInstanceUid"]))
        assert read(data).ImageComments.startswith(QUALITY_WARNING + "image looks blurred")


def test_purpose_header_and_accept_are_checked(adapter: tuple[FhirClient, Services]) -> None:
    client, _ = adapter
    vl = received()
    stow(client, vl)
    url = f"/dicomweb/studies/{vl.StudyInstanceUID}/series/{vl.SeriesInstanceUID}/instances/{vl.SOPInstanceUID}"
    assert client.get(url).status_code == 403
    assert client.get(url, headers={"X-Purpose-Of-Use": "NOPE"}).status_code == 400
    assert client.get("/dicomweb/studies").status_code == 403
    assert client.get("/dicomweb/studies", headers={"X-Purpose-Of-Use": "NOPE"}).status_code == 400
    refused = client.get(url, headers={**TREAT, "Accept": "application/dicom"})
    assert refused.status_code == 406 and refused.json()["resourceType"] == "OperationOutcome"
    assert {"system": "urn:clinical-image-adapter:refusal", "code": "not-acceptable"}.items() <= \
        refused.json()["issue"][0]["details"]["coding"][0].items()  # a code to route on, as every refusal has
    assert client.get(url, headers={**TREAT, "Accept": 'multipart/related; type="image/jpeg"'}).status_code == 406
    assert client.get(url, headers={
        **TREAT, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    }).status_code == 406
    ok = client.get(url, headers={**TREAT, "Accept": 'multipart/related; type="application/dicom"; '
                                                     'transfer-syntax=*'})
    assert ok.status_code == 200
    assert client.get("/dicomweb/studies", headers={**TREAT, "Accept": "application/dicom+xml"}).status_code == 406
    # a range of quality 0 is a refusal (RFC 9110 12.4.2), not a request
    assert client.get("/dicomweb/studies", headers={**TREAT, "Accept": "application/dicom+json; q=0"}).status_code == 406
    assert client.get(url, headers={**TREAT, "Accept": 'multipart/related; type="application/dicom"; q=0'}
                      ).status_code == 406
    bad = client.get("/dicomweb/studies", params={"PatientSex": "F"}, headers=TREAT)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    assert client.get("/dicomweb/studies", params={"SOPInstanceUID": "1.2"}, headers=TREAT).status_code == 400
    # "\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661": 20240101 in Arabic-Indic digits (Python's \\d takes them)
    for params in ({"StudyDate": "2024"}, {"StudyDate": "-"}, {"limit": "x"},
                   {"StudyDate": "\u0662\u0660\u0662\u0664\u0660\u0661\u0660\u0661"}):
        assert client.get("/dicomweb/studies", params=params, headers=TREAT).status_code == 400, params
    # break-glass: permitted, flagged, audited
    glass = client.get(url, headers={"X-Purpose-Of-Use": "BTG"})
    assert glass.status_code == 200 and "X-Break-Glass" in glass.headers


def test_every_dicom_answer_break_glass_released_says_so(adapter: tuple[FhirClient, Services]) -> None:
    """Review finding: only the instance and study retrieves (and WADO-URI's DICOM) carried
    X-Break-Glass; metadata, frames, bulk data, rendered, thumbnails, QIDO-RS and WADO-URI's
    rendered images released under break-glass said nothing."""
    client, _ = adapter
    vl = received(ICCProfile=bytes(range(256)))
    assert stow(client, vl).status_code == 200
    study, series, instance = vl.StudyInstanceUID, vl.SeriesInstanceUID, vl.SOPInstanceUID
    base = f"/dicomweb/studies/{study}/series/{series}/instances/{instance}"
    wado_uri = f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={instance}"
    answers = {
        "QIDO-RS": ("/dicomweb/studies", None),
        "study metadata": (f"/dicomweb/studies/{study}/metadata", None),
        "instance metadata": (f"{base}/metadata", None),
        "frames": (f"{base}/frames/1", 'multipart/related; type="image/jpeg"'),
        "bulk data": (f"{base}/bulk/00282000", 'multipart/related; type="application/octet-stream"'),
        "rendered": (f"{base}/rendered", None),
        "instance thumbnail": (f"{base}/thumbnail", None),
        "study thumbnail": (f"/dicomweb/studies/{study}/thumbnail", None),
        "WADO-URI rendered": (f"{wado_uri}&contentType=image/jpeg", None),
        "WADO-URI thumbnail": (f"{wado_uri}&contentType=image/jpeg&rows=64", None),
        "WADO-URI DICOM": (f"{wado_uri}&contentType=application/dicom", None),
    }
    for name, (url, accept) in answers.items():
        extra = {"Accept": accept} if accept else {}
        care = client.get(url, headers={**TREAT, **extra})
        glass = client.get(url, headers={"X-Purpose-Of-Use": "BTG", **extra})
        assert (care.status_code, glass.status_code) == (200, 200), (name, care.text[:200], glass.text[:200])
        assert "X-Break-Glass" not in care.headers, name
        assert "suppressed" in glass.headers.get("X-Break-Glass", ""), name


def test_train_needs_consent_then_gets_a_deidentified_object(adapter: tuple[FhirClient, Services],
                                                            checked: Checked) -> None:
    client, services = adapter
    a, b = received(record_id="rec-a"), received(record_id="rec-b")
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert stow(client, a, b).status_code == 200
    # no TRAIN consent: refused, saying little, and audited
    refused = wado(client, a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID, headers=TRAIN)
    assert refused.status_code in (403, 404)  # the original UIDs are not even in TRAIN's UID space
    assert qido(client, "studies", TRAIN) == []
    add_consent(client, ["TRAIN"])
    [study] = qido(client, "studies", TRAIN)
    mapped_study = value(study, "0020000D")
    assert mapped_study != a.StudyInstanceUID
    assert "00100020" not in study and "00080020" not in study  # no PatientID, no dates under TRAIN
    assert value(study, "00201208") == 2 and value(study, "00201206") == 2
    instances = qido(client, f"studies/{mapped_study}/instances", TRAIN)
    assert len(instances) == 2
    released = []
    for item in instances:
        retrieved = client.get(value(item, "00081190").split("testserver")[-1], headers=TRAIN)
        assert retrieved.status_code == 200, retrieved.text
        [data] = parts_of(retrieved)
        assert PATIENT["value"].encode() not in data and PATIENT_NAME.encode() not in data
        ds = checked("received, TRAIN", data)
        assert ds.PatientIdentityRemoved == "NO"
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100"]
        assert ds.PatientID == "" and ds.PatientName == ""
        # the UIDs of the object are the ones QIDO shows
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.SOPClassUID) == (
            mapped_study, value(item, "0020000E"), value(item, "00080018"), value(item, "00080016"))
        released.append(ds)
    assert released[0].StudyInstanceUID == released[1].StudyInstanceUID
    assert {d.SOPInstanceUID for d in released}.isdisjoint({a.SOPInstanceUID, b.SOPInstanceUID})
    # the original UIDs are not accepted under TRAIN: the client works in the mapped space
    assert wado(client, a.StudyInstanceUID, headers=TRAIN).status_code == 404
    # study retrieve: both, the same bytes as the instance retrieves
    both = parts_of(wado(client, mapped_study, headers=TRAIN))
    assert sorted(read(d).SOPInstanceUID for d in both) == sorted(d.SOPInstanceUID for d in released)
    # after withdrawal the mapped UIDs are refused (403, saying little); allow and deny are audited
    consent = next(c["resource"] for c in client.get("/fhir/Consent", headers=TREAT).json()["entry"]
                   if c["resource"]["provision"]["purpose"][0]["code"] == "TRAIN")
    withdraw(client, consent)
    first = value(instances[0], "00081190").split("testserver")[-1]
    denied = client.get(first, headers=TRAIN)
    assert denied.status_code == 404 and PATIENT["value"] not in denied.text
    train_reads = [e for e in dicom_events(services.store.list_audit(500), INSTANCES_TRANSFERRED)
                   if e["agent"][2].get("purposeOfUse", [{}])[0].get("coding", [{}])[0].get("code") == "TRAIN"
                   and e["action"] == "R"]
    assert {e["outcome"] for e in train_reads} == {"0", "4"}
    # the original UIDs found nothing (the instance, then the study): audited so, naming the UIDs
    # as asked, no record
    missed = [e for e in train_reads if e.get("outcomeDesc") == "not found in the de-identified view of TRAIN"]
    assert [(study_uids(e), sop_instance_uids(e)) for e in missed] == [([a.StudyInstanceUID], []),
                                                                       ([a.StudyInstanceUID], [a.SOPInstanceUID])]
    assert not any("reference" in x["what"] for e in missed for x in e["entity"])
    assert all(any(x.get("what", {}).get("reference", "").startswith(("Media/", "DocumentReference/"))
                   for x in e["entity"]) for e in train_reads if e not in missed)


def rewrite_stored(services: Services, sop_uid: str, header: bytes, vr: bytes) -> None:
    """Give the element whose tag and VR are ``header`` the VR ``vr`` in the stored object, as
    a store written by an older adapter may hold it."""
    instance = services.store.find_dicom_instance(sop_uid)
    assert instance is not None and instance.blob_sha256 is not None
    blob = services.blobs.path(instance.blob_sha256)
    data = blob.read_bytes()
    at = data.index(header, 132)
    blob.chmod(0o644)
    blob.write_bytes(data[:at + 4] + vr + data[at + 6:])


def test_a_stored_object_that_cannot_be_cleaned_is_not_released(adapter: tuple[FhirClient, Services]) -> None:
    """Defence behind the ingest's check (dicom_ingest.check_elements): an object stored before
    it, holding an element that cannot be read, is not released de-identified (it could not be
    cleaned): 500 with an OperationOutcome saying so, never a partial object, and no Retry-After: it
    fails so at every try (it was 503 "transient", review "ingest" 3); TREAT still gets the object
    as stored."""
    client, services = adapter
    a = received(record_id="rec-a")
    assert stow(client, a).status_code == 200
    # InstanceNumber under an unknown VR, as a store written before the check may hold it
    rewrite_stored(services, a.SOPInstanceUID, b"\x20\x00\x13\x00IS", b"I\x00")
    add_consent(client, ["TRAIN"])
    [item] = qido(client, "instances", TRAIN)
    refused = client.get(value(item, "00081190").split("testserver")[-1], headers=TRAIN)
    assert refused.status_code == 500 and "retry-after" not in refused.headers, refused.text
    assert refused.json()["resourceType"] == "OperationOutcome" and PATIENT["value"] not in refused.text
    assert wado(client, a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID).status_code == 200


def test_a_stored_frame_that_cannot_be_cleaned_is_a_storage_fault_not_the_readers(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """A multi-frame object stored before the ingest walked every frame, one of them no longer
    walkable: the TRAIN release cannot cut its segments. That is 500 (the stored object, at every
    try: no Retry-After), not the 422 the reader's request got before (found by fuzzing)."""
    client, services = adapter
    path = tmp_path / "mf.dcm"
    sent = multiframe_file(path, frames=3)
    assert stow(client, path.read_bytes()).status_code == 200
    instance = services.store.find_dicom_instance(sent.SOPInstanceUID)
    assert instance is not None and instance.blob_sha256 is not None
    blob = services.blobs.path(instance.blob_sha256)
    data = blob.read_bytes()
    second = data.index(b"\xff\xd8\xff\xe0\x00\x10", data.index(b"\xff\xd8\xff\xe0\x00\x10") + 1)
    blob.chmod(0o644)
    blob.write_bytes(data[:second + 4] + b"\x7f\xff" + data[second + 6:])
    add_consent(client, ["TRAIN"])
    [item] = qido(client, "instances", TRAIN)
    refused = client.get(value(item, "00081190").split("testserver")[-1], headers=TRAIN)
    assert refused.status_code == 500 and "retry-after" not in refused.headers, refused.text
    assert wado(client, sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID).status_code == 200


def test_a_stored_object_with_a_uid_under_another_vr_is_not_released(adapter: tuple[FhirClient, Services]) -> None:
    """Defence behind the ingest's VR check: a StudyInstanceUID stored as LO (by an adapter
    before the check) would keep its original value through the de-identification, which maps
    UI values; the release refuses it (500, at every try) under TRAIN and HRESCH instead of leaking it."""
    client, services = adapter
    a = received(record_id="rec-a")
    assert stow(client, a).status_code == 200
    rewrite_stored(services, a.SOPInstanceUID, b"\x20\x00\x0d\x00UI", b"LO")  # StudyInstanceUID as LO
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TRAIN, HRESCH):
        [item] = qido(client, "instances", headers)
        refused = client.get(value(item, "00081190").split("testserver")[-1], headers=headers)
        assert refused.status_code == 500 and "retry-after" not in refused.headers, refused.text
        assert a.StudyInstanceUID not in refused.text and refused.json()["resourceType"] == "OperationOutcome"
    assert wado(client, a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID).status_code == 200


def test_vr_mismatches_no_rule_tells_apart_are_stored_and_cleaned(adapter: tuple[FhirClient, Services],
                                                                   checked: Checked) -> None:
    """A PACS object with the VR slips modalities make (PatientID as SH, StationName as LO, the
    serial as SH) is stored, found by PatientID, returned as sent for TREAT, and cleaned as under
    the dictionary VRs for TRAIN and HRESCH: the values are gone, the pseudonym goes under LO, and
    the copies validate."""
    client, _ = adapter
    obj = received(StationName="STATION-7", DeviceSerialNumber="SN-77")
    obj["PatientID"].VR = "SH"
    obj["StationName"].VR = "LO"
    obj["DeviceSerialNumber"].VR = "SH"
    stowed = stow(client, obj)
    assert stowed.status_code == 200, stowed.text
    assert len(qido(client, "instances", TREAT, PatientID=PATIENT["value"])) == 1
    [as_sent] = parts_of(wado(client, obj.StudyInstanceUID, obj.SeriesInstanceUID, obj.SOPInstanceUID))
    assert read(as_sent)["PatientID"].VR == "SH" and b"STATION-7" in as_sent
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TRAIN, HRESCH):
        [item] = qido(client, "instances", headers)
        [data] = parts_of(client.get(value(item, "00081190").split("testserver")[-1], headers=headers))
        ds = checked(f"VR mismatches, {headers['X-Purpose-Of-Use']}", data)
        for needle in (b"STATION-7", b"SN-77", PATIENT["value"].encode(), PATIENT_NAME.encode()):
            assert needle not in data, (headers, needle)
        assert ds["PatientID"].VR == "LO"
        if headers is TRAIN:
            assert ds.PatientID == ""
        else:
            assert len(ds.PatientID) > 16 and ds.PatientID != PATIENT["value"]  # the pseudonym, longer than SH allows


def test_gps_camera_notes_and_specimen_ids_do_not_survive_a_release(adapter: tuple[FhirClient, Services],
                                                                      checked: Checked) -> None:
    """A VL Photographic object from a DICOM camera app carries where the photo was taken (the
    photography module's GPS attributes, from EXIF), the camera's MakerNote and serial, a UDI,
    and a specimen's identifiers. Table E.1-1 removes or replaces each; TRAIN and HRESCH copies
    hold none of their values and still validate; TREAT gets the object as stored."""
    client, _ = adapter
    specimen = Dataset()
    specimen.SpecimenIdentifier = "SPEC-MRN-0001-A"
    specimen.SpecimenUID = generate_uid()
    specimen.IssuerOfTheSpecimenIdentifierSequence = []
    specimen.SpecimenPreparationSequence = []
    udi = Dataset()
    udi.UniqueDeviceIdentifier = "UDI-CAMERA-77"
    obj = received(GPSLatitudeRef="N", GPSLatitude="51.5072", GPSLongitudeRef="W", GPSLongitude="0.1276",
                   GPSProcessingMethod=b"GPS-FIX-HOME", MakerNote=b"SERIAL-CAMERA-77", DeviceSerialNumber="SN-42",
                   UDISequence=[udi], ContainerIdentifier="CONT-MRN-0001", IssuerOfTheContainerIdentifierSequence=[],
                   ContainerTypeCodeSequence=[], SpecimenDescriptionSequence=[specimen])
    assert stow(client, obj).status_code == 200
    [stored] = parts_of(wado(client, obj.StudyInstanceUID, obj.SeriesInstanceUID, obj.SOPInstanceUID))
    assert b"51.5072" in stored and b"SERIAL-CAMERA-77" in stored  # TREAT: as received
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TRAIN, HRESCH):
        [item] = qido(client, "instances", headers)
        [data] = parts_of(client.get(value(item, "00081190").split("testserver")[-1], headers=headers))
        ds = checked(f"VL photo with GPS, {headers['X-Purpose-Of-Use']}", data)
        for needle in (b"51.5072", b"0.1276", b"SERIAL-CAMERA-77", b"GPS-FIX-HOME", b"SN-42", b"UDI-CAMERA-77",
                       b"SPEC-MRN-0001-A", b"CONT-MRN-0001"):
            assert needle not in data, (headers, needle)
        assert not any(keyword.startswith("GPS") for keyword in ds.dir()) and "MakerNote" not in ds
        assert "UDISequence" not in ds and "DeviceSerialNumber" not in ds
        assert ds.ContainerIdentifier == "DEIDENTIFIED"
        assert ds.SpecimenDescriptionSequence[0].SpecimenIdentifier == "DEIDENTIFIED"
        assert ds.SpecimenDescriptionSequence[0].SpecimenUID != specimen.SpecimenUID


def test_hresch_gets_the_pseudonym_the_fhir_view_shows(adapter: tuple[FhirClient, Services],
                                                       checked: Checked) -> None:
    client, services = adapter
    vl = received()
    stow(client, vl)
    [media] = find(client, "Media", vl.SOPInstanceUID)
    assert wado(client, vl.StudyInstanceUID, headers=HRESCH).status_code in (403, 404)
    add_consent(client, ["HRESCH"])
    fhir_view = client.get(f"/fhir/{seen_as(services, 'HRESCH', 'Media/' + media['id'])}", headers=HRESCH).json()
    pseudonym = fhir_view["subject"]["identifier"]
    assert pseudonym["value"] != PATIENT["value"]
    [study] = qido(client, "studies", HRESCH)
    assert (value(study, "00100020"), value(study, "00100021")) == (pseudonym["value"], pseudonym["system"])
    assert value(study, "00080020") == vl.StudyDate  # HRESCH keeps dates
    # the client matches on the pseudonym, not on the real PatientID
    assert len(qido(client, "studies", HRESCH, PatientID=pseudonym["value"])) == 1
    assert qido(client, "studies", HRESCH, PatientID=PATIENT["value"]) == []
    # HRESCH keeps dates: StudyDate matches through the store's date index, as under TREAT
    assert len(qido(client, "studies", HRESCH, StudyDate=vl.StudyDate)) == 1
    assert len(qido(client, "studies", HRESCH, StudyDate=f"-{vl.StudyDate}", PatientID=pseudonym["value"])) == 1
    assert qido(client, "studies", HRESCH, StudyDate="19000101-19001231") == []
    # a received object and a photo posted over HTTP: both carry the FHIR view's pseudonym
    assert post_photo(client, WOUND, metadata()).status_code == 201
    instances = qido(client, "instances", HRESCH)
    assert len(instances) == 2
    for instance in instances:
        retrieved = client.get(value(instance, "00081190").split("testserver")[-1], headers=HRESCH)
        [data] = parts_of(retrieved)
        ds = checked("HRESCH", data)
        assert ds.PatientID == pseudonym["value"] and ds.IssuerOfPatientID == pseudonym["system"]
        assert ds.SOPInstanceUID == value(instance, "00080018")
        assert ds.PatientIdentityRemoved == "NO"
        assert [c.CodeValue for c in ds.DeidentificationMethodCodeSequence] == ["113100", "113106"]
        assert PATIENT_NAME.encode() not in data and f"{PATIENT['value']}".encode() not in data
    # TRAIN and HRESCH UID spaces cannot be linked
    add_consent(client, ["TRAIN"])
    hresch_uids = {value(s, "0020000D") for s in qido(client, "studies", HRESCH)}
    train_uids = {value(s, "0020000D") for s in qido(client, "studies", TRAIN)}
    assert len(train_uids) == len(hresch_uids) == 2
    assert train_uids.isdisjoint(hresch_uids | {vl.StudyInstanceUID})


def test_released_uids_follow_the_key_across_restarts(tmp_path: Path) -> None:
    """The mapped UIDs are found through their index (adapter.services.released_uids): written at
    ingest for received objects and photos, and rebuilt at start when the key changes, so the
    old mapped UIDs then find nothing and the new ones find every instance."""
    obj = received()

    def mapped(client: FhirClient) -> list[tuple[str, str, str]]:
        return sorted((value(i, "0020000D"), value(i, "0020000E"), value(i, "00080018"))
                      for i in qido(client, "instances", TRAIN))

    with pacs_client(tmp_path, pseudonym_key="k" * 32) as (client, _):
        assert stow(client, obj).status_code == 200
        assert post_photo(client, WOUND, metadata()).status_code == 201
        add_consent(client, ["TRAIN", "HRESCH"])
        before = mapped(client)
        for study, series, instance in before:
            assert wado(client, study, series, instance, headers=TRAIN).status_code == 200
    with pacs_client(tmp_path, pseudonym_key="k" * 32) as (client, services):  # same key: kept
        assert services.released_uids is not None
        assert services.store.index_released_uids(
            ReleasedUidSpaces(services.settings.uid_root, services.released_uids.key).fingerprint,
            lambda _: pytest.fail("the index is current")) == 0
        assert mapped(client) == before
    # a deliberate rotation (without ADAPTER_ACCEPT_NEW_PSEUDONYM_KEY another key is refused)
    with pacs_client(tmp_path, pseudonym_key="n" * 32, accept_new_pseudonym_key=True) as (client, _):
        after = mapped(client)
        assert len(after) == 2 and {u for t in after for u in t}.isdisjoint({u for t in before for u in t})
        for (study, series, instance), (old_study, _, old_instance) in zip(after, before, strict=True):
            assert wado(client, study, series, instance, headers=TRAIN).status_code == 200
            assert len(parts_of(wado(client, study, headers=TRAIN))) == 1
            assert wado(client, old_study, headers=TRAIN).status_code == 404
            assert qido(client, "instances", TRAIN, SOPInstanceUID=old_instance) == []
            assert len(qido(client, "instances", TRAIN, SOPInstanceUID=instance)) == 1
        # HRESCH has its own space, rebuilt too
        hresch = qido(client, "instances", HRESCH)
        assert len(hresch) == 2
        for item in hresch:
            assert client.get(value(item, "00081190").split("testserver")[-1], headers=HRESCH).status_code == 200


def test_binary_as_dicom_follows_the_record_decision(adapter: tuple[FhirClient, Services],
                                                     checked: Checked) -> None:
    client, services = adapter
    receipt = post_photo(client, WOUND, metadata()).json()
    dicom = {"Accept": "application/dicom"}
    trained = seen_as(services, "TRAIN", receipt["binary"])  # as TRAIN names it
    assert client.get(f"/fhir/{trained}", headers={**TRAIN, **dicom}).status_code == 404
    add_consent(client, ["TRAIN"])
    r = client.get(f"/fhir/{trained}", headers={**TRAIN, **dicom})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    ds = checked("photo Binary, TRAIN", r.content)
    assert ds.PatientIdentityRemoved == "NO" and PATIENT["value"].encode() not in r.content
    [instance] = qido(client, "instances", TRAIN)
    assert ds.SOPInstanceUID == value(instance, "00080018") != receipt["dicom"]["sopInstanceUid"]
    wado_train = client.get(value(instance, "00081190").split("testserver")[-1], headers=TRAIN)
    assert parts_of(wado_train) == [r.content]
    # the Binary's image bytes are still served as before
    image = client.get(f"/fhir/{receipt['binary']}", headers={**TREAT, "Accept": "image/jpeg"})
    assert image.headers["content-type"] == "image/jpeg"


def test_documents_and_pdfs_are_released_under_consent_without_a_clean_pixels_claim(
        adapter: tuple[FhirClient, Services], checked: Checked) -> None:
    client, _ = adapter
    doc, pdf = received(PhotoKind.DOCUMENT, record_id="rec-doc"), pdf_object()
    assert stow(client, doc, pdf).status_code == 200
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TRAIN, HRESCH):
        for item in qido(client, "instances", headers):
            [data] = parts_of(client.get(value(item, "00081190").split("testserver")[-1], headers=headers))
            ds = checked(f"{value(item, '00080016')} {headers['X-Purpose-Of-Use']}", data)
            assert ds.BurnedInAnnotation == "YES"
            codes = [c.CodeValue for c in ds.get("DeidentificationMethodCodeSequence", [])]
            # a document kept whole: Table E.1-1 would replace it (D), so no profile is claimed in codes
            assert codes == ([] if ds.SOPClassUID == PDF_CLASS else ["113100"] if headers is TRAIN
                             else ["113100", "113106"])
            note = NOT_CLEANED_DOCUMENT if ds.SOPClassUID == PDF_CLASS else NOT_CLEANED_PIXELS
            assert note in list(ds.DeidentificationMethod)
            assert PATIENT_NAME.encode() not in data and b"Discharge letter" not in data


def _pdf_of(data: bytes | Dataset) -> bytes:
    """The PDF an Encapsulated PDF object holds (EncapsulatedDocumentLength long)."""
    ds = data if isinstance(data, Dataset) else read(data)
    return bytes(ds.EncapsulatedDocument)[:int(ds.EncapsulatedDocumentLength)]


def _pdfs_released(client: FhirClient, headers: dict[str, str], checked: Checked) -> dict[str, bytes]:
    """The PDF of the one Encapsulated PDF the purpose may see, by every path it leaves by: FHIR
    Binary (as its own bytes, as Binary JSON, as application/dicom), WADO-RS (instance, series
    and study retrieve, rendered, the metadata's bulk data), WADO-URI (as PDF and as DICOM). The
    DICOM objects go to dciodvfy (``checked``)."""
    [item] = qido(client, "instances", headers, SOPClassUID=PDF_CLASS)
    study, series, sop = (value(item, t) for t in ("0020000D", "0020000E", "00080018"))
    instance = value(item, "00081190").split("testserver")[-1]
    [document] = [e["resource"] for e in client.get("/fhir/DocumentReference", headers=headers).json()["entry"]]
    attachment = document["content"][0]["attachment"]
    binary = attachment["url"].split("testserver")[-1]
    uri = f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={sop}"
    label = headers["X-Purpose-Of-Use"]
    pdfs: dict[str, bytes] = {}

    def got(path: str, accept: str | None = None) -> httpx.Response:
        r = client.get(path, headers={**headers, **({"Accept": accept} if accept else {})})
        assert r.status_code == 200, (path, r.text[:300])
        return r

    pdfs["Binary"] = got(binary, "application/pdf").content
    pdfs["Binary JSON"] = base64.b64decode(got(binary, "application/fhir+json").json()["data"])
    pdfs["Binary as DICOM"] = _pdf_of(checked(f"Binary {label}", got(binary, "application/dicom").content))
    pdfs["rendered"] = got(f"{instance}/rendered", "application/pdf").content
    pdfs["WADO-URI"] = got(f"{uri}&contentType=application/pdf").content
    pdfs["WADO-URI DICOM"] = _pdf_of(checked(f"WADO-URI {label}", got(f"{uri}&contentType=application/dicom").content))
    for path in (instance, f"/dicomweb/studies/{study}/series/{series}", f"/dicomweb/studies/{study}"):
        [part] = parts_of(got(path))
        pdfs[path] = _pdf_of(checked(f"WADO-RS {label}", part))
    [meta] = got(f"{instance}/metadata").json()
    # bulk data by URI, as Pixel Data is, not the whole document inline (PS3.18 10.4.3.3.2)
    assert set(meta["00420011"]) == {"vr", "BulkDataURI"}, meta["00420011"].keys()
    assert meta["00420011"]["BulkDataURI"].endswith(f"{instance}/bulk/00420011")
    # one part, Content-Length long (multipart_parts would strip the PDF's own last newline)
    head, _, rest = got(meta["00420011"]["BulkDataURI"].split("testserver")[-1]).content.partition(b"\r\n\r\n")
    length = re.search(rb"Content-Length: (\d+)", head)
    assert length is not None and b"application/octet-stream" in head
    pdfs["bulk"] = rest[:int(length[1])][:value(meta, "00420015")]  # the value, padded to even
    # the record describes no other bytes than those it releases (R4 Attachment.size and .hash)
    assert "size" not in attachment and "hash" not in attachment
    return pdfs


@pytest.mark.parametrize("headers", [TRAIN, HRESCH], ids=["TRAIN", "HRESCH"])
def test_a_pdf_leaves_the_restricted_views_without_its_metadata(adapter: tuple[FhirClient, Services],
                                                               checked: Checked, headers: dict[str, str]) -> None:
    """Found by the de-identification review (finding 1): an Encapsulated PDF went out under
    TRAIN (ANONYED) and HRESCH (PSEUDED) with its metadata byte for byte: its /Info (Author, a
    Title naming the patient and MRN, the CreationDate, the Producer naming the hospital), its
    XMP, in a DICOM copy saying PatientIdentityRemoved YES; WADO-RS metadata inlined it whole
    (test seen failing: the /Info in every answer, and InlineBinary). Now no path releases any of
    the letter's metadata, its annotation's author or its embedded file, and every path releases
    the same PDF, which opens with its pages as they were (content not cleaned: consent governs
    it). Care gets the PDF byte for byte as sent."""
    client, _ = adapter
    letter = identifying_pdf()
    sent = pdf_object(letter)
    assert stow(client, sent).status_code == 200
    add_consent(client, ["TRAIN", "HRESCH"])
    [record] = find(client, "DocumentReference", sent.SOPInstanceUID)
    care = client.get(record["content"][0]["attachment"]["url"], headers={**TREAT, "Accept": "application/pdf"})
    assert care.content == letter
    [care_object] = parts_of(wado(client, sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID))
    assert _pdf_of(care_object) == letter
    pdfs = _pdfs_released(client, headers, checked)
    for path, pdf in pdfs.items():
        assert [text for text in IDENTIFYING if text.encode() in pdf] == [], path
        assert page_contents(pdf) == page_contents(letter), path  # opens; the same page content
    assert len(set(pdfs.values())) == 1, {path: len(pdf) for path, pdf in pdfs.items()}
    copy = read(checked.objects[0][1])
    assert copy.PatientIdentityRemoved == "NO" and NOT_CLEANED_DOCUMENT in list(copy.DeidentificationMethod)


def _encrypted_pdf_beside_a_photo(client: FhirClient) -> tuple[bytes, Dataset]:
    """An encrypted PDF (its metadata cannot be removed) and a photo of its study, stored over
    STOW-RS, and a Consent permitting TRAIN: the PDF's bytes and its object."""
    encrypted = io.BytesIO()
    with pikepdf.open(io.BytesIO(identifying_pdf())) as pdf:
        pdf.save(encrypted, encryption=pikepdf.Encryption(owner="owner", user=""))
    sent = pdf_object(encrypted.getvalue())
    assert stow(client, received(StudyInstanceUID=sent.StudyInstanceUID), sent).status_code == 200
    add_consent(client, ["TRAIN"])
    return encrypted.getvalue(), sent


def test_a_pdf_that_cannot_be_cleaned_is_not_released_in_a_restricted_view(
        adapter: tuple[FhirClient, Services]) -> None:
    """Fail closed: an encrypted PDF (its metadata cannot be removed) is refused under TRAIN on
    every path that names it (422, nothing sent), each read audited as one that failed (outcome
    4, saying why), as a missing image is. Care still gets it as stored."""
    client, services = adapter
    encrypted, sent = _encrypted_pdf_beside_a_photo(client)
    [record] = find(client, "DocumentReference", sent.SOPInstanceUID)
    care_binary = record["content"][0]["attachment"]["url"].split("testserver")[-1]
    assert client.get(care_binary, headers={**TREAT, "Accept": "application/pdf"}).content == encrypted
    binary = "/fhir/" + seen_as(services, "TRAIN", care_binary.removeprefix("/fhir/"))  # the view's own id
    assert services.released_uids is not None
    study_uid, series_uid, sop_uid = (services.released_uids.uid(View.DEIDENTIFIED, u) for u in (
        sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID))
    instance = f"/dicomweb/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
    uri = f"/wado?requestType=WADO&studyUID={study_uid}&seriesUID={series_uid}" \
          f"&objectUID={sop_uid}&contentType=application/pdf"
    for path, accept in ((binary, "application/pdf"), (binary, "application/fhir+json"),
                         (binary, "application/dicom"), (instance, None), (f"{instance}/rendered", None),
                         (f"{instance}/metadata", None), (uri, None)):
        done = len(services.store.list_audit(10000))
        r = client.get(path, headers={**TRAIN, **({"Accept": accept} if accept else {})})
        assert r.status_code == 422 and r.json()["resourceType"] == "OperationOutcome", (path, r.status_code)
        assert b"SMITH" not in r.content and "encrypted" in r.text
        events = services.store.list_audit(10000)
        fresh = events[: len(events) - done]
        assert [e["outcome"] for e in fresh] == ["4"], (path, [(e["outcome"], e.get("outcomeDesc")) for e in fresh])
        assert "encrypted" in fresh[0]["outcomeDesc"], fresh[0]["outcomeDesc"]


def test_a_pdf_that_cannot_be_cleaned_is_left_out_of_its_studys_answers_in_a_restricted_view(
        adapter: tuple[FhirClient, Services]) -> None:
    """One document that cannot be released under the purpose does not take its study down
    (review dicomweb F2): the study's and series' retrieve and metadata return the releasable
    instances, the PDF left out as an instance not permitted is, and audited as not sent; QIDO
    neither lists nor counts it. A study or series holding nothing else releasable is still the
    PDF's clear 422."""
    client, services = adapter
    _, sent = _encrypted_pdf_beside_a_photo(client)
    assert len(qido(client, "instances", TREAT)) == 2  # care: both
    [item] = qido(client, "instances", TRAIN)
    assert value(item, "00080016") != PDF_CLASS
    assert qido(client, "instances", TRAIN, SOPClassUID=PDF_CLASS) == []
    [study_result] = qido(client, "studies", TRAIN)
    assert value(study_result, "00201208") == 1 and value(study_result, "00201206") == 1
    assert len(qido(client, "series", TRAIN)) == 1
    study = f"/dicomweb/studies/{value(item, '0020000D')}"
    # the study holds both; the photo's series only the photo, the PDF's only the PDF
    for path, outcomes in ((study, ["0", "4"]), (f"{study}/series/{value(item, '0020000E')}", ["0"])):
        done = len(services.store.list_audit(10000))
        r = client.get(path, headers=TRAIN)
        assert r.status_code == 200, (path, r.text)
        [part] = parts_of(r)
        assert read(part).SOPInstanceUID == value(item, "00080018") and b"SMITH" not in r.content
        events = services.store.list_audit(10000)
        fresh = events[: len(events) - done]
        assert sorted(e["outcome"] for e in fresh) == outcomes, [(e["outcome"], e.get("outcomeDesc")) for e in fresh]
        assert all("encrypted" in e["outcomeDesc"] for e in fresh if e["outcome"] == "4")
        metadata = client.get(f"{path}/metadata", headers=TRAIN)
        assert metadata.status_code == 200, metadata.text
        assert [value(m, "00080018") for m in metadata.json()] == [value(item, "00080018")]
    assert services.released_uids is not None
    pdf_study = services.released_uids.uid(View.DEIDENTIFIED, sent.StudyInstanceUID)
    pdf_series = services.released_uids.uid(View.DEIDENTIFIED, sent.SeriesInstanceUID)
    r = client.get(f"/dicomweb/studies/{pdf_study}/series/{pdf_series}", headers=TRAIN)  # the PDF's own series
    assert r.status_code == 422 and "encrypted" in r.text, r.text


# -- WADO-RS metadata, frames, bulk data ----------------------------------------------------------


def multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer."""
    boundary = response.headers["content-type"].split("boundary=")[1].strip('"')
    out = []
    for chunk in response.content.split(f"--{boundary}".encode())[1:-1]:
        head, _, body = chunk.strip(b"\r\n").partition(b"\r\n\r\n")
        ctype = next(line.split(b":", 1)[1].strip().decode() for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-type"))
        out.append((ctype, body))
    return out


def test_wado_metadata_frames_and_bulk_data_follow_the_decision(adapter: tuple[FhirClient, Services],
                                                                tmp_path: Path) -> None:
    """What a DICOMweb viewer asks for after QIDO: every attribute as DICOM JSON with bulk data by
    URI (Pixel Data by its frames, a document by its bulk data resource), then the frames as
    stored (JPEG, no transcoding) and the bulk data; for TRAIN all of it from the de-identified
    copy, by its mapped UIDs, and nothing before the patient's consent."""
    client, _ = adapter
    photo = received(record_id="rec-a")
    pdf = pdf_object(minimal_pdf(b"%" + b"x" * 3000))  # over the metadata's inline limit either way
    mf_path = tmp_path / "mf.dcm"
    multiframe = multiframe_file(mf_path, frames=3)
    assert stow(client, photo, pdf, mf_path.read_bytes()).status_code == 200
    base = f"/dicomweb/studies/{photo.StudyInstanceUID}/series/{photo.SeriesInstanceUID}"
    [meta] = client.get(f"{base}/metadata", headers=TREAT).json()
    assert meta["00100010"]["Value"] == [{"Alphabetic": PATIENT_NAME}]
    assert meta["00080018"]["Value"] == [photo.SOPInstanceUID] and "InlineBinary" not in json.dumps(meta)
    frames_uri = meta["7FE00010"]["BulkDataURI"]
    assert frames_uri.endswith(f"/instances/{photo.SOPInstanceUID}/frames/1")
    jpeg_frames = client.get(frames_uri.split("testserver")[-1], headers={**TREAT, "Accept": 'multipart/related; type="image/jpeg"'})
    [(ctype, frame)] = multipart_parts(jpeg_frames)
    assert ctype == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50" and frame[:2] == b"\xff\xd8"
    [stored] = parts_of(wado(client, photo.StudyInstanceUID, photo.SeriesInstanceUID, photo.SOPInstanceUID))
    assert frame.rstrip(b"\0") in stored
    octet = client.get(frames_uri.split("testserver")[-1],
                       headers={**TREAT, "Accept": 'multipart/related; type="application/octet-stream"; transfer-syntax=*'})
    assert multipart_parts(octet) == [("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50", frame)]
    for accept in ('multipart/related; type="application/octet-stream"', "image/png"):
        r = client.get(frames_uri.split("testserver")[-1], headers={**TREAT, "Accept": accept})
        assert r.status_code == 406, accept  # no transcoding
    assert client.get(f"{base}/instances/{photo.SOPInstanceUID}/frames/2", headers=TREAT).status_code == 404
    assert client.get(f"{base}/instances/{photo.SOPInstanceUID}/frames/0,x", headers=TREAT).status_code == 400
    # several frames, in the order asked
    mf_base = f"/dicomweb/studies/{multiframe.StudyInstanceUID}/series/{multiframe.SeriesInstanceUID}"
    [mf_meta] = client.get(f"{mf_base}/instances/{multiframe.SOPInstanceUID}/metadata", headers=TREAT).json()
    assert mf_meta["7FE00010"]["BulkDataURI"].endswith("/frames/1,2,3")
    three = multipart_parts(client.get(f"{mf_base}/instances/{multiframe.SOPInstanceUID}/frames/3,1", headers=TREAT))
    assert len(three) == 2 and three[0][1] != three[1][1] and all(f[:2] == b"\xff\xd8" for _, f in three)
    # a document's bulk data
    [pdf_meta] = client.get(f"/dicomweb/studies/{pdf.StudyInstanceUID}/metadata", headers=TREAT).json()
    bulk_uri = pdf_meta["00420011"]["BulkDataURI"]
    assert bulk_uri.endswith("/bulk/00420011")
    [(ctype, document)] = multipart_parts(client.get(bulk_uri.split("testserver")[-1], headers=TREAT))
    assert ctype == "application/octet-stream" and document.startswith(b"%PDF-1.4") and b"%%EOF" in document
    assert client.get(bulk_uri.split("testserver")[-1].replace("00420011", "00100010"), headers=TREAT).status_code == 404
    # TRAIN: nothing before consent, then the de-identified copy's attributes and frames
    assert client.get(f"{base}/metadata", headers=TRAIN).status_code in (403, 404)
    assert client.get(frames_uri.split("testserver")[-1], headers=TRAIN).status_code in (403, 404)
    add_consent(client, ["TRAIN"])
    [item] = qido(client, "instances", TRAIN, Modality="XC")
    train_base = value(item, "00081190").split("testserver")[-1]
    [train_meta] = client.get(f"{train_base}/metadata", headers=TRAIN).json()
    text = json.dumps(train_meta)
    assert PATIENT_NAME not in text and PATIENT["value"] not in text and photo.SOPInstanceUID not in text
    assert train_meta["00120062"]["Value"] == ["NO"]  # PatientIdentityRemoved: its pixels were not cleaned
    train_uri = train_meta["7FE00010"]["BulkDataURI"].split("testserver")[-1]
    assert train_uri.startswith(train_base)
    [(_, train_frame)] = multipart_parts(client.get(train_uri, headers=TRAIN))
    assert train_frame[:2] == b"\xff\xd8"
    assert client.get(f"{train_base}/metadata", headers={**TRAIN, "Accept": "application/dicom"}).status_code == 406


@pytest.mark.parametrize(("frames", "stated", "has_bot", "per_frame"), [
    (2, 3, True, 1),    # the reviewer's: a Basic Offset Table of 2 frames, NumberOfFrames 3
    (2, 3, False, 1),   # no table, fewer fragments than frames
    (1, 3, False, 1),   # one fragment: one frame (PS3.5 A.4), whatever NumberOfFrames says
    (2, 3, True, 2),    # frames of 2 fragments each: the table tells 2 frames in 4 fragments
    (4, 3, True, 1),    # more frames than stated
])
def test_stow_of_an_object_holding_other_frames_than_it_states_is_refused(
        adapter: tuple[FhirClient, Services], tmp_path: Path, frames: int, stated: int, has_bot: bool,
        per_frame: int) -> None:
    """PS3.5 A.4: each frame of encapsulated pixel data is in its own fragment(s), and
    NumberOfFrames (0028,0008) counts them. An object whose pixel data holds another number of
    frames was stored, and WADO-RS answered 500 for a frame it claimed; now it is refused
    (0xC000, audited, nothing stored)."""
    client, services = adapter
    path = tmp_path / "mf.dcm"
    sent = multiframe_file(path, frames, number_of_frames=stated, has_bot=has_bot, fragments_per_frame=per_frame)
    r = stow(client, path.read_bytes())
    assert r.status_code == 409, r.text
    [failed] = r.json()["00081198"]["Value"]
    assert (value(failed, "00081155"), value(failed, "00081197")) == (sent.SOPInstanceUID, CANNOT_UNDERSTAND)
    assert services.store.search_dicom_instances() == []
    [refusal] = dicom_events(services.store.list_audit(100), INSTANCES_TRANSFERRED)
    assert refusal["outcome"] == "4" and "frame" in refusal["outcomeDesc"]
    # as it states, with its frames in several fragments, and with no table, it is stored
    good = tmp_path / "good.dcm"
    kept = multiframe_file(good, 2, has_bot=has_bot, fragments_per_frame=per_frame)
    assert stow(client, good.read_bytes()).status_code == 200
    base = f"/dicomweb/studies/{kept.StudyInstanceUID}/series/{kept.SeriesInstanceUID}/instances/{kept.SOPInstanceUID}"
    assert len(multipart_parts(client.get(f"{base}/frames/1,2", headers=TREAT))) == 2
    assert client.get(f"{base}/frames/3", headers=TREAT).status_code == 404


def test_a_frame_a_stored_object_does_not_hold_is_not_found(adapter: tuple[FhirClient, Services],
                                                           tmp_path: Path) -> None:
    """Defence behind the ingest's frame count: an object stored before it, whose NumberOfFrames
    (3) says more than its pixel data holds (2), answers 404 for frame 3 (PS3.18: a frame the
    instance does not have), not 500; its frames 1 and 2 are served."""
    client, services = adapter
    path = tmp_path / "mf.dcm"
    sent = multiframe_file(path, 2)
    assert stow(client, path.read_bytes()).status_code == 200
    instance = services.store.find_dicom_instance(sent.SOPInstanceUID)
    assert instance is not None and instance.blob_sha256 is not None
    blob = services.blobs.path(instance.blob_sha256)
    data = blob.read_bytes()
    at = data.index(b"\x28\x00\x08\x00IS\x02\x002 ", 132)  # NumberOfFrames "2 "
    blob.chmod(0o644)
    blob.write_bytes(data[:at + 8] + b"3 " + data[at + 10:])
    base = f"/dicomweb/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}/instances/{sent.SOPInstanceUID}"
    assert client.get(f"{base}/frames/3", headers=TREAT).status_code == 404
    assert client.get(f"{base}/frames/2,3", headers=TREAT).status_code == 404
    assert len(multipart_parts(client.get(f"{base}/frames/2,1", headers=TREAT))) == 2


def test_native_frames_are_served_as_octet_stream(adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """A native (uncompressed) frame is its pixel bytes, application/octet-stream by default;
    image/jpeg cannot be made from it without transcoding (406)."""
    client, _ = adapter
    path = tmp_path / "native.dcm"
    pixels = bytes((x * 7 + y * 3 + c * 50) % 256 for y in range(20) for x in range(30) for c in range(3))
    sent = native_sc_file(path, pixels, rows=20, columns=30)
    assert stow(client, path.read_bytes()).status_code == 200
    base = f"/dicomweb/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}/instances/{sent.SOPInstanceUID}"
    [meta] = client.get(f"{base}/metadata", headers=TREAT).json()
    assert meta["7FE00010"]["BulkDataURI"].endswith(f"{base}/frames/1") and meta["00280010"]["Value"] == [20]
    for accept in (None, 'multipart/related; type="application/octet-stream"'):
        r = client.get(f"{base}/frames/1", headers={**TREAT, **({"Accept": accept} if accept else {})})
        assert multipart_parts(r) == [("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", pixels)]
    assert client.get(f"{base}/frames/1", headers={**TREAT, "Accept": 'multipart/related; type="image/jpeg"'}) \
        .status_code == 406
    # the same object in Implicit VR: its Pixel Data is read as "OB or OW"; DICOM JSON names one VR
    implicit = tmp_path / "implicit.dcm"
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(prefix="2.25.")
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(implicit, implicit_vr=True, little_endian=True, enforce_file_format=True)
    assert stow(client, implicit.read_bytes()).status_code == 200
    base = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    meta_text = client.get(f"{base}/metadata", headers=TREAT).text
    assert " or " not in meta_text and '"7FE00010":{"vr":"OW","BulkDataURI"' in meta_text
    [(_, frame)] = multipart_parts(client.get(f"{base}/frames/1", headers=TREAT))
    assert frame == pixels


def test_one_bulk_value_or_frame_asked_for_as_octet_stream_itself_is_a_single_part(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """PS3.18 8.7.3.3.2: a single bulk data value may go as application/octet-stream itself. Bulk
    data asked for so was answered multipart (a type the client did not accept) while a frame
    was 406; now both are the bytes alone, a frame labelled with its transfer syntax; several
    frames, or a compressed frame without transfer-syntax=* (it would need transcoding), 406;
    the client's preference decides between single part and multipart."""
    client, _ = adapter
    pdf = pdf_object()
    path = tmp_path / "native.dcm"
    pixels = bytes(range(256)) * 18
    native = native_sc_file(path, pixels, rows=24, columns=64)
    photo = received(record_id="rec-a")
    assert stow(client, pdf, path.read_bytes(), photo).status_code == 200

    def base(obj: Any) -> str:
        return f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/{obj.SOPInstanceUID}"

    octet = {**TREAT, "Accept": "application/octet-stream"}
    bulk = client.get(f"{base(pdf)}/bulk/00420011", headers=octet)
    assert bulk.status_code == 200 and bulk.headers["content-type"] == "application/octet-stream"
    assert bulk.content == pdf.EncapsulatedDocument
    preferred = client.get(f"{base(pdf)}/bulk/00420011", headers={
        **TREAT, "Accept": 'application/octet-stream;q=0.5, multipart/related; type="application/octet-stream"'})
    assert preferred.headers["content-type"].startswith("multipart/related")
    assert client.get(f"{base(pdf)}/bulk/00420011", headers={**TREAT, "Accept": "application/pdf"}).status_code == 406
    frame = client.get(f"{base(native)}/frames/1", headers=octet)
    assert frame.status_code == 200 and frame.content == pixels
    assert frame.headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    jpeg = client.get(f"{base(photo)}/frames/1", headers={**TREAT, "Accept": "application/octet-stream; transfer-syntax=*"})
    assert jpeg.status_code == 200 and jpeg.content[:2] == b"\xff\xd8"
    assert jpeg.headers["content-type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert client.get(f"{base(photo)}/frames/1", headers=octet).status_code == 406  # would need decompressing
    mf_path = tmp_path / "mf.dcm"
    mf = multiframe_file(mf_path, frames=2)
    assert stow(client, mf_path.read_bytes()).status_code == 200
    many = {**TREAT, "Accept": "application/octet-stream; transfer-syntax=*"}
    assert client.get(f"{base(mf)}/frames/1,2", headers=many).status_code == 406  # one part holds one value


def test_an_empty_sequence_is_written_without_a_value_in_metadata(adapter: tuple[FhirClient, Services]) -> None:
    """PS3.18 F.2.5: an attribute present with an empty value has no "Value"; an empty sequence
    was written as "Value": [] (top level and in an item)."""
    client, _ = adapter
    pdf = pdf_object()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "18842-5", "LN", "Discharge summary"
    item.ConceptCodeSequence = Sequence()
    pdf.ContentTemplateSequence = Sequence([item])
    assert stow(client, pdf).status_code == 200
    [meta] = client.get(f"/dicomweb/studies/{pdf.StudyInstanceUID}/series/{pdf.SeriesInstanceUID}/instances/"
                        f"{pdf.SOPInstanceUID}/metadata", headers=TREAT).json()
    assert meta["0040A043"] == {"vr": "SQ"}
    assert meta["0040A504"]["Value"][0]["0040A168"] == {"vr": "SQ"}


def test_a_study_with_a_lost_object_is_refused_before_the_answer_starts(adapter: tuple[FhirClient, Services]) -> None:
    """WADO-RS study retrieve makes the objects one by one while it streams; a blob gone from the
    disk is looked for first, so the client gets a 500 OperationOutcome (a fault of the deployment,
    logged), not a multipart answer cut short after the first part; audited as a read that
    failed (was outcome 0, a disclosure)."""
    client, services = adapter
    first = received(record_id="rec-a")
    second = received(record_id="rec-b", StudyInstanceUID=first.StudyInstanceUID, SOPInstanceUID=generate_uid())
    assert stow(client, first, second).status_code == 200
    url = f"/dicomweb/studies/{first.StudyInstanceUID}"
    assert len(parts_of(client.get(url, headers=TREAT))) == 2
    lost = services.store.find_dicom_instance(second.SOPInstanceUID)
    assert lost is not None and lost.blob_sha256 is not None
    services.blobs.path(lost.blob_sha256).unlink()
    done = len(services.store.list_audit(10000))
    gone = client.get(url, headers=TREAT)
    assert gone.status_code == 500 and gone.json()["resourceType"] == "OperationOutcome"
    # nothing was sent: audited as a read that failed (outcome 4, saying why), not as the
    # transfer of both objects it did not make (outcome 0), as a FHIR Binary whose image is lost
    events = services.store.list_audit(10000)
    fresh = events[: len(events) - done]
    assert [(e["action"], e["outcome"]) for e in fresh] == [("R", "4")]
    assert fresh[0]["outcomeDesc"].startswith("not sent"), fresh[0]["outcomeDesc"]


def test_a_frame_or_bulk_data_the_instance_does_not_hold_is_audited_as_a_read_that_failed(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """A frame beyond the instance's frames, or bulk data it does not hold, is 404: nothing is sent.
    It was cut out after the retrieval was audited as one that sent the instance (outcome 0); it is
    now cut out under the object's turn, before the audit (security review 2), and audited as a read
    that failed (outcome 4, saying why), as a rendered frame it does not hold is."""
    client, services = adapter
    photo, pdf, _ = _photo_pdf_and_native(client, tmp_path)

    def base(obj: Any) -> str:
        return f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/{obj.SOPInstanceUID}"

    for url in (base(photo) + "/frames/2", base(photo) + "/bulk/00420011", base(pdf) + "/bulk/00282000"):
        done = len(services.store.list_audit(10000))
        r = client.get(url, headers=TREAT)
        assert r.status_code == 404, (url, r.status_code)
        events = services.store.list_audit(10000)
        fresh = events[: len(events) - done]
        assert [(e["action"], e["outcome"]) for e in dicom_events(fresh, INSTANCES_TRANSFERRED)] == [("R", "4")], url
        assert fresh[0]["outcomeDesc"].startswith("not sent"), (url, fresh[0]["outcomeDesc"])


def _photo_pdf_and_native(client: FhirClient, tmp_path: Path) -> tuple[Any, Any, Any]:
    """Three objects stored by STOW-RS: a JPEG photo, an Encapsulated PDF and a native Secondary
    Capture (rendered as JPEG, PDF and PNG)."""
    photo = received(record_id="rec-a")
    pdf = pdf_object()
    path = tmp_path / "native.dcm"
    native = native_sc_file(path, bytes(range(256)) * 18, rows=24, columns=64)
    assert stow(client, photo, pdf, path.read_bytes()).status_code == 200
    return photo, pdf, native


def test_rendered_is_the_binary_an_ehr_shows_in_the_purposes_view(adapter: tuple[FhirClient, Services],
                                                                  tmp_path: Path) -> None:
    """WADO-RS rendered: the same bytes as the instance's FHIR Binary in the same view (the JPEG
    frame as it is, native pixels as PNG, a PDF); under TRAIN the metadata-free bytes the
    de-identified Binary has; nothing before consent; 406 for a type it is not rendered as."""
    client, _ = adapter
    photo, pdf, native = _photo_pdf_and_native(client, tmp_path)
    for obj, media in ((photo, "image/jpeg"), (pdf, "application/pdf"), (native, "image/png")):
        url = f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/" \
              f"{obj.SOPInstanceUID}/rendered"
        rendered = client.get(url, headers=TREAT)
        assert rendered.status_code == 200 and rendered.headers["content-type"] == media, rendered.text[:200]
        [record] = find(client, "Media" if media != "application/pdf" else "DocumentReference", obj.SOPInstanceUID)
        content = record["content"]  # Media.content, or DocumentReference.content[].attachment
        binary_url = content["url"] if isinstance(content, dict) else content[0]["attachment"]["url"]
        binary = client.get(binary_url, headers={**TREAT, "Accept": media})
        assert rendered.content == binary.content
    url = f"/dicomweb/studies/{photo.StudyInstanceUID}/series/{photo.SeriesInstanceUID}/instances/" \
          f"{photo.SOPInstanceUID}/rendered"
    assert client.get(url, headers={**TREAT, "Accept": "text/plain"}).status_code == 406
    assert client.get(url, headers={**TREAT, "Accept": "image/*"}).content == binary_of(client, photo, "image/jpeg")
    assert client.get(url, headers=TRAIN).status_code in (403, 404)
    add_consent(client, ["TRAIN"])
    [item] = qido(client, "instances", TRAIN, Modality="XC")
    train = client.get(value(item, "00081190").split("testserver")[-1] + "/rendered", headers=TRAIN)
    assert train.status_code == 200 and train.content[:2] == b"\xff\xd8"
    # the photo's (a TRAIN search lists its records in the order of their TRAIN ids, not as stored)
    [media_train] = [e for e in client.get("/fhir/Media", headers=TRAIN).json()["entry"]
                     if e["resource"]["content"]["contentType"] == "image/jpeg"]
    train_binary = client.get(media_train['resource']['content']['url'],
                              headers={**TRAIN, "Accept": "image/jpeg"})
    assert train.content == train_binary.content  # the de-identified Binary's bytes: no metadata at all


def test_thumbnails_are_small_metadata_free_jpegs_under_the_same_decision(adapter: tuple[FhirClient, Services],
                                                                           tmp_path: Path) -> None:
    """WADO-RS thumbnail (instance, series, study): an image/jpeg no larger than the viewport
    (128 x 128 by default), aspect kept, upright, no EXIF/ICC/comment whatever the source; a PNG
    source (native pixels) too; a document has none (406); refused as the instance is."""
    from PIL import Image

    client, services = adapter
    photo, pdf, native = _photo_pdf_and_native(client, tmp_path)

    def base(obj: Any) -> str:
        return f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/{obj.SOPInstanceUID}"

    def size(obj: Any) -> tuple[int, int]:
        return Image.open(io.BytesIO(client.get(base(obj) + "/rendered", headers=TREAT).content)).size

    for obj, query, (width, height) in ((photo, "", (128, 128)), (photo, "?viewport=64,200", (64, 200)),
                                        (photo, "?viewport=40,20", (40, 20)), (native, "?viewport=32,32", (32, 32))):
        r = client.get(base(obj) + "/thumbnail" + query, headers=TREAT)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", r.text[:200]
        source_w, source_h = size(obj)
        scale = min(1.0, width / source_w, height / source_h)  # aspect kept, never enlarged
        with Image.open(io.BytesIO(r.content)) as im:
            assert im.format == "JPEG"
            assert abs(im.width - source_w * scale) <= 1 and abs(im.height - source_h * scale) <= 1, (query, im.size)
            assert "exif" not in im.info and "icc_profile" not in im.info and "comment" not in im.info
    big = client.get(base(photo) + "/thumbnail?viewport=5000,5000", headers=TREAT)
    assert big.status_code == 200 and Image.open(io.BytesIO(big.content)).width <= 1024
    study = client.get(f"/dicomweb/studies/{photo.StudyInstanceUID}/thumbnail", headers=TREAT)
    series = client.get(f"/dicomweb/studies/{photo.StudyInstanceUID}/series/{photo.SeriesInstanceUID}/thumbnail",
                        headers=TREAT)
    assert study.status_code == series.status_code == 200 and study.content[:2] == b"\xff\xd8"
    assert client.get(base(pdf) + "/thumbnail", headers=TREAT).status_code == 406
    assert client.get(base(photo) + "/thumbnail", headers={**TREAT, "Accept": "image/png"}).status_code == 406
    for bad in ("0,10", "10", "a,b", "10,10,10"):
        assert client.get(base(photo) + f"/thumbnail?viewport={bad}", headers=TREAT).status_code == 400, bad
    assert client.get(base(photo) + "/thumbnail", headers=TRAIN).status_code in (403, 404)
    assert client.get(base(photo) + "/thumbnail").status_code == 403  # no purpose: fail closed
    # a study of three photos: its thumbnail reads (and the audit names) the first only
    second = received(record_id="rec-b", StudyInstanceUID=photo.StudyInstanceUID, SOPInstanceUID=generate_uid())
    third = received(record_id="rec-c", StudyInstanceUID=photo.StudyInstanceUID, SOPInstanceUID=generate_uid())
    assert stow(client, second, third).status_code == 200
    before = len(services.store.list_audit(1000))
    assert client.get(f"/dicomweb/studies/{photo.StudyInstanceUID}/thumbnail", headers=TREAT).status_code == 200
    events = services.store.list_audit(1000)[: len(services.store.list_audit(1000)) - before]
    assert [(e["type"]["code"], e["action"], e["outcome"]) for e in events] == [(INSTANCES_TRANSFERRED, "R", "0")]
    assert study_uids(events[0]) == [photo.StudyInstanceUID]


def test_wado_uri_links_answer_as_wado_rs_does_under_the_same_decision(adapter: tuple[FhirClient, Services],
                                                                       tmp_path: Path) -> None:
    """WADO-URI (PS3.18 §9): the object (application/dicom, one body), the rendered instance
    (the Binary's bytes, no transcoding), a scaled JPEG for rows/columns; contentType in order of
    preference; anonymize=yes only in a de-identified view; refused as the instance is."""
    from PIL import Image

    client, services = adapter
    photo, pdf, native = _photo_pdf_and_native(client, tmp_path)

    def wado(obj: Any, headers: dict[str, str] = TREAT, **extra: str) -> httpx.Response:
        params = {"requestType": "WADO", "studyUID": obj.StudyInstanceUID, "seriesUID": obj.SeriesInstanceUID,
                  "objectUID": obj.SOPInstanceUID, **extra}
        return client.get("/wado", params=params, headers=headers)

    def rendered(obj: Any) -> bytes:
        return client.get(f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/"
                          f"{obj.SOPInstanceUID}/rendered", headers=TREAT).content

    as_is = wado(photo)
    assert as_is.status_code == 200 and as_is.headers["content-type"] == "image/jpeg"
    assert as_is.content == rendered(photo)
    assert wado(photo, contentType="image/jpeg").content == rendered(photo)
    dicom = wado(photo, contentType="application/dicom")
    assert dicom.status_code == 200 and dicom.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(dicom.content)).SOPInstanceUID == photo.SOPInstanceUID
    png = wado(native, contentType="image/png")
    assert png.headers["content-type"] == "image/png" and png.content == rendered(native)
    # PS3.18 7.1.2: a single-frame image is image/jpeg when asked for, and by default: native
    # pixels are encoded as JPEG baseline (they were PNG, and image/jpeg alone was 406)
    for native_jpeg in (wado(native, contentType="image/jpeg,image/png"), wado(native, contentType="image/jpeg"),
                        wado(native)):
        assert native_jpeg.status_code == 200 and native_jpeg.headers["content-type"] == "image/jpeg"
        with Image.open(io.BytesIO(native_jpeg.content)) as im, Image.open(io.BytesIO(rendered(native))) as lossless:
            assert im.format == "JPEG" and im.size == lossless.size and not im.info.get("exif")
    # a JPEG photo asked for as image/png: a PNG of its decoded pixels (was 406); either made
    # type is one read, one audit (the native-as-JPEG answer read and audited the instance twice)
    audits = len(services.store.list_audit(1000))
    photo_png = wado(photo, contentType="image/png")
    assert photo_png.status_code == 200 and photo_png.content.startswith(b"\x89PNG")
    with Image.open(io.BytesIO(photo_png.content)) as im, Image.open(io.BytesIO(rendered(photo))) as shown:
        assert im.size == shown.size and not {"exif", "icc_profile"} & set(im.info)
    assert wado(native, contentType="image/jpeg").status_code == 200
    assert len(services.store.list_audit(1000)) == audits + 3  # the PNG, the WADO-RS read to compare, the JPEG
    assert wado(pdf).headers["content-type"] == "application/pdf"
    assert wado(pdf, contentType="image/jpeg").status_code == 406
    assert wado(photo, contentType="application/pdf").status_code == 406
    # wildcards and qualities (PS3.18 9.1.2.1.4: "relative degree of preference"); they were 406
    assert wado(native, contentType="image/*").headers["content-type"] == "image/png"  # as it renders
    assert wado(photo, contentType="*/*").content == rendered(photo)
    assert wado(pdf, contentType="image/*").status_code == 406
    assert wado(pdf, contentType="*/*").headers["content-type"] == "application/pdf"
    assert wado(photo, contentType="image/jpeg;q=0.5,application/dicom").headers["content-type"] == "application/dicom"
    assert wado(photo, contentType="application/dicom;q=0.2, image/jpeg;q=0.9").headers["content-type"] == "image/jpeg"
    assert wado(photo, contentType="image/jpeg;q=0").status_code == 406
    assert wado(pdf, contentType="image/jpeg", rows="64").status_code == 406
    assert wado(pdf, contentType="image/jpeg,application/dicom", rows="64").headers["content-type"] == "application/dicom"
    scaled = wado(photo, contentType="image/jpeg", rows="40", columns="40")
    with Image.open(io.BytesIO(scaled.content)) as im:
        assert im.format == "JPEG" and max(im.size) == 40 and "exif" not in im.info
    # what is not supported or malformed, and the decision
    assert wado(photo, requestType="WADO2").status_code == 400
    assert client.get("/wado", params={"requestType": "WADO", "objectUID": photo.SOPInstanceUID},
                      headers=TREAT).status_code == 400
    for extra in ({"windowCenter": "40"}, {"region": "0,0,1,1"}, {"anonymize": "yes"}):
        r = wado(photo, **extra)
        assert r.status_code == 400 and r.json()["issue"][0]["code"] == "not-supported", extra
    assert wado(photo, frameNumber="2").status_code == 404  # a frame it does not hold (was 400 for any but 1)
    assert wado(photo, rows="0").status_code == 400
    # optional parameters of PS3.18 9.1.2 a server may take without acting on them (they were 400):
    # charset (the answer is the object or a picture, no text to put in a character set) and
    # imageQuality (1-100, for a lossy picture made anew; the stored JPEG frame is served as it is)
    for extra in ({"charset": "UTF-8"}, {"charset": "ISO_IR 100,UTF-8"}, {"imageQuality": "80"},
                  {"imageQuality": "100", "contentType": "image/jpeg", "charset": "utf-8"}):
        r = wado(photo, **extra)
        assert r.status_code == 200 and r.content == rendered(photo), extra
    assert wado(photo, contentType="application/dicom", charset="UTF-8").content == \
        wado(photo, contentType="application/dicom").content
    for bad in ("0", "101", "x", "50.5"):
        r = wado(photo, imageQuality=bad)
        assert r.status_code == 400 and r.json()["issue"][0]["code"] == "invalid", bad
    assert wado(photo, headers={}).status_code == 403
    assert wado(photo, headers=TRAIN).status_code in (403, 404)
    add_consent(client, ["TRAIN"])
    [item] = qido(client, "instances", TRAIN, Modality="XC")
    study, series, sop = (value(item, tag) for tag in ("0020000D", "0020000E", "00080018"))
    train = client.get("/wado", params={"requestType": "WADO", "studyUID": study, "seriesUID": series,
                                        "objectUID": sop, "contentType": "application/dicom", "anonymize": "yes"},
                       headers=TRAIN)
    assert train.status_code == 200 and pydicom.dcmread(io.BytesIO(train.content)).PatientIdentityRemoved == "NO"


# -- QIDO-RS --------------------------------------------------------------------------------------


def test_qido_levels_keys_and_counts_follow_the_decision(adapter: tuple[FhirClient, Services]) -> None:
    client, _ = adapter
    a, b = received(record_id="rec-a"), received(record_id="rec-b")
    doc = received(PhotoKind.DOCUMENT, record_id="rec-doc", StudyInstanceUID=generate_uid(prefix="2.25."))
    stow(client, a, b, doc)
    studies = qido(client, "studies", TREAT)
    assert {value(s, "0020000D") for s in studies} == {a.StudyInstanceUID, doc.StudyInstanceUID}
    study = next(s for s in studies if value(s, "0020000D") == a.StudyInstanceUID)
    assert (value(study, "00100020"), value(study, "00100021")) == (PATIENT["value"], "HOSP")
    assert study["00080061"]["Value"] == ["XC"] and value(study, "00201208") == 2
    assert value(study, "00080020") == a.StudyDate
    assert study["00201206"] == {"vr": "IS", "Value": [2]}
    # keys: patient, modality, dates, UIDs, wildcards; by tag too
    assert len(qido(client, "studies", PatientID=PATIENT["value"], IssuerOfPatientID="HOSP")) == 2
    assert len(qido(client, "studies", **{"00100020": "MRN-*"})) == 2
    assert len(qido(client, "studies", PatientID="M?N*0*1")) == 2 and qido(client, "studies", PatientID="M?N-1*") == []
    assert qido(client, "studies", PatientID="*~" * 24 + "x") == []  # took 20 s as a regular expression
    assert qido(client, "studies", PatientID="MRN-0002") == []
    assert [value(s, "0020000D") for s in qido(client, "studies", ModalitiesInStudy="DOC")] == [doc.StudyInstanceUID]
    # a list of modalities matches any of them (a viewer's modality filter, OHIF: ModalitiesInStudy=CT,MR),
    # with ',' or '\\'; it was taken as one code and matched nothing
    for listed in ("XC,DOC", "DOC\\XC", "CT,DOC"):
        wanted = {doc.StudyInstanceUID} | ({a.StudyInstanceUID} if "XC" in listed else set())
        assert {value(s, "0020000D") for s in qido(client, "studies", ModalitiesInStudy=listed)} == wanted, listed
    assert len(qido(client, "series", Modality="XC,DOC")) == 3 and qido(client, "series", Modality="CT,MR") == []
    assert len(qido(client, "studies", StudyDate=f"{a.StudyDate}-")) >= 1
    assert qido(client, "studies", StudyDate="19000101-19001231") == []
    assert len(qido(client, "studies", StudyInstanceUID=f"{a.StudyInstanceUID},{doc.StudyInstanceUID}")) == 2
    series = qido(client, f"studies/{a.StudyInstanceUID}/series")
    assert {value(s, "0020000E") for s in series} == {a.SeriesInstanceUID, b.SeriesInstanceUID}
    assert all(value(s, "00201209") == 1 and value(s, "00080060") == "XC" for s in series)
    assert len(qido(client, "series", Modality="DOC")) == 1
    instances = qido(client, f"studies/{a.StudyInstanceUID}/series/{a.SeriesInstanceUID}/instances")
    assert [(value(i, "00080018"), value(i, "00080016")) for i in instances] == [(a.SOPInstanceUID, a.SOPClassUID)]
    assert len(qido(client, "instances")) == 3
    assert len(qido(client, "instances", limit="2")) == 2 and len(qido(client, "instances", offset="2")) == 1
    assert len(qido(client, "instances", SOPInstanceUID=b.SOPInstanceUID, includefield="all")) == 1
    # filtered by the decision: counts change when a consent is added and withdrawn
    assert qido(client, "instances", TRAIN) == []
    consent = add_consent(client, ["TRAIN"])
    assert len(qido(client, "instances", TRAIN)) == 3
    [train_study] = qido(client, "studies", TRAIN, ModalitiesInStudy="XC")
    assert value(train_study, "00201208") == 2
    # under TRAIN the keys are in the mapped space: the original UIDs match nothing
    assert qido(client, "studies", TRAIN, StudyInstanceUID=a.StudyInstanceUID) == []
    assert len(qido(client, "studies", TRAIN, StudyInstanceUID=value(train_study, "0020000D"))) == 1
    assert qido(client, "studies", TRAIN, PatientID=PATIENT["value"]) == []
    withdraw(client, consent)
    assert qido(client, "instances", TRAIN) == []
    assert len(qido(client, "instances", TREAT)) == 3


def test_qido_pages_count_results_at_their_level_and_read_only_what_they_need(
        adapter: tuple[FhirClient, Services], monkeypatch: pytest.MonkeyPatch) -> None:
    """limit/offset count studies, series or instances as the level asks, after the decision
    (a withheld study takes no place on a page), and a page reads the store's instances only up
    to its last study: a batch at a time, stopping there (not every instance and record)."""
    client, services = adapter
    objects = []
    for n in range(5):
        study = generate_uid(prefix="2.25.")
        objects += [received(record_id=f"rec-{n}-{k}", StudyInstanceUID=study) for k in range(2)]
    # the other patient's study sorts first (the store orders by study UID): a page may start withheld
    theirs = received(record_id="rec-theirs", StudyInstanceUID="2.25.1", PatientID="MRN-0002", PatientName="Roe^Rick")
    assert stow(client, *objects[:6], theirs, *objects[6:]).status_code == 200
    every_study = [value(s, "0020000D") for s in qido(client, "studies")]
    assert len(every_study) == 6
    paged = [s for start in (0, 2, 4) for s in qido(client, "studies", limit="2", offset=str(start))]
    assert [value(s, "0020000D") for s in paged] == every_study
    assert all(value(s, "00201208") == (1 if value(s, "0020000D") == theirs.StudyInstanceUID else 2) for s in paged)
    every_series = [value(s, "0020000E") for s in qido(client, "series")]
    assert len(every_series) == 11
    assert [value(s, "0020000E") for s in qido(client, "series", limit="3", offset="4")] == every_series[4:7]
    every_instance = [value(i, "00080018") for i in qido(client, "instances")]
    assert [value(i, "00080018") for i in qido(client, "instances", limit="3", offset="5")] == every_instance[5:8]
    assert qido(client, "studies", offset="6") == []
    # under TRAIN (consent for MRN-0001 only) the other patient's study is left out, not counted
    add_consent(client, ["TRAIN"])
    train = [value(s, "0020000D") for s in qido(client, "studies", TRAIN)]
    assert len(train) == 5
    assert [value(s, "0020000D") for s in qido(client, "studies", TRAIN, limit="2", offset="2")] == train[2:4]
    # a page stops reading at its last study (batches of 2 instances here)
    store = services.store
    original = store.iter_dicom_instances
    read: list[int] = []

    def counted(**kwargs: Any) -> Iterator[list[Any]]:
        for batch in original(**{**kwargs, "batch": 2}):
            read.append(len(batch))
            yield batch

    monkeypatch.setattr(store, "iter_dicom_instances", counted)
    [first] = qido(client, "studies", limit="1")
    assert value(first, "0020000D") == every_study[0]
    assert value(first, "00201208") == (1 if every_study[0] == theirs.StudyInstanceUID else 2)
    assert 0 < sum(read) <= 4  # the first study, and the batch that showed it was whole (of 11 instances)
    events = services.store.list_audit(1)
    assert len([e for e in events[0]["entity"] if e.get("what", {}).get("reference", "").startswith("Media/")]) \
        == value(first, "00201208")  # the audit names what the page returned


def test_qido_study_list_shows_what_a_viewer_lists_in_the_view_the_purpose_allows(
        adapter: tuple[FhirClient, Services]) -> None:
    """A viewer's study list: the patient's name, the study's description, accession number and
    time, as the object carries them, for care; for HRESCH the pseudonym as the name (as its
    copy says) and a received object's time (not a posted photo's, which may be the instant it
    was filed: merges review finding 4), nothing else; for TRAIN none of them (PS3.15 Table
    E.1-1). A photo posted over HTTP has none."""
    client, _ = adapter
    obj = received(record_id="rec-a", StudyDescription="Wound care, left heel", AccessionNumber="ACC-77",
                   StudyTime="101500")
    assert stow(client, obj).status_code == 200
    assert post_photo(client, WOUND, metadata()).status_code == 201
    studies = {value(s, "0020000D"): s for s in qido(client, "studies", TREAT)}
    treat = studies[obj.StudyInstanceUID]
    assert treat["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": PATIENT_NAME}]}
    assert (value(treat, "00081030"), value(treat, "00080050"), value(treat, "00080030")) == \
        ("Wound care, left heel", "ACC-77", "101500")
    # a RIS's key: the AccessionNumber, exact, through the store's index; only care's view has one
    assert [value(s, "0020000D") for s in qido(client, "studies", AccessionNumber="ACC-77")] == [obj.StudyInstanceUID]
    assert len(qido(client, "instances", TREAT, AccessionNumber="ACC-77")) == 1
    assert qido(client, "studies", AccessionNumber="ACC-7") == []
    # a viewer's filter on the description: wildcards, in care's view only
    assert [value(s, "0020000D") for s in qido(client, "studies", StudyDescription="Wound care*")] \
        == [obj.StudyInstanceUID]
    assert qido(client, "studies", StudyDescription="Wound") == []
    [photo] = [s for uid, s in studies.items() if uid != obj.StudyInstanceUID]
    assert not {"00100010", "00081030", "00080050"} & valued(photo)
    add_consent(client, ["TRAIN", "HRESCH"])
    for study in qido(client, "studies", TRAIN):
        assert not {"00100010", "00081030", "00080050", "00080030"} & valued(study)
        assert PATIENT_NAME not in json.dumps(study) and "ACC-77" not in json.dumps(study)
    assert qido(client, "studies", TRAIN, AccessionNumber="ACC-77") == []
    assert qido(client, "studies", HRESCH, AccessionNumber="ACC-77") == []
    # a lone * is universal matching (PS3.4 C.2.2.2.4): what the view shows, emptied values included
    assert qido(client, "studies", HRESCH, StudyDescription="*") == qido(client, "studies", HRESCH) != []
    assert qido(client, "studies", TRAIN, StudyDescription="*") == qido(client, "studies", TRAIN) != []
    pseudonymised = qido(client, "studies", HRESCH)
    # the received object's StudyTime (its sender's), not the posted photo's
    assert sorted(value(s, "00080030") or "" for s in pseudonymised) == ["", "101500"]
    for hresch in pseudonymised:
        assert hresch["00100010"]["Value"] == [{"Alphabetic": f"{value(hresch, '00100020')}^"}]
        assert not {"00081030", "00080050"} & valued(hresch) and PATIENT_NAME not in json.dumps(hresch)
        # what the study list says is what the released copy says
        [data] = parts_of(client.get(value(hresch, "00081190").split("testserver")[-1], headers=HRESCH))
        assert str(read(data).PatientName) == f"{value(hresch, '00100020')}^"


def test_qido_matches_patient_name_as_a_viewer_searches_it_in_the_view_the_purpose_allows(
        adapter: tuple[FhirClient, Services]) -> None:
    """PatientName, a required QIDO-RS study matching key (PS3.18 10.6.1.2.3): wildcards, case
    and empty trailing components disregarded (PS3.4 C.2.2.2.1 lets PN matching ignore case),
    any component group; matched against what the view shows: care the name as received, HRESCH
    the pseudonym (its copies' PatientName), TRAIN nothing. It was 400 not supported, so a
    viewer's search by name failed."""
    client, _ = adapter
    mine = received(record_id="rec-a")  # Doe^Jane
    theirs = received(record_id="rec-b", PatientID="MRN-0002", SpecificCharacterSet="ISO_IR 192",
                      StudyInstanceUID=generate_uid(prefix="2.25."), SeriesInstanceUID=generate_uid(prefix="2.25."),
                      PatientName="Roe^Rick^^^=\u30ed\u30a6^\u30ea\u30c3\u30af")
    assert stow(client, mine, theirs).status_code == 200

    def names(headers: dict[str, str] = TREAT, level: str = "studies", **params: str) -> list[str]:
        return sorted(value(i, "00100020") for i in qido(client, level, headers, **params))

    for pattern in ("Doe^Jane", "doe^jane", "DOE*", "*jane", "Doe^Jane^^", "D?e^J*", "doe^jane="):
        assert names(PatientName=pattern) == ["MRN-0001"], pattern
    assert names(PatientName="Roe^Rick") == ["MRN-0002"]
    assert names(PatientName="\u30ed\u30a6*") == ["MRN-0002"]  # the ideographic group
    assert names(PatientName="*") == ["MRN-0001", "MRN-0002"]
    assert names(PatientName="Doe") == [] and names(PatientName="Jane*") == []
    assert [value(i, "00080018") for i in qido(client, "instances", **{"00100010": "roe*"})] == [theirs.SOPInstanceUID]
    assert qido(client, "series", PatientName="doe*", PatientID="MRN-0002") == []
    add_consent(client, ["TRAIN", "HRESCH"])  # for MRN-0001 only
    assert qido(client, "studies", TRAIN, PatientName="*") == qido(client, "studies", TRAIN) != []  # universal
    assert qido(client, "studies", TRAIN, PatientName="?*") == []  # at least one character: TRAIN shows none
    assert qido(client, "studies", TRAIN, PatientName="Doe*") == []
    assert qido(client, "studies", HRESCH, PatientName="Doe*") == []  # the name is not shown: no match
    [pseudonymised] = qido(client, "studies", HRESCH)
    pseudonym = value(pseudonymised, "00100020")
    assert [value(s, "00100020") for s in qido(client, "studies", HRESCH, PatientName=pseudonym.lower())] \
        == [pseudonym]


#: PatientID -> PatientName of the objects the name tests store (UTF-8: ISO_IR 192)
NAMES = {"MRN-0001": "Doe^John^^^", "MRN-0002": "Stra\u00dfe^Eva", "MRN-0003": "\u212aelvin^Lord",
         "MRN-0004": "Yamada^Taro=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046",
         "MRN-0005": "Smith^Anna"}


def named(patient_id: str, **attrs: Any) -> Dataset:
    return received(record_id=f"rec-{patient_id}", PatientID=patient_id, PatientName=NAMES[patient_id],
                    SpecificCharacterSet="ISO_IR 192", StudyInstanceUID=generate_uid(prefix="2.25."),
                    SeriesInstanceUID=generate_uid(prefix="2.25."), **attrs)


def read_counted(services: Services, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many instances each QIDO-RS search reads from the store (appended per search)."""
    store = services.store
    original = store.iter_dicom_instances
    read: list[int] = []

    def counted(**kwargs: Any) -> Iterator[list[Any]]:
        read.append(0)
        for batch in original(**kwargs):
            read[-1] += len(batch)
            yield batch

    monkeypatch.setattr(store, "iter_dicom_instances", counted)
    return read


def test_qido_patient_name_in_cares_view_reads_only_its_candidates_and_finds_every_match(
        adapter: tuple[FhirClient, Services], monkeypatch: pytest.MonkeyPatch) -> None:
    """A viewer's patient search (PatientName alone) read every instance of the store and matched
    each in Python. In care's view the store now selects the candidates by the name's key (its
    literal prefix, in any component group) and Python still has the last word: wildcards, case,
    empty trailing components, each group, and case folding that changes a name's length (ß is
    ss) or its letters (the Kelvin sign is k) find what they found before, and nothing more."""
    client, services = adapter
    assert stow(client, *(named(p) for p in NAMES)).status_code == 200
    read = read_counted(services, monkeypatch)

    def found(**params: str) -> list[str]:
        return sorted(value(i, "00100020") for i in qido(client, "studies", TREAT, **params))

    for pattern, expected in (
            ("Doe^John", ["MRN-0001"]), ("DOE^JOHN^^", ["MRN-0001"]), ("doe*", ["MRN-0001"]),
            ("Do?^J*", ["MRN-0001"]), ("Doe^John^^^", ["MRN-0001"]), ("Doe", []), ("John*", []),
            ("STRASSE*", ["MRN-0002"]), ("stra\u00dfe^eva", ["MRN-0002"]), ("STRAS?E^EVA", ["MRN-0002"]),
            ("Strasse", []), ("KELVIN*", ["MRN-0003"]), ("kelvin^lord", ["MRN-0003"]),
            ("\u212aELVIN*", ["MRN-0003"]),
            ("\u5c71\u7530*", ["MRN-0004"]), ("\u3084\u307e\u3060^\u305f\u308d\u3046", ["MRN-0004"]),
            ("Yamada^Taro=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046^^", ["MRN-0004"]),
            ("YAMADA^TARO=\u5c71*", ["MRN-0004"]),
            ("\u5c71\u7530^\u592a\u90ce=*", []),  # several groups: matched against the whole name
            ("SMITH*", ["MRN-0005"]), ("Smith^Anna^^^", ["MRN-0005"]), ("X*", [])):
        read.clear()
        assert found(PatientName=pattern) == expected, pattern
        assert len(read) == 1 and len(expected) <= read[0] <= 1, (pattern, read)  # its candidate, if any
    # U+0000 is in no name (nor any stored value): a search that cannot be made, 400, nothing read
    read.clear()
    nul = client.get("/dicomweb/studies", params={"PatientName": "Smith\x00*"}, headers=TREAT)
    assert nul.status_code == 400 and "U+0000" in nul.text and read == []
    read.clear()
    assert found(PatientName="*john") == ["MRN-0001"] and read == [len(NAMES)]  # no prefix: every instance
    read.clear()
    assert len(qido(client, "instances", PatientName="s*")) == 2 and read == [2]  # Straße, Smith
    read.clear()
    assert len(qido(client, "series", PatientName="*")) == len(NAMES) and read == [len(NAMES)]


def test_qido_study_description_in_cares_view_reads_only_its_candidates(
        adapter: tuple[FhirClient, Services], monkeypatch: pytest.MonkeyPatch) -> None:
    """StudyDescription (case-sensitive wildcards) the same way: its literal prefix, in the index."""
    client, services = adapter
    assert stow(client, named("MRN-0001", StudyDescription="Wound care, left heel"),
                named("MRN-0002", StudyDescription="wound check"), named("MRN-0005")).status_code == 200
    read = read_counted(services, monkeypatch)
    for pattern, expected in (("Wound*", ["MRN-0001"]), ("wound*", ["MRN-0002"]), ("Wound care, left heel", ["MRN-0001"]),
                              ("W?und*", ["MRN-0001"]), ("Wound", [])):
        read.clear()
        assert sorted(value(s, "00100020") for s in qido(client, "studies", StudyDescription=pattern)) == expected
        assert len(read) == 1 and len(expected) <= read[0] <= 1, (pattern, read)
    read.clear()  # U+0000 is in no description: a search that cannot be made, 400, nothing read
    nul = client.get("/dicomweb/studies", params={"StudyDescription": "Wound\x00*"}, headers=TREAT)
    assert nul.status_code == 400 and read == []
    read.clear()
    assert len(qido(client, "studies", StudyDescription="*care*")) == 1 and read == [3]


def test_qido_finds_by_name_what_a_store_of_schema_11_holds(tmp_path: Path) -> None:
    """A store written by the code before schema 12 (no match keys) opened by this code: the
    upgrade adds the key columns, the start derives the keys of the instances stored before, and
    QIDO-RS by PatientName and StudyDescription finds them through the index."""
    with pacs_client(tmp_path) as (client, _):
        assert stow(client, named("MRN-0002", StudyDescription="Wound care"), named("MRN-0004"),
                    named("MRN-0005")).status_code == 200
    db = sqlite3.connect(tmp_path / "data" / "adapter.db")
    try:
        with db:  # one transaction: the tables as schema 11 made them
            for column in ("patient_name_key", "patient_name_ideographic_key", "patient_name_phonetic_key",
                           "study_description_key"):
                db.execute(f"DROP INDEX ix_dicom_instances_{column}")
                db.execute(f"ALTER TABLE dicom_instances DROP COLUMN {column}")
            db.execute("UPDATE schema_version SET version = 11")  # as a version 11 database says
    finally:
        db.close()
    with pacs_client(tmp_path) as (client, services):
        with services.store.engine.connect() as conn:
            keys = conn.exec_driver_sql("SELECT patient_name_key, patient_name_ideographic_key, "
                                        "study_description_key FROM dicom_instances").all()
            assert conn.exec_driver_sql("SELECT max(version) FROM schema_version").scalar() == SCHEMA_VERSION
        assert sorted(keys) == [("smith^anna", None, ""), ("strasse^eva", None, "Wound care"),
                                ("yamada^taro=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046",
                                 "\u5c71\u7530^\u592a\u90ce", "")]
        for pattern, patient in (("STRASSE*", "MRN-0002"), ("\u5c71\u7530*", "MRN-0004"), ("smith^anna", "MRN-0005")):
            assert [value(s, "00100020") for s in qido(client, "studies", PatientName=pattern)] == [patient]
        assert [value(s, "00100020") for s in qido(client, "studies", StudyDescription="Wound*")] == ["MRN-0002"]
        assert services.store.fill_dicom_match_keys() == 0


def stored_before_studies_were_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the objects a test stores next into a study held for another patient, as they were
    stored before the clinical safety review (finding 1) refused them: a database may hold such
    studies, which every read must still handle."""
    from adapter.store import sql

    monkeypatch.setattr(sql, "_check_hierarchy", lambda conn, **instance: None)


def test_a_study_retrieve_leaves_out_what_is_not_permitted(adapter: tuple[FhirClient, Services],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two patients' objects in one study UID (stored before such an object was refused): TRAIN
    consent for one patient only returns that one."""
    client, _ = adapter
    mine = received(record_id="rec-a")
    theirs = received(record_id="rec-b", PatientID="MRN-0002", PatientName="Roe^Rick")
    stored_before_studies_were_checked(monkeypatch)
    assert stow(client, mine, theirs).status_code == 200
    add_consent(client, ["TRAIN"])  # for MRN-0001 only
    [study] = qido(client, "studies", TRAIN)
    assert value(study, "00201208") == 1
    data = parts_of(wado(client, value(study, "0020000D"), headers=TRAIN))
    assert len(data) == 1 and b"MRN-0002" not in data[0] and b"Roe^Rick" not in data[0]
    assert len(parts_of(wado(client, mine.StudyInstanceUID))) == 2  # TREAT: both
    # QIDO by PatientID (looked up by the identifier's value): each patient's part of the study
    for patient_id in ("MRN-0001", "MRN-0002"):
        [found] = qido(client, "studies", PatientID=patient_id)
        assert value(found, "00100020") == patient_id and value(found, "00201208") == 1
    assert len(qido(client, "instances", PatientID="MRN-000?")) == 2


def test_wado_serves_an_object_asked_for_in_the_transfer_syntax_it_is_stored_in(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """PS3.18 8.7.3.5: a transfer-syntax parameter names what the client accepts. An object stored
    in that syntax is served as it is (it needs no transcoding); a JPEG one in Explicit VR Little
    Endian too (decompressed); any other syntax is 406."""
    client, _ = adapter
    vl = received()  # JPEG Baseline
    native = native_sc_file(tmp_path / "native.dcm", bytes(range(48)), 4, 4)  # Explicit VR Little Endian
    stow(client, vl, native)
    jpeg_baseline, explicit = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"

    def asked(*syntaxes: str) -> dict[str, str]:
        return {**TREAT, "Accept": ", ".join(f'multipart/related; type="application/dicom"; transfer-syntax={s}'
                                             for s in syntaxes)}

    jpeg_2000 = "1.2.840.10008.1.2.4.90"
    for ds, stored, other in ((vl, jpeg_baseline, jpeg_2000), (native, explicit, jpeg_baseline)):
        instance = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                    f"/instances/{ds.SOPInstanceUID}")
        study = f"/dicomweb/studies/{ds.StudyInstanceUID}"
        for url in (instance, study):
            r = client.get(url, headers=asked(stored))
            assert r.status_code == 200, (url, r.text)
            assert [read(p).SOPInstanceUID for p in parts_of(r)] == [ds.SOPInstanceUID]
            assert client.get(url, headers=asked(other, stored)).status_code == 200
            refused = client.get(url, headers=asked(other))
            assert refused.status_code == 406 and refused.json()["resourceType"] == "OperationOutcome"


def test_qido_study_date_of_a_photo_is_the_one_its_object_carries(adapter: tuple[FhirClient, Services]) -> None:
    """A photo posted without takenAt was taken at its (kept) EXIF capture time: its record's
    createdDateTime and its DICOM object's StudyDate say so, and QIDO-RS matches and shows that
    date too, not the day it was filed."""
    client, _ = adapter
    receipt = post_photo(client, WOUND, metadata()).json()
    study = receipt["dicom"]["studyInstanceUid"]
    (obj,) = parts_of(client.get(f"/dicomweb/studies/{study}", headers=TREAT))
    taken = read(obj).StudyDate
    record = client.get(f"/fhir/{receipt['record']}", headers=TREAT).json()
    assert record["createdDateTime"].startswith(f"{taken[:4]}-{taken[4:6]}-{taken[6:]}")
    (found,) = qido(client, "studies", StudyInstanceUID=study)
    assert value(found, "00080020") == taken
    assert [value(s, "0020000D") for s in qido(client, "studies", StudyDate=taken)] == [study]


def test_qido_study_date_of_a_photo_stored_before_is_rederived_at_start(tmp_path: Path) -> None:
    """A photo stored before its QIDO-RS StudyDate was the day it was taken kept the day it was
    filed in the index; opened by this code, the store derives it afresh from the record, once:
    QIDO shows and matches the day the record and the object say it was taken."""
    with pacs_client(tmp_path) as (client, _):
        receipt = post_photo(client, WOUND, metadata()).json()  # no takenAt: the EXIF capture time
        record = client.get(f"/fhir/{receipt['record']}", headers=TREAT).json()
    study, sop = receipt["dicom"]["studyInstanceUid"], receipt["dicom"]["sopInstanceUid"]
    taken = record["createdDateTime"][:10].replace("-", "")
    filed = record["issued"][:10].replace("-", "")
    assert taken != filed
    # the store as the code before wrote it: the day filed, and no version of the derivation kept
    db = sqlite3.connect(tmp_path / "data" / "adapter.db")
    try:
        with db:  # one transaction
            db.execute("UPDATE dicom_instances SET study_date = ? WHERE sop_instance_uid = ?", (filed, sop))
            db.execute("DELETE FROM key_fingerprints WHERE name = 'study-dates'")
    finally:
        db.close()
    with pacs_client(tmp_path) as (client, services):
        (found,) = qido(client, "studies", StudyInstanceUID=study)
        assert value(found, "00080020") == taken
        assert [value(s, "0020000D") for s in qido(client, "studies", StudyDate=taken)] == [study]
        assert qido(client, "studies", StudyDate=filed) == []
        (obj,) = parts_of(client.get(f"/dicomweb/studies/{study}", headers=TREAT))
        assert read(obj).StudyDate == taken
        assert services.store.reindex_photo_study_dates(STUDY_DATE_VERSION, lambda _: pytest.fail("again")) == 0


def test_qido_study_time_of_a_photo_is_the_one_its_object_carries(tmp_path: Path) -> None:
    """A posted photo's StudyTime was in its WADO-RS metadata but not in QIDO-RS (neither shown
    nor matched), unlike a received object's; now both, in care's view (HRESCH's and TRAIN's copies
    have none: a posted photo's may be the instant it was filed, merges review finding 4; the time
    taken stays as HRESCH's ContentTime); a photo stored before gets it at the next start."""
    with pacs_client(tmp_path) as (client, _):
        receipt = post_photo(client, WOUND, metadata(takenAt="2024-03-01T10:15:00+01:00")).json()
        study, sop = receipt["dicom"]["studyInstanceUid"], receipt["dicom"]["sopInstanceUid"]
        (obj,) = parts_of(client.get(f"/dicomweb/studies/{study}", headers=TREAT))
        assert read(obj).StudyTime == "101500"
        (found,) = qido(client, "studies", StudyInstanceUID=study, includefield="00080030")
        assert value(found, "00080030") == "101500"
        (instance,) = qido(client, "instances", StudyInstanceUID=study)
        assert value(instance, "00080030") == "101500"
        assert [value(s, "0020000D") for s in qido(client, "studies", StudyTime="1015")] == [study]
        assert [value(s, "0020000D") for s in qido(client, "studies", StudyTime="1000-1100")] == [study]
        assert qido(client, "studies", StudyTime="1016") == []
        add_consent(client, ["HRESCH"])
        (pseudonymised,) = qido(client, "studies", HRESCH)
        assert value(pseudonymised, "00080030") is None
        assert qido(client, "studies", HRESCH, StudyTime="1015") == []
        (copy,) = parts_of(client.get(f"/dicomweb/studies/{value(pseudonymised, '0020000D')}", headers=HRESCH))
        assert (read(copy).StudyTime, read(copy).ContentTime) == ("", "101500")
    # the store as the code before wrote it: no StudyTime for the photo, the version before kept
    db = sqlite3.connect(tmp_path / "data" / "adapter.db")
    try:
        with db:
            db.execute("UPDATE dicom_instances SET study_time = NULL WHERE sop_instance_uid = ?", (sop,))
            db.execute("UPDATE key_fingerprints SET fingerprint = 'photo-study-date:1' WHERE name = 'study-dates'")
    finally:
        db.close()
    with pacs_client(tmp_path) as (client, _):
        assert [value(s, "0020000D") for s in qido(client, "studies", StudyTime="1015")] == [study]


def test_stow_of_a_transfer_syntax_without_a_rendering_fails_as_such(adapter: tuple[FhirClient, Services]) -> None:
    """STOW-RS has no negotiation: a part in a transfer syntax the adapter cannot render losslessly
    (JPEG 2000 here) fails with FailureReason 0xC122 Referenced Transfer Syntax not supported
    (PS3.18 10.5.3), not 0x0122 Referenced SOP Class not supported (its SOP class is accepted)."""
    client, services = adapter
    j2k = received()
    j2k.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"
    r = stow(client, j2k)
    assert r.status_code == 409, r.text
    (failed,) = r.json()["00081198"]["Value"]
    assert value(failed, "00081155") == j2k.SOPInstanceUID
    assert value(failed, "00081197") == REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED == 0xC122
    assert services.store.find_dicom_instance(j2k.SOPInstanceUID) is None


def test_wado_uri_serves_the_object_in_the_transfer_syntax_it_is_stored_in_when_asked(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """WADO-URI transferSyntax (PS3.18 §9, with contentType=application/dicom only): the syntax
    the object is stored in is served (no transcoding is needed); another is 406, not a 400
    'not supported' for the parameter itself."""
    client, _ = adapter
    photo, _, native = _photo_pdf_and_native(client, tmp_path)
    for obj, other in ((photo, "1.2.840.10008.1.2.4.91"), (native, "1.2.840.10008.1.2.4.50")):
        params = {"requestType": "WADO", "studyUID": obj.StudyInstanceUID, "seriesUID": obj.SeriesInstanceUID,
                  "objectUID": obj.SOPInstanceUID, "contentType": "application/dicom"}
        stored = pydicom.dcmread(io.BytesIO(client.get("/wado", params=params, headers=TREAT).content))
        syntax = str(stored.file_meta.TransferSyntaxUID)
        asked = client.get("/wado", params={**params, "transferSyntax": syntax}, headers=TREAT)
        assert asked.status_code == 200, asked.text
        assert asked.headers["content-type"] == "application/dicom"
        assert pydicom.dcmread(io.BytesIO(asked.content)).SOPInstanceUID == obj.SOPInstanceUID
        refused = client.get("/wado", params={**params, "transferSyntax": other}, headers=TREAT)
        assert refused.status_code == 406 and refused.json()["resourceType"] == "OperationOutcome"
        rendered = client.get("/wado", params={**params, "contentType": "image/jpeg", "transferSyntax": syntax},
                              headers=TREAT)
        assert rendered.status_code == 400  # transferSyntax goes with application/dicom only


def test_native_frames_asked_for_in_a_compressed_syntax_are_not_acceptable(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """PS3.18 8.7.3.5: a frame goes in a transfer syntax the client accepts. Native pixel bytes
    are Explicit (or Implicit) VR Little Endian frames; a client that accepts only JPEG Baseline
    frames gets 406, not the raw pixels it did not ask for."""
    client, _ = adapter
    path = tmp_path / "native.dcm"
    sent = native_sc_file(path, bytes(range(48)), rows=4, columns=4)
    assert stow(client, path.read_bytes()).status_code == 200
    url = (f"/dicomweb/studies/{sent.StudyInstanceUID}/series/{sent.SeriesInstanceUID}/instances/"
           f"{sent.SOPInstanceUID}/frames/1")

    def frames(syntax: str) -> httpx.Response:
        accept = f'multipart/related; type="application/octet-stream"; transfer-syntax={syntax}'
        return client.get(url, headers={**TREAT, "Accept": accept})

    for syntax in ("*", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"):
        assert multipart_parts(frames(syntax)) == [
            ("application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1", bytes(range(48)))], syntax
    assert frames("1.2.840.10008.1.2.4.50").status_code == 406


# -- audit ----------------------------------------------------------------------------------------


def test_dicom_exchanges_are_audited_as_dicom_audit_messages(adapter: tuple[FhirClient, Services]) -> None:
    """DICOM PS3.15 A.5.3 messages as R4 AuditEvents, typed by their DICOM EventID so that an
    audit repository finds them by it: STOW-RS received is DICOM Instances Transferred (110104)
    created by the adapter, the sender the Source; a WADO-RS, WADO-URI or Binary-as-DICOM
    retrieval is 110104 read, the adapter the Source and the client the Destination, allowed or
    denied; QIDO-RS is a Query (110112) executed, the client the Source. Each transfer names the
    study by its Study Instance UID (DCM 110180). FHIR REST stays IHE BALP."""
    client, services = adapter
    done = len(services.store.list_audit(10000))

    def new_events() -> list[dict[str, Any]]:
        nonlocal done
        events = services.store.list_audit(10000)
        fresh, done = events[: len(events) - done], len(events)
        record_emitted(fresh)
        return fresh

    vl = received()
    assert stow(client, vl).status_code == 200
    [stored] = new_events()
    assert dicom_events([stored], INSTANCES_TRANSFERRED) == [stored] and "subtype" not in stored
    assert (stored["action"], stored["outcome"]) == ("C", "0")
    assert agent_roles(stored) == ["110153", "110152", "AUT"] and "altId" not in stored["agent"][0]
    assert study_uids(stored) == [vl.StudyInstanceUID]

    assert wado(client, vl.StudyInstanceUID, vl.SeriesInstanceUID, vl.SOPInstanceUID).status_code == 200
    uri = client.get("/wado", params={"requestType": "WADO", "studyUID": vl.StudyInstanceUID, "contentType":
                                      "application/dicom", "seriesUID": vl.SeriesInstanceUID,
                                      "objectUID": vl.SOPInstanceUID}, headers=TREAT)
    assert uri.status_code == 200
    retrievals = new_events()
    assert len(retrievals) == 2 and dicom_events(retrievals, INSTANCES_TRANSFERRED) == retrievals
    for event in retrievals:
        assert (event["action"], event["outcome"]) == ("R", "0") and "subtype" not in event
        assert agent_roles(event) == ["110152", "110153", "IRCP"]
        assert study_uids(event) == [vl.StudyInstanceUID]

    assert len(qido(client, "studies", PatientID=PATIENT["value"])) == 1
    [query] = new_events()
    assert dicom_events([query], QUERY) == [query] and "subtype" not in query
    assert (query["action"], query["outcome"]) == ("E", "0")
    assert agent_roles(query) == ["110153", "110152", "IRCP"]
    [asked] = [e for e in query["entity"] if e.get("role", {}).get("code") == "24"]
    assert b"PatientID=" in base64.b64decode(asked["query"]) and study_uids(query) == []

    # a photo: its creation is FHIR REST (BALP); its DICOM object refused under TRAIN is a
    # transfer refused (outcome 4), naming its study; a FHIR read stays BALP
    receipt = post_photo(client, WOUND, metadata()).json()
    photo_study = services.store.find_dicom_instance(receipt["dicom"]["sopInstanceUid"]).study_instance_uid
    [create] = new_events()
    assert create["type"]["code"] == "rest" and create["subtype"][0]["code"] == "create"
    binary = client.get(f"/fhir/{seen_as(services, 'TRAIN', receipt['binary'])}",
                        headers={**TRAIN, "Accept": "application/dicom"})
    assert binary.status_code == 404
    [refused] = new_events()
    assert dicom_events([refused], INSTANCES_TRANSFERRED) == [refused]
    assert (refused["action"], refused["outcome"]) == ("R", "4") and refused["outcomeDesc"]
    assert study_uids(refused) == [photo_study]
    assert refused["agent"][2]["purposeOfUse"][0]["coding"][0]["code"] == "TRAIN"
    assert client.get(f"/fhir/{receipt['record']}", headers=TREAT).status_code == 200
    [read] = new_events()
    assert read["type"]["code"] == "rest" and read["subtype"][0]["code"] == "read" and study_uids(read) == []


def test_an_instance_not_sent_for_the_type_asked_is_audited_as_a_read_that_failed(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """Found by the egress review: an instance decided and permitted, then answered 406 because
    the client accepts nothing it is served as (another transfer syntax, frames in another
    type, a picture of a document or in a type not made, a WADO-URI contentType), was audited as
    a retrieval (outcome 0, a disclosure) though nothing was sent, as the FHIR Binary's was
    before. Now each is one DICOM Instances Transferred with outcome 4 saying it was not sent;
    a refused reader still gets its 403 (audited as a refusal) whatever it accepts, and an
    instance sent stays outcome 0."""
    client, services = adapter
    photo, pdf, _ = _photo_pdf_and_native(client, tmp_path)

    def base(obj: Any) -> str:
        return f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/{obj.SOPInstanceUID}"

    def uri(obj: Any, **params: str) -> str:
        return "/wado?" + "&".join(f"{k}={v}" for k, v in {
            "requestType": "WADO", "studyUID": obj.StudyInstanceUID, "seriesUID": obj.SeriesInstanceUID,
            "objectUID": obj.SOPInstanceUID, **params}.items())

    implicit = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'
    not_sent = [
        (base(photo), implicit),
        (base(photo) + "/frames/1", 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2'),
        (base(photo) + "/rendered", "text/plain"),
        (base(pdf) + "/rendered", "image/jpeg"),
        (base(pdf) + "/thumbnail", None),
        (uri(photo, contentType="application/pdf"), None),
        (uri(pdf, contentType="image/jpeg", rows="64"), None),
        (uri(photo, contentType="application/dicom", transferSyntax="1.2.840.10008.1.2"), None),
    ]
    for url, accept in not_sent:
        done = len(services.store.list_audit(10000))
        r = client.get(url, headers={**TREAT, **({"Accept": accept} if accept else {})})
        assert r.status_code == 406, (url, r.status_code)
        events = services.store.list_audit(10000)
        fresh = events[: len(events) - done]
        assert len(fresh) == 1, (url, len(fresh))
        assert dicom_events(fresh, INSTANCES_TRANSFERRED) == fresh
        assert (fresh[0]["action"], fresh[0]["outcome"]) == ("R", "4"), (url, fresh[0]["outcome"])
        assert fresh[0]["outcomeDesc"].startswith("not sent"), (url, fresh[0]["outcomeDesc"])
    sent = client.get(base(photo) + "/rendered", headers={**TREAT, "Accept": "image/jpeg"})
    assert sent.status_code == 200 and services.store.list_audit(1)[0]["outcome"] == "0"
    # a study or series retrieve in a transfer syntax one of its objects is not stored in: one
    # event for the patient, outcome 4, nothing sent
    for url in (f"/dicomweb/studies/{photo.StudyInstanceUID}",
                f"/dicomweb/studies/{photo.StudyInstanceUID}/series/{photo.SeriesInstanceUID}"):
        done = len(services.store.list_audit(10000))
        r = client.get(url, headers={**TREAT, "Accept": implicit})
        assert r.status_code == 406, (url, r.status_code)
        events = services.store.list_audit(10000)
        fresh = events[: len(events) - done]
        assert [(e["action"], e["outcome"]) for e in fresh] == [("R", "4")], url
        assert fresh[0]["outcomeDesc"].startswith("not sent") and study_uids(fresh[0]) == [photo.StudyInstanceUID]
    deny = consent_resource(["TREAT"])
    deny["provision"]["type"] = "deny"
    assert client.post("/fhir/Consent", json=deny, headers=FHIR_JSON).status_code == 201
    refused = client.get(base(photo), headers={**TREAT, "Accept": implicit})
    assert refused.status_code == 403 and "transfer" not in refused.text
    [event] = services.store.list_audit(1)
    assert event["outcome"] == "4" and not event["outcomeDesc"].startswith("not sent")


def test_a_study_retrieve_is_audited_once_per_patient_and_outcome(adapter: tuple[FhirClient, Services],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """WADO-RS of a study wrote one AuditEvent per instance (a study of 500 images: 500 events,
    each its own commit). It is one DICOM Instances Transferred message per patient and
    outcome now (IHE BALP: one AuditEvent per patient), naming each record and the study (here
    a study of two patients, stored before such an object was refused)."""
    client, services = adapter
    first = received(record_id="rec-a")
    same_patient = [received(record_id=f"rec-{c}", StudyInstanceUID=first.StudyInstanceUID) for c in "bc"]
    other_patient = received(record_id="rec-d", StudyInstanceUID=first.StudyInstanceUID, PatientID="MRN-0002",
                             PatientName="Roe^Rick")
    stored_before_studies_were_checked(monkeypatch)
    assert stow(client, first, *same_patient, other_patient).status_code == 200
    records = {ds.SOPInstanceUID: services.store.find_dicom_instance(ds.SOPInstanceUID)
               for ds in (first, *same_patient, other_patient)}
    mine = sorted(f"{i.record_type}/{i.record_id}" for uid, i in records.items() if uid != other_patient.SOPInstanceUID)
    theirs = [f"{records[other_patient.SOPInstanceUID].record_type}/{records[other_patient.SOPInstanceUID].record_id}"]

    def retrieved(headers: dict[str, str], study: str = first.StudyInstanceUID) -> list[dict[str, Any]]:
        before = len(services.store.list_audit(10000))
        assert wado(client, study, headers=headers).status_code == 200
        events = services.store.list_audit(10000)
        fresh = events[: len(events) - before]
        record_emitted(fresh)
        return dicom_events(fresh, INSTANCES_TRANSFERRED)

    def named(event: dict[str, Any]) -> list[str]:
        return sorted(e["what"]["reference"] for e in event["entity"]
                      if e.get("what", {}).get("reference", "").startswith(("Media/", "DocumentReference/")))

    events = sorted(retrieved(TREAT), key=lambda e: len(named(e)))
    assert [named(e) for e in events] == [theirs, mine]
    assert all(e["outcome"] == "0" and study_uids(e) == [first.StudyInstanceUID] for e in events)

    add_consent(client, ["TRAIN"])  # for MRN-0001 only: the other patient's instance is refused
    [released] = qido(client, "studies", TRAIN)  # the study as the TRAIN view names it
    outcomes = sorted((e["outcome"], named(e)) for e in retrieved(TRAIN, value(released, "0020000D")))
    assert outcomes == [("0", mine), ("4", theirs)]


# -- PS3.18 as DICOMweb clients (OHIF, dcm4che's tools, Orthanc, bridges) ask ----------------------


def test_rendered_native_pixels_asked_for_as_jpeg_are_encoded_as_baseline_jpeg(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """image/jpeg is the default, required rendered type of a single-frame image (PS3.18 8.7.4,
    Table 8.7.4-1), baseline JPEG: native pixels (rendered as PNG) asked for as image/jpeg are
    encoded so, with no metadata, instead of a 406; the client's order of preference decides
    between the two; asked for anything, the PNG the Binary has, as before."""
    client, _ = adapter
    photo, pdf, native = _photo_pdf_and_native(client, tmp_path)

    def rendered(obj: Any, accept: str) -> httpx.Response:
        url = f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/" \
              f"{obj.SOPInstanceUID}/rendered"
        return client.get(url, headers={**TREAT, "Accept": accept})

    for accept in ("image/jpeg", "image/jpeg, image/png;q=0.5", "image/png;q=0.4, image/jpeg;q=0.9"):
        r = rendered(native, accept)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg", (accept, r.text[:200])
        assert r.content[:2] == b"\xff\xd8" and b"\xff\xc0" in r.content  # SOF0: baseline
        assert b"Exif" not in r.content and b"\xff\xfe" not in r.content  # no EXIF, no comment
        with PIL.Image.open(io.BytesIO(r.content)) as picture:
            assert picture.size == (native.Columns, native.Rows)
    for accept in ("image/png, image/jpeg;q=0.5", "*/*", "image/*"):
        r = rendered(native, accept)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", accept
    assert rendered(photo, "image/jpeg").headers["content-type"] == "image/jpeg"
    assert rendered(pdf, "image/jpeg").status_code == 406  # a document has no picture


def binary_of(client: FhirClient, obj: Any, media: str, headers: dict[str, str] = TREAT) -> bytes:
    """The bytes of the FHIR Binary of a received object's record, in the purpose's view."""
    [record] = find(client, "Media", obj.SOPInstanceUID, headers)
    return client.get(record["content"]["url"], headers={**headers, "Accept": media}).content


@pytest.mark.parametrize("media", ["image/png", "image/gif"])
def test_rendered_pictures_are_also_given_as_png_and_gif_made_anew_without_metadata(
        adapter: tuple[FhirClient, Services], tmp_path: Path, media: str) -> None:
    """image/png and image/gif are required rendered types of a single-frame image (PS3.18
    8.7.4, Table 8.7.4-1) beside the default image/jpeg: a JPEG photo asked for as PNG or GIF
    (and native pixels as GIF) got a 406. Made anew from the pixels the view releases, upright,
    with no metadata; PNG lossless of the decoded JPEG; the read decided and audited once."""
    client, services = adapter
    photo, pdf, native = _photo_pdf_and_native(client, tmp_path)
    signature = {"image/png": b"\x89PNG\r\n\x1a\n", "image/gif": b"GIF8"}[media]  # GIF87a when no extension is written
    for obj in (photo, native):
        url = f"/dicomweb/studies/{obj.StudyInstanceUID}/series/{obj.SeriesInstanceUID}/instances/" \
              f"{obj.SOPInstanceUID}/rendered"
        before = len(services.store.list_audit(1000))
        r = client.get(url, headers={**TREAT, "Accept": f"text/html, {media};q=0.8"})
        assert r.status_code == 200 and r.headers["content-type"] == media, r.text[:200]
        assert len(services.store.list_audit(1000)) == before + 1  # one read, one audit
        assert r.content.startswith(signature)
        for marker in (b"Exif", b"iCCP", b"eXIf", b"tEXt", b"iTXt", b"zTXt", b"XMP"):
            assert marker not in r.content, marker
        with PIL.Image.open(io.BytesIO(r.content)) as made, \
                PIL.Image.open(io.BytesIO(binary_of(client, obj, "image/jpeg" if obj is photo else "image/png"))) \
                as shown:
            upright = PIL.ImageOps.exif_transpose(shown)
            assert made.size == upright.size
            if media == "image/png":  # lossless of what the Binary's decoder shows
                assert np.array_equal(np.asarray(made.convert("RGB")), np.asarray(upright.convert("RGB")))
    assert client.get(f"/dicomweb/studies/{pdf.StudyInstanceUID}/series/{pdf.SeriesInstanceUID}/instances/"
                      f"{pdf.SOPInstanceUID}/rendered", headers={**TREAT, "Accept": media}).status_code == 406


def test_qido_takes_attributes_asked_for_with_an_empty_value_as_return_keys(
        adapter: tuple[FhirClient, Services]) -> None:
    """An attribute with an empty value is universal matching (PS3.4 C.2.2.2.3): it asks for
    the attribute and matches everything, as a C-FIND bridge sends its return keys. One the
    adapter does not match on is therefore no reason to refuse the search; a value in it still
    is (400: never read as matching everything), as is a name that is no DICOM attribute."""
    client, _ = adapter
    a = received()
    stow(client, a)
    for params in ({"ReferringPhysicianName": ""}, {"00080090": ""}, {"StudyTime": ""}, {"00100030": ""},
                   {"00081032.00080100": ""}, {"00191010": ""}, {"PatientBirthDate": "", "PatientID": "MRN-0001"}):
        [study] = qido(client, "studies", **params)
        assert value(study, "0020000D") == a.StudyInstanceUID, params
    [series] = qido(client, "series", SeriesNumber="", SeriesDescription="")
    assert value(series, "0020000E") == a.SeriesInstanceUID
    [instance] = qido(client, "instances", InstanceNumber="", Rows="")
    assert value(instance, "00080018") == a.SOPInstanceUID
    for params in ({"PatientBirthDate": "19700521"}, {"Foo": ""}, {"0008009": ""}, {"StudyTime.Foo": ""}):
        r = client.get("/dicomweb/studies", params=params, headers=TREAT)
        assert r.status_code == 400, (params, r.text)


def test_qido_says_fuzzy_matching_is_not_performed(adapter: tuple[FhirClient, Services]) -> None:
    """fuzzymatching=true (OHIF and dcm4che's qidors --fuzzy send it): literal matching only,
    said in the Warning header PS3.18 8.3.4.2 gives; none for false or without it."""
    client, _ = adapter
    stow(client, received())
    r = client.get("/dicomweb/studies", params={"fuzzymatching": "true", "PatientName": "doe*"}, headers=TREAT)
    assert r.status_code == 200 and len(r.json()) == 1
    assert r.headers["warning"] == ("299 http://testserver/dicomweb: The fuzzymatching parameter is not supported. "
                                    "Only literal matching has been performed.")
    for params in ({"fuzzymatching": "false"}, {}):
        assert "warning" not in client.get("/dicomweb/studies", params=params, headers=TREAT).headers


def test_qido_says_when_the_servers_maximum_cut_the_results(adapter: tuple[FhirClient, Services],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """More results than the server gives in one answer (no limit, or a larger one): as many as
    it gives, and the Warning PS3.18 8.3.4.4 asks for, so the client pages on; none when the
    client's own limit or the end of the results ends the page."""
    client, _ = adapter
    monkeypatch.setattr("adapter.api.routes.dicomweb.QIDO_MAX_LIMIT", 2)
    stow(client, *[received(record_id=f"rec-{n}", StudyInstanceUID=generate_uid(prefix="2.25.")) for n in range(3)])
    warning = ("299 http://testserver/dicomweb: The number of results exceeded the maximum supported by the server. "
               "Additional results can be requested.")
    for params in ({}, {"limit": "5"}, {"limit": "3", "offset": "0"}):
        r = client.get("/dicomweb/studies", params=params, headers=TREAT)
        assert r.status_code == 200 and len(r.json()) == 2 and r.headers.get("warning") == warning, params
    for params in ({"limit": "2"}, {"offset": "1"}, {"limit": "5", "offset": "1"}):
        r = client.get("/dicomweb/studies", params=params, headers=TREAT)
        assert r.status_code == 200 and len(r.json()) == 2 and "warning" not in r.headers, params
    assert "warning" not in client.get("/dicomweb/series", params={"limit": "5", "offset": "1"}, headers=TREAT).headers


def test_stow_answer_always_carries_the_studys_retrieve_url(adapter: tuple[FhirClient, Services]) -> None:
    """Retrieve URL (0008,1190) is type 2 in the Store Instances Response Module (PS3.18 Annex I,
    Table I.1-1): the study's URL when the instances stored are of one study (the URL's, or
    not), present and empty when they are of several or none was stored."""
    client, _ = adapter
    a = received()
    r = stow(client, a)
    assert r.status_code == 200 and value(r.json(), "00081190").endswith(f"/dicomweb/studies/{a.StudyInstanceUID}")
    other = received(record_id="rec-other", StudyInstanceUID=generate_uid(prefix="2.25."))
    r = stow(client, received(record_id="rec-b"), other)
    assert r.status_code == 200 and r.json()["00081190"] == {"vr": "UR"}
    r = stow(client, b"not a DICOM object")
    assert r.status_code == 409 and r.json()["00081190"] == {"vr": "UR"}
    r = stow(client, received(record_id="rec-c"), study=a.StudyInstanceUID)
    assert value(r.json(), "00081190").endswith(f"/dicomweb/studies/{a.StudyInstanceUID}")


def test_qido_relational_searches_show_each_results_study(adapter: tuple[FhirClient, Services]) -> None:
    """All Series and All Instances (relational searches) also carry the study attributes of
    each result (PS3.18 10.6.3.3.2, 10.6.3.3.3), as its instances show them in the purpose's
    view: a client listing /instances?PatientID=… sees whose and which study each row is. The
    study's counts and modalities are not among them: a page holds only its own results."""
    client, _ = adapter
    a = received(AccessionNumber="ACC-1", StudyDescription="Wound check")
    stow(client, a)
    for results in (qido(client, "series"), qido(client, "instances"), qido(client, "instances", PatientID="MRN-0001")):
        [item] = results
        assert (value(item, "00100020"), value(item, "00100021")) == (PATIENT["value"], "HOSP")
        assert item["00100010"]["Value"] == [{"Alphabetic": PATIENT_NAME}]
        assert (value(item, "00080020"), value(item, "00080030")) == (a.StudyDate, a.StudyTime)
        assert (value(item, "00080050"), value(item, "00081030")) == ("ACC-1", "Wound check")
        assert value(item, "0020000D") == a.StudyInstanceUID and value(item, "00081190").endswith(a.SeriesInstanceUID
                                                                                                 if "00080018" not in item
                                                                                                 else a.SOPInstanceUID)
        assert "00201208" not in item and "00080061" not in item
    [hierarchical] = qido(client, f"studies/{a.StudyInstanceUID}/series")
    assert "00100020" not in hierarchical  # the study is the one searched in
    add_consent(client, ["TRAIN"])
    for item in (*qido(client, "series", TRAIN), *qido(client, "instances", TRAIN)):
        assert not {"00100010", "00100020", "00080020", "00080050", "00081030"} & valued(item)  # TRAIN shows none
        assert value(item, "0020000D") != a.StudyInstanceUID


#: The series and instance attributes of QIDO-RS results (PS3.18 Tables 10.6.3-4 and 10.6.3-5).
SERIES_TAGS = {"00200011": "IS", "0008103E": "LO", "00400244": "DA", "00400245": "TM", "00080201": "SH"}
INSTANCE_TAGS = {"00200013": "IS", "00280010": "US", "00280011": "US", "00280100": "US", "00280008": "IS",
                 "00080201": "SH"}


def viewer_objects(client: FhirClient, tmp_path: Path) -> tuple[Dataset, Dataset, dict[str, str]]:
    """What a viewer lists: a received multi-frame SC (3 frames, its series described and its
    procedure step dated), a received VL photo, and a posted photo (its DICOM UIDs)."""
    multiframe = multiframe_file(tmp_path / "mf.dcm", frames=3)
    multiframe.SeriesNumber, multiframe.InstanceNumber, multiframe.SeriesDescription = 7, 2, "Wound series"
    multiframe.PerformedProcedureStepStartDate, multiframe.PerformedProcedureStepStartTime = "20240102", "0930"
    multiframe.TimezoneOffsetFromUTC, multiframe.StudyTime = "+0100", "101500"
    photo = received(record_id="rec-vl", SeriesNumber=3, InstanceNumber=5, StudyTime="143000")
    assert stow(client, multiframe, photo).status_code == 200
    receipt = post_photo(client, WOUND, metadata()).json()
    return multiframe, photo, receipt["dicom"]


def shown(item: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    """The attributes of ``tags`` an item has, by tag: (VR, values)."""
    return {tag: (item[tag]["vr"], item[tag].get("Value")) for tag in tags if tag in item}


def assert_as_retrieved(client: FhirClient, item: dict[str, Any], headers: dict[str, str]) -> None:
    """An instance result shows its series and instance attributes exactly as the WADO-RS
    metadata of the object the purpose retrieves: the same values under the same VR, none the
    retrieved copy lacks."""
    url = value(item, "00081190").split("testserver")[-1]
    [meta] = client.get(f"{url}/metadata", headers=headers).json()
    tags = {**SERIES_TAGS, **INSTANCE_TAGS}
    assert shown(item, tags) == {t: v for t, v in shown(meta, tags).items() if v[1]}


def test_qido_returns_the_series_and_instance_attributes_a_viewer_orders_and_lays_out_by(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """PS3.18 Tables 10.6.3-4 and 10.6.3-5: a series result carries SeriesNumber and what is known
    of SeriesDescription and the performed procedure step's start; an instance result its
    InstanceNumber, Rows, Columns, BitsAllocated, NumberOfFrames (if the object has it),
    InstanceAvailability and TimezoneOffsetFromUTC, all as the purpose's copy of the object
    carries them: TRAIN's and HRESCH's have no SeriesDescription (PS3.15 E.1-1), TRAIN's no dates
    or zone. A received multi-frame SC, a received VL photo, a posted photo."""
    client, _ = adapter
    multiframe, photo, posted = viewer_objects(client, tmp_path)
    [series] = qido(client, f"studies/{multiframe.StudyInstanceUID}/series")
    assert shown(series, SERIES_TAGS) == {"00200011": ("IS", [7]), "0008103E": ("LO", ["Wound series"]),
                                          "00400244": ("DA", ["20240102"]), "00400245": ("TM", ["0930"]),
                                          "00080201": ("SH", ["+0100"])}
    [instance] = qido(client, f"studies/{multiframe.StudyInstanceUID}/series/{multiframe.SeriesInstanceUID}/instances")
    assert shown(instance, INSTANCE_TAGS) == {
        "00200013": ("IS", [2]), "00280010": ("US", [multiframe.Rows]), "00280011": ("US", [multiframe.Columns]),
        "00280100": ("US", [8]), "00280008": ("IS", [3]), "00080201": ("SH", ["+0100"])}
    assert instance["00080056"] == {"vr": "CS", "Value": ["ONLINE"]}
    # the same in the Native DICOM Model (PS3.19), which is written from these results
    xml = client.get(f"/dicomweb/studies/{multiframe.StudyInstanceUID}/instances",
                     headers={**TREAT, "Accept": 'multipart/related; type="application/dicom+xml"'})
    [(_, document)] = multipart_parts(xml)
    attributes = {a.get("tag"): (a.get("vr"), [v.text for v in a.findall("{*}Value")])
                  for a in ElementTree.fromstring(document).findall("{*}DicomAttribute")}
    assert {t: attributes[t] for t in ("00200013", "00280008", "00280010", "00200011")} == {
        "00200013": ("IS", ["2"]), "00280008": ("IS", ["3"]), "00280010": ("US", [str(multiframe.Rows)]),
        "00200011": ("IS", ["7"])}
    [vl] = qido(client, f"studies/{photo.StudyInstanceUID}/instances")
    assert (value(vl, "00200011"), value(vl, "00200013")) == (3, 5)
    assert (value(vl, "00280010"), value(vl, "00280011")) == (photo.Rows, photo.Columns) and "00280008" not in vl
    [mine] = qido(client, f"studies/{posted['studyInstanceUid']}/instances")
    with PIL.Image.open(WOUND) as image:
        assert {value(mine, "00280010"), value(mine, "00280011")} == set(image.size)
    assert (value(mine, "00200013"), value(mine, "00280100")) == (1, 8) and value(mine, "00200011") is not None
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TREAT, TRAIN, HRESCH):
        items = qido(client, "instances", headers)
        assert len(items) == 3
        for item in items:
            assert_as_retrieved(client, item, headers)
        for item in qido(client, "series", headers):
            [member] = qido(client, "instances", headers, SeriesInstanceUID=value(item, "0020000E"))
            assert shown(item, SERIES_TAGS) == shown(member, SERIES_TAGS)
    [train] = [i for i in qido(client, "series", TRAIN) if value(i, "00200011") == 7]
    assert not {"0008103E", "00400244", "00400245", "00080201"} & set(train)
    [hresch] = [i for i in qido(client, "series", HRESCH) if value(i, "00200011") == 7]
    assert "0008103E" not in hresch and value(hresch, "00400244") == "20240102"


def test_qido_matches_series_number_instance_number_and_the_procedure_step_date(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """The required match keys of PS3.18 Table 10.6.1-5 at series and instance level: SeriesNumber
    and InstanceNumber (one integer, by keyword or tag; anything else is 400), the performed
    procedure step's start date and time and the StudyTime (a value or a range), on what the
    purpose's view shows."""
    client, _ = adapter
    multiframe, photo, posted = viewer_objects(client, tmp_path)
    assert [value(s, "0020000E") for s in qido(client, "series", SeriesNumber="7")] == [multiframe.SeriesInstanceUID]
    assert [value(s, "0020000E") for s in qido(client, f"studies/{photo.StudyInstanceUID}/series", **{"00200011": "3"})] \
        == [photo.SeriesInstanceUID]
    assert qido(client, "series", SeriesNumber="8") == []
    assert [value(i, "00080018") for i in qido(client, "instances", InstanceNumber="5")] == [photo.SOPInstanceUID]
    assert [value(i, "00080018") for i in qido(client, f"studies/{multiframe.StudyInstanceUID}/instances",
                                               SeriesNumber="7", InstanceNumber="2")] == [multiframe.SOPInstanceUID]
    assert [value(i, "0020000E") for i in qido(client, "series", PerformedProcedureStepStartDate="20240101-20240131")] \
        == [multiframe.SeriesInstanceUID]
    for key, bad in (("SeriesNumber", "7*"), ("InstanceNumber", "two"), ("PerformedProcedureStepStartDate", "2024")):
        r = client.get("/dicomweb/instances", params={key: bad}, headers=TREAT)
        assert r.status_code == 400, (key, r.text)
    assert client.get("/dicomweb/studies", params={"InstanceNumber": "1"}, headers=TREAT).status_code == 400
    # times: one at the precision given, or a range, open at either end
    for key, match in (("PerformedProcedureStepStartTime", "0930"), ("PerformedProcedureStepStartTime", "0900-0945"),
                       ("PerformedProcedureStepStartTime", "093000-"), ("StudyTime", "1015"),
                       ("StudyTime", "101500.000000-101500.5"), ("StudyTime", "-1016")):
        assert [value(s, "0020000E") for s in qido(client, "series", **{key: match})] == [multiframe.SeriesInstanceUID], \
            (key, match)
    assert qido(client, "series", PerformedProcedureStepStartTime="0931-") == []
    # the posted photo's StudyTime (its EXIF capture time, in the morning) is matched as a received one's
    assert sorted(value(s, "0020000D") for s in qido(client, "studies", StudyTime="1000-1030")) == \
        sorted([multiframe.StudyInstanceUID, posted["studyInstanceUid"]])
    for key, bad in (("StudyTime", "25:00"), ("PerformedProcedureStepStartTime", "9-10"), ("StudyTime", "-")):
        r = client.get("/dicomweb/series", params={key: bad}, headers=TREAT)
        assert r.status_code == 400, (key, r.text)
    add_consent(client, ["TRAIN"])
    assert len(qido(client, "series", TRAIN, SeriesNumber="7")) == 1  # numbers stay in the de-identified copy
    assert qido(client, "series", TRAIN, PerformedProcedureStepStartDate="20240102") == []  # its dates do not
    assert qido(client, "series", TRAIN, PerformedProcedureStepStartTime="0930") == []  # nor its times
    assert qido(client, "studies", TRAIN, StudyTime="1015") == []


def test_qido_attributes_of_a_store_of_schema_12_are_read_from_its_objects_at_start(tmp_path: Path) -> None:
    """A store written before schema 13 opened by this code: the upgrade adds the columns and the
    start reads the attributes from each stored object (a received file's header, a posted photo's
    object made as a retrieve makes it), once; QIDO-RS then shows and matches them."""
    with pacs_client(tmp_path) as (client, _):
        multiframe, _, posted = viewer_objects(client, tmp_path)
        before = sorted(json.dumps(i, sort_keys=True) for i in qido(client, "instances"))
    db = sqlite3.connect(tmp_path / "data" / "adapter.db")
    try:
        with db:  # one transaction: the tables as schema 12 made them
            db.execute("DROP INDEX ix_dicom_instances_attributes_unread")
            for column in ("series_number", "series_description", "pps_start_date", "pps_start_time",
                           "timezone_offset", "instance_number", "image_rows", "image_columns", "bits_allocated",
                           "number_of_frames", "attributes_read"):
                db.execute(f"ALTER TABLE dicom_instances DROP COLUMN {column}")
            db.execute("UPDATE schema_version SET version = 12")
    finally:
        db.close()
    with pacs_client(tmp_path) as (client, services):
        assert sorted(json.dumps(i, sort_keys=True) for i in qido(client, "instances")) == before
        assert [value(i, "00080018") for i in qido(client, "instances", InstanceNumber="2")] == [multiframe.SOPInstanceUID]
        [mine] = qido(client, f"studies/{posted['studyInstanceUid']}/instances")
        assert value(mine, "00280010") is not None and value(mine, "00200013") == 1
        assert services.store.fill_dicom_attributes(lambda _: pytest.fail("read again")) == 0


def test_qido_attributes_an_object_could_not_give_at_start_are_read_at_a_later_start(tmp_path: Path) -> None:
    """Found by review: the start-up fill of schema 13 stored "no attributes" for good for an
    object it could not read then (its file missing: a data folder whose share is not mounted
    yet, a blob store being restored), so once the files were back a viewer never saw that
    object's SeriesNumber, InstanceNumber or size, and a search by them left it out. An object
    not read is left for the next start instead."""
    with pacs_client(tmp_path) as (client, _):
        multiframe, _, _ = viewer_objects(client, tmp_path)
    db = sqlite3.connect(tmp_path / "data" / "adapter.db")
    try:
        with db:  # the store as schema 12 left it: no attribute read
            db.execute("UPDATE dicom_instances SET attributes_read = NULL, instance_number = NULL, "
                       "series_number = NULL, image_rows = NULL, image_columns = NULL")
    finally:
        db.close()
    blobs = tmp_path / "data" / "blobs"
    away = tmp_path / "blobs-away"
    blobs.rename(away)  # the files are not there at this start
    with pacs_client(tmp_path) as (client, _):
        assert qido(client, "instances", InstanceNumber="2") == []
    shutil.rmtree(blobs)
    away.rename(blobs)  # and are back at the next
    with pacs_client(tmp_path) as (client, _):
        assert [value(i, "00080018") for i in qido(client, "instances", InstanceNumber="2")] == [multiframe.SOPInstanceUID]


#: The study attributes of a QIDO-RS result PS3.18 Table 10.6.3-3 lists beside PatientName,
#: PatientID, StudyDate, StudyTime, AccessionNumber and StudyDescription.
STUDY_TAGS = {"00080090": "PN", "00100030": "DA", "00100040": "CS", "00200010": "SH"}
REFERRED = {"ReferringPhysicianName": "Welby^Marcus^^Dr.", "PatientBirthDate": "19700521", "PatientSex": "F",
            "StudyID": "S-42"}


def test_qido_returns_the_referring_physician_birth_date_sex_and_study_id_as_the_view_retrieves_them(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """PS3.18 Table 10.6.3-3: a study result carries ReferringPhysicianName (PN), PatientBirthDate
    (DA), PatientSex (CS) and StudyID (SH), and so do the results of All Series and All Instances
    with their study's other attributes; a posted photo's object has them empty, so none is shown.
    In TRAIN and HRESCH exactly what the WADO-RS metadata of that view carries (PS3.15 E.1-1 Z:
    emptied), so QIDO never shows more than a retrieve returns."""
    client, _ = adapter
    photo = received(record_id="rec-ref", **REFERRED)
    assert stow(client, photo).status_code == 200
    posted = post_photo(client, WOUND, metadata()).json()["dicom"]
    [study] = qido(client, "studies", StudyInstanceUID=photo.StudyInstanceUID)
    assert shown(study, STUDY_TAGS) == {"00080090": ("PN", [{"Alphabetic": "Welby^Marcus^^Dr."}]),
                                        "00100030": ("DA", ["19700521"]), "00100040": ("CS", ["F"]),
                                        "00200010": ("SH", ["S-42"])}
    for path in ("series", "instances"):  # All Series, All Instances: with their study's attributes
        [item] = qido(client, path, StudyInstanceUID=photo.StudyInstanceUID)
        assert shown(item, STUDY_TAGS) == shown(study, STUDY_TAGS)
    [mine] = qido(client, "studies", StudyInstanceUID=posted["studyInstanceUid"])
    assert not set(STUDY_TAGS) & valued(mine)
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TREAT, TRAIN, HRESCH):
        items = qido(client, "instances", headers)
        assert len(items) == 2
        for item in items:
            url = value(item, "00081190").split("testserver")[-1]
            [meta] = client.get(f"{url}/metadata", headers=headers).json()
            assert {t: v for t, v in shown(item, STUDY_TAGS).items() if v[1]} == {t: v for t, v in shown(meta, STUDY_TAGS).items() if v[1]}, headers
        for item in qido(client, "studies", headers):
            [member, *_] = qido(client, "instances", headers, StudyInstanceUID=value(item, "0020000D"))
            assert shown(item, STUDY_TAGS) == shown(member, STUDY_TAGS)
    assert not any(set(STUDY_TAGS) & valued(i) for h in (TRAIN, HRESCH) for i in qido(client, "studies", h))


def test_qido_matches_referring_physician_name_and_study_id(adapter: tuple[FhirClient, Services]) -> None:
    """The required study match keys of PS3.18 Table 10.6.1-5: ReferringPhysicianName as
    PatientName (wildcards, insensitive to case and to empty trailing components, each component
    group), StudyID exactly; at every level. Only care's view shows them (TRAIN's and HRESCH's
    copies empty them), so in those no value matches."""
    client, _ = adapter
    photo = received(record_id="rec-ref", **REFERRED)
    other = received(record_id="rec-other", ReferringPhysicianName="Kildare^James=\u30ad\u30eb\u30c7\u30a2",
                     StudyID="S-7", SpecificCharacterSet="ISO_IR 192", StudyInstanceUID=generate_uid(),
                     SeriesInstanceUID=generate_uid())
    assert stow(client, photo, other).status_code == 200

    def studies(headers: dict[str, str] = TREAT, **keys: str) -> list[str]:
        return [value(s, "0020000D") for s in qido(client, "studies", headers, **keys)]

    assert studies(ReferringPhysicianName="welby*") == [photo.StudyInstanceUID]
    assert studies(ReferringPhysicianName="WELBY^Marcus^^DR.^") == [photo.StudyInstanceUID]
    assert studies(**{"00080090": "K?ldare*"}) == [other.StudyInstanceUID]
    assert studies(ReferringPhysicianName="\u30ad\u30eb*") == [other.StudyInstanceUID]  # the ideographic group
    assert studies(ReferringPhysicianName="Welby") == []
    assert studies(StudyID="S-42") == [photo.StudyInstanceUID]
    assert studies(**{"00200010": "S-7"}) == [other.StudyInstanceUID]
    assert studies(StudyID="S-4") == [] and studies(StudyID="s-42") == []
    assert [value(i, "00080018") for i in qido(client, "instances", StudyID="S-7")] == [other.SOPInstanceUID]
    assert [value(s, "0020000E") for s in qido(client, f"studies/{photo.StudyInstanceUID}/series",
                                               ReferringPhysicianName="Welby*")] == [photo.SeriesInstanceUID]
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TRAIN, HRESCH):
        assert len(studies(headers)) == 2
        # a lone * is universal matching (PS3.4 C.2.2.2.4): every study, the emptied value too
        assert len(studies(headers, ReferringPhysicianName="*")) == 2 and studies(headers, StudyID="S-42") == []


def test_qido_star_is_universal_matching_and_wildcards_work_on_every_string_key(
        adapter: tuple[FhirClient, Services]) -> None:
    """PS3.4 C.2.2.2.4: ``*`` matches any run of characters, the empty one too, and a value of
    only ``*`` is universal matching, which matches every entity, those with an empty (or no)
    value included; wildcards apply to the string VRs other than UI and dates (here LO, SH, PN, CS).
    Before, PatientName=* left out the posted photo (its object's PatientName is empty),
    StudyDescription, ReferringPhysicianName, AccessionNumber and StudyID =* found nothing, and
    AccessionNumber, StudyID, IssuerOfPatientID and Modality took no wildcards."""
    client, _ = adapter
    assert post_photo(client, WOUND, metadata()).status_code == 201  # every text of its study empty
    pacs = received(record_id="rec-pacs", AccessionNumber="ACC-17", StudyDescription="Wound check",
                    **REFERRED)
    assert stow(client, pacs).status_code == 200
    everything = sorted(studies_of(client))
    assert len(everything) == 2
    for keyword in ("PatientName", "PatientID", "IssuerOfPatientID", "StudyDescription", "ReferringPhysicianName",
                    "AccessionNumber", "StudyID", "ModalitiesInStudy", "StudyDate", "StudyTime", "StudyInstanceUID"):
        assert sorted(studies_of(client, **{keyword: "*"})) == everything, keyword
    for level in ("series", "instances"):
        assert len(qido(client, level, Modality="*", AccessionNumber="*", StudyID="*")) == 2
    pacs_study = [pacs.StudyInstanceUID]
    assert studies_of(client, AccessionNumber="ACC-*") == pacs_study
    assert studies_of(client, AccessionNumber="ACC-1?") == pacs_study and studies_of(client, AccessionNumber="ACC") == []
    assert studies_of(client, StudyID="S-*") == pacs_study and studies_of(client, StudyID="*4?") == pacs_study
    assert sorted(studies_of(client, IssuerOfPatientID="HO*")) == everything
    assert studies_of(client, IssuerOfPatientID="H?SP") != [] and studies_of(client, IssuerOfPatientID="X*") == []
    assert studies_of(client, StudyDescription="Wound*") == pacs_study
    assert studies_of(client, ReferringPhysicianName="welby*") == pacs_study
    modality = pacs.Modality
    assert studies_of(client, ModalitiesInStudy=modality[0] + "*") != []
    assert pacs.SOPInstanceUID in [value(i, "00080018")
                                   for i in qido(client, "instances", Modality=modality[0] + "*")]
    assert qido(client, "series", Modality="Z*") == []
    assert studies_of(client, AccessionNumber="?*") == pacs_study  # one character at least: not the empty one


def test_qido_study_attributes_of_a_store_of_schema_13_are_read_from_its_objects_at_start(tmp_path: Path) -> None:
    """A store written before schema 14 opened by this code: the upgrade adds the columns and the
    start reads ReferringPhysicianName, PatientBirthDate, PatientSex and StudyID from each stored
    object, once (the attributes of schema 13 are read again with them); QIDO-RS then shows and
    matches them as a new store does."""
    with pacs_client(tmp_path) as (client, _):
        photo = received(record_id="rec-ref", **REFERRED)
        assert stow(client, photo).status_code == 200
        post_photo(client, WOUND, metadata())
        before = sorted(json.dumps(i, sort_keys=True) for p in ("studies", "instances") for i in qido(client, p))
    db = sqlite3.connect(tmp_path / "data" / "adapter.db")
    try:
        with db:  # one transaction: the tables as schema 13 made them
            for column in ("referring_physician_name", "patient_birth_date", "patient_sex", "study_id"):
                db.execute(f"ALTER TABLE dicom_instances DROP COLUMN {column}")
            db.execute("UPDATE schema_version SET version = 13")
    finally:
        db.close()
    with pacs_client(tmp_path) as (client, services):
        assert sorted(json.dumps(i, sort_keys=True) for p in ("studies", "instances") for i in qido(client, p)) \
            == before
        assert studies_of(client, StudyID="S-42") == [photo.StudyInstanceUID]
        assert studies_of(client, ReferringPhysicianName="welby^marcus^^DR.") == [photo.StudyInstanceUID]
        assert services.store.fill_dicom_attributes(lambda _: pytest.fail("read again")) == 0


def studies_of(client: FhirClient, **keys: str) -> list[str]:
    return [value(s, "0020000D") for s in qido(client, "studies", **keys)]


#: DA and TM attributes a QIDO-RS result may carry (StudyDate, StudyTime, PatientBirthDate,
#: PerformedProcedureStepStartDate and StartTime).
DATE_AND_TIME_TAGS = {"00080020": "DA", "00080030": "TM", "00100030": "DA", "00400244": "DA", "00400245": "TM"}
#: Values of their VR's form that name no day or time (PS3.5 6.2: DA a Gregorian date, TM
#: HH 00-23, MM 00-59, SS 00-60).
UNREAL = {"PatientBirthDate": "20240231", "StudyDate": "20240231", "StudyTime": "256199",
          "PerformedProcedureStepStartDate": "20241301", "PerformedProcedureStepStartTime": "996060",
          "AcquisitionDateTime": "20240231101500+0100"}


@pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")  # pydicom's, reading the values sent
def test_a_date_or_time_that_names_no_real_day_is_kept_as_received_and_left_out_of_answers(
        adapter: tuple[FhirClient, Services]) -> None:
    """Found from the last session's note: a StudyDate or PatientBirthDate of eight digits that is
    no date (20240231), and a TM of digits that is no time (25:61), were indexed and answered in
    QIDO-RS as DA and TM values (PS3.18 F.2: a JSON value of its VR). The object is stored as
    received (a PACS does not refuse it; WADO-RS returns it as sent), as a value of the wrong form
    already was; QIDO-RS leaves such a value out and cannot match it, a query naming one is not
    understood (400), and FHIR takes the acquisition time from the next attribute that is one."""
    client, _ = adapter
    photo = received(record_id="rec-unreal", ContentDate="20240305", ContentTime="0930", **UNREAL)
    assert stow(client, photo).status_code == 200
    for path in ("studies", "series", "instances"):
        [item] = qido(client, path)
        assert not set(DATE_AND_TIME_TAGS) & valued(item), path
    url = value(qido(client, "instances")[0], "00081190").split("testserver")[-1]
    [meta] = client.get(f"{url}/metadata", headers=TREAT).json()
    assert value(meta, "00100030") == "20240231" and value(meta, "00080030") == "256199"  # as received
    for keyword, bad in (("StudyDate", "20240231"), ("StudyDate", "20240101-20240231"), ("StudyTime", "2561"),
                         ("PerformedProcedureStepStartDate", "20241301"), ("StudyTime", "2400-")):
        r = client.get("/dicomweb/instances", params={keyword: bad}, headers=TREAT)
        assert r.status_code == 400 and r.json()["issue"][0]["expression"] == [keyword], (keyword, bad)
    assert qido(client, "studies", StudyDate="20240201-20240301") == []
    assert qido(client, "instances", StudyTime="2300-2359") == []
    [media] = find(client, "Media", photo.SOPInstanceUID)
    assert media["createdDateTime"] == "2024-03-05T09:30:00+01:00"


def test_a_date_or_time_indexed_before_it_was_checked_is_left_out_of_answers(tmp_path: Path) -> None:
    """An instance indexed by a release that kept eight digits as a DA and digits as a TM (the
    test above), or a name with a control character (the test below), still holds them in the
    store's index: QIDO-RS leaves them out of its answers all the same, at every level, rather
    than answer a value that is not one of its VR."""
    with pacs_client(tmp_path) as (client, _):
        photo = received(record_id="rec-old", PatientBirthDate="19700521", PerformedProcedureStepStartDate="20240301",
                         PerformedProcedureStepStartTime="101500")
        assert stow(client, photo).status_code == 200
        assert all(set(DATE_AND_TIME_TAGS) <= set(i) for i in qido(client, "instances"))
    db = sqlite3.connect(tmp_path / "data" / "adapter.db")
    try:
        with db:  # as that release indexed such an object
            db.execute("UPDATE dicom_instances SET study_date = '20240231', study_time = '256199', "
                       "patient_birth_date = '20240231', pps_start_date = '20241301', pps_start_time = '996060', "
                       "patient_name = 'Doe' || char(5) || '^Jane', study_description = 'Wound' || char(8)")
    finally:
        db.close()
    with pacs_client(tmp_path) as (client, _):
        for path in ("studies", "series", "instances"):
            [item] = qido(client, path)
            assert not (set(DATE_AND_TIME_TAGS) | {"00100010", "00081030"}) & valued(item), path


def test_a_name_or_description_with_a_control_character_is_kept_as_received_and_left_out_of_answers(
        adapter: tuple[FhirClient, Services]) -> None:
    """Found from the last session's note: a PatientName, StudyDescription or OperatorsName
    holding a control character (no PN, LO or SH value has one, PS3.5 6.1.2.3) was answered in
    QIDO-RS as sent (so its XML answer was 406) and went into the Provenance's display texts.
    The object is stored as received; QIDO-RS and the FHIR records leave such a value out."""
    client, _ = adapter
    photo = received(record_id="rec-c0", PatientName="Doe\x05^Jane", StudyDescription="Wound\x08 care",
                     ReferringPhysicianName="Wel\x06by", OperatorsName="Roe\x01^Richard")
    assert stow(client, photo).status_code == 200
    for path in ("studies", "instances"):
        [item] = qido(client, path)
        assert not {"00100010", "00081030", "00080090"} & valued(item), path
    r = client.get("/dicomweb/studies", headers={**TREAT, "Accept": 'multipart/related; type="application/dicom+xml"'})
    assert r.status_code == 200
    [media] = find(client, "Media", photo.SOPInstanceUID)
    provenance = client.get("/fhir/Provenance", params={"target": f"Media/{media['id']}"}, headers=TREAT).json()
    assert "\\u000" not in json.dumps(provenance) and "Roe" not in json.dumps(provenance)
    url = value(qido(client, "instances")[0], "00081190").split("testserver")[-1]
    [meta] = client.get(f"{url}/metadata", headers=TREAT).json()
    assert meta["00100010"]["Value"] == [{"Alphabetic": "Doe\x05^Jane"}]  # as received


def test_metadata_xml_cannot_carry_is_audited_as_a_read_that_failed(adapter: tuple[FhirClient, Services]) -> None:
    """Found by the diff review: WADO-RS metadata of an instance holding a value XML cannot carry
    (a name with a control character, stored as received) asked for only in XML is 406, nothing
    sent, but was audited as a retrieval (outcome 0, a disclosure), where every other 406 after
    the decision is a read that failed (outcome 4, 'not sent: ...'). The JSON answer stays a
    disclosure."""
    client, services = adapter
    photo = received(record_id="rec-xml", PatientName="Doe\x05^Jane")
    assert stow(client, photo).status_code == 200
    base = f"/dicomweb/studies/{photo.StudyInstanceUID}"
    xml = {**TREAT, "Accept": 'multipart/related; type="application/dicom+xml"'}
    for url in (f"{base}/series/{photo.SeriesInstanceUID}/instances/{photo.SOPInstanceUID}/metadata",
                f"{base}/series/{photo.SeriesInstanceUID}/metadata", f"{base}/metadata"):
        done = len(services.store.list_audit(10000))
        r = client.get(url, headers=xml)
        assert r.status_code == 406, (url, r.status_code)
        events = services.store.list_audit(10000)
        fresh = events[: len(events) - done]
        assert [(e["action"], e["outcome"]) for e in fresh] == [("R", "4")], url
        assert fresh[0]["outcomeDesc"].startswith("not sent"), (url, fresh[0]["outcomeDesc"])
        assert client.get(url, headers=TREAT).status_code == 200
        assert services.store.list_audit(1)[0]["outcome"] == "0"


def test_photos_of_one_encounter_are_one_study_with_one_study_date_and_time(
        adapter: tuple[FhirClient, Services], checked: Checked) -> None:
    """Photos of one encounter taken on different days (and on either side of a change of the
    clock) share one Study Instance UID, so they carry one StudyDate, StudyTime and
    TimezoneOffsetFromUTC (General Study module, PS3.3 C.7.2.1): those of the first photo stored
    for the study, which a later one never moves; each keeps its own day in ContentDate and
    AcquisitionDateTime. QIDO-RS answers one StudyDate for the study and matches a date filter
    on it. Before, each object carried the day its own photo was taken as its StudyDate, and a
    study matched disjoint date ranges with a different StudyDate each time."""
    client, services = adapter
    samples = ROOT / "samples"
    visit = {"reference": "Encounter/ENC-42"}
    first = post_photo(client, WOUND, metadata(encounter=visit, takenAt="2024-03-30T10:15:00+01:00")).json()
    study = first["dicom"]["studyInstanceUid"]
    before = wado(client, study, first["dicom"]["seriesInstanceUid"], first["dicom"]["sopInstanceUid"])
    second = post_photo(client, samples / "lesion.png", metadata(encounter=visit, takenAt="2024-04-02T09:00:00+02:00"),
                        content_type="image/png").json()
    third = post_photo(client, samples / "tiny.jpg", metadata(encounter=visit, takenAt="2024-03-01T08:00:00+01:00")).json()
    alone = post_photo(client, samples / "document.jpg", metadata(takenAt="2024-04-03T09:00:00+02:00")).json()
    assert second["dicom"]["studyInstanceUid"] == third["dicom"]["studyInstanceUid"] == study
    assert alone["dicom"]["studyInstanceUid"] != study  # a photo of no encounter is a study of its own
    objects = {read(part).SOPInstanceUID: checked("encounter photo", part) for part in parts_of(wado(client, study))}
    assert len(objects) == 3
    assert {(o.StudyDate, o.StudyTime, o.TimezoneOffsetFromUTC) for o in objects.values()} == \
        {("20240330", "101500", "+0100")}
    own = {receipt["dicom"]["sopInstanceUid"]: (objects[receipt["dicom"]["sopInstanceUid"]].ContentDate,
                                               objects[receipt["dicom"]["sopInstanceUid"]].AcquisitionDateTime)
           for receipt in (first, second, third)}
    assert own == {first["dicom"]["sopInstanceUid"]: ("20240330", "20240330101500+0100"),
                   second["dicom"]["sopInstanceUid"]: ("20240402", "20240402080000+0100"),
                   third["dicom"]["sopInstanceUid"]: ("20240301", "20240301080000+0100")}
    # the first photo's object is the one made (and forwarded) before the others joined
    assert parts_of(wado(client, study, first["dicom"]["seriesInstanceUid"], first["dicom"]["sopInstanceUid"])) \
        == parts_of(before)
    [listed] = [s for s in qido(client, "studies") if value(s, "0020000D") == study]
    assert (value(listed, "00080020"), value(listed, "00080030"), value(listed, "00201208")) == ("20240330", "101500", 3)
    for date in ("20240330", "20240329-20240331", "-20240330"):
        [found] = qido(client, "studies", StudyDate=date, ModalitiesInStudy="XC")
        assert (value(found, "0020000D"), value(found, "00080020"), value(found, "00201208")) == (study, "20240330", 3)
    for date in ("20240402", "20240301", "20240331-", "-20240329"):
        assert [value(s, "0020000D") for s in qido(client, "studies", StudyDate=date)
                if value(s, "0020000D") == study] == [], date
    assert {value(i, "00080020") for i in qido(client, "instances", StudyInstanceUID=study)} == {"20240330"}
    assert {(i.study_date, i.study_time) for i in services.store.search_dicom_instances(study=study)} == \
        {("20240330", "101500")}


def test_qido_includefield_adds_what_is_kept_and_study_results_carry_their_type_2_attributes(
        adapter: tuple[FhirClient, Services]) -> None:
    """``includefield`` (PS3.18 8.3.4.3) adds the attributes it names, by keyword or tag, and
    every one the adapter keeps at the level for ``all``; a name that is no attribute is 400 (the
    parameter takes attributes, PS3.18 8.3.4.1), as is ``all`` beside another; an attribute the
    adapter does not keep is a return key with no value to return (PS3.4 C.2.2.2.3). A study
    result carries the Type 2 attributes of PS3.18 Table 10.6.3-3 empty (F.2.5: no Value) when
    the view shows none, never a value the view withholds. Before, includefield was ignored and
    the empty attributes left out."""
    client, _ = adapter
    visit = {"reference": "Encounter/ENC-42"}
    photo = post_photo(client, WOUND, metadata(encounter=visit, takenAt="2024-03-30T10:15:00+01:00")).json()
    study = photo["dicom"]["studyInstanceUid"]
    [plain] = qido(client, f"studies/{study}/instances")
    assert "00080020" not in plain and "00080030" not in plain
    for asked in ({"includefield": "00080020"}, {"includefield": "StudyDate,StudyTime"}):
        [timed] = qido(client, f"studies/{study}/instances", **asked)
        assert value(timed, "00080020") == "20240330" and set(timed) - set(plain) <= {"00080020", "00080030"}
    [every] = qido(client, f"studies/{study}/instances", includefield="all")
    assert (value(every, "00080020"), value(every, "00080030"), value(every, "00100020")) == \
        ("20240330", "101500", PATIENT["value"])
    assert set(plain) < set(every)
    assert qido(client, f"studies/{study}/instances", includefield="ContentDate")[0] == plain  # not kept
    for wrong in ({"includefield": "NotAKeyword"}, {"includefield": "all,StudyDate"}, {"includefield": "0008002"}):
        r = client.get(f"/dicomweb/studies/{study}/instances", params=wrong, headers=TREAT)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", wrong
    type_2 = {"00100010": "PN", "00100030": "DA", "00100040": "CS", "00080050": "SH", "00080090": "PN",
              "00200010": "SH"}
    [listed] = [s for s in qido(client, "studies") if value(s, "0020000D") == study]
    assert {tag: listed.get(tag) for tag in type_2} == {tag: {"vr": vr} for tag, vr in type_2.items()}
    add_consent(client, ["TRAIN", "HRESCH"])
    for headers in (TRAIN, HRESCH):
        [restricted] = qido(client, "studies", headers)
        assert set(type_2) <= set(restricted)
        shown = {tag: restricted[tag] for tag in type_2 if "Value" in restricted[tag]}
        assert shown == ({} if headers is TRAIN else
                         {"00100010": {"vr": "PN", "Value": [{"Alphabetic": f"{value(restricted, '00100020')}^"}]}})
        [everything] = qido(client, "instances", headers, includefield="all")
        assert PATIENT["value"] not in json.dumps(everything) and "Value" not in everything["00100030"]
