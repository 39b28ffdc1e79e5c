"""Deterministic UIDs under the organisation's root: valid grammar, stable, grouped as decided."""

from __future__ import annotations

import random
import re

import pytest

from adapter.errors import ConfigurationError
from adapter.mapping.dicom_uids import (
    MAX_ROOT,
    check_uid_root,
    is_valid_uid,
    keyed_uid,
    photo_uids,
    stable_uid,
)
from adapter.model.photo import Identifier

pytestmark = pytest.mark.unit

ROOT = "2.999.1.2.3"
PATIENT = Identifier(system="urn:oid:2.999.1.1", value="MRN-0001")
KEY = b"photo-uid-key-for-tests"
GRAMMAR = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def test_stable_uid_is_deterministic_valid_and_under_the_root() -> None:
    uid = stable_uid(ROOT, "instance", "rec-1")
    assert uid == stable_uid(ROOT, "instance", "rec-1")
    assert uid.startswith(ROOT + ".")
    assert GRAMMAR.match(uid) and len(uid) <= 64
    assert is_valid_uid(uid)


def test_different_parts_never_share_an_encoding() -> None:
    assert stable_uid(ROOT, "a", "bc") != stable_uid(ROOT, "ab", "c")
    assert stable_uid(ROOT, "instance", "rec-1") != stable_uid(ROOT, "series", "rec-1")
    assert stable_uid(ROOT, "x") != stable_uid("2.999.1.2.4", "x")


def test_many_roots_and_parts_give_valid_uids() -> None:
    rng = random.Random(7)
    seen = set()
    for _ in range(2000):
        components = [str(rng.choice([0, rng.randint(1, 10**rng.randint(1, 9))])) for _ in range(rng.randint(2, 8))]
        root = ".".join(components)[:MAX_ROOT].rstrip(".")
        if not GRAMMAR.match(root) or root.count(".") < 1:
            continue
        uid = stable_uid(root, str(rng.random()))
        assert GRAMMAR.match(uid), uid
        assert len(uid) <= 64, uid
        seen.add(uid)
    assert len(seen) > 1000


def test_a_40_character_root_still_fits_64() -> None:
    root = "1.2." + "9" * (MAX_ROOT - 4)
    assert len(root) == MAX_ROOT
    uid = stable_uid(root, "x")
    assert len(uid) <= 64 and len(uid.rsplit(".", 1)[1]) >= 20


@pytest.mark.parametrize("root", ["", "1", "01.2", "1.02", "1..2", "1.2.", ".1.2", "a.b", "1.2.3 ", "1,2",
                                  "1.2." + "3" * 40])
def test_bad_roots_are_configuration_errors(root: str) -> None:
    with pytest.raises(ConfigurationError, match="ADAPTER_UID_ROOT"):
        check_uid_root(root)
    with pytest.raises(ConfigurationError):
        stable_uid(root, "x")


def test_no_parts_is_a_bug() -> None:
    with pytest.raises(ValueError):
        stable_uid(ROOT)


def test_photos_of_one_encounter_share_a_study_and_nothing_else() -> None:
    a = photo_uids(ROOT, KEY, record_id="rec-a", encounter="Encounter/e-1", patient=PATIENT)
    b = photo_uids(ROOT, KEY, record_id="rec-b", encounter="Encounter/e-1", patient=PATIENT)
    assert a.study == b.study
    assert a.series != b.series and a.sop_instance != b.sop_instance
    assert len({a.study, a.series, a.sop_instance}) == 3
    for uid in (a.study, a.series, a.sop_instance):
        assert is_valid_uid(uid)


def test_study_depends_on_patient_and_encounter() -> None:
    base = photo_uids(ROOT, KEY, record_id="rec-a", encounter="Encounter/e-1", patient=PATIENT)
    other_patient = Identifier(system=PATIENT.system, value="MRN-0002")
    assert photo_uids(ROOT, KEY, record_id="rec-a", encounter="Encounter/e-1", patient=other_patient).study != base.study
    assert photo_uids(ROOT, KEY, record_id="rec-a", encounter="Encounter/e-2", patient=PATIENT).study != base.study


def test_without_encounter_each_record_is_its_own_study() -> None:
    a = photo_uids(ROOT, KEY, record_id="rec-a", encounter=None, patient=PATIENT)
    b = photo_uids(ROOT, KEY, record_id="rec-b", encounter=None, patient=PATIENT)
    assert a.study != b.study


def test_regenerating_gives_the_same_uids() -> None:
    first = photo_uids(ROOT, KEY, record_id="rec-a", encounter="Encounter/e-1", patient=PATIENT)
    assert photo_uids(ROOT, KEY, record_id="rec-a", encounter="Encounter/e-1", patient=PATIENT) == first


def test_keyed_uid_is_consistent_and_unlinkable_across_keys_and_contexts() -> None:
    original = stable_uid(ROOT, "study", "x")
    mapped = keyed_uid(ROOT, b"k1", original, context="deidentified")
    assert mapped == keyed_uid(ROOT, b"k1", original, context="deidentified")
    assert mapped != original and is_valid_uid(mapped)
    assert mapped != keyed_uid(ROOT, b"k2", original, context="deidentified")
    assert mapped != keyed_uid(ROOT, b"k1", original, context="pseudonymised")
    with pytest.raises(ConfigurationError):
        keyed_uid(ROOT, b"", original, context="deidentified")


def test_the_uuid_root_gives_real_uuids() -> None:
    import uuid

    uid = stable_uid("2.25", "instance", "rec-1")
    value = int(uid.split(".", 2)[2])
    as_uuid = uuid.UUID(int=value)
    assert as_uuid.version == 8 and as_uuid.variant == uuid.RFC_4122
    assert is_valid_uid(uid) and uid == stable_uid("2.25", "instance", "rec-1")


def test_photo_uids_cannot_be_computed_from_the_record_id_without_the_key() -> None:
    """A de-identified view keeps the record id; with an unkeyed hash it gave the original UIDs.
    An encounter's study, computed from what no restricted view shows, stays the same whatever
    the key, so an encounter's photos share one study across a new key (or the upgrade)."""
    uids = photo_uids(ROOT, KEY, record_id="rec-a", encounter=None, patient=PATIENT)
    assert uids.sop_instance != stable_uid(ROOT, "instance", "rec-a")
    assert uids.series != stable_uid(ROOT, "series", "rec-a")
    assert uids.study != stable_uid(ROOT, "study", "record", "rec-a")
    with_encounter = photo_uids(ROOT, KEY, record_id="rec-a", encounter="Encounter/e-1", patient=PATIENT)
    other_key = photo_uids(ROOT, b"another key", record_id="rec-a", encounter="Encounter/e-1", patient=PATIENT)
    assert other_key.study == with_encounter.study == \
        stable_uid(ROOT, "study", "encounter", PATIENT.system, PATIENT.value, "Encounter/e-1")
    assert {other_key.series, other_key.sop_instance}.isdisjoint({with_encounter.series, with_encounter.sop_instance})
    with pytest.raises(ConfigurationError):
        photo_uids(ROOT, b"", record_id="rec-a", encounter=None, patient=PATIENT)
