"""Parse the purpose of use a reader states (``X-Purpose-Of-Use``: ``TREAT`` or ``system|code``)."""

from __future__ import annotations

from adapter.errors import PurposeOfUseMissing, UnknownPurposeOfUse
from adapter.mapping.tables import Tables
from adapter.model.purpose import V3_ACT_REASON, V3_ACT_REASON_SYSTEMS, PurposeOfUse


def parse_purpose_of_use(value: str | None, tables: Tables) -> PurposeOfUse:
    """A v3-ActReason code, bare or as ``system|code``. No value fails closed (403); a code we do
    not know is refused (400)."""
    if value is None or not value.strip():
        raise PurposeOfUseMissing(
            "every read must state its purpose of use (X-Purpose-Of-Use: a v3-ActReason code such as TREAT)")
    raw = value.strip()
    if "," in raw:  # a list, as HTTP joins repeated headers: one read is decided and audited for one purpose
        raise UnknownPurposeOfUse("X-Purpose-Of-Use states one purpose: several were given, separated by commas",
                                  expression="X-Purpose-Of-Use")
    system = V3_ACT_REASON
    code = raw
    if "|" in raw:
        system, _, code = raw.partition("|")
        if system not in V3_ACT_REASON_SYSTEMS:
            raise UnknownPurposeOfUse(f"purpose-of-use system must be {V3_ACT_REASON}",
                                      expression="X-Purpose-Of-Use")
    if not (code.isascii() and code.isprintable()):
        # HTTP carries the header as bytes, read as Latin-1: a look-alike of a code in UTF-8
        # (fullwidth or Cyrillic letters) would be echoed as mojibake, and is no code either way
        raise UnknownPurposeOfUse("the purpose-of-use code is not an ASCII code (v3-ActReason codes are ASCII "
                                  "letters, such as TREAT)", expression="X-Purpose-Of-Use")
    if code not in tables.purposes.codes:
        raise UnknownPurposeOfUse(f"unknown purpose-of-use code '{code[:40]}'", expression="X-Purpose-Of-Use")
    return PurposeOfUse(code=code, system=V3_ACT_REASON)
