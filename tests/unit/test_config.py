"""Configuration: unknown keys, wrong types and bad references are refused with the key path."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from keyturn.config import json_schema, load_config
from keyturn.domain.errors import ConfigError
from keyturn.domain.policy import PolicyEngine
from tests.conftest import EXAMPLE, example_data, load


def _broken(tmp_path: Path, change: Any) -> dict[str, Any]:
    data = copy.deepcopy(example_data(tmp_path))
    change(data)
    return data


def test_example_configuration_is_valid() -> None:
    """The shipped example loads and its policy compiles."""
    loaded = load_config(EXAMPLE)
    PolicyEngine(loaded.config)
    assert {r.name for r in loaded.config.roles} == {
        "server-admin",
        "db-schema-admin",
        "db-admin",
        "db-admins",
        "app-deployer",
    }
    assert [s.name for s in loaded.config.oncall.schedules] == ["database"]
    assert loaded.resolve(loaded.config.oncall.schedules[0].ical or "").is_file()
    assert len(loaded.sha256) == 64


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d["roles"][0].update(max_duraton="PT1H"), "roles[0].max_duraton"),
        (lambda d: d["roles"][0].update(max_duration=3600), "roles[0].max_duration"),
        (lambda d: d["roles"][0].update(max_duration="P1M"), "roles[0].max_duration"),
        (lambda d: d["server"].update(port="eighty"), "server.port"),
        (lambda d: d["users"][0].update(id="alice smith"), "users[0].id"),
        (lambda d: d["users"][0].update(token_sha256="not-a-hash"), "users[0].token_sha256"),
        (lambda d: d["policy"].update(timezone="Mars/Olympus"), "policy.timezone"),
        (lambda d: d["store"].update(url="mysql://x"), "store.url"),
    ],
)
def test_invalid_values_name_the_key_path(tmp_path: Path, change: Any, path: str) -> None:
    """Wrong types, unknown keys and bad formats are refused, naming the offending key path."""
    with pytest.raises(ConfigError) as info:
        load(_broken(tmp_path, change))
    assert info.value.details["path"] == path
    assert path in info.value.message


@pytest.mark.parametrize(
    "template", ["*", "{role}@*", "{role},{target}", "", "{role} {target}", "{nope}", "{role!r}"]
)
def test_unsafe_principal_templates_are_refused(tmp_path: Path, template: str) -> None:
    """Templates that could render '*', empty or comma/space-containing principals are errors."""
    data = _broken(tmp_path, lambda d: d["roles"][0]["ssh"].update(principals=[template]))
    with pytest.raises(ConfigError) as info:
        load(data)
    assert info.value.details["path"].startswith("roles[0].ssh.principals")


def test_user_ids_differing_only_in_case_are_refused(tmp_path: Path) -> None:
    """'Bob' and 'bob' cannot both exist: identity is by exact id, so look-alikes are refused."""
    data = _broken(tmp_path, lambda d: d["users"].append({"id": "Bob", "name": "Imposter"}))
    with pytest.raises(ConfigError, match="clashes"):
        load(data)


def test_approver_named_with_different_case_is_refused(tmp_path: Path) -> None:
    """An approver list naming 'CAROL' does not silently match 'carol'."""

    def change(d: dict[str, Any]) -> None:
        d["policy"]["rules"][3]["approvers"] = {"users": ["CAROL"]}

    with pytest.raises(ConfigError, match="did you mean 'carol'") as info:
        load(_broken(tmp_path, change))
    assert info.value.details["path"] == "policy.rules[3].approvers.users[0]"


def test_quorum_larger_than_possible_approvers_is_refused(tmp_path: Path) -> None:
    """approvals: 4 with only three people in the approver group can never be met."""
    data = _broken(tmp_path, lambda d: d["policy"]["rules"][3].update(approvals=4))
    with pytest.raises(ConfigError, match="only 3 can approve"):
        load(data)


@pytest.mark.parametrize(
    ("when", "kind"),
    [
        ("role.tier ==", "syntax"),
        ("1 + 'a' == 2", "type"),
        ("request.duration", "boolean"),
        ("nosuchfact == 1", "type"),
    ],
)
def test_bad_cel_is_a_config_error_naming_the_rule(tmp_path: Path, when: str, kind: str) -> None:
    """Syntax errors, type errors, unknown names and non-boolean rules fail at load, by rule."""
    data = _broken(tmp_path, lambda d: d["policy"]["rules"][0].update(when=when))
    with pytest.raises(ConfigError) as info:
        PolicyEngine(load(data).config)
    assert info.value.details["path"] == "policy.rules[0].when"
    assert "standard-auto-approve" in info.value.message
    assert kind in info.value.message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    """A YAML syntax error says so, with the line number."""
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nusers: [\n  - id: x\n")
    with pytest.raises(ConfigError, match="line"):
        load_config(path)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing file is a ConfigError, not a traceback."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_json_schema_forbids_unknown_keys() -> None:
    """The exported schema describes the file and closes it to unknown keys."""
    schema = json_schema()
    assert "roles" in schema["properties"]
    assert schema["additionalProperties"] is False


def test_config_hash_is_of_the_file_bytes(tmp_path: Path) -> None:
    """The recorded hash changes when the file changes (audited on load)."""
    path = tmp_path / "k.yaml"
    path.write_bytes(EXAMPLE.read_bytes())
    first = load_config(path).sha256
    path.write_bytes(EXAMPLE.read_bytes() + b"\n# changed\n")
    assert load_config(path).sha256 != first
    assert os.path.getsize(path) > 0
