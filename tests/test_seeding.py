"""Start-up seeding run by every replica, one at a time: no duplicate, no unique violation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import URL

from tests.conftest import rows
from tests.helpers import ROOT, cli
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


def test_the_command_line_seeds_under_the_lock_too(ini: Path, db_url: URL, tmp_path: Path) -> None:
    # A prestart script: `automigrator upgrade`, then the seed under the lock,
    # started by 8 pods at once.
    assert cli(ini, db_url, "upgrade").returncode == 0
    journal = tmp_path / "seeding.log"
    url = db_url.render_as_string(hide_password=False)
    seed = [sys.executable, "-c", f"from tests.seeder import seed; seed({url!r})"]
    env = {**os.environ, "AM_SEED_JOURNAL": str(journal)}
    command = [sys.executable, "-m", "automigrator", "-c", str(ini), "--url", url]
    procs = [
        subprocess.Popen([*command, "exclusively", "--", *seed], cwd=ROOT, env=env, text=True)
        for _ in range(REPLICAS)
    ]
    codes = [proc.wait(timeout=120) for proc in procs]
    lines = journal.read_text().split("\n")[:-1]
    pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]

    assert codes == [0] * REPLICAS
    assert rows(db_url, "SELECT count(*) FROM users WHERE name = 'root'") == [(1,)]
    assert len(pairs) == REPLICAS
    assert all(a.split()[0] == "in" and b == f"out {a.split()[1]}" for a, b in pairs), lines


def test_exclusively_passes_the_commands_exit_status_on(ini: Path, sqlite_url: URL) -> None:
    failing = cli(
        ini, sqlite_url, "exclusively", "--", sys.executable, "-c", "raise SystemExit(7)"
    )
    missing = cli(ini, sqlite_url, "exclusively", "--", "no-such-command-here")
    empty = cli(ini, sqlite_url, "exclusively")

    assert failing.returncode == 7
    assert missing.returncode == 2
    assert "no-such-command-here" in missing.stderr
    assert empty.returncode == 2
    assert "needs a command" in empty.stderr
