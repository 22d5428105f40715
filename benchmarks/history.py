"""Synthetic Alembic histories for the benchmarks: a real project, real DDL."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config

TEMPLATE = '''"""step {i}

Revision ID: {rev}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = {rev!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
    {body}


def downgrade() -> None:
    pass
'''


def _body(i: int) -> str:
    # Every fourth revision creates a table; the next three change it: a
    # column, an index, another column. Tables, columns and indexes, as in life.
    table = f"t{i - i % 4:04d}"
    step = i % 4
    if step == 0:
        return (
            f"op.create_table({table!r}, sa.Column('id', sa.Integer, primary_key=True), "
            "sa.Column('name', sa.String(50)))"
        )
    if step == 2:
        return f"op.create_index('ix_{table}_name', {table!r}, ['name'])"
    return f"op.add_column({table!r}, sa.Column('c{i}', sa.Integer))"


def make_history(root: Path, revisions: int) -> Path:
    """An Alembic project (generic template) with a chain of ``revisions``; returns the ini."""
    ini = root / "alembic.ini"
    command.init(Config(str(ini), stdout=io.StringIO()), str(root / "migrations"), "generic")
    versions = root / "migrations" / "versions"
    down = None
    for i in range(revisions):
        rev = f"r{i:04d}"
        text = TEMPLATE.format(i=i, rev=rev, down=down, body=_body(i))
        (versions / f"{rev}.py").write_text(text)
        down = rev
    return ini
