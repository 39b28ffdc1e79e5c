"""FHIR R4 RESTful API conformance (http.html, search.html, bundle.html) as a FHIR client meets
it, over the real HTTP app on a real SQLite store (and PostgreSQL where the store takes part):
what the review of the REST API found."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from tests.conftest import ROOT, record_emitted
from tests.support.app import (
    PATIENT,
    adapter_client,
    as_purpose,
    consent_resource,
    metadata,
    post_photo,
    seen_as,
)
from tests.support.postgres import postgres_schema

SAMPLES = ROOT / "samples"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
TREAT = as_purpose("TREAT")


def _consents(client) -> int:
    return client.get("/fhir/Consent?_summary=count", headers=TREAT).json()["total"]


def test_a_write_asking_for_a_format_not_produced_is_refused_before_anything_is_stored(tmp_path: Path) -> None:
    """Review finding: a Consent create, a transaction and a batch asking (Accept, _format) only for
    a format the server does not produce (then FHIR XML; now Turtle) stored what they were sent
    and answered FHIR JSON the client cannot read (it then sends the write again: a second
    Consent). They get 406, as reads do, and nothing is stored."""
    bundle = (SAMPLES / "bundle-transaction.json").read_bytes()
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "metadata"}}]}
    with adapter_client(tmp_path) as (client, _):
        xml = {**FHIR_JSON, "Accept": "text/turtle"}
        answers = [client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=xml),
                   client.post("/fhir/Consent?_format=ttl", json=consent_resource(["TRAIN"]), headers=FHIR_JSON),
                   client.post("/fhir", content=bundle, headers=xml),
                   client.post("/fhir", json=batch, headers={**xml, **TREAT})]
        for r in answers:
            assert r.status_code == 406, r.text[:300]
            assert r.json()["resourceType"] == "OperationOutcome"
        assert _consents(client) == 0
        assert client.get("/fhir/Media?_summary=count", headers=TREAT).json()["total"] == 0
        stored = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON).json()
        update = client.put(f"/fhir/Consent/{stored['id']}?_format=text/turtle",
                            json={**stored, "status": "inactive"}, headers=FHIR_JSON)
        assert update.status_code == 406, update.text[:300]
        assert client.get(f"/fhir/Consent/{stored['id']}", headers=TREAT).json()["status"] == "active"
        # what a JSON client sends is answered as before
        assert client.post("/fhir", content=bundle, headers={**FHIR_JSON, "Accept": "application/fhir+json"}).status_code == 200


def test_an_update_of_a_consent_that_does_not_exist_is_405_as_without_update_as_create(tmp_path: Path) -> None:
    """Review finding: PUT to a Consent id the server does not hold answered 404. The server does
    not let a client choose a new resource's id (no update-as-create, CapabilityStatement
    updateCreate false), and http.html#update answers that case 405 Method Not Allowed."""
    with adapter_client(tmp_path) as (client, _):
        consent = {**consent_resource(["TREAT"]), "id": "chosen-by-client"}
        r = client.put("/fhir/Consent/chosen-by-client", json=consent, headers=FHIR_JSON)
        assert r.status_code == 405, r.text[:300]
        assert r.json()["resourceType"] == "OperationOutcome"
        assert "PUT" not in r.headers["allow"]  # RFC 9110 15.5.6: the methods the target does allow
        assert _consents(client) == 0
        statement = client.get("/fhir/metadata").json()
        [consent_type] = [t for t in statement["rest"][0]["resource"] if t["type"] == "Consent"]
        assert consent_type["updateCreate"] is False


def test_a_body_that_cannot_be_parsed_is_400_not_422(tmp_path: Path) -> None:
    """Review finding: a FHIR body that is not JSON, or JSON that is no resource, answered 422;
    http.html (create, update, transaction) keeps 422 for a resource that violates profiles or
    business rules, and answers 400 for one that "could not be parsed"."""
    with adapter_client(tmp_path) as (client, _):
        for body in ('{"resourceType": "Consent",', "[]", '{"status": "active"}', "\ufeff{}"):
            for r in (client.post("/fhir/Consent", content=body, headers=FHIR_JSON),
                      client.put("/fhir/Consent/c1", content=body, headers=FHIR_JSON),
                      client.post("/fhir", content=body, headers=FHIR_JSON)):
                assert r.status_code == 400, (body, r.status_code, r.text[:200])
                assert r.json()["issue"][0]["code"] == "structure"
        # a resource that parses and breaks a rule stays 422
        bad_status = client.post("/fhir/Consent", json={**consent_resource(["TREAT"]), "status": "bogus"},
                                 headers=FHIR_JSON)
        assert bad_status.status_code == 422 and bad_status.json()["issue"][0]["expression"] == ["Consent.status"]


def test_the_links_of_a_search_state_the_page_size_used(tmp_path: Path) -> None:
    """Review finding: a _count above the maximum (200) was lowered, but the self and next links
    repeated the _count asked for; search.html: the server SHALL return the parameters it
    actually used (the self link), so a client sees its page size was lowered."""
    with adapter_client(tmp_path) as (client, _):
        receipt = post_photo(client, SAMPLES / "wound.jpg", metadata()).json()
        for url in ("/fhir/Media?_count=100000", f"/fhir/{receipt['consents'][0]}/_history?_count=100000"):
            bundle = client.get(url, headers=TREAT).json()
            [self_link] = [link["url"] for link in bundle["link"] if link["relation"] == "self"]
            assert dict(parse_qsl(urlsplit(self_link).query))["_count"] == "200", url
            assert len(bundle["entry"]) == 1
        # a _count within bounds, and _count=0, are stated as asked
        for count in ("0", "5"):
            page = client.get(f"/fhir/Media?_count={count}", headers=TREAT).json()
            [self_link] = [link["url"] for link in page["link"] if link["relation"] == "self"]
            assert dict(parse_qsl(urlsplit(self_link).query))["_count"] == count


def test_a_batch_entry_if_modified_since_is_honoured_as_on_a_read_alone(tmp_path: Path) -> None:
    """Review finding: a batch entry's request.ifModifiedSince was not passed on (ifNoneMatch was),
    so an entry the client already holds was sent whole (200) where the same read alone answers
    304; the CapabilityStatement claims conditionalRead full-support."""
    with adapter_client(tmp_path) as (client, _):
        receipt = post_photo(client, SAMPLES / "wound.jpg", metadata()).json()
        record = receipt["record"]
        later, earlier = "2100-01-01T00:00:00Z", "2001-01-01T00:00:00+01:00"
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": record, "ifModifiedSince": later}},
            {"request": {"method": "GET", "url": record, "ifModifiedSince": earlier}},
            {"request": {"method": "GET", "url": record, "ifModifiedSince": "not a date"}},
            {"request": {"method": "GET", "url": record, "ifModifiedSince": "0001-01-01T00:00:00+01:00"}}]}
        answer = client.post("/fhir", content=json.dumps(batch), headers={**FHIR_JSON, **TREAT})
        assert answer.status_code == 200, answer.text[:300]
        held, changed, *unreadable = answer.json()["entry"]
        assert held["response"]["status"] == "304 Not Modified" and "resource" not in held
        assert changed["response"]["status"] == "200 OK" and changed["resource"]["id"] == record.split("/")[1]
        assert [e["response"]["status"] for e in unreadable] == ["400 Bad Request"] * 2


@pytest.fixture()
def pg_url() -> Iterator[str]:
    with postgres_schema("test_fhir_rest") as url:
        yield url


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_transaction_response_gives_each_resource_its_stored_last_updated(tmp_path: Path, backend: str,
                                                                            request: pytest.FixtureRequest) -> None:
    """Review finding: a transaction-response entry's lastModified was the time the answer was made,
    not the resource's meta.lastUpdated (a few milliseconds after it when created; a replay of a
    stored photo said it was modified then, when nothing was). Bundle.entry.response.lastModified is
    "the date/time that the resource was modified on the server": the version its location names."""
    bundle = (SAMPLES / "bundle-transaction.json").read_bytes()
    url = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    with adapter_client(tmp_path, database_url=url) as (client, _):
        for _attempt in ("created", "replayed"):
            answer = client.post("/fhir", content=bundle, headers=FHIR_JSON)
            assert answer.status_code == 200, answer.text[:300]
            for entry in answer.json()["entry"]:
                location = entry["response"]["location"]
                stored = client.get(f"/fhir/{location}", headers=TREAT)
                assert stored.status_code == 200, location
                meta = stored.json()["meta"] if "json" in stored.headers["content-type"] else \
                    client.get(f"/fhir/{location}?_format=json", headers=TREAT).json()["meta"]
                assert entry["response"]["lastModified"] == meta["lastUpdated"], (_attempt, location)
                assert entry["response"]["etag"] == f'W/"{meta["versionId"]}"'


def test_a_write_to_a_resource_type_not_served_is_404_as_a_read_is(tmp_path: Path) -> None:
    """Review finding: a create, update or delete of a type this server does not serve
    (POST /fhir/Patient) answered 405, where a read of it answers 404; http.html (create, update):
    "404 Not Found - resource type not supported". A type served without that interaction keeps 405."""
    with adapter_client(tmp_path) as (client, _):
        patient = {"resourceType": "Patient", "id": "1"}
        for r in (client.post("/fhir/Patient", json=patient, headers=FHIR_JSON),
                  client.put("/fhir/Patient/1", json=patient, headers=FHIR_JSON),
                  client.delete("/fhir/Observation/1"),
                  client.patch("/fhir/Patient/1", content=b"[]", headers={"Content-Type": "application/json-patch+json"})):
            assert r.status_code == 404, (r.request.method, r.request.url, r.status_code)
            assert r.json()["issue"][0]["code"] == "not-supported"
        media = client.post("/fhir/Media", json={"resourceType": "Media"}, headers=FHIR_JSON)
        assert media.status_code == 405 and media.headers["allow"] == "GET, HEAD"
        consent = client.delete("/fhir/Consent/1")
        assert consent.status_code == 405 and "PUT" in consent.headers["allow"]
        assert client.post("/fhir/metadata").status_code == 405


def test_a_consent_whose_period_ends_before_it_starts_is_refused_not_stored(tmp_path: Path) -> None:
    """Review finding: a Consent whose provision.period ends before it starts (FHIR invariant per-1,
    "start SHALL have a lower value than end") was stored (201) and read back as a resource every
    FHIR validator refuses. It fails basic FHIR validation: 400, pointing at the period."""
    with adapter_client(tmp_path) as (client, _):
        inverted = consent_resource(["TREAT"], start="2025-01-01", end="2024-12-31")
        r = client.post("/fhir/Consent", json=inverted, headers=FHIR_JSON)
        assert r.status_code == 400, r.text[:300]
        assert r.json()["issue"][0]["expression"] == ["Consent.provision.period"]
        assert _consents(client) == 0
        # a period of one day (the end inclusive through its last instant) is no inversion
        one_day = client.post("/fhir/Consent", json=consent_resource(["TREAT"], start="2025-01-01", end="2025-01-01"),
                              headers=FHIR_JSON)
        assert one_day.status_code == 201, one_day.text[:300]
        update = client.put(f"/fhir/Consent/{one_day.json()['id']}", json={**inverted, "id": one_day.json()["id"]},
                            headers=FHIR_JSON)
        assert update.status_code == 400, update.text[:300]


def test_a_consent_that_breaks_a_rule_of_the_adapter_is_422_not_400(tmp_path: Path) -> None:
    """Review finding: a Consent naming its patient by reference only (or not at all), which FHIR
    allows and the adapter refuses (it matches patients by identifier), answered 400, which
    http.html keeps for a resource that cannot be parsed or fails basic FHIR validation; a
    server's business rule is 422."""
    with adapter_client(tmp_path) as (client, _):
        by_reference = {**consent_resource(["TREAT"]), "patient": {"reference": "Patient/123"}}
        without = {k: v for k, v in consent_resource(["TREAT"]).items() if k != "patient"}
        for consent in (by_reference, without):
            r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
            assert r.status_code == 422, r.text[:300]
            assert r.json()["issue"][0]["code"] == "business-rule"
            assert r.json()["issue"][0]["expression"] == ["Consent.patient.identifier"]
        assert _consents(client) == 0


def test_a_consent_with_a_modifier_extension_is_refused_and_grants_nothing(tmp_path: Path) -> None:
    """Review finding: a TRAIN Consent carrying a modifierExtension (here: "revoked, pending
    verification") was stored and released the patient's photo for training, though the adapter
    cannot tell what the modifier does (FHIR extensibility.html: an application SHALL NOT process
    a resource whose modifier extension it does not understand as if it were absent); its TRAIN
    reads then failed every TRAIN search of Consents. It is refused (422), nothing stored, and the
    photo stays closed to TRAIN."""
    modifier = [{"url": "http://example.org/fhir/StructureDefinition/revoked-pending-verification",
                 "valueBoolean": True}]
    with adapter_client(tmp_path) as (client, services):
        record = post_photo(client, SAMPLES / "wound.jpg", metadata()).json()["record"]
        held = _consents(client)  # the photo's own consent for care
        top = {**consent_resource(["TRAIN"]), "modifierExtension": modifier}
        nested = consent_resource(["TRAIN"])
        nested["provision"]["modifierExtension"] = modifier
        for consent, where in ((top, "Consent.modifierExtension"), (nested, "Consent.provision.modifierExtension")):
            r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
            assert r.status_code == 422, r.text[:300]
            assert r.json()["issue"][0]["code"] == "business-rule"
            assert r.json()["issue"][0]["expression"] == [where]
        assert _consents(client) == held
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', record)}", headers=as_purpose("TRAIN")).status_code == 404
        plain = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]), headers=FHIR_JSON).json()
        update = client.put(f"/fhir/Consent/{plain['id']}", json={**plain, "modifierExtension": modifier},
                            headers=FHIR_JSON)
        assert update.status_code == 422, update.text[:300]
        assert client.get(f"/fhir/Consent/{plain['id']}", headers=TREAT).json()["meta"]["versionId"] == "1"
        assert client.get("/fhir/Consent?purpose=TRAIN", headers=as_purpose("TRAIN")).status_code == 200


def test_a_nested_provision_without_a_type_is_refused(tmp_path: Path) -> None:
    """Review finding: a Consent whose provision had no type and nested, under an untyped
    provision, a permit of HRESCH was stored; the untyped rule was read as its parent's opposite,
    a denial of every purpose, so the patient's research permit closed the photo to care. R4 gives
    an untyped nested provision no meaning: refused (422), the photo still open for care."""
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, SAMPLES / "wound.jpg", metadata()).json()["record"]
        held = _consents(client)  # the photo's own consent for care
        consent = consent_resource(["HRESCH"])
        consent["provision"] = {"provision": [{"provision": [consent["provision"]]}]}
        r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
        assert r.status_code == 422, r.text[:300]
        assert r.json()["issue"][0]["expression"] == ["Consent.provision.provision[0].type"]
        assert _consents(client) == held
        assert client.get(f"/fhir/{record}", headers=TREAT).status_code == 200


def test_a_consent_naming_no_policy_is_refused_as_ppc_1_says(tmp_path: Path) -> None:
    """Review finding: a Consent with neither policy nor policyRule was stored and served, and every
    FHIR validator refuses it and each Bundle holding it (invariant ppc-1, "Either a Policy or
    PolicyRule"). It fails basic validation: 400, nothing stored."""
    with adapter_client(tmp_path) as (client, _):
        consent = {k: v for k, v in consent_resource(["TRAIN"]).items() if k not in ("policy", "policyRule")}
        r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
        assert r.status_code == 400, r.text[:300]
        assert r.json()["issue"][0]["expression"] == ["Consent.policyRule"]
        assert _consents(client) == 0
        rule = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}
        for kept, value in (("policy", consent_resource(["TRAIN"])["policy"]), ("policyRule", rule)):
            assert client.post("/fhir/Consent", json={**consent, kept: value}, headers=FHIR_JSON).status_code == 201


@pytest.mark.parametrize("div", [
    '<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script>Consent</div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><img src="x" onerror="alert(document.cookie)"/>Consent</div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><a href="javascript:alert(1)">Consent</a></div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><p style="background:url(https://evil.example/t)">Consent</p></div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><form action="https://evil.example"><p>Consent</p></form></div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><iframe src="https://evil.example"/>Consent</div>',
    '<!DOCTYPE d [<!ENTITY e "x">]><div xmlns="http://www.w3.org/1999/xhtml">&e;</div>',
    '<div xmlns="http://www.w3.org/1999/xhtml">   </div>',
    '<div>Consent</div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><p>unclosed</div>',
])
def test_a_consent_narrative_outside_txt_1_and_txt_2_is_refused(tmp_path: Path, div: str) -> None:
    """Review finding: a Consent's narrative holding a script and an onerror handler was stored and
    served verbatim to care readers, whose EHR shows it: FHIR's narrative invariants (txt-1: basic
    HTML formatting only, no scripts, forms, frames or event attributes; txt-2: some content) are
    checked when written, 400 pointing at the div, nothing stored."""
    with adapter_client(tmp_path) as (client, _):
        consent = {**consent_resource(["TRAIN"]), "text": {"status": "additional", "div": div}}
        r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
        assert r.status_code == 400, r.text[:300]
        assert r.json()["issue"][0]["expression"] == ["Consent.text.div"]
        assert _consents(client) == 0


def test_a_consent_narrative_of_basic_html_is_kept(tmp_path: Path) -> None:
    div = ('<div xmlns="http://www.w3.org/1999/xhtml"><p class="x" style="color:red">The patient agrees to '
           '<b>teaching</b> use.</p><table><tr><td colspan="2">Signed</td></tr></table>'
           '<a href="https://example.org/policy">policy</a><img src="#sig" alt="signature"/></div>')
    with adapter_client(tmp_path) as (client, _):
        consent = {**consent_resource(["TRAIN"]), "text": {"status": "additional", "div": div}}
        r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
        assert r.status_code == 201, r.text[:300]
        assert client.get(f"/fhir/Consent/{r.json()['id']}", headers=TREAT).json()["text"]["div"] == div


def test_summary_count_on_a_read_is_400_as_an_invalid_summary_is(tmp_path: Path) -> None:
    """Review finding: GET Media/<id>?_summary=count answered the whole resource; count is a
    search's (search.html#summary), and the README has an invalid _summary answered 400."""
    with adapter_client(tmp_path) as (client, _):
        record = post_photo(client, SAMPLES / "wound.jpg", metadata()).json()["record"]
        for url in (f"/fhir/{record}?_summary=count", f"/fhir/{record}/_history/1?_summary=count"):
            r = client.get(url, headers=TREAT)
            assert r.status_code == 400, r.text[:300]
            assert r.json()["issue"][0]["expression"] == ["_summary"]
        assert client.get(f"/fhir/{record}?_summary=true", headers=TREAT).status_code == 200


def test_a_write_whose_charset_is_not_utf_8_is_415(tmp_path: Path) -> None:
    """Review finding: a Consent sent as charset=utf-16 (its body UTF-8) was stored (201). FHIR
    JSON is UTF-8 (http.html#mime-type, RFC 8259 8.1): another charset is refused, nothing stored."""
    body = json.dumps(consent_resource(["TRAIN"])).encode()
    with adapter_client(tmp_path) as (client, _):
        for charset in ("utf-16", "iso-8859-1"):
            r = client.post("/fhir/Consent", content=body,
                            headers={"Content-Type": f"application/fhir+json; charset={charset}"})
            assert r.status_code == 415, r.text[:300]
        assert _consents(client) == 0
        for charset in ("utf-8", "UTF-8", '"utf-8"'):
            r = client.post("/fhir/Consent", content=body,
                            headers={"Content-Type": f"application/fhir+json; charset={charset}"})
            assert r.status_code == 201, r.text[:300]


def test_a_write_in_utf_16_or_utf_32_is_400_and_nothing_is_stored(tmp_path: Path) -> None:
    """Pentest finding 2: a Consent in UTF-16 or UTF-32 without a charset was detected and stored
    (201), where a gateway reading it as the UTF-8 FHIR JSON is saw no patient."""
    resource = json.dumps(consent_resource(["TRAIN"]))
    with adapter_client(tmp_path) as (client, _):
        for encoding in ("utf-16", "utf-16-le", "utf-32"):
            r = client.post("/fhir/Consent", content=resource.encode(encoding),
                            headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 400, r.text[:300]
            assert r.json()["resourceType"] == "OperationOutcome"
            assert "not UTF-8" in r.json()["issue"][0]["diagnostics"]
        assert _consents(client) == 0
        r = client.post("/fhir/Consent", content=b"\xef\xbb\xbf" + resource.encode(),
                        headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201, r.text[:300]  # a UTF-8 byte order mark is ignored (RFC 8259 8.1)



def test_a_write_with_a_repeated_charset_or_content_type_is_400(tmp_path: Path) -> None:
    """Security review 3: a repeated parameter or Content-Type header was read first here and may
    be read last by a gateway (``charset=utf-8; charset=iso-8859-1`` passed as UTF-8). Each
    parameter at most once, one Content-Type: else 400, nothing stored."""
    body = json.dumps(consent_resource(["TRAIN"])).encode()
    with adapter_client(tmp_path) as (client, _):
        for ctype in ("application/fhir+json; charset=utf-8; charset=iso-8859-1",
                      "application/fhir+json; fhirVersion=4.0; fhirVersion=5.0"):
            r = client.post("/fhir/Consent", content=body, headers={"Content-Type": ctype})
            assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", r.text[:300]
        r = client.post("/fhir/Consent", content=body, headers=[("Content-Type", "application/fhir+json"),
                                                                 ("Content-Type", "application/fhir+xml")])
        assert r.status_code == 400 and "Content-Type" in r.text, r.text[:300]
        assert _consents(client) == 0

def test_a_consent_form_posted_with_a_consent_is_kept_as_a_photo_s_form_is(tmp_path: Path) -> None:
    """Review finding: POST /fhir/Consent stored sourceAttachment as sent: a phone's scan of the
    signed form kept its EXIF (GPS, the owner's name) for every care reader, and a PNG bomb went
    uninflated past the pixel limit to each reader's decoder. The form is kept as consent.form
    is over POST /photos: a scan without its metadata, within the policy's limits, proven to
    decode; a PDF as it is; anything else, or a contentType its bytes contradict, 415."""
    import base64
    import hashlib
    import struct
    import zlib

    from PIL import Image

    def chunk(ctype: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))
    deflate = zlib.compressobj(9)
    idat = b"".join([deflate.compress(b"\x00" * 3001) for _ in range(1000)] + [deflate.flush()])
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 3000, 1000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    scan = (SAMPLES / "wound.jpg").read_bytes()
    assert b"Jane Example" in scan  # the sample's EXIF names its owner

    def with_form(content_type: str, data: bytes, **extra: object) -> dict[str, object]:
        return {**consent_resource(["TRAIN"]),
                "sourceAttachment": {"contentType": content_type, "data": base64.b64encode(data).decode(), **extra}}

    with adapter_client(tmp_path, policy={"limits": {"maxPixels": 2_000_000}}) as (client, _):
        refused = [(with_form("image/png", bomb), 422), (with_form("text/plain", b"I agree"), 415),
                   (with_form("image/png", scan), 415), (with_form("image/jpeg", scan[:2000]), 422)]
        for consent, status in refused:
            r = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON)
            assert r.status_code == status, r.text[:300]
            assert r.json()["issue"][0]["expression"] == ["Consent.sourceAttachment"]
        assert _consents(client) == 0
        r = client.post("/fhir/Consent", json=with_form("image/jpeg", scan, size=len(scan), hash="AAAA"),
                        headers=FHIR_JSON)
        assert r.status_code == 201, r.text[:300]
        form = client.get(f"/fhir/Consent/{r.json()['id']}", headers=TREAT).json()["sourceAttachment"]
        kept = base64.b64decode(form["data"])
        assert b"Jane Example" not in kept and b"GPS" not in kept
        assert form["size"] == len(kept) and form["hash"] == base64.b64encode(hashlib.sha1(kept).digest()).decode()
        import io
        assert Image.open(io.BytesIO(kept)).tobytes() == Image.open(io.BytesIO(scan)).tobytes()
        pdf = b"%PDF-1.4\n%signed\n"
        r = client.post("/fhir/Consent", json=with_form("application/pdf", pdf), headers=FHIR_JSON)
        assert r.status_code == 201, r.text[:300]
        assert base64.b64decode(r.json()["sourceAttachment"]["data"]) == pdf


def test_a_withdrawal_is_not_refused_for_a_form_a_later_policy_would_refuse(tmp_path: Path) -> None:
    """Code review finding: an update re-checked the signed form it carried unchanged, so once the
    policy's pixel limit was lowered, the withdrawal of a Consent (GET, status inactive, PUT) was
    refused 422 and its permit stayed in force. The form the current version holds is kept as it is."""
    import base64

    scan = base64.b64encode((SAMPLES / "wound.jpg").read_bytes()).decode()
    consent = {**consent_resource(["TRAIN"]), "sourceAttachment": {"contentType": "image/jpeg", "data": scan}}
    with adapter_client(tmp_path) as (client, _):
        stored = client.post("/fhir/Consent", json=consent, headers=FHIR_JSON).json()
    with adapter_client(tmp_path, policy={"limits": {"maxPixels": 1000}}) as (client, _):
        r = client.put(f"/fhir/Consent/{stored['id']}", json={**stored, "status": "inactive"}, headers=FHIR_JSON)
        assert r.status_code == 200, r.text[:300]
        assert client.get(f"/fhir/Consent/{stored['id']}", headers=TREAT).json()["status"] == "inactive"
        # a new form is held to the policy of the day
        fresh = {**stored, "sourceAttachment": {
            "contentType": "image/jpeg", "data": base64.b64encode((SAMPLES / "document.jpg").read_bytes()).decode()}}
        assert client.put(f"/fhir/Consent/{stored['id']}", json=fresh, headers=FHIR_JSON).status_code == 422


def test_history_of_a_type_or_of_the_server_is_refused_as_not_supported(tmp_path: Path) -> None:
    """Review finding: GET /fhir/Media/_history (history-type) answered 404 "Media/_history is not
    known", read as a Media whose id is _history (no FHIR id: ids take no "_"), and GET /fhir/_history
    (history-system) 404 "_history is not served here", as a resource type. Neither interaction is
    in the CapabilityStatement: they are refused as not supported (400, as history of Binary is),
    saying which history is served."""
    with adapter_client(tmp_path) as (client, _):
        for url in ("/fhir/Media/_history", "/fhir/_history", "/fhir/Consent/_history?_count=1"):
            r = client.get(url, headers=TREAT)
            assert r.status_code == 400, (url, r.status_code, r.text[:200])
            issue = r.json()["issue"][0]
            assert issue["code"] == "not-supported" and "/_history" in issue["diagnostics"], issue


def test_a_history_asked_for_its_count_only_answers_the_total(tmp_path: Path) -> None:
    """Review finding: _summary=count on a history (which takes _summary, as a search does) was
    answered with every version whole; search.html: "just return a count of the matching
    resources, without returning the actual matches", as a search with it answers."""
    with adapter_client(tmp_path) as (client, _):
        stored = client.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=FHIR_JSON).json()
        client.put(f"/fhir/Consent/{stored['id']}", json={**stored, "status": "inactive"}, headers=FHIR_JSON)
        history = client.get(f"/fhir/Consent/{stored['id']}/_history?_summary=count", headers=TREAT)
        assert history.status_code == 200
        assert history.json()["total"] == 2 and "entry" not in history.json()
        assert [link["relation"] for link in history.json()["link"]] == ["self"]


def test_a_lenient_history_leaves_out_the_parameters_it_does_not_know(tmp_path: Path) -> None:
    """A history (which takes parameters, as a search does) refused a parameter it does not know
    even under Prefer: handling=lenient, which a search honours (search.html#errors): the client
    said it accepts that the parameter is left out. It is now, and the self link states only
    the parameters used; without the preference the refusal stands (400)."""
    with adapter_client(tmp_path) as (client, _):
        stored = client.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=FHIR_JSON).json()
        url = f"/fhir/Consent/{stored['id']}/_history?_count=5&status=active"
        strict = client.get(url, headers=TREAT)
        assert strict.status_code == 400 and strict.json()["issue"][0]["expression"] == ["status"], strict.text
        lenient = client.get(url, headers={**TREAT, "Prefer": "handling=lenient"})
        assert lenient.status_code == 200, lenient.text
        assert lenient.json()["total"] == 1
        self_link = next(link["url"] for link in lenient.json()["link"] if link["relation"] == "self")
        assert parse_qsl(urlsplit(self_link).query) == [("_count", "5")], self_link


def test_a_write_in_a_fhir_version_not_served_is_415(tmp_path: Path) -> None:
    """Review finding: a Consent or transaction whose Content-Type said fhirVersion=3.0 (STU3) or
    4.3 (R4B) was taken as R4 and stored, where an Accept naming such a version gets 406 and an R5
    body 415 (http.html#version-parameter). Only R4 (4.0) is written."""
    bundle = (SAMPLES / "bundle-transaction.json").read_bytes()
    with adapter_client(tmp_path) as (client, _):
        for version in ("3.0", "4.3", "1.0.2"):
            declared = {"Content-Type": f"application/fhir+json; fhirVersion={version}"}
            for r in (client.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=declared),
                      client.post("/fhir", content=bundle, headers=declared)):
                assert r.status_code == 415, (version, r.status_code, r.text[:200])
        assert _consents(client) == 0
        assert client.get("/fhir/Media?_summary=count", headers=TREAT).json()["total"] == 0
        r4 = {"Content-Type": "application/fhir+json;fhirVersion=4.0.1"}
        assert client.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=r4).status_code == 201


def test_a_conditional_create_of_a_consent_is_refused_rather_than_ignored(tmp_path: Path) -> None:
    """If-None-Exist (http.html#ccreate) was ignored: a client retrying a Consent create with it
    got a second active Consent, which then outlived the withdrawal of the first (the patient's
    withdrawal did not take). Conditional create is not claimed, so it is refused (400
    not-supported), before the body is read, and nothing is created."""
    with adapter_client(tmp_path) as (client, _):
        r = client.post("/fhir/Consent", json=consent_resource(["TRAIN"]),
                        headers={"If-None-Exist": "patient:identifier=urn:oid:2.999.1.1|MRN-0001"})
        assert r.status_code == 400 and r.json()["issue"][0]["code"] == "not-supported"
        assert "If-None-Exist" in r.json()["issue"][0]["diagnostics"]
        assert client.get("/fhir/Consent?_summary=count", headers=as_purpose("TREAT")).json()["total"] == 0
        assert client.post("/fhir/Consent", json=consent_resource(["TRAIN"])).status_code == 201
        statement = client.get("/fhir/metadata").json()
        [consent] = [r for r in statement["rest"][0]["resource"] if r["type"] == "Consent"]
        assert consent.get("conditionalCreate", False) is False


def test_the_versions_operation_names_the_fhir_versions_served_and_the_default(tmp_path: Path) -> None:
    """The server serves R4 and R5 on one endpoint, told apart by the fhirVersion parameter of
    the media type (http.html#version-parameter), and "the only way for a client to find out
    what versions a server supports in this fashion is the $versions operation"
    (CapabilityStatement-versions): it answered 404. It answers a Parameters resource (in either
    version), the plain JSON form for Accept: application/json, and the CapabilityStatements name
    the operation."""
    with adapter_client(tmp_path) as (client, _):
        answer = client.get("/fhir/$versions")
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("application/fhir+json")
        body = answer.json()
        assert body["resourceType"] == "Parameters"
        assert [(p["name"], p["valueCode"]) for p in body["parameter"]] == [
            ("version", "4.0"), ("version", "5.0"), ("default", "4.0")]
        record_emitted(body)
        r5 = client.get("/fhir/$versions", headers={"Accept": "application/fhir+json; fhirVersion=5.0"})
        assert r5.status_code == 200 and "fhirVersion=5.0" in r5.headers["content-type"]
        record_emitted(r5.json(), "5")
        plain = client.get("/fhir/$versions", headers={"Accept": "application/json"})
        assert plain.status_code == 200 and plain.headers["content-type"].startswith("application/json")
        assert plain.json() == {"versions": ["4.0", "5.0"], "default": "4.0"}
        in_xml = client.get("/fhir/$versions", headers={"Accept": "application/fhir+xml"})
        assert in_xml.status_code == 200 and in_xml.headers["content-type"] == "application/fhir+xml; charset=utf-8; fhirVersion=4.0"
        assert client.get("/fhir/$versions", headers={"Accept": "text/turtle"}).status_code == 406
        for accept, version in (("application/fhir+json", "4"), ("application/fhir+json; fhirVersion=5.0", "5")):
            statement = client.get("/fhir/metadata", headers={"Accept": accept}).json()
            operations = statement["rest"][0].get("operation") or []
            assert {"name": "versions",
                    "definition": "http://hl7.org/fhir/OperationDefinition/CapabilityStatement-versions"} in operations
            record_emitted(statement, version)


def test_a_later_page_links_back_to_the_first_and_the_previous_one(tmp_path: Path) -> None:
    """Search and history pages linked only forwards (self, next): a client paging a result in
    a viewer could not go back but by rebuilding the query. A page after the first now links
    ``first`` and ``previous`` (http.html#paging), with the same parameters. Review finding (mhd
    11): the first page had no ``first`` link; it has one now (the first page of the same
    snapshot: the search's parameters and a ``_cursor``, adapter.services.search_paging)."""
    def links(bundle: dict) -> dict[str, str]:
        return {link["relation"]: link["url"].split("/fhir/", 1)[1] for link in bundle["link"]}

    def ids(bundle: dict) -> list[str]:
        return [e["resource"]["id"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] != "OperationOutcome"]

    with adapter_client(tmp_path) as (client, _):
        consents = [client.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=FHIR_JSON).json()
                    for _ in range(3)]
        first = client.get("/fhir/Consent?_count=1", headers=TREAT).json()
        assert set(links(first)) == {"self", "first", "next"}
        assert links(first)["first"].startswith("Consent?_count=1&_cursor=")
        assert ids(client.get("/fhir/" + links(first)["first"], headers=TREAT).json()) == ids(first)
        second = client.get("/fhir/" + links(first)["next"], headers=TREAT).json()
        assert set(links(second)) == {"self", "first", "previous", "next"}
        assert ids(client.get("/fhir/" + links(second)["previous"], headers=TREAT).json()) == ids(first)
        assert ids(client.get("/fhir/" + links(second)["first"], headers=TREAT).json()) == ids(first)
        third = client.get("/fhir/" + links(second)["next"], headers=TREAT).json()
        assert set(links(third)) == {"self", "first", "previous"}
        assert ids(client.get("/fhir/" + links(third)["previous"], headers=TREAT).json()) == ids(second)
        assert sorted(ids(first) + ids(second) + ids(third)) == sorted(c["id"] for c in consents)

        stored = consents[0]
        for status in ("inactive", "active"):
            stored = client.put(f"/fhir/Consent/{stored['id']}", json={**stored, "status": status},
                                headers=FHIR_JSON).json()
        page1 = client.get(f"/fhir/Consent/{stored['id']}/_history?_count=1", headers=TREAT).json()
        assert set(links(page1)) == {"self", "first", "next"}
        page2 = client.get("/fhir/" + links(page1)["next"], headers=TREAT).json()
        assert set(links(page2)) == {"self", "first", "previous", "next"}
        back = client.get("/fhir/" + links(page2)["previous"], headers=TREAT).json()
        assert [e["resource"]["meta"]["versionId"] for e in back["entry"]] == ["3"]
        assert client.get("/fhir/" + links(page2)["first"], headers=TREAT).json()["entry"] == back["entry"]


def test_a_search_by_post_without_a_body_takes_the_url_parameters(tmp_path: Path) -> None:
    """Review finding (mhd 11): ``POST [type]/_search?<params>`` with no body and no Content-Type
    (the IHE ITI-67 example, 2:3.67.4.1.2.3.2) was refused with 415. An empty body needs no
    Content-Type: the parameters of the URL are the search. A body still needs the form type."""
    with adapter_client(tmp_path) as (client, _):
        consent = client.post("/fhir/Consent", json=consent_resource(["TREAT"]), headers=FHIR_JSON).json()
        r = client.post("/fhir/Consent/_search?status=active", headers=TREAT)
        assert r.status_code == 200, r.text
        assert [e["resource"]["id"] for e in r.json()["entry"]] == [consent["id"]]
        assert client.post("/fhir/Consent/_search?status=inactive", headers=TREAT).json()["total"] == 0
        r = client.post("/fhir/Consent/_search?status=active", content=b"status=inactive", headers=TREAT)
        assert r.status_code == 415, r.text


def test_format_with_a_fhir_version_and_a_quality_zero_accept(tmp_path: Path) -> None:
    """Review findings: ``_format=application/fhir+json; fhirVersion=5.0`` answered R4 and
    ``fhirVersion=3.0`` answered R4 where the same Accept gets 406 (http.html#mime-type: _format
    overrides Accept, its version parameter included); ``Accept: application/fhir+json;q=0`` was
    answered in FHIR JSON (RFC 9110 12.4.2, 12.5.1: 406)."""
    with adapter_client(tmp_path) as (client, _):
        r = client.get("/fhir/metadata?_format=application/fhir%2Bjson%3B%20fhirVersion%3D5.0")
        assert r.status_code == 200 and r.json()["fhirVersion"] == "5.0.0"
        assert "fhirVersion=5.0" in r.headers["content-type"]
        r = client.get("/fhir/DocumentReference?_format=application/fhir%2Bjson%3B%20fhirVersion%3D5.0",
                       headers=TREAT)
        assert r.status_code == 200 and "fhirVersion=5.0" in r.headers["content-type"]
        assert client.get("/fhir/metadata?_format=application/fhir%2Bjson%3B%20fhirVersion%3D3.0").status_code == 406
        r = client.get("/fhir/metadata?_format=json", headers={"Accept": "application/fhir+json; fhirVersion=5.0"})
        assert r.status_code == 200 and r.json()["fhirVersion"] == "4.0.1"
        r = client.get("/fhir/DocumentReference", headers={**TREAT, "Accept": "application/fhir+json;q=0"})
        assert r.status_code == 406 and r.json()["resourceType"] == "OperationOutcome"


def test_metadata_in_terminology_mode_is_refused_not_answered_with_the_capability_statement(tmp_path: Path) -> None:
    """Review finding F4: ``metadata?mode=terminology`` (http.html#capabilities) asks for a
    TerminologyCapabilities resource, and was answered with the CapabilityStatement. The server
    has no terminology service: 400 not-supported, an OperationOutcome saying so; ``full`` (the
    default) and ``normal`` answer the CapabilityStatement; another mode is 400 too. Test seen
    failing: 200 CapabilityStatement."""
    with adapter_client(tmp_path) as (client, _):
        for query in ("", "?mode=full", "?mode=normal"):
            answer = client.get(f"/fhir/metadata{query}")
            assert answer.status_code == 200 and answer.json()["resourceType"] == "CapabilityStatement", query
        for query in ("?mode=terminology", "?mode=everything", "?mode=full&mode=terminology"):
            refused = client.get(f"/fhir/metadata{query}")
            assert refused.status_code == 400, (query, refused.text[:200])
            issue = refused.json()["issue"][0]
            assert refused.json()["resourceType"] == "OperationOutcome" and issue["code"] == "not-supported"
        assert "TerminologyCapabilities" in client.get("/fhir/metadata?mode=terminology").json()["issue"][0]["diagnostics"]


def test_repeated_patient_parameters_and_so_never_widen_a_search_to_another_patient(tmp_path: Path) -> None:
    """Review finding (integration engine): ``patient.identifier=A&patient.identifier=B`` answered
    both patients' records (an OR), so an engine adding its own patient filter to a caller's query
    widened it to a second patient. Repeated parameters AND (search.html#combining); a record
    has one patient, so repeats naming different patients match nothing; commas still OR."""
    system = PATIENT["system"]
    with adapter_client(tmp_path) as (client, _):
        for mrn in ("MRN-0001", "MRN-0002"):
            patient = {"system": system, "value": mrn, "reference": f"Patient/{mrn.lower()}"}
            assert post_photo(client, SAMPLES / "wound.jpg", metadata(patient=patient)).status_code == 201

        def total(query: str, resource: str = "Media") -> int:
            answer = client.get(f"/fhir/{resource}?{query}", headers=TREAT)
            assert answer.status_code == 200, answer.text
            return int(answer.json()["total"])

        one, two = f"{system}|MRN-0001", f"{system}|MRN-0002"
        for param in ("patient:identifier", "patient.identifier", "subject:identifier"):
            assert total(f"{param}={one}") == 1
            assert total(f"{param}={one},{two}") == 2                      # a comma: OR
            assert total(f"{param}={one}&{param}={two}") == 0              # repeated: AND
            assert total(f"{param}={one}&{param}={one},{two}") == 1        # AND of ORs
            assert total(f"{param}={one}&{param}=MRN-0001") == 1           # the value in any system
            assert total(f"{param}=MRN-0001&{param}=MRN-0002") == 0
            assert total(f"{param}={one}&{param}=urn:oid:2.999.9|MRN-0001") == 0  # another system
        assert total(f"patient:identifier={one}&patient:identifier={two}", "Consent") == 0
        for param in ("patient", "subject"):
            assert total(f"{param}=Patient/mrn-0001") == 1
            assert total(f"{param}=Patient/mrn-0001&{param}=Patient/mrn-0002") == 0
            assert total(f"{param}=Patient/mrn-0001&{param}=mrn-0001,Patient/mrn-0002") == 1
        assert total(f"patient:identifier={one}&patient=Patient/mrn-0002") == 0  # as before: both must hold


def test_a_member_named_twice_in_one_object_is_refused_not_read_last_wins(tmp_path: Path) -> None:
    """Security review 11: duplicate member names were taken, the last one winning, so a gateway or
    audit reading the first saw another resource than the one stored. Refused (400 for a FHIR
    body, 422 at metadata for a photo's), nothing stored."""
    with adapter_client(tmp_path) as (client, _services):
        consent = json.dumps(consent_resource(["TRAIN"]))
        twice = consent.replace('"status": "active"', '"status": "inactive", "status": "active"', 1)
        assert twice != consent
        r = client.post("/fhir/Consent", content=twice, headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 400 and "'status' twice" in r.text, r.text
        meta = json.dumps(metadata()).replace('"kind": "clinical"', '"kind": "document", "kind": "clinical"', 1)
        r = client.post("/photos", files={"file": ("w.jpg", (SAMPLES / "wound.jpg").read_bytes(), "image/jpeg"),
                                          "metadata": (None, meta, "application/json")})
        assert r.status_code == 422 and r.json()["issue"][0]["expression"] == ["metadata"], r.text
        assert client.get("/fhir/Consent", headers=TREAT).json()["total"] == 0
        assert client.get("/fhir/Media", headers=TREAT).json()["total"] == 0
