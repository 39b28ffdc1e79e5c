"""The data folder failing under the adapter (a read-only or full disk, a broken staging folder):
what a sender is answered, what the log says, and what readiness says.

A read-only or full file system cannot be made here without privileges (the tests may run as
root, whom chmod does not stop), so the failures are made real in other ways the kernel enforces
for any user: the staging folder replaced by a file (creating a file in it fails, ENOTDIR), a
file size limit on the process (RLIMIT_FSIZE: writing past it fails, EFBIG; Python ignores
SIGXFSZ), and a largest upload bigger than the free space the test's file system really has.
Everything else (the store, the files, the DICOM association, the HTTP stack) is real.
"""

from __future__ import annotations

import logging
import os
import resource
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from adapter.dicom import AeOptions, StoreSCP
from adapter.dicom.status import OUT_OF_RESOURCES, SUCCESS
from tests.support.app import adapter_client, metadata, pacs_client, post_photo
from tests.support.dicom_files import jpeg, pynet_store, sc_file

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WOUND = ROOT / "samples" / "wound.jpg"


@contextmanager
def staging_replaced_by_a_file(data_dir: Path) -> Iterator[None]:
    """The staging folder is a file for the duration: nothing can be created in it (ENOTDIR)."""
    staging = data_dir / "staging"
    shutil.rmtree(staging)
    staging.write_bytes(b"")
    try:
        yield
    finally:
        staging.unlink()
        staging.mkdir(mode=0o700)


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """No file of this process may grow past ``limit`` bytes for the duration (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def staged_files(data_dir: Path) -> list[Path]:
    staging = data_dir / "staging"
    return [p for p in staging.iterdir() if p.is_file()] if staging.is_dir() else []


# -- C-STORE -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("pynetdicom_config")
def test_a_c_store_whose_spool_file_cannot_be_created_is_answered_out_of_resources(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the operations review: with the data folder read-only, the SCP aborted the
    association (no C-STORE response) and logged that the peer sent a DIMSE message that cannot
    be decoded. The failure is local: PS3.4 B.2.3, 0xA700 Out of Resources, nothing stored, the
    association and the SCP go on, and the log names the local failure and its errno."""
    data = tmp_path / "data"
    with adapter_client(tmp_path, min_free_mb=0) as (_, services):
        scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",)), services.dicom_ingest)
        scp.start()
        try:
            sent = sc_file(tmp_path / "sc.dcm")
            with caplog.at_level(logging.INFO), staging_replaced_by_a_file(data):
                answer = pynet_store(scp.port, tmp_path / "sc.dcm", chunked=True)
            assert answer.Status == OUT_OF_RESOURCES, hex(answer.Status)
            assert "staging" in answer.ErrorComment
            assert services.store.find_dicom_instance(sent.SOPInstanceUID) is None
            assert not [p for p in (data / "blobs").rglob("*") if p.is_file()]
            logged = caplog.text
            assert "peer sent" not in logged and "Connection closed" not in logged, logged
            assert [m for m in errors(caplog) if "ENOTDIR" in m and "spool" in m], errors(caplog)
            # the SCP goes on: the same object once the folder is back
            assert pynet_store(scp.port, tmp_path / "sc.dcm", chunked=True).Status == SUCCESS
            assert services.store.find_dicom_instance(sent.SOPInstanceUID) is not None
            assert staged_files(data) == []
        finally:
            scp.stop()


@pytest.mark.usefixtures("pynetdicom_config")
def test_a_c_store_whose_spool_file_cannot_be_written_is_answered_out_of_resources(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the operations review: with the data folder full, writing the spool file failed
    while the object arrived, and the SCP aborted the association ("Connection closed before the
    entire PDU was received"). The rest of the object is read and dropped, then 0xA700 is
    answered; the partial spool file is removed; the next object is stored."""
    data = tmp_path / "data"
    with adapter_client(tmp_path, min_free_mb=0) as (_, services):
        scp = StoreSCP(AeOptions(port=0, allowed_ae_titles=("PYNETSCU",)), services.dicom_ingest)
        scp.start()
        try:
            big = sc_file(tmp_path / "big.dcm", frame=jpeg(1600, 1200, noise=True))
            size = (tmp_path / "big.dcm").stat().st_size
            assert size > 1536 * 1024
            small = sc_file(tmp_path / "small.dcm")
            with caplog.at_level(logging.INFO), file_size_limit(1024 * 1024):
                answer = pynet_store(scp.port, tmp_path / "big.dcm", chunked=True)
            assert answer.Status == OUT_OF_RESOURCES, hex(answer.Status)
            assert services.store.find_dicom_instance(big.SOPInstanceUID) is None
            logged = caplog.text
            assert "peer sent" not in logged and "Connection closed" not in logged, logged
            assert [m for m in errors(caplog) if "EFBIG" in m and "spool" in m], errors(caplog)
            assert staged_files(data) == []
            assert pynet_store(scp.port, tmp_path / "small.dcm", chunked=True).Status == SUCCESS
            assert services.store.find_dicom_instance(small.SOPInstanceUID) is not None
        finally:
            scp.stop()


# -- POST /photos ------------------------------------------------------------------------------


def test_a_photo_whose_staged_file_cannot_be_created_says_so_and_logs_the_errno(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the operations review: with the data folder read-only, POST /photos answered 503
    "could not remove a staged upload" (the clean-up's failure hid the write's), and the log had
    no errno. The answer says the staged upload could not be created; one ERROR line names the
    errno (no path: a staging name says nothing of a patient, but none is needed)."""
    data = tmp_path / "data"
    with adapter_client(tmp_path, min_free_mb=0, dicom_enabled=False) as (client, _):
        with caplog.at_level(logging.INFO), staging_replaced_by_a_file(data):
            r = post_photo(client, WOUND, metadata())
        assert r.status_code == 503, r.text
        diagnostics = r.json()["issue"][0]["diagnostics"]
        assert "remove" not in diagnostics and "staged upload could not be created" in diagnostics, diagnostics
        assert errors(caplog) == ["request failed: StorageError (ENOTDIR)"], errors(caplog)
        assert not [p for p in (data / "blobs").rglob("*") if p.is_file()]
        assert post_photo(client, WOUND, metadata()).status_code == 201


def test_a_stow_rs_part_that_cannot_be_staged_is_answered_503_not_a_bare_500(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """STOW-RS writes each application/dicom part to the staging folder as it arrives: with the
    folder unusable it answered a bare 500 (an OSError out of the parser, as if a bug). A local
    failure is 503 (retry later), saying what failed, one ERROR line with the errno; nothing stored."""
    data = tmp_path / "data"
    sent = sc_file(tmp_path / "sc.dcm")
    boundary = "b0undary-1234"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + (tmp_path / "sc.dcm").read_bytes()
            + f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}
    with pacs_client(tmp_path, min_free_mb=0, dicom_enabled=False) as (client, services):
        with caplog.at_level(logging.INFO), staging_replaced_by_a_file(data):
            r = client.post("/dicomweb/studies", content=body, headers=headers)
        assert r.status_code == 503, r.text
        assert "could not be created in the staging folder" in r.text, r.text
        assert errors(caplog) == ["request failed: StorageError (ENOTDIR)"], errors(caplog)
        assert services.store.find_dicom_instance(sent.SOPInstanceUID) is None
        assert client.post("/dicomweb/studies", content=body, headers=headers).status_code == 200


# -- readiness ---------------------------------------------------------------------------------


def test_readiness_warns_when_the_data_folder_has_no_room_for_one_upload_whatever_the_reserve(
        tmp_path: Path) -> None:
    """Found by the operations review: with ADAPTER_MIN_FREE_MB=0 and 0 bytes free, readiness
    said pass. Less free than one largest upload (ADAPTER_MAX_UPLOAD_BYTES) is a warning: a photo
    or object of that size cannot be stored."""
    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    with adapter_client(tmp_path, min_free_mb=0, dicom_enabled=False,
                        max_upload_bytes=free + 1024 * 1024 * 1024) as (client, _):
        r = client.get("/health/ready")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "warn", body
        storage = body["checks"]["storage:freeSpace"][0]
        assert storage["status"] == "warn" and "largest upload" in storage["output"], storage
