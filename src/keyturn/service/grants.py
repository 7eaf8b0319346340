"""Grant lifecycle: activation, early end (release/revoke), expiry and reconciliation.

Write-ahead: every state is committed before the provider is called, so a crash at any point
leaves a row (``provisioning``, ``revoking``, ``revoke_failed``) that :func:`reconcile` finishes.
A grant becomes ``active`` only when the provider reads the privilege back, and ``revoked`` only
when it reads back that the privilege is gone. A failed revoke is recorded (``revoke_failed``,
an audit event), never swallowed, and retried by the worker.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from keyturn.config import UserConfig
from keyturn.domain.audit import AuditDraft, format_time
from keyturn.domain.errors import Conflict, Forbidden, ProviderError
from keyturn.domain.model import AccessRequest, EndReason, Grant, GrantStatus
from keyturn.ports import StoreTx
from keyturn.service.deps import Deps

SYSTEM_WORKER = "system:worker"
STALE_AFTER = timedelta(seconds=60)
"""A ``provisioning`` or ``revoking`` row untouched this long is taken over by reconciliation."""

RETRY_BASE = timedelta(seconds=1)
RETRY_CAP = timedelta(minutes=5)


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
    )
    tx.add_grant(grant)
    tx.append_audit(
        AuditDraft(now, SYSTEM_WORKER, "grant.provisioning", subject(grant), _window(grant))
    )
    return grant


def _window(grant: Grant) -> dict[str, object]:
    return {
        "role": grant.role,
        "target": grant.target,
        "provider": grant.provider,
        "not_before": format_time(grant.not_before),
        "not_after": format_time(grant.not_after),
        "serial": _serial(grant),
    }


def _serial(grant: Grant) -> str | None:
    """Serials are 63-bit; RFC 8785 hashes only integers up to 2**53, so they are strings."""
    return str(grant.serial) if grant.serial is not None else None


def activate(deps: Deps, grant: Grant, request: AccessRequest) -> Grant:
    """Call the provider for a ``provisioning`` grant, verify, commit ``active`` (or ``failed``).

    Returns:
        The grant as committed. A provider failure leaves it ``failed`` with the reason (nothing
        half-granted is left behind: a failed SSH signing hands out no certificate).
    """
    provider = deps.provider(grant.provider)
    try:
        if deps.clock.now() >= grant.not_after:
            raise ProviderError(
                "the window closed before the privilege was granted", retryable=False
            )
        credentials = provider.grant(grant, request)
        candidate = dataclasses.replace(grant, credentials=credentials)
        if not provider.verify_granted(candidate):
            raise ProviderError(
                "the privilege could not be read back after granting", retryable=True
            )
    except ProviderError as exc:
        now = deps.clock.now()
        with deps.store.transaction() as tx:
            failed = tx.get_grant(grant.id, lock=True).transition(
                GrantStatus.FAILED, now, last_error=exc.message, attempts=grant.attempts + 1
            )
            tx.save_grant(failed)
            tx.append_audit(
                AuditDraft(
                    now, SYSTEM_WORKER, "grant.failed", subject(grant), {"error": exc.message}
                )
            )
        return failed
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        active = tx.get_grant(grant.id, lock=True).transition(
            GrantStatus.ACTIVE, now, credentials=credentials
        )
        tx.save_grant(active)
        details = _window(active) | {"time_to_grant_ms": _ms(now - request.created_at)}
        tx.append_audit(AuditDraft(now, SYSTEM_WORKER, "grant.issued", subject(active), details))
    return active


def _ms(delta: timedelta) -> int:
    return max(0, int(delta.total_seconds() * 1000))


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
        revoking = _mark_revoking(tx, grant, reason, actor_id, now)
    return finish_revoke(deps, revoking)


def _mark_revoking(
    tx: StoreTx, grant: Grant, reason: EndReason, actor_id: str, now: datetime
) -> Grant:
    revoking = grant.transition(
        GrantStatus.REVOKING, now, end_reason=reason, ended_by=actor_id, ended_at=now
    )
    tx.save_grant(revoking)
    tx.append_audit(
        AuditDraft(now, actor_id, "grant.revoking", subject(grant), {"reason": str(reason)})
    )
    return revoking


def finish_revoke(deps: Deps, grant: Grant) -> Grant:
    """Call the provider for a ``revoking``/``revoke_failed`` grant, verify, and commit the result.

    Returns:
        The grant as committed: ``revoked`` when the provider reads back that the privilege is
        gone, else ``revoke_failed`` with the error (and an audit event) for the worker to retry.
    """
    provider = deps.provider(grant.provider)
    now = deps.clock.now()
    try:
        provider.revoke(grant, now)
        if not provider.verify_revoked(grant, now):
            raise ProviderError("the privilege is still present after revoking", retryable=True)
    except ProviderError as exc:
        with deps.store.transaction() as tx:
            failed = tx.get_grant(grant.id, lock=True).transition(
                GrantStatus.REVOKE_FAILED, now, last_error=exc.message, attempts=grant.attempts + 1
            )
            tx.save_grant(failed)
            tx.append_audit(
                AuditDraft(
                    now,
                    SYSTEM_WORKER,
                    "grant.revoke_failed",
                    subject(grant),
                    {"error": exc.message, "attempt": failed.attempts},
                )
            )
        return failed
    with deps.store.transaction() as tx:
        done = tx.get_grant(grant.id, lock=True).transition(
            GrantStatus.REVOKED, now, last_error=None, attempts=grant.attempts + 1
        )
        tx.save_grant(done)
        action = f"grant.{done.end_reason or EndReason.REVOKED}"
        details: dict[str, object] = {"verified": True, "serial": _serial(done)}
        if done.end_reason is EndReason.EXPIRED:
            details["lag_ms"] = _ms(now - done.not_after)
        tx.append_audit(
            AuditDraft(now, done.ended_by or SYSTEM_WORKER, action, subject(done), details)
        )
    return done


def expire_due(deps: Deps, *, limit: int = 500) -> list[Grant]:
    """End every active grant whose window has closed. Safe with several workers: each due grant
    is claimed (``SKIP LOCKED``) and marked ``revoking`` by exactly one of them.

    Returns:
        The grants as committed after the provider call.
    """
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        claimed = [
            _mark_revoking(tx, g, EndReason.EXPIRED, SYSTEM_WORKER, now)
            for g in tx.claim_due_grants(now, limit)
        ]
    return _each(claimed, lambda g: finish_revoke(deps, g))


def _each(grants: list[Grant], step: Callable[[Grant], Grant]) -> list[Grant]:
    """Run ``step`` per grant; one grant another instance finished first never blocks the rest."""
    done = []
    for grant in grants:
        try:
            done.append(step(grant))
        except Conflict:
            continue  # another worker or the API moved this grant on; nothing left to do here
    return done


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff for revoke retries: 1 s, 2 s, 4 s … capped at 5 minutes."""
    factor: int = 2 ** min(max(attempts - 1, 0), 20)
    return min(RETRY_CAP, RETRY_BASE * factor)


def reconcile(deps: Deps, *, stale_after: timedelta = STALE_AFTER, limit: int = 200) -> list[Grant]:
    """Finish what a crash or an outage interrupted.

    * ``provisioning`` rows older than ``stale_after``: grant again (idempotent) and verify.
    * ``revoking`` rows older than ``stale_after``: revoke again and verify.
    * ``revoke_failed`` rows whose backoff has passed: revoke again and verify.

    Claimed rows get ``updated_at = now`` (a lease) in the claiming transaction, so another
    instance does not take them over while this one works on them.

    Returns:
        The grants acted on, as committed.
    """
    now = deps.clock.now()
    states: Sequence[GrantStatus] = (
        GrantStatus.PROVISIONING,
        GrantStatus.REVOKING,
        GrantStatus.REVOKE_FAILED,
    )
    with deps.store.transaction() as tx:
        due = [g for g in tx.claim_grants_in(states, limit) if _retry_due(g, now, stale_after)]
        leased = [dataclasses.replace(g, updated_at=now) for g in due]
        for grant in leased:  # the lease: other instances see it fresh and leave it alone
            tx.save_grant(grant)
        requests = {g.id: tx.get_request(g.request_id) for g in leased}

    def step(grant: Grant) -> Grant:
        if grant.status is GrantStatus.PROVISIONING:
            return activate(deps, grant, requests[grant.id])
        return finish_revoke(deps, grant)

    return _each(leased, step)


def _retry_due(grant: Grant, now: datetime, stale_after: timedelta) -> bool:
    if grant.status is GrantStatus.REVOKE_FAILED:
        return now - grant.updated_at >= retry_delay(grant.attempts)
    return now - grant.updated_at >= stale_after
