"""End to end, as the clinical-safety review (dicomsafety F1, F4) did it: ``python -m adapter serve``
as its own process with the example policy (``careAfterWithdrawal: false``); Secondary Capture
objects sent by dcmtk's storescu (C-STORE) and over STOW-RS (HTTP); their kind read back as the
FHIR record's photo-kind; then the patient's TREAT Consent recorded and withdrawn, and each record
read for TREAT.

The kind of a received SC object fails closed (mappings/dicom.yaml ``receive.secondaryCapture``):
a photo of the body (Modality XC, ES…) is ``clinical`` whatever its ConversionType, an object
naming a body part is never a ``document``, ``secondary`` only where the object says it is a
capture of an image (ConversionType SI or DF; DV/DI/WSD from an imaging modality such as DX), and
an SC object without ConversionType or Modality (Type 1) is refused with 0xA900 naming it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from adapter.mapping.dimse_status import DATASET_DOES_NOT_MATCH_SOP_CLASS
from tests.conftest import record_emitted, require_or_skip
from tests.support.app import PATIENT, consent_resource
from tests.support.dcmtk import dcmtk_missing, echoscu, storescu
from tests.support.dicom_files import jpeg, multiframe_file, sc_file
from tests.support.server import RunningAdapter, running_adapter

pytestmark = pytest.mark.e2e

TREAT = {"X-Purpose-Of-Use": "TREAT"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}
ELBOW = ("127949000", "Elbow")
FOREARM = ("14975008", "Forearm")


def _region(code: tuple[str, str]) -> Sequence:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[0], "SCT", code[1]
    return Sequence([item])


def _sc(path: Path, **attrs: Any) -> Dataset:
    return sc_file(path, frame=jpeg(64, 48, shade=len(path.name) * 7 % 255), **attrs)


def _endoscopy_clip(path: Path) -> Dataset:
    """A multi-frame true colour SC of three frames from an endoscope's video (ES, DV)."""
    ds = multiframe_file(path, frames=3)
    ds.Modality, ds.ConversionType = "ES", "DV"
    ds.save_as(path, enforce_file_format=True)
    return ds


#: name -> (how the object is made, the kind it must be filed as, the body site it must keep)
KINDS: dict[str, tuple[Callable[[Path], Dataset], str, str | None]] = {
    # a camera photo of the elbow exported from a dermatology workstation
    "xc_wsd_elbow": (lambda p: _sc(p, Modality="XC", ConversionType="WSD", AnatomicRegionSequence=_region(ELBOW)),
                     "clinical", ELBOW[0]),
    "xc_dv": (lambda p: _sc(p, Modality="XC", ConversionType="DV"), "clinical", None),
    "es_dv_clip": (_endoscopy_clip, "clinical", None),
    # says scanned document, but its equipment is a camera and it names the elbow: not a document
    "xc_sd_elbow": (lambda p: _sc(p, Modality="XC", ConversionType="SD", AnatomicRegionSequence=_region(ELBOW)),
                    "clinical", ELBOW[0]),
    # a workstation capture of unknown equipment naming the elbow: nothing says it is an image of an image
    "ot_wsd_elbow": (lambda p: _sc(p, Modality="OT", ConversionType="WSD", AnatomicRegionSequence=_region(ELBOW)),
                     "clinical", ELBOW[0]),
    # ConversionType with two values (VM 1): unclear
    "ot_two_conversion_types": (lambda p: _sc(p, Modality="OT", ConversionType=["SI", "WSD"]), "clinical", None),
    # a screen capture of a forearm x-ray from a DX workstation: a secondary image, its site kept
    "dx_wsd_forearm": (lambda p: _sc(p, Modality="DX", ConversionType="WSD", AnatomicRegionSequence=_region(FOREARM)),
                       "secondary", FOREARM[0]),
    # a scanned image (what the adapter itself writes for a secondary photo)
    "ot_si": (lambda p: _sc(p, Modality="OT", ConversionType="SI"), "secondary", None),
    # a scanned form: still a document
    "doc_sd": (lambda p: _sc(p, Modality="DOC", ConversionType="SD"), "document", None),
}

#: name -> (how the object is made, the attributes the refusal names)
REFUSED: dict[str, tuple[Callable[[Path], Dataset], list[str]]] = {
    "xc_without_conversion_type": (lambda p: _sc(p, Modality="XC", ConversionType=None), ["(0008,0064)"]),
    "without_modality_or_conversion_type": (lambda p: _sc(p, Modality=None, ConversionType=None),
                                            ["(0008,0060)", "(0008,0064)"]),
    "empty_conversion_type": (lambda p: _sc(p, Modality="ES", ConversionType=""), ["(0008,0064)"]),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAdapter]:
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    workdir = tmp_path_factory.mktemp("adapter")
    with running_adapter(
            workdir, ready=lambda s: echoscu(s.dicom_port, "ADAPTER", calling_aet="ECHOSCU",
                                             check=False).returncode == 0,
            ADAPTER_DICOM_ALLOWED_AE_TITLES="PACS, ECHOSCU", ADAPTER_AE_TITLE="ADAPTER",
            # STOW-RS from the PACS, trusted as its C-STOREs are (its AE title listed)
            ADAPTER_STOW_TRUSTED_SENDERS="127.0.0.1") as running:
        yield running
    assert PATIENT["value"] not in running.log.read_text()  # logs carry no patient data


def _stow(http: httpx.Client, *paths: Path) -> httpx.Response:
    boundary = "b0undary-kind"
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    return http.post("/dicomweb/studies", content=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})


def _record(http: httpx.Client, uid: str) -> dict[str, Any]:
    found = []
    for resource_type in ("Media", "DocumentReference"):
        r = http.get(f"/fhir/{resource_type}", params={"identifier": f"urn:dicom:uid|urn:oid:{uid}"}, headers=TREAT)
        assert r.status_code == 200, r.text
        record_emitted(r.json())
        found += [e["resource"] for e in r.json().get("entry", [])]
    assert len(found) == 1, found
    return found[0]


def _kind(record: dict[str, Any]) -> str | None:
    kinds = [e["valueCode"] for e in record.get("extension", []) if e["url"].endswith("/photo-kind")]
    return kinds[0] if kinds else None


def _site(record: dict[str, Any]) -> str | None:
    codings = record.get("bodySite", {}).get("coding", [])
    return codings[0]["code"] if codings else None


def _storescu(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    return storescu(port, "ADAPTER", [path], calling_aet="PACS", extra=["-d"], check=False)


def _make(folder: Path, makers: dict[str, Any]) -> dict[str, tuple[Path, Dataset]]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, (make, *_) in makers.items():
        path = folder / f"{name}.dcm"
        made[name] = (path, make(path))
    return made


def test_received_objects_are_sorted_fail_closed_and_a_withdrawal_applies_to_the_body_photos(
        server: RunningAdapter, tmp_path: Path) -> None:
    """dicomsafety F1: every SC was `secondary` (no consent for care, readable after a withdrawal,
    warned "review the original on its platform") unless SD or DOC made it a `document`, a camera's
    SD object with the elbow among them (its site dropped)."""
    by_dimse = _make(tmp_path / "dimse", KINDS)
    for name, (path, _) in by_dimse.items():
        done = _storescu(server.dicom_port, path)
        assert done.returncode == 0, (name, done.stderr)
    by_stow = _make(tmp_path / "stow", KINDS)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for name, (path, _) in by_stow.items():
            answer = _stow(http, path)
            assert answer.status_code == 200, (name, answer.text)

        records: dict[str, dict[str, Any]] = {}
        for how, sent in (("C-STORE", by_dimse), ("STOW-RS", by_stow)):
            for name, (_, ds) in sent.items():
                record = _record(http, ds.SOPInstanceUID)
                _, kind, site = KINDS[name]
                assert (_kind(record), _site(record)) == (kind, site), (how, name, record)
                assert record["resourceType"] == ("DocumentReference" if kind == "document" else "Media")
                notes = " ".join(n["text"] for n in record.get("note", []))
                assert ("Secondary image" in notes) is (kind == "secondary"), (how, name, notes)
                assert (r := http.get(f"/fhir/{record['resourceType']}/{record['id']}", headers=TREAT)).status_code \
                    == 200, (how, name, r.text)  # sent by a PACS of the organisation: care reads it
                records[f"{how} {name}"] = record

        # the patient records a Consent for care, then withdraws it
        created = http.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        consent = created.json()
        withdrawn = http.put(f"/fhir/Consent/{consent['id']}", json={**consent, "status": "inactive"},
                             headers=FHIR_JSON)
        assert withdrawn.status_code == 200, withdrawn.text

        read = {key: http.get(f"/fhir/{r['resourceType']}/{r['id']}", headers=TREAT).status_code
                for key, r in records.items()}
        # careAfterWithdrawal false: a photo of the body is no longer read for care; a photo of an
        # x-ray or of a form needs no consent for care
        assert read == {key: 200 if _kind(r) in ("secondary", "document") else 403 for key, r in records.items()}
        assert sorted(k for k, status in read.items() if status == 403) == sorted(
            f"{how} {name}" for how in ("C-STORE", "STOW-RS") for name, (_, kind, _) in KINDS.items()
            if kind == "clinical")


def test_a_secondary_capture_without_its_type_1_kind_attributes_is_refused(server: RunningAdapter,
                                                                         tmp_path: Path) -> None:
    """dicomsafety F4: an SC object without Modality and ConversionType (Type 1, PS3.3 C.7.3.1 and
    C.8.6.1), the attributes that decide its kind, was stored with Success. It is refused as README
    says of a required attribute missing: 0xA900 with Offending Element, STOW-RS FailureReason
    0xA900; nothing is stored."""
    by_dimse = _make(tmp_path / "dimse", REFUSED)
    for name, (path, _) in by_dimse.items():
        done = _storescu(server.dicom_port, path)
        said = done.stdout + done.stderr
        assert re.search(r"DIMSE Status\s*:\s*0xa900", said), (name, said)
        offending = re.search(r"\(0000,0901\) AT (\S+)", said)
        assert offending is not None, (name, said)
        assert offending.group(1).split("\\") == REFUSED[name][1], (name, offending.group(0))
        assert "Secondary Capture without" in said, (name, said)  # the Error Comment
    by_stow = _make(tmp_path / "stow", REFUSED)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        for name, (path, ds) in by_stow.items():
            answer = _stow(http, path)
            assert answer.status_code == 409, (name, answer.text)
            [failed] = answer.json()["00081198"]["Value"]
            assert failed["00081197"]["Value"] == [DATASET_DOES_NOT_MATCH_SOP_CLASS], (name, failed)
        for sent in (by_dimse, by_stow):
            for name, (_, ds) in sent.items():
                for resource_type in ("Media", "DocumentReference"):
                    r = http.get(f"/fhir/{resource_type}",
                                 params={"identifier": f"urn:dicom:uid|urn:oid:{ds.SOPInstanceUID}"}, headers=TREAT)
                    assert r.json().get("total", 0) == 0, (name, r.text)
