"""Break-glass (issue 5) over fakes: online use, post-incident reviews, overdue alerts, the
offline kit (shares, sealed secret, signing, import) and its configuration checks.

Real sshd/slapd runs live in the integration and e2e tests; here every dependency is a fake
(in-memory store, FakeClock, FakeProvider, RecordingNotifier) so each rule is pinned quickly.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keyturn.adapters.break_glass_kit import (
    MAX_SHARES,
    SEALED_ACCOUNT,
    ShareCollector,
    ca_key,
    new_kit,
    unseal,
)
from keyturn.break_glass_offline import OfflineAsk, OfflineResult, check_ask, sign
from keyturn.config import KeyturnConfig
from keyturn.domain.audit import format_time
from keyturn.domain.break_glass import (
    RECORD_MAX_BYTES,
    BreakGlassMode,
    KitInfo,
    PostIncidentReview,
    ReviewStatus,
    ReviewVerdict,
    kit_from_public_data,
    kit_id_for,
    read_record,
    sign_record,
)
from keyturn.domain.errors import (
    ConfigError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    ProviderError,
)
from keyturn.domain.model import GrantStatus, RequestStatus
from keyturn.ports import Recipient
from keyturn.service import break_glass as bg
from keyturn.service.break_glass import BreakGlassInput, BreakGlassView
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider, RecordingNotifier
from tests.conftest import (
    actions,
    directory_data,
    events,
    example_data,
    fake_deps,
    load,
    user,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl x@y"
WHY = "INC-42: db-1 primary is down, failing over by hand"
CAP = timedelta(hours=1)  # examples/keyturn.yaml: roles[db-admin].break_glass.max_duration
DEADLINE = timedelta(hours=72)  # examples/keyturn.yaml: break_glass.review_deadline
REVIEWERS = ("carol", "dave", "erin", "sam")  # dba-leads (approvers of db-admin), then sam
SECURITY_MAIL = "security-oncall@example.com"
USES = "keyturn_break_glass_uses_total"


# wiring ----------------------------------------------------------------------------------------
@pytest.fixture
def notifier() -> RecordingNotifier:
    """Records every notification and alert."""
    return RecordingNotifier()


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Any]:
    """The example configuration (no directory)."""
    return example_data(tmp_path)


@pytest.fixture
def deps(
    data: dict[str, Any], clock: FakeClock, provider: FakeProvider, notifier: RecordingNotifier
) -> Deps:
    """Services over fakes with the recording notifier."""
    return fake_deps(data, clock, {"ssh": provider}, notifier=notifier)


def role_entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The ``roles[]`` entry named ``name`` (a dict to modify before wiring)."""
    return next(r for r in data["roles"] if r["name"] == name)


def role_index(data: dict[str, Any], name: str) -> int:
    """The position of role ``name`` in ``roles`` (for config error paths)."""
    return next(i for i, r in enumerate(data["roles"]) if r["name"] == name)


def ask(**changes: Any) -> BreakGlassInput:
    """Alice's break-glass input for db-admin on db-1, with ``changes``."""
    fields: dict[str, Any] = {
        "role": "db-admin",
        "target": "db-1",
        "justification": WHY,
        "ssh_public_key": KEY,
    } | changes
    return BreakGlassInput(**fields)


def use_glass(deps: Deps, who: str = "alice", **changes: Any) -> BreakGlassView:
    """``who`` breaks glass (db-admin on db-1 by default)."""
    return bg.break_glass(deps, user(deps, who), ask(**changes))


def metric(deps: Deps, role: str = "db-admin", mode: str = "online") -> float:
    """keyturn_break_glass_uses_total{role, mode} (0 when never incremented)."""
    value = deps.metrics.registry.get_sample_value(USES, {"role": role, "mode": mode})
    return value or 0.0


def stored_reviews(deps: Deps) -> list[PostIncidentReview]:
    """Every committed post-incident review."""
    with deps.store.transaction() as tx:
        return tx.post_incident_reviews()


def stored_kits(deps: Deps) -> list[KitInfo]:
    """Every committed kit, newest first."""
    with deps.store.transaction() as tx:
        return tx.kits()


def assert_nothing_written(deps: Deps, notifier: RecordingNotifier, provider: FakeProvider) -> None:
    """No request, grant, review, audit event, notification, alert, metric or provider call."""
    with deps.store.transaction() as tx:
        assert tx.list_requests() == []
        assert tx.list_grants() == []
        assert tx.post_incident_reviews() == []
        assert tx.audit_events() == []
    assert notifier.notifications == []
    assert notifier.alerts == []
    assert metric(deps) == 0
    assert provider.calls == []
    assert provider.held == set()


def recipient_ids(recipients: tuple[Recipient, ...]) -> set[str]:
    """The user ids (or plain e-mail addresses) of recipients."""
    return {r.user_id for r in recipients}


# online break-glass ----------------------------------------------------------------------------
class TestOnlineBreakGlass:
    """A member of the role's break-glass group gets access at once, and everyone is told."""

    @pytest.mark.parametrize("who", ["bob", "carol", "sam", "mallory"])
    def test_non_member_is_refused_and_nothing_is_written(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider, who: str
    ) -> None:
        """Approvers, admins and other users are no members of breakglass-db: refused."""
        with pytest.raises(Forbidden, match="breakglass-db"):
            use_glass(deps, who)
        assert_nothing_written(deps, notifier, provider)

    def test_member_gets_an_active_flagged_grant_at_once(
        self, deps: Deps, clock: FakeClock, provider: FakeProvider
    ) -> None:
        """No review: the request is approved by the break-glass rule, the grant is active now,
        both flagged, and the window defaults to the role's break-glass cap."""
        view = use_glass(deps)
        request, grant = view.access.request, view.access.grant
        assert grant is not None
        assert request.status is RequestStatus.APPROVED
        assert request.break_glass is True
        assert request.decision.rule == bg.BREAK_GLASS_RULE
        assert request.duration == CAP
        assert grant.status is GrantStatus.ACTIVE
        assert grant.break_glass is True
        assert grant.user_id == "alice"
        assert (grant.not_before, grant.not_after) == (clock.now(), clock.now() + CAP)
        assert provider.holds(grant)
        with deps.store.transaction() as tx:
            assert tx.get_request(request.id).break_glass is True
            stored = tx.get_grant(grant.id)
        assert stored.status is GrantStatus.ACTIVE
        assert stored.break_glass is True

    def test_shorter_duration_is_kept(self, deps: Deps, clock: FakeClock) -> None:
        """A window below the cap is granted as asked."""
        view = use_glass(deps, duration=timedelta(minutes=15))
        assert view.access.grant is not None
        assert view.access.grant.not_after == clock.now() + timedelta(minutes=15)

    def test_duration_exactly_at_the_cap_is_accepted(self, deps: Deps) -> None:
        """The cap itself is allowed (the bound is inclusive)."""
        assert use_glass(deps, duration=CAP).access.request.duration == CAP

    def test_distinct_audit_event_names_the_review(self, deps: Deps) -> None:
        """break_glass.used carries the review id and due time; grant events are flagged."""
        view = use_glass(deps)
        [used] = events(deps, "break_glass.used")
        assert used.actor == "alice"
        assert used.subject["request_id"] == view.access.request.id
        assert view.access.grant is not None
        assert used.subject["grant_id"] == view.access.grant.id
        assert used.details["review_id"] == view.review.id
        assert used.details["mode"] == "online"
        assert used.details["duration_s"] == 3600
        assert used.details["justification"] == WHY
        assert used.details["review_due"] == format_time(view.review.due_at)
        grant_events = [e for e in events(deps) if e.action.startswith("grant.")]
        assert [e.action for e in grant_events] == ["grant.provisioning", "grant.issued"]
        assert all(e.details.get("break_glass") is True for e in grant_events)

    def test_metric_counts_each_use(self, deps: Deps) -> None:
        """keyturn_break_glass_uses_total{role=db-admin, mode=online} goes up by one a use."""
        assert metric(deps) == 0
        use_glass(deps)
        assert metric(deps) == 1
        use_glass(deps, target="db-2")
        assert metric(deps) == 2
        assert metric(deps, mode="offline") == 0

    def test_review_is_opened_due_after_the_deadline(self, deps: Deps, clock: FakeClock) -> None:
        """A post-incident review opens at once, due 72 hours later, reviewed by the role's
        approvers and the security contacts who are users."""
        view = use_glass(deps)
        review = view.review
        assert review.mode is BreakGlassMode.ONLINE
        assert review.status is ReviewStatus.OPEN
        assert review.user_id == "alice"
        assert (review.role, review.target) == ("db-admin", "db-1")
        assert review.justification == WHY
        assert review.used_at == review.opened_at == clock.now()
        assert review.due_at == clock.now() + DEADLINE
        assert review.reviewers == REVIEWERS
        assert view.access.grant is not None
        assert review.grant_id == view.access.grant.id
        assert review.request_id == view.access.request.id
        assert (review.record_id, review.kit_id) == (None, None)
        assert stored_reviews(deps) == [review]

    def test_approvers_and_security_contacts_are_told_never_the_user(
        self, deps: Deps, notifier: RecordingNotifier
    ) -> None:
        """One break_glass.used notification to dba-leads, sam and the plain security address."""
        view = use_glass(deps)
        [sent] = notifier.sent("break_glass.used")
        assert recipient_ids(sent.recipients) == {"carol", "dave", "erin", "sam", SECURITY_MAIL}
        assert "alice" not in recipient_ids(sent.recipients)
        plain = next(r for r in sent.recipients if r.user_id == SECURITY_MAIL)
        assert plain.email == SECURITY_MAIL
        carol = next(r for r in sent.recipients if r.user_id == "carol")
        assert carol.email == "carol@example.com"
        assert sent.data["review_id"] == view.review.id
        assert sent.data["user_id"] == "alice"
        assert sent.data["mode"] == "online"
        assert "alice" in sent.subject
        assert WHY in sent.text
        others = [n for n in notifier.notifications if n.event != "break_glass.used"]
        assert [(n.event, recipient_ids(n.recipients)) for n in others] == [
            ("grant.activated", {"alice"})  # her own grant, as for any grant
        ]

    def test_user_who_is_also_a_contact_and_approver_is_not_told(
        self, data: dict[str, Any], clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """Even named as a security contact and in the approvers' group, the user who broke
        glass is neither told nor a reviewer."""
        for entry in data["users"]:
            if entry["id"] == "alice":
                entry["groups"] = [*entry["groups"], "dba-leads"]
        data["break_glass"]["security_contacts"] = ["alice", "sam"]
        deps = fake_deps(data, clock, {"ssh": FakeProvider("ssh")}, notifier=notifier)
        view = use_glass(deps)
        assert "alice" not in view.review.reviewers
        [sent] = notifier.sent("break_glass.used")
        assert recipient_ids(sent.recipients) == {"carol", "dave", "erin", "sam"}

    def test_no_recipients_still_grants_and_audits(
        self, data: dict[str, Any], clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """With no approvers and no contacts, nothing is sent but the use is audited."""
        data["policy"]["rules"] = [
            r for r in data["policy"]["rules"] if r["effect"] != "require_approval"
        ]
        data["policy"].pop("tests")
        data["break_glass"]["security_contacts"] = []
        deps = fake_deps(data, clock, {"ssh": FakeProvider("ssh")}, notifier=notifier)
        view = use_glass(deps)
        assert view.review.reviewers == ()
        assert notifier.sent("break_glass.used") == []
        assert len(events(deps, "break_glass.used")) == 1


class TestOnlineHostileInput:
    """Each bad input is refused with InvalidInput (naming the field) and writes nothing."""

    def refused(
        self,
        deps: Deps,
        notifier: RecordingNotifier,
        provider: FakeProvider,
        field: str,
        **changes: Any,
    ) -> InvalidInput:
        with pytest.raises(InvalidInput) as caught:
            use_glass(deps, **changes)
        assert caught.value.details.get("field") == field
        assert_nothing_written(deps, notifier, provider)
        return caught.value

    def test_duration_above_the_cap(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """One second above the 1-hour cap is refused (the role's own max is 4 hours)."""
        error = self.refused(
            deps, notifier, provider, "duration", duration=CAP + timedelta(seconds=1)
        )
        assert "cap" in error.message

    def test_duration_of_the_role_maximum_is_above_the_cap(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """The role's usual maximum (4 hours) does not apply to break-glass."""
        self.refused(deps, notifier, provider, "duration", duration=timedelta(hours=4))

    def test_zero_duration(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """A zero window is refused."""
        self.refused(deps, notifier, provider, "duration", duration=timedelta(0))

    def test_negative_duration(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """A negative window is refused."""
        self.refused(deps, notifier, provider, "duration", duration=timedelta(minutes=-5))

    def test_fractional_second_duration(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """Durations are whole seconds."""
        self.refused(
            deps, notifier, provider, "duration", duration=timedelta(minutes=5, microseconds=1)
        )

    def test_empty_justification(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """The justification is mandatory."""
        self.refused(deps, notifier, provider, "justification", justification="")

    def test_blank_justification(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """Whitespace is no justification."""
        self.refused(deps, notifier, provider, "justification", justification=" \t \n ")

    def test_too_short_justification(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """19 characters, one below break_glass.justification_min_length."""
        error = self.refused(deps, notifier, provider, "justification", justification="x" * 19)
        assert "20" in error.message

    def test_padding_does_not_lengthen_a_short_justification(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """Surrounding blanks do not count toward the minimum."""
        self.refused(
            deps, notifier, provider, "justification", justification="   db down, fixing   "
        )

    def test_control_characters_do_not_count_toward_the_minimum(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """Five NUL bytes escape to twenty characters of text but say nothing: only what was
        written counts (here 15 characters)."""
        self.refused(
            deps, notifier, provider, "justification", justification="\x00" * 5 + "db-1 is down!!!"
        )

    def test_control_characters_are_stored_escaped(self, deps: Deps) -> None:
        """A terminal escape in a long enough justification is stored visibly escaped."""
        view = use_glass(deps, justification="db-1 down \x1b[2J clearing the reviewer's screen")
        assert "\x1b" not in view.review.justification
        assert "\\x1b[2J" in view.review.justification
        [event] = events(deps, "break_glass.used")
        assert event.details["justification"] == view.review.justification

    def test_justification_of_exactly_the_minimum_is_accepted(self, deps: Deps) -> None:
        """20 characters pass (the bound is inclusive)."""
        assert use_glass(deps, justification="y" * 20).review.justification == "y" * 20

    def test_role_without_break_glass_configuration(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """server-admin has no break_glass section: refused even for alice."""
        error = self.refused(deps, notifier, provider, "role", role="server-admin")
        assert "no break-glass configuration" in error.message

    def test_unknown_role(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """A role that is not configured is refused."""
        self.refused(deps, notifier, provider, "role", role="root-everywhere")

    def test_unknown_target(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """A target that is not configured is refused."""
        self.refused(deps, notifier, provider, "target", target="db-9")

    def test_ssh_role_without_a_key(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """db-admin grants SSH access: a public key is required."""
        self.refused(deps, notifier, provider, "ssh_public_key", ssh_public_key=None)

    def test_ssh_role_with_a_blank_key(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """A blank key is no key."""
        self.refused(deps, notifier, provider, "ssh_public_key", ssh_public_key="   ")

    def test_ssh_role_with_a_bad_key(
        self, deps: Deps, notifier: RecordingNotifier, provider: FakeProvider
    ) -> None:
        """A truncated key line is refused."""
        with pytest.raises(InvalidInput):
            use_glass(deps, ssh_public_key="ssh-ed25519 AAAA")
        assert_nothing_written(deps, notifier, provider)


# post-incident reviews -------------------------------------------------------------------------
@pytest.fixture
def used(deps: Deps) -> BreakGlassView:
    """Alice broke glass for db-admin on db-1."""
    return use_glass(deps)


class TestReviews:
    """Someone other than the user closes the review, once, with a verdict and a comment."""

    def test_the_user_cannot_close_their_own_review(self, deps: Deps, used: BreakGlassView) -> None:
        """Forbidden; the review stays open and nothing is audited."""
        before = actions(deps)
        with pytest.raises(Forbidden, match="someone else"):
            bg.close_review(
                deps, user(deps, "alice"), used.review.id, ReviewVerdict.JUSTIFIED, "all fine"
            )
        assert stored_reviews(deps)[0].status is ReviewStatus.OPEN
        assert actions(deps) == before

    def test_the_user_cannot_close_it_even_as_an_admin(
        self, data: dict[str, Any], clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """An admin who broke glass still may not review their own use."""
        for entry in data["users"]:
            if entry["id"] == "alice":
                entry["groups"] = [*entry["groups"], "security"]
        deps = fake_deps(data, clock, {"ssh": FakeProvider("ssh")}, notifier=notifier)
        view = use_glass(deps)
        assert deps.is_admin(user(deps, "alice"))
        with pytest.raises(Forbidden):
            bg.close_review(
                deps, user(deps, "alice"), view.review.id, ReviewVerdict.JUSTIFIED, "ok"
            )
        assert stored_reviews(deps)[0].status is ReviewStatus.OPEN

    @pytest.mark.parametrize("who", ["bob", "mallory"])
    def test_an_unrelated_user_cannot_close_it(
        self, deps: Deps, used: BreakGlassView, who: str
    ) -> None:
        """Neither admin nor reviewer: the review is not even visible (NotFound)."""
        before = actions(deps)
        with pytest.raises(NotFound):
            bg.close_review(deps, user(deps, who), used.review.id, ReviewVerdict.UNJUSTIFIED, "no")
        assert stored_reviews(deps)[0].status is ReviewStatus.OPEN
        assert actions(deps) == before

    def test_unknown_review_is_not_found(self, deps: Deps, used: BreakGlassView) -> None:
        """A review id that does not exist."""
        with pytest.raises(NotFound):
            bg.close_review(deps, user(deps, "sam"), "pir_nope", ReviewVerdict.JUSTIFIED, "ok")

    def test_a_reviewer_closes_it(self, deps: Deps, used: BreakGlassView, clock: FakeClock) -> None:
        """carol (an approver of db-admin) closes it; the verdict and comment are stored and
        audited."""
        clock.advance(timedelta(hours=5))
        closed = bg.close_review(
            deps,
            user(deps, "carol"),
            used.review.id,
            ReviewVerdict.UNJUSTIFIED,
            "  should have paged the DBA on call first  ",
        )
        assert closed.status is ReviewStatus.CLOSED
        assert closed.verdict is ReviewVerdict.UNJUSTIFIED
        assert closed.comment == "should have paged the DBA on call first"
        assert (closed.closed_by, closed.closed_at) == ("carol", clock.now())
        assert stored_reviews(deps) == [closed]
        [event] = events(deps, "break_glass.review_closed")
        assert event.actor == "carol"
        assert event.subject["review_id"] == used.review.id
        assert event.subject["user_id"] == "alice"
        assert event.details == {
            "verdict": "unjustified",
            "comment": "should have paged the DBA on call first",
            "overdue": False,
        }

    def test_an_admin_closes_it(self, deps: Deps, used: BreakGlassView) -> None:
        """sam (admin) closes it."""
        closed = bg.close_review(
            deps, user(deps, "sam"), used.review.id, ReviewVerdict.JUSTIFIED, "primary was down"
        )
        assert (closed.status, closed.closed_by) == (ReviewStatus.CLOSED, "sam")

    def test_an_admin_who_is_no_reviewer_closes_it(
        self, data: dict[str, Any], clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """With sam no security contact, he is no reviewer; being admin is enough."""
        data["break_glass"]["security_contacts"] = [SECURITY_MAIL]
        deps = fake_deps(data, clock, {"ssh": FakeProvider("ssh")}, notifier=notifier)
        view = use_glass(deps)
        assert "sam" not in view.review.reviewers
        closed = bg.close_review(
            deps, user(deps, "sam"), view.review.id, ReviewVerdict.JUSTIFIED, "fine"
        )
        assert closed.closed_by == "sam"

    def test_closing_twice_conflicts(self, deps: Deps, used: BreakGlassView) -> None:
        """A closed review cannot be closed again (by anyone); one event only."""
        first = bg.close_review(
            deps, user(deps, "carol"), used.review.id, ReviewVerdict.JUSTIFIED, "ok"
        )
        with pytest.raises(Conflict):
            bg.close_review(
                deps, user(deps, "dave"), used.review.id, ReviewVerdict.UNJUSTIFIED, "not ok"
            )
        assert stored_reviews(deps) == [first]
        assert len(events(deps, "break_glass.review_closed")) == 1

    @pytest.mark.parametrize("comment", ["", "   "])
    def test_empty_comment_is_refused(self, deps: Deps, used: BreakGlassView, comment: str) -> None:
        """A verdict needs a comment; the review stays open."""
        with pytest.raises(InvalidInput):
            bg.close_review(
                deps, user(deps, "carol"), used.review.id, ReviewVerdict.JUSTIFIED, comment
            )
        assert stored_reviews(deps)[0].status is ReviewStatus.OPEN
        assert events(deps, "break_glass.review_closed") == []

    def test_overlong_comment_is_refused(self, deps: Deps, used: BreakGlassView) -> None:
        """Comments are bounded."""
        with pytest.raises(InvalidInput):
            bg.close_review(
                deps,
                user(deps, "carol"),
                used.review.id,
                ReviewVerdict.JUSTIFIED,
                "x" * (bg.COMMENT_MAX + 1),
            )
        assert stored_reviews(deps)[0].status is ReviewStatus.OPEN

    def test_list_reviews_visibility(self, deps: Deps, used: BreakGlassView) -> None:
        """The user, the reviewers and admins see it; other users do not."""
        for who in ("alice", "carol", "dave", "erin", "sam"):
            assert [r.id for r in bg.list_reviews(deps, user(deps, who))] == [used.review.id], who
        for who in ("bob", "mallory"):
            assert bg.list_reviews(deps, user(deps, who)) == [], who

    def test_list_reviews_open_only_and_all(
        self, deps: Deps, used: BreakGlassView, clock: FakeClock
    ) -> None:
        """Closed reviews leave the default list and stay in the full one, newest first."""
        clock.advance(timedelta(minutes=10))
        second = use_glass(deps, target="db-2").review
        bg.close_review(deps, user(deps, "carol"), used.review.id, ReviewVerdict.JUSTIFIED, "ok")
        sam = user(deps, "sam")
        assert [r.id for r in bg.list_reviews(deps, sam)] == [second.id]
        assert [r.id for r in bg.list_reviews(deps, sam, open_only=False)] == [
            second.id,
            used.review.id,
        ]


# overdue reviews and the report ----------------------------------------------------------------
class TestOverdue:
    """The worker alerts once per overdue review, driven by the injected clock."""

    def test_nothing_before_the_due_time(
        self, deps: Deps, used: BreakGlassView, clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """One second before due: no alert, no notification, no event."""
        clock.advance(DEADLINE - timedelta(seconds=1))
        before = actions(deps)
        assert bg.alert_overdue(deps) == []
        assert notifier.alerts == []
        assert notifier.sent("break_glass.review_overdue") == []
        assert actions(deps) == before

    def test_alerts_once_when_due(
        self, deps: Deps, used: BreakGlassView, clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """At the due time: an operational alert, a notification to the same people, an audit
        event; the review is marked so a second pass does nothing more."""
        clock.advance(DEADLINE)
        [marked] = bg.alert_overdue(deps)
        assert marked.id == used.review.id
        assert marked.overdue_alerted_at == clock.now()
        [(event, summary, details)] = notifier.alerts
        assert event == "break_glass_review_overdue"
        assert used.review.id in summary
        assert details == {"review_id": used.review.id, "due_at": format_time(used.review.due_at)}
        [sent] = notifier.sent("break_glass.review_overdue")
        assert recipient_ids(sent.recipients) == {"carol", "dave", "erin", "sam", SECURITY_MAIL}
        [audited] = events(deps, "break_glass.review_overdue")
        assert audited.actor == "system:worker"
        assert audited.subject["review_id"] == used.review.id
        assert stored_reviews(deps)[0].overdue_alerted_at == clock.now()

        clock.advance(timedelta(hours=1))
        before = actions(deps)
        assert bg.alert_overdue(deps) == []
        assert len(notifier.alerts) == 1
        assert len(notifier.sent("break_glass.review_overdue")) == 1
        assert actions(deps) == before

    def test_closed_review_never_alerts(
        self, deps: Deps, used: BreakGlassView, clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """Closed in time: no overdue alert later."""
        bg.close_review(deps, user(deps, "carol"), used.review.id, ReviewVerdict.JUSTIFIED, "ok")
        clock.advance(DEADLINE * 2)
        assert bg.alert_overdue(deps) == []
        assert notifier.alerts == []

    def test_closing_an_overdue_review_says_so(
        self, deps: Deps, used: BreakGlassView, clock: FakeClock
    ) -> None:
        """The close event records that the review was late."""
        clock.advance(DEADLINE + timedelta(minutes=1))
        bg.close_review(deps, user(deps, "sam"), used.review.id, ReviewVerdict.JUSTIFIED, "late")
        [event] = events(deps, "break_glass.review_closed")
        assert event.details["overdue"] is True

    def test_report_totals(self, deps: Deps, used: BreakGlassView, clock: FakeClock) -> None:
        """Uses by mode, open, overdue and closed by verdict."""
        clock.advance(timedelta(hours=1))
        second = use_glass(deps, target="db-2").review
        clock.advance(timedelta(minutes=1))
        third = use_glass(deps, target="db-2").review
        bg.close_review(deps, user(deps, "carol"), second.id, ReviewVerdict.JUSTIFIED, "ok")
        bg.close_review(deps, user(deps, "dave"), third.id, ReviewVerdict.UNJUSTIFIED, "no")
        sam = user(deps, "sam")
        totals = bg.report(deps, sam)["totals"]
        assert totals == {
            "uses": 3,
            "online": 3,
            "offline": 0,
            "open": 1,
            "overdue": 0,
            "justified": 1,
            "unjustified": 1,
        }
        clock.advance(DEADLINE)
        report = bg.report(deps, sam)
        assert report["totals"]["overdue"] == 1
        assert report["totals"]["open"] == 1
        assert [r.id for r in report["reviews"]] == [third.id, second.id, used.review.id]
        assert report["kit"] == {"state": "none"}

    @pytest.mark.parametrize("who", ["alice", "carol", "bob"])
    def test_report_is_for_admins_only(self, deps: Deps, used: BreakGlassView, who: str) -> None:
        """The user, a reviewer and another user are refused."""
        with pytest.raises(Forbidden):
            bg.report(deps, user(deps, who))


# the kit ---------------------------------------------------------------------------------------
class FakeDirectory(FakeProvider):
    """A fake ``ldap`` provider that also sets and checks passwords (DirectoryPasswords)."""

    def __init__(self, *, reads_back: bool = True) -> None:
        super().__init__("ldap")
        self.passwords: dict[str, str] = {}
        self.reads_back = reads_back

    def set_password(self, dn: str, password: str) -> None:
        """Replace the password."""
        self.calls.append(("set_password", dn))
        self.passwords[dn] = password

    def check_password(self, dn: str, password: str) -> bool:
        """A bind with it succeeds?"""
        return self.reads_back and self.passwords.get(dn) == password


EMERGENCY_DN = "uid=breakglass,ou=people,dc=example,dc=org"


def directory_deps(
    tmp_path: Path, clock: FakeClock, directory: FakeProvider, notifier: RecordingNotifier
) -> Deps:
    """The example configuration with its directory and a sealed emergency account."""
    data = directory_data(tmp_path)
    data["break_glass"]["directory_account"] = EMERGENCY_DN
    return fake_deps(
        data, clock, {"ssh": FakeProvider("ssh"), "ldap": directory}, notifier=notifier
    )


def rebuild(kit: KitInfo, mnemonics: list[str], *picks: int) -> bytes:
    """The master secret from the shares at ``picks``."""
    collector = ShareCollector(kit)
    for i in picks:
        collector.add(mnemonics[i])
    return collector.master_secret()


class TestKit:
    """create, rotate, status and the served CA lines."""

    def test_no_kit_yet(self, deps: Deps) -> None:
        """Before any kit: state none, no CA line served."""
        assert bg.kit_status(deps) == {"state": "none"}
        assert bg.served_ca_lines(deps) == []
        assert bg.kit_in_force(deps) is None

    def test_create_stores_the_public_part_and_returns_the_shares(
        self, deps: Deps, clock: FakeClock
    ) -> None:
        """The kit is stored and audited; its shares (returned, never stored) rebuild it."""
        kit, mnemonics = bg.create_kit(deps, "sam", threshold=2, shares=5)
        assert len(mnemonics) == 5
        assert len(set(mnemonics)) == 5
        assert stored_kits(deps) == [kit]
        assert bg.kit_in_force(deps) == kit
        assert bg.served_ca_lines(deps) == [kit.public_key]
        assert kit.public_key.endswith(f" keyturn-break-glass:{kit.id}")
        status = bg.kit_status(deps)
        assert status["state"] == "ready"
        assert (status["kit_id"], status["threshold"], status["shares"]) == (kit.id, 2, 5)
        assert status["spent_at"] is None
        [event] = events(deps, "break_glass.kit_created")
        assert event.actor == "sam"
        assert event.details["kit_id"] == kit.id
        assert event.details["sealed"] == []
        dumped = json.dumps([e.details for e in events(deps)])
        assert all(m not in dumped for m in mnemonics)
        assert all(m.split()[0] + " " + m.split()[1] not in repr(kit) for m in mnemonics)
        rebuild(kit, mnemonics, 3, 0)  # any two rebuild the kit's key (checked inside)

    def test_create_twice_conflicts(self, deps: Deps) -> None:
        """A second create is refused while a kit is in force; rotate replaces it."""
        kit, _ = bg.create_kit(deps, "sam", threshold=2, shares=5)
        with pytest.raises(Conflict, match="rotate"):
            bg.create_kit(deps, "sam", threshold=2, shares=5)
        assert stored_kits(deps) == [kit]
        assert len(events(deps, "break_glass.kit_created")) == 1

    def test_rotate_without_a_kit_conflicts(self, deps: Deps) -> None:
        """Nothing to rotate: refused, nothing stored."""
        with pytest.raises(Conflict, match="create"):
            bg.create_kit(deps, "sam", threshold=2, shares=5, rotate=True)
        assert stored_kits(deps) == []
        assert events(deps) == []

    @pytest.mark.parametrize(("threshold", "shares"), [(1, 5), (6, 5), (2, 17), (0, 0)])
    def test_bad_sizes_are_refused_before_anything_is_stored(
        self, deps: Deps, threshold: int, shares: int
    ) -> None:
        """Out-of-range threshold/shares: InvalidInput, no kit."""
        with pytest.raises(InvalidInput):
            bg.create_kit(deps, "sam", threshold=threshold, shares=shares)
        assert stored_kits(deps) == []
        assert events(deps) == []

    def test_rotate_retires_the_old_kit_and_its_ca_line(self, deps: Deps, clock: FakeClock) -> None:
        """After rotation only the new kit's line is served; the old one is retired."""
        old, _ = bg.create_kit(deps, "sam", threshold=2, shares=5)
        clock.advance(timedelta(days=1))
        new, mnemonics = bg.create_kit(deps, "sam", threshold=3, shares=4, rotate=True)
        assert new.id != old.id
        assert len(mnemonics) == 4
        assert bg.served_ca_lines(deps) == [new.public_key]
        assert old.public_key not in bg.served_ca_lines(deps)
        kits = {k.id: k for k in stored_kits(deps)}
        assert kits[old.id].retired_at == clock.now()
        assert kits[old.id].state == "retired"
        assert kits[new.id].retired_at is None
        assert [k.id for k in stored_kits(deps)] == [new.id, old.id]
        assert bg.kit_status(deps)["kit_id"] == new.id
        [event] = events(deps, "break_glass.kit_rotated")
        assert event.details["retired_kit_id"] == old.id
        assert event.details["retired_kit_spent"] is False

    def test_kit_status_none_ready_spent_ready(self, deps: Deps, clock: FakeClock) -> None:
        """none → ready (created) → spent (a use imported) → ready (rotated)."""
        assert bg.kit_status(deps)["state"] == "none"
        kit, mnemonics = bg.create_kit(deps, "sam", threshold=2, shares=5)
        assert bg.kit_status(deps)["state"] == "ready"
        result = offline_record(deps, kit, mnemonics)
        bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        status = bg.kit_status(deps)
        assert status["state"] == "spent"
        assert status["spent_by"] == result.record_id
        assert status["spent_at"] == format_time(clock.now())
        new, _ = bg.create_kit(deps, "sam", threshold=2, shares=5, rotate=True)
        assert bg.kit_status(deps)["kit_id"] == new.id
        assert bg.kit_status(deps)["state"] == "ready"
        [event] = events(deps, "break_glass.kit_rotated")
        assert event.details["retired_kit_spent"] is True

    def test_create_seals_a_new_directory_password(
        self, tmp_path: Path, clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """With directory_account set, a fresh password is set on the account and sealed; the
        shares open it; rotation sets another one."""
        directory = FakeDirectory()
        deps = directory_deps(tmp_path, clock, directory, notifier)
        kit, mnemonics = bg.create_kit(deps, "sam", threshold=2, shares=5)
        assert set(kit.sealed) == {SEALED_ACCOUNT}
        assert kit.sealed[SEALED_ACCOUNT]["dn"] == EMERGENCY_DN
        first = directory.passwords[EMERGENCY_DN]
        assert first not in json.dumps(kit.public_data())
        assert unseal(rebuild(kit, mnemonics, 0, 4), kit, SEALED_ACCOUNT) == first
        new, new_mnemonics = bg.create_kit(deps, "sam", threshold=2, shares=5, rotate=True)
        second = directory.passwords[EMERGENCY_DN]
        assert second != first
        assert unseal(rebuild(new, new_mnemonics, 1, 2), new, SEALED_ACCOUNT) == second
        assert events(deps, "break_glass.kit_rotated")[0].details["sealed"] == [SEALED_ACCOUNT]

    def test_a_directory_that_refuses_the_password_leaves_the_old_kit(
        self, tmp_path: Path, clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """The new password does not read back: ProviderError, the old kit stays in force."""
        directory = FakeDirectory()
        deps = directory_deps(tmp_path, clock, directory, notifier)
        old, _ = bg.create_kit(deps, "sam", threshold=2, shares=5)
        directory.reads_back = False
        with pytest.raises(ProviderError):
            bg.create_kit(deps, "sam", threshold=2, shares=5, rotate=True)
        assert stored_kits(deps) == [old]
        assert bg.kit_in_force(deps) == old
        assert events(deps, "break_glass.kit_rotated") == []

    def test_directory_account_without_a_password_capable_provider(
        self, tmp_path: Path, clock: FakeClock, notifier: RecordingNotifier
    ) -> None:
        """An ldap provider that cannot set passwords: ProviderError, nothing stored."""
        deps = directory_deps(tmp_path, clock, FakeProvider("ldap"), notifier)
        with pytest.raises(ProviderError):
            bg.create_kit(deps, "sam", threshold=2, shares=5)
        assert stored_kits(deps) == []
        assert events(deps) == []


# offline records -------------------------------------------------------------------------------
def offline_ask(**changes: Any) -> OfflineAsk:
    """Alice's offline ask for db-admin on db-1, with ``changes``."""
    fields: dict[str, Any] = {
        "role": "db-admin",
        "target": "db-1",
        "name": "alice",
        "justification": WHY,
        "ssh_public_key": KEY,
    } | changes
    return OfflineAsk(**fields)


def offline_record(
    deps: Deps,
    kit: KitInfo,
    mnemonics: list[str],
    *,
    now: datetime | None = None,
    **changes: Any,
) -> OfflineResult:
    """Sign offline as the CLI does: check the ask, collect two shares, sign."""
    checked = check_ask(deps.config, offline_ask(**changes))
    master = rebuild(kit, mnemonics, 1, 3)
    when = now if now is not None else deps.clock.now()
    return sign(deps.config, checked, master, now=when, kit=kit, host="laptop-7")


@pytest.fixture
def kit(deps: Deps) -> tuple[KitInfo, list[str]]:
    """A stored 2-of-5 kit and its shares."""
    return bg.create_kit(deps, "sam", threshold=2, shares=5)


class TestImport:
    """keyturn audit import: verify, audit, open the review, spend the kit -- once."""

    def test_a_signed_record_imports(
        self,
        deps: Deps,
        kit: tuple[KitInfo, list[str]],
        clock: FakeClock,
        notifier: RecordingNotifier,
    ) -> None:
        """The record is audited as is, the offline review opens, the kit is spent, people
        are told and an operational alert asks for rotation."""
        info, mnemonics = kit
        result = offline_record(deps, info, mnemonics)
        assert result.principals == ["db-admin@db-1"]
        assert result.key_id == f"break-glass:{result.record_id}:alice"
        assert result.not_after - clock.now() == CAP
        signed_at = clock.now()
        clock.advance(timedelta(hours=6))
        review = bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        assert review.mode is BreakGlassMode.OFFLINE
        assert review.status is ReviewStatus.OPEN
        assert (review.user_id, review.role, review.target) == ("alice", "db-admin", "db-1")
        assert (review.record_id, review.kit_id) == (result.record_id, info.id)
        assert review.used_at == signed_at  # when it was signed, not the skewed not_before
        assert review.opened_at == clock.now()
        assert review.due_at == clock.now() + DEADLINE
        assert review.imported_by == "sam"
        assert review.reviewers == ("carol", "dave", "erin")  # the importer never reviews it
        assert review.findings == ()
        assert stored_reviews(deps) == [review]
        [event] = events(deps, "break_glass.imported")
        assert event.actor == "sam"
        assert event.subject["record_id"] == result.record_id
        record = json.loads(result.record_text)
        assert event.details["record"] == record["record"]
        assert event.details["signature"] == record["signature"]
        assert event.details["review_id"] == review.id
        assert event.details["known_user"] is True
        assert event.details["kit_retired_before_use"] is False
        [stored_kit] = stored_kits(deps)
        assert (stored_kit.spent_at, stored_kit.spent_by) == (clock.now(), result.record_id)
        assert metric(deps, mode="offline") == 1
        assert [a[0] for a in notifier.alerts] == ["break_glass_kit_spent"]
        [sent] = notifier.sent("break_glass.used")
        assert recipient_ids(sent.recipients) == {"carol", "dave", "erin", "sam", SECURITY_MAIL}
        assert sent.data["mode"] == "offline"

    def test_reindented_record_still_imports(
        self, deps: Deps, kit: tuple[KitInfo, list[str]]
    ) -> None:
        """The signature covers the canonical form: layout changes do not matter."""
        result = offline_record(deps, *kit)
        compact = json.dumps(json.loads(result.record_text), separators=(",", ":"))
        review = bg.import_record(deps, user(deps, "sam"), compact.encode())
        assert review.record_id == result.record_id

    def test_replay_conflicts_without_a_second_event(
        self, deps: Deps, kit: tuple[KitInfo, list[str]], notifier: RecordingNotifier
    ) -> None:
        """The same record a second time: Conflict, no duplicate event, review or metric."""
        result = offline_record(deps, *kit)
        first = bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        before = actions(deps)
        with pytest.raises(Conflict, match=first.id):
            bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        assert actions(deps) == before
        assert len(events(deps, "break_glass.imported")) == 1
        assert stored_reviews(deps) == [first]
        assert metric(deps, mode="offline") == 1
        assert len(notifier.sent("break_glass.used")) == 1

    def assert_not_imported(self, deps: Deps, notifier: RecordingNotifier) -> None:
        assert events(deps, "break_glass.imported") == []
        assert stored_reviews(deps) == []
        assert all(k.spent_at is None for k in stored_kits(deps))
        assert metric(deps, mode="offline") == 0
        assert notifier.notifications == []
        assert notifier.alerts == []

    @pytest.mark.parametrize(
        ("old", "new"),
        [
            ('"target": "db-1"', '"target": "db-2"'),
            ('"name": "alice"', '"name": "alicf"'),
            ("INC-42", "INC-43"),
            ('"role": "db-admin"', '"role": "db-admiN"'),
        ],
    )
    def test_a_record_with_one_byte_changed_is_refused(
        self,
        deps: Deps,
        kit: tuple[KitInfo, list[str]],
        notifier: RecordingNotifier,
        old: str,
        new: str,
    ) -> None:
        """Changing one byte of a value breaks the signature: InvalidInput, nothing written."""
        text = offline_record(deps, *kit).record_text
        assert text.count(old) == 1
        edited = text.replace(old, new)
        assert len(edited) == len(text)
        assert sum(a != b for a, b in zip(edited, text, strict=True)) == 1
        with pytest.raises(InvalidInput, match="does not verify"):
            bg.import_record(deps, user(deps, "sam"), edited.encode())
        self.assert_not_imported(deps, notifier)

    def test_a_changed_signature_is_refused(
        self, deps: Deps, kit: tuple[KitInfo, list[str]], notifier: RecordingNotifier
    ) -> None:
        """Another signature (of the right length) does not verify."""
        document = json.loads(offline_record(deps, *kit).record_text)
        other = json.loads(offline_record(deps, *kit).record_text)
        document["signature"] = other["signature"]
        with pytest.raises(InvalidInput):
            bg.import_record(deps, user(deps, "sam"), json.dumps(document).encode())
        self.assert_not_imported(deps, notifier)

    def test_a_record_signed_in_the_future_is_refused(
        self,
        deps: Deps,
        kit: tuple[KitInfo, list[str]],
        clock: FakeClock,
        notifier: RecordingNotifier,
    ) -> None:
        """Signed (by the kit) with a clock a day ahead of Keyturn's: InvalidInput."""
        result = offline_record(deps, *kit, now=clock.now() + timedelta(days=1))
        with pytest.raises(InvalidInput, match="future"):
            bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        self.assert_not_imported(deps, notifier)

    def test_a_record_within_the_clock_skew_imports(
        self, deps: Deps, kit: tuple[KitInfo, list[str]], clock: FakeClock
    ) -> None:
        """A signer clock 30 s ahead (ssh_ca.clock_skew) is tolerated."""
        result = offline_record(deps, *kit, now=clock.now() + timedelta(seconds=30))
        review = bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        assert review.record_id == result.record_id

    def test_a_record_of_an_unknown_kit_is_refused(
        self,
        deps: Deps,
        kit: tuple[KitInfo, list[str]],
        clock: FakeClock,
        notifier: RecordingNotifier,
    ) -> None:
        """A kit this Keyturn never made (not in the store): InvalidInput naming it."""
        stranger, mnemonics = new_kit(threshold=2, shares=5, now=clock.now())
        result = offline_record(deps, stranger, mnemonics)
        with pytest.raises(InvalidInput, match=stranger.id):
            bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        self.assert_not_imported(deps, notifier)

    def test_a_record_naming_our_kit_but_signed_by_another_is_refused(
        self,
        deps: Deps,
        kit: tuple[KitInfo, list[str]],
        clock: FakeClock,
        notifier: RecordingNotifier,
    ) -> None:
        """A forger who re-signs a record under our kit id with their own key is refused."""
        ours, _ = kit
        stranger, mnemonics = new_kit(threshold=2, shares=5, now=clock.now())
        document = json.loads(offline_record(deps, stranger, mnemonics).record_text)
        record = document["record"] | {"kit_id": ours.id, "kit_fingerprint": ours.fingerprint}
        forged = sign_record(ca_key(rebuild(stranger, mnemonics, 0, 1)), record)
        with pytest.raises(InvalidInput, match="does not verify"):
            bg.import_record(deps, user(deps, "sam"), forged.encode())
        self.assert_not_imported(deps, notifier)

    @pytest.mark.parametrize("who", ["alice", "carol", "bob"])
    def test_non_admin_is_refused(
        self,
        deps: Deps,
        kit: tuple[KitInfo, list[str]],
        notifier: RecordingNotifier,
        who: str,
    ) -> None:
        """Only admins import: Forbidden, nothing written."""
        result = offline_record(deps, *kit)
        with pytest.raises(Forbidden):
            bg.import_record(deps, user(deps, who), result.record_text.encode())
        self.assert_not_imported(deps, notifier)

    @pytest.mark.parametrize(
        "raw",
        [
            b"",
            b"\xff\xfe\x00garbage",
            b"not json at all",
            b"[1, 2, 3]",
            b'{"record": {}, "signature": "AAAA"}',
            b'{"record": {"kit_id": "kit_0000000000000000"}, "signature": 7}',
            b'{"record": [], "signature": "AAAA"}',
            b'{"record": {}, "signature": "AAAA", "extra": 1}',
            b" " * (RECORD_MAX_BYTES + 1),
            b"[" * 60_000,
            b'{"record": {"x": ' + b"[" * 30_000 + b"]" * 30_000 + b'}, "signature": "AAAA"}',
        ],
        ids=[
            "empty",
            "binary",
            "not-json",
            "json-list",
            "no-kit-id",
            "signature-not-text",
            "record-not-object",
            "extra-key",
            "too-large",
            "nested-beyond-the-parser",
            "nested-inside-record",
        ],
    )
    def test_garbage_is_refused(
        self,
        deps: Deps,
        kit: tuple[KitInfo, list[str]],
        notifier: RecordingNotifier,
        raw: bytes,
    ) -> None:
        """Anything that is not a record: InvalidInput, nothing written."""
        with pytest.raises(InvalidInput):
            bg.import_record(deps, user(deps, "sam"), raw)
        self.assert_not_imported(deps, notifier)

    def test_nesting_limit_of_the_record_file(self) -> None:
        """Eight levels of lists and objects are read; a ninth is refused before parsing on."""
        at_limit = b'{"record": {"x": ' + b"[" * 6 + b"]" * 6 + b'}, "signature": "A"}'
        assert read_record(at_limit)[0] == {"x": [[[[[[]]]]]]}
        beyond = b'{"record": {"x": ' + b"[" * 7 + b"]" * 7 + b'}, "signature": "A"}'
        with pytest.raises(InvalidInput, match="nested too deeply"):
            read_record(beyond)

    def test_a_deeply_nested_record_naming_our_kit_is_refused(
        self, deps: Deps, kit: tuple[KitInfo, list[str]], notifier: RecordingNotifier
    ) -> None:
        """Nesting the JSON parser accepts but canonicalisation would recurse over (to a
        RecursionError, an HTTP 500) is refused as bad input."""
        depth = 990
        raw = (
            f'{{"record": {{"kit_id": "{kit[0].id}", "x": '.encode()
            + b"[" * depth
            + b"]" * depth
            + b'}, "signature": "AAAA"}'
        )
        with pytest.raises(InvalidInput, match="nested too deeply"):
            bg.import_record(deps, user(deps, "sam"), raw)
        self.assert_not_imported(deps, notifier)

    def test_a_record_of_an_unknown_user_imports_flagged(
        self, deps: Deps, kit: tuple[KitInfo, list[str]]
    ) -> None:
        """The offline command refuses a name outside the break-glass group, but a signer's
        edited configuration could let one through: the record still imports (it is
        evidence), flagged, and an alert goes out."""
        with pytest.raises(Forbidden, match="breakglass-db"):
            offline_record(deps, *kit, name="contractor-7")
        checked = dataclasses.replace(check_ask(deps.config, offline_ask()), name="contractor-7")
        master = rebuild(kit[0], kit[1], 1, 3)
        result = sign(deps.config, checked, master, now=deps.clock.now(), kit=kit[0])
        review = bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        assert review.user_id == "contractor-7"
        assert any("no member of break-glass group" in f for f in review.findings)
        assert any("principals" in f for f in review.findings) is False
        [event] = events(deps, "break_glass.imported")
        assert event.details["known_user"] is False
        assert event.details["findings"] == list(review.findings)

    def test_a_record_beyond_the_cap_and_other_principals_is_flagged(
        self, deps: Deps, kit: tuple[KitInfo, list[str]], notifier: RecordingNotifier
    ) -> None:
        """A signer's edited copy of the configuration (longer window, wider principals) is
        caught at import: findings on the review and in the event, an operational alert."""
        checked = check_ask(deps.config, offline_ask())
        wide = checked.role.model_copy(
            update={"ssh": checked.role.ssh.model_copy(update={"principals": ("root",)})}
        )
        checked = dataclasses.replace(checked, role=wide, duration=timedelta(days=3650))
        master = rebuild(kit[0], kit[1], 1, 3)
        result = sign(deps.config, checked, master, now=deps.clock.now(), kit=kit[0])
        review = bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        assert any("above the cap" in f for f in review.findings)
        assert any("principals root instead of db-admin@db-1" in f for f in review.findings)
        assert "break_glass_out_of_policy" in [a[0] for a in notifier.alerts]

    def test_the_importing_admin_cannot_close_the_review(
        self, deps: Deps, kit: tuple[KitInfo, list[str]]
    ) -> None:
        """An admin who imports a record (perhaps their own use under another name) never
        closes its review."""
        result = offline_record(deps, *kit)
        review = bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        with pytest.raises(Forbidden, match="you imported this record"):
            bg.close_review(deps, user(deps, "sam"), review.id, ReviewVerdict.JUSTIFIED, "fine")

    def test_offline_review_is_closed_by_a_reviewer_not_the_user(
        self, deps: Deps, kit: tuple[KitInfo, list[str]]
    ) -> None:
        """The same review rules apply to offline uses."""
        result = offline_record(deps, *kit)
        review = bg.import_record(deps, user(deps, "sam"), result.record_text.encode())
        with pytest.raises(Forbidden):
            bg.close_review(deps, user(deps, "alice"), review.id, ReviewVerdict.JUSTIFIED, "ok")
        closed = bg.close_review(
            deps, user(deps, "erin"), review.id, ReviewVerdict.JUSTIFIED, "outage INC-42"
        )
        assert closed.status is ReviewStatus.CLOSED
        totals = bg.report(deps, user(deps, "sam"))["totals"]
        assert (totals["offline"], totals["online"], totals["justified"]) == (1, 0, 1)


# shares ----------------------------------------------------------------------------------------
T0 = datetime(2026, 11, 17, 2, 45, tzinfo=UTC)


@pytest.fixture(scope="module")
def two_of_five() -> tuple[KitInfo, list[str]]:
    """A 2-of-5 kit (module-wide: made once)."""
    return new_kit(threshold=2, shares=5, now=T0)


def other_kit(than: KitInfo, threshold: int = 2, shares: int = 5) -> tuple[KitInfo, list[str]]:
    """Another kit whose SLIP-39 identifier differs from ``than``'s (15 random bits: retried in
    the rare case they collide, so the test is deterministic)."""
    while True:
        kit, mnemonics = new_kit(threshold=threshold, shares=shares, now=T0)
        if kit.identifier != than.identifier:
            return kit, mnemonics


def mistype(share: str, position: int) -> str:
    """The share with the word at ``position`` replaced by another valid SLIP-39 word."""
    words = share.split()
    words[position] = "academic" if words[position] != "academic" else "acid"
    return " ".join(words)


class TestShareCollector:
    """Shares are checked one by one; the threshold rebuilds the kit's key."""

    @pytest.mark.parametrize("picks", [(0, 1), (4, 2), (3, 0)])
    def test_two_of_five_rebuild_the_key(
        self, two_of_five: tuple[KitInfo, list[str]], picks: tuple[int, int]
    ) -> None:
        """Any two shares rebuild the same master; its CA key is the kit's."""
        kit, mnemonics = two_of_five
        collector = ShareCollector(kit)
        assert (collector.threshold, collector.count, collector.complete) == (2, 0, False)
        assert collector.add(mnemonics[picks[0]]) == "share accepted (1 of 2)"
        assert not collector.complete
        assert collector.add(mnemonics[picks[1]]) == "share accepted (2 of 2)"
        assert collector.complete
        master = collector.master_secret()
        assert kit_id_for(ca_key(master).public_key()) == kit.id
        assert rebuild(kit, mnemonics, 2, 3) == master

    def test_without_the_kit_description_the_first_share_sets_the_threshold(
        self, two_of_five: tuple[KitInfo, list[str]]
    ) -> None:
        """With no kit file, two shares still rebuild the key."""
        kit, mnemonics = two_of_five
        collector = ShareCollector()
        assert collector.threshold is None
        collector.add(mnemonics[0])
        assert collector.threshold == 2
        collector.add(mnemonics[1])
        assert collector.master_secret() == rebuild(kit, mnemonics, 0, 1)

    def test_one_share_is_not_enough(self, two_of_five: tuple[KitInfo, list[str]]) -> None:
        """Below the threshold: master_secret refuses."""
        kit, mnemonics = two_of_five
        collector = ShareCollector(kit)
        collector.add(mnemonics[0])
        with pytest.raises(InvalidInput, match="only 1 of the 2"):
            collector.master_secret()

    def test_no_share_is_not_enough(self, two_of_five: tuple[KitInfo, list[str]]) -> None:
        """Nothing given (with or without a kit): refused."""
        with pytest.raises(InvalidInput):
            ShareCollector(two_of_five[0]).master_secret()
        with pytest.raises(InvalidInput):
            ShareCollector().master_secret()

    def test_the_same_share_twice_counts_once(self, two_of_five: tuple[KitInfo, list[str]]) -> None:
        """A repeated share does not reach the threshold."""
        kit, mnemonics = two_of_five
        collector = ShareCollector(kit)
        collector.add(mnemonics[2])
        assert "already given" in collector.add(mnemonics[2])
        assert "already given" in collector.add("  " + mnemonics[2].upper() + "\n")
        assert collector.count == 1
        assert not collector.complete
        with pytest.raises(InvalidInput):
            collector.master_secret()

    @pytest.mark.parametrize("with_kit", [True, False], ids=["with-kit", "without-kit"])
    def test_a_share_of_another_kit_is_refused(
        self, two_of_five: tuple[KitInfo, list[str]], with_kit: bool
    ) -> None:
        """Mixing two kits is refused at once; the collected share stays alone."""
        kit, mnemonics = two_of_five
        _, foreign = other_kit(kit)
        collector = ShareCollector(kit if with_kit else None)
        collector.add(mnemonics[0])
        with pytest.raises(InvalidInput, match="another kit"):
            collector.add(foreign[1])
        assert collector.count == 1
        with pytest.raises(InvalidInput):
            collector.master_secret()

    def test_a_foreign_first_share_is_refused_with_the_kit(
        self, two_of_five: tuple[KitInfo, list[str]]
    ) -> None:
        """With the kit description even the first share must be the kit's."""
        kit, _ = two_of_five
        _, foreign = other_kit(kit)
        collector = ShareCollector(kit)
        with pytest.raises(InvalidInput, match="another kit"):
            collector.add(foreign[0])
        assert collector.count == 0

    def test_a_share_with_another_threshold_is_refused(
        self, two_of_five: tuple[KitInfo, list[str]]
    ) -> None:
        """Without a kit file, a later share of a 3-of-5 kit is refused after a 2-of-5 one."""
        kit, mnemonics = two_of_five
        _, foreign = other_kit(kit, threshold=3)
        collector = ShareCollector()
        collector.add(mnemonics[0])
        with pytest.raises(InvalidInput, match="another kit"):
            collector.add(foreign[0])

    @pytest.mark.parametrize("position", [0, 5, 12, -1])
    def test_a_mistyped_word_is_refused(
        self, two_of_five: tuple[KitInfo, list[str]], position: int
    ) -> None:
        """One wrong (but valid) word fails the checksum; nothing is kept."""
        kit, mnemonics = two_of_five
        collector = ShareCollector(kit)
        with pytest.raises(InvalidInput, match="mistyped"):
            collector.add(mistype(mnemonics[0], position))
        assert collector.count == 0

    @pytest.mark.parametrize(
        "typed",
        ["", "   \n", "hello world", "academic " * 3],
        ids=["empty", "blank", "not-words", "too-short"],
    )
    def test_not_a_share_is_refused(
        self, two_of_five: tuple[KitInfo, list[str]], typed: str
    ) -> None:
        """Empty input, unknown words or too few words are refused."""
        collector = ShareCollector(two_of_five[0])
        with pytest.raises(InvalidInput):
            collector.add(typed)
        assert collector.count == 0

    def test_a_missing_word_is_refused(self, two_of_five: tuple[KitInfo, list[str]]) -> None:
        """A share with one word left out."""
        kit, mnemonics = two_of_five
        words = mnemonics[0].split()
        with pytest.raises(InvalidInput):
            ShareCollector(kit).add(" ".join(words[:7] + words[8:]))

    def test_whitespace_and_case_do_not_matter(
        self, two_of_five: tuple[KitInfo, list[str]]
    ) -> None:
        """Upper case, tabs, several spaces and line breaks (as copied from paper) are fine."""
        kit, mnemonics = two_of_five
        first = "\n  " + "\t".join(mnemonics[0].upper().split()) + "  \n"
        words = mnemonics[3].split()
        second = "  ".join(words[:10]) + "\n" + " ".join(w.capitalize() for w in words[10:])
        collector = ShareCollector(kit)
        collector.add(first)
        collector.add(second)
        assert collector.master_secret() == rebuild(kit, mnemonics, 0, 3)

    def test_a_kit_description_that_does_not_match_the_shares(
        self, two_of_five: tuple[KitInfo, list[str]]
    ) -> None:
        """Shares whose identifier matches but whose key is not the kit's are refused."""
        kit, mnemonics = two_of_five
        other, _ = other_kit(kit)
        lying = dataclasses.replace(other, identifier=kit.identifier)
        collector = ShareCollector(lying)
        collector.add(mnemonics[0])
        collector.add(mnemonics[1])
        with pytest.raises(InvalidInput, match="not kit"):
            collector.master_secret()


class TestNewKit:
    """Kit sizes and the kit file."""

    @pytest.mark.parametrize(
        ("threshold", "shares", "field"),
        [
            (1, 5, "threshold"),
            (1, 2, "threshold"),
            (6, 5, "threshold"),
            (0, 5, "threshold"),
            (2, MAX_SHARES + 1, "shares"),
            (2, 0, "shares"),
        ],
    )
    def test_sizes_out_of_range_are_refused(self, threshold: int, shares: int, field: str) -> None:
        """1 ≤ threshold ≤ shares ≤ 16, and no threshold of 1 with several shares."""
        with pytest.raises(InvalidInput) as caught:
            new_kit(threshold=threshold, shares=shares, now=T0)
        assert caught.value.details["field"] == field

    def test_largest_kit_is_made(self) -> None:
        """16 shares, threshold 16: the SLIP-39 maximum."""
        kit, mnemonics = new_kit(threshold=MAX_SHARES, shares=MAX_SHARES, now=T0)
        assert (kit.threshold, kit.shares, len(mnemonics)) == (16, 16, 16)

    def test_kit_file_round_trips(self) -> None:
        """kit_from_public_data(public_data()) gives the kit back, field for field, even when
        it was made at a time with microseconds (the file keeps whole seconds)."""
        kit, _ = new_kit(threshold=2, shares=3, now=T0 + timedelta(microseconds=123456))
        assert kit_from_public_data(json.loads(json.dumps(kit.public_data()))) == kit

    @pytest.mark.parametrize(
        "data",
        [None, [], {"version": 2}, {"version": 1}, {"version": 1, "kit_id": "x"}],
        ids=["none", "list", "version-2", "empty", "partial"],
    )
    def test_not_a_kit_file(self, data: object) -> None:
        """Garbled kit files are refused."""
        with pytest.raises(InvalidInput):
            kit_from_public_data(data)

    def test_malformed_kit_id_in_the_file(self) -> None:
        """A kit file whose id is not kit_<16 hex> is refused."""
        kit, _ = new_kit(threshold=2, shares=3, now=T0)
        with pytest.raises(InvalidInput):
            kit_from_public_data(kit.public_data() | {"kit_id": "kit_../../etc"})


class TestSealedSecret:
    """A secret sealed with the kit opens only with its shares."""

    def test_seal_and_unseal(self) -> None:
        """The shares open the sealed password; it is not in the kit file in clear."""
        secret = "correct horse battery staple"
        kit, mnemonics = new_kit(
            threshold=2, shares=5, now=T0, sealed={SEALED_ACCOUNT: (EMERGENCY_DN, secret)}
        )
        assert secret not in json.dumps(kit.public_data())
        assert kit.sealed[SEALED_ACCOUNT]["dn"] == EMERGENCY_DN
        assert unseal(rebuild(kit, mnemonics, 2, 4), kit, SEALED_ACCOUNT) == secret

    def test_another_kits_shares_do_not_open_it(self) -> None:
        """The master of another kit: InvalidInput."""
        kit, _ = new_kit(
            threshold=2, shares=5, now=T0, sealed={SEALED_ACCOUNT: (EMERGENCY_DN, "s")}
        )
        other, foreign = other_kit(kit)
        with pytest.raises(InvalidInput, match="does not open"):
            unseal(rebuild(other, foreign, 0, 1), kit, SEALED_ACCOUNT)

    def test_a_sealed_secret_moved_to_another_kit_does_not_open(self) -> None:
        """The kit id is bound into the seal (AES-GCM associated data)."""
        kit, mnemonics = new_kit(
            threshold=2, shares=5, now=T0, sealed={SEALED_ACCOUNT: (EMERGENCY_DN, "s")}
        )
        moved = dataclasses.replace(kit, id="kit_0123456789abcdef")
        with pytest.raises(InvalidInput):
            unseal(rebuild(kit, mnemonics, 0, 1), moved, SEALED_ACCOUNT)

    def test_no_such_sealed_secret(self) -> None:
        """A kit without a sealed secret."""
        kit, mnemonics = new_kit(threshold=2, shares=5, now=T0)
        with pytest.raises(InvalidInput, match="holds no sealed"):
            unseal(rebuild(kit, mnemonics, 0, 1), kit, SEALED_ACCOUNT)


# offline ask checks ----------------------------------------------------------------------------
class TestOfflineCheckAsk:
    """Everything is checked before any share is asked for."""

    @pytest.fixture
    def config(self, data: dict[str, Any]) -> KeyturnConfig:
        return load(data).config

    def refused(self, config: KeyturnConfig, field: str, **changes: Any) -> InvalidInput:
        with pytest.raises(InvalidInput) as caught:
            check_ask(config, offline_ask(**changes))
        assert caught.value.details.get("field") == field
        return caught.value

    def test_a_good_ask_passes(self, config: KeyturnConfig) -> None:
        """Defaults to the cap; the name and key are trimmed."""
        checked = check_ask(config, offline_ask(name="  alice ", ssh_public_key=f" {KEY}\n"))
        assert (checked.role.name, checked.target.name, checked.name) == (
            "db-admin",
            "db-1",
            "alice",
        )
        assert checked.duration == CAP
        assert checked.ssh_public_key == KEY

    def test_role_without_break_glass(self, config: KeyturnConfig) -> None:
        """server-admin has no break-glass configuration."""
        self.refused(config, "role", role="server-admin")

    def test_unknown_role(self, config: KeyturnConfig) -> None:
        """Not configured."""
        self.refused(config, "role", role="nope")

    def test_unknown_target(self, config: KeyturnConfig) -> None:
        """Not configured."""
        self.refused(config, "target", target="db-9")

    def test_ldap_role(self, tmp_path: Path) -> None:
        """A directory role (even with break-glass configured) signs no SSH certificate."""
        data = directory_data(tmp_path)
        role_entry(data, "db-admins")["break_glass"] = {"group": "breakglass-db"}
        config = load(data).config
        error = self.refused(config, "role", role="db-admins", target="corp-directory")
        assert "not an SSH role" in error.message

    @pytest.mark.parametrize(
        "name", ["", "   ", "alice smith", "../alice", "alice:root", "a" * 64, "-alice"]
    )
    def test_bad_name(self, config: KeyturnConfig, name: str) -> None:
        """--name must be a plain name (it goes into the certificate's key id)."""
        self.refused(config, "name", name=name)

    def test_duration_above_the_cap(self, config: KeyturnConfig) -> None:
        """Above roles[].break_glass.max_duration."""
        self.refused(config, "duration", duration=CAP + timedelta(seconds=1))

    def test_zero_duration(self, config: KeyturnConfig) -> None:
        """Not positive."""
        self.refused(config, "duration", duration=timedelta(0))

    def test_short_justification(self, config: KeyturnConfig) -> None:
        """Below the minimum length."""
        self.refused(config, "justification", justification="db down")

    def test_empty_justification(self, config: KeyturnConfig) -> None:
        """Missing."""
        self.refused(config, "justification", justification="")

    @pytest.mark.parametrize(
        "key",
        ["", "ssh-ed25519 AAAA", "not a key", KEY.replace("ssh-ed25519", "ssh-rsa")],
        ids=["empty", "truncated", "garbage", "wrong-type-name"],
    )
    def test_bad_key(self, config: KeyturnConfig, key: str) -> None:
        """The public key must parse."""
        with pytest.raises(InvalidInput):
            check_ask(config, offline_ask(ssh_public_key=key))


# configuration ---------------------------------------------------------------------------------
class TestBreakGlassConfig:
    """parse_config refuses a bad break-glass configuration, naming the key path."""

    def refused(self, data: dict[str, Any], path: str) -> ConfigError:
        with pytest.raises(ConfigError) as caught:
            load(data)
        assert caught.value.details["path"] == path
        assert path in caught.value.message
        return caught.value

    def test_example_is_valid(self, data: dict[str, Any]) -> None:
        """The example configuration loads with db-admin's break-glass settings."""
        config = load(data).config
        role = config.role("db-admin")
        assert role is not None
        assert role.break_glass is not None
        assert (role.break_glass.group, role.break_glass.max_duration) == ("breakglass-db", CAP)
        assert config.break_glass.security_contacts == ("sam", SECURITY_MAIL)
        assert config.break_glass.review_deadline == DEADLINE

    def test_break_glass_group_no_user_is_in(self, data: dict[str, Any]) -> None:
        """A group nobody belongs to would make break-glass impossible."""
        role_entry(data, "db-admin")["break_glass"]["group"] = "nobody-here"
        i = role_index(data, "db-admin")
        self.refused(data, f"roles[{i}].break_glass.group")

    def test_max_duration_above_the_role_maximum(self, data: dict[str, Any]) -> None:
        """The cap is never more than the role's max_duration (PT4H)."""
        role_entry(data, "db-admin")["break_glass"]["max_duration"] = "PT5H"
        i = role_index(data, "db-admin")
        self.refused(data, f"roles[{i}].break_glass.max_duration")

    def test_zero_max_duration(self, data: dict[str, Any]) -> None:
        """A cap of zero would grant nothing."""
        role_entry(data, "db-admin")["break_glass"]["max_duration"] = "PT0S"
        i = role_index(data, "db-admin")
        self.refused(data, f"roles[{i}].break_glass.max_duration")

    def test_max_duration_defaults_to_one_hour(self, data: dict[str, Any]) -> None:
        """Without max_duration the cap is 1 hour."""
        del role_entry(data, "db-admin")["break_glass"]["max_duration"]
        role = load(data).config.role("db-admin")
        assert role is not None
        assert role.break_glass is not None
        assert role.break_glass.max_duration == timedelta(hours=1)

    def test_unknown_security_contact_id(self, data: dict[str, Any]) -> None:
        """A contact that is neither a user id nor an e-mail address."""
        data["break_glass"]["security_contacts"] = ["sam", "nobody"]
        self.refused(data, "break_glass.security_contacts[1]")

    def test_directory_account_without_ldap(self, data: dict[str, Any]) -> None:
        """A sealed directory account needs the ldap section."""
        assert "ldap" not in data
        data["break_glass"]["directory_account"] = EMERGENCY_DN
        self.refused(data, "break_glass.directory_account")

    def test_directory_account_with_ldap_is_valid(self, tmp_path: Path) -> None:
        """With the ldap section it loads."""
        data = directory_data(tmp_path)
        data["break_glass"]["directory_account"] = EMERGENCY_DN
        assert load(data).config.break_glass.directory_account == EMERGENCY_DN

    def test_zero_review_deadline(self, data: dict[str, Any]) -> None:
        """A review due at once is refused."""
        data["break_glass"]["review_deadline"] = "PT0S"
        self.refused(data, "break_glass.review_deadline")

    def test_unknown_key_in_role_break_glass(self, data: dict[str, Any]) -> None:
        """Typos are refused (strict models)."""
        role_entry(data, "db-admin")["break_glass"]["max_duraton"] = "PT1H"
        with pytest.raises(ConfigError):
            load(data)
