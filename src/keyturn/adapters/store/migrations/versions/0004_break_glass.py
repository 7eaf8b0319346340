"""Break-glass: flags on requests and grants, offline kits, post-incident reviews.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``break_glass`` to requests and grants, ``break_glass_kits`` and
    ``post_incident_reviews``."""
    for table in ("access_requests", "grants"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("break_glass", sa.Boolean, nullable=False, server_default=sa.false())
            )
    op.create_table(
        "break_glass_kits",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
        sa.Column("spent_at", sa.DateTime),
        sa.Column("spent_by", sa.String(40)),
        sa.Column("retired_at", sa.DateTime),
    )
    op.create_table(
        "post_incident_reviews",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("justification", sa.Text, nullable=False),
        sa.Column("used_at", sa.DateTime, nullable=False),
        sa.Column("opened_at", sa.DateTime, nullable=False),
        sa.Column("due_at", sa.DateTime, nullable=False),
        sa.Column("reviewers", sa.JSON, nullable=False),
        sa.Column("grant_id", sa.String(40)),
        sa.Column("request_id", sa.String(40)),
        sa.Column("record_id", sa.String(40), unique=True),
        sa.Column("kit_id", sa.String(40)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("verdict", sa.String(16)),
        sa.Column("comment", sa.Text),
        sa.Column("closed_by", sa.String(64)),
        sa.Column("closed_at", sa.DateTime),
        sa.Column("overdue_alerted_at", sa.DateTime),
        sa.Column("imported_by", sa.String(64)),
        sa.Column("findings", sa.JSON, nullable=False),
    )
    op.create_index("ix_pir_status_due", "post_incident_reviews", ["status", "due_at"])


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    op.drop_index("ix_pir_status_due", "post_incident_reviews")
    op.drop_table("post_incident_reviews")
    op.drop_table("break_glass_kits")
    for table in ("grants", "access_requests"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("break_glass")
