"""Tell people about their access requests and grants, through ``deps.notifier``.

One function per event; each builds a :class:`~keyturn.ports.Notification` and sends it:

* ``review.needed`` (:func:`review_needed`): every configured approver except the requester;
* ``request.decided`` (:func:`request_decided`), ``request.expired`` (:func:`request_expired`):
  the requester;
* ``grant.activated`` (:func:`grant_activated`), ``grant.expiring`` (:func:`grant_expiring`),
  ``grant.ended`` (:func:`grant_ended`): the grant's user;
* ``break_glass.used`` (:func:`break_glass_used`), ``break_glass.review_overdue``
  (:func:`break_glass_review_overdue`): the role's approvers and the security contacts.

Users no longer in the configuration are skipped; a notification nobody can receive is not sent.
``data`` always has ``request_id``, ``role``, ``target`` and ``requester`` (a user id), and
``grant_id`` for grant events; times are RFC 3339 UTC strings
(:func:`~keyturn.domain.audit.format_time`). User input (justification, ticket, review comment) is
copied as a value into ``data`` and into the text, never used as a format string or markup.

No function here raises because of delivery: the notifier port forbids raising, and
:func:`_send` logs (with traceback) an adapter that breaks that rule, because a notification must
never undo or block the state change it reports.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import structlog

from keyturn.config import UserConfig
from keyturn.domain.audit import format_time
from keyturn.domain.break_glass import BreakGlassMode, PostIncidentReview
from keyturn.domain.durations import humanize
from keyturn.domain.model import AccessRequest, EndReason, Grant, RequestStatus
from keyturn.ports import Notification, Recipient
from keyturn.service.deps import Deps

log = structlog.get_logger("keyturn.notifications")


def review_needed(deps: Deps, request: AccessRequest) -> None:
    """Ask every user who may approve ``request`` (``decision.approvers``), except the requester,
    to review it. Nothing is sent (a warning is logged) when nobody configured can."""
    approvers = request.decision.approvers
    reviewers = tuple(
        _recipient(u)
        for u in deps.config.users
        if u.id != request.requester_id and approvers.includes(u.id, u.groups)
    )
    if not reviewers:
        log.warning("nobody to ask for a review", request_id=request.id, rule=request.decision.rule)
        return
    expires_at = request.review_deadline(deps.config.server.pending_ttl)
    needed = request.decision.approvals
    lines = [
        f"{_name(deps, request.requester_id)} asks for {_ask(request)}.",
        "",
        f"Justification: {request.justification}",
        *([f"Ticket: {request.ticket}"] if request.ticket else []),
        f"Policy rule: {request.decision.rule} ({needed} approval{'s' if needed != 1 else ''} "
        "needed)",
        f"Request: {request.id}",
        f"Unless reviewed, it expires at {_clock_time(expires_at)}.",
        "",
        f"Approve: keyturn approve {request.id}",
        f"Deny:    keyturn deny {request.id}",
    ]
    data = _request_data(request) | {
        "justification": request.justification,
        "ticket": request.ticket,
        "rule": request.decision.rule,
        "approvals_needed": needed,
        "expires_at": format_time(expires_at),
    }
    subject = f"Review needed: {request.requester_id} asks for {_ask(request)}"
    _send(deps, Notification("review.needed", reviewers, subject, "\n".join(lines), data))


def request_decided(
    deps: Deps, request: AccessRequest, *, by: str | None = None, comment: str | None = None
) -> None:
    """Tell the requester ``request`` was approved or denied, and why.

    Args:
        by: the reviewer's user id, when a person decided (None: the policy did).
        comment: the reviewer's comment, if any (user input, passed through).
    """
    verdict = "approved" if request.status is RequestStatus.APPROVED else str(request.status)
    reasons = request.decision.reasons
    decider = f"by {_name(deps, by)}" if by else f"by policy rule {request.decision.rule}"
    lines = [
        f"Your request {request.id} for {_ask(request)} was {verdict} {decider}.",
        *(f"Reason: {reason}" for reason in reasons),
        *([f"Comment: {comment}"] if comment else []),
    ]
    if request.status is RequestStatus.APPROVED:
        lines.append("You will get another message when the access is active.")
    data = _request_data(request) | {
        "status": str(request.status),
        "rule": request.decision.rule,
        "reasons": list(reasons),
        "decided_by": by,
        "comment": comment,
        "decided_at": format_time(request.updated_at),
    }
    subject = f"{verdict.capitalize()}: {_ask(request)}"
    _to(deps, request.requester_id, "request.decided", subject=subject, lines=lines, data=data)


def request_expired(deps: Deps, request: AccessRequest) -> None:
    """Tell the requester nobody reviewed ``request`` in time (``server.pending_ttl``)."""
    ttl = humanize(deps.config.server.pending_ttl)
    lines = [
        f"Nobody reviewed your request {request.id} for {_ask(request)} in time "
        f"(within {ttl}), so it has expired.",
        "If you still need the access, request it again.",
    ]
    data = _request_data(request) | {"expired_at": format_time(request.updated_at)}
    subject = f"Expired unreviewed: {_ask(request)}"
    _to(deps, request.requester_id, "request.expired", subject=subject, lines=lines, data=data)


def grant_activated(deps: Deps, grant: Grant) -> None:
    """Tell the grant's user their access is active, until when, and how to end it early."""
    lines = [
        f"Your {grant.role} access on {grant.target} is active until "
        f"{_clock_time(grant.not_after)} ({humanize(grant.not_after - grant.not_before)}).",
        f"Grant: {grant.id} (request {grant.request_id})",
        "",
        f"Done early? keyturn release {grant.id}",
        f"Need longer? keyturn extend {grant.id} --for 30m",
    ]
    subject = f"Active: {grant.role} on {grant.target} until {_clock_time(grant.not_after)}"
    _to(
        deps,
        grant.user_id,
        "grant.activated",
        subject=subject,
        lines=lines,
        data=_grant_data(grant),
    )


def grant_expiring(deps: Deps, grant: Grant) -> None:
    """Warn the grant's user that it ends soon (``notifier.expiry_warning`` before the end).

    ``data["minutes_left"]`` is the whole minutes left (rounded up; 0 once past the end).
    """
    seconds = (grant.not_after - deps.clock.now()).total_seconds()
    minutes_left = max(0, math.ceil(seconds / 60))
    lines = [
        f"Your {grant.role} access on {grant.target} ends at {_clock_time(grant.not_after)}, "
        f"in {minutes_left} minute{'s' if minutes_left != 1 else ''}.",
        f"Grant: {grant.id}",
        "",
        f"Need longer? keyturn extend {grant.id} --for 30m",
    ]
    data = _grant_data(grant) | {"minutes_left": minutes_left}
    subject = f"Ending in {minutes_left} min: {grant.role} on {grant.target}"
    _to(deps, grant.user_id, "grant.expiring", subject=subject, lines=lines, data=data)


def grant_ended(deps: Deps, grant: Grant) -> None:
    """Tell the grant's user their access ended, why (``end_reason``) and by whom (``ended_by``)."""
    why = _end_phrase(deps, grant)
    ended_at = grant.ended_at or grant.updated_at
    lines = [
        f"Your {grant.role} access on {grant.target} ended at {_clock_time(ended_at)}: {why}.",
        f"Grant: {grant.id} (request {grant.request_id})",
    ]
    data = _grant_data(grant) | {
        "end_reason": str(grant.end_reason) if grant.end_reason else None,
        "ended_by": grant.ended_by,
        "ended_at": format_time(ended_at),
    }
    subject = f"Ended: {grant.role} on {grant.target} ({why})"
    _to(deps, grant.user_id, "grant.ended", subject=subject, lines=lines, data=data)


def break_glass_used(
    deps: Deps, review: PostIncidentReview, recipients: tuple[Recipient, ...]
) -> None:
    """Tell the role's approvers and the security contacts that someone broke glass."""
    how = (
        "through Keyturn (review skipped)"
        if review.mode is BreakGlassMode.ONLINE
        else "OFFLINE, with the break-glass kit, while Keyturn was unavailable"
    )
    lines = [
        f"{_name(deps, review.user_id)} broke glass {how}: {review.role} on {review.target}, "
        f"from {_clock_time(review.used_at)}.",
        "",
        f"Justification: {review.justification}",
        *([f"Grant: {review.grant_id}"] if review.grant_id else []),
        *(
            [f"Offline record: {review.record_id} (kit {review.kit_id})"]
            if review.record_id
            else []
        ),
        f"A post-incident review ({review.id}) is open until {_clock_time(review.due_at)}.",
        "",
        f"Close it: keyturn reviews close {review.id} --verdict justified|unjustified "
        '--comment "…"',
    ]
    if review.findings:
        lines += ["", "BEYOND THE CONFIGURATION IN FORCE:", *(f"- {f}" for f in review.findings)]
    if review.mode is BreakGlassMode.OFFLINE:
        lines.append("The kit is spent: rotate it (keyturn break-glass kit rotate).")
    subject = f"BREAK-GLASS: {review.user_id} took {review.role} on {review.target}"
    _send_to(
        deps,
        "break_glass.used",
        recipients=recipients,
        subject=subject,
        lines=lines,
        data=_review_data(review),
    )


def break_glass_review_overdue(
    deps: Deps, review: PostIncidentReview, recipients: tuple[Recipient, ...]
) -> None:
    """Tell the same people that a post-incident review is past its due time."""
    lines = [
        f"The post-incident review {review.id} of {_name(deps, review.user_id)}'s break-glass "
        f"use of {review.role} on {review.target} was due {_clock_time(review.due_at)}.",
        "",
        f"Justification given: {review.justification}",
        "",
        f"Close it: keyturn reviews close {review.id} --verdict justified|unjustified "
        '--comment "…"',
    ]
    subject = f"Overdue: post-incident review of {review.user_id}'s break-glass use"
    _send_to(
        deps,
        "break_glass.review_overdue",
        recipients=recipients,
        subject=subject,
        lines=lines,
        data=_review_data(review),
    )


def _send_to(
    deps: Deps,
    event: str,
    *,
    recipients: tuple[Recipient, ...],
    subject: str,
    lines: list[str],
    data: dict[str, Any],
) -> None:
    if not recipients:
        log.warning("nobody to tell", notification=event, review_id=data.get("review_id"))
        return
    _send(deps, Notification(event, recipients, subject, "\n".join(lines), data))


def _review_data(review: PostIncidentReview) -> dict[str, Any]:
    data = {
        "review_id": review.id,
        "mode": str(review.mode),
        "user_id": review.user_id,
        "requester": review.user_id,
        "role": review.role,
        "target": review.target,
        "justification": review.justification,
        "used_at": format_time(review.used_at),
        "due_at": format_time(review.due_at),
        "grant_id": review.grant_id,
        "request_id": review.request_id,
        "record_id": review.record_id,
        "kit_id": review.kit_id,
        "imported_by": review.imported_by,
        "findings": list(review.findings) or None,
    }
    return {k: v for k, v in data.items() if v is not None}


def _end_phrase(deps: Deps, grant: Grant) -> str:
    if grant.end_reason is EndReason.RELEASED:
        return "you released it"
    if grant.end_reason is EndReason.REVOKED:
        return f"revoked by {_name(deps, grant.ended_by)}" if grant.ended_by else "revoked"
    return "its time window closed"


def _to(
    deps: Deps, user_id: str, event: str, *, subject: str, lines: list[str], data: dict[str, Any]
) -> None:
    """Send to one user, if they are still configured."""
    user = deps.config.user(user_id)
    if user is None:
        log.info("user not configured; notification skipped", notification=event, user_id=user_id)
        return
    _send(deps, Notification(event, (_recipient(user),), subject, "\n".join(lines), data))


def _send(deps: Deps, notification: Notification) -> None:
    """Hand ``notification`` to the notifier; an adapter that raises (a bug: the port forbids
    it) is logged with its traceback and the caller carries on."""
    try:
        deps.notifier.notify(notification)
    except Exception:  # the guard against a broken adapter; see the module docstring
        log.exception(
            "notifier raised; notification not delivered",
            notification=notification.event,
            request_id=notification.data.get("request_id"),
        )


def _recipient(user: UserConfig) -> Recipient:
    return Recipient(user_id=user.id, name=user.name, email=user.email)


def _name(deps: Deps, user_id: str | None) -> str:
    """``Alice Martin (alice)`` for a configured user; the bare id otherwise."""
    if user_id is None:
        return "unknown"
    user = deps.config.user(user_id)
    return f"{user.name} ({user.id})" if user is not None else user_id


def _ask(request: AccessRequest) -> str:
    return f"{request.role} on {request.target} for {humanize(request.duration)}"


def _clock_time(value: datetime) -> str:
    """``2026-11-17 03:15 UTC``: a time for people (``data`` carries the RFC 3339 form)."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _request_data(request: AccessRequest) -> dict[str, Any]:
    return {
        "request_id": request.id,
        "role": request.role,
        "target": request.target,
        "requester": request.requester_id,
        "duration": humanize(request.duration),
        "created_at": format_time(request.created_at),
    }


def _grant_data(grant: Grant) -> dict[str, Any]:
    return {
        "request_id": grant.request_id,
        "grant_id": grant.id,
        "role": grant.role,
        "target": grant.target,
        "requester": grant.user_id,
        "not_before": format_time(grant.not_before),
        "not_after": format_time(grant.not_after),
    }
