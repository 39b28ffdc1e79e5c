"""One contract suite for the record store, run against SQLite (a file) and PostgreSQL.

PostgreSQL: TEST_POSTGRES_URL or postgresql+psycopg://postgres@127.0.0.1:5432/test; every
test gets a schema of its own, dropped afterwards. When it cannot be reached the PostgreSQL
cases are skipped, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from adapter.config import StoreOptions
from adapter.errors import (
    ConfigurationError,
    Conflict,
    InstanceConflict,
    InvalidInput,
    NotFound,
    NotSupported,
    PatientReferenceConflict,
    StorageError,
    StudyStarted,
)
from adapter.model.dicom import DicomInstance, InstanceAttributes, NewOutboxItem, ReleasedUids
from adapter.model.photo import Identifier, PhotoKind, PhotoSource
from adapter.model.record import AccessFacts, BlobReference, IngestUnit, NewResource, SearchIndex
from adapter.store import (
    DateCriterion,
    FileBlobStore,
    NamePrefix,
    SearchCriteria,
    SqlRecordStore,
    TokenCriterion,
    open_store,
)
from adapter.store.engine import describe_failure
from adapter.store.schema import SCHEMA_VERSION
from adapter.store.schema import audit as audit_table
from adapter.store.schema import dicom_instances as dicom_instances_table
from tests.conftest import require_or_skip
from tests.support.audit import TEST_AUDIT_KEY
from tests.support.postgres import PG_URL

pytestmark = pytest.mark.integration

PATIENT = Identifier(system="urn:oid:2.16.840.1.113883.2.4.6.3", value="999911120")
OTHER_PATIENT = Identifier(system="urn:oid:2.16.840.1.113883.2.4.6.3", value="999922230")
SNOMED = "http://snomed.info/sct"

StoreFactory = Callable[[], SqlRecordStore]
#: The QIDO-RS match key columns schema 12 added to dicom_instances (each with an index ix_dicom_instances_<column>).
MATCH_KEYS = ("patient_name_key", "patient_name_ideographic_key", "patient_name_phonetic_key", "study_description_key")


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_url() -> str:
    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3}, poolclass=sa.NullPool)
    try:
        with engine.connect():
            pass
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        require_or_skip(False, f"PostgreSQL is not reachable at {engine.url.render_as_string()}: "
                               f"{type(exc).__name__}")
    finally:
        engine.dispose()
    return PG_URL


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_records(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """Opens stores on one fresh database (SQLite file or PostgreSQL schema); closes them after."""
    opened: list[SqlRecordStore] = []
    if backend == "sqlite":
        url, schema = f"sqlite:///{tmp_path / 'db' / 'adapter.db'}", None
    else:
        url, schema = request.getfixturevalue("postgres_url"), f"test_store_{uuid.uuid4().hex[:16]}"

    def factory() -> SqlRecordStore:
        store = SqlRecordStore(url, schema=schema, audit_key=TEST_AUDIT_KEY)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()
    if schema is not None:
        admin = sa.create_engine(url, poolclass=sa.NullPool)
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def store(open_records: StoreFactory) -> SqlRecordStore:
    return open_records()


# -- factories --------------------------------------------------------------------------------


def new_id() -> str:
    return uuid.uuid4().hex


def make_facts(governed_by: str = "Media/x", patient: Identifier = PATIENT, **kwargs: Any) -> AccessFacts:
    return AccessFacts(governed_by=governed_by, patient=patient, kind=kwargs.pop("kind", PhotoKind.CLINICAL),
                       source=kwargs.pop("source", PhotoSource.CLINICIAN), **kwargs)


def make_resource(resource_type: str = "Media", id: str | None = None, *, patient: Identifier | None = PATIENT,
                  reference: str | None = None, date: datetime | None = None, status: str | None = "completed",
                  tokens: tuple[tuple[str, str | None, str], ...] = (), facts: AccessFacts | None = None,
                  with_facts: bool = True, blob_sha256: str | None = None,
                  blob_range: tuple[int, int] | None = None, **extra: Any) -> NewResource:
    id = id or new_id()
    if facts is None and with_facts and patient is not None:
        facts = make_facts(f"{resource_type}/{id}", patient)
    return NewResource(
        resource_type=resource_type, id=id,
        resource={"resourceType": resource_type, "id": id, "status": status, **extra},
        index=SearchIndex(patient=patient, patient_reference=reference, date=date, status=status, tokens=tokens),
        facts=facts, blob_sha256=blob_sha256, blob_range=blob_range)


def make_unit(resources: list[NewResource] | None = None, *, key: str | None = "auto",
              patient: Identifier = PATIENT, sha: str | None = None,
              audit_events: list[dict[str, Any]] | None = None) -> IngestUnit:
    sha = sha or uuid.uuid4().hex * 2
    if resources is None:
        media = make_resource("Media", blob_sha256=sha, patient=patient, tokens=(("type", SNOMED, "photo"),))
        governed = make_facts(f"Media/{media.id}", patient)
        resources = [media, make_resource("Binary", facts=governed, patient=None, status=None, blob_sha256=sha,
                                          blob_range=(132, 2048)),
                     make_resource("Provenance", facts=governed, patient=patient, status=None),
                     make_resource("DocumentReference", patient=patient, status="current"),
                     make_resource("Consent", patient=patient, status="active", with_facts=False)]
    return IngestUnit(resources=resources, receipt={"resources": [f"{r.resource_type}/{r.id}" for r in resources]},
                      idempotency_key=new_id() if key == "auto" else key, patient=patient, stored_sha256=sha,
                      audit_events=audit_events if audit_events is not None else [{"action": "C", "n": 1}])


def ids(rows: Iterable[Any]) -> list[str]:
    return [row.id for row in rows]


def assert_nothing_visible(store: SqlRecordStore, unit: IngestUnit) -> None:
    for new in unit.resources:
        assert store.get(new.resource_type, new.id) is None
    if unit.idempotency_key is not None:
        assert store.find_receipt(idempotency_key=unit.idempotency_key) is None
    assert store.find_receipt(patient=unit.patient, stored_sha256=unit.stored_sha256) is None
    assert store.list_audit(1000) == []
    with store.engine.connect() as conn:
        for table in ("tokens", "resource_history"):
            count = conn.execute(sa.text(f"SELECT count(*) FROM {table} WHERE id IN :ids")
                                 .bindparams(sa.bindparam("ids", expanding=True)),
                                 {"ids": [r.id for r in unit.resources]}).scalar()
            assert count == 0, table


# -- save_ingest and receipts -----------------------------------------------------------------


def test_save_ingest_stores_every_resource_with_meta(store: SqlRecordStore) -> None:
    unit = make_unit()
    before = datetime.now(UTC) - timedelta(seconds=1)
    store.save_ingest(unit)
    for new in unit.resources:
        stored = store.get(new.resource_type, new.id)
        assert stored is not None
        assert stored.version_id == 1
        assert stored.last_updated.tzinfo is not None and stored.last_updated.utcoffset() == timedelta(0)
        assert before <= stored.last_updated <= datetime.now(UTC)
        meta = stored.resource["meta"]
        assert meta["versionId"] == "1"
        assert meta["lastUpdated"] == stored.last_updated.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert stored.resource["resourceType"] == new.resource_type and stored.resource["id"] == new.id
        assert list(stored.resource)[:2] == ["resourceType", "id"]  # document order is kept
        assert stored.facts == new.facts
        assert stored.blob_sha256 == new.blob_sha256 and stored.blob_range == new.blob_range
        assert new.resource["meta"] == meta  # the caller's dicts carry the stored meta
    assert store.find_receipt(idempotency_key=unit.idempotency_key) == unit.receipt
    assert store.list_audit() == unit.audit_events


def test_access_facts_round_trip(store: SqlRecordStore) -> None:
    facts = make_facts("DocumentReference/d1", OTHER_PATIENT, kind=PhotoKind.SECONDARY,
                       source=PhotoSource.COLLEAGUE_EXTERNAL, consent_pending=True, consent_ids=("c1", "c2"))
    new = make_resource("Binary", facts=facts)
    store.create(new)
    stored = store.get("Binary", new.id)
    assert stored is not None and stored.facts == facts
    [row] = list(store.search_index("Binary", SearchCriteria(ids=(new.id,))))
    assert row.facts == facts
    bare = make_resource("Consent", with_facts=False)
    store.create(bare)
    got = store.get("Consent", bare.id)
    assert got is not None and got.facts is None


def test_latest_last_updated_is_the_type_s_latest_and_a_bound_of_what_its_search_finds(store: SqlRecordStore) -> None:
    """A search's snapshot (adapter.services.search_paging) is the latest last_updated of each
    type; every resource stored after it, and every update, has a later one, so a search within
    it finds what was stored before (and a bare patient value matches it in any system)."""
    assert store.latest_last_updated("Consent") is None
    first = store.create(make_resource("Consent", status="active", with_facts=False))
    assert store.latest_last_updated("Consent") == first.last_updated
    snapshot = store.latest_last_updated("Consent")
    second = store.create(make_resource("Consent", status="active", with_facts=False))
    assert second.last_updated > first.last_updated and store.latest_last_updated("Consent") == second.last_updated
    assert snapshot is not None
    from adapter.services.search_paging import instant_key, within_snapshot

    bounded = within_snapshot(SearchCriteria(), instant_key(snapshot))
    assert [r.id for r in store.search_index("Consent", bounded)] == [first.id]
    unit = make_unit()
    store.save_ingest(unit)
    record = next(r for r in unit.resources if r.index.patient is not None)
    assert record.index.patient is not None
    found = {r.id for r in store.search_index(record.resource_type,
                                               SearchCriteria(patient_value=(record.index.patient.value,)))}
    assert record.id in found


def test_save_ingest_is_atomic_when_a_resource_id_repeats(store: SqlRecordStore) -> None:
    unit = make_unit()
    last = unit.resources[-1]
    clash = make_resource(unit.resources[0].resource_type, unit.resources[0].id)
    unit.resources.append(clash)  # fails after the receipt and four resources were inserted
    with pytest.raises(Conflict):
        store.save_ingest(unit)
    assert_nothing_visible(store, unit)
    assert "meta" not in last.resource  # the caller's dicts are untouched on failure


def test_save_ingest_is_atomic_when_the_last_write_fails(store: SqlRecordStore) -> None:
    unit = make_unit(audit_events=[{"ok": True}, {"not json": object()}])
    with pytest.raises(StorageError) as info:
        store.save_ingest(unit)
    assert info.value.__cause__ is not None
    assert_nothing_visible(store, unit)


def test_save_ingest_is_atomic_when_a_constraint_fails_late(store: SqlRecordStore) -> None:
    unit = make_unit()
    unit.resources[-1].index = SearchIndex(tokens=(("type", None, None),))  # type: ignore[arg-type]
    with pytest.raises(StorageError) as info:
        store.save_ingest(unit)
    assert not isinstance(info.value, Conflict)
    assert_nothing_visible(store, unit)


def test_save_ingests_writes_several_units_in_one_transaction(store: SqlRecordStore) -> None:
    """The documents of one submission (a transaction of several, FHIR http.html#transaction):
    every unit written, each resource with its meta, each receipt found; one unit conflicting
    with what is stored (the second's patient and sha256 taken) writes none of them."""
    first, second = make_unit(), make_unit(key=None)
    store.save_ingests([first, second])
    for unit in (first, second):
        assert store.find_receipt(patient=PATIENT, stored_sha256=unit.stored_sha256) == unit.receipt
        for new in unit.resources:
            stored = store.get(new.resource_type, new.id)
            assert stored is not None and new.resource["meta"]["versionId"] == "1"
    assert len(store.list_audit()) == 2
    third, again = make_unit(), make_unit(key=None, sha=second.stored_sha256)
    with pytest.raises(Conflict):
        store.save_ingests([third, again])
    assert all(store.get(r.resource_type, r.id) is None for r in third.resources + again.resources)
    assert store.find_receipt(patient=PATIENT, stored_sha256=third.stored_sha256) is None
    assert len(store.list_audit()) == 2


def test_a_nul_character_in_a_text_value_is_invalid_input_on_every_backend(store: SqlRecordStore) -> None:
    """PostgreSQL cannot keep U+0000 in text, SQLite can, and FHIR strings do not allow it: both
    refuse it, as the client's error (not a transient store failure, which a capture app or a
    PACS retries forever), and write nothing; a search for it is refused alike."""
    patient = Identifier(system=PATIENT.system, value="MRN-\x00-1")
    unit = make_unit(patient=patient)
    with pytest.raises(InvalidInput):
        store.save_ingest(unit)
    assert all(store.get(r.resource_type, r.id) is None for r in unit.resources)
    assert store.find_receipt(idempotency_key=str(unit.idempotency_key)) is None and store.list_audit() == []
    consent = make_resource("Consent", patient=patient, status="active", with_facts=False)
    with pytest.raises(InvalidInput):
        store.create(consent)
    assert store.get("Consent", consent.id) is None
    with pytest.raises(InvalidInput):
        list(store.search_index("Media", SearchCriteria(patient=(patient,))))
    store.save_ingest(make_unit(audit_events=[{"note": "a NUL inside JSON is escaped: \x00"}]))


def test_a_database_error_names_no_parameter_value(store: SqlRecordStore) -> None:
    """A failing statement's error (what an unexpected failure logs, with its traceback) carries
    the SQL, not the values bound to it: those are patient identifiers and AuditEvents."""
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError) as info, store._engine.connect() as conn:
        conn.execute(text("SELECT value FROM no_such_table WHERE value = :v"), {"v": "MRN-SECRET-4711"})
    assert "MRN-SECRET-4711" not in str(info.value) and "no_such_table" in str(info.value)


def test_idempotency_key_taken_is_conflict_and_writes_nothing(store: SqlRecordStore) -> None:
    first = make_unit()
    store.save_ingest(first)
    second = make_unit(key=first.idempotency_key)
    with pytest.raises(Conflict, match="idempotency key"):
        store.save_ingest(second)
    assert all(store.get(r.resource_type, r.id) is None for r in second.resources)
    assert store.find_receipt(idempotency_key=first.idempotency_key) == first.receipt
    assert store.find_receipt(patient=PATIENT, stored_sha256=second.stored_sha256) is None
    assert len(store.list_audit()) == 1


def test_same_photo_for_same_patient_is_conflict(store: SqlRecordStore) -> None:
    first = make_unit()
    store.save_ingest(first)
    again = make_unit(sha=first.stored_sha256, key=None)
    with pytest.raises(Conflict, match="stored for the patient"):
        store.save_ingest(again)
    assert all(store.get(r.resource_type, r.id) is None for r in again.resources)
    assert store.find_receipt(patient=PATIENT, stored_sha256=first.stored_sha256) == first.receipt
    assert len(store.list_audit()) == 1
    # the same bytes for another patient are a different photo record
    store.save_ingest(make_unit(sha=first.stored_sha256, patient=OTHER_PATIENT))


def test_units_without_idempotency_key_do_not_clash(store: SqlRecordStore) -> None:
    a, b = make_unit(key=None), make_unit(key=None)
    store.save_ingest(a)
    store.save_ingest(b)
    assert store.find_receipt(patient=PATIENT, stored_sha256=a.stored_sha256) == a.receipt
    assert store.find_receipt(patient=PATIENT, stored_sha256=b.stored_sha256) == b.receipt


def test_find_receipt(store: SqlRecordStore) -> None:
    unit = make_unit()
    store.save_ingest(unit)
    assert store.find_receipt(idempotency_key=unit.idempotency_key) == unit.receipt
    assert store.find_receipt(patient=PATIENT, stored_sha256=unit.stored_sha256) == unit.receipt
    assert store.find_receipt(idempotency_key="unknown", patient=PATIENT,
                              stored_sha256=unit.stored_sha256) == unit.receipt
    assert store.find_receipt(idempotency_key="unknown") is None
    assert store.find_receipt(patient=OTHER_PATIENT, stored_sha256=unit.stored_sha256) is None
    assert store.find_receipt(patient=PATIENT, stored_sha256="0" * 64) is None
    with pytest.raises(ValueError):
        store.find_receipt(patient=PATIENT)


def test_compiled_inserts_store_what_execute_stores(store: SqlRecordStore) -> None:
    """The ingest's precompiled INSERTs (adapter.store.inserts) hand the driver the same values
    as SQLAlchemy's execute(): the same date text on SQLite, booleans, JSON, NULLs, several rows."""
    from adapter.store.inserts import CompiledInserts
    from adapter.store.schema import EncodedJson, resources

    when = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=timezone(timedelta(hours=2)))

    def row(rid: str) -> dict[str, Any]:
        return {"resource_type": "Media", "id": rid, "version_id": 1, "last_updated": when,
                "json": EncodedJson.of({"resourceType": "Media", "note": "ü"}), "patient_system": "urn:x",
                "patient_value": None, "date": when, "consent_pending": True, "consent_ids": ["a", "b"],
                "blob_offset": 2**40, "blob_length": 7}

    raw = sa.select(*[c for c in resources.c if c.name not in ("resource_type", "id")])
    inserts = CompiledInserts(store.engine.dialect)
    with store.engine.begin() as conn:
        conn.execute(sa.insert(resources), [row("by-execute")])
        inserts.execute(conn, resources, [row("compiled-1"), row("compiled-2")])
        inserts.execute(conn, resources, row("compiled-3"))
        values = {rid: tuple(conn.execute(raw.where(resources.c.id == rid)).one())
                  for rid in ("by-execute", "compiled-1", "compiled-2", "compiled-3")}
        as_stored = conn.exec_driver_sql("SELECT id, last_updated FROM resources ORDER BY id").all() \
            if store.engine.dialect.name == "sqlite" else None
    assert values["compiled-1"] == values["compiled-2"] == values["compiled-3"] == values["by-execute"]
    if as_stored is not None:
        assert {text for _, text in as_stored} == {"2024-05-06T05:08:09.123000+00:00"}
    # a value the bind processing refuses is a StatementError, as from execute()
    with pytest.raises(sa.exc.StatementError, match="expected a datetime"), store.engine.begin() as conn:
        inserts.execute(conn, resources, {**row("bad"), "last_updated": "not a datetime"})


def test_save_ingest_is_one_commit(store: SqlRecordStore) -> None:
    commits: list[object] = []
    sa.event.listen(store.engine, "commit", commits.append)
    store.save_ingest(make_unit())
    assert len(commits) == 1


# -- create, update, get ----------------------------------------------------------------------


def test_create_sets_meta_and_refuses_duplicates(store: SqlRecordStore) -> None:
    new = make_resource("Consent", tokens=(("category", SNOMED, "123"),))
    created = store.create(new, audit_events=[{"event": "create"}])
    assert created.version_id == 1 and created.resource["meta"]["versionId"] == "1"
    assert "meta" not in new.resource
    assert store.get("Consent", new.id) == created
    with pytest.raises(Conflict, match="exists already"):
        store.create(make_resource("Consent", new.id), audit_events=[{"event": "second"}])
    assert store.list_audit() == [{"event": "create"}]
    # the same id under another type is another resource
    store.create(make_resource("Media", new.id))


def history(store: SqlRecordStore, resource_type: str, id: str) -> list[tuple[int, str]]:
    with store.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT version_id, json FROM resource_history WHERE resource_type = :t "
                                    "AND id = :i ORDER BY version_id"), {"t": resource_type, "i": id}).all()
    return [(row[0], row[1]) for row in rows]


def test_update_writes_next_version_and_keeps_history(store: SqlRecordStore) -> None:
    first = store.create(make_resource("Media", "m1", status="preliminary", tokens=(("type", SNOMED, "old"),)))
    time.sleep(0.002)
    newer = make_resource("Media", "m1", patient=OTHER_PATIENT, status="completed",
                          tokens=(("type", SNOMED, "new"),), note="second")
    updated = store.update(newer, audit_events=[{"event": "update"}])
    assert updated.version_id == 2
    assert updated.resource["meta"]["versionId"] == "2"
    assert updated.last_updated > first.last_updated
    assert store.get("Media", "m1") == updated
    assert [v for v, _ in history(store, "Media", "m1")] == [1, 2]
    assert [d["meta"]["versionId"] for d in store.list_versions("Media", "m1")] == ["2", "1"]
    assert store.list_versions("Media", "m1")[0] == updated.resource
    assert [d["meta"]["versionId"] for d in store.list_versions("Media", "m1", offset=1, limit=5)] == ["1"]
    assert [d["meta"]["versionId"] for d in store.list_versions("Media", "m1", limit=1)] == ["2"]
    assert [d["meta"]["versionId"] for d in store.list_versions("Media", "m1", since=updated.last_updated)] == ["2"]
    assert store.list_versions("Media", "m1", since=updated.last_updated + timedelta(seconds=1)) == []
    assert store.count_versions("Media", "m1") == 2 and store.count_versions("Media", "nothing") == 0
    assert store.count_versions("Media", "m1", since=updated.last_updated) == 1
    assert store.list_versions("Media", "nothing") == [] and store.list_versions("Consent", "m1") == []
    # older than a version (a history page's keyset bound): a version written since moves nothing
    assert [d["meta"]["versionId"] for d in store.list_versions("Media", "m1", before=2)] == ["1"]
    assert [d["meta"]["versionId"] for d in store.list_versions("Media", "m1", before=3, limit=1)] == ["2"]
    assert store.list_versions("Media", "m1", before=1) == []
    assert store.count_versions("Media", "m1", before=2) == 1
    assert store.count_versions("Media", "m1", since=updated.last_updated, before=2) == 0
    # the index follows the current version
    old_token = SearchCriteria(tokens=((TokenCriterion("type", "old"),),))
    new_token = SearchCriteria(tokens=((TokenCriterion("type", "new"),),))
    assert list(store.search_index("Media", old_token)) == []
    assert ids(store.search_index("Media", new_token)) == ["m1"]
    assert ids(store.search_index("Media", SearchCriteria(status=("completed",)))) == ["m1"]
    assert ids(store.search_index("Media", SearchCriteria(patient=(OTHER_PATIENT,)))) == ["m1"]
    assert store.list_audit() == [{"event": "update"}]


def test_update_if_match(store: SqlRecordStore) -> None:
    store.create(make_resource("Media", "m1"))
    assert store.update(make_resource("Media", "m1"), if_match=1).version_id == 2
    with pytest.raises(Conflict):
        store.update(make_resource("Media", "m1", note="lost"), if_match=1, audit_events=[{"e": 1}])
    current = store.get("Media", "m1")
    assert current is not None and current.version_id == 2 and "note" not in current.resource
    assert store.list_audit() == []
    assert store.update(make_resource("Media", "m1"), if_match=2).version_id == 3


def test_update_missing_is_not_found(store: SqlRecordStore) -> None:
    with pytest.raises(NotFound):
        store.update(make_resource("Media", "nope"))
    assert store.get("Media", "nope") is None


def test_get_many_keeps_order_and_leaves_out_missing(store: SqlRecordStore) -> None:
    for id in ("a", "b", "c"):
        store.create(make_resource("Media", id))
    got = store.get_many("Media", ["c", "missing", "a", "b"])
    assert [s.id for s in got] == ["c", "a", "b"]
    assert store.get_many("Media", []) == []
    assert store.get_many("Binary", ["a"]) == []
    many = [f"missing-{n}" for n in range(1100)]
    many[0], many[600], many[1099] = "b", "c", "a"  # across the 500-id chunks
    assert [s.id for s in store.get_many("Media", many)] == ["b", "c", "a"]


# -- search -----------------------------------------------------------------------------------


def test_search_ids_patient_reference_status_and_type(store: SqlRecordStore) -> None:
    store.create(make_resource("Media", "a", patient=PATIENT, reference="Patient/1", status="completed"))
    store.create(make_resource("Media", "b", patient=OTHER_PATIENT, reference="Patient/2", status="preliminary"))
    store.create(make_resource("Media", "c", patient=None, status=None))
    store.create(make_resource("DocumentReference", "d", patient=PATIENT, reference="Patient/1"))

    def search(**kwargs: Any) -> list[str]:
        return sorted(ids(store.search_index("Media", SearchCriteria(**kwargs))))

    assert search() == ["a", "b", "c"]
    assert search(ids=("a", "c", "d")) == ["a", "c"]
    assert search(ids=()) == []
    assert search(patient=(PATIENT,)) == ["a"]
    assert search(patient=(PATIENT, OTHER_PATIENT)) == ["a", "b"]
    assert search(patient=(Identifier(system="urn:other", value=PATIENT.value),)) == []
    assert search(patient=()) == []
    assert search(patient_reference=("Patient/2",)) == ["b"]
    assert search(patient_reference=("Patient/1", "Patient/2")) == ["a", "b"]
    assert search(status=("completed", "preliminary")) == ["a", "b"]
    assert search(status=("preliminary",), patient=(PATIENT,)) == []
    assert search(ids=("a", "b"), patient=(OTHER_PATIENT,)) == ["b"]


def test_search_tokens_or_within_and_across(store: SqlRecordStore) -> None:
    store.create(make_resource("Media", "a", tokens=(("type", SNOMED, "1"), ("site", SNOMED, "arm"))))
    store.create(make_resource("Media", "b", tokens=(("type", SNOMED, "2"), ("site", SNOMED, "leg"))))
    store.create(make_resource("Media", "c", tokens=(("type", "urn:local", "1"), ("site", None, "arm"))))
    store.create(make_resource("Media", "d"))

    def search(*groups: tuple[TokenCriterion, ...]) -> list[str]:
        return sorted(ids(store.search_index("Media", SearchCriteria(tokens=groups))))

    t = TokenCriterion
    assert search((t("type", "1"),)) == ["a", "c"]                          # any system
    assert search((t("type", "1", SNOMED),)) == ["a"]                       # system|code
    assert search((t("site", "arm", ""),)) == ["c"]                         # |code: no system
    assert search((t("type", "1", SNOMED), t("type", "2", SNOMED))) == ["a", "b"]   # OR
    assert search((t("type", "1"),), (t("site", "arm", SNOMED),)) == ["a"]          # AND
    assert search((t("type", "1"),), (t("site", "leg"),)) == []
    assert search((t("site", "1"),)) == []                                  # param matters
    assert search(()) == []                                                 # an empty OR matches nothing


def test_search_orders_by_last_updated_then_id(store: SqlRecordStore) -> None:
    store.create(make_resource("Media", "z"))
    time.sleep(0.005)
    store.save_ingest(make_unit([make_resource("Media", id) for id in ("m", "b", "x")]))
    time.sleep(0.005)
    store.create(make_resource("Media", "a"))
    time.sleep(0.005)
    store.update(make_resource("Media", "z"))
    assert ids(store.search_index("Media", SearchCriteria())) == ["b", "m", "x", "a", "z"]


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 6, 1000])
def test_search_reads_in_batches_in_the_same_order(store: SqlRecordStore, batch: int) -> None:
    store.create(make_resource("Media", "z"))
    time.sleep(0.005)
    # three rows with the same last_updated: a batch may end between them
    store.save_ingest(make_unit([make_resource("Media", id) for id in ("m", "b", "x")]))
    time.sleep(0.005)
    store.create(make_resource("Media", "a"))
    store.create(make_resource("DocumentReference", "d"))
    expected = ["z", "b", "m", "x", "a"]
    assert ids(store.search_index("Media", SearchCriteria(), batch=batch)) == expected
    assert ids(store.search_index("Media", SearchCriteria(ids=("x", "z")), batch=batch)) == ["z", "x"]
    assert ids(store.search_index("Media", SearchCriteria(ids=("none",)), batch=batch)) == []
    # newest first (_sort=-_lastUpdated): the same rows reversed, ties on last_updated too
    assert ids(store.search_index("Media", SearchCriteria(), descending=True, batch=batch)) == expected[::-1]
    assert ids(store.search_index("Media", SearchCriteria(ids=("x", "z")), descending=True, batch=batch)) == ["x", "z"]


# Stored dates, in several offsets; the search day is 2024-01-01 in UTC.
DATES = {
    "before": datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    "morning": datetime(2024, 1, 1, 10, 0, tzinfo=UTC),
    "late": datetime(2024, 1, 2, 0, 0, tzinfo=timezone(timedelta(hours=2))),   # 2024-01-01T22:00Z
    "boundary": datetime(2024, 1, 2, 1, 0, tzinfo=timezone(timedelta(hours=1))),  # 2024-01-02T00:00Z
    "after": datetime(2024, 1, 1, 20, 0, tzinfo=timezone(timedelta(hours=-8))),   # 2024-01-02T04:00Z
}
DAY = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC))


@pytest.mark.parametrize(("prefix", "expected"), [
    ("eq", ["late", "morning"]),
    ("ne", ["after", "before", "boundary"]),
    ("gt", ["after", "boundary"]),
    ("sa", ["after", "boundary"]),
    ("ge", ["after", "boundary", "late", "morning"]),
    ("lt", ["before"]),
    ("eb", ["before"]),
    ("le", ["before", "late", "morning"]),
])
def test_search_date_prefixes(store: SqlRecordStore, prefix: str, expected: list[str]) -> None:
    for id, date in DATES.items():
        store.create(make_resource("Media", id, date=date))
    store.create(make_resource("Media", "undated", date=None))
    found = list(store.search_index("Media", SearchCriteria(dates=((DateCriterion(prefix, *DAY),),))))
    assert sorted(ids(found)) == expected


def test_search_dates_in_other_offsets_and_combined(store: SqlRecordStore) -> None:
    for id, date in DATES.items():
        store.create(make_resource("Media", id, date=date))
    plus2 = timezone(timedelta(hours=2))
    # 2024-01-01 in +02:00 is [2023-12-31T22:00Z, 2024-01-01T22:00Z)
    local_day = DateCriterion("eq", datetime(2024, 1, 1, tzinfo=plus2), datetime(2024, 1, 2, tzinfo=plus2))
    assert sorted(ids(store.search_index("Media", SearchCriteria(dates=((local_day,),))))) == ["before", "morning"]
    window = (DateCriterion("ge", datetime(2024, 1, 1, 12, tzinfo=UTC), datetime(2024, 1, 1, 13, tzinfo=UTC)),
              DateCriterion("lt", datetime(2024, 1, 2, 3, tzinfo=UTC), datetime(2024, 1, 2, 4, tzinfo=UTC)))
    assert sorted(ids(store.search_index("Media", SearchCriteria(dates=tuple((d,) for d in window))))) == ["boundary", "late"]


# Stored implicit ranges (search.html#date: a target's date covers its precision), first and last
# instant; the search value is 2024-06-10T12:00:00Z, one second.
RANGES = {
    "day": (datetime(2024, 6, 10, tzinfo=UTC), datetime(2024, 6, 10, 23, 59, 59, 999999, tzinfo=UTC)),
    "earlier": (datetime(2024, 6, 10, 9, tzinfo=UTC), datetime(2024, 6, 10, 9, 0, 0, 999999, tzinfo=UTC)),
    "noon": (datetime(2024, 6, 10, 12, tzinfo=UTC), datetime(2024, 6, 10, 12, 0, 0, 999999, tzinfo=UTC)),
    "later": (datetime(2024, 6, 10, 12, 30, tzinfo=UTC), datetime(2024, 6, 10, 12, 30, 0, 999999, tzinfo=UTC)),
}
NOON = (datetime(2024, 6, 10, 12, tzinfo=UTC), datetime(2024, 6, 10, 12, 0, 1, tzinfo=UTC))


def make_dated(id: str, param: str, first: datetime, last: datetime) -> NewResource:
    """A DocumentReference whose ``param`` (``date`` or ``creation``) is the range [first, last]."""
    new = make_resource("DocumentReference", id, status="current")
    values = {"date": first, "date_last": last} if param == "date" else {"creation": first, "creation_last": last}
    return dataclasses.replace(new, index=dataclasses.replace(new.index, **values))


@pytest.mark.parametrize("param", ["date", "creation"])
@pytest.mark.parametrize(("prefix", "expected"), [
    ("eq", ["noon"]),
    ("ne", ["day", "earlier", "later"]),
    ("gt", ["day", "later"]),
    ("sa", ["later"]),
    ("ge", ["day", "later", "noon"]),
    ("lt", ["day", "earlier"]),
    ("eb", ["earlier"]),
    ("le", ["day", "earlier", "noon"]),
])
def test_search_date_prefixes_on_ranges(store: SqlRecordStore, param: str, prefix: str, expected: list[str]) -> None:
    """A target date is the range of its precision (search.html#date, #prefix): a date-only value
    covers its day, and is compared with the search value's range as ``period`` is. Test seen
    failing: a day was one instant at its first (``gt`` noon missed it)."""
    for id, (first, last) in RANGES.items():
        store.create(make_dated(id, param, first, last))
    store.create(make_resource("DocumentReference", "undated", status="current"))
    criterion = DateCriterion(prefix, *NOON, param=param)
    found = list(store.search_index("DocumentReference", SearchCriteria(dates=((criterion,),))))
    assert sorted(ids(found)) == expected


def test_search_date_prefix_errors(store: SqlRecordStore) -> None:
    with pytest.raises(NotSupported):
        list(store.search_index("Media", SearchCriteria(dates=((DateCriterion("ap", *DAY),),))))
    with pytest.raises(InvalidInput):
        list(store.search_index("Media", SearchCriteria(dates=((DateCriterion("xx", *DAY),),))))


# -- consents and audit -----------------------------------------------------------------------


def test_consents_for_patient(store: SqlRecordStore) -> None:
    mine = store.create(make_resource("Consent", "c1", patient=PATIENT, with_facts=False))
    store.create(make_resource("Consent", "c2", patient=OTHER_PATIENT, with_facts=False))
    store.create(make_resource("Media", "m1", patient=PATIENT))
    by_facts = store.create(make_resource("Consent", "c3", patient=None, facts=make_facts("Consent/c3", PATIENT)))
    assert store.consents_for_patient(PATIENT) == [mine, by_facts]
    assert [c.id for c in store.consents_for_patient(OTHER_PATIENT)] == ["c2"]
    assert store.consents_for_patient(Identifier(system="urn:x", value="1")) == []


def test_consent_versions_for_patient(store: SqlRecordStore) -> None:
    store.create(make_resource("Consent", "c1", patient=PATIENT, with_facts=False))
    store.create(make_resource("Consent", "c2", patient=OTHER_PATIENT, with_facts=False))
    store.create(make_resource("Consent", "c3", patient=None, facts=make_facts("Consent/c3", PATIENT)))
    store.update(make_resource("Consent", "c1", patient=PATIENT, with_facts=False))
    versions = store.consent_versions_for_patient(PATIENT)
    assert versions == [(c.id, c.version_id) for c in store.consents_for_patient(PATIENT)]
    assert sorted(versions) == [("c1", 2), ("c3", 1)]
    assert store.consent_versions_for_patient(Identifier(system="urn:x", value="1")) == []


def test_the_patients_consents_are_found_through_indexes_not_by_walking_every_consent(tmp_path: Path) -> None:
    """Every ingest looks the patient's Consents up. With an OR of the index and access-facts
    columns, SQLite walked every Consent of the store (33 ms at 20,000); the lookup is now a range
    of each patient index, then primary-key reads (its plan, on the embedded store)."""
    from adapter.store.sql import patient_consents, patient_params, resources

    store = SqlRecordStore(f"sqlite:///{tmp_path / 'plan.db'}", audit_key=TEST_AUDIT_KEY)
    try:
        for columns in ((resources,), (resources.c.id, resources.c.version_id)):
            compiled = patient_consents(*columns).compile(store.engine)
            bound = {**compiled.params, **patient_params(PATIENT)}
            values = tuple(bound[name] for name in compiled.positiontup or ())
            with store.engine.connect() as conn:
                plan = " | ".join(str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {compiled}", values))
            assert "ix_resources_patient (resource_type=? AND patient_system=? AND patient_value=?)" in plan, plan
            assert "ix_resources_fact_patient (fact_patient_system=? AND fact_patient_value=?)" in plan, plan
            assert "ix_resources_type_last_updated" not in plan and "SCAN resources" not in plan, plan
    finally:
        store.close()


def test_a_retry_is_found_by_the_photo_as_received_through_indexes(tmp_path: Path) -> None:
    """Verify review 2, finding 1: every ingest looks the patient's receipts up by the photo as
    stored and as received (schema 24); each lookup is a range of an index, never a walk of the
    patient's receipts (their plans, on the embedded store)."""
    store = SqlRecordStore(f"sqlite:///{tmp_path / 'plan.db'}", audit_key=TEST_AUDIT_KEY)
    try:
        unit = make_unit(key=None)
        unit.receipt["sha256"] = {"received": "c" * 64, "stored": unit.stored_sha256}
        store.save_ingest(unit)
        statements: list[tuple[str, Any]] = []

        def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if "receipts" in statement:
                statements.append((statement, parameters))

        sa.event.listen(store.engine, "before_cursor_execute", capture)
        try:
            assert store.find_receipt(patient=PATIENT, stored_sha256="d" * 64, received_sha256="c" * 64) \
                == unit.receipt
            assert store.find_withdrawn_receipts(patient=PATIENT, stored_sha256="d" * 64,
                                                 received_sha256="c" * 64) == []
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", capture)
        assert len(statements) == 4
        with store.engine.connect() as conn:
            plans = [" | ".join(str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", values))
                     for sql, values in statements]
        assert "INDEX sqlite_autoindex_receipts_2 (patient_system=? AND patient_value=? AND stored_sha256=?)" \
            in plans[0], plans[0]
        assert "ix_receipts_patient_received (patient_system=? AND patient_value=? AND received_sha256=?)" \
            in plans[1], plans[1]
        assert "ix_withdrawn_receipts_patient_sha (patient_system=? AND patient_value=? AND stored_sha256=?)" \
            in plans[2], plans[2]
        assert "ix_withdrawn_receipts_patient_received (patient_system=? AND patient_value=? AND " \
            "received_sha256=?)" in plans[3], plans[3]
    finally:
        store.close()


@pytest.mark.parametrize(("criteria", "index"), [
    (SearchCriteria(ids=("a", "b")), "sqlite_autoindex_resources_1 (resource_type=? AND id=?)"),
    (SearchCriteria(patient_reference=("Patient/1",)), "ix_resources_patient_reference (resource_type=? AND patient_reference=?)"),
    (SearchCriteria(patient=(PATIENT, Identifier(system=PATIENT.system, value="other"))),
     "ix_resources_patient (resource_type=? AND patient_system=? AND patient_value=?)"),
    (SearchCriteria(patient=(PATIENT,)), "ix_resources_patient (resource_type=? AND patient_system=? AND patient_value=?)"),
    (SearchCriteria(tokens=((TokenCriterion("identifier", "urn:oid:2.25.1", "urn:ietf:rfc:3986"),),)),
     "sqlite_autoindex_resources_1 (resource_type=? AND id=?)"),
    # several identifiers: each its own range of the token index, not every token of the type
    (SearchCriteria(tokens=((TokenCriterion("identifier", "urn:oid:2.25.1", "urn:ietf:rfc:3986"),
                             TokenCriterion("identifier", "urn:oid:2.25.2", None)),)),
     "ix_tokens_param_code_system (param=? AND code=?)"),
])
def test_selective_searches_go_through_their_index_not_the_whole_type(tmp_path: Path, criteria: SearchCriteria,
                                                                      index: str) -> None:
    """An _id, a patient reference, several patients or an identifier select a few rows; SQLite,
    without statistics, walked every resource of the type in result order to find them (the
    order index). The plan on the embedded store: the criterion's index, then a sort."""
    from adapter.store.search import search_statement

    store = SqlRecordStore(f"sqlite:///{tmp_path / 'plan.db'}", audit_key=TEST_AUDIT_KEY)
    try:
        sql = str(search_statement("Media", criteria).compile(store.engine, compile_kwargs={"literal_binds": True}))
        with store.engine.connect() as conn:
            plan = " | ".join(str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        assert index in plan and "ix_resources_type_last_updated" not in plan, plan
        assert "ix_tokens_resource" not in plan, plan
    finally:
        store.close()


def test_audit_is_listed_newest_first(store: SqlRecordStore) -> None:
    store.save_ingest(make_unit(audit_events=[{"n": 1}, {"n": 2}]))
    for n in range(3, 6):
        store.append_audit({"n": n, "nested": {"ok": [True, None]}})
    assert [e["n"] for e in store.list_audit()] == [5, 4, 3, 2, 1]
    assert [e["n"] for e in store.list_audit(limit=2)] == [5, 4]
    assert store.list_audit(limit=0) == []
    assert store.list_audit()[0]["nested"] == {"ok": [True, None]}


def test_audit_is_exported_in_the_order_stored_by_sequence_number_and_time(store: SqlRecordStore) -> None:
    """iter_audit: after a sequence number (a SIEM continues from the last it got), from and
    until an instant (the recorded index finds the start), a batch at a time."""
    store.save_ingest(make_unit(audit_events=[{"n": 1}, {"n": 2}]))
    for n in range(3, 8):
        store.append_audit({"n": n})
    everything = list(store.iter_audit(batch=2))
    assert [e["n"] for _, e in everything] == [1, 2, 3, 4, 5, 6, 7]
    seqs = [seq for seq, _ in everything]
    assert seqs == sorted(seqs) and len(set(seqs)) == 7
    assert [e["n"] for _, e in store.iter_audit(after=seqs[4], batch=1)] == [6, 7]
    assert list(store.iter_audit(after=seqs[-1])) == []
    with store.engine.begin() as conn:  # the events' recorded instants, a minute apart
        for i, seq in enumerate(seqs):
            conn.execute(sa.update(audit_table).where(audit_table.c.seq == seq)
                         .values(recorded=datetime(2026, 1, 1, 10, i, tzinfo=UTC)))
    since = datetime(2026, 1, 1, 11, 2, tzinfo=timezone(timedelta(hours=1)))  # 10:02Z
    until = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    assert [e["n"] for _, e in store.iter_audit(since=since, batch=2)] == [3, 4, 5, 6, 7]
    assert [e["n"] for _, e in store.iter_audit(since=since, until=until, batch=2)] == [3, 4, 5]
    assert [e["n"] for _, e in store.iter_audit(until=until)] == [1, 2, 3, 4, 5]
    assert [e["n"] for _, e in store.iter_audit(after=seqs[3], since=since)] == [5, 6, 7]
    assert list(store.iter_audit(since=datetime(2027, 1, 1, tzinfo=UTC))) == []


# -- durability, schema and concurrency -------------------------------------------------------


def test_data_survives_reopening(open_records: StoreFactory) -> None:
    first = open_records()
    unit = make_unit()
    first.save_ingest(unit)
    first.close()
    again = open_records()
    assert again.find_receipt(idempotency_key=unit.idempotency_key) == unit.receipt
    assert all(again.get(r.resource_type, r.id) is not None for r in unit.resources)
    with again.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM schema_version")).scalars().all() == [SCHEMA_VERSION]


def test_newer_schema_is_refused(open_records: StoreFactory) -> None:
    store = open_records()
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_version (version, applied) VALUES (99, :t)"),
                     {"t": "2030-01-01T00:00:00.000000+00:00" if conn.dialect.name == "sqlite"
                      else datetime(2030, 1, 1, tzinfo=UTC)})
    store.close()
    with pytest.raises(ConfigurationError, match="schema version 99"):
        open_records()


def test_ping_answers_the_schema_version_and_fails_for_a_missing_table_or_another_version(
        store: SqlRecordStore) -> None:
    """Readiness (GET /health/ready) asks ping: a database restored in part or replaced under
    the running adapter is not ready, though its schema_version table still answers."""
    assert store.ping() == SCHEMA_VERSION
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE outbox"))
    with pytest.raises(StorageError, match="lacks table.*outbox"):
        store.ping()


def test_ping_fails_for_a_schema_version_other_than_the_adapters(store: SqlRecordStore) -> None:
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO schema_version (version, applied) VALUES (99, :t)"),
                     {"t": "2030-01-01T00:00:00.000000+00:00" if conn.dialect.name == "sqlite"
                      else datetime(2030, 1, 1, tzinfo=UTC)})
    with pytest.raises(StorageError, match="schema version 99"):
        store.ping()


def test_concurrent_ingests(store: SqlRecordStore) -> None:
    errors: list[BaseException] = []
    units = [[make_unit() for _ in range(10)] for _ in range(8)]
    start = threading.Barrier(8)

    def work(mine: list[IngestUnit]) -> None:
        try:
            start.wait()
            for unit in mine:
                store.save_ingest(unit)
                assert store.find_receipt(idempotency_key=unit.idempotency_key) == unit.receipt
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(mine,)) for mine in units]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(list(store.search_index("Media", SearchCriteria()))) == 80
    assert len(store.list_audit(1000)) == 80


def test_concurrent_updates_with_if_match_let_one_win(store: SqlRecordStore) -> None:
    store.create(make_resource("Media", "m1"))
    outcomes: list[str] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        try:
            store.update(make_resource("Media", "m1", note=str(n)), if_match=1)
            outcomes.append("ok")
        except Conflict:
            outcomes.append("conflict")
        except BaseException as exc:  # noqa: BLE001
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    current = store.get("Media", "m1")
    assert current is not None and current.version_id == 2
    assert [v for v, _ in history(store, "Media", "m1")] == [1, 2]


# -- DICOM instances and the outbox -----------------------------------------------------------

SC = "1.2.840.10008.5.1.4.1.1.7"
PACS = "PACS@127.0.0.1:11112"
ARCHIVE = "ARCHIVE@127.0.0.1:11113"


def make_instance(*, study: str = "1.2.3", series: str = "1.2.3.4", uid: str | None = None,
                  patient: Identifier = PATIENT, modality: str = "OT", record_id: str | None = None,
                  blob_sha256: str | None = "a" * 64, study_date: str | None = "20240101",
                  created: datetime | None = None) -> DicomInstance:
    return DicomInstance(sop_instance_uid=uid or f"2.25.{uuid.uuid4().int}", study_instance_uid=study,
                         series_instance_uid=series, sop_class_uid=SC, modality=modality,
                         record_type="Media", record_id=record_id or new_id(), patient=patient,
                         blob_sha256=blob_sha256, study_date=study_date, created=created)


def make_dicom_unit(instance: DicomInstance | None = None, *, destinations: tuple[str, ...] = (),
                    **kwargs: Any) -> IngestUnit:
    unit = make_unit(key=None, **kwargs)
    instance = instance or make_instance(patient=unit.patient, record_id=unit.resources[0].id)
    unit.dicom_instance = instance
    unit.outbox = [NewOutboxItem(instance.sop_instance_uid, d) for d in destinations]
    return unit


def test_save_ingest_writes_the_dicom_instance(store: SqlRecordStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    unit = make_dicom_unit()
    store.save_ingest(unit)
    assert unit.dicom_instance is not None
    found = store.find_dicom_instance(unit.dicom_instance.sop_instance_uid)
    assert found is not None and found.created is not None
    assert found.created.utcoffset() == timedelta(0) and before <= found.created <= datetime.now(UTC)
    assert found == DicomInstance(**{**unit.dicom_instance.__dict__, "created": found.created})
    assert store.find_dicom_instance("9.9.9") is None
    # an instance generated from a photo has no received file; a given created is kept
    created = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    generated = make_dicom_unit(make_instance(blob_sha256=None, study_date=None, created=created))
    store.save_ingest(generated)
    assert generated.dicom_instance is not None
    again = store.find_dicom_instance(generated.dicom_instance.sop_instance_uid)
    assert again is not None and again.blob_sha256 is None and again.study_date is None
    assert again.created == created


def test_same_sop_instance_uid_is_conflict_and_writes_nothing(store: SqlRecordStore) -> None:
    first = make_dicom_unit(destinations=(PACS,))
    store.save_ingest(first)
    assert first.dicom_instance is not None
    again = make_dicom_unit(make_instance(uid=first.dicom_instance.sop_instance_uid), destinations=(ARCHIVE,))
    with pytest.raises(Conflict, match="SOP Instance UID"):
        store.save_ingest(again)
    assert_nothing_visible_except(store, again, audit_count=1)
    assert [i.destination for i in store.list_outbox()] == [PACS]
    assert store.find_dicom_instance(first.dicom_instance.sop_instance_uid) is not None


def assert_nothing_visible_except(store: SqlRecordStore, unit: IngestUnit, *, audit_count: int) -> None:
    for new in unit.resources:
        assert store.get(new.resource_type, new.id) is None
    assert store.find_receipt(patient=unit.patient, stored_sha256=unit.stored_sha256) is None
    assert len(store.list_audit(1000)) == audit_count


def test_dicom_unit_is_atomic_when_a_later_write_fails(store: SqlRecordStore) -> None:
    unit = make_dicom_unit(destinations=(PACS, PACS))  # the same destination twice: unique violation last
    with pytest.raises(Conflict, match="queued for this destination"):
        store.save_ingest(unit)
    assert unit.dicom_instance is not None
    assert store.find_dicom_instance(unit.dicom_instance.sop_instance_uid) is None
    assert store.list_outbox() == []
    assert_nothing_visible(store, unit)
    # and the other way round: a failing resource leaves no instance nor outbox item behind
    clash = make_dicom_unit(destinations=(PACS,))
    clash.resources.append(make_resource(clash.resources[0].resource_type, clash.resources[0].id))
    with pytest.raises(Conflict):
        store.save_ingest(clash)
    assert clash.dicom_instance is not None
    assert store.find_dicom_instance(clash.dicom_instance.sop_instance_uid) is None
    assert store.list_outbox() == []


def test_outbox_item_needs_a_stored_instance(store: SqlRecordStore) -> None:
    unit = make_unit(key=None)
    unit.outbox = [NewOutboxItem("1.2.3.999", PACS)]
    with pytest.raises(StorageError):
        store.save_ingest(unit)
    assert_nothing_visible(store, unit)
    # an earlier instance may be queued again to another destination by a later unit
    first = make_dicom_unit(destinations=(PACS,))
    store.save_ingest(first)
    assert first.dicom_instance is not None
    later = make_unit(key=None)
    later.outbox = [NewOutboxItem(first.dicom_instance.sop_instance_uid, ARCHIVE)]
    store.save_ingest(later)
    assert sorted(i.destination for i in store.list_outbox()) == [ARCHIVE, PACS]
    assert store.outbox_counts() == {"pending": 2}


def test_search_dicom_instances(store: SqlRecordStore) -> None:
    t0 = datetime(2024, 1, 1, 10, tzinfo=UTC)
    made = {
        "a2": make_instance(study="1.1", series="1.1.2", modality="OT", created=t0 + timedelta(seconds=2)),
        "a1": make_instance(study="1.1", series="1.1.1", modality="XC", created=t0 + timedelta(seconds=5)),
        "a0": make_instance(study="1.1", series="1.1.1", modality="XC", created=t0 + timedelta(seconds=1)),
        "b": make_instance(study="1.2", series="1.2.1", modality="OT", patient=OTHER_PATIENT, created=t0),
    }
    for instance in made.values():
        store.save_ingest(make_dicom_unit(instance, patient=instance.patient))
    name = {i.sop_instance_uid: n for n, i in made.items()}

    def search(**kwargs: Any) -> list[str]:
        return [name[i.sop_instance_uid] for i in store.search_dicom_instances(**kwargs)]

    assert search() == ["a0", "a1", "a2", "b"]          # study, series, created
    assert search(study="1.1") == ["a0", "a1", "a2"]
    assert search(series="1.1.1") == ["a0", "a1"]
    assert search(study="1.1", modality="OT") == ["a2"]
    assert search(patient=OTHER_PATIENT) == ["b"]
    assert search(patient=Identifier(system="urn:other", value=OTHER_PATIENT.value)) == []
    assert search(patient_value=OTHER_PATIENT.value) == ["b"] and search(patient_value="nobody") == []
    assert search(patient_value=PATIENT.value, series="1.1.1") == ["a0", "a1"]
    assert search(sop_instance=made["a1"].sop_instance_uid) == ["a1"]
    assert search(study="1.2", series="1.1.1") == []
    [found] = store.search_dicom_instances(sop_instance=made["b"].sop_instance_uid)
    assert found == made["b"]


def test_what_a_received_object_says_of_its_study_round_trips(store: SqlRecordStore) -> None:

    instance = dataclasses.replace(make_instance(), patient_name="Doe^Jane=\u5c71\u7530^\u82b1\u5b50",
                                   study_description="Wound care", accession_number="ACC-1", study_time="101500")
    store.save_ingest(make_dicom_unit(instance))
    kept = store.find_dicom_instance(instance.sop_instance_uid)
    assert kept is not None and dataclasses.replace(kept, created=None) == instance
    [found] = store.search_dicom_instances(sop_instance=instance.sop_instance_uid)
    assert (found.patient_name, found.study_description) == ("Doe^Jane=\u5c71\u7530^\u82b1\u5b50", "Wound care")
    assert store.search_dicom_instances(accession_number="ACC-1") == [found]
    assert store.search_dicom_instances(accession_number="ACC-2") == []
    assert [i for batch in store.iter_dicom_instances(accession_number="ACC-1") for i in batch] == [found]


def test_reindex_photo_study_dates_gives_each_study_its_first_photos_once_per_version(store: SqlRecordStore) -> None:
    """The StudyDate, StudyTime and offset of the instances made from posted photos' records (no
    object as received) are derived afresh when the version changes, on both databases: every
    instance of a study gets those of the record of the study's first photo (by created), the
    same in every instance (PS3.3 C.7.2.1); a received object's own are left as they came; the
    same version again does nothing."""
    start = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)

    def stored(blob_sha256: str | None, study_date: str | None, study: str, minutes: int) -> DicomInstance:
        unit = make_dicom_unit()  # the instance of its record, the unit's Media
        unit.dicom_instance = make_instance(patient=unit.patient, record_id=unit.resources[0].id, study=study,
                                            series=f"{study}.1",  # a series is one study's
                                            blob_sha256=blob_sha256, study_date=study_date,
                                            created=start + timedelta(minutes=minutes))
        unit.resources[0].resource["issued"] = f"2024-03-01T09:{minutes:02d}:00Z"  # which one study_of read
        store.save_ingest(unit)
        return unit.dicom_instance

    later, first = stored(None, "20261127", "1.2.7", 5), stored(None, "20240301", "1.2.7", 1)
    alone, received = stored(None, None, "1.2.8", 2), stored("b" * 64, "20200101", "1.2.7", 0)
    seen: list[str] = []

    def study_of(record: dict[str, Any]) -> tuple[str, str, str]:
        seen.append(record["issued"])
        return "20240301", f"09{record['issued'][14:16]}00", "+0100"

    assert store.reindex_photo_study_dates("v-test", study_of, batch=1) == 3  # later, first, alone
    assert sorted(seen) == ["2024-03-01T09:01:00Z", "2024-03-01T09:02:00Z"]  # each study's first photo's
    found = {i.sop_instance_uid: store.find_dicom_instance(i.sop_instance_uid) for i in (later, first, alone, received)}
    assert [(f.study_date, f.study_time) for f in found.values() if f is not None] == \
        [("20240301", "090100"), ("20240301", "090100"), ("20240301", "090200"), ("20200101", None)]
    with store.engine.connect() as conn:
        offsets = dict(conn.execute(sa.text("SELECT sop_instance_uid, timezone_offset FROM dicom_instances")).all())
    assert [offsets[i.sop_instance_uid] for i in (later, first, alone, received)] == ["+0100", "+0100", "+0100", None]
    assert {i.sop_instance_uid for i in store.search_dicom_instances(study_dates=("20240301", "20240301"))} \
        == {later.sop_instance_uid, first.sop_instance_uid, alone.sop_instance_uid}
    assert store.reindex_photo_study_dates("v-test", lambda _: pytest.fail("derived again")) == 0
    assert store.reindex_photo_study_dates("v-next", lambda _: None) == 0  # None: left as it is


def test_a_photo_opening_its_study_is_refused_once_another_opened_it(store: SqlRecordStore) -> None:
    """A posted photo's instance is saved as the first of its study (``opens_study``: it carries
    its own StudyDate) only while no posted photo of the study is stored; one stored by then (two
    photos of an encounter stored at once) makes it StudyStarted with nothing written, so the
    ingest makes it again to join the study. A received object of the study does not open it."""
    assert store.find_study_photo("1.2.9") is None
    received = make_dicom_unit(make_instance(study="1.2.9"))
    store.save_ingest(received)
    assert store.find_study_photo("1.2.9") is None
    opening = make_dicom_unit(make_instance(study="1.2.9", blob_sha256=None))
    opening.opens_study = True
    store.save_ingest(opening)
    assert opening.dicom_instance is not None
    found = store.find_study_photo("1.2.9")
    assert found is not None and found.sop_instance_uid == opening.dicom_instance.sop_instance_uid
    late = make_dicom_unit(make_instance(study="1.2.9", blob_sha256=None))
    late.opens_study = True
    with pytest.raises(StudyStarted):
        store.save_ingest(late)
    assert late.dicom_instance is not None and store.find_dicom_instance(late.dicom_instance.sop_instance_uid) is None
    assert store.get("Media", late.resources[0].id) is None
    late.opens_study = False  # made again, joining the study
    store.save_ingest(late)
    assert store.find_dicom_instance(late.dicom_instance.sop_instance_uid) is not None


def test_an_instance_of_another_patient_is_not_filed_into_a_held_study_or_series(store: SqlRecordStore) -> None:
    """The clinical safety review (finding 1): an instance of another patient whose study (and
    series) another patient's instance holds was written, so the study held both patients'
    images. One study is one patient's, and one series one study's (PS3.3 A.1.2): save_ingest
    refuses an instance whose Study Instance UID is held for another patient, or whose Series
    Instance UID is held in another study, with InstanceConflict naming the UID (never the other
    patient's identifier), and writes nothing; the same patient's next instance of the study and
    series is written. A posted photo's instance (no object as received) holds its study alike.
    Seen failing: the other patient's instance was written."""
    held = make_dicom_unit(make_instance(study="1.2.9", series="1.2.9.1", blob_sha256=None))
    store.save_ingest(held)
    same = make_dicom_unit(make_instance(study="1.2.9", series="1.2.9.1"))
    store.save_ingest(same)  # the same patient's: its study and series
    refused = [
        (make_dicom_unit(make_instance(study="1.2.9", series="1.2.9.2", patient=OTHER_PATIENT),
                         patient=OTHER_PATIENT), ["(0020,000D) StudyInstanceUID"], "study is held for another patient"),
        (make_dicom_unit(make_instance(study="1.2.9", series="1.2.9.1", patient=OTHER_PATIENT),
                         patient=OTHER_PATIENT), ["(0020,000D) StudyInstanceUID"], "study is held for another patient"),
        (make_dicom_unit(make_instance(study="1.2.9", series="1.2.9.1",
                                       patient=Identifier(system="urn:oid:9.9.9", value=PATIENT.value))),
         ["(0020,000D) StudyInstanceUID"], "study is held for another patient"),
        (make_dicom_unit(make_instance(study="1.2.10", series="1.2.9.1")), ["(0020,000E) SeriesInstanceUID"],
         "series is held in another study"),
        (make_dicom_unit(make_instance(study="1.2.10", series="1.2.9.1", patient=OTHER_PATIENT),
                         patient=OTHER_PATIENT), ["(0020,000E) SeriesInstanceUID"], "series is held in another study"),
    ]
    audited = store.list_audit(1000)
    for unit, expression, said in refused:
        with pytest.raises(InstanceConflict) as conflict:
            store.save_ingest(unit)
        assert conflict.value.expression == expression and said in conflict.value.diagnostics
        assert PATIENT.value not in conflict.value.diagnostics and OTHER_PATIENT.value not in conflict.value.diagnostics
        assert unit.dicom_instance is not None and store.find_dicom_instance(unit.dicom_instance.sop_instance_uid) is None
        assert all(store.get(new.resource_type, new.id) is None for new in unit.resources)
    assert store.list_audit(1000) == audited
    assert {i.patient for i in store.search_dicom_instances(study="1.2.9")} == {PATIENT}
    assert store.search_dicom_instances(study="1.2.10") == []
    # another study of the other patient is theirs to open
    store.save_ingest(make_dicom_unit(make_instance(study="1.2.10", series="1.2.10.1", patient=OTHER_PATIENT),
                                      patient=OTHER_PATIENT))


@pytest.mark.parametrize("second_uids", [
    {"study": "1.2.20", "series": "1.2.20.2", "patient": OTHER_PATIENT},  # the other patient, the same study
    {"study": "1.2.21", "series": "1.2.20.1", "patient": PATIENT},  # the same series, another study
], ids=["study", "series"])
def test_two_patients_opening_one_study_at_once_do_not_both_get_it(store: SqlRecordStore,
                                                                   second_uids: dict[str, Any]) -> None:
    """Two instances of two patients in one study not held yet, saved at once: the first
    writer's transaction is held open after it wrote its instance (an after-execute hook) while
    the second saves. The second waits for the first to commit (SQLite's single writer,
    PostgreSQL's advisory lock of the study) and is then refused: one study is one patient's.
    The same holds for one series opened in two studies at once. Seen failing on PostgreSQL:
    without the locks both were written."""
    first = make_instance(study="1.2.20", series="1.2.20.1")
    second = make_instance(**second_uids)
    units = [make_dicom_unit(first, patient=first.patient), make_dicom_unit(second, patient=second.patient)]
    wrote, second_done = threading.Event(), threading.Event()
    holder: list[threading.Thread] = []
    outcomes: dict[int, BaseException | None] = {}

    def hold(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if threading.current_thread() in holder and statement.lstrip().upper().startswith(
                "INSERT INTO DICOM_INSTANCES"):
            wrote.set()
            second_done.wait(1.5)  # the second's save, were it not to wait for this one

    def save(n: int) -> None:
        try:
            store.save_ingest(units[n])
            outcomes[n] = None
        except BaseException as exc:  # noqa: BLE001 - asserted below
            outcomes[n] = exc
        finally:
            if n == 1:
                second_done.set()

    sa.event.listen(store.engine, "after_cursor_execute", hold)
    try:
        threads = [threading.Thread(target=save, args=(n,)) for n in range(2)]
        holder.append(threads[0])
        threads[0].start()
        assert wrote.wait(10)
        threads[1].start()
        for thread in threads:
            thread.join(60)
    finally:
        sa.event.remove(store.engine, "after_cursor_execute", hold)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], InstanceConflict), outcomes[1]
    assert store.find_dicom_instance(second.sop_instance_uid) is None


def test_search_dicom_instances_by_study_date(store: SqlRecordStore) -> None:
    """QIDO-RS StudyDate (PS3.4 C.2.2.2.5): one date, or a range open at either end, inclusive; an
    instance without a StudyDate never matches. Through ix_dicom_instances_study_date."""
    made = {name: make_instance(study_date=date) for name, date in
            (("jan", "20240105"), ("feb", "20240201"), ("mar", "20240331"), ("none", None))}
    for instance in made.values():
        store.save_ingest(make_dicom_unit(instance))
    name = {i.sop_instance_uid: n for n, i in made.items()}

    def search(start: str | None, end: str | None) -> list[str]:
        return sorted(name[i.sop_instance_uid] for i in store.search_dicom_instances(study_dates=(start, end)))

    assert search("20240201", "20240201") == ["feb"]
    assert search("20240105", "20240331") == ["feb", "jan", "mar"]
    assert search("20240106", None) == ["feb", "mar"]
    assert search(None, "20240201") == ["feb", "jan"]
    assert search(None, None) == ["feb", "jan", "mar"]
    assert search("20250101", None) == []
    assert sorted(name[i.sop_instance_uid] for i in store.search_dicom_instances()) == ["feb", "jan", "mar", "none"]
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute",
                    lambda conn, cursor, statement, *rest: statements.append(statement))
    store.search_dicom_instances(study_dates=("20240101", "20240131"))
    [query] = [s for s in statements if "dicom_instances" in s]
    if store.engine.dialect.name == "sqlite":
        with store.engine.connect() as conn:
            plan = " | ".join(str(row[3]) for row in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {query}", ("20240101", "20240131")))
        assert "ix_dicom_instances_study_date (study_date>? AND study_date<?)" in plan, plan


NAMED = {  # PatientName as received -> the name a test calls it by
    "Doe^John^^^": "john", "DOE^Jane": "jane", "Yamada^Taro=\u5c71\u7530^\u592a\u90ce=\u3084\u307e\u3060^\u305f\u308d\u3046": "yamada",
    "Stra\u00dfe^Eva": "strasse", "\u212aelvin^Lord": "kelvin", "100%^Per": "percent", "1000^Mil": "thousand",
    "a_b^Under": "underscore", "axb^Ex": "axb", "back\\slash^B": "backslash", "Four=b=c=Dxx": "four",
    "\ud7ff^Last": "d7ff", "\U0010ffff^Max": "max",
}


def stored_names(store: SqlRecordStore) -> dict[str, str]:
    """One instance per name of NAMED, a photo's (no name) and one without a description; their
    SOP Instance UIDs -> names."""
    made = {name: dataclasses.replace(make_instance(), patient_name=pn,
                                      study_description="Wound care" if name == "john" else "wound check")
            for pn, name in NAMED.items()}
    made["photo"] = make_instance(blob_sha256=None)
    for instance in made.values():
        store.save_ingest(make_dicom_unit(instance))
    return {i.sop_instance_uid: name for name, i in made.items()}


def test_search_dicom_instances_by_patient_name_and_study_description_keys(store: SqlRecordStore) -> None:
    """QIDO-RS candidates by PatientName (its key, adapter.model.dicom.person_name_key: case
    folded, Straße as strasse and the Kelvin sign as k, empty trailing components dropped) and by
    StudyDescription (case-sensitive), a prefix each: ranges of their indexes, so %, _ and \\ are
    characters like any other; a prefix of one group may start any group (ideographic, phonetic);
    a name with more groups than three is a candidate of every such prefix. A superset, which the
    caller matches exactly: never less than every match."""
    name = stored_names(store)

    def search(**kwargs: Any) -> list[str]:
        found = sorted(name[i.sop_instance_uid] for i in store.search_dicom_instances(**kwargs))
        streamed = sorted(name[i.sop_instance_uid] for batch in store.iter_dicom_instances(batch=2, **kwargs)
                          for i in batch)
        assert found == streamed
        return found

    def by_name(prefix: str, any_group: bool = True) -> list[str]:
        return search(patient_name=NamePrefix(prefix, any_group))

    assert by_name("doe") == ["four", "jane", "john"]          # the name of four groups: a candidate
    assert by_name("doe^john", any_group=False) == ["john"]
    assert by_name("doe^j", any_group=False) == ["jane", "john"]
    assert by_name("\u5c71\u7530") == ["four", "yamada"]       # the ideographic group
    assert by_name("\u3084\u307e") == ["four", "yamada"]       # the phonetic group
    assert by_name("\u5c71\u7530", any_group=False) == []      # a pattern of groups: the whole name
    assert by_name("yamada^taro=\u5c71", any_group=False) == ["yamada"]
    assert by_name("strasse^e") == ["four", "strasse"] and by_name("kelvin") == ["four", "kelvin"]
    assert by_name("100%") == ["four", "percent"] and by_name("a_") == ["four", "underscore"]
    assert by_name("back\\") == ["backslash", "four"]
    assert by_name("\ud7ff") == ["d7ff", "four"] and by_name("\U0010ffff") == ["four", "max"]
    assert by_name("four=b=c=dxx", any_group=False) == ["four"]
    assert by_name("zzz") == ["four"] and by_name("zzz", any_group=False) == []
    assert search(study_description_prefix="Wound") == ["john"]
    assert search(study_description_prefix="wound") == sorted(set(NAMED.values()) - {"john"})
    assert search(study_description_prefix="Wound care, left") == []
    assert search(patient_name=NamePrefix("doe", any_group=True), study_description_prefix="wound") == ["four", "jane"]
    assert store.fill_dicom_match_keys() == 0  # written with the instances


def test_instances_without_match_keys_are_candidates_until_filled(store: SqlRecordStore) -> None:
    """An instance whose keys are not derived (stored before schema 12, or by older code still
    running) is a candidate of every PatientName and StudyDescription prefix, never lost; the
    fill derives them a batch at a time, once."""
    name = stored_names(store)
    with store.engine.begin() as conn:
        conn.execute(sa.update(dicom_instances_table).where(
            dicom_instances_table.c.sop_instance_uid.in_([u for u, n in name.items() if n in ("john", "kelvin")]))
            .values({column: None for column in MATCH_KEYS}))

    def search(**kwargs: Any) -> list[str]:
        return sorted(name[i.sop_instance_uid] for i in store.search_dicom_instances(**kwargs))

    assert search(patient_name=NamePrefix("zzz", any_group=True)) == ["four", "john", "kelvin"]
    assert search(patient_name=NamePrefix("zzz", any_group=False)) == ["john", "kelvin"]
    assert search(study_description_prefix="Zzz") == ["john", "kelvin"]
    assert store.fill_dicom_match_keys(batch=3) == 2
    assert search(patient_name=NamePrefix("zzz", any_group=True)) == ["four"]
    assert search(patient_name=NamePrefix("kelvin^l", any_group=False)) == ["kelvin"]
    assert search(study_description_prefix="Wound c") == ["john"]
    assert store.fill_dicom_match_keys() == 0


@pytest.mark.parametrize(("criteria", "indexes"), [
    ({"patient_name": NamePrefix("smith", any_group=True)},
     ["ix_dicom_instances_patient_name_key (patient_name_key>? AND patient_name_key<?)",
      "ix_dicom_instances_patient_name_key (patient_name_key=?)",  # IS NULL: not derived yet
      "ix_dicom_instances_patient_name_ideographic_key (patient_name_ideographic_key>? AND patient_name_ideographic_key<?)",
      "ix_dicom_instances_patient_name_phonetic_key (patient_name_phonetic_key>? AND patient_name_phonetic_key<?)",
      "ix_dicom_instances_patient_name_phonetic_key (patient_name_phonetic_key=?)"]),
    ({"patient_name": NamePrefix("smith^j=", any_group=False)},
     ["ix_dicom_instances_patient_name_key (patient_name_key>? AND patient_name_key<?)"]),
    ({"study_description_prefix": "Wound"},
     ["ix_dicom_instances_study_description_key (study_description_key>? AND study_description_key<?)"]),
])
def test_patient_name_and_study_description_candidates_are_read_through_their_indexes(
        tmp_path: Path, criteria: dict[str, Any], indexes: list[str]) -> None:
    """QIDO-RS by PatientName or StudyDescription alone (a viewer's patient search) loaded every
    instance of the store and matched each in Python; the candidates are now ranges of the key
    indexes (the plan on the embedded store: no scan of dicom_instances)."""
    from adapter.store.sql import _dicom_ordered, _dicom_search

    store = SqlRecordStore(f"sqlite:///{tmp_path / 'plan.db'}", audit_key=TEST_AUDIT_KEY)
    try:
        sql = str(_dicom_ordered(_dicom_search(**criteria)).compile(
            store.engine, compile_kwargs={"literal_binds": True}))
        with store.engine.connect() as conn:
            plan = " | ".join(str(row[3]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
        assert all(f"SEARCH dicom_instances USING INDEX {index}" in plan for index in indexes), plan
        assert "SCAN dicom_instances" not in plan, plan
    finally:
        store.close()


def test_postgresql_compares_match_keys_in_code_point_order_through_their_indexes(postgres_url: str) -> None:
    """On PostgreSQL the key columns take the "C" collation: a prefix's values lie in one range
    only in code point order (the database's own collation, en_US or ICU, orders by language
    rules, and its index would not serve a LIKE). The planner, asked to avoid a scan (the table
    is too small for statistics to prefer the indexes), serves every range by a key index."""
    from adapter.store.sql import _dicom_ordered, _dicom_search
    from tests.support.postgres import postgres_schema

    with postgres_schema("test_keys") as url:
        store = SqlRecordStore(url, audit_key=TEST_AUDIT_KEY)
        try:
            with store.engine.connect() as conn:
                collations = dict(conn.execute(sa.text(
                    "SELECT column_name, collation_name FROM information_schema.columns "
                    "WHERE table_name = 'dicom_instances' AND table_schema = current_schema() "
                    "AND column_name LIKE '%\\_key'")).all())
            assert collations == dict.fromkeys(MATCH_KEYS, "C")
            for criteria, columns in (({"patient_name": NamePrefix("smith", any_group=True)}, MATCH_KEYS[:3]),
                                      ({"study_description_prefix": "Wound"}, MATCH_KEYS[3:])):
                sql = str(_dicom_ordered(_dicom_search(**criteria)).compile(
                    store.engine, compile_kwargs={"literal_binds": True}))
                with store.engine.begin() as conn:
                    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
                    plan = " | ".join(str(row[0]) for row in conn.exec_driver_sql(f"EXPLAIN {sql}"))
                assert "Seq Scan" not in plan, plan
                assert all(f"Index Scan on ix_dicom_instances_{column}" in plan for column in columns), plan
        finally:
            store.close()


def released(uid: str, key: str = "k1") -> str:
    """A stand-in for a keyed UID mapping (the store only keeps what it is given)."""
    return f"2.25.{int.from_bytes(uuid.uuid5(uuid.NAMESPACE_OID, key + uid).bytes, 'big')}"


def released_rows(instance: DicomInstance, key: str = "k1") -> list[ReleasedUids]:
    return [ReleasedUids(view, instance.sop_instance_uid, released(view + instance.study_instance_uid, key),
                         released(view + instance.series_instance_uid, key),
                         released(view + instance.sop_instance_uid, key))
            for view in ("deidentified", "pseudonymised")]


def test_released_uids_are_saved_with_the_instance_and_found(store: SqlRecordStore) -> None:
    made = [make_instance(study="1.1", series="1.1.1"), make_instance(study="1.1", series="1.1.1"),
            make_instance(study="1.1", series="1.1.2"), make_instance(study="1.2", series="1.2.1")]
    for instance in made:
        unit = make_dicom_unit(instance)
        unit.released_uids = released_rows(instance)
        store.save_ingest(unit)
    stored = [store.find_dicom_instance(i.sop_instance_uid) for i in made]

    def find(view: str = "deidentified", **kwargs: str) -> list[DicomInstance]:
        return store.search_released_dicom_instances(view, **kwargs)

    assert find(study=released("deidentified1.1")) == sorted(stored[:3], key=lambda i: (
        i.series_instance_uid, i.created, i.sop_instance_uid))
    assert find(series=released("deidentified1.1.1")) == sorted(stored[:2], key=lambda i: (i.created,
                                                                                            i.sop_instance_uid))
    assert find(sop_instance=released("deidentified" + made[3].sop_instance_uid)) == [stored[3]]
    assert find(study=released("deidentified1.2"), sop_instance=released("deidentified" + made[3].sop_instance_uid)) \
        == [stored[3]]
    # the original UIDs, another view's, and a mismatched pair find nothing
    assert find(study="1.1") == [] and find(sop_instance=made[0].sop_instance_uid) == []
    assert find("pseudonymised", study=released("deidentified1.1")) == []
    assert len(find("pseudonymised", study=released("pseudonymised1.1"))) == 3
    assert find(study=released("deidentified1.2"), series=released("deidentified1.1.1")) == []
    with pytest.raises(ValueError):
        find()
    # a unit whose instance is refused (same SOP Instance UID) writes none of its rows
    again = make_dicom_unit(made[0])
    again.released_uids = released_rows(made[0], key="other")
    with pytest.raises(Conflict):
        store.save_ingest(again)
    assert find(sop_instance=released("deidentified" + made[0].sop_instance_uid, key="other")) == []


def test_released_uids_are_rebuilt_when_the_key_changes(store: SqlRecordStore) -> None:
    made = [make_instance() for _ in range(3)]
    for instance in made:
        store.save_ingest(make_dicom_unit(instance))    # no rows: as written before the index
    first = made[0].sop_instance_uid
    assert store.search_released_dicom_instances("deidentified", sop_instance=released("deidentified" + first)) == []
    assert store.index_released_uids("fingerprint-1", released_rows) == 3
    [found] = store.search_released_dicom_instances("deidentified", sop_instance=released("deidentified" + first))
    assert found.sop_instance_uid == first
    calls: list[str] = []

    def counting(instance: DicomInstance) -> list[ReleasedUids]:
        calls.append(instance.sop_instance_uid)
        return released_rows(instance, key="k2")

    assert store.index_released_uids("fingerprint-1", counting) == 0 and calls == []  # current: untouched
    assert store.index_released_uids("fingerprint-2", counting) == 3 and sorted(calls) == sorted(
        i.sop_instance_uid for i in made)
    assert store.search_released_dicom_instances("deidentified", sop_instance=released("deidentified" + first)) == []
    [found] = store.search_released_dicom_instances("deidentified",
                                                    sop_instance=released("deidentified" + first, key="k2"))
    assert found.sop_instance_uid == first
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dicom_released_uids")).scalar() == 6
        assert conn.execute(sa.text("SELECT fingerprint FROM key_fingerprints "
                                    "WHERE name NOT IN ('audit-start', 'audit-start-mac')")).scalars().all() == [
            "fingerprint-2"]


def test_released_uids_index_in_chunks(store: SqlRecordStore) -> None:
    made = [make_instance() for _ in range(1203)]
    for start in range(0, len(made), 300):
        with store.engine.begin() as conn:  # quicker than 1203 ingests; the rows save_ingest writes
            conn.execute(sa.insert(dicom_instances_table), [
                {"sop_instance_uid": i.sop_instance_uid, "study_instance_uid": i.study_instance_uid,
                 "series_instance_uid": i.series_instance_uid, "sop_class_uid": SC, "modality": "OT",
                 "record_type": "Media", "record_id": i.record_id, "patient_system": PATIENT.system,
                 "patient_value": PATIENT.value, "blob_sha256": None, "study_date": None,
                 "created": datetime.now(UTC)} for i in made[start:start + 300]])
    seen: list[str] = []

    def rows_of(instance: DicomInstance) -> list[ReleasedUids]:
        seen.append(instance.sop_instance_uid)
        return released_rows(instance)

    assert store.index_released_uids("fp", rows_of) == 1203
    assert sorted(seen) == sorted(i.sop_instance_uid for i in made) and len(set(seen)) == 1203
    last = made[-1].sop_instance_uid
    assert [i.sop_instance_uid for i in store.search_released_dicom_instances(
        "pseudonymised", sop_instance=released("pseudonymised" + last))] == [last]


def test_pseudonym_index_follows_the_patients_and_the_key(open_records: StoreFactory) -> None:
    def of(key: str) -> Callable[[Identifier], str]:
        return lambda p: f"{key}-{p.system}-{p.value}"

    # written before the index is kept (an older adapter, or before start-up's call): caught up
    before = open_records()
    before.save_ingest(make_unit())                                    # PATIENT's Media, Binary…
    before.create(make_resource("Consent", patient=OTHER_PATIENT, with_facts=False))
    before.create(make_resource("Media", patient=None, reference="Patient/7"))  # no identifier: not indexed
    store = open_records()
    assert store.find_pseudonymised([of("k1")(PATIENT)]) == []
    assert store.index_pseudonyms("k1", of("k1")) == 2                 # each patient once
    assert store.index_pseudonyms("k1", of("k1")) == 0                 # current: nothing to add
    assert store.find_pseudonymised([of("k1")(PATIENT), of("k1")(OTHER_PATIENT), "unknown"]) == sorted(
        [PATIENT, OTHER_PATIENT], key=lambda p: (p.system, p.value))
    assert store.find_pseudonymised([of("k1")(PATIENT)] * 3) == [PATIENT]
    # from then on every write indexes its patients in its own transaction: no scan needed
    new, consented, updated = (Identifier(system="urn:x", value=v) for v in ("new", "consented", "updated"))
    store.save_ingest(make_unit(patient=new))
    store.save_ingest(make_unit(patient=new))                          # indexed already: skipped
    store.create(make_resource("Consent", "c1", patient=consented, with_facts=False))
    store.update(make_resource("Consent", "c1", patient=updated, with_facts=False))
    assert store.find_pseudonymised([of("k1")(p) for p in (new, consented, updated)]) == [consented, new, updated]
    assert store.index_pseudonyms("k1", of("k1")) == 0
    # a refused write indexes nothing
    with pytest.raises(Conflict):
        store.create(make_resource("Consent", "c1", patient=Identifier(system="urn:x", value="refused"),
                                   with_facts=False))
    assert store.find_pseudonymised([of("k1")(Identifier(system="urn:x", value="refused"))]) == []
    # another process adding the same patient between the scan and the insert: skipped
    late = Identifier(system="urn:x", value="late")
    before.save_ingest(make_unit(patient=late))                        # a store that does not keep the index

    def racing(p: Identifier) -> str:
        with store.engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO patient_pseudonyms (pseudonym, patient_system, patient_value) "
                                 "VALUES (:ps, :s, :v)"), {"ps": of("k1")(p), "s": p.system, "v": p.value})
        return of("k1")(p)

    assert store.index_pseudonyms("k1", racing) == 1
    assert store.find_pseudonymised([of("k1")(late)]) == [late]
    # a new key: the index is rebuilt, the old pseudonyms find nothing
    assert store.index_pseudonyms("k2", of("k2")) == 5  # the patients the resources name now ("consented" was updated away)
    assert store.find_pseudonymised([of("k1")(PATIENT)]) == []
    assert store.find_pseudonymised([of("k2")(PATIENT)]) == [PATIENT]


def test_claiming_the_outbox_leaves_out_the_destinations_excluded(store: SqlRecordStore) -> None:
    """A destination whose worker is busy (a hung PACS) is left out of a claim, so its items stay
    for its own worker (adapter.services.outbox_workers)."""
    store.save_ingest(make_dicom_unit(destinations=(PACS, ARCHIVE)))
    now = datetime.now(UTC) + timedelta(seconds=1)
    assert [i.destination for i in store.claim_outbox(now, 10, exclude={PACS})] == [ARCHIVE]
    assert store.claim_outbox(now, 10, exclude={PACS}) == []
    assert [i.destination for i in store.claim_outbox(now, 10, exclude=())] == [PACS]


def test_outbox_lifecycle(store: SqlRecordStore) -> None:
    unit = make_dicom_unit(destinations=(PACS, ARCHIVE))
    before = datetime.now(UTC) - timedelta(seconds=1)
    store.save_ingest(unit)
    items = store.list_outbox()
    assert [(i.destination, i.status, i.attempts, i.last_error) for i in items] == \
        [(PACS, "pending", 0, None), (ARCHIVE, "pending", 0, None)]
    assert all(before <= i.next_attempt_at <= datetime.now(UTC) for i in items)
    assert all(i.created == i.updated == i.next_attempt_at for i in items)
    assert store.claim_outbox(before, 10) == []            # not due yet at an earlier time

    now = datetime.now(UTC) + timedelta(seconds=1)
    claimed = store.claim_outbox(now, 1)
    assert [i.destination for i in claimed] == [PACS]        # oldest first, limit kept
    assert claimed[0].next_attempt_at == now + timedelta(seconds=60)  # the lease
    rest = store.claim_outbox(now, 10)
    assert [i.destination for i in rest] == [ARCHIVE]        # leased items are not claimed twice
    assert store.claim_outbox(now, 10) == []
    assert store.claim_outbox(now, 0) == []

    store.mark_outbox_sent(claimed[0].id, now)
    retry_at = now + timedelta(minutes=5)
    store.mark_outbox_retry(rest[0].id, next_attempt_at=retry_at, error="association rejected " + "x" * 2000,
                            now=now)
    sent, pending = store.list_outbox()
    assert (sent.status, sent.attempts, sent.updated) == ("sent", 1, now)
    assert (pending.status, pending.attempts, pending.next_attempt_at) == ("pending", 1, retry_at)
    assert pending.last_error is not None and pending.last_error.startswith("association rejected")
    assert len(pending.last_error) == 1000
    assert store.list_outbox(status="sent") == [sent]
    assert store.list_outbox(status="pending") == [pending]
    assert store.list_outbox(limit=1) == [sent]
    assert store.list_outbox(limit=0) == []
    assert store.claim_outbox(retry_at - timedelta(seconds=1), 10) == []
    assert [i.id for i in store.claim_outbox(retry_at, 10)] == [pending.id]  # sent items never again

    store.mark_outbox_retry(pending.id, next_attempt_at=retry_at, error="gave up", now=now, give_up=True)
    failed = store.list_outbox(status="failed")
    assert [(i.id, i.attempts, i.last_error) for i in failed] == [(pending.id, 2, "gave up")]
    assert store.claim_outbox(retry_at + timedelta(days=1), 10) == []
    with pytest.raises(NotFound):
        store.mark_outbox_sent(999_999, now)
    with pytest.raises(NotFound):
        store.mark_outbox_retry(999_999, next_attempt_at=now, error="x", now=now)


def test_failed_outbox_items_are_requeued(store: SqlRecordStore) -> None:
    for _ in range(2):
        store.save_ingest(make_dicom_unit(destinations=(PACS, ARCHIVE)))
    now = datetime.now(UTC) + timedelta(seconds=1)
    items = store.claim_outbox(now, 10)
    assert len(items) == 4
    pacs_1, archive_1, pacs_2, archive_2 = sorted(items, key=lambda i: i.id)
    store.mark_outbox_sent(pacs_1.id, now)
    for item in (archive_1, pacs_2, archive_2):
        store.mark_outbox_retry(item.id, next_attempt_at=now, error="PACS down", now=now, give_up=True)
    assert store.requeue_outbox(now=now, ids=[]) == 0
    assert store.requeue_outbox(now=now, ids=[pacs_1.id]) == 0          # sent: never requeued

    later = now + timedelta(hours=1)
    assert store.requeue_outbox(now=later, destination=ARCHIVE) == 2
    by_id = {i.id: i for i in store.list_outbox()}
    for item in (archive_1, archive_2):
        again = by_id[item.id]
        assert (again.status, again.attempts, again.next_attempt_at, again.updated, again.last_error) == \
            ("pending", 0, later, later, "PACS down")                     # the last error stays
    assert by_id[pacs_2.id].status == "failed" and by_id[pacs_1.id].status == "sent"
    assert sorted(i.id for i in store.claim_outbox(later, 10)) == [archive_1.id, archive_2.id]

    assert store.requeue_outbox(now=later, ids=[pacs_2.id, 999_999]) == 1
    assert store.list_outbox(status="failed") == []
    assert store.requeue_outbox(now=later) == 0


def test_a_failed_attempt_is_audited_with_its_record_in_the_outbox_and_only_then(open_records: StoreFactory) -> None:
    """mark_outbox_retry stores the attempt's AuditEvents in the transaction that records it, as
    mark_outbox_sent does a disclosure's; a report that is not recorded (the claim was lost, or
    the item was acknowledged by another forwarder) stores none of them."""
    first, second = open_records(), open_records()
    first.save_ingest(make_dicom_unit(destinations=(PACS,)))
    now = datetime.now(UTC) + timedelta(seconds=1)
    [item] = first.claim_outbox(now, 10)
    before = len(first.list_audit(1000))
    assert first.mark_outbox_retry(item.id, next_attempt_at=now, error="C-STORE failed 0xA700", now=now,
                                   claimed_until=item.next_attempt_at,
                                   audit_events=[{"resourceType": "AuditEvent", "outcomeDesc": "attempt 1"}])
    assert [e["outcomeDesc"] for e in first.list_audit(1000)[:1]] == ["attempt 1"]
    [again] = first.claim_outbox(now, 10)
    later = now + timedelta(seconds=61)
    [taken] = second.claim_outbox(later, 10)   # the first claim ran out: another forwarder's now
    assert not first.mark_outbox_retry(again.id, next_attempt_at=later, error="late", now=later,
                                       claimed_until=again.next_attempt_at,
                                       audit_events=[{"resourceType": "AuditEvent", "outcomeDesc": "attempt 2"}])
    assert len(first.list_audit(1000)) == before + 1
    second.mark_outbox_sent(taken.id, later)
    assert not first.mark_outbox_retry(again.id, next_attempt_at=later, error="late", now=later,
                                       audit_events=[{"resourceType": "AuditEvent", "outcomeDesc": "attempt 3"}])
    assert len(first.list_audit(1000)) == before + 1


def test_a_requeue_and_its_audit_commit_together_naming_what_was_requeued(store: SqlRecordStore) -> None:
    """The audit of POST /outbox/requeue names exactly the items the requeue put back (each with
    its DICOM instance, for its record and patient), and is stored in the requeue's transaction:
    an audit that fails to be made leaves nothing requeued."""
    units = [make_dicom_unit(destinations=(PACS, ARCHIVE)) for _ in range(2)]
    for unit in units:
        store.save_ingest(unit)
    now = datetime.now(UTC) + timedelta(seconds=1)
    items = sorted(store.claim_outbox(now, 10), key=lambda i: i.id)
    store.mark_outbox_sent(items[0].id, now)
    for item in items[1:]:
        store.mark_outbox_retry(item.id, next_attempt_at=now, error="PACS down", now=now, give_up=True)
    seen: list[list[tuple[int, str, str | None]]] = []

    def audit(requeued: Any) -> list[dict[str, Any]]:
        seen.append([(item.id, item.status, instance.patient.value if instance else None)
                     for item, instance in requeued])
        return [{"resourceType": "AuditEvent", "outcomeDesc": f"requeued {[item.id for item, _ in requeued]}"}]

    def failing(requeued: Any) -> list[dict[str, Any]]:
        raise RuntimeError("the audit could not be made")

    before = len(store.list_audit(1000))
    with pytest.raises(RuntimeError):
        store.requeue_outbox(now=now, destination=PACS, audit=failing)
    assert len(store.list_outbox(status="failed")) == 3 and len(store.list_audit(1000)) == before

    later = now + timedelta(hours=1)
    assert store.requeue_outbox(now=later, destination=PACS, audit=audit) == 1   # items[0] is sent
    patients = {unit.dicom_instance.sop_instance_uid: unit.patient.value for unit in units if unit.dicom_instance}
    assert seen == [[(items[2].id, "failed", patients[items[2].sop_instance_uid])]]
    assert store.list_audit(1)[0]["outcomeDesc"] == f"requeued {[items[2].id]}"
    assert store.requeue_outbox(now=later, ids=[items[2].id], audit=audit) == 0   # pending now: audited, naming none
    assert seen[-1] == [] and store.list_audit(1)[0]["outcomeDesc"] == "requeued []"
    assert store.requeue_outbox(now=later, ids=[], audit=audit) == 0 and seen[-1] == []
    assert store.requeue_outbox(now=later, audit=audit) == 2
    assert [i for i, _, _ in seen[-1]] == [items[1].id, items[3].id]
    assert store.list_outbox(status="failed") == [] and len(store.list_audit(1000)) == before + 4


def test_outbox_lease_runs_out(open_records: StoreFactory) -> None:
    store = open_records()
    store.save_ingest(make_dicom_unit(destinations=(PACS,)))
    now = datetime.now(UTC) + timedelta(seconds=1)
    [first] = store.claim_outbox(now, 10)
    assert store.claim_outbox(now + timedelta(seconds=59), 10) == []
    [again] = store.claim_outbox(now + timedelta(seconds=60), 10)  # the claimer died: claimed again
    assert again.id == first.id and again.attempts == 0


def _undo_schema_20(conn: sa.Connection) -> None:
    """Take away what schema 20 added (resources.date_last and creation_last, the index of
    date_last), as a store of an earlier schema has it."""
    conn.execute(sa.text("DROP INDEX ix_resources_date_last"))
    conn.execute(sa.text("ALTER TABLE resources DROP COLUMN date_last"))
    conn.execute(sa.text("ALTER TABLE resources DROP COLUMN creation_last"))


def test_concurrent_claims_do_not_double_send(open_records: StoreFactory) -> None:
    writer = open_records()
    for _ in range(10):
        writer.save_ingest(make_dicom_unit(destinations=(PACS, ARCHIVE)))
    stores = [open_records() for _ in range(4)]  # like four forwarder processes
    now = datetime.now(UTC) + timedelta(seconds=1)
    claimed: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(store: SqlRecordStore) -> None:
        try:
            start.wait()
            while batch := store.claim_outbox(now, 3):
                claimed.extend(i.id for i in batch)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(stores[n % 4],)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(claimed) == sorted(i.id for i in writer.list_outbox()) and len(claimed) == 20


def test_older_schema_is_upgraded(open_records: StoreFactory) -> None:
    store = open_records()
    unit = make_unit()
    store.save_ingest(unit)
    with store.engine.begin() as conn:  # back to version 1: no DICOM tables, no blob ranges
        conn.execute(sa.text("DROP TABLE outbox"))
        conn.execute(sa.text("DROP TABLE dicom_released_uids"))
        conn.execute(sa.text("DROP TABLE key_fingerprints"))
        conn.execute(sa.text("DROP TABLE patient_pseudonyms"))
        conn.execute(sa.text("DROP TABLE dicom_instances"))
        conn.execute(sa.text("ALTER TABLE resources DROP COLUMN blob_offset"))
        conn.execute(sa.text("ALTER TABLE resources DROP COLUMN blob_length"))
        conn.execute(sa.text("ALTER TABLE resources DROP COLUMN creation"))
        _undo_schema_20(conn)
        conn.execute(sa.text("DELETE FROM schema_version"))
        conn.execute(sa.text("INSERT INTO schema_version (version, applied) VALUES (1, :t)"),
                     {"t": "2026-01-01T00:00:00.000000+00:00" if conn.dialect.name == "sqlite"
                      else datetime(2026, 1, 1, tzinfo=UTC)})
    store.close()
    upgraded = open_records()
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM schema_version ORDER BY version")).scalars().all() \
            == list(range(1, SCHEMA_VERSION + 1))
    assert upgraded.find_receipt(idempotency_key=unit.idempotency_key) == unit.receipt
    dicom = make_dicom_unit(destinations=(PACS,))
    upgraded.save_ingest(dicom)
    assert len(upgraded.list_outbox()) == 1
    ranged = make_resource("Binary", blob_sha256="b" * 64, blob_range=(132, 4096))
    upgraded.create(ranged)
    again = upgraded.get("Binary", ranged.id)
    assert again is not None and again.blob_range == (132, 4096)
    # version 4: the released UIDs of the instances stored before the index are indexed at start
    assert dicom.dicom_instance is not None
    assert upgraded.index_released_uids("fp", released_rows) == 1
    assert upgraded.search_released_dicom_instances(
        "deidentified", sop_instance=released("deidentified" + dicom.dicom_instance.sop_instance_uid)) == \
        [upgraded.find_dicom_instance(dicom.dicom_instance.sop_instance_uid)]


def test_version_4_is_upgraded(open_records: StoreFactory) -> None:
    """4 → 5 adds an index to a table that exists; 5 → 6 adds the pseudonym and fingerprint
    tables and drops dicom_uid_spaces (the released-UID index is then rebuilt once); 6 → 7 adds
    another index; 7 → 8 four nullable columns (the instances stored before have none); 8 → 9 an
    index on the audit table; 9 → 10 a nullable column of the records' search index; 10 → 11 an index
    by blob on resources and on dicom_instances; 11 → 12 the match keys (test_version_11_is_upgraded)."""
    store = open_records()
    instance = make_instance()
    unit = make_dicom_unit(instance)
    unit.released_uids = released_rows(instance)
    store.save_ingest(unit)
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_dicom_instances_patient_value"))
        conn.execute(sa.text("DROP INDEX ix_dicom_instances_study_date"))
        conn.execute(sa.text("DROP INDEX ix_dicom_instances_accession_number"))
        conn.execute(sa.text("DROP INDEX ix_audit_recorded"))
        conn.execute(sa.text("DROP INDEX ix_resources_blob"))  # added by 11
        conn.execute(sa.text("DROP INDEX ix_dicom_instances_blob"))
        for column in ("patient_name", "study_description", "accession_number", "study_time"):  # added by 8
            conn.execute(sa.text(f"ALTER TABLE dicom_instances DROP COLUMN {column}"))
        for column in MATCH_KEYS:  # added by 12, with their indexes
            conn.execute(sa.text(f"DROP INDEX ix_dicom_instances_{column}"))
            conn.execute(sa.text(f"ALTER TABLE dicom_instances DROP COLUMN {column}"))
        conn.execute(sa.text("ALTER TABLE resources DROP COLUMN creation"))  # added by 10
        conn.execute(sa.text("ALTER TABLE resources DROP COLUMN entered_in_error"))  # added by 16
        conn.execute(sa.text("ALTER TABLE outbox DROP COLUMN sending_since"))  # added by 17
        _undo_schema_20(conn)
        conn.execute(sa.text("DROP TABLE key_fingerprints"))
        conn.execute(sa.text("DROP TABLE patient_pseudonyms"))
        conn.execute(sa.text("CREATE TABLE dicom_uid_spaces (name VARCHAR(16) PRIMARY KEY, fingerprint VARCHAR(64))"))
        conn.execute(sa.text("INSERT INTO dicom_uid_spaces VALUES ('released', 'fp')"))
        conn.execute(sa.text("UPDATE schema_version SET version = 4"))  # as a version 4 database says
    store.close()
    upgraded = open_records()
    with upgraded.engine.connect() as conn:
        inspector = sa.inspect(conn)
        names = {i["name"] for i in inspector.get_indexes("dicom_instances")}
        tables = set(inspector.get_table_names())
        assert conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() == SCHEMA_VERSION == 24
        assert {"creation", "entered_in_error"} <= {c["name"] for c in inspector.get_columns("resources")}
        assert "sending_since" in {c["name"] for c in inspector.get_columns("outbox")}
        assert {"ix_resources_blob", "ix_resources_date_last"} <= {i["name"] for i in inspector.get_indexes("resources")}
        assert {"date_last", "creation_last"} <= {c["name"] for c in inspector.get_columns("resources")}
        columns = {c["name"] for c in inspector.get_columns("dicom_instances")}
        assert {i["name"] for i in inspector.get_indexes("audit")} == {"ix_audit_recorded"}
    assert {"ix_dicom_instances_patient_value", "ix_dicom_instances_study_date",
            "ix_dicom_instances_accession_number", "ix_dicom_instances_blob"} <= names
    assert {"patient_name", "study_description", "accession_number", "study_time", *MATCH_KEYS} <= columns
    kept = upgraded.find_dicom_instance(instance.sop_instance_uid)
    assert kept is not None and kept.patient_name is None and kept.study_date == instance.study_date
    assert {"key_fingerprints", "patient_pseudonyms", "date_ranges"} <= tables and "dicom_uid_spaces" not in tables
    assert upgraded.index_released_uids("fp", released_rows) == 1  # the fingerprint went with the old table
    assert upgraded.index_pseudonyms("pk", lambda p: f"ps-{p.value}") == 1
    assert upgraded.find_pseudonymised([f"ps-{PATIENT.value}"]) == [PATIENT]


def test_version_11_is_upgraded(open_records: StoreFactory) -> None:
    """11 → 12 adds the match key columns (in code point order: "C" on PostgreSQL) and their
    indexes; the instances stored before have no keys, are candidates of every name search until
    the fill derives them, and are found by their names' prefixes after."""
    store = open_records()
    name = stored_names(store)
    with store.engine.begin() as conn:  # the tables as schema 11 made them
        for column in MATCH_KEYS:
            conn.execute(sa.text(f"DROP INDEX ix_dicom_instances_{column}"))
            conn.execute(sa.text(f"ALTER TABLE dicom_instances DROP COLUMN {column}"))
        conn.execute(sa.text("UPDATE schema_version SET version = 11"))
    store.close()
    upgraded = open_records()
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() == SCHEMA_VERSION == 24
        assert {f"ix_dicom_instances_{c}" for c in MATCH_KEYS} <= \
            {i["name"] for i in sa.inspect(conn).get_indexes("dicom_instances")}
        if conn.dialect.name == "postgresql":
            assert dict(conn.execute(sa.text(
                "SELECT column_name, collation_name FROM information_schema.columns WHERE table_name = "
                "'dicom_instances' AND table_schema = current_schema() AND column_name LIKE '%\\_key'")).all()) \
                == dict.fromkeys(MATCH_KEYS, "C")

    def by_name(prefix: str) -> list[str]:
        return sorted(name[i.sop_instance_uid] for i in upgraded.search_dicom_instances(
            patient_name=NamePrefix(prefix, any_group=True)))

    assert by_name("strasse") == sorted(name.values())  # not derived yet: every one a candidate
    assert upgraded.fill_dicom_match_keys(batch=4) == len(name)
    assert by_name("strasse") == ["four", "strasse"] and by_name("\u5c71\u7530") == ["four", "yamada"]
    assert upgraded.fill_dicom_match_keys() == 0


#: The QIDO-RS attribute columns schema 13 added to dicom_instances, and its partial index.
ATTRIBUTE_COLUMNS = ("series_number", "series_description", "pps_start_date", "pps_start_time", "timezone_offset",
                     "instance_number", "image_rows", "image_columns", "bits_allocated", "number_of_frames",
                     "attributes_read")
#: The study attribute columns of QIDO-RS schema 14 added beside them (read by the same fill).
STUDY_ATTRIBUTE_COLUMNS = ("referring_physician_name", "patient_birth_date", "patient_sex", "study_id")
MULTIFRAME = InstanceAttributes(series_number=7, series_description="Wound series",
                                performed_procedure_step_start_date="20240102",
                                performed_procedure_step_start_time="0930", timezone_offset_from_utc="+0100",
                                instance_number=2, rows=480, columns=640, bits_allocated=8, number_of_frames=3,
                                referring_physician_name="Welby^Marcus^^Dr.=\u30a6\u30a7\u30eb\u30d3\u30fc",
                                patient_birth_date="19700521", patient_sex="F", study_id="S-42")


def test_dicom_instance_attributes_round_trip(store: SqlRecordStore) -> None:
    """What an object says of its series and itself (QIDO-RS) is stored with the instance and read
    back as written; an object that has none of them is read (all None), not "not read yet"; an
    instance written without (older code still running) is read at the next fill, once."""
    full = dataclasses.replace(make_instance(), attributes=MULTIFRAME)
    bare = dataclasses.replace(make_instance(), attributes=InstanceAttributes())
    unread = make_instance()
    for instance in (full, bare, unread):
        store.save_ingest(make_dicom_unit(instance))
    assert [store.find_dicom_instance(i.sop_instance_uid).attributes  # type: ignore[union-attr]
            for i in (full, bare, unread)] == [MULTIFRAME, InstanceAttributes(), None]
    [streamed] = list(store.iter_dicom_instances())
    assert {i.sop_instance_uid: i.attributes for i in streamed}[full.sop_instance_uid] == MULTIFRAME
    seen: list[str] = []

    def read(instance: DicomInstance) -> InstanceAttributes:
        seen.append(instance.sop_instance_uid)
        return MULTIFRAME

    assert store.fill_dicom_attributes(read) == 1 and seen == [unread.sop_instance_uid]
    assert store.find_dicom_instance(unread.sop_instance_uid).attributes == MULTIFRAME  # type: ignore[union-attr]
    assert store.fill_dicom_attributes(lambda _: pytest.fail("read again")) == 0


def test_version_12_is_upgraded(open_records: StoreFactory) -> None:
    """12 → 13 adds the QIDO-RS attribute columns and the partial index of the instances not read
    yet: every instance stored before, whose objects the fill reads, a batch at a time, once."""
    store = open_records()
    made = [dataclasses.replace(make_instance(), attributes=MULTIFRAME) for _ in range(5)]
    for instance in made:
        store.save_ingest(make_dicom_unit(instance))
    with store.engine.begin() as conn:  # the tables as schema 12 made them
        conn.execute(sa.text("DROP INDEX ix_dicom_instances_attributes_unread"))
        for column in (*ATTRIBUTE_COLUMNS, *STUDY_ATTRIBUTE_COLUMNS):
            conn.execute(sa.text(f"ALTER TABLE dicom_instances DROP COLUMN {column}"))
        conn.execute(sa.text("UPDATE schema_version SET version = 12"))
    store.close()
    upgraded = open_records()
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() == SCHEMA_VERSION == 24
        inspector = sa.inspect(conn)
        assert set(ATTRIBUTE_COLUMNS) <= {c["name"] for c in inspector.get_columns("dicom_instances")}
        assert "ix_dicom_instances_attributes_unread" in {i["name"] for i in inspector.get_indexes("dicom_instances")}
    assert [upgraded.find_dicom_instance(i.sop_instance_uid).attributes for i in made] == [None] * 5  # type: ignore[union-attr]
    read: list[str] = []

    def attributes_of(instance: DicomInstance) -> InstanceAttributes:
        read.append(instance.sop_instance_uid)
        assert upgraded.find_dicom_instance(instance.sop_instance_uid) is not None  # no transaction held
        return dataclasses.replace(MULTIFRAME, instance_number=len(read))

    assert upgraded.fill_dicom_attributes(attributes_of, batch=2) == 5
    assert sorted(read) == sorted(i.sop_instance_uid for i in made)
    numbers = {i.sop_instance_uid: upgraded.find_dicom_instance(i.sop_instance_uid).attributes  # type: ignore[union-attr]
               for i in made}
    assert sorted(a.instance_number for a in numbers.values()) == [1, 2, 3, 4, 5]
    assert upgraded.fill_dicom_attributes(lambda _: pytest.fail("read again")) == 0


def test_version_13_is_upgraded(open_records: StoreFactory) -> None:
    """13 → 14 adds the study attribute columns (ReferringPhysicianName, PatientBirthDate,
    PatientSex, StudyID) and sets every instance unread again (its attributes were read by an
    older version): the same fill reads each object once more, a batch at a time, and keeps the
    attributes of schema 13 it reads with them."""
    store = open_records()
    made = [dataclasses.replace(make_instance(), attributes=MULTIFRAME) for _ in range(3)]
    for instance in made:
        store.save_ingest(make_dicom_unit(instance))
    with store.engine.begin() as conn:  # the tables as schema 13 made them
        for column in STUDY_ATTRIBUTE_COLUMNS:
            conn.execute(sa.text(f"ALTER TABLE dicom_instances DROP COLUMN {column}"))
        conn.execute(sa.text("UPDATE schema_version SET version = 13"))
    store.close()
    upgraded = open_records()
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() == SCHEMA_VERSION == 24
        assert set(STUDY_ATTRIBUTE_COLUMNS) <= {c["name"] for c in sa.inspect(conn).get_columns("dicom_instances")}
    assert [upgraded.find_dicom_instance(i.sop_instance_uid).attributes for i in made] == [None] * 3  # type: ignore[union-attr]
    assert upgraded.fill_dicom_attributes(lambda _: MULTIFRAME, batch=2) == 3
    assert [upgraded.find_dicom_instance(i.sop_instance_uid).attributes for i in made] == [MULTIFRAME] * 3  # type: ignore[union-attr]
    assert upgraded.fill_dicom_attributes(lambda _: pytest.fail("read again")) == 0


def test_version_18_is_upgraded(open_records: StoreFactory) -> None:
    """18 → 19 adds dicom_instances.object_version: how a posted photo's object is made, kept from
    ingest (adapter.mapping.dicom_photo.PHOTO_OBJECT_VERSION); the instances stored before have
    none (their objects stay as version 1 made them), an instance stored after keeps its own."""
    store = open_records()
    before = make_instance(blob_sha256=None)  # a posted photo's
    store.save_ingest(make_dicom_unit(before))
    with store.engine.begin() as conn:  # the tables as schema 18 made them
        conn.execute(sa.text("ALTER TABLE dicom_instances DROP COLUMN object_version"))
        conn.execute(sa.text("UPDATE schema_version SET version = 18"))
    store.close()
    upgraded = open_records()
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() == SCHEMA_VERSION == 24
        assert "object_version" in {c["name"] for c in sa.inspect(conn).get_columns("dicom_instances")}
    assert upgraded.find_dicom_instance(before.sop_instance_uid).object_version is None  # type: ignore[union-attr]
    after = dataclasses.replace(make_instance(blob_sha256=None), object_version=2)
    upgraded.save_ingest(make_dicom_unit(after))
    assert upgraded.find_dicom_instance(after.sop_instance_uid).object_version == 2  # type: ignore[union-attr]


def test_version_19_is_upgraded(open_records: StoreFactory) -> None:
    """19 → 20 adds resources.date_last and creation_last (the last instant of the search date's
    and of the creation's implicit range) and an index of date_last: a row stored before keeps
    its instant (first = last, as it was searched) until the start re-derives the records' and
    Consents' index from their JSON, which the step asks for (the index version is cleared)."""
    store = open_records()
    store.create(make_dated("doc", "date", *RANGES["day"]))
    assert store.reindex_records("v-old", lambda _: SearchIndex(date=RANGES["day"][0])) == 1
    with store.engine.begin() as conn:  # the tables as schema 19 made them
        _undo_schema_20(conn)
        conn.execute(sa.text("UPDATE schema_version SET version = 19"))  # as a version 19 database says
    store.close()
    upgraded = open_records()
    with upgraded.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max(version) FROM schema_version")).scalar() == SCHEMA_VERSION == 24
        inspector = sa.inspect(conn)
        assert {"date_last", "creation_last"} <= {c["name"] for c in inspector.get_columns("resources")}
        assert "ix_resources_date_last" in {i["name"] for i in inspector.get_indexes("resources")}

    def found(prefix: str) -> list[str]:
        criterion = DateCriterion(prefix, *NOON)
        return ids(upgraded.search_index("DocumentReference", SearchCriteria(dates=((criterion,),))))

    assert found("lt") == ["doc"] and found("gt") == []  # its instant, the day's first, as before
    assert upgraded.reindex_records("v-old", lambda _: SearchIndex(date=RANGES["day"][0], date_last=RANGES["day"][1])) \
        == 1  # the same index version is derived again: the step cleared it
    assert found("lt") == ["doc"] and found("gt") == ["doc"]
    assert upgraded.reindex_records("v-old", lambda _: pytest.fail("indexed again")) == 0


# -- SQLite specifics and the factory ---------------------------------------------------------


def test_sqlite_is_durable_and_waits_for_locks(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "folder" / "adapter.db"
    store = SqlRecordStore(f"sqlite:///{path}", audit_key=TEST_AUDIT_KEY)
    try:
        assert path.is_file()
        with store.engine.connect() as conn:
            pragma = {name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                      for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
        assert pragma == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30000}
        begins: list[str] = []
        sa.event.listen(store.engine, "before_cursor_execute",
                        lambda conn, cursor, statement, *args: begins.append(statement)
                        if statement.startswith("BEGIN") else None)
        store.save_ingest(make_unit())
        store.get("Media", "x")
        assert begins == ["BEGIN IMMEDIATE", "BEGIN DEFERRED"]
    finally:
        store.close()


def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    options = StoreOptions(database_url=f"sqlite:///{tmp_path / 'data' / 'adapter.db'}", data_dir=tmp_path / "data")
    records, blobs = open_store(options)
    try:
        assert isinstance(records, SqlRecordStore) and isinstance(blobs, FileBlobStore)
        assert records.engine.dialect.name == "sqlite"
        assert options.blob_dir.is_dir() and options.staging_dir.is_dir()
    finally:
        records.close()


@pytest.mark.parametrize("url", ["mysql+pymysql://u@localhost/db", "sqlite://", "sqlite:///:memory:",
                                 "postgresql+psycopg2://postgres@127.0.0.1/test", "not a url",
                                 # no dialect of that name: NoSuchModuleError, a traceback (ops review 10)
                                 "foo://", "postgres://postgres@127.0.0.1/test"])
def test_open_store_refuses_other_urls(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError, match="sqlite:///|SQLite"):
        open_store(StoreOptions(database_url=url, data_dir=tmp_path))


def test_schema_is_postgresql_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        SqlRecordStore(f"sqlite:///{tmp_path / 'a.db'}", schema="x")
    with pytest.raises(ConfigurationError):
        SqlRecordStore(PG_URL, schema='bad"; DROP')


def test_iter_blob_references_walks_every_resource_and_received_object_in_batches(store: SqlRecordStore) -> None:
    units = [make_dicom_unit() for _ in range(3)]
    units.append(make_unit())  # a photo: no received object
    for unit in units:
        store.save_ingest(unit)
    expected = set()
    for unit in units:
        for r in unit.resources:
            if r.blob_sha256:
                offset, length = r.blob_range if r.blob_range else (None, None)
                expected.add(BlobReference(f"{r.resource_type}/{r.id}", r.blob_sha256, offset, length))
        if unit.dicom_instance is not None and unit.dicom_instance.blob_sha256:
            expected.add(BlobReference(f"DICOM object of Media/{unit.dicom_instance.record_id}",
                                       unit.dicom_instance.blob_sha256))
    assert len(expected) == 4 * 2 + 3
    for batch in (1, 2, 1000):  # keyset pages of every size end where they should
        found = list(store.iter_blob_references(batch=batch))
        assert len(found) == len(expected) and set(found) == expected
    assert store.ping() >= 9


def test_referenced_blobs_are_those_a_resource_or_a_received_object_refers_to(store: SqlRecordStore) -> None:
    """Is a blob referenced? Asked of many at once (more than one read's worth), answered from
    the current resources and the DICOM objects as received, through the blob indexes."""
    photo = make_unit()
    received = make_dicom_unit(make_instance(blob_sha256="d" * 64))
    for unit in (photo, received):
        store.save_ingest(unit)
    assert received.dicom_instance is not None
    unreferenced = [uuid.uuid4().hex * 2 for _ in range(900)]
    asked = [*unreferenced[:450], photo.stored_sha256, "d" * 64, received.stored_sha256, *unreferenced[450:]]
    assert store.referenced_blobs(asked) == {photo.stored_sha256, "d" * 64, received.stored_sha256}
    assert store.referenced_blobs([]) == set()
    assert store.referenced_blobs(["d" * 64, "d" * 64]) == {"d" * 64}  # only the object refers to it
    if store.engine.dialect.name == "sqlite":  # (PostgreSQL plans by its statistics: an empty table is scanned)
        with store.engine.connect() as conn:
            plan = " ".join(str(row) for row in conn.execute(sa.text(
                "EXPLAIN QUERY PLAN SELECT blob_sha256 FROM resources WHERE blob_sha256 IN ('a', 'b')")))
        assert "ix_resources_blob" in plan


def test_reindex_records_derives_the_index_afresh_once_per_version(store: SqlRecordStore) -> None:
    """Records and Consents indexed before (here: with no creation, no tokens, no date ranges)
    get the index of the new version from their JSON, on both databases; the same version again
    does nothing."""
    doc = make_resource("DocumentReference", "doc", status="current",
                        securityLabel=[{"coding": [{"system": "urn:conf", "code": "R"}]}],
                        content=[{"attachment": {"creation": "2026-03-05T10:00:00+01:00"}}])
    media = make_resource("Media", "photo", status="completed", createdDateTime="2025-01-01T00:00:00Z")
    consent = make_resource("Consent", "c1", status="active", with_facts=False)
    for resource in (doc, media, consent):
        store.create(resource)

    def index_of(resource: dict[str, Any]) -> SearchIndex:
        creation = resource.get("content", [{}])[0].get("attachment", {}).get("creation") \
            or resource.get("createdDateTime")
        labels = [("security-label", c["system"], c["code"]) for s in resource.get("securityLabel", [])
                  for c in s["coding"]]
        return SearchIndex(patient=PATIENT, status="indexed", tokens=tuple(labels),
                           creation=datetime.fromisoformat(creation) if creation else None,
                           patient_reference="Patient/p1",
                           ranges=(("period", datetime(2026, 1, 1, tzinfo=UTC), None),))

    assert store.reindex_records("v-test", index_of) == 3  # the records and the Consent
    going_on = DateCriterion("ge", datetime(2030, 1, 1, tzinfo=UTC), datetime(2031, 1, 1, tzinfo=UTC), param="period")
    before = DateCriterion("lt", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC), param="period")
    assert ids(store.search_index("Media", SearchCriteria(dates=((going_on,),)))) == ["photo"]
    assert ids(store.search_index("Media", SearchCriteria(dates=((before,),)))) == []
    assert ids(store.search_index("Consent", SearchCriteria(patient_reference=("Patient/p1",)))) == ["c1"]
    march = DateCriterion("eq", datetime(2026, 3, 5, 9, tzinfo=UTC), datetime(2026, 3, 5, 9, 0, 1, tzinfo=UTC),
                          param="creation")
    assert ids(store.search_index("DocumentReference", SearchCriteria(dates=((march,),)))) == ["doc"]
    assert ids(store.search_index("DocumentReference", SearchCriteria(
        tokens=((TokenCriterion("security-label", "R", "urn:conf"),),)))) == ["doc"]
    assert ids(store.search_index("Media", SearchCriteria(status=("indexed",)))) == ["photo"]
    assert ids(store.search_index("Consent", SearchCriteria(status=("indexed",)))) == ["c1"]
    assert store.reindex_records("v-test", lambda _: pytest.fail("indexed again")) == 0
    assert store.reindex_records("v-next", index_of, batch=1) == 3  # a new version: again, in batches of one
    assert ids(store.search_index("Media", SearchCriteria(dates=((going_on,),)))) == ["photo"]  # not twice


def test_a_late_failure_report_never_puts_an_acknowledged_item_back(open_records: StoreFactory) -> None:
    """A forwarder whose C-STORE outlived its lease (the SCU waits up to 120 s for a response, the
    lease is 60 s) reports its failure after another forwarder claimed the item again, sent it and
    had it acknowledged: the item stays sent, and is never claimed (sent) again."""
    first, second = open_records(), open_records()  # two forwarder processes on one database
    first.save_ingest(make_dicom_unit(destinations=(PACS,)))
    now = datetime.now(UTC) + timedelta(seconds=1)
    [slow] = first.claim_outbox(now, 10)
    later = now + timedelta(seconds=61)  # the first claimer's lease ran out mid-send
    [again] = second.claim_outbox(later, 10)
    assert again.id == slow.id
    second.mark_outbox_sent(again.id, later)
    first.mark_outbox_retry(slow.id, next_attempt_at=later, error="no C-STORE response", now=later)
    first.mark_outbox_retry(slow.id, next_attempt_at=later, error="gave up", now=later, give_up=True)
    [item] = second.list_outbox()
    assert item.status == "sent"
    assert second.claim_outbox(later + timedelta(days=1), 10) == []
    assert second.requeue_outbox(now=later) == 0


def test_an_outbox_claim_is_renewed_only_while_it_holds(open_records: StoreFactory) -> None:
    first, second = open_records(), open_records()
    first.save_ingest(make_dicom_unit(destinations=(PACS, ARCHIVE)))
    now = datetime.now(UTC) + timedelta(seconds=1)
    pacs, archive = first.claim_outbox(now, 10)
    renewed = first.renew_outbox_claims([pacs], now + timedelta(seconds=50))
    assert [(i.id, i.next_attempt_at) for i in renewed] == [(pacs.id, now + timedelta(seconds=110))]
    later = now + timedelta(seconds=61)  # the archive item's lease ran out; the renewed one's did not
    [taken] = second.claim_outbox(later, 10)
    assert taken.id == archive.id
    assert first.renew_outbox_claims([renewed[0], archive], later) == [
        dataclasses.replace(renewed[0], next_attempt_at=later + timedelta(seconds=60))]
    assert not first.mark_outbox_retry(archive.id, next_attempt_at=later, error="x", now=later,
                                       claimed_until=archive.next_attempt_at)  # stale: the second one's now
    assert second.mark_outbox_retry(taken.id, next_attempt_at=later, error="x", now=later,
                                    claimed_until=taken.next_attempt_at)
    second.mark_outbox_sent(pacs.id, later)
    assert first.renew_outbox_claims([pacs], later) == []  # sent: nothing left to hold


def test_a_failure_of_the_store_is_logged_with_its_cause_and_no_value(
        store: SqlRecordStore, caplog: pytest.LogCaptureFixture) -> None:
    # a missing table gave only "request failed: StorageError" (ops review 4)
    with store.engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE receipts RENAME TO receipts_gone"))
    with caplog.at_level(logging.ERROR, logger="adapter.store"), pytest.raises(StorageError):
        store.save_ingest(make_unit())
    logged = " ".join(caplog.messages)
    assert "the record store failed" in logged
    if store.engine.dialect.name == "postgresql":
        assert "psycopg.errors.UndefinedTable" in logged and "SQLSTATE 42P01" in logged
    else:
        assert "sqlite3.OperationalError" in logged and "SQLITE_ERROR" in logged
    assert PATIENT.value not in logged and "INSERT" not in logged


def test_a_statement_error_quoting_a_value_is_described_without_it(postgres_url: str) -> None:
    # PostgreSQL's message quotes the value ("invalid input syntax for type integer: ..."); the SQLSTATE is kept
    engine = sa.create_engine(postgres_url, hide_parameters=True)
    try:
        with pytest.raises(sa.exc.DBAPIError) as info, engine.connect() as conn:
            conn.execute(sa.text("SELECT CAST(:v AS integer)"), {"v": "MRN-0001"})
    finally:
        engine.dispose()
    described = describe_failure(info.value)
    assert "SQLSTATE 22P02" in described and "InvalidTextRepresentation" in described
    assert "MRN-0001" not in described


@pytest.mark.parametrize("url,cause", [
    ("postgresql+psycopg://postgres@127.0.0.1:1/adapter", 'port 1 failed: Connection refused'),
    ("postgresql+psycopg://postgres@127.0.0.1:5432/adapter_no_such_database_ops", '"adapter_no_such_database_ops" does not exist'),
])
def test_a_failure_to_connect_is_logged_with_the_drivers_message(
        postgres_url: str, url: str, cause: str, caplog: pytest.LogCaptureFixture) -> None:
    # an unreachable host, a wrong port and a missing database all said only "the record store failed"
    with caplog.at_level(logging.ERROR, logger="adapter.store"), pytest.raises(StorageError):
        SqlRecordStore(url, audit_key=TEST_AUDIT_KEY)
    assert cause in " ".join(caplog.messages)


def test_studies_of_several_patients_are_named_with_their_records(store: SqlRecordStore,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """python -m adapter verify names the studies stored before an instance of another patient was
    refused (one patient per study, PS3.3 A.1.2): each with the records of its instances, a study
    of one patient (under two instances) and an entered-in-error instance's record not."""
    from adapter.store import sql

    store.save_ingest(make_dicom_unit(make_instance(study="1.2.7", series="1.2.7.1")))
    store.save_ingest(make_dicom_unit(make_instance(study="1.2.7", series="1.2.7.1")))
    assert store.studies_of_several_patients() == []
    first = make_dicom_unit(make_instance(study="1.2.8", series="1.2.8.1"))
    store.save_ingest(first)
    monkeypatch.setattr(sql, "_check_hierarchy", lambda conn, **instance: None)  # as stored before the check
    other = make_dicom_unit(make_instance(study="1.2.8", series="1.2.8.2", patient=OTHER_PATIENT), patient=OTHER_PATIENT)
    store.save_ingest(other)
    assert first.dicom_instance is not None and other.dicom_instance is not None
    records = sorted(f"{u.dicom_instance.record_type}/{u.dicom_instance.record_id}"
                     for u in (first, other) if u.dicom_instance is not None)
    assert store.studies_of_several_patients() == [("1.2.8", records)]


def test_version_21_is_upgraded_with_each_patient_reference_held_by_its_first_identifier(
        open_records: StoreFactory, caplog: pytest.LogCaptureFixture) -> None:
    """21 → 22 fills patient_references from the records and Consents stored: a reference goes to
    the identifier first stored with it; one stored with several (before the rule) is marked
    disputed and counted in the log, never named; the rule holds for the writes after."""
    store = open_records()
    other = Identifier(system=PATIENT.system, value="MRN-OTHER")
    first = make_resource("Media", patient=PATIENT, reference="Patient/p-1")
    store.create(first)
    store.create(make_resource("Consent", patient=other, reference="Patient/p-2", status="active"))
    store.create(make_resource("Media", patient=PATIENT, reference="https://ehr.example.org/fhir/Patient/p-3"))
    with store.engine.begin() as conn:  # as schema 21 held it: another patient under p-1 too
        conn.execute(sa.text("UPDATE resources SET patient_reference = 'Patient/p-1' WHERE resource_type = 'Consent'"))
        conn.execute(sa.text("DROP TABLE patient_references"))
        conn.execute(sa.text("UPDATE schema_version SET version = 21"))
    store.close()
    with caplog.at_level(logging.WARNING, logger="adapter.store.schema"):
        upgraded = open_records()
    with upgraded.engine.connect() as conn:
        held = conn.execute(sa.text("SELECT reference, patient_value, disputed FROM patient_references "
                                    "ORDER BY reference")).all()
    assert [tuple(row) for row in held] == [("Patient/p-1", PATIENT.value, True), ("Patient/p-3", PATIENT.value, False)]
    assert "1 Patient references" in caplog.text and "p-1" not in caplog.text and "MRN" not in caplog.text
    with pytest.raises(PatientReferenceConflict):
        upgraded.create(make_resource("Media", patient=other, reference="Patient/p-3"))
    upgraded.create(make_resource("Media", patient=PATIENT, reference="Patient/p-1"))
