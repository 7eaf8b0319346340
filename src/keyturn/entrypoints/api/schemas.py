"""API bodies (pydantic) and rendering of domain objects to JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from keyturn.config import AlwaysOnConfig
from keyturn.domain.audit import AuditEvent, format_time
from keyturn.domain.break_glass import PostIncidentReview, ReviewVerdict
from keyturn.domain.durations import to_iso_duration
from keyturn.domain.history import AlwaysOnRow
from keyturn.domain.model import Grant, Review, decision_to_data
from keyturn.domain.sessions import Session
from keyturn.ports import StoredAlert
from keyturn.service.access import RequestView
from keyturn.service.standing import StandingReport


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccessRequestBody(_Body):
    """``POST /v1/requests``."""

    role: str = Field(max_length=64)
    target: str = Field(max_length=64)
    duration: str = Field(max_length=32, description="ISO 8601 duration, e.g. PT30M")
    justification: str = Field(max_length=20_000)
    ticket: str | None = Field(default=None, max_length=1000)
    ssh_public_key: str | None = Field(default=None, max_length=20_000)
    start: datetime | None = Field(
        default=None,
        description="RFC 3339 time with offset: activate then (a scheduled request)",
    )


class ExplainBody(_Body):
    """``POST /v1/policy/explain``: what would the policy decide, and why."""

    requester: str | None = Field(default=None, max_length=64, description="default: you")
    role: str = Field(max_length=64)
    target: str = Field(max_length=64)
    duration: str = Field(max_length=32, description="ISO 8601 duration, e.g. PT1H")
    justification: str = Field(default="", max_length=20_000)


class ExtendBody(_Body):
    """``POST /v1/grants/{id}/extend``."""

    duration: str = Field(max_length=32, description="ISO 8601 duration to add, e.g. PT30M")


class ReconcileBody(_Body):
    """``POST /v1/reconcile``."""

    dry_run: bool = False


class BreakGlassBody(_Body):
    """``POST /v1/break-glass``: emergency access without review (members of the role's
    break-glass group only)."""

    role: str = Field(max_length=64)
    target: str = Field(max_length=64)
    justification: str = Field(max_length=20_000)
    duration: str | None = Field(
        default=None, max_length=32, description="ISO 8601 duration; default: the role's cap"
    )
    ssh_public_key: str | None = Field(default=None, max_length=20_000)


class CloseReviewBody(_Body):
    """``POST /v1/break-glass/reviews/{id}/close``."""

    verdict: ReviewVerdict
    comment: str = Field(max_length=20_000)


class CommentBody(_Body):
    """Body of approve, deny and cancel."""

    comment: str | None = Field(default=None, max_length=5000)


def _time(value: Any) -> str | None:
    return format_time(value) if value is not None else None


def render_grant(grant: Grant, *, show_credentials: bool) -> dict[str, Any]:
    """A grant as JSON; credentials only for its owner."""
    return {
        "id": grant.id,
        "request_id": grant.request_id,
        "user": grant.user_id,
        "role": grant.role,
        "target": grant.target,
        "provider": grant.provider,
        "status": str(grant.status),
        "not_before": _time(grant.not_before),
        "not_after": _time(grant.not_after),
        "serial": grant.serial,
        "end_reason": str(grant.end_reason) if grant.end_reason else None,
        "ended_by": grant.ended_by,
        "ended_at": _time(grant.ended_at),
        "attempts": grant.attempts,
        "last_error": grant.last_error,
        "retry_at": _time(grant.retry_at),
        "privilege": grant.privilege,
        "break_glass": grant.break_glass,
        "credentials": dict(grant.credentials) if show_credentials else {},
    }


def render_post_incident_review(review: PostIncidentReview, now: datetime) -> dict[str, Any]:
    """A post-incident review of a break-glass use; ``overdue``: open and past ``due_at``."""
    return {
        "id": review.id,
        "mode": str(review.mode),
        "user": review.user_id,
        "role": review.role,
        "target": review.target,
        "justification": review.justification,
        "used_at": _time(review.used_at),
        "opened_at": _time(review.opened_at),
        "due_at": _time(review.due_at),
        "status": str(review.status),
        "overdue": review.overdue(now),
        "reviewers": list(review.reviewers),
        "grant_id": review.grant_id,
        "request_id": review.request_id,
        "record_id": review.record_id,
        "kit_id": review.kit_id,
        "imported_by": review.imported_by,
        "findings": list(review.findings),
        "verdict": str(review.verdict) if review.verdict else None,
        "comment": review.comment,
        "closed_by": review.closed_by,
        "closed_at": _time(review.closed_at),
    }


def render_standing(report: StandingReport) -> dict[str, Any]:
    """``keyturn report standing``: latest standing holders per privilege, and the series."""
    return {
        "privileges": [
            {
                "provider": s.provider,
                "privilege": s.privilege,
                "taken_at": _time(s.taken_at),
                "count": len(s.members),
                "members": list(s.members),
            }
            for s in report.latest
        ],
        "history": [
            {"taken_at": _time(at), "privilege": privilege, "count": count}
            for at, privilege, count in report.history
        ],
    }


def render_review(review: Review) -> dict[str, Any]:
    """A review as JSON."""
    return {
        "reviewer": review.reviewer_id,
        "verdict": str(review.verdict),
        "comment": review.comment,
        "at": _time(review.created_at),
    }


def render_request(view: RequestView, viewer_id: str) -> dict[str, Any]:
    """An access request with decision, reviews and grant."""
    r = view.request
    return {
        "id": r.id,
        "requester": r.requester_id,
        "role": r.role,
        "target": r.target,
        "duration": to_iso_duration(r.duration),
        "justification": r.justification,
        "ticket": r.ticket,
        "status": str(r.status),
        "break_glass": r.break_glass,
        "start_at": _time(r.start_at),
        "created_at": _time(r.created_at),
        "updated_at": _time(r.updated_at),
        "decision": decision_to_data(r.decision),
        "reviews": [render_review(x) for x in view.reviews],
        "grant": render_grant(view.grant, show_credentials=view.grant.user_id == viewer_id)
        if view.grant
        else None,
    }


def render_always_on(rows: list[AlwaysOnRow], settings: AlwaysOnConfig) -> dict[str, Any]:
    """``keyturn report always-on``: the definition used, then one row per requester and role."""
    return {
        "definition": {
            "timezone": settings.timezone,
            "workdays": list(settings.workdays),
            "start": settings.start.isoformat(timespec="minutes"),
            "end": settings.end.isoformat(timespec="minutes"),
            "window": to_iso_duration(settings.window),
            "threshold": settings.threshold,
        },
        "items": [
            {
                "user": row.user_id,
                "role": row.role,
                "coverage": round(row.coverage, 4),
                "elevated_working_hours": round(row.elevated_working_hours, 2),
                "working_hours": round(row.working_hours, 2),
                "days_elevated": row.days_elevated,
                "grants": row.grants,
            }
            for row in rows
        ],
    }


def _sender_time(value: datetime) -> str:
    """RFC 3339 UTC with only the precision the sender gave (``2026-11-17T02:45:03Z``)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def render_alert(stored: StoredAlert, *, firing: bool) -> dict[str, Any]:
    """An alert as JSON (``GET /v1/alerts``): ``status`` is whether it counts as firing now."""
    alert = stored.alert
    return {
        "fingerprint": alert.fingerprint,
        "source": alert.source,
        "name": alert.name,
        "severity": alert.severity,
        "status": "firing" if firing else "resolved",
        "labels": alert.labels,
        "summary": alert.summary,
        "starts_at": _sender_time(alert.starts_at),
        "ends_at": _sender_time(alert.ends_at) if alert.ends_at else None,
        "targets": list(stored.targets),
    }


def render_session(session: Session) -> dict[str, Any]:
    """A gateway session as JSON (``GET /v1/sessions``): times RFC 3339 UTC, ``ended_at``,
    ``end_reason`` and the recording's ``recording_sha256``/``recording_bytes`` null while it is
    live; ``recording`` is the file name relative to ``gateway.recordings_dir``."""
    return {
        "id": session.id,
        "grant_id": session.grant_id,
        "request_id": session.request_id,
        "user_id": session.user_id,
        "role": session.role,
        "target": session.target,
        "kind": str(session.kind),
        "command": session.command,
        "client": session.client,
        "status": str(session.status),
        "started_at": _time(session.started_at),
        "ended_at": _time(session.ended_at),
        "end_reason": str(session.end_reason) if session.end_reason else None,
        "exit_status": session.exit_status,
        "recording": session.recording,
        "recording_sha256": session.recording_sha256,
        "recording_bytes": session.recording_bytes,
    }


def render_session_detail(session: Session, commands: list[str]) -> dict[str, Any]:
    """A session with its command log (``GET /v1/sessions/{id}``): ``commands`` are the lines
    seen typed and echoed at an interactive prompt, each marked ``best_effort`` (history recall,
    completion and full-screen programs are not understood; the recording is authoritative)."""
    return {
        **render_session(session),
        "commands": [{"command": line, "best_effort": True} for line in commands],
    }


def render_event(event: AuditEvent) -> dict[str, Any]:
    """An audit event as JSON (exactly the hashed fields plus the hashes)."""
    return {
        "seq": event.seq,
        "at": format_time(event.at),
        "actor": event.actor,
        "action": event.action,
        "subject": event.subject,
        "details": event.details,
        "prev_hash": event.prev_hash,
        "hash": event.hash,
    }
