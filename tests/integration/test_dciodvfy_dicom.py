"""Every DICOM object the adapter writes passes David Clunie's dciodvfy with 0 errors, decodes
with dcmtk, and carries no EXIF/XMP segment: each kind × sample (JPEG and PNG) × orientation
(as stored, forced 1, forced 6), their de-identified and pseudonymised copies, the copies the
C-STORE SCU decompresses for a PACS that takes no JPEG (adapter.mapping.dicom_decompress), and the
edge cases (greyscale, progressive, CMYK, alpha, 16-bit, UTF-8 text, partial times, laterality).

Warnings are allowed; the distinct ones are listed at the end of the module's run. dciodvfy
and dcmtk are required in CI (tests.conftest.require_or_skip); tools/install-peers.sh installs
them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydicom.dataset import Dataset

from adapter.mapping.dicom_decompress import NATIVE_SYNTAXES, encapsulated_to_native
from adapter.mapping.dicom_deid import deidentify, pseudonymise
from adapter.mapping.dicom_photo import encode_dataset, fixed_texts
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.model.photo import PhotoKind
from tests.conftest import require_or_skip
from tests.support.dciodvfy import (
    UID_KEY,
    dciodvfy,
    dciodvfy_missing,
    dciodvfy_report,
    decode_check,
    decode_missing,
    dicom_tables,
    jpeg_of,
    photo_object,
    photo_record,
    png_of,
    reread,
    stored_bytes,
    stored_sample,
)
from tests.support.fhir_factories import PATIENT_SYSTEM, PATIENT_VALUE, tables

pytestmark = pytest.mark.integration

SAMPLES = ["wound.jpg", "document.jpg", "tiny.jpg", "lesion.png"]
ORIENTATIONS: list[int | None] = [None, 1, 6]
OUT_ROOT = "1.2.826.0.1.3680043.8.498"  # pydicom's prefix, open to its users
PSEUDONYMS = Pseudonymizer(b"p" * 32, "urn:clinical-image-adapter:pseudonym")
# what ../shared/peers/validate-dicom.sh --no-exif looks for anywhere in the file
APP1_METADATA = re.compile(rb"\xff\xe1..(Exif\x00|http://ns\.adobe\.com/xap/1\.0/\x00)", re.DOTALL)

WARNINGS: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def tools(request: pytest.FixtureRequest) -> Iterator[None]:
    missing = dciodvfy_missing() or decode_missing()
    require_or_skip(missing is None, missing or "")
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if WARNINGS and capture is not None:
        with capture.global_and_fixture_disabled():
            print(f"\ndciodvfy warnings on adapter objects ({sum(WARNINGS.values())} in all, 0 errors):")
            for line, count in WARNINGS.most_common():
                print(f"  {count:4d} x {line}")


def check(ds: Dataset, label: str) -> None:
    """0 dciodvfy errors, decodes with dcmtk, no EXIF/XMP APP1 anywhere."""
    data = encode_dataset(ds)
    report = dciodvfy_report(ds)
    for warning in report.warnings:
        WARNINGS[re.sub(r"\[[^]]*\]|<[^>]*>", "…", warning)] += 1
    print(f"{label}: {report.iod}, {len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    for warning in report.warnings:
        print(f"  {warning}")
    assert report.errors == [], f"{label}:\n" + "\n".join(report.errors)
    assert decode_check(ds) == [], label
    assert APP1_METADATA.search(data) is None, label


# ---------------------------------------------------------------------------------------------


def test_the_harness_sees_errors() -> None:
    """A broken object is reported: the checks below would catch a regression."""
    ds = photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg"))
    del ds.ImageType                       # Type 1 in VL Image
    ds.ImageLaterality = "R"
    ds.Laterality = "R"                    # 2C: must be absent when ImageLaterality is present
    errors = dciodvfy(ds)
    assert any("ImageType" in e for e in errors), errors
    assert any("Laterality" in e for e in errors), errors


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("kind", list(PhotoKind))
@pytest.mark.parametrize("name", SAMPLES)
def test_every_kind_sample_and_orientation(name: str, kind: PhotoKind, orientation: int | None) -> None:
    ds = photo_object(kind, stored_sample(name), orientation=orientation)
    check(ds, f"{name} {kind.value} orientation={orientation}")


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("name", SAMPLES)
def test_deidentified_and_pseudonymised_copies(name: str, orientation: int | None) -> None:
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample(name), orientation=orientation))
    check(deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY), f"{name} TRAIN orientation={orientation}")
    pseudonym = PSEUDONYMS.pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
    check(pseudonymise(ds, pseudonym=pseudonym, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                       key=UID_KEY), f"{name} HRESCH orientation={orientation}")


def test_copies_of_a_received_recognisable_object_that_says_no() -> None:
    """A received object saying RecognizableVisualFeatures NO, of a kind that shows the person:
    its copies say YES (research review finding 4), with 0 errors."""
    ds = reread(photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg")))
    ds.RecognizableVisualFeatures = "NO"
    pseudonym = PSEUDONYMS.pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
    for label, out in (("TRAIN", deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY, recognizable=True)),
                       ("HRESCH", pseudonymise(ds, pseudonym=pseudonym, pseudonym_issuer=PSEUDONYMS.system,
                                               uid_root=OUT_ROOT, key=UID_KEY, recognizable=True))):
        assert out.RecognizableVisualFeatures == "YES" and out.PatientIdentityRemoved == "NO", label
        check(out, f"tiny.jpg received recognisable {label}")


@pytest.mark.parametrize("name", SAMPLES)
def test_a_secondary_images_warning_and_its_copies(name: str) -> None:
    """The secondary image's ImageComments and SeriesDescription (its warning), as written and
    as the restricted copies keep them."""
    ds = reread(photo_object(PhotoKind.SECONDARY, stored_sample(name)))
    texts = fixed_texts(tables(), dicom_tables())
    assert ds.ImageComments in texts and ds.SeriesDescription in texts
    check(ds, f"{name} secondary")
    train = deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY, fixed_texts=texts)
    pseudonym = PSEUDONYMS.pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
    hresch = pseudonymise(ds, pseudonym=pseudonym, pseudonym_issuer=PSEUDONYMS.system, uid_root=OUT_ROOT,
                          key=UID_KEY, fixed_texts=texts)
    for label, out in (("TRAIN", train), ("HRESCH", hresch)):
        assert out.ImageComments == ds.ImageComments, label
        check(out, f"{name} secondary {label}")


@pytest.mark.parametrize("kind", list(PhotoKind))
def test_quality_warnings_in_image_comments_and_the_copies(kind: PhotoKind) -> None:
    """The record's quality warnings after the kind's warning in ImageComments (LT, CR LF between
    lines), as written and as the restricted copies keep them (the record's own texts with the
    fixed ones): 0 errors."""
    from adapter.mapping.dicom_photo import quality_texts

    sample = stored_sample("tiny.jpg")
    record = photo_record(kind, sample, quality_warnings=(
        "image is 120x90 pixels, below the policy minimum of 640x480", "JPEG quality estimated at 10, below 40"))
    ds = reread(photo_object(kind, sample, record=record))
    assert ds.ImageComments.split("\r\n")[-2:] == list(quality_texts(record))
    check(ds, f"tiny.jpg {kind.value} with quality warnings")
    texts = fixed_texts(tables(), dicom_tables()) | set(quality_texts(record))
    pseudonym = PSEUDONYMS.pseudonym(PATIENT_SYSTEM, PATIENT_VALUE)
    for label, out in (("TRAIN", deidentify(ds, uid_root=OUT_ROOT, key=UID_KEY, fixed_texts=texts)),
                       ("HRESCH", pseudonymise(ds, pseudonym=pseudonym, pseudonym_issuer=PSEUDONYMS.system,
                                               uid_root=OUT_ROOT, key=UID_KEY, fixed_texts=texts))):
        assert out.ImageComments == ds.ImageComments, label
        check(out, f"tiny.jpg {kind.value} with quality warnings {label}")


DECOMPRESSED: dict[str, Callable[[], Dataset]] = {
    **{f"{name} {kind.value}": (lambda name=name, kind=kind: photo_object(kind, stored_sample(name), orientation=1))
       for name in SAMPLES if name.endswith(".jpg") for kind in PhotoKind},
    "greyscale JPEG": lambda: photo_object(PhotoKind.DOCUMENT, stored_bytes(jpeg_of("L"), "image/jpeg")),
    "odd-sized greyscale JPEG": lambda: photo_object(PhotoKind.CLINICAL,
                                                     stored_bytes(jpeg_of("L", size=(7, 5)), "image/jpeg")),
    "4:4:4 JPEG": lambda: photo_object(PhotoKind.SECONDARY, stored_bytes(jpeg_of(subsampling=0), "image/jpeg")),
}


@pytest.mark.parametrize("syntax", NATIVE_SYNTAXES, ids=["explicit", "implicit"])
@pytest.mark.parametrize("case", list(DECOMPRESSED))
def test_decompressed_copies_for_a_pacs_without_jpeg(case: str, syntax: str) -> None:
    """What the SCU sends a PACS that accepted none of JPEG Baseline (adapter.dicom.scu): the
    same instance with native pixels, as written by the receiver."""
    ds = reread(DECOMPRESSED[case]())
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50", case  # a JPEG Baseline object
    native = reread(encapsulated_to_native(ds, syntax))
    assert native.file_meta.TransferSyntaxUID == syntax
    check(native, f"{case} decompressed to {syntax}")


def _record_change(kind: PhotoKind, name: str, change: Callable[[dict[str, Any]], None],
                   **meta: Any) -> Dataset:
    sample = stored_sample(name)
    record = photo_record(kind, sample, **meta)
    change(record)
    return photo_object(kind, sample, record=record)


def _with_private_characteristics() -> Dataset:
    """A photo whose SOP Common module describes a private element (PS3.3 C.12.1.1.7): its
    definition items need the element's name and keyword (UC, Type 1), which the copies' URL and
    description rule removes; the copies drop the whole sequence (the private elements go too)."""
    ds = photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg"))
    definition = Dataset()
    definition.PrivateDataElement = 0x0010
    definition.PrivateDataElementValueMultiplicity = [1]
    definition.PrivateDataElementValueRepresentation = "LO"
    definition.PrivateDataElementName = "Acme thing"
    definition.PrivateDataElementKeyword = "AcmeThing"
    block = Dataset()
    block.PrivateGroupReference = 0x0009
    block.PrivateCreatorReference = "ACME"
    block.BlockIdentifyingInformationStatus = "SAFE"
    block.PrivateDataElementDefinitionSequence = [definition]
    ds.PrivateDataElementCharacteristicsSequence = [block]
    return ds


def _rgb_with_trns() -> bytes:
    """An RGB PNG whose tRNS chunk makes one of its colours transparent (composited over black)."""
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(png_of("RGB"))).convert("RGB")
    out = io.BytesIO()
    im.save(out, format="PNG", transparency=im.getpixel((0, 0)))
    return out.getvalue()


EDGE_CASES: dict[str, Callable[[], Dataset]] = {
    "private element characteristics": _with_private_characteristics,
    "greyscale JPEG": lambda: photo_object(PhotoKind.DOCUMENT, stored_bytes(jpeg_of("L"), "image/jpeg")),
    "greyscale JPEG clinical": lambda: photo_object(PhotoKind.CLINICAL, stored_bytes(jpeg_of("L"), "image/jpeg")),
    "4:4:4 JPEG": lambda: photo_object(PhotoKind.CLINICAL, stored_bytes(jpeg_of(subsampling=0), "image/jpeg")),
    "4:2:2 JPEG": lambda: photo_object(PhotoKind.CLINICAL, stored_bytes(jpeg_of(subsampling=1), "image/jpeg")),
    "progressive JPEG": lambda: photo_object(PhotoKind.CLINICAL,
                                             stored_bytes(jpeg_of(progressive=True), "image/jpeg")),
    "CMYK JPEG": lambda: photo_object(PhotoKind.SECONDARY, stored_bytes(jpeg_of("CMYK"), "image/jpeg")),
    "greyscale JPEG rotated": lambda: photo_object(PhotoKind.SECONDARY, stored_bytes(jpeg_of("L"), "image/jpeg"),
                                                   orientation=8),
    "RGBA PNG with transparency": lambda: photo_object(PhotoKind.CLINICAL,
                                                       stored_bytes(png_of("RGBA", transparent=True), "image/png")),
    "LA PNG with transparency": lambda: photo_object(PhotoKind.CLINICAL,
                                                     stored_bytes(png_of("LA", transparent=True), "image/png")),
    "RGB PNG with tRNS": lambda: photo_object(PhotoKind.SECONDARY, stored_bytes(_rgb_with_trns(), "image/png")),
    "RGBA PNG as version 2 made it": lambda: photo_object(
        PhotoKind.CLINICAL, stored_bytes(png_of("RGBA", transparent=True), "image/png"), version=2),
    "greyscale PNG": lambda: photo_object(PhotoKind.CLINICAL, stored_bytes(png_of("L"), "image/png")),
    "palette PNG": lambda: photo_object(PhotoKind.DOCUMENT, stored_bytes(png_of("P"), "image/png")),
    "16-bit PNG": lambda: photo_object(PhotoKind.CLINICAL, stored_bytes(png_of("I;16"), "image/png")),
    "odd-sized PNG": lambda: photo_object(PhotoKind.SECONDARY,
                                          stored_bytes(png_of("L", size=(7, 5)), "image/png")),
    "UTF-8 institution": lambda: photo_object(PhotoKind.CLINICAL, stored_sample("tiny.jpg"),
                                              institution="Hôpital Saint-Éloi"),
    "date-only taken time": lambda: _record_change(PhotoKind.CLINICAL, "tiny.jpg",
                                                   lambda r: r.update(createdDateTime="2024-02-28")),
    "no taken time": lambda: _record_change(PhotoKind.CLINICAL, "tiny.jpg", lambda r: r.pop("createdDateTime")),
    "no body site": lambda: _record_change(PhotoKind.CLINICAL, "tiny.jpg", lambda r: r.pop("bodySite")),
    "left": lambda: _record_change(PhotoKind.CLINICAL, "tiny.jpg", lambda r: None, laterality="left"),
    "bilateral": lambda: _record_change(PhotoKind.CLINICAL, "tiny.jpg", lambda r: None, laterality="bilateral"),
    "no laterality": lambda: _record_change(PhotoKind.CLINICAL, "tiny.jpg", lambda r: None, laterality=None),
    "document without encounter or time": lambda: _record_change(
        PhotoKind.DOCUMENT, "document.jpg", lambda r: r.pop("context"), encounter=None),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_cases(case: str) -> None:
    ds = EDGE_CASES[case]()
    check(ds, case)
    if ds.BurnedInAnnotation == "NO":
        check(deidentify(reread(ds), uid_root=OUT_ROOT, key=UID_KEY), f"{case} TRAIN")


# --------------------------------------------------------------------------------------------- laterality

#: dciodvfy's reminder on an empty Laterality ("is only permitted to be empty when actually
#: unknown; should be absent ... if an unpaired body part, and have a value if a paired body
#: part"): it warns on every empty value, so it stays where the side is actually unknown.
UNKNOWN_SIDE = "is only permitted to be empty when actually unknown"
SITES = tables().body_sites
ANATOMY = [(kind, site, side)
           for kind in PhotoKind
           for site in ([None, *SITES.codes] if kind is not PhotoKind.DOCUMENT else [None])
           for side in (None, *SITES.laterality)
           if site is not None or side is None]  # a side qualifies a body site: alone, refused at ingest


@pytest.mark.parametrize(("kind", "site", "side"), ANATOMY,
                         ids=[f"{k.value}-{s or 'no-site'}-{d or 'no-side'}" for k, s, d in ANATOMY])
def test_laterality_of_every_kind_body_site_and_side(kind: PhotoKind, site: str | None, side: str | None) -> None:
    """Found by the DICOM review: a photo of the Head without a laterality carried an empty
    series Laterality, "Error - Attribute present when condition unsatisfied ... Type 2C
    Conditional Element=<Laterality>" (C.7.3.1: only for a paired body part), and documents
    warned about theirs. Every kind, every body site of mappings/body_sites.yaml (and none), every
    side (and none): 0 errors, and no Laterality warning but where the side is actually unknown
    (a paired site without one, or a photo without a body site). Test seen failing with that
    error for Head, Neck, Abdomen, Pelvis, Entire body and Scalp, and with the warning for Chest,
    Face (codes dciodvfy does not know) and documents."""
    sample = stored_sample("tiny.jpg")
    ds = photo_object(kind, sample, record=photo_record(kind, sample, bodySite=site, laterality=side))
    report = dciodvfy_report(ds)
    assert report.errors == [], report.output
    lines = [w for w in report.warnings if "Laterality" in w]
    unknown = ((site is not None and side is None and SITES.paired[site])
               or (site is None and kind is not PhotoKind.DOCUMENT))
    if unknown:  # Type 2, empty: paired (or any part), side unknown
        assert ds.Laterality == "" and "ImageLaterality" not in ds
        assert len(lines) == 1 and UNKNOWN_SIDE in lines[0], report.output
        return
    assert lines == [], report.output
    assert "Laterality" not in ds  # C.7.3.1: absent for an unpaired part, or with ImageLaterality
    expected = SITES.laterality[side].dicom if site is not None and side is not None else "U"
    assert ds.ImageLaterality == expected
