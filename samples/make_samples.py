"""Generate the sample photos in samples/ deterministically (seeded), with Pillow only.

    .venv/bin/python samples/make_samples.py [outdir]      # default: this folder

Each sample carries the identifying metadata of standards.md §5.1-5.2 that the imaging
package must remove: EXIF with a GPS IFD, serial numbers, owner name, capture time, make/model,
Orientation and an IFD1 thumbnail; XMP (main and extension packets) naming a person; an IPTC
by-line in a Photoshop APP13; a COM segment; an MPF second image and a vendor trailer after
EOI. The values are exported as constants so tests can look for them byte for byte.

``make_large_photo`` builds a ~3 MB 12 MP photo on the fly for tests and benchmarks; such
files are never committed.
"""

from __future__ import annotations

import io
import math
import random
import struct
import sys
from pathlib import Path

from PIL import ExifTags, Image, ImageCms, ImageDraw, ImageFilter, PngImagePlugin
from PIL.TiffImagePlugin import IFDRational

HERE = Path(__file__).resolve().parent

# The identifying values planted in the samples (tests search the stored bytes for them).
OWNER_NAME = "Jane Example"
BODY_SERIAL = "SN-4417-XK-0925"
LENS_SERIAL = "LS-2291-0077"
ARTIST = "Dr Alex Photographer"
XMP_PERSON = "John Q. Patient"
IPTC_BYLINE = "Alex Photographer"
IPTC_CITY = "Exampleton"
COMMENT = "Ward 7 bed 3, photo by Jane Example"
MAKE, MODEL = "ExampleCam", "EC-12 Pro"
CAPTURE_TIME = "2024:05:17 10:23:45"
CAPTURE_OFFSET = "+02:00"
# In lowest terms: Pillow reduces IFDRational fractions when writing.
GPS_LATITUDE = ((51, 1), (30, 1), (2633, 100))     # 51°30'26.33" N
GPS_LONGITUDE = ((0, 1), (7, 1), (3981, 100))      # 0°7'39.81" W
TRAILER = b"VENDOR-TRAILER\x00motion-photo placeholder for " + OWNER_NAME.encode()
PRIVATE_PNG_CHUNK = b"prVt"


def gps_rational_bytes(value: tuple[tuple[int, int], ...], byteorder: str = ">") -> bytes:
    """The exact TIFF RATIONAL bytes of a GPS coordinate (what must not survive stripping)."""
    return b"".join(struct.pack(byteorder + "II", num, den) for num, den in value)


# --------------------------------------------------------------------------- pixels

def photo(size: tuple[int, int], seed: int, *, noise: float = 0.12) -> Image.Image:
    """A textured, photo-like RGB image: gradients, soft blobs, sharp shapes, fine noise."""
    rng = random.Random(seed)
    w, h = size
    red = Image.linear_gradient("L").resize(size)
    green = Image.radial_gradient("L").resize(size)
    blobs = Image.frombytes("L", (max(2, w // 48), max(2, h // 48)),
                            rng.randbytes(max(2, w // 48) * max(2, h // 48))).resize(size, Image.Resampling.BICUBIC)
    im = Image.merge("RGB", (Image.blend(red, blobs, 0.5), Image.blend(green, blobs, 0.3), blobs))
    draw = ImageDraw.Draw(im)
    for _ in range(40):  # sharp-edged shapes: a wound bed, sutures, a ruler
        x, y = rng.randrange(w), rng.randrange(h)
        r = rng.randrange(max(4, w // 40), max(5, w // 8))
        colour = (rng.randrange(120, 230), rng.randrange(20, 90), rng.randrange(20, 90))
        draw.ellipse((x - r, y - r // 2, x + r, y + r // 2), fill=colour, outline=(250, 240, 230))
    for i in range(0, w, max(4, w // 80)):
        draw.line((i, h - h // 12, i, h - h // 12 + (h // 40 if i % 5 else h // 20)), fill=(10, 10, 10))
    if noise:
        grain = Image.frombytes("L", size, rng.randbytes(w * h))
        im = Image.blend(im, Image.merge("RGB", (grain, grain, grain)), noise)
    return im


def document(size: tuple[int, int], seed: int) -> Image.Image:
    """A photographed page: off-white paper with a shadow and lines of black 'text'."""
    rng = random.Random(seed)
    w, h = size
    page = Image.new("L", size, 238)
    draw = ImageDraw.Draw(page)
    y = h // 10
    while y < h - h // 10:
        x = w // 10
        while x < w - w // 10:
            word = rng.randrange(w // 60, w // 12)
            draw.rectangle((x, y, min(x + word, w - w // 10), y + h // 120), fill=rng.randrange(10, 40))
            x += word + w // 80
        y += h // 40 + (h // 30 if rng.random() < 0.1 else 0)
    shadow = Image.linear_gradient("L").resize(size).point(lambda v: 255 - v // 6)
    page = Image.composite(page, Image.new("L", size, 200), shadow)
    return Image.merge("RGB", (page, page, page.point(lambda v: v * 95 // 100)))


# --------------------------------------------------------------------------- metadata

def exif_payload(*, orientation: int = 6, thumbnail: bytes | None = None,
                 little_endian: bool = False) -> bytes:
    """APP1 payload ``Exif\\0\\0`` + TIFF: IFD0 (Make, Model, Orientation, Artist, DateTime), the
    Exif IFD (DateTimeOriginal, OffsetTimeOriginal, CameraOwnerName, Body/LensSerialNumber,
    ImageUniqueID), the GPS IFD, and, with ``thumbnail``, an IFD1 pointing at it.

    Pillow's ``Image.Exif`` writes IFD0 and the sub-IFDs but not IFD1, so IFD1 is appended by
    hand: IFD0's next-IFD offset is patched to point at it (TIFF 6.0 §2).
    """
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = MAKE
    exif[ExifTags.Base.Model] = MODEL
    exif[ExifTags.Base.Orientation] = orientation
    exif[ExifTags.Base.Artist] = ARTIST
    exif[ExifTags.Base.DateTime] = CAPTURE_TIME
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.DateTimeOriginal] = CAPTURE_TIME
    sub[ExifTags.Base.OffsetTimeOriginal] = CAPTURE_OFFSET
    sub[ExifTags.Base.CameraOwnerName] = OWNER_NAME
    sub[ExifTags.Base.BodySerialNumber] = BODY_SERIAL
    sub[ExifTags.Base.LensSerialNumber] = LENS_SERIAL
    sub[ExifTags.Base.ImageUniqueID] = "0f3c9a7e5b2d4c61a8e9d0b1c2f3e4a5"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = tuple(IFDRational(n, d) for n, d in GPS_LATITUDE)
    gps[ExifTags.GPS.GPSLongitudeRef] = "W"
    gps[ExifTags.GPS.GPSLongitude] = tuple(IFDRational(n, d) for n, d in GPS_LONGITUDE)
    if little_endian:
        exif.endian = "<"
    payload = exif.tobytes()
    if thumbnail is None:
        return payload
    tiff = bytearray(payload[6:])
    e = "<" if tiff[:2] == b"II" else ">"
    ifd0 = struct.unpack_from(e + "I", tiff, 4)[0]
    count = struct.unpack_from(e + "H", tiff, ifd0)[0]
    if len(tiff) % 2:
        tiff += b"\x00"
    ifd1 = len(tiff)
    struct.pack_into(e + "I", tiff, ifd0 + 2 + 12 * count, ifd1)
    data_offset = ifd1 + 2 + 3 * 12 + 4
    tiff += struct.pack(e + "H", 3)
    tiff += struct.pack(e + "HHIHH", 0x0103, 3, 1, 6, 0)                 # Compression: JPEG
    tiff += struct.pack(e + "HHII", 0x0201, 4, 1, data_offset)           # JPEGInterchangeFormat
    tiff += struct.pack(e + "HHII", 0x0202, 4, 1, len(thumbnail))        # ...Length
    tiff += struct.pack(e + "I", 0) + thumbnail
    return b"Exif\x00\x00" + bytes(tiff)


def xmp_packet() -> bytes:
    """XMP naming the photographer and, in an MWG face region, the person shown."""
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
 xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" xmlns:mwg-rs="http://www.metadataworkinggroup.com/schemas/regions/"
 xmlns:stArea="http://ns.adobe.com/xmp/sType/Area#" xmlns:exif="http://ns.adobe.com/exif/1.0/"
 photoshop:City="{IPTC_CITY}" exif:GPSLatitude="51,30.439N" exif:GPSLongitude="0,7.6635W">
<dc:creator><rdf:Seq><rdf:li>{ARTIST}</rdf:li></rdf:Seq></dc:creator>
<mwg-rs:Regions rdf:parseType="Resource"><mwg-rs:RegionList><rdf:Bag><rdf:li rdf:parseType="Resource">
<mwg-rs:Name>{XMP_PERSON}</mwg-rs:Name><mwg-rs:Type>Face</mwg-rs:Type>
<mwg-rs:Area stArea:x="0.5" stArea:y="0.4" stArea:w="0.2" stArea:h="0.3" stArea:unit="normalized"/>
</rdf:li></rdf:Bag></mwg-rs:RegionList></mwg-rs:Regions>
</rdf:Description></rdf:RDF></x:xmpmeta>
<?xpacket end="w"?>""".encode()


def xmp_segments() -> list[tuple[int, bytes]]:
    """APP1 main XMP and APP1 extended XMP (XMP Specification Part 3, §1.1.3.1)."""
    main = b"http://ns.adobe.com/xap/1.0/\x00" + xmp_packet()
    extension_body = f"<x:xmpmeta><rdf:li>{XMP_PERSON}</rdf:li></x:xmpmeta>".encode()
    extension = (b"http://ns.adobe.com/xmp/extension/\x00" + b"0123456789ABCDEF0123456789ABCDEF"
                 + struct.pack(">II", len(extension_body), 0) + extension_body)
    return [(0xE1, main), (0xE1, extension)]


def iptc_segment() -> tuple[int, bytes]:
    """APP13 ``Photoshop 3.0`` with an 8BIM 0x0404 IPTC-IIM block: 2:80 by-line, 2:90 city."""
    def dataset(number: int, value: str) -> bytes:
        raw = value.encode()
        return b"\x1c\x02" + bytes((number,)) + struct.pack(">H", len(raw)) + raw

    iim = dataset(0, "\x00\x04") + dataset(80, IPTC_BYLINE) + dataset(90, IPTC_CITY)
    if len(iim) % 2:
        iim += b"\x00"
    irb = b"8BIM" + struct.pack(">H", 0x0404) + b"\x00\x00" + struct.pack(">I", len(iim)) + iim
    return 0xED, b"Photoshop 3.0\x00" + irb


def insert_segments(jpeg: bytes, segments: list[tuple[int, bytes]]) -> bytes:
    """Insert marker segments right after SOI and a leading APP0 (so before any MPF APP2, whose
    offsets are relative to itself and stay valid)."""
    pos = 2
    if jpeg[2:4] == b"\xff\xe0":
        pos += 2 + struct.unpack_from(">H", jpeg, 4)[0]
    raw = b"".join(bytes((0xFF, m)) + struct.pack(">H", len(p) + 2) + p for m, p in segments)
    return jpeg[:pos] + raw + jpeg[pos:]


def srgb_icc() -> bytes:
    """LittleCMS's built-in sRGB profile, made reproducible: the header's creation dateTime
    (ICC.1 §7.2.8, bytes 24-35) is fixed and the profile ID (§7.2.18, bytes 84-99) zeroed."""
    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    icc[24:36] = struct.pack(">6H", 2024, 1, 1, 0, 0, 0)
    icc[84:100] = bytes(16)
    return bytes(icc)


def _jpeg(im: Image.Image, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", **params)
    return buf.getvalue()


def loaded_jpeg(im: Image.Image, *, quality: int, orientation: int = 6, mpf: bool = True,
                progressive: bool = False) -> bytes:
    """A JPEG carrying every kind of identifying metadata, built as a camera would."""
    thumb = im.copy()
    thumb.thumbnail((160, 120))
    exif = exif_payload(orientation=orientation, thumbnail=_jpeg(thumb, quality=75))
    params: dict[str, object] = {"quality": quality, "exif": exif, "icc_profile": srgb_icc(),
                                 "comment": COMMENT, "progressive": progressive}
    buf = io.BytesIO()
    if mpf:  # a second, smaller image after EOI, announced by an APP2 MPF (CIPA DC-007)
        preview = im.resize((max(1, im.width // 4), max(1, im.height // 4)))
        im.save(buf, "MPO", save_all=True, append_images=[preview], **params)
    else:
        im.save(buf, "JPEG", **params)
    data = insert_segments(buf.getvalue(), [*xmp_segments(), iptc_segment()])
    return data + TRAILER


# --------------------------------------------------------------------------- samples

def make_wound(path: Path) -> None:
    path.write_bytes(loaded_jpeg(photo((1600, 1200), seed=1, noise=0.05), quality=90))


def make_lesion(path: Path) -> None:
    """PNG with tEXt Author, iTXt XMP, zTXt Comment, tIME (after IDAT), eXIf (GPS, Orientation
    8), iCCP, a private ancillary chunk and bytes after IEND."""
    im = photo((800, 600), seed=2, noise=0.0)
    draw = ImageDraw.Draw(im)
    for x in range(0, 800, 6):  # fine hatching: edges that deflate compresses well
        draw.line((x, 0, x - 300, 600), fill=(90, 40, 40))
    info = PngImagePlugin.PngInfo()
    info.add_text("Author", OWNER_NAME)
    info.add_itxt("XML:com.adobe.xmp", xmp_packet().decode())
    info.add_text("Comment", COMMENT, zip=True)
    info.add(PRIVATE_PNG_CHUNK, f"private note on {XMP_PERSON}".encode())
    info.add(b"tIME", struct.pack(">HBBBBB", 2024, 5, 17, 10, 23, 45), after_idat=True)
    buf = io.BytesIO()
    im.save(buf, "PNG", pnginfo=info, exif=exif_payload(orientation=8), icc_profile=srgb_icc())
    path.write_bytes(buf.getvalue() + TRAILER)


def make_document(path: Path) -> None:
    exif = exif_payload(orientation=1)
    path.write_bytes(_jpeg(document((1200, 1600), seed=3), quality=85, exif=exif))


def make_tiny(path: Path) -> None:
    im = photo((120, 90), seed=4, noise=0.0).filter(ImageFilter.GaussianBlur(3))
    path.write_bytes(_jpeg(im, quality=10, exif=exif_payload(orientation=1)))


def make_truncated(path: Path) -> None:
    whole = _jpeg(photo((320, 240), seed=5), quality=85)
    path.write_bytes(whole[:len(whole) // 2])


def make_large_photo(path: Path, megapixels: float = 12, target_bytes: int = 3_000_000,
                     *, seed: int = 12, progressive: bool = False) -> Path:
    """Write a ``megapixels`` 4:3 photo (4000x3000 for 12) of about ``target_bytes`` to ``path``,
    with the full metadata load of wound.jpg; the JPEG quality is bisected to land within a few
    per cent of the target. Deterministic for given arguments. Returns ``path``."""
    width = round(math.sqrt(megapixels * 1e6 * 4 / 3))
    height = round(width * 3 / 4)
    im = photo((width, height), seed=seed, noise=0.2)
    low, high = 30, 98
    best = b""
    while low <= high:
        mid = (low + high) // 2
        data = loaded_jpeg(im, quality=mid, progressive=progressive)
        if not best or abs(len(data) - target_bytes) < abs(len(best) - target_bytes):
            best = data
        if len(data) < target_bytes:
            low = mid + 1
        else:
            high = mid - 1
    path.write_bytes(best)
    return path


def main(outdir: Path = HERE) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    make_wound(outdir / "wound.jpg")
    make_lesion(outdir / "lesion.png")
    make_document(outdir / "document.jpg")
    make_tiny(outdir / "tiny.jpg")
    make_truncated(outdir / "truncated.jpg")
    (outdir / "not-an-image.txt").write_bytes(b"This is a text file, not a photo.\n")
    for item in sorted(outdir.iterdir()):
        if item.suffix in (".jpg", ".png", ".txt"):
            print(f"{item.name:20} {item.stat().st_size:>9,} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
