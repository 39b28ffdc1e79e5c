#!/usr/bin/env python3
"""The floor of the HTTP ingest on this stack, for ``benchmarks/ingest.py --floor``.

    python benchmarks/floor_server.py PORT DATA_DIR

A raw ASGI app on the adapter's own server stack (uvicorn with uvloop and httptools, one
process, the request's work in anyio's thread pool) that does for each ``POST`` only what no
design of the ingest can leave out: receive the whole body, hash it once (SHA-256), write it to a
new file with fsync, fsync the folder, and answer 201 with the digest. No multipart parsing, no
metadata stripping or decode proof, no second digest, no database, no FHIR. ``GET`` answers 200
(readiness). What it reaches beside Orthanc bounds what any Python ingest on this stack can reach
on the same machine; it is not a service and keeps nothing it is not told to.
"""

from __future__ import annotations

import hashlib
import os
import sys
import uuid
from typing import Any

import anyio
import uvicorn


def _store(folder: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()
    with open(os.path.join(folder, uuid.uuid4().hex), "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return digest


def floor_app(folder: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        post = scope["method"] == "POST"
        digest = await anyio.to_thread.run_sync(_store, folder, b"".join(chunks)) if post else ""
        out = b'{"sha256":"%s"}' % digest.encode()
        await send({"type": "http.response.start", "status": 201 if post else 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})

    return app


if __name__ == "__main__":
    port, folder = int(sys.argv[1]), sys.argv[2]
    os.makedirs(folder, exist_ok=True)
    uvicorn.run(floor_app(folder), host="127.0.0.1", port=port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", ws="none")
