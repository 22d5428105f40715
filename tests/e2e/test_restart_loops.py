"""A server that starts a worker whose start-up failed again, for ever: uvicorn
0.30 to 0.49 with ``--workers`` (the template pins 0.49, Mealie 0.32). The
failing revision runs once; each restart refuses it at once, and says why."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from automigrator.database._connections import sync_url
from tests.conftest import rows
from tests.e2e.conftest import uvicorn
from tests.e2e.helpers import BROKEN_0005
from tests.e2e.server import serve

pytestmark = pytest.mark.e2e

OLD_UVICORN = "0.49.0"


@pytest.fixture(scope="session")
def old_uvicorn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uvicorn 0.49 in a folder of its own, put first on the workers' path."""
    target = tmp_path_factory.mktemp("uvicorn-0.49")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps"]
    subprocess.run(
        [*pip, "--target", str(target), f"uvicorn=={OLD_UVICORN}"],
        check=True,
        timeout=300,
    )
    return target


def test_a_failing_revision_runs_once_while_the_server_restarts_its_workers(
    example: tuple[Path, URL], old_uvicorn: Path
) -> None:
    app_dir, url = example
    (app_dir / "migrations" / "versions" / "0005_broken.py").write_text(BROKEN_0005)
    env = {
        "DATABASE_URL": url.render_as_string(hide_password=False),
        "PYTHONPATH": str(old_uvicorn),
    }
    warning = f"uvicorn {OLD_UVICORN} restarts a worker whose start-up failed, for ever"

    with serve([*uvicorn(app_dir), "--workers", "2"], env=env) as server:
        # Two workers, then four restarts at least: each start says it.
        assert server.wait_for(warning, times=6), server.log
        # Every start names the failure. Waited for, not counted at once: with
        # two workers the sixth warning may come before the fifth failure.
        assert server.wait_for("0005 is broken on purpose", times=5), server.log
        attempts = rows(
            sync_url(url), "SELECT outcome FROM automigrator_history WHERE revision = '0005'"
        )

    # Run once, whatever the restarts: "failed" where its DDL rolled back
    # (PostgreSQL), "partial" where the column stayed (SQLite).
    assert len(attempts) == 1, attempts
    assert "Application startup complete." not in server.log
