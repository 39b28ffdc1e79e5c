"""DICOMweb details a VNA or a strict client relies on, over the real app on a real SQLite store
(DICOMweb review, low findings): content negotiation honours a refusal (q=0) beside a wildcard;
STOW-RS negotiates before it stores and names no study it did not store; an XML search with no
match is a valid (empty) multipart; the adapter's de-identified copies of a STOW-RS object carry
the adapter's own File Meta; the series keys PS3.18 requires are taken."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from adapter.mapping.dicom_photo import encode_dataset
from adapter.mapping.dicom_uids import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from adapter.services.registry import Services
from tests.integration.test_dicomweb import (
    TRAIN,
    TREAT,
    add_consent,
    parts_of,
    qido,
    received,
    related,
    stow,
    value,
)
from tests.support.app import FhirClient, pacs_client
from tests.support.native_dicom import xml_parts

pytestmark = pytest.mark.integration

XML = 'multipart/related; type="application/dicom+xml"'
DICOM_JSON = "application/dicom+json"


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with pacs_client(tmp_path) as pair:
        yield pair


def test_a_json_refused_with_q0_beside_a_wildcard_is_not_answered_in_json(
        adapter: tuple[FhirClient, Services]) -> None:
    """RFC 9110 12.5.1: the most specific range matching a type gives its quality, so
    ``application/dicom+json;q=0`` refuses JSON even beside ``*/*``; the other representation
    the wildcard takes (the Native DICOM Model) answers."""
    client, _ = adapter
    photo = received()
    assert stow(client, photo).status_code == 200
    for url in ("/dicomweb/studies", f"/dicomweb/studies/{photo.StudyInstanceUID}/metadata"):
        r = client.get(url, headers={**TREAT, "Accept": f"{DICOM_JSON};q=0, */*"})
        assert r.status_code == 200 and r.headers["content-type"].startswith(XML), (url, r.headers)
        assert len(xml_parts(r)) == 1
        # nothing left that is acceptable: 406, not the refused JSON
        r = client.get(url, headers={**TREAT, "Accept": f"{DICOM_JSON};q=0, {XML};q=0, */*"})
        assert r.status_code == 406, (url, r.headers)
    # the wildcard alone still means the default
    assert client.get("/dicomweb/studies", headers={**TREAT, "Accept": "*/*"}).headers[
        "content-type"].startswith(DICOM_JSON)


def test_an_xml_search_with_no_match_is_an_empty_multipart(adapter: tuple[FhirClient, Services]) -> None:
    """200 and an empty list of results, as the JSON's ``[]`` (PS3.18 2026a, CP-2473): a
    multipart body with its closing delimiter, which a multipart parser reads as no part."""
    client, _ = adapter
    r = client.get("/dicomweb/studies", params={"PatientID": "nobody"}, headers={**TREAT, "Accept": XML})
    assert r.status_code == 200
    boundary = re.search(r"boundary=([^;\s]+)", r.headers["content-type"]).group(1)  # type: ignore[union-attr]
    assert r.content == f"--{boundary}--\r\n".encode()
    assert xml_parts(r) == []
    json_answer = client.get("/dicomweb/studies", params={"PatientID": "nobody"}, headers=TREAT)
    assert json_answer.status_code == 200 and json_answer.json() == []


def test_stow_to_a_study_that_stored_nothing_names_no_study(adapter: tuple[FhirClient, Services]) -> None:
    """RetrieveURL (type 2) is present and empty when nothing was stored (README), not the URL's
    study, which does not exist."""
    client, _ = adapter
    r = stow(client, received(), study="1.2.3.4")
    assert r.status_code == 409, r.text
    assert r.json()["00081190"] == {"vr": "UR"}
    assert value(r.json()["00081198"]["Value"][0], "00081197") == 0xA900
    stored = received()
    r = stow(client, stored, study=stored.StudyInstanceUID)
    assert r.status_code == 200
    assert value(r.json(), "00081190").endswith(f"/dicomweb/studies/{stored.StudyInstanceUID}")


def test_stow_with_an_accept_it_cannot_answer_is_406_and_stores_nothing(
        adapter: tuple[FhirClient, Services]) -> None:
    """Negotiation comes before the body is read: a client refusing every answer STOW-RS gives
    must not have stored what it will retry."""
    client, services = adapter
    photo = received()
    body, ctype = related(("application/dicom", encode_dataset(photo)))
    for accept in ("text/html", f"{DICOM_JSON};q=0", "application/dicom+xml;q=0, application/dicom+json;q=0"):
        done = len(services.store.list_audit(10000))
        r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype, "Accept": accept})
        assert r.status_code == 406 and r.json()["resourceType"] == "OperationOutcome", (accept, r.text)
        assert len(services.store.list_audit(10000)) - done == 1  # the refused transfer, audited once
    assert qido(client, "studies", StudyInstanceUID=photo.StudyInstanceUID) == []
    r = client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype, "Accept": "*/*"})
    assert r.status_code == 200 and r.headers["content-type"].startswith(DICOM_JSON)


def test_restricted_copies_of_a_stow_object_carry_the_adapters_file_meta(
        adapter: tuple[FhirClient, Services]) -> None:
    """The README: every Part 10 object the adapter writes names the adapter as its
    implementation (PS3.10 7.1); a TRAIN copy of an object a STOW-RS sender wrote is one."""
    client, _ = adapter
    photo = received()
    photo.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.8.498.1"
    photo.file_meta.ImplementationVersionName = "SENDER_3"
    assert stow(client, photo).status_code == 200
    add_consent(client, ["TRAIN"])
    [instance] = qido(client, "instances", TRAIN)
    r = client.get(value(instance, "00081190").split("testserver")[-1],
                   headers={**TRAIN, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    assert r.status_code == 200, r.text
    [data] = parts_of(r)
    meta = pydicom.dcmread(io.BytesIO(data)).file_meta
    assert (meta.ImplementationClassUID, meta.ImplementationVersionName) == (
        IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME)


@pytest.mark.parametrize("key", ["RequestAttributesSequence.ScheduledProcedureStepID",
                                 "RequestAttributesSequence.RequestedProcedureID",
                                 "00400275.00400009", "00400275.00401001"])
def test_the_series_keys_ps318_requires_are_taken(adapter: tuple[FhirClient, Services], key: str) -> None:
    """PS3.18 Table 10.6.1-5: an origin server takes RequestAttributesSequence's
    ScheduledProcedureStepID and RequestedProcedureID at series level. A photo has no request:
    a value matches nothing, universal matching everything (PS3.4 C.2.2.2)."""
    client, _ = adapter
    photo = received()
    assert stow(client, photo).status_code == 200
    for path in ("series", f"studies/{photo.StudyInstanceUID}/series", "instances"):
        assert qido(client, path, **{key: "X"}) == [], path
        assert len(qido(client, path, **{key: "*"})) == 1, path
        assert len(qido(client, path, **{key: ""})) == 1, path
    # not a study key (PS3.18 Table 10.6.1-4), nor another attribute of the sequence
    assert client.get("/dicomweb/studies", params={key: "X"}, headers=TREAT).status_code == 400
    assert client.get("/dicomweb/series", params={"RequestAttributesSequence.AccessionNumber": "X"},
                      headers=TREAT).status_code == 400
