"""Notification builders (who is told what, with which data) and the fan-out notifier."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from structlog.testing import capture_logs

from keyturn.adapters.notifiers.fanout import FanoutNotifier
from keyturn.domain.model import (
    AccessRequest,
    Approvers,
    Decision,
    EndReason,
    Grant,
    GrantStatus,
    Outcome,
    RequestStatus,
)
from keyturn.ports import Notification, Recipient
from keyturn.service import notifications
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, RecordingNotifier

NOW = datetime(2026, 11, 17, 2, 45, tzinfo=UTC)
LEADS = Decision(
    outcome=Outcome.REQUIRE_APPROVAL,
    rule="high-tier-needs-lead",
    reasons=("high tier needs a lead",),
    approvals=1,
    approvers=Approvers(groups=("dba-leads",)),
)


@pytest.fixture
def sent(deps: Deps) -> RecordingNotifier:
    """The notifier the builders send through."""
    recorder = RecordingNotifier()
    deps.notifier = recorder
    return recorder


def a_request(requester: str = "bob", **changes: object) -> AccessRequest:
    fields: dict[str, object] = {
        "id": "req_0001",
        "requester_id": requester,
        "role": "db-schema-admin",
        "target": "db-1",
        "duration": timedelta(hours=1),
        "justification": "migration 42 for INC-7",
        "ticket": None,
        "ssh_public_key": None,
        "status": RequestStatus.PENDING,
        "decision": LEADS,
        "created_at": NOW,
        "updated_at": NOW,
    } | changes
    return AccessRequest(**fields)  # type: ignore[arg-type]


def a_grant(user_id: str = "bob", **changes: object) -> Grant:
    fields: dict[str, object] = {
        "id": "grt_0002",
        "request_id": "req_0001",
        "user_id": user_id,
        "role": "server-admin",
        "target": "db-1",
        "provider": "ssh",
        "status": GrantStatus.ACTIVE,
        "not_before": NOW,
        "not_after": NOW + timedelta(minutes=30),
        "created_at": NOW,
        "updated_at": NOW,
    } | changes
    return Grant(**fields)  # type: ignore[arg-type]


def only(recorder: RecordingNotifier, event: str) -> Notification:
    found = recorder.sent(event)
    assert len(found) == 1, recorder.notifications
    return found[0]


def test_review_request_goes_to_every_approver_but_the_requester(
    deps: Deps, sent: RecordingNotifier
) -> None:
    """dave is in dba-leads and asks himself: only the other leads are asked to review."""
    notifications.review_needed(deps, a_request("dave"))
    assert [r.user_id for r in only(sent, "review.needed").recipients] == ["carol", "erin"]


def test_review_request_reaches_all_approvers_with_name_and_address(
    deps: Deps, sent: RecordingNotifier
) -> None:
    """bob is no lead: every lead is asked, with their configured names and e-mails."""
    notifications.review_needed(deps, a_request("bob"))
    assert only(sent, "review.needed").recipients == (
        Recipient("carol", "Carol Nguyen", "carol@example.com"),
        Recipient("dave", "Dave Kowalski", "dave@example.com"),
        Recipient("erin", "Erin Schulz", "erin@example.com"),
    )


def test_review_request_says_what_why_and_how_to_approve(
    deps: Deps, sent: RecordingNotifier
) -> None:
    """Subject names requester, role, target, duration; the text has everything to decide."""
    notifications.review_needed(deps, a_request("bob", ticket="INC-7"))
    note = only(sent, "review.needed")
    assert note.subject == "Review needed: bob asks for db-schema-admin on db-1 for 1h"
    for part in (
        "Bob Okafor (bob)",
        "Justification: migration 42 for INC-7",
        "Ticket: INC-7",
        "high-tier-needs-lead (1 approval needed)",
        "Request: req_0001",
        "expires at 2026-11-17 03:45 UTC",
        "keyturn approve req_0001",
        "keyturn deny req_0001",
    ):
        assert part in note.text
    assert note.data == {
        "request_id": "req_0001",
        "role": "db-schema-admin",
        "target": "db-1",
        "requester": "bob",
        "duration": "1h",
        "created_at": "2026-11-17T02:45:00.000000Z",
        "justification": "migration 42 for INC-7",
        "ticket": "INC-7",
        "rule": "high-tier-needs-lead",
        "approvals_needed": 1,
        "expires_at": "2026-11-17T03:45:00.000000Z",
    }


def test_justification_is_passed_through_verbatim(deps: Deps, sent: RecordingNotifier) -> None:
    """Format fields and markup in user input stay literal text."""
    tricky = "{request.id} {0} %s <b>x</b> ${HOME}"
    notifications.review_needed(deps, a_request("bob", justification=tricky))
    note = only(sent, "review.needed")
    assert note.data["justification"] == tricky
    assert f"Justification: {tricky}\n" in note.text


def test_no_review_request_when_no_configured_user_can_approve(
    deps: Deps, sent: RecordingNotifier
) -> None:
    """Approvers that are only the requester or unknown ids: nothing is sent, a warning logged."""
    decision = Decision(
        Outcome.REQUIRE_APPROVAL, "r", (), approvals=1, approvers=Approvers(("bob", "ghost"))
    )
    with capture_logs() as logs:
        notifications.review_needed(deps, a_request("bob", decision=decision))
    assert sent.notifications == []
    assert [e["event"] for e in logs] == ["nobody to ask for a review"]


def test_requester_hears_of_an_approval_and_its_reasons(
    deps: Deps, sent: RecordingNotifier
) -> None:
    """Approved by carol: the requester (only) is told, with reviewer, reasons and comment."""
    approved = a_request(
        "bob", status=RequestStatus.APPROVED, updated_at=NOW + timedelta(minutes=5)
    )
    notifications.request_decided(deps, approved, by="carol", comment="go ahead")
    note = only(sent, "request.decided")
    assert [r.user_id for r in note.recipients] == ["bob"]
    assert note.subject == "Approved: db-schema-admin on db-1 for 1h"
    assert "was approved by Carol Nguyen (carol)" in note.text
    assert "Reason: high tier needs a lead" in note.text
    assert "Comment: go ahead" in note.text
    assert note.data["status"] == "approved"
    assert note.data["decided_by"] == "carol"
    assert note.data["decided_at"] == "2026-11-17T02:50:00.000000Z"


def test_requester_hears_of_a_denial_by_policy(deps: Deps, sent: RecordingNotifier) -> None:
    """Denied with no reviewer: the text names the policy rule and its reasons."""
    decision = Decision(Outcome.DENY, "default-deny", ("no rule allows this",))
    notifications.request_decided(
        deps, a_request("mallory", status=RequestStatus.DENIED, decision=decision)
    )
    note = only(sent, "request.decided")
    assert note.subject == "Denied: db-schema-admin on db-1 for 1h"
    assert "was denied by policy rule default-deny" in note.text
    assert "Reason: no rule allows this" in note.text
    assert note.data["reasons"] == ["no rule allows this"]


def test_requester_is_told_when_nobody_reviewed_in_time(
    deps: Deps, sent: RecordingNotifier
) -> None:
    """Expired: the requester learns nobody reviewed within the pending TTL (1h by default)."""
    expired = a_request("bob", status=RequestStatus.EXPIRED, updated_at=NOW + timedelta(hours=1))
    notifications.request_expired(deps, expired)
    note = only(sent, "request.expired")
    assert [r.user_id for r in note.recipients] == ["bob"]
    assert "Nobody reviewed your request req_0001" in note.text
    assert "within 1h" in note.text
    assert note.data["expired_at"] == "2026-11-17T03:45:00.000000Z"
    assert note.data["request_id"] == "req_0001"


def test_users_no_longer_configured_are_skipped(deps: Deps, sent: RecordingNotifier) -> None:
    """A deleted requester or grant holder gets nothing; no exception."""
    notifications.request_expired(deps, a_request("ghost", status=RequestStatus.EXPIRED))
    notifications.grant_ended(deps, a_grant("ghost", end_reason=EndReason.EXPIRED))
    assert sent.notifications == []


def test_activation_gives_the_window_and_ids(deps: Deps, sent: RecordingNotifier) -> None:
    """Grant events carry grant and request ids and the window in RFC 3339 UTC."""
    notifications.grant_activated(deps, a_grant("alice"))
    note = only(sent, "grant.activated")
    assert [r.user_id for r in note.recipients] == ["alice"]
    assert note.subject == "Active: server-admin on db-1 until 2026-11-17 03:15 UTC"
    assert "keyturn release grt_0002" in note.text
    assert note.data == {
        "request_id": "req_0001",
        "grant_id": "grt_0002",
        "role": "server-admin",
        "target": "db-1",
        "requester": "alice",
        "not_before": "2026-11-17T02:45:00.000000Z",
        "not_after": "2026-11-17T03:15:00.000000Z",
    }


@pytest.mark.parametrize(
    ("left", "minutes"),
    [(timedelta(minutes=9, seconds=30), 10), (timedelta(minutes=1), 1), (-timedelta(1), 0)],
)
def test_expiry_warning_counts_minutes_left_rounded_up(
    deps: Deps, sent: RecordingNotifier, clock: FakeClock, left: timedelta, minutes: int
) -> None:
    """Minutes left are measured from the clock, rounded up, never negative."""
    notifications.grant_expiring(deps, a_grant("alice", not_after=clock.now() + left))
    note = only(sent, "grant.expiring")
    assert note.data["minutes_left"] == minutes
    assert note.subject == f"Ending in {minutes} min: server-admin on db-1"


@pytest.mark.parametrize(
    ("reason", "by", "phrase"),
    [
        (EndReason.REVOKED, "sam", "revoked by Sam Reyes (sam)"),
        (EndReason.RELEASED, "alice", "you released it"),
        (EndReason.EXPIRED, "system:worker", "its time window closed"),
    ],
)
def test_end_says_why_and_who(
    deps: Deps, sent: RecordingNotifier, reason: EndReason, by: str, phrase: str
) -> None:
    """The end notice names the reason and, for a revocation, the admin."""
    ended = a_grant(
        "alice", status=GrantStatus.REVOKED, end_reason=reason, ended_by=by, ended_at=NOW
    )
    notifications.grant_ended(deps, ended)
    note = only(sent, "grant.ended")
    assert phrase in note.text
    assert note.data["end_reason"] == str(reason)
    assert note.data["ended_by"] == by
    assert note.data["ended_at"] == "2026-11-17T02:45:00.000000Z"


class Broken:
    """An adapter that breaks the no-raise contract."""

    def alert(self, event: str, summary: str, details: dict[str, str]) -> None:
        raise RuntimeError("alert bug")

    def notify(self, notification: Notification) -> None:
        raise RuntimeError("notify bug")


def test_a_raising_notifier_does_not_reach_the_caller(deps: Deps) -> None:
    """Delivery can never fail the state change being reported; the bug is logged."""
    deps.notifier = Broken()
    with capture_logs() as logs:
        notifications.grant_activated(deps, a_grant("alice"))
    assert [(e["event"], e["log_level"]) for e in logs] == [
        ("notifier raised; notification not delivered", "error")
    ]


class Closing(RecordingNotifier):
    """A recording adapter that also has ``close``."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_fanout_gives_everything_to_every_adapter() -> None:
    """Each alert and notification reaches each adapter."""
    first, second = RecordingNotifier(), RecordingNotifier()
    fanout = FanoutNotifier([first, second])
    note = Notification("grant.ended", (Recipient("a", "A", None),), "s", "t", {"request_id": "r"})
    fanout.notify(note)
    fanout.alert("revoke.failed", "summary", {"grant_id": "g"})
    for adapter in (first, second):
        assert adapter.notifications == [note]
        assert adapter.alerts == [("revoke.failed", "summary", {"grant_id": "g"})]


def test_fanout_goes_on_past_a_failing_adapter() -> None:
    """A raising adapter is logged by name and the ones after it still get the message."""
    after = RecordingNotifier()
    fanout = FanoutNotifier([Broken(), after])
    note = Notification("grant.ended", (), "s", "t", {"request_id": "r"})
    with capture_logs() as logs:
        fanout.notify(note)
        fanout.alert("revoke.failed", "summary", {})
    assert after.notifications == [note]
    assert len(after.alerts) == 1
    assert [(e["event"], e["adapter"]) for e in logs] == [
        ("notifier adapter raised", "Broken"),
        ("notifier adapter raised", "Broken"),
    ]


def test_fanout_close_closes_the_adapters_that_can() -> None:
    """close() reaches adapters with ``close``; the others are left alone."""
    closing = Closing()
    FanoutNotifier([RecordingNotifier(), closing]).close()
    assert closing.closed
