"""thumbnail_jpeg: small, upright, aspect kept, never enlarged, no metadata at all."""

from __future__ import annotations

import io

import pytest
from PIL import Image, ImageCms

from adapter.errors import ImageTooLarge, UndecodableImage, UnsupportedMediaType
from adapter.imaging import thumbnail_jpeg
from tests.conftest import ROOT

pytestmark = pytest.mark.unit


def _jpeg(width: int, height: int, **save: object) -> bytes:
    im = Image.new("RGB", (width, height), (200, 30, 30))
    im.paste((20, 20, 220), (0, 0, width // 2, height // 4))  # a blue block in the top-left corner
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=90, **save)
    return out.getvalue()


def _open(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    assert im.format == "JPEG"
    return im


def test_a_large_photo_becomes_a_small_upright_picture_without_metadata() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    exif[0x010F] = "Camera maker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = _jpeg(4000, 3000, exif=exif.tobytes(), icc_profile=icc, comment=b"Jane Roe, ward 3")
    out = thumbnail_jpeg(source, "image/jpeg", rows=128, columns=128, max_pixels=80_000_000)
    im = _open(out)
    assert im.size == (96, 128)  # upright: the 4000 x 3000 photo shows 3000 wide, 4000 high
    assert not {"exif", "icc_profile", "comment"} & set(im.info)
    assert b"Jane Roe" not in out and b"Camera maker" not in out
    # the blue block was top-left of the stored pixels: after the 90 degree turn it is top-right
    r, _g, b = im.convert("RGB").getpixel((im.width - 5, 5))
    assert b > 150 and r < 100


@pytest.mark.parametrize(("rows", "columns", "expected"), [(128, 128, (128, 64)), (10, 200, (20, 10)),
                                                           (1000, 1000, (400, 200))])
def test_the_viewport_bounds_both_sides_and_nothing_is_enlarged(rows: int, columns: int,
                                                               expected: tuple[int, int]) -> None:
    out = thumbnail_jpeg(_jpeg(400, 200), "image/jpeg", rows=rows, columns=columns, max_pixels=10**8)
    assert _open(out).size == expected


def test_png_sources_grey_sixteen_bit_by_their_high_bits() -> None:
    im = Image.new("I;16", (300, 100))
    im.paste(65535, (0, 0, 150, 100))  # left half white, right half black
    buffer = io.BytesIO()
    im.save(buffer, format="PNG")
    out = _open(thumbnail_jpeg(buffer.getvalue(), "image/png", rows=50, columns=150, max_pixels=10**8))
    assert out.size == (150, 50) and out.mode == "L"
    assert out.getpixel((10, 25)) > 240 and out.getpixel((140, 25)) < 15
    lesion = (ROOT / "samples" / "lesion.png").read_bytes()
    assert _open(thumbnail_jpeg(lesion, "image/png", rows=64, columns=64, max_pixels=10**8)).width <= 64


def test_refusals() -> None:
    with pytest.raises(ImageTooLarge):
        thumbnail_jpeg(_jpeg(400, 200), "image/jpeg", rows=10, columns=10, max_pixels=1000)
    with pytest.raises(UndecodableImage):
        thumbnail_jpeg(_jpeg(400, 200)[:600], "image/jpeg", rows=10, columns=10, max_pixels=10**8)
    with pytest.raises(UnsupportedMediaType):
        thumbnail_jpeg(_jpeg(40, 20), "image/png", rows=10, columns=10, max_pixels=10**8)
    with pytest.raises(ValueError):
        thumbnail_jpeg(_jpeg(40, 20), "image/jpeg", rows=0, columns=10, max_pixels=10**8)


@pytest.mark.parametrize("media, fmt", [("image/png", "PNG"), ("image/gif", "GIF"), ("image/jpeg", "JPEG")])
def test_a_rendered_photo_made_anew_is_upright_and_carries_no_metadata(media: str, fmt: str) -> None:
    """rendered_as (WADO-RS rendered in a type the picture is not stored as): the source's
    Orientation applied, nothing of its EXIF, ICC profile or comment; a JPEG at most max_side."""
    from adapter.imaging.thumbnail import rendered_as

    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera maker"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = _jpeg(400, 300, exif=exif.tobytes(), icc_profile=icc, comment=b"Jane Roe, ward 3")
    out = rendered_as(source, "image/jpeg", media, max_side=200, max_pixels=1_000_000)
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == fmt
        assert im.size == ((150, 200) if fmt == "JPEG" else (300, 400))  # upright (and within max_side)
        assert not {"exif", "icc_profile", "comment", "transparency"} & set(im.info), im.info
    assert b"Jane Roe" not in out and b"Camera maker" not in out
    with pytest.raises(ImageTooLarge):
        rendered_as(source, "image/jpeg", media, max_side=200, max_pixels=1000)
    with pytest.raises(ValueError):
        rendered_as(source, "image/jpeg", "image/webp", max_side=200, max_pixels=1_000_000)


def test_whole_decodes_run_at_most_two_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the diff review: rendered_as decodes a picture whole (an 80 MP one took ~0.7 GB)
    and nothing bounded how many readers did so at once. Six readers at once: at most
    WHOLE_DECODES_AT_ONCE decode together, every one gets its picture."""
    import threading
    import time

    from adapter.imaging import thumbnail

    real = thumbnail.decode_pixels
    lock = threading.Lock()
    now, most = [0], [0]

    def counted(*args: object, **kwargs: object) -> object:
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)  # type: ignore[arg-type]
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(thumbnail, "decode_pixels", counted)
    source = _jpeg(64, 48)
    made: list[bytes] = []
    readers = [threading.Thread(target=lambda: made.append(
        thumbnail.rendered_as(source, "image/jpeg", "image/png", max_side=100, max_pixels=10_000)))
        for _ in range(6)]
    for r in readers:
        r.start()
    for r in readers:
        r.join()
    assert len(made) == 6 and most[0] == thumbnail.WHOLE_DECODES_AT_ONCE


def test_a_reader_that_gets_no_turn_in_time_is_transient_and_a_turn_given_back_returns_free_memory(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Security review 2: a picture made anew waited for its turn as long as it took, and the memory
    its work freed stayed with the process (5.6 GB resident after twelve reads, none running). Now a
    reader waits at most WHOLE_DECODE_WAIT_SECONDS (then Transient: 503 with Retry-After), and each
    turn given back hands the C allocator's free memory back to the system (adapter.memory)."""
    import threading

    from adapter.errors import Transient
    from adapter.imaging import thumbnail

    source = _jpeg(64, 48)
    given_back: list[None] = []
    monkeypatch.setattr(thumbnail, "give_back", lambda: given_back.append(None), raising=False)
    thumbnail.rendered_as(source, "image/jpeg", "image/png", max_side=100, max_pixels=10_000)
    assert len(given_back) == 1

    bound = threading.BoundedSemaphore(1)
    monkeypatch.setattr(thumbnail, "_whole_decodes", bound)
    monkeypatch.setattr(thumbnail, "WHOLE_DECODE_WAIT_SECONDS", 0.05, raising=False)
    raised: list[BaseException] = []

    def reader() -> None:
        try:
            thumbnail.rendered_as(source, "image/jpeg", "image/png", max_side=100, max_pixels=10_000)
        except Exception as exc:  # noqa: BLE001 - what it raises is the test's
            raised.append(exc)

    assert bound.acquire(timeout=1)  # every turn taken (another reader's large image)
    waiting = threading.Thread(target=reader)
    try:
        waiting.start()
        waiting.join(timeout=10)
        assert not waiting.is_alive()  # it waited as long as it took
        assert [type(e) for e in raised] == [Transient]
    finally:
        bound.release()
        waiting.join()


def test_give_back_returns_the_allocators_free_memory_or_does_nothing() -> None:
    from adapter.memory import give_back

    give_back()  # glibc: malloc_trim(0); another C library: nothing
