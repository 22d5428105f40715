"""Replica processes for the concurrency and fault tests (see tests/replica.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

ROOT = Path(__file__).resolve().parents[1]


def start_replicas(
    ini: Path,
    url: URL,
    count: int,
    env: dict[str, str] | None = None,
    script: str = "tests.replica",
) -> list[subprocess.Popen[str]]:
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", script, str(ini), url.render_as_string(False)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        for _ in range(count)
    ]
    for proc in procs:  # wait until each has imported everything and built its migrator
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    return procs


class ConnectionPeak:
    """The most connections a server database had at once, sampled every 5 ms.

    From a connection of its own to the server's admin database (not counted).
    SQLite has no connections to count: ``peak`` stays 0.
    """

    def __init__(self, url: URL, admin: URL | None) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        backend = url.get_backend_name()
        if admin is None or backend == "sqlite":
            return
        sql = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = :db"
            if backend == "postgresql"
            else "SELECT count(*) FROM information_schema.PROCESSLIST WHERE DB = :db"
        )
        self._engine = sa.create_engine(admin, poolclass=sa.NullPool)
        self._query, self._db = sa.text(sql), url.database
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        with self._engine.connect() as conn:
            while not self._stop.wait(0.005):
                found = conn.execute(self._query, {"db": self._db}).scalar()
                conn.rollback()
                self.peak = max(self.peak, int(found or 0))

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._engine.dispose()
        return self.peak
