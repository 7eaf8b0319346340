"""The audit chain: any edit, deletion, insertion or reordering is found, at the first bad seq."""

from __future__ import annotations

import dataclasses
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyturn.domain.audit import (
    GENESIS,
    AuditDraft,
    AuditEvent,
    StoredEvent,
    VerifyResult,
    canonical_bytes,
    chain,
    fast_canonical_bytes,
    format_time,
    stored_event,
    stored_event_intact,
    verify_chain,
    verify_stored,
)
from keyturn.service import audit_log
from keyturn.service.deps import Deps

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


# --- verifying the chain as stored (fast path, RFC 8785 fallback, batches, processes) ----------
def _stored(events: list[AuditEvent]) -> list[StoredEvent]:
    """Rows as the SQL store keeps them (SQLAlchemy writes JSON columns with ``json.dumps``)."""
    return [
        (
            e.seq,
            format_time(e.at),
            e.actor,
            e.action,
            json.dumps(e.subject),
            json.dumps(e.details),
            e.prev_hash,
            e.hash,
        )
        for e in events
    ]


def _chain_of(details: list[dict[str, Any]]) -> list[AuditEvent]:
    events, prev = [], GENESIS
    for i, d in enumerate(details, start=1):
        event = chain(i, AuditDraft(T0 + timedelta(seconds=i), "alice", "x.y", {"k": "v"}, d), prev)
        events.append(event)
        prev = event.hash
    return events


def _rfc8785_row(row: StoredEvent) -> bytes:
    event = stored_event(row)
    draft = AuditDraft(event.at, event.actor, event.action, event.subject, event.details)
    return canonical_bytes(event.seq, draft, event.prev_hash)


KEYS = st.text(
    # no U+E000-U+FFFF: those sort after surrogate pairs in UTF-16, before them by code point
    st.characters(blacklist_categories=("Cs",)).filter(lambda c: not "\ue000" <= c <= "\uffff"),
    max_size=8,
)
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)  # control chars, emoji…
SAFE_INT = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
USUAL_FLOAT = st.one_of(
    st.floats(min_value=1e-4, max_value=1e16, exclude_max=True),
    st.floats(min_value=-1e16, max_value=-1e-4, exclude_min=True),
    SAFE_INT.map(float),
    st.just(-0.0),
)
SCALARS = st.one_of(st.none(), st.booleans(), SAFE_INT, USUAL_FLOAT, TEXT)
ALLOWED = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=4)),
    max_leaves=12,
)
DETAILS = st.dictionaries(KEYS, ALLOWED, max_size=5)


@given(DETAILS)
def test_fast_form_is_the_rfc8785_form_of_what_keyturn_records(details: dict[str, Any]) -> None:
    """Property: for strings (any but lone surrogates), booleans, null, safe integers, the usual
    floats, lists and maps whose keys hold no U+E000-U+FFFF, the stdlib form is RFC 8785's."""
    (row,) = _stored(_chain_of([details]))
    assert fast_canonical_bytes(row) == _rfc8785_row(row)
    assert stored_event_intact(row)


EXOTIC = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        SAFE_INT,
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(st.characters(blacklist_categories=("Cs",)), max_size=6),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(st.sampled_from("a\ue000\ufffd😀\U00010000"), max_size=3), inner),
    ),
    max_leaves=10,
)


@given(st.lists(st.dictionaries(st.text(max_size=3), EXOTIC, max_size=4), min_size=1, max_size=4))
def test_any_appendable_event_verifies_through_the_fallback(details: list[dict[str, Any]]) -> None:
    """Property: whatever RFC 8785 accepted at append (emoji vs U+E000+ keys, 1e-07, 1e+16 …)
    verifies, by the RFC 8785 fallback where the fast form differs."""
    events = _chain_of(details)
    result = verify_stored(_stored(events), (len(events), events[-1].hash), batch=2)
    assert result == verify_chain(events, (len(events), events[-1].hash))
    assert result.ok


def test_keys_ordered_differently_in_utf16_take_the_fallback() -> None:
    """ "\\ufffd" sorts after "😀" by code point, before it by UTF-16 code unit (RFC 8785)."""
    (row,) = _stored(_chain_of([{"\ufffd": 1, "😀": 2}]))
    assert fast_canonical_bytes(row) != _rfc8785_row(row)
    assert stored_event_intact(row)
    tampered = (*row[:5], json.dumps({"\ufffd": 1, "😀": 3}), *row[6:])
    assert not stored_event_intact(tampered)


def test_floats_of_decisions_take_the_fast_path() -> None:
    """Policy facts hold floats (hours elevated): 0.0, 2.5 and -0.0 are written as RFC 8785 does."""
    (row,) = _stored(_chain_of([{"hours": 0.0, "more": 2.5, "neg": -0.0, "big": 123456.75}]))
    assert fast_canonical_bytes(row) == _rfc8785_row(row)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (5, json.dumps({"n": 2**60})),  # an integer RFC 8785 refuses: never appended
        (5, '{"n": NaN}'),
        (5, '{"n": "\\ud800"}'),  # a lone surrogate
        (5, '{"n": 1} trailing'),
        (5, "not json"),
        (4, "[1, 2"),
        (1, "2026-11-17 02:45:00"),  # a time not in the hashed form
        (2, "mallory"),
    ],
)
def test_unreadable_or_changed_rows_are_reported_not_raised(column: int, value: str) -> None:
    """A row edited into something unreadable or outside RFC 8785 is 'changed', at its seq."""
    rows = _stored(_chain(5))
    rows[2] = (*rows[2][:column], value, *rows[2][column + 1 :])  # type: ignore[assignment]
    assert not stored_event_intact(rows[2])
    result = verify_stored(rows, (5, rows[-1][7]))
    assert (result.ok, result.first_bad_seq, result.reason) == (
        False,
        3,
        "event content was changed",
    )


MUTATIONS = ("details", "actor", "at", "seq", "prev", "hash", "delete", "swap", "insert", "tail")


def _mutate(rows: list[StoredEvent], kind: str, i: int) -> list[StoredEvent]:
    rows = list(rows)
    row = rows[i]
    if kind == "details":
        rows[i] = (*row[:5], json.dumps({"n": -1}), *row[6:])
    elif kind == "actor":
        rows[i] = (row[0], row[1], "mallory", *row[3:])
    elif kind == "at":
        rows[i] = (row[0], format_time(T0), *row[2:])
    elif kind == "seq":
        rows[i] = (row[0] + 1, *row[1:])
    elif kind == "prev":
        rows[i] = (*row[:6], GENESIS, row[7])
    elif kind == "hash":
        rows[i] = (*row[:7], GENESIS)
    elif kind == "delete":
        del rows[i]
    elif kind == "swap" and i + 1 < len(rows):
        rows[i], rows[i + 1] = rows[i + 1], rows[i]
    elif kind == "insert":
        rows.insert(i, row)
    elif kind == "tail":
        del rows[i:]
    return rows


def _events(rows: list[StoredEvent]) -> list[AuditEvent]:
    return [stored_event(r) for r in rows]


@given(
    st.sampled_from(MUTATIONS),
    st.integers(min_value=0, max_value=11),
    st.integers(min_value=1, max_value=5),
)
def test_stored_verification_gives_exactly_the_result_of_verify_chain(
    kind: str, index: int, batch: int
) -> None:
    """Property (differential): for any single edit, deletion, insertion, reorder or truncation,
    at any place and with any batch size, verify_stored answers exactly as verify_chain does
    over the same events (ok, count, first bad seq, reason, head hash)."""
    events = _chain(12)
    head = (12, events[-1].hash)
    rows = _mutate(_stored(events), kind, index)
    expected = verify_chain(_events(rows), head)
    assert verify_stored(rows, head, batch=batch) == expected
    assert verify_stored(rows, None, batch=batch) == verify_chain(_events(rows))


def test_head_mismatch_is_reported_after_an_intact_chain() -> None:
    """Rows all intact but the head names a later event: the head mismatch, as verify_chain."""
    events = _chain(5)
    result = verify_stored(_stored(events[:4]), (5, events[-1].hash), batch=3)
    assert result == verify_chain(events[:4], (5, events[-1].hash))
    assert (result.ok, result.first_bad_seq, result.reason) == (
        False,
        5,
        "the chain head does not match",
    )
    assert not verify_stored(_stored(events), (5, GENESIS)).ok


def test_empty_chain_verifies() -> None:
    """No events and no head: ok, nothing counted."""
    assert verify_stored([], None) == VerifyResult(True, 0, None, None, GENESIS)


@pytest.mark.parametrize("bad", [1, 1999, 2000, 2001, 4500])
def test_worker_processes_report_the_lowest_bad_seq(bad: int) -> None:
    """Hashes checked in 2 processes over batches of 1000: the first bad seq is the lowest one,
    wherever it falls relative to batch boundaries, even with a later event broken too."""
    events = _chain(5000)
    rows = _mutate(_mutate(_stored(events), "details", bad - 1), "actor", 4800)
    head = (5000, events[-1].hash)
    result = verify_stored(rows, head, batch=1000, check=audit_log._in_processes(2))
    assert result == verify_stored(rows, head, batch=1000)
    assert (result.first_bad_seq, result.reason) == (bad, "event content was changed")
    intact = verify_stored(_stored(events), head, batch=1000, check=audit_log._in_processes(2))
    assert intact.ok
    assert intact.count == 5000


def test_worker_processes_yield_to_an_earlier_broken_link() -> None:
    """A broken link at 1500 is reported even though a changed event follows at 1700."""
    rows = _mutate(_mutate(_stored(_chain(3000)), "details", 1699), "prev", 1499)
    result = verify_stored(rows, None, batch=1000, check=audit_log._in_processes(2))
    assert (result.first_bad_seq, result.reason) == (1500, "link to the previous event broken")


def test_keyturn_events_never_need_the_rfc8785_library_to_verify(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The services' shapes (decision facts with floats, non-ASCII text, nulls, nested lists)
    verify on the fast path alone: with the RFC 8785 library gone, they still verify."""
    decided = {
        "outcome": "auto_approve",
        "facts": {
            "history": {"requests_7d": 3, "hours_elevated_7d": 0.0, "avg": 1.25},
            "requester": {"groups": ["sre", "oncall-db"], "on_call": False},
            "target": {"labels": {"env": "prod"}, "alerts": []},
        },
        "trace": [{"rule": "r", "matched": True, "clauses": [{"expr": 'a == "b"'}]}],
    }
    created = {"justification": "Réplication bloquée — INC-4711\n\t😀", "ticket": None}
    events = _chain_of([created, decided, {"serial": "9223372036854775807", "lag_ms": 61}])
    rows = _stored(events)

    def refuse(_obj: object) -> bytes:
        raise AssertionError("the RFC 8785 library was called")

    monkeypatch.setattr("keyturn.domain.audit.rfc8785.dumps", refuse)
    assert verify_stored(rows, (3, events[-1].hash)).ok


def test_service_verify_in_processes_matches_one_process(
    deps: Deps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """audit_log.verify with workers: the same result as in one process, intact or tampered
    (the store's committed events edited behind its back)."""
    monkeypatch.setattr(audit_log, "PARALLEL_FROM", 10)
    monkeypatch.setattr(audit_log, "_BATCH", 7)
    for i in range(60):
        audit_log.record(deps, "system:test", "test.event", {"n": i, "why": "é"})
    assert audit_log.verify(deps, workers=2) == audit_log.verify(deps, workers=1)
    assert audit_log.verify(deps, workers=2).ok
    committed = deps.store.events  # type: ignore[attr-defined]
    committed[40] = dataclasses.replace(committed[40], details={"n": 0})
    result = audit_log.verify(deps, workers=2)
    assert result == audit_log.verify(deps, workers=1)
    assert (result.ok, result.first_bad_seq) == (False, 41)


def test_worker_processes_are_spawned_while_another_thread_runs() -> None:
    """With a second thread alive (the CLI's on-call refresher) workers are spawned, not forked,
    and still answer as one process does."""
    stop = threading.Event()
    other = threading.Thread(target=stop.wait, daemon=True)
    other.start()
    try:
        rows = _mutate(_stored(_chain(1200)), "actor", 1100)
        result = verify_stored(rows, None, batch=500, check=audit_log._in_processes(2))
    finally:
        stop.set()
        other.join()
    assert (result.first_bad_seq, result.reason) == (1101, "event content was changed")
