"""Gather the saved benchmark results into one goals table (Markdown).

Reads ``bench/results/*.json`` (full runs; ``--smoke`` for the smoke-sized ones), prints one row
per goal -- item, metric, goal, floor, measured, ratio, verdict -- with the machine and commit
of each result, and with ``--write`` replaces the table between the ``results:start`` and
``results:end`` markers of ``docs/benchmarks.md``.

``--check`` (used by ``make bench-smoke`` in CI) fails when a benchmark expected from the suite
has no result, or a result has no goal rows: a benchmark that stopped producing figures is
caught the day it breaks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.common import RESULTS  # noqa: E402

DOC = REPO / "docs" / "benchmarks.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"
SUITE = (
    "time_to_access",
    "ldap_access",
    "revocation_scale",
    "revocation_lag",
    "restart",
    "policy_decision",
    "audit_verify",
)


def load(smoke: bool) -> list[dict[str, Any]]:
    """The saved results of the suite's benchmarks, in suite order."""
    found = []
    for name in SUITE:
        path = RESULTS / f"{name}{'-smoke' if smoke else ''}.json"
        if path.exists():
            found.append(json.loads(path.read_text()))
    return found


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if value < 100 else f"{value:,.0f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(results: list[dict[str, Any]]) -> str:
    """The goals table in Markdown."""
    lines = [
        "| item | metric | goal | floor | measured | ratio | verdict |",
        "|---|---|---|--:|--:|--:|---|",
    ]
    for result in results:
        for g in result["goals"]:
            verdict = {True: "met", False: "**missed**", None: "smoke"}[g["met"]]
            if g["goal"].startswith("("):
                verdict = "-"  # a figure reported beside a goal, not a goal
            unit = g["unit"]
            lines.append(
                f"| {g['item']} | {g['metric']} | {g['goal']} | {_fmt(g['floor'])} {unit} | "
                f"{_fmt(g['measured'])} {unit} | {_fmt(g['ratio'])} | {verdict} |"
            )
    machines = {
        (
            r["machine"].get("cpu_count"),
            r["machine"].get("python"),
            (r["machine"].get("git") or {}).get("commit"),
        )
        for r in results
    }
    lines.append("")
    for cpus, python, commit in sorted(machines, key=str):
        lines.append(
            f"Measured on {cpus} CPUs, Python {python}, commit {(commit or 'unknown')[:10]}."
        )
    lines.append("Commands: " + "; ".join(f"`{r['command']}`" for r in results) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="the smoke-sized results")
    parser.add_argument("--write", action="store_true", help=f"update {DOC.relative_to(REPO)}")
    parser.add_argument("--check", action="store_true", help="fail if a result is missing")
    args = parser.parse_args(argv)
    results = load(args.smoke)
    text = table(results)
    print(text)
    if args.check:
        have = {r["benchmark"] for r in results}
        missing = [n for n in SUITE if n not in have]
        empty = [r["benchmark"] for r in results if not r["goals"]]
        if missing or empty:
            print(f"missing results: {missing}; results without goals: {empty}", file=sys.stderr)
            return 1
    if args.write:
        doc = DOC.read_text()
        if START not in doc or END not in doc:
            print(f"{DOC} has no {START} … {END} markers", file=sys.stderr)
            return 1
        head, rest = doc.split(START, 1)
        _old, tail = rest.split(END, 1)
        DOC.write_text(f"{head}{START}\n{text}\n{END}{tail}")
        print(f"updated {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
