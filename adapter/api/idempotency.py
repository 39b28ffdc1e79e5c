"""The ``Idempotency-Key`` request header of ``POST /photos`` and of a ``POST /fhir`` transaction:
a retry sent with the key its request was stored under is answered with what was stored
(adapter.services.ingest). A key is the same only when it is the same key: one longer than
:data:`MAX_IDEMPOTENCY_KEY` characters is refused, never cut (cut, two keys alike in their first
200 characters were one, and the second photo was refused as the first one's key reused)."""

from __future__ import annotations

from adapter.errors import InvalidQuery
from adapter.model.record import MAX_IDEMPOTENCY_KEY

HEADER = "Idempotency-Key"


def idempotency_key(value: str | None) -> str | None:
    """The request's key (None without one, or an empty one).

    Raises:
        InvalidQuery: the key is longer than MAX_IDEMPOTENCY_KEY characters (400, naming the
            header): nothing is read of the request beyond its headers, nothing stored.
    """
    if not value:
        return None
    if len(value) > MAX_IDEMPOTENCY_KEY:
        raise InvalidQuery(f"{HEADER} takes at most {MAX_IDEMPOTENCY_KEY} characters; this one has {len(value)}: "
                           "nothing was stored; send the request with a shorter key (a hash of a longer one, "
                           "say)", expression=HEADER)
    return value
