"""``automigrator drift`` and ``assert_no_drift``: the live schema against env.py's models.

On real databases (SQLite, PostgreSQL, MariaDB): the example app and a real
history (Optuna's) migrated to head, a model changed without its revision,
an env.py without models, our own tables, the types a database stores under
another name, a group, and no password in any output.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import URL

from automigrator import (
    AutoMigrator,
    ConfigurationError,
    History,
    MigrationState,
    MigratorGroup,
    drift,
)
from automigrator.testing import assert_models_match, assert_no_drift, upgrade
from tests.conftest import EXAMPLE, tables
from tests.corpus import corpus_project
from tests.helpers import cli, run_cli
from tests.project import Rev, make_project

DRIFT = 16  # the command's exit code on any difference

# The example's env.py runs an async engine: its driver for each database.
ASYNC_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgresql": "postgresql+asyncpg",
    "mysql": "mysql+asyncmy",
}


def example_project(root: Path, url: URL) -> tuple[Path, URL]:
    """A copy of the example app's project; its ini, and ``url`` with an async driver."""
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("data", "__pycache__"))
    return root / "alembic.ini", url.set(drivername=ASYNC_DRIVERS[url.get_backend_name()])


@pytest.fixture
def fresh_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """env.py's ``import models`` finds this test's copy, not one imported before."""
    monkeypatch.delitem(sys.modules, "models", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))  # Alembic's prepend_sys_path


# -- (a) the example app: migrated to head, no drift ------------------------------


def test_the_example_app_at_head_has_no_drift(
    db_url: URL, tmp_path: Path, fresh_models: None
) -> None:
    ini, url = example_project(tmp_path / "app", db_url)

    upgraded = cli(ini, url, "upgrade")
    said = cli(ini, url, "drift")
    as_json = cli(ini, url, "drift", "--json")

    assert upgraded.returncode == 0, upgraded.stderr
    assert said.returncode == 0, said.stdout + said.stderr
    assert said.stdout.splitlines()[-1].endswith(": at 0004; 0 difference(s) from the models")
    report = json.loads(as_json.stdout)
    assert as_json.returncode == 0
    assert report["differences"] == []
    assert report["at_head"] is True
    assert report["revisions"] == ["0004"]
    assert_no_drift(AutoMigrator(ini, url=url))  # the helper agrees


# -- (b) a real history whose models load: Optuna's ------------------------------

# Where Optuna's own revisions and its models disagree. Optuna never sees
# them: RDBStorage makes a new database with create_all() and stamps it, and
# only runs the revisions on an old one. Each is in Optuna 5.0.0's files:
OPTUNAS_OWN = [
    # models.py's TrialHeartbeatModel; no revision creates its table.
    "add_table trial_heartbeats",
    # v0.9.0.a creates trial_values.trial_id nullable, v2.4.0.a keeps it; the model says
    # nullable=False.
    "modify_nullable trial_values.trial_id NULL -> NOT NULL",
    # v3.2.0.a_ names the index op.f("trials_study_id_key"); the model's index=True makes
    # ix_trials_study_id.
    "remove_index trials_study_id_key on trials (study_id)",
    "add_index ix_trials_study_id on trials (study_id)",
]


def optuna_project(root: Path) -> Path:
    """Optuna's revision files, and an env.py whose target_metadata is Optuna's models."""
    ini = corpus_project("optuna", root)
    env = ini.parent / "migrations" / "env.py"
    text = env.read_text()
    assert "target_metadata = None" in text
    env.write_text(
        text.replace(
            "target_metadata = None",
            "from optuna.storages._rdb.models import BaseModel\n\n"
            "target_metadata = BaseModel.metadata",
        )
    )
    return ini


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_optunas_history_at_head_differs_from_its_models_only_where_optuna_does(
    kind: str, fresh_db: Callable[[str], URL], tmp_path: Path
) -> None:
    url = fresh_db(kind)
    ini = optuna_project(tmp_path / "optuna")

    upgraded = cli(ini, url, "upgrade")
    drifted = cli(ini, url, "drift", "--json")

    assert upgraded.returncode == 0, upgraded.stderr
    assert drifted.returncode == DRIFT, drifted.stderr
    report = json.loads(drifted.stdout)
    assert report["at_head"] is True
    assert report["revisions"] == ["v3.2.0.a"]
    assert sorted(report["differences"]) == sorted(OPTUNAS_OWN)


def test_optunas_history_stops_on_mariadb_and_drift_says_where_it_stands(
    fresh_db: Callable[[str], URL], tmp_path: Path
) -> None:
    # MariaDB refuses to drop a column of a multi-column unique key (error
    # 1072), where MySQL narrows the key: Optuna's v2.4.0.a drops
    # trial_values.step, in UNIQUE (trial_id, step), so its history cannot
    # reach head on MariaDB. (Optuna's own start, create_all(), never runs it:
    # see the next test.)
    url = fresh_db("mariadb")
    ini = optuna_project(tmp_path / "optuna")

    upgraded = cli(ini, url, "upgrade")
    said = cli(ini, url, "drift")
    drifted = cli(ini, url, "drift", "--json")

    assert upgraded.returncode != 0
    assert "v2.4.0.a" in upgraded.stderr
    assert "Key column 'step' doesn't exist in table" in upgraded.stderr
    # The partly applied revision is remembered in a table of ours: never drift.
    assert [name for name in tables(url) if name.startswith("automigrator_")]
    assert drifted.returncode == DRIFT
    report = json.loads(drifted.stdout)
    assert report["at_head"] is False
    assert report["revisions"] == ["v1.3.0.a"]
    assert report["pending"][0] == "v2.4.0.a"
    assert "add_table trial_heartbeats" in report["differences"]
    assert not [line for line in report["differences"] if "automigrator_" in line]
    assert not [line for line in report["differences"] if "alembic_version" in line]
    assert "not at the target (behind: at v1.3.0.a, target v3.2.0.a, pending v2.4.0.a" in (
        said.stdout
    )
    assert "the pending revisions' changes show as drift until they are applied" in said.stdout


OPTUNA_CREATES = "import sys, optuna; optuna.storages.RDBStorage(sys.argv[1])"


def test_the_schema_optuna_creates_has_no_drift(db_url: URL, tmp_path: Path) -> None:
    # On MariaDB its Float(precision=53) columns are DOUBLE: taken as equal.
    target = db_url.render_as_string(hide_password=False)
    subprocess.run([sys.executable, "-c", OPTUNA_CREATES, target], check=True, timeout=120)
    ini = optuna_project(tmp_path / "optuna")

    drifted = cli(ini, db_url, "drift", "--json")

    assert drifted.returncode == 0, drifted.stdout + drifted.stderr
    report = json.loads(drifted.stdout)
    assert report["at_head"] is True
    assert report["differences"] == []


# -- (c) a model changed without its revision -----------------------------------

COUNTRY = "add_column authors.country VARCHAR(2) NOT NULL"


def test_a_model_change_without_its_revision_is_drift(
    db_url: URL, tmp_path: Path, fresh_models: None
) -> None:
    ini, url = example_project(tmp_path / "app", db_url)
    assert cli(ini, url, "upgrade").returncode == 0
    models = ini.parent / "models.py"
    unique_name = "    name: Mapped[str] = mapped_column(sa.String(100), unique=True)\n"
    assert unique_name in models.read_text()
    models.write_text(
        models.read_text().replace(
            unique_name, unique_name + "    country: Mapped[str] = mapped_column(sa.String(2))\n"
        )
    )

    said = cli(ini, url, "drift")
    as_json = cli(ini, url, "drift", "--json")

    assert said.returncode == DRIFT
    *_, header, line = said.stdout.splitlines()
    assert header.endswith(": at 0004; 1 difference(s) from the models")
    assert line == COUNTRY
    assert as_json.returncode == DRIFT
    assert json.loads(as_json.stdout)["differences"] == [COUNTRY]
    with pytest.raises(AssertionError, match=f"in 1 way\\(s\\);(.|\n)*\n{re.escape(COUNTRY)}$"):
        assert_no_drift(AutoMigrator(ini, url=url))


# -- (d) env.py without models -----------------------------------------------------


def test_env_py_without_target_metadata_is_a_configuration_error_and_changes_nothing(
    ini: Path, db_url: URL
) -> None:
    env = ini.parent / "migrations" / "env.py"
    assert "target_metadata = None" in env.read_text()  # Alembic's generic template

    with pytest.raises(ConfigurationError) as raised:
        anyio.run(drift, AutoMigrator(ini, url=db_url))
    run = cli(ini, db_url, "drift")

    assert f"{env} passes no target_metadata to context.configure()" in raised.value.message
    assert tables(db_url) == set()  # not even a version table
    assert run.returncode == 2
    assert "passes no target_metadata to context.configure()" in run.stderr


# -- (e) no password in any output -------------------------------------------------

PASSWORD = "p@ss:w/rd%25x"  # '%25' is a literal part of it, not an escape
FORMS = (PASSWORD, quote(PASSWORD, safe=""), "rd%25x", "w/rd", "%25x")


def assert_hidden(text: str) -> None:
    for form in FORMS:
        assert form not in text, f"{form!r} leaked: {text}"


def test_no_password_in_the_report_or_when_env_py_fails(
    pg_url: URL, tmp_path: Path, fresh_models: None
) -> None:
    secret = pg_url.set(password=PASSWORD)  # trust authentication ignores it
    ini, url = example_project(tmp_path / "app", secret)
    assert cli(ini, url, "upgrade").returncode == 0
    env = ini.parent / "migrations" / "env.py"
    good = env.read_text()

    outputs = [cli(ini, url, "drift"), cli(ini, url, "drift", "--json")]
    report = anyio.run(drift, AutoMigrator(ini, url=url))
    # env.py fails quoting the URL it was given, password and all.
    env.write_text(
        good.replace(
            "def run_migrations_online() -> None:\n",
            "def run_migrations_online() -> None:\n"
            "    url = config.get_main_option('sqlalchemy.url')\n"
            "    raise RuntimeError('cannot compare ' + url)\n",
        )
    )
    failed = cli(ini, url, "drift")
    with pytest.raises(ConfigurationError, match="cannot compare") as raised:
        anyio.run(drift, AutoMigrator(ini, url=url))

    assert [run.returncode for run in outputs] == [0, 0]
    assert "***" in outputs[0].stdout
    assert report.differences == ()
    assert failed.returncode == 2
    assert "cannot compare" in failed.stderr
    for text in (*(run.stdout + run.stderr for run in (*outputs, failed)), str(report)):
        assert_hidden(text)
    assert_hidden(raised.value.message)
    assert_hidden(json.dumps(report.to_dict()))


# -- our own tables; types stored under another name; a group ----------------------


def test_our_own_tables_are_not_drift(db_url: URL, tmp_path: Path, fresh_models: None) -> None:
    ini, url = example_project(tmp_path / "app", db_url)
    assert cli(ini, url, "upgrade").returncode == 0
    assert "automigrator_history" in tables(db_url)  # the ledger, beside the version table
    migrator = AutoMigrator(ini, url=url)
    sys.path.insert(0, str(ini.parent))  # as its alembic.ini's prepend_sys_path does
    models = importlib.import_module("models")

    drifted = cli(ini, url, "drift", "--json")
    assert_no_drift(migrator)
    assert_models_match(migrator, models.Base.metadata)

    assert drifted.returncode == 0, drifted.stdout
    assert json.loads(drifted.stdout)["differences"] == []


# Each declaration a database stores as another type, and reflects so; the
# models widen `name`, a genuine difference that must still be seen.
NOISY = {
    "common": [
        'sa.Column("id", sa.Integer, primary_key=True)',
        'sa.Column("flag", sa.Boolean, nullable=False)',
        'sa.Column("mood", sa.Enum("happy", "sad", name="mood"))',
        'sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"))',
        'sa.Column("label", sa.String(50), unique=True)',
        'sa.Column("parent_id", sa.Integer, sa.ForeignKey("things.id"))',
        'sa.Column("ratio", sa.Float(precision=53))',
        'sa.Column("single", sa.Float(precision=24))',
        'sa.Column("real", sa.REAL)',
        'sa.Column("code", sa.NCHAR(3))',
        'sa.Column("data", sa.LargeBinary(2**20))',
    ],
    "sized": [  # PostgreSQL has no TEXT(n) nor NVARCHAR
        'sa.Column("body", sa.Text(2**20))',
        'sa.Column("note", sa.Text(1000))',
        'sa.Column("title", sa.NVARCHAR(20))',
    ],
    "sqlite": ['sa.Column("notes", sa.CLOB)'],
}
WIDENED = ('sa.Column("name", sa.String(50))', 'sa.Column("name", sa.String(100))')


def noisy_columns(kind: str) -> list[str]:
    extra = [] if kind == "postgresql" else NOISY["sized"]
    return [*NOISY["common"], *extra, *(NOISY["sqlite"] if kind == "sqlite" else [])]


def test_types_stored_under_another_name_are_not_drift_but_a_real_change_is(
    db_url: URL, tmp_path: Path
) -> None:
    kind = db_url.get_backend_name()
    columns = noisy_columns(kind)
    created = ",\n        ".join([*columns, WIDENED[0]])
    body = (
        "from sqlalchemy.dialects import postgresql\n"
        f'op.create_table(\n        "things",\n        {created},\n    )'
    )
    ini = make_project(tmp_path / "p", (Rev("n1", None, "noisy types", body),))
    models = ", ".join([*columns, WIDENED[1]])
    env = ini.parent / "migrations" / "env.py"
    env.write_text(
        env.read_text().replace(
            "target_metadata = None",
            "import sqlalchemy as sa\nfrom sqlalchemy.dialects import postgresql\n\n"
            f'target_metadata = sa.MetaData()\nsa.Table("things", target_metadata, {models})',
        )
    )
    migrator = AutoMigrator(ini, url=db_url)
    upgrade(migrator)
    metadata = sa.MetaData()
    namespace = {"sa": sa, "postgresql": postgresql}
    sa.Table("things", metadata, *eval(f"[{models}]", namespace))

    report = anyio.run(drift, migrator)

    assert report.at_head
    [line] = report.differences
    assert line.startswith("modify_type things.name VARCHAR(50)")
    assert line.endswith(" -> VARCHAR(100)")
    with pytest.raises(AssertionError, match=r"modify_type things\.name"):
        assert_models_match(migrator, metadata)


def test_the_command_on_a_group_names_each_database(tmp_path: Path, sqlite_url: URL) -> None:
    from tests.test_group import multidb_project

    other = sqlite_url.set(database=f"{sqlite_url.database}.2")
    ini = multidb_project(tmp_path / "proj", {"engine1": sqlite_url, "engine2": other})
    env = ini.parent / "migrations" / "env.py"
    models = (
        "import sqlalchemy as sa\n\n"
        "accounts, events = sa.MetaData(), sa.MetaData()\n"
        'sa.Table("accounts", accounts, sa.Column("id", sa.Integer, primary_key=True))\n'
        'sa.Table("events", events, sa.Column("id", sa.Integer, primary_key=True){extra})\n'
        'target_metadata = {{"engine1": accounts, "engine2": events}}\n'
    )
    env.write_text(env.read_text().replace("target_metadata = {}\n", models.format(extra="")))
    assert run_cli("-c", str(ini), "upgrade").returncode == 0

    clean = run_cli("-c", str(ini), "drift", "--json")
    env.write_text(
        env.read_text().replace(
            'primary_key=True))\ntarget_metadata = {"engine1"',
            'primary_key=True), sa.Column("kind", sa.String(20)))\ntarget_metadata = {"engine1"',
        )
    )
    drifted = run_cli("-c", str(ini), "drift")
    helper = MigratorGroup.from_multidb(ini)

    assert clean.returncode == 0, clean.stdout + clean.stderr
    reports = json.loads(clean.stdout)["databases"]
    assert {name: r["differences"] for name, r in reports.items()} == {
        "engine1": [],
        "engine2": [],
    }
    assert drifted.returncode == DRIFT
    assert "add_column events.kind VARCHAR(20)" in drifted.stdout
    assert drifted.stdout.startswith("engine1: ")
    assert "\nengine2: " in drifted.stdout
    with pytest.raises(AssertionError, match=r"engine2: .*\nadd_column events\.kind"):
        assert_no_drift(helper)


# -- History(drift="warn"): after each upgrade --------------------------------------


def test_drift_warn_after_an_upgrade_names_each_difference_and_still_serves(
    sqlite_url: URL, tmp_path: Path, fresh_models: None, caplog: pytest.LogCaptureFixture
) -> None:
    ini, url = example_project(tmp_path / "app", sqlite_url)
    models = ini.parent / "models.py"
    unique_name = "    name: Mapped[str] = mapped_column(sa.String(100), unique=True)\n"
    models.write_text(
        models.read_text().replace(
            unique_name, unique_name + "    country: Mapped[str] = mapped_column(sa.String(2))\n"
        )
    )
    migrator = AutoMigrator(ini, url=url, history=History(drift="warn"))

    status = anyio.run(migrator.run)

    assert status.state is MigrationState.READY
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Drift:")]
    assert said == [f"Drift: the schema differs from env.py's target_metadata: {COUNTRY}"]


# -- an index's column directions, which SQLite's and MariaDB's reflection drops -----

# SQLAlchemy reflects DESC on PostgreSQL only; on SQLite and MariaDB the
# catalog (PRAGMA index_xinfo, information_schema.statistics) says it.
SORTED_TABLE = """
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("player", sa.String(20)),
        sa.Column("points", sa.Integer),
        sa.Column("at", sa.Integer),
    )
    op.create_index("ix_best", "scores", ["player", sa.text("points DESC")])
    op.create_index("ix_latest", "scores", [sa.text("at DESC")], unique=True)
    op.create_index("ix_flat", "scores", ["points", "at"])
"""


def sorted_models() -> sa.MetaData:
    metadata = sa.MetaData()
    scores = sa.Table(
        "scores",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("player", sa.String(20)),
        sa.Column("points", sa.Integer),
        sa.Column("at", sa.Integer),
        sa.Index("ix_best", "player", sa.text("points DESC")),
    )
    sa.Index("ix_latest", scores.c.at.desc(), unique=True)
    sa.Index("ix_flat", scores.c.points, sa.text("at DESC"))  # the database's is ascending
    return metadata


def test_an_index_with_desc_columns_as_declared_is_not_drift_but_a_direction_change_is(
    db_url: URL, tmp_path: Path
) -> None:
    ini = make_project(tmp_path / "p", (Rev("s1", None, "sorted indexes", SORTED_TABLE),))
    migrator = AutoMigrator(ini, url=db_url)
    upgrade(migrator)

    report = anyio.run(lambda: drift(migrator, metadata=sorted_models()))

    assert report.at_head
    assert sorted(report.differences) == [
        "add_index ix_flat on scores (points, at DESC)",
        "remove_index ix_flat on scores (points, at)",
    ]


# -- a real history whose models match by MLflow's own test: MLflow's ---------------

# MLflow starts a database with its first models' create_all(), then runs its
# revisions (mlflow/store/db/utils.py, _initialize_tables): its first revision,
# 451aebb31d03, alters `metrics`. The project gets one revision before it
# that does the same create_all().
MLFLOW_START = '''"""MLflow's initial tables, as _initialize_tables() creates them first."""
from alembic import op
from mlflow.store.tracking.dbmodels.initial_models import Base

revision = "mlflow_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    Base.metadata.create_all(op.get_bind())


def downgrade():
    pass
'''
# MLflow's models: its env.py's Base.metadata, with the three modules that
# declare tables on it imported, as mlflow/store/db/utils.py does.
MLFLOW_MODELS = (
    "import mlflow.store.model_registry.dbmodels.models\n"
    "import mlflow.store.tracking.dbmodels.models\n"
    "import mlflow.store.workspace.dbmodels.models\n"
    "from mlflow.store.db.base_sql_model import Base\n\n"
    "target_metadata = Base.metadata"
)

# Where MLflow 3.17.2's revisions and its models disagree, each in its own
# files. MLflow's test of the two (tests/store/tracking/
# test_sqlalchemy_store_schema.py, test_store_generated_schema_matches_base)
# compares with compare_type=False, drops every add_index, remove_index and
# add_fk, and runs on SQLite only: none of these reaches it.
MLFLOWS_OWN = [
    # 770bee3ae1dd creates String(20); models.py's SqlAssessments says String(50).
    "modify_type assessments.assessment_type VARCHAR(20) -> VARCHAR(50)",
    # cfd24bdc0731 makes it Enum(<5 statuses>, native_enum=False): VARCHAR(9), "SCHEDULED";
    # SqlRun says String(20).
    "modify_type runs.status VARCHAR(9) -> VARCHAR(20)",
    # 1b5f0d9ad7c1 and 7d34483879f0 create these workspace indexes; no model declares them.
    "remove_index idx_experiments_workspace on experiments (workspace)",
    "remove_index idx_experiments_workspace_creation_time on experiments"
    " (workspace, creation_time)",
    "remove_index idx_registered_models_workspace on registered_models (workspace)",
    "remove_index idx_model_version_tags_workspace_name_version on model_version_tags"
    " (workspace, name, version)",
    "remove_index idx_registered_model_tags_workspace_name on registered_model_tags"
    " (workspace, name)",
    # SqlIssue declares it; 76601a5f987d, which creates `issues`, does not.
    "add_index index_issues_created_by on issues (created_by)",
    # SqlInputTag declares ForeignKey("inputs.input_uuid"); 7f2a7d5fae7d makes none, and
    # could not on PostgreSQL: inputs.input_uuid is not unique.
    "add_fk (unnamed) on input_tags (input_uuid) -> inputs.input_uuid",
    # 867495a8f9d4 indexes request_id; the models' Index(f"index_{__tablename__}_request_id")
    # names no column (create_all() fails on it: CREATE INDEX ... ON trace_tags ()).
    "remove_index index_trace_tags_request_id on trace_tags (request_id)",
    "add_index index_trace_tags_request_id on trace_tags ()",
    "remove_index index_trace_request_metadata_request_id on trace_request_metadata (request_id)",
    "add_index index_trace_request_metadata_request_id on trace_request_metadata ()",
]
MLFLOWS_OWN_ON_MYSQL = [
    # 4465047574b1 alters it to MEDIUMTEXT on MySQL; SqlDataset says UnicodeText.
    "modify_type datasets.dataset_schema MEDIUMTEXT -> TEXT",
    # 7f2a7d5fae7d: Text().with_variant(MEDIUMTEXT, "mysql"); SqlDataset says UnicodeText.
    "modify_type datasets.dataset_profile MEDIUMTEXT -> TEXT",
    # a1b2c3d4e5f6: Text().with_variant(LONGTEXT, "mysql"); SqlSpan says Text.
    "modify_type spans.content LONGTEXT -> TEXT",
    # 5d2d30f0abce renames function_fullname with alter_column(existing_type=String(500))
    # and no existing_nullable: on MySQL that is CHANGE ... VARCHAR(500) NULL.
    "modify_nullable jobs.job_name NULL -> NOT NULL",
]


# SQLAlchemy 2.0 (not 2.1) reflects these ids on SQLite and MariaDB with no
# Identity, which the models declare: Alembic's autogenerate reports them,
# whatever its own version (seen from 1.13.2 to 1.16.5, under `nox -s floors`).
def sqlalchemy_version() -> tuple[int, ...]:
    """SQLAlchemy's major and minor version."""
    return tuple(int(part) for part in sa.__version__.split(".")[:2])


MLFLOWS_OWN_ON_SQLALCHEMY_20 = [
    "modify_default sql_assessment_daily_rollups.id (none) -> Identity()",
    "modify_default sql_span_cost_daily_rollups.id (none) -> Identity()",
    "modify_default sql_trace_metric_daily_rollups.id (none) -> Identity()",
]


def mlflow_project(root: Path) -> Path:
    """MLflow's revision files after its create_all() start, and MLflow's models in env.py."""
    ini = corpus_project("mlflow", root)
    versions = ini.parent / "migrations" / "versions"
    first = versions / "451aebb31d03_add_metric_step.py"
    assert "down_revision = None" in first.read_text()
    first.write_text(
        first.read_text().replace("down_revision = None", 'down_revision = "mlflow_initial"')
    )
    (versions / "mlflow_initial.py").write_text(MLFLOW_START)
    env = ini.parent / "migrations" / "env.py"
    assert "target_metadata = None" in env.read_text()
    env.write_text(env.read_text().replace("target_metadata = None", MLFLOW_MODELS))
    return ini


def test_mlflows_history_at_head_differs_from_its_models_only_where_mlflow_does(
    db_url: URL, tmp_path: Path
) -> None:
    # On SQLite and MariaDB idx_mcp_server_versions_latest (a8b9c0d1e2f3:
    # text("version_major DESC"), ...) is reflected without DESC: taken as equal
    # from the catalog, as on PostgreSQL.
    ini = mlflow_project(tmp_path / "mlflow")
    mysql = db_url.get_backend_name() == "mysql"

    upgraded = cli(ini, db_url, "upgrade")
    drifted = cli(ini, db_url, "drift", "--json")

    assert upgraded.returncode == 0, upgraded.stderr
    assert "(68 revision(s) applied" in upgraded.stderr  # 67 of MLflow, and its start
    assert drifted.returncode == DRIFT, drifted.stderr
    report = json.loads(drifted.stdout)
    assert report["at_head"] is True
    assert report["revisions"] == ["dc11669786a5"]
    old = db_url.get_backend_name() != "postgresql" and sqlalchemy_version() < (2, 1)
    assert sorted(report["differences"]) == sorted(
        MLFLOWS_OWN
        + (MLFLOWS_OWN_ON_MYSQL if mysql else [])
        + (MLFLOWS_OWN_ON_SQLALCHEMY_20 if old else [])
    )
