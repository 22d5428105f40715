"""What the end-to-end tests share: servers' command lines, the example's extra revisions."""

from __future__ import annotations

from pathlib import Path

BROKEN_0005 = '''"""add a column, then break

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("authors", sa.Column("born", sa.Integer))
    raise RuntimeError("0005 is broken on purpose")


def downgrade() -> None:
    pass
'''


SLOW_0005 = '''"""wait for the test's release file

Revision ID: 0005
Revises: 0004
"""
import os
import time

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    while not os.path.exists(os.environ["AM_RELEASE"]):
        time.sleep(0.01)


def downgrade() -> None:
    pass
'''


def gunicorn(app_dir: Path, workers: int) -> list[str]:
    return [
        "gunicorn",
        "app:app",
        "--chdir",
        str(app_dir),
        "-w",
        str(workers),
        "-k",
        "uvicorn_worker.UvicornWorker",
        "-b",
        "127.0.0.1:{port}",
    ]


def hypercorn(*extra: str) -> list[str]:
    return ["hypercorn", "app:app", "--bind", "127.0.0.1:{port}", *extra]


def granian(app_dir: Path, *extra: str) -> list[str]:
    return [
        "granian",
        "--interface",
        "asgi",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--working-dir",
        str(app_dir),
        *extra,
        "app:app",
    ]
