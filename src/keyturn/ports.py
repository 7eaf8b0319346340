"""Ports: the small interfaces between Keyturn's services and the world.

Each port has a real adapter (``keyturn.adapters``) and an in-memory fake
(``keyturn.testing``) that pass the same contract tests (``tests/contract``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Protocol

from keyturn.domain.audit import AuditDraft, AuditEvent
from keyturn.domain.model import (
    AccessRequest,
    Grant,
    GrantStatus,
    RequestStatus,
    Review,
)


class Clock(Protocol):
    """The only source of the current time."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""


class Provider(Protocol):
    """Grants and revokes one kind of privilege on a real system.

    Every method is idempotent: granting what is present, or revoking what is gone, succeeds.
    Failures raise :class:`~keyturn.domain.errors.ProviderError` with ``retryable`` set.
    """

    name: str

    def grant(self, grant: Grant, request: AccessRequest) -> dict[str, str]:
        """Create the privilege; return the credentials handed to the requester (no secrets
        that must not be stored: an SSH certificate is public data)."""

    def verify_granted(self, grant: Grant) -> bool:
        """Read the real system back: is the privilege observably there?"""

    def revoke(self, grant: Grant, now: datetime) -> None:
        """Take the privilege away (or make sure it is gone)."""

    def verify_revoked(self, grant: Grant, now: datetime) -> bool:
        """Read the real system back: is the privilege observably gone?"""


class StoreTx(Protocol):
    """One transaction on the store. Reads with ``lock=True`` hold the row until commit."""

    def add_request(self, request: AccessRequest) -> None:
        """Insert a new access request."""

    def get_request(self, request_id: str, *, lock: bool = False) -> AccessRequest:
        """The request. Raises NotFound."""

    def save_request(self, request: AccessRequest) -> None:
        """Update an existing request (status, updated_at)."""

    def list_requests(
        self,
        *,
        status: RequestStatus | None = None,
        requester_id: str | None = None,
        limit: int = 100,
    ) -> list[AccessRequest]:
        """Newest first."""

    def add_review(self, review: Review) -> None:
        """Insert a review. Raises Conflict if this reviewer already reviewed the request."""

    def reviews(self, request_id: str) -> list[Review]:
        """The request's reviews, oldest first."""

    def add_grant(self, grant: Grant) -> None:
        """Insert a new grant."""

    def get_grant(self, grant_id: str, *, lock: bool = False) -> Grant:
        """The grant. Raises NotFound."""

    def save_grant(self, grant: Grant) -> None:
        """Update an existing grant."""

    def grant_for_request(self, request_id: str) -> Grant | None:
        """The grant created from this request, if any."""

    def list_grants(
        self,
        *,
        status: GrantStatus | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[Grant]:
        """Newest first."""

    def claim_due_grants(self, now: datetime, limit: int) -> list[Grant]:
        """Active grants with ``not_after <= now``, locked so no other instance takes them."""

    def claim_grants_in(self, states: Sequence[GrantStatus], limit: int) -> list[Grant]:
        """Grants in any of ``states`` (for reconciliation), locked like ``claim_due_grants``."""

    def next_due_at(self) -> datetime | None:
        """The earliest ``not_after`` of an active grant."""

    def early_revoked_serials(self, now: datetime) -> list[int]:
        """Serials of credentials ended before their window closed whose window is still open."""

    def append_audit(self, draft: AuditDraft) -> AuditEvent:
        """Append to the hash chain (serialised across instances)."""

    def audit_events(self, *, after_seq: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Events in sequence order."""

    def iter_audit(self, batch: int = 5000) -> Iterator[AuditEvent]:
        """All events in sequence order, read in batches."""

    def audit_head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the last event as recorded in the head row."""


class Store(Protocol):
    """A transactional store."""

    def transaction(self) -> AbstractContextManager[StoreTx]:
        """Commit on normal exit, roll back on exception."""
