"""The ``automigrator`` command, end to end: real processes, real databases."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator.scripts._headcache import FILE_NAME
from tests.conftest import revisions, tables
from tests.helpers import ROOT, cli, run_cli
from tests.project import Rev, write_revision


def test_upgrade_check_and_status(ini: Path, db_url: URL) -> None:
    behind = cli(ini, db_url, "check")
    before = cli(ini, db_url, "status", "--json")
    upgrade = cli(ini, db_url, "upgrade")
    at_head = cli(ini, db_url, "check")
    after = cli(ini, db_url, "status", "--json")

    assert behind.returncode == 10
    assert "behind" in behind.stderr
    assert json.loads(before.stdout)["pending"] == ["r1", "r2", "r3"]
    assert upgrade.returncode == 0, upgrade.stderr
    assert "Applied 3/3 r3" in upgrade.stderr
    assert at_head.returncode == 0
    report = json.loads(after.stdout)
    assert report["revisions"] == ["r3"]
    assert report["pending"] == []
    assert report["plan"] == "at_head"
    assert revisions(db_url) == {"r3"}


def test_status_for_people(ini: Path, sqlite_url: URL) -> None:
    out = cli(ini, sqlite_url, "status")
    assert out.returncode == 0
    lines = dict(line.split(None, 1) for line in out.stdout.splitlines())
    assert lines["pending"] == "r1, r2, r3"
    assert lines["revisions"] == "-"


def test_distinct_exit_codes(ini: Path, sqlite_url: URL) -> None:
    assert cli(ini, sqlite_url, "upgrade").returncode == 0
    write_revision(ini.parent, Rev("r4", "r2", "a second head", "pass"))
    several_heads = cli(ini, sqlite_url, "check")
    (ini.parent / "migrations" / "versions" / "r4.py").unlink()
    (ini.parent / "migrations" / "versions" / "r3.py").unlink()
    for cache in ini.parent.rglob(FILE_NAME):
        cache.unlink()
    ahead = cli(ini, sqlite_url, "check")
    unreachable = cli(
        ini,
        "postgresql+psycopg://app:s3cr3t-pw@127.0.0.1:1/app",
        "--connect-timeout",
        "0",
        "check",
    )
    bad_config = cli(ini.parent / "missing.ini", sqlite_url, "check")

    assert several_heads.returncode == 12
    assert ahead.returncode == 11
    assert unreachable.returncode == 13
    assert "s3cr3t-pw" not in unreachable.stderr + unreachable.stdout
    assert bad_config.returncode == 2
    assert "not found" in bad_config.stderr


def test_wait_returns_when_another_process_has_migrated(ini: Path, db_url: URL) -> None:
    target = db_url.render_as_string(hide_password=False)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "automigrator", "-c", str(ini), "--url", target, "wait"],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert waiting.stderr is not None
    for line in waiting.stderr:  # it has looked and found the database behind
        if "Check mode: the database is at" in line:
            break
    assert waiting.poll() is None
    assert cli(ini, db_url, "upgrade").returncode == 0

    rest = waiting.communicate(timeout=60)[1]
    assert waiting.returncode == 0, rest
    assert "Check mode: the database reached r3" in rest
    assert revisions(db_url) == {"r3"}


def test_wait_times_out_behind(ini: Path, sqlite_url: URL) -> None:
    run = cli(ini, sqlite_url, "wait", "--timeout", "0.5")
    assert run.returncode == 10
    assert "wait --timeout" in run.stderr  # the setting to raise, as the CLI names it


def test_no_url_anywhere_names_the_cli_flag(ini: Path) -> None:
    text = ini.read_text()
    for shipped in ("", '""'):  # no value, or an empty one to fill in at deploy time
        ini.write_text(
            "\n".join(
                f"sqlalchemy.url = {shipped}" if line.startswith("sqlalchemy.url") else line
                for line in text.splitlines()
            )
        )
        run = run_cli("-c", str(ini), "check", env={**os.environ, "AUTOMIGRATOR_URL": ""})
        assert run.returncode == 2, run.stderr
        assert "No database URL" in run.stderr
        assert "--url or AUTOMIGRATOR_URL" in run.stderr


def test_progress_on_a_terminal(ini: Path, sqlite_url: URL) -> None:
    # A pseudo-terminal: the applied revisions rewrite one line.
    primary, secondary = pty.openpty()
    target = sqlite_url.render_as_string(hide_password=False)
    process = subprocess.Popen(
        [sys.executable, "-m", "automigrator", "-c", str(ini), "--url", target, "upgrade"],
        cwd=ROOT,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    os.close(primary)
    assert process.wait(timeout=60) == 0

    text = output.decode()
    assert "\r\x1b[2K" in text  # rewritten in place
    assert "Applied 3/3 r3" in text
    assert "Schema ready at r3" in text


def test_help_shows_examples_and_exit_codes() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    assert "examples:" in out.stdout
    assert "exit codes:" in out.stdout


def test_settings_from_the_environment(ini: Path, sqlite_url: URL) -> None:
    env = {
        **os.environ,
        "AUTOMIGRATOR_CONFIG": str(ini),
        "AUTOMIGRATOR_URL": sqlite_url.render_as_string(hide_password=False),
    }
    out = run_cli("upgrade", env=env)
    assert out.returncode == 0, out.stderr
    assert "users" in tables(sqlite_url)


def test_options_after_the_command_work_too(ini: Path, sqlite_url: URL) -> None:
    url = sqlite_url.render_as_string(hide_password=False)
    upgrade = run_cli("upgrade", "-c", str(ini), "--url", url)
    status = run_cli("status", "--json", "--url", url, "-c", str(ini))
    mixed = run_cli("-c", str(ini.parent / "missing.ini"), "check", "-c", str(ini), "--url", url)

    assert upgrade.returncode == 0, upgrade.stderr
    assert json.loads(status.stdout)["revisions"] == ["r3"]
    assert mixed.returncode == 0, mixed.stderr  # the one after the command wins
    assert "at the target: the database is at r3" in mixed.stderr
    assert revisions(sqlite_url) == {"r3"}


def test_lock_url_comes_from_the_flag_or_the_environment(ini: Path, sqlite_url: URL) -> None:
    # A lock URL of another kind of database is refused by name, which
    # proves the CLI handed it over; the password never shows.
    target = sqlite_url.render_as_string(hide_password=False)
    wrong = "mysql+pymysql://app:hunter2@db/app"
    by_flag = run_cli("-c", str(ini), "upgrade", "--url", target, "--lock-url", wrong)
    by_env = run_cli(
        "-c",
        str(ini),
        "upgrade",
        "--url",
        target,
        env={**os.environ, "AUTOMIGRATOR_LOCK_URL": wrong},
    )
    for run in (by_flag, by_env):
        assert run.returncode == 2, run.stderr
        assert "lock_url must reach the same database" in run.stderr
        assert "hunter2" not in run.stderr + run.stdout
    assert tables(sqlite_url) == set()


def test_upgrade_obeys_the_switch_the_app_obeys(ini: Path, sqlite_url: URL) -> None:
    url = sqlite_url.render_as_string(hide_password=False)

    def upgrade(value: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "RUN_MIGRATIONS": value}
        return run_cli("-c", str(ini), "--url", url, "upgrade", env=env)

    off = upgrade("0")
    assert off.returncode == 0, off.stderr
    assert "Migrations disabled (RUN_MIGRATIONS=0)" in off.stderr
    assert not Path(sqlite_url.database or "").exists()  # nothing touched the database
    for wrong in ("maybe", ""):
        refused = upgrade(wrong)
        assert refused.returncode == 2, refused.stderr
        assert f"RUN_MIGRATIONS={wrong!r} is not a switch value" in refused.stderr
    assert not Path(sqlite_url.database or "").exists()
    on = upgrade("yes")
    assert on.returncode == 0, on.stderr
    assert revisions(sqlite_url) == {"r3"}


def test_the_read_only_commands_refuse_a_switch_value_that_is_none(
    ini: Path, sqlite_url: URL
) -> None:
    # They never migrate, so "0" changes nothing for them; a typo is still one.
    env = {**os.environ, "RUN_MIGRATIONS": "of"}
    url = sqlite_url.render_as_string(hide_password=False)
    refused = run_cli("-c", str(ini), "--url", url, "status", env=env)
    read = run_cli(
        "-c", str(ini), "--url", url, "status", env={**os.environ, "RUN_MIGRATIONS": "0"}
    )

    assert refused.returncode == 2
    assert "RUN_MIGRATIONS='of' is not a switch value" in refused.stderr
    assert read.returncode == 0, read.stderr
    assert "r1, r2, r3" in read.stdout


def test_a_look_at_an_unreachable_database_is_short_and_says_its_error_once(
    ini: Path,
) -> None:
    # A person's `check` is answered within 10 s, not a Job's minute; each
    # try after the first says "the same error", not the whole message again.
    refused = run_cli("-c", str(ini), "--url", "postgresql+psycopg://app@127.0.0.1:1/app", "check")

    assert refused.returncode == 13
    assert "Timeouts(connect=10)" in refused.stderr
    tries = [line for line in refused.stderr.splitlines() if "not reachable (attempt" in line]
    assert len(tries) >= 3
    assert "Connection refused" in tries[0]
    assert all(line.split("): ", 1)[1].startswith("the same error.") for line in tries[1:])


def test_a_wait_that_timed_out_does_not_say_a_migration_failed(ini: Path, sqlite_url: URL) -> None:
    waited = cli(ini, sqlite_url, "wait", "--timeout", "0.5")

    assert waited.returncode == 10, waited.stderr
    assert "Could not reach the target (transient)" in waited.stderr
    assert "Migration failed" not in waited.stderr


def test_a_look_at_a_sqlite_file_not_made_yet_makes_none(ini: Path, tmp_path: Path) -> None:
    # A typo in the URL used to leave an empty file behind, which the next
    # start (with the typo fixed or not) took for a database.
    database = tmp_path / "typo.db"
    url = f"sqlite:///{database}"
    looks = {command: cli(ini, url, command) for command in ("check", "status", "plan", "lint")}

    assert looks["check"].returncode == 10
    assert "the database is at base" in looks["check"].stderr
    assert "r1, r2, r3" in looks["status"].stdout
    assert all(looks[c].returncode == 0 for c in ("status", "plan", "lint")), looks
    assert not database.exists()
    upgraded = cli(ini, url, "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert revisions(sa.make_url(url)) == {"r3"}


def test_a_look_through_sqlites_uri_forms_makes_no_file_either(ini: Path, tmp_path: Path) -> None:
    # "file:" is a URI only with uri=true (else the driver opens a file of
    # that very name); file://localhost/ names the local host's path.
    database = tmp_path / "typo.db"
    forms = [f"sqlite:///file://localhost{database}?uri=true", "sqlite:///file:typo.db"]
    looks = [run_cli("-c", str(ini), "--url", url, "check", cwd=tmp_path) for url in forms]

    assert [look.returncode for look in looks] == [10, 10], [look.stderr for look in looks]
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".db") == []
