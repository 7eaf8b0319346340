"""Policy: eligibility first, then ordered CEL rules; the first match decides; no match denies.

Rules are written in the Common Expression Language (CEL, https://cel.dev, cel-spec
``doc/langdef.md``) and compiled once when the configuration is loaded. The fact set a rule sees:

=================  ===========================================================================
``requester``      ``{id, name, email ("" if none), groups, on_call (bool: on call right now for
                   a schedule covering this target), on_call_schedules (names)}``
``role``           ``{name, tier}``
``target``         ``{name, labels, alerting (bool: any firing alert mapped to the target),
                   alerts ([{name, severity ("" if none), since (timestamp)}])}``
``request``        ``{duration (seconds, int), justification, ticket ("" if none),
                   scheduled (bool: the request asked for a later start)}``
``history``        ``{requests_7d (int: this requester's requests for this role in the last 7
                   days, this one excluded), hours_elevated_7d (double: hours they held the role
                   in the last 7 days, overlaps counted once)}``
``now``            ``{timestamp (UTC), hour (0-23), weekday (1=Mon … 7=Sun), date}`` — hour,
                   weekday and date in the policy's time zone
=================  ===========================================================================

:func:`base_facts` builds the part that needs no source; the service
(:mod:`keyturn.service.facts`) adds on-call, alert and history facts. A rule that fails at
evaluation time counts as *not matched*, the error is kept in the decision's trace and counted:
an error never approves.

Every decision carries an explanation: for each rule evaluated, matched or not and why. A rule
whose condition is a conjunction (``a && b && c`` at the top level) is explained clause by clause,
so "not matched" says which clause was false.
"""

from __future__ import annotations

import dataclasses
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import cel

from keyturn.config import KeyturnConfig, RoleConfig, RuleConfig, TargetConfig, UserConfig
from keyturn.domain.errors import ConfigError
from keyturn.domain.model import Approvers, Decision, Outcome

ELIGIBILITY_RULE = "eligibility"
DEFAULT_DENY_RULE = "default-deny"

_PROBE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
_PROBE_FACTS: dict[str, Any] = {
    "requester": {
        "id": "probe",
        "name": "Probe",
        "email": "probe@example.org",
        "groups": ["g"],
        "on_call": True,
        "on_call_schedules": ["s"],
    },
    "role": {"name": "r", "tier": "standard"},
    "target": {
        "name": "t",
        "labels": {"k": "v"},
        "alerting": True,
        "alerts": [{"name": "a", "severity": "critical", "since": _PROBE_TIME}],
    },
    "request": {"duration": 60, "justification": "j", "ticket": "", "scheduled": False},
    "history": {"requests_7d": 1, "hours_elevated_7d": 1.5},
    "now": {"timestamp": _PROBE_TIME, "hour": 0, "weekday": 1, "date": "2026-01-01"},
}


@dataclass(frozen=True)
class Clause:
    """One top-level conjunct of a rule's condition, compiled on its own for explanations."""

    text: str
    program: Any


@dataclass(frozen=True)
class CompiledRule:
    """A policy rule with its CEL program compiled."""

    config: RuleConfig
    program: Any
    clauses: tuple[Clause, ...] = ()


def compile_rules(rules: tuple[RuleConfig, ...]) -> tuple[CompiledRule, ...]:
    """Compile every rule's ``when`` and check it against a typed probe fact set.

    The package has no static type checker, so each program is evaluated once against facts of
    the right shapes: a syntax error, an unknown name, an operator applied to the wrong types or a
    result that is not a boolean is a configuration error. A missing map key, an index out of range
    or a division by zero or overflow is not (it depends on the data, e.g. a label only some
    targets carry).

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
        except (KeyError, IndexError, ArithmeticError):  # depend on the data, not the types
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
        compiled.append(CompiledRule(config=rule, program=program, clauses=_clauses(rule.when)))
    return tuple(compiled)


def split_conjunction(expression: str) -> list[str]:
    """Split a CEL expression at its top-level ``&&`` operators (outside brackets and string
    literals, cel-spec ``doc/langdef.md`` "Syntax"). ``a && (b || c)`` → ``["a", "(b || c)"]``.
    An expression with no top-level ``&&``, with a top-level ``||`` or ``?:`` (which bind
    looser than ``&&``), or with a ``//`` comment (whose text, an apostrophe say, would throw
    the scan off) is returned whole."""
    parts, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(expression):
        char = expression[i]
        if quote:
            if char == "\\":
                i += 2
                continue
            if expression.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
        elif expression.startswith("//", i):
            return [expression.strip()]  # a comment: its text could hide anything; no split
        elif char in "\"'":
            quote = char * 3 if expression.startswith(char * 3, i) else char
            i += len(quote)
            continue
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (expression.startswith("||", i) or char == "?"):
            return [expression.strip()]
        elif depth == 0 and expression.startswith("&&", i):
            parts.append(expression[start:i].strip())
            start = i + 2
            i += 2
            continue
        i += 1
    parts.append(expression[start:].strip())
    return [part for part in parts if part]


def _clauses(expression: str) -> tuple[Clause, ...]:
    texts = split_conjunction(expression)
    if len(texts) < 2:
        return ()
    try:
        return tuple(Clause(text, cel.compile(text)) for text in texts)
    except ValueError:
        return ()


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
    scheduled: bool = False,
) -> dict[str, Any]:
    """The facts that need no source (see the module docstring), with neutral values for the
    sourced ones (not on call, not alerting, no history) until the service fills them in.
    ``now`` is aware UTC."""
    local = now.astimezone(zoneinfo.ZoneInfo(timezone))
    return {
        "requester": {
            "id": user.id,
            "name": user.name,
            "email": user.email or "",
            "groups": list(user.groups),
            "on_call": False,
            "on_call_schedules": [],
        },
        "role": {"name": role.name, "tier": role.tier},
        "target": {
            "name": target.name,
            "labels": dict(target.labels),
            "alerting": False,
            "alerts": [],
        },
        "request": {
            "duration": int(duration.total_seconds()),
            "justification": justification,
            "ticket": ticket or "",
            "scheduled": scheduled,
        },
        "history": {"requests_7d": 0, "hours_elevated_7d": 0.0},
        "now": {
            "timestamp": now,
            "hour": local.hour,
            "weekday": local.isoweekday(),
            "date": local.date().isoformat(),
        },
    }


def add_sourced_facts(
    facts: dict[str, Any],
    *,
    on_call_schedules: Sequence[str],
    alerts: Sequence[tuple[str, str | None, datetime]],
    requests_7d: int,
    hours_elevated_7d: float,
) -> dict[str, Any]:
    """Fill in the facts that come from sources (on-call, alerts, history) -- the one place
    their shape is written, for real decisions and policy test cases alike.

    Args:
        on_call_schedules: schedules covering the target on which the requester is on call now.
        alerts: firing alerts mapped to the target, as ``(name, severity, since)``.
    """
    facts["requester"]["on_call"] = bool(on_call_schedules)
    facts["requester"]["on_call_schedules"] = list(on_call_schedules)
    facts["target"]["alerting"] = bool(alerts)
    facts["target"]["alerts"] = [
        {"name": name, "severity": severity or "", "since": since}
        for name, severity, since in sorted(alerts, key=lambda a: (a[2], a[0]))
    ]
    facts["history"] = {"requests_7d": requests_7d, "hours_elevated_7d": hours_elevated_7d}
    return facts


def recordable(facts: dict[str, Any]) -> dict[str, Any]:
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

    def _reachable(self, decision: Decision, requester_id: str) -> Decision:
        """A review that can never reach its quorum -- the requester is one of too few
        approvers and is excluded from their own quorum -- is a denial that says so."""
        if decision.outcome is not Outcome.REQUIRE_APPROVAL:
            return decision
        possible = sum(
            1
            for u in self._config.users
            if u.id != requester_id and decision.approvers.includes(u.id, u.groups)
        )
        if possible >= decision.approvals:
            return decision
        return dataclasses.replace(
            decision,
            outcome=Outcome.DENY,
            reasons=(_quorum_note(decision, possible),),
            approvals=0,
        )

    def decide(self, *, eligible: bool, facts: dict[str, Any]) -> Decision:
        """Evaluate eligibility, then each rule in order, until one matches.

        Returns:
            The decision, with the matching rule, reasons, the recorded facts and the
            explanation: one trace entry per rule evaluated, in order, ``{rule, matched, why,
            clauses?: [{expr, value}], error?}``. Not eligible → deny (rule ``eligibility``);
            no rule matched → deny (rule ``default-deny``); a review the requester's own
            exclusion makes impossible → deny.
        """
        recorded = recordable(facts)
        if not eligible:
            who, role, target = facts["requester"]["id"], facts["role"]["name"], facts["target"]
            reason = f"{who} is not eligible for role {role} on target {target['name']}"
            return Decision(
                outcome=Outcome.DENY,
                rule=ELIGIBILITY_RULE,
                reasons=(reason,),
                facts=recorded,
                trace=({"rule": ELIGIBILITY_RULE, "matched": True, "why": reason},),
            )
        context = cel.Context(facts)
        trace: list[dict[str, Any]] = []
        for rule in self._rules:
            entry = explain_rule(rule, context)
            trace.append(entry)
            if entry["matched"]:
                decision = _decision_for(rule.config, recorded, tuple(trace))
                return self._reachable(decision, facts["requester"]["id"])
        return Decision(
            outcome=Outcome.DENY,
            rule=DEFAULT_DENY_RULE,
            reasons=("no policy rule matched; access is denied by default",),
            facts=recorded,
            trace=tuple(trace),
        )

    def approvers_for(self, facts: dict[str, Any]) -> Approvers:
        """Everyone who could be asked to review a request with these facts: the approvers of
        every ``require_approval`` rule whose condition holds, whatever the rules' order (the
        people told of a break-glass use of the role). A rule that errors contributes nobody."""
        context = cel.Context(facts)
        users: list[str] = []
        groups: list[str] = []
        for rule in self._rules:
            approvers = rule.config.approvers
            if rule.config.effect is not Outcome.REQUIRE_APPROVAL or approvers is None:
                continue
            matched, _error = _evaluate(rule.program, context)
            if matched:
                users += [u for u in approvers.users if u not in users]
                groups += [g for g in approvers.groups if g not in groups]
        return Approvers(users=tuple(users), groups=tuple(groups))


def _quorum_note(decision: Decision, possible: int) -> str:
    return (
        f"rule {decision.rule} needs {decision.approvals} distinct approver(s) and only "
        f"{possible} can approve this request (a requester never reviews their own request)"
    )


def explain_rule(rule: CompiledRule, context: Any) -> dict[str, Any]:
    """Evaluate one rule against a ``cel.Context`` and say why it matched or not.

    Returns:
        ``{rule, matched, why, clauses?, error?}``; ``clauses`` lists each top-level conjunct
        with its value (``true``/``false``/``error: …``/``not evaluated``).
    """
    clauses: list[dict[str, Any]] = []
    first_false: str | None = None
    clause_failed = False
    if rule.clauses:
        settled = False
        for clause in rule.clauses:
            if settled:
                clauses.append({"expr": clause.text, "value": "not evaluated"})
                continue
            value, clause_error = _evaluate(clause.program, context)
            shown = f"error: {clause_error}" if clause_error else ("true" if value else "false")
            clauses.append({"expr": clause.text, "value": shown})
            clause_failed = clause_failed or clause_error is not None
            if not value:
                first_false, settled = clause.text, True
    if rule.clauses and not clause_failed:
        # The clauses are the top-level conjuncts: with no error among those evaluated, the
        # rule is true exactly when none was false (CEL's && needs no second evaluation).
        matched, error = first_false is None, None
    else:
        matched, error = _evaluate(rule.program, context)
    entry: dict[str, Any] = {"rule": rule.config.name, "matched": matched}
    if rule.clauses:
        entry["clauses"] = clauses
    if error:
        entry["error"] = error
        entry["why"] = f"not matched: {error} (an error never matches)"
    elif matched:
        entry["why"] = f"matched: {rule.config.when}"
    elif first_false is not None:
        entry["why"] = f"not matched: {first_false} is false"
    else:
        entry["why"] = f"not matched: {rule.config.when} is false"
    return entry


def _evaluate(program: Any, context: Any) -> tuple[bool, str | None]:
    try:
        result = program.execute(context)
    except (KeyError, IndexError, ArithmeticError, TypeError, RuntimeError, ValueError) as exc:
        message = f"no such key {exc}" if isinstance(exc, KeyError) else _first_line(exc)
        return False, f"evaluation error: {message}"
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
