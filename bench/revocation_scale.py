"""Revocation lag at scale: 100,000 active grants, 10,000 of them reach ``not_after`` within one
second; how long after its ``not_after`` is each one verified gone?

Setup (not timed): a SQLite store in a temporary directory holds ``--active`` active grants
(default 100,000; users ``u0000``…, one SSH role, the same target), bulk-inserted with their
requests; ``--due`` of them (default 10,000) get ``not_after`` spread evenly over one second
starting a few seconds ahead, the rest end hours later. The provider is ``keyturn.testing.
FakeProvider`` (the in-memory privilege holder of the contract tests) pre-loaded with every
grant's privilege, so the run measures Keyturn -- store, lifecycle, audit chain -- not a
directory. Every grant was warned before (``warned_at`` set): the steady state.

Measured: ONE expiry worker (``keyturn.entrypoints.worker.run`` in a thread, the production
loop with its default settings) from before the first ``not_after`` until no due grant is left;
per grant, the ``lag_ms`` of its ``grant.expired`` audit event (commit time of ``revoked``, after
the provider read back that the privilege is gone, minus ``not_after``): p50/p99/max.

Floor (same run, same store file copied before the worker ran, same provider, same timeline): a
bare expirer doing the least a store-backed expirer must -- select due active rows (500 at a
time), revoke and verify on the provider, mark them revoked in one transaction -- with no
write-ahead ``revoking`` state, no audit events, no lease checks. Ratio = Keyturn / floor.

Afterwards the benchmark checks that every due grant is ``revoked`` with exactly one
``grant.expired`` event (``verified: true``), that no other grant changed, that the provider no
longer holds a due grant's privilege, and that the audit chain verifies; otherwise it fails.

Usage::

    .venv/bin/python bench/revocation_scale.py            # 100,000 active, 10,000 due (~1 min)
    .venv/bin/python bench/revocation_scale.py --smoke    # 5,000 active, 500 due (seconds)
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from keyturn import bootstrap
from keyturn.adapters.store import tables as t
from keyturn.adapters.store.sql import _grant_row, _request_row, create_engine, migrate
from keyturn.config import parse_config
from keyturn.domain.model import (
    AccessRequest,
    Decision,
    Grant,
    GrantStatus,
    Outcome,
    RequestStatus,
)
from keyturn.entrypoints import logs, worker
from keyturn.service import audit_log
from keyturn.testing import FakeProvider

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import goal, percentiles, rounded, save  # noqa: E402

ROLE, TARGET = "server-admin", "db-1"
LEAD = timedelta(seconds=4)  # from the end of setup to the first not_after
SPREAD = timedelta(seconds=1)  # the due grants' not_after are spread over this


def now() -> datetime:
    """Wall-clock UTC (the worker runs on the real clock)."""
    return datetime.now(UTC)


def config(workdir: Path, url: str, users: int) -> Any:
    data = {
        "version": 1,
        "server": {"reconcile_interval": "PT24H"},
        "store": {"url": url},
        "ssh_ca": {"key_path": str(workdir / "ca" / "user_ca")},
        "users": [
            {"id": f"u{i:04d}", "name": f"User {i}", "groups": ["sre"]} for i in range(users)
        ],
        "targets": [{"name": TARGET}],
        "roles": [{"name": ROLE, "tier": "standard", "ssh": {"principals": ["root"]}}],
        "eligibility": [{"groups": ["sre"], "roles": [ROLE], "targets": {"names": [TARGET]}}],
        "policy": {"rules": [{"name": "auto", "when": "true", "effect": "auto_approve"}]},
    }
    return parse_config(data, raw=yaml.safe_dump(data).encode())


def seed(url: str, active: int, users: int, created: datetime) -> list[Grant]:
    """Bulk-insert ``active`` active grants (and their requests); return them."""
    engine = create_engine(url)
    migrate(engine)
    decision = Decision(outcome=Outcome.AUTO_APPROVE, rule="auto", reasons=("seeded",))
    grants, requests = [], []
    far = created + timedelta(hours=8)
    for i in range(active):
        user = f"u{i % users:04d}"
        request = AccessRequest(
            id=f"req_{i:012d}",
            requester_id=user,
            role=ROLE,
            target=TARGET,
            duration=far - created,
            justification="benchmark: seeded active grant",
            ticket=None,
            ssh_public_key=None,
            status=RequestStatus.APPROVED,
            decision=decision,
            created_at=created,
            updated_at=created,
        )
        grant = Grant(
            id=f"grt_{i:012d}",
            request_id=request.id,
            user_id=user,
            role=ROLE,
            target=TARGET,
            provider="ssh",
            status=GrantStatus.ACTIVE,
            not_before=created,
            not_after=far,
            created_at=created,
            updated_at=created,
            serial=i + 1,
            warned_at=created,
        )
        requests.append(_request_row(request))
        grants.append(grant)
    with engine.begin() as conn:
        for start in range(0, active, 20_000):
            conn.execute(t.access_requests.insert(), requests[start : start + 20_000])
            conn.execute(t.grants.insert(), [_grant_row(g) for g in grants[start : start + 20_000]])
    engine.dispose()
    return grants


def schedule(url: str, grants: list[Grant], due: int) -> tuple[datetime, dict[str, datetime]]:
    """Give ``due`` grants (every k-th) a ``not_after`` spread over :data:`SPREAD`, starting
    :data:`LEAD` from now; return the first ``not_after`` and each due grant's."""
    step = len(grants) // due
    chosen = grants[::step][:due]
    first = now() + LEAD
    ends = {g.id: first + SPREAD * (k / due) for k, g in enumerate(chosen)}
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            t.grants.update()
            .where(t.grants.c.id == sa.bindparam("gid"))
            .values(not_after=sa.bindparam("end")),
            [{"gid": gid, "end": end} for gid, end in ends.items()],
        )
    engine.dispose()
    return first, ends


def load_provider(grants: list[Grant]) -> FakeProvider:
    provider = FakeProvider("ssh")
    provider.held = {FakeProvider.key(g) for g in grants}
    return provider


def wait_until(moment: datetime) -> None:
    while (left := (moment - now()).total_seconds()) > 0:
        time.sleep(min(left, 0.05))


def run_keyturn(
    workdir: Path, url: str, users: int, grants: list[Grant], *, due: int, timeout: float
) -> dict[str, Any]:
    app = bootstrap.build(config(workdir, url, users))
    provider = load_provider(grants)
    app.deps.providers["ssh"] = provider
    first, ends = schedule(url, grants, due)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(app, stop), name="keyturn-worker")
    try:
        thread.start()
        wait_until(first + SPREAD)
        deadline = time.monotonic() + timeout
        while _due_left(app, first) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=60)
    try:
        lags, detail = _check(app, provider, grants, ends)
    finally:
        app.close()
    return {"lag_ms": lags, **detail}


def _due_left(app: bootstrap.App, first: datetime) -> int:
    g = t.grants.c
    with app.store.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(
                    g.status != str(GrantStatus.REVOKED), g.not_after <= first + SPREAD
                )
            ).scalar_one()
        )


def _check(
    app: bootstrap.App, provider: FakeProvider, grants: list[Grant], ends: dict[str, datetime]
) -> tuple[list[float], dict[str, Any]]:
    with app.store.transaction() as tx:
        events = tx.audit_events()
        counts = tx.grant_counts()
    expired = [e for e in events if e.action == "grant.expired"]
    by_grant: dict[str, int] = {}
    for event in expired:
        by_grant[event.subject["grant_id"]] = by_grant.get(event.subject["grant_id"], 0) + 1
        if event.details.get("verified") is not True:
            raise SystemExit(f"grant.expired without verification: {event}")
    if set(by_grant) != set(ends) or any(n != 1 for n in by_grant.values()):
        raise SystemExit(
            f"{len(by_grant)} grants expired ({sum(by_grant.values())} events) for {len(ends)} due"
        )
    expected = {GrantStatus.REVOKED: len(ends), GrantStatus.ACTIVE: len(grants) - len(ends)}
    if {k: v for k, v in counts.items() if v} != expected:
        raise SystemExit(f"unexpected grant states {counts}, expected {expected}")
    still = [g.id for g in grants if g.id in ends and provider.holds(g)]
    if still:
        raise SystemExit(f"{len(still)} due grants still hold their privilege, e.g. {still[0]}")
    chain = audit_log.verify(app.deps)
    if not chain.ok:
        raise SystemExit(f"audit chain broken: {chain}")
    lags = [float(e.details["lag_ms"]) for e in expired]
    revoking = sum(1 for e in events if e.action == "grant.revoking")
    return lags, {"audit_events": chain.count, "revoking_events": revoking}


def run_floor(url: str, grants: list[Grant], due: int, timeout: float) -> dict[str, Any]:
    """The bare expirer (see the module docstring) on a copy of the seeded store."""
    provider = load_provider(grants)
    first, ends = schedule(url, grants, due)
    engine = create_engine(url)
    by_id = {g.id: g for g in grants}
    g = t.grants.c
    lags: list[float] = []
    wait_until(first)
    deadline = time.monotonic() + SPREAD.total_seconds() + timeout
    while len(lags) < due and time.monotonic() < deadline:
        moment = now()
        with engine.begin() as conn:
            ids = list(
                conn.execute(
                    sa.select(g.id)
                    .where(g.status == str(GrantStatus.ACTIVE), g.not_after <= moment)
                    .order_by(g.not_after)
                    .limit(500)
                ).scalars()
            )
            for gid in ids:
                grant = by_id[gid]
                provider.revoke(grant, moment)
                if not provider.verify_revoked(grant, moment):
                    raise SystemExit(f"floor: {gid} still held")
            done = now()
            if ids:
                conn.execute(
                    t.grants.update()
                    .where(g.id == sa.bindparam("gid"))
                    .values(status=str(GrantStatus.REVOKED), updated_at=done),
                    [{"gid": gid} for gid in ids],
                )
        lags += [max(0.0, (done - ends[gid]).total_seconds() * 1000) for gid in ids]
        if not ids:
            time.sleep(0.02)
    engine.dispose()
    if len(lags) != due:
        raise SystemExit(f"floor: {len(lags)} of {due} revoked")
    return {"lag_ms": lags}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--active", type=int, default=100_000)
    parser.add_argument("--due", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the drain")
    parser.add_argument("--smoke", action="store_true", help="5,000 active, 500 due")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.smoke:
        args.active, args.due = 5_000, 500
    if not 0 < args.due <= args.active:
        parser.error("--due must be between 1 and --active")
    logs.configure(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="keyturn-bench-") as tmp:
        workdir = Path(tmp)
        started = time.monotonic()
        seeded = workdir / "seeded.db"
        grants = seed(f"sqlite:///{seeded}", args.active, args.users, now())
        seed_s = time.monotonic() - started
        # The benchmark's own 100,000 grant objects (for the checks and the fake provider) are
        # not the worker's: keep them out of the garbage collector's way.
        gc.collect()
        gc.freeze()
        floor_db, keyturn_db = workdir / "floor.db", workdir / "keyturn.db"
        shutil.copy(seeded, floor_db)
        shutil.copy(seeded, keyturn_db)
        print(f"seeded {args.active} active grants in {seed_s:.1f} s; {args.due} due within 1 s")
        floor = run_floor(f"sqlite:///{floor_db}", grants, args.due, args.timeout)
        measured = run_keyturn(
            workdir,
            f"sqlite:///{keyturn_db}",
            args.users,
            grants,
            due=args.due,
            timeout=args.timeout,
        )
    lag, floor_lag = rounded(percentiles(measured["lag_ms"])), rounded(percentiles(floor["lag_ms"]))
    print(
        f"revocation lag, {args.due} of {args.active} active grants due within 1 s "
        f"(fake provider, SQLite, one worker), ms:\n"
        f"  keyturn  p50 {lag['p50']:.0f}  p95 {lag['p95']:.0f}  p99 {lag['p99']:.0f}  "
        f"max {lag['max']:.0f}\n"
        f"  floor    p50 {floor_lag['p50']:.0f}  p95 {floor_lag['p95']:.0f}  "
        f"p99 {floor_lag['p99']:.0f}  max {floor_lag['max']:.0f}"
    )
    goals = [
        goal(
            "4",
            metric=f"lag p99, {args.due} due of {args.active} active (fake)",
            unit="ms",
            target="p99 <= 1000 ms",
            measured=lag["p99"],
            floor=floor_lag["p99"],
            met=lag["p99"] <= 1000,
            smoke=args.smoke,
        )
    ]
    result = {
        "params": {"active": args.active, "due": args.due, "users": args.users, "store": "sqlite"},
        "seed_s": round(seed_s, 2),
        "lag_ms": lag,
        "floor_lag_ms": floor_lag,
        "audit_events": measured["audit_events"],
        "total_s": round(time.monotonic() - started, 1),
    }
    save("revocation_scale", result, goals, args.out, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
