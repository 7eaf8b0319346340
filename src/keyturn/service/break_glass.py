"""Break-glass: emergency access that skips review but never audit (DESIGN.md guarantee 9).

Online (the broker is up): :func:`break_glass` grants a role at once to a member of the role's
break-glass group, capped by ``roles[].break_glass.max_duration``, with a mandatory justification;
it is never silent (notification to the role's approvers and the security contacts, a distinct
``break_glass.used`` audit event, a metric, the request and grant flagged ``break_glass``) and
opens a post-incident review due after ``break_glass.review_deadline``.

Offline (the broker, its database or its network is down): the kit (see
:mod:`keyturn.adapters.break_glass_kit`) signs a short certificate and a record; when Keyturn is
back, :func:`import_record` verifies the record against the kit's public key, appends it to the
audit chain, opens the review and marks the kit spent until :func:`rotate_kit`.

Reviews are closed by someone other than the user (:func:`close_review`); the worker alerts on
overdue ones (:func:`alert_overdue`).
"""

from __future__ import annotations

import dataclasses
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from keyturn.adapters.break_glass_kit import SEALED_ACCOUNT, new_kit
from keyturn.adapters.providers.ssh_ca import render_principals
from keyturn.config import BreakGlassRoleConfig, KeyturnConfig, RoleConfig, UserConfig
from keyturn.domain.audit import AuditDraft, format_time
from keyturn.domain.break_glass import (
    BreakGlassMode,
    KitInfo,
    OfflineRecord,
    PostIncidentReview,
    ReviewStatus,
    ReviewVerdict,
    kit_of,
    public_key_of,
    read_record,
    verify_record,
)
from keyturn.domain.durations import humanize
from keyturn.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, ProviderError
from keyturn.domain.model import AccessRequest, Approvers, Decision, Outcome, RequestStatus
from keyturn.domain.policy import is_eligible, recordable
from keyturn.domain.text import clean_text
from keyturn.ports import DirectoryPasswords, Recipient
from keyturn.service import grants as grant_service
from keyturn.service import notifications
from keyturn.service.access import RequestView, checked_ssh_key
from keyturn.service.deps import Deps
from keyturn.service.facts import gather

BREAK_GLASS_RULE = "break-glass"
"""The ``decision.rule`` of a break-glass request (no policy rule decided it)."""
COMMENT_MAX = 2000


@dataclass(frozen=True)
class BreakGlassInput:
    """What a user sends to break glass (untrusted). ``duration`` None: the role's cap."""

    role: str
    target: str
    justification: str
    duration: timedelta | None = None
    ssh_public_key: str | None = None


@dataclass(frozen=True)
class BreakGlassView:
    """A break-glass use: the access request and grant, and the review it opened."""

    access: RequestView
    review: PostIncidentReview


def break_glass_role(config: KeyturnConfig, name: str) -> tuple[RoleConfig, BreakGlassRoleConfig]:
    """The role and its break-glass settings.

    Raises:
        InvalidInput: unknown role, or a role without break-glass configuration.
    """
    role = config.role(name)
    if role is None:
        raise InvalidInput(f"unknown role {name!r}", field="role")
    if role.break_glass is None:
        raise InvalidInput(
            f"role {role.name} has no break-glass configuration; ask for access the usual way",
            field="role",
        )
    return role, role.break_glass


def check_duration(
    role: RoleConfig, settings: BreakGlassRoleConfig, duration: timedelta | None
) -> timedelta:
    """The break-glass window: ``duration``, or the cap when None.

    Raises:
        InvalidInput: not positive, not whole seconds, or above the role's break-glass cap.
    """
    cap = settings.max_duration
    if duration is None:
        return cap
    if duration <= timedelta(0):
        raise InvalidInput("duration must be longer than zero", field="duration")
    if duration.microseconds:
        raise InvalidInput("duration must be a whole number of seconds", field="duration")
    if duration > cap:
        raise InvalidInput(
            f"duration {humanize(duration)} is above role {role.name}'s break-glass cap of "
            f"{humanize(cap)}",
            field="duration",
        )
    return duration


def check_justification(config: KeyturnConfig, text: str) -> str:
    """The justification, cleaned; mandatory and at least
    ``break_glass.justification_min_length`` characters.

    Raises:
        InvalidInput: blank, too short, too long or with control characters.
    """
    cleaned = clean_text(
        text,
        field="justification",
        max_length=config.server.justification_max_length,
        required=True,
    )
    minimum = config.break_glass.justification_min_length
    # Count what the user wrote, not its escaped form: five NUL bytes escape to twenty
    # characters ("\\x00" each) but say nothing.
    written = sum(1 for ch in text.strip() if unicodedata.category(ch)[0] != "C")
    if cleaned is None or written < minimum:
        raise InvalidInput(
            f"a break-glass justification needs at least {minimum} characters: say what is "
            "broken and what you will do",
            field="justification",
        )
    return cleaned


def break_glass(deps: Deps, user: UserConfig, data: BreakGlassInput) -> BreakGlassView:
    """Grant ``data.role`` on ``data.target`` at once, without review, and say so loudly.

    Raises:
        InvalidInput: unknown role or target, a role without break-glass, a duration above the
            cap, a missing or too-short justification, a missing or bad SSH key.
        Forbidden: the user is not in the role's break-glass group, or not eligible for the
            role on the target (break-glass skips review, not eligibility).
        Nothing is written when any of these is raised.
    """
    role, settings = break_glass_role(deps.config, data.role)
    if settings.group not in user.groups:
        raise Forbidden(
            f"only members of group {settings.group} may break glass for role {role.name}"
        )
    target = deps.config.target(data.target)
    if target is None:
        raise InvalidInput(f"unknown target {data.target!r}", field="target")
    if not is_eligible(deps.config, user, role.name, target):
        raise Forbidden(
            f"{user.id} is not eligible for role {role.name} on target {target.name} "
            "(break-glass skips review, not eligibility)"
        )
    duration = check_duration(role, settings, data.duration)
    justification = check_justification(deps.config, data.justification)
    ssh_key = checked_ssh_key(role, data.ssh_public_key)
    now = deps.clock.now()
    facts = gather(
        deps,
        user=user,
        role=role,
        target=target,
        duration=duration,
        justification=justification,
        ticket=None,
        now=now,
    )
    approvers = deps.policy.approvers_for(facts)
    review_id = deps.new_id("pir")
    due = now + deps.config.break_glass.review_deadline
    decision = Decision(
        outcome=Outcome.AUTO_APPROVE,
        rule=BREAK_GLASS_RULE,
        reasons=(
            f"break-glass by {user.id}: review skipped; post-incident review {review_id} is due "
            f"{format_time(due)}",
        ),
        facts=recordable(facts),
        approvers=approvers,
    )
    request = AccessRequest(
        id=deps.new_id("req"),
        requester_id=user.id,
        role=role.name,
        target=target.name,
        duration=duration,
        justification=justification,
        ticket=None,
        ssh_public_key=ssh_key,
        status=RequestStatus.APPROVED,
        decision=decision,
        created_at=now,
        updated_at=now,
        break_glass=True,
    )
    with deps.store.transaction() as tx:
        tx.add_request(request)
        grant = grant_service.new_grant(deps, tx, request, now)
        review = PostIncidentReview(
            id=review_id,
            mode=BreakGlassMode.ONLINE,
            user_id=user.id,
            role=role.name,
            target=target.name,
            justification=justification,
            used_at=now,
            opened_at=now,
            due_at=due,
            reviewers=_reviewers(deps, approvers, user.id),
            grant_id=grant.id,
            request_id=request.id,
        )
        tx.add_post_incident_review(review)
        sub = {"request_id": request.id, "grant_id": grant.id, "user_id": user.id}
        details = {
            "mode": str(BreakGlassMode.ONLINE),
            "role": role.name,
            "target": target.name,
            "duration_s": int(duration.total_seconds()),
            "justification": justification,
            "review_id": review_id,
            "review_due": format_time(due),
        }
        tx.append_audit(AuditDraft(now, user.id, "break_glass.used", sub, details))
    deps.metrics.break_glass_uses.labels(role.name, str(BreakGlassMode.ONLINE)).inc()
    notifications.break_glass_used(deps, review, recipients(deps, review))
    grant = grant_service.activate(deps, grant, request)
    return BreakGlassView(RequestView(request, [], grant), review)


def _reviewers(deps: Deps, approvers: Approvers, user_id: str) -> tuple[str, ...]:
    """Who may close the review besides admins: the approvers and the security contacts who
    are users -- never the user who broke glass."""
    ids = [u.id for u in deps.config.users if approvers.includes(u.id, u.groups)]
    for contact in deps.config.break_glass.security_contacts:
        ids += [u.id for u in deps.config.users_named(contact)]
    return tuple(dict.fromkeys(i for i in ids if i != user_id))


def recipients(deps: Deps, review: PostIncidentReview) -> tuple[Recipient, ...]:
    """Who is told of a break-glass use: the review's reviewers and every security contact
    (an e-mail address that is no user's is told as is). Never the user who broke glass."""
    found: dict[str, Recipient] = {}
    for user_id in review.reviewers:
        user = deps.config.user(user_id)
        if user is not None:
            found[user.id] = Recipient(user.id, user.name, user.email)
    for contact in deps.config.break_glass.security_contacts:
        users = deps.config.users_named(contact)
        if not users and "@" in contact:
            found.setdefault(contact, Recipient(contact, contact, contact))
        for user in users:
            found[user.id] = Recipient(user.id, user.name, user.email)
    found.pop(review.user_id, None)
    return tuple(found.values())


# --- post-incident reviews --------------------------------------------------------------------
def _may_close(deps: Deps, user: UserConfig, review: PostIncidentReview) -> bool:
    return deps.is_admin(user) or user.id in review.reviewers


def can_see(deps: Deps, viewer: UserConfig, review: PostIncidentReview) -> bool:
    """Admins, the review's reviewers, and the user who broke glass."""
    return review.user_id == viewer.id or _may_close(deps, viewer, review)


def list_reviews(
    deps: Deps, viewer: UserConfig, *, open_only: bool = True
) -> list[PostIncidentReview]:
    """Post-incident reviews visible to ``viewer``, newest first (``open_only``: open ones)."""
    with deps.store.transaction() as tx:
        rows = tx.post_incident_reviews(status=ReviewStatus.OPEN if open_only else None)
    return [r for r in rows if can_see(deps, viewer, r)]


def close_review(
    deps: Deps, closer: UserConfig, review_id: str, verdict: ReviewVerdict, comment: str
) -> PostIncidentReview:
    """Close a review with a verdict and a comment.

    Raises:
        NotFound: no such review (or not visible to ``closer``).
        Forbidden: ``closer`` broke the glass, or is neither an admin nor one of its reviewers.
        Conflict: already closed. InvalidInput: empty or over-long comment.
    """
    note = clean_text(comment, field="comment", max_length=COMMENT_MAX, required=True) or ""
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        review = tx.get_post_incident_review(review_id, lock=True)
        if not can_see(deps, closer, review):
            raise NotFound(f"no post-incident review {review_id!r}", review_id=review_id)
        if review.user_id == closer.id:
            raise Forbidden("you broke the glass; someone else reviews it", review_id=review_id)
        if review.imported_by == closer.id:
            raise Forbidden(
                "you imported this record; someone else reviews it", review_id=review_id
            )
        if not _may_close(deps, closer, review):
            raise Forbidden(
                "only an admin or one of the review's reviewers may close it", review_id=review_id
            )
        closed = review.close(closer.id, verdict, note, now)
        tx.save_post_incident_review(closed)
        tx.append_audit(
            AuditDraft(
                now,
                closer.id,
                "break_glass.review_closed",
                _subject(closed),
                {"verdict": str(verdict), "comment": note, "overdue": review.overdue(now)},
            )
        )
    return closed


def report(deps: Deps, viewer: UserConfig) -> dict[str, Any]:
    """Admin: every break-glass use with its review (newest first) and the totals: uses by
    mode, reviews open, overdue, and closed by verdict.

    Raises:
        Forbidden: ``viewer`` is not an admin.
    """
    if not deps.is_admin(viewer):
        raise Forbidden("only admins see the break-glass report")
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        rows = tx.post_incident_reviews()
    totals = {
        "uses": len(rows),
        "online": sum(1 for r in rows if r.mode is BreakGlassMode.ONLINE),
        "offline": sum(1 for r in rows if r.mode is BreakGlassMode.OFFLINE),
        "open": sum(1 for r in rows if r.status is ReviewStatus.OPEN),
        "overdue": sum(1 for r in rows if r.overdue(now)),
        "justified": sum(1 for r in rows if r.verdict is ReviewVerdict.JUSTIFIED),
        "unjustified": sum(1 for r in rows if r.verdict is ReviewVerdict.UNJUSTIFIED),
    }
    return {"totals": totals, "reviews": rows, "kit": kit_status(deps)}


def _subject(review: PostIncidentReview) -> dict[str, str]:
    ids = {
        "review_id": review.id,
        "user_id": review.user_id,
        "grant_id": review.grant_id,
        "request_id": review.request_id,
        "record_id": review.record_id,
    }
    return {k: v for k, v in ids.items() if v is not None}


def alert_overdue(deps: Deps, *, limit: int = 100) -> list[PostIncidentReview]:
    """Alert once on each open review past its due time (worker pass): an operational alert,
    a notification to its reviewers and the security contacts, an audit event."""
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        overdue = []
        for review in tx.claim_overdue_reviews(now, limit):
            marked = dataclasses.replace(review, overdue_alerted_at=now)
            tx.save_post_incident_review(marked)
            tx.append_audit(
                AuditDraft(
                    now,
                    "system:worker",
                    "break_glass.review_overdue",
                    _subject(marked),
                    {"due_at": format_time(marked.due_at)},
                )
            )
            overdue.append(marked)
    for review in overdue:
        deps.notifier.alert(
            "break_glass_review_overdue",
            f"post-incident review {review.id} of {review.user_id}'s break-glass use of "
            f"{review.role} on {review.target} is overdue",
            {"review_id": review.id, "due_at": format_time(review.due_at)},
        )
        notifications.break_glass_review_overdue(deps, review, recipients(deps, review))
    return overdue


# --- offline records --------------------------------------------------------------------------
def import_record(deps: Deps, actor: UserConfig, raw: bytes) -> PostIncidentReview:
    """Import an offline break-glass record: verify, append to the audit chain, open the review,
    mark the kit spent.

    Raises:
        Forbidden: ``actor`` is not an admin.
        InvalidInput: not a record; signed by no known kit; the signature does not verify
            (e.g. one byte changed); its signing time is in the future.
        Conflict: the record was imported before (no second event is written).
    """
    if not deps.is_admin(actor):
        raise Forbidden("only admins import break-glass records")
    data, signature = read_record(raw)
    kit_id = kit_of(data)
    with deps.store.transaction() as tx:
        try:
            kit = tx.get_kit(kit_id)
        except NotFound as exc:
            raise InvalidInput(
                f"the record names kit {kit_id}, which this Keyturn does not know",
                field="record",
            ) from exc
    record = verify_record(data, signature, public_key_of(kit))
    now = deps.clock.now()
    if record.signed_at > now + deps.config.ssh_ca.clock_skew:
        raise InvalidInput(
            f"the record was signed at {format_time(record.signed_at)}, in the future; check "
            "the clock of the machine that signed it",
            field="record",
        )
    facts_user = deps.config.user(record.name)
    approvers = _offline_approvers(deps, record, facts_user, now)
    findings = record_findings(deps.config, record, kit)
    review = PostIncidentReview(
        id=deps.new_id("pir"),
        mode=BreakGlassMode.OFFLINE,
        user_id=record.name,
        role=record.role,
        target=record.target,
        justification=_shown(record.justification),
        used_at=record.signed_at,
        opened_at=now,
        due_at=now + deps.config.break_glass.review_deadline,
        reviewers=tuple(r for r in _reviewers(deps, approvers, record.name) if r != actor.id),
        record_id=record.id,
        kit_id=kit.id,
        imported_by=actor.id,
        findings=findings,
    )
    with deps.store.transaction() as tx:
        earlier = tx.review_for_record(record.id)
        if earlier is not None:
            raise Conflict(
                f"record {record.id} was imported already (post-incident review {earlier.id})",
                record_id=record.id,
            )
        tx.add_post_incident_review(review)
        kit = tx.get_kit(kit.id)
        if kit.spent_at is None:
            tx.save_kit(dataclasses.replace(kit, spent_at=now, spent_by=record.id))
        tx.append_audit(
            AuditDraft(
                now,
                actor.id,
                "break_glass.imported",
                _subject(review),
                _import_details(record, kit, review, known_user=facts_user is not None),
            )
        )
    deps.metrics.break_glass_uses.labels(record.role, str(BreakGlassMode.OFFLINE)).inc()
    if findings:
        deps.notifier.alert(
            "break_glass_out_of_policy",
            f"offline break-glass record {record.id} ({record.name}, {record.role} on "
            f"{record.target}) went beyond the configuration: {'; '.join(findings)}",
            {"record_id": record.id, "kit_id": kit.id, "review_id": review.id},
        )
    deps.notifier.alert(
        "break_glass_kit_spent",
        f"offline break-glass kit {kit.id} was used by {record.name}; rotate it "
        "(keyturn break-glass kit rotate)",
        {"kit_id": kit.id, "record_id": record.id},
    )
    notifications.break_glass_used(deps, review, recipients(deps, review))
    return review


def _shown(text: str) -> str:
    """Signed text as people are shown it (control characters escaped; the audit event keeps
    the record exactly as signed)."""
    return clean_text(text, field="justification", max_length=10_000, required=False) or ""


def record_findings(config: KeyturnConfig, record: OfflineRecord, kit: KitInfo) -> tuple[str, ...]:
    """What an authentic offline record did beyond the configuration in force: the signer's copy
    of the configuration may have been edited, or out of date. The record is imported all the
    same (it is evidence); these findings go to the review, the audit event and an alert."""
    found: list[str] = []
    user = config.user(record.name)
    role = config.role(record.role)
    target = config.target(record.target)
    if role is None or role.break_glass is None or target is None:
        found.append(f"role {record.role} on {record.target} has no break-glass configuration")
    else:
        settings = role.break_glass
        if user is None or settings.group not in user.groups:
            found.append(f"{record.name} is no member of break-glass group {settings.group}")
        elif not is_eligible(config, user, role.name, target):
            found.append(f"{record.name} is not eligible for {role.name} on {target.name}")
        window = record.not_after - record.not_before
        if window > settings.max_duration + config.ssh_ca.clock_skew:
            found.append(
                f"the certificate lasts {humanize(window)}, above the cap of "
                f"{humanize(settings.max_duration)}"
            )
        expected = render_principals(
            role.ssh.principals, role=role.name, target=target.name, user=record.name
        )
        if list(record.principals) != expected:
            found.append(
                f"principals {', '.join(record.principals)} instead of {', '.join(expected)}"
            )
        if record.login != target.login:
            found.append(f"login {record.login} instead of {target.login}")
    if kit.retired_at is not None and record.signed_at > kit.retired_at:
        found.append(f"signed with kit {kit.id} after it was retired")
    if record.signed_at < kit.created_at:
        found.append(f"signed before kit {kit.id} was made")
    found += [f"the sealed {name} was opened" for name in record.sealed_opened]
    return tuple(found)


def _offline_approvers(
    deps: Deps, record: OfflineRecord, user: UserConfig | None, now: datetime
) -> Approvers:
    role = deps.config.role(record.role)
    target = deps.config.target(record.target)
    if role is None or target is None:
        return Approvers()
    facts = gather(
        deps,
        user=user or UserConfig(id=record.name, name=record.name),
        role=role,
        target=target,
        duration=record.not_after - record.not_before,
        justification=record.justification,
        ticket=None,
        now=now,
    )
    return deps.policy.approvers_for(facts)


def _import_details(
    record: OfflineRecord, kit: KitInfo, review: PostIncidentReview, *, known_user: bool
) -> dict[str, Any]:
    return {
        "mode": str(BreakGlassMode.OFFLINE),
        "record": record.data,
        "signature": record.signature,
        "record_sha256": record.sha256,
        "kit_id": kit.id,
        "kit_retired_before_use": kit.retired_at is not None and kit.retired_at < record.signed_at,
        "findings": list(review.findings),
        "imported_by": review.imported_by,
        "known_user": known_user,
        "review_id": review.id,
        "review_due": format_time(review.due_at),
    }


# --- the kit ----------------------------------------------------------------------------------
def kit_in_force(deps: Deps) -> KitInfo | None:
    """The newest kit not retired, if any."""
    with deps.store.transaction() as tx:
        return next((k for k in tx.kits() if k.retired_at is None), None)


def served_ca_lines(deps: Deps) -> list[str]:
    """Break-glass CA lines targets trust (``GET /v1/ssh/ca``): the kit in force only; a rotated
    kit's line is dropped, so its certificates stop working on targets that fetch the lines."""
    kit = kit_in_force(deps)
    return [kit.public_key] if kit is not None else []


def kit_status(deps: Deps) -> dict[str, Any]:
    """``{state: none|ready|spent, kit_id, fingerprint, spent_at, spent_by}`` (``/readyz``)."""
    kit = kit_in_force(deps)
    if kit is None:
        return {"state": "none"}
    return {
        "state": kit.state,
        "kit_id": kit.id,
        "fingerprint": kit.fingerprint,
        "threshold": kit.threshold,
        "shares": kit.shares,
        "created_at": format_time(kit.created_at),
        "spent_at": format_time(kit.spent_at) if kit.spent_at else None,
        "spent_by": kit.spent_by,
    }


def create_kit(
    deps: Deps,
    actor: str,
    *,
    threshold: int,
    shares: int,
    rotate: bool = False,
    publish: Callable[[KitInfo], None] | None = None,
) -> tuple[KitInfo, list[str]]:
    """Make the offline kit (``rotate``: replace the one in force).

    Order: the kit is made in memory; with ``break_glass.directory_account`` set, a new random
    password is set on that account (RFC 3062), read back by binding with it, and sealed in the
    kit (a password from the old kit is never valid again); ``publish`` writes the kit's public
    file; only then is the kit stored (and the old one retired) in one transaction that checks
    again that the kit in force did not change meanwhile. A failure before the commit stores
    nothing and the old kit stays in force (if it comes after the password change, the account's
    password is one nobody holds: run the command again).

    Returns:
        The kit (stored) and its shares (returned once; never stored or logged).

    Raises:
        Conflict: a kit is in force and ``rotate`` is False, none is and it is True, or another
            run changed the kit in force meanwhile.
        InvalidInput: threshold/shares out of range.
        ProviderError: the directory refused the new password.
        OSError: ``publish`` could not write the kit file.
    """
    now = deps.clock.now()
    current = kit_in_force(deps)
    _check_kit_change(current, rotate=rotate)
    sealed: dict[str, tuple[str, str]] = {}
    account = deps.config.break_glass.directory_account
    password = secrets.token_urlsafe(24) if account is not None else None
    if account is not None and password is not None:
        sealed[SEALED_ACCOUNT] = (account, password)
    kit, mnemonics = new_kit(threshold=threshold, shares=shares, now=now, sealed=sealed)
    if account is not None and password is not None:
        _set_directory_password(deps, account, password)
    if publish is not None:
        publish(kit)
    with deps.store.transaction() as tx:
        in_force = next((k for k in tx.kits() if k.retired_at is None), None)
        if (in_force.id if in_force else None) != (current.id if current else None):
            raise Conflict(
                "the kit in force changed while this one was made; run the command again"
            )
        tx.add_kit(kit)
        if current is not None:
            tx.save_kit(dataclasses.replace(current, retired_at=now))
        details: dict[str, Any] = {
            "kit_id": kit.id,
            "fingerprint": kit.fingerprint,
            "threshold": threshold,
            "shares": shares,
            "sealed": sorted(kit.sealed),
        }
        if current is not None:
            details |= {
                "retired_kit_id": current.id,
                "retired_kit_spent": current.spent_at is not None,
            }
        action = "break_glass.kit_rotated" if current is not None else "break_glass.kit_created"
        tx.append_audit(AuditDraft(now, actor, action, {"kit_id": kit.id}, details))
    return kit, mnemonics


def _check_kit_change(current: KitInfo | None, *, rotate: bool) -> None:
    if current is not None and not rotate:
        raise Conflict(
            f"kit {current.id} is in force; replace it with 'keyturn break-glass kit rotate'"
        )
    if current is None and rotate:
        raise Conflict("there is no kit to rotate; make one with 'keyturn break-glass kit create'")


def _set_directory_password(deps: Deps, dn: str, password: str) -> None:
    directory = deps.providers.get("ldap")
    if not isinstance(directory, DirectoryPasswords):
        raise ProviderError(
            "break_glass.directory_account needs the ldap provider", retryable=False
        )
    directory.set_password(dn, password)
    if not directory.check_password(dn, password):
        raise ProviderError(
            "the emergency account's new password could not be read back (bind failed)",
            retryable=True,
        )
