"""Build the real application on a real store in a temporary folder, for integration tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml
from fastapi.testclient import TestClient

from adapter.api.app import create_app
from adapter.config import Settings
from adapter.model.decision import View
from adapter.services.registry import Services, build_services
from tests.conftest import ROOT, record_emitted, record_emitted_xml

PATIENT = {"system": "urn:oid:2.999.1.1", "value": "MRN-0001"}
#: The host TestClient names in every request (Host: testserver): an app it calls lists it in
#: ADAPTER_ALLOWED_HOSTS, as a deployment lists the names its reverse proxy forwards.
TEST_HOST = "testserver"


def write_policy(folder: Path, **overrides: Any) -> Path:
    """The project's policy with nested overrides, e.g. consent={"allowPending": True}."""
    policy = yaml.safe_load((ROOT / "mappings" / "policy.yaml").read_text())
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(policy.get(key), dict):
            policy[key] = {**policy[key], **value}
        else:
            policy[key] = value
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


class FhirClient(TestClient):
    """A TestClient that hands every FHIR response body, JSON or XML, to the session-wide
    validation: R5 when its content type says fhirVersion=5.0, else R4."""

    def request(self, *args: Any, **kwargs: Any) -> httpx.Response:  # type: ignore[override]
        response = super().request(*args, **kwargs)
        ctype = response.headers.get("content-type", "")
        version = "5" if "fhirversion=5" in ctype.lower().replace(" ", "") else "4"
        if "fhir+json" in ctype and response.content:  # HEAD: none
            record_emitted(response.json(), version)
        elif "fhir+xml" in ctype and response.content:
            record_emitted_xml(response.content, version)
        return response


@contextmanager
def adapter_client(tmp_path: Path, *, database_url: str | None = None, policy: dict[str, Any] | None = None,
                   peer: str = "testclient", **settings: Any) -> Iterator[tuple[FhirClient, Services]]:
    """The app on a store in ``tmp_path``; ``peer``: the address every request comes from (the
    TCP peer the app sees; TestClient's own name by default, which is no IP address)."""
    policy_path = write_policy(tmp_path, **(policy or {}))
    settings.setdefault("allowed_hosts", TEST_HOST)
    s = Settings(data_dir=tmp_path / "data", policy=policy_path, mappings_dir=ROOT / "mappings",
                 database_url=database_url, **settings)
    services = build_services(s)
    app = create_app(services)
    with FhirClient(app, raise_server_exceptions=False, client=(peer, 50000)) as client:
        yield client, services


#: The address the STOW-RS tests' PACS sends from (TestClient's peer), trusted as a DICOMweb sender
#: (ADAPTER_STOW_TRUSTED_SENDERS) as the SCP trusts an allowed calling AE.
PACS_PEER = "10.0.0.5"


def pacs_client(tmp_path: Path, **kwargs: Any) -> Any:
    """:func:`adapter_client` whose requests come from :data:`PACS_PEER`, a trusted STOW-RS sender:
    for tests that send objects as a PACS of the organisation does (clinical ones without a
    Consent on file, as the SCP takes them)."""
    return adapter_client(tmp_path, peer=PACS_PEER, stow_trusted_senders=PACS_PEER, **kwargs)


def metadata(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"patient": dict(PATIENT), "kind": "clinical", "source": "clinician",
                            "consent": {"purposes": ["TREAT"], "method": "verbal"}}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


#: The one JSON Patch the adapter takes (README: Correcting a misfiled record).
MARK_ENTERED_IN_ERROR = [{"op": "replace", "path": "/status", "value": "entered-in-error"}]


def mark_entered_in_error(client: Any, record: str, ops: Any = None, *, purpose: str = "RECORDMGT",
                          content_type: str = "application/json-patch+json", if_match: str | None = 'W/"1"',
                          **headers: str) -> Any:
    """PATCH ``record`` (``Type/id``) with ``ops`` (default: the mark) stated for ``purpose``, as
    of the version ``if_match`` names (the first by default; None: no If-Match, refused 428)."""
    conditional = {} if if_match is None else {"If-Match": if_match}
    return client.patch(f"/fhir/{record}", content=json.dumps(MARK_ENTERED_IN_ERROR if ops is None else ops).encode(),
                        headers={"Content-Type": content_type, **as_purpose(purpose), **conditional, **headers})


def post_photo(client: TestClient, path: Path, meta: dict[str, Any], *, content_type: str | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    """POST /photos; the file part declared ``content_type``, by default the type its name says
    (as curl declares it)."""
    if content_type is None:
        content_type = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(
            path.suffix.lower(), "application/octet-stream")
    return client.post("/photos", files={
        "file": (path.name, path.read_bytes(), content_type),
        "metadata": (None, json.dumps(meta), "application/json")}, headers=headers or {})


def consent_resource(purposes: list[str], *, status: str = "active", patient: dict[str, str] | None = None,
                     start: str = "2020-01-01", end: str | None = None) -> dict[str, Any]:
    period: dict[str, str] = {"start": start}
    if end:
        period["end"] = end
    return {
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": dict(patient or PATIENT)},
        "dateTime": "2026-11-26T10:00:00Z",
        "policy": [{"uri": "urn:clinical-image-adapter:policy:clinical-photography:v1"}],
        "provision": {"type": "permit", "period": period,
                      "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": p}
                                  for p in purposes]},
    }


def seen_as(services: Services, purpose: str, reference: str) -> str:
    """``reference`` (``Type/<stored id>``, or ``Type/<stored id>/_history/<n>``) as a reader of
    ``purpose`` names it: with the id its view shows (adapter.mapping.released_ids; a restricted
    view's own, care's the stored one)."""
    assert services.released_ids is not None
    view = View(services.tables.purposes.codes[purpose].view)
    return services.released_ids.space(view).reference(reference)


def as_purpose(code: str, **extra: str) -> dict[str, str]:
    return {"X-Purpose-Of-Use": code, **extra}
