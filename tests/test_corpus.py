"""Real histories from PyPI packages: heads read from the text equal Alembic's, nothing imported.

The fast path was built on synthetic files; these are the files third-party
projects really ship (annotated assignments, merges, long docstrings,
revision files importing the package). A start at head, in a fresh process
with nothing remembered, must be one query: neither Alembic nor any revision
file (nor the package they import) is imported.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from automigrator.scripts import _plainheads
from automigrator.scripts._configfile import read_settings
from tests.corpus import CORPUS, alembic_heads, corpus_project, stamp


@functools.cache
def expected_heads(name: str, root: Path) -> list[str]:
    return alembic_heads(corpus_project(name, root / name))


COLD_START = """
import json, sys, anyio
from automigrator import AutoMigrator
migrator = AutoMigrator(sys.argv[1], url=sys.argv[2])
status = anyio.run(migrator.run)
print(json.dumps({
    "state": status.state.value,
    "heads": sorted(status.heads),
    "imported": sorted(m for m in ("alembic", sys.argv[3]) if m in sys.modules),
}))
"""


@pytest.mark.parametrize("name", list(CORPUS))
def test_a_real_history_at_head_needs_neither_alembic_nor_its_files(
    name: str, db_url: URL, tmp_path_factory: pytest.TempPathFactory
) -> None:
    heads = expected_heads(name, tmp_path_factory.getbasetemp() / "corpus")
    ini = corpus_project(name, tmp_path_factory.mktemp(name))
    stamp(db_url, heads)

    plain = _plainheads.read(read_settings(ini))
    argv = [sys.executable, "-c", COLD_START, str(ini), db_url.render_as_string(False)]
    out = subprocess.run([*argv, CORPUS[name][0]], capture_output=True, text=True, check=True)

    assert plain is not None
    assert list(plain.heads) == heads
    start = json.loads(out.stdout.splitlines()[-1])
    assert start == {"state": "ready", "heads": heads, "imported": []}


@pytest.mark.parametrize("name", list(CORPUS))
@pytest.mark.parametrize("written", ["package", "version_locations"])
def test_a_real_history_named_as_alembic_allows_is_read_without_importing_anything(
    name: str, written: str, sqlite_url: URL, tmp_path_factory: pytest.TempPathFactory
) -> None:
    # Prefect's own notation (pkg:dir, which Alembic resolves by importing the
    # package: 1.3 s at head), and version_locations with %(here)s: the files'
    # text still says the heads, with nothing imported.
    heads = expected_heads(name, tmp_path_factory.getbasetemp() / "corpus")
    root = tmp_path_factory.mktemp(f"{name}-{written}")
    package = f"amcorpus_{name}"
    copied = corpus_project(name, root / package)
    (root / package / "__init__.py").write_text("raise RuntimeError('imported')\n")
    ini = root / "alembic.ini"
    if written == "package":
        ini.write_text(f"[alembic]\nscript_location = {package}:migrations\n")
    else:
        history = root / "history"
        (copied.parent / "migrations" / "versions").rename(history)
        ini.write_text(
            f"[alembic]\nscript_location = %(here)s/{package}/migrations\n"
            "path_separator = os\nversion_locations = %(here)s/history\n"
        )
    stamp(sqlite_url, heads)
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [sys.executable, "-c", COLD_START, str(ini), sqlite_url.render_as_string(False)]

    runs = [
        subprocess.run([*argv, package], capture_output=True, text=True, check=True, env=env)
        for _ in ("cold", "warm")
    ]

    for run in runs:
        assert json.loads(run.stdout.splitlines()[-1]) == {
            "state": "ready",
            "heads": heads,
            "imported": [],
        }, run.stderr
