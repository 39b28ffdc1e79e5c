"""Pure consent policy: the ingest assessment, the read decision and Consent → grant reading.

No I/O and no clock: callers pass the tables, the patient's Consents as grants, and ``now``.
"""

from adapter.consent.decision import (
    decide,
    decide_audit_export,
    decide_mark_entered_in_error,
    decide_outbox_follow_up,
    decide_outbox_list,
    decide_outbox_requeue,
    permitted_purposes,
    reads_consents_whole,
    refusal_hidden,
    refused_for_every_record,
)
from adapter.consent.grants import grant_from_consent, grants_from_consent, inverted_period
from adapter.consent.ingest import (
    IngestAssessment,
    assess_ingest,
    check_capture_time,
    check_exif_capture_time,
)
from adapter.consent.rules import ANY_PURPOSE, PurposeClass, classify_purpose

__all__ = [
    "ANY_PURPOSE",
    "IngestAssessment",
    "PurposeClass",
    "assess_ingest",
    "check_capture_time",
    "check_exif_capture_time",
    "classify_purpose",
    "decide",
    "decide_audit_export",
    "decide_mark_entered_in_error",
    "decide_outbox_follow_up",
    "decide_outbox_list",
    "decide_outbox_requeue",
    "grant_from_consent",
    "grants_from_consent",
    "inverted_period",
    "permitted_purposes",
    "reads_consents_whole",
    "refusal_hidden",
    "refused_for_every_record",
]
