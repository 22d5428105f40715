"""A real PgBouncer of the tests' own, in front of the test PostgreSQL server.

``PgBouncer(mode)`` writes a configuration of its own (trust auth, every
database forwarded to the server of ``AUTOMIGRATOR_TEST_POSTGRES_URL``),
starts Debian's ``pgbouncer`` on a free port of 127.0.0.1 and stops it on
exit. It never touches the shared server. ``.ci/run`` installs the package;
without it the tests fail under ``AUTOMIGRATOR_TEST_REQUIRE_SERVERS=1`` and
are skipped elsewhere.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Literal

import pytest
from sqlalchemy.engine import URL

from tests.conftest import REQUIRE

PoolMode = Literal["session", "transaction", "statement"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PgBouncer:
    """PgBouncer in ``mode`` in front of ``server`` (a URL of the test server)."""

    def __init__(
        self, server: URL, mode: PoolMode, *, pool_size: int = 10, query_wait_timeout: int = 30
    ) -> None:
        binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(binary).exists():
            message = (
                "pgbouncer is not installed (Debian's pgbouncer package; .ci/run installs it)"
            )
            if REQUIRE:
                pytest.fail(message + " (AUTOMIGRATOR_TEST_REQUIRE_SERVERS=1)")
            pytest.skip(reason=message)
        self.server = server
        self.port = _free_port()
        # PgBouncer will not run as root: it drops to the postgres user, who
        # must be able to read this folder.
        self.folder = Path(tempfile.mkdtemp(prefix="am-pgbouncer-"))
        self.folder.chmod(0o755)
        users = self.folder / "users.txt"
        users.write_text(f'"{server.username}" ""\n')
        config = self.folder / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host={server.host} port={server.port or 5432}\n"
            "[pgbouncer]\n"
            f"listen_addr = 127.0.0.1\nlisten_port = {self.port}\n"
            f"auth_type = trust\nauth_file = {users}\n"
            f"pool_mode = {mode}\ndefault_pool_size = {pool_size}\n"
            f"query_wait_timeout = {query_wait_timeout}\n"
            "max_client_conn = 500\nunix_socket_dir =\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        for path in (users, config):
            path.chmod(0o644)
        switch = ["-u", "postgres"] if os.geteuid() == 0 else []
        self.log = self.folder / "pgbouncer.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [binary, *switch, str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_until_listening()

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = self.log.read_text()
                    raise AssertionError(f"pgbouncer did not start: {log}") from None
                time.sleep(0.02)

    def url(self, database: URL) -> URL:
        """``database`` (a URL of the test server) through this PgBouncer."""
        return database.set(host="127.0.0.1", port=self.port)

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)
