"""The OpenAPI document tells the truth: real requests against the real app (a real SQLite store
in a temporary folder), each answer's status and content type checked against what
``/openapi.json`` declares for the route's path and method. A route that starts answering a
status or media type it does not declare fails here (adapter.api.openapi says where to declare it)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.api.fhir_xml import to_xml
from tests.conftest import ROOT
from tests.support.app import FhirClient, adapter_client, consent_resource, metadata

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
TREAT = {"X-Purpose-Of-Use": "TREAT"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _media(value: str) -> tuple[str, dict[str, str]]:
    """A media type and its parameters (names and values in lower case, values unquoted)."""
    media, *params = value.split(";")
    parsed = {}
    for param in params:
        name, _, v = param.partition("=")
        parsed[name.strip().lower()] = v.strip().strip('"').lower()
    return media.strip().lower(), parsed


def declares(content: dict[str, Any], answered: str) -> bool:
    """Does one of the declared media types (``content``'s keys) cover the Content-Type answered:
    the same type (or a wildcard), and every parameter it names with the same value (boundary
    and fhirVersion, say, are the answer's own)?"""
    media, params = _media(answered)
    for key in content:
        declared, wanted = _media(key)
        if declared in (media, "*/*", media.split("/")[0] + "/*") and \
                all(params.get(name) == value for name, value in wanted.items()):
            return True
    return False


class CheckedClient:
    """Sends requests through ``client`` and checks each answer against the OpenAPI document of
    the app; remembers the operations it has seen answered."""

    def __init__(self, client: FhirClient) -> None:
        self.client = client
        self.doc = client.get("/openapi.json").json()
        self.seen: set[tuple[str, str]] = set()
        self.answers: list[tuple[str, str, int, str]] = []

    def _template(self, method: str, path: str) -> str:
        """The documented path template ``path`` is an instance of for ``method`` (the one with
        the fewest parameters, as the routes are ordered: /fhir/metadata before /fhir/{type})."""
        found = [template for template, operations in self.doc["paths"].items()
                 if method.lower() in operations
                 and re.fullmatch(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template)), path)]
        assert found, f"{method} {path} matches no operation of the OpenAPI document"
        return min(found, key=lambda template: template.count("{"))

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        response = self.client.request(method, url, **kwargs)
        path = httpx.URL(url).path
        template = self._template(method, path)
        operation = self.doc["paths"][template][method.lower()]
        self.seen.add((method.lower(), template))
        status = str(response.status_code)
        declared = operation["responses"].get(status)
        answered = response.headers.get("content-type", "")
        self.answers.append((method, template, response.status_code, answered))
        assert declared is not None, \
            f"{method} {url} answered {status}, which {method} {template} does not declare " \
            f"(declared: {sorted(operation['responses'])}): {response.text[:300]}"
        if response.content:
            assert declares(declared.get("content", {}), answered), \
                f"{method} {url} answered {status} as {answered!r}, which {method} {template} does not declare " \
                f"for {status} (declared: {sorted(declared.get('content', {}))})"
            if answered.startswith("application/fhir+json") and response.status_code >= 400:
                assert declared["content"]["application/fhir+json"]["schema"] == \
                    {"$ref": "#/components/schemas/OperationOutcome"}
                assert response.json()["resourceType"] == "OperationOutcome"
        return response

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[CheckedClient]:
    with adapter_client(tmp_path) as (client, _):
        yield CheckedClient(client)


def _photo(api: CheckedClient, **fields: Any) -> httpx.Response:
    return api.post("/photos", files={"file": (WOUND.name, WOUND.read_bytes(), "image/jpeg"),
                                      "metadata": (None, json.dumps(metadata(**fields)), "application/json")})


def test_declares_media_types_with_their_parameters() -> None:
    content = {'multipart/related; type="application/dicom"': {}, "application/fhir+json": {}}
    assert declares(content, 'multipart/related; type="application/dicom"; boundary=abc')
    assert declares(content, "application/fhir+json; fhirVersion=5.0")
    assert not declares(content, 'multipart/related; type="image/jpeg"; boundary=abc')
    assert not declares(content, "application/json")
    assert declares({"image/*": {}}, "image/png")


def test_every_operation_declares_its_refusals_as_operation_outcomes(api: CheckedClient) -> None:
    """Every operation declares 500, 400 and 421 (a Host that names no host, or one the adapter
    does not answer for), and every 4xx/5xx it answers with FHIR JSON is an OperationOutcome; no
    operation keeps FastAPI's HTTPValidationError, which is never answered."""
    schemas = api.doc["components"]["schemas"]
    assert "OperationOutcome" in schemas and "HTTPValidationError" not in schemas
    for path, operations in api.doc["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert {"500", "421", "400"} <= set(responses), f"{method} {path}"
            for status, answer in responses.items():
                fhir = answer.get("content", {}).get("application/fhir+json")
                if int(status) >= 400 and fhir is not None:
                    assert fhir["schema"] == {"$ref": "#/components/schemas/OperationOutcome"}, (method, path, status)
    assert api.get("/health", headers={"Host": "rebind.attacker.example"}).status_code == 421
    assert api.get("/fhir/metadata", headers={"Host": "rebind attacker"}).status_code == 400


def test_photo_upload_is_declared_as_multipart_form_data(api: CheckedClient) -> None:
    body = api.doc["paths"]["/photos"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert set(body["schema"]["required"]) == {"file", "metadata"}
    assert body["encoding"]["metadata"]["contentType"] == "application/json"
    assert "application/health+json" in api.doc["paths"]["/health/ready"]["get"]["responses"]["200"]["content"]
    stow = api.doc["paths"]["/dicomweb/studies"]["post"]["requestBody"]["content"]
    assert list(stow) == ['multipart/related; type="application/dicom"']


def test_answers_are_declared_for_their_route(api: CheckedClient) -> None:
    """A representative request of every operation, with the refusals each really gives: each
    answer's status and content type must be declared for its path and method."""
    # -- POST /photos
    receipt = _photo(api).json()
    assert _photo(api, consent={"purposes": ["TREAT", "TRAIN"], "method": "written"}).status_code in (409, 422)
    assert api.post("/photos", files={"metadata": (None, json.dumps(metadata()), "application/json")}) \
        .status_code == 422
    assert api.post("/photos", content=b"{}", headers={"Content-Type": "application/json"}).status_code == 415
    record, binary = receipt["record"], receipt["binary"]
    study = receipt["dicom"]["studyInstanceUid"]
    series, instance = receipt["dicom"]["seriesInstanceUid"], receipt["dicom"]["sopInstanceUid"]

    # -- FHIR reads
    assert api.get("/fhir/metadata").status_code == 200
    assert api.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"}).status_code == 200
    assert api.get("/fhir/metadata", headers={"Accept": "text/turtle"}).status_code == 406
    assert api.get("/fhir/$versions").status_code == 200
    assert api.get("/fhir/$versions", headers={"Accept": "application/json"}).status_code == 200
    assert api.get("/fhir/$versions", headers={"Accept": "application/fhir+xml"}).status_code == 200
    read = api.get(f"/fhir/{record}", headers=TREAT)
    assert read.status_code == 200
    assert api.get(f"/fhir/{record}", headers={**TREAT, "If-None-Match": read.headers["ETag"]}).status_code == 304
    assert api.get(f"/fhir/{record}").status_code == 403
    assert api.get(f"/fhir/{record}", headers={"Accept": "application/fhir+xml"}).status_code == 403
    assert api.get(f"/fhir/{record}", headers={**TREAT, "Accept": "application/fhir+xml"}).status_code == 200
    assert api.get(f"/fhir/{record}", headers={"X-Purpose-Of-Use": "NOPE"}).status_code == 400
    assert api.get("/fhir/Media/unknown", headers=TREAT).status_code == 404
    assert api.get("/fhir/Patient/1", headers=TREAT).status_code == 404
    assert api.get(f"/fhir/{record}?_elements=%00", headers=TREAT).status_code in (200, 400, 422)
    assert api.get(f"/fhir/{binary}", headers={**TREAT, "Accept": "image/jpeg"}).status_code == 200
    assert api.get(f"/fhir/{binary}", headers={**TREAT, "Accept": "application/dicom"}).status_code == 200
    assert api.get(f"/fhir/{record}/_history/1", headers=TREAT).status_code == 200
    assert api.get(f"/fhir/{record}/_history/2", headers=TREAT).status_code == 404
    assert api.get(f"/fhir/{record}/_history", headers=TREAT).status_code == 200
    assert api.get(f"/fhir/{binary}/_history", headers=TREAT).status_code == 400
    assert api.get("/fhir/Media?patient:identifier=urn:oid:2.999.1.1|MRN-0001", headers=TREAT).status_code == 200
    assert api.get("/fhir/Media?unknown=1", headers=TREAT).status_code == 400
    assert api.get("/fhir/Media?date=not-a-date", headers=TREAT).status_code == 400
    assert api.get("/fhir/Media?_format=xml", headers=TREAT).status_code == 200
    assert api.get("/fhir/Media?_format=ttl", headers=TREAT).status_code == 406
    assert api.get("/fhir/Binary?_id=1", headers=TREAT).status_code == 400
    assert api.get("/fhir/Media?_page=sealed", headers=TREAT).status_code in (400, 410, 422)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert api.post("/fhir/Media/_search", content=b"_id=1", headers={**TREAT, **form}).status_code == 200
    assert api.post("/fhir/Media/_search", content=b"_id=1", headers={**TREAT, **FHIR_JSON}).status_code == 415

    # -- FHIR writes
    created = api.post("/fhir/Consent", content=json.dumps(consent_resource(["TRAIN"])), headers=FHIR_JSON)
    assert created.status_code == 201
    consent = created.json()
    assert api.post("/fhir/Consent", content=json.dumps(consent_resource(["TRAIN"])),
                    headers={**FHIR_JSON, "Prefer": "return=minimal"}).status_code == 201
    assert api.post("/fhir/Consent", content=b"{", headers=FHIR_JSON).status_code == 400
    assert api.post("/fhir/Consent", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415
    assert api.post("/fhir/Consent", content=json.dumps(consent_resource(["TRAIN"])),
                    headers={**FHIR_JSON, "Accept": "application/fhir+json; fhirVersion=5.0"}).status_code == 406
    url = f"/fhir/Consent/{consent['id']}"
    assert api.put(url, content=json.dumps(consent), headers=FHIR_JSON).status_code == 200
    assert api.put(url, content=json.dumps(consent), headers={**FHIR_JSON, "If-Match": 'W/"1"'}).status_code == 412
    assert api.put(url, content=json.dumps(consent), headers={**FHIR_JSON, "If-Match": "nonsense"}).status_code == 400
    assert api.put("/fhir/Consent/unknown", content=json.dumps({**consent, "id": "unknown"}),
                   headers=FHIR_JSON).status_code == 405  # no update-as-create (http.html#update)
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": record}}]}
    assert api.post("/fhir", content=json.dumps(batch), headers={**FHIR_JSON, **TREAT}).status_code == 200
    assert api.post("/fhir", content=json.dumps({"resourceType": "Patient"}), headers=FHIR_JSON).status_code == 400
    assert api.post("/fhir", content=b"<Bundle/>", headers={"Content-Type": "application/fhir+xml"}).status_code == 400
    assert api.post("/fhir", content=b"<Bundle/>", headers={"Content-Type": "text/turtle"}).status_code == 415
    in_xml = {"Content-Type": "application/fhir+xml", "Accept": "application/fhir+xml"}
    assert api.post("/fhir/Consent", content=to_xml(consent_resource(["TRAIN"])), headers=in_xml).status_code == 201

    # -- DICOMweb
    assert api.get("/dicomweb/studies", headers=TREAT).status_code == 200
    assert api.get("/dicomweb/studies", headers={**TREAT, "Accept": "image/png"}).status_code == 406
    assert api.get("/dicomweb/studies?limit=x", headers=TREAT).status_code == 400
    assert api.get("/dicomweb/studies?Unknown=1", headers=TREAT).status_code == 400
    assert api.get("/dicomweb/studies").status_code == 403
    assert api.get("/dicomweb/series", headers=TREAT).status_code == 200
    assert api.get("/dicomweb/instances", headers=TREAT).status_code == 200
    assert api.get(f"/dicomweb/studies/{study}/series", headers=TREAT).status_code == 200
    assert api.get(f"/dicomweb/studies/{study}/instances", headers=TREAT).status_code == 200
    assert api.get(f"/dicomweb/studies/{study}/series/{series}/instances", headers=TREAT).status_code == 200
    retrieved = api.get(f"/dicomweb/studies/{study}", headers=TREAT)
    assert retrieved.status_code == 200
    assert api.get("/dicomweb/studies/1.2.3", headers=TREAT).status_code == 404
    assert api.get(f"/dicomweb/studies/{study}", headers={**TREAT, "Accept": "image/jpeg"}).status_code == 406
    assert api.get(f"/dicomweb/studies/{study}/series/{series}", headers=TREAT).status_code == 200
    inst = f"/dicomweb/studies/{study}/series/{series}/instances/{instance}"
    assert api.get(inst, headers=TREAT).status_code == 200
    assert api.get(f"/dicomweb/studies/{study}/metadata", headers=TREAT).status_code == 200
    assert api.get(f"/dicomweb/studies/{study}/series/{series}/metadata", headers=TREAT).status_code == 200
    assert api.get(f"{inst}/metadata", headers=TREAT).status_code == 200
    xml = {**TREAT, "Accept": 'multipart/related; type="application/dicom+xml"'}
    assert api.get("/dicomweb/studies", headers=xml).status_code == 200
    assert api.get(f"/dicomweb/studies/{study}/metadata", headers=xml).status_code == 200
    assert api.get(f"{inst}/metadata", headers=xml).status_code == 200
    assert api.get(f"{inst}/frames/1", headers=TREAT).status_code == 200
    assert api.get(f"{inst}/frames/x", headers=TREAT).status_code in (400, 422)
    assert api.get(f"{inst}/frames/1", headers={**TREAT, "Accept": "text/plain"}).status_code == 406
    assert api.get(f"{inst}/bulk/7FE00010", headers=TREAT).status_code in (200, 400, 404, 422)
    assert api.get(f"{inst}/rendered", headers=TREAT).status_code == 200
    assert api.get(f"{inst}/rendered", headers={**TREAT, "Accept": "application/pdf"}).status_code == 406
    assert api.get(f"{inst}/rendered?viewport=64,64&quality=50", headers=TREAT).status_code == 200
    assert api.get(f"{inst}/rendered?annotation=patient", headers=TREAT).status_code == 400
    assert api.get(f"{inst}/frames/1/rendered", headers=TREAT).status_code == 200
    assert api.get(f"{inst}/frames/9/rendered", headers=TREAT).status_code == 404
    assert api.get(f"{inst}/frames/1,2/rendered", headers=TREAT).status_code == 400
    assert api.get(f"{inst}/frames/1", headers={**TREAT, "Accept": "application/octet-stream"}).status_code in (
        200, 406)
    assert api.get(f"/dicomweb/studies/{study}/rendered", headers=TREAT).status_code == 400
    assert api.get(f"/dicomweb/studies/{study}/series/{series}/rendered", headers=TREAT).status_code == 400
    assert api.get(f"/dicomweb/studies/{study}/thumbnail", headers=TREAT).status_code == 200
    assert api.get(f"/dicomweb/studies/{study}/series/{series}/thumbnail", headers=TREAT).status_code == 200
    assert api.get(f"{inst}/thumbnail?viewport=x", headers=TREAT).status_code == 400
    stow_type = retrieved.headers["content-type"]
    assert api.post("/dicomweb/studies", content=retrieved.content,
                    headers={"Content-Type": stow_type}).status_code in (200, 202, 409)
    assert api.post(f"/dicomweb/studies/{study}", content=retrieved.content,
                    headers={"Content-Type": stow_type}).status_code in (200, 202, 409)
    for accept in ("application/dicom+xml", 'multipart/related; type="application/dicom+xml"'):
        assert api.post("/dicomweb/studies", content=retrieved.content,
                        headers={"Content-Type": stow_type, "Accept": accept}).status_code in (200, 202, 409)
    assert api.post("/dicomweb/studies", content=b"{}", headers={"Content-Type": "application/json"}).status_code \
        == 415
    wado = f"/wado?requestType=WADO&studyUID={study}&seriesUID={series}&objectUID={instance}"
    assert api.get(wado, headers=TREAT).status_code == 200
    assert api.get(f"{wado}&contentType=application/dicom", headers=TREAT).status_code == 200
    assert api.get(f"{wado}&contentType=text/html", headers=TREAT).status_code == 406
    assert api.get("/wado?requestType=WADO", headers=TREAT).status_code == 400

    # -- operations
    assert api.get("/outbox", headers=TREAT).status_code == 200
    assert api.get("/outbox?status=lost", headers=TREAT).status_code == 400
    assert api.get("/outbox").status_code == 403
    assert api.post("/outbox/requeue", json={"ids": [1]}, headers={"X-Purpose-Of-Use": "RECORDMGT"}).status_code == 200
    assert api.post("/outbox/requeue", json={"ids": [1]}, headers={"X-Purpose-Of-Use": "TRAIN"}).status_code == 403
    assert api.post("/outbox/requeue", json={"ids": [1]}).status_code == 403
    assert api.post("/outbox/requeue", json={"ids": ["x"]}, headers={"X-Purpose-Of-Use": "RECORDMGT"}).status_code \
        == 422
    assert api.get("/health").status_code == 200
    assert api.get("/health/ready").status_code in (200, 503)  # 503: no DICOM listener in this test
    assert api.get("/metrics").status_code == 200

    _patch_answers(api, record)

    documented = {(method, path) for path, operations in api.doc["paths"].items() for method in operations}
    assert documented - api.seen == set(), "an operation without a representative request here"


def test_the_openapi_document_and_its_page_are_logged_by_their_route(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    # new-user review 13: /openapi.json and /docs were served, and logged as "GET unmatched 200"
    import logging

    from fastapi.testclient import TestClient

    from adapter.api.asgi import build_app

    with adapter_client(tmp_path, http_docs=True) as (_, services), \
            TestClient(build_app(services.settings, services)) as client, \
            caplog.at_level(logging.INFO, logger="adapter.access"):
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200
        assert client.get("/no/such/route").status_code == 404
        assert client.get("/health").status_code == 200
    logged = [" ".join(r.getMessage().split()[:3]) for r in caplog.records if r.name == "adapter.access"]
    assert logged == ["GET /openapi.json 200", "GET /docs 200", "GET unmatched 404", "GET /health 200"]


def _patch_answers(api: CheckedClient, record: str) -> None:
    """PATCH /fhir/Media/{id} (marking it entered-in-error: last, as it withdraws the record)."""
    patch = {"Content-Type": "application/json-patch+json", "X-Purpose-Of-Use": "RECORDMGT"}
    mark = json.dumps([{"op": "replace", "path": "/status", "value": "entered-in-error"}])
    assert api.request("PATCH", f"/fhir/{record}", content=mark, headers={**patch, "X-Purpose-Of-Use": "TREAT"}) \
        .status_code == 403
    assert api.request("PATCH", f"/fhir/{record}", content=mark, headers={**patch, "Content-Type": "application/json"}) \
        .status_code == 415
    assert api.request("PATCH", f"/fhir/{record}", content=b"[{", headers=patch).status_code == 400
    assert api.request("PATCH", f"/fhir/{record}", content=b"[]", headers=patch).status_code == 422
    assert api.request("PATCH", f"/fhir/{record}", content=mark, headers={**patch, "If-Match": 'W/"9"'}).status_code == 412
    assert api.request("PATCH", "/fhir/DocumentReference/unknown", content=mark, headers=patch).status_code == 404
    assert api.request("PATCH", f"/fhir/{record}", content=mark, headers=patch).status_code == 428
    assert api.request("PATCH", f"/fhir/{record}", content=mark, headers={**patch, "If-Match": 'W/"1"'}) \
        .status_code == 200
    assert api.request("PATCH", f"/fhir/{record}", content=mark,
                       headers={**patch, "Accept": "application/fhir+json; fhirVersion=5.0"}).status_code == 406


def test_the_interactive_docs_page_is_not_served_by_default(tmp_path: Path) -> None:
    """Newcomer review 3: GET /docs served Swagger UI loading unpinned scripts from
    cdn.jsdelivr.net on the API's own origin, in production too; a script there could read under
    break-glass or PATCH records. Off unless ADAPTER_HTTP_DOCS (development only); the OpenAPI
    document itself stays, for a viewer run elsewhere."""
    with adapter_client(tmp_path) as (client, _):
        for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
            r = client.get(path)
            assert r.status_code == 404, path
            assert b"cdn.jsdelivr.net" not in r.content
        assert client.get("/openapi.json").json()["openapi"].startswith("3.")
