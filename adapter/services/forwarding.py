"""Forwarding photos to PACS: the durable outbox worker and the sender interface it needs.

Ingest writes one outbox item per destination (``ADAPTER_FORWARD_TO``) for every new photo whose
kind the policy forwards (``forwardKinds``), in the same transaction (adapter.services.ingest) as the record. The
:class:`Forwarder` thread claims due items, regenerates each photo's DICOM object (same UIDs every
time: they were fixed at ingest in the record's DicomInstance), C-STOREs a destination's items over
one association and marks each item sent right after the PACS acknowledged it, or schedules a retry
with exponential back-off and jitter, or gives up (status ``failed``) after
``ADAPTER_FORWARD_RETRY_MAX`` attempts or on a permanent refusal.

A backlog goes over one association, also the one an outage leaves. Back-off is per destination
for the items a PACS left unanswered (no association, no C-STORE response: it is down or
unreachable, not refusing that object): they are all due again at one moment, the destination's
next retry (:class:`_Backoff`), not each at its own jittered time, so they are claimed, and sent,
together. And once the destination acknowledges an object again, the items this forwarder put on
back-off for it are claimed at once and go over that association, in the same pass, rather than
each when its retry falls due. They are claimed by their retry time: an item is claimed only if
it still has the one this forwarder gave it, i.e. no forwarder claimed it since (a claim moves it
a lease ahead; RecordStore.renew_outbox_claims compares and sets), so an item another forwarder
holds is never taken from it. What this forwarder put on back-off is known in memory: after a
restart the items keep their common retry time, and go together when it falls due. A failure
the PACS answered (0xA7xx, say, for one object) keeps the item's own back-off.

What the PACS receives is the object in the transfer syntax it is stored in (a JPEG photo in JPEG
Baseline, a PNG or rotated one native) wherever the PACS accepts that syntax. For a PACS that
accepts no compressed syntax (it need accept only Implicit VR Little Endian, PS3.5 10.1), the
sender decodes a JPEG Baseline object to native pixel data right before its C-STORE, after the
check below, and sends that: the same SOP Instance, still flagged lossy (adapter.dicom.scu,
adapter.mapping.dicom_decompress). The forwarder holds the objects of one batch as stored
(``batch_size``); the sender holds at most one decompressed object at a time.

Consent is decided twice for each object (purpose TREAT, the PACS being part of the care record),
with the pure decision of adapter.consent.decision: once when its batch is prepared, so that an
object refused anyway is not regenerated, and again right before its C-STORE-RQ goes out (the
sender's ``withhold`` check, called in the thread that sends), so that a Consent withdrawn, or a
deny recorded, while the earlier objects of the batch were being sent stops the ones not sent
yet. The second decision reads the record's facts and the patient's Consents afresh and nothing
else (no regeneration). Either refusal fails the item for good, says why in its lastError and is
audited once, as the transfer it refused; a decision that cannot be taken (the store fails) holds
the object back and retries it.

Except for a photo stored consent pending (policy ``allowPending``; adapter.consent.decision
step 4), refused for want of documented consent for care (no Consent denying it): its item is
held (status ``held``, lastError :data:`AWAITING_CONSENT`), audited once as that refusal, and no
longer claimed, so neither decided nor audited again at each poll. A Consent that documents care
for it releases it, in the Consent's own transaction (adapter.services.consent_pending): pending
and due again, decided again like any item. One that documents care from later on (its period
starts after it is written) releases it at the first pass after its start: each pass first
looks at the holds due (RecordStore.holds_due: a held item's next_attempt_at is when a Consent of
its patient next comes into force) with PendingRecords.release_in_force, then claims what it
released with the rest. The hold (RecordStore.hold_outbox) is recorded only
while the patient's Consents are the versions read before the decision: a Consent written in
between found the item pending, released nothing, and would otherwise leave it held for good;
the attempt is then recorded as one to be retried, decided again at its retry.

Every attempt is audited, once, as DICOM Instances Transferred (PS3.15 A.5.3.7, which the sender
records for each transfer, with its outcome; adapter.mapping.audit_dicom), in the transaction
that records the attempt in the outbox: an acknowledgement as the disclosure it is (outcome 0); a
refusal by the consent decision as the transfer it refused (outcome 4); any other failure as a
failed transfer (:func:`attempt_outcome`, :func:`attempt_reason`), saying whether the data set
went out: sent (the C-STORE-RQ with the object was transmitted; the PACS answered a failure
status, named, or nothing) or "not sent" (the association rejected or aborted, the connection
refused, no presentation context accepted, the object not made: nothing was disclosed). An
attempt whose object went out is audited even when its result cannot be recorded (another
forwarder claimed the item meanwhile), in a transaction of its own. The retry policy bounds the
events: one per attempt, at most ``ADAPTER_FORWARD_RETRY_MAX`` per item until it is requeued.
The adapter initiated every such transfer: it is the requestor (the Source), the PACS the
Destination.

Delivery is *at least once* with a very narrow window: an item is marked sent in the database
immediately after its C-STORE response, before the next object of its batch goes (the sender's
``acknowledged`` callback), so only a crash between the acknowledgement and that commit can resend
it; whatever happens later in the batch (an exception out of the sender included) leaves the
items acknowledged so far sent. Its disclosure is audited in that same transaction, not after the
batch nor in a transaction of its own: an item marked sent is never sent again, so a forwarder
dying later in the batch, or right after that commit, would leave a disclosure no audit names.
Each object also goes only while this forwarder's claim on its item holds, as far as the lease
renewals know (adapter.services.outbox_leases): one lost at a renewal is not sent (another
forwarder may have claimed it) and its attempt is not recorded. A resend carries the same SOP
Instance UID (PS3.3 C.12.1.1.1; the UIDs never change for a record), so the PACS treats it as the
same instance (Orthanc overwrites it; others answer a duplicate warning), never as a second image.

Services never import pynetdicom (STYLE §1): the C-STORE SCU lives in ``adapter.dicom.scu`` and
satisfies :class:`StoreSender`; ``__main__`` injects it with :meth:`Services.start_forwarding`.
The SCU knows nothing of consent either: it only asks ``withhold`` before each send.

Destinations are independent (adapter.services.outbox_workers): a pass looks at the holds due once,
then claims the due items of the destinations whose worker is idle, and each destination's items
are sent from a worker thread of its own, so a PACS that hangs (ACSE or DIMSE timeout) holds up
only its own items. Each worker does for its destination what is described above.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adapter.consent import decide_outbox_requeue
from adapter.errors import AdapterError, Forbidden
from adapter.mapping.dicom_tables import DicomTables
from adapter.mapping.tables import Tables
from adapter.model.decision import Decision
from adapter.model.dicom import DicomInstance, OutboxItem
from adapter.model.purpose import PurposeOfUse, RequestContext
from adapter.services.audit import Auditor, DicomAudit
from adapter.services.consent_pending import PendingRecords, next_change
from adapter.services.dicom_objects import dicom_object_for
from adapter.services.outbox_leases import LeaseKeeper
from adapter.services.outbox_workers import DestinationWorkers
from adapter.store.port import BlobStore, RecordStore

if TYPE_CHECKING:
    from pydicom import Dataset

    from adapter.config import Settings
    from adapter.model.photo import Identifier
    from adapter.model.record import AccessFacts, StoredResource

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- sender interface


class SendOutcome(StrEnum):
    """What became of one object sent to one destination."""

    ACKNOWLEDGED = "acknowledged"  # C-STORE status Success or Warning: the PACS has it
    RETRY = "retry"                # transient: network, timeout, out of resources, transient rejection
    PERMANENT = "permanent"        # will not succeed by retrying: permanent rejection, refused SOP class


@dataclass(frozen=True)
class SendResult:
    """The result of one C-STORE (or of the attempt to get as far as one). ``transmitted``: the
    C-STORE-RQ with the object's data set went out to the PACS (True; whatever it answered, or
    if it answered nothing), nothing of it did (False: no association, no accepted context,
    held back, not encodable), or it is not known (None: the sender failed along the way). The
    audit of a failed attempt says which (module docstring); None is audited as possibly sent."""

    sop_instance_uid: str
    outcome: SendOutcome
    status: int | None = None      # the DIMSE status, when the PACS answered
    error: str | None = None       # for the outbox's lastError, the audit and the log: no patient data
    transmitted: bool | None = None
    #: The PACS's Error Comment (0000,0902), as it sent it (bounded, no control characters). A
    #: PACS may quote patient data in it: kept in lastError and the audit, never in the log.
    error_comment: str | None = None

    @property
    def acknowledged(self) -> bool:
        return self.outcome is SendOutcome.ACKNOWLEDGED


class StoreSender(Protocol):
    """A C-STORE SCU (``adapter.dicom.scu.StoreSCU``) as the forwarder sees it."""

    def send_batch(self, destination: str, datasets: Iterable[Dataset | Path], *,
                   withhold: Callable[[int], str | None] | None = None,
                   acknowledged: Callable[[int, SendResult], None] | None = None) -> list[SendResult]:
        """C-STORE ``datasets`` to ``destination`` (``AE@host:port``) in order, one result per
        dataset in the same order; a Path is a Part 10 file. Each goes as stored where the
        destination accepts its transfer syntax; a compressed one may go decompressed (the same
        instance) where it accepts only uncompressed syntaxes. May keep the association open for
        the next batch to the same destination; :meth:`release` ends it.

        ``withhold(i)`` is called right before the i-th dataset's C-STORE-RQ would go out (and
        for no dataset that is not about to be sent), before any decompression: a reason (not
        None) keeps that dataset from being sent, and so does an exception; either way it is not
        sent (nor decoded), and the rest goes on.

        ``acknowledged(i, result)`` is called right after the destination acknowledged the i-th
        dataset (Success or Warning), before the next one goes; an exception from it does not
        stop the batch.

        Each result says whether its data set was transmitted (:class:`SendResult`)."""

    def release(self, destination: str | None = None) -> None:
        """Release the association kept open between batches for ``destination``, or every one
        (None). Calls for different destinations may run at once, each from its own thread
        (adapter.services.outbox_workers); those for one destination never do."""


# --------------------------------------------------------------------------- the outbox, read


OUTBOX_STATUSES = ("pending", "held", "sent", "failed", "cancelled")


@dataclass(frozen=True)
class OutboxEntry:
    """An outbox item and the record its object was made from (``Media/<id>``), if known."""

    item: OutboxItem
    record: str | None


class OutboxService:
    """The outbox for operations (``GET /outbox``, ``POST /outbox/requeue``): items with their
    record reference, no patient data."""

    def __init__(self, store: RecordStore, *, now: Callable[[], datetime], tables: Tables, auditor: Auditor,
                 wake: Callable[[], None] | None = None) -> None:
        self._store = store
        self._now = now
        self._tables = tables
        self._auditor = auditor
        self._wake = wake

    def requeue(self, ctx: RequestContext, *, ids: Sequence[int] | None = None,
                destination: str | None = None) -> int:
        """Failed items (all, those of ``ids``, or those for ``destination``) back to pending,
        due now, with their attempts counted afresh: after an outage longer than the retries
        lasted, or once a refusal was put right at the PACS. Returns how many; wakes the
        forwarder of this process (another process's finds them at its next poll).

        The items' objects will be disclosed to a PACS again, so the request's purpose of use
        is decided (adapter.consent.decide_outbox_requeue: care or records management) and the
        request audited: a refusal (Forbidden) as an update refused; a requeue as one BALP
        Update event naming each item requeued, its record and patient, stored in the
        transaction of the requeue (Auditor.requeue_event), also when nothing was requeued."""
        decision = decide_outbox_requeue(ctx.purpose, self._tables)
        which = _requeue_selection(ids, destination)
        if not decision.permitted:
            self._auditor.record(ctx, interaction="update", action="U", decision=decision, entities=[], patient=None,
                                 reason=f"outbox requeue of {which} refused: {decision.reason}")
            raise Forbidden(f"outbox requeue refused: {decision.reason}")

        def audit(requeued: Sequence[tuple[OutboxItem, DicomInstance | None]]) -> list[dict[str, Any]]:
            return [self._auditor.requeue_event(
                ctx, requeued=requeued,
                reason=f"outbox requeue of {which}: {len(requeued)} failed item(s) back to pending, to be "
                       f"forwarded again (each decided for TREAT before it is sent); {decision.reason}")]

        count = self._store.requeue_outbox(now=self._now(), ids=ids, destination=destination, audit=audit)
        self._auditor.count_decision("update", ctx, permitted=True)
        if count and self._wake is not None:
            self._wake()
        return count

    def list_entries(self, *, status: str | None = None, limit: int = 100) -> list[OutboxEntry]:
        """Oldest first; ``status`` one of :data:`OUTBOX_STATUSES` or None for all."""
        items = self._store.list_outbox(status=status, limit=limit)
        records: dict[str, str | None] = {}
        for item in items:
            if item.sop_instance_uid not in records:
                instance = self._store.find_dicom_instance(item.sop_instance_uid)
                records[item.sop_instance_uid] = \
                    f"{instance.record_type}/{instance.record_id}" if instance is not None else None
        return [OutboxEntry(item=i, record=records[i.sop_instance_uid]) for i in items]


def _requeue_selection(ids: Sequence[int] | None, destination: str | None) -> str:
    """What a requeue asked for, in its audit's words (ids counted, not listed: the event names
    the items requeued)."""
    if ids is not None and destination is not None:
        return f"{len(ids)} named item(s) for {destination[:200]}"
    if ids is not None:
        return f"{len(ids)} named item(s)"
    if destination is not None:
        return f"the items for {destination[:200]}"
    return "every failed item"


# --------------------------------------------------------------------------- the worker


@dataclass(frozen=True)
class ForwardOptions:
    """How the forwarder paces itself (seconds unless said otherwise)."""

    retry_max: int = 300           # attempts before an item is failed (ADAPTER_FORWARD_RETRY_MAX)
    backoff_base: float = 2.0      # delay after the first failed attempt; doubles per attempt
    backoff_cap: float = 300.0     # longest delay between attempts
    jitter: float = 0.2            # ± this fraction of the delay, so retries of many items (of one
                                   # destination: their back-off is the destination's) spread out
    poll_interval: float = 2.0     # look for due items at least this often (ingest also wakes it)
    claim_limit: int = 100         # items claimed at once (each claim is leased by the store)
    batch_size: int = 4            # objects regenerated and held in memory at once (a native 12 MP
                                   # photo is 36 MB; the association outlives the batch anyway)
    stop_timeout: float = 30.0     # how long stop() waits for the batches in flight (all destinations)
    lease_renewal: float = 20.0    # renew the leases of a batch in flight this often (a third of
                                   # the store's 60 s lease; adapter.services.outbox_leases)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> ForwardOptions:
        return cls(**{"retry_max": settings.forward_retry_max, **overrides})


def backoff_delay(attempts: int, options: ForwardOptions, rng: random.Random) -> timedelta:
    """Delay before the next attempt after ``attempts`` failed ones: ``base · 2^(attempts-1)``,
    ± ``jitter``, at most ``cap``."""
    exponent = min(max(attempts - 1, 0), 32)
    delay = min(options.backoff_cap, options.backoff_base * (2 ** exponent))
    delay *= 1.0 + options.jitter * (2.0 * rng.random() - 1.0)
    return timedelta(seconds=max(0.0, min(options.backoff_cap, delay)))


#: lastError of an item the consent decision refuses (no patient data: the reason stays in the audit).
NOT_PERMITTED = "not forwarded: the consent decision for treatment does not permit it"
#: lastError of an item of a consent-pending record refused for want of documented consent for
#: care: it is held (or, when the patient's Consents changed since its decision, retried).
AWAITING_CONSENT = "not forwarded until consent for care is documented (the photo was stored consent pending)"
#: The claim of an item was lost while its batch was sent (its lease could not be renewed in
#: time and another forwarder may have claimed it): not sent by this forwarder.
LEASE_LOST = "not sent: this forwarder's claim on the item was lost while its batch was sent"


#: The item was no longer pending under this forwarder's claim when its C-STORE-RQ was to go: a
#: mark entered-in-error cancelled it meanwhile, or another forwarder claimed it.
NOT_STARTED = "not sent: the item was no longer pending under this forwarder's claim (cancelled, or claimed again)"

#: Where a lastError goes on with the PACS's Error Comment (:func:`last_error`).
ERROR_COMMENT_MARK = "; the PACS's Error Comment: "


def last_error(result: SendResult) -> str:
    """The lastError of an attempt (or the warning of an acknowledgement): the sender's error
    (the PACS's status, its meaning and Offending Elements, or why nothing was sent), then the
    PACS's Error Comment where it sent one (PS3.7 C.4), quoted, so that the integrator sees
    what the PACS said without going to its logs. The outbox shows the comment only where it
    shows the item's record in full (:func:`without_error_comment`)."""
    error = result.error or "failed"
    return f'{error}{ERROR_COMMENT_MARK}"{result.error_comment}"' if result.error_comment else error


def without_error_comment(error: str | None) -> str | None:
    """``error`` (a lastError) without the PACS's Error Comment: what a view that does not show
    the item's record in full may show (a PACS may quote patient data in its comment)."""
    return error.partition(ERROR_COMMENT_MARK)[0] if error is not None else None


def attempt_outcome(*, give_up: bool) -> str:
    """The EventOutcomeIndicator (PS3.15 A.5.1, AuditEvent.outcome) of a forwarding attempt that
    failed, its object sent or not. A.5.1 grades how the action ended: ``4`` Minor failure is an
    "action restarted", ``8`` Serious failure an "action terminated", ``12`` Major failure an
    "action made unavailable". So ``4`` while the item is retried (the forwarding goes on at its
    next attempt, by itself), and ``8`` once it is not (a permanent failure: the association
    rejected permanently, no presentation context accepted, 0xA9xx, 0xCxxx; or the last attempt
    ``ADAPTER_FORWARD_RETRY_MAX`` allows): the item is failed and nothing more is sent until an
    operator requeues it. Never ``12``: forwarding itself stays available. Whether the object was
    disclosed does not change the grade (both failed to deliver it); outcomeDesc says which
    (:func:`attempt_reason`)."""
    return "8" if give_up else "4"


def attempt_reason(result: SendResult, *, give_up: bool) -> str:
    """The outcomeDesc of a forwarding attempt that failed: whether the object's data set went
    out ("sent: ...", "perhaps sent (not known): ...", or "not sent: ...; nothing was disclosed"),
    the PACS's DIMSE status when it answered one, the sender's error (it names no patient, only
    statuses, Offending Elements, AE titles, addresses and exception types), the PACS's Error
    Comment (:func:`last_error`) and what becomes of the item."""
    error = last_error(result)
    if result.status is not None and f"0x{result.status:04X}" not in error:
        error = f"{error} (status 0x{result.status:04X})"
    then = "the item failed, not retried" if give_up else "to be retried"
    if result.transmitted is False:
        return f"not sent: {error.removeprefix('not sent: ')}; nothing was disclosed; {then}"[:500]
    if result.transmitted:
        return f"sent: {error}; {then}"[:500]
    return f"perhaps sent (not known): {error}; {then}"[:500]


@dataclass(frozen=True)
class _Hold:
    """An item to hold: its record is consent pending and the decision refused it for want of
    documented consent for care, taken after ``patient``'s Consents were ``consents`` (their
    versions, RecordStore.consent_versions_for_patient), the hold's condition."""

    patient: Identifier
    consents: tuple[tuple[str, int], ...]


def _hold_for(facts: AccessFacts | None, decision: Decision,
              consents: tuple[tuple[str, int], ...] | None) -> _Hold | None:
    """The hold of an item the decision refused (module docstring): its record is consent pending
    (not entered in error) and no Consent denies it, so it awaits documented consent for care;
    None for any other refusal, which fails the item for good."""
    if facts is None or consents is None or not facts.consent_pending or facts.entered_in_error:
        return None
    if decision.permitted or decision.consents:  # a Consent denying TREAT is the patient's refusal
        return None
    return _Hold(facts.patient, consents)


class _Skip(Exception):
    """An item that cannot be sent: ``permanent`` ones fail at once, others are retried.
    ``instance``: its DICOM instance, when it was found (the audit names its record, patient and
    study); ``event``: the AuditEvent that already records the attempt (a consent refusal);
    ``hold``: the item is held rather than retried (:func:`_hold_for`)."""

    def __init__(self, reason: str, *, permanent: bool, instance: DicomInstance | None = None,
                 event: dict[str, Any] | None = None, hold: _Hold | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent
        self.instance = instance
        self.event = event
        self.hold = hold


class _Reader(Protocol):
    def decide(self, facts: AccessFacts | None) -> Decision: ...


def _unanswered(result: SendResult) -> bool:
    """Whether a send to be retried failed because the destination did not answer (no
    association, no C-STORE response: down or unreachable), not because it refused the object."""
    return result.outcome is SendOutcome.RETRY and result.status is None


@dataclass
class _Backoff:
    """One destination's back-off, as this forwarder knows it (module docstring)."""

    retry_at: datetime | None = None  # when the items it left unanswered are due again, together
    steps: int = 0                    # the back-off step of retry_at (attempts, as backoff_delay counts)
    answering: bool = False           # its last answer was an acknowledgement
    #: the items this forwarder put on back-off for it, each as it left it (next_attempt_at: the
    #: retry time it gave, the token it is claimed again by)
    waiting: dict[int, OutboxItem] = field(default_factory=dict)

    def retry(self, now: datetime, attempts: int, options: ForwardOptions, rng: random.Random) -> datetime:
        """The retry time of an item left unanswered at ``now`` after ``attempts`` attempts: the
        destination's, or, once that has passed, a new one a back-off step further (at least the
        item's own: after a restart the steps start from its attempts)."""
        if self.retry_at is None or self.retry_at <= now:
            self.steps = max(self.steps + 1, attempts)
            self.retry_at = now + backoff_delay(self.steps, options, rng)
        return self.retry_at


class Forwarder:
    """The outbox worker: a background thread (:meth:`start`/:meth:`stop`), woken by
    :meth:`wake` when ingest commits a photo with outbox items, and polling every
    ``poll_interval`` seconds for retries that fell due. :meth:`run_once` is one pass (tests
    call it directly).

    Destinations are independent (PACS review finding 1): each pass looks at the holds due once
    (:meth:`_release_in_force`), then claims the due items of the destinations whose worker is
    idle and sends each destination's from a worker thread of its own
    (adapter.services.outbox_workers), so a PACS that hangs (the SCU's ACSE or DIMSE timeout)
    holds up only its own items. Everything else is per item and per destination as before:
    leases, the consent decision right before each C-STORE-RQ, the audit of each attempt, the
    destination's back-off and association.

    Each forwarded record passes the consent decision for treatment (purpose TREAT, the PACS
    being part of the care record) when its batch is prepared and again right before its
    C-STORE-RQ, and every disclosure to a PACS (or refusal of one) is audited: a photo whose
    patient withdrew consent before it went out is not sent, and a consent-pending photo's item
    is held until a Consent documents its consent for care (module docstring).
    """

    def __init__(self, *, store: RecordStore, blobs: BlobStore, tables: Tables, dicom_tables: DicomTables,
                 sender: StoreSender, auditor: Auditor, reader: Callable[[RequestContext], _Reader],
                 options: ForwardOptions, now: Callable[[], datetime], rng: random.Random | None = None) -> None:
        self._store = store
        self._blobs = blobs
        self._tables = tables
        self._dicom_tables = dicom_tables
        self._sender = sender
        self._auditor = auditor
        self._reader = reader
        self.options = options
        self._now = now
        self._rng = rng or random.Random()
        self._pending = PendingRecords(store=store, tables=tables, auditor=auditor)
        self._backoff: dict[str, _Backoff] = {}  # by destination; each used by its destination's worker only
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._workers = DestinationWorkers(on_done=self._wake.set)  # a destination idle again: claim
        self._holding: set[str] = set()  # destinations whose association a backlog keeps open

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="outbox-forwarder", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for due items now (ingest calls this after committing outbox items)."""
        self._wake.set()

    def stop(self) -> None:
        """Finish the batches in flight (one per destination at most, all within
        ``stop_timeout``), release the associations and end the threads. Items claimed but not
        yet sent stay leased and are claimed again after the lease."""
        self._stopping.set()
        self._wake.set()
        deadline = time.monotonic() + self.options.stop_timeout
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(self.options.stop_timeout)
        if (thread is not None and thread.is_alive()) or not self._workers.join(deadline):
            # stuck in a send (ACSE or DIMSE timeout): leave that sender to it, release the others
            log.warning("the forwarder did not stop within %.0f s", self.options.stop_timeout)
            busy = self._workers.busy()
            for destination in sorted(self._holding - busy):
                self._release(destination)
            return
        self._release()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                self._dispatch(release=True)
            except Exception:
                log.exception("forwarding pass failed")
            self._wake.wait(self.options.poll_interval)  # a worker done wakes it too

    def _release(self, destination: str | None = None) -> None:
        try:
            self._sender.release(destination) if destination is not None else self._sender.release()
        except Exception:
            log.warning("releasing DICOM associations failed", exc_info=True)

    # -- one pass ----------------------------------------------------------------------------
    def run_once(self) -> int:
        """One pass, waited for: release the held items a Consent that came into force since
        releases, then claim the due items and send them, each destination's from its own worker
        over one association, followed there by the items this forwarder put on back-off for a
        destination that acknowledged one (module docstring); the number of items claimed."""
        counts = self._dispatch(release=False)
        self._workers.join()
        return sum(counts.values())

    def _dispatch(self, *, release: bool) -> dict[str, int]:
        """A pass (:meth:`run_once`) not waited for: the holds due looked at once, then the due
        items of the destinations whose worker is idle claimed, each destination's handed to a
        worker of its own. ``release``: a worker releases its destination's association once it
        is done, unless the claim was full (a backlog: the next pass goes on over it). Returns
        the items claimed per destination, filled in by the workers as they go."""
        self._release_in_force()
        busy = self._workers.busy()
        items = self._store.claim_outbox(self._now(), self.options.claim_limit, exclude=busy)
        by_destination: dict[str, list[OutboxItem]] = {}
        for item in items:
            by_destination.setdefault(item.destination, []).append(item)
        backlog = len(items) >= self.options.claim_limit
        counts: dict[str, int] = {}
        for destination in sorted(self._holding - busy - by_destination.keys()):  # its backlog is over
            self._holding.discard(destination)
            if release:
                self._release(destination)
        for destination, group in by_destination.items():
            counts[destination] = len(group)

            def work(destination: str = destination, group: list[OutboxItem] = group) -> None:
                counts[destination] += self._forward(destination, group)
                if release and not (backlog and not self._stopping.is_set()):
                    self._release(destination)
                elif release:
                    self._holding.add(destination)

            if self._workers.start(destination, work) is None:  # cannot be (excluded), but never twice
                log.error("the worker for %s was already running", destination)
        return counts

    def _forward(self, destination: str, items: list[OutboxItem]) -> int:
        """A destination's worker: send its claimed ``items``, then the items on back-off for it
        if it answers again; the items claimed for it meanwhile (:meth:`_send_waiting`)."""
        backoff = self._backoff.get(destination)
        if backoff is not None:  # claimed again: no longer waiting as this forwarder left it
            for item in items:
                backoff.waiting.pop(item.id, None)
        if not self._send_claimed(destination, items):
            return 0  # stopping: the rest stays leased, claimed again after the lease
        return self._send_waiting(destination)

    def _release_in_force(self) -> None:
        """The holds due (RecordStore.holds_due: a Consent of their patient came into force), each
        patient's looked at by PendingRecords.release_in_force at this pass's now, as a Consent
        write would have then (adapter.services.consent_pending); what it releases is due now,
        claimed by this very pass. One read of the outbox's due index when none is due. A
        patient whose look fails (the store) keeps its holds due, for the next pass."""
        now = self._now()
        due = self._store.holds_due(now, self.options.claim_limit)
        by_patient: dict[Identifier, list[int]] = {}
        for item_id, patient in due:
            by_patient.setdefault(patient, []).append(item_id)
        for patient, item_ids in by_patient.items():
            try:
                released = self._pending.release_in_force(patient, item_ids, now)
            except Exception:
                log.exception("looking again at %d held outbox item(s) failed", len(item_ids))
                continue
            if released is None:
                log.info("%d held outbox item(s): the patient's Consents changed meanwhile, looked at again next pass",
                         len(item_ids))
            elif released:
                log.info("%d held outbox item(s) released: a Consent documenting care came into force", released)

    def _send_claimed(self, destination: str, items: list[OutboxItem]) -> bool:
        """Send claimed ``items`` to ``destination`` in batches; False when stopping cut it short."""
        for start in range(0, len(items), self.options.batch_size):
            if self._stopping.is_set():
                return False
            batch = items[start:start + self.options.batch_size]
            # the claim of a later batch may have run out while earlier ones were sent, and
            # another forwarder claimed (sent) its items meanwhile: only what is held goes
            held = self._store.renew_outbox_claims(batch, self._now())
            if len(held) < len(batch):
                log.info("%d outbox item(s) to %s were claimed by another forwarder meanwhile",
                         len(batch) - len(held), destination)
            if held:
                self._send(destination, held)
        return True

    def _send_waiting(self, destination: str) -> int:
        """The destination acknowledged an object: claim the items this forwarder put on
        back-off for it and send them now, over the same association, ``claim_limit`` at a
        time while it goes on acknowledging (module docstring). Each is claimed by the retry
        time it was given (RecordStore.renew_outbox_claims): one another forwarder claimed
        since is left to it. Each goes once in a pass: one left unanswered again waits for
        the destination's next retry. Returns how many were claimed."""
        backoff = self._backoff.get(destination)
        if backoff is None or not backoff.answering or not backoff.waiting:
            return 0
        queue = sorted(backoff.waiting.values(), key=lambda i: i.id)
        backoff.waiting.clear()
        claimed = 0
        while queue and backoff.answering and not self._stopping.is_set():
            chunk, queue = queue[:self.options.claim_limit], queue[self.options.claim_limit:]
            held = self._store.renew_outbox_claims(chunk, self._now())
            if held:
                log.info("%s answers again: %d outbox item(s) on back-off go now", destination, len(held))
            claimed += len(held)
            if not self._send_claimed(destination, held):
                break
        for item in queue:  # not tried in this pass: still waiting as they were
            backoff.waiting.setdefault(item.id, item)
        return claimed

    def _send(self, destination: str, items: list[OutboxItem]) -> None:
        """Send ``items`` (claimed, their claims just renewed), keeping them leased meanwhile."""
        with LeaseKeeper(self._store, items, now=self._now, interval=self.options.lease_renewal) as leases:
            ready: list[tuple[OutboxItem, Dataset | Path, _Disclosure]] = []
            for item in items:
                try:
                    obj, disclosure = self._object_for(item)
                except _Skip as skip:
                    self._settle(item, SendResult(item.sop_instance_uid,
                                                  SendOutcome.PERMANENT if skip.permanent else SendOutcome.RETRY,
                                                  None, skip.reason, transmitted=False), leases,
                                 instance=skip.instance, decided=skip.event, hold=skip.hold)
                    continue
                except Exception as exc:
                    log.exception("preparing outbox item %d failed", item.id)
                    self._settle(item, SendResult(item.sop_instance_uid, SendOutcome.RETRY, None,
                                                  f"could not prepare the object: {type(exc).__name__}",
                                                  transmitted=False), leases)
                    continue
                ready.append((item, obj, disclosure))
            if not ready:
                return

            def withhold(index: int) -> str | None:  # the sender asks right before each C-STORE-RQ
                item, _, disclosure = ready[index]
                disclosure.asked = True
                if not leases.holds(item):  # lost at a renewal: another forwarder may send it
                    disclosure.held_back = _Skip(LEASE_LOST, permanent=False)
                    return LEASE_LOST
                return self._withhold(disclosure) or self._start(item, disclosure, leases)

            def acknowledged(index: int, result: SendResult) -> None:  # and tells each acknowledgement
                item, _, disclosure = ready[index]
                if disclosure.held_back is None and disclosure.sent is None:
                    # marked sent before the next C-STORE-RQ, and audited in the same transaction:
                    # marked sent, it is never sent (nor audited) again
                    self._settle(item, result, leases, disclosed=self._disclosed(disclosure, warning=result))
                    disclosure.sent = result

            try:
                results = self._sender.send_batch(destination, [obj for _, obj, _ in ready], withhold=withhold,
                                                  acknowledged=acknowledged)
            except Exception as exc:
                log.exception("sending to %s failed", destination)
                results = [SendResult(item.sop_instance_uid, SendOutcome.RETRY, None,
                                      f"sending failed: {type(exc).__name__}") for item, _, _ in ready]
            if len(results) != len(ready):  # the sender broke its promise: nothing is known to be sent
                log.error("the sender returned %d results for %d objects", len(results), len(ready))
                results = [SendResult(item.sop_instance_uid, SendOutcome.RETRY, None,
                                      "the sender returned no result") for item, _, _ in ready]
        for (item, _, disclosure), result in zip(ready, results, strict=True):
            held = disclosure.held_back
            sent_anyway = held is not None and result.acknowledged
            if held is not None:  # not sent, whatever the sender's result says of it
                reason = held.reason
                if result.acknowledged:  # it went all the same: the audit says so (a transfer "sent: ...")
                    log.error("outbox item %d: the sender sent an object it was told to hold back", item.id)
                    reason = f"acknowledged by the PACS though held back ({held.reason})"
                result = SendResult(item.sop_instance_uid,
                                    SendOutcome.PERMANENT if held.permanent else SendOutcome.RETRY, None, reason,
                                    transmitted=result.acknowledged)
            elif result.transmitted is None and not disclosure.asked:
                # the sender asks right before each C-STORE-RQ (StoreSender): never asked, never sent
                result = dataclasses.replace(result, transmitted=False)
            if disclosure.sent is not None:  # marked sent and audited when acknowledged, whatever came after
                continue
            if result.acknowledged:
                self._settle(item, result, leases, disclosed=self._disclosed(disclosure, warning=result))
            else:
                # a consent refusal is audited as the transfer it refused, unless the object went
                # all the same: then as the transfer made ("sent: acknowledged ... though held back
                # (<the refusal>)"), naming the record and patient disclosed
                self._settle(item, result, leases, instance=disclosure.instance,
                             decided=self._refusal_event(disclosure) if disclosure.refused and not sent_anyway
                             else None, unanswered=held is None and _unanswered(result),
                             hold=held.hold if held is not None and not sent_anyway else None)

    def _settle(self, item: OutboxItem, result: SendResult, leases: LeaseKeeper, *,
                disclosed: dict[str, Any] | None = None, instance: DicomInstance | None = None,
                decided: dict[str, Any] | None = None, unanswered: bool = False, hold: _Hold | None = None) -> None:
        """Record the attempt at once, with its AuditEvent in the same transaction (module
        docstring): an acknowledged object is marked sent before anything else happens, so it
        is not sent again, with ``disclosed``, the AuditEvent of its disclosure. A failure is
        recorded only under the claim this forwarder holds (if it was lost meanwhile, the item
        is another forwarder's now, and perhaps sent already), with ``decided``, the AuditEvent
        of a consent refusal, or else the failed transfer's (:meth:`_failed_attempt`, naming
        ``instance`` where it is known). An attempt that could not be recorded is audited all
        the same, in a transaction of its own, when its object went out (or may have) or
        consent refused it: that happened, whoever holds the item now; one that sent nothing
        is left to the forwarder that holds the item.

        ``unanswered``: the destination did not answer (:func:`_unanswered`); the item is then due
        again at the destination's next retry, with the others it left unanswered, and waits
        for it to answer again (module docstring). An acknowledgement says it answers.

        ``hold``: the item awaits documented consent for care: held (RecordStore.hold_outbox),
        with its one AuditEvent, unless the patient's Consents changed since its decision (or
        the claim was lost): then recorded as an attempt to be retried, decided again then."""
        now = self._now()
        backoff = self._backoff.setdefault(item.destination, _Backoff())
        if result.acknowledged:
            backoff.answering, backoff.retry_at, backoff.steps = True, None, 0
            leases.release(item)  # no longer renewed: a sent item has no claim to keep
            self._store.mark_outbox_sent(item.id, now, audit_events=[disclosed] if disclosed is not None else (),
                                         last_error=last_error(result) if result.error else None)
            # which forwarder sent which item, when several share the outbox (ops review 8); a
            # warning by its status and Offending Elements, never the PACS's Error Comment
            log.info("outbox item %d to %s: sent (attempt %d)%s", item.id, item.destination, item.attempts + 1,
                     f", {result.error}" if result.error else "")
            return
        attempts = item.attempts + 1
        error = last_error(result)
        logged = result.error or "failed"  # the log: no Error Comment (it may quote patient data)
        give_up = result.outcome is SendOutcome.PERMANENT or attempts >= self.options.retry_max
        if unanswered:
            backoff.answering = False
        if give_up:
            retry_at = now
        elif unanswered:
            retry_at = backoff.retry(now, attempts, self.options, self._rng)
        else:
            retry_at = now + backoff_delay(attempts, self.options, self._rng)
        event = decided if decided is not None else self._failed_attempt(item, instance, result, give_up=give_up)
        claimed = leases.release(item)
        if hold is not None and self._hold(item, hold, claimed_until=claimed, error=error, now=now, event=event):
            log.info("outbox item %d to %s: held until consent for care is documented", item.id, item.destination)
            return
        if not self._store.mark_outbox_retry(item.id, next_attempt_at=retry_at, error=error, now=now,
                                             give_up=give_up, claimed_until=claimed,
                                             audit_events=[event]):
            if decided is not None or result.transmitted is not False:
                self._append_audit(item, event)
            log.info("outbox item %d to %s: attempt failed (%s) after another forwarder took it", item.id,
                     item.destination, logged)
            return
        if unanswered and not give_up:  # waiting for the destination, as this forwarder left it
            backoff.waiting[item.id] = dataclasses.replace(item, attempts=attempts, next_attempt_at=retry_at,
                                                           last_error=error, updated=now)
        # A retried attempt is routine while a PACS is down (a WARNING); an item given up needs
        # someone (requeue, or the PACS's own fix): the ERROR an alert on error lines should see.
        if give_up:
            log.error("outbox item %d to %s failed for good after %d attempt(s): %s",
                      item.id, item.destination, attempts, logged)
        else:
            log.warning("outbox item %d to %s: attempt %d failed (%s), retrying", item.id, item.destination,
                        attempts, logged)

    def _hold(self, item: OutboxItem, hold: _Hold, *, claimed_until: datetime, error: str, now: datetime,
              event: dict[str, Any]) -> bool:
        """Hold ``item`` (RecordStore.hold_outbox), to be looked at again when one of its patient's
        Consents comes into force (adapter.services.consent_pending.next_change), read as they
        were for the decision: False, not held, when they changed since (then the hold's
        condition fails anyway: the attempt is retried, decided again)."""
        consents = self._store.consents_for_patient(hold.patient)
        if [(c.id, c.version_id) for c in consents] != list(hold.consents):
            return False
        return self._store.hold_outbox(item.id, claimed_until=claimed_until, patient=hold.patient,
                                       consents=hold.consents, error=error, now=now, audit_events=[event],
                                       recheck_at=next_change(consents, hold.patient, now))

    def _append_audit(self, item: OutboxItem, event: dict[str, Any]) -> None:
        try:
            self._store.append_audit(event)
        except Exception:
            log.exception("auditing an attempt of outbox item %d failed", item.id)

    # -- the object --------------------------------------------------------------------------
    def _object_for(self, item: OutboxItem) -> tuple[Dataset | Path, _Disclosure]:
        """The DICOM object of an item: a received object's stored Part 10 file, or the photo's
        object regenerated from the record and its stored bytes with the UIDs fixed at ingest.
        A _Skip when it is not to be sent (naming the instance when it was found); a consent
        refusal carries its AuditEvent, to be stored with the attempt."""
        instance = self._store.find_dicom_instance(item.sop_instance_uid)
        if instance is None:
            raise _Skip("no DICOM instance with this SOP Instance UID", permanent=True)
        try:
            stored = self._record_of(instance)
            disclosure = _Disclosure(item, instance, stored.facts)
            consents = self._consents_seen(stored.facts)
            decision = self._reader(disclosure.context()).decide(stored.facts)
            disclosure.decision = decision
            if not decision.permitted:
                hold = _hold_for(stored.facts, decision, consents)
                disclosure.awaiting = hold is not None
                if hold is not None:
                    raise _Skip(AWAITING_CONSENT, permanent=False, event=self._refusal_event(disclosure), hold=hold)
                raise _Skip(NOT_PERMITTED, permanent=True, event=self._refusal_event(disclosure))
            try:
                return dicom_object_for(instance, stored, self._blobs, self._tables, self._dicom_tables), disclosure
            except AdapterError as exc:
                raise _Skip(f"cannot make the DICOM object: {exc.diagnostics}"[:300], permanent=True) from exc
        except _Skip as skip:
            skip.instance = instance
            raise
        except Exception as exc:
            log.exception("preparing outbox item %d failed", item.id)
            raise _Skip(f"could not prepare the object: {type(exc).__name__}", permanent=False,
                        instance=instance) from exc

    def _consents_seen(self, facts: AccessFacts | None) -> tuple[tuple[str, int], ...] | None:
        """The versions of the patient's Consents, read before the decision on a consent-pending
        record: the condition of its hold (:class:`_Hold`); None for any other record."""
        if facts is None or not facts.consent_pending:
            return None
        return tuple(self._store.consent_versions_for_patient(facts.patient))

    def _record_of(self, instance: DicomInstance) -> StoredResource:
        """The record an instance belongs to, as stored now; a permanent _Skip if it is gone."""
        stored = self._store.get(instance.record_type, instance.record_id)
        if stored is None:
            raise _Skip(f"the record {instance.record_type}/{instance.record_id} is gone", permanent=True)
        return stored

    def _withhold(self, disclosure: _Disclosure) -> str | None:
        """The sender's check right before the object's C-STORE-RQ: the consent decision taken
        again on the record's facts and the patient's Consents as stored now (one read of each;
        the object is not made again). None lets it go; else the reason it is held back, kept
        on ``disclosure`` for the settling and the audit after the batch (module docstring).
        Fail closed: when the decision cannot be taken, the object is held back and retried."""
        instance = disclosure.instance
        try:
            facts = self._record_of(instance).facts
            consents = self._consents_seen(facts)
            decision = self._reader(disclosure.context()).decide(facts)
        except _Skip as skip:
            disclosure.held_back = skip
            return skip.reason
        except Exception as exc:
            log.exception("deciding outbox item %d again before sending failed", disclosure.item.id)
            disclosure.held_back = _Skip(f"not sent: the consent decision could not be taken ({type(exc).__name__})",
                                         permanent=False)
            return disclosure.held_back.reason
        disclosure.decision = decision  # what the object leaves under, or is refused by, is audited
        if not decision.permitted:
            disclosure.refused = True
            hold = _hold_for(facts, decision, consents)
            disclosure.awaiting = hold is not None
            disclosure.held_back = _Skip(f"{AWAITING_CONSENT if hold else NOT_PERMITTED} (decided again right before "
                                         "it was sent)", permanent=hold is None, hold=hold)
            return disclosure.held_back.reason
        return None

    def _start(self, item: OutboxItem, disclosure: _Disclosure, leases: LeaseKeeper) -> str | None:
        """The last step before the C-STORE-RQ, once the decision let the object go: record in the
        item's row that it goes now (LeaseKeeper.start_send), a conditional update that a mark
        entered-in-error is ordered against. None lets it go; else it is held back: the item is
        no longer pending under this claim (the mark cancelled it, or the claim was lost), or
        the store failed (retried)."""
        try:
            if leases.start_send(item, self._now()):
                return None
            disclosure.held_back = _Skip(NOT_STARTED, permanent=False)
        except Exception as exc:
            log.exception("recording the start of outbox item %d's C-STORE failed", item.id)
            disclosure.held_back = _Skip(f"not sent: its start could not be recorded ({type(exc).__name__})",
                                         permanent=False)
        return disclosure.held_back.reason

    def _refusal_event(self, disclosure: _Disclosure) -> dict[str, Any]:
        """The AuditEvent of a refusal, by the consent decision, to make a disclosure to a PACS:
        DICOM Instances Transferred, read by the sender (adapter.mapping.audit_dicom), outcome 4
        with the decision's reason; counted as a decision. Stored with the attempt (:meth:`_settle`).
        One that awaits documented consent for care (a consent-pending record) says so."""
        reason = "not forwarded to PACS" + (" until consent for care is documented (consent pending)"
                                            if disclosure.awaiting else "") \
            + (f": {disclosure.decision.reason}" if disclosure.decision else "")
        return self._disclosed(disclosure, reason)

    def _disclosed(self, disclosure: _Disclosure, reason: str | None = None, *,
                   warning: SendResult | None = None) -> dict[str, Any]:
        """The AuditEvent of a disclosure to a PACS (or, with ``reason``, of its refusal):
        DICOM Instances Transferred, read by the sender (adapter.mapping.audit_dicom), its outcome
        the decision's; stored with the item marked sent (or failed). An acknowledgement with a
        Warning status (``warning``'s error) adds what the PACS said to the decision's reason."""
        if warning is not None and warning.error and reason is None:
            said = f"the PACS {last_error(warning)}"
            why = disclosure.decision.reason if disclosure.decision is not None else None
            reason = f"{why}; {said}" if why else said
        return self._auditor.decision_event(
            disclosure.context(), interaction="read", action="R", decision=disclosure.decision,
            entities=[f"{disclosure.instance.record_type}/{disclosure.instance.record_id}"],
            patient=disclosure.instance.patient, reason=reason,
            dicom=DicomAudit.pushed_to_peer(disclosure.instance.study_instance_uid))

    def _failed_attempt(self, item: OutboxItem, instance: DicomInstance | None, result: SendResult, *,
                        give_up: bool) -> dict[str, Any]:
        """The AuditEvent of an attempt that failed (not a consent refusal): DICOM Instances
        Transferred, read by the sender, outcome :func:`attempt_outcome` and outcomeDesc
        :func:`attempt_reason`: "sent" with the PACS's status (or none), or "not sent":
        nothing was disclosed. It names the record, its patient and study where the instance is
        known, else the SOP instance alone. Not a decision: not counted as one."""
        if instance is not None:
            entities = [f"{instance.record_type}/{instance.record_id}"]
            dicom = DicomAudit.pushed_to_peer(instance.study_instance_uid)
        else:
            entities, dicom = [], DicomAudit.pushed_to_peer(instances=(item.sop_instance_uid,))
        return self._auditor.event(
            _context_for(item), interaction="read", action="R", permitted=False,
            reason=attempt_reason(result, give_up=give_up), entities=entities,
            patient=instance.patient if instance is not None else None, dicom=dicom,
            outcome=attempt_outcome(give_up=give_up))


def _context_for(item: OutboxItem) -> RequestContext:
    """The context of forwarding ``item``: for care (TREAT, the PACS being part of the care
    record), to the PACS of its destination, named by its AE title and address (the audit's
    Destination; the adapter is the requestor)."""
    ae, _, address = item.destination.partition("@")
    host = address.rpartition(":")[0].strip("[]") or None
    return RequestContext(purpose=PurposeOfUse("TREAT"), actor=f"PACS {ae} (C-STORE)",
                          request_id=f"outbox-{item.id}", client_address=host, channel="dicom",
                          ae_title=ae or None)


class _Disclosure:
    """One outbox item on its way out: what the audit and the consent decision need."""

    def __init__(self, item: OutboxItem, instance: DicomInstance, facts: AccessFacts | None) -> None:
        self.item = item
        self.instance = instance
        self.facts = facts
        self.decision: Decision | None = None
        self.held_back: _Skip | None = None  # by the check right before its C-STORE-RQ
        self.sent: SendResult | None = None  # its acknowledgement, once marked sent
        self.refused = False                 # that check's consent decision refused it
        self.awaiting = False                # a refusal for want of documented consent for care: held
        self.asked = False                   # the sender asked that check: its C-STORE-RQ was about to go

    def context(self) -> RequestContext:
        return _context_for(self.item)
