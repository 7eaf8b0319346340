"""Scheduled requests: validated before anything is written, decided now, checked and decided
again at the start, activated once with a window that starts at activation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest

from keyturn.domain.audit import format_time
from keyturn.domain.errors import InvalidInput
from keyturn.domain.model import GrantStatus, RequestStatus, Verdict
from keyturn.service import access
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider, RecordingNotifier
from tests.conftest import events, user
from tests.unit.incident import FakeOnCall, ask, fire, reconfigure, stored

HOUR = timedelta(hours=1)
LATER = timedelta(hours=2)


def grant_calls(provider: FakeProvider) -> list[str]:
    return [grant_id for call, grant_id in provider.calls if call == "grant"]


@pytest.mark.parametrize(
    ("start", "message"),
    [
        (lambda now: now - timedelta(minutes=1), "not in the future"),
        (lambda now: now, "not in the future"),
        (lambda now: (now + LATER).replace(tzinfo=None), "time zone"),
        (lambda now: now + timedelta(days=7, seconds=1), "server.schedule_horizon"),
    ],
    ids=["past", "now", "naive", "beyond-horizon"],
)
def test_a_bad_start_is_refused_and_nothing_is_written(
    deps: Deps, start: Callable[[datetime], datetime], message: str
) -> None:
    """A start in the past, now, without a time zone or beyond the horizon: InvalidInput on
    field ``start``; no request, grant or audit event."""
    with pytest.raises(InvalidInput, match=message) as caught:
        ask(deps, "alice", start=start(deps.clock.now()))
    assert caught.value.details["field"] == "start"
    assert stored(deps) == (0, 0, 0)


def test_a_start_at_the_horizon_is_accepted(deps: Deps) -> None:
    """Exactly server.schedule_horizon (7 days) ahead is still allowed."""
    view = ask(deps, "alice", start=deps.clock.now() + timedelta(days=7))
    assert view.request.status is RequestStatus.SCHEDULED


def test_an_auto_approved_scheduled_request_waits_then_starts_at_activation(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """Scheduled, no grant and no provider call before the start; the worker running late
    activates it with a window from activation for the requested duration."""
    start = clock.now() + LATER
    view = ask(deps, "alice", duration=HOUR, start=start)
    assert view.request.status is RequestStatus.SCHEDULED
    assert view.request.start_at == start
    assert view.request.decision.facts["request"]["scheduled"] is True
    assert view.grant is None
    clock.set(start - timedelta(seconds=1))
    assert access.start_scheduled(deps) == []
    assert access.get_request(deps, user(deps, "alice"), view.request.id).grant is None
    assert provider.calls == []

    activation = start + timedelta(minutes=4)
    clock.set(activation)
    (started,) = access.start_scheduled(deps)
    assert started.request.status is RequestStatus.APPROVED
    assert started.grant is not None
    assert started.grant.status is GrantStatus.ACTIVE
    assert started.grant.not_before == activation
    assert started.grant.not_after == activation + HOUR
    assert provider.holds(started.grant)
    assert "request.started" in [e.action for e in events(deps)]


def test_starting_twice_activates_once(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """Two worker passes after the start: one grant, one provider grant call."""
    view = ask(deps, "alice", start=clock.now() + LATER)
    clock.advance(LATER)
    first = access.start_scheduled(deps)
    assert [v.request.id for v in first] == [view.request.id]
    assert access.start_scheduled(deps) == []
    assert len(grant_calls(provider)) == 1
    assert stored(deps)[1] == 1


def test_losing_eligibility_before_the_start_denies_it_without_touching_the_provider(
    deps: Deps, data: dict[str, Any], clock: FakeClock, provider: FakeProvider
) -> None:
    """alice's sre eligibility for server-admin is removed while she waits: at the start the
    request is denied with the reason, no grant, no provider call (GCP jit-groups #145)."""
    view = ask(deps, "alice", start=clock.now() + LATER)
    data["eligibility"] = [
        e for e in data["eligibility"] if e["roles"] != ["server-admin"] or e["groups"] != ["sre"]
    ]
    reconfigure(deps, data)
    clock.advance(LATER)
    (ended,) = access.start_scheduled(deps)
    assert ended.request.status is RequestStatus.DENIED
    assert ended.grant is None
    assert provider.calls == []
    (denied,) = events(deps, "request.denied")
    assert denied.details["refusal"] == "alice is no longer eligible for server-admin on db-1"
    assert access.get_request(deps, user(deps, "alice"), view.request.id).grant is None


def test_on_call_approval_does_not_survive_the_end_of_the_shift(
    deps: Deps, clock: FakeClock, oncall: FakeOnCall, notifier: RecordingNotifier
) -> None:
    """Approved by oncall-incident when asked; at the start alice is no longer on call, the
    policy now requires review nobody gave: denied, and alice is told why."""
    oncall.people["alice"] = ("database",)
    fire(deps)
    view = ask(deps, "alice", "db-admin", duration=HOUR, start=clock.now() + LATER)
    assert view.request.status is RequestStatus.SCHEDULED
    assert view.request.decision.rule == "oncall-incident"
    oncall.people.clear()
    clock.advance(LATER)
    (ended,) = access.start_scheduled(deps)
    assert ended.request.status is RequestStatus.DENIED
    assert ended.grant is None
    (denied,) = events(deps, "request.denied")
    refusal = denied.details["refusal"]
    assert isinstance(refusal, str)
    assert "rule db-admin-two-reviews requires review" in refusal
    assert denied.details["decision"]["rule"] == "db-admin-two-reviews"  # type: ignore[index]
    told = notifier.sent("request.decided")[-1]
    assert told.data["status"] == "denied"
    assert any("requires review" in reason for reason in told.data["reasons"])


def test_a_reviewed_scheduled_request_starts_at_its_start(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """bob's schema change for later: carol approves now -> scheduled; at the start the policy
    still wants one lead, who approved -> granted from the start."""
    start = clock.now() + LATER
    view = ask(deps, "bob", "db-schema-admin", duration=HOUR, start=start)
    assert view.request.status is RequestStatus.PENDING
    reviewed = access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)
    assert reviewed.request.status is RequestStatus.SCHEDULED
    assert reviewed.grant is None
    assert provider.calls == []
    clock.set(start)
    (started,) = access.start_scheduled(deps)
    assert started.request.status is RequestStatus.APPROVED
    assert started.grant is not None
    assert (started.grant.not_before, started.grant.not_after) == (start, start + HOUR)


@pytest.mark.parametrize(
    "change",
    [
        lambda rule: rule.update(approvals=2),
        lambda rule: rule.update(approvers={"users": ["erin"]}),
    ],
    ids=["more-approvals", "other-approvers"],
)
def test_an_earlier_quorum_does_not_carry_over_to_a_stricter_rule_at_the_start(
    deps: Deps,
    data: dict[str, Any],
    clock: FakeClock,
    provider: FakeProvider,
    change: Callable[[dict[str, Any]], None],
) -> None:
    """carol's one approval satisfied the rule at review time; at the start the rule wants two
    approvals, or other approvers: the old quorum does not count -- denied, nothing granted."""
    start = clock.now() + LATER
    view = ask(deps, "bob", "db-schema-admin", duration=HOUR, start=start)
    access.review(deps, user(deps, "carol"), view.request.id, Verdict.APPROVE, None)
    lead = next(r for r in data["policy"]["rules"] if r["name"] == "high-tier-needs-lead")
    change(lead)
    reconfigure(deps, data)
    clock.set(start)
    (ended,) = access.start_scheduled(deps)
    assert ended.request.status is RequestStatus.DENIED
    assert ended.grant is None
    assert grant_calls(provider) == []


def test_a_cancelled_scheduled_request_never_starts(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """alice withdraws her scheduled request: cancelled, and the start passes without a grant."""
    view = ask(deps, "alice", start=clock.now() + LATER)
    done = access.cancel(deps, user(deps, "alice"), view.request.id, "not needed")
    assert done.request.status is RequestStatus.CANCELLED
    clock.advance(LATER)
    assert access.start_scheduled(deps) == []
    assert provider.calls == []
    assert stored(deps)[1] == 0


def test_a_pending_scheduled_request_stays_open_for_review_until_its_start(
    deps: Deps, clock: FakeClock, notifier: RecordingNotifier
) -> None:
    """pending_ttl (1 h) passes before the start (3 h): still pending and reviewable; the
    reviewers are told it expires at the start; unreviewed at the start, it expires."""
    start = clock.now() + timedelta(hours=3)
    view = ask(deps, "bob", "db-schema-admin", start=start)
    (asked,) = notifier.sent("review.needed")
    assert asked.data["expires_at"] == format_time(start)
    clock.advance(LATER)
    assert access.expire_pending(deps) == []
    assert access.get_request(deps, user(deps, "bob"), view.request.id).request.status is (
        RequestStatus.PENDING
    )
    clock.set(start)
    assert [r.id for r in access.expire_pending(deps)] == [view.request.id]
    assert [n.recipients[0].user_id for n in notifier.sent("request.expired")] == ["bob"]


def test_the_request_itself_is_not_history_when_decided_again_at_the_start(
    deps: Deps, data: dict[str, Any], clock: FakeClock
) -> None:
    """history.requests_7d excludes the request being decided: a rule that approves a first
    request of the week approves the scheduled one at its start too (it counted 0 then)."""
    data["policy"]["rules"].insert(
        0,
        {
            "name": "first-of-the-week",
            "when": 'role.name == "server-admin" && history.requests_7d == 0',
            "effect": "auto_approve",
        },
    )
    data["policy"]["rules"][1]["when"] = "false"  # standard-auto-approve out of the way
    reconfigure(deps, data)
    start = clock.now() + LATER
    view = ask(deps, "alice", start=start)
    assert view.request.decision.rule == "first-of-the-week"
    assert view.request.decision.facts["history"]["requests_7d"] == 0
    clock.set(start)
    (started,) = access.start_scheduled(deps)
    assert started.request.status is RequestStatus.APPROVED, started.request.decision
    assert started.grant is not None
