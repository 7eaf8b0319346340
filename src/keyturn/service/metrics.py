"""Prometheus metrics of a Keyturn instance (prometheus-client), served on ``/metrics``.

One :class:`Metrics` per wired instance, with its own registry (several instances can live in
one process, as in the tests). Counters count what *this* process did; gauges that describe the
shared state (grants by state) are read from the store at scrape time, so every instance reports
the same numbers.

Names follow the Prometheus conventions (``_total`` counters, base units: seconds).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from keyturn.domain.break_glass import ReviewStatus
from keyturn.domain.model import GrantStatus
from keyturn.ports import Store

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Revocation lag buckets, seconds: sub-second for a healthy worker up to an hour of outage."""


class _GrantStates(Collector):
    """The gauges read from the store at scrape time: ``keyturn_grants{state}``, the offline
    kit's state and the open post-incident reviews."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, ...]:
        return (
            GaugeMetricFamily("keyturn_grants", "Grants by state.", labels=["state"]),
            GaugeMetricFamily(
                "keyturn_break_glass_kit_spent",
                "1 while the offline break-glass kit in force has been used and awaits rotation.",
            ),
            GaugeMetricFamily(
                "keyturn_break_glass_kit_ready",
                "1 when an unused offline break-glass kit is in force.",
            ),
            GaugeMetricFamily(
                "keyturn_post_incident_reviews_open",
                "Open post-incident reviews of break-glass uses (overdue: its alert went out).",
                labels=["overdue"],
            ),
        )

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The families without values: registering the collector then reads nothing (with
        ``auto_describe`` the registry would otherwise call :meth:`collect`, counting every
        grant in the store at start)."""
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        grants, spent, ready, reviews = self._families()
        # One read-only snapshot for every store-backed gauge: a scrape never holds the write
        # lock (counting a million grants took ~0.2 s).
        with self._store.snapshot() as tx:
            counts = tx.grant_counts()
            kits = [k for k in tx.kits() if k.retired_at is None]
            open_reviews = tx.post_incident_reviews(status=ReviewStatus.OPEN)
        for state in GrantStatus:
            grants.add_metric([str(state)], counts.get(state, 0))
        spent.add_metric([], 1 if any(k.spent_at is not None for k in kits) else 0)
        ready.add_metric([], 1 if any(k.spent_at is None for k in kits) else 0)
        overdue = sum(1 for r in open_reviews if r.overdue_alerted_at is not None)
        reviews.add_metric(["true"], overdue)
        reviews.add_metric(["false"], len(open_reviews) - overdue)
        yield from (grants, spent, ready, reviews)


class Metrics:
    """The instance's metrics; :meth:`count_grants_in` adds the store-backed gauge."""

    def __init__(self) -> None:
        self._store: Store | None = None
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.revocations_attempted = Counter(
            "keyturn_revocations_attempted",
            "Revocation attempts (provider calls to take a privilege away).",
            ["provider"],
            registry=r,
        )
        self.revocations_succeeded = Counter(
            "keyturn_revocations_succeeded",
            "Revocations verified by reading the real system back.",
            ["provider"],
            registry=r,
        )
        self.revocations_failed = Counter(
            "keyturn_revocations_failed",
            "Revocation attempts that failed or could not be verified (each is retried).",
            ["provider"],
            registry=r,
        )
        self.revocation_lag = Histogram(
            "keyturn_revocation_lag_seconds",
            "Seconds from a grant's not_after to the verified removal of its privilege.",
            ["provider"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.revoke_failed_alerts = Counter(
            "keyturn_revoke_failed_alerts",
            "Alerts raised because a grant entered revoke_failed.",
            ["provider"],
            registry=r,
        )
        self.grants_issued = Counter(
            "keyturn_grants_issued",
            "Grants made active after verification.",
            ["provider"],
            registry=r,
        )
        self.standing_privileges = Gauge(
            "keyturn_standing_privileges",
            "Members of a managed privilege holding it without a grant (last reconciliation).",
            ["provider", "privilege"],
            registry=r,
        )
        self.reconciliation_findings = Counter(
            "keyturn_reconciliation_findings",
            "Reconciliation findings by kind (standing, lingering, missing).",
            ["provider", "kind"],
            registry=r,
        )

        self.decisions = Counter(
            "keyturn_policy_decisions",
            "Policy decisions by outcome and deciding rule.",
            ["outcome", "rule"],
            registry=r,
        )
        self.rule_errors = Counter(
            "keyturn_policy_rule_errors",
            "Policy rules that failed at evaluation time (counted as not matched).",
            ["rule"],
            registry=r,
        )
        self.alerts_received = Counter(
            "keyturn_alerts_received",
            "Alerts received by the webhooks, by source and status.",
            ["source", "status"],
            registry=r,
        )
        self.webhook_refused = Counter(
            "keyturn_alert_webhooks_refused",
            "Alert webhook calls refused, by reason (unauthenticated, invalid, too_large).",
            ["reason"],
            registry=r,
        )
        self.break_glass_uses = Counter(
            "keyturn_break_glass_uses",
            "Break-glass uses by role and mode (online; offline: counted at import).",
            ["role", "mode"],
            registry=r,
        )
        self.config_reloads = Counter(
            "keyturn_config_reloads",
            "Configuration reloads by result (applied, refused).",
            ["result"],
            registry=r,
        )

    def count_grants_in(self, store: Store) -> None:
        """Report ``keyturn_grants{state}`` from ``store`` at each scrape (once per registry)."""
        if self._store is None:
            self._store = store
            self.registry.register(_GrantStates(store))

    def exposition(self) -> bytes:
        """The text exposition format (``text/plain; version=0.0.4``)."""
        return bytes(generate_latest(self.registry))
