"""FHIR search parameter escaping through the real app (review ingest F6): a patient identifier
holding ``|`` or ``,`` is found by its escaped form (R4 search.html#escaping), and no search, escaped
or not, returns another patient's record: ``patient:identifier=<system>|A\\,B`` found patient ``B``'s
photos (the escaped comma read as an OR, its second half a value in any system), and
``urn:oid:2.999|1.1|AB`` the patient ``{urn:oid:2.999, 1.1|AB}`` when ``{urn:oid:2.999|1.1, AB}`` was
meant. QIDO-RS likewise: a PatientID holding DICOM's value separator, ``\\``, matches no patient."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.support.app import FhirClient, as_purpose, metadata, pacs_client, post_photo

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
TREAT = as_purpose("TREAT")
SYSTEM = "urn:oid:2.999.1.1"  # mapped to the IssuerOfPatientID HOSP (mappings/dicom.yaml)
#: Patients whose identifiers hold the characters FHIR search escapes, and the patients an
#: unescaped or wrongly split search for them would find instead.
PATIENTS = {
    "bar": {"system": SYSTEM, "value": "A|B"},
    "comma": {"system": SYSTEM, "value": "A,B"},
    "dollar": {"system": SYSTEM, "value": "A$B"},
    "backslash": {"system": SYSTEM, "value": "A\\B"},
    "bar in system": {"system": "urn:oid:2.999|1.1", "value": "AB"},
    "bar in value": {"system": "urn:oid:2.999", "value": "1.1|AB"},
    "A": {"system": SYSTEM, "value": "A"},
    "B": {"system": SYSTEM, "value": "B"},
    "A\\": {"system": SYSTEM, "value": "A\\"},
}
#: The escaped search for each (search.html#escaping: \| \, \$ \\).
ESCAPED = {
    "bar": rf"{SYSTEM}|A\|B",
    "comma": rf"{SYSTEM}|A\,B",
    "dollar": rf"{SYSTEM}|A\$B",
    "backslash": rf"{SYSTEM}|A\\B",
    "bar in system": r"urn:oid:2.999\|1.1|AB",
    "bar in value": r"urn:oid:2.999|1.1\|AB",
    "A": f"{SYSTEM}|A",
    "B": f"{SYSTEM}|B",
    "A\\": rf"{SYSTEM}|A\\",
}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FhirClient, dict[str, str]]]:
    """The app with one photo of each of PATIENTS; the record of each."""
    with pacs_client(tmp_path_factory.mktemp("escaping")) as (client, _):
        records = {}
        for name, patient in PATIENTS.items():
            r = post_photo(client, WOUND, metadata(patient=patient))
            assert r.status_code == 201, r.text
            records[name] = r.json()["record"]
        yield client, records


def found(client: FhirClient, resource_type: str, query: dict[str, str], *, by_post: bool = False) -> Any:
    if by_post:
        return client.post(f"/fhir/{resource_type}/_search", data=query, headers=TREAT)
    return client.get(f"/fhir/{resource_type}", params=query, headers=TREAT)


def subjects(response: Any, resource_type: str) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    entries = [e["resource"] for e in response.json().get("entry", []) if e["resource"]["resourceType"] == resource_type]
    key = "patient" if resource_type == "Consent" else "subject"
    return [e[key]["identifier"] for e in entries]


@pytest.mark.parametrize("by_post", [False, True], ids=["GET", "POST _search"])
@pytest.mark.parametrize("name", list(PATIENTS))
def test_each_identifier_is_found_by_its_escaped_form_and_no_other_patient_is(
        stored: tuple[FhirClient, dict[str, str]], name: str, by_post: bool) -> None:
    client, records = stored
    for param, resource_type in (("patient:identifier", "Media"), ("subject:identifier", "Media"),
                                 ("patient:identifier", "Consent")):
        r = found(client, resource_type, {param: ESCAPED[name]}, by_post=by_post)
        assert subjects(r, resource_type) == [PATIENTS[name]], (param, resource_type, r.json())
    r = found(client, "Media", {"patient:identifier": ESCAPED[name]}, by_post=by_post)
    assert [e["fullUrl"].rsplit("/", 2)[-2:] for e in r.json()["entry"]] == [records[name].split("/")]


def test_an_escaped_comma_no_longer_finds_another_patient(stored: tuple[FhirClient, dict[str, str]]) -> None:
    """The query of the review: ``A\\,B`` split at the comma was ``<system>|A\\`` OR ``B`` in any
    system, and returned patient B's photo. Patient ``A\\`` (that first half) is not found either."""
    client, _ = stored
    r = found(client, "Media", {"patient:identifier": rf"{SYSTEM}|A\,B"})
    assert subjects(r, "Media") == [PATIENTS["comma"]] and r.json()["total"] == 1


def test_an_identifier_holding_an_unescaped_bar_is_refused_not_matched_to_another_patient(
        stored: tuple[FhirClient, dict[str, str]]) -> None:
    """``urn:oid:2.999|1.1|AB`` names either stored patient: it found ``{urn:oid:2.999, 1.1|AB}``
    when the client meant ``{urn:oid:2.999|1.1, AB}``. Now 400, saying how to escape, for both."""
    client, _ = stored
    for query in ("urn:oid:2.999|1.1|AB", f"{SYSTEM}|A|B"):
        for by_post in (False, True):
            r = found(client, "Media", {"patient:identifier": query}, by_post=by_post)
            assert r.status_code == 400, r.text
            outcome = r.json()
            assert outcome["resourceType"] == "OperationOutcome" and "\\|" in outcome["issue"][0]["diagnostics"]
            assert "1.1|AB" not in r.text and "A|B" not in r.text  # the identifier is not repeated


def test_a_backslash_escaping_nothing_is_refused(stored: tuple[FhirClient, dict[str, str]]) -> None:
    """``A\\B`` unescaped found the patient ``A\\B``; FHIR sends that as ``A\\\\B``: a lone ``\\`` is
    no value the server can be sure of (400), never a match of another patient."""
    client, _ = stored
    r = found(client, "Media", {"patient:identifier": f"{SYSTEM}|A\\B"})
    assert r.status_code == 400, r.text


def test_values_alone_and_ors_are_read_through_the_same_escaping(stored: tuple[FhirClient, dict[str, str]]) -> None:
    client, _ = stored
    r = found(client, "Media", {"patient:identifier": r"A\,B"})  # the value in any system
    assert subjects(r, "Media") == [PATIENTS["comma"]]
    r = found(client, "Media", {"patient:identifier": rf"{ESCAPED['bar']},{ESCAPED['comma']}"})
    assert sorted(s["value"] for s in subjects(r, "Media")) == ["A,B", "A|B"]
    r = found(client, "Media", {"patient.identifier": ESCAPED["bar in system"]})  # ITI-67's chained form
    assert subjects(r, "Media") == [PATIENTS["bar in system"]]
    r = found(client, "DocumentReference", {"patient.identifier": ESCAPED["bar in system"]})
    assert r.status_code == 200 and r.json()["total"] == 0  # a photo is a Media: no document of the patient


def test_qido_patient_id_holding_a_backslash_matches_no_patient(stored: tuple[FhirClient, dict[str, str]]) -> None:
    """PatientID is LO of VM 1 (PS3.6): ``A\\B`` is two values, which the adapter does not match
    as either (patient A, patient B) nor as the FHIR identifier ``A\\B``, which no PatientID can
    hold: 400, as a received object with such a PatientID is refused. The single values find
    their own patient only."""
    client, _ = stored
    for keys in ({"PatientID": "A\\B"}, {"PatientID": "A\\B", "IssuerOfPatientID": "HOSP"},
                 {"PatientID": "A\\*"}, {"PatientID": "A", "IssuerOfPatientID": "HOSP\\OTHER"}):
        for level in ("studies", "series", "instances"):
            r = client.get(f"/dicomweb/{level}", params=keys, headers=TREAT)
            assert r.status_code == 400, (keys, level, r.text)
            assert "A\\B" not in r.text
    for value in ("A", "B"):
        r = client.get("/dicomweb/instances", params={"PatientID": value, "IssuerOfPatientID": "HOSP"}, headers=TREAT)
        assert r.status_code == 200, r.text
        assert [i["00100020"]["Value"] for i in r.json()] == [[value]]
