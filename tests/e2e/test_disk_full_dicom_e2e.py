"""DICOM objects arriving at a data folder whose disk fills, against the server process: STOW-RS
over real HTTP and C-STORE from dcmtk's storescu. The data folder is a small tmpfs of its own
(tests.support.small_disk), filled with a file, so ENOSPC is the kernel's own. The photo's case
is tests/e2e/test_disk_full_e2e.py; these are the DICOM edges the same finding left answering
503 or a failure that says nothing of room (operations review, finding 4).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.dicom.status import OUT_OF_RESOURCES
from tests.conftest import require_or_skip
from tests.e2e.test_disk_full_e2e import audit_trail, staged
from tests.support.audit import INSTANCES_TRANSFERRED, caller_request_ids, dicom_events, sop_instance_uids
from tests.support.dcmtk import dcmtk_missing, echoscu, storescu
from tests.support.dicom_files import jpeg, sc_file
from tests.support.server import running_adapter
from tests.support.small_disk import MIB, fill, small_disk

TREAT = {"X-Purpose-Of-Use": "TREAT"}
FAILED_SOP_SEQUENCE, REFERENCED_SOP_SEQUENCE = "00081198", "00081199"
FAILURE_REASON, REFERENCED_SOP_INSTANCE_UID = "00081197", "00081155"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "small", 40) as mounted:
        yield mounted


def big_object(path: Path) -> Any:
    """A Secondary Capture of about 5 MiB (random pixels do not compress)."""
    ds = sc_file(path, frame=jpeg(3000, 2000, noise=True))
    assert path.stat().st_size > 4 * MIB
    return ds


def stow_body(*paths: Path) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p.read_bytes() + b"\r\n"
                    for p in paths) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def refused_transfers(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in dicom_events(events, INSTANCES_TRANSFERRED) if e["outcome"] != "0"]


def stored(url: str, sop_instance_uid: str) -> bool:
    r = httpx.get(f"{url}/fhir/Media", params={"identifier": f"urn:dicom:uid|urn:oid:{sop_instance_uid}"},
                  headers=TREAT, timeout=10)
    assert r.status_code == 200, r.text
    return bool(r.json().get("entry"))


def test_no_room_while_a_stow_rs_part_is_staged_fails_that_instance_out_of_resources(
        tmp_path: Path, disk: Path) -> None:
    """ENOSPC while a STOW-RS part was written to the staging folder answered the whole request
    503 "transient" (a client retries it for ever). It is answered as the reserve's refusal is
    there: the instance in the FailedSOPSequence with FailureReason 0xA700 (Out of Resources),
    409 when none was stored, 202 beside the instances received whole and stored (PS3.18
    10.5.3); audited as a transfer the adapter failed to keep (outcome 8, saying why); nothing of
    it stored, nothing left in the staging folder."""
    data = disk / "data"
    big = big_object(tmp_path / "big.dcm")
    small = sc_file(tmp_path / "small.dcm")
    with running_adapter(tmp_path, ADAPTER_DATA_DIR=str(data), ADAPTER_MIN_FREE_MB="0",
                         ADAPTER_DICOM_ENABLED="false", ADAPTER_MAX_UPLOAD_BYTES=str(16 * MIB),
                         ADAPTER_STOW_TRUSTED_SENDERS="127.0.0.1") as server:
        fill(disk / "filler", leave_bytes=2 * MIB)
        body, headers = stow_body(tmp_path / "big.dcm")
        r = httpx.post(f"{server.url}/dicomweb/studies", content=body, timeout=30,
                       headers={**headers, "X-Request-Id": "stow-enospc-1"})
        assert r.status_code == 409, r.text
        answer = r.json()
        [failed] = answer[FAILED_SOP_SEQUENCE]["Value"]
        assert failed[FAILURE_REASON]["Value"] == [OUT_OF_RESOURCES], failed
        assert REFERENCED_SOP_SEQUENCE not in answer
        assert staged(data) == []
        assert not stored(server.url, big.SOPInstanceUID)

        # a whole instance before the one the disk has no room for is stored, that one fails
        body, headers = stow_body(tmp_path / "small.dcm", tmp_path / "big.dcm")
        r = httpx.post(f"{server.url}/dicomweb/studies", content=body, timeout=30,
                       headers={**headers, "X-Request-Id": "stow-enospc-2"})
        assert r.status_code == 202, r.text
        answer = r.json()
        [referenced] = answer[REFERENCED_SOP_SEQUENCE]["Value"]
        assert referenced[REFERENCED_SOP_INSTANCE_UID]["Value"] == [small.SOPInstanceUID]
        [failed] = answer[FAILED_SOP_SEQUENCE]["Value"]
        assert failed[FAILURE_REASON]["Value"] == [OUT_OF_RESOURCES], failed
        assert staged(data) == []
        assert stored(server.url, small.SOPInstanceUID) and not stored(server.url, big.SOPInstanceUID)

        events = refused_transfers(audit_trail(data))
        for request_id in ("stow-enospc-1", "stow-enospc-2"):
            [event] = [e for e in events if caller_request_ids(e) == [request_id]]
            assert (event["action"], event["outcome"]) == ("C", "8"), event
            assert "room" in event["outcomeDesc"], event
        logged = server.log.read_text()
        assert "InsufficientStorage (ENOSPC)" in logged, logged[-3000:]


def test_no_room_while_a_c_store_is_spooled_is_out_of_resources_audited_as_no_room(
        tmp_path: Path, disk: Path) -> None:
    """ENOSPC while a C-STORE data set was spooled was answered 0xA700 as a failing disk is
    ("could not spool the object"), not as the reserve's refusal, which says the data folder has
    no room; and its audit event was lost (SQLITE_FULL: the partial spool file still took the
    room). Now the Error Comment says so and the refusal is audited as the reserve's is (outcome
    8, naming the instance); nothing stored, the spool file removed, and the SCP goes on storing
    what fits on the same association."""
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    data = disk / "data"
    big = big_object(tmp_path / "big.dcm")
    small = sc_file(tmp_path / "small.dcm")
    with running_adapter(tmp_path, ready=lambda s: echoscu(s.dicom_port, "ADAPTER", calling_aet="STORESCU",
                                                           check=False).returncode == 0,
                         ADAPTER_DATA_DIR=str(data), ADAPTER_MIN_FREE_MB="0", ADAPTER_AE_TITLE="ADAPTER",
                         ADAPTER_DICOM_ALLOWED_AE_TITLES="STORESCU",
                         ADAPTER_MAX_UPLOAD_BYTES=str(16 * MIB)) as server:
        fill(disk / "filler", leave_bytes=2 * MIB)
        done = storescu(server.dicom_port, "ADAPTER", [tmp_path / "big.dcm", tmp_path / "small.dcm"],
                        check=False, extra=["-d"])
        said = done.stdout + done.stderr
        assert "DIMSE Status                  : 0xa700: Refused: Out of resources" in said, said
        [comment] = [line for line in said.splitlines() if "(0000,0902)" in line]
        assert "no room" in comment, comment
        assert "DIMSE Status                  : 0x0000: Success" in said, said  # the next object, same association
        assert staged(data) == []
        assert not stored(server.url, big.SOPInstanceUID) and stored(server.url, small.SOPInstanceUID)
        [event] = refused_transfers(audit_trail(data))
        assert (event["action"], event["outcome"]) == ("C", "8"), event
        assert "room" in event["outcomeDesc"], event
        assert sop_instance_uids(event) == [big.SOPInstanceUID]
        assert "InsufficientStorage (ENOSPC)" in server.log.read_text()
