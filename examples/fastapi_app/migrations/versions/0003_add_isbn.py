"""add isbn to books

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("books", sa.Column("isbn", sa.String(20), nullable=True))
    op.create_index("ix_books_isbn", "books", ["isbn"])


def downgrade() -> None:
    op.drop_index("ix_books_isbn", table_name="books")
    op.drop_column("books", "isbn")
