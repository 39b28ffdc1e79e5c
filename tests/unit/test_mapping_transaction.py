"""Transaction Bundle (ITI-65 shape) → photo submission, its errors, the transaction-response
Bundle, and the samples/ FHIR files."""

from __future__ import annotations

import base64
import copy
import io
import json
from datetime import datetime
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.consent import Consent
from PIL import Image

from adapter.errors import (
    AdapterError,
    BusinessRuleViolation,
    InvalidInput,
    InvalidResource,
    NotSupported,
    PayloadTooLarge,
    RequiredElementMissing,
    UnknownCode,
)
from adapter.mapping import codes
from adapter.mapping.photo import build_photo_resources
from adapter.mapping.photo import index_resource as build_index
from adapter.mapping.transaction import MAX_DOCUMENTS, parse_transaction, transaction_response
from adapter.model.photo import ConsentMethod, Laterality, PhotoKind, PhotoMetadata, PhotoSource
from tests.support.app import PATIENT, consent_resource
from tests.support.fhir_factories import (
    NOW,
    PATIENT_SYSTEM,
    PATIENT_VALUE,
    ROOT,
    jpeg_bytes,
    stored_image,
    tables,
    transaction_bundle,
)
from tests.support.fhir_validator import validate_r4
from tests.support.mhd import provide_documents_bundle, submission_set_resource

pytestmark = pytest.mark.unit

SAMPLES = ROOT / "samples"


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return jpeg_bytes(700, 500)


def parse(bundle: dict[str, Any]) -> Any:
    return parse_transaction(bundle, tables())


def refused(bundle: dict[str, Any], error: type[AdapterError]) -> AdapterError:
    with pytest.raises(error) as info:
        parse(bundle)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    return info.value


# ---------------------------------------------------------------------------------------------
# happy paths


def test_media_bundle_with_consent(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    Bundle.model_validate(bundle)
    assert validate_r4([bundle]) == []
    sub = parse(bundle)
    assert sub.image_bytes == jpeg
    assert sub.content_type == "image/jpeg"
    assert sub.entry_roles == ("binary", "record", "consent")
    urls = [e["fullUrl"] for e in bundle["entry"]]
    assert sub.entry_full_urls == {"binary": urls[0], "record": urls[1], "consent": urls[2]}
    meta: PhotoMetadata = sub.meta
    assert meta.patient.identifier.token() == f"{PATIENT_SYSTEM}|{PATIENT_VALUE}"
    assert meta.patient.reference == "Patient/p-1"
    assert meta.kind is PhotoKind.CLINICAL and meta.source is PhotoSource.CLINICIAN
    assert meta.author is not None and meta.author.reference == "Practitioner/dr-a"
    assert meta.encounter is not None and meta.encounter.reference == "Encounter/e-1"
    assert meta.taken_at == datetime.fromisoformat("2024-03-01T10:15:00+01:00")
    assert meta.body_site == "14975008" and meta.laterality is Laterality.RIGHT
    assert meta.note == "Taken after dressing removal"
    assert meta.title == "Wound, right forearm"
    assert meta.device is not None and meta.device.value == "organisation"
    assert meta.consent is not None
    assert meta.consent.purposes == ["TREAT"] and meta.consent.method is ConsentMethod.VERBAL


def test_round_trip_rebuilds_the_same_record(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    sub = parse(bundle)
    rebuilt = build_photo_resources(
        sub.meta, stored_image(size=len(jpeg), capture_time=None, device_name=None), record_id="r",
        binary_id="bin", provenance_id="p", consent_ids=["c"], assessment_notes=(), assessment_warnings=(),
        consent_pending=False, implied_purposes=(), tables=tables(), now=NOW)
    sent = bundle["entry"][1]["resource"]
    for key in ("subject", "encounter", "createdDateTime", "operator", "bodySite", "note", "modality",
                "extension"):
        assert rebuilt.record[key] == sent[key], key


def test_document_reference_bundle(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg, kind="document", consent_purposes=None, bodySite=None, laterality=None)
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Binary", "DocumentReference"]
    assert validate_r4([bundle]) == []
    sub = parse(bundle)
    assert sub.meta.kind is PhotoKind.DOCUMENT
    assert sub.meta.title == "Wound, right forearm"
    assert sub.meta.note == "Taken after dressing removal"
    assert sub.meta.taken_at == datetime.fromisoformat("2024-03-01T10:15:00+01:00")
    assert sub.meta.consent is None
    assert sub.entry_roles == ("binary", "record")


def _without_kind(record: dict[str, Any]) -> dict[str, Any]:
    record["extension"] = [e for e in record["extension"] if e["url"] not in (codes.EXT_PHOTO_KIND,
                                                                              codes.EXT_PHOTO_SOURCE)]
    return record


@pytest.mark.parametrize("modality", ["XC", "OT", "OP", "ES", "SM", None])
def test_a_media_that_does_not_say_its_kind_is_clinical_whatever_its_modality(jpeg: bytes,
                                                                               modality: str | None) -> None:
    """Safety review finding 2: without the photo-kind extension a Media of any DCM modality but XC
    (ophthalmic photography OP, endoscopy ES…) was taken as ``secondary``, a photo of an x-ray or
    screen, which needs no consent and is stamped "review the original before diagnosis": a body
    photo skipped consent. The sender has not said it is not of the body: clinical (fail closed)."""
    bundle = transaction_bundle(jpeg)
    media = _without_kind(bundle["entry"][1]["resource"])
    if modality is None:
        del media["modality"]
    else:
        media["modality"]["coding"][0]["code"] = modality
    sub = parse(bundle)
    assert sub.meta.kind is PhotoKind.CLINICAL and sub.meta.source is PhotoSource.CLINICIAN
    assert sub.meta.body_site == "14975008"


PHOTOGRAPHIC_IMAGE = {"system": codes.LOINC, "code": "72170-4", "display": "Photographic image"}
LABORATORY_REPORT = {"system": codes.LOINC, "code": "11502-2", "display": "Laboratory report"}


@pytest.mark.parametrize("type_codings, category", [
    (None, None),
    ([PHOTOGRAPHIC_IMAGE], None),
    ([{"system": "urn:oid:2.999.9", "code": "wound-photo"}], None),
    # two LOINC concepts in one type contradict each other: not taken as the report
    ([LABORATORY_REPORT, PHOTOGRAPHIC_IMAGE], None),
    # a category (MHD classCode) groups documents coarsely: it does not say what this one is
    (None, [LABORATORY_REPORT]),
    ([PHOTOGRAPHIC_IMAGE], [LABORATORY_REPORT]),
])
def test_a_document_reference_that_does_not_say_its_kind_is_clinical(jpeg: bytes, type_codings: Any,
                                                                     category: Any) -> None:
    """Safety review finding 2: a DocumentReference without the photo-kind extension was taken as
    a photographed ``document``, which needs no consent, whatever it showed: an IHE MHD Document
    Source's wound photo (type LOINC 72170-4 "Photographic image") skipped consent. Only a type
    mappings/kinds.yaml lists as a document's (``documentTypes``) says so; else clinical."""
    bundle = _document_bundle(jpeg)
    document = _without_kind(bundle["entry"][1]["resource"])
    document.pop("type", None)
    document.pop("category", None)
    if type_codings is not None:
        document["type"] = {"coding": type_codings}
    if category is not None:
        document["category"] = [{"coding": category}]
    assert parse(bundle).meta.kind is PhotoKind.CLINICAL


@pytest.mark.parametrize("code", ["11502-2", "18842-5", "59284-0"])
def test_a_document_reference_of_a_document_type_the_kinds_table_lists_is_a_document(jpeg: bytes,
                                                                                    code: str) -> None:
    """A standard MHD Document Source does not know the adapter's extension; a DocumentReference
    whose type is one mappings/kinds.yaml lists under ``document.documentTypes`` (a report, a
    result, a consent form) says it is a document, with a translation in another system beside."""
    bundle = _document_bundle(jpeg)
    document = _without_kind(bundle["entry"][1]["resource"])
    document["type"] = {"coding": [{"system": codes.LOINC, "code": code},
                                   {"system": "urn:oid:2.999.9", "code": "local-report"}]}
    assert parse(bundle).meta.kind is PhotoKind.DOCUMENT


def test_the_photo_kind_extension_decides_over_a_document_type(jpeg: bytes) -> None:
    bundle = _document_bundle(jpeg)
    document = bundle["entry"][1]["resource"]
    document["type"] = {"coding": [LABORATORY_REPORT]}
    next(e for e in document["extension"] if e["url"] == codes.EXT_PHOTO_KIND)["valueCode"] = "clinical"
    assert parse(bundle).meta.kind is PhotoKind.CLINICAL


def test_documents_types_are_listed_for_documents_only_and_no_photographic_image() -> None:
    kinds = tables().kinds
    assert kinds[PhotoKind.DOCUMENT].document_types
    assert not kinds[PhotoKind.CLINICAL].document_types and not kinds[PhotoKind.SECONDARY].document_types
    assert "72170-4" not in {c.code for c in kinds[PhotoKind.DOCUMENT].document_types}


def test_a_media_of_a_document_with_a_body_site_is_refused_as_post_photos_refuses_it(jpeg: bytes) -> None:
    """A photographed document shows no part of the body: ``POST /photos`` refuses ``bodySite``
    with ``kind: document`` (422 at ``bodySite``), and so does a transaction, naming the record's
    bodySite. A secondary image (a photo of an x-ray of the forearm) may say its site, as over
    ``POST /photos``."""
    bundle = transaction_bundle(jpeg)
    media = bundle["entry"][1]["resource"]
    next(e for e in media["extension"] if e["url"] == codes.EXT_PHOTO_KIND)["valueCode"] = "document"
    err = refused(bundle, InvalidInput)
    assert err.expression == ["Bundle.entry[1].resource.bodySite"]
    assert "clinical" in err.diagnostics
    next(e for e in media["extension"] if e["url"] == codes.EXT_PHOTO_KIND)["valueCode"] = "secondary"
    sub = parse(bundle)
    assert sub.meta.kind is PhotoKind.SECONDARY and sub.meta.body_site == "14975008"


def test_binary_referenced_by_id(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][0]["resource"]["id"] = "img-1"
    bundle["entry"][1]["resource"]["content"]["url"] = "Binary/img-1"
    assert parse(bundle).image_bytes == jpeg


def test_a_put_of_what_the_adapter_stores_is_refused(jpeg: bytes) -> None:
    """Review finding: ``PUT DocumentReference/abc`` (or ``PUT Binary/img-1``) created a record
    under a server id, an update-as-create the CapabilityStatement denies (updateCreate false; a
    PUT alone to an id not held is 405). FHIR http.html#transaction processes each entry by its
    method and url: the whole transaction is refused, naming the entry."""
    for index, url in ((0, "Binary/img-1"), (1, "Media/abc"), (2, "Consent/c-1")):
        bundle = transaction_bundle(jpeg)
        bundle["entry"][index]["resource"]["id"] = url.split("/")[1]
        bundle["entry"][index]["request"] = {"method": "PUT", "url": url}
        err = refused(bundle, NotSupported)
        assert err.expression == [f"Bundle.entry[{index}].request.method"], url
        assert "POST" in err.diagnostics


def test_a_post_goes_to_its_own_resource_type_on_this_server(jpeg: bytes) -> None:
    """Review finding: ``request.url`` "Media" on a DocumentReference entry was accepted."""
    bundle = transaction_bundle(jpeg, kind="document", consent_purposes=None, bodySite=None, laterality=None)
    bundle["entry"][1]["request"]["url"] = "Media"
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[1].request.url"]
    bundle["entry"][1]["request"]["url"] = "DocumentReference?identifier=x"
    assert refused(bundle, NotSupported).expression == ["Bundle.entry[1].request.url"]
    for elsewhere in ("http://ehr.example/fhir/DocumentReference", "urn:uuid:0c0c0c0c-0000-4000-8000-00000000000a"):
        bundle["entry"][1]["request"]["url"] = elsewhere
        assert refused(bundle, NotSupported).expression == ["Bundle.entry[1].request.url"]
        with pytest.raises(NotSupported):
            parse_transaction(bundle, tables(), "http://adapter.example/fhir")
    # absolute under this server's own base: the same as relative
    bundle["entry"][1]["request"]["url"] = "http://adapter.example/fhir/DocumentReference"
    assert parse_transaction(bundle, tables(), "http://adapter.example/fhir").meta.kind is PhotoKind.DOCUMENT
    refused(bundle, NotSupported)  # without the base known, it names no resource here


@pytest.mark.parametrize("name, value", [("ifNoneExist", "patient:identifier=urn:oid:2.999.1.1|MRN-0001"),
                                         ("ifMatch", 'W/"1"'), ("ifNoneMatch", "*"),
                                         ("ifModifiedSince", "2026-01-01T00:00:00Z")])
def test_a_conditional_request_is_refused(jpeg: bytes, name: str, value: str) -> None:
    """Review finding: a Consent entry's ``ifNoneExist`` was ignored, so the same Bundle sent
    twice made two active Consents; ``POST /fhir/Consent`` with If-None-Exist is refused (400
    not-supported, README) for that reason, and so is the entry now."""
    bundle = transaction_bundle(jpeg)
    bundle["entry"][2]["request"][name] = value
    err = refused(bundle, NotSupported)
    assert err.expression == [f"Bundle.entry[2].request.{name}"]


def test_a_put_of_a_list_or_the_patient_is_acknowledged(jpeg: bytes) -> None:
    """ITI-65 lets a Document Source PUT a Folder List or the Patient of the push case: the
    adapter stores neither, so a PUT of them is taken, its url naming the entry's type and id."""
    bundle = transaction_bundle(jpeg)
    bundle["entry"].append({"resource": {**submission_set_resource([bundle["entry"][1]["fullUrl"]]), "id": "f-1"},
                            "request": {"method": "PUT", "url": "List/f-1"}})
    assert parse(bundle).entry_roles[-1] == "submission-set"
    bundle["entry"][-1]["request"]["url"] = "List/f-2"
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[3].resource.id"]
    bundle["entry"][-1]["request"]["url"] = "Patient/f-1"
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[3].request.url"]


def test_consent_method_without_extension(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    consent = bundle["entry"][2]["resource"]
    consent["extension"] = [e for e in consent["extension"] if e["url"] != codes.EXT_CONSENT_METHOD]
    meta = parse(bundle).meta
    assert meta.consent is not None and meta.consent.method is ConsentMethod.VERBAL
    consent["sourceAttachment"] = {"contentType": "application/pdf", "data": "JVBERi0xLjQK", "title": "form"}
    meta = parse(bundle).meta
    assert meta.consent is not None and meta.consent.method is ConsentMethod.WRITTEN
    assert meta.consent.form == "JVBERi0xLjQK" and meta.consent.form_content_type == "application/pdf"


def test_a_bundle_consent_is_stored_as_sent_with_who_consented_and_its_form(jpeg: bytes) -> None:
    """Review "ingest" finding 1: the Consent a Bundle carries was rebuilt from its purposes,
    method, date and form: the performer (a legal guardian) became the patient, verification and
    sourceAttachment.url were dropped. It is stored as sent now (as POST /fhir/Consent stores it),
    with the adapter's id, the photo's patient by identifier and provision.data naming the photo."""
    bundle = transaction_bundle(jpeg)
    sent = bundle["entry"][2]["resource"]
    sent["performer"] = [{"reference": "RelatedPerson/mother-1", "display": "Jane Doe (mother, legal guardian)"}]
    sent["verification"] = [{"verified": True, "verifiedWith": {"display": "Jane Doe"},
                             "verificationDate": "2024-03-01"}]
    sent["sourceAttachment"] = {"contentType": "application/pdf", "title": "Signed photography consent",
                                "url": "https://ehr.example.org/documents/consent-form-123.pdf"}
    sub = parse(bundle)
    built = build_photo_resources(
        sub.meta, stored_image(size=len(jpeg), capture_time=None, device_name=None), record_id="r",
        binary_id="bin", provenance_id="p", consent_ids=["c"], assessment_notes=(), assessment_warnings=(),
        consent_pending=False, implied_purposes=(), tables=tables(), now=NOW)
    [stored] = built.consents
    record = f"{built.record['resourceType']}/r"
    assert stored == {**sent, "id": "c", "provision": {**sent["provision"], "data": [
        {"meaning": "instance", "reference": {"reference": record}}]}}
    assert sub.meta.consent.method is ConsentMethod.VERBAL  # its consent-method extension says so


def test_a_bundle_consent_with_an_empty_source_attachment_is_not_written(jpeg: bytes) -> None:
    """Review "ingest" finding 2b: a sourceAttachment with neither data nor url (a title only)
    made the Consent written consent. It documents nothing: the Consent is read as POST
    /fhir/Consent reads it (no method said: not written)."""
    bundle = transaction_bundle(jpeg)
    consent = bundle["entry"][2]["resource"]
    consent["extension"] = [e for e in consent["extension"] if e["url"] != codes.EXT_CONSENT_METHOD]
    consent["sourceAttachment"] = {"title": "form"}
    sub = parse(bundle)
    assert sub.meta.consent is not None and sub.meta.consent.method is not ConsentMethod.WRITTEN
    consent["sourceAttachment"] = {"contentType": "application/pdf", "url": "https://ehr.example.org/f.pdf"}
    assert parse(bundle).meta.consent.method is ConsentMethod.WRITTEN


def test_external_colleague_bundle(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    media = bundle["entry"][1]["resource"]
    media["extension"] = [{"url": codes.EXT_PHOTO_SOURCE, "valueCode": "colleague-external"}]
    media["operator"] = {"display": "Dr B"}
    media["note"] = [{"text": "Discussed by phone"}]
    meta = parse(bundle).meta
    assert meta.colleague is not None
    assert (meta.colleague.name, meta.colleague.discussion_note) == ("Dr B", "Discussed by phone")
    assert meta.note is None and meta.author is None
    del media["operator"]
    err = refused(bundle, RequiredElementMissing)
    assert err.expression == ["Bundle.entry[1].resource.operator.display"]


# ---------------------------------------------------------------------------------------------
# refusals


def test_wrong_bundle_type(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["type"] = "batch"
    assert refused(bundle, InvalidInput).expression == ["Bundle.type"]
    bundle["type"] = "nonsense"
    assert refused(bundle, UnknownCode).expression == ["Bundle.type"]


def test_bundle_type_and_resource_type_that_are_not_strings(jpeg: bytes) -> None:
    """Found by fuzzing: a list or object where a code belongs is refused with the element
    named, not a 500 (they were looked up in a set of codes, which raised TypeError)."""
    for value in (["transaction"], {"code": "transaction"}, 3):
        bundle = transaction_bundle(jpeg)
        bundle["type"] = value
        assert refused(bundle, UnknownCode).expression == ["Bundle.type"]
        bundle = transaction_bundle(jpeg)
        bundle["entry"][1]["resource"]["resourceType"] = value
        assert refused(bundle, NotSupported).expression == ["Bundle.entry[1].resource.resourceType"]
    bundle = transaction_bundle(jpeg)
    bundle["type"] = None  # JSON null is not a FHIR value at all (adapter.mapping.fhir_json)
    assert refused(bundle, InvalidResource).expression == ["Bundle.type"]


def test_record_without_its_attachment(jpeg: bytes) -> None:
    """Found by fuzzing: a JSON null passed the model as an absent element and the parser then
    failed (500). Nulls and empty arrays are now refused by the JSON rules, and a content
    without its attachment is named."""
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["content"] = None  # null is no FHIR value at all
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[1].resource.content"]
    for content, error, where in (
            ([None], InvalidResource, "content[0]"),
            ([{"attachment": None}], InvalidResource, "content[0].attachment"),
            ([], InvalidResource, "content"),  # an empty array is no FHIR value either
            ([{"format": {"code": "x"}}], InvalidResource, "content[0].attachment")):  # the model: required
        bundle = transaction_bundle(jpeg, kind="document", consent_purposes=None, bodySite=None, laterality=None)
        bundle["entry"][1]["resource"]["content"] = content
        assert refused(bundle, error).expression == [f"Bundle.entry[1].resource.{where}"], content


def test_not_a_bundle() -> None:
    assert refused({"resourceType": "Media"}, InvalidResource).expression == ["resourceType"]


def test_missing_binary(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    del bundle["entry"][0]
    assert refused(bundle, RequiredElementMissing).expression == ["Bundle.entry"]


def test_missing_record(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    del bundle["entry"][1]
    assert refused(bundle, RequiredElementMissing).expression == ["Bundle.entry"]


def test_two_photos(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"].append(copy.deepcopy(bundle["entry"][0]))
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[3].fullUrl"]  # bdl-7 first
    bundle["entry"][3]["fullUrl"] = "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000b2"
    # a second Binary that no record references: the adapter stores a Binary only as a document's content
    assert refused(bundle, NotSupported).expression == ["Bundle.entry[3]"]


def test_dangling_reference(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["content"]["url"] = "urn:uuid:00000000-0000-4000-8000-000000000000"
    err = refused(bundle, InvalidInput)
    assert err.expression == ["Bundle.entry[1].resource.content.url"]
    del bundle["entry"][1]["resource"]["content"]["url"]
    assert refused(bundle, RequiredElementMissing).expression == ["Bundle.entry[1].resource.content.url"]


def test_invalid_status_points_at_the_element(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["status"] = "finished"
    assert refused(bundle, UnknownCode).expression == ["Bundle.entry[1].resource.status"]
    del bundle["entry"][1]["resource"]["status"]
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[1].resource.status"]


def test_unknown_element_points_at_the_element(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["note"][0]["txt"] = "typo"
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[1].resource.note[0].txt"]


def test_wrong_json_type_is_an_invalid_resource(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["content"]["url"] = 3
    assert refused(bundle, InvalidResource).expression
    bundle = transaction_bundle(jpeg)
    bundle["entry"][0]["request"]["method"] = ["POST"]
    refused(bundle, InvalidResource)


def test_bundle_level_error_points_at_the_bundle(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][0]["fulUrl"] = "typo"
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[0].fulUrl"]


def test_unsupported_resource_type(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"].append({"fullUrl": "urn:uuid:9d1c2b8e-4f3a-4c1e-9b6d-0a1b2c3d4e09",
                            "resource": {"resourceType": "Observation", "status": "final",
                                         "code": {"text": "x"}},
                            "request": {"method": "POST", "url": "Observation"}})
    assert refused(bundle, NotSupported).expression == ["Bundle.entry[3].resource.resourceType"]


def test_mhd_submission_set_list_is_accepted(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"].append({"fullUrl": "urn:uuid:9d1c2b8e-4f3a-4c1e-9b6d-0a1b2c3d4e09",
                            "resource": submission_set_resource([bundle["entry"][1]["fullUrl"]]),
                            "request": {"method": "POST", "url": "List"}})
    assert parse_transaction(bundle, tables()).entry_roles[-1] == "submission-set"
    # a List that is no MHD SubmissionSet or Folder (its code) makes no submission (IHE.MHD.List)
    bundle["entry"][-1]["resource"]["code"] = {"text": "a list"}
    assert refused(bundle, UnknownCode).expression == ["Bundle.entry[3].resource.code"]


def test_unsupported_method(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][0]["request"]["method"] = "DELETE"
    assert refused(bundle, NotSupported).expression == ["Bundle.entry[0].request.method"]
    bundle["entry"][0]["request"]["method"] = "FETCH"
    assert refused(bundle, UnknownCode).expression == ["Bundle.entry[0].request.method"]
    del bundle["entry"][0]["request"]
    # FHIR invariant bdl-3, basic validation (400): InvalidResource (MHD review: was 422)
    assert refused(bundle, InvalidResource).expression == ["Bundle.entry[0].request"]


def test_binary_without_data_or_bad_base64(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    del bundle["entry"][0]["resource"]["data"]
    assert refused(bundle, RequiredElementMissing).expression == ["Bundle.entry[0].resource.data"]
    bundle["entry"][0]["resource"]["data"] = "!!!!"
    assert refused(bundle, InvalidInput).expression == ["Bundle.entry[0].resource.data"]


def test_content_type_mismatch(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["content"]["contentType"] = "image/png"
    assert refused(bundle, InvalidInput).expression == ["Bundle.entry[1].resource.content.contentType"]


def test_subject_identifier_required(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["subject"] = {"reference": "Patient/p-1"}
    err = refused(bundle, RequiredElementMissing)
    assert err.expression == ["Bundle.entry[1].resource.subject.identifier"]


def test_unknown_codes(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["extension"][0]["valueCode"] = "selfie"
    assert refused(bundle, UnknownCode).expression == ["Bundle.entry[1].resource.extension[0].valueCode"]
    bundle = transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["bodySite"]["coding"][0]["code"] = "368209003"
    assert refused(bundle, UnknownCode).expression == ["Bundle.entry[1].resource.bodySite"]
    bundle = transaction_bundle(jpeg)
    bundle["entry"][2]["resource"]["provision"]["purpose"][0]["code"] = "EDU"
    assert refused(bundle, UnknownCode).expression == ["Bundle.entry[2].resource.provision.purpose[0]"]


def test_consent_rules(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][2]["resource"]["status"] = "inactive"
    assert refused(bundle, NotSupported).expression == ["Bundle.entry[2].resource.status"]
    bundle = transaction_bundle(jpeg)
    bundle["entry"][2]["resource"]["provision"]["type"] = "deny"
    assert refused(bundle, NotSupported).expression == ["Bundle.entry[2].resource.provision.type"]
    bundle = transaction_bundle(jpeg)
    bundle["entry"][2]["resource"]["patient"]["identifier"]["value"] = "MRN-9999"
    assert refused(bundle, InvalidInput).expression == ["Bundle.entry[2].resource.patient.identifier"]
    bundle = transaction_bundle(jpeg)
    del bundle["entry"][2]["resource"]["provision"]["purpose"]
    err = refused(bundle, RequiredElementMissing)
    assert err.expression == ["Bundle.entry[2].resource.provision.purpose"]
    bundle = transaction_bundle(jpeg)
    bundle["entry"].append(copy.deepcopy(bundle["entry"][2]))
    bundle["entry"][3]["fullUrl"] = "urn:uuid:0c0c0c0c-0000-4000-8000-0000000000c3"  # not a bdl-7 refusal
    refused(bundle, NotSupported)


def test_empty_bundle() -> None:
    err = refused({"resourceType": "Bundle", "type": "transaction"}, RequiredElementMissing)
    assert err.expression == ["Bundle.entry"]
    err = refused({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {
        "method": "POST", "url": "Binary"}}]}, RequiredElementMissing)
    assert err.expression == ["Bundle.entry[0].resource"]


# ---------------------------------------------------------------------------------------------
# response


def test_transaction_response() -> None:
    response = transaction_response([("Binary/b/_history/1", "201 Created", "2024-03-01T09:16:03.000Z"),
                                     ("Media/m/_history/2", "200 OK", "2024-03-01T09:16:04.123Z"),
                                     ("Consent/c", "201 Created", "2024-03-01T09:16:03.000Z"),
                                     ("", "200 OK", "")])
    assert response["type"] == "transaction-response"
    assert [e["response"] for e in response["entry"]] == [
        {"status": "201 Created", "location": "Binary/b/_history/1", "etag": 'W/"1"',
         "lastModified": "2024-03-01T09:16:03.000Z"},
        {"status": "200 OK", "location": "Media/m/_history/2", "etag": 'W/"2"',
         "lastModified": "2024-03-01T09:16:04.123Z"},
        {"status": "201 Created", "location": "Consent/c", "etag": 'W/"1"',
         "lastModified": "2024-03-01T09:16:03.000Z"},
        {"status": "200 OK"}]
    Bundle.model_validate(response)
    assert validate_r4([response]) == []


# ---------------------------------------------------------------------------------------------
# samples/


def load(name: str) -> Any:
    return json.loads((SAMPLES / name).read_text(encoding="utf-8"))


def test_sample_bundle() -> None:
    bundle = load("bundle-transaction.json")
    Bundle.model_validate(bundle)
    sub = parse(bundle)
    assert sub.image_bytes[:3] == b"\xff\xd8\xff"
    with Image.open(io.BytesIO(sub.image_bytes)) as img:
        assert img.format == "JPEG" and img.size == (700, 500)
        assert not img.getexif()
    assert sub.meta.patient.identifier.token() == f"{PATIENT_SYSTEM}|{PATIENT_VALUE}"
    assert sub.meta.consent is not None and sub.meta.consent.purposes == ["TREAT"]
    binary_data = bundle["entry"][0]["resource"]["data"]
    assert base64.b64decode(binary_data) == sub.image_bytes


def test_sample_consent_train() -> None:
    consent = load("consent-train.json")
    Consent.model_validate(consent)
    assert consent["patient"]["identifier"] == {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}
    assert [p["code"] for p in consent["provision"]["purpose"]] == ["TRAIN"]
    assert consent["provision"]["type"] == "permit" and consent["status"] == "active"


def test_sample_metadata_wound() -> None:
    meta = PhotoMetadata.model_validate(load("metadata-wound.json"))
    assert meta.kind is PhotoKind.CLINICAL and meta.source is PhotoSource.CLINICIAN
    assert meta.patient.identifier.token() == "urn:oid:2.999.1.1|MRN-0001"
    assert meta.consent is not None
    assert (meta.consent.purposes, meta.consent.method) == (["TREAT"], ConsentMethod.VERBAL)


def test_samples_validate_with_npm_validators() -> None:
    assert validate_r4([load("bundle-transaction.json"), load("consent-train.json")]) == []


def _with_consent(jpeg: bytes, change: Any) -> dict[str, Any]:
    bundle = transaction_bundle(jpeg)
    consent = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Consent")
    change(consent)
    return bundle


@pytest.mark.parametrize(("case", "change", "error"), [
    ("another patient by reference only",
     lambda c: c.update(patient={"reference": "Patient/someone-else"}), InvalidInput),
    ("an end to its period", lambda c: c["provision"]["period"].update(end="2025-01-01"), NotSupported),
    ("another record", lambda c: c["provision"].update(data=[{"meaning": "instance",
                                                              "reference": {"reference": "Media/other"}}]),
     NotSupported),
    ("a nested deny", lambda c: c["provision"].update(provision=[{"type": "deny", "purpose": [
        {"system": codes.V3_ACT_REASON, "code": "TRAIN"}]}]), NotSupported),
    ("an actor", lambda c: c["provision"].update(actor=[{"role": {"text": "research"},
                                                          "reference": {"display": "research unit"}}]), NotSupported),
    ("collection only", lambda c: c["provision"].update(action=[{"coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "collect"}]}]), NotSupported),
])
def test_a_consent_is_refused_when_what_it_restricts_would_be_dropped(jpeg: bytes, case: str, change: Any,
                                                                      error: type[AdapterError]) -> None:
    """Review finding: a Consent in a Bundle was rebuilt from its purposes alone, as an
    open-ended, patient-wide permit: another patient named by reference, a period's end, data
    scope, nested denials, actors and actions were dropped."""
    refused(_with_consent(jpeg, change), error)


def test_a_consent_in_force_later_than_its_date_keeps_the_later_start(jpeg: bytes) -> None:
    sub = parse(_with_consent(jpeg, lambda c: c["provision"]["period"].update(start="2024-06-01")))
    assert sub.meta.consent.date.isoformat().startswith("2024-06-01")


@pytest.mark.parametrize(("date_time", "start"), [("2024-03-01T10:00:00+01:00", "2024-02-01"),
                                                  ("2024-03-01", "2024-03-05T08:00:00Z")])
def test_a_consent_date_and_period_start_of_different_precision_compare(jpeg: bytes, date_time: str,
                                                                        start: str) -> None:
    """Second diff review: comparing a date-only value with an instant raised TypeError (a 500)."""
    def change(consent: dict[str, Any]) -> None:
        consent["dateTime"] = date_time
        consent["provision"]["period"] = {"start": start}

    sub = parse(_with_consent(jpeg, change))
    later = max((date_time, start), key=lambda v: v if "T" in v else v + "T00:00:00Z")
    assert sub.meta.consent.date.isoformat()[:10] == later[:10]


# ---------------------------------------------------------------------------------------------
# ITI-65 2:3.65.4.1.3: metadata kept, refused, or warned of (adapter.mapping.document_metadata)


def _document_bundle(jpeg: bytes) -> dict[str, Any]:
    return transaction_bundle(jpeg, kind="document", consent_purposes=None, bodySite=None, laterality=None)


@pytest.mark.parametrize("rtype, status", [("DocumentReference", "entered-in-error"),
                                           ("DocumentReference", "superseded"), ("Media", "entered-in-error"),
                                           ("Media", "preparation")])
def test_a_record_whose_status_would_not_be_kept_is_refused(jpeg: bytes, rtype: str, status: str) -> None:
    """Review finding: a DocumentReference sent entered-in-error was stored as current, which
    changes what it says; it is refused (422), naming the status."""
    bundle = _document_bundle(jpeg) if rtype == "DocumentReference" else transaction_bundle(jpeg)
    bundle["entry"][1]["resource"]["status"] = status
    assert refused(bundle, BusinessRuleViolation).expression == ["Bundle.entry[1].resource.status"]


@pytest.mark.parametrize("where, expected", [
    (lambda b: b["entry"][1]["resource"], "Bundle.entry[1].resource.modifierExtension"),
    (lambda b: b["entry"][1]["resource"]["content"][0], "Bundle.entry[1].resource.content[0].modifierExtension"),
    (lambda b: b["entry"][1], "Bundle.entry[1].modifierExtension"),
])
def test_a_modifier_extension_is_refused_not_dropped(jpeg: bytes, where: Any, expected: str) -> None:
    """Review finding: a DocumentReference's modifierExtension was dropped in silence. FHIR
    extensibility: a modifier not understood must not be processed as if absent: 422."""
    bundle = _document_bundle(jpeg)
    where(bundle)["modifierExtension"] = [{"url": "http://example.org/fhir/StructureDefinition/not-final",
                                           "valueBoolean": True}]
    err = refused(bundle, BusinessRuleViolation)
    assert err.expression == [expected]
    bundle = _document_bundle(jpeg)
    bundle["entry"][1]["resource"]["implicitRules"] = "http://example.org/rules"
    assert refused(bundle, BusinessRuleViolation).expression == ["Bundle.entry[1].resource.implicitRules"]


def test_a_consent_with_a_modifier_extension_is_refused(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    bundle["entry"][2]["resource"]["provision"]["modifierExtension"] = [
        {"url": "http://example.org/fhir/StructureDefinition/revoked-pending", "valueBoolean": True}]
    err = refused(bundle, BusinessRuleViolation)
    assert err.expression == ["Bundle.entry[2].resource.provision.modifierExtension"]


def test_metadata_not_stored_as_sent_is_warned_of_element_by_element(jpeg: bytes) -> None:
    """Review finding: type and category (LOINC), securityLabel, context.facilityType,
    practiceSetting, event and period, content.format, date and docStatus were replaced or
    dropped with no warning (201, no outcome). ITI-65 2:3.65.4.1.3: a recipient that does not
    persist metadata warns; each element is named (XDSExtraMetadataNotSaved)."""
    bundle = _document_bundle(jpeg)
    document = bundle["entry"][1]["resource"]
    assert not [w for w in parse(bundle).entry_warnings.get(1, ()) if "date" not in w.expression
                and "identifier" not in w.expression]  # the adapter's own shape round-trips
    loinc = "http://loinc.org"
    document.update({
        "docStatus": "preliminary", "date": "2026-11-27T10:00:00Z",
        "type": {"coding": [{"system": loinc, "code": "34108-1"}]},
        "category": [{"coding": [{"system": loinc, "code": "11369-6"}]}],
        "securityLabel": [{"coding": [{"system": codes.V3_CONFIDENTIALITY, "code": "N"}]}],
        "context": {"facilityType": {"coding": [{"system": "http://snomed.info/sct", "code": "225732001"}]},
                    "practiceSetting": {"coding": [{"system": "http://snomed.info/sct", "code": "394802001"}]},
                    "event": [{"coding": [{"system": "http://snomed.info/sct", "code": "71388002"}]}],
                    "period": {"start": "2026-11-20", "end": "2026-11-21"}},
        "authenticator": {"display": "Dr C"},
        "extension": [*document["extension"], {"url": "http://example.org/x", "valueString": "y"}]})
    document["content"][0]["format"] = {"system": codes.IHE_FORMAT_CODE, "code": "urn:ihe:pcc:xphr:2007"}
    document["content"][0]["attachment"]["language"] = "en"
    warnings = parse(bundle).entry_warnings[1]
    assert {w.code for w in warnings} == {"XDSExtraMetadataNotSaved"}
    assert {w.severity for w in warnings} == {"warning"}
    path = "Bundle.entry[1].resource"
    named = {w.expression.removeprefix(path) for w in warnings}
    # the sender's type, category, facilityType, practiceSetting, event and format are kept (below);
    # its confidentiality N is stored as the policy's R, more restrictive
    assert named >= {".docStatus", ".date", ".securityLabel[0]", ".authenticator",
                     f".extension[{len(document['extension']) - 1}]",
                     ".content[0].attachment.language"}, named
    assert not named & {".type", ".category[0]", ".content[0].format", ".context.facilityType",
                        ".context.practiceSetting", ".context.event[0]", ".context.period.start",
                        ".context.period.end"}, named
    response = transaction_response([("", "201 Created", "")] * 2, parse(bundle).entry_warnings)
    assert validate_r4([response]) == []
    assert len(response["entry"][1]["response"]["outcome"]["issue"]) == len(warnings)


def test_media_metadata_not_stored_is_warned_of(jpeg: bytes) -> None:
    bundle = transaction_bundle(jpeg)
    media = bundle["entry"][1]["resource"]
    media["view"] = {"coding": [{"system": "http://snomed.info/sct", "code": "399067008"}]}
    media["reasonCode"] = [{"text": "wound check"}]
    warnings = parse(bundle).entry_warnings[1]
    named = {w.expression for w in warnings}
    assert {"Bundle.entry[1].resource.view", "Bundle.entry[1].resource.reasonCode"} <= named


# ---------------------------------------------------------------------------------------------
# what an MHD Document Source says of the document is kept (adapter.mapping.document_metadata)

LOINC_TYPE = {"system": codes.LOINC, "code": "34108-1", "display": "Outpatient Note"}
LOINC_CLASS = {"system": codes.LOINC, "code": "11369-6", "display": "History of Immunization"}
FACILITY = {"system": codes.SNOMED, "code": "225732001", "display": "Community hospital"}
SETTING = {"system": codes.SNOMED, "code": "394802001", "display": "General medicine"}
EVENT = {"system": codes.SNOMED, "code": "71388002", "display": "Procedure"}
FORMAT = {"system": codes.IHE_FORMAT_CODE, "code": "urn:ihe:pcc:xphr:2007"}
ENTRY_UUID = {"use": "official", "system": "urn:ietf:rfc:3986", "value": "urn:uuid:0c287d32-01e3-4d87-9953-9fcc9404eb21"}


def _mhd_document_bundle(jpeg: bytes) -> dict[str, Any]:
    bundle = _document_bundle(jpeg)
    document = bundle["entry"][1]["resource"]
    document.update({"identifier": [ENTRY_UUID], "type": {"coding": [LOINC_TYPE]},
                     "category": [{"coding": [LOINC_CLASS]}],
                     "context": {**document.get("context", {}), "facilityType": {"coding": [FACILITY]},
                                 "practiceSetting": {"coding": [SETTING]}, "event": [{"coding": [EVENT]}]}})
    document["content"][0]["format"] = FORMAT
    return bundle


def _stored(sub: Any) -> Any:
    return build_photo_resources(
        sub.meta, stored_image(size=len(sub.image_bytes)), record_id="0b9c7a51-6d35-4c0e-9a4f-2f1e5c3d7a10",
        binary_id="bin", provenance_id="prov", consent_ids=["c1", "c2"], assessment_notes=(),
        assessment_warnings=(), consent_pending=False, implied_purposes=(), tables=tables(), now=NOW)


def test_an_mhd_document_sources_metadata_is_kept_on_the_stored_document_reference(jpeg: bytes) -> None:
    """Review finding: the sender's type (LOINC 34108-1), category, context.facilityType,
    practiceSetting, event, content.format and identifier (entryUUID) were replaced by the
    adapter's or dropped, so an ITI-67 query by them found nothing. They are stored as sent (type
    instead of the kind's, which stays a category) and not warned of."""
    sub = parse(_mhd_document_bundle(jpeg))
    named = {w.expression.removeprefix("Bundle.entry[1].resource") for w in sub.entry_warnings.get(1, ())}
    assert not named & {".type", ".category[0]", ".identifier[0]", ".content[0].format", ".context.facilityType",
                        ".context.practiceSetting", ".context.event[0]"}, named
    record = _stored(sub).record
    kind = tables().kinds[PhotoKind.DOCUMENT]
    assert record["type"] == {"coding": [LOINC_TYPE]}
    assert record["category"] == [{"coding": [kind.category.as_fhir()]}, {"coding": [LOINC_CLASS]}]
    assert record["identifier"][0]["system"] == codes.SHA256_SYSTEM and record["identifier"][1:] == [ENTRY_UUID]
    assert record["context"]["facilityType"] == {"coding": [FACILITY]}
    assert record["context"]["practiceSetting"] == {"coding": [SETTING]}
    assert record["context"]["event"] == [{"coding": [EVENT]}]
    assert record["content"][0]["format"] == FORMAT
    assert [c["code"] for label in record["securityLabel"] for c in label["coding"]] == ["R"]
    assert validate_r4([record]) == []
    tokens = set(build_index(record).tokens)
    assert {("type", codes.LOINC, "34108-1"), ("category", codes.LOINC, "11369-6"),
            ("category", codes.PHOTO_KIND_SYSTEM, "document"), ("facility", codes.SNOMED, "225732001"),
            ("setting", codes.SNOMED, "394802001"), ("event", codes.SNOMED, "71388002"),
            ("format", codes.IHE_FORMAT_CODE, "urn:ihe:pcc:xphr:2007"),
            ("identifier", "urn:ietf:rfc:3986", ENTRY_UUID["value"])} <= tokens


def test_a_category_the_same_as_the_kinds_is_not_repeated_and_no_type_keeps_the_kinds(jpeg: bytes) -> None:
    bundle = _mhd_document_bundle(jpeg)
    document = bundle["entry"][1]["resource"]
    kind = tables().kinds[PhotoKind.DOCUMENT]
    document.pop("type")
    document["category"] = [{"coding": [kind.category.as_fhir()]}, {"coding": [LOINC_CLASS]}]
    record = _stored(parse(bundle)).record
    assert record["type"] == {"coding": [kind.type.as_fhir()]}
    assert record["category"] == [{"coding": [kind.category.as_fhir()]}, {"coding": [LOINC_CLASS]}]


def test_what_of_a_code_or_identifier_is_not_kept_is_warned_of(jpeg: bytes) -> None:
    """Of a CodeableConcept its codings with a system and a code and its text are kept; of an
    Identifier its use, system and value; the rest is named. An identifier in a system the adapter
    writes itself (SHA-256, the DICOM object's UID) would name other bytes or another object: not
    taken."""
    bundle = _mhd_document_bundle(jpeg)
    document = bundle["entry"][1]["resource"]
    document["type"] = {"coding": [LOINC_TYPE, {"code": "no-system"}], "text": "Outpatient note"}
    document["category"].append({"text": "free text only"})
    document["context"]["facilityType"]["extension"] = [{"url": "http://example.org/x", "valueString": "y"}]
    document["identifier"] = [{**ENTRY_UUID, "assigner": {"display": "Source"}},
                              {"system": codes.SHA256_SYSTEM, "value": "00" * 32},
                              {"system": codes.DICOM_UID_SYSTEM, "value": "urn:oid:1.2.3"}]
    sub = parse(bundle)
    warned = {w.expression.removeprefix("Bundle.entry[1].resource") for w in sub.entry_warnings[1]}
    assert {".type", ".category[1]", ".context.facilityType", ".identifier[0]", ".identifier[1]",
            ".identifier[2]"} <= warned
    record = _stored(sub).record
    assert record["type"] == {"coding": [LOINC_TYPE], "text": "Outpatient note"}
    assert record["category"][1:] == [{"coding": [LOINC_CLASS]}]
    assert record["context"]["facilityType"] == {"coding": [FACILITY]}
    assert [i["system"] for i in record["identifier"]] == [codes.SHA256_SYSTEM, ENTRY_UUID["system"]]
    assert record["identifier"][1] == ENTRY_UUID
    assert validate_r4([record]) == []


@pytest.mark.parametrize("sent, stored, warned", [("N", "R", True), ("R", "R", False), ("V", "V", False)])
def test_a_sender_may_raise_the_confidentiality_never_lower_it(jpeg: bytes, sent: str, stored: str,
                                                               warned: bool) -> None:
    """The policy's confidentiality (R) is the least a document gets; a sender's more restrictive
    one (V) is kept, on securityLabel and in meta.security of the record and its Binary (which
    every release keeps: adapter.mapping.views). Its other labels are kept, but not those the
    adapter states of each release itself (purposes of use, obligations, integrity)."""
    bundle = _mhd_document_bundle(jpeg)
    sensitivity = {"system": codes.V3_ACT_CODE, "code": "PSY"}
    bundle["entry"][1]["resource"]["securityLabel"] = [
        {"coding": [{"system": codes.V3_CONFIDENTIALITY, "code": sent}]}, {"coding": [sensitivity]},
        {"coding": [{"system": codes.V3_ACT_REASON, "code": "TRAIN"}]},
        {"coding": [{"system": codes.V3_OBSERVATION_VALUE, "code": "ANONYED"}]}]
    sub = parse(bundle)
    warned_labels = {w.expression.removeprefix("Bundle.entry[1].resource") for w in sub.entry_warnings[1]
                     if ".securityLabel" in w.expression}
    assert warned_labels == {".securityLabel[2]", ".securityLabel[3]"} | ({".securityLabel[0]"} if warned else set())
    built = _stored(sub)
    record = built.record
    assert record["securityLabel"][0]["coding"][0]["code"] == stored
    assert record["securityLabel"][1:] == [{"coding": [sensitivity]}]
    raised = [{"system": codes.V3_CONFIDENTIALITY, "code": "V", "display": "very restricted"}]
    assert record.get("meta", {}).get("security") == (raised if stored == "V" else None)
    assert built.binary.get("meta", {}).get("security") == (raised if stored == "V" else None)
    assert validate_r4([record, built.binary]) == []


def test_a_document_reference_stored_as_a_media_keeps_none_of_it(jpeg: bytes) -> None:
    """A DocumentReference whose photo kind is clinical is stored as a Media, which has no place
    for the document's codes: each is named, as before."""
    bundle = _mhd_document_bundle(jpeg)
    document = bundle["entry"][1]["resource"]
    for ext in document["extension"]:
        if ext["url"] == codes.EXT_PHOTO_KIND:
            ext["valueCode"] = "clinical"
    sub = parse(bundle)
    assert getattr(sub.meta, "document", None) is None
    warned = {w.expression.removeprefix("Bundle.entry[1].resource") for w in sub.entry_warnings[1]}
    assert {".type", ".category", ".identifier", ".content[0].format", ".context.facilityType",
            ".context.practiceSetting", ".context.event"} <= warned


# ---------------------------------------------------------------------------------------------
# several documents (ITI-65: a SubmissionSet of several DocumentReferences, each with its Binary)


def test_several_documents_each_with_its_binary_and_the_one_consent() -> None:
    images = [jpeg_bytes(64 + k, 48) for k in range(3)]
    consent = consent_resource(["TREAT"])
    sub = parse(provide_documents_bundle(images, consent=consent))
    assert [d.image_bytes for d in sub.documents] == images
    assert [(d.record_index, d.binary_index) for d in sub.documents] == [(1, 2), (3, 4), (5, 6)]
    assert sub.consent_index == 7
    assert {d.meta.patient.identifier.value for d in sub.documents} == {PATIENT["value"]}
    assert all(d.meta.consent is not None and d.meta.consent.purposes == ["TREAT"] for d in sub.documents)
    assert [d.meta.master_identifier.value for d in sub.documents if d.meta.master_identifier] == [
        "urn:oid:1.2.3.4.99.2.1", "urn:oid:1.2.3.4.99.2.2", "urn:oid:1.2.3.4.99.2.3"]
    # what each record does not keep as sent is said of its own entry
    assert {1, 3, 5} <= set(sub.entry_warnings)


def test_documents_of_two_patients_are_refused_naming_the_second() -> None:
    bundle = provide_documents_bundle([jpeg_bytes(64, 48), jpeg_bytes(65, 48)],
                                      patients=[None, {"system": PATIENT["system"], "value": "MRN-0002"}])
    assert refused(bundle, InvalidInput).expression == ["Bundle.entry[3].resource.subject"]


def test_two_records_naming_one_binary_are_refused() -> None:
    bundle = provide_documents_bundle([jpeg_bytes(64, 48), jpeg_bytes(65, 48)])
    attachment = bundle["entry"][3]["resource"]["content"][0]["attachment"]
    attachment["url"] = bundle["entry"][2]["fullUrl"]
    del attachment["size"], attachment["hash"]
    assert refused(bundle, InvalidInput).expression == ["Bundle.entry[3].resource.content[0].attachment.url"]


def test_more_documents_than_a_transaction_carries_are_too_large() -> None:
    images = [jpeg_bytes(16 + k, 16) for k in range(MAX_DOCUMENTS + 1)]
    err = refused(provide_documents_bundle(images), PayloadTooLarge)
    assert err.expression == [f"Bundle.entry[{1 + 2 * MAX_DOCUMENTS}]"]
    assert len(parse(provide_documents_bundle(images[:MAX_DOCUMENTS])).documents) == MAX_DOCUMENTS
