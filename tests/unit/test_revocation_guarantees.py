"""Revocation guarantees with fakes: overlap, take-back, retries, alerts, lag, extension, resume."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keyturn.domain.audit import format_time
from keyturn.domain.errors import Conflict, Forbidden, InvalidInput, ProviderError
from keyturn.domain.model import AccessRequest, EndReason, Grant, GrantStatus
from keyturn.domain.policy import PolicyEngine
from keyturn.ports import Granted
from keyturn.service import access, grants
from keyturn.service.access import RequestInput
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider, RecordingNotifier
from tests.conftest import (
    SHARED_GROUPS,
    actions,
    directory_data,
    directory_deps,
    events,
    load,
    user,
)

SHARED = SHARED_GROUPS
DB, APPS = SHARED["db-admins"], SHARED["app-deployer"]


class Crash(Exception):
    """Stands in for the process dying in the middle of a provider call."""


class ScriptedProvider(FakeProvider):
    """The fake directory with per-test faults and hooks."""

    def __init__(self) -> None:
        super().__init__("ldap", shared=SHARED)
        self.verify_fails = False
        self.crash: str | None = None  # "before" or "after" adding the privilege in grant()
        self.fail_revoke_for: set[str] = set()
        self.on_grant: Callable[[Grant], None] | None = None
        self.on_revoke: Callable[[Grant], None] | None = None

    def grant(self, grant: Grant, request: AccessRequest) -> Granted:
        """Run the hook, then maybe crash around the real grant."""
        if self.on_grant is not None:
            hook, self.on_grant = self.on_grant, None
            hook(grant)
        if self.crash == "before":
            raise Crash
        granted = super().grant(grant, request)
        if self.crash == "after":
            raise Crash
        return granted

    def verify_granted(self, grant: Grant) -> bool:
        """False when told to fail verification."""
        return False if self.verify_fails else super().verify_granted(grant)

    def revoke(self, grant: Grant, now: datetime) -> bool:
        """Run the hook, fail for chosen grants, else revoke."""
        if self.on_revoke is not None:
            hook, self.on_revoke = self.on_revoke, None
            hook(grant)
        if grant.id in self.fail_revoke_for:
            self.calls.append(("revoke", grant.id))
            raise ProviderError("fake provider: revoke failed for this grant", retryable=True)
        return super().revoke(grant, now)


def reconfigure(deps: Deps, data: dict[str, Any]) -> None:
    """Replace the configuration in force (a restart or reload)."""
    deps.config = load(data).config
    deps.policy = PolicyEngine(deps.config)


@pytest.fixture
def ldap() -> ScriptedProvider:
    """The fake directory: db-admins and app-deployer grants share one group each."""
    return ScriptedProvider()


@pytest.fixture
def notifier() -> RecordingNotifier:
    """A notifier that records alerts."""
    return RecordingNotifier()


@pytest.fixture
def deps(
    tmp_path: Path, clock: FakeClock, ldap: ScriptedProvider, notifier: RecordingNotifier
) -> Deps:
    """Services wired with fakes, directory roles included."""
    return directory_deps(directory_data(tmp_path), clock, ldap, notifier)


def ask(
    deps: Deps, who: str, role: str = "db-admins", duration: timedelta = timedelta(minutes=30)
) -> Grant:
    view = access.request_access(
        deps,
        user(deps, who),
        RequestInput(role=role, target="corp-directory", duration=duration, justification="fix"),
    )
    assert view.grant is not None
    return view.grant


def row(deps: Deps, grant_id: str) -> Grant:
    with deps.store.transaction() as tx:
        return tx.get_grant(grant_id)


def metric(deps: Deps, name: str, **labels: str) -> float | None:
    return deps.metrics.registry.get_sample_value(name, labels)


def crashed_grant(deps: Deps, ldap: ScriptedProvider, when: str, **kw: Any) -> Grant:
    """Request a grant whose activation dies ``when`` (before/after) the provider adds it."""
    ldap.crash = when
    with pytest.raises(Crash):
        ask(deps, "alice", **kw)
    ldap.crash = None
    with deps.store.transaction() as tx:
        [grant] = tx.list_grants(status=GrantStatus.PROVISIONING)
    return grant


# 1. Overlap ---------------------------------------------------------------------------------


def test_releasing_one_of_two_overlapping_grants_keeps_the_membership(
    deps: Deps, ldap: ScriptedProvider
) -> None:
    """The first grant ends without a provider call; kept_for names the other grant."""
    first, second = ask(deps, "alice"), ask(deps, "alice")
    ldap.calls.clear()
    ended = grants.release(deps, user(deps, "alice"), first.id)
    assert ended.status is GrantStatus.REVOKED
    assert ("alice", DB) in ldap.held
    assert ("revoke", first.id) not in ldap.calls
    [released] = events(deps, "grant.released")
    assert released.details["kept_for"] == [second.id]


def test_expiry_of_one_of_two_overlapping_grants_keeps_the_membership(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """The worker expires the shorter grant; the longer one keeps the group."""
    short = ask(deps, "alice", duration=timedelta(minutes=10))
    long = ask(deps, "alice", duration=timedelta(minutes=40))
    ldap.calls.clear()
    clock.advance(timedelta(minutes=10))
    [ended] = grants.expire_due(deps)
    assert (ended.id, ended.status, ended.end_reason) == (
        short.id,
        GrantStatus.REVOKED,
        EndReason.EXPIRED,
    )
    assert ("alice", DB) in ldap.held
    assert ldap.calls == []
    [expired] = events(deps, "grant.expired")
    assert expired.details["kept_for"] == [long.id]


def test_ending_the_last_overlapping_grant_removes_and_verifies(
    deps: Deps, ldap: ScriptedProvider
) -> None:
    """Once no other grant shares the group, the membership goes and is read back gone."""
    first, second = ask(deps, "alice"), ask(deps, "alice")
    grants.release(deps, user(deps, "alice"), first.id)
    last = grants.release(deps, user(deps, "alice"), second.id)
    assert last.status is GrantStatus.REVOKED
    assert ("alice", DB) not in ldap.held
    assert ("revoke", second.id) in ldap.calls
    final = events(deps, "grant.released")[-1]
    assert final.subject["grant_id"] == second.id
    assert final.details["verified"] is True
    assert "kept_for" not in final.details


def test_other_users_in_the_same_group_are_independent(deps: Deps, ldap: ScriptedProvider) -> None:
    """alice's grant ending removes alice only; bob's membership of the same group stays."""
    alices, bobs = ask(deps, "alice"), ask(deps, "bob")
    grants.release(deps, user(deps, "alice"), alices.id)
    assert ("alice", DB) not in ldap.held
    assert ("bob", DB) in ldap.held
    assert ("revoke", alices.id) in ldap.calls
    assert row(deps, bobs.id).status is GrantStatus.ACTIVE


def test_different_groups_of_one_user_are_independent(deps: Deps, ldap: ScriptedProvider) -> None:
    """Ending alice's db-admins grant leaves her app-deployers membership alone."""
    db = ask(deps, "alice", "db-admins")
    ask(deps, "alice", "app-deployer")
    ended = grants.release(deps, user(deps, "alice"), db.id)
    assert ("alice", DB) not in ldap.held
    assert ("alice", APPS) in ldap.held
    [released] = events(deps, "grant.released")
    assert "kept_for" not in released.details
    assert ended.status is GrantStatus.REVOKED


# 2. Overlap race repair ---------------------------------------------------------------------


def test_grant_that_went_live_during_a_removal_gets_its_privilege_back(
    deps: Deps, ldap: ScriptedProvider
) -> None:
    """B activates while A's membership is being removed: B's membership is restored."""
    a = ask(deps, "alice")
    late: list[Grant] = []
    ldap.on_revoke = lambda _: late.append(ask(deps, "alice"))
    ended = grants.release(deps, user(deps, "alice"), a.id)
    [b] = late
    assert ended.status is GrantStatus.REVOKED
    assert row(deps, b.id).status is GrantStatus.ACTIVE
    assert ldap.holds(b)
    [restored] = events(deps, "grant.restored")
    assert restored.subject["grant_id"] == b.id
    assert restored.details == {"after": a.id, "outcome": "restored"}


# 3. Idempotence recorded --------------------------------------------------------------------


def test_granting_a_present_privilege_is_recorded_as_already_present(
    deps: Deps, ldap: ScriptedProvider
) -> None:
    """alice is already in the group: the grant is issued and says so."""
    ldap.held.add(("alice", DB))
    grant = ask(deps, "alice")
    assert grant.status is GrantStatus.ACTIVE
    [issued] = events(deps, "grant.issued")
    assert issued.details["already_present"] is True
    assert issued.details["verified"] is True


def test_revoking_a_gone_privilege_is_recorded_as_already_gone(
    deps: Deps, ldap: ScriptedProvider
) -> None:
    """Someone removed alice by hand: the revocation succeeds and says so."""
    grant = ask(deps, "alice")
    ldap.held.discard(("alice", DB))
    ended = grants.release(deps, user(deps, "alice"), grant.id)
    assert ended.status is GrantStatus.REVOKED
    [released] = events(deps, "grant.released")
    assert released.details["already_gone"] is True
    assert released.details["verified"] is True


# 4. Activation failure takes back -----------------------------------------------------------


def test_unverified_grant_is_taken_back(deps: Deps, ldap: ScriptedProvider) -> None:
    """Granted but not readable back: failed, and the membership it added is removed."""
    ldap.verify_fails = True
    grant = ask(deps, "alice")
    assert grant.status is GrantStatus.FAILED
    assert ("alice", DB) not in ldap.held
    [failed] = events(deps, "grant.failed")
    assert failed.details["cleanup"] == "removed"
    assert "read back" in failed.details["error"]


def test_unverified_grant_keeps_a_membership_that_was_already_there(
    deps: Deps, ldap: ScriptedProvider
) -> None:
    """A membership present before the call is not removed by the failed grant."""
    ldap.held.add(("alice", DB))
    ldap.verify_fails = True
    grant = ask(deps, "alice")
    assert grant.status is GrantStatus.FAILED
    assert ("alice", DB) in ldap.held
    assert ("revoke", grant.id) not in ldap.calls
    [failed] = events(deps, "grant.failed")
    assert "cleanup" not in failed.details


def test_unverified_grant_keeps_a_privilege_another_live_grant_shares(
    deps: Deps, ldap: ScriptedProvider
) -> None:
    """The membership this call added is kept because another live grant of alice holds it."""
    other = ask(deps, "alice")
    ldap.held.discard(("alice", DB))  # so the failing grant is the one that adds it
    ldap.verify_fails = True
    grant = ask(deps, "alice")
    assert grant.status is GrantStatus.FAILED
    assert ("alice", DB) in ldap.held
    assert ("revoke", grant.id) not in ldap.calls
    [failed] = events(deps, "grant.failed")
    assert failed.details["cleanup"].startswith("kept")
    assert row(deps, other.id).status is GrantStatus.ACTIVE


def test_membership_kept_for_a_grant_that_then_fails_is_taken_back(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """A expires while B is provisioning (kept for B); B's grant fails: nothing may remain."""
    ask(deps, "alice", duration=timedelta(minutes=10))

    def expire_a_then_fail(_: Grant) -> None:
        clock.advance(timedelta(minutes=10))
        grants.expire_due(deps)
        ldap.fail_grant = True

    ldap.on_grant = expire_a_then_fail
    b = ask(deps, "alice")
    assert b.status is GrantStatus.FAILED
    assert events(deps, "grant.expired")[0].details["kept_for"] == [b.id]
    with deps.store.transaction() as tx:
        assert tx.grants_holding("ldap", DB, user_id="alice") == []
    assert ("alice", DB) not in ldap.held


# 5. Retry and backoff -----------------------------------------------------------------------


@settings(database=None, max_examples=300)
@given(
    attempts=st.integers(min_value=1, max_value=2000),
    initial_ms=st.integers(min_value=1, max_value=60_000),
    cap_factor=st.integers(min_value=1, max_value=10_000),
)
def test_retry_delay_stays_within_the_exponential_window(
    attempts: int, initial_ms: int, cap_factor: int
) -> None:
    """Uniform between initial and min(cap, initial * 2**(n-1)), for any attempt number."""
    cap_ms = initial_ms * cap_factor
    high_ms = min(cap_ms, initial_ms * 2 ** (attempts - 1))  # exact: Python ints
    delay = grants.retry_delay(
        attempts, timedelta(milliseconds=initial_ms), timedelta(milliseconds=cap_ms)
    )
    assert timedelta(milliseconds=initial_ms) <= delay <= timedelta(milliseconds=high_ms)


def test_retry_delay_is_jittered() -> None:
    """Many waits for the fifth attempt are spread over the window, not one constant."""
    initial, cap = timedelta(seconds=1), timedelta(seconds=30)
    samples = {grants.retry_delay(5, initial, cap) for _ in range(200)}
    assert len(samples) > 100
    assert min(samples) < timedelta(seconds=8) < max(samples)


def fail_again(deps: Deps, clock: FakeClock, grant: Grant) -> Grant:
    """Move to the grant's retry_at and let the worker retry it once."""
    assert grant.retry_at is not None
    clock.set(grant.retry_at)
    [again] = grants.resume_unfinished(deps)
    return again


def expire_failing(deps: Deps, clock: FakeClock, ldap: ScriptedProvider) -> Grant:
    """An ldap grant whose expiry fails at the provider."""
    grant = ask(deps, "alice", duration=timedelta(minutes=5))
    ldap.fail_revoke = True
    clock.set(grant.not_after)
    [failed] = grants.expire_due(deps)
    assert failed.status is GrantStatus.REVOKE_FAILED
    return failed


def test_failed_revoke_schedules_its_retry_within_the_backoff_window(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """retry_at is now + a wait in [initial, min(cap, initial * 2**(attempts-1))]."""
    server = deps.config.server
    failed = expire_failing(deps, clock, ldap)
    for _ in range(8):
        assert failed.retry_at is not None
        wait = failed.retry_at - clock.now()
        high = min(server.retry_max, server.retry_initial * 2 ** (failed.attempts - 1))
        assert server.retry_initial <= wait <= high
        failed = fail_again(deps, clock, failed)


def test_retry_waits_until_retry_at(deps: Deps, clock: FakeClock, ldap: ScriptedProvider) -> None:
    """Before retry_at the worker leaves the grant alone; at retry_at it retries."""
    failed = expire_failing(deps, clock, ldap)
    assert failed.retry_at is not None
    ldap.calls.clear()
    clock.set(failed.retry_at - timedelta(microseconds=1))
    assert grants.resume_unfinished(deps) == []
    assert ldap.calls == []
    clock.set(failed.retry_at)
    [again] = grants.resume_unfinished(deps)
    assert ldap.calls == [("revoke", failed.id)]
    assert again.attempts == failed.attempts + 1


def test_retries_go_on_until_the_provider_is_back(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """30 failures in a row: each recorded, attempts counting up; then it succeeds."""
    failed = expire_failing(deps, clock, ldap)
    for n in range(2, 31):
        failed = fail_again(deps, clock, failed)
        assert (failed.status, failed.attempts) == (GrantStatus.REVOKE_FAILED, n)
    recorded = events(deps, "grant.revoke_failed")
    assert [e.details["attempt"] for e in recorded] == list(range(1, 31))
    ldap.fail_revoke = False
    done = fail_again(deps, clock, failed)
    assert (done.status, done.attempts, done.retry_at) == (GrantStatus.REVOKED, 31, None)
    assert ("alice", DB) not in ldap.held
    assert metric(deps, "keyturn_revocations_failed_total", provider="ldap") == 30
    assert metric(deps, "keyturn_revocations_succeeded_total", provider="ldap") == 1


def test_alert_fires_once_per_failing_grant_not_per_retry(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider, notifier: RecordingNotifier
) -> None:
    """Five failures: one notification, one alert event, alert metric 1, failure metric 5."""
    failed = expire_failing(deps, clock, ldap)
    for _ in range(4):
        failed = fail_again(deps, clock, failed)
    [(event, summary, details)] = notifier.alerts
    assert event == "revoke_failed"
    assert failed.id in summary
    assert details["grant_id"] == failed.id
    assert len(events(deps, "alert.revoke_failed")) == 1
    assert metric(deps, "keyturn_revoke_failed_alerts_total", provider="ldap") == 1
    assert metric(deps, "keyturn_revocations_failed_total", provider="ldap") == 5


def test_one_failing_grant_does_not_stop_another_due_in_the_same_pass(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """alice's revoke fails; bob's, due in the same pass, is still revoked."""
    alices = ask(deps, "alice", duration=timedelta(minutes=10))
    bobs = ask(deps, "bob", duration=timedelta(minutes=20))
    ldap.fail_revoke_for = {alices.id}
    clock.advance(timedelta(minutes=20))
    ended = {g.id: g.status for g in grants.expire_due(deps)}
    assert ended == {alices.id: GrantStatus.REVOKE_FAILED, bobs.id: GrantStatus.REVOKED}
    assert ("bob", DB) not in ldap.held
    assert ("alice", DB) in ldap.held


# 6. Lag and state metrics -------------------------------------------------------------------


def test_revocation_lag_is_observed_from_not_after(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """Expired 3 s after not_after: the histogram sees 3.0 s once; success counted."""
    grant = ask(deps, "alice", duration=timedelta(seconds=20))
    clock.set(grant.not_after + timedelta(seconds=3))
    grants.expire_due(deps)
    lag = "keyturn_revocation_lag_seconds"
    assert metric(deps, f"{lag}_sum", provider="ldap") == pytest.approx(3.0)
    assert metric(deps, f"{lag}_count", provider="ldap") == 1
    assert metric(deps, f"{lag}_bucket", provider="ldap", le="2.0") == 0
    assert metric(deps, f"{lag}_bucket", provider="ldap", le="5.0") == 1
    assert metric(deps, "keyturn_revocations_succeeded_total", provider="ldap") == 1
    assert events(deps, "grant.expired")[0].details["lag_ms"] == 3000


def test_grant_state_gauge_reads_the_store(deps: Deps, ldap: ScriptedProvider) -> None:
    """keyturn_grants{state} counts the grants in each state at scrape time."""
    ask(deps, "alice")
    ask(deps, "bob")
    grants.release(deps, user(deps, "bob"), ask(deps, "bob", "app-deployer").id)
    ldap.verify_fails = True
    ask(deps, "alice", "app-deployer")
    counts = {s: metric(deps, "keyturn_grants", state=str(s)) for s in GrantStatus}
    assert counts == {
        GrantStatus.PROVISIONING: 0,
        GrantStatus.ACTIVE: 2,
        GrantStatus.REVOKING: 0,
        GrantStatus.REVOKE_FAILED: 0,
        GrantStatus.REVOKED: 1,
        GrantStatus.FAILED: 1,
    }


# 7. Extension -------------------------------------------------------------------------------


def test_extend_lengthens_an_active_grant_without_a_gap(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """New not_after, grant.extended from/to, provider extend only: no revoke, no re-grant."""
    grant = ask(deps, "alice")
    clock.advance(timedelta(minutes=10))
    ldap.calls.clear()
    extended = grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=20))
    assert extended.status is GrantStatus.ACTIVE
    assert extended.not_after == grant.not_after + timedelta(minutes=20)
    assert row(deps, grant.id) == extended
    assert ldap.calls == [("extend", grant.id)]
    assert ("alice", DB) in ldap.held
    assert extended.not_after.isoformat() in extended.credentials["fake_credential"]
    [event] = events(deps, "grant.extended")
    assert event.actor == "alice"
    assert event.details["from"] == format_time(grant.not_after)
    assert event.details["to"] == format_time(extended.not_after)
    assert event.details["extra_s"] == 1200


def test_extend_up_to_exactly_the_role_maximum_is_allowed(deps: Deps) -> None:
    """30 minutes + 90 minutes is db-admins' two-hour maximum: allowed."""
    grant = ask(deps, "alice")
    extended = grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=90))
    assert extended.not_after - extended.not_before == timedelta(hours=2)


def test_extend_beyond_the_role_maximum_is_refused_and_changes_nothing(
    deps: Deps, ldap: ScriptedProvider
) -> None:
    """Two hours and a minute in all: InvalidInput, same row, no event, no provider call."""
    grant = ask(deps, "alice")
    before = actions(deps)
    ldap.calls.clear()
    with pytest.raises(InvalidInput, match="at most"):
        grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=91))
    assert row(deps, grant.id) == grant
    assert actions(deps) == before
    assert ldap.calls == []


def test_extending_someone_elses_grant_is_forbidden(deps: Deps) -> None:
    """Neither bob nor sam (an admin) can extend alice's grant."""
    grant = ask(deps, "alice")
    for actor in ("bob", "sam"):
        with pytest.raises(Forbidden, match="own"):
            grants.extend(deps, user(deps, actor), grant.id, timedelta(minutes=5))
    assert row(deps, grant.id) == grant


def test_extending_an_expired_grant_is_a_conflict_even_before_the_worker_ran(
    deps: Deps, clock: FakeClock
) -> None:
    """The window has closed (row still active): Conflict, the grant is not lengthened."""
    grant = ask(deps, "alice")
    clock.set(grant.not_after)
    with pytest.raises(Conflict, match="expired"):
        grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=5))
    assert row(deps, grant.id) == grant


@pytest.mark.parametrize("ender", ["alice", "sam"])
def test_extending_a_released_or_revoked_grant_is_a_conflict(deps: Deps, ender: str) -> None:
    """Released by alice or revoked by sam: no extension."""
    grant = ask(deps, "alice")
    end = grants.release if ender == "alice" else grants.revoke
    end(deps, user(deps, ender), grant.id)
    with pytest.raises(Conflict, match="revoked"):
        grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=5))


@pytest.mark.parametrize("extra", [timedelta(0), timedelta(seconds=-1), timedelta(minutes=-30)])
def test_extending_by_zero_or_less_is_invalid(deps: Deps, extra: timedelta) -> None:
    """Only a positive extension is accepted."""
    grant = ask(deps, "alice")
    with pytest.raises(InvalidInput, match="longer than zero"):
        grants.extend(deps, user(deps, "alice"), grant.id, extra)
    assert row(deps, grant.id) == grant


def test_extend_needs_the_policy_to_auto_approve_the_longer_window(
    tmp_path: Path, clock: FakeClock, ldap: ScriptedProvider, notifier: RecordingNotifier
) -> None:
    """Auto-approval up to one hour: 50 minutes + 20 is refused, 50 + 10 is allowed."""
    data = directory_data(tmp_path)
    data["policy"]["rules"][0]["when"] = 'role.tier == "standard" && request.duration <= 3600'
    deps = directory_deps(data, clock, ldap, notifier)
    grant = ask(deps, "alice", duration=timedelta(minutes=50))
    assert grant.status is GrantStatus.ACTIVE
    with pytest.raises(Forbidden, match="policy"):
        grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=20))
    assert row(deps, grant.id) == grant
    assert ("extend", grant.id) not in ldap.calls
    grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=10))


def test_extend_needs_eligibility_in_force_now(
    tmp_path: Path, deps: Deps, ldap: ScriptedProvider
) -> None:
    """The eligibility for db-admins was removed since: Forbidden, nothing changed."""
    grant = ask(deps, "alice")
    data = directory_data(tmp_path)
    for rule in data["eligibility"]:
        rule["roles"] = [r for r in rule["roles"] if r != "db-admins"]
    reconfigure(deps, data)
    with pytest.raises(Forbidden):
        grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=5))
    assert row(deps, grant.id) == grant
    assert ("extend", grant.id) not in ldap.calls


def test_extend_with_the_provider_down_changes_nothing(deps: Deps, ldap: ScriptedProvider) -> None:
    """New credentials cannot be issued: ProviderError, the row and the audit trail unchanged."""
    grant = ask(deps, "alice")
    before = actions(deps)
    ldap.down = True
    with pytest.raises(ProviderError):
        grants.extend(deps, user(deps, "alice"), grant.id, timedelta(minutes=5))
    assert row(deps, grant.id) == grant
    assert actions(deps) == before


# 8. Resuming provisioning rows --------------------------------------------------------------


def test_resume_finishes_a_stale_provisioning_row(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """A crash before the provider call: after stale_after the worker grants and verifies."""
    grant = crashed_grant(deps, ldap, "before")
    assert ("alice", DB) not in ldap.held
    clock.advance(deps.config.server.stale_after)
    [done] = grants.resume_unfinished(deps)
    assert (done.id, done.status) == (grant.id, GrantStatus.ACTIVE)
    assert ldap.holds(done)
    assert events(deps, "grant.issued")[0].details["verified"] is True


def test_resume_leaves_a_fresh_provisioning_row_alone(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """Younger than stale_after it may still be in flight: no provider call, row unchanged."""
    grant = crashed_grant(deps, ldap, "before")
    ldap.calls.clear()
    clock.advance(deps.config.server.stale_after - timedelta(seconds=1))
    assert grants.resume_unfinished(deps) == []
    assert ldap.calls == []
    assert row(deps, grant.id) == grant


def test_resume_fails_a_provisioning_row_whose_window_closed(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """Found only after not_after: failed with the reason, nothing granted."""
    grant = crashed_grant(deps, ldap, "before", duration=timedelta(minutes=5))
    ldap.calls.clear()
    clock.set(grant.not_after + deps.config.server.stale_after)
    [done] = grants.resume_unfinished(deps)
    assert done.status is GrantStatus.FAILED
    assert "window closed" in (done.last_error or "")
    assert ("alice", DB) not in ldap.held
    assert ("grant", grant.id) not in ldap.calls  # never granted; only the idempotent take-back


def test_resume_takes_back_a_privilege_added_before_the_window_closed(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """A crash after the provider added the membership, found after not_after: removed."""
    grant = crashed_grant(deps, ldap, "after", duration=timedelta(minutes=5))
    assert ("alice", DB) in ldap.held
    clock.set(grant.not_after + deps.config.server.stale_after)
    [done] = grants.resume_unfinished(deps)
    assert done.status is GrantStatus.FAILED
    assert ("alice", DB) not in ldap.held


def test_resume_of_a_provisioning_row_added_before_the_crash_is_already_present(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """A crash after the membership was added: resuming finds it there and activates."""
    grant = crashed_grant(deps, ldap, "after")
    clock.advance(deps.config.server.stale_after)
    [done] = grants.resume_unfinished(deps)
    assert (done.id, done.status) == (grant.id, GrantStatus.ACTIVE)
    assert events(deps, "grant.issued")[0].details["already_present"] is True


def test_stale_provisioning_row_is_leased_while_being_finished(
    deps: Deps, clock: FakeClock, ldap: ScriptedProvider
) -> None:
    """While one pass works on the row, a second pass does not take it over."""
    grant = crashed_grant(deps, ldap, "before")
    clock.advance(deps.config.server.stale_after)
    seen: list[list[Grant]] = []
    ldap.on_grant = lambda _: seen.append(grants.resume_unfinished(deps))
    [done] = grants.resume_unfinished(deps)
    assert seen == [[]]
    assert (done.id, done.status) == (grant.id, GrantStatus.ACTIVE)


def test_registering_the_store_gauges_reads_nothing_and_a_scrape_takes_no_write_lock() -> None:
    """Registering the collector must not count the grants (it would, at every start, over the
    whole table); a scrape reads through a snapshot, never holding the store's write lock."""
    from keyturn.service.metrics import Metrics
    from keyturn.testing import InMemoryStore

    class Watched(InMemoryStore):
        def __init__(self) -> None:
            super().__init__()
            self.opened: list[str] = []

        def transaction(self) -> Any:
            self.opened.append("transaction")
            return super().transaction()

        def snapshot(self) -> Any:
            self.opened.append("snapshot")
            return super().snapshot()

    store, metrics = Watched(), Metrics()
    metrics.count_grants_in(store)
    assert store.opened == []
    assert b'keyturn_grants{state="active"} 0.0' in metrics.exposition()
    assert store.opened == ["snapshot"]
