"""A connection begun early, while work that needs no database goes on.

On a database server, a start at head spends about half its time
connecting (the TCP handshake, authentication, the dialect's first
queries: 7-9 ms locally on PostgreSQL), and up to a third listing the
revision files to check the remembered heads (a stat per file: 3.5 ms at
1000 revisions). Neither needs the other, and both wait on the kernel with
the GIL released: the plan lists the files while the connection is made
(docs/performance.md, "The ledger at head").

SQLite is left out: its connect costs next to nothing, and its connections
may refuse to be used from a thread other than the one that made them.
"""

from __future__ import annotations

import threading

from sqlalchemy.engine import Connection, Engine


class EarlyConnection:
    """``engine.connect()`` under way in a daemon thread.

    ``take()`` waits for it and returns it (raising what the connect raised),
    once; ``drop()`` says nobody will: it is closed whenever it arrives. A
    daemon thread, so that a connect to a host that never answers never
    keeps the process alive (as ``process/_signals.abandonable``).
    """

    def __init__(self, engine: Engine) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._connection: Connection | None = None
        self._error: BaseException | None = None
        self._dropped = False
        thread = threading.Thread(
            target=self._connect, args=(engine,), name="automigrator connect", daemon=True
        )
        thread.start()

    def _connect(self, engine: Engine) -> None:
        connection: Connection | None = None
        try:
            connection = engine.connect()
        except BaseException as exc:  # handed to take(): raised in the plan's thread
            self._error = exc
        else:
            with self._lock:
                if not self._dropped:
                    self._connection, connection = connection, None
            if connection is not None:
                connection.close()  # dropped while it was being made
        finally:
            self._ready.set()

    def take(self) -> Connection:
        """The connection, once made (what the connect raised, if it failed)."""
        self._ready.wait()
        if self._error is not None:
            raise self._error
        assert self._connection is not None
        connection, self._connection = self._connection, None
        return connection

    def drop(self) -> None:
        """Nobody will take it: close it now or when it arrives."""
        with self._lock:
            self._dropped = True
            connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


def connect_early(engine: Engine) -> EarlyConnection | None:
    """An :class:`EarlyConnection` on a server; None for SQLite (connect when needed)."""
    if engine.dialect.name == "sqlite":
        return None
    return EarlyConnection(engine)
