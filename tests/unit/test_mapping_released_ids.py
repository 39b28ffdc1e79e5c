"""The logical ids of the restricted views (adapter.mapping.released_ids).

Found by the de-identification review (finding 3): every view showed the stored logical id, so
a TRAIN copy, an HRESCH copy and care's record of one photo could be joined on it. Each
restricted view now has its own keyed, invertible ids; these tests pin down their properties.
"""

from __future__ import annotations

import re
import uuid

import pytest

from adapter.errors import ConfigurationError, NotSupported
from adapter.mapping.released_ids import MAX_OTHER_ID_BYTES, STORED_IDS, IdSpace, ReleasedIds
from adapter.model.decision import View

pytestmark = pytest.mark.unit

KEY = b"r" * 32
STORED = "70110c4d-c985-46f2-9f9c-307e35b29d36"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def test_each_restricted_view_has_its_own_ids() -> None:
    """The same stored id is another id in the de-identified and the pseudonymised view (and
    for another resource type), none of them the stored one; care's view shows the stored id.
    Test seen failing: there was no such mapping (every view showed the stored id)."""
    ids = ReleasedIds(KEY)
    train = ids.space(View.DEIDENTIFIED).released("Media", STORED)
    hresch = ids.space(View.PSEUDONYMISED).released("Media", STORED)
    assert len({STORED, train, hresch, ids.space(View.DEIDENTIFIED).released("Binary", STORED)}) == 4
    assert ids.space(View.FULL).released("Media", STORED) == STORED
    for released in (train, hresch):
        assert FHIR_ID.fullmatch(released) and len(released) == 53
        assert STORED.replace("-", "") not in released


def test_a_released_id_leads_back_to_the_stored_one_only_in_its_view_and_type() -> None:
    """The view's id finds the stored resource (no index needed); the stored id, another
    view's id, or the id of another type finds nothing (a read by it is 404)."""
    ids = ReleasedIds(KEY)
    train, hresch = ids.space(View.DEIDENTIFIED), ids.space(View.PSEUDONYMISED)
    released = train.released("Media", STORED)
    assert train.stored("Media", released) == STORED
    assert train.stored("Media", STORED) is None  # care's id, asked in TRAIN
    assert hresch.stored("Media", released) is None  # TRAIN's id, asked in HRESCH
    assert train.stored("Binary", released) is None  # another type
    assert ids.space(View.FULL).stored("Media", released) == released  # care's view: as given


@pytest.mark.parametrize("changed", ["", "a", "A" * 53, "0" * 53, "-" * 53])
def test_anything_else_finds_nothing(changed: str) -> None:
    train = ReleasedIds(KEY).space(View.DEIDENTIFIED)
    assert train.stored("Media", changed) is None


def test_a_changed_id_finds_nothing() -> None:
    """Authenticated: a character changed anywhere, or the last character's unused bits set
    (another spelling of the same bytes), is no id of the view."""
    train = ReleasedIds(KEY).space(View.DEIDENTIFIED)
    released = train.released("Media", STORED)
    for at in range(len(released)):
        other = "b" if released[at] != "b" else "c"
        assert train.stored("Media", released[:at] + other + released[at + 1:]) is None
    last = "abcdefghijklmnopqrstuvwxyz234567"
    spellings = [released[:-1] + c for c in last if train.stored("Media", released[:-1] + c) is not None]
    assert spellings == [released]


def test_stable_across_instances_and_changed_with_the_key() -> None:
    """The same key gives the same ids after a restart (a new instance); a new key (the
    pseudonym key rotated) gives others, and the old ones find nothing."""
    before = ReleasedIds(KEY).space(View.DEIDENTIFIED).released("Consent", STORED)
    assert ReleasedIds(KEY).space(View.DEIDENTIFIED).released("Consent", STORED) == before
    rotated = ReleasedIds(b"s" * 32).space(View.DEIDENTIFIED)
    assert rotated.released("Consent", STORED) != before
    assert rotated.stored("Consent", before) is None


def test_ids_that_are_not_uuids() -> None:
    """A stored id the server did not assign (a store written by hand) is released too, up to
    MAX_OTHER_ID_BYTES; a longer one cannot be said in 64 characters and is refused, without
    naming it."""
    train = ReleasedIds(KEY).space(View.DEIDENTIFIED)
    for stored in ("c1", "x" * MAX_OTHER_ID_BYTES):
        released = train.released("Consent", stored)
        assert FHIR_ID.fullmatch(released) and train.stored("Consent", released) == stored
    for too_long in ("y" * (MAX_OTHER_ID_BYTES + 1), STORED.upper()):  # an upper-case UUID is not the server's
        with pytest.raises(NotSupported) as refused:
            train.released("Consent", too_long)
        assert too_long not in refused.value.diagnostics


def test_references() -> None:
    """A literal reference keeps its type and version; anything else is left as it is."""
    train = ReleasedIds(KEY).space(View.DEIDENTIFIED)
    media = train.released("Media", STORED)
    assert train.reference(f"Media/{STORED}") == f"Media/{media}"
    assert train.reference(f"Media/{STORED}/_history/2") == f"Media/{media}/_history/2"
    assert train.reference("urn:uuid:" + STORED) == "urn:uuid:" + STORED
    assert train.stored_reference(f"Media/{media}") == f"Media/{STORED}"
    assert train.stored_reference(f"Media/{STORED}") is None
    assert STORED_IDS.reference(f"Media/{STORED}") == f"Media/{STORED}"


def test_a_restricted_view_needs_the_key() -> None:
    """Fail closed: no restricted id space without a key (it would show the stored ids)."""
    with pytest.raises(ConfigurationError):
        IdSpace(View.DEIDENTIFIED)
    with pytest.raises(ConfigurationError):
        ReleasedIds(b"short")
    assert repr(ReleasedIds(KEY)) == "ReleasedIds()"


def test_many_ids_do_not_collide() -> None:
    train = ReleasedIds(KEY).space(View.DEIDENTIFIED)
    stored = [str(uuid.uuid4()) for _ in range(2000)]
    assert len({train.released("Media", s) for s in stored}) == len(stored)
