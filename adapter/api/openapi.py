"""What the OpenAPI document (``/openapi.json``, ``/docs``) says each route takes and answers.

The routes build their answers themselves (FHIR JSON, DICOM JSON, multipart/related, image
bytes) and every refusal is an OperationOutcome (adapter.api.outcome), none of which FastAPI can
see. So they declare it, with what is here, each concern once:

* the statuses a concern answers with an OperationOutcome (:func:`refusals` of :data:`READ`,
  :data:`FHIR_NEGOTIATION`, :data:`BODY`, ...), each described once in :data:`REFUSALS`;
* the success answers (:func:`ok`) with their media types and, where cheap, schemas;
* the request bodies (:func:`request_body`) the routes read from the stream themselves.

:func:`install_openapi` adds what every operation shares: the schemas referred to, a 500
OperationOutcome, a 400 and a 421 for a Host header that names no host or another host
(adapter.api.allowed_hosts), and the OperationOutcome a validation error (422) really gets instead of
FastAPI's own HTTPValidationError; and, on the FHIR routes (``/fhir``), FHIR XML wherever FHIR
JSON is declared, answers (refusals included) and request bodies alike (adapter.api.fhir_xml). tests/integration/test_openapi.py makes real requests and
checks that each status and content type answered is declared for its path and method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from adapter.model.photo import PhotoMetadata

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
JSON = "application/json"
DICOM = "application/dicom"
DICOM_JSON = "application/dicom+json"
DICOM_XML = "application/dicom+xml"
FORM = "application/x-www-form-urlencoded"
MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
MULTIPART_DICOM_XML = 'multipart/related; type="application/dicom+xml"'
MULTIPART_JPEG = 'multipart/related; type="image/jpeg"'
MULTIPART_OCTET = 'multipart/related; type="application/octet-stream"'
#: The bytes a record's image, a rendered instance or a consent form are served as.
IMAGES = ("image/jpeg", "image/png", "application/pdf")

_SCHEMAS = "#/components/schemas/"
OUTCOME_SCHEMA = {"$ref": _SCHEMAS + "OperationOutcome"}
RESOURCE_SCHEMA = {"$ref": _SCHEMAS + "Resource"}
BUNDLE_SCHEMA = {"$ref": _SCHEMAS + "Bundle"}
DICOM_DATASET = {"$ref": _SCHEMAS + "DicomJsonDataset"}
DICOM_DATASETS = {"type": "array", "items": DICOM_DATASET}
BYTES_SCHEMA = {"type": "string", "format": "binary"}

#: What each status means where the API answers it with an OperationOutcome (FHIR http.html,
#: PS3.18 for DICOMweb); a route lists the ones it answers through the concern sets below.
REFUSALS: dict[int, str] = {
    400: "Bad request: X-Purpose-Of-Use unknown or given more than once, a parameter or element not supported "
         "here, a malformed resource or body, a request that did not arrive whole, or a Host header that names no "
         "host",
    403: "Forbidden: no X-Purpose-Of-Use, or what was asked is not permitted for that purpose (consent, policy); "
         "a refusal on consent grounds says little; a write stating a purpose that sees less than the whole record "
         "(TRAIN, HRESCH...)",
    404: "Not found, or a resource type not served here",
    405: "Method not allowed: an update of a resource that does not exist (the server assigns ids; Allow says "
         "what the resource takes)",
    406: "Not acceptable: nothing the Accept header (or _format, contentType, transfer-syntax) asks for is served "
         "here (answers are not transcoded)",
    408: "Request timeout: the body stopped arriving; nothing was stored",
    409: "Conflict with what is stored (the photo stored with another consent, a concurrent change); nothing stored",
    410: "Gone: the search link has expired",
    412: "Precondition failed: If-Match names another version than the current one",
    413: "Payload too large (ADAPTER_MAX_UPLOAD_BYTES and the request's own limits); nothing stored",
    415: "Unsupported media type: the request body's Content-Type is not one this operation takes",
    421: "Misdirected request: the Host header names a host this adapter does not answer for (ADAPTER_BASE_URL's, "
         "ADAPTER_ALLOWED_HOSTS, its listening address); nothing was read",
    422: "Unprocessable: an invalid or unknown parameter, element, code or image, a broken business rule, or a "
         "request too costly to answer",
    428: "Precondition required: an irreversible change (entered-in-error) must name the version it is of in "
         "If-Match (W/\"<version>\"; * is not taken); nothing changed",
    500: "Internal error (the body holds no internals)",
    503: ("The store or the data folder failed to read or write, or the adapter is making as many large "
          "images as it makes at once; nothing was stored, retry later (Retry-After)"),
    507: "Insufficient storage: the data folder is down to its reserve (ADAPTER_MIN_FREE_MB); nothing stored",
}

#: Reads state a purpose of use (adapter.api.deps.get_read_context: 400 unknown or repeated, 403
#: none or not permitted) and go through the store (503).
READ = (400, 403, 503)
#: Reads of one thing (a resource, a study, an instance) that may not exist.
READ_ONE = (*READ, 404)
#: FHIR content and version negotiation (adapter.api.negotiation): another format or fhirVersion.
FHIR_NEGOTIATION = (406,)
#: Invalid parameters or elements, business rules, too costly.
INVALID = (422,)
#: A request body read from the stream: not whole (400), stalled (408), too large (413), of
#: another media type (415), invalid (422); the store fails (503).
BODY = (400, 408, 413, 415, 422, 503)
#: A write (adapter.api.deps.get_write_context): a stated purpose that sees less than the record (403).
WRITE = (403,)
#: A write of new images (a photo, a transaction's Binary): conflicts and the storage reserve.
NEW_IMAGES = (409, 507)


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` entries: each status answered with an OperationOutcome (application/fhir+json)."""
    return {status: {"description": REFUSALS[status], "content": {FHIR_JSON: {"schema": OUTCOME_SCHEMA}}}
            for status in sorted(set(statuses))}


def ok(status: int, description: str, media: Mapping[str, Mapping[str, Any] | None] | None = None,
       headers: Mapping[str, str] | None = None) -> dict[int | str, dict[str, Any]]:
    """A ``responses=`` entry for a success: its media types with their schemas (None: bytes);
    no media: an answer without a body (304, a create with Prefer: return=minimal)."""
    answer: dict[str, Any] = {"description": description}
    if media:
        answer["content"] = {name: {"schema": dict(schema) if schema is not None else BYTES_SCHEMA}
                             for name, schema in media.items()}
    if headers:
        answer["headers"] = {name: {"description": text, "schema": {"type": "string"}}
                             for name, text in headers.items()}
    return {status: answer}


def answers(*parts: Mapping[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: its :func:`ok` and :func:`refusals` parts together (the
    contents of one status merged)."""
    out: dict[int | str, dict[str, Any]] = {}
    for part in parts:
        for status, answer in part.items():
            if status in out:
                merged = {**out[status], **answer}
                merged["content"] = {**out[status].get("content", {}), **answer.get("content", {})}
                out[status] = merged
            else:
                out[status] = dict(answer)
    return out


def request_body(media: Mapping[str, Mapping[str, Any] | None], description: str, *,
                 encoding: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``openapi_extra=`` of a route that reads its body itself: its media types (with their
    schemas; None: bytes) and, for a form, how each part is encoded."""
    content: dict[str, Any] = {}
    for name, schema in media.items():
        content[name] = {"schema": dict(schema) if schema is not None else BYTES_SCHEMA}
        if encoding and name == "multipart/form-data":
            content[name]["encoding"] = dict(encoding)
    return {"requestBody": {"required": True, "description": description, "content": content}}


# -- what each kind of route answers -------------------------------------------------------------

FHIR_RESOURCE = {FHIR_JSON: RESOURCE_SCHEMA}
FHIR_BUNDLE = {FHIR_JSON: BUNDLE_SCHEMA}
#: A FHIR JSON request body (a transaction or batch Bundle, a Consent): application/json is taken too.
FHIR_BODY_TYPES = (FHIR_JSON, JSON)

#: POST /photos: a multipart/form-data with the photo and its metadata.
PHOTO_UPLOAD = request_body(
    {"multipart/form-data": {
        "type": "object", "required": ["file", "metadata"],
        "properties": {"file": {**BYTES_SCHEMA, "description": "the photo, image/jpeg or image/png (or "
                                                              "application/octet-stream: its bytes say which)"},
                       "metadata": {"$ref": _SCHEMAS + "PhotoMetadata"}}}},
    "the photo (`file`) and what is known about it (`metadata`, JSON)",
    encoding={"file": {"contentType": "image/jpeg, image/png, application/octet-stream"},
              "metadata": {"contentType": JSON}})


def _components() -> dict[str, Any]:
    """The schemas the declarations refer to."""
    metadata = PhotoMetadata.model_json_schema(ref_template=_SCHEMAS + "{model}")
    defs = metadata.pop("$defs", {})
    issue = {
        "type": "object", "required": ["severity", "code"],
        "properties": {
            "severity": {"type": "string", "enum": ["fatal", "error", "warning", "information"]},
            "code": {"type": "string", "description": "an IssueType (http://hl7.org/fhir/R4/valueset-issue-type.html)"},
            "details": {"type": "object"},
            "diagnostics": {"type": "string"},
            "expression": {"type": "array", "items": {"type": "string"}},
        },
    }
    return {
        "OperationOutcome": {
            "type": "object", "required": ["resourceType", "issue"],
            "description": "FHIR R4 OperationOutcome (https://hl7.org/fhir/R4/operationoutcome.html)",
            "properties": {"resourceType": {"type": "string", "enum": ["OperationOutcome"]},
                           "issue": {"type": "array", "minItems": 1, "items": issue}},
        },
        "Resource": {
            "type": "object", "required": ["resourceType"],
            "description": "a FHIR resource (R4; R5 when asked with fhirVersion=5.0)",
            "properties": {"resourceType": {"type": "string"}, "id": {"type": "string"},
                           "meta": {"type": "object"}},
        },
        "Bundle": {
            "type": "object", "required": ["resourceType", "type"],
            "description": "a FHIR Bundle (https://hl7.org/fhir/R4/bundle.html)",
            "properties": {"resourceType": {"type": "string", "enum": ["Bundle"]},
                           "type": {"type": "string"}, "total": {"type": "integer", "minimum": 0},
                           "link": {"type": "array", "items": {"type": "object"}},
                           "entry": {"type": "array", "items": {"type": "object"}}},
        },
        "DicomJsonDataset": {
            "type": "object", "description": "a dataset in the DICOM JSON Model (PS3.18 F.2), by tag",
            "additionalProperties": {"type": "object", "required": ["vr"],
                                     "properties": {"vr": {"type": "string"}, "Value": {"type": "array"},
                                                    "BulkDataURI": {"type": "string"}}},
        },
        "PhotoMetadata": metadata,
        **defs,
    }


def install_openapi(app: FastAPI) -> None:
    """Build the app's OpenAPI document (once, when first asked for) from the routes'
    declarations, with what every operation shares (module docstring)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):  # never answered: see below
                schemas.pop(name, None)
            schemas.update(_components())
            for path, operations in doc.get("paths", {}).items():
                for operation in operations.values():
                    _shared_refusals(operation["responses"])
                    if path == "/fhir" or path.startswith("/fhir/"):
                        _fhir_xml_too(operation)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _fhir_xml_too(operation: dict[str, Any]) -> None:
    """A FHIR route takes and answers FHIR XML wherever it does FHIR JSON (the same schema: the
    resource, in the other representation)."""
    contents = [answer.get("content", {}) for answer in operation["responses"].values()]
    contents.append(operation.get("requestBody", {}).get("content", {}))
    for content in contents:
        if FHIR_JSON in content:
            content.setdefault(FHIR_XML, content[FHIR_JSON])


def _shared_refusals(responses: dict[str, Any]) -> None:
    """What every operation may answer: 500 (adapter.api.outcome), 400 and 421 (a Host that names
    no host, or another: adapter.api.allowed_hosts), and a validation error of a parameter or body
    FastAPI validates (422) as the OperationOutcome it gets instead of FastAPI's HTTPValidationError."""
    answer = responses.get("422")
    if answer and "HTTPValidationError" in str(answer.get("content", {}).get(JSON)):
        answer["content"] = {FHIR_JSON: {"schema": OUTCOME_SCHEMA}}
        answer["description"] = REFUSALS[422]
    for status, answer in refusals(400, 421, 500).items():
        responses.setdefault(str(status), answer)
