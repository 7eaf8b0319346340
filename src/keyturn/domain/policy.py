"""Policy: eligibility first, then ordered CEL rules; the first match decides; no match denies.

Rules are written in the Common Expression Language (CEL, https://cel.dev, cel-spec
``doc/langdef.md``) and compiled once when the configuration is loaded. The fact set a rule sees:

=================  ===========================================================================
``requester``      ``{id, name, groups}``
``role``           ``{name, tier}``
``target``         ``{name, labels}``
``request``        ``{duration (seconds, int), justification, ticket ("" if none)}``
``now``            ``{timestamp (UTC), hour (0-23), weekday (1=Mon … 7=Sun), date}`` — hour,
                   weekday and date in the policy's time zone
=================  ===========================================================================

Later fact sources (on-call, alerts, history) add keys to these maps; :func:`base_facts` builds
the part every decision has. A rule that fails at evaluation time counts as *not matched* and the
error is kept in the decision's trace: an error never approves.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

from keyturn.config import KeyturnConfig, RoleConfig, RuleConfig, TargetConfig, UserConfig
from keyturn.domain.errors import ConfigError
from keyturn.domain.model import Approvers, Decision, Outcome

ELIGIBILITY_RULE = "eligibility"
DEFAULT_DENY_RULE = "default-deny"

_PROBE_FACTS: dict[str, Any] = {
    "requester": {"id": "probe", "name": "Probe", "groups": ["g"]},
    "role": {"name": "r", "tier": "standard"},
    "target": {"name": "t", "labels": {"k": "v"}},
    "request": {"duration": 60, "justification": "j", "ticket": ""},
    "now": {
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
        "hour": 0,
        "weekday": 1,
        "date": "2026-01-01",
    },
}


@dataclass(frozen=True)
class CompiledRule:
    """A policy rule with its CEL program compiled."""

    config: RuleConfig
    program: Any


def compile_rules(rules: tuple[RuleConfig, ...]) -> tuple[CompiledRule, ...]:
    """Compile every rule's ``when`` and check it against a typed probe fact set.

    The package has no static type checker, so each program is evaluated once against facts of
    the right shapes: a syntax error, an unknown name, an operator applied to the wrong types or a
    result that is not a boolean is a configuration error. A missing map key is not (it depends on
    the data, e.g. a label only some targets carry).

    Raises:
        ConfigError: naming the rule and the key path ``policy.rules[i].when``.
    """
    compiled = []
    for index, rule in enumerate(rules):
        path = f"policy.rules[{index}].when"
        try:
            program = cel.compile(rule.when)
        except ValueError as exc:
            raise ConfigError(
                f"{path}: rule {rule.name!r}: CEL syntax error: {_first_line(exc)}", path=path
            ) from exc
        try:
            result = program.execute(_PROBE_FACTS)
        except (KeyError, IndexError):
            result = True
        except (TypeError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"{path}: rule {rule.name!r}: CEL type error: {_first_line(exc)}", path=path
            ) from exc
        if not isinstance(result, bool):
            raise ConfigError(
                f"{path}: rule {rule.name!r}: must evaluate to a boolean, "
                f"got {type(result).__name__}",
                path=path,
            )
        compiled.append(CompiledRule(config=rule, program=program))
    return tuple(compiled)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def is_eligible(config: KeyturnConfig, user: UserConfig, role: str, target: TargetConfig) -> bool:
    """True if any eligibility entry lets this user request ``role`` on ``target``."""
    for entry in config.eligibility:
        named = user.id in entry.users or bool(set(user.groups) & set(entry.groups))
        if named and role in entry.roles and entry.targets.matches(target):
            return True
    return False


def base_facts(
    *,
    user: UserConfig,
    role: RoleConfig,
    target: TargetConfig,
    duration: timedelta,
    justification: str,
    ticket: str | None,
    now: datetime,
    timezone: str,
) -> dict[str, Any]:
    """The facts every decision has (see the module docstring). ``now`` is aware UTC."""
    local = now.astimezone(zoneinfo.ZoneInfo(timezone))
    return {
        "requester": {"id": user.id, "name": user.name, "groups": list(user.groups)},
        "role": {"name": role.name, "tier": role.tier},
        "target": {"name": target.name, "labels": dict(target.labels)},
        "request": {
            "duration": int(duration.total_seconds()),
            "justification": justification,
            "ticket": ticket or "",
        },
        "now": {
            "timestamp": now,
            "hour": local.hour,
            "weekday": local.isoweekday(),
            "date": local.date().isoformat(),
        },
    }


def _recordable(facts: dict[str, Any]) -> dict[str, Any]:
    """Facts as JSON-safe data (datetimes become RFC 3339 strings)."""

    def convert(value: Any) -> Any:
        if isinstance(value, datetime):
            return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [convert(v) for v in value]
        return value

    result: dict[str, Any] = convert(facts)
    return result


class PolicyEngine:
    """Decides access requests from compiled rules. Pure: facts in, decision out."""

    def __init__(self, config: KeyturnConfig) -> None:
        self._config = config
        self._rules = compile_rules(config.policy.rules)

    @property
    def rules(self) -> tuple[CompiledRule, ...]:
        """The compiled rules, in evaluation order."""
        return self._rules

    def decide(self, *, eligible: bool, facts: dict[str, Any]) -> Decision:
        """Evaluate eligibility, then each rule in order.

        Returns:
            The decision, with the matching rule, reasons, the recorded facts and a trace of each
            rule evaluated (``{rule, matched, error?}``). Not eligible → deny (rule
            ``eligibility``); no rule matched → deny (rule ``default-deny``).
        """
        recorded = _recordable(facts)
        if not eligible:
            who, role, target = facts["requester"]["id"], facts["role"]["name"], facts["target"]
            return Decision(
                outcome=Outcome.DENY,
                rule=ELIGIBILITY_RULE,
                reasons=(f"{who} is not eligible for role {role} on target {target['name']}",),
                facts=recorded,
            )
        trace: list[dict[str, Any]] = []
        for rule in self._rules:
            matched, error = _evaluate(rule, facts)
            entry: dict[str, Any] = {"rule": rule.config.name, "matched": matched}
            if error:
                entry["error"] = error
            trace.append(entry)
            if matched:
                return _decision_for(rule.config, recorded, tuple(trace))
        return Decision(
            outcome=Outcome.DENY,
            rule=DEFAULT_DENY_RULE,
            reasons=("no policy rule matched; access is denied by default",),
            facts=recorded,
            trace=tuple(trace),
        )


def _evaluate(rule: CompiledRule, facts: dict[str, Any]) -> tuple[bool, str | None]:
    try:
        result = rule.program.execute(facts)
    except (KeyError, IndexError, TypeError, RuntimeError, ValueError) as exc:
        return False, f"evaluation error: {_first_line(exc)}"
    if not isinstance(result, bool):
        return False, f"evaluation error: result is {type(result).__name__}, not bool"
    return result, None


def _decision_for(
    rule: RuleConfig, facts: dict[str, Any], trace: tuple[dict[str, Any], ...]
) -> Decision:
    default_reason = {
        Outcome.AUTO_APPROVE: f"approved automatically by rule {rule.name}",
        Outcome.REQUIRE_APPROVAL: f"rule {rule.name} requires {rule.approvals} approval(s)",
        Outcome.DENY: f"denied by rule {rule.name}",
    }[rule.effect]
    approvers = (
        Approvers(users=rule.approvers.users, groups=rule.approvers.groups)
        if rule.approvers
        else Approvers()
    )
    return Decision(
        outcome=rule.effect,
        rule=rule.name,
        reasons=(rule.reason or default_reason,),
        facts=facts,
        approvals=rule.approvals if rule.effect is Outcome.REQUIRE_APPROVAL else 0,
        approvers=approvers,
        trace=trace,
    )
