"""A record marked entered-in-error while the forwarder is sending its object (review newwrites
F1): the PATCH answer must not claim that item cancelled, the item ends as what happened (sent;
or, if its send failed, never sent again), and ``/outbox`` names the record and SOP Instance UID
of such an item to records management, who must correct the copy at the PACS. A real
pynetdicom SCP holds the C-STORE until the PATCH has been answered."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage, VLPhotographicImageStorage

from adapter.dicom.scu import ScuOptions, StoreSCU
from adapter.services.forwarding import NOT_PERMITTED, ForwardOptions
from tests.conftest import ROOT, wait_until
from tests.support.app import adapter_client, as_purpose, mark_entered_in_error, metadata, post_photo
from tests.support.orthanc import free_port

pytestmark = pytest.mark.integration

WOUND = ROOT / "samples" / "wound.jpg"
FAST = ForwardOptions(poll_interval=0.05, backoff_base=0.2, backoff_cap=0.5, jitter=0.2)


@contextmanager
def slow_scp(status: int) -> Iterator[tuple[str, list[str], threading.Event, threading.Event]]:
    """A C-STORE SCP that holds each C-STORE until ``release`` is set, then answers ``status``;
    ``arrived`` is set once the first C-STORE came in."""
    received: list[str] = []
    arrived, release = threading.Event(), threading.Event()

    def handle_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        arrived.set()
        release.wait(30)
        return status

    ae = AE(ae_title="PACS")
    for sop_class in (VLPhotographicImageStorage, SecondaryCaptureImageStorage):
        ae.add_supported_context(sop_class, [JPEGBaseline8Bit, ExplicitVRLittleEndian])
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        yield f"PACS@127.0.0.1:{server.server_address[1]}", received, arrived, release
    finally:
        release.set()
        server.shutdown()
        ae.shutdown()


def _status(services: Any) -> str:
    [item] = services.store.list_outbox()
    return str(item.status)


@contextmanager
def _marked_while_sending(tmp_path: Path, status: int) -> Iterator[tuple[Any, Any, dict[str, Any], Any, list[str]]]:
    """A photo posted with forwarding to a slow SCP answering ``status``, its record marked
    entered-in-error while the SCP holds its C-STORE: (client, services, receipt, the PATCH's
    answer, the SOP Instance UIDs the SCP received)."""
    with slow_scp(status) as (destination, received, arrived, release), \
            adapter_client(tmp_path, forward_to=destination) as (client, services):
        receipt = post_photo(client, WOUND, metadata()).json()
        services.start_forwarding(StoreSCU(ScuOptions(connection_timeout=2)), FAST)
        assert arrived.wait(20), "the C-STORE did not arrive"
        marked = mark_entered_in_error(client, receipt["record"])
        release.set()
        yield client, services, receipt, marked, received


def test_a_mark_while_the_object_is_being_sent_says_so_and_records_it_sent(tmp_path: Path) -> None:
    """Found by review: the answer said "1 outbox item(s) not yet sent were cancelled" while the
    C-STORE was under way; the PACS stored it, the item ended sent, and /outbox hid its record and
    UID from every purpose. Test seen failing."""
    with _marked_while_sending(tmp_path, 0x0000) as (client, services, receipt, marked, received):
        assert marked.status_code == 200, marked.text
        text = marked.json()["issue"][0]["diagnostics"]
        assert "0 outbox item(s) not yet sent were cancelled" in text
        assert "1 outbox item(s) were being sent at the time and may have reached the PACS (check /outbox)" in text
        wait_until(lambda: _status(services) == "sent", timeout=20)  # the item recorded sent
        assert received == [receipt["dicom"]["sopInstanceUid"]]
        # records management sees which record, and which SOP instance, has a copy at the PACS
        [shown] = client.get("/outbox", headers=as_purpose("RECORDMGT")).json()
        assert shown["status"] == "sent" and shown["record"] == {"reference": receipt["record"]}
        assert shown["sopInstanceUid"] == receipt["dicom"]["sopInstanceUid"] and "withheld" not in shown
        for purpose in ("TREAT", "HOPERAT", "BTG"):  # other purposes as before
            [withheld] = client.get("/outbox", headers=as_purpose(purpose)).json()
            assert withheld["withheld"] is True and withheld["record"] is None, purpose
            assert withheld["sopInstanceUid"] is None, purpose


def test_a_mark_while_the_object_is_being_sent_and_its_send_fails_is_never_retried(tmp_path: Path) -> None:
    """The C-STORE under way when the record was marked fails (0xA700, to be retried): the item
    is not sent again; the forwarder's check refuses it, for good."""
    with _marked_while_sending(tmp_path, 0xA700) as (_, services, receipt, marked, received):
        assert "1 outbox item(s) were being sent at the time" in marked.text
        wait_until(lambda: _status(services) == "failed", timeout=20)  # the item refused for good
        [item] = services.store.list_outbox()
        assert item.last_error == NOT_PERMITTED
        time.sleep(1.0)  # several polls and back-offs later
        assert received == [receipt["dicom"]["sopInstanceUid"]]
        assert _status(services) == "failed"


def test_the_mark_and_the_last_check_before_a_c_store_are_ordered_on_the_outbox_row(tmp_path: Path) -> None:
    """Whichever commits first wins: an item the mark cancelled cannot start its C-STORE, and an
    item whose C-STORE started is not counted as cancelled."""
    closed = f"PACS@127.0.0.1:{free_port()}"
    with adapter_client(tmp_path, forward_to=closed) as (client, services):
        first = post_photo(client, WOUND, metadata()).json()
        second = post_photo(client, ROOT / "samples" / "lesion.png", metadata(), content_type="image/png").json()
        store = services.store
        claimed = {i.sop_instance_uid: i for i in store.claim_outbox(services.now(), 10)}
        one, two = claimed[first["dicom"]["sopInstanceUid"]], claimed[second["dicom"]["sopInstanceUid"]]
        # the mark first: cancelled, and its C-STORE may not start
        assert "1 outbox item(s) not yet sent were cancelled" in mark_entered_in_error(client, first["record"]).text
        assert store.start_outbox_send(one.id, claimed_until=one.next_attempt_at, now=services.now()) is False
        # the C-STORE first: the mark does not count it cancelled
        assert store.start_outbox_send(two.id, claimed_until=two.next_attempt_at, now=services.now()) is True
        text = mark_entered_in_error(client, second["record"]).text
        assert "0 outbox item(s) not yet sent were cancelled" in text and "1 outbox item(s) were being sent" in text
        statuses = {i.sop_instance_uid: i.status for i in store.list_outbox()}
        assert statuses == {one.sop_instance_uid: "cancelled", two.sop_instance_uid: "pending"}
