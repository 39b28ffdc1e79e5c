"""End to end: SIGTERM while PostgreSQL makes a request wait (ops review 3). The request
waiting past the stop's grace (ADAPTER_HTTP_BODY_TIMEOUT) was answered a bare 500 by uvicorn,
and the audit of the stop then waited for the database as long as the driver did (130 s): the
stop took 191 s, beyond the README's bound. Now the request is answered 503 ``transient``
(an OperationOutcome), the stop's audit is given STOP_AUDIT_SECONDS, and nothing is stored."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from adapter.__main__ import STOP_AUDIT_SECONDS
from adapter.store.locks import SCHEMA_KEY
from tests.conftest import wait_until
from tests.e2e.test_shutdown_e2e import NAMED, _answer, _exits, _photo_request
from tests.support.postgres import named_postgres_schema, sessions_waiting_on_a_lock
from tests.support.server import running_adapter

#: The advisory lock every audited write takes (adapter.store.sql._AUDIT_LOCK), in the test
#: schema's space (adapter.store.locks).
AUDIT_LOCK = 0x1A6E5706


def test_sigterm_while_the_database_holds_a_request_answers_503_and_ends_within_its_bound(tmp_path: Path) -> None:
    head, body = _photo_request()
    with named_postgres_schema("test_stop_db") as (url, name):
        holder = create_engine(url.replace(f"application_name={name}", "application_name=holder"))
        try:
            with holder.connect() as other, running_adapter(
                    tmp_path, ADAPTER_DATABASE_URL=url, ADAPTER_DICOM_ENABLED="false", ADAPTER_HTTP_BODY_TIMEOUT="2",
                    **NAMED,  # the Host its raw request names
                    # no statement or lock timeout: the database holds the request as a hung one would
                    ADAPTER_DATABASE_LOCK_TIMEOUT="0", ADAPTER_DATABASE_STATEMENT_TIMEOUT="0") as server:
                other.execute(text(f"SELECT pg_advisory_lock({SCHEMA_KEY})"), {"key": AUDIT_LOCK})
                with socket.create_connection(("127.0.0.1", server.http_port)) as upload:
                    upload.sendall(head + body)
                    wait_until(lambda: sessions_waiting_on_a_lock(holder, name) >= 1, timeout=20)
                    stopped = time.monotonic()
                    os.killpg(server.pid, signal.SIGTERM)
                    answer = _answer(upload)
                status_line, _, rest = answer.partition(b"\r\n")
                assert status_line.startswith(b"HTTP/1.1 503"), answer[:300]
                outcome = json.loads(rest.partition(b"\r\n\r\n")[2])
                assert outcome["resourceType"] == "OperationOutcome"
                assert outcome["issue"][0]["code"] == "transient"
                # the grace (2 s), then the stop's audit, which cannot take the lock (STOP_AUDIT_SECONDS)
                assert _exits(server.pid, within=2 + STOP_AUDIT_SECONDS + 15), "the stop waited for the database"
                took = time.monotonic() - stopped
                other.execute(text(f"SELECT pg_advisory_unlock({SCHEMA_KEY})"), {"key": AUDIT_LOCK})
                other.commit()
            log = server.log.read_text()
            assert "could not audit the stop" in log, log[-3000:]
            assert "Traceback" not in log, log[-3000:]
            assert took < 2 + STOP_AUDIT_SECONDS + 15
            with holder.connect() as conn:  # the request's transaction ended with its process: nothing of it
                wait_until(lambda: sessions_waiting_on_a_lock(holder, name) == 0, timeout=10)
                assert conn.execute(text("SELECT count(*) FROM resources")).scalar_one() == 0
                assert conn.execute(text("SELECT count(*) FROM receipts")).scalar_one() == 0
        finally:
            holder.dispose()
