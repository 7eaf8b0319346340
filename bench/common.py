"""What every benchmark shares: the machine and commit behind a result, percentiles, the saved
JSON and the goal/floor/measured/ratio rows that ``bench/report.py`` gathers into
``docs/benchmarks.md``.

A result file is one JSON object::

    {"benchmark": "time_to_access", "smoke": false, "machine": {...}, "params": {...},
     "goals": [{"item": "...", "metric": "...", "unit": "ms", "goal": "p99 <= 10 ms",
                "floor": 1.2, "measured": 4.0, "ratio": 3.3, "met": true}, ...],
     ...the benchmark's own figures...}

``ratio`` is measured / floor (how many times the bare work the whole path costs); ``met`` is
whether the goal holds in this run (``None`` when the run was smoke-sized: goals are judged on
full runs only).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def git_revision() -> dict[str, Any]:
    """The checkout's commit and whether src/ has uncommitted changes (None outside git)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "src_dirty": None}
    return {"commit": head, "src_dirty": bool(dirty)}


def machine() -> dict[str, Any]:
    """Cores, Python, platform and commit: what a figure is only meaningful with."""
    return {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "git": git_revision(),
        # The one wall-clock reading outside keyturn's clock adapter: a label for the file.
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def percentiles(values: Sequence[float], points: Sequence[int] = (50, 95, 99)) -> dict[str, float]:
    """Nearest-rank percentiles ``p50``…, plus ``n``, ``mean`` and ``max`` (same unit as input).

    Raises:
        ValueError: ``values`` is empty.
    """
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    n = len(ordered)
    out: dict[str, float] = {"n": n}
    for p in points:
        rank = max(1, -(-p * n // 100))  # ceil(p/100 * n), 1-based
        out[f"p{p}"] = ordered[rank - 1]
    out["mean"] = sum(ordered) / n
    out["max"] = ordered[-1]
    return out


def rounded(figures: dict[str, float], digits: int = 3) -> dict[str, float]:
    """``figures`` with floats rounded for printing and saving."""
    return {k: round(v, digits) if isinstance(v, float) else v for k, v in figures.items()}


@dataclass(frozen=True)
class Goal:
    """One row of the goals table: a measured figure, its floor in the same run, the goal."""

    item: str
    metric: str
    unit: str
    goal: str
    measured: float
    floor: float | None
    met: bool | None

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor <= 0:
            return None
        return round(self.measured / self.floor, 2)

    def row(self) -> dict[str, Any]:
        return asdict(self) | {"ratio": self.ratio}


def goal(
    item: str,
    *,
    metric: str,
    unit: str,
    target: str,
    measured: float,
    floor: float | None,
    met: bool,
    smoke: bool,
) -> Goal:
    """A :class:`Goal` row (``target`` is the goal's wording, e.g. ``"p99 <= 10 ms"``);
    ``met`` is dropped (``None``) for smoke-sized runs, whose figures are not judged."""
    return Goal(
        item,
        metric,
        unit,
        target,
        round(measured, 3),
        None if floor is None else round(floor, 3),
        None if smoke else met,
    )


def print_goals(goals: Sequence[Goal]) -> None:
    """The goals table on stdout."""
    print(f"  {'metric':<48} {'measured':>12} {'floor':>10} {'ratio':>7}  goal")
    for g in goals:
        floor = "-" if g.floor is None else f"{g.floor:g}"
        ratio = "-" if g.ratio is None else f"{g.ratio:g}"
        verdict = {True: "met", False: "MISSED", None: "smoke"}[g.met]
        if g.goal.startswith("("):
            verdict = "-"  # a figure reported beside a goal, not a goal
        print(
            f"  {g.metric:<48} {g.measured:>10g} {g.unit:<2}{floor:>9} {ratio:>7}  "
            f"{g.goal} [{verdict}]"
        )


def default_out(name: str, smoke: bool) -> Path:
    """``bench/results/<name>.json`` (``<name>-smoke.json`` for smoke runs)."""
    return RESULTS / f"{name}{'-smoke' if smoke else ''}.json"


def save(
    name: str,
    result: dict[str, Any],
    goals: Sequence[Goal],
    out: Path | None,
    *,
    smoke: bool,
) -> Path:
    """Write ``result`` with the machine, the goals and the command line; print the goals.

    Returns:
        The path written (``out`` or :func:`default_out`).
    """
    path = out or default_out(name, smoke)
    data = {
        "benchmark": name,
        "smoke": smoke,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "goals": [g.row() for g in goals],
    } | result
    data["machine"] = machine() | result.get("machine", {})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print_goals(goals)
    shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    print(f"  saved {shown}")
    return path


@contextmanager
def postgres(url: str | None) -> Iterator[tuple[str, str]]:
    """A PostgreSQL URL on 127.0.0.1: the given one, or a throwaway cluster's new database."""
    if url is not None:
        host = urlsplit(url).hostname or ""
        if host not in LOCAL_HOSTS:
            raise SystemExit(f"--pg-url must point at 127.0.0.1, not {host!r}")
        yield url, "given"
        return
    try:
        from tests.pg import PgCluster
    except ImportError as exc:
        raise SystemExit(
            "--store postgresql without --pg-url needs the repository's tests/pg.py "
            f"(run from a checkout): {exc}"
        ) from exc
    cluster = PgCluster.start()
    try:
        yield cluster.new_database(), "throwaway cluster (fsync=off, synchronous_commit=off)"
    finally:
        cluster.stop()


@contextmanager
def store_url(kind: str, workdir: Path, pg_url: str | None) -> Iterator[tuple[str, str]]:
    """``(url, note)`` of the store a benchmark runs on: a SQLite file in ``workdir``, or a
    PostgreSQL database (``pg_url``, or a throwaway cluster's: :func:`postgres`)."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'keyturn.db'}", f"file under {workdir.parent}"
        return
    with postgres(pg_url) as found:
        yield found
