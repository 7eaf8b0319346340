"""Access requests, reviews and grants, and their state machines (see DESIGN.md, "Lifecycles").

Pure data and pure functions: no I/O, no clock reads. Every time is an aware UTC ``datetime``
passed in by the caller. Every transition is explicit; any transition not in the tables below
raises :class:`~keyturn.domain.errors.Conflict` -- never a silent no-op.

Access request: ``pending → approved | denied | cancelled | expired``; an auto-approved request
goes straight to ``approved``; a request denied by policy is created ``denied``. A request with a
later start (``start_at``) becomes ``scheduled`` instead of ``approved`` and, at its start,
``approved`` (eligibility and policy evaluated again) or ``denied``; it can be cancelled until then.

Grant: ``provisioning → active → revoking → revoked``, with ``revoke_failed`` between ``revoking``
and ``revoked`` while retries continue, and ``provisioning → failed`` when the provider could not
grant. Each state is written to the store before the provider is called (write-ahead).
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from keyturn.domain.errors import Conflict


class RequestStatus(enum.StrEnum):
    """State of an access request."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    APPROVED = "approved"
    DENIED = "denied"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class GrantStatus(enum.StrEnum):
    """State of a grant (DESIGN.md: provisioning → active → revoking → revoked)."""

    PROVISIONING = "provisioning"
    ACTIVE = "active"
    REVOKING = "revoking"
    REVOKE_FAILED = "revoke_failed"
    REVOKED = "revoked"
    FAILED = "failed"


class EndReason(enum.StrEnum):
    """Why a grant ended: the window closed, the requester released it, or it was revoked."""

    EXPIRED = "expired"
    RELEASED = "released"
    REVOKED = "revoked"


class Outcome(enum.StrEnum):
    """A policy decision's outcome."""

    AUTO_APPROVE = "auto_approve"
    REQUIRE_APPROVAL = "require_approval"
    DENY = "deny"


class Verdict(enum.StrEnum):
    """One reviewer's verdict."""

    APPROVE = "approve"
    DENY = "deny"


REQUEST_TRANSITIONS: dict[RequestStatus, frozenset[RequestStatus]] = {
    RequestStatus.PENDING: frozenset(
        {
            RequestStatus.SCHEDULED,
            RequestStatus.APPROVED,
            RequestStatus.DENIED,
            RequestStatus.CANCELLED,
            RequestStatus.EXPIRED,
        }
    ),
    RequestStatus.SCHEDULED: frozenset(
        {RequestStatus.APPROVED, RequestStatus.DENIED, RequestStatus.CANCELLED}
    ),
    RequestStatus.APPROVED: frozenset(),
    RequestStatus.DENIED: frozenset(),
    RequestStatus.CANCELLED: frozenset(),
    RequestStatus.EXPIRED: frozenset(),
}

GRANT_TRANSITIONS: dict[GrantStatus, frozenset[GrantStatus]] = {
    GrantStatus.PROVISIONING: frozenset({GrantStatus.ACTIVE, GrantStatus.FAILED}),
    GrantStatus.ACTIVE: frozenset({GrantStatus.REVOKING}),
    GrantStatus.REVOKING: frozenset({GrantStatus.REVOKED, GrantStatus.REVOKE_FAILED}),
    GrantStatus.REVOKE_FAILED: frozenset({GrantStatus.REVOKED, GrantStatus.REVOKE_FAILED}),
    GrantStatus.REVOKED: frozenset(),
    GrantStatus.FAILED: frozenset(),
}


@dataclass(frozen=True)
class Approvers:
    """Who may review a request: user ids and group names (either may be empty)."""

    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def includes(self, user_id: str, user_groups: tuple[str, ...]) -> bool:
        """True if the user is named, or is in one of the groups."""
        return user_id in self.users or bool(set(user_groups) & set(self.groups))


@dataclass(frozen=True)
class Decision:
    """The policy's answer, with the rule that matched and the facts it used.

    Attributes:
        outcome: auto_approve, require_approval or deny.
        rule: the name of the matching rule, or a reserved name (``eligibility``, ``default-deny``).
        reasons: sentences for people, e.g. why a request was denied.
        facts: the fact set the rules were evaluated against (JSON-serialisable).
        approvals: distinct approvals needed (require_approval only).
        approvers: who may approve (require_approval only).
        trace: one entry per rule evaluated, in order: ``{rule, matched, error?}``.
    """

    outcome: Outcome
    rule: str
    reasons: tuple[str, ...]
    facts: dict[str, Any] = field(default_factory=dict)
    approvals: int = 0
    approvers: Approvers = Approvers()
    trace: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class AccessRequest:
    """A requester's ask: role on target for a duration, with a justification."""

    id: str
    requester_id: str
    role: str
    target: str
    duration: timedelta
    justification: str
    ticket: str | None
    ssh_public_key: str | None
    status: RequestStatus
    decision: Decision
    created_at: datetime
    updated_at: datetime
    start_at: datetime | None = None
    break_glass: bool = False

    def review_deadline(self, ttl: timedelta) -> datetime:
        """When a pending request expires unreviewed: ``ttl`` after it was made, or at its
        scheduled start if that is later (reviewers may answer until then)."""
        deadline = self.created_at + ttl
        return max(deadline, self.start_at) if self.start_at is not None else deadline

    def transition(self, to: RequestStatus, now: datetime) -> AccessRequest:
        """Return the request in state ``to``.

        Raises:
            Conflict: ``to`` is not reachable from the current state.
        """
        if to not in REQUEST_TRANSITIONS[self.status]:
            raise Conflict(
                f"access request {self.id} is {self.status}; it cannot become {to}",
                request_id=self.id,
                state=str(self.status),
            )
        return dataclasses.replace(self, status=to, updated_at=now)


@dataclass(frozen=True)
class Review:
    """One reviewer's verdict on a pending access request."""

    id: str
    request_id: str
    reviewer_id: str
    verdict: Verdict
    comment: str | None
    created_at: datetime


@dataclass(frozen=True)
class Grant:
    """An active, time-bound privilege created from an approved access request.

    ``not_before``/``not_after`` are aware UTC datetimes; the duration clock starts at activation.
    ``serial`` is the provider's credential serial (SSH certificate serial), when there is one;
    every certificate of the grant (extensions included) carries it.
    ``privilege`` names the shared thing granted when several grants can hold the same one (the
    normalised group DN for ``ldap``); None when each grant's privilege is its own (SSH).
    ``credentials`` holds what the requester receives (e.g. ``ssh_certificate``); never secrets.
    ``retry_at`` is when a ``revoke_failed`` grant is next retried.
    ``warned_at`` is when its holder was told it is expiring soon (None: not yet).
    ``break_glass`` marks emergency access that skipped review (shown wherever grants are).
    """

    id: str
    request_id: str
    user_id: str
    role: str
    target: str
    provider: str
    status: GrantStatus
    not_before: datetime
    not_after: datetime
    created_at: datetime
    updated_at: datetime
    serial: int | None = None
    credentials: dict[str, str] = field(default_factory=dict)
    end_reason: EndReason | None = None
    ended_by: str | None = None
    ended_at: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    privilege: str | None = None
    retry_at: datetime | None = None
    warned_at: datetime | None = None
    break_glass: bool = False

    def transition(self, to: GrantStatus, now: datetime, **changes: Any) -> Grant:
        """Return the grant in state ``to`` with ``changes`` applied.

        Raises:
            Conflict: ``to`` is not reachable from the current state.
        """
        if to not in GRANT_TRANSITIONS[self.status]:
            raise Conflict(
                f"grant {self.id} is {self.status}; it cannot become {to}",
                grant_id=self.id,
                state=str(self.status),
            )
        return dataclasses.replace(self, status=to, updated_at=now, **changes)

    def ends_early(self, now: datetime) -> bool:
        """True when ending the grant now is before its window closes (needs a KRL entry)."""
        return now < self.not_after


LIVE_GRANT_STATES = frozenset({GrantStatus.PROVISIONING, GrantStatus.ACTIVE})
"""States in which a grant holds (or is about to hold) its privilege."""

ENDED_GRANT_STATES = frozenset(
    {GrantStatus.REVOKING, GrantStatus.REVOKE_FAILED, GrantStatus.REVOKED}
)
"""States of a grant that was active and has ended. (A ``failed`` grant never became active; it
takes back what it may have added before it is committed, and alerts if it cannot.)"""


@dataclass(frozen=True)
class StandingSnapshot:
    """Who held a managed privilege without a grant at one moment (``keyturn report standing``).

    ``members`` are the holders' identities as the provider names them (normalised DNs for LDAP).
    """

    taken_at: datetime
    provider: str
    privilege: str
    members: tuple[str, ...]


def quorum_reached(required: int, reviews: list[Review]) -> bool:
    """True when ``required`` distinct reviewers approved (duplicates count once)."""
    return len({r.reviewer_id for r in reviews if r.verdict is Verdict.APPROVE}) >= required


def decision_to_data(decision: Decision) -> dict[str, Any]:
    """A decision as JSON-safe data (stored with the request, shown by API and CLI)."""
    return {
        "outcome": str(decision.outcome),
        "rule": decision.rule,
        "reasons": list(decision.reasons),
        "facts": decision.facts,
        "approvals": decision.approvals,
        "approvers": {
            "users": list(decision.approvers.users),
            "groups": list(decision.approvers.groups),
        },
        "trace": list(decision.trace),
    }


def decision_from_data(data: dict[str, Any]) -> Decision:
    """Inverse of :func:`decision_to_data`."""
    approvers = data.get("approvers") or {}
    return Decision(
        outcome=Outcome(data["outcome"]),
        rule=data["rule"],
        reasons=tuple(data.get("reasons", ())),
        facts=data.get("facts", {}),
        approvals=int(data.get("approvals", 0)),
        approvers=Approvers(
            users=tuple(approvers.get("users", ())), groups=tuple(approvers.get("groups", ()))
        ),
        trace=tuple(data.get("trace", ())),
    )
