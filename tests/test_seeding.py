"""Start-up seeding run by every replica, one at a time: no duplicate, no unique violation."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE, CompletedProcess

import anyio
import pytest
from sqlalchemy.engine import URL

from automigrator import AutoMigrator, SchemaBehindError
from automigrator import cli as cli_module
from tests.conftest import rows
from tests.helpers import ROOT, cli, execute, run_cli
from tests.processes import start_replicas
from tests.project import Rev, write_revision

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
    killed = cli(
        ini,
        sqlite_url,
        "exclusively",
        "--",
        sys.executable,
        "-c",
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)",
    )
    assert killed.returncode == 137  # as a shell says it
    assert missing.returncode == 2
    assert "no-such-command-here" in missing.stderr
    assert empty.returncode == 2
    assert "needs a command" in empty.stderr


def test_upgrade_then_seeds_under_the_lock_on_8_pods_started_at_once(
    ini: Path, db_url: URL, tmp_path: Path
) -> None:
    # The template's prestart.sh in one line, from an empty database: the
    # migration and the seed both race, as 8 pods starting together do.
    journal = tmp_path / "seeding.log"
    url = db_url.render_as_string(hide_password=False)
    seed = shlex.join([sys.executable, "-c", f"from tests.seeder import seed; seed({url!r})"])
    env = {**os.environ, "AM_SEED_JOURNAL": str(journal)}
    command = [sys.executable, "-m", "automigrator", "-c", str(ini), "--url", url]
    procs = [
        subprocess.Popen(
            [*command, "upgrade", "--then", seed], cwd=ROOT, env=env, text=True, stderr=PIPE
        )
        for _ in range(REPLICAS)
    ]
    errors = [proc.communicate(timeout=120)[1] for proc in procs]
    lines = journal.read_text().split("\n")[:-1]
    pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]

    assert [proc.returncode for proc in procs] == [0] * REPLICAS, errors
    assert sum("Applied 3/3" in err for err in errors) == 1  # one migrated
    assert rows(db_url, "SELECT count(*) FROM users WHERE name = 'root'") == [(1,)]
    assert len(pairs) == REPLICAS
    assert all(a.split()[0] == "in" and b == f"out {a.split()[1]}" for a, b in pairs), lines


def test_upgrade_then_runs_only_on_a_ready_database_and_passes_its_status_on(
    ini: Path, sqlite_url: URL, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    touch = shlex.join([sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"])
    url = sqlite_url.render_as_string(hide_password=False)

    def upgrade(*args: str, env: dict[str, str] | None = None) -> CompletedProcess[str]:
        return run_cli("-c", str(ini), "--url", url, "upgrade", *args, env=env)

    unsplittable = upgrade("--then", "python -c 'unbalanced")
    disabled = upgrade("--then", touch, env={**os.environ, "RUN_MIGRATIONS": "0"})
    assert unsplittable.returncode == 2
    assert "cannot be split into words" in unsplittable.stderr
    assert disabled.returncode == 0, disabled.stderr
    assert "Not running --then" in disabled.stderr
    assert not marker.exists()
    assert not Path(sqlite_url.database or "").exists()  # neither migrated

    write_revision(ini.parent, Rev("r4", "r3", "fails", "raise RuntimeError('boom')"))
    failed = upgrade("--then", touch)
    assert failed.returncode == 1
    assert not marker.exists()

    (ini.parent / "migrations" / "versions" / "r4.py").unlink()
    ran = upgrade("--then", touch)
    status = upgrade("--then", shlex.join([sys.executable, "-c", "raise SystemExit(7)"]))
    assert ran.returncode == 0, ran.stderr
    assert marker.read_text() == "x"
    assert status.returncode == 7


def test_then_is_not_run_when_the_database_left_the_target_meanwhile(
    ini: Path, sqlite_url: URL, tmp_path: Path
) -> None:
    # The lock is let go between the upgrade and the command: another deploy
    # may start a migration there and stop half way. Under the command's
    # lock the database is read again; not at the target, the command is
    # not run. (The window is a moment: the state it would meet is made here.)
    marker = tmp_path / "ran"
    touch = [sys.executable, "-c", f"open({str(marker)!r}, 'a').write('x')"]
    migrator = AutoMigrator(ini, url=sqlite_url)
    anyio.run(migrator.run)
    execute(sqlite_url, "UPDATE alembic_version SET version_num = 'r2'")

    with pytest.raises(SchemaBehindError) as caught:
        anyio.run(lambda: cli_module._holding_the_lock(migrator, touch, at_target=True))

    assert "between the upgrade and the command" in caught.value.message
    assert not marker.exists()
