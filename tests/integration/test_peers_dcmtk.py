"""Smoke test of the dcmtk helpers (tests/support/dcmtk.py) against Orthanc, both directions.

echoscu and storescu (-xy, JPEG Baseline) into Orthanc's C-STORE SCP; Orthanc C-STOREs back to a
storescp (+xa) on loopback; the JPEG arrives byte for byte. And an association request dcmtk
accepts (a vendor's User Information sub-item) is accepted by the adapter too. Skipped without the
peers installed, failed in CI (CI=true).
"""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pydicom
import pytest
from PIL import Image
from pydicom.encaps import generate_frames
from pydicom.uid import JPEGBaseline8Bit

from adapter.dicom import AeOptions
from adapter.dicom import StoreSCP as AdapterSCP
from adapter.dicom.scu import StoreSCU
from tests.conftest import require_or_skip, wait_until
from tests.support.app import adapter_client
from tests.support.dcmtk import StoreSCP, dcmtk_missing, echoscu, storescu, wrap_jpeg_as_sc
from tests.support.dicom_raw import (
    A_ASSOCIATE_AC,
    A_RELEASE_RP,
    A_RELEASE_RQ,
    VERIFICATION,
    AcceptanceRewriter,
    associate_rq,
    read_pdu,
    sub_item,
)
from tests.support.orthanc import OrthancPeer, orthanc_missing

pytestmark = pytest.mark.integration


def require_peers() -> None:
    missing = orthanc_missing() or dcmtk_missing()
    require_or_skip(missing is None, missing or "")


def sc_file(path: Path, shade: int) -> bytes:
    img = Image.new("RGB", (40, 30), (shade, 255 - shade, 128))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=85)
    data = wrap_jpeg_as_sc(buf.getvalue(), patient_id=f"DCMTK-{shade}")
    path.write_bytes(data)
    return data


def frame(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    return next(generate_frames(ds.PixelData, number_of_frames=1))


def test_storescu_to_orthanc_and_orthanc_to_storescp(tmp_path: Path) -> None:
    require_peers()
    files = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    sent = [sc_file(files[0], 10), sc_file(files[1], 200)]
    with (
        StoreSCP(tmp_path / "recv", aet="ADAPTER") as scp,
        OrthancPeer(tmp_path / "orthanc", modalities={"recv": ("ADAPTER", "127.0.0.1", scp.port)}) as orthanc,
    ):
        echoscu(orthanc.dicom_port, orthanc.aet)
        echoscu(scp.port, scp.aet)

        done = storescu(orthanc.dicom_port, orthanc.aet, files)
        assert done.returncode == 0, done.stderr
        ids = orthanc.instances()
        assert len(ids) == 2
        got = sorted(frame(orthanc.instance_file(i)) for i in ids)
        assert got == sorted(frame(d) for d in sent)  # stored as JPEG Baseline, not transcoded

        job = orthanc.store_to("recv", ids)
        assert job.get("FailedInstancesCount", 0) == 0, job
        received = scp.files()
        assert len(received) == 2
        assert sorted(frame(p.read_bytes()) for p in received) == got

        scp.clear()
        assert storescu(scp.port, scp.aet, files[:1]).returncode == 0
        assert [frame(p.read_bytes()) for p in scp.files()] == [frame(sent[0])]


def _answer_to(port: int, request: bytes) -> int:
    """The PDU type a peer answers ``request`` with (released again if it is an A-ASSOCIATE-AC)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        kind, _ = read_pdu(sock)
        if kind == A_ASSOCIATE_AC:
            sock.sendall(A_RELEASE_RQ)
            assert read_pdu(sock)[0] == A_RELEASE_RP
        return kind


@pytest.mark.usefixtures("pynetdicom_config")
def test_a_vendor_user_information_sub_item_is_accepted_by_dcmtk_and_by_the_adapter(tmp_path: Path) -> None:
    """What adapter.dicom.associate_pdu relies on: dcmtk's storescp accepts an A-ASSOCIATE-RQ
    holding items of types it does not know (User Information sub-items, a Presentation Context
    sub-item, a variable item); so does the adapter."""
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    vendor = sub_item(0x5F, b"vendor data") + sub_item(0x60, b"\x01")
    requests = [associate_rq(abstract=VERIFICATION, calling="STORESCU", user_items=vendor),
                associate_rq(abstract=VERIFICATION, calling="STORESCU", context_items=sub_item(0x60, b"\x01")),
                associate_rq(abstract=VERIFICATION, calling="STORESCU", items=sub_item(0x7E, b"\x01"))]
    with StoreSCP(tmp_path / "recv", aet="ADAPTER") as dcmtk:
        assert [_answer_to(dcmtk.port, r) for r in requests] == [A_ASSOCIATE_AC] * 3
    (tmp_path / "adapter").mkdir()
    with adapter_client(tmp_path / "adapter") as (_, services):
        scp = AdapterSCP(AeOptions(port=0, allowed_ae_titles=("STORESCU",)), services.dicom_ingest)
        scp.start()
        try:
            assert [_answer_to(scp.port, r) for r in requests] == [A_ASSOCIATE_AC] * 3
        finally:
            scp.stop()


@pytest.mark.usefixtures("pynetdicom_config")
def test_the_adapters_scu_ignores_a_vendor_sub_item_in_the_pacs_acceptance(tmp_path: Path) -> None:
    """dcmtk's storescp as the PACS, its A-ASSOCIATE-AC given a vendor's User Information
    sub-item on the way (AcceptanceRewriter): the adapter's SCU sends and the object arrives.
    pynetdicom aborted such an acceptance as an invalid PDU, so forwarding to that PACS was
    retried for ever."""
    missing = dcmtk_missing()
    require_or_skip(missing is None, missing or "")
    path = tmp_path / "a.dcm"
    sc_file(path, 40)
    with (StoreSCP(tmp_path / "recv", aet="PACS") as pacs,
          AcceptanceRewriter(pacs.port, sub_item(0x5F, b"vendor data")) as relay):
        scu = StoreSCU()
        try:
            [result] = scu.send_batch(f"PACS@127.0.0.1:{relay.port}", [path])
        finally:
            scu.release()
        assert relay.rewritten == 1
        assert result.acknowledged, result
        wait_until(lambda: len(list((tmp_path / "recv").iterdir())) == 1)
