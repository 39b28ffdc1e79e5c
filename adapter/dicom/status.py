"""The DICOM edge of the error hierarchy: the one table from an AdapterError class to the DIMSE
status a C-STORE SCP answers with. The table itself is pure data in
:mod:`adapter.mapping.dimse_status` (STOW-RS answers with the same codes as FailureReason and
must not import pynetdicom); this module is where the DICOM edge takes it from."""

from __future__ import annotations

from adapter.mapping.dimse_status import (
    BUG_STATUS,
    CANNOT_UNDERSTAND,
    DATASET_DOES_NOT_MATCH_SOP_CLASS,
    DIMSE_STATUS,
    ELEMENTS_DISCARDED,
    NOT_AUTHORISED,
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED,
    SOP_CLASS_NOT_SUPPORTED,
    SUCCESS,
    dimse_status_for,
    error_comment,
    offending_elements,
)

__all__ = [
    "BUG_STATUS", "CANNOT_UNDERSTAND", "DATASET_DOES_NOT_MATCH_SOP_CLASS", "DIMSE_STATUS", "ELEMENTS_DISCARDED",
    "NOT_AUTHORISED",
    "OUT_OF_RESOURCES", "PROCESSING_FAILURE", "REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED", "SOP_CLASS_NOT_SUPPORTED",
    "SUCCESS", "dimse_status_for", "error_comment", "offending_elements",
]
