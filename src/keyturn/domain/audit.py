"""The audit chain: canonical form and hash-chain maths (no I/O).

Each audit event is hashed as SHA-256 over the RFC 8785 (JSON Canonicalization Scheme) form of::

    {"seq": int, "at": "RFC 3339 UTC, microseconds", "actor": str, "action": str,
     "subject": {str: str}, "details": {...}, "prev": "hex SHA-256 of the previous event"}

The first event's ``prev`` is :data:`GENESIS`. Changing any field of any event, deleting or
inserting an event, or reordering events breaks either the sequence or a hash link, and
:func:`verify_chain` names the first sequence number where that shows. The store also keeps the
chain head (last seq and hash) in its own row, so a deleted tail is detected too.

Verifying events as stored (:func:`verify_stored`, what ``keyturn audit verify`` runs) takes a
fast path first: the stored JSON is decoded and re-encoded with the standard library's C encoder
(sorted keys, no spaces, UTF-8), which gives exactly the RFC 8785 bytes for what Keyturn records
(strings, booleans, null, safe integers, lists, maps, the usual floats). An event whose fast form
hashes to the stored hash is intact: equal SHA-256 means equal bytes, and the fast form is a
faithful JSON text of the stored event, so the stored event is the one that was hashed. Anything
else (a changed event, or an exotic one: keys ordered differently in UTF-16, floats such as
``1e-05``) is decided by the RFC 8785 library exactly as :func:`verify_chain` decides it.
"""

from __future__ import annotations

import hashlib
import json
import marshal
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import rfc8785

GENESIS = "0" * 64
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z`` suffix (the only time form that is hashed)."""
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    """The aware UTC time of a :func:`format_time` text.

    Raises:
        ValueError: ``text`` is not in that form.
    """
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)


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


# --- verifying the chain as stored -----------------------------------------------------------
StoredEvent = tuple[int, str, str, str, str, str, str, str]
"""An event as the store keeps it: ``(seq, at, actor, action, subject, details, prev_hash,
hash)``, with ``at`` as :func:`format_time` text and ``subject``/``details`` as JSON text."""

_SAFE = 2**53  # RFC 8785 (I-JSON) integers: |n| <= 2**53 - 1
_PLAIN = 1e16  # Python writes floats from here on with an exponent, RFC 8785 from 1e21 on


def _json_int(text: str) -> int:
    """Integers RFC 8785 refuses (|n| >= 2**53) send the event to the RFC 8785 path."""
    n = int(text)
    if -_SAFE < n < _SAFE:
        return n
    raise ValueError(f"{text} is not a safe integer")


def _json_float(text: str) -> int | float:
    """Integral values below 1e16 become ints: RFC 8785 writes 2.0 as ``2`` and -0.0 as ``0``
    (below 1e16 a double's shortest round-trip digits are its exact integer digits), Python as
    ``2.0`` and ``-0.0``. Other floats stay floats: Python's shortest round-trip form equals
    RFC 8785's for 1e-4 <= |x| < 1e16, and differs outside (``1e-05``, ``1e+16``), which sends
    the event to the RFC 8785 path."""
    value = float(text)
    if value.is_integer() and -_PLAIN < value < _PLAIN:
        return int(value)
    return value


_DECODER = json.JSONDecoder(parse_float=_json_float, parse_int=_json_int)
_ENCODER = json.JSONEncoder(
    ensure_ascii=False,
    check_circular=False,
    allow_nan=False,
    sort_keys=True,
    separators=(",", ":"),
)


def _json_value(text: str) -> Any:
    """The one JSON value ``text`` holds (ValueError if it holds anything else)."""
    value, end = _DECODER.raw_decode(text)
    if end != len(text):
        raise ValueError("trailing data")
    return value


def fast_canonical_bytes(row: StoredEvent) -> bytes:
    """The RFC 8785 bytes of a stored event for what Keyturn records, by the stdlib C encoder.

    Equal to :func:`canonical_bytes` of the decoded event except for keys whose UTF-16 order
    differs from their code point order (a character U+E000-U+FFFF against one above U+FFFF)
    and non-integral floats outside 1e-4 <= |x| < 1e16: there a hash computed over RFC 8785
    bytes simply does not match, and :func:`stored_event_intact` asks the RFC 8785 library.

    Raises:
        ValueError: the stored JSON is not one JSON value, holds an unsafe integer, NaN or
            infinity, or a string that is not valid Unicode (a lone surrogate).
    """
    seq, at, actor, action, subject, details, prev_hash, _ = row
    text = _ENCODER.encode(
        {
            "seq": seq,
            "at": at,
            "actor": actor,
            "action": action,
            "subject": _json_value(subject),
            "details": _json_value(details),
            "prev": prev_hash,
        }
    )
    return text.encode()  # UnicodeEncodeError (a ValueError) on lone surrogates


def stored_event(row: StoredEvent) -> AuditEvent:
    """The event a stored row holds, decoded as the store decodes it.

    Raises:
        ValueError: the time or the JSON cannot be read.
    """
    seq, at, actor, action, subject, details, prev_hash, digest = row
    return AuditEvent(
        seq,
        parse_time(at),
        actor,
        action,
        json.loads(subject),
        json.loads(details),
        prev_hash,
        digest,
    )


def stored_event_intact(row: StoredEvent) -> bool:
    """Does the stored event hash to its stored hash? The same answer as :func:`event_hash` of
    the decoded event (False where that raises), usually without the RFC 8785 library."""
    try:
        if hashlib.sha256(fast_canonical_bytes(row)).hexdigest() == row[7]:
            return True
    except (ValueError, TypeError, RecursionError):
        pass
    try:
        return event_hash(stored_event(row)) == row[7]
    except (ValueError, TypeError, RecursionError):
        return False  # unreadable, or outside RFC 8785's domain: never what was appended


def first_changed(rows: Sequence[StoredEvent]) -> tuple[int, str] | None:
    """``(seq, prev_hash)`` of the first of ``rows`` whose content does not match its hash."""
    for row in rows:
        if not stored_event_intact(row):
            return row[0], row[6]
    return None


def first_changed_marshalled(rows: bytes) -> tuple[int, str] | None:
    """:func:`first_changed` of rows sent to a worker process as ``marshal`` data."""
    return first_changed(marshal.loads(rows))  # noqa: S302 (the verifying process's own data)


BatchCheck = Callable[[Iterator[list[StoredEvent]]], Iterator[tuple[int, str] | None]]
"""Applies :func:`first_changed` to each batch, yielding the results in batch order (``map``,
or a process pool with a bounded number of batches in flight)."""


def verify_stored(
    rows: Iterable[StoredEvent],
    head: tuple[int, str] | None = None,
    *,
    batch: int = 2000,
    check: BatchCheck | None = None,
) -> VerifyResult:
    """:func:`verify_chain` over events as stored, with the same result for the same events.

    Sequence numbers and links are checked here, in order; each event's hash is checked by
    :func:`first_changed` over batches of ``batch`` events, through ``check`` (default: in this
    process). Batches are only ever handed over up to the first broken sequence number or link,
    and their results are taken in order, so the first bad seq reported is the lowest.
    """
    broken: list[VerifyResult] = []
    last = [(0, GENESIS)]  # seq and hash of the last event whose sequence and link are right

    def linked() -> Iterator[list[StoredEvent]]:
        expected_seq, prev, it = 1, GENESIS, iter(rows)
        while part := list(islice(it, batch)):
            for i, row in enumerate(part):
                seq = row[0]
                if seq != expected_seq or row[6] != prev:
                    reason = (
                        "link to the previous event broken"
                        if seq == expected_seq
                        else "an event is missing"
                        if seq > expected_seq
                        else "events out of order"
                    )
                    broken.append(VerifyResult(False, expected_seq, expected_seq, reason, prev))
                    if i:
                        yield part[:i]
                    return
                prev, expected_seq = row[7], expected_seq + 1
            last[0] = (expected_seq - 1, prev)
            yield part

    for changed in (check or _map_first_changed)(linked()):
        if changed is not None:
            seq, prev_hash = changed
            return VerifyResult(False, seq, seq, "event content was changed", prev_hash)
    if broken:
        return broken[0]
    last_seq, prev = last[0]
    if head is not None and (head[0] != last_seq or head[1] != prev):
        return VerifyResult(
            False, last_seq, min(head[0], last_seq) + 1, "the chain head does not match", prev
        )
    return VerifyResult(True, last_seq, None, None, prev)


def _map_first_changed(
    batches: Iterator[list[StoredEvent]],
) -> Iterator[tuple[int, str] | None]:
    return map(first_changed, batches)
