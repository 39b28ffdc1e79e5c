"""Seed corpora for the fuzz harnesses, written into a directory given on the command line
(``python fuzz/seeds.py DIR``: one sub-folder per target). Nothing is written anywhere else.

The seeds are the sample photos of ``samples/`` plus small images and objects made here with
Pillow and pydicom, one per feature the parsers branch on (progressive and restart-interval JPEG,
Adobe/CMYK, EXIF with GPS and Orientation, XMP, ICC, COM, JFIF thumbnail, trailer; PNG palette,
16-bit, interlaced, text/eXIf/iCCP chunks; DICOM JPEG Baseline, native RGB, multi-frame, PDF,
implicit VR, sequences), so coverage starts where real uploads are.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

from PIL import Image, PngImagePlugin

ROOT = Path(__file__).resolve().parents[1]
#: The first byte of a DICOM seed picks the presentation context's transfer syntax
#: (fuzz_dicom.TRANSFER_SYNTAXES).
JPEG_BASELINE, EXPLICIT_LE, IMPLICIT_LE = 0, 1, 2


def _picture(mode: str, size: tuple[int, int] = (24, 16)) -> Image.Image:
    image = Image.new("RGB", size)
    width, height = size
    image.putdata([(x * 11 % 256, y * 17 % 256, x * y % 256) for y in range(height) for x in range(width)])
    return image.convert(mode)


def _exif(orientation: int = 6, gps: bool = True) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = "FuzzCam"
    exif[0x0110] = "Model 1"
    exif[0x0132] = "2024:03:01 09:16:02"
    if gps:
        exif[0x8825] = {1: "N", 2: (52.0, 22.0, 1.5)}
    return bytes(exif.tobytes())


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _icc() -> bytes:
    from PIL import ImageCms

    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def jpeg_seeds() -> dict[str, bytes]:
    seeds = {p.name: p.read_bytes() for p in sorted((ROOT / "samples").glob("*.jpg"))}

    def save(name: str, image: Image.Image, **options: object) -> None:
        buf = io.BytesIO()
        image.save(buf, "JPEG", **options)
        seeds[name] = buf.getvalue()

    save("baseline.jpg", _picture("RGB"), quality=90)
    save("grey.jpg", _picture("L"))
    save("cmyk.jpg", _picture("CMYK"))
    save("progressive.jpg", _picture("RGB", (40, 24)), progressive=True)
    save("subsampled-444.jpg", _picture("RGB"), subsampling=0)
    save("exif.jpg", _picture("RGB"), exif=_exif())
    save("icc.jpg", _picture("RGB"), icc_profile=_icc())
    save("comment.jpg", _picture("RGB"), comment=b"patient name here")
    base = seeds["baseline.jpg"]
    # APPn and trailers Pillow does not write: XMP, Photoshop IRB with IPTC, MPF, a JFIF
    # thumbnail, a restart interval, fill bytes, a trailer after EOI.
    xmp = _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta>name</x:xmpmeta>")
    irb = b"8BIM\x04\x04\x00\x00" + struct.pack(">I", 5) + b"\x1c\x02\x05A\x00\x00"  # IPTC By-line
    iptc = _segment(0xED, b"Photoshop 3.0\x00" + irb)
    mpf = _segment(0xE2, b"MPF\x00II*\x00\x08\x00\x00\x00")
    jfif_thumb = _segment(0xE0, b"JFIF\x00\x01\x02\x00\x00\x01\x00\x01\x01\x01" + b"\x80\x80\x80")
    adobe = _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x01")
    dri = _segment(0xDD, b"\x00\x02")
    seeds["appn.jpg"] = base[:2] + jfif_thumb + xmp + iptc + mpf + adobe + base[2:]
    seeds["dri-fill.jpg"] = base[:2] + b"\xff\xff\xff" + dri + base[2:] + b"trailer after EOI"
    # colour signalling libjpeg reads in its own way: the last Adobe APP14 before the first scan,
    # nothing after it (no JFIF here, so the transform decides)
    def without_jfif(data: bytes) -> bytes:  # Pillow writes it first
        return data[:2] + data[4 + int.from_bytes(data[4:6], "big"):]

    rgb = _segment(0xEE, b"Adobe\x00\x64\x00\x00\x00\x00\x00")
    no_jfif = without_jfif(base)
    seeds["adobe-twice.jpg"] = no_jfif[:2] + adobe + rgb + no_jfif[2:]
    progressive = without_jfif(seeds["progressive.jpg"])
    second_scan = progressive.index(b"\xff\xda", progressive.index(b"\xff\xda") + 2)
    seeds["app-between-scans.jpg"] = (progressive[:2] + rgb + progressive[2:second_scan] + jfif_thumb + adobe
                                      + progressive[second_scan:])
    return seeds


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def png_seeds() -> dict[str, bytes]:
    seeds = {p.name: p.read_bytes() for p in sorted((ROOT / "samples").glob("*.png"))}

    def save(name: str, image: Image.Image, **options: object) -> None:
        buf = io.BytesIO()
        image.save(buf, "PNG", **options)
        seeds[name] = buf.getvalue()

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "someone")
    info.add_itxt("XML:com.adobe.xmp", "<x:xmpmeta/>", zip=True)
    info.add_text("Comment", "compressed", zip=True)
    save("rgb-text.png", _picture("RGB"), pnginfo=info)
    save("rgba.png", _picture("RGBA"))
    save("grey.png", _picture("L"))
    save("grey16.png", _picture("I").point(lambda v: v * 200).convert("I;16"))
    palette = _picture("P")
    palette.info["transparency"] = 3
    save("palette-trns.png", palette, transparency=3)
    save("interlaced.png", _picture("RGB"), interlace=1)
    save("exif-icc.png", _picture("RGB"), exif=_exif(), icc_profile=_icc())
    save("bilevel.png", _picture("1"))
    rgb = seeds["rgb-text.png"]
    # colour chunks Pillow does not write, a tIME, a private chunk, a trailer after IEND, and an
    # image stream with bytes after its end
    extra = (_png_chunk(b"gAMA", struct.pack(">I", 45455)) + _png_chunk(b"sRGB", b"\x00")
             + _png_chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1))
             + _png_chunk(b"tIME", b"\x07\xe8\x03\x01\x09\x10\x02")
             + _png_chunk(b"prVt", b"private"))
    seeds["chunks-trailer.png"] = rgb[:33] + extra + rgb[33:] + b"trailer"
    image = bytes(_picture("L", (4, 2)).tobytes())
    stream = zlib.compress(b"".join(b"\x00" + image[r * 4:(r + 1) * 4] for r in range(2)))
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 2, 8, 0, 0, 0, 0))
    seeds["idat-tail.png"] = (b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IDAT", stream[:5])
                              + _png_chunk(b"IDAT", stream[5:] + b"hidden") + _png_chunk(b"IEND", b""))
    return seeds


def exif_seeds() -> dict[str, bytes]:
    """TIFF structures, as parse_exif takes them (without the APP1 ``Exif\\0\\0`` that
    Pillow's ``Exif.tobytes`` puts first)."""
    big = Image.Exif()
    big[0x0112] = 3
    big[0x8769] = {0x9003: "2024:03:01 09:16:02", 0x9011: "+01:00", 0x9291: "12", 0xA431: "SN123",
                   0xA430: "Owner"}
    big[0x013B] = "artist"
    seeds = {"exif-gps.tiff": _exif(), "exif-plain.tiff": _exif(1, gps=False),
             "exif-subifd.tiff": bytes(big.tobytes())}
    seeds = {name: tiff.removeprefix(b"Exif\x00\x00") for name, tiff in seeds.items()}
    # little endian, by hand: IFD0 (Orientation, a GPS IFD pointer) and an IFD1 (a thumbnail's)
    little = bytearray(b"II*\x00" + struct.pack("<IH", 8, 2))
    little += struct.pack("<HHIHH", 0x0112, 3, 1, 6, 0) + struct.pack("<HHII", 0x8825, 4, 1, 38)
    little += struct.pack("<I", 56)                                          # next IFD: IFD1
    little += struct.pack("<HHHI2s2x", 1, 0x0001, 2, 2, b"N\x00") + struct.pack("<I", 0)  # GPS IFD at 38
    little += struct.pack("<HHHII", 1, 0x0103, 3, 1, 6) + struct.pack("<I", 0)            # IFD1 at 56
    seeds["exif-little-endian.tiff"] = bytes(little)
    return seeds


def dicom_seeds() -> dict[str, bytes]:
    """Part 10 files, each behind one byte naming the transfer syntax it is received in."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

    frame = jpeg_seeds()["tiny.jpg"]

    def dataset(ts: str, sop_class: str = "1.2.840.10008.5.1.4.1.1.7") -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ts
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, "1.2.3.4.5"
        ds.PatientName, ds.PatientID, ds.IssuerOfPatientID = "Doe^Jane", "MRN-0001", "HOSP"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4.6", "1.2.3.4.7"
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20240101", "120000", "1", "A1"
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.ConversionType = "OT", 1, 1, "WSD"
        ds.InstitutionName = "Example Hospital Radiology"
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-D0050", "SRT", "Skin"
        ds.AnatomicRegionSequence = Sequence([code])
        return ds

    def part10(ds: Dataset, implicit: bool = False) -> bytes:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True, implicit_vr=implicit, little_endian=True)
        return buf.getvalue()

    def image(ds: Dataset, rows: int, columns: int, samples: int = 3) -> Dataset:
        ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
        ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        if samples == 3:
            ds.PlanarConfiguration = 0
        return ds

    with Image.open(io.BytesIO(frame)) as im:
        width, height = im.size
    seeds: dict[str, bytes] = {}
    ds = image(dataset(JPEGBaseline8Bit), height, width)
    ds.PhotometricInterpretation = "YBR_FULL_422"
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    seeds["sc-jpeg.dcm"] = bytes([JPEG_BASELINE]) + part10(ds)
    multi = image(dataset(JPEGBaseline8Bit, "1.2.840.10008.5.1.4.1.1.7.4"), height, width)
    multi.PhotometricInterpretation = "YBR_FULL_422"
    multi.NumberOfFrames = 2
    multi.PixelData = encapsulate([frame, frame])
    multi["PixelData"].VR = "OB"
    seeds["mf-jpeg.dcm"] = bytes([JPEG_BASELINE]) + part10(multi)
    native = image(dataset(ExplicitVRLittleEndian), 4, 4)
    native.PixelData = bytes(range(48))
    native["PixelData"].VR = "OB"
    seeds["sc-native.dcm"] = bytes([EXPLICIT_LE]) + part10(native)
    grey = image(dataset(ImplicitVRLittleEndian), 4, 4, samples=1)
    grey.PixelData = bytes(range(16))
    seeds["sc-implicit.dcm"] = bytes([IMPLICIT_LE]) + part10(grey, implicit=True)
    pdf = dataset(ExplicitVRLittleEndian, "1.2.840.10008.5.1.4.1.1.104.1")
    pdf.Modality = "DOC"
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n%%EOF\n"
    seeds["pdf.dcm"] = bytes([EXPLICIT_LE]) + part10(pdf)
    return seeds


def multipart_seeds() -> dict[str, bytes]:
    """Bodies as the multipart harness takes them: one byte of chunking, then the body under
    the boundary ``fuzzBOUNDARY`` (fuzz_multipart.BOUNDARY)."""
    tiny = (ROOT / "samples" / "tiny.jpg").read_bytes()
    metadata = (ROOT / "samples" / "metadata-wound.json").read_bytes()
    form = (b"--fuzzBOUNDARY\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\n" + tiny + b"\r\n--fuzzBOUNDARY\r\n"
            b"Content-Disposition: form-data; name=\"metadata\"\r\nContent-Type: application/json\r\n\r\n"
            + metadata + b"\r\n--fuzzBOUNDARY--\r\n")
    related = (b"preamble\r\n--fuzzBOUNDARY\r\nContent-Type: application/dicom\r\n\r\n" + b"DICM" * 8
               + b"\r\n--fuzzBOUNDARY\r\nContent-Type: application/json\r\n\r\n{}\r\n--fuzzBOUNDARY\r\n\r\n"
               + b"rootless\r\n--fuzzBOUNDARY--\r\nepilogue")
    padded = form.replace(b"--fuzzBOUNDARY\r\n", b"--fuzzBOUNDARY \t\r\n", 1)
    return {"form.bin": b"\x07" + form, "form-split.bin": b"\x01" + form, "related.bin": b"\x03" + related,
            "padded.bin": b"\x10" + padded}


TARGETS = {"jpeg": jpeg_seeds, "png": png_seeds, "exif": exif_seeds, "sanitize": None, "dicom": dicom_seeds,
           "multipart": multipart_seeds}


def write(folder: Path) -> None:
    for target, make in TARGETS.items():
        out = folder / target
        out.mkdir(parents=True, exist_ok=True)
        seeds = make() if make is not None else {**jpeg_seeds(), **png_seeds()}
        for name, data in seeds.items():
            (out / name).write_bytes(data)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python fuzz/seeds.py DIR")
    write(Path(sys.argv[1]))
