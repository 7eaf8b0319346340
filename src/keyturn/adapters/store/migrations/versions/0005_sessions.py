"""Sessions recorded by the SSH gateway.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``sessions``."""
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("grant_id", sa.String(40), nullable=False),
        sa.Column("request_id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("recording", sa.String(255), nullable=False),
        sa.Column("client", sa.String(128), nullable=False),
        sa.Column("gateway", sa.String(128), nullable=False, server_default=""),
        sa.Column("command", sa.Text),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("end_reason", sa.String(32)),
        sa.Column("exit_status", sa.Integer),
        sa.Column("recording_sha256", sa.String(64)),
        sa.Column("recording_bytes", sa.BigInteger),
    )
    op.create_index("ix_sessions_grant", "sessions", ["grant_id"])
    op.create_index("ix_sessions_user_started", "sessions", ["user_id", "started_at"])
    op.create_index("ix_sessions_status", "sessions", ["status"])


def downgrade() -> None:
    """Drop ``sessions``."""
    op.drop_table("sessions")
