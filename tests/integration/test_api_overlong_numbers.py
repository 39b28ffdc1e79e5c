"""Security review 5: a number in a query or path longer than Python's int/str limit (4,300
digits) reached ``int()`` before its length was checked: 500 "internal error" and an ERROR
traceback, a page to on-call at a client's will. Each is a 400 (or the refusal the parameter
has for any other bad value), and no ERROR is logged."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter.errors import InvalidQuery
from adapter.mapping.dicom_json import parse_frame_list
from adapter.mapping.status_patch import _MISSING, _pointed
from tests.support.app import FhirClient, adapter_client

pytestmark = pytest.mark.integration

LONG = "1" * 5000
ZEROS = "0" * 4301
TREAT = {"X-Purpose-Of-Use": "TREAT"}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[FhirClient]:
    with adapter_client(tmp_path) as (client, _):
        yield client


@pytest.mark.parametrize("query", [f"limit={ZEROS}", f"offset={ZEROS}", f"limit={LONG}", f"offset={LONG}"])
@pytest.mark.parametrize("level", ["studies", "series", "instances"])
def test_qido_limit_and_offset_past_the_digit_limit_are_400(client: FhirClient, caplog: pytest.LogCaptureFixture,
                                                            level: str, query: str) -> None:
    caplog.set_level(logging.WARNING)
    r = client.get(f"/dicomweb/{level}?{query}", headers=TREAT)
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == [query.split("=")[0]]
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


@pytest.mark.parametrize("frames", [LONG, f"1,{LONG}", ZEROS])
def test_a_frame_number_past_the_digit_limit_is_400(client: FhirClient, caplog: pytest.LogCaptureFixture,
                                                    frames: str) -> None:
    caplog.set_level(logging.WARNING)
    r = client.get(f"/dicomweb/studies/1.2.3/series/1.2.3.4/instances/1.2.3.4.5/frames/{frames}", headers=TREAT)
    assert r.status_code == 400, r.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


@pytest.mark.parametrize("frames", [LONG, f"2,{ZEROS}"])
def test_parse_frame_list_checks_the_length_before_the_number(frames: str) -> None:
    with pytest.raises(InvalidQuery):
        parse_frame_list(frames)


@pytest.mark.parametrize("query", [f"_count={LONG}", f"_count={ZEROS}1", f"_offset={LONG}"])
def test_fhir_paging_past_the_digit_limit_is_no_server_error(client: FhirClient, caplog: pytest.LogCaptureFixture,
                                                             query: str) -> None:
    caplog.set_level(logging.WARNING)
    r = client.get(f"/fhir/Media?{query}", headers=TREAT)
    assert r.status_code in (200, 400, 422), r.text
    assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]


@pytest.mark.parametrize("vid", [LONG, ZEROS])
def test_a_history_version_past_the_digit_limit_is_not_found(client: FhirClient, vid: str) -> None:
    r = client.get(f"/fhir/Media/x/_history/{vid}", headers=TREAT)
    assert r.status_code == 404, r.text


def test_a_json_pointer_index_past_the_digit_limit_points_at_nothing() -> None:
    assert _pointed({"a": [1, 2]}, f"/a/{LONG}") is _MISSING
