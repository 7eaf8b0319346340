"""The Store contract: InMemoryStore, SqlStore on SQLite and SqlStore on PostgreSQL behave alike.

The same tests run against every store (``store`` fixture). Tampering with the audit chain through
raw SQL is checked on both SQL backends; row locking and the serialised audit chain under real
concurrency are checked on PostgreSQL, where several Keyturn instances share one database.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from keyturn.adapters.store.sql import SqlStore, create_engine, migrate
from keyturn.domain.audit import (
    GENESIS,
    AuditDraft,
    AuditEvent,
    VerifyResult,
    format_time,
    stored_event,
    verify_chain,
    verify_stored,
)
from keyturn.domain.errors import Conflict, NotFound
from keyturn.domain.model import (
    AccessRequest,
    Approvers,
    Decision,
    EndReason,
    Grant,
    GrantStatus,
    Outcome,
    RequestStatus,
    Review,
    StandingSnapshot,
    Verdict,
)
from keyturn.ports import Store

T0 = datetime(2026, 11, 17, 2, 45, 0, 123456, tzinfo=UTC)
MAX_SERIAL = 2**63 - 1
WAIT = 10.0  # seconds: the longest any test waits for another thread before failing


# domain objects ------------------------------------------------------------------------------
def a_decision() -> Decision:
    """A require-approval decision with every field filled in."""
    return Decision(
        outcome=Outcome.REQUIRE_APPROVAL,
        rule="high-tier-needs-lead",
        reasons=("high-tier roles need a lead's approval",),
        facts={"role": {"name": "db-schema-admin", "tier": "high"}, "request": {"duration": 3600}},
        approvals=1,
        approvers=Approvers(users=("carol",), groups=("dba-leads",)),
        trace=({"rule": "standard-auto-approve", "matched": False}, {"rule": "x", "matched": True}),
    )


def a_request(
    n: int,
    *,
    requester: str = "alice",
    status: RequestStatus = RequestStatus.PENDING,
    created_at: datetime | None = None,
) -> AccessRequest:
    """Access request ``req_NNNN`` created ``n`` minutes after T0 (unless told otherwise)."""
    at = created_at if created_at is not None else T0 + timedelta(minutes=n)
    return AccessRequest(
        id=f"req_{n:04d}",
        requester_id=requester,
        role="db-schema-admin",
        target="db-1",
        duration=timedelta(hours=1),
        justification=f"INC-{n}: replica lag on db-1",
        ticket=f"INC-{n}",
        ssh_public_key=f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2Uta2V5{n} {requester}",
        status=status,
        decision=a_decision(),
        created_at=at,
        updated_at=at,
    )


def a_review(
    n: int, request_id: str, reviewer: str, at: datetime, verdict: Verdict = Verdict.APPROVE
) -> Review:
    """A review ``rev_NNNN`` of ``request_id``."""
    return Review(
        id=f"rev_{n:04d}",
        request_id=request_id,
        reviewer_id=reviewer,
        verdict=verdict,
        comment=f"looked at it ({n})",
        created_at=at,
    )


def a_grant(
    n: int,
    *,
    user: str = "alice",
    status: GrantStatus = GrantStatus.ACTIVE,
    not_after: datetime | None = None,
    serial: int | None = -1,
    end_reason: EndReason | None = None,
    created_at: datetime | None = None,
    updated_at: datetime | None = None,
    privilege: str | None = None,
    retry_at: datetime | None = None,
) -> Grant:
    """Grant ``grt_NNNN`` from request ``req_NNNN``; one hour long, serial 1000+n by default.

    With a ``privilege`` it is an ``ldap`` grant (no serial) of that group."""
    end = not_after if not_after is not None else T0 + timedelta(hours=1)
    created = created_at if created_at is not None else T0 + timedelta(seconds=n)
    return Grant(
        id=f"grt_{n:04d}",
        request_id=f"req_{n:04d}",
        user_id=user,
        role="server-admin",
        target="db-1",
        provider="ldap" if privilege else "ssh",
        privilege=privilege,
        retry_at=retry_at,
        status=status,
        not_before=end - timedelta(hours=1),
        not_after=end,
        created_at=created,
        updated_at=updated_at if updated_at is not None else created,
        serial=None if privilege else (1000 + n if serial == -1 else serial),
        credentials={"ssh_certificate": f"ssh-ed25519-cert-v01@openssh.com AAAA{n} grt_{n:04d}"},
        end_reason=end_reason,
        ended_by="alice" if end_reason is not None else None,
        ended_at=T0 if end_reason is not None else None,
    )


def a_draft(i: int, *, actor: str = "alice") -> AuditDraft:
    """Audit draft number ``i`` (distinct time, subject and details)."""
    return AuditDraft(
        at=T0 + timedelta(seconds=i, microseconds=i),
        actor=actor,
        action="request.created",
        subject={"request_id": f"req_{i:04d}"},
        details={"n": i, "why": "db-1 down", "tags": ["a", "b"], "nested": {"ok": True}},
    )


def add_grants(store: Store, *grants: Grant) -> None:
    """Insert each grant together with the approved request it was made from."""
    with store.transaction() as tx:
        for g in grants:
            request = dataclasses.replace(
                a_request(0, requester=g.user_id, status=RequestStatus.APPROVED), id=g.request_id
            )
            tx.add_request(request)
            tx.add_grant(g)


def append_events(store: Store, numbers: range) -> list[AuditEvent]:
    """Append one committed event per number, each in its own transaction."""
    events = []
    for i in numbers:
        with store.transaction() as tx:
            events.append(tx.append_audit(a_draft(i)))
    return events


@pytest.fixture
def pg_store(pg_url: str) -> Iterator[SqlStore]:
    """SqlStore on a fresh PostgreSQL database."""
    engine = create_engine(pg_url)
    migrate(engine)
    sql = SqlStore(engine)
    yield sql
    sql.close()


def _snapshot_status(store: Store, grant_id: str) -> GrantStatus:
    with store.snapshot() as tx:
        return tx.get_grant(grant_id).status


class _Boom(Exception):
    """Raised inside a transaction to make it roll back."""


# the contract ------------------------------------------------------------------------------------
class TestStoreContract:
    """Behaviour every Store must show."""

    def test_added_request_reads_back_equal(self, store: Store) -> None:
        """A request (with its decision) reads back field for field, locked or not."""
        request = a_request(1)
        with store.transaction() as tx:
            tx.add_request(request)
        with store.transaction() as tx:
            assert tx.get_request(request.id) == request
            assert tx.get_request(request.id, lock=True) == request

    def test_unknown_ids_raise_not_found(self, store: Store) -> None:
        """Reading a request or grant that does not exist raises NotFound."""
        with store.transaction() as tx:
            with pytest.raises(NotFound):
                tx.get_request("req_missing")
            with pytest.raises(NotFound):
                tx.get_grant("grt_missing")
            assert tx.grant_for_request("req_missing") is None

    def test_a_snapshot_reads_committed_rows_and_loses_its_writes(self, store: Store) -> None:
        add_grants(store, a_grant(1))
        with store.snapshot() as tx:
            seen = tx.get_grant("grt_0001")
            tx.save_grant(dataclasses.replace(seen, status=GrantStatus.REVOKED))
            tx.append_audit(a_draft(1))
        with store.transaction() as tx:
            assert tx.get_grant("grt_0001").status is GrantStatus.ACTIVE
            assert tx.audit_events() == []

    def test_a_snapshot_does_not_wait_for_an_open_write_transaction(self, store: Store) -> None:
        if not isinstance(store, SqlStore):
            pytest.skip("the in-memory store serialises everything (its own lock)")
        add_grants(store, a_grant(1))
        with store.transaction() as writer:
            writer.save_grant(dataclasses.replace(a_grant(1), status=GrantStatus.REVOKING))
            with ThreadPoolExecutor(1) as pool:
                read = pool.submit(lambda: _snapshot_status(store, "grt_0001"))
                assert read.result(timeout=WAIT) is GrantStatus.ACTIVE  # not yet committed

    def test_saved_request_keeps_new_status_and_time(self, store: Store) -> None:
        """save_request persists the status and updated_at of a transition."""
        request = a_request(1)
        with store.transaction() as tx:
            tx.add_request(request)
        approved = request.transition(RequestStatus.APPROVED, T0 + timedelta(minutes=5))
        with store.transaction() as tx:
            tx.save_request(approved)
        with store.transaction() as tx:
            got = tx.get_request(request.id)
        assert got.status is RequestStatus.APPROVED
        assert got.updated_at == T0 + timedelta(minutes=5)
        assert got == approved

    def test_list_requests_is_newest_first_and_limited(self, store: Store) -> None:
        """list_requests orders by creation time, newest first, and honours the limit."""
        with store.transaction() as tx:
            for n in (3, 1, 5, 2, 4):
                tx.add_request(a_request(n))
        with store.transaction() as tx:
            assert [r.id for r in tx.list_requests()] == [f"req_{n:04d}" for n in (5, 4, 3, 2, 1)]
            assert [r.id for r in tx.list_requests(limit=2)] == ["req_0005", "req_0004"]

    def test_list_requests_filters_by_status_and_requester(self, store: Store) -> None:
        """Status and requester filters narrow the list and combine."""
        with store.transaction() as tx:
            tx.add_request(a_request(1, requester="alice"))
            tx.add_request(a_request(2, requester="bob"))
            tx.add_request(a_request(3, requester="alice", status=RequestStatus.APPROVED))
            tx.add_request(a_request(4, requester="bob", status=RequestStatus.APPROVED))
            tx.add_request(a_request(5, requester="alice", status=RequestStatus.DENIED))
        with store.transaction() as tx:
            ids = lambda rows: [r.id for r in rows]  # noqa: E731
            assert ids(tx.list_requests(status=RequestStatus.APPROVED)) == ["req_0004", "req_0003"]
            assert ids(tx.list_requests(requester_id="alice")) == [
                "req_0005",
                "req_0003",
                "req_0001",
            ]
            assert ids(tx.list_requests(status=RequestStatus.PENDING, requester_id="bob")) == [
                "req_0002"
            ]
            assert tx.list_requests(status=RequestStatus.EXPIRED) == []
            assert tx.list_requests(requester_id="nobody") == []

    def test_reviews_read_back_oldest_first(self, store: Store) -> None:
        """reviews() returns a request's reviews in creation order, whatever the insert order."""
        with store.transaction() as tx:
            tx.add_request(a_request(1))
            tx.add_request(a_request(2))
            late = a_review(1, "req_0001", "carol", T0 + timedelta(minutes=9))
            early = a_review(2, "req_0001", "dave", T0 + timedelta(minutes=2), Verdict.DENY)
            middle = a_review(3, "req_0001", "sam", T0 + timedelta(minutes=5))
            other = a_review(4, "req_0002", "carol", T0)
            for review in (late, early, middle, other):
                tx.add_review(review)
        with store.transaction() as tx:
            assert tx.reviews("req_0001") == [early, middle, late]
            assert tx.reviews("req_0002") == [other]
            assert tx.reviews("req_0003") == []

    def test_same_reviewer_twice_conflicts(self, store: Store) -> None:
        """A second review by the same reviewer raises Conflict and is not stored."""
        with store.transaction() as tx:
            tx.add_request(a_request(1))
            tx.add_review(a_review(1, "req_0001", "carol", T0))
        with store.transaction() as tx:
            with pytest.raises(Conflict):
                tx.add_review(a_review(2, "req_0001", "carol", T0 + timedelta(minutes=1)))
            tx.add_review(a_review(3, "req_0001", "dave", T0 + timedelta(minutes=2)))
        with store.transaction() as tx:
            assert [r.id for r in tx.reviews("req_0001")] == ["rev_0001", "rev_0003"]

    def test_grant_reads_back_equal_and_by_request(self, store: Store) -> None:
        """A grant reads back field for field by id (locked or not) and by its request id."""
        grant = a_grant(1)
        add_grants(store, grant)
        with store.transaction() as tx:
            assert tx.get_grant(grant.id) == grant
            assert tx.get_grant(grant.id, lock=True) == grant
            assert tx.grant_for_request("req_0001") == grant
            tx.add_request(a_request(2))
            assert tx.grant_for_request("req_0002") is None

    def test_saved_grant_keeps_every_change(self, store: Store) -> None:
        """save_grant persists status, end fields, attempts, errors and credentials."""
        grant = a_grant(1)
        add_grants(store, grant)
        ended = grant.transition(
            GrantStatus.REVOKING,
            T0 + timedelta(minutes=10),
            end_reason=EndReason.REVOKED,
            ended_by="sam",
            ended_at=T0 + timedelta(minutes=10),
            attempts=3,
            last_error="ssh-keygen could not write the KRL",
            credentials={"ssh_certificate": "replaced"},
        )
        with store.transaction() as tx:
            tx.save_grant(ended)
        with store.transaction() as tx:
            assert tx.get_grant(grant.id) == ended

    def test_list_grants_filters_newest_first_and_limited(self, store: Store) -> None:
        """list_grants filters by status and user, orders newest first, honours the limit."""
        add_grants(
            store,
            a_grant(1, user="alice"),
            a_grant(2, user="bob"),
            a_grant(3, user="alice", status=GrantStatus.REVOKED, end_reason=EndReason.EXPIRED),
            a_grant(4, user="alice"),
        )
        with store.transaction() as tx:
            ids = lambda rows: [g.id for g in rows]  # noqa: E731
            assert ids(tx.list_grants()) == ["grt_0004", "grt_0003", "grt_0002", "grt_0001"]
            assert ids(tx.list_grants(limit=2)) == ["grt_0004", "grt_0003"]
            assert ids(tx.list_grants(status=GrantStatus.ACTIVE)) == [
                "grt_0004",
                "grt_0002",
                "grt_0001",
            ]
            assert ids(tx.list_grants(user_id="alice", status=GrantStatus.ACTIVE)) == [
                "grt_0004",
                "grt_0001",
            ]
            assert tx.list_grants(user_id="carol") == []

    def test_aware_utc_datetimes_round_trip_exactly(self, store: Store) -> None:
        """Every stored time comes back equal, to the microsecond, with tzinfo UTC."""
        at = datetime(2026, 11, 17, 23, 59, 59, 999999, tzinfo=UTC)
        request = a_request(1, created_at=at)
        grant = dataclasses.replace(
            a_grant(1, not_after=at + timedelta(microseconds=1), created_at=at),
            status=GrantStatus.REVOKING,
            end_reason=EndReason.RELEASED,
            ended_at=at - timedelta(microseconds=7),
        )
        with store.transaction() as tx:
            tx.add_request(request)
            tx.add_grant(grant)
            tx.add_review(a_review(1, request.id, "carol", at))
            tx.append_audit(AuditDraft(at, "alice", "request.created"))
        with store.transaction() as tx:
            r = tx.get_request(request.id)
            g = tx.get_grant(grant.id)
            times = {
                "request.created_at": (r.created_at, at),
                "request.updated_at": (r.updated_at, at),
                "review.created_at": (tx.reviews(request.id)[0].created_at, at),
                "grant.not_before": (g.not_before, grant.not_before),
                "grant.not_after": (g.not_after, grant.not_after),
                "grant.ended_at": (g.ended_at, grant.ended_at),
                "grant.created_at": (g.created_at, at),
                "audit.at": (tx.audit_events()[0].at, at),
            }
        for name, (got, want) in times.items():
            assert got == want, name
            assert got is not None
            assert got.tzinfo is not None, name
            assert got.utcoffset() == timedelta(0), name
            assert want is not None
            assert got.microsecond == want.microsecond, name
        assert g.not_after == datetime(2026, 11, 18, tzinfo=UTC)  # crossed midnight exactly

    def test_63_bit_serial_round_trips(self, store: Store) -> None:
        """The largest signed 64-bit serial is stored and read back unchanged."""
        grant = a_grant(1, serial=MAX_SERIAL, status=GrantStatus.REVOKING)
        grant = dataclasses.replace(grant, end_reason=EndReason.RELEASED)
        add_grants(store, grant)
        with store.transaction() as tx:
            got = tx.get_grant(grant.id)
            assert got.serial == MAX_SERIAL
            assert isinstance(got.serial, int)
            assert tx.early_revoked_serials(T0) == [MAX_SERIAL]

    def test_claim_due_grants_takes_only_due_active_grants_in_order(self, store: Store) -> None:
        """Only ACTIVE grants with not_after <= now are claimed, earliest first, up to limit."""
        now = T0 + timedelta(hours=2)
        add_grants(
            store,
            a_grant(1, not_after=now - timedelta(minutes=1)),
            a_grant(2, not_after=now - timedelta(minutes=30)),
            a_grant(3, not_after=now),  # exactly due
            a_grant(4, not_after=now + timedelta(microseconds=1)),  # not yet
            a_grant(5, not_after=now - timedelta(hours=1), status=GrantStatus.REVOKING),
            a_grant(6, not_after=now - timedelta(hours=1), status=GrantStatus.PROVISIONING),
            a_grant(7, not_after=now - timedelta(hours=1), status=GrantStatus.REVOKED),
            a_grant(8, not_after=now - timedelta(minutes=10)),
        )
        with store.transaction() as tx:
            due = tx.claim_due_grants(now, 10)
            assert [g.id for g in due] == ["grt_0002", "grt_0008", "grt_0001", "grt_0003"]
            assert all(g.status is GrantStatus.ACTIVE for g in due)
        with store.transaction() as tx:
            assert [g.id for g in tx.claim_due_grants(now, 2)] == ["grt_0002", "grt_0008"]
            assert tx.claim_due_grants(T0 - timedelta(days=1), 10) == []

    def test_claim_unfinished_takes_stale_interrupted_and_retry_due_rows(
        self, store: Store
    ) -> None:
        """Interrupted rows last touched before the cut-off and revoke_failed rows whose retry
        time has come are claimed, least recently updated first; nothing else is."""
        now = T0 + timedelta(minutes=10)
        stale_before = now - timedelta(minutes=1)
        add_grants(
            store,
            a_grant(1, status=GrantStatus.REVOKING, updated_at=T0 + timedelta(minutes=3)),
            a_grant(
                2,
                status=GrantStatus.REVOKE_FAILED,
                updated_at=T0 + timedelta(minutes=1),
                retry_at=now,
            ),
            a_grant(3, status=GrantStatus.ACTIVE, updated_at=T0),
            a_grant(4, status=GrantStatus.REVOKED, updated_at=T0),
            a_grant(5, status=GrantStatus.PROVISIONING, updated_at=T0 + timedelta(minutes=2)),
            a_grant(6, status=GrantStatus.REVOKING, updated_at=now),  # fresh: maybe in flight
            a_grant(
                7,
                status=GrantStatus.REVOKE_FAILED,
                updated_at=T0,
                retry_at=now + timedelta(seconds=1),  # backoff not over
            ),
        )
        with store.transaction() as tx:
            claimed = tx.claim_unfinished(now, stale_before, 10)
            assert [g.id for g in claimed] == ["grt_0002", "grt_0005", "grt_0001"]
            assert [g.id for g in tx.claim_unfinished(now, stale_before, 1)] == ["grt_0002"]
            assert tx.claim_unfinished(T0 - timedelta(days=1), T0 - timedelta(days=1), 10) == []

    def test_privilege_and_retry_time_round_trip(self, store: Store) -> None:
        """A grant's shared privilege and retry time are stored as given (aware UTC)."""
        retry = T0 + timedelta(seconds=7, microseconds=5)
        add_grants(
            store,
            a_grant(
                1,
                privilege="cn=db-admins,ou=groups",
                status=GrantStatus.REVOKE_FAILED,
                retry_at=retry,
            ),
        )
        with store.transaction() as tx:
            got = tx.get_grant("grt_0001")
        assert got.privilege == "cn=db-admins,ou=groups"
        assert got.retry_at == retry
        assert got.serial is None

    def test_grants_holding_and_ended_holders(self, store: Store) -> None:
        """Live grants of a privilege (optionally of one user) and users whose grant ended."""
        group, other = "cn=db-admins", "cn=app-deployers"
        add_grants(
            store,
            a_grant(1, privilege=group),
            a_grant(2, privilege=group, user="bob", status=GrantStatus.PROVISIONING),
            a_grant(3, privilege=group, user="carol", status=GrantStatus.REVOKED),
            a_grant(4, privilege=other, user="dave"),
            a_grant(5, privilege=group, user="dave", status=GrantStatus.REVOKE_FAILED),
            a_grant(6),  # an SSH grant: no privilege
            a_grant(7, privilege=group, user="mallory", status=GrantStatus.FAILED),  # never active
        )
        with store.transaction() as tx:
            assert [g.id for g in tx.grants_holding("ldap", group)] == ["grt_0001", "grt_0002"]
            assert [g.id for g in tx.grants_holding("ldap", group, user_id="bob")] == ["grt_0002"]
            assert tx.grants_holding("ssh", group) == []
            assert tx.ended_holders("ldap", group) == {"carol", "dave"}
            assert tx.ended_holders("ldap", other) == set()

    def test_grant_counts_by_state(self, store: Store) -> None:
        """grant_counts counts every state present, and only those."""
        add_grants(
            store,
            a_grant(1),
            a_grant(2),
            a_grant(3, status=GrantStatus.REVOKE_FAILED),
        )
        with store.transaction() as tx:
            assert tx.grant_counts() == {GrantStatus.ACTIVE: 2, GrantStatus.REVOKE_FAILED: 1}

    def test_standing_snapshots_round_trip_oldest_first(self, store: Store) -> None:
        """Snapshots come back oldest first, filtered by ``since``."""
        first = StandingSnapshot(T0, "ldap", "cn=db-admins", ("uid=x", "uid=y"))
        second = StandingSnapshot(T0 + timedelta(minutes=5), "ldap", "cn=db-admins", ())
        with store.transaction() as tx:
            tx.add_standing_snapshot(second)
            tx.add_standing_snapshot(first)
        with store.transaction() as tx:
            assert tx.standing_snapshots() == [first, second]
            assert tx.standing_snapshots(since=T0 + timedelta(minutes=1)) == [second]

    def test_next_due_at_is_earliest_active_end(self, store: Store) -> None:
        """next_due_at is None with no active grant, else the earliest active not_after."""
        with store.transaction() as tx:
            assert tx.next_due_at() is None
        first = T0 + timedelta(minutes=20, microseconds=42)
        add_grants(
            store,
            a_grant(1, not_after=T0 + timedelta(hours=1)),
            a_grant(2, not_after=first),
            a_grant(3, not_after=T0 + timedelta(minutes=30)),
            a_grant(4, not_after=T0, status=GrantStatus.REVOKING),  # earlier, but not active
        )
        with store.transaction() as tx:
            due = tx.next_due_at()
        assert due == first
        assert due is not None
        assert due.utcoffset() == timedelta(0)
        retry = T0 + timedelta(minutes=2)
        add_grants(store, a_grant(5, status=GrantStatus.REVOKE_FAILED, retry_at=retry))
        with store.transaction() as tx:
            assert tx.next_due_at() == retry  # a retry due earlier wakes the worker earlier

    def test_early_revoked_serials_lists_only_early_ends_in_window(self, store: Store) -> None:
        """Only grants released/revoked before not_after, in an ending state, are listed."""
        now = T0
        later, earlier = now + timedelta(minutes=5), now - timedelta(minutes=5)
        add_grants(
            store,
            # listed: ended early, window still open, in each ending state
            a_grant(1, status=GrantStatus.REVOKING, end_reason=EndReason.RELEASED, not_after=later),
            a_grant(
                2, status=GrantStatus.REVOKE_FAILED, end_reason=EndReason.REVOKED, not_after=later
            ),
            a_grant(3, status=GrantStatus.REVOKED, end_reason=EndReason.RELEASED, not_after=later),
            # not listed
            a_grant(4, status=GrantStatus.REVOKED, end_reason=EndReason.EXPIRED, not_after=later),
            a_grant(5, status=GrantStatus.REVOKING, end_reason=EndReason.EXPIRED, not_after=later),
            a_grant(6, status=GrantStatus.REVOKED, end_reason=EndReason.REVOKED, not_after=now),
            a_grant(
                7, status=GrantStatus.REVOKED, end_reason=EndReason.RELEASED, not_after=earlier
            ),
            a_grant(8, status=GrantStatus.ACTIVE, not_after=later),
            a_grant(
                9,
                status=GrantStatus.REVOKING,
                end_reason=EndReason.RELEASED,
                not_after=later,
                serial=None,
            ),
            a_grant(10, status=GrantStatus.FAILED, end_reason=EndReason.REVOKED, not_after=later),
        )
        with store.transaction() as tx:
            assert tx.early_revoked_serials(now) == [1001, 1002, 1003]
            assert tx.early_revoked_serials(later) == []  # every window has closed by then

    def test_failed_transaction_rolls_back_everything(self, store: Store) -> None:
        """An exception inside a transaction undoes all its writes, audit events included."""
        with store.transaction() as tx:
            tx.add_request(a_request(1))
            first = tx.append_audit(a_draft(1))

        def write_then_fail() -> None:
            with store.transaction() as tx:
                tx.add_request(a_request(2))
                tx.save_request(
                    a_request(1).transition(RequestStatus.APPROVED, T0 + timedelta(hours=1))
                )
                tx.append_audit(a_draft(2))
                assert tx.get_request("req_0002").id == "req_0002"  # visible inside
                raise _Boom

        with pytest.raises(_Boom):
            write_then_fail()
        with store.transaction() as tx:
            with pytest.raises(NotFound):
                tx.get_request("req_0002")
            assert tx.get_request("req_0001").status is RequestStatus.PENDING
            assert tx.audit_events() == [first]
            assert tx.audit_head() == (1, first.hash)

    def test_rolled_back_first_event_leaves_no_chain(self, store: Store) -> None:
        """Rolling back the very first audit event leaves no event and no head."""

        def append_then_fail() -> None:
            with store.transaction() as tx:
                tx.add_request(a_request(1))
                tx.append_audit(a_draft(1))
                raise _Boom

        with pytest.raises(_Boom):
            append_then_fail()
        with store.transaction() as tx:
            assert tx.audit_events() == []
            assert tx.audit_head() is None
            assert tx.list_requests() == []
        with store.transaction() as tx:
            assert tx.append_audit(a_draft(2)).seq == 1

    def test_appended_events_form_a_verifiable_chain(self, store: Store) -> None:
        """append_audit links events 1..n; verify_chain accepts them with the stored head."""
        with store.transaction() as tx:
            assert tx.audit_head() is None
            assert verify_chain(tx.iter_audit(), tx.audit_head()).ok
        events = append_events(store, range(1, 4))
        with store.transaction() as tx:  # several appends in one transaction too
            events += [tx.append_audit(a_draft(4)), tx.append_audit(a_draft(5))]
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert events[0].prev_hash == GENESIS
        assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
        with store.transaction() as tx:
            stored = tx.audit_events()
            head = tx.audit_head()
            result = verify_chain(tx.iter_audit(), head)
            page = tx.audit_events(after_seq=2, limit=2)
        assert stored == events
        assert head == (5, events[-1].hash)
        assert result.ok, result
        assert result.count == 5
        assert result.head_hash == events[-1].hash
        assert [e.seq for e in page] == [3, 4]

    def test_iter_audit_reads_past_one_batch(self, store: Store) -> None:
        """iter_audit yields every event in order when there are more events than one batch."""
        events = append_events(store, range(1, 11))
        with store.transaction() as tx:
            by_three = list(tx.iter_audit(batch=3))
            by_five = list(tx.iter_audit(batch=5))  # batch divides the count exactly
            by_ten = list(tx.iter_audit(batch=10))
            result = verify_chain(tx.iter_audit(batch=3), tx.audit_head())
        assert by_three == events
        assert by_five == events
        assert by_ten == events
        assert result.ok
        assert result.count == 10

    def test_iter_audit_rows_hold_the_events_as_stored(self, store: Store) -> None:
        """iter_audit_rows streams every event undecoded (time text, JSON text); decoded they are
        the events; verify_stored over them answers as verify_chain over iter_audit."""
        events = append_events(store, range(1, 8))
        with store.snapshot() as tx:
            rows = list(tx.iter_audit_rows(batch=3))
            head = tx.audit_head()
            expected = verify_chain(tx.iter_audit(), head)
            result = verify_stored(tx.iter_audit_rows(batch=2), head, batch=3)
        assert [stored_event(r) for r in rows] == events
        assert all(isinstance(r[4], str) and isinstance(r[5], str) for r in rows)
        assert rows[0][1] == format_time(events[0].at)
        assert result == expected
        assert result.ok


# tampering with the stored chain (SQL backends) ------------------------------------------------
class TestSqlAuditTampering:
    """Edits made behind Keyturn's back, straight in the database, are detected."""

    def _chain(self, store: SqlStore) -> list[AuditEvent]:
        events = append_events(store, range(1, 6))
        assert self._verify(store).ok
        return events

    def _verify(self, store: SqlStore) -> VerifyResult:
        """verify_chain's answer, checked to be verify_stored's over the rows as stored."""
        with store.transaction() as tx:
            result = verify_chain(tx.iter_audit(batch=2), tx.audit_head())
        with store.snapshot() as tx:
            assert verify_stored(tx.iter_audit_rows(batch=2), tx.audit_head(), batch=2) == result
        return result

    def test_edited_details_are_named(self, sql_store: SqlStore) -> None:
        """An UPDATE of one event's details is reported at that event's seq."""
        self._chain(sql_store)
        update = sa.text("UPDATE audit_events SET details = :details WHERE seq = 3").bindparams(
            sa.bindparam("details", type_=sa.JSON)
        )
        with sql_store.engine.begin() as conn:
            assert conn.execute(update, {"details": {"n": 3, "why": "nothing"}}).rowcount == 1
        result = self._verify(sql_store)
        assert not result.ok
        assert result.first_bad_seq == 3
        assert result.reason == "event content was changed"

    def test_deleted_middle_event_is_named(self, sql_store: SqlStore) -> None:
        """A DELETE of event 3 is reported at seq 3."""
        self._chain(sql_store)
        with sql_store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 3"))
        result = self._verify(sql_store)
        assert not result.ok
        assert result.first_bad_seq == 3

    def test_deleted_last_event_fails_the_head_check(self, sql_store: SqlStore) -> None:
        """A DELETE of the newest event leaves a valid prefix, which the head row exposes."""
        events = self._chain(sql_store)
        with sql_store.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM audit_events WHERE seq = 5"))
        with sql_store.transaction() as tx:
            remaining = list(tx.iter_audit())
            head = tx.audit_head()
        assert verify_chain(remaining).ok  # without the head the truncation is invisible
        result = verify_chain(remaining, head)
        assert head == (5, events[-1].hash)
        assert not result.ok
        assert result.first_bad_seq == 5
        assert result.reason == "the chain head does not match"

    def test_swapped_events_are_detected_at_the_first(self, sql_store: SqlStore) -> None:
        """Swapping the contents of events 2 and 4 is reported at seq 2."""
        self._chain(sql_store)
        with sql_store.engine.begin() as conn:
            conn.execute(sa.text("UPDATE audit_events SET seq = -1 WHERE seq = 2"))
            conn.execute(sa.text("UPDATE audit_events SET seq = 2 WHERE seq = 4"))
            conn.execute(sa.text("UPDATE audit_events SET seq = 4 WHERE seq = -1"))
        with sql_store.transaction() as tx:
            stored = tx.audit_events()
        assert [e.seq for e in stored] == [1, 2, 3, 4, 5]
        assert stored[1].details["n"] == 4  # the swap really happened
        result = self._verify(sql_store)
        assert not result.ok
        assert result.first_bad_seq == 2


# PostgreSQL: several instances on one database ---------------------------------------------------
def _wait_for_lock_waiter(store: SqlStore) -> None:
    """Return once some other session of this database waits on a lock; fail after WAIT."""
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + WAIT
    with store.engine.connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(query).scalar_one() > 0:
                return
            conn.rollback()
            time.sleep(0.01)
    pytest.fail("no session ever waited on a lock")


@pytest.mark.integration
class TestPostgresConcurrency:
    """Row locks keep instances from double-claiming grants or forking the audit chain."""

    @staticmethod
    def _claim_while_held(store: SqlStore, *, first_limit: int) -> tuple[list[str], list[str]]:
        """A first transaction claims up to ``first_limit`` due grants and holds them open while a
        second one claims up to 50; returns both claims."""
        first_holds, second_done = threading.Event(), threading.Event()

        def first() -> list[str]:
            with store.transaction() as tx:
                ids = [g.id for g in tx.claim_due_grants(T0, first_limit)]
                first_holds.set()
                assert second_done.wait(WAIT), "second claimer never finished"
            return ids

        def second() -> list[str]:
            assert first_holds.wait(WAIT), "first claimer never claimed"
            try:
                with store.transaction() as tx:
                    return [g.id for g in tx.claim_due_grants(T0, 50)]
            finally:
                second_done.set()

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.submit(first), pool.submit(second)
            return a.result(timeout=2 * WAIT), b.result(timeout=2 * WAIT)

    def _due_grants(self, store: SqlStore, count: int) -> set[str]:
        grants = [a_grant(n, not_after=T0 - timedelta(seconds=n)) for n in range(1, count + 1)]
        add_grants(store, *grants)
        return {g.id for g in grants}

    def test_claimed_due_grants_are_skipped_by_a_second_claimer(self, pg_store: SqlStore) -> None:
        """While one transaction holds its 50 claims, a second claimer gets none (SKIP LOCKED)."""
        all_ids = self._due_grants(pg_store, 50)
        claimed_a, claimed_b = self._claim_while_held(pg_store, first_limit=50)
        assert set(claimed_a) == all_ids
        assert claimed_b == []
        assert len(claimed_a + claimed_b) == len(set(claimed_a + claimed_b))
        with pg_store.transaction() as tx:  # the locks ended with the transaction
            assert {g.id for g in tx.claim_due_grants(T0, 50)} == all_ids

    def test_partial_claims_split_the_due_grants(self, pg_store: SqlStore) -> None:
        """A first claim of 20 held open leaves exactly the other 30 to a second claimer."""
        all_ids = self._due_grants(pg_store, 50)
        claimed_a, claimed_b = self._claim_while_held(pg_store, first_limit=20)
        # due earliest first: grt_0050 has the earliest not_after
        assert claimed_a == [f"grt_{n:04d}" for n in range(50, 30, -1)]
        assert len(claimed_b) == 30
        assert not set(claimed_a) & set(claimed_b)
        assert set(claimed_a) | set(claimed_b) == all_ids

    def test_concurrent_appends_make_one_contiguous_chain(self, pg_store: SqlStore) -> None:
        """8 threads appending 25 events each at once leave one unbroken chain, seqs 1..201."""
        threads, per_thread = 8, 25
        append_events(pg_store, range(0, 1))  # seed: see test_first_appends_race_on_empty_chain
        start = threading.Barrier(threads, timeout=WAIT)

        def appender(t: int) -> list[int]:
            start.wait()
            seqs = []
            for i in range(per_thread):
                with pg_store.transaction() as tx:
                    seqs.append(tx.append_audit(a_draft(1000 * t + i, actor=f"user{t}")).seq)
            return seqs

        with ThreadPoolExecutor(threads) as pool:
            results = list(pool.map(appender, range(threads), timeout=6 * WAIT))
        appended = sorted(s for seqs in results for s in seqs)
        total = 1 + threads * per_thread
        assert appended == list(range(2, total + 1))
        assert all(seqs == sorted(seqs) for seqs in results)
        with pg_store.transaction() as tx:
            events = list(tx.iter_audit(batch=64))
            result = verify_chain(events, tx.audit_head())
        assert [e.seq for e in events] == list(range(1, total + 1))
        assert result.ok, result
        assert result.count == total
        assert sorted(e.actor for e in events[1:]) == sorted(
            f"user{t}" for t in range(threads) for _ in range(per_thread)
        )

    def test_first_appends_race_on_empty_chain(self, pg_store: SqlStore) -> None:
        """Two instances making the very first appends at once both succeed, as seqs 1 and 2."""
        first_appended, release = threading.Event(), threading.Event()

        def first() -> int:
            with pg_store.transaction() as tx:
                seq = tx.append_audit(a_draft(1)).seq
                first_appended.set()
                assert release.wait(WAIT)
            return seq

        def second() -> int:
            assert first_appended.wait(WAIT)
            with pg_store.transaction() as tx:
                return tx.append_audit(a_draft(2)).seq

        with ThreadPoolExecutor(2) as pool:
            a, b = pool.submit(first), pool.submit(second)
            try:
                _wait_for_lock_waiter(pg_store)  # the second append is blocked behind the first
            finally:
                release.set()
            seqs = sorted([a.result(timeout=2 * WAIT), b.result(timeout=2 * WAIT)])
        assert seqs == [1, 2]
        with pg_store.transaction() as tx:
            assert verify_chain(tx.iter_audit(), tx.audit_head()).ok
