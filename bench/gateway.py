"""Recording SSH gateway against direct ssh to the same sshd: keystroke round trip and throughput.

Starts the gateway lab (``tests/integration/gateway_lab.py``: Keyturn with its SSH CA, two real
throwaway sshd, the recording gateway on its own event loop), grants alice ``server-admin`` on
db-1, and measures in the same run, with the same key, certificate, client and ssh options,
the two paths to the same sshd:

* **direct**: ``root@127.0.0.1:<db-1 port>`` (the principal ``server-admin@db-1`` is accepted);
* **gateway**: ``db-1@127.0.0.1:<gateway port>`` (recorded, relayed upstream with a certificate
  minted per connection).

1. Keystroke round trip: an interactive shell with a PTY (80x24) runs
   ``stty raw -echo; dd bs=1 count=K`` and each byte written comes back once, with no echo or
   output processing by the terminal. One byte at a time, the time from write to its return is
   taken ``--keystrokes`` times per path (after a warm-up), with two clients: asyncssh and the
   OpenSSH client (``ssh -tt`` with pipes). Per client, both sessions are open at once and the
   keystrokes alternate between them, so drift on the machine hits both paths alike.
2. Bulk throughput: ``head -c N /dev/zero`` as an exec session (no PTY) read with the OpenSSH
   client; MB/s (10^6 bytes) from the first byte to the end of the stream, median over
   ``--repeats`` runs. Every byte is checked to arrive (N zero bytes); through the gateway, the
   recording is read back and must hold exactly the N bytes, and the gateway's counters of bytes
   read from the target and bytes recorded must agree.

The clients run in a child process (this script with ``--client-job``), so they never compete
with the gateway thread for this interpreter's GIL. The gateway's ``grant_check_interval`` is
the default (500 ms), not the lab's 200 ms.

Usage (from the repository root)::

    .venv/bin/python bench/gateway.py            # 2,000 keystrokes, 100 MiB x 3
    .venv/bin/python bench/gateway.py --smoke    # 300 keystrokes, 5 MiB x 1 (seconds)

Nothing talks beyond 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import logging
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
# the gateway lab is shared with the tests (so run from a checkout); it is imported only where
# the lab is started, so the client child process starts in a fraction of a second
sys.path.insert(0, str(ROOT))

from bench.common import git_revision  # noqa: E402

if TYPE_CHECKING:
    from tests.integration.gateway_lab import GatewayLab

MB = 1_000_000
WARMUP = 50
READY = "KEYTURN-BENCH-READY"
F_SETPIPE_SZ = 1031  # Linux fcntl
CIPHER = re.compile(r"kex: server->client cipher: (\S+) MAC: (\S+)")
SESSION_END_TIMEOUT_S = 30


@dataclass(frozen=True)
class Route:
    """One way to db-1's sshd: the user name, port and known_hosts file to use."""

    name: str
    user: str
    port: int
    known_hosts: Path
    key: Path
    cert: Path
    options: tuple[str, ...]  # the lab's ssh options (tests.integration.gateway_lab)

    def ssh(self, command: str | None = None, *options: str) -> list[str]:
        """The OpenSSH client with exactly the lab's options, then ``options``, the host and
        ``command`` (none: an interactive shell)."""
        return [
            "ssh",
            *self.options,
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-i",
            str(self.key),
            "-o",
            f"CertificateFile={self.cert}",
            "-p",
            str(self.port),
            *options,
            f"{self.user}@127.0.0.1",
            *([command] if command else []),
        ]

    def spec(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "port": self.port,
            "known_hosts": str(self.known_hosts),
            "key": str(self.key),
            "cert": str(self.cert),
        }


# --- client side (runs in a child process) -------------------------------------------------


def _echo_line(count: int) -> bytes:
    # the marker is split in the typed line so the terminal's echo of the line never matches it
    half = len(READY) // 2
    return (
        f"stty raw -echo; printf '%s%s\\n' {READY[:half]} {READY[half:]}; "
        f"dd bs=1 count={count} status=none; stty sane; exit\n"
    ).encode()


def _order(i: int, names: list[str]) -> list[str]:
    """Both paths every round, the first one alternating (no path always goes first)."""
    return names if i % 2 == 0 else names[::-1]


async def _keystrokes_asyncssh(job: dict[str, Any]) -> dict[str, list[int]]:
    import asyncssh

    total = job["warmup"] + job["n"]
    samples: dict[str, list[int]] = {name: [] for name in job["paths"]}
    async with contextlib.AsyncExitStack() as stack:
        procs = {}
        for name, spec in job["paths"].items():
            conn = await stack.enter_async_context(
                asyncssh.connect(
                    "127.0.0.1",
                    spec["port"],
                    username=spec["user"],
                    client_keys=[(spec["key"], spec["cert"])],
                    known_hosts=spec["known_hosts"],
                    agent_path=None,
                    config=[],
                )
            )
            proc = await conn.create_process(term_type="xterm", term_size=(80, 24), encoding=None)
            proc.stdin.write(_echo_line(total))
            seen = b""
            while READY.encode() + b"\n" not in seen:
                chunk = await asyncio.wait_for(proc.stdout.read(4096), 15)
                if not chunk:
                    raise SystemExit(f"{name}: session ended before the echo: {seen[-300:]!r}")
                seen += chunk
            procs[name] = proc
        for i in range(total):
            byte = bytes([97 + i % 26])
            for name in _order(i, list(procs)):
                proc = procs[name]
                started = time.perf_counter_ns()
                proc.stdin.write(byte)
                got = await asyncio.wait_for(proc.stdout.readexactly(1), 10)
                elapsed = time.perf_counter_ns() - started
                if got != byte:
                    raise SystemExit(f"{name} keystroke {i}: sent {byte!r}, got {got!r}")
                if i >= job["warmup"]:
                    samples[name].append(elapsed)
        for name, proc in procs.items():
            await asyncio.wait_for(proc.wait(), 10)
            if proc.exit_status != 0:
                raise SystemExit(f"{name}: remote shell exited with {proc.exit_status}")
    return samples


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        if time.monotonic() > deadline:
            raise SystemExit(f"no {marker!r} within {timeout} s: {seen[-300:]!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise SystemExit(f"session ended before the echo started: {seen[-300:]!r}")
        seen += chunk
    return seen


def _keystrokes_openssh(job: dict[str, Any]) -> dict[str, list[int]]:
    total = job["warmup"] + job["n"]
    samples: dict[str, list[int]] = {name: [] for name in job["paths"]}
    with contextlib.ExitStack() as stack:
        fds = {}
        for name, argv in job["paths"].items():
            proc = stack.enter_context(
                subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            )
            stack.callback(proc.kill)  # only reached if something failed (else it has exited)
            assert proc.stdin is not None
            assert proc.stdout is not None
            wfd, rfd = proc.stdin.fileno(), proc.stdout.fileno()
            os.write(wfd, _echo_line(total))
            _read_until(rfd, READY.encode() + b"\n", 15)  # raw mode: the line ends in \n
            fds[name] = (proc, wfd, rfd)
        for i in range(total):
            byte = bytes([97 + i % 26])
            for name in _order(i, list(fds)):
                _, wfd, rfd = fds[name]
                started = time.perf_counter_ns()
                os.write(wfd, byte)
                got = os.read(rfd, 1)
                elapsed = time.perf_counter_ns() - started
                if got != byte:
                    raise SystemExit(f"{name} keystroke {i}: sent {byte!r}, got {got!r}")
                if i >= job["warmup"]:
                    samples[name].append(elapsed)
        for name, (proc, _, _) in fds.items():
            rest = proc.communicate(timeout=10)[0]
            if proc.returncode != 0:
                raise SystemExit(f"{name}: ssh -tt exited with {proc.returncode}: {rest[-300:]!r}")
    return samples


def _bulk(spec: dict[str, Any]) -> dict[str, Any]:
    size = spec["bytes"]
    buf = bytearray(1 << 20)
    total = zeros = 0
    first: float | None = None
    started = time.perf_counter()
    with subprocess.Popen(
        spec["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        fd = proc.stdout.fileno()
        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)
        while n := os.readv(fd, [buf]):
            if first is None:
                first = time.perf_counter()
            total += n
            zeros += buf.count(0, 0, n)
        ended = time.perf_counter()
        code = proc.wait(30)
        err = proc.stderr.read().decode(errors="replace")
    if code != 0 or total != size or zeros != size or first is None:
        raise SystemExit(
            f"bulk read: exit {code}, {total} bytes ({zeros} zero), want {size}: {err}"
        )
    return {
        "bytes": total,
        "stream_s": ended - first,
        "first_byte_s": first - started,
        "wall_s": ended - started,
    }


def client_job(job: dict[str, Any]) -> Any:
    """One client measurement (in the child process); the result is printed as JSON."""
    if job["kind"] == "keystrokes-asyncssh":
        return asyncio.run(_keystrokes_asyncssh(job))
    if job["kind"] == "keystrokes-openssh":
        return _keystrokes_openssh(job)
    if job["kind"] == "bulk":
        return _bulk(job)
    raise SystemExit(f"unknown client job {job['kind']!r}")


def run_client(job: dict[str, Any], timeout: float = 120) -> Any:
    """Run ``client_job(job)`` in a child interpreter; its JSON result."""
    done = subprocess.run(
        [sys.executable, __file__, "--client-job", json.dumps(job)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"{job['kind']} client failed ({done.returncode}): {done.stderr[-2000:]}"
        )
    return json.loads(done.stdout)


# --- gateway side (this process) ---------------------------------------------------------


def _default_interval(data: dict[str, Any]) -> None:
    data["gateway"].pop("grant_check_interval", None)


def _session_ended(lab: GatewayLab, seen: int) -> dict[str, Any]:
    """Wait for the (seen + 1)-th ``session.ended`` event; its details."""
    deadline = time.monotonic() + SESSION_END_TIMEOUT_S
    while True:
        events = lab.events("session.ended")
        if len(events) > seen:
            return dict(events[seen].details)
        if time.monotonic() > deadline:
            raise SystemExit(f"no session.ended event within {SESSION_END_TIMEOUT_S} s")
        time.sleep(0.05)


def _recorded_output(path: Path) -> tuple[int, int]:
    """Characters in the recording's output events, and how many of them are NUL."""
    chars = nuls = 0
    with path.open(encoding="utf-8") as handle:
        handle.readline()  # the header
        for line in handle:
            _, code, data = json.loads(line)
            if code == "o":
                chars += len(data)
                nuls += data.count("\0")
    return chars, nuls


def setup_and_cipher(path: Route, repeats: int) -> dict[str, Any]:
    """Seconds for a whole ``ssh … true`` (connection, auth, session), and the cipher."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(
            path.ssh("true"), capture_output=True, text=True, timeout=30, check=False
        )
        times.append(time.perf_counter() - started)
        if done.returncode != 0:
            raise SystemExit(f"ssh {path.name} true failed: {done.stderr}")
    verbose = subprocess.run(
        path.ssh("true", "-v"), capture_output=True, text=True, timeout=30, check=False
    )
    match = CIPHER.search(verbose.stderr)
    return {
        "setup_ms_median": round(statistics.median(times) * 1000, 1),
        "setup_runs": repeats,
        "client_cipher": match.group(1) if match else None,
        "client_mac": match.group(2) if match else None,
    }


def keystrokes(paths: dict[str, Route], n: int) -> dict[str, Any]:
    """Round-trip samples (ms) per client and path; both paths interleaved keystroke by
    keystroke in one client process, so drift on the machine hits both alike."""
    out: dict[str, Any] = {}
    for client in ("asyncssh", "openssh"):
        job: dict[str, Any] = {"kind": f"keystrokes-{client}", "n": n, "warmup": WARMUP}
        if client == "asyncssh":
            job["paths"] = {name: path.spec() for name, path in paths.items()}
        else:
            job["paths"] = {
                name: path.ssh(None, "-tt", "-e", "none") for name, path in paths.items()
            }
        samples_ns = run_client(job)
        out[client] = {name: [v / 1e6 for v in samples_ns[name]] for name in paths}
    return out


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100), as in tests/load.py."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def latency_summary(samples: dict[str, list[float]]) -> dict[str, Any]:
    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50": round(percentile(values, 50), 3),
            "p95": round(percentile(values, 95), 3),
            "p99": round(percentile(values, 99), 3),
            "max": round(max(values), 3),
            "mean": round(statistics.fmean(values), 3),
        }

    direct, gateway = stats(samples["direct"]), stats(samples["gateway"])
    return {
        "direct_ms": direct,
        "gateway_ms": gateway,
        "added_ms": {p: round(gateway[p] - direct[p], 3) for p in ("p50", "p95", "p99")},
        "ratio": {p: round(gateway[p] / direct[p], 2) for p in ("p50", "p95", "p99")},
    }


def bulk(lab: GatewayLab, paths: dict[str, Route], size: int, repeats: int) -> dict[str, Any]:
    """``head -c size /dev/zero`` through each path ``repeats`` times (alternating)."""
    stats = lab.gateway.gateway.stats
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
    recordings: list[dict[str, Any]] = []
    for _ in range(repeats):
        for name, path in paths.items():
            ended_before = len(lab.events("session.ended"))
            upstream, recorded = stats.upstream_bytes, stats.recorded_bytes
            run = run_client(
                {"kind": "bulk", "bytes": size, "argv": path.ssh(f"head -c {size} /dev/zero")}
            )
            run["mb_per_s"] = round(size / run["stream_s"] / MB, 1)
            runs[name].append(run)
            if name != "gateway":
                continue
            details = _session_ended(lab, ended_before)
            file = lab.recordings / details["recording"]
            chars, nuls = _recorded_output(file)
            recordings.append(
                {
                    "end_reason": details.get("reason"),
                    "exit_status": details.get("exit_status"),
                    "recording_bytes": file.stat().st_size,
                    "recording_bytes_audited": details.get("bytes"),
                    "recording_per_payload_byte": round(file.stat().st_size / size, 2),
                    "recorded_output_chars": chars,
                    "recorded_output_nuls": nuls,
                    "stats_upstream_bytes": stats.upstream_bytes - upstream,
                    "stats_recorded_bytes": stats.recorded_bytes - recorded,
                    "recording_write_mb_per_s": round(
                        file.stat().st_size / run["stream_s"] / MB, 1
                    ),
                }
            )
            file.unlink()  # up to ~0.6 GB each; nothing verifies the audit chain afterwards
    result: dict[str, Any] = {"bytes": size, "repeats": repeats, "runs": runs}
    for name in paths:
        result[f"{name}_mb_per_s_median"] = statistics.median(r["mb_per_s"] for r in runs[name])
    result["ratio_gateway_direct"] = round(
        result["gateway_mb_per_s_median"] / result["direct_mb_per_s_median"], 3
    )
    result["gateway_recordings"] = recordings
    keeps_up = all(
        r["stats_upstream_bytes"] == r["stats_recorded_bytes"] == size
        and r["recorded_output_chars"] == r["recorded_output_nuls"] == size
        and r["recording_bytes"] == r["recording_bytes_audited"]
        and r["end_reason"] == "closed"
        and r["exit_status"] == 0
        for r in recordings
    )
    result["recording_kept_up"] = keeps_up
    return result


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import asyncssh
    from tests.integration.gateway_lab import SSH_OPTIONS, gateway_lab

    from keyturn.entrypoints import logs

    logs.configure(logging.WARNING)  # after the import: tests/conftest.py sets INFO
    started = time.monotonic()
    with gateway_lab(workdir, change=_default_interval) as lab:
        lab.grant(seconds=3600)
        direct_hosts = workdir / "known_hosts_direct"
        host_key = (lab.db1.workdir / "host_ed25519.pub").read_text().strip()
        direct_hosts.write_text(f"[127.0.0.1]:{lab.db1.port} {host_key}\n")
        paths = {
            "direct": Route(
                "direct", lab.db1.login, lab.db1.port, direct_hosts, lab.key, lab.cert, SSH_OPTIONS
            ),
            "gateway": Route(
                "gateway", "db-1", lab.port, lab.known_hosts, lab.key, lab.cert, SSH_OPTIONS
            ),
        }
        setup = {name: setup_and_cipher(p, args.setup_runs) for name, p in paths.items()}
        t0 = time.monotonic()
        samples = keystrokes(paths, args.keystrokes)
        keystroke_s = time.monotonic() - t0
        t0 = time.monotonic()
        throughput = bulk(lab, paths, args.bulk_bytes, args.repeats)
        bulk_s = time.monotonic() - t0
        sessions = lab.events("session.ended")
    return {
        "benchmark": "gateway",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([".venv/bin/python", "bench/gateway.py", *sys.argv[1:]]),
        "mode": "smoke" if args.smoke else "full",
        "git": git_revision(),
        "target": "db-1: a throwaway OpenSSH sshd on 127.0.0.1 (keyturn.lab.Sshd)",
        "paths": {
            "direct": "root@127.0.0.1:<db-1 sshd>, alice's key and Keyturn certificate",
            "gateway": "db-1@127.0.0.1:<gateway>, same key and certificate; recorded",
        },
        "gateway_grant_check_interval": "PT0.5S (default)",
        "setup": setup,
        "keystrokes": {
            "n": args.keystrokes,
            "warmup": WARMUP,
            "remote": "interactive shell, PTY 80x24: stty raw -echo; dd bs=1 count=K",
            "order": "both paths open at once, keystrokes alternate between them",
            "wall_s": round(keystroke_s, 1),
            "asyncssh": latency_summary(samples["asyncssh"]),
            "openssh": latency_summary(samples["openssh"]),
        },
        "bulk": throughput | {"wall_s": round(bulk_s, 1)},
        "gateway_sessions_ended": len(sessions),
        "gateway_session_end_reasons": sorted({str(e.details.get("reason")) for e in sessions}),
        "total_wall_s": round(time.monotonic() - started, 1),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "asyncssh": asyncssh.__version__,
            "openssh": subprocess.run(
                ["ssh", "-V"], capture_output=True, text=True, check=False
            ).stderr.strip(),
        },
    }


def report(result: dict[str, Any]) -> None:
    m, ks, bk = result["machine"], result["keystrokes"], result["bulk"]
    print(
        f"recording gateway vs direct ssh to the same sshd ({result['mode']}; "
        f"{m['cpu_count']} CPUs, Python {m['python']}, asyncssh {m['asyncssh']})"
    )
    print()
    print(
        f"keystroke round trip, ms ({ks['n']} keystrokes after {ks['warmup']} warm-up; "
        "shell with PTY, raw mode, dd bs=1 echoes; paths interleaved)"
    )
    print(f"  {'client':<9} {'path':<8} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7}")
    for client in ("asyncssh", "openssh"):
        s = ks[client]
        for name in ("direct", "gateway"):
            v = s[f"{name}_ms"]
            print(
                f"  {client:<9} {name:<8} {v['p50']:>7.3f} {v['p95']:>7.3f} {v['p99']:>7.3f} "
                f"{v['max']:>7.3f}"
            )
        a, r = s["added_ms"], s["ratio"]
        print(
            f"  {client:<9} {'added':<8} {a['p50']:>+7.3f} {a['p95']:>+7.3f} {a['p99']:>+7.3f}"
            f"   (gateway/direct x{r['p50']} p50, x{r['p99']} p99)"
        )
    print()
    print(
        f"bulk: head -c {bk['bytes']} /dev/zero, exec without PTY, OpenSSH client; MB/s "
        f"(10^6 B/s) first byte to EOF, median of {bk['repeats']}"
    )
    for name in ("direct", "gateway"):
        runs = ", ".join(f"{r['mb_per_s']:.1f}" for r in bk["runs"][name])
        setup = result["setup"][name]
        print(
            f"  {name:<8} {bk[f'{name}_mb_per_s_median']:>7.1f} MB/s  (runs {runs}; session "
            f"setup {setup['setup_ms_median']:.0f} ms; cipher {setup['client_cipher']})"
        )
    print(f"  ratio gateway/direct {bk['ratio_gateway_direct']:.3f}")
    for i, rec in enumerate(bk["gateway_recordings"], 1):
        print(
            f"  recording run {i}: {rec['recording_bytes']:,} bytes for {bk['bytes']:,} relayed "
            f"(x{rec['recording_per_payload_byte']}), written at "
            f"{rec['recording_write_mb_per_s']} MB/s; upstream_bytes "
            f"{rec['stats_upstream_bytes']:,} recorded_bytes {rec['stats_recorded_bytes']:,}; "
            f"output chars in file {rec['recorded_output_chars']:,}"
        )
    print(f"  recording kept up (every byte recorded before relay): {bk['recording_kept_up']}")
    print()
    print(
        f"wall: keystrokes {ks['wall_s']} s, bulk {bk['wall_s']} s, "
        f"total {result['total_wall_s']} s"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="seconds: 300 keystrokes, 5 MiB x1")
    parser.add_argument("--keystrokes", type=int, help="timed keystrokes per client and path")
    parser.add_argument("--bulk-bytes", type=int, help="bytes per bulk run (default 100 MiB)")
    parser.add_argument("--repeats", type=int, help="bulk runs per path (default 3)")
    parser.add_argument("--setup-runs", type=int, help="ssh … true runs per path (default 5)")
    parser.add_argument("--out", type=Path, help="default bench/results/gateway[-smoke].json")
    parser.add_argument("--client-job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = (300, 5 * 1024 * 1024, 1, 1) if args.smoke else (2000, 100 * 1024 * 1024, 3, 5)
    for name, value in zip(
        ("keystrokes", "bulk_bytes", "repeats", "setup_runs"), defaults, strict=True
    ):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.keystrokes < 300 and args.client_job is None:
        parser.error("--keystrokes: at least 300")
    if args.out is None:
        args.out = (
            ROOT / "bench" / "results" / ("gateway-smoke.json" if args.smoke else "gateway.json")
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client_job is not None:
        print(json.dumps(client_job(json.loads(args.client_job))))
        return 0
    with tempfile.TemporaryDirectory(prefix="keyturn-bench-gw-") as tmp:
        result = run(args, Path(tmp))
    report(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    if not result["bulk"]["recording_kept_up"]:
        print("the recording did not keep up: see bulk.gateway_recordings", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
