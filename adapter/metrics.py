"""Prometheus metrics for operations (``GET /metrics``, text exposition format).

What the integration team watches, never anything about a patient: labels are route templates
(``/fhir/{resource_type}/{id}``, not the path), purpose codes, outcomes, DIMSE statuses and
outbox states.

* ``adapter_http_responses_total{method,route,status}`` and
  ``adapter_http_request_duration_seconds{method,route}``;
* ``adapter_ingests_total{channel,result}``: photos and DICOM objects stored or replayed;
* ``adapter_access_decisions_total{interaction,purpose,outcome}``: every audited read, search
  and refusal, permitted or denied (the consent decision at work);
* ``adapter_dicom_c_store_total{status}`` and ``adapter_dicom_associations_total``;
* ``adapter_outbox_items{status}``: the forwarding outbox, counted in the store at each scrape
  (a growing ``failed`` or ``pending`` is a PACS that does not take what is sent to it;
  ``held``, consent-pending photos awaiting documented consent for care), and
  ``adapter_outbox_scrape_error``: 1 when the store could not be read for it at this scrape (the
  database down or not answering in time; the items' series are then left out), else 0. A scrape
  never fails for the database: the counts that describe its outage (503s, C-STORE 0xA700) are
  wanted most while it lasts.

With several HTTP worker processes the counters of every process are summed (prometheus_client's
multiprocess mode, in a folder of the instance's own that ``serve`` empties at start: in the host's
temp dir, ``adapter-metrics-<digest of the data folder and HTTP address>``, not in the data folder, so
instances sharing one each report their own; see ``adapter.__main__._multiprocess_metrics``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

HTTP_RESPONSES = Counter("adapter_http_responses_total", "HTTP responses, by route template and status",
                         ["method", "route", "status"])
HTTP_SECONDS = Histogram("adapter_http_request_duration_seconds", "HTTP request duration, by route template",
                         ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
INGESTS = Counter("adapter_ingests_total", "Photos and DICOM objects stored (or a retry answered: replayed)",
                  ["channel", "result"])
DECISIONS = Counter("adapter_access_decisions_total",
                    "Audited reads, searches and refusals, by purpose of use and outcome",
                    ["interaction", "purpose", "outcome"])
C_STORES = Counter("adapter_dicom_c_store_total", "C-STORE requests answered, by DIMSE status", ["status"])
ASSOCIATIONS = Counter("adapter_dicom_associations_total", "DICOM associations accepted")

CONTENT_TYPE = CONTENT_TYPE_LATEST


class _Outbox(Collector):
    """The outbox's items by status, as read from the store for this scrape; ``None``: it could
    not be read (only the scrape error is reported: no stale or made-up counts)."""

    def __init__(self, counts: Mapping[str, int] | None) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        if self._counts is not None:
            family = GaugeMetricFamily("adapter_outbox_items", "Forwarding outbox items, by status",
                                       labels=["status"])
            for status, count in sorted(self._counts.items()):
                family.add_metric([status], count)
            yield family
        yield GaugeMetricFamily("adapter_outbox_scrape_error",
                                "1: the outbox could not be read from the database at this scrape "
                                "(adapter_outbox_items left out), 0: it was",
                                value=0 if self._counts is not None else 1)


class _DataFolder(Collector):
    """The data folder's free space and the reserve below which new images are refused
    (ADAPTER_MIN_FREE_MB), read when scraped: alert before ingest stops, not when it has."""

    def __init__(self, free_bytes: Callable[[], int], reserve_bytes: int) -> None:
        self._free_bytes = free_bytes
        self._reserve_bytes = reserve_bytes

    def collect(self) -> Iterable[GaugeMetricFamily]:
        try:
            free = self._free_bytes()
        except OSError:
            free = None
        if free is not None:
            yield GaugeMetricFamily("adapter_data_free_bytes", "Bytes free on the data folder's file system",
                                    value=free)
        yield GaugeMetricFamily("adapter_data_reserve_bytes",
                                "Free space kept for the database and the audit trail: below it new images are "
                                "refused", value=self._reserve_bytes)


def exposition(outbox_counts: Mapping[str, int] | None, free_bytes: Callable[[], int] | None = None,
               reserve_bytes: int = 0) -> bytes:
    """The metrics of this process (or, in multiprocess mode, of every process), then the
    outbox (its counts read beforehand, within a time limit, by the caller; ``None``: they could
    not be) and the data folder's free space."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        counters = generate_latest(registry)
    else:
        counters = generate_latest(REGISTRY)
    scraped = CollectorRegistry()
    scraped.register(_Outbox(outbox_counts))
    if free_bytes is not None:
        scraped.register(_DataFolder(free_bytes, reserve_bytes))
    return counters + generate_latest(scraped)


__all__ = ["ASSOCIATIONS", "CONTENT_TYPE", "C_STORES", "DECISIONS", "HTTP_RESPONSES", "HTTP_SECONDS", "INGESTS",
           "MULTIPROCESS_ENV", "exposition"]
