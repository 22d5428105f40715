"""A lock holder that vanishes: how long until the next replica takes over.

A replica migrates through a TCP proxy of the tests' own (``tests/faults.py``)
and, while one of its revisions waits, the proxy is frozen: nothing is
forwarded and nothing closed, as when a node is cut off without FIN or RST.
A second replica, started then on a direct connection, waits for the lock.
Printed per database: the seconds from the freeze until the second replica
runs the revision (median and spread of the rounds). The lock's session is
reaped by the server 30 s after the holder's last heartbeat (every 5 s), so
25-30 s plus the waiter's poll is expected.

``nox -s bench -- reaping [--rounds N]``. The servers come from
AUTOMIGRATOR_TEST_POSTGRES_URL / AUTOMIGRATOR_TEST_MARIADB_URL (defaults: the
local ones); each round gets a fresh database there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.faults import Proxy
from tests.helpers import R3
from tests.processes import start_replicas
from tests.project import EMAIL, USERS, make_project

from benchmarks.replicas import available, fresh_database

PORTS = {"postgresql": 5432, "mysql": 3306}


def one_round(kind: str, scratch: Path) -> float:
    folder = Path(tempfile.mkdtemp(dir=scratch))
    signals = folder / "signals"
    signals.mkdir()
    env = {"AM_SIGNALS": str(signals)}
    ini = make_project(folder / "proj", (USERS, EMAIL, R3))
    running = signals / "r3.running"
    with (
        fresh_database(kind, scratch) as url,
        Proxy(url.host or "127.0.0.1", url.port or PORTS[url.get_backend_name()]) as proxy,
    ):
        [holder] = start_replicas(ini, url.set(host="127.0.0.1", port=proxy.port), 1, env=env)
        try:
            while not running.exists():
                time.sleep(0.01)
            proxy.freeze()
            frozen = time.monotonic()
            [successor] = start_replicas(ini, url, 1, env=env)
            while len(running.read_text().split()) < 2:
                if successor.poll() is not None:
                    raise SystemExit(f"the successor failed: {successor.communicate()[1]}")
                time.sleep(0.01)
            took = time.monotonic() - frozen
            (signals / "r3.go").touch()
            successor.communicate(timeout=120)
        finally:
            (signals / "r3.go").touch()
            proxy.thaw()
            holder.communicate(timeout=120)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--databases", default="postgresql,mariadb")
    args = parser.parse_args()
    print(f"{args.rounds} round(s) per database, {os.cpu_count()} CPU(s)\n")
    print(f"{'database':<11}{'freeze -> successor migrates':>30}  {'min-max':>13}")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for kind in args.databases.split(","):
            why = available(kind, scratch)
            if why is not None:
                print(f"{kind:<11}not measured: {why}")
                continue
            took = [one_round(kind, scratch) for _ in range(args.rounds)]
            spread = f"{min(took):.1f}-{max(took):.1f}s"
            print(f"{kind:<11}{statistics.median(took):>29.1f}s  {spread:>13}")


if __name__ == "__main__":
    main()
