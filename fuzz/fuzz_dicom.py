"""Fuzz the reading of received DICOM objects (adapter.services.dicom_ingest and the mapping it
calls): what ``DicomIngestService.ingest_received`` does with the bytes of a C-STORE or STOW-RS
part before anything is stored, in its order: ``check_complete``, the JPEG Baseline fast path
(``_binary_of_first_fragment``), ``read_header`` / ``read_dataset``, ``check_elements``, the
mapping (``read_received``, ``extract_image``, ``received_to_fhir``).

The first byte of an input picks the presentation context's transfer syntax; the rest is the
Part 10 file. Contract: every input is mapped or refused with an AdapterError (the SCP's failure
statuses; pydicom's errors where ingest turns them into InvalidInput), never another exception
(0x0110). Invariant: the fast path's Binary is the bytes the general path extracts.

Run: ``.venv/bin/python fuzz/fuzz_dicom.py CORPUS -max_total_time=300`` (fuzz/README.md).
The received file and the staged blobs are written in the harness's temporary folder only.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["adapter", "pydicom.filereader", "pydicom.values", "pydicom.encaps",
                                         "pydicom.dataset", "pydicom.dataelem", "pydicom.valuerep"]):
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

    from adapter.config import StoreOptions
    from adapter.errors import AdapterError
    from adapter.mapping.dicom_fhir import extract_image, read_received, received_to_fhir
    from adapter.mapping.dicom_tables import load_dicom_tables
    from adapter.mapping.fhir_r4 import index_resource
    from adapter.mapping.tables import load_tables
    from adapter.services import dicom_ingest as di
    from adapter.store.blobs import FileBlobStore

from common import fuzz, temp_dir

ROOT = Path(__file__).resolve().parents[1]
TRANSFER_SYNTAXES = (JPEGBaseline8Bit, ExplicitVRLittleEndian, ImplicitVRLittleEndian)
TABLES = load_tables(ROOT / "mappings", ROOT / "mappings" / "policy.yaml")
DICOM_TABLES = load_dicom_tables(ROOT / "mappings" / "dicom.yaml")
BLOBS = FileBlobStore(StoreOptions(database_url="sqlite://", data_dir=temp_dir() / "data"))
RECEIVED = temp_dir() / "received.dcm"
NOW = datetime(2024, 3, 1, 9, 16, 2, tzinfo=UTC)


def test_one_input(data: bytes) -> None:
    if not data:
        return
    ts = TRANSFER_SYNTAXES[data[0] % len(TRANSFER_SYNTAXES)]
    RECEIVED.write_bytes(data[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about what it tolerates
        try:
            layout = di.check_complete(RECEIVED, ts)
        except AdapterError:
            return
        work = di._Work(BLOBS)
        try:
            ingest(layout, ts, work)
        except AdapterError:
            pass
        finally:
            work.close()
    assert not list(BLOBS.staging_dir.iterdir()), "a refused or finished ingest left a staged file"


def ingest(layout: di.FileLayout, ts: str, work: di._Work) -> None:
    fast = ts == JPEGBaseline8Bit and layout.first_fragment is not None and layout.head is not None
    binary = None
    if fast:
        assert layout.first_fragment is not None
        try:
            binary = di._binary_of_first_fragment(work, RECEIVED, layout.first_fragment)
        except AdapterError:
            pass
    ds = di.read_header(layout.head) if fast and layout.head is not None else di.read_dataset(RECEIVED)
    try:
        di.check_elements(ds, ts)
        obj = read_received(ds, calling_ae="FUZZSCU", dicom_tables=DICOM_TABLES, tables=TABLES)
        if fast and "EncapsulatedDocument" in ds:
            fast = False
        general = ds if "PixelData" in ds or layout.pixel_data is None else di.read_dataset(RECEIVED)
        try:
            image = extract_image(general)
        except AdapterError:
            if not fast or binary is None:
                raise
            image = None  # the general way refuses a later frame: so does ingest (at step 6)
        if fast and binary is not None and image is not None:
            assert bytes(binary.image.data) == bytes(image.data), \
                "the fast path's Binary differs from extract_image"
            image = binary.image
        di._study_attributes(ds)
    except di._MALFORMED:
        return  # ingest answers InvalidInput
    if image is None:
        return
    built = received_to_fhir(obj, image, record_id="r1", binary_id="b1", provenance_id="p1",
                             received_sha256="0" * 64, tables=TABLES, dicom_tables=DICOM_TABLES, now=NOW,
                             consent_pending=False, image_sha256="1" * 64)
    index_resource(built.record)
    index_resource(built.provenance)


if __name__ == "__main__":
    fuzz(test_one_input)
