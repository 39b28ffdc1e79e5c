"""PDF test material: a minimal well-formed PDF written byte by byte (a cross-reference table
whose offsets are right, so qpdf reads it without repairing it), and a one-page letter carrying
identifying metadata in every place a PDF holds it, built with pikepdf and written uncompressed,
so that a search of the bytes finds what is in them.

    minimal_pdf(b"(text) Tj")          # bytes: one page showing the text
    letter = identifying_pdf()         # bytes: the letter; IDENTIFYING: what must not go out
    page_contents(data)                # each page's content stream(s), decoded
"""

from __future__ import annotations

import io

import pikepdf
from pikepdf import Array, Dictionary, Name, String

#: What the letter's metadata holds (its /Info, its XMP, its annotation, its attachment…) and
#: no restricted view may release. Its visible text (:data:`VISIBLE`) is content: it goes out.
AUTHOR = "Dr Jane SMITH"
TITLE = "Discharge letter for John DOE MRN-PDF-0002"
CREATION = "D:20240301101500+01'00'"
PRODUCER = "HospitalEHR v9 St Example"
XMP_CREATOR = "Xmpcreator Hospital Scribe"
ANNOTATION_AUTHOR = "Annotauthor Nurse Ratched"
ANNOTATION_DATE = "D:20240302111213Z"
ATTACHED = b"Attachedfile lab results of John DOE MRN-PDF-0002"
ATTACHMENT_NAME = "doe-labs-mrnpdf.txt"
SCRIPT = "app.alert('Scriptcanary MRN-PDF-0002')"
PIECE = "Pieceinfo private hospital data"
IDENTIFYING = (AUTHOR, TITLE, "20240301101500", PRODUCER, XMP_CREATOR, ANNOTATION_AUTHOR, "20240302111213",
               ATTACHED.decode(), ATTACHMENT_NAME, "Scriptcanary", PIECE, "MRN-PDF-0002")
VISIBLE = "Visibleletter text of the discharge letter"
#: The XMP packet of the letter (its dc:creator and xmp:CreateDate name the scribe and the time).
XMP = (f'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
       f'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" '
       f'xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
       f'<dc:creator><rdf:Seq><rdf:li>{XMP_CREATOR}</rdf:li></rdf:Seq></dc:creator>'
       f'<xmp:CreateDate>2024-03-01T10:15:00+01:00</xmp:CreateDate></rdf:Description></rdf:RDF>'
       f'</x:xmpmeta><?xpacket end="w"?>').encode()


def minimal_pdf(content: bytes = b"BT /F1 12 Tf 20 100 Td (Letter) Tj ET", *, info: bytes | None = None,
                page_entries: bytes = b"") -> bytes:
    """A one-page PDF showing ``content`` (a page content stream), with a cross-reference table
    whose offsets are right (ISO 32000-2 7.5.4); ``info``: a document information dictionary
    (``<</Author(...)>>``) for the trailer to name; ``page_entries``: more entries of the page
    object (``/ZZPriv(...)``)."""
    objects = [b"<</Type/Catalog/Pages 2 0 R>>",
               b"<</Type/Pages/Kids[3 0 R]/Count 1>>",
               (b"<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]/Contents 4 0 R"
                b"/Resources<</Font<</F1<</Type/Font/Subtype/Type1/BaseFont/Helvetica>>>>>>" + page_entries + b">>"),
               b"<</Length %d>>stream\n" % len(content) + content + b"\nendstream"]
    if info is not None:
        objects.append(info)
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    trailer = b"/Size %d/Root 1 0 R" % (len(objects) + 1) + (b"/Info 5 0 R" if info is not None else b"")
    out += b"trailer\n<<" + trailer + b">>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def identifying_pdf() -> bytes:
    """A one-page letter whose metadata names the patient, the author and the hospital, with a
    full timestamp: its document information dictionary (Author, Title, CreationDate, Producer),
    an XMP packet (dc:creator), a page-piece dictionary, a text annotation with its author (/T)
    and dates, an embedded file (in the name tree and as a file attachment annotation) and a
    document-level JavaScript. Written uncompressed, so each is in the bytes as it is."""
    pdf = pikepdf.Pdf.new()
    pdf.add_blank_page(page_size=(200, 200))
    page = pdf.pages[0].obj
    page.Contents = pdf.make_stream(f"BT /F1 10 Tf 10 150 Td ({VISIBLE}) Tj ET".encode())
    page.Resources = Dictionary(Font=Dictionary(F1=Dictionary(Type=Name.Font, Subtype=Name.Type1,
                                                               BaseFont=Name.Helvetica)))
    page.PieceInfo = Dictionary(HospitalEHR=Dictionary(LastModified=String(CREATION), Private=String(PIECE)))
    pdf.trailer.Info = pdf.make_indirect(Dictionary(
        Author=String(AUTHOR), Title=String(TITLE), CreationDate=String(CREATION), ModDate=String(CREATION),
        Producer=String(PRODUCER)))
    metadata = pdf.make_stream(XMP)
    metadata.Type, metadata.Subtype = Name.Metadata, Name.XML
    pdf.Root.Metadata = metadata
    note = pdf.make_indirect(Dictionary(
        Type=Name.Annot, Subtype=Name.Text, Rect=[10, 10, 30, 30], Contents=String("Checked"),
        T=String(ANNOTATION_AUTHOR), M=String(ANNOTATION_DATE), CreationDate=String(ANNOTATION_DATE)))
    spec = pikepdf.AttachedFileSpec(pdf, ATTACHED, description=ATTACHMENT_NAME, filename=ATTACHMENT_NAME)
    pdf.attachments[ATTACHMENT_NAME] = spec
    attachment = pdf.make_indirect(Dictionary(
        Type=Name.Annot, Subtype=Name.FileAttachment, Rect=[40, 10, 60, 30], FS=spec.obj,
        Contents=String(ATTACHMENT_NAME), T=String(ANNOTATION_AUTHOR)))
    page.Annots = pdf.make_indirect(Array([note, attachment]))
    script = Dictionary(S=Name.JavaScript, JS=String(SCRIPT))
    pdf.Root.Names.JavaScript = Dictionary(Names=Array([String("open"), pdf.make_indirect(script)]))
    pdf.Root.OpenAction = pdf.make_indirect(Dictionary(S=Name.JavaScript, JS=String(SCRIPT)))
    out = io.BytesIO()
    pdf.save(out, compress_streams=False, stream_decode_level=pikepdf.StreamDecodeLevel.none,
             object_stream_mode=pikepdf.ObjectStreamMode.disable)
    return out.getvalue()


def page_contents(data: bytes) -> list[bytes]:
    """The content of every page (its content stream(s), decoded), in page order: what a reader
    sees drawn, whatever the streams' filters."""
    with pikepdf.open(io.BytesIO(data)) as pdf:
        out = []
        for page in pdf.pages:
            contents = page.obj.get("/Contents")
            streams = list(contents) if isinstance(contents, Array) else [contents]
            out.append(b"".join(s.read_bytes() for s in streams if isinstance(s, pikepdf.Stream)))
        return out
