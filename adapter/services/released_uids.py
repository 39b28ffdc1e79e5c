"""The UIDs a restricted view releases, and their index.

A de-identified (TRAIN) or pseudonymised (HRESCH) DICOM object carries new Study, Series and SOP
Instance UIDs: keyed hashes of the originals (adapter.mapping.dicom_uids.keyed_uid, PS3.15
Annex E "consistent replacement"), one UID space per view, which cannot be reversed. A reader in
such a view names the released UIDs (WADO-RS retrieve, QIDO-RS by StudyInstanceUID…), so the
adapter finds the instance through an index of them (``dicom_released_uids``), written in the
transaction that stores the instance (adapter.services.ingest, adapter.services.dicom_ingest):
one lookup, not a hash of every instance held.

The index is only as good as the key it was computed with: ``fingerprint`` names the key and the
UID root (without revealing the key), and at start-up (adapter.services.registry) the store
rebuilds the index when the stored fingerprint differs: a new pseudonym key, a new UID root, or a
database written before the index existed.
"""

from __future__ import annotations

import functools
import hashlib
import hmac

from adapter.errors import ConfigurationError
from adapter.mapping.dicom_deid import HRESCH_CONTEXT, TRAIN_CONTEXT
from adapter.mapping.dicom_uids import keyed_uid
from adapter.model.decision import View
from adapter.model.dicom import DicomInstance, ReleasedUids

#: The views that release mapped UIDs, and the context (UID space) of each.
RELEASED_VIEWS: dict[View, str] = {View.DEIDENTIFIED: TRAIN_CONTEXT, View.PSEUDONYMISED: HRESCH_CONTEXT}


@functools.lru_cache(maxsize=65536)
def mapped_uid(root: str, key: bytes, uid: str, context: str) -> str:
    return keyed_uid(root, key, uid, context=context)


class ReleasedUidSpaces:
    """The UID spaces of the restricted views under one UID root and key."""

    def __init__(self, root: str, key: bytes) -> None:
        if not key:
            raise ConfigurationError("the UID mapping key must not be empty")
        self.root = root
        self.key = key  # de-identification maps every other UI value of a released object with it
        spaces = "|".join(f"{view.value}={context}" for view, context in sorted(RELEASED_VIEWS.items()))
        self.fingerprint = hmac.new(key, f"released-uids|{root}|{spaces}".encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never show the key
        return f"ReleasedUidSpaces(root={self.root!r})"

    def uid(self, view: View, original: str) -> str:
        """``original`` as ``view`` releases it (unchanged in a view that maps no UIDs)."""
        context = RELEASED_VIEWS.get(view)
        return original if context is None else mapped_uid(self.root, self.key, original, context)

    def rows(self, instance: DicomInstance) -> list[ReleasedUids]:
        """The index rows of ``instance``: one per restricted view."""
        return [ReleasedUids(view=view.value, sop_instance_uid=instance.sop_instance_uid,
                             study_instance_uid=self.uid(view, instance.study_instance_uid),
                             series_instance_uid=self.uid(view, instance.series_instance_uid),
                             released_sop_instance_uid=self.uid(view, instance.sop_instance_uid))
                for view in RELEASED_VIEWS]
