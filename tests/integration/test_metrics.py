"""GET /metrics: what operations watch (adapter.metrics), counted where it happens, never
anything about a patient; with several worker processes, the counts of every process."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from tests.conftest import ROOT
from tests.support.app import PATIENT, adapter_client, as_purpose, metadata, post_photo, seen_as
from tests.support.postgres import postgres_schema
from tests.support.server import running_adapter
from tests.support.tcp_proxy import REFUSE, SILENT, tcp_relay

WOUND = ROOT / "samples" / "wound.jpg"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_ingests_decisions_and_responses_by_template(tmp_path: Path) -> None:
    with adapter_client(tmp_path) as (client, services):
        before = {
            "stored": sample("adapter_ingests_total", channel="http", result="stored"),
            "replayed": sample("adapter_ingests_total", channel="http", result="replayed"),
            "permit": sample("adapter_access_decisions_total", interaction="read", purpose="TREAT", outcome="permit"),
            "deny": sample("adapter_access_decisions_total", interaction="read", purpose="TRAIN", outcome="deny"),
        }
        receipt = post_photo(client, WOUND, metadata()).json()
        assert post_photo(client, WOUND, metadata()).json() == receipt  # a retry: replayed
        assert client.get(f"/fhir/{receipt['record']}", headers=as_purpose("TREAT")).status_code == 200
        assert client.get(f"/fhir/{seen_as(services, 'TRAIN', receipt['record'])}", headers=as_purpose("TRAIN")).status_code == 404  # refused, as an id of nothing
        scraped = client.get("/metrics")
        assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
        text = scraped.text
        after = {
            "stored": sample("adapter_ingests_total", channel="http", result="stored"),
            "replayed": sample("adapter_ingests_total", channel="http", result="replayed"),
            "permit": sample("adapter_access_decisions_total", interaction="read", purpose="TREAT", outcome="permit"),
            "deny": sample("adapter_access_decisions_total", interaction="read", purpose="TRAIN", outcome="deny"),
        }
        assert {k: after[k] - before[k] for k in before} == {"stored": 1, "replayed": 1, "permit": 1, "deny": 1}
        assert "# TYPE adapter_outbox_items gauge" in text
        # the data folder's free space beside the reserve (128 MiB by default): alert before ingest stops
        values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
                  if line.startswith(("adapter_data_free_bytes ", "adapter_data_reserve_bytes "))}
        assert values["adapter_data_reserve_bytes"] == 128 * 1024 * 1024
        assert values["adapter_data_free_bytes"] > 0
        # labels are templates and codes: no identifier, no record id, no path
        record_id = receipt["record"].split("/")[1]
        for secret in (PATIENT["value"], record_id, receipt["sha256"]["stored"]):
            assert secret not in text


def test_metrics_of_every_worker_process_are_summed(tmp_path: Path) -> None:
    """The served app (its access log counts responses by route template), with two HTTP worker
    processes: whichever answers the scrape, it reports every process's counts
    (prometheus_client's multiprocess mode, in a folder of the instance's own in the temp dir)."""
    with running_adapter(tmp_path, ADAPTER_HTTP_WORKERS="2") as server:
        for n in range(8):
            meta = metadata(patient={"system": PATIENT["system"], "value": f"MRN-9{n:03d}"})
            with httpx.Client(base_url=server.url, timeout=30) as http:  # a connection each: both workers serve
                r = http.post("/photos", files={"file": ("wound.jpg", WOUND.read_bytes(), "image/jpeg"),
                                                "metadata": (None, json.dumps(meta),
                                                             "application/json")})
                assert r.status_code == 201, r.text
        for _ in range(6):
            text = httpx.get(f"{server.url}/metrics", timeout=30).text
            stored = re.search(r'^adapter_ingests_total\{channel="http",result="stored"\} (\S+)$', text, re.MULTILINE)
            assert stored is not None and float(stored.group(1)) == 8.0, text[:2000]
            created = re.search(r'^adapter_http_responses_total\{method="POST",route="/photos",status="201"\} (\S+)$',
                                text, re.MULTILINE)
            assert created is not None and float(created.group(1)) == 8.0
            assert 'adapter_http_request_duration_seconds_bucket{le="+Inf",method="POST",route="/photos"}' in text
            assert PATIENT["value"] not in text and "MRN-9" not in text
        # the workers' counters live on this host, not in the data folder instances may share
        assert not (tmp_path / "data" / "prometheus").exists()
        # labels stay bounded whatever a client sends: a method outside HTTP's usual ones (the
        # parser takes WebDAV's too), an unknown path
        for method in ("PROPFIND", "MKCOL"):
            httpx.request(method, f"{server.url}/fhir/Media/x-{method}", timeout=30)
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        assert 'method="PROPFIND"' not in text and "x-PROPFIND" not in text
        assert 'method="other"' in text
        # a worker answers readiness for the SCP, which runs in the supervisor process
        for _ in range(4):
            ready = httpx.get(f"{server.url}/health/ready", timeout=30)
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"]["dicom:listener"][0]["status"] == "pass"


def _stored(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(r'^adapter_ingests_total\{channel="http",result="stored"\} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _post_wound(url: str, patient_value: str) -> None:
    meta = metadata(patient={"system": PATIENT["system"], "value": patient_value})
    r = httpx.post(f"{url}/photos", timeout=30, files={"file": ("wound.jpg", WOUND.read_bytes(), "image/jpeg"),
                                                       "metadata": (None, json.dumps(meta), "application/json")})
    assert r.status_code == 201, r.text


def test_two_instances_on_one_data_folder_each_report_their_own_counts(tmp_path: Path) -> None:
    """Two ``serve`` instances behind a load balancer share the data folder (and the PostgreSQL
    database), each with several HTTP workers. Prometheus scrapes each instance: each reports what
    its own processes counted. Found by the two-instance review: both used ``prometheus/`` in the
    data folder, so each reported the other's counts too (summed, they counted every photo twice),
    and the one starting second emptied the folder under the first, whose counts were lost."""
    shared = {"ADAPTER_HTTP_WORKERS": "2", "ADAPTER_DATA_DIR": str(tmp_path / "data")}
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    with postgres_schema("metrics_pair") as url, \
            running_adapter(tmp_path / "a", ADAPTER_DATABASE_URL=url, **shared) as first:
        _post_wound(first.url, "MRN-8000")
        _post_wound(first.url, "MRN-8001")
        assert _stored(first.url) == 2.0
        with running_adapter(tmp_path / "b", ADAPTER_DATABASE_URL=url, **shared) as second:
            _post_wound(second.url, "MRN-8100")
            for _ in range(4):  # whichever worker answers
                assert (_stored(first.url), _stored(second.url)) == (2.0, 1.0)


def test_a_second_start_on_the_same_address_leaves_the_running_instances_metrics(tmp_path: Path) -> None:
    """Ops review 3: the same settings started a second time (by hand "to see the error", or a
    duplicated unit) emptied the running instance's metrics folder before failing to listen: every
    HTTP counter of the running service vanished, and new requests were counted in files unlinked.
    The folder is emptied only by the instance that holds its lock, for its whole life."""
    import os
    import subprocess
    import sys

    from tests.support.orthanc import free_port

    def health_count(url: str) -> float:
        text_ = httpx.get(f"{url}/metrics", timeout=30).text
        found = re.search(r'^adapter_http_responses_total\{method="GET",route="/health",status="200"\} (\S+)$',
                          text_, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    with running_adapter(tmp_path, ADAPTER_HTTP_WORKERS="2") as server:
        for _ in range(5):
            assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        before = health_count(server.url)
        assert before >= 5
        env = {**os.environ, "ADAPTER_HTTP_WORKERS": "2", "ADAPTER_HTTP_PORT": str(server.http_port),
               "ADAPTER_DICOM_PORT": str(free_port()), "ADAPTER_DATA_DIR": str(tmp_path / "data"),
               "TMPDIR": str(tmp_path / "tmp")}
        second = subprocess.run([sys.executable, "-m", "adapter", "serve"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=120, check=False)
        assert second.returncode == 2 and "cannot listen" in second.stderr, second.stderr[-2000:]
        for _ in range(3):
            assert httpx.get(f"{server.url}/health", timeout=30).status_code == 200
        for _ in range(4):  # whichever worker answers
            assert health_count(server.url) == before + 3


def _families(text_: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text_)}


@pytest.mark.parametrize("outage", [REFUSE, SILENT])
def test_metrics_answer_while_the_database_is_unreachable(tmp_path: Path, outage: str) -> None:
    """Found by the ops review (1): with the database refusing connections, or silent (a network
    partition), /metrics answered 503 (after the connect timeout when silent), so Prometheus lost
    every series exactly while they described the outage. The process's own series are still
    there; the outbox, which is read from the database, is left out and
    ``adapter_outbox_scrape_error`` says so; the wait for the database is bounded."""
    with postgres_schema("metrics_outage") as pg_url, tcp_relay(pg_url) as relay, \
            adapter_client(tmp_path, database_url=relay.url_for(pg_url), dicom_enabled=False,
                           database_connect_timeout=2) as (client, _services):
        assert post_photo(client, WOUND, metadata()).status_code == 201
        up = _families(client.get("/metrics").text)
        assert up["adapter_outbox_scrape_error"] == [({}, 0.0)]
        assert "adapter_outbox_items" in up
        relay.cut(outage)
        assert post_photo(client, WOUND, metadata(patient={"system": PATIENT["system"], "value": "MRN-7001"})
                          ).status_code == 503  # the outage, as the store sees it
        started = time.monotonic()
        scraped = client.get("/metrics")
        took = time.monotonic() - started
        assert scraped.status_code == 200, scraped.text
        assert scraped.headers["content-type"].startswith("text/plain")
        assert took < 4.5
        down = _families(scraped.text)
        assert down["adapter_outbox_scrape_error"] == [({}, 1.0)]
        assert "adapter_outbox_items" not in down
        assert {"channel": "http", "result": "stored"} in [labels for labels, _ in down["adapter_ingests"]]
        assert "adapter_data_free_bytes" in down and "adapter_data_reserve_bytes" in down


def test_metrics_do_not_wait_on_a_locked_outbox_longer_than_the_connect_timeout(tmp_path: Path) -> None:
    """A database that answers but keeps the outbox's count waiting (a lock held, up to the lock
    timeout): the scrape gives up on it after ADAPTER_DATABASE_CONNECT_TIMEOUT, not the lock's 10 s."""
    with postgres_schema("metrics_locked") as pg_url, \
            adapter_client(tmp_path, database_url=pg_url, dicom_enabled=False, database_connect_timeout=2,
                           database_lock_timeout=10) as (client, _services):
        holder = create_engine(pg_url)
        try:
            with holder.connect() as other:
                other.execute(text("LOCK TABLE outbox IN ACCESS EXCLUSIVE MODE"))
                started = time.monotonic()
                scraped = client.get("/metrics")
                took = time.monotonic() - started
                other.rollback()
        finally:
            holder.dispose()
        assert scraped.status_code == 200 and took < 4.5, (scraped.status_code, took)
        assert _families(scraped.text)["adapter_outbox_scrape_error"] == [({}, 1.0)]
        assert _families(client.get("/metrics").text)["adapter_outbox_scrape_error"] == [({}, 0.0)]
