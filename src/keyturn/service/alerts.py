"""Alerts from monitoring: receive webhooks, keep firing/resolved state, map alerts to targets.

Two webhooks feed the same store: Prometheus Alertmanager's (payload version 4) and a generic
JSON shape (:func:`keyturn.domain.alerts.parse_generic`). Each call is authenticated, limited in
size and count, parsed completely before anything is written (a bad alert rejects the whole
call), and mapped to targets with the configured, fully anchored label matchers. The facts
``target.alerting``/``target.alerts`` are read from this state (:mod:`keyturn.service.facts`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import structlog

from keyturn.domain.alerts import (
    AlertTargets,
    check_webhook_auth,
    is_firing,
    parse_alertmanager,
    parse_generic,
)
from keyturn.domain.errors import InvalidInput, TooLarge, Unauthenticated
from keyturn.ports import StoredAlert
from keyturn.service.deps import Deps

log = structlog.get_logger("keyturn.alerts")

Source = Literal["alertmanager", "generic"]


@dataclass(frozen=True)
class Received:
    """What one webhook call changed: alerts stored, how many firing, the targets concerned."""

    alerts: int
    firing: int
    targets: tuple[str, ...]


def authenticate(deps: Deps, authorization: str | None) -> None:
    """Check a webhook caller's ``Authorization`` header (before its body is read).

    Raises:
        Unauthenticated: missing or wrong credentials, or alert webhooks are not configured.
    """
    try:
        check_webhook_auth(deps.config.alerts, authorization)
    except Unauthenticated:
        deps.metrics.webhook_refused.labels("unauthenticated").inc()
        raise


def receive(deps: Deps, source: Source, body: bytes, authorization: str | None) -> Received:
    """Authenticate, parse and store one webhook call.

    Raises:
        Unauthenticated: missing or wrong credentials, or alert webhooks are not configured.
        TooLarge: the body is over ``alerts.max_body_bytes`` or holds more than
            ``alerts.max_alerts`` alerts. InvalidInput: not JSON, wrong payload version,
            missing or ill-typed fields. In every error case nothing is stored.
    """
    settings = deps.config.alerts
    authenticate(deps, authorization)
    try:
        if len(body) > settings.max_body_bytes:
            raise TooLarge(
                f"the webhook body is {len(body)} bytes; the limit is {settings.max_body_bytes} "
                "(alerts.max_body_bytes)",
                limit=settings.max_body_bytes,
            )
        now = deps.clock.now()
        alerts = (
            parse_alertmanager(body, max_alerts=settings.max_alerts)
            if source == "alertmanager"
            else parse_generic(
                body, max_alerts=settings.max_alerts, now=now, target_label=settings.target_label
            )
        )
    except TooLarge:
        deps.metrics.webhook_refused.labels("too_large").inc()
        raise
    except InvalidInput:
        deps.metrics.webhook_refused.labels("invalid").inc()
        raise
    mapper = AlertTargets(settings, deps.config.targets)
    touched: set[str] = set()
    with deps.store.transaction() as tx:
        for alert in alerts:
            targets = mapper.targets_of(alert.labels)
            touched.update(targets)
            tx.save_alert(alert, targets, now)
    firing = sum(1 for a in alerts if is_firing(a, now))
    for alert in alerts:
        deps.metrics.alerts_received.labels(source, alert.status).inc()
    log.info(
        "alerts received",
        source=source,
        alerts=len(alerts),
        firing=firing,
        targets=sorted(touched),
    )
    return Received(alerts=len(alerts), firing=firing, targets=tuple(sorted(touched)))


def remap(deps: Deps) -> int:
    """Map every stored alert to targets again with the configuration in force (after a
    reload changed targets or matchers). Returns how many alerts were looked at."""
    mapper = AlertTargets(deps.config.alerts, deps.config.targets)
    with deps.store.transaction() as tx:
        stored = tx.alerts(limit=100_000)
        for item in stored:
            tx.save_alert(item.alert, mapper.targets_of(item.alert.labels), deps.clock.now())
    return len(stored)


def current(
    deps: Deps, *, target: str | None = None, firing_only: bool = True
) -> list[StoredAlert]:
    """Stored alerts (of one target), firing ones only unless ``firing_only`` is false; an
    alert whose ``endsAt`` has passed counts as resolved."""
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        stored = tx.alerts(target=target, firing_only=firing_only)
    return [s for s in stored if not firing_only or is_firing(s.alert, now)]
