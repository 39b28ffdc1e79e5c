"""Photo + metadata → R4 Media / DocumentReference, Binary, Consent, Provenance; and the search
index read back from them. Every combination of kind and source is validated with the
fhir.resources R4B models and with the npm validators (0 errors)."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import product
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from PIL import Image, PngImagePlugin

from adapter.consent import grants_from_consent
from adapter.consent.ingest import (
    PENDING_NOTES,
    PENDING_WARNING,
    PENDING_WARNING_NO_BREAK_GLASS,
    documented_later,
)
from adapter.errors import ImageTooLarge, InvalidInput, UndecodableImage, UnknownCode, UnsupportedMediaType
from adapter.mapping import codes
from adapter.mapping.consent import build_consent_resource
from adapter.mapping.fhir_r4 import fhir_date, fhir_datetime, fhir_instant
from adapter.mapping.photo import PhotoResources, build_photo_resources, consent_documented, index_resource
from adapter.model.image import StoredImage
from adapter.model.photo import (
    Colleague,
    ConsentMethod,
    Identifier,
    PhotoKind,
    PhotoMetadata,
    PhotoSource,
    TransactionPhotoMetadata,
)
from tests.conftest import ROOT
from tests.support.fhir_factories import NOW, PATIENT_SYSTEM, PATIENT_VALUE, metadata, stored_image, tables
from tests.support.fhir_validator import validate_r4

pytestmark = pytest.mark.unit

COMBINATIONS = list(product(PhotoKind, PhotoSource))
RECORD_ID = "0b9c7a51-6d35-4c0e-9a4f-2f1e5c3d7a10"


def build(meta: PhotoMetadata, image: StoredImage | None = None, *, pending: bool = False,
          notes: tuple[str, ...] | None = None, warnings: tuple[str, ...] = ()) -> PhotoResources:
    """Build as the ingest service does: the kind's warning and the colleague discussion as
    notes, implied TREAT for a patient's photo without a consent statement."""
    t = tables()
    if notes is None:
        colleague = meta.colleague
        discussion = (f"Discussed with {colleague.name}: {colleague.discussion_note}"
                      if colleague is not None and colleague.discussion_note else None)
        notes = tuple(n for n in (t.kinds[meta.kind].warning, discussion) if n)
    implied = ("TREAT",) if meta.source is PhotoSource.PATIENT and meta.consent is None else ()
    return build_photo_resources(
        meta, image or stored_image(quality_warnings=("image is blurred",)), record_id=RECORD_ID,
        binary_id="bin-1", provenance_id="prov-1", consent_ids=["consent-1", "consent-2"],
        assessment_notes=notes, assessment_warnings=warnings, consent_pending=pending,
        implied_purposes=implied, tables=t, now=NOW)


def r4b_validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def ext(resource: dict[str, Any], url: str) -> list[Any]:
    return [e for e in resource.get("extension", []) if e["url"] == url]


# ---------------------------------------------------------------------------------------------
# every combination


COMBINATION_IDS = [f"{k.value}-{s.value}" for k, s in COMBINATIONS]


@pytest.mark.parametrize(("kind", "source"), COMBINATIONS, ids=COMBINATION_IDS)
def test_every_kind_and_source_validates_with_r4b_models(kind: PhotoKind, source: PhotoSource) -> None:
    pending = kind is PhotoKind.CLINICAL and source is PhotoSource.CLINICIAN
    built = build(metadata(kind, source), pending=pending)
    expected = tables().kinds[kind].resource
    assert built.record["resourceType"] == expected
    assert built.record_ref == f"{expected}/{RECORD_ID}"
    for resource in built.all():
        r4b_validate(resource)
        assert index_resource(resource) is not None


def test_every_kind_and_source_validates_with_npm_validators() -> None:
    resources: list[dict[str, Any]] = []
    for kind, source in COMBINATIONS:
        resources += build(metadata(kind, source), pending=True).all()
        # the sparse end: no author, encounter, time, site, note, device or title
        sparse = metadata(kind, source, author=None, encounter=None, takenAt=None, bodySite=None,
                          laterality=None, note=None, device=None, title=None)
        resources += build(sparse, stored_image(capture_time=None, device_name=None)).all()
    assert validate_r4(resources) == []


# ---------------------------------------------------------------------------------------------
# the record


def test_media_for_clinical_photo() -> None:
    built = build(metadata("clinical", "clinician"), pending=True)
    media = built.record
    assert media["status"] == "completed"
    assert media["type"]["coding"][0] == {"system": codes.MEDIA_TYPE, "code": "image", "display": "Image"}
    assert media["modality"]["coding"][0]["code"] == "XC"
    assert media["subject"] == {"reference": "Patient/p-1", "type": "Patient",
                                "identifier": {"system": PATIENT_SYSTEM, "value": PATIENT_VALUE}}
    assert media["identifier"] == [{"system": codes.SHA256_SYSTEM, "value": "a" * 64}]
    assert media["createdDateTime"] == "2024-03-01T10:15:00+01:00"
    assert media["issued"] == "2024-03-01T09:16:02.120Z"
    assert media["operator"] == {"reference": "Practitioner/dr-a", "display": "Dr A"}
    assert media["encounter"] == {"reference": "Encounter/e-1", "type": "Encounter"}
    assert media["deviceName"] == "Acme Camera X1"
    assert (media["width"], media["height"]) == (700, 500)
    assert media["content"] == {"contentType": "image/jpeg", "url": "Binary/bin-1", "size": 23456,
                                "title": "Wound, right forearm", "creation": "2024-03-01T10:15:00+01:00"}
    assert "hash" not in media["content"]  # R4 hash is SHA-1; the SHA-256 is the identifier
    assert [e["valueCode"] for e in ext(media, codes.EXT_PHOTO_KIND)] == ["clinical"]
    assert [e["valueCode"] for e in ext(media, codes.EXT_PHOTO_SOURCE)] == ["clinician"]
    assert [e["valueCode"] for e in ext(media, codes.EXT_CAPTURE_DEVICE)] == ["organisation"]
    assert [e["valueBoolean"] for e in ext(media, codes.EXT_CONSENT_PENDING)] == [True]
    assert [e["valueString"] for e in ext(media, codes.EXT_QUALITY_WARNING)] == ["image is blurred"]
    texts = [n["text"] for n in media["note"]]
    assert texts == ["Taken after dressing removal", "Quality warning: image is blurred"]


def test_body_site_is_one_coding_with_text_and_laterality_extension() -> None:
    site = build(metadata("clinical", "clinician")).record["bodySite"]
    assert site["coding"] == [{"system": codes.SNOMED, "code": "14975008", "display": "Forearm"}]
    assert site["text"] == "Forearm, right"
    right = {"system": codes.SNOMED, "code": "24028007", "display": "Right"}
    assert site["extension"] == [{"url": codes.EXT_LATERALITY, "valueCoding": right}]
    without = build(metadata("clinical", "clinician", laterality=None)).record["bodySite"]
    assert "extension" not in without and without["text"] == "Forearm"


def test_unknown_body_site_is_refused() -> None:
    with pytest.raises(UnknownCode) as err:
        build(metadata("clinical", "clinician", bodySite="123456789"))
    assert err.value.expression == ["bodySite"]


def test_consent_pending_extension_only_when_pending() -> None:
    assert ext(build(metadata("clinical", "clinician")).record, codes.EXT_CONSENT_PENDING) == []


def test_secondary_photo_carries_the_warning_note() -> None:
    warning = tables().kinds[PhotoKind.SECONDARY].warning
    assert warning
    media = build(metadata("secondary", "clinician")).record
    assert media["modality"]["coding"][0]["code"] == "OT"
    assert warning in [n["text"] for n in media["note"]]


def test_external_colleague_note_and_operator() -> None:
    media = build(metadata("clinical", "colleague-external")).record
    assert "Discussed with Dr B: Discussed by phone: refer to plastics" in [n["text"] for n in media["note"]]
    assert media["operator"] == {"display": "Dr B"}


def test_patient_photo_has_no_operator() -> None:
    assert "operator" not in build(metadata("clinical", "patient")).record


def test_assessment_warnings_are_noted_once() -> None:
    media = build(metadata("clinical", "clinician"), notes=("shared text",),
                  warnings=("shared text", "consent pending: readable only under break-glass")).record
    texts = [n["text"] for n in media["note"]]
    assert texts.count("shared text") == 1
    assert "consent pending: readable only under break-glass" in texts
    assert all("time" in n for n in media["note"][1:])


def test_document_reference_for_document_kind() -> None:
    built = build(metadata("document", "clinician", note="Lab result, paper copy"), pending=True)
    doc = built.record
    t = tables()
    assert doc["resourceType"] == "DocumentReference"
    assert doc["status"] == "current"
    assert doc["masterIdentifier"] == {"system": codes.URN_IETF_RFC_3986, "value": f"urn:uuid:{RECORD_ID}"}
    assert doc["identifier"] == [{"system": codes.SHA256_SYSTEM, "value": "a" * 64}]
    assert doc["type"]["coding"] == [t.kinds[PhotoKind.DOCUMENT].type.as_fhir()]  # type: ignore[union-attr]
    assert doc["category"] == [{"coding": [t.kinds[PhotoKind.DOCUMENT].category.as_fhir()]}]
    assert doc["date"] == "2024-03-01T09:16:02.120Z"
    assert doc["author"] == [{"reference": "Practitioner/dr-a", "display": "Dr A"}]
    assert doc["description"].split("\n\n")[:2] == ["Wound, right forearm", "Lab result, paper copy"]
    assert doc["securityLabel"] == [{"coding": [{"system": codes.V3_CONFIDENTIALITY, "code": "R",
                                                 "display": "restricted"}]}]
    content = doc["content"][0]
    assert content["attachment"]["url"] == "Binary/bin-1" and "hash" not in content["attachment"]
    assert content["format"] == {"system": codes.IHE_FORMAT_CODE, "code": codes.FORMAT_MIME_TYPE_SUFFICIENT}
    assert doc["context"] == {"encounter": [{"reference": "Encounter/e-1", "type": "Encounter"}],
                              "period": {"start": "2024-03-01T10:15:00+01:00", "end": "2024-03-01T10:15:00+01:00"}}
    assert [e["valueBoolean"] for e in ext(doc, codes.EXT_CONSENT_PENDING)] == [True]
    assert "bodySite" not in doc


def test_a_consent_pending_record_documented_later_says_when_and_by_which_consent_in_place_of_pending() -> None:
    """Clinical safety review 5: a consent-pending record kept saying "consent pending: readable
    only under break-glass" and its consent-pending extension once a Consent documented its
    consent for care. Its next version has no such extension, and the note saying when and by
    which Consent stands where the pending note stood (a Media's note, a DocumentReference's
    description paragraph), or last where there was none; the rest is as it was."""
    later = NOW + timedelta(days=2)
    note = documented_later(["Consent/c-9/_history/1"], fhir_instant(later))
    assert note.startswith("consent for care documented after the photo was stored: Consent/c-9/_history/1, "
                           f"recorded {fhir_instant(later)}")
    media = build(metadata("clinical", "clinician", note="Pressure wound"), pending=True,
                  warnings=(PENDING_WARNING,)).record
    texts = [n["text"] for n in media["note"]]
    documented = consent_documented(media, note=note, replaced=PENDING_NOTES, now=later)
    assert ext(documented, codes.EXT_CONSENT_PENDING) == [] and ext(media, codes.EXT_CONSENT_PENDING) != []
    assert [n["text"] for n in documented["note"]] == [note if t == PENDING_WARNING else t for t in texts]
    assert {"time": fhir_instant(later), "text": note} in documented["note"]
    assert {k: v for k, v in documented.items() if k not in ("note", "extension")} == \
        {k: v for k, v in media.items() if k not in ("note", "extension")}
    doc = build(metadata("document", "clinician", note="Lab result, paper copy"), pending=True,
                warnings=(PENDING_WARNING_NO_BREAK_GLASS,)).record
    paragraphs = doc["description"].split("\n\n")
    documented_doc = consent_documented(doc, note=note, replaced=PENDING_NOTES, now=later)
    assert documented_doc["description"].split("\n\n") == \
        [note if p == PENDING_WARNING_NO_BREAK_GLASS else p for p in paragraphs]
    assert ext(documented_doc, codes.EXT_CONSENT_PENDING) == []
    received = {**media, "note": [n for n in media["note"] if n["text"] != PENDING_WARNING]}  # none to replace
    assert consent_documented(received, note=note, replaced=PENDING_NOTES, now=later)["note"][-1]["text"] == note
    assert validate_r4([documented, documented_doc]) == []


def _sent(**document: Any) -> TransactionPhotoMetadata:
    """The metadata of a document read from a transaction, with what its Document Source said
    (no consent: a transaction's is the Consent it carries, adapter.mapping.transaction)."""
    data = metadata("document", "clinician").model_dump(by_alias=True, exclude_none=True, exclude={"consent"})
    return TransactionPhotoMetadata.model_validate({**data, "document": document})


LOINC_TYPE = {"coding": [{"system": codes.LOINC, "code": "34108-1", "display": "Outpatient Note"}]}
LOINC_CATEGORY = {"coding": [{"system": codes.LOINC, "code": "11369-6"}]}
ENTRY_UUID = {"use": "official", "system": codes.URN_IETF_RFC_3986,
              "value": "urn:uuid:0c287d32-01e3-4d87-9953-9fcc9404eb21"}


def test_a_document_sources_metadata_is_on_the_document_reference() -> None:
    """Review finding: the sender's type, category, identifier (entryUUID), context codes and
    format were replaced or dropped. Its type is the type (R4 type is 0..1, its codings one
    concept), the photo kind stays the first category."""
    t = tables()
    kind = t.kinds[PhotoKind.DOCUMENT]
    facility = {"coding": [{"system": codes.SNOMED, "code": "225732001"}]}
    setting = {"coding": [{"system": codes.SNOMED, "code": "394802001"}]}
    event = {"coding": [{"system": codes.SNOMED, "code": "71388002"}]}
    fmt = {"system": codes.IHE_FORMAT_CODE, "code": "urn:ihe:pcc:xphr:2007"}
    built = build(_sent(type=LOINC_TYPE, category=[{"coding": [kind.category.as_fhir()]}, LOINC_CATEGORY],
                        identifier=[ENTRY_UUID], facility_type=facility, practice_setting=setting, event=[event],
                        format=fmt))
    doc = built.record
    assert doc["type"] == LOINC_TYPE
    assert doc["category"] == [{"coding": [kind.category.as_fhir()]}, LOINC_CATEGORY]  # the kind's once
    assert doc["identifier"] == [{"system": codes.SHA256_SYSTEM, "value": "a" * 64}, ENTRY_UUID]
    assert doc["content"][0]["format"] == fmt
    assert doc["context"] == {"encounter": [{"reference": "Encounter/e-1", "type": "Encounter"}], "event": [event],
                              "period": {"start": "2024-03-01T10:15:00+01:00", "end": "2024-03-01T10:15:00+01:00"}, "facilityType": facility,
                              "practiceSetting": setting}
    assert doc["securityLabel"] == [{"coding": [{"system": codes.V3_CONFIDENTIALITY, "code": "R",
                                                 "display": "restricted"}]}]
    assert "meta" not in doc and "meta" not in built.binary
    for resource in built.all():
        r4b_validate(resource)
    assert validate_r4(built.all()) == []


def test_a_document_sources_more_restrictive_confidentiality_labels_the_record_and_its_binary() -> None:
    psy = {"coding": [{"system": codes.V3_ACT_CODE, "code": "PSY"}]}
    built = build(_sent(confidentiality="V", security_label=[psy]))
    very = {"system": codes.V3_CONFIDENTIALITY, "code": "V", "display": "very restricted"}
    assert built.record["securityLabel"] == [{"coding": [very]}, psy]
    assert built.record["meta"] == {"security": [very]} and built.binary["meta"] == {"security": [very]}
    assert list(built.record)[:3] == ["resourceType", "id", "meta"]
    # a less restrictive one than the policy's (R) is never stored (document_metadata does not pass it)
    lowered = build(_sent(confidentiality="N"))
    assert lowered.record["securityLabel"][0]["coding"][0]["code"] == "R" and "meta" not in lowered.record
    assert validate_r4([built.record, built.binary]) == []


def test_post_photos_metadata_takes_no_document_metadata() -> None:
    """What a Document Source said is read from a transaction only: POST /photos's metadata has
    no such member (its model forbids unknown members)."""
    data = metadata("document", "clinician").model_dump(by_alias=True, exclude_none=True)
    with pytest.raises(ValueError):
        PhotoMetadata.model_validate({**data, "document": {"type": LOINC_TYPE}})


def test_document_reference_without_uuid_id_has_no_master_identifier() -> None:
    t = tables()
    built = build_photo_resources(
        metadata("document", "clinician"), stored_image(), record_id="doc-1", binary_id="b",
        provenance_id="p", consent_ids=["c"], assessment_notes=(), assessment_warnings=(),
        consent_pending=False, implied_purposes=(), tables=t, now=NOW)
    assert "masterIdentifier" not in built.record


def test_binary_has_security_context_and_no_data() -> None:
    for kind in PhotoKind:
        built = build(metadata(kind, "clinician"))
        assert built.binary == {"resourceType": "Binary", "id": "bin-1", "contentType": "image/jpeg",
                                "securityContext": {"reference": built.record_ref}}


def test_no_gps_or_serial_anywhere() -> None:
    image = stored_image(removed=("EXIF GPSInfo", "EXIF BodySerialNumber", "XMP"), quality_warnings=())
    for kind, source in COMBINATIONS:
        text = json.dumps(build(metadata(kind, source), image).all()).lower()
        assert "gps" not in text and "serial" not in text and "exif" not in text and "xmp" not in text


# ---------------------------------------------------------------------------------------------
# times


def test_naive_capture_time_gives_a_date_only_datetime() -> None:
    media = build(metadata("clinical", "clinician", takenAt=None)).record
    assert media["createdDateTime"] == "2024-03-01"
    assert media["content"]["creation"] == "2024-03-01"


def test_time_helpers() -> None:
    aware = datetime(2024, 3, 1, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert fhir_datetime(aware) == "2024-03-01T23:30:00-05:00"
    assert fhir_datetime(datetime(2024, 3, 1, 23, 30)) == "2024-03-01"
    assert fhir_datetime(date(2024, 3, 1)) == "2024-03-01"
    assert fhir_date(aware) == "2024-03-02"  # the UTC date: never later than the instant
    assert fhir_instant(aware) == "2024-03-02T04:30:00.000Z"
    with pytest.raises(ValueError):
        fhir_instant(datetime(2024, 3, 1))


# ---------------------------------------------------------------------------------------------
# consents


def test_explicit_consent() -> None:
    meta = metadata("clinical", "clinician", consent={
        "purposes": ["TREAT", "TRAIN"], "method": "written", "date": "2024-02-28",
        "form": "JVBERi0xLjQKJSVFT0YK", "recordedBy": {"reference": "Practitioner/nurse-1"}})
    (consent,) = build(meta).consents
    assert consent["id"] == "consent-1"
    assert consent["status"] == "active"
    assert consent["scope"]["coding"][0]["code"] == "patient-privacy"
    assert consent["category"][0]["coding"][0] == {"system": codes.LOINC, "code": "59284-0",
                                                   "display": "Patient Consent"}
    assert consent["patient"]["identifier"] == {"system": PATIENT_SYSTEM, "value": PATIENT_VALUE}
    assert consent["performer"] == [consent["patient"]]
    org_id = {"system": "urn:ietf:rfc:3986", "value": "urn:oid:2.999.1"}
    assert consent["organization"] == [{"identifier": org_id, "display": "Example Hospital"}]
    assert consent["policy"] == [{"uri": tables().policy.uri}]
    assert consent["policyRule"]["coding"][0]["code"] == "OPTIN"
    assert consent["dateTime"] == "2024-02-28"
    assert consent["sourceAttachment"]["contentType"] == "application/pdf"
    assert consent["sourceAttachment"]["size"] == len(b"%PDF-1.4\n%%EOF\n")
    assert [e["valueCode"] for e in ext(consent, codes.EXT_CONSENT_METHOD)] == ["written"]
    assert [e["valueReference"] for e in ext(consent, codes.EXT_CONSENT_RECORDED_BY)] == [
        {"reference": "Practitioner/nurse-1"}]
    provision = consent["provision"]
    assert provision["type"] == "permit" and provision["period"] == {"start": "2024-02-28"}
    assert [a["coding"][0]["code"] for a in provision["action"]] == ["collect", "use"]
    assert provision["purpose"] == [
        {"system": codes.V3_ACT_REASON, "code": "TREAT", "display": "treatment"},
        {"system": codes.V3_ACT_REASON, "code": "TRAIN", "display": "training"}]
    assert provision["data"] == [{"meaning": "instance", "reference": {"reference": f"Media/{RECORD_ID}"}}]


@pytest.mark.parametrize("method", ["verbal", "written", "implied"])
@pytest.mark.parametrize("kind", ["clinical", "document"])
def test_a_consent_given_with_a_photo_is_that_photos_consent(method: str, kind: str) -> None:
    """Review finding: a verbal or written statement sent with one photo was recorded as a
    patient-wide Consent (no provision.data): it opened the patient's earlier photos to TRAIN,
    covered later photos sent without any consent and documented consent-pending ones. Every
    statement sent with a photo now names that photo's record (which governs its Binary and
    Provenance), as the implied one did."""
    source = "patient" if method == "implied" else "clinician"
    purposes = ["TREAT"] if method == "implied" else ["TREAT", "TRAIN"]
    built = build(metadata(kind, source, consent={"purposes": purposes, "method": method}))
    (consent,) = built.consents
    assert consent["provision"]["data"] == [{"meaning": "instance", "reference": {"reference": built.record_ref}}]
    (grant,) = grants_from_consent(consent)
    assert grant.data_refs == frozenset({built.record_ref})
    assert built.binary["securityContext"] == {"reference": built.record_ref}


def test_verbal_consent_is_recorded_by_the_author_and_dated_now() -> None:
    (consent,) = build(metadata("clinical", "clinician")).consents
    assert consent["dateTime"] == "2024-03-01T09:16:02.120+00:00"
    assert consent["provision"]["period"]["start"] == consent["dateTime"]
    assert [e["valueReference"] for e in ext(consent, codes.EXT_CONSENT_RECORDED_BY)] == [
        {"reference": "Practitioner/dr-a", "display": "Dr A"}]
    assert "sourceAttachment" not in consent


def test_implied_consent_covers_only_this_photo() -> None:
    built = build(metadata("clinical", "patient"))
    (consent,) = built.consents
    assert consent["policyRule"]["coding"][0]["code"] == "IMPLIED"
    assert [e["valueCode"] for e in ext(consent, codes.EXT_CONSENT_METHOD)] == ["implied"]
    assert consent["provision"]["data"] == [
        {"meaning": "instance", "reference": {"reference": built.record_ref}}]
    assert [p["code"] for p in consent["provision"]["purpose"]] == ["TREAT"]


def test_patient_with_statement_and_implied_purposes_gets_two_consents() -> None:
    t = tables()
    meta = metadata("clinical", "patient", consent={"purposes": ["TRAIN"], "method": "written"})
    built = build_photo_resources(
        meta, stored_image(), record_id=RECORD_ID, binary_id="b", provenance_id="p", consent_ids=["c1", "c2"],
        assessment_notes=(), assessment_warnings=(), consent_pending=False, implied_purposes=("TREAT",),
        tables=t, now=NOW)
    assert [c["id"] for c in built.consents] == ["c1", "c2"]
    assert [c["policyRule"]["coding"][0]["code"] for c in built.consents] == ["OPTIN", "IMPLIED"]
    with pytest.raises(ValueError):
        build_photo_resources(
            meta, stored_image(), record_id=RECORD_ID, binary_id="b", provenance_id="p", consent_ids=["c1"],
            assessment_notes=(), assessment_warnings=(), consent_pending=False, implied_purposes=("TREAT",),
            tables=t, now=NOW)


def test_consents_read_back_as_grants() -> None:
    """The consent reader (adapter.consent.grants) understands what we write."""
    built = build(metadata("clinical", "patient"))
    (grant,) = grants_from_consent(built.consents[0])
    assert grant.implied and grant.method is ConsentMethod.IMPLIED
    assert grant.data_refs == frozenset({built.record_ref})
    assert grant.purposes == frozenset({"TREAT"})
    assert grant.period_start is not None and grant.period_start <= NOW
    (explicit,) = grants_from_consent(build(metadata("clinical", "clinician")).consents[0])
    assert not explicit.implied and explicit.method is ConsentMethod.VERBAL
    assert explicit.decision == "permit" and explicit.data_refs == frozenset({f"Media/{RECORD_ID}"})


def test_build_consent_resource_alone() -> None:
    t = tables()
    consent = build_consent_resource(
        consent_id="c-train", patient=metadata().patient, purposes=["TRAIN", "TRAIN"],
        method=ConsentMethod.WRITTEN, tables=t, now=NOW, consent_date=date(2024, 2, 1),
        form=base64.b64encode(_scan_png()).decode())
    assert [p["code"] for p in consent["provision"]["purpose"]] == ["TRAIN"]
    assert consent["sourceAttachment"]["contentType"] == "image/png"
    assert b"OWNER-Jane-Roe" not in base64.b64decode(consent["sourceAttachment"]["data"])  # its text chunk went
    r4b_validate(consent)
    with pytest.raises(InvalidInput) as err:
        build_consent_resource(consent_id="x", patient=metadata().patient, purposes=["TREAT"],
                               method=ConsentMethod.WRITTEN, tables=t, now=NOW, form="not base64!")
    assert err.value.expression == ["consent.form"]
    with pytest.raises(InvalidInput):
        build_consent_resource(consent_id="x", patient=metadata().patient, purposes=[],
                               method=ConsentMethod.VERBAL, tables=t, now=NOW)


# ---------------------------------------------------------------------------------------------
# provenance


def agents(provenance: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(a["type"]["coding"][0]["code"], a["who"]) for a in provenance["agent"]]


def test_provenance_common_shape() -> None:
    built = build(metadata("clinical", "clinician"))
    prov = built.provenance
    assert prov["id"] == "prov-1"
    assert prov["target"] == [{"reference": built.record_ref}, {"reference": "Binary/bin-1"}]
    assert prov["occurredDateTime"] == "2024-03-01T10:15:00+01:00"
    assert prov["recorded"] == "2024-03-01T09:16:02.120Z"
    assert prov["activity"]["coding"] == [{"system": codes.V3_DATA_OPERATION, "code": "CREATE"}]
    assert prov["reason"][0]["coding"][0]["code"] == "TREAT"
    assert prov["policy"] == [tables().policy.uri]
    assert prov["entity"] == [{"role": "source", "what": {
        "identifier": {"system": codes.SHA256_SYSTEM, "value": "b" * 64}, "display": "received file"}}]
    assert agents(prov) == [("author", {"reference": "Practitioner/dr-a", "display": "Dr A"}),
                            ("enterer", {"display": "clinical-image-adapter"})]


def test_provenance_of_colleague_photo() -> None:
    prov = build(metadata("clinical", "colleague-external")).provenance
    author = prov["agent"][0]
    assert author["who"] == {"display": "Dr B"} and author["onBehalfOf"] == {"display": "Other Hospital"}
    assert agents(prov)[1] == ("performer", {"reference": "Practitioner/dr-a", "display": "Dr A"})


def test_an_internal_colleague_who_names_no_organisation_acts_for_the_organisations_own() -> None:
    """Rules review: the Provenance of an internal colleague's photo named no organisation; the
    guidance has the sender's organisation beside the sender (here: the organisation's own)."""
    meta = metadata("clinical", "colleague-internal").model_copy(update={
        "colleague": Colleague(name="Dr In")})
    author = build(meta).provenance["agent"][0]
    own = tables().policy.organisation
    assert author["who"] == {"display": "Dr In"}
    assert author["onBehalfOf"] == {"identifier": {"system": own.identifier.system, "value": own.identifier.value},
                                    "display": own.name}


def test_provenance_of_patient_photo() -> None:
    prov = build(metadata("clinical", "patient", author=None)).provenance
    patient = {"reference": "Patient/p-1", "type": "Patient",
               "identifier": {"system": PATIENT_SYSTEM, "value": PATIENT_VALUE}}
    assert agents(prov) == [("informant", patient), ("enterer", {"display": "clinical-image-adapter"})]


# ---------------------------------------------------------------------------------------------
# search index


def test_index_of_media() -> None:
    built = build(metadata("clinical", "clinician"))
    index = index_resource(built.record)
    assert index.patient == Identifier(system=PATIENT_SYSTEM, value=PATIENT_VALUE)
    assert index.patient_reference == "Patient/p-1"
    assert index.date == datetime(2024, 3, 1, 9, 15, tzinfo=UTC)
    assert index.status == "completed"
    assert ("identifier", codes.SHA256_SYSTEM, "a" * 64) in index.tokens
    assert ("type", codes.MEDIA_TYPE, "image") in index.tokens
    assert ("modality", codes.DCM, "XC") in index.tokens
    assert ("kind", None, "clinical") in index.tokens
    assert ("category", codes.PHOTO_KIND_SYSTEM, "clinical") in index.tokens
    assert ("site", codes.SNOMED, "14975008") in index.tokens


def test_index_of_document_reference_consent_provenance_binary() -> None:
    built = build(metadata("document", "patient"))
    doc = index_resource(built.record)
    assert doc.date == NOW.replace(microsecond=120000) and doc.status == "current"
    assert ("category", codes.PHOTO_KIND_SYSTEM, "document") in doc.tokens
    consent = index_resource(built.consents[0])
    assert consent.patient == Identifier(system=PATIENT_SYSTEM, value=PATIENT_VALUE)
    assert consent.status == "active" and consent.date is not None
    assert ("purpose", codes.V3_ACT_REASON, "TREAT") in consent.tokens
    assert ("category", codes.LOINC, "59284-0") in consent.tokens
    prov = index_resource(built.provenance)
    assert prov.date == datetime(2024, 3, 1, 9, 16, 2, 120000, tzinfo=UTC)
    assert ("target", None, built.record_ref) in prov.tokens
    assert index_resource(built.binary).tokens == ()
    with pytest.raises(ValueError):
        index_resource({"resourceType": "Patient"})



_LAST_US = 999999


@pytest.mark.parametrize(("value", "first", "last"), [
    ("2024", datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 12, 31, 23, 59, 59, _LAST_US, tzinfo=UTC)),
    ("2024-02", datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 29, 23, 59, 59, _LAST_US, tzinfo=UTC)),
    ("2024-06-10", datetime(2024, 6, 10, tzinfo=UTC), datetime(2024, 6, 10, 23, 59, 59, _LAST_US, tzinfo=UTC)),
    ("2024-06-10T14:30:00+02:00", datetime(2024, 6, 10, 12, 30, tzinfo=UTC),
     datetime(2024, 6, 10, 12, 30, 0, _LAST_US, tzinfo=UTC)),
    ("2024-06-10T12:30:00.12Z", datetime(2024, 6, 10, 12, 30, 0, 120000, tzinfo=UTC),
     datetime(2024, 6, 10, 12, 30, 0, 129999, tzinfo=UTC)),
    # a time without its zone: read as UTC, as every zone-less value the adapter indexes
    ("2024-06-10T12:30:00", datetime(2024, 6, 10, 12, 30, tzinfo=UTC),
     datetime(2024, 6, 10, 12, 30, 0, _LAST_US, tzinfo=UTC)),
    ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), datetime.max.replace(tzinfo=UTC)),
])
def test_a_date_is_indexed_as_the_range_of_its_precision(value: str, first: datetime, last: datetime) -> None:
    """search.html#date: a target date is an implicit range (a day, a month, a second, the
    digits of a fraction): Media created/date, DocumentReference creation and Consent date are
    indexed as their first and last instants (test seen failing: a day was its first instant
    alone, a month none)."""
    media = index_resource({"resourceType": "Media", "status": "completed", "createdDateTime": value,
                            "content": {"contentType": "image/jpeg"}})
    assert (media.date, media.date_last) == (first, last)
    doc = index_resource({"resourceType": "DocumentReference", "status": "current", "date": "2024-06-10T12:30:00.120Z",
                          "content": [{"attachment": {"contentType": "image/jpeg", "creation": value}}]})
    assert (doc.creation, doc.creation_last) == (first, last)
    assert (doc.date, doc.date_last) == (datetime(2024, 6, 10, 12, 30, 0, 120000, tzinfo=UTC),
                                         datetime(2024, 6, 10, 12, 30, 0, 120999, tzinfo=UTC))
    consent = index_resource({"resourceType": "Consent", "status": "active", "dateTime": value})
    assert (consent.date, consent.date_last) == (first, last)


def test_a_consent_form_scan_over_the_pixel_limit_is_refused_before_it_is_inflated(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review finding: a PNG form was inflated whole (a decompression bomb), with no pixel limit
    and no decode proof. The policy's limit is checked from its header, as a photo's is."""
    import zlib
    big = Image.new("L", (300, 200), 0)
    buf = io.BytesIO()
    big.save(buf, "PNG")
    t = tables()
    strict = dataclasses.replace(t, policy=t.policy.model_copy(update={
        "limits": t.policy.limits.model_copy(update={"max_pixels": 50_000})}))
    inflated: list[int] = []
    decompressobj = zlib.decompressobj
    monkeypatch.setattr(zlib, "decompressobj", lambda *a, **k: inflated.append(1) or decompressobj(*a, **k))
    with pytest.raises(ImageTooLarge) as err:
        build_consent_resource(consent_id="c", patient=metadata().patient, purposes=["TRAIN"],
                               method=ConsentMethod.WRITTEN, tables=strict, now=NOW,
                               form=base64.b64encode(buf.getvalue()).decode())
    assert err.value.expression == ["consent.form"] and inflated == []
    with pytest.raises(UndecodableImage):
        build_consent_resource(consent_id="c", patient=metadata().patient, purposes=["TRAIN"],
                               method=ConsentMethod.WRITTEN, tables=t, now=NOW,
                               form=base64.b64encode(buf.getvalue()[:-40] + buf.getvalue()[-12:]).decode())


def _scan_png() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "OWNER-Jane-Roe")
    buf = io.BytesIO()
    Image.new("L", (20, 10), 200).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def test_a_consent_form_is_a_pdf_or_a_scan_without_its_metadata() -> None:
    """Rules review: the form was stored as sent, an HTML page or a phone photo with its GPS
    and owner name included, under whatever content type the sender claimed."""
    def form(raw: bytes, content_type: str | None = None) -> dict[str, Any]:
        consent = build_consent_resource(consent_id="c", patient=metadata().patient, purposes=["TRAIN"],
                                         method=ConsentMethod.WRITTEN, tables=tables(), now=NOW,
                                         form=base64.b64encode(raw).decode(), form_content_type=content_type)
        return dict(consent["sourceAttachment"])

    wound = (ROOT / "samples" / "wound.jpg").read_bytes()
    assert b"Jane Example" in wound
    scan = form(wound)
    assert scan["contentType"] == "image/jpeg" and b"Jane Example" not in base64.b64decode(scan["data"])
    assert form(b"%PDF-1.4\n%%EOF\n")["contentType"] == "application/pdf"
    for raw, claimed in ((b"<html>consent</html>", None), (b"<html>consent</html>", "application/pdf"),
                         (wound, "application/pdf")):
        with pytest.raises(UnsupportedMediaType):
            form(raw, claimed)
