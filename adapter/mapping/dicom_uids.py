"""Deterministic DICOM UIDs under the organisation's root (``ADAPTER_UID_ROOT``).

PS3.5 §9.1: a UID is dot-separated numeric components, each without a leading zero (a lone
``0`` is allowed), at most 64 characters in all. PS3.5 §B.1: the root must be one the
organisation owns (an ISO OID registration); the suffix is ours to allocate.

Why hashes and not counters or random UUIDs: regenerating the object of a record (after a
restart, on another node, for a second C-STORE) must give the same SOP Instance UID, so a PACS
sees the same instance and not a duplicate. The suffix is the SHA-256 of an unambiguous,
length-prefixed encoding of the parts, read as an integer and cut to the digits the root
leaves (≥ 23 digits, ~76 bits, with the 40-character root limit below; up to 39 digits with a
short root). Different ``parts`` never share an encoding.

Root ``2.25`` (PS3.5 §B.2, UUID-derived UIDs) needs no registration: the suffix is then a real
UUID, version 8 (RFC 9562: implementation-defined bits, here the hash), so an organisation
without an OID of its own still writes valid, stable UIDs. dciodvfy refuses the ``2.999``
example arc as a root.

A photo's UIDs derived from its record id (:func:`photo_uids`: the SOP Instance, the Series, the
Study of a photo without an encounter) are keyed: the hash is an HMAC under a key of the
adapter's (derived from the pseudonym key, adapter.services.registry). With a plain hash the
record id, which de-identified and pseudonymised FHIR views keep, gave the original UIDs, and so
the way to the identified object in the PACS. The Study of an encounter stays a plain hash of the
patient and the encounter, which no restricted view shows: photos of one encounter share it
across a new key and across the upgrade that keyed the others.

Grouping decisions (:func:`photo_uids`):

* **Study** = patient + encounter: photos of one encounter share a StudyInstanceUID. Without
  an encounter every record is its own study; grouping by patient and day would merge unrelated
  photos and depend on a time zone.
* **Series** = one per record. Modality, Laterality, equipment and Conversion Type are
  series-level attributes (PS3.3 C.7.3.1, C.7.5.1) and differ between photos of one encounter
  (another kind, another arm, another phone); one series per photo keeps every series
  consistent.
* **SOP Instance** = the record id.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from adapter import __version__
from adapter.errors import ConfigurationError
from adapter.model.photo import Identifier

#: The adapter's Implementation Class UID (PS3.7 D.3.3.2 in A-ASSOCIATE, PS3.10 7.1 in the
#: File Meta): one UID for this implementation, made once from a fixed random UUID (PS3.5
#: B.2, under 2.25: no registration needed) and kept, whatever ADAPTER_UID_ROOT is; the
#: version is told by the Implementation Version Name. A peer may recognise the adapter by it.
IMPLEMENTATION_CLASS_UID = "2.25.15138414013536306882560336800188664005"
#: Implementation Version Name (SH, at most 16 characters): "CIA_" and the package version.
IMPLEMENTATION_VERSION_NAME = f"CIA_{__version__}"[:16]

MAX_UID = 64
UUID_ROOT = "2.25"     # PS3.5 §B.2: UUID-derived UIDs need no registered root
MAX_ROOT = 40          # leaves ≥ 23 digits (~76 bits) for the hash
_MAX_SUFFIX_DIGITS = 39  # 2^128 has 39 digits
_ROOT = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_CONTEXT = b"clinical-image-adapter/dicom-uid/v1"


@dataclass(frozen=True, slots=True)
class PhotoUids:
    """The three UIDs of the DICOM object made from one photo record."""

    study: str
    series: str
    sop_instance: str


def check_uid_root(root: str) -> str:
    """Return ``root`` if it can prefix our UIDs, else raise :class:`ConfigurationError`.

    At least two components, digits and dots only, no leading zeros, at most 40 characters.
    """
    if not isinstance(root, str) or not _ROOT.match(root) or len(root) > MAX_ROOT:
        raise ConfigurationError(
            f"ADAPTER_UID_ROOT must be an OID the organisation owns: digits and dots, at least two "
            f"components, no leading zeros, at most {MAX_ROOT} characters (got {root!r})")
    return root


def is_valid_uid(uid: str) -> bool:
    """PS3.5 §9.1 grammar and length."""
    return bool(_UID.match(uid)) and len(uid) <= MAX_UID


def _encode(parts: tuple[str, ...]) -> bytes:
    out = bytearray(_CONTEXT)
    for part in parts:
        raw = part.encode("utf-8")
        out += len(raw).to_bytes(4, "big") + raw
    return bytes(out)


def _suffix(digest: bytes, digits: int) -> str:
    """A decimal component of at most ``digits`` digits from the first 16 bytes of a digest
    (``str(int)`` never has a leading zero)."""
    value = int.from_bytes(digest[:16], "big")
    return str(value % (10 ** min(digits, _MAX_SUFFIX_DIGITS)))


def _uuid_v8(digest: bytes) -> str:
    """The first 16 bytes of a digest as an RFC 9562 UUIDv8 (version 8, variant 10xx: a UUID
    whose other 122 bits are the implementer's, here a hash), in decimal for a ``2.25`` UID
    (PS3.5 §B.2)."""
    value = int.from_bytes(digest[:16], "big")
    value = (value & ~(0xF << 76)) | (0x8 << 76)      # version nibble
    value = (value & ~(0x3 << 62)) | (0x2 << 62)      # variant bits 10
    return str(value)


def stable_uid(root: str, *parts: str, key: bytes | None = None) -> str:
    """A UID under ``root`` that depends only on ``root``, ``parts`` and ``key`` (module
    docstring): the hash is SHA-256, or HMAC-SHA256 under ``key`` when given.

    Raises:
        ConfigurationError: ``root`` is not a usable UID root, or ``key`` is empty.
        ValueError: no ``parts``.
    """
    check_uid_root(root)
    if not parts:
        raise ValueError("stable_uid needs at least one part")
    if key is None:
        digest = hashlib.sha256(_encode(parts)).digest()
    elif not key:
        raise ConfigurationError("the UID key must not be empty")
    else:
        digest = hmac.new(key, _encode(parts), hashlib.sha256).digest()
    suffix = _uuid_v8(digest) if root == UUID_ROOT else _suffix(digest, MAX_UID - len(root) - 1)
    uid = f"{root}.{suffix}"
    assert is_valid_uid(uid), uid
    return uid


def keyed_uid(root: str, key: bytes, uid: str, *, context: str) -> str:
    """The replacement of ``uid`` when de-identifying: HMAC-SHA256 under ``key`` (so the
    original cannot be recomputed from a guess), then :func:`stable_uid`. The same ``uid``,
    ``key`` and ``context`` always give the same result, so study/series/instance structure
    and references survive; different ``context`` values (one per release profile) cannot be
    linked to each other.
    """
    if not key:
        raise ConfigurationError("the UID mapping key must not be empty")
    mac = hmac.new(key, _encode(("keyed-uid", context, uid)), hashlib.sha256).hexdigest()
    return stable_uid(root, "keyed", context, mac)


def photo_uids(root: str, key: bytes, *, record_id: str, encounter: str | None, patient: Identifier) -> PhotoUids:
    """Study, Series and SOP Instance UIDs for the record ``record_id``, those derived from it
    keyed by ``key`` (module docstring).

    ``encounter`` is the encounter's literal reference or ``system|value`` (whatever the record
    carries, used as given); ``patient`` is the record's subject identifier.
    """
    if not record_id:
        raise ValueError("record_id must not be empty")
    if encounter:  # not keyed (module docstring): one study for the encounter, whatever the key
        study = stable_uid(root, "study", "encounter", patient.system, patient.value, encounter)
    else:
        study = stable_uid(root, "study", "record", record_id, key=key)
    return PhotoUids(
        study=study,
        series=stable_uid(root, "series", record_id, key=key),
        sop_instance=stable_uid(root, "instance", record_id, key=key),
    )


__all__ = ["IMPLEMENTATION_CLASS_UID", "IMPLEMENTATION_VERSION_NAME", "MAX_ROOT", "MAX_UID", "UUID_ROOT", "PhotoUids", "check_uid_root", "is_valid_uid", "keyed_uid", "photo_uids",
           "stable_uid"]
