"""Reconciliation of managed privileges with grants, and standing access.

For every privilege a provider manages (each allowlisted directory group), the real holders are
compared with the live grants and the declared allowlist:

* **standing** -- a holder with no live grant who is not on the allowlist and never held the
  privilege through Keyturn: a *standing privilege*. Reported; removed only when the group is
  configured ``mode: enforce``.
* **lingering** -- a holder whose Keyturn grant of this privilege has ended: the revocation was
  undone or missed. Always removed.
* **missing** -- an active grant whose privilege is not there (removed by hand, or lost in a
  crash): restored, because the grant is live.

Every finding is an audit event (``reconcile.finding``) unless it is a dry run, which changes
nothing and records nothing. Each real run stores one snapshot per privilege of the standing
holders found, the series ``keyturn report standing`` shows (the "standing access reduction"
KPI's baseline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Literal

from keyturn.config import UserConfig
from keyturn.domain.audit import AuditDraft, format_time
from keyturn.domain.errors import Forbidden, ProviderError
from keyturn.domain.history import AlwaysOnRow, always_on
from keyturn.domain.model import GrantStatus, StandingSnapshot
from keyturn.ports import Holdings, ManagedPrivileges
from keyturn.service.deps import Deps

FindingKind = Literal["standing", "lingering", "missing"]


@dataclass(frozen=True)
class Finding:
    """One difference between the real system and the grants.

    ``action`` is what was done: ``reported``, ``removed``, ``restored``, ``already gone``, or
    (dry run) ``would remove``/``would restore``, or ``failed: …``.
    """

    kind: FindingKind
    provider: str
    privilege: str
    identity: str
    user_id: str | None
    action: str = "reported"


@dataclass(frozen=True)
class ReconcileReport:
    """The outcome of one reconciliation run."""

    at: datetime
    dry_run: bool
    findings: list[Finding] = field(default_factory=list)
    standing: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def reconcile_as(deps: Deps, admin: UserConfig, *, dry_run: bool) -> ReconcileReport:
    """:func:`reconcile` on an admin's demand (``keyturn reconcile``).

    Raises:
        Forbidden: the user is not an admin.
    """
    if not deps.is_admin(admin):
        raise Forbidden("only an admin may run reconciliation")
    return reconcile(deps, dry_run=dry_run, actor=admin.id)


def reconcile(
    deps: Deps, *, dry_run: bool = False, actor: str = "system:worker"
) -> ReconcileReport:
    """Compare every managed privilege with the grants and act on the drift (see module doc).

    A provider that cannot be read is reported in ``errors`` and skipped; nothing is removed on
    the strength of a partial read.
    """
    now = deps.clock.now()
    report = ReconcileReport(at=now, dry_run=dry_run)
    for provider in deps.managed():
        try:
            holdings = provider.holdings()
        except ProviderError as exc:
            report.errors.append(f"{provider.name}: {exc.message}")
            continue
        identities = _Identities(provider, [u.id for u in deps.config.users])
        for holding in holdings:
            try:
                _one(deps, provider, identities, holding, report=report, actor=actor)
            except ProviderError as exc:
                report.errors.append(f"{provider.name} {holding.privilege}: {exc.message}")
    return report


class _Identities:
    """User id ↔ identity in one provider's system, looked up once per run."""

    def __init__(self, provider: ManagedPrivileges, user_ids: list[str]) -> None:
        self._provider = provider
        self._user_ids = user_ids
        self._of: dict[str, str | None] = {}
        self._everyone = False

    def of(self, user_id: str) -> str | None:
        if user_id not in self._of:
            self._of[user_id] = self._provider.identity(user_id)
        return self._of[user_id]

    def user(self, identity: str) -> str | None:
        """The Keyturn user with this identity (resolving every configured user if needed)."""
        found = next((u for u, i in self._of.items() if i == identity), None)
        if found is None and not self._everyone:
            for user_id in self._user_ids:
                self.of(user_id)
            self._everyone = True
            found = next((u for u, i in self._of.items() if i == identity), None)
        return found


def _one(
    deps: Deps,
    provider: ManagedPrivileges,
    identities: _Identities,
    holding: Holdings,
    *,
    report: ReconcileReport,
    actor: str,
) -> None:
    with deps.store.transaction() as tx:
        live = tx.grants_holding(provider.name, holding.privilege)
        ended = tx.ended_holders(provider.name, holding.privilege)
    expected = {i for g in live if (i := identities.of(g.user_id)) is not None}
    standing: list[str] = []
    for member in sorted(holding.members - expected - holding.allowed):
        holder = identities.user(member)
        kind: FindingKind = "lingering" if holder in ended else "standing"
        if kind == "standing":
            standing.append(member)
        remove = kind == "lingering" or holding.enforce
        change = partial(provider.remove_holder, holding.privilege, member) if remove else None
        finding = Finding(kind, provider.name, holding.privilege, member, holder)
        _settle(deps, report, actor, finding, change)
    for grant in live:
        identity = identities.of(grant.user_id)
        if grant.status is not GrantStatus.ACTIVE or identity is None:
            continue
        if grant.not_after <= report.at:  # its window closed; the worker is about to end it
            continue
        if identity in holding.members:
            continue
        _settle(
            deps,
            report,
            actor,
            Finding("missing", provider.name, holding.privilege, identity, grant.user_id),
            partial(provider.add_holder, holding.privilege, identity),
        )
    report.standing[holding.privilege] = len(standing)
    if not report.dry_run:
        deps.metrics.standing_privileges.labels(provider.name, holding.privilege).set(len(standing))
        with deps.store.transaction() as tx:
            tx.add_standing_snapshot(
                StandingSnapshot(report.at, provider.name, holding.privilege, tuple(standing))
            )


_WORDS = {
    "standing": ("would remove", "already gone", "removed"),
    "lingering": ("would remove", "already gone", "removed"),
    "missing": ("would restore", "already there", "restored"),
}
"""Per kind: the action of a dry run, of a change that was already so, of a change made."""


def _settle(
    deps: Deps,
    report: ReconcileReport,
    actor: str,
    finding: Finding,
    change: Callable[[], bool] | None,
) -> None:
    """Act on a finding (``change`` returns True when it was already so; None: report only),
    then record it: in the report and, unless a dry run, as an audit event and a metric."""
    would, noop, done = _WORDS[finding.kind]
    if change is None:
        action = "reported"
    elif report.dry_run:
        action = would
    else:
        try:
            action = noop if change() else done
        except ProviderError as exc:
            action = f"failed: {exc.message}"
    finding = dataclasses.replace(finding, action=action)
    report.findings.append(finding)
    if report.dry_run:
        return
    deps.metrics.reconciliation_findings.labels(finding.provider, finding.kind).inc()
    subject = {"privilege": finding.privilege, "identity": finding.identity}
    if finding.user_id is not None:
        subject["user_id"] = finding.user_id
    with deps.store.transaction() as tx:
        tx.append_audit(
            AuditDraft(
                report.at,
                actor,
                "reconcile.finding",
                subject,
                {"kind": finding.kind, "provider": finding.provider, "action": action},
            )
        )


@dataclass(frozen=True)
class StandingReport:
    """The latest snapshot per privilege and the count of standing holders over time."""

    latest: list[StandingSnapshot]
    history: list[tuple[datetime, str, int]]


def standing_report(
    deps: Deps, viewer: UserConfig, *, since: datetime | None = None
) -> StandingReport:
    """Standing privileges per managed privilege (admins only).

    Raises:
        Forbidden: the viewer is not an admin.
    """
    if not deps.is_admin(viewer):
        raise Forbidden("only an admin may read the standing-access report")
    with deps.store.transaction() as tx:
        snapshots = tx.standing_snapshots(since=since)
    latest: dict[tuple[str, str], StandingSnapshot] = {}
    for snap in snapshots:
        latest[(snap.provider, snap.privilege)] = snap
    history = [(s.taken_at, s.privilege, len(s.members)) for s in snapshots]
    return StandingReport(
        latest=sorted(latest.values(), key=lambda s: s.privilege), history=history
    )


def always_on_report(deps: Deps, viewer: UserConfig) -> list[AlwaysOnRow]:
    """Habitual elevation ("always on", admins only): requesters whose grants of a role cover at
    least ``reports.always_on.threshold`` of the working hours in the window -- candidates for
    a proper role instead of daily requests (:func:`keyturn.domain.history.always_on`).

    Raises:
        Forbidden: the viewer is not an admin.
    """
    if not deps.is_admin(viewer):
        raise Forbidden("only an admin may read the always-on report")
    settings = deps.config.reports.always_on
    now = deps.clock.now()
    with deps.store.transaction() as tx:
        grants = tx.grants_since(now - settings.window)
    return always_on(grants, settings, now=now)


def report_data(report: ReconcileReport) -> dict[str, object]:
    """A reconciliation report as JSON-safe data."""
    return {
        "at": format_time(report.at),
        "dry_run": report.dry_run,
        "findings": [dataclasses.asdict(f) for f in report.findings],
        "standing": report.standing,
        "errors": report.errors,
    }
