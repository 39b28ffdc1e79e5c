"""adapter.services.access: QIDO-RS pages read the store a batch at a time, but match, count
and decide whole studies (the regrouping of streamed batches, ``_whole_studies``)."""

from __future__ import annotations

import pytest

from adapter.model.dicom import DicomInstance
from adapter.model.photo import Identifier
from adapter.services.access import _whole_studies

pytestmark = pytest.mark.unit


def instance(study: str, n: int) -> DicomInstance:
    return DicomInstance(sop_instance_uid=f"{study}.{n}", study_instance_uid=study, series_instance_uid=f"{study}.9",
                         sop_class_uid="1.2.840.10008.5.1.4.1.1.7", modality="OT", record_type="Media",
                         record_id=f"r-{study}-{n}", patient=Identifier(system="urn:x", value="1"))


def studies_of(groups: list[list[DicomInstance]]) -> list[list[str]]:
    return [[i.sop_instance_uid for i in group] for group in groups]


def test_a_study_split_between_batches_comes_whole_and_in_order() -> None:
    a = [instance("1", n) for n in range(3)]
    b = [instance("2", n) for n in range(2)]
    c = [instance("3", 0)]
    batches = [a[:2], a[2:] + b[:1], b[1:] + c]
    assert studies_of(list(_whole_studies(batches))) == [["1.0", "1.1", "1.2"], ["2.0", "2.1"], ["3.0"]]


def test_one_batch_and_empty_batches() -> None:
    a = [instance("1", n) for n in range(2)] + [instance("2", 0)]
    assert studies_of(list(_whole_studies([a]))) == [["1.0", "1.1"], ["2.0"]]
    assert list(_whole_studies([[], [], []])) == []
    assert list(_whole_studies([])) == []
    assert studies_of(list(_whole_studies([[], a[:1], [], a[1:2]]))) == [["1.0", "1.1"]]


def test_a_study_longer_than_many_batches_is_held_until_it_ends() -> None:
    long = [instance("1", n) for n in range(7)]
    batches = [long[k:k + 2] for k in range(0, 7, 2)] + [[instance("2", 0)]]
    assert studies_of(list(_whole_studies(batches))) == [[f"1.{n}" for n in range(7)], ["2.0"]]
