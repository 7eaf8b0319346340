"""Ports: the small interfaces between Keyturn's services and the world.

Each port has a real adapter (``keyturn.adapters``) and an in-memory fake
(``keyturn.testing``) that pass the same contract tests (``tests/contract``).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from keyturn.config import TargetConfig
from keyturn.domain.alerts import AlertState
from keyturn.domain.audit import AuditDraft, AuditEvent, StoredEvent
from keyturn.domain.break_glass import KitInfo, PostIncidentReview, ReviewStatus
from keyturn.domain.model import (
    AccessRequest,
    Grant,
    GrantStatus,
    RequestStatus,
    Review,
    StandingSnapshot,
)
from keyturn.domain.sessions import Session, SessionStatus


class Clock(Protocol):
    """The only source of the current time."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""


@dataclass(frozen=True)
class Granted:
    """What a provider's ``grant`` did.

    Attributes:
        credentials: handed to the requester and stored (public data only, e.g. an SSH
            certificate or the group DN); never a secret.
        already_present: the privilege was there before this call (recorded in the audit event).
    """

    credentials: dict[str, str]
    already_present: bool = False


class Provider(Protocol):
    """Grants and revokes one kind of privilege on a real system.

    Every method is idempotent: granting what is present, or revoking what is gone, succeeds.
    Failures raise :class:`~keyturn.domain.errors.ProviderError` with ``retryable`` set.
    """

    name: str

    def privilege(self, role: str, target: str) -> str | None:
        """The shared privilege a grant of ``role`` on ``target`` holds (no I/O), or None when
        every grant holds its own (SSH certificates). Grants of one user with the same privilege
        overlap: it stays until the last of them ends."""

    def check(self) -> None:
        """Readiness: can the provider reach and authenticate to its system? Raises
        ProviderError saying why not."""

    def grant(self, grant: Grant, request: AccessRequest) -> Granted:
        """Create the privilege (idempotent) and say what was done."""

    def verify_granted(self, grant: Grant) -> bool:
        """Read the real system back: is the privilege observably there?"""

    def extend(self, grant: Grant, request: AccessRequest) -> dict[str, str]:
        """The grant's window was lengthened (``grant.not_after`` is the new end): return the
        credentials for the new window without any gap in access (a new SSH certificate; for a
        group membership, the unchanged credentials)."""

    def revoke(self, grant: Grant, now: datetime) -> bool:
        """Take the privilege away (or make sure it is gone). Returns True if it was already
        gone before this call."""

    def verify_revoked(self, grant: Grant, now: datetime) -> bool:
        """Read the real system back: is the privilege observably gone?"""


@dataclass(frozen=True)
class Holdings:
    """Who holds one managed privilege on the real system right now.

    Attributes:
        privilege: the privilege (as :meth:`Provider.privilege` names it).
        members: holders by identity (normalised DN for LDAP).
        allowed: identities that may hold it without a grant (service, break-glass accounts).
        enforce: remove holders without a grant (else only report them).
    """

    privilege: str
    members: frozenset[str]
    allowed: frozenset[str]
    enforce: bool


@runtime_checkable
class ManagedPrivileges(Protocol):
    """A provider whose privileges can be listed and compared with grants (reconciliation)."""

    name: str

    def holdings(self) -> list[Holdings]:
        """Read every managed privilege's holders from the real system."""

    def identity(self, user_id: str) -> str | None:
        """The identity under which a Keyturn user appears in ``Holdings.members`` (None if the
        user is not in the system)."""

    def remove_holder(self, privilege: str, identity: str) -> bool:
        """Take ``privilege`` from ``identity``; True if it was already gone."""

    def add_holder(self, privilege: str, identity: str) -> bool:
        """Give ``privilege`` to ``identity``; True if it was already there."""


@runtime_checkable
class DirectoryPasswords(Protocol):
    """Sets and checks an emergency directory account's password (break-glass kit rotation)."""

    def set_password(self, dn: str, password: str) -> None:
        """Replace the password of ``dn`` (RFC 3062). Raises ProviderError."""

    def check_password(self, dn: str, password: str) -> bool:
        """True if a bind as ``dn`` with ``password`` succeeds. Raises ProviderError when the
        directory cannot be asked."""


@dataclass(frozen=True)
class Recipient:
    """A person a notification is for: their immutable id, display name and e-mail (if known)."""

    user_id: str
    name: str
    email: str | None


@dataclass(frozen=True)
class Notification:
    """A message for people about one access request or grant.

    Attributes:
        event: ``review.needed``, ``request.decided``, ``request.expired``, ``grant.activated``,
            ``grant.expiring``, ``grant.ended``, ``break_glass.used`` or
            ``break_glass.review_overdue``.
        recipients: who it is for (never empty when sent).
        subject: one line, no secrets.
        text: a few plain-text lines for people.
        data: JSON-safe details for machines: ``request_id``, ``grant_id``, ``role``,
            ``target``, ``requester``, times as RFC 3339 strings, …
    """

    event: str
    recipients: tuple[Recipient, ...]
    subject: str
    text: str
    data: dict[str, Any]


class Notifier(Protocol):
    """Tells people: operational alerts (a revocation failing) and notifications about access
    requests and grants (review needed, decided, activated, expiring, ended).

    Adapters: log, JSON webhook, e-mail; chat adapters plug in here later. Neither method may
    raise or block for long: delivery happens in the background and failures are logged.
    """

    def alert(self, event: str, summary: str, details: dict[str, str]) -> None:
        """Send an operational alert (for operators, not a particular user)."""

    def notify(self, notification: Notification) -> None:
        """Send a notification to its recipients."""


class OnCall(Protocol):
    """Who is on call right now, per schedule (:mod:`keyturn.service.oncall`)."""

    def on_call(self, user_id: str, target: TargetConfig) -> tuple[str, ...]:
        """Names of the schedules covering ``target`` on which ``user_id`` is on call now; a
        source that failed for longer than it may stay stale contributes nothing."""

    def status(self) -> dict[str, dict[str, object]]:
        """Per schedule: ``{state: ok|stale|failed, last_success, error, warnings}``."""


@dataclass(frozen=True)
class StoredAlert:
    """An alert as kept in the store, with the targets it was mapped to when received."""

    alert: AlertState
    targets: tuple[str, ...]


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

    def save_grants(self, grants: Sequence[Grant]) -> None:
        """Update existing grants (one statement for a batch). Raises NotFound if one is
        missing."""

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

    def claim_unfinished(self, now: datetime, stale_before: datetime, limit: int) -> list[Grant]:
        """Grants to finish, locked like ``claim_due_grants``: ``provisioning``/``revoking`` rows
        last updated at or before ``stale_before`` (interrupted) and ``revoke_failed`` rows whose
        ``retry_at`` has come; least recently updated first."""

    def next_due_at(self) -> datetime | None:
        """The earliest ``not_after`` of an active grant, ``retry_at`` of a revoke_failed one or
        ``start_at`` of a scheduled request."""

    def due_scheduled(self, now: datetime, limit: int) -> list[AccessRequest]:
        """Scheduled requests whose ``start_at`` ≤ ``now``, earliest first; locked so that two
        workers never start the same one."""

    def count_requests(self, requester_id: str, role: str, since: datetime) -> int:
        """How many access requests this requester made for this role since ``since``."""

    def grants_since(
        self, since: datetime, *, user_id: str | None = None, role: str | None = None
    ) -> list[Grant]:
        """Grants (any state) whose window ends after ``since``, oldest first."""

    def claim_expiring(self, before: datetime, limit: int) -> list[Grant]:
        """Active grants with ``not_after`` ≤ ``before`` and no expiry warning sent yet; locked."""

    def save_alert(
        self, alert: AlertState, targets: tuple[str, ...], received_at: datetime
    ) -> None:
        """Insert or replace an alert (by fingerprint) and the targets it is mapped to."""

    def alerts(
        self, *, target: str | None = None, firing_only: bool = False, limit: int = 1000
    ) -> list[StoredAlert]:
        """Stored alerts (of one target), most recently received first."""

    def add_kit(self, kit: KitInfo) -> None:
        """Insert a break-glass kit's public description. Raises Conflict if its id exists."""

    def get_kit(self, kit_id: str) -> KitInfo:
        """The kit. Raises NotFound."""

    def save_kit(self, kit: KitInfo) -> None:
        """Update a kit's ``spent_at``/``spent_by``/``retired_at``."""

    def kits(self) -> list[KitInfo]:
        """Every kit, newest first."""

    def add_post_incident_review(self, review: PostIncidentReview) -> None:
        """Insert a review. Raises Conflict if its id or ``record_id`` exists."""

    def get_post_incident_review(self, review_id: str, *, lock: bool = False) -> PostIncidentReview:
        """The review. Raises NotFound."""

    def save_post_incident_review(self, review: PostIncidentReview) -> None:
        """Update an existing review."""

    def post_incident_reviews(
        self, *, status: ReviewStatus | None = None, limit: int = 1000
    ) -> list[PostIncidentReview]:
        """Reviews (of one status), newest first."""

    def review_for_record(self, record_id: str) -> PostIncidentReview | None:
        """The review opened when the offline record ``record_id`` was imported, if any."""

    def claim_overdue_reviews(self, now: datetime, limit: int) -> list[PostIncidentReview]:
        """Open reviews with ``due_at`` ≤ ``now`` not yet alerted as overdue; locked."""

    def add_session(self, session: Session) -> None:
        """Insert a gateway session. Raises Conflict if its id exists."""

    def get_session(self, session_id: str) -> Session:
        """The session. Raises NotFound."""

    def save_session(self, session: Session) -> None:
        """Update an existing session (its end, exit status and recording hash)."""

    def list_sessions(
        self,
        *,
        grant_id: str | None = None,
        user_id: str | None = None,
        status: SessionStatus | None = None,
        limit: int = 100,
    ) -> list[Session]:
        """Sessions matching every filter given, newest first."""

    def grants_holding(
        self, provider: str, privilege: str, *, user_id: str | None = None
    ) -> list[Grant]:
        """Live (provisioning/active) grants of ``privilege``, optionally of one user."""

    def ended_holders(self, provider: str, privilege: str) -> set[str]:
        """User ids that held ``privilege`` through a grant that was active and has ended
        (``revoking``, ``revoke_failed``, ``revoked``)."""

    def grant_counts(self) -> dict[GrantStatus, int]:
        """How many grants are in each state."""

    def add_standing_snapshot(self, snapshot: StandingSnapshot) -> None:
        """Record a standing-privilege snapshot."""

    def standing_snapshots(self, *, since: datetime | None = None) -> list[StandingSnapshot]:
        """Snapshots, oldest first."""

    def early_revoked_serials(self, now: datetime) -> list[int]:
        """Serials of credentials ended before their window closed whose window is still open."""

    def append_audit(self, draft: AuditDraft) -> AuditEvent:
        """Append to the hash chain (serialised across instances)."""

    def audit_events(self, *, after_seq: int = 0, limit: int | None = None) -> list[AuditEvent]:
        """Events in sequence order."""

    def iter_audit(self, batch: int = 5000) -> Iterator[AuditEvent]:
        """All events in sequence order, read in batches."""

    def iter_audit_rows(self, batch: int = 5000) -> Generator[StoredEvent, None, None]:
        """All events as stored (time as text, subject and details as JSON text), in sequence
        order, streamed: what ``keyturn audit verify`` hashes."""

    def audit_head(self) -> tuple[int, str] | None:
        """``(seq, hash)`` of the last event as recorded in the head row."""


class Store(Protocol):
    """A transactional store."""

    def transaction(self) -> AbstractContextManager[StoreTx]:
        """Commit on normal exit, roll back on exception."""

    def snapshot(self) -> AbstractContextManager[StoreTx]:
        """A read-only transaction: always rolled back, so a write in it is lost. It does not
        take the store's write lock (SQLite: a deferred ``BEGIN``, concurrent with the writer
        in WAL mode), so reads do not queue behind writers."""
