"""WADO-URI (PS3.18 §9, the URI service): ``GET /wado?requestType=WADO&studyUID=…&seriesUID=…
&objectUID=…[&contentType=…]``, the single-object link many EHRs and older viewers keep.

The same decision, audit and release as WADO-RS (adapter.api.routes.dicomweb, wado_bulk): the
purpose of use comes in ``X-Purpose-Of-Use``, UIDs are in the purpose's released space, and
what is answered is made from the object the purpose's release produced:

- ``contentType=application/dicom``: the object (one body, not multipart), in Explicit VR Little
  Endian without ``transferSyntax`` or naming it (PS3.18 9.4.2.4: a JPEG object decompressed,
  as WADO-RS sends it), as stored with ``*`` or the syntax it is stored in;
  ``transferSyntax`` (with application/dicom only) naming another is 406;
- ``image/jpeg``, ``image/png``, ``application/pdf``: the instance rendered, as WADO-RS rendered
  and the FHIR Binary give it (the JPEG frame as it is, native pixels as PNG, a PDF); native
  pixels asked for as ``image/jpeg`` are encoded as JPEG baseline (lossy, no metadata, at most
  4096 a side), which a WADO-URI server "shall be able to send" for a single-frame image
  (PS3.18 7.1.2), and a JPEG asked for as ``image/png`` as a PNG of its decoded pixels, both
  made anew from the bytes already released (one read, one audit); a document asked for as a
  picture, or a picture as a PDF, is 406;
- ``rows``/``columns`` with ``image/jpeg``: a JPEG scaled to fit them (adapter.imaging.thumbnail),
  re-encoded, with no metadata.

``contentType`` may list several types, with qualities (``;q=``) or in order of preference, and
the wildcards ``*/*`` and ``image/*``; without it an image is answered as image/jpeg (PS3.18
7.1.2) and a document as it renders. ``frameNumber`` names the frame of a multi-frame object
to render (the first by default; a frame it does not hold is 404), as WADO-RS rendered frames
render it; with ``contentType=application/dicom`` alone (the whole object) it is 400. ``anonymize=yes`` is refused unless the
purpose's view is de-identified: the adapter de-identifies for a purpose the patient consented
to, never on a request's say-so (de-identification does not replace consent). ``region``,
windowing, presentation states and ``annotation`` are not supported (400).

Two optional parameters of PS3.18 9.1.2 are taken and do not change the answer: ``charset``
(the character sets the client prefers for text in the answer: an object is served as stored,
with its own Specific Character Set, never transcoded, as with ``transferSyntax``, and a picture
or PDF holds no text to encode) and ``imageQuality`` (an integer 1-100, else 400: the quality of
a lossy picture; the stored JPEG frame is served as received, and a JPEG made anew has the
adapter's one quality, adapter.imaging).
"""

from __future__ import annotations

from collections import Counter
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adapter.api.accept import by_preference, media_ranges
from adapter.api.deps import ReaderDep
from adapter.api.headers import break_glass_headers
from adapter.api.openapi import INVALID, READ_ONE, answers, ok, refusals
from adapter.api.rendered_query import quality_of
from adapter.api.routes.dicomweb import DEFAULT_SYNTAX, chosen_syntax, in_syntax
from adapter.api.routes.wado_bulk import RENDERED_JPEG_MAX_SIDE, image_response
from adapter.errors import InvalidQuery, NotAcceptable, NotSupported
from adapter.model.decision import View
from adapter.services.access import DicomContent, ReleasedImage, overrode_for_care
from adapter.services.transcode import EXPLICIT_VR_LITTLE_ENDIAN, can_be_explicit
from adapter.text import is_digits, pixel_count

router = APIRouter()

DICOM = "application/dicom"
RENDERED = ("image/jpeg", "image/png", "application/pdf")
_UNSUPPORTED = ("region", "windowCenter", "windowWidth", "presentationUID", "presentationSeriesUID", "annotation")
_MAX_SIDE = RENDERED_JPEG_MAX_SIDE


def _side(value: str | None, name: str) -> int | None:
    if value is None:
        return None
    side = pixel_count(value, _MAX_SIDE)
    if side is None:
        raise InvalidQuery(f"{name} takes a positive whole number of pixels", expression=name)
    return side


@router.get("/wado", response_class=Response, responses=answers(
    ok(200, "the object as stored (application/dicom) or rendered", dict.fromkeys((DICOM, *RENDERED))),
    refusals(*READ_ONE, 406, *INVALID)))
async def wado_uri(request: Request, reader: ReaderDep) -> Response:
    q = request.query_params
    # each parameter is one value (PS3.18 9.1.2; contentType's several are one comma list): which
    # of two would a client mean? (the last was taken, in silence)
    repeated = [name for name, n in Counter(name for name, _ in q.multi_items()).items() if n > 1]
    if repeated:
        raise InvalidQuery(f"{repeated[0][:40]} is given more than once: give it once", expression=repeated[0][:40])
    if q.get("requestType") != "WADO":
        raise InvalidQuery("requestType must be WADO", expression="requestType")
    study, series, instance = q.get("studyUID"), q.get("seriesUID"), q.get("objectUID")
    missing = [name for name, v in (("studyUID", study), ("seriesUID", series), ("objectUID", instance)) if not v]
    if missing:
        raise InvalidQuery(f"WADO-URI needs {', '.join(missing)}", expression=missing)
    assert study is not None and series is not None and instance is not None
    for name in _UNSUPPORTED:
        if name in q:
            raise NotSupported(f"{name} is not supported here", expression=name)
    frame = _frame_number(q.get("frameNumber"))
    if q.get("anonymize") not in (None, "yes"):
        raise InvalidQuery("anonymize takes yes", expression="anonymize")
    if q.get("anonymize") == "yes" and reader.purpose_view is not View.DEIDENTIFIED:
        raise NotSupported("anonymize=yes: de-identified objects are released for a purpose the patient consented "
                           "to (e.g. X-Purpose-Of-Use: TRAIN), not on request", expression="anonymize")
    quality_of(q.get("imageQuality"), "imageQuality")  # checked; it changes nothing (module docstring)
    rows, columns = _side(q.get("rows"), "rows"), _side(q.get("columns"), "columns")
    wanted = _content_types(q.get("contentType"))
    syntax = q.get("transferSyntax")
    if frame is not None and wanted == [DICOM]:
        raise InvalidQuery("frameNumber goes with a rendered contentType: application/dicom is the whole object",
                           expression="frameNumber")
    if syntax is not None and DICOM not in wanted:
        raise InvalidQuery("transferSyntax goes with contentType=application/dicom", expression="transferSyntax")
    # in the client's order of preference; none: image/jpeg for an image (PS3.18 7.1.2, WADO-URI's
    # default for a single-frame image), else as it renders (a PDF)
    preference: list[str | None] = list(wanted) or ["image/jpeg", None]
    chosen: list[Response] = []

    def answerable(content: DicomContent) -> None:
        """The answer the client prefers, made from the one object released (decided, not yet
        audited): the NotAcceptable raised when there is none is audited as a read that failed
        (nothing is sent), not as a disclosure."""
        rendered: ReleasedImage | None = None
        for media in preference:
            if media == DICOM:
                if frame is not None:  # the object is the whole object: a frame is a rendered picture (9.1.2.2)
                    continue
                # PS3.18 9.4.2.4: none named is the default, Explicit VR Little Endian; ``*`` as stored
                target = chosen_syntax([syntax if syntax is not None else DEFAULT_SYNTAX], content.transfer_syntax)
                if target is None:
                    raise NotAcceptable(f"transferSyntax: this instance is served as stored "
                                        f"({content.transfer_syntax})"
                                        + (f" or in {EXPLICIT_VR_LITTLE_ENDIAN}" if can_be_explicit(
                                            content.transfer_syntax) else ""), expression="transferSyntax")
                sent = in_syntax(content, target, default=syntax is None)
                chosen.append(Response(content=sent.data, media_type=DICOM,
                                       headers=break_glass_headers(content.decision.break_glass,
                                                                   overrode_for_care([content.decision]))))
                return
            if media == "*/*":
                media = None  # anything: as it renders
            if media is not None and media not in RENDERED and media != "image/*":
                continue
            if rendered is None:
                rendered = reader.rendered_from(content, frame=frame)
            if media == "image/jpeg" and (rows or columns):
                made = reader.thumbnail_of(rendered, rows=rows or _MAX_SIDE, columns=columns or _MAX_SIDE)
                if made is None:  # a document, or pixels that do not decode: a later type may do
                    continue
                chosen.append(image_response(made))
                return
            if media is None or rendered.content_type == media or \
                    (media == "image/*" and rendered.content_type.startswith("image/")):
                chosen.append(image_response(rendered))
                return
            if media is not None and media != "image/*":
                # a picture asked for as another image type: native pixels (rendered as a lossless
                # PNG) as image/jpeg, which a WADO-URI server "shall be able to send" for a
                # single-frame image (PS3.18 7.1.2), or a JPEG as image/png: made anew from the
                # bytes the purpose's release rendered (no second read, no second audit), with no
                # metadata, a JPEG at most _MAX_SIDE a side (adapter.imaging.thumbnail.rendered_as)
                remade = reader.rendered_as(rendered, media, max_side=_MAX_SIDE)
                if remade is not None:  # else a document, or pixels that do not decode: a later type may do
                    chosen.append(image_response(remade))
                    return
        served = f"rendered as {rendered.content_type} (no transcoding)" if rendered is not None else \
            f"served as {', '.join((DICOM, *RENDERED))}"
        raise NotAcceptable(f"contentType: this instance is {served}", expression="contentType")

    await run_in_threadpool(partial(reader.read_dicom_instance, instance, study=study, series=series,
                                    answerable=answerable))
    return chosen[-1]


def _frame_number(value: str | None) -> int | None:
    """``frameNumber`` (PS3.18 9.1.2.2): the frame of a multi-frame object to render, from 1 (a
    frame the object does not hold, and any of a document, is 404, as WADO-RS frames answer it);
    None when absent: the object as it renders."""
    if value is None:
        return None
    if not is_digits(value) or len(value) > 9 or int(value) < 1:
        raise InvalidQuery("frameNumber takes a frame number from 1", expression="frameNumber")
    return int(value)


def _content_types(value: str | None) -> list[str]:
    """``contentType``: media types "with relative degree of preference" (PS3.18 9.1.2.1.4; as
    RFC 9110 Accept): highest quality first, the listed order among equals; a type of quality 0
    is refused, not wanted; ``*/*`` and ``image/*`` are wildcards."""
    if value is None or not value.strip():
        return []
    ranges = media_ranges(value, default=None)
    if not ranges:
        raise NotAcceptable("contentType refuses every type (quality 0)", expression="contentType")
    return [r.media for r in by_preference(ranges)]
