"""Who may file a clinical photo over STOW-RS without documented consent (clinical safety review
dicomsafety, F2): a VL Photographic face photo of a patient with no Consent, sent over STOW-RS by
any HTTP caller, was stored as a colleague's (`colleague-internal`), readable for care, its
Provenance naming "AE DICOMWEB" on behalf of the InstitutionName the sender wrote, where
`POST /photos` and `POST /fhir` refuse it (422). The C-STORE SCP trusts its senders by the
calling-AE allow-list; a STOW-RS sender is now trusted so only from the networks
ADAPTER_STOW_TRUSTED_SENDERS names (its TCP peer, or the client a trusted proxy forwards for);
from anyone else a clinical object needs a Consent on file permitting care, is kept consent
pending under ``allowPending``, or is refused (FailureReason 0x0124), nothing stored, audited.
Over the real app (TestClient, its peer address set) on a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.config import Settings
from adapter.consent.ingest import PENDING_WARNING
from adapter.errors import ConfigurationError
from adapter.mapping.codes import EXT_CONSENT_PENDING, EXT_PHOTO_SOURCE
from adapter.mapping.dicom_photo import encode_dataset
from adapter.mapping.dimse_status import NOT_AUTHORISED
from adapter.model.photo import PhotoKind
from adapter.services.registry import Services
from tests.integration.test_dicomweb import TREAT, add_consent, find, received, related, stow, value, wado
from tests.support.app import FhirClient, adapter_client
from tests.support.audit import INSTANCES_TRANSFERRED, dicom_events, patients, sop_instance_uids

pytestmark = pytest.mark.integration

TRUSTED = "10.0.0.0/28"        # the organisation's PACS and modalities
PACS = "10.0.0.5"
CAPTURE_APP = "10.9.8.7"       # an HTTP caller the gateway admits, not a trusted DICOMweb sender
PROXY = "10.1.0.1"
BTG = {"X-Purpose-Of-Use": "BTG"}
INSTITUTION = "Chosen By The Sender"


def _face() -> Any:
    return received(record_id="rec-face", InstitutionName=INSTITUTION)


def _stow_from(client: FhirClient, ds: Any, **headers: str) -> httpx.Response:
    body, ctype = related(("application/dicom", encode_dataset(ds)))
    return client.post("/dicomweb/studies", content=body, headers={"Content-Type": ctype, **headers})


def _provenance(client: FhirClient, media: dict[str, Any]) -> dict[str, Any]:
    r = client.get("/fhir/Provenance", params={"target": f"Media/{media['id']}"}, headers=TREAT)
    assert r.status_code == 200, r.text
    [entry] = r.json()["entry"]
    return dict(entry["resource"])


def _assert_refused(client: FhirClient, services: Services, r: httpx.Response, ds: Any) -> None:
    """409, the instance failed with 0x0124 Not authorised, nothing stored, the refusal audited."""
    assert r.status_code == 409, r.text
    [failed] = r.json()["00081198"]["Value"]
    assert (value(failed, "00081155"), value(failed, "00081197")) == (ds.SOPInstanceUID, NOT_AUTHORISED)
    [refusal] = dicom_events(services.store.list_audit(1), INSTANCES_TRANSFERRED)
    assert refusal["outcome"] == "4" and sop_instance_uids(refusal) == [ds.SOPInstanceUID]
    assert "consent" in refusal["outcomeDesc"] and patients(refusal)
    assert services.store.find_dicom_instance(ds.SOPInstanceUID) is None
    assert [m for m in find(client, "Media", ds.SOPInstanceUID, headers=BTG) if m["resourceType"] == "Media"] == []
    # safety review 7: the reason in words, in the Warning PS3.18 8.3.4.2 shapes (FailureReason is a number)
    [warning] = r.headers.get_list("Warning")
    assert warning.startswith("299 http") and f"instance {ds.SOPInstanceUID}: FailureReason 0x0124" in warning
    assert "consent" in warning.lower()


@pytest.mark.parametrize(("peer", "trusted"), [("testclient", None), (CAPTURE_APP, TRUSTED)],
                         ids=["nobody-trusted", "another-network"])
def test_an_untrusted_caller_cannot_file_a_clinical_photo_without_consent(
        tmp_path: Path, peer: str, trusted: str | None) -> None:
    """Seen failing: 200, stored as colleague-internal and readable for care. Documents keep their
    rules: a photographed document needs no consent for care, whoever sends it."""
    settings = {"stow_trusted_senders": trusted} if trusted else {}
    with adapter_client(tmp_path, peer=peer, **settings) as (client, services):
        face = _face()
        _assert_refused(client, services, stow(client, face), face)
        document = received(PhotoKind.DOCUMENT, record_id="rec-doc")
        assert stow(client, document).status_code == 200
        assert len(find(client, "DocumentReference", document.SOPInstanceUID)) == 1


def test_an_untrusted_caller_files_a_clinical_photo_on_a_consent_on_file(tmp_path: Path) -> None:
    """With a Consent permitting TREAT on file the photo is stored and readable for care, as a
    photo posted without a consent statement is: a clinician's (the patient's Consents decide its
    reads, not a colleague's word), its Provenance presenting no agent on behalf of the
    InstitutionName the sender wrote. Seen failing: colleague-internal, "AE DICOMWEB" on behalf of
    it."""
    with adapter_client(tmp_path, peer=CAPTURE_APP, stow_trusted_senders=TRUSTED) as (client, _):
        add_consent(client, ["TREAT"])
        face = _face()
        r = stow(client, face)
        assert r.status_code == 200, r.text
        [media] = find(client, "Media", face.SOPInstanceUID)
        assert {"url": EXT_PHOTO_SOURCE, "valueCode": "clinician"} in media["extension"]
        assert all(e["url"] != EXT_CONSENT_PENDING for e in media["extension"])
        assert wado(client, face.StudyInstanceUID, face.SeriesInstanceUID, face.SOPInstanceUID).status_code == 200
        provenance = _provenance(client, media)
        assert all("onBehalfOf" not in agent for agent in provenance["agent"])
        assert INSTITUTION not in json.dumps(provenance)


def test_a_trusted_sender_is_a_colleague_inside_the_organisation(tmp_path: Path) -> None:
    """From a network ADAPTER_STOW_TRUSTED_SENDERS names, as a C-STORE from an allowed AE: no
    Consent needed, stored as colleague-internal, on behalf of its InstitutionName, as before."""
    with adapter_client(tmp_path, peer=PACS, stow_trusted_senders=TRUSTED) as (client, _):
        face = _face()
        r = stow(client, face)
        assert r.status_code == 200, r.text
        [media] = find(client, "Media", face.SOPInstanceUID)
        assert {"url": EXT_PHOTO_SOURCE, "valueCode": "colleague-internal"} in media["extension"]
        transmitter = [a for a in _provenance(client, media)["agent"] if a["type"].get("text") == "Transmitter"]
        assert [a["onBehalfOf"]["display"] for a in transmitter] == [INSTITUTION]


def test_a_sender_is_trusted_by_the_client_a_trusted_proxy_forwards_for(tmp_path: Path) -> None:
    """Behind a trusted proxy the sender is the client it forwards for (adapter.api.forwarded),
    whether the proxy itself is listed or not; X-Forwarded-For from anyone else is not believed."""
    with adapter_client(tmp_path, peer=PROXY, stow_trusted_senders=f"{TRUSTED},{PROXY}",
                        trusted_proxies=PROXY) as (client, services):
        face = _face()
        _assert_refused(client, services, _stow_from(client, face, **{"X-Forwarded-For": CAPTURE_APP}), face)
        assert _stow_from(client, face, **{"X-Forwarded-For": PACS}).status_code == 200
    (tmp_path / "direct").mkdir()
    with adapter_client(tmp_path / "direct", peer=CAPTURE_APP, stow_trusted_senders=TRUSTED,
                        trusted_proxies=PROXY) as (client, services):
        face = _face()
        _assert_refused(client, services, _stow_from(client, face, **{"X-Forwarded-For": PACS}), face)


def test_an_untrusted_callers_photo_is_kept_consent_pending_where_the_policy_allows(tmp_path: Path) -> None:
    """Under ``allowPending`` the photo is kept consent pending, as one posted without consent is:
    not readable for care, readable under break-glass, documented by a Consent written later."""
    with adapter_client(tmp_path, peer=CAPTURE_APP, policy={"consent": {"allowPending": True}}) as (client, _):
        face = _face()
        r = stow(client, face)
        # safety review 4: stored with a warning, 202 (PS3.18 Table 10.5.3-1), said in words in the
        # Warning (PS3.18 has no WarningReason for it: the item has none), as POST /photos warns
        assert r.status_code == 202, r.text
        [item] = r.json()["00081199"]["Value"]
        assert value(item, "00081155") == face.SOPInstanceUID and "00081196" not in item
        [warning] = r.headers.get_list("Warning")
        assert warning.startswith("299 http") and warning.endswith(f"instance {face.SOPInstanceUID}: stored {PENDING_WARNING}")
        assert find(client, "Media", face.SOPInstanceUID) == []
        assert wado(client, face.StudyInstanceUID, face.SeriesInstanceUID, face.SOPInstanceUID).status_code == 403
        # (a break-glass search answers an OperationOutcome entry beside the matches)
        [media] = [m for m in find(client, "Media", face.SOPInstanceUID, headers=BTG) if m["resourceType"] == "Media"]
        assert {"url": EXT_CONSENT_PENDING, "valueBoolean": True} in media["extension"]
        # the record's pending note, as a posted photo's (one text: adapter.consent.ingest)
        assert PENDING_WARNING in [n["text"] for n in media["note"]]
        # sent again: answered from its record, 200 (nothing new stored, no warning repeated)
        assert stow(client, face).status_code == 200
        add_consent(client, ["TREAT"])
        assert len(find(client, "Media", face.SOPInstanceUID)) == 1
    # a trusted sender's object is not consent pending: its sender answers for consent
    (tmp_path / "trusted").mkdir()
    with adapter_client(tmp_path / "trusted", peer=PACS, stow_trusted_senders=TRUSTED,
                        policy={"consent": {"allowPending": True}}) as (client, _):
        face = _face()
        trusted = stow(client, face)
        assert trusted.status_code == 200 and "Warning" not in trusted.headers
        assert len(find(client, "Media", face.SOPInstanceUID)) == 1


@pytest.mark.parametrize("setting", ["pacs.hospital.example", "10.0.0.1/8", "fe80::1%eth0"])
def test_stow_trusted_senders_are_addresses_or_networks(setting: str) -> None:
    with pytest.raises(ConfigurationError, match="ADAPTER_STOW_TRUSTED_SENDERS"):
        Settings(stow_trusted_senders=setting)


@pytest.mark.parametrize("setting", ["0.0.0.0/0", "::/0", "10.0.0.5, 0.0.0.0/0"])
def test_stow_trusted_senders_cannot_be_everyone(setting: str) -> None:
    """Review of the day's merges: 0.0.0.0/0 or ::/0 was accepted, so every caller answered for
    consent again, as before the setting existed, with nothing said."""
    with pytest.raises(ConfigurationError, match="every address"):
        Settings(stow_trusted_senders=setting)
