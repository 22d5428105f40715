"""Event-loop lag while a migration runs (P3).

A task asks to wake every 1 ms; the lag is how late it wakes. Measured alone
(the loop's own floor), then while automigrator applies a 1700-revision
history from scratch, about 5 s here (in a worker thread, competing for the
GIL). Goal: max lag <= 20 ms.

``nox -s bench -- lag [--databases sqlite,postgresql] [--revisions N]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from automigrator import AutoMigrator
from benchmarks.history import make_history
from benchmarks.replicas import available, fresh_database

TICK = 0.001


async def ticking(lags: list[float], stop: anyio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await anyio.sleep(TICK)
        lags.append(time.perf_counter() - started - TICK)


async def measure(
    migrator: AutoMigrator | None, seconds: float = 1.0
) -> tuple[list[float], float]:
    lags: list[float] = []
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticking, lags, stop)
        started = time.perf_counter()
        if migrator is None:
            await anyio.sleep(seconds)
        else:
            await migrator.run()
        elapsed = time.perf_counter() - started
        stop.set()
    return lags, elapsed


def report(label: str, lags: list[float], elapsed: float) -> None:
    ordered = sorted(lags)
    p99 = ordered[int(len(ordered) * 0.99) - 1] if ordered else 0.0
    print(
        f"  {label:<44} {elapsed:6.2f} s  ticks {len(lags):>6}  "
        f"median {statistics.median(lags) * 1000:5.2f} ms  p99 {p99 * 1000:5.2f} ms  "
        f"max {max(lags) * 1000:6.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--revisions", type=int, default=1700)  # about 5 s on SQLite here
    args = parser.parse_args()
    print(f"P3 event-loop lag, a {TICK * 1000:.0f} ms ticker")
    lags, elapsed = anyio.run(measure, None)
    report("nothing running (floor)", lags, elapsed)
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        with contextlib.redirect_stdout(io.StringIO()):
            ini = make_history(scratch / "project", args.revisions, merges=True)
        for kind in args.databases.split(","):
            why = available(kind, scratch)
            if why is not None:
                print(f"  {kind}: not measured: {why}")
                continue
            with fresh_database(kind, scratch) as url:
                migrator = AutoMigrator(ini, url=url)
                lags, elapsed = anyio.run(measure, migrator)
            label = f"migrating {args.revisions} revisions, {kind}"
            report(label, lags, elapsed)


if __name__ == "__main__":
    main()
