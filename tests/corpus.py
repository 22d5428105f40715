"""Real revision histories, as third-party PyPI packages ship them.

Each is copied, unchanged, into an Alembic project of Alembic's generic
template (the package's own env.py wants the package's own settings); its
revision files still import the package, as real ones do. Versions are pinned
in pyproject.toml's ``test`` extra, so the corpus does not move under the tests.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL

from tests.project import make_project

CORPUS = {
    # name: (package, its version folder inside the package)
    "optuna": ("optuna", "storages/_rdb/alembic/versions"),
    "mlflow": ("mlflow", "store/db_migrations/versions"),
    "dagster": ("dagster", "_core/storage/alembic/versions"),
    "prefect": ("prefect", "server/database/_migrations/versions/postgresql"),
}


def corpus_project(name: str, root: Path, template: str = "generic") -> Path:
    """An Alembic project holding ``name``'s real revision files; returns its ini.

    ``template``: Alembic's template for env.py (``async`` for a history whose
    raw SQL wants asyncpg's placeholders, as Prefect's does)."""
    package, folder = CORPUS[name]
    spec = importlib.util.find_spec(package)  # a top-level name: nothing is imported
    if spec is None or spec.origin is None:
        raise LookupError(f"{package} is not installed (pyproject.toml's test extra has it)")
    ini = make_project(root, (), template=template)
    versions = root / "migrations" / "versions"
    shutil.rmtree(versions)
    source = Path(spec.origin).parent / folder
    shutil.copytree(source, versions, ignore=shutil.ignore_patterns("__pycache__"))
    return ini


def alembic_heads(ini: Path) -> list[str]:
    """The heads as Alembic computes them: every file imported, in a process of its own.

    (The files import the package, whose import warnings the test process
    would take for errors.)
    """
    code = (
        "import io, json, sys\n"
        "from alembic.config import Config\n"
        "from alembic.script import ScriptDirectory\n"
        "cfg = Config(sys.argv[1], stdout=io.StringIO())\n"
        "print(json.dumps(sorted(ScriptDirectory.from_config(cfg).get_heads())))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ini)], capture_output=True, text=True, check=True
    )
    heads: list[str] = json.loads(out.stdout.splitlines()[-1])
    return heads


def stamp(url: URL, heads: list[str]) -> None:
    """Put the database at ``heads`` (the version table only, as a deployed one has)."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"
        )
        for head in heads:
            conn.execute(sa.text("INSERT INTO alembic_version VALUES (:v)"), {"v": head})
    engine.dispose()
