"""A TCP relay between the adapter and its PostgreSQL that a test can cut, the way an outage
looks from the adapter's side: connections refused, or a silent partition (connections are
accepted, nothing ever answers). Established connections are closed when it is cut."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

PASS, REFUSE, SILENT = "pass", "refuse", "silent"


@dataclass
class TcpRelay:
    target: tuple[str, int]
    mode: str = PASS
    _listener: socket.socket = field(default_factory=lambda: socket.create_server(("127.0.0.1", 0)))
    _open: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def url_for(self, database_url: str) -> str:
        """``database_url`` reaching its server through this relay."""
        return make_url(database_url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def cut(self, mode: str) -> None:
        """From now on refuse (connections reset at once) or stay silent; every connection open now is closed."""
        with self._lock:
            self.mode = mode
            for s in self._open:
                _close(s)
            self._open.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
                if mode == REFUSE:
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    client.close()  # RST: as a closed port answers
                    continue
                self._open.append(client)
            if mode == SILENT:
                continue  # held open, never answered
            server = socket.create_connection(self.target)
            with self._lock:
                self._open.append(server)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def close(self) -> None:
        _close(self._listener)
        self.cut(REFUSE)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    _close(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@contextmanager
def tcp_relay(database_url: str) -> Iterator[TcpRelay]:
    url = make_url(database_url)
    relay = TcpRelay((url.host or "127.0.0.1", url.port or 5432))
    threading.Thread(target=relay._accept, daemon=True).start()
    try:
        yield relay
    finally:
        relay.close()
