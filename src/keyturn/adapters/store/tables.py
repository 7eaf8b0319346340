"""SQLAlchemy tables of the store (the schema Alembic migrations create)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Stores aware datetimes as naive UTC; returns aware UTC datetimes."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass aware UTC datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # pragma: no cover - drivers return datetimes
            value = datetime.fromisoformat(value)
        result: datetime = value.replace(tzinfo=UTC)
        return result


access_requests = sa.Table(
    "access_requests",
    metadata,
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
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("start_at", UTCDateTime),
    sa.Column("break_glass", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_requests_status_start", "status", "start_at"),
    sa.Index("ix_requests_requester_role_created", "requester_id", "role", "created_at"),
)

reviews = sa.Table(
    "reviews",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("request_id", sa.String(40), sa.ForeignKey("access_requests.id"), nullable=False),
    sa.Column("reviewer_id", sa.String(64), nullable=False),
    sa.Column("verdict", sa.String(16), nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("request_id", "reviewer_id", name="uq_reviews_request_reviewer"),
)

grants = sa.Table(
    "grants",
    metadata,
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
    sa.Column("not_before", UTCDateTime, nullable=False),
    sa.Column("not_after", UTCDateTime, nullable=False),
    sa.Column("serial", sa.BigInteger, unique=True),
    sa.Column("credentials", sa.JSON, nullable=False),
    sa.Column("end_reason", sa.String(16)),
    sa.Column("ended_by", sa.String(64)),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("privilege", sa.String(1024)),
    sa.Column("retry_at", UTCDateTime),
    sa.Column("warned_at", UTCDateTime),
    sa.Column("break_glass", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_grants_status_not_after", "status", "not_after"),
    sa.Index("ix_grants_created", "created_at", "id"),
    sa.Index("ix_grants_privilege", "provider", "privilege", "user_id", "status"),
)

standing_snapshots = sa.Table(
    "standing_snapshots",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("taken_at", UTCDateTime, nullable=False, index=True),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("privilege", sa.String(1024), nullable=False),
    sa.Column("members", sa.JSON, nullable=False),
)

alerts = sa.Table(
    "alerts",
    metadata,
    sa.Column("fingerprint", sa.String(160), primary_key=True),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("severity", sa.String(64)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("summary", sa.Text),
    sa.Column("starts_at", UTCDateTime, nullable=False),
    sa.Column("ends_at", UTCDateTime),
    sa.Column("received_at", UTCDateTime, nullable=False),
)

alert_targets = sa.Table(
    "alert_targets",
    metadata,
    sa.Column(
        "fingerprint",
        sa.String(160),
        sa.ForeignKey("alerts.fingerprint", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("target", sa.String(64), primary_key=True),
    sa.Index("ix_alert_targets_target", "target"),
)

break_glass_kits = sa.Table(
    "break_glass_kits",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Column("spent_at", UTCDateTime),
    sa.Column("spent_by", sa.String(40)),
    sa.Column("retired_at", UTCDateTime),
)

post_incident_reviews = sa.Table(
    "post_incident_reviews",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("justification", sa.Text, nullable=False),
    sa.Column("used_at", UTCDateTime, nullable=False),
    sa.Column("opened_at", UTCDateTime, nullable=False),
    sa.Column("due_at", UTCDateTime, nullable=False),
    sa.Column("reviewers", sa.JSON, nullable=False),
    sa.Column("grant_id", sa.String(40)),
    sa.Column("request_id", sa.String(40)),
    sa.Column("record_id", sa.String(40), unique=True),
    sa.Column("kit_id", sa.String(40)),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("verdict", sa.String(16)),
    sa.Column("comment", sa.Text),
    sa.Column("closed_by", sa.String(64)),
    sa.Column("closed_at", UTCDateTime),
    sa.Column("overdue_alerted_at", UTCDateTime),
    sa.Column("imported_by", sa.String(64)),
    sa.Column("findings", sa.JSON, nullable=False),
    sa.Index("ix_pir_status_due", "status", "due_at"),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("grant_id", sa.String(40), nullable=False),
    sa.Column("request_id", sa.String(40), nullable=False),
    sa.Column("user_id", sa.String(64), nullable=False),
    sa.Column("role", sa.String(64), nullable=False),
    sa.Column("target", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("recording", sa.String(255), nullable=False),
    sa.Column("client", sa.String(128), nullable=False),
    sa.Column("gateway", sa.String(128), nullable=False, server_default=""),
    sa.Column("command", sa.Text),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("ended_at", UTCDateTime),
    sa.Column("end_reason", sa.String(32)),
    sa.Column("exit_status", sa.Integer),
    sa.Column("recording_sha256", sa.String(64)),
    sa.Column("recording_bytes", sa.BigInteger),
    sa.Index("ix_sessions_grant", "grant_id"),
    sa.Index("ix_sessions_user_started", "user_id", "started_at"),
    sa.Index("ix_sessions_status", "status"),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(128), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.JSON, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)

audit_head = sa.Table(
    "audit_head",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
