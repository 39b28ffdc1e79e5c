"""The contexts of the restricted views' keyed mappings: the de-identified view (TRAIN and its
kin) and the pseudonymised one (HRESCH and its kin) each map DICOM UIDs
(adapter.mapping.dicom_deid) and FHIR logical ids (adapter.mapping.released_ids) under a context
of its own, so that their copies cannot be linked to each other. A module of its own, below
both: the FHIR views import the ids' mapping, and the DICOM copies the FHIR mapping."""

from __future__ import annotations

TRAIN_CONTEXT = "deidentified"
HRESCH_CONTEXT = "pseudonymised"

__all__ = ["HRESCH_CONTEXT", "TRAIN_CONTEXT"]
