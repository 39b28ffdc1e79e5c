"""``POST /photos``: a capture app or script posts one photo with its metadata."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from adapter.api.deps import ServicesDep, WriteContextDep
from adapter.api.multipart import parse_multipart
from adapter.api.urls import absolute
from adapter.errors import InvalidInput, PayloadTooLarge, RequiredElementMissing
from adapter.model.photo import PhotoMetadata

router = APIRouter()


def _metadata(raw: bytes | None) -> PhotoMetadata:
    if raw is None:
        raise RequiredElementMissing("the 'metadata' part (JSON) is required", expression="metadata")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("the 'metadata' part is not valid JSON", expression="metadata") from exc
    try:
        return PhotoMetadata.model_validate(data)
    except ValidationError as exc:
        errs = exc.errors()
        where = [".".join(str(p) for p in err["loc"]) for err in errs[:10]]
        text = "; ".join(f"{w or 'metadata'}: {err['msg']}" for w, err in zip(where, errs[:10], strict=False))
        raise InvalidInput(f"invalid metadata: {text}", expression=where) from exc


@router.post("/photos", status_code=201)
async def post_photo(request: Request, services: ServicesDep, ctx: WriteContextDep,
                     idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
    """Store a photo: multipart/form-data with ``file`` (image/jpeg or image/png) and
    ``metadata`` (JSON). 201 with a receipt; a retry answers with the original receipt."""
    limit = services.settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 1024 * 1024:
        raise PayloadTooLarge(f"the upload is larger than {limit} bytes")
    upload = services.blobs.new_staging_path()
    try:
        parsed = await parse_multipart(request.headers.get("content-type"), request.stream(), upload, limit)
        if parsed.file_path is None:
            raise RequiredElementMissing("the 'file' part (the photo) is required", expression="file")
        meta = _metadata(parsed.fields.get("metadata"))
        key = idempotency_key[:200] if idempotency_key else None
        result = await run_in_threadpool(services.ingest.ingest_photo, upload, meta, idempotency_key=key, ctx=ctx)
    finally:
        upload.unlink(missing_ok=True)
    headers = {"Location": absolute(request, services, f"fhir/{result.location}")}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(result.receipt, status_code=201, headers=headers)
