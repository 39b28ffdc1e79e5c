"""What a transaction Bundle that says it is an IHE MHD submission must carry before any of it is
stored (ITI-65 Provide Document Bundle, https://profiles.ihe.net/ITI/MHD/ITI-65.html; MHD 4.2).

A Bundle identifies as MHD when ``Bundle.meta.profile`` names a profile of MHD's namespace
(``https://profiles.ihe.net/ITI/MHD/StructureDefinition/``) or when it carries a List (the adapter
takes a List only as MHD's SubmissionSet or Folder). Such a Bundle is checked against the
ProvideBundle profiles' rules that say whether the submission is whole; a mis-mapped Document
Source (a dropped SubmissionSet, an empty sourceId) is then told, with the element named, and
nothing is stored (ITI-65 2:3.65.4.1.3: the Document Recipient fails the transaction). A plain
FHIR transaction (a Binary and its Media or DocumentReference, maybe a Consent, no List and no MHD
profile) is not an MHD submission and is not held to them.

The rules, each from the profile that states it:

- ``Bundle.meta.profile``: a profile of MHD's namespace is one of the ProvideBundle profiles
  (``IHE.MHD.Minimal.ProvideBundle``, ``IHE.MHD.UnContained.Comprehensive.ProvideBundle``,
  ``IHE.MHD.Comprehensive.ProvideBundle``); another (a misspelt or invented one) names nothing
  the Bundle could be validated against.
- ``IHE.MHD.Minimal.ProvideBundle``: ``entry:SubmissionSet`` 1..1.
- ``IHE.MHD.List`` (SubmissionSet and Folder): ``code`` 1..1 from MHDlistTypesVS (required:
  ``submissionset`` or ``folder`` of ``https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes``).
- ``IHE.MHD.Minimal.SubmissionSet``: extension ``ihe-sourceId`` 1..1 (valueIdentifier), the
  uniqueId identifier (``IHE.MHD.SubmissionSetUniqueIdIdentifier``: system ``urn:ietf:rfc:3986``,
  value an OID URN, ``mhd-startswithoid``), ``date`` 1..1 (submissionTime); ``entry.item`` a
  Reference to the DocumentReferences and Folders of the submission, which a Bundle-local
  reference names an entry of this Bundle (bundle.html#references). The submission's
  DocumentReferences are those its SubmissionSet lists (ITI-65 2:3.65.4.1.2.1: the SubmissionSet
  List's entries reference the DocumentReferences of the submission), so it lists at least one
  and every DocumentReference of the Bundle: one it does not list would be stored outside the
  submission the source believes it made.
- ``IHE.MHD.Minimal.DocumentReference``: ``masterIdentifier`` 1..1 (the uniqueId) and
  ``content.attachment.contentType`` 1..1 (mimeType).

The uniqueId is found by its value, an ``urn:oid:``, rather than by ``use``: MHD 4.2 marks it
``usual`` (and the entryUUID, an ``urn:uuid:``, ``official``), but Document Sources are seen
labelling them the other way round; what the submission must carry is its OID.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from adapter.errors import InvalidInput, NotSupported, RequiredElementMissing, UnknownCode
from adapter.mapping.fhir_r4 import find_extension

#: MHD's canonical namespace of StructureDefinitions (profiles and extensions).
MHD_STRUCTURE_DEFINITION = "https://profiles.ihe.net/ITI/MHD/StructureDefinition/"
#: MHD's List types (IHE.MHD.List ``code``, required binding MHDlistTypesVS).
MHD_LIST_TYPES = "https://profiles.ihe.net/ITI/MHD/CodeSystem/MHDlistTypes"
SUBMISSION_SET = "submissionset"
FOLDER = "folder"
#: The SubmissionSet's sourceId (IHE.MHD.Minimal.SubmissionSet: 1..1).
EXT_SOURCE_ID = MHD_STRUCTURE_DEFINITION + "ihe-sourceId"
#: The ITI-65 Provide Document Bundle profiles of MHD 4.2.
PROVIDE_BUNDLE_PROFILES = frozenset(MHD_STRUCTURE_DEFINITION + name for name in (
    "IHE.MHD.Minimal.ProvideBundle", "IHE.MHD.UnContained.Comprehensive.ProvideBundle",
    "IHE.MHD.Comprehensive.ProvideBundle"))


class BundleEntry(Protocol):
    """An entry of the transaction as adapter.mapping.transaction reads it."""

    @property
    def index(self) -> int: ...

    @property
    def resource(self) -> Mapping[str, Any]: ...

    @property
    def path(self) -> str: ...


def list_type(resource: Mapping[str, Any]) -> str | None:
    """The MHDlistTypes code of a List (``submissionset`` or ``folder``), None when it has none."""
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, Mapping) else None
    for coding in codings if isinstance(codings, list) else ():
        if isinstance(coding, Mapping) and coding.get("system") == MHD_LIST_TYPES \
                and coding.get("code") in (SUBMISSION_SET, FOLDER):
            return str(coding["code"])
    return None


def submission_set_unique_id(resource: Mapping[str, Any]) -> tuple[str, str] | None:
    """The SubmissionSet's uniqueId ``(system, value)``: its identifier whose value is an OID
    URN (IHE.MHD.SubmissionSetUniqueIdIdentifier), the one marked ``usual`` first (as MHD 4.2
    marks it); None when it has none."""
    raw = resource.get("identifier")
    found = [i for i in (raw if isinstance(raw, list) else []) if isinstance(i, Mapping)
             and isinstance(i.get("system"), str) and i["system"]
             and isinstance(i.get("value"), str) and i["value"].startswith("urn:oid:") and len(i["value"]) > 8]
    found.sort(key=lambda i: i.get("use") != "usual")
    return (str(found[0]["system"]), str(found[0]["value"])) if found else None


def _profiles(bundle: Mapping[str, Any]) -> list[tuple[int, str]]:
    meta = bundle.get("meta")
    profiles = meta.get("profile") if isinstance(meta, Mapping) else None
    return [(k, p) for k, p in enumerate(profiles if isinstance(profiles, list) else []) if isinstance(p, str)]


def _mhd_profile(url: str) -> bool:
    return url.startswith(MHD_STRUCTURE_DEFINITION)


def identifies_as_mhd(bundle: Mapping[str, Any], entries: Sequence[BundleEntry]) -> bool:
    """Does the Bundle say it is an MHD submission: a profile of MHD's namespace in
    ``Bundle.meta.profile``, or a List among its entries (module docstring)?"""
    return any(_mhd_profile(p) for _, p in _profiles(bundle)) or \
        any(e.resource.get("resourceType") == "List" for e in entries)


def check_provide_bundle(bundle: Mapping[str, Any], entries: Sequence[BundleEntry],
                         named_entry: Callable[[str, BundleEntry], int | None]) -> None:
    """Refuse a Bundle that identifies as an MHD submission and is not a whole one (module
    docstring), naming the element; ``named_entry(reference, entry)``: the index of the entry of
    this Bundle that ``reference``, written in ``entry``, names (None: none). Nothing is checked
    of a plain transaction.

    Raises:
        NotSupported: ``Bundle.meta.profile`` names an MHD profile that is no ProvideBundle (400).
        UnknownCode: a List whose code is not MHDlistTypes submissionset or folder (422).
        RequiredElementMissing: no SubmissionSet; a SubmissionSet without sourceId, uniqueId,
            date or entry; a DocumentReference without masterIdentifier, or whose attachment has
            no contentType (422).
        InvalidInput: a second SubmissionSet; a SubmissionSet item naming no entry of the Bundle;
            a DocumentReference the SubmissionSet does not list (422).
    """
    if not identifies_as_mhd(bundle, entries):
        return
    for k, url in _profiles(bundle):
        if _mhd_profile(url) and url.split("|", 1)[0] not in PROVIDE_BUNDLE_PROFILES:
            raise NotSupported(f"Bundle.meta.profile {url[:120]!r} is no MHD ProvideBundle profile: an ITI-65 Bundle "
                               "declares IHE.MHD.Minimal.ProvideBundle, IHE.MHD.UnContained.Comprehensive.ProvideBundle "
                               "or IHE.MHD.Comprehensive.ProvideBundle", expression=f"Bundle.meta.profile[{k}]")
    submission_sets: list[BundleEntry] = []
    for e in entries:
        if e.resource.get("resourceType") != "List":
            continue
        kind = list_type(e.resource)
        if kind is None:
            raise UnknownCode(f"an MHD List is a SubmissionSet or a Folder: its code is {SUBMISSION_SET} or {FOLDER} "
                              f"of {MHD_LIST_TYPES} (IHE.MHD.List, required binding)", expression=f"{e.path}.code")
        if kind == SUBMISSION_SET:
            submission_sets.append(e)
    if not submission_sets:
        raise RequiredElementMissing("an MHD Provide Document Bundle carries its SubmissionSet (a List coded "
                                     f"{MHD_LIST_TYPES}#{SUBMISSION_SET}; ProvideBundle entry:SubmissionSet 1..1)",
                                     expression="Bundle.entry")
    if len(submission_sets) > 1:
        raise InvalidInput("an MHD Provide Document Bundle carries one SubmissionSet (ProvideBundle "
                           "entry:SubmissionSet 1..1)", expression=submission_sets[1].path)
    listed = _check_submission_set(submission_sets[0], named_entry)
    for e in entries:
        if e.resource.get("resourceType") == "DocumentReference":
            _check_document_reference(e)
            if e.index not in listed:
                raise InvalidInput("the SubmissionSet does not list this DocumentReference (its entry.item): an MHD "
                                   "submission's SubmissionSet lists every DocumentReference of the Bundle",
                                   expression=e.path)


def _check_submission_set(e: BundleEntry, named_entry: Callable[[str, BundleEntry], int | None]) -> set[int]:
    """IHE.MHD.Minimal.SubmissionSet: sourceId, uniqueId, date (submissionTime), and items (at
    least one) that name entries of the Bundle; returns the indexes of the entries named."""
    r = e.resource
    source_id = find_extension(r, EXT_SOURCE_ID)  # the entries were read by their models: a list
    value = source_id.get("valueIdentifier") if source_id is not None else None
    if not (isinstance(value, Mapping) and isinstance(value.get("value"), str) and value["value"].strip()):
        raise RequiredElementMissing(f"the SubmissionSet needs its sourceId (extension {EXT_SOURCE_ID}, a "
                                     "valueIdentifier with a value: IHE.MHD.Minimal.SubmissionSet 1..1)",
                                     expression=f"{e.path}.extension")
    if submission_set_unique_id(r) is None:
        raise RequiredElementMissing("the SubmissionSet needs its uniqueId: an identifier with system "
                                     "urn:ietf:rfc:3986 and an OID value (urn:oid:…), use usual "
                                     "(IHE.MHD.SubmissionSetUniqueIdIdentifier)", expression=f"{e.path}.identifier")
    if not (isinstance(r.get("date"), str) and r["date"]):
        raise RequiredElementMissing("the SubmissionSet needs its date, the submissionTime "
                                     "(IHE.MHD.Minimal.SubmissionSet date 1..1)", expression=f"{e.path}.date")
    items = r.get("entry")
    if not (isinstance(items, list) and items):
        raise RequiredElementMissing("the SubmissionSet lists the DocumentReferences of the submission (entry.item; "
                                     "ITI-65): it has no entry", expression=f"{e.path}.entry")
    listed: set[int] = set()
    for k, item in enumerate(items):
        ref = item.get("item") if isinstance(item, Mapping) else None
        reference = ref.get("reference") if isinstance(ref, Mapping) else None
        named = named_entry(reference, e) if isinstance(reference, str) and reference else None
        if named is None:
            raise InvalidInput("the SubmissionSet's entry.item names no entry of this Bundle: a submission lists the "
                               "DocumentReferences (and Folders) it carries", expression=f"{e.path}.entry[{k}].item")
        listed.add(named)
    return listed


def _check_document_reference(e: BundleEntry) -> None:
    """IHE.MHD.Minimal.DocumentReference: ``masterIdentifier`` 1..1 (the DocumentEntry's
    uniqueId) and ``content.attachment.contentType`` 1..1 (its mimeType)."""
    if not isinstance(e.resource.get("masterIdentifier"), Mapping):
        raise RequiredElementMissing("an MHD DocumentReference carries the document's uniqueId as its "
                                     "masterIdentifier (IHE.MHD.Minimal.DocumentReference masterIdentifier 1..1)",
                                     expression=f"{e.path}.masterIdentifier")
    content = e.resource.get("content")
    for k, c in enumerate(content if isinstance(content, list) else []):
        attachment = c.get("attachment") if isinstance(c, Mapping) else None
        if isinstance(attachment, Mapping) and not (isinstance(attachment.get("contentType"), str)
                                                    and attachment["contentType"]):
            raise RequiredElementMissing("an MHD DocumentReference states its document's contentType (mimeType; "
                                         "IHE.MHD.Minimal.DocumentReference content.attachment.contentType 1..1)",
                                         expression=f"{e.path}.content[{k}].attachment.contentType")


__all__ = ["EXT_SOURCE_ID", "FOLDER", "MHD_LIST_TYPES", "MHD_STRUCTURE_DEFINITION", "PROVIDE_BUNDLE_PROFILES",
           "SUBMISSION_SET", "BundleEntry", "check_provide_bundle", "identifies_as_mhd", "list_type",
           "submission_set_unique_id"]
