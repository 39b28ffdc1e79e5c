"""What a phone's capture app meets over POST /photos (review "mobile", findings 4, 7 to 11),
against the real app and store: a consent form scanned with the phone, receipt warnings an app
can act on, a photo under another part's name, HEIC, truncated and empty files, compressed
bodies, and an EXIF capture time without an offset."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
import struct
from datetime import datetime
from pathlib import Path

import pytest

from tests.integration.test_api_ingest import _counts, _outcome
from tests.integration.test_api_ingest_limits import _jpeg_with_exif_time
from tests.support.app import adapter_client, as_purpose, metadata, post_photo
from tests.support.fhir_factories import jpeg_bytes

pytestmark = pytest.mark.integration

INGEST_WARNING = "urn:clinical-image-adapter:ingest-warning"


def _file(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _scan(megabytes: float) -> bytes:
    """A phone camera's scan of a form: a JPEG of about ``megabytes`` MB (noise does not compress)."""
    from PIL import Image

    side = 1200
    while True:
        img = Image.frombytes("L", (side, side), os.urandom(side * side)).convert("RGB")
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=92)
        if out.tell() >= megabytes * 1_000_000:
            return out.getvalue()
        side += 400


def _multipart(parts: list[tuple[str, bytes, str]], boundary: str = "b0undary") -> tuple[bytes, str]:
    body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n'
                    f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n" for name, data, ctype in parts)
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


# -- finding 4: a consent form scanned with the phone ---------------------------------------------

def test_a_consent_form_scanned_with_the_phone_is_attached(tmp_path: Path) -> None:
    """Seen failing: 413 "part 'metadata' is larger than 1048576 bytes" for any form over ~768 KB.
    A 3 MB scan (4 MB in base64) is taken, and the Consent holds it."""
    scan = _scan(3)
    assert len(scan) > 3_000_000
    meta = metadata(consent={"purposes": ["TREAT"], "method": "written", "formContentType": "image/jpeg",
                             "form": base64.b64encode(scan).decode()})
    with adapter_client(tmp_path) as (client, services):
        r = post_photo(client, _file(tmp_path, "wound.jpg", jpeg_bytes()), meta)
        assert r.status_code == 201, r.text
        # read from the store: the emitted-resource check's validator takes no string over 1 MB
        stored = services.store.get_version("Consent", r.json()["consents"][0].partition("/")[2], 1)
        assert stored is not None
        attachment = stored["sourceAttachment"]
        assert attachment["contentType"] == "image/jpeg" and len(base64.b64decode(attachment["data"])) > 2_000_000


def test_metadata_over_its_bound_is_413_at_metadata_saying_what_to_do(tmp_path: Path) -> None:
    body, ctype = _multipart([("file", jpeg_bytes(), "image/jpeg"),
                              ("metadata", b'{"consent": {"form": "' + b"A" * (17 << 20) + b'"}}', "application/json")])
    with adapter_client(tmp_path) as (client, services):
        issue = _outcome(client.post("/photos", content=body, headers={"Content-Type": ctype}), 413)["issue"][0]
        assert issue["code"] == "too-long" and issue["expression"] == ["metadata"]
        assert "consent.form" in issue["diagnostics"] and "POST /fhir/Consent" in issue["diagnostics"]
        assert _counts(services) == (0, 0)


# -- finding 7: warnings an app can act on ---------------------------------------------------------

def test_the_receipt_carries_its_warnings_as_a_coded_operation_outcome(tmp_path: Path) -> None:
    """Seen: only English strings. ``warnings`` stays as it was; ``outcome`` gives the same issues
    as the transaction-response, with the code of the ones to act on (image-quality: retake)."""
    with adapter_client(tmp_path) as (client, _):
        small = post_photo(client, _file(tmp_path, "small.jpg", jpeg_bytes(320, 240)), metadata())
        assert small.status_code == 201, small.text
        receipt = small.json()
        assert receipt["warnings"] and receipt["warnings"][0].startswith("image is 320x240 pixels")
        outcome = receipt["outcome"]
        assert outcome["resourceType"] == "OperationOutcome"
        assert [i["details"]["text"] for i in outcome["issue"]] == receipt["warnings"]
        quality = outcome["issue"][0]
        assert quality["severity"] == "warning" and quality["code"] == "informational"
        assert quality["details"]["coding"] == [{"system": INGEST_WARNING, "code": "image-quality",
                                                 "display": "image quality below the policy's minimum"}]
        replay = post_photo(client, _file(tmp_path, "small.jpg", jpeg_bytes(320, 240)), metadata())
        assert replay.json()["outcome"] == outcome  # a retry's receipt is the stored one
        fine = post_photo(client, _file(tmp_path, "fine.jpg", _scan(0.1)), metadata()).json()
        assert fine["warnings"] == []
        assert fine["outcome"]["issue"] == [{"severity": "information", "code": "informational",
                                             "details": {"text": "the photo was stored"}}]


# -- finding 8: the photo under another part's name ------------------------------------------------

def test_a_photo_under_another_part_name_is_named_not_too_large(tmp_path: Path) -> None:
    """Seen: 413 "part 'photo' is larger than 1048576 bytes" for a 3 MB photo (422 for a small one)."""
    body, ctype = _multipart([("photo", _scan(3), "image/jpeg"),
                              ("metadata", json.dumps(metadata()).encode(), "application/json")])
    with adapter_client(tmp_path) as (client, services):
        issue = _outcome(client.post("/photos", content=body, headers={"Content-Type": ctype}), 422)["issue"][0]
        assert issue["expression"] == ["file"]
        assert "'photo'" in issue["diagnostics"] and "send the photo in 'file'" in issue["diagnostics"]
        assert _counts(services) == (0, 0)


# -- finding 9: refusals that name the file and say what is wrong ----------------------------------

def _heic() -> bytes:
    """The start of an iPhone HEIC: an ftyp box, major brand heic."""
    ftyp = b"ftyp" + b"heic" + struct.pack(">I", 0) + b"mif1heicmiaf"
    return struct.pack(">I", 4 + len(ftyp)) + ftyp + b"\x00" * 200


@pytest.mark.parametrize("declared", ["application/octet-stream", "image/jpeg"])
def test_a_heic_is_refused_saying_it_is_heic_and_to_send_jpeg(tmp_path: Path, declared: str) -> None:
    with adapter_client(tmp_path) as (client, services):
        r = post_photo(client, _file(tmp_path, "IMG_0001.HEIC", _heic()), metadata(), content_type=declared)
        issue = _outcome(r, 415)["issue"][0]
        assert issue["expression"] == ["file"]
        assert "HEIC" in issue["diagnostics"] and "JPEG" in issue["diagnostics"]
        assert _counts(services) == (0, 0)


def test_a_truncated_jpeg_is_refused_at_file(tmp_path: Path) -> None:
    whole = jpeg_bytes()
    with adapter_client(tmp_path) as (client, _):
        r = post_photo(client, _file(tmp_path, "half.jpg", whole[: len(whole) // 2]), metadata())
        issue = _outcome(r, 422)["issue"][0]
        assert issue["expression"] == ["file"] and "truncated" in issue["diagnostics"]


def test_an_empty_file_part_is_said_to_be_empty(tmp_path: Path) -> None:
    """iOS gives 0 bytes for a photo not yet downloaded from iCloud: it was "neither JPEG nor PNG"."""
    with adapter_client(tmp_path) as (client, services):
        issue = _outcome(post_photo(client, _file(tmp_path, "cloud.jpg", b""), metadata()), 422)["issue"][0]
        assert issue["expression"] == ["file"] and "the file part is empty" in issue["diagnostics"]
        assert _counts(services) == (0, 0)


# -- finding 10: a compressed body -------------------------------------------------------------------

@pytest.mark.parametrize("coding", ["gzip", "br", "deflate, gzip"])
def test_a_compressed_body_is_415_with_accept_encoding_before_it_is_read(tmp_path: Path, coding: str) -> None:
    """Seen: 422 "malformed multipart body". RFC 9110 8.4.1, 15.5.16: 415 with Accept-Encoding."""
    body, ctype = _multipart([("file", jpeg_bytes(), "image/jpeg"),
                              ("metadata", json.dumps(metadata()).encode(), "application/json")])
    with adapter_client(tmp_path) as (client, services):
        r = client.post("/photos", content=gzip.compress(body),
                        headers={"Content-Type": ctype, "Content-Encoding": coding})
        issue = _outcome(r, 415)["issue"][0]
        assert r.headers["accept-encoding"] == "identity" and issue["code"] == "not-supported"
        assert "Content-Encoding" in issue["diagnostics"]
        fhir = client.post("/fhir", content=gzip.compress(b'{"resourceType": "Bundle"}'),
                           headers={"Content-Type": "application/fhir+json", "Content-Encoding": coding})
        assert fhir.status_code == 415 and fhir.headers["accept-encoding"] == "identity"
        assert _counts(services) == (0, 0)
        plain = client.post("/photos", content=body, headers={"Content-Type": ctype, "Content-Encoding": "identity"})
        assert plain.status_code == 201, plain.text


# -- finding 11: an EXIF time without an offset --------------------------------------------------------

def test_an_exif_time_without_offset_kept_as_its_date_is_said(tmp_path: Path) -> None:
    photo = _file(tmp_path, "pixel.jpg", _jpeg_with_exif_time(datetime(2024, 11, 28, 10, 15, 30)))
    with adapter_client(tmp_path) as (client, _):
        r = post_photo(client, photo, metadata())
        assert r.status_code == 201, r.text
        receipt = r.json()
        said = [w for w in receipt["warnings"] if "EXIF capture time has no offset" in w]
        assert said and "takenAt" in said[0]
        media = client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT")).json()
        assert media["createdDateTime"] == "2024-11-28"
        # with takenAt, nothing to say
        again = post_photo(client, _file(tmp_path, "pixel2.jpg", _jpeg_with_exif_time(datetime(2024, 11, 29, 9))),
                           metadata(patient={"system": "urn:oid:2.999.1.1", "value": "MRN-OTHER"},
                                    takenAt="2024-11-29T09:00:00+01:00"))
        assert again.status_code == 201, again.text
        assert not [w for w in again.json()["warnings"] if "EXIF" in w]


