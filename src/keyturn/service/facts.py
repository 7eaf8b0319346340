"""Gathering the facts a policy decision sees: the request's own, on-call, alerts, history.

:func:`keyturn.domain.policy.base_facts` gives the facts that need no source; this module fills
in ``requester.on_call``/``on_call_schedules`` (from the on-call schedules), ``target.alerting``/
``target.alerts`` (from the alerts stored by the webhooks) and ``history`` (from the store).
It reads in its own read-only snapshot (which does not queue behind the store's writers): call
it outside any transaction.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from keyturn.config import RoleConfig, TargetConfig, UserConfig
from keyturn.domain.alerts import is_firing
from keyturn.domain.history import elevated_interval, hours_elevated
from keyturn.domain.model import AccessRequest, Decision
from keyturn.domain.policy import add_sourced_facts, base_facts, is_eligible
from keyturn.service.deps import Deps

HISTORY_WINDOW = timedelta(days=7)
"""The window of the ``history.*_7d`` facts."""


def gather(
    deps: Deps,
    *,
    user: UserConfig,
    role: RoleConfig,
    target: TargetConfig,
    duration: timedelta,
    justification: str,
    ticket: str | None,
    now: datetime,
    scheduled: bool = False,
    existing: AccessRequest | None = None,
) -> dict[str, Any]:
    """Every fact for one decision at ``now`` (see :mod:`keyturn.domain.policy` for the shape).

    ``existing``: the stored request being decided again (at a scheduled start, for an
    extension); it is not counted in ``history.requests_7d``, as a new request is not."""
    facts = base_facts(
        user=user,
        role=role,
        target=target,
        duration=duration,
        justification=justification,
        ticket=ticket,
        now=now,
        timezone=deps.config.policy.timezone,
        scheduled=scheduled,
    )
    schedules = deps.oncall.on_call(user.id, target) if deps.oncall is not None else ()
    since = now - HISTORY_WINDOW
    with deps.store.snapshot() as tx:
        stored = tx.alerts(target=target.name, firing_only=True)
        requests_7d = tx.count_requests(user.id, role.name, since)
        grants = tx.grants_since(since, user_id=user.id, role=role.name)
    if existing is not None and existing.role == role.name and existing.created_at >= since:
        requests_7d = max(0, requests_7d - 1)
    intervals = [i for i in (elevated_interval(g) for g in grants) if i is not None]
    add_sourced_facts(
        facts,
        on_call_schedules=schedules,
        alerts=[
            (s.alert.name, s.alert.severity, s.alert.starts_at)
            for s in stored
            if is_firing(s.alert, now)
        ],
        requests_7d=requests_7d,
        hours_elevated_7d=round(hours_elevated(intervals, since=since, until=now), 3),
    )
    return facts


def decide(
    deps: Deps,
    requester: UserConfig,
    role: RoleConfig,
    target: TargetConfig,
    *,
    duration: timedelta,
    justification: str,
    ticket: str | None,
    now: datetime,
    scheduled: bool = False,
    record: bool = True,
    existing: AccessRequest | None = None,
) -> Decision:
    """Gather the facts and run the policy; count the outcome and any rule errors
    (``record=False``, for explanations, leaves the metrics alone)."""
    facts = gather(
        deps,
        user=requester,
        role=role,
        target=target,
        duration=duration,
        justification=justification,
        ticket=ticket,
        now=now,
        scheduled=scheduled,
        existing=existing,
    )
    decision = deps.policy.decide(
        eligible=is_eligible(deps.config, requester, role.name, target), facts=facts
    )
    if record:
        for entry in decision.trace:
            if "error" in entry:
                deps.metrics.rule_errors.labels(entry["rule"]).inc()
        deps.metrics.decisions.labels(str(decision.outcome), decision.rule).inc()
    return decision
