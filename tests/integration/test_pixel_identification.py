"""What the restricted views say of pixels nobody cleaned (clinical-safety review dicomsafety, F3).

A received object is sent with dcmtk's storescu to the real SCP; the patient's Consent permits
TRAIN and HRESCH. The FHIR view (Media, its Binary as JSON) and the DICOM copy of the same object
(its Binary as application/dicom) must agree, and neither may claim the object anonymised or
pseudonymised when its picture may show text naming the patient or the person themself: the
adapter never changes pixels (adapter.mapping.views, adapter.mapping.dicom_deid)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from adapter.dicom import AeOptions, StoreSCP
from adapter.mapping import codes
from adapter.mapping.dicom_deid import NOT_CLEANED_FEATURES, NOT_CLEANED_PIXELS
from adapter.mapping.views import PIXELS_NOT_CLEANED_NOTE
from adapter.model.photo import PhotoKind
from adapter.services.registry import Services
from tests.conftest import require_or_skip
from tests.support.app import FhirClient, adapter_client, consent_resource
from tests.support.dciodvfy import photo_object, stored_sample
from tests.support.dcmtk import dcmtk_missing, storescu

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("pynetdicom_config")]

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with adapter_client(tmp_path) as pair:
        yield pair


def _send(services: Services, tmp_path: Path, ds: Dataset) -> None:
    """C-STORE ``ds`` with dcmtk's storescu to the adapter's SCP, as a PACS would."""
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("STORESCU",)), services.dicom_ingest)
    scp.start()
    try:
        storescu(scp.port, "ADAPTER", [path])
    finally:
        scp.stop()


def _received(kind: PhotoKind, **attrs: Any) -> Dataset:
    ds = photo_object(kind, stored_sample("tiny.jpg" if kind is PhotoKind.CLINICAL else "document.jpg"),
                      record_id=f"rec-{kind.value}")
    ds.PatientName = "Doe^Jane"
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _integrity(resource: dict[str, Any]) -> set[str]:
    return {c["code"] for c in resource["meta"]["security"] if c.get("system") == codes.V3_OBSERVATION_VALUE}


def _views(client: FhirClient, purpose: str, resource_type: str = "Media") -> list[tuple[dict, dict, Dataset]]:
    """Each record the purpose sees: (its resource, its Binary as JSON, its DICOM copy)."""
    headers = {"X-Purpose-Of-Use": purpose}
    bundle = client.get(f"/fhir/{resource_type}", headers=headers).json()
    out = []
    for entry in bundle.get("entry", []):
        record = entry["resource"]
        url = record["content"]["url"] if resource_type == "Media" else record["content"][0]["attachment"]["url"]
        url = "/fhir/" + url.split("/fhir/")[-1]
        binary = client.get(url, headers={**headers, "Accept": "application/fhir+json"})
        assert binary.status_code == 200, binary.text
        dicom = client.get(url, headers={**headers, "Accept": "application/dicom"})
        assert dicom.status_code == 200, dicom.text
        out.append((record, binary.json(), pydicom.dcmread(io.BytesIO(dicom.content))))
    return out


def _methods(ds: Dataset) -> list[str]:
    value = ds.DeidentificationMethod
    return list(value) if ds["DeidentificationMethod"].VM > 1 else [value]


@pytest.mark.parametrize(("purpose", "claim"), [("TRAIN", "ANONYED"), ("HRESCH", "PSEUDED")])
def test_burned_in_text_is_not_labelled_anonymised_on_either_side(adapter: tuple[FhirClient, Services],
                                                                   tmp_path: Path, purpose: str, claim: str) -> None:
    """Found by the clinical-safety review (F3): a VL Photographic with BurnedInAnnotation YES read
    under TRAIN was labelled ANONYED ("anonymized") in FHIR while its DICOM copy said "Pixel data
    not cleaned" (test seen failing: ANONYED on the Media and Binary, PatientIdentityRemoved YES).
    Now neither side claims it: REDACTED (what was done: identifiers and text removed) and a note
    on the Media; PatientIdentityRemoved NO (PS3.3 C.7.1.1: "removed from the Attributes and the
    Pixel Data"), the method saying the pixels were not cleaned, no Clean Pixel Data code."""
    client, services = adapter
    _send(services, tmp_path, _received(PhotoKind.CLINICAL, BurnedInAnnotation="YES"))
    assert client.post("/fhir/Consent", json=consent_resource(["TRAIN", "HRESCH"]), headers=FHIR_JSON).status_code == 201
    [(media, binary, ds)] = _views(client, purpose)
    for resource in (media, binary):
        assert claim not in _integrity(resource) and "ANONYED" not in _integrity(resource)
        assert "REDACTED" in _integrity(resource), resource["meta"]["security"]
    assert PIXELS_NOT_CLEANED_NOTE in [n["text"] for n in media.get("note", [])]
    assert ds.PatientIdentityRemoved == "NO" and ds.BurnedInAnnotation == "YES"
    assert NOT_CLEANED_PIXELS in _methods(ds)
    assert "113101" not in {c.CodeValue for c in ds.get("DeidentificationMethodCodeSequence", [])}
    # the Consent itself holds no picture: what its view did to it is what it says
    [consent] = [e["resource"] for e in client.get("/fhir/Consent", headers={"X-Purpose-Of-Use": purpose})
                 .json()["entry"]]
    assert _integrity(consent) == {claim}


def test_a_document_received_is_not_labelled_anonymised(adapter: tuple[FhirClient, Services],
                                                        tmp_path: Path) -> None:
    """A photographed document (SC, ConversionType SD) carries text in its picture by nature: the
    same as above for its DocumentReference and Binary (test seen failing: ANONYED)."""
    client, services = adapter
    _send(services, tmp_path, _received(PhotoKind.DOCUMENT))
    assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON).status_code == 201
    [(document, binary, ds)] = _views(client, "TRAIN", "DocumentReference")
    for resource in (document, binary):
        assert _integrity(resource) == {"REDACTED"}, resource["meta"]["security"]
    assert PIXELS_NOT_CLEANED_NOTE in document.get("description", "").split("\n\n")
    assert ds.PatientIdentityRemoved == "NO" and NOT_CLEANED_PIXELS in _methods(ds)


def test_a_photo_without_burned_in_text_says_only_what_is_true(adapter: tuple[FhirClient, Services],
                                                               tmp_path: Path) -> None:
    """A clinical photo without burned-in text (BurnedInAnnotation NO) is still a photo of the
    person (kinds.yaml ``recognizable``; RecognizableVisualFeatures YES, no Clean Recognizable
    Visual Features): not anonymised either, and its DICOM copy says why, without claiming text
    that is not there (test seen failing: ANONYED, PatientIdentityRemoved YES)."""
    client, services = adapter
    _send(services, tmp_path, _received(PhotoKind.CLINICAL))
    assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON).status_code == 201
    [(media, binary, ds)] = _views(client, "TRAIN")
    assert _integrity(media) == _integrity(binary) == {"REDACTED"}
    assert ds.BurnedInAnnotation == "NO" and ds.RecognizableVisualFeatures == "YES"
    assert ds.PatientIdentityRemoved == "NO"
    assert NOT_CLEANED_FEATURES in _methods(ds) and NOT_CLEANED_PIXELS not in _methods(ds)
