"""Grant lifecycle: activation, extension, early end (release/revoke), expiry, resumption.

Write-ahead: every state is committed before the provider is called, so a crash at any point
leaves a row (``provisioning``, ``revoking``, ``revoke_failed``) that :func:`resume_unfinished`
finishes. A grant becomes ``active`` only when the provider reads the privilege back, and
``revoked`` only when it reads back that the privilege is gone. A failed revoke is recorded
(``revoke_failed``, an audit event, a metric, an alert on the first failure), never swallowed,
and retried forever with exponential backoff and jitter (tenacity's ``wait_random_exponential``)
at times stored in the row, so retries survive restarts and one stuck grant never delays another.

Overlap: grants of one user that share a privilege (the same directory group) keep it until the
last of them ends; ending one never cuts the others (the AWS TEAM #279 bug).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import structlog
import tenacity

from keyturn.config import UserConfig
from keyturn.domain.audit import AuditDraft, format_time
from keyturn.domain.durations import humanize
from keyturn.domain.errors import Conflict, Forbidden, InvalidInput, ProviderError
from keyturn.domain.model import AccessRequest, EndReason, Grant, GrantStatus, Outcome
from keyturn.ports import Granted, Provider, StoreTx
from keyturn.service import notifications
from keyturn.service.deps import Deps
from keyturn.service.facts import decide

SYSTEM_WORKER = "system:worker"
CLAIM_PER_THREAD = 64
WAVE = 0.05
"""Seconds: how often a pass commits the revocation outcomes that came in (see _revoke_all)."""
"""Grants an instance claims ahead per revocation thread (see :func:`_room`)."""
log = structlog.get_logger("keyturn.grants")


def subject(grant: Grant) -> dict[str, str]:
    """Audit subject ids of a grant."""
    return {"grant_id": grant.id, "request_id": grant.request_id, "user_id": grant.user_id}


def new_grant(deps: Deps, tx: StoreTx, request: AccessRequest, now: datetime) -> Grant:
    """Write the ``provisioning`` row for an approved request (inside the caller's transaction).

    The window starts now (activation), not at request time.
    """
    role = deps.config.role(request.role)
    if role is None:
        raise ProviderError(f"role {request.role!r} is not configured", retryable=False)
    provider = role.provider
    privilege = deps.provider(provider).privilege(request.role, request.target)
    grant = Grant(
        id=deps.new_id("grt"),
        request_id=request.id,
        user_id=request.requester_id,
        role=request.role,
        target=request.target,
        provider=provider,
        status=GrantStatus.PROVISIONING,
        not_before=now,
        not_after=now + request.duration,
        created_at=now,
        updated_at=now,
        serial=deps.new_serial() if provider == "ssh" else None,
        privilege=privilege,
        break_glass=request.break_glass,
    )
    tx.add_grant(grant)
    tx.append_audit(
        AuditDraft(now, SYSTEM_WORKER, "grant.provisioning", subject(grant), _window(grant))
    )
    return grant


def _window(grant: Grant) -> dict[str, object]:
    flag: dict[str, object] = {"break_glass": True} if grant.break_glass else {}
    return flag | {
        "role": grant.role,
        "target": grant.target,
        "provider": grant.provider,
        "not_before": format_time(grant.not_before),
        "not_after": format_time(grant.not_after),
        "serial": _serial(grant),
        "privilege": grant.privilege,
    }


def _serial(grant: Grant) -> str | None:
    """Serials are 63-bit; RFC 8785 hashes only integers up to 2**53, so they are strings."""
    return str(grant.serial) if grant.serial is not None else None


def activate(deps: Deps, grant: Grant, request: AccessRequest, *, resumed: bool = False) -> Grant:
    """Call the provider for a ``provisioning`` grant, verify, commit ``active`` (or ``failed``).

    Args:
        resumed: the row was left ``provisioning`` by an interrupted attempt, which may have
            added the privilege before it stopped.

    Returns:
        The grant as committed. A provider failure leaves it ``failed`` with the reason, and
        nothing half-granted: unless another live grant of the user shares it, the privilege is
        taken away again when it may be Keyturn's doing -- this call added it, an earlier
        Keyturn grant of the user held it (and kept it for this one), or the outcome of an
        interrupted or failed call is unknown. If even that fails, the ``grant.failed`` event
        says so and reconciliation removes the leftover.
    """
    provider = deps.provider(grant.provider)
    granted = None
    try:
        if deps.clock.now() >= grant.not_after:
            raise ProviderError(
                "the window closed before the privilege was granted", retryable=False
            )
        granted = provider.grant(grant, request)
        candidate = dataclasses.replace(grant, credentials=granted.credentials)
        if not provider.verify_granted(candidate):
            raise ProviderError(
                "the privilege could not be read back after granting", retryable=True
            )
    except ProviderError as exc:
        details: dict[str, object] = {"error": exc.message}
        if _maybe_ours(deps, grant, granted, exc, resumed=resumed):
            added = (
                grant
                if granted is None
                else dataclasses.replace(grant, credentials=granted.credentials)
            )
            details["cleanup"] = cleanup = _take_back(deps, provider, added)
            if cleanup.startswith("failed"):
                deps.notifier.alert(
                    "grant_cleanup_failed",
                    f"grant {grant.id} failed and what it may have added could not be taken back",
                    {k: str(v) for k, v in (subject(grant) | details).items()},
                )
        now = deps.clock.now()
        with deps.store.transaction() as tx:
            failed = tx.get_grant(grant.id, lock=True).transition(
                GrantStatus.FAILED, now, last_error=exc.message, attempts=grant.attempts + 1
            )
            tx.save_grant(failed)
            tx.append_audit(AuditDraft(now, SYSTEM_WORKER, "grant.failed", subject(grant), details))
        return failed
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        active = tx.get_grant(grant.id, lock=True).transition(
            GrantStatus.ACTIVE, now, credentials=granted.credentials
        )
        tx.save_grant(active)
        details = _window(active) | {
            "time_to_grant_ms": _ms(now - request.created_at),
            "already_present": granted.already_present,
            "verified": True,
        }
        tx.append_audit(AuditDraft(now, SYSTEM_WORKER, "grant.issued", subject(active), details))
    deps.metrics.grants_issued.labels(grant.provider).inc()
    notifications.grant_activated(deps, active)
    return active


def _maybe_ours(
    deps: Deps, grant: Grant, granted: Granted | None, exc: ProviderError, *, resumed: bool
) -> bool:
    """Could the privilege now present be Keyturn's doing for this grant (see :func:`activate`)?"""
    if granted is None:  # the provider call failed, or was never made in this attempt
        return resumed or exc.retryable
    if not granted.already_present:
        return True
    if grant.privilege is None:
        return False
    with deps.store.transaction() as tx:
        return grant.user_id in tx.ended_holders(grant.provider, grant.privilege)


def _take_back(deps: Deps, provider: Provider, grant: Grant) -> str:
    """Undo a grant that could not be verified; say what happened (for the audit event)."""
    if _sharing(deps, grant):
        return "kept: another live grant of this user holds the same privilege"
    try:
        provider.revoke(grant, deps.clock.now())
    except ProviderError as exc:
        return f"failed ({exc.message}); reconciliation removes any leftover"
    return "removed"


def _ms(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() * 1000))


def _sharing(deps: Deps, grant: Grant) -> list[Grant]:
    """The user's other live grants holding the same shared privilege."""
    if grant.privilege is None:
        return []
    with deps.store.snapshot() as tx:
        return _others_holding(tx, grant)


def _others_holding(tx: StoreTx, grant: Grant) -> list[Grant]:
    if grant.privilege is None:
        return []
    holding = tx.grants_holding(grant.provider, grant.privilege, user_id=grant.user_id)
    return [g for g in holding if g.id != grant.id]


def extend(deps: Deps, actor: UserConfig, grant_id: str, extra: timedelta) -> Grant:
    """Lengthen one's own active grant by ``extra``, without a gap in access.

    The new total window (``not_before`` to the new ``not_after``) must be within the role's
    ``max_duration``, and the policy in force now must auto-approve a request for that total
    duration (eligibility included); an extension never needs less than a new request would.
    The provider issues credentials for the new window (a new SSH certificate with the same
    serial; for a group membership nothing changes on the directory).

    Raises:
        InvalidInput: ``extra`` is not positive, or the total would exceed the role's maximum.
        NotFound: no such grant. Forbidden: not the actor's grant, a break-glass grant (capped
        by design), or the policy does not auto-approve the longer window. Conflict: the grant
        is not active or has expired.
        ProviderError: new credentials could not be issued (nothing changed).
    """
    if extra <= timedelta(0):
        raise InvalidInput("the extension must be longer than zero", field="duration")
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        grant = tx.get_grant(grant_id)
        if grant.user_id != actor.id:
            raise Forbidden("you can only extend your own grants", grant_id=grant_id)
        if grant.status is not GrantStatus.ACTIVE or grant.not_after <= now:
            state = "expired" if grant.status is GrantStatus.ACTIVE else str(grant.status)
            raise Conflict(
                f"grant {grant_id} is {state}; only an active grant can be extended",
                grant_id=grant_id,
                state=state,
            )
        request = tx.get_request(grant.request_id)
    if grant.break_glass:
        raise Forbidden(
            "a break-glass grant cannot be extended (its cap is the point); break glass again "
            "or request access the usual way",
            grant_id=grant_id,
        )
    decision_rule = _check_extension(
        deps, actor=actor, grant=grant, request=request, extra=extra, now=now
    )
    longer = dataclasses.replace(grant, not_after=grant.not_after + extra)
    credentials = deps.provider(grant.provider).extend(longer, request)
    with deps.store.transaction() as tx:
        current = tx.get_grant(grant_id, lock=True)
        if current.status is not GrantStatus.ACTIVE or current.not_after != grant.not_after:
            raise Conflict(f"grant {grant_id} changed meanwhile; try again", grant_id=grant_id)
        extended = dataclasses.replace(
            current,
            not_after=longer.not_after,
            credentials=credentials,
            updated_at=now,
            warned_at=None,
        )
        tx.save_grant(extended)
        tx.append_audit(
            AuditDraft(
                now,
                actor.id,
                "grant.extended",
                subject(extended),
                {
                    "from": format_time(grant.not_after),
                    "to": format_time(extended.not_after),
                    "extra_s": int(extra.total_seconds()),
                    "rule": decision_rule,
                },
            )
        )
    return extended


def _check_extension(
    deps: Deps,
    *,
    actor: UserConfig,
    grant: Grant,
    request: AccessRequest,
    extra: timedelta,
    now: datetime,
) -> str:
    role = deps.config.role(grant.role)
    target = deps.config.target(grant.target)
    if role is None or target is None:
        raise Conflict("the grant's role or target is no longer configured", grant_id=grant.id)
    total = grant.not_after + extra - grant.not_before
    if total > role.max_duration:
        room = max(timedelta(0), role.max_duration - (grant.not_after - grant.not_before))
        raise InvalidInput(
            f"the grant would last {humanize(total)} in all; role {role.name} allows at most "
            f"{humanize(role.max_duration)} (at most {humanize(room)} more)",
            field="duration",
        )
    decision = decide(
        deps,
        actor,
        role,
        target,
        duration=total,
        justification=request.justification,
        ticket=request.ticket,
        now=now,
        existing=request,
    )
    if decision.outcome is not Outcome.AUTO_APPROVE:
        why = "; ".join(decision.reasons) or decision.rule
        raise Forbidden(
            f"the policy does not approve extending this grant by itself ({decision.rule}: "
            f"{why}); request access again",
            rule=decision.rule,
        )
    return decision.rule


def release(deps: Deps, actor: UserConfig, grant_id: str) -> Grant:
    """The requester ends their own grant early.

    Raises:
        NotFound: no such grant. Forbidden: not the actor's grant. Conflict: not active.
    """
    return _end(deps, actor.id, grant_id, EndReason.RELEASED, owner_only=actor.id)


def revoke(deps: Deps, actor: UserConfig, grant_id: str) -> Grant:
    """An admin ends any active grant early.

    Raises:
        NotFound: no such grant. Forbidden: the actor is not an admin. Conflict: not active.
    """
    if not deps.is_admin(actor):
        raise Forbidden("only an admin may revoke a grant; the requester may release it")
    return _end(deps, actor.id, grant_id, EndReason.REVOKED, owner_only=None)


def _end(
    deps: Deps, actor_id: str, grant_id: str, reason: EndReason, *, owner_only: str | None
) -> Grant:
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        grant = tx.get_grant(grant_id, lock=True)
        if owner_only is not None and grant.user_id != owner_only:
            raise Forbidden("you can only release your own grants", grant_id=grant_id)
        if grant.status is not GrantStatus.ACTIVE:
            raise Conflict(f"grant {grant_id} is {grant.status}, not active", grant_id=grant_id)
        [revoking] = _mark_revoking(tx, [grant], reason, actor_id, now)
    return finish_revoke(deps, revoking)


def _mark_revoking(
    tx: StoreTx, grants: list[Grant], reason: EndReason, actor_id: str, now: datetime
) -> list[Grant]:
    """Write ``revoking`` (the write-ahead state) and its audit event for each grant."""
    revoking = [
        g.transition(GrantStatus.REVOKING, now, end_reason=reason, ended_by=actor_id, ended_at=now)
        for g in grants
    ]
    tx.save_grants(revoking)
    for grant in grants:
        tx.append_audit(
            AuditDraft(now, actor_id, "grant.revoking", subject(grant), {"reason": str(reason)})
        )
    return revoking


def retry_delay(attempts: int, initial: timedelta, cap: timedelta) -> timedelta:
    """Wait before retry number ``attempts`` (1-based) of a failed revocation.

    Exponential backoff with full jitter (tenacity ``wait_random_exponential``): uniform between
    ``initial`` and ``min(cap, initial * 2**(attempts-1))``. Jitter spreads the retries of many
    grants that failed together (a directory outage) so they do not return in one burst.
    """
    wait = tenacity.wait_random_exponential(
        multiplier=initial.total_seconds(),
        max=cap.total_seconds(),
        min=initial.total_seconds(),
    )
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = max(1, attempts)
    return timedelta(seconds=wait(state))


def finish_revoke(deps: Deps, grant: Grant) -> Grant:
    """Call the provider for a ``revoking``/``revoke_failed`` grant, verify, commit the result.

    If another live grant of the same user shares the privilege, the privilege is kept for it
    and this grant ends without a provider call (``kept_for`` in the audit event).

    Returns:
        The grant as committed: ``revoked`` when the provider reads back that the privilege is
        gone (or kept for an overlapping grant), else ``revoke_failed`` with the error, an
        audit event, and a ``retry_at`` for the worker.

    Raises:
        Conflict: the row moved on or was taken over by another instance meanwhile.
    """
    done = commit_attempts(deps, [attempt_revoke(deps, grant)])
    if not done:
        raise Conflict(f"grant {grant.id} was finished by someone else", grant_id=grant.id)
    return done[0]


@dataclass(frozen=True)
class RevokeAttempt:
    """What the provider said for one grant, not yet committed (see :func:`commit_attempts`).

    Attributes:
        grant: the grant as claimed (``revoking`` or ``revoke_failed``).
        at: when the provider was called.
        details: the ``grant.<end_reason>`` audit details when the privilege is gone (verified,
            or kept for an overlapping grant); None when the call failed.
        error: the provider's error when it failed.
    """

    grant: Grant
    at: datetime
    details: dict[str, object] | None = None
    error: ProviderError | None = None


def attempt_revoke(deps: Deps, grant: Grant) -> RevokeAttempt:
    """Revoke on the provider and read back (no store writes: see :func:`commit_attempts`).

    Raises:
        Conflict: the row moved on or was leased by someone else since it was claimed.
    """
    provider = deps.provider(grant.provider)
    sharing = _start_revoke(deps, grant)
    now = deps.clock.now()
    if sharing:
        return RevokeAttempt(grant, now, details={"kept_for": [g.id for g in sharing]})
    deps.metrics.revocations_attempted.labels(grant.provider).inc()
    try:
        already_gone = provider.revoke(grant, now)
        if not provider.verify_revoked(grant, now):
            raise ProviderError("the privilege is still present after revoking", retryable=True)
    except ProviderError as exc:
        return RevokeAttempt(grant, now, error=exc)
    return RevokeAttempt(grant, now, details={"verified": True, "already_gone": already_gone})


def commit_attempts(
    deps: Deps, attempts: list[RevokeAttempt], *, background: bool = False
) -> list[Grant]:
    """Commit the outcome of each attempt -- ``revoked`` or ``revoke_failed``, with its audit
    event -- in ONE transaction (a group commit: a burst of expiries costs one store commit per
    pass, not one per grant), then do what follows a commit (metrics, notifications, alerts,
    restoring an overlapping grant's privilege).

    A grant that moved on meanwhile (another instance took it over or finished it: its row is
    no longer as claimed) is left out; nothing of it is written.

    Args:
        background: do what follows each commit on ``deps.executor`` (the worker's pass must not
            wait for a notification or for restoring an overlapping grant's privilege, a
            provider call that may hang); each one's failure is logged.

    Returns:
        The grants as committed, in the order of ``attempts``.
    """
    if not attempts:
        return []
    committed: list[tuple[RevokeAttempt, Grant]] = []
    drafts: list[AuditDraft] = []
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        for attempt in attempts:
            try:
                current = tx.get_grant(attempt.grant.id, lock=True)
                if (current.status, current.updated_at) != (
                    attempt.grant.status,
                    attempt.grant.updated_at,
                ):
                    continue  # taken over (or finished) by someone else meanwhile
                if attempt.error is None:
                    done, events = _revoked(current, attempt, now)
                else:
                    done, events = _revoke_failed(deps, current, attempt, now)
            except Conflict:
                continue  # finished by another instance or the API; nothing left to do
            committed.append((attempt, done))
            drafts += events
        tx.save_grants([done for _attempt, done in committed])
        for draft in drafts:
            tx.append_audit(draft)
    for attempt, done in committed:
        if background and deps.executor is not None:
            future = deps.executor.submit(_after_commit, deps, attempt, done)
            future.add_done_callback(partial(_after_commit_done, done.id))
        else:
            _after_commit(deps, attempt, done)
    return [done for _attempt, done in committed]


def _after_commit_done(grant_id: str, future: Future[None]) -> None:
    """Log a failure of what follows a commit (it ran on a revocation thread)."""
    if not future.cancelled() and (exc := future.exception()) is not None:
        log.error(
            "after revoking: notification, metrics or restoring an overlapping grant failed",
            grant_id=grant_id,
            error=repr(exc)[:300],
        )


def _revoked(
    current: Grant, attempt: RevokeAttempt, now: datetime
) -> tuple[Grant, list[AuditDraft]]:
    """The grant ``revoked`` and its ``grant.<end_reason>`` event (to be written)."""
    done = current.transition(
        GrantStatus.REVOKED,
        now,
        last_error=None,
        retry_at=None,
        attempts=attempt.grant.attempts + 1,
    )
    action = f"grant.{done.end_reason or EndReason.REVOKED}"
    details = dict(attempt.details or {}) | {"serial": _serial(done)}
    if done.end_reason is EndReason.EXPIRED:
        details["lag_ms"] = _ms(now - done.not_after)
    actor = done.ended_by or SYSTEM_WORKER
    return done, [AuditDraft(now, actor, action, subject(done), details)]


def _revoke_failed(
    deps: Deps, current: Grant, attempt: RevokeAttempt, now: datetime
) -> tuple[Grant, list[AuditDraft]]:
    """The grant ``revoke_failed`` with its retry time, and its events (the first failure
    raises an alert event too)."""
    server = deps.config.server
    grant, exc = attempt.grant, attempt.error
    assert exc is not None  # noqa: S101 -- only failed attempts come here
    first = grant.status is not GrantStatus.REVOKE_FAILED
    tries = grant.attempts + 1
    retry_at = attempt.at + retry_delay(tries, server.retry_initial, server.retry_max)
    failed = current.transition(
        GrantStatus.REVOKE_FAILED, now, last_error=exc.message, attempts=tries, retry_at=retry_at
    )
    details = _failure_details(failed)
    events = [AuditDraft(now, SYSTEM_WORKER, "grant.revoke_failed", subject(grant), details)]
    if first:
        events.append(
            AuditDraft(now, SYSTEM_WORKER, "alert.revoke_failed", subject(grant), details)
        )
    return failed, events


def _failure_details(failed: Grant) -> dict[str, object]:
    return {
        "error": failed.last_error,
        "attempt": failed.attempts,
        "retry_at": format_time(failed.retry_at) if failed.retry_at else None,
    }


def _after_commit(deps: Deps, attempt: RevokeAttempt, done: Grant) -> None:
    grant = attempt.grant
    if done.status is GrantStatus.REVOKE_FAILED:
        deps.metrics.revocations_failed.labels(grant.provider).inc()
        if grant.status is not GrantStatus.REVOKE_FAILED:  # the first failure alerts
            deps.metrics.revoke_failed_alerts.labels(grant.provider).inc()
            deps.notifier.alert(
                "revoke_failed",
                f"revocation of grant {grant.id} ({grant.role} on {grant.target} for "
                f"{grant.user_id}) failed; retrying",
                {k: str(v) for k, v in (subject(grant) | _failure_details(done)).items()},
            )
        return
    notifications.grant_ended(deps, done)
    if attempt.details is None or "kept_for" in attempt.details:
        return
    deps.metrics.revocations_succeeded.labels(grant.provider).inc()
    if done.end_reason is EndReason.EXPIRED:
        lag = (done.updated_at - done.not_after).total_seconds()
        deps.metrics.revocation_lag.labels(grant.provider).observe(max(0.0, lag))
    _restore_overlapping(deps, deps.provider(grant.provider), done)


def _start_revoke(deps: Deps, grant: Grant) -> list[Grant]:
    """Check this caller still holds the grant's lease (the row is as claimed: another instance
    may have taken over a row that waited too long), and return the user's other live grants
    sharing its privilege. A read-only snapshot: it does not queue behind writers.

    A ``revoking`` grant claimed less than half of ``server.stale_after`` ago needs no read to
    know its lease holds: no instance takes over a ``revoking`` row before ``stale_after`` has
    passed since its claim (:func:`resume_unfinished`), and the API acts only on ``active``
    grants. (A ``revoke_failed`` row is claimable again as soon as its ``retry_at`` has come,
    so it is always read.) Only a shared privilege then needs the read (who else holds it).

    Raises:
        Conflict: the row moved on or was leased by someone else since it was claimed.
    """
    fresh = deps.clock.now() - grant.updated_at < deps.config.server.stale_after / 2
    if fresh and grant.status is GrantStatus.REVOKING and grant.privilege is None:
        return []
    with deps.store.snapshot() as tx:
        current = tx.get_grant(grant.id)
        if current.status is not grant.status or current.updated_at != grant.updated_at:
            raise Conflict(f"grant {grant.id} was taken over", grant_id=grant.id)
        return _others_holding(tx, grant)


def warn_expiring(deps: Deps, *, limit: int = 500) -> list[Grant]:
    """Tell holders whose grant ends within ``notifier.expiry_warning`` (once per grant; a
    grant no longer than the warning period is not warned about: its holder knows).

    Returns:
        The grants whose holders were told in this pass.
    """
    now = deps.clock.now()
    lead = deps.config.notifier.expiry_warning
    with deps.store.transaction() as tx:
        due = tx.claim_expiring(now + lead, limit)
        for grant in due:
            tx.save_grant(dataclasses.replace(grant, warned_at=now))
    told = [g for g in due if g.not_after - g.not_before > lead]
    for grant in told:
        notifications.grant_expiring(deps, grant)
    return told


def _restore_overlapping(deps: Deps, provider: Provider, ended: Grant) -> None:
    """A grant of the same privilege that went live while this one was being removed must not
    lose it: give it back (idempotent) and record that."""
    for other in _sharing(deps, ended):
        now = deps.clock.now()
        with deps.store.transaction() as tx:
            request = tx.get_request(other.request_id)
        try:
            provider.grant(other, request)
            outcome = "restored"
        except ProviderError as exc:
            outcome = f"failed ({exc.message}); reconciliation restores it"
        record = AuditDraft(
            now,
            SYSTEM_WORKER,
            "grant.restored",
            subject(other),
            {"after": ended.id, "outcome": outcome},
        )
        with deps.store.transaction() as tx:
            tx.append_audit(record)


def expire_due(deps: Deps, *, limit: int = 500) -> list[Grant]:
    """End every active grant whose window has closed. Safe with several workers: each due grant
    is claimed (``SKIP LOCKED``) and marked ``revoking`` by exactly one of them.

    Returns:
        The grants as committed after the provider call.
    """
    now = deps.clock.now()
    limit = min(limit, _room(deps))
    if limit == 0:
        return []
    with deps.store.transaction() as tx:
        due = tx.claim_due_grants(now, limit)
        claimed = _mark_revoking(tx, due, EndReason.EXPIRED, SYSTEM_WORKER, now)
    return _revoke_all(deps, claimed)


def _room(deps: Deps) -> int:
    """How many more grants this instance should claim: a bounded backlog per revocation thread
    (``CLAIM_PER_THREAD``), less what it is still working on, so the rest of a burst is left to
    other instances. (Correctness does not rest on this bound: a queued step first checks that
    its lease still holds, see :func:`_start_revoke`.)"""
    if deps.executor is None:
        return 1_000_000
    cap = CLAIM_PER_THREAD * deps.config.server.revoke_concurrency
    return max(0, cap - len(deps.in_flight))


def _each(deps: Deps, grants: list[Grant], step: Callable[[Grant], Grant]) -> list[Grant]:
    """Run ``step`` per grant. With ``deps.executor`` the grants run concurrently and the pass
    waits at most ``server.worker_max_sleep`` for them: a hanging provider call holds up only
    its own grant (it finishes in the background; its row stays ``revoking`` and is taken over
    by :func:`resume_unfinished` if the process dies), never the next pass's expiries. A grant
    another instance finished first (Conflict) is skipped.

    Returns:
        The grants finished within this pass, as committed.
    """

    def one(grant: Grant) -> Grant | None:
        try:
            return step(grant)
        except Conflict:
            return None  # another worker or the API moved this grant on; nothing left to do

    if deps.executor is None:
        results = [one(g) for g in grants]
    else:
        futures = []
        for grant in grants:
            deps.in_flight.add(grant.id)
            future = deps.executor.submit(one, grant)
            future.add_done_callback(partial(_step_done, deps, grant.id))
            futures.append(future)
        timeout = deps.config.server.worker_max_sleep.total_seconds()
        finished, _running = wait(futures, timeout=timeout)
        results = [f.result() for f in futures if f in finished]
    return [g for g in results if g is not None]


def _revoke_all(deps: Deps, grants: list[Grant]) -> list[Grant]:
    """Revoke claimed grants: the provider calls run concurrently on ``deps.executor`` (a
    hanging call holds up only its own grant), and the pass waits at most
    ``server.worker_max_sleep`` for them, as :func:`_each` does. Outcomes are committed in
    waves: every :data:`WAVE` seconds, all that came in since the last wave in one transaction
    (:func:`commit_attempts`), so a burst costs a few commits and a slow call delays the others
    by at most one wave; a straggler past the pass commits its own when its call returns.
    Each grant stays in ``deps.in_flight`` until its outcome is committed, so
    :func:`resume_unfinished` never takes it for an interrupted one.

    Returns:
        The grants committed within this pass.
    """
    if deps.executor is None:
        return commit_attempts(deps, [a for g in grants if (a := _attempt(deps, g)) is not None])
    handoff = _Handoff(deps)
    pending = set()
    for grant in grants:
        deps.in_flight.add(grant.id)
        future = deps.executor.submit(_attempt, deps, grant)
        future.add_done_callback(partial(handoff.arrived, grant.id))
        pending.add(future)
    deadline = time.monotonic() + deps.config.server.worker_max_sleep.total_seconds()
    committed: list[Grant] = []
    while True:
        left = deadline - time.monotonic()
        if pending and left > 0:
            _done, pending = wait(pending, timeout=min(WAVE, left))
        final = not pending or time.monotonic() >= deadline
        ready = handoff.close() if final else handoff.take()
        try:
            committed += commit_attempts(deps, ready, background=True)
        finally:
            for attempt in ready:
                deps.in_flight.discard(attempt.grant.id)
        if final:
            return committed


def _attempt(deps: Deps, grant: Grant) -> RevokeAttempt | None:
    try:
        return attempt_revoke(deps, grant)
    except Conflict:
        return None  # another worker or the API moved this grant on; nothing left to do


class _Handoff:
    """Collects the attempts of one pass until the pass commits them (:meth:`close`); an
    attempt that arrives later is committed on its own, in the thread that made it."""

    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._lock = threading.Lock()
        self._ready: list[RevokeAttempt] = []
        self._closed = False

    def take(self) -> list[RevokeAttempt]:
        """The attempts in so far (the pass commits them; later ones are collected anew)."""
        with self._lock:
            ready, self._ready = self._ready, []
            return ready

    def close(self) -> list[RevokeAttempt]:
        """The last attempts of the pass; any later one commits itself."""
        with self._lock:
            self._closed = True
            ready, self._ready = self._ready, []
            return ready

    def arrived(self, grant_id: str, future: Future[RevokeAttempt | None]) -> None:
        attempt = None if future.cancelled() or future.exception() else future.result()
        with self._lock:
            if attempt is not None and not self._closed:
                self._ready.append(attempt)
                return
        try:
            if attempt is not None:
                for grant in commit_attempts(self._deps, [attempt]):
                    log.info("grant", grant_id=grant.id, status=str(grant.status), late=True)
        finally:
            _step_done(self._deps, grant_id, future)


def _step_done(deps: Deps, grant_id: str, future: Future[Any]) -> None:
    """Log how a background step ended (a crash leaves the row for resume_unfinished)."""
    deps.in_flight.discard(grant_id)
    if future.cancelled():
        return
    if (exc := future.exception()) is not None:
        log.error(
            "grant step crashed; the row is resumed later", grant_id=grant_id, error=repr(exc)[:300]
        )
        return
    if isinstance(grant := future.result(), Grant):
        log.info("grant", grant_id=grant.id, status=str(grant.status), user=grant.user_id)


def resume_unfinished(deps: Deps, *, limit: int = 200) -> list[Grant]:
    """Finish what a crash or an outage interrupted.

    * ``provisioning`` rows untouched for ``server.stale_after``: grant again (idempotent),
      verify, commit ``active`` (or ``failed`` if the window closed meanwhile, taking back
      what was added).
    * ``revoking`` rows untouched for ``server.stale_after``: revoke again and verify.
    * ``revoke_failed`` rows whose ``retry_at`` has come: revoke again and verify.

    Claimed rows get ``updated_at = now`` (a lease) in the claiming transaction, so another
    instance does not take them over while this one works on them.

    Returns:
        The grants acted on, as committed.
    """
    now = deps.clock.now()
    stale_before = now - deps.config.server.stale_after
    limit = min(limit, _room(deps))
    if limit == 0:
        return []
    with deps.store.transaction() as tx:
        leased = [
            dataclasses.replace(g, updated_at=now)
            for g in tx.claim_unfinished(now, stale_before, limit)
            if g.id not in deps.in_flight  # still queued here: not interrupted, just waiting
        ]
        for grant in leased:  # the lease: other instances see it fresh and leave it alone
            tx.save_grant(grant)
        requests = {g.id: tx.get_request(g.request_id) for g in leased}

    def step(grant: Grant) -> Grant:
        if grant.status is GrantStatus.PROVISIONING:
            return activate(deps, grant, requests[grant.id], resumed=True)
        return finish_revoke(deps, grant)

    return _each(deps, leased, step)
