"""Bad input gets a named error that says what to fix, and the database is untouched."""

from __future__ import annotations

import logging
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    Chain,
    ConfigurationError,
    DatabaseUnavailableError,
    Ddl,
    Decision,
    Lint,
    LogAndContinue,
    MigrationState,
    MigratorGroup,
    PostgresAdvisoryLock,
    PurgeAndRetry,
    Retry,
    Switch,
    Timeouts,
    VersionTable,
)
from tests.conftest import revisions, server_url, tables
from tests.project import Rev, set_version_locations, write_revision


def test_missing_ini(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"alembic\.ini.*not found"):
        AutoMigrator(tmp_path / "alembic.ini", url="sqlite://")


def test_ini_without_script_location(tmp_path: Path) -> None:
    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nsqlalchemy.url = sqlite://\n")
    with pytest.raises(ConfigurationError, match="no 'script_location'"):
        AutoMigrator(ini)


def test_unreadable_ini(tmp_path: Path) -> None:
    ini = tmp_path / "alembic.ini"
    ini.write_text("this is not an ini file\n")
    with pytest.raises(ConfigurationError, match="Could not read the Alembic config"):
        AutoMigrator(ini, url="sqlite://")


def test_missing_versions_folder_is_not_mistaken_for_no_revisions(
    ini: Path, sqlite_url: URL
) -> None:
    shutil.rmtree(ini.parent / "migrations" / "versions")
    migrator = AutoMigrator(ini, url=sqlite_url)

    with pytest.raises(ConfigurationError, match=r"versions folder .* does not exist"):
        anyio.run(migrator.run)

    assert tables(sqlite_url) == set()
    assert migrator.status.error_kind == "configuration"


def test_missing_script_folder(ini: Path, sqlite_url: URL) -> None:
    shutil.rmtree(ini.parent / "migrations")
    with pytest.raises(ConfigurationError, match="Could not load the migration scripts"):
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)


def test_revision_file_that_does_not_import(ini: Path, sqlite_url: URL) -> None:
    (ini.parent / "migrations" / "versions" / "bad.py").write_text("revision = 'x'\nimport nope\n")
    with pytest.raises(ConfigurationError, match="failed to import"):
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert tables(sqlite_url) == set()


@pytest.mark.parametrize(
    "url", ["not a url", "postgresql://user:hunter2@host:notaport/db", "nodialect://x/y"]
)
def test_unparsable_url_names_the_problem_without_the_password(ini: Path, url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        AutoMigrator(ini, url=url)
    assert "hunter2" not in str(caught.value)
    assert "URL" in str(caught.value)


def test_uninstalled_driver_is_refused_when_the_migrator_is_built(ini: Path) -> None:
    # pg8000 is a driver SQLAlchemy knows but this project does not install.
    with pytest.raises(ConfigurationError, match="not installed") as caught:
        AutoMigrator(ini, url="postgresql+pg8000://app:hunter2@db/app")
    assert "hunter2" not in str(caught.value)


def test_ini_placeholder_url_is_refused(ini: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown dialect"):
        AutoMigrator(ini)


@pytest.mark.parametrize("target", ["+1", "-1", "r1:r3", ""])
def test_relative_or_range_target_is_refused(ini: Path, target: str) -> None:
    with pytest.raises(ConfigurationError, match="not a start-up target"):
        AutoMigrator(ini, url="sqlite://", target=target)


def test_unknown_target_is_refused_untouched(ini: Path, sqlite_url: URL) -> None:
    migrator = AutoMigrator(ini, url=sqlite_url, target="nosuchrev")
    with pytest.raises(ConfigurationError, match="Unknown migration target 'nosuchrev'"):
        anyio.run(migrator.run)
    assert tables(sqlite_url) == set()


@pytest.mark.parametrize("value", ["maybe", "2", "enabled", "tru"])
def test_bad_switch_value_names_variable_and_value(
    ini: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("RUN_MIGRATIONS", value)
    with pytest.raises(ConfigurationError) as caught:
        AutoMigrator(ini, url="sqlite://")
    assert f"RUN_MIGRATIONS={value!r}" in str(caught.value)


def test_bad_lock_and_policy_arguments(ini: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a lock"):
        AutoMigrator(ini, url="sqlite://", lock="postgres")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a failure policy"):
        AutoMigrator(ini, url="sqlite://", on_failure="continue")  # type: ignore[arg-type]


def untyped(thing: object) -> Any:
    """``thing``, called as a user without type checking would."""
    return thing


@pytest.mark.parametrize(
    ("build", "named"),
    [
        (lambda: Timeouts(lock=0), r"Timeouts\(lock=0\): lock must be"),
        (lambda: Timeouts(connect=-1), r"Timeouts\(connect=-1\)"),
        (lambda: Timeouts(check=math.nan), r"Timeouts\(check=nan\)"),
        (lambda: Timeouts(lock=math.inf), r"Timeouts\(lock=inf\)"),
        (
            lambda: Timeouts(shutdown="30"),  # type: ignore[arg-type]
            r"Timeouts\(shutdown='30'\)",
        ),
        (lambda: Ddl(lock_timeout=math.inf), r"Ddl\(lock_timeout=inf\)"),
        (lambda: Ddl(retries=True), r"Ddl\(retries=True\)"),
        (lambda: Ddl(budget=0), r"Ddl\(budget=0\): budget must be a finite number"),
        (
            lambda: Lint(mode="loud"),  # type: ignore[arg-type]
            r"Lint\(mode='loud'\): use 'warn' or 'refuse' or 'off'",
        ),
        (lambda: Lint(rows=-1), r"Lint\(rows=-1\)"),
        (
            lambda: Switch(when_disabled="wait"),  # type: ignore[arg-type]
            r"Switch\(when_disabled='wait'\)",
        ),
        (lambda: Switch(env_var=""), r"Switch\(env_var=''\)"),
        (lambda: Retry(times=0), r"Retry\(times=0"),
        (lambda: Chain(), "Chain needs failure policies"),
        (lambda: VersionTable(""), r"VersionTable\(name=''\)"),
        (lambda: VersionTable("v", " "), r"VersionTable\(schema=' '\)"),
        (lambda: PurgeAndRetry(keep=0), r"PurgeAndRetry\(keep=0\): keep must be"),
        (
            lambda: untyped(PurgeAndRetry)(backup="no"),
            r"PurgeAndRetry\(backup='no'\): use True",
        ),
        (lambda: untyped(Retry)(times="3"), r"Retry\(times='3'\)"),
        (lambda: Retry(delay=5, max_delay=1), r"max_delay must be >= delay"),
        (
            lambda: untyped(LogAndContinue)(kinds="transient"),
            r"LogAndContinue\(kinds='trans",
        ),
        (lambda: untyped(Retry)(kinds=("busy",)), r"Retry\(kinds=\('busy',\)\)"),
        (lambda: untyped(Decision.retry)("again", delay="1"), r"Decision.retry\(delay='1'\)"),
        (
            lambda: untyped(Switch)(enabled="false"),
            r"Switch\(enabled='false'\): use",
        ),
        (lambda: untyped(Switch)(default="no"), r"Switch\(default='no'\)"),
    ],
)
def test_bad_settings_are_named_where_they_are_built(build: Any, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        build()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"enabled": "false"}, r"Switch\(enabled='false'\)"),  # a truthy string would migrate
        ({"block_startup": "no"}, r"AutoMigrator\(block_startup='no'\)"),
        ({"baseline": 123}, r"AutoMigrator\(baseline=123\)"),
        ({"lint": "loud"}, r"Lint\(mode='loud'\)"),
    ],
)
def test_bad_arguments_are_named_and_nothing_migrates(
    ini: Path, sqlite_url: URL, options: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        AutoMigrator(ini, url=sqlite_url, **options)
    assert tables(sqlite_url) == set()


def test_a_groups_shutdown_timeout_is_named_as_written(ini: Path) -> None:
    member = AutoMigrator(ini, url="sqlite://")
    with pytest.raises(ConfigurationError, match=r"MigratorGroup\(shutdown_timeout=-1\)"):
        MigratorGroup({"app": member}, shutdown_timeout=-1)


def test_settings_shorthands_and_objects_are_the_same(ini: Path) -> None:
    short = AutoMigrator(ini, url="sqlite://", lint="refuse", version_table="v", enabled=False)
    full = AutoMigrator(
        ini,
        url="sqlite://",
        lint=Lint(mode="refuse"),
        version_table=VersionTable("v"),
        enabled=Switch(enabled=False),
    )
    assert short.settings == full.settings
    with pytest.raises(ConfigurationError, match="pass a Timeouts"):
        AutoMigrator(ini, url="sqlite://", timeouts=5)  # type: ignore[arg-type]


def test_sqlite_in_a_missing_folder(ini: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nope' / 'app.db'}"
    with pytest.raises(ConfigurationError) as caught:
        anyio.run(AutoMigrator(ini, url=url).run)

    # Named, not "refused the connection ... check the user, password".
    assert f"its folder {tmp_path / 'nope'} does not exist" in caught.value.message
    assert "password" not in caught.value.message
    assert not (tmp_path / "nope").exists()


def test_wrong_database_is_a_configuration_error_without_the_password(
    ini: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url = server_url("postgresql").set(database="am_does_not_exist", password="s3cr3t-pw")
    migrator = AutoMigrator(ini, url=url, on_failure=LogAndContinue())

    with caplog.at_level(logging.DEBUG):
        status = anyio.run(migrator.run)

    assert status.state is MigrationState.DEGRADED
    assert status.error_kind == "configuration"
    assert status.error is not None
    assert "does not exist" in status.error
    assert "s3cr3t-pw" not in repr(status)
    assert "s3cr3t-pw" not in str(status.to_dict())
    assert "s3cr3t-pw" not in caplog.text
    assert "s3cr3t-pw" not in repr(migrator)


def test_unreachable_server_is_unavailable_without_the_password(
    ini: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    url = sa.make_url("postgresql+psycopg://postgres:s3cr3t-pw@127.0.0.1:1/test")
    migrator = AutoMigrator(ini, url=url, timeouts=Timeouts(connect=0))

    with caplog.at_level(logging.DEBUG), pytest.raises(DatabaseUnavailableError) as caught:
        anyio.run(migrator.run)

    assert "s3cr3t-pw" not in str(caught.value)
    assert "***" in str(caught.value)
    assert "s3cr3t-pw" not in caplog.text
    assert migrator.status.error_kind == "transient"


def test_disabled_migrator_never_touches_the_database(
    ini: Path, sqlite_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUN_MIGRATIONS", "off")
    migrator = AutoMigrator(ini, url=sqlite_url)

    status = anyio.run(migrator.run)

    assert status.state is MigrationState.DISABLED
    assert not Path(str(sqlite_url.database)).exists()


def test_ini_without_an_alembic_section(tmp_path: Path) -> None:
    ini = tmp_path / "alembic.ini"
    ini.write_text("[loggers]\nkeys = root\n")
    with pytest.raises(ConfigurationError, match=r"no \[alembic\] section"):
        AutoMigrator(ini, url="sqlite://")


def test_a_folder_given_as_the_config_is_named_as_a_folder(ini: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"is a folder: pass the alembic\.ini"):
        AutoMigrator(ini.parent, url="sqlite://")


@pytest.mark.parametrize("given", ["migrations", "migrations/versions"])
def test_a_folder_given_as_the_config_names_the_config_that_exists(ini: Path, given: str) -> None:
    # `-c app/migrations` for app/alembic.ini: the message points at the file
    # that is there, never at one that is not.
    with pytest.raises(ConfigurationError) as caught:
        AutoMigrator(ini.parent / given, url="sqlite://")

    assert repr(str(ini)) in caught.value.message
    assert "migrations/alembic.ini" not in caught.value.message


def test_a_folder_with_no_config_near_it_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="none is in it or in a folder above it"):
        AutoMigrator(tmp_path, url="sqlite://")


def test_scripts_with_no_revision_never_make_a_database_ready(ini: Path, db_url: URL) -> None:
    # env.py choosing a per-dialect folder at run time, or a wrong
    # version_locations: Alembic sees no revision at all.
    empty = ini.parent / "migrations" / "versions_elsewhere"
    empty.mkdir()
    set_version_locations(ini, empty)
    migrator = AutoMigrator(ini, url=db_url)

    with pytest.raises(ConfigurationError, match="No revision file was found in") as caught:
        anyio.run(migrator.run)

    assert str(empty) in caught.value.message
    assert migrator.status.state is MigrationState.FAILED
    assert tables(db_url) == set()  # not even a version table


def test_the_command_does_not_call_scripts_without_revisions_up_to_date(
    ini: Path, sqlite_url: URL
) -> None:
    from tests.helpers import cli

    empty = ini.parent / "migrations" / "none_here"
    empty.mkdir()
    set_version_locations(ini, empty)

    run = cli(ini, sqlite_url, "check")

    assert run.returncode == 2
    assert "No revision file was found" in run.stderr


def test_base_is_not_a_start_up_target(ini: Path) -> None:
    with pytest.raises(ConfigurationError, match="only upgrades"):
        AutoMigrator(ini, url="sqlite://", target="base")


def test_a_target_older_than_the_database_is_said_plainly(
    ini: Path, sqlite_url: URL, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.helpers import cli

    anyio.run(AutoMigrator(ini, url=sqlite_url).run)  # at r3
    with caplog.at_level(logging.WARNING, logger="automigrator"):
        status = anyio.run(AutoMigrator(ini, url=sqlite_url, target="r1").run)

    assert status.state is MigrationState.READY  # nothing to do: never a downgrade
    assert any("past the target r1" in r.getMessage() for r in caplog.records)
    run = cli(ini, sqlite_url, "--target", "r1", "check")
    assert run.returncode == 0
    assert "past the target r1" in run.stderr


@pytest.mark.parametrize(
    ("lock_url", "lock", "words"),
    [
        ("mysql+pymysql://app:hunter2@db/app", "auto", "lock_url must reach the same database"),
        ("sqlite:///x:hunter2@/y.db", None, "lock_url= is for the database's own lock"),
        ("postgresql://app:hunter2@db:notaport/app", "auto", "Could not parse"),
    ],
)
def test_a_bad_lock_url_is_named_without_its_password(
    ini: Path, sqlite_url: URL, lock_url: str, lock: str | None, words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words) as caught:
        AutoMigrator(ini, url=sqlite_url, lock_url=lock_url, lock=lock)  # type: ignore[arg-type]
    assert "hunter2" not in str(caught.value)
    assert tables(sqlite_url) == set()


@pytest.mark.parametrize("reap_after", [0, 5.9, float("nan")])
def test_a_lock_reap_time_too_short_to_beat_is_refused(reap_after: float) -> None:
    engine = sa.create_engine("postgresql+psycopg://app@db/app")
    with pytest.raises(ConfigurationError, match="reap_after"):
        PostgresAdvisoryLock(engine, reap_after=reap_after)


def test_a_down_revision_naming_no_revision_names_the_file(ini: Path, sqlite_url: URL) -> None:
    write_revision(ini.parent, Rev("r4", "deadbeef0000", "orphan", "pass"))
    with pytest.raises(ConfigurationError) as caught:
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    message = str(caught.value)
    assert "r4.py: down_revision = 'deadbeef0000'" in message
    assert "no revision file has that id" in message
    assert "failed to import" not in message
    assert tables(sqlite_url) == set()


def test_a_revision_id_used_twice_is_refused_naming_both_files(ini: Path, sqlite_url: URL) -> None:
    # Alembic only warns, keeps one of the two files and skips the other.
    versions = ini.parent / "migrations" / "versions"
    twin = (versions / "r3.py").read_text().replace('"""r3', '"""r3, copied')
    (versions / "r3_copy.py").write_text(twin)
    with pytest.raises(ConfigurationError, match="used by 2 files") as caught:
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert "r3.py" in str(caught.value)
    assert "r3_copy.py" in str(caught.value)
    assert tables(sqlite_url) == set()


def test_a_cycle_in_the_graph_names_its_revisions_and_files(ini: Path, sqlite_url: URL) -> None:
    versions = ini.parent / "migrations" / "versions"
    first = versions / "r1.py"
    first.write_text(first.read_text().replace("down_revision = None", "down_revision = 'r3'"))
    with pytest.raises(ConfigurationError, match="cycle") as caught:
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)
    assert "(r1.py)" in str(caught.value)
    assert "(r3.py)" in str(caught.value)
    assert tables(sqlite_url) == set()


def test_an_env_py_that_migrates_another_database_is_refused_naming_both(
    ini: Path, sqlite_url: URL, tmp_path: Path
) -> None:
    # As an env.py that takes its URL from the app's settings, not the config.
    elsewhere = tmp_path / "elsewhere.db"
    env_py = ini.parent / "migrations" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "config.get_section(config.config_ini_section, {})",
            f'{{"sqlalchemy.url": "sqlite:///{elsewhere}"}}',
        )
    )
    with pytest.raises(ConfigurationError) as caught:
        anyio.run(AutoMigrator(ini, url=sqlite_url).run)

    message = str(caught.value)
    assert f"env.py connects to 'sqlite:///{elsewhere}'" in message
    assert str(sqlite_url) in message
    assert "get_main_option('sqlalchemy.url')" in message
    assert tables(sqlite_url) == set()
    assert not elsewhere.exists()  # refused before connecting: no file made there


def test_a_version_table_with_a_row_below_another_names_them_and_the_fix(
    ini: Path, db_url: URL
) -> None:
    # What two processes that migrated at once without a lock leave (Mealie's
    # own race on SQLite): r3 and its ancestor r1, one row each.
    anyio.run(AutoMigrator(ini, url=db_url).run)
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO alembic_version (version_num) VALUES ('r1')"))
    engine.dispose()
    migrator = AutoMigrator(ini, url=db_url)

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(migrator.run)

    message = caught.value.message
    assert "alembic_version holds r1, r3, but r1 is below r3" in message
    assert "DELETE FROM alembic_version WHERE version_num IN ('r1')" in message
    assert "Nothing was changed" in message
    assert revisions(db_url) == {"r1", "r3"}


@pytest.mark.parametrize("missing", ["aiosqlite", "greenlet"])
def test_an_async_urls_missing_packages_are_named_when_the_migrator_is_built(
    ini: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    # The async template's env.py needs both; without this check the first
    # start failed as "env.py failed", after the lock was taken.
    monkeypatch.setitem(sys.modules, missing, None)  # an import of it raises ImportError
    database = tmp_path / "app.db"

    with pytest.raises(ConfigurationError) as caught:
        AutoMigrator(ini, url=f"sqlite+aiosqlite:///{database}")

    assert "pip install" in caught.value.message
    assert missing in caught.value.message
    assert not database.exists()


def test_the_delete_a_refusal_suggests_runs_as_printed(ini: Path, pg_url: URL) -> None:
    # A version table whose name PostgreSQL folds unless quoted: the DELETE
    # in the message must be one a person can paste.
    env = ini.parent / "migrations" / "env.py"
    configure = 'context.configure(version_table="AppVersions", '
    env.write_text(env.read_text().replace("context.configure(", configure))
    anyio.run(AutoMigrator(ini, url=pg_url, version_table="AppVersions").run)
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("""INSERT INTO "AppVersions" (version_num) VALUES ('r1')"""))

    with pytest.raises(ConfigurationError) as caught:
        anyio.run(AutoMigrator(ini, url=pg_url, version_table="AppVersions").run)
    delete = caught.value.message.split("(DELETE", 1)[1].split(")).", 1)[0] + ")"
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE" + delete))
    engine.dispose()
    status = anyio.run(AutoMigrator(ini, url=pg_url, version_table="AppVersions").run)

    assert '"AppVersions"' in delete
    assert status.state is MigrationState.READY
