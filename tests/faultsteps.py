"""The steps of a run, counted, and a process that stops itself at one of them.

A *step* is anything a run does that changes or reads state outside the
process: each SQL statement (SQLAlchemy's ``before_cursor_execute``, on every
engine, env.py's included), each commit, each file replaced, deleted or
synced, each file lock taken, and each event the migrator announces. Left
out, so that every run of a case has the same steps: the lock's heartbeat
thread (it runs on a timer) and the scripts' heads cache and the
fingerprints beside it (written when the files' times say so; a cache,
replaced atomically, tested in tests/test_textgraph.py and
tests/test_ledger.py).

``Steps`` counts them as they come. Given ``at`` and a ``fault``, it SIGKILLs
or SIGSTOPs its own process just before step ``at``: the fault lands exactly
there, whatever the step is, and a new step in the code is a new fault in
tests/test_fault_matrix.py without a new test.

It also appends each *write* (a statement that changes something, a file
replaced or deleted) to a shared log, one line per write, tagged with who
wrote it: the matrix reads that log to tell whether two processes ever
wrote past the lock at once.

``python -m tests.faultsteps`` forks one such run per case the matrix sends
it (see ``serve``): each prints its status as JSON, and its steps
(``fault="count"``) on stderr as ``step N: label`` lines.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import sqlalchemy as sa

from automigrator import (
    AutoMigrator,
    Ddl,
    Fail,
    PurgeAndRetry,
    RestoreBackup,
    Timeouts,
)
from automigrator.events import Event
from automigrator.policies import FailurePolicy
from automigrator.scripts._headcache import FILE_NAME, PRINTS_FILE_NAME

POLICIES: dict[str, Callable[[], FailurePolicy]] = {
    "fail": Fail,
    "purge": lambda: PurgeAndRetry(keep=3),
    "restore": RestoreBackup,
}

_WRITE = re.compile(r"\s*(CREATE|ALTER|DROP|INSERT|UPDATE|DELETE|RENAME|TRUNCATE|COMMENT)\b", re.I)
_HEARTBEAT = "automigrator-lock-heartbeat"


class Steps:
    """Counts a run's steps; stops the process at step ``at`` (``fault``: kill or stop)."""

    def __init__(self, writes: Path, who: str, fault: str = "count", at: int = 0) -> None:
        self.writes, self.who, self.fault, self.at = writes, who, fault, at
        self.labels: list[str] = []
        self._mutex = threading.Lock()

    def step(self, label: str, *, write: bool = False) -> None:
        if threading.current_thread().name == _HEARTBEAT:
            return
        with self._mutex:
            self.labels.append(label)
            number = len(self.labels)
        if self.fault != "pass":  # a case's own process: its stderr is its file
            print(f"step {number}: {label}", file=sys.stderr, flush=True)
        if number == self.at and self.fault in ("kill", "stop"):
            print(f"fault {self.fault} at step {number}: {label}", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL if self.fault == "kill" else signal.SIGSTOP)
        if write:
            # One write() of one line on an O_APPEND file: lines of several
            # processes never interleave within a line.
            with open(self.writes, "a", encoding="utf-8") as log:
                log.write(f"{self.who}\t{label}\n")

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Every engine's statements and commits, and the file calls, are steps meanwhile."""

        def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
            text = " ".join(str(sql).split())
            self.step(f"sql {text[:90]}", write=bool(_WRITE.match(text)))

        def commit(conn: Any) -> None:
            self.step("commit")

        replace, unlink, fsync, flock = os.replace, os.unlink, os.fsync, fcntl.flock

        def replaced(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if Path(dst).name not in (FILE_NAME, PRINTS_FILE_NAME):
                self.step(f"file replace {Path(src).name} -> {Path(dst).name}", write=True)
            replace(src, dst, *args, **kwargs)

        def unlinked(path: Any, *args: Any, **kwargs: Any) -> None:
            if Path(path).exists():  # unlink(missing_ok=True) of nothing changes nothing
                self.step(f"file unlink {Path(path).name}", write=True)
            unlink(path, *args, **kwargs)

        def synced(fd: int) -> None:
            self.step("file fsync")
            fsync(fd)

        def locked(fd: Any, operation: int) -> None:
            if operation & (fcntl.LOCK_EX | fcntl.LOCK_SH):
                self.step("file lock")
            flock(fd, operation)

        sa.event.listen(sa.engine.Engine, "before_cursor_execute", statement)
        sa.event.listen(sa.engine.Engine, "commit", commit)
        os.replace, os.unlink, os.fsync, fcntl.flock = replaced, unlinked, synced, locked  # type: ignore[assignment]
        try:
            yield
        finally:
            os.replace, os.unlink, os.fsync, fcntl.flock = replace, unlink, fsync, flock
            sa.event.remove(sa.engine.Engine, "before_cursor_execute", statement)
            sa.event.remove(sa.engine.Engine, "commit", commit)

    def listen(self, event: Event) -> None:
        """A migrator listener: each event is a step."""
        self.step(f"event {event.name}")


def migrator(ini: str, url: str | sa.URL, policy: str, steps: Steps, lock: float) -> AutoMigrator:
    """The matrix's migrator: ``policy`` by name, a lock timeout of ``lock`` seconds.

    An impatient one (``lock`` under a second: the second process, while the
    first is paused) also gives up on a busy table after one short retry:
    the paused process may hold a table lock until it goes on (a budget of 2 s
    bounds the wait for it to end).
    """
    impatient = lock < 1
    made = AutoMigrator(
        ini,
        url=url,
        on_failure=POLICIES[policy](),
        timeouts=Timeouts(lock=lock, connect=20),
        ddl=Ddl(lock_timeout=0.5, retries=1, budget=2) if impatient else None,
    )
    made.subscribe(steps.listen)
    return made


def run_case(ini: str, url: str, policy: str, writes: str, fault: str, at: int) -> int:
    """One migration under a ``Steps``; its status as JSON on stdout; the exit code."""
    steps = Steps(Path(writes), f"pid {os.getpid()}", fault, at)
    with steps.installed():
        try:
            status = anyio.run(migrator(ini, url, policy, steps, lock=60).run)
        except Exception as exc:
            logging.getLogger("faultsteps").error("%s: %s", type(exc).__name__, exc)
            print(json.dumps({"state": "error", "error": type(exc).__name__}), flush=True)
            return 1
    print(json.dumps(status.to_dict()), flush=True)
    return 0


def serve() -> None:
    """Fork one case per line of stdin, everything imported once (about 1 s saved a case).

    A line is ``[ini, url, policy, writes, fault, at, out, err]``. The forked
    case's stdout and stderr go to ``out`` and ``err``; this process answers
    ``pid N`` as it starts, then ``stopped`` if it stops itself (SIGSTOP;
    SIGCONT is the test's to send), and ``exit CODE`` (a kill: ``exit -9``).
    Nothing here holds a connection or a thread, so a fork is safe.
    """
    for line in sys.stdin:
        ini, url, policy, writes, fault, at, out, err = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for fd, path in ((1, out), (2, err)):
                    opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                    os.dup2(opened, fd)
                    os.close(opened)
                logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True)
                code = run_case(ini, url, policy, writes, fault, int(at))
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(f"pid {pid}", flush=True)
        while True:
            _, status = os.waitpid(pid, os.WUNTRACED)
            if os.WIFSTOPPED(status):
                print("stopped", flush=True)
                continue
            print(f"exit {os.waitstatus_to_exitcode(status)}", flush=True)
            break


if __name__ == "__main__":
    import importlib

    for module in ("alembic.command", "psycopg", "pymysql"):  # once, before any fork
        importlib.import_module(module)

    serve()
