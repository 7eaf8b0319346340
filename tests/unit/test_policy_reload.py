"""Configuration reloads (real app, SQLite store) and policy test cases."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyturn import bootstrap
from keyturn.bootstrap import App
from keyturn.config import load_config
from keyturn.domain.audit import AuditEvent
from keyturn.domain.errors import ConfigError
from keyturn.domain.model import Outcome
from keyturn.domain.policy import PolicyEngine
from keyturn.policy_cases import CaseFile, load_cases, load_checked, run_cases, run_embedded
from keyturn.service import alerts
from keyturn.testing import FakeClock
from tests.conftest import EXAMPLE
from tests.unit.incident import fire, incident_data

EXAMPLE_CASES = EXAMPLE.parent / "policy-tests.yaml"


def write(path: Path, data: dict[str, Any]) -> str:
    """Write ``data`` as YAML; return the SHA-256 of the bytes written."""
    raw = yaml.safe_dump(data).encode()
    path.write_bytes(raw)
    return hashlib.sha256(raw).hexdigest()


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Any]:
    """The example configuration (alert webhooks on), as the file will hold it."""
    return incident_data(tmp_path)


@pytest.fixture
def path(tmp_path: Path, data: dict[str, Any]) -> Path:
    """The configuration file the app is started from."""
    target = tmp_path / "keyturn.yaml"
    write(target, data)
    return target


@pytest.fixture
def app(path: Path) -> Iterator[App]:
    """The real app started from ``path``: SQLite store, SSH CA, on-call schedules."""
    wired = bootstrap.build(load_checked(path), clock=FakeClock(), environ={})
    yield wired
    wired.close()


def audit(app: App, action: str) -> list[AuditEvent]:
    with app.store.transaction() as tx:
        return [e for e in tx.audit_events() if e.action == action]


def test_a_valid_change_is_applied_and_audited_with_both_hashes(
    app: App, path: Path, data: dict[str, Any]
) -> None:
    """A new user with a token: applied, their token authenticates, ``config.reloaded`` names
    the old and the new file's SHA-256."""
    old_sha = app.loaded.sha256
    digest = hashlib.sha256(b"token-of-zoe").hexdigest()
    data["users"].append({"id": "zoe", "name": "Zoe", "groups": ["sre"], "token_sha256": digest})
    new_sha = write(path, data)
    assert digest not in app.users_by_token_digest()
    result = app.reload_file("sam")
    assert result == {"old_sha256": old_sha, "new_sha256": new_sha, "applied": True}
    assert app.users_by_token_digest()[digest].id == "zoe"
    assert app.loaded.sha256 == new_sha
    assert app.deps.config.user("zoe") is not None
    (event,) = audit(app, "config.reloaded")
    assert event.actor == "sam"
    assert (event.details["old_sha256"], event.details["new_sha256"]) == (old_sha, new_sha)
    applied = {"result": "applied"}
    assert app.deps.metrics.registry.get_sample_value("keyturn_config_reloads_total", applied) == 1


def test_invalid_yaml_is_refused_and_the_old_configuration_stays(app: App, path: Path) -> None:
    """A file that is not YAML: refused (audited), the configuration in force is unchanged."""
    config, sha = app.deps.config, app.loaded.sha256
    path.write_text("users: [unclosed\n")
    result = app.reload_file("sam")
    assert result["applied"] is False
    assert "not valid YAML" in str(result["reason"])
    assert app.deps.config is config
    assert app.loaded.sha256 == sha
    (event,) = audit(app, "config.reload_refused")
    assert event.details["old_sha256"] == sha
    assert audit(app, "config.reloaded") == []


def test_a_failing_embedded_policy_test_refuses_the_reload(
    app: App, path: Path, data: dict[str, Any], tmp_path: Path
) -> None:
    """policy.tests points at a case whose expectation the policy does not meet: refused."""
    cases = {
        "cases": [
            {
                "name": "bob gets schema changes without review",
                "request": {"requester": "bob", "role": "db-schema-admin", "target": "db-1"},
                "expect": {"outcome": "auto_approve"},
            }
        ]
    }
    (tmp_path / "wrong-cases.yaml").write_text(yaml.safe_dump(cases))
    data["policy"]["tests"] = "wrong-cases.yaml"  # relative to the configuration file
    data["users"][0]["name"] = "Alice M."
    write(path, data)
    config = app.deps.config
    result = app.reload_file("sam")
    assert result["applied"] is False
    reason = str(result["reason"])
    assert "embedded policy test" in reason
    assert "bob gets schema changes without review" in reason
    assert "outcome is require_approval, expected auto_approve" in reason
    assert app.deps.config is config
    assert len(audit(app, "config.reload_refused")) == 1


def test_a_changed_store_needs_a_restart(
    app: App, path: Path, data: dict[str, Any], tmp_path: Path
) -> None:
    """Pointing store.url elsewhere is refused, naming the section."""
    data["store"] = {"url": f"sqlite:///{tmp_path / 'other.db'}"}
    write(path, data)
    config = app.deps.config
    result = app.reload_file("sam")
    assert result["applied"] is False
    assert str(result["reason"]).startswith("changes to store need a restart")
    assert app.deps.config is config
    (event,) = audit(app, "config.reload_refused")
    assert event.details["reason"] == result["reason"]


def test_a_changed_notifier_needs_a_restart(app: App, path: Path, data: dict[str, Any]) -> None:
    """A new notifier webhook is refused rather than reported applied while the old one keeps
    receiving notifications."""
    data["notifier"] = {"webhook_url": "https://new-hook.example.net/keyturn"}
    write(path, data)
    notifier = app.deps.notifier
    result = app.reload_file("sam")
    assert result["applied"] is False
    assert str(result["reason"]).startswith("changes to notifier need a restart")
    assert app.deps.notifier is notifier


def test_a_new_alert_mapping_remaps_alerts_already_stored(
    app: App, path: Path, data: dict[str, Any]
) -> None:
    """An alert on instance pg-primary maps nowhere; after a reload that maps it to db-1, the
    stored alert counts for db-1."""
    received = fire(app.deps, instance="pg-primary:9187")
    assert received.targets == ()
    assert alerts.current(app.deps, target="db-1") == []
    data["alerts"]["mappings"].append(
        {"match": {"instance": r"pg-primary(:\d+)?"}, "targets": ["db-1"]}
    )
    write(path, data)
    assert app.reload_file("sam")["applied"] is True
    (now_db_1,) = alerts.current(app.deps, target="db-1")
    assert now_db_1.alert.labels["instance"] == "pg-primary:9187"
    assert now_db_1.targets == ("db-1",)


# Policy cases --------------------------------------------------------------------------------


def test_the_shipped_cases_pass_against_the_shipped_configuration() -> None:
    """examples/policy-tests.yaml passes for examples/keyturn.yaml, case by case."""
    loaded = load_config(EXAMPLE)
    cases = load_cases(EXAMPLE_CASES)
    results = run_cases(loaded, PolicyEngine(loaded.config), cases, base_dir=EXAMPLE.parent)
    assert len(results) == len(cases.cases) >= 9
    assert [r.mismatches for r in results if not r.passed] == []
    assert run_embedded(loaded, PolicyEngine(loaded.config)) == []
    scene = results[0]
    assert (scene.decision.outcome, scene.decision.rule) == (
        Outcome.AUTO_APPROVE,
        "oncall-incident",
    )


def _one(**case: Any) -> CaseFile:
    base: dict[str, Any] = {
        "name": "case",
        "request": {"requester": "alice", "role": "db-admin", "target": "db-1"},
        "expect": {"outcome": "require_approval"},
    }
    return CaseFile.model_validate({"cases": [base | case]})


def _run(cases: CaseFile) -> list[Any]:
    loaded = load_config(EXAMPLE)
    return run_cases(loaded, PolicyEngine(loaded.config), cases, base_dir=EXAMPLE.parent)


def test_a_wrong_expectation_reports_each_mismatch() -> None:
    """Expecting auto-approval by a made-up rule with 3 approvals: three mismatches, named."""
    (result,) = _run(
        _one(expect={"outcome": "auto_approve", "rule": "nope", "approvals": 3}),
    )
    assert result.passed is False
    assert result.mismatches == (
        "outcome is require_approval, expected auto_approve",
        "rule is db-admin-two-reviews, expected nope",
        "approvals is 2, expected 3",
    )


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ({"oncall": {"nosuch": ["alice"]}}, "unknown on-call schedule 'nosuch'"),
        (
            {"request": {"requester": "zed", "role": "db-admin", "target": "db-1"}},
            "unknown requester, role or target",
        ),
        ({"oncall_files": {"database": "oncall/missing.ics"}}, "on-call file oncall/missing.ics"),
    ],
    ids=["schedule", "requester", "file"],
)
def test_a_case_naming_something_unknown_is_a_configuration_error(
    case: dict[str, Any], message: str
) -> None:
    """Unknown schedules, requesters and unreadable on-call files are errors, not failures."""
    with pytest.raises(ConfigError, match=message):
        _run(_one(**case))


def test_on_call_files_are_read_at_the_cases_time() -> None:
    """The example calendar puts alice on call: with db-1 alerting, oncall-incident approves,
    and the facts name the schedule."""
    (result,) = _run(
        _one(
            at="2026-11-21T02:45:00Z",
            oncall_files={"database": "oncall/database.ics"},
            alerts=[{"name": "PostgresPrimaryDown", "labels": {"instance": "db-1"}}],
            expect={"outcome": "auto_approve", "rule": "oncall-incident"},
        )
    )
    assert result.passed, result.mismatches
    assert result.decision.facts["requester"]["on_call_schedules"] == ["database"]
    assert result.decision.facts["target"]["alerts"][0]["since"] == "2026-11-21T02:45:00Z"


def test_load_checked_refuses_a_file_whose_cases_fail(tmp_path: Path) -> None:
    """The same check at start-up: a configuration whose embedded cases fail is not loaded."""
    case = {
        "name": "wrong",
        "request": {"requester": "alice", "role": "server-admin", "target": "db-1"},
        "expect": {"outcome": "deny"},
    }
    cases = {"cases": [case]}
    (tmp_path / "cases.yaml").write_text(yaml.safe_dump(cases))
    data = incident_data(tmp_path)
    data["policy"]["tests"] = "cases.yaml"
    write(tmp_path / "keyturn.yaml", data)
    with pytest.raises(ConfigError, match="1 embedded policy test"):
        load_checked(tmp_path / "keyturn.yaml")
