"""seed the catalogue (data migration)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Lightweight table stand-ins: a data migration must not import the models,
# which describe the schema of the newest revision, not of this one.
authors = sa.table("authors", sa.column("id", sa.Integer), sa.column("name", sa.String))
books = sa.table(
    "books",
    sa.column("title", sa.String),
    sa.column("author_id", sa.Integer),
    sa.column("isbn", sa.String),
)

CATALOGUE = {
    "Ursula K. Le Guin": [("A Wizard of Earthsea", "9780553383041")],
    "Italo Calvino": [("Invisible Cities", "9780156453806")],
}


def upgrade() -> None:
    conn = op.get_bind()
    for name, titles in CATALOGUE.items():
        conn.execute(authors.insert().values(name=name))
        author_id = conn.execute(
            sa.select(authors.c.id).where(authors.c.name == name)
        ).scalar_one()
        conn.execute(
            books.insert(),
            [{"title": t, "author_id": author_id, "isbn": isbn} for t, isbn in titles],
        )


def downgrade() -> None:
    conn = op.get_bind()
    conn.execute(books.delete())
    conn.execute(authors.delete())
