"""``POST /photos``: a capture app or script posts one photo with its metadata."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from adapter.api.deps import get_services, get_write_context
from adapter.api.idempotency import idempotency_key as checked_key
from adapter.api.json_input import load_json
from adapter.api.media_type import content_type
from adapter.api.multipart import (
    MEMORY_LIMIT,
    SMALL_PART_LIMIT,
    UPLOAD_OVERHEAD,
    ParsedUpload,
    parse_multipart,
)
from adapter.api.openapi import BODY, JSON, NEW_IMAGES, PHOTO_UPLOAD, WRITE, answers, ok, refusals
from adapter.api.request_limits import refuse_declared_over
from adapter.api.urls import absolute
from adapter.errors import AdapterError, InvalidInput, RequiredElementMissing, StorageError
from adapter.imaging.sniff import check_declared_upload
from adapter.model.photo import Identifier, PatientRef, PhotoMetadata
from adapter.text import is_digits

router = APIRouter()

#: Photos one process ingests at once (in worker threads); more requests wait their turn with
#: their bytes received. Each ingest spends much of its time waiting on the disk (the photo's
#: fsync, the folder's, the database commit's), so more than one per core overlap those waits:
#: on a host whose fsync of 3 MB took ~6.5 ms, 4 threads took 7-21% more photos/s than 2 in
#: three alternating pairs (benchmarks/ingest.py, 39-43 against 44-48), and 6 no more than 4,
#: at ~2 ms more CPU per photo (GIL hand-offs; without any limit, 8 concurrent uploads cost ~4 ms
#: more than 2). The limit also bounds the memory of photos being worked on (peak RSS ~160 MB
#: either way).
INGEST_THREADS = 4


def ingest_limiter(request: Request) -> anyio.CapacityLimiter:
    """The turns of the process's photo ingests: ``POST /photos`` and transaction Bundles alike
    (a Bundle's photo is decoded and proved as an upload's: 16 Bundles at once reached 2.6 GB
    when they took none, security review 3)."""
    state = request.app.state
    limiter: anyio.CapacityLimiter | None = getattr(state, "photo_ingest_limiter", None)
    if limiter is None:
        limiter = state.photo_ingest_limiter = anyio.CapacityLimiter(INGEST_THREADS)
    return limiter


def _metadata(raw: bytes | bytearray | None, named: list[Identifier] | None = None) -> PhotoMetadata:
    """The ``metadata`` part, validated. ``named``: where the patient it names is put when its
    ``patient`` element is valid though another is not, for the audit of the refusal (docs/
    audit-trail.md: naming the patient once the request was read far enough to know it)."""
    if raw is None:
        raise RequiredElementMissing("the 'metadata' part (JSON) is required", expression="metadata")
    # consent.form: the scan of a consent form in base64, bounded by the part (METADATA_PART_LIMIT)
    data = load_json(raw, what="the 'metadata' part", expression="metadata", bulk=("form",))
    try:
        return PhotoMetadata.model_validate(data)
    except ValidationError as exc:
        if named is not None:
            named.extend(_patient_named(data))
        errs = exc.errors()
        where = [".".join(str(p) for p in err["loc"]) for err in errs[:10]]
        text = "; ".join(f"{w or 'metadata'}: {err['msg']}" for w, err in zip(where, errs[:10], strict=False))
        raise InvalidInput(f"invalid metadata: {text}", expression=where) from exc


def _patient_named(data: object) -> list[Identifier]:
    """The patient metadata that failed validation names, if its ``patient`` element is valid."""
    if not isinstance(data, dict):
        return []
    try:
        return [PatientRef.model_validate(data.get("patient")).identifier]
    except ValidationError:
        return []


def _file_part(parsed: ParsedUpload) -> bytes | Path:
    """The ``file`` part's bytes or file, when it is there and holds bytes (review mobile finding 8 and 9: a photo sent as
    ``photo`` is named; iOS gives 0 bytes for a photo not yet downloaded from iCloud)."""
    upload = parsed.upload
    if upload is None:
        named = [f"'{name}'" if name else "one without a name" for name in parsed.ignored]
        besides = (f": this upload has the part{'s' if len(named) > 1 else ''} {', '.join(named)}, which this "
                   "endpoint does not read (it reads 'file' and 'metadata'); send the photo in 'file'") if named else ""
        raise RequiredElementMissing(f"the 'file' part (the photo) is required{besides}", expression="file")
    if parsed.file_size == 0:
        raise InvalidInput("the file part is empty (0 bytes): send the photo's bytes (a photo still in the cloud, "
                           "such as iCloud's, must be downloaded to the device first)", expression="file")
    return upload


#: The receipt: what was stored (references, digests, what metadata was removed, the DICOM UIDs).
_RECEIPT = ok(201, "the receipt (a retry: the original one, with Idempotent-Replayed: true)",
              {JSON: {"type": "object", "required": ["record", "binary", "safeToDeleteFromDevice"]}},
              headers={"Location": "the record's URL", "Idempotent-Replayed": "true for a retry's original receipt"})


@router.post("/photos", status_code=201, openapi_extra=PHOTO_UPLOAD,
             responses=answers(_RECEIPT, refusals(*BODY, *WRITE, *NEW_IMAGES)))
async def post_photo(request: Request, idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Store a photo: multipart/form-data with ``file`` (image/jpeg or image/png, or
    application/octet-stream or no type: its bytes say which; a declared type they contradict is
    415) and ``metadata`` (JSON). 201 with a receipt; a retry answers with the original receipt."""
    # Not as Depends(): FastAPI runs a plain-function dependency in the thread pool, two
    # round trips to a worker thread per request before any work is done.
    services = get_services(request)
    ctx = get_write_context(request, services, "create")
    try:
        key = checked_key(idempotency_key)  # before a byte of the body is read
    except AdapterError as exc:
        await anyio.to_thread.run_sync(services.ingest.audit_refusal, ctx, exc, None)
        raise
    limit = services.settings.max_upload_bytes
    refuse_declared_over(request, limit + UPLOAD_OVERHEAD, f"the upload is larger than {limit + UPLOAD_OVERHEAD} bytes "
                         f"(a photo of at most {limit} and its metadata)")
    # A photo of up to MEMORY_LIMIT bytes stays in memory from the socket to the imaging code
    # while the process-wide MEMORY_BUDGET allows; otherwise it streams to this staging file
    # (adapter.api.multipart), so memory stays bounded whatever the number of clients.
    spill = services.blobs.new_staging_path()
    try:
        # A photo too large to be kept in memory is staged twice (as received, then stripped):
        # one that cannot be so above the reserve (ADAPTER_MIN_FREE_MB) is refused before a byte
        # of it is written, as the commit would refuse it; staged, it ran the disk out half-way
        # (503, "retry", for ever) where the answer is 507 (ops review 4). A smaller one is read
        # first: its stripped copy alone is staged, the commit checks the reserve and names the
        # patient in its audit event, and a retry of a stored one still gets its receipt.
        declared = request.headers.get("content-length")
        if declared and is_digits(declared) and len(declared) <= 18 and int(declared) > MEMORY_LIMIT:
            services.blobs.ensure_room(2 * int(declared))
        parsed = await parse_multipart(content_type(request), request.stream(), spill, limit)
    except StorageError as exc:  # no room (507), or a failing disk (503): a create that failed, audited
        await anyio.to_thread.run_sync(services.ingest.audit_refusal, ctx, exc, None)
        raise
    named: list[Identifier] = []  # the patient metadata refused names, when its patient element is valid
    try:
        try:
            upload = _file_part(parsed)
            check_declared_upload(parsed.head(), parsed.file_content_type)
            # taken out: the part's bytes (up to 16 MiB with a consent form's scan) are let go once
            # parsed, before the ingest decodes the scan (verify review 2, finding 4)
            raw = parsed.fields.pop("metadata", None)
            if raw is not None and len(raw) > SMALL_PART_LIMIT:  # a consent form's scan: parsed off the event loop
                meta = await anyio.to_thread.run_sync(_metadata, raw, named)
            else:
                meta = _metadata(raw, named)
            del raw
        except AdapterError as exc:  # refused before the ingest reads it: audited as its refusals are
            await anyio.to_thread.run_sync(services.ingest.audit_refusal, ctx, exc, named[0] if named else None)
            raise
        result = await anyio.to_thread.run_sync(
            partial(services.ingest.ingest_photo, upload, meta, idempotency_key=key, ctx=ctx,
                    received_sha256=parsed.file_sha256),
            limiter=ingest_limiter(request))
    finally:
        parsed.release()
        if parsed.file_path is not None:
            parsed.file_path.unlink(missing_ok=True)
    headers = {"Location": absolute(request, services, f"fhir/{result.location}")}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(result.receipt, status_code=201, headers=headers)
