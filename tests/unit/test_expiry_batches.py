"""The expiry pass commits revocation outcomes in batches: what must not change with that.

The fakes run the real service code with an executor (the worker's revocation threads), so the
group commit, the handoff of late outcomes and the lease checks are exercised as in the worker.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from keyturn.domain.model import Grant, GrantStatus
from keyturn.service import grants
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider
from tests.conftest import events
from tests.unit.test_lifecycle import ask


@pytest.fixture
def threaded(deps: Deps) -> Iterator[Deps]:
    """The fake deps with revocation threads, as the worker has them."""
    pool = ThreadPoolExecutor(4, thread_name_prefix="test-revoke")
    yield dataclasses.replace(deps, executor=pool)
    pool.shutdown(wait=True)


def test_a_burst_is_revoked_once_each_with_one_event_each(
    threaded: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """Twenty grants due at once: each revoked and verified once, one grant.expired each."""
    made = [ask(threaded, who, duration=timedelta(seconds=20)).grant for who in ("alice", "bob")]
    made += [ask(threaded, "alice", target="db-2", duration=timedelta(seconds=20)).grant]
    assert all(g is not None for g in made)
    clock.advance(timedelta(seconds=21))
    done = grants.expire_due(threaded)
    assert sorted(g.id for g in done) == sorted(g.id for g in made if g is not None)
    assert all(g.status is GrantStatus.REVOKED for g in done)
    expired = [e.subject["grant_id"] for e in events(threaded, "grant.expired")]
    assert sorted(expired) == sorted(g.id for g in done)
    assert [c for c in provider.calls if c[0] == "revoke"] == [
        ("revoke", g.id) for g in done if ("revoke", g.id) in provider.calls
    ]
    assert len([c for c in provider.calls if c[0] == "revoke"]) == len(done)
    assert not threaded.in_flight


def test_a_late_outcome_commits_itself_and_leaves_in_flight(
    threaded: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """A provider call that outlasts the pass: the pass returns without it; when the call
    returns, its outcome is committed (verified, one event) and the grant leaves in_flight."""
    grant = ask(threaded, "alice", duration=timedelta(seconds=20)).grant
    assert grant is not None
    release = threading.Event()
    real_revoke = provider.revoke

    def slow(g: Grant, now: datetime) -> bool:
        release.wait(10)
        return real_revoke(g, now)

    provider.revoke = slow  # type: ignore[method-assign]
    config = threaded.config.model_copy(
        update={
            "server": threaded.config.server.model_copy(
                update={"worker_max_sleep": timedelta(milliseconds=100)}
            )
        }
    )
    late = dataclasses.replace(threaded, config=config)
    clock.advance(timedelta(seconds=21))
    assert grants.expire_due(late) == []
    assert grant.id in late.in_flight
    release.set()
    late.executor.shutdown(wait=True)  # type: ignore[union-attr]
    with late.store.transaction() as tx:
        assert tx.get_grant(grant.id).status is GrantStatus.REVOKED
    assert [e.subject["grant_id"] for e in events(late, "grant.expired")] == [grant.id]
    assert grant.id not in late.in_flight


def test_a_retry_taken_over_by_another_instance_is_not_revoked_again(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """A revoke_failed row is claimable again as soon as its retry time comes: the lease
    instance A took must be checked before A calls the provider, and A's late outcome must not
    be committed over B's (one provider call, one failure event per attempt)."""
    grant = ask(deps, "alice", duration=timedelta(seconds=20)).grant
    assert grant is not None
    provider.fail_revoke = True
    clock.advance(timedelta(seconds=21))
    [failed] = grants.expire_due(deps)
    assert failed.retry_at is not None
    clock.set(failed.retry_at)
    with deps.store.transaction() as tx:  # instance A's lease (resume_unfinished's claim)
        [claimed] = tx.claim_unfinished(clock.now(), clock.now(), 10)
        leased_by_a = dataclasses.replace(claimed, updated_at=clock.now())
        tx.save_grant(leased_by_a)
    clock.advance(timedelta(milliseconds=1))
    [by_b] = grants.resume_unfinished(deps)  # instance B: the retry time has come
    assert by_b.attempts == 2
    calls = len(provider.calls)
    with pytest.raises(grants.Conflict):
        grants.finish_revoke(deps, leased_by_a)
    assert len(provider.calls) == calls  # A never called the provider
    attempts = [e.details["attempt"] for e in events(deps, "grant.revoke_failed")]
    assert attempts == [1, 2]


def test_a_late_outcome_is_not_committed_over_a_takeover(
    deps: Deps, clock: FakeClock, provider: FakeProvider
) -> None:
    """An attempt whose row changed after it was made (another instance took the grant over)
    commits nothing: no second event, no attempt count going backwards."""
    grant = ask(deps, "alice", duration=timedelta(seconds=20)).grant
    assert grant is not None
    clock.advance(timedelta(seconds=21))
    with deps.store.transaction() as tx:
        [due] = tx.claim_due_grants(clock.now(), 10)
        [mine] = grants._mark_revoking(
            tx, [due], grants.EndReason.EXPIRED, "system:worker", clock.now()
        )
    attempt = grants.attempt_revoke(deps, mine)
    with deps.store.transaction() as tx:  # someone else's lease meanwhile
        tx.save_grant(dataclasses.replace(mine, updated_at=clock.now() + timedelta(seconds=1)))
    assert grants.commit_attempts(deps, [attempt]) == []
    assert events(deps, "grant.expired") == []
