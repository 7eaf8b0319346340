"""Reconciliation of managed groups with grants, and the standing-access report, with fakes."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from keyturn.domain.errors import Forbidden, ProviderError
from keyturn.domain.model import Grant, GrantStatus, StandingSnapshot
from keyturn.service import access, grants, standing
from keyturn.service.access import RequestInput
from keyturn.service.deps import Deps
from keyturn.service.standing import Finding
from keyturn.testing import FakeClock, FakeProvider, RecordingNotifier
from tests.conftest import SHARED_GROUPS, directory_data, directory_deps, events, user

SHARED = SHARED_GROUPS
DB, APPS = SHARED["db-admins"], SHARED["app-deployer"]


@pytest.fixture
def ldap() -> FakeProvider:
    """The fake directory: one shared group per directory role; users appear under their id."""
    return FakeProvider("ldap", shared=SHARED)


@pytest.fixture
def deps(tmp_path: Path, clock: FakeClock, ldap: FakeProvider) -> Deps:
    """Services wired with fakes, directory roles included."""
    return directory_deps(directory_data(tmp_path), clock, ldap, RecordingNotifier())


def ask(deps: Deps, who: str, role: str = "db-admins") -> Grant:
    view = access.request_access(
        deps,
        user(deps, who),
        RequestInput(role, "corp-directory", timedelta(minutes=30), "schema migration"),
    )
    assert view.grant is not None
    assert view.grant.status is GrantStatus.ACTIVE
    return view.grant


def snapshots(deps: Deps) -> list[StandingSnapshot]:
    with deps.store.transaction() as tx:
        return tx.standing_snapshots()


def brief(findings: list[Finding]) -> list[tuple[str, str, str, str]]:
    return [(f.kind, f.privilege, f.identity, f.action) for f in findings]


def drifted(deps: Deps, ldap: FakeProvider) -> None:
    """One of each: standing (report group), standing (enforce group), lingering, missing."""
    ldap.enforce[APPS] = True
    ldap.held |= {("bob", DB), ("mallory", APPS)}
    ended = ask(deps, "alice")
    grants.release(deps, user(deps, "alice"), ended.id)
    ldap.held.add(("alice", DB))  # the removal was undone by hand
    ask(deps, "dave")
    ldap.held.discard(("dave", DB))  # removed by hand while the grant is live


def test_member_without_a_grant_is_reported_as_standing_and_kept(
    deps: Deps, ldap: FakeProvider
) -> None:
    """Report mode: bob's membership is a standing finding, reported, still there."""
    ldap.held.add(("bob", DB))
    report = standing.reconcile(deps)
    assert report.findings == [Finding("standing", "ldap", DB, "bob", "bob", "reported")]
    assert ("bob", DB) in ldap.held
    assert report.standing == {APPS: 0, DB: 1}
    assert report.errors == []


def test_standing_member_is_removed_in_enforce_mode(deps: Deps, ldap: FakeProvider) -> None:
    """Enforce mode: bob's membership without a grant is removed."""
    ldap.held.add(("bob", DB))
    ldap.enforce[DB] = True
    report = standing.reconcile(deps)
    assert brief(report.findings) == [("standing", DB, "bob", "removed")]
    assert ("bob", DB) not in ldap.held


def test_allowlisted_member_is_no_finding(deps: Deps, ldap: FakeProvider) -> None:
    """A service account on the allowlist holds the group without a grant, even in enforce."""
    ldap.held.add(("svc-backup", DB))
    ldap.allowed[DB] = frozenset({"svc-backup"})
    ldap.enforce[DB] = True
    report = standing.reconcile(deps)
    assert report.findings == []
    assert ("svc-backup", DB) in ldap.held
    assert report.standing[DB] == 0


def test_member_with_a_live_grant_is_no_finding(deps: Deps, ldap: FakeProvider) -> None:
    """alice holds the group through her active grant: nothing to report."""
    ask(deps, "alice")
    ldap.enforce[DB] = True
    report = standing.reconcile(deps)
    assert report.findings == []
    assert ("alice", DB) in ldap.held


def test_holder_unknown_to_keyturn_is_standing_without_a_user(
    deps: Deps, ldap: FakeProvider
) -> None:
    """An identity that is no configured user is standing, with no user id."""
    ldap.held.add(("legacy-admin", DB))
    [finding] = standing.reconcile(deps).findings
    assert (finding.kind, finding.identity, finding.user_id) == ("standing", "legacy-admin", None)
    [event] = events(deps, "reconcile.finding")
    assert "user_id" not in event.subject


def test_member_whose_grant_ended_is_lingering_and_removed_even_in_report_mode(
    deps: Deps, ldap: FakeProvider
) -> None:
    """alice's grant was revoked but she is back in the group: lingering, removed."""
    grant = ask(deps, "alice")
    grants.release(deps, user(deps, "alice"), grant.id)
    ldap.held.add(("alice", DB))
    report = standing.reconcile(deps)
    assert report.findings == [Finding("lingering", "ldap", DB, "alice", "alice", "removed")]
    assert ("alice", DB) not in ldap.held
    assert report.standing[DB] == 0


def test_membership_of_a_stuck_revocation_is_removed_as_lingering(
    deps: Deps, clock: FakeClock, ldap: FakeProvider
) -> None:
    """A revoke_failed grant's membership is lingering; the next retry finds it already gone."""
    grant = ask(deps, "alice")
    ldap.revoke_is_silent = True
    failed = grants.release(deps, user(deps, "alice"), grant.id)
    assert failed.status is GrantStatus.REVOKE_FAILED
    ldap.revoke_is_silent = False
    assert brief(standing.reconcile(deps).findings) == [("lingering", DB, "alice", "removed")]
    assert failed.retry_at is not None
    clock.set(failed.retry_at)
    [done] = grants.resume_unfinished(deps)
    assert done.status is GrantStatus.REVOKED
    assert events(deps, "grant.released")[-1].details["already_gone"] is True


def test_active_grant_whose_membership_vanished_is_restored(deps: Deps, ldap: FakeProvider) -> None:
    """Someone removed alice by hand while her grant is live: missing, restored."""
    grant = ask(deps, "alice")
    ldap.held.discard(("alice", DB))
    report = standing.reconcile(deps)
    assert report.findings == [Finding("missing", "ldap", DB, "alice", "alice", "restored")]
    assert ldap.holds(grant)


def test_grant_past_its_window_is_not_restored(
    deps: Deps, clock: FakeClock, ldap: FakeProvider
) -> None:
    """A grant whose not_after has passed (row still active) does not get its group back."""
    grant = ask(deps, "alice")
    ldap.held.discard(("alice", DB))
    clock.set(grant.not_after + timedelta(seconds=1))
    standing.reconcile(deps)
    assert ("alice", DB) not in ldap.held


def test_dry_run_reports_the_same_findings_and_changes_nothing(
    deps: Deps, ldap: FakeProvider
) -> None:
    """Dry run: would remove / would restore, held unchanged, no events, no snapshots."""
    drifted(deps, ldap)
    held, before = set(ldap.held), len(events(deps))
    dry = standing.reconcile(deps, dry_run=True)
    assert dry.dry_run
    assert brief(dry.findings) == [
        ("standing", APPS, "mallory", "would remove"),
        ("lingering", DB, "alice", "would remove"),
        ("standing", DB, "bob", "reported"),
        ("missing", DB, "dave", "would restore"),
    ]
    assert ldap.held == held
    assert len(events(deps)) == before
    assert snapshots(deps) == []
    assert (
        deps.metrics.registry.get_sample_value(
            "keyturn_standing_privileges", {"provider": "ldap", "privilege": DB}
        )
        is None
    )
    real = standing.reconcile(deps)
    done = {"would remove": "removed", "would restore": "restored", "reported": "reported"}
    assert brief(real.findings) == [(k, p, i, done[a]) for k, p, i, a in brief(dry.findings)]
    assert real.standing == dry.standing == {APPS: 1, DB: 1}


def test_each_finding_is_an_audit_event(deps: Deps, ldap: FakeProvider) -> None:
    """One reconcile.finding per finding, with kind, provider and the action taken."""
    drifted(deps, ldap)
    report = standing.reconcile(deps, actor="sam")
    recorded = events(deps, "reconcile.finding")
    assert [(e.subject["identity"], e.subject["privilege"], e.details) for e in recorded] == [
        (f.identity, f.privilege, {"kind": f.kind, "provider": "ldap", "action": f.action})
        for f in report.findings
    ]
    assert {e.actor for e in recorded} == {"sam"}
    assert [e.subject["user_id"] for e in recorded] == ["mallory", "alice", "bob", "dave"]


def test_snapshot_per_privilege_lists_the_standing_members(
    deps: Deps, clock: FakeClock, ldap: FakeProvider
) -> None:
    """Each run stores one snapshot per managed group with its standing members only."""
    drifted(deps, ldap)
    standing.reconcile(deps)
    assert snapshots(deps) == [
        StandingSnapshot(clock.now(), "ldap", APPS, ("mallory",)),
        StandingSnapshot(clock.now(), "ldap", DB, ("bob",)),
    ]


def test_metrics_report_standing_members_and_findings(deps: Deps, ldap: FakeProvider) -> None:
    """keyturn_standing_privileges per group; findings counted by kind."""
    drifted(deps, ldap)
    standing.reconcile(deps)
    get = deps.metrics.registry.get_sample_value
    assert get("keyturn_standing_privileges", {"provider": "ldap", "privilege": DB}) == 1
    assert get("keyturn_standing_privileges", {"provider": "ldap", "privilege": APPS}) == 1
    for kind, count in (("standing", 2), ("lingering", 1), ("missing", 1)):
        labels = {"provider": "ldap", "kind": kind}
        assert get("keyturn_reconciliation_findings_total", labels) == count


def test_standing_report_gives_admins_the_latest_and_the_history(
    deps: Deps, clock: FakeClock, ldap: FakeProvider
) -> None:
    """Two runs an hour apart: latest per group, every count over time, since filters."""
    first = clock.now()
    ldap.held.add(("bob", DB))
    standing.reconcile(deps)
    clock.advance(timedelta(hours=1))
    ldap.held.add(("mallory", DB))
    standing.reconcile(deps)
    report = standing.standing_report(deps, user(deps, "sam"))
    assert [(s.privilege, s.taken_at, s.members) for s in report.latest] == [
        (APPS, clock.now(), ()),
        (DB, clock.now(), ("bob", "mallory")),
    ]
    assert report.history == [
        (first, APPS, 0),
        (first, DB, 1),
        (clock.now(), APPS, 0),
        (clock.now(), DB, 2),
    ]
    recent = standing.standing_report(deps, user(deps, "sam"), since=clock.now())
    assert [h[0] for h in recent.history] == [clock.now(), clock.now()]


@pytest.mark.parametrize("viewer", ["alice", "bob", "carol", "mallory"])
def test_standing_report_is_for_admins_only(deps: Deps, viewer: str) -> None:
    """Non-admins are refused."""
    with pytest.raises(Forbidden, match="admin"):
        standing.standing_report(deps, user(deps, viewer))


def test_unreachable_provider_is_an_error_and_nothing_is_removed(
    deps: Deps, ldap: FakeProvider
) -> None:
    """The directory is down: an error entry, no findings, no removal, no snapshot."""
    ldap.held.add(("bob", DB))
    ldap.enforce[DB] = True
    ldap.down = True
    report = standing.reconcile(deps)
    assert report.errors == ["ldap: fake provider: cannot reach the system"]
    assert report.findings == []
    assert ("bob", DB) in ldap.held
    assert snapshots(deps) == []
    assert events(deps, "reconcile.finding") == []


def test_failed_removal_is_recorded_as_such(deps: Deps, ldap: FakeProvider) -> None:
    """The group is readable but the removal fails: the finding says so, membership stays."""

    class ReadOnly(FakeProvider):
        def remove_holder(self, privilege: str, identity: str) -> bool:
            raise ProviderError("insufficient access rights", retryable=False)

    readonly = ReadOnly("ldap", shared=SHARED)
    readonly.held.add(("bob", DB))
    readonly.enforce[DB] = True
    deps.providers["ldap"] = readonly
    [finding] = standing.reconcile(deps).findings
    assert finding.action == "failed: insufficient access rights"
    assert ("bob", DB) in readonly.held
    [event] = events(deps, "reconcile.finding")
    assert event.details["action"] == finding.action
