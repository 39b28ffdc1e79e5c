"""The grants of a patient's Consents as the ingest consent rules read them
(adapter.consent.assess_ingest), parsed once per Consent version and process.

What a Consent version grants never changes, so its grants are parsed once and kept under
(id, version); each ingest asks the store only which versions the patient has (no documents),
then loads the ones not seen yet. Without this, a patient with a Consent per photo made every
ingest load and parse all of them (~50 µs each: 15 ms at 300). Shared by the photo ingest
(adapter.services.ingest) and the DICOM ingest (adapter.services.dicom_ingest), whose threads
call it concurrently.
"""

from __future__ import annotations

import threading

from adapter.consent import grants_from_consent
from adapter.model.consent import ConsentGrant
from adapter.model.photo import Identifier
from adapter.store.port import RecordStore

#: Consent versions whose grants are kept (a few hundred bytes each).
GRANTS_CACHE_SIZE = 20_000


class ConsentGrantsCache:
    """A patient's Consent grants, in the store's order (:meth:`grants_for_patient`).

    Fail-closed as an uncached read: a Consent whose grants cannot be read
    (``grants_from_consent`` raises an AdapterError) is not kept, so the error reaches every
    ingest of the patient until the Consent is changed, as it did when each ingest parsed them all.
    """

    def __init__(self, store: RecordStore, *, size: int = GRANTS_CACHE_SIZE) -> None:
        self._store = store
        self._size = size
        # (Consent id, version) -> its grants, oldest first (evicted first)
        self._grants: dict[tuple[str, int], tuple[ConsentGrant, ...]] = {}
        self._lock = threading.Lock()

    def grants_for_patient(self, patient: Identifier) -> list[ConsentGrant]:
        """The grants of ``patient``'s Consents: one store query for their versions, plus one
        that loads and parses the versions not seen before."""
        versions = self._store.consent_versions_for_patient(patient)
        if not versions:
            return []
        cache = self._grants
        missing = [cid for cid, version in versions if (cid, version) not in cache]
        if missing:
            for stored in self._store.get_many("Consent", missing):
                parsed = tuple(grants_from_consent(stored.resource))
                with self._lock:
                    while len(cache) >= self._size:
                        del cache[next(iter(cache))]  # the oldest entry
                    cache[(stored.id, stored.version_id)] = parsed
        grants: list[ConsentGrant] = []
        for key in versions:
            cached = cache.get(key)
            if cached is None:  # changed since the versions were read, or evicted: read afresh
                return self._read_grants(patient)
            grants.extend(cached)
        return grants

    def _read_grants(self, patient: Identifier) -> list[ConsentGrant]:
        grants: list[ConsentGrant] = []
        for stored in self._store.consents_for_patient(patient):
            grants.extend(grants_from_consent(stored.resource))
        return grants


__all__ = ["GRANTS_CACHE_SIZE", "ConsentGrantsCache"]
