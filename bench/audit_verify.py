"""Audit chain verification: ``keyturn audit verify`` over 1,000,000 events (issue item 7b).

1. **Fill** a fresh SQLite store (Keyturn's migrations: ``adapters.store.sql.create_engine`` +
   ``migrate``) with N correctly chained audit events of the real mix of actions: access
   request lifecycles (``request.created``, ``request.decided``, ``request.reviewed``,
   ``request.approved``/``denied``, ``grant.provisioning``, ``grant.issued``,
   ``grant.revoking``, ``grant.expired``/``released``/``revoked``) with the subjects and details
   the services write (``service/access.py``, ``service/grants.py``). The ``request.decided``
   details are real policy decisions (facts, trace, approvers) taken once, at start, from
   ``access.request_access`` on the example configuration with fakes, then varied per request
   (time facts, history, ids). Hashes come from keyturn's own ``domain.audit.chain``. The first
   lifecycle is appended through ``SqlStore.append_audit`` and its stored rows are checked to be
   byte-identical to what the bulk writer produces; the rest is bulk-inserted with
   ``executemany`` in transactions of 50,000 rows, and the chain head row is set to the last
   event. The fill time is reported apart (it is not part of any figure).
2. **Verify**: ``keyturn -o json audit verify -c CONFIG`` (local store access, no server) in a
   subprocess. The CLI is started through a shim (``python -c``) that calls the real console
   entry point ``keyturn.entrypoints.cli.main`` with ``audit_log.verify`` wrapped in a timer, so
   one run gives both the verify's own wall time and the process's (interpreter start, imports,
   ``bootstrap.build``). **events/s = events / verify wall time.** Also: the process's peak RSS
   (``wait4``), and the same process figures for an empty store (the fixed start-up cost).
   The run fails if the output is not ``ok`` with N events and the head hash of the fill.
3. **Floor**, in the same run: every row fetched with the ``sqlite3`` module
   (``SELECT seq, at, actor, action, subject, details, prev_hash, hash ORDER BY seq``) and one
   ``hashlib.sha256`` over the row's columns joined (no canonical form, no JSON parsing: there
   is no stored canonical text, so this is the bare read + hash work), events/s; ratio =
   floor events/s / verify events/s (how many times slower than the bare work the verify is).
4. **Tamper check**: afterwards one event's details are changed in place (one value edited, the
   row rewritten as the store writes it) and the plain ``keyturn`` console script must exit 8
   naming exactly that seq; otherwise the run fails (a verifier that checks nothing cannot pass).

Usage (from the repository root)::

    .venv/bin/python bench/audit_verify.py            # 1,000,000 events (~1-2 min)
    .venv/bin/python bench/audit_verify.py --smoke    # 20,000 events (seconds)
    .venv/bin/python bench/audit_verify.py --events 200000 --out /tmp/av.json

Nothing talks beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import yaml

from keyturn.adapters.store.sql import SqlStore, create_engine, migrate
from keyturn.domain.audit import (
    AuditDraft,
    AuditEvent,
    canonical_bytes,
    chain,
    format_time,
    stored_event,
)
from keyturn.entrypoints import logs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import goal, save  # noqa: E402

NAME = "audit_verify"
FULL_EVENTS = 1_000_000
SMOKE_EVENTS = 20_000
GOAL_EPS = 200_000
BATCH = 50_000
EXIT_AUDIT_BROKEN = 8
T0 = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
COLUMNS = "seq, at, actor, action, subject, details, prev_hash, hash"

# The real console entry point, with audit_log.verify timed and the process's peak RSS (VmHWM:
# unlike ru_maxrss, not inherited from the benchmark's own process across exec) on stderr.
SHIM = """
import re, sys, time
from pathlib import Path
from keyturn.service import audit_log
_verify = audit_log.verify
def _timed(*args, **kwargs):
    start = time.perf_counter()
    try:
        return _verify(*args, **kwargs)
    finally:
        print(f"BENCH_VERIFY_S={time.perf_counter() - start!r}", file=sys.stderr)
        hwm = re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text())
        print(f"BENCH_HWM_KB={hwm.group(1) if hwm else 0}", file=sys.stderr)
audit_log.verify = _timed
from keyturn.entrypoints.cli import main
sys.argv[0] = "keyturn"
sys.exit(main())
"""


# --- realistic events ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Decided:
    """A real ``request.decided`` details dict (from the policy engine) and who asked what."""

    user: str
    role: str
    target: str
    details: dict[str, Any]


def real_decisions(tmp: Path) -> dict[str, Decided]:
    """One real decision per outcome, from ``access.request_access`` on the example config."""
    from tests.conftest import example_data, fake_deps, user
    from tests.unit.test_lifecycle import KEY

    from keyturn.service import access
    from keyturn.service.access import RequestInput
    from keyturn.testing import FakeClock, FakeProvider

    logs.configure(logging.WARNING)  # the notifier logs every decision at info
    deps = fake_deps(example_data(tmp), FakeClock(), {"ssh": FakeProvider("ssh")})
    found: dict[str, Decided] = {}
    asks = [
        ("alice", "server-admin", "db-1"),
        ("bob", "db-schema-admin", "db-1"),
        ("mallory", "server-admin", "db-1"),
        ("bob", "db-admin", "db-2"),
        ("alice", "db-admin", "db-1"),
    ]
    for who, role, target in asks:
        try:
            view = access.request_access(
                deps,
                user(deps, who),
                RequestInput(role, target, timedelta(minutes=30), "db-1 is down", None, KEY),
            )
        except Exception:  # noqa: S112 (not eligible: try the next one)
            continue
        outcome = str(view.request.decision.outcome)
        with deps.store.transaction() as tx:
            decided = [e for e in tx.audit_events() if e.action == "request.decided"][-1]
        found.setdefault(outcome, Decided(who, role, target, decided.details))
    if "auto_approve" not in found or "require_approval" not in found:
        raise SystemExit(f"the example policy gave no auto/required decision: {sorted(found)}")
    return found


JUSTIFICATIONS = (
    "db-{t} replication lag, INC-{k}",
    "deploy hotfix for ticket OPS-{k}",
    "Réplication bloquée sur db-{t} — INC-{k}",  # non-ASCII: escaped in the stored JSON
    "rotate TLS certificates (change CHG-{k})",
    "investigate slow queries: p99 > 2 s since 02:00",
)


def _decided(decided: Decided, at: datetime, k: int) -> dict[str, Any]:
    details = json.loads(json.dumps(decided.details))  # a deep copy
    facts = details["facts"]
    facts["now"] = {
        "timestamp": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "hour": at.hour,
        "weekday": at.isoweekday(),
        "date": at.date().isoformat(),
    }
    facts["history"] = {"requests_7d": k % 9, "hours_elevated_7d": (k % 13) * 0.25}
    return details


def _window(role: str, target: str, start: datetime, serial: int) -> dict[str, Any]:
    return {
        "role": role,
        "target": target,
        "provider": "ssh",
        "not_before": format_time(start),
        "not_after": format_time(start + timedelta(minutes=30)),
        "serial": str(serial),  # 63-bit serials are strings (RFC 8785 safe integers)
        "privilege": None,
    }


def lifecycle(k: int, decisions: dict[str, Decided]) -> list[AuditDraft]:
    """Request lifecycle number ``k`` (one every ~7 s), with the services' shapes: 60 %
    auto-approved then expired, 20 % reviewed then expired or released, 10 % revoked by an
    admin, 10 % denied (by policy, or by the reviewer if the policy never denies)."""
    kind = k % 10
    reviewed = kind in (6, 7) or (kind == 9 and "deny" not in decisions)
    outcome = "deny" if kind == 9 and not reviewed else "auto_approve"
    outcome = "require_approval" if reviewed else outcome
    d = decisions[outcome]
    at = T0 + timedelta(seconds=7 * k, microseconds=(k * 7919) % 1_000_000)
    asked = at
    req, grant = f"req_{k:08x}{k * 2654435761 % 2**32:08x}", f"grt_{k * 40503 % 2**32:08x}{k:08x}"
    sub = {"request_id": req, "user_id": d.user}
    created = {
        "role": d.role,
        "target": d.target,
        "duration_s": 1800,
        "justification": JUSTIFICATIONS[k % len(JUSTIFICATIONS)].format(k=k, t=k % 3 + 1),
        "ticket": f"INC-{k}" if k % 2 else None,
    }
    drafts = [
        AuditDraft(at, d.user, "request.created", sub, created),
        AuditDraft(at, "system:policy", "request.decided", sub, _decided(d, at, k)),
    ]
    if outcome == "deny":
        return drafts
    if reviewed:
        at += timedelta(minutes=3, milliseconds=k % 997)
        denied = kind == 9
        review = {"verdict": "deny" if denied else "approve", "comment": "ok, go ahead"}
        drafts.append(AuditDraft(at, "carol", "request.reviewed", sub, review))
        drafts.append(
            AuditDraft(at, "carol", f"request.{'denied' if denied else 'approved'}", sub, {})
        )
        if denied:
            return drafts
    gsub = {"grant_id": grant, "request_id": req, "user_id": d.user}
    window = _window(d.role, d.target, at, 10**17 + k)
    issued = at + timedelta(milliseconds=40 + k % 60)
    done = {"time_to_grant_ms": int((issued - asked).total_seconds() * 1000)}
    done |= {"already_present": False, "verified": True}
    end = {7: "released", 8: "revoked"}.get(kind, "expired")
    ended = issued + timedelta(minutes=4 + k % 20)
    if end == "expired":
        ended = issued + timedelta(minutes=30, milliseconds=300 + k % 700)
    actor = {"released": d.user, "revoked": "sam"}.get(end, "system:worker")
    gone: dict[str, Any] = {"verified": True, "already_gone": False, "serial": window["serial"]}
    if end == "expired":
        gone["lag_ms"] = 300 + k % 700
    return [
        *drafts,
        AuditDraft(at, "system:worker", "grant.provisioning", gsub, window),
        AuditDraft(issued, "system:worker", "grant.issued", gsub, window | done),
        AuditDraft(ended, actor, "grant.revoking", gsub, {"reason": end}),
        AuditDraft(ended + timedelta(milliseconds=25), actor, f"grant.{end}", gsub, gone),
    ]


def row(event: AuditEvent) -> tuple[Any, ...]:
    """The ``audit_events`` row the SQL store writes (JSON columns: SQLAlchemy's json.dumps)."""
    return (
        event.seq,
        format_time(event.at),
        event.actor,
        event.action,
        json.dumps(event.subject),
        json.dumps(event.details),
        event.prev_hash,
        event.hash,
    )


# --- fill ---------------------------------------------------------------------------------------
@dataclass
class Fill:
    events: int
    head: str
    seconds: float
    chain_seconds: float
    insert_seconds: float
    db_bytes: int
    actions: dict[str, int]


PLACEHOLDER = "~" * 64  # stands for prev_hash in the worker processes' canonical bytes
MARK = f'"prev":"{PLACEHOLDER}","seq":0,'.encode()


def canonical_parts(task: tuple[int, int, dict[str, Decided]]) -> list[tuple[Any, ...]]:
    """In a worker: lifecycles ``k0 <= k < k1`` as rows without seq and hashes, each with its
    RFC 8785 bytes (keyturn's ``canonical_bytes``) split around ``prev`` and ``seq``: sorted
    keys put ``"prev"`` then ``"seq"`` together, so the bytes of event ``seq`` after ``prev``
    are ``head + "prev":"<prev>","seq":<seq>, + tail``."""
    k0, k1, decisions = task
    out = []
    for k in range(k0, k1):
        for d in lifecycle(k, decisions):
            head, mark, tail = canonical_bytes(0, d, PLACEHOLDER).partition(MARK)
            if not mark or MARK in tail:
                raise RuntimeError(f"unexpected canonical form for lifecycle {k}")
            subject, details = json.dumps(d.subject), json.dumps(d.details)
            out.append((format_time(d.at), d.actor, d.action, subject, details, head, tail))
    return out


def canonical_stream(k0: int, decisions: dict[str, Decided]) -> Iterator[tuple[Any, ...]]:
    """:func:`canonical_parts` of lifecycles k0, k0+1, … from one process per CPU, in order."""
    per_task = 500
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(os.cpu_count() or 1, mp_context=context) as pool:
        pending: deque[Future[list[tuple[Any, ...]]]] = deque()
        k = k0
        try:
            while True:
                while len(pending) < 8 * (os.cpu_count() or 1):
                    pending.append(pool.submit(canonical_parts, (k, k + per_task, decisions)))
                    k += per_task
                yield from pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def fill(url: str, db: Path, n: int, decisions: dict[str, Decided]) -> Fill:
    """N chained events: the first lifecycle through the real store, the rest in bulk.

    The bulk events' RFC 8785 bytes come from worker processes (:func:`canonical_parts`); the
    SHA-256 chain is computed here, in order. Every 1,000th event (and the first 100) is
    chained again with ``domain.audit.chain`` from its stored row and must hash the same.
    """
    start = time.perf_counter()
    engine = create_engine(url)
    migrate(engine)
    with SqlStore(engine).transaction() as tx:
        first = [tx.append_audit(d) for d in lifecycle(1, decisions)[:n]]
    engine.dispose()
    con = sqlite3.connect(db, isolation_level=None)
    stored = con.execute(f"SELECT {COLUMNS} FROM audit_events ORDER BY seq").fetchall()  # noqa: S608
    if stored != [row(e) for e in first]:
        raise SystemExit("bulk rows differ from what SqlStore.append_audit writes")
    con.execute("PRAGMA journal_mode=OFF")  # bulk: no WAL copy of 600 MB (WAL again at the end)
    con.execute("PRAGMA synchronous=OFF")
    actions: dict[str, int] = {}
    for e in first:
        actions[e.action] = actions.get(e.action, 0) + 1
    seq, prev = len(first), first[-1].hash
    chain_s = insert_s = 0.0
    stream = canonical_stream(2, decisions)
    sha256 = hashlib.sha256
    while seq < n:
        t = time.perf_counter()
        rows = []
        for at, actor, action, subject, details, head, tail in islice(stream, min(BATCH, n - seq)):
            seq += 1
            canonical = (
                head,
                b'"prev":"',
                prev.encode(),
                b'","seq":',
                str(seq).encode(),
                b",",
                tail,
            )
            digest = sha256(b"".join(canonical)).hexdigest()
            rows.append((seq, at, actor, action, subject, details, prev, digest))
            if seq % 1000 == 0 or seq <= 100:
                e = stored_event(rows[-1])
                again = chain(seq, AuditDraft(e.at, e.actor, e.action, e.subject, e.details), prev)
                if row(again) != rows[-1]:
                    raise SystemExit(f"event {seq}: bulk row differs from domain.audit.chain's")
            prev = digest
            actions[action] = actions.get(action, 0) + 1
        t2 = time.perf_counter()
        con.execute("BEGIN")
        con.executemany(f"INSERT INTO audit_events ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?)", rows)  # noqa: S608
        con.execute("UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
        con.execute("COMMIT")
        chain_s += t2 - t
        insert_s += time.perf_counter() - t2
    stream.close()
    con.execute("PRAGMA journal_mode=WAL")
    con.close()
    return Fill(n, prev, time.perf_counter() - start, chain_s, insert_s, db.stat().st_size, actions)


# --- floor --------------------------------------------------------------------------------------
def floor(db: Path) -> tuple[int, float]:
    """Fetch every row with sqlite3 and sha256 its columns once: (rows, seconds)."""
    con = sqlite3.connect(db)
    start = time.perf_counter()
    n = 0
    sha256 = hashlib.sha256
    for r in con.execute(f"SELECT {COLUMNS} FROM audit_events ORDER BY seq"):  # noqa: S608
        sha256("\x1f".join(map(str, r)).encode()).digest()
        n += 1
    seconds = time.perf_counter() - start
    con.close()
    return n, seconds


# --- the CLI --------------------------------------------------------------------------------------
@dataclass
class Run:
    rc: int
    wall_s: float
    cpu_s: float
    verify_s: float | None
    max_rss_mib: float
    data: dict[str, Any] | None
    stderr: str


def cli(config: Path, *, shim: bool, workers: int | None = None) -> Run:
    """``keyturn -o json audit verify -c CONFIG`` in a child process (CPU time: its own and its
    workers'; peak RSS: the CLI process's, with the shim)."""
    bindir = Path(sys.executable).parent
    argv = [sys.executable, "-c", SHIM] if shim else [str(bindir / "keyturn")]
    argv += ["-o", "json", "audit", "verify", "-c", str(config)]
    argv += [] if workers is None else ["--workers", str(workers)]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    verify_s, hwm_kb = None, 0.0
    for line in stderr.splitlines():
        if line.startswith("BENCH_VERIFY_S="):
            verify_s = float(line.split("=", 1)[1])
        if line.startswith("BENCH_HWM_KB="):
            hwm_kb = float(line.split("=", 1)[1])
    try:
        data = json.loads(stdout)
    except json.JSONDecodeError:
        data = None
    cpu = usage.ru_utime + usage.ru_stime
    return Run(proc.returncode, wall, cpu, verify_s, hwm_kb / 1024, data, stderr)


def tamper(db: Path, seq: int) -> str:
    """Edit one value of event ``seq``'s details in place, as the store would write it."""
    con = sqlite3.connect(db, isolation_level=None)
    (text, action) = con.execute(
        "SELECT details, action FROM audit_events WHERE seq = ?", (seq,)
    ).fetchone()
    details = json.loads(text)
    key = sorted(details)[0] if details else "note"
    value = details.get(key)
    if isinstance(value, bool):
        details[key] = not value
    elif isinstance(value, int):
        details[key] = value + 1
    elif isinstance(value, str):
        details[key] = value[:-1] + ("x" if value[-1:] != "x" else "y")
    else:
        details[key] = "changed"
    con.execute("UPDATE audit_events SET details = ? WHERE seq = ?", (json.dumps(details), seq))
    con.close()
    return f"{action}: details.{key} {value!r} -> {details[key]!r}"


# --- main -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_EVENTS:,} events (seconds)")
    p.add_argument("--events", type=int, default=None, help=f"default {FULL_EVENTS:,}")
    p.add_argument("--out", type=Path, default=None, help="JSON results path")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="keyturn audit verify --workers (default: its own)",
    )
    args = p.parse_args(argv)
    if args.events is None:
        args.events = SMOKE_EVENTS if args.smoke else FULL_EVENTS
    if args.events < 100:
        p.error("--events must be at least 100")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    n = args.events
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="keyturn-bench-audit-") as tmpdir:
        tmp = Path(tmpdir)
        from tests.conftest import example_data

        decisions = real_decisions(tmp / "capture")
        db = tmp / "keyturn.db"
        data = example_data(tmp)
        data["store"] = {"url": f"sqlite:///{db}"}
        config = tmp / "keyturn.yaml"
        config.write_text(yaml.safe_dump(data))
        empty = tmp / "empty.yaml"
        empty_db = tmp / "empty.db"
        migrate(create_engine(f"sqlite:///{empty_db}"))
        empty.write_text(yaml.safe_dump(data | {"store": {"url": f"sqlite:///{empty_db}"}}))

        print(f"audit verify: {n:,} events, SQLite, {os.cpu_count()} CPUs")
        filled = fill(data["store"]["url"], db, n, decisions)
        print(
            f"  fill: {filled.seconds:.1f} s (chain {filled.chain_seconds:.1f} s, insert "
            f"{filled.insert_seconds:.1f} s), {filled.db_bytes / 2**20:.0f} MiB"
        )
        start = cli(empty, shim=True)
        if start.rc != 0 or start.data is None or start.data["events"] != 0:
            raise SystemExit(f"verify of the empty store failed: {start.rc}\n{start.stderr}")
        floor_n, floor_s = floor(db)
        run = cli(config, shim=True, workers=args.workers)
        ok = (
            run.rc == 0
            and run.data is not None
            and run.data["ok"]
            and run.data["events"] == n
            and run.data["head_hash"] == filled.head
            and run.verify_s is not None
        )
        if not ok or run.verify_s is None:
            print(run.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"keyturn audit verify failed on the intact chain: {run.data}")
        verify_eps = n / run.verify_s
        process_eps = n / run.wall_s
        floor_eps = floor_n / floor_s

        bad_seq = n - n // 7
        edit = tamper(db, bad_seq)
        broken = cli(config, shim=False, workers=args.workers)
        caught = (
            broken.rc == EXIT_AUDIT_BROKEN
            and broken.data is not None
            and broken.data["first_bad_seq"] == bad_seq
        )
        print(f"  tamper seq {bad_seq} ({edit}): exit {broken.rc}, {broken.data}")
        if not caught:
            raise SystemExit("the tampered chain was not reported at the edited seq")

    total = time.perf_counter() - began
    table = [
        ("verify (audit_log.verify in the CLI)", run.verify_s, verify_eps),
        ("whole CLI process", run.wall_s, process_eps),
        ("CLI process, empty store (start-up)", start.wall_s, None),
        ("floor: sqlite3 fetch + sha256 per row", floor_s, floor_eps),
    ]
    print(f"  {'':<42} {'seconds':>8} {'events/s':>10}")
    for label, seconds, eps in table:
        print(f"  {label:<42} {seconds:>8.2f} {'-' if eps is None else f'{eps:,.0f}':>10}")
    print(
        f"  CPU (CLI + its workers): verify run {run.cpu_s:.2f} s "
        f"({run.cpu_s / n * 1e6:.2f} us/event), empty store {start.cpu_s:.2f} s; peak RSS of "
        f"the CLI: {run.max_rss_mib:.0f} MiB (empty store {start.max_rss_mib:.0f} MiB); "
        f"whole benchmark {total:.0f} s"
    )
    result = {
        "params": {"events": n, "store": "sqlite", "batch": BATCH, "workers": args.workers},
        "fill": {
            "seconds": round(filled.seconds, 2),
            "chain_seconds": round(filled.chain_seconds, 2),
            "insert_seconds": round(filled.insert_seconds, 2),
            "db_mib": round(filled.db_bytes / 2**20, 1),
            "actions": dict(sorted(filled.actions.items())),
        },
        "verify": {
            "seconds": round(run.verify_s, 3),
            "events_per_s": round(verify_eps),
            "process_wall_s": round(run.wall_s, 3),
            "process_events_per_s": round(process_eps),
            "process_cpu_s": round(run.cpu_s, 3),
            "max_rss_mib": round(run.max_rss_mib, 1),
        },
        "startup": {
            "process_wall_s": round(start.wall_s, 3),
            "process_cpu_s": round(start.cpu_s, 3),
            "max_rss_mib": round(start.max_rss_mib, 1),
        },
        "floor": {
            "what": "sqlite3 fetch of every row + one sha256 over the row's columns joined",
            "seconds": round(floor_s, 3),
            "events_per_s": round(floor_eps),
        },
        "tamper": {"seq": bad_seq, "edit": edit, "exit": broken.rc, "output": broken.data},
        "total_seconds": round(total, 1),
    }
    goals = [
        goal(
            "7b",
            metric="audit verify, time per event",
            unit="us",
            target=f"<= {1e6 / GOAL_EPS:g} us/event (>= {GOAL_EPS:,} events/s)",
            measured=run.verify_s / n * 1e6,
            floor=floor_s / floor_n * 1e6,
            met=verify_eps >= GOAL_EPS,
            smoke=args.smoke,
        ),
        goal(
            "7b",
            metric="audit verify, whole CLI process per event",
            unit="us",
            target="(informative: includes interpreter start and bootstrap)",
            measured=run.wall_s / n * 1e6,
            floor=floor_s / floor_n * 1e6,
            met=process_eps >= GOAL_EPS,
            smoke=args.smoke,
        ),
    ]
    save(NAME, result, goals, args.out, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
