"""Keyed pseudonyms for the PSEUDONYMISED view (purpose of use HRESCH and its children).

A pseudonym is HMAC-SHA256 (RFC 2104, FIPS 198-1) under a secret key over a canonical,
unambiguous encoding of the patient's identifier (system, value). The same identifier gives the
same pseudonym in every resource and every request as long as the key stays the same; without
the key a pseudonym can be neither reversed nor recomputed from a known identifier, which a
plain hash would allow (identifier values have little entropy). The result is carried as
``Identifier {system: <pseudonym system>, value: <pseudonym>}`` (ISO 25237 pseudonymisation;
https://hl7.org/fhir/R4/security-labels.html, integrity label PSEUDED).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from typing import Any

from adapter.errors import ConfigurationError

# Domain separation: a pseudonym can never collide with another HMAC use of the same key.
_CONTEXT = b"clinical-image-adapter/patient-pseudonym/v1"
# 128 bits of the MAC: collisions are negligible (birthday bound 2^64) and base32 makes 26 chars.
_DIGEST_BYTES = 16
#: What every pseudonym looks like (:meth:`Pseudonymizer.pseudonym`): 26 lower-case base32 characters.
_PSEUDONYM = re.compile(r"[a-z2-7]{26}", re.ASCII)


def is_pseudonym(value: str) -> bool:
    """Could ``value`` be a pseudonym (of any key)? Tells by its form only, never by the store."""
    return _PSEUDONYM.fullmatch(value) is not None


def _field(value: str) -> bytes:
    """Length-prefixed UTF-8, so ("a|b", "c") and ("a", "b|c") never encode alike."""
    raw = value.encode("utf-8")
    return len(raw).to_bytes(4, "big") + raw


class Pseudonymizer:
    """Stable keyed pseudonyms of patient identifiers.

    ``key`` is the secret (Settings.pseudonym_key, at least 32 characters in production);
    ``system`` is the Identifier.system the pseudonyms are published under
    (Policy.pseudonyms.system). The system is part of the MAC input, so two pseudonym domains
    that share a key still cannot be linked.
    """

    __slots__ = ("_key", "_system")

    def __init__(self, key: bytes, system: str) -> None:
        if not key:
            raise ConfigurationError("the pseudonym key must not be empty")
        if not system:
            raise ConfigurationError("the pseudonym identifier system must not be empty")
        self._key = bytes(key)
        self._system = system

    @property
    def system(self) -> str:
        """The Identifier.system of the pseudonyms this instance makes."""
        return self._system

    @property
    def fingerprint(self) -> str:
        """Names the key and system (not revealing the key): what the store's pseudonym index
        was computed with (SqlRecordStore.index_pseudonyms)."""
        message = _CONTEXT + b"/fingerprint" + _field(self._system)
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymizer(system={self._system!r})"

    def pseudonym(self, identifier_system: str, value: str) -> str:
        """The pseudonym of the identifier ``identifier_system|value``: 26 characters of
        lower-case RFC 4648 base32 (``[a-z2-7]``), safe in URLs and search tokens.

        The identifier is used exactly as given: FHIR identifier matching is exact
        (https://hl7.org/fhir/R4/datatypes.html#Identifier).
        """
        message = _CONTEXT + _field(self._system) + _field(identifier_system) + _field(value)
        digest = hmac.new(self._key, message, hashlib.sha256).digest()[:_DIGEST_BYTES]
        return base64.b32encode(digest).decode("ascii").rstrip("=").lower()

    def of(self, patient: Any) -> str:
        """The pseudonym of a patient Identifier (anything with ``system`` and ``value``)."""
        return self.pseudonym(patient.system, patient.value)

    def identifier(self, identifier_system: str, value: str) -> dict[str, str]:
        """The FHIR Identifier carrying the pseudonym of ``identifier_system|value``."""
        return {"system": self._system, "value": self.pseudonym(identifier_system, value)}

    def patient_reference(self, identifier_system: str, value: str) -> dict[str, Any]:
        """A logical Reference to the pseudonymised Patient
        (https://hl7.org/fhir/R4/references.html#logical)."""
        return {"type": "Patient", "identifier": self.identifier(identifier_system, value)}


__all__ = ["Pseudonymizer", "is_pseudonym"]
