"""Drive David Clunie's ``dciodvfy`` (Debian ``dicom3tools``) and dcmtk's ``dcmdjpeg`` from the
tests (tools/install-peers.sh installs both).

    errors = dciodvfy(path_or_dataset)         # the "Error"/"Abort" lines ([] = valid)
    report = dciodvfy_report(path_or_dataset)  # DciodvfyReport(iod, errors, warnings, output)
    problems = decode_check(path)           # dcmdjpeg / dcmdump: pixel data really decodes

The second half holds the DICOM test material the unit and integration tests share: the
samples/ photos as ingest stores them, their R4 records and the objects built from them.

Facts (../shared/peers/README.md, checked here): dciodvfy does not decode pixels, does not flag
RGB with JPEG Baseline, rejects YBR_FULL with JPEG Baseline, requires Laterality when the body
part is paired or absent and no ImageLaterality is sent, refuses it on a part it knows unpaired,
and warns on an empty one. A missing tool raises RuntimeError; the test decides (skip
locally, fail in CI) with ``tests.conftest.require_or_skip``.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

JPEG_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                           "1.2.840.10008.1.2.4.70"})


@dataclass(frozen=True)
class DciodvfyReport:
    iod: str | None
    errors: list[str]
    warnings: list[str]
    output: str
    returncode: int


def dciodvfy_missing() -> str | None:
    """Why dciodvfy cannot run here, or None."""
    if shutil.which("dciodvfy") is None:
        return "dciodvfy not installed (Debian dicom3tools; tools/install-peers.sh)"
    return None


def _as_file(source: Path | str | Dataset, tmp: Path) -> Path:
    if isinstance(source, Dataset):
        path = tmp / "object.dcm"
        buf = io.BytesIO()
        source.save_as(buf, enforce_file_format=True)
        path.write_bytes(buf.getvalue())
        return path
    return Path(source)


def dciodvfy_report(source: Path | str | Dataset, *, timeout: float = 120.0) -> DciodvfyReport:
    """Run dciodvfy on a file or a dataset (written to a temporary Part 10 file).

    Error lines are those starting ``Error`` or ``Abort`` (as ../shared/peers/validate-dicom.sh
    judges); a non-zero exit without any such line is reported as an error too.

    Raises:
        RuntimeError: dciodvfy is not installed.
    """
    missing = dciodvfy_missing()
    if missing is not None:
        raise RuntimeError(missing)
    with tempfile.TemporaryDirectory(prefix="dciodvfy-") as tmp:
        path = _as_file(source, Path(tmp))
        proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=timeout,
                              check=False)
    output = proc.stdout + proc.stderr
    lines = output.splitlines()
    errors = [line for line in lines if line.startswith(("Error", "Abort"))]
    warnings = [line for line in lines if line.startswith("Warning")]
    if proc.returncode != 0 and not errors:
        errors.append(f"dciodvfy exited with {proc.returncode}")
    iod = next((line.strip() for line in lines if line.strip().isalnum()), None)
    return DciodvfyReport(iod=iod, errors=errors, warnings=warnings, output=output, returncode=proc.returncode)


def dciodvfy_failures(objects: list[tuple[str, bytes]], folder: Path) -> list[str]:
    """Each ``(label, Part 10 bytes)`` written to ``folder`` and checked by dciodvfy (its report
    printed); ``"label: errors"`` for each that has errors."""
    failures = []
    for n, (label, data) in enumerate(objects):
        path = folder / f"wado-{n}.dcm"
        path.write_bytes(data)
        report = dciodvfy_report(path)
        print(f"dciodvfy {label}: {report.iod}, {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
        if report.errors:
            failures.append(f"{label}: {report.errors}")
    return failures


def dciodvfy(source: Path | str | Dataset) -> list[str]:
    """The Error/Abort lines of :func:`dciodvfy_report` (empty = the object is valid).

    Raises:
        RuntimeError: dciodvfy is not installed.
    """
    return dciodvfy_report(source).errors


def decode_missing() -> str | None:
    for tool in ("dcmdjpeg", "dcmdump"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (dcmtk; tools/install-peers.sh)"
    return None


def decode_check(source: Path | str | Dataset, *, timeout: float = 120.0) -> list[str]:
    """Problems found by decoding the pixel data with dcmtk (empty = fine).

    JPEG transfer syntaxes: ``dcmdjpeg`` decompresses every frame; a non-zero exit or an
    ``E:``/``F:``/"Corrupt JPEG" message is a problem (catches broken streams and Rows/Columns
    that do not match the JPEG). Native pixel data: ``dcmdump +M`` must read the file without
    an error.

    Raises:
        RuntimeError: dcmtk is not installed.
    """
    missing = decode_missing()
    if missing is not None:
        raise RuntimeError(missing)
    with tempfile.TemporaryDirectory(prefix="decode-") as tmp:
        path = _as_file(source, Path(tmp))
        syntax = _transfer_syntax(path)
        if syntax in JPEG_SYNTAXES:
            cmd = ["dcmdjpeg", str(path), str(Path(tmp) / "decoded.dcm")]
        else:
            cmd = ["dcmdump", "-q", "+M", str(path)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    messages = (proc.stdout + proc.stderr) if syntax in JPEG_SYNTAXES else proc.stderr
    problems = [line for line in messages.splitlines()
                if line.startswith(("E:", "F:")) or "Corrupt JPEG" in line]
    if proc.returncode != 0:
        problems.append(f"{cmd[0]} exited with {proc.returncode}")
    return problems


def _transfer_syntax(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)




# --------------------------------------------------------------------------- test material
# Shared by tests/unit/test_mapping_dicom_*.py and tests/integration/test_dciodvfy_*.py: the
# samples/ photos as ingest stores them, their R4 records, and the DICOM objects built from them.

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
# UUID-derived root (PS3.5 B.2): valid for anyone. (dciodvfy refuses the 2.999 example arc.)
UID_ROOT = "2.25"
UID_KEY = b"test-uid-key-0123456789abcdef0123"
RECORD_ID = "6f1e2d3c-4b5a-4978-8a6b-5c4d3e2f1a09"


@dataclass(frozen=True)
class StoredSample:
    """A sample photo after ``adapter.imaging.sanitize``: the bytes ingest would store."""

    name: str
    data: bytes
    content_type: str
    width: int
    height: int
    orientation: int | None


_STORED: dict[str, StoredSample] = {}


def stored_sample(name: str) -> StoredSample:
    """``samples/<name>`` run through :func:`adapter.imaging.sanitize` (cached)."""
    if name not in _STORED:
        from adapter.imaging import sanitize
        from adapter.model.policy import Limits, Quality

        with tempfile.TemporaryDirectory(prefix="stored-") as tmp:
            dst = Path(tmp) / "stored"
            facts = sanitize(SAMPLES / name, dst, quality=Quality(), limits=Limits())
            _STORED[name] = StoredSample(name, dst.read_bytes(), facts.content_type, facts.width,
                                         facts.height, facts.orientation)
    return _STORED[name]


def stored_bytes(data: bytes, content_type: str, name: str = "generated") -> StoredSample:
    """Any generated JPEG/PNG through sanitize, as ingest would store it."""
    from adapter.imaging import sanitize
    from adapter.model.policy import Limits, Quality

    with tempfile.TemporaryDirectory(prefix="stored-") as tmp:
        src, dst = Path(tmp) / "upload", Path(tmp) / "stored"
        src.write_bytes(data)
        facts = sanitize(src, dst, quality=Quality(), limits=Limits())
        return StoredSample(name, dst.read_bytes(), facts.content_type, facts.width, facts.height,
                            facts.orientation)


@cache
def dicom_tables() -> Any:
    """mappings/dicom.yaml, loaded once (the tables are immutable)."""
    from adapter.mapping.dicom_tables import load_dicom_tables

    return load_dicom_tables(ROOT / "mappings" / "dicom.yaml")


def photo_record(kind: Any, sample: StoredSample, *, record_id: str = RECORD_ID,
                 quality_warnings: tuple[str, ...] = (), **meta_overrides: Any) -> dict[str, Any]:
    """The stored R4 record (Media or DocumentReference) of ``sample`` as ``kind``, built with
    the adapter's own builder and the FHIR test factories; ``quality_warnings``: those ingest
    found (adapter.imaging.quality), none by default."""
    from adapter.mapping.photo import build_photo_resources
    from tests.support.fhir_factories import NOW, metadata, stored_image, tables

    meta = metadata(kind, **meta_overrides)
    image = stored_image(content_type=sample.content_type, width=sample.width, height=sample.height,
                         size=len(sample.data), quality_warnings=quality_warnings)
    built = build_photo_resources(meta, image, record_id=record_id, binary_id="bin-1", provenance_id="prov-1",
                                  consent_ids=["c-1", "c-2"], assessment_notes=(), assessment_warnings=(),
                                  consent_pending=False, implied_purposes=(), tables=tables(), now=NOW)
    return built.record


def photo_object(kind: Any, sample: StoredSample, *, record: dict[str, Any] | None = None,
                 record_id: str = RECORD_ID, **options: Any) -> Dataset:
    """The DICOM object of ``sample`` as ``kind`` (options go to ``photo_to_dicom``)."""
    from adapter.mapping.dicom_photo import encounter_key, photo_to_dicom
    from adapter.mapping.dicom_uids import photo_uids
    from adapter.model.photo import Identifier
    from tests.support.fhir_factories import NOW, PATIENT_SYSTEM, PATIENT_VALUE, tables

    record = record if record is not None else photo_record(kind, sample, record_id=record_id)
    patient = Identifier(system=PATIENT_SYSTEM, value=PATIENT_VALUE)
    uids = photo_uids(UID_ROOT, UID_KEY, record_id=record["id"], encounter=encounter_key(record), patient=patient)
    options.setdefault("now", NOW)
    return photo_to_dicom(record, sample.data, sample.content_type, kind=kind, patient=patient, uids=uids,
                          tables=tables(), dicom_tables=dicom_tables(), **options)


def encoded(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def reread(ds: Dataset) -> Dataset:
    """Write and read back: what a peer would receive."""
    from pydicom import dcmread

    return dcmread(io.BytesIO(encoded(ds)))


def jpeg_of(mode: str = "RGB", *, size: tuple[int, int] = (96, 64), progressive: bool = False,
            quality: int = 85, subsampling: int = 2) -> bytes:
    """A small generated JPEG (gradient + shapes) in ``mode`` (RGB, L or CMYK)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size)
    px = img.load()
    assert px is not None
    w, h = size
    for y in range(h):
        for x in range(w):
            px[x, y] = ((x * 255) // w, (y * 255) // h, ((x + y) * 127) // (w + h))
    ImageDraw.Draw(img).ellipse((w // 4, h // 4, w // 2, h // 2), fill=(200, 40, 60))
    if mode != "RGB":
        img = img.convert(mode)
    out = io.BytesIO()
    options: dict[str, Any] = {"quality": quality, "progressive": progressive}
    if mode != "L":
        options["subsampling"] = subsampling
    img.save(out, format="JPEG", **options)
    return out.getvalue()


def png_of(mode: str = "RGB", *, size: tuple[int, int] = (48, 32), transparent: bool = False) -> bytes:
    """A small generated PNG in ``mode`` (RGB, RGBA, L, LA, P, I;16)."""
    from PIL import Image

    w, h = size
    if mode == "I;16":
        img = Image.new("I;16", size)
        for y in range(h):
            for x in range(w):
                img.putpixel((x, y), (x * 65535) // max(w - 1, 1))
    else:
        base = Image.new("RGBA", size)
        for y in range(h):
            for x in range(w):
                alpha = 128 if transparent and x < w // 2 else 255
                base.putpixel((x, y), ((x * 255) // w, (y * 255) // h, 90, alpha))
        # P from RGB: a palette with byte transparency makes the ingest decode proof warn
        img = base if mode == "RGBA" else (base.convert("RGB") if mode == "P" else base).convert(mode)
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
