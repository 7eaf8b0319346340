"""Policy tests: cases that pin what the policy decides, run before a policy change ships.

``keyturn policy test CASES.yaml`` (and a reload, for the file named by ``policy.tests``) runs
each case against the configuration and fails on any mismatch, like ``opa test``. A cases file:

.. code-block:: yaml

    cases:
      - name: on-call engineer on an alerting database gets in at once
        request: {requester: alice, role: db-admin, target: db-1, duration: PT1H}
        at: 2026-11-21T02:45:00Z          # default 2026-01-05T10:00:00Z (a Monday)
        oncall: {database: [alice]}       # schedule → people on call at `at` (ids or e-mails)
        alerts:                           # firing at `at`, mapped with alerts.* like webhooks
          - {name: PostgresPrimaryDown, severity: critical, labels: {instance: "db-1:9187"}}
        expect: {outcome: auto_approve, rule: oncall-db-alerting}

Per case, optional: ``justification``, ``scheduled`` (in ``request``); ``oncall_files``
(schedule → an iCalendar file, relative to the cases file, evaluated at ``at``); ``history``
(``{requests_7d, hours_elevated_7d}``); ``facts`` (merged over everything gathered, last);
``expect.approvals``. On-call counts only for schedules that cover the case's target, as in
production. A malformed cases file is a configuration error (exit 10), not a failure (exit 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from keyturn.adapters.oncall_sources import OnCallSourceError, ical_shifts
from keyturn.config import Duration, LoadedConfig, Name, load_config
from keyturn.domain.alerts import AlertTargets
from keyturn.domain.errors import ConfigError
from keyturn.domain.model import Decision, Outcome
from keyturn.domain.policy import PolicyEngine, add_sourced_facts, base_facts, is_eligible

DEFAULT_AT = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CaseRequest(_Strict):
    """The access request of a case."""

    requester: Name
    role: Name
    target: Name
    duration: Duration = timedelta(hours=1)
    justification: str = "policy test"
    scheduled: bool = False


class CaseAlert(_Strict):
    """A firing alert in a case."""

    name: str = Field(min_length=1, max_length=256)
    severity: str | None = None
    labels: dict[str, str] = {}
    since: datetime | None = None


class CaseHistory(_Strict):
    """History facts of a case."""

    requests_7d: int = Field(default=0, ge=0)
    hours_elevated_7d: float = Field(default=0.0, ge=0)


class Expectation(_Strict):
    """What the policy must decide."""

    outcome: Outcome
    rule: str | None = None
    approvals: int | None = None


class Case(_Strict):
    """One policy test case."""

    name: str = Field(min_length=1, max_length=300)
    request: CaseRequest
    at: datetime = DEFAULT_AT
    oncall: dict[Name, tuple[str, ...]] = {}
    oncall_files: dict[Name, str] = {}
    alerts: tuple[CaseAlert, ...] = ()
    history: CaseHistory = CaseHistory()
    facts: dict[str, Any] = {}
    expect: Expectation


class CaseFile(_Strict):
    """A policy test file."""

    cases: tuple[Case, ...] = Field(min_length=1)


@dataclass(frozen=True)
class CaseResult:
    """One case's outcome: passed, or what differed."""

    name: str
    passed: bool
    decision: Decision
    mismatches: tuple[str, ...]


def load_cases(path: Path) -> CaseFile:
    """Read and validate a cases file.

    Raises:
        ConfigError: unreadable, not YAML, or not the documented shape (with the key path).
    """
    try:
        data = yaml.safe_load(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}", path="(file)") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML", path="(file)") from exc
    try:
        return CaseFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{path}: {where}: {first['msg']}", path=where) from exc


def run_cases(
    loaded: LoadedConfig, policy: PolicyEngine, cases: CaseFile, *, base_dir: Path
) -> list[CaseResult]:
    """Decide every case with ``policy`` and compare with its expectation.

    Raises:
        ConfigError: a case names an unknown requester, role, target or schedule, or an
            on-call file cannot be read.
    """
    return [_run(loaded, policy, case, base_dir) for case in cases.cases]


def run_embedded(loaded: LoadedConfig, policy: PolicyEngine) -> list[str]:
    """Run the cases named by ``policy.tests`` (if any).

    Returns:
        One line per failing case (empty: all passed).

    Raises:
        ConfigError: the file cannot be read or is malformed.
    """
    if loaded.config.policy.tests is None:
        return []
    path = loaded.resolve(loaded.config.policy.tests)
    results = run_cases(loaded, policy, load_cases(path), base_dir=path.parent)
    return [f"{r.name}: {'; '.join(r.mismatches)}" for r in results if not r.passed]


def load_checked(path: Path) -> LoadedConfig:
    """Load a configuration file and run its embedded policy tests (``policy.tests``).

    Raises:
        ConfigError: the file is invalid, its policy does not compile, or a test fails.
    """
    loaded = load_config(path)
    failures = run_embedded(loaded, PolicyEngine(loaded.config))
    if failures:
        raise ConfigError(
            f"{path}: {len(failures)} embedded policy test(s) fail; first: {failures[0]}",
            path="policy.tests",
        )
    return loaded


def _run(loaded: LoadedConfig, policy: PolicyEngine, case: Case, base_dir: Path) -> CaseResult:
    config = loaded.config
    ask = case.request
    user, role, target = (
        config.user(ask.requester),
        config.role(ask.role),
        config.target(ask.target),
    )
    if user is None or role is None or target is None:
        raise ConfigError(
            f"case {case.name!r}: unknown requester, role or target", path="cases.request"
        )
    at = case.at if case.at.tzinfo is not None else case.at.replace(tzinfo=UTC)
    facts = base_facts(
        user=user,
        role=role,
        target=target,
        duration=ask.duration,
        justification=ask.justification,
        ticket=None,
        now=at,
        timezone=config.policy.timezone,
        scheduled=ask.scheduled,
    )
    schedules = _on_call(loaded, case, user.id, at, base_dir)
    covering = [
        s.name for s in config.oncall.schedules if s.name in schedules and s.targets.matches(target)
    ]
    mapper = AlertTargets(config.alerts, config.targets)
    add_sourced_facts(
        facts,
        on_call_schedules=covering,
        alerts=[
            (a.name, a.severity, a.since or at)
            for a in case.alerts
            if target.name in mapper.targets_of(_labels(a))
        ],
        requests_7d=case.history.requests_7d,
        hours_elevated_7d=case.history.hours_elevated_7d,
    )
    _merge(facts, case.facts)
    decision = policy.decide(eligible=is_eligible(config, user, role.name, target), facts=facts)
    mismatches = []
    if decision.outcome is not case.expect.outcome:
        mismatches.append(f"outcome is {decision.outcome}, expected {case.expect.outcome}")
    if case.expect.rule is not None and decision.rule != case.expect.rule:
        mismatches.append(f"rule is {decision.rule}, expected {case.expect.rule}")
    if case.expect.approvals is not None and decision.approvals != case.expect.approvals:
        mismatches.append(f"approvals is {decision.approvals}, expected {case.expect.approvals}")
    return CaseResult(case.name, not mismatches, decision, tuple(mismatches))


def _labels(alert: CaseAlert) -> dict[str, str]:
    return {"alertname": alert.name, **alert.labels}


def _on_call(
    loaded: LoadedConfig, case: Case, user_id: str, at: datetime, base_dir: Path
) -> set[str]:
    known = {s.name for s in loaded.config.oncall.schedules}
    names: set[str] = set()
    people: dict[str, tuple[str, ...]] = dict(case.oncall)
    for schedule, file in case.oncall_files.items():
        try:
            shifts = ical_shifts(
                (base_dir / file).read_bytes(), start=at - timedelta(days=1), end=at + timedelta(1)
            )
        except (OSError, OnCallSourceError) as exc:
            raise ConfigError(
                f"case {case.name!r}: on-call file {file}: {exc}", path="cases.oncall_files"
            ) from exc
        people[schedule] = tuple(p for s in shifts if s.start <= at < s.end for p in s.people)
    for schedule, who in people.items():
        if schedule not in known:
            raise ConfigError(
                f"case {case.name!r}: unknown on-call schedule {schedule!r}", path="cases.oncall"
            )
        for name in who:
            matches = loaded.config.users_named(name)
            if len(matches) == 1 and matches[0].id == user_id:
                names.add(schedule)
    return names


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
