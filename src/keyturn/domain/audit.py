"""The audit chain: canonical form and hash-chain maths (no I/O).

Each audit event is hashed as SHA-256 over the RFC 8785 (JSON Canonicalization Scheme) form of::

    {"seq": int, "at": "RFC 3339 UTC, microseconds", "actor": str, "action": str,
     "subject": {str: str}, "details": {...}, "prev": "hex SHA-256 of the previous event"}

The first event's ``prev`` is :data:`GENESIS`. Changing any field of any event, deleting or
inserting an event, or reordering events breaks either the sequence or a hash link, and
:func:`verify_chain` names the first sequence number where that shows. The store also keeps the
chain head (last seq and hash) in its own row, so a deleted tail is detected too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import rfc8785

GENESIS = "0" * 64


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z`` suffix (the only time form that is hashed)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class AuditDraft:
    """An audit event before it has a place in the chain.

    Attributes:
        at: aware UTC time of the event.
        actor: the user id, or ``system:<component>`` for Keyturn itself.
        action: dotted name, e.g. ``request.created``, ``grant.revoked``.
        subject: ids the event is about, e.g. ``{"request_id": …, "grant_id": …}``.
        details: JSON-serialisable context: strings, booleans, lists, maps and integers within
            the I-JSON safe range |n| ≤ 2**53 - 1 (RFC 7493 §2.2, required by RFC 8785); larger
            numbers such as certificate serials are recorded as strings. No floats.
    """

    at: datetime
    actor: str
    action: str
    subject: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuditEvent:
    """An audit event in the chain."""

    seq: int
    at: datetime
    actor: str
    action: str
    subject: dict[str, str]
    details: dict[str, Any]
    prev_hash: str
    hash: str


def canonical_bytes(seq: int, draft: AuditDraft, prev_hash: str, *, at: str | None = None) -> bytes:
    """The RFC 8785 canonical JSON that is hashed for one event."""
    return rfc8785.dumps(
        {
            "seq": seq,
            "at": at if at is not None else format_time(draft.at),
            "actor": draft.actor,
            "action": draft.action,
            "subject": draft.subject,
            "details": draft.details,
            "prev": prev_hash,
        }
    )


def chain(seq: int, draft: AuditDraft, prev_hash: str) -> AuditEvent:
    """Place ``draft`` at ``seq`` after an event whose hash is ``prev_hash``."""
    digest = hashlib.sha256(canonical_bytes(seq, draft, prev_hash)).hexdigest()
    return AuditEvent(
        seq=seq,
        at=draft.at,
        actor=draft.actor,
        action=draft.action,
        subject=dict(draft.subject),
        details=dict(draft.details),
        prev_hash=prev_hash,
        hash=digest,
    )


def event_hash(event: AuditEvent) -> str:
    """Recompute an event's hash from its fields (ignores the stored ``hash``)."""
    draft = AuditDraft(event.at, event.actor, event.action, event.subject, event.details)
    return hashlib.sha256(canonical_bytes(event.seq, draft, event.prev_hash)).hexdigest()


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_chain`.

    Attributes:
        ok: True if every event and the head verify.
        count: events checked.
        first_bad_seq: the first sequence number that does not verify (None when ok).
        reason: why it does not verify (None when ok).
        head_hash: hash of the last event checked.
    """

    ok: bool
    count: int
    first_bad_seq: int | None = None
    reason: str | None = None
    head_hash: str = GENESIS


def verify_chain(events: Iterable[AuditEvent], head: tuple[int, str] | None = None) -> VerifyResult:
    """Check sequence, links and hashes of ``events`` (in stored order), then the head.

    Args:
        events: the chain as stored, ordered by sequence number.
        head: ``(seq, hash)`` of the last event as recorded separately by the store, if any.
    """
    expected_seq, prev, count = 1, GENESIS, 0
    for event in events:
        count += 1
        if event.seq != expected_seq:
            reason = "an event is missing" if event.seq > expected_seq else "events out of order"
            return VerifyResult(False, count, expected_seq, reason, prev)
        if event.prev_hash != prev:
            return VerifyResult(False, count, event.seq, "link to the previous event broken", prev)
        if event_hash(event) != event.hash:
            return VerifyResult(False, count, event.seq, "event content was changed", prev)
        prev, expected_seq = event.hash, expected_seq + 1
    last_seq = expected_seq - 1
    if head is not None and (head[0] != last_seq or head[1] != prev):
        return VerifyResult(
            False, count, min(head[0], last_seq) + 1, "the chain head does not match", prev
        )
    return VerifyResult(True, count, None, None, prev)
