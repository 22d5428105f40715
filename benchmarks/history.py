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


def _branch_points(revisions: int) -> set[int]:
    # Two revisions on one parent, then a merge: once per 100 revisions (and
    # once in short histories). Both sides change the table the parent made,
    # so either order works.
    points = {i for i in range(49, revisions - 2, 100)}
    if revisions <= 20 and revisions > 7:
        points.add(5)
    return points


def make_history(root: Path, revisions: int, *, merges: bool = False) -> Path:
    """An Alembic project (generic template) with ``revisions`` revisions; returns the ini.

    A chain, or with ``merges`` a chain with a branch and its merge now and then.
    """
    ini = root / "alembic.ini"
    command.init(Config(str(ini), stdout=io.StringIO()), str(root / "migrations"), "generic")
    versions = root / "migrations" / "versions"
    branches = _branch_points(revisions) if merges else set()
    parents: dict[int, object] = {}
    for i in range(revisions):
        if i - 1 in branches:
            parents[i] = f"r{i - 2:04d}"  # the second side of the branch
        elif i - 2 in branches:
            parents[i] = (f"r{i - 2:04d}", f"r{i - 1:04d}")  # the merge
        else:
            parents[i] = f"r{i - 1:04d}" if i else None
        rev = f"r{i:04d}"
        text = TEMPLATE.format(i=i, rev=rev, down=parents[i], body=_body(i))
        (versions / f"{rev}.py").write_text(text)
    return ini
