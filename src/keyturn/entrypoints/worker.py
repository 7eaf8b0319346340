"""The expiry worker: ends due grants, finishes interrupted work, reconciles, keeps the KRL current.

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
from keyturn.service import access, break_glass, grants, standing

log = structlog.get_logger("keyturn.worker")
MIN_SLEEP = timedelta(milliseconds=20)


def run_once(app: App, *, reconcile_standing: bool = False) -> int:
    """One pass: expire pending requests, start scheduled ones, warn holders of grants about to
    end, alert on overdue post-incident reviews, end due grants, finish interrupted or failed
    revocations, optionally reconcile managed privileges, refresh the KRL.

    Returns:
        How many grants were acted on (started, ended or finished).
    """
    for request in access.expire_pending(app.deps):
        log.info("request expired unanswered", request_id=request.id, user=request.requester_id)
    started = access.start_scheduled(app.deps)
    for view in started:
        log.info(
            "scheduled request started",
            request_id=view.request.id,
            status=str(view.request.status),
            grant_id=view.grant.id if view.grant else None,
        )
    grants.warn_expiring(app.deps)
    for review in break_glass.alert_overdue(app.deps):
        log.warning("post-incident review overdue", review_id=review.id, user=review.user_id)
    expired = grants.expire_due(app.deps)
    fixed = grants.resume_unfinished(app.deps)
    if reconcile_standing:
        report = standing.reconcile(app.deps)
        for finding in report.findings:
            log.warning(
                "reconciliation finding",
                kind=finding.kind,
                privilege=finding.privilege,
                identity=finding.identity,
                action=finding.action,
            )
        for error in report.errors:
            log.error("reconciliation could not read a provider", error=error)
    app.ssh.ensure_krl(app.deps.clock.now())
    return len(started) + len(expired) + len(fixed)


def seconds_until_next(app: App) -> float:
    """How long the worker may sleep: until the next due grant or retry, within
    [20 ms, ``server.worker_max_sleep``]."""
    cap = app.deps.config.server.worker_max_sleep
    with app.deps.store.transaction() as tx:
        due = tx.next_due_at()
    wait = cap if due is None else min(cap, max(MIN_SLEEP, due - app.deps.clock.now()))
    return wait.total_seconds()


def run(app: App, stop: threading.Event) -> None:
    """Loop until ``stop`` is set. Store or provider outages, and even bugs, are logged and the
    pass is retried: the rows stay in the store, so nothing is lost while the worker waits.
    Managed privileges are reconciled at start and every ``server.reconcile_interval``."""
    log.info("worker started")
    failures = 0
    interval = app.deps.config.server.reconcile_interval
    next_reconcile = app.deps.clock.now()
    while not stop.is_set():
        try:
            now = app.deps.clock.now()
            due = now >= next_reconcile
            run_once(app, reconcile_standing=due)
            if due:
                next_reconcile = now + interval
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
