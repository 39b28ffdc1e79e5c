"""Thin helpers around dcmtk's echoscu / storescu / storescp, loopback only.

    echoscu(port, "ORTHANC")                                   # C-ECHO, raises on failure
    storescu(port, "ORTHANC", [path, ...])                     # C-STORE, proposes JPEG Baseline (-xy)
    with StoreSCP(tmp_path / "recv", aet="ADAPTER") as scp:    # storescp on a free port, +xa
        ...; scp.files(); scp.count(); scp.clear()
    StoreSCP(folder, accept=())        # dcmtk's default: uncompressed syntaxes only (a PACS without JPEG)
    StoreSCP(folder, accept=("+xi",))  # Implicit VR Little Endian only (all PS3.5 10.1 requires)

Every process gets ``TCP_NODELAY=1`` (Debian's DCMTK 3.6.7 keeps Nagle on otherwise: ~45 ms per
C-STORE). storescp has no bind-address option, so it runs under the loopback bind shim and is
checked with ``ss`` to listen on loopback only.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from .orthanc import (
    PeerError,
    PeerUnavailable,
    assert_loopback_only,
    free_port,
    is_loopback_host,
    peer_env,
    shim_path,
    start_with_retries,
    stop_process,
    tail,
)

DCMTK_TOOLS = ("echoscu", "storescu", "storescp", "dcmdump")


def dcmtk_missing() -> str | None:
    """Why the dcmtk helpers cannot run here, or None if they can."""
    for tool in DCMTK_TOOLS:
        if shutil.which(tool) is None:
            return f"{tool} not installed (dcmtk; tools/install-peers.sh)"
    if not shim_path().is_file():
        return f"{shim_path()} missing (tools/install-peers.sh)"
    return None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise PeerUnavailable(f"{name} not installed (dcmtk; tools/install-peers.sh)")
    return path


def _loopback(host: str) -> str:
    if not is_loopback_host(host):
        raise ValueError(f"refusing non-loopback DICOM peer host {host!r}")
    return host


def echoscu(
    port: int,
    called_aet: str,
    *,
    host: str = "127.0.0.1",
    calling_aet: str = "ECHOSCU",
    timeout: float = 30.0,
    check: bool = True,
    extra: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """C-ECHO to ``called_aet@host:port``; ``extra`` options (``-d``: the negotiation shown)."""
    cmd = [
        _tool("echoscu"),
        *extra,
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "-to",
        "10",
        "-ta",
        "10",
        _loopback(host),
        str(port),
    ]
    env = peer_env()
    env.pop("LD_PRELOAD")  # an SCU binds nothing; no shim needed
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=check)


def storescu(
    port: int,
    called_aet: str,
    files: Iterable[Path | str],
    *,
    host: str = "127.0.0.1",
    calling_aet: str = "STORESCU",
    jpeg: bool = True,
    extra: Sequence[str] = (),
    timeout: float = 600.0,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """C-STORE ``files`` (one association) to ``called_aet@host:port``.

    ``jpeg=True`` adds ``-xy`` (propose JPEG Baseline; storescu proposes only uncompressed without it).
    ``-nh``: carry on after a failed store (the exit code still reports it).
    """
    paths = [str(f) for f in files]
    if not paths:
        raise ValueError("no files to send")
    cmd = [
        _tool("storescu"),
        "-aet",
        calling_aet,
        "-aec",
        called_aet,
        "-to",
        "10",
        "-ta",
        "30",
        "-td",
        "120",
        "-nh",
    ]
    if jpeg:
        cmd.append("-xy")
    cmd += [*extra, _loopback(host), str(port), *paths]
    env = peer_env()
    env.pop("LD_PRELOAD")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=check)


class StoreSCP:
    """dcmtk storescp receiving into ``directory`` on 127.0.0.1 (free port unless given).

    ``accept`` holds its transfer-syntax options: ``+xa`` (the default) accepts every supported
    transfer syntax (JPEG Baseline included); ``()`` leaves dcmtk's default, the uncompressed ones
    only (Explicit VR Little/Big Endian, Implicit VR Little Endian); ``("+xi",)`` Implicit VR
    Little Endian only; ``("-xf", cfg, profile)`` an association negotiation profile (e.g. a
    PACS taking only some SOP classes). ``ignore=True`` receives without writing (network-only
    measurements); ``fork=True`` forks per association; ``refuse=True`` rejects every association
    (``--refuse``: A-ASSOCIATE-RJ rejected-permanent, service user, no reason given), a PACS that
    will not take the adapter's objects.
    """

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        aet: str = "ADAPTER",
        pdu: int = 131072,
        ignore: bool = False,
        fork: bool = False,
        refuse: bool = False,
        accept: Sequence[str] = ("+xa",),
        startup_timeout: float = 15.0,
    ) -> None:
        self.directory = Path(directory)
        self.port = port or 0
        self._fixed_port = port
        self.aet = aet
        self.pdu = pdu
        self.ignore = ignore
        self.fork = fork
        self.refuse = refuse
        self.accept = tuple(accept)
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.log_path = self.directory.parent / f"storescp-{self.directory.name}.log"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> Self:
        if self.proc is not None:
            return self
        start_with_retries(self._start_once, self.stop, attempts=1 if self._fixed_port else 3)
        return self

    def _start_once(self) -> None:
        self.port = self._fixed_port or free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        cmd = [
            _tool("storescp"),
            "-aet",
            self.aet,
            *self.accept,
            "-pdu",
            str(self.pdu),
            "-dhl",
            "-od",
            str(self.directory),
        ]
        if self.ignore:
            cmd.append("--ignore")
        if self.fork:
            cmd.append("--fork")
        if self.refuse:
            cmd.append("--refuse")
        cmd.append(str(self.port))
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - open while the peer runs; closed by stop()
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=peer_env()
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise PeerError(f"storescp exited with {self.proc.returncode}:\n{tail(self.log_path)}")
            echo = echoscu(self.port, self.aet, check=False, timeout=15)
            if echo.returncode == 0 or (self.refuse and "Association Rejected" in echo.stdout + echo.stderr):
                break
            if time.monotonic() > deadline:
                raise PeerError(
                    f"storescp did not answer C-ECHO in {self.startup_timeout}s:\n{tail(self.log_path)}"
                )
            time.sleep(0.1)
        assert_loopback_only(self.proc.pid, "storescp")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=5.0)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def files(self) -> list[Path]:
        return sorted(p for p in self.directory.rglob("*") if p.is_file())

    def count(self) -> int:
        return len(self.files())

    def clear(self) -> None:
        for p in self.files():
            p.unlink()


# --------------------------------------------------------------------------- test material

_KEEP_APP = {
    0xE0: (b"JFIF\0",),  # APP0 JFIF
    0xE2: (b"ICC_PROFILE\0",),  # APP2 ICC profile (colour only)
    0xEE: (b"Adobe",),  # APP14 Adobe: colour-transform flag
}


def strip_jpeg_metadata(jpeg: bytes) -> bytes:
    """Drop APPn (but JFIF, ICC, Adobe) and COM before the first SOS; cut anything after EOI.

    Byte-level segment copy (standards.md §5.3): the entropy-coded data is untouched.
    Meant for baseline JPEGs (one scan); the scan data is copied as-is.
    """
    if jpeg[:2] != b"\xff\xd8":
        raise ValueError("not a JPEG (no SOI)")
    out = bytearray(b"\xff\xd8")
    i = 2
    while i + 4 <= len(jpeg):
        if jpeg[i] != 0xFF:
            raise ValueError(f"JPEG marker expected at byte {i}")
        marker = jpeg[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        seg_len = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        seg = jpeg[i : i + 2 + seg_len]
        if marker == 0xDA:  # SOS: scan data follows (no FFD9 inside it); keep it up to EOI, cut the rest
            eoi = jpeg.find(b"\xff\xd9", i + 2 + seg_len)
            if eoi < 0:
                raise ValueError("JPEG without EOI")
            out += jpeg[i : eoi + 2]
            return bytes(out)
        drop = marker == 0xFE or (
            0xE0 <= marker <= 0xEF and not any(seg[4:].startswith(sig) for sig in _KEEP_APP.get(marker, ()))
        )
        if not drop:
            out += seg
        i += 2 + seg_len
    raise ValueError("JPEG without SOS")


def wrap_jpeg_as_sc(
    jpeg: bytes,
    *,
    patient_id: str = "PEER-1",
    patient_name: str = "Test^Peer",
    study_uid: str | None = None,
    series_uid: str | None = None,
    instance_number: int = 1,
    strip: bool = True,
) -> bytes:
    """A baseline JPEG as-is (no re-encode) in a Secondary Capture Part-10 file (standards.md §4.5):
    JPEG Baseline transfer syntax, YBR_FULL_422, PlanarConfiguration 0, Rows/Columns from the JPEG,
    lossy compression flagged. ``strip`` first drops APPn/COM metadata segments."""
    import io

    from PIL import Image
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid

    if strip:
        jpeg = strip_jpeg_metadata(jpeg)
    with Image.open(io.BytesIO(jpeg)) as im:
        if im.format != "JPEG" or im.mode != "RGB" or im.info.get("progressive"):
            raise ValueError(f"need a baseline colour JPEG, got {im.format} {im.mode}")
        cols, rows = im.size
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient_name, patient_id, "", ""
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "OT", 1, instance_number
    ds.Manufacturer = ""
    ds.ConversionType = "DI"
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = "20240101", "120000"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "YBR_FULL_422", 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_10918_1"
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
