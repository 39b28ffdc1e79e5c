"""IHE MHD 4.2.x's AuditEvent shapes (adapter.mapping.audit_mhd): what makes a request an MHD
transaction, and how its event differs from the BALP one."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from adapter.mapping import codes
from adapter.mapping.audit import audit_event
from adapter.mapping.audit_mhd import (
    find_document_references,
    provide_document_bundle,
    retrieve_document,
)
from adapter.model.photo import Identifier
from adapter.model.purpose import MhdTransaction
from tests.support.fhir_validator import validate_r4
from tests.support.mhd import provide_document_bundle as iti65_request

pytestmark = pytest.mark.unit

RECORDED = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
PATIENT = Identifier(system="urn:oid:2.999.1.1", value="MRN-0001")
BASE = "https://adapter.example.org/fhir"


def event(mhd: MhdTransaction, **overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "interaction": "read", "action": "R", "outcome": "0", "outcome_desc": None, "recorded": RECORDED,
        "client_address": "10.0.0.7", "actor": "client 10.0.0.7", "purpose": (codes.V3_ACT_REASON, "TREAT"),
        "request_id": "req-1", "entities": ["Binary/b-1"], "patient": PATIENT, "query": None, "mhd": mhd,
        "policy": "urn:clinical-image-adapter:policy:clinical-photography:v1",
    }
    args.update(overrides)
    return audit_event(**args)


CASES = {
    "iti-65": event(MhdTransaction("ITI-65", ("urn:ietf:rfc:3986", "urn:oid:1.2.3.4.99.1"), BASE),
                    interaction="create", action="C", entities=["DocumentReference/d-1", "Binary/b-1"]),
    "iti-65 refused": event(MhdTransaction("ITI-65", ("urn:ietf:rfc:3986", "urn:oid:1.2.3.4.99.1")),
                            interaction="create", action="C", entities=[], outcome="4", outcome_desc="refused"),
    "iti-67": event(find_document_references(BASE), interaction="search-type", action="E",
                    entities=["DocumentReference/d-1"], query=b"GET /fhir/DocumentReference?patient=x"),
    "iti-68": event(retrieve_document(BASE)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_shape_is_a_valid_r4_audit_event(name: str) -> None:
    AuditEvent.model_validate(CASES[name])


def test_each_shape_validates_with_the_npm_validators() -> None:
    assert validate_r4(list(CASES.values())) == []


def test_iti_65_is_an_import_with_the_submission_set_as_a_job() -> None:
    ev = CASES["iti-65"]
    assert ev["type"]["code"] == "110107" and ev["subtype"] == [
        {"system": "urn:ihe:event-type-code", "code": "ITI-65", "display": "Provide Document Bundle"}]
    [job] = [e for e in ev["entity"] if e.get("role", {}).get("code") == "20"]
    assert job["what"]["identifier"]["value"] == "urn:oid:1.2.3.4.99.1" and job["type"]["code"] == "2"
    assert ev["agent"][1]["network"] == {"address": BASE, "type": "5"}
    assert ev["agent"][2]["policy"] and ev["agent"][2]["purposeOfUse"]


def test_iti_67_and_iti_68_keep_balps_type_and_add_their_subtype() -> None:
    assert [s["code"] for s in CASES["iti-67"]["subtype"]] == ["search-type", "ITI-67"]
    assert [s["code"] for s in CASES["iti-68"]["subtype"]] == ["read", "ITI-68"]
    assert CASES["iti-67"]["type"]["code"] == CASES["iti-68"]["type"]["code"] == "rest"
    [document] = [e for e in CASES["iti-68"]["entity"] if e.get("what", {}).get("reference") == "Binary/b-1"]
    assert document["role"]["code"] == "3"
    [record] = [e for e in CASES["iti-67"]["entity"] if e.get("what", {}).get("reference")]
    assert record["role"]["code"] == "4"


def test_a_transaction_is_iti_65_only_with_a_submission_set_list() -> None:
    bundle = iti65_request(b"\xff\xd8\xff")
    found = provide_document_bundle(bundle, BASE)
    assert found == MhdTransaction("ITI-65", ("urn:ietf:rfc:3986", "urn:oid:1.2.3.4.99.1"), BASE)
    batch = {**copy.deepcopy(bundle), "type": "batch"}
    assert provide_document_bundle(batch) is None
    folder = copy.deepcopy(bundle)
    folder["entry"][0]["resource"]["code"]["coding"][0]["code"] = "folder"
    assert provide_document_bundle(folder) is None
    none = copy.deepcopy(bundle)
    none["entry"] = none["entry"][1:]
    assert provide_document_bundle(none) is None


def test_what_a_client_sends_badly_is_not_taken_as_the_submission_sets_id() -> None:
    """The Bundle is read before it is checked: identifiers that are no strings, or are huge, are
    not put in the audit trail; the entry's urn: fullUrl names it then."""
    bundle = iti65_request(b"\xff\xd8\xff")
    ss = bundle["entry"][0]
    ss["resource"]["identifier"] = [{"use": "official", "system": 7, "value": "x"},
                                    {"use": "official", "system": "urn:ietf:rfc:3986", "value": "u" * 10_000}]
    found = provide_document_bundle(bundle)
    assert found is not None and found.submission_set == ("urn:ietf:rfc:3986", ss["fullUrl"])
    ss["fullUrl"] = "List/1"
    assert provide_document_bundle(bundle) == MhdTransaction("ITI-65")
    assert provide_document_bundle({"type": "transaction", "entry": "x"}) is None
    assert provide_document_bundle({"type": "transaction", "entry": [None, {"resource": []}]}) is None


def test_the_submission_sets_unique_id_is_its_oid_as_mhd_4_2_marks_it() -> None:
    """MHD 4.2 marks the SubmissionSet's uniqueId (an OID) ``usual`` and its entryUUID (a UUID)
    ``official`` (IHE.MHD.SubmissionSetUniqueIdIdentifier, IHE.MHD.EntryUUID.Identifier). The
    audit took the ``official`` one as the uniqueId, so a Bundle marked as MHD marks it was audited
    under its entryUUID."""
    bundle = iti65_request(b"\xff\xd8\xff")
    identifiers = bundle["entry"][0]["resource"]["identifier"]
    for identifier in identifiers:
        identifier["use"] = "usual" if identifier["value"].startswith("urn:oid:") else "official"
    found = provide_document_bundle(bundle)
    assert found is not None and found.submission_set == ("urn:ietf:rfc:3986", "urn:oid:1.2.3.4.99.1")
