"""Policy: eligibility first, then the first matching CEL rule; no match or an error denies."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keyturn.config import KeyturnConfig
from keyturn.domain.model import Outcome
from keyturn.domain.policy import PolicyEngine, base_facts, is_eligible, split_conjunction
from keyturn.testing import FakeClock
from tests.conftest import example_data, load


def _config(tmp_path: Path, rules: list[dict[str, Any]] | None = None) -> KeyturnConfig:
    data = example_data(tmp_path)
    if rules is not None:
        data["policy"]["rules"] = rules
    return load(data).config


def _facts(config: KeyturnConfig, user: str, role: str, target: str, seconds: int = 1800) -> Any:
    u, r, t = config.user(user), config.role(role), config.target(target)
    assert u
    assert r
    assert t
    return base_facts(
        user=u,
        role=r,
        target=t,
        duration=timedelta(seconds=seconds),
        justification="j",
        ticket=None,
        now=FakeClock().now(),
        timezone="Europe/Berlin",
    )


def test_eligibility_by_group_and_label_selector(tmp_path: Path) -> None:
    """sre members may request server-admin on env=prod targets; contractors may not."""
    config = _config(tmp_path)
    db1 = config.target("db-1")
    alice, mallory = config.user("alice"), config.user("mallory")
    assert db1
    assert alice
    assert mallory
    assert is_eligible(config, alice, "server-admin", db1)
    assert not is_eligible(config, alice, "db-schema-admin", db1)
    assert not is_eligible(config, mallory, "server-admin", db1)


def test_not_eligible_is_denied_with_the_reason(tmp_path: Path) -> None:
    """Ineligible requests are denied by the 'eligibility' rule, saying who and what."""
    config = _config(tmp_path)
    decision = PolicyEngine(config).decide(
        eligible=False, facts=_facts(config, "mallory", "server-admin", "db-1")
    )
    assert decision.outcome is Outcome.DENY
    assert decision.rule == "eligibility"
    assert "mallory is not eligible" in decision.reasons[0]


def test_first_matching_rule_decides_and_trace_records_each(tmp_path: Path) -> None:
    """Rules are tried in order; the trace lists each one with matched or not."""
    config = _config(tmp_path)
    decision = PolicyEngine(config).decide(
        eligible=True, facts=_facts(config, "bob", "db-schema-admin", "db-1")
    )
    assert decision.outcome is Outcome.REQUIRE_APPROVAL
    assert decision.rule == "high-tier-needs-lead"
    assert decision.approvals == 1
    assert decision.approvers.groups == ("dba-leads",)
    assert [(t["rule"], t["matched"]) for t in decision.trace] == [
        ("standard-auto-approve", False),
        ("oncall-incident", False),
        ("db-admin-two-reviews", False),
        ("high-tier-needs-lead", True),
    ]
    oncall = decision.trace[1]
    assert oncall["why"] == "not matched: requester.on_call is false"
    assert oncall["clauses"] == [
        {"expr": 'role.tier == "high"', "value": "true"},
        {"expr": "requester.on_call", "value": "false"},
        {"expr": "target.alerting", "value": "not evaluated"},
    ]


def test_no_matching_rule_denies_by_default(tmp_path: Path) -> None:
    """Deny by default: an eligible request no rule matches is denied."""
    config = _config(tmp_path, [{"name": "never", "when": "false", "effect": "auto_approve"}])
    decision = PolicyEngine(config).decide(
        eligible=True, facts=_facts(config, "alice", "server-admin", "db-1")
    )
    assert decision.outcome is Outcome.DENY
    assert decision.rule == "default-deny"


def test_rule_erroring_at_evaluation_counts_as_not_matched(tmp_path: Path) -> None:
    """A label missing on this target makes the rule error: not matched, never approved."""
    rules = [
        {"name": "by-label", "when": 'target.labels["team"] == "db"', "effect": "auto_approve"},
        {"name": "fallback", "when": "true", "effect": "deny", "reason": "nothing else matched"},
    ]
    config = _config(tmp_path, rules)
    decision = PolicyEngine(config).decide(
        eligible=True, facts=_facts(config, "alice", "server-admin", "db-1")
    )
    assert decision.outcome is Outcome.DENY
    assert decision.rule == "fallback"
    assert decision.reasons == ("nothing else matched",)
    assert decision.trace[0]["matched"] is False
    assert "evaluation error" in decision.trace[0]["error"]


@pytest.mark.parametrize(
    ("when", "matched", "errors"),
    [
        ('role.tier == "standard" && target.labels["team"] == "db"', False, True),  # true && error
        ('target.labels["team"] == "db" && role.tier == "nope"', False, False),  # error && false
        ('role.tier == "nope" && target.labels["team"] == "db"', False, False),  # false && error
        ('role.tier == "standard" && request.duration > 0', True, False),
        ('role.tier == "standard" && request.duration < 0', False, False),
    ],
)
def test_a_conjunction_is_decided_as_cel_decides_it_whatever_its_clauses_did(
    tmp_path: Path, when: str, matched: bool, errors: bool
) -> None:
    """The clause-by-clause explanation decides a rule without evaluating it again when no
    clause erred; with an error among them, CEL's own && (which absorbs an error next to a
    false) decides. Either way the outcome is the whole expression's."""
    config = _config(tmp_path, [{"name": "r", "when": when, "effect": "auto_approve"}])
    facts = _facts(config, "alice", "server-admin", "db-1")
    entry = PolicyEngine(config).decide(eligible=True, facts=facts).trace[0]
    whole = PolicyEngine(config).rules[0].program
    try:
        expected = whole.execute(facts)
    except (KeyError, RuntimeError, ValueError, TypeError):
        expected = "error"
    assert entry["matched"] is matched
    assert ("error" in entry) is errors
    assert expected == ("error" if errors else matched)
    assert len(entry["clauses"]) == 2


def test_a_comment_never_hides_a_top_level_or_from_the_explanation(tmp_path: Path) -> None:
    """An apostrophe in a ``//`` comment must not open a fake string that hides the ``||``
    after it: the rule is decided as CEL decides it (here: matched, through the second arm)."""
    when = "requester.on_call && target.alerting // it's burning\n|| requester.id == 'alice'"
    config = _config(tmp_path, [{"name": "r", "when": when, "effect": "auto_approve"}])
    facts = _facts(config, "alice", "server-admin", "db-1")
    assert PolicyEngine(config).rules[0].program.execute(facts) is True
    decision = PolicyEngine(config).decide(eligible=True, facts=facts)
    assert decision.trace[0]["matched"] is True
    assert decision.outcome is Outcome.AUTO_APPROVE
    assert split_conjunction(when) == [when]


def test_time_facts_use_the_policy_time_zone(tmp_path: Path) -> None:
    """02:45 UTC in November is 03:45 in Berlin; weekday is ISO (Tuesday = 2)."""
    config = _config(tmp_path)
    facts = _facts(config, "alice", "server-admin", "db-1")
    assert facts["now"]["hour"] == 3
    assert facts["now"]["weekday"] == 2


def test_rules_see_duration_groups_and_labels(tmp_path: Path) -> None:
    """CEL sees request.duration in seconds, requester groups and target labels."""
    rule = {
        "name": "short-prod-sre",
        "when": 'request.duration <= 3600 && "sre" in requester.groups '
        '&& target.labels["env"] == "prod"',
        "effect": "auto_approve",
    }
    config = _config(tmp_path, [rule])
    engine = PolicyEngine(config)
    short = engine.decide(eligible=True, facts=_facts(config, "alice", "server-admin", "db-1"))
    long = engine.decide(
        eligible=True, facts=_facts(config, "alice", "server-admin", "db-1", seconds=7200)
    )
    assert short.outcome is Outcome.AUTO_APPROVE
    assert long.outcome is Outcome.DENY
    assert short.facts["request"]["duration"] == 1800
    assert short.facts["now"]["timestamp"].endswith("Z")
