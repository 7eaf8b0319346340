"""Restart with many grants: time to ready and resident memory with 1,000,000 grants stored.

Fills a SQLite store (keyturn's migrations, then bulk ``executemany`` inserts in one big
transaction) with ``--grants`` grants and their access requests: ``--active`` of them active
(``not_after`` ahead), ``--due`` of those already past ``not_after`` (the worker has real work:
they expired while Keyturn was down; SSH grants, so no directory change), the rest ended over
the past year (revoked: ~80 % expired, ~14 % released, ~3 % revoked by an admin; ~3 % failed),
with realistic columns: half SSH (``server-admin`` on 20 hosts, each row with a real certificate
in ``credentials``), half LDAP group memberships (10 groups). The rows are clones of two rows
made through ``access.request_access`` on the same store (so formats are exactly Keyturn's),
with their own ids (20 hex digits like Keyturn's, but in creation order), users, times (whole
seconds), states and serials. No audit events are added (startup reads only the chain head).
A throwaway slapd holds the users and, in each group, exactly the users with a live grant of
it, so reconciliation finds no drift.
The filled file is cached in a temporary directory for the run only; the fill time is reported.

Then, ``--runs`` times each (median reported), as subprocesses, as deployed:

* ``keyturn serve -c CONFIG`` (API + its expiry worker): **ready** = from ``Popen`` to the
  first 200 of ``GET /readyz`` (polled every 10 ms);
* ``keyturn worker -c CONFIG``: the expiry worker alone;

and for both: **first pass** (its reconciliation wrote one standing snapshot per group: the
end of the worker's first pass, which claims at most ``16 x revoke_concurrency`` = 128 due
grants), then, once that happened (and ready, for serve) and at least 2 s (smoke: 1 s) after
start, ``VmRSS`` and ``VmHWM`` (peak) from ``/proc/PID/status``, the CPU seconds used, the due
grants still left, and (serve) the time of one ``GET /metrics``. The due grants are made active
again after each loaded run. With ``--profile DIR``, an extra uncounted start of each kind is
sampled first by py-spy (every thread, idle included) into ``DIR/<kind>-<store>.raw``.
Floor, interleaved with the loaded runs: the same two processes with the same configuration
on an EMPTY store (migrated, no rows) and a directory whose groups hold no one but the
allowlisted account; ratio = loaded / empty. The page cache is warm (the file was just written).

Goals (issue item 5): ready <= 5 s; RSS <= 300 MB.

Usage (from the repository root)::

    .venv/bin/python bench/restart.py            # 1,000,000 grants (~2 min with the fill)
    .venv/bin/python bench/restart.py --smoke    # 20,000 grants, one run each (~15 s)

Nothing talks beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import secrets
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ldap
import sqlalchemy as sa
import yaml
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect

from keyturn.adapters.store import tables as t
from keyturn.adapters.store.sql import create_engine, migrate
from keyturn.bootstrap import build
from keyturn.config import normalize_dn, parse_config
from keyturn.domain.model import GrantStatus
from keyturn.entrypoints import logs
from keyturn.lab import Slapd, child_dn, free_port, make_user_key
from keyturn.service import access

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import goal, rounded, save  # noqa: E402
from tests.load import BIND_ENV, ldap_section  # noqa: E402

NAME = "restart"
KEYTURN = str(Path(sys.executable).parent / "keyturn")
PY_SPY = str(Path(sys.executable).parent / "py-spy")
PASSWORD = secrets.token_urlsafe(18)  # slapd's service account, both directories
PLACEHOLDER = "svc-backup"
GROUPS = 10
HOSTS = 20
SSH_ROLE = "server-admin"
DIRECTORY = "corp-directory"
CHUNK = 50_000
POLL_S = 0.01
STATE_POLL_S = 0.05
START_TIMEOUT_S = 120
MB = 1024 * 1024


@dataclass(frozen=True)
class Size:
    grants: int
    active: int
    due: int
    users: int
    runs: int
    settle: float


FULL = Size(grants=1_000_000, active=100_000, due=1_000, users=2_000, runs=3, settle=2.0)
SMOKE = Size(grants=20_000, active=2_000, due=100, users=200, runs=1, settle=1.0)


def uid(i: int) -> str:
    return f"u{i:04d}"


def group_cn(j: int) -> str:
    return f"g{j:02d}"


def ldap_role(j: int) -> str:
    return f"r{j:02d}"


# --- directory and configuration ----------------------------------------------------------------
def start_directory(workdir: Path, users: int) -> tuple[Slapd, dict[str, str], list[str]]:
    """slapd with the placeholder, ``users`` users (0 for the empty floor) and the groups
    (placeholder only). Users are added over one connection (the lab helper binds per entry)."""
    server = Slapd(workdir, service_password=PASSWORD).start()
    conn = server.connect()
    try:
        people: dict[str, str] = {}
        for name in [PLACEHOLDER, *(uid(i) for i in range(users))]:
            dn = child_dn("uid", name, server.people_base)
            conn.add_s(
                dn,
                [
                    ("objectClass", [b"inetOrgPerson"]),
                    ("uid", [name.encode()]),
                    ("cn", [name.encode()]),
                    ("sn", [name.encode()]),
                ],
            )
            people[name] = dn
        groups = []
        for j in range(GROUPS):
            dn = child_dn("cn", group_cn(j), server.groups_base)
            conn.add_s(
                dn,
                [
                    ("objectClass", [b"groupOfNames"]),
                    ("cn", [group_cn(j).encode()]),
                    ("member", [people[PLACEHOLDER].encode()]),
                ],
            )
            groups.append(dn)
    finally:
        conn.unbind_s()
    return server, people, groups


def config_data(workdir: Path, server: Slapd, db: Path, users: int, port: int) -> dict[str, Any]:
    """SSH hosts and directory groups, auto-approved; the server's defaults otherwise."""
    placeholder = child_dn("uid", PLACEHOLDER, server.people_base)
    groups = [child_dn("cn", group_cn(j), server.groups_base) for j in range(GROUPS)]
    return {
        "version": 1,
        "server": {"host": "127.0.0.1", "port": port},
        "store": {"url": f"sqlite:///{db}"},
        "ssh_ca": {"key_path": str(workdir / "ca" / "user_ca")},
        "ldap": ldap_section(server, groups, placeholder),
        "users": [{"id": uid(i), "name": f"User {i}", "groups": ["sre"]} for i in range(users)],
        "targets": [
            *({"name": f"host-{h:02d}", "labels": {"env": "prod"}} for h in range(HOSTS)),
            {"name": DIRECTORY, "labels": {"kind": "directory"}},
        ],
        "roles": [
            {
                "name": SSH_ROLE,
                "tier": "standard",
                "max_duration": "PT8H",
                "provider": "ssh",
                "ssh": {"principals": ["{role}@{target}"]},
            },
            *(
                {
                    "name": ldap_role(j),
                    "tier": "standard",
                    "max_duration": "PT8H",
                    "provider": "ldap",
                    "ldap": {"group": dn},
                }
                for j, dn in enumerate(groups)
            ),
        ],
        "eligibility": [
            {"groups": ["sre"], "roles": [SSH_ROLE], "targets": {"labels": {"env": "prod"}}},
            {
                "groups": ["sre"],
                "roles": [ldap_role(j) for j in range(GROUPS)],
                "targets": {"names": [DIRECTORY]},
            },
        ],
        "policy": {
            "rules": [
                {
                    "name": "standard-auto-approve",
                    "when": 'role.tier == "standard" && request.duration <= 28800',
                    "effect": "auto_approve",
                }
            ]
        },
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


# --- the fill -----------------------------------------------------------------------------------
def templates(data: dict[str, Any], workdir: Path) -> list[str]:
    """Make one SSH and one LDAP grant through ``request_access`` on the (migrated) store; their
    rows are the templates of the fill. Returns their grant ids."""
    loaded = parse_config(data, raw=yaml.safe_dump(data).encode())
    app = build(loaded, environ={BIND_ENV: PASSWORD})
    key = make_user_key(workdir / "keys" / "id_ed25519", "u0000@bench").read_text()
    users = {u.id: u for u in app.deps.config.users}
    ids = []
    try:
        for role, target in ((SSH_ROLE, "host-00"), (ldap_role(0), DIRECTORY)):
            view = access.request_access(
                app.deps,
                users[uid(0)],
                access.RequestInput(
                    role,
                    target,
                    timedelta(hours=8),
                    "restart benchmark template",
                    ssh_public_key=key if role == SSH_ROLE else None,
                ),
            )
            if view.grant is None or view.grant.status is not GrantStatus.ACTIVE:
                raise SystemExit(f"template grant not active: {view.grant}")
            ids.append(view.grant.id)
    finally:
        app.close()
    return ids


class Stamp:
    """Whole epoch seconds → the text SQLAlchemy stores for a ``DateTime`` in SQLite
    (``YYYY-MM-DD HH:MM:SS.ffffff``), fast: the date and the time of day come from tables."""

    def __init__(self, start: int, end: int) -> None:
        self._day0 = start // 86400 - 1
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        self._days = [
            (epoch + timedelta(days=self._day0 + d)).strftime("%Y-%m-%d ")
            for d in range(end // 86400 - self._day0 + 2)
        ]
        self._times = [
            f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}.{s * 7919 % 1000:03d}417"
            for s in range(86400)
        ]

    def __call__(self, at: int) -> str:
        day, second = divmod(at, 86400)
        return self._days[day - self._day0] + self._times[second]


DURATIONS = (900, 1800, 3600, 7200, 14400)
DAY = 86400


def _sql(statement: Any) -> str:
    """A statement on Keyturn's tables as SQLite text (``?`` parameters, columns in table order)."""
    return str(statement.compile(dialect=sqlite_dialect()))


@dataclass
class Filled:
    seconds: float
    bytes: int
    counts: dict[str, int]
    due_ids: list[str]
    members: dict[int, set[int]]  # group index -> users with a live grant of it


class Cloner:
    """The k-th grant and its request, cloned from the template rows (columns in table order).

    Grants 0 … grants-active-1 ended, created in order over the past year; the last ``active``
    are live, created in the last hour, of which the first ``2 x due`` SSH ones (every other
    grant is SSH) ended in the last minute while nobody was running: they are due.
    """

    def __init__(
        self,
        templates: dict[str, tuple[tuple[Any, ...], tuple[Any, ...]]],
        size: Size,
        groups: list[str],
        people: dict[str, str],
    ) -> None:
        self._templates = templates
        self._size = size
        self._groups = groups
        self._privileges = [normalize_dn(dn) for dn in groups]
        self._uids = [uid(i) for i in range(size.users)]
        self._member_dn = [people[name] for name in self._uids]
        self._g = {c.name: i for i, c in enumerate(t.grants.c)}
        self._r = {c.name: i for i, c in enumerate(t.access_requests.c)}
        self._ended = size.grants - size.active
        self._now = int(time.time())
        self._stamp = Stamp(self._now - 400 * DAY, self._now + DAY)
        self._credentials: dict[tuple[int, int], str] = {}
        self.due_ids: list[str] = []
        self.members: dict[int, set[int]] = {j: set() for j in range(GROUPS)}
        self.members[0].add(0)  # the LDAP template: u0000 in g00, active

    def _window(self, k: int, ssh: bool) -> tuple[int, int, bool, bool]:
        """Creation time, duration (s), live, due."""
        duration = DURATIONS[(k * 31) % len(DURATIONS)]
        n = k - self._ended
        if n < 0:  # ended
            return self._now - 365 * DAY + k * 364 * DAY // self._ended, duration, False, False
        if ssh and n < 2 * self._size.due:  # expired while Keyturn was down
            return self._now - 60 - duration + n // 100, duration, True, True
        created = self._now - 3600 + n * 3600 // self._size.active
        return created, max(duration, 7200) + 3600, True, False

    def rows(self, k: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
        g, r, stamp = self._g, self._r, self._stamp
        ssh = k % 2 == 0
        template_grant, template_request = self._templates["ssh" if ssh else "ldap"]
        grant, request = list(template_grant), list(template_request)
        user = (k * 7919) % self._size.users
        created, duration, live, due = self._window(k, ssh)
        not_before = created + 1
        not_after = not_before + duration
        # 20 hex digits like random_id's, in creation order (as a B-tree fills fastest)
        tail = (k * 0x9E3779B97F4A7C15 >> 20) & 0xFFFFFFFFFFFF
        gid, rid = f"grt_{k:08x}{tail:012x}", f"req_{k:08x}{tail:012x}"
        grant[g["id"]], grant[g["request_id"]] = gid, rid
        grant[g["user_id"]] = request[r["requester_id"]] = self._uids[user]
        grant[g["created_at"]] = stamp(created)
        grant[g["not_before"]] = stamp(not_before)
        grant[g["not_after"]] = stamp(not_after)
        if ssh:
            grant[g["target"]] = f"host-{k % HOSTS:02d}"
            grant[g["serial"]] = (k * 0x9E3779B97F4A7C15) % (2**62) + 2**62
        else:
            j = (k // 2) % GROUPS
            grant[g["role"]] = ldap_role(j)
            grant[g["privilege"]] = self._privileges[j]
            grant[g["credentials"]] = self._credentials.get((j, user)) or self._ldap(j, user)
            if live:
                self.members[j].add(user)
        if live:
            grant[g["updated_at"]] = stamp(not_before)
            if due:
                grant[g["warned_at"]] = stamp(not_after - 600)
                self.due_ids.append(gid)
        else:
            self._end(grant, k, user, not_before, not_after)
        request[r["id"]] = rid
        request[r["role"]], request[r["target"]] = grant[g["role"]], grant[g["target"]]
        request[r["duration_s"]] = duration
        request[r["justification"]] = f"INC-{k} investigate replication lag on the primary"
        request[r["created_at"]] = request[r["updated_at"]] = stamp(created)
        return tuple(grant), tuple(request)

    def _ldap(self, j: int, user: int) -> str:
        text = json.dumps(
            {
                "ldap_group": self._groups[j],
                "ldap_attribute": "member",
                "ldap_member": self._member_dn[user],
            }
        )
        self._credentials[j, user] = text
        return text

    def _end(self, grant: list[Any], k: int, user: int, not_before: int, not_after: int) -> None:
        """~3 % failed (never active), else revoked: ~3 % by an admin, ~14 % released,
        ~80 % expired (and warned 10 minutes before)."""
        g, stamp = self._g, self._stamp
        kind = (k * 37) % 100
        grant[g["attempts"]] = 1
        if kind < 3:
            grant[g["status"]] = "failed"
            grant[g["credentials"]] = "{}"
            grant[g["last_error"]] = "ldap: the directory did not answer in 5 s (timeout)"
            grant[g["updated_at"]] = stamp(not_before + 5)
            return
        duration = not_after - not_before
        if kind < 6:
            reason, by, at = "revoked", uid(0), not_before + duration // 3
        elif kind < 20:
            reason, by, at = "released", self._uids[user], not_before + duration // 2
        else:
            reason, by, at = "expired", "system:worker", not_after + 1
            grant[g["warned_at"]] = stamp(not_after - 600)
        grant[g["status"]] = "revoked"
        grant[g["end_reason"]], grant[g["ended_by"]] = reason, by
        grant[g["ended_at"]] = grant[g["updated_at"]] = stamp(at)


def fill(
    db: Path, size: Size, template_ids: list[str], groups: list[str], people: dict[str, str]
) -> Filled:
    """Clone the template rows into ``size.grants`` grants (and their requests): one
    transaction, ``executemany`` in chunks, journal and fsync off while filling."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-400000")  # 400 MB: random ids go into the unique indexes
    select_grant = _sql(sa.select(*t.grants.c).where(t.grants.c.id == sa.bindparam("id")))
    select_request = _sql(
        sa.select(*t.access_requests.c).where(t.access_requests.c.id == sa.bindparam("id"))
    )
    templates = {}
    for gid in template_ids:
        grant = conn.execute(select_grant, (gid,)).fetchone()
        request = conn.execute(select_request, (grant[1],)).fetchone()  # request_id
        templates[grant[5]] = (grant, request)  # by provider
    cloner = Cloner(templates, size, groups, people)
    insert_grant, insert_request = _sql(t.grants.insert()), _sql(t.access_requests.insert())
    conn.execute("BEGIN")
    # secondary indexes are built once at the end (sorted: much faster than row by row)
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('grants', 'access_requests')"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{name}"')
    for start in range(0, size.grants, CHUNK):
        rows = [cloner.rows(k) for k in range(start, min(size.grants, start + CHUNK))]
        conn.executemany(insert_request, [request for _, request in rows])
        conn.executemany(insert_grant, [grant for grant, _ in rows])
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode=WAL")
    counts = dict(conn.execute("SELECT status, count(*) FROM grants GROUP BY status").fetchall())
    conn.close()
    seconds = time.perf_counter() - t0
    return Filled(seconds, db.stat().st_size, counts, cloner.due_ids, cloner.members)


def seed_members(server: Slapd, people: dict[str, str], groups: list[str], filled: Filled) -> None:
    """Each group holds exactly the users with a live grant of it (and the placeholder)."""
    conn = server.connect()
    try:
        for j, dn in enumerate(groups):
            present = {normalize_dn(m) for m in server.members(dn)}
            add = [
                people[uid(i)].encode()
                for i in sorted(filled.members[j])
                if normalize_dn(people[uid(i)]) not in present
            ]
            if add:
                conn.modify_s(dn, [(ldap.MOD_ADD, "member", add)])
    finally:
        conn.unbind_s()


def reset_due(db: Path, due_ids: list[str]) -> None:
    """Make the due grants active again (as filled) for the next loaded run."""
    engine = create_engine(f"sqlite:///{db}")
    g = t.grants.c
    try:
        with engine.begin() as conn:
            for start in range(0, len(due_ids), 500):
                conn.execute(
                    t.grants.update()
                    .where(g.id.in_(due_ids[start : start + 500]))
                    .values(
                        status="active",
                        end_reason=None,
                        ended_by=None,
                        ended_at=None,
                        attempts=0,
                        last_error=None,
                        retry_at=None,
                        updated_at=g.not_before,
                    )
                )
    finally:
        engine.dispose()


# --- one start ----------------------------------------------------------------------------------
def proc_status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (MiB) and CPU seconds (user + system) of a live process."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    out["cpu_s"] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def scrape_ms(port: int) -> float:
    """One ``GET /metrics`` (its store-backed gauges count the grants by state), in ms."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        t0 = time.perf_counter()
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"GET /metrics answered {response.status}")
        return (time.perf_counter() - t0) * 1000
    finally:
        conn.close()


class StoreWatch:
    """Reads the store from outside (WAL: never blocks the process under test)."""

    def __init__(self, db: Path) -> None:
        self._conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        self._snap0 = self._one("SELECT coalesce(max(id), 0) FROM standing_snapshots")
        self.due_left = self._one(
            "SELECT count(*) FROM grants WHERE status = 'active' AND not_after <= ?", (now_text(),)
        )

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        return int(self._conn.execute(sql, args).fetchone()[0])

    def first_pass_done(self) -> bool:
        """Reconciliation wrote a snapshot of every group: the first pass is over."""
        return (
            self._one("SELECT count(*) FROM standing_snapshots WHERE id > ?", (self._snap0,))
            >= GROUPS
        )

    def due(self, before: str) -> int:
        return self._one(
            "SELECT count(*) FROM grants WHERE status IN ('active', 'revoking', "
            "'revoke_failed') AND not_after <= ?",
            (before,),
        )

    def close(self) -> None:
        self._conn.close()


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def start(
    kind: str,
    config: Path,
    db: Path,
    *,
    port: int,
    settle: float,
    env: dict[str, str],
    log: Path,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Start ``keyturn serve`` or ``keyturn worker``; time it to ready (serve) and to the end of
    its first pass; once both happened and ``settle`` s passed, read its memory and stop it.
    With ``profile``, py-spy samples it (every thread, idle included) into that raw file."""
    watch = StoreWatch(db)
    cutoff = now_text()
    with log.open("ab") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [KEYTURN, kind, "--config", str(config)], stdout=err, stderr=err, env=env
        )
    spy = (
        None
        if profile is None
        else subprocess.Popen(
            [
                PY_SPY,
                "record",
                "--pid",
                str(proc.pid),
                "--rate",
                "200",
                "--idle",
                "--threads",
                "--format",
                "raw",
                "--output",
                str(profile),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )
    marks: dict[str, float] = {}
    wanted = {"first_pass", "ready"} if kind == "serve" else {"first_pass"}
    try:
        last_state = 0.0
        while not (wanted <= marks.keys() and time.perf_counter() - t0 >= settle):
            now = time.perf_counter()
            if proc.poll() is not None:
                raise SystemExit(f"keyturn {kind} exited with {proc.returncode}: see {log}")
            if now - t0 > START_TIMEOUT_S:
                raise SystemExit(f"keyturn {kind}: not done in {START_TIMEOUT_S} s: {marks}")
            if "ready" in wanted - marks.keys() and ready(port):
                marks["ready"] = time.perf_counter() - t0
            if now - last_state >= STATE_POLL_S:
                last_state = now
                if "first_pass" not in marks and watch.first_pass_done():
                    marks["first_pass"] = time.perf_counter() - t0
                if "drained" not in marks and watch.due(cutoff) == 0:
                    marks["drained"] = time.perf_counter() - t0
            time.sleep(POLL_S if "ready" in wanted - marks.keys() else STATE_POLL_S)
        figures = proc_status(proc.pid) | {"at_s": time.perf_counter() - t0}
        if kind == "serve":
            figures["metrics_scrape_ms"] = scrape_ms(port)
        figures["due_left_at_read"] = watch.due(cutoff)
    finally:
        stopping = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        marks["stop_s"] = time.perf_counter() - stopping
        if spy is not None:
            spy.wait(timeout=30)
        watch.close()
    return rounded(marks | figures | {"due_at_start": watch.due_left})


# --- the run ------------------------------------------------------------------------------------
def median(runs: list[dict[str, Any]], key: str) -> float:
    return round(float(statistics.median(r[key] for r in runs)), 3)


def run(size: Size, workdir: Path, profile: Path | None) -> dict[str, Any]:
    started = time.perf_counter()
    loaded_server, people, groups = start_directory(workdir / "slapd", size.users)
    empty_server, _, _ = start_directory(workdir / "slapd-empty", 0)
    try:
        t0 = time.perf_counter()
        port = free_port()
        db, empty_db = workdir / "loaded.db", workdir / "empty.db"
        for path in (db, empty_db):
            engine = create_engine(f"sqlite:///{path}")
            migrate(engine)
            engine.dispose()
        data = config_data(workdir, loaded_server, db, size.users, port)
        template_ids = templates(data, workdir)
        filled = fill(db, size, template_ids, groups, people)
        seed_members(loaded_server, people, groups, filled)
        fill_total = time.perf_counter() - t0
        print(
            f"filled {size.grants:,} grants ({filled.counts}) in {filled.seconds:.1f} s "
            f"({filled.bytes / MB:.0f} MiB); setup with directory {fill_total:.1f} s",
            flush=True,
        )
        configs = {
            "loaded": write_config(workdir / "loaded.yaml", data),
            "empty": write_config(
                workdir / "empty.yaml",
                config_data(workdir, empty_server, empty_db, size.users, port),
            ),
        }
        dbs = {"loaded": db, "empty": empty_db}
        env = os.environ | {BIND_ENV: PASSWORD}
        results: dict[str, list[dict[str, Any]]] = {}
        # warm the interpreter's file cache, then alternate which store goes first
        subprocess.run([KEYTURN, "--help"], capture_output=True, check=True)
        first = -1 if profile is not None else 0  # run -1: profiled, not counted
        for n in range(first, size.runs):
            for kind in ("serve", "worker"):
                for store in ("loaded", "empty") if n % 2 == 0 else ("empty", "loaded"):
                    figures = start(
                        kind,
                        configs[store],
                        dbs[store],
                        port=port,
                        settle=size.settle,
                        env=env,
                        log=workdir / f"{kind}-{store}.log",
                        profile=None
                        if n >= 0 or profile is None
                        else profile / f"{kind}-{store}.raw",
                    )
                    if store == "loaded":
                        if figures["due_at_start"] != size.due:
                            raise SystemExit(
                                f"{figures['due_at_start']} due grants, not {size.due}"
                            )
                        if size.due and figures["due_left_at_read"] >= size.due:
                            raise SystemExit(f"keyturn {kind} ended no due grant: {figures}")
                        reset_due(db, filled.due_ids)
                    print(f"  run {n + 1} {kind:<6} {store:<6} {figures}", flush=True)
                    if n >= 0:
                        results.setdefault(f"{kind}_{store}", []).append(figures)
    finally:
        loaded_server.stop()
        empty_server.stop()
    summary = {
        name: {
            key: median(runs, key)
            for key in (
                "ready",
                "first_pass",
                "VmRSS",
                "VmHWM",
                "cpu_s",
                "at_s",
                "metrics_scrape_ms",
            )
            if key in runs[0]
        }
        for name, runs in results.items()
    }
    return {
        "params": {
            "grants": size.grants,
            "active": size.active,
            "due": size.due,
            "users": size.users,
            "groups": GROUPS,
            "hosts": HOSTS,
            "runs": size.runs,
            "settle_s": size.settle,
            "store": f"SQLite {sqlite3.sqlite_version}, file under {tempfile.gettempdir()} "
            "(page cache warm: the file was just written)",
            "server": "keyturn serve (API + embedded worker), keyturn worker; default server "
            "settings (worker_max_sleep 5 s, revoke_concurrency 8, reconcile at start)",
        },
        "fill": {
            "seconds": round(filled.seconds, 3),
            "setup_seconds": round(fill_total, 3),
            "db_mib": round(filled.bytes / MB, 1),
            "grant_counts": filled.counts,
            "rows_per_s": round(2 * size.grants / filled.seconds),
        },
        "median": summary,
        "runs": results,
        "wall_s": round(time.perf_counter() - started, 1),
    }


def report(result: dict[str, Any]) -> None:
    p, m = result["params"], result["median"]
    print(
        f"restart with {p['grants']:,} grants ({p['active']:,} active, {p['due']:,} due), "
        f"median of {p['runs']}; fill {result['fill']['seconds']:.1f} s, "
        f"{result['fill']['db_mib']:.0f} MiB:"
    )
    print(
        f"  {'process / store':<16} {'ready s':>8} {'1st pass s':>10} {'VmRSS MiB':>10} "
        f"{'VmHWM MiB':>10} {'CPU s':>6} {'read at s':>9} {'due left':>8}"
    )
    for name, f in m.items():
        left = [r["due_left_at_read"] for r in result["runs"][name]]
        print(
            f"  {name:<16} {f.get('ready', float('nan')):>8.3f} {f['first_pass']:>10.3f} "
            f"{f['VmRSS']:>10.1f} {f['VmHWM']:>10.1f} {f['cpu_s']:>6.2f} {f['at_s']:>9.2f} "
            f"{'/'.join(map(str, left)):>8}"
        )
    scrape = {k: v["metrics_scrape_ms"] for k, v in m.items() if "metrics_scrape_ms" in v}
    print(
        "  one GET /metrics after the first pass, ms: "
        + ", ".join(f"{k} {v:.1f}" for k, v in scrape.items())
    )
    print(f"  wall {result['wall_s']:.1f} s")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="20,000 grants, one run each")
    parser.add_argument("--grants", type=int, help="grants stored (default 1,000,000)")
    parser.add_argument("--active", type=int, help="of which active (default 100,000)")
    parser.add_argument("--due", type=int, help="of the active, already due (default 1,000)")
    parser.add_argument("--runs", type=int, help="starts of each kind (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--profile",
        type=Path,
        help="first, an extra start of each kind (not counted) sampled by py-spy into "
        "DIR/<kind>-<store>.raw",
    )
    parser.add_argument("--out", type=Path, help="default bench/results/restart[-smoke].json")
    args = parser.parse_args(argv)
    base = SMOKE if args.smoke else FULL
    args.size = Size(
        grants=args.grants or base.grants,
        active=args.active if args.active is not None else base.active,
        due=args.due if args.due is not None else base.due,
        users=base.users,
        runs=args.runs or base.runs,
        settle=base.settle,
    )
    s = args.size
    if not 0 <= 2 * s.due <= s.active <= s.grants:
        parser.error("need 0 <= 2 x due <= active <= grants")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logs.configure(logging.WARNING)  # the template requests' notifications
    workdir = Path(tempfile.mkdtemp(prefix="keyturn-bench-restart-"))
    try:
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
        result = run(args.size, workdir, args.profile)
    finally:
        if args.keep:
            print(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report(result)
    m = result["median"]
    sl, se, wl, we = m["serve_loaded"], m["serve_empty"], m["worker_loaded"], m["worker_empty"]
    goals = [
        goal(
            "5",
            metric="restart: keyturn serve start to /readyz 200",
            unit="s",
            target="<= 5 s",
            measured=sl["ready"],
            floor=se["ready"],
            met=sl["ready"] <= 5,
            smoke=args.smoke,
        ),
        *(
            goal(
                "5",
                metric=f"restart: keyturn {what}",
                unit="MB",
                target="<= 300 MB (MiB)",
                measured=loaded[key],
                floor=empty[key],
                met=loaded[key] <= 300,
                smoke=args.smoke,
            )
            for what, key, loaded, empty in (
                ("worker VmRSS after first pass", "VmRSS", wl, we),
                ("worker VmHWM (peak)", "VmHWM", wl, we),
                ("serve VmHWM (API + worker)", "VmHWM", sl, se),
            )
        ),
    ]
    save(NAME, result, goals, args.out, smoke=args.smoke)
    return 0


if __name__ == "__main__":
    sys.exit(main())
