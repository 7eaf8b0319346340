"""Shared fixtures: configuration, fakes, a real SQLite/PostgreSQL store, real sshd."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from keyturn.config import LoadedConfig, UserConfig, parse_config
from keyturn.domain.audit import AuditEvent
from keyturn.domain.policy import PolicyEngine
from keyturn.entrypoints.logs import configure as configure_logs
from keyturn.lab import Slapd, example_directory
from keyturn.ports import Provider
from keyturn.service.deps import Deps
from keyturn.testing import FakeClock, FakeProvider, InMemoryStore, RecordingNotifier
from tests.pg import PgCluster

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "keyturn.yaml"
configure_logs()  # as in production: logs on stderr, so in-process servers never mix into stdout
USERS = ("alice", "bob", "carol", "dave", "erin", "mallory", "sam")
TOKENS = {u: f"test-token-{u}" for u in USERS}
LDAP_PASSWORD_ENV = "KEYTURN_LDAP_PASSWORD"  # examples/keyturn.yaml: ldap.bind_password_env


def example_data(
    tmp_path: Path, *, ldap_url: str | None = None, **overrides: Any
) -> dict[str, Any]:
    """The example configuration with test tokens and paths inside ``tmp_path``.

    Without ``ldap_url`` the directory parts (the ``ldap`` section, its roles and eligibility)
    are left out, so tests that need no directory start none; with it, they point at that slapd.
    """
    data: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    data["store"] = {"url": f"sqlite:///{tmp_path / 'keyturn.db'}"}
    data["ssh_ca"] = {"key_path": str(tmp_path / "ca" / "user_ca")}
    for user in data["users"]:
        user["token_sha256"] = hashlib.sha256(TOKENS[user["id"]].encode()).hexdigest()
    for schedule in data["oncall"]["schedules"]:  # relative to the example file, not the cwd
        schedule["ical"] = str(EXAMPLE.parent / schedule["ical"])
    data["policy"]["tests"] = str(EXAMPLE.parent / data["policy"]["tests"])
    if ldap_url is None:
        without_directory(data)
    else:
        data["ldap"]["url"] = ldap_url
    data.update(overrides)
    return data


def without_directory(data: dict[str, Any]) -> None:
    """Drop the ``ldap`` section and everything that refers to it."""
    ldap_roles = {r["name"] for r in data["roles"] if r.get("provider") == "ldap"}
    data.pop("ldap", None)
    data["roles"] = [r for r in data["roles"] if r["name"] not in ldap_roles]
    for rule in data["eligibility"]:
        rule["roles"] = [r for r in rule["roles"] if r not in ldap_roles]
    data["eligibility"] = [rule for rule in data["eligibility"] if rule["roles"]]


@pytest.fixture
def slapd(tmp_path: Path) -> Iterator[Slapd]:
    """A real OpenLDAP slapd on a free loopback port, seeded for the example configuration."""
    server = example_directory(tmp_path / "slapd")
    yield server
    server.stop()


def ldap_env(server: Slapd) -> dict[str, str]:
    """The environment carrying the directory bind password, as ``ldap.bind_password_env``."""
    return {LDAP_PASSWORD_ENV: server.service_password}


DIRECTORY_URL = "ldap://127.0.0.1:1"  # keeps the directory roles; fakes never connect
SHARED_GROUPS = {"db-admins": "cn=db-admins", "app-deployer": "cn=app-deployers"}
"""The fake directory's groups: role → privilege (one group per directory role)."""


def directory_data(tmp_path: Path) -> dict[str, Any]:
    """The example configuration with its directory roles (for fakes: nothing listens)."""
    return example_data(tmp_path, ldap_url=DIRECTORY_URL)


def directory_deps(
    data: dict[str, Any], clock: FakeClock, ldap: FakeProvider, notifier: RecordingNotifier
) -> Deps:
    """Services wired with fakes: in-memory store, fake clock, fake ssh, ``ldap`` as directory."""
    return fake_deps(data, clock, {"ssh": FakeProvider("ssh"), "ldap": ldap}, notifier=notifier)


def user(deps: Deps, user_id: str) -> UserConfig:
    """The configured user with this id."""
    found = deps.config.user(user_id)
    assert found is not None
    return found


def events(deps: Deps, action: str | None = None) -> list[AuditEvent]:
    """Committed audit events, all or those of one action."""
    with deps.store.transaction() as tx:
        return [e for e in tx.audit_events() if action is None or e.action == action]


def actions(deps: Deps) -> list[str]:
    """The actions of all committed audit events, in order."""
    return [e.action for e in events(deps)]


def load(data: dict[str, Any]) -> LoadedConfig:
    """Validate a configuration dict."""
    return parse_config(data, raw=yaml.safe_dump(data).encode())


def counter_ids() -> Callable[[str], str]:
    """Deterministic ids: req_0001, grt_0002, …"""
    numbers = itertools.count(1)
    return lambda prefix: f"{prefix}_{next(numbers):04d}"


def serials() -> Callable[[], int]:
    """Deterministic serials 1001, 1002, …"""
    numbers = itertools.count(1001)
    return lambda: next(numbers)


@pytest.fixture
def clock() -> FakeClock:
    """02:45 UTC on a Tuesday."""
    return FakeClock()


@pytest.fixture
def provider() -> FakeProvider:
    """The fake provider, standing in for ssh."""
    return FakeProvider("ssh")


@pytest.fixture
def deps(tmp_path: Path, clock: FakeClock, provider: FakeProvider) -> Deps:
    """Services wired with fakes: in-memory store, fake clock, fake provider."""
    return fake_deps(example_data(tmp_path), clock, {"ssh": provider})


def fake_deps(
    data: dict[str, Any],
    clock: FakeClock,
    providers: dict[str, Provider],
    **extra: Any,
) -> Deps:
    """Services over ``data`` with an in-memory store, reproducible ids and serials, and
    ``extra`` ports (``notifier=``, ``oncall=``)."""
    config = load(data).config
    return Deps(
        config=config,
        policy=PolicyEngine(config),
        store=InMemoryStore(),
        clock=clock,
        providers=providers,
        new_id=counter_ids(),
        new_serial=serials(),
        **extra,
    )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster for the session."""
    cluster = PgCluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty PostgreSQL database."""
    return pg_cluster.new_database()
