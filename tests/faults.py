"""Network faults of the tests' own: a TCP proxy that forwards, freezes, drops or refuses.

``Proxy(host, port)`` listens on 127.0.0.1 (``proxy.port``) and forwards each
connection to the real server. While it runs, a test can:

- ``freeze()``: stop forwarding in both directions, keep every socket open
  (a peer that vanished without FIN or RST); ``thaw()`` forwards again;
- ``drop()``: reset every open connection (RST), as a failed link or a
  restarted pooler does; new connections are still accepted;
- ``blackhole()``: accept new connections but never connect them anywhere
  nor answer (a server that accepts TCP and hangs).

Only loopback traffic; every thread stops when the proxy is closed.

Also: ``wait_for`` (a revision's signal file) and ``Background`` (a run in a
thread of its own, joined with a bound).
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from pathlib import Path
from types import TracebackType

import anyio

from automigrator import AutoMigrator


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of ``host:port``; a context manager."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._frozen = threading.Event()
        self._blackhole = False
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def __enter__(self) -> Proxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def accepted(self) -> int:
        """Connections accepted so far (closed ones included, until ``drop()``)."""
        with self._lock:
            return len(self._pairs)

    def freeze(self) -> None:
        """Stop forwarding; connections stay open and silent."""
        self._frozen.set()

    def thaw(self) -> None:
        """Forward again."""
        self._frozen.clear()

    def blackhole(self) -> None:
        """New connections are accepted and then never answered."""
        self._blackhole = True

    def drop(self) -> None:
        """Reset every open connection (RST on both sides)."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                if sock is not None:
                    _reset(sock)

    def close(self) -> None:
        """Stop accepting and close everything."""
        self._closed = True
        self._frozen.clear()
        self.listener.close()
        self._thread.join(5)  # no connection accepted after the drop below
        self.drop()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._blackhole:
                with self._lock:
                    self._pairs.append((client, None))
                continue
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peers = {client: server, server: client}
        try:
            while not self._closed:
                if self._frozen.is_set():
                    select.select([], [], [], 0.05)  # hold everything, a while
                    continue
                readable, _, _ = select.select(list(peers), [], [], 0.05)
                for sock in readable:
                    if self._frozen.is_set():
                        break
                    data = sock.recv(65536)
                    if not data:
                        raise ConnectionError("closed")
                    peers[sock].sendall(data)
        except (OSError, ValueError, ConnectionError):
            for sock in peers:
                _reset(sock)


def _reset(sock: socket.socket) -> None:
    # SO_LINGER 0: close() sends RST, as a dead link or a killed pooler would.
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def wait_for(path: Path, seconds: float = 60) -> None:
    """Block until ``path`` exists (a revision said it runs)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


class Background:
    """``migrator.run()`` in a thread of its own; ``result()`` gives the error or status."""

    def __init__(self, migrator: AutoMigrator) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(migrator,))
        self.thread.start()

    def _run(self, migrator: AutoMigrator) -> None:
        try:
            anyio.run(migrator.run)
        except BaseException as exc:
            self.error = exc

    def result(self) -> BaseException | None:
        self.thread.join(120)
        assert not self.thread.is_alive()
        return self.error
