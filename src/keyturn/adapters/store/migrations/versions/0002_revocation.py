"""Revocation guarantees: shared privileges, retry times, standing-access snapshots.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``grants.privilege``/``grants.retry_at`` and the ``standing_snapshots`` table."""
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("privilege", sa.String(1024)))
        batch.add_column(sa.Column("retry_at", sa.DateTime))
        batch.create_index("ix_grants_privilege", ["provider", "privilege", "user_id", "status"])
    op.create_table(
        "standing_snapshots",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("taken_at", sa.DateTime, nullable=False, index=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("privilege", sa.String(1024), nullable=False),
        sa.Column("members", sa.JSON, nullable=False),
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    op.drop_table("standing_snapshots")
    with op.batch_alter_table("grants") as batch:
        batch.drop_index("ix_grants_privilege")
        batch.drop_column("retry_at")
        batch.drop_column("privilege")
