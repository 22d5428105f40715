"""Start-up seeding run by every replica, one at a time: no duplicate, no unique violation."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.engine import URL

from tests.conftest import rows
from tests.processes import start_replicas

REPLICAS = 8


def test_every_replica_seeds_under_the_lock_and_the_row_exists_once(
    ini: Path, db_url: URL, tmp_path: Path
) -> None:
    journal = tmp_path / "seeding.log"
    env = {"AM_SEED_JOURNAL": str(journal)}
    procs = start_replicas(ini, db_url, REPLICAS, env=env, script="tests.seeder")
    results = [proc.communicate(timeout=120) for proc in procs]
    # Every seeder left before the next came in: never two inside at once.
    lines = journal.read_text().split("\n")[:-1]
    pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]

    assert [p.returncode for p in procs] == [0] * REPLICAS, [err for _, err in results]
    assert {json.loads(out.splitlines()[-1])["state"] for out, _ in results} == {"ready"}
    assert rows(db_url, "SELECT count(*) FROM users WHERE name = 'root'") == [(1,)]
    assert len(pairs) == REPLICAS
    assert all(a.split()[0] == "in" and b == f"out {a.split()[1]}" for a, b in pairs), lines
