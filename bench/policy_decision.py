"""Policy decision time with 100 rules and every fact already gathered (the policy engine alone).

Builds the example configuration with 100 policy rules: 99 realistic rules that do not match
the request (tier, role, group, label, hour, history and alert conditions of the shapes people
write) followed by the example's ``oncall-incident`` rule, so each decision evaluates all 100
rules and explains each (the explanation is stored with every real decision). The facts are the
02:45 scene's: alice on call, db-1 alerting, a week of history. Every decision is checked to be
``auto_approve`` by ``oncall-incident``.

Reports the median, p90, p99 and max of ``PolicyEngine.decide`` over ``--decisions`` runs (after
a warm-up), plus the same for one rule, so the per-rule cost is visible. Gathering the facts
(store reads, on-call lookup) is not included: that is what "all facts cached" means.

Usage (from the repository root)::

    .venv/bin/python bench/policy_decision.py [--decisions 20000] [--rules 100]
        [--out bench/results/policy_decision.json]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cel
import yaml

from keyturn.config import parse_config
from keyturn.domain.model import Outcome
from keyturn.domain.policy import PolicyEngine, base_facts

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "keyturn.yaml"
sys.path.insert(0, str(ROOT))

from bench.common import goal, percentiles, rounded, save  # noqa: E402

FILLERS = (
    'role.tier == "critical" && request.duration <= 900',
    'role.name == "payroll-admin" && "finance" in requester.groups',
    'target.labels.env == "staging" && role.tier == "standard"',
    'now.weekday >= 6 && role.tier == "high" && !requester.on_call',
    'request.ticket.startsWith("CHG-") && role.name == "db-schema-admin"',
    'history.hours_elevated_7d > 40.0 && role.tier == "high"',
    'target.alerts.exists(a, a.severity == "page") && "sre-leads" in requester.groups',
    'requester.id == "breakglass" || requester.email.endsWith("@contractor.example")',
    "request.duration > 14400 && history.requests_7d > 20",
    'target.name.startsWith("pay-") && requester.on_call_schedules.exists(s, s == "payments")',
)


def _config(rules: int) -> Any:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["store"] = {"url": "sqlite:///unused.db"}  # never opened: the engine alone is measured
    data.pop("ldap")
    data["roles"] = [r for r in data["roles"] if r.get("provider") != "ldap"]
    for entry in data["eligibility"]:
        entry["roles"] = [r for r in entry["roles"] if r in {x["name"] for x in data["roles"]}]
    data["eligibility"] = [e for e in data["eligibility"] if e["roles"]]
    data["oncall"] = {}
    data["policy"].pop("tests")
    oncall = next(r for r in data["policy"]["rules"] if r["name"] == "oncall-incident")
    fillers = [
        {
            "name": f"filler-{i:03d}",
            "when": FILLERS[i % len(FILLERS)],
            "effect": "deny" if i % 2 else "auto_approve",
        }
        for i in range(rules - 1)
    ]
    data["policy"]["rules"] = [*fillers, copy.deepcopy(oncall)]
    return parse_config(data, source="bench").config


def _facts(config: Any) -> dict[str, Any]:
    now = datetime(2026, 11, 21, 2, 45, tzinfo=UTC)
    user, role, target = config.user("alice"), config.role("db-admin"), config.target("db-1")
    facts = base_facts(
        user=user,
        role=role,
        target=target,
        duration=timedelta(hours=1),
        justification="PostgresPrimaryDown: failing over db-1",
        ticket="INC-4711",
        now=now,
        timezone="UTC",
    )
    facts["requester"] |= {"on_call": True, "on_call_schedules": ["database"]}
    facts["target"] |= {
        "alerting": True,
        "alerts": [{"name": "PostgresPrimaryDown", "severity": "critical", "since": now}],
    }
    facts["history"] = {"requests_7d": 3, "hours_elevated_7d": 2.5}
    return facts


def _measure(policy: PolicyEngine, facts: dict[str, Any], n: int, expect: str) -> list[float]:
    for _ in range(min(1000, n)):
        policy.decide(eligible=True, facts=facts)
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        decision = policy.decide(eligible=True, facts=facts)
        samples.append((time.perf_counter_ns() - started) / 1000)
        if decision.outcome is not Outcome.AUTO_APPROVE or decision.rule != expect:
            sys.exit(f"unexpected decision: {decision.outcome} by {decision.rule}")
    return samples


def _floor(policy: PolicyEngine, facts: dict[str, Any], n: int) -> list[float]:
    """The bare work of a decision: one ``cel.Context`` from the facts and each compiled rule
    executed once (no explanation, no recorded facts, no early stop), microseconds."""
    programs = [rule.program for rule in policy.rules]
    samples = []
    for _ in range(n):
        started = time.perf_counter_ns()
        context = cel.Context(facts)
        for program in programs:
            program.execute(context)
        samples.append((time.perf_counter_ns() - started) / 1000)
    return samples


def main() -> None:
    """Run the benchmark, print the figures and save them as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--rules", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="1,000 decisions")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.smoke:
        args.decisions = 1_000
    config = _config(args.rules)
    facts = _facts(config)
    many = PolicyEngine(config)
    one = PolicyEngine(_config(1))
    full = rounded(
        percentiles(_measure(many, facts, args.decisions, "oncall-incident"), (50, 90, 99))
    )
    single = rounded(percentiles(_measure(one, facts, args.decisions, "oncall-incident"), (50, 99)))
    floor = rounded(percentiles(_floor(many, facts, args.decisions), (50, 99)))
    print(
        f"policy decision, {args.rules} rules evaluated and explained, facts cached "
        f"({args.decisions} decisions), us: median {full['p50']:.1f}, p90 {full['p90']:.1f}, "
        f"p99 {full['p99']:.1f}, max {full['max']:.1f}\n"
        f"  one rule: median {single['p50']:.1f}, p99 {single['p99']:.1f} "
        f"(~{(full['p50'] - single['p50']) / max(1, args.rules - 1):.2f} us per extra rule)\n"
        f"  floor (cel.Context + {args.rules} bare executions): median {floor['p50']:.1f}, "
        f"p99 {floor['p99']:.1f}"
    )
    goals = [
        goal(
            "6",
            metric=f"median decision, {args.rules} rules, facts cached",
            unit="us",
            target="median <= 50 us",
            measured=full["p50"],
            floor=floor["p50"],
            met=full["p50"] <= 50,
            smoke=args.smoke,
        ),
        goal(
            "6",
            metric=f"p99 decision, {args.rules} rules, facts cached",
            unit="us",
            target="(reported)",
            measured=full["p99"],
            floor=floor["p99"],
            met=True,
            smoke=args.smoke,
        ),
    ]
    result = {
        "params": {"rules": args.rules, "decisions": args.decisions},
        "all_rules_us": full,
        "one_rule_us": single,
        "floor_us": floor,
    }
    save("policy_decision", result, goals, args.out, smoke=args.smoke)


if __name__ == "__main__":
    main()
