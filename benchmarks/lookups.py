#!/usr/bin/env python3
"""Restricted-view and PatientID lookups at scale: the indexes vs. the scans they replaced.

    python benchmarks/lookups.py [-n 20000] [--database-url postgresql+psycopg://...]

Fills a fresh store (a SQLite file in a temp dir by default) with N DICOM instances of N patients,
then times, on that store:

- the start-up rebuild of the released-UID index (``index_released_uids``, once per key) and of
  the pseudonym index (``index_pseudonyms``: the first time, and the check every start makes);
- a WADO-RS lookup by a mapped SOP Instance UID under TRAIN through the index
  (``search_released_dicom_instances``) and the way it was done before the index: load every
  instance and compute each one's mapped UID;
- a QIDO-RS lookup by PatientID through ``search_dicom_instances(patient_value=...)`` and by
  loading every instance; the same for one StudyDate (``study_dates``: a day's instances);
- a QIDO-RS patient search by PatientName prefix (``FAM123*``, 1 patient in 500) in care's view:
  the candidates through the name keys' indexes (``iter_dicom_instances(patient_name=...)``), then
  matched as QIDO-RS matches them, vs. loading every instance and matching each, as before; the
  same through an ideographic group (``山田120*``, the group's own key), and the alternative not
  taken for later groups: one key with ``OR LIKE '%=<prefix>%'`` (which no index serves); and
  the start-up fill of the keys (the first start after the upgrade, and the check every start makes);
- an HRESCH lookup by pseudonym through the pseudonym index (``find_pseudonymised``);
- the lookup every ingest makes of the patient's Consents (``consent_versions_for_patient``;
  the store holds a Consent per patient) and the OR with the access-facts columns it replaced,
  which SQLite answered by walking every Consent;
- FHIR searches that select a few records, by the EHR's Patient reference and by identifier (the
  photo's DICOM UID): through their indexes, and as SQLite planned them before (walking every
  Media in result order).

Informational: prints milliseconds, exit code 0. The store is removed on exit (a PostgreSQL run
uses a schema of its own and drops it).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import sqlalchemy as sa

from adapter.mapping.pseudonym import Pseudonymizer
from adapter.model.decision import View
from adapter.model.dicom import DicomInstance
from adapter.model.photo import Identifier
from adapter.services.dicom_objects import DicomEntry, DicomQuery
from adapter.services.released_uids import ReleasedUidSpaces, mapped_uid
from adapter.store.port import SearchCriteria, TokenCriterion
from adapter.store.rows import dicom_instance_from, match_keys
from adapter.store.schema import dicom_instances, resources, tokens
from adapter.store.search import search_statement
from adapter.store.sql import SqlRecordStore, _dicom_ordered, _starts_with

SYSTEM = "urn:oid:2.999.1.1"


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Milliseconds per call (best of ``repeat``)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def patient_name(i: int) -> str:
    """Family names shared by 1 patient in 500; every tenth with an ideographic group too."""
    ideographic = f"=\u5c71\u7530{i % 500:03d}^\u82b1\u5b50" if i % 10 == 0 else ""
    return f"Fam{i % 500:03d}^Given{i}{ideographic}"


def matched(query: DicomQuery, batches: Any) -> list[DicomInstance]:
    """The instances QIDO-RS matches in care's view (DicomQuery.matches on what the view shows)."""
    return [i for batch in batches for i in batch if query.matches(DicomEntry(
        i.study_instance_uid, i.series_instance_uid, i.sop_instance_uid, i.sop_class_uid, i.modality, i.study_date,
        i.patient.value, None, f"{i.record_type}/{i.record_id}", patient_name=i.patient_name))]


def fill(store: SqlRecordStore, n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows = [{"sop_instance_uid": f"2.25.{uuid.uuid4().int}", "study_instance_uid": f"2.25.{uuid.uuid4().int}",
             "series_instance_uid": f"2.25.{uuid.uuid4().int}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7",
             "modality": "OT", "record_type": "Media", "record_id": str(uuid.uuid4()), "patient_system": SYSTEM,
             "patient_value": f"MRN-{i}", "blob_sha256": None,
             "study_date": f"2024{1 + i % 12:02d}{1 + i % 28:02d}", "created": now,
             "patient_name": patient_name(i)}
            for i in range(n)]
    for row in rows:
        row.update(match_keys(row["patient_name"], None))
    records = [{"resource_type": "Media", "id": r["record_id"], "version_id": 1, "last_updated": now,
                "patient_system": SYSTEM, "patient_value": r["patient_value"], "json": {"resourceType": "Media"},
                "patient_reference": f"Patient/{i}"}
               for i, r in enumerate(rows)]
    identifiers = [{"resource_type": "Media", "id": r["record_id"], "param": "identifier",
                    "system": "urn:ietf:rfc:3986", "code": f"urn:oid:{r['sop_instance_uid']}"} for r in rows]
    records += [{"resource_type": "Consent", "id": str(uuid.uuid4()), "version_id": 1, "last_updated": now,
                 "patient_system": SYSTEM, "patient_value": r["patient_value"], "json": {"resourceType": "Consent"}}
                for r in rows]
    with store.engine.begin() as conn:
        for start in range(0, n, 5000):
            conn.execute(sa.insert(dicom_instances), rows[start:start + 5000])
        for start in range(0, len(records), 5000):
            conn.execute(sa.insert(resources), records[start:start + 5000])
        for start in range(0, n, 5000):
            conn.execute(sa.insert(tokens), identifiers[start:start + 5000])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20000, help="instances (and patients)")
    parser.add_argument("--database-url", help="a PostgreSQL URL (default: a SQLite file in a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        schema = f"bench_{uuid.uuid4().hex[:12]}" if args.database_url else None
        store = SqlRecordStore(args.database_url or f"sqlite:///{tmp}/adapter.db", schema=schema)
        try:
            return run(store, args.n)
        finally:
            if schema is not None:
                with store.engine.begin() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            store.close()


def run(store: SqlRecordStore, n: int) -> int:
    print(f"filling {store.engine.dialect.name} with {n} instances and patients ...", flush=True)
    rows = fill(store, n)
    spaces = ReleasedUidSpaces("2.25", b"k" * 32)
    pseudonyms = Pseudonymizer(b"p" * 32, "urn:example:pseudonym")
    rebuild = timed(lambda: store.index_released_uids(spaces.fingerprint, spaces.rows))
    catch_up = timed(lambda: store.index_pseudonyms(pseudonyms.fingerprint, pseudonyms.of))
    current = timed(lambda: store.index_pseudonyms(pseudonyms.fingerprint, pseudonyms.of))  # every later start
    target = rows[n // 2]
    wanted = spaces.uid(View.DEIDENTIFIED, str(target["sop_instance_uid"]))
    by_index = timed(lambda: store.search_released_dicom_instances("deidentified", sop_instance=wanted), repeat=20)

    def scan() -> None:
        mapped_uid.cache_clear()
        found = [i for i in store.search_dicom_instances()
                 if spaces.uid(View.DEIDENTIFIED, i.sop_instance_uid) == wanted]
        assert [i.sop_instance_uid for i in found] == [target["sop_instance_uid"]]

    by_scan = timed(scan, repeat=3)
    patient = str(target["patient_value"])
    qido_index = timed(lambda: store.search_dicom_instances(patient_value=patient), repeat=20)
    qido_scan = timed(lambda: [i for i in store.search_dicom_instances() if i.patient.value == patient], repeat=3)
    day = str(target["study_date"])
    qido_date = timed(lambda: store.search_dicom_instances(study_dates=(day, day)), repeat=20)
    qido_date_scan = timed(lambda: [i for i in store.search_dicom_instances() if i.study_date == day], repeat=3)
    by_name = DicomQuery(patient_name="FAM123*")
    name_prefix = by_name.patient_name_candidates()
    expected = sum(1 for i in range(n) if i % 500 == 123)
    assert len(matched(by_name, store.iter_dicom_instances(patient_name=name_prefix))) == expected
    name_index = timed(lambda: matched(by_name, store.iter_dicom_instances(patient_name=name_prefix)), repeat=20)
    name_scan = timed(lambda: matched(by_name, store.iter_dicom_instances()), repeat=3)
    by_group = DicomQuery(patient_name="\u5c71\u7530120*")  # i % 500 == 120: every one has the group
    group_prefix = by_group.patient_name_candidates()
    assert len(matched(by_group, store.iter_dicom_instances(patient_name=group_prefix))) == \
        sum(1 for i in range(n) if i % 500 == 120)
    group_index = timed(lambda: matched(by_group, store.iter_dicom_instances(patient_name=group_prefix)), repeat=20)
    _d = dicom_instances.c
    one_key = _dicom_ordered(sa.select(dicom_instances).where(sa.or_(
        _starts_with(_d.patient_name_key, "fam123"), _d.patient_name_key.like("%=fam123%"),
        _d.patient_name_key.is_(None))))

    def name_like() -> None:
        with store.engine.connect() as conn:
            found = matched(by_name, [[dicom_instance_from(r) for r in conn.execute(one_key).mappings()]])
        assert len(found) == expected

    name_or_like = timed(name_like, repeat=3)
    with store.engine.begin() as conn:  # as a store of schema 11 (the keys not derived yet)
        conn.execute(sa.update(dicom_instances).values(patient_name_key=None, patient_name_ideographic_key=None,
                                                      patient_name_phonetic_key=None, study_description_key=None))
    keys_fill = timed(store.fill_dicom_match_keys)
    keys_check = timed(store.fill_dicom_match_keys, repeat=5)
    pseudonym = pseudonyms.of(Identifier(system=SYSTEM, value=patient))
    assert store.find_pseudonymised([pseudonym]) == [Identifier(system=SYSTEM, value=patient)]
    hresch = timed(lambda: store.find_pseudonymised([pseudonym]), repeat=20)
    who = Identifier(system=SYSTEM, value=patient)
    assert len(store.consent_versions_for_patient(who)) == 1
    consents = timed(lambda: store.consent_versions_for_patient(who), repeat=20)
    _r = resources.c
    before = sa.select(_r.id, _r.version_id).where(
        _r.resource_type == "Consent",
        sa.or_(sa.and_(_r.patient_system == SYSTEM, _r.patient_value == patient),
               sa.and_(_r.fact_patient_system == SYSTEM, _r.fact_patient_value == patient))) \
        .order_by(_r.last_updated, _r.id)

    def consents_or() -> None:
        with store.engine.connect() as conn:
            assert len(conn.execute(before).all()) == 1

    consents_before = timed(consents_or, repeat=3)
    by_reference = SearchCriteria(patient_reference=(f"Patient/{n // 2}",))
    by_identifier = SearchCriteria(tokens=((TokenCriterion("identifier", f"urn:oid:{target['sop_instance_uid']}",
                                                           "urn:ietf:rfc:3986"),),))

    def search(criteria: SearchCriteria, *, as_before: bool = False) -> Callable[[], None]:
        statement = search_statement("Media", criteria)
        if as_before:
            statement = statement.order_by(None).order_by(_r.last_updated, _r.id)

        def run() -> None:
            with store.engine.connect() as conn:
                assert len(conn.execute(statement.limit(100)).all()) == 1
        return run

    reference_ms = timed(search(by_reference), repeat=20)
    reference_before = timed(search(by_reference, as_before=True), repeat=3)
    identifier_ms = timed(search(by_identifier), repeat=20)
    identifier_before = timed(search(by_identifier, as_before=True), repeat=3)
    print(f"\n{'what':60} {'ms':>10}")
    for what, ms in (("released-UID index rebuild (once per key)", rebuild),
                     ("pseudonym index catch-up (first start-up)", catch_up),
                     ("pseudonym index check (every later start-up)", current),
                     ("TRAIN lookup by mapped SOP UID: index", by_index),
                     ("TRAIN lookup by mapped SOP UID: load all + hash each", by_scan),
                     ("QIDO by PatientID: index", qido_index),
                     ("QIDO by PatientID: load all", qido_scan),
                     ("QIDO by StudyDate (one day): index", qido_date),
                     ("QIDO by StudyDate (one day): load all", qido_date_scan),
                     ("QIDO by PatientName prefix: index", name_index),
                     ("QIDO by PatientName prefix: load all", name_scan),
                     ("QIDO by PatientName, ideographic group prefix: index", group_index),
                     ("QIDO by PatientName prefix: one key, OR LIKE '%=…%' (not used)", name_or_like),
                     ("PatientName keys fill (first start after the upgrade)", keys_fill),
                     ("PatientName keys check (every later start)", keys_check),
                     ("HRESCH lookup by pseudonym: index", hresch),
                     ("ingest's Consents of the patient: as the store reads them", consents),
                     ("ingest's Consents: one OR (PostgreSQL's plan; SQLite's before)", consents_before),
                     ("Media?patient=Patient/n: index", reference_ms),
                     ("Media?patient=Patient/n: walking every Media, as before", reference_before),
                     ("Media?identifier=<SOP UID>: index", identifier_ms),
                     ("Media?identifier=<SOP UID>: walking every Media, as before", identifier_before)):
        print(f"{what:60} {ms:10.2f}")
    print(f"RESULT n={n} rebuild_ms={rebuild:.1f} index_ms={by_index:.2f} scan_ms={by_scan:.1f} "
          f"qido_index_ms={qido_index:.2f} qido_scan_ms={qido_scan:.1f} pseudonym_ms={hresch:.2f} "
          f"qido_date_ms={qido_date:.2f} qido_date_scan_ms={qido_date_scan:.1f} name_index_ms={name_index:.2f} "
          f"name_scan_ms={name_scan:.1f} name_group_ms={group_index:.2f} name_or_like_ms={name_or_like:.1f} "
          f"keys_fill_ms={keys_fill:.0f} keys_check_ms={keys_check:.2f} consents_ms={consents:.2f} consents_or_ms={consents_before:.1f} reference_ms={reference_ms:.2f} "
          f"reference_before_ms={reference_before:.1f} identifier_ms={identifier_ms:.2f} "
          f"identifier_before_ms={identifier_before:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
