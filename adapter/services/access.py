"""Reading records back under purpose of use: the only read path out of the store.

Following Medplum's approach (STYLE §4), a :class:`ScopedReader` is built for one request
context; every resource it returns has passed the consent decision, been rendered in the view
that decision requires and stamped with security labels, and every decision (allow or deny) is
audited. Routes and DICOM handlers never read the store directly.

A reader in a restricted view names resources by the ids its view shows (adapter.mapping.released_ids):
each id it is given is taken to the stored one as the resource is loaded (a stored id finds nothing
there), and everything it returns is rendered with the view's ids. The audit trail names the stored
resources: it is the custodian's, who must be able to find what was disclosed.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import heapq
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from adapter.consent import (
    ANY_PURPOSE,
    decide,
    decide_outbox_follow_up,
    decide_outbox_list,
    grants_from_consent,
    reads_consents_whole,
    refusal_hidden,
    refused_for_every_record,
)
from adapter.consent.decision import CARE_REFUSALS, ENTERED_IN_ERROR_IMAGE
from adapter.consent.grants import data_references
from adapter.errors import (
    AdapterError,
    Forbidden,
    ImageTooLarge,
    InvalidQuery,
    NotAcceptable,
    NotFound,
    NotSupported,
    UncleanableDocument,
    UndecodableImage,
    UnsupportedPixelData,
    UnsupportedResourceType,
)
from adapter.imaging import strip_but_orientation, strip_to_pixels_only, thumbnail_jpeg
from adapter.imaging.pdf import pdf_without_metadata
from adapter.imaging.rendition import GreyLevels, Viewport, Window, rendered_with
from adapter.imaging.thumbnail import RENDERED_TYPES, rendered_as, upright
from adapter.imaging.unlinkable import DEIDENTIFIED_COPY, PSEUDONYMISED_COPY, unlinkable_copy
from adapter.mapping.codes import DICOM_UID_SYSTEM
from adapter.mapping.dicom_fhir import PDF, extract_frame, extract_image, grey_levels
from adapter.mapping.dicom_json import read_released
from adapter.mapping.dicom_photo import code_meanings, fixed_texts, quality_texts
from adapter.mapping.dicom_tables import ENCAPSULATED_PDF, DicomTables
from adapter.mapping.pseudonym import Pseudonymizer
from adapter.mapping.released_ids import IdSpace, ReleasedIds
from adapter.mapping.tables import Tables
from adapter.mapping.views import render
from adapter.model.consent import ConsentGrant
from adapter.model.decision import CareRefusal, Decision, View
from adapter.model.dicom import DicomInstance
from adapter.model.photo import Identifier, PhotoKind, PhotoSource
from adapter.model.purpose import MhdTransaction, RequestContext
from adapter.model.record import AccessFacts, IndexRow, StoredResource
from adapter.services.audit import Auditor, DicomAudit, Found, OnePatientDecided
from adapter.services.dicom_objects import (
    INSTANCE,
    SERIES,
    STUDY,
    DicomEntry,
    DicomQuery,
    DicomRelease,
    dicom_object_for,
    match_level,
    regenerating,
)
from adapter.services.history_paging import HistoryCursor, HistoryPaging, history_paging
from adapter.services.relabelling import ConsentChange, relabelled
from adapter.services.released_uids import ReleasedUidSpaces
from adapter.services.search_paging import (
    UPDATED_TYPES,
    Key,
    instant_key,
    last_updated_at,
    page_of,
    within_snapshot,
)
from adapter.services.search_params import CURSOR_PARAM, PageCursor, SearchRequest
from adapter.services.view_search import (
    criteria_in_id_space,
    criteria_in_view,
    since_refusal,
    sort_key_in_view,
)
from adapter.store.port import BlobStore, RecordStore, SearchCriteria, TokenCriterion
from adapter.text import is_fhir_id

log = logging.getLogger("adapter.access")

READABLE_TYPES = ("Media", "DocumentReference", "Binary", "Consent", "Provenance")
#: At most this many resources are included (_include/_revinclude) in one page of a search.
MAX_INCLUDED = 1000
_DENIED = "access denied for this purpose of use"
#: What a DICOM UID is made of (PS3.5 9.1): what a retrieve that found nothing may name as asked.
_UID_AS_SENT = re.compile(r"[0-9.]{1,64}", re.ASCII)
#: The views as a read that found nothing in one is audited ("not found in the de-identified view of TRAIN").
_VIEW_NAMES = {View.FULL: "full", View.DEIDENTIFIED: "de-identified", View.PSEUDONYMISED: "pseudonymised"}
T = TypeVar("T")


#: How the caller answers a read it was permitted (:meth:`AccessService._answered`), asked with
#: the resource read, its decision and when a Consent last relabelled it (or None): it raises the
#: AdapterError of a precondition that fails (If-Match, 412: nothing is sent), else says what the
#: answer leaves out ("…304 Not Modified…", a HEAD's headers only: no body sent), or None for the
#: whole answer. The audit adds it to the decision's reason, so the trail tells a 200, a 304 and a
#: HEAD apart (review dpo F6).
Answering = Callable[[dict[str, Any], Decision, datetime | None], str | None]


def _denial(decision: Decision) -> str:
    """What a refusal says: little (:data:`_DENIED`), unless the purpose sees the record and is
    refused its image because the record was entered in error (adapter.consent.decision), which
    it may be told: the record it reads says so; or the purpose is care, refused by the patient's
    Consents, which care reads anyway: then why (Decision.care_refusal, in the decision module's
    words: adapter.consent.decision.CARE_REFUSALS; clinical-safety review 6), so that a clinician
    knows what refuses it and what would let care read it, rather than breaking glass. A 403, not
    410 Gone: nothing was deleted (FHIR http.html#read keeps 410 for a deleted resource); the
    record and its history stand."""
    if decision.entered_in_error:
        return ENTERED_IN_ERROR_IMAGE
    if decision.care_refusal is not None:
        return CARE_REFUSALS[decision.care_refusal]
    return _DENIED


def _version_of(document: dict[str, Any]) -> int:
    """A stored version's versionId, as a number (0: none)."""
    return int((document.get("meta") or {}).get("versionId") or 0)


def _not_known(resource_type: str, id: str) -> str:
    """What a read by an id that names nothing in the reader's view is told (404)."""
    return f"{resource_type}/{id} is not known" if is_fhir_id(id) \
        else f"no {resource_type} has this id"  # not echoed: it may hold anything


def _refusal(decision: Decision, not_known: str, release: DicomRelease | None = None) -> AdapterError:
    """The error a refused read raises: 403 (:func:`_denial`), unless the decision hides the
    refusal (Decision.hidden: the purpose names records by a restricted view's ids or UIDs), or a
    retrieve in a restricted view's UIDs (``release``) found a record decided otherwise; then the
    404 a read naming nothing gets, saying ``not_known`` as that one does."""
    if decision.hidden or (release is not None and release.view is not View.FULL):
        return NotFound(not_known)
    return Forbidden(_denial(decision))


def _refusal_of_all(decisions: Sequence[Decision], not_known: str, release: DicomRelease) -> AdapterError:
    """:func:`_refusal` of a whole study or series, none of whose instances is permitted."""
    if release.view is not View.FULL or all(d.hidden for d in decisions):
        return NotFound(not_known)
    return Forbidden(_denial_of_all(decisions))


def _denial_of_all(decisions: Iterable[Decision]) -> str:
    """What the refusal of a whole study or series says (none of its instances permitted): to
    care, each reason its instances were refused for, once (:func:`_denial`); else little."""
    reasons = dict.fromkeys(CARE_REFUSALS[d.care_refusal] for d in decisions if d.care_refusal is not None)
    return "; ".join(reasons) if reasons else _DENIED


def withheld_from_care(withheld: Counter[CareRefusal], what: str) -> tuple[str, ...]:
    """What a care search says of the matches it withheld (``withheld``: how many for each
    reason, Decision.care_refusal), one text a reason: "2 <what> withheld: consent withdrawn: …".
    Only a care purpose's refusals carry a reason, so another purpose's search says nothing (a
    count would tell that records exist)."""
    return tuple(f"{count} {what} withheld from this search: {CARE_REFUSALS[why]}"
                 for why, count in sorted(withheld.items()) if count)


def overrode_for_care(decisions: Iterable[Decision]) -> tuple[str, ...]:
    """What break-glass overrode in releasing ``decisions``' records (Decision.overrode), each
    reason once: what would have refused care alone."""
    return tuple(dict.fromkeys(CARE_REFUSALS[d.overrode] for d in decisions if d.overrode is not None))


@dataclass(frozen=True)
class ReadResult:
    resource: dict[str, Any]
    decision: Decision
    #: when a Consent that may apply to it changed after the version read, in a view that shows
    #: the Consents (:meth:`ScopedReader.relabelled`)
    relabelled: datetime | None = None


@dataclass(frozen=True)
class HistoryResult:
    resources: list[dict[str, Any]]  # newest first, rendered in the decision's view
    total: int  # versions the resource has
    decision: Decision
    more: bool  # older versions beyond this page
    paging: HistoryPaging | None = None  # the cursors of the page's links; None for _count=0


@dataclass(frozen=True)
class BinaryContent:
    content_type: str
    data: bytes
    resource: dict[str, Any]
    decision: Decision
    relabelled: datetime | None = None  # as ReadResult's


@dataclass(frozen=True)
class SearchResult:
    resources: list[dict[str, Any]]
    total: int | None  # None when the request did not ask for it (_total=none)
    break_glass: bool
    more: bool = False  # permitted matches beyond this page
    included: list[dict[str, Any]] = field(default_factory=list)  # _include/_revinclude, each decided
    paging: SearchPaging | None = None  # the pages its links name
    #: to a care purpose: what the matches withheld were withheld for (:func:`withheld_from_care`)
    withheld: tuple[str, ...] = ()
    #: what break-glass overrode in releasing the page (:func:`overrode_for_care`)
    overrode: tuple[str, ...] = ()


@dataclass(frozen=True)
class SearchPaging:
    """The pages a search answer links (adapter.services.search_paging): the first of its
    snapshot, the next (None: none follows) and the previous (None: none precedes)."""

    first: PageCursor
    next: PageCursor | None = None
    previous: PageCursor | None = None


@dataclass(frozen=True)
class DicomContent:
    """A DICOM object (Part 10 bytes) in the view its decision requires; the UIDs are the
    released ones (mapped in the restricted views)."""

    data: bytes
    decision: Decision
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class ReleasedImage:
    """An image (or document) made from a released DICOM object: its bytes, media type, and
    whether break-glass released it and what it overrode (the answer says so: overrode_for_care)."""

    data: bytes
    content_type: str
    break_glass: bool
    grey: GreyLevels | None = None  # a greyscale image's values, for a window (None: colour, a document)
    overrode: tuple[str, ...] = ()  # what break-glass set aside (overrode_for_care)


@dataclass(frozen=True)
class DicomSearchResult:
    """QIDO-RS: the permitted instances, whether break-glass released any of them, and whether
    more permitted results follow the page (when asked: ``tell_more``)."""

    entries: list[DicomEntry]
    break_glass: bool
    more: bool = False
    withheld: tuple[str, ...] = ()  # as SearchResult's
    overrode: tuple[str, ...] = ()  # as SearchResult's


class DicomRetrieval:
    """One permitted instance of a study or series retrieve (WADO-RS), decided and audited;
    :meth:`answer` makes its released object and what is answered of it (one at a time, so a large
    study streams)."""

    def __init__(self, entry: DicomEntry, decision: Decision,
                 load: Callable[[], AbstractContextManager[DicomContent]]) -> None:
        self.entry = entry
        self.decision = decision
        self._load = load

    def answer(self, make: Callable[[DicomContent], T]) -> T:
        """``make(content)`` of the released object, made under the object's turn
        (adapter.services.dicom_objects.regenerating), which is given back once the object is
        dropped: only what ``make`` returns outlives it."""
        with self._load() as content:
            return make(content)


def named_resource(store: RecordStore, reference: str) -> StoredResource | None:
    """The stored resource a Consent's ``provision.data`` names (``Type/id``, of a type a reader
    may read): a Media also by the DocumentReference an R5 reader knows it as. None when none is."""
    resource_type, _, id = reference.partition("/")
    if resource_type not in READABLE_TYPES or not id:
        return None
    stored = store.get(resource_type, id)
    if stored is None and resource_type == "DocumentReference":
        stored = store.get("Media", id)  # R5's name of a Media
    return stored


def consent_facts(resource_id: str, resource: dict[str, Any]) -> AccessFacts | None:
    """A Consent is patient record data too: it is guarded like a document (care needs no
    further consent, any other purpose needs the patient's consent for it), except that care
    reads it whatever it or another Consent denies (``consent_directive``)."""
    ident = (resource.get("patient") or {}).get("identifier") or {}
    if not ident.get("system") or not ident.get("value"):
        return None
    return AccessFacts(governed_by=f"Consent/{resource_id}",
                       patient=Identifier(system=ident["system"], value=ident["value"]),
                       kind=PhotoKind.DOCUMENT, source=PhotoSource.CLINICIAN, consent_directive=True)


def _why_not_sent(exc: Exception) -> str:
    """Why an answer the decision permitted was not sent, for its audit: the error's diagnostics
    (a 406, a stored image missing), or its class: never a value of the record."""
    return exc.diagnostics if isinstance(exc, AdapterError) else f"the answer could not be made ({type(exc).__name__})"


def _image_in_view(data: bytes, content_type: str, view: View, max_pixels: int, *, stored: bool = True) -> bytes:
    """A Binary's bytes as ``view`` releases them: the de-identified view gets image bytes with no
    metadata at all, turned upright when they were stored with an EXIF Orientation (without the
    tag they would lie on their side: adapter.imaging.thumbnail.upright; ``max_pixels`` bounds
    that decode); the pseudonymised view the same but for the orientation, kept as an
    Orientation-only EXIF (adapter.imaging.strip_but_orientation: no ICC profile, whose text tags
    can name a person or a device, and the DICOM copies of both views drop it too);
    each written in its view's own way (adapter.imaging.unlinkable: unlike the stored bytes,
    ``data`` when ``stored``, and the other view's copy, the pixels the same); both get a PDF
    without its metadata, its content as it is (adapter.imaging.pdf; one that cannot be cleaned
    raises UncleanableDocument: not released); care and break-glass get them as stored.
    ``stored`` False: ``data`` is a released copy already (a released DICOM object's frame)."""
    if view is View.FULL:
        return data
    if content_type.startswith("image/"):
        unlike = data if stored else None
        if view is View.DEIDENTIFIED:
            stripped = strip_to_pixels_only(upright(data, content_type, max_pixels=max_pixels) or data, content_type)
            return unlinkable_copy(stripped, content_type, DEIDENTIFIED_COPY, source=data, unlike=unlike)
        if view is View.PSEUDONYMISED:
            stripped = strip_but_orientation(data, content_type)
            return unlinkable_copy(stripped, content_type, PSEUDONYMISED_COPY, source=data, unlike=unlike)
    if content_type == PDF:
        return pdf_without_metadata(data)
    return data


#: What one QIDO-RS result is, per level: a study, a series, an instance.
_RESULT_KEYS: dict[str, Callable[[DicomEntry], Any]] = {
    STUDY: lambda e: e.study_instance_uid,
    SERIES: lambda e: (e.study_instance_uid, e.series_instance_uid),
    INSTANCE: lambda e: e.sop_instance_uid,
}


def _rendered(content: DicomContent, max_pixels: int, frame: int | None = None) -> ReleasedImage:
    """A released DICOM object as its Binary's bytes and media type, in the decision's view (or
    its frame ``frame`` so: adapter.mapping.dicom_fhir.extract_frame). A restricted view's object
    holds its PDF without metadata already (adapter.mapping.dicom_deid): it is not cleaned a
    second time."""
    ds = read_released(content.data)
    image = extract_image(ds) if frame is None else extract_frame(ds, frame)
    data = bytes(image.data)
    if image.content_type != PDF:
        data = _image_in_view(data, image.content_type, content.decision.view, max_pixels, stored=False)
    return ReleasedImage(data, image.content_type, content.decision.break_glass, grey_levels(ds),
                         overrode_for_care([content.decision]))


@contextmanager
def _made(content: DicomContent) -> Iterator[DicomContent]:
    """A released object made already (:meth:`ScopedReader.read_dicom`)."""
    yield content


def _whole_studies(batches: Iterable[list[DicomInstance]]) -> Iterator[list[DicomInstance]]:
    """The instances of ``batches`` (ordered by study) regrouped so that no study is split
    between two lists: a batch's last study waits for the next batch (a study is matched and
    counted whole: ModalitiesInStudy, NumberOfStudyRelatedInstances)."""
    held: list[DicomInstance] = []
    for batch in batches:
        chunk = held + batch
        if not chunk:
            continue
        last = chunk[-1].study_instance_uid
        cut = len(chunk)
        while cut > 0 and chunk[cut - 1].study_instance_uid == last:
            cut -= 1
        held = chunk[cut:]
        if cut:
            yield chunk[:cut]
    if held:
        yield held


def consent_grants(stored: StoredResource, patient: Identifier) -> list[ConsentGrant]:
    """The grants of Consent version ``stored`` of ``patient`` as every read decision takes them,
    each knowing its Consent's version (the decision's audit names it). Fail closed: a Consent
    that cannot be interpreted might have denied something, so it is read as a denial of every
    purpose for this patient."""
    try:
        return [dataclasses.replace(g, version=stored.version_id) for g in grants_from_consent(stored.resource)]
    except AdapterError:
        log.warning("Consent/%s cannot be interpreted; read as a denial", stored.id)
        return [ConsentGrant(id=stored.id, patient=patient, status="active", decision="deny",
                             purposes=frozenset({ANY_PURPOSE}), version=stored.version_id)]


def denial_of_the_photo(store: RecordStore, grant: ConsentGrant) -> ConsentGrant:
    """A deny grant whose provision.data names a resource of a photo other than its record (its
    Binary: the image itself; its Provenance; the DocumentReference an R5 reader knows a Media
    as) also names that record, which every decision of the photo is made on (a Binary and the
    DICOM object are decided on their record's facts): a deny of the image is a deny of the
    photo. Fail closed: a deny naming only the Provenance denies the photo too. Permits are left
    as they are (a permit naming a Binary permits nothing)."""
    if grant.decision != "deny" or not grant.data_refs:
        return grant
    records: set[str] = set()
    for ref in grant.data_refs:
        stored = named_resource(store, ref)
        if stored is not None and stored.facts is not None:
            records.add(stored.facts.governed_by)
    if records <= grant.data_refs:
        return grant
    return dataclasses.replace(grant, data_refs=grant.data_refs | records)


class ScopedReader:
    """All reads for one request context."""

    def __init__(self, ctx: RequestContext, *, store: RecordStore, blobs: BlobStore, tables: Tables,
                 pseudonymizer: Pseudonymizer, auditor: Auditor, now: Callable[[], datetime],
                 released_ids: ReleasedIds, dicom_tables: DicomTables | None = None,
                 released_uids: ReleasedUidSpaces | None = None) -> None:
        self.ctx = ctx
        self._store = store
        self._blobs = blobs
        self._tables = tables
        self._pseudonymizer = pseudonymizer
        self._auditor = auditor
        self._now = now
        self._grants: dict[Identifier, list[ConsentGrant]] = {}
        # each patient's Consents as the read validators see them, read with their grants
        self._consent_changes: dict[Identifier, list[ConsentChange]] = {}
        # DICOM egress (WADO-RS, QIDO-RS, Binary as application/dicom); released_uids maps the
        # UIDs of the restricted views (adapter.services.dicom_objects.DicomRelease)
        self._dicom_tables = dicom_tables
        self._released_uids = released_uids
        # the ids of the purpose's view: those the reader names resources by, and is shown
        self._ids: IdSpace = released_ids.space(self._purpose_view())

    # -- the decision -------------------------------------------------------------------
    def _grants_for(self, patient: Identifier) -> list[ConsentGrant]:
        if patient not in self._grants:
            grants: list[ConsentGrant] = []
            changes: list[ConsentChange] = []
            now = self._now()
            for stored in self._store.consents_for_patient(patient):
                own = [denial_of_the_photo(self._store, g) for g in consent_grants(stored, patient)]
                grants.extend(own)
                changes.append(ConsentChange.of(stored.last_updated, stored.version_id, own, now))
            self._grants[patient] = grants
            self._consent_changes[patient] = changes
        return self._grants[patient]

    def relabelled(self, facts: AccessFacts | None, decision: Decision,
                   updated: datetime | str | None, document: dict[str, Any] | None = None) -> datetime | None:
        """When a Consent that may apply to the resource ``facts`` governs last changed, if
        after ``updated``, the lastUpdated of the version read (adapter.services.relabelling:
        what it shows may have changed with no new version, so its Last-Modified moves); None
        in a view that does not show the Consents. Read with the patient's grants, which the
        decision loaded. ``document``: the Consent version read, whose named records' changes
        alone count in a restricted view (each read again: the decision read them too)."""
        if facts is None:
            return None
        self._grants_for(facts.patient)
        named = None
        if facts.consent_directive and decision.view is not View.FULL and document is not None:
            found = (named_resource(self._store, ref) for ref in data_references(document))
            named = [stored.facts for stored in found if stored is not None and stored.facts is not None]
        return relabelled(self._consent_changes.get(facts.patient, ()), facts, decision, updated, named)

    def _facts(self, resource_type: str, id: str, facts: AccessFacts | None,
               resource: dict[str, Any] | None) -> AccessFacts | None:
        if facts is not None:
            return facts
        if resource_type == "Consent" and resource is not None:
            return consent_facts(id, resource)
        return None

    def decide(self, facts: AccessFacts | None, *, resource_only: bool = False,
               released_data: frozenset[str] = frozenset()) -> Decision:
        """The decision on a record's facts; by default for its image (every DICOM and byte path),
        ``resource_only`` for a read that sends a resource and no image bytes (adapter.consent.decide:
        it differs for a record entered in error). ``released_data``: of a Consent, the records its
        provision.data names that the purpose is released (:meth:`_released_data`)."""
        if facts is None:  # nothing says whose data this is: fail closed
            return Decision(permitted=False, reason="no access facts for this resource", purpose=self.ctx.purpose,
                            hidden=refusal_hidden(self.ctx.purpose, self._tables))
        return decide(self.ctx.purpose, facts, self._grants_for(facts.patient), self._tables, self._now(),
                      resource_only=resource_only, released_data=released_data)

    def _decide_resource(self, resource_type: str, facts: AccessFacts | None,
                         resource: dict[str, Any] | None = None) -> Decision:
        """The decision on a read of a ``resource_type`` resource: one with no image bytes but a
        Binary, whose JSON carries them (Binary.data). ``resource``: the version read, of a
        Consent (its provision.data is decided for the purpose: :meth:`_released_data`)."""
        released = self._released_data(resource) \
            if resource_type == "Consent" and resource is not None and facts is not None and facts.consent_directive \
            else frozenset()
        return self.decide(facts, resource_only=resource_type != "Binary", released_data=released)

    def _released_data(self, consent: dict[str, Any]) -> frozenset[str]:
        """The records a Consent's provision.data names (``Type/id`` as written there) that the
        purpose is released, each decided as a read of it would be (not audited: nothing of it is
        sent). Only for a purpose that reads a Consent as the permission it gives
        (adapter.consent.reads_consents_whole: not care, not break-glass); for the others none is
        needed. A Consent named there is not released (its own data would be decided in turn)."""
        if reads_consents_whole(self.ctx.purpose, self._tables):
            return frozenset()
        released: set[str] = set()
        for ref in data_references(consent):
            stored = named_resource(self._store, ref)
            if stored is None or stored.facts is None:
                continue
            if self._decide_resource(stored.resource_type, stored.facts).permitted:
                released.add(ref)
        return frozenset(released)

    def _record_search(self, found: Sequence[Found], *, reason: str, dicom: DicomAudit | None = None,
                       decided: OnePatientDecided | None = None) -> None:
        """Audit a search (FHIR or QIDO-RS) that returned ``found``. One under a purpose the
        decision refuses whatever the record (adapter.consent.refused_for_every_record: break-glass
        the policy does not enable, a purpose it does not permit) is a refusal, outcome 4 with
        why, not an ordinary search that found nothing it may show (outcome 0), so a refused
        break-glass attempt stands out in the trail. The answer is the same: nothing shown.
        ``decided``: whose records the search decided, named when one patient's (a count, a
        search that withheld them: adapter.services.audit.Auditor.record_search)."""
        refusal = refused_for_every_record(self.ctx.purpose, self._tables)
        if refusal is None:
            self._auditor.record_search(self.ctx, found=found, reason=reason, dicom=dicom,
                                        concerned=decided.concerned() if decided is not None else ())
        else:
            self._auditor.record(self.ctx, interaction="search-type", action="E", decision=None, entities=[],
                                 patient=None, reason=f"{refusal}: {reason}", refused=True, dicom=dicom)

    def shown_in_full(self, records: Sequence[str], *, what: str) -> tuple[set[str], bool, tuple[str, ...]]:
        """Of the record references ``records`` ("Media/abc"), those the purpose may see in care's
        full view: an operational list (the forwarding outbox) names a record beside its
        original SOP Instance UID, which no restricted view shows; for the others (and a
        reference that names nothing) it leaves both out. A record entered in error is shown
        to records management (adapter.consent.decide_outbox_follow_up), who must correct its
        copies at the PACS, and to no other purpose. One audit event for ``what``. Also
        whether break-glass released any of them, and what it overrode (:func:`overrode_for_care`:
        the answer says both). A purpose that may not read
        the outbox at all (adapter.consent.decide_outbox_list) is refused (403), audited."""
        listing = decide_outbox_list(self.ctx.purpose, self._tables)
        if not listing.permitted:
            self._auditor.record(self.ctx, interaction="search-type", action="E", decision=listing, entities=[],
                                 patient=None, reason=f"{what}: {listing.reason}", refused=True)
            raise Forbidden(listing.reason)
        shown: dict[str, tuple[Identifier | None, Decision]] = {}
        glass = False
        withheld = 0
        for ref in dict.fromkeys(records):
            resource_type, _, id = ref.partition("/")
            stored = self._store.get(resource_type, id) if resource_type in READABLE_TYPES and id else None
            decision = self.decide(stored.facts if stored is not None else None)
            if stored is not None and stored.facts is not None and stored.facts.entered_in_error:
                # records management follows up its copies at the PACS (decide_outbox_follow_up)
                decision = decide_outbox_follow_up(self.ctx.purpose, self._tables) or decision
            if decision.permitted and decision.view is View.FULL and stored is not None and stored.facts is not None:
                shown[ref] = (stored.facts.patient, decision)
                glass = glass or decision.break_glass
            else:
                withheld += 1
        self._auditor.record_search(self.ctx, found=[(ref, *shown[ref]) for ref in sorted(shown)],
                                    reason=f"{what}: {len(shown)} records shown, {withheld} withheld"
                                           f"{' (break-glass)' if glass else ''}")
        return set(shown), glass, overrode_for_care(decision for _, decision in shown.values())

    # -- reads --------------------------------------------------------------------------
    def _stored(self, resource_type: str, id: str) -> StoredResource | None:
        """The stored resource ``resource_type``/``id`` (an id of the reader's view) names, or
        None. An id holding U+0000 names nothing (no stored id holds it, and the record store
        refuses it in any value, as a write's: "nothing was saved"): it is not looked up."""
        stored_id = self._ids.stored(resource_type, id) if "\x00" not in id else None
        return self._store.get(resource_type, stored_id) if stored_id is not None else None

    def _load(self, resource_type: str, id: str, interaction: str = "read", *, dicom: bool = False) -> StoredResource:
        """The stored resource the reader names ``resource_type``/``id``, an id of its view; its
        ``id`` is the stored one, which the decision and the audit name. One that is not there
        (in this view: care's id in a restricted view, or the other view's, is not there) is 404,
        audited as a read of ``interaction`` that found nothing (:meth:`_audit_not_found`;
        ``dicom``: a Binary asked for as its DICOM object, a DICOM transfer); the answer is the
        same whether the id is another view's or nobody's."""
        if resource_type not in READABLE_TYPES:
            raise UnsupportedResourceType(f"{resource_type} is not served here")
        stored = self._stored(resource_type, id)
        if stored is None:
            asked = self._asked(resource_type, id)
            self._audit_not_found(interaction, [asked] if asked else [],
                                  dicom=DicomAudit.transferred() if dicom else None)
            raise NotFound(_not_known(resource_type, id))
        return stored

    def r5_document_type(self, id: str) -> str:
        """What an R5 reader's ``DocumentReference/<id>`` is stored as: a DocumentReference, or
        a photo's Media (R5 has no Media: it knows a photo as the DocumentReference of its
        Media's id, adapter.mapping.r5); DocumentReference when it is neither (its read then
        finds nothing, audited once as such). Only looked up: nothing is decided or audited."""
        if self._stored("DocumentReference", id) is None and self._stored("Media", id) is not None:
            return "Media"
        return "DocumentReference"

    def _asked(self, resource_type: str, id: str) -> str | None:
        """``resource_type``/``id`` as the audit of a read that found it nowhere names it: by the
        stored id a restricted view's id deciphers to (the trail names stored resources), else as
        the caller sent it, if a FHIR id (care's id asked in a restricted view is named so: the
        trail then leads to the record it was copied from, which is not looked up); else None
        (nothing that could name a resource is echoed)."""
        stored_id = self._ids.stored(resource_type, id)
        named = stored_id if stored_id is not None else id
        return f"{resource_type}/{named}" if is_fhir_id(named) else None

    def _audit_not_found(self, interaction: str, entities: Sequence[str], *, dicom: DicomAudit | None = None) -> None:
        """Audit a read by an id (or DICOM UIDs) that names nothing in the purpose's view: a read
        that failed, outcome 4, "not found in the <view> view of <purpose>", naming what was asked
        (``entities``, ``dicom``'s UIDs) and no patient (adapter.services.audit.Auditor.record_not_found)."""
        reason = f"not found in the {_VIEW_NAMES[self._purpose_view()]} view of {self.ctx.purpose.code}"
        self._auditor.record_not_found(self.ctx, interaction=interaction, entities=entities, reason=reason,
                                       dicom=dicom)

    def _dicom_not_found(self, what: str, *, study: str | None, sop_instance: str | None = None) -> NotFound:
        """Audit a DICOM retrieve (WADO-RS, WADO-URI) whose UIDs name nothing in the purpose's
        view, naming the Study and SOP Instance UIDs as the caller sent them (those that look
        like UIDs: digits and dots); the NotFound to raise, saying ``what``."""
        studies = (study,) if study is not None and _UID_AS_SENT.fullmatch(study) else ()
        instances = (sop_instance,) if sop_instance is not None and _UID_AS_SENT.fullmatch(sop_instance) else ()
        self._audit_not_found("read", [], dicom=DicomAudit.transferred(*studies, instances=instances))
        return NotFound(what)

    def _render(self, stored: StoredResource, decision: Decision) -> dict[str, Any]:
        return self._in_view(stored.resource, decision)

    def _in_view(self, resource: dict[str, Any], decision: Decision) -> dict[str, Any]:
        """``resource`` (a stored version) in the decision's view, with the ids of the reader's."""
        return render(resource, decision, tables=self._tables, pseudonymizer=self._pseudonymizer, ids=self._ids)

    def _refused(self, ctx: RequestContext, interaction: str, decision: Decision, entities: Sequence[str],
                 patient: Identifier | None, resource_type: str, id: str) -> AdapterError:
        """Audit a read ``decision`` that refuses; the error to raise: 403 saying little, or,
        when the decision hides the refusal (Decision.hidden: a restricted view's id), the 404 an
        id naming nothing gets (:func:`_not_known`, ``resource_type``/``id`` as the reader named it)."""
        self._auditor.record(ctx, interaction=interaction, action="R", decision=decision, entities=entities,
                             patient=patient)
        return _refusal(decision, _not_known(resource_type, id))

    def _missing(self, ctx: RequestContext, interaction: str, decision: Decision, entities: Sequence[str],
                 patient: Identifier | None, what: str, asked: str) -> NotFound:
        """Audit a read ``decision`` permitted of ``what``, which is not there (a version, a
        Binary's content), as a read that sent nothing (outcome 4); the NotFound to raise, saying
        ``asked``: ``what`` as the reader named it (the audit names stored resources, the reader
        those of its view)."""
        self._auditor.record_not_sent(ctx, interaction=interaction, entities=entities, patient=patient, why=what,
                                      decision=decision)
        return NotFound(asked)

    def _answered(self, interaction: str, decision: Decision, entities: Sequence[str], patient: Identifier | None,
                  make: Callable[[], dict[str, Any]], precondition: Answering | None,
                  ctx: RequestContext | None = None, relabelled: datetime | None = None) -> dict[str, Any]:
        """The answer of a read ``decision`` permits, made by ``make`` and audited once it is
        known to be sent. ``precondition(resource, decision, relabelled)``: the caller's answer
        (:data:`Answering`): an AdapterError it raises (a failed If-Match, RFC 9110 13.1.1, 412:
        nothing is sent) is audited as a read that failed, outcome 4 saying why, not as a
        disclosure (IHE BALP; R4 AuditEvent.outcome), keeping what the decision rested on; what
        it says the answer leaves out (a 304, a HEAD) is added to the disclosure's outcomeDesc. A
        failure to make the answer (a stored image missing or unreadable) sends nothing either:
        audited so, outcome 4 saying why (the error's diagnostics or class: never a value of the
        record), not as the disclosure it did not make. ``ctx``: the context audited, when not the
        reader's (an IHE MHD Retrieve Document); ``relabelled``: as :meth:`relabelled` gives it."""
        ctx = ctx or self.ctx
        try:
            resource = make()
        except Exception as exc:
            self._auditor.record_not_sent(ctx, interaction=interaction, entities=entities, patient=patient,
                                          why=_why_not_sent(exc), decision=decision)
            raise
        sent: str | None = None
        if precondition is not None:
            try:
                sent = precondition(resource, decision, relabelled)
            except AdapterError as exc:
                self._auditor.record_not_sent(ctx, interaction=interaction, entities=entities, patient=patient,
                                              why=exc.diagnostics, decision=decision)
                raise
        self._auditor.record(ctx, interaction=interaction, action="R", decision=decision, entities=entities,
                             patient=patient, reason=f"{decision.reason}; {sent}"[:500] if sent else None)
        return resource

    def read(self, resource_type: str, id: str, *, precondition: Answering | None = None) -> ReadResult:
        """Read one resource; 403 (saying little) when the purpose is not permitted, 404 as for an
        id that names nothing when the decision hides the refusal (a restricted view: :func:`_refusal`).
        ``precondition``: as :meth:`_answered` (412 audited as nothing sent)."""
        stored = self._load(resource_type, id)
        facts = self._facts(resource_type, stored.id, stored.facts, stored.resource)
        decision = self._decide_resource(resource_type, facts, stored.resource)
        entities, patient = [f"{resource_type}/{stored.id}"], facts.patient if facts else None
        if not decision.permitted:
            raise self._refused(self.ctx, "read", decision, entities, patient, resource_type, id)
        changed = self.relabelled(facts, decision, stored.last_updated, stored.resource)
        resource = self._answered("read", decision, entities, patient, lambda: self._render(stored, decision),
                                  precondition, relabelled=changed)
        return ReadResult(resource=resource, decision=decision, relabelled=changed)

    def check_binary_version(self, id: str, version_id: int) -> None:
        """A vread of a Binary: returns when ``version_id`` is its version (a Binary has one; the
        read that follows decides and audits it). Another version is decided as a vread of any
        other type is, then refused: 403 when the purpose is refused (a refused reader learns
        nothing of which versions exist), else 404, audited as a vread that sent nothing
        (outcome 4). Unknown Binary: 404."""
        stored = self._load("Binary", id, "vread")
        if version_id == stored.version_id:
            return
        decision = self.decide(stored.facts)
        entities, patient = [f"Binary/{stored.id}"], stored.facts.patient if stored.facts else None
        if not decision.permitted:
            raise self._refused(self.ctx, "vread", decision, entities, patient, "Binary", id)
        raise self._missing(self.ctx, "vread", decision, entities, patient,
                            f"Binary/{stored.id} has no version {version_id}", f"Binary/{id} has no version {version_id}")

    def read_version(self, resource_type: str, id: str, version_id: int, *,
                     precondition: Answering | None = None) -> ReadResult:
        """vread: one version of a resource, under the decision a read of it gets now. A past
        version is rendered through the same view; a past Consent version naming another patient
        must be permitted for that patient too (fail closed). Unknown version: 404, audited (when
        permitted) as a vread that sent nothing, outcome 4. ``precondition``: as :meth:`read`. The
        event of a version sent names it, ``Type/id/_history/<n>`` (R4 AuditEvent.entity.what: a
        version-specific reference, as a Consent written is named; review dpo F6)."""
        stored = self._load(resource_type, id, "vread")
        facts = self._facts(resource_type, stored.id, stored.facts, stored.resource)
        document = stored.resource if version_id == stored.version_id else \
            self._store.get_version(resource_type, stored.id, version_id)
        decision = self._stricter_for_versions(self._decide_resource(resource_type, facts, stored.resource),
                                               stored, facts,
                                               [document] if document is not None else [])
        entities, patient = [f"{resource_type}/{stored.id}"], facts.patient if facts else None
        if not decision.permitted:
            raise self._refused(self.ctx, "vread", decision, entities, patient, resource_type, id)
        if document is None:
            raise self._missing(self.ctx, "vread", decision, entities, patient,
                                f"{resource_type}/{stored.id} has no version {version_id}",
                                f"{resource_type}/{id} has no version {version_id}")
        updated = stored.last_updated if document is stored.resource else (document.get("meta") or {}).get("lastUpdated")
        changed = self.relabelled(facts, decision, updated, document)
        resource = self._answered(
            "vread", decision, [f"{resource_type}/{stored.id}/_history/{version_id}"], patient,
            lambda: self._in_view(document, decision), precondition, relabelled=changed)
        return ReadResult(resource=resource, decision=decision, relabelled=changed)

    def _stricter_for_versions(self, decision: Decision, stored: StoredResource, facts: AccessFacts | None,
                               documents: Sequence[dict[str, Any]]) -> Decision:
        """``decision`` (the one a read of ``stored`` gets now), unless a version in
        ``documents`` names other facts (a Consent moved to another patient) that are not
        permitted: then that refusal. Fail closed: a past version shows whom it named."""
        for document in documents:
            if not decision.permitted:
                break
            if document is stored.resource:
                continue
            then = self._facts(stored.resource_type, stored.id, stored.facts, document)
            if decision.released_data is not None and then is not None:
                # a Consent read as the permission it gives: each past version must have given it
                # too (one that denied, or was withdrawn, is the patient's refusal); one naming
                # another patient, whose Consents it is no longer among, needs that patient's
                # permission now besides, as any of their records does
                earlier = self._decide_version(stored, then, document)
                if earlier.permitted and then != facts:
                    earlier = self.decide(dataclasses.replace(then, consent_directive=False), resource_only=True)
            elif then != facts:
                earlier = self._decide_resource(stored.resource_type, then, document)
            else:
                continue
            if not earlier.permitted:
                decision = earlier
        return decision

    def _decide_version(self, stored: StoredResource, facts: AccessFacts, document: dict[str, Any]) -> Decision:
        """The decision a read of a past version ``document`` of Consent ``stored`` would get were
        it the Consent in force: the Consents of the patient it named (``facts``) as they are, this
        one as it was then (adapter.consent.decide). One that cannot be interpreted is read as a
        denial (fail closed)."""
        version = str((document.get("meta") or {}).get("versionId", ""))
        then = StoredResource(resource_type=stored.resource_type, id=stored.id, resource=document,
                              version_id=int(version) if version.isdigit() else stored.version_id,
                              last_updated=stored.last_updated)
        grants = [g for g in self._grants_for(facts.patient) if g.id != stored.id]
        grants += [denial_of_the_photo(self._store, g) for g in consent_grants(then, facts.patient)]
        return decide(self.ctx.purpose, facts, grants, self._tables, self._now(), resource_only=True,
                      released_data=self._released_data(document))

    def read_history(self, resource_type: str, id: str, *, offset: int, count: int,
                     since: datetime | None = None, cursor: HistoryCursor | None = None) -> HistoryResult:
        """history-instance: the versions of a resource, newest first, a page at a time, under
        the decision a read gets now. Pages are keyset pages of a snapshot
        (adapter.services.history_paging): the first fixes the version then current, and
        ``cursor`` (a link's) names the version its page comes before, so a version written
        while a client follows the links is neither shown twice nor makes one skipped; a cursor
        of another view (another purpose's) is refused (400); ``offset`` (a page asked for by
        position, as ``_offset`` links did) counts from the snapshot's newest version. As for
        vread, a version naming another patient must be permitted for that patient too; if one
        on the page is not, nothing is shown (fail closed: leaving it out would hide that the
        resource changed hands). ``since`` (_since): only the versions stored at that instant or
        later; not in the de-identified view, which shows no lastUpdated, and a UTC midnight
        only in the pseudonymised one, which shows it to the day (asked instant by instant, it
        would tell when each change was made, as _lastUpdated would:
        adapter.services.view_search.since_refusal). Unknown: 404."""
        if since is not None and (reason := since_refusal(since, self._purpose_view())) is not None:
            # the audit names the stored resource (nothing is read: the id is only deciphered)
            named = self._asked(resource_type, id)
            self._auditor.record(self.ctx, interaction="history-instance", action="R", decision=None,
                                 entities=[named] if named else [], patient=None, reason=reason, refused=True)
            raise NotSupported(reason, expression="_since")
        view = self._purpose_view().value
        if cursor is not None and cursor.view != view:
            raise InvalidQuery(f"this {CURSOR_PARAM} link was issued in another view than this request's: ask for "
                               "the history again", expression=CURSOR_PARAM)
        stored = self._load(resource_type, id, "history-instance")
        facts = self._facts(resource_type, stored.id, stored.facts, stored.resource)
        decision = self._decide_resource(resource_type, facts, stored.resource)
        snapshot = cursor.snapshot if cursor is not None else stored.version_id
        before = cursor.before if cursor is not None and cursor.before is not None else snapshot + 1
        documents = self._store.list_versions(resource_type, stored.id, offset=offset, limit=count + 1, since=since,
                                              before=before) if decision.permitted and count > 0 else []
        read = len(documents)
        if cursor is not None and cursor.after is not None:  # a previous page: it ends before the one it came from
            documents = [d for d in documents if _version_of(d) > cursor.after]
        more, documents = len(documents) > count or len(documents) < read, documents[:count]
        decision = self._stricter_for_versions(decision, stored, facts, documents)
        shown = [_version_of(d) for d in documents]
        # each version the page releases, by its version-specific reference (review dpo F6)
        released = [f"{resource_type}/{stored.id}/_history/{v}" for v in shown] if decision.permitted else []
        self._auditor.record(self.ctx, interaction="history-instance", action="R", decision=decision,
                             entities=released or [f"{resource_type}/{stored.id}"],
                             patient=facts.patient if facts else None)
        if not decision.permitted:
            raise _refusal(decision, _not_known(resource_type, id))
        rendered = [self._in_view(d, decision) for d in documents]
        total = snapshot if since is None else \
            self._store.count_versions(resource_type, stored.id, since=since, before=snapshot + 1)
        paging = history_paging(snapshot, view, shown, count=count, more=more) if count > 0 else None
        return HistoryResult(resources=rendered, total=total, decision=decision, more=more, paging=paging)

    def read_binary(self, id: str, *, answerable: Callable[[str], object] | None = None,
                    precondition: Answering | None = None,
                    retrieve: MhdTransaction | None = None) -> BinaryContent:
        """The image bytes of a Binary, under the decision of the record it belongs to
        (Binary.securityContext). The de-identified view gets image bytes with no metadata at
        all; a document (PDF) comes without its metadata in both restricted views, as the DICOM
        release has it (adapter.mapping.dicom_deid: released on the patient's consent, its content
        not cleaned); one that cannot be cleaned is not sent (UncleanableDocument, 422), audited
        as a read that failed, as a missing image is.

        ``answerable(content_type)``: the caller's content negotiation, asked once the read is
        permitted and before it is audited; the NotAcceptable it raises (406: nothing is sent) is
        audited as a read that failed, outcome 4, not as a disclosure; so are a Binary with no
        content (404) and a ``precondition`` that fails (:meth:`read`). A refusal is audited and
        403 first, whatever the Accept: a refused reader learns nothing of the content's type.

        ``retrieve``: the request is a GET of the Binary as a Document Consumer does (IHE MHD
        ITI-68); when the Binary is a DocumentReference's document, every event of the read
        (refused, not sent, answered) takes ITI-68's shape. A Media's Binary stays a BALP read."""
        stored = self._load("Binary", id)
        decision = self.decide(stored.facts)
        entities, patient = [f"Binary/{stored.id}"], stored.facts.patient if stored.facts else None
        ctx = self.ctx
        if retrieve is not None and stored.facts is not None \
                and stored.facts.governed_by.startswith("DocumentReference/"):
            ctx = dataclasses.replace(ctx, mhd=retrieve)
        if not decision.permitted:
            raise self._refused(ctx, "read", decision, entities, patient, "Binary", id)
        blob = stored.blob_sha256
        if blob is None:
            raise self._missing(ctx, "read", decision, entities, patient, f"Binary/{stored.id} has no content",
                                f"Binary/{id} has no content")
        content_type = str(stored.resource.get("contentType", "application/octet-stream"))
        if answerable is not None:
            try:
                answerable(content_type)
            except NotAcceptable as exc:
                self._auditor.record_not_sent(ctx, entities=entities, patient=patient, why=exc.diagnostics,
                                              decision=decision)
                raise
        made: list[bytes] = []

        def make() -> dict[str, Any]:  # the bytes too: a stored image missing is a read that sent nothing
            made.append(_image_in_view(self._blobs.read(blob, stored.blob_range), content_type, decision.view,
                                       self._tables.policy.limits.max_pixels))
            return self._render(stored, decision)

        changed = self.relabelled(stored.facts, decision, stored.last_updated)
        resource = self._answered("read", decision, entities, patient, make, precondition, ctx, relabelled=changed)
        data = made[0]
        resource["data"] = base64.b64encode(data).decode("ascii")
        return BinaryContent(content_type=content_type, data=data, resource=resource, decision=decision,
                             relabelled=changed)

    def search(self, resource_types: Sequence[str], request: SearchRequest) -> SearchResult:
        """Search; records not permitted for the purpose are left out and not counted.

        One pass over the candidates of every type, merged in (last_updated, id) order (reversed
        for _sort=-_lastUpdated) and read
        a batch at a time: each is decided, counted, and kept only when it falls on the page
        asked for, so memory is bounded by the page whatever the number of matches.

        A restricted view gives its results in the order of its released ids instead (by
        lastUpdated first when the pseudonymised view, which shows it, sorts by it): the
        stored order is the order of ingest, which a de-identified copy must not tell
        (adapter.services.view_search). Every permitted candidate is then read before the page
        is known, keeping the ``offset + count`` first: memory is still bounded by the page (and
        its offset), but ``_total=none`` no longer stops early.

        Pages are keyset pages of a snapshot (adapter.services.search_paging): the first page
        fixes it, and a link names the key its page follows or precedes, so records stored or
        withheld meanwhile neither repeat nor skip one; ``request.cursor`` names the page."""
        for rt in resource_types:
            if rt not in READABLE_TYPES:
                raise NotSupported(f"{rt} is not served here")
        # in the view's own terms: no search on what the view hides (adapter.services.view_search);
        # a refusal is audited: it may be an attempt to link a copy back to the patient
        try:
            criteria = criteria_in_view(request.criteria, self._purpose_view(),
                                        pseudonym_system=self._pseudonymizer.system, resolve=self._pseudonymised,
                                        sorted_by_last_updated=request.sorted_by_last_updated,
                                        sorted_by_date=request.sort_by_date is not None)
        except NotSupported as exc:
            self._auditor.record(self.ctx, interaction="search-type", action="E", decision=None, entities=[],
                                 patient=None, reason=str(exc), refused=True)
            raise
        snapshot, paging_view = self._snapshot(resource_types, request)
        descending = request.descending
        # the view's ids (_id, target) as stored, per type: an id names a resource of one type;
        # within the snapshot (adapter.services.search_paging), a type with nothing then has none
        # (a type whose resources are updated is bounded below: one updated since is in it)
        typed = {rt: c if rt in UPDATED_TYPES else within_snapshot(c, snapshot[rt]) for rt in resource_types
                 if criteria is not None and snapshot[rt]
                 and (c := criteria_in_id_space(criteria, rt, self._ids)) is not None}
        merged = heapq.merge(*(self._store.search_index(rt, c, descending=descending) for rt, c in typed.items()),
                             key=lambda r: (r.last_updated, r.id), reverse=descending)
        then: dict[tuple[str, str], str] = {}  # the lastUpdated at the snapshot of one updated since
        candidates = self._as_of_snapshot(merged, snapshot, then)
        denied = 0
        for_care: Counter[CareRefusal] = Counter()  # the denied a care reader is told of, by reason
        decided = OnePatientDecided()  # whose records were decided, for the audit

        def permitted_rows() -> Iterator[tuple[IndexRow, Decision, Identifier | None]]:
            """The candidates the purpose is permitted, each with its decision and patient; the
            others counted as withheld."""
            nonlocal denied
            for row in candidates:
                facts, consent = row.facts, None
                if facts is None and row.resource_type == "Consent":
                    stored = self._store.get("Consent", row.id)
                    facts = consent_facts(row.id, stored.resource) if stored else None
                    consent = stored.resource if stored else None
                decision = self._decide_resource(row.resource_type, facts, consent)
                decided.add(facts.patient if facts is not None else None, decision)
                if decision.permitted:
                    yield row, decision, facts.patient if facts is not None else None
                else:
                    denied += 1
                    if decision.care_refusal is not None:
                        for_care[decision.care_refusal] += 1

        key, by_released = self._sort_key(request, then)
        cursor = request.cursor
        # in the store's order, unless a restricted view's ids, a version at the snapshot or a
        # clinical date (_sort=-date: every match read, the page's kept) order it
        in_order = not by_released and not UPDATED_TYPES.intersection(typed) and request.sort_by_date is None
        found_page = page_of(((key(item[0]), item) for item in permitted_rows()), count=request.count,
                             descending=descending,
                             offset=request.offset, after=cursor.after if cursor else None,
                             before=cursor.before if cursor else None, ordered=in_order,
                             read_all=request.total or not in_order)
        permitted = found_page.seen
        on_page = [item for _, item in found_page.items]
        keys = [k for k, _ in found_page.items]
        fixed = tuple(sorted(snapshot.items()))
        paging = SearchPaging(
            first=PageCursor(snapshot=fixed, view=paging_view),
            next=PageCursor(snapshot=fixed, view=paging_view, after=keys[-1]) if found_page.more and keys else None,
            previous=PageCursor(snapshot=fixed, view=paging_view, before=keys[0])
            if found_page.has_previous and keys else None)
        page = [(row, decision) for row, decision, _ in on_page]
        patients = {(row.resource_type, row.id): patient for row, _, patient in on_page}  # for the audit
        resources: list[dict[str, Any]] = []
        by_type: dict[str, list[tuple[IndexRow, Decision]]] = {}
        for row, decision in page:
            by_type.setdefault(row.resource_type, []).append((row, decision))
        loaded: dict[tuple[str, str], StoredResource] = {}
        for rt, items in by_type.items():
            for stored in self._store.get_many(rt, [r.id for r, _ in items]):
                loaded[(rt, stored.id)] = stored
        found: list[Found] = []
        for row, decision in page:
            match = loaded.get((row.resource_type, row.id))
            if match is not None:
                resources.append(self._render(match, decision))
                found.append((f"{row.resource_type}/{row.id}", patients[(row.resource_type, row.id)], decision))
        included, included_glass = self._included(
            request, [loaded[k] for k in ((r.resource_type, r.id) for r, _ in page) if k in loaded], found)
        reason = f"{permitted} permitted, {denied} withheld" + (f", {len(included)} included" if included else "")
        self._record_search(found, reason=reason, decided=decided)
        # every match is read when the total is (read_all): the count is the search's, else those read
        withheld = withheld_from_care(for_care, "matching resources" if request.total or not in_order
                                      else "or more matching resources")
        return SearchResult(resources=resources, total=permitted if request.total else None,
                            break_glass=any(d.break_glass for _, d in page) or included_glass,
                            more=found_page.more, included=included, paging=paging, withheld=withheld,
                            overrode=overrode_for_care(d for _, d in page))

    def _snapshot(self, resource_types: Sequence[str], request: SearchRequest) -> tuple[dict[str, str], str]:
        """The snapshot of a search (adapter.services.search_paging) and the view its keys are
        in: the cursor's, when the request follows a link; else now, the latest lastUpdated of
        each type. A link of another view (another purpose's, whose keys are other ids) or of
        other types (another FHIR version's) is refused (400): the search starts again."""
        view = self._purpose_view().value
        cursor = request.cursor
        if cursor is None:
            latest = {rt: self._store.latest_last_updated(rt) for rt in resource_types}
            return {rt: instant_key(t) if t is not None else "" for rt, t in latest.items()}, view
        snapshot = dict(cursor.snapshot)
        if cursor.view != view or set(snapshot) != set(resource_types):
            raise InvalidQuery(f"this {CURSOR_PARAM} link was issued for a search in another view or FHIR version "
                               "than this request's: search again", expression=CURSOR_PARAM)
        return snapshot, view

    def _as_of_snapshot(self, rows: Iterable[IndexRow], snapshot: dict[str, str],
                        then: dict[tuple[str, str], str]) -> Iterator[IndexRow]:
        """``rows`` as the snapshot held them (adapter.services.search_paging): a resource of a
        type that is updated (a Consent) whose lastUpdated is past the snapshot was updated (or
        created) since: kept, as of its version at the snapshot, whose lastUpdated it is ordered
        by (put in ``then``), so that an update during a walk neither moves it onto a page read
        already nor off the pages to come; left out when it did not exist then. Its content and
        the decision are the current ones, as for any row."""
        for row in rows:
            if row.resource_type in UPDATED_TYPES and instant_key(row.last_updated) > snapshot[row.resource_type]:
                at = last_updated_at(self._versions(row.resource_type, row.id), snapshot[row.resource_type])
                if at is None:
                    continue
                then[(row.resource_type, row.id)] = at
            yield row

    def _versions(self, resource_type: str, id: str) -> Iterator[dict[str, Any]]:
        """The stored versions of a resource, newest first, read a page at a time."""
        offset = 0
        while documents := self._store.list_versions(resource_type, id, offset=offset, limit=100):
            yield from documents
            offset += len(documents)

    def _sort_key(self, request: SearchRequest, then: dict[tuple[str, str], str]
                  ) -> tuple[Callable[[IndexRow], Key], bool]:
        """The key the results are ordered (and paged) by, and whether it is a restricted view's
        (:meth:`search`): care's view, (lastUpdated, id); a restricted view, its released id
        (keyed, meaningless), after lastUpdated when the pseudonymised view sorts by it (its UTC
        day: view_search.sort_key_in_view, as for a date). The lastUpdated is the snapshot's
        (``then``) for a resource updated since."""
        view = self._purpose_view()

        def stamp(row: IndexRow) -> str:
            return sort_key_in_view(then.get((row.resource_type, row.id)) or instant_key(row.last_updated), view)

        if request.sort_by_date is not None:  # a clinical date (search_params.DATE_SORTS), then the id
            column = request.sort_by_date

            def dated(row: IndexRow) -> str:
                # a record without the date sorts before every dated one ("": oldest first), after
                # them newest first; FHIR leaves where missing values go to the server
                moment = row.date if column == "date" else row.creation
                return sort_key_in_view(instant_key(moment), view) if moment is not None else ""

            if not self._ids.released_ids:
                return (lambda row: (dated(row), row.id)), False
            released_ids = self._ids
            return (lambda row: (dated(row), released_ids.released(row.resource_type, row.id))), True
        if not self._ids.released_ids:
            return (lambda row: (stamp(row), row.id)), False
        ids = self._ids

        def released(row: IndexRow) -> Key:
            return (ids.released(row.resource_type, row.id),)

        if request.sorted_by_last_updated:  # the pseudonymised view (the de-identified one refuses it)
            return (lambda row: (stamp(row), *released(row))), True
        return released, True

    def _included(self, request: SearchRequest, matches: Sequence[StoredResource],
                  found: list[Found]) -> tuple[list[dict[str, Any]], bool]:
        """The resources ``_revinclude=Provenance:target`` and ``_include=Provenance:target``
        add to a page (search.html#include, Bundle.entry.search.mode ``include``): each is
        decided for the purpose on its own facts, as a read of it would be, and left out,
        without a trace, when not permitted; none is a match of the page already; at most
        MAX_INCLUDED. Returns them rendered, and whether any was released under break-glass; adds
        each, with its patient, to ``found`` (for the audit)."""
        if not matches or not (request.include_targets or request.revinclude_provenance):
            return [], False
        seen = {(m.resource_type, m.id) for m in matches}
        candidates: list[tuple[str, str]] = []
        if request.revinclude_provenance:
            targets = tuple(TokenCriterion(param="target", code=f"{m.resource_type}/{m.id}") for m in matches)
            for row in self._store.search_index("Provenance", SearchCriteria(tokens=(targets,))):
                if len(candidates) >= MAX_INCLUDED:
                    break
                if ("Provenance", row.id) not in seen:
                    seen.add(("Provenance", row.id))
                    candidates.append(("Provenance", row.id))
        for m in matches if request.include_targets else ():  # a Provenance's targets
            for target in m.resource.get("target") or []:
                ref = target.get("reference") if isinstance(target, dict) else None
                rtype, _, rid = ref.partition("/") if isinstance(ref, str) else ("", "", "")
                if rtype in request.include_targets and rid and "/" not in rid \
                        and (rtype, rid) not in seen and len(candidates) < MAX_INCLUDED:
                    seen.add((rtype, rid))
                    candidates.append((rtype, rid))
        out: list[dict[str, Any]] = []
        glass = False
        by_type: dict[str, list[str]] = {}
        for rtype, rid in candidates:
            by_type.setdefault(rtype, []).append(rid)
        stored_by_key = {(s.resource_type, s.id): s for rtype, ids in by_type.items()
                         for s in self._store.get_many(rtype, ids)}
        for rtype, rid in candidates:
            stored = stored_by_key.get((rtype, rid))
            if stored is None:
                continue
            facts = self._facts(rtype, rid, stored.facts, stored.resource)
            decision = self._decide_resource(rtype, facts, stored.resource)
            if decision.permitted:
                glass = glass or decision.break_glass
                out.append(self._render(stored, decision))
                found.append((f"{rtype}/{rid}", facts.patient if facts is not None else None, decision))
        if self._ids.released_ids:  # not in the order they were stored (:meth:`search`)
            out.sort(key=lambda r: (str(r.get("resourceType")), str(r.get("id"))))
        return out, glass

    # -- DICOM: WADO-RS, QIDO-RS, Binary as application/dicom ----------------------------
    # The same decision as the FHIR reads, made on the facts of the record an instance belongs
    # to; the object and its attributes are released in the decision's view. UIDs the caller
    # gives are in the released space of its purpose's view (mapped UIDs for TRAIN, HRESCH…).

    def _release(self, view: View) -> DicomRelease:
        if self._dicom_tables is None:
            raise NotSupported("DICOM is not served here")
        return DicomRelease(view, uids=self._released_uids, pseudonymizer=self._pseudonymizer,
                            dicom_tables=self._dicom_tables, fixed_texts=fixed_texts(self._tables, self._dicom_tables),
                            code_meanings=code_meanings(self._tables))

    @property
    def purpose_view(self) -> View:
        """The view this reader's purpose shows a permitted record in (nothing decided)."""
        return self._purpose_view()

    def _purpose_view(self) -> View:
        """The view this purpose is permitted in (what a permitted record is shown as)."""
        entry = self._tables.purposes.codes.get(self.ctx.purpose.code)
        return View(entry.view) if entry is not None else View.FULL

    def _purpose_release(self) -> DicomRelease:
        """The release of the view this purpose is permitted in (its UID space)."""
        return self._release(self._purpose_view())

    def _pseudonymised(self, pseudonyms: Sequence[str]) -> list[Identifier]:
        """The patients of these pseudonyms, through the store's pseudonym index (brought up to
        date at start, then kept so by every write: RecordStore.index_pseudonyms); a pseudonym
        not there is nobody's, and costs one lookup."""
        return self._store.find_pseudonymised(pseudonyms)

    def _dicom_candidates(self, release: DicomRelease, *, study: str | None = None, series: str | None = None,
                          sop_instance: str | None = None, patient_id: str | None = None,
                          study_dates: tuple[str | None, str | None] | None = None,
                          accession_number: str | None = None,
                          query: DicomQuery | None = None) -> list[DicomInstance]:
        """Instances whose released UIDs are the given ones (all when none is given). The
        mapped UIDs of a restricted view cannot be reversed: they are looked up in their index
        (adapter.services.released_uids), and what it finds is checked against the key.
        ``patient_id``: an exact PatientID, which narrows the full view (there PatientID is the
        identifier's value, adapter.services.dicom_objects.DicomRelease.patient); the
        restricted views show none or a pseudonym, so it is matched afterwards there.
        ``study_dates``: a StudyDate range, for the views that show the stored dates (not
        DEIDENTIFIED, which shows none); in the others it is matched afterwards too. ``query``:
        its PatientName and StudyDescription narrow the full view, which shows them as stored,
        through the store's match keys (candidates: matched afterwards as every key)."""
        if release.view is View.DEIDENTIFIED:
            study_dates = None
        if any(uid is not None and "\x00" in uid for uid in (study, series, sop_instance)):
            return []  # no UID holds U+0000 (and the record store refuses it): not looked up
        if release.view is View.FULL:
            return self._store.search_dicom_instances(
                study=study, series=series, sop_instance=sop_instance, patient_value=patient_id,
                study_dates=study_dates, accession_number=accession_number,
                patient_name=query.patient_name_candidates() if query is not None else None,
                study_description_prefix=query.study_description_candidates() if query is not None else None)
        if study is None and series is None and sop_instance is None:
            return self._store.search_dicom_instances(study_dates=study_dates)
        wanted = [(uid, attr) for uid, attr in ((study, "study_instance_uid"), (series, "series_instance_uid"),
                                                (sop_instance, "sop_instance_uid")) if uid is not None]
        found = self._store.search_released_dicom_instances(release.view.value, study=study, series=series,
                                                             sop_instance=sop_instance)
        return [i for i in found if all(release.uid(getattr(i, attr)) == uid for uid, attr in wanted)]

    def _dicom_decided(self, instances: Sequence[DicomInstance]) -> list[tuple[DicomInstance, StoredResource,
                                                                                Decision]]:
        by_type: dict[str, list[str]] = {}
        for instance in instances:
            by_type.setdefault(instance.record_type, []).append(instance.record_id)
        records: dict[tuple[str, str], StoredResource] = {}
        for rt, ids in by_type.items():
            for loaded in self._store.get_many(rt, list(dict.fromkeys(ids))):
                records[(rt, loaded.id)] = loaded
        out = []
        for instance in instances:
            stored = records.get((instance.record_type, instance.record_id))
            if stored is not None:  # a record gone since: nothing to release
                out.append((instance, stored, self.decide(stored.facts)))
        return out

    def _dicom_content(self, instance: DicomInstance, stored: StoredResource, decision: Decision) -> DicomContent:
        """The released object of ``instance`` (:meth:`_released`), for an answer that is the
        object itself: once made, it is sent outside its turn."""
        with self._released(instance, stored, decision) as content:
            return content

    @contextmanager
    def _released(self, instance: DicomInstance, stored: StoredResource, decision: Decision, *,
                  bounded: bool = True) -> Iterator[DicomContent]:
        """The released object of ``instance``, held while the caller makes its answer of it: a
        large one (a posted photo's made from decoded pixels, a large received one) under one turn
        of the whole-decode bound, taken before anything is decoded and given back when the caller
        is done (adapter.services.dicom_objects.regenerating; ``bounded``: at most
        WHOLE_DECODE_WAIT_SECONDS, then Transient, 503), so that its frame and picture are made
        under the turn its object was made in, and no reader waits for a turn holding an object."""
        if self._dicom_tables is None:
            raise NotSupported("DICOM is not served here")
        with regenerating(instance, stored, self._blobs, bounded=bounded) as image:
            obj = dicom_object_for(instance, stored, self._blobs, self._tables, self._dicom_tables, image=image)
            kind = self._tables.kinds.get(stored.facts.kind) if stored.facts is not None else None
            released = self._release(decision.view).release(obj, instance.patient, kind=kind,
                                                            record_texts=quality_texts(stored.resource))
            del obj  # the native dataset: its memory is given back before the answer is made
            yield DicomContent(data=released.data, decision=decision, transfer_syntax=released.transfer_syntax,
                               sop_class_uid=released.sop_class_uid, sop_instance_uid=released.sop_instance_uid)

    def _audit_dicom(self, instance: DicomInstance, decision: Decision) -> None:
        """A retrieval of an instance (WADO-RS, WADO-URI), allowed or denied: DICOM Instances
        Transferred, read (adapter.mapping.audit_dicom), naming the study as stored."""
        self._auditor.record(self.ctx, interaction="read", action="R", decision=decision,
                             entities=[f"{instance.record_type}/{instance.record_id}"], patient=instance.patient,
                             dicom=DicomAudit.transferred(instance.study_instance_uid))

    def _released_and_audited(self, instance: DicomInstance, stored: StoredResource, decision: Decision,
                              answerable: Callable[[DicomContent], object] | None) -> DicomContent:
        """The released object of an instance whose retrieval ``decision`` permits, audited once
        ``answerable`` (the caller's content negotiation, given the object) has taken it. A
        NotAcceptable from it (406: nothing is sent) is audited as a read that failed, outcome 4
        saying why, not as a disclosure, as a FHIR Binary's is (:meth:`read_binary`); so is any
        failure to make the object (a document whose metadata cannot be removed, 422; a stored
        object missing or unreadable): nothing is sent either. The object, what ``answerable``
        makes of it and the audit are under one turn (:meth:`_released`)."""
        with ExitStack() as held:
            try:
                content = held.enter_context(self._released(instance, stored, decision))
                if answerable is not None:
                    answerable(content)
            except Exception as exc:
                self._auditor.record_not_sent(self.ctx, entities=[f"{instance.record_type}/{instance.record_id}"],
                                              patient=instance.patient, why=_why_not_sent(exc), decision=decision,
                                              dicom=DicomAudit.transferred(instance.study_instance_uid))
                raise
            self._audit_dicom(instance, decision)
        return content

    def read_dicom_instance(self, sop_instance_uid: str, *, study: str | None = None, series: str | None = None,
                            answerable: Callable[[DicomContent], object] | None = None) -> DicomContent:
        """One DICOM object (WADO-RS instance retrieve), UIDs in the purpose's released space;
        404 when no instance has them, 403 (saying little) when the purpose is not permitted (404
        in a restricted view's UIDs, as when none has them: :func:`_refusal`).
        ``answerable(content)``: the caller's content negotiation, asked once the read is
        permitted and the object made, before it is audited; the NotAcceptable it raises (406:
        nothing is sent) is audited as a read that failed (:meth:`_released_and_audited`). A
        refusal is audited and 403 first, whatever the client accepts."""
        release = self._purpose_release()
        candidates = self._dicom_candidates(release, study=study, series=series, sop_instance=sop_instance_uid)
        decided = self._dicom_decided(candidates[:1])
        if not decided:
            raise self._dicom_not_found("no such DICOM instance", study=study, sop_instance=sop_instance_uid)
        instance, stored, decision = decided[0]
        if not decision.permitted or decision.view is not release.view:
            self._audit_dicom(instance, decision)
            raise _refusal(decision, "no such DICOM instance", release)
        return self._released_and_audited(instance, stored, decision, answerable)

    def read_dicom_rendered(self, sop_instance_uid: str, *, study: str | None = None, series: str | None = None,
                            answerable: Callable[[ReleasedImage], object] | None = None,
                            frame: int | None = None) -> ReleasedImage:
        """WADO-RS rendered: the released instance as its Binary's bytes and media type (the
        first JPEG frame, native pixels as PNG, a PDF), under :meth:`read_dicom_instance`'s
        decision; in the de-identified view image bytes with no metadata at all, as there.
        ``frame``: a frame so (WADO-RS rendered frames); a frame the instance does not hold
        (a document holds none) is 404, audited as a read that failed. ``answerable``: as there, given the
        rendered image."""
        made: list[ReleasedImage] = []

        def rendered(content: DicomContent) -> None:
            made.append(self.rendered_from(content, frame=frame))
            if answerable is not None:
                answerable(made[-1])

        self.read_dicom_instance(sop_instance_uid, study=study, series=series, answerable=rendered)
        return made[-1]

    def rendered_as(self, rendered: ReleasedImage, media_type: str, *, max_side: int) -> ReleasedImage | None:
        """``rendered`` (what :meth:`read_dicom_rendered` released: decided and audited already)
        made anew as ``media_type`` (adapter.imaging.thumbnail.rendered_as: image/jpeg, image/png
        or image/gif, upright, no metadata); None when that is not a type it makes, ``rendered``
        is no picture (a document), or its pixels do not decode or are more than the policy's
        limit. Nothing is read: no decision is taken again, nothing is audited again."""
        if media_type not in RENDERED_TYPES or not rendered.content_type.startswith("image/"):
            return None
        try:
            data = rendered_as(rendered.data, rendered.content_type, media_type, max_side=max_side,
                               max_pixels=self._tables.policy.limits.max_pixels)
        except (UndecodableImage, ImageTooLarge, UnsupportedPixelData):
            return None
        return dataclasses.replace(rendered, data=data, content_type=media_type, grey=None)

    def rendered_from(self, content: DicomContent, *, frame: int | None = None) -> ReleasedImage:
        """``content`` (an object :meth:`read_dicom_instance` released: decided already) as
        :meth:`read_dicom_rendered` renders it (its frame ``frame``). Nothing is read, decided or
        audited."""
        return _rendered(content, self._tables.policy.limits.max_pixels, frame)

    def rendered_with(self, rendered: ReleasedImage, media_type: str, *, viewport: Viewport | None,
                      window: Window | None, quality: int | None, max_side: int) -> ReleasedImage | None:
        """``rendered`` (released: decided and audited already) made anew as ``media_type`` as
        the client's rendering parameters ask (adapter.imaging.rendition: a window for a greyscale
        image, the viewport's region scaled to fit it, a JPEG's quality; upright, no metadata);
        None as :meth:`rendered_as`. Nothing is read, decided or audited again."""
        if media_type not in RENDERED_TYPES or not rendered.content_type.startswith("image/"):
            return None
        try:
            data = rendered_with(rendered.data, rendered.content_type, media_type, viewport=viewport, window=window,
                                 quality=quality, grey=rendered.grey, max_side=max_side,
                                 max_pixels=self._tables.policy.limits.max_pixels)
        except (UndecodableImage, ImageTooLarge, UnsupportedPixelData):
            return None
        return dataclasses.replace(rendered, data=data, content_type=media_type)

    def thumbnail_of(self, rendered: ReleasedImage, *, rows: int, columns: int) -> ReleasedImage | None:
        """A small JPEG, with no metadata, of ``rendered`` (what :meth:`read_dicom_rendered`
        released: decided and audited already); None for a document or pixels that do not decode
        (the object is stored as received; only what is shown of it needs decoding). Nothing is
        read, decided or audited."""
        if not rendered.content_type.startswith("image/"):
            return None
        try:
            data = thumbnail_jpeg(rendered.data, rendered.content_type, rows=rows, columns=columns,
                                  max_pixels=self._tables.policy.limits.max_pixels)
        except (UndecodableImage, ImageTooLarge):
            return None
        return dataclasses.replace(rendered, data=data, content_type="image/jpeg", grey=None)

    def read_dicom_thumbnail(self, study: str, *, series: str | None = None, instance: str | None = None,
                             rows: int, columns: int) -> ReleasedImage:
        """WADO-RS thumbnail (PS3.18 8.3.5.1.2): a small JPEG, with no metadata, of the instance
        (or of the first permitted image of the series or study), made from what
        :meth:`read_dicom_rendered` releases for the purpose, under the same decisions; the
        audit names the instances looked at (refused ones, the ones with no picture as not sent,
        and the one shown), not the rest of the study. A document has no picture: 406."""
        made: list[ReleasedImage] = []

        def shown(rendered: ReleasedImage) -> None:
            picture = self.thumbnail_of(rendered, rows=rows, columns=columns)
            if picture is None:
                raise NotAcceptable("this instance has no thumbnail (a document, or pixels that do not decode)")
            made.append(picture)

        if instance is not None:
            self.read_dicom_rendered(instance, study=study, series=series, answerable=shown)
            return made[-1]
        # the instances in order, each decision audited as it is acted on, up to the one shown
        release = self._purpose_release()
        decided = self._dicom_decided(self._dicom_candidates(release, study=study, series=series))
        if not decided:
            raise self._dicom_not_found("no such DICOM study or series", study=study)
        permitted = False
        for candidate, stored, decision in decided:
            if not decision.permitted or decision.view is not release.view:
                self._audit_dicom(candidate, decision)
                continue
            permitted = True
            try:
                self._released_and_audited(candidate, stored, decision, lambda content: shown(self.rendered_from(content)))
            except (NotAcceptable, UncleanableDocument):  # no picture (a document), audited as not sent
                continue
            return made[-1]
        if not permitted:
            raise _refusal_of_all([d for _, _, d in decided], "no such DICOM study or series", release)
        raise NotAcceptable("this study or series has no image to show as a thumbnail")

    def read_dicom(self, study: str, series: str | None = None, *,
                   answerable: Callable[[list[DicomRetrieval]], object] | None = None) -> list[DicomRetrieval]:
        """The permitted instances of a study or series (WADO-RS study/series retrieve), each
        decided and audited; instances not permitted are left out. 404 when none has the UIDs,
        403 when none of them is permitted (404 in a restricted view's UIDs: :func:`_refusal_of_all`). ``answerable(retrievals)``: the caller's content
        negotiation on the permitted ones, asked before they are audited; the NotAcceptable it
        raises (406: nothing is sent) has them audited as reads that failed, as has a stored
        object missing or unreadable (404, 500: nothing is sent either): those objects are made
        before the answer starts, the others while it streams. In a restricted view a document
        whose metadata cannot be removed (adapter.imaging.pdf) cannot be released under the
        purpose: it is left out as an instance not permitted is, and audited as a read that
        failed saying why, the other instances answered (review dicomweb F2); when nothing else
        was permitted the answer is its 422, as a direct retrieve of it is."""
        release = self._purpose_release()
        candidates = self._dicom_candidates(release, study=study, series=series)
        decided = self._dicom_decided(candidates)
        if not decided:
            raise self._dicom_not_found("no such DICOM study or series", study=study)
        out: list[DicomRetrieval] = []
        unreleasable: list[tuple[DicomInstance, Decision, UncleanableDocument]] = []
        try:
            for instance, stored, decision in decided:
                if decision.permitted and decision.view is release.view:
                    # made while the answer streams, when a 503 can no longer be sent: it waits its turn
                    load: Callable[[], AbstractContextManager[DicomContent]] = functools.partial(
                        self._released, instance, stored, decision, bounded=False)
                    if release.view is not View.FULL and instance.sop_class_uid == ENCAPSULATED_PDF:
                        # its PDF's metadata is removed now (adapter.imaging.pdf): one that cannot be
                        # is left out (docstring)
                        try:
                            cleaned = self._dicom_content(instance, stored, decision)
                        except UncleanableDocument as exc:
                            unreleasable.append((instance, decision, exc))
                            continue
                        load = functools.partial(_made, cleaned)
                    out.append(DicomRetrieval(release.entry(instance), decision, load))
                    # the objects are made one by one while the answer streams: a missing blob found
                    # then could only cut the answer short, so it is looked for now (NotFound)
                    self._blobs.path(instance.blob_sha256 or stored.blob_sha256 or "")
            if out and answerable is not None:
                answerable(out)
        except Exception as exc:  # a 406, a stored object missing or unreadable: nothing is sent
            self._audit_unreleasable(unreleasable)
            self._auditor.record_transfers(self.ctx, transferred=self._transfers(decided, unreleasable),
                                           not_sent=_why_not_sent(exc))
            raise
        self._audit_unreleasable(unreleasable)
        self._auditor.record_transfers(self.ctx, transferred=self._transfers(decided, unreleasable))
        if not out and unreleasable:
            raise unreleasable[0][2]  # nothing else permitted: the document's own refusal (422)
        if not out:
            raise _refusal_of_all([d for _, _, d in decided], "no such DICOM study or series", release)
        return out

    @staticmethod
    def _transfers(decided: Sequence[tuple[DicomInstance, StoredResource, Decision]],
                   unreleasable: Sequence[tuple[DicomInstance, Decision, UncleanableDocument]]
                   ) -> list[tuple[str, Identifier, str, Decision]]:
        """The decided instances of a study or series retrieve as its audit names them (record,
        patient, study, decision), but those left out as unreleasable (audited on their own)."""
        left_out = {id(instance) for instance, _, _ in unreleasable}
        return [(f"{i.record_type}/{i.record_id}", i.patient, i.study_instance_uid, decision)
                for i, _, decision in decided if id(i) not in left_out]

    def _audit_unreleasable(self, unreleasable: Sequence[tuple[DicomInstance, Decision, UncleanableDocument]]
                            ) -> None:
        """Each instance a retrieve left out because it cannot be released under the purpose: a
        read its decision permitted that failed, outcome 4 saying why (nothing of it was sent)."""
        for instance, decision, exc in unreleasable:
            self._auditor.record_not_sent(self.ctx, entities=[f"{instance.record_type}/{instance.record_id}"],
                                          patient=instance.patient, why=_why_not_sent(exc), decision=decision,
                                          dicom=DicomAudit.transferred(instance.study_instance_uid))

    def _releasable(self, release: DicomRelease, instance: DicomInstance, stored: StoredResource,
                    decision: Decision) -> bool:
        """Whether a permitted instance can be released in ``release``'s view: not a document whose
        metadata cannot be removed (adapter.imaging.pdf), which only a restricted view cleans.
        Finding out means cleaning it (a PDF at most adapter.imaging.pdf.MAX_PDF_BYTES), done for
        documents only; what is made is dropped, nothing is sent or audited here."""
        if release.view is View.FULL or instance.sop_class_uid != ENCAPSULATED_PDF:
            return True
        try:
            self._dicom_content(instance, stored, decision)
        except UncleanableDocument:
            return False
        return True

    def read_binary_dicom(self, id: str) -> DicomContent:
        """The DICOM object of a Binary's record (Binary.securityContext), under that record's
        decision, as for the image bytes (:meth:`read_binary`). Audited as a retrieval of the
        object (DICOM Instances Transferred, naming its study), allowed or denied; an object that
        cannot be made in the decision's view (a document whose metadata cannot be removed) as a
        read that failed (outcome 4), once it is known that nothing is sent."""
        stored = self._load("Binary", id, dicom=True)
        decision = self.decide(stored.facts)
        found = self._dicom_of_binary(stored)
        entities, patient = [f"Binary/{stored.id}"], stored.facts.patient if stored.facts else None
        dicom = DicomAudit.transferred(*([found[0].study_instance_uid] if found else []))
        if decision.permitted and stored.facts is not None and found is None:  # nothing to send: no transfer
            self._auditor.record_not_sent(self.ctx, entities=entities, patient=patient, dicom=dicom,
                                          why=f"Binary/{stored.id} has no DICOM object", decision=decision)
            raise NotFound(f"Binary/{id} has no DICOM object")
        if not decision.permitted or stored.facts is None or found is None:  # found: for mypy, handled above
            self._auditor.record(self.ctx, interaction="read", action="R", decision=decision, entities=entities,
                                 patient=patient, dicom=dicom)
            raise _refusal(decision, _not_known("Binary", id))
        instance, record = found
        try:
            content = self._dicom_content(instance, record, decision)
        except Exception as exc:  # a document that cannot be cleaned, an object that cannot be made: not sent
            self._auditor.record_not_sent(self.ctx, entities=entities, patient=patient, dicom=dicom,
                                          why=_why_not_sent(exc), decision=decision)
            raise
        self._auditor.record(self.ctx, interaction="read", action="R", decision=decision, entities=entities,
                             patient=patient, dicom=dicom)
        return content

    def _dicom_of_binary(self, stored: StoredResource) -> tuple[DicomInstance, StoredResource] | None:
        """The DICOM instance of a Binary's record and the record, found by the record's SOP
        Instance UID identifier (nothing decided, nothing released); None when there is none."""
        if stored.facts is None:
            return None
        record_type, _, record_id = stored.facts.governed_by.partition("/")
        record = self._store.get(record_type, record_id)
        for ident in (record.resource.get("identifier") or []) if record is not None else []:
            value = ident.get("value") if isinstance(ident, dict) else None
            if ident.get("system") != DICOM_UID_SYSTEM or not isinstance(value, str):
                continue
            instance = self._store.find_dicom_instance(value.removeprefix("urn:oid:"))
            if record is not None and instance is not None and \
                    (instance.record_type, instance.record_id) == (record_type, record_id):
                return instance, record
        return None

    def search_dicom(self, level: str, query: DicomQuery, *, offset: int = 0, limit: int | None = None,
                     tell_more: bool = False) -> DicomSearchResult:
        """QIDO-RS: the permitted instances making up the matching studies, series or instances
        (adapter.services.dicom_objects.match_level), as the purpose's view shows them; the
        others are left out and not counted. ``offset``/``limit`` count results at ``level``
        (studies, series or instances): the instances of results ``offset`` to ``offset +
        limit`` come back. One audit event for the search, naming what is returned.

        The candidates are read a batch of whole studies at a time, matched and decided, until
        the page is complete: a page of a large store costs the studies up to it, not the store
        (every instance, every record loaded and decided, as before). ``tell_more``: the page
        reads on to the next permitted result, to say whether there is one (PS3.18 8.3.4.4: a
        server's own maximum that cut the results is said); it is neither returned nor audited."""
        release = self._purpose_release()
        exact_patient = query.patient_id if query.patient_id and not any(c in query.patient_id for c in "*?") \
            else None
        # the store's index takes an exact AccessionNumber; a pattern is matched afterwards (match_level)
        accession = query.accession_number if query.accession_number and not any(
            c in query.accession_number for c in "*?") else None
        # StudyDate is the stored one in the views that show dates: matched by the store's index
        # (match_level below checks it again, as every key)
        dates = (query.study_date.start, query.study_date.end) if query.study_date is not None else None
        batches: Iterable[list[DicomInstance]]
        if query.matches_nothing:
            batches = ()  # a key no instance holds has a value (adapter.services.dicom_objects.DicomQuery)
        elif release.view is View.DEIDENTIFIED and (query.patient_id is not None or query.patient_name is not None
                                                  or query.study_date is not None):
            batches = ()  # the view shows no PatientID, PatientName or dates: nothing can match, nothing to load
        elif release.view is not View.FULL and (query.accession_number is not None
                                                or query.study_description is not None
                                                or query.referring_physician_name is not None
                                                or query.study_id is not None):
            batches = ()  # only care's view shows an AccessionNumber, StudyDescription, ReferringPhysicianName or
            # StudyID (TRAIN and HRESCH copies remove or empty them)
        elif release.view is View.PSEUDONYMISED and exact_patient is not None:
            # the pseudonym the view shows as PatientID: looked up, not computed for every instance
            batches = [[i for p in self._pseudonymised([exact_patient])
                        for i in self._store.search_dicom_instances(patient=p, study_dates=dates)]]
        elif len(query.study_uids) != 1 and len(query.series_uids) != 1:
            # no one study or series to look up: every instance (of the PatientID, of the dates
            # where the view shows them, of the names and descriptions in care's view), streamed
            full = release.view is View.FULL
            batches = self._store.iter_dicom_instances(
                study_dates=None if release.view is View.DEIDENTIFIED else dates,
                patient_value=exact_patient if full else None, accession_number=accession,
                patient_name=query.patient_name_candidates() if full else None,
                study_description_prefix=query.study_description_candidates() if full else None)
        else:
            batches = [self._dicom_candidates(
                release, study=query.study_uids[0] if len(query.study_uids) == 1 else None,
                series=query.series_uids[0] if len(query.series_uids) == 1 else None, patient_id=exact_patient,
                study_dates=dates, accession_number=accession, query=query)]
        key = _RESULT_KEYS[level]
        results: dict[Any, list[DicomEntry]] = {}  # result key -> its instances, in order
        glass = False  # break-glass released an instance (then every permitted one: it is the purpose's)
        wanted = None if limit is None else offset + limit + (1 if tell_more else 0)
        withheld = 0
        for_care: Counter[CareRefusal] = Counter()  # the withheld a care reader is told of, by reason
        patient_of: dict[str, Identifier] = {}  # record -> its patient, for the audit
        decided_by: dict[str, Decision] = {}    # record -> the decision that released it, for the audit
        decided = OnePatientDecided()  # whose instances were decided, for the audit
        try:
            for studies in _whole_studies(batches):
                patient_of.update((f"{i.record_type}/{i.record_id}", i.patient) for i in studies)
                permitted, held, by_glass = self._qido_permitted(release, level, query, studies, decided_by,
                                                                 for_care, decided)
                withheld += held
                glass = glass or by_glass
                for entry in permitted:
                    results.setdefault(key(entry), []).append(entry)
                if wanted is not None and len(results) >= wanted:
                    break  # whole studies so far: every result up to here is complete
        finally:
            close = getattr(batches, "close", None)
            if close is not None:
                close()  # a streamed read stopped early ends here
        page = list(results.values())[offset:None if limit is None else offset + limit]
        result = [entry for members in page for entry in members]
        self._record_search([(r, patient_of.get(r), decided_by.get(r)) for r in sorted({e.record for e in result})],
                            reason=f"{len(result)} instances permitted, {withheld} withheld", dicom=DicomAudit.query(),
                            decided=decided)
        more = tell_more and limit is not None and len(results) > offset + limit
        # the studies read (a page stops at the results it needs): "or more" unless every one was
        counted = "matching instances" if wanted is None else "or more matching instances"
        return DicomSearchResult(result, glass and bool(result), more, withheld=withheld_from_care(for_care, counted),
                                 overrode=overrode_for_care(decided_by[r] for r in sorted({e.record for e in result})
                                                            if r in decided_by))

    def _qido_permitted(self, release: DicomRelease, level: str, query: DicomQuery,
                        candidates: Sequence[DicomInstance],
                        decided_by: dict[str, Decision],
                        for_care: Counter[CareRefusal],
                        decided: OnePatientDecided) -> tuple[list[DicomEntry], int, bool]:
        """The permitted entries making up matching results among ``candidates`` (whole
        studies), how many matching instances were withheld, and whether break-glass released
        any of them; the decision that released each adds to ``decided_by`` (its record's), the
        reason each was withheld from care (Decision.care_refusal) to ``for_care``, every decision
        with its patient to ``decided``."""
        entries = {id(i): release.entry(i) for i in candidates}
        matched_ids = {id(e) for e in match_level(level, query, entries.values())}
        matched = [i for i in candidates if id(entries[id(i)]) in matched_ids]
        permitted: list[DicomEntry] = []
        glass = False
        withheld = 0
        for instance, stored, decision in self._dicom_decided(matched):
            decided.add(instance.patient, decision)
            # an instance that cannot be released under the purpose is withheld as one not
            # permitted is: listed, it could never be retrieved (read_dicom leaves it out too)
            if decision.permitted and decision.view is release.view and \
                    self._releasable(release, instance, stored, decision):
                permitted.append(entries[id(instance)])
                decided_by[f"{instance.record_type}/{instance.record_id}"] = decision
                glass = glass or decision.break_glass
            else:
                withheld += 1
                if decision.care_refusal is not None:
                    for_care[decision.care_refusal] += 1
        # again: a withheld instance may have made the match
        return match_level(level, query, permitted), withheld, glass
