"""The audit chain: any edit, deletion, insertion or reordering is found, at the first bad seq."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.domain.audit import GENESIS, AuditDraft, AuditEvent, chain, verify_chain

T0 = datetime(2026, 11, 17, 2, 45, tzinfo=UTC)


def _chain(n: int) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    prev = GENESIS
    for i in range(1, n + 1):
        draft = AuditDraft(
            T0 + timedelta(seconds=i),
            "alice",
            "request.created",
            {"request_id": f"req_{i}"},
            {"n": i, "why": "db-1 down"},
        )
        event = chain(i, draft, prev)
        events.append(event)
        prev = event.hash
    return events


def test_intact_chain_verifies_with_its_head() -> None:
    """An untouched chain verifies and reports its head hash."""
    events = _chain(5)
    result = verify_chain(events, (5, events[-1].hash))
    assert result.ok
    assert result.count == 5
    assert result.head_hash == events[-1].hash


def test_edited_event_is_named() -> None:
    """Changing one field of event 3 is detected at seq 3."""
    events = _chain(5)
    events[2] = dataclasses.replace(events[2], details={"n": 3, "why": "nothing happened"})
    result = verify_chain(events)
    assert not result.ok
    assert result.first_bad_seq == 3


def test_deleted_event_is_named() -> None:
    """Removing event 3 is detected at seq 3 (the missing one)."""
    events = _chain(5)
    del events[2]
    assert verify_chain(events).first_bad_seq == 3


def test_inserted_event_is_named() -> None:
    """A forged event inserted after 2 (renumbered to fit) breaks the link at seq 3."""
    events = _chain(5)
    forged = chain(3, AuditDraft(T0, "mallory", "grant.issued"), events[1].hash)
    tampered = [*events[:2], forged, *(dataclasses.replace(e, seq=e.seq + 1) for e in events[2:])]
    result = verify_chain(tampered)
    assert not result.ok
    assert result.first_bad_seq == 4


def test_reordered_events_are_detected() -> None:
    """Swapping events 2 and 3 is detected at seq 2."""
    events = _chain(5)
    events[1], events[2] = events[2], events[1]
    assert verify_chain(events).first_bad_seq == 2


def test_truncated_tail_is_detected_by_the_head() -> None:
    """Deleting the last event leaves a valid-looking chain; the recorded head catches it."""
    events = _chain(5)
    result = verify_chain(events[:-1], (5, events[-1].hash))
    assert not result.ok
    assert result.reason == "the chain head does not match"


@given(st.integers(min_value=0, max_value=9), st.text(min_size=1, max_size=20))
def test_any_single_edit_is_detected(index: int, actor: str) -> None:
    """Property: changing the actor of any one event breaks verification at that event."""
    events = _chain(10)
    if events[index].actor == actor:
        actor += "x"
    events[index] = dataclasses.replace(events[index], actor=actor)
    result = verify_chain(events)
    assert result.first_bad_seq == index + 1


def test_large_integers_are_refused_by_the_canonical_form() -> None:
    """RFC 8785 hashes only I-JSON-safe integers; serials must be recorded as strings."""
    with pytest.raises(ValueError, match="safe integer"):
        chain(1, AuditDraft(T0, "x", "y", {}, {"serial": 2**60}), GENESIS)
