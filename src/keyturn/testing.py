"""Fakes for fast tests: a settable clock, an in-memory store, an in-memory provider and a
recording notifier.

They implement the ports in :mod:`keyturn.ports` and pass the same contract tests as the real
adapters (``tests/contract``). Shipped with the package so users can test their policies and
integrations the same way.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from collections.abc import Generator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from keyturn.domain.alerts import AlertState
from keyturn.domain.audit import GENESIS, AuditDraft, AuditEvent, StoredEvent, chain, format_time
from keyturn.domain.break_glass import KitInfo, PostIncidentReview, ReviewStatus
from keyturn.domain.errors import Conflict, NotFound, ProviderError
from keyturn.domain.model import (
    ENDED_GRANT_STATES,
    LIVE_GRANT_STATES,
    AccessRequest,
    EndReason,
    Grant,
    GrantStatus,
    RequestStatus,
    Review,
    StandingSnapshot,
)
from keyturn.domain.sessions import Session, SessionStatus
from keyturn.ports import Granted, Holdings, Notification, Provider, StoredAlert


class FakeClock:
    """A clock that only moves when told to (aware UTC)."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 11, 17, 2, 45, tzinfo=UTC)

    def now(self) -> datetime:
        """The current fake time."""
        return self._now

    def advance(self, delta: timedelta) -> None:
        """Move time forward."""
        self._now += delta

    def set(self, when: datetime) -> None:
        """Jump to an aware time."""
        self._now = when


@dataclass
class _State:
    requests: dict[str, AccessRequest] = field(default_factory=dict)
    reviews: dict[str, list[Review]] = field(default_factory=dict)
    grants: dict[str, Grant] = field(default_factory=dict)
    audit: list[AuditEvent] = field(default_factory=list)
    head: tuple[int, str] | None = None
    snapshots: list[StandingSnapshot] = field(default_factory=list)
    alerts: dict[str, tuple[AlertState, tuple[str, ...], datetime]] = field(default_factory=dict)
    kits: dict[str, KitInfo] = field(default_factory=dict)
    incident_reviews: dict[str, PostIncidentReview] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)


class InMemoryStore:
    """:class:`keyturn.ports.Store` in memory; transactions are serialised, roll back on error."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[InMemoryTx]:
        """Work on a copy; publish it only on normal exit."""
        with self._work() as (work, tx):
            yield tx
            self._state = work

    @contextmanager
    def snapshot(self) -> Iterator[InMemoryTx]:
        """Work on a copy that is never published (a read-only transaction)."""
        with self._work() as (_work, tx):
            yield tx

    @contextmanager
    def _work(self) -> Iterator[tuple[_State, InMemoryTx]]:
        with self._lock:
            work = _State(
                requests=dict(self._state.requests),
                reviews={k: list(v) for k, v in self._state.reviews.items()},
                grants=dict(self._state.grants),
                audit=list(self._state.audit),
                head=self._state.head,
                snapshots=list(self._state.snapshots),
                alerts=dict(self._state.alerts),
                kits=dict(self._state.kits),
                incident_reviews=dict(self._state.incident_reviews),
                sessions=dict(self._state.sessions),
            )
            yield work, InMemoryTx(work)

    @property
    def events(self) -> list[AuditEvent]:
        """The committed audit chain (for tampering tests)."""
        return self._state.audit


class InMemoryTx:
    """:class:`keyturn.ports.StoreTx` over a private copy of the state."""

    def __init__(self, state: _State) -> None:
        self._s = state

    def add_request(self, request: AccessRequest) -> None:
        """Insert a new access request."""
        if request.id in self._s.requests:
            raise Conflict(f"access request {request.id} exists")
        self._s.requests[request.id] = request

    def get_request(self, request_id: str, *, lock: bool = False) -> AccessRequest:
        """The request; raises NotFound."""
        try:
            return self._s.requests[request_id]
        except KeyError:
            raise NotFound(f"no access request {request_id!r}", request_id=request_id) from None

    def save_request(self, request: AccessRequest) -> None:
        """Update status and time of an existing request."""
        old = self.get_request(request.id)
        self._s.requests[request.id] = dataclasses.replace(
            old, status=request.status, updated_at=request.updated_at
        )

    def list_requests(
        self,
        *,
        status: RequestStatus | None = None,
        requester_id: str | None = None,
        limit: int = 100,
    ) -> list[AccessRequest]:
        """Newest first."""
        rows = [
            r
            for r in self._s.requests.values()
            if (status is None or r.status is status)
            and (requester_id is None or r.requester_id == requester_id)
        ]
        return sorted(rows, key=lambda r: r.created_at, reverse=True)[:limit]

    def add_review(self, review: Review) -> None:
        """Insert a review; the same reviewer twice is a Conflict."""
        existing = self._s.reviews.setdefault(review.request_id, [])
        if any(r.reviewer_id == review.reviewer_id for r in existing):
            raise Conflict(
                f"{review.reviewer_id} has already reviewed request {review.request_id}",
                request_id=review.request_id,
            )
        existing.append(review)

    def reviews(self, request_id: str) -> list[Review]:
        """Oldest first."""
        return sorted(self._s.reviews.get(request_id, []), key=lambda r: (r.created_at, r.id))

    def add_grant(self, grant: Grant) -> None:
        """Insert a new grant (request ids and serials are unique)."""
        for other in self._s.grants.values():
            if other.request_id == grant.request_id or (
                grant.serial is not None and other.serial == grant.serial
            ):
                raise Conflict("a grant with this request or serial exists")
        self._s.grants[grant.id] = grant

    def get_grant(self, grant_id: str, *, lock: bool = False) -> Grant:
        """The grant; raises NotFound."""
        try:
            return self._s.grants[grant_id]
        except KeyError:
            raise NotFound(f"no grant {grant_id!r}", grant_id=grant_id) from None

    def save_grant(self, grant: Grant) -> None:
        """Update an existing grant."""
        self.get_grant(grant.id)
        self._s.grants[grant.id] = grant

    def save_grants(self, grants: Sequence[Grant]) -> None:
        """Update existing grants; NotFound (and nothing saved) if one is missing."""
        for grant in grants:
            self.get_grant(grant.id)
        for grant in grants:
            self._s.grants[grant.id] = grant

    def grant_for_request(self, request_id: str) -> Grant | None:
        """The grant made from this request, if any."""
        return next((g for g in self._s.grants.values() if g.request_id == request_id), None)

    def list_grants(
        self,
        *,
        status: GrantStatus | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[Grant]:
        """Newest first."""
        rows = [
            g
            for g in self._s.grants.values()
            if (status is None or g.status is status) and (user_id is None or g.user_id == user_id)
        ]
        return sorted(rows, key=lambda g: (g.created_at, g.id), reverse=True)[:limit]

    def claim_due_grants(self, now: datetime, limit: int) -> list[Grant]:
        """Active grants past ``not_after``, oldest first."""
        due = [
            g
            for g in self._s.grants.values()
            if g.status is GrantStatus.ACTIVE and g.not_after <= now
        ]
        return sorted(due, key=lambda g: g.not_after)[:limit]

    def claim_unfinished(self, now: datetime, stale_before: datetime, limit: int) -> list[Grant]:
        """Interrupted and retry-due grants, least recently updated first."""
        interrupted = (GrantStatus.PROVISIONING, GrantStatus.REVOKING)
        rows = [
            g
            for g in self._s.grants.values()
            if (g.status in interrupted and g.updated_at <= stale_before)
            or (g.status is GrantStatus.REVOKE_FAILED and (g.retry_at is None or g.retry_at <= now))
        ]
        return sorted(rows, key=lambda g: g.updated_at)[:limit]

    def next_due_at(self) -> datetime | None:
        """Earliest ``not_after`` of an active grant, ``retry_at`` of a revoke_failed one or
        ``start_at`` of a scheduled request."""
        due = [g.not_after for g in self._s.grants.values() if g.status is GrantStatus.ACTIVE]
        due += [
            r.start_at
            for r in self._s.requests.values()
            if r.status is RequestStatus.SCHEDULED and r.start_at is not None
        ]
        due += [
            g.retry_at
            for g in self._s.grants.values()
            if g.status is GrantStatus.REVOKE_FAILED and g.retry_at is not None
        ]
        return min(due) if due else None

    def due_scheduled(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Scheduled requests whose start has come, earliest first."""
        due = [
            r
            for r in self._s.requests.values()
            if r.status is RequestStatus.SCHEDULED and r.start_at is not None and r.start_at <= now
        ]
        return sorted(due, key=lambda r: (r.start_at or now, r.id))[:limit]

    def count_requests(self, requester_id: str, role: str, since: datetime) -> int:
        """Requests by this requester for this role since ``since``."""
        return sum(
            1
            for r in self._s.requests.values()
            if r.requester_id == requester_id and r.role == role and r.created_at >= since
        )

    def grants_since(
        self, since: datetime, *, user_id: str | None = None, role: str | None = None
    ) -> list[Grant]:
        """Grants whose window ends after ``since``, oldest first."""
        rows = [
            g
            for g in self._s.grants.values()
            if g.not_after > since
            and (user_id is None or g.user_id == user_id)
            and (role is None or g.role == role)
        ]
        return sorted(rows, key=lambda g: (g.not_before, g.id))

    def claim_expiring(self, before: datetime, limit: int) -> list[Grant]:
        """Active, unwarned grants ending by ``before``, soonest first."""
        rows = [
            g
            for g in self._s.grants.values()
            if g.status is GrantStatus.ACTIVE and g.warned_at is None and g.not_after <= before
        ]
        return sorted(rows, key=lambda g: (g.not_after, g.id))[:limit]

    def save_alert(
        self, alert: AlertState, targets: tuple[str, ...], received_at: datetime
    ) -> None:
        """Insert or replace by fingerprint."""
        self._s.alerts[alert.fingerprint] = (alert, tuple(sorted(set(targets))), received_at)

    def alerts(
        self, *, target: str | None = None, firing_only: bool = False, limit: int = 1000
    ) -> list[StoredAlert]:
        """Most recently received first."""
        rows = [
            (received, StoredAlert(alert, targets))
            for alert, targets, received in self._s.alerts.values()
            if (target is None or target in targets)
            and (not firing_only or alert.status == "firing")
        ]
        rows.sort(key=lambda row: (-row[0].timestamp(), row[1].alert.fingerprint))
        return [stored for _, stored in rows[:limit]]

    def add_kit(self, kit: KitInfo) -> None:
        """Insert a kit; Conflict if its id exists."""
        if kit.id in self._s.kits:
            raise Conflict(f"break-glass kit {kit.id} already exists")
        self._s.kits[kit.id] = kit

    def get_kit(self, kit_id: str) -> KitInfo:
        """The kit; raises NotFound."""
        try:
            return self._s.kits[kit_id]
        except KeyError:
            raise NotFound(f"no break-glass kit {kit_id!r}", kit_id=kit_id) from None

    def save_kit(self, kit: KitInfo) -> None:
        """Update a kit's spent/retired marks."""
        old = self.get_kit(kit.id)
        self._s.kits[kit.id] = dataclasses.replace(
            old, spent_at=kit.spent_at, spent_by=kit.spent_by, retired_at=kit.retired_at
        )

    def kits(self) -> list[KitInfo]:
        """Every kit, newest first."""
        return sorted(self._s.kits.values(), key=lambda k: (-k.created_at.timestamp(), k.id))

    def add_post_incident_review(self, review: PostIncidentReview) -> None:
        """Insert a review; Conflict if its id or offline record exists."""
        if review.id in self._s.incident_reviews or (
            review.record_id is not None and self.review_for_record(review.record_id)
        ):
            raise Conflict(f"a post-incident review of {review.record_id or review.id} exists")
        self._s.incident_reviews[review.id] = review

    def get_post_incident_review(self, review_id: str, *, lock: bool = False) -> PostIncidentReview:
        """The review; raises NotFound."""
        try:
            return self._s.incident_reviews[review_id]
        except KeyError:
            raise NotFound(f"no post-incident review {review_id!r}", review_id=review_id) from None

    def save_post_incident_review(self, review: PostIncidentReview) -> None:
        """Update an existing review."""
        self.get_post_incident_review(review.id)
        self._s.incident_reviews[review.id] = review

    def post_incident_reviews(
        self, *, status: ReviewStatus | None = None, limit: int = 1000
    ) -> list[PostIncidentReview]:
        """Reviews, newest first."""
        rows = [
            r for r in self._s.incident_reviews.values() if status is None or r.status == status
        ]
        rows.sort(key=lambda r: (-r.opened_at.timestamp(), r.id))
        return rows[:limit]

    def review_for_record(self, record_id: str) -> PostIncidentReview | None:
        """The review of this offline record, if it was imported."""
        return next(
            (r for r in self._s.incident_reviews.values() if r.record_id == record_id), None
        )

    def claim_overdue_reviews(self, now: datetime, limit: int) -> list[PostIncidentReview]:
        """Open reviews due by ``now`` and not yet alerted, earliest due first."""
        rows = [
            r
            for r in self._s.incident_reviews.values()
            if r.status is ReviewStatus.OPEN and r.due_at <= now and r.overdue_alerted_at is None
        ]
        return sorted(rows, key=lambda r: r.due_at)[:limit]

    def add_session(self, session: Session) -> None:
        """Insert a session; Conflict if its id exists."""
        if session.id in self._s.sessions:
            raise Conflict(f"session {session.id} already exists")
        self._s.sessions[session.id] = session

    def get_session(self, session_id: str) -> Session:
        """The session; raises NotFound."""
        try:
            return self._s.sessions[session_id]
        except KeyError:
            raise NotFound(f"no session {session_id!r}", session_id=session_id) from None

    def save_session(self, session: Session) -> None:
        """Update an existing session."""
        self.get_session(session.id)
        self._s.sessions[session.id] = session

    def list_sessions(
        self,
        *,
        grant_id: str | None = None,
        user_id: str | None = None,
        status: SessionStatus | None = None,
        limit: int = 100,
    ) -> list[Session]:
        """Sessions matching every filter given, newest first."""
        rows = [
            s
            for s in self._s.sessions.values()
            if (grant_id is None or s.grant_id == grant_id)
            and (user_id is None or s.user_id == user_id)
            and (status is None or s.status == status)
        ]
        rows.sort(key=lambda s: (-s.started_at.timestamp(), s.id))
        return rows[:limit]

    def grants_holding(
        self, provider: str, privilege: str, *, user_id: str | None = None
    ) -> list[Grant]:
        """Live grants of this privilege, oldest first."""
        rows = [
            g
            for g in self._s.grants.values()
            if g.provider == provider
            and g.privilege == privilege
            and g.status in LIVE_GRANT_STATES
            and (user_id is None or g.user_id == user_id)
        ]
        return sorted(rows, key=lambda g: (g.created_at, g.id))

    def ended_holders(self, provider: str, privilege: str) -> set[str]:
        """Users whose grant of this privilege has ended."""
        return {
            g.user_id
            for g in self._s.grants.values()
            if g.provider == provider
            and g.privilege == privilege
            and g.status in ENDED_GRANT_STATES
        }

    def grant_counts(self) -> dict[GrantStatus, int]:
        """Grants per state."""
        counts: dict[GrantStatus, int] = {}
        for g in self._s.grants.values():
            counts[g.status] = counts.get(g.status, 0) + 1
        return counts

    def add_standing_snapshot(self, snapshot: StandingSnapshot) -> None:
        """Record a snapshot."""
        self._s.snapshots.append(snapshot)

    def standing_snapshots(self, *, since: datetime | None = None) -> list[StandingSnapshot]:
        """Snapshots oldest first."""
        rows = [x for x in self._s.snapshots if since is None or x.taken_at >= since]
        return sorted(rows, key=lambda x: x.taken_at)

    def early_revoked_serials(self, now: datetime) -> list[int]:
        """Serials of grants ended early whose window is still open."""
        ended = (GrantStatus.REVOKING, GrantStatus.REVOKE_FAILED, GrantStatus.REVOKED)
        early = (EndReason.RELEASED, EndReason.REVOKED)
        return sorted(
            g.serial
            for g in self._s.grants.values()
            if g.serial is not None
            and g.status in ended
            and g.end_reason in early
            and g.not_after > now
        )

    def append_audit(self, draft: AuditDraft) -> AuditEvent:
        """Append after the head."""
        seq, prev = (self._s.head[0] + 1, self._s.head[1]) if self._s.head else (1, GENESIS)
        event = chain(seq, draft, prev)
        self._s.audit.append(event)
        self._s.head = (seq, event.hash)
        return event

    def audit_events(self, *, after_seq: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Events with ``seq > after_seq``."""
        rows = [e for e in self._s.audit if e.seq > after_seq]
        return rows if limit is None else rows[:limit]

    def iter_audit(self, batch: int = 5000) -> Iterator[AuditEvent]:
        """Every event in stored order."""
        yield from list(self._s.audit)

    def iter_audit_rows(self, batch: int = 5000) -> Generator[StoredEvent, None, None]:
        """Every event as the SQL store keeps it (JSON text as SQLAlchemy writes it)."""
        for e in list(self._s.audit):
            yield (
                e.seq,
                format_time(e.at),
                e.actor,
                e.action,
                json.dumps(e.subject),
                json.dumps(e.details),
                e.prev_hash,
                e.hash,
            )

    def audit_head(self) -> tuple[int, str] | None:
        """The head ``(seq, hash)``."""
        return self._s.head


class RecordingNotifier:
    """:class:`keyturn.ports.Notifier` that records alerts and notifications instead of
    sending them."""

    def __init__(self) -> None:
        self.alerts: list[tuple[str, str, dict[str, str]]] = []
        self.notifications: list[Notification] = []

    def alert(self, event: str, summary: str, details: dict[str, str]) -> None:
        """Record one alert."""
        self.alerts.append((event, summary, details))

    def notify(self, notification: Notification) -> None:
        """Record one notification."""
        self.notifications.append(notification)

    def sent(self, event: str) -> list[Notification]:
        """The notifications of one event, in order."""
        return [n for n in self.notifications if n.event == event]


class FakeProvider:
    """:class:`keyturn.ports.Provider` (and :class:`~keyturn.ports.ManagedPrivileges`) holding
    privileges in memory, like a directory holds group memberships; failures can be injected.

    A grant whose ``privilege`` is set holds ``(user_id, privilege)`` -- shared by overlapping
    grants, as a group membership is; otherwise it holds ``(user_id, grant id)``.

    Attributes:
        held: the ``(identity, privilege)`` pairs currently present.
        shared: role name → privilege, for roles whose grants share one (like ``ldap`` groups).
        allowed / enforce: per privilege, who may hold it without a grant, and whether
            reconciliation removes the others.
        fail_grant / fail_revoke / down: when set, calls raise a retryable ProviderError.
        revoke_is_silent: when set, ``revoke`` "succeeds" but leaves the privilege in place, as a
            buggy script would; verification must catch it.
    """

    def __init__(self, name: str = "ssh", *, shared: dict[str, str] | None = None) -> None:
        self.name = name
        self.shared = dict(shared or {})
        self.held: set[tuple[str, str]] = set()
        self.allowed: dict[str, frozenset[str]] = {}
        self.enforce: dict[str, bool] = {}
        self.fail_grant = False
        self.fail_revoke = False
        self.down = False
        self.revoke_is_silent = False
        self.calls: list[tuple[str, str]] = []

    @staticmethod
    def key(grant: Grant) -> tuple[str, str]:
        """What the grant holds."""
        return (grant.user_id, grant.privilege or grant.id)

    def holds(self, grant: Grant) -> bool:
        """True if the grant's privilege is present."""
        return self.key(grant) in self.held

    def _reachable(self) -> None:
        if self.down:
            raise ProviderError("fake provider: cannot reach the system", retryable=True)

    def privilege(self, role: str, target: str) -> str | None:
        """The shared privilege of ``role``, if it is configured as shared."""
        return self.shared.get(role)

    def check(self) -> None:
        """Raises while ``down`` is set."""
        self._reachable()

    def grant(self, grant: Grant, request: AccessRequest) -> Granted:
        """Add the privilege (idempotent)."""
        self.calls.append(("grant", grant.id))
        self._reachable()
        if self.fail_grant:
            raise ProviderError("fake provider: grant failed", retryable=True)
        present = self.holds(grant)
        self.held.add(self.key(grant))
        return Granted({"fake_credential": f"cred-{grant.id}"}, already_present=present)

    def verify_granted(self, grant: Grant) -> bool:
        """Present?"""
        self._reachable()
        return self.holds(grant)

    def extend(self, grant: Grant, request: AccessRequest) -> dict[str, str]:
        """New credentials naming the new end."""
        self.calls.append(("extend", grant.id))
        self._reachable()
        return {"fake_credential": f"cred-{grant.id}-until-{grant.not_after.isoformat()}"}

    def revoke(self, grant: Grant, now: datetime) -> bool:
        """Remove the privilege (idempotent); True if it was already gone."""
        self.calls.append(("revoke", grant.id))
        self._reachable()
        if self.fail_revoke:
            raise ProviderError("fake provider: revoke failed", retryable=True)
        gone = not self.holds(grant)
        if not self.revoke_is_silent:
            self.held.discard(self.key(grant))
        return gone

    def verify_revoked(self, grant: Grant, now: datetime) -> bool:
        """Gone?"""
        self._reachable()
        return not self.holds(grant)

    # ManagedPrivileges ---------------------------------------------------------------------
    def holdings(self) -> list[Holdings]:
        """Every shared privilege and its holders."""
        self._reachable()
        return [
            Holdings(
                privilege=privilege,
                members=frozenset(who for who, what in self.held if what == privilege),
                allowed=self.allowed.get(privilege, frozenset()),
                enforce=self.enforce.get(privilege, False),
            )
            for privilege in sorted(set(self.shared.values()))
        ]

    def identity(self, user_id: str) -> str | None:
        """Users appear under their id."""
        return user_id

    def remove_holder(self, privilege: str, identity: str) -> bool:
        """Take the privilege away; True if already gone."""
        self.calls.append(("remove_holder", identity))
        self._reachable()
        gone = (identity, privilege) not in self.held
        self.held.discard((identity, privilege))
        return gone

    def add_holder(self, privilege: str, identity: str) -> bool:
        """Give the privilege; True if already there."""
        self.calls.append(("add_holder", identity))
        self._reachable()
        present = (identity, privilege) in self.held
        self.held.add((identity, privilege))
        return present


class BlockingProvider:
    """Wraps a provider and blocks forever at one step (``grant``, ``verify_granted``,
    ``revoke``, ``verify_revoked``), for crash tests that SIGKILL the process there.

    Enabled in a real server by :data:`keyturn.bootstrap.FAULT_ENV`; every other attribute is
    the wrapped provider's.
    """

    def __init__(self, inner: Provider, step: str) -> None:
        steps = ("grant", "verify_granted", "revoke", "verify_revoked")
        if step not in steps:
            raise ValueError(f"unknown fault step {step!r}; expected one of {', '.join(steps)}")
        self._inner = inner
        self._step = step
        self.name = inner.name

    def _maybe_block(self, step: str) -> None:
        if step == self._step:
            print(f"keyturn-fault: blocked at {step}", file=sys.stderr, flush=True)
            threading.Event().wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def privilege(self, role: str, target: str) -> str | None:
        """Delegated."""
        return self._inner.privilege(role, target)

    def check(self) -> None:
        """Delegated."""
        self._inner.check()

    def grant(self, grant: Grant, request: AccessRequest) -> Granted:
        """Blocks before granting when the step is ``grant``."""
        self._maybe_block("grant")
        return self._inner.grant(grant, request)

    def verify_granted(self, grant: Grant) -> bool:
        """Blocks (after the grant was made) when the step is ``verify_granted``."""
        self._maybe_block("verify_granted")
        return self._inner.verify_granted(grant)

    def extend(self, grant: Grant, request: AccessRequest) -> dict[str, str]:
        """Delegated."""
        return self._inner.extend(grant, request)

    def revoke(self, grant: Grant, now: datetime) -> bool:
        """Blocks before revoking when the step is ``revoke``."""
        self._maybe_block("revoke")
        return self._inner.revoke(grant, now)

    def verify_revoked(self, grant: Grant, now: datetime) -> bool:
        """Blocks (after the revoke was made) when the step is ``verify_revoked``."""
        self._maybe_block("verify_revoked")
        return self._inner.verify_revoked(grant, now)
