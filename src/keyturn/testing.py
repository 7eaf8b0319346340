"""Fakes for fast tests: a settable clock, an in-memory store and an in-memory provider.

They implement the ports in :mod:`keyturn.ports` and pass the same contract tests as the real
adapters (``tests/contract``). Shipped with the package so users can test their policies and
integrations the same way.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from keyturn.domain.audit import GENESIS, AuditDraft, AuditEvent, chain
from keyturn.domain.errors import Conflict, NotFound, ProviderError
from keyturn.domain.model import (
    AccessRequest,
    EndReason,
    Grant,
    GrantStatus,
    RequestStatus,
    Review,
)


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


class InMemoryStore:
    """:class:`keyturn.ports.Store` in memory; transactions are serialised, roll back on error."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self) -> Iterator[InMemoryTx]:
        """Work on a copy; publish it only on normal exit."""
        with self._lock:
            work = _State(
                requests=dict(self._state.requests),
                reviews={k: list(v) for k, v in self._state.reviews.items()},
                grants=dict(self._state.grants),
                audit=list(self._state.audit),
                head=self._state.head,
            )
            yield InMemoryTx(work)
            self._state = work

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

    def claim_grants_in(self, states: Sequence[GrantStatus], limit: int) -> list[Grant]:
        """Grants in ``states``, oldest update first."""
        rows = [g for g in self._s.grants.values() if g.status in states]
        return sorted(rows, key=lambda g: g.updated_at)[:limit]

    def next_due_at(self) -> datetime | None:
        """Earliest ``not_after`` of an active grant."""
        due = [g.not_after for g in self._s.grants.values() if g.status is GrantStatus.ACTIVE]
        return min(due) if due else None

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

    def audit_head(self) -> tuple[int, str] | None:
        """The head ``(seq, hash)``."""
        return self._s.head


class FakeProvider:
    """:class:`keyturn.ports.Provider` holding privileges in a set; failures can be injected.

    Attributes:
        held: grant ids whose privilege is currently present.
        fail_grant / fail_revoke: when set, the next calls raise a retryable ProviderError.
        revoke_is_silent: when set, ``revoke`` "succeeds" but leaves the privilege in place, as a
            buggy script would; verification must catch it.
    """

    def __init__(self, name: str = "ssh") -> None:
        self.name = name
        self.held: set[str] = set()
        self.fail_grant = False
        self.fail_revoke = False
        self.revoke_is_silent = False
        self.calls: list[tuple[str, str]] = []

    def grant(self, grant: Grant, request: AccessRequest) -> dict[str, str]:
        """Add the privilege (idempotent)."""
        self.calls.append(("grant", grant.id))
        if self.fail_grant:
            raise ProviderError("fake provider: grant failed", retryable=True)
        self.held.add(grant.id)
        return {"fake_credential": f"cred-{grant.id}"}

    def verify_granted(self, grant: Grant) -> bool:
        """Present?"""
        return grant.id in self.held

    def revoke(self, grant: Grant, now: datetime) -> None:
        """Remove the privilege (idempotent)."""
        self.calls.append(("revoke", grant.id))
        if self.fail_revoke:
            raise ProviderError("fake provider: revoke failed", retryable=True)
        if not self.revoke_is_silent:
            self.held.discard(grant.id)

    def verify_revoked(self, grant: Grant, now: datetime) -> bool:
        """Gone?"""
        return grant.id not in self.held
