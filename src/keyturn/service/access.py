"""Access requests and reviews: ask, decide at once, review, cancel, read.

Bad input is rejected before anything is written (guarantee 8); durations above the role's
maximum are rejected, never clamped (guarantee 3); a requester can never review their own
request, and N approvals means N distinct people (guarantee 2).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from keyturn.config import RoleConfig, TargetConfig, UserConfig
from keyturn.domain.audit import AuditDraft, format_time
from keyturn.domain.durations import humanize
from keyturn.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from keyturn.domain.model import (
    AccessRequest,
    Decision,
    Grant,
    GrantStatus,
    Outcome,
    RequestStatus,
    Review,
    Verdict,
    decision_to_data,
    quorum_reached,
)
from keyturn.domain.policy import is_eligible
from keyturn.domain.ssh_keys import parse_user_public_key
from keyturn.domain.text import clean_text
from keyturn.service import grants as grant_service
from keyturn.service import notifications
from keyturn.service.deps import Deps
from keyturn.service.facts import decide

TICKET_MAX = 200
COMMENT_MAX = 1000


@dataclass(frozen=True)
class RequestInput:
    """What a requester sends (already parsed from JSON/CLI; still untrusted)."""

    role: str
    target: str
    duration: timedelta
    justification: str
    ticket: str | None = None
    ssh_public_key: str | None = None
    start: datetime | None = None


@dataclass(frozen=True)
class RequestView:
    """An access request with its reviews and grant (if one was made)."""

    request: AccessRequest
    reviews: list[Review]
    grant: Grant | None


def _resolve(deps: Deps, data: RequestInput) -> tuple[RoleConfig, TargetConfig]:
    role = deps.config.role(data.role)
    if role is None:
        raise InvalidInput(f"unknown role {data.role!r}", field="role")
    target = deps.config.target(data.target)
    if target is None:
        raise InvalidInput(f"unknown target {data.target!r}", field="target")
    if data.duration <= timedelta(0):
        raise InvalidInput("duration must be longer than zero", field="duration")
    if data.duration > role.max_duration:
        raise InvalidInput(
            f"duration {humanize(data.duration)} is above role {role.name}'s maximum of "
            f"{humanize(role.max_duration)}",
            field="duration",
        )
    if data.duration.microseconds:
        raise InvalidInput("duration must be a whole number of seconds", field="duration")
    return role, target


def request_access(deps: Deps, requester: UserConfig, data: RequestInput) -> RequestView:
    """Create an access request, decide it at once, and grant it if auto-approved.

    With ``data.start`` the request is *scheduled*: decided now (and reviewed now if the policy
    asks), activated at ``start`` after eligibility and policy are evaluated again; the duration
    counts from activation.

    Raises:
        InvalidInput: unknown role/target, duration out of range, blank or over-long
            justification, bad ticket, missing or unacceptable SSH key, a start that is not in
            the future or beyond ``server.schedule_horizon``. Nothing is written.
    """
    role, target = _resolve(deps, data)
    justification = clean_text(
        data.justification,
        field="justification",
        max_length=deps.config.server.justification_max_length,
        required=True,
    )
    ticket = clean_text(data.ticket, field="ticket", max_length=TICKET_MAX, required=False)
    ssh_key = checked_ssh_key(role, data.ssh_public_key)
    now = deps.clock.now()
    start = _start(deps, data.start, now)
    decision = decide(
        deps,
        requester,
        role,
        target,
        duration=data.duration,
        justification=justification or "",
        ticket=ticket,
        now=now,
        scheduled=start is not None,
    )
    status = {
        Outcome.AUTO_APPROVE: RequestStatus.SCHEDULED if start else RequestStatus.APPROVED,
        Outcome.REQUIRE_APPROVAL: RequestStatus.PENDING,
        Outcome.DENY: RequestStatus.DENIED,
    }[decision.outcome]
    request = AccessRequest(
        id=deps.new_id("req"),
        requester_id=requester.id,
        role=role.name,
        target=target.name,
        duration=data.duration,
        justification=justification or "",
        ticket=ticket,
        ssh_public_key=ssh_key,
        status=status,
        decision=decision,
        created_at=now,
        updated_at=now,
        start_at=start,
    )
    with deps.store.transaction() as tx:
        tx.add_request(request)
        sub = {"request_id": request.id, "user_id": requester.id}
        tx.append_audit(AuditDraft(now, requester.id, "request.created", sub, _created(request)))
        tx.append_audit(
            AuditDraft(now, "system:policy", "request.decided", sub, _decided(decision))
        )
        grant = (
            grant_service.new_grant(deps, tx, request, now)
            if status is RequestStatus.APPROVED
            else None
        )
    if status is RequestStatus.PENDING:
        notifications.review_needed(deps, request)
    else:
        notifications.request_decided(deps, request)
    if grant is not None:
        grant = grant_service.activate(deps, grant, request)
    return RequestView(request, [], grant)


def _start(deps: Deps, start: datetime | None, now: datetime) -> datetime | None:
    if start is None:
        return None
    if start.tzinfo is None:
        raise InvalidInput("start needs a time zone (e.g. 2026-11-21T08:00:00Z)", field="start")
    start = start.astimezone(UTC)
    if start <= now:
        raise InvalidInput(
            "start is not in the future; leave it out to ask for access now", field="start"
        )
    horizon = deps.config.server.schedule_horizon
    if start > now + horizon:
        raise InvalidInput(
            f"start is more than {humanize(horizon)} ahead (server.schedule_horizon)",
            field="start",
        )
    return start


def checked_ssh_key(role: RoleConfig, key: str | None) -> str | None:
    """The requester's public key for an SSH role (None for other providers).

    Raises:
        InvalidInput: missing, or not an acceptable OpenSSH public key line.
    """
    if role.provider != "ssh":
        return None
    if key is None or not key.strip():
        raise InvalidInput(
            f"role {role.name} grants SSH access: send your public key (ssh_public_key)",
            field="ssh_public_key",
        )
    parse_user_public_key(key)
    return key.strip()


def _created(request: AccessRequest) -> dict[str, object]:
    data: dict[str, object] = {
        "role": request.role,
        "target": request.target,
        "duration_s": int(request.duration.total_seconds()),
        "justification": request.justification,
        "ticket": request.ticket,
    }
    if request.start_at is not None:
        data["start_at"] = format_time(request.start_at)
    return data


def _decided(decision: Decision) -> dict[str, object]:
    data = decision_to_data(decision)
    data["facts"] = {k: v for k, v in decision.facts.items() if k != "request"}
    return data


def review(
    deps: Deps, reviewer: UserConfig, request_id: str, verdict: Verdict, comment: str | None
) -> RequestView:
    """Record one reviewer's verdict; approve at quorum, deny at the first denial.

    Raises:
        NotFound: no such request. Forbidden: the reviewer is the requester (by immutable id) or
            is not among the rule's approvers. Conflict: the request is not pending, or this
            reviewer already reviewed it. InvalidInput: comment too long.
    """
    note = clean_text(comment, field="comment", max_length=COMMENT_MAX, required=False)
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        request = tx.get_request(request_id, lock=True)
        if request.requester_id == reviewer.id:
            raise Forbidden("you cannot review your own access request", request_id=request_id)
        if not request.decision.approvers.includes(reviewer.id, reviewer.groups):
            raise Forbidden("you are not an approver of this request", request_id=request_id)
        if request.status is not RequestStatus.PENDING:
            raise Conflict(
                f"access request {request_id} is {request.status}; only pending requests can be "
                "reviewed",
                request_id=request_id,
                state=str(request.status),
            )
        tx.add_review(Review(deps.new_id("rev"), request_id, reviewer.id, verdict, note, now))
        sub = {"request_id": request_id, "user_id": request.requester_id}
        tx.append_audit(
            AuditDraft(
                now,
                reviewer.id,
                "request.reviewed",
                sub,
                {"verdict": str(verdict), "comment": note},
            )
        )
        reviews = tx.reviews(request_id)
        grant, refusal = None, None
        if verdict is Verdict.DENY:
            request = request.transition(RequestStatus.DENIED, now)
        elif quorum_reached(request.decision.approvals, reviews):
            refusal = recheck(deps, request)
            later = request.start_at is not None and request.start_at > now
            approved = RequestStatus.SCHEDULED if later else RequestStatus.APPROVED
            request = request.transition(RequestStatus.DENIED if refusal else approved, now)
        if request.status is not RequestStatus.PENDING:
            tx.save_request(request)
            details = {"recheck": refusal} if verdict is Verdict.APPROVE and refusal else {}
            actor = "system:policy" if details else reviewer.id
            tx.append_audit(AuditDraft(now, actor, f"request.{request.status}", sub, details))
        if request.status is RequestStatus.APPROVED:
            grant = grant_service.new_grant(deps, tx, request, now)
    if refusal:
        notifications.request_decided(deps, _refused(request, None, refusal))
    elif request.status is not RequestStatus.PENDING:
        notifications.request_decided(deps, request, by=reviewer.id, comment=note)
    if grant is not None:
        grant = grant_service.activate(deps, grant, request)
    return RequestView(request, reviews, grant)


def recheck(deps: Deps, request: AccessRequest) -> str | None:
    """Re-check a request against the configuration in force now, at the moment of approval.

    The configuration may have changed since the request was decided (a restart, a reload): the
    requester may have lost eligibility, the role may be gone or its maximum shortened.

    Returns:
        None if the request may still be granted, else the reason it may not.
    """
    user = deps.config.user(request.requester_id)
    role = deps.config.role(request.role)
    target = deps.config.target(request.target)
    if user is None or role is None or target is None:
        return "the requester, role or target no longer exists"
    if not is_eligible(deps.config, user, role.name, target):
        return f"{user.id} is no longer eligible for {role.name} on {target.name}"
    if request.duration > role.max_duration:
        return (
            f"the duration is now above role {role.name}'s maximum of {humanize(role.max_duration)}"
        )
    return None


def expire_pending(deps: Deps, *, limit: int = 500) -> list[AccessRequest]:
    """Pending requests unanswered for ``server.pending_ttl`` become ``expired`` (never approved
    late) and their requesters are told. A scheduled request stays open for review until its
    start if that is later.

    Returns:
        The requests expired in this pass.
    """
    now = deps.clock.now()
    ttl = deps.config.server.pending_ttl
    expired = []
    with deps.store.transaction() as tx:
        for request in tx.list_requests(status=RequestStatus.PENDING, limit=limit):
            if request.review_deadline(ttl) <= now:
                done = request.transition(RequestStatus.EXPIRED, now)
                tx.save_request(done)
                sub = {"request_id": done.id, "user_id": done.requester_id}
                tx.append_audit(AuditDraft(now, "system:worker", "request.expired", sub, {}))
                expired.append(done)
    for request in expired:
        notifications.request_expired(deps, request)
    return expired


def start_scheduled(deps: Deps, *, limit: int = 100) -> list[RequestView]:
    """Activate scheduled requests whose start has come (the worker calls this every pass).

    At the start the request is checked again against the configuration in force (requester,
    role and target still exist, eligibility, maximum duration) and the policy decides again on
    fresh facts: a denial ends it (``denied``, with the reason); a decision that now requires
    review ends it too unless reviewers already approved it. Otherwise the grant's window starts
    now and lasts the requested duration.

    Returns:
        The requests handled, with their grant when one was made.
    """
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        due = [r.id for r in tx.due_scheduled(now, limit)]
    views = []
    for request_id in due:
        view = _start_one(deps, request_id)
        if view is not None:
            views.append(view)
    return views


def _start_one(deps: Deps, request_id: str) -> RequestView | None:
    with deps.store.transaction() as tx:
        request = tx.get_request(request_id)
        reviewed = tx.reviews(request_id)
    if request.status is not RequestStatus.SCHEDULED:
        return None
    now = deps.clock.now()
    refusal = recheck(deps, request)
    decision: Decision | None = None
    if refusal is None:
        user, role, target = _parties(deps, request)
        decision = decide(
            deps,
            user,
            role,
            target,
            duration=request.duration,
            justification=request.justification,
            ticket=request.ticket,
            now=now,
            scheduled=True,
            existing=request,
        )
        refusal = _refusal_at_start(deps, request, decision, reviewed)
    grant = None
    with deps.store.transaction() as tx:
        request = tx.get_request(request_id, lock=True)
        if request.status is not RequestStatus.SCHEDULED:
            return None
        sub = {"request_id": request.id, "user_id": request.requester_id}
        details: dict[str, object] = {"decision": _decided(decision)} if decision else {}
        if refusal:
            request = request.transition(RequestStatus.DENIED, now)
            details["refusal"] = refusal
            tx.save_request(request)
            tx.append_audit(AuditDraft(now, "system:policy", "request.denied", sub, details))
        else:
            request = request.transition(RequestStatus.APPROVED, now)
            tx.save_request(request)
            tx.append_audit(AuditDraft(now, "system:worker", "request.started", sub, details))
            grant = grant_service.new_grant(deps, tx, request, now)
    if grant is None:
        notifications.request_decided(deps, _refused(request, decision, refusal))
        return RequestView(request, reviewed, None)
    return RequestView(request, reviewed, grant_service.activate(deps, grant, request))


def _refused(
    request: AccessRequest, decision: Decision | None, refusal: str | None
) -> AccessRequest:
    """The request as its requester is told about a denial by a re-check (at approval or at the
    start): the decision taken then, with the refusal as the reason (not the reasons it was
    first approved for)."""
    if refusal is None:
        return request
    refused = dataclasses.replace(decision or request.decision, reasons=(refusal,))
    return dataclasses.replace(request, decision=refused)


def _parties(deps: Deps, request: AccessRequest) -> tuple[UserConfig, RoleConfig, TargetConfig]:
    user = deps.config.user(request.requester_id)
    role = deps.config.role(request.role)
    target = deps.config.target(request.target)
    if user is None or role is None or target is None:  # recheck() refused these already
        raise NotFound("the requester, role or target no longer exists")
    return user, role, target


def _refusal_at_start(
    deps: Deps, request: AccessRequest, decision: Decision, reviews: list[Review]
) -> str | None:
    """Why a scheduled request may not start now, or None. A decision that requires review is
    satisfied only by the same rule's quorum, counted among the people that rule's approvers
    name now (the requester never counts): an earlier quorum under another rule, or under fewer
    or other approvers, does not carry over."""
    if decision.outcome is Outcome.DENY:
        return f"at the scheduled start the policy denied it: {'; '.join(decision.reasons)}"
    if decision.outcome is not Outcome.REQUIRE_APPROVAL:
        return None
    qualified = [
        r
        for r in reviews
        if r.reviewer_id != request.requester_id
        and (reviewer := deps.config.user(r.reviewer_id)) is not None
        and decision.approvers.includes(reviewer.id, reviewer.groups)
    ]
    if decision.rule != request.decision.rule or not quorum_reached(decision.approvals, qualified):
        return (
            f"at the scheduled start rule {decision.rule} requires review ({decision.approvals} "
            "from its approvers), which this request does not have; ask again"
        )
    return None


def cancel(deps: Deps, actor: UserConfig, request_id: str, comment: str | None) -> RequestView:
    """The requester (or an admin) withdraws a pending request.

    Raises:
        NotFound, Forbidden (someone else's request), Conflict (not pending).
    """
    note = clean_text(comment, field="comment", max_length=COMMENT_MAX, required=False)
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        request = tx.get_request(request_id, lock=True)
        if request.requester_id != actor.id and not deps.is_admin(actor):
            raise Forbidden("you can only cancel your own access requests", request_id=request_id)
        request = request.transition(RequestStatus.CANCELLED, now)
        tx.save_request(request)
        sub = {"request_id": request_id, "user_id": request.requester_id}
        tx.append_audit(AuditDraft(now, actor.id, "request.cancelled", sub, {"comment": note}))
        reviews = tx.reviews(request_id)
    return RequestView(request, reviews, None)


def explain(
    deps: Deps,
    viewer: UserConfig,
    *,
    requester_id: str,
    role: str,
    target: str,
    duration: timedelta,
    justification: str = "",
) -> Decision:
    """What the policy would decide for this request now, and why -- without creating anything.

    Anyone may ask for themselves; asking for someone else needs an admin.

    Raises:
        Forbidden: another requester and the viewer is not an admin. InvalidInput: unknown
            requester, role or target, or a duration out of range.
    """
    if requester_id != viewer.id and not deps.is_admin(viewer):
        raise Forbidden("only admins can explain decisions for other requesters")
    requester = deps.config.user(requester_id)
    if requester is None:
        raise InvalidInput(f"unknown requester {requester_id!r}", field="requester")
    data = RequestInput(role=role, target=target, duration=duration, justification=justification)
    found_role, found_target = _resolve(deps, data)
    text = clean_text(
        justification,
        field="justification",
        max_length=deps.config.server.justification_max_length,
        required=False,
    )
    return decide(
        deps,
        requester,
        found_role,
        found_target,
        duration=duration,
        justification=text or "",
        ticket=None,
        now=deps.clock.now(),
        record=False,
    )


def can_see(deps: Deps, viewer: UserConfig, request: AccessRequest) -> bool:
    """Requesters see their own requests, approvers the ones they may review, admins all."""
    return (
        request.requester_id == viewer.id
        or deps.is_admin(viewer)
        or request.decision.approvers.includes(viewer.id, viewer.groups)
    )


def get_request(deps: Deps, viewer: UserConfig, request_id: str) -> RequestView:
    """One request with its reviews and grant.

    Raises:
        NotFound: no such request, or not visible to the viewer (no existence leak).
    """
    with deps.store.transaction() as tx:
        request = tx.get_request(request_id)
        if not can_see(deps, viewer, request):
            raise NotFound(f"no access request {request_id!r}", request_id=request_id)
        return RequestView(request, tx.reviews(request_id), tx.grant_for_request(request_id))


def list_requests(
    deps: Deps,
    viewer: UserConfig,
    *,
    status: RequestStatus | None,
    mine: bool,
    limit: int = 100,
) -> list[RequestView]:
    """Requests visible to the viewer, newest first (``mine``: only the viewer's own)."""
    with deps.store.transaction() as tx:
        rows = tx.list_requests(
            status=status, requester_id=viewer.id if mine else None, limit=limit if mine else 1000
        )
        visible = [r for r in rows if can_see(deps, viewer, r)][:limit]
        return [RequestView(r, tx.reviews(r.id), tx.grant_for_request(r.id)) for r in visible]


def list_grants(
    deps: Deps,
    viewer: UserConfig,
    *,
    status: GrantStatus | None = None,
    mine: bool = False,
    limit: int = 100,
) -> list[Grant]:
    """Grants: admins see all (unless ``mine``), others their own."""
    own = mine or not deps.is_admin(viewer)
    with deps.store.transaction() as tx:
        return tx.list_grants(status=status, user_id=viewer.id if own else None, limit=limit)
