"""A rolling deploy under load on PostgreSQL: what the application's clients see.

Three replicas of a Starlette application (``benchmarks/rolling_app.py``),
each a real ``uvicorn --workers 1`` process on its own port with a pool of
five connections, serve a table of 200,000 rows (``GET /item/{id}``; one
request in ten a ``POST /item`` that inserts a row or updates one). The old
release knows r1 (the table); the new one adds r2 (a nullable column with a
server default), r3 (``CREATE INDEX CONCURRENTLY`` in an autocommit block) and
r4 (``CHECK (note IS NOT NULL) NOT VALID``, then ``VALIDATE CONSTRAINT`` in an
autocommit block). Each variant gets a fresh database:

- ``plain``: the lifespan runs ``command.upgrade(cfg, "head")`` in a thread;
  ready = the process answers.
- ``defaults``: ``AutoMigrator(ini, url=...)``, ``lifespan=migrator.lifespan``,
  ``/readyz`` its ``HealthApp``: the port opens once migrated.
- ``background``: the same with ``block_startup=False`` and a
  ``ReadinessGate``: the port opens at once, ``/readyz`` 503 until migrated.

The load generator is the balancer. An open-loop stream (``--rate``
requests per second, each timed from when it was due, so a generator that
falls behind shows as latency and is reported) goes round-robin to the
replicas whose ``/readyz`` answered 200 (polled every 100 ms). A replica
to be stopped is taken out of rotation first, as Kubernetes removes an
endpoint; its requests in flight are let finish (up to 5 s, as a preStop
pause would), then it gets SIGTERM. A connection error, a 5xx, a timeout
(5 s) or no ready replica counts as a failed request; nothing is retried
(a balancer retries a request it could not send, not one a replica took).

The deploy: a steady phase (``--steady`` s) first; then a blocker opens a
transaction that read ``items`` and keeps it open; replica 1 is replaced by
the new release (out of rotation, SIGTERM, the new release on the same port,
wait until ready); once it is ready, old replica 3 is restarted as the old
release (a crashed pod: the database is now ahead of its code) and timed to
ready; then replicas 2 and 3 are replaced. The blocker commits ``--blocker``
s after the migration's first ``ALTER`` is seen waiting for its lock
(``pg_stat_activity``, every 50 ms).

Printed per variant, never asserted: failed requests; p99 and max latency in
the steady phase and during the deploy; requests over 1 s; requests whose
database work took over 0.1 s (the app's ``x-db-ms``); when the migration
ended (``alembic_version`` at r4) and the last replica was ready, after the
blocker's end; how long the restarted old replica took to be ready; and the
seconds of the deploy whose p99 stood out, beside the timeline's events.

``nox -s bench -- rolling [--rate 200] [--replicas 3] [--blocker 10]
[--steady 10] [--only plain,defaults,background]``. The server comes from
AUTOMIGRATOR_TEST_POSTGRES_URL (default: the local one); the replicas import
automigrator from the same ``PYTHONPATH`` as this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from benchmarks.history import TEMPLATE
from benchmarks.replicas import fresh_database

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "defaults", "background")
ROWS = 200_000
TIMEOUT = 5.0  # seconds: a request slower than this failed
SLOW = 1.0  # seconds: a slow request
DB_SLOW = 0.1  # seconds: a request's database work that waited
READY_WAIT = 180.0  # seconds for a new replica to be ready (Ddl.budget is 120)
OLD_READY_WAIT = 20.0  # seconds for the restarted old replica

REVISIONS = {
    "r1": (
        "items",
        """
        op.create_table(
            "items",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("c0", sa.Integer),
            sa.Column("c1", sa.Integer),
            sa.Column("c2", sa.Integer),
        )
        """,
    ),
    "r2": (
        "a nullable column with a server default",
        'op.add_column("items", sa.Column("note", sa.String(20), server_default="old"))',
    ),
    "r3": (
        "an index, built concurrently",
        """
        with op.get_context().autocommit_block():
            op.create_index("ix_items_c1", "items", ["c1"], postgresql_concurrently=True)
        """,
    ),
    "r4": (
        "NOT NULL through a check constraint, validated apart",
        """
        op.create_check_constraint(
            "items_note_not_null", "items", "note IS NOT NULL", postgresql_not_valid=True
        )
        with op.get_context().autocommit_block():
            op.execute("ALTER TABLE items VALIDATE CONSTRAINT items_note_not_null")
        """,
    ),
}


def project(root: Path, revisions: list[str]) -> Path:
    """An alembic.ini (generic template) with ``revisions``, a chain from r1."""
    ini = root / "alembic.ini"
    with contextlib.redirect_stdout(io.StringIO()):  # Alembic's own progress lines
        command.init(Config(str(ini)), str(root / "migrations"), "generic")
    down = None
    for rev in revisions:
        message, body = REVISIONS[rev]
        body = textwrap.indent(textwrap.dedent(body).strip("\n"), "    ").lstrip()
        text = TEMPLATE.format(i=message, rev=rev, down=down, body=body)
        (root / "migrations" / "versions" / f"{rev}.py").write_text(text)
        down = rev
    return ini


def set_up(ini: Path, url: URL) -> None:
    """The old release's schema (r1, by plain Alembic) and 200,000 rows."""
    cfg = Config(str(ini), stdout=io.StringIO())
    cfg.set_main_option("sqlalchemy.url", url.render_as_string(False).replace("%", "%%"))
    with contextlib.redirect_stderr(io.StringIO()):  # env.py's logging: Alembic's lines
        command.upgrade(cfg, "r1")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO items (c0, c1, c2) "
            f"SELECT g, mod(g, 1000), mod(g, 97) FROM generate_series(1, {ROWS}) g"
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE items")
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Sample:
    """One request."""

    due: float
    """When it was due (``time.time()``); its latency counts from here."""
    lag: float
    """How late the generator sent it, seconds."""
    latency: float
    ok: bool
    replica: int | None
    why: str = ""
    """Why it failed: ``timeout``, ``connection``, ``5xx``, ``no replica``."""
    db: float | None = None
    """Its database work, seconds (the app's ``x-db-ms``)."""


@dataclass
class Timeline:
    """What happened when (``time.time()``), from the rollout and the database watcher."""

    events: list[tuple[float, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, text: str, at: float | None = None) -> float:
        at = time.time() if at is None else at
        with self.lock:
            self.events.append((at, text))
        return at


class Replica:
    """One uvicorn process on its port; restarted as the old or the new release."""

    def __init__(self, index: int, port: int, env: dict[str, str], logs: Path) -> None:
        self.index, self.port, self.env, self.logs = index, port, env, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.release = ""
        self.ready = False  # the last /readyz said 200
        self.in_rotation = False  # the balancer may send it requests
        self.in_flight = 0
        self.http = Connections(port)

    def start(self, release: str, ini: Path) -> None:
        env = {**self.env, "ROLLING_INI": str(ini), "ROLLING_NEW": "1" if release == "new" else ""}
        argv = [
            *(sys.executable, "-m", "uvicorn", "benchmarks.rolling_app:app"),
            *("--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"),
            *("--no-access-log", "--log-level", "warning"),
        ]
        log = (self.logs / f"replica{self.index}.log").open("ab")
        log.write(f"--- {time.strftime('%H:%M:%S')} start {release}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.release, self.ready, self.in_rotation = release, False, True

    def why(self) -> str:
        """The last line of its log that names an error."""
        lines = (self.logs / f"replica{self.index}.log").read_text(errors="replace").splitlines()
        found = [line for line in lines if "Error" in line or "CRITICAL" in line]
        return found[-1][:300] if found else "no error in its log"

    async def stop(self) -> int | None:
        """SIGTERM, and wait for the exit (SIGKILL after 30 s); the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        for _ in range(600):
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            self.proc.kill()
        self.http.drop()
        return self.proc.wait()


class Connections:
    """HTTP/1.1 keep-alive connections to one replica, on asyncio streams.

    httpx's pool walks every queued request against every connection each
    time one moves: with a thousand requests waiting for a stalled database
    the generator itself stalled for seconds (seen with plain Alembic). This
    costs the same per request whatever is in flight. An idle connection is
    reused for up to 4 s, under uvicorn's keep-alive of 5 s, as a balancer's
    idle timeout is set below its upstream's: a request is never sent on a
    connection the server is closing.
    """

    IDLE = 4.0

    def __init__(self, port: int) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []

    def drop(self) -> None:
        """Forget the idle connections (the process behind them is gone)."""
        for _, writer, _ in self.idle:
            writer.close()
        self.idle.clear()

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self.idle:
            reader, writer, since = self.idle.pop()
            if time.monotonic() - since < self.IDLE and not reader.at_eof():
                return reader, writer
            writer.close()
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def fetch(self, method: str, path: str, body: bytes = b"") -> tuple[int, str | None]:
        """The status and the ``x-db-ms`` header; raises OSError or IncompleteReadError."""
        reader, writer = await self.connect()
        try:
            head = f"{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n"
            if body:
                head += f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            line = await reader.readuntil(b"\r\n")
            status = int(line.split()[1])
            length, db, keep = 0, None, True
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                name, _, value = line.decode("latin-1").partition(":")
                name, value = name.strip().lower(), value.strip()
                if name == "content-length":
                    length = int(value)
                elif name == "x-db-ms":
                    db = value
                elif name == "connection" and value.lower() == "close":
                    keep = False
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if keep:
            self.idle.append((reader, writer, time.monotonic()))
        else:
            writer.close()
        return status, db


class Balancer:
    """Round-robin over the ready replicas; the open-loop load; the readiness poll."""

    def __init__(self, replicas: list[Replica], rate: float, seed: int) -> None:
        self.replicas, self.rate = replicas, rate
        self.samples: list[Sample] = []
        self.turn = 0
        self.random = random.Random(seed)
        self.stopping = False
        self.probe = httpx.AsyncClient(timeout=1.0)

    def pick(self) -> Replica | None:
        ready = [r for r in self.replicas if r.ready and r.in_rotation]
        if not ready:
            return None
        self.turn += 1
        return ready[self.turn % len(ready)]

    async def poll(self) -> None:
        """Every 100 ms, each replica's /readyz: 200 puts it in rotation."""

        async def one(replica: Replica) -> None:
            try:
                answer = await self.probe.get(f"http://127.0.0.1:{replica.port}/readyz")
                replica.ready = answer.status_code == 200
            except httpx.HTTPError:
                replica.ready = False

        while not self.stopping:
            await asyncio.gather(*(one(r) for r in self.replicas))
            await asyncio.sleep(0.1)

    async def request(self, due: float) -> None:
        lag = time.time() - due
        replica = self.pick()
        if replica is None:
            self.samples.append(Sample(due, lag, time.time() - due, False, None, "no replica"))
            return
        roll = self.random.random()
        if roll < 0.9:
            send = replica.http.fetch("GET", f"/item/{self.random.randint(1, ROWS)}")
        elif roll < 0.95:
            body = b'{"v": %d}' % self.random.randint(1, 9)
            send = replica.http.fetch("POST", "/item", body)
        else:
            body = b'{"id": %d}' % self.random.randint(1, ROWS)
            send = replica.http.fetch("POST", "/item", body)
        replica.in_flight += 1
        try:
            status, ms = await asyncio.wait_for(send, TIMEOUT)
        except asyncio.TimeoutError:
            sample = Sample(due, lag, time.time() - due, False, replica.index, "timeout")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            why = f"connection ({type(exc).__name__})"
            sample = Sample(due, lag, time.time() - due, False, replica.index, why)
        else:
            sample = Sample(
                due,
                lag,
                time.time() - due,
                status < 500,
                replica.index,
                "" if status < 500 else f"{status}",
                float(ms) / 1000 if ms else None,
            )
        finally:
            replica.in_flight -= 1
        self.samples.append(sample)

    async def load(self) -> None:
        """Requests at ``rate`` per second, each sent when due, whatever came back."""
        tasks: set[asyncio.Task[None]] = set()
        began, i = time.time(), 0
        while not self.stopping:
            due = began + i / self.rate
            wait = due - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.ensure_future(self.request(due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)

    async def close(self) -> None:
        await self.probe.aclose()
        for replica in self.replicas:
            replica.http.drop()


class Watcher(threading.Thread):
    """The blocker, and what the database says every 50 ms.

    Sees the migration's first ``ALTER TABLE`` waiting for a lock, ends the
    blocker ``hold`` seconds later, and notes when ``alembic_version``
    changes and the most queries of the application waiting for a lock at once.
    """

    def __init__(self, url: URL, hold: float, timeline: Timeline) -> None:
        super().__init__(daemon=True)
        self.hold, self.timeline = hold, timeline
        self.engine = sa.create_engine(
            url, poolclass=sa.NullPool, connect_args={"application_name": "rolling-blocker"}
        )
        self.blocker: sa.Connection | None = None
        self.stop = threading.Event()
        self.alter_waits: float | None = None
        self.blocker_end: float | None = None
        self.migration_end: float | None = None
        self.origin = time.time()  # the deploy's start, set when started
        self.app_waiting: dict[int, int] = {}  # second of the deploy -> most app queries waiting

    def open_blocker(self) -> None:
        self.blocker = self.engine.connect()
        self.blocker.execute(sa.text("SELECT count(*) FROM items WHERE id < 10")).scalar()
        self.timeline.add("blocker: a transaction that read items stays open")

    def end_blocker(self, why: str) -> None:
        if self.blocker is not None and self.blocker_end is None:
            self.blocker.commit()
            self.blocker_end = self.timeline.add(f"blocker: COMMIT ({why})")

    def run(self) -> None:
        waiting = sa.text(
            "SELECT query ~* '^\\s*ALTER\\s+TABLE' AS alter, count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND pid <> pg_backend_pid() GROUP BY 1"
        )
        version = sa.text("SELECT string_agg(version_num, ',') FROM alembic_version")
        last = None
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            while not self.stop.wait(0.05):
                now = time.time()
                counts = {row[0]: row[1] for row in conn.execute(waiting)}
                if counts.get(True) and self.alter_waits is None and self.blocker is not None:
                    self.alter_waits = self.timeline.add("migration: an ALTER waits for a lock")
                second, app = math.floor(now - self.origin), counts.get(False, 0)
                self.app_waiting[second] = max(self.app_waiting.get(second, 0), app)
                if self.alter_waits is not None and now >= self.alter_waits + self.hold:
                    self.end_blocker(f"{self.hold:g} s after the ALTER waited")
                current = conn.execute(version).scalar()
                if current != last:
                    if last is not None:
                        self.timeline.add(f"database: alembic_version {last} -> {current}")
                    last = current
                    if current == "r4" and self.migration_end is None:
                        self.migration_end = now
                        if self.blocker_end is None:  # no ALTER was ever seen waiting
                            self.end_blocker("the migration ended without waiting")
        self.end_blocker("the run's end")
        if self.blocker is not None:
            self.blocker.close()
        self.engine.dispose()


@dataclass
class Result:
    variant: str
    samples: list[Sample]
    steady: tuple[float, float]
    deploy: tuple[float, float]
    timeline: Timeline
    watcher: Watcher
    first_ready: float | None = None
    """When the first new replica (the one that migrated) was ready."""
    last_ready: float | None = None
    old_restart: str = "-"
    cpu: float = 0.0
    """CPU seconds of this process (the generator, the balancer, the watcher)."""
    wall: float = 1.0
    load: str = ""
    notes: list[str] = field(default_factory=list)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def wait_ready(replica: Replica, limit: float) -> tuple[float | None, int | None]:
    """Seconds until its /readyz said 200, or (None, exit code) / (None, None) at the limit."""
    began = time.time()
    assert replica.proc is not None
    while time.time() - began < limit:
        if replica.ready:
            return time.time() - began, None
        if replica.proc.poll() is not None:
            return None, replica.proc.returncode
        await asyncio.sleep(0.02)
    return None, None


async def take_out(replica: Replica, timeline: Timeline) -> int | None:
    """Out of rotation; its requests in flight finish (5 s at most); SIGTERM; the exit code."""
    replica.in_rotation = False
    timeline.add(f"replica {replica.index} ({replica.release}): out of rotation")
    for _ in range(100):
        if replica.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    code = await replica.stop()
    timeline.add(f"replica {replica.index}: stopped (exit {code})")
    return code


async def rollout(
    variant: str, args: argparse.Namespace, old: Path, new: Path, url: URL, logs: Path
) -> Result:
    env = {
        **os.environ,
        "ROLLING_VARIANT": variant,
        "ROLLING_URL": url.render_as_string(hide_password=False),
    }
    replicas = [Replica(i + 1, free_port(), env, logs) for i in range(args.replicas)]
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)  # clean up
    balancer = Balancer(replicas, args.rate, seed=1)
    timeline = Timeline()
    watcher = Watcher(url, args.blocker, timeline)
    poller = asyncio.ensure_future(balancer.poll())
    load: asyncio.Future[None] | None = None
    try:
        for replica in replicas:
            replica.start("old", old)
        for replica in replicas:
            took, code = await wait_ready(replica, 60)
            if took is None:
                raise SystemExit(f"old replica {replica.index}: not ready (exit {code})")
        load = asyncio.ensure_future(balancer.load())
        began = timeline.add("load: starts")
        cpu = time.process_time()
        await asyncio.sleep(args.steady)
        deploy = timeline.add("deploy: starts")
        watcher.origin = deploy
        watcher.open_blocker()
        watcher.start()
        result = Result(variant, [], (began + 1.0, deploy), (deploy, deploy), timeline, watcher)
        for n, replica in enumerate(replicas):
            await take_out(replica, timeline)
            replica.start("new", new)
            timeline.add(f"replica {replica.index}: new release started")
            took, code = await wait_ready(replica, READY_WAIT)
            if took is None:
                timeline.add(f"replica {replica.index}: never ready (exit {code})")
                result.notes.append(f"replica {replica.index} (new) never ready (exit {code})")
                break
            ready = timeline.add(f"replica {replica.index}: ready ({took:.2f} s after its start)")
            if n == 0:
                result.first_ready = ready
            if n == 0 and len(replicas) > 1:  # an old replica restarts: a crashed pod
                other = replicas[-1]
                await take_out(other, timeline)
                other.start("old", old)
                timeline.add(f"replica {other.index}: old release started again")
                took, code = await wait_ready(other, OLD_READY_WAIT)
                if took is not None:
                    result.old_restart = f"{took:.2f}"
                    timeline.add(f"replica {other.index}: old release ready ({took:.2f} s)")
                else:
                    why = f"exit {code}" if code is not None else f"not in {OLD_READY_WAIT:g} s"
                    result.old_restart = f"never ({why})"
                    timeline.add(f"replica {other.index}: old release never ready ({why})")
                    result.notes.append(f"old replica {other.index} restarted: {other.why()}")
        else:
            result.last_ready = time.time()
        end = timeline.add("deploy: ends")
        result.deploy = (deploy, end)
        if watcher.migration_end is None:
            await asyncio.sleep(2)
        await asyncio.sleep(2)  # a tail after the deploy
        balancer.stopping = True
        await load
        result.samples = balancer.samples
        result.cpu, result.wall = time.process_time() - cpu, time.time() - began
        result.load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        return result
    finally:
        balancer.stopping = True
        if load is not None and not load.done():
            await load
        await poller
        watcher.stop.set()
        if watcher.is_alive():
            watcher.join()
        else:
            watcher.end_blocker("never watched")
        for replica in replicas:
            await replica.stop()
        await balancer.close()


def ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.0f}"


def report(result: Result, rate: float, *, verbose: bool) -> list[str]:
    """The variant's row of the table; prints its notes and its notable seconds."""
    samples = result.samples
    steady = [s for s in samples if result.steady[0] <= s.due < result.steady[1]]
    during = [s for s in samples if result.deploy[0] <= s.due < result.deploy[1]]
    ok_steady = [s.latency for s in steady if s.ok]
    ok_during = [s.latency for s in during if s.ok]
    failed = [s for s in samples if not s.ok]
    slow = [s for s in samples if s.ok and s.latency > SLOW]
    db_slow = [s for s in samples if s.db is not None and s.db > DB_SLOW]
    span = max(s.due for s in samples) - min(s.due for s in samples)
    lags = [s.lag for s in samples]
    watcher = result.watcher
    cpu = result.cpu / result.wall * 100
    print(
        f"\n{result.variant}: {len(samples)} requests in {span:.1f} s "
        f"({len(samples) / span:.0f}/s); this process (generator and balancer) used "
        f"{cpu:.0f} % of a CPU; load average at the end {result.load}"
    )
    if len(samples) / span < 0.95 * rate or percentile(lags, 0.99) > 0.05:
        print(
            f"  the generator fell behind: {len(samples) / span:.0f}/s of {rate:g}/s, "
            f"requests sent late by {ms(percentile(lags, 0.99))} ms (p99), "
            f"{ms(max(lags))} ms at most (counted in their latency)"
        )
    for note in result.notes:
        print(f"  {note}")
    reasons: dict[str, int] = {}
    for s in failed:
        reasons[s.why] = reasons.get(s.why, 0) + 1
    if reasons:
        print("  failed: " + ", ".join(f"{n} {why}" for why, n in sorted(reasons.items())))
    if slow:
        in_db = sum(s.db is not None and s.db > 0.8 * s.latency for s in slow)
        by = {r: sum(s.replica == r for s in slow) for r in sorted({s.replica or 0 for s in slow})}
        print(
            f"  over {SLOW:g} s: {len(slow)}, of which {in_db} spent most of it in the database; "
            f"by replica {by}"
        )
    base = percentile(ok_steady, 0.99)
    origin = result.deploy[0]
    events = sorted(result.timeline.events)
    print(
        "  timeline (s after the deploy's start; a second shown when notable; "
        f"steady p99 {ms(base)} ms):"
    )
    by_second: dict[int, list[Sample]] = {}
    for s in samples:
        if s.due >= origin:
            by_second.setdefault(math.floor(s.due - origin), []).append(s)
    shown = 0
    for second, these in sorted(by_second.items()):
        for at, text in events:
            if second <= at - origin < second + 1:
                print(f"    {at - origin:7.2f}  {text}")
        lat = [s.latency for s in these if s.ok]
        bad = sum(not s.ok for s in these)
        waiting = watcher.app_waiting.get(second, 0)
        notable = bad or (lat and percentile(lat, 0.99) > base + 0.1) or waiting
        if verbose or notable:
            shown += 1
            dbs = [s.db for s in these if s.db is not None]
            p99, lag = ms(percentile(lat, 0.99)), ms(max(s.lag for s in these))
            print(
                f"    {second:4d} s   {len(these):3d} req, p99 {p99:>5} ms, "
                f"max {ms(max(lat, default=0)):>5} ms, {bad:3d} failed, db max "
                f"{ms(max(dbs, default=0)):>5} ms, sent late by {lag:>4} ms at most, "
                f"app queries waiting for a lock: {waiting}"
            )
    if not shown:
        print("    (no second stood out)")

    def after_blocker(at: float | None) -> str:
        if at is None:
            return "never"
        if watcher.blocker_end is None:
            return "-"
        return f"{at - watcher.blocker_end:+.2f}"

    return [
        result.variant,
        str(len(failed)),
        f"{ms(base)} / {ms(max(ok_steady, default=0))}",
        f"{ms(percentile(ok_during, 0.99))} / {ms(max(ok_during, default=0))}",
        str(len(slow)),
        str(len(db_slow)),
        after_blocker(watcher.migration_end),
        after_blocker(result.first_ready),
        after_blocker(result.last_ready),
        result.old_restart,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--blocker", type=float, default=10.0, help="s after the ALTER waits")
    parser.add_argument("--steady", type=float, default=10.0, help="seconds of steady load first")
    parser.add_argument("--only", default=",".join(VARIANTS), help="plain,defaults,background")
    parser.add_argument("--verbose", action="store_true", help="every second of the deploy")
    args = parser.parse_args()
    variants = args.only.split(",")
    for variant in variants:
        if variant not in VARIANTS:
            parser.error(f"--only: {variant!r} is not one of {', '.join(VARIANTS)}")

    where = subprocess.run(
        [sys.executable, "-c", "import automigrator; print(automigrator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"rolling deploy: {args.replicas} replicas, {args.rate:g} req/s, a {args.blocker:g} s "
        f"blocker, {os.cpu_count()} CPU(s), load average {load}\n"
        f"the replicas import automigrator from {where}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="rolling_") as folder:
        scratch = Path(folder)
        for variant in variants:
            root = scratch / variant
            old = project(root / "old", ["r1"])
            new = project(root / "new", ["r1", "r2", "r3", "r4"])
            logs = root / "logs"
            logs.mkdir()
            with fresh_database("postgresql", Path(folder)) as url:
                set_up(old, url)
                result = asyncio.run(rollout(variant, args, old, new, url, logs))
            rows.append(report(result, args.rate, verbose=args.verbose))
            if os.environ.get("ROLLING_KEEP_LOGS"):
                keep = Path(os.environ["ROLLING_KEEP_LOGS"]) / variant
                keep.mkdir(parents=True, exist_ok=True)
                for log in logs.iterdir():
                    (keep / log.name).write_bytes(log.read_bytes())
    header = [
        "variant",
        "failed",
        "steady p99/max ms",
        "deploy p99/max ms",
        f">{SLOW:g} s",
        f"db>{DB_SLOW:g} s",
        "migrated-blocker s",
        "first ready-blocker s",
        "last ready-blocker s",
        "old restart s",
    ]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print()
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))
    print(
        f"\nfailed: connection errors, 5xx, timeouts ({TIMEOUT:g} s) or no ready replica, "
        "over the whole run; p99/max: latency from when each request was due, steady = "
        "before the deploy, deploy = from its start to the last replica ready; "
        f">{SLOW:g} s: requests slower; db>{DB_SLOW:g} s: requests whose database work "
        "(the app's x-db-ms) took longer; migrated-blocker: alembic_version reached r4, "
        "after the blocker's COMMIT; first ready-blocker: the new replica that migrated "
        "ready, after it; last ready-blocker: the last new replica ready, after it (the "
        "swaps after the first are process starts, one at a time); old restart: an old "
        "replica restarted once the first new one was ready, from its start to /readyz 200."
    )


if __name__ == "__main__":
    main()
