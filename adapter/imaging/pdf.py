"""A PDF without its metadata, its content as it is: what the restricted views (de-identified,
pseudonymised) release of a document, over FHIR (Binary) and DICOM (the Encapsulated Document
of a TRAIN or HRESCH copy, adapter.mapping.dicom_deid). The only module that imports pikepdf
(qpdf). Care's view releases the document as stored and never comes here.

Why: a PDF carries, beside what a reader sees, data about the document that no reader sees and
that names the patient as often as the letter does: the document information dictionary (its
Author, a Title with the patient's name and MRN, a CreationDate to the second, a Producer naming
the hospital's system) and the XMP metadata stream (ISO 32000-2 14.3), which the de-identified
FHIR view's "no metadata" and a DICOM copy's PatientIdentityRemoved YES would otherwise
contradict. It is metadata in the sense a JPEG's APPn segments are, which the views strip too.

Removed (ISO 32000-2 section in brackets):

* the trailer's document information dictionary (/Info, 14.3.3), and every other trailer entry
  but /Root and /Size; /ID (7.5.5) is made anew from the written file alone (qpdf's deterministic ID), so it
  links the copy neither to the original nor to the time it was made;
* every metadata stream (/Metadata, 14.3.2) on any object: the catalog's XMP packet, a page's,
  an image's, a font's; every page-piece dictionary (/PieceInfo, 14.5: a producer's private data)
  and /LastModified; every date an object carries (/CreationDate, /ModDate, and /M as a string:
  an annotation's, a signature's);
* of the catalog (7.7.2) every entry but those that make the document what a reader sees (the
  page tree, outlines, destinations, page labels, viewer preferences, article threads, the form,
  the structure tree, optional content, output intents, language…): /Metadata, /PieceInfo,
  /SpiderInfo (web capture: URLs and times), /Perms, /Legal and /DSS (signatures' certificates,
  which name the signer), /Collection, /AF and /DPartRoot (document parts' metadata) go; of its
  name dictionary every tree but /Dests and /AP (so /EmbeddedFiles, /JavaScript, /IDS, /URLS,
  /Templates… go); an /OpenAction other than going to a destination in the document;
* embedded files, wherever they are reached from: every file specification's /EF and /RF
  (7.11.4), associated files (/AF, 14.13), file attachment and sound annotations (taken off
  their page's /Annots and emptied of their file or sound);
* scripts and automatic actions (12.6): every /AA (additional actions), the text of every
  JavaScript action (left empty), the form's XFA (12.7.9, XML packets that can hold anything);
* of a page object, a page tree node and an annotation, every key but those ISO 32000-2 defines
  for it and a reader needs (:data:`PAGE_KEPT`, Table 31; :data:`PAGES_KEPT`, Table 30;
  :data:`ANNOTATION_KEPT`, Table 166, with the markup entries of Table 172 and the entries of its
  type, Tables 175-195, a widget's with its form field's): an allow-list, as the catalog's, so a
  producer's private key (/ZZPagePriv: research review finding 2) goes with the known ones;
* likewise of what draws the pages (:func:`_clean_content`; review verify-1 finding 4): a resource
  dictionary (:data:`RESOURCES_KEPT`, Table 34), a content stream's and every other stream's own
  dictionary (:data:`STREAM_KEPT`, Table 5: an external file's /F goes), fonts, their
  descriptors, embedded font files, encodings and CMaps (Tables 109-124), image and form
  XObjects (Tables 87, 93: /OPI, /Ref, /PtData and /Measure, which name files or places, go),
  graphics states and soft masks (Tables 57, 142), patterns, shadings, functions and colour
  spaces' dictionaries (Tables 38-41, 62-66, 75-83): every key but the standard's goes; a
  marked-content property list (/Properties, 14.6.2) that is no optional content (OCG, OCMD)
  is emptied (free-form by design, it is a producer's own; the content still finds it);
* of annotations (12.5) the author of a markup annotation (/T; a widget's /T is its form field's
  name and stays), its /NM (a name unique to it), and its dates; a page's thumbnail (/Thumb, 12.3.4:
  it can show an earlier state of the page than its content does); an article thread's
  information dictionary (/I: its title, author and dates); a signature's name, reason, location,
  contact, certificate and signed content (/Contents);
* the APPn segments but JFIF and Adobe, and the COM segments, of every JPEG image (/DCTDecode,
  8.9.5), as adapter.imaging.frame cuts them out of a DICOM frame: an EXIF block (camera serial,
  GPS, times) of a scanned or photographed page. The entropy-coded data is not touched.

Kept as they are: every page content stream (what it decodes to: a stream stored unfiltered is
written Flate-compressed, the others byte for byte), every image's pixels (a JPEG's entropy-coded
data byte for byte), fonts, the annotations' appearance and text (/Contents), outlines, and form
field values. They are the document a reader sees, its clinical content, and that is not
cleaned: text on a page, a field's value or a comment can name the patient as the letter's
heading does. A restricted view releases a document on the patient's consent for that purpose,
never on its de-identification (README, adapter.mapping.dicom_deid). A PDF/A claim goes with its
XMP packet (PDF/A requires one).

Fails closed (:class:`~adapter.errors.UncleanableDocument`), never releasing the PDF as it was:
bytes that are not a PDF qpdf can read (qpdf repairs a damaged cross-reference table as viewers
do; only what it parses is written, so nothing it could not read goes out), an encrypted PDF
(its metadata cannot be told from its content without the password, and removing the
encryption is not this module's to decide), a JPEG image that does not parse, a PDF over
:data:`MAX_PDF_BYTES`, one with a stream inflating past :data:`MAX_INFLATED_BYTES`, or one with
more than :data:`MAX_PDF_OBJECTS` objects. The bounds keep the cost of one read proportionate: qpdf reads the cross-reference table and parses objects lazily,
and this module visits each object once, so the time and memory go with the number of objects
(about 5 s for the bound's 100,000 on a laptop; a clinical letter has hundreds, a 1,000-page
report tens of thousands); a claimed /Size over the bound is refused before any is read. No
stream is decoded (but a JPEG's marker segments walked), so a stream that inflates a
thousandfold costs its stored size; qpdf itself inflates only object and cross-reference
streams, to read the objects in them, and never past :data:`MAX_INFLATED_BYTES` (a PDF one
would inflate further is refused). The document itself is within the upload limit
(ADAPTER_MAX_UPLOAD_BYTES, 50 MiB by default) it was received under.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator

import pikepdf
from pikepdf import Array, Dictionary, Name, Stream, String

from adapter.errors import UncleanableDocument, UndecodableImage
from adapter.imaging.frame import encapsulated_jpeg

#: A PDF larger than this (in bytes) is not cleaned (refused in the restricted views).
MAX_PDF_BYTES = 256 * 1024 * 1024
#: A PDF of more objects than this is not cleaned (refused in the restricted views).
MAX_PDF_OBJECTS = 100_000
#: The most one Flate stream may inflate to in qpdf. No stream is decoded here, but qpdf inflates
#: an object stream (ISO 32000-2 7.5.7) or a cross-reference stream (7.5.8) whole to read what it
#: holds: a thousandfold, unbounded, before (security review, finding 1: 1 MB of PDF, 2 GB).
#: Those hold objects, never content: a real one is kilobytes to a few megabytes.
MAX_INFLATED_BYTES = 64 * 1024 * 1024
# qpdf's limits are process-wide; this is the only module that uses qpdf. Past it qpdf gives up
# the stream with a warning (:data:`_INFLATE_LIMIT_WARNING`), and the PDF is refused.
pikepdf.settings.set_qpdf_limits(flate_max_memory=MAX_INFLATED_BYTES)
_INFLATE_LIMIT_WARNING = "memory limit exceeded"

PDF_MAGIC = b"%PDF-"

# pikepdf warns, on saving, of form widgets the form does not list (they may not show in one
# viewer): the document's own matter, which a copy neither causes nor mends. Ignored for saves
# made here only (a filter, not warnings.catch_warnings, which is not safe across the threads
# that serve reads).
_PAGE_COPY_WARNING = getattr(pikepdf, "PageCopyWarning", None)  # pikepdf 10.x has it; not every release
if isinstance(_PAGE_COPY_WARNING, type) and issubclass(_PAGE_COPY_WARNING, Warning):
    warnings.filterwarnings("ignore", category=_PAGE_COPY_WARNING, module=re.escape(__name__))

#: Catalog entries (ISO 32000-2 Table 29) that make up the document a reader sees.
CATALOG_KEPT = frozenset({
    "/Type", "/Version", "/Extensions", "/Pages", "/PageLabels", "/Names", "/Dests", "/ViewerPreferences",
    "/PageLayout", "/PageMode", "/Outlines", "/Threads", "/OpenAction", "/URI", "/AcroForm", "/StructTreeRoot",
    "/MarkInfo", "/Lang", "/OutputIntents", "/OCProperties", "/Requirements",
})
#: Name trees (Table 32) kept: named destinations and appearance streams.
NAMES_KEPT = frozenset({"/Dests", "/AP"})
#: Entries removed from every dictionary: metadata, private data, embedded and associated files,
#: additional actions, document parts' metadata.
REMOVED_EVERYWHERE = ("/Metadata", "/PieceInfo", "/LastModified", "/CreationDate", "/ModDate", "/AF", "/AA",
                      "/EF", "/RF", "/DPM")
#: Entries of a page object (ISO 32000-2 Table 31) kept: what a reader needs to draw and navigate
#: the page. Every other key goes, one the standard does not define (a producer's private key)
#: as well as /LastModified, /Thumb, /AA, /Metadata, /PieceInfo, /ID (its web capture's digital
#: identifier), /AF and /DPart (document parts' metadata, whose root the catalog loses).
PAGE_KEPT = frozenset({
    "/Type", "/Parent", "/Resources", "/MediaBox", "/CropBox", "/BleedBox", "/TrimBox", "/ArtBox", "/BoxColorInfo",
    "/Contents", "/Rotate", "/Group", "/B", "/Dur", "/Trans", "/Annots", "/StructParents", "/PZ",
    "/SeparationInfo", "/Tabs", "/TemplateInstantiated", "/PresSteps", "/UserUnit", "/VP", "/OutputIntents",
})
#: Entries of a page tree node (Table 30), with the inheritable page attributes (7.7.3.4).
PAGES_KEPT = frozenset({"/Type", "/Parent", "/Kids", "/Count", "/Resources", "/MediaBox", "/CropBox", "/Rotate"})
#: Entries common to all annotations (Table 166) kept (/NM, /M and /AF go).
ANNOTATION_KEPT = frozenset({
    "/Type", "/Subtype", "/Rect", "/Contents", "/P", "/F", "/AP", "/AS", "/Border", "/C", "/StructParent", "/OC",
    "/ca", "/CA", "/BM", "/Lang",
})
#: Entries of markup annotations (Table 172) kept: the popup, the reply threading, the rich text
#: and subject a reader is shown (/T, the author, and /CreationDate go; /ExData, Table 173, too).
MARKUP_KEPT = frozenset({"/Popup", "/RC", "/IRT", "/Subj", "/RT", "/IT"})
#: A form field's entries (Tables 226, 228-231), which a widget annotation merged with its field
#: carries; a field's /T is its name, not an author.
FIELD_KEPT = frozenset({
    "/FT", "/Parent", "/Kids", "/T", "/TU", "/TM", "/Ff", "/V", "/DV", "/DA", "/Q", "/DS", "/RV", "/Opt",
    "/MaxLen", "/TI", "/I", "/Lock", "/SV",
})
#: Entries specific to each annotation type (Tables 175-195, and 3D and rich media annotations,
#: 13.6 and 13.7) kept. A type not listed keeps Table 166's alone.
ANNOTATION_TYPE_KEPT: dict[str, frozenset[str]] = {
    "/Text": frozenset({"/Open", "/Name", "/State", "/StateModel"}),
    "/Link": frozenset({"/A", "/Dest", "/H", "/PA", "/QuadPoints", "/BS"}),
    "/FreeText": frozenset({"/DA", "/Q", "/DS", "/CL", "/BE", "/RD", "/BS", "/LE"}),
    "/Line": frozenset({"/L", "/BS", "/LE", "/IC", "/LL", "/LLE", "/Cap", "/LLO", "/CP", "/Measure", "/CO"}),
    "/Square": frozenset({"/BS", "/IC", "/BE", "/RD"}),
    "/Circle": frozenset({"/BS", "/IC", "/BE", "/RD"}),
    "/Polygon": frozenset({"/Vertices", "/LE", "/BS", "/IC", "/BE", "/Measure", "/Path"}),
    "/PolyLine": frozenset({"/Vertices", "/LE", "/BS", "/IC", "/BE", "/Measure", "/Path"}),
    "/Highlight": frozenset({"/QuadPoints"}),
    "/Underline": frozenset({"/QuadPoints"}),
    "/Squiggly": frozenset({"/QuadPoints"}),
    "/StrikeOut": frozenset({"/QuadPoints"}),
    "/Caret": frozenset({"/RD", "/Sy"}),
    "/Stamp": frozenset({"/Name"}),
    "/Ink": frozenset({"/InkList", "/BS", "/Path"}),
    "/Popup": frozenset({"/Parent", "/Open"}),
    "/Movie": frozenset({"/T", "/Movie", "/A"}),
    "/Screen": frozenset({"/T", "/MK", "/A"}),
    "/Widget": frozenset({"/H", "/MK", "/A", "/BS"}) | FIELD_KEPT,
    "/PrinterMark": frozenset({"/MN"}),
    "/Watermark": frozenset({"/FixedPrint"}),
    "/Redact": frozenset({"/QuadPoints", "/IC", "/RO", "/OverlayText", "/Repeat", "/DA", "/Q"}),
    "/3D": frozenset({"/3DD", "/3DV", "/3DA", "/3DI", "/3DB", "/3DU"}),
    "/RichMedia": frozenset({"/RichMediaSettings", "/RichMediaContent"}),
}
#: Entries of a resource dictionary (ISO 32000-2 Table 34).
RESOURCES_KEPT = frozenset({"/ExtGState", "/ColorSpace", "/Pattern", "/Shading", "/XObject", "/Font", "/ProcSet",
                            "/Properties"})
#: Entries common to all stream dictionaries (Table 5) kept: /F, /FFilter and /FDecodeParms name
#: an external file holding the stream's data (a path, a URL), which the copy does not reach.
STREAM_KEPT = frozenset({"/Length", "/Filter", "/DecodeParms", "/DL"})
#: Entries of a graphics state parameter dictionary (Table 57).
EXTGSTATE_KEPT = frozenset({
    "/Type", "/LW", "/LC", "/LJ", "/ML", "/D", "/RI", "/OP", "/op", "/OPM", "/Font", "/BG", "/BG2", "/UCR", "/UCR2",
    "/TR", "/TR2", "/HT", "/FL", "/SM", "/SA", "/BM", "/SMask", "/CA", "/ca", "/AIS", "/TK", "/UseBlackPtComp",
    "/HTO",
})
#: Entries of a soft-mask dictionary (Table 142).
SOFT_MASK_KEPT = frozenset({"/Type", "/S", "/G", "/BC", "/TR"})
#: Entries of an image XObject (Table 87) kept: what draws it. /Name, /ID (a web capture's
#: identifier), /OPI (the file name of a high-resolution original), /Measure and /PtData
#: (geospatial coordinates), /Metadata and /AF go.
IMAGE_KEPT = STREAM_KEPT | frozenset({
    "/Type", "/Subtype", "/Width", "/Height", "/ColorSpace", "/BitsPerComponent", "/Intent", "/ImageMask", "/Mask",
    "/Decode", "/Interpolate", "/Alternates", "/SMask", "/SMaskInData", "/StructParent", "/OC", "/Matte",
})
#: Entries of an alternate image dictionary (Table 88).
ALTERNATE_IMAGE_KEPT = frozenset({"/Image", "/DefaultForPrinting", "/OC"})
#: Entries of a form XObject (Table 93) kept. /Ref (a reference XObject: another PDF file's name),
#: /OPI, /Name, /Measure, /PtData, /Metadata, /PieceInfo, /LastModified and /AF go.
FORM_KEPT = STREAM_KEPT | frozenset({
    "/Type", "/Subtype", "/FormType", "/BBox", "/Matrix", "/Resources", "/Group", "/StructParent", "/StructParents",
    "/OC",
})
#: Entries of a transparency group dictionary (Tables 94 and 145).
GROUP_KEPT = frozenset({"/Type", "/S", "/CS", "/I", "/K"})
#: Entries of a font dictionary by /Subtype: Type 1, multiple master and TrueType (Tables 109 and
#: 111), Type 3 (Table 110), Type 0 (Table 119) and CIDFonts (Table 115).
_SIMPLE_FONT = frozenset({"/Type", "/Subtype", "/Name", "/BaseFont", "/FirstChar", "/LastChar", "/Widths",
                          "/FontDescriptor", "/Encoding", "/ToUnicode"})
_CID_FONT = frozenset({"/Type", "/Subtype", "/BaseFont", "/CIDSystemInfo", "/FontDescriptor", "/DW", "/W", "/DW2",
                       "/W2", "/CIDToGIDMap"})
FONT_KEPT: dict[str, frozenset[str]] = {
    "/Type1": _SIMPLE_FONT, "/MMType1": _SIMPLE_FONT, "/TrueType": _SIMPLE_FONT,
    "/Type3": _SIMPLE_FONT - {"/BaseFont"} | {"/FontBBox", "/FontMatrix", "/CharProcs", "/Resources"},
    "/Type0": frozenset({"/Type", "/Subtype", "/BaseFont", "/Encoding", "/DescendantFonts", "/ToUnicode"}),
    "/CIDFontType0": _CID_FONT, "/CIDFontType2": _CID_FONT,
}
#: Entries of a font descriptor (Tables 120 and 122, CIDFonts' /Style, /Lang, /FD, /CIDSet).
FONT_DESCRIPTOR_KEPT = frozenset({
    "/Type", "/FontName", "/FontFamily", "/FontStretch", "/FontWeight", "/Flags", "/FontBBox", "/ItalicAngle",
    "/Ascent", "/Descent", "/Leading", "/CapHeight", "/XHeight", "/StemV", "/StemH", "/AvgWidth", "/MaxWidth",
    "/MissingWidth", "/FontFile", "/FontFile2", "/FontFile3", "/CharSet", "/Style", "/Lang", "/FD", "/CIDSet",
})
#: Entries of an embedded font file's stream (Table 124; its /Metadata goes).
FONT_FILE_KEPT = STREAM_KEPT | frozenset({"/Length1", "/Length2", "/Length3", "/Subtype"})
#: Entries of an encoding dictionary (Table 112), a CMap stream (Table 118) and CIDSystemInfo (Table 114).
ENCODING_KEPT = frozenset({"/Type", "/BaseEncoding", "/Differences"})
CMAP_KEPT = STREAM_KEPT | frozenset({"/Type", "/CMapName", "/CIDSystemInfo", "/WMode", "/UseCMap"})
CID_SYSTEM_INFO_KEPT = frozenset({"/Registry", "/Ordering", "/Supplement"})
#: Entries of a tiling pattern (Table 75, a stream), a shading pattern (Table 76), a shading
#: (Tables 77-83) and a function (Tables 38-41).
TILING_PATTERN_KEPT = STREAM_KEPT | frozenset({"/Type", "/PatternType", "/PaintType", "/TilingType", "/BBox",
                                               "/XStep", "/YStep", "/Resources", "/Matrix"})
SHADING_PATTERN_KEPT = frozenset({"/Type", "/PatternType", "/Shading", "/Matrix", "/ExtGState"})
SHADING_KEPT = STREAM_KEPT | frozenset({
    "/ShadingType", "/ColorSpace", "/Background", "/BBox", "/AntiAlias", "/Domain", "/Matrix", "/Function",
    "/Coords", "/Extend", "/BitsPerCoordinate", "/BitsPerComponent", "/BitsPerFlag", "/Decode", "/VerticesPerRow",
})
FUNCTION_KEPT = STREAM_KEPT | frozenset({"/FunctionType", "/Domain", "/Range", "/Size", "/BitsPerSample", "/Order",
                                         "/Encode", "/Decode", "/C0", "/C1", "/N", "/Functions", "/Bounds"})
#: Entries of an ICC profile stream (Table 66; its /Metadata goes) and of a CalGray, CalRGB or Lab
#: colour space's dictionary (Tables 62-64).
ICC_KEPT = STREAM_KEPT | frozenset({"/N", "/Alternate", "/Range"})
CIE_KEPT = frozenset({"/WhitePoint", "/BlackPoint", "/Gamma", "/Matrix", "/Range"})
#: The property lists marked content may name (14.6.2) that are kept: optional content groups
#: and membership dictionaries (8.11.2, 8.11.2.2), which decide what is shown. Any other is a
#: producer's own, free-form by design (a /ZZPropPriv): it becomes an empty dictionary, so
#: the content stream that names it still finds it.
OPTIONAL_CONTENT = frozenset({"/OCG", "/OCMD"})
#: Markup annotations (Table 171), whose /T is their author; a Popup shows its parent's.
MARKUP = frozenset({
    "/Text", "/FreeText", "/Line", "/Square", "/Circle", "/Polygon", "/PolyLine", "/Highlight", "/Underline",
    "/Squiggly", "/StrikeOut", "/Caret", "/Stamp", "/Ink", "/FileAttachment", "/Sound", "/Redact",
    "/Projection", "/Popup",
})
#: Annotations that carry a file or a recording: taken off the page, and emptied.
ATTACHMENTS = frozenset({"/FileAttachment", "/Sound"})
#: What a signature dictionary (Table 255) says of its signer, and what it signed.
SIGNER = ("/Name", "/Location", "/Reason", "/ContactInfo", "/Contents", "/Cert", "/Prop_Build", "/Reference")


def is_pdf(data: bytes) -> bool:
    """Do the bytes start as a PDF does (its header, ISO 32000-2 7.5.2)?"""
    return data.startswith(PDF_MAGIC)


def pdf_without_metadata(data: bytes) -> bytes:
    """``data`` (a PDF) without its metadata, its content as it is (module docstring).

    Raises:
        UncleanableDocument: not a PDF that can be read, encrypted, over the bounds, or a JPEG
            image in it that does not parse.
    """
    if not is_pdf(data):
        raise UncleanableDocument("the document is not a PDF")
    if len(data) > MAX_PDF_BYTES:
        raise UncleanableDocument(f"the PDF is larger than {MAX_PDF_BYTES} bytes: its metadata is not removed")
    try:
        with pikepdf.open(io.BytesIO(data)) as pdf:
            if pdf.is_encrypted:
                raise UncleanableDocument("the PDF is encrypted: its metadata cannot be removed")
            _clean(pdf)
            out = io.BytesIO()
            # streams are copied as they are encoded (never decoded: no decompression bomb); one
            # stored unfiltered, and the object streams qpdf writes, are compressed (Flate,
            # lossless), or the object streams of a small file would be written out at full size
            pdf.save(out, deterministic_id=True, fix_metadata_version=False, compress_streams=True,
                     stream_decode_level=pikepdf.StreamDecodeLevel.none,
                     object_stream_mode=pikepdf.ObjectStreamMode.preserve)
            if any(_INFLATE_LIMIT_WARNING in warning for warning in pdf.get_warnings()):
                # the objects of that stream were not read (nor written): not the document as sent
                raise UncleanableDocument(f"the PDF inflates past {MAX_INFLATED_BYTES} bytes in one stream: "
                                          "its metadata is not removed")
            return out.getvalue()
    except UncleanableDocument:
        raise
    except pikepdf.PasswordError as exc:
        raise UncleanableDocument("the PDF is encrypted: its metadata cannot be removed") from exc
    except UndecodableImage as exc:
        raise UncleanableDocument(f"a JPEG image of the PDF does not parse ({exc.diagnostics})") from exc
    except (pikepdf.PdfError, ValueError, TypeError, RecursionError) as exc:
        raise UncleanableDocument("the PDF cannot be read") from exc


def _clean(pdf: pikepdf.Pdf) -> None:
    trailer = pdf.trailer
    size = trailer.get("/Size")
    if isinstance(size, int) and size > MAX_PDF_OBJECTS + 1:  # object 0 is the free list's head
        raise UncleanableDocument(f"the PDF has more than {MAX_PDF_OBJECTS} objects: its metadata is not removed")
    for key in list(trailer.keys()):
        if key not in ("/Root", "/Size"):  # qpdf writes /Size anew, from the objects it writes
            del trailer[key]
    root = pdf.Root
    if not isinstance(root, Dictionary):
        raise UncleanableDocument("the PDF has no document catalog")
    for key in list(root.keys()):
        if key not in CATALOG_KEPT:
            del root[key]
    names = root.get("/Names")
    if isinstance(names, Dictionary):
        for key in list(names.keys()):
            if key not in NAMES_KEPT:
                del names[key]
        if not names.keys():
            del root["/Names"]
    action = root.get("/OpenAction")
    if action is not None and not isinstance(action, Array) and not _goes_to(action):
        del root["/OpenAction"]
    form = root.get("/AcroForm")
    if isinstance(form, Dictionary) and "/XFA" in form:
        del form["/XFA"]
    for count, obj in enumerate(pdf.objects, start=1):
        if count > MAX_PDF_OBJECTS:
            raise UncleanableDocument(f"the PDF has more than {MAX_PDF_OBJECTS} objects: its metadata is not removed")
        for item in _dictionaries(obj):
            _clean_dictionary(item)
        if isinstance(obj, Stream):
            _clean_jpeg(obj)
    _clean_content(pdf)
    for page in pdf.pages:
        annots = page.obj.get("/Annots")
        if isinstance(annots, Array):
            kept = [a for a in annots if not (isinstance(a, Dictionary) and _subtype(a) in ATTACHMENTS)]
            if len(kept) != len(annots):
                page.obj.Annots = Array(kept)


def _clean_content(pdf: pikepdf.Pdf) -> None:
    """Allow-list the keys of what draws the pages (module docstring), reached from every page
    and page tree node (its /Resources and /Contents), every annotation's appearance streams and
    the form's default resources; each object once. An XObject, a font, a font descriptor or a
    graphics state that says what it is by its /Type or /Subtype is cleaned wherever it is."""
    walk = _ContentWalk()
    form = pdf.Root.get("/AcroForm")
    if isinstance(form, Dictionary):
        walk.resources(form.get("/DR"))
    for obj in pdf.objects:
        if not isinstance(obj, Dictionary | Stream):
            continue
        kind, subtype = obj.get("/Type"), _subtype(obj)
        if kind in (Name.Page, Name.Pages, Name.Template) and isinstance(obj, Dictionary):
            walk.resources(obj.get("/Resources"))
            contents = obj.get("/Contents")
            for stream in contents if isinstance(contents, Array) else [contents]:
                walk.keep(stream, STREAM_KEPT)
        elif "/Rect" in obj and subtype is not None:
            appearances = obj.get("/AP")
            for state in appearances.values() if isinstance(appearances, Dictionary) else []:
                for stream in state.values() if isinstance(state, Dictionary) and not isinstance(state, Stream) \
                        else [state]:
                    walk.xobject(stream)
        elif isinstance(obj, Stream) and subtype in ("/Image", "/Form"):
            walk.xobject(obj)
        elif kind == Name.Font:
            walk.font(obj)
        elif kind == Name.FontDescriptor:
            walk.font_descriptor(obj)
        elif kind == Name.ExtGState:
            walk.ext_g_state(obj)


class _ContentWalk:
    """Allow-lists the keys of resources and what they name (ISO 32000-2 tables in each set's
    docstring), following references: each indirect object once (its object and generation
    numbers), so a loop or a shared font costs one visit."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def _first(self, obj: object) -> bool:
        """Is ``obj`` a dictionary or stream not visited yet? (A direct one is always new.)"""
        if not isinstance(obj, Dictionary | Stream):
            return False
        if not obj.is_indirect:
            return True
        if obj.objgen in self._seen:
            return False
        self._seen.add(obj.objgen)
        return True

    def keep(self, obj: object, kept: frozenset[str]) -> bool:
        if not self._first(obj):
            return False
        assert isinstance(obj, Dictionary | Stream)
        _keep_only(obj, kept)
        return True

    def resources(self, res: object) -> None:
        if not self.keep(res, RESOURCES_KEPT):
            return
        assert isinstance(res, Dictionary | Stream)
        for key, clean in (("/Font", self.font), ("/XObject", self.xobject), ("/ExtGState", self.ext_g_state),
                           ("/Pattern", self.pattern), ("/Shading", self.shading), ("/ColorSpace", self.color_space)):
            for _, each in _entries(res.get(key)):
                clean(each)
        properties = res.get("/Properties")
        if isinstance(properties, Dictionary):
            for name, each in _entries(properties):
                if not (isinstance(each, Dictionary) and each.get("/Type") in OPTIONAL_CONTENT):
                    properties[name] = Dictionary()

    def xobject(self, obj: object) -> None:
        subtype = _subtype(obj) if isinstance(obj, Dictionary | Stream) else None
        if subtype == "/Image":
            if not self.keep(obj, IMAGE_KEPT):
                return
            assert isinstance(obj, Stream)
            self.xobject(obj.get("/SMask"))
            if isinstance(obj.get("/Mask"), Stream):
                self.xobject(obj.get("/Mask"))
            self.color_space(obj.get("/ColorSpace"))
            alternates = obj.get("/Alternates")
            for alternate in alternates if isinstance(alternates, Array) else []:
                if self.keep(alternate, ALTERNATE_IMAGE_KEPT):
                    self.xobject(alternate.get("/Image"))
        elif isinstance(obj, Stream):  # a form XObject, or one that does not say (an appearance stream)
            if not self.keep(obj, FORM_KEPT if subtype in ("/Form", None) else STREAM_KEPT):
                return
            self.resources(obj.get("/Resources"))
            self.keep(obj.get("/Group"), GROUP_KEPT)

    def font(self, obj: object) -> None:
        subtype = _subtype(obj) if isinstance(obj, Dictionary | Stream) else None
        if not self.keep(obj, FONT_KEPT.get(subtype or "", _SIMPLE_FONT)):
            return
        assert isinstance(obj, Dictionary | Stream)
        self.font_descriptor(obj.get("/FontDescriptor"))
        self.keep(obj.get("/ToUnicode"), CMAP_KEPT)
        encoding = obj.get("/Encoding")
        self.keep(encoding, CMAP_KEPT if isinstance(encoding, Stream) else ENCODING_KEPT)
        self.keep(obj.get("/CIDSystemInfo"), CID_SYSTEM_INFO_KEPT)
        if isinstance(obj.get("/CIDToGIDMap"), Stream):
            self.keep(obj.get("/CIDToGIDMap"), STREAM_KEPT)
        descendants = obj.get("/DescendantFonts")
        for descendant in descendants if isinstance(descendants, Array) else []:
            self.font(descendant)
        for _, glyph in _entries(obj.get("/CharProcs")):  # a Type 3 font's glyphs: content streams
            self.keep(glyph, STREAM_KEPT)
        self.resources(obj.get("/Resources"))

    def font_descriptor(self, obj: object) -> None:
        if not self.keep(obj, FONT_DESCRIPTOR_KEPT):
            return
        assert isinstance(obj, Dictionary | Stream)
        for key in ("/FontFile", "/FontFile2", "/FontFile3"):
            self.keep(obj.get(key), FONT_FILE_KEPT)
        self.keep(obj.get("/CIDSet"), STREAM_KEPT)
        for _, each in _entries(obj.get("/FD")):
            self.font_descriptor(each)

    def ext_g_state(self, obj: object) -> None:
        if not self.keep(obj, EXTGSTATE_KEPT):
            return
        assert isinstance(obj, Dictionary | Stream)
        mask = obj.get("/SMask")
        if self.keep(mask, SOFT_MASK_KEPT):
            assert isinstance(mask, Dictionary | Stream)
            self.xobject(mask.get("/G"))
        font = obj.get("/Font")
        if isinstance(font, Array) and len(font) == 2:
            self.font(font[0])

    def pattern(self, obj: object) -> None:
        if isinstance(obj, Stream):  # a tiling pattern
            if self.keep(obj, TILING_PATTERN_KEPT):
                self.resources(obj.get("/Resources"))
        elif self.keep(obj, SHADING_PATTERN_KEPT):
            assert isinstance(obj, Dictionary)
            self.shading(obj.get("/Shading"))
            self.ext_g_state(obj.get("/ExtGState"))

    def shading(self, obj: object) -> None:
        if not self.keep(obj, SHADING_KEPT):
            return
        assert isinstance(obj, Dictionary | Stream)
        self.color_space(obj.get("/ColorSpace"))
        self.function(obj.get("/Function"))

    def function(self, obj: object) -> None:
        if isinstance(obj, Array):
            for each in obj:
                self.function(each)
        elif self.keep(obj, FUNCTION_KEPT):
            assert isinstance(obj, Dictionary | Stream)
            self.function(obj.get("/Functions"))

    def color_space(self, obj: object) -> None:
        """A colour space (8.6): the dictionary of a CIE-based one, an ICC profile's stream, and
        the tint transform of a Separation or DeviceN one (a function) are cleaned; a DeviceN's
        attributes and the names and arrays as they are."""
        if not isinstance(obj, Array) or len(obj) < 2:
            return
        family = obj[0]
        if family in (Name.CalGray, Name.CalRGB, Name.Lab):
            self.keep(obj[1], CIE_KEPT)
        elif family == Name.ICCBased:
            if self.keep(obj[1], ICC_KEPT):
                self.color_space(obj[1].get("/Alternate"))
        elif family in (Name.Separation, Name.DeviceN) and len(obj) >= 4:
            self.color_space(obj[2])
            self.function(obj[3])
        elif family in (Name.Indexed, Name.Pattern):
            self.color_space(obj[1])


def _entries(obj: object) -> list[tuple[str, object]]:
    """The entries of a dictionary (a resource category's names), none of anything else."""
    return list(obj.items()) if isinstance(obj, Dictionary) else []


def _goes_to(action: object) -> bool:
    """Is ``action`` a go-to action (12.6.4.2) with nothing to do after it?"""
    return isinstance(action, Dictionary) and action.get("/S") == Name.GoTo and "/Next" not in action


def _subtype(obj: Dictionary | Stream) -> str | None:
    value = obj.get("/Subtype")
    return str(value) if isinstance(value, Name) else None


def _dictionaries(obj: pikepdf.Object) -> Iterator[Dictionary | Stream]:
    """``obj`` (an indirect object) and the direct dictionaries inside it (an inline action, an
    annotation written into its page's /Annots), not following references: every indirect object
    is visited on its own (:func:`_clean`)."""
    stack: list[object] = [obj]
    first = True
    while stack:
        item = stack.pop()
        if not isinstance(item, pikepdf.Object) or (not first and item.is_indirect):
            continue  # a number, a boolean (pikepdf gives them as Python's), or another object
        first = False
        if isinstance(item, Dictionary | Stream):
            yield item
            stack.extend(item.values())
        elif isinstance(item, Array):
            stack.extend(item)


def _clean_dictionary(obj: Dictionary | Stream) -> None:
    for key in REMOVED_EVERYWHERE:
        if key in obj:
            del obj[key]
    if isinstance(obj.get("/M"), String):
        del obj["/M"]  # a date (an annotation's, a signature's); a transition's /M is a name
    subtype = _subtype(obj)
    kind = obj.get("/Type")
    if "/Rect" in obj and subtype is not None:  # an annotation (12.5.2)
        kept = ANNOTATION_KEPT | ANNOTATION_TYPE_KEPT.get(subtype, frozenset())
        if subtype in MARKUP and subtype != "/Popup":
            kept |= MARKUP_KEPT
        if subtype in MARKUP:
            kept -= {"/T"}  # the author (a Movie's or Screen's /T is its title, a widget's its field's name)
        if subtype in ATTACHMENTS:  # its file (name, description, content) or recording
            kept -= {"/Contents"}
        _keep_only(obj, kept)
    elif kind in (Name.Page, Name.Template) and isinstance(obj, Dictionary):  # a page object (7.7.3.3)
        _keep_only(obj, PAGE_KEPT)
    elif kind == Name.Pages and isinstance(obj, Dictionary):  # a page tree node (7.7.3.2)
        _keep_only(obj, PAGES_KEPT)
    elif kind == Name.Thread and "/I" in obj:
        del obj["/I"]
    if obj.get("/S") == Name.JavaScript and "/JS" in obj:
        obj["/JS"] = String("")
    if "/ByteRange" in obj or kind in (Name.Sig, Name.DocTimeStamp):
        for key in SIGNER:
            if key in obj:
                del obj[key]


def _keep_only(obj: Dictionary | Stream, kept: frozenset[str]) -> None:
    """Remove every key of ``obj`` that is not in ``kept`` (an allow-list of the standard's keys)."""
    for key in list(obj.keys()):
        if key not in kept:
            del obj[key]


def _clean_jpeg(stream: Stream) -> None:
    """A JPEG image (/DCTDecode as its only filter) without its APPn segments but JFIF and Adobe
    and without COM (adapter.imaging.frame.encapsulated_jpeg, as a de-identified DICOM frame);
    its filter and decode parameters as they were."""
    given = stream.get("/Filter")
    only = given[0] if isinstance(given, Array) and len(given) == 1 else given
    if only != Name.DCTDecode or not isinstance(given, Name | Array):
        return
    raw = stream.read_raw_bytes()
    cleaned = encapsulated_jpeg(raw, icc="dropped").join()
    if cleaned != raw:
        parms = stream.get("/DecodeParms")
        stream.write(cleaned, filter=given, decode_parms=parms if isinstance(parms, Dictionary | Array) else None)


__all__ = ["MAX_PDF_BYTES", "MAX_PDF_OBJECTS", "is_pdf", "pdf_without_metadata"]
