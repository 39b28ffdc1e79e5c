"""DICOMweb answers as the Native DICOM Model (PS3.19 A.1), over the real app on a real SQLite
store: QIDO-RS results, WADO-RS metadata and the STOW-RS response, asked for as
``multipart/related; type="application/dicom+xml"`` (PS3.18 Table 10.4.4-1: required of the
origin server beside the default application/dicom+json), carry exactly what the JSON answer to
the same request carries, in care's full view and in TRAIN's de-identified one, and are audited
as it is."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.mapping.dicom_photo import encode_dataset
from adapter.services.registry import Services
from tests.integration.test_dicomweb import (
    PATIENT_NAME,
    TRAIN,
    TREAT,
    add_consent,
    ct_object,
    pdf_object,
    received,
    related,
    value,
)
from tests.support.app import PATIENT, FhirClient, pacs_client
from tests.support.audit import agent_roles, patients, sop_instance_uids, study_uids
from tests.support.native_dicom import check_structure, comparable, to_json_model, xml_parts
from tests.support.pdf import minimal_pdf

pytestmark = pytest.mark.integration

XML = 'multipart/related; type="application/dicom+xml"'
DICOM_JSON = "application/dicom+json"


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with pacs_client(tmp_path) as pair:
        yield pair


def as_xml(client: FhirClient, url: str, headers: dict[str, str], accept: str = XML) -> list[dict[str, Any]]:
    """The parts of the XML answer to ``url``, each checked against the PS3.19 structure and read
    back as the DICOM JSON object it stands for."""
    r = client.get(url, headers={**headers, "Accept": accept})
    assert r.status_code == 200, r.text
    return [to_json_model(check_structure(part)) for part in xml_parts(r)]


def as_json(client: FhirClient, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    r = client.get(url, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(DICOM_JSON)
    return list(r.json())


def urls(study: str, series: str, instance: str) -> list[str]:
    """Every QIDO-RS level and WADO-RS metadata resource of one instance's study."""
    base = f"/dicomweb/studies/{study}"
    return ["/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances", f"{base}/series", f"{base}/instances",
            f"{base}/series/{series}/instances", f"{base}/metadata", f"{base}/series/{series}/metadata",
            f"{base}/series/{series}/instances/{instance}/metadata"]


def vrs_and_kinds(model: Any, seen: set[str] | None = None) -> set[str]:
    """The VRs and value kinds (BulkDataURI, InlineBinary) a JSON answer holds, sequences included."""
    seen = set() if seen is None else seen
    for item in model if isinstance(model, list) else [model]:
        for attribute in item.values():
            seen.add(attribute["vr"])
            seen.update(k for k in ("BulkDataURI", "InlineBinary") if k in attribute)
            if attribute["vr"] == "SQ":
                vrs_and_kinds(attribute.get("Value", []), seen)
    return seen


def test_qido_and_metadata_in_xml_carry_exactly_what_the_json_carries(adapter: tuple[FhirClient, Services]) -> None:
    """For every QIDO-RS level and metadata resource, in care's full view and in TRAIN's
    de-identified one: one part per result (QIDO) or per instance (metadata), each read back
    equal to the JSON object at its place: same tags, VRs, values, name components, items,
    bulk data URIs. So the XML carries no more than the view the JSON shows."""
    client, _ = adapter
    photo = received(ICCProfile=bytes(range(256)))
    pdf = pdf_object(minimal_pdf(b"%" + b"x" * 3000))
    pdf.StudyInstanceUID, pdf.SeriesInstanceUID = photo.StudyInstanceUID, photo.SeriesInstanceUID
    body, ctype = related(*(("application/dicom", _encoded(o)) for o in (photo, pdf)))
    assert client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype}).status_code == 200
    kinds: set[str] = set()
    for url in urls(photo.StudyInstanceUID, photo.SeriesInstanceUID, photo.SOPInstanceUID):
        expected = as_json(client, url, TREAT)
        assert expected, url
        assert as_xml(client, url, TREAT) == comparable(expected), url
        kinds |= vrs_and_kinds(expected)
    # what the comparison covered: names, sequences, numbers, bulk data by URI and inline
    assert {"PN", "SQ", "IS", "UI", "UR", "BulkDataURI", "InlineBinary"} <= kinds, kinds

    add_consent(client, ["TRAIN"])
    [item] = as_json(client, "/dicomweb/instances?SOPClassUID=" + photo.SOPClassUID, TRAIN)
    train = (value(item, "0020000D"), value(item, "0020000E"), value(item, "00080018"))
    assert train[2] != photo.SOPInstanceUID
    for url in urls(*train):
        expected = as_json(client, url, TRAIN)
        got = as_xml(client, url, TRAIN)
        assert got == comparable(expected), url
        raw = client.get(url, headers={**TRAIN, "Accept": XML}).content
        for secret in (PATIENT_NAME, "Doe", PATIENT["value"], photo.SOPInstanceUID, photo.StudyInstanceUID):
            assert secret.encode() not in raw, (url, secret)


def _encoded(ds: Any) -> bytes:
    return encode_dataset(ds)


def test_the_client_preference_chooses_and_json_stays_the_default(adapter: tuple[FhirClient, Services]) -> None:
    """Accept decides by quality (RFC 9110 12.5.1), JSON when the client has no preference;
    what is not served stays 406: a bare application/dicom+xml for resources of several results
    (PS3.18 10.4.4, note 3), a multipart of another type, an XML range of quality 0."""
    client, _ = adapter
    photo = received()
    body, ctype = related(("application/dicom", _encoded(photo)))
    assert client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype}).status_code == 200
    metadata = f"/dicomweb/studies/{photo.StudyInstanceUID}/metadata"
    for url in ("/dicomweb/studies", metadata):
        for accept in (f"{DICOM_JSON}; q=0.5, {XML}", f"{XML}; q=0.9, */*; q=0.8", XML.upper()):
            r = client.get(url, headers={**TREAT, "Accept": accept})
            assert r.status_code == 200 and r.headers["content-type"].startswith("multipart/related"), (url, accept)
        for accept in (f"{XML}; q=0.4, {DICOM_JSON}; q=0.9", "*/*", f"*/*, {XML}", None):
            r = client.get(url, headers={**TREAT, **({"Accept": accept} if accept else {})})
            assert r.status_code == 200 and r.headers["content-type"].startswith(DICOM_JSON), (url, accept)
        for accept in ("application/dicom+xml", f"{XML}; q=0", 'multipart/related; type="application/dicom"',
                       "multipart/related", "application/xml"):
            r = client.get(url, headers={**TREAT, "Accept": accept})
            assert r.status_code == 406 and r.json()["resourceType"] == "OperationOutcome", (url, accept)
    # no match: 200, no part (the closing delimiter alone: test_dicomweb_conformance)
    r = client.get("/dicomweb/studies", params={"PatientID": "nobody"}, headers={**TREAT, "Accept": XML})
    assert r.status_code == 200 and r.content.endswith(b"--\r\n") and xml_parts(r) == []
    # the Warning headers of QIDO-RS and break-glass's header come with the XML too
    r = client.get("/dicomweb/studies", params={"fuzzymatching": "true"},
                   headers={"X-Purpose-Of-Use": "BTG", "Accept": XML})
    assert r.status_code == 200 and "fuzzymatching" in r.headers["warning"] and "X-Break-Glass" in r.headers


def _projection(event: dict[str, Any]) -> tuple[Any, ...]:
    """What an AuditEvent says, without its id and time."""
    queries = [base64.b64decode(e["query"]) for e in event.get("entity", []) if "query" in e]
    return (event["type"]["code"], event.get("subtype"), event["action"], event["outcome"], agent_roles(event),
            study_uids(event), sop_instance_uids(event), patients(event), queries)


def test_an_xml_answer_is_audited_as_the_json_answer_is(adapter: tuple[FhirClient, Services]) -> None:
    client, services = adapter
    photo = received()
    body, ctype = related(("application/dicom", _encoded(photo)))
    assert client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype}).status_code == 200
    for url in urls(photo.StudyInstanceUID, photo.SeriesInstanceUID, photo.SOPInstanceUID):
        done = len(services.store.list_audit(10000))
        as_json(client, url, TREAT)
        events = services.store.list_audit(10000)
        for_json, done = events[: len(events) - done], len(events)
        as_xml(client, url, TREAT)
        events = services.store.list_audit(10000)
        for_xml = events[: len(events) - done]
        assert for_json and [_projection(e) for e in for_xml] == [_projection(e) for e in for_json], url
    # a refusal too: TRAIN without consent
    for accept in (DICOM_JSON, XML):
        done = len(services.store.list_audit(10000))
        r = client.get(f"/dicomweb/studies/{photo.StudyInstanceUID}/series/{photo.SeriesInstanceUID}/instances/"
                       f"{photo.SOPInstanceUID}/metadata", headers={**TRAIN, "Accept": accept})
        assert r.status_code in (403, 404)  # care's UIDs name nothing in TRAIN's view: 404, audited too
        assert len(services.store.list_audit(10000)) - done == 1


def stow_with(client: FhirClient, accept: str, *objects: Any) -> httpx.Response:
    body, ctype = related(*(("application/dicom", o if isinstance(o, bytes) else _encoded(o)) for o in objects))
    return client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype, "Accept": accept})


def test_stow_answers_the_store_instances_response_module_in_xml(adapter: tuple[FhirClient, Services]) -> None:
    """STOW-RS: ``Accept: application/dicom+xml`` gets the Store Instances Response Module as one
    Native DICOM Model document (PS3.18 10.5.3, the XML response message body dcm4che's and
    Orthanc's clients read), ``multipart/related; type="application/dicom+xml"`` the same as its
    one part; equal to the JSON answer to the same request (stored twice: the same answer)."""
    client, _ = adapter
    photo, ct = received(), ct_object()
    first = stow_with(client, DICOM_JSON, photo, ct)
    assert first.status_code == 202 and first.headers["content-type"].startswith(DICOM_JSON)
    expected = comparable(first.json())
    assert {"00081198", "00081199", "00081190"} <= set(expected)
    single = stow_with(client, "application/dicom+xml", photo, ct)
    assert single.status_code == 202 and single.headers["content-type"].startswith("application/dicom+xml")
    assert to_json_model(check_structure(single.content)) == expected
    multipart = stow_with(client, f"{DICOM_JSON}; q=0.1, {XML}", photo, ct)
    assert multipart.status_code == 202
    [part] = xml_parts(multipart)
    assert to_json_model(check_structure(part)) == expected
    # all failed (409): the same in either
    failed_json = stow_with(client, DICOM_JSON, ct)
    failed_xml = stow_with(client, "application/dicom+xml", ct)
    assert (failed_json.status_code, failed_xml.status_code) == (409, 409)
    assert to_json_model(check_structure(failed_xml.content)) == comparable(failed_json.json())
    # JSON stays the default
    assert stow_with(client, "*/*", photo).headers["content-type"].startswith(DICOM_JSON)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI:UserWarning")  # pydicom's, reading the object
def test_a_stow_answer_xml_cannot_carry_comes_in_the_default_representation(
        adapter: tuple[FhirClient, Services]) -> None:
    """A refused object's UID holding a character XML 1.0 cannot carry: the answer comes as
    the default DICOM JSON (PS3.18 Table 8.7.3-1), neither altered nor a 406 that would hide
    what became of the request."""
    client, _ = adapter
    bad = received(record_id="rec-bad")
    uid = bad.SOPInstanceUID.encode()
    r = stow_with(client, "application/dicom+xml", _encoded(bad).replace(uid, uid[:-1] + b"\x07"))
    assert r.status_code == 409 and r.headers["content-type"].startswith(DICOM_JSON), r.content
    assert value(r.json()["00081198"]["Value"][0], "00081155") == uid[:-1].decode() + "\x07"
