"""Each forwarding destination goes its own way: a PACS that hangs does not hold up the others.

Found by the PACS review (finding 1): one forwarder thread sent the destinations of a pass one
after the other, so a PACS that accepted the connection and never answered the A-ASSOCIATE-RQ
(the ACSE timeout), or answered it and never the C-STORE (the DIMSE timeout), delayed every photo
for the healthy PACS by that timeout, at every retry. Here a real hung peer sits beside a real
Orthanc (tests/support/orthanc.py), first in ``ADAPTER_FORWARD_TO``: photos still reach Orthanc
at once while the hung peer holds its own destination's worker. Tests seen failing (the photo
reached Orthanc only after the SCU's timeout).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import SecondaryCaptureImageStorage, VLPhotographicImageStorage

from adapter.dicom.scu import ScuOptions
from adapter.services.forwarding import ForwardOptions
from tests.integration.test_forwarding import (
    CountingSCU,
    destination,
    forward_events,
    forwarder_for,
    meta_for,
    orthanc,  # noqa: F401 - the module's Orthanc fixture
    outbox,
    pacs,  # noqa: F401 - a fresh Orthanc per test
    photo_jpeg,
    wait_for,
)
from tests.support.app import adapter_client, post_photo
from tests.support.orthanc import OrthancPeer

#: The SCU's timeouts here: long beside the promptness asked of the healthy destination (5 s).
HUNG_FOR = 20.0
PROMPT = 5.0
OPTIONS = ForwardOptions(poll_interval=0.05, backoff_base=0.2, backoff_cap=1.0, jitter=0.2, stop_timeout=10)


class SilentPeer:
    """A TCP listener that accepts connections and never answers (nor reads): a hung PACS as the
    A-ASSOCIATE-RQ sees it. :meth:`close` closes every connection."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._open: list[socket.socket] = []
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._open.append(conn)
            self.connections += 1

    def close(self) -> None:  # again: nothing more to close
        self._listener.close()
        for conn in self._open:
            conn.close()
        self._thread.join(5)


class MuteStoreSCP:
    """A pynetdicom SCP that answers the A-ASSOCIATE-RQ and keeps every C-STORE unanswered until
    :meth:`close` (then it answers Success)."""

    def __init__(self) -> None:
        self.stores = 0
        self._go = threading.Event()
        self._ae = AE(ae_title="HUNG")
        for sop_class in (VLPhotographicImageStorage, SecondaryCaptureImageStorage):
            self._ae.add_supported_context(sop_class, ["1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.1"])
        self._server = self._ae.start_server(("127.0.0.1", 0), block=False,
                                             evt_handlers=[(evt.EVT_C_STORE, self._handle_store)])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def connections(self) -> int:
        return self.stores

    def _handle_store(self, event: evt.Event) -> int:
        self.stores += 1
        self._go.wait(60)
        return 0x0000

    def close(self) -> None:
        if self._go.is_set():
            return
        self._go.set()
        self._server.shutdown()
        self._ae.shutdown()


@contextmanager
def hung(kind: str) -> Iterator[Any]:
    peer: Any = SilentPeer() if kind == "silent" else MuteStoreSCP()
    try:
        yield peer
    finally:
        peer.close()


@pytest.mark.parametrize("kind", ["silent", "mute"])
def test_a_hung_pacs_does_not_hold_up_the_healthy_one(tmp_path: Path, pacs: OrthancPeer,  # noqa: F811
                                                       kind: str) -> None:
    """``silent``: TCP accepted, no A-ASSOCIATE-AC (the ACSE timeout); ``mute``: the association
    accepted, the C-STORE never answered (the DIMSE timeout). Photo A is posted, and once the
    hung peer holds its worker photo B too: both reach Orthanc within seconds, each audited once
    as a disclosure to it; the hung destination's items stay pending, not sent."""
    with hung(kind) as peer:
        forward_to = f"HUNG@127.0.0.1:{peer.port},{destination(pacs)}"
        with adapter_client(tmp_path, forward_to=forward_to) as (client, services):
            scu = CountingSCU(ScuOptions(acse_timeout=HUNG_FOR, dimse_timeout=HUNG_FOR))
            services.start_forwarding(scu, OPTIONS)
            posted = time.monotonic()
            a = post_photo(client, photo_jpeg(tmp_path, 1, size=(320, 240)), meta_for(1))
            assert a.status_code == 201, a.text
            wait_for(lambda: peer.connections >= 1, timeout=PROMPT, what="the hung peer to be reached")
            b = post_photo(client, photo_jpeg(tmp_path, 2, size=(320, 240)), meta_for(2))
            assert b.status_code == 201, b.text
            uids = {r.json()["dicom"]["sopInstanceUid"] for r in (a, b)}

            def at_orthanc() -> bool:
                return {i["sopInstanceUid"] for i in outbox(client, status="sent")
                        if i["destination"] == destination(pacs)} == uids

            wait_for(at_orthanc, timeout=PROMPT, what="both photos at the healthy PACS")
            assert time.monotonic() - posted < HUNG_FOR
            hung_items = [i for i in outbox(client) if i["destination"].startswith("HUNG@")]
            assert len(hung_items) == 2 and {i["status"] for i in hung_items} == {"pending"}
            disclosed = [e for e in forward_events(services) if e["outcome"] == "0"]
            assert len(disclosed) == 2
            peer.close()  # the hung worker's send ends now; the forwarder stops with the client
    assert len(pacs.instances()) == 2


def test_the_consent_in_force_look_runs_once_per_pass_not_once_per_destination(tmp_path: Path) -> None:
    """The holds due (a Consent that came into force) are looked at once per pass, whatever the
    number of destinations the pass sends to."""
    with adapter_client(tmp_path, forward_to="A@127.0.0.1:9,B@127.0.0.1:9,C@127.0.0.1:9") as (client, services):
        for n in range(2):
            assert post_photo(client, photo_jpeg(tmp_path, 10 + n, size=(320, 240)), meta_for(10 + n)).status_code == 201
        looks: list[int] = []
        store = services.store

        class Spy:
            def __getattr__(self, name: str) -> Any:
                return getattr(store, name)

            def holds_due(self, *args: Any, **kwargs: Any) -> Any:
                looks.append(1)
                return store.holds_due(*args, **kwargs)

        forwarder = forwarder_for(services, CountingSCU(ScuOptions(connection_timeout=1)), OPTIONS, store=Spy())
        assert forwarder.run_once() == 6
        assert len(looks) == 1
        assert {i["attempts"] for i in outbox(client)} == {1}
