"""The ledger: every attempt recorded; edited applied revisions refused; partial runs flagged.

On SQLite, PostgreSQL and MariaDB: what a user sees when a revision that ran
is edited afterwards (refused before any DDL, the file and both checksums
named), when a file is only reformatted (nothing), when a revision stops
half way (refused by every later start until ``resolve``), when a database
migrated before the ledger starts (adopted), and the ``history``,
``verify`` and ``resolve`` commands with their exit codes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    ConfigurationError,
    EditedRevisionError,
    History,
    MigrationError,
    MigrationState,
    PartialMigrationError,
    PurgeAndRetry,
)
from tests.conftest import revisions, rows, tables
from tests.corpus import corpus_project
from tests.helpers import backups, cli, deployed, execute
from tests.project import CHAIN, EMAIL, SEED, USERS, Rev, make_project, write_revision

R4 = Rev("r4", "r3", "add age", 'op.add_column("users", sa.Column("age", sa.Integer))')
TWO_STATEMENTS_SECOND_FAILS = Rev(
    "r3",
    "r2",
    "adds a column, then a duplicate one",
    """
    op.add_column("users", sa.Column("age", sa.Integer))
    op.add_column("users", sa.Column("name", sa.String(10)))
    """,
)


# A deploy's revision that fails by its own fault, every time it runs.
BROKEN_R3 = Rev("r3", "r2", "broken", 'raise RuntimeError("r3 is broken")')


def start(ini: Path, url: URL, **kwargs: object) -> tuple[AutoMigrator, BaseException | None]:
    migrator = AutoMigrator(ini, url=url, **kwargs)  # type: ignore[arg-type]
    try:
        anyio.run(migrator.run)
    except Exception as exc:
        return migrator, exc
    return migrator, None


def ledger(url: URL) -> list[tuple[object, ...]]:
    return rows(url, "SELECT revision, outcome FROM automigrator_history ORDER BY id")


def edit(ini: Path, rev: Rev, body: str) -> Path:
    path = ini.parent / "migrations" / "versions" / f"{rev.id}.py"
    path.unlink()
    write_revision(ini.parent, Rev(rev.id, rev.down, rev.message, body))
    return path


def plain_alembic_upgrade(ini: Path, url: URL) -> None:
    """``alembic upgrade head``, in a process of its own (env.py's fileConfig would
    switch this process's loggers off): no ledger."""
    rendered = url.render_as_string(hide_password=False)
    ini.write_text(ini.read_text().replace("driver://user:pass@localhost/dbname", rendered))
    subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
        check=True,
        capture_output=True,
    )


def left_partial(tmp_path: Path, fresh_db: Callable[[str], URL]) -> tuple[URL, Path]:
    """A MariaDB database whose r3 a start left partial (its first statement
    stayed, its second failed), and its project."""
    url = fresh_db("mariadb")
    ini = deployed(tmp_path, url, broken=TWO_STATEMENTS_SECOND_FAILS)
    start(ini, url)
    return url, ini


def reformat(versions: Path, *, line_length: int) -> list[str]:
    """ruff format over a version folder, with settings not its own; the files it changed."""
    before = {p.name: p.read_bytes() for p in versions.glob("*.py")}
    subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--isolated", "--line-length", str(line_length),
         "--config", "format.quote-style='single'", str(versions)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return [name for name, data in before.items() if (versions / name).read_bytes() != data]


def test_every_applied_revision_is_recorded_with_who_and_how_long(
    tmp_path: Path, db_url: URL
) -> None:
    ini = make_project(tmp_path / "p", CHAIN)

    migrator, failed = start(ini, db_url, history=History(app_version="1.4.2"))

    assert failed is None, repr(failed)
    entries = migrator.ledger.entries() if migrator.ledger else []
    assert [(e.revision, e.outcome) for e in entries] == [
        ("r1", "applied"),
        ("r2", "applied"),
        ("r3", "applied"),
    ]
    first = entries[0]
    assert first.checksum
    assert first.checksum.startswith("am1:")
    assert first.script == "r1.py"
    assert first.parents == ""
    assert entries[1].parents == "r1"
    assert first.duration is not None
    assert first.duration >= 0
    assert first.pid is not None
    assert first.host
    assert first.app_version == "1.4.2"
    assert first.lock_wait is not None


@pytest.mark.parametrize("at_head", [True, False], ids=["at head", "behind"])
def test_an_edited_applied_revision_is_refused_before_any_ddl(
    tmp_path: Path, db_url: URL, at_head: bool
) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, db_url)
    before = tables(db_url)
    edited = edit(ini, EMAIL, 'op.add_column("users", sa.Column("email", sa.String(200)))')
    if not at_head:
        write_revision(ini.parent, R4)

    migrator, refused = start(ini, db_url)

    assert isinstance(refused, EditedRevisionError), repr(refused)
    assert refused.revisions == ("r2",)
    message = refused.message
    assert str(edited) in message
    assert "revision r2" in message
    assert message.count("am1:") == 2  # both checksums, now and then
    assert "automigrator resolve r2 --accept-checksum" in message
    assert migrator.status.state is MigrationState.FAILED
    assert revisions(db_url) == {"r3"}  # r4 never ran
    assert tables(db_url) == before


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_reformatted_history_is_not_an_edit(
    tmp_path: Path, fresh_db: Callable[[str], URL], kind: str
) -> None:
    # Optuna's real history, migrated, then ruff-formatted with other
    # settings than its own (line length, quotes): same meaning, other bytes.
    # (Not MariaDB: Optuna's own v2.4.0.a fails there, "Key column 'step'
    # doesn't exist"; the example app's history covers MariaDB below.)
    db_url = fresh_db(kind)
    ini = corpus_project("optuna", tmp_path / "optuna")
    _first, failed = start(ini, db_url)
    assert failed is None, repr(failed)
    changed = reformat(ini.parent / "migrations" / "versions", line_length=60)

    again, refused = start(ini, db_url)
    verified = cli(ini, db_url, "verify")

    assert len(changed) >= 5, changed  # the formatter did change the files
    assert refused is None, repr(refused)
    assert again.status.state is MigrationState.READY
    assert verified.returncode == 0, verified.stderr


def test_a_reformatted_example_history_is_not_an_edit_on_mariadb(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    url = fresh_db("mariadb").set(drivername="mysql+asyncmy")  # the example's env.py is async
    example = Path(__file__).resolve().parents[1] / "examples" / "fastapi_app"
    shutil.copytree(example, tmp_path / "app", ignore=shutil.ignore_patterns("__pycache__"))
    ini = tmp_path / "app" / "alembic.ini"
    _, failed = start(ini, url)
    changed = reformat(tmp_path / "app" / "migrations" / "versions", line_length=40)

    _, refused = start(ini, url)

    assert failed is None, repr(failed)
    assert changed
    assert refused is None, repr(refused)


def test_a_revision_id_that_names_another_file_is_refused_by_name(
    tmp_path: Path, sqlite_url: URL
) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, sqlite_url)
    versions = ini.parent / "migrations" / "versions"
    (versions / "r3.py").unlink()
    write_revision(ini.parent, Rev("r3", "r2", "something else", "op.drop_column('users', 'x')"))
    (versions / "r3.py").rename(versions / "r3_other_work.py")

    _, refused = start(ini, sqlite_url)

    assert isinstance(refused, EditedRevisionError), repr(refused)
    assert "revision r3 now names another file" in refused.message
    assert "r3_other_work.py" in refused.message
    assert "r3.py when it ran" in refused.message


def test_on_edit_warn_serves_and_says_so_and_off_is_silent(
    tmp_path: Path, sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, sqlite_url)
    edit(ini, EMAIL, 'op.add_column("users", sa.Column("email", sa.String(5)))')

    warned, failed = start(ini, sqlite_url, history=History(on_edit="warn"))
    said = [r.getMessage() for r in caplog.records if "on_edit='warn'" in r.getMessage()]
    caplog.clear()
    quiet, failed_too = start(ini, sqlite_url, history=History(on_edit="off"))

    assert failed is None
    assert failed_too is None
    assert warned.status.state is quiet.status.state is MigrationState.READY
    assert said
    assert "revision r2" in said[0]
    assert not [r for r in caplog.records if "edited" in r.getMessage()]


def test_an_accepted_edit_is_audited_and_then_starts(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, db_url)
    edit(ini, EMAIL, 'op.add_column("users", sa.Column("email", sa.String(200)))')
    refused = cli(ini, db_url, "verify")

    without_reason = cli(ini, db_url, "resolve", "r2", "--accept-checksum")
    accepted = cli(
        ini, db_url, "resolve", "r2", "--accept-checksum", "--reason", "widened by hand"
    )
    again = cli(ini, db_url, "resolve", "r2", "--accept-checksum", "--reason", "twice")
    _, failed = start(ini, db_url)
    history = json.loads(cli(ini, db_url, "history", "--json").stdout)[""]

    assert refused.returncode == 17, refused.stderr
    assert "revision r2" in refused.stderr
    assert refused.stderr.count("am1:") == 2
    assert without_reason.returncode == 2
    assert "--reason" in without_reason.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert again.returncode == 2
    assert "no edit to accept" in again.stderr
    assert failed is None, repr(failed)
    last = history[-1]
    assert (last["revision"], last["outcome"], last["detail"]) == (
        "r2",
        "accepted",
        "widened by hand",
    )
    assert last["user"]
    assert last["host"]
    assert cli(ini, db_url, "verify").returncode == 0


def test_a_partial_revision_refuses_every_start_until_resolved(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    # MariaDB: r3's first statement takes effect, its second fails.
    url = fresh_db("mariadb")
    ini = deployed(tmp_path, url, broken=TWO_STATEMENTS_SECOND_FAILS)

    _, failed = start(ini, url)
    second = cli(ini, url, "upgrade")  # another process, another replica
    verify = cli(ini, url, "verify")
    entry = rows(
        url,
        "SELECT outcome, statement, detail FROM automigrator_history WHERE revision = 'r3'",
    )

    assert isinstance(failed, PartialMigrationError), repr(failed)
    assert entry == [("partial", 2, "ALTER TABLE users ADD COLUMN age INTEGER")]
    assert second.returncode == 18, second.stderr
    assert "left partly applied" in second.stderr
    assert "statement 2 failed" in second.stderr
    assert "ALTER TABLE users ADD COLUMN age INTEGER" in second.stderr
    assert "resolve r3 --applied" in second.stderr
    assert verify.returncode == 18, verify.stderr
    assert revisions(url) == {"r2"}

    # The operator finishes r3 by hand, and says so.
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE users ADD COLUMN name2 VARCHAR(10)")
    engine.dispose()
    resolved = cli(ini, url, "resolve", "r3", "--applied", "--reason", "finished by hand")
    _, after = start(ini, url)

    assert resolved.returncode == 0, resolved.stderr
    assert after is None, repr(after)
    assert revisions(url) == {"r3"}  # stamped: never run again
    assert ledger(url)[-1] == ("r3", "resolved")


def test_a_partial_revision_undone_by_hand_runs_again_once_fixed(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    url, ini = left_partial(tmp_path, fresh_db)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:  # the operator undoes what stayed
        conn.exec_driver_sql("ALTER TABLE users DROP COLUMN age")
    engine.dispose()
    edit(ini, TWO_STATEMENTS_SECOND_FAILS, R4.body)

    unknown = cli(ini, url, "resolve", "r9", "--not-applied", "--reason", "typo")
    resolved = cli(ini, url, "resolve", "r3", "--not-applied", "--reason", "dropped age")
    migrator, failed = start(ini, url)

    assert unknown.returncode == 2
    assert "r9" in unknown.stderr
    assert resolved.returncode == 0, resolved.stderr
    assert failed is None, repr(failed)
    assert migrator.status.state is MigrationState.READY
    assert [o for r, o in ledger(url) if r == "r3"] == ["partial", "undone", "applied"]


def test_a_failed_revision_is_recorded_failed_and_nothing_refuses_its_fix(
    tmp_path: Path, db_url: URL
) -> None:
    broken = BROKEN_R3
    ini = deployed(tmp_path, db_url, broken=broken)

    _, failed = start(ini, db_url)
    edit(ini, broken, SEED.body)
    _, fixed = start(ini, db_url)

    assert failed is not None
    assert "r3 is broken" in str(failed)
    assert fixed is None, repr(fixed)
    r3 = rows(
        db_url,
        "SELECT outcome, error FROM automigrator_history WHERE revision = 'r3' ORDER BY id",
    )
    assert [outcome for outcome, _ in r3] == ["failed", "applied"]
    assert "r3 is broken" in str(r3[0][1])


def test_a_database_migrated_before_the_ledger_is_adopted_once(
    tmp_path: Path, db_url: URL
) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    plain_alembic_upgrade(ini, db_url)
    assert "automigrator_history" not in tables(db_url)

    adopting, failed = start(ini, db_url)
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", count)
    try:
        again, failed_again = start(ini, db_url)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", count)

    assert failed is None
    assert failed_again is None
    assert adopting.status.state is again.status.state is MigrationState.READY
    entries = adopting.ledger.entries() if adopting.ledger else []
    assert sorted((e.revision, e.outcome) for e in entries) == [
        ("r1", "adopted"),
        ("r2", "adopted"),
        ("r3", "adopted"),
    ]
    assert all(e.checksum and e.checksum.startswith("am1:") for e in entries)
    assert len(statements) == 2, statements  # then at head: the version table, the ledger


def test_history_prints_every_attempt(tmp_path: Path, db_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    start(ini, db_url)

    printed = cli(ini, db_url, "history")
    as_json = cli(ini, db_url, "history", "--json")

    assert printed.returncode == 0, printed.stderr
    lines = printed.stdout.splitlines()
    assert lines[0].split()[:4] == ["id", "at", "revision", "outcome"]
    assert [line.split()[2:4] for line in lines[1:]] == [["r1", "applied"], ["r2", "applied"]]
    entries = json.loads(as_json.stdout)[""]
    assert [e["outcome"] for e in entries] == ["applied", "applied"]
    password = db_url.password
    assert not password or password not in printed.stdout + as_json.stdout


def test_the_lint_verdict_is_recorded_for_the_old_app(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    start(ini, sqlite_url)
    write_revision(ini.parent, Rev("r3", "r2", "drop email", 'op.drop_column("users", "email")'))
    write_revision(ini.parent, Rev("r4", "r3", "add age", R4.body))

    _migrator, failed = start(ini, sqlite_url)

    assert failed is None, repr(failed)
    verdicts = rows(sqlite_url, "SELECT revision, old_app FROM automigrator_history ORDER BY id")
    assert verdicts == [
        ("r1", None),  # an empty database: nothing to lint, no old app
        ("r2", None),
        ("r3", "breaking"),
        ("r4", "compatible"),
    ]


def test_a_revision_that_failed_moments_ago_fails_at_once_from_the_same_file(
    tmp_path: Path, db_url: URL
) -> None:
    # What a server that restarts failed workers does: start again at once.
    broken = BROKEN_R3
    ini = deployed(tmp_path, db_url, broken=broken)

    _, failed = start(ini, db_url)
    _, again = start(ini, db_url)
    _, always = start(ini, db_url, history=History(rerun_failed_after=0))

    assert failed is not None
    assert isinstance(again, MigrationError)
    assert again.revision == "r3"
    assert re.search(r"Revision r3 failed \d+ s ago on \S+ \(pid \d+\)", again.message)
    assert "r3 is broken" in again.message  # that failure, named
    assert "History(rerun_failed_after=)" in again.message
    assert "Nothing was run" in again.message
    assert isinstance(always, MigrationError)
    assert "r3 is broken" in str(always)
    # The refusal ran nothing and left no row; rerun_failed_after=0 ran it again.
    assert [o for r, o in ledger(db_url) if r == "r3"] == ["failed", "failed"]
    assert revisions(db_url) == {"r2"}


def test_a_failure_is_timed_from_its_end_and_a_clock_ahead_holds_nobody_back(
    tmp_path: Path, db_url: URL
) -> None:
    # A revision that fails after a while: the window runs from its end, not
    # its start (a start right after was let through). A row a skewed host
    # wrote in the future is not taken for a failure moments ago.
    slow = Rev("r3", "r2", "slow", 'import time\ntime.sleep(3)\nraise RuntimeError("late")')
    ini = deployed(tmp_path, db_url, broken=slow)
    # 2 s: the next start comes well within it of the end, well after it of the
    # start (the lint off: rendering r3 offline would sleep too).
    within = {"history": History(rerun_failed_after=2.0), "lint": "off"}

    _, failed = start(ini, db_url, **within)
    _, again = start(ini, db_url, **within)
    execute(db_url, "UPDATE automigrator_history SET at = '2999-01-01T00:00:00.000+00:00'")
    _, skewed = start(ini, db_url, **within)

    assert failed is not None
    assert isinstance(again, MigrationError)
    assert "Nothing was run" in again.message
    assert isinstance(skewed, MigrationError)
    assert "late" in skewed.message
    assert "Nothing was run" not in skewed.message  # it ran again
    assert [o for r, o in ledger(db_url) if r == "r3"] == ["failed", "failed"]


def test_a_statement_that_failed_late_on_mariadb_is_timed_from_its_end(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    # MariaDB commits the running row as the DDL begins; the row became
    # "failed" 3 s later, and was timed from its start: a restart right
    # after the failure ran it again.
    late = (
        'op.execute("CREATE TABLE dup (id INT PRIMARY KEY) '
        'SELECT 1 AS id FROM (SELECT SLEEP(3)) a UNION ALL SELECT 1")'
    )
    mariadb_url = fresh_db("mariadb")
    ini = deployed(tmp_path, mariadb_url, broken=Rev("r3", "r2", "slow then broken", late))
    within = {"history": History(rerun_failed_after=2.0), "lint": "off"}

    _, failed = start(ini, mariadb_url, **within)
    _, again = start(ini, mariadb_url, **within)

    assert failed is not None
    assert isinstance(again, MigrationError)
    assert "Nothing was run" in again.message
    assert [o for r, o in ledger(mariadb_url) if r == "r3"] == ["failed"]


def test_bad_history_settings_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"History\(on_edit='maybe'\)"):
        History(on_edit="maybe")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"History\(table=''\)"):
        History(table="")
    with pytest.raises(ConfigurationError, match=r"History\(drift="):
        History(drift="always")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"History\(rerun_failed_after=-1\)"):
        History(rerun_failed_after=-1)


def test_no_ledger_records_and_checks_nothing(tmp_path: Path, sqlite_url: URL) -> None:
    ini = make_project(tmp_path / "p", CHAIN)
    _, failed = start(ini, sqlite_url, history=History(table=None))
    edit(ini, EMAIL, 'op.add_column("users", sa.Column("email", sa.String(5)))')
    _, again = start(ini, sqlite_url, history=History(table=None))

    assert failed is None
    assert again is None
    assert "automigrator_history" not in tables(sqlite_url)


def test_a_copy_of_the_scripts_elsewhere_keeps_its_checksums(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # The image is built again (other paths, other times): same files, same checksums.
    ini = make_project(tmp_path / "a", CHAIN)
    start(ini, sqlite_url)
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    migrator, failed = start(tmp_path / "b" / "alembic.ini", sqlite_url)

    assert failed is None, repr(failed)
    assert migrator.status.state is MigrationState.READY


def test_a_check_mode_role_that_cannot_read_the_ledger_still_starts_and_says_so(
    tmp_path: Path, pg_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    # The pods' role may read the version table only (the Job migrates).
    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, pg_url)
    role = f"am_ro_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN")
        conn.exec_driver_sql(f"GRANT SELECT ON alembic_version TO {role}")
    try:
        migrator, failed = start(ini, pg_url.set(username=role), mode="check")
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {role}")
            conn.exec_driver_sql(f"DROP ROLE {role}")
        admin.dispose()

    assert failed is None, repr(failed)
    assert migrator.status.state is MigrationState.READY
    said = [r.getMessage() for r in caplog.records if "Cannot read the ledger" in r.getMessage()]
    assert len(said) == 1


def test_an_edit_that_keeps_the_files_size_and_time_is_still_refused(
    tmp_path: Path, sqlite_url: URL
) -> None:
    # rsync -a, tar or a fixed-time image build keep a file's modification
    # time: the remembered fingerprints must not hide an edit of the same size.
    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, sqlite_url)
    start(ini, sqlite_url)  # at head: the fingerprints are remembered
    path = ini.parent / "migrations" / "versions" / "r2.py"
    stat = path.stat()
    text = path.read_text()
    assert "String(100)" in text
    path.write_text(text.replace("String(100)", "String(900)"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    _, refused = start(ini, sqlite_url)

    assert path.stat().st_size == stat.st_size
    assert isinstance(refused, EditedRevisionError), repr(refused)


def test_a_table_of_the_ledgers_name_that_is_not_ours_is_named_and_nothing_is_purged(
    tmp_path: Path, pg_url: URL
) -> None:
    ini = deployed(tmp_path, pg_url, broken=Rev("r3", "r2", "add age", R4.body))
    execute(pg_url, "DROP TABLE automigrator_history")
    execute(pg_url, "CREATE TABLE automigrator_history (id INTEGER PRIMARY KEY, note TEXT)")

    _, refused = start(ini, pg_url, on_failure=PurgeAndRetry())
    history = cli(ini, pg_url, "history")

    assert isinstance(refused, ConfigurationError), repr(refused)
    assert "automigrator_history is not automigrator's ledger" in refused.message
    assert backups(pg_url) == []  # nothing purged
    assert revisions(pg_url) == {"r2"}
    assert rows(pg_url, "SELECT COUNT(*) FROM users") == [(3,)]
    assert history.returncode == 2
    assert "is not automigrator's ledger" in history.stderr


def test_a_revision_left_partial_is_refused_even_once_its_file_is_replaced(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    url, ini = left_partial(tmp_path, fresh_db)
    versions = ini.parent / "migrations" / "versions"
    (versions / "r3.py").unlink()  # someone "fixes" it under another id
    write_revision(ini.parent, Rev("r3b", "r2", "add age again", R4.body))

    _, refused = start(ini, url)

    assert isinstance(refused, PartialMigrationError), repr(refused)
    assert refused.revision == "r3"
    assert revisions(url) == {"r2"}


def test_the_command_reads_the_ledger_the_app_names(
    tmp_path: Path, fresh_db: Callable[[str], URL], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = fresh_db("mariadb")
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    start(ini, url, history=History(table="app_ledger"))
    write_revision(ini.parent, TWO_STATEMENTS_SECOND_FAILS)
    start(ini, url, history=History(table="app_ledger"))

    flagged = cli(ini, url, "--history-table", "app_ledger", "verify")
    monkeypatch.setenv("AUTOMIGRATOR_HISTORY_TABLE", "app_ledger")
    from_env = cli(ini, url, "verify")

    assert flagged.returncode == 18, flagged.stderr
    assert from_env.returncode == 18, from_env.stderr
    assert "automigrator_history" not in tables(url)


def test_a_behind_database_migrated_before_the_ledger_is_adopted_then_migrated(
    tmp_path: Path, db_url: URL
) -> None:
    # Adoption writes under the lock's fence, on a connection of ours: it must
    # let the fence go, or the migration's own connection could not take it.
    ini = make_project(tmp_path / "p", (USERS, EMAIL))
    plain_alembic_upgrade(ini, db_url)
    write_revision(ini.parent, SEED)

    _, failed = start(ini, db_url)

    assert failed is None, repr(failed)
    assert revisions(db_url) == {"r3"}
    assert ledger(db_url) == [("r1", "adopted"), ("r2", "adopted"), ("r3", "applied")]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_a_clean_check_remembered_for_one_database_never_answers_for_another(
    tmp_path: Path, fresh_db: Callable[[str], URL], kind: str
) -> None:
    # Two databases share one checkout (tenants, staging beside a copy of
    # production). The older one ran r2 as it was; r2 was then edited, and
    # the newer one migrated with the edit and started again at head (its
    # clean check remembered with the heads). The older one is still refused.
    db_url = fresh_db(kind)
    older = fresh_db(kind) if kind != "sqlite" else sa.make_url(f"sqlite:///{tmp_path}/older.db")
    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, older)
    edit(ini, EMAIL, 'op.add_column("users", sa.Column("email", sa.String(200)))')
    _, first = start(ini, db_url)
    _, again = start(ini, db_url)

    _, refused = start(ini, older)

    assert (first, again) == (None, None)
    assert isinstance(refused, EditedRevisionError), repr(refused)
    assert refused.revisions == ("r2",)


def test_a_row_left_partial_after_a_clean_start_refuses_the_next_one(
    tmp_path: Path, fresh_db: Callable[[str], URL]
) -> None:
    # At head, the check found nothing and was remembered; since then another
    # process (a replica of another version, killed in r3 on MariaDB) left r3's
    # row partial. The ledger reads differently: the next start checks again.
    url = fresh_db("mariadb")
    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, url)
    _, clean = start(ini, url)
    execute(
        url,
        "UPDATE automigrator_history SET outcome = 'partial', statement = 2, "
        "detail = 'ALTER TABLE users ADD COLUMN age INTEGER' WHERE revision = 'r3'",
    )

    _, refused = start(ini, url)

    assert clean is None, repr(clean)
    assert isinstance(refused, PartialMigrationError), repr(refused)
    assert refused.revision == "r3"


def test_an_edit_landing_while_a_start_reads_the_files_is_refused_by_the_next_start(
    tmp_path: Path, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A checkout (or an editor's save under --reload) lands while a start
    # runs: after the files were listed, before the start remembers what it
    # computed of them (here: r1's checksum, r1 being only reformatted). What
    # is remembered must not describe the edited r2 as it was before.
    from automigrator.database._ledger import Ledger

    ini = make_project(tmp_path / "p", CHAIN)
    start(ini, sqlite_url)
    start(ini, sqlite_url)
    versions = ini.parent / "migrations" / "versions"
    with (versions / "r1.py").open("a") as out:
        out.write("\n# reformatted\n")
    r2 = versions / "r2.py"
    read = Ledger.latest

    def read_while_r2_is_edited(self: Ledger, conn: sa.Connection) -> object:
        rows = read(self, conn)
        r2.write_text(r2.read_text().replace("String(100)", "String(200)"))
        return rows

    monkeypatch.setattr(Ledger, "latest", read_while_r2_is_edited)
    _, during = start(ini, sqlite_url)
    monkeypatch.undo()

    _, refused = start(ini, sqlite_url)

    assert during is None, repr(during)
    assert isinstance(refused, EditedRevisionError), repr(refused)
    assert refused.revisions == ("r2",)
