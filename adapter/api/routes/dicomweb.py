"""DICOMweb at ``/dicomweb`` (PS3.18): STOW-RS in, WADO-RS and QIDO-RS out, under purpose of use.

* **STOW-RS** (PS3.18 10.5) ``POST /dicomweb/studies[/{study}]``, ``multipart/related;
  type="application/dicom"``: every part is spooled to a staging file and goes through the C-STORE
  SCP's ingest (adapter.services.dicom_objects.stow_instance), sender ``DICOMWEB`` from the
  client's address (its AuditEvents name the HTTP client, the request's X-Request-Id and the
  purpose it stated: adapter.services.dicom_ingest.stow_sender). A client
  ADAPTER_STOW_TRUSTED_SENDERS names (:func:`_trusted_sender`) is trusted as the SCP's allowed AEs
  are: the organisation's PACS or modality, a colleague inside the organisation answering for
  consent (its records' Provenance says so, on behalf of the object's InstitutionName). Any other
  client's clinical object is held to the rules of a photo posted without a consent statement
  (clinical safety review dicomsafety F2): stored on a Consent on file permitting care, kept
  consent pending under ``allowPending``, else failed with 0x0124 Not authorised, nothing stored
  (its record, when stored, is a clinician's, its Provenance on behalf of nobody the object
  names). The answer (application/dicom+json; or,
  asked for, the Native DICOM Model: ``application/dicom+xml``, one document, or ``multipart/related;
  type="application/dicom+xml"``, one part; see below) lists
  ReferencedSOPSequence (0008,1199) and FailedSOPSequence (0008,1198) with FailureReason
  (0008,1197) = the SCP's status for the same refusal, and the study's RetrieveURL (0008,1190):
  the one study of the instances stored, else (several, or none stored, whatever the URL names)
  present and empty (type 2);
  an instance stored already with another content fails 0xA900, as the SCP answers it (the stored
  one kept: adapter.services.dicom_ingest); no instance is stored with a WarningReason (one
  kept consent pending has none: PS3.18 defines none for it) but one kept consent pending makes
  the answer 202 too; an HTTP Warning (``299 <service>:
  …``, :func:`_stow_warnings`) says in words why an instance failed 0x0124 and that one is consent
  pending (safety review 4 and 7); 200 all stored, 202 some failed or have a
  warning, 409 all failed; 415 for another media type; a part whose
  StudyInstanceUID is not the URL's fails (0xA900). The Accept header is negotiated before the
  body is read: one taking none of these answers is 406, nothing stored (refused as a whole, below).
  Each part refused is audited once (adapter.mapping.audit_dicom); so is a request refused as a
  whole before any part was looked at (over the size limits, not multipart/related of
  application/dicom, no boundary, malformed or cut short, no part at all, an Accept it cannot answer): one DICOM Instances
  Transferred message, action C, outcome 4, naming no instance (none was read).
* **WADO-RS** (PS3.18 10.4) ``GET /dicomweb/studies/{study}[/series/{series}[/instances/{instance}]]``:
  ``multipart/related; type="application/dicom"``, one part per object, each the Part 10 object in
  the view the consent decision gives (FULL as stored, TRAIN de-identified, HRESCH pseudonymised),
  as stored for ``transfer-syntax=*`` or the syntax it is stored in, in Explicit VR Little
  Endian for that syntax or none named (the default, PS3.18 8.7.3.4, 8.7.8.2: a JPEG object
  decompressed, adapter.services.transcode, after the decision; with none named one whose
  frames cannot be decoded goes as stored, as 8.7.3.4 permits a lossy object); a request naming
  only syntaxes an object cannot be sent in is answered 406, for a study or series before the
  answer starts. A study or series retrieve
  returns the permitted instances and silently leaves the others out (as a FHIR search does),
  and so a document the purpose's view cannot release (adapter.services.access.read_dicom);
  404 when nothing has the UIDs, 403 when nothing of it is permitted, as for a FHIR read.
* **QIDO-RS** (PS3.18 10.6) ``GET /dicomweb/studies``, ``/studies/{study}/series``, ``/series``,
  ``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances``, ``/instances``:
  application/dicom+json (PS3.18 F.2), or the Native DICOM Model (below). Match keys (keyword or
  tag): PatientID (wildcards ``*``, ``?``), PatientName (wildcards, insensitive to case and empty trailing components), IssuerOfPatientID (wildcards), StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID
  (UID lists with ``,`` or ``\\``), Modality / ModalitiesInStudy (a list alike: any of them, as
  dcm4chee answers a viewer's modality filter such as OHIF's ``ModalitiesInStudy=CT,MR``; each with wildcards), StudyDate (``YYYYMMDD``,
  ``A-B``, ``A-``, ``-B``), AccessionNumber and StudyID (wildcards), ReferringPhysicianName (as
  PatientName), StudyDescription (wildcards), SeriesNumber and
  InstanceNumber (one integer), RequestAttributesSequence's ScheduledProcedureStepID and
  RequestedProcedureID at series and instance level (:data:`_REQUEST_KEYS`: a value matches nothing),
  PerformedProcedureStepStartDate (as StudyDate), StudyTime and
  PerformedProcedureStepStartTime (``HHMMSS``, ``A-B``, ``A-``, ``-B``). Wildcards (PS3.4 C.2.2.2.4): ``*`` any run
  of characters, the empty one too, ``?`` one character; a value of only ``*`` is universal matching for any key,
  as an empty one: it matches everything, empty and absent values included; ``limit``, ``offset`` (results at the level,
  after the decision; a limit over :data:`QIDO_MAX_LIMIT`, or none, gives that many, with the
  Warning of PS3.18 8.3.4.4 when more follow); ``includefield`` (PS3.18 8.3.4.3: keywords or
  tags, comma-separated or repeated, or ``all``) adds to a level's default attributes those the
  adapter keeps that it names (``all``: every one): a study shows all it keeps by default
  (PatientName, PatientBirthDate, PatientSex, AccessionNumber, ReferringPhysicianName and StudyID,
  Type 2 in PS3.18 Table 10.6.3-3, empty where the view shows none; StudyDescription, StudyTime,
  TimezoneOffsetFromUTC where it does), and so do the results of All Series and All
  Instances, with the PatientID and StudyDate of their study; a study's series and instances add
  those study attributes when includefield names them; a series and an instance show what
  PS3.18 Tables 10.6.3-4 and 10.6.3-5 list as the view's copy of the object carries them,
  adapter.services.dicom_objects.series_shown and instance_shown. Everything is read from the
  store's index, never from the objects' files: an attribute kept only in the object (WADO-RS
  metadata has it) is a return key not returned, as is any other attribute with an
  empty value (a return key: universal matching, PS3.4 C.2.2.2.3, matches everything); another
  key, or a name that is no attribute (as a key or in includefield, or ``all`` beside another
  includefield), is refused (400), never read as matching everything.
  ``fuzzymatching=true`` is answered with literal matching and the Warning of PS3.18 8.3.4.2. Keys are matched against what the view
  shows: under TRAIN/HRESCH the UIDs are the mapped ones (exact match on mapped UIDs only),
  HRESCH's PatientID (and PatientName) is the pseudonym; TRAIN shows no PatientID, PatientName or dates, and neither shows an
  AccessionNumber, StudyDescription, ReferringPhysicianName or StudyID, so keys on them match nothing but ``*``. Instances not permitted are left out and not
  counted. No match is 200 with ``[]`` (PS3.18 2026a, CP-2473: an empty list of results, not 204). Metadata, frames and bulk data: adapter.api.routes.wado_bulk.

**XML** (PS3.18 Table 10.4.4-1, 8.7.3.2: required beside the default JSON). QIDO-RS results, WADO-RS
metadata (adapter.api.routes.wado_bulk) and the STOW-RS response are served as ``multipart/related;
type="application/dicom+xml"``, one part (``Content-Type: application/dicom+xml``) per result or per
instance, each a PS3.19 NativeDicomModel document (adapter.mapping.dicom_xml), when the client
prefers it (Accept, by quality, a representation's being that of the most specific range naming it:
RFC 9110 12.5.1; JSON stays the default); no result is the closing delimiter alone (no part). The XML is
written from the very DICOM JSON the answer would have been, after the same decision and audit,
so it carries nothing more. A bare ``application/dicom+xml`` is no answer of several data sets
(PS3.18 10.4.4) and is 406 there; STOW-RS, one data set, also answers it as one document. A
value XML 1.0 cannot carry makes a search or metadata answer 406 (adapter.mapping.dicom_xml); a
STOW-RS answer, the instances being stored by then, then comes in the default JSON (PS3.18 Table
8.7.3-1: the default is what is returned when nothing acceptable is supported).

Every read needs ``X-Purpose-Of-Use`` (403 without, 400 unknown), as on ``/fhir``; errors are the
API's one OperationOutcome rendering (adapter.api.outcome).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Annotated, Any, NamedTuple

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from adapter.api.accept import by_preference, media_ranges, quality
from adapter.api.deps import ReaderDep, ServicesDep, get_write_context
from adapter.api.forwarded import forwarded_for_of
from adapter.api.headers import break_glass_headers
from adapter.api.media_type import content_type
from adapter.api.multipart_related import parse_multipart_related
from adapter.api.openapi import (
    DICOM_DATASET,
    DICOM_DATASETS,
    DICOM_XML,
    INVALID,
    MULTIPART_DICOM,
    MULTIPART_DICOM_XML,
    READ,
    READ_ONE,
    answers,
    ok,
    refusals,
    request_body,
)
from adapter.api.outcome import fhir_response
from adapter.api.request_limits import refuse_declared_over
from adapter.api.urls import absolute
from adapter.errors import (
    AdapterError,
    ImageTooLarge,
    InvalidInput,
    InvalidQuery,
    InvalidResource,
    NotAcceptable,
    NotSupported,
    UndecodableImage,
    UnsupportedPixelData,
)
from adapter.mapping.dicom_dates import is_date, is_time
from adapter.mapping.dicom_vr import attribute_tag
from adapter.mapping.dicom_xml import native_dicom_model
from adapter.mapping.dimse_status import CANNOT_UNDERSTAND, NOT_AUTHORISED
from adapter.mapping.outcome import operation_outcome, refusal_coding
from adapter.model.decision import Decision
from adapter.model.network import is_in
from adapter.model.photo import IDENTIFIER_MAX_BYTES, identifier_too_long
from adapter.refusals import RefusalCode
from adapter.services.access import DicomContent, DicomRetrieval, overrode_for_care
from adapter.services.audit import DicomAudit
from adapter.services.dicom_objects import (
    INSTANCE,
    LEVEL_KEYS,
    ONLINE,
    SERIES,
    STOW_SENDER,
    STUDY,
    DateRange,
    DicomEntry,
    DicomQuery,
    StowOutcome,
    TimeRange,
    first_shown,
    instance_shown,
    integer_key,
    is_universal,
    series_shown,
    stow_instance,
    stow_not_staged,
    stow_sender,
)
from adapter.services.registry import Services
from adapter.services.transcode import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    can_be_explicit,
    in_explicit_vr_little_endian,
)
from adapter.text import NUL_IN_SEARCH, has_control_character, is_digits

DICOM_JSON = "application/dicom+json"
#: The DICOM data sets of an answer as the client prefers them (:func:`_dicom_model`).
_AS_DATASETS = {DICOM_JSON: DICOM_DATASETS, MULTIPART_DICOM_XML: None}
#: The DICOMweb routes answer as they build it: their declared answers below (adapter.api.openapi).
router = APIRouter(prefix="/dicomweb", default_response_class=Response)

#: STOW-RS: the store response (PS3.18 10.5.3), whatever was stored; refusals of the request itself.
_STOW_BODY = request_body({MULTIPART_DICOM: None}, "DICOM Part 10 objects, one per part")
_STOW_ANSWER = {DICOM_JSON: DICOM_DATASET, DICOM_XML: None, MULTIPART_DICOM_XML: None}
_STOW = answers(ok(200, "every instance stored (ReferencedSOPSequence)", _STOW_ANSWER),
                ok(202, "some stored, the others in FailedSOPSequence with their FailureReason; or some kept "
                   "consent pending", _STOW_ANSWER),
                ok(409, "none stored: FailedSOPSequence with each FailureReason", _STOW_ANSWER),
                refusals(400, 403, 408, 413, 415, *INVALID, 503))
#: WADO-RS retrieve: the objects as stored, in the purpose's view; 406 for another representation
#: or transfer syntax.
_RETRIEVE = answers(ok(200, "the instances permitted, as stored or in Explicit VR Little Endian", {MULTIPART_DICOM: None}),
                    refusals(*READ_ONE, 406))
#: QIDO-RS: the matches permitted (none: an empty array); 406 for another representation.
_QIDO = answers(ok(200, "the matches permitted, at the level asked for (XML: one part per match)", _AS_DATASETS),
                refusals(*READ, 406, *INVALID))
STOW_MAX_PARTS = 1000
STOW_TOTAL_FACTOR = 10           # a STOW request may carry up to 10 maximum uploads in all
QIDO_MAX_LIMIT = 1000

# -- DICOM JSON model (PS3.18 F.2) --------------------------------------------------------------

_TAGS: dict[str, tuple[str, str]] = {  # keyword: (tag, VR)
    "SOPClassUID": ("00080016", "UI"), "SOPInstanceUID": ("00080018", "UI"), "StudyDate": ("00080020", "DA"),
    "Modality": ("00080060", "CS"), "ModalitiesInStudy": ("00080061", "CS"), "RetrieveURL": ("00081190", "UR"),
    "ReferencedSOPClassUID": ("00081150", "UI"), "ReferencedSOPInstanceUID": ("00081155", "UI"),
    "FailureReason": ("00081197", "US"), "FailedSOPSequence": ("00081198", "SQ"),
    "ReferencedSOPSequence": ("00081199", "SQ"), "PatientID": ("00100020", "LO"),
    "IssuerOfPatientID": ("00100021", "LO"), "StudyInstanceUID": ("0020000D", "UI"),
    "SeriesInstanceUID": ("0020000E", "UI"), "NumberOfStudyRelatedSeries": ("00201206", "IS"),
    "NumberOfStudyRelatedInstances": ("00201208", "IS"), "NumberOfSeriesRelatedInstances": ("00201209", "IS"),
    "PatientName": ("00100010", "PN"), "StudyDescription": ("00081030", "LO"), "AccessionNumber": ("00080050", "SH"),
    "StudyTime": ("00080030", "TM"), "SeriesNumber": ("00200011", "IS"), "SeriesDescription": ("0008103E", "LO"),
    "PerformedProcedureStepStartDate": ("00400244", "DA"), "PerformedProcedureStepStartTime": ("00400245", "TM"),
    "TimezoneOffsetFromUTC": ("00080201", "SH"), "InstanceAvailability": ("00080056", "CS"),
    "InstanceNumber": ("00200013", "IS"), "Rows": ("00280010", "US"), "Columns": ("00280011", "US"),
    "BitsAllocated": ("00280100", "US"), "NumberOfFrames": ("00280008", "IS"),
    "ReferringPhysicianName": ("00080090", "PN"), "PatientBirthDate": ("00100030", "DA"),
    "PatientSex": ("00100040", "CS"), "StudyID": ("00200010", "SH"),
}
_KEYWORD_OF_TAG = {tag: keyword for keyword, (tag, _) in _TAGS.items()}


#: DA and TM values must name a day and a time of day (PS3.18 F.2: a JSON value of its VR), and
#: no string value here has a control character (adapter.text.has_control_character). The ingest
#: keeps no others (adapter.mapping.dicom_dates, dicom_qido); an instance indexed before it
#: checked that may still hold one, left out here as the ingest leaves it out now.
_DAY_OR_TIME: dict[str, Callable[[str], bool]] = {"DA": is_date, "TM": is_time}


def _of_its_vr(vr: str, value: Any) -> bool:
    """``value`` may be answered under ``vr`` (:data:`_DAY_OR_TIME`); a PN comes as its groups."""
    if isinstance(value, dict):
        return not any(has_control_character(str(group)) for group in value.values())
    if not isinstance(value, str):
        return True  # a number
    return not has_control_character(value) and (vr not in _DAY_OR_TIME or _DAY_OR_TIME[vr](value))


def _dataset(**attributes: Any) -> dict[str, Any]:
    """A DICOM JSON object: keyword=value (None leaves the attribute out, a list is multi-valued,
    a list of dicts a sequence), ordered by tag."""
    out: dict[str, Any] = {}
    for keyword, value in attributes.items():
        if value is None:
            continue
        tag, vr = _TAGS[keyword]
        values = value if isinstance(value, list) else [value]
        out[tag] = {"vr": vr, "Value": values} if values else {"vr": vr}
    return dict(sorted(out.items()))


def _result(**attributes: Any) -> dict[str, Any]:
    """A QIDO-RS result (:func:`_dataset`) of the attributes whose values are of their VR
    (:data:`_DAY_OR_TIME`). Not a STOW-RS answer: that names a refused object's UIDs as it sent
    them."""
    return _dataset(**{keyword: value for keyword, value in attributes.items() if value is None or all(
        _of_its_vr(_TAGS[keyword][1], v) for v in (value if isinstance(value, list) else [value]))})


def _person_name(value: str | None) -> dict[str, str] | None:
    """A PN value in the DICOM JSON Model (PS3.18 F.2.2): its component groups by name."""
    if not value:
        return None
    groups = dict(zip(("Alphabetic", "Ideographic", "Phonetic"), value.split("="), strict=False))
    return {name: group for name, group in groups.items() if group} or None


def _json(body: Any, status: int = 200, *, break_glass: bool = False, overrode: tuple[str, ...] = ()) -> Response:
    return Response(content=json.dumps(body, separators=(",", ":")), status_code=status, media_type=DICOM_JSON,
                    headers=break_glass_headers(break_glass, overrode))


def _dicom_model(accept: str | None, *, single: bool = False) -> str | None:
    """The representation of an answer's DICOM data sets the client prefers (RFC 9110 12.5.1:
    highest quality first, its own order among equals): :data:`DICOM_JSON` (the default, PS3.18
    F.2) for it or a wildcard; :data:`MULTIPART_DICOM_XML` (PS3.19 A.1, one part per data set;
    required beside the JSON, PS3.18 Table 10.4.4-1) for exactly that; with ``single`` (an answer
    that is one data set, the STOW-RS response) :data:`DICOM_XML` too, one document. None when
    the client takes none of them: a bare application/dicom+xml is no answer of several data sets
    (PS3.18 10.4.4). A representation the most specific range matching it refuses (``q=0``,
    :func:`adapter.api.accept.quality`) is never chosen: ``application/dicom+json;q=0, */*``
    takes the wildcard's other representation, the Native DICOM Model."""

    def acceptable(representation: str) -> bool:
        return quality(accept, representation) > 0

    one_document = (DICOM_XML,) if single else ()
    by_range: dict[str, tuple[str, ...]] = {  # the representations a range takes, the default first
        "*/*": (DICOM_JSON, MULTIPART_DICOM_XML, *one_document), "application/*": (DICOM_JSON, *one_document),
        DICOM_JSON: (DICOM_JSON,), "application/json": (DICOM_JSON,)}
    for media, params in by_preference(media_ranges(accept)):
        wanted = by_range.get(media, ())
        if media in ("multipart/*", "multipart/related") and params.get("type", "").lower() == DICOM_XML:
            wanted = (MULTIPART_DICOM_XML,)
        if single and media == DICOM_XML:
            wanted = (DICOM_XML,)
        for representation in wanted:
            if acceptable(representation):
                return representation
    return None


def _model_refusal(service: str) -> str:
    return f"{service} here answers {DICOM_JSON} or {MULTIPART_DICOM_XML}"


def _datasets(datasets: list[dict[str, Any]], model: str, *, break_glass: bool = False,
              overrode: tuple[str, ...] = ()) -> Response:
    """DICOM data sets (DICOM JSON objects, made under the decision) in ``model``: the JSON array,
    or one Native DICOM Model part each. None is 200 with an empty list of results either way
    (PS3.18 2026a, CP-2473: not 204), in XML a body of the closing delimiter alone, which
    multipart parsers read as no part."""
    if model == DICOM_JSON:
        return _json(datasets, break_glass=break_glass, overrode=overrode)
    boundary = uuid.uuid4().hex
    content = b"".join(_body_part(boundary, DICOM_XML, native_dicom_model(ds)) for ds in datasets)
    content += f"--{boundary}--\r\n".encode("ascii")
    return Response(content=content, media_type=None, headers={
        "Content-Type": f"{MULTIPART_DICOM_XML}; boundary={boundary}", **break_glass_headers(break_glass, overrode)})


def _not_acceptable(message: str) -> Response:
    """406: content negotiation, not a domain failure; rendered as the API's OperationOutcome."""
    return fhir_response(operation_outcome("error", "not-supported", message,
                                           details=refusal_coding(RefusalCode.NOT_ACCEPTABLE)), 406)


def _study_url(request: Request, services: Services, study: str) -> str:
    return absolute(request, services, f"dicomweb/studies/{study}")


def _series_url(request: Request, services: Services, study: str, series: str) -> str:
    return absolute(request, services, f"dicomweb/studies/{study}/series/{series}")


def _instance_url(request: Request, services: Services, study: str, series: str, instance: str) -> str:
    return absolute(request, services, f"dicomweb/studies/{study}/series/{series}/instances/{instance}")


# -- STOW-RS ------------------------------------------------------------------------------------


@router.post("/studies", openapi_extra=_STOW_BODY, responses=_STOW)
async def stow_studies(request: Request, services: ServicesDep) -> Response:
    """Store instances of any studies (PS3.18 10.5)."""
    return await _stow(request, services, None)


@router.post("/studies/{study}", openapi_extra=_STOW_BODY, responses=_STOW)
async def stow_study(study: str, request: Request, services: ServicesDep) -> Response:
    """Store instances of one study: an instance of another study fails (0xA900)."""
    return await _stow(request, services, study)


def _trusted_sender(request: Request, services: Services) -> bool:
    """Whether the STOW-RS client is one ADAPTER_STOW_TRUSTED_SENDERS names: the client a proxy of
    ADAPTER_TRUSTED_PROXIES forwards for (adapter.api.forwarded; nobody else's X-Forwarded-For is
    believed), else the TCP peer. Fail closed: no address, or an empty setting, is no trust."""
    client = forwarded_for_of(request.scope) or (request.client.host if request.client else "")
    return is_in(client, services.settings.stow_trusted_sender_networks)


async def _stow(request: Request, services: Services, study: str | None) -> Response:
    # audited as the HTTP client's, under its request id and stated purpose (not a C-STORE's AE)
    sender = stow_sender(get_write_context(request, services, "create", dicom=DicomAudit.transferred()))
    limit = services.settings.max_upload_bytes
    total = limit * STOW_TOTAL_FACTOR
    peer = request.client.host if request.client else ""
    trusted = _trusted_sender(request, services)
    try:
        # negotiated before the body is read: a client that takes no answer STOW-RS gives stores nothing
        model = _dicom_model(request.headers.get("accept"), single=True)
        if model is None:
            raise NotAcceptable(f"STOW-RS here answers {DICOM_JSON}, {DICOM_XML} or {MULTIPART_DICOM_XML}")
        refuse_declared_over(request, total, f"the request is larger than {total} bytes")
        parsed = await parse_multipart_related(content_type(request), request.stream(),
                                               services.blobs.new_staging_path, max_part_bytes=limit,
                                               max_total_bytes=total, max_parts=STOW_MAX_PARTS)
        if not parsed.parts:
            raise InvalidResource("the request has no application/dicom part")
    except AdapterError as exc:
        # the request refused as a whole, before any part was looked at: one refused transfer
        # naming no instance (module docstring)
        await run_in_threadpool(services.dicom_ingest.record_refusal, calling_ae=STOW_SENDER, peer_address=peer,
                                sop_instance_uid=None, error=exc, sender=sender)
        raise
    outcomes: list[StowOutcome] = []
    try:
        for part in parsed.parts:
            if part.no_room is not None:  # the staging folder had no room for it: failed, the others go on
                outcomes.append(await run_in_threadpool(stow_not_staged, services.dicom_ingest, part.no_room,
                                                        peer_address=peer, sender=sender))
                continue
            if part.path is None:  # another media type in a type="application/dicom" request
                refusal = InvalidInput(f"a part of type {part.content_type[:60]}")
                await run_in_threadpool(services.dicom_ingest.record_refusal, calling_ae=STOW_SENDER,
                                        peer_address=peer, sop_instance_uid=None, error=refusal, sender=sender)
                outcomes.append(StowOutcome(None, None, None, None, failure_reason=CANNOT_UNDERSTAND,
                                            diagnostics=refusal.diagnostics))
                continue
            outcomes.append(await run_in_threadpool(stow_instance, services.dicom_ingest, part.path,
                                                    peer_address=peer, study_instance_uid=study, sender=sender,
                                                    trusted=trusted))
    finally:
        for path in parsed.paths():
            path.unlink(missing_ok=True)
    stored = [o for o in outcomes if o.stored]
    failed = [o for o in outcomes if not o.stored]
    # type 2 (PS3.18 Table I.1-1): the one study of the instances stored (the URL's, when it names
    # one), else present and empty: never a study nothing was stored in
    studies = {o.study_instance_uid for o in stored if o.study_instance_uid}
    one_study = next(iter(studies)) if len(studies) == 1 else None
    body = _dataset(
        RetrieveURL=_study_url(request, services, one_study) if one_study else [],
        FailedSOPSequence=[_dataset(ReferencedSOPClassUID=o.sop_class_uid or [],
                                    ReferencedSOPInstanceUID=o.sop_instance_uid or [],
                                    FailureReason=o.failure_reason) for o in failed] or None,
        ReferencedSOPSequence=[_dataset(
            ReferencedSOPClassUID=o.sop_class_uid, ReferencedSOPInstanceUID=o.sop_instance_uid,
            RetrieveURL=_instance_url(request, services, o.study_instance_uid or "", o.series_instance_uid or "",
                                      o.sop_instance_uid or "")) for o in stored] or None)
    # 202 when some failed, or were stored with a warning (PS3.18 Table 10.5.3-1): kept consent
    # pending (safety review 4); none is stored with a WarningReason (StowOutcome)
    status = 200 if not failed and not any(o.warned for o in stored) else 202 if stored else 409
    response: Response | None = None
    try:
        if model == DICOM_XML:
            response = Response(content=native_dicom_model(body), status_code=status, media_type=DICOM_XML)
        elif model == MULTIPART_DICOM_XML:
            response = _datasets([body], model)
            response.status_code = status
    except NotAcceptable:
        pass  # the instances are stored: the default representation says what became of them
    if response is None:
        response = _json(body, status)
    service = absolute(request, services, "dicomweb")
    for text in _stow_warnings(outcomes):
        response.headers.append("Warning", f"299 {service}: {text}")
    return response


#: The Warning text's longest instance reason (a header line is read by people and logged by proxies).
_WARNING_TEXT_MAX = 300


def _stow_warnings(outcomes: list[StowOutcome]) -> list[str]:
    """What the STOW-RS answer tells in words, one HTTP Warning per instance (PS3.18 8.3.4.2's
    form, ``299 <service>: <text>``, as QIDO-RS's warnings): why an instance failed with 0x0124
    Not Authorised (the consent rule it did not meet: safety review 7; FailureReason carries the
    code only), and that an instance stored is consent pending (safety review 4: stored, yet no
    care reader sees it until a Consent documents care; PS3.18 Table I.2-1 has no WarningReason
    for that, so the item has none and this says it). Each names its SOP Instance UID (the
    sender's own) and is printable ASCII: the diagnostics may quote what was sent."""
    said: list[str] = []
    for o in outcomes:
        if o.failure_reason == NOT_AUTHORISED and o.diagnostics:
            what = f"FailureReason 0x{NOT_AUTHORISED:04X} (not authorised): {o.diagnostics}"
        elif o.stored and o.consent_pending and o.diagnostics:
            what = f"stored {o.diagnostics}"
        else:
            continue
        instance = f"instance {o.sop_instance_uid}: " if o.sop_instance_uid else ""
        text = "".join(c if " " <= c <= "~" else "?" for c in instance + what)
        said.append(text[:_WARNING_TEXT_MAX])
    return said


# -- WADO-RS ------------------------------------------------------------------------------------


#: ``transfer-syntax=*``: any, as the object is stored.
ANY_SYNTAX = "*"
#: A range naming no transfer-syntax: the default, Explicit VR Little Endian (PS3.18 8.7.8.2,
#: 8.7.3.4), or the object as stored when it cannot be converted (8.7.3.4 permits a lossy
#: object as received).
DEFAULT_SYNTAX = ""


def _dicom_accept(accept: str | None) -> tuple[frozenset[str], str | None]:
    """The transfer syntaxes the client takes ``multipart/related; type="application/dicom"``
    (the only representation served) in, from every such range of its Accept header (PS3.18
    8.7.3.5: ``transfer-syntax`` names one; :data:`ANY_SYNTAX` for ``*``, :data:`DEFAULT_SYNTAX`
    for none), and the reason for a 406 when it takes no such range."""
    syntaxes = frozenset(params.get("transfer-syntax", DEFAULT_SYNTAX) for media, params in media_ranges(accept)
                         if media in ("*/*", "multipart/*", "multipart/related")
                         and params.get("type", "application/dicom").lower() == "application/dicom")
    if not syntaxes:
        return syntaxes, 'WADO-RS here serves multipart/related; type="application/dicom" only'
    return syntaxes, None


def chosen_syntax(syntaxes: Iterable[str], stored: str) -> str | None:
    """The transfer syntax an object stored in ``stored`` is sent in, of those the client takes
    (PS3.18 8.7.8.2): as stored for ``*`` or ``stored`` itself; else Explicit VR Little Endian,
    named or the default, when the object can be converted to it (a JPEG Baseline object
    decompressed, adapter.services.transcode); the default alone, for one that cannot be, as
    stored (8.7.3.4). None: none of them (406)."""
    wanted = set(syntaxes)
    if ANY_SYNTAX in wanted or stored in wanted:
        return stored
    if wanted & {EXPLICIT_VR_LITTLE_ENDIAN, DEFAULT_SYNTAX} and can_be_explicit(stored):
        return EXPLICIT_VR_LITTLE_ENDIAN
    return stored if DEFAULT_SYNTAX in wanted else None


def _syntax_refusal(syntaxes: frozenset[str], stored: str) -> str:
    """The reason for a 406: an object stored in ``stored`` is sent in none of ``syntaxes``."""
    offered = sorted({stored, *([EXPLICIT_VR_LITTLE_ENDIAN] if can_be_explicit(stored) else [])})
    return (f"this object is served in {' or '.join(offered)} (or transfer-syntax=*), "
            f"not {', '.join(sorted(syntaxes))[:64]}")


def in_syntax(content: DicomContent, syntax: str, *, default: bool = False) -> DicomContent:
    """``content`` (released under its decision) in ``syntax`` (:func:`chosen_syntax`): as it is,
    or in Explicit VR Little Endian. ``default``: the client named no syntax, so an object whose
    frames cannot be decoded goes as stored (PS3.18 8.7.3.4) rather than not at all."""
    if syntax == content.transfer_syntax:
        return content
    try:
        return in_explicit_vr_little_endian(content)
    except (UnsupportedPixelData, UndecodableImage, ImageTooLarge) as exc:
        if default:
            return content
        raise NotAcceptable(f"this object cannot be sent in {syntax}: {exc.diagnostics}"[:200]) from exc


def _in_chosen(syntaxes: frozenset[str], content: DicomContent) -> DicomContent:
    """``content`` in the syntax chosen for it (406 when there is none)."""
    syntax = chosen_syntax(syntaxes, content.transfer_syntax)
    if syntax is None:
        raise NotAcceptable(_syntax_refusal(syntaxes, content.transfer_syntax))
    return in_syntax(content, syntax, default=syntax == EXPLICIT_VR_LITTLE_ENDIAN
                     and EXPLICIT_VR_LITTLE_ENDIAN not in syntaxes)


def _body_part(boundary: str, content_type: str, data: bytes, *, last: bool = False) -> bytes:
    """One part of a multipart/related body (RFC 2387), its delimiter first; ``last``: the closing
    delimiter after it. One copy of ``data`` (a DICOM object may be hundreds of MB)."""
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n"
    return b"".join((head.encode("ascii"), data, b"\r\n", f"--{boundary}--\r\n".encode("ascii") if last else b""))


def _part(boundary: str, content: DicomContent, *, last: bool = False) -> bytes:
    """One object's part of a multipart/related body; ``last``: the closing delimiter after it."""
    return _body_part(boundary, f"application/dicom; transfer-syntax={content.transfer_syntax}", content.data,
                      last=last)


def _multipart_headers(boundary: str, decisions: Sequence[Decision]) -> dict[str, str]:
    """A WADO-RS retrieve's headers: X-Break-Glass when break-glass released any of
    ``decisions``' objects, saying what it overrode (adapter.services.access.overrode_for_care)."""
    return {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            **break_glass_headers(any(d.break_glass for d in decisions), overrode_for_care(decisions))}


@router.get("/studies/{study}/series/{series}/instances/{instance}", responses=_RETRIEVE)
async def retrieve_instance(study: str, series: str, instance: str, reader: ReaderDep,
                            accept: Annotated[str | None, Header()] = None) -> Response:
    syntaxes, refusal = _dicom_accept(accept)
    if refusal:
        return _not_acceptable(refusal)
    answered: list[Response] = []

    def answerable(content: DicomContent) -> None:  # after the decision, before the audit (406: not sent)
        # the body is made under the object's turn (adapter.services.access), the object dropped then
        sent = _in_chosen(syntaxes, content)
        boundary = uuid.uuid4().hex
        answered.append(Response(content=_part(boundary, sent, last=True), media_type=None,
                                 headers=_multipart_headers(boundary, [content.decision])))

    await run_in_threadpool(partial(reader.read_dicom_instance, instance, study=study, series=series,
                                    answerable=answerable))
    return answered[-1]


@router.get("/studies/{study}/series/{series}", responses=_RETRIEVE)
async def retrieve_series(study: str, series: str, reader: ReaderDep,
                          accept: Annotated[str | None, Header()] = None) -> Response:
    return await _retrieve(reader, accept, study, series)


@router.get("/studies/{study}", responses=_RETRIEVE)
async def retrieve_study(study: str, reader: ReaderDep, accept: Annotated[str | None, Header()] = None) -> Response:
    return await _retrieve(reader, accept, study, None)


async def _retrieve(reader: Any, accept: str | None, study: str, series: str | None) -> Response:
    syntaxes, refusal = _dicom_accept(accept)
    if refusal:
        return _not_acceptable(refusal)
    boundary = uuid.uuid4().hex
    # each object's part made under its turn (adapter.services.access), the object dropped then
    made: list[bytes] = []

    def answerable(retrievals: list[DicomRetrieval]) -> None:  # before the audit (406: not sent)
        # the first object is made before the response starts, so its failure is a proper error
        made.append(retrievals[0].answer(lambda content: _part(boundary, _in_chosen(syntaxes, content))))
        if ANY_SYNTAX not in syntaxes:
            # named syntaxes: every object's is known before the answer starts (each is made again
            # as it streams), so one that cannot be sent in any is a 406, not an answer cut short
            later = [r.answer(lambda content: content.transfer_syntax) for r in retrievals[1:]]
            refused = next((s for s in later if chosen_syntax(syntaxes, s) is None), None)
            if refused is not None:
                raise NotAcceptable(_syntax_refusal(syntaxes, refused))

    retrievals: list[DicomRetrieval] = await run_in_threadpool(partial(reader.read_dicom, study, series,
                                                                       answerable=answerable))

    def body() -> Iterator[bytes]:  # runs in the threadpool (StreamingResponse iterates it there)
        yield made.pop()
        for retrieval in retrievals[1:]:
            yield retrieval.answer(lambda content: _part(boundary, _in_chosen(syntaxes, content)))
        yield f"--{boundary}--\r\n".encode("ascii")

    return StreamingResponse(body(), headers=_multipart_headers(boundary, [r.decision for r in retrievals]))


# -- QIDO-RS ------------------------------------------------------------------------------------

class _Search(NamedTuple):
    """A QIDO-RS request read (:func:`_query`)."""

    query: DicomQuery
    limit: int
    offset: int
    capped: bool   # the client's limit (or none) was more than QIDO_MAX_LIMIT
    fuzzy: bool    # fuzzymatching=true: not performed, said in a Warning
    include: frozenset[str] | None = frozenset()  # includefield's keywords; None: all (_includefield)


def _includefield(values: list[str]) -> frozenset[str] | None:
    """The attributes ``includefield`` names (PS3.18 8.3.4.3): keywords (a tag is read as its
    keyword), or None for ``all``. The parameter takes attributes (8.3.4.1: a keyword or a tag),
    so a name that is neither is refused (400) rather than answered as though it had not been
    asked for, and so is ``all`` beside another includefield, which the standard forbids. An
    attribute the adapter does not keep is a return key with no value (PS3.4 C.2.2.2.3): taken,
    not returned."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if "all" in names:
        if len(names) > 1:
            raise InvalidQuery("includefield=all may not be given with other includefield values",
                               expression="includefield")
        return None
    for name in names:
        if not all(attribute_tag(part) is not None for part in name.split(".")):
            raise InvalidQuery(f"includefield names no attribute: {name[:40]}", expression="includefield")
    return frozenset(_KEYWORD_OF_TAG.get(name.upper(), name) for name in names)


def _included(available: dict[str, Any], include: frozenset[str] | None) -> dict[str, Any]:
    """Of the attributes ``available`` beyond a level's defaults, those ``include`` asks for."""
    return {k: v for k, v in available.items() if include is None or k in include}


#: RequestAttributesSequence > ScheduledProcedureStepID and > RequestedProcedureID, as tag paths:
#: series keys an origin server supports (PS3.18 Table 10.6.1-5; instances take series keys
#: too). A photo has no request, so the adapter holds neither: a value matches nothing (single
#: value matching against an absent value, PS3.4 C.2.2.2.1), universal matching everything.
_REQUEST_KEYS = frozenset({(0x00400275, 0x00400009), (0x00400275, 0x00401001)})


def _query(level: str, params: list[tuple[str, str]], **fixed: str) -> _Search:
    """The match keys, limit and offset of a QIDO-RS request (module docstring). An attribute
    with an empty value that is not a match key here is a return key (universal matching, PS3.4
    C.2.2.2.3), which matches everything: it is let through (not returned); with a value it is
    refused, never read as matching everything."""
    keys: dict[str, str] = {}
    limit: int | None = None
    offset = 0
    fuzzy = False
    absent_matched = False  # a value given for a key of _REQUEST_KEYS: nothing matches
    included: list[str] = []
    if any("\x00" in text for pair in (*params, *fixed.items()) for text in pair):
        raise InvalidQuery(NUL_IN_SEARCH)
    for name, value in params:
        lowered = name.lower()
        if lowered == "includefield":
            included.append(value)
            continue
        if lowered == "fuzzymatching":
            fuzzy = value.strip().lower() == "true"
            continue
        if lowered in ("limit", "offset"):
            # the length first: int() refuses more than 4,300 digits (a 500, not the client's 400)
            if not is_digits(value) or len(value) > 9:
                raise InvalidQuery(f"{lowered} takes a non-negative integer of at most 9 digits", expression=lowered)
            if lowered == "limit":
                limit = int(value)
            else:
                offset = int(value)
            continue
        if level != STUDY and tuple(attribute_tag(part) for part in name.split(".")) in _REQUEST_KEYS:
            absent_matched = absent_matched or not is_universal(value)
            continue
        keyword = _KEYWORD_OF_TAG.get(name.upper(), name)
        if level == STUDY and keyword == "Modality":
            keyword = "ModalitiesInStudy"
        if keyword not in LEVEL_KEYS[level]:
            if not value.strip() and all(attribute_tag(part) is not None for part in name.split(".")):
                continue  # a return key (module docstring): universal matching matches everything
            raise NotSupported(f"matching on {name[:40]} is not supported at {level} level", expression=name[:40])
        if keyword in keys:
            raise InvalidQuery(f"{keyword} is given more than once", expression=keyword)
        if keyword in fixed and not is_universal(value) and value.strip() != fixed[keyword]:
            raise InvalidQuery(f"{keyword} differs from the one in the path", expression=keyword)
        if keyword in ("PatientID", "IssuerOfPatientID") and identifier_too_long(value.strip()):
            # as a FHIR search naming an identifier (adapter.services.search_params): none is that long
            raise InvalidQuery(f"{keyword} is longer than a patient identifier may be ({IDENTIFIER_MAX_BYTES} bytes "
                               "in UTF-8)", expression=keyword)
        if keyword in ("PatientID", "IssuerOfPatientID") and "\\" in value:
            # LO of VM 1 (PS3.6), where \ separates values (PS3.5 6.4): ``A\B`` is two PatientIDs,
            # which single value matching (PS3.4 C.2.2.2.1) does not take as either, nor as a FHIR
            # identifier holding a \, which no PatientID can be (a received object with two is
            # refused): never read so as to match another patient
            raise InvalidQuery(f"{keyword} takes one value: a \\ separates values of a DICOM attribute, and "
                               f"{keyword} has one (VM 1)", expression=keyword)
        if not is_universal(value):  # empty or only "*" (universal matching, PS3.4 C.2.2.2.4) matches everything
            keys[keyword] = value.strip()
    keys.update(fixed)

    def value_list(keyword: str) -> tuple[str, ...]:  # UID list matching; a list of modalities alike
        raw = keys.get(keyword, "")
        values = tuple(u.strip() for u in raw.replace("\\", ",").split(",") if u.strip())
        return () if any(is_universal(v) for v in values) else values  # one of them "*": any value

    query = DicomQuery(
        study_uids=value_list("StudyInstanceUID"), series_uids=value_list("SeriesInstanceUID"),
        sop_instance_uids=value_list("SOPInstanceUID"), sop_class_uids=value_list("SOPClassUID"),
        patient_id=keys.get("PatientID"), issuer_of_patient_id=keys.get("IssuerOfPatientID"),
        patient_name=keys.get("PatientName"), modalities=value_list("Modality") or value_list("ModalitiesInStudy"),
        study_date=DateRange.parse(keys["StudyDate"]) if "StudyDate" in keys else None,
        accession_number=keys.get("AccessionNumber"), study_description=keys.get("StudyDescription"),
        series_number=integer_key("SeriesNumber", keys["SeriesNumber"]) if "SeriesNumber" in keys else None,
        instance_number=integer_key("InstanceNumber", keys["InstanceNumber"]) if "InstanceNumber" in keys else None,
        performed_procedure_step_start_date=DateRange.parse(keys["PerformedProcedureStepStartDate"],
                                                            "PerformedProcedureStepStartDate")
        if "PerformedProcedureStepStartDate" in keys else None,
        performed_procedure_step_start_time=TimeRange.parse(keys["PerformedProcedureStepStartTime"],
                                                            "PerformedProcedureStepStartTime")
        if "PerformedProcedureStepStartTime" in keys else None,
        study_time=TimeRange.parse(keys["StudyTime"], "StudyTime") if "StudyTime" in keys else None,
        referring_physician_name=keys.get("ReferringPhysicianName"), study_id=keys.get("StudyID"),
        matches_nothing=absent_matched)
    capped = limit is None or limit > QIDO_MAX_LIMIT
    return _Search(query, QIDO_MAX_LIMIT if capped or limit is None else limit, offset, capped, fuzzy,
                   _includefield(included))


def _study_shown(members: list[DicomEntry]) -> dict[str, Any]:
    """The attributes of a study (PS3.18 Table 10.6.3-3) that ``members``, instances of it,
    show in the purpose's view (keywords of :func:`_dataset`): the patient (name, birth date,
    sex), the date, time, offset, accession number, StudyID, referring physician and description,
    each of the first instance that has it; not the counts or modalities, which need every
    instance. The table's Type 2 attributes are there empty (no Value, F.2.5) when the view shows
    none (:func:`_type_2`)."""
    first, shown = members[0], partial(first_shown, members)
    return {
        "ReferringPhysicianName": _type_2(_person_name(shown("referring_physician_name"))),
        "PatientBirthDate": _type_2(shown("patient_birth_date")), "PatientSex": _type_2(shown("patient_sex")),
        "StudyID": _type_2(shown("study_id")), "TimezoneOffsetFromUTC": shown("timezone_offset_from_utc"),
        "PatientName": _type_2(_person_name(next((m.patient_name for m in members if m.patient_name), None))),
        "StudyDescription": next((m.study_description for m in members if m.study_description), None),
        "AccessionNumber": _type_2(next((m.accession_number for m in members if m.accession_number), None)),
        "StudyTime": next((m.study_time for m in members if m.study_time), None),
        "StudyDate": next((m.study_date for m in members if m.study_date), None),
        "PatientID": first.patient_id, "IssuerOfPatientID": first.issuer_of_patient_id,
        "StudyInstanceUID": first.study_instance_uid}


def _type_2(value: Any) -> Any:
    """A Type 2 attribute of a study result (PS3.18 Table 10.6.3-3: PatientName, PatientBirthDate,
    PatientSex, AccessionNumber, ReferringPhysicianName, StudyID): its value, else present and
    empty (an empty list: :func:`_dataset` writes it without Value, F.2.5). Empty too where the
    view withholds it (TRAIN's and HRESCH's copies empty them, PS3.15 Table E.1-1 Z)."""
    return [] if value is None else value


def _studies(request: Request, services: Services, entries: list[DicomEntry], *,
             relational: bool = False, include: frozenset[str] | None = frozenset()) -> list[dict[str, Any]]:
    """Study results: every attribute the adapter keeps of a study is returned already, so
    ``include`` adds none."""
    groups: dict[str, list[DicomEntry]] = {}
    for e in entries:
        groups.setdefault(e.study_instance_uid, []).append(e)
    return [_result(
        **_study_shown(members), ModalitiesInStudy=sorted({m.modality for m in members if m.modality}),
        RetrieveURL=_study_url(request, services, study), InstanceAvailability=ONLINE,
        NumberOfStudyRelatedSeries=len({m.series_instance_uid for m in members}),
        NumberOfStudyRelatedInstances=len(members)) for study, members in groups.items()]


def _series(request: Request, services: Services, entries: list[DicomEntry], *,
            relational: bool = False, include: frozenset[str] | None = frozenset()) -> list[dict[str, Any]]:
    """Series results; of All Series (``relational``) with their study's attributes too (PS3.18
    10.6.3.3.2), and of a study's series those ``include`` asks for (includefield)."""
    groups: dict[tuple[str, str], list[DicomEntry]] = {}
    for e in entries:
        groups.setdefault((e.study_instance_uid, e.series_instance_uid), []).append(e)
    return [_result(**{
        **(_study_shown(members) if relational else _included(_study_shown(members), include)),
        **series_shown(members),
        "Modality": members[0].modality or None, "RetrieveURL": _series_url(request, services, study, series),
        "StudyInstanceUID": study, "SeriesInstanceUID": series, "NumberOfSeriesRelatedInstances": len(members)})
        for (study, series), members in groups.items()]


def _instances(request: Request, services: Services, entries: list[DicomEntry], *,
               relational: bool = False, include: frozenset[str] | None = frozenset()) -> list[dict[str, Any]]:
    """Instance results; of All Instances (``relational``) with their study's attributes too
    (PS3.18 10.6.3.3.3), and of a study's or series' instances those ``include`` asks for
    (includefield); each with its series' Modality and attributes (series_shown)."""
    return [_result(**{
        **(_study_shown([e]) if relational else _included(_study_shown([e]), include)),
        **series_shown([e]), **instance_shown(e),
        "SOPClassUID": e.sop_class_uid, "SOPInstanceUID": e.sop_instance_uid, "Modality": e.modality or None,
        "RetrieveURL": _instance_url(request, services, e.study_instance_uid, e.series_instance_uid,
                                     e.sop_instance_uid),
        "StudyInstanceUID": e.study_instance_uid, "SeriesInstanceUID": e.series_instance_uid}) for e in entries]


async def _search(request: Request, reader: Any, services: Services, accept: str | None, level: str,
                  **fixed: str) -> Response:
    model = _dicom_model(accept)
    if model is None:
        return _not_acceptable(_model_refusal("QIDO-RS"))
    search = _query(level, list(request.query_params.multi_items()), **fixed)
    found = await run_in_threadpool(partial(reader.search_dicom, level, search.query, offset=search.offset,
                                            limit=search.limit, tell_more=search.capped))
    render = {STUDY: _studies, SERIES: _series, INSTANCE: _instances}[level]
    # All Series, All Instances: searches across studies (PS3.18 Table 10.6.1-1, "relational")
    relational = "StudyInstanceUID" not in fixed
    response = _datasets(render(request, services, found.entries, relational=relational, include=search.include),
                         model, break_glass=found.break_glass, overrode=found.overrode)
    # to care, why matching instances were withheld (clinical-safety review 6; none for another purpose)
    warnings = ([_FUZZY_NOT_SUPPORTED] if search.fuzzy else []) + ([_MORE_RESULTS] if found.more else []) \
        + list(found.withheld)
    if warnings:
        # PS3.18 8.3.4.2 and 8.3.4.4: "299 <service>: <text>", the service being the base URI
        service = absolute(request, services, "dicomweb")
        for text in warnings:
            response.headers.append("Warning", f"299 {service}: {text}")
    return response


_FUZZY_NOT_SUPPORTED = "The fuzzymatching parameter is not supported. Only literal matching has been performed."
_MORE_RESULTS = ("The number of results exceeded the maximum supported by the server. "
                 "Additional results can be requested.")


@router.get("/studies", responses=_QIDO)
async def search_studies(request: Request, reader: ReaderDep, services: ServicesDep,
                         accept: Annotated[str | None, Header()] = None) -> Response:
    return await _search(request, reader, services, accept, STUDY)


@router.get("/series", responses=_QIDO)
async def search_all_series(request: Request, reader: ReaderDep, services: ServicesDep,
                            accept: Annotated[str | None, Header()] = None) -> Response:
    return await _search(request, reader, services, accept, SERIES)


@router.get("/studies/{study}/series", responses=_QIDO)
async def search_series(study: str, request: Request, reader: ReaderDep, services: ServicesDep,
                        accept: Annotated[str | None, Header()] = None) -> Response:
    return await _search(request, reader, services, accept, SERIES, StudyInstanceUID=study)


@router.get("/instances", responses=_QIDO)
async def search_all_instances(request: Request, reader: ReaderDep, services: ServicesDep,
                               accept: Annotated[str | None, Header()] = None) -> Response:
    return await _search(request, reader, services, accept, INSTANCE)


@router.get("/studies/{study}/instances", responses=_QIDO)
async def search_study_instances(study: str, request: Request, reader: ReaderDep, services: ServicesDep,
                                 accept: Annotated[str | None, Header()] = None) -> Response:
    return await _search(request, reader, services, accept, INSTANCE, StudyInstanceUID=study)


@router.get("/studies/{study}/series/{series}/instances", responses=_QIDO)
async def search_instances(study: str, series: str, request: Request, reader: ReaderDep, services: ServicesDep,
                           accept: Annotated[str | None, Header()] = None) -> Response:
    return await _search(request, reader, services, accept, INSTANCE, StudyInstanceUID=study,
                         SeriesInstanceUID=series)
