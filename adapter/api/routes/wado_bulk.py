"""WADO-RS Retrieve Metadata, Frames and Bulkdata (PS3.18 10.4, 8.7.3), what a DICOMweb
viewer asks for after a QIDO-RS search:

``GET /dicomweb/studies/{s}[/series/{se}[/instances/{i}]]/metadata``
    application/dicom+json: one DICOM JSON object per permitted instance
    (adapter.mapping.dicom_json.metadata), bulk data by URI; or, preferred in Accept,
    ``multipart/related; type="application/dicom+xml"``: the same objects as the Native DICOM
    Model, one part per instance (adapter.api.routes.dicomweb, XML).
``GET /dicomweb/studies/{s}/series/{se}/instances/{i}/frames/{1,2,…}``
    multipart/related: the frames as stored. A JPEG frame goes as ``image/jpeg`` or, asked with
    ``type="application/octet-stream"; transfer-syntax=*``, as octet-stream labelled with its
    transfer syntax; a native frame as ``application/octet-stream``. Nothing is transcoded:
    octet-stream without ``transfer-syntax=*`` for a compressed frame is 406, and so is a native
    frame asked for only in a compressed syntax.
    One frame asked for as ``application/octet-stream`` itself is answered as a single part.
``GET /dicomweb/studies/{s}/series/{se}/instances/{i}/bulk/{tag}``
    multipart/related; type="application/octet-stream": one bulk data value the metadata named;
    asked for as ``application/octet-stream`` itself, that value as a single part.
``GET /dicomweb/studies/{s}/series/{se}/instances/{i}/rendered``
    the instance as a picture an EHR can show (PS3.18 8.3.5, 10.4.1.1.3): the same bytes as its
    FHIR Binary (adapter.mapping.dicom_fhir.extract_image): the first JPEG frame as it is
    (``image/jpeg``), native pixels as a lossless PNG (``image/png``), a document as its PDF; in
    the de-identified view with no metadata at all, as the Binary there. image/jpeg being the
    default and image/png and image/gif required rendered types of a single-frame image (PS3.18
    8.7.4, Table 8.7.4-1), a picture asked for as one of them that it is not stored as (in the
    client's order of preference) is made anew from its pixels decoded upright, with no metadata
    (adapter.imaging.thumbnail.rendered_as): baseline JPEG at most :data:`RENDERED_JPEG_MAX_SIDE`
    a side, PNG lossless of the decoded pixels, GIF in 256 colours; from the bytes already
    released, so the read is decided and audited once. 406 when the client accepts none of these.
    The rendering query parameters (PS3.18 8.3.5.1: ``viewport``, ``quality``, ``window``,
    ``iccprofile=no``; adapter.api.rendered_query) make the picture anew as they ask
    (adapter.imaging.rendition), after the same decision; ``annotation`` is 400 not-supported.
``GET /dicomweb/studies/{s}/series/{se}/instances/{i}/frames/{n}/rendered``
    Rendered Frames (PS3.18 10.4.1): frame ``n`` as the instance's rendered resource gives its
    first, one frame a request. Rendered studies and series are 400 not-supported.
``GET /dicomweb/studies/{s}[/series/{se}[/instances/{i}]]/thumbnail``
    a small image/jpeg (PS3.18 8.3.5.1.2) of the instance, or of the first permitted image of
    the series or study, re-encoded from decoded pixels: no metadata, whatever the view.

Every answer is made from the object the purpose's release produced (the same decision, audit
and de-identification as WADO-RS retrieve; UIDs in the released space), never from the stored
object directly.
"""

from __future__ import annotations

import uuid
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from adapter.api.accept import accepts, by_preference, media_ranges
from adapter.api.deps import ReaderDep, ServicesDep
from adapter.api.headers import break_glass_headers
from adapter.api.openapi import (
    IMAGES,
    INVALID,
    MULTIPART_JPEG,
    MULTIPART_OCTET,
    READ_ONE,
    answers,
    ok,
    refusals,
)
from adapter.api.rendered_query import rendering_parameters
from adapter.api.routes.dicomweb import (
    _AS_DATASETS,
    _body_part,
    _datasets,
    _dicom_model,
    _instance_url,
    _model_refusal,
    _not_acceptable,
)
from adapter.errors import InvalidQuery, NotAcceptable, NotSupported
from adapter.mapping.dicom_json import (
    bulk_value,
    frames,
    is_encapsulated,
    metadata,
    parse_frame_list,
    read_released,
    transfer_syntax,
)
from adapter.services.access import DicomContent, DicomRetrieval, ReleasedImage, overrode_for_care
from adapter.services.registry import Services
from adapter.text import pixel_count

#: Every route here negotiates (406, an OperationOutcome) and reads one study, series or instance.
router = APIRouter(prefix="/dicomweb", default_response_class=Response, responses=refusals(406, *READ_ONE))

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: The syntaxes a native frame's bytes are in: its pixel bytes are the same in both (little endian).
NATIVE_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")
OCTET = "application/octet-stream"
#: The largest side of a rendered image encoded as JPEG (WADO-RS rendered, WADO-URI).
RENDERED_JPEG_MAX_SIDE = 4096


_METADATA = ok(200, "one DICOM JSON object (XML: one part) per permitted instance, bulk data by URI", _AS_DATASETS)
#: viewport may be invalid (422).
_THUMBNAIL = answers(ok(200, "a small JPEG, re-encoded: no metadata", {"image/jpeg": None}), refusals(*INVALID))


def _metadata_of(request: Request, services: Services, content: DicomContent, *, study: str,
                 series: str) -> dict[str, Any]:
    ds = read_released(content.data)
    return metadata(ds, _instance_url(request, services, study, series, content.sop_instance_uid))


@router.get("/studies/{study}/metadata", responses=_METADATA)
async def study_metadata(study: str, request: Request, reader: ReaderDep, services: ServicesDep,
                         accept: Annotated[str | None, Header()] = None) -> Response:
    return await _series_metadata(request, reader, services, accept, study, None)


@router.get("/studies/{study}/series/{series}/metadata", responses=_METADATA)
async def series_metadata(study: str, series: str, request: Request, reader: ReaderDep, services: ServicesDep,
                          accept: Annotated[str | None, Header()] = None) -> Response:
    return await _series_metadata(request, reader, services, accept, study, series)


async def _series_metadata(request: Request, reader: Any, services: Services, accept: str | None, study: str,
                           series: str | None) -> Response:
    model = _dicom_model(accept)
    if model is None:
        return _not_acceptable(_model_refusal("WADO-RS metadata"))

    answered: list[Response] = []

    def answerable(retrievals: list[DicomRetrieval]) -> None:  # before the audit (406, XML: not sent)
        body = [r.answer(partial(_metadata_of, request, services, study=r.entry.study_instance_uid,
                                 series=r.entry.series_instance_uid)) for r in retrievals]
        decisions = [r.decision for r in retrievals]
        answered.append(_datasets(body, model, break_glass=any(d.break_glass for d in decisions),
                                  overrode=overrode_for_care(decisions)))

    # decided, permitted ones only, audited once the answer is made
    await run_in_threadpool(partial(reader.read_dicom, study, series, answerable=answerable))
    return answered[-1]


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata", responses=_METADATA)
async def instance_metadata(study: str, series: str, instance: str, request: Request, reader: ReaderDep,
                            services: ServicesDep, accept: Annotated[str | None, Header()] = None) -> Response:
    model = _dicom_model(accept)
    if model is None:
        return _not_acceptable(_model_refusal("WADO-RS metadata"))

    answered: list[Response] = []

    def answerable(content: DicomContent) -> None:  # after the decision, before the audit (406, XML: not sent)
        body = _metadata_of(request, services, content, study=study, series=series)
        answered.append(_datasets([body], model, break_glass=content.decision.break_glass,
                                  overrode=overrode_for_care([content.decision])))

    await run_in_threadpool(partial(reader.read_dicom_instance, instance, study=study, series=series,
                                    answerable=answerable))
    return answered[-1]


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}", responses=answers(
    ok(200, "the frames as stored: a JPEG frame as image/jpeg, or any as octet-stream (no transcoding)",
       {MULTIPART_JPEG: None, MULTIPART_OCTET: None, OCTET: None}), refusals(*INVALID)))
async def retrieve_frames(study: str, series: str, instance: str, frame_list: str, reader: ReaderDep,
                          accept: Annotated[str | None, Header()] = None) -> Response:
    wanted = parse_frame_list(frame_list)
    answered: list[Response] = []

    def answerable(content: DicomContent) -> None:  # after the decision, before the audit (406: not sent)
        # the answer is made under the object's turn (adapter.services.access), the object dropped then
        ds = read_released(content.data)
        syntax = transfer_syntax(ds)
        negotiated = _frame_media_type(accept, syntax, compressed=is_encapsulated(ds), single=len(wanted) == 1)
        if negotiated is None:
            raise NotAcceptable(
                f"the frames are stored in {syntax}, served as they are (no transcoding): ask for "
                f'multipart/related; type="image/jpeg" or type="{OCTET}"; transfer-syntax=*'
                if is_encapsulated(ds) else f'the frames are served as multipart/related; type="{OCTET}", or one '
                f"frame as {OCTET}")
        chosen, single_part = negotiated
        data = frames(ds, wanted)
        del ds
        part_type = f"{chosen}; transfer-syntax={syntax}"
        glass = _glass_headers(content)
        if single_part:  # one frame, asked for as application/octet-stream itself (PS3.18 8.7.3.3.2)
            answered.append(Response(content=data[0], media_type=None, headers={"Content-Type": part_type, **glass}))
        else:
            answered.append(_multipart(chosen, [(part_type, frame) for frame in data], glass=glass))

    await run_in_threadpool(partial(reader.read_dicom_instance, instance, study=study, series=series,
                                    answerable=answerable))
    return answered[-1]


@router.get("/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}", responses=answers(
    ok(200, "the bulk data value", {MULTIPART_OCTET: None, OCTET: None}), refusals(*INVALID)))
async def retrieve_bulkdata(study: str, series: str, instance: str, tag: str, reader: ReaderDep,
                            accept: Annotated[str | None, Header()] = None) -> Response:
    single_part = _bulk_single_part(accept)
    if single_part is None:
        return _not_acceptable(f'bulk data is served as multipart/related; type="{OCTET}", or as {OCTET}')
    answered: list[Response] = []

    def answerable(content: DicomContent) -> None:  # made under the object's turn (adapter.services.access)
        value = bulk_value(read_released(content.data), tag)
        glass = _glass_headers(content)
        answered.append(Response(content=value, media_type=OCTET, headers=glass) if single_part
                        else _multipart(OCTET, [(OCTET, value)], glass=glass))

    await run_in_threadpool(partial(reader.read_dicom_instance, instance, study=study, series=series,
                                    answerable=answerable))
    return answered[-1]


def _bulk_single_part(accept: str | None) -> bool | None:
    """How one bulk data value goes, in the client's order of preference: True as
    ``application/octet-stream`` itself (single part, PS3.18 8.7.3.3.2: one bulk data value),
    False as ``multipart/related; type="application/octet-stream"`` (also for ``*/*``, no Accept,
    or a bare multipart), None when the client accepts neither (406)."""
    for media, params in by_preference(media_ranges(accept)):
        if media == OCTET:
            return True
        if media in ("*/*", "multipart/*", "multipart/related") and params.get("type", OCTET).lower() in (OCTET, "*/*"):
            return False
    return None


_RENDERED = answers(ok(200, "the instance (or frame) as its FHIR Binary gives it, or made as the query asks",
                        dict.fromkeys(IMAGES)), refusals(*INVALID))


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered", responses=_RENDERED)
async def retrieve_rendered(study: str, series: str, instance: str, request: Request, reader: ReaderDep,
                            accept: Annotated[str | None, Header()] = None) -> Response:
    return await _rendered(reader, request, accept, study, series, instance, frame=None)


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frame_list}/rendered",
            responses=_RENDERED)
async def retrieve_rendered_frame(study: str, series: str, instance: str, frame_list: str, request: Request,
                                  reader: ReaderDep, accept: Annotated[str | None, Header()] = None) -> Response:
    """Rendered Frames (PS3.18 10.4.1, 8.3.5): one frame, as the instance's rendered resource
    gives its first; a list of several would be a multi-frame picture (a video or multipart of
    rendered frames), which is not made here: 400, one frame a request."""
    wanted = parse_frame_list(frame_list)
    if len(wanted) != 1:
        raise NotSupported("rendered frames are served one frame a request (frames/{n}/rendered)",
                           expression="frames")
    return await _rendered(reader, request, accept, study, series, instance, frame=wanted[0])


@router.get("/studies/{study}/rendered", responses=refusals(*INVALID))
async def study_rendered(study: str) -> Response:
    raise NotSupported(_NO_RENDERED_STUDY, expression="rendered")


@router.get("/studies/{study}/series/{series}/rendered", responses=refusals(*INVALID))
async def series_rendered(study: str, series: str) -> Response:
    raise NotSupported(_NO_RENDERED_STUDY, expression="rendered")


_NO_RENDERED_STUDY = ("rendered studies and series are not supported: ask for each instance's (or frame's) "
                      "/rendered, or the study's or series' /thumbnail")


async def _rendered(reader: Any, request: Request, accept: str | None, study: str, series: str, instance: str, *,
                    frame: int | None) -> Response:
    """The instance's (or, ``frame`` given, that frame's) rendered resource; its query parameters read first (400
    before any read), then the same decision as every retrieve of the instance."""
    parameters = rendering_parameters(list(request.query_params.multi_items()))
    chosen: list[ReleasedImage] = []

    def answerable(rendered: ReleasedImage) -> None:  # after the decision, before the audit (406: not sent)
        for media, _ in by_preference(media_ranges(accept)):
            if parameters.make_anew and rendered.content_type.startswith("image/"):
                # made anew as the query asks, as the type asked for (a wildcard: the type it renders as)
                target = rendered.content_type if accepts(media, rendered.content_type) else media
                made = reader.rendered_with(rendered, target, viewport=parameters.viewport,
                                            window=parameters.window, quality=parameters.quality,
                                            max_side=RENDERED_JPEG_MAX_SIDE)
                if made is not None:
                    chosen.append(made)
                    return
                continue
            if accepts(media, rendered.content_type):
                chosen.append(rendered)
                return
            # a picture asked for as another type a single-frame image "shall" be rendered as
            # (module docstring), made anew from what the purpose's release renders (no second read)
            made = reader.rendered_as(rendered, media, max_side=RENDERED_JPEG_MAX_SIDE)
            if made is not None:  # else: not a type made, no picture, or pixels that do not decode
                chosen.append(made)
                return
        raise NotAcceptable(f"this instance is rendered as {rendered.content_type}"
                            + (", image/jpeg, image/png or image/gif" if rendered.content_type.startswith("image/")
                               else " (no transcoding)"))

    await run_in_threadpool(partial(reader.read_dicom_rendered, instance, study=study, series=series,
                                    answerable=answerable, frame=frame))
    return image_response(chosen[-1])


def image_response(image: ReleasedImage) -> Response:
    """A picture or document made from a released object, as the answer: its bytes and media
    type, and X-Break-Glass, saying what it overrode, when break-glass released it."""
    return Response(content=image.data, media_type=image.content_type,
                    headers=break_glass_headers(image.break_glass, image.overrode))


#: A thumbnail's default and largest sides (PS3.18 leaves its size to the origin server).
THUMBNAIL_SIDE = 128
THUMBNAIL_MAX_SIDE = 1024


@router.get("/studies/{study}/thumbnail", responses=_THUMBNAIL)
async def study_thumbnail(study: str, request: Request, reader: ReaderDep,
                          accept: Annotated[str | None, Header()] = None) -> Response:
    return await _thumbnail(reader, request, accept, study)


@router.get("/studies/{study}/series/{series}/thumbnail", responses=_THUMBNAIL)
async def series_thumbnail(study: str, series: str, request: Request, reader: ReaderDep,
                           accept: Annotated[str | None, Header()] = None) -> Response:
    return await _thumbnail(reader, request, accept, study, series)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail", responses=_THUMBNAIL)
async def instance_thumbnail(study: str, series: str, instance: str, request: Request, reader: ReaderDep,
                             accept: Annotated[str | None, Header()] = None) -> Response:
    return await _thumbnail(reader, request, accept, study, series, instance)


async def _thumbnail(reader: Any, request: Request, accept: str | None, study: str, series: str | None = None,
                     instance: str | None = None) -> Response:
    """Thumbnail resources (PS3.18 8.3.5.1.2): a small image/jpeg; ``viewport=<columns>,<rows>``
    bounds it (default 128 x 128, at most 1024 a side)."""
    if not accepts(accept, "image/jpeg"):
        return _not_acceptable("thumbnails are image/jpeg")
    columns = rows = THUMBNAIL_SIDE
    viewport = request.query_params.get("viewport")
    if viewport is not None:
        sides = [side for p in viewport.split(",") if (side := pixel_count(p.strip(), THUMBNAIL_MAX_SIDE))]
        if len(sides) != 2 or viewport.count(",") != 1:
            raise InvalidQuery("viewport takes <columns>,<rows> in pixels", expression="viewport")
        columns, rows = sides
    made = await run_in_threadpool(partial(reader.read_dicom_thumbnail, study, series=series, instance=instance,
                                           rows=rows, columns=columns))
    return image_response(made)


def _frame_media_type(accept: str | None, syntax: str, *, compressed: bool,
                      single: bool) -> tuple[str, bool] | None:
    """The media type to send the frames as and whether as a single part, or None when nothing
    the client accepts fits. One frame (``single``) asked for as ``application/octet-stream``
    itself goes as a single part (PS3.18 8.7.3.3.2), as a bulk data value does: a native frame,
    or a compressed one with ``transfer-syntax=*`` or its own (never transcoded)."""
    for media, params in media_ranges(accept):
        wanted_syntax = params.get("transfer-syntax")
        if media == OCTET and single and (wanted_syntax in ("*", syntax)
                                          or (not compressed and wanted_syntax in (None, *NATIVE_SYNTAXES))):
            return OCTET, True
        if media not in ("*/*", "multipart/*", "multipart/related"):
            continue
        asked = params.get("type")
        if asked is None:  # a bare multipart or */*: the default for what is stored
            if syntax == JPEG_BASELINE:
                return "image/jpeg", False
            if not compressed:
                return OCTET, False
            continue
        asked = asked.lower()
        if asked == "image/jpeg" and syntax == JPEG_BASELINE and wanted_syntax in (None, "*", syntax):
            return "image/jpeg", False
        if asked == OCTET and (wanted_syntax in ("*", syntax)
                               or (not compressed and wanted_syntax in (None, *NATIVE_SYNTAXES))):
            return OCTET, False
    return None


def _multipart(type_: str, parts: list[tuple[str, bytes]], *, glass: dict[str, str]) -> Response:
    """``parts`` as one multipart/related answer; ``glass``: its X-Break-Glass (:func:`_glass_headers`)."""
    boundary = uuid.uuid4().hex
    body = b"".join(_body_part(boundary, content_type, data) for content_type, data in parts)
    body += f"--{boundary}--\r\n".encode("ascii")
    return Response(content=body, media_type=None,
                    headers={"Content-Type": f'multipart/related; type="{type_}"; boundary={boundary}', **glass})


def _glass_headers(content: DicomContent) -> dict[str, str]:
    """X-Break-Glass of an answer made of ``content``, saying what break-glass overrode."""
    return break_glass_headers(content.decision.break_glass, overrode_for_care([content.decision]))

