"""Build real Alembic projects for tests, from Alembic's own templates, unchanged."""

from __future__ import annotations

import io
import re
import textwrap
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from alembic import command
from alembic.config import Config

ALEMBIC = tuple(int(part) for part in version("alembic").split(".")[:2])
"""The installed Alembic's (major, minor): a few settings differ before 1.16."""

REVISION_TEMPLATE = '''"""{message}

Revision ID: {id}
Revises: {down}
"""
import sqlalchemy as sa
from alembic import op

revision = {id!r}
down_revision = {down!r}
branch_labels = None
depends_on = None{extra}


def upgrade() -> None:
{body}


def downgrade() -> None:
    pass
'''


@dataclass(frozen=True)
class Rev:
    """One revision file: its id, parent(s), message and upgrade() body."""

    id: str
    down: str | tuple[str, ...] | None
    message: str
    body: str
    post_deploy: bool = False
    """Written ``post_deploy = True``: a start leaves it for after the rollout."""


USERS = Rev(
    "r1",
    None,
    "create users table",
    """
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
    )
    """,
)
EMAIL = Rev("r2", "r1", "add email", 'op.add_column("users", sa.Column("email", sa.String(100)))')
SEED = Rev(
    "r3",
    "r2",
    "seed admin user",
    """
    users = sa.table("users", sa.column("name"), sa.column("email"))
    op.bulk_insert(users, [{"name": "admin", "email": "admin@example.com"}])
    """,
)
CHAIN = (USERS, EMAIL, SEED)
BROKEN = Rev(
    "r3",
    "r2",
    "half done then broken",
    """
    op.create_table("partial", sa.Column("id", sa.Integer, primary_key=True))
    raise RuntimeError("boom in r3")
    """,
)


def write_revision(project: Path, rev: Rev) -> None:
    body = textwrap.indent(textwrap.dedent(rev.body).strip(), "    ")
    extra = "\npost_deploy = True" if rev.post_deploy else ""
    text = REVISION_TEMPLATE.format(
        message=rev.message, id=rev.id, down=rev.down, body=body, extra=extra
    )
    (project / "migrations" / "versions" / f"{rev.id}.py").write_text(text)


def set_version_locations(ini: Path, folder: Path) -> None:
    """Point the ini's ``version_locations`` at ``folder``.

    (make_project has taken the inline comment off the separator line.)
    """
    text = ini.read_text()
    ini.write_text(text.replace("[alembic]\n", f"[alembic]\nversion_locations = {folder}\n", 1))


def make_project(
    root: Path, revisions: tuple[Rev, ...] = CHAIN, *, template: str = "generic"
) -> Path:
    """An Alembic project under root (alembic.ini + migrations/); returns the ini path."""
    ini = root / "alembic.ini"
    command.init(Config(str(ini), stdout=io.StringIO()), str(root / "migrations"), template)
    # Alembic before 1.16 reads its own template's "version_path_separator =
    # os  # Use os.pathsep..." whole, and refuses it once version_locations
    # is set: the line without its comment, as a user would fix it.
    text = ini.read_text()
    ini.write_text(
        re.sub(r"^((?:version_)?path_separator = \S+)[ \t]+#.*$", r"\1", text, flags=re.M)
    )
    for rev in revisions:
        write_revision(root, rev)
    return ini


def waiting(
    rev_id: str,
    down: str | None,
    then: str = "pass",
    before: str = "pass",
    *,
    autocommit: bool = False,
) -> Rev:
    """A revision that says it runs, waits for the test's signal, then runs ``then``.

    It runs ``before``, adds a line (its process id) to ``$AM_SIGNALS/<id>.running`` and waits
    for ``$AM_SIGNALS/<id>.go`` (up to 120 s, then fails): the test injects its
    fault in between. ``autocommit=True`` runs all of it in ``autocommit_block()``
    (outside any transaction, as a ``CREATE INDEX CONCURRENTLY`` runs).
    """
    body = f"""
    import os
    import time
    from pathlib import Path

    from alembic import context

    if context.is_offline_mode():
        return  # automigrator's lint renders it offline first: no signal, no wait
    {before}
    signals = Path(os.environ["AM_SIGNALS"])
    with open(signals / "{rev_id}.running", "a") as running:
        running.write(f"{{os.getpid()}}\\n")
    for _ in range(12000):
        if (signals / "{rev_id}.go").exists():
            break
        time.sleep(0.01)
    else:
        raise RuntimeError("the test never said go")
    {then}
    """
    if autocommit:
        inner = textwrap.indent(textwrap.dedent(body).strip(), "    ")
        body = f"with op.get_context().autocommit_block():\n{inner}\n"
    return Rev(rev_id, down, f"{rev_id} waits for the test", body)
