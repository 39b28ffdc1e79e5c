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
from adapter.model.photo import Identifier
from adapter.services.released_uids import ReleasedUidSpaces, mapped_uid
from adapter.store.port import SearchCriteria, TokenCriterion
from adapter.store.schema import dicom_instances, resources, tokens
from adapter.store.search import search_statement
from adapter.store.sql import SqlRecordStore

SYSTEM = "urn:oid:2.999.1.1"


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Milliseconds per call (best of ``repeat``)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1000


def fill(store: SqlRecordStore, n: int) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    rows = [{"sop_instance_uid": f"2.25.{uuid.uuid4().int}", "study_instance_uid": f"2.25.{uuid.uuid4().int}",
             "series_instance_uid": f"2.25.{uuid.uuid4().int}", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7",
             "modality": "OT", "record_type": "Media", "record_id": str(uuid.uuid4()), "patient_system": SYSTEM,
             "patient_value": f"MRN-{i}", "blob_sha256": None,
             "study_date": f"2024{1 + i % 12:02d}{1 + i % 28:02d}", "created": now}
            for i in range(n)]
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
          f"qido_date_ms={qido_date:.2f} qido_date_scan_ms={qido_date_scan:.1f} consents_ms={consents:.2f} consents_or_ms={consents_before:.1f} reference_ms={reference_ms:.2f} "
          f"reference_before_ms={reference_before:.1f} identifier_ms={identifier_ms:.2f} "
          f"identifier_before_ms={identifier_before:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
