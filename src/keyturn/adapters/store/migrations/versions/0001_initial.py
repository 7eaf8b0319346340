"""Initial schema: access requests, reviews, grants, audit chain.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the tables of Keyturn 0.1."""
    op.create_table(
        "access_requests",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("requester_id", sa.String(64), nullable=False, index=True),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("duration_s", sa.Integer, nullable=False),
        sa.Column("justification", sa.Text, nullable=False),
        sa.Column("ticket", sa.Text),
        sa.Column("ssh_public_key", sa.Text),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("decision", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("request_id", sa.String(40), sa.ForeignKey("access_requests.id"), nullable=False),
        sa.Column("reviewer_id", sa.String(64), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("request_id", "reviewer_id", name="uq_reviews_request_reviewer"),
    )
    op.create_table(
        "grants",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column(
            "request_id",
            sa.String(40),
            sa.ForeignKey("access_requests.id"),
            nullable=False,
            unique=True,
        ),
        sa.Column("user_id", sa.String(64), nullable=False, index=True),
        sa.Column("role", sa.String(64), nullable=False),
        sa.Column("target", sa.String(64), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("not_before", sa.DateTime, nullable=False),
        sa.Column("not_after", sa.DateTime, nullable=False),
        sa.Column("serial", sa.BigInteger, unique=True),
        sa.Column("credentials", sa.JSON, nullable=False),
        sa.Column("end_reason", sa.String(16)),
        sa.Column("ended_by", sa.String(64)),
        sa.Column("ended_at", sa.DateTime),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.Index("ix_grants_status_not_after", "status", "not_after"),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("subject", sa.JSON, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    head = op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )
    # The head row exists from the start, so the first appends already have a row to lock
    # (two writers on an empty PostgreSQL chain would otherwise both take seq 1).
    op.bulk_insert(head, [{"id": 1, "seq": 0, "hash": "0" * 64}])


def downgrade() -> None:
    """Drop everything (development only: the audit chain is lost)."""
    for table in ("audit_head", "audit_events", "grants", "reviews", "access_requests"):
        op.drop_table(table)
