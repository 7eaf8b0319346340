"""Services with fakes: decide at once, distinct reviewers, write-ahead grants, verified ends."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from keyturn.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from keyturn.domain.model import (
    AccessRequest,
    EndReason,
    Grant,
    GrantStatus,
    RequestStatus,
    Verdict,
)
from keyturn.service import access, audit_log, grants
from keyturn.service.access import RequestInput
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider
from tests.conftest import actions, user

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x@y"


def ask(deps: Deps, who: str, role: str = "server-admin", **kw: object) -> access.RequestView:
    data = RequestInput(
        role=role,
        target=str(kw.get("target", "db-1")),
        duration=kw.get("duration", timedelta(minutes=30)),  # type: ignore[arg-type]
        justification=str(kw.get("justification", "db-1 is down")),
        ssh_public_key=KEY,
    )
    return access.request_access(deps, user(deps, who), data)


def test_auto_approved_request_is_granted_at_once(deps: Deps, provider: FakeProvider) -> None:
    """Standard tier: approved, grant active, window starts now, privilege really present."""
    view = ask(deps, "alice")
    assert view.request.status is RequestStatus.APPROVED
    assert view.grant is not None
    assert view.grant.status is GrantStatus.ACTIVE
    assert view.grant.not_after - view.grant.not_before == timedelta(minutes=30)
    assert provider.holds(view.grant)
    assert actions(deps) == [
        "request.created",
        "request.decided",
        "grant.provisioning",
        "grant.issued",
    ]


def test_provisioning_is_committed_before_the_provider_is_called(deps: Deps) -> None:
    """Write-ahead: while the provider runs, the store already holds the provisioning row."""
    seen: list[GrantStatus] = []
    real = deps.providers["ssh"]

    class Spy(FakeProvider):
        def grant(self, grant: Grant, request: AccessRequest) -> dict[str, str]:
            with deps.store.transaction() as tx:
                seen.append(tx.get_grant(grant.id).status)
            return real.grant(grant, request)

        def verify_granted(self, grant: Grant) -> bool:
            return real.verify_granted(grant)

    deps.providers["ssh"] = Spy()
    ask(deps, "alice")
    assert seen == [GrantStatus.PROVISIONING]


def test_high_tier_needs_a_reviewer_other_than_the_requester(deps: Deps) -> None:
    """bob cannot approve his own request; carol (dba-leads) can, and the grant follows."""
    view = ask(deps, "bob", "db-schema-admin")
    assert view.request.status is RequestStatus.PENDING
    assert view.grant is None
    with pytest.raises(Forbidden, match="own"):
        access.review(deps, user(deps, "bob"), view.request.id, Verdict.APPROVE, None)
    done = access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, "ok")
    assert done.request.status is RequestStatus.APPROVED
    assert done.grant is not None
    assert done.grant.status is GrantStatus.ACTIVE


def test_requester_in_the_approver_group_never_counts(deps: Deps) -> None:
    """dave is a dba-lead and a dba: his own request needs carol, not himself."""
    view = ask(deps, "dave", "db-schema-admin")
    with pytest.raises(Forbidden):
        access.review(deps, user(deps, "dave"), view.request.id, Verdict.APPROVE, None)
    assert access.get_request(deps, user(deps, "dave"), view.request.id).request.status is (
        RequestStatus.PENDING
    )


def test_two_approvals_need_two_distinct_people(deps: Deps) -> None:
    """approvals: 2 — the same approver twice is a conflict and counts once."""
    lead = next(r for r in deps.config.policy.rules if r.name == "high-tier-needs-lead")
    rule = lead.model_copy(update={"approvals": 2})
    policy = deps.config.policy.model_copy(update={"rules": (deps.config.policy.rules[0], rule)})
    deps.config = deps.config.model_copy(update={"policy": policy})
    from keyturn.domain.policy import PolicyEngine

    deps.policy = PolicyEngine(deps.config)
    view = ask(deps, "bob", "db-schema-admin")
    first = access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)
    assert first.request.status is RequestStatus.PENDING
    with pytest.raises(Conflict, match="already reviewed"):
        access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)
    second = access.review(deps, user(deps, "dave"), view.request.id, Verdict.APPROVE, None)
    assert second.request.status is RequestStatus.APPROVED


def test_one_denial_ends_the_request(deps: Deps) -> None:
    """A deny verdict ends it; a later approval is a conflict."""
    view = ask(deps, "bob", "db-schema-admin")
    denied = access.review(deps, user(deps, "dave"), view.request.id, Verdict.DENY, "not now")
    assert denied.request.status is RequestStatus.DENIED
    with pytest.raises(Conflict):
        access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)


def test_non_approver_cannot_review(deps: Deps) -> None:
    """alice is not in dba-leads."""
    view = ask(deps, "bob", "db-schema-admin")
    with pytest.raises(Forbidden, match="not an approver"):
        access.review(deps, user(deps, "alice"), view.request.id, Verdict.APPROVE, None)


def test_cancel_then_approve_is_a_conflict(deps: Deps) -> None:
    """Cancelled requests cannot be approved; only the requester may cancel."""
    view = ask(deps, "bob", "db-schema-admin")
    with pytest.raises(Forbidden):
        access.cancel(deps, user(deps, "alice"), view.request.id, None)
    access.cancel(deps, user(deps, "bob"), view.request.id, "solved")
    with pytest.raises(Conflict):
        access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"duration": timedelta(0)}, "longer than zero"),
        ({"duration": timedelta(seconds=-5)}, "longer than zero"),
        ({"duration": timedelta(hours=5)}, "maximum"),
        ({"role": "root-of-all"}, "unknown role"),
        ({"target": "db-9"}, "unknown target"),
        ({"justification": "  "}, "justification"),
        ({"justification": "x" * 1001}, "maximum is 1000"),
        ({"ssh_public_key": None}, "public key"),
        ({"ssh_public_key": "ssh-ed25519 AAAA"}, "not a valid"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    deps: Deps, change: dict[str, object], message: str
) -> None:
    """Each bad field is a clear InvalidInput; no request and no audit event is written."""
    data = dataclasses.replace(
        RequestInput("server-admin", "db-1", timedelta(minutes=30), "db down", None, KEY), **change
    )
    with pytest.raises(InvalidInput, match=message):
        access.request_access(deps, user(deps, "alice"), data)
    assert actions(deps) == []


def test_grant_expires_at_not_after_verified(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """The worker's pass ends due grants, verified gone, with an audit event and lag."""
    grant = ask(deps, "alice", duration=timedelta(seconds=20)).grant
    assert grant is not None
    clock.advance(timedelta(seconds=19))
    assert grants.expire_due(deps) == []
    clock.advance(timedelta(seconds=1))
    [ended] = grants.expire_due(deps)
    assert ended.status is GrantStatus.REVOKED
    assert ended.end_reason is EndReason.EXPIRED
    assert not provider.holds(grant)
    assert actions(deps)[-2:] == ["grant.revoking", "grant.expired"]


def test_failed_revoke_is_recorded_retried_and_never_swallowed(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """Provider down: revoke_failed + audit event; reconcile retries after backoff until gone."""
    grant = ask(deps, "alice", duration=timedelta(seconds=20)).grant
    assert grant is not None
    provider.fail_revoke = True
    clock.advance(timedelta(seconds=21))
    [failed] = grants.expire_due(deps)
    assert failed.status is GrantStatus.REVOKE_FAILED
    assert failed.last_error
    assert "grant.revoke_failed" in actions(deps)
    assert grants.resume_unfinished(deps) == []  # backoff not yet passed
    clock.advance(timedelta(seconds=1))
    [again] = grants.resume_unfinished(deps)
    assert again.status is GrantStatus.REVOKE_FAILED
    assert again.attempts == 2
    provider.fail_revoke = False
    clock.advance(deps.config.server.retry_max)
    [done] = grants.resume_unfinished(deps)
    assert done.status is GrantStatus.REVOKED
    assert not provider.holds(grant)


def test_silent_revoke_is_caught_by_verification(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """A provider that says 'done' but leaves the privilege: not revoked, revoke_failed."""
    grant = ask(deps, "alice").grant
    assert grant is not None
    provider.revoke_is_silent = True
    ended = grants.revoke(deps, user(deps, "sam"), grant.id)
    assert ended.status is GrantStatus.REVOKE_FAILED
    assert "still present" in (ended.last_error or "")


def test_provider_failure_at_grant_leaves_nothing_active(
    deps: Deps, provider: FakeProvider
) -> None:
    """The request stays approved but the grant is failed with the reason; nothing is held."""
    provider.fail_grant = True
    view = ask(deps, "alice")
    assert view.grant is not None
    assert view.grant.status is GrantStatus.FAILED
    assert provider.held == set()
    assert "grant.failed" in actions(deps)


def test_reconcile_finishes_a_grant_interrupted_after_write_ahead(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """A crash after 'provisioning' was committed: reconcile grants and verifies it later."""
    provider.fail_grant = True
    view = ask(deps, "alice")
    assert view.grant is not None
    with deps.store.transaction() as tx:  # simulate the crash: the row never left provisioning
        tx.save_grant(
            dataclasses.replace(tx.get_grant(view.grant.id), status=GrantStatus.PROVISIONING)
        )
    provider.fail_grant = False
    assert grants.resume_unfinished(deps) == []  # not stale yet: maybe still in flight
    clock.advance(deps.config.server.stale_after)
    [fixed] = grants.resume_unfinished(deps)
    assert fixed.status is GrantStatus.ACTIVE
    assert provider.holds(fixed)


def test_release_is_for_the_owner_and_revoke_for_admins(deps: Deps) -> None:
    """alice cannot release bob's grant; bob cannot revoke; sam (admin) can; twice is a conflict."""
    view = ask(deps, "bob", "server-admin")
    assert view.grant is not None
    with pytest.raises(Forbidden):
        grants.release(deps, user(deps, "alice"), view.grant.id)
    with pytest.raises(Forbidden):
        grants.revoke(deps, user(deps, "bob"), view.grant.id)
    assert grants.revoke(deps, user(deps, "sam"), view.grant.id).status is GrantStatus.REVOKED
    with pytest.raises(Conflict):
        grants.release(deps, user(deps, "bob"), view.grant.id)
    with pytest.raises(NotFound):
        grants.release(deps, user(deps, "bob"), "grt_nope")


def test_requests_are_visible_to_requester_approvers_and_admins_only(deps: Deps) -> None:
    """mallory cannot read bob's request (404, no existence leak); carol and sam can."""
    view = ask(deps, "bob", "db-schema-admin")
    with pytest.raises(NotFound):
        access.get_request(deps, user(deps, "mallory"), view.request.id)
    assert access.get_request(deps, user(deps, "carol"), view.request.id).request.id
    assert len(access.list_requests(deps, user(deps, "sam"), status=None, mine=False)) == 1


def test_every_step_is_in_a_verifying_chain(deps: Deps, clock: FakeClock) -> None:
    """After a full story the audit chain verifies."""
    view = ask(deps, "bob", "db-schema-admin")
    access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)
    clock.advance(timedelta(hours=1))
    grants.expire_due(deps)
    result = audit_log.verify(deps)
    assert result.ok
    assert result.count == len(actions(deps)) >= 8


def _reconfigure(deps: Deps, **update: object) -> None:
    from keyturn.domain.policy import PolicyEngine

    deps.config = deps.config.model_copy(update=update)
    deps.policy = PolicyEngine(deps.config)


def test_approval_rechecks_eligibility_in_force_now(deps: Deps, provider: FakeProvider) -> None:
    """bob leaves the dba group while his request waits: carol's approval grants nothing."""
    view = ask(deps, "bob", "db-schema-admin")
    users = tuple(
        u.model_copy(update={"groups": ()}) if u.id == "bob" else u for u in deps.config.users
    )
    _reconfigure(deps, users=users)
    done = access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)
    assert done.request.status is RequestStatus.DENIED
    assert done.grant is None
    assert provider.held == set()
    with deps.store.transaction() as tx:
        last = tx.audit_events()[-1]
    assert last.action == "request.denied"
    assert "no longer eligible" in last.details["recheck"]


def test_approval_rechecks_the_maximum_in_force_now(deps: Deps) -> None:
    """The role's maximum shrank below the requested duration: approval denies, never clamps."""
    view = ask(deps, "bob", "db-schema-admin", duration=timedelta(hours=2))
    roles = tuple(
        r.model_copy(
            update={
                "max_duration": timedelta(minutes=30),
                "default_duration": timedelta(minutes=30),
            }
        )
        if r.name == "db-schema-admin"
        else r
        for r in deps.config.roles
    )
    _reconfigure(deps, roles=roles)
    done = access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)
    assert done.request.status is RequestStatus.DENIED
    assert done.grant is None


def test_unanswered_requests_expire_and_cannot_be_approved_late(
    deps: Deps, clock: FakeClock
) -> None:
    """After server.pending_ttl (1 h) a pending request is expired; approving it is a conflict."""
    view = ask(deps, "bob", "db-schema-admin")
    clock.advance(timedelta(minutes=59))
    assert access.expire_pending(deps) == []
    clock.advance(timedelta(minutes=1))
    [expired] = access.expire_pending(deps)
    assert expired.status is RequestStatus.EXPIRED
    with pytest.raises(Conflict):
        access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)
    assert "request.expired" in actions(deps)


def test_a_grant_whose_window_closed_before_granting_is_never_issued(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """Reconcile after a long outage: the window is over, so the grant fails, nothing is held."""
    provider.fail_grant = True
    view = ask(deps, "alice", duration=timedelta(minutes=5))
    assert view.grant is not None
    with deps.store.transaction() as tx:
        tx.save_grant(
            dataclasses.replace(tx.get_grant(view.grant.id), status=GrantStatus.PROVISIONING)
        )
    provider.fail_grant = False
    clock.advance(timedelta(minutes=10))
    [result] = grants.resume_unfinished(deps)
    assert result.status is GrantStatus.FAILED
    assert "window closed" in (result.last_error or "")
    assert provider.held == set()


def test_reconcile_retries_a_failed_revoke_once_per_backoff_window(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """Two reconcile passes in a row call the provider once: the retry waits for its backoff."""
    grant = ask(deps, "alice").grant
    assert grant is not None
    provider.fail_revoke = True
    grants.revoke(deps, user(deps, "sam"), grant.id)
    clock.advance(timedelta(seconds=1))
    provider.calls.clear()
    assert len(grants.resume_unfinished(deps)) == 1
    assert grants.resume_unfinished(deps) == []
    assert provider.calls == [("revoke", grant.id)]


def test_krl_keeps_early_ended_serials_for_the_clock_skew(deps: Deps, clock: FakeClock) -> None:
    """A released certificate stays listed until not_after + skew (targets' clocks may lag)."""
    from keyturn.bootstrap import _revoked_serials

    grant = ask(deps, "alice", duration=timedelta(minutes=5)).grant
    assert grant is not None
    grants.release(deps, user(deps, "alice"), grant.id)
    listed = _revoked_serials(deps.store, timedelta(seconds=30))
    clock.set(grant.not_after + timedelta(seconds=29))
    assert listed(clock.now()) == [grant.serial]
    clock.set(grant.not_after + timedelta(seconds=30))
    assert listed(clock.now()) == []
