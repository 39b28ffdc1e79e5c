"""The error hierarchy as DICOM storage statuses: ONE table from an AdapterError class to the
DIMSE status a C-STORE SCP answers with (most specific class along the MRO wins, as at the HTTP
edge in adapter.api.outcome). The same codes are STOW-RS FailureReason (0008,1197) values
(PS3.18 10.5.3), so the table is pure data here in ``mapping/``, shared by the DICOM edge
(``adapter.dicom.status`` re-exports it) and the DICOMweb STOW-RS path, which must not import
pynetdicom (STYLE §1).

Statuses (PS3.4 B.2.3 Storage Service Class; PS3.7 Annex C general statuses):

* ``0xA700`` Refused: Out of Resources: the store is busy or failed (nothing was kept; the
  sender may retry), the data folder is down to its free-space reserve, or the object is too
  costly to take (too many pixels, too large).
* ``0xA900`` Error: Data Set does not match SOP Class: the dataset is not what its SOP class
  requires (a Type 1 attribute missing, a structure the IOD forbids, a SOP Class or SOP Instance
  UID in the dataset that differs from the C-STORE request's), and a data set that contradicts
  what is stored under a UID it names (:class:`adapter.errors.InstanceConflict`): a SOP Instance
  UID already stored for another patient, study, series or class than the data set names, or
  with another content (the stored instance kept, Offending Element (0008,0018)), a
  Study Instance UID held for another patient, a Series Instance UID held in another study.
  PS3.4 B.2.3 has no status of its own for it: A900 is the Storage Service's failure that says
  the data set is not the one its identity (its SOP Instance, Study or Series Instance UID)
  stands for, a failure of the data set the sender does not cure by sending it again (as it
  would 0xA7xx); 0110 Processing failure would say the fault is the SCP's, 0124 Not authorised
  that the sender lacks a permission, and Cxxx that it could not be read. Offending Element
  names the UID.
* ``0xC000`` Error: Cannot understand: the dataset does not parse (truncated, malformed), its
  pixel data cannot be read, or a coded value has no mapping (unknown IssuerOfPatientID).
* ``0xC122`` Referenced Transfer Syntax not supported (a Cxxx Cannot understand for C-STORE;
  PS3.18 10.5.3 names it for STOW-RS): the object's transfer syntax has no lossless rendering
  here (over DIMSE such a context is not accepted in the first place). Native pixel data in a
  layout without one (YBR, palette colour, signed samples, 16-bit RGB) is ``0xC000``.
* ``0x0122`` Refused: SOP Class not supported: normally already refused at association
  negotiation (no presentation context); kept for the same refusal after negotiation. Never
  for an object whose SOP class is accepted (its pixel data is 0xC000 or 0xC122 above).
* ``0x0124`` Refused: Not authorised: the consent or policy rules refuse the object.
* ``0x0110`` Processing failure: an error that names no cause of the sender's (a bad setting, a
  conflict the store could not resolve).
* ``0xB006`` Warning: Elements Discarded: never answered by the SCP. An object sent again under a
  SOP Instance UID stored already with another content (even of the same patient, study, series
  and class) is refused 0xA900 above: B006 says the instance was stored with some elements
  discarded (PS3.4 Table B.2-1), and senders count every Bxxx as stored, so a correction that
  did not land would go unseen (adapter.services.dicom_ingest). A peer's B006 counts as stored
  (adapter.dicom.scu).

Every refusal carries its diagnostics as Error Comment (0000,0902) (:func:`error_comment`), and
the tags it names as Offending Element (0000,0901) where the status has that field
(:func:`offending_elements`).

pynetdicom's "exception in the handler" status (``0xC211`` for C-STORE) is reserved for real
bugs: :data:`BUG_STATUS` is answered only for exceptions outside the hierarchy.
"""

from __future__ import annotations

import re

from adapter import errors as e

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
SOP_CLASS_NOT_SUPPORTED = 0x0122
REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
NOT_AUTHORISED = 0x0124
PROCESSING_FAILURE = 0x0110
#: pynetdicom's status for an exception escaping the C-STORE handler: a bug, never a refusal.
BUG_STATUS = 0xC211
#: Warning: stored, some elements discarded (module docstring); a peer's answer, never the SCP's.
ELEMENTS_DISCARDED = 0xB006

DIMSE_STATUS: dict[type[e.AdapterError], int] = {
    e.AdapterError: PROCESSING_FAILURE,
    e.InvalidInput: CANNOT_UNDERSTAND,
    e.InvalidResource: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    e.InvalidQuery: CANNOT_UNDERSTAND,  # an HTTP read's query: never raised over DIMSE
    e.AmbiguousRequest: CANNOT_UNDERSTAND,  # an HTTP request's headers: never raised over DIMSE
    e.RequiredElementMissing: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    e.UnknownCode: CANNOT_UNDERSTAND,
    e.UndecodableImage: CANNOT_UNDERSTAND,
    e.UncleanableDocument: PROCESSING_FAILURE,  # a read's release in a restricted view: never raised over DIMSE
    e.UnknownPurposeOfUse: CANNOT_UNDERSTAND,
    e.BusinessRuleViolation: NOT_AUTHORISED,
    e.ConsentRequired: NOT_AUTHORISED,
    e.PatientReferenceConflict: PROCESSING_FAILURE,  # a FHIR reference: never raised over DIMSE
    e.UnsupportedMediaType: CANNOT_UNDERSTAND,
    e.NotSupported: SOP_CLASS_NOT_SUPPORTED,
    e.UnsupportedPixelData: CANNOT_UNDERSTAND,
    e.UnsupportedTransferSyntax: REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED,
    e.NotAcceptable: PROCESSING_FAILURE,  # HTTP content negotiation: never raised over DIMSE
    e.UpdateCreateNotSupported: PROCESSING_FAILURE,  # a FHIR update: never raised over DIMSE
    e.ImageTooLarge: OUT_OF_RESOURCES,
    e.TooCostly: OUT_OF_RESOURCES,
    e.PayloadTooLarge: OUT_OF_RESOURCES,
    e.RequestTimeout: PROCESSING_FAILURE,  # an HTTP request body that stopped: never raised over DIMSE
    e.Forbidden: NOT_AUTHORISED,
    e.PurposeOfUseMissing: NOT_AUTHORISED,
    e.NotFound: PROCESSING_FAILURE,
    e.UnreleasableObject: PROCESSING_FAILURE,  # a stored object no try can release
    e.MissingImage: PROCESSING_FAILURE,  # a stored image gone from the data folder (a resend compared with it)
    e.Gone: PROCESSING_FAILURE,  # an expired page of a FHIR search: never raised over DIMSE
    e.UnsupportedResourceType: PROCESSING_FAILURE,  # a FHIR resource type: never raised over DIMSE
    e.Conflict: PROCESSING_FAILURE,
    e.PreconditionFailed: PROCESSING_FAILURE,
    e.PreconditionRequired: PROCESSING_FAILURE,  # an HTTP If-Match: never raised over DIMSE
    e.InstanceConflict: DATASET_DOES_NOT_MATCH_SOP_CLASS,
    e.Transient: OUT_OF_RESOURCES,
    e.StorageError: OUT_OF_RESOURCES,
    e.StudyStarted: OUT_OF_RESOURCES,  # an HTTP ingest's: never raised over DIMSE
    e.InsufficientStorage: OUT_OF_RESOURCES,
    e.PolicyError: PROCESSING_FAILURE,
    e.ConfigurationError: PROCESSING_FAILURE,
    e.NoStore: PROCESSING_FAILURE,
}

#: Error Comment (0000,0902) is LO: at most 64 characters, no backslash or control characters.
#: The end of a sentence: a full stop and a space, not one of an "e.g." or "i.e.".
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)\. ")
_COMMENT_MAX = 64


def dimse_status_for(err: e.AdapterError) -> int:
    """The DIMSE status answering ``err`` (its most specific class in :data:`DIMSE_STATUS`)."""
    for cls in type(err).__mro__:
        if cls in DIMSE_STATUS:
            return DIMSE_STATUS[cls]
    return PROCESSING_FAILURE


#: A DICOM tag as the error hierarchy's expressions name one: ``(gggg,eeee)`` (adapter.errors).
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")


def offending_elements(err: e.AdapterError, status: int) -> list[int]:
    """Offending Element (0000,0901) of the response answering ``err`` with ``status``: the tags
    its expressions name, in order, for the statuses whose related fields list it (PS3.4 Table
    B.2-1: A9xx Data Set does not match SOP Class, Cxxx Cannot understand, and the Bxxx
    warnings; PS3.7 C.4). Empty for the others (out of resources, not authorised, processing
    failure: they concern no element), and for an error naming none (a truncated data set)."""
    if not (status >> 8 == 0xA9 or status >> 12 in (0xB, 0xC)):
        return []
    tags: list[int] = []
    for expression in err.expression:
        for group, element in _TAG.findall(expression):
            tag = int(group, 16) << 16 | int(element, 16)
            if tag not in tags:
                tags.append(tag)
    return tags


def error_comment(err: e.AdapterError | str) -> str:
    """The diagnostics (of an error, or of a warning) as an Error Comment (0000,0902): LO in the
    default repertoire (the command set has no Specific Character Set), ≤ 64 characters.
    Diagnostics never carry patient data (adapter.errors). Longer diagnostics give their first
    sentence where it fits, whole (the rest stays in the audit's reason and STOW-RS's), else
    their first 61 characters and "..."."""
    diagnostics = err if isinstance(err, str) else err.diagnostics
    text = "".join(ch if " " <= ch <= "~" and ch != "\\" else " " for ch in diagnostics).strip()
    if len(text) <= _COMMENT_MAX:
        return text
    end = _SENTENCE_END.search(text)
    if end is not None and end.start() < _COMMENT_MAX:
        return text[:end.start() + 1]
    return text[:_COMMENT_MAX - 3].rstrip() + "..."


__all__ = [
    "BUG_STATUS", "CANNOT_UNDERSTAND", "DATASET_DOES_NOT_MATCH_SOP_CLASS", "DIMSE_STATUS", "ELEMENTS_DISCARDED",
    "NOT_AUTHORISED", "OUT_OF_RESOURCES", "PROCESSING_FAILURE", "REFERENCED_TRANSFER_SYNTAX_NOT_SUPPORTED",
    "SOP_CLASS_NOT_SUPPORTED", "SUCCESS", "dimse_status_for",
    "error_comment", "offending_elements",
]
