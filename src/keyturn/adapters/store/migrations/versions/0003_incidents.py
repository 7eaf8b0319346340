"""Incident-aware policy: scheduled starts, expiry warnings, alerts and the targets they concern.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add ``access_requests.start_at``, ``grants.warned_at``, ``alerts`` and ``alert_targets``."""
    with op.batch_alter_table("access_requests") as batch:
        batch.add_column(sa.Column("start_at", sa.DateTime))
        batch.create_index("ix_requests_status_start", ["status", "start_at"])
        batch.create_index(
            "ix_requests_requester_role_created", ["requester_id", "role", "created_at"]
        )
    with op.batch_alter_table("grants") as batch:
        batch.add_column(sa.Column("warned_at", sa.DateTime))
    op.create_table(
        "alerts",
        sa.Column("fingerprint", sa.String(160), primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("severity", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("summary", sa.Text),
        sa.Column("starts_at", sa.DateTime, nullable=False),
        sa.Column("ends_at", sa.DateTime),
        sa.Column("received_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "alert_targets",
        sa.Column(
            "fingerprint",
            sa.String(160),
            sa.ForeignKey("alerts.fingerprint", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("target", sa.String(64), primary_key=True),
    )
    op.create_index("ix_alert_targets_target", "alert_targets", ["target"])


def downgrade() -> None:
    """Drop what :func:`upgrade` added."""
    op.drop_index("ix_alert_targets_target", "alert_targets")
    op.drop_table("alert_targets")
    op.drop_table("alerts")
    with op.batch_alter_table("grants") as batch:
        batch.drop_column("warned_at")
    with op.batch_alter_table("access_requests") as batch:
        batch.drop_index("ix_requests_requester_role_created")
        batch.drop_index("ix_requests_status_start")
        batch.drop_column("start_at")
