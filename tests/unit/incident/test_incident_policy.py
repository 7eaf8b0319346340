"""Incident-aware policy at service level: on-call, alert and history facts, the 02:45 scene,
quorum exclusion, rule errors, explanations, and the notifications around expiry."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from keyturn.domain.errors import Conflict, Forbidden, InvalidInput
from keyturn.domain.model import GrantStatus, Outcome, RequestStatus, Verdict
from keyturn.service import access, facts, grants
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider, RecordingNotifier
from tests.conftest import user
from tests.unit.incident import (
    FakeOnCall,
    ask,
    fire,
    metric,
    reconfigure,
    stored,
)

HOUR = timedelta(hours=1)


def gathered(
    deps: Deps, who: str = "alice", role: str = "db-admin", target: str = "db-1"
) -> dict[str, Any]:
    found_role, found_target = deps.config.role(role), deps.config.target(target)
    assert found_role is not None
    assert found_target is not None
    return facts.gather(
        deps,
        user=user(deps, who),
        role=found_role,
        target=found_target,
        duration=HOUR,
        justification="j",
        ticket=None,
        now=deps.clock.now(),
    )


# Facts ---------------------------------------------------------------------------------------


def test_a_firing_alert_mapped_to_the_target_makes_it_alerting(deps: Deps) -> None:
    """An alert whose instance label maps to db-1 gives target.alerting and its name/severity/
    since; the other target stays quiet."""
    fire(deps, instance="db-1:9187")
    seen = gathered(deps)["target"]
    assert seen["alerting"] is True
    assert seen["alerts"] == [
        {
            "name": "PostgresPrimaryDown",
            "severity": "critical",
            "since": deps.clock.now() - timedelta(minutes=3),
        }
    ]
    assert gathered(deps, target="db-2")["target"] == {
        "name": "db-2",
        "labels": {"env": "prod", "service": "postgres"},
        "alerting": False,
        "alerts": [],
    }


def test_an_alert_on_db_2_does_not_make_db_1_alert(deps: Deps) -> None:
    """Alerts count only for the target their labels map to."""
    fire(deps, instance="db-2:9187")
    assert gathered(deps, target="db-2")["target"]["alerting"] is True
    assert gathered(deps, target="db-1")["target"]["alerting"] is False


def test_an_alert_whose_end_has_passed_is_not_firing(deps: Deps, clock: FakeClock) -> None:
    """endsAt in the past counts as resolved, even with status firing; a future endsAt counts
    until it passes."""
    fire(deps, "Past", ends_at=clock.now() - timedelta(seconds=1))
    assert gathered(deps)["target"]["alerting"] is False
    fire(deps, "Future", ends_at=clock.now() + timedelta(minutes=5))
    assert [a["name"] for a in gathered(deps)["target"]["alerts"]] == ["Future"]
    clock.advance(timedelta(minutes=5))
    assert gathered(deps)["target"]["alerting"] is False


def test_a_resolved_alert_is_not_firing(deps: Deps) -> None:
    """The same alert reported resolved replaces its firing state."""
    fire(deps, alert_id="chk-1")
    assert gathered(deps)["target"]["alerting"] is True
    fire(deps, alert_id="chk-1", status="resolved")
    assert gathered(deps)["target"]["alerting"] is False


def test_on_call_facts_come_from_the_on_call_port(deps: Deps, oncall: FakeOnCall) -> None:
    """requester.on_call and on_call_schedules say what the port says for this target."""
    assert gathered(deps)["requester"]["on_call"] is False
    oncall.people["alice"] = ("database",)
    assert gathered(deps)["requester"]["on_call"] is True
    assert gathered(deps)["requester"]["on_call_schedules"] == ["database"]
    directory = gathered(deps, role="server-admin", target="corp-directory")["requester"]
    assert directory["on_call"] is False


def test_history_counts_this_requesters_requests_and_hours_for_this_role(
    deps: Deps, clock: FakeClock
) -> None:
    """Two overlapping one-hour grants 30 minutes apart: 2 requests, 1.5 hours (overlap once);
    other roles and other requesters do not count."""
    ask(deps, "alice", duration=HOUR)
    clock.advance(timedelta(minutes=30))
    ask(deps, "alice", duration=HOUR)
    ask(deps, "bob", duration=HOUR)
    clock.advance(timedelta(hours=3))
    history = gathered(deps, role="server-admin")["history"]
    assert history == {"requests_7d": 2, "hours_elevated_7d": 1.5}
    assert gathered(deps, role="db-admin")["history"] == {
        "requests_7d": 0,
        "hours_elevated_7d": 0.0,
    }
    assert gathered(deps, "bob", role="server-admin")["history"]["requests_7d"] == 1


def test_history_forgets_what_is_older_than_seven_days(deps: Deps, clock: FakeClock) -> None:
    """Requests before the window are not counted; hours are clipped to the window."""
    start = clock.now()
    ask(deps, "alice", duration=HOUR)
    clock.advance(timedelta(minutes=30))
    ask(deps, "alice", duration=HOUR)  # elevated from start to start + 90 minutes
    clock.set(start + timedelta(days=7, minutes=45))  # the window starts at start + 45 minutes
    assert gathered(deps, role="server-admin")["history"] == {
        "requests_7d": 0,
        "hours_elevated_7d": 0.75,
    }
    clock.set(start + timedelta(days=8))
    assert gathered(deps, role="server-admin")["history"]["hours_elevated_7d"] == 0.0


# The 02:45 scene -----------------------------------------------------------------------------


def test_on_call_engineer_on_an_alerting_database_gets_db_admin_at_once(
    deps: Deps, oncall: FakeOnCall, provider: FakeProvider
) -> None:
    """alice is on call and db-1 alerts: oncall-incident approves, the grant is live, and the
    trace says why the rule before it did not match and why this one did."""
    oncall.people["alice"] = ("database",)
    fire(deps)
    view = ask(deps, "alice", "db-admin", duration=HOUR)
    assert view.request.status is RequestStatus.APPROVED
    assert view.grant is not None
    assert view.grant.status is GrantStatus.ACTIVE
    assert provider.holds(view.grant)
    decision = view.request.decision
    assert (decision.outcome, decision.rule) == (Outcome.AUTO_APPROVE, "oncall-incident")
    assert decision.reasons == ("on call for this target while it is alerting (incident response)",)
    first, second = decision.trace
    assert first["rule"] == "standard-auto-approve"
    assert first["matched"] is False
    assert first["why"] == 'not matched: role.tier == "standard" is false'
    assert second["rule"] == "oncall-incident"
    assert second["matched"] is True
    assert second["clauses"] == [
        {"expr": 'role.tier == "high"', "value": "true"},
        {"expr": "requester.on_call", "value": "true"},
        {"expr": "target.alerting", "value": "true"},
    ]
    assert decision.facts["requester"]["on_call_schedules"] == ["database"]
    assert decision.facts["target"]["alerts"][0]["name"] == "PostgresPrimaryDown"


def test_a_lead_who_is_not_on_call_needs_two_other_leads(
    deps: Deps, oncall: FakeOnCall, notifier: RecordingNotifier
) -> None:
    """dave (not on call) during the same incident: pending, 2 approvals; carol and erin are
    asked, dave is not asked to review his own request."""
    oncall.people["alice"] = ("database",)
    fire(deps)
    view = ask(deps, "dave", "db-admin", duration=HOUR)
    assert view.request.status is RequestStatus.PENDING
    assert view.grant is None
    decision = view.request.decision
    assert (decision.rule, decision.approvals) == ("db-admin-two-reviews", 2)
    incident = next(e for e in decision.trace if e["rule"] == "oncall-incident")
    assert incident["why"] == "not matched: requester.on_call is false"
    (asked,) = notifier.sent("review.needed")
    assert sorted(r.user_id for r in asked.recipients) == ["carol", "erin"]
    assert asked.data["approvals_needed"] == 2


def test_once_the_alert_resolves_the_on_call_engineer_needs_review_too(
    deps: Deps, oncall: FakeOnCall
) -> None:
    """The incident is over: alice's next request goes to two leads."""
    oncall.people["alice"] = ("database",)
    fire(deps, alert_id="pg-down")
    assert ask(deps, "alice", "db-admin").request.status is RequestStatus.APPROVED
    fire(deps, alert_id="pg-down", status="resolved")
    view = ask(deps, "alice", "db-admin")
    assert view.request.status is RequestStatus.PENDING
    assert view.request.decision.rule == "db-admin-two-reviews"
    incident = next(e for e in view.request.decision.trace if e["rule"] == "oncall-incident")
    assert incident["why"] == "not matched: target.alerting is false"


# Quorum --------------------------------------------------------------------------------------


def _two_of_dave_and_carol(deps: Deps, data: dict[str, Any]) -> None:
    rule = next(r for r in data["policy"]["rules"] if r["name"] == "high-tier-needs-lead")
    rule["approvals"] = 2
    rule["approvers"] = {"users": ["dave", "carol"]}
    reconfigure(deps, data)


def test_a_quorum_the_requester_would_have_to_join_is_denied_with_the_reason(
    deps: Deps, data: dict[str, Any], notifier: RecordingNotifier
) -> None:
    """Two approvals from {dave, carol}: dave's own request can never reach them -> denied,
    saying so; nobody is asked to review."""
    _two_of_dave_and_carol(deps, data)
    view = ask(deps, "dave", "db-schema-admin")
    assert view.request.status is RequestStatus.DENIED
    assert view.grant is None
    assert view.request.decision.rule == "high-tier-needs-lead"
    (reason,) = view.request.decision.reasons
    assert "needs 2 distinct approver(s) and only 1 can approve" in reason
    assert notifier.sent("review.needed") == []
    (told,) = notifier.sent("request.decided")
    assert told.data["status"] == "denied"
    assert told.data["reasons"] == [reason]


def test_the_same_approver_twice_is_a_conflict_and_counts_once(
    deps: Deps, data: dict[str, Any]
) -> None:
    """bob's request under the same rule is pending; carol approving twice does not approve
    it, dave's approval does."""
    _two_of_dave_and_carol(deps, data)
    view = ask(deps, "bob", "db-schema-admin")
    assert view.request.status is RequestStatus.PENDING
    assert view.request.decision.approvals == 2
    carol = user(deps, "carol")
    access.review(deps, carol, view.request.id, Verdict.APPROVE, None)
    with pytest.raises(Conflict, match="already reviewed"):
        access.review(deps, carol, view.request.id, Verdict.APPROVE, None)
    again = access.get_request(deps, carol, view.request.id)
    assert again.request.status is RequestStatus.PENDING
    assert len(again.reviews) == 1
    done = access.review(deps, user(deps, "dave"), view.request.id, Verdict.APPROVE, None)
    assert done.request.status is RequestStatus.APPROVED
    assert done.grant is not None


# Rule errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("when", "clause_value"),
    [
        ('target.labels.missing == "x"', None),
        ("3600 / (request.duration - 3600) > 0", None),
        ("request.duration / 0 > 1", None),  # fails on the load-time probe facts too
        ('role.tier == "high" && target.labels.missing == "x"', "error: "),
        ('role.tier == "high" && request.duration % (request.duration - 3600) == 0', "error: "),
    ],
)
def test_a_rule_failing_at_evaluation_never_matches_and_is_counted(
    deps: Deps, data: dict[str, Any], when: str, clause_value: str | None
) -> None:
    """A missing label or a division by zero at decision time: the rule is not matched, the
    error is in the trace (and its failing clause), the error metric counts it, the request
    falls through to the next rule instead of being approved."""
    data["policy"]["rules"].insert(0, {"name": "broken", "when": when, "effect": "auto_approve"})
    reconfigure(deps, data)
    errors = {"name": "keyturn_policy_rule_errors_total", "rule": "broken"}
    explained = access.explain(
        deps,
        user(deps, "bob"),
        requester_id="bob",
        role="db-schema-admin",
        target="db-1",
        duration=HOUR,
    )
    assert explained.outcome is Outcome.REQUIRE_APPROVAL
    assert metric(deps, errors.pop("name"), **errors) == 0  # explanations are not counted

    view = ask(deps, "bob", "db-schema-admin", duration=HOUR)
    assert view.request.status is RequestStatus.PENDING
    assert view.request.decision.rule == "high-tier-needs-lead"
    broken = view.request.decision.trace[0]
    assert broken["rule"] == "broken"
    assert broken["matched"] is False
    assert broken["error"].startswith("evaluation error: ")
    assert broken["why"].startswith("not matched: evaluation error")
    if clause_value is not None:
        assert broken["clauses"][0] == {"expr": 'role.tier == "high"', "value": "true"}
        assert broken["clauses"][1]["value"].startswith(clause_value)
    assert metric(deps, "keyturn_policy_rule_errors_total", rule="broken") == 1
    decided = {"outcome": "require_approval", "rule": "high-tier-needs-lead"}
    assert metric(deps, "keyturn_policy_decisions_total", **decided) == 1


# Explanations --------------------------------------------------------------------------------


def test_explain_writes_nothing_and_counts_nothing(deps: Deps, oncall: FakeOnCall) -> None:
    """alice asks what would happen: the full decision, but no request, grant, audit event or
    metric."""
    oncall.people["alice"] = ("database",)
    fire(deps)
    before = stored(deps)
    decision = access.explain(
        deps,
        user(deps, "alice"),
        requester_id="alice",
        role="db-admin",
        target="db-1",
        duration=HOUR,
    )
    assert (decision.outcome, decision.rule) == (Outcome.AUTO_APPROVE, "oncall-incident")
    assert [e["rule"] for e in decision.trace] == ["standard-auto-approve", "oncall-incident"]
    assert stored(deps) == before
    decided = {"outcome": "auto_approve", "rule": "oncall-incident"}
    assert metric(deps, "keyturn_policy_decisions_total", **decided) == 0


def test_an_admin_may_explain_for_others_and_nobody_else(deps: Deps) -> None:
    """sam (security) explains dave's request; bob may not explain alice's; an unknown requester
    is bad input."""
    decision = access.explain(
        deps, user(deps, "sam"), requester_id="dave", role="db-admin", target="db-1", duration=HOUR
    )
    assert (decision.outcome, decision.rule) == (Outcome.REQUIRE_APPROVAL, "db-admin-two-reviews")
    with pytest.raises(Forbidden):
        access.explain(
            deps,
            user(deps, "bob"),
            requester_id="alice",
            role="db-admin",
            target="db-1",
            duration=HOUR,
        )
    with pytest.raises(InvalidInput, match="unknown requester"):
        access.explain(
            deps,
            user(deps, "sam"),
            requester_id="nobody",
            role="db-admin",
            target="db-1",
            duration=HOUR,
        )
    assert stored(deps) == (0, 0, 0)


# Expiry notifications ------------------------------------------------------------------------


def test_an_expired_pending_request_tells_its_requester(
    deps: Deps, clock: FakeClock, notifier: RecordingNotifier
) -> None:
    """Unreviewed after server.pending_ttl (1 h): expired, and bob hears about it once."""
    view = ask(deps, "bob", "db-schema-admin")
    clock.advance(timedelta(minutes=59))
    assert access.expire_pending(deps) == []
    assert notifier.sent("request.expired") == []
    clock.advance(timedelta(minutes=1))
    assert [r.id for r in access.expire_pending(deps)] == [view.request.id]
    (told,) = notifier.sent("request.expired")
    assert [r.user_id for r in told.recipients] == ["bob"]
    assert told.data["request_id"] == view.request.id
    assert access.expire_pending(deps) == []
    assert len(notifier.sent("request.expired")) == 1


def test_expiry_warning_is_sent_once_and_again_after_an_extension(
    deps: Deps, clock: FakeClock, notifier: RecordingNotifier
) -> None:
    """A 30-minute grant is warned about within notifier.expiry_warning (10 min) of its end,
    once; extending it resets the warning for the new end."""
    view = ask(deps, "alice", duration=timedelta(minutes=30))
    assert view.grant is not None
    clock.advance(timedelta(minutes=19))
    assert grants.warn_expiring(deps) == []
    clock.advance(timedelta(minutes=2))
    assert [g.id for g in grants.warn_expiring(deps)] == [view.grant.id]
    assert grants.warn_expiring(deps) == []
    assert len(notifier.sent("grant.expiring")) == 1
    longer = grants.extend(deps, user(deps, "alice"), view.grant.id, timedelta(minutes=30))
    assert longer.warned_at is None
    assert grants.warn_expiring(deps) == []  # 39 minutes left
    clock.advance(timedelta(minutes=30))
    assert [g.id for g in grants.warn_expiring(deps)] == [view.grant.id]
    warnings = notifier.sent("grant.expiring")
    assert len(warnings) == 2
    assert [r.user_id for r in warnings[1].recipients] == ["alice"]
