"""Index for listing grants newest first.

``GET /v1/grants`` (and ``keyturn grants``) orders by ``created_at, id``; without an index the
store sorted every grant (5.8 s over 1,000,000 grants in ``bench/restart.py``'s store).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``ix_grants_created``."""
    op.create_index("ix_grants_created", "grants", ["created_at", "id"])


def downgrade() -> None:
    """Drop ``ix_grants_created``."""
    op.drop_index("ix_grants_created", table_name="grants")
