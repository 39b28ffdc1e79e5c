"""A posted photo's DICOM object made from decoded pixels (a PNG, a progressive JPEG: native,
uncompressed, up to 240 MB for 80 MP) is made for a read under the whole-decode bound
(adapter.services.dicom_objects.regenerating): at most WHOLE_DECODES_AT_ONCE at once, the others
waiting their turn, then 503 with Retry-After; a baseline JPEG's (its frame as stored) waits for
nothing (security review 2: six parallel reads of one 80 MP photo reached 6-7 GB). One turn holds a
request's whole pipeline: its object, its frame, its picture and its answer are made under it, and a
request waiting for a turn holds nothing large (security review 2 again: the turn was held in
pieces, twelve parallel /rendered reads of one 80 MP PNG reached 9.4 GB)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.api.routes import dicomweb, wado_bulk
from adapter.imaging import thumbnail
from adapter.services import access, dicom_objects
from adapter.services.registry import Services
from tests.conftest import ROOT
from tests.support.app import FhirClient, metadata, pacs_client, post_photo
from tests.support.dciodvfy import png_of
from tests.support.dicom_files import native_sc_file

pytestmark = pytest.mark.integration

TREAT = {"X-Purpose-Of-Use": "TREAT"}


@pytest.fixture
def adapter(tmp_path: Path) -> Iterator[tuple[FhirClient, Services]]:
    with pacs_client(tmp_path) as pair:
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
    monkeypatch.setattr(thumbnail, "WHOLE_DECODE_WAIT_SECONDS", 0.2)
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


class Pipelines:
    """The requests whose native object is built (photo_to_dicom) and whose picture is not made yet
    (rendered_as, the GIF): how many at once, at most, and whether the calling thread is one."""

    def __init__(self, build: Any, picture: Any) -> None:
        self._build, self._picture = build, picture
        self._lock = threading.Lock()
        self._mine = threading.local()
        self.now = self.most = 0

    def holding(self) -> bool:
        return bool(getattr(self._mine, "built", False))

    def build(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self._mine.built = True
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.2)  # long enough for the other readers to be waiting for a turn meanwhile
        return self._build(*args, **kwargs)

    def picture(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._picture(*args, **kwargs)
        finally:
            with self._lock:
                if self.holding():
                    self._mine.built = False
                    self.now -= 1


class Turns(threading.BoundedSemaphore):
    """The whole-decode bound instrumented: whether the calling thread holds a turn, and how many
    times a thread holding a built object (``built``) waited for one."""

    def __init__(self, value: int, built: Pipelines | None = None) -> None:
        super().__init__(value)
        self._held = threading.local()
        self._built = built
        self.waited_holding = 0

    def holding(self) -> bool:
        return int(getattr(self._held, "turns", 0)) > 0

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        if self._built is not None and self._built.holding():
            self.waited_holding += 1
        got = super().acquire(blocking, timeout)
        if got:
            self._held.turns = int(getattr(self._held, "turns", 0)) + 1
        return got

    __enter__ = acquire  # threading.Semaphore binds its own acquire

    def release(self, n: int = 1) -> None:
        self._held.turns = int(getattr(self._held, "turns", 0)) - n
        super().release(n)


def test_one_turn_holds_a_rendered_reads_whole_pipeline_and_a_waiting_read_holds_no_object(
        adapter: tuple[FhirClient, Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Security review 2: the object was made under a turn, given back, its frame and PNG made under
    none, then its GIF waited for a second turn, every waiting request holding its 240 MB object;
    memory grew with the number of waiting requests. Now one turn holds object, frame and picture:
    at most the bound's number of requests hold a built object, and none waits for a turn with one."""
    client, _ = adapter
    url = _instance_url(_posted_png(client, tmp_path))
    pipelines = Pipelines(dicom_objects.photo_to_dicom, access.rendered_as)
    turns = Turns(1, pipelines)
    monkeypatch.setattr(thumbnail, "_whole_decodes", turns)
    monkeypatch.setattr(dicom_objects, "photo_to_dicom", pipelines.build)
    monkeypatch.setattr(access, "rendered_as", pipelines.picture)

    def get(_: int) -> httpx.Response:
        return client.get(url + "/rendered", headers={**TREAT, "Accept": "image/gif"})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(get, range(4)))
    assert [(a.status_code, a.headers["content-type"]) for a in answers] == [(200, "image/gif")] * 4, \
        [a.text for a in answers]
    assert turns.waited_holding == 0  # was 4: each waited for its picture's turn holding its object
    assert pipelines.most == 1  # was 2 or more: the next object was built while the first waited


def test_the_frame_the_picture_and_every_answer_of_an_object_are_made_under_its_turn(
        adapter: tuple[FhirClient, Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The 240 MB object read back, its frames cut out, its picture made, a study's part made: under
    the turn its object was made in (they were made after it was given back, at no bound)."""
    client, _ = adapter
    receipt = _posted_png(client, tmp_path)
    url = _instance_url(receipt)
    study = f"/dicomweb/studies/{receipt['dicom']['studyInstanceUid']}"
    turns = Turns(1)
    monkeypatch.setattr(thumbnail, "_whole_decodes", turns)
    seen: list[tuple[str, bool]] = []

    def watched(module: Any, name: str) -> None:
        real = getattr(module, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            seen.append((name, turns.holding()))
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, call)

    watched(wado_bulk, "frames")           # WADO-RS frames
    watched(wado_bulk, "read_released")    # WADO-RS metadata, frames, bulk data
    watched(access, "extract_image")       # rendered, thumbnail, WADO-URI
    watched(dicomweb, "_part")             # WADO-RS retrieve of a study
    for path in (url + "/frames/1", url + "/metadata", url + "/rendered", url + "/thumbnail",
                 study + "/metadata", study):
        answer = client.get(path, headers=TREAT)
        assert answer.status_code == 200, (path, answer.text)
    wado = client.get("/wado", params={"requestType": "WADO", "studyUID": receipt["dicom"]["studyInstanceUid"],
                                       "seriesUID": receipt["dicom"]["seriesInstanceUid"],
                                       "objectUID": receipt["dicom"]["sopInstanceUid"], "contentType": "image/png"},
                      headers=TREAT)
    assert wado.status_code == 200, wado.text
    assert {name for name, _ in seen} == {"frames", "read_released", "extract_image", "_part"}
    assert [name for name, held in seen if not held] == []


def test_a_received_object_of_large_object_bytes_or_more_is_read_under_a_turn(
        adapter: tuple[FhirClient, Services], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A received native object costs as much to read back and render as a photo's (its pixels, a
    PNG and a picture made of them: security review 2): one of LARGE_OBJECT_BYTES or more is read
    under a turn as well (503 with Retry-After when none comes in time); a smaller one waits for
    nothing."""
    client, _ = adapter
    path = tmp_path / "native.dcm"
    native = native_sc_file(path, bytes(range(256)) * 18, rows=24, columns=64)
    body = (b"--b0\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b0--\r\n")
    stowed = client.post("/dicomweb/studies", content=body,
                         headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b0'})
    assert stowed.status_code == 200, stowed.text
    url = (f"/dicomweb/studies/{native.StudyInstanceUID}/series/{native.SeriesInstanceUID}"
           f"/instances/{native.SOPInstanceUID}/rendered")
    bound = threading.BoundedSemaphore(1)
    monkeypatch.setattr(thumbnail, "_whole_decodes", bound)
    monkeypatch.setattr(thumbnail, "WHOLE_DECODE_WAIT_SECONDS", 0.2, raising=False)
    assert bound.acquire(timeout=1)  # every turn taken (another reader's large image)
    try:
        small = client.get(url, headers=TREAT)
        assert (small.status_code, small.headers["content-type"]) == (200, "image/png"), small.text
        monkeypatch.setattr(dicom_objects, "LARGE_OBJECT_BYTES", path.stat().st_size, raising=False)
        busy = client.get(url, headers=TREAT)
        assert busy.status_code == 503, busy.text  # was 200: read back and rendered at no bound
        assert busy.headers["retry-after"] == "5"
    finally:
        bound.release()
    assert client.get(url, headers=TREAT).status_code == 200  # its turn free again
