"""The expiry worker: ends due grants, finishes interrupted work, keeps the KRL current.

The store is the source of truth (no in-memory timers): each pass claims due grants, then
sleeps until the next ``not_after`` (at most ``server.worker_max_sleep``). After a restart it
simply picks up where the store says it is.
"""

from __future__ import annotations

import threading
from datetime import timedelta

import structlog
from sqlalchemy.exc import SQLAlchemyError

from keyturn.bootstrap import App
from keyturn.domain.errors import KeyturnError
from keyturn.service import access, grants

log = structlog.get_logger("keyturn.worker")
MIN_SLEEP = timedelta(milliseconds=20)


def run_once(app: App, *, stale_after: timedelta = grants.STALE_AFTER) -> int:
    """One pass: expire due grants, reconcile interrupted ones, refresh the KRL.

    Returns:
        How many grants were acted on.
    """
    for request in access.expire_pending(app.deps):
        log.info("request expired unanswered", request_id=request.id, user=request.requester_id)
    expired = grants.expire_due(app.deps)
    fixed = grants.reconcile(app.deps, stale_after=stale_after)
    app.ssh.ensure_krl(app.deps.clock.now())
    for grant in expired + fixed:
        log.info("grant", grant_id=grant.id, status=str(grant.status), user=grant.user_id)
    return len(expired) + len(fixed)


def seconds_until_next(app: App) -> float:
    """How long the worker may sleep: until the next due grant, within [20 ms, max sleep]."""
    cap = app.deps.config.server.worker_max_sleep
    with app.deps.store.transaction() as tx:
        due = tx.next_due_at()
    wait = cap if due is None else min(cap, max(MIN_SLEEP, due - app.deps.clock.now()))
    return wait.total_seconds()


def run(app: App, stop: threading.Event) -> None:
    """Loop until ``stop`` is set. Store or provider outages, and even bugs, are logged and the
    pass is retried: the rows stay in the store, so nothing is lost while the worker waits."""
    log.info("worker started")
    failures = 0
    while not stop.is_set():
        try:
            run_once(app)
            wait = seconds_until_next(app)
        except (KeyturnError, SQLAlchemyError) as exc:
            failures += 1
            log.error("worker pass failed; retrying", error=str(exc)[:300], kind=type(exc).__name__)
            wait = app.deps.config.server.worker_max_sleep.total_seconds()
        except Exception:  # the worker must outlive any bug: rows stay in the store and retry
            failures += 1
            log.exception("worker pass crashed; retrying", failures=failures)
            wait = app.deps.config.server.worker_max_sleep.total_seconds()
        stop.wait(wait)
    log.info("worker stopped")
