"""STOW-RS parts in a transfer syntax the C-STORE SCP would not negotiate for their SOP class
(security review, finding 1): refused from the part's File Meta alone (group 0002), before the
data set is parsed, with FailureReason 0xC122 Referenced Transfer Syntax not supported
(PS3.18 I.2.2, Table I.2-2), nothing stored, the refusal audited. Deflated Explicit VR Little
Endian (1.2.840.10008.1.2.1.99) was inflated whole by pydicom before anything was checked: a
1 MB part cost 2 GB."""

from __future__ import annotations

import gc
import io
import struct
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit

from adapter.dicom.ae import AeOptions
from adapter.dicom.scp import StoreSCP
from adapter.errors import UnsupportedTransferSyntax
from adapter.mapping.dicom_photo import encode_dataset
from adapter.mapping.dicom_tables import accepted_transfer_syntaxes
from adapter.mapping.dimse_status import REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED
from adapter.services.dicom_ingest import ReceivedStore
from adapter.services.registry import Services
from tests.conftest import record_emitted
from tests.integration.test_dicomweb import pdf_object, received, stow, value
from tests.support.app import FhirClient, pacs_client
from tests.support.audit import INSTANCES_TRANSFERRED, dicom_events, sop_instance_uids

pytestmark = pytest.mark.integration

#: What the bomb inflates to: past the adapter's upload (object size) limit in the tests.
INFLATED = 256 * 1024 * 1024
#: The most the refusal of one such part may cost (tracemalloc's peak): a few MB of request
#: handling, never the inflated size.
BOUND = 24 * 1024 * 1024


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with pacs_client(tmp_path) as pair:
        yield pair


def deflate_bomb(sop_class: str, sop_instance: str, inflated: int = INFLATED) -> bytes:
    """A Part 10 file whose File Meta names Deflated Explicit VR Little Endian, followed by a raw
    deflate stream (PS3.5 A.5) of one OB element of ``inflated`` zero bytes: about 1/1000 of it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out.write(deflater.compress(struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, inflated)))
    chunk = bytes(1 << 22)
    for _ in range(inflated // len(chunk)):
        out.write(deflater.compress(chunk))
    out.write(deflater.flush())
    return out.getvalue()


def deflated(ds: Dataset) -> bytes:
    """``ds`` as a well-formed Deflated Explicit VR Little Endian Part 10 file."""
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _peak_during(call: object) -> tuple[object, int]:
    gc.collect()
    tracemalloc.start()
    try:
        result = call()  # type: ignore[operator]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def _assert_refused(services: Services, r: object, sop_instance: str) -> None:
    assert r.status_code == 409, r.text  # type: ignore[attr-defined]
    (failed,) = r.json()["00081198"]["Value"]  # type: ignore[attr-defined]
    assert value(failed, "00081155") == sop_instance
    assert value(failed, "00081197") == REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED == 0xC122
    assert services.store.find_dicom_instance(sop_instance) is None
    (refusal,) = dicom_events(services.store.list_audit(1), INSTANCES_TRANSFERRED)
    record_emitted([refusal])
    assert refusal["outcome"] == "4" and sop_instance_uids(refusal) == [sop_instance]
    assert list((services.settings.data_dir / "staging").iterdir()) == []


def test_a_deflate_bomb_is_refused_from_its_file_meta_without_being_inflated(
        adapter: tuple[FhirClient, Services]) -> None:
    """~260 KB of part inflating to 256 MiB (past the upload limit): 0xC122, and the request
    costs a few MB (tracemalloc's peak), not the inflated size (seen failing: peak ~512 MiB,
    FailureReason 0xC000 after the inflation)."""
    client, services = adapter
    sop_class = received().SOPClassUID
    bomb = deflate_bomb(sop_class, "2.25.1234567")
    assert len(bomb) < 300_000 and INFLATED > services.settings.max_upload_bytes
    r, peak = _peak_during(lambda: stow(client, bomb))
    print(f"part {len(bomb)} bytes, inflating to {INFLATED}: peak {peak / 2**20:.1f} MiB")
    assert peak < BOUND
    _assert_refused(services, r, "2.25.1234567")


def test_a_well_formed_deflated_object_is_refused_as_the_scp_would_not_negotiate_it(
        adapter: tuple[FhirClient, Services]) -> None:
    """Deflated is not among the syntaxes the SCP accepts for any class: STOW-RS refuses it too."""
    client, services = adapter
    ds = received()
    _assert_refused(services, stow(client, deflated(ds)), ds.SOPInstanceUID)


def test_a_pdf_in_a_syntax_the_scp_does_not_accept_for_it_is_refused(adapter: tuple[FhirClient, Services]) -> None:
    """One list for both edges: the SCP accepts an Encapsulated PDF only uncompressed, so a PDF
    part naming JPEG Baseline is refused with 0xC122, as its presentation context would be."""
    client, services = adapter
    pdf = pdf_object()
    pdf.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    _assert_refused(services, stow(client, encode_dataset(pdf)), pdf.SOPInstanceUID)


def test_the_scp_negotiates_exactly_the_syntaxes_stow_accepts(adapter: tuple[FhirClient, Services]) -> None:
    """The presentation contexts the SCP accepts are built from the table STOW-RS checks parts against."""
    _, services = adapter
    scp = StoreSCP(AeOptions.from_settings(services.settings, services.tables.policy), services.dicom_ingest)
    ae = scp._build_ae()
    contexts = {c.abstract_syntax: tuple(c.transfer_syntax) for c in ae.supported_contexts}
    for sop_class in services.dicom_ingest.accepted_sop_classes:
        assert contexts[sop_class] == accepted_transfer_syntaxes(sop_class)
        assert DeflatedExplicitVRLittleEndian not in accepted_transfer_syntaxes(sop_class)


def test_the_ingest_refuses_a_syntax_not_accepted_for_the_class_before_reading_the_object(
        adapter: tuple[FhirClient, Services], tmp_path: Path) -> None:
    """Whatever edge hands it over, the ingest refuses an object in a syntax the SCP does not
    accept for its class (UnsupportedTransferSyntax, 0xC122) before reading it (seen failing:
    InvalidInput, after walking it)."""
    _, services = adapter
    sop_class = received().SOPClassUID
    path = tmp_path / "bomb.dcm"
    path.write_bytes(deflate_bomb(sop_class, "2.25.7654321"))
    sent = ReceivedStore(path=path, calling_ae="PACS", peer_address="127.0.0.1", context_sop_class=sop_class,
                         transfer_syntax=DeflatedExplicitVRLittleEndian, affected_sop_class=sop_class,
                         affected_sop_instance="2.25.7654321")
    with pytest.raises(UnsupportedTransferSyntax):
        services.dicom_ingest.ingest_received(sent)
    assert services.store.find_dicom_instance("2.25.7654321") is None
