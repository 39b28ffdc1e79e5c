"""A posted photo's DICOM object made from decoded pixels (a PNG, a progressive JPEG: native,
uncompressed, up to 240 MB for 80 MP) is made for a read under the whole-decode bound
(adapter.services.dicom_objects.regenerating): at most WHOLE_DECODES_AT_ONCE at once, the others
waiting their turn, then 503 with Retry-After; a baseline JPEG's (its frame as stored) waits for
nothing (security review 2: six parallel reads of one 80 MP photo reached 6-7 GB)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.imaging import thumbnail
from adapter.services import dicom_objects
from adapter.services.registry import Services
from tests.conftest import ROOT
from tests.support.app import FhirClient, adapter_client, metadata, post_photo
from tests.support.dciodvfy import png_of

pytestmark = pytest.mark.integration

TREAT = {"X-Purpose-Of-Use": "TREAT"}


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with adapter_client(tmp_path) as pair:
        yield pair


class Builds:
    """photo_to_dicom instrumented: how many run at once, at most."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self._lock = threading.Lock()
        self.now = self.most = self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(0.2)  # long enough for the other readers to arrive meanwhile
            return self._real(*args, **kwargs)
        finally:
            with self._lock:
                self.now -= 1


def _instance_url(receipt: dict[str, Any]) -> str:
    uids = receipt["dicom"]
    return (f"/dicomweb/studies/{uids['studyInstanceUid']}/series/{uids['seriesInstanceUid']}"
            f"/instances/{uids['sopInstanceUid']}")


def _posted_png(client: FhirClient, tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "wound.png"
    path.write_bytes(png_of("RGB", size=(64, 48)))
    receipt = post_photo(client, path, metadata())
    assert receipt.status_code == 201, receipt.text
    return dict(receipt.json())


def test_concurrent_reads_of_a_png_photo_make_its_object_no_more_than_the_bound_at_once(
        adapter: tuple[FhirClient, Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = adapter
    url = _instance_url(_posted_png(client, tmp_path))
    monkeypatch.setattr(thumbnail, "_whole_decodes", threading.BoundedSemaphore(1))
    builds = Builds(dicom_objects.photo_to_dicom)
    monkeypatch.setattr(dicom_objects, "photo_to_dicom", builds)

    def get(suffix: str) -> httpx.Response:
        return client.get(url + suffix, headers=TREAT)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(get, ["", "/metadata", "/frames/1", "/rendered"]))
    assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
    assert builds.calls == 4
    assert builds.most == 1  # was 4: every read made its native object at once


def test_a_read_that_gets_no_turn_in_time_is_503_with_retry_after_and_a_baseline_jpeg_waits_for_nothing(
        adapter: tuple[FhirClient, Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, _ = adapter
    png = _instance_url(_posted_png(client, tmp_path))
    jpeg = _instance_url(post_photo(client, ROOT / "samples" / "document.jpg", metadata()).json())  # baseline, upright
    bound = threading.BoundedSemaphore(1)
    monkeypatch.setattr(thumbnail, "_whole_decodes", bound)
    monkeypatch.setattr(dicom_objects, "REGENERATION_WAIT_SECONDS", 0.2)
    assert bound.acquire(timeout=1)  # every turn taken (another reader's large image)
    try:
        busy = client.get(png, headers=TREAT)
        assert busy.status_code == 503, busy.text
        assert busy.headers["retry-after"] == "5"
        assert busy.json()["issue"][0]["code"] == "transient"
        assert client.get(jpeg + "/metadata", headers=TREAT).status_code == 200  # served as stored
    finally:
        bound.release()
    assert client.get(png, headers=TREAT).status_code == 200  # its turn free again
