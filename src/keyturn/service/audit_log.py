"""Reading and verifying the audit chain."""

from __future__ import annotations

import marshal
import multiprocessing
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from typing import cast

from keyturn.config import UserConfig
from keyturn.domain.audit import (
    AuditDraft,
    AuditEvent,
    BatchCheck,
    StoredEvent,
    VerifyResult,
    first_changed_marshalled,
    stored_event,
    verify_stored,
)
from keyturn.service.deps import Deps
from keyturn.service.sessions import RecordingCheck

PARALLEL_FROM = 200_000
"""Chains shorter than this are verified in one process: starting workers (~0.5 s when they are
spawned, as in the CLI, which runs the on-call refresh thread) would cost more than it saves."""
_BATCH = 2000


def verify(deps: Deps, *, workers: int = 1) -> VerifyResult:
    """Check the whole chain and its head (RFC 8785 + SHA-256 links; see ``domain.audit``),
    then every session recording against the SHA-256 chained when its session ended.

    With ``workers`` > 1 and a chain of at least :data:`PARALLEL_FROM` events, the events' hashes
    are checked by that many worker processes while this one reads the chain (one transaction)
    and checks sequence numbers and links; the result is the same as in one process.
    """
    recordings = RecordingCheck(deps.config.gateway.recordings_dir)
    ended: list[StoredEvent] = []

    def watch(rows: Iterable[StoredEvent]) -> Iterator[StoredEvent]:
        for row in rows:
            if row[3] == "session.ended":
                ended.append(row)
            yield row

    # Reads only: writers go on meanwhile. The row cursor is closed inside the snapshot even
    # when the check stops early (a changed event), never after its connection went back to
    # the pool (a PostgreSQL server-side cursor closed later would hit another request).
    with deps.store.snapshot() as tx, closing(tx.iter_audit_rows()) as stored:
        head = tx.audit_head()
        rows = watch(stored)
        if workers > 1 and head is not None and head[0] >= PARALLEL_FROM:
            chain = verify_stored(rows, head, batch=_BATCH, check=_in_processes(workers))
        else:
            chain = verify_stored(rows, head, batch=_BATCH)
    if chain.ok:  # every event verified, so each one reads back
        for _ in recordings.watch(stored_event(row) for row in ended):
            pass
    return recordings.verify(chain)


def _in_processes(workers: int) -> BatchCheck:
    """:func:`first_changed` over batches in ``workers`` processes, at most two batches per
    worker in flight (the chain is never all in memory), results in batch order. The batches
    go as ``marshal`` data (ints and strings only): several times cheaper to load than a pickle."""

    def check(batches: Iterator[list[StoredEvent]]) -> Iterator[tuple[int, str] | None]:
        # fork is cheap, but safe only while this process runs no other thread; else spawn
        method = "fork" if threading.active_count() == 1 else "spawn"
        context = multiprocessing.get_context(method)
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            pending: deque[Future[tuple[int, str] | None]] = deque()
            try:
                for part in batches:
                    pending.append(pool.submit(first_changed_marshalled, _marshalled(part)))
                    if len(pending) >= 2 * workers:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:  # stopped at the first changed event: drop what is still queued
                for future in pending:
                    future.cancel()

    return check


def _marshalled(rows: list[StoredEvent]) -> bytes:
    """``rows`` as ``marshal`` data (a driver's row objects are first made plain tuples)."""
    try:
        return marshal.dumps(rows)
    except ValueError:
        return marshal.dumps([cast(StoredEvent, tuple(row)) for row in rows])


def list_events(
    deps: Deps, viewer: UserConfig, *, after_seq: int = 0, limit: int = 100
) -> list[AuditEvent]:
    """Events after ``after_seq``; admins see all, others only events they are subject of."""
    with deps.store.transaction() as tx:
        events = tx.audit_events(
            after_seq=after_seq, limit=None if not deps.is_admin(viewer) else limit
        )
    if deps.is_admin(viewer):
        return events
    own = [e for e in events if e.actor == viewer.id or e.subject.get("user_id") == viewer.id]
    return own[:limit]


def record(deps: Deps, actor: str, action: str, details: dict[str, object]) -> AuditEvent:
    """Append a system event (server started, configuration loaded …)."""
    with deps.store.transaction() as tx:
        return tx.append_audit(AuditDraft(deps.clock.now(), actor, action, {}, details))
