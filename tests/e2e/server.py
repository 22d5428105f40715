"""Start a real server process and wait for it by reading its log, not by sleeping."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

STARTUP_DEADLINE = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)
    ended: bool = False
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=10)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def wait_for(self, text: str, times: int = 1, deadline: float = STARTUP_DEADLINE) -> bool:
        """Read the log until text was seen ``times`` times (True) or the process ends (False)."""
        while self.count(text) < times:
            try:
                line = self._queue.get(timeout=deadline)
            except queue.Empty as exc:
                raise TimeoutError(f"no {text!r} ({times}x) in the log:\n{self.log}") from exc
            if line is None:
                self.ended = True
                return False
            self.lines.append(line)
        return True

    def wait_exit(self, deadline: float = STARTUP_DEADLINE) -> int:
        code = self.process.wait(timeout=deadline)
        while not self.ended:
            line = self._queue.get(timeout=deadline)
            if line is None:
                self.ended = True
            else:
                self.lines.append(line)
        return code


@contextmanager
def serve(
    args: Sequence[str], *, env: dict[str, str], cwd: Path | None = None
) -> Iterator[Server]:
    """Run ``python -m <args>`` on a free port, stderr and stdout merged into one log.

    ``{port}`` in an argument is replaced by the port; without one, ``--port N``
    is appended (uvicorn's flag).
    """
    port = free_port()
    argv = [arg.format(port=port) for arg in args]
    if argv == list(args):
        argv += ["--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", *argv],
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its workers too can be killed as one group
    )
    server = Server(process, port)

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            server._queue.put(line)
        server._queue.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # what a process manager sends
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # no worker outlives the test
        process.wait()
        server.wait_exit()  # collect the rest of the log for the assertions
        assert process.stdout is not None
        process.stdout.close()
